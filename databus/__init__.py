"""databus: a Redis-backed live data bus for experiment and beamline data acquisition.

Layout: ``config`` (Settings), ``server`` (the embedded Valkey), ``bus`` (connect, Bus,
Session), ``keys`` (every key name), ``encoding`` (bytes on the wire, pure), ``states``
(scan lifecycle), ``sink`` (the batching flusher), ``publish`` (Scan, ChannelWriter),
``events`` (Event types), ``assembler`` (pure event ordering), ``subscribe`` (nodes,
channel data, walks), ``feed`` (new scans across sessions), ``cursor`` (new points of
several channels), ``share`` (points handed out once across a group of processes),
``node`` (the classic BLISS API), ``runners`` (threads or gevent), ``errors`` (every
exception), ``cli`` (the command). Everything a user needs is re-exported here.
"""

from ._bus import Bus, Session, connect, default_bus, set_default_bus
from ._config import Settings
from ._cursor import ChannelPoints, Cursor
from ._encoding import Descriptor, FileRef
from ._errors import (
    BusFull,
    ChannelExists,
    ClosedError,
    CorruptEntry,
    DatabusError,
    DataExpired,
    DataLost,
    DtypeError,
    EndOfData,
    FileRefError,
    FlushFailed,
    InvalidName,
    InvalidURL,
    MetadataError,
    NotYetPublished,
    PermissionDenied,
    PointError,
    ReadTimeout,
    ScanStateError,
    ServerConflict,
    ServerError,
    ServerUnavailable,
    ShapeError,
    UnknownScan,
)
from ._events import DataGap, Event, EventData, EventType, ScanEnd
from ._flush_policy import FlushPolicy
from ._publish import ChannelWriter, Scan
from ._share import Claim, PointShare, ShareResult, ShareResults, ShareStatistics
from ._sink import SinkStatistics
from ._states import EndReason, ScanState
from ._subscribe import ChannelNode, ScanNode, SessionNode, StopHandler

__version__ = "0.1.0"

__all__ = [
    "Bus",
    "BusFull",
    "ChannelExists",
    "ChannelNode",
    "ChannelPoints",
    "ChannelWriter",
    "Claim",
    "ClosedError",
    "CorruptEntry",
    "Cursor",
    "DataExpired",
    "DataGap",
    "DataLost",
    "DatabusError",
    "Descriptor",
    "DtypeError",
    "EndOfData",
    "EndReason",
    "Event",
    "EventData",
    "EventType",
    "FileRef",
    "FileRefError",
    "FlushFailed",
    "FlushPolicy",
    "InvalidName",
    "InvalidURL",
    "MetadataError",
    "NotYetPublished",
    "PermissionDenied",
    "PointError",
    "PointShare",
    "ReadTimeout",
    "Scan",
    "ScanEnd",
    "ScanNode",
    "ScanState",
    "ScanStateError",
    "ServerConflict",
    "ServerError",
    "ServerUnavailable",
    "Session",
    "SessionNode",
    "Settings",
    "ShapeError",
    "ShareResult",
    "ShareResults",
    "ShareStatistics",
    "SinkStatistics",
    "StopHandler",
    "UnknownScan",
    "__version__",
    "connect",
    "default_bus",
    "set_default_bus",
]
