"""BLISS's ``data.scan``: ``ScansWatcher`` follows a session's scans and hands their life
cycle to a ``ScansObserver`` (Flint and the shell's scan display are built on them).

The watcher is one session walk (``walk_on_new_events``); it runs where the bus's runner
runs tasks (a thread, or a greenlet in a gevent-patched program), so its waits
(``wait_ready``...) suit either.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ..._bus import Bus, default_bus
from ..._events import Event, EventData, EventType
from ..streaming import DataStreamReaderStopHandler
from .node import get_session_node

__all__ = ["ScansObserver", "ScansWatcher"]

log = logging.getLogger(__name__)


class ScansObserver:
    """What a ``ScansWatcher`` calls as a session's scans go; override what you need.
    ``scan_db_name`` is the scan's key, ``scan_info`` its info as a dict."""

    def on_event_received(self, event: Event) -> None:
        """Every event of the walk, before it is dispatched."""

    def on_scan_created(self, scan_db_name: str, scan_info: dict) -> None:
        """A scan was created (its devices are not prepared yet)."""

    def on_scan_started(self, scan_db_name: str, scan_info: dict) -> None:
        """A scan was prepared: its data may come."""

    def on_child_created(self, scan_db_name: str, node: Any) -> None:
        """A channel of the scan was declared (``node``)."""

    def on_scalar_data_received(
        self, scan_db_name: str, channel_name: str, index: int, data_bunch: Any
    ) -> None:
        """Points ``index`` .. of a scalar channel (``channel_name`` is its full name)."""

    def on_ndim_data_received(
        self, scan_db_name: str, channel_name: str, dim: int, index: int, data_bunch: Any
    ) -> None:
        """Points ``index`` .. of a channel of ``dim`` dimensions held in the bus."""

    def on_lima_ref_received(
        self, scan_db_name: str, channel_name: str, dim: int, source_node: Any, event_data: Any
    ) -> None:
        """New images of a lima node (``source_node``; ``event_data.data`` their references)."""

    def on_scan_finished(self, scan_db_name: str, scan_info: dict) -> None:
        """A scan ended; ``scan_info`` is its final info."""


class ScansWatcher:
    """Follows the scans of session ``session_name`` and calls its observer: ``run()``
    (blocking; ``stop()`` from elsewhere ends it) or the ``watch()`` context.

    Scans running when it starts are followed whole (the walk's late join) unless
    ``set_exclude_existing_scans(True)``; scan groups only with ``set_watch_scan_group``.
    An observer's exception is logged and the watch goes on, as BLISS's.
    """

    def __init__(self, session_name: str, bus: Bus | None = None) -> None:
        self._session_name = session_name
        self._bus = bus or default_bus()
        runner = self._bus.runner
        self._exclude_existing_scans = False
        self._watch_scan_group = False
        self._observer: ScansObserver | None = None
        self._running = False
        self._running_scans: set[str] = set()
        self._ready_event = runner.event()
        self._terminated_event = runner.event()
        self._no_scans_event = runner.event()
        self._no_scans_event.set()
        self._stop_handler = DataStreamReaderStopHandler()

    def set_observer(self, observer: ScansObserver) -> None:
        self._check_not_running("set_observer")
        self._observer = observer

    def set_exclude_existing_scans(self, exclude: bool) -> None:
        """Leave out the scans already running when the watch starts (default False)."""
        self._check_not_running("set_exclude_existing_scans")
        self._exclude_existing_scans = exclude

    def set_watch_scan_group(self, watch: bool) -> None:
        """Treat scan groups (sequences) as scans (default False: they are not reported)."""
        self._check_not_running("set_watch_scan_group")
        self._watch_scan_group = watch

    def _check_not_running(self, what: str) -> None:
        if self._running:
            raise RuntimeError(f"ScansWatcher.{what}() must be called before run()")

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the watch follows the session (scans created from then on are seen)."""
        return bool(self._ready_event.wait(timeout))

    def wait_no_more_running_scans(self, timeout: float | None = None) -> bool:
        return bool(self._no_scans_event.wait(timeout))

    def wait_terminated(self, timeout: float | None = None) -> bool:
        return bool(self._terminated_event.wait(timeout))

    def running_scan_names(self) -> list[str]:
        """The keys of the scans being followed that have not ended."""
        return list(self._running_scans)

    def stop(self) -> None:
        """End the watch (``run`` returns within the walk's ``BLOCK_S``)."""
        self._stop_handler.stop()

    @contextlib.contextmanager
    def watch(self) -> Iterator[Any]:
        """Run the watch in a task of the bus's runner for the ``with`` block (ready when
        the block starts; stopped at its end, after up to 2 s for running scans to end)."""
        task = self._bus.runner.spawn(self.run, "bliss_scans_watcher")
        try:
            self.wait_ready(timeout=3)
            yield task
        finally:
            self.wait_no_more_running_scans(timeout=2)
            self.stop()
            task.join(1)

    def run(self) -> None:
        """Watch until ``stop()``; ``RuntimeError`` without an observer."""
        self._check_not_running("run")
        if self._observer is None:
            raise RuntimeError("ScansWatcher.run(): no observer was set (set_observer)")
        self._terminated_event.clear()
        self._running = True
        try:
            session = get_session_node(self._session_name, self._bus)
            excluded = ("scan", "scan_group") if self._exclude_existing_scans else None
            for event in session.walk_on_new_events(
                stop_handler=self._stop_handler,
                exclude_existing_children=excluded,
                started_event=self._ready_event,
            ):
                self._call("on_event_received", event)
                self._dispatch(event)
        finally:
            self._running = False
            self._terminated_event.set()

    def _is_watched(self, node: Any) -> bool:
        return node.type == "scan" or (self._watch_scan_group and node.type == "scan_group")

    def _scan_of(self, db_name: str) -> str | None:
        return next((key for key in self._running_scans if db_name.startswith(key)), None)

    def _dispatch(self, event: Event) -> None:
        kind, node, data = event
        if kind is EventType.NEW_NODE and self._is_watched(node):
            self._running_scans.add(node.db_name)
            self._no_scans_event.clear()
            self._call("on_scan_created", node.db_name, node.info.get_all())
        elif kind is EventType.NEW_NODE:
            scan = self._scan_of(node.db_name)
            if scan is not None:
                self._call("on_child_created", scan, node)
        elif kind is EventType.NEW_DATA:
            scan = self._scan_of(node.db_name)
            if scan is not None:
                self._data(scan, node, data)
        elif kind is EventType.PREPARED_SCAN and node.db_name in self._running_scans:
            self._call("on_scan_started", node.db_name, node.info.get_all())
        elif kind is EventType.END_SCAN and node.db_name in self._running_scans:
            try:
                self._call("on_scan_finished", node.db_name, node.info.get_all())
            finally:
                self._running_scans.discard(node.db_name)
                if not self._running_scans:
                    self._no_scans_event.set()

    def _data(self, scan: str, node: Any, data: EventData) -> None:
        if node.type == "lima":
            self._call("on_lima_ref_received", scan, node.fullname, 2, node, data)
            return
        dim = len(node.shape)
        if dim == 0:
            self._call("on_scalar_data_received", scan, node.fullname, data.first_index, data.data)
        else:
            self._call(
                "on_ndim_data_received", scan, node.fullname, dim, data.first_index, data.data
            )

    def _call(self, method: str, *args: Any) -> None:
        try:
            getattr(self._observer, method)(*args)
        except Exception:
            log.exception("ScansWatcher of %s: %s failed", self._session_name, method)
