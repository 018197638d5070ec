"""Classic walks (BLISS's ``walk``, ``walk_from_last``, ``walk_events``,
``walk_on_new_events`` and ``.iterator``) for session and scan nodes.

``Walks`` gathers the options of every walk in one place (``WalkOptions``); where a walk
starts is the node's business (its ``_walk_start``: a session walk reads the session log,
a scan walk adds its one scan); ``walk_loop`` then feeds the ``Assembler`` one blocking
XREAD after another on a connection of its own, the same loop for both.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypedDict

from ._assembler import Assembler, Filter, make_filter
from ._encoding import Entries, parse_id, text
from ._events import Event, EventType
from ._store import commands
from ._store.schema import LogEvent, warn_skipped
from ._store.wire import ReadLink
from ._timing import milliseconds

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._bus import Bus

#: Longest a walk's XREAD blocks before it checks its stop handler (seconds).
BLOCK_S = 0.1
#: How often an idle walk checks that the scans it waits for still exist (seconds).
LOST_CHECK_S = 5.0
#: The largest sequence number of a stream entry ID.
MAX_SEQ = "18446744073709551615"


def xrange_entries(bus: Bus, key: str, start: str = "-") -> Entries:
    """Entries of stream ``key`` from ``start`` on, as the server sends them."""
    entries: Entries = bus.wire.call(*commands.entries(key, start))
    return entries


def scan_records(bus: Bus, scan_keys: Iterable[str]) -> dict[str, dict]:
    """The HGETALL of each scan key; empty, with a warning, for a key that holds
    something other than a hash."""
    scan_keys = list(scan_keys)
    if not scan_keys:
        return {}
    replies = bus.wire.run_each([commands.record(key) for key in scan_keys])
    records = {}
    for key, reply in zip(scan_keys, replies, strict=True):
        if isinstance(reply, Exception):
            warn_skipped(key, "-", f"not a scan record ({reply})")
        records[key] = {} if isinstance(reply, Exception) else reply
    return records


def id_before(entry_id: str) -> str:
    """The stream ID just before ``entry_id`` (an XREAD from it returns ``entry_id``)."""
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{MAX_SEQ}"


class StopHandler:
    """Ends a walk gracefully from another thread or greenlet: ``stop()``, and the walk
    returns after its current read (within ``BLOCK_S`` seconds)."""

    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def _stream_id(first_index: Any) -> str | None:
    """BLISS's ``first_index`` as a stream ID: an int (milliseconds since the epoch, 0 for
    the beginning), an ID ``"<ms>-<seq>"`` (str or bytes) or None (now)."""
    if first_index is None:
        return None
    try:
        if isinstance(first_index, int) and not isinstance(first_index, bool):
            ms, seq = first_index, 0
        else:
            raw = text(first_index)
            ms, seq = parse_id(raw) if "-" in raw else (int(raw), 0)
    except (TypeError, ValueError, AttributeError):
        ms = seq = -1
    if ms < 0 or seq < 0:
        raise ValueError(
            f"first_index={first_index!r}: give a stream ID (milliseconds since the epoch "
            f"as an int, or '<ms>-<seq>'), 0 for the beginning, or None for now"
        )
    return f"{ms}-{seq}"


class WalkArgs(TypedDict, total=False):
    """The keyword arguments every classic walk takes (see ``Walks``)."""

    wait: bool
    stop_handler: StopHandler | None
    started_event: Any
    exclude_children: Any
    exclude_existing_children: Any
    filter: Any


@dataclasses.dataclass(frozen=True)
class WalkOptions:
    """The arguments of a classic walk, checked. ``first_index`` is the stream ID after
    which a node counts as new (None: from now); ``from_last`` keeps, of what exists when
    the walk starts, only the last node; ``existing`` is ``exclude_existing_children`` as
    given (None, a bool or a BLISS type filter)."""

    include_filter: Any
    wait: bool
    stop_handler: StopHandler | None
    started_event: Any
    exclude_children: Any
    existing: Any
    first_index: str | None
    from_last: bool = False

    @classmethod
    def of(
        cls,
        include_filter: Any,
        first_index: Any,
        *,
        from_last: bool = False,
        wait: bool = True,
        stop_handler: StopHandler | None = None,
        started_event: Any = None,
        exclude_children: Any = None,
        exclude_existing_children: Any = None,
        filter: Any = None,
    ) -> WalkOptions:
        """Options from a walk's arguments, with their defaults; ``filter=`` (deprecated)
        still works alone, and with ``include_filter=`` is a ValueError, as in BLISS."""
        if filter is not None:
            if include_filter is not None:
                raise ValueError(
                    "filter= and include_filter= given together: filter= is the deprecated "
                    "name of include_filter=, use include_filter= only"
                )
            warnings.warn(
                "filter= is deprecated, use include_filter=", DeprecationWarning, stacklevel=3
            )
            include_filter = filter
        return cls(
            include_filter,
            wait,
            stop_handler,
            started_event,
            exclude_children,
            exclude_existing_children,
            _stream_id(first_index),
            from_last,
        )

    def excluded(self) -> Filter | None:
        """``exclude_children`` as a node predicate (None: nothing is excluded)."""
        return _predicate(self.exclude_children)

    def excluded_existing(self, default: Any = None) -> Filter | None:
        """``exclude_existing_children`` as a node predicate, ``default`` when it is not
        given (None: nothing is excluded)."""
        return _predicate(default if self.existing is None else self.existing)


def _predicate(value: Any) -> Filter | None:
    """A BLISS exclusion filter (a node type, several, a callable) as a node predicate;
    True takes every node, None and False none (then None)."""
    if value is None or value is False:
        return None
    return (lambda node: True) if value is True else make_filter(value)


@dataclasses.dataclass
class WalkStart:
    """Where a walk starts: its assembler, the events of what it joined at once, and
    whether it ends with the scans it follows (a scan walk) or waits for new ones."""

    asm: Assembler
    events: list[Event]
    bounded: bool


class Walks:
    """BLISS's walks, for the nodes that have children (sessions and scans). Every walk
    takes ``include_filter`` (a node type, several, or a callable: whose events are
    yielded) and the keywords of ``WalkArgs``: ``wait`` (default True; False: return
    after what exists now), ``stop_handler``, ``started_event`` (set once the walk
    reads), ``exclude_children`` (nodes whose children are not walked),
    ``exclude_existing_children`` (the same for nodes that exist when the walk starts:
    see each node's ``_walk_start``) and ``filter`` (the deprecated name of
    ``include_filter``)."""

    bus: Bus
    name: str

    def walk(
        self, include_filter: Any = None, *, first_index: Any = 0, **options: Unpack[WalkArgs]
    ) -> Iterator[Any]:
        """The nodes below this one, from the first (or those created after the stream
        ID ``first_index``; None: from now), then new ones as they come."""
        opts = WalkOptions.of(include_filter, first_index, **options)
        return _nodes(walk_loop(self, opts, data=False))

    def walk_from_last(
        self, include_filter: Any = None, *, include_last: bool = True, **options: Unpack[WalkArgs]
    ) -> Iterator[Any]:
        """Like ``walk``, but only the last node that exists now (``include_last``; with
        ``include_filter``, the last one it takes), then the new ones."""
        first_index = 0 if include_last else None
        opts = WalkOptions.of(include_filter, first_index, from_last=include_last, **options)
        return _nodes(walk_loop(self, opts, data=False))

    def walk_events(
        self, include_filter: Any = None, *, first_index: Any = 0, **options: Unpack[WalkArgs]
    ) -> Iterator[Event]:
        """The events below this node: NEW_NODE, PREPARED_SCAN, NEW_DATA, GAP, END_SCAN,
        from the first node (or those created after ``first_index``; None: from now)."""
        return walk_loop(self, WalkOptions.of(include_filter, first_index, **options), data=True)

    def walk_on_new_events(
        self, include_filter: Any = None, **options: Unpack[WalkArgs]
    ) -> Iterator[Event]:
        """``walk_events`` from now on. Unlike BLISS, a scan running when the walk starts
        is delivered whole (NEW_NODE, PREPARED_SCAN, its data from index 0, END_SCAN)."""
        return self.walk_events(include_filter, first_index=None, **options)

    @property
    def iterator(self) -> Walks:
        """The node itself (BLISS's deprecated ``node.iterator``, whose walks it has)."""
        warnings.warn(
            "node.iterator is deprecated, call the walks on the node itself",
            FutureWarning,
            stacklevel=2,
        )
        return self

    def _walk_start(self, opts: WalkOptions, data: bool) -> WalkStart:
        raise NotImplementedError


def _nodes(events: Iterator[Event]) -> Iterator[Any]:
    return (event.node for event in events if event.type is EventType.NEW_NODE)


def _last_node(events: list[Event]) -> list[Event]:
    """Of the events a ``walk_from_last`` found at its start, the last NEW_NODE."""
    nodes = [e for e in events if e.type is EventType.NEW_NODE]
    return nodes[-1:]


def walk_loop(root: Walks, opts: WalkOptions, *, data: bool) -> Iterator[Event]:
    """The events of a walk: its start (``root._walk_start``), then one XREAD after another
    on its own connection (``wire.ReadLink``, which reconnects), fed to the assembler. A scan
    walk returns once its scan has ended; ``wait`` False returns after what exists."""
    start = root._walk_start(opts, data)
    link = ReadLink(root.bus.wire, f"walk of {root.name}", revive=root.bus.revive_server)
    try:
        first = start.events
        if opts.from_last:
            first = _last_node(first + list(_reads(root.bus, link, start, opts, None)))
        if opts.started_event is not None:
            opts.started_event.set()
        yield from first
        block_ms = milliseconds(BLOCK_S) if opts.wait else None
        yield from _reads(root.bus, link, start, opts, block_ms)
    finally:
        link.close()


def _reads(
    bus: Bus, link: ReadLink, start: WalkStart, opts: WalkOptions, block_ms: int | None
) -> Iterator[Event]:
    """Events of one XREAD after another until the walk is stopped, a bounded walk's
    scans have ended, or (``block_ms`` None) a read finds nothing new."""
    asm, stop_handler = start.asm, opts.stop_handler
    idle_since = time.monotonic()
    while not (stop_handler is not None and stop_handler.stopped):
        if start.bounded and not asm.active:
            return
        reply = link.read(asm.streams(), asm.read_count(), block_ms)
        if reply is None:
            continue  # the server was lost: read again once it is back
        now = time.monotonic()
        if link.reconnected:
            # Give publishers time to restore what a server restarted empty lost
            # before taking their scans' missing keys for a death.
            idle_since = now
        if not reply:
            if block_ms is None:
                return
            if asm.active and (asm.replaying or now - idle_since > LOST_CHECK_S):
                idle_since = now
                yield from _check_lost(bus, asm)
            continue
        idle_since = now
        records = scan_records(bus, asm.records_needed(reply))
        yield from asm.feed(reply, records)


def _check_lost(bus: Bus, asm: Assembler) -> Iterator[Event]:
    """End the followed scans whose keys are gone: evicted ones (the session log says so)
    with GAP events for what was not read, the others as lost."""
    scans = asm.unfinished()
    exist = bus.wire.run([commands.exists(key) for key in scans])
    gone = [key for key, exists in zip(scans, exist, strict=True) if not exists]
    if not gone:
        return
    evicted = {
        e.scan: e
        for e in asm.log_entries(asm.session_log, xrange_entries(bus, asm.session_log))
        if e.event == LogEvent.EVICTED and e.scan
    }
    for key in gone:
        if key in evicted:
            yield from asm.evicted(evicted[key])
        else:
            yield from asm.lost(
                key, "the scan's keys expired before it ended: its publisher stopped"
            )
