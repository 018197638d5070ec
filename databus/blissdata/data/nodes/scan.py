"""``ScanNode`` (BLISS's ``data.nodes.scan``) and the session node: the SDK's session and
scan nodes whose children and walks give the classic classes (``ChannelDataNode``,
``LimaImageChannelDataNode``)."""

from __future__ import annotations

import builtins

from ...._encoding import Descriptor
from ...._subscribe import ChannelNode
from ...._subscribe import ScanNode as _ScanNode
from ...._subscribe import SessionNode as _SessionNode
from .._base import DataNodeContainer
from .channel import ChannelDataNode
from .lima import LimaImageChannelDataNode, is_lima

__all__ = ["ScanNode", "SessionNode"]


class ScanNode(_ScanNode, DataNodeContainer):
    """A scan (``type`` ``scan`` or ``scan_group``); its channels are ``ChannelDataNode``
    and ``LimaImageChannelDataNode``."""

    def _channel_class(self, desc: Descriptor) -> builtins.type[ChannelNode]:
        return LimaImageChannelDataNode if is_lima(desc) else ChannelDataNode


class SessionNode(_SessionNode, DataNodeContainer):
    """A session (BLISS's session ``DataNodeContainer``); its scans are ``ScanNode``."""

    scan_class = ScanNode


ScanNode.session_class = SessionNode
