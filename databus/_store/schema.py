"""Scan records and log entries: what they hold, written and read in this one place.

Writing: the record's fields (``new_record``, ``end_record``, ``channel_field``...) and
the log entries (``created_entry``, ``ended_entry``...) as the mappings commands store.
Reading: what Redis holds may be corrupt (a bug, a hand-edited key, a hostile client). Parsing turns
undecodable data into one ``CorruptEntry`` naming the key, the entry or field, and why, so
a walk skips it with one log line and goes on, and a direct read (``bus.scan(key)``) says
what is wrong. Names and numbers (``event``, ``scan``, ``name``, ``number``, ``state``,
``info``, ``created``, ``ended``, descriptors) must decode; a scan's end ``reason`` and
``error`` are messages, whose undecodable bytes are kept as ``\\xNN`` escapes so that a
scan's end is never lost to its message.
"""

from __future__ import annotations

import dataclasses
import enum
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


class LogEvent(str, enum.Enum):
    """The ``event`` of a session-log, scan-log or control-stream entry."""

    CREATED = "created"  # session and scan log: the scan exists
    CHANNEL = "channel"  # scan log: a channel was declared (``name``)
    INFO = "info"  # scan log: the scan info changed
    PREPARED = "prepared"  # session and scan log: state changes
    STARTED = "started"
    ENDED = "ended"  # session and scan log: ``reason``, maybe ``error``
    SEALED = "sealed"  # scan log: every channel is sealed (its data complete), end to come
    GAP = "gap"  # scan log: points of ``channel`` lost by a server restarted empty
    EVICTED = "evicted"  # session log: the memory guard deleted the ended scan
    STOP = "stop"  # control stream: a reader asks the running scan to stop

    def __str__(self) -> str:
        return self.value


# ---------------------------------------------------------------- the scan record

#: Record fields set by the file writer: the file it writes the scan to, and when it is done.
FILE = "file"
WRITTEN = "written"


_CHANNEL = "ch:"


def channel_field(name: str) -> str:
    """The record field holding channel ``name``'s descriptor."""
    return f"{_CHANNEL}{name}"


def dropped_field(name: str) -> str:
    """The record field counting the points lossy channel ``name`` dropped."""
    return f"dropped:{name}"


def lost_field(name: str) -> str:
    """The record field listing the [first, stop) ranges of channel ``name`` that a server
    restarted empty lost."""
    return f"lost:{name}"


def dataset_field(name: str) -> str:
    """The record field naming the dataset the file writer stores channel ``name`` in."""
    return f"dataset:{name}"


def new_record(session: str, number: int, packed_info: bytes, created: float) -> dict[str, Any]:
    """The record of a scan just created."""
    return {
        "session": session,
        "number": number,
        "info": packed_info,
        "state": int(ScanState.CREATED),
        "created": created,
    }


def state_record(state: ScanState, *, restored: float | None = None) -> dict[str, Any]:
    """The fields of a state change (``restored``: the time the record was written again)."""
    fields: dict[str, Any] = {"state": int(state)}
    if restored is not None:
        fields["restored"] = restored
    return fields


def info_record(packed_info: bytes) -> dict[str, Any]:
    """The fields of new scan info."""
    return {"info": packed_info}


def end_record(
    reason: EndReason, ended: float, error: str | None, dropped: dict[str, int]
) -> dict[str, Any]:
    """The fields of a scan's end: reason, time, error text, and what lossy channels dropped."""
    fields: dict[str, Any] = {
        "state": int(ScanState.ENDED),
        "end_reason": reason.value,
        "ended": ended,
    }
    if error:
        fields["error"] = error
    for name, count in dropped.items():
        fields[dropped_field(name)] = count
    return fields


def file_record(path: str, datasets: dict[str, str]) -> dict[str, Any]:
    """The file writer's note: the file it writes, and the dataset of each channel."""
    return {FILE: path, **{dataset_field(name): where for name, where in datasets.items()}}


def written_record(when: float) -> dict[str, Any]:
    """The file writer's note that the scan's file is complete, at ``when``."""
    return {WRITTEN: when}


# ------------------------------------------------------------------- log entries


