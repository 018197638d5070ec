"""One page's websocket: what the page asked to see (scan, plot width, image size and
levels) and what it already holds, and the loop that sends it what changed: the scans
list, the new rows of the selected scan's plot, its latest frame, spectra and mesh map,
at most ``max_fps`` images per second."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from databus.scan import mesh_shape

from ._decimate import auto_levels, bin_size, envelope, mesh_grid, shrink, to_8bit
from ._hub import Hub
from ._model import ScanView, mesh_axes, mesh_spans
from ._wire import finite, pack

log = logging.getLogger(__name__)

#: Shortest time between two plot updates of one page (s): 50 per second at most.
POINTS_INTERVAL_S = 0.02
#: Largest plot width and image side a page may ask for (pixels).
MAX_PIXELS = 4096


@dataclasses.dataclass
class View:
    """What a page asked for (``op: view``); the rows it holds (``bin``, ``rows``)."""

    scan: str | None = None
    width: int = 800
    frame: tuple[int, int] = (512, 512)
    image: str | None = None
    levels: tuple[float, float] | None = None
    log: bool = False
    mesh: str | None = None

    @classmethod
    def parse(cls, message: dict[str, Any]) -> View:
        """The view a page's ``view`` message asks for; ValueError names a bad field."""
        scan = message.get("scan")
        if scan is not None and not isinstance(scan, str):
            raise ValueError(f"view: scan must be a scan key or null, got {scan!r}")
        width = _pixels("width", message.get("width", 800))
        frame = message.get("frame", [512, 512])
        if not isinstance(frame, list) or len(frame) != 2:
            raise ValueError(f"view: frame must be [height, width], got {frame!r}")
        levels = message.get("levels")
        if levels is not None:
            if not (isinstance(levels, list) and len(levels) == 2):
                raise ValueError(f"view: levels must be [low, high] or null, got {levels!r}")
            levels = (float(levels[0]), float(levels[1]))
        return cls(
            scan,
            width,
            (_pixels("frame height", frame[0]), _pixels("frame width", frame[1])),
            _name("image", message.get("image")),
            levels,
            bool(message.get("log", False)),
            _name("mesh", message.get("mesh")),
        )


