"""The numbers of crystal mapping, in one place for both forms of the pipeline (the
``databus run`` worker and reducer, and the bluesky callbacks):

- ``processed_image``: a grid point's frames averaged, the background frame subtracted,
  negative pixels set to 0;
- ``locate_peaks``: its Bragg peaks, ``trackpy.locate``;
- ``link_peaks``: the peaks of every point linked into tracks (``trackpy.link``, in point
  order): a track is one Bragg peak of one crystal, and its intensity at each point is
  that crystal's map.

A peak's intensity is trackpy's ``raw_mass``: the counts of the processed image within
``diameter / 2`` of its centre, i.e. its integrated counts per frame over the background.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import trackpy

trackpy.quiet()  # else trackpy logs a line per point it links

#: The parameters' defaults, for 128 x 128 frames of ``databus.sim.BraggDetector``: peaks
#: of ``diameter`` pixels, ``separation`` apart; ``percentile`` low, as trackpy's default
#: (64) misses a peak 5 times fainter than others in its frame (its threshold is a
#: percentile of the lit pixels), and ``min_intensity`` (counts per frame) rejects the
#: noise the clip leaves instead; ``search_range`` (pixels) as a crystal's peaks do not
#: move; ``memory`` -1: a mesh row (``row_memory``).
DEFAULTS: dict[str, Any] = {
    "diameter": 11,
    "percentile": 20.0,
    "separation": 12.0,
    "min_intensity": 500.0,
    "search_range": 3.0,
    "memory": -1,
}


@dataclass(frozen=True)
class PointPeaks:
    """The Bragg peaks found at one grid point: each one's detector ``x`` (along a row),
    ``y`` (pixels) and ``intensity`` (counts per frame over the background)."""

    x: np.ndarray
    y: np.ndarray
    intensity: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class CrystalMap:
    """A scan's linked peaks: each track's mean detector position ``x``, ``y`` (pixels)
    and its ``intensity`` at every point (tracks x points, 0 where it was not seen)."""

    x: np.ndarray
    y: np.ndarray
    intensity: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """The intensity of all linked peaks at each point."""
        return self.intensity.sum(axis=0)

    def columns(self) -> dict[str, np.ndarray]:
        """Channel name -> one value per point: ``total``, then ``peak_000``... (one per
        track, in track order)."""
        return {
            "total": self.total,
            **{peak_channel(i): row for i, row in enumerate(self.intensity)},
        }

    def table(self) -> list[dict[str, Any]]:
        """One row per track: its channel, position (pixels), points seen, strongest
        intensity."""
        return [
            {
                "channel": peak_channel(i),
                "x_px": float(self.x[i]),
                "y_px": float(self.y[i]),
                "points": int(np.count_nonzero(row)),
                "max_intensity": float(row.max(initial=0.0)),
            }
            for i, row in enumerate(self.intensity)
        ]


def peak_channel(track: int) -> str:
    """The channel (or data key) of track ``track``'s map."""
    return f"peak_{track:03d}"


def read_background(data: bytes) -> np.ndarray:
    """The background frame in the bytes of a ``.npy`` file (never unpickled), as floats;
    ValueError saying what is wrong."""
    if not data:
        raise ValueError(
            "no background frame: give the .npy file of the mean frame taken at an empty "
            "position (e.g. databus params set CrystalMapWorker background @background.npy)"
        )
    try:
        frame = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"the background is not a .npy file of numbers: {exc}") from exc
    if not isinstance(frame, np.ndarray) or frame.ndim != 2 or frame.dtype.kind not in "biuf":
        what = (
            f"{frame.dtype} of shape {frame.shape}"
            if isinstance(frame, np.ndarray)
            else "an archive"
        )
        raise ValueError(f"the background is one 2-d frame of numbers, not {what}")
    return frame.astype(np.float64)


def processed_image(frames: Any, background: np.ndarray) -> np.ndarray:
    """The mean of a point's ``frames`` ((n, h, w), or one (h, w) frame) minus
    ``background`` (h, w), negative pixels set to 0 (diffraction is never negative).
    Averaging is linear, so it may come first; the clip comes last, where the noise it
    biases upwards is smallest."""
    frames = np.asarray(frames)
    if frames.ndim not in (2, 3):
        raise ValueError(
            f"a point is one frame (h, w) or frames (n, h, w), not shape {frames.shape}"
        )
    mean = frames.mean(axis=0) if frames.ndim == 3 else frames.astype(np.float64)
    if mean.shape != background.shape:
        raise ValueError(
            f"frames of {mean.shape[1]}x{mean.shape[0]} pixels and a background of "
            f"{background.shape[1]}x{background.shape[0]}: take the background with this detector"
        )
    image = mean - background
    np.clip(image, 0.0, None, out=image)
    return image


