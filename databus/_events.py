"""What a walk yields: ``Event(type, node, data)``.

Scripts written for BLISS iterate ``for event, *values in node.walk_on_new_events()`` and
compare ``event == event.NEW_NODE``; both work, because an ``Event`` unpacks as
``(type, node, data)`` and every ``EventType`` member reaches the others as attributes.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from ._states import EndReason


class EventType(enum.Enum):
    """Kinds of event, in the order a scan produces them: its NEW_NODE, then its channels'
    NEW_NODE, PREPARED_SCAN, NEW_DATA (any number), END_SCAN last. GAP comes, in index
    order among a channel's NEW_DATA, for points that will never come (``DataGap``)."""

    NEW_NODE = "new_node"
    PREPARED_SCAN = "prepared_scan"
    NEW_DATA = "new_data"
    GAP = "gap"
    END_SCAN = "end_scan"
    NEW_DATA_IN_CHANNEL = "new_data"  # the older BLISS name, an alias of NEW_DATA


class EventData(NamedTuple):
    """The points a NEW_DATA event carries: ``data`` holds points ``first_index`` ..
    ``first_index + block_size - 1`` (a numpy block; a list of records for json channels,
    of ``FileRef`` for ref channels); ``description`` is the channel descriptor."""

    first_index: int
    data: Any
    description: dict[str, Any]
    block_size: int


class DataGap(NamedTuple):
    """The data of GAP: points ``first_index`` .. ``first_index + block_size - 1`` of the
    channel will never be delivered; ``reason`` is ``dropped`` (a lossy channel dropped
    them to keep up), ``server lost`` (the server restarted without them) or ``evicted``
    (the memory guard deleted the ended scan before this reader had read them)."""

    first_index: int
    block_size: int
    reason: str


class ScanEnd(NamedTuple):
    """The data of END_SCAN: why the scan ended, and the error text if it failed."""

    reason: EndReason | str
    error: str | None = None


class Event(NamedTuple):
    """One event of a walk: its type, the node it is about, and its data (``EventData``
    for NEW_DATA, ``DataGap`` for GAP, ``ScanEnd`` for END_SCAN, None otherwise)."""

    type: EventType
    node: Any
    data: Any = None