def _scan_fields(scan: str | None, number: int | None) -> dict[str, Any]:
    """What a session-log entry adds to a scan-log one: which scan it is about."""
    return {} if scan is None else {"scan": scan, "number": number}


def created_entry(
    created: float, scan: str | None = None, number: int | None = None
) -> dict[str, Any]:
    """A scan's first log entry (with ``scan``/``number``: its session-log entry)."""
    return {"event": LogEvent.CREATED.value, **_scan_fields(scan, number), "time": created}


def feed_entry(created: float, scan: str, session: str, number: int) -> dict[str, Any]:
    """Scan ``scan`` (``number`` of ``session``) was created: its entry in the feed."""
    return {**created_entry(created, scan, number), "session": session}


def sealed_record(when: float) -> dict[str, Any]:
    """The field saying every channel of the scan was sealed, at ``when``."""
    return {"sealed": when}


def sealed_entry(when: float) -> dict[str, Any]:
    """Every channel of the scan was sealed: its data is complete."""
    return {"event": LogEvent.SEALED.value, "time": when}


def channel_entry(name: str) -> dict[str, Any]:
    """Channel ``name`` was declared."""
    return {"event": LogEvent.CHANNEL.value, "name": name}


def info_entry() -> dict[str, Any]:
    """The scan info changed."""
    return {"event": LogEvent.INFO.value}


def state_entry(
    state: ScanState, when: float, scan: str | None = None, number: int | None = None
) -> dict[str, Any]:
    """The scan moved to ``state`` (PREPARED or STARTED)."""
    event = LogEvent(state.name.lower())
    return {"event": event.value, **_scan_fields(scan, number), "time": when}


def ended_entry(
    reason: EndReason,
    when: float,
    error: str | None = None,
    scan: str | None = None,
    number: int | None = None,
) -> dict[str, Any]:
    """The scan ended (the scan-log entry carries the ``error`` text)."""
    fields: dict[str, Any] = {"event": LogEvent.ENDED.value, "reason": reason.value, "time": when}
    if error:
        fields["error"] = error
    return {**fields, **_scan_fields(scan, number)}


def lost_entry(channel: str, first: int, stop: int) -> dict[str, Any]:
    """Points [first, stop) of ``channel`` were lost by a server restarted empty."""
    return {"event": LogEvent.GAP.value, "channel": channel, "first": first, "stop": stop}


def evicted_entry(
    scan: str,
    number: int,
    when: float,
    reason: str | None,
    error: bytes | None,
    packed_channels: bytes,
) -> dict[str, Any]:
    """The memory guard deleted ended scan ``scan``: how it ended, and each channel's total
    and descriptor (``packed_channels``), so walks can report what they will not read."""
    fields: dict[str, Any] = {
        "event": LogEvent.EVICTED.value,
        **_scan_fields(scan, number),
        "time": when,
        "reason": reason,
        "channels": packed_channels,
    }
    if error is not None:
        fields["error"] = error
    return fields


def recorded_end(record: dict) -> tuple[str | None, bytes | None]:
    """How scan record ``record`` (an HGETALL) says the scan ended: its end reason
    ("finished" if none is recorded) and its error as stored (None if none)."""
    reason = field(record, "end_reason")
    return message(b"finished" if reason is None else reason), field(record, "error")


def stop_entry(reason: str, when: float) -> dict[str, Any]:
    """A request, on the scan's control stream, that the running scan stop."""
    return {"event": LogEvent.STOP.value, "reason": reason, "time": when}


def evicted_channels(entry: LogEntry) -> dict[str, tuple[int, bytes]]:
    """What an ``evicted`` entry says of each channel: its total and packed descriptor.
    Raises (ValueError, TypeError...) if the entry does not hold that."""
    packed = unpack_meta(field(entry.fields, "channels"))
    return {str(name): (int(v[0]), v[1]) for name, v in packed.items()}


def stop_reason(fields: dict) -> str | None:
    """The reason of a control-stream entry if it asks the scan to stop, else None."""
    if message(field(fields, "event")) != LogEvent.STOP:
        return None
    return message(field(fields, "reason")) or "requested"


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


