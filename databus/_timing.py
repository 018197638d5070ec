"""Time as the server takes it.

Times are seconds (floats) everywhere in databus; ``milliseconds`` is the one conversion to
the milliseconds Redis commands take (PEXPIRE, XREAD BLOCK). The reconnection backoff is
``_store.wire.RECONNECT``.
"""

from __future__ import annotations


def milliseconds(seconds: float) -> int:
    """``seconds`` as whole milliseconds, at least 1: for a TTL or an XREAD BLOCK, where 0
    would mean "expire now" or "block for ever"."""
    return max(1, int(seconds * 1000))
