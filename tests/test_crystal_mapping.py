"""The crystal-mapping pipeline of seed 000 (examples/crystal_mapping): live under
``databus run`` with 2 workers on a ``BraggDetector`` mesh, its map in the processed scan
and the writer's file, the seed's callbacks behind a real RemoteDispatcher fed by
``databus bridge to-bluesky`` making the same map, the same worker and reducer over a
capture of the mesh (``databus run --replay``) making it again, the sim's truth, and the
pure parts."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from databus import scan as runner
from databus.clients.capture import Capture
from databus.sim import BraggDetector, PointContext, SimMotor

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # as ``databus run`` imports the example, from the repository

from examples.crystal_mapping.peaks import (  # noqa: E402
    CrystalMap,
    PointPeaks,
    link_peaks,
    locate_peaks,
    map_info,
    processed_image,
    read_background,
    row_memory,
)
from examples.crystal_mapping.run_live import crystal_map_of  # noqa: E402
from examples.crystal_mapping.truth import compare  # noqa: E402
from examples.crystal_mapping.worker import CrystalMapWorker  # noqa: E402

GRID = (10, 8)  # fast x slow points


def _stage() -> tuple[SimMotor, SimMotor]:
    return SimMotor("robz", low=-10, high=10), SimMotor("roby", low=-10, high=10)


def _gaussian(shape, x, y, intensity, sigma=1.5):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (
        intensity
        / (2 * math.pi * sigma**2)
        * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    )


def _npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=array.dtype.kind == "O")
    return out.getvalue()


# ------------------------------------------------------------------ live, end to end


def test_live_pipeline_maps_the_planted_peaks_and_the_callbacks_make_the_same_map(bus, tmp_path):
    """run_live: the background at the empty position, the writer, ``databus run`` with 2
    workers, the bridge and server.py, then a 10 x 8 mesh of 4 frames per point."""
    env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    done = subprocess.run(
        [sys.executable, "-m", "examples.crystal_mapping.run_live", "--root", str(tmp_path),
         "--session", "xmap", "--grid", "x".join(map(str, GRID)), "--workers", "2",
         "--callbacks", "--timeout", "60"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    logs = "".join(f"\n== {p.name}\n{p.read_text()[-3000:]}" for p in (tmp_path / "logs").glob("*"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    report = json.loads(done.stdout.splitlines()[-1])
    assert logs.count(" events, 0 failed") == 2, logs  # both workers said so at their stop

    mesh = bus.scan(report["mesh"])
    assert mesh.channels["sim_det:image"].shape == (4, 128, 128)  # 4 frames per point
    truth = mesh.info["sim_truth"]
    derived = bus.scan(report["crystal_map"])
    assert derived.info["type"] == "processed" and derived.info["source"] == mesh.key
    assert derived.info["shape"] == [GRID[1], GRID[0]] and derived.info["motors"] == [
        "robz",
        "roby",
    ]
    assert list(derived.channels)[:3] == ["axis:robz", "axis:roby", "total"]
    found = crystal_map_of(derived)
    score = compare(truth, found)
    assert score.planted == 12 and score.matched == 12, score
    assert score.recall >= 0.95 and score.spurious == 0, score
    assert score.position_error < 0.3 and score.intensity_error < 0.05, score
    np.testing.assert_allclose(derived.channels["total"].get_as_array(), found.total)
    np.testing.assert_array_equal(
        derived.channels["axis:robz"].get_as_array(), mesh.channels["axis:robz"].get_as_array()
    )

    theirs = bus.scan(report["callbacks"])  # the seed's callbacks, published by BusPublisher
    assert theirs.info["source"] == mesh.key and theirs.info["analysis"] == "TrackLinker"
    for name, channel in derived.channels.items():
        np.testing.assert_array_equal(
            theirs.channels[name].get_as_array(), channel.get_as_array(), err_msg=name
        )

    path = Path(report["processed_file"])
    assert path.name.endswith("_processed.h5") and path.parent == tmp_path / "xmap"
    with h5py.File(path, "r") as f:
        entry = f[report["entry"]]
        plot = entry[entry.attrs["default"]]
        assert plot.attrs["signal"] == "total" and list(plot.attrs["axes"]) == ["roby", "robz"]
        np.testing.assert_allclose(plot["total"][()], found.total.reshape(GRID[1], GRID[0]))
        np.testing.assert_array_equal(entry["measurement/peak_000"][()], found.intensity[0])
        assert json.loads(entry["scan_info/peaks"][()])[0]["channel"] == "peak_000"

    # The same worker and reducer over a capture of the mesh (databus run --replay): the
    # same map, channel for channel.
    captured = tmp_path / "mesh.dbcap"
    Capture(bus, "xmap", captured, scans=[mesh.number]).run()
    replayed = subprocess.run(
        [sys.executable, "-m", "databus", "run", "--replay", str(captured), "--session", "again",
         "--worker", "examples.crystal_mapping.worker:CrystalMapWorker",
         "--reducer", "examples.crystal_mapping.reducer:CrystalMapReducer",
         "--channels", "image=sim_det:image", "--workers", "2", "--url", bus.url,
         "--param", f"background=@{report['background']}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    (again,) = [s for s in bus.session("again").scans() if s.info.get("type") == "processed"]
    assert again.info["source"] != mesh.key
    for name, channel in derived.channels.items():
        np.testing.assert_array_equal(
            again.channels[name].get_as_array(), channel.get_as_array(), err_msg=name
        )


# ------------------------------------------------------------------ the simulated sample


def test_the_sim_truth_and_frames_are_reproducible_by_seed():
    positions = np.array([(x, y) for y in np.linspace(-1, 1, 5) for x in np.linspace(-1, 1, 6)])

    def truth(seed):
        det = BraggDetector(stage=_stage(), frame_shape=(96, 96), frames=2, peaks=2, seed=seed)
        return det, det.scan_info(list(det.stage), positions, len(positions))["sim_truth"]

    (one, first), (two, again), (_, other) = truth(3), truth(3), truth(4)
    assert first == again and first != other
    assert first["frames_per_point"] == 2 and len(first["peaks"]) == 3 * 2
    ctx = PointContext(0, {"robz": 0.0, "roby": 0.0}, 0.0, 0.1)
    np.testing.assert_array_equal(one.frame(ctx), two.frame(ctx))
    for peak in first["peaks"]:  # the points each peak shows at: its crystal under the beam
        crystal = first["crystals"][peak["crystal"]]
        (cx, cy), radius = crystal["center"], crystal["radius"]
        lit = [i for i, (x, y) in enumerate(positions) if math.hypot(x - cx, y - cy) <= radius]
        assert peak["points"] == lit
    shown = {p for peak in first["peaks"] for p in peak["points"]}
    assert sorted(set(range(len(positions))) - shown) == first["empty_points"]


def test_frames_hold_the_background_and_the_planted_peaks_with_poisson_noise():
    stage = _stage()
    det = BraggDetector(stage=stage, frame_shape=(96, 96), frames=200, crystals=1, peaks=2, seed=1)
    crystal = det.crystals[0]
    at_empty = dict(zip(("robz", "roby"), det.empty_position, strict=True))
    empty = det.frame(PointContext(0, at_empty, 0, 0.1))
    assert empty.shape == (200, 96, 96) and empty.dtype == np.uint16
    assert empty.var(axis=0).mean() == pytest.approx(empty.mean(), rel=0.05)  # Poisson
    for motor, where in zip(stage, crystal.center, strict=True):
        motor.move(where)  # motors a scan does not move say where the beam is
    lit = det.frame(PointContext(0, {}, 0, 0)).mean(axis=0) - empty.mean(axis=0)
    scanned = det.frame(PointContext(0, at_empty, 0, 0)).mean(axis=0)  # a scan's positions win
    assert abs(scanned.mean() - empty.mean()) < 0.05 and lit.max() > 100
    for peak in crystal.peaks:
        x, y = round(peak.x_px), round(peak.y_px)
        counts = lit[y - 6 : y + 7, x - 6 : x + 7].sum()
        assert counts == pytest.approx(peak.intensity, rel=0.03)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"stage": [SimMotor("robz")]}, "the stage is two motors"),
        ({"peaks": 40}, "do not fit a 64x64 frame"),
        ({"crystals": 300, "peaks": 0}, "cover the whole area"),
        ({"intensity": (10.0, 1.0)}, "0 < low <= high"),
        ({"frames": 0}, "frames and crystals >= 1, peaks >= 0"),
        ({"peaks": -1}, "frames and crystals >= 1, peaks >= 0"),
    ],
)
def test_a_sample_that_cannot_be_made_is_an_error_naming_why(arguments, error):
    with pytest.raises(ValueError, match=error):
        BraggDetector(**{"stage": _stage(), "frame_shape": (64, 64), **arguments})


# ------------------------------------------------------------------ the pure parts


def test_processed_image_averages_subtracts_and_clips():
    frames = np.array([[[4, 0], [10, 2]], [[6, 0], [20, 2]]], dtype=np.uint16)
    background = np.array([[2.0, 1.0], [5.0, 2.0]])
    np.testing.assert_array_equal(processed_image(frames, background), [[3, 0], [10, 0]])
    np.testing.assert_array_equal(processed_image(frames[0], background), [[2, 0], [5, 0]])
    with pytest.raises(ValueError, match="frames of 2x2 pixels and a background of 3x2"):
        processed_image(frames, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"not shape \(2,\)"):
        processed_image(np.zeros(2), background)


def test_the_background_is_read_from_npy_bytes_and_never_unpickled():
    frame = np.arange(6, dtype=np.uint16).reshape(2, 3)
    np.testing.assert_array_equal(read_background(_npy(frame)), frame)
    with pytest.raises(ValueError, match="no background frame"):
        read_background(b"")
    with pytest.raises(ValueError, match=r"not a \.npy file"):
        read_background(_npy(np.array([{"x": 1}], dtype=object)))
    with pytest.raises(
        ValueError, match=r"one 2-d frame of numbers, not uint16 of shape \(2, 1, 3\)"
    ):
        read_background(_npy(frame.reshape(2, 1, 3)))


def test_locate_finds_the_peaks_their_positions_and_intensities():
    image = _gaussian((64, 64), 20.3, 30.6, 5000) + _gaussian((64, 64), 44.0, 12.2, 1500)
    found = locate_peaks(image, diameter=11, percentile=20, separation=12, min_intensity=500)
    order = np.argsort(found.x)
    np.testing.assert_allclose(found.x[order], [20.3, 44.0], atol=0.05)
    np.testing.assert_allclose(found.y[order], [30.6, 12.2], atol=0.05)
    np.testing.assert_allclose(found.intensity[order], [5000, 1500], rtol=0.02)
    faint = locate_peaks(image, diameter=11, percentile=20, separation=12, min_intensity=2000)
    assert len(faint) == 1 and faint.x[0] == pytest.approx(20.3, abs=0.05)
    assert (
        len(
            locate_peaks(
                np.zeros((64, 64)), diameter=11, percentile=20, separation=12, min_intensity=0
            )
        )
        == 0
    )


@pytest.mark.parametrize(
    ("parameters", "error"),
    [
        ({"diameter": 10}, "'diameter' is an odd number of pixels >= 3, not 10"),
        ({"percentile": 120.0}, "'percentile' is in"),
        ({"separation": 0.0}, "'separation' is a distance > 0"),
        ({"min_intensity": -1.0}, "'min_intensity' is counts >= 0"),
    ],
)
def test_locate_parameters_trackpy_cannot_take_are_errors_naming_them(parameters, error):
    given = {"diameter": 11, "percentile": 20.0, "separation": 12.0, "min_intensity": 0.0}
    with pytest.raises(ValueError, match=error):
        locate_peaks(np.ones((32, 32)), **{**given, **parameters})


def _peaks(*rows):
    x, y, intensity = (np.array(column, dtype=np.float64) for column in zip(*rows, strict=True))
    return PointPeaks(x, y, intensity)


def test_link_makes_one_track_per_peak_across_the_points_it_misses():
    found = {
        0: _peaks((10.0, 10.0, 100.0)),
        1: _peaks((10.1, 9.9, 110.0), (40.0, 5.0, 7.0)),
        4: _peaks((9.9, 10.1, 120.0)),  # missed at points 2 and 3
    }
    linked = link_peaks(found, 6, search_range=3, memory=2)
    np.testing.assert_allclose(linked.x, [10.0, 40.0])
    np.testing.assert_array_equal(linked.intensity, [[100, 110, 0, 0, 120, 0], [0, 7, 0, 0, 0, 0]])
    np.testing.assert_array_equal(linked.total, [100, 117, 0, 0, 120, 0])
    assert list(linked.columns()) == ["total", "peak_000", "peak_001"]
    row = linked.table()[0]
    assert row["channel"] == "peak_000" and row["points"] == 3 and row["max_intensity"] == 120
    assert (row["x_px"], row["y_px"]) == pytest.approx((10.0, 10.0))
    assert len(link_peaks(found, 6, search_range=3, memory=1).x) == 3  # too short a memory
    assert link_peaks({}, 4, search_range=3, memory=0).intensity.shape == (0, 4)
    with pytest.raises(ValueError, match="peaks at point 4 of a scan of 3 points"):
        link_peaks(found, 3, search_range=3, memory=2)
    with pytest.raises(ValueError, match="'search_range' is a distance > 0"):
        link_peaks(found, 6, search_range=0, memory=2)
    assert (
        row_memory(-1, (8, 10)) == 10 and row_memory(-1, None) == 0 and row_memory(2, (8, 10)) == 2
    )


def test_the_map_info_lists_the_channels_and_plots_a_mesh_over_its_grid():
    crystal_map = CrystalMap(np.array([1.0]), np.array([2.0]), np.array([[0.0, 5.0, 0.0, 0.0]]))
    info = map_info(crystal_map, ["robz", "roby"], (2, 2), {"search_range": 3.0})
    assert info["channels"] == ["axis:robz", "axis:roby", "total", "peak_000"]
    assert info["data_dim"] == 2 and info["shape"] == [2, 2] and info["npoints"] == 4
    assert info["plots"][0]["items"][0] == {
        "kind": "scatter",
        "x": "axis:robz",
        "y": "axis:roby",
        "value": "total",
    }
    line = map_info(crystal_map, ["robz"], None, {})
    assert "shape" not in line and line["plots"][0]["items"][0]["y"] == "total"


def test_compare_counts_found_missed_and_spurious_intensities():
    truth = {"peaks": [
        {"x_px": 10.0, "y_px": 10.0, "intensity": 100.0, "points": [0, 1, 2]},
        {"x_px": 50.0, "y_px": 50.0, "intensity": 10.0, "points": [3]},
        {"x_px": 30.0, "y_px": 30.0, "intensity": 10.0, "points": []},  # never lit
    ]}  # fmt: skip
    crystal_map = CrystalMap(
        np.array([10.2, 80.0]), np.array([10.0, 80.0]),
        np.array([[90.0, 110.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]]),
    )  # fmt: skip
    score = compare(truth, crystal_map)
    assert score.planted == 2 and score.matched == 1 and score.recall == 2 / 4
    assert score.spurious == 1 and score.position_error == pytest.approx(0.2)
    assert score.intensity_error == pytest.approx(0.0)


def test_the_worker_needs_its_background_and_finds_the_peaks_of_a_point():
    background = np.full((64, 64), 10.0)
    frames = np.stack([background + _gaussian((64, 64), 30.0, 20.0, 4000)] * 3)
    event = SimpleNamespace(event_number=0, streams={"image": frames}, scan=None)
    given = {"background": SimpleNamespace(value=_npy(background))}
    found = CrystalMapWorker().process_event(event, parameters=given)
    assert len(found) == 1 and found.intensity[0] == pytest.approx(4000, rel=0.02)
    with pytest.raises(ValueError, match="no background frame"):
        CrystalMapWorker().process_event(event)
    assert CrystalMapWorker().process_event(SimpleNamespace(streams={}), parameters=given) is None


def test_a_mesh_of_the_runner_carries_the_sim_truth(beamline):
    det = BraggDetector(stage=(beamline["robz"], beamline["roby"]), frame_shape=(48, 48),
                        frames=2, crystals=1, peaks=1, spacing_px=12, seed=2)  # fmt: skip
    done = runner.amesh(beamline["robz"], -1, 1, 3, beamline["roby"], -1, 1, 2, 0, det, save=False)
    node = beamline["bus"].scan(done.key)
    expected = det.scan_info(done.motors, done.positions, done.npoints)["sim_truth"]
    assert node.info["sim_truth"] == expected and node.info["shape"] == [2, 3]
    assert node.channels["sim_det:image"].get_as_array().shape == (6, 2, 48, 48)


def test_the_callbacks_make_no_map_of_a_run_without_frames_in_its_events():
    from event_model import compose_run

    from examples.crystal_mapping.callbacks import ImageProcessor, PeakTracker, TrackLinker

    ip, pt, tl = ImageProcessor("image", np.zeros((8, 8))), PeakTracker("image"), TrackLinker()
    ip.subscribe(pt)
    pt.subscribe(tl)
    out: list[str] = []
    tl.subscribe(lambda name, doc: out.append(name))
    for keys in ({"x": {"source": "s", "dtype": "number", "shape": []}},  # no frames
                 {"image": {"source": "s", "dtype": "array", "shape": [2, 8, 8],
                            "external": "STREAM:"}}):  # frames in files  # fmt: skip
        run = compose_run(metadata={"motors": ["x"]})
        stream = run.compose_descriptor(name="primary", data_keys=keys)
        for name, doc in (("start", run.start_doc), ("descriptor", stream.descriptor_doc)):
            ip(name, doc)
        ip("event", stream.compose_event(data={"x": 1.0} if "x" in keys else {}, timestamps={},
                                         validate=False))  # fmt: skip
        ip("stop", run.compose_stop())
    assert out == [] and tl.crystal_map is None
    with pytest.raises(ValueError, match="'diameter' is an odd number"):
        PeakTracker("image", diameter=4)
