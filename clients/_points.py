"""Points of a scan's channel read as soon as they are there: a client that follows one
channel (frames, an analysis' trigger) reads the others at the same indices, which another
flush may bring a moment later."""

from __future__ import annotations

import time
from typing import Any

import databus

#: How often (s) a missing point is looked for again.
_POLL_S = 0.005


def points_when_there(
    scan: databus.ScanNode, name: str, first: int, last: int | None, wait: float
) -> Any:
    """Points ``first`` .. ``last`` (inclusive: a block) or, with ``last`` None, point
    ``first`` of channel ``name`` of ``scan`` (as ``ChannelNode.get``), waiting up to
    ``wait`` seconds for them to be published (the channel itself may come later).
    Raises ``NotYetPublished`` after ``wait``, ``EndOfData`` if the scan ended without them,
    ``DataExpired``/``DataLost`` if they are gone or were never kept."""
    deadline = time.monotonic() + wait
    while True:
        channel = scan.channels.get(name)
        try:
            if channel is not None:
                return channel.get(first, last)
        except databus.NotYetPublished:
            if time.monotonic() >= deadline:
                raise
        if channel is None:
            if time.monotonic() >= deadline:
                raise databus.NotYetPublished(
                    f"scan {scan.key} has no channel {name!r} after {wait:g} s"
                )
            scan.refresh()
        time.sleep(_POLL_S)
