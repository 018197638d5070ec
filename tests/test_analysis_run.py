"""``databus run``: workers and a reducer as real processes on live scans of the bus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from analysis_clients import derived_scan, lines_until, logged_deltas

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (16, 32)


def _frames(n: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 1000, (n, *SHAPE)).astype(np.uint16)


def _publish(bus, n, delay=0.0, session="ana"):
    scan = bus.session(session).create_scan({"title": f"frames {n}"})
    image = scan.channel("det:image", "uint16", SHAPE)
    scan.prepare()
    scan.start()
    for frame in _frames(n):
        image.send(frame)
        if delay:
            time.sleep(delay)
    scan.end()
    return scan


def _run(bus, *args, env=None, cwd=ROOT, session="ana"):
    environment = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    return subprocess.Popen(
        [sys.executable, "-m", "databus", "run", "--session", session, *args],
        cwd=cwd,
        env={**environment, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _derived(bus, source_key, analysis="*", timeout=60.0, session="ana"):
    return derived_scan(bus, source_key, session=session, analysis=analysis, timeout=timeout)


def _stop(proc):
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return out


def _tutorial_deltas(frames):
    """The tutorial's worker and reducer over the frames in a plain loop."""
    sys.path.insert(0, str(ROOT))
    from databus.clients.analysis import Result
    from examples.analysis_tutorial.reducer import TestReducer
    from examples.analysis_tutorial.worker import TestWorker

    worker, reducer = TestWorker(), TestReducer()
    for i, frame in enumerate(frames):
        payload = worker.process_event(type("E", (), {"streams": {"xrd": frame}})())
        reducer.process_result(Result(i, "loop", "", payload))
    return reducer.evolution


def test_the_tutorials_worker_and_reducer_give_the_plain_loops_deltas(beamline):
    from databus import scan as runner
    from databus.sim import SimDetector

    bus = beamline["bus"]
    proc = _run(
        bus,
        "--worker", "examples.analysis_tutorial.worker:TestWorker",
        "--reducer", "examples.analysis_tutorial.reducer:TestReducer",
        "--channels", "xrd=sim_det:image", "--workers", "2", session="runner",
    )  # fmt: skip
    try:
        time.sleep(2)  # the workers have joined: the live scan is served from its start
        done = runner.ascan(beamline["robz"], -3, 3, 40, 0.01, SimDetector(shape=(64, 64)))
        frames = bus.scan(done.key).channels["sim_det:image"].get_as_array(0, -1)
        seen = lines_until(proc, "failed events", time.monotonic() + 60)
    finally:
        out = _stop(proc)
    deltas = logged_deltas(seen + out)  # the tutorial logs its list of deltas at finish
    np.testing.assert_allclose(deltas, _tutorial_deltas(frames), err_msg=out)


def test_one_two_and_four_workers_reduce_to_the_same_results(bus):
    scan = _publish(bus, 60)
    results = {}
    for workers in (1, 2, 4):
        proc = _run(
            bus,
            "--worker", "analysis_clients.workers:IndexWorker",
            "--reducer", "analysis_clients.workers:EventReducer",
            "--channels", "det:image", "--workers", str(workers), "--batch", "3",
            "--name", f"index{workers}", "--from-scan", str(scan.number),
        )  # fmt: skip
        try:
            derived = _derived(bus, scan.key, analysis=f"index{workers}")
            results[workers] = derived.channels["event"].get_as_array(0, -1).tolist()
        finally:
            _stop(proc)
    assert results[1] == results[2] == results[4] == list(range(60))


def test_a_worker_killed_mid_scan_loses_and_repeats_nothing(bus):
    proc = _run(
        bus,
        "--worker", "analysis_clients.workers:IndexWorker",
        "--reducer", "analysis_clients.workers:EventReducer",
        "--channels", "det:image", "--workers", "2", "--batch", "2", "--claim-after", "1",
        env={"ANALYSIS_TEST_DELAY": "0.02"},
    )  # fmt: skip
    try:
        time.sleep(2)
        scan = _publish(bus, 120)
        time.sleep(0.5)  # the workers are in the middle of the scan
        workers = subprocess.run(
            ["pgrep", "-f", "--", f"--consumer {proc.pid}-w0"], capture_output=True, text=True
        ).stdout.split()
        assert workers, "worker 0 not found"
        os.kill(int(workers[0]), signal.SIGKILL)
        derived = _derived(bus, scan.key, timeout=90)
        events = derived.channels["event"].get_as_array(0, -1).tolist()
    finally:
        out = _stop(proc)
    assert sorted(events) == list(range(120)), out
    assert derived.channels["count"].get(0) == 120


