"""What every page of one server shares: a follower per session, the shared channels,
and the wake-up that tells the pages something changed (coalesced: at most one call into
the asyncio loop is pending, however fast the followers' events come)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import databus
from databus.channels import Channel, shared_names

from ._files import FileRoot
from ._follower import SessionFollower
from ._model import ScanView
from ._wire import finite

log = logging.getLogger(__name__)

#: How often sessions, scans still in the bus and shared channels are listed again (s).
REFRESH_S = 3.0
#: Shortest time between two scans lists sent to the pages (s): progress moves smoothly
#: at 4 per second, and 20 pages cost no more than one.
LIST_INTERVAL_S = 0.25


class Hub:
    """Followers of ``sessions`` (None: every session on the bus, new ones included) and
    the shared channels of ``bus``; pages register an ``asyncio.Event`` to be woken.
    ``files``: where the scans' files may be downloaded from (None: nowhere)."""

    def __init__(
        self, bus: databus.Bus, sessions: list[str] | None, files: FileRoot | None = None
    ) -> None:
        self.bus = bus
        self.fixed_sessions = sessions
        self.files = files
        self.followers: dict[str, SessionFollower] = {}
        self.shared: dict[str, Channel] = {}
        self.version = 0
        self.shared_version = 0
        self.pages: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = False
        self._pending_lock = threading.Lock()
        self._task: asyncio.Task | None = None
        self._listed = -1
        self._listed_at = 0.0
        self._serial = 0
        self._scans_text = ""

    async def start(self) -> None:
        """Follow the sessions and list shared channels; then keep the lists fresh."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._refresh)
        self._task = asyncio.create_task(self._keep_fresh())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for follower in self.followers.values():
            await asyncio.to_thread(follower.close)
        for channel in self.shared.values():
            channel.close()

    def wake(self) -> None:
        """Something changed (any thread): wake every page, once per loop turn."""
        with self._pending_lock:
            if self._pending or self._loop is None:
                return
            self._pending = True
        self._loop.call_soon_threadsafe(self._wake_pages)

    def _wake_pages(self) -> None:
        with self._pending_lock:
            self._pending = False
        self.version += 1
        for event in self.pages:
            event.set()

    def _shared_changed(self, _value: Any) -> None:
        self.shared_version += 1
        self.wake()

    def view(self, key: str) -> ScanView | None:
        """The view of scan ``key`` if one of the followed sessions has it."""
        for follower in list(self.followers.values()):
            view = follower.scans.get(key)
            if view is not None:
                return view
        return None

    def views(self) -> list[ScanView]:
        """Every scan known, newest first."""
        found = [v for f in list(self.followers.values()) for v in f.views()]
        return sorted(found, key=lambda v: v.node.created or 0.0, reverse=True)

    def shared_values(self) -> dict[str, Any]:
        return {name: channel.value for name, channel in sorted(self.shared.items())}

    def scans_message(self) -> tuple[int, str]:
        """(serial, text) of the scans list message, made again at most every
        ``LIST_INTERVAL_S`` and only when something changed: every page sends the same."""
        now = time.monotonic()
        if self._listed != self.version and now - self._listed_at >= LIST_INTERVAL_S:
            self._listed, self._listed_at = self.version, now
            message = {
                "type": "scans",
                "now": time.time(),
                "sessions": sorted(self.followers),
                "scans": [self._summary(view) for view in self.views()],
            }
            self._scans_text = json.dumps(finite(message), allow_nan=False)
            self._serial += 1
        return self._serial, self._scans_text

    def _summary(self, view: ScanView) -> dict[str, Any]:
        """The scan's summary, with ``download``: its file's link (None if not served)."""
        summary = view.summary()
        link = self.files.link(summary["file"]) if self.files is not None else None
        return {**summary, "download": link}

    def scans_due(self) -> float:
        """Seconds until ``scans_message`` may change (0: now)."""
        if self._listed == self.version:
            return REFRESH_S
        return max(0.0, self._listed_at + LIST_INTERVAL_S - time.monotonic())

    async def set_shared(self, name: str, value: Any) -> None:
        """Set shared channel ``name`` for everybody (the server's ``--allow-set``)."""
        channel = self.shared.get(name)
        if channel is None:
            channel = await asyncio.to_thread(
                Channel, name, bus=self.bus, callback=self._shared_changed
            )
            self.shared[name] = channel
        await asyncio.to_thread(setattr, channel, "value", value)

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await asyncio.to_thread(self._refresh)
            except databus.DatabusError as exc:
                log.warning("listing sessions, scans and shared channels failed: %s", exc)

    def _refresh(self) -> None:
        """Follow new sessions, list scans again, hold every shared channel (blocking)."""
        names = self.fixed_sessions or self.bus.sessions()
        for name in names:
            if name not in self.followers:
                follower = SessionFollower(self.bus.session(name), self.wake)
                follower.start()
                self.followers[name] = follower
            else:
                self.followers[name].refresh()
        for name in shared_names(self.bus):
            if name not in self.shared:
                self.shared[name] = Channel(name, bus=self.bus, callback=self._shared_changed)
                self._shared_changed(None)
        self.wake()
