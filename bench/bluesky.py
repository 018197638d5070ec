"""The bluesky bridges both ways, against the targets of issue 13, next to bluesky's own
0MQ path (Publisher -> Proxy -> RemoteDispatcher) measured in the same run.

    python bench/bluesky.py            # 3 runs, medians
    python bench/bluesky.py --quick    # one short run, a smoke run

- to_bluesky_events_per_s: a bus scan of 4 float64 channels x 100,000 points, one send()
  per point, bridged by ToBluesky (its own process) to a RemoteDispatcher with msgpack
  (its own process); rows of event_pages received per second, from the first send() to
  the last row received.
- delivered_fraction: that flood's rows received / rows sent; stop_received: the fraction
  of runs whose stop document arrived.
- to_bluesky_p50/p99_ms_1khz: the same channels at 1 kHz for 10 s; each point carries its
  send time (time.monotonic(), one clock for every process on the machine) and the
  dispatcher's callback computes the latency of each row.
- from_bluesky_events_per_s: pre-composed event-model documents (start, descriptor,
  100,000 events one at a time, stop) fed to BusPublisher with no RunEngine, to a bus
  follower in its own process, from the first document to the follower's last point;
  from_bluesky_page_events_per_s: the same as event_pages of 1,000 rows. The feed waits
  for room in the publisher's queue (``wait=True``, as the from-bluesky bridge does): a
  loop that composes documents outruns the worker while it creates the scan, which a
  RunEngine does not, and with ``wait=False`` events past ``max_queue`` are dropped.
- The peer: bluesky's Publisher (this process) -> Proxy (its own process) ->
  RemoteDispatcher (its own process), the same flood as events one at a time with msgpack
  and with pickle, and the same 1 kHz latency with msgpack. Its SUB/PUB sockets drop at
  their high-water mark, so its delivered fraction and stop_received are reported too.

A dispatcher that has had no document for 2 s reports what it got (a run whose stop was
lost). Prints one table, then as its last line one JSON object with the medians and,
as ``<figure>_vs_peer``, ours divided by the peer's.
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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

# This file is named bluesky.py, and its folder, first on sys.path when it runs, would
# hide the bluesky package: the folder goes last (it still provides _server).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.append(sys.path.pop(0))

import msgpack_numpy
import numpy as np
from _server import bench_arguments, bench_server

import databus

PREFIX = "benchbluesky"
SESSION = "bench_to_bluesky"
FROM_SESSION = "bench_from_bluesky"
CHANNELS = [f"c{i}" for i in range(4)]
PAGE_ROWS = 1000
IDLE_S = 2.0
PROBE = "probe"  # the plan name (scan type) of the runs that only check a path works
# name: (unit, target, comparison, the peer's figure it compares with)
FIGURES: dict[str, tuple[str, float | None, str, str | None]] = {
    "to_bluesky_events_per_s": ("events/s", 100_000, ">=", "peer_msgpack_events_per_s"),
    "delivered_fraction": ("", 1.0, "==", "peer_msgpack_delivered_fraction"),
    "stop_received": ("", 1.0, "==", "peer_msgpack_stop_received"),
    "to_bluesky_p50_ms_1khz": ("ms", None, "", "peer_p50_ms_1khz"),
    "to_bluesky_p99_ms_1khz": ("ms", 2.0, "<=", "peer_p99_ms_1khz"),
    "from_bluesky_events_per_s": ("events/s", 50_000, ">=", None),
    "from_bluesky_page_events_per_s": ("events/s", None, "", None),
    "from_bluesky_delivered_fraction": ("", 1.0, "==", None),
    "from_bluesky_dropped_documents": ("docs", 0, "==", None),
    "peer_pickle_events_per_s": ("events/s", None, "", None),
    "peer_pickle_delivered_fraction": ("", None, "", None),
    "peer_pickle_stop_received": ("", None, "", None),
}
Send = Callable[[str, dict], None]


# ---------------------------------------------------------------- subprocesses


def proxy() -> None:
    """bluesky's Proxy on two free loopback ports; prints them, then forwards forever."""
    from bluesky.callbacks.zmq import Proxy

    forwarder = Proxy("tcp://127.0.0.1", "tcp://127.0.0.1")
    print(forwarder.in_port, forwarder.out_port, flush=True)
    forwarder.start()


