"""blissdata 2.x's cursor tests (2.4.5's ``tests/redis_engine/test_cursor.py``) and its
stream indexing rules, written again against ``databus.blissdata``, publishing with its
2.x writer side (a scan per test: our streams live in scans).

Ported: test_cursor_batching (all 112 cases: batches x last_only x block x seal x group),
test_cursor_read_from_origin, test_cursor_read_from_now, test_cursor_block,
test_cursor_timeout (without a sender racing the timeout: a timed assert), test_cursor_block_exit
(the sender waits for the first read instead of sleeping), test_cursor_sealed_stream,
test_cursor_multi_bunch, test_monitor_stream (the blocking part: one point sent, then the
others once the read returned), test_monitor_sealed_stream,
test_monitor_sealed_stream_no_new_available, test_monitor_sealed_stream_no_data_at_all,
test_monitor_sealed_stream_during_read, test_cursor_discontinuity (the hole made by deleting
the entry of point 4 instead of shifting the writer's private index).

Not ported: test_out_of_memory_send/_join/_seal (our publisher's answer to a full server is
the memory guard, then ``BusFull``/``FlushFailed``: tests/test_memory.py).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import CURSOR_BATCHES

import databus
from databus.blissdata import DataStore
from databus.blissdata.exceptions import (
    EndOfStream,
    IndexNoMoreThereError,
    IndexNotYetThereError,
    IndexWontBeThereError,
    NoWritePermission,
)
from databus.blissdata.streams import CursorGroup
from databus.blissdata.streams.default import Stream

ID = {"name": "cursor_test", "number": 1, "data_policy": "none", "session": "bd2"}


@pytest.fixture
def data_store(bus):
    return DataStore(bus)


@pytest.fixture
def make_streams(data_store):
    """``make_streams(names, dtype, shape)``: (writer streams, reader streams) of a new
    running scan; its scans are closed after the test."""
    scans = []

    def make(names, dtype=np.int64, shape=()):
        scan = data_store.create_scan(ID)
        scans.append(scan)
        rw = [scan.create_stream(Stream.make_definition(n, dtype, shape)) for n in names]
        scan.prepare()
        scan.start()
        ro_scan = data_store.load_scan(scan.key)
        return rw, [ro_scan.streams[n] for n in names]

    yield make
    for scan in scans:
        scan.close()


def stream_pair(make_streams, name="stream", dtype=np.int64, shape=()):
    (rw,), (ro,) = make_streams([name], dtype, shape)
    return rw, ro


@pytest.mark.parametrize("last_only", [True, False])
@pytest.mark.parametrize("block", [True, False])
@pytest.mark.parametrize("seal", [True, False])
@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("batches", CURSOR_BATCHES.values(), ids=CURSOR_BATCHES.keys())
def test_cursor_batching(make_streams, last_only, batches, seal, block, group):
    stream, ro_stream = stream_pair(make_streams, "my_stream")
    for batch in batches:
        stream.send(batch)
        stream.join()  # one entry per batch, as blissdata's sink writes them
    if seal:
        stream.seal()

    expected = batches[-1:] if last_only else batches
    data = np.concatenate(expected) if expected else np.array([], np.int64)
    if last_only:
        data = data[-1:]
    cursor = CursorGroup([ro_stream]) if group else ro_stream.cursor()

    def read():
        if block:
            return cursor.read(timeout=0.001, last_only=last_only)
        return cursor.read(block=False, last_only=last_only)

    if len(data) == 0 and seal:
        with pytest.raises(EndOfStream):
            read()
        return
    output = read()
    view = output.get(ro_stream) if group else output
    if batches:
        assert view.index == data[0]  # values are the indexes
        assert np.array_equal(view.get_data(), data)
        assert list(view) == list(data) and view.last_index == data[-1]
    else:
        assert view is None


@pytest.fixture
def prepared(make_streams):
    rw, ro = make_streams(list(CURSOR_BATCHES))
    for stream, batches in zip(rw, CURSOR_BATCHES.values(), strict=True):
        for batch in batches:
            stream.send(batch)
        stream.join()
    return {s.name: s for s in ro}


def test_cursor_read_from_origin(prepared):
    output = CursorGroup(prepared).read(block=False)
    named = {stream.name: view for stream, view in output.items()}
    for name, batches in CURSOR_BATCHES.items():
        if batches:
            assert named[name].index == 0
            assert np.array_equal(named[name].get_data(), np.concatenate(batches))
        else:
            assert name not in named


def test_cursor_read_from_now(prepared):
    group = CursorGroup(prepared)
    group.read(block=False, last_only=True)  # skip existing data
    assert group.read(block=False) == {}
    assert {s.name: i for s, i in group.position.items()} == {
        name: sum(map(len, batches)) for name, batches in CURSOR_BATCHES.items()
    }
    group.close()
    cursor = prepared["mixed"].cursor()
    assert cursor.position == 0 and len(cursor.read(block=False)) == 16
    assert cursor.position == 16
    cursor.close()


@pytest.mark.parametrize("block", [True, False])
def test_cursor_block(make_streams, block):
    rw, ro = stream_pair(make_streams)
    group = CursorGroup(streams={ro.name: ro})
    data = np.arange(100)
    if not block:
        assert group.read(block=False) == {}
        return
    sender = threading.Thread(target=rw.send, args=(data,))
    sender.start()
    output = group.read(block=True)
    sender.join()
    assert set(output) == {ro}
    assert output[ro].index == 0 and np.array_equal(output[ro].get_data(), data)


def test_cursor_timeout(make_streams):
    rw, ro = stream_pair(make_streams)
    group = CursorGroup(streams={ro.name: ro})
    assert group.read(timeout=0.2) == {}
    rw.send(np.arange(100))
    output = group.read(timeout=5)
    assert np.array_equal(output[ro].get_data(), np.arange(100))


def test_cursor_block_exit(make_streams):
    """CursorGroup.read(block=True) returns as soon as data arrives in any of its streams."""
    rw, ro = make_streams([f"stream_{i}" for i in range(3)])
    group = CursorGroup(streams={s.name: s for s in ro})
    first_read = threading.Event()

    def send():
        rw[1].send([1, 2, 3])
        rw[1].join()
        first_read.wait(10)
        rw[2].send([4, 5, 6])
        rw[2].join()
        rw[1].send([7, 8, 9])
        rw[1].join()

    sender = threading.Thread(target=send)
    sender.start()
    output = group.read()
    first_read.set()
    assert set(output) == {ro[1]}
    assert output[ro[1]].index == 0 and np.array_equal(output[ro[1]].get_data(), [1, 2, 3])
    sender.join()
    output = group.read()
    assert set(output) == {ro[1], ro[2]}
    assert output[ro[1]].index == 3 and np.array_equal(output[ro[1]].get_data(), [7, 8, 9])
    assert output[ro[2]].index == 0 and np.array_equal(output[ro[2]].get_data(), [4, 5, 6])


def test_cursor_sealed_stream(make_streams):
    rw, ro = stream_pair(make_streams, dtype=int)
    group = CursorGroup({"my_stream": ro})
    rw.send([1, 2, 3])
    group.read()
    rw.seal()
    with pytest.raises(EndOfStream):
        group.read()
    assert ro.is_sealed() and ro.wait_seal(0.01)


def test_cursor_multi_bunch(make_streams):
    rw, ro = make_streams([f"stream_{i}" for i in range(100)])
    group = CursorGroup(streams={f"my_stream{i}": s for i, s in enumerate(ro)})
    data = np.arange(2000)

    def send():
        for start in range(0, 2000, 100):
            for stream in rw:
                stream.send(data[start : start + 100])
        for stream in rw:
            stream.seal()

    sender = threading.Thread(target=send)
    sender.start()
    got = {stream: [] for stream in ro}
    while True:
        try:
            output = group.read(timeout=10)
        except EndOfStream:
            break
        for stream, view in output.items():
            got[stream].append(view.get_data())
    sender.join()
    for parts in got.values():
        assert np.array_equal(np.concatenate(parts), data)


def test_monitor_stream(make_streams):
    rw, ro = stream_pair(make_streams, dtype=int)
    group = CursorGroup({"my_stream": ro})

    # read last batch (less than available)
    rw.send(10)  # 0
    rw.send([20, 21])  # 1, 2
    rw.send([30, 31, 32])  # 3, 4, 5
    rw.join()
    view = group.read(block=False, last_only=True)[ro]
    assert view.index == 5 and np.array_equal(view.get_data(), [32])

    rw.send([40, 41])  # 6, 7
    rw.join()
    view = group.read(block=False, last_only=True)[ro]
    assert view.index == 7 and np.array_equal(view.get_data(), [41])

    # nothing new
    assert group.read(block=False, last_only=True) == {}

    # blocking read: the first point to come unblocks it
    reading = threading.Event()

    def send():
        rw.send(11)  # 8
        rw.join()
        reading.wait(10)
        rw.send(21)  # 9
        rw.send(31)  # 10

    sender = threading.Thread(target=send)
    sender.start()
    view = group.read(last_only=True)[ro]
    reading.set()
    sender.join()
    assert view.index == 8 and np.array_equal(view.get_data(), [11])


def test_monitor_sealed_stream(make_streams):
    rw, ro = stream_pair(make_streams, dtype=int)
    group = CursorGroup({"my_stream": ro})
    rw.send([1, 2, 3])
    rw.seal()
    view = group.read(last_only=True)[ro]
    assert view.index == 2 and np.array_equal(view.get_data(), [3])


def test_monitor_sealed_stream_no_new_available(make_streams):
    rw, ro = stream_pair(make_streams, dtype=int)
    group = CursorGroup({"my_stream": ro})
    rw.send([1, 2, 3])
    rw.join()
    group.read(last_only=True)
    rw.seal()
    with pytest.raises(EndOfStream):
        group.read(last_only=True)


def test_monitor_sealed_stream_no_data_at_all(make_streams):
    rw, ro = stream_pair(make_streams, dtype=int)
    group = CursorGroup({"my_stream": ro})
    rw.seal()
    with pytest.raises(EndOfStream):
        group.read(last_only=True)


def test_monitor_sealed_stream_during_read(make_streams):
    rw, ro = stream_pair(make_streams, dtype=int)
    group = CursorGroup({"my_stream": ro})
    sealer = threading.Thread(target=rw.seal)
    sealer.start()
    with pytest.raises(EndOfStream):
        group.read(last_only=True)
    sealer.join()


def test_cursor_discontinuity(make_streams, admin):
    rw, ro = stream_pair(make_streams, dtype=int)
    group = CursorGroup([ro])
    rw.send([0, 1, 2, 3])
    rw.join()
    group.read()
    rw.send([4])
    rw.join()
    rw.send([5, 6, 7, 8])
    rw.join()
    assert admin.xdel(ro.key, "4-1") == 1  # point 4 is gone before the cursor read it

    view = group.read()[ro]
    assert view.index == 4 and len(view) == 5 and view.nb_expired == 1
    with pytest.raises(IndexNoMoreThereError):
        view.get_data()
    assert np.array_equal(view.get_data(1), [5, 6, 7, 8])
    assert view.lost[0].first_index == 4  # databus's DataGap says why


# ------------------------------------------------------ indexing (EventStream's rules)


def test_indexing_before_and_after_the_seal(make_streams):
    rw, ro = stream_pair(make_streams, dtype=np.float64)
    rw.send(np.arange(5.0))
    rw.join()
    assert len(ro) == 5 and ro[0] == 0.0 and ro[4] == 4.0
    assert np.array_equal(ro[1:3], [1.0, 2.0]) and np.array_equal(ro[3:100], [3.0, 4.0])
    assert np.array_equal(ro[::2], [0.0, 2.0, 4.0]) and len(ro[4:2]) == 0
    with pytest.raises(IndexNotYetThereError):
        ro[-1]  # no meaning before the seal
    with pytest.raises(IndexNotYetThereError):
        ro[-2:]
    with pytest.raises(IndexNotYetThereError) as exc:
        ro[5]
    assert isinstance(exc.value, databus.NotYetPublished)
    assert not ro.is_sealed() and not ro.wait_seal(0.05)
    assert rw.seal() == 5
    assert ro.is_sealed() and ro.wait_seal()
    assert ro[-1] == 4.0 and np.array_equal(ro[-2:], [3.0, 4.0])
    with pytest.raises(IndexWontBeThereError):
        ro[5]
    with pytest.raises(IndexError):
        ro[-6]
    with pytest.raises(TypeError):
        ro["a"]
    assert list(ro) == [0.0, 1.0, 2.0, 3.0, 4.0]  # iteration ends at the seal


def test_trimmed_points_raise_index_no_more_there_with_our_detail(make_streams, admin):
    rw, ro = stream_pair(make_streams, dtype=np.int64)
    for i in range(4):
        rw.send([i])
        rw.join()
    admin.xdel(ro.key, "0-1")
    with pytest.raises(IndexNoMoreThereError) as exc:
        ro[0]
    assert isinstance(exc.value, databus.DataExpired) and exc.value.first == 0
    with pytest.raises(IndexNoMoreThereError):
        ro[0:3]
    assert np.array_equal(ro[1:3], [1, 2])


def test_stream_properties_and_the_writer_side(make_streams):
    rw, ro = stream_pair(make_streams, "x", np.float32)
    assert (ro.dtype, ro.shape, ro.kind, ro.plugin) == (np.float32, (), "array", None)
    assert ro.info["dtype"] == "float32" and ro.encoding["type"] == "numeric"
    assert ro.event_stream.encoding["dtype_str"] == "<f4"
    assert (ro.name, ro.key) == (rw.name, rw.key) == ("x", ro.node.key)
    with pytest.raises(NoWritePermission):
        ro.send(1.0)
    rw.send(1.0)
    rw.send([2.0, 3.0])
    rw.seal()
    assert list(ro) == [1.0, 2.0, 3.0] and np.array_equal(rw[:], [1.0, 2.0, 3.0])


def test_json_and_image_streams(data_store):
    scan = data_store.create_scan(ID)
    rec = scan.create_stream(Stream.make_definition("log", "json"))
    img = scan.create_stream(Stream.make_definition("img", "uint16", (4, 3), {"unit": "ct"}))
    scan.prepare()
    scan.start()
    rec.send({"a": 1})
    img.send(np.ones((2, 4, 3), np.uint16))  # a batch
    img.send(np.zeros((4, 3), np.uint16))  # a point
    scan.stop()
    scan.close()
    ro = data_store.load_scan(scan.key).streams
    assert ro["log"].kind == "json" and ro["log"][0] == {"a": 1} and ro["log"][:] == [{"a": 1}]
    assert ro["img"].shape == (4, 3) and ro["img"].info["unit"] == "ct"
    view = ro["img"].cursor().read()
    assert view.index == 0 and view.get_data().shape == (3, 4, 3)
    assert view.get_data(2).sum() == 0 and view.get_data(0, 2).sum() == 24


# ------------------------------------------------------- our runner's scans, lima frames


def test_runner_scan_with_detector_files_reads_as_lima_stream(beamline, data_store, tmp_path):
    import h5py

    from databus import scan as runner
    from databus.blissdata.streams.lima import LimaStream, LimaView
    from databus.sim import SimDetector

    det = SimDetector(shape=(6, 4), mode="file", directory=tmp_path)
    done = runner.ascan(beamline["robz"], -1, 1, 5, 0, beamline["diode"], det)
    scan = data_store.load_scan(done.key)
    assert scan.state is databus.blissdata.ScanState.CLOSED
    frames = scan.streams[f"{det.name}:image"]
    assert isinstance(frames, LimaStream) and frames.plugin == "lima" and frames.kind == "array"
    assert frames.shape == (6, 4) and frames.info["plugin"] == "lima"
    assert len(frames) == 5 and frames.is_sealed()
    whole = frames[0:5]
    assert whole.shape == (5, 6, 4) and np.array_equal(frames[-1], whole[4])
    view = frames.cursor().read()
    assert isinstance(view, LimaView) and (view.index, len(view)) == (0, 5)
    assert np.array_equal(view.get_data(1, 3), whole[1:3])
    last = frames.cursor().read(last_only=True)
    assert (last.index, len(last)) == (4, 1)
    refs = frames.get_references(slice(0, 5))
    assert [r.index for r in refs] == [0, 1, 2, 3, 4] and refs[0].format == "HDF5"
    assert frames.get_references(-1) == refs[4] and view.get_references(3) == refs[3:]
    with h5py.File(refs[2].file_path, "r") as f:
        assert np.array_equal(f[refs[2].data_path][refs[2].index], whole[2])
    with pytest.raises(IndexWontBeThereError):
        frames.get_references(5)
    axis = scan.streams["axis:robz"]
    assert np.array_equal(axis[:], np.linspace(-1, 1, 5)) and axis.info["unit"] == "mm"