_MOVES = {
    LogEvent.PREPARED.value: ScanState.PREPARED,
    LogEvent.STARTED.value: ScanState.STARTED,
    LogEvent.ENDED.value: ScanState.ENDED,
}


def state_times(entries: Iterable[LogEntry]) -> dict[ScanState, float]:
    """When a scan moved to each state its log ``entries`` record (PREPARED, STARTED,
    ENDED), in unix seconds; an entry whose time does not decode is left out."""
    times = {}
    for entry in entries:
        state = _MOVES.get(entry.event)
        raw = field(entry.fields, "time")
        if state is not None and raw is not None:
            try:
                times[state] = _time(raw)
            except ValueError:
                continue
    return times


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
    ``end_reason``, ``error``, ``created``/``sealed``/``ended`` (unix s, None if
    absent), and the file writer's notes ``file`` (the path it writes the scan to) and
    ``written`` (when that file was complete), checked here so that whoever reads them
    from the record cannot fail."""

    number: int
    info: dict[str, Any]
    state: ScanState
    end_reason: EndReason | str | None
    error: str | None
    created: float | None
    ended: float | None
    sealed: float | None
    file: str | None = None
    written: float | None = None

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
            sealed=get("sealed", _time),
            file=message(field(record, FILE)),
            written=get(WRITTEN, _time),
        )


def ended_as_read(record: dict, reason: EndReason | str) -> dict:
    """``record`` (an HGETALL) as it reads once the scan has ended with ``reason``: what a
    walk learns from the scan log before it reads the record again."""
    return {**record, b"state": b"%d" % ScanState.ENDED, b"end_reason": str(reason).encode()}


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
    return _decoded(key, channel_field(name), raw, lambda raw: _descriptor(name, raw))


def raw_descriptor(record: dict, name: str) -> bytes | None:
    """Channel ``name``'s packed descriptor in ``record`` (an HGETALL); None if absent."""
    return field(record, channel_field(name))


def raw_descriptors(record: dict) -> dict[str, bytes]:
    """Every packed channel descriptor in ``record`` (an HGETALL) by channel name, as
    stored (names whose bytes are not UTF-8 escaped)."""
    found = {}
    for raw_field, raw in record.items():
        name = message(raw_field) or ""
        if name.startswith(_CHANNEL):
            found[name[len(_CHANNEL) :]] = raw
    return found


def descriptors(key: str, record: dict) -> dict[str, Descriptor]:
    """Every channel descriptor of scan record ``key`` that decodes, by channel name; one
    warning for each that does not."""
    found = {}
    for name, raw in raw_descriptors(record).items():
        try:
            found[name] = descriptor(key, name, raw)
        except CorruptEntry as exc:
            warn_skipped(key, channel_field(name), str(exc))
    return found


# ---------------------------------------------------------------- point shares


@dataclasses.dataclass(frozen=True)
class ShareItem:
    """One work item of a point share (written by ``commands.share_points``), or one result
    (``commands.share_result``): points ``first`` .. ``stop - 1`` of ``scan``; ``id`` is
    the entry ID; ``data`` what a member made of them (results only, None if nothing)."""

    id: str
    scan: str
    first: int
    stop: int
    data: bytes | None = None

    @classmethod
    def parse(cls, key: str, entry_id: bytes | str, fields: dict) -> ShareItem:
        """Decode an item of share ``key``; ``CorruptEntry`` if it names no scan or no
        range of points."""
        eid = text(entry_id)
        try:
            scan = text(field(fields, "s"))
            keys.parse_scan(scan)
            first, stop = int(field(fields, "a")), int(field(fields, "b"))
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise CorruptEntry(f"not a share item ({exc})", key=key, entry_id=eid) from None
        if not 0 <= first < stop:
            raise CorruptEntry(f"empty range {first}..{stop}", key=key, entry_id=eid)
        return cls(eid, scan, first, stop, field(fields, "r"))


def share_result(scan: str, first: int, stop: int, data: bytes | None) -> dict[str, Any]:
    """The fields of one result of a share (``ShareItem.parse`` reads them back)."""
    fields: dict[str, Any] = {"s": scan, "a": first, "b": stop}
    if data is not None:
        fields["r"] = data
    return fields