def _pixels(what: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_PIXELS:
        raise ValueError(f"view: {what} must be 1..{MAX_PIXELS} pixels, got {value!r}")
    return value


def _name(what: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"view: {what} must be a channel name or null, got {value!r}")
    return value


class Page:
    """One connected page: ``run`` until it closes."""

    def __init__(self, ws: web.WebSocketResponse, hub: Hub, *, max_fps: float, allow_set: bool):
        self.ws, self.hub = ws, hub
        self.frame_interval = 1.0 / max_fps
        self.allow_set = allow_set
        self.view = View()
        self.changed = asyncio.Event()
        self.scans_serial = -1
        self.shared_version = -1
        self.bin = 0
        self.done = 0
        self.sent_index: dict[str, int] = {}
        self.sent_image_at = 0.0
        self.mesh_points = -1
        self.sent_points = -1

    async def run(self) -> None:
        """Greet the page, then send and receive until it goes."""
        await self.ws.send_str(
            json.dumps(
                {"type": "hello", "allow_set": self.allow_set, "max_fps": 1.0 / self.frame_interval}
            )
        )
        self.hub.pages.add(self.changed)
        sender = asyncio.create_task(self._send_loop())
        try:
            async for message in self.ws:
                if message.type is WSMsgType.TEXT:
                    await self._receive(message.data)
                elif message.type is WSMsgType.ERROR:
                    break
        finally:
            self.hub.pages.discard(self.changed)
            sender.cancel()

    async def _receive(self, text: str) -> None:
        try:
            message = json.loads(text)
            if not isinstance(message, dict):
                raise ValueError(f"a message is a JSON object, got {text[:80]!r}")
            op = message.get("op")
            if op == "view":
                self._set_view(message)
            elif op == "pixel":
                await self.ws.send_str(json.dumps(finite(self._pixel(message))))
            elif op == "set":
                await self._set_shared(message)
            else:
                raise ValueError(f"unknown op {op!r}: one of view, pixel, set")
        except (ValueError, TypeError) as exc:
            await self.ws.send_str(json.dumps({"type": "error", "message": str(exc)}))
        self.changed.set()

    def _set_view(self, message: dict[str, Any]) -> None:
        view = View.parse(message)
        held_bin, held_rows = message.get("bin", 0), message.get("rows", 0)
        if view.scan != self.view.scan or view.width != self.view.width:
            self.bin, self.done, self.sent_index, self.mesh_points = 0, 0, {}, -1
            self.sent_points = -1
            if isinstance(held_bin, int) and isinstance(held_rows, int) and held_rows > 0:
                self.bin = held_bin
                self.done = held_rows if held_bin == 1 else max(0, held_rows // 2 - 1)
        if (view.image, view.levels, view.log, view.frame) != (
            self.view.image,
            self.view.levels,
            self.view.log,
            self.view.frame,
        ):
            self.sent_index = {
                k: v for k, v in self.sent_index.items() if not k.startswith("image:")
            }
        if view.mesh != self.view.mesh:
            self.mesh_points = -1
        self.view = view

    def _pixel(self, message: dict[str, Any]) -> dict[str, Any]:
        """The full-resolution value at ``row``, ``col`` of the selected scan's latest
        frame of ``channel``."""
        view = self.hub.view(self.view.scan or "")
        channel, row, col = message.get("channel"), message.get("row"), message.get("col")
        if view is None or not isinstance(row, int) or not isinstance(col, int):
            raise ValueError("pixel: needs a selected scan, and integer row and col")
        with view.lock:
            latest = view.latest.get(channel) if isinstance(channel, str) else None
            if latest is None or latest.value is None or latest.value.ndim != 2:
                raise ValueError(f"pixel: scan {view.key} has no frame of {channel!r}")
            h, w = latest.value.shape
            if not (0 <= row < h and 0 <= col < w):
                raise ValueError(f"pixel: ({row}, {col}) is outside the {h} x {w} frame")
            value = latest.value[row, col].item()
        return {
            "type": "pixel",
            "channel": channel,
            "index": latest.index,
            "row": row,
            "col": col,
            "value": value,
        }

    async def _set_shared(self, message: dict[str, Any]) -> None:
        if not self.allow_set:
            raise ValueError("this server is read-only: start it with --allow-set to set channels")
        name = message.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"set: name must be a shared channel's name, got {name!r}")
        await self.hub.set_shared(name, message.get("value"))

    async def _send_loop(self) -> None:
        try:
            while not self.ws.closed:
                due = await self._push()
                pushed = time.monotonic()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), due)
                self.changed.clear()
                await asyncio.sleep(max(0.0, pushed + POINTS_INTERVAL_S - time.monotonic()))
        except (ConnectionResetError, RuntimeError):
            return

    async def _push(self) -> float:
        """Send what changed and is due; seconds until something held back is due."""
        serial, text = self.hub.scans_message()
        if serial != self.scans_serial and text:
            self.scans_serial = serial
            await self.ws.send_str(text)
        if self.hub.shared_version != self.shared_version:
            self.shared_version = self.hub.shared_version
            values = finite(self.hub.shared_values())
            await self.ws.send_str(json.dumps({"type": "shared", "values": values}, default=str))
        due = self.hub.scans_due()
        view = self.hub.view(self.view.scan) if self.view.scan else None
        if view is None:
            return due
        if not view.loaded:
            await asyncio.to_thread(view.load)
        await self._push_points(view)
        now = time.monotonic()
        wait = self.sent_image_at + self.frame_interval - now
        if wait > 0:
            return min(due, wait)
        if view.unread() and await asyncio.to_thread(view.read_references):
            self.hub.wake()  # the scans list shows why a frame cannot be read
        messages = self._images(view)
        for message in messages:
            await self.ws.send_bytes(message)
        if messages:  # keep the cadence: a late send does not push the next one back
            late = now - (self.sent_image_at + self.frame_interval)
            self.sent_image_at = now - late if late < self.frame_interval else now
        return min(due, self.frame_interval)

    async def _push_points(self, view: ScanView) -> None:
        """The plot's new rows: every point while they fit the width, else min/max bins."""
        with view.lock:
            series = view.scalars
            points = min((s.length for s in series.values()), default=0)
            planned = int(view.node.info.get("npoints") or 0) if view.end is None else points
            size = bin_size(planned, points, self.view.width)
            if size != self.bin:
                self.bin, self.done, self.sent_points = size, 0, -1
            first = self.done * size
            if points <= first or points == self.sent_points:
                return
            columns = {name: s.values(first)[: points - first] for name, s in series.items()}
        rows = envelope(columns, size, first)
        header = {
            "type": "points",
            "scan": view.key,
            "bin": size,
            "from": self.done if size == 1 else 2 * self.done,
            "points": points,
        }
        await self.ws.send_bytes(pack(header, rows))
        self.done = points if size == 1 else points // size
        self.sent_points = points

    def _images(self, view: ScanView) -> list[bytes]:
        """Messages of the frame, spectra and mesh map that changed since last sent."""
        out = []
        with view.lock:
            latest = dict(view.latest)
            channels = dict(view.channels)
        image = self.view.image if self.view.image in latest else None
        if image is None:
            image = next((n for n, s in channels.items() if s.dim == 2 and n in latest), None)
        for name, item in latest.items():
            if item.value is None:
                continue
            key = f"image:{name}" if item.value.ndim == 2 else f"spec:{name}"
            if (item.value.ndim == 2 and name != image) or self.sent_index.get(key) == item.index:
                continue
            self.sent_index[key] = item.index
            if item.value.ndim == 2:
                out.append(self._frame(view, name, item.index, item.value))
            else:
                out.append(self._spectrum(view, name, item.index, item.value))
        mesh = self._mesh(view)
        if mesh is not None:
            out.append(mesh)
        return out

    def _frame(self, view: ScanView, name: str, index: int, frame: np.ndarray) -> bytes:
        """The frame shrunk to the page's image size, in 8 bits (shared by the pages
        asking for the same)."""
        height, width = self.view.frame
        key = ("frame", name, index, height, width, self.view.levels, self.view.log)
        cached = view.cache.get(key)
        if cached is None:
            small, factor = shrink(frame, height, width)
            low, high = self.view.levels or auto_levels(small)
            header = {
                "type": "frame",
                "scan": view.key,
                "channel": name,
                "index": index,
                "shape": list(small.shape),
                "full": list(frame.shape),
                "factor": factor,
                "levels": [low, high],
                "log": self.view.log,
            }
            cached = pack(header, {"pixels": to_8bit(small, low, high, log=self.view.log)})
            view.cache = {k: v for k, v in view.cache.items() if k[:2] != key[:2]}
            view.cache[key] = cached
        return cached

    def _spectrum(self, view: ScanView, name: str, index: int, spectrum: np.ndarray) -> bytes:
        size = max(1, -(-len(spectrum) // (2 * self.view.width)))
        rows = envelope({"y": np.asarray(spectrum, dtype=np.float64)}, size, 0)
        header = {
            "type": "spectrum",
            "scan": view.key,
            "channel": name,
            "index": index,
            "bin": size,
            "length": len(spectrum),
        }
        return pack(header, rows)

    def _mesh(self, view: ScanView) -> bytes | None:
        """A mesh scan's map of the chosen counter (default: the first one), each point
        placed by its fast and slow motors' positions, in 8 bits."""
        info = view.node.info
        shape = mesh_shape(info)
        if shape is None:
            return None
        with view.lock:
            names = [n for n in view.scalars if not n.startswith(("axis:", "timer:"))]
            name = self.view.mesh if self.view.mesh in view.scalars else next(iter(names), None)
            if name is None:
                return None
            axes = mesh_axes(info, view.scalars)
            series = [view.scalars[n] for n in (name, *(axes or ()))]
            if min(s.length for s in series) == self.mesh_points:
                return None
            values, *positions = [s.values() for s in series]
        points = min([len(values), *(len(p) for p in positions)])
        self.mesh_points = points
        fast, slow = positions if axes else (None, None)
        grid = mesh_grid(values[:points], shape, fast, slow, mesh_spans(info))
        low, high = auto_levels(grid)
        header = {
            "type": "mesh",
            "scan": view.key,
            "channel": name,
            "shape": list(shape),
            "axes": list(axes or ()),
            "levels": [low, high],
            "points": points,
        }
        return pack(header, {"pixels": to_8bit(grid, low, high)})
