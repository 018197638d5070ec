"""Load and soak: many followers, the writer and faults, against the reliability issue.

    python bench/soak.py            # load: 60 s, 20 followers + writer; soak: 100 scans
    python bench/soak.py --quick    # load: 10 s, 6 followers; soak: 20 scans

The server is the embedded one with its default 1 GB cap (the memory guard keeps it under);
followers and the NeXus writer (``databus writer``) are separate processes, all at the
same priority.

Load: 18 followers of the scalar channels and 2 of everything follow one session while
the publisher sends 4 float64 channels at 10 kHz (one ``send()`` per point) and 1024x1024
uint16 frames at 50 Hz, in scans of 4 s (105 MB/s of frames: a 1 GB server holds about
two such scans; the guard deletes ended ones). Every point carries its send time
(CLOCK_MONOTONIC, one clock for every process): a scalar's value, a frame's first 8 bytes
(then its index).

Soak: 100 short scans; the writer is killed (SIGKILL) in the middle of every tenth scan and
started again; once, the server is killed (SIGKILL) in the middle of a scan and comes back
empty on the same port (two followers run throughout, a third replays from then on).

Then every follower's points and GAP events must tile each channel exactly, and the
writer's file must hold every point the publisher sent, except where ``writer/gaps`` (or
``writer/missing``) reports it lost. Prints one table, then as its last line one JSON
object: ``points_lost`` (points neither delivered nor reported lost; must be 0),
``gaps_unreported`` (runs of such points; must be 0), ``max_used_memory_ratio`` (the
server's used memory over its cap, sampled every 50 ms; must stay <= 1.0),
``p99_ms_under_load`` (latency of every point to every follower during the load).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (the writer compresses frames with lz4)
import numpy as np
import redis

import databus
from databus._server import EmbeddedServer

SCALARS = 4
FRAME = (1024, 1024)
#: Latency histogram bins, in ms (log-spaced, 0.01 ms to 100 s).
BINS = np.logspace(-2, 5, 701)
TARGETS = {
    "points_lost": ("points", 0, "=="),
    "gaps_unreported": ("gaps", 0, "=="),
    "max_used_memory_ratio": ("", 1.0, "<="),
    "p99_ms_under_load": ("ms", 50.0, "<="),
}


# ------------------------------------------------------------------ followers


def follow(url: str, session: str, scalars_only: bool, out: str, replay: bool = False) -> None:
    """A follower process: what it received per scan and channel (merged index ranges),
    the GAP events it got, frames whose index is wrong, and its latency histogram; it
    stops after the scan whose info says ``last``. ``replay``: from the session's first
    scan still in Redis."""
    bus = databus.connect(url)
    got: dict[str, dict[str, list[list[int]]]] = {}
    gaps: dict[str, dict[str, list[list[Any]]]] = {}
    wrong = 0
    hist = np.zeros(len(BINS) - 1, dtype=np.int64)
    latencies: list[np.ndarray] = []  # binned at each scan's end: cheaper than per event

    def wanted(node: Any) -> bool:
        return not scalars_only or node.type != "channel" or node.shape == ()

    started = threading.Event()
    events = bus.session(session).follow(
        replay=replay, include_filter=wanted, started_event=started
    )
    print("ready", flush=True)
    for event in events:
        kind = event.type
        if kind is databus.EventType.NEW_DATA:
            now = time.monotonic()
            data, first = event.data.data, event.data.first_index
            if data.ndim == 1:
                sent = data
            else:
                flat = data.reshape(len(data), -1)
                sent = np.ascontiguousarray(flat[:, :4]).view(np.float64)[:, 0]
                index = np.ascontiguousarray(flat[:, 4:8]).view(np.int64)[:, 0]
                wrong += int(np.count_nonzero(index != np.arange(first, first + len(data))))
            latencies.append(now - sent)
            ranges = got.setdefault(event.node.parent.db_name, {}).setdefault(event.node.name, [])
            if ranges and ranges[-1][0] + ranges[-1][1] == first:
                ranges[-1][1] += len(data)
            else:
                ranges.append([first, len(data)])
        elif kind is databus.EventType.GAP:
            gap = event.data
            gaps.setdefault(event.node.parent.db_name, {}).setdefault(event.node.name, []).append(
                [gap.first_index, gap.block_size, gap.reason]
            )
        elif kind is databus.EventType.END_SCAN:
            if latencies:
                hist += np.histogram(np.concatenate(latencies) * 1000, BINS)[0]
                latencies.clear()
            if event.node.info.get("last"):
                break
    Path(out).write_text(
        json.dumps(
            {
                "got": got,
                "gaps": gaps,
                "wrong": wrong,
                "hist": hist.tolist(),
                "scalars_only": scalars_only,
            }
        )
    )


class Followers:
    """Follower processes, started and ready before the first scan."""

    def __init__(
        self,
        url: str,
        session: str,
        everything: int,
        scalars: int,
        tmp: Path,
        replay: bool = False,
    ):
        self.outs: list[Path] = []
        self.procs = []
        for i in range(everything + scalars):
            out = tmp / f"follower-{session}-{'replay-' if replay else ''}{i}.json"
            self.outs.append(out)
            args = [sys.executable, __file__, "--follow", url, session, str(out)]
            if i >= everything:
                args.append("--scalars-only")
            if replay:
                args.append("--replay")
            self.procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
        for proc in self.procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def results(self, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        return [json.loads(out.read_text()) for out in self.outs if out.exists()]


# --------------------------------------------------------------------- writer


class Writer:
    """``databus writer`` as a process that can be killed and started again."""

    def __init__(self, url: str, session: str, root: Path, log: Path) -> None:
        self.args = [
            sys.executable,
            "-m",
            "databus",
            "writer",
            "--url",
            url,
            "--session",
            session,
            "--root",
            str(root),
            "--compression",
            "lz4",
        ]
        self.log = log
        self.restarts = 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        with open(self.log, "a") as log:
            return subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)

    def kill_and_restart(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.restarts += 1
        self.proc = self._start()

    def wait_finished(self, keys: list[str], timeout: float) -> list[str]:
        """Wait until the writer logged the end of every scan of ``keys``; those it did not."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_text()
            left = [k for k in keys if f"finished {k} " not in text]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------ publisher


