"""Where a publisher's commands are sent: its own link, one MULTI/EXEC per flush.

MULTI/EXEC so a blocked reader is served once, after the whole flush, with every
channel's points (and every part of a split frame): after a plain pipeline's first XADD
the server wakes it with that alone, and it needs another round trip for the rest.

A dropped connection or a restarted server is not an error: the sender reconnects (the
one ``Outage`` policy, up to ``reconnect_timeout``), lets the scan restore what a server
restarted empty has lost, and sends the batch again; entry IDs are point indices, so what
the server already has is refused as "equal or smaller", which counts as written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import ServerUnavailable, redact
from ._store.commands import Command
from ._store.wire import Outage, Wire

log = logging.getLogger(__name__)

#: Runs commands as one MULTI/EXEC on the sender's link; EXEC's raw replies.
Transact = Callable[[Sequence[Command]], list[Any]]
#: After a reconnection, before the batch is sent again: writes back, through the
#: ``Transact`` it is given, what a server restarted empty lost.
Restore = Callable[[Transact], None]


class Sender:
    """Sends commands over a link of ``wire``'s own, through lost connections.

    ``restore`` runs after every reconnection; ``revive`` on every attempt
    (``Bus.revive_server``: the embedded server is started again if it died).
    """

    def __init__(
        self,
        wire: Wire,
        *,
        reconnect_timeout: float,
        restore: Restore | None = None,
        revive: Callable[[], None] | None = None,
    ) -> None:
        self._wire = wire
        self._link = wire.link()
        self._restore = restore
        self._outage = Outage(
            f"publisher at {redact(wire.url)}", timeout=reconnect_timeout, revive=revive
        )

    def send(self, commands: Sequence[Command]) -> list[Any]:
        """Run ``commands`` as one MULTI/EXEC; EXEC's replies. ``ServerUnavailable`` once
        the server stayed away ``reconnect_timeout``; ``OutOfMemory`` (nothing applied)
        when it is at its cap; another ``DatabusError`` for a refused command."""
        resent = False
        while True:
            try:
                if resent:
                    self._link.connect()
                    if self._restore is not None:
                        self._restore(self._link.transact)
                replies = self._link.transact(commands, resent=resent)
                break
            except ServerUnavailable as exc:
                self._outage.wait(exc)
                resent = True
                self._link.reset()
        if self._outage.over() is not None:
            log.warning("sent the batch again to %s", redact(self._wire.url))
        return replies

    def send_once(self, commands: Sequence[Command]) -> list[Any]:
        """Run ``commands`` once on a fresh connection, after the sender failed."""
        self._link.reset()
        return self._link.transact(commands)

    def close(self) -> None:
        """Give the link back and close the wire."""
        self._link.close()
        self._wire.close()
