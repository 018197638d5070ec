"""What the server knows of one scan, built from the events of a walk (or read from the
bus for a scan that ended before the server started): its summary for the scans list,
its scalar series, the latest frame and spectrum of each channel (read through the SDK
when the channel gives references to frames in files), its gaps. Written by a session's
follower thread, read by the pages' tasks, under the view's lock."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np

import databus
from databus.scan import mesh_shape

from ._decimate import Span

#: Longest list of gaps kept per scan (the count of lost points covers them all).
MAX_GAPS = 50


class Series:
    """A growing float64 series: points are put at their index (a hole is NaN)."""

    def __init__(self) -> None:
        self._data = np.full(1024, np.nan)
        self.length = 0

    def put(self, first: int, block: np.ndarray) -> None:
        """Points ``first`` .. ``first + len(block) - 1``."""
        stop = first + len(block)
        if stop > len(self._data):
            grown = np.full(max(stop, 2 * len(self._data)), np.nan)
            grown[: self.length] = self._data[: self.length]
            self._data = grown
        self._data[first:stop] = block
        self.length = max(self.length, stop)

    def values(self, start: int = 0) -> np.ndarray:
        """A copy of points ``start`` .. the last."""
        return self._data[start : self.length].copy()


@dataclasses.dataclass
class Latest:
    """The newest point of a spectrum or image channel, with its index. A point given as
    a reference to a frame in a file (a lima channel) has ``value`` None until
    ``ScanView.read_references`` reads it through its ``node``, or ``error`` says why not."""

    index: int
    value: np.ndarray | None
    node: databus.ChannelNode | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class ChannelSpec:
    """What the page needs to know of a channel: dimensions, shape, dtype, unit, kind."""

    dim: int
    shape: tuple[int, ...]
    dtype: str
    unit: str | None
    kind: str

    @classmethod
    def of(cls, node: databus.ChannelNode) -> ChannelSpec:
        dtype = "" if node.dtype is None else node.dtype.str
        return cls(len(node.shape), tuple(node.shape), dtype, node.unit, node.desc.kind)


class ScanView:
    """One scan as the pages see it. ``followed``: its events come from a walk; else its
    data is read from the bus on first demand (``load``)."""

    def __init__(self, node: databus.ScanNode, *, followed: bool) -> None:
        self.node = node
        self.key = node.key
        self.lock = threading.Lock()
        self.channels: dict[str, ChannelSpec] = {}
        self.scalars: dict[str, Series] = {}
        self.latest: dict[str, Latest] = {}
        self.gaps: list[dict[str, Any]] = []
        self.lost: dict[str, int] = {}
        self.points = 0
        self.end: databus.ScanEnd | None = None
        self.evicted = False
        self.gone = False
        self.loaded = followed
        self.version = 0
        self.cache: dict[tuple, Any] = {}
        self._reading = threading.Lock()
        self.file, self.written = node.file, node.written
        if not followed:
            self.end = databus.ScanEnd(node.end_reason, node.error) if node.end_reason else None

    def on_event(self, event: databus.Event) -> None:
        """Take one event of the walk about this scan or one of its channels."""
        kind = event.type
        with self.lock:
            if kind is databus.EventType.NEW_NODE and event.node is not self.node:
                self.channels[event.node.name] = ChannelSpec.of(event.node)
            elif kind is databus.EventType.NEW_DATA:
                self._data(event.node, event.data)
            elif kind is databus.EventType.GAP:
                self._gap(event.node.name, event.data)
            elif kind is databus.EventType.END_SCAN:
                self.end = event.data
            self.version += 1

    def _data(self, node: databus.ChannelNode, data: databus.EventData) -> None:
        spec = self.channels.get(node.name) or ChannelSpec.of(node)
        self.channels.setdefault(node.name, spec)
        last = data.first_index + data.block_size - 1
        self.points = max(self.points, last + 1)
        if spec.kind == "ref" and spec.dim in (1, 2):
            self.latest[node.name] = Latest(last, None, node)
        if spec.kind != "array":
            return
        if spec.dim == 0:
            self.scalars.setdefault(node.name, Series()).put(data.first_index, data.data)
        elif spec.dim in (1, 2):
            self.latest[node.name] = Latest(last, np.asarray(data.data[-1]))

    def _gap(self, channel: str, gap: databus.DataGap) -> None:
        self.lost[gap.reason] = self.lost.get(gap.reason, 0) + gap.block_size
        if gap.reason == "evicted":
            self.evicted = True
        if len(self.gaps) < MAX_GAPS:
            self.gaps.append(
                {
                    "channel": channel,
                    "first": gap.first_index,
                    "size": gap.block_size,
                    "reason": gap.reason,
                }
            )

    def take_notes(self, node: databus.ScanNode) -> None:
        """The file writer's notes as ``node`` (the scan, read again) has them."""
        with self.lock:
            if (node.file, node.written) != (self.file, self.written):
                self.file, self.written = node.file, node.written
                self.version += 1

    def load(self) -> None:
        """Read the scan's channels from the bus (a scan not followed): whole scalar
        series, the last point of the others. A scan gone from the bus is marked so."""
        found: dict[str, ChannelSpec] = {}
        scalars: dict[str, Series] = {}
        latest: dict[str, Latest] = {}
        points = 0
        try:
            for name, node in self.node.channels.items():
                spec = found[name] = ChannelSpec.of(node)
                length = len(node)
                points = max(points, length)
                if spec.kind == "ref" and spec.dim in (1, 2) and length > 0:
                    latest[name] = Latest(length - 1, None, node)
                if spec.kind != "array" or length == 0:
                    continue
                if spec.dim == 0:
                    series = scalars[name] = Series()
                    series.put(0, np.asarray(node.get_as_array(0, -1), dtype=np.float64))
                elif spec.dim in (1, 2):
                    latest[name] = Latest(length - 1, np.asarray(node.get(length - 1)))
        except (databus.DataExpired, databus.DataLost, databus.UnknownScan):
            with self.lock:
                self.gone, self.loaded = True, True
                self.version += 1
            return
        with self.lock:
            self.channels, self.scalars, self.latest = found, scalars, latest
            self.points, self.loaded = points, True
            self.version += 1

    def unread(self) -> bool:
        """Whether a newest point given as a reference waits to be read."""
        with self.lock:
            return any(i.value is None and i.error is None for i in self.latest.values())

    def read_references(self) -> bool:
        """Read the newest point of each channel given as references to frames in files,
        through the SDK (which checks the file and dataset): blocks on the file, so run
        it in a thread. One reader at a time; a point that cannot be read keeps why, and
        then True is returned (the scans list's alerts changed)."""
        failed = False
        with self._reading:
            with self.lock:
                todo = [
                    (i, i.node)
                    for i in self.latest.values()
                    if i.node is not None and i.value is None and i.error is None
                ]
            for item, node in todo:
                try:
                    value, error = np.asarray(node.get(item.index)), None
                except (databus.DatabusError, ImportError) as exc:
                    value, error = None, str(exc)
                with self.lock:
                    item.value, item.error = value, error
                    self.version += 1
                failed |= error is not None
        return failed

    def unload(self) -> None:
        """Forget the data (kept in the bus: ``load`` reads it again on demand)."""
        with self.lock:
            self.scalars, self.latest, self.cache = {}, {}, {}
            self.loaded = False

    def mark_gone(self) -> None:
        """The scan is no longer in the bus (expired or evicted)."""
        with self.lock:
            if not self.gone:
                self.gone = True
                self.version += 1

    def summary(self) -> dict[str, Any]:
        """The scan as the scans list shows it (JSON data)."""
        node, info = self.node, self.node.info
        with self.lock:
            end = self.end
            channels = {
                name: {
                    "dim": s.dim,
                    "shape": list(s.shape),
                    "dtype": s.dtype,
                    "unit": s.unit,
                    "kind": s.kind,
                }
                for name, s in self.channels.items()
            }
            points, gaps, lost = self.points, list(self.gaps), dict(self.lost)
            unreadable = {n: i.error for n, i in self.latest.items() if i.error is not None}
            file, written = self.file, self.written
        return {
            "key": self.key,
            "session": node.parent.name if node.parent is not None else "",
            "number": node.number,
            "title": _text(info.get("title"), node.name),
            "type": _text(info.get("type"), "scan"),
            "state": "ENDED" if end is not None else node.state.name,
            "npoints": _count(info.get("npoints")),
            "points": points,
            "created": node.created,
            "ended": node.ended,
            "reason": None if end is None else str(end.reason),
            "error": None if end is None else end.error,
            "file": file,
            "file_complete": written,
            "channels": channels,
            "x": default_x(info, channels),
            "mesh": mesh_shape(info),
            "gaps": gaps,
            "lost": lost,
            "unreadable": unreadable,
            "evicted": self.evicted,
            "gone": self.gone,
        }


