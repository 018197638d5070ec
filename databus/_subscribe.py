"""The reader side: session, scan and channel nodes, channel data access, and where
each node's walk starts (the walks themselves are in ``_walks.py``).

A session walk finds scans in its session log (nothing scans the keyspace); a scan walk
follows its one scan. The node classes a session builds are hooks (``scan_class``,
``session_class``, ``_channel_class``, ``_event_data``), so a subclass of ``SessionNode``
(the BLISS namespace's) gets its own classes everywhere.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ._assembler import START, Assembler, make_filter
from ._encoding import (
    DATA,
    GAP_DROPPED,
    GAP_SERVER_LOST,
    Block,
    Descriptor,
    Entries,
    FileRef,
    Gap,
    decode_entries,
    is_seal,
    parse_id,
    points_through,
    text,
    whole_split_points,
)
from ._errors import (
    CorruptEntry,
    DataExpired,
    DataLost,
    EndOfData,
    NotYetPublished,
    ReadTimeout,
    ScanStateError,
    ServerUnavailable,
    UnknownScan,
)
from ._events import Event, EventData, ScanEnd
from ._states import EndReason, ScanState
from ._store import commands, keys
from ._store.schema import (
    LogEvent,
    ScanRecord,
    descriptors,
    ended_as_read,
    file_record,
    log_entries,
    message,
    state_times,
    warn_skipped,
    written_record,
)
from ._store.wire import AnyLink
from ._timing import milliseconds
from ._walks import (
    BLOCK_S,
    MAX_SEQ,
    WalkOptions,
    Walks,
    WalkStart,
    id_before,
    scan_records,
    xrange_entries,
)
from ._walks import (
    StopHandler as StopHandler,  # re-exported (node.py, databus)
)

if TYPE_CHECKING:
    from ._bus import Bus

log = logging.getLogger(__name__)


def _last_entry(bus: Bus, key: str) -> tuple[bytes, dict[bytes, bytes]] | None:
    """The last entry of stream ``key`` (None if empty or absent)."""
    last: Entries = bus.wire.call(*commands.entries_back(key))
    return last[0] if last else None


def _covers(decoded: list[Block | Gap | int], first: int, last: int) -> bool:
    """True if the blocks of ``decoded`` hold every point ``first`` .. ``last``."""
    end = first
    for block in decoded:
        if isinstance(block, Block) and block.first <= end < block.first + block.count:
            end = block.first + block.count
    return end > last


class NodeInfo(dict):
    """A node's info as BLISS scripts read it: a dict of what was last read, whose
    ``get_all()`` reads it again (BLISS's info is a live mapping of the node's record)."""

    def __init__(
        self, data: dict[str, Any], reread: Callable[[], dict[str, Any]] | None = None
    ) -> None:
        super().__init__(data)
        self._reread = reread

    def get_all(self) -> dict[str, Any]:
        """The whole info, read again from Redis (for a scan: ``UnknownScan`` if gone)."""
        return dict(self._reread() if self._reread is not None else self)


# --------------------------------------------------------------------- nodes


class Node:
    """Common to every node: ``db_name`` (its full name on the bus), ``name``, ``type``,
    ``parent``, ``info`` and ``children()``."""

    type = "node"

    def __init__(self, bus: Bus, db_name: str, name: str, parent: Node | None) -> None:
        self.bus = bus
        self.db_name = db_name
        self.name = name
        self.parent = parent

    @property
    def info(self) -> NodeInfo:
        return NodeInfo({})

    def children(self) -> list[Node]:
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.db_name!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and (self.type, self.db_name) == (other.type, other.db_name)

    def __hash__(self) -> int:
        return hash((self.type, self.db_name))


class SessionNode(Walks, Node):
    """A session (it need not exist yet): its scans, and walks over them. ``scan_class``
    is the class of its scan nodes (a subclass sets its own)."""

    type = "session"
    scan_class: builtins.type[ScanNode]

    def __init__(self, bus: Bus, name: str) -> None:
        keys.check_session_name(name)
        super().__init__(bus, name, name, None)
        self.log_key = keys.session_log(bus.settings.prefix, name)

    def scans(self) -> list[ScanNode]:
        """The session's scans still in Redis, oldest first; corrupt log entries and scan
        records are left out, with a warning."""
        entries = log_entries(self.log_key, xrange_entries(self.bus, self.log_key), warn_skipped)
        found = {e.scan: e.id for e in entries if e.event == LogEvent.CREATED and e.scan}
        records = scan_records(self.bus, found)
        scans = []
        for key, record in records.items():
            if not record:
                continue  # expired
            try:
                scans.append(self.scan_class(self.bus, key, record, self))
            except CorruptEntry as exc:
                warn_skipped(self.log_key, found[key], f"scan left out: {exc}")
        return scans

    def children(self) -> list[Node]:
        return list(self.scans())

    def _walk_start(self, opts: WalkOptions, data: bool) -> WalkStart:
        """A session walk starts in the session log: at its beginning (``first_index``
        0), after ``first_index``, at its end (None: now), or before its last scan
        (``walk_from_last``). Unlike BLISS, the scans still running that were created
        before that point are joined whole, except those ``exclude_existing_children``
        takes (True: all of them)."""
        asm = _assembler(
            self.bus,
            self.log_key,
            opts,
            data,
            make_scan=lambda key, record: self.scan_class(self.bus, key, record, self),
            excluded=opts.excluded(),
        )
        entries = xrange_entries(self.bus, self.log_key)
        parsed = list(asm.log_entries(self.log_key, entries))
        created = {e.scan: e.id for e in parsed if e.event == LogEvent.CREATED and e.scan}
        asm.sequential = {e.scan for e in parsed if e.event == LogEvent.ENDED and e.scan}
        if opts.from_last:
            last = list(created.values())[-1] if created else None
            cursor = id_before(last) if last else START
        elif opts.first_index is None:
            cursor = text(entries[-1][0]) if entries else START
        else:
            cursor = opts.first_index
        asm.cursors[self.log_key] = cursor
        events = []
        if not opts.from_last:
            point = parse_id(cursor)
            live = [
                key
                for key, entry_id in created.items()
                if key not in asm.sequential and parse_id(entry_id) <= point
            ]
            unless = opts.excluded_existing()
            for key, record in scan_records(self.bus, live).items():
                events += asm.add_scan(key, record, created[key], unless=unless)
        return WalkStart(asm, events, bounded=False)


def _assembler(
    bus: Bus,
    session_log: str,
    opts: WalkOptions,
    data: bool,
    make_scan: Callable[[str, dict], ScanNode],
    excluded: Callable[[Any], bool] | None,
) -> Assembler:
    """The assembler of a walk over ``session_log``'s scans, building its nodes through
    the scan nodes' hooks; the channels of scans ``excluded`` takes are not walked."""
    return Assembler(
        session_log,
        make_scan=make_scan,
        make_channel=lambda scan, desc: scan._channel_node(desc),
        wants=make_filter(opts.include_filter),
        descend=lambda node: excluded is None or not excluded(node),
        data=data,
        on_record=ScanNode._update,
        on_end=ScanNode._ended,
        map_data=lambda node: node._event_data,
        containers=lambda node: node._containers(),
    )


