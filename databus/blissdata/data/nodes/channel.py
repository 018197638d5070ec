"""``ChannelDataNode``: a channel as BLISS's ``data.nodes.channel`` reads it.

It is the SDK's ``ChannelNode`` with BLISS's return values where they differ: ``get(i)``
is None for a point not published (or past the end), ``get(a, b)`` returns what exists
of the range (``a < 0`` reads from 0, any ``b < 0`` to the end), ``get_as_array(a, b=None)``
is ``numpy.asarray(get(a, b), dtype)``, ``ch[...]`` is every point. Points gone from
Redis still raise ``DataExpired`` / ``DataLost`` (IndexErrors, as BLISS's "Data is not
anymore available"), naming the range and where the file writer saved them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...._bus import Bus
from ...._encoding import Descriptor
from ...._errors import DataExpired
from ...._subscribe import ChannelNode, Node, NodeInfo
from .._base import DataNode

__all__ = ["ChannelDataNode"]


class _ChannelDataNodeBase(ChannelNode, DataNode):
    """What ``ChannelDataNode`` and ``LimaImageChannelDataNode`` share (they are siblings,
    as in BLISS: a lima node is not a ``ChannelDataNode``): a place in the scan's tree,
    below the container of its device (``parent``; ``db_name`` is the container's followed
    by the short name, as BLISS names it)."""

    def __init__(self, bus: Bus, scan: Any, desc: Descriptor) -> None:
        super().__init__(bus, scan, desc)
        self._path: tuple[Node, ...] = scan._tree.path_of(desc.name)
        if self._path:
            self.parent = self._path[-1]
            self.db_name = f"{self.parent.db_name}:{self.short_name}"

    def _containers(self) -> tuple[Node, ...]:
        return self._path

    @property
    def info(self) -> NodeInfo:
        """The descriptor's keys, and BLISS's: ``shape`` (a tuple), ``dtype`` (a numpy
        dtype), ``fullname``, ``unit``."""
        bliss = {"shape": self.shape, "dtype": self.dtype, "fullname": self.fullname}
        return NodeInfo({**self.desc.as_dict(), **bliss, "unit": self.unit})

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every point published (reads them all, on every call)."""
        return np.asarray(self.get_as_array(0, -1), dtype)


class ChannelDataNode(_ChannelDataNodeBase):
    """A channel of points published in the bus (``type`` ``channel``)."""

    def get(self, from_index: int | None, to_index: int | None = None) -> Any:
        """Point ``from_index`` (negative: from the end), None if it is not there (not yet
        published, or past the end); with ``to_index``, points ``from_index`` ..
        ``to_index`` inclusive as far as they exist (``to_index < 0``: to the last one;
        ``from_index < 0`` reads from 0, as BLISS). ``DataExpired`` for points gone."""
        if from_index is None:
            from_index = 0
        if to_index is None:
            try:
                return super().get(from_index)
            except DataExpired:
                raise
            except IndexError:
                return None
        return super().get_as_array(max(from_index, 0), -1 if to_index < 0 else to_index)

    def get_as_array(self, from_index: int, to_index: int | None = None) -> Any:  # type: ignore[override]
        """``get(from_index, to_index)`` as a numpy array of the channel's dtype (a point
        not there is ``nan`` for a float channel, as in BLISS)."""
        return np.asarray(self.get(from_index, to_index), self.dtype)

    def __getitem__(self, index: Any) -> Any:
        """``ch[i]`` (``NotYetPublished`` / ``EndOfData`` when not there), ``ch[a:b]``,
        and ``ch[...]``: every point published."""
        if index is Ellipsis:
            return self.get(0, -1)
        if isinstance(index, slice):
            return super().__getitem__(index)
        return ChannelNode.get(self, index)
