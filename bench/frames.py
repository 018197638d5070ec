"""The frames bridge (``databus bridge frames``) against the targets of issue 14, next to a
bare pyzmq REP server measured in the same run.

    python bench/frames.py            # 3 runs, medians
    python bench/frames.py --quick    # one short run (fewer frames), a smoke run
    python bench/frames.py --profile DIR   # each bridge under cProfile, DIR/<figure>-<run>-<n>.prof

Every part is a process of its own: the publisher (this script, ``--publisher``), each
bridge (``python -m databus bridge frames`` with DATABUS_URL and DATABUS_PREFIX, on a free
port), each client (this script, ``--rep-client`` or ``--karabo-client``), all against a
private embedded server, warmed first by one unmeasured scan of 500 frames (a fresh server
pays a page fault for each page it has never used, bench/publish.py warms its own too). A
publisher creates its scan, the bridges and clients start, and only then does the
publisher send its frames, as fast as it can, while the clients pull: a live scan. The
clients print, for each frame, its scan number, frame index, pixel bytes and arrival time
(``time.monotonic()``, one clock for every process on the machine).

- rep_mb_per_s: one CrystfelReqClient (tests/frames_clients, which decodes as CrystFEL 0.12
  does) pulling 500 float32 512x1024 frames (2 MiB, no conversion) through one ``--rep``
  bridge. MB is 1e6 bytes of frame pixels; the rate is the bytes of frames 2..500 over
  the time from the first frame's arrival to the 500th's.
- rep_two_clients_mb_per_s: the same scan pulled by two CrystfelReqClient processes from
  one ``--rep`` bridge (one share member serving both), from the first frame either got
  to the last.
- frames_served_twice, frames_skipped: two ``--rep`` bridges in one ``--group``, one
  client each, two scans of 300 float32 128x256 frames back to back; (scan number, frame
  index) pairs received more than once, and never received (waited for until no frame
  came for 10 s). These two are the worst run's, not the median: one frame served twice
  in any run is a failure.
- karabo_mb_per_s: karabo_bridge.Client (PyPI) pulling the 500 2 MiB frames through one
  ``--karabo`` bridge, rate as for rep.
- bare_zmq_mb_per_s: a pyzmq REP server (its own process) answering the same
  CrystfelReqClient with one prepared msgpack frame map of 2 MiB, 500 times;
  rep_vs_bare_zmq is rep_mb_per_s / bare_zmq_mb_per_s of the same run (then the median):
  what the bus, the share and the bridge cost.
- publish_mb_per_s: the publisher's own rate in the rep_mb_per_s run (first send() to
  end()), the most a live scan could deliver.

Prints one table, then as its last line one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import msgpack
import numpy as np
import zmq
from _server import Figure, bench_arguments, bench_server, report, stop_process

import databus

PREFIX = "benchframes"
SESSION = "bench_frames"
CHANNEL = "det:image"
BIG = (512, 1024)  # float32: 2 MiB, a type CrystFEL reads as it is
SMALL = (128, 256)
FRAMES, QUICK_FRAMES = 500, 100  # BIG frames a throughput run
SHARE_FRAMES, QUICK_SHARE_FRAMES = 300, 60  # SMALL frames in each of the two shared scans
STALL_S = 10.0  # no frame for this long: the rest is not coming
GRACE_S = 1.0  # after the last frame expected, how long a frame served twice may take
START_S = 60.0  # the longest a process may take to say it is ready
# name: (unit, target, comparison)
FIGURES: dict[str, Figure] = {
    "rep_mb_per_s": ("MB/s", 800, ">="),
    "rep_two_clients_mb_per_s": ("MB/s", None, ""),
    "frames_served_twice": ("frames", 0, "=="),
    "frames_skipped": ("frames", 0, "=="),
    "karabo_mb_per_s": ("MB/s", 500, ">="),
    "bare_zmq_mb_per_s": ("MB/s", None, ""),
    "rep_vs_bare_zmq": ("", None, ""),
    "publish_mb_per_s": ("MB/s", None, ""),
}
WORST = ("frames_served_twice", "frames_skipped")


# ---------------------------------------------------------------- child processes


def _prepared(shape: tuple[int, int], count: int) -> list[np.ndarray]:
    """``count`` different read-only float32 frames."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        frame = rng.random(shape, dtype=np.float32) * 1000 + i
        frame.flags.writeable = False
        frames.append(frame)
    return frames


