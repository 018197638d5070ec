"""The memory cap: ended scans go first, running ones never, BusFull instead of OOM."""

import contextlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import redis

import databus
from databus._memory import MemoryGuard
from databus._server import EmbeddedServer
from databus._store import keys

CAP = 40_000_000


@pytest.fixture
def small_server(tmp_path):
    server = EmbeddedServer(tmp_path, maxmemory=CAP)
    state = server.start()
    yield state
    server.stop()


def test_the_guard_reports_a_stopped_server_as_a_databus_error(tmp_path):
    server = EmbeddedServer(tmp_path, maxmemory=CAP)
    bus = databus.connect(server.start().url, prefix="gone", memory_guard=False)
    server.stop()
    try:
        with pytest.raises(databus.ServerUnavailable):
            MemoryGuard(bus).check()
    finally:
        bus.close()


def frames_scan(bus, session, count, title="frames"):
    with bus.session(session).create_scan(title=title) as scan:
        img = scan.channel("img", "uint8", (1024, 1024))
        for i in range(count):
            img.send(np.full((1024, 1024), i, np.uint8))
    return scan


def test_the_guard_deletes_the_oldest_ended_scans_whole(small_server):
    bus = databus.connect(small_server.url, prefix="mem", memory_guard=False)
    old = [frames_scan(bus, "m", 8, f"old {i}") for i in range(3)]  # ~25 MB of ended scans
    running = bus.session("m").create_scan(title="running")
    running.channel("img", "uint8", (1024, 1024)).send(np.zeros((4, 1024, 1024), np.uint8))
    time.sleep(0.3)
    report = MemoryGuard(bus, high=0.5, low=0.3).check()
    assert report.cap == CAP and report.used_before > 0.5 * CAP
    assert list(report.evicted) == [s.key for s in old[: len(report.evicted)]]  # oldest first
    assert report.used_after < report.used_before
    gone = old[0]
    assert not bus.redis.exists(gone.key, keys.scan_log(gone.key), gone.channels["img"].key)
    assert bus.scan(running.key).state is databus.ScanState.CREATED  # never touched
    log = [f[b"event"] for _, f in bus.redis.xrange(keys.session_log("mem", "m"))]
    assert b"evicted" in log
    with pytest.raises(databus.UnknownScan):
        bus.scan(gone.key)
    running.end()
    bus.close()


def test_the_guard_frees_a_server_already_over_its_cap(small_server):
    bus = databus.connect(small_server.url, prefix="memo", memory_guard=False)
    old = [frames_scan(bus, "m", 8, f"old {i}") for i in range(2)]
    admin = redis.Redis.from_url(small_server.admin_url)
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", used // 2)  # over the cap: writes needing memory refused
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            bus.redis.xadd("memo:probe", {"x": "y"})
        report = MemoryGuard(bus, high=0.5, low=0.3).check()
        assert old[0].key in report.evicted and not bus.redis.exists(old[0].key)
        log = [f[b"event"] for _, f in bus.redis.xrange(keys.session_log("memo", "m"))]
        assert b"evicted" in log  # noted once the deletion made room
    finally:
        admin.config_set("maxmemory", CAP)
        admin.close()
        bus.close()


def test_scans_a_writer_has_not_finished_are_deleted_last(small_server):
    bus = databus.connect(small_server.url, prefix="memw", memory_guard=False)
    being_written, done, plain = (frames_scan(bus, "m", 8, t) for t in ("w", "done", "plain"))
    bus.redis.hset(being_written.key, "file", "/data/m.h5")  # a writer is on it
    bus.redis.hset(done.key, mapping={"file": "/data/m.h5", "written": time.time()})
    report = MemoryGuard(bus, high=0.1, low=0.01).check(force=True)
    assert list(report.evicted) == [done.key, plain.key, being_written.key]
    bus.close()


def test_publishers_make_room_by_themselves(small_server):
    bus = databus.connect(small_server.url, prefix="mem2")
    scans = [frames_scan(bus, "m", 6, f"scan {i}") for i in range(12)]  # 72 MB through a 40 MB cap
    assert all(s.end_reason is databus.EndReason.FINISHED for s in scans)
    assert bus.scan(scans[-1].key).channels["img"].get(5)[0, 0] == 5  # the newest is whole
    with pytest.raises(databus.UnknownScan):
        bus.scan(scans[0].key)  # the oldest made room
    used = int(bus.redis.info("memory")["used_memory"])
    assert used <= CAP
    bus.close()


