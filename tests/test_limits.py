"""Bad input refused at the API boundary, against a real server: names, file references,
the size of scan info and json records; and readers that do not trust a stored reference."""

import os
import threading

import numpy as np
import pytest
from conftest import eventually, read_channel
from test_subscribe import Collector, ended

import databus
from databus import FileRef
from databus._encoding import pack_meta
from databus._events import EventType
from databus._store import keys
from databus.channels import Channel

MIB = 2**20


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("a\x00b", r"cannot contain control characters, got 'a\\x00b' \(try 'ab'\)"),
        ("\udcff", r"must be valid text, got '\\udcff' .*lone surrogate"),
        ("s" * 300, r"a session name has at most 128 characters, got 300: 'sss"),
        ("", r"a session name is a non-empty string, got ''"),
        (b"demo", r"a session name is a non-empty string, got b'demo'"),
        ("a:b", r"cannot contain ':', got 'a:b' \(try 'a_b'\)"),
    ],
)
def test_session_names_that_cannot_be_used_are_refused(bus, name, match):
    with pytest.raises(databus.InvalidName, match=match) as info:
        bus.session(name)
    assert isinstance(info.value, ValueError)
    with pytest.raises(databus.InvalidName, match=match):
        databus.SessionNode(bus, name)


def test_names_at_the_documented_lengths_are_accepted(bus):
    scan = bus.session("s" * keys.MAX_SESSION_NAME).create_scan()
    scan.channel("c" * keys.MAX_CHANNEL_NAME, "float64").send(1.0)
    scan.end()
    assert bus.sessions() == ["s" * keys.MAX_SESSION_NAME]


def test_channel_names_that_cannot_be_used_are_refused_and_the_scan_goes_on(bus):
    scan = bus.session("names").create_scan()
    with pytest.raises(databus.InvalidName, match="a channel name has at most 256 characters"):
        scan.channel("c" * 257, "float64")
    with pytest.raises(databus.InvalidName, match=r"control characters, got 'a\\nb'"):
        scan.channel("a\nb", kind="json")
    with pytest.raises(databus.InvalidName, match="a channel name is a non-empty string"):
        scan.channel(None, "float64")
    with pytest.raises(databus.InvalidName, match="lone surrogate"):
        Channel("stop\udcff", bus=bus)
    x = scan.channel("x", "float64")
    x.send(1.0)
    scan.end()
    assert list(scan.channels) == ["x"] and read_channel(bus, scan.key, "x")[1] == 1


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        (
            FileRef("/data/det.h5", "/entry/data", 0, 2**62),
            r"channel 'det' refuses this FileRef: stop 4611686018427387904 is over the "
            r"largest frame index, 1099511627776 \(2\*\*40\); send FileRef\('/absolute",
        ),
        (FileRef("det.h5", "/entry/data", 0, 2), r"file 'det.h5' is not an absolute path"),
        (FileRef("/data/det.h5", "", 0, 2), r"dataset must be a non-empty string, got ''"),
        (FileRef("/data/\x00.h5", "d", 0, 2), r"file '/data/\\x00.h5' contains a NUL"),
        (FileRef("/data/det.h5", "d", 0, 2**24 + 1), r"16777217 frames \(0..16777216\) are more"),
        (FileRef("/data/det.h5", "d", 0.0, 2), r"start must be an int, got 0.0"),
    ],
)
def test_a_file_reference_out_of_bounds_is_refused_at_send(bus, ref, match):
    scan = bus.session("refs").create_scan()
    det = scan.channel("det", "uint16", (4, 4), kind="ref")
    with pytest.raises(databus.FileRefError, match=match) as info:
        det.send(ref)
    assert isinstance(info.value, ValueError)
    det.send(FileRef("/data/det.h5", "/entry/data", 0, 3))  # the scan goes on
    scan.end()
    refs, total = read_channel(bus, scan.key, "det")
    assert total == 3 and refs == [FileRef("/data/det.h5", "/entry/data", 0, 3)]


@pytest.mark.parametrize(
    ("stored", "match"),
    [
        (["/data/det.h5", "d", 0, 2**62], "stop 4611686018427387904 is over"),
        (["/data/det.h5", "d", 0, 5], "2 points for a reference to frames 0..4"),
        (["det.h5", "d", 0, 2], "file 'det.h5' is not an absolute path"),
    ],
)
def test_a_corrupt_reference_is_skipped_by_a_walk_and_refused_by_get(bus, caplog, stored, match):
    session = bus.session("badref")
    c = Collector(session.follow, until=ended)
    scan = session.create_scan()
    det = scan.channel("det", "uint16", (4, 4), kind="ref")
    scan.prepare()
    det.send(FileRef("/data/det.h5", "d", 0, 3))
    assert eventually(lambda: bus.redis.xlen(det.key) == 1)
    bus.redis.xadd(det.key, {"r": pack_meta(stored), "n": 2}, id="3-1")  # injected by hand
    ch = bus.scan(scan.key).channels["det"]
    assert len(ch) == 3  # the bad entry vouches for no point
    det.queue.skip(2, gap=True)  # the publisher skips the indices the bad entry took
    det.send(FileRef("/data/det.h5", "d", 3, 5))
    scan.end()
    events = c.join()
    firsts = [e.data.first_index for e in events if e.type is EventType.NEW_DATA]
    assert firsts == [0, 5] and events[-1].type is EventType.END_SCAN
    assert any("3-1" in r.message and match in r.message for r in caplog.records)
    with pytest.raises(databus.CorruptEntry, match=f"ch:det entry 3-1: .*{match}") as info:
        ch.get(3)
    assert info.value.entry_id == "3-1" and len(ch) == 7


