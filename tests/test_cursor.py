"""``databus.Cursor``: new points of several channels, with what is missing and where
each ends. The cases of blissdata 2.4.5's ``tests/redis_engine/test_cursor.py``, on our API."""

import json
import logging
import threading

import numpy as np
import pytest
from conftest import CURSOR_BATCHES, eventually

import databus


@pytest.fixture
def scans(bus):
    """Makes scans on ``bus`` (in session ``"s"`` unless named), ended after the test."""
    made = []

    def create(session="s"):
        made.append(bus.session(session).create_scan())
        return made[-1]

    yield create
    for scan in made:
        if scan.state is not databus.ScanState.ENDED:
            scan.end()


def _flushed(writer, *batches):
    """Send each of ``batches`` as its own entry (each flushed before the next)."""
    for batch in batches:
        writer.send(np.asarray(batch, dtype=writer.desc.dtype))
        eventually(lambda: writer.queue.acked_end == len(writer))


def _channels(bus, scan, *names):
    node = bus.scan(scan.key)
    return [node.channels[name] for name in names]


@pytest.mark.parametrize("last_only", [True, False])
@pytest.mark.parametrize("timeout", [0, 0.001])
@pytest.mark.parametrize("seal", [True, False])
@pytest.mark.parametrize("name", list(CURSOR_BATCHES))
def test_cursor_batching(scans, bus, name, seal, timeout, last_only):
    scan = scans()
    w = scan.channel("x", "int64")
    batches = CURSOR_BATCHES[name]
    _flushed(w, *batches)
    if seal:
        w.seal()
    values = [v for batch in batches for v in batch]
    expected = values[-1:] if last_only else values
    (x,) = _channels(bus, scan, "x")
    cursor = databus.Cursor(x)
    got = cursor.read(timeout, last_only=last_only)
    if not values and not seal:
        assert got == {} and not cursor.done
        return
    points = got[x]
    assert points.channel == x and points.missing == ()
    assert points.count == len(expected) and points.data.tolist() == expected
    assert points.first == (expected[0] if expected else 0)  # the values are the indices
    assert points.ended is seal and cursor.done is seal
    if seal:
        with pytest.raises(databus.EndOfData):
            cursor.read(0)
    else:
        assert cursor.read(0) == {} and cursor.positions[x] == len(values)


def test_cursor_reads_from_the_origin_then_only_what_is_new(scans, bus):
    scan = scans()
    writers = {name: scan.channel(name, "int64") for name in CURSOR_BATCHES}
    for name, w in writers.items():
        _flushed(w, *CURSOR_BATCHES[name])
    nodes = _channels(bus, scan, *CURSOR_BATCHES)
    cursor = databus.Cursor(nodes)
    got = cursor.read(0)
    assert {p.channel.name: p.data.tolist() for p in got.values()} == {
        name: [v for b in batches for v in b] for name, batches in CURSOR_BATCHES.items() if batches
    }
    assert cursor.read(0) == {}
    again = databus.Cursor(nodes)
    again.read(0, last_only=True)  # skips the backlog
    assert again.read(0) == {}
    _flushed(writers["one"], [1, 2])
    (points,) = again.read(0).values()
    assert (points.channel.name, points.first, points.data.tolist()) == ("one", 1, [1, 2])


def test_a_blocking_read_returns_when_any_channel_gets_points(scans, bus):
    scan = scans()
    ws = [scan.channel(f"c{i}", "int64") for i in range(3)]
    nodes = _channels(bus, scan, "c0", "c1", "c2")
    cursor = databus.Cursor(nodes)
    got = []
    reader = threading.Thread(target=lambda: got.append(cursor.read(10)))
    reader.start()
    _flushed(ws[1], [1, 2, 3])
    reader.join(10)
    ((node, points),) = got[0].items()
    assert node == nodes[1] and (points.first, points.data.tolist()) == (0, [1, 2, 3])
    _flushed(ws[2], [4, 5, 6])
    _flushed(ws[1], [7, 8, 9])
    got = cursor.read(10)
    assert {n.name: (p.first, p.data.tolist()) for n, p in got.items()} == {
        "c1": (3, [7, 8, 9]),
        "c2": (0, [4, 5, 6]),
    }


def test_a_read_times_out_empty(scans, bus):
    scan = scans()
    scan.channel("x", "float64")
    cursor = databus.Cursor(_channels(bus, scan, "x"))
    assert cursor.read(0.05) == {} and cursor.read(0) == {}
    with pytest.raises(ValueError, match="timeout"):
        cursor.read(-1)


