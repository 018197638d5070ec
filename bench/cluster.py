"""databus on a local Redis Cluster (``LocalCluster``: embedded Valkey nodes on loopback)
against the targets of issue 18.

    python bench/cluster.py            # 3 rounds, medians
    python bench/cluster.py --quick    # one short round, a smoke run

- frames_mb_per_s_server, frames_mb_per_s_1_shard, frames_mb_per_s_3_shards: three
  publisher processes, each with a scan of its own (its own session) of 2 MiB float32
  frames, each followed by a walk in its own process; MB (1e6 bytes of frames) over the
  time from the first send() to the last frame any follower received. On one embedded
  server, on a cluster of one primary, then of three, one after the other in each round
  (after an unmeasured warm-up round; every server emptied after each run);
  cluster_1_shard_vs_server is the ratio of the first two in the same round.
- shard_cpu_cores_max, shard_cpu_cores_sum: the three primaries' CPU (from /proc) in the
  3-shard run: the busiest one's and their sum, in cores.
- failover_s: a publisher sends a point every millisecond on a cluster of three primaries
  with a replica each (cluster-node-timeout 1000 ms); its scan's primary is SIGKILLed;
  seconds from the kill until a point sent after it is read back (acknowledged by the
  promoted replica).
- points_lost_failover: of that scan's points, those a follower neither received nor got
  as a GAP (must be 0); points_reported_lost: those it got as GAP (server lost).
- replicated_cost, replicated_cost_points: throughput with ``durability="replicated"``
  over without (one primary with one replica), for 2 MiB frames and for scalar points
  (100,000 float64, first send() to end()), measured in the order A B B A in each round.

Prints one table, then as its last line one JSON object with the medians.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis
from _server import Figure, bench_arguments, report

import databus
from databus._errors import DatabusError
from databus._events import EventType
from databus._local_cluster import ClusterState, LocalCluster
from databus._server import EmbeddedServer, ServerState
from databus._store import keys

FRAME = (512, 1024)  # float32: 2 MiB
FIGURES: dict[str, Figure] = {
    "frames_mb_per_s_server": ("MB/s", None, ">="),
    "frames_mb_per_s_1_shard": ("MB/s", None, ">="),
    "cluster_1_shard_vs_server": ("ratio", None, ">="),
    "frames_mb_per_s_3_shards": ("MB/s", None, ">="),
    "shard_cpu_cores_max": ("cores", None, "<="),
    "shard_cpu_cores_sum": ("cores", None, "<="),
    "failover_s": ("s", 5.0, "<="),
    "points_lost_failover": ("points", 0.0, "=="),
    "points_reported_lost": ("points", None, "=="),
    "replicated_cost": ("ratio", 0.5, ">="),
    "replicated_cost_points": ("ratio", None, ">="),
}


def _bus(url: str, prefix: str, durability: str = "primary") -> databus.Bus:
    settings = databus.Settings(url=url, prefix=prefix, durability=durability)
    return databus.connect(url, settings=settings)


def _pair(url: str, prefix: str, session: str, frames: int, out: multiprocessing.Queue) -> None:
    """One publisher and its follower (a process): (bytes, first send, last frame read)."""
    bus = _bus(url, prefix)
    got = {"n": 0, "last": 0.0}
    ready = threading.Event()

    def follow() -> None:
        for event in bus.session(session).follow(started_event=ready):
            if event.type is EventType.NEW_DATA:
                got["n"] += event.data.block_size
                got["last"] = time.monotonic()
            elif event.type is EventType.END_SCAN:
                return

    follower = threading.Thread(target=follow)
    follower.start()
    ready.wait(10)
    frame = np.random.default_rng(0).random(FRAME, dtype=np.float32)
    with bus.session(session).create_scan({"title": "frames"}) as scan:
        image = scan.channel("det:image", "float32", FRAME)
        scan.prepare()
        scan.start()
        started = time.monotonic()
        for _ in range(frames):
            image.send(frame)
    follower.join(60)
    out.put((got["n"] * frame.nbytes, started, got["last"], got["n"] == frames))
    bus.close()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _flush(state: ClusterState | ServerState) -> None:
    """Delete everything on every primary (as ``admin``): each round starts empty, on
    memory the server has already used (a fresh server faults every page in once)."""
    ports = [n.port for n in state.nodes] if isinstance(state, ClusterState) else [state.port]
    for port in ports:
        admin = redis.Redis(port=port, username="admin", password=state.admin_password)
        with contextlib.suppress(redis.ResponseError):  # a replica is read-only
            admin.flushall()
        admin.close()


def frames_rate(url: str, pids: list[int], frames: int, tag: str) -> tuple[float, list[float]]:
    """(MB/s of three publisher+follower pairs, CPU cores of each server process ``pids``
    meanwhile)."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    cpu0 = [_cpu_s(pid) for pid in pids]
    t0 = time.monotonic()
    procs = [
        context.Process(target=_pair, args=(url, f"b{tag}", f"s{i}", frames, out)) for i in range(3)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    elapsed = time.monotonic() - t0
    cpu = [(_cpu_s(pid) - c) / elapsed for pid, c in zip(pids, cpu0, strict=True)]
    if not all(ok for *_, ok in results):
        raise RuntimeError(f"a follower missed frames: {results}")
    nbytes = sum(r[0] for r in results)
    span = max(r[2] for r in results) - min(r[1] for r in results)
    return nbytes / span / 1e6, cpu


def _primary_pid(cluster: LocalCluster, key: str) -> tuple[int, int]:
    slot = keys.hash_slot(key)
    state = cluster.status()
    assert state is not None
    node = next(
        n
        for n in state.nodes
        if n.running and n.role == "primary" and any(a <= slot <= b for a, b in n.slots)
    )
    return node.pid, node.port


def failover(cluster: LocalCluster, points: int) -> tuple[float, int, int]:
    """(seconds from the kill to a later point read back, points unreported, reported)."""
    state = cluster.status()
    assert state is not None
    bus = _bus(state.url, "fo")
    reader = _bus(state.url, "fo")
    session = bus.session("failover")
    seen: dict[str, list[int]] = {"got": [], "gap": []}
    ready = threading.Event()

    def follow() -> None:
        for event in session.follow(started_event=ready):
            if event.type is EventType.NEW_DATA:
                seen["got"] += event.data.data.tolist()
            elif event.type is EventType.GAP:
                first = event.data.first_index
                seen["gap"] += range(first, first + event.data.block_size)
            elif event.type is EventType.END_SCAN:
                return

    follower = threading.Thread(target=follow)
    follower.start()
    ready.wait(10)
    scan = session.create_scan({"title": "failover"})
    x = scan.channel("x", "int64")
    scan.prepare()
    scan.start()
    pid, port = _primary_pid(cluster, scan.key)
    killed_at, at_kill, recovered = 0.0, 0, 0.0
    watcher: threading.Thread | None = None

    def watch() -> None:
        nonlocal recovered
        while True:
            try:
                if len(reader.scan(str(scan.key)).channels["x"]) > at_kill + 1:
                    recovered = time.monotonic()
                    return
            except DatabusError:
                pass
            time.sleep(0.005)

    for i in range(points):
        x.send(i)
        if i == points // 4:
            at_kill, killed_at = i, time.monotonic()
            os.kill(pid, signal.SIGKILL)
            watcher = threading.Thread(target=watch)
            watcher.start()
        time.sleep(0.001)
    scan.end()
    assert watcher is not None
    watcher.join(60)
    follower.join(60)
    cluster.restart(port)
    covered = set(seen["got"]) | set(seen["gap"])
    lost = len(set(range(points)) - covered)
    bus.close()
    reader.close()
    return recovered - killed_at, lost, len(seen["gap"])


def _timed(publish: Callable[[databus.Bus], None], bus: databus.Bus) -> float:
    started = time.monotonic()
    publish(bus)
    return time.monotonic() - started


def replicated_cost(url: str, frames: int, points: int) -> tuple[float, float]:
    """(frame throughput replicated / primary, point throughput replicated / primary)."""
    image = np.random.default_rng(1).random(FRAME, dtype=np.float32)

    def send_frames(bus: databus.Bus) -> None:
        with bus.session("cost").create_scan({"title": "frames"}) as scan:
            channel = scan.channel("det:image", "float32", FRAME)
            scan.prepare()
            scan.start()
            for _ in range(frames):
                channel.send(image)

    def send_points(bus: databus.Bus) -> None:
        with bus.session("cost").create_scan({"title": "points"}) as scan:
            channel = scan.channel("x", "float64")
            scan.prepare()
            scan.start()
            for i in range(points):
                channel.send(float(i))

    times: dict[tuple[str, str], list[float]] = {}
    buses = {d: _bus(url, "cost", d) for d in ("primary", "replicated")}
    for order in (("primary", "replicated"), ("replicated", "primary")):  # ABBA
        for durability in order:
            for what, send in (("frames", send_frames), ("points", send_points)):
                times.setdefault((what, durability), []).append(_timed(send, buses[durability]))
    for bus in buses.values():
        bus.close()
    return (
        sum(times["frames", "primary"]) / sum(times["frames", "replicated"]),
        sum(times["points", "primary"]) / sum(times["points", "replicated"]),
    )


def main() -> int:
    parser = bench_arguments(__doc__, "rounds", url=False)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds or 3
    frames = 30 if args.quick else 100
    rows: dict[str, list[float]] = {name: [] for name in FIGURES}
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp) / "server", maxmemory=4 * 10**9)
        one = LocalCluster(Path(tmp) / "one", shards=1, maxmemory=4 * 10**9)
        three = LocalCluster(Path(tmp) / "three", shards=3, maxmemory=4 * 10**9)
        replicated = LocalCluster(Path(tmp) / "rep", shards=3, replicas=1, maxmemory=2 * 10**9)
        pair = LocalCluster(Path(tmp) / "pair", shards=1, replicas=1, maxmemory=4 * 10**9)
        try:
            server_state = server.start()
            states = {"1": one.start(), "3": three.start()}
            targets = {
                "server": (server_state.url, [server_state.pid], server_state),
                **{
                    k: (st.url, [n.pid for n in st.nodes if n.role == "primary"], st)
                    for k, st in states.items()
                },
            }
            for r in range(rounds + 1):  # round 0 warms the servers up, unmeasured
                got = {}
                for name, (url, pids, state) in targets.items():
                    got[name] = frames_rate(url, pids, frames, f"{r}")
                    _flush(state)
                if r == 0:
                    continue
                rows["frames_mb_per_s_server"].append(got["server"][0])
                rows["frames_mb_per_s_1_shard"].append(got["1"][0])
                rows["frames_mb_per_s_3_shards"].append(got["3"][0])
                rows["cluster_1_shard_vs_server"].append(got["1"][0] / got["server"][0])
                rows["shard_cpu_cores_max"].append(max(got["3"][1]))
                rows["shard_cpu_cores_sum"].append(sum(got["3"][1]))
                shards = ", ".join(f"{c:.2f}" for c in got["3"][1])
                print(
                    f"round {r}: server {got['server'][0]:.0f} MB/s, 1 shard "
                    f"{got['1'][0]:.0f} MB/s, 3 shards {got['3'][0]:.0f} MB/s "
                    f"(cores per primary {shards})",
                    file=sys.stderr,
                )
            server.stop()
            one.stop()
            three.stop()
            replicated.start()
            for _ in range(rounds):
                seconds, lost, reported = failover(replicated, 2000 if args.quick else 5000)
                rows["failover_s"].append(seconds)
                rows["points_lost_failover"].append(lost)
                rows["points_reported_lost"].append(reported)
            replicated.stop()
            url = pair.start().url
            for _ in range(rounds):
                cost, cost_points = replicated_cost(url, frames, 20_000 if args.quick else 100_000)
                rows["replicated_cost"].append(cost)
                rows["replicated_cost_points"].append(cost_points)
        finally:
            server.stop()
            for cluster in (one, three, replicated, pair):
                cluster.stop()
    out = {name: statistics.median(values) for name, values in rows.items()}
    out["points_lost_failover"] = max(rows["points_lost_failover"])  # the worst round
    return report(FIGURES, out, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
