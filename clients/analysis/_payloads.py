"""Analysis results as bytes: what a worker returns, packed with msgpack for the reducer.

Never pickle: unpacking a pickle runs whatever the bytes say, and results come over the
bus. A payload holds numbers, ``str``, ``bytes``, ``bool``, ``None``, lists, tuples, dicts
with ``str`` or ``int`` keys, numpy numbers and numeric arrays (dtype, byte order and shape
kept, through ``databus._encoding``'s numpy extension), and dataclass instances whose
fields hold the same, nested at will. Each comes back as the type it was sent as, so
subclasses that would come back as their base are refused (an OrderedDict, a namedtuple, a
masked array), as are sets, functions, generators and arrays of objects or text.

Dataclasses travel by name: ``module:qualname``, or the name given to ``register_payload``.
The worker needs nothing more than ``@dataclass`` (the dranspose tutorial's ``Result``).
The reducer rebuilds a class it registered, or one whose module it has imported itself (the
tutorial's reducer does ``from .worker import Start, Result``): the name is looked up in
``sys.modules`` and never imported, and only a dataclass is accepted, so a payload cannot
run code in the reducer. A class defined inside a function has no name another process can
find: packing one that is not registered is refused at the worker.

Wire form: numpy arrays (0-d ones too) are ``_encoding``'s extension type; a tuple, a
dataclass and a numpy scalar are lists whose first item is an extension tag of this
module::

    (1, 2)                ->  [<tag 64>, 1, 2]
    Result(intensity=9.5) ->  [<tag 65 "src.worker:Result">, {"intensity": 9.5}]
    np.float32(9.5)       ->  [<tag 66>, array(9.5, dtype=float32)]
"""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Callable
from typing import Any, TypeVar, overload

import msgpack
import numpy as np

from databus._encoding import pack_meta, unpack_meta

T = TypeVar("T")

_TUPLE = 64
_DATACLASS = 65
_NUMPY_SCALAR = 66
_NUMERIC_KINDS = "biufc"
_SCALARS = (str, bytes, float, bool, type(None))
_HINT = (
    "a payload holds numbers, str, bytes, bool, None, lists, tuples, dicts with str or int "
    "keys, numpy numbers and numeric arrays, and dataclasses of these"
)

_registered: dict[str, type[Any]] = {}
_names: dict[type[Any], str] = {}


class UnknownPayloadClass(LookupError):
    """A payload names a dataclass this process cannot rebuild: neither registered nor
    found in a module the process has imported."""


@overload
def register_payload(cls: type[T], *, name: str | None = None) -> type[T]: ...
@overload
def register_payload(
    cls: None = None, *, name: str | None = None
) -> Callable[[type[T]], type[T]]: ...
def register_payload(
    cls: type[T] | None = None, *, name: str | None = None
) -> type[T] | Callable[[type[T]], type[T]]:
    """Let instances of the dataclass ``cls`` travel as payloads under ``name`` (default
    ``module:qualname``); returns ``cls``, so ``@register_payload`` and
    ``@register_payload(name="roi.Result")`` both work. Both the worker and the reducer
    must register a class named this way. ``TypeError`` for what is not a dataclass,
    ``ValueError`` for a name another class holds."""
    if cls is None:
        return lambda c: register_payload(c, name=name)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"register_payload takes a dataclass, got {cls!r}")
    if name is None:
        name = f"{cls.__module__}:{cls.__qualname__}"
    elif not isinstance(name, str) or not name:
        raise ValueError(f"a payload name is a non-empty str, got {name!r}")
    holder = _registered.get(name)
    if holder is not None and holder is not cls:
        raise ValueError(
            f"payload name {name!r} is registered for {holder!r} already, not {cls!r}: "
            f"give one of them another name (register_payload(cls, name=...))"
        )
    _registered[name] = cls
    _names.setdefault(cls, name)
    return cls


def pack_payload(obj: Any, *, where: str) -> bytes:
    """msgpack bytes of the payload ``obj``. ``TypeError`` names ``where`` (the worker and
    event), the path inside the payload and the type that cannot be sent."""
    try:
        tree = _lower(obj, "result", where, set())
    except RecursionError:
        raise TypeError(f"{where}: the result is nested too deeply to send") from None
    return pack_meta(tree, what=where)


def unpack_payload(raw: bytes) -> Any:
    """The payload ``pack_payload`` packed into ``raw``. ``UnknownPayloadClass`` for a
    dataclass this process does not know; ``ValueError`` for bytes that are no payload or
    a dataclass whose fields differ from this process' class."""
    return _rebuild(unpack_meta(raw))