def test_channels_of_several_scans_and_kinds_in_one_cursor(scans, bus):
    one, two = scans("a"), scans("b")
    x, rec = one.channel("x", "float32"), one.channel("rec", kind="json")
    img = two.channel("img", "uint8", (2048, 1024))  # split in two entries per frame
    frames = np.arange(3, dtype=np.uint8)[:, None, None] * np.ones((1, 2048, 1024), np.uint8)
    x.send(np.arange(4.0))
    rec.send({"a": 1})
    rec.send({"b": 2})
    img.send(frames)
    for w in (x, rec, img):
        w.seal()
    nodes = [*_channels(bus, one, "x", "rec"), *_channels(bus, two, "img")]
    with databus.Cursor(nodes) as cursor:
        got = {}
        while not cursor.done:
            for node, points in cursor.read(5).items():
                got.setdefault(node.name, []).append(points)
    assert [p.data.tolist() for p in got["x"]] == [[0.0, 1.0, 2.0, 3.0]]
    assert got["x"][0].data.dtype == np.float32 and got["x"][-1].ended
    assert [r for p in got["rec"] for r in p.data] == [{"a": 1}, {"b": 2}]
    images = np.concatenate([p.data for p in got["img"]])
    assert images.shape == (3, 2048, 1024) and images[:, 0, 0].tolist() == [0, 1, 2]
    newest = databus.Cursor(nodes[2]).read(0, last_only=True)[nodes[2]]
    assert newest.first == 2 and newest.data.shape == (1, 2048, 1024) and newest.data[0, 5, 5] == 2


def test_gap_markers_are_reported_as_missing(scans, bus):
    scan = scans()
    w = scan.channel("x", "int64", lossy=True)
    _flushed(w, range(5))
    w.queue.skip(3, gap=True)  # points 5..7 dropped: the next batch carries a gap marker
    _flushed(w, range(8, 11))
    (x,) = _channels(bus, scan, "x")
    cursor = databus.Cursor(x)
    first = cursor.read(0)[x]
    assert (first.first, first.data.tolist(), first.missing) == (0, [0, 1, 2, 3, 4], ())
    second = cursor.read(0)[x]  # the hole after the first run is left for the next read
    assert second.missing == (databus.DataGap(5, 3, "dropped"),)
    assert (second.start, second.first, second.data.tolist()) == (5, 8, [8, 9, 10])
    w.queue.skip(2, gap=True)  # trailing drops: marked before the seal
    w.seal()
    last = cursor.read(0)[x]
    assert last.missing == (databus.DataGap(11, 2, "dropped"),) and last.count == 0
    assert last.ended and last.stop == 13


def test_points_gone_before_the_cursor_read_them_are_missing_as_expired(scans, bus, admin):
    scan = scans()
    w = scan.channel("x", "int64")
    _flushed(w, range(5), range(5, 10))
    (x,) = _channels(bus, scan, "x")
    admin.xdel(x.key, "0-1")  # trimmed before the cursor started
    cursor = databus.Cursor(x)
    got = cursor.read(0)[x]
    assert got.missing == (databus.DataGap(0, 5, "expired"),)
    assert (got.start, got.first, got.data.tolist()) == (0, 5, list(range(5, 10)))
    _flushed(w, range(10, 15), range(15, 20))
    admin.xdel(x.key, "10-1")
    got = cursor.read(0)[x]
    assert got.missing == (databus.DataGap(10, 5, "expired"),) and got.first == 15
    monitor = databus.Cursor(x)
    assert monitor.read(0, last_only=True)[x].data.tolist() == [19]
    _flushed(w, range(20, 25))
    w.seal()
    admin.xdel(x.key, "20-1")  # a sealed channel whose last points are gone
    newest = monitor.read(0, last_only=True)[x]
    assert newest.missing == (databus.DataGap(24, 1, "expired"),) and newest.ended
    got = cursor.read(0)[x]
    assert got.missing == (databus.DataGap(20, 5, "expired"),) and got.ended and got.count == 0


def test_a_corrupt_entry_is_skipped_and_its_points_reported(scans, bus, admin, caplog):
    scan = scans()
    w = scan.channel("x", "int64")
    _flushed(w, range(5))
    (x,) = _channels(bus, scan, "x")
    admin.xadd(x.key, {"d": b"not 5 points", "n": 5}, id="5-1")
    w.queue.skip(5, gap=False)  # the publisher leaves indices 5..9 to that entry
    _flushed(w, range(10, 15))
    cursor = databus.Cursor(x)
    assert cursor.read(0)[x].data.tolist() == [0, 1, 2, 3, 4]
    with caplog.at_level(logging.WARNING):
        got = cursor.read(0)[x]
    assert got.missing == (databus.DataGap(5, 5, "corrupt"),)
    assert (got.first, got.data.tolist()) == (10, [10, 11, 12, 13, 14])
    assert any("5-1" in r.getMessage() for r in caplog.records)


