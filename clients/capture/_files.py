"""Capture files: ``CaptureWriter`` writes one as it goes, ``read_capture`` reads one back,
each record checked against its CRC and against the records before it.

A killed capture ends inside a record, or after a whole one but without its ``close``
record; ``read_capture`` refuses it at once unless ``partial_ok``, naming the byte offset
where its incomplete part starts. The reader maps the file (``mmap``): a record's array
is a read-only view of the mapping, so a replay sends frames from the page cache as they
are.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import crc32c
import numpy as np

from ._format import (
    CLOSE_BYTES,
    CRC_KEY,
    FORMAT,
    KINDS,
    TRAILER_BYTES,
    VERSION,
    CaptureError,
    ChannelDeclared,
    Header,
    Invalid,
    PointsLost,
    PointsSent,
    Record,
    ScanCut,
    ScanEnded,
    ScanStarted,
    close_record,
    encode,
    header,
    record,
)
from ._msgpack import Malformed, Short, end_of, read_map

#: Bytes of arrays a ``BackgroundWriter`` lets wait for its thread.
QUEUE_BYTES = 64 * 2**20


class CaptureWriter:
    """Writes a new capture file (``FileExistsError`` if ``path`` exists): the header at
    once, records with ``write``, the ``close`` record with ``close()``. ``flush()`` hands
    what was written to the system, so a capture killed afterwards keeps it."""

    def __init__(
        self, path: str | os.PathLike[str], source: dict[str, Any], databus_version: str
    ) -> None:
        self.path = str(path)
        self._file: BinaryIO = open(path, "xb", buffering=2**20)  # noqa: SIM115 (see close)
        #: monotonic time the capture began (``ScanStarted.at`` counts from it)
        self.origin = time.monotonic()
        self.records = 0
        self.bytes = 0
        self.write(Header(VERSION, time.time(), databus_version, source))
        self.flush()

    def write(self, record: Header | Record) -> None:
        """Append ``record`` (``MetadataError`` if a field cannot be packed: nothing is
        written then)."""
        for piece in encode(record):
            self._file.write(piece)
            self.bytes += len(piece) if isinstance(piece, bytes) else piece.nbytes
        self.records += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self, *, complete: bool = True) -> None:
        """Write the ``close`` record (unless not ``complete``: a capture that failed) and
        close the file."""
        if self._file.closed:
            return
        if complete:
            closing = close_record(time.monotonic() - self.origin, self.records)
            self._file.write(closing)
            self.bytes += len(closing)
        self._file.close()


def _payload_bytes(record: Record) -> int:
    """The bytes of arrays ``record`` holds (what it costs to keep it queued)."""
    if not isinstance(record, PointsSent):
        return 0
    frames = 0 if record.frames is None else record.frames.nbytes
    return frames + (record.data.nbytes if isinstance(record.data, np.ndarray) else 0)


class BackgroundWriter:
    """A ``CaptureWriter`` fed through a thread, so that reading the bus and writing the
    file overlap (``write()`` to a file releases the GIL). ``write`` queues a record and
    waits only while ``queue_bytes`` of arrays wait already (memory stays bounded); the
    thread writes them in order and flushes whenever it has caught up. An error of the
    thread (a full disk) is raised by the next ``write`` or by ``close``."""

    def __init__(self, writer: CaptureWriter, queue_bytes: int = QUEUE_BYTES) -> None:
        self.writer = writer
        self._limit = queue_bytes
        self._items: collections.deque[tuple[Record, int]] = collections.deque()
        self._queued = 0
        self._closing = False
        self._failed: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="databus-capture-writer")
        self._thread.start()

    def write(self, record: Record) -> None:
        size = _payload_bytes(record)
        with self._changed:
            while self._items and self._queued + size > self._limit and self._failed is None:
                self._changed.wait()
            if self._failed is not None:
                raise self._failed
            self._items.append((record, size))
            self._queued += size
            self._changed.notify_all()

    def close(self) -> None:
        """Write what is queued, then the ``close`` record; raises the thread's error
        (the file is then closed without its closing record)."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        self.writer.close(complete=self._failed is None)
        if self._failed is not None:
            raise self._failed

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._items and not self._closing:
                    self._changed.wait()
                if not self._items:
                    return
                record, size = self._items.popleft()
            try:
                self.writer.write(record)
                if not self._items:
                    self.writer.flush()
            except BaseException as exc:
                with self._changed:
                    self._failed = exc
                    self._items.clear()
                    self._changed.notify_all()
                return
            with self._changed:
                self._queued -= size
                self._changed.notify_all()


