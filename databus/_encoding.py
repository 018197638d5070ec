"""What goes into Redis, as bytes: numeric blocks, records, file references, metadata.

Pure functions and small value types; no Redis client is imported here.

A channel is one stream. Each entry carries a block of whole points, and its ID encodes
the index of its first point, so index arithmetic needs no lookup::

    points      0 1 2 3 4 | 5 6 7 | 8 ...         entry ID   fields
    entry A     [0 ..... 4]                       "0-1"      d=<5 points>, n=5
    entry B                 [5 ... 7]             "5-1"      d=<3 points>, n=3
    gap marker                                    "12-0"     gap=8, why=<reason>
    seal                                          MAX-MAX    end=<total points>

A point larger than ``entry_bytes`` (a big frame) is split into parts with IDs
``<index>-1``, ``<index>-2``... so that no entry crosses an allocator size class (a 2 MiB
frame in one entry would cost 2.5 MiB on jemalloc). The seal has the largest possible ID:
nothing can follow it, and a reader blocked in XREAD sees it as an ordinary entry.

Points that will never be in the stream (a lossy channel dropped them, or the server
restarted without them) are announced by a gap marker ``<stop>-0``: it sorts after every
point before ``stop`` and right before the next point's entry, so any reader that misses
some of them reads it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import msgpack
import numpy as np

from ._errors import CorruptEntry, DtypeError, MetadataError, ShapeError
from ._store import keys

ChannelKind = Literal["array", "json", "ref"]
#: Stream entries as read: [(entry id, {field: value})].
Entries = list[tuple[bytes, dict[bytes, bytes]]]

#: Largest payload of one entry: 2 MiB less room for the listpack headers.
ENTRY_BYTES = 2**21 - 512
#: ID of the seal entry that closes a stream.
SEAL_ID = b"18446744073709551615-18446744073709551615"
#: Payloads below this are sent as bytes (joined with the command); larger ones as
#: memoryviews the connection writes without copying.
_COPY_BELOW = 65536
_NUMERIC_KINDS = "biufc"
_EXT_NDARRAY = 1
#: A ``FileRef``'s frames lie below this index (2**40: a trillion frames).
MAX_REF_INDEX = 2**40
#: Most frames one ``FileRef`` covers (2**24, about 16.7 million).
MAX_REF_FRAMES = 2**24
#: Longest file or dataset path of a ``FileRef``, in characters.
MAX_REF_PATH = 4096


# --------------------------------------------------------------------------- IDs


def entry_id(index: int, part: int = 1) -> bytes:
    """The ID of the entry whose first point is ``index`` (``part`` of a split point)."""
    return b"%d-%d" % (index, part)


def parse_id(raw: bytes | str) -> tuple[int, int]:
    """(first index, part) of an entry ID."""
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq)


def is_seal(raw: bytes | str) -> bool:
    """True for the ID of a stream's seal entry."""
    return (raw if isinstance(raw, bytes) else raw.encode()) == SEAL_ID


#: Reasons a gap marker gives.
GAP_DROPPED = "dropped"  # a lossy channel dropped them to stay within the scan's buffer
GAP_SERVER_LOST = "server lost"  # acknowledged, then lost when the server restarted empty
GAP_EVICTED = "evicted"  # the memory guard deleted the ended scan before this reader read them
GAP_EXPIRED = "expired"  # trimmed or expired from Redis before this reader read them
GAP_CORRUPT = "corrupt"  # stored, but undecodable: this reader skipped them


def gap_entry(first: int, stop: int, reason: str) -> tuple[bytes, dict[Any, Any]]:
    """The marker entry saying points ``first`` .. ``stop - 1`` will never be published."""
    return entry_id(stop, 0), {b"gap": first, b"why": reason}


def seal_fields(total: int) -> dict[Any, Any]:
    """Fields of the seal entry: the total number of points ever published."""
    return {b"end": total}


# --------------------------------------------------------------------- metadata