class RowCounter:
    """A bluesky callback that counts each run's rows and their latency (now minus the
    value of data key c0, its send time), run by run since runs may interleave. Prints
    "ready" at the first start, then one JSON line per run at its stop, or once it had no
    document for IDLE_S (its stop was lost): rows, last arrival, stop, p50/p99 and whether
    it is a probe (plan name, the scan type on the bus, "probe")."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}  # by start uid
        self.run_of: dict[str, str] = {}  # descriptor uid -> start uid
        self.ready = False

    def __call__(self, name: str, doc: dict) -> None:
        now = time.monotonic()
        if name == "start":
            probe = doc.get("plan_name") == PROBE
            self.runs[doc["uid"]] = {"rows": 0, "lat": [], "last": now, "probe": probe}
            if not self.ready:
                self.ready = True
                print("ready", flush=True)
            return
        events = name in ("event", "event_page")
        uid = self.run_of.get(doc["descriptor"]) if events else doc.get("run_start")
        run = self.runs.get(uid)  # type: ignore[arg-type]
        if run is None:
            return  # a run whose start this dispatcher never had: not measured
        run["last"] = now
        if name == "descriptor":
            self.run_of[doc["uid"]] = str(uid)
            run["key"] = next(k for k in doc["data_keys"] if k.endswith(CHANNELS[0]))
        elif name == "event":
            run["rows"] += 1
            run["lat"].append(now - doc["data"][run["key"]])
        elif name == "event_page":
            run["rows"] += len(doc["seq_num"])
            run["lat"].append(now - np.asarray(doc["data"][run["key"]]))
        elif name == "stop":
            self.report(self.runs.pop(str(uid)), stopped=True)

    def watch(self) -> None:
        """Report the runs that had no document for IDLE_S."""
        now = time.monotonic()
        for uid, run in list(self.runs.items()):
            if now - run["last"] > IDLE_S:
                self.report(self.runs.pop(uid), stopped=False)

    @staticmethod
    def report(run: dict[str, Any], stopped: bool) -> None:
        lat = np.concatenate([np.atleast_1d(x) for x in run["lat"]]) * 1000 if run["lat"] else [0]
        fields = {k: run[k] for k in ("rows", "last", "probe")}
        fields.update(stop=stopped, p50=np.percentile(lat, 50), p99=np.percentile(lat, 99))
        print(json.dumps(fields, default=float), flush=True)


def dispatcher(address: str, serializer: str) -> None:
    """An unmodified RemoteDispatcher with a RowCounter, until killed."""
    import pickle

    from bluesky.callbacks.zmq import RemoteDispatcher

    loads = msgpack_numpy.loads if serializer == "msgpack" else pickle.loads
    remote = RemoteDispatcher(address, deserializer=loads)
    counter = RowCounter()

    def watch() -> None:
        counter.watch()
        remote.loop.call_later(0.2, watch)

    remote.subscribe(counter)
    remote.loop.call_later(0.2, watch)
    remote.start()


def bridge(url: str) -> None:
    """ToBluesky with msgpack on a free loopback port: prints its address, then runs."""
    from databus.clients.bluesky.to_bluesky import ToBluesky

    bus = databus.connect(url, prefix=PREFIX)
    to_bluesky = ToBluesky(SESSION, bind="tcp://127.0.0.1:*", serializer="msgpack", bus=bus)
    print(to_bluesky.address, flush=True)
    to_bluesky.run()


def follower(url: str) -> None:
    """Follow the session; print "ready" at the first scan, then for each scan at its end
    one JSON line: points of its channel c0, when the last came, whether it is a probe."""
    events = databus.connect(url, prefix=PREFIX).session(FROM_SESSION).follow()
    scans: dict[str, dict[str, Any]] = {}  # by scan key: scans may overlap
    ready = False
    for event in events:
        kind, node = event.type, event.node
        if kind is databus.EventType.NEW_NODE and node.type == "scan":
            if not ready:
                ready = True
                print("ready", flush=True)
            scans[node.db_name] = {"points": 0, "last": 0.0}
        elif kind is databus.EventType.NEW_DATA and node.name.endswith(CHANNELS[0]):
            scan = scans[node.parent.db_name]
            scan["points"] += len(event.data.data)
            scan["last"] = time.monotonic()
        elif kind is databus.EventType.END_SCAN:
            scan = scans.pop(node.db_name)
            scan["probe"] = node.info.get("type") == PROBE
            print(json.dumps(scan), flush=True)


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
    """The child's next report of a measured run (probe runs are skipped)."""
    assert child.stdout is not None
    while True:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"{child.args[2:]} exited")
        report = json.loads(line)
        if not report["probe"]:
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
    """0 .. count-1, each yielded at its time at ``rate`` per second (late ones at once).
    It sleeps rather than spins, as an acquisition loop would: a spinning sender takes a
    third of a core from the processes whose latency is measured."""
    start = time.monotonic()
    for i in range(count):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
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


