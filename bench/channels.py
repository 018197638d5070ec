"""Shared-channel latencies, against the targets of the runner issue.

    python bench/channels.py            # 50 flips, 500 propagations, 3 rounds, medians
    python bench/channels.py --quick    # 10 flips, 100 propagations, 1 round

flip_to_stop: an acquisition process runs 1 kHz loopscans with a StopOnChannel hook; this
process (the analysis) sets ``stop_alignment`` at a random moment of each scan, and the
time from that assignment to the hook raising StopIteration in the runner is measured.
channel_propagation: a value set here reaches a callback in another process. Every value
carries its send time (time.monotonic(), one clock for all processes on the machine).
Prints one table, then as its last line one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time

import numpy as np
from _server import bench_arguments, bench_server

import databus
from databus.channels import Channel

TARGETS = {
    "flip_to_stop_ms_p50": ("ms", None),
    "flip_to_stop_ms_p99": ("ms", 5.0),
    "channel_propagation_ms_p99": ("ms", 2.0),
}


def acquisition(url: str, flips: int) -> None:
    """Run ``flips`` scans that each stop when the flag is set; report when they act."""
    from databus import scan
    from databus.hooks import StopOnChannel
    from databus.sim import DiodeCounter

    bus = databus.connect(url, prefix="benchch")
    databus.set_default_bus(bus)
    scan.set_session("bench_channels")

    class Timed(StopOnChannel):
        def on_scan_data(self, *args):
            try:
                super().on_scan_data(*args)
            except StopIteration:
                print(json.dumps({"acted": time.monotonic()}), flush=True)
                raise

    counter = DiodeCounter("diode")
    for _ in range(flips):
        s = scan.loopscan(100_000, 0.001, counter, save=False, run=False)
        s.set_watchdog_callback(Timed("stop_alignment", bus=bus))
        print(json.dumps({"started": True}), flush=True)
        s.run()


def listener(url: str) -> None:
    """Print the latency of every change of ``propagation`` (its value is the send time)."""
    bus = databus.connect(url, prefix="benchch")
    out = sys.stdout

    subscribed = False

    def on_change(value: float) -> None:
        if subscribed:  # not the value an earlier round left behind
            out.write(f"{(time.monotonic() - value) * 1000:.6f}\n")
            out.flush()

    Channel("propagation", default_value=0.0, callback=on_change, bus=bus)
    subscribed = True
    print("ready", flush=True)
    while True:
        time.sleep(1)


def measure(url: str, flips: int, sets: int) -> dict[str, float]:
    bus = databus.connect(url, prefix="benchch")
    flag = Channel("stop_alignment", default_value=False, bus=bus)
    me = [sys.executable, __file__]
    acq = subprocess.Popen(
        [*me, "--role", "acquisition", url, str(flips)], stdout=subprocess.PIPE, text=True
    )
    flip_ms = []
    try:
        for _ in range(flips):
            assert json.loads(acq.stdout.readline())["started"]  # type: ignore[union-attr]
            time.sleep(random.uniform(0.05, 0.1))  # the scan is running
            t_flip = time.monotonic()
            flag.value = True
            acted = json.loads(acq.stdout.readline())["acted"]  # type: ignore[union-attr]
            flip_ms.append((acted - t_flip) * 1000)
        acq.wait(30)
    finally:
        acq.kill()
    lis = subprocess.Popen([*me, "--role", "listener", url], stdout=subprocess.PIPE, text=True)
    try:
        assert lis.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        channel = Channel("propagation", default_value=0.0, bus=bus)
        for _ in range(sets):
            channel.value = time.monotonic()
            time.sleep(0.005)
        prop_ms = [float(lis.stdout.readline()) for _ in range(sets)]  # type: ignore[union-attr]
    finally:
        lis.kill()
    bus.close()
    return {
        "flip_to_stop_ms_p50": float(np.percentile(flip_ms, 50)),
        "flip_to_stop_ms_p99": float(np.percentile(flip_ms, 99)),
        "channel_propagation_ms_p99": float(np.percentile(prop_ms, 99)),
    }


def main() -> int:
    parser = bench_arguments(__doc__)
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "acquisition":
            acquisition(rest[0], int(rest[1]))
        else:
            listener(rest[0])
        return 0
    rounds = args.rounds or (1 if args.quick else 3)
    flips, sets = (10, 100) if args.quick else (50, 500)
    with bench_server(args.url) as url:
        runs = [measure(url, flips, sets) for _ in range(rounds)]
    out = {k: statistics.median(r[k] for r in runs) for k in TARGETS}
    print(
        f"databus channels bench: {rounds} round(s), medians; {flips} flips at 1 kHz, "
        f"{sets} propagations"
    )
    print(f"{'figure':<28}{'value':>10}  {'unit':<5}{'target':>9}  met")
    for name, (unit, target) in TARGETS.items():
        shown = f"<= {target:g}" if target is not None else ""
        met = "" if target is None else ("yes" if out[name] <= target else "NO")
        print(f"{name:<28}{out[name]:>10.3f}  {unit:<5}{shown:>9}  {met}")
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