@dataclasses.dataclass
class Sent:
    """What the publisher sent in one scan: the scalars' values (the same on every scalar
    channel), the frames' send times, and the ranges the server lost."""

    key: str
    created: float
    values: list[float]
    frame_times: list[float]
    lost: dict[str, list[tuple[int, int]]]


def publish(
    session: databus.Session,
    seconds: float,
    point_hz: float,
    frame_hz: float,
    last: bool = False,
    during: Any = None,
) -> Sent:
    """One scan: 4 float64 channels at ``point_hz`` (one send() per point, paced in 1 ms
    ticks) and frames at ``frame_hz``; ``during(elapsed)`` is called every tick."""
    scan = session.create_scan(title="soak", save=True, last=last)
    sends = [scan.channel(f"sim:c{i}", "float64").send for i in range(SCALARS)]
    img = scan.channel("det:image", "uint16", FRAME)
    scan.prepare()
    scan.start()
    frame = np.zeros(FRAME, np.uint16)
    header = frame.reshape(-1).view(np.uint8)
    values: list[float] = []
    frame_times: list[float] = []
    t0 = time.monotonic()
    while (elapsed := time.monotonic() - t0) < seconds:
        for _ in range(int(elapsed * point_hz) - len(values)):
            v = time.monotonic()
            for send in sends:
                send(v)
            values.append(v)
        if int(elapsed * frame_hz) > len(frame_times):
            v = time.monotonic()
            header[:8] = np.frombuffer(np.float64(v).tobytes(), np.uint8)
            header[8:16] = np.frombuffer(np.int64(len(frame_times)).tobytes(), np.uint8)
            img.send(frame)
            frame_times.append(v)
        if during is not None:
            during(elapsed)
        time.sleep(0.001)
    scan.end()
    lost = {name: list(w.lost) for name, w in scan.channels.items() if w.lost}
    return Sent(scan.key, scan.created, values, frame_times, lost)


