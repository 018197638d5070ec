"""``databus run --replay FILE``: the same workers and reducer over a capture, offline, on a
private embedded server (or the bus ``--url`` names), with the results they give live."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from analysis_clients import derived_scan, lines_until, logged_deltas
from analysis_clients.dumps import dump_frames

from databus import scan as runner
from databus.sim import SimDetector

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = (
    "--worker", "examples.analysis_tutorial.worker:TestWorker",
    "--reducer", "examples.analysis_tutorial.reducer:TestReducer",
)  # fmt: skip
AZIMUTHAL = (
    "--worker", "examples.azimuthal.worker:AzimuthalWorker",
    "--reducer", "examples.azimuthal.reducer:AzimuthalReducer",
)  # fmt: skip


def _frames(n, shape=(32, 32)):
    return np.random.default_rng(7).integers(0, 1000, (n, *shape)).astype(np.uint16)


def _environment(tmp_path, bus=None):
    """A user's environment: with ``bus``, the test's bus; without, no bus at all (no
    DATABUS_URL), an embedded server directory of the user's own and a TMPDIR to watch."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    if bus is not None:
        return {**environment, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    environment.pop("DATABUS_URL", None)
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir(exist_ok=True)
    own = {"DATABUS_RUN_DIR": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}
    return {**environment, **own}


def _start(env, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "databus", "run", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _replay(env, *args, timeout=120):
    proc = _start(env, *args)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _private_server_gone(tmp_path, out):
    """The private server's process and directory are gone; the user's was never made."""
    pid = int(re.search(r"a private server \(pid (\d+)\)", out).group(1))
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list((tmp_path / "home").iterdir()) == []


def test_the_tutorial_reduces_a_replayed_dump_as_it_reduces_the_same_frames_live(bus, tmp_path):
    frames = _frames(24)
    live = _start(
        _environment(tmp_path, bus), *TUTORIAL, "--channels", "xrd=det:image",
        "--session", "live", "--workers", "2", "--from-scan", "1",
    )  # fmt: skip
    try:
        scan = bus.session("live").create_scan({"title": "tutorial frames"})
        image = scan.channel("det:image", "uint16", frames.shape[1:])
        scan.prepare()
        scan.start()
        for frame in frames:
            image.send(frame)
            time.sleep(0.005)
        scan.end()
        seen = lines_until(live, "failed events", time.monotonic() + 60)
    finally:
        live.send_signal(signal.SIGINT)
        out, _ = live.communicate(timeout=60)
    live_deltas = logged_deltas(seen + out)

    capture = tmp_path / "xrd.cbors"
    dump_frames(capture, "xrd", frames)
    code, replayed = _replay(
        _environment(tmp_path), *TUTORIAL, "--channels", "xrd", "--workers", "2",
        "--replay", str(capture),
    )  # fmt: skip
    assert code == 0, replayed
    assert "databus:scan:{replay:1}: 24 results, 0 failed events" in replayed
    assert logged_deltas(replayed) == live_deltas
    assert len(live_deltas) == 24
    _private_server_gone(tmp_path, replayed)


def test_the_azimuthal_profiles_of_a_replay_equal_those_of_the_live_mesh(beamline, tmp_path):
    bus = beamline["bus"]
    env = _environment(tmp_path, bus)
    live = _start(
        env, *AZIMUTHAL, "--channels", "image=sim_det:image", "--session", "runner",
        "--workers", "1", "--from-scan", "1",
    )  # fmt: skip
    try:
        done = runner.amesh(
            beamline["robz"], -1, 1, 3, beamline["roby"], -1, 1, 2, 0.01,
            SimDetector(shape=(96, 96)), save=False,
        )  # fmt: skip
        live_result = derived_scan(bus, done.key, session="runner", analysis="AzimuthalWorker")
    finally:
        live.send_signal(signal.SIGINT)
        live.communicate(timeout=60)
    frames = bus.scan(done.key).channels["sim_det:image"].get_as_array(0, -1)

    capture = tmp_path / "mesh.cbors"
    dump_frames(capture, "image", frames)
    code, out = _replay(
        env, *AZIMUTHAL, "--channels", "image", "--workers", "1", "--replay", str(capture),
        "--session", "replayed", "--url", bus.url,
    )  # fmt: skip
    assert code == 0, out
    _, (source,) = bus.find_scans(session="replayed", number=1)
    replayed = derived_scan(bus, source, session="replayed", analysis="AzimuthalWorker")
    for name in ("profile", "radial"):
        expected = live_result.channels[name].get_as_array(0, -1)
        assert expected.shape[0] == len(frames) == 6
        np.testing.assert_array_equal(replayed.channels[name].get_as_array(0, -1), expected)


def test_a_truncated_capture_stops_the_run_naming_the_byte_and_the_server_goes(tmp_path):
    capture = tmp_path / "cut.cbors"
    dump_frames(capture, "xrd", _frames(8))
    capture.write_bytes(capture.read_bytes()[:-100])
    code, out = _replay(
        _environment(tmp_path), *TUTORIAL, "--channels", "xrd", "--replay", str(capture)
    )
    assert code == 1, out
    assert re.search(r"databus run: .*cut\.cbors: truncated: the record at byte \d+ goes past", out)
    _private_server_gone(tmp_path, out)


def test_a_capture_without_the_channel_is_an_error_naming_the_ones_it_has(tmp_path):
    capture = tmp_path / "xrd.cbors"
    dump_frames(capture, "xrd", _frames(3))
    code, out = _replay(
        _environment(tmp_path), *TUTORIAL, "--channels", "eiger", "--replay", str(capture)
    )
    assert code == 1, out
    assert "scan databus:scan:{replay:1} has no channel 'eiger': skipped" in out
    assert "none of the 1 replayed scans has points in channel 'eiger' (their channels: xrd)" in out
    _private_server_gone(tmp_path, out)


def test_sigterm_interrupts_a_paced_replay_and_stops_the_private_server(tmp_path):
    capture = tmp_path / "slow.cbors"
    dump_frames(capture, "xrd", _frames(5), interval=30.0)  # captured 30 s apart
    proc = _start(
        _environment(tmp_path), *TUTORIAL, "--channels", "xrd", "--replay", str(capture),
        "--speed", "1",
    )  # fmt: skip
    try:
        seen = lines_until(proc, "replaying", time.monotonic() + 60)
        time.sleep(1.0)  # the first frames are published; the next is 30 s away
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, seen + out
    assert "databus run: interrupted; the private server is stopped" in out
    _private_server_gone(tmp_path, seen + out)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--replay", "no/such.cbors"], "--replay no/such.cbors: no such file"),
        (["--replay", "README.md", "--speed", "fast"], "--speed is 'max' or a factor > 0"),
        (["--replay", "README.md", "--workers", "0"], "needs a worker at least"),
        (["--speed", "10", "--session", "s"], "--speed is the pace of --replay FILE"),
    ],
)
def test_bad_replay_arguments_exit_2_naming_what_is_wrong(tmp_path, args, error):
    code, out = _replay(_environment(tmp_path), *TUTORIAL, "--channels", "xrd", *args)
    assert code == 2, out
    assert error in out
