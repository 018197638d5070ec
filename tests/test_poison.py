"""Issue 19, finding 3: one undecodable session-log entry, scan-log entry or scan record
field is skipped with one log line; followers, the monitor, the memory guard and the
writer go on with the scans after it."""

import io
import logging
import threading

import msgpack
import numpy as np
import pytest
from conftest import Running, eventually

import databus
from databus._encoding import Descriptor, pack_meta
from databus._errors import CorruptEntry
from databus._events import EventType
from databus._memory import MemoryGuard
from databus._store import keys
from databus.clients.monitor import Monitor


def publish(session, n=5, title="good"):
    """An ended scan of ``n`` points on channel ``x``."""
    scan = session.create_scan(title=title, npoints=n)
    x = scan.channel("x", "float64")
    scan.prepare()
    x.send(np.arange(float(n)))
    scan.end()
    return scan


def delivered(events, scan):
    """The points of ``x`` a walk delivered for ``scan``, checking it came whole, in order."""
    mine = [e for e in events if e.node.db_name.startswith(scan.key)]
    assert mine[0].type is EventType.NEW_NODE and mine[-1].type is EventType.END_SCAN, mine
    data = [e.data.data for e in mine if e.type is EventType.NEW_DATA]
    return np.concatenate(data).tolist()


def replay(session):
    return list(session.node.walk_events(wait=False))


def skipped(caplog, key):
    return [
        r.getMessage()
        for r in caplog.records
        if "skipped" in r.getMessage() and key in r.getMessage()
    ]


def fake_scan(bus, session, n, **fields):
    """A scan record with ``fields`` and its "created" entry, as a broken publisher would
    leave them."""
    key = keys.scan(bus.settings.prefix, session.name, n)
    bus.redis.hset(key, mapping={"number": n, "info": pack_meta({}), **fields})
    bus.redis.xadd(session.node.log_key, {"event": "created", "scan": key})
    return key


@pytest.mark.parametrize(
    "entry, why",
    [
        ({"event": "created", "scan": b"\xff"}, "field 'scan' is not UTF-8"),  # the case
        ({"event": b"\xff\xfe", "scan": "x"}, "field 'event' is not UTF-8"),
        ({"event": "evicted", "scan": b"\xff"}, "field 'scan' is not UTF-8"),
        ({"event": "created", "scan": "p:session:s:log"}, "not a databus scan key"),
    ],
)
def test_a_poison_session_log_entry_is_skipped_and_the_next_scan_delivered(bus, caplog, entry, why):
    session = bus.session("poison")
    entry_id = bus.redis.xadd(session.node.log_key, entry).decode()
    good = publish(session)
    with caplog.at_level(logging.WARNING):
        assert delivered(replay(session), good) == [0, 1, 2, 3, 4]
        assert [s.key for s in session.scans()] == [good.key]
    lines = skipped(caplog, session.node.log_key)
    assert lines and all(entry_id in line and why in line for line in lines)


class Following:
    """A live ``follow()`` of ``session`` in a thread; ``events`` as they come."""

    def __init__(self, session):
        self.events, self.stop = [], databus.StopHandler()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(session, started), daemon=True)
        self.thread.start()
        assert started.wait(10)

    def _run(self, session, started):
        for event in session.follow(started_event=started, stop_handler=self.stop):
            self.events.append(event)

    def wait_for(self, kind, count=1):
        assert eventually(lambda: [e.type for e in self.events].count(kind) >= count, 10)

    def join(self):
        self.stop.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()
        return self.events


def test_a_live_follower_goes_on_after_a_poison_entry(bus):
    session = bus.session("poison")
    following = Following(session)
    bus.redis.xadd(session.node.log_key, {"event": "created", "scan": b"\xff"})
    fake_scan(bus, session, 50, info=b"\xc1")
    good = publish(session)
    following.wait_for(EventType.END_SCAN)
    assert delivered(following.join(), good) == [0, 1, 2, 3, 4]


