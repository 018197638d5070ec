"""Typed parameters of an analysis, declared by its worker class and changed live.

A worker's ``describe_parameters()`` returns ``IntParameter``, ``FloatParameter``,
``StrParameter``, ``BoolParameter`` or ``BinaryParameter`` instances (dranspose's names
and type words: ``int``, ``float``, ``str``, ``bool``, ``binary``). ``Parameters`` holds
their live values on the bus as shared channels (``databus.channels.Channel``)::

    analysis:<ANALYSIS>:<name>      one per parameter: its value (the default until set)
    analysis:<ANALYSIS>:#schema     name -> {"type", "default", "description"}, so that
                                    ``databus params`` checks a value without the worker

A change reaches every process within milliseconds (the channels' pub/sub) and the next
``snapshot()`` returns it, with the hash of the values it holds.

Text (the command line's) is converted by ``check``: ``"3"``, ``"0.5"``, ``"true"``/
``"false"`` (also ``yes``/``no``, ``on``/``off``, ``1``/``0``). A binary parameter takes
bytes, and text as its UTF-8 bytes; reading a file is the command line's job (``databus
params set A poni @geometry.poni``), never ``check``'s, since values that come over the
bus are checked too and must not make a worker read its files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, ClassVar

import numpy as np

import databus
from databus._encoding import pack_meta
from databus.channels import Channel

log = logging.getLogger(__name__)

_SCHEMA = "#schema"
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


class UnknownAnalysis(LookupError):
    """No parameters of this analysis are on the bus: none of its workers ever started."""


class UnknownParameter(LookupError):
    """The analysis has no parameter of this name (the message lists the ones it has)."""


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One parameter: ``name`` (no ``:`` or white space, not starting with ``#``), its
    ``default`` (checked, as ``check`` converts it) and a ``description`` for users."""

    name: str
    default: Any = None
    description: str = ""
    #: The word for this type in the schema and on the command line.
    type_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name or name.startswith("#"):
            raise ValueError(f"a parameter name is a non-empty str not starting with '#': {name!r}")
        if ":" in name or any(c.isspace() for c in name):
            raise ValueError(f"a parameter name has no ':' or white space: {name!r}")
        if not isinstance(self.description, str):
            raise TypeError(f"parameter {name!r}: the description is a str: {self.description!r}")
        object.__setattr__(self, "default", self.check(self.default))

    def check(self, value: Any) -> Any:
        """``value`` as this parameter holds it, converted from text if needed;
        ``TypeError`` or ``ValueError`` naming the parameter, its type and the value."""
        raise TypeError(
            f"parameter {self.name!r}: Parameter is the base class; use IntParameter, "
            f"FloatParameter, StrParameter, BoolParameter or BinaryParameter"
        )

    def describe(self) -> dict[str, Any]:
        """This parameter's entry in the schema."""
        return {"type": self.type_name, "default": self.default, "description": self.description}

    def _wrong(self, value: Any, why: str = "") -> TypeError:
        return TypeError(
            f"parameter {self.name!r} ({self.type_name}) cannot take {value!r:.80} "
            f"({type(value).__name__}){why}"
        )

    def _unreadable(self, text: str, why: str) -> ValueError:
        return ValueError(
            f"parameter {self.name!r} ({self.type_name}) cannot take {text!r:.80}: {why}"
        )


@dataclasses.dataclass(frozen=True)
class IntParameter(Parameter):
    """A whole number (``"3"`` from text); a bool or a float is refused."""

    default: int = 0
    type_name: ClassVar[str] = "int"

    def check(self, value: Any) -> int:
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise self._unreadable(value, "not a whole number") from None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise self._wrong(value)
        return int(value)


@dataclasses.dataclass(frozen=True)
class FloatParameter(Parameter):
    """A float (``"0.5"``, ``"1e-3"``, ``"nan"`` from text); an int becomes a float."""

    default: float = 0.0
    type_name: ClassVar[str] = "float"

    def check(self, value: Any) -> float:
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise self._unreadable(value, "not a number") from None
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)
        ):
            raise self._wrong(value)
        return float(value)


@dataclasses.dataclass(frozen=True)
class StrParameter(Parameter):
    """Text."""

    default: str = ""
    type_name: ClassVar[str] = "str"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        return str(value)


