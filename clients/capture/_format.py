"""The capture format: its records, as Python types and as bytes. Pure: no files, no bus.
``docs/capture-format.md`` documents every record and field.

A capture is a stream of msgpack maps, one per record::

    header  scan  channel...  state...  data/gap...  end   (scans may interleave)  close
    ^ format, version                                      ^ fixed 50 bytes, record count

Every record is a map whose first key is ``kind`` and whose last key is ``crc``: the
CRC-32C (Castagnoli, as iSCSI, ext4 and Julia's CRC32c use) of the record's bytes before
that key, always packed as a uint32 (``0xce`` and 4 bytes big-endian), so any msgpack
library can read the file and check it.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from typing import Any, ClassVar

import crc32c
import msgpack
import numpy as np

from databus import DatabusError, FileRef
from databus._encoding import pack_meta

#: The ``format`` of a capture's header record.
FORMAT = "databus-capture"
#: The format version written, and the newest read (1 is the first).
VERSION = 1
#: Array blocks larger than this are written as several ``data`` records.
BLOCK_BYTES = 64 * 2**20
CRC_KEY = msgpack.packb("crc")
#: Bytes that end every record: the ``crc`` key, 0xce, a big-endian uint32.
TRAILER_BYTES = len(CRC_KEY) + 5
#: The ``close`` record before its trailer: fixed-width, so a reader finds it at the end.
_CLOSE = struct.Struct(">B5s6s3sBd8sBQ")
CLOSE_BYTES = _CLOSE.size + TRAILER_BYTES


class CaptureError(DatabusError, ValueError):
    """A capture file that cannot be read: not a capture, a version this databus does not
    read, or cut short or corrupt at byte ``offset`` of ``path``."""

    def __init__(self, message: str, *, path: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class Header:
    """The first record: when and by which databus the capture was made, and of what
    (``source``: session, scans asked for, follow, embed_refs, bus URL, prefix, host)."""

    KIND: ClassVar[str] = "header"
    version: int
    created: float
    databus: str
    source: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ScanStarted:
    """A scan the capture took up: its key, session and number on the bus it came from,
    its info then, its creation time (unix s), ``at`` (seconds since the capture began)
    and ``live`` (it had not ended: its timing is the acquisition's, else the read's).
    ``t`` is 0: every later record of the scan counts its ``t`` from here."""

    KIND: ClassVar[str] = "scan"
    scan: str
    t: float
    session: str
    number: int
    info: dict[str, Any]
    created: float | None
    at: float
    live: bool


@dataclasses.dataclass(frozen=True)
class ChannelDeclared:
    """A channel of the scan: its descriptor as ``databus.Descriptor.as_dict`` gives it."""

    KIND: ClassVar[str] = "channel"
    scan: str
    t: float
    descriptor: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.descriptor["name"])


@dataclasses.dataclass(frozen=True)
class StateChanged:
    """The scan moved to ``state`` (``prepared`` or ``started``)."""

    KIND: ClassVar[str] = "state"
    scan: str
    t: float
    state: str


@dataclasses.dataclass(frozen=True)
class PointsSent:
    """Points ``first`` .. ``first + count - 1`` of ``channel``: ``data`` is a numpy block
    (array channels), a list of records (json) or of ``FileRef`` (ref channels, whose
    ``frames`` hold the referenced frames when the capture embedded them). Arrays read
    from a file are read-only views of its mapping."""

    KIND: ClassVar[str] = "data"
    scan: str
    t: float
    channel: str
    first: int
    count: int
    data: Any
    frames: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class PointsLost:
    """Points ``first`` .. ``first + count - 1`` of ``channel`` will never come, and why
    (a GAP: ``dropped``, ``server lost``, ``evicted``...)."""

    KIND: ClassVar[str] = "gap"
    scan: str
    t: float
    channel: str
    first: int
    count: int
    reason: str


@dataclasses.dataclass(frozen=True)
class ScanEnded:
    """The scan's end: its reason, error text and final info."""

    KIND: ClassVar[str] = "end"
    scan: str
    t: float
    reason: str
    error: str | None
    info: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ScanCut:
    """The capture stopped (SIGINT, SIGTERM, ``Capture.stop``) before the scan ended."""

    KIND: ClassVar[str] = "cut"
    scan: str
    t: float