# ------------------------------------- event-model runs: the peer's and BusPublisher's input


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
    """A run of one event, to see that the path delivers."""
    run = Run(PROBE)
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
    for serializer, (publisher, child) in peers.items():
        run = Run("flood")
        docs = run.events(points)
        t0 = feed(publisher, run, "event", docs)
        got = figures(read_report(child), points, t0)
        out[f"peer_{serializer}_events_per_s"] = got["events_per_s"]
        out[f"peer_{serializer}_delivered_fraction"] = got["delivered"]
        out[f"peer_{serializer}_stop_received"] = got["stop"]
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


# ---------------------------------------------------------------- bus -> bluesky


def bus_scan(session: databus.Session, title: str, ticks: Iterable[int]) -> float:
    """A scan of the 4 float channels, one send() per channel at each tick, all holding
    the tick's time; returns the time of the first send."""
    scan = session.create_scan(title=title, type=title)
    sends = [scan.channel(c, "float64").send for c in CHANNELS]
    scan.prepare()
    scan.start()
    now = time.monotonic
    t0 = now()
    for _ in ticks:
        t = now()
        for send in sends:
            send(t)
    scan.end()
    return t0


def to_bluesky_round(
    session: databus.Session, child: subprocess.Popen[str], points: int, seconds: float
) -> dict[str, float]:
    """The flood, then the 1 kHz run, through the bridge to the dispatcher."""
    t0 = bus_scan(session, "flood", range(points))
    got = figures(read_report(child), points, t0)
    out = {
        "to_bluesky_events_per_s": got["events_per_s"],
        "delivered_fraction": got["delivered"],
        "stop_received": got["stop"],
    }
    bus_scan(session, "1khz", paced(int(seconds * 1000), 1000.0))
    got = figures(read_report(child), 1, 0.0)
    out["to_bluesky_p50_ms_1khz"], out["to_bluesky_p99_ms_1khz"] = got["p50"], got["p99"]
    return out


@contextlib.contextmanager
def to_bluesky_path(session: databus.Session, url: str) -> Iterator[subprocess.Popen[str]]:
    """The bridge and a msgpack RemoteDispatcher, each in its own process, the dispatcher
    seen receiving; the session is made to exist first (the bridge wants one)."""
    probe = functools.partial(bus_scan, session, PROBE, range(1))
    probe()
    with spawned("--bridge", url) as to_bluesky:
        assert to_bluesky.stdout is not None
        address = to_bluesky.stdout.readline().strip()
        if not address:
            raise RuntimeError("the bridge did not start (its error is above)")
        with spawned("--dispatcher", address, "msgpack") as child:
            wait_ready(child, probe)
            yield child


# ---------------------------------------------------------------- bluesky -> bus


def from_bluesky_round(
    bus: databus.Bus, child: subprocess.Popen[str], points: int
) -> dict[str, float]:
    """Pre-composed runs, as events and as event_pages, each into a BusPublisher of its
    own (as a RunEngine would hold one), to the follower. Its close() publishes what is
    queued and ends a run whose stop it dropped (its queue was full: counted)."""
    from databus.clients.bluesky.publisher import BusPublisher

    out: dict[str, float] = {}
    delivered, dropped = [], 0
    for figure, kind in (("events_per_s", "event"), ("page_events_per_s", "event_page")):
        run = Run("flood")
        docs = run.events(points) if kind == "event" else run.pages(points)
        with BusPublisher(session=FROM_SESSION, bus=bus, wait=True) as publisher:
            t0 = feed(publisher, run, kind, docs)
        dropped += publisher.statistics().dropped
        got = figures(read_report(child), points, t0)
        out[f"from_bluesky_{figure}"] = got["events_per_s"]
        delivered.append(got["delivered"])
    out["from_bluesky_delivered_fraction"] = min(delivered)
    out["from_bluesky_dropped_documents"] = dropped
    return out


