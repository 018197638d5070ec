"""blissdata 2.x's default ``Stream`` (numeric arrays and json records) and its ``View``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .base import BaseStream, StreamDefinition, View

if TYPE_CHECKING:
    from ..._publish import ChannelWriter
    from ..._subscribe import ChannelNode

__all__ = ["Stream", "View", "stream_of"]


class Stream(BaseStream):
    """A stream of numeric points (``kind`` "array") or json records ("json")."""

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "json" if self._desc.kind == "json" else "array"

    @staticmethod
    def make_definition(
        name: str, dtype: Any, shape: Any = None, info: dict[str, Any] | None = None
    ) -> StreamDefinition:
        """A stream of points of ``dtype`` (a numpy dtype, or ``"json"`` for records) and
        ``shape`` (one point's; None: scalars). ``info`` is kept in the stream's info."""
        info = dict(info or {})
        if isinstance(dtype, str) and dtype == "json":
            if shape is not None:
                raise ValueError(f"stream {name!r}: a json stream cannot have a shape")
            return StreamDefinition(name, info, None, (), "json")
        shape = () if shape is None else tuple(shape)
        info["dtype"] = np.dtype(dtype).name
        info["shape"] = list(shape)
        return StreamDefinition(name, info, np.dtype(dtype), shape, "array")


def stream_of(node: ChannelNode | None, writer: ChannelWriter | None) -> BaseStream:
    """The stream class for a channel: a ``LimaStream`` for frames a detector wrote to its
    files (``ref`` channels), else a ``Stream``."""
    from .lima import LimaStream

    kind = writer.desc.kind if writer is not None else node.desc.kind  # type: ignore[union-attr]
    return LimaStream(node, writer) if kind == "ref" else Stream(node, writer)
