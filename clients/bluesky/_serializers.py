"""The serializers of bluesky's 0MQ wire, by name: how a document becomes the last part of a
``prefix name payload`` frame, and back.

- ``pickle``: bluesky's default (``Publisher`` and ``RemoteDispatcher`` use ``pickle.dumps``
  and ``pickle.loads`` unless told otherwise). It is the one exception to databus' rule never to
  unpickle what a peer sent: reading it runs whatever the sender put in the payload, so a bridge
  uses it only when its user asks for ``pickle`` by name, for a peer they trust.
- ``msgpack``: plain msgpack, what ``msgpack.unpackb`` reads on the other end. Numpy arrays
  become (nested) lists and numpy scalars plain numbers.
- ``msgpack-numpy``: msgpack with arrays in msgpack-numpy's map
  ``{b"nd": True, b"type": dtype.str, b"kind": b"", b"shape": shape, b"data": raw bytes}``
  (scalars ``{b"nd": False, b"type", b"data"}``, complex numbers ``{b"complex": True, b"data":
  repr}``), so ``msgpack_numpy.unpackb`` gets numpy arrays
  back without a list per element. Object and structured arrays go as lists: msgpack-numpy
  would pickle object arrays.

Both msgpack readers (``loads``) understand msgpack-numpy's maps, whichever the sender used, and
refuse the pickled object arrays msgpack-numpy can carry (``b"kind": b"O"``).
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgpack
import numpy as np

__all__ = ["SERIALIZERS", "Serializer", "get_serializer"]


@dataclass(frozen=True)
class Serializer:
    """A named pair: ``dumps(doc) -> bytes`` for the payload, ``loads(payload) -> doc``."""

    name: str
    dumps: Callable[[Mapping[str, Any]], bytes]
    loads: Callable[[bytes], dict[str, Any]]


def _plain(obj: object) -> object:
    """msgpack's ``default``: numpy values as the lists and numbers msgpack knows."""
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"cannot serialize {type(obj).__name__} {obj!r} with msgpack")


def _numpy_map(obj: object) -> object:
    """msgpack's ``default`` for msgpack-numpy's array and scalar maps."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "OV":
            return obj.tolist()
        data = obj.data if obj.flags.c_contiguous else obj.tobytes()
        return {
            b"nd": True,
            b"type": obj.dtype.str,
            b"kind": b"",
            b"shape": obj.shape,
            b"data": data,
        }
    if isinstance(obj, np.generic):
        if obj.dtype.kind in "OV":
            return obj.tolist()
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}
    if isinstance(obj, complex):
        return {b"complex": True, b"data": repr(obj)}
    return _plain(obj)


def _from_numpy_map(obj: dict[Any, Any]) -> object:
    """msgpack's ``object_hook``: msgpack-numpy's maps back to numpy values."""
    if b"nd" in obj:
        kind = obj.get(b"kind", b"")
        if kind == b"O":
            raise ValueError("refusing a pickled object array (msgpack-numpy kind 'O')")
        if kind == b"V":
            dtype = np.dtype([tuple(field) for field in obj[b"type"]])
        else:
            dtype = np.dtype(obj[b"type"])
        if obj[b"nd"] is True:
            return np.frombuffer(obj[b"data"], dtype=dtype).reshape(obj[b"shape"])
        return np.frombuffer(obj[b"data"], dtype=dtype)[0]
    if obj.get(b"complex") is True:
        text = obj[b"data"]
        return complex(text.decode() if isinstance(text, bytes) else text)
    return obj


def _msgpack_dumps(doc: Mapping[str, Any]) -> bytes:
    return msgpack.packb(doc, default=_plain)


def _msgpack_numpy_dumps(doc: Mapping[str, Any]) -> bytes:
    return msgpack.packb(doc, default=_numpy_map)


def _msgpack_loads(payload: bytes) -> dict[str, Any]:
    doc = msgpack.unpackb(payload, object_hook=_from_numpy_map)
    if not isinstance(doc, dict):
        raise ValueError(f"a document is a map, this payload holds a {type(doc).__name__}")
    return doc


def _pickle_loads(payload: bytes) -> dict[str, Any]:
    doc = pickle.loads(payload)  # only when the user asked for pickle by name (module docstring)
    if not isinstance(doc, dict):
        raise ValueError(f"a document is a dict, this payload holds a {type(doc).__name__}")
    return doc


#: Every serializer by its name (the ``--serializer`` choices).
SERIALIZERS: Mapping[str, Serializer] = MappingProxyType(
    {
        "pickle": Serializer("pickle", pickle.dumps, _pickle_loads),
        "msgpack": Serializer("msgpack", _msgpack_dumps, _msgpack_loads),
        "msgpack-numpy": Serializer("msgpack-numpy", _msgpack_numpy_dumps, _msgpack_loads),
    }
)


def get_serializer(name: str) -> Serializer:
    """The serializer called ``name``; ValueError naming the choices for any other name."""
    try:
        return SERIALIZERS[name]
    except (KeyError, TypeError):
        choices = ", ".join(sorted(SERIALIZERS))
        raise ValueError(f"unknown serializer {name!r}: choose one of {choices}") from None


def add_wire_arguments(parser: argparse.ArgumentParser, prefix: str, serializer: str) -> None:
    """``--prefix`` and ``--serializer`` (msgpack by default), the options of bluesky's
    0MQ wire both bluesky bridges take; the texts say what each means for that bridge."""
    parser.add_argument("--prefix", default="", help=prefix)
    parser.add_argument(
        "--serializer", choices=sorted(SERIALIZERS), default="msgpack", help=serializer
    )
