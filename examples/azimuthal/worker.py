"""A worker integrating each frame azimuthally with pyFAI (``AzimuthalIntegrator``): the
frame's radial profile, in q (nm^-1), over ``radial_bins`` bins.

The geometry is set by the analysis' parameters (pyFAI's units: metres), so it can be
changed live (``databus params set AzimuthalWorker distance 0.25``); the integrator is
built again when they change, and kept otherwise (pyFAI caches its look-up table in it).

    databus run --worker examples.azimuthal.worker:AzimuthalWorker \\
        --reducer examples.azimuthal.reducer:AzimuthalReducer \\
        --session demo --channels image=sim_det:image --workers 2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pyFAI.detectors import Detector
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from databus.clients.analysis import FloatParameter, IntParameter, parameter_values
from databus.scan import mesh_shape

#: The stream holding the frames (``--channels image=<detector>:image``).
STREAM = "image"
#: The profile's radial unit, and pyFAI's method: bounding-box pixel splitting, CSR
#: sparse matrix, Cython (named, so a newer pyFAI cannot silently pick another).
UNIT = "q_nm^-1"
METHOD = ("bbox", "csr", "cython")


@dataclass
class Profile:
    """The radial profile of one frame: ``intensity`` at each ``radial`` (q, nm^-1), and
    for a mesh scan its ``grid`` (slow, fast points, from the scan info; else None)."""

    radial: np.ndarray
    intensity: np.ndarray
    grid: tuple[int, int] | None


@dataclass(frozen=True)
class Geometry:
    """What the integrator is built from: pyFAI's geometry (metres), square pixels of
    ``pixel_size`` metres, and the frame's shape."""

    distance: float
    poni1: float
    poni2: float
    wavelength: float
    pixel_size: float
    shape: tuple[int, ...]

    def integrator(self) -> AzimuthalIntegrator:
        detector = Detector(pixel1=self.pixel_size, pixel2=self.pixel_size, max_shape=self.shape)
        return AzimuthalIntegrator(
            dist=self.distance,
            poni1=self.poni1,
            poni2=self.poni2,
            wavelength=self.wavelength,
            detector=detector,
        )


class AzimuthalWorker:
    """The radial profile of the frame of stream ``image`` of each event."""

    @staticmethod
    def describe_parameters() -> list[FloatParameter | IntParameter]:
        return [
            FloatParameter("distance", 0.1, "sample to detector distance (m)"),
            FloatParameter("poni1", 512 * 75e-6, "point of normal incidence, slow axis (m)"),
            FloatParameter("poni2", 512 * 75e-6, "point of normal incidence, fast axis (m)"),
            FloatParameter("wavelength", 1e-10, "X-ray wavelength (m)"),
            FloatParameter("pixel_size", 75e-6, "pixel size, square pixels (m)"),
            IntParameter("radial_bins", 200, "bins of the radial profile"),
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._geometry: Geometry | None = None
        self._integrator: AzimuthalIntegrator | None = None

    def process_event(self, event: Any, *args: Any, parameters: Any = None, **kwargs: Any) -> Any:
        frame = event.streams.get(STREAM)
        if frame is None:
            return None
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"stream {STREAM!r} holds frames (2-d), not shape {frame.shape}")
        values = parameter_values(self.describe_parameters(), parameters)
        bins = values["radial_bins"]
        if bins < 1:
            raise ValueError(f"parameter 'radial_bins' is a number of bins >= 1, not {bins}")
        integrator = self._integrator_for(Geometry(
            values["distance"], values["poni1"], values["poni2"], values["wavelength"],
            values["pixel_size"], frame.shape,
        ))  # fmt: skip
        result = integrator.integrate1d(frame, bins, unit=UNIT, method=METHOD)
        return Profile(result.radial, result.intensity, mesh_shape(event.scan.info))

    def _integrator_for(self, geometry: Geometry) -> AzimuthalIntegrator:
        """The integrator of ``geometry``, built again only when it changed."""
        if geometry != self._geometry or self._integrator is None:
            for name in ("distance", "wavelength", "pixel_size"):
                if not getattr(geometry, name) > 0:
                    value = getattr(geometry, name)
                    raise ValueError(f"parameter {name!r} is a length > 0 (m), not {value}")
            self._integrator = geometry.integrator()
            self._geometry = geometry
        return self._integrator
