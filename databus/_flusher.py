"""What the sink's flusher does with a batch, and its other jobs, when ``FlushTimers``
says they are due: renew the scan's TTLs, check an idle connection, run the memory guard,
count the readers that pace the flushes, and wait for room on a server at its memory cap.
Everything goes out through the scan's ``Sender``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ._encoding import text
from ._errors import BusFull, PermissionDenied, ServerError, redact
from ._flush_policy import FlushPolicy, FlushTimers, FullServer, Job
from ._sender import Sender
from ._store import commands
from ._store.commands import Command
from ._store.protocol import OutOfMemory

log = logging.getLogger(__name__)

#: How long a flusher waits for room on a server at its memory cap, between attempts.
FULL_PAUSE_S = 0.05


class Flusher:
    """Sends a sink's batches and does its timed jobs (see the module).

    ``refresh_keys`` returns the scan's keys, whose running TTL is renewed every quarter
    of ``running_ttl``; ``guard`` is the memory guard's check (``force=True`` when the
    server refused a flush for want of memory).
    """

    def __init__(
        self,
        sender: Sender,
        policy: FlushPolicy,
        *,
        url: str,
        running_ttl: float,
        bus_full_timeout: float,
        refresh_keys: Callable[[], list[str]],
        guard: Callable[..., Any] | None,
    ) -> None:
        self.sender = sender
        self.timers = FlushTimers(
            policy, time.monotonic(), running_ttl=running_ttl, bus_full_timeout=bus_full_timeout
        )
        self._url = url
        self._refresh_keys = refresh_keys
        self._guard = guard

    def flush(self, batch: list[Command]) -> None:
        """Send ``batch`` with the jobs due, waiting while the server is full."""
        jobs = self.timers.with_flush(time.monotonic())
        if Job.REFRESH in jobs:
            batch = batch + self._refresh_commands()
        if Job.GUARD in jobs and self._guard is not None:
            self._guard()
        if Job.COUNT_READERS in jobs:
            self._count_readers()
        while True:
            try:
                self.send(batch)
                break
            except OutOfMemory as exc:
                self._wait_for_memory(exc)  # the server applied nothing: send it all again
        waited = self.timers.server_has_room(time.monotonic())
        if waited is not None:
            log.warning("the server has room again after %.1f s", waited)

    def idle(self) -> None:
        """The job of an idle flusher, if one is due."""
        job = self.timers.when_idle(time.monotonic())
        if job is Job.REFRESH:
            self.send(self._refresh_commands())
        elif job is Job.HEARTBEAT:
            self.send([commands.ping()])  # a lost connection shows now, not at the next point

    def send(self, sent: list[Command]) -> list[Any]:
        """Send ``sent`` as one MULTI/EXEC (through lost connections); EXEC's replies."""
        replies = self.sender.send(sent)
        self.timers.sent(time.monotonic())
        return replies

    def _refresh_commands(self) -> list[Command]:
        return commands.refresh(self._refresh_keys(), self.timers.running_ttl)

    def _count_readers(self) -> None:
        """How many clients wait on the server for new entries (``blocked_clients``), to
        pace the flushes (``FlushPolicy.pace``)."""
        try:
            (info,) = self.send([commands.client_counts()])
        except (ServerError, PermissionDenied) as exc:  # an ACL user without INFO
            log.info("cannot count the readers (%s): flushes are not paced", exc)
            self.timers.readers_counted(None)
            return
        blocked = [line for line in text(info).splitlines() if line.startswith("blocked_clients:")]
        self.timers.readers_counted(int(blocked[0].split(":")[1]) if blocked else 0)

    def _wait_for_memory(self, exc: OutOfMemory) -> None:
        """The server is at its cap: evict what can go, wait, or give up with BusFull."""
        verdict = self.timers.server_full(time.monotonic())
        timeout = self.timers.bus_full_timeout
        if verdict is FullServer.FIRST:
            log.warning(
                "the server at %s is at its memory cap: send() waits for room (BusFull after %g s)",
                redact(self._url),
                timeout,
            )
        if verdict is FullServer.GIVE_UP:
            raise BusFull(
                f"the server at {redact(self._url)} stayed at its memory cap for "
                f"{timeout:g} s with no ended scan left to delete: running scans "
                f"fill it. Raise its maxmemory, end scans, or declare frame channels lossy=True"
            ) from exc
        if self._guard is not None:
            self._guard(force=True)
        time.sleep(FULL_PAUSE_S)
