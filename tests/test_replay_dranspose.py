"""dranspose ``.cbors`` captures, written by dranspose's own ``Dumper``, replayed as scans of
the bus (``databus.clients.capture.dranspose``)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import cbor2
import numpy as np
import pytest
from analysis_clients.dumps import dump_frames, stins_series, write_dump
from dranspose.event import StreamData
from dranspose.middlewares.stream1 import parse as dranspose_parse

import databus
from databus.clients.analysis.stream1 import parse as bus_parse
from databus.clients.capture._pace import Pace
from databus.clients.capture.dranspose import (
    CborsError,
    is_cbors,
    read_dump,
    replay_cbors,
)


def _frames(n, shape=(10, 10), dtype="uint16", seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1000, (n, *shape)).astype(dtype)


def _scans(bus, numbers, session="replayed"):
    nodes = []
    for number in numbers:
        _, found = bus.find_scans(session=session, number=number)
        nodes.append(bus.scan(found[-1]))
    return nodes


def test_a_dump_dranspose_wrote_replays_one_scan_per_series_with_its_frames(bus, tmp_path):
    """Two series appended to one dump (a dump_path kept across scans), the first of two
    streams: each series is a scan, each stream a channel of its dtype and shape holding
    the frames dranspose's own stream1 parser reads from the same messages."""
    path = tmp_path / "two.cbors"
    xrd, pilatus, later = _frames(7), _frames(5, (4, 6), "float32", 2), _frames(3, seed=3)
    xrd_parts = stins_series(xrd, "raw/scan_1.h5", overwritable=False)
    first = list(zip(xrd_parts, stins_series(pilatus), strict=False))
    first += [(part, None) for part in xrd_parts[len(first) :]]
    events = [{"xrd": a} if b is None else {"xrd": a, "pilatus": b} for a, b in first]
    write_dump(path, events)
    write_dump(path, [{"xrd": part} for part in stins_series(later, "raw/scan_2.h5")])
    assert is_cbors(path)

    numbers = replay_cbors(bus, path, "replayed")

    assert numbers == [1, 2]
    one, two = _scans(bus, numbers)
    assert one.end_reason == two.end_reason == databus.EndReason.FINISHED
    header = {"msg_number": 0, "filename": "raw/scan_1.h5", "overwritable": False}
    assert one.info["stins"]["xrd"] == header
    assert one.info["replay"]["file"] == str(path.resolve())
    assert two.info["stins"] == {"xrd": {"msg_number": 0, "filename": "raw/scan_2.h5"}}
    assert set(one.channels) == {"xrd", "pilatus"} and set(two.channels) == {"xrd"}
    for node, name, frames in ((one, "xrd", xrd), (one, "pilatus", pilatus), (two, "xrd", later)):
        channel = node.channels[name]
        assert (channel.dtype, channel.shape) == (frames.dtype, frames.shape[1:])
        np.testing.assert_array_equal(channel.get_as_array(0, -1), frames)
    # A worker's parse_stins sees on the bus what dranspose's parser sees in the capture.
    images = [p for p in stins_series(xrd) if b'"image"' in p.frames[0]]
    for i, message in enumerate(images):
        theirs, ours = dranspose_parse(message), bus_parse(one.channels["xrd"].get(i))
        np.testing.assert_array_equal(ours.data, theirs.data)
        assert (ours.shape, ours.type) == (theirs.shape, theirs.type)


def test_a_gzipped_dump_replays_the_same_whatever_its_name(bus, tmp_path):
    plain = tmp_path / "plain.cbors"
    frames = _frames(4)
    dump_frames(plain, "xrd", frames)
    packed = tmp_path / "capture.bin"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert is_cbors(packed)
    (node,) = _scans(bus, replay_cbors(bus, packed, "replayed"))
    np.testing.assert_array_equal(node.channels["xrd"].get_as_array(0, -1), frames)


def test_databus_replay_takes_a_dump_by_its_content(bus, tmp_path):
    path = tmp_path / "dump_xrd.bin"
    frames = _frames(3)
    dump_frames(path, "xrd", frames)
    env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}

    def replay(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "databus", "replay", str(path), "--session", "cli"]
        return subprocess.run([*command, *args], env=env, capture_output=True, text=True)

    done = replay("--speed", "max")
    assert done.returncode == 0, done.stderr
    assert "1 series of the dranspose dump" in done.stdout
    (node,) = bus.session("cli").scans()
    np.testing.assert_array_equal(node.channels["xrd"].get_as_array(0, -1), frames)
    refused = replay("--scan", "1")
    assert refused.returncode == 2 and "not dranspose dumps" in refused.stderr
    refused = replay("--speed", "fast")
    assert refused.returncode == 2 and "--speed is 'max' or a factor" in refused.stderr


def test_only_a_dranspose_dump_is_taken_for_one(tmp_path):
    raw_zmq = tmp_path / "raw.cbors"  # a capture of 0MQ messages, not of an ingester
    raw_zmq.write_bytes(cbor2.dumps([b'{"htype": "header", "filename": ""}']))
    msgpack_file = tmp_path / "ours.cbors"
    msgpack_file.write_bytes(b"\x82\xa1a\x01\xa1b\x02")
    assert not is_cbors(raw_zmq) and not is_cbors(msgpack_file)
    with pytest.raises(CborsError, match="not a dranspose dump"):
        replay_cbors(None, raw_zmq, "replayed")


