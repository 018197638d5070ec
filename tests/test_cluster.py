"""The same SDK on a Redis Cluster (a local cluster of embedded Valkey processes, three
primaries): scans spread over shards, walks across them, transactions split by slot,
shared channels, the memory guard per shard, failover, slot migration, a lost shard; and
tests of the other modules run here unchanged on the cluster: the writer, the frames
bridge, analysis workers, the BLISS-compatible APIs (under gevent too), the bluesky
bridge, capture and replay, the examples (scripts given only DATABUS_URL) and the page."""

import itertools
import os
import signal
import threading
import time

import h5py
import numpy as np
import pytest
import redis
from conftest import Buses, Running, eventually
from test_analysis_run import test_one_two_and_four_workers_reduce_to_the_same_results  # noqa: F401
from test_blissdata2_clients import client, test_session_watcher_n_under_gevent  # noqa: F401
from test_blissdata_classic import (  # noqa: F401
    test_a_scan_walk_follows_its_own_scan_after_others_in_the_session,
)
from test_bluesky_from import (  # noqa: F401
    test_run_engine_scans_appear_on_the_bus_with_streams_data_and_end,
)
from test_capture import test_a_replayed_capture_captured_again_holds_the_same_content  # noqa: F401
from test_examples import (  # noqa: F401
    test_follow_session_and_live_table,
    test_stop_alignment_loop_stops_the_doc_scan_past_the_peak,
)
from test_frames_bridge import (  # noqa: F401
    test_two_clients_of_two_bridges_get_each_frame_of_two_scans_once,
)
from test_share import test_two_members_share_two_scans_each_point_once as share_two_scans
from test_subscribe import Collector, check_order, data_of, ended, publish
from test_web import det, test_scan_appears_grows_and_ends_in_the_page, web  # noqa: F401

import databus
from databus import channels
from databus._errors import InvalidURL
from databus._events import EventType
from databus._local_cluster import LocalCluster
from databus._memory import MemoryGuard
from databus._store import commands, keys
from databus._store.cluster import by_slot, split_nodes

_PREFIXES = itertools.count()


class ClusterBuses(Buses):
    """``make_bus`` on the local cluster: buses with one key prefix of their own (a
    cluster has one database); ``url`` and ``prefix`` for the tests' subprocesses."""

    def __init__(self, state) -> None:
        self.url = state.url
        self.prefix = f"c{next(_PREFIXES)}"
        self.made: list[databus.Bus] = []


# In this module ``make_bus`` and ``bus`` (and the fixtures built on them: ``beamline``,
# ``web``, ``client``) are on the cluster, so the tests imported from the other modules
# below run there unchanged.
@pytest.fixture
def make_bus(valkey_cluster):
    buses = ClusterBuses(valkey_cluster)
    yield buses
    for made in buses.made:
        made.close()


@pytest.fixture
def bus(make_bus):
    return make_bus()


def _running(session, title):
    """A started scan of ``session`` and its int64 channel ``x``."""
    scan = session.create_scan(title=title)
    x = scan.channel("x", "int64")
    scan.prepare()
    scan.start()
    return scan, x


def _until_ends(n):
    """Stops a ``Collector`` at the ``n``-th END_SCAN."""
    count = itertools.count(1)
    return lambda event: ended(event) and next(count) == n


def _shards(bus, scan_keys):
    return {bus.wire.node_of(key) for key in scan_keys}


def test_a_url_naming_several_nodes_or_one_cluster_node_connects_to_the_cluster(valkey_cluster):
    bus = databus.connect(valkey_cluster.url)
    assert bus.wire.cluster and len(bus.wire.nodes()) == 3
    first, nodes = split_nodes(valkey_cluster.url)
    assert len(nodes) == len(valkey_cluster.nodes) and "," not in first
    one = databus.connect(first)  # one node: it says it is in a cluster
    assert one.wire.cluster and sorted(one.wire.nodes()) == sorted(bus.wire.nodes())
    bus.close()
    one.close()


