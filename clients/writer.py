"""The external NeXus/HDF5 file writer: follows sessions and writes every saved scan live.

    databus writer --session demo --root /data [--layout session|scan] [--compression lz4]
                   [--trust-ref-root DIR]

Layout ``session`` (default, ESRF style) writes one file per session and day,
``<root>/<session>/<session>_<YYYYMMDD>.h5``, one NXentry ``<number>.1`` per scan; layout
``scan`` writes ``<root>/<session>/<session>_<number>.h5``. Each entry has the NeXus
tree tools expect (``@default`` -> NXdata ``plotselect`` with @signal and @axes,
``instrument`` with an NXpositioner per motor and an NXdetector per detector,
``measurement`` linking every channel, ``scan_info``), and ``writer/progress``: per
channel, the number of points stored, updated with every write.

Live and resumable: an entry is created when its scan is prepared, then the file is in
SWMR mode and data is appended as it arrives, so h5py/silx/h5web can read it while it
grows: points are gathered per channel, stored and flushed at least every ``flush_s``
(one HDF5 write per channel, not one per event: at 1 kHz of events HDF5's per-call cost
would take half a core). Structure changes (a new entry, the end of a scan) close SWMR
briefly. After a crash the writer trusts the file, not its memory: on
restart it cuts every dataset back to its recorded progress and continues from there,
so no point is lost or written twice. A scan whose data expired before the writer came
back is marked (``end_reason``, ``writer/missing``), never left silently short. Points
that will never come (a lossy channel dropped them, the server restarted without them)
are left at the fill value and listed in ``writer/gaps`` as they are reported.

Names map one to one: ``hdf5_name`` escapes ``%``, ``/``, NUL and a leading ``.`` as
``%XX``, so no two channels, info keys or sessions share a name; two channels still
meeting in one group get ``_2``, ``_3``... and every dataset keeps its channel's name in
``@channel``. File and folder names (``file_name``) are cut at 200 bytes and end with
``%~`` and a hash of the name. Paths under ``--root`` are never followed through a
symbolic link. A full disk holds the scans of the file (their data stays in Redis) and
is retried with backoff; a file another writer holds is retried every ``flush_s`` and
taken over once that writer is gone. Frames a detector wrote are linked only from files
under trusted roots, and checked against the file; other references are listed as text.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

import databus
from databus._encoding import FileRef, text
from databus._subscribe import referenced_frames, scan_exists

from ._h5clear import clear_status_flags
from ._nexus import (
    GAP_REASONS,
    create_entry,
    file_name,
    free_name,
    h5_text,
    h5py_module,
    hdf5_name,
    iso,
    original_name,
    plotselect,
    root_attributes,
)

log = logging.getLogger("databus.writer")

#: Pending bytes of a scan that are stored without waiting for ``flush_s``.
STORE_BYTES = 16 * 2**20
#: Free bytes a file's device keeps beyond what is pending before the writer stores more.
ROOM_BYTES = 2**20
#: Longest wait between two tries of a file whose disk was full (seconds).
MAX_BACKOFF_S = 30.0
#: The events the writer acts on (a scan's entry is made at the first of them).
_WRITTEN = (
    databus.EventType.PREPARED_SCAN,
    databus.EventType.NEW_DATA,
    databus.EventType.GAP,
    databus.EventType.END_SCAN,
)


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _no_space(exc: BaseException) -> bool:
    """True if ``exc`` says the disk is full: its errno, or for h5py's RuntimeErrors
    (a failed flush), the system's text for it inside HDF5's message."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    return isinstance(exc, (OSError, RuntimeError)) and any(
        os.strerror(code) in str(exc) for code in _FULL
    )


def _compression(kind: str | None) -> dict[str, Any]:
    if kind in (None, "none"):
        return {}
    if kind == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    if kind == "lz4":
        try:
            import hdf5plugin
        except ImportError:
            raise ImportError(
                "lz4 compression needs hdf5plugin: pip install 'databus[hdf5]'"
            ) from None
        return dict(hdf5plugin.LZ4())
    raise ValueError(f"compression must be 'none', 'gzip' or 'lz4', not {kind!r}")