@contextlib.contextmanager
def from_bluesky_path(url: str) -> Iterator[tuple[databus.Bus, subprocess.Popen[str]]]:
    """A bus connection for BusPublishers here and the follower in its own process, the
    follower seen receiving."""
    from databus.clients.bluesky.publisher import BusPublisher

    with contextlib.ExitStack() as stack:
        bus = databus.connect(url, prefix=PREFIX)
        stack.callback(bus.close)
        child = stack.enter_context(spawned("--follower", url))
        with BusPublisher(session=FROM_SESSION, bus=bus) as publisher:
            wait_ready(child, functools.partial(probe_run, publisher))
        yield bus, child


# ------------------------------------------------------------------------- main


def combined(name: str, values: list[float]) -> float:
    """The runs' median; for a stop received (0 or 1), the fraction of runs."""
    return statistics.mean(values) if name.endswith("stop_received") else statistics.median(values)


def table(out: dict[str, float]) -> None:
    """Print each figure with its unit, target, the peer's figure and ours / peer."""
    print(
        f"{'figure':<32}{'value':>14}  {'unit':<9}{'target':>11}  {'met':<4}"
        f"{'bluesky 0MQ':>13}{'ours/peer':>11}"
    )
    for name, (unit, target, op, peer) in FIGURES.items():
        value = out[name]
        met = shown = ""
        if target is not None:
            ok = {"<=": value <= target, ">=": value >= target, "==": value == target}[op]
            met, shown = ("yes" if ok else "NO"), f"{op} {target:,g}"
        theirs = ratio = ""
        if peer is not None:
            theirs = f"{out[peer]:,.3f}"
            ratio = f"{value / out[peer]:.2f}" if out[peer] else "-"
        shown_value = f"{value:,.3f}" if unit else f"{value:.6f}"  # 1 row lost of 1e5 shows
        print(f"{name:<32}{shown_value:>14}  {unit:<9}{shown:>11}  {met:<4}{theirs:>13}{ratio:>11}")


def main() -> int:
    parser = bench_arguments(__doc__, "runs")
    parser.add_argument("--proxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dispatcher", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--bridge", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--follower", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        proxy()
        return 0
    if args.dispatcher:
        dispatcher(*args.dispatcher)
        return 0
    if args.bridge:
        bridge(args.bridge)
        return 0
    if args.follower:
        follower(args.follower)
        return 0
    runs = args.runs or (1 if args.quick else 3)
    points = 20_000 if args.quick else 100_000
    seconds = 2.0 if args.quick else 10.0
    results = []
    with bench_server(args.url) as url, contextlib.ExitStack() as stack:
        bus = databus.connect(url, prefix=PREFIX)
        stack.callback(bus.close)
        session = bus.session(SESSION)
        peers = stack.enter_context(peer_paths())
        for _ in range(runs):
            out = peer_round(peers, points, seconds)
            # One path at a time: a sender paces its flushes by the readers waiting on
            # the server, whatever they wait for (FlushPolicy.pace).
            with to_bluesky_path(session, url) as dispatcher_child:
                out.update(to_bluesky_round(session, dispatcher_child, points, seconds))
            with from_bluesky_path(url) as (from_bus, follower_child):
                out.update(from_bluesky_round(from_bus, follower_child, points))
            results.append(out)
    out = {k: combined(k, [r[k] for r in results]) for k in results[0]}
    for name, (_, _, _, peer) in FIGURES.items():
        if peer is not None and out[peer]:
            out[f"{name}_vs_peer"] = out[name] / out[peer]
    print(
        f"databus bluesky bench: {runs} run(s), medians; {points:,} points x "
        f"{len(CHANNELS)} float64 channels; 1 kHz for {seconds:g} s"
    )
    table(out)
    print(json.dumps({k: round(v, 6) for k, v in sorted(out.items())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