def test_a_bad_node_list_or_a_database_is_refused_with_the_reason():
    with pytest.raises(InvalidURL, match="host:port"):
        split_nodes("redis://a:1,b")
    with pytest.raises(InvalidURL, match="database 0 only"):
        databus.connect("redis://127.0.0.1:1,127.0.0.1:2/3")


def test_a_transaction_is_split_by_slot_in_the_order_of_its_commands():
    create = commands.create_scan(
        "p", "s", 7, b"{}", 1.0, 1.0, running_ttl=60, retention_ttl=60, feed_length=10
    )
    groups = by_slot(create)
    assert [i for _, positions in groups for i in sorted(positions)] == sorted(range(len(create)))
    scan_key = keys.scan("p", "s", 7)
    first_slot, first = groups[0]
    assert first_slot == keys.hash_slot(scan_key) and first[0] == 0  # the record first
    session_slot = keys.hash_slot(keys.session_log("p", "s"))
    assert keys.hash_slot(keys.session_seq("p", "s")) == session_slot
    assert keys.hash_slot(keys.share("p", "s", "g")) == session_slot
    assert session_slot != first_slot and session_slot in dict(groups)
    assert by_slot([("PING",)]) == [(None, [0])]


def test_scans_of_one_session_land_on_several_shards_and_are_followed_as_one(bus):
    session = bus.session("spread")
    collector = Collector(session.follow, until=_until_ends(6), timeout=20)
    scans = [publish(session, n=30) for _ in range(6)]
    assert len(_shards(bus, [s.key for s in scans])) >= 2
    events = collector.join(timeout=20)
    check_order(events)
    for s in scans:
        mine = [e for e in events if getattr(e.node, "db_name", "").startswith(s.key)
                or (e.node.parent is not None and e.node.parent.db_name == s.key)]  # fmt: skip
        np.testing.assert_array_equal(data_of(mine, "axis:robz"), np.arange(30) / 10)


def test_a_walk_gets_two_scans_running_at_once_on_different_shards(bus):
    session = bus.session("both")
    collector = Collector(session.follow, timeout=20)
    first = session.create_scan(title="a")
    second = session.create_scan(title="b")
    while bus.wire.node_of(second.key) == bus.wire.node_of(first.key):
        second.end()
        second = session.create_scan(title="b")
    chans = [s.channel("x", "int64") for s in (first, second)]
    for s in (first, second):
        s.prepare()
        s.start()
    for i in range(200):
        for c in chans:
            c.send(i)
    for s in (first, second):
        s.end()
    keys_ended = lambda: {e.node.db_name for e in collector.events if ended(e)}  # noqa: E731
    assert eventually(lambda: {first.key, second.key} <= keys_ended(), timeout=20)
    collector.stop.stop()
    events = collector.join(timeout=10)
    check_order(events)
    for s in (first, second):
        mine = [e for e in events if e.node.parent is not None and e.node.parent.db_name == s.key]
        np.testing.assert_array_equal(data_of(mine, "x"), np.arange(200))


def test_shared_channels_reach_every_client_and_are_listed_from_every_shard(bus, valkey_cluster):
    other = databus.connect(valkey_cluster.url, settings=bus.settings)
    names = [f"flag{i}" for i in range(12)]  # enough to land on every shard
    assert len({bus.wire.node_of(keys.shared(bus.settings.prefix, n)) for n in names}) == 3
    seen = threading.Event()
    channels.Channel("flag0", default_value=False, callback=lambda v: v and seen.set(), bus=other)
    for name in names:
        channels.Channel(name, default_value=False, bus=bus).value = True
    assert seen.wait(10)
    assert channels.shared_names(other) == sorted(names)
    other.close()


def test_the_memory_guard_deletes_ended_scans_shard_by_shard_never_a_running_one(bus):
    session = bus.session("full")
    done = [publish(session, n=20) for _ in range(6)]
    running = publish(session, n=20, end=False)
    report = MemoryGuard(bus, cap=1).check()  # every shard past its cap
    assert set(report.evicted) == {s.key for s in done}
    assert len(_shards(bus, report.evicted)) >= 2
    assert bus.scan(running.key).channels["axis:robz"].get_as_array().size == 20
    exist = bus.wire.run([commands.exists(s.key) for s in done])
    assert exist == [0] * len(done)
    running.end()


