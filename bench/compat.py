"""The blissdata compatibility layer's cost, against the targets of issue 12.

    python bench/compat.py            # 3 rounds, medians
    python bench/compat.py --quick    # one short round, a smoke run

- cursor_points_per_s: a blissdata 2.x ``CursorGroup`` over 4 float64 streams of
  1,000,000 points each (published in blocks of 10,000 by the 2.x writer side, then
  sealed) read to ``EndOfStream``, ``get_data()`` of every view taken.
- get_next_scan_ms_p99: from just before ``DataStore.create_scan`` to the return of
  ``get_next_scan`` in another process (one clock: time.monotonic), 200 scans, each
  created once the reader had the one before.
- classic_walk_overhead: events/s of the classic ``walk_on_new_events``
  (``databus.blissdata.data.node``) divided by events/s of ``Session.follow()``, both
  joining the same running scan (4 channels x 1,000,000 points in blocks of 100, which a
  walk joining it delivers whole) and timed until its last point: one warm-up walk of
  each, then five of each in turn; the ratio of the medians.

Prints one table, then as its last line one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np
from _server import bench_arguments, bench_server

import databus
from databus.blissdata import DataStore
from databus.blissdata.data.node import get_session_node
from databus.blissdata.exceptions import EndOfStream
from databus.blissdata.streams import CursorGroup
from databus.blissdata.streams.default import Stream

PREFIX = "benchcompat"
IDENTITY = {"name": "bench", "number": 1, "data_policy": "none", "session": "bench_compat"}
TARGETS = {
    "cursor_points_per_s": ("points/s", 10e6, ">="),
    "get_next_scan_ms_p99": ("ms", 5.0, "<="),
    "classic_walk_overhead": ("", 0.9, ">="),
}


def connect(url: str) -> databus.Bus:
    return databus.connect(url, prefix=PREFIX)


# ------------------------------------------------------------------- cursor


def cursor_points_per_s(store: DataStore, points: int) -> float:
    """Points per second a CursorGroup reads from 4 sealed float64 streams."""
    scan = store.create_scan(IDENTITY)
    streams = [scan.create_stream(Stream.make_definition(f"c{i}", "float64")) for i in range(4)]
    scan.prepare()
    scan.start()
    block = np.arange(10_000, dtype=np.float64)
    for first in range(0, points, len(block)):
        for stream in streams:
            stream.send(block + first)
    scan.stop()
    scan.close()
    group = CursorGroup(store.load_scan(scan.key).streams)
    total = 0
    t0 = time.perf_counter()
    while True:
        try:
            views = group.read(timeout=10)
        except EndOfStream:
            break
        total += sum(len(view.get_data()) for view in views.values())
    elapsed = time.perf_counter() - t0
    if total != 4 * points:
        raise RuntimeError(f"the cursor read {total} points of {4 * points}")
    return total / elapsed


# --------------------------------------------------------------------- feed


def feed_reader(url: str, count: int) -> None:
    """In its own process: ``get_next_scan`` ``count`` times, printing key and time."""
    store = DataStore(connect(url))
    since = store.get_last_scan_timetag()
    print("ready", flush=True)
    for _ in range(count):
        since, key = store.get_next_scan(since=since)
        print(key, time.monotonic(), flush=True)


def get_next_scan_ms(store: DataStore, url: str, count: int) -> list[float]:
    """Milliseconds from create_scan to get_next_scan's return, per scan."""
    reader = subprocess.Popen(
        [sys.executable, __file__, "--feed-reader", url, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    latencies = []
    try:
        assert reader.stdout is not None
        if reader.stdout.readline().strip() != "ready":
            raise RuntimeError("the feed reader did not start")
        for _ in range(count):
            t0 = time.monotonic()
            scan = store.create_scan(IDENTITY)
            key, seen = reader.stdout.readline().split()
            if key != scan.key:
                raise RuntimeError(f"the reader got {key}, not {scan.key}")
            latencies.append((float(seen) - t0) * 1000)
            scan.close()
    finally:
        reader.kill()
        reader.wait()
    return latencies


# -------------------------------------------------------------------- walks


def events_per_s(events: object, points: int) -> float:
    """Events per second from ``events`` until ``points`` points of NEW_DATA came."""
    got = 0
    t0 = time.perf_counter()
    for count, event in enumerate(events, 1):  # type: ignore[call-overload]
        if event.type is databus.EventType.NEW_DATA:
            got += len(event.data.data)
            if got >= points:
                return count / (time.perf_counter() - t0)
    raise RuntimeError(f"the walk ended after {got} points of {points}")


def walk_ratio(bus: databus.Bus, points: int, repeats: int) -> float:
    """Classic walk_on_new_events events/s over follow()'s, joining one running scan:
    after one warm-up walk of each, ``repeats`` walks of each in turn; the ratio of the
    medians."""
    session = bus.session("bench_walk")
    scan = session.create_scan({"title": "walk bench"})
    channels = [scan.channel(f"c{i}", "float64") for i in range(4)]
    scan.prepare()
    scan.start()
    block = np.arange(100, dtype=np.float64)
    for first in range(0, points, len(block)):
        for channel in channels:
            channel.send(block + first)
    for channel in channels:
        channel.flush()
    rates: dict[str, list[float]] = {"classic": [], "follow": []}
    for _ in range(repeats + 1):
        for which, found in rates.items():
            if which == "classic":
                walk = get_session_node("bench_walk", bus).walk_on_new_events()
            else:
                walk = session.follow()
            found.append(events_per_s(walk, 4 * points))
            walk.close()
    scan.end()
    return statistics.median(rates["classic"][1:]) / statistics.median(rates["follow"][1:])


# --------------------------------------------------------------------- main


def one_round(bus: databus.Bus, url: str, quick: bool) -> dict[str, float]:
    store = DataStore(bus)
    out = {"cursor_points_per_s": cursor_points_per_s(store, 100_000 if quick else 1_000_000)}
    latencies = get_next_scan_ms(store, url, 50 if quick else 200)
    out["get_next_scan_ms_p99"] = float(np.percentile(latencies, 99))
    out["classic_walk_overhead"] = walk_ratio(bus, 100_000 if quick else 1_000_000, 5)
    return out


def main() -> int:
    parser = bench_arguments(__doc__)
    parser.add_argument("--feed-reader", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feed_reader:
        feed_reader(args.feed_reader[0], int(args.feed_reader[1]))
        return 0
    rounds = args.rounds or (1 if args.quick else 3)
    with bench_server(args.url) as url:
        bus = connect(url)
        runs = [one_round(bus, url, args.quick) for _ in range(rounds)]
        bus.close()
    out = {k: statistics.median(r[k] for r in runs) for k in TARGETS}
    print(f"databus blissdata-compat bench: {rounds} round(s), medians")
    print(f"{'figure':<24}{'value':>16}  {'unit':<9}{'target':>10}  met")
    for name, (unit, target, op) in TARGETS.items():
        value = out[name]
        ok = value >= target if op == ">=" else value <= target
        print(
            f"{name:<24}{value:>16,.3f}  {unit:<9}{op + ' ' + format(target, 'g'):>10}  "
            f"{'yes' if ok else 'NO'}"
        )
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
