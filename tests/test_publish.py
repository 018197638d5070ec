"""The publisher against a real server: round trips, lifecycle, bad input, the sink."""

import threading
import time

import numpy as np
import pytest
from conftest import DTYPES, read_channel

import databus
from databus._encoding import unpack_meta
from databus._store import keys


def log_events(bus, key):
    return [fields[b"event"].decode() for _, fields in bus.redis.xrange(key)]


@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 2, 3)])
def test_every_dtype_and_shape_round_trips_through_the_server(bus, shape):
    scan = bus.session("rt").create_scan(title="round trip")
    rng = np.random.default_rng(1)
    sent = {}
    for dtype in DTYPES:
        ch = scan.channel(dtype, dtype, shape)
        data = (rng.random((20, *shape)) * 100).astype(dtype)
        ch.send(data[0])  # one point
        ch.send(data[1:12])  # a block
        for point in data[12:]:
            ch.send(point.tolist() if shape else point.item())  # Python values
        sent[dtype] = data
    scan.end()
    for dtype, data in sent.items():
        got, total = read_channel(bus, scan.key, dtype)
        assert got.dtype == np.dtype(dtype) and total == 20
        np.testing.assert_array_equal(got, data)


def test_frames_round_trip_and_stay_under_the_size_class(bus):
    scan = bus.session("frames").create_scan()
    img = scan.channel("det:image", "uint16", (1024, 1024))
    frames = np.random.default_rng(2).integers(0, 65535, (5, 1024, 1024), dtype=np.uint16)
    for frame in frames:
        img.send(frame)
        frame[:] = 0  # the caller reuses its buffer at once: send() copied
    scan.end()
    got, total = read_channel(bus, scan.key, "det:image")
    assert total == 5
    np.testing.assert_array_equal(
        got, np.random.default_rng(2).integers(0, 65535, (5, 1024, 1024), dtype=np.uint16)
    )
    per_frame = bus.redis.memory_usage(img.key, samples=0) / 5
    assert per_frame < 2.15e6


def test_only_memory_the_caller_could_change_is_copied(bus):
    from databus._publish import _mutable

    received = np.arange(512 * 512, dtype=np.uint16).tobytes()  # as from a socket
    frozen = np.frombuffer(received, np.uint16).reshape(512, 512)
    mine = np.zeros((512, 512), np.uint16)
    read_only_view = mine.view()
    read_only_view.flags.writeable = False
    assert not _mutable(frozen) and not _mutable(frozen[::2])
    assert _mutable(mine) and _mutable(read_only_view)
    assert _mutable(np.frombuffer(bytearray(8)))

    scan = bus.session("copies").create_scan()
    img = scan.channel("img", "uint16", (512, 512))
    img.send(frozen)
    assert not bus.buffer_pool._owned  # sent from the bytes themselves
    img.send(mine)
    assert len(bus.buffer_pool._owned) == 1  # copied into a pooled buffer
    mine[:] = 7
    scan.end()
    got = read_channel(bus, scan.key, "img")[0]
    assert np.array_equal(got[0], frozen) and not got[1].any()


def test_json_and_reference_channels(bus):
    scan = bus.session("kinds").create_scan()
    log = scan.channel("log", kind="json")
    det = scan.channel("lima:image", "uint16", (64, 64), kind="ref")
    log.send({"msg": "start", "pos": np.float64(1.5)})
    log.extend(["a", "b"])
    det.send(databus.FileRef("/data/scan1.h5", "/entry/data", 0, 10))
    det.send(databus.FileRef("/data/scan1.h5", "/entry/data", 10, 12))
    with pytest.raises(databus.DtypeError, match="FileRef"):
        det.send(np.zeros((64, 64)))
    with pytest.raises(databus.MetadataError, match="record"):
        log.send({"bad": object()})
    scan.end()
    assert read_channel(bus, scan.key, "log") == ([{"msg": "start", "pos": 1.5}, "a", "b"], 3)
    refs, total = read_channel(bus, scan.key, "lima:image")
    assert total == 12 and [len(r) for r in refs] == [10, 2]
    first_ids = [e[0] for e in bus.redis.xrange(det.key)][:2]
    assert first_ids == [b"0-1", b"10-1"]


