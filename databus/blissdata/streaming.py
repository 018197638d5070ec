"""blissdata's ``streaming``: ``DataStreamReaderStopHandler``, which ends a walk from another
thread or greenlet (``stop()``; the walk returns within ``BLOCK_S``): the SDK's ``StopHandler``."""

from .._subscribe import StopHandler as DataStreamReaderStopHandler

__all__ = ["DataStreamReaderStopHandler"]