def read_in_thread(ch, index):
    """``ch.get(index)``'s error, from a thread; fails instead of hanging if it blocks."""
    caught = []

    def read():
        try:
            ch.get(index)
        except Exception as exc:
            caught.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the reader blocked"
    return caught[0]


def publish_refs(bus, *refs, shape=(8, 8)):
    scan = bus.session("files").create_scan()
    det = scan.channel("det", "uint16", shape, kind="ref")
    for ref in refs:
        det.send(ref)
    scan.end()
    return bus.scan(scan.key).channels["det"]


def test_a_fifo_named_by_a_reference_is_refused_without_blocking(bus, tmp_path):
    pytest.importorskip("h5py")
    fifo = tmp_path / "det.h5"
    os.mkfifo(fifo)
    ch = publish_refs(
        bus, FileRef(str(fifo), "entry/data", 0, 2), FileRef(str(tmp_path), "d", 0, 1)
    )
    error = read_in_thread(ch, 0)
    assert isinstance(error, databus.DataExpired)
    assert "det.h5:entry/data, which cannot be read (it is not a regular file)" in str(error)
    assert (error.file, error.dataset, error.first, error.last) == (str(fifo), "entry/data", 0, 0)
    with pytest.raises(databus.DataExpired, match="not a regular file"):
        ch.get(2)  # a directory


def test_a_dataset_that_does_not_fit_the_reference_is_refused(bus, tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "det.h5"
    with h5py.File(path, "w") as f:
        f["entry/data"] = np.zeros((3, 8, 8), dtype=np.uint16)
        f["entry/flat"] = np.zeros((9, 64), dtype=np.uint16)
    ch = publish_refs(
        bus,
        FileRef(str(path), "entry/data", 0, 3),
        FileRef(str(path), "entry/data", 3, 5),
        FileRef(str(path), "entry/flat", 0, 2),
        FileRef(str(path), "entry", 0, 1),
        FileRef(str(path), "nothing", 0, 1),
    )
    assert ch.get(2).shape == (8, 8)
    with pytest.raises(
        databus.DataExpired,
        match=r"frames 3..4 are in .*det.h5:entry/data, which cannot be read \(its shape is "
        r"\(3, 8, 8\), frames of shape \(8, 8\) up to frame 4 are needed\)",
    ):
        ch.get(3, 4)
    with pytest.raises(databus.DataExpired, match=r"its shape is \(9, 64\)"):
        ch.get(5)
    for index in (7, 8):
        with pytest.raises(databus.DataExpired, match=r"\(no dataset there\)"):
            ch.get(index)


def test_scan_info_over_the_limit_is_refused_and_nothing_is_written(bus):
    session = bus.session("info")
    big = {"title": "t", "blob": "x" * 2 * MIB}
    with pytest.raises(
        databus.MetadataError,
        match=r"scan info is 2097\d{3} bytes packed, over the limit of 1048576 bytes "
        r"\(Settings.max_info_bytes, environment variable DATABUS_MAX_INFO_BYTES\)",
    ):
        session.create_scan(big)
    assert session.scans() == []
    scan = session.create_scan(title="t")
    with pytest.raises(databus.MetadataError, match="max_info_bytes"):
        scan.update_info(blob="x" * 2 * MIB)
    scan.update_info(npoints=3)
    scan.end()
    info = bus.scan(scan.key).info
    assert info == {
        "title": "t",
        "npoints": 3,
        "scan_nb": 1,
        "session_name": "info",
        "node_name": scan.key,
    }


def test_a_json_record_over_the_limit_is_refused_and_the_scan_goes_on(make_bus):
    bus = make_bus(max_record_bytes=MIB)
    scan = bus.session("records").create_scan()
    log = scan.channel("log", kind="json")
    log.send({"a": 1})
    with pytest.raises(
        databus.MetadataError,
        match=r"a record of channel 'log' is 2097\d{3} bytes packed, over the limit of "
        r"1048576 bytes \(Settings.max_record_bytes, environment variable "
        r"DATABUS_MAX_RECORD_BYTES\)",
    ):
        log.send({"blob": "x" * 2 * MIB})
    log.send({"b": 2})
    scan.end()
    assert read_channel(bus, scan.key, "log") == ([{"a": 1}, {"b": 2}], 2)
    assert scan.end_reason is databus.EndReason.FINISHED


def test_the_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DATABUS_MAX_INFO_BYTES", "4096")
    monkeypatch.setenv("DATABUS_MAX_RECORD_BYTES", "100")
    settings = databus.Settings.from_env()
    assert (settings.max_info_bytes, settings.max_record_bytes) == (4096, 100)
    assert databus.Settings().max_info_bytes == databus.Settings().max_record_bytes == MIB


def test_the_simulated_detector_references_its_file_by_absolute_path(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    from databus.sim import SimDetector

    monkeypatch.chdir(tmp_path)
    det = SimDetector(shape=(4, 4), mode="file", directory="frames")
    det.open_file("frames/det.h5", None)
    ref = det.store(np.zeros((4, 4), np.uint16))
    det.close_file()
    assert ref.file == str(tmp_path / "frames" / "det.h5") and ref.problem() is None
