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
    "get_nodes",
    "get_or_create_node",
    "get_session_node",
    "sessions_list",
]


def get_session_node(
    name: str, bus: Bus | None = None, *, session_class: type[SessionNode] = SessionNode
) -> SessionNode:
    """The node of session ``name``; it need not exist yet. ValueError for a ':' in it.
    ``session_class`` (in every function here): the session node class to make, whose
    ``scan_class`` makes the scans (``databus.blissdata`` passes its classic classes)."""
    return session_class(bus or default_bus(), name)


def get_node(
    db_name: str, bus: Bus | None = None, *, session_class: type[SessionNode] = SessionNode
) -> Node | None:
    """The node called ``db_name`` (a session name, a scan key, or a scan key followed
    by ``:<channel name>``), or None if there is none. Nodes are built from
    ``session_class`` and the classes it names (``scan_class``...)."""
    bus = bus or default_bus()
    if ":scan:{" not in db_name:
        if ":" in db_name or db_name not in bus.sessions():
            return None
        return session_class(bus, db_name)
    scan_key, _, channel = db_name.partition("}:")
    scan_key = scan_key if scan_key.endswith("}") else scan_key + "}"
    try:
        scan = get_scan(bus, scan_key, session_class.scan_class)
    except UnknownScan:
        return None
    return scan._descendant(db_name) if channel else scan


def get_nodes(
    *db_names: str, bus: Bus | None = None, session_class: type[SessionNode] = SessionNode
) -> list[Node | None]:
    """The nodes called ``db_names`` (see ``get_node``), None for each there is none of."""
    return [get_node(db_name, bus, session_class=session_class) for db_name in db_names]


def get_or_create_node(
    name: str,
    node_type: str | None = None,
    *,
    bus: Bus | None = None,
    session_class: type[SessionNode] = SessionNode,
) -> Node | None:
    """BLISS's way to reach a session that may not exist yet (``node_type="session"``,
    as its ScansWatcher calls it: sessions need no creating here, so nothing is written);
    without ``node_type``, ``get_node(name)``. Scans and channels come into being by being
    published (``Session.create_scan``): asking a reader to create one is a ValueError."""
    if node_type == "session":
        return get_session_node(name, bus, session_class=session_class)
    if node_type is None:
        return get_node(name, bus, session_class=session_class)
    raise ValueError(
        f"get_or_create_node({name!r}, node_type={node_type!r}): a reader only creates "
        f"session nodes; publish scans with bus.session(name).create_scan()"
    )


def sessions_list(
    bus: Bus | None = None, *, session_class: type[SessionNode] = SessionNode
) -> list[SessionNode]:
    """Nodes of the sessions active within the retention time."""
    bus = bus or default_bus()
    return [session_class(bus, name) for name in bus.sessions()]