class ScanNode(Walks, Node):
    """A scan: ``number``, ``info``, ``state``, ``end_reason``, ``error``, ``created``,
    ``ended``, ``file`` and ``written`` (the file writer's notes), ``channels`` (name ->
    ChannelNode), ``wait_end()`` and walks over its channels. ``type`` is ``scan``, or
    ``scan_group`` for a scan whose info declares it a sequence of scans.
    ``session_class`` is the class of its parent when it is not given,
    ``_channel_class`` that of its channel nodes (hooks for subclasses)."""

    session_class: builtins.type[SessionNode] = SessionNode

    def __init__(self, bus: Bus, key: str, record: dict, parent: Node | None = None) -> None:
        self.key = key
        self._update(record)
        name = f"{self.number}_{self.info.get('type', 'scan')}"
        if parent is None:
            _, session, _ = keys.parse_scan(key)
            parent = self.session_class(bus, session)
        super().__init__(bus, key, name, parent)

    def _update(self, record: dict) -> None:
        """Take ``record`` (an HGETALL) as the scan's; ``CorruptEntry`` (and the node
        unchanged) if it does not decode."""
        self._parsed = ScanRecord.parse(self.key, record)
        self._record = record
        self.number = self._parsed.number
        self._channels: dict[str, ChannelNode] | None = None

    def _ended(self, end: ScanEnd) -> None:
        self._update(ended_as_read(self._record, end.reason))

    @property
    def type(self) -> str:  # type: ignore[override]
        group = self.info.get("is_scan_sequence") or self.info.get("type") == "sequence"
        return "scan_group" if group else "scan"

    @property
    def info(self) -> NodeInfo:
        """The scan info as last read; ``info.get_all()`` reads it again."""
        return NodeInfo(self._parsed.info, lambda: self.refresh()._parsed.info)

    @property
    def state(self) -> ScanState:
        """The state as last read (``refresh()`` reads it again)."""
        return self._parsed.state

    @property
    def end_reason(self) -> EndReason | str | None:
        return self._parsed.end_reason

    @property
    def error(self) -> str | None:
        return self._parsed.error

    @property
    def created(self) -> float | None:
        """When the scan was created (unix seconds, as last read)."""
        return self._parsed.created

    @property
    def ended(self) -> float | None:
        """When the scan ended (unix seconds; None while it runs, as last read)."""
        return self._parsed.ended

    @property
    def sealed(self) -> float | None:
        """When the publisher sealed every channel (``Scan.seal()``: the data is complete,
        the final info and the end are to come); None if it did not, as last read."""
        return self._parsed.sealed

    @property
    def file(self) -> str | None:
        """The file a writer writes the scan to (an absolute path, as its note in the
        scan record says); None if no writer noted one, as last read."""
        return self._parsed.file

    @property
    def written(self) -> float | None:
        """When the writer's file of the scan was complete (unix seconds); None while it
        is written or if no writer wrote it, as last read."""
        return self._parsed.written

    def state_times(self) -> dict[ScanState, float]:
        """When the scan moved to each state it has reached (PREPARED, STARTED, ENDED;
        unix seconds), as its scan log records them: one read of the log. Empty once the
        scan is gone. The walks announce PREPARED and STARTED as one PREPARED_SCAN; this
        tells them apart (a capture records both)."""
        log_key = keys.scan_log(self.key)
        return state_times(log_entries(log_key, xrange_entries(self.bus, log_key), warn_skipped))

    def refresh(self) -> ScanNode:
        """Read the scan record again; ``UnknownScan`` if it is gone, ``CorruptEntry``
        if it no longer decodes."""
        record = self.bus.wire.call(*commands.record(self.key))
        if not record:
            raise UnknownScan(f"scan {self.key} is no longer in Redis (expired or deleted)")
        self._update(record)
        return self

    @property
    def channels(self) -> dict[str, ChannelNode]:
        """The scan's channels, by full name, in the order of the scan info's
        ``channels`` (a list of names, or BLISS's dict ``fullname -> {dim, ...}``) when
        it has them (then by name)."""
        if self._channels is None:
            found = {
                name: self._channel_node(desc)
                for name, desc in descriptors(self.key, self._record).items()
            }
            hint = self.info.get("channels")
            hint = list(hint) if isinstance(hint, (list, dict)) else []
            listed = [n for n in hint if isinstance(n, str) and n in found]
            order = listed + sorted(set(found) - set(listed))
            self._channels = {name: found[name] for name in order}
        return dict(self._channels)

    def children(self) -> list[Node]:
        return list(self.channels.values())

    def _channel_class(self, desc: Descriptor) -> builtins.type[ChannelNode]:
        """The class of the node of the channel ``desc`` describes."""
        return ChannelNode

    def _descendant(self, db_name: str) -> Node | None:
        """The node below this scan called ``db_name`` (``<scan key>:<channel name>``),
        None if there is none (a hook: a subclass's tree may name more nodes)."""
        return self.channels.get(db_name[len(self.key) + 1 :])

    def _channel_node(self, desc: Descriptor) -> ChannelNode:
        return self._channel_class(desc)(self.bus, self, desc)

    def _walk_start(self, opts: WalkOptions, data: bool) -> WalkStart:
        """A scan walk follows this scan alone, from its scan log's start (it reads
        neither the session log nor any other scan's streams), and ends with the scan;
        the scan's own NEW_NODE is not yielded (BLISS). On a scan that has ended,
        ``first_index`` (None: now) leaves out the channels declared up to it; a running
        scan is walked whole, as a session walk joins it. ``exclude_existing_children``
        (by default ``exclude_children``; True: this scan) taking this scan leaves its
        channels out. ``UnknownScan`` if the scan is gone."""
        self.refresh()
        prefix, session, _ = keys.parse_scan(self.key)
        asm = _assembler(
            self.bus,
            keys.session_log(prefix, session),
            opts,
            data,
            make_scan=lambda key, record: self,
            excluded=opts.excluded_existing(default=opts.exclude_children),
        )
        del asm.cursors[asm.session_log]  # (other scans' entries are none of its business)
        since = START
        if self.state is ScanState.ENDED:
            asm.sequential = {self.key}  # nothing more will come: missing keys mean evicted
            since = opts.first_index or START
            if opts.first_index is None:
                last = _last_entry(self.bus, keys.scan_log(self.key))
                since = text(last[0]) if last else START
        asm.add_scan(self.key, self._record, since=since)  # (its NEW_NODE: not yielded)
        return WalkStart(asm, [], bounded=True)

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the scan's runner to stop before its next point (end reason ``stopped``).
        ``ScanStateError`` if the scan has already ended."""
        self.refresh()
        if self.state is ScanState.ENDED:
            raise ScanStateError(
                f"scan {self.key} has already ended ({self.end_reason}); nothing to stop"
            )
        ttl = self.bus.settings.retention_ttl
        self.bus.wire.run(commands.request_stop(self.key, reason, time.time(), ttl), atomic=True)

    def record_file(self, path: str, datasets: dict[str, str]) -> None:
        """Note in the scan's record the file it is written to and each channel's dataset
        there (by channel name): ``DataExpired`` names them, and the memory guard deletes
        the scan last until ``record_written()``. A relative ``path`` is noted absolute
        (readers run elsewhere). A record gone is left gone."""
        where = os.path.abspath(path)
        self.bus.wire.call(*commands.note(self.key, file_record(where, datasets)))

    def record_written(self) -> None:
        """Note in the scan's record that its file is complete."""
        self.bus.wire.call(*commands.note(self.key, written_record(time.time())))

    def wait_end(self, timeout: float | None = None) -> ScanEnd:
        """Block until the scan has ended; its ``ScanEnd``. ``timeout`` None waits
        forever, 0 does not wait; ``ReadTimeout`` when it runs out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        log_key = keys.scan_log(self.key)
        cursor = START
        link: AnyLink | None = None  # its own connection, for the blocking read
        try:
            while True:
                entries = xrange_entries(self.bus, log_key, _after(cursor))
                cursor = text(entries[-1][0]) if entries else cursor
                for entry in log_entries(log_key, entries, warn_skipped):
                    if entry.event == LogEvent.ENDED:
                        self.refresh()
                        return ScanEnd(self.end_reason or entry.reason or "", entry.error)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ReadTimeout(f"scan {self.key} did not end within {timeout} s")
                if not self.bus.wire.call(*commands.exists(self.key)):
                    raise UnknownScan(f"scan {self.key} is no longer in Redis")
                wait = BLOCK_S * 10 if remaining is None else min(BLOCK_S * 10, remaining)
                link = link or self.bus.wire.link()
                link.read({log_key: cursor}, 1, milliseconds(wait))
        finally:
            if link is not None:
                link.close()

    def wait_change(self, after: str | None = None, timeout: float | None = None) -> str:
        """Block until the scan's log has an entry after ID ``after`` (a state change, new
        info, a seal...), then read the record again; the ID of the last entry seen, to
        pass back as ``after``. ``after`` None does not wait: it marks the log as it is
        and reads the record. ``timeout`` None waits for ever; then ``ReadTimeout``;
        ``UnknownScan`` once the scan is gone."""
        log_key = keys.scan_log(self.key)
        if after is None:
            last = _last_entry(self.bus, log_key)
            self.refresh()
            return text(last[0]) if last else START
        deadline = None if timeout is None else time.monotonic() + timeout
        link = self.bus.wire.link()  # its own connection, for the blocking read
        try:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                wait = BLOCK_S * 10 if remaining is None else min(BLOCK_S * 10, remaining)
                reply = link.read({log_key: after}, 1000, milliseconds(max(wait, 0.001)))
                if reply:
                    self.refresh()
                    return text(reply[0][1][-1][0])
                if remaining is not None and remaining <= wait:
                    raise ReadTimeout(f"scan {self.key} did not change within {timeout} s")
                if not self.bus.wire.call(*commands.exists(self.key)):
                    raise UnknownScan(f"scan {self.key} is no longer in Redis")
        finally:
            link.close()


@contextlib.contextmanager
def referenced_frames(ref: FileRef, shape: tuple[int, ...]) -> Iterator[Any]:
    """The h5py dataset holding the frames ``ref`` names, once checked: a regular file
    (opening a FIFO would block for ever), opened read-only (SWMR when its detector still
    writes it), a dataset of frames of ``shape`` with at least ``ref.stop`` of them.
    ``ValueError`` saying which check failed; ``OSError`` if the file cannot be opened."""
    try:
        import h5py
    except ImportError:
        raise ImportError("reading lima frames needs h5py: pip install 'databus[hdf5]'") from None
    if not stat.S_ISREG(os.stat(ref.file).st_mode):
        raise ValueError("it is not a regular file")
    try:
        f = h5py.File(ref.file, "r", swmr=True, locking=False)
    except OSError:
        f = h5py.File(ref.file, "r", locking=False)
    with f:
        ds = f.get(ref.dataset)
        if not isinstance(ds, h5py.Dataset):
            raise ValueError("no dataset there")
        if ds.shape[1:] != tuple(shape) or ds.shape[:1] < (ref.stop,):
            raise ValueError(
                f"its shape is {ds.shape}, frames of shape {tuple(shape)} "
                f"up to frame {ref.stop - 1} are needed"
            )
        yield ds


def _after(cursor: str) -> str:
    return "-" if cursor == START else f"({cursor}"


SessionNode.scan_class = ScanNode


class ChannelNode(Node):
    """A channel's points, read from Redis (and from the detector's files for ``lima``
    channels): ``len()``, ``get(i)``, ``get(a, b)`` (inclusive), ``ch[a:b]``,
    ``get_as_array(a, -1)``, ``np.asarray(ch)``. ``shape`` and ``dtype`` are those of one point.
    """

    def __init__(self, bus: Bus, scan: ScanNode, desc: Descriptor) -> None:
        super().__init__(bus, f"{scan.key}:{desc.name}", desc.name, scan)
        self.scan = scan
        self.desc = desc
        self.key = keys.channel(scan.key, desc.name)

    @property
    def type(self) -> str:  # type: ignore[override]
        return "lima" if self.desc.kind == "ref" else "channel"

    @property
    def short_name(self) -> str:
        return self.name.rsplit(":", 1)[-1]

    @property
    def fullname(self) -> str:
        """The channel's full name (``axis:robz``), as BLISS's channel nodes have it:
        clients such as BLISS's ScansWatcher route NEW_DATA by it."""
        return self.name

    @property
    def dtype(self) -> np.dtype | None:
        return self.desc.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.desc.shape

    @property
    def unit(self) -> str | None:
        return self.desc.unit

    @property
    def info(self) -> NodeInfo:
        return NodeInfo(self.desc.as_dict())

    def _containers(self) -> tuple[Node, ...]:
        """The nodes between the scan and this channel, outermost first, that a walk
        announces before it (none: the bus's tree is scan -> channels; a subclass may
        give BLISS's device containers)."""
        return ()

    def _event_data(self, data: EventData) -> EventData:
        """What a walk's NEW_DATA of this channel carries (here, ``data`` as read; a
        subclass may give its points another form)."""
        return data

    def __repr__(self) -> str:
        what = "json" if self.desc.kind == "json" else f"{self.dtype}{list(self.shape)}"
        return f"<ChannelNode {self.name!r} {self.type} {what} of {self.scan.key}>"

    def __len__(self) -> int:
        """Points published so far (a round trip)."""
        return self._extent()[0]

    def _extent(self) -> tuple[int, bool]:
        """(points published, sealed)."""
        last = _last_entry(self.bus, self.key)
        if last is None:
            return 0, False
        entry_id, fields = last
        return points_through(self.desc, entry_id, fields), is_seal(entry_id)

    def get(self, from_index: int, to_index: int | None = None) -> Any:
        """Point ``from_index``, or points ``from_index`` .. ``to_index`` inclusive
        (``to_index=-1``: to the last one). Negative indices count from the end.

        Raises ``NotYetPublished`` for points not written yet, ``EndOfData`` past the
        end of an ended scan, ``DataExpired`` for points gone from Redis (naming the file
        the writer saved them to, when known), ``CorruptEntry`` for an undecodable entry.
        """
        first, last = self._span(from_index, to_index)
        if last < first:
            return self._empty()
        data = self._read(first, last)
        return data[0] if to_index is None else data

    def read_into(
        self, out: np.ndarray, from_index: int, to_index: int | None = None
    ) -> np.ndarray:
        """``get`` into ``out``, which is returned: a C-contiguous writable array of the
        channel's dtype and the point's shape (or the points' stacked shape, with
        ``to_index``). A big frame arrives there with no copy in between, e.g. straight
        into a message being built. Raises as ``get``, ValueError for an unfit ``out``."""
        first, last = self._span(from_index, to_index)
        self._check_out(out, None if to_index is None else max(0, last - first + 1))
        if last >= first:
            self._read(first, last, out.reshape(-1, *self.shape))
        return out

    def _span(self, from_index: int, to_index: int | None) -> tuple[int, int]:
        """(first, last) point of ``get``'s arguments, negative ones counted from the end."""
        if from_index < 0 or (to_index is not None and to_index < 0):
            length = len(self)
            if from_index < 0:
                from_index += length
            if to_index is not None and to_index < 0:
                to_index += length
            if from_index < 0:
                raise IndexError(f"channel {self.name!r} has {length} points; index out of range")
        return from_index, from_index if to_index is None else to_index

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if stop <= start:
                return self._empty()
            data = self.get(start, stop - 1)
            return data[::step] if step != 1 else data
        return self.get(index)

    def get_as_array(self, from_index: int = 0, to_index: int | None = -1) -> Any:
        """Points ``from_index`` .. ``to_index`` inclusive, as BLISS's ``get_as_array``:
        ``-1`` (the default) reads to the last point published, an index past it reads
        what exists, so ``get_as_array(len(ch), -1)`` is empty (a polling loop's "nothing
        new"); ``None`` reads point ``from_index`` alone. Raises as ``get`` for points that
        are gone from Redis."""
        if to_index is None:
            return np.asarray(self.get(from_index))
        length = len(self)
        first = from_index + length if from_index < 0 else from_index
        last = to_index + length if to_index < 0 else min(to_index, length - 1)
        if first < 0:
            raise IndexError(f"channel {self.name!r} has {length} points; index out of range")
        return self._read(first, last) if first <= last else self._empty()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All points (reads them all, on every call)."""
        data = np.asarray(self.get_as_array())
        return data if dtype is None else data.astype(dtype)

    def _empty(self) -> Any:
        if self.desc.kind == "json":
            return []
        return np.empty((0, *self.shape), dtype=self.dtype)

    def file_refs(self, from_index: int = 0, to_index: int = -1) -> list[FileRef]:
        """Where a ``lima`` (ref) channel's frames ``from_index`` .. ``to_index`` (inclusive,
        negative: counted from the end) are, one ``FileRef`` per file range, cut to the points
        asked for; the files are not opened. Raises as ``get`` for points that are not there."""
        if self.desc.kind != "ref":
            raise TypeError(f"channel {self.name!r} holds {self.desc.kind} points, not file refs")
        last = to_index + len(self) if to_index < 0 else to_index
        if last < from_index:
            return []
        refs = []
        for block in self._blocks(from_index, last):
            ref: FileRef = block.data[0]
            lo, hi = max(from_index, block.first), min(last, block.first + block.count - 1)
            if lo <= hi:
                start = ref.start + lo - block.first
                refs.append(FileRef(ref.file, ref.dataset, start, start + hi - lo + 1))
        return refs

    def _check_out(self, out: Any, count: int | None) -> None:
        """ValueError unless ``out`` can receive ``count`` points (None: one, unstacked)."""
        shape = self.shape if count is None else (count, *self.shape)
        if self.desc.kind != "array":
            raise ValueError(f"channel {self.name!r} holds {self.desc.kind} points, not arrays")
        if (
            not isinstance(out, np.ndarray)
            or out.dtype != self.dtype
            or out.shape != tuple(shape)
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            got = f"{out.dtype}{list(out.shape)}" if isinstance(out, np.ndarray) else type(out)
            raise ValueError(
                f"out for channel {self.name!r} must be a C-contiguous writable "
                f"{self.dtype}{list(shape)} array, not {got}"
            )

    def _read(self, first: int, last: int, out: np.ndarray | None = None) -> Any:
        """Points first .. last inclusive, from one round trip (into ``out``, of their
        stacked shape, if given; split points always arrive straight in their array)."""
        if self.desc.kind == "array" and self.desc.parts > 1:
            if out is None:
                out = np.empty((last - first + 1, *self.shape), self.dtype)
            if self._received(first, last, out):
                return out
        data = self._slice(self._blocks(first, last), first, last)
        if out is None:
            return data
        out[...] = data
        return out

    def _received(self, first: int, last: int, out: np.ndarray) -> bool:
        """Split points first .. last received straight into ``out``; False if they are
        not all there, whole (``_blocks`` then says why) or the attempt failed."""
        (command,) = commands.points(self.key, first, last, MAX_SEQ, split=True)
        try:
            entries, filled, overflow = self.bus.wire.entries_into(
                command, DATA, memoryview(out.data).cast("B")
            )
        except ServerUnavailable:
            return False
        return (
            not overflow
            and filled == out.nbytes
            and whole_split_points(self.desc, first, last - first + 1, entries)
        )

    def _blocks(self, first: int, last: int) -> list[Block]:
        """The decoded blocks holding points first .. last (all of them, or an error)."""
        # The entry before ``first`` holds it only if it starts earlier and is a whole
        # block (the parts of a split point all carry the point's own index).
        split = self.desc.kind == "array" and self.desc.parts > 1
        replies = self.bus.wire.run(commands.points(self.key, first, last, MAX_SEQ, split=split))
        before, within = ([], *replies) if split else replies
        starts_before = bool(before) and parse_id(before[0][0])[0] < first
        entries = before + within if starts_before else within
        decoded = list(decode_entries(self.desc, self.key, entries, joined=True))
        if not _covers(decoded, first, last):  # a gap marker after them says why
            after = self.bus.wire.call(*commands.points_after(self.key, last, MAX_SEQ))
            if after and parse_id(after[0][0])[1] == 0:
                decoded += decode_entries(self.desc, self.key, after)
        for gap in (g for g in decoded if isinstance(g, Gap)):
            lo, hi = max(first, gap.first), min(last, gap.first + gap.count - 1)
            if lo <= hi:
                raise self._lost(lo, hi, gap.reason)
        blocks = [b for b in decoded if isinstance(b, Block) and b.first + b.count > first]
        covered = blocks[0].first if blocks else None
        if covered is None or covered > first:
            self._missing(first, last if covered is None else covered - 1, bool(entries))
        end = blocks[-1].first + blocks[-1].count
        for previous, block in itertools.pairwise(blocks):
            if previous.first + previous.count != block.first:
                raise self._lost(previous.first + previous.count, block.first - 1, GAP_DROPPED)
        if end <= last:
            raise self._beyond(first, last, *self._extent())
        return blocks

    def _lost(self, first: int, last: int, reason: str) -> DataLost:
        why = {
            GAP_DROPPED: "were dropped by the publisher (a lossy channel that could not keep up)",
            GAP_SERVER_LOST: "were lost by the server (it restarted without its data)",
        }.get(reason, f"are missing ({reason})")
        return DataLost(
            f"channel {self.name!r} of {self.scan.key}: points {first}..{last} {why} "
            f"and cannot be read",
            reason=reason,
            channel=self.name,
            scan=self.scan.key,
            first=first,
            last=last,
        )

    def _slice(self, blocks: list[Block], first: int, last: int) -> Any:
        offset = first - blocks[0].first
        count = last - first + 1
        if self.desc.kind == "json":
            flat = [x for b in blocks for x in b.data]
            return flat[offset : offset + count]
        if self.desc.kind == "ref":
            return self._frames_from_files(blocks, first, last)
        data = blocks[0].data if len(blocks) == 1 else np.concatenate([b.data for b in blocks])
        return data[offset : offset + count]

    def _frames_from_files(self, blocks: list[Block], first: int, last: int) -> np.ndarray:
        """Frames ``first`` .. ``last`` from the files the blocks' references name, each
        checked by ``referenced_frames``; ``DataExpired`` says why one cannot be read."""
        out = np.empty((last - first + 1, *self.shape), dtype=self.dtype)
        for block in blocks:
            ref: FileRef = block.data[0]
            lo, hi = max(first, block.first), min(last, block.first + block.count - 1)
            if lo > hi:
                continue
            try:
                with referenced_frames(ref, self.shape) as ds:
                    data = ds[ref.start + lo - block.first : ref.start + hi - block.first + 1]
            except (OSError, KeyError, ValueError) as exc:
                raise DataExpired(
                    f"channel {self.name!r}: frames {lo}..{hi} are in {ref.file}:{ref.dataset}, "
                    f"which cannot be read ({exc})",
                    channel=self.name,
                    scan=self.scan.key,
                    first=lo,
                    last=hi,
                    file=ref.file,
                    dataset=ref.dataset,
                ) from exc
            out[lo - first : hi - first + 1] = data
        return out

    def _beyond(self, first: int, last: int, length: int, sealed: bool) -> IndexError:
        """The error for points past the last one published: for now, or for good."""
        if sealed:
            return EndOfData(
                f"channel {self.name!r} of {self.scan.key} ended with {length} points; "
                f"points {first}..{last} will never exist"
            )
        return NotYetPublished(
            f"channel {self.name!r} of {self.scan.key} has {length} points so far; "
            f"points {first}..{last} are not published yet"
        )

    def _missing(self, first: int, last: int, stream_has_entries: bool) -> None:
        """Raise the right error for points first..last that the stream does not hold."""
        exists, (file, dataset) = self.bus.wire.run(
            [commands.exists(self.key), commands.saved_where(self.scan.key, self.name)]
        )
        length, sealed = self._extent() if exists else (0, False)
        if exists and first >= length:
            raise self._beyond(first, last, length, sealed)
        where = (
            f"; the file writer saved them in {message(file)}"
            + (f":{message(dataset)}" if dataset else "")
            if file
            else "; no file writer recorded where they were saved"
        )
        why = "were trimmed or dropped" if stream_has_entries or exists else "have expired"
        raise DataExpired(
            f"channel {self.name!r} of {self.scan.key}: points {first}..{last} {why}{where}",
            channel=self.name,
            scan=self.scan.key,
            first=first,
            last=last,
            file=message(file),
            dataset=message(dataset),
        )


def scan_exists(bus: Bus, key: str) -> bool:
    """Whether scan ``key`` still has its record in Redis."""
    return bool(bus.wire.call(*commands.exists(key)))


def follow(session: SessionNode, *, replay: bool = False, **kwargs: Any) -> Iterator[Event]:
    """Events of ``session``: from now (running scans whole), or ``replay`` from its start."""
    if replay:
        return session.walk_events(**kwargs)
    return session.walk_on_new_events(**kwargs)


def get_scan(bus: Bus, key: str, scan_class: type[ScanNode] = ScanNode) -> ScanNode:
    """The scan stored under ``key``, as a ``scan_class`` node; ``UnknownScan`` if there
    is none."""
    try:
        keys.parse_scan(key)
    except ValueError as exc:
        raise UnknownScan(str(exc)) from None
    record = bus.wire.call(*commands.record(key))
    if not record:
        raise UnknownScan(f"no scan {key} on {bus!r} (it may have expired)")
    return scan_class(bus, key, record)
