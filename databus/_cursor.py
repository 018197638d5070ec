"""A cursor over channels: new points of one or several channels, of any scans, as they come.

    cursor = databus.Cursor([scan.channels["x"], other_scan.channels["y"]])
    while not cursor.done:
        for channel, points in cursor.read(timeout=1.0).items():
            use(channel, points.first, points.data)      # points.missing: what never came

The cursor keeps each channel's position (the next point index) and reads every channel
from it with one XREAD (``wire.ReadLink``: its own connection, which waits out a lost
server), in large batches (``READ_BUDGET``), decoded by ``decode_entries`` into one block
per channel. Entry IDs are point indices, so a position is also the stream ID to read
after: ``<index>-0`` comes after every entry of the points before it, and its gap marker.

Each read returns, per channel with something new, a contiguous run of points and what is
missing before it: points trimmed or expired before the cursor got them (``expired``),
entries it cannot decode (``corrupt``, skipped with a warning, as walks do), and gap
markers (``dropped``, ``server lost``). A hole after some points is left for the next
read, so a ``ChannelPoints`` is always [missing..., then points]. ``last_only`` skips the
backlog and gives each channel's newest point. A channel whose seal is read, and all it
announced, ends (``ChannelPoints.ended``) and is not read again.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._assembler import READ_BUDGET, READ_COUNT_MAX
from ._encoding import (
    GAP_CORRUPT,
    GAP_EXPIRED,
    Block,
    Descriptor,
    Gap,
    decode_entries,
    parse_id,
    text,
)
from ._errors import CorruptEntry, EndOfData
from ._events import DataGap
from ._store import commands
from ._store.schema import warn_skipped
from ._store.wire import ReadLink
from ._subscribe import ChannelNode
from ._timing import milliseconds

if TYPE_CHECKING:
    from ._bus import Bus


@dataclasses.dataclass(frozen=True)
class ChannelPoints:
    """What one read brought of one channel: the ``missing`` ranges (``DataGap``s: first
    index, count, reason), then ``count`` points from index ``first`` in ``data`` (a numpy
    block of shape ``(count, *shape)``, a list of records for a json channel, a list of
    ``FileRef`` covering ``count`` frames for a ref channel). ``ended``: the channel is
    sealed and the cursor has read all it holds; it will not be read again."""

    channel: ChannelNode
    first: int
    count: int
    data: Any
    missing: tuple[DataGap, ...] = ()
    ended: bool = False

    @property
    def start(self) -> int:
        """The first index this read accounts for (the first missing one, if any)."""
        return self.missing[0].first_index if self.missing else self.first

    @property
    def stop(self) -> int:
        """The index after the last one this read accounts for."""
        return self.first + self.count


class _Track:
    """One channel the cursor reads: its descriptor, its stream and its next index."""

    def __init__(self, node: ChannelNode) -> None:
        self.node = node
        self.desc: Descriptor = node.desc
        self.key = node.key
        self.next = 0

    def after(self) -> str:
        """The stream ID to read after: every entry of the points before ``next``."""
        return f"{self.next}-0"

    def newest_window(self) -> str:
        """The smallest ID the newest point's entries can have: ``next``'s first part."""
        return f"{self.next}-1"

    def take(self, entries: Iterable[tuple[Any, dict]], last_only: bool) -> ChannelPoints | None:
        """What ``entries`` (IDs after ``after()``, oldest first) bring, the position moved
        past it; None if they bring nothing (an incomplete split frame)."""
        missing: list[DataGap] = []
        blocks: list[Block] = []
        pos, total = self.next, None
        items, corrupt = _decoded(self.desc, self.key, entries)
        for item in items:
            if isinstance(item, int):
                total = item
                break
            stop = item.first + item.count
            if stop <= pos:
                continue  # a marker of points already had or accounted for
            if blocks and not last_only and (item.first > pos or isinstance(item, Gap)):
                break  # a hole after points: left for the next read
            if item.first > pos:  # gone before the cursor read them, or undecodable
                bad = any(pos <= index < item.first for index in corrupt)
                missing.append(DataGap(pos, item.first - pos, GAP_CORRUPT if bad else GAP_EXPIRED))
            if isinstance(item, Gap):
                missing.append(
                    DataGap(max(pos, item.first), stop - max(pos, item.first), item.reason)
                )
            else:
                blocks.append(item)
            pos = stop
        if last_only:
            return self._newest(blocks, missing, pos, total)
        if total is not None and total > pos:
            missing.append(DataGap(pos, total - pos, GAP_EXPIRED))
            pos = total
        return self._result(blocks, missing, pos, total is not None)

    def _newest(
        self, blocks: list[Block], missing: list[DataGap], pos: int, total: int | None
    ) -> ChannelPoints | None:
        """``last_only``: the newest point, the backlog skipped; a sealed channel whose
        newest point cannot be read reports that one point missing, with its reason."""
        ended = total is not None
        if blocks:
            last = blocks[-1]
            newest = Block(last.first + last.count - 1, _tail(self.desc, last.data), 1)
            return self._result([newest], [], max(pos, total or 0), ended)
        if total is not None and total > self.next:
            why = missing[-1].reason if missing and pos >= total else GAP_EXPIRED
            return self._result([], [DataGap(total - 1, 1, why)], total, ended)
        self.next = max(self.next, pos)  # markers of points skipped anyway
        return self._result([], [], self.next, ended)

    def _result(
        self, blocks: list[Block], missing: list[DataGap], pos: int, ended: bool
    ) -> ChannelPoints | None:
        """The ``ChannelPoints`` of a run, moving the position to ``pos``."""
        if not blocks and not missing and not ended:
            return None
        self.next = pos
        first = blocks[0].first if blocks else pos
        count = sum(b.count for b in blocks)
        return ChannelPoints(
            self.node, first, count, _joined(self.desc, blocks), tuple(missing), ended
        )


def _decoded(
    desc: Descriptor, key: str, entries: Iterable[tuple[Any, dict]]
) -> tuple[list[Block | Gap | int], list[int]]:
    """``decode_entries`` of ``entries``, and the first index of each corrupt entry left
    out (logged once, as walks do), whose points then read as missing."""
    todo = list(entries)
    corrupt: list[int] = []
    while True:
        try:
            return list(decode_entries(desc, key, todo)), corrupt
        except CorruptEntry as exc:
            rest = [e for e in todo if text(e[0]) != exc.entry_id]
            if len(rest) == len(todo):
                raise
            warn_skipped(key, str(exc.entry_id), str(exc))
            corrupt.append(parse_id(str(exc.entry_id))[0])
            todo = rest


def _tail(desc: Descriptor, data: Any) -> Any:
    """The last point of a block's ``data`` (a ref block's one ``FileRef``, cut to it)."""
    if desc.kind == "ref":
        ref = data[-1]
        return [dataclasses.replace(ref, start=ref.stop - 1)]
    return data[-1:]


def _joined(desc: Descriptor, blocks: list[Block]) -> Any:
    """The data of contiguous ``blocks`` as one: a numpy block (a view when there is one
    block), or a list."""
    if desc.kind != "array":
        return [x for b in blocks for x in b.data]
    if len(blocks) == 1:
        return blocks[0].data
    if not blocks:
        return np.empty((0, *desc.shape), dtype=desc.dtype)
    return np.concatenate([b.data for b in blocks])


def _whole_points(desc: Descriptor, newest_first: list[tuple[Any, dict]]) -> list[tuple[Any, dict]]:
    """XREVRANGE's ``newest_first`` entries, oldest first, without the leading parts of a
    split point whose first part is not among them."""
    entries = newest_first[::-1]
    if desc.kind == "array" and desc.parts > 1:
        while entries and parse_id(entries[0][0])[1] > 1:
            entries.pop(0)
    return entries


def read_count(descs: Iterable[Descriptor]) -> int:
    """XREAD COUNT per stream so a reply brings about ``READ_BUDGET`` bytes from the
    largest entries, at least two whole points of a split channel."""
    most = 1
    parts = 1
    for desc in descs:
        most = max(most, min(desc.point_nbytes, desc.entry_bytes))
        parts = max(parts, desc.parts)
    return max(2 * parts, min(READ_COUNT_MAX, READ_BUDGET // most))


class Cursor:
    """Reads new points of ``channels`` (``ChannelNode``s of any scans on one bus), each
    from index 0 on; see the module. ``close()`` (or a ``with`` block) gives its
    connection back, as does garbage collection."""

    def __init__(self, channels: ChannelNode | Iterable[ChannelNode]) -> None:
        nodes = [channels] if isinstance(channels, ChannelNode) else list(channels)
        for node in nodes:
            if not isinstance(node, ChannelNode):
                raise TypeError(
                    f"a Cursor reads ChannelNodes (scan_node.channels[name]), "
                    f"not {type(node).__name__}: {node!r:.80}"
                )
        buses = {id(node.bus): node.bus for node in nodes}
        if len(buses) > 1:
            raise ValueError(
                "a Cursor reads channels of one bus; make one cursor per bus "
                f"(got channels of {', '.join(map(repr, buses.values()))})"
            )
        self._bus: Bus | None = next(iter(buses.values()), None)
        self._tracks = {node: _Track(node) for node in nodes}
        self._active = dict(self._tracks)
        self._count = read_count(t.desc for t in self._tracks.values())
        self._link: ReadLink | None = None
        self._finalizer: Any = None

    def __repr__(self) -> str:
        return f"<Cursor {len(self._active)} of {len(self._tracks)} channels to read>"

    @property
    def positions(self) -> Mapping[ChannelNode, int]:
        """Each channel's next index to read."""
        return {node: track.next for node, track in self._tracks.items()}

    @property
    def active(self) -> list[ChannelNode]:
        """The channels still read (not ended)."""
        return list(self._active)

    @property
    def done(self) -> bool:
        """Every channel has ended: sealed, and read to its end."""
        return not self._active

    def read(
        self, timeout: float | None = None, *, last_only: bool = False
    ) -> dict[ChannelNode, ChannelPoints]:
        """What is new in each channel, by channel (channels with nothing new are left
        out). Waits up to ``timeout`` seconds (None: until something comes; 0: not at
        all) and returns ``{}`` if nothing came. ``last_only``: only each channel's newest
        point, skipping the backlog. ``EndOfData`` once every channel has ended."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout is seconds >= 0 (0: do not wait) or None, not {timeout!r}")
        if not self._active or self._bus is None:
            raise EndOfData(f"{self!r}: every channel is sealed and read to its end")
        if last_only:
            found = self._read_newest(self._bus)
            if found or timeout == 0:
                return found
        return self._read_next(self._bus, timeout, last_only)

    def _read_newest(self, bus: Bus) -> dict[ChannelNode, ChannelPoints]:
        """``last_only`` without waiting: each channel's last entries (XREVRANGE)."""
        tracks = list(self._active.values())
        replies = bus.wire.run(
            [commands.entries_back(t.key, "+", t.newest_window(), t.desc.parts + 3) for t in tracks]
        )
        found = {}
        for track, newest_first in zip(tracks, replies, strict=True):
            points = track.take(_whole_points(track.desc, newest_first), last_only=True)
            if points is not None:
                found[track.node] = points
        return self._ended(found)

    def _read_next(
        self, bus: Bus, timeout: float | None, last_only: bool
    ) -> dict[ChannelNode, ChannelPoints]:
        """One XREAD of every active channel from its position, again only if what came
        brings nothing (an incomplete split frame) or the server was lost."""
        link = self._open_link(bus)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            block_ms: int | None = 0  # XREAD BLOCK 0: until an entry comes
            if deadline is not None:
                remaining = deadline - time.monotonic()
                block_ms = milliseconds(remaining) if remaining > 0 else None
            tracks = {t.key: t for t in self._active.values()}
            reply = link.read({k: t.after() for k, t in tracks.items()}, self._count, block_ms)
            found = {}
            for key, entries in reply or ():
                track = tracks[key]
                points = track.take(entries, last_only)
                if points is not None:
                    found[track.node] = points
            if found or (deadline is not None and time.monotonic() >= deadline):
                return self._ended(found)

    def _ended(self, found: dict[ChannelNode, ChannelPoints]) -> dict[ChannelNode, ChannelPoints]:
        """``found``, once the channels it ends are no longer read."""
        for node, points in found.items():
            if points.ended:
                self._active.pop(node, None)
        return found

    def _open_link(self, bus: Bus) -> ReadLink:
        """The cursor's connection, taken on its first blocking read."""
        if self._link is None:
            self._link = ReadLink(bus.wire, "cursor", revive=bus.revive_server)
            self._finalizer = weakref.finalize(self, self._link.close)
        return self._link

    def close(self) -> None:
        """Give the cursor's connection back (a later read takes another)."""
        if self._finalizer is not None:
            self._finalizer()
        self._link = self._finalizer = None

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