def _offsets(path):
    return [message.offset for message in read_dump(path)]


def test_a_truncated_dump_names_the_byte_offset_and_the_scan_in_progress_fails(bus, tmp_path):
    path = tmp_path / "cut.cbors"
    dump_frames(path, "xrd", _frames(6))
    offsets = _offsets(path)
    whole = path.read_bytes()
    cut = offsets[4] + 30  # inside the record of the 4th image
    path.write_bytes(whole[:cut])
    with pytest.raises(CborsError, match=f"truncated: the record at byte {offsets[4]} goes past"):
        replay_cbors(bus, path, "replayed")
    _, found = bus.find_scans(session="replayed")
    node = bus.scan(found[-1])
    assert node.end_reason == databus.EndReason.FAILED
    assert f"byte {offsets[4]}" in node.error
    assert len(node.channels["xrd"]) == 3  # the images before the cut are there

    packed = tmp_path / "cut.cbors.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(CborsError, match=f"{offsets[4]} goes past the end of the decompressed"):
        list(read_dump(packed))
    compressed = gzip.compress(whole)
    packed.write_bytes(compressed[: len(compressed) - 40])  # the gzip file itself is cut
    with pytest.raises(CborsError, match=r"the gzip data breaks off or is corrupt in the record"):
        list(read_dump(packed))


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda raw, at: raw[:at] + b"\x1c" + raw[at + 1 :], "corrupt record at byte {at}"),
        (
            lambda raw, at: raw[:at] + cbor2.dumps({"event": 1}) + raw[at:],
            "the record at byte {at} is dict, not a dranspose ingester message",
        ),
        (
            lambda raw, at: raw[:at] + cbor2.dumps(cbor2.CBORTag(42877, [1, {"x": 2}])) + raw[at:],
            "record at byte {at}: stream 'x' is not a dranspose StreamData",
        ),
    ],
)
def test_a_corrupt_record_names_its_byte_offset(tmp_path, damage, error):
    path = tmp_path / "bad.cbors"
    dump_frames(path, "xrd", _frames(3))
    at = _offsets(path)[2]
    path.write_bytes(damage(path.read_bytes(), at))
    with pytest.raises(CborsError, match=error.format(at=at)):
        list(read_dump(path))


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (StreamData(typ="PCAP", frames=[b"{}"]), "of type 'PCAP': only STINS"),
        (
            StreamData(typ="STINS", frames=[b'{"htype": "dheader-1.0"}']),
            "htype 'dheader-1.0' is not one of",
        ),
        (
            StreamData(
                typ="STINS",
                frames=[
                    b'{"htype": "image", "frame": 0, "shape": [2, 2], "type": "uint16",'
                    b' "compression": "bslz4", "msg_number": 1}',
                    b"\x00" * 8,
                ],
            ),
            "compression 'bslz4' is not replayed",
        ),
        (
            StreamData(
                typ="STINS",
                frames=[b'{"htype": "image", "shape": [2, 2], "type": "uint16"}', b"\x00" * 6],
            ),
            r"the data is 6 bytes; shape \[2, 2\] of uint16 is 8",
        ),
    ],
)
def test_a_message_it_does_not_read_is_refused_by_name(bus, tmp_path, stream, error):
    path = tmp_path / "odd.cbors"
    write_dump(path, [{"det": stream}])
    where = r"stream 'det' of event 0 \(record at byte 0\)"
    with pytest.raises(CborsError, match=f"{where}.*{error}"):
        replay_cbors(bus, path, "replayed")


def test_a_series_the_capture_cuts_short_ends_aborted_naming_the_stream(bus, tmp_path):
    path = tmp_path / "killed.cbors"
    frames = _frames(4)
    write_dump(path, [{"xrd": part} for part in stins_series(frames)[:-1]])  # no series_end
    (node,) = _scans(bus, replay_cbors(bus, path, "replayed"))
    assert node.end_reason == databus.EndReason.ABORTED
    assert "series_end of stream(s) ['xrd']" in node.error
    np.testing.assert_array_equal(node.channels["xrd"].get_as_array(0, -1), frames)


def test_the_pace_follows_the_capture_times_divided_by_the_speed():
    now = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(round(seconds, 6))
        now[0] += seconds

    pace = Pace(10, clock=lambda: now[0], sleep=sleep)
    for captured in (5.0, 5.0, 7.0, 8.0):
        pace.wait(captured)
    now[0] += 1.0  # publishing took a second: the next message is already due
    pace.wait(12.0)
    assert slept == [0.2, 0.1]
    Pace(None, sleep=sleep).wait(1e9)  # max: never waits
    assert len(slept) == 2
    for bad in (0, -1, float("inf"), True):
        with pytest.raises(ValueError, match="speed is a factor > 0"):
            Pace(bad)
