"""One thread per session walking its events into ``ScanView``s (the SDK is blocking;
the pages live in the asyncio loop): every page of the server shares it. ``wake`` is
called after each event, from the thread, and must be cheap and thread-safe."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import databus

from ._model import ScanView

log = logging.getLogger(__name__)

#: Ended scans whose data stays in memory; older ones are read from the bus again if asked.
KEEP_LOADED = 8


class SessionFollower:
    """Follows ``session``: ``scans`` maps each scan key still known to its view, oldest
    first (scans that ended before the follower started are listed, loaded on demand)."""

    def __init__(self, session: databus.Session, wake: Callable[[], None]) -> None:
        self.session = session
        self.scans: dict[str, ScanView] = {}
        self._wake = wake
        self._lock = threading.Lock()
        self._stop = databus.StopHandler()
        self._closed = False
        self._started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"databus-web-{session.name}", daemon=True
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start following; returns once the walk reads and the existing scans are listed."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise databus.ReadTimeout(f"session {self.session.name}: the walk did not start")
        self.refresh()

    def views(self) -> list[ScanView]:
        """The scans known, oldest first."""
        with self._lock:
            return list(self.scans.values())

    def refresh(self) -> None:
        """List the session's scans again: add those ended before the follower started,
        take the file writer's notes (no walk event tells of them), mark gone those no
        longer in the bus. Blocks on the bus (run it in a thread)."""
        present = {node.key: node for node in self.session.scans()}
        with self._lock:
            for key, node in present.items():
                if key not in self.scans:
                    self.scans[key] = ScanView(node, followed=False)
                else:
                    self.scans[key].take_notes(node)
            gone = [view for key, view in self.scans.items() if key not in present]
            self.scans = dict(sorted(self.scans.items(), key=lambda kv: kv[1].node.number))
        for view in gone:
            view.mark_gone()
        self._wake()

    def _run(self) -> None:
        while not self._closed:
            try:
                for event in self.session.follow(
                    stop_handler=self._stop, started_event=self._started
                ):
                    self._on(event)
                    self._wake()
                return
            except databus.DatabusError:
                log.exception("session %s: the walk failed; following again", self.session.name)
                time.sleep(1.0)

    def _on(self, event: databus.Event) -> None:
        node = event.node
        if event.type is databus.EventType.NEW_NODE and node.type in ("scan", "scan_group"):
            with self._lock:
                self.scans[node.key] = ScanView(node, followed=True)
            return
        scan = node if isinstance(node, databus.ScanNode) else getattr(node, "scan", None)
        view = self.scans.get(scan.key) if scan is not None else None
        if view is None:
            return
        view.on_event(event)
        if event.type is databus.EventType.END_SCAN:
            self._trim()

    def _trim(self) -> None:
        """Keep the data of the last ``KEEP_LOADED`` ended scans in memory."""
        ended = [v for v in self.views() if v.end is not None and v.loaded]
        for view in ended[:-KEEP_LOADED]:
            view.unload()

    def close(self) -> None:
        """Stop the walk (the thread ends at its next read)."""
        self._closed = True
        self._stop.stop()
        self._thread.join(2.0)