def test_running_scans_alone_filling_the_cap_end_in_bus_full_not_oom(small_server):
    bus = databus.connect(
        small_server.url, prefix="mem3", bus_full_timeout=1.0, buffer_bytes=8 * 2**20
    )
    scan = bus.session("m").create_scan(title="too big")
    img = scan.channel("img", "uint8", (1024, 1024))
    with pytest.raises(databus.BusFull, match=r"memory cap.*running scans fill it") as info:
        for i in range(100):  # 100 MB into a 40 MB cap, nothing ended to delete
            img.send(np.full((1024, 1024), i % 256, np.uint8))
    assert "OOM" not in type(info.value).__name__
    bus.close()


def test_a_lossy_channel_keeps_sending_while_the_cap_is_full(small_server):
    bus = databus.connect(
        small_server.url, prefix="mem4", bus_full_timeout=2.0, buffer_bytes=4 * 2**20
    )
    filler = bus.session("m").create_scan(title="filler")
    filler.channel("img", "uint8", (1024, 1024)).send(np.zeros((34, 1024, 1024), np.uint8))
    time.sleep(0.5)
    scan = bus.session("m").create_scan(title="lossy")
    img = scan.channel("img", "uint8", (1024, 1024), lossy=True)
    start = time.monotonic()
    for i in range(30):
        img.send(np.full((1024, 1024), i, np.uint8))  # never blocks: drops oldest
    assert time.monotonic() - start < 1.5
    assert scan.statistics().dropped_points > 0
    for full in (scan, filler):  # end() finds room, or says BusFull; never a raw OOM
        with contextlib.suppress(databus.BusFull):
            full.end()
    bus.close()


def test_the_memory_guard_command(small_server):
    bus = databus.connect(small_server.url, prefix="mem5", memory_guard=False)
    old = [frames_scan(bus, "m", 8, f"old {i}") for i in range(2)]  # ~17 MB, over 30 % of the cap
    env = {**os.environ, "DATABUS_URL": small_server.url, "DATABUS_PREFIX": "mem5"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "databus",
            "memory-guard",
            "--interval",
            "0.2",
            "--high",
            "0.3",
            "--low",
            "0.1",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while bus.redis.exists(old[0].key) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert not bus.redis.exists(old[0].key) and "deleted" in err
    bus.close()


def _until(events, kind):
    """Events up to and including the next one of type ``kind``."""
    got = []
    for event in events:
        got.append(event)
        if event.type is kind:
            return got
    raise AssertionError(f"no {kind} in {got}")


@pytest.mark.parametrize("replay", [False, True], ids=["live", "replay"])
def test_a_walk_behind_an_evicted_scan_is_told_what_it_will_never_read(bus, replay):
    """The guard deletes an ended scan a walk has only begun to read: the walk gets GAP
    events (reason ``evicted``) for the rest, then END_SCAN with how the scan ended."""
    session = bus.session("ev")
    scan = session.create_scan(title="big")
    events = session.follow(replay=replay)
    if not replay:  # follows the running scan live
        got = _until(events, databus.EventType.NEW_NODE)
    with scan:
        img = scan.channel("img", "uint16", (512, 1024))  # 1 MiB frames: 16 to a read
        t = scan.channel("t", "float64")
        for i in range(40):
            img.send(np.full((512, 1024), i, np.uint16))
            t.send(float(i))
    if replay:  # the ended scan is replayed while the session log waits for it
        got = []
    got += _until(events, databus.EventType.NEW_DATA)
    assert MemoryGuard(bus, cap=2**40).check(force=True).evicted == (scan.key,)
    rest = _until(events, databus.EventType.END_SCAN)
    for name in ("img", "t"):
        spans = sorted(
            (e.data.first_index, e.data.block_size)
            for e in got + rest
            if e.type in (databus.EventType.NEW_DATA, databus.EventType.GAP)
            and e.node.short_name == name
        )
        indices = [i for first, size in spans for i in range(first, first + size)]
        assert indices == list(range(40)), (name, spans)  # each once: read, or in a gap
    gaps = [e.data for e in rest if e.type is databus.EventType.GAP]
    assert gaps and {g.reason for g in gaps} == {"evicted"}
    assert rest[-1].data.reason == "finished"
    assert [e.type for e in rest].count(databus.EventType.END_SCAN) == 1
