"""blissdata 2.x's lima stream over databus ``ref`` channels (``blissdata.streams.lima``)."""

from .stream import ImageReference, LimaStream, LimaView

__all__ = ["ImageReference", "LimaStream", "LimaView"]
