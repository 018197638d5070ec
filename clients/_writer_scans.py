"""The scans the writer has in hand: the entry each one is written to, the files those
live in, and the scans held while their file waits (a full disk, another writer); each
event of a written scan goes to its entry here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import databus
from databus._saving import Layout, derived_from, processed_file, scan_file

from ._writer_entries import Entry
from ._writer_files import OutputFile, no_space
from ._writer_frames import TrustedRoots
from ._writer_lifecycle import (
    IncompleteEntry,
    add_channel,
    end_entry,
    entry_bytes,
    entry_name,
    note,
    open_entry,
)

log = logging.getLogger("databus.writer")

#: The events the writer acts on (a scan's entry is made at the first of them).
_WRITTEN = (
    databus.EventType.PREPARED_SCAN,
    databus.EventType.NEW_DATA,
    databus.EventType.GAP,
    databus.EventType.END_SCAN,
)


@dataclasses.dataclass
class Held:
    """A scan waiting for its file (full disk, another writer): its end, once it came."""

    scan: Any
    file: OutputFile
    end: databus.ScanEnd | None = None


class ScanFiles:
    """The scans being written under ``root`` (``layout``: one file per session and day,
    or per scan), their files, and the scans that wait for a file. ``flush_s``: how long a
    point may wait to be stored and flushed, and how often a locked file is tried again;
    ``error`` reports a failure, ``written`` each ``<file>::<entry>`` finished."""

    def __init__(
        self,
        root: Path,
        layout: Layout,
        compression: dict[str, Any],
        flush_s: float,
        trusted: TrustedRoots,
        error: Callable[[str], None],
        written: Callable[[str], None],
    ) -> None:
        self.root = root
        self.layout = layout
        self.compression = compression
        self.flush_s = flush_s
        self.trusted = trusted
        self.error = error
        self.written = written
        self.files: dict[Path, OutputFile] = {}
        self.entries: dict[str, Entry] = {}
        self.held: dict[str, Held] = {}
        self.refused: set[str] = set()  # scans whose entry cannot be made: not tried again
        self.sources: dict[str, Any] = {}  # derived scans' sources, by key (None: gone)

    def file(self, path: Path) -> OutputFile:
        """The file at ``path``, the same object for every scan written to it."""
        f = self.files.get(path)
        if f is None:
            f = self.files[path] = OutputFile(self.root, path, self.flush_s)
        return f

    def location(self, scan: Any) -> tuple[Path, str]:
        """(file, entry name) of ``scan``; see ``entry_name`` for a number used twice. A
        scan an analysis derived from another goes next to that one's file
        (``<raw>_processed.h5``) while the source is still on the bus."""
        source = self._source(scan)
        if source is not None:
            raw, _ = self.location(source)
            return processed_file(raw), f"{scan.number}.1"
        created = scan.created or time.time()
        path = scan_file(self.root, scan.parent.name, scan.number, created, self.layout)
        return path, f"{scan.number}.1"

    def _source(self, scan: Any) -> Any:
        """The scan ``scan`` was derived from, if it is one and is still on the bus."""
        key = derived_from(scan.info)
        if key is None:
            return None
        if key not in self.sources:
            try:
                self.sources[key] = scan.bus.scan(key)
            except (databus.UnknownScan, databus.CorruptEntry, ValueError):
                self.sources[key] = None
        return self.sources[key]

    def complete(self, scan: Any) -> bool:
        """True if the scan's entry is finished in its file, or the file cannot be read (it
        is not touched); False while the file waits (opening the entry holds the scan)."""
        path, name = self.location(scan)
        if not path.exists():
            return False
        try:
            f = self.file(path)
            h5 = f.h5 if f.h5 is not None else f.structural()
            name = entry_name(h5, scan, name)
            return name in h5 and "end_reason" in h5[name]
        except Exception as exc:
            if isinstance(exc, BlockingIOError) or no_space(exc):
                return False
            self.error(f"{path}: cannot read ({exc})")
            return True

    def take(self, event: databus.Event, scan: Any) -> None:
        """Write ``event`` of ``scan`` to its entry, or keep its end while the scan is held."""
        key = scan.db_name
        kind = event.type
        if kind is databus.EventType.NEW_NODE and event.node is not scan:
            self.late_channels(scan)
            return
        if key in self.refused or kind not in _WRITTEN:
            return
        entry = self.entries.get(key)
        if entry is not None and entry.file.blocked is not None:
            self.hold(scan, entry.file)  # the file waits: this event's data stays in Redis
            entry = None
        elif entry is None:
            entry = self.open(scan)
        if entry is None:  # held until its file can be written
            if kind is databus.EventType.END_SCAN and key in self.held:
                self.held[key].end = event.data
            return
        if kind is databus.EventType.NEW_DATA:
            if entry.failed is None:
                entry.write(event.node.name, event.data)
        elif kind is databus.EventType.GAP:
            if entry.failed is None:
                gap = event.data
                entry.gap(event.node.name, gap.first_index, gap.block_size, gap.reason)
        elif kind is databus.EventType.END_SCAN:
            self.finish(entry, event.data)

    def late_channels(self, scan: Any) -> None:
        """Add to ``scan``'s entry the channels declared after it was made (a stream that
        starts mid-run); a channel declared before the entry is made comes with it, and
        a scan whose file waits gets them once it is taken up again."""
        entry = self.entries.get(scan.db_name)
        if entry is None or entry.failed is not None or entry.file.blocked is not None:
            return
        try:
            channels = scan.refresh().channels
        except databus.UnknownScan:
            return  # gone from Redis: its end says what is missing
        late = [n for n in channels.values() if n.name not in entry.channels]
        for node in late:
            add_channel(entry, node, self.compression)
            log.info("%s: channel %r added to %s", scan.db_name, node.name, entry.name)
        if late:
            where = {c.name: f"/{entry.name}/{c.path}" for c in entry.channels.values() if c.path}
            note(scan.db_name, lambda: scan.record_file(str(entry.file.path), where))

    def open(self, scan: Any) -> Entry | None:
        """The scan's entry, created or taken up unfinished where the file says. None
        while its file waits (full disk, another writer: the scan is held), or if another
        writer finished it."""
        key = scan.db_name
        if key in self.entries:  # a scan held while its file waited, taken up again
            self.late_channels(scan)
            return self.entries[key]
        held = self.held.get(key)
        if held is not None and held.file.blocked is not None:
            return None
        scan = scan.refresh()
        path, name = self.location(scan)
        file = self.file(path)
        if file.blocked is not None:
            self.hold(scan, file)
            return None
        try:
            h5 = file.structural()
            file.check_room(entry_bytes(scan))
        except OSError as exc:
            if not (no_space(exc) or isinstance(exc, BlockingIOError)):
                raise
            self.block(file, exc)
            self.hold(scan, file)
            return None
        try:
            opened = open_entry(file, h5, scan, name, self.compression)
        except IncompleteEntry as exc:
            self.block(file, exc)
            self.hold(scan, file)
            return None
        if opened is None:
            self.refused.add(key)
            return None
        entry, resumed = opened
        self.entries[key] = entry
        where = {c.name: f"/{entry.name}/{c.path}" for c in entry.channels.values() if c.path}
        note(key, lambda: scan.record_file(str(path), where))
        file.live()
        log.info(
            "%s %s -> %s::%s%s",
            "resuming" if resumed else "writing",
            key,
            path,
            entry.name,
            f" from {dict((c.name, c.written) for c in entry.channels.values())}"
            if resumed
            else "",
        )
        return entry

    def finish(self, entry: Entry, end: databus.ScanEnd) -> None:
        """Write the entry's end, note the scan written, and let go of its file once no
        other scan writes to it (layout ``scan``)."""
        key = entry.scan.db_name
        reason = end_entry(entry, end, self.trusted)
        del self.entries[key]
        note(key, entry.scan.record_written)
        try:
            ended = entry.scan.refresh().ended or time.time()
        except databus.UnknownScan:
            ended = time.time()
        self.written(f"{entry.file.path}::{entry.name}")
        log.info(
            "finished %s -> %s::%s (%s), %.2f s after the scan ended",
            key,
            entry.file.path,
            entry.name,
            reason,
            time.time() - ended,
        )
        if any(other.file is entry.file for other in self.entries.values()):
            entry.file.live()
        elif self.layout == "scan":
            entry.file.close()

    def trouble(self, scan: Any, exc: Exception) -> None:
        """A scan's event failed: a full disk holds its file, anything else fails it."""
        key = scan.db_name
        if not no_space(exc):
            self.fail(key, exc)
            return
        entry = self.entries.get(key)
        file = entry.file if entry is not None else self.file(self.location(scan)[0])
        self.block(file, exc, failed=True)
        self.hold(scan, file)

    def fail(self, key: str, exc: Exception) -> None:
        """Report why ``key`` cannot be written; its entry ends "writer failed", and a scan
        whose entry could not be made is not tried again (one error, not one per event)."""
        entry = self.entries.get(key)
        self.error(f"{key}: {type(exc).__name__}: {exc}")
        if entry is None:
            self.refused.add(key)
        elif entry.failed is None:
            entry.failed = f"{type(exc).__name__}: {exc}"

    def hold(self, scan: Any, file: OutputFile) -> None:
        """Keep ``scan`` until ``file`` can be written again (see ``_writer_upkeep.tick``)."""
        if scan.db_name not in self.held:
            self.held[scan.db_name] = Held(scan, file)

    def block(self, file: OutputFile, exc: Exception, failed: bool = False) -> None:
        """Stop writing ``file`` (see ``OutputFile.block``): its scans wait and their
        unstored points, or if a write ``failed`` their unflushed ones, are dropped (Redis
        still has them: they are read again)."""
        file.block(exc, failed)
        for entry in self.entries.values():
            if entry.file is file:
                entry.rewind(failed)

    def close(self) -> None:
        """Store what every writable entry has pending, then close every file (a full
        disk is reported: the next start resumes from the file)."""
        for entry in self.entries.values():
            if entry.failed is None and entry.file.blocked is None:
                entry.store()
        for f in self.files.values():
            try:
                f.close()
            except Exception as exc:
                self.error(f"{f.path}: cannot close it ({type(exc).__name__}: {exc})")