Record = (
    ScanStarted | ChannelDeclared | StateChanged | PointsSent | PointsLost | ScanEnded | ScanCut
)
#: The record types of a scan by ``kind``.
KINDS: dict[str, type[Record]] = {
    cls.KIND: cls
    for cls in (
        ScanStarted,
        ChannelDeclared,
        StateChanged,
        PointsSent,
        PointsLost,
        ScanEnded,
        ScanCut,
    )
}


# --------------------------------------------------------------------------- to bytes


def crc_trailer(crc: int) -> bytes:
    """The bytes that end a record whose bytes before them have CRC-32C ``crc``."""
    return CRC_KEY + b"\xce" + crc.to_bytes(4, "big")


def _bin_header(size: int) -> bytes:
    """msgpack's bin 32 header of ``size`` bytes (msgpack-python has no packer for it)."""
    return b"\xc6" + size.to_bytes(4, "big")


def _array_pieces(block: np.ndarray) -> list[bytes | memoryview]:
    """``dtype``, ``shape`` and ``data`` of a numpy block, packed (the data not copied)."""
    block = np.ascontiguousarray(block)
    payload = block.reshape(-1).view(np.uint8).data
    return [
        msgpack.packb("dtype") + msgpack.packb(block.dtype.str),
        msgpack.packb("shape") + msgpack.packb(list(block.shape)),
        msgpack.packb("data") + _bin_header(payload.nbytes),
        payload,
    ]


def encode(record: Header | Record) -> list[bytes | memoryview]:
    """The bytes of ``record``, in pieces (large arrays are not copied), its CRC last;
    ``MetadataError`` for a value msgpack cannot carry."""
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    if isinstance(record, Header):
        fields = {"format": FORMAT, **fields}
    pieces: list[bytes | memoryview] = []
    if isinstance(record, PointsSent):
        data, frames = fields.pop("data"), fields.pop("frames")
        if isinstance(data, np.ndarray):
            pieces += _array_pieces(data)
        elif data and all(isinstance(ref, FileRef) for ref in data):
            refs = [[ref.file, ref.dataset, ref.start, ref.stop] for ref in data]
            pieces.append(msgpack.packb("refs") + pack_meta(refs))
            if frames is not None:
                pieces += _array_pieces(frames)
        else:
            pieces.append(msgpack.packb("records") + pack_meta(list(data), what="a record"))
    pairs = 1 + len(fields) + sum(1 for p in pieces if isinstance(p, bytes)) + 1  # kind, crc
    head = msgpack.Packer().pack_map_header(pairs)
    head += msgpack.packb("kind") + msgpack.packb(record.KIND)
    head += b"".join(
        msgpack.packb(k) + pack_meta(v, what=f"field {k!r}") for k, v in fields.items()
    )
    pieces.insert(0, head)
    crc = 0
    for piece in pieces:
        crc = crc32c.crc32c(piece, crc)
    pieces.append(crc_trailer(crc))
    return pieces


def close_record(at: float, records: int) -> bytes:
    """The fixed-width ``close`` record: seconds since the capture began, records before it."""
    body = _CLOSE.pack(
        0x84,  # a map of 4: kind, at, records, crc
        msgpack.packb("kind"),
        msgpack.packb("close"),
        msgpack.packb("at"),
        0xCB,  # float 64
        at,
        msgpack.packb("records"),
        0xCF,  # uint 64
        records,
    )
    return body + crc_trailer(crc32c.crc32c(body))


def split_block(block: np.ndarray, first: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first index, part) of ``block`` cut into parts of at most ``BLOCK_BYTES`` (at least
    one point each)."""
    per = max(1, BLOCK_BYTES // max(1, block[:1].nbytes))
    for start in range(0, len(block), per):
        yield first + start, block[start : start + per]


# --------------------------------------------------------------------------- from maps


class Invalid(ValueError):
    """A record's fields are not what its kind holds (the reader adds where)."""


