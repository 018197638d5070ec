"""The ``databus run`` worker of the crystal map: for each grid point of a scan, the mean
of its frames minus the background frame, negatives clipped to 0, and its Bragg peaks
found with ``trackpy.locate`` (``peaks.py`` does the numbers).

    databus run --worker examples.crystal_mapping.worker:CrystalMapWorker \\
        --reducer examples.crystal_mapping.reducer:CrystalMapReducer \\
        --session S --channels image=sim_det:image --workers 2
    databus params set CrystalMapWorker background @background.npy

The background is the mean frame taken at an empty position (dark current and air
scattering, no crystal), saved as a ``.npy`` file, as the seed's server loads it: a
parameter holds the file's bytes, so workers on other hosts need no access to the file
and a new background reaches them within milliseconds. Every parameter is typed and
live (``databus params set``); the reducer's (``search_range``, ``memory``) are declared
here too, since an analysis' parameters are its worker's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from databus.clients.analysis import (
    BinaryParameter,
    FloatParameter,
    IntParameter,
    parameter_values,
)

from .peaks import DEFAULTS, PointPeaks, locate_peaks, processed_image, read_background

#: The stream holding the frames (``--channels image=<detector>:image``).
STREAM = "image"


class CrystalMapWorker:
    """The peaks (``PointPeaks``) of the frames of stream ``image`` of each event."""

    @staticmethod
    def describe_parameters() -> list[BinaryParameter | FloatParameter | IntParameter]:
        """The crystal map's parameters (trackpy's names where they are trackpy's)."""
        return [
            BinaryParameter("background", b"", "the .npy file of the background frame"),
            IntParameter("diameter", DEFAULTS["diameter"], "a peak's size, odd (pixels)"),
            FloatParameter("percentile", DEFAULTS["percentile"], "peaks top this percentile"),
            FloatParameter("separation", DEFAULTS["separation"], "least peak distance (pixels)"),
            FloatParameter("min_intensity", DEFAULTS["min_intensity"], "counts per frame"),
            FloatParameter("search_range", DEFAULTS["search_range"], "link distance (pixels)"),
            IntParameter("memory", DEFAULTS["memory"], "points a peak may miss (-1: a row)"),
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._background_file = b""
        self._background: np.ndarray | None = None

    def process_event(
        self, event: Any, *args: Any, parameters: Any = None, **kwargs: Any
    ) -> PointPeaks | None:
        frames = event.streams.get(STREAM)
        if frames is None:
            return None
        values = parameter_values(self.describe_parameters(), parameters)
        image = processed_image(frames, self._background_of(values["background"]))
        return locate_peaks(
            image,
            diameter=values["diameter"],
            percentile=values["percentile"],
            separation=values["separation"],
            min_intensity=values["min_intensity"],
        )

    def _background_of(self, data: bytes) -> np.ndarray:
        """The background frame of the ``background`` parameter, read again only when it
        changed."""
        if self._background is None or (
            data is not self._background_file and data != self._background_file
        ):
            self._background = read_background(data)
            self._background_file = data
        return self._background
