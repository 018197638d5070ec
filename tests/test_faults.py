"""Faults: a dropped connection or a server restart mid-scan loses and repeats nothing; a
server restarted without its data loses only what it held, and says so."""

import os
import signal
import subprocess
import threading
import time

import h5py
import numpy as np
import pytest
import redis
from conftest import Running, eventually, ping

import databus
from databus._server import EmbeddedServer, _free_port, server_binary


def publish_slowly(bus, session, n, period=0.004):
    scan = bus.session(session).create_scan(title="through faults")
    x = scan.channel("x", "float64")
    scan.prepare()
    scan.start()
    for i in range(n):
        x.send(float(i))
        time.sleep(period)
    scan.end()
    return scan


class Follower:
    def __init__(self, bus, session):
        self.events, self.started = [], threading.Event()
        self.thread = threading.Thread(target=self._run, args=(bus, session), daemon=True)
        self.thread.start()
        assert self.started.wait(10)

    def _run(self, bus, session):
        for event in bus.session(session).follow(started_event=self.started):
            self.events.append(event)
            if event.type is databus.EventType.END_SCAN:
                return

    def values(self):
        blocks = [e.data for e in self.events if e.type is databus.EventType.NEW_DATA]
        return np.concatenate([b.data for b in blocks]).tolist() if blocks else []


def test_killed_connections_are_reopened_and_nothing_is_lost(make_bus, admin):
    bus = make_bus()
    follower = Follower(make_bus(), "drop")
    result = {}
    publisher = threading.Thread(
        target=lambda: result.setdefault("scan", publish_slowly(bus, "drop", 300))
    )
    publisher.start()
    for _ in range(3):
        time.sleep(0.3)
        admin.client_kill_filter(_type="normal", skipme=True)  # every client but this one
    publisher.join(30)
    follower.thread.join(30)
    scan = result["scan"]
    assert scan.end_reason is databus.EndReason.FINISHED
    assert bus.scan(scan.key).channels["x"].get_as_array().tolist() == [
        float(i) for i in range(300)
    ]
    assert follower.values() == [float(i) for i in range(300)]
    assert follower.events[-1].type is databus.EventType.END_SCAN


@pytest.fixture
def restartable(tmp_path):
    """A Valkey on a fixed port which the test can kill -9 and start again: with its data
    (an append-only file, the default) or empty (``start(appendonly=False)``)."""
    port = _free_port()
    args = [server_binary(), "--port", str(port), "--dir", str(tmp_path), "--save", ""]
    url = f"redis://127.0.0.1:{port}"

    procs = []

    def start(appendonly=True):
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else []
        procs.append(subprocess.Popen(args + aof, stdout=subprocess.DEVNULL))
        assert eventually(lambda: ping(url), timeout=10)

    def kill():
        assert procs[-1].poll() is None, "the server had already stopped"
        procs[-1].kill()
        procs[-1].wait()

    yield url, start, kill
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_server_restart_mid_scan_loses_and_repeats_nothing(restartable):
    url, start, kill = restartable
    start()
    bus = databus.connect(url, prefix="rs")
    follower = Follower(databus.connect(url, prefix="rs"), "restart")
    result = {}
    publisher = threading.Thread(
        target=lambda: result.setdefault("scan", publish_slowly(bus, "restart", 400))
    )
    publisher.start()
    time.sleep(0.6)
    kill()
    time.sleep(0.5)  # points keep coming into the publisher's buffer meanwhile
    start()
    publisher.join(60)
    follower.thread.join(30)
    scan = result["scan"]
    assert scan.end_reason is databus.EndReason.FINISHED
    assert bus.scan(scan.key).channels["x"].get_as_array().tolist() == [
        float(i) for i in range(400)
    ]
    assert follower.values() == [float(i) for i in range(400)]
    assert follower.events[-1].type is databus.EventType.END_SCAN


def indices(events, kind):
    """(first, count) of the NEW_DATA or GAP events of a walk."""
    return [(e.data.first_index, e.data.block_size) for e in events if e.type is kind]


def covers_exactly(ranges, n):
    """True if the (first, count) ranges tile 0..n-1 with no overlap."""
    seen = sorted(i for first, count in ranges for i in range(first, first + count))
    return seen == list(range(n))


