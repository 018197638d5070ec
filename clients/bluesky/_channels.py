"""How a bluesky data key becomes a databus channel (name, kind, dtype, shape, attrs),
and a run's start and stop documents scan info and end reason. Pure.

Channel names: in the ``primary`` stream a motor's keys (the keys ``object_keys`` gives
the objects of the start's ``motors``) are ``axis:<key>`` and every other key is
``<key>``; in any other stream every key is ``<stream>:<key>``. Each channel's ``attrs``
keep ``stream`` and ``data_key`` (the bluesky names) with the data key's ``source``,
``object_name``, ``precision``... as the descriptor gave them. Per stream, the event
``time`` is the float64 channel ``<stream>:time`` and the ``timestamps`` of its keys
the float64 channel ``<stream>:timestamps`` (one value per key of ``attrs["keys"]``,
NaN where an event had none); both have ``attrs["event_field"]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from databus import EndReason

from ._files import Unmapped

#: dtype of the values of a data key without ``dtype_numpy``, by its JSON ``dtype``.
_JSON_DTYPES = {"number": "float64", "integer": "int64", "boolean": "bool"}
#: The scan's end reason, by the stop document's ``exit_status``.
_END_REASONS = {
    "success": EndReason.FINISHED,
    "abort": EndReason.STOPPED,
    "fail": EndReason.FAILED,
}


def plain(value: Any) -> Any:
    """``value`` as msgpack-able data: mappings with text keys, lists for tuples, numpy
    values as numbers and lists, anything else as its ``repr``."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    return repr(value)


@dataclasses.dataclass(frozen=True)
class ChannelSpec:
    """What ``Scan.channel()`` is given for one data key; ``dtype`` None: taken from the
    first value (a data key of dtype ``array`` without ``dtype_numpy``); ``copy`` False
    for the arrays the publisher makes itself (nobody else holds them)."""

    name: str
    kind: str
    dtype: str | None
    shape: tuple[int, ...]
    unit: str | None
    attrs: dict[str, Any]
    copy: bool = True

    def with_value(self, value: Any) -> ChannelSpec:
        """The spec completed from a first ``value`` (its dtype and shape)."""
        array = np.asarray(value)
        if array.dtype.kind not in "biufc":
            return dataclasses.replace(self, kind="json", dtype=None, shape=())
        return dataclasses.replace(self, dtype=array.dtype.str, shape=array.shape)


def motor_keys(start: Mapping[str, Any], object_keys: Mapping[str, Iterable[str]]) -> set[str]:
    """The data keys of the start's ``motors``."""
    motors = start.get("motors") or []
    return {k for m in motors for k in object_keys.get(m, [m])}


def channel_name(stream: str, key: str, motors: set[str]) -> str:
    """The channel of data key ``key`` of ``stream`` (the rule in the module docstring)."""
    if stream != "primary":
        return f"{stream}:{key}"
    return f"axis:{key}" if key in motors else key


def channel_spec(stream: str, key: str, data_key: Mapping[str, Any], name: str) -> ChannelSpec:
    """The channel ``name`` of ``data_key`` (a descriptor's ``data_keys[key]``):
    ``external`` keys are ``ref`` channels, ``string`` ones ``json``, others arrays of
    ``dtype_numpy``, else of their JSON ``dtype``. ``Unmapped`` for a shape that is not
    a list of sizes."""
    shape = data_key.get("shape") or []
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise Unmapped(f"data key {key!r} of stream {stream!r}: shape {shape!r} is not fixed")
    units = data_key.get("units")
    attrs = {"stream": stream, "data_key": key}
    attrs |= {k: plain(v) for k, v in data_key.items() if k not in ("units", "shape")}
    numpy = data_key.get("dtype_numpy")
    json_type = data_key.get("dtype")
    if isinstance(numpy, str) and numpy:
        dtype: str | None = numpy
    elif json_type in _JSON_DTYPES:
        dtype = _JSON_DTYPES[json_type]
    else:
        dtype = None
    kind = "array"
    if data_key.get("external"):
        kind, dtype = "ref", dtype or "float64"
    elif json_type == "string" or (dtype is not None and np.dtype(dtype).kind not in "biufc"):
        kind, dtype = "json", None
    unit = units if isinstance(units, str) and units else None
    return ChannelSpec(name, kind, dtype, tuple(shape), unit, attrs)


def event_field_specs(stream: str, keys: list[str]) -> tuple[ChannelSpec, ChannelSpec | None]:
    """The channels of a stream's event ``time`` and of the ``timestamps`` of its
    ``keys`` (None without keys: a stream of external keys only)."""
    base = {"stream": stream}
    time = ChannelSpec(
        f"{stream}:time", "array", "float64", (), "s", base | {"event_field": "time"}, False
    )
    if not keys:
        return time, None
    return (
        time,
        ChannelSpec(
            f"{stream}:timestamps",
            "array",
            "float64",
            (len(keys),),
            "s",
            base | {"event_field": "timestamps", "keys": keys},
            False,
        ),
    )


def scan_info(start: Mapping[str, Any]) -> dict[str, Any]:
    """The scan info of a run: the whole start document, plus the keys databus' own
    tools read (``title``, ``type`` = plan name, ``npoints`` = ``num_points``,
    ``save``, ``motors`` and ``detectors`` as lists)."""
    info = plain(start)
    plan = str(start.get("plan_name", "bluesky"))
    motors = list(info.get("motors") or [])
    info.setdefault("title", " ".join([plan, *map(str, motors)]))
    info.setdefault("type", plan)
    info.setdefault("save", True)
    num = start.get("num_points")
    if isinstance(num, int) and not isinstance(num, bool):
        info.setdefault("npoints", num)
    return info


def end_of(stop: Mapping[str, Any]) -> tuple[EndReason, str | None]:
    """The end reason and error text of a stop document: ``success`` -> finished,
    ``abort`` -> stopped, ``fail`` (and anything else) -> failed; the stop's ``reason``
    is the error text (none when empty)."""
    status = str(stop.get("exit_status"))
    reason = str(stop.get("reason") or "") or None
    end = _END_REASONS.get(status, EndReason.FAILED)
    if status not in _END_REASONS:
        reason = f"unknown exit_status {status!r}" + (f": {reason}" if reason else "")
    return end, reason
