"""The bluesky bridges both ways, against the targets of issue 13, next to bluesky's own
0MQ path (Publisher -> Proxy -> RemoteDispatcher) measured in the same run.

    python bench/bluesky.py            # 3 runs, medians
    python bench/bluesky.py --quick    # one short run, a smoke run

- to_bluesky_events_per_s: a bus scan of 4 float64 channels x 100,000 points, one send()
  per point, bridged by ToBluesky (its own process) to a RemoteDispatcher with msgpack
  (its own process); rows of event_pages received per second, from the first send() to
  the last row received.
- delivered_fraction: that flood's rows received / rows sent (its stop arriving is
  reported as stop_received).
- to_bluesky_p50/p99_ms_1khz: the same channels at 1 kHz for 10 s; each point carries its
  send time (time.monotonic(), one clock for every process on the machine) and the
  dispatcher's callback computes the latency of each row.
- from_bluesky_events_per_s: pre-composed event-model documents (start, descriptor,
  100,000 events one at a time, stop) fed to BusPublisher with no RunEngine, to a bus
  follower in its own process, from the first document to the follower's last point;
  from_bluesky_page_events_per_s: the same as event_pages of 1,000 rows.
- The peer: bluesky's Publisher (this process) -> Proxy (its own process) ->
  RemoteDispatcher (its own process), the same flood as events one at a time with msgpack
  and with pickle, and the same 1 kHz latency with msgpack. Its SUB/PUB sockets drop at
  their high-water mark, so its delivered fraction and stop_received are reported too.

A dispatcher that has had no document for 2 s reports what it got (a run whose stop was
lost). Prints one table, then as its last line one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# This file is named bluesky.py, and its folder, first on sys.path when it runs, would
# hide the bluesky package: the folder goes last (it still provides _server).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))

import msgpack_numpy
import numpy as np
from _server import bench_arguments

PREFIX = "benchbluesky"
SESSION = "bench_bluesky"
CHANNELS = [f"c{i}" for i in range(4)]
PAGE_ROWS = 1000
IDLE_S = 2.0
# name: (unit, target, comparison)
TARGETS: dict[str, tuple[str, float | None, str]] = {
    "peer_msgpack_events_per_s": ("events/s", None, ""),
    "peer_pickle_events_per_s": ("events/s", None, ""),
    "peer_msgpack_delivered_fraction": ("", None, ""),
    "peer_pickle_delivered_fraction": ("", None, ""),
    "peer_stop_received": ("", None, ""),
    "peer_p50_ms_1khz": ("ms", None, ""),
    "peer_p99_ms_1khz": ("ms", None, ""),
}
Send = Callable[[str, dict], None]


# ---------------------------------------------------------------- subprocesses


def proxy() -> None:
    """bluesky's Proxy on two free loopback ports; prints them, then forwards forever."""
    from bluesky.callbacks.zmq import Proxy

    forwarder = Proxy("tcp://127.0.0.1", "tcp://127.0.0.1")
    print(forwarder.in_port, forwarder.out_port, flush=True)
    forwarder.start()


def dispatcher(address: str, serializer: str) -> None:
    """An unmodified RemoteDispatcher whose callback counts rows and their latency;
    prints "ready" at the first start, then one JSON line per run at its stop (or after
    IDLE_S without a document, a run whose stop was lost)."""
    import pickle

    from bluesky.callbacks.zmq import RemoteDispatcher

    loads = msgpack_numpy.loads if serializer == "msgpack" else pickle.loads
    remote = RemoteDispatcher(address, deserializer=loads)
    run: dict[str, Any] = {}
    ready = False

    def reset() -> None:
        run.update(rows=0, lat=[], last=0.0, key=CHANNELS[0])

    def report(stopped: bool) -> None:
        lat = np.concatenate([np.atleast_1d(x) for x in run["lat"]]) * 1000 if run["lat"] else [0]
        fields = {"rows": run["rows"], "last": run["last"], "stop": stopped}
        fields.update(p50=float(np.percentile(lat, 50)), p99=float(np.percentile(lat, 99)))
        print(json.dumps(fields), flush=True)
        reset()

    def on_document(name: str, doc: dict) -> None:
        nonlocal ready
        now = time.monotonic()
        if name == "start":
            reset()
            if not ready:
                ready = True
                print("ready", flush=True)
        elif name == "descriptor":
            run["key"] = next(k for k in doc["data_keys"] if k.endswith(CHANNELS[0]))
        elif name == "event":
            run["rows"] += 1
            run["lat"].append(now - doc["data"][run["key"]])
        elif name == "event_page":
            run["rows"] += len(doc["seq_num"])
            run["lat"].append(now - np.asarray(doc["data"][run["key"]]))
        elif name == "stop":
            run["last"] = now
            report(True)
            return
        run["last"] = now

    def watch() -> None:
        if run["rows"] and time.monotonic() - run["last"] > IDLE_S:
            report(False)
        remote.loop.call_later(0.2, watch)

    reset()
    remote.subscribe(on_document)
    remote.loop.call_later(0.2, watch)
    remote.start()


