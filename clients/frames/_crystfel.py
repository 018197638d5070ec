"""CrystFEL's msgpack frame, built without I/O: one detector frame and its scalars as the one
msgpack map that ``indexamajig --data-format=msgpack`` (CrystFEL 0.12) reads from 0MQ.

What CrystFEL's reader (``libcrystfel/src/image-msgpack.c``) requires, and how this module
meets it:

- The message is one msgpack map (CrystFEL also takes an array of maps and reads the first).
- Keys are found by prefix: a key K of the map answers CrystFEL's lookup of the name W when K
  is a prefix of W, and the first such key in the map wins (``find_msgpack_kv`` compares
  ``len(K)`` bytes). So no key of a message may be a prefix of another (a scalar ``beam``
  would answer the lookup of ``beam_energy``), and none may be empty (it answers every lookup).
- The image is a map ``{"type": "<f4" | "<i4", "shape": [slow, fast], "data": bin}``: exactly
  two dimensions, C order, little-endian. Other dtypes are converted (``crystfel_array``).
- Scalars (CrystFEL's "headers", named in the geometry file, e.g. ``photon_energy =
  beam_energy eV``) are msgpack ints in the signed 64-bit range (CrystFEL reads them as
  int64), floats, or strings of 1 to 16384 bytes with no newline and no NUL; CrystFEL refuses
  booleans, nil, bin, arrays and maps there.
- A peak list (``--peaks=msgpack``) is a map of three arrays ``fs``, ``ss``, ``intensity`` of
  equal length whose elements are msgpack floats: CrystFEL reads each as a double without
  looking at its type, so an int would arrive as garbage.
- indexamajig drops messages of 15 bytes or less unread. Every message built here is longer:
  the image map alone takes more than 15 bytes, whatever the key names and frame size.

Default key names: the image under ``detector_data`` and a peak list under ``peak_list`` (the
names of CrystFEL's documentation); the frame's place under ``frame_index``, ``scan_key`` and
``scan_number``. None of those three is a prefix of, or has as a prefix, another default or a
name geometry files commonly look up (``beam_energy``, ``photon_energy``,
``detector_distance``, ``clen``, ``detector_data``, ``peak_list``): ``COMMON_LOOKUPS``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeAlias

import msgpack
import numpy as np
import numpy.typing as npt

__all__ = [
    "COMMON_LOOKUPS",
    "FRAME_INDEX_KEY",
    "IMAGE_KEY",
    "IMAGE_TYPES",
    "MAX_STRING_BYTES",
    "MIN_MESSAGE_BYTES",
    "PEAK_LIST_KEY",
    "SCAN_KEY_KEY",
    "SCAN_NUMBER_KEY",
    "Conversion",
    "FrameEncoder",
    "PeakList",
    "Scalar",
    "check_keys",
    "check_scalar",
    "crystfel_array",
]

log = logging.getLogger(__name__)

IMAGE_KEY = "detector_data"
PEAK_LIST_KEY = "peak_list"
FRAME_INDEX_KEY = "frame_index"
SCAN_KEY_KEY = "scan_key"
SCAN_NUMBER_KEY = "scan_number"
#: Names that CrystFEL geometry files commonly look up in msgpack frames.
COMMON_LOOKUPS = (
    "beam_energy",
    "photon_energy",
    "detector_distance",
    "clen",
    IMAGE_KEY,
    PEAK_LIST_KEY,
)
#: The two image types CrystFEL reads (``"type"`` of the image map).
IMAGE_TYPES = ("<f4", "<i4")
#: indexamajig ignores a message shorter than this (bytes).
MIN_MESSAGE_BYTES = 16
#: CrystFEL's longest string scalar (bytes of UTF-8).
MAX_STRING_BYTES = 16 * 1024

Scalar: TypeAlias = int | float | str
_F4 = np.dtype("<f4")
_I4 = np.dtype("<i4")
_I4_MIN, _I4_MAX = -(2**31), 2**31 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_EMPTY: Mapping[str, Scalar] = MappingProxyType({})


@dataclass(frozen=True)
class Conversion:
    """A frame dtype changed into one CrystFEL reads: ``source`` became ``target``."""

    source: np.dtype
    target: np.dtype

    def __str__(self) -> str:
        return f"{self.source.str} -> {self.target.str}"


def _exact_in_i4(dtype: np.dtype) -> bool:
    """Whether every value of ``dtype`` is an int32."""
    return (
        dtype.kind == "b"
        or (dtype.kind == "i" and dtype.itemsize <= 4)
        or (dtype.kind == "u" and dtype.itemsize <= 2)
    )


def _target(dtype: np.dtype, forced: Literal["f4", "i4"] | None) -> np.dtype:
    """The CrystFEL type for frames of ``dtype`` (``forced`` by the caller, or chosen)."""
    if dtype.kind not in "biuf":
        raise TypeError(
            f"CrystFEL reads frames of numbers only (<f4 or <i4); got dtype {dtype}: "
            "send a real numeric array (e.g. np.abs(frame) for complex data)"
        )
    if forced is None:
        return _I4 if _exact_in_i4(dtype) else _F4
    if forced == "f4":
        return _F4
    if forced == "i4":
        if dtype.kind == "f":
            raise TypeError(f"a float frame ({dtype}) cannot be sent as i4: use dtype='f4'")
        return _I4
    raise ValueError(f"dtype must be 'f4', 'i4' or None (chosen per frame); got {forced!r}")


def crystfel_array(
    frame: npt.ArrayLike, dtype: Literal["f4", "i4"] | None = None
) -> tuple[np.ndarray, Conversion | None]:
    """``frame`` as the C-ordered little-endian ``<f4`` or ``<i4`` 2-D array CrystFEL reads,
    and the dtype conversion done (None when the frame already was one: then it is returned
    as it is when C-contiguous, copied only when not).

    ``dtype=None`` keeps integers that ``<i4`` holds exactly (bool, int8-32, uint8-16) as
    ``<i4`` and sends every other dtype as ``<f4``: floats, and uint32/int64/uint64, exact up
    to 2**24 in magnitude and rounded above. ``"f4"`` sends any frame as ``<f4``; ``"i4"``
    sends integer frames as ``<i4`` and raises ValueError when a value does not fit. Float
    values beyond ``<f4``'s range become infinite, which CrystFEL marks as bad pixels.

    Raises ValueError for a frame that is not 2-D or is empty, TypeError for a non-numeric
    dtype or a float frame forced to ``"i4"``.
    """
    array = np.asarray(frame)
    if array.ndim != 2:
        raise ValueError(
            f"CrystFEL reads 2-D frames only (shape [slow, fast]); got shape {array.shape}: "
            "send one 2-D frame per message (e.g. frame[panel] or frame.reshape(-1, fast))"
        )
    if array.size == 0:
        raise ValueError(f"empty frame (shape {array.shape}): CrystFEL needs at least 1 pixel")
    target = _target(array.dtype, dtype)
    if target == _I4 and not _exact_in_i4(array.dtype):
        low, high = int(array.min()), int(array.max())
        if low < _I4_MIN or high > _I4_MAX:
            raise ValueError(
                f"frame values {low}..{high} ({array.dtype}) do not fit in <i4: use dtype='f4'"
            )
    if array.dtype == target:
        return np.ascontiguousarray(array), None
    with np.errstate(over="ignore"):
        converted = np.ascontiguousarray(array, dtype=target)
    return converted, Conversion(array.dtype, target)


def check_scalar(key: str, value: object) -> Scalar:
    """``value`` as the msgpack int, float or str CrystFEL reads for a scalar (numpy scalars
    become Python ones); TypeError or ValueError naming ``key`` otherwise."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"scalar {key!r}: CrystFEL refuses msgpack booleans; send int(value) instead"
        )
    if isinstance(value, (int, np.integer)):
        number = int(value)
        if not _I64_MIN <= number <= _I64_MAX:
            raise ValueError(
                f"scalar {key!r} = {number} is outside int64, which CrystFEL reads ints as; "
                "send it as a float or a string"
            )
        return number
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        size = len(value.encode("utf-8"))
        if not 1 <= size <= MAX_STRING_BYTES:
            raise ValueError(
                f"scalar {key!r}: CrystFEL reads strings of 1 to {MAX_STRING_BYTES} bytes; "
                f"got {size}"
            )
        if "\n" in value or "\0" in value:
            raise ValueError(
                f"scalar {key!r} = {value!r}: CrystFEL refuses a newline in a string and "
                "cuts it at a NUL"
            )
        return value
    raise TypeError(
        f"scalar {key!r}: CrystFEL reads an int, a float or a str; got {type(value).__name__}"
    )


