"""The seed's callback chain, ``ImageProcessor -> PeakTracker -> TrackLinker``, as bluesky
callbacks (event-model ``DocumentRouter``s): documents in, documents of their own out to
the callbacks subscribed to them. The numbers are ``peaks.py``'s, which the ``databus
run`` worker and reducer use too, so both forms make the same map.

    ip = ImageProcessor("image", subtrahend=np.load("background.npy"))
    pt = PeakTracker("image", diameter=11, percentile=20, separation=12)
    tl = TrackLinker(search_range=3)
    tl.subscribe(BusPublisher(session="crystal_maps"))  # the seed's DB2.insert
    pt.subscribe(tl)
    ip.subscribe(pt)
    dispatcher.subscribe(ip)

- ``ImageProcessor``: a run for each run; the events of its ``primary`` stream carry the
  processed image (the mean of the point's frames minus ``subtrahend``, negative pixels
  0) under ``data_key``, with the raw event's scalars (motor positions...) and
  ``seq_num``. The frames must be in the events (a bus scan's inline frames).
- ``PeakTracker``: a run for each run; ``primary``: an event per point (its scalars and
  ``peaks``, how many were found), ``peaks``: an event per peak (``point``, ``x``, ``y``,
  ``intensity``), as the seed outputs "each peak as a single event".
- ``TrackLinker``: at a run's stop, links its peaks and emits the crystal map as a run of
  its own: a start holding ``peaks.map_info`` (and, for a bus scan, ``type`` processed
  and ``source``, so the NeXus writer files it next to its source), an event per point
  (motor positions, ``total``, ``peak_000``...), a stop. ``crystal_map`` is the last map.

A point is an event's ``seq_num`` - 1 (the bus bridge numbers a scan's points so). Each
method returns None: the document it was given passes on (``DocumentRouter``'s rule).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from event_model import ComposeDescriptorBundle, ComposeRunBundle, DocumentRouter, compose_run

from databus.scan import mesh_shape

from .peaks import (
    DEFAULTS,
    CrystalMap,
    PointPeaks,
    check_locate,
    link_peaks,
    locate_peaks,
    map_info,
    processed_image,
    row_memory,
)

log = logging.getLogger(__name__)

#: The scan info ``type`` of results derived from another scan (``source``).
PROCESSED = "processed"


class _Chain(DocumentRouter):
    """A callback that emits documents of its own to the callbacks subscribed to it."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[str, Any], Any]] = []
        self._run: ComposeRunBundle | None = None  # the run this one emits, while open

    def subscribe(self, callback: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
        """Send ``callback(name, doc)`` every document this one emits; returns it."""
        self._callbacks.append(callback)
        return callback

    def emit(self, name: str, doc: Any) -> None:
        for callback in self._callbacks:
            callback(name, doc)

    def stop(self, doc: Any) -> Any:
        """The source run stopped: stop the run this one emits, with its exit status."""
        if self._run is not None:
            self.emit(
                "stop",
                self._run.compose_stop(
                    exit_status=doc["exit_status"], reason=doc.get("reason", "")
                ),
            )
            self._run = None


def _following(start: Mapping[str, Any], **more: Any) -> dict[str, Any]:
    """The metadata of a run made from run ``start``: its own, and its uid as
    ``original_run_uid`` (as bluesky's ``LiveDispatcher`` does)."""
    kept = {k: v for k, v in start.items() if k not in ("uid", "time")}
    return {**kept, "original_run_uid": start["uid"], **more}


def _scalars(descriptor: Mapping[str, Any], data_key: str) -> dict[str, Any]:
    """The data keys of ``descriptor`` holding one number per event, but ``data_key``."""
    return {
        key: dict(desc)
        for key, desc in descriptor["data_keys"].items()
        if key != data_key and not desc.get("shape") and "external" not in desc
        and desc.get("dtype") in ("number", "integer", "boolean")
    }  # fmt: skip


def _numbers(keys: list[str], source: str) -> dict[str, Any]:
    return {key: {"source": source, "dtype": "number", "shape": []} for key in keys}


def _images_of(descriptor: Mapping[str, Any], data_key: str) -> bool:
    """True if ``descriptor`` is a primary stream with the frames of ``data_key`` in its
    events; a warning if they are in files."""
    desc = descriptor["data_keys"].get(data_key)
    if descriptor.get("name") != "primary" or desc is None:
        return False
    if "external" in desc:
        log.warning(
            "%s: its frames are in files (%s); give inline frames", data_key, desc["external"]
        )
        return False
    return True


class ImageProcessor(_Chain):
    """Each point's frames (``data_key``) averaged, ``subtrahend`` (the background frame)
    subtracted, negative pixels set to 0."""

    def __init__(self, data_key: str, subtrahend: np.ndarray) -> None:
        super().__init__()
        self.data_key = data_key
        self.subtrahend = np.asarray(subtrahend, dtype=np.float64)
        if self.subtrahend.ndim != 2:
            raise ValueError(
                f"the subtrahend is one frame (2-d), not shape {self.subtrahend.shape}"
            )
        self._streams: dict[str, ComposeDescriptorBundle] = {}  # by the raw descriptor's uid

    def start(self, doc: Any) -> Any:
        self._run = compose_run(metadata=_following(doc))
        self._streams = {}
        self.emit("start", self._run.start_doc)

    def descriptor(self, doc: Any) -> Any:
        if self._run is None or not _images_of(doc, self.data_key):
            return
        height, width = self.subtrahend.shape
        image = {
            "source": "ImageProcessor",
            "dtype": "array",
            "dtype_numpy": "<f8",
            "shape": [height, width],
        }
        keys = {**_scalars(doc, self.data_key), self.data_key: image}
        bundle = self._run.compose_descriptor(name="primary", data_keys=keys)
        self._streams[doc["uid"]] = bundle
        self.emit("descriptor", bundle.descriptor_doc)

    def event(self, doc: Any) -> Any:
        bundle = self._streams.get(doc["descriptor"])
        if bundle is None:
            return
        keys = bundle.descriptor_doc["data_keys"]
        data = {k: doc["data"][k] for k in keys if k != self.data_key}
        data[self.data_key] = processed_image(doc["data"][self.data_key], self.subtrahend)
        stamps = {k: doc["timestamps"].get(k, doc["time"]) for k in keys}
        event = bundle.compose_event(
            data=data, timestamps=stamps, seq_num=doc["seq_num"], validate=False
        )
        self.emit("event", event)


class PeakTracker(_Chain):
    """The Bragg peaks of each processed image (``data_key``), ``trackpy.locate`` with
    ``diameter``, ``percentile`` and ``separation``, at least ``min_intensity`` counts."""

    def __init__(
        self,
        data_key: str,
        diameter: int = DEFAULTS["diameter"],
        percentile: float = DEFAULTS["percentile"],
        separation: float = DEFAULTS["separation"],
        min_intensity: float = DEFAULTS["min_intensity"],
    ) -> None:
        super().__init__()
        check_locate(diameter, percentile, separation, min_intensity)
        self.data_key = data_key
        self.diameter, self.percentile = diameter, percentile
        self.separation, self.min_intensity = separation, min_intensity
        self._raw: str | None = None  # the uid of the descriptor of the images
        self._points: ComposeDescriptorBundle | None = None
        self._peaks: ComposeDescriptorBundle | None = None

    def start(self, doc: Any) -> Any:
        settings = {
            "diameter": self.diameter,
            "percentile": self.percentile,
            "separation": self.separation,
            "min_intensity": self.min_intensity,
        }
        self._run = compose_run(metadata=_following(doc, crystal_map=settings))
        self._raw = None
        self.emit("start", self._run.start_doc)

    def descriptor(self, doc: Any) -> Any:
        if self._run is None or not _images_of(doc, self.data_key):
            return
        self._raw = doc["uid"]
        count = {"peaks": {"source": "PeakTracker", "dtype": "integer", "shape": []}}
        self._points = self._run.compose_descriptor(
            name="primary", data_keys={**_scalars(doc, self.data_key), **count}
        )
        self._peaks = self._run.compose_descriptor(
            name="peaks", data_keys=_numbers(["point", "x", "y", "intensity"], "PeakTracker")
        )
        self.emit("descriptor", self._points.descriptor_doc)
        self.emit("descriptor", self._peaks.descriptor_doc)

    def event(self, doc: Any) -> Any:
        if doc["descriptor"] != self._raw or self._points is None or self._peaks is None:
            return
        found = locate_peaks(
            np.asarray(doc["data"][self.data_key]),
            diameter=self.diameter,
            percentile=self.percentile,
            separation=self.separation,
            min_intensity=self.min_intensity,
        )
        keys = self._points.descriptor_doc["data_keys"]
        data = {k: doc["data"][k] for k in keys if k != "peaks"}
        data["peaks"] = len(found)
        stamps = {k: doc["timestamps"].get(k, doc["time"]) for k in keys}
        self.emit(
            "event",
            self._points.compose_event(data=data, timestamps=stamps, seq_num=doc["seq_num"]),
        )
        now = time.time()
        for x, y, intensity in zip(found.x, found.y, found.intensity, strict=True):
            row = {
                "point": doc["seq_num"] - 1,
                "x": float(x),
                "y": float(y),
                "intensity": float(intensity),
            }
            self.emit(
                "event", self._peaks.compose_event(data=row, timestamps=dict.fromkeys(row, now))
            )


class TrackLinker(_Chain):
    """At a run's stop, its peaks linked across points (``trackpy.link`` with
    ``search_range`` pixels and ``memory`` points; -1: a mesh row) into the crystal map,
    emitted as a run."""

    def __init__(
        self, search_range: float = DEFAULTS["search_range"], memory: int = DEFAULTS["memory"]
    ) -> None:
        super().__init__()
        if not search_range > 0 or memory < -1:
            raise ValueError(
                f"search_range is > 0 (pixels) and memory >= -1 (points), "
                f"not {search_range!r} and {memory!r}"
            )
        self.search_range, self.memory = search_range, memory
        self.crystal_map: CrystalMap | None = None
        self._start: Mapping[str, Any] | None = None
        self._streams: dict[str, str] = {}  # descriptor uid -> stream name
        self._positions: dict[int, dict[str, float]] = {}  # point -> motor positions
        self._found: dict[int, list[tuple[float, float, float]]] = {}  # point -> peaks

    def start(self, doc: Any) -> Any:
        self._start, self._streams, self._positions, self._found = doc, {}, {}, {}

    def descriptor(self, doc: Any) -> Any:
        self._streams[doc["uid"]] = doc["name"]

    def event(self, doc: Any) -> Any:
        stream, data = self._streams.get(doc["descriptor"]), doc["data"]
        if stream == "primary" and self._start is not None:
            motors = self._start.get("motors") or []
            self._positions[doc["seq_num"] - 1] = {m: float(data[m]) for m in motors if m in data}
        elif stream == "peaks":
            self._found.setdefault(int(data["point"]), []).append(
                (data["x"], data["y"], data["intensity"])
            )

    def stop(self, doc: Any) -> Any:
        start, self._start = self._start, None
        if start is None or not self._positions:
            return
        raw = start.get("databus") or {}
        scan_info = raw.get("scan_info") or {}
        shape = mesh_shape(scan_info)
        npoints = max(self._positions) + 1
        found = {
            point: PointPeaks(
                *(np.array(column, dtype=np.float64) for column in zip(*rows, strict=True))
            )
            for point, rows in self._found.items()
        }
        crystal_map = link_peaks(
            found, npoints, search_range=self.search_range, memory=row_memory(self.memory, shape)
        )
        self.crystal_map = crystal_map
        motors = [
            m for m in start.get("motors") or [] if any(m in p for p in self._positions.values())
        ]
        settings = {
            **start.get("crystal_map", {}),
            "search_range": self.search_range,
            "memory": self.memory,
        }
        title = scan_info.get("title", start.get("plan_name", "run"))
        metadata = {"title": f"{title} crystal map", "plan_name": "crystal_map"}
        if "key" in raw:
            metadata.update(type=PROCESSED, source=raw["key"], analysis="TrackLinker")
        metadata.update(map_info(crystal_map, motors, shape, settings))
        self._emit_map(
            compose_run(metadata=_following(start, **metadata)), crystal_map, motors, doc
        )

    def _emit_map(
        self, run: ComposeRunBundle, crystal_map: CrystalMap, motors: list[str], stop: Any
    ) -> None:
        """The crystal map's run: start, one event per point, stop."""
        columns = crystal_map.columns()
        self.emit("start", run.start_doc)
        keys = {**_numbers(motors, "TrackLinker"), **_numbers(list(columns), "TrackLinker")}
        bundle = run.compose_descriptor(name="primary", data_keys=keys)
        self.emit("descriptor", bundle.descriptor_doc)
        now = time.time()
        for point in range(crystal_map.intensity.shape[1]):
            where = self._positions.get(point, {})
            data = {m: where.get(m, np.nan) for m in motors}
            data.update({name: float(column[point]) for name, column in columns.items()})
            self.emit(
                "event",
                bundle.compose_event(
                    data=data, timestamps=dict.fromkeys(data, now), seq_num=point + 1
                ),
            )
        self.emit(
            "stop", run.compose_stop(exit_status=stop["exit_status"], reason=stop.get("reason", ""))
        )