def test_the_memory_guard_deletes_only_on_the_shard_that_is_full(tmp_path):
    cluster = LocalCluster(tmp_path / "c", shards=2)
    state = cluster.start()
    bus = databus.connect(state.url, settings=databus.Settings(url=state.url, prefix="m"))
    try:
        session = bus.session("full")
        small = [publish(session, n=20) for _ in range(4)]
        assert len(_shards(bus, [s.key for s in small])) == 2
        big = session.create_scan(title="big")
        full = bus.wire.node_of(big.key)
        frames = big.channel("det:image", "uint8", (1024, 1024))
        big.prepare()
        big.start()
        for _ in range(60):
            frames.send(np.ones((1024, 1024), np.uint8))
        big.end()
        memory = {node: bus.wire.on_node(node, *commands.memory()) for node in bus.wire.nodes()}
        used = {node: int(info["used_memory"]) for node, info in memory.items()}
        other = max(u for node, u in used.items() if node != full)
        assert used[full] > other + 50e6
        cap = int((other + 10e6) / 0.85)  # the other shard stays under the high mark
        report = MemoryGuard(bus, cap=cap).check()
        assert report.evicted and all(bus.wire.node_of(key) == full for key in report.evicted)
        assert big.key in report.evicted
        kept = [s.key for s in small if bus.wire.node_of(s.key) != full]
        assert kept and bus.wire.run([commands.exists(k) for k in kept]) == [1] * len(kept)
    finally:
        bus.close()
        cluster.stop()


def test_a_point_share_hands_out_each_point_of_scans_on_two_shards_once(bus):
    """What the frames bridges and the analysis workers share work through."""
    share_two_scans(bus)
    scan_keys = [keys.scan(bus.settings.prefix, "s", n) for n in (1, 2)]
    assert len(_shards(bus, scan_keys)) == 2


def test_the_writer_writes_scans_of_several_shards_unchanged(bus, tmp_path):
    from databus import scan
    from databus.sim import GaussNoiseCounter, SimMotor

    databus.set_default_bus(bus)
    scan.set_session("runner")
    try:
        writer = Running(bus, tmp_path)
        robz, gauss = SimMotor("robz", low=-10, high=10), GaussNoiseCounter(seed=1)
        done = [scan.ascan(robz, -1, 1, 11, 0.001, gauss) for _ in range(4)]
        writer.wait_for(4)
        writer.stop()
    finally:
        databus.set_default_bus(None)
        scan.set_session(None)
    assert len(_shards(bus, [s.key for s in done])) >= 2
    [path] = sorted((tmp_path / "runner").glob("*.h5"))
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["1.1", "2.1", "3.1", "4.1"]
        for entry in f.values():
            assert entry["end_reason"][()] == b"finished"
            np.testing.assert_allclose(entry["measurement/robz"][()], np.linspace(-1, 1, 11))


def _primary_of(state, key):
    slot = keys.hash_slot(key)
    return next(
        (
            n
            for n in state.nodes
            if n.role == "primary" and any(a <= slot <= b for a, b in n.slots) and n.running
        ),
        None,
    )


def _replace_and_restart(cluster, victim, key):
    """Once the cluster has promoted ``victim``'s replica, start ``victim`` again."""
    assert eventually(lambda: _primary_of(cluster.status(), key) not in (None, victim), 15)
    cluster.restart(victim.port)