def test_a_record_corrupted_while_followed_keeps_the_info_already_read(bus, caplog):
    session = bus.session("poison")
    following = Following(session)
    scan = session.create_scan(title="then corrupted")
    x = scan.channel("x", "float64")
    following.wait_for(EventType.NEW_NODE, 2)  # the scan and x
    bus.redis.hset(scan.key, "info", b"\xc1")
    y = scan.channel("y", "float64")  # its "channel" entry makes the walk re-read the record
    scan.prepare()
    x.send(np.arange(2.0))
    y.send(np.arange(3.0))
    with caplog.at_level(logging.WARNING):
        scan.end()
        following.wait_for(EventType.END_SCAN)
    events = following.join()
    assert events[0].node.info["title"] == "then corrupted"
    sent = {e.node.name: e.data.block_size for e in events if e.type is EventType.NEW_DATA}
    assert sent == {"x": 2, "y": 3}
    assert any("record not re-read" in line for line in skipped(caplog, keys.scan_log(scan.key)))


@pytest.mark.parametrize(
    "field, value",
    [
        ("number", b"abc"),  # the ValueError
        ("info", b"\xc1"),  # not msgpack (an empty FormatError)
        ("info", msgpack.packb(5)),  # msgpack, but not a map
        ("state", b"x"),
        ("created", b"yesterday"),
        ("ended", b"inf"),
    ],
)
def test_a_scan_whose_record_does_not_decode_is_skipped_and_named(bus, caplog, field, value):
    session = bus.session("poison")
    bad = publish(session, title="bad")
    bus.redis.hset(bad.key, field, value)
    good = publish(session)
    with caplog.at_level(logging.WARNING):
        events = replay(session)
        assert [s.key for s in session.scans()] == [good.key]
    assert not [e for e in events if e.node.db_name.startswith(bad.key)]
    assert delivered(events, good) == [0, 1, 2, 3, 4]
    assert any(bad.key in line and repr(field) in line for line in skipped(caplog, bad.key))
    with pytest.raises(CorruptEntry, match=f"{bad.key}: field '{field}'.*delete the scan"):
        bus.scan(bad.key)


@pytest.mark.parametrize(
    "descriptor, why",
    [
        (b"\xc1", "'ch:y'"),
        (Descriptor.create("x", "float64").to_meta(), "describes channel 'x'"),  # found by fuzz
    ],
)
def test_bad_descriptors_and_field_names_cost_only_their_channel(bus, caplog, descriptor, why):
    session = bus.session("poison")
    scan = session.create_scan(title="bad channel")
    x, y = scan.channel("x", "float64"), scan.channel("y", "float64")
    bus.redis.hset(scan.key, mapping={"ch:y": descriptor, b"ch:\xff": b"x", b"\xfe": b"1"})
    scan.prepare()
    x.send(np.arange(3.0))
    y.send(np.arange(3.0))
    scan.end()
    with caplog.at_level(logging.WARNING):
        assert delivered(replay(session), scan) == [0, 1, 2]
        assert list(bus.scan(scan.key).channels) == ["x"]
    assert any(why in line for line in skipped(caplog, scan.key))


def test_poison_scan_log_entries_are_skipped_and_a_bad_end_message_kept_escaped(bus, caplog):
    session = bus.session("poison")
    scan = session.create_scan(title="log")
    x = scan.channel("x", "float64")
    log_key = keys.scan_log(scan.key)
    bad_event = bus.redis.xadd(log_key, {"event": b"\xff"}).decode()
    bus.redis.xadd(log_key, {"event": "channel", "name": b"\xff"})
    scan.prepare()
    x.send(np.arange(3.0))
    scan.end()  # then a second "ended", which a walk reading both takes as the end
    bus.redis.xadd(log_key, {"event": "ended", "reason": b"fin\xffished", "error": b"\xfe"})
    with caplog.at_level(logging.WARNING):
        events = replay(session)
        assert bus.scan(scan.key).wait_end(0).reason == "finished"
    assert delivered(events, scan) == [0, 1, 2]
    assert (events[-1].data.reason, events[-1].data.error) == ("fin\\xffished", "\\xfe")
    lines = skipped(caplog, log_key)
    assert any(bad_event in line and "'event' is not UTF-8" in line for line in lines)


