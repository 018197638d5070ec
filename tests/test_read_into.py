"""Big frames read straight into their array (``ChannelNode.get``, ``read_into``): the RESP
reader on a real socket, and the reads against a real server, fallbacks included."""

import socket
import threading

import numpy as np
import pytest

import databus
from databus._encoding import DATA, Descriptor, whole_split_points
from databus._store.resp import EntriesReader, ProtocolError, ServerReply

SHAPE = (1024, 1100)  # uint16: 2.15 MiB, a point split into two entries


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _entry(eid: bytes, *pairs: bytes) -> bytes:
    return b"*2\r\n" + _bulk(eid) + b"*%d\r\n" % len(pairs) + b"".join(map(_bulk, pairs))


def _reply(data: bytes, chunk: int = 7) -> EntriesReader:
    """A reader of ``data``, sent in ``chunk``-byte pieces by a thread (refills the
    reader's buffer mid-line and mid-value)."""
    ours, theirs = socket.socketpair()

    def send() -> None:
        for i in range(0, len(data), chunk):
            theirs.sendall(data[i : i + chunk])
        theirs.close()

    threading.Thread(target=send, daemon=True).start()
    return EntriesReader(ours)


class TestEntriesReader:
    def test_field_values_land_in_the_buffer_in_order_and_entries_view_them(self):
        data = b"*2\r\n" + _entry(b"0-1", DATA, b"abcd", b"n", b"1") + _entry(b"0-2", DATA, b"ef")
        out = bytearray(8)
        entries, filled = _reply(data).read(DATA, memoryview(out))
        assert filled == 6 and out[:6] == b"abcdef"
        assert [eid for eid, _ in entries] == [b"0-1", b"0-2"]
        assert bytes(entries[0][1][DATA]) == b"abcd" and entries[0][1][b"n"] == b"1"
        assert bytes(entries[1][1][DATA]) == b"ef"

    def test_big_values_arrive_through_many_refills(self):
        value = np.random.default_rng(1).integers(0, 256, 300_000, np.uint8).tobytes()
        out = bytearray(len(value))
        entries, filled = _reply(b"*1\r\n" + _entry(b"3-1", DATA, value), 65_000).read(
            DATA, memoryview(out)
        )
        assert filled == len(value) and bytes(out) == value and len(entries) == 1

    def test_resp3_maps_of_fields_are_read(self):
        data = b"*1\r\n*2\r\n" + _bulk(b"5-1") + b"%1\r\n" + _bulk(DATA) + _bulk(b"xyz")
        out = bytearray(3)
        entries, filled = _reply(data).read(DATA, memoryview(out))
        assert filled == 3 and bytes(out) == b"xyz" and bytes(entries[0][1][DATA]) == b"xyz"

    def test_a_value_that_does_not_fit_is_read_whole_and_said(self):
        data = b"*2\r\n" + _entry(b"0-1", DATA, b"abc") + _entry(b"0-2", DATA, b"defg")
        out = bytearray(5)
        reader = _reply(data)
        entries, filled = reader.read(DATA, memoryview(out))
        assert reader.overflow and filled == 3 and entries[1][1][DATA] == b"defg"
        assert not reader.pending

    def test_empty_range_and_server_errors(self):
        assert _reply(b"*0\r\n").read(DATA, memoryview(bytearray(1))) == ([], 0)
        with pytest.raises(ServerReply, match="WRONGTYPE"):
            _reply(b"-WRONGTYPE Operation against a key\r\n").read(DATA, memoryview(bytearray()))

    @pytest.mark.parametrize(
        "data, message",
        [
            (b"?what\r\n", "unexpected reply"),
            (b":5\r\n", "not an array"),
            (b"*1\r\n:5\r\n", "not \\[ID, fields\\]"),
            (b"*1\r\n*2\r\n$3\r\n0-1\r\n*1\r\n$1\r\nd\r\n", "field-value pairs"),
        ],
    )
    def test_what_is_not_an_xrange_reply_is_a_protocol_error(self, data, message):
        with pytest.raises(ProtocolError, match=message):
            _reply(data).read(DATA, memoryview(bytearray(8)))

    def test_a_connection_closed_mid_value_is_a_connection_error(self):
        data = b"*1\r\n" + _entry(b"0-1", DATA, b"abcdefgh")[:-6]
        with pytest.raises(ConnectionError):
            _reply(data).read(DATA, memoryview(bytearray(8)))


