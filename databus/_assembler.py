"""Turns log and stream entries into events in the promised order. Pure: it reads no
Redis; the walk loop (``subscribe.py``) feeds it what XREAD returned and the scan records
it asked for, and asks it which streams to read next.

Per scan, the order is guaranteed by construction::

    session log "created"  -> NEW_NODE(scan)           start reading the scan log
    scan log "channel"     -> NEW_NODE(channel)
    scan log "prepared"    -> PREPARED_SCAN            start reading the channel streams
    channel entries        -> NEW_DATA (one per channel and batch, contiguous points)
    gap markers            -> GAP (points this reader will never get, in index order)
    session log "evicted"  -> GAP for what was not read, then END_SCAN (the memory guard
                              deleted the ended scan before this reader finished it)
    scan log "ended"  and every followed channel sealed
                           -> END_SCAN(ScanEnd)        stop reading the scan's streams

Channel streams are read only once the scan is prepared (or started, or ended), so no
data can come before PREPARED_SCAN, and END_SCAN waits for each channel's seal, so no data
can come after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ._encoding import (
    GAP_EVICTED,
    SEAL_ID,
    Block,
    Descriptor,
    Entries,
    Gap,
    decode_entries,
    parse_id,
    text,
)
from ._errors import CorruptEntry
from ._events import DataGap, Event, EventData, EventType, ScanEnd
from ._states import EndReason
from ._store import keys
from ._store.schema import (
    LogEntry,
    LogEvent,
    descriptor,
    evicted_channels,
    log_entries,
    raw_descriptor,
    warn_skipped,
)

Filter = Callable[[Any], bool]

START = "0-0"
#: Bytes one XREAD should bring back at most: larger replies cost fresh memory (page
#: faults) in the reader; 8 entries of 2 MiB frames read 3x faster than 64.
READ_BUDGET = 16 * 2**20
#: Entries per stream and XREAD when the points followed are small.
READ_COUNT_MAX = 256


def make_filter(include: str | Iterable[str] | Filter | None) -> Filter:
    """A node predicate from BLISS' ``include_filter``: None (everything), a node type,
    several types, or a callable taking the node."""
    if include is None:
        return lambda node: True
    if callable(include):
        return include
    wanted = {include} if isinstance(include, str) else set(include)
    return lambda node: node.type in wanted


@dataclasses.dataclass
class _Channel:
    node: Any
    desc: Descriptor
    key: str
    wanted: bool  # its events are yielded (NEW_DATA only if also followed)
    info: dict[str, Any]  # the descriptor, as NEW_DATA carries it
    mapped: Callable[[EventData], EventData]  # NEW_DATA's data as yielded
    sealed: bool = False
    total: int | None = None
    next: int = 0  # index after the last point delivered or reported missing


@dataclasses.dataclass
class _Scan:
    node: Any
    wanted: bool
    descend: bool
    since: tuple[int, int] = (0, 0)  # channels declared by log entries up to it are left out
    prepared: bool = False
    reading: bool = False  # the channel streams are being read
    end: ScanEnd | None = None
    channels: dict[str, _Channel] = dataclasses.field(default_factory=dict)


class Assembler:
    """Event assembly for one walk over one session.

    make_scan(key, record) and make_channel(scan_node, descriptor) build nodes; ``wants``
    decides which nodes' events are yielded (``include_filter``), ``descend`` whether a
    scan's channels are walked (``exclude_children``); ``data`` False skips channel
    streams (walking nodes only). ``on_record(scan_node, record)`` is told a scan's record
    as read again (its channels and info changed; ``CorruptEntry`` if it does not decode)
    and ``on_end(scan_node, end)`` how a scan ended, so nodes stay current;
    ``map_data(channel_node)`` gives the function its NEW_DATA's ``EventData`` goes through.

    Corrupt entries are skipped, each recorded once in ``skipped`` and logged once: log
    entries that do not decode, and the scans whose record does not (``make_scan`` raised
    ``CorruptEntry``); the walk goes on with everything else.
    """

    def __init__(
        self,
        session_log: str,
        *,
        make_scan: Callable[[str, dict], Any],
        make_channel: Callable[[Any, Descriptor], Any],
        wants: Filter,
        descend: Filter,
        data: bool = True,
        on_record: Callable[[Any, dict], None] = lambda node, record: None,
        on_end: Callable[[Any, ScanEnd], None] = lambda node, end: None,
        map_data: Callable[[Any], Callable[[EventData], EventData]] = lambda node: _unchanged,
    ) -> None:
        self.session_log = session_log
        self._map_data = map_data
        self._on_record = on_record
        self._on_end = on_end
        self._make_scan = make_scan
        self._make_channel = make_channel
        self._wants = wants
        self._descend = descend
        self._data = data
        #: Scans that had ended when the walk started: replayed one after the other, so a
        #: replay reads as a tree (scan 1 and its channels, then scan 2...).
        self.sequential: set[str] = set()
        self._held: str | None = None
        self._scans: dict[str, _Scan] = {}
        self._by_log: dict[str, str] = {}  # scan log key -> scan key
        self._by_channel: dict[str, tuple[str, str]] = {}  # stream key -> (scan, channel)
        self.cursors: dict[str, str] = {session_log: START}
        #: Corrupt entries skipped so far, as (key, entry id, message).
        self.skipped: list[tuple[str, str, str]] = []
        self._skipped_set: set[tuple[str, str, str]] = set()

    # ------------------------------------------------------------------ queries

    def streams(self) -> dict[str, str]:
        """Stream keys to read next, with the ID after which to read each."""
        if self.replaying:
            return {k: v for k, v in self.cursors.items() if k != self.session_log}
        return dict(self.cursors)

    def read_count(self) -> int:
        """XREAD COUNT for the streams followed now: about ``READ_BUDGET`` bytes, and at
        least two whole points of any split channel."""
        largest = max(
            (self._scans[s].channels[c].desc for s, c in self._by_channel.values()),
            key=lambda d: min(d.point_nbytes, d.entry_bytes),
            default=None,
        )
        if largest is None:
            return READ_COUNT_MAX
        entry = max(1, min(largest.point_nbytes, largest.entry_bytes))
        return max(2 * largest.parts, min(READ_COUNT_MAX, READ_BUDGET // entry))

    @property
    def active(self) -> int:
        """Scans followed that have not ended yet."""
        return len(self._scans)

    @property
    def replaying(self) -> bool:
        """An ended scan is being replayed (the session log waits until it is read whole):
        its keys missing can only mean it was evicted or has expired."""
        return self._held in self._scans

    def unfinished(self) -> list[str]:
        """Keys of followed scans that have not ended."""
        return list(self._scans)

    def records_needed(self, reply: Iterable[tuple[str, Entries]]) -> set[str]:
        """Scan keys whose record (HGETALL) ``feed`` will need for this reply."""
        needed = set()
        for key, entries in reply:
            if key == self.session_log:
                for entry in self.log_entries(key, entries):
                    if self._unread_record(entry, {}):
                        needed.add(entry.scan or "")
                        if entry.scan in self.sequential:
                            break  # ``feed`` may stop there, to replay that scan whole
            elif key in self._by_log and any(
                e.event in (LogEvent.CHANNEL, LogEvent.INFO) for e in self.log_entries(key, entries)
            ):
                needed.add(self._by_log[key])
        return needed

    def _unread_record(self, entry: LogEntry, records: dict[str, dict]) -> bool:
        """``entry`` (of the session log) starts following a scan whose record is not in
        ``records``: only the records up to the first scan to replay are read at a time."""
        return (
            entry.event == LogEvent.CREATED
            and entry.scan is not None
            and entry.scan not in self._scans
            and entry.scan not in records
        )

    def log_entries(self, key: str, entries: Entries) -> Iterator[LogEntry]:
        """The entries of log ``key`` that decode, as they are iterated; the others are
        skipped."""
        return log_entries(key, entries, self._skip)

    # ------------------------------------------------------------------ feeding

    def add_scan(
        self,
        key: str,
        record: dict | None,
        entry_id: str = "-",
        *,
        since: str = START,
        unless: Filter | None = None,
    ) -> list[Event]:
        """Follow the scan ``key`` from its start (a new scan, or one running at walk
        start); ``record`` is its HGETALL, None or empty if it has expired. A record that
        does not decode skips the scan (``entry_id``: its session-log entry). Channels
        declared by scan-log entries up to the ID ``since`` are left out; a scan node that
        ``unless`` accepts is not followed. A scan in ``sequential`` is replayed whole
        before the session log is read on."""
        if key in self._scans or not record:
            return []
        try:
            node = self._make_scan(key, record)
        except CorruptEntry as exc:
            self._skip(self.session_log, entry_id, f"scan not followed: {exc}")
            return []
        if unless is not None and unless(node):
            return []
        scan = _Scan(node, wanted=self._wants(node), descend=self._descend(node))
        if not scan.wanted and not scan.descend:
            return []
        scan.since = parse_id(since)
        if key in self.sequential:
            self._held = key
        self._scans[key] = scan
        log_key = keys.scan_log(key)
        self._by_log[log_key] = key
        self.cursors[log_key] = START
        return [Event(EventType.NEW_NODE, node)] if scan.wanted else []

    def feed(self, reply: Iterable[tuple[str, Entries]], records: dict[str, dict]) -> list[Event]:
        """Events for one XREAD reply. ``records`` holds the HGETALL of every scan that
        ``records_needed`` named; the session log is taken up to a scan whose record is
        not there, and read again from it next time."""
        order = {self.session_log: 0}
        batches = sorted(
            ((k if isinstance(k, str) else k.decode(), e) for k, e in reply),
            key=lambda item: order.get(item[0], 1 if item[0] in self._by_log else 2),
        )
        events: list[Event] = []
        for key, entries in batches:
            if not entries:
                continue
            if key == self.session_log:
                events += self._session_entries(entries, records)
            elif key in self._by_log:
                events += self._scan_entries(self._by_log[key], entries, records)
            elif key in self._by_channel:  # (not if this reply's session log ended it)
                events += self._channel_entries(key, entries)
        return events

    def lost(self, scan_key: str, why: str) -> list[Event]:
        """End a scan whose keys are gone before it ended (its publisher died)."""
        scan = self._scans.get(scan_key)
        if scan is None:
            return []
        self._end(scan, ScanEnd(EndReason.LOST, why))
        for channel in scan.channels.values():
            channel.sealed = True
        return self._maybe_end(scan_key, scan)

    def evicted(self, entry: LogEntry) -> list[Event]:
        """End a scan the memory guard deleted, from its session log's ``evicted`` entry:
        a GAP for every point of each followed channel this reader has not had, then
        END_SCAN with the way the scan ended."""
        scan_key = entry.scan or ""
        scan = self._scans.get(scan_key)
        if scan is None:
            return []
        try:
            channels = evicted_channels(entry)
        except Exception as exc:
            self._skip(self.session_log, entry.id, f"bad 'evicted' entry of {scan_key}: {exc}")
            return self.lost(scan_key, "the memory guard deleted it (its totals are unreadable)")
        events: list[Event] = []
        for name, (_, raw) in channels.items():  # channels declared after the walk's last read
            if name not in scan.channels:
                events += self._new_channel(scan, name, raw, (self.session_log, entry.id))
        if any(total for total, _ in channels.values()):
            events += self._prepared(scan)
        events += self._start_reading(scan)
        for channel in scan.channels.values():
            total = channels.get(channel.desc.name, (channel.next, b""))[0]
            if channel.key in self._by_channel and total > channel.next:
                gap = DataGap(channel.next, total - channel.next, GAP_EVICTED)
                events.append(Event(EventType.GAP, channel.node, gap))
                channel.next = total
            channel.sealed = True
        self._end(scan, _logged_end(entry))
        return events + self._maybe_end(scan_key, scan)

    def _session_entries(self, entries: Entries, records: dict[str, dict]) -> list[Event]:
        events: list[Event] = []
        for entry_id, fields in entries:
            if self.replaying:
                break  # the rest is read again once the replayed scan has ended
            entry = self._entry(self.session_log, entry_id, fields)
            if entry is not None and self._unread_record(entry, records):
                break  # read again, with its record, next time
            self.cursors[self.session_log] = text(entry_id)
            if entry is None or entry.scan is None:
                continue
            if entry.event == LogEvent.CREATED:
                events += self.add_scan(entry.scan, records[entry.scan], entry.id)
            elif entry.event == LogEvent.EVICTED:
                events += self.evicted(entry)
        return events

    def _scan_entries(
        self, scan_key: str, entries: Entries, records: dict[str, dict]
    ) -> list[Event]:
        scan = self._scans[scan_key]
        log_key = keys.scan_log(scan_key)
        events: list[Event] = []
        for entry_id, fields in entries:
            self.cursors[log_key] = text(entry_id)
            entry = self._entry(log_key, entry_id, fields)
            if entry is None:
                continue
            what = entry.event
            record = records.get(scan_key)
            if what in (LogEvent.CHANNEL, LogEvent.INFO) and record:
                self._update_node(scan, record, entry)
            if what == LogEvent.CHANNEL:
                name = entry.name or ""
                raw = raw_descriptor(record or {}, name)
                events += self._new_channel(scan, name, raw, (log_key, entry.id))
            elif what in (LogEvent.PREPARED, LogEvent.STARTED):
                events += self._prepared(scan)
            elif what == LogEvent.ENDED:
                events += self._start_reading(scan)
                self._end(scan, _logged_end(entry))
                events += self._maybe_end(scan_key, scan)
            elif what not in (
                LogEvent.CREATED,
                LogEvent.INFO,
                LogEvent.GAP,
                LogEvent.SEALED,
            ):  # info is read above; gaps come as markers in the streams, seals as the
                # streams' last entries
                self._skip(log_key, entry_id, f"unknown log event {what!r}")
        return events

    def _entry(self, key: str, entry_id: Any, fields: dict) -> LogEntry | None:
        """Entry ``entry_id`` of log ``key`` decoded; None (and skipped) if it is corrupt."""
        try:
            return LogEntry.parse(key, entry_id, fields)
        except CorruptEntry as exc:
            self._skip(key, entry_id, str(exc))
            return None

    def _update_node(self, scan: _Scan, record: dict, entry: LogEntry) -> None:
        """The scan node's channels and info as of now; kept as they were (and the entry
        noted as skipped) if the record no longer decodes."""
        try:
            self._on_record(scan.node, record)
        except CorruptEntry as exc:
            self._skip(keys.scan_log(scan.node.db_name), entry.id, f"record not re-read: {exc}")

    def _new_channel(
        self, scan: _Scan, name: str, raw: bytes | None, source: tuple[str, str]
    ) -> list[Event]:
        """Follow channel ``name`` of ``scan``, declared by the log entry ``source`` (log
        key, entry id), with its packed descriptor ``raw``; skipped if that does not
        decode."""
        if not scan.descend or name in scan.channels or parse_id(source[1]) <= scan.since:
            return []
        try:
            desc = descriptor(scan.node.db_name, name, raw)
        except CorruptEntry as exc:
            self._skip(*source, str(exc))
            return []
        node = self._make_channel(scan.node, desc)
        channel = _Channel(
            node,
            desc,
            keys.channel(scan.node.db_name, name),
            self._wants(node),
            desc.as_dict(),
            self._map_data(node),
        )
        scan.channels[name] = channel
        if scan.reading:
            self._follow(scan, channel)
        return [Event(EventType.NEW_NODE, node)] if channel.wanted else []

    def _prepared(self, scan: _Scan) -> list[Event]:
        if scan.prepared:
            return []
        scan.prepared = True
        events = [Event(EventType.PREPARED_SCAN, scan.node)] if scan.wanted else []
        return events + self._start_reading(scan)

    def _start_reading(self, scan: _Scan) -> list[Event]:
        if not scan.reading:
            scan.reading = True
            for channel in scan.channels.values():
                self._follow(scan, channel)
        return []

    def _follow(self, scan: _Scan, channel: _Channel) -> None:
        if self._data and channel.wanted:
            self.cursors[channel.key] = START
            self._by_channel[channel.key] = (scan.node.db_name, channel.desc.name)
        else:
            channel.sealed = True  # nothing to wait for

    def _channel_entries(self, key: str, entries: Entries) -> list[Event]:
        scan_key, name = self._by_channel[key]
        scan = self._scans[scan_key]
        channel = scan.channels[name]
        desc = channel.desc
        items = self._decode(channel, entries)
        self.cursors[key] = self._cursor_after(desc, entries)
        events = []
        for item in _merge(items):
            end = item.first + item.count
            if isinstance(item, Block):
                data = EventData(item.first, item.data, channel.info, item.count)
                events.append(Event(EventType.NEW_DATA, channel.node, channel.mapped(data)))
            elif end > channel.next:  # only what this reader has not had
                first = max(item.first, channel.next)
                events.append(
                    Event(EventType.GAP, channel.node, DataGap(first, end - first, item.reason))
                )
            channel.next = max(channel.next, end)
        if channel.sealed:
            del self.cursors[key]
            del self._by_channel[key]
            events += self._maybe_end(scan_key, scan)
        return events

    def _decode(self, channel: _Channel, entries: Entries) -> list[Block | Gap]:
        try:
            items = list(decode_entries(channel.desc, channel.key, entries))
        except CorruptEntry:
            items = []
            for entry in entries:  # again one by one, to skip only what is corrupt
                try:
                    items += decode_entries(channel.desc, channel.key, [entry])
                except CorruptEntry as exc:
                    self._skip(channel.key, entry[0], str(exc))
        decoded: list[Block | Gap] = []
        for item in items:
            if isinstance(item, int):
                channel.sealed, channel.total = True, item
            else:
                decoded.append(item)
        return decoded

    @staticmethod
    def _cursor_after(desc: Descriptor, entries: Entries) -> str:
        last = text(entries[-1][0])
        if desc.parts > 1 and last != SEAL_ID.decode():
            index, part = parse_id(last)
            if part < desc.parts:
                return f"{index}-0"  # read the incomplete point again, whole
        return last

    def _end(self, scan: _Scan, end: ScanEnd) -> None:
        scan.end = end
        self._on_end(scan.node, end)

    def _maybe_end(self, scan_key: str, scan: _Scan) -> list[Event]:
        if scan.end is None or not all(c.sealed for c in scan.channels.values()):
            return []
        del self._scans[scan_key]
        log_key = keys.scan_log(scan_key)
        self._by_log.pop(log_key, None)
        self.cursors.pop(log_key, None)
        for channel in scan.channels.values():
            self.cursors.pop(channel.key, None)
            self._by_channel.pop(channel.key, None)
        return [Event(EventType.END_SCAN, scan.node, scan.end)] if scan.wanted else []

    def _skip(self, key: str, entry_id: Any, message: str) -> None:
        """Note a corrupt entry left out, once per walk (logs are read again on replay)."""
        skipped = (key, text(entry_id), message)
        if skipped not in self._skipped_set:
            self._skipped_set.add(skipped)
            self.skipped.append(skipped)
            warn_skipped(*skipped)


def _unchanged(data: EventData) -> EventData:
    return data


def _logged_end(entry: LogEntry) -> ScanEnd:
    """How a scan ended, from the ``reason`` and ``error`` of a log entry (its scan log's
    ``ended``, or the session log's ``evicted``)."""
    return ScanEnd(entry.reason or "finished", entry.error)


def _merge(items: list[Block | Gap]) -> list[Block | Gap]:
    """Join contiguous blocks into one per run; a gap ends a run and is kept as it is."""
    runs: list[list[Any]] = []
    for item in items:
        last = runs[-1][-1] if runs else None
        contiguous = isinstance(last, Block) and last.first + last.count == item.first
        if isinstance(item, Block) and contiguous:
            runs[-1].append(item)
        else:
            runs.append([item])
    merged: list[Block | Gap] = []
    for run in runs:
        if len(run) == 1:
            merged.append(run[0])
        elif isinstance(run[0].data, np.ndarray):
            merged.append(
                Block(
                    run[0].first, np.concatenate([b.data for b in run]), sum(b.count for b in run)
                )
            )
        else:
            merged.append(
                Block(run[0].first, [x for b in run for x in b.data], sum(b.count for b in run))
            )
    return merged