@pytest.mark.parametrize("durability", ["primary", "replicated"])
def test_a_primary_killed_mid_scan_costs_no_unreported_point(cluster_with_replicas, durability):
    """The scan's primary is SIGKILLed; its replica takes over; the publisher and two
    followers carry on: every point is delivered, or reported as a gap (server lost);
    with ``durability="replicated"`` every point is delivered."""
    state = cluster_with_replicas.status()
    settings = databus.Settings(url=state.url, prefix="f", durability=durability)
    bus = databus.connect(state.url, settings=settings)
    session = bus.session("failover")
    followers = [Collector(session.follow, until=_until_ends(1), timeout=20) for _ in range(2)]
    scan, x = _running(session, "failover")
    total = 600
    victim = None
    victim = _primary_of(state, scan.key)
    back = threading.Thread(
        target=_replace_and_restart, args=(cluster_with_replicas, victim, scan.key)
    )
    for i in range(total):
        x.send(i)
        if i == total // 3:
            os.kill(victim.pid, signal.SIGKILL)
            back.start()  # an operator brings the node back, as the new primary's replica
        time.sleep(0.005)
    scan.end()
    back.join(30)
    assert _primary_of(cluster_with_replicas.status(), scan.key).port != victim.port
    assert not back.is_alive()
    for follower in followers:
        events = follower.join(timeout=30)
        delivered: list[int] = []
        reported: list[int] = []
        for e in events:
            if e.node.name != "x":
                continue
            if e.type is EventType.NEW_DATA:
                assert list(e.data.data) == list(
                    range(e.data.first_index, e.data.first_index + e.data.block_size)
                )
                delivered += list(e.data.data)
            elif e.type is EventType.GAP:
                reported += range(e.data.first_index, e.data.first_index + e.data.block_size)
        assert sorted(delivered + reported) == list(range(total)), reported
        if durability == "replicated":
            assert not reported
    bus.close()


def test_replicated_durability_needs_a_replica_of_every_primary(valkey_cluster, valkey_server):
    for url in (valkey_cluster.url, valkey_server.url):
        settings = databus.Settings(url=url, durability="replicated")
        with pytest.raises(databus.ServerError, match="has none connected"):
            databus.connect(url, settings=settings)
    with pytest.raises(ValueError, match="durability must be"):
        databus.Settings(durability="fsync")


def _admin(state, node):
    """The admin user's redis-py client of one node (cluster commands, MIGRATE)."""
    return redis.Redis(
        host="127.0.0.1", port=node.port, username="admin", password=state.admin_password
    )


def test_a_slot_migrated_while_a_scan_is_written_loses_and_repeats_nothing(valkey_cluster, bus):
    """CLUSTER SETSLOT IMPORTING/MIGRATING and MIGRATE of the scan's keys while its
    publisher writes: ASK, TRYAGAIN then MOVED are followed; a follower gets every point
    once, in order."""
    state = valkey_cluster
    session = bus.session("moving")
    collector = Collector(session.follow, until=_until_ends(1), timeout=20)
    scan, x = _running(session, "moving")
    slot = keys.hash_slot(scan.key)
    source = _primary_of(state, scan.key)
    target = next(n for n in state.nodes if n.role == "primary" and n.port != source.port)
    src, dst = _admin(state, source), _admin(state, target)
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
    total, moved_at = 3000, 1000
    for i in range(total):
        x.send(i)
        if i == moved_at:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        if moved_at < i and i % 100 == 0:  # a few keys at a time, while points flow
            names = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 2)
            if names:
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                    "AUTH2", "admin", state.admin_password, "KEYS", *names,
                )  # fmt: skip
            elif i > moved_at + 500:
                for node in (dst, src):
                    node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                moved_at = total  # done
        time.sleep(0.0005)
    scan.end()
    assert moved_at == total, "the slot was not handed over"
    events = collector.join(timeout=30)
    check_order(events)
    np.testing.assert_array_equal(data_of(events, "x"), np.arange(total))
    assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert dst.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
    assert bus.scan(scan.key).channels["x"].get_as_array().tolist() == list(range(total))
    src.close()
    dst.close()


