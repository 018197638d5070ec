"""sim.py: the simulated counters and detector give what a real one could; no server."""

import numpy as np
import pytest

from databus.sim import (
    DiodeCounter,
    ElapsedTimeCounter,
    GaussNoiseCounter,
    MonitorCounter,
    PointContext,
    SimDetector,
)

ROBZ = np.linspace(-5, 5, 500)  # the alignment scan ascan(robz, -5, 5, 500, ...)


def read_scan(counter, positions=ROBZ, count_time=0.001):
    return np.array(
        [
            counter.read(PointContext(i, {"robz": float(x)}, i * count_time, count_time))
            for i, x in enumerate(positions)
        ]
    )


def test_gauss_counts_are_whole_non_negative_and_reproducible():
    counts = read_scan(GaussNoiseCounter(seed=1))
    assert counts.dtype == np.float64 and np.all(counts == np.round(counts))
    assert counts.min() >= 0 and abs(int(counts.argmax()) - 250) < 10  # the peak at robz = 0
    np.testing.assert_array_equal(counts, read_scan(GaussNoiseCounter(seed=1)))
    assert not np.array_equal(counts, read_scan(GaussNoiseCounter(seed=2)))


def test_gauss_is_background_plus_peak_with_poisson_noise():
    c = GaussNoiseCounter(seed=3, background=50, height=400)
    assert c.expected({"robz": 0.0}) == 450 and c.expected({"robz": 100.0}) == 50
    far = read_scan(c, positions=np.full(20_000, 100.0))
    assert far.mean() == pytest.approx(50, rel=0.02)
    assert far.var() == pytest.approx(50, rel=0.05)  # Poisson: variance = mean
    peak = read_scan(c, positions=np.zeros(20_000))
    assert peak.mean() == pytest.approx(450, rel=0.01)
    assert peak.var() == pytest.approx(450, rel=0.05)


def test_gauss_stays_non_negative_without_background_and_with_jitter():
    counts = read_scan(GaussNoiseCounter(seed=4, background=0, noise=50))
    assert counts.min() == 0 and np.all(counts >= 0) and np.all(counts == np.round(counts))
    with pytest.raises(ValueError, match=r"counts >= 0.*background=-1"):
        GaussNoiseCounter(background=-1)


def test_the_doc_analysis_waits_for_the_peak_whatever_the_seed():
    """BLISS's data-flow doc stops the alignment when the value falls under half the
    maximum seen: with the background and Poisson noise, always past the peak."""
    for seed in range(200):
        maximum, stopped = 0.0, None
        for i, value in enumerate(read_scan(GaussNoiseCounter(seed=seed))):
            if value > maximum:
                maximum = value
            elif value < maximum / 2:
                stopped = i
                break
        assert stopped is not None and 280 < stopped < 330, (seed, stopped)


def test_the_other_counters_and_the_detector_are_never_negative():
    diode = read_scan(DiodeCounter("diode", seed=5), positions=np.linspace(-50, 50, 5000))
    assert diode.min() > 0
    mon = read_scan(MonitorCounter("mon", seed=6), count_time=0.0)
    assert mon.dtype.kind == "i" and mon.min() > 0
    assert read_scan(ElapsedTimeCounter()).min() >= 0
    for dtype in ("uint16", "int32", "float32"):
        det = SimDetector(shape=(32, 32), dtype=dtype, seed=7)
        frame = det.frame(PointContext(0, {"robz": 0.0}, 0.0, 0.001))
        assert frame.dtype == np.dtype(dtype) and frame.min() >= 0
