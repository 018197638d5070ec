"""The capture file format without a server: records written and read back, and every way
a file can be refused (not a capture, another version, cut short, corrupt) naming where."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np
import pytest

from databus import FileRef
from databus.clients.capture import (
    VERSION,
    CaptureError,
    ChannelDeclared,
    Header,
    PointsLost,
    PointsSent,
    ScanCut,
    ScanEnded,
    ScanStarted,
    StateChanged,
    read_capture,
)
from databus.clients.capture._files import CaptureWriter
from databus.clients.capture._format import encode, split_block
from databus.clients.capture._msgpack import end_of

KEY = "t:scan:{s:1}"


def _records() -> list:
    """One of every record of a scan, data of each kind."""
    rng = np.random.default_rng(1)
    refs = [
        FileRef("/data/det.h5", "entry/data", 0, 2),
        FileRef("/data/det.h5", "entry/data", 2, 3),
    ]
    return [
        ScanStarted(KEY, 0.0, "s", 1, {"title": "t", "shape": np.arange(3)}, 1.5e9, 0.25, True),
        ChannelDeclared(KEY, 0.01, {"name": "x", "kind": "array", "dtype": "<f8", "shape": []}),
        ChannelDeclared(
            KEY, 0.01, {"name": "img", "kind": "array", "dtype": "<u2", "shape": [4, 5]}
        ),
        ChannelDeclared(KEY, 0.01, {"name": "log", "kind": "json", "dtype": None, "shape": []}),
        ChannelDeclared(KEY, 0.01, {"name": "det", "kind": "ref", "dtype": "<i4", "shape": [2, 2]}),
        StateChanged(KEY, 0.02, "prepared"),
        StateChanged(KEY, 0.02, "started"),
        PointsSent(KEY, 0.1, "x", 0, 3, np.array([1.0, np.nan, -0.0])),
        PointsLost(KEY, 0.2, "x", 3, 2, "dropped"),
        PointsSent(KEY, 0.3, "x", 5, 1, np.array([7.0])),
        PointsSent(KEY, 0.3, "img", 0, 2, rng.integers(0, 65535, (2, 4, 5), dtype=np.uint16)),
        PointsSent(KEY, 0.4, "log", 0, 2, [{"a": 1, "b": [1, 2]}, {"arr": np.ones(2)}]),
        PointsSent(KEY, 0.5, "det", 0, 3, refs, np.arange(12, dtype=np.int32).reshape(3, 2, 2)),
        ScanEnded(KEY, 0.6, "failed", "RuntimeError: boom", {"title": "t", "end": 1}),
    ]


def _write(path: Path, records: list, close: bool = True) -> None:
    writer = CaptureWriter(path, {"session": "s"}, "test")
    for record in records:
        writer.write(record)
    if close:
        writer.close()
    else:
        writer.flush()


def _same(a: object, b: object) -> bool:
    """Equal records, arrays compared bit for bit."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if hasattr(a, "__dataclass_fields__") and type(a) is type(b):
        return all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


def test_every_record_reads_back_as_written(tmp_path):
    path = tmp_path / "a.dbcap"
    records = _records()
    _write(path, records)
    with read_capture(path) as reader:
        assert reader.header.version == VERSION
        assert reader.header.source == {"session": "s"}
        got = list(reader)
        assert reader.complete and reader.incomplete_bytes == 0
    assert len(got) == len(records)
    for a, b in zip(got, records, strict=True):
        assert _same(a, b), (a, b)


def test_any_msgpack_library_reads_the_records(tmp_path):
    """A plain msgpack Unpacker, knowing nothing of databus, reads every record as a map."""
    path = tmp_path / "a.dbcap"
    _write(path, _records())
    with open(path, "rb") as f:
        maps = list(msgpack.Unpacker(f, raw=False, strict_map_key=False))
    assert [m["kind"] for m in maps][:2] == ["header", "scan"]
    assert maps[0]["format"] == "databus-capture" and maps[0]["version"] == VERSION
    assert maps[-1]["kind"] == "close" and maps[-1]["records"] == len(maps) - 1
    assert all(list(m)[-1] == "crc" for m in maps)
    img = next(m for m in maps if m.get("channel") == "img")
    frames = np.frombuffer(img["data"], img["dtype"]).reshape(img["shape"])
    assert frames.shape == (2, 4, 5)


def test_a_block_larger_than_a_record_is_split_on_points():
    block = np.zeros((10, 1024, 1024), dtype=np.uint8)
    parts = list(split_block(block, 100))
    assert [first for first, _ in parts] == list(range(100, 110, 10))
    small = np.zeros((3, 1 << 27), dtype=np.uint8)  # 128 MiB points: one per record
    assert [len(p) for _, p in split_block(small, 0)] == [1, 1, 1]


def test_a_newer_version_is_refused_by_name(tmp_path):
    path = tmp_path / "new.dbcap"
    path.write_bytes(b"".join(bytes(p) for p in encode(Header(7, 0.0, "9.9", {}))))
    with pytest.raises(
        CaptureError, match=r"capture format version 7 is newer than this databus reads \(1\)"
    ):
        read_capture(path)


