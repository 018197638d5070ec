"""The binary messages the server sends a page: a little-endian uint32 giving the length
of a JSON header, the header (padded with spaces to a multiple of 8 bytes), then each
array's raw bytes (each padded to 8), as the header's ``arrays`` list names them
(``name``, numpy ``dtype`` string such as ``<f8`` or ``|u1``, element count ``n``), so the
page views them as typed arrays without copying."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np


def _pad(size: int) -> int:
    return -size % 8


def pack(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """One message: ``header`` (JSON data, non-finite floats as null) and ``arrays``."""
    meta, parts = [], []
    for name, array in arrays.items():
        flat = np.ascontiguousarray(array).ravel()
        if flat.dtype.byteorder == ">":
            flat = flat.astype(flat.dtype.newbyteorder("<"))
        meta.append({"name": name, "dtype": flat.dtype.str, "n": int(flat.size)})
        raw = flat.tobytes()
        parts.append(raw + b"\0" * _pad(len(raw)))
    head = json.dumps(finite({**header, "arrays": meta}), allow_nan=False).encode()
    head += b" " * _pad(4 + len(head))
    return b"".join([struct.pack("<I", len(head)), head, *parts])


def unpack(message: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and arrays of a message ``pack`` made (what the page does, for tests)."""
    (size,) = struct.unpack_from("<I", message)
    header = json.loads(message[4 : 4 + size])
    offset, arrays = 4 + size, {}
    for item in header.pop("arrays"):
        dtype = np.dtype(item["dtype"])
        arrays[item["name"]] = np.frombuffer(message, dtype, item["n"], offset)
        offset += item["n"] * dtype.itemsize
        offset += _pad(offset)
    return header, arrays


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float inside it made None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, np.generic):
        return finite(value.item())
    return value