def test_extend_takes_a_sequence_of_points(bus):
    scan = bus.session("extend").create_scan()
    spec = scan.channel("spec", "float64", (3,))
    x = scan.channel("x", "int32")
    spec.extend([[1, 2, 3], [4, 5, 6]])
    spec.extend(np.zeros((0, 3)))
    x.extend(range(4))
    with pytest.raises(databus.ShapeError, match=r"sequence of points of shape \(3,\)"):
        spec.extend([1, 2, 3])
    scan.end()
    assert read_channel(bus, scan.key, "spec")[0].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert read_channel(bus, scan.key, "x")[0].tolist() == [0, 1, 2, 3]


def test_entry_ids_encode_the_first_index_and_the_seal_closes_the_stream(bus):
    scan = bus.session("ids").create_scan()
    ch = scan.channel("x", "float64")
    ch.send(np.arange(10.0))
    scan.end()
    entries = bus.redis.xrange(ch.key)
    assert entries[0][0] == b"0-1" and entries[-1][0] == databus._encoding.SEAL_ID
    assert entries[-1][1] == {b"end": b"10"}
    with pytest.raises(Exception, match="exhausted"):
        bus.redis.xadd(ch.key, {"d": b"x"})


def test_lifecycle_is_logged_in_scan_and_session_logs(bus):
    session = bus.session("life")
    scan = session.create_scan({"title": "loopscan 3 0.1", "npoints": 3})
    assert (scan.number, scan.state) == (1, databus.ScanState.CREATED)
    scan.channel("t", "float64")
    scan.update_info(user={"sample": "Si"})
    scan.prepare()
    scan.start()
    scan.end("stopped")
    record = bus.redis.hgetall(scan.key)
    assert unpack_meta(record[b"info"]) == {
        "title": "loopscan 3 0.1",
        "npoints": 3,
        "user": {"sample": "Si"},
        "scan_nb": 1,
        "session_name": session.name,
        "node_name": scan.key,
    }
    assert int(record[b"state"]) == databus.ScanState.ENDED and record[b"end_reason"] == b"stopped"
    assert log_events(bus, keys.scan_log(scan.key)) == [
        "created",
        "channel",
        "info",
        "prepared",
        "started",
        "ended",
    ]
    slog = keys.session_log(bus.settings.prefix, "life")
    assert log_events(bus, slog) == ["created", "prepared", "started", "ended"]
    assert bus.redis.zscore(keys.sessions(bus.settings.prefix), "life") is not None
    with pytest.raises(databus.ScanStateError, match="ended"):
        scan.update_info(x=1)
    with pytest.raises(databus.ScanStateError, match="ended"):
        scan.end()


def test_states_only_move_forward(bus):
    scan = bus.session("s").create_scan()
    scan.start()
    with pytest.raises(databus.ScanStateError, match="STARTED cannot move to PREPARED"):
        scan.prepare()
    scan.end()


def test_scan_numbers_are_atomic_across_threads(make_bus):
    buses = [make_bus() for _ in range(4)]
    numbers = []

    def create(bus):
        for _ in range(10):
            scan = bus.session("race").create_scan()
            numbers.append(scan.number)
            scan.end()

    threads = [threading.Thread(target=create, args=(b,)) for b in buses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 41))


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (RuntimeError("motor stuck"), "failed"),
        (KeyboardInterrupt(), "interrupted"),
        (None, "finished"),
    ],
)
def test_context_manager_records_the_end_reason_and_error(bus, exc, reason):
    def run():
        with bus.session("cm").create_scan() as scan:
            scan.channel("x", "float64").send(1.0)
            if exc is not None:
                raise exc
        return scan

    if exc is None:
        scan = run()
        key = scan.key
    else:
        with pytest.raises(type(exc)):
            run()
        key = keys.scan(bus.settings.prefix, "cm", 1)
    record = bus.redis.hgetall(key)
    assert record[b"end_reason"].decode() == reason
    if isinstance(exc, RuntimeError):
        assert record[b"error"] == b"RuntimeError: motor stuck"
        log = bus.redis.xrange(keys.scan_log(key))[-1][1]
        assert log[b"error"] == b"RuntimeError: motor stuck"
    assert read_channel(bus, key, "x")[1] == 1