class _File:
    """One HDF5 file the writer holds: SWMR while data flows, plain append mode while its
    structure changes. ``generation`` counts reopenings (dataset handles go stale).
    ``blocked`` says why its scans wait (a full disk, another writer), ``retry_at`` when
    the writer tries again."""

    def __init__(self, root: Path, path: Path) -> None:
        self.root = root
        self.path = path
        self.h5: Any = None
        self.generation = 0
        self.last_flush = time.monotonic()
        self.blocked: str | None = None
        self.retry_at = 0.0
        self.backoff = 0.0
        self.failed_write = False  # HDF5 failed in a write since the file was last usable
        self._lock: int | None = None

    def _check_path(self) -> None:
        """PermissionError unless the file, resolved, is where ``root`` says: no symbolic
        link (nor a second hard link) may lead the writer out of its root or onto another
        session's file."""
        real_root = os.path.realpath(self.root)
        wanted = os.path.join(real_root, os.path.relpath(self.path, self.root))
        real = os.path.realpath(self.path)
        if real != wanted:
            raise PermissionError(
                f"{self.path}: refusing to write through a symbolic link (it resolves to "
                f"{real}, not {wanted}); remove the link or choose another --root"
            )
        if os.path.exists(real) and os.stat(real).st_nlink > 1:
            raise PermissionError(
                f"{self.path}: refusing to write a file with other hard links (they may lie "
                f"outside the root); copy it and remove the links"
            )

    def _take_lock(self) -> None:
        """Hold ``.<file>.lock`` while this writer has the file: no two writers write one
        file, and only the lock's holder may repair what a killed writer left. The lock
        file is never followed if it is a link, nor truncated. BlockingIOError while
        another writer holds it (try again later: it is free once that writer is gone)."""
        if self._lock is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._check_path()
        name = self.path.with_name(f".{self.path.name}.lock")
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise PermissionError(
                f"{name} is a symbolic link; refusing to open it (remove it)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BlockingIOError(
                errno.EWOULDBLOCK, f"{self.path} is being written by another writer process"
            ) from None
        self._lock = fd

    def check_room(self, pending: int = 0) -> None:
        """OSError (ENOSPC) unless the file's disk has ``pending`` + ``ROOM_BYTES`` free:
        the writer stops before HDF5 fails half way through a write."""
        where = next(p for p in (self.path.parent, *self.path.parents) if p.exists())
        st = os.statvfs(where)
        free = st.f_bavail * st.f_frsize
        if free < pending + ROOM_BYTES:
            raise OSError(
                errno.ENOSPC, f"no space left on the disk of {self.path} ({free} bytes free)"
            )

    def structural(self) -> Any:
        """The file, open for structure changes (SWMR off)."""
        h5py = h5py_module()
        self.check_room()
        if self.h5 is not None and self.h5.swmr_mode:
            self.h5.close()
            self.h5 = None
        if self.h5 is None:
            self._take_lock()
            self._check_path()
            new = not self.path.exists()
            try:
                self.h5 = h5py.File(self.path, "a", libver="latest", locking=False)
            except OSError as exc:
                if "already open for write" not in str(exc):
                    raise
                # A writer was killed while the file was in SWMR mode; we hold the lock,
                # so no writer is alive: repair it as h5clear would, then open it.
                clear_status_flags(self.path)
                log.warning("%s: cleared what a killed writer left in its superblock", self.path)
                self.h5 = h5py.File(self.path, "a", libver="latest", locking=False)
            self.generation += 1
            if new:
                root_attributes(self.h5, self.path)
        return self.h5

    def live(self) -> Any:
        """The file, in SWMR mode (readers see appended data once flushed)."""
        h5 = self.structural() if self.h5 is None else self.h5
        if not h5.swmr_mode:
            h5.flush()
            h5.swmr_mode = True
        return h5

    def flush(self) -> None:
        if self.h5 is not None:
            self.h5.flush()
            self.last_flush = time.monotonic()

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


@dataclasses.dataclass
class _Channel:
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
class _Entry:
    """One scan being written."""

    scan: Any
    file: _File
    name: str
    channels: dict[str, _Channel]
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
        if self.generation != self.file.generation:
            self.handles.clear()
            self.generation = self.file.generation
        ds = self.handles.get(path)
        if ds is None:
            ds = self.handles[path] = self.file.h5[f"{self.name}/{path}"]
        return ds


@dataclasses.dataclass
class _Held:
    """A scan waiting for its file (full disk, another writer): its end, once it came."""

    scan: Any
    file: _File
    end: databus.ScanEnd | None = None


