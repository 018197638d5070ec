"""Time as the server takes it, and how long to wait for a server that went away.

Times are seconds (floats) everywhere in databus; ``milliseconds`` is the one conversion to
the milliseconds Redis commands take (PEXPIRE, XREAD BLOCK), and ``RECONNECT`` the one
backoff every client uses while it reconnects (publisher, walks, shared channels).
"""

from __future__ import annotations

import dataclasses


def milliseconds(seconds: float) -> int:
    """``seconds`` as whole milliseconds, at least 1: for a TTL or an XREAD BLOCK, where 0
    would mean "expire now" or "block for ever"."""
    return max(1, int(seconds * 1000))


@dataclasses.dataclass(frozen=True)
class Backoff:
    """The wait before the next reconnection attempt, after ``lost`` seconds without the
    server: ``first``, growing by a quarter of the time lost, at most ``cap`` seconds."""

    first: float = 0.05
    cap: float = 1.0

    def compute(self, lost: float) -> float:
        return min(self.cap, self.first + max(0.0, lost) / 4)


#: The backoff of every reconnecting client.
RECONNECT = Backoff()
