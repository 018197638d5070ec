"""BLISS's ``data.node``: the entry points of the classic reader API, giving the classic
node classes (``ScanNode``, ``ChannelDataNode``, ``LimaImageChannelDataNode``).

Each function is ``databus.node``'s, on the bus ``bus`` (default ``databus.default_bus()``).
Names are the bus's: a session's name, a scan key (``<prefix>:scan:{<session>:<n>}``), a
scan key followed by ``:<channel full name>``; BLISS's Redis paths
(``session:path:1_ascan:axis:robz``) are not names here.
"""

from __future__ import annotations

from typing import cast

from ... import node as _node
from ..._bus import Bus
from ..._subscribe import Node
from ._base import DataNode, DataNodeContainer
from .nodes.scan import SessionNode

__all__ = [
    "DataNode",
    "DataNodeContainer",
    "get_node",
    "get_nodes",
    "get_or_create_node",
    "get_session_node",
    "sessions_list",
]


def get_session_node(session_name: str, bus: Bus | None = None) -> SessionNode:
    """The node of session ``session_name`` (it need not exist yet); ValueError for a ':'."""
    return cast(SessionNode, _node.get_session_node(session_name, bus, session_class=SessionNode))


def get_node(db_name: str, bus: Bus | None = None) -> Node | None:
    """The session, scan or channel node called ``db_name``; None if there is none."""
    return _node.get_node(db_name, bus, session_class=SessionNode)


def get_nodes(*db_names: str, bus: Bus | None = None) -> list[Node | None]:
    """``get_node`` of each name, in order."""
    return _node.get_nodes(*db_names, bus=bus, session_class=SessionNode)


def get_or_create_node(
    name: str, node_type: str | None = None, *, bus: Bus | None = None
) -> Node | None:
    """``get_or_create_node(session, node_type="session")``, as BLISS's ScansWatcher calls
    it, is the session's node; without ``node_type``, ``get_node(name)``. A reader creates
    nothing: asking for a scan or channel is a ValueError."""
    return _node.get_or_create_node(name, node_type, bus=bus, session_class=SessionNode)


def sessions_list(bus: Bus | None = None) -> list[SessionNode]:
    """The nodes of the sessions active within the bus's retention time."""
    return cast(list[SessionNode], _node.sessions_list(bus, session_class=SessionNode))