def test_a_server_restarted_empty_mid_scan_loses_only_what_it_held_and_says_so(
    restartable, tmp_path
):
    url, start, kill = restartable
    start(appendonly=False)
    bus = databus.connect(url, prefix="rs")
    live = Follower(databus.connect(url, prefix="rs"), "empty")
    writer = Running(databus.connect(url, prefix="rs"), tmp_path / "files", session="empty")
    result = {}
    publisher = threading.Thread(
        target=lambda: result.setdefault("scan", publish_slowly(bus, "empty", 400))
    )
    publisher.start()
    time.sleep(0.6)
    kill()
    time.sleep(0.5)  # points keep coming into the publisher's buffer meanwhile
    start(appendonly=False)
    publisher.join(60)
    scan = result["scan"]
    assert scan.end_reason is databus.EndReason.FINISHED
    (acked_lost,) = scan.channels["x"].lost  # what the server had acknowledged, then lost
    first, stop = acked_lost
    assert first == 0 and stop > 50

    # The record came back: the scan can be read, and its lost points raise DataLost.
    node = bus.scan(scan.key)
    assert node.number == scan.number and node.info["title"] == "through faults"
    ch = node.channels["x"]
    assert len(ch) == 400 and ch.get(stop, 399).tolist() == [float(i) for i in range(stop, 400)]
    with pytest.raises(databus.DataLost, match="restarted") as info:
        ch.get(0, 10)
    assert info.value.reason == "server lost" and (info.value.first, info.value.last) == (0, 10)

    # A reader that was following gets every point once, or a GAP for what it missed.
    live.thread.join(30)
    assert live.events[-1].type is databus.EventType.END_SCAN
    got = indices(live.events, databus.EventType.NEW_DATA)
    gaps = indices(live.events, databus.EventType.GAP)
    assert covers_exactly(got + gaps, 400)
    assert all(i == v for i, v in zip(range(400), live.values(), strict=False) if i < got[0][1])

    # A reader that comes after the restart gets the loss first, then the rest.
    replay = list(bus.session("empty").follow(replay=True, wait=False))
    kinds = [e.type for e in replay if e.node.type == "channel" and e.type.name != "NEW_NODE"]
    assert kinds[0] is databus.EventType.GAP
    assert replay[[e.type for e in replay].index(kinds[0])].data == (0, stop, "server lost")
    assert covers_exactly(
        indices(replay, databus.EventType.NEW_DATA) + indices(replay, databus.EventType.GAP),
        400,
    )

    # The counter came back with the record: the next scan does not reuse a number.
    following = bus.session("empty").create_scan()
    assert following.number == scan.number + 1
    following.end()

    # The writer's file: every point is its value or inside a "server lost" gap row.
    writer.wait_for(1)
    writer.stop()
    (path,) = (tmp_path / "files" / "empty").glob("*.h5")
    with h5py.File(path, "r") as f:
        entry = f[f"{scan.number}.1"]
        data = entry["measurement/x"][()]
        rows = entry["writer/gaps"][()].tolist()
    assert len(data) == 400
    in_gap = {i for _, lo, hi, code in rows if code == 1 for i in range(lo, hi + 1)}
    assert {i for i in range(400) if data[i] != i} == in_gap
    assert all(code == 1 for *_, code in rows)


def test_a_server_restarted_empty_while_a_scan_is_idle_gets_the_scan_back(restartable):
    url, start, kill = restartable
    start(appendonly=False)
    bus = databus.connect(url, prefix="idle")
    scan = bus.session("idle").create_scan(title="idle")
    x = scan.channel("x", "int64")
    scan.prepare()
    scan.start()
    x.send(np.arange(50))
    assert eventually(lambda: x.queue.acked_end == 50)
    kill()
    start(appendonly=False)
    admin = redis.Redis.from_url(url)
    assert eventually(lambda: admin.hexists(scan.key, "number"), timeout=10)  # the heartbeat
    x.send(np.arange(50, 80))
    scan.end()
    node = bus.scan(scan.key)
    assert node.state is databus.ScanState.ENDED and node.end_reason is databus.EndReason.FINISHED
    events = list(bus.session("idle").follow(replay=True, wait=False))
    assert indices(events, databus.EventType.GAP) == [(0, 50)]
    assert indices(events, databus.EventType.NEW_DATA) == [(50, 30)]
    admin.close()


def test_a_scan_number_used_again_gets_its_own_entry_in_the_file(make_bus, admin, tmp_path):
    bus = make_bus()
    writer = Running(bus, tmp_path, session="again")
    for title in ("first", "second"):
        scan = bus.session("again").create_scan(title=title)
        x = scan.channel("x", "float64")
        scan.prepare()
        x.send(1.0)
        scan.end()
        writer.wait_for(1 if title == "first" else 2)
        # the server restarts empty and this process is a new one: the counter starts again
        admin.flushdb()
        databus._publish._numbers.clear()
    writer.stop()
    (path,) = (tmp_path / "again").glob("*.h5")
    with h5py.File(path, "r") as f:
        assert f["1.1/title"][()] == b"first" and f["1.2/title"][()] == b"second"


def test_a_killed_embedded_server_is_brought_back_by_its_clients(tmp_path):
    """kill -9 of the embedded server: with no new connect(), the publisher, a follower
    and the writer start it again (one of them, on its port, with its secrets) and
    recover as after any empty restart."""
    run_dir = tmp_path / "run"
    bus = databus.connect(run_dir=run_dir, prefix="revive")
    try:
        live = Follower(databus.connect(run_dir=run_dir, prefix="revive"), "revive")
        writer = Running(
            databus.connect(run_dir=run_dir, prefix="revive"), tmp_path / "files", session="revive"
        )
        result = {}
        publisher = threading.Thread(
            target=lambda: result.setdefault("scan", publish_slowly(bus, "revive", 400))
        )
        publisher.start()
        time.sleep(0.6)
        first = bus.server.status()
        os.kill(first.pid, signal.SIGKILL)
        publisher.join(60)
        scan = result["scan"]
        second = EmbeddedServer(run_dir).status()
        assert second.pid != first.pid and second.url == first.url
        assert scan.end_reason is databus.EndReason.FINISHED
        live.thread.join(30)
        assert live.events[-1].type is databus.EventType.END_SCAN
        got = indices(live.events, databus.EventType.NEW_DATA)
        assert covers_exactly(got + indices(live.events, databus.EventType.GAP), 400)
        (lost,) = scan.channels["x"].lost  # what the server had acknowledged, then lost
        replay = list(bus.session("revive").follow(replay=True, wait=False))
        gaps = [e.data for e in replay if e.type is databus.EventType.GAP]
        assert gaps == [(0, lost[1], "server lost")]
        writer.wait_for(1)
        writer.stop()
        (path,) = (tmp_path / "files" / "revive").glob("*.h5")
        with h5py.File(path, "r") as f:
            data = f[f"{scan.number}.1/measurement/x"][()]
            rows = f[f"{scan.number}.1/writer/gaps"][()].tolist()
        in_gap = {i for _, lo, hi, code in rows if code == 1 for i in range(lo, hi + 1)}
        assert len(data) == 400 and {i for i in range(400) if data[i] != i} == in_gap
    finally:
        bus.close()
        EmbeddedServer(run_dir).stop()