def _name_of(cls: type[Any], path: str, where: str) -> str:
    name = _names.get(cls)
    if name is not None:
        return name
    if "<locals>" in cls.__qualname__:
        raise TypeError(
            f"{where}: {path}: cannot send a {cls.__qualname__}: a dataclass defined in a "
            f"function has no name the reducer can find; define it at module level, or call "
            f"register_payload({cls.__name__}, name=...) in the worker and the reducer"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def _refuse(obj: Any, path: str, where: str) -> TypeError:
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        what = "a function"
    elif isinstance(obj, types.GeneratorType):
        what = "a generator (send a list)"
    elif isinstance(obj, (set, frozenset)):
        what = "a set (send a sorted list)"
    elif isinstance(obj, np.ndarray) and type(obj) is np.ndarray:
        what = f"an array of dtype {obj.dtype} (arrays of numbers only)"
    elif isinstance(obj, np.ndarray):
        what = f"a {type(obj).__name__}, a subclass of numpy.ndarray (send np.asarray(x))"
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
        what = f"a {type(obj).__name__}, a namedtuple (make it a dataclass)"
    elif type(obj) is int:
        what = f"the int {obj}, longer than 64 bits"
    elif isinstance(obj, type):
        what = f"the class {obj.__qualname__} (send an instance)"
    else:
        what = f"an object of type {type(obj).__module__}.{type(obj).__qualname__}"
    return TypeError(f"{where}: {path}: cannot send {what}; {_HINT}")


def _lower(obj: Any, path: str, where: str, seen: set[int]) -> Any:
    """``obj`` as msgpack data and numpy arrays, tagged where msgpack has no type of its
    own; ``TypeError`` (via ``_refuse``) at the first value that cannot be sent."""
    kind = type(obj)
    if kind is int:
        if not -(2**63) <= obj < 2**64:
            raise _refuse(obj, path, where)
        return obj
    if kind in _SCALARS:
        return obj
    if isinstance(obj, np.generic):
        if obj.dtype.kind in _NUMERIC_KINDS:
            return [msgpack.ExtType(_NUMPY_SCALAR, b""), np.asarray(obj)]
        if isinstance(obj, (np.str_, np.bytes_)):
            return obj.item()
        raise _refuse(obj, path, where)
    if kind is np.ndarray:
        if obj.dtype.kind not in _NUMERIC_KINDS:
            raise _refuse(obj, path, where)
        return obj
    if kind not in (list, tuple, dict) and not _is_dataclass_instance(obj):
        raise _refuse(obj, path, where)
    if id(obj) in seen:
        raise TypeError(f"{where}: {path}: the result contains itself")
    seen.add(id(obj))
    try:
        if kind is list:
            return [_lower(v, f"{path}[{i}]", where, seen) for i, v in enumerate(obj)]
        if kind is tuple:
            tag = msgpack.ExtType(_TUPLE, b"")
            return [tag, *(_lower(v, f"{path}[{i}]", where, seen) for i, v in enumerate(obj))]
        if kind is dict:
            lowered = {}
            for key, value in obj.items():
                if type(key) not in (str, int):
                    raise TypeError(
                        f"{where}: {path}: cannot send a dict with a key {key!r:.40} of type "
                        f"{type(key).__name__}; dict keys are str or int"
                    )
                lowered[key] = _lower(value, f"{path}[{key!r}]", where, seen)
            return lowered
        tag = msgpack.ExtType(_DATACLASS, _name_of(kind, path, where).encode())
        fields = {
            f.name: _lower(getattr(obj, f.name), f"{path}.{f.name}", where, seen)
            for f in dataclasses.fields(obj)
        }
        return [tag, fields]
    finally:
        seen.discard(id(obj))


def _is_dataclass_instance(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _rebuild(node: Any) -> Any:
    """The payload of an unpacked tree: tagged lists back to their types."""
    if isinstance(node, list):
        if node and isinstance(node[0], msgpack.ExtType):
            return _untag(node[0], node[1:])
        return [_rebuild(v) for v in node]
    if isinstance(node, dict):
        return {key: _rebuild(value) for key, value in node.items()}
    if isinstance(node, msgpack.ExtType):
        raise ValueError(f"not a payload: an extension type {node.code} out of place")
    return node


def _untag(tag: msgpack.ExtType, rest: list[Any]) -> Any:
    if tag.code == _TUPLE:
        return tuple(_rebuild(v) for v in rest)
    if tag.code == _NUMPY_SCALAR and len(rest) == 1 and isinstance(rest[0], np.ndarray):
        return rest[0][()]
    if tag.code == _DATACLASS and len(rest) == 1 and isinstance(rest[0], dict):
        return _dataclass(tag.data.decode(), rest[0])
    raise ValueError(f"not a payload: extension type {tag.code} with {len(rest)} items")


def _dataclass(name: str, fields: dict[str, Any]) -> Any:
    """An instance of the dataclass named ``name`` with ``fields``, made as pickle makes
    one: without calling ``__init__`` (the worker's instance was checked when it was made)."""
    cls: Any = _registered.get(name) or _imported_dataclass(name)
    expected = [f.name for f in dataclasses.fields(cls)]
    if sorted(expected) != sorted(fields):
        raise ValueError(
            f"payload {name!r} has the fields {sorted(fields)}, this process' {cls.__name__} "
            f"has {sorted(expected)}: the worker and the reducer run different versions of it"
        )
    obj = cls.__new__(cls)
    for field, value in fields.items():
        object.__setattr__(obj, field, _rebuild(value))
    return obj


def _imported_dataclass(name: str) -> type[Any]:
    """The dataclass ``module:qualname`` from a module this process imported already
    (registered from then on); nothing is imported and only dataclasses are taken."""
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name) if qualname else None
    if module is None:
        raise UnknownPayloadClass(
            f"payload class {name!r} is unknown in this process: import its module in the "
            f"reducer (as the tutorial's `from .worker import Result`), or call "
            f"register_payload(cls{'' if qualname else f', name={name!r}'}) here"
        )
    found: Any = module
    for part in qualname.split("."):
        found = vars(found).get(part) if hasattr(found, "__dict__") else None
    if not (
        isinstance(found, type)
        and dataclasses.is_dataclass(found)
        and f"{found.__module__}:{found.__qualname__}" == name
    ):
        raise UnknownPayloadClass(
            f"payload class {name!r}: {module_name} has no dataclass {qualname!r} in this "
            f"process (an older version of the module?)"
        )
    return register_payload(found)
