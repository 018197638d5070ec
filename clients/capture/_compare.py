"""Whether two captures hold the same content: what a replay keeps. Compared are each scan
in turn (its final info, channels and their descriptors, states, every point bit for bit,
gaps, file references and embedded frames, its end); not timing, scan numbers, keys or
sessions, the info keys a publisher sets itself, nor ``replayed_from``. Points are
compared by channel, whatever blocks they came in, as SHA-256 digests: constant memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import numpy as np

from databus import FileRef
from databus._encoding import pack_meta

from ._files import read_capture
from ._format import (
    ChannelDeclared,
    PointsLost,
    PointsSent,
    ScanCut,
    ScanEnded,
    ScanStarted,
    StateChanged,
)
from .replay import IDENTITY_KEYS, REPLAYED_FROM


@dataclasses.dataclass
class _Channel:
    descriptor: dict[str, Any]
    points: Any = dataclasses.field(default_factory=hashlib.sha256)
    frames: Any = dataclasses.field(default_factory=hashlib.sha256)
    runs: list[list[int]] = dataclasses.field(default_factory=list)  # [first, count]
    gaps: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)
    layouts: set[tuple[str, tuple[int, ...]]] = dataclasses.field(default_factory=set)

    def add(self, record: PointsSent) -> None:
        if self.runs and sum(self.runs[-1]) == record.first:
            self.runs[-1][1] += record.count
        else:
            self.runs.append([record.first, record.count])
        if isinstance(record.data, np.ndarray):
            block = np.ascontiguousarray(record.data)
            self.layouts.add((block.dtype.str, block.shape[1:]))
            self.points.update(block.reshape(-1).view(np.uint8))
        else:
            for item in record.data:  # records, or file references
                ref = isinstance(item, FileRef)
                self.points.update(pack_meta([*dataclasses.astuple(item)] if ref else item))
        if record.frames is not None:
            frames = np.ascontiguousarray(record.frames)
            self.layouts.add((frames.dtype.str, frames.shape[1:]))
            self.frames.update(frames.reshape(-1).view(np.uint8))


@dataclasses.dataclass
class _Scan:
    number: int
    info: dict[str, Any]
    channels: dict[str, _Channel] = dataclasses.field(default_factory=dict)
    states: list[str] = dataclasses.field(default_factory=list)
    end: tuple[str, ...] = ("no end: the capture was killed",)


def _kept(info: dict[str, Any]) -> dict[Any, bytes]:
    """The info a replay keeps, each value packed with its maps' keys sorted (the order
    of keys is no content)."""
    return {
        k: pack_meta(_sorted(v))
        for k, v in info.items()
        if k not in IDENTITY_KEYS and k != REPLAYED_FROM
    }


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return [[repr(k), _sorted(v)] for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))]
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _scans(path: str | os.PathLike[str]) -> list[_Scan]:
    """What ``path`` holds, per scan in the order they started."""
    scans: dict[str, _Scan] = {}
    with read_capture(path) as reader:
        for record in reader:
            if isinstance(record, ScanStarted):
                scans[record.scan] = _Scan(record.number, record.info)
                continue
            scan = scans[record.scan]
            if isinstance(record, ChannelDeclared):
                scan.channels[record.name] = _Channel(record.descriptor)
            elif isinstance(record, StateChanged):
                scan.states.append(record.state)
            elif isinstance(record, PointsSent):
                scan.channels[record.channel].add(record)
            elif isinstance(record, PointsLost):
                gap = (record.first, record.count, record.reason)
                scan.channels[record.channel].gaps.append(gap)
            elif isinstance(record, ScanEnded):
                scan.info = record.info
                scan.end = ("ended", record.reason, str(record.error))
            elif isinstance(record, ScanCut):
                scan.end = ("cut: the capture stopped before it ended",)
    return list(scans.values())


def _channel_differences(name: str, a: _Channel, b: _Channel) -> list[str]:
    found = []
    if a.descriptor != b.descriptor:
        found.append(f"channel {name!r} is declared {a.descriptor} in A, {b.descriptor} in B")
    if a.runs != b.runs:
        found.append(f"channel {name!r} holds points {_runs(a.runs)} in A, {_runs(b.runs)} in B")
    if a.layouts != b.layouts:
        found.append(f"channel {name!r} holds blocks of {a.layouts} in A, {b.layouts} in B")
    if a.points.digest() != b.points.digest():
        found.append(f"channel {name!r}: the points differ")
    if a.frames.digest() != b.frames.digest():
        found.append(f"channel {name!r}: the embedded frames differ")
    if a.gaps != b.gaps:
        found.append(f"channel {name!r} has gaps {a.gaps} in A, {b.gaps} in B")
    return found


def _runs(runs: list[list[int]]) -> str:
    return ", ".join(f"{first}..{first + count - 1}" for first, count in runs) or "none"


def _scan_differences(a: _Scan, b: _Scan) -> list[str]:
    found = []
    info_a, info_b = _kept(a.info), _kept(b.info)
    if info_a != info_b:
        keys = sorted({*info_a, *info_b}, key=repr)
        differ = [repr(k) for k in keys if info_a.get(k) != info_b.get(k)]
        found.append(f"the info differs in {', '.join(differ)}")
    if list(a.channels) != list(b.channels):
        found.append(f"the channels are {list(a.channels)} in A, {list(b.channels)} in B")
    for name in [n for n in a.channels if n in b.channels]:
        found += _channel_differences(name, a.channels[name], b.channels[name])
    if a.states != b.states:
        found.append(f"the states are {a.states} in A, {b.states} in B")
    if a.end != b.end:
        found.append(f"the end is {a.end} in A, {b.end} in B")
    return found


def content_differences(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> list[str]:
    """How the content of capture ``a`` differs from that of ``b``, one line per
    difference (empty: the same); scans are matched in the order they started.
    ``CaptureError`` if either cannot be read whole."""
    scans_a, scans_b = _scans(a), _scans(b)
    found = []
    if len(scans_a) != len(scans_b):
        found.append(f"A holds {len(scans_a)} scan(s), B {len(scans_b)}")
    for i, (x, y) in enumerate(zip(scans_a, scans_b, strict=False), start=1):
        where = f"scan {i} (number {x.number} in A, {y.number} in B): "
        found += [where + line for line in _scan_differences(x, y)]
    return found


def same_content(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True if captures ``a`` and ``b`` hold the same content (``content_differences``)."""
    return not content_differences(a, b)
