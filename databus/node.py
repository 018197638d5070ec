"""The classic BLISS-style reader API: scripts written for ``blissdata.data.node`` run with
``from databus import node``. The module functions use the default bus (``DATABUS_URL`` or
the embedded server; ``databus.set_default_bus()`` picks another)."""

from __future__ import annotations

from ._bus import Bus, default_bus
from ._errors import UnknownScan
from ._events import Event, EventData, EventType, ScanEnd
from ._subscribe import ChannelNode, Node, ScanNode, SessionNode, StopHandler, get_scan

__all__ = [
    "ChannelNode",
    "Event",
    "EventData",
    "EventType",
    "Node",
    "ScanEnd",
    "ScanNode",
    "SessionNode",
    "StopHandler",
    "get_node",
    "get_session_node",
    "sessions_list",
]


def get_session_node(name: str, bus: Bus | None = None) -> SessionNode:
    """The node of session ``name``; it need not exist yet. ValueError for a ':' in it."""
    return SessionNode(bus or default_bus(), name)


def get_node(db_name: str, bus: Bus | None = None) -> Node | None:
    """The node called ``db_name`` (a session name, a scan key, or a scan key followed
    by ``:<channel name>``), or None if there is none."""
    bus = bus or default_bus()
    if ":scan:{" not in db_name:
        if ":" in db_name or db_name not in bus.sessions():
            return None
        return SessionNode(bus, db_name)
    scan_key, _, channel = db_name.partition("}:")
    scan_key = scan_key if scan_key.endswith("}") else scan_key + "}"
    try:
        scan = get_scan(bus, scan_key)
    except UnknownScan:
        return None
    if not channel:
        return scan
    return scan.channels.get(channel)


def sessions_list(bus: Bus | None = None) -> list[SessionNode]:
    """Nodes of the sessions active within the retention time."""
    bus = bus or default_bus()
    return [SessionNode(bus, name) for name in bus.sessions()]