def test_an_older_version_is_refused_by_name(tmp_path):
    """Version 1 is the first: there is nothing older to read."""
    path = tmp_path / "old.dbcap"
    path.write_bytes(b"".join(bytes(p) for p in encode(Header(0, 0.0, "0.0", {}))))
    with pytest.raises(CaptureError, match=r"version 0 is older than any this databus reads"):
        read_capture(path)


@pytest.mark.parametrize(
    "content", [b"", b"\x00" * 100, msgpack.packb({"kind": "header"}), b"CBOR"]
)
def test_a_file_that_is_no_capture_is_refused(tmp_path, content):
    path = tmp_path / "x.dbcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match="not a databus capture") as info:
        read_capture(path)
    assert info.value.offset == 0


def test_a_truncated_capture_names_the_offset_of_its_cut_record(tmp_path):
    path = tmp_path / "a.dbcap"
    records = _records()
    _write(path, records)
    data = path.read_bytes()
    offsets = _offsets(data)
    cut = offsets[-3] + 7  # inside the last record before the closing one: the scan's end
    path.write_bytes(data[:cut])
    with pytest.raises(
        CaptureError, match=f"byte {offsets[-3]}: the record that starts here is cut short"
    ) as info:
        read_capture(path)
    assert info.value.offset == offsets[-3]
    with read_capture(path, partial_ok=True) as reader:
        got = list(reader)
        assert reader.incomplete_bytes == 7 and not reader.complete
    assert len(got) == len(records) - 1  # all before the cut one
    assert _same(got[-1], records[-2])


def test_a_capture_killed_between_records_is_refused_unless_partial_ok(tmp_path):
    path = tmp_path / "a.dbcap"
    records = _records()
    _write(path, records, close=False)
    size = path.stat().st_size
    with pytest.raises(
        CaptureError,
        match=f"byte {size}: the file ends after a complete record but without its closing record",
    ):
        read_capture(path)
    with read_capture(path, partial_ok=True) as reader:
        assert len(list(reader)) == len(records)
        assert not reader.complete and reader.incomplete_bytes == 0


@pytest.mark.parametrize("where", ["payload", "metadata", "crc"])
def test_a_flipped_byte_names_the_corrupt_record(tmp_path, where):
    path = tmp_path / "a.dbcap"
    _write(path, _records())
    data = bytearray(path.read_bytes())
    offsets = _offsets(bytes(data))
    img = next(
        i
        for i, at in enumerate(offsets)
        if b"img" in data[at : at + 60] and b"data" in data[at : at + 60]
    )
    start, end = offsets[img], offsets[img + 1]
    at = {
        "payload": end - 30,
        "metadata": start + data[start:end].index(b"first") + 6,
        "crc": end - 1,
    }[where]
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    with (
        read_capture(path) as reader,
        pytest.raises(
            CaptureError,
            match=rf"byte {start}: the record \(bytes {start}\.\.\d+\) fails its checksum",
        ) as info,
    ):
        list(reader)
    assert info.value.offset == start


def test_bytes_that_are_no_msgpack_name_their_offset(tmp_path):
    path = tmp_path / "a.dbcap"
    _write(path, _records())
    data = bytearray(path.read_bytes())
    offsets = _offsets(bytes(data))
    data[offsets[3]] = 0xC1  # never used by msgpack
    path.write_bytes(bytes(data))
    message = f"byte {offsets[3]}: expected a record, found byte 0xc1"
    with read_capture(path) as reader, pytest.raises(CaptureError, match=message):
        list(reader)  # (the closing record is in place: the file opens)


def test_a_record_removed_is_found_by_the_count(tmp_path):
    path = tmp_path / "a.dbcap"
    _write(path, _records())
    data = path.read_bytes()
    offsets = _offsets(data)
    path.write_bytes(data[: offsets[9]] + data[offsets[10] :])  # a whole data record
    with (
        read_capture(path) as reader,
        pytest.raises(CaptureError, match="counts 15 records before it, the file holds 14"),
    ):
        list(reader)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([StateChanged(KEY, 0.0, "started")], "before its 'scan' record"),
        ([_records()[0], PointsLost(KEY, 0.0, "x", 0, 1, "dropped")], "never declared"),
        (
            [
                *_records()[:2],
                PointsSent(KEY, 0, "x", 0, 2, np.zeros(2)),
                PointsLost(KEY, 0, "x", 1, 1, "d"),
            ],
            "points up to 1 came before",
        ),
        ([*_records()[:2], ScanCut(KEY, 1.0), ScanCut(KEY, 1.0)], "after its end"),
    ],
)
def test_records_out_of_order_are_refused(tmp_path, records, message):
    path = tmp_path / "a.dbcap"
    _write(path, records)
    offsets = _offsets(path.read_bytes())
    with read_capture(path) as reader, pytest.raises(CaptureError, match=message) as info:
        list(reader)
    assert info.value.offset == offsets[len(records)]  # the last record written


def _offsets(data: bytes) -> list[int]:
    """The offset of every record of a capture's bytes, then the end of the file."""
    view = memoryview(data)
    offsets = [0]
    while offsets[-1] < len(data):
        offsets.append(end_of(view, offsets[-1]))
    return offsets
