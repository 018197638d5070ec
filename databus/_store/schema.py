"""Scan records and log entries as readers see them, decoded in this one place.

What Redis holds may be corrupt (a bug, a hand-edited key, a hostile client). Parsing turns
undecodable data into one ``CorruptEntry`` naming the key, the entry or field, and why, so
a walk skips it with one log line and goes on, and a direct read (``bus.scan(key)``) says
what is wrong. Names and numbers (``event``, ``scan``, ``name``, ``number``, ``state``,
``info``, ``created``, ``ended``, descriptors) must decode; a scan's end ``reason`` and
``error`` are messages, whose undecodable bytes are kept as ``\\xNN`` escapes so that a
scan's end is never lost to its message.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._encoding import Descriptor, field, text, unpack_meta
from .._errors import CorruptEntry
from .._states import EndReason, ScanState
from . import keys

log = logging.getLogger(__name__)

_FIX = "rewrite the field or delete the scan's keys"


def _name(key: str, entry_id: str, name: str, raw: Any) -> str | None:
    """Text field ``name`` of entry ``entry_id`` of log ``key``; None when absent."""
    if raw is None:
        return None
    try:
        return text(raw)
    except UnicodeDecodeError:
        raise CorruptEntry(
            f"field {name!r} is not UTF-8 text ({bytes(raw)!r:.60})",
            key=key,
            entry_id=entry_id,
        ) from None


def message(raw: Any) -> str | None:
    """A message field (an end ``reason``, an ``error``) as text, undecodable bytes escaped."""
    if raw is None:
        return None
    return raw.decode(errors="backslashreplace") if isinstance(raw, bytes) else str(raw)


@dataclasses.dataclass(frozen=True)
class LogEntry:
    """One entry of a session log or a scan log: its ``event`` ("" if absent) and the
    ``scan``, channel ``name``, end ``reason`` and ``error`` it names (None if absent);
    ``fields`` as stored (the ``evicted`` entry's packed ``channels``)."""

    id: str
    event: str
    scan: str | None
    name: str | None
    reason: str | None
    error: str | None
    fields: dict = dataclasses.field(repr=False)

    @classmethod
    def parse(cls, key: str, entry_id: bytes | str, fields: dict) -> LogEntry:
        """Decode an entry of log ``key``; ``CorruptEntry`` if a name is not UTF-8 or
        ``scan`` is not a scan key."""
        eid = text(entry_id)
        event, scan, name = (
            _name(key, eid, f, field(fields, f)) for f in ("event", "scan", "name")
        )
        if scan is not None:
            try:
                keys.parse_scan(scan)
            except ValueError as exc:
                raise CorruptEntry(str(exc), key=key, entry_id=eid) from None
        return cls(
            eid,
            event or "",
            scan,
            name,
            message(field(fields, "reason")),
            message(field(fields, "error")),
            fields,
        )


def log_entries(
    key: str, entries: Iterable[tuple[Any, dict]], skip: Callable[[str, str, str], None]
) -> Iterator[LogEntry]:
    """The entries of log ``key`` that decode, as they are iterated; ``skip(key, entry id,
    why)`` for the others."""
    for entry_id, fields in entries:
        try:
            yield LogEntry.parse(key, entry_id, fields)
        except CorruptEntry as exc:
            skip(key, text(entry_id), str(exc))


def warn_skipped(key: str, entry_id: str, why: str) -> None:
    """The one log line for a corrupt entry a read leaves out."""
    log.warning("databus: skipped %s entry %s: %s", key, entry_id, why)


def _decoded(key: str, name: str, raw: Any, convert: Callable[[Any], Any]) -> Any:
    """``convert(raw)`` of field ``name`` of record ``key``; ``CorruptEntry`` if it fails."""
    try:
        return convert(raw)
    except Exception as exc:
        why = str(exc) or type(exc).__name__
        raise CorruptEntry(
            f"scan record {key}: field {name!r} = {raw!r:.60} cannot be read ({why}); {_FIX}",
            key=key,
            entry_id=name,
        ) from None


def _info(raw: bytes) -> dict[str, Any]:
    info = unpack_meta(raw)
    if not isinstance(info, dict):
        raise ValueError(f"a map was expected, not {type(info).__name__}")
    return info


def _time(raw: bytes) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("not a finite time")
    return value


def _state(raw: bytes) -> ScanState:
    return ScanState(int(raw))


def scan_state(key: str, raw: bytes | None) -> ScanState:
    """The ``state`` field of scan record ``key`` (CREATED if absent); ``CorruptEntry``."""
    return ScanState.CREATED if raw is None else _decoded(key, "state", raw, _state)


def _end_reason(raw: Any) -> EndReason | str | None:
    reason = message(raw)
    try:
        return None if reason is None else EndReason(reason)
    except ValueError:
        return reason


@dataclasses.dataclass(frozen=True)
class ScanRecord:
    """A scan record (its hash) decoded: ``number``, ``info`` (a dict), ``state``,
    ``end_reason``, ``error``, and ``created``/``ended`` (unix s, None if absent), checked
    here so that whoever reads them from the record cannot fail."""

    number: int
    info: dict[str, Any]
    state: ScanState
    end_reason: EndReason | str | None
    error: str | None
    created: float | None
    ended: float | None

    @classmethod
    def parse(cls, key: str, record: dict) -> ScanRecord:
        """Decode the HGETALL of scan ``key``; ``CorruptEntry`` names the bad field."""

        def get(name: str, convert: Callable[[Any], Any], default: Any = None) -> Any:
            raw = field(record, name)
            return default if raw is None else _decoded(key, name, raw, convert)

        return cls(
            number=get("number", int, 0),
            info=get("info", _info, {}),
            state=get("state", _state, ScanState.CREATED),
            end_reason=_end_reason(field(record, "end_reason")),
            error=message(field(record, "error")),
            created=get("created", _time),
            ended=get("ended", _time),
        )


def _descriptor(name: str, raw: bytes) -> Descriptor:
    desc = Descriptor.from_meta(raw)
    if desc.name != name:
        raise ValueError(f"it describes channel {desc.name!r}")
    return desc


def descriptor(key: str, name: str, raw: bytes | None) -> Descriptor:
    """Channel ``name``'s descriptor, field ``ch:<name>`` of scan record ``key``."""
    if raw is None:
        raise CorruptEntry(
            f"scan record {key}: no descriptor for channel {name!r}", key=key, entry_id=name
        )
    return _decoded(key, f"ch:{name}", raw, lambda raw: _descriptor(name, raw))


def descriptors(key: str, record: dict) -> dict[str, Descriptor]:
    """Every channel descriptor of scan record ``key`` that decodes, by channel name; one
    warning for each that does not."""
    found = {}
    for raw_field, raw in record.items():
        name = message(raw_field) or ""
        if not name.startswith("ch:"):
            continue
        try:
            found[name[3:]] = descriptor(key, name[3:], raw)
        except CorruptEntry as exc:
            warn_skipped(key, name, str(exc))
    return found
