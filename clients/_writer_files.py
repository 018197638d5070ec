"""The files the writer holds: one writer per file (a lock), no path leading out of the
root, room checked before HDF5 can fail on a full disk, and the waiting state of a file
that cannot be written (its disk is full, another writer has it).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any

from ._h5clear import clear_status_flags
from ._nexus import h5py_module, root_attributes

log = logging.getLogger("databus.writer")

#: Free bytes a file's device keeps beyond what is pending before the writer stores more.
ROOM_BYTES = 2**20
#: Longest wait between two tries of a file whose disk was full (seconds).
MAX_BACKOFF_S = 30.0

_FULL = (errno.ENOSPC, errno.EDQUOT)


def no_space(exc: BaseException) -> bool:
    """True if ``exc`` says the disk is full: its errno, or for h5py's RuntimeErrors
    (a failed flush), the system's text for it inside HDF5's message."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    return isinstance(exc, (OSError, RuntimeError)) and any(
        os.strerror(code) in str(exc) for code in _FULL
    )


class OutputFile:
    """One HDF5 file the writer holds: SWMR while data flows, plain append mode while its
    structure changes. ``generation`` counts reopenings (dataset handles go stale).
    ``blocked`` says why its scans wait (a full disk, another writer), ``retry_at`` when
    the writer tries again: every ``retry_s`` while another writer has it, with a backoff
    from ``retry_s`` to ``MAX_BACKOFF_S`` while its disk is full."""

    def __init__(self, root: Path, path: Path, retry_s: float) -> None:
        self.root = root
        self.path = path
        self.retry_s = retry_s
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
        """Flush the open file, so readers see what was stored."""
        if self.h5 is not None:
            self.h5.flush()
            self.last_flush = time.monotonic()

    def close(self) -> None:
        """Close the file and let go of its lock."""
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def block(self, exc: Exception, failed: bool) -> None:
        """Stop writing the file after ``exc`` and say when to try again; ``failed``: HDF5
        failed in a write. Logged once per episode."""
        full = no_space(exc)
        if self.blocked is None:
            self.backoff = self.retry_s
            log.warning(
                "%s: %s; its scans wait (their data stays in Redis), trying again %s",
                self.path,
                "no space left on its disk" if full else exc,
                "with backoff" if full else f"every {self.retry_s} s",
            )
        elif full:
            self.backoff = min(self.backoff * 2, MAX_BACKOFF_S)
        self.blocked = "no space" if full else "locked by another writer"
        self.retry_at = time.monotonic() + self.backoff
        self.failed_write = self.failed_write or failed

    def unblock(self) -> None:
        """The file can be written again."""
        self.failed_write = False
        if self.blocked is not None:
            log.info("%s: writing again (it was %s)", self.path, self.blocked)
        self.blocked = None

    def flush_after_failure(self) -> None:
        """Flush what HDF5 still holds of a file that was blocked. After a write that
        failed on a full disk HDF5 may trip on its own leftover state ("slist already
        enabled"): then flush again, and if that fails too, close the handle (the next
        use reopens the file, and the entries are cut back to what was flushed)."""
        for _ in range(2):
            try:
                self.flush()
                return
            except RuntimeError as exc:
                log.info("%s: flushing again after %s", self.path, exc)
        try:
            self.h5.close()
        except Exception as exc:
            log.warning("%s: closed after a failed flush (%s)", self.path, exc)
        self.h5 = None

    def set_aside(self) -> Path:
        """Rename a file HDF5 left unreadable ``<name>.damaged-<time>`` (the next use makes
        a new one); where it went."""
        if self.h5 is not None:
            try:
                self.h5.close()
            except Exception as close_exc:
                log.warning("%s: closing the damaged file: %s", self.path, close_exc)
            self.h5 = None
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        self.path.rename(aside)
        return aside