def follower(url: str) -> None:
    """Follow the session; print "ready" at the first scan, then for each scan at its end
    one JSON line: points of its channel c0 and when the last came."""
    import databus

    events = databus.connect(url, prefix=PREFIX).session(SESSION).follow()
    points, last, ready = 0, 0.0, False
    for event in events:
        kind = event.type
        if kind is databus.EventType.NEW_NODE and not ready:
            ready = True
            print("ready", flush=True)
        elif kind is databus.EventType.NEW_DATA and event.node.name.endswith(CHANNELS[0]):
            points += len(event.data.data)
            last = time.monotonic()
        elif kind is databus.EventType.END_SCAN:
            print(json.dumps({"points": points, "last": last}), flush=True)
            points = 0


@contextlib.contextmanager
def spawned(*args: str) -> Iterator[subprocess.Popen[str]]:
    """This script run with ``args`` in its own process, killed on the way out."""
    child = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def read_report(child: subprocess.Popen[str]) -> dict:
    """The child's next report of a measured run (probe runs, one row, are skipped)."""
    assert child.stdout is not None
    while True:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"{child.args[2:]} exited")
        report = json.loads(line)
        if report.get("rows", report.get("points", 0)) > 1:
            return report


def wait_ready(child: subprocess.Popen[str], probe: Callable[[], None]) -> None:
    """Probe (a one-row run) every 0.5 s until the child says it got one."""
    assert child.stdout is not None
    for _ in range(40):
        probe()
        if select.select([child.stdout], [], [], 0.5)[0]:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{child.args[2:]} did not start")
            return
    raise RuntimeError(f"{child.args[2:]} saw none of 40 probes")


# ----------------------------------------------------------------------- pacing


def paced(count: int, rate: float) -> Iterator[int]:
    """0 .. count-1, each yielded at its time at ``rate`` per second."""
    start = time.monotonic()
    for i in range(count):
        target = start + i / rate
        while (now := time.monotonic()) < target:
            if target - now > 0.0003:
                time.sleep(target - now - 0.0002)
        yield i


def figures(report: dict, sent: int, t0: float) -> dict[str, float]:
    """Rate, delivered fraction, stop and latency of a dispatcher's or follower's report."""
    rows = report.get("rows", report.get("points"))
    return {
        "events_per_s": rows / (report["last"] - t0),
        "delivered": rows / sent,
        "stop": float(report.get("stop", True)),
        "p50": report.get("p50", 0.0),
        "p99": report.get("p99", 0.0),
    }


# ------------------------------------------------------------------------- peer


class Run:
    """One event-model run of the 4 float channels, composed by event_model."""

    def __init__(self, plan_name: str) -> None:
        import event_model

        bundle = event_model.compose_run(metadata={"plan_name": plan_name})
        self.start = bundle.start_doc
        keys = {c: {"dtype": "number", "shape": [], "source": "bench"} for c in CHANNELS}
        descriptor = bundle.compose_descriptor(name="primary", data_keys=keys)
        self.descriptor = descriptor.descriptor_doc
        self.compose_event = descriptor.compose_event
        self.compose_page = descriptor.compose_event_page
        self.compose_stop = bundle.compose_stop

    def event(self, i: int, value: float) -> dict:
        data = dict.fromkeys(CHANNELS, value)
        return self.compose_event(data=data, timestamps=data, seq_num=i + 1, validate=False)

    def events(self, count: int) -> list[dict]:
        return [self.event(i, float(i)) for i in range(count)]

    def pages(self, count: int) -> list[dict]:
        pages = []
        for first in range(0, count, PAGE_ROWS):
            rows = list(range(first, min(first + PAGE_ROWS, count)))
            data = {c: [float(i) for i in rows] for c in CHANNELS}
            seq = [i + 1 for i in rows]
            pages.append(self.compose_page(data, data, seq_num=seq, validate=False))
        return pages

    def stop(self) -> dict:
        return self.compose_stop(exit_status="success", validate=False)