class MemorySampler:
    """The server's used memory over its cap, every 50 ms, in a thread."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=1)
        self.cap = int(self.client.info("memory")["maxmemory"])
        self.max_ratio = 0.0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                used = int(self.client.info("memory")["used_memory"])
                self.max_ratio = max(self.max_ratio, used / self.cap)
            except redis.RedisError:
                pass  # the server is being restarted
            time.sleep(0.05)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return self.max_ratio


# --------------------------------------------------------------------- checks


def _runs(indices: np.ndarray) -> int:
    """Runs of consecutive indices."""
    return 0 if not len(indices) else 1 + int(np.count_nonzero(np.diff(indices) != 1))


def check_followers(results: list[dict], sent: list[Sent]) -> dict[str, int]:
    """Points each follower neither got nor was told of (GAP), duplicates, wrong frames."""
    lost = unreported = duplicated = reported = 0
    holes: list[tuple[int, str, str, int, int]] = []  # (follower, scan, channel, first, n)
    for number, res in enumerate(results):
        for s in sent:
            got, gaps = res["got"].get(s.key, {}), res["gaps"].get(s.key, {})
            expected = {f"sim:c{i}": len(s.values) for i in range(SCALARS)}
            if not res["scalars_only"]:
                expected["det:image"] = len(s.frame_times)
            for name, n in expected.items():
                seen = np.zeros(n, np.int64)
                for first, count in got.get(name, []):
                    seen[first : first + count] += 1
                for first, count, _ in gaps.get(name, []):
                    seen[first : first + count] += 1
                    reported += count
                missing = np.flatnonzero(seen == 0)
                if len(missing):
                    holes.append((number, s.key, name, int(missing[0]), len(missing)))
                lost += len(missing)
                unreported += _runs(missing)
                duplicated += int(np.count_nonzero(seen > 1))
    wrong = sum(r["wrong"] for r in results)
    return {
        "lost": lost,
        "unreported": unreported,
        "duplicated": duplicated,
        "reported": reported,
        "wrong": wrong,
        "silent": holes,
    }


def check_files(root: Path, session: str, sent: list[Sent]) -> dict[str, int]:
    """Points the publisher sent that the files do not hold and do not report lost."""
    entries: dict[tuple[str, float], Any] = {}
    files = [h5py.File(p, "r", locking=False) for p in sorted((root / session).glob("*.h5"))]
    try:
        for f in files:
            for entry in f.values():
                if "writer" in entry:
                    key = entry["scan_key"][()].decode()
                    entries[(key, float(entry["writer"].attrs["scan_created"]))] = entry
        lost = unreported = reported = missing_entries = 0
        silent_runs: list[tuple[str, str, int, int]] = []  # (scan, channel, first, count)
        for s in sent:
            entry = entries.get((s.key, s.created))
            if entry is None or "end_reason" not in entry:
                missing_entries += 1
                n = SCALARS * len(s.values) + len(s.frame_times)
                lost, unreported = lost + n, unreported + 1
                continue
            names = [c.decode() for c in entry["writer/channels"][()]]
            paths = [p.decode() for p in entry["writer/paths"][()]]
            rows = entry["writer/gaps"][()].tolist()
            missing = json.loads(entry["writer/missing"][()]) if "writer/missing" in entry else {}
            for index, (name, path) in enumerate(zip(names, paths, strict=True)):
                ds = entry[path]
                n = len(s.frame_times) if name == "det:image" else len(s.values)
                said = np.zeros(n, bool)  # reported lost: a gap row, or writer/missing
                for ch, lo, hi, _ in rows:
                    if ch == index:
                        said[lo : hi + 1] = True
                if name in missing:
                    said[missing[name][0] :] = True
                if name == "det:image":
                    have = np.zeros(n, bool)
                    for i in range(min(n, len(ds))):
                        head = np.ascontiguousarray(ds[i, 0, :8])
                        t = head[:4].view(np.float64)[0]
                        have[i] = t == s.frame_times[i] and head[4:].view(np.int64)[0] == i
                else:
                    data = ds[: min(n, len(ds))]
                    have = np.zeros(n, bool)
                    have[: len(data)] = data == np.asarray(s.values[: len(data)])
                reported += int(np.count_nonzero(~have & said))
                silent = np.flatnonzero(~have & ~said)
                lost += len(silent)
                unreported += _runs(silent)
                if len(silent):
                    silent_runs.append((s.key, name, int(silent[0]), len(silent)))
    finally:
        for f in files:
            f.close()
    return {
        "lost": lost,
        "unreported": unreported,
        "reported": reported,
        "missing_entries": missing_entries,
        "silent": silent_runs,
    }


# ---------------------------------------------------------------------- phases


def load_phase(url: str, tmp: Path, seconds: float, followers: int) -> dict[str, Any]:
    session = "load"
    writer = Writer(url, session, tmp / "files", tmp / "writer-load.log")
    group = Followers(url, session, everything=2, scalars=followers - 2, tmp=tmp)
    bus = databus.connect(url)
    scan_s = 4.0
    count = max(1, round(seconds / scan_s))
    sent = [
        publish(bus.session(session), scan_s, 10_000, 50, last=i == count - 1) for i in range(count)
    ]
    results = group.results(timeout=120)
    unwritten = writer.wait_finished([s.key for s in sent], timeout=120)
    writer.stop()
    hist = np.sum([r["hist"] for r in results], axis=0)
    return {
        "sent": sent,
        "followers": check_followers(results, sent),
        "files": check_files(tmp / "files", session, sent),
        "unwritten": len(unwritten),
        "p50": _percentile(hist, 50),
        "p99": _percentile(hist, 99),
        "max": _percentile(hist, 100),
        "follower_count": len(results),
    }


def soak_phase(url: str, server: EmbeddedServer, tmp: Path, scans: int) -> dict[str, Any]:
    session = "soak"
    writer = Writer(url, session, tmp / "files", tmp / "writer-soak.log")
    group = Followers(url, session, everything=1, scalars=1, tmp=tmp)
    bus = databus.connect(url)
    restart_at = scans // 2 + 3
    sent: list[Sent] = []
    for i in range(scans):
        actions: list[tuple[float, Any]] = []
        if i % 10 == 5:
            actions.append((0.1, writer.kill_and_restart))
        if i == restart_at:
            # Let the writer catch up first, so the only loss is the running scan's.
            writer.wait_finished([s.key for s in sent], timeout=60)
            actions.append((0.15, lambda: _restart_empty(server)))

        def during(elapsed: float, actions: list = actions) -> None:
            while actions and elapsed >= actions[0][0]:
                actions.pop(0)[1]()

        sent.append(
            publish(bus.session(session), 0.3, 2_000, 50, last=i == scans - 1, during=during)
        )
        if i == restart_at:
            # A follower that comes after the restart replays the scan that lost points:
            # it must be told of the loss (GAP), then get the rest.
            late = Followers(url, session, everything=1, scalars=0, tmp=tmp, replay=True)
    late_results = late.results(timeout=120)
    results = group.results(timeout=120)
    unwritten = writer.wait_finished([s.key for s in sent], timeout=120)
    writer.stop()
    return {
        "sent": sent,
        "followers": _add(
            check_followers(results, sent), check_followers(late_results, sent[restart_at:])
        ),
        "files": check_files(tmp / "files", session, sent),
        "unwritten": len(unwritten),
        "writer_restarts": writer.restarts,
        "server_lost": sum(b - a for s in sent for r in s.lost.values() for a, b in r),
    }


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: a[k] + b[k] for k in a}


def _restart_empty(server: EmbeddedServer) -> None:
    """Kill the server (SIGKILL) and start it again, empty, where its clients look."""
    state = server.status()
    assert state is not None
    os.kill(state.pid, signal.SIGKILL)
    time.sleep(0.3)
    server.ensure()


def _percentile(hist: np.ndarray, q: float) -> float:
    """The q-th percentile (upper bin edge, ms) of a latency histogram."""
    cumulative = np.cumsum(hist)
    if not cumulative[-1]:
        return float("nan")
    return float(BINS[1:][np.searchsorted(cumulative, cumulative[-1] * q / 100)])


# ------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 s load, 6 followers, 20 scans")
    parser.add_argument("--root", help="where the files and the server live (a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the files, logs, results")
    parser.add_argument(
        "--follow", nargs=3, metavar=("URL", "SESSION", "OUT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--scalars-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--replay", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow:
        url, session, out = args.follow
        follow(url, session, args.scalars_only, out, args.replay)
        return
    load_s, followers, scans = (10.0, 6, 20) if args.quick else (60.0, 20, 100)
    tmp = Path(tempfile.mkdtemp(prefix="databus-soak-", dir=args.root))
    if args.keep:
        print(f"files, logs and results in {tmp}", flush=True)
    server = EmbeddedServer(tmp / "server")
    url = server.start().url
    sampler = MemorySampler(url)
    t0 = time.monotonic()
    try:
        load = load_phase(url, tmp, load_s, followers)
        t1 = time.monotonic()
        soak = soak_phase(url, server, tmp, scans)
        t2 = time.monotonic()
    finally:
        ratio = sampler.stop()
        server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.keep:
        phases = (("load", load), ("soak", soak))
        silent = {
            p: {"files": ph["files"]["silent"], "followers": ph["followers"]["silent"]}
            for p, ph in phases
        }
        (tmp / "silent.json").write_text(json.dumps(silent))
        sent = {
            p: {s.key: [len(s.values), len(s.frame_times)] for s in ph["sent"]} for p, ph in phases
        }
        (tmp / "sent.json").write_text(json.dumps(sent))
    report(load, soak, ratio, t1 - t0, t2 - t1)


def report(load: dict, soak: dict, ratio: float, load_s: float, soak_s: float) -> None:
    phases = (load, soak)
    figures: dict[str, Any] = {
        "points_lost": sum(p["followers"]["lost"] + p["files"]["lost"] for p in phases),
        "gaps_unreported": sum(
            p["followers"]["unreported"] + p["files"]["unreported"] for p in phases
        ),
        "max_used_memory_ratio": round(ratio, 4),
        "p99_ms_under_load": load["p99"],
        "p50_ms_under_load": load["p50"],
        "max_ms_under_load": load["max"],
        "followers_under_load": load["follower_count"],
        "scans": len(load["sent"]) + len(soak["sent"]),
        "points_sent": sum(
            SCALARS * len(s.values) + len(s.frame_times) for p in phases for s in p["sent"]
        ),
        "server_lost_points": soak["server_lost"],
        "gap_points_reported": sum(
            p["followers"]["reported"] + p["files"]["reported"] for p in phases
        ),
        "duplicated_points": sum(p["followers"]["duplicated"] for p in phases),
        "wrong_frames": sum(p["followers"]["wrong"] for p in phases),
        "entries_missing": sum(p["files"]["missing_entries"] for p in phases),
        "scans_unwritten": sum(p["unwritten"] for p in phases),
        "writer_restarts": soak["writer_restarts"],
        "load_s": round(load_s, 1),
        "soak_s": round(soak_s, 1),
    }
    print(f"{'figure':<24} {'result':>14}  {'unit':<7} target")
    for name, value in figures.items():
        unit, target, op = TARGETS.get(name, ("", None, ""))
        if name.endswith("_ms_under_load"):
            unit = "ms"
        verdict = ""
        if target is not None:
            ok = value == target if op == "==" else value <= target
            verdict = f"{op} {target} {'ok' if ok else 'MISSED'}"
        shown = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
        print(f"{name:<24} {shown:>14}  {unit:<7} {verdict}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
