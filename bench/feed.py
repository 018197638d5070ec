"""The SDK primitives under blissdata 2.x's reader API: ``Cursor`` and ``Bus.next_scan``.

    python bench/feed.py            # 3 runs of each figure, medians
    python bench/feed.py --quick    # one smaller run, a smoke run

cursor_points_per_s: one ``Cursor`` over 4 float64 channels x 1,000,000 points, published
and sealed first (in blocks of 1,000 points, at full speed: the publisher merges them into
~2 MiB entries), read to the end. cursor_small_entries_points_per_s: the same with every
block flushed on its own (one 8 kB entry per block, as a slow acquisition leaves them).
next_scan_ms_p99: 200 scans, each from the call that creates it to ``next_scan`` returning
it in another process. Prints a table, then as its last line one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
from _server import bench_server

import databus

CHANNELS = 4
BLOCK = 1000
TARGETS = {
    "cursor_points_per_s": ("points/s", 10e6, ">="),
    "cursor_small_entries_points_per_s": ("points/s", None, ""),
    "next_scan_ms_p99": ("ms", 5.0, "<="),
}


def _published(bus: databus.Bus, points: int, flush_each: bool) -> list[databus.ChannelNode]:
    """A sealed scan of CHANNELS float64 channels of ``points`` points each."""
    scan = bus.session("bench_feed").create_scan(title="cursor")
    writers = [scan.channel(f"c{i}", "float64") for i in range(CHANNELS)]
    block = np.arange(BLOCK, dtype=np.float64)
    for start in range(0, points, BLOCK):
        for w in writers:
            w.send(block + start)
        if flush_each:
            while any(w.queue.acked_end < len(w) for w in writers):
                time.sleep(0.0002)
    scan.seal()
    scan.end()
    node = bus.scan(scan.key)
    return [node.channels[f"c{i}"] for i in range(CHANNELS)]


def cursor_rate(bus: databus.Bus, points: int, flush_each: bool) -> float:
    """Points per second a Cursor reads from a sealed scan, all channels together."""
    nodes = _published(bus, points, flush_each)
    read = 0
    start = time.perf_counter()
    with databus.Cursor(nodes) as cursor:
        while not cursor.done:
            for got in cursor.read(5).values():
                read += got.count
    elapsed = time.perf_counter() - start
    if read != CHANNELS * points:
        raise RuntimeError(f"read {read} points of {CHANNELS * points}")
    return read / elapsed


FOLLOWER = """
import json, sys, time
import databus
bus = databus.connect({url!r}, prefix={prefix!r}, memory_guard=False)
since = bus.last_scan_tag()
print("ready", flush=True)
for _ in range({scans}):
    since, node = bus.next_scan(since=since, timeout=30)
    print(json.dumps([node.db_name, time.monotonic()]), flush=True)
"""


def next_scan_p99(bus: databus.Bus, scans: int) -> float:
    """99th percentile, ms, from the call that creates a scan to ``next_scan`` returning
    it in another process (``time.monotonic`` is one clock for every process)."""
    code = FOLLOWER.format(url=bus.url, prefix=bus.settings.prefix, scans=scans)
    follower = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert follower.stdout is not None
    if follower.stdout.readline().strip() != "ready":
        raise RuntimeError("the follower did not start")
    created: dict[str, float] = {}
    session = bus.session("bench_feed")
    for _ in range(scans):
        time.sleep(0.005)  # the follower is waiting again when the next scan comes
        t0 = time.monotonic()
        scan = session.create_scan(title="feed")
        created[scan.key] = t0
        scan.end()
    returned = dict(json.loads(line) for line in follower.stdout)
    follower.wait(30)
    latencies = [returned[key] - t0 for key, t0 in created.items()]
    return float(np.percentile(np.array(latencies) * 1000, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a server to use instead of a private embedded one")
    parser.add_argument("--quick", action="store_true", help="one smaller run")
    args = parser.parse_args()
    runs, points, scans = (1, 200_000, 50) if args.quick else (3, 1_000_000, 200)
    figures: dict[str, list[float]] = {name: [] for name in TARGETS}
    with bench_server(args.url) as url:
        for _ in range(runs):
            with databus.connect(url, prefix="bench_feed", memory_guard=False) as bus:
                figures["cursor_points_per_s"].append(cursor_rate(bus, points, False))
                figures["cursor_small_entries_points_per_s"].append(
                    cursor_rate(bus, points // 10, True)
                )
                figures["next_scan_ms_p99"].append(next_scan_p99(bus, scans))
    medians = {name: round(statistics.median(values), 4) for name, values in figures.items()}
    print(f"{'figure':34} {'value':>16}  {'unit':9} {'target':>10}  met")
    for name, value in medians.items():
        unit, target, op = TARGETS[name]
        ok = target is not None and (value >= target if op == ">=" else value <= target)
        met = "" if target is None else ("yes" if ok else "NO")
        shown = "" if target is None else f"{op} {target:g}"
        print(f"{name:34} {value:>16,.4f}  {unit:9} {shown:>10}  {met}")
    print(json.dumps(medians))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