class TestBadInput:
    def test_wrong_shape_and_dtype_leave_the_scan_usable(self, bus):
        scan = bus.session("bad").create_scan()
        img = scan.channel("img", "uint16", (1024, 1024))
        n = scan.channel("n", "int32")
        with pytest.raises(
            databus.ShapeError, match=r"'img'.*\(1024, 1024\).*got shape \(1023, 1024\)"
        ):
            img.send(np.zeros((1023, 1024), "u2"))
        with pytest.raises(databus.DtypeError, match=r"'n' holds int32 points: 2\.5"):
            n.send(2.5)
        with pytest.raises(databus.DtypeError, match="got None"):
            n.send(None)
        img.send(np.ones((1024, 1024), "u2"))
        n.send(7)
        scan.end()
        assert read_channel(bus, scan.key, "n")[0].tolist() == [7]
        assert read_channel(bus, scan.key, "img")[1] == 1

    def test_a_float_that_would_overflow_a_narrower_channel_is_refused(self, bus):
        scan = bus.session("overflow").create_scan()
        x = scan.channel("x", "float32")
        with pytest.raises(databus.DtypeError, match="too large for float32"):
            x.send(1e300)  # a Python float: it must not slip through as inf
        x.send(1.5)
        scan.end()
        assert read_channel(bus, scan.key, "x")[0].tolist() == [1.5]

    def test_nan_is_kept_in_float_channels(self, bus):
        scan = bus.session("nan").create_scan()
        x = scan.channel("x", "float32")
        x.send(float("nan"))
        x.send(np.array([1.0, np.nan]))
        scan.end()
        got = read_channel(bus, scan.key, "x")[0]
        assert np.isnan(got[0]) and got[1] == 1 and np.isnan(got[2])

    def test_duplicate_channel_and_channel_after_seal_or_end(self, bus):
        scan = bus.session("dup").create_scan()
        scan.channel("x", "float64")
        with pytest.raises(databus.ChannelExists, match="already has a channel 'x'"):
            scan.channel("x", "int32")
        scan.prepare()
        scan.start()
        scan.channel("late", "float64").send(1.0)  # a stream declared mid-run
        scan.seal()
        with pytest.raises(databus.ScanStateError, match=r"cannot add channel 'y'.*sealed"):
            scan.channel("y", "float64")
        scan.end()
        with pytest.raises(databus.ScanStateError, match=r"cannot add channel 'y'.*ENDED"):
            scan.channel("y", "float64")
        assert read_channel(bus, scan.key, "late")[0].tolist() == [1.0]

    def test_send_after_end_is_a_closed_error(self, bus):
        scan = bus.session("closed").create_scan()
        x = scan.channel("x", "float64")
        scan.end()
        for value in (1.0, np.ones(3), 3):
            with pytest.raises(databus.ClosedError, match="ended"):
                x.send(value)

    def test_bad_scan_info_and_session_names(self, bus):
        with pytest.raises(databus.MetadataError, match=r"scan info\['motor'\]"):
            bus.session("info").create_scan({"motor": object()})
        with pytest.raises(databus.InvalidName, match="cannot contain ':'"):
            bus.session("a:b")
        scan = bus.session("info").create_scan()
        with pytest.raises(ValueError, match="unknown end reason 'done'"):
            scan.end("done")
        with pytest.raises(ValueError, match="'lost' is what readers report"):
            scan.end(databus.EndReason.LOST)
        scan.end("finished")

    def test_non_numeric_dtype_and_missing_dtype(self, bus):
        scan = bus.session("dt").create_scan()
        with pytest.raises(databus.DtypeError, match="kind='json'"):
            scan.channel("s", "U10")
        with pytest.raises(databus.DtypeError, match="give a dtype"):
            scan.channel("s")
        scan.end()


