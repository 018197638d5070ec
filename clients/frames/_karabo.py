"""One frame and its per-frame values as the multipart message a karabo-bridge server sends
in answer to ``next``, so that ``karabo_bridge.Client(endpoint).next()`` (PyPI karabo-bridge)
returns them as ``data, metadata`` unchanged. Pure: no socket here.

The client tells the versions apart by the number of parts (one part is 1.0, more are 2.x)
and has no option of its own; the reference server chooses with ``protocol_version``.

Protocol 2.2 (the reference server's default), for one source ``S``::

    part 0  msgpack {"source": S, "content": "msgpack", "metadata": META}
    part 1  msgpack {key: scalar, ...}              every value that is not an array
    then, per array in ``data``'s order, two parts:
    part 2k   msgpack {"source": S, "content": "array", "path": key,
                       "dtype": numpy name ("uint16", "float32"...), "shape": [n, ...]}
    part 2k+1 the array's bytes in C order: a memoryview of its own buffer (no copy)
              when it is C-contiguous, of a C-ordered copy otherwise

Protocol 1.0 (the reference server's ``protocol_version="1.0"``), one part::

    msgpack {S: {key: value, ..., "metadata": META}}
    arrays as msgpack-numpy maps {b"nd": True, b"type": dtype.str, b"kind": b"",
                                  b"shape": [n, ...], b"data": <bin>}

so the client's ``data[S]`` also holds ``"metadata"`` (a data key of that name is refused),
and each array is copied once into the message.

``META`` is what the reference server and its simulator put there: ``source``,
``timestamp`` (Unix seconds, float), ``timestamp.sec`` and ``timestamp.frac`` (the whole
seconds, and the fraction in attoseconds as 18 digits, both as text) and ``timestamp.tid``,
the train ID. Consumers key on the train ID: EXtra-foam matches sources by it, keeps data
per train ID in a cache and ignores IDs below 1, karabo-bridge-glimpse prints 0 for a
missing one. So it must be at least 1 and never repeat on one endpoint: a frame index + 1
would repeat with the next scan, a counter over everything the endpoint serves does not.

Scalars come back as Python values (``int``, ``float``, ``str``, ``bool``, ``bytes``):
numpy scalars are converted as the reference server converts them, so a ``float32`` scalar
arrives as a ``float``; send a 0-d array to keep its dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from operator import index
from typing import Any

import msgpack
import numpy as np

__all__ = ["PROTOCOLS", "karabo_message"]

#: The protocol versions ``karabo_message`` writes, the client's default first.
PROTOCOLS = ("2.2", "1.0")

_MAX_TRAIN_ID = 2**64 - 1
_INT_RANGE = (-(2**63), 2**64 - 1)
_ATTO_DIGITS = 18
_SCALAR_KINDS = "biuf"
_REAL_TYPES = (int, float, np.integer, np.floating)


def karabo_message(
    source: str,
    data: Mapping[str, Any],
    timestamp: float,
    train_id: int,
    protocol: str = "2.2",
) -> list[bytes | memoryview]:
    """The parts of the reply to one ``next`` request: ``data`` as source ``source``.

    ``data`` maps flat karabo-style keys (``"image.data"``) to numpy arrays (sent with
    their dtype and shape) or scalars (``int``, ``float``, ``str``, ``bool``, ``bytes``,
    numpy bool/int/float scalars). ``timestamp`` is Unix seconds; ``train_id`` is at least 1
    and unique on the endpoint (see the module docstring). ``protocol`` is one of
    ``PROTOCOLS``. Under 2.2 the array parts share the arrays' memory: do not write into an
    array until its message is sent (0MQ's ``copy=False`` holds it until then).

    Raises ``TypeError`` for a source or key that is not a ``str`` or a value of another
    type, and ``ValueError`` for an empty name, an array dtype the client cannot rebuild (object,
    structured), an integer msgpack cannot hold, a bad timestamp, train ID or protocol;
    each message names the key.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if not isinstance(source, str):
        raise TypeError(f"source must be a str (a karabo source name), got {source!r}")
    if not source:
        raise ValueError("source must not be empty: give a karabo source name")
    metadata = _metadata(source, timestamp, train_id)
    scalars: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for key, value in data.items():
        _check_key(source, key, protocol)
        if isinstance(value, np.ndarray):
            arrays[key] = _sendable_array(source, key, value)
        else:
            scalars[key] = _scalar(source, key, value)
    if protocol == "1.0":
        return [_message_1_0(source, scalars, arrays, metadata)]
    return _message_2_2(source, scalars, arrays, metadata)


def _message_2_2(
    source: str,
    scalars: dict[str, Any],
    arrays: dict[str, np.ndarray],
    metadata: dict[str, Any],
) -> list[bytes | memoryview]:
    """Protocol 2.2: a header and the scalars, then a header and raw bytes per array."""
    parts: list[bytes | memoryview] = [
        _pack({"source": source, "content": "msgpack", "metadata": metadata}),
        _pack(scalars),
    ]
    for key, array in arrays.items():
        header = {
            "source": source,
            "content": "array",
            "path": key,
            "dtype": str(array.dtype),
            "shape": list(array.shape),
        }
        parts += [_pack(header), _raw_bytes(array)]
    return parts


def _message_1_0(
    source: str,
    scalars: dict[str, Any],
    arrays: dict[str, np.ndarray],
    metadata: dict[str, Any],
) -> bytes:
    """Protocol 1.0: one map of sources, metadata inside, arrays as msgpack-numpy maps."""
    values: dict[str, Any] = dict(scalars)
    for key, array in arrays.items():
        values[key] = {
            b"nd": True,
            b"type": array.dtype.str,
            b"kind": b"",
            b"shape": list(array.shape),
            b"data": _raw_bytes(array),
        }
    values["metadata"] = metadata
    return _pack({source: values})


def _pack(obj: object) -> bytes:
    """msgpack as the client unpacks it: ``str`` as str, ``bytes`` as bin."""
    return msgpack.packb(obj, use_bin_type=True)


def _raw_bytes(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array as a flat byte view of its own buffer."""
    return array.reshape(-1).view(np.uint8).data


def _metadata(source: str, timestamp: float, train_id: int) -> dict[str, Any]:
    """The source's metadata map: source, the timestamp three ways, the train ID."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, _REAL_TYPES):
        raise TypeError(f"timestamp must be Unix seconds as a float, got {timestamp!r}")
    seconds = float(timestamp)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"timestamp must be finite Unix seconds >= 0, got {timestamp!r}")
    if isinstance(train_id, (bool, np.bool_)):
        raise TypeError(f"train_id must be an int, got {train_id!r}")
    try:
        tid = index(train_id)
    except TypeError:
        raise TypeError(f"train_id must be an int, got {train_id!r}") from None
    if not 1 <= tid <= _MAX_TRAIN_ID:
        raise ValueError(
            f"train_id must be from 1 to 2**64-1 (consumers ignore 0), got {train_id!r}"
        )
    whole, _, fraction = format(Decimal(repr(seconds)), "f").partition(".")
    return {
        "source": source,
        "timestamp": seconds,
        "timestamp.sec": whole,
        "timestamp.frac": fraction[:_ATTO_DIGITS].ljust(_ATTO_DIGITS, "0"),
        "timestamp.tid": tid,
    }


def _check_key(source: str, key: object, protocol: str) -> None:
    """A data key is a non-empty ``str``; under 1.0 ``metadata`` is taken."""
    if not isinstance(key, str):
        raise TypeError(f"data key {key!r} of source {source!r} is not a str")
    if not key:
        raise ValueError(f"data of source {source!r} has an empty key")
    if protocol == "1.0" and key == "metadata":
        raise ValueError(
            f"data key 'metadata' of source {source!r}: protocol 1.0 puts the source's"
            " metadata there; rename the key or use protocol 2.2"
        )


def _sendable_array(source: str, key: str, array: np.ndarray) -> np.ndarray:
    """The array itself when the client can rebuild its dtype from the header, C-ordered."""
    if not _rebuildable(array.dtype):
        raise ValueError(
            f"data[{key!r}] of source {source!r} has dtype {array.dtype}: the karabo-bridge"
            " client rebuilds arrays with np.frombuffer from the dtype's name, so send a plain"
            " numeric, bool or string array (no object or structured dtype)"
        )
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def _rebuildable(dtype: np.dtype) -> bool:
    """Whether both names the protocols send (2.2 ``str(dtype)``, 1.0 ``dtype.str``) give
    the dtype back, and ``np.frombuffer`` takes it (no Python objects)."""
    if dtype.hasobject:
        return False
    try:
        return np.dtype(str(dtype)) == dtype and np.dtype(dtype.str) == dtype
    except (TypeError, ValueError):
        return False


def _scalar(source: str, key: str, value: object) -> object:
    """A value msgpack sends as itself; numpy scalars as the Python value they hold."""
    if isinstance(value, np.generic):
        if value.dtype.kind not in _SCALAR_KINDS:
            raise TypeError(
                f"data[{key!r}] of source {source!r} is a numpy {value.dtype} scalar:"
                f" send it as a 0-d array, np.asarray(value)"
            )
        value = value.item()
    if isinstance(value, int) and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise ValueError(
            f"data[{key!r}] of source {source!r} is {value}, outside msgpack's integers"
            f" ({_INT_RANGE[0]} to {_INT_RANGE[1]})"
        )
    if not isinstance(value, (bool, int, float, str, bytes)):
        raise TypeError(
            f"data[{key!r}] of source {source!r} is a {type(value).__name__}: send a numpy"
            " array or an int, float, str, bool or bytes"
        )
    return value
