"""What the writer does every ``flush_s`` and after each event, over the scans it has in
hand: store and flush what is due (blocking a file whose disk lacks the room), and try
again the files scans wait for, taking up those scans once their file can be written.
"""

from __future__ import annotations

import time

from ._writer_files import MAX_BACKOFF_S, OutputFile, no_space
from ._writer_scans import ScanFiles


def flush_due(scans: ScanFiles) -> None:
    """Store pending points and flush every file not flushed for ``flush_s``; a file
    whose disk lacks the room is blocked before HDF5 fails."""
    now = time.monotonic()
    due = [
        f
        for f in scans.files.values()
        if f.h5 is not None and f.blocked is None and now - f.last_flush >= scans.flush_s
    ]
    for f in due:
        entries = [e for e in scans.entries.values() if e.file is f and e.failed is None]
        try:
            f.check_room(sum(e.pending_bytes for e in entries))
        except OSError as exc:
            scans.block(f, exc)
            continue
        try:
            for entry in entries:
                entry.store()
            f.flush()
        except Exception as exc:
            if not no_space(exc):
                raise
            scans.block(f, exc, failed=True)
            continue
        for entry in entries:
            entry.flushed()


def tick(scans: ScanFiles) -> None:
    """Store and flush what is due, then try the files scans wait for."""
    flush_due(scans)
    now = time.monotonic()
    for f in {h.file for h in scans.held.values()} | {
        e.file for e in scans.entries.values() if e.file.blocked
    }:
        if f.retry_at <= now:
            try:
                _retry(scans, f)
            except Exception as exc:
                f.retry_at = now + MAX_BACKOFF_S
                scans.error(f"{f.path}: cannot write it again ({type(exc).__name__}: {exc})")


def _retry(scans: ScanFiles, file: OutputFile) -> None:
    """Try ``file`` again: if it can be written, cut its open entries back to what is
    safely stored, then open and finish the scans that waited for it."""
    try:
        file.check_room()
    except OSError as exc:
        scans.block(file, exc)
        return
    try:
        if file.h5 is not None:
            file.flush_after_failure()
        file.structural()
        for entry in scans.entries.values():
            if entry.file is file:
                entry.cut()
    except Exception as exc:
        if no_space(exc) or isinstance(exc, BlockingIOError):
            scans.block(file, exc, failed=no_space(exc))
            return
        if not file.failed_write:
            raise
        _set_aside(scans, file, exc)
    file.unblock()
    for key, held in list(scans.held.items()):
        if held.file is not file:
            continue
        del scans.held[key]
        try:
            opened = scans.open(held.scan)
            if opened is not None:
                opened.behind = True
                if held.end is not None:
                    scans.finish(opened, held.end)
        except Exception as exc:
            scans.trouble(held.scan, exc)
    if file.h5 is not None and file.blocked is None:
        file.live()


def _set_aside(scans: ScanFiles, file: OutputFile, exc: Exception) -> None:
    """HDF5 left ``file`` unreadable after failing on a full disk: set it aside and
    write its open scans again, from Redis, into a new file (scans it had finished
    stay in the damaged one)."""
    aside = file.set_aside()
    scans.error(
        f"{file.path}: HDF5 failed on the full disk and left it unreadable ({exc}); "
        f"moved to {aside}, its unfinished scans are written again from Redis"
    )
    for key, entry in list(scans.entries.items()):
        if entry.file is file:
            del scans.entries[key]
            scans.hold(entry.scan, file)
