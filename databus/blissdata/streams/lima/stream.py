"""``LimaStream``: frames a detector wrote to its own files (a databus ``ref`` channel).

Indexing and views give the frames, read from the files the channel's references name (as
``ChannelNode`` reads them); there is no Lima server to ask for live frames.
"""

from __future__ import annotations

from typing import Any

from ...._cursor import ChannelPoints
from ..base import BaseStream, BaseView


class LimaView(BaseView):
    """Frames ``index`` .. ``index + len - 1`` a cursor found; ``get_data`` reads them."""

    def __init__(self, stream: LimaStream, start: int, stop: int) -> None:
        self._stream = stream
        self._range = range(start, stop)
        self.index = start

    def __len__(self) -> int:
        return len(self._range)

    def get_data(self, start: int | None = None, stop: int | None = None) -> Any:
        """The frames at positions ``start`` .. ``stop`` of the view (one array)."""
        wanted = self._range[start:stop]
        return self._stream[wanted.start : wanted.stop]


class LimaStream(BaseStream):
    """A stream of detector frames (``plugin`` "lima")."""

    plugin = "lima"

    def _view(self, points: ChannelPoints) -> LimaView:
        return LimaView(self, points.start, points.stop)

    @property
    def info(self) -> dict[str, Any]:
        return {**super().info, "plugin": "lima"}