@dataclasses.dataclass(frozen=True)
class BoolParameter(Parameter):
    """True or false (``"true"``/``"false"``, ``yes``/``no``, ``on``/``off``, ``1``/``0``
    from text, in any case)."""

    default: bool = False
    type_name: ClassVar[str] = "bool"

    def check(self, value: Any) -> bool:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE or word in _FALSE:
                return word in _TRUE
            raise self._unreadable(value, f"say one of {', '.join(sorted(_TRUE | _FALSE))}")
        if not isinstance(value, (bool, np.bool_)):
            raise self._wrong(value)
        return bool(value)


@dataclasses.dataclass(frozen=True)
class BinaryParameter(Parameter):
    """Bytes: a file's content (a detector geometry...), so that workers need no access
    to the file. Text becomes its UTF-8 bytes."""

    default: bytes = b""
    type_name: ClassVar[str] = "binary"

    def check(self, value: Any) -> bytes:
        if isinstance(value, str):
            return value.encode()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise self._wrong(value, ": give bytes, e.g. Path(file).read_bytes()")
        return bytes(value)


#: Each parameter class by its type word.
PARAMETER_TYPES: dict[str, type[Parameter]] = {
    cls.type_name: cls
    for cls in (IntParameter, FloatParameter, StrParameter, BoolParameter, BinaryParameter)
}


def parameter_from_schema(name: str, entry: Any) -> Parameter:
    """The parameter a schema entry (``Parameter.describe()``) describes; ``ValueError``
    for an entry that is no such description."""
    kind = PARAMETER_TYPES.get(str(entry.get("type"))) if isinstance(entry, dict) else None
    if kind is None:
        raise ValueError(f"parameter {name!r}: not a parameter description: {entry!r:.120}")
    return kind(name=name, default=entry.get("default"), description=entry.get("description", ""))


@dataclasses.dataclass(frozen=True)
class ParameterValue:
    """One parameter's value as ``process_event`` gets it: ``parameters["till_x"].value``,
    as in dranspose."""

    name: str
    value: Any


@dataclasses.dataclass(frozen=True)
class ParameterSnapshot:
    """The values of an analysis' parameters at one moment and their ``hash``; read-only,
    since one snapshot is handed to every event until a value changes."""

    #: name -> value.
    values: Mapping[str, Any]
    #: sha256 hex digest of the msgpack of the sorted (name, value) pairs.
    hash: str
    #: name -> ``ParameterValue``: what workers and reducers are handed.
    parameters: Mapping[str, ParameterValue]


def parameter_values(
    declared: Sequence[Parameter], given: Mapping[str, ParameterValue] | None
) -> dict[str, Any]:
    """name -> value of each ``declared`` parameter: the one ``databus run`` hands over
    (``given[name].value``), else its declared default (a worker called in a plain loop)."""
    given = given or {}
    return {p.name: given[p.name].value if p.name in given else p.default for p in declared}


def parameters_hash(values: dict[str, Any]) -> str:
    """The hex sha256 of ``values`` packed with msgpack in name order: equal values give
    equal hashes in every process."""
    return hashlib.sha256(pack_meta(sorted(values.items()))).hexdigest()