def test_a_shard_lost_without_replica_is_named_and_the_other_scans_go_on(tmp_path):
    cluster = LocalCluster(tmp_path / "c", shards=3)
    state = cluster.start()
    try:
        settings = databus.Settings(url=state.url, prefix="lost", reconnect_timeout=2)
        bus = databus.connect(state.url, settings=settings)
        session = bus.session("lost")
        home = bus.wire.node_of(keys.session_log("lost", "lost"))
        scans = {}
        while len(scans) < 3:
            scan = session.create_scan(title="s")
            node = bus.wire.node_of(scan.key)
            x = scan.channel("x", "int64")
            scan.prepare()
            scan.start()
            x.send(0)
            if node in scans:
                scan.end()
            else:
                scans[node] = (scan, x)
        gone = next(n for n in scans if n != home)
        victim_scan, _ = scans.pop(gone)
        victim = next(n for n in state.nodes if f"127.0.0.1:{n.port}" == gone)
        os.kill(victim.pid, signal.SIGKILL)
        time.sleep(2 * state.node_timeout_ms / 1000)  # the cluster marks it failed
        slot = keys.hash_slot(victim_scan.key)
        with pytest.raises(databus.ServerUnavailable, match=rf"{gone}.*slot {slot}"):
            bus.scan(victim_scan.key)
        for scan, x in scans.values():  # the other shards: unaffected
            for i in range(1, 100):
                x.send(i)
            scan.end()
            got = bus.scan(scan.key).channels["x"].get_as_array()
            assert got.tolist() == list(range(100))
        with pytest.raises(databus.FlushFailed, match=str(victim.port)):
            victim_scan.end()
        bus.close()
    finally:
        cluster.stop()


def test_points_a_dead_primary_had_not_replicated_come_as_gaps_server_lost(
    cluster_with_replicas,
):
    """The replica is stopped (SIGSTOP) and its replication link cut while the primary
    acknowledges points, then the primary is killed and the replica, let go, takes over
    without them: the publisher finds them missing and writes them down as lost, so a
    reader that comes later gets them as GAP events (server lost); the live follower got
    every point before or as a gap."""
    state = cluster_with_replicas.status()
    bus = databus.connect(state.url, settings=databus.Settings(url=state.url, prefix="g"))
    session = bus.session("unreplicated")
    follower = Collector(session.follow, until=_until_ends(1), timeout=20)
    scan, x = _running(session, "gap")
    primary = _primary_of(state, scan.key)
    replica = next(n for n in state.nodes if n.replica_of == primary.port)
    for i in range(100):
        x.send(i)
    time.sleep(0.5)  # the first 100 reach the replica
    os.kill(replica.pid, signal.SIGSTOP)
    admin = _admin(state, primary)
    admin.execute_command("CLIENT", "KILL", "TYPE", "replica")  # its replication link
    admin.close()
    try:
        for i in range(100, 200):
            x.send(i)
        time.sleep(0.5)  # acknowledged by the primary alone
        os.kill(primary.pid, signal.SIGKILL)
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    assert eventually(lambda: _primary_of(cluster_with_replicas.status(), scan.key), 20)
    for i in range(200, 300):
        x.send(i)
    scan.end()
    late = Collector(bus.scan(scan.key).walk_events, until=ended, timeout=20)  # reads it afterwards
    for events, live in ((follower.join(timeout=30), True), (late.join(timeout=30), False)):
        x_events = [e for e in events if e.node.name == "x"]
        delivered = [v for e in x_events if e.type is EventType.NEW_DATA for v in e.data.data]
        gaps = [e.data for e in x_events if e.type is EventType.GAP]
        reported = [i for g in gaps for i in range(g.first_index, g.first_index + g.block_size)]
        assert sorted(delivered + reported) == list(range(300))
        assert all(g.reason == "server lost" for g in gaps)
        if not live:  # the points the new primary never had: every one reported
            assert reported and set(reported) <= set(range(100, 200)), reported
    bus.close()


def test_a_link_keeps_no_connection_for_the_slots_it_no_longer_reads(bus):
    """A walk that followed many scans (one slot each) holds one connection per node at
    most, not one per scan it ever read."""
    scans = [publish(bus.session("many"), n=3) for _ in range(12)]

    def clients():
        return sum(
            int(bus.wire.on_node(node, "INFO", "clients")["connected_clients"])
            for node in bus.wire.nodes()
        )

    link = bus.wire.link()
    before = clients()
    for scan in scans:
        stream = keys.channel(scan.key, "axis:robz")
        assert link.read({stream: "0-0"}, 10, None)[0][0] == stream
    assert clients() - before <= len(bus.wire.nodes())
    link.close()
