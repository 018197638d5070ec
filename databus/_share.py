"""Point shares: the points of one channel of a session's scans, each handed to one member
of a group of processes (bridges serving frames, analysis workers), exactly once.

The hand-out is a Redis consumer group over a stream of work items (scan, first, stop),
not over the channel's stream: the data stays where it is, a claim is a few bytes, and a
frame split into several entries is never split between members. Every member adds the
points it finds (each scan's mark in the share says how far they went, so adding twice is
a no-op) and claims the next item with XREADGROUP. An item a member claimed and did not
acknowledge stays pending under its consumer name: the same name claims it again after a
restart (``PointShare`` reads its own pending items first), and another member takes it
over once it has been idle for ``claim_after`` seconds (a member that died for good).

A new group serves the session's running scans from their first point, and every later
scan; a group that exists resumes: scans its members had not handed over (even ones that
ran while no member was up) are added when a member opens it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._encoding import Descriptor, is_seal, points_through, text
from ._errors import CorruptEntry, ReadTimeout, ServerError, ServerUnavailable, UnknownScan
from ._states import ScanState
from ._store import commands, keys, schema
from ._store.commands import Command
from ._store.schema import ShareItem, warn_skipped
from ._store.wire import AnyLink, Outage, ReadLink
from ._subscribe import ChannelNode, ScanNode
from ._timing import milliseconds

if TYPE_CHECKING:
    from ._bus import Bus

log = logging.getLogger(__name__)

#: Most items one call adds to a share (a long scan's points go in several calls).
_MOST_ITEMS = 10_000
#: Acknowledged items are deleted from the share after this many acknowledgements.
_TRIM_EVERY = 1000
#: How often (seconds) a member looks for scans created since it last looked.
_FEED_EVERY = 0.02
#: How long (seconds) a scan may show no new point before its state is read again.
_STATE_EVERY = 0.5


@dataclasses.dataclass(frozen=True)
class Claim:
    """Points ``first`` .. ``stop - 1`` of ``channel`` in ``scan``, handed to this member
    alone; ``PointShare.done(claim)`` once they are served."""

    scan: ScanNode
    channel: ChannelNode
    first: int
    stop: int
    id: str = dataclasses.field(repr=False)

    @property
    def indices(self) -> range:
        return range(self.first, self.stop)


@dataclasses.dataclass(frozen=True)
class ShareStatistics:
    """What one member of a point share did so far."""

    claimed: int  #: items this member claimed (own pending ones after a restart included)
    done: int  #: items it acknowledged
    resumed: int  #: items it had claimed before a restart and claimed again
    taken_over: int  #: items it took over from a member idle ``claim_after`` seconds
    released: int  #: items it gave back unserved (``release``)
    added: int  #: items it added to the share (any member may add any scan's points)
    skipped: int  #: items that named no scan still kept, or did not decode (logged)


class _Scan:
    """A scan whose points may still go into the share: its node and how far they went."""

    def __init__(self, node: ScanNode) -> None:
        self.node = node
        self.mark = 0  #: points handed to the share
        self.length = -1  #: entries its channel's stream had when last read
        self.checked = time.monotonic()


class PointShare:
    """One member of point share ``group`` over ``channel`` in ``session``'s scans.

    ``claim(timeout)`` returns the next ``Claim`` nobody in the group has had (blocking up
    to ``timeout`` seconds, None: for ever); ``done(claim)`` acknowledges it, and
    ``release(claim)`` gives it back unserved. ``batch`` is
    the most points per claim (1: one frame each). ``consumer`` names this member; give
    the same name to a process that replaces it (its unacknowledged claims come back to it
    first); default: host and process id. ``claim_after``: seconds after which another
    member's unacknowledged claim is taken over (make it longer than a claim takes to
    serve). ``first_scan``: the number of the first scan a new group serves (default: the
    oldest running one, else the next one); a group that exists keeps its own. Waits out
    a lost server (``timeout`` permitting). ``claim`` from one thread at a time; ``done``,
    ``record`` and ``release`` may come from another (a worker reading ahead).
    """

    def __init__(
        self,
        bus: Bus,
        session: str,
        channel: str,
        group: str,
        *,
        consumer: str | None = None,
        batch: int = 1,
        claim_after: float = 60.0,
        first_scan: int | None = None,
        poll: float = 0.005,
    ) -> None:
        keys.check_session_name(session)
        keys.check_name("channel", channel, keys.MAX_CHANNEL_NAME)
        keys.check_name("share group", group, keys.MAX_CHANNEL_NAME)
        consumer = consumer if consumer is not None else f"{socket.gethostname()}:{os.getpid()}"
        keys.check_name("share consumer", consumer, keys.MAX_CHANNEL_NAME)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch is the most points per claim, an int >= 1, not {batch!r}")
        if first_scan is not None and (
            isinstance(first_scan, bool) or not isinstance(first_scan, int)
        ):
            raise ValueError(f"first_scan is a scan number (an int) or None, not {first_scan!r}")
        for name, value in (("claim_after", claim_after), ("poll", poll)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} is seconds > 0, not {value!r}")
        self.bus, self.session, self.channel, self.group = bus, session, channel, group
        self.consumer, self.batch = consumer, batch
        self.claim_after, self.poll = float(claim_after), float(poll)
        self._first_scan = first_scan
        self.key = keys.share(bus.settings.prefix, session, group)
        self._ttl = bus.settings.retention_ttl
        self._link: AnyLink = bus.wire.link()
        self._outage = Outage(f"share {group}", revive=bus.revive_server)
        self._scans: dict[str, _Scan] = {}
        self._nodes: dict[str, ScanNode] = {}
        self._own: list[tuple[Any, dict]] = []
        self._unacked: list[str] = []
        self._counts = dict.fromkeys(
            ("claimed", "done", "resumed", "taken_over", "released", "added", "skipped"), 0
        )
        self._counts_lock = threading.Lock()
        self._since_trim = 0
        self._feed_checked = 0.0
        self._reclaimed = time.monotonic()
        self._open()

    def __repr__(self) -> str:
        return f"<PointShare {self.group!r} of {self.session}/{self.channel} as {self.consumer}>"

    # ------------------------------------------------------------------ public

    def claim(self, timeout: float | None = None) -> Claim | None:
        """The next points nobody in the group has had, as a ``Claim``; None if none came
        within ``timeout`` seconds (None: wait for ever, 0: do not wait)."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout is seconds >= 0 (0: do not wait) or None, not {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                found = self._next(deadline)
            except ServerUnavailable as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                self._link.reset()
                self._outage.wait(exc)
                continue
            except ServerError:
                if self.bus.wire.call(*commands.exists(self.key)):
                    raise
                self._open()  # the share expired or went with its server: make it again
                continue
            if self._outage.over() is not None:
                self._open()  # a server restarted empty has lost the share too
            if found is not None or (deadline is not None and time.monotonic() >= deadline):
                return found

    def done(self, claim: Claim, *, later: bool = False) -> None:
        """Acknowledge ``claim``: its points are served and are never handed out again.
        ``later``: send the acknowledgement with the next ``claim()`` (one round trip less
        for a member that claims again at once; ``close()`` sends what is left). If the
        server is gone, it is sent with the next one."""
        self._unacked.append(claim.id)
        if not later:
            self._acknowledge()

    def _acknowledge(self) -> None:
        try:
            self.bus.wire.run(self._acks())
        except ServerUnavailable as exc:
            log.warning("share %s: %s; acknowledging later", self.group, exc)
            return
        self._acknowledged()

    def _acks(self) -> list[Command]:
        """The commands that acknowledge what is waiting (and trim, now and then)."""
        if not self._unacked:
            return []
        acks = [commands.acknowledge(self.key, self.group, self._unacked)]
        if self._since_trim + len(self._unacked) >= _TRIM_EVERY:
            acks.append(commands.trim_share(self.key, self.group))
        return acks

    def _acknowledged(self) -> None:
        """Count what ``_acks()`` sent as done."""
        trimmed = self._since_trim + len(self._unacked) >= _TRIM_EVERY
        self._count("done", len(self._unacked))
        self._since_trim = 0 if trimmed else self._since_trim + len(self._unacked)
        self._unacked.clear()

    def record(self, claim: Claim, data: bytes | None) -> None:
        """Acknowledge ``claim`` and record what was made of its points (``data``, None for
        nothing), in one transaction: a result exists if and only if its claim is served,
        so a member killed before this left neither and its claim goes to another member.
        ``ShareResults`` reads the results. Raises if the server is gone (claim pending)."""
        result = schema.share_result(claim.scan.key, claim.first, claim.stop, data)
        acks = self._acks()
        self.bus.wire.run(
            [*acks, *commands.serve_item(self.key, self.group, claim.id, result, self._ttl)],
            atomic=True,
        )
        if acks:
            self._acknowledged()
        self._count("done", 1)

    def release(self, claim: Claim) -> None:
        """Give ``claim`` back unserved: its points go to the end of the share, for any
        member (this one included) to claim."""
        self.bus.wire.call(*commands.release_item(self.key, self.group, claim.id))
        self._count("released", 1)

    def statistics(self) -> ShareStatistics:
        with self._counts_lock:
            return ShareStatistics(**self._counts)

    def _count(self, name: str, n: int | bool) -> None:
        with self._counts_lock:
            self._counts[name] += int(n)

    def close(self) -> None:
        """Send the acknowledgements still waiting, give the connection back; claims not
        acknowledged stay pending (see the class)."""
        if self._unacked:
            self._acknowledge()
        self._link.close()

    def __enter__(self) -> PointShare:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ inside

    def _open(self) -> None:
        """Create the group if needed, find the scans it serves, re-read own pending items."""
        self._tag, found = self.bus.find_scans(session=self.session)
        first = self.bus.wire.call(*commands.share_first(self.key))
        if first is None and self._first_scan is not None:
            first = self._first_scan
        elif first is None:  # a new group: its first scan is the oldest running one
            self._load(found)
            running = [k for k in found if k in self._nodes and self._nodes[k].ended is None]
            first = _number(running[0]) if running else _number(found[-1]) + 1 if found else 0
        opened = commands.open_share(self.key, self.group, first, self._ttl)
        first = int(self.bus.wire.call(*opened))
        served = [k for k in found if _number(k) >= first]
        self._load(served)
        for key in served:
            self._watch(key)
        self._own = self._read(group_id="0")
        self._add_points(self._scans.values())

    def _load(self, scan_keys: list[str]) -> None:
        """Read the records of the scans not read yet, in one round trip."""
        missing = [k for k in scan_keys if k not in self._nodes]
        records = self.bus.wire.run([commands.record(k) for k in missing])
        for key, record in zip(missing, records, strict=True):
            if record:
                try:
                    self._nodes[key] = ScanNode(self.bus, key, record)
                except CorruptEntry as exc:
                    warn_skipped(key, "record", str(exc))

    def _node(self, key: str) -> ScanNode | None:
        if key not in self._nodes:
            self._load([key])
        return self._nodes.get(key)

    def _channel(self, node: ScanNode) -> ChannelNode | None:
        """The share's channel in ``node``, read again if it was declared since."""
        channel = node.channels.get(self.channel)
        if channel is None:
            try:
                channel = node.refresh().channels.get(self.channel)
            except (UnknownScan, CorruptEntry):
                return None
        return channel

    def _watch(self, key: str) -> None:
        node = self._node(key)
        if node is not None and key not in self._scans:
            self._scans[key] = _Scan(node)

    def _next(self, deadline: float | None) -> Claim | None:
        """One round: own pending items, stalled members' items (looked for now and then,
        also while new items flow), new items, points to add, new scans; then wait
        ``poll`` for another member's items."""
        while self._own:
            claim = self._claim(*self._own.pop(0), resumed=True)
            if claim is not None:
                return claim
        taken = self._take_over()
        if taken is not None:
            return taken
        for entry in self._read(group_id=">"):
            return self._claim(*entry)
        if self._add_points(self._scans.values()) | self._new_scans():
            for entry in self._read(group_id=">"):
                return self._claim(*entry)
        wait = self.poll
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        if wait <= 0:
            return None
        for entry in self._read(group_id=">", block=wait):
            return self._claim(*entry)
        return None

    def _read(self, group_id: str, block: float | None = None) -> list[tuple[Any, dict]]:
        """Items read from the group (``>``: new ones, one; ``0``: this consumer's pending
        ones), the waiting acknowledgements sent with the read."""
        count = 1 if group_id == ">" else _MOST_ITEMS
        block_ms = None if block is None else milliseconds(block)
        acks = self._acks()
        reply = self._link.read(
            {self.key: group_id}, count, block_ms, group=(self.group, self.consumer), before=acks
        )
        if acks:
            self._acknowledged()
        return [entry for _, entries in reply for entry in entries]

    def _claim(
        self, entry_id: Any, fields: dict, *, resumed: bool = False, taken_over: bool = False
    ) -> Claim | None:
        """The claim an item read from the group makes; None (acknowledged, counted as
        skipped) for one deleted since, naming a scan gone or not decoding."""
        self._count("claimed", 1)
        self._count("resumed", resumed)
        self._count("taken_over", taken_over)
        claim = None
        try:
            item = ShareItem.parse(self.key, entry_id, fields) if fields else None
        except CorruptEntry as exc:
            warn_skipped(self.key, text(entry_id), str(exc))
            item = None
        node = self._node(item.scan) if item is not None else None
        channel = self._channel(node) if node is not None else None
        if item is not None and node is not None and channel is not None:
            claim = Claim(node, channel, item.first, item.stop, item.id)
        if claim is None:
            self._count("skipped", 1)
            self.bus.wire.call(*commands.acknowledge(self.key, self.group, [text(entry_id)]))
        return claim

    def _add_points(self, scans: Iterable[_Scan]) -> bool:
        """Add the points the watched scans have beyond their marks; drop the scans whose
        points are all in (sealed, ended or gone). True if an item was added. A channel's
        last entry (a frame, maybe) is read only when its stream has grown."""
        scans = list(scans)
        if not scans:
            return False
        streams = [keys.channel(s.node.key, self.channel) for s in scans]
        lengths = self.bus.wire.run([commands.stream_length(k) for k in streams])
        grown = [
            (s, k, n) for s, k, n in zip(scans, streams, lengths, strict=True) if n != s.length
        ]
        lasts = self.bus.wire.run([commands.entries_back(k) for _, k, _ in grown])
        added = False
        for (scan, _, length), last in zip(grown, lasts, strict=True):
            stop, sealed = self._vouched(scan, last[0] if last else None)
            scan.length = length
            if stop > scan.mark:
                self._hand_over(scan, stop)
                added = True
                scan.checked = time.monotonic()
            if sealed and scan.mark >= stop:
                del self._scans[scan.node.key]
        for scan, length in zip(scans, lengths, strict=True):
            if not length and self._over(scan):
                del self._scans[scan.node.key]
        return added

    def _vouched(self, scan: _Scan, last: tuple[Any, dict] | None) -> tuple[int, bool]:
        """(points the channel vouches for, sealed) from its last entry, as read."""
        if last is None:
            return 0, False
        desc = self._descriptor(scan)
        if desc is None:
            return 0, False
        raw_id, fields = last
        try:
            return points_through(desc, raw_id, fields), is_seal(raw_id)
        except (CorruptEntry, TypeError, ValueError) as exc:
            warn_skipped(keys.channel(scan.node.key, self.channel), text(raw_id), str(exc))
            return scan.mark, False

    def _descriptor(self, scan: _Scan) -> Descriptor | None:
        channel = self._channel(scan.node)
        return channel.desc if channel is not None else None

    def _hand_over(self, scan: _Scan, stop: int) -> None:
        """Add ``scan``'s points up to ``stop`` (its mark follows)."""
        while True:
            mark = int(
                self.bus.wire.call(
                    *commands.share_points(
                        self.key, scan.node.key, stop, self.batch, self._ttl, _MOST_ITEMS
                    )
                )
            )
            if mark > scan.mark:
                self._count("added", -(-(mark - scan.mark) // self.batch))
            scan.mark = mark
            if mark >= stop:
                return

    def _over(self, scan: _Scan) -> bool:
        """True if ``scan`` (without the channel) has ended or is gone: nothing will come."""
        now = time.monotonic()
        if now - scan.checked < _STATE_EVERY:
            return False
        scan.checked = now
        try:
            return scan.node.refresh().state >= ScanState.ENDED
        except UnknownScan:
            return True

    def _new_scans(self) -> bool:
        """Watch the session's scans created since the last look; True if one was added."""
        now = time.monotonic()
        if now - self._feed_checked < _FEED_EVERY:
            return False
        self._feed_checked = now
        new = []
        while True:
            try:
                self._tag, node = self.bus.next_scan(since=self._tag, timeout=0)
            except ReadTimeout:
                break
            if node.parent is not None and node.parent.name == self.session:
                self._nodes[node.key] = node
                self._watch(node.key)
                new.append(self._scans[node.key])
        return self._add_points(new)

    def _take_over(self) -> Claim | None:
        """An item another member claimed ``claim_after`` seconds ago and never
        acknowledged, now this member's; looked for every ``claim_after / 4`` seconds."""
        now = time.monotonic()
        if now - self._reclaimed < self.claim_after / 4:
            return None
        self._reclaimed = now
        reply = self.bus.wire.call(
            *commands.take_over(self.key, self.group, self.consumer, self.claim_after, 1)
        )
        for entry in reply:
            if entry:  # an item trimmed since comes back as nil
                entry_id, flat = entry
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                return self._claim(entry_id, fields, taken_over=True)
        return None


def _number(scan_key: str) -> int:
    return keys.parse_scan(scan_key)[2]


@dataclasses.dataclass(frozen=True)
class ShareResult:
    """What a member of a point share made of points ``first`` .. ``stop - 1`` of the scan
    ``scan`` (a key): ``data`` as it gave it to ``PointShare.record`` (None: nothing)."""

    scan: str
    first: int
    stop: int
    data: bytes | None
    id: str = dataclasses.field(repr=False)


class ShareResults:
    """The results the members of point share ``group`` over ``session`` recorded, in the
    order they were recorded, for the one process that reduces them: ``read(timeout)``.
    ``since``: the ID to read after (default: every result still kept). ``trim()`` deletes
    what was read. Waits out a lost server (``timeout`` permitting)."""

    def __init__(self, bus: Bus, session: str, group: str, *, since: str = "0-0") -> None:
        keys.check_session_name(session)
        keys.check_name("share group", group, keys.MAX_CHANNEL_NAME)
        self.bus, self.group = bus, group
        self.key = keys.share(bus.settings.prefix, session, group)
        self.position = since  #: the ID of the last result read
        self._stream = keys.share_results(self.key)
        self._link = ReadLink(bus.wire, f"share {group} results", revive=bus.revive_server)

    def read(self, timeout: float | None = None, count: int = 1000) -> list[ShareResult]:
        """Results recorded since the last read (at most ``count``), waiting up to
        ``timeout`` seconds for one (None: for ever, 0: not at all); [] if none came."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout is seconds >= 0 (0: do not wait) or None, not {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            block_ms: int | None = 0
            if deadline is not None:
                left = deadline - time.monotonic()
                block_ms = milliseconds(left) if left > 0 else None
            reply = self._link.read({self._stream: self.position}, count, block_ms)
            if reply is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return []
        found = []
        for entry_id, fields in (e for _, entries in reply for e in entries):
            self.position = text(entry_id)
            try:
                item = ShareItem.parse(self._stream, entry_id, fields)
            except CorruptEntry as exc:
                warn_skipped(self._stream, self.position, str(exc))
                continue
            found.append(ShareResult(item.scan, item.first, item.stop, item.data, item.id))
        return found

    def trim(self) -> None:
        """Delete the results read so far (the one who reduces them has them)."""
        self.bus.wire.call(*commands.trim_results(self.key, self.position))

    def close(self) -> None:
        self._link.close()

    def __enter__(self) -> ShareResults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
