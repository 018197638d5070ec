"""Frames of a bus channel for the crystallography world: CrystFEL / OnDA (msgpack maps over
0MQ REQ/REP or PUB/SUB) and European XFEL's karabo-bridge clients; ``databus bridge frames``.
"""

from .bridge import FramesBridge, FramesStatistics, main

__all__ = ["FramesBridge", "FramesStatistics", "main"]
