"""Capture and replay (``databus capture`` / ``databus replay``) against the targets of
issue 16.

    python bench/capture.py            # 3 runs, medians
    python bench/capture.py --quick    # one short run (fewer frames), a smoke run

Every part is a process of its own, against a private embedded server warmed first by one
unmeasured scan of the same frames (a fresh server pays a page fault for every page it has
never used): the publisher (this script, ``--publisher``), the capture (``python -m databus
capture``) and the replay (``python -m databus replay``). Figures are grouped, a function
each (``capture_figures``); a run calls every group once.

- capture_mb_per_s: the publisher creates a scan, ``databus capture --scan N -o FILE``
  starts on it (FILE on tmpfs, /dev/shm), then the publisher sends FRAMES float32 512x1024
  frames (2 MiB) as fast as it can and ends the scan: frame bytes (1e6 B per MB) over the
  time from the first send to the capture's last line (its file closed). The capture
  follows a live scan, so it can go no faster than the publisher (publish_mb_per_s: the
  publisher's own rate, first send to ``end()``).
- replay_mb_per_s: ``databus replay FILE --session S2 --speed max``: frame bytes over the
  time it reports, from the start of its replay to its return, which comes once the
  replayed scan has ended, every point acknowledged by the server.
- replay_same_content: 1 if a capture of the replayed scan (made by this script) holds
  the same content as the first capture (``same_content``: every frame bit for bit), else
  0; the worst run's.
- crystal_map_recall, crystal_map_frames_per_s (and points/s, peaks matched, spurious):
  the crystal-mapping example of seed 000 under ``databus run`` with 2 workers on a
  BraggDetector mesh (``bench/_crystal_map.py``, which says how; it also runs alone).

Prints one table, then as its last line one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _crystal_map
import numpy as np
from _server import Figure, bench_arguments, bench_server, report, stop_process

import databus
from databus.clients.capture import Capture, same_content

PREFIX = "benchcapture"
SESSION = "bench_capture"
REPLAY_SESSION = "bench_capture_replay"
CHANNEL = "det:image"
SHAPE = (512, 1024)  # float32: 2 MiB
FRAMES, QUICK_FRAMES = 500, 100
TMPFS = Path("/dev/shm")
START_S = 60.0  # the longest a process may take to say it is ready
# name: (unit, target, comparison)
CAPTURE_FIGURES: dict[str, Figure] = {
    "capture_mb_per_s": ("MB/s", 500, ">="),
    "replay_mb_per_s": ("MB/s", 800, ">="),
    "publish_mb_per_s": ("MB/s", None, ""),
    "replay_same_content": ("", 1, "=="),
}
WORST = ("replay_same_content",)
#: What ``databus replay`` prints when it is done.
REPLAYED = re.compile(r"as scan\(s\) (?P<numbers>[0-9, ]+) in (?P<seconds>[0-9.]+) s")


# ---------------------------------------------------------------- child processes


def _env(url: str) -> dict[str, str]:
    """The children's environment: the bench's server and prefix."""
    return {**os.environ, "DATABUS_URL": url, "DATABUS_PREFIX": PREFIX, "PYTHONUNBUFFERED": "1"}


def _drop(bus: databus.Bus, session: str, numbers: list[int]) -> None:
    """Delete the channel streams of scans ``numbers`` (the server's memory is for the
    next figure)."""
    channels = [c.key for n in numbers for c in bus.scan(bus.key(session, n)).channels.values()]
    if channels:
        bus.redis.delete(*channels)


def publisher(frames: int) -> None:
    """Create a scan and print its number; at a line on stdin send ``frames`` frames and end
    it, print the seconds it took; at the next line delete its frames and exit."""
    bus = databus.connect()  # DATABUS_URL and DATABUS_PREFIX
    rng = np.random.default_rng(0)
    pool = [rng.random(SHAPE, dtype=np.float32) * 1000 + i for i in range(8)]
    for frame in pool:
        frame.flags.writeable = False
    scan = bus.session(SESSION).create_scan(title="capture bench")
    image = scan.channel(CHANNEL, "float32", SHAPE, copy=False)
    scan.prepare()
    scan.start()
    print(json.dumps({"scan": scan.number}), flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    for j in range(frames):
        image.send(pool[j % len(pool)])
    scan.end()
    print(json.dumps({"seconds": time.monotonic() - started}), flush=True)
    sys.stdin.readline()
    _drop(bus, SESSION, [scan.number])
    bus.close()


# ---------------------------------------------------------------- running them


def script(*args: str) -> list[str]:
    """This script run with ``args``."""
    return [sys.executable, __file__, *args]


def _line(child: subprocess.Popen[str], what: str) -> str:
    """The next line ``child`` prints; RuntimeError if it exits first."""
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} exited ({child.wait()}) before it said what it did")
    return line


def _tell(child: subprocess.Popen[str], word: str) -> None:
    assert child.stdin is not None
    child.stdin.write(word + "\n")
    child.stdin.flush()


def _published(url: str, frames: int, during: Callable[[int], Callable[[], float]]) -> float:
    """Run the publisher: ``during(scan number)`` starts what follows it and returns a
    function that waits for its end (its time); the publisher's own seconds."""
    pub = subprocess.Popen(
        script("--publisher", str(frames)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(url),
    )
    try:
        number = json.loads(_line(pub, "the publisher"))["scan"]
        wait = during(number)
        _tell(pub, "go")
        wait()
        seconds = float(json.loads(_line(pub, "the publisher"))["seconds"])
        _tell(pub, "drop")
        pub.wait(timeout=START_S)
        return seconds
    finally:
        stop_process(pub, 5)


def warm_up(url: str, frames: int) -> None:
    """One unmeasured scan of ``frames`` frames, published and deleted."""
    _published(url, frames, lambda number: lambda: 0.0)


def capture_figures(url: str, run: int, quick: bool) -> dict[str, float]:
    """capture_mb_per_s, replay_mb_per_s, publish_mb_per_s, replay_same_content."""
    frames = QUICK_FRAMES if quick else FRAMES
    path = TMPFS / f"databus-bench-{os.getpid()}-{run}.dbcap"
    pixels = frames * SHAPE[0] * SHAPE[1] * 4
    times: dict[str, float] = {}

    def capture(number: int) -> Callable[[], float]:
        command = [sys.executable, "-m", "databus", "capture", "--session", SESSION]
        command += ["--scan", str(number), "-o", str(path)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_env(url))
        _line(child, "databus capture")  # its banner: it follows the scan

        def wait() -> float:
            times["start"] = time.monotonic()
            try:
                _line(child, "databus capture")  # its summary: the file is closed
                times["capture"] = time.monotonic() - times["start"]
            finally:
                stop_process(child, 15)
            return times["capture"]

        return wait

    again = path.with_suffix(".again")
    try:
        publish_s = _published(url, frames, capture)
        command = [sys.executable, "-m", "databus", "replay", str(path)]
        command += ["--session", REPLAY_SESSION, "--speed", "max"]
        done = subprocess.run(
            command, env=_env(url), capture_output=True, text=True, timeout=600, check=True
        )
        said = REPLAYED.search(done.stdout)
        if said is None:
            raise RuntimeError(f"databus replay said {done.stdout!r}")
        numbers = [int(n) for n in said["numbers"].split(",")]
        with databus.connect(url, prefix=PREFIX) as bus:
            Capture(bus, REPLAY_SESSION, again, scans=numbers).run()
            same = same_content(path, again)
            _drop(bus, REPLAY_SESSION, numbers)
    finally:
        path.unlink(missing_ok=True)
        again.unlink(missing_ok=True)
    return {
        "capture_mb_per_s": pixels / times["capture"] / 1e6,
        "replay_mb_per_s": pixels / float(said["seconds"]) / 1e6,
        "publish_mb_per_s": pixels / publish_s / 1e6,
        "replay_same_content": float(same),
    }


#: Each group of figures: its figures, those whose worst run counts (the others: the
#: median), and the function that measures them once (server URL, run, quick).
GROUPS: list[
    tuple[dict[str, Figure], tuple[str, ...], Callable[[str, int, bool], dict[str, float]]]
] = [
    (CAPTURE_FIGURES, WORST, capture_figures),
    (_crystal_map.FIGURES, _crystal_map.WORST, _crystal_map.one_run),
]


def main() -> int:
    parser = bench_arguments(__doc__, "runs")
    parser.add_argument("--publisher", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher is not None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a child stops without a traceback
        publisher(args.publisher)
        return 0
    runs = args.runs or (1 if args.quick else 3)
    frames = QUICK_FRAMES if args.quick else FRAMES
    figures = {name: figure for group, _, _ in GROUPS for name, figure in group.items()}
    worst = {name for _, names, _ in GROUPS for name in names}
    results: list[dict[str, float]] = []
    with bench_server(args.url) as url:
        warm_up(url, frames)
        for run in range(runs):
            out: dict[str, float] = {}
            for _, _, measure in GROUPS:
                out.update(measure(url, run, args.quick))
            results.append(out)
    out = {k: (min if k in worst else statistics.median)([r[k] for r in results]) for k in figures}
    print(
        f"databus capture bench: {runs} run(s), medians; {frames} float32 "
        f"{SHAPE[0]}x{SHAPE[1]} frames a scan, the capture on {TMPFS}"
    )
    return report(figures, out, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
