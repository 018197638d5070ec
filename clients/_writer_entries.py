"""One scan's entry while it is written: per channel, the points taken, stored and
flushed; points gathered and stored one HDF5 write per channel; points no event brought
read from Redis again; gaps recorded in ``writer/gaps``; rewinding and cutting back to
what is safely in the file when the file had to wait.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np

import databus
from databus._encoding import FileRef

from ._nexus import GAP_REASONS
from ._writer_files import OutputFile

log = logging.getLogger("databus.writer")

#: Pending bytes of a scan that are stored without waiting for ``flush_s``.
STORE_BYTES = 16 * 2**20


@dataclasses.dataclass
class Channel:
    """One channel of an entry: where its data goes and how far it got."""

    node: Any
    name: str  # the channel's full name
    short: str  # its HDF5 name
    path: str | None  # where its data lives in the entry (None: lima, linked at the end)
    index: int  # its row in writer/progress
    written: int = 0  # points taken: stored, or pending
    stored: int = 0  # points in its dataset and in writer/progress
    durable: int = 0  # points stored when its file was last flushed
    point_shape: tuple[int, ...] | None = None  # its dataset's shape past the first axis
    pending: list[np.ndarray] = dataclasses.field(default_factory=list)
    refs: list[tuple[int, FileRef]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Entry:
    """One scan being written."""

    scan: Any
    file: OutputFile
    name: str
    channels: dict[str, Channel]
    gaps: set[tuple[int, int, int, int]] = dataclasses.field(default_factory=set)
    handles: dict[str, Any] = dataclasses.field(default_factory=dict)
    generation: int = -1
    failed: str | None = None
    pending_bytes: int = 0
    behind: bool = False  # events went by unwritten: take what is missing from Redis at the end

    def record_progress(self) -> None:
        """``writer/progress`` from what each channel has stored."""
        progress = [ch.stored for ch in self.channels.values()]
        self.dataset("writer/progress")[:] = np.asarray(progress, dtype=np.int64)

    def dataset(self, path: str) -> Any:
        """The dataset at ``path`` in the entry, its handle kept while the file stays open."""
        if self.generation != self.file.generation:
            self.handles.clear()
            self.generation = self.file.generation
        ds = self.handles.get(path)
        if ds is None:
            ds = self.handles[path] = self.file.h5[f"{self.name}/{path}"]
        return ds

    def _channel(self, channel: str) -> Channel:
        ch = self.channels.get(channel)
        if ch is None:
            raise ValueError(f"channel {channel!r} was not declared when the scan was prepared")
        return ch

    def write(self, channel: str, data: databus.EventData) -> None:
        """Take a NEW_DATA block: references are kept for the end, points are gathered
        and stored by ``store`` (at least every ``flush_s``, or once ``STORE_BYTES``
        are pending)."""
        ch = self._channel(channel)
        first, block = data.first_index, data.data
        if ch.path is None:  # lima: remember the references, link them at the end
            index = first
            for ref in block:
                ch.refs.append((index, ref))
                index += len(ref)
            ch.written = ch.stored = index
            self.dataset("writer/progress")[ch.index] = ch.written
            return
        if first + data.block_size <= ch.written:
            return  # written before a restart
        if first > ch.written:  # points the walk skipped, or went by while the file waited
            self._catch_up(ch, first)
        self._take(ch, block, ch.written - first)

    def _take(self, ch: Channel, block: Any, skip: int) -> None:
        """Gather ``block`` but its first ``skip`` points for ``ch``'s next store."""
        if isinstance(block, list):  # json records
            block = np.array([json.dumps(r) for r in block[skip:]], dtype=object)
        else:
            block = block[skip:]
            if ch.point_shape is None:
                ch.point_shape = tuple(self.dataset(str(ch.path)).shape[1:])
            if block.shape[1:] != ch.point_shape:
                raise ValueError(
                    f"channel {ch.name!r}: points of shape {block.shape[1:]} do not fit "
                    f"its dataset of shape {ch.point_shape}"
                )
        ch.pending.append(block)
        ch.written += len(block)
        self.pending_bytes += block.nbytes
        if self.pending_bytes >= STORE_BYTES:
            self.store()

    def _catch_up(self, ch: Channel, stop: int) -> None:
        """Points ``ch.written .. stop - 1``, which no event brought, read from Redis; a
        gap if Redis cannot give them (expired, never kept, undecodable)."""
        ds = self.dataset(str(ch.path))
        step = max(1, STORE_BYTES // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))
        while ch.written < stop:
            first, last = ch.written, min(stop, ch.written + step) - 1
            try:
                block = ch.node.get(first, last)
            except databus.DatabusError as exc:
                gone = isinstance(exc, (databus.DataExpired, databus.UnknownScan))
                reason = "expired" if gone and not isinstance(exc, databus.DataLost) else "missing"
                log.warning("%s: cannot read %s again (%s)", self.scan.db_name, ch.name, exc)
                self.gap(ch.name, first, last + 1 - first, reason)
                continue
            if len(block) != last + 1 - first:  # never short: the points after stay in order
                self.gap(ch.name, first, last + 1 - first, "missing")
                continue
            self._take(ch, block, 0)

    def catch_up_all(self) -> dict[str, list[int | None]]:
        """Every channel read up to what Redis has, for a scan whose events went by while
        its file waited; if the scan is gone from Redis, what is missing per channel
        (from, None), as ``writer/missing`` records it."""
        self.behind = False
        try:
            self.scan.refresh()
        except databus.UnknownScan:
            return {c.name: [c.written, None] for c in self.channels.values()}
        for ch in self.channels.values():
            if ch.path is None or ch.node is None:
                continue
            try:
                total = len(ch.node)
            except databus.DatabusError:
                continue  # the scan is gone: what was written is all there is
            if total > ch.written:
                self._catch_up(ch, total)
        return {}

    def store(self) -> None:
        """Write every channel's pending points to its dataset (one write each), then
        ``writer/progress``: a writer killed before this takes them from Redis again."""
        pending = [ch for ch in self.channels.values() if ch.pending and ch.path]
        if not pending:
            return
        for ch in pending:
            block = ch.pending[0] if len(ch.pending) == 1 else np.concatenate(ch.pending)
            ds = self.dataset(str(ch.path))
            end = ch.stored + len(block)
            if ds.shape[0] < end:
                ds.resize(end, axis=0)
            ds[ch.stored : end] = block
            ch.stored, ch.pending = end, []
        self.pending_bytes = 0
        self.record_progress()

    def gap(self, channel: str, first: int, count: int, reason: str) -> None:
        """Record points ``first .. first+count-1`` that will never come: a row of
        ``writer/gaps`` (kept across restarts), the dataset grown over them (fill value)."""
        ch = self._channel(channel)
        if ch.path is not None and first > ch.written:
            self._catch_up(ch, first)
        code = GAP_REASONS.index(reason) if reason in GAP_REASONS else GAP_REASONS.index("missing")
        self.store()  # the points before the gap first
        stop = first + count
        first = max(first, ch.written)  # the part before was written from real points
        if first >= stop:
            return
        row = (ch.index, first, stop - 1, code)
        if row not in self.gaps:
            self.gaps.add(row)
            table = self.dataset("writer/gaps")
            table.resize(len(table) + 1, axis=0)
            table[-1] = row
            log.warning(
                "%s channel %r: points %d..%d will never come (%s)",
                self.scan.db_name,
                channel,
                first,
                stop - 1,
                reason,
            )
        if ch.path is not None:
            ds = self.dataset(ch.path)
            if ds.shape[0] < stop:
                ds.resize(stop, axis=0)
        ch.written = ch.stored = stop
        self.dataset("writer/progress")[ch.index] = stop

    def flushed(self) -> None:
        """The file was flushed: what each channel stored is durable."""
        for ch in self.channels.values():
            ch.durable = ch.stored

    def rewind(self, failed: bool) -> None:
        """Forget the points not stored, or if a write ``failed``, not flushed (from the
        start of the chunk HDF5 may have been rewriting); the next event or the end
        reads them from Redis again."""
        for ch in self.channels.values():
            if ch.path is None:
                continue
            keep = ch.durable if failed else ch.stored
            if failed and self.file.h5 is not None:
                keep -= keep % self.dataset(ch.path).chunks[0]
            ch.written = ch.stored = keep
            ch.durable = min(ch.durable, keep)
            ch.pending = []
        self.pending_bytes = 0
        self.behind = True

    def cut(self) -> None:
        """Cut each dataset and ``writer/progress`` back to what the entry stored."""
        for ch in self.channels.values():
            if ch.path is not None:
                ds = self.dataset(ch.path)
                if ds.shape[0] > ch.stored:
                    ds.resize(ch.stored, axis=0)
        self.record_progress()
