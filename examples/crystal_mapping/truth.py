"""How a crystal map compares with the peaks a ``databus.sim.BraggDetector`` planted (the
``sim_truth`` of the scan info): for the tests and the bench; a real sample has no truth."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .peaks import CrystalMap


@dataclass(frozen=True)
class Comparison:
    """A crystal map against the planted peaks."""

    planted: int  #: planted peaks (each lit at one point or more)
    matched: int  #: planted peaks with a track within the tolerance
    recall: float  #: of the (planted peak, point where it shows) pairs, those its track has
    spurious: int  #: (track, point) intensities no planted peak explains
    position_error: float  #: the farthest a matched track is from its peak (pixels)
    intensity_error: float  #: the largest relative error of a matched track's median intensity


def compare(
    truth: Mapping[str, Any], crystal_map: CrystalMap, tolerance_px: float = 1.5
) -> Comparison:
    """Match each planted peak of ``truth`` (``sim_truth``) to the nearest track of
    ``crystal_map`` within ``tolerance_px``, and count what the map has and misses."""
    peaks = [p for p in truth["peaks"] if p["points"]]
    explained = np.zeros(crystal_map.intensity.shape, dtype=bool)
    shown = found = matched = 0
    position_error = intensity_error = 0.0
    for peak in peaks:
        shown += len(peak["points"])
        distances = np.hypot(crystal_map.x - peak["x_px"], crystal_map.y - peak["y_px"])
        if not len(distances) or distances.min() > tolerance_px:
            continue
        track = int(distances.argmin())
        matched += 1
        position_error = max(position_error, float(distances[track]))
        values = crystal_map.intensity[track, peak["points"]]
        found += int(np.count_nonzero(values))
        explained[track, peak["points"]] = True
        if np.any(values):
            median = float(np.median(values[values > 0]))
            intensity_error = max(intensity_error, abs(median / peak["intensity"] - 1))
    spurious = int(np.count_nonzero((crystal_map.intensity > 0) & ~explained))
    recall = found / shown if shown else math.nan
    return Comparison(len(peaks), matched, recall, spurious, position_error, intensity_error)