def publisher(scans: int, frames: int, shape: tuple[int, int]) -> None:
    """Create a scan and print its number; at a line on stdin send ``frames`` frames, end
    it, and do the same for the other ``scans`` at once; print a JSON report (scan
    numbers, send time); at the next line delete the scans' frames (the server's memory is
    for the next figure) and exit."""
    bus = databus.connect()  # DATABUS_URL and DATABUS_PREFIX
    session = bus.session(SESSION)
    pool = _prepared(shape, 8)
    numbers, done, started = [], [], 0.0
    for i in range(scans):
        scan = session.create_scan(title="frames bench")
        image = scan.channel(CHANNEL, "float32", shape, copy=False)
        scan.prepare()
        scan.start()
        numbers.append(scan.number)
        if i == 0:
            print(json.dumps({"scan": scan.number}), flush=True)
            sys.stdin.readline()
            started = time.monotonic()
        for j in range(frames):
            image.send(pool[j % len(pool)])
        scan.end()
        done.append(scan)
    seconds = time.monotonic() - started
    print(json.dumps({"scans": numbers, "seconds": seconds}), flush=True)
    sys.stdin.readline()
    bus.redis.delete(*[c.key for s in done for c in s.channels.values()])
    bus.close()


def _received(scan: int, index: int, nbytes: int) -> None:
    """One line per frame: what it is, its pixel bytes, when it arrived."""
    sys.stdout.write(f"{scan} {index} {nbytes} {time.monotonic():.6f}\n")
    sys.stdout.flush()