def probe_run(send: Send) -> None:
    run = Run("probe")
    for name, doc in [("start", run.start), ("descriptor", run.descriptor)]:
        send(name, doc)
    send("event", run.event(0, time.monotonic()))
    send("stop", run.stop())


def feed(send: Send, run: Run, kind: str, docs: list[dict]) -> float:
    """Send a whole run, ``docs`` being its events or pages; returns the first send time."""
    t0 = time.monotonic()
    send("start", run.start)
    send("descriptor", run.descriptor)
    for doc in docs:
        send(kind, doc)
    send("stop", run.stop())
    return t0


def feed_paced(send: Send, run: Run, count: int) -> None:
    """``count`` events at 1 kHz, each holding its send time."""
    send("start", run.start)
    send("descriptor", run.descriptor)
    for i in paced(count, 1000.0):
        send("event", run.event(i, time.monotonic()))
    send("stop", run.stop())


def peer_round(peers: dict[str, tuple], points: int, seconds: float) -> dict[str, float]:
    """bluesky's own path: the flood with each serializer, the 1 kHz run with msgpack."""
    out: dict[str, float] = {}
    stops = []
    for serializer, (publisher, child) in peers.items():
        run = Run("flood")
        docs = run.events(points)
        t0 = feed(publisher, run, "event", docs)
        got = figures(read_report(child), points, t0)
        out[f"peer_{serializer}_events_per_s"] = got["events_per_s"]
        out[f"peer_{serializer}_delivered_fraction"] = got["delivered"]
        stops.append(got["stop"])
    out["peer_stop_received"] = statistics.mean(stops)
    publisher, child = peers["msgpack"]
    feed_paced(publisher, Run("1khz"), int(seconds * 1000))
    got = figures(read_report(child), 1, 0.0)
    out["peer_p50_ms_1khz"], out["peer_p99_ms_1khz"] = got["p50"], got["p99"]
    return out


@contextlib.contextmanager
def peer_paths() -> Iterator[dict[str, tuple[Send, subprocess.Popen[str]]]]:
    """For msgpack and pickle: a Publisher here, a Proxy and a RemoteDispatcher each in
    its own process, the dispatcher seen receiving."""
    from bluesky.callbacks.zmq import Publisher

    with contextlib.ExitStack() as stack:
        paths = {}
        for serializer in ("msgpack", "pickle"):
            forwarder = stack.enter_context(spawned("--proxy"))
            assert forwarder.stdout is not None
            in_port, out_port = forwarder.stdout.readline().split()
            child = stack.enter_context(spawned("--dispatcher", out_port, serializer))
            dumps = msgpack_numpy.dumps if serializer == "msgpack" else None
            publisher = Publisher(in_port, **({"serializer": dumps} if dumps else {}))
            stack.callback(publisher.close)
            wait_ready(child, functools.partial(probe_run, publisher))
            paths[serializer] = (publisher, child)
        yield paths


# ------------------------------------------------------------------------- main


def main() -> int:
    parser = bench_arguments(__doc__, "runs")
    parser.add_argument("--proxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dispatcher", nargs=2, metavar=("ADDRESS", "SER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        proxy()
        return 0
    if args.dispatcher:
        dispatcher(*args.dispatcher)
        return 0
    runs = args.runs or (1 if args.quick else 3)
    points = 20_000 if args.quick else 100_000
    seconds = 2.0 if args.quick else 10.0
    with peer_paths() as peers:
        results = [peer_round(peers, points, seconds) for _ in range(runs)]
    out = {k: statistics.median(r[k] for r in results) for k in TARGETS}
    print(
        f"databus bluesky bench: {runs} run(s), medians; {points} points x {len(CHANNELS)} channels"
    )
    print(f"{'figure':<34}{'value':>14}  {'unit':<9}{'target':>10}  met")
    for name, (unit, target, op) in TARGETS.items():
        value = out[name]
        if target is None:
            met, shown = "", ""
        else:
            ok = {"<=": value <= target, ">=": value >= target, "==": value == target}[op]
            met, shown = ("yes" if ok else "NO"), f"{op} {target:g}"
        print(f"{name:<34}{value:>14,.3f}  {unit:<9}{shown:>10}  {met}")
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
