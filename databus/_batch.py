"""Where points are batched: queued items become the XADD commands of one flush.

Scalars and small blocks of a channel are merged into entries of about
``Descriptor.entry_bytes``; large blocks (frames) are written from their own memory; json
records go ``RECORDS_PER_ENTRY`` to an entry; points a lossy channel dropped become gap
markers. Entry IDs are point indices, so a batch sent again is refused entry by entry as
"equal or smaller" and nothing is written twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._encoding import (
    GAP_DROPPED,
    Descriptor,
    block_entries,
    gap_entry,
    record_entry,
    ref_entry,
)
from ._queue import ChannelQueue, Gap, points_in
from ._store import commands
from ._store.commands import Command

#: Items below this size are merged with their neighbours into one entry (one copy);
#: larger ones are written from their own memory.
MERGE_BELOW = 256 * 1024
#: Records per entry of a json channel.
RECORDS_PER_ENTRY = 4096


@dataclasses.dataclass
class Batch:
    """What one flush carries: commands, and per channel the points they hold and the
    index they reach; ``blocks`` are the items to give back to the buffer pool."""

    commands: list[Command] = dataclasses.field(default_factory=list)
    points: dict[ChannelQueue, int] = dataclasses.field(default_factory=dict)
    ends: dict[ChannelQueue, int] = dataclasses.field(default_factory=dict)
    blocks: list[Any] = dataclasses.field(default_factory=list)
    nbytes: int = 0
    entries: int = 0

    def collect(self, queue: ChannelQueue, budget: int, running_ttl: float) -> None:
        """Move about ``budget`` bytes of ``queue``'s items into this batch as commands (a
        stream's first batch also gives it ``running_ttl``)."""
        taken = queue.take(budget)
        out = self.commands
        before = len(out)
        if taken.first > taken.sent_from:  # a lossy channel dropped points never sent
            out.append(commands.gap(queue.key, taken.sent_from, taken.first, GAP_DROPPED))
        for entry_id, fields in _entries_for(queue.desc, taken.first, taken.items, taken.gaps):
            out.append(commands.xadd(queue.key, fields, entry_id))
        self.entries += len(out) - before
        self.ends[queue] = taken.first + taken.count + taken.gaps
        if out and queue.expire_once():
            out.append(commands.pexpire(queue.key, running_ttl))
        self.points[queue] = self.points.get(queue, 0) + taken.count
        self.nbytes += taken.nbytes
        if taken.nbytes:
            self.blocks += taken.items


def seal_commands(queue: ChannelQueue) -> list[Command]:
    """The end of ``queue``'s stream once everything it accepted is flushed: a gap marker
    for the points dropped after its last batch, if any, then its seal."""
    trailing = queue.unsent_drop
    gap = [] if trailing is None else [commands.gap(queue.key, *trailing, GAP_DROPPED)]
    return [*gap, commands.seal(queue.key, queue.head)]


def _entries_for(
    desc: Descriptor, first: int, items: list[Any], gaps: int
) -> Iterator[tuple[bytes, dict[bytes, Any]]]:
    """Entries for ``items`` from index ``first``: a gap marker for each run of dropped
    points (``gaps`` of them in all), data entries for the rest."""
    for index, run in _runs(first, items) if gaps else [(first, items)]:
        if isinstance(run, Gap):
            yield gap_entry(index, index + run.count, GAP_DROPPED)
        elif desc.kind == "json":
            for start in range(0, len(run), RECORDS_PER_ENTRY):
                yield record_entry(index + start, run[start : start + RECORDS_PER_ENTRY])
        elif desc.kind == "ref":
            for ref in run:
                yield ref_entry(index, ref)
                index += len(ref)
        else:
            for start, block in _blocks(desc, index, run):
                yield from block_entries(desc, start, block)


def _runs(first: int, items: list[Any]) -> Iterator[tuple[int, list[Any] | Gap]]:
    """Split items at gaps: (first index, run of items) and (first index, gap) pairs."""
    index = first
    run: list[Any] = []
    for item in items:
        if type(item) is Gap:
            if run:
                yield index, run
                index += points_in(run)
                run = []
            yield index, item
            index += item.count
        else:
            run.append(item)
    if run:
        yield index, run


def _blocks(desc: Descriptor, first: int, items: list[Any]) -> Iterator[tuple[int, np.ndarray]]:
    """Turn queued items (no gaps) into (first index, block) pairs: scalars and small
    blocks are merged into one block, large ones kept apart (no copy)."""
    dt = desc.dtype
    if desc.shape == () and type(items[0]) is not np.ndarray:
        try:
            arr = np.array(items, dtype=dt)
        except (ValueError, TypeError):
            arr = None
        if arr is not None and arr.shape == (len(items),):
            yield first, arr
            return
    index = first
    small: list[np.ndarray] = []
    small_bytes = 0
    small_first = index

    def merged() -> np.ndarray:
        return small[0] if len(small) == 1 else np.concatenate(small)

    for item in items:
        kind = type(item)
        if kind is np.ndarray and item.nbytes >= MERGE_BELOW:
            if small:
                yield small_first, merged()
                small, small_bytes = [], 0
            yield index, item
            index += len(item)
            small_first = index
            continue
        block = item if kind is np.ndarray else np.array([item], dtype=dt)
        small.append(block)
        small_bytes += block.nbytes
        index += len(block)
        if small_bytes >= desc.entry_bytes:
            yield small_first, merged()
            small, small_bytes, small_first = [], 0, index
    if small:
        yield small_first, merged()