def test_an_end_reason_or_error_that_does_not_decode_is_shown_escaped(bus):
    scan = publish(bus.session("poison"))
    bus.redis.hset(scan.key, mapping={"end_reason": b"\xff", "error": b"bad \xfe"})
    node = bus.scan(scan.key)
    assert (node.end_reason, node.error) == ("\\xff", "bad \\xfe")


def test_the_monitor_survives_poison_entries_and_odd_info(bus):
    session = bus.session("poison")
    out = io.StringIO()
    monitor = Monitor(session, out)
    try:
        bus.redis.xadd(session.node.log_key, {"event": "created", "scan": b"\xff"})
        fake_scan(bus, session, 50, number=b"abc")
        odd = session.create_scan(title=5, npoints="many")
        odd.end()
        good = publish(session)
        assert eventually(lambda: good.key in monitor.lines and monitor.wait_idle(1), 10)
        assert monitor._thread.is_alive()
        line = monitor.lines[odd.key]
        assert (line.title, line.npoints) == (bus.scan(odd.key).name, 0)
        assert "good" in out.getvalue()
    finally:
        monitor.close()


def test_the_memory_guard_evicts_past_corrupt_records(bus, caplog):
    session = bus.session("poison")
    unreadable = publish(session, title="state unreadable")
    bus.redis.hset(unreadable.key, "state", b"ended?")
    corrupt = publish(session, title="corrupt but ended")
    bus.redis.hset(
        corrupt.key, mapping={"info": b"\xc1", "end_reason": b"\xff", "ch:x": b"\xc1", b"\xfe": 1}
    )
    scans = keys.scans(bus.settings.prefix)
    not_a_hash = keys.scan(bus.settings.prefix, "poison", 99)
    bus.redis.set(not_a_hash, "x")
    bus.redis.zadd(scans, {b"\xff": 0, not_a_hash: 0})
    with caplog.at_level(logging.WARNING):
        report = MemoryGuard(bus, cap=2**40).check(force=True)
    assert report.evicted == (corrupt.key,) and not bus.redis.exists(corrupt.key)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"not deleting {unreadable.key}" in messages and "'state'" in messages
    good = publish(session)
    assert delivered(replay(session), good) == [0, 1, 2, 3, 4]


def test_the_writer_writes_the_scans_after_poison_entries(bus, tmp_path):
    """The issue's writer: it died on the entry, and again on every restart."""
    h5py = pytest.importorskip("h5py")
    session = bus.session("poison")
    bus.redis.xadd(session.node.log_key, {"event": "created", "scan": b"\xff"})
    fake_scan(bus, session, 50, number=b"abc")
    publish(session, title="before the writer")
    writer = Running(bus, tmp_path, session="poison")
    try:
        writer.wait_for(1)  # replayed at start, past the poison
        bus.redis.xadd(session.node.log_key, {"event": "created", "scan": b"\xfe"})
        fake_scan(bus, session, 51, info=b"\xc1")
        publish(session, title="while it runs")
        writer.wait_for(2)
    finally:
        writer.stop()
    assert not writer.thread.is_alive() and not writer.writer.errors
    (path,) = (tmp_path / "poison").glob("*.h5")
    with h5py.File(path, "r") as f:
        titles = {f[e]["title"][()].decode(): f[e] for e in f}
        assert sorted(titles) == ["before the writer", "while it runs"]
        for entry in titles.values():
            assert entry["measurement/x"][()].tolist() == [0, 1, 2, 3, 4]
            assert entry["end_reason"][()] == b"finished"


def test_a_file_name_that_does_not_decode_still_says_where_the_points_went(bus):
    scan = publish(bus.session("poison"))
    bus.redis.hset(scan.key, "file", b"/data/\xff.h5")
    x = bus.scan(scan.key).channels["x"]
    bus.redis.delete(x.key)  # as expiry would
    with pytest.raises(databus.DataExpired, match=r"saved them in /data/\\xff\.h5") as info:
        x.get(0)
    assert info.value.file == "/data/\\xff.h5"
