"""The azimuthal integration example (examples/azimuthal) under ``databus run`` on a live
``amesh`` of ``SimDetector`` frames, against pyFAI run directly on the same frames."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from analysis_clients import derived_scan
from pyFAI.detectors import Detector
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

import databus
from databus import scan as runner
from databus.clients.analysis import Parameters, UnknownAnalysis
from databus.scan import mesh_shape
from databus.sim import SimDetector

ROOT = Path(__file__).resolve().parent.parent
ANALYSIS = "AzimuthalWorker"
SHAPE = (128, 128)
PIXEL = 100e-6
#: Not the worker's defaults, so a profile computed without them would not match.
GEOMETRY = {
    "distance": 0.05,
    "poni1": 64 * PIXEL,
    "poni2": 60 * PIXEL,
    "wavelength": 0.8e-10,
    "pixel_size": PIXEL,
    "radial_bins": 40,
}


def _worker_module() -> Any:
    """examples/azimuthal/worker.py, imported as ``databus run`` imports it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("examples.azimuthal.worker")


def _declared(bus: databus.Bus, timeout: float = 30.0) -> Parameters:
    """The analysis' parameters, once ``databus run`` has declared them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Parameters.attach(bus, ANALYSIS)
        except UnknownAnalysis:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _derived(bus: databus.Bus, source: str) -> databus.ScanNode:
    return derived_scan(bus, source, session="runner", analysis=ANALYSIS)


def _pyfai_profiles(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(radial, intensities) of pyFAI's integration of each frame with ``GEOMETRY``."""
    detector = Detector(pixel1=PIXEL, pixel2=PIXEL, max_shape=SHAPE)
    integrator = AzimuthalIntegrator(
        dist=GEOMETRY["distance"],
        poni1=GEOMETRY["poni1"],
        poni2=GEOMETRY["poni2"],
        wavelength=GEOMETRY["wavelength"],
        detector=detector,
    )
    results = [
        integrator.integrate1d(
            frame, GEOMETRY["radial_bins"], unit="q_nm^-1", method=("bbox", "csr", "cython")
        )
        for frame in frames
    ]
    return results[0].radial, np.array([r.intensity for r in results])


def test_profiles_of_a_live_mesh_match_pyfai_and_the_map_has_its_grid(beamline):
    bus = beamline["bus"]
    environment = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "databus", "run", "--session", "runner",
            "--worker", "examples.azimuthal.worker:AzimuthalWorker",
            "--reducer", "examples.azimuthal.reducer:AzimuthalReducer",
            "--channels", "image=sim_det:image", "--workers", "2", "--from-scan", "1",
        ],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        with _declared(bus) as parameters:
            for name, value in GEOMETRY.items():
                parameters.set(name, value)
        done = runner.amesh(
            beamline["robz"], -1, 1, 5, beamline["roby"], -1, 1, 4, 0.01,
            SimDetector(shape=SHAPE), save=False,
        )  # fmt: skip
        source = bus.scan(done.key)
        assert source.number == 1  # the scan --from-scan names
        derived = _derived(bus, done.key)
        profiles = derived.channels["profile"].get_as_array(0, -1)
        radial = derived.channels["radial"].get_as_array(0, -1)
        grid = derived.channels["map"].get(0)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    frames = source.channels["sim_det:image"].get_as_array(0, -1)
    expected_radial, expected = _pyfai_profiles(frames)
    assert profiles.shape == (20, GEOMETRY["radial_bins"]), out
    np.testing.assert_allclose(profiles, expected, rtol=1e-6)
    np.testing.assert_allclose(radial, np.broadcast_to(expected_radial, radial.shape), rtol=1e-6)
    assert source.info["shape"] == [4, 5]
    assert grid.shape == (4, 5)
    np.testing.assert_allclose(grid, expected.sum(axis=1).reshape(4, 5), rtol=1e-6)
    assert derived.info["source"] == done.key


@pytest.mark.parametrize(
    ("frame", "parameters", "error"),
    [
        (np.ones(SHAPE), {"distance": 0.0}, "'distance' is a length > 0"),
        (np.ones(SHAPE), {"pixel_size": -1e-4}, "'pixel_size' is a length > 0"),
        (np.ones(SHAPE), {"radial_bins": 0}, "'radial_bins' is a number of bins >= 1"),
        (np.ones(16), {}, "frames (2-d), not shape (16,)"),
    ],
)
def test_a_bad_geometry_or_frame_is_an_error_naming_it(frame, parameters, error):
    AzimuthalWorker = _worker_module().AzimuthalWorker
    event = SimpleNamespace(event_number=0, streams={"image": frame}, scan=SimpleNamespace(info={}))
    given = {name: SimpleNamespace(value=value) for name, value in parameters.items()}
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        AzimuthalWorker().process_event(event, parameters=given)


def test_without_a_mesh_there_is_no_grid_and_defaults_stand_in_for_missing_parameters():
    AzimuthalWorker = _worker_module().AzimuthalWorker
    frame = np.random.default_rng(3).poisson(50, (1024, 1024)).astype(np.uint16)
    event = SimpleNamespace(event_number=0, streams={"image": frame}, scan=SimpleNamespace(info={}))
    profile = AzimuthalWorker().process_event(event)
    assert profile.grid is None and profile.intensity.shape == (200,)
    assert mesh_shape({"data_dim": 2, "shape": [4, 5]}) == (4, 5)
    assert mesh_shape({"data_dim": 1, "shape": [4]}) is None