def req_client(endpoint: str) -> NoReturn:
    """A CrystfelReqClient pulling frames from ``endpoint`` until killed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from frames_clients.crystfel_req import CrystfelReqClient

    client = CrystfelReqClient(endpoint)
    print("ready", flush=True)
    while True:
        frame = client.next()
        scalars = frame.scalars
        _received(int(scalars["scan_number"]), int(scalars["frame_index"]), frame.image.nbytes)


def karabo_client(endpoint: str) -> NoReturn:
    """karabo_bridge.Client pulling frames from ``endpoint`` until killed."""
    from karabo_bridge import Client

    client = Client(endpoint)
    print("ready", flush=True)
    while True:
        data, _ = client.next()
        (values,) = data.values()
        _received(values["scan_number"], values["frame_index"], values["image.data"].nbytes)


def bare_server(shape: tuple[int, int]) -> NoReturn:
    """A pyzmq REP server on a free port (printed) answering every request with the same
    prepared msgpack frame map, as the bridge's --rep would send it."""
    frame = _prepared(shape, 1)[0]
    message = msgpack.packb(
        {
            "detector_data": {"type": "<f4", "shape": list(shape), "data": frame.tobytes()},
            "frame_index": 0,
            "scan_key": "bare",
            "scan_number": 0,
        }
    )
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    rep.bind("tcp://127.0.0.1:*")
    print(rep.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    while True:
        rep.recv()
        rep.send(message, copy=False)


# ---------------------------------------------------------------- running them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def spawned(
    command: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in its own process, stdin and stdout piped; on the way out it gets
    SIGINT and 15 s to exit (a bridge prints its counts), then it is killed."""
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        yield child
    finally:
        stop_process(child, 15)


def script(*args: str) -> list[str]:
    """This script run with ``args``."""
    return [sys.executable, __file__, *args]


def _named(child: subprocess.Popen[bytes]) -> str:
    """A child's command without the interpreter, for an error message."""
    args = child.args if isinstance(child.args, list) else [child.args]
    return " ".join(str(arg) for arg in args[1:])


class Lines:
    """Whole lines from children's stdout as they come (raw reads, so none waits unseen
    in a buffer), kept per child until asked for."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._partial: dict[int, bytes] = {}
        self._queued: dict[subprocess.Popen[bytes], list[str]] = {}

    def watch(self, child: subprocess.Popen[bytes]) -> None:
        assert child.stdout is not None
        fd = child.stdout.fileno()
        os.set_blocking(fd, False)
        self._partial[fd] = b""
        self._queued[child] = []
        self._selector.register(fd, selectors.EVENT_READ, child)

    def forget(self, child: subprocess.Popen[bytes]) -> None:
        assert child.stdout is not None
        self._selector.unregister(child.stdout.fileno())
        del self._queued[child]

    def next(
        self, among: list[subprocess.Popen[bytes]], timeout: float
    ) -> tuple[subprocess.Popen[bytes], str] | None:
        """The next line of a child in ``among``, None if none came within ``timeout`` s;
        RuntimeError if a watched child exits."""
        deadline = time.monotonic() + timeout
        while True:
            for child in among:
                if self._queued[child]:
                    return child, self._queued[child].pop(0)
            wait = deadline - time.monotonic()
            if wait <= 0:
                return None
            for key, _ in self._selector.select(wait):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    raise RuntimeError(f"{_named(key.data)} exited ({key.data.wait()})")
                *lines, self._partial[key.fd] = (self._partial[key.fd] + data).split(b"\n")
                self._queued[key.data].extend(line.decode() for line in lines)

    def first(self, child: subprocess.Popen[bytes], timeout: float = START_S) -> str:
        """The next line of ``child``; RuntimeError if none came within ``timeout`` s."""
        got = self.next([child], timeout)
        if got is None:
            raise RuntimeError(f"{_named(child)} said nothing within {timeout:g} s")
        return got[1]


@dataclass(frozen=True)
class Frame:
    scan: int
    index: int
    nbytes: int
    time: float


def collect(lines: Lines, clients: list[subprocess.Popen[bytes]], want: int) -> list[Frame]:
    """The clients' frames until ``want`` came (and ``GRACE_S`` more, for a frame served
    twice) or none came for ``STALL_S``."""
    frames: list[Frame] = []
    deadline = None
    while deadline is None or time.monotonic() < deadline:
        wait = STALL_S if deadline is None else deadline - time.monotonic()
        got = lines.next(clients, max(wait, 0))
        if got is None:
            break
        scan, index, nbytes, at = got[1].split()
        frames.append(Frame(int(scan), int(index), int(nbytes), float(at)))
        if deadline is None and len(frames) >= want:
            deadline = time.monotonic() + GRACE_S
    return frames


def mb_per_s(frames: list[Frame]) -> float:
    """MB/s of pixels from the first frame's arrival to the last's (the first's bytes
    came before the clock started)."""
    first = min(frames, key=lambda f: f.time)
    last = max(f.time for f in frames)
    return (sum(f.nbytes for f in frames) - first.nbytes) / (last - first.time) / 1e6


@dataclass(frozen=True)
class Setup:
    """What one figure runs: bridges of ``mode``, clients per bridge, scans and frames."""

    label: str
    mode: str  # rep or karabo
    bridges: int
    clients_per_bridge: int
    scans: int
    frames: int
    shape: tuple[int, int]


def _env(url: str) -> dict[str, str]:
    """The environment of the publisher and the bridges: the bench's server and prefix."""
    return {**os.environ, "DATABUS_URL": url, "DATABUS_PREFIX": PREFIX, "PYTHONUNBUFFERED": "1"}


