"""Seals before the end: ``ChannelWriter.seal()`` and ``Scan.seal()``."""

import logging

import numpy as np
import pytest
from conftest import eventually

import databus
from databus._encoding import SEAL_ID
from databus._store import keys


def _entries(bus, key):
    return [(eid, {k.decode(): v for k, v in f.items()}) for eid, f in bus.redis.xrange(key)]


def test_a_channel_seal_flushes_its_points_then_seals_it(bus):
    scan = bus.session("s").create_scan()
    x = scan.channel("x", "float64")
    y = scan.channel("y", "int32")
    scan.prepare()
    for i in range(10):
        x.send(float(i))
    y.send(np.arange(3))
    assert x.seal() == 10 and x.sealed and not y.sealed
    *_, (seal_id, seal) = _entries(bus, x.key)
    assert seal_id == SEAL_ID and seal == {"end": b"10"}
    node = bus.scan(scan.key).channels["x"]
    assert node.get(0, 9).tolist() == list(map(float, range(10)))
    with pytest.raises(databus.EndOfData):
        node.get(10)  # sealed: never, not "not yet"
    with pytest.raises(databus.NotYetPublished):
        bus.scan(scan.key).channels["y"].get(3)  # the other channel goes on
    assert 0 < bus.redis.pttl(x.key) <= bus.settings.running_ttl * 1000
    y.send(3)
    scan.end()
    assert [eid for eid, _ in _entries(bus, x.key)].count(SEAL_ID) == 1
    assert bus.scan(scan.key).end_reason is databus.EndReason.FINISHED
    assert bus.scan(scan.key).channels["y"].get(0, 3).tolist() == [0, 1, 2, 3]


def test_a_sealed_channel_refuses_points_and_seals_once(bus):
    scan = bus.session("s").create_scan()
    x = scan.channel("x", "float64")
    rec = scan.channel("r", kind="json")
    x.send(1.0)
    assert x.seal() == 1
    for value in (2.0, np.zeros(3), 7):  # the fast path too
        with pytest.raises(databus.ClosedError, match=r"'x' .* is sealed"):
            x.send(value)
    with pytest.raises(databus.ClosedError, match="sealed"):
        x.extend([1.0, 2.0])
    assert x.seal() == 1  # again: nothing changes
    assert rec.seal() == 0  # a channel that got nothing is sealed empty
    assert _entries(bus, rec.key) == [(SEAL_ID, {"end": b"0"})]
    scan.end()
    assert x.seal() == 1  # after the end too


def test_points_dropped_after_the_last_flush_get_a_marker_before_the_seal(bus):
    scan = bus.session("s").create_scan()
    x = scan.channel("x", "float64", lossy=True)
    x.send(np.arange(5.0))
    eventually(lambda: x.queue.acked == 5)
    x.queue.skip(3, gap=True)  # three points dropped after the last batch
    assert x.seal() == 8
    *_, (gap_id, gap), (_, seal) = _entries(bus, x.key)
    assert gap_id == b"8-0" and gap == {"gap": b"5", "why": b"dropped"}
    assert seal == {"end": b"8"}
    scan.end()


def test_a_scan_seal_seals_every_channel_and_tells_readers(bus, caplog):
    scan = bus.session("s").create_scan(title="sealed")
    x = scan.channel("x", "float64")
    y = scan.channel("y", "float64")
    scan.prepare()
    scan.start()
    x.send(np.arange(4.0))
    y.send(1.0)
    y.seal()
    scan.seal()
    assert scan.sealed and x.sealed and y.sealed
    node = bus.scan(scan.key)
    assert node.sealed is not None and node.state is databus.ScanState.STARTED
    log = [f[b"event"] for _, f in bus.redis.xrange(keys.scan_log(scan.key))]
    assert log[-1] == b"sealed"
    assert [eid for eid, _ in _entries(bus, y.key)].count(SEAL_ID) == 1
    with pytest.raises(databus.ScanStateError, match="already sealed"):
        scan.seal()
    with pytest.raises(databus.ScanStateError, match="sealed"):
        scan.channel("late", "float64")
    scan.update_info(final=True)  # the final info comes after the seal
    scan.end()
    with pytest.raises(databus.ScanStateError, match="ended"):
        scan.seal()
    with caplog.at_level(logging.WARNING):
        events = list(bus.session("s").follow(replay=True, wait=False))
    assert not [r for r in caplog.records if "sealed" in r.getMessage()]  # no unknown event
    data = [e.data.data.tolist() for e in events if e.type is databus.EventType.NEW_DATA]
    assert sorted(data) == [[0.0, 1.0, 2.0, 3.0], [1.0]]
    assert events[-1].type is databus.EventType.END_SCAN
    assert events[-1].node.info["final"] is True
    assert bus.scan(scan.key).sealed == node.sealed


def test_seals_a_server_restarted_empty_lost_are_written_again(bus, admin):
    scan = bus.session("s").create_scan()
    x = scan.channel("x", "int64")
    y = scan.channel("y", "int64")
    x.send(np.arange(3))
    scan.seal()
    admin.flushdb()  # the server restarted without its data...
    admin.client_kill_filter(_type="normal", skipme=True)  # ...and dropped its clients
    assert eventually(lambda: admin.exists(scan.key), timeout=10)  # the heartbeat restores
    assert bus.scan(scan.key).sealed is not None
    assert _entries(bus, y.key) == [(SEAL_ID, {"end": b"0"})]
    *_, (gap_id, gap), (seal_id, seal) = _entries(bus, x.key)
    assert (gap_id, gap) == (b"3-0", {"gap": b"0", "why": b"server lost"})
    assert (seal_id, seal) == (SEAL_ID, {"end": b"3"})
    scan.end()
    assert bus.scan(scan.key).end_reason is databus.EndReason.FINISHED
