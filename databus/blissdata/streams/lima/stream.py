"""``LimaStream``: frames a detector wrote to its own files (a databus ``ref`` channel).

Indexing and views give the frames, read from the files the channel's references name (as
``ChannelNode`` reads them); ``get_references`` says where each frame is without opening
the files. There is no Lima server to ask for live frames. As in blissdata, a negative
index counts from the frames published so far, sealed or not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...._cursor import ChannelPoints
from ...._errors import DataExpired, EndOfData, NotYetPublished
from ...exceptions import blissdata_error
from ..base import BaseStream, BaseView


@dataclasses.dataclass(frozen=True)
class ImageReference:
    """Where one frame is: ``index`` in dataset ``data_path`` of ``file_path``."""

    format: str
    file_path: str
    data_path: str | None
    index: int


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

    def get_references(self, start: int | None = None, stop: int | None = None) -> Any:
        """Where the frames at positions ``start`` .. ``stop`` of the view are."""
        wanted = self._range[start:stop]
        return self._stream.get_references(slice(wanted.start, wanted.stop))


class LimaStream(BaseStream):
    """A stream of detector frames (``plugin`` "lima")."""

    plugin = "lima"

    def _view(self, points: ChannelPoints) -> LimaView:
        return LimaView(self, points.start, points.stop)

    def _sealed_length(self, what: str) -> int:
        return len(self)

    @property
    def info(self) -> dict[str, Any]:
        return {**super().info, "plugin": "lima"}

    def get_references(self, key: int | slice) -> ImageReference | list[ImageReference]:
        """Where frame ``key`` (or each frame of slice ``key``) is, files not opened."""
        if isinstance(key, slice):
            frames = range(*key.indices(len(self)))
            if not len(frames):
                return []
            first, last = min(frames), max(frames)
        elif isinstance(key, int):
            first = last = key + len(self) if key < 0 else key
        else:
            raise TypeError(f"stream indices must be integers or slices, not {type(key).__name__}")
        try:
            refs = self.node.file_refs(first, last)
        except (DataExpired, NotYetPublished, EndOfData) as exc:
            raise blissdata_error(exc) from exc
        found = {
            ref_start + i: ImageReference("HDF5", ref.file, ref.dataset, ref.start + i)
            for ref, ref_start in _starts(refs, first)
            for i in range(ref.stop - ref.start)
        }
        if isinstance(key, slice):
            return [found[i] for i in frames]
        return found[first]


def _starts(refs: list[Any], first: int) -> list[tuple[Any, int]]:
    """Each reference with the index of its first frame in the stream."""
    out, index = [], first
    for ref in refs:
        out.append((ref, index))
        index += ref.stop - ref.start
    return out
