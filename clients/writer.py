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

import logging
import os
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import databus
from databus._saving import Layout, file_name, original_name
from databus._subscribe import scan_exists

from ._nexus import h5py_module
from ._writer_frames import TrustedRoots
from ._writer_lifecycle import compression_options, mark_expired_entries
from ._writer_scans import ScanFiles
from ._writer_upkeep import flush_due, tick

__all__ = ["NexusWriter", "main", "original_name", "serve"]

log = logging.getLogger("databus.writer")


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
        self.flush_s = flush_s
        self.stop_handler = databus.StopHandler()
        self._decisions: dict[str, bool] = {}
        self._lock = threading.RLock()
        self._died: list[str] = []  # "session 'x': <error>" of follow threads that raised
        self.written: list[str] = []  # "<file>::<entry>" of every scan finished
        self.errors: list[str] = []
        trusted = TrustedRoots(
            [os.path.realpath(d) for d in trust_ref_roots], bus.settings.server_dir / "detectors"
        )
        self._scans = ScanFiles(
            self.root,
            cast(Layout, layout),  # checked above
            compression_options(compression),
            flush_s,
            trusted,
            self._error,
            self.written.append,
        )

    def _wanted(self, node: Any) -> bool:
        """include_filter of the walks: saved scans not already complete in a file."""
        if node.type in ("scan", "scan_group"):
            key = node.db_name
            if key not in self._decisions:
                with self._lock:
                    save = bool(node.info.get("save", True))
                    self._decisions[key] = save and not self._scans.complete(node)
            return self._decisions[key]
        return self._decisions.get(node.parent.db_name, False)

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
                tick(self._scans)
        with self._lock:
            self._scans.close()
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
        """Follow ``session`` and hand each event of a saved scan to its entry."""
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
                    self._scans.take(event, scan)
                except Exception as exc:  # one scan's trouble never stops the others
                    self._scans.trouble(scan, exc)
                flush_due(self._scans)

    def _error(self, message: str) -> None:
        """Keep ``message`` in ``errors`` and log it."""
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
                    h5 = self._scans.file(path).structural()
                    mark_expired_entries(h5, path, lambda key: scan_exists(self.bus, key))
                except BlockingIOError as exc:
                    log.info("%s", exc)
                except (OSError, RuntimeError, ValueError, KeyError) as exc:
                    self._error(f"{path}: {exc}")


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