_NUMBER = (int, float)


def _need(fields: dict, name: str, types: type | tuple[type, ...], where: str) -> Any:
    """Field ``name`` of a record if it is of ``types``, else ``Invalid``."""
    allowed = types if isinstance(types, tuple) else (types,)
    value = fields.get(name)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        got = "nothing" if name not in fields else f"a {type(value).__name__}"
        names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
        raise Invalid(f"{where} needs field {name!r} of type {names}, got {got}")
    return value


def header(fields: dict) -> Header:
    """The header record ``fields`` hold (its format and version already checked)."""
    where = "the header"
    return Header(
        fields["version"],
        float(_need(fields, "created", _NUMBER, where)),
        _need(fields, "databus", str, where),
        _need(fields, "source", dict, where),
    )


def record(cls: type[Record], fields: dict) -> Record:
    """The record of type ``cls`` that ``fields`` (a decoded map) hold; ``Invalid``."""
    where = f"a {cls.KIND!r} record"
    scan = _need(fields, "scan", str, where)
    t = float(_need(fields, "t", _NUMBER, where))
    if cls is ScanStarted:
        return ScanStarted(
            scan,
            t,
            _need(fields, "session", str, where),
            _need(fields, "number", int, where),
            _need(fields, "info", dict, where),
            _need(fields, "created", (*_NUMBER, type(None)), where),
            float(_need(fields, "at", _NUMBER, where)),
            _need(fields, "live", bool, where),
        )
    if cls is ChannelDeclared:
        desc = _need(fields, "descriptor", dict, where)
        _need(desc, "name", str, f"{where}'s descriptor")
        return ChannelDeclared(scan, t, desc)
    if cls is StateChanged:
        state = _need(fields, "state", str, where)
        if state not in ("prepared", "started"):
            raise Invalid(f"{where} names state {state!r}, not 'prepared' or 'started'")
        return StateChanged(scan, t, state)
    if cls is ScanEnded:
        return ScanEnded(
            scan,
            t,
            _need(fields, "reason", str, where),
            _need(fields, "error", (str, type(None)), where),
            _need(fields, "info", dict, where),
        )
    if cls is ScanCut:
        return ScanCut(scan, t)
    channel = _need(fields, "channel", str, where)
    first = _need(fields, "first", int, where)
    count = _need(fields, "count", int, where)
    if first < 0 or count < 1:
        raise Invalid(f"{where} of channel {channel!r} covers {count} points from {first}")
    if cls is PointsLost:
        return PointsLost(scan, t, channel, first, count, _need(fields, "reason", str, where))
    return _points(fields, scan, t, channel, first, count)


def _points(fields: dict, scan: str, t: float, channel: str, first: int, count: int) -> PointsSent:
    where = f"the 'data' record of channel {channel!r}"
    frames = _array(fields, where) if "data" in fields else None
    data: Any
    if "records" in fields:
        data = _need(fields, "records", list, where)
        held = len(data)
    elif "refs" in fields:
        try:
            data = [FileRef(*ref) for ref in _need(fields, "refs", list, where)]
        except (TypeError, ValueError) as exc:
            raise Invalid(f"{where} holds a bad file reference ({exc})") from None
        held = sum(len(ref) for ref in data)
    elif frames is not None:
        data, frames = frames, None
        held = len(data)
    else:
        raise Invalid(f"{where} has no 'data', 'records' or 'refs'")
    if held != count or (frames is not None and len(frames) != count):
        raise Invalid(f"{where} says {count} points but holds {held}")
    return PointsSent(scan, t, channel, first, count, data, frames)


def _array(fields: dict, where: str) -> np.ndarray:
    raw = _need(fields, "data", (bytes, memoryview), where)
    dtype = _need(fields, "dtype", str, where)
    shape = _need(fields, "shape", list, where)
    try:
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise Invalid(
            f"{where}: {len(raw)} bytes are no {dtype} block of shape {shape} ({exc})"
        ) from None
