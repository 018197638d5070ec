"""One channel's queue of accepted points, between ``send()`` and the sink's flusher.

The publisher appends (a Python scalar lock-free through ``items`` while ``fast_limit``
allows, anything else through the sink's admission); the flusher takes runs of items
(``take``) and reports what the server acknowledged (``acknowledge``). The queue keeps the
indices: the first queued point (``head``), the end of what was put into a batch
(``sent_end``), of what was acknowledged (``acked_end``), and the points a lossy channel
dropped.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

from ._encoding import Descriptor, FileRef


@dataclasses.dataclass
class Gap:
    """Points dropped behind still-queued ones (by a lossy channel, or lost before
    ``send()``: ``ChannelWriter.skip``)."""

    count: int


def point_count(item: Any) -> int:
    """Points a queued item stands for (a ``Gap``: the points it replaces)."""
    kind = type(item)
    if kind is np.ndarray or kind is FileRef:
        return len(item)
    if kind is Gap:
        return item.count
    return 1


def item_bytes(item: Any) -> int:
    """Bytes of a queued item that count against the buffer (Python scalars: none)."""
    kind = type(item)
    if kind is np.ndarray:
        return item.nbytes
    if kind is bytes:
        return len(item)
    return 0


def points_in(items: Any) -> int:
    """Points (and dropped points) that queued items stand for."""
    return sum(map(point_count, items))


@dataclasses.dataclass
class Taken:
    """Items the flusher took from a queue: the index of the first, the points, bytes and
    dropped points among them, and where the last batch ended (``first`` beyond it: points
    dropped before anything was sent)."""

    items: list[Any]
    first: int
    count: int
    nbytes: int
    gaps: int
    sent_from: int


class ChannelQueue:
    """The queue of one channel (``desc``) whose points go to stream ``key``.

    Items are Python scalars (one point each, the fast path), numpy blocks of shape
    ``(n, *shape)``, packed records (json channels), ``FileRef`` (ref channels) or ``Gap``.
    ``lock`` (the sink's) guards the byte count; ``drop_lock`` (lossy channels only) the
    indices, which dropping moves from the producer's side.
    """

    def __init__(self, desc: Descriptor, key: str, fast_limit: int) -> None:
        self.desc = desc
        self.key = key
        #: The queued items: the fast path appends here directly.
        self.items: collections.deque[Any] = collections.deque()
        #: Points the fast path may queue; -1 once closed, so the fast path always fails.
        self.fast_limit = fast_limit
        self.lock: Any = None
        self.drop_lock: Any = None
        self._queued_bytes = 0
        self._head = 0
        self._sent_end = 0
        self._acked_end = 0
        self._acked = 0
        self._dropped = 0
        self._gap_items = 0  # Gap items queued (the scalar fast path of _pop takes none)
        self._expiring = False
        #: The server acknowledged the channel's seal (``Sink.seal``): no point follows.
        self.sealed = False

    def attach(self, lock: Any, drop_lock: Any) -> None:
        """Take the sink's ``lock`` and, for a lossy channel, a ``drop_lock`` of its own."""
        self.lock = lock
        self.drop_lock = drop_lock

    # ------------------------------------------------------------------ counters

    @property
    def head(self) -> int:
        """Index of the first queued point: every point before it was taken or dropped."""
        return self._head

    @property
    def accepted(self) -> int:
        """Points accepted so far: acknowledged, queued, in flight or dropped."""
        return self._head + points_in(list(self.items))

    @property
    def acked(self) -> int:
        """Points the server acknowledged."""
        return self._acked

    @property
    def acked_end(self) -> int:
        """Index after the last point (or gap) the server acknowledged."""
        return self._acked_end

    @property
    def dropped(self) -> int:
        """Points this (lossy) channel dropped."""
        return self._dropped

    @property
    def unsent_drop(self) -> tuple[int, int] | None:
        """[first, stop) of points dropped after the last batch, if any: once everything
        is flushed, the channel's trailing dropped points."""
        return (self._sent_end, self._head) if self._sent_end < self._head else None

    def unacknowledged(self) -> str | None:
        """The accepted points the server has not acknowledged, in words (None: none)."""
        accepted = self.accepted
        missing = accepted - self._dropped - self._acked
        if not missing:
            return None
        return (
            f"{self.desc.name!r}: {missing} of {accepted} points "
            f"(from index {self._acked + self._dropped})"
        )

    def queued_points(self) -> int:
        """Points waiting in the queue."""
        return points_in(list(self.items))

    def full(self) -> bool:
        """The fast path's queue is full (``send()`` waits for room)."""
        return len(self.items) >= self.fast_limit >= 0

    def half_full(self) -> bool:
        """Half the fast path's room is taken: its producer would soon block."""
        return len(self.items) * 2 >= self.fast_limit

    def close(self) -> None:
        """Refuse the fast path from now on."""
        self.fast_limit = -1

    # ------------------------------------------------------------- producer side

    def push(self, item: Any, nbytes: int) -> None:
        """Queue ``item`` of ``nbytes`` buffer bytes (under ``lock``)."""
        self._queued_bytes += nbytes
        self.items.append(item)

    def drop_oldest(self) -> int:
        """Drop the oldest queued item (under ``lock`` and ``drop_lock``); its bytes."""
        old = self.items.popleft()
        count = point_count(old)
        self._head += count
        if type(old) is Gap:
            self._gap_items -= 1
        else:
            self._dropped += count
        nbytes = item_bytes(old)
        self._queued_bytes -= nbytes
        return nbytes

    def drop_incoming(self, item: Any) -> None:
        """Account for an incoming item that the full lossy channel could not take."""
        count = point_count(item)
        with self.drop_lock:
            self._dropped += count
            if not self.items:
                self._head += count
            elif type(self.items[-1]) is Gap:
                self.items[-1].count += count
            else:
                # Keep index order: the dropped point sits behind what is queued.
                self._gap_items += 1
                self.items.append(Gap(count))

    def lose(self, count: int) -> None:
        """Queue a gap of ``count`` points the producer lost (under ``lock``): counted as
        dropped, written as a ``dropped`` gap marker in index order."""
        self._dropped += count
        self._gap_items += 1
        self.items.append(Gap(count))

    def skip(self, count: int, *, gap: bool) -> None:
        """Leave the next ``count`` indices to entries written by other means (a test's
        hand-made entry); ``gap`` marks them as dropped in the next batch."""
        self._head += count
        if not gap:
            self._sent_end += count

    # -------------------------------------------------------------- flusher side

    def take(self, budget: int) -> Taken:
        """Pop queued items worth about ``budget`` bytes, and count them as sent."""
        lock = self.drop_lock
        if lock is not None:
            lock.acquire()
        try:
            taken = self._pop(budget)
            self._head += taken.count + taken.gaps
        finally:
            if lock is not None:
                lock.release()
        self._sent_end = taken.first + taken.count + taken.gaps
        return taken

    def _pop(self, budget: int) -> Taken:
        queue = self.items
        pop = queue.popleft
        first, sent_from = self._head, self._sent_end
        with self.lock:
            n = len(queue)
            only_scalars = (
                self._queued_bytes == 0 and self._gap_items == 0 and self.desc.kind == "array"
            )
        if only_scalars and self.drop_lock is None:
            return Taken([pop() for _ in range(n)], first, n, 0, 0, sent_from)
        items: list[Any] = []
        count = nbytes = gaps = gap_items = 0
        while queue and (not items or nbytes < budget):
            item = pop()
            items.append(item)
            if type(item) is Gap:
                gaps += item.count
                gap_items += 1
            else:
                count += point_count(item)
                nbytes += item_bytes(item)
        with self.lock:
            self._queued_bytes -= nbytes
            self._gap_items -= gap_items
        return Taken(items, first, count, nbytes, gaps, sent_from)

    def expire_once(self) -> bool:
        """True the first time it is asked: the stream needs its running TTL."""
        first, self._expiring = not self._expiring, True
        return first

    def acknowledge(self, points: int, end: int) -> None:
        """The server acknowledged ``points`` more points, through index ``end``."""
        self._acked += points
        self._acked_end = end