class CaptureReader:
    """A capture file opened for reading (``read_capture``): ``header``, then its records
    by iterating (``ScanStarted``, ``ChannelDeclared``, ``StateChanged``, ``PointsSent``,
    ``PointsLost``, ``ScanEnded``, ``ScanCut``). After the iteration, ``complete`` says
    whether the file ended with its ``close`` record, and ``incomplete_bytes`` how many
    bytes at its end were part of no complete record (with ``partial_ok``). Raises
    ``CaptureError`` naming the byte offset of what is wrong. ``close()`` (or ``with``)
    frees the file; arrays still held keep its mapping until they go."""

    def __init__(self, path: str | os.PathLike[str], *, partial_ok: bool = False) -> None:
        self.path = str(path)
        self.partial_ok = partial_ok
        self.complete = False
        self.incomplete_bytes = 0
        self._count = 1  # records read, the header included
        self._started: set[str] = set()
        self._ended: set[str] = set()
        self._next: dict[tuple[str, str], int] = {}  # (scan, channel) -> next point index
        with open(path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size == 0:
                raise self._error(0, "the file is empty: not a databus capture")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = memoryview(self._map)
        try:
            self.header, self._at = self._read_header()
            if not partial_ok:
                self._check_close()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._view.release()
        # BufferError: arrays of its records are still held; the mapping goes with them
        with contextlib.suppress(BufferError):
            self._map.close()

    def _error(self, at: int, message: str) -> CaptureError:
        return CaptureError(f"{self.path}: byte {at}: {message}", path=self.path, offset=at)

    def _read_header(self) -> tuple[Header, int]:
        try:
            fields, end = read_map(self._view, 0)
        except Exception:
            fields, end = {}, 0
        if fields.get("kind") != "header" or fields.get("format") != FORMAT:
            raise self._error(
                0,
                f"not a databus capture: expected its header record (a msgpack map with "
                f"kind 'header' and format {FORMAT!r})",
            )
        version = fields.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise self._error(0, f"the header's version is {version!r}, not an integer")
        if version > VERSION:
            raise self._error(
                0,
                f"capture format version {version} is newer than this databus reads "
                f"({VERSION}); read it with a newer databus",
            )
        if version < 1:
            raise self._error(
                0,
                f"capture format version {version} is older than any this databus reads "
                f"(version 1 is the first; it reads up to {VERSION})",
            )
        self._check_crc(0, end)
        try:
            return header(fields), end
        except Invalid as exc:
            raise self._error(0, str(exc)) from None

    def _check_crc(self, start: int, end: int) -> None:
        trailer = bytes(self._view[max(start, end - TRAILER_BYTES) : end])
        if end - start <= TRAILER_BYTES or trailer[:-4] != CRC_KEY + b"\xce":
            raise self._error(
                start, "the record has no checksum (its last key must be 'crc', a uint32)"
            )
        stored = int.from_bytes(trailer[-4:], "big")
        computed = crc32c.crc32c(self._view[start : end - TRAILER_BYTES])
        if stored != computed:
            raise self._error(
                start,
                f"the record (bytes {start}..{end - 1}) fails its checksum (stored "
                f"{stored:#010x}, computed {computed:#010x}): the file is corrupt there",
            )

    def _check_close(self) -> None:
        """Refuse, before any record is read, a file that does not end with its ``close``
        record, naming where its incomplete part starts."""
        if self.size - self._at >= CLOSE_BYTES:
            try:
                tail, _ = read_map(self._view, self.size - CLOSE_BYTES)
            except Exception:
                tail = {}
            if tail.get("kind") == "close":
                return
        at = self._at
        while at < self.size:
            try:
                end = end_of(self._view, at)
            except Short:
                raise self._error(
                    at,
                    f"the record that starts here is cut short (the file ends at byte "
                    f"{self.size}): the capture stopped while writing it (killed, or out of "
                    f"disk space); read the file with partial_ok=True (databus replay "
                    f"--partial) to use the records before it",
                ) from None
            except Malformed as exc:
                raise self._error(at, f"expected a record, found {exc}") from None
            at = end
        raise self._error(
            self.size,
            "the file ends after a complete record but without its closing record: the "
            "capture was killed or failed, or is still being written; read it with "
            "partial_ok=True (databus replay --partial) to use the records it has",
        )

    def __iter__(self) -> Iterator[Record]:
        view, size = self._view, self.size
        while True:
            start = self._at
            if start >= size:
                if not self.partial_ok:
                    raise self._error(start, "the file ends without its closing record")
                return
            try:
                end = end_of(view, start)
            except Short:
                if not self.partial_ok:
                    raise self._error(
                        start, f"the record that starts here is cut short (the file ends at {size})"
                    ) from None
                self.incomplete_bytes = size - start
                return
            except Malformed as exc:
                raise self._error(start, f"expected a record, found {exc}") from None
            self._check_crc(start, end)
            try:
                fields, _ = read_map(view, start)
            except Exception as exc:  # checksum right: written so by another program
                raise self._error(
                    start, f"expected a record (a msgpack map), found {exc}"
                ) from None
            kind = fields.get("kind")
            self._at = end
            if kind == "close":
                self._closed(fields, start, end)
                return
            self._count += 1
            cls = KINDS.get(kind) if isinstance(kind, str) else None
            if cls is not None:  # else a kind a later databus added: readers skip them
                try:
                    yield self._checked(record(cls, fields))
                except Invalid as exc:
                    raise self._error(start, str(exc)) from None

    def _closed(self, fields: dict, start: int, end: int) -> None:
        records = fields.get("records")
        if records != self._count:
            raise self._error(
                start,
                f"the closing record counts {records!r} records before it, the file holds "
                f"{self._count}: records are missing or were added",
            )
        if end != self.size:
            raise self._error(end, f"{self.size - end} bytes follow the closing record")
        self.complete = True

    def _checked(self, record: Record) -> Record:
        """``record`` if it follows from the records before it: its scan started and not
        ended, its channel declared, its points after those already given."""
        scan, kind = record.scan, record.KIND
        if isinstance(record, ScanStarted):
            if scan in self._started:
                raise Invalid(f"scan {scan} starts a second time")
            self._started.add(scan)
            return record
        if scan not in self._started or scan in self._ended:
            when = "after its end" if scan in self._ended else "before its 'scan' record"
            raise Invalid(f"a {kind!r} record of scan {scan} {when}")
        if isinstance(record, (ScanEnded, ScanCut)):
            self._ended.add(scan)
        elif isinstance(record, ChannelDeclared):
            if (scan, record.name) in self._next:
                raise Invalid(f"channel {record.name!r} of scan {scan} is declared twice")
            self._next[(scan, record.name)] = 0
        elif isinstance(record, (PointsSent, PointsLost)):
            key = (scan, record.channel)
            if key not in self._next:
                raise Invalid(
                    f"a {kind!r} record of channel {record.channel!r} of scan {scan}, "
                    f"which was never declared"
                )
            if record.first < self._next[key]:
                raise Invalid(
                    f"a {kind!r} record of channel {record.channel!r} of scan {scan} starts "
                    f"at point {record.first}, but points up to {self._next[key] - 1} came "
                    f"before"
                )
            self._next[key] = record.first + record.count
        return record

    def scans(self) -> dict[int, str]:
        """The scans the file holds, number -> key, found without decoding data (for a
        selection checked before anything is replayed); stops at an incomplete record."""
        found: dict[int, str] = {}
        at = self._at
        while at < self.size:
            try:
                fields, at = read_map(self._view, at)
            except Short:
                break
            except Exception as exc:
                raise self._error(at, f"expected a record (a msgpack map), found {exc}") from None
            number = fields.get("number")
            if fields.get("kind") == "scan" and isinstance(number, int):
                found[number] = str(fields.get("scan"))
        return found


def read_capture(path: str | os.PathLike[str], *, partial_ok: bool = False) -> CaptureReader:
    """Open capture file ``path``: its header is read and its version checked at once
    (``CaptureError`` for a file that is not a capture, or of a version this databus does
    not read). Without ``partial_ok`` a file that does not end with its closing record (a
    killed capture) is refused at once, naming the byte offset where its incomplete part
    starts; with it, its records are read up to the last complete one."""
    return CaptureReader(path, partial_ok=partial_ok)
