"""blissdata 2.x's streams (``blissdata.streams``): ``Cursor``, ``CursorGroup`` and the base
classes; ``default.Stream`` for numeric and json points, ``lima.LimaStream`` for frames."""

from .base import BaseStream, BaseView, StreamDefinition
from .cursor import Cursor, CursorGroup

__all__ = ["BaseStream", "BaseView", "Cursor", "CursorGroup", "StreamDefinition"]