class TestSink:
    def test_per_point_sends_are_batched_across_channels(self, bus):
        scan = bus.session("batch").create_scan()
        chans = [scan.channel(f"c{i}", "float64") for i in range(4)]
        for i in range(50_000):
            for ch in chans:
                ch.send(float(i))
        scan.end()
        stats = scan.statistics()
        assert stats.points_acked == 200_000 and stats.queued_points == 0
        assert stats.flushes < 50_000  # batched, not one round trip per point
        for i in range(4):
            got, total = read_channel(bus, scan.key, f"c{i}")
            assert total == 50_000 and np.array_equal(got, np.arange(50_000.0))

    def test_a_slow_trickle_is_sent_at_once(self, bus):
        scan = bus.session("trickle").create_scan()
        x = scan.channel("x", "float64")
        for i in range(5):
            x.send(float(i))
            deadline = time.monotonic() + 2
            while bus.redis.xlen(x.key) < i + 1 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert bus.redis.xlen(x.key) == i + 1  # no timer: each point went out alone
        scan.end()

    def test_a_full_buffer_blocks_send_and_loses_nothing(self, make_bus):
        bus = make_bus(buffer_bytes=4 * 2**20)
        scan = bus.session("full").create_scan()
        img = scan.channel("img", "uint8", (2**20,))
        for i in range(40):
            img.send(np.full(2**20, i % 256, np.uint8))
            assert scan.statistics().buffered_bytes <= 4 * 2**20
        scan.end()
        got, total = read_channel(bus, scan.key, "img")
        assert total == 40 and [int(f[0]) for f in got] == list(range(40))
        assert scan.statistics().peak_bytes <= 4 * 2**20

    def test_a_lossy_channel_drops_its_oldest_and_counts_them(self, make_bus, admin):
        bus = make_bus(buffer_bytes=2 * 2**20)
        scan = bus.session("lossy").create_scan()
        img = scan.channel("img", "uint8", (2**20,), lossy=True)
        admin.client_pause(300, all=True)  # the server stalls: the buffer fills up
        for i in range(20):
            img.send(np.full(2**20, i, np.uint8))
        scan.end()
        got, total = read_channel(bus, scan.key, "img")
        dropped = scan.statistics().dropped_points
        assert total == 20 and dropped > 0 and len(got) == 20 - dropped
        assert int(got[-1][0]) == 19  # the newest survive
        entries = bus.redis.xrange(img.key)[:-1]
        ids = [databus._encoding.parse_id(e[0]) for e in entries]
        assert [int(f[0]) for f in got] == [i for i, part in ids if part]  # indices kept
        assert int(bus.redis.hget(scan.key, "dropped:img")) == dropped
        # every dropped point is announced by a gap marker, in index order
        gaps = [
            g
            for g in databus._encoding.decode_entries(img.desc, img.key, entries)
            if isinstance(g, databus._encoding.Gap)
        ]
        assert {g.reason for g in gaps} == {"dropped"}
        lost = {i for g in gaps for i in range(g.first, g.first + g.count)}
        assert len(lost) == dropped and lost.isdisjoint(int(f[0]) for f in got)

    @pytest.mark.parametrize("dtype", ["float64", "int32"])  # fast-path scalars, and not
    def test_skip_announces_points_that_will_never_come(self, bus, dtype):
        scan = bus.session(f"skip{dtype}").create_scan()
        x = scan.channel("x", dtype)
        scan.prepare()
        scan.start()
        scalar = float if dtype == "float64" else int  # Python scalars: the fast path
        x.send(scalar(0))
        x.send(scalar(1))
        x.skip(3)
        x.skip(1)
        x.send(np.array([6], dtype))
        x.flush()
        x.skip(2)  # trailing: written before the seal
        with pytest.raises(ValueError, match="count >= 1"):
            x.skip(0)
        scan.end()
        seen = []
        for event in bus.scan(scan.key).walk_events():
            if event.type is databus.EventType.NEW_DATA:
                d = event.data
                seen += [(i, "data") for i in range(d.first_index, d.first_index + d.block_size)]
            elif event.type is databus.EventType.GAP:
                d = event.data
                seen += [(i, d.reason) for i in range(d.first_index, d.first_index + d.block_size)]
            elif event.type is databus.EventType.END_SCAN:
                break
        assert seen == [(0, "data"), (1, "data")] + [(i, "dropped") for i in range(2, 6)] + [
            (6, "data"),
            (7, "dropped"),
            (8, "dropped"),
        ]
        node = bus.scan(scan.key)
        assert node.channels["x"][6] == 6 and len(node.channels["x"]) == 9
        with pytest.raises(databus.DataLost, match="dropped"):
            node.channels["x"][3]
        assert scan.statistics().dropped_points == 6
        with pytest.raises(databus.ClosedError):
            x.skip(1)

    def test_a_server_error_is_raised_by_the_next_send_and_by_end(self, make_bus):
        bus = make_bus()
        scan = bus.session("err").create_scan()
        x = scan.channel("x", "float64")
        x.send(1.0)
        time.sleep(0.2)
        bus.redis.delete(x.key)
        bus.redis.set(x.key, "not a stream")  # the next XADD hits WRONGTYPE
        x.send(2.0)
        deadline = time.monotonic() + 5
        with pytest.raises(databus.FlushFailed, match="WRONGTYPE") as info:
            while time.monotonic() < deadline:
                x.send(3.0)
                time.sleep(0.01)
        assert info.value.__cause__ is not None
        assert "'x'" in str(info.value)
        with pytest.raises(databus.FlushFailed, match="not acknowledged: 'x'"):
            scan.end()
        assert bus.redis.hget(scan.key, "end_reason") == b"failed"