def check_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """The keys of a message, checked: non-empty strings without NUL, none equal to or a
    prefix of another (CrystFEL finds keys by prefix). ValueError naming both keys."""
    checked: list[str] = []
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"message keys are str; got {type(key).__name__} {key!r}")
        if not key:
            raise ValueError("an empty key answers every CrystFEL lookup; give it a name")
        if "\0" in key:
            raise ValueError(f"key {key!r} holds a NUL, where CrystFEL's comparison stops")
        for other in checked:
            if key == other:
                raise ValueError(f"key {key!r} is used twice in one message")
            shorter, longer = sorted((key, other), key=len)
            if longer.startswith(shorter):
                raise ValueError(
                    f"key {shorter!r} is a prefix of key {longer!r}: CrystFEL matches keys by "
                    f"prefix, so {shorter!r} would answer its lookup of {longer!r}; rename one"
                )
        checked.append(key)
    return tuple(checked)


class PeakList:
    """One frame's peaks for ``indexamajig --peaks=msgpack``: fast-scan and slow-scan pixel
    coordinates and intensities, float64 arrays of equal length (read-only). Coordinates are
    pixel indices: indexamajig adds 0.5 unless run with ``--no-half-pixel-shift``."""

    __slots__ = ("fs", "intensity", "ss")

    def __init__(self, fs: npt.ArrayLike, ss: npt.ArrayLike, intensity: npt.ArrayLike) -> None:
        self.fs = _peak_array("fs", fs)
        self.ss = _peak_array("ss", ss)
        self.intensity = _peak_array("intensity", intensity)
        lengths = {"fs": len(self.fs), "ss": len(self.ss), "intensity": len(self.intensity)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"peak list arrays must have equal lengths; got {lengths}")

    def __len__(self) -> int:
        return len(self.fs)

    def __repr__(self) -> str:
        return f"<PeakList of {len(self)} peaks>"

    def to_map(self) -> dict[str, list[float]]:
        """The msgpack map CrystFEL reads: three arrays of floats."""
        return {
            "fs": self.fs.tolist(),
            "ss": self.ss.tolist(),
            "intensity": self.intensity.tolist(),
        }


