"""``ScanNode`` (BLISS's ``data.nodes.scan``) and the session node: the SDK's session and
scan nodes whose children and walks give the classic classes (``ChannelDataNode``,
``LimaImageChannelDataNode``)."""

from __future__ import annotations

import builtins

from ...._encoding import Descriptor
from ...._subscribe import ChannelNode, Node
from ...._subscribe import ScanNode as _ScanNode
from ...._subscribe import SessionNode as _SessionNode
from .._base import DataNodeContainer
from .._tree import ScanTree
from .channel import ChannelDataNode
from .lima import LimaImageChannelDataNode, is_lima

__all__ = ["ScanNode", "SessionNode"]


class ScanNode(_ScanNode, DataNodeContainer):
    """A scan (``type`` ``scan`` or ``scan_group``); its channels are ``ChannelDataNode``
    and ``LimaImageChannelDataNode``, below the device containers of its acquisition chain
    (``_tree``): ``children()`` are its top masters, walks announce each container before
    its first channel."""

    _tree_of: object = None

    @property
    def _tree(self) -> ScanTree:
        """The containers of the scan as last read (built again when its record is)."""
        if self._tree_of is not self._parsed:
            self._tree_cache, self._tree_of = ScanTree(self), self._parsed
        return self._tree_cache

    def _channel_class(self, desc: Descriptor) -> builtins.type[ChannelNode]:
        return LimaImageChannelDataNode if is_lima(desc) else ChannelDataNode

    def _below(self) -> list[Node]:
        """Every node below the scan in walk order: each channel, after its containers
        not met before."""
        nodes: dict[str, Node] = {}
        for channel in self.channels.values():
            for node in (*channel._containers(), channel):
                nodes.setdefault(node.db_name, node)
        return list(nodes.values())

    def children(self) -> list[Node]:
        """The top masters (and any channel of no device), as BLISS's scan children."""
        return [node for node in self._below() if node.parent is self]

    def _descendant(self, db_name: str) -> Node | None:
        """A container or channel by its BLISS-style name (``<scan>:axis:timer:...``), or
        a channel by the bus's (``<scan>:<channel full name>``)."""
        found = next((node for node in self._below() if node.db_name == db_name), None)
        return found or super()._descendant(db_name)


class SessionNode(_SessionNode, DataNodeContainer):
    """A session (BLISS's session ``DataNodeContainer``); its scans are ``ScanNode``."""

    scan_class = ScanNode


ScanNode.session_class = SessionNode