def check_locate(diameter: int, percentile: float, separation: float, min_intensity: float) -> None:
    """ValueError naming the first of ``locate_peaks``' parameters trackpy cannot take."""
    if (
        isinstance(diameter, bool)
        or not isinstance(diameter, (int, np.integer))
        or diameter < 3
        or diameter % 2 == 0
    ):
        raise ValueError(f"parameter 'diameter' is an odd number of pixels >= 3, not {diameter!r}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"parameter 'percentile' is in [0, 100], not {percentile!r}")
    if not separation > 0:
        raise ValueError(f"parameter 'separation' is a distance > 0 (pixels), not {separation!r}")
    if not min_intensity >= 0:
        raise ValueError(f"parameter 'min_intensity' is counts >= 0, not {min_intensity!r}")


def locate_peaks(
    image: np.ndarray, *, diameter: int, percentile: float, separation: float, min_intensity: float
) -> PointPeaks:
    """The peaks of a processed ``image``: ``trackpy.locate`` with ``diameter`` (pixels,
    odd), ``percentile`` and ``separation`` (pixels), keeping those of at least
    ``min_intensity`` counts (fainter ones are the noise the clip left)."""
    check_locate(diameter, percentile, separation, min_intensity)
    empty = np.zeros(0)
    if not np.any(image):  # trackpy warns on a black image; it has no peak
        return PointPeaks(empty, empty, empty)
    found = trackpy.locate(image, int(diameter), percentile=percentile, separation=separation)
    found = found[found["raw_mass"] >= min_intensity]
    return PointPeaks(
        found["x"].to_numpy(dtype=np.float64),
        found["y"].to_numpy(dtype=np.float64),
        found["raw_mass"].to_numpy(dtype=np.float64),
    )


def link_peaks(
    found: Mapping[int, PointPeaks], npoints: int, *, search_range: float, memory: int
) -> CrystalMap:
    """The crystal map of a scan of ``npoints`` points from the peaks ``found`` at each
    (point index -> peaks): peaks of different points within ``search_range`` pixels,
    with at most ``memory`` points without it in between, are one track. Tracks are in
    the order of their first point, then ``y``, then ``x``."""
    if not search_range > 0:
        raise ValueError(
            f"parameter 'search_range' is a distance > 0 (pixels), not {search_range!r}"
        )
    if memory < 0:
        raise ValueError(f"parameter 'memory' is a number of points >= 0, not {memory!r}")
    outside = [point for point in found if not 0 <= point < npoints]
    if outside:
        raise ValueError(f"peaks at point {outside[0]} of a scan of {npoints} points")
    rows = [
        (point, x, y, intensity)
        for point, peaks in sorted(found.items())
        for x, y, intensity in zip(peaks.x, peaks.y, peaks.intensity, strict=True)
    ]
    if not rows:
        return CrystalMap(np.zeros(0), np.zeros(0), np.zeros((0, npoints)))
    features = pd.DataFrame(rows, columns=["frame", "x", "y", "intensity"])
    linked = trackpy.link(features, search_range, memory=int(memory))
    tracks = (
        linked.groupby("particle")
        .agg(first=("frame", "min"), x=("x", "mean"), y=("y", "mean"))
        .sort_values(["first", "y", "x"])
    )
    order = {particle: i for i, particle in enumerate(tracks.index)}
    intensity = np.zeros((len(tracks), npoints))
    for particle, point, value in linked[["particle", "frame", "intensity"]].itertuples(
        index=False
    ):
        intensity[order[particle], int(point)] = value
    return CrystalMap(tracks["x"].to_numpy(), tracks["y"].to_numpy(), intensity)


def row_memory(memory: int, shape: tuple[int, int] | None) -> int:
    """``memory`` for ``link_peaks``: as given, or for -1 the points of a row of the mesh
    of ``shape`` (slow, fast), since a peak seen in one row shows again a row later; -1
    without a mesh is 0."""
    if memory != -1:
        return memory
    return shape[1] if shape is not None else 0


def map_info(
    crystal_map: CrystalMap,
    motors: list[str],
    shape: tuple[int, int] | None,
    parameters: Mapping[str, Any],
) -> dict[str, Any]:
    """The info of a crystal map's scan (one point per grid point: ``axis:<motor>``,
    ``total``, ``peak_000``...): ``motors``, ``npoints``, ``channels`` in that order
    (readers list them so, and the NeXus writer plots the first counter, ``total``), a
    mesh's ``data_dim`` and ``shape`` (that plot is then the map over the grid), BLISS's
    ``plots``, ``peaks`` (``CrystalMap.table``) and the ``parameters`` used."""
    axes = [f"axis:{m}" for m in motors]
    info: dict[str, Any] = {
        "motors": motors,
        "npoints": crystal_map.intensity.shape[1],
        "channels": [*axes, *crystal_map.columns()],
        "peaks": crystal_map.table(),
        "crystal_map": dict(parameters),
    }
    if shape is not None and len(axes) == 2:
        info.update(data_dim=2, shape=list(shape))
        scatter = {"kind": "scatter", "x": axes[0], "y": axes[1], "value": "total"}
        info["plots"] = [{"kind": "scatter-plot", "items": [scatter]}]
    elif axes:
        info["plots"] = [
            {"kind": "curve-plot", "items": [{"kind": "curve", "x": axes[0], "y": "total"}]}
        ]
    return info