def test_last_only_follows_the_newest_point(scans, bus):
    scan = scans()
    w = scan.channel("x", "int64")
    (x,) = _channels(bus, scan, "x")
    cursor = databus.Cursor(x)
    _flushed(w, [10], [20, 21], [30, 31, 32])
    got = cursor.read(0, last_only=True)[x]
    assert (got.first, got.data.tolist()) == (5, [32])
    _flushed(w, [40, 41])
    got = cursor.read(0, last_only=True)[x]
    assert (got.first, got.data.tolist()) == (7, [41])
    assert cursor.read(0, last_only=True) == {}
    result = []
    reader = threading.Thread(target=lambda: result.append(cursor.read(10, last_only=True)))
    reader.start()
    _flushed(w, [11], [21], [31])
    reader.join(10)
    got = result[0][x]
    assert got.count == 1 and got.data.tolist() == [[11, 21, 31][got.first - 8]]
    w.seal()
    end = cursor.read(10, last_only=True)
    assert cursor.done and all(p.ended for p in end.values())


def test_a_seal_during_a_blocking_read_ends_it(scans, bus):
    scan = scans()
    w = scan.channel("x", "int64")
    (x,) = _channels(bus, scan, "x")
    cursor = databus.Cursor(x)
    result = []
    reader = threading.Thread(target=lambda: result.append(cursor.read(10, last_only=True)))
    reader.start()
    w.seal()
    reader.join(10)
    (points,) = result[0].values()
    assert points.ended and points.count == 0 and points.missing == () and cursor.done
    with pytest.raises(databus.EndOfData, match="every channel is sealed"):
        cursor.read()


def test_a_cursor_waits_out_a_lost_connection(scans, bus, admin):
    scan = scans()
    w = scan.channel("x", "int64")
    (x,) = _channels(bus, scan, "x")
    cursor = databus.Cursor(x)
    assert cursor.read(0.01) == {}  # the cursor has its connection
    admin.client_kill_filter(_type="normal", skipme=True)  # and loses it, as the publisher
    result = []
    reader = threading.Thread(target=lambda: result.append(cursor.read(10)))
    reader.start()
    _flushed(w, [1, 2, 3])
    reader.join(10)
    assert result[0][x].data.tolist() == [1, 2, 3]


def test_bad_channels_are_refused(scans, bus, make_bus):
    scan = scans()
    scan.channel("x", "int64")
    (x,) = _channels(bus, scan, "x")
    with pytest.raises(TypeError, match="ChannelNodes"):
        databus.Cursor(["x"])
    other = make_bus().scan(scan.key).channels["x"]
    with pytest.raises(ValueError, match="one bus"):
        databus.Cursor([x, other])
    with pytest.raises(databus.EndOfData):
        databus.Cursor([]).read()


GEVENT_CODE = """
from gevent import monkey
monkey.patch_all()
import json
import gevent
import numpy as np
import databus

bus = databus.connect({url!r}, prefix={prefix!r})
scan = bus.session("gevent").create_scan()
x = scan.channel("x", "float64")
node = bus.scan(scan.key).channels["x"]
cursor = databus.Cursor(node)
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(100)])

def publish():
    gevent.sleep(0.2)
    for i in range(1000):
        x.send(float(i))
        if i % 100 == 0:
            gevent.sleep(0.001)
    x.seal()

gevent.spawn(publish)
first = cursor.read()  # blocks this greenlet only: the ticker and the publisher run
ticks_while_blocked = len(ticks)
values = [v for p in first.values() for v in p.data.tolist()]
while not cursor.done:
    values += [v for p in cursor.read(5).values() for v in p.data.tolist()]
ticker.join()
print(json.dumps({{"ticks_while_blocked": ticks_while_blocked, "values": values}}))
"""


def test_a_cursor_under_gevent_blocks_only_its_greenlet(bus, run_python):
    out = run_python(GEVENT_CODE.format(url=bus.url, prefix=bus.settings.prefix)).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ticks_while_blocked"] >= 50  # 0.2 s of 1 ms ticks went by while it read
    assert result["values"] == [float(i) for i in range(1000)]
