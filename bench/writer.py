"""File writer throughput, lag and memory, against the targets of the writer issue.

    python bench/writer.py            # 3 runs of each, medians
    python bench/writer.py --quick    # one short run of each

The writer is ``databus writer --layout scan`` in its own process. A run publishes a
scan, waits for the writer's log line saying the scan's file is complete, then deletes
the file. Files go to a temporary directory in /dev/shm (tmpfs) unless ``--root`` names
another: the figures are then the writer's, not this VM's disk, whose sustained
writeback falls to ~300 MB/s after the first GB (measure it with ``--root /tmp``).
Prints one table, then as its last line one JSON object.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _server import bench_arguments, bench_server

import databus

SESSION = "bench_writer"


class WriterProcess:
    """``databus writer`` in a subprocess; ``finished(key)`` waits for its log line."""

    def __init__(self, url: str, root: str) -> None:
        self.root = root
        env = {**os.environ, "DATABUS_URL": url, "DATABUS_PREFIX": "benchw"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "databus",
                "writer",
                "--session",
                SESSION,
                "--root",
                root,
                "--layout",
                "scan",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("writing sessions")

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.lines.put((time.monotonic(), line))

    def wait_for(self, text: str, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                when, line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if text in line:
                return when
        raise RuntimeError(f"the writer never logged {text!r}")

    def delete_files(self) -> None:
        for path in Path(self.root).rglob("*.h5"):
            path.unlink()

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run_points(bus: databus.Bus, writer: WriterProcess, points: int) -> float:
    """points/s from the first send to the file entry being complete."""
    scan = bus.session(SESSION).create_scan(title="points", save=True)
    chans = [scan.channel(f"sim:c{i}", "float64") for i in range(4)]
    scan.prepare()
    scan.start()
    data = np.arange(points, dtype=np.float64)
    start = time.monotonic()
    for i in range(0, points, 10_000):
        for ch in chans:
            ch.send(data[i : i + 10_000])
    scan.end()
    done = writer.wait_for(f"finished {scan.key}")
    bus.redis.delete(*[c.key for c in chans])
    writer.delete_files()
    return 4 * points / (done - start)


def run_frames(bus: databus.Bus, writer: WriterProcess, count: int) -> tuple[float, float]:
    """(MB/s from the first send to the entry being complete, seconds from end() to it)."""
    scan = bus.session(SESSION).create_scan(title="frames", save=True)
    img = scan.channel("sim_det:image", "uint16", (1024, 1024))
    scan.prepare()
    scan.start()
    frames = [
        np.random.default_rng(i).integers(0, 4000, (1024, 1024), dtype=np.uint16) for i in range(8)
    ]
    start = time.monotonic()
    for i in range(count):
        img.send(frames[i % len(frames)])
    scan.end()
    ended = time.monotonic()
    done = writer.wait_for(f"finished {scan.key}")
    bus.redis.delete(img.key)
    writer.delete_files()
    return count * frames[0].nbytes / (done - start) / 1e6, done - ended


def main() -> int:
    parser = bench_arguments(__doc__, "runs")
    parser.add_argument(
        "--root", help="directory for the files (default: a temporary one in /dev/shm)"
    )
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    points, frames = (200_000, 100) if args.quick else (1_000_000, 500)
    base = args.root or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    with bench_server(args.url) as url, tempfile.TemporaryDirectory(dir=base) as root:
        bus = databus.connect(url, prefix="benchw")
        writer = WriterProcess(url, root)
        try:
            # A fresh server and writer pay a page fault per 4 KiB of memory they have
            # never used (~0.3 GB/s on these VMs); a long-running bus reuses it. Warm both
            # with one scan through the whole path first.
            run_frames(bus, writer, 480)
            point_rates = [run_points(bus, writer, points) for _ in range(runs)]
            frame_runs = [run_frames(bus, writer, frames) for _ in range(runs)]
            rss = writer.peak_rss_mb()
        finally:
            writer.stop()
            bus.close()
    out = {
        "writer_points_per_s": statistics.median(point_rates),
        "writer_mb_per_s": statistics.median(r[0] for r in frame_runs),
        "lag_s_at_end": statistics.median(r[1] for r in frame_runs),
        "peak_rss_mb": rss,
    }
    targets = {
        "writer_points_per_s": (">=", 20e6, "points/s"),
        "writer_mb_per_s": (">=", 500, "MB/s"),
        "lag_s_at_end": ("<=", 1.0, "s"),
        "peak_rss_mb": ("<=", 300, "MB"),
    }
    print(
        f"databus writer bench: {runs} run(s), medians; 4 x {points} points in blocks, "
        f"{frames} frames 1024x1024 uint16, no compression; files in {base or 'the temp dir'}"
    )
    print(f"{'figure':<22}{'value':>16}  {'unit':<9}{'target':>12}  met")
    for name, (op, target, unit) in targets.items():
        value = out[name]
        ok = value >= target if op == ">=" else value <= target
        shown = f"{op} {target:g}"
        print(f"{name:<22}{value:>16,.2f}  {unit:<9}{shown:>12}  {'yes' if ok else 'NO'}")
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
