"""blissdata 2.x's ``Cursor`` and ``CursorGroup``: views of new points, from databus's
channel cursor (``databus._cursor.Cursor``: one XREAD over every stream of the group).

``read(block=True, timeout=0, last_only=False)``: ``timeout`` 0 waits for ever (as in
blissdata), ``block=False`` does not wait. A view starts with the points the cursor could
not read (``nb_expired``; databus's ``DataGap``s saying why are its ``lost``), then the
data. ``EndOfStream`` once a stream (every stream of a group) is sealed and read to its end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..._cursor import ChannelPoints
from ..._cursor import Cursor as ChannelCursor
from ..exceptions import EndOfStream

if TYPE_CHECKING:
    from ..._subscribe import ChannelNode
    from .base import BaseStream, BaseView

__all__ = ["Cursor", "CursorGroup"]


def _wait(block: bool, timeout: float) -> float | None:
    """blissdata's (block, timeout) as databus's timeout (None: for ever, 0: no wait)."""
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds (0: wait for ever), not {timeout}")
    if not block:
        return 0
    return None if timeout == 0 else timeout


def _view(stream: BaseStream, points: ChannelPoints) -> BaseView | None:
    """The view of what one read brought of ``stream`` (None: only its seal)."""
    if not points.count and not points.missing:
        return None
    return stream._view(points)


class CursorGroup:
    """Reads several streams at once, each from its first point (``streams``: a list, or
    a mapping whose values are streams); ``position`` is each stream's next index."""

    def __init__(self, streams: Iterable[BaseStream] | Mapping[str, BaseStream]) -> None:
        if isinstance(streams, Mapping):
            streams = streams.values()
        self._streams: dict[ChannelNode, BaseStream] = {s.node: s for s in streams}
        self._cursor = ChannelCursor(list(self._streams))

    @property
    def position(self) -> dict[BaseStream, int]:
        return {self._streams[n]: i for n, i in self._cursor.positions.items()}

    def read(
        self, block: bool = True, timeout: float = 0, last_only: bool = False
    ) -> dict[BaseStream, BaseView]:
        """New points of each stream that has some, as views; ``{}`` if none came in time.
        ``EndOfStream`` once every stream is sealed and read."""
        wait = _wait(block, timeout)
        if self._cursor.done:
            raise EndOfStream("All streams have been read until the end")
        views = {}
        for node, points in self._cursor.read(wait, last_only=last_only).items():
            stream = self._streams[node]
            view = _view(stream, points)
            if view is not None:
                views[stream] = view
        if not views and self._cursor.done:
            raise EndOfStream("All streams have been read until the end")
        return views

    def close(self) -> None:
        """Give the group's connection back now (else when it is garbage collected)."""
        self._cursor.close()


class Cursor:
    """Reads one stream from its first point; ``position`` is its next index."""

    def __init__(self, stream: BaseStream) -> None:
        self._stream = stream
        self._group = CursorGroup([stream])

    @property
    def position(self) -> int:
        return self._group.position[self._stream]

    def read(
        self, block: bool = True, timeout: float = 0, last_only: bool = False
    ) -> BaseView | None:
        """The stream's new points as a view, or None if none came in time;
        ``EndOfStream`` once it is sealed and read to its end."""
        return self._group.read(block, timeout, last_only).get(self._stream)

    def close(self) -> None:
        """Give the cursor's connection back now (else when it is garbage collected)."""
        self._group.close()