def warm_up(url: str, frames: int) -> None:
    """Publish one scan of ``frames`` 2 MiB frames and delete it, unmeasured: a fresh
    server pays a page fault for each page of memory it has never used, which a server
    that has run for a while does not (bench/publish.py warms its server the same way)."""
    lines = Lines()
    command = script("--publisher", "1", str(frames), *map(str, BIG))
    with spawned(command, _env(url)) as pub:
        lines.watch(pub)
        lines.first(pub)  # its scan
        _tell(pub, b"go")
        lines.first(pub)  # its report
        _tell(pub, b"drop")
        pub.wait(timeout=30)


def _tell(child: subprocess.Popen[bytes], word: bytes) -> None:
    """Write ``word`` as a line to ``child``'s stdin."""
    assert child.stdin is not None
    child.stdin.write(word + b"\n")
    child.stdin.flush()


def run_bridged(url: str, setup: Setup, run: int, profile: Path | None) -> dict[str, float]:
    """One live run of ``setup``: MB/s, frames served twice and skipped, publisher MB/s."""
    env = _env(url)
    shape = [str(n) for n in setup.shape]
    lines = Lines()
    with contextlib.ExitStack() as stack:
        pub = stack.enter_context(
            spawned(script("--publisher", str(setup.scans), str(setup.frames), *shape), env)
        )
        lines.watch(pub)
        first = json.loads(lines.first(pub))["scan"]
        addresses, bridges = [], []
        for n in range(setup.bridges):
            address = f"tcp://127.0.0.1:{_free_port()}"
            command = [sys.executable, "-m", "databus", "bridge", "frames"]
            if profile is not None:
                out = profile / f"{setup.label}-{run}-{n}.prof"
                command = [sys.executable, "-m", "cProfile", "-o", str(out), *command[1:]]
            command += ["--session", SESSION, "--channel", CHANNEL, f"--{setup.mode}", address]
            command += ["--group", f"{setup.label}-{run}", "--from-scan", str(first)]
            bridge = stack.enter_context(spawned(command, env))
            lines.watch(bridge)
            banner = lines.first(bridge)
            if not banner.startswith("frames:"):
                raise RuntimeError(f"bridge {n} did not start: {banner}")
            addresses.append(address)
            bridges.append(bridge)
        clients = []
        for address in addresses:
            for _ in range(setup.clients_per_bridge):
                client = stack.enter_context(spawned(script(f"--{setup.mode}-client", address)))
                lines.watch(client)
                if lines.first(client) != "ready":
                    raise RuntimeError(f"client of {address} did not start")
                clients.append(client)
        time.sleep(0.3)  # the clients' requests reach the bridges
        _tell(pub, b"go")
        frames = collect(lines, clients, setup.scans * setup.frames)
        report = json.loads(lines.first(pub, STALL_S))
        for child in clients + bridges:
            lines.forget(child)
            child.send_signal(signal.SIGINT if child in bridges else signal.SIGKILL)
            child.wait(timeout=30)
        _tell(pub, b"drop")
        pub.wait(timeout=30)
    expected = {(s, i) for s in report["scans"] for i in range(setup.frames)}
    counts = Counter((f.scan, f.index) for f in frames)
    pixels = setup.scans * setup.frames * math.prod(setup.shape) * 4
    return {
        "mb_per_s": mb_per_s(frames) if len(frames) > 1 else 0.0,
        "served_twice": sum(1 for n in counts.values() if n > 1),
        "skipped": len(expected - set(counts)),
        "publish_mb_per_s": pixels / report["seconds"] / 1e6,
    }