def test_a_failing_event_is_reported_and_the_scan_goes_on(bus):
    scan = _publish(bus, 8)
    proc = _run(
        bus,
        "--worker", "analysis_clients.workers:FailingWorker",
        "--reducer", "analysis_clients.workers:EventReducer",
        "--channels", "det:image", "--from-scan", str(scan.number),
    )  # fmt: skip
    try:
        derived = _derived(bus, scan.key)
        events = derived.channels["event"].get_as_array(0, -1).tolist()
    finally:
        out = _stop(proc)
    assert events == [0, 1, 2, 6, 7]
    assert "3 failed events" in out
    assert "event 3" in out and "RuntimeError: cannot analyse event 3" in out
    assert "function" in out  # event 4's payload cannot be sent: named at the worker


PARAM_WORKER = ["--worker", "analysis_clients.workers:ParamWorker", "--channels", "x"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--worker", "no_such_module:W", "--channels", "x"], "cannot import 'no_such_module'"),
        (["--worker", "analysis_clients.workers:Nope", "--channels", "x"], "has no class"),
        (["--worker", "nocolon", "--channels", "x"], "module:Class"),
        (["--worker", "analysis_clients.workers:IndexWorker", "--channels", ","], "--channels"),
        ([*PARAM_WORKER, "--param", "k"], "--param takes KEY=VALUE"),
        ([*PARAM_WORKER, "--param", "nope=1"], "nope"),
        ([*PARAM_WORKER, "--param", "scale=x"], "scale"),
    ],
)
def test_bad_arguments_exit_2_naming_what_is_wrong(bus, args, error):
    proc = _run(bus, *args)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert error in out


def test_a_parameter_changed_mid_scan_is_seen_at_the_next_event_and_in_the_hash(bus):
    proc = _run(
        bus,
        "--worker", "analysis_clients.workers:ParamWorker",
        "--reducer", "analysis_clients.workers:ParamReducer",
        "--channels", "det:image", "--workers", "2", "--batch", "1", "--param", "scale=2",
    )  # fmt: skip
    try:
        time.sleep(2)
        scan = bus.session("ana").create_scan({"title": "params"})
        image = scan.channel("det:image", "uint16", SHAPE)
        scan.prepare()
        scan.start()
        frames = _frames(60)
        for frame in frames[:30]:
            image.send(frame)
            time.sleep(0.01)
        env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
        bad = subprocess.run(
            [sys.executable, "-m", "databus", "params", "set", "ParamWorker", "scale", "x"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert bad.returncode == 2 and "scale" in bad.stderr
        subprocess.run(
            [sys.executable, "-m", "databus", "params", "set", "ParamWorker", "scale", "5"],
            env=env, check=True,
        )  # fmt: skip
        changed_at = len(bus.scan(scan.key).channels["det:image"])
        for frame in frames[30:]:
            image.send(frame)
            time.sleep(0.01)
        scan.end()
        derived = _derived(bus, scan.key)
        scales = derived.channels["scale"].get_as_array(0, -1).tolist()
        hashes = derived.channels["hash"].get_as_array(0, -1).tolist()
    finally:
        _stop(proc)
    first_new = scales.index(5)
    assert scales == [2] * first_new + [5] * (60 - first_new)  # --param's, then never back
    assert first_new <= changed_at + 2  # the events in hand when it changed, no more
    assert len(set(hashes[:first_new])) == 1 and len(set(hashes[first_new:])) == 1
    assert hashes[0] != hashes[-1]


def test_a_reducer_adds_to_its_derived_scans_info_before_and_after_it_exists(bus):
    from databus.clients.analysis._reducer import DerivedScan

    source = _publish(bus, 2)
    derived = DerivedScan(bus.scan(source.key), "A")
    derived.publish_info({"shape": [1, 2], "title": "a map", "type": "mine", "source": "no"})
    derived.publish("x", 1.0)
    assert bus.scan(derived.scan.key).info["shape"] == [1, 2]  # created with it
    derived.publish_info({"peaks": [{"x": 1.5}]})
    derived.end()
    info = bus.scan(derived.scan.key).info
    assert info["shape"] == [1, 2] and info["peaks"] == [{"x": 1.5}] and info["title"] == "a map"
    assert info["type"] == "processed" and info["source"] == source.key and info["analysis"] == "A"
