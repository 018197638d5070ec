"""dranspose's ``.cbors`` captures replayed through the bus, so that the captures MAX IV
keeps feed databus workers, reducers and writers (``replay_cbors``, and ``databus replay
FILE.cbors``, which dispatches here when ``is_cbors(FILE)``).

The format, as dranspose's ingesters write it (``dump_path``, or the ``dump_prefix``
parameter): a CBOR sequence (RFC 8742) of one record per event and ingester, each tag
55799 (self-described CBOR) around tag 42877, an InternalWorkerMessage:
``[event_number, {stream: tag 42878 [typ, [frame bytes, ...]]}, created_at]``, where
tag 42878 is a StreamData (its 0MQ frames as byte strings) and ``created_at`` a CBOR
date-time (captures made before dranspose recorded it have two fields). A file may be
gzip-compressed, and may hold several series one after the other (a dump path kept
across scans appends to the same file).

Streams of type ``STINS`` (stream1) are read: a ``header`` message opens a stream's
series, an ``image`` message is ``[json, raw buffer]`` (``shape``, ``type`` a numpy dtype,
``compression`` ``none``), and ``series_end`` closes it. Each series is one scan of the
bus: one array channel per stream, named after the stream, of the stream's dtype and
frame shape (point i is the stream's i-th image); the headers' fields in the scan info
(``stins``: stream -> fields); the scan ends ``finished`` once every stream of it has
sent its ``series_end``, ``aborted`` (naming the stream) when the capture ends first or
the stream's next header comes. Other stream types and messages are refused by name.
"""

from __future__ import annotations

import datetime
import gzip
import io
import json
import logging
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any, TypeGuard, cast

import cbor2
import numpy as np

import databus

from ._pace import Pace

__all__ = ["CborsError", "DumpMessage", "is_cbors", "read_dump", "replay_cbors"]

log = logging.getLogger(__name__)

#: dranspose's CBOR tags: an InternalWorkerMessage (one ingester's part of an event) and a
#: StreamData (one stream's 0MQ frames); 55799 marks a self-described CBOR item.
MESSAGE_TAG = 42877
STREAM_TAG = 42878
SELF_DESCRIBED_TAG = 55799
#: The stream type whose messages this module reads (dranspose's stream1 middleware).
STINS = "STINS"
#: How a dump record starts: tag 55799 then tag 42877, or tag 42877 alone.
_RECORD_STARTS = (b"\xd9\xd9\xf7\xd9\xa7\x7d", b"\xd9\xa7\x7d")
_GZIP_MAGIC = b"\x1f\x8b"
#: What reading a gzip file raises when its compressed data is cut or damaged.
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
#: cbor2 >= 6 reads ahead of a record and seeks back after it (in a gzip file, a seek back
#: decompresses again from the start) unless its read size is 1; older ones never read ahead.
_NO_READ_AHEAD: dict[str, Any] = (
    {"read_size": 1} if int(metadata.version("cbor2").split(".")[0]) >= 6 else {}
)


class CborsError(ValueError):
    """A ``.cbors`` file that cannot be replayed: truncated, corrupt, or holding a message
    this module does not read. The message names the file, the byte offset (in the
    decompressed data for a gzip file) and what is wrong."""


@dataclass(frozen=True)
class DumpMessage:
    """One record of a dump: what one ingester forwarded for event ``event_number``,
    ``streams`` mapping each stream's name to (type, 0MQ frames); ``created_at`` in
    seconds since the epoch (None in captures that predate it); ``offset`` where the
    record starts in the file."""

    offset: int
    event_number: int
    streams: dict[str, tuple[str, list[bytes]]]
    created_at: float | None


