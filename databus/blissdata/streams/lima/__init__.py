"""blissdata 2.x's lima stream over databus ``ref`` channels (``blissdata.streams.lima``)."""

from .stream import LimaStream, LimaView

__all__ = ["LimaStream", "LimaView"]
