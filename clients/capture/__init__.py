"""Capture and replay: ``databus capture`` writes what the bus carried for a session's
scans to a self-contained, versioned file as it flows; ``databus replay`` publishes the
scans of such a file again, as new scans, at the captured pace or faster.

The file is a stream of msgpack maps (``docs/capture-format.md``): ``read_capture`` reads
it record by record, ``same_content`` / ``content_differences`` compare two of them.
``dranspose`` reads dranspose's ``.cbors`` captures, another source to replay.
"""

from ._compare import content_differences, same_content
from ._files import CaptureReader, read_capture
from ._format import (
    VERSION,
    CaptureError,
    ChannelDeclared,
    Header,
    PointsLost,
    PointsSent,
    Record,
    ScanCut,
    ScanEnded,
    ScanStarted,
    StateChanged,
)
from .capture import Capture, CaptureStatistics
from .replay import Replay, replay

__all__ = [
    "VERSION",
    "Capture",
    "CaptureError",
    "CaptureReader",
    "CaptureStatistics",
    "ChannelDeclared",
    "Header",
    "PointsLost",
    "PointsSent",
    "Record",
    "Replay",
    "ScanCut",
    "ScanEnded",
    "ScanStarted",
    "StateChanged",
    "content_differences",
    "read_capture",
    "replay",
    "same_content",
]