class Parameters:
    """The live parameter values of the analysis ``analysis`` on ``bus``.

    ``Parameters(bus, analysis, descriptions)`` declares them (what a worker does): writes
    the schema, sets each default where no value is set, and resets a value the declared
    type refuses (logged). ``Parameters.attach(bus, analysis)`` follows an analysis declared
    elsewhere (what ``databus params`` does). ``snapshot()`` costs nothing until a value
    changes; ``close()`` stops following (the values stay on the bus).
    """

    def __init__(self, bus: databus.Bus, analysis: str, descriptions: Sequence[Parameter]) -> None:
        self._open(bus, analysis)
        try:
            self._follow(descriptions)
            self._declare()
        except BaseException:
            self.close()
            raise

    @classmethod
    def attach(cls, bus: databus.Bus, analysis: str) -> Parameters:
        """The parameters of ``analysis`` as its schema on the bus declares them;
        ``UnknownAnalysis`` if there is none."""
        self = cls.__new__(cls)
        self._open(bus, analysis)
        try:
            schema = self._schema.value
            if not isinstance(schema, dict):
                raise UnknownAnalysis(
                    f"no analysis {analysis!r} on the bus: its parameters appear when a worker "
                    f"of it starts (databus run --worker ...)"
                )
            self._follow([parameter_from_schema(name, entry) for name, entry in schema.items()])
        except BaseException:
            self.close()
            raise
        return self

    def _open(self, bus: databus.Bus, analysis: str) -> None:
        if not isinstance(analysis, str) or not analysis or ":" in analysis:
            raise ValueError(f"an analysis name is a non-empty str without ':', got {analysis!r}")
        self.bus = bus
        self.analysis = analysis
        self._descriptions: dict[str, Parameter] = {}
        self._channels: dict[str, Channel] = {}
        self._good: dict[str, Any] = {}
        self._generation = 0
        self._snapshot: ParameterSnapshot | None = None
        self._schema = Channel(f"analysis:{analysis}:{_SCHEMA}", bus=bus)

    def _follow(self, descriptions: Sequence[Parameter]) -> None:
        for param in descriptions:
            if not isinstance(param, Parameter):
                raise TypeError(
                    f"{self.analysis}: describe_parameters() returns parameters such as "
                    f"IntParameter(name=..., default=...), got {param!r:.80}"
                )
            if param.name in self._descriptions:
                raise ValueError(f"{self.analysis}: parameter {param.name!r} declared twice")
            self._descriptions[param.name] = param
            self._good[param.name] = param.default
            self._channels[param.name] = Channel(
                f"analysis:{self.analysis}:{param.name}",
                default_value=param.default,
                callback=functools.partial(self._changed, param.name),
                bus=self.bus,
            )

    def _declare(self) -> None:
        """Write the schema if it differs, and reset stored values the types refuse."""
        schema = {p.name: p.describe() for p in self._descriptions.values()}
        if self._schema.value != schema:
            self._schema.value = schema
        for name, param in self._descriptions.items():
            channel = self._channels[name]
            try:
                value = param.check(channel.value)
            except (TypeError, ValueError) as exc:
                log.warning("%s: %s; reset to the default %r", self.analysis, exc, param.default)
                value = param.default
            if type(value) is not type(channel.value) or value != channel.value:
                channel.value = value

    def __repr__(self) -> str:
        return f"<Parameters {self.analysis!r} {self.values()!r}>"

    def __enter__(self) -> Parameters:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def descriptions(self) -> tuple[Parameter, ...]:
        """The parameters, in the order they were declared."""
        return tuple(self._descriptions.values())

    def snapshot(self) -> ParameterSnapshot:
        """The current values and their hash, from the local copies (no round trip)."""
        snapshot, generation = self._snapshot, self._generation
        if snapshot is not None:
            return snapshot
        values = dict(self._good)
        snapshot = ParameterSnapshot(
            values=MappingProxyType(values),
            hash=parameters_hash(values),
            parameters=MappingProxyType(
                {name: ParameterValue(name, value) for name, value in values.items()}
            ),
        )
        if generation == self._generation:
            self._snapshot = snapshot
        return snapshot

    def values(self) -> dict[str, Any]:
        """name -> current value (a copy)."""
        return dict(self.snapshot().values)

    def hash(self) -> str:
        """The hash of the current values (``parameters_hash``)."""
        return self.snapshot().hash

    def parameter(self, name: str) -> Parameter:
        """The description of ``name``; ``UnknownParameter`` names the known ones."""
        param = self._descriptions.get(name)
        if param is None:
            known = ", ".join(self._descriptions) or "none"
            raise UnknownParameter(
                f"analysis {self.analysis!r} has no parameter {name!r}; it has: {known}"
            )
        return param

    def set(self, name: str, value: Any) -> Any:
        """Check ``value`` (text is converted) and make it ``name``'s value for every
        process; returns the value set. ``UnknownParameter`` names the known ones."""
        checked = self.parameter(name).check(value)
        self._channels[name].value = checked
        return checked

    def close(self) -> None:
        """Stop following the values (they stay on the bus)."""
        for channel in (self._schema, *self._channels.values()):
            channel.close()

    def _changed(self, name: str, value: Any) -> None:
        """A channel's callback: keep ``value`` if its type takes it (a value written past
        ``set`` may not: it is logged and the last good one kept); the next snapshot is
        built again."""
        param = self._descriptions[name]
        try:
            self._good[name] = param.default if value is None else param.check(value)
        except (TypeError, ValueError) as exc:
            log.error("%s: ignored a value on the bus: %s", self.analysis, exc)
            return
        self._generation += 1
        self._snapshot = None