def _open(path: Path) -> tuple[gzip.GzipFile | io.BufferedReader, bool]:
    """``path`` opened for reading (a buffered reader, decompressing if it is gzip), and
    whether it is gzip."""
    with open(path, "rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    if compressed:
        return gzip.open(path, "rb"), True
    return open(path, "rb"), False


def is_cbors(path: str | Path) -> bool:
    """True if ``path`` holds a dranspose dump (read from its first bytes, after gzip
    decompression, whatever its name); OSError if it cannot be read."""
    fp, _ = _open(Path(path))
    with fp:
        head = fp.read(len(_RECORD_STARTS[0]))
    return head.startswith(_RECORD_STARTS)


def read_dump(path: str | Path) -> Iterator[DumpMessage]:
    """The records of the dump at ``path``, one at a time (constant memory); CborsError
    naming the byte offset of a record that is truncated or is no dranspose message."""
    path = Path(path)
    fp, compressed = _open(path)
    where = "decompressed data" if compressed else "file"
    with fp:
        while True:
            offset = fp.tell()
            try:
                if not fp.peek(1):
                    return
                record = cbor2.load(cast(IO[bytes], fp), **_NO_READ_AHEAD)
            except cbor2.CBORDecodeEOF as exc:
                raise CborsError(
                    f"{path}: truncated: the record at byte {offset} goes past the end of "
                    f"the {where} ({fp.tell()} bytes); the records before it are whole"
                ) from exc
            except cbor2.CBORDecodeError as exc:
                if isinstance(exc.__cause__, _GZIP_ERRORS):  # cbor2 wraps what a read raised
                    raise _broken_gzip(path, offset, exc.__cause__) from exc
                raise CborsError(f"{path}: corrupt record at byte {offset}: {exc}") from exc
            except _GZIP_ERRORS as exc:
                raise _broken_gzip(path, offset, exc) from exc
            yield _message(record, offset, path)


def _broken_gzip(path: Path, offset: int, exc: BaseException) -> CborsError:
    return CborsError(
        f"{path}: the gzip data breaks off or is corrupt in the record at byte {offset} of "
        f"the decompressed data ({type(exc).__name__}: {exc})"
    )


def _message(record: Any, offset: int, path: Path) -> DumpMessage:
    """A decoded record as a ``DumpMessage``; CborsError saying what it is instead."""
    if isinstance(record, cbor2.CBORTag) and record.tag == SELF_DESCRIBED_TAG:
        record = record.value
    where = f"{path}: the record at byte {offset}"
    if not isinstance(record, cbor2.CBORTag) or record.tag != MESSAGE_TAG:
        what = f"tag {record.tag}" if isinstance(record, cbor2.CBORTag) else type(record).__name__
        raise CborsError(
            f"{where} is {what}, not a dranspose ingester message (tag {MESSAGE_TAG}): "
            f"is this a dump an ingester wrote (dump_path, dump_prefix)?"
        )
    fields = record.value
    if not _sequence(fields) or len(fields) not in (2, 3):
        raise CborsError(f"{where}: a message is [event_number, streams(, created_at)]")
    number, streams = fields[0], fields[1]
    if isinstance(number, bool) or not isinstance(number, int) or not isinstance(streams, Mapping):
        raise CborsError(f"{where}: a message is [event_number, streams(, created_at)]")
    created = fields[2] if len(fields) == 3 else None
    if created is not None and not isinstance(created, datetime.datetime):
        raise CborsError(f"{where}: created_at is a date-time, not {type(created).__name__}")
    parts: dict[str, tuple[str, list[bytes]]] = {}
    for name, stream in streams.items():
        value = stream.value if isinstance(stream, cbor2.CBORTag) else None
        if (
            not isinstance(name, str)
            or not isinstance(stream, cbor2.CBORTag)
            or stream.tag != STREAM_TAG
            or not _sequence(value)
            or len(value) != 2
            or not isinstance(value[0], str)
            or not _sequence(value[1])
            or not all(isinstance(f, bytes) for f in value[1])
        ):
            raise CborsError(
                f"{where}: stream {name!r} is not a dranspose StreamData "
                f"(tag {STREAM_TAG} [type, [frame bytes...]])"
            )
        parts[name] = (value[0], list(value[1]))
    return DumpMessage(offset, number, parts, None if created is None else created.timestamp())


def _sequence(value: Any) -> TypeGuard[Sequence[Any]]:
    """A CBOR array (a list, or a tuple as cbor2 >= 6 decodes them)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _stins(frames: list[bytes], where: str) -> dict[str, Any]:
    """The JSON header of a STINS message (its first frame)."""
    try:
        packet = json.loads(frames[0]) if frames else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CborsError(f"{where}: its first frame is no STINS JSON header ({exc})") from exc
    if not isinstance(packet, dict):
        raise CborsError(f"{where}: its first frame is no STINS JSON header (an object)")
    return packet


def _image(packet: dict[str, Any], frames: list[bytes], where: str) -> np.ndarray:
    """The frame of a STINS ``image`` message; CborsError naming what does not fit."""
    compression = packet.get("compression", "none")
    if compression != "none":
        raise CborsError(
            f"{where}: compression {compression!r} is not replayed; only raw frames "
            f"(compression 'none') are, as dranspose's stream1 parser decodes them"
        )
    shape = packet.get("shape")
    if not _sequence(shape) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise CborsError(f"{where}: 'shape' is a list of sizes, not {shape!r}")
    try:
        dtype = np.dtype(packet.get("type"))
    except TypeError as exc:
        raise CborsError(f"{where}: 'type' {packet.get('type')!r} is no numpy dtype") from exc
    if len(frames) != 2:
        raise CborsError(f"{where}: an image is 2 frames (header, data), not {len(frames)}")
    expected = math.prod(shape) * dtype.itemsize
    if len(frames[1]) != expected:
        raise CborsError(
            f"{where}: the data is {len(frames[1])} bytes; shape {list(shape)} of {dtype} "
            f"is {expected}"
        )
    return np.frombuffer(frames[1], dtype).reshape(shape)


class _Series:
    """Turns the messages of a dump into scans of ``session``, one per series."""

    def __init__(self, session: databus.Session, path: Path) -> None:
        self.session, self.path = session, path
        self.scan: databus.Scan | None = None
        self.channels: dict[str, databus.ChannelWriter] = {}
        self.opened: set[str] = set()  #: streams with messages in the current scan
        self.ended: set[str] = set()  #: streams whose series_end came
        self.headers: dict[str, dict[str, Any]] = {}
        self.numbers: list[int] = []

    def take(self, message: DumpMessage) -> None:
        for name, (typ, frames) in message.streams.items():
            where = (
                f"{self.path}: stream {name!r} of event {message.event_number} "
                f"(record at byte {message.offset})"
            )
            if typ != STINS:
                raise CborsError(
                    f"{where} is of type {typ!r}: only {STINS} (stream1) streams are "
                    f"replayed (header, image and series_end messages)"
                )
            packet = _stins(frames, where)
            htype = packet.get("htype")
            if htype == "header":
                self._header(name, packet, where)
            elif htype == "image":
                self._image(name, _image(packet, frames, where), where)
            elif htype == "series_end":
                self._stream_end(name, where)
            else:
                raise CborsError(
                    f"{where}: STINS message htype {htype!r} is not one of 'header', "
                    f"'image', 'series_end'"
                )

    def _begin(self) -> databus.Scan:
        if self.scan is None:
            number = len(self.numbers) + 1
            self.scan = self.session.create_scan(
                {
                    "title": f"{self.path.name} series {number}",
                    "replay": {"file": str(self.path.resolve()), "format": "dranspose .cbors"},
                    "stins": {},
                }
            )
            self.numbers.append(self.scan.number)
            self.scan.prepare()
            self.scan.start()
        return self.scan

    def _header(self, name: str, packet: dict[str, Any], where: str) -> None:
        if name in self.opened:
            self.end(f"stream {name!r} has no series_end before its next header ({where})")
        scan = self._begin()
        self.opened.add(name)
        self.headers[name] = {k: v for k, v in packet.items() if k != "htype"}
        scan.update_info(stins=self.headers)

    def _image(self, name: str, frame: np.ndarray, where: str) -> None:
        if name in self.ended:
            raise CborsError(f"{where}: an image after the stream's series_end, before a header")
        scan = self._begin()
        self.opened.add(name)
        channel = self.channels.get(name)
        if channel is None:
            try:
                channel = scan.channel(name, frame.dtype, frame.shape)
            except databus.InvalidName as exc:
                raise CborsError(f"{where}: {exc}") from exc
            self.channels[name] = channel
        elif channel.desc.dtype != frame.dtype or channel.desc.shape != frame.shape:
            raise CborsError(
                f"{where}: a frame of {frame.dtype}{list(frame.shape)} in a series of "
                f"{channel.desc.dtype}{list(channel.desc.shape)} frames"
            )
        channel.send(frame)

    def _stream_end(self, name: str, where: str) -> None:
        if self.scan is None:
            log.warning("%s: a series_end with no series before it; skipped", where)
            return
        self.opened.add(name)
        self.ended.add(name)
        if self.opened <= self.ended:
            self.end()

    def end(self, cut_short: str | None = None) -> None:
        """End the current scan: ``finished`` if every stream ended, else ``aborted`` with
        ``cut_short`` (or the streams that had not ended) as its error."""
        if self.scan is None:
            return
        missing = sorted(self.opened - self.ended)
        if missing and cut_short is None:
            cut_short = f"the capture ends before the series_end of stream(s) {missing}"
        self.scan.end("aborted" if missing else "finished", error=cut_short if missing else None)
        self.scan = None
        self.channels.clear()
        self.opened.clear()
        self.ended.clear()
        self.headers.clear()

    def fail(self, exc: BaseException) -> None:
        """End the current scan after ``exc`` stopped the replay."""
        if self.scan is not None:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.scan.end(reason, error=f"{type(exc).__name__}: {exc}")
            self.scan = None


def replay_cbors(
    bus: databus.Bus, path: str | Path, session: str, *, speed: float | None = None
) -> list[int]:
    """Publish the series of the dranspose dump at ``path`` as new scans of ``session``
    (see the module docstring); the numbers of the scans made.

    speed: 1 publishes at the pace the messages were captured (their ``created_at``),
    10 ten times as fast, None as fast as possible (also for captures without times).
    Raises CborsError (naming the byte offset) for a truncated or corrupt file or a message
    this module does not read: the scans published before it stay, the one in progress
    ends ``failed`` with the error."""
    path = Path(path)
    pace = Pace(speed)
    if not is_cbors(path):
        raise CborsError(f"{path}: not a dranspose dump (no tag {MESSAGE_TAG} record at byte 0)")
    series = _Series(bus.session(session), path)
    try:
        for message in read_dump(path):
            pace.wait(message.created_at)
            series.take(message)
        series.end()
    except BaseException as exc:
        series.fail(exc)
        raise
    return series.numbers