def _to_msgpack(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _NUMERIC_KINDS:
            return obj.tolist()
        arr = np.ascontiguousarray(obj)  # at least 1-D: the shape is the array's own
        return msgpack.ExtType(
            _EXT_NDARRAY, msgpack.packb([arr.dtype.str, list(obj.shape), arr.tobytes()])
        )
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _from_ext(code: int, data: bytes) -> Any:
    if code == _EXT_NDARRAY:
        dtype, shape, raw = msgpack.unpackb(data)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    return msgpack.ExtType(code, data)


def _find_unpackable(obj: Any, path: str) -> str | None:
    """The path of the first value inside ``obj`` that msgpack cannot carry."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, bytes)) and key is not None:
                return f"{path} (key {key!r} of type {type(key).__name__})"
            found = _find_unpackable(value, f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _find_unpackable(value, f"{path}[{i}]")
            if found:
                return found
        return None
    try:
        msgpack.packb(obj, default=_to_msgpack, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return f"{path} = {obj!r:.80} ({type(obj).__name__})"
    return None


def pack_meta(obj: Any, what: str = "value") -> bytes:
    """msgpack bytes of JSON-like data (numbers, strings, bytes, bools, None, lists, dicts,
    numpy scalars and arrays). ``MetadataError`` names the first value it cannot carry."""
    try:
        return msgpack.packb(obj, default=_to_msgpack, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        where = _find_unpackable(obj, what) or what
        raise MetadataError(
            f"{where} cannot be stored: use numbers, strings, bools, None, lists, dicts "
            f"or numpy arrays ({exc})"
        ) from None


def unpack_meta(raw: bytes | memoryview) -> Any:
    """The inverse of ``pack_meta`` (arrays come back as numpy arrays)."""
    return msgpack.unpackb(raw, ext_hook=_from_ext, raw=False, strict_map_key=False)


# ------------------------------------------------------------------ descriptors


@dataclasses.dataclass(frozen=True)
class FileRef:
    """Frames ``start`` .. ``stop - 1`` of ``dataset`` in the HDF5 ``file``, written by a
    detector itself; a reference channel publishes these instead of the pixels."""

    file: str
    dataset: str
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not (0 <= self.start < self.stop):
            raise ValueError(f"FileRef needs 0 <= start < stop, got {self.start}..{self.stop}")

    def __len__(self) -> int:
        return self.stop - self.start

    def problem(self) -> str | None:
        """What makes this reference unfit for a ref channel, or None: ``file`` must be an
        absolute path, ``dataset`` non-empty, both UTF-8 text without NUL of at most
        ``MAX_REF_PATH`` characters; integer frames below ``MAX_REF_INDEX``, at most
        ``MAX_REF_FRAMES`` of them. Bounds keep a reader's lengths and shapes sane."""
        for what, path in (("file", self.file), ("dataset", self.dataset)):
            if not isinstance(path, str) or not path:
                return f"{what} must be a non-empty string, got {path!r:.80}"
            if len(path) > MAX_REF_PATH:
                return f"{what} has {len(path)} characters, over {MAX_REF_PATH}"
            if "\0" in path:
                return f"{what} {path!r:.200} contains a NUL character"
            try:
                path.encode()
            except UnicodeEncodeError:
                return f"{what} {path!r:.200} is not valid text (a lone surrogate)"
        if not os.path.isabs(self.file):
            return f"file {self.file!r:.200} is not an absolute path"
        for what, index in (("start", self.start), ("stop", self.stop)):
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                return f"{what} must be an int, got {index!r:.80}"
        if self.stop > MAX_REF_INDEX:
            return f"stop {self.stop} is over the largest frame index, {MAX_REF_INDEX} (2**40)"
        if len(self) > MAX_REF_FRAMES:
            return (
                f"{len(self)} frames ({self.start}..{self.stop - 1}) are more than one "
                f"reference may cover, {MAX_REF_FRAMES} (2**24); send several references"
            )
        return None


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """What a channel holds: name, kind, dtype and shape of one point, unit.

    ``kind`` is ``array`` (numeric points stored inline), ``json`` (one msgpack record per
    point) or ``ref`` (frames of ``dtype``/``shape`` that live in files, see ``FileRef``).
    """

    name: str
    kind: ChannelKind = "array"
    dtype: np.dtype | None = None
    shape: tuple[int, ...] = ()
    unit: str | None = None
    lossy: bool = False
    entry_bytes: int = ENTRY_BYTES
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def block(self, value: Any) -> np.ndarray:
        """``value`` (one point or a block) as the block ``send()`` would store; raises
        its ``DtypeError``/``ShapeError``. Lets a client check every value of a row before
        sending any of them."""
        return coerce(self, value)

    @classmethod
    def create(
        cls,
        name: str,
        dtype: Any,
        shape: Sequence[int] = (),
        *,
        unit: str | None = None,
        kind: ChannelKind = "array",
        lossy: bool = False,
        attrs: dict[str, Any] | None = None,
    ) -> Descriptor:
        """Check the arguments of ``scan.channel()`` and build the descriptor."""
        keys.check_name("channel", name, keys.MAX_CHANNEL_NAME)
        if kind not in ("array", "json", "ref"):
            raise ValueError(
                f"channel {name!r}: kind must be 'array', 'json' or 'ref', not {kind!r}"
            )
        if kind == "json" or (kind == "array" and dtype is object):
            if shape not in ((), None):
                raise ValueError(f"channel {name!r}: a json channel has no point shape")
            return cls(name, "json", None, (), unit, lossy, ENTRY_BYTES, dict(attrs or {}))
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise DtypeError(f"channel {name!r}: {dtype!r} is not a numpy dtype ({exc})") from None
        if dt.kind not in _NUMERIC_KINDS or dt.fields is not None:
            raise DtypeError(
                f"channel {name!r}: dtype {dt} is not numeric; use a numeric dtype "
                f"(bool, int, uint, float, complex) or kind='json' for records"
            )
        try:
            shp = tuple(int(s) for s in shape)
        except TypeError:
            raise ShapeError(
                f"channel {name!r}: shape must be a tuple of ints, got {shape!r}"
            ) from None
        if any(s <= 0 for s in shp):
            raise ShapeError(f"channel {name!r}: every dimension must be > 0, got {shp}")
        return cls(
            name,
            kind,
            dt.newbyteorder("=") if dt.byteorder == ">" else dt,
            shp,
            unit,
            lossy,
            ENTRY_BYTES,
            dict(attrs or {}),
        )

    @functools.cached_property
    def point_nbytes(self) -> int:
        """Bytes of one point stored inline (0 for json and ref channels)."""
        if self.kind != "array" or self.dtype is None:
            return 0
        return self.dtype.itemsize * math.prod(self.shape)

    @functools.cached_property
    def parts(self) -> int:
        """Entries one point is split into (1 unless a point exceeds ``entry_bytes``)."""
        return max(1, -(-self.point_nbytes // self.entry_bytes))

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form (dtype as its string, shape as a list)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "dtype": None if self.dtype is None else self.dtype.str,
            "shape": list(self.shape),
            "unit": self.unit,
            "lossy": self.lossy,
            "entry_bytes": self.entry_bytes,
            "attrs": self.attrs,
        }

    def to_meta(self) -> bytes:
        """msgpack form, as stored in the scan record."""
        return pack_meta(self.as_dict(), what=f"channel {self.name!r} attrs")

    @classmethod
    def from_meta(cls, raw: bytes) -> Descriptor:
        """The inverse of ``to_meta``."""
        d = unpack_meta(raw)
        return cls(
            name=d["name"],
            kind=d["kind"],
            dtype=None if d["dtype"] is None else np.dtype(d["dtype"]),
            shape=tuple(d["shape"]),
            unit=d.get("unit"),
            lossy=bool(d.get("lossy", False)),
            entry_bytes=int(d.get("entry_bytes", ENTRY_BYTES)),
            attrs=d.get("attrs") or {},
        )


# --------------------------------------------------------------------- coercion


def _shape_error(desc: Descriptor, got: tuple[int, ...]) -> ShapeError:
    one = desc.shape
    block = ("n", *desc.shape)
    return ShapeError(
        f"channel {desc.name!r} takes points of shape {one}: send one point of shape {one} "
        f"or a block of shape {block}; got shape {got}"
    )


def coerce(desc: Descriptor, value: Any) -> np.ndarray:
    """``value`` as a C-contiguous block of shape ``(n, *desc.shape)`` and the channel's dtype.

    Accepts one point or a block of points, as an ndarray or anything numpy converts.
    Widening casts (int to float, float64 to float32) are accepted; a cast that would change
    a value (3.5 into an int channel, 300 into uint8, NaN into int) raises ``DtypeError``.
    The result may share memory with ``value`` (no copy is made that is not needed).
    """
    dt = desc.dtype
    if dt is None:
        raise TypeError(f"channel {desc.name!r} is a {desc.kind} channel: coerce() is for arrays")
    if value is None:
        raise DtypeError(f"channel {desc.name!r} takes {dt} points; got None")
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise ShapeError(
                f"channel {desc.name!r}: cannot make an array of the value sent ({exc})"
            ) from None
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise DtypeError(
            f"channel {desc.name!r} takes {dt} points; got {arr.dtype} "
            f"({type(value).__name__}: {value!r:.60})"
        )
    if arr.shape == desc.shape:
        block = arr.reshape((1, *desc.shape))
    elif arr.ndim == len(desc.shape) + 1 and arr.shape[1:] == desc.shape:
        block = arr
    else:
        raise _shape_error(desc, arr.shape)
    if block.dtype != dt:
        block = _cast(desc, block)
    return np.ascontiguousarray(block)


def _cast(desc: Descriptor, block: np.ndarray) -> np.ndarray:
    dt = np.dtype(desc.dtype)
    src = block.dtype
    widening = np.can_cast(src, dt, "safe") or (
        (src.kind in "iu" and dt.kind in "fc")
        or (src.kind == "f" and dt.kind in "fc")
        or (src.kind == "c" and dt.kind == "c")
    )
    with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
        # complex -> real warns; the round trip below refuses what lost its imaginary part
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
        out = block.astype(dt)
        if widening:
            overflowed = np.isinf(out) & np.isfinite(block) if dt.kind in "fc" else None
            if overflowed is None or not overflowed.any():
                return out
            bad = block.reshape(-1)[np.flatnonzero(overflowed.reshape(-1))[0]].item()
            raise DtypeError(
                f"channel {desc.name!r} holds {dt} points: {bad!r} ({src}) is too large for "
                f"{dt} (it would become infinite); declare the channel with dtype {src}"
            )
        back = out.astype(src)
    same = back == block
    if same.all():
        return out
    bad = block.reshape(-1)[np.flatnonzero(~same.reshape(-1))[0]].item()
    raise DtypeError(
        f"channel {desc.name!r} holds {dt} points: {bad!r} ({src}) would not survive the "
        f"conversion; convert it yourself (e.g. np.round(x).astype('{dt}')) or declare "
        f"the channel with dtype {src}"
    )


# ---------------------------------------------------------------------- entries


#: The field of an entry that holds its points' bytes (a block, or a part of a split point).
DATA = b"d"


def _payload(arr: np.ndarray) -> bytes | memoryview:
    flat = arr.reshape(-1).view(np.uint8)
    return flat.tobytes() if flat.nbytes < _COPY_BELOW else flat.data


def block_entries(
    desc: Descriptor, first_index: int, block: np.ndarray
) -> Iterator[tuple[bytes, dict[bytes, Any]]]:
    """(ID, fields) of the entries that store ``block``, whose first point is ``first_index``."""
    n = len(block)
    point = desc.point_nbytes
    if point <= desc.entry_bytes:
        per_entry = max(1, desc.entry_bytes // point)
        for start in range(0, n, per_entry):
            part = block[start : start + per_entry]
            yield entry_id(first_index + start), {DATA: _payload(part), b"n": len(part)}
        return
    for i in range(n):
        flat = block[i].reshape(-1).view(np.uint8)
        for p, offset in enumerate(range(0, point, desc.entry_bytes), start=1):
            yield (
                entry_id(first_index + i, p),
                {DATA: _payload(flat[offset : offset + desc.entry_bytes])},
            )


def pack_record(value: Any, channel: str) -> bytes:
    """One point of a json channel, packed (``MetadataError`` if msgpack cannot carry it)."""
    return pack_meta(value, what=f"channel {channel!r} record")


def record_entry(first_index: int, packed: Sequence[bytes]) -> tuple[bytes, dict[bytes, Any]]:
    """The entry that stores records packed by ``pack_record``, from ``first_index``."""
    n = len(packed)
    if n < 16:
        header = bytes([0x90 | n])
    elif n < 65536:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return entry_id(first_index), {b"m": header + b"".join(packed), b"n": n}


def ref_entry(first_index: int, ref: FileRef) -> tuple[bytes, dict[bytes, Any]]:
    """The entry that stores a file reference covering ``len(ref)`` points."""
    raw = pack_meta([ref.file, ref.dataset, ref.start, ref.stop])
    return entry_id(first_index), {b"r": raw, b"n": len(ref)}


@dataclasses.dataclass(frozen=True)
class Block:
    """Decoded points of one channel: ``data`` holds points ``first .. first+len-1``.

    ``data`` is a numpy array for array channels, a list for json channels and a list of
    ``FileRef`` for ref channels (one per entry, covering ``len(ref)`` points each)."""

    first: int
    data: Any
    count: int


@dataclasses.dataclass(frozen=True)
class Gap:
    """Points ``first .. first+count-1`` that will never be in the stream, and why
    (``GAP_DROPPED``, ``GAP_SERVER_LOST``)."""

    first: int
    count: int
    reason: str


def points_through(desc: Descriptor, raw_id: bytes | str, fields: dict) -> int:
    """How many points a stream vouches for (published, dropped or lost) when ``raw_id``
    (with ``fields``) is its last entry: the seal's total, or the index after that entry
    (after none of it for a ref entry ``decode_entries`` would call corrupt)."""
    if is_seal(raw_id):
        return int(field(fields, "end"))
    index, part = parse_id(raw_id)
    if part == 0:  # a gap marker ends at its own index
        return index
    if desc.kind == "array" and desc.parts > 1:
        return index + (1 if part == desc.parts else 0)
    if desc.kind == "ref":  # a reference vouches for its frames only if it checks out
        try:
            return index + len(_decode_ref(fields))
        except Exception:
            return index
    return index + int(field(fields, "n") or 1)


def text(value: Any) -> str:
    """``value`` as str: bytes from the server are decoded as UTF-8."""
    return value.decode() if isinstance(value, bytes) else str(value)


def field(fields: dict, name: str) -> Any:
    """``fields[name]`` whether the server's keys came back as bytes or as str."""
    value = fields.get(name.encode())
    return fields.get(name) if value is None else value


def decode_entries(
    desc: Descriptor, key: str, entries: Iterable[tuple[bytes, dict]], *, joined: bool = False
) -> Iterator[Block | Gap | int]:
    """Decode stream entries into ``Block``s and ``Gap``s; the seal yields the total point
    count as an int. ``joined``: split points in a row make one block (their parts joined
    once: a range read wants one array); else one block each (a walk hands each on).

    Parts of a split point must be consecutive in ``entries``; an incomplete trailing point
    is left out (read it again with the next batch). ``CorruptEntry`` names key and ID.
    """
    pending: list[bytes] = []
    pending_index = -1
    run: list[bytes] = []  # the parts of whole split points in a row, joined once
    run_first = run_count = 0
    for raw_id, fields in entries:
        eid = raw_id if isinstance(raw_id, bytes) else raw_id.encode()
        if run_count and not _continues(eid, run_first + run_count):
            yield _split_points(desc, run_first, run_count, run)
            run, run_count = [], 0
        if eid == SEAL_ID:
            total = field(fields, "end")
            try:
                yield int(total)
            except (TypeError, ValueError):
                raise CorruptEntry(
                    f"{key} seal {eid.decode()}: bad total {total!r}",
                    key=key,
                    entry_id=eid.decode(),
                ) from None
            continue
        try:
            index, part = parse_id(eid)
            if part == 0:
                first = int(field(fields, "gap"))
                if not 0 <= first < index:
                    raise ValueError(f"gap marker from {first} to {index}")
                yield Gap(first, index - first, text(field(fields, "why") or b"unknown"))
            elif desc.kind == "json":
                yield Block(index, unpack_meta(field(fields, "m")), int(field(fields, "n")))
            elif desc.kind == "ref":
                ref = _decode_ref(fields)
                yield Block(index, [ref], len(ref))
            elif desc.parts == 1:
                yield _decode_block(desc, index, fields)
            else:
                if part == 1:
                    pending, pending_index = [], index
                if index != pending_index or part != len(pending) + 1:
                    raise ValueError(f"part {part} of point {index} out of sequence")
                pending.append(bytes(field(fields, "d")))
                if part == desc.parts:
                    if not run_count:
                        run_first = index
                    run += pending
                    run_count += 1
                    pending = []
                    if not joined:
                        yield _split_points(desc, run_first, run_count, run)
                        run, run_count = [], 0
        except CorruptEntry:
            raise
        except Exception as exc:
            raise CorruptEntry(
                f"{key} entry {eid.decode(errors='replace')}: cannot decode ({exc})",
                key=key,
                entry_id=eid.decode(errors="replace"),
            ) from None
    if run_count:
        yield _split_points(desc, run_first, run_count, run)


def whole_split_points(desc: Descriptor, first: int, count: int, entries: Entries) -> bool:
    """True if ``entries`` are exactly the parts of split points ``first`` .. ``first +
    count - 1``, in order (what a read of those points straight into a buffer needs)."""
    parts = desc.parts
    if len(entries) != parts * count:
        return False
    ids = (entry_id(first + k // parts, k % parts + 1) for k in range(len(entries)))
    return all(bytes(eid) == want for (eid, _), want in zip(entries, ids, strict=True))


def _continues(eid: bytes, index: int) -> bool:
    """True if entry ``eid`` is a part of point ``index`` (not its gap marker, nor the seal)."""
    head, _, part = eid.partition(b"-")
    return head == b"%d" % index and part not in (b"0", b"")


def _split_points(desc: Descriptor, first: int, count: int, parts: list[bytes]) -> Block:
    """``count`` split points from ``first`` on, from all their parts in order."""
    data = np.frombuffer(b"".join(parts), dtype=desc.dtype)
    return Block(first, data.reshape((count, *desc.shape)), count)


def _decode_ref(fields: dict) -> FileRef:
    """The reference a ref entry holds; ValueError if it is unfit or disagrees with the
    entry's point count (a reader must not trust a length the publisher never checked)."""
    file, dataset, start, stop = unpack_meta(field(fields, "r"))
    ref = FileRef(file, dataset, start, stop)
    problem = ref.problem()
    if problem:
        raise ValueError(f"bad file reference: {problem}")
    n = int(field(fields, "n"))
    if n != len(ref):
        raise ValueError(f"{n} points for a reference to frames {start}..{stop - 1}")
    return ref


def _decode_block(desc: Descriptor, index: int, fields: dict) -> Block:
    raw = field(fields, "d")
    n = int(field(fields, "n"))
    data = np.frombuffer(raw, dtype=desc.dtype)
    expected = n * math.prod(desc.shape)
    if data.size != expected:
        raise ValueError(f"{data.nbytes} bytes for {n} points of {desc.dtype}{desc.shape}")
    return Block(index, data.reshape((n, *desc.shape)), n)