def test_whole_split_points_checks_count_order_and_ids():
    desc = Descriptor.create("array", "uint16", SHAPE)
    assert desc.parts == 2
    good = [(b"4-1", {}), (b"4-2", {}), (b"5-1", {}), (b"5-2", {})]
    assert whole_split_points(desc, 4, 2, good)
    assert not whole_split_points(desc, 4, 2, good[:3])
    assert not whole_split_points(desc, 4, 2, [good[1], good[0], *good[2:]])
    assert not whole_split_points(desc, 3, 2, good)


@pytest.fixture
def frames(bus):
    """A scan of 6 distinct split frames, point 6 dropped (a gap), 7 written, ended."""
    rng = np.random.default_rng(7)
    sent = [rng.integers(0, 65535, SHAPE, np.uint16) for _ in range(8)]
    with bus.session("into").create_scan(title="frames") as scan:
        image = scan.channel("det:image", "uint16", SHAPE)
        small = scan.channel("det:sum", "float64")
        scan.prepare()
        scan.start()
        for frame in sent[:6]:
            image.send(frame)
            small.send(float(frame.sum()))
        image.skip(1)
        image.send(sent[7])
    return bus.scan(scan.key), sent


class TestGetOut:
    def test_split_frames_read_as_sent_with_and_without_out(self, frames):
        node, sent = frames
        image = node.channels["det:image"]
        assert image.desc.parts == 2
        for i in (0, 3, 5, 7):
            assert np.array_equal(image.get(i), sent[i])
        out = np.empty(SHAPE, np.uint16)
        assert image.read_into(out, 2) is out and np.array_equal(out, sent[2])
        stacked = np.empty((3, *SHAPE), np.uint16)
        assert image.read_into(stacked, 1, 3) is stacked
        assert np.array_equal(stacked, np.stack(sent[1:4]))
        assert np.array_equal(image[-1], sent[7])

    def test_points_in_one_entry_are_copied_into_out(self, frames):
        node, sent = frames
        out = np.empty(4, np.float64)
        node.channels["det:sum"].read_into(out, 0, 3)
        assert out.tolist() == [float(f.sum()) for f in sent[:4]]

    @pytest.mark.parametrize(
        "make",
        [
            lambda: np.empty(SHAPE, np.int32),
            lambda: np.empty((2, *SHAPE), np.uint16),
            lambda: np.empty((SHAPE[1], SHAPE[0]), np.uint16).T,
            lambda: bytearray(2 * SHAPE[0] * SHAPE[1]),
        ],
        ids=["dtype", "shape", "not C-contiguous", "not an array"],
    )
    def test_an_unfit_out_is_refused_by_name(self, frames, make):
        node, _ = frames
        with pytest.raises(ValueError, match="out for channel 'det:image' must be"):
            node.channels["det:image"].read_into(make(), 0)

    def test_read_only_out_and_json_channels_are_refused(self, frames, bus):
        node, _ = frames
        out = np.empty(SHAPE, np.uint16)
        out.flags.writeable = False
        with pytest.raises(ValueError, match="writable"):
            node.channels["det:image"].read_into(out, 0)
        with bus.session("into").create_scan(title="json") as scan:
            notes = scan.channel("notes", kind="json", dtype=None)
            scan.prepare()
            scan.start()
            notes.send({"a": 1})
        with pytest.raises(ValueError, match="json points, not arrays"):
            bus.scan(scan.key).channels["notes"].read_into(np.empty(1), 0)

    def test_missing_dropped_and_incomplete_points_raise_as_before(self, frames, admin):
        node, _ = frames
        image = node.channels["det:image"]
        with pytest.raises(databus.DataLost):
            image.read_into(np.empty(SHAPE, np.uint16), 6)
        with pytest.raises(databus.EndOfData):
            image.get(8)
        admin.xdel(image.key, "4-2")
        with pytest.raises(databus.DatabusError):
            image.get(4)

    def test_a_server_error_is_a_databus_error_and_the_pool_stays_in_step(self, frames, admin):
        node, sent = frames
        image = node.channels["det:image"]
        junk = image.key + ":junk"
        admin.set(junk, b"x")
        with pytest.raises(databus.ServerError, match="WRONGTYPE"):
            node.bus.wire.entries_into(("XRANGE", junk, "-", "+"), DATA, memoryview(b""))
        for i in range(3):
            assert np.array_equal(image.get(i), sent[i])
        assert node.bus.wire.call("PING") is True


def test_whole_split_frames_take_the_direct_path(frames):
    node, sent = frames
    image = node.channels["det:image"]
    out = np.empty((2, *SHAPE), np.uint16)
    assert image._received(2, 3, out) and np.array_equal(out, np.stack(sent[2:4]))
    assert not image._received(5, 6, out)  # point 6 is a gap: _blocks says why
