"""What a worker and a reducer are given: an ``Event`` (one point of one scan, across the
channels the analysis asked for) and a ``Result`` (what a worker returned for an event).
The names and fields are dranspose's, so a worker written for it reads the same."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import databus


@dataclass(frozen=True)
class Event:
    """Point ``event_number`` of ``scan``: ``streams`` maps each channel name to that
    point's data (a numpy array, a view into the block read for the claim, not a copy)."""

    event_number: int
    scan: databus.ScanNode
    streams: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """What worker ``worker`` returned for event ``event_number`` of the scan ``scan`` (a
    key), computed with the parameters whose hash is ``parameters_hash``."""

    event_number: int
    worker: str
    parameters_hash: str
    payload: Any
    scan: str = ""
