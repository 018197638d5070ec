"""dranspose captures made by dranspose itself: its ingesters' ``Dumper`` writing the
``InternalWorkerMessage`` of each event, with STINS streams built by its own stream1 types
(``Stream1Start/Data/End.to_stream_data``), as an ingester forwards them."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from dranspose.data.stream1 import Stream1Data, Stream1End, Stream1Start
from dranspose.event import InternalWorkerMessage, StreamData
from dranspose.ingester import Dumper

EPOCH = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def stins_series(frames: np.ndarray, filename: str = "", **header: object) -> list[StreamData]:
    """One STINS series as an ingester forwards it: header, one image per frame, end."""
    packets: list[Stream1Start | Stream1Data | Stream1End] = [
        Stream1Start(msg_number=0, filename=filename, **header)
    ]
    for i, frame in enumerate(frames):
        image = Stream1Data(
            msg_number=i + 1, frame=i, shape=list(frame.shape), type=str(frame.dtype),
            compression="none", data=frame,
        )  # fmt: skip
        packets.append(image)
    packets.append(Stream1End(msg_number=len(frames) + 1))
    return [p.to_stream_data().get_bytes() for p in packets]


def write_dump(
    path: Path,
    events: Sequence[Mapping[str, StreamData]],
    *,
    interval: float | None = None,
) -> None:
    """Append ``events`` (stream -> StreamData, one mapping per event, numbered from 0)
    with dranspose's ``Dumper``; ``interval``: seconds between their ``created_at``
    (None: dranspose's own, the time of writing)."""
    dumper = Dumper(str(path))
    try:
        for number, streams in enumerate(events):
            times = {}
            if interval is not None:
                times["created_at"] = EPOCH + datetime.timedelta(seconds=number * interval)
            dumper.write_dump(
                InternalWorkerMessage(event_number=number, streams=dict(streams), **times)
            )
    finally:
        dumper.close()


def dump_frames(path: Path, stream: str, frames: np.ndarray, interval: float | None = None) -> None:
    """A dump of one STINS series of ``frames`` on ``stream``, one event per message."""
    write_dump(path, [{stream: part} for part in stins_series(frames)], interval=interval)