def _peak_array(name: str, values: npt.ArrayLike) -> np.ndarray:
    """One column of a peak list as a read-only float64 array; ValueError naming it."""
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind not in "biuf":
        raise ValueError(
            f"peak list {name!r} must be a 1-D array of numbers; got dtype {array.dtype}, "
            f"shape {array.shape}"
        )
    array = array.astype(np.float64)
    array.flags.writeable = False
    return array


def _index(name: str, value: object) -> int:
    """A frame index or scan number: an int >= 0; TypeError or ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    number = int(value)
    if not 0 <= number <= _I64_MAX:
        raise ValueError(f"{name} must be in 0..2**63-1; got {number}")
    return number


class FrameEncoder:
    """Builds the messages of one channel's frames for CrystFEL, with the key names fixed
    (and checked) once; says each dtype conversion once per encoder in the log.

    ``scalar_keys`` names every scalar a message may carry (constants, scan info, per-point
    values); ``peak_list_key`` is None when frames carry no peak list. ``dtype`` is as in
    ``crystfel_array``. ValueError at construction when a key is a prefix of another.
    """

    def __init__(
        self,
        channel: str,
        *,
        image_key: str = IMAGE_KEY,
        scalar_keys: Iterable[str] = (),
        peak_list_key: str | None = None,
        frame_index_key: str = FRAME_INDEX_KEY,
        scan_key_key: str = SCAN_KEY_KEY,
        scan_number_key: str = SCAN_NUMBER_KEY,
        dtype: Literal["f4", "i4"] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if dtype not in (None, "f4", "i4"):
            raise ValueError(f"dtype must be 'f4', 'i4' or None (chosen per frame); got {dtype!r}")
        self.channel = channel
        self.image_key = image_key
        self.frame_index_key = frame_index_key
        self.scan_key_key = scan_key_key
        self.scan_number_key = scan_number_key
        self.peak_list_key = peak_list_key
        self.dtype = dtype
        fixed = [image_key, frame_index_key, scan_key_key, scan_number_key]
        if peak_list_key is not None:
            fixed.append(peak_list_key)
        self.keys = check_keys([*fixed, *scalar_keys])
        self.scalar_keys = frozenset(self.keys[len(fixed) :])
        self._log = logger if logger is not None else log
        self._said: set[np.dtype] = set()

    def __repr__(self) -> str:
        return f"<FrameEncoder channel={self.channel!r} keys={list(self.keys)}>"

    def image(self, frame: npt.ArrayLike) -> np.ndarray:
        """``frame`` as CrystFEL reads it (``crystfel_array``), logging a new conversion."""
        array, conversion = crystfel_array(frame, self.dtype)
        if conversion is not None and conversion.source not in self._said:
            self._said.add(conversion.source)
            self._log.info(
                "channel %s: frames of dtype %s are sent as %s (CrystFEL reads only <f4 and <i4)",
                self.channel,
                conversion.source.str,
                conversion.target.str,
            )
        return array

    def sends_as_stored(self, dtype: npt.DTypeLike) -> bool:
        """Whether frames of ``dtype`` go out as they are (``message`` then takes them
        straight into the message), not converted."""
        stored = np.dtype(dtype)
        try:
            return _target(stored, self.dtype) == stored
        except TypeError:
            return False

    def encode(
        self,
        frame: npt.ArrayLike,
        *,
        frame_index: int,
        scan_key: str,
        scan_number: int,
        scalars: Mapping[str, object] = _EMPTY,
        peaks: PeakList | None = None,
    ) -> memoryview:
        """One frame's message: the image, its index, its scan's key and number, ``scalars``
        (a subset of ``scalar_keys``) and ``peaks``, packed as one msgpack map (a buffer:
        the image last, so ``message`` can build it around the pixels). The pixels are
        copied once, into the message (and once before when converted).

        Raises ValueError or TypeError naming what is wrong (``crystfel_array``,
        ``check_scalar``, a key not declared, peaks without a ``peak_list_key``).
        """
        array = self.image(frame)
        message, pixels = self.message(
            array.shape,
            array.dtype,
            frame_index=frame_index,
            scan_key=scan_key,
            scan_number=scan_number,
            scalars=scalars,
            peaks=peaks,
        )
        pixels[...] = array
        return message

    def message(
        self,
        shape: tuple[int, ...],
        dtype: npt.DTypeLike,
        *,
        frame_index: int,
        scan_key: str,
        scan_number: int,
        scalars: Mapping[str, object] = _EMPTY,
        peaks: PeakList | None = None,
    ) -> tuple[memoryview, np.ndarray]:
        """``encode``'s message with its pixels still to fill: (the message, the writable
        ``shape`` array of ``dtype`` (``<f4`` or ``<i4``) inside it, at its end). Whoever
        fills the array (``ChannelNode.get(i, out=pixels)``) builds the message without
        copying the frame. Raises as ``encode``."""
        unknown = sorted(set(scalars) - self.scalar_keys)
        if unknown:
            raise ValueError(
                f"scalars {unknown} were not declared; this encoder's scalar_keys are "
                f"{sorted(self.scalar_keys)}"
            )
        if peaks is not None and self.peak_list_key is None:
            raise ValueError("peaks given to an encoder built without peak_list_key")
        image_type = np.dtype(dtype)
        if image_type.str not in IMAGE_TYPES or len(shape) != 2 or not all(shape):
            raise ValueError(f"CrystFEL reads 2-D <f4 or <i4 images, not {image_type.str}{shape}")
        values: dict[str, object] = {
            self.frame_index_key: _index("frame_index", frame_index),
            self.scan_key_key: check_scalar(self.scan_key_key, scan_key),
            self.scan_number_key: _index("scan_number", scan_number),
        }
        for key, value in scalars.items():
            values[key] = check_scalar(key, value)
        if peaks is not None and self.peak_list_key is not None:
            values[self.peak_list_key] = peaks.to_map()
        count = int(np.prod(shape))
        packer = msgpack.Packer(use_bin_type=True)
        head = [packer.pack_map_header(len(values) + 1)]
        for key, value in values.items():
            head += [packer.pack(key), packer.pack(value)]
        head += [
            packer.pack(self.image_key),
            packer.pack_map_header(3),
            packer.pack("type"),
            packer.pack(image_type.str),
            packer.pack("shape"),
            packer.pack(list(shape)),
            packer.pack("data"),
            _bin_header(count * image_type.itemsize),
        ]
        prefix = b"".join(head)
        buffer = np.empty(len(prefix) + count * image_type.itemsize, np.uint8)  # not zeroed
        buffer[: len(prefix)] = np.frombuffer(prefix, np.uint8)
        pixels = np.frombuffer(buffer.data, image_type, count, offset=len(prefix))
        return memoryview(buffer.data), pixels.reshape(shape)


def _bin_header(size: int) -> bytes:
    """The msgpack header of a ``size``-byte bin (the smallest form, as msgpack packs it)."""
    if size < 2**8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 2**16:
        return b"\xc5" + size.to_bytes(2, "big")
    if size < 2**32:
        return b"\xc6" + size.to_bytes(4, "big")
    raise ValueError(f"a frame of {size} bytes does not fit in one msgpack bin (< 4 GiB)")
