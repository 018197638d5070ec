"""databus: a Redis-backed live data bus for experiment and beamline data acquisition.

Layout: ``config`` (Settings), ``server`` (the embedded Valkey), ``bus`` (connect, Bus,
Session), ``keys`` (every key name), ``encoding`` (bytes on the wire, pure), ``states``
(scan lifecycle), ``sink`` (the batching flusher), ``publish`` (Scan, ChannelWriter),
``runners`` (threads or gevent), ``errors`` (every exception), ``cli`` (the command).
Everything a user needs is re-exported here.
"""

from .bus import Bus, Session, connect
from .config import Settings
from .encoding import Descriptor, FileRef
from .errors import (
    BusFull,
    ChannelExists,
    ClosedError,
    CorruptEntry,
    DatabusError,
    DataExpired,
    DtypeError,
    FlushFailed,
    InvalidURL,
    MetadataError,
    NotYetPublished,
    PointError,
    PublisherLost,
    ReadTimeout,
    ScanEnded,
    ScanStateError,
    ServerError,
    ServerUnavailable,
    ShapeError,
    SinkFull,
    UnknownScan,
)
from .publish import ChannelWriter, Scan
from .sink import FlushPolicy, SinkStatistics
from .states import EndReason, ScanState

__version__ = "0.1.0"

__all__ = [
    "Bus",
    "BusFull",
    "ChannelExists",
    "ChannelWriter",
    "ClosedError",
    "CorruptEntry",
    "DataExpired",
    "DatabusError",
    "Descriptor",
    "DtypeError",
    "EndReason",
    "FileRef",
    "FlushFailed",
    "FlushPolicy",
    "InvalidURL",
    "MetadataError",
    "NotYetPublished",
    "PointError",
    "PublisherLost",
    "ReadTimeout",
    "Scan",
    "ScanEnded",
    "ScanState",
    "ScanStateError",
    "ServerError",
    "ServerUnavailable",
    "Session",
    "Settings",
    "ShapeError",
    "SinkFull",
    "SinkStatistics",
    "UnknownScan",
    "__version__",
    "connect",
]