def run_bare(frames: int) -> float:
    """MB/s of the CrystfelReqClient pulling ``frames`` from the bare REP server."""
    lines = Lines()
    with (
        spawned(script("--bare", *map(str, BIG))) as server,
        contextlib.ExitStack() as stack,
    ):
        lines.watch(server)
        address = lines.first(server)
        client = stack.enter_context(spawned(script("--rep-client", address)))
        lines.watch(client)
        if lines.first(client) != "ready":
            raise RuntimeError("the bare server's client did not start")
        got = collect(lines, [client], frames)
    if len(got) < frames:
        raise RuntimeError(f"the bare server's client got {len(got)} of {frames} frames")
    return mb_per_s(got[:frames])


def one_run(url: str, run: int, quick: bool, profile: Path | None) -> dict[str, float]:
    """Every figure once (the ratio from this run's rep and bare rates)."""
    big = QUICK_FRAMES if quick else FRAMES
    small = QUICK_SHARE_FRAMES if quick else SHARE_FRAMES
    out: dict[str, float] = {}
    bare = run_bare(big)
    rep = run_bridged(url, Setup("rep", "rep", 1, 1, 1, big, BIG), run, profile)
    _whole(rep, big, "rep")
    out["rep_mb_per_s"] = rep["mb_per_s"]
    out["publish_mb_per_s"] = rep["publish_mb_per_s"]
    two = run_bridged(url, Setup("rep2", "rep", 1, 2, 1, big, BIG), run, profile)
    _whole(two, big, "rep_two_clients")
    out["rep_two_clients_mb_per_s"] = two["mb_per_s"]
    share = run_bridged(url, Setup("share", "rep", 2, 1, 2, small, SMALL), run, profile)
    out["frames_served_twice"] = share["served_twice"]
    out["frames_skipped"] = share["skipped"]
    karabo = run_bridged(url, Setup("karabo", "karabo", 1, 1, 1, big, BIG), run, profile)
    _whole(karabo, big, "karabo")
    out["karabo_mb_per_s"] = karabo["mb_per_s"]
    out["bare_zmq_mb_per_s"] = bare
    out["rep_vs_bare_zmq"] = rep["mb_per_s"] / bare
    return out


def _whole(result: dict[str, float], frames: int, name: str) -> None:
    """A rate over frames that did not all come is no rate: say so."""
    if result["skipped"] or result["served_twice"]:
        raise RuntimeError(
            f"{name}: {result['skipped']} of {frames} frames never came and "
            f"{result['served_twice']} came twice"
        )


def combined(name: str, values: list[float]) -> float:
    """The runs' median; for the exactly-once counts, the worst run's."""
    return max(values) if name in WORST else statistics.median(values)


def main() -> int:
    parser = bench_arguments(__doc__, "runs")
    parser.add_argument("--profile", type=Path, help="run each bridge under cProfile, into DIR")
    parser.add_argument("--publisher", nargs=4, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rep-client", help=argparse.SUPPRESS)
    parser.add_argument("--karabo-client", help=argparse.SUPPRESS)
    parser.add_argument("--bare", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher or args.rep_client or args.karabo_client or args.bare:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a child stops without a traceback
    if args.publisher:
        scans, frames, slow, fast = args.publisher
        publisher(scans, frames, (slow, fast))
        return 0
    if args.rep_client:
        req_client(args.rep_client)
    if args.karabo_client:
        karabo_client(args.karabo_client)
    if args.bare:
        bare_server((args.bare[0], args.bare[1]))
    runs = args.runs or (1 if args.quick else 3)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    with bench_server(args.url) as url:
        big = QUICK_FRAMES if args.quick else FRAMES
        warm_up(url, big)
        results = [one_run(url, run, args.quick, args.profile) for run in range(runs)]
    out = {k: combined(k, [r[k] for r in results]) for k in FIGURES}
    small = QUICK_SHARE_FRAMES if args.quick else SHARE_FRAMES
    print(
        f"databus frames bench: {runs} run(s), medians; {big} float32 {BIG[0]}x{BIG[1]} "
        f"frames a live scan; exactly-once: 2 bridges, 2 scans x {small} {SMALL[0]}x{SMALL[1]}"
    )
    return report(FIGURES, out, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