def test_flushes_are_paced_by_the_readers_waiting_on_the_server(bus):
    """Every flush wakes every waiting reader: with twenty waiting, points sent one a
    millisecond go out in about one flush per 10 ms instead of one each."""

    def flushes(readers):
        waiting = [bus.redis.connection_pool.make_connection() for _ in range(readers)]
        for conn in waiting:  # blocked readers, as the server counts them
            conn.send_command("XREAD", "BLOCK", 0, "STREAMS", "nothing", "$")
        try:
            with bus.session("paced").create_scan(title=f"{readers} readers") as scan:
                x = scan.channel("x", "float64")
                for i in range(300):
                    x.send(float(i))
                    time.sleep(0.001)
            stats = scan.statistics()
        finally:
            for conn in waiting:
                conn.disconnect()
        assert stats.points_acked == 300
        return stats.flushes

    alone, crowded = flushes(0), flushes(20)
    assert crowded <= alone / 3, (alone, crowded)
    assert crowded >= 10  # paced, not held until the end


def test_the_final_info_is_written_with_the_end(bus):
    scan = bus.session("final").create_scan({"title": "t"})
    scan.channel("x", "float64").send(1.0)
    with pytest.raises(databus.MetadataError, match="max_info_bytes"):
        scan.end(info={"blob": "x" * 2 * 2**20})
    assert scan.state is databus.ScanState.CREATED  # refused before anything was sent
    scan.end("stopped", info={"end_time": "now", "title": "t2"})
    node = bus.scan(scan.key)
    assert (node.info["end_time"], node.info["title"], node.end_reason) == ("now", "t2", "stopped")
    assert scan.info["end_time"] == "now"
    assert log_events(bus, keys.scan_log(scan.key))[-2:] == ["info", "ended"]