def _text(value: Any, default: str | None) -> str | None:
    return value if isinstance(value, str) else default


def _count(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def default_x(info: dict[str, Any], channels: dict[str, Any]) -> str | None:
    """The channel to plot against: the first scanned motor (None: the point index)."""
    motors = info.get("motors")
    if isinstance(motors, list) and motors and f"axis:{motors[0]}" in channels:
        return f"axis:{motors[0]}"
    return next((name for name in channels if name.startswith("axis:")), None)


def mesh_axes(info: dict[str, Any], channels: Any) -> tuple[str, str] | None:
    """The (fast, slow) motor channels of a mesh scan: the x and y of the scatter plot its
    info declares, else its first two ``motors``, else its first two ``axis:`` channels;
    None if it has fewer than two of them among ``channels``."""
    plots = info.get("plots")
    for plot in plots if isinstance(plots, list) else []:
        items = plot.get("items") if isinstance(plot, dict) else None
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("kind") == "scatter":
                x, y = item.get("x"), item.get("y")
                if isinstance(x, str) and isinstance(y, str) and x in channels and y in channels:
                    return x, y
    motors = info.get("motors")
    if isinstance(motors, list) and len(motors) >= 2:
        pair = f"axis:{motors[0]}", f"axis:{motors[1]}"
        if all(n in channels for n in pair):
            return pair
    axes = [name for name in channels if name.startswith("axis:")]
    return (axes[0], axes[1]) if len(axes) >= 2 else None


def mesh_spans(info: dict[str, Any]) -> tuple[Span, Span] | None:
    """The (fast, slow) motors' first and last planned positions (``amesh``'s info
    ``start`` and ``stop``, fast first); None if the info does not give them."""
    start, stop = info.get("start"), info.get("stop")
    if not (isinstance(start, list) and isinstance(stop, list)):
        return None
    if len(start) < 2 or len(stop) < 2:
        return None
    ends = [*start[:2], *stop[:2]]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ends):
        return None
    return (float(start[0]), float(stop[0])), (float(start[1]), float(stop[1]))
