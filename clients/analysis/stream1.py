"""dranspose's STINS (stream1) message types, for a worker written against dranspose's
``dranspose.middlewares.stream1.parse`` and ``dranspose.data.stream1``: import ``parse``
and the types from here instead, and the worker runs on the bus unchanged.

A bus event's stream is the point's data itself (a numpy array for a frame), so ``parse``
gives a ``Stream1Data`` of it; the bus has no per-stream message numbers (``msg_number``
and ``frame`` are None) and no header or series-end messages in its events: a scan's
start and end reach a worker as ``on_scan_start`` / ``on_scan_end``. A dranspose capture
replayed through the bus (``databus run --replay FILE.cbors``) arrives the same way: each
STINS stream is an array channel of its images, so ``parse`` gives the frames dranspose's
parser gives, and the series' header fields are in ``event.scan.info["stins"][stream]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Stream1Start:
    """A series' header (dranspose's ``htype="header"``)."""

    filename: str
    msg_number: int | None = None
    htype: str = "header"


@dataclass
class Stream1Data:
    """One image (dranspose's ``htype="image"``): ``data`` and its ``shape`` and ``type``."""

    data: np.ndarray
    shape: list[int] = field(default_factory=list)
    type: str = ""
    compression: str = "none"
    frame: int | None = None
    msg_number: int | None = None
    htype: str = "image"


@dataclass
class Stream1End:
    """A series' end (dranspose's ``htype="series_end"``)."""

    msg_number: int | None = None
    htype: str = "series_end"


def parse(stream: Any) -> Stream1Data:
    """A bus event's stream (a point's data) as dranspose's ``Stream1Data``; TypeError
    for a value that is no array of numbers."""
    data = np.asarray(stream)
    if data.dtype.kind not in "biuf":
        raise TypeError(f"a stream1 image is an array of numbers, not {data.dtype} data")
    return Stream1Data(data, list(data.shape), str(data.dtype))