class NexusWriter:
    """Writes the saved scans of ``sessions`` under ``root`` as they happen.

    layout: ``session`` (one file per session and day) or ``scan`` (one file per scan).
    compression: ``none``, ``gzip`` or ``lz4`` for frames.
    flush_s: the longest a written point waits before readers can see it; also how often
        a file another writer holds is tried again.
    trust_ref_roots: directories whose files frames may be linked from (default: those
        each scan's info names in ``detector_directories``, and the simulated detectors'
        ``<server_dir>/detectors``).
    """

    def __init__(
        self,
        bus: databus.Bus,
        sessions: Iterable[str],
        root: str | Path,
        layout: str = "session",
        compression: str | None = None,
        flush_s: float = 0.5,
        trust_ref_roots: Iterable[str | Path] = (),
    ) -> None:
        if layout not in ("session", "scan"):
            raise ValueError(f"layout must be 'session' or 'scan', not {layout!r}")
        h5py_module()  # fail here, once, rather than on every scan
        self.bus = bus
        self.sessions = list(sessions)
        self.root = Path(root)
        self.layout = layout
        self.compression = _compression(compression)
        self.flush_s = flush_s
        self.trusted = [os.path.realpath(d) for d in trust_ref_roots]
        self.stop_handler = databus.StopHandler()
        self._files: dict[Path, _File] = {}
        self._entries: dict[str, _Entry] = {}
        self._held: dict[str, _Held] = {}
        self._refused: set[str] = set()  # scans whose entry cannot be made: not tried again
        self._decisions: dict[str, bool] = {}
        self._lock = threading.RLock()
        self._died: list[str] = []  # "session 'x': <error>" of follow threads that raised
        self.written: list[str] = []  # "<file>::<entry>" of every scan finished
        self.errors: list[str] = []

    # ------------------------------------------------------------------ paths

    def location(self, scan: Any) -> tuple[Path, str]:
        """(file, entry name) of ``scan``; see ``_entry_name`` for a number used twice."""
        session = file_name(scan.parent.name)
        if self.layout == "scan":
            path = self.root / session / f"{session}_{scan.number:04d}.h5"
        else:
            created = scan.created or time.time()
            day = datetime.datetime.fromtimestamp(created).strftime("%Y%m%d")
            path = self.root / session / f"{session}_{day}.h5"
        return path, f"{scan.number}.1"

    @staticmethod
    def _entry_name(h5: Any, scan: Any, name: str) -> str:
        """``name`` (``<number>.1``), unless that entry holds another scan of the same
        number (a server restarted without its data counts again from 1): then
        ``<number>.2``, ``<number>.3``... Scans are told apart by their creation time."""
        created = scan.created or 0.0
        number, k = name.rsplit(".", 1)
        k_int = int(k)
        while name in h5:
            stored = h5[name].get("writer")
            if stored is None or stored.attrs.get("scan_created", created) == created:
                break
            k_int += 1
            name = f"{number}.{k_int}"
        return name

    def _file(self, path: Path) -> _File:
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = _File(self.root, path)
        return f

    # ------------------------------------------------------------------ following

    def _wanted(self, node: Any) -> bool:
        """include_filter of the walks: saved scans not already complete in a file."""
        if node.type in ("scan", "scan_group"):
            key = node.db_name
            if key not in self._decisions:
                self._decisions[key] = bool(node.info.get("save", True)) and not self._complete(
                    node
                )
            return self._decisions[key]
        return self._decisions.get(node.parent.db_name, False)

    def _complete(self, scan: Any) -> bool:
        path, name = self.location(scan)
        if not path.exists():
            return False
        with self._lock:
            try:
                f = self._file(path)
                h5 = f.h5 if f.h5 is not None else f.structural()
                name = self._entry_name(h5, scan, name)
                return name in h5 and "end_reason" in h5[name]
            except Exception as exc:
                if isinstance(exc, BlockingIOError) or _no_space(exc):
                    return False  # not known yet: _open_entry holds the scan until it is
                self._error(f"{path}: cannot read ({exc})")
                return True  # do not touch a file we cannot read

    def run(self, started: threading.Event | None = None) -> None:
        """Follow every session until ``stop_handler.stop()`` (or SIGTERM in ``main``).
        Every ``flush_s`` it stores and flushes, and tries again the files scans wait for.
        RuntimeError naming the session if a session's thread died (the others are
        stopped first, and what they had is stored)."""
        self.mark_expired()
        threads = []
        ready = []
        for name in self.sessions:
            event = threading.Event()
            ready.append(event)
            t = threading.Thread(
                target=self._follow, args=(name, event), name=f"writer-{name}", daemon=True
            )
            t.start()
            threads.append(t)
        for event in ready:
            event.wait(10)
        if started is not None:
            started.set()
        while alive := [t for t in threads if t.is_alive()]:
            alive[0].join(self.flush_s)
            with self._lock:
                self._tick()
        with self._lock:
            for entry in self._entries.values():
                if entry.failed is None and entry.file.blocked is None:
                    self._store(entry)
            for f in self._files.values():
                try:
                    f.close()
                except Exception as exc:  # a full disk: the next start resumes from the file
                    self._error(f"{f.path}: cannot close it ({type(exc).__name__}: {exc})")
        if self._died:
            raise RuntimeError(f"the writer stopped: {self._died[0]}")

    def _follow(self, session: str, started: threading.Event) -> None:
        """Write ``session``'s events; if the walk itself raises, stop every session."""
        try:
            self._follow_session(session, started)
        except BaseException as exc:
            self._died.append(f"session {session!r}: {type(exc).__name__}: {exc}")
            log.error("session %r: its walk failed (%s); stopping", session, exc)
            self.stop_handler.stop()
        finally:
            started.set()

    def _follow_session(self, session: str, started: threading.Event) -> None:
        try:
            node = self.bus.session(session)
        except ValueError as exc:  # a name the bus refuses: the other sessions go on
            self._error(f"session {session!r} cannot be followed ({exc}); writing the others")
            return
        # From the session's first scan still in Redis: scans that ended while no writer
        # ran are written too; the filter skips those already complete in a file.
        events = node.follow(
            replay=True,
            include_filter=self._wanted,
            stop_handler=self.stop_handler,
            started_event=started,
        )
        for event in events:
            with self._lock:
                node = event.node
                scan = node if node.type in ("scan", "scan_group") else node.parent
                try:
                    self._on(event, scan)
                except Exception as exc:  # one scan's trouble never stops the others
                    self._trouble(scan, exc)
                self._flush_due()

    def _on(self, event: databus.Event, scan: Any) -> None:
        key = scan.db_name
        kind = event.type
        if key in self._refused or kind not in _WRITTEN:
            return
        entry = self._entries.get(key)
        if entry is not None and entry.file.blocked is not None:
            self._hold(scan, entry.file)  # the file waits: this event's data stays in Redis
            entry = None
        elif entry is None:
            entry = self._open_entry(scan)
        if entry is None:  # held until its file can be written
            if kind is databus.EventType.END_SCAN and key in self._held:
                self._held[key].end = event.data
            return
        if kind is databus.EventType.NEW_DATA:
            if entry.failed is None:
                self._write(entry, event.node.name, event.data)
        elif kind is databus.EventType.GAP:
            if entry.failed is None:
                gap = event.data
                self._gap(entry, event.node.name, gap.first_index, gap.block_size, gap.reason)
        elif kind is databus.EventType.END_SCAN:
            self._finish(entry, event.data)

    def _trouble(self, scan: Any, exc: Exception) -> None:
        """A scan's event failed: a full disk holds its file, anything else fails it."""
        key = scan.db_name
        if not _no_space(exc):
            self._fail(key, exc)
            return
        entry = self._entries.get(key)
        file = entry.file if entry is not None else self._file(self.location(scan)[0])
        self._block(file, exc, failed=True)
        self._hold(scan, file)

    # ------------------------------------------------------------------ waiting

    def _hold(self, scan: Any, file: _File) -> None:
        """Keep ``scan`` until ``file`` can be written again (see ``_retry``)."""
        if scan.db_name not in self._held:
            self._held[scan.db_name] = _Held(scan, file)

    def _block(self, file: _File, exc: Exception, failed: bool = False) -> None:
        """Stop writing ``file``: its scans wait, their unstored points are dropped (Redis
        still has them: they are read again), and it is tried again later: every
        ``flush_s`` while another writer holds it, with a growing backoff while its disk
        is full. ``failed``: HDF5 failed in a write, so the handle is let go and the
        points not flushed are dropped too. Logged once per episode."""
        full = _no_space(exc)
        if file.blocked is None:
            file.backoff = self.flush_s
            log.warning(
                "%s: %s; its scans wait (their data stays in Redis), trying again %s",
                file.path,
                "no space left on its disk" if full else exc,
                "with backoff" if full else f"every {self.flush_s} s",
            )
        elif full:
            file.backoff = min(file.backoff * 2, MAX_BACKOFF_S)
        file.blocked = "no space" if full else "locked by another writer"
        file.retry_at = time.monotonic() + file.backoff
        file.failed_write = file.failed_write or failed
        for entry in self._entries.values():
            if entry.file is file:
                self._rewind(entry, failed)

    def _rewind(self, entry: _Entry, failed: bool) -> None:
        """Forget the points not stored, or if a write ``failed``, not flushed (from the
        start of the chunk HDF5 may have been rewriting); the next event or the end
        reads them from Redis again."""
        for ch in entry.channels.values():
            if ch.path is None:
                continue
            keep = ch.durable if failed else ch.stored
            if failed and entry.file.h5 is not None:
                keep -= keep % entry.dataset(ch.path).chunks[0]
            ch.written = ch.stored = keep
            ch.durable = min(ch.durable, keep)
            ch.pending = []
        entry.pending_bytes = 0
        entry.behind = True

    def _tick(self) -> None:
        """Store and flush what is due, then try the files scans wait for."""
        self._flush_due()
        now = time.monotonic()
        for f in {h.file for h in self._held.values()} | {
            e.file for e in self._entries.values() if e.file.blocked
        }:
            if f.retry_at <= now:
                try:
                    self._retry(f)
                except Exception as exc:
                    f.retry_at = now + MAX_BACKOFF_S
                    self._error(f"{f.path}: cannot write it again ({type(exc).__name__}: {exc})")

    def _retry(self, file: _File) -> None:
        """Try ``file`` again: if it can be written, cut its open entries back to what is
        safely stored, then open and finish the scans that waited for it."""
        try:
            file.check_room()
        except OSError as exc:
            self._block(file, exc)
            return
        try:
            if file.h5 is not None:
                self._flush_held(file)
            file.structural()
            for entry in self._entries.values():
                if entry.file is file:
                    self._cut(entry)
        except Exception as exc:
            if _no_space(exc) or isinstance(exc, BlockingIOError):
                self._block(file, exc, failed=_no_space(exc))
                return
            if not file.failed_write:
                raise
            self._set_aside(file, exc)
        file.failed_write = False
        if file.blocked is not None:
            log.info("%s: writing again (it was %s)", file.path, file.blocked)
        file.blocked = None
        for key, held in list(self._held.items()):
            if held.file is not file:
                continue
            del self._held[key]
            try:
                opened = self._open_entry(held.scan)
                if opened is not None:
                    opened.behind = True
                    if held.end is not None:
                        self._finish(opened, held.end)
            except Exception as exc:
                self._trouble(held.scan, exc)
        if file.h5 is not None and file.blocked is None:
            file.live()

    def _set_aside(self, file: _File, exc: Exception) -> None:
        """HDF5 left ``file`` unreadable after failing on a full disk: rename it
        ``<name>.damaged-<time>`` and write its open scans again, from Redis, into a new
        file (scans it had finished stay in the damaged one)."""
        if file.h5 is not None:
            try:
                file.h5.close()
            except Exception as close_exc:
                log.warning("%s: closing the damaged file: %s", file.path, close_exc)
            file.h5 = None
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = file.path.with_name(f"{file.path.name}.damaged-{stamp}")
        file.path.rename(aside)
        self._error(
            f"{file.path}: HDF5 failed on the full disk and left it unreadable ({exc}); "
            f"moved to {aside}, its unfinished scans are written again from Redis"
        )
        for key, entry in list(self._entries.items()):
            if entry.file is file:
                del self._entries[key]
                self._hold(entry.scan, file)

    @staticmethod
    def _flush_held(file: _File) -> None:
        """Flush what HDF5 still holds of a file that was blocked. After a write that
        failed on a full disk HDF5 may trip on its own leftover state ("slist already
        enabled"): then flush again, and if that fails too, close the handle (the next
        use reopens the file, and the entries are cut back to what was flushed)."""
        for _ in range(2):
            try:
                file.flush()
                return
            except RuntimeError as exc:
                log.info("%s: flushing again after %s", file.path, exc)
        try:
            file.h5.close()
        except Exception as exc:
            log.warning("%s: closed after a failed flush (%s)", file.path, exc)
        file.h5 = None

    def _cut(self, entry: _Entry) -> None:
        """Cut each dataset and ``writer/progress`` of ``entry`` back to what it stored."""
        for ch in entry.channels.values():
            if ch.path is not None:
                ds = entry.dataset(ch.path)
                if ds.shape[0] > ch.stored:
                    ds.resize(ch.stored, axis=0)
        entry.record_progress()

    # ------------------------------------------------------------------ entries

    def _open_entry(self, scan: Any) -> _Entry | None:
        """Create the scan's entry, or take up an unfinished one where the file says. None
        while its file waits (full disk, another writer: the scan is held), or if another
        writer finished it."""
        key = scan.db_name
        if key in self._entries:
            return self._entries[key]
        held = self._held.get(key)
        if held is not None and held.file.blocked is not None:
            return None
        scan = scan.refresh()
        path, name = self.location(scan)
        file = self._file(path)
        if file.blocked is not None:
            self._hold(scan, file)
            return None
        try:
            h5 = file.structural()
        except OSError as exc:
            if not (_no_space(exc) or isinstance(exc, BlockingIOError)):
                raise
            self._block(file, exc)
            self._hold(scan, file)
            return None
        name = self._entry_name(h5, scan, name)
        resumed = name in h5
        if resumed and "writer/progress" not in h5[name]:  # a creation that failed half way
            del h5[name]
            resumed = False
        if resumed and "end_reason" in h5[name]:
            log.info("%s: %s::%s was finished by another writer", key, path, name)
            self._refused.add(key)
            return None
        group = h5[name] if resumed else create_entry(h5, name, scan, self.compression)
        names = [original_name(text(n)) for n in group["writer/channels"][()]]
        progress = group["writer/progress"][()]
        channels = {}
        for index, ch_name in enumerate(names):
            node = scan.channels.get(ch_name)
            path_in_entry = text(group["writer/paths"][index])
            channels[ch_name] = _Channel(
                node,
                ch_name,
                hdf5_name(ch_name.rsplit(":", 1)[-1]),
                path_in_entry or None,
                index,
                int(progress[index]),
                int(progress[index]),
                int(progress[index]),
            )
            if resumed and path_in_entry:  # drop whatever the progress does not vouch for
                ds = group[path_in_entry]
                if ds.shape[0] > progress[index]:
                    ds.resize(int(progress[index]), axis=0)
        entry = _Entry(scan, file, name, channels)
        entry.gaps = {(int(c), int(a), int(b), int(r)) for c, a, b, r in group["writer/gaps"][()]}
        self._entries[key] = entry
        where = {c.name: f"/{name}/{c.path}" for c in channels.values() if c.path}
        self._note(key, lambda: scan.record_file(str(path), where))
        file.live()
        what = "resuming" if resumed else "writing"
        log.info(
            "%s %s -> %s::%s%s",
            what,
            key,
            path,
            name,
            f" from {dict((c.name, c.written) for c in channels.values())}" if resumed else "",
        )
        return entry

    # ------------------------------------------------------------------ data

    def _write(self, entry: _Entry, channel: str, data: databus.EventData) -> None:
        """Take a NEW_DATA block: references are kept for the end, points are gathered
        and stored by ``_store`` (at least every ``flush_s``, or once ``STORE_BYTES``
        are pending)."""
        ch = entry.channels.get(channel)
        if ch is None:
            raise ValueError(f"channel {channel!r} was not declared when the scan was prepared")
        first, block = data.first_index, data.data
        if ch.path is None:  # lima: remember the references, link them at the end
            index = first
            for ref in block:
                ch.refs.append((index, ref))
                index += len(ref)
            ch.written = ch.stored = index
            entry.dataset("writer/progress")[ch.index] = ch.written
            return
        if first + data.block_size <= ch.written:
            return  # written before a restart
        if first > ch.written:  # points the walk skipped, or went by while the file waited
            self._catch_up(entry, ch, first)
        self._take(entry, ch, block, ch.written - first)

    def _take(self, entry: _Entry, ch: _Channel, block: Any, skip: int) -> None:
        """Gather ``block`` but its first ``skip`` points for ``ch``'s next store."""
        if isinstance(block, list):  # json records
            block = np.array([json.dumps(r) for r in block[skip:]], dtype=object)
        else:
            block = block[skip:]
            if ch.point_shape is None:
                ch.point_shape = tuple(entry.dataset(str(ch.path)).shape[1:])
            if block.shape[1:] != ch.point_shape:
                raise ValueError(
                    f"channel {ch.name!r}: points of shape {block.shape[1:]} do not fit "
                    f"its dataset of shape {ch.point_shape}"
                )
        ch.pending.append(block)
        ch.written += len(block)
        entry.pending_bytes += block.nbytes
        if entry.pending_bytes >= STORE_BYTES:
            self._store(entry)

    def _catch_up(self, entry: _Entry, ch: _Channel, stop: int) -> None:
        """Points ``ch.written .. stop - 1``, which no event brought, read from Redis; a
        gap if Redis cannot give them (expired, never kept, undecodable)."""
        ds = entry.dataset(str(ch.path))
        step = max(1, STORE_BYTES // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))
        while ch.written < stop:
            first, last = ch.written, min(stop, ch.written + step) - 1
            try:
                block = ch.node.get(first, last)
            except databus.DatabusError as exc:
                gone = isinstance(exc, (databus.DataExpired, databus.UnknownScan))
                reason = "expired" if gone and not isinstance(exc, databus.DataLost) else "missing"
                log.warning("%s: cannot read %s again (%s)", entry.scan.db_name, ch.name, exc)
                self._gap(entry, ch.name, first, last + 1 - first, reason)
                continue
            if len(block) != last + 1 - first:  # never short: the points after stay in order
                self._gap(entry, ch.name, first, last + 1 - first, "missing")
                continue
            self._take(entry, ch, block, 0)

    def _catch_up_all(self, entry: _Entry) -> dict[str, list[int | None]]:
        """Every channel read up to what Redis has, for a scan whose events went by while
        its file waited; if the scan is gone from Redis, what is missing per channel
        (from, None), as ``writer/missing`` records it."""
        entry.behind = False
        try:
            entry.scan.refresh()
        except databus.UnknownScan:
            return {c.name: [c.written, None] for c in entry.channels.values()}
        for ch in entry.channels.values():
            if ch.path is None or ch.node is None:
                continue
            try:
                total = len(ch.node)
            except databus.DatabusError:
                continue  # the scan is gone: what was written is all there is
            if total > ch.written:
                self._catch_up(entry, ch, total)
        return {}

    def _store(self, entry: _Entry) -> None:
        """Write every channel's pending points to its dataset (one write each), then
        ``writer/progress``: a writer killed before this takes them from Redis again."""
        pending = [ch for ch in entry.channels.values() if ch.pending and ch.path]
        if not pending:
            return
        for ch in pending:
            block = ch.pending[0] if len(ch.pending) == 1 else np.concatenate(ch.pending)
            ds = entry.dataset(str(ch.path))
            end = ch.stored + len(block)
            if ds.shape[0] < end:
                ds.resize(end, axis=0)
            ds[ch.stored : end] = block
            ch.stored, ch.pending = end, []
        entry.pending_bytes = 0
        entry.record_progress()

    def _gap(self, entry: _Entry, channel: str, first: int, count: int, reason: str) -> None:
        """Record points ``first .. first+count-1`` that will never come: a row of
        ``writer/gaps`` (kept across restarts), the dataset grown over them (fill value)."""
        ch = entry.channels.get(channel)
        if ch is None:
            raise ValueError(f"channel {channel!r} was not declared when the scan was prepared")
        if ch.path is not None and first > ch.written:
            self._catch_up(entry, ch, first)
        code = GAP_REASONS.index(reason) if reason in GAP_REASONS else GAP_REASONS.index("missing")
        self._store(entry)  # the points before the gap first
        stop = first + count
        first = max(first, ch.written)  # the part before was written from real points
        if first >= stop:
            return
        row = (ch.index, first, stop - 1, code)
        if row not in entry.gaps:
            entry.gaps.add(row)
            table = entry.dataset("writer/gaps")
            table.resize(len(table) + 1, axis=0)
            table[-1] = row
            log.warning(
                "%s channel %r: points %d..%d will never come (%s)",
                entry.scan.db_name,
                channel,
                first,
                stop - 1,
                reason,
            )
        if ch.path is not None:
            ds = entry.dataset(ch.path)
            if ds.shape[0] < stop:
                ds.resize(stop, axis=0)
        ch.written = ch.stored = stop
        entry.dataset("writer/progress")[ch.index] = stop

    def _note(self, key: str, note: Callable[[], None]) -> None:
        """Tell readers (DataExpired names the file) and the memory guard (it deletes
        scans still being written last) where a scan goes and when it is written
        (``note``: a ``ScanNode.record_*`` call)."""
        try:
            note()
        except databus.DatabusError as exc:  # a read-only user: the files are right all the same
            log.warning("%s: cannot note the file in the scan record (%s)", key, exc)

    def _flush_due(self) -> None:
        """Store pending points and flush every file not flushed for ``flush_s``; a file
        whose disk lacks the room is blocked (see ``_block``) before HDF5 fails."""
        now = time.monotonic()
        due = [
            f
            for f in self._files.values()
            if f.h5 is not None and f.blocked is None and now - f.last_flush >= self.flush_s
        ]
        for f in due:
            entries = [e for e in self._entries.values() if e.file is f and e.failed is None]
            try:
                f.check_room(sum(e.pending_bytes for e in entries))
            except OSError as exc:
                self._block(f, exc)
                continue
            try:
                for entry in entries:
                    self._store(entry)
                f.flush()
            except Exception as exc:
                if not _no_space(exc):
                    raise
                self._block(f, exc, failed=True)
                continue
            for entry in entries:
                for ch in entry.channels.values():
                    ch.durable = ch.stored

    def _finish(self, entry: _Entry, end: databus.ScanEnd) -> None:
        key = entry.scan.db_name
        missing = {}
        if entry.failed is None:
            if entry.behind:
                missing = self._catch_up_all(entry)
            self._store(entry)
        h5 = entry.file.structural()
        e = h5[entry.name]
        reason = f"writer failed: {entry.failed}" if entry.failed else str(end.reason)
        if missing:
            reason = "incomplete: the scan expired from Redis before it was written"
            log.error("%s: %s; missing %s", key, reason, missing)
        e["end_time"] = iso(None)
        e["end_reason"] = h5_text(reason)
        if end.error:
            e["end_error"] = h5_text(end.error)
        if end.reason == databus.EndReason.LOST:  # keys gone before it ended: say what is missing
            missing = {c.name: [c.written, None] for c in entry.channels.values()}
        if missing:
            e["writer/missing"] = json.dumps(missing)
        for ch in entry.channels.values():
            if ch.path is None and ch.refs:
                self._link_frames(e, ch)
        names = list(entry.channels)
        paths = [c.path or "" for c in entry.channels.values()]
        try:
            plotselect(e, entry.scan.info, names, paths, final=True)
        except Exception as exc:
            log.warning("%s: no default plot (%s)", key, exc)
        entry.file.flush()
        del self._entries[key]
        self._note(key, entry.scan.record_written)
        try:
            ended = entry.scan.refresh().ended or time.time()
        except databus.UnknownScan:
            ended = time.time()
        self.written.append(f"{entry.file.path}::{entry.name}")
        log.info(
            "finished %s -> %s::%s (%s), %.2f s after the scan ended",
            key,
            entry.file.path,
            entry.name,
            reason,
            time.time() - ended,
        )
        if any(other.file is entry.file for other in self._entries.values()):
            entry.file.live()
        elif self.layout == "scan":
            entry.file.close()

    def _link_frames(self, e: Any, ch: _Channel) -> None:
        """Frames a detector wrote to its own files: an external link when they are one
        dataset from its start, else a virtual dataset; never a copy. References to files
        outside the trusted roots, or to frames the file does not have, are listed as
        text (``<link>_unlinked``) instead."""
        h5py = h5py_module()
        holder = e["instrument"].require_group(hdf5_name(ch.name.split(":")[0]))
        link = free_name(holder, "data")
        good, bad = self._checked_refs(ch)
        if bad:
            rows = [
                json.dumps({"index": i, **dataclasses.asdict(r), "why": why}) for i, r, why in bad
            ]
            listing = holder.create_dataset(
                f"{link}_unlinked", data=np.array(rows, dtype=object), dtype=h5py.string_dtype()
            )
            listing.attrs["why"] = (
                "references not linked: a file outside the writer's trusted roots "
                "(databus writer --trust-ref-root), or frames the file does not hold"
            )
        if not good:
            return
        first_ref = good[0][1]
        one = all(r.file == first_ref.file and r.dataset == first_ref.dataset for _, r in good)
        contiguous = good[0][0] == 0 and all(r.start == i for i, r in good)
        if one and contiguous and len(good) == len(ch.refs):
            holder[link] = h5py.ExternalLink(first_ref.file, first_ref.dataset)
        else:
            node = ch.node
            extent = max(i + len(r) for i, r in good)
            layout = h5py.VirtualLayout(shape=(extent, *node.shape), dtype=node.dtype)
            for index, ref in good:
                source = h5py.VirtualSource(ref.file, ref.dataset, shape=(ref.stop, *node.shape))
                layout[index : index + len(ref)] = source[ref.start : ref.stop]
            holder.create_virtual_dataset(link, layout, fillvalue=0)
        holder[link].attrs["channel"] = hdf5_name(ch.name)
        measurement = e["measurement"]
        measurement[free_name(measurement, ch.short)] = h5py.SoftLink(f"{holder.name}/{link}")

    def _trusted(self, scan: Any) -> list[str]:
        """Resolved roots the frames of ``scan`` may be linked from: ``trust_ref_roots``,
        or by default the absolute ``detector_directories`` of its info and
        ``<server_dir>/detectors``."""
        if self.trusted:
            return self.trusted
        named = scan.info.get("detector_directories")
        roots = [d for d in named if isinstance(d, str)] if isinstance(named, list) else []
        roots.append(os.path.abspath(self.bus.settings.server_dir / "detectors"))
        return [os.path.realpath(d) for d in roots if os.path.isabs(d)]

    def _checked_refs(
        self, ch: _Channel
    ) -> tuple[list[tuple[int, FileRef]], list[tuple[int, FileRef, str]]]:
        """``ch``'s references split into those safe to link and (index, ref, why) of the
        others: a file outside the trusted roots or that ``referenced_frames`` refuses (not
        a regular file, no such dataset, frames past its end or of another shape), or an
        index past what the references can cover (each refused one counted as at most the
        longest dataset checked)."""
        groups: dict[tuple[str, str], list[tuple[int, FileRef]]] = {}
        for index, ref in ch.refs:
            groups.setdefault((os.path.realpath(ref.file), ref.dataset), []).append((index, ref))
        good: list[tuple[int, FileRef]] = []
        bad: list[tuple[int, FileRef, str]] = []
        trusted = self._trusted(ch.node.scan)
        for (real, dataset), refs in groups.items():
            if not any(real.startswith(root + os.sep) for root in trusted):
                bad += [(i, r, "file outside the trusted roots") for i, r in refs]
                continue
            whole = FileRef(real, dataset, 0, max(r.stop for _, r in refs))
            if _frames_problem(whole, ch.node.shape) is None:  # one open for all of them
                good += refs
                continue
            for index, ref in refs:
                why = _frames_problem(dataclasses.replace(ref, file=real), ch.node.shape)
                if why is None:
                    good.append((index, ref))
                else:
                    bad.append((index, ref, why))
        longest = max((r.stop for _, r in good), default=0)
        bound = sum(len(r) for _, r in good) + sum(min(len(r), longest) for _, r, _ in bad)
        far = [(i, r) for i, r in good if i + len(r) > bound]
        bad += [
            (i, r, f"index {i} is past the {bound} frames the references cover") for i, r in far
        ]
        return sorted(g for g in good if g not in far), sorted(bad, key=lambda b: b[0])

    # ------------------------------------------------------------------ failures

    def _fail(self, key: str, exc: Exception) -> None:
        """Log why ``key`` cannot be written; its entry ends "writer failed", and a scan
        whose entry could not be made is not tried again (one error, not one per event)."""
        entry = self._entries.get(key)
        self._error(f"{key}: {type(exc).__name__}: {exc}")
        if entry is None:
            self._refused.add(key)
        elif entry.failed is None:
            entry.failed = f"{type(exc).__name__}: {exc}"

    def _error(self, message: str) -> None:
        self.errors.append(message)
        log.error("%s", message)

    def mark_expired(self) -> None:
        """Entries left unfinished by an earlier run whose scan is gone from Redis: mark
        them (end_reason and, per channel, the points missing from ``writer/progress``).
        A file another writer holds is left to it; trouble with one file or session is
        logged and the others go on."""
        for session in self.sessions:
            try:
                paths = sorted((self.root / file_name(session)).glob("*.h5"))
            except OSError as exc:
                self._error(f"session {session!r}: cannot list its files ({exc})")
                continue
            for path in paths:
                try:
                    self._mark_expired(path)
                except BlockingIOError as exc:
                    log.info("%s", exc)
                except (OSError, RuntimeError, ValueError, KeyError) as exc:
                    self._error(f"{path}: {exc}")

    def _mark_expired(self, path: Path) -> None:
        h5 = self._file(path).structural()
        for name, entry in h5.items():
            if "writer" not in entry or "end_reason" in entry:
                continue
            key = original_name(text(entry["scan_key"][()]))
            if scan_exists(self.bus, key):
                continue  # still in Redis: the walk will resume it
            progress = entry["writer/progress"][()]
            channels = [original_name(text(c)) for c in entry["writer/channels"][()]]
            missing = {c: [int(p), None] for c, p in zip(channels, progress, strict=True)}
            entry["end_reason"] = "incomplete: the scan expired from Redis before it was written"
            entry["end_time"] = iso(None)
            entry["writer/missing"] = json.dumps(missing)
            log.error("%s::%s: data expired before it was written; missing %s", path, name, missing)


def _frames_problem(ref: FileRef, shape: tuple[int, ...]) -> str | None:
    """Why the frames ``ref`` names cannot be linked as points of ``shape``, or None."""
    try:
        with referenced_frames(ref, shape):
            return None
    except (OSError, KeyError, ValueError) as exc:
        return f"cannot read it ({exc})"


def main(argv: list[str] | None = None) -> int:
    """``databus writer``: write the sessions' scans until SIGTERM or Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="databus writer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--session", action="append", required=True, help="repeat for several")
    parser.add_argument("--root", required=True, help="directory the files go to")
    parser.add_argument("--layout", choices=["session", "scan"], default="session")
    parser.add_argument("--compression", choices=["none", "gzip", "lz4"], default="none")
    parser.add_argument("--url", default=None)
    parser.add_argument(
        "--trust-ref-root",
        action="append",
        default=[],
        metavar="DIR",
        help="link detector frames only from files under DIR (repeat for several; "
        "default: the detector_directories each scan's info names, and "
        "<server_dir>/detectors); other references are listed as text",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    root = Path(args.root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".databus-writer-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        log.error("cannot write to %s: %s", root, exc)
        return 2
    try:
        bus = databus.connect(args.url)
    except databus.DatabusError as exc:
        log.error("cannot connect: %s", exc)
        return 2
    writer = NexusWriter(
        bus, args.session, root, args.layout, args.compression, trust_ref_roots=args.trust_ref_root
    )
    signal.signal(signal.SIGTERM, lambda *_: writer.stop_handler.stop())
    log.info("writing sessions %s to %s (%s layout)", ", ".join(args.session), root, args.layout)
    return serve(writer)


def serve(writer: NexusWriter) -> int:
    """Run ``writer`` until stopped: 0, or 1 with a one-line message if a session's
    thread died (the other sessions are stopped, unfinished scans resume next start)."""
    try:
        writer.run()
    except KeyboardInterrupt:
        writer.stop_handler.stop()
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    log.info("stopped; unfinished scans resume at the next start")
    return 0
