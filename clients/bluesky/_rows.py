"""Rows of one bluesky stream, assembled from its channels' blocks: pure, no I/O.

A row is one point index. It is *complete* once every channel of the stream has delivered
it (as data, or as a gap that says it never will); complete rows that no channel lost are
handed out as runs of consecutive indices, one payload per channel for each run::

    channel a   [0 ........ 9][10 ... 19]      next 20
    channel b   [0 ... 5][gap 6..7][8 ... 14]  next 15
    frontier = min(next) = 15  ->  runs [0, 6) and [8, 15); rows 6, 7 are skipped

Payloads are numpy blocks (``array`` channels), lists of records (``json``) or lists of
``FileRef`` cut to the run (``ref``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from databus import FileRef


@dataclass
class _Piece:
    first: int
    count: int
    payload: Any


def _cut(payload: Any, lo: int, hi: int) -> Any:
    """Points ``lo .. hi - 1`` (relative) of a payload."""
    if isinstance(payload, np.ndarray) or not payload or not isinstance(payload[0], FileRef):
        return payload[lo:hi]
    out: list[FileRef] = []
    offset = 0
    for ref in payload:
        a, b = max(lo, offset), min(hi, offset + len(ref))
        if a < b:
            out.append(
                FileRef(ref.file, ref.dataset, ref.start + a - offset, ref.start + b - offset)
            )
        offset += len(ref)
    return out


def _join(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [item for part in parts for item in part]


@dataclass
class Gap:
    """Rows ``first .. first + count - 1`` of ``channel`` that will never come."""

    channel: str
    first: int
    count: int
    reason: str


@dataclass
class StreamRows:
    """The rows of the channels ``channels`` (names), in index order; ``join`` adds one."""

    channels: list[str]
    done: int = 0  # rows below this were handed out or skipped
    emitted: int = 0  # rows handed out
    gaps: list[Gap] = field(default_factory=list)
    _pieces: dict[str, deque[_Piece]] = field(default_factory=dict)
    _next: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._pieces = {name: deque() for name in self.channels}
        self._next = dict.fromkeys(self.channels, 0)

    def join(self, channel: str) -> None:
        """Add a channel, from index 0: rows complete from then on wait for it too."""
        self.channels.append(channel)
        self._pieces[channel] = deque()
        self._next[channel] = 0

    def add(self, channel: str, first: int, payload: Any, count: int) -> None:
        """Points ``first .. first + count - 1`` of ``channel``; a hole before them (which
        a walk never leaves) counts as a gap, points already had are ignored."""
        have = self._next[channel]
        if first > have:
            self.gap(channel, have, first - have, "missing")
        skip = max(0, have - first)
        if skip >= count:
            return
        if skip:
            payload, first, count = _cut(payload, skip, count), first + skip, count - skip
        self._pieces[channel].append(_Piece(first, count, payload))
        self._next[channel] = first + count

    def gap(self, channel: str, first: int, count: int, reason: str) -> None:
        """Points ``first .. first + count - 1`` of ``channel`` will never come."""
        stop = first + count
        first = max(first, self._next[channel])
        if stop <= first:
            return
        self.gaps.append(Gap(channel, first, stop - first, reason))
        self._next[channel] = stop

    @property
    def incomplete(self) -> int:
        """Rows that some channel has and another has not (yet)."""
        return max(self._next.values()) - min(self._next.values())

    def take(self) -> list[tuple[int, int, dict[str, Any]]]:
        """The runs ``(first, stop, {channel: payload})`` complete since the last call."""
        frontier = min(self._next.values())
        runs = []
        start = self.done
        for lost in sorted((g for g in self.gaps if g.first + g.count > start), key=_first):
            if lost.first >= frontier:
                break
            if lost.first > start:
                runs.append((start, lost.first))
            start = max(start, lost.first + lost.count)
        if start < frontier:
            runs.append((start, frontier))
        self.done = max(self.done, frontier)
        out = [(a, b, {name: self._take(name, a, b) for name in self.channels}) for a, b in runs]
        self.emitted += sum(b - a for a, b in runs)
        return out

    def _take(self, channel: str, a: int, b: int) -> Any:
        pieces = self._pieces[channel]
        parts = []
        while pieces and pieces[0].first < b:
            piece = pieces[0]
            end = piece.first + piece.count
            if end > a:
                lo, hi = max(a, piece.first) - piece.first, min(b, end) - piece.first
                whole = lo == 0 and hi == piece.count
                parts.append(piece.payload if whole else _cut(piece.payload, lo, hi))
            if end > b:
                break
            pieces.popleft()
        return _join(parts)


def _first(gap: Gap) -> int:
    return gap.first
