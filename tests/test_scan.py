"""The scan runner, its watchdog paths and the ready-made hooks, against a real server."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import eventually

import databus
from databus import scan
from databus.channels import Channel
from databus.hooks import (
    AbortOnSilence,
    StopAfterFailures,
    StopOnChannel,
    StopOnThreshold,
    StopOutsideWindow,
)
from databus.sim import SimDetector


def channel_lengths(bus, key):
    return {name: len(ch) for name, ch in bus.scan(key).channels.items()}


def test_ascan_publishes_motors_elapsed_time_and_counters(beamline):
    b = beamline
    s = scan.ascan(b["robz"], -2, 2, 9, 0.001, b["gauss"], b["mon"])
    node = b["bus"].scan(s.key)
    assert s.end_reason is databus.EndReason.FINISHED and s.npoints_done == 9
    info = node.info
    assert (info["title"], info["type"], info["npoints"]) == ("ascan robz -2 2 9 0.001", "ascan", 9)
    assert (info["start"], info["stop"], info["motors"], info["count_time"]) == (
        [-2],
        [2],
        ["robz"],
        0.001,
    )
    assert info["counters"] == ["sim_ct_gauss_noise", "mon"] and info["save"] is True
    assert (
        list(node.channels)
        == list(info["channels"])
        == ["axis:robz", "timer:elapsed_time", "simulation:sim_ct_gauss_noise", "simulation:mon"]
    )
    ch = node.channels
    assert ch["axis:robz"].get_as_array().tolist() == np.linspace(-2, 2, 9).tolist()
    assert np.all(np.diff(ch["timer:elapsed_time"].get_as_array()) > 0)
    assert ch["simulation:mon"].dtype == np.int64 and ch["axis:robz"].unit == "mm"
    gauss = ch["simulation:sim_ct_gauss_noise"].get_as_array()
    assert gauss.argmax() == 4  # the peak at robz = 0
    assert node.parent.name == "runner" and b["robz"].position == 2


def test_other_scan_types(beamline, monkeypatch):
    b = beamline
    b["robz"].move(1.0)
    d = scan.dscan(b["robz"], -1, 1, 5, 0, b["diode"])
    assert b["robz"].position == 1.0  # back where it started
    assert b["bus"].scan(d.key).channels["axis:robz"].get_as_array().tolist() == [0, 0.5, 1, 1.5, 2]
    a2 = scan.a2scan(b["robz"], 0, 1, b["roby"], 0, -1, 3, 0, b["diode"])
    assert b["bus"].scan(a2.key).channels["axis:roby"].get_as_array().tolist() == [0, -0.5, -1]
    mesh = scan.amesh(b["robz"], 0, 1, 3, b["roby"], 0, 1, 2, 0, b["gauss"])
    node = b["bus"].scan(mesh.key)
    assert node.info["shape"] == [2, 3] and node.info["data_dim"] == 2
    assert node.channels["axis:robz"].get_as_array().tolist() == [0, 0.5, 1] * 2
    assert node.channels["axis:roby"].get_as_array().tolist() == [0, 0, 0, 1, 1, 1]
    loop = scan.loopscan(4, 0, b["mon"])
    assert list(b["bus"].scan(loop.key).channels) == ["timer:elapsed_time", "simulation:mon"]
    t = scan.timescan(0, b["diode"], npoints=3)
    c = scan.ct(0.001, b["diode"])
    assert (t.npoints_done, c.npoints_done, b["bus"].scan(c.key).info["save"]) == (3, 1, False)
    monkeypatch.setenv("DATABUS_SESSION", "from_env")
    scan.set_session(None)
    assert b["bus"].scan(scan.loopscan(1, 0, b["mon"]).key).parent.name == "from_env"


def test_scan_info_has_the_keys_bliss_sets(beamline, tmp_path):
    b = beamline
    det = SimDetector(shape=(8, 8), mode="file", directory=tmp_path)
    scan.set_saving(tmp_path / "saved")
    s = scan.ascan(b["robz"], -1, 1, 3, 0, b["gauss"], det)
    info = b["bus"].scan(s.key).info
    assert info["channels"] == {
        "axis:robz": {"dim": 0, "display_name": "robz", "unit": "mm"},
        "timer:elapsed_time": {"dim": 0, "display_name": "elapsed_time", "unit": "s"},
        "simulation:sim_ct_gauss_noise": {"dim": 0, "display_name": "sim_ct_gauss_noise"},
        "sim_det:image": {"dim": 2, "display_name": "image"},
    }
    assert info["acquisition_chain"] == {
        "axis": {
            "top_master": "axis",
            "devices": ["axis", "timer", "simulation", "sim_det"],
            "scalars": ["timer:elapsed_time", "simulation:sim_ct_gauss_noise"],
            "spectra": [],
            "images": ["sim_det:image"],
            "master": {"scalars": ["axis:robz"], "spectra": [], "images": []},
        }
    }
    assert info["devices"]["timer"]["triggered_devices"] == ["simulation", "sim_det"]
    assert info["instrument"] == {} and info["scan_meta_categories"] == [
        "positioners",
        "instrument",
    ]
    curves = info["plots"][0]
    assert curves["kind"] == "curve-plot" and curves["items"] == [
        {"kind": "curve", "x": "axis:robz", "y": "simulation:sim_ct_gauss_noise"}
    ]
    assert info["plots"][1]["items"] == [{"kind": "image", "image": "sim_det:image"}]
    pos = info["positioners"]
    assert pos["positioners_start"] == {"robz": 0.0} and pos["positioners_end"] == {"robz": 1.0}
    assert pos["positioners_units"] == {"robz": "mm"}
    assert info["start_timestamp"] <= info["end_timestamp"]
    assert info["start_time"] < info["end_time"] and "T" in info["start_time"]
    assert info["filename"] == str(
        tmp_path / "saved" / "runner" / f"runner_{time.strftime('%Y%m%d')}.h5"
    )
    loop = b["bus"].scan(scan.loopscan(2, 0, b["mon"], save=False).key).info
    assert "filename" not in loop
    assert (
        list(loop["acquisition_chain"]) == ["timer"]
        and loop["positioners"]["positioners_start"] == {}
    )
    mesh = scan.amesh(b["robz"], 0, 1, 2, b["roby"], 0, 1, 2, 0, b["gauss"])
    items = b["bus"].scan(mesh.key).info["plots"][0]["items"]
    assert items == [
        {
            "kind": "scatter",
            "x": "axis:robz",
            "y": "axis:roby",
            "value": "simulation:sim_ct_gauss_noise",
        }
    ]


def test_watchdog_names_as_bliss_has_them(beamline):
    hook = scan.WatchdogCallback(watchdog_timeout=2.5)
    assert hook.timeout == 2.5
    s = scan.ascan(beamline["robz"], 0, 1, 2, 0, beamline["mon"], run=False)
    s.set_watchdog_callback(hook)
    s.set_watchdog_callback(None)
    assert s.run().end_reason is databus.EndReason.FINISHED
    with pytest.raises(TypeError):
        s.set_watchdog_callback(object())


def test_run_false_then_run_and_no_second_run(beamline):
    s = scan.loopscan(2, 0, beamline["mon"], run=False)
    assert s.key is None
    s.run()
    with pytest.raises(databus.DatabusError, match="already run"):
        s.run()
    with pytest.raises(ValueError, match="npoints must be a whole number >= 1"):
        scan.ascan(beamline["robz"], 0, 1, 0, 0.1)


class Stopper(scan.WatchdogCallback):
    def __init__(self, at, exc=StopIteration):
        super().__init__()
        self.at, self.exc, self.calls = at, exc, []

    def on_scan_new(self, s, info):
        self.calls.append("new")

    def on_scan_data(self, data_events, nodes, scan_info):
        self.calls.append("data")
        assert set(data_events) == set(nodes) and scan_info["type"]
        if len([c for c in self.calls if c == "data"]) == self.at:
            raise self.exc

    def on_scan_end(self, scan_info):
        self.calls.append("end")


def test_stop_iteration_stops_cleanly_and_keeps_the_data(beamline):
    hook = Stopper(at=7)
    s = scan.ascan(beamline["robz"], 0, 1, 50, 0, beamline["gauss"], run=False)
    s.set_watchdog_callback(hook)
    assert s.run() is s
    assert s.end_reason is databus.EndReason.STOPPED and s.npoints_done == 7
    assert hook.calls[0] == "new" and hook.calls[-1] == "end"
    node = beamline["bus"].scan(s.key)
    assert set(channel_lengths(beamline["bus"], s.key).values()) == {7}
    with pytest.raises(databus.EndOfData):  # sealed at 7
        node.channels["axis:robz"].get(7)


def test_an_exception_in_a_hook_aborts_and_is_reraised(beamline):
    s = scan.ascan(beamline["robz"], 0, 1, 50, 0, beamline["gauss"], run=False)
    s.set_watchdog_callback(Stopper(at=3, exc=RuntimeError("beam lost")))
    with pytest.raises(RuntimeError, match="beam lost"):
        s.run()
    node = beamline["bus"].scan(s.key)
    assert node.end_reason is databus.EndReason.ABORTED and node.error == "RuntimeError: beam lost"
    assert s.npoints_done == 3


def test_ctrl_c_interrupts_and_a_device_error_fails(beamline):
    s = scan.loopscan(50, 0, beamline["mon"], run=False)
    s.set_watchdog_callback(Stopper(at=2, exc=KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        s.run()
    assert s.end_reason is databus.EndReason.INTERRUPTED
    with pytest.raises(ValueError, match=r"motor robz: 15 is outside its limits \[-10, 10\]"):
        scan.ascan(beamline["robz"], 0, 20, 5, 0, beamline["gauss"])
    last = beamline["bus"].session("runner").scans()[-1]
    assert last.end_reason is databus.EndReason.FAILED and "outside its limits" in last.error


def test_on_timeout_repeats_while_no_data_and_can_abort(beamline):
    class Watch(scan.WatchdogCallback):
        def __init__(self):
            super().__init__(watchdog_timeout=0.05)
            self.timeouts = 0

        def on_timeout(self):
            self.timeouts += 1

    watch = Watch()
    s = scan.loopscan(2, 0.3, beamline["mon"], run=False)
    s.set_watchdog_callback(watch)
    s.run()
    assert watch.timeouts >= 4 and s.end_reason is databus.EndReason.FINISHED
    s = scan.loopscan(5, 0.5, beamline["mon"], run=False)
    s.set_watchdog_callback(AbortOnSilence(0.1))
    with pytest.raises(TimeoutError, match=r"no data for 0\.1 s"):
        s.run()
    assert s.end_reason is databus.EndReason.ABORTED and s.npoints_done < 5


def test_any_client_can_ask_a_running_scan_to_stop(beamline):
    bus = beamline["bus"]
    s = scan.timescan(0.01, beamline["diode"], run=False)
    worker = threading.Thread(target=s.run)
    worker.start()
    assert eventually(lambda: s.key is not None and s.npoints_done > 2)
    other = databus.connect(bus.url, prefix=bus.settings.prefix)
    other.scan(s.key).request_stop("sample moved")
    worker.join(5)
    assert s.end_reason is databus.EndReason.STOPPED and s.error == "stop requested: sample moved"
    with pytest.raises(databus.ScanStateError, match="already ended"):
        other.scan(s.key).request_stop()
    other.close()


def test_the_cli_stops_a_scan(beamline):
    bus = beamline["bus"]
    s = scan.timescan(0.01, beamline["diode"], run=False)
    worker = threading.Thread(target=s.run)
    worker.start()
    assert eventually(lambda: s.key is not None and s.npoints_done > 0)
    env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    out = subprocess.run(
        [sys.executable, "-m", "databus", "stop", s.key, "--reason", "cli"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    worker.join(5)
    assert f"asked {s.key} to stop" in out.stdout and s.error == "stop requested: cli"


def test_the_detector_inline_and_through_its_file(beamline, tmp_path):
    b = beamline
    inline = SimDetector(shape=(64, 64))
    s = scan.ascan(b["robz"], -1, 1, 4, 0.001, inline)
    ch = b["bus"].scan(s.key).channels["sim_det:image"]
    assert ch.type == "channel" and ch.get(0).shape == (64, 64) and ch.dtype == np.uint16
    files = SimDetector(shape=(32, 48), mode="file", directory=tmp_path)
    s = scan.loopscan(3, 0.001, files)
    ch = b["bus"].scan(s.key).channels["sim_det:image"]
    assert ch.type == "lima" and ch.get_as_array().shape == (3, 32, 48)
    assert list(tmp_path.glob("*.h5"))


def test_stop_on_channel_from_another_bus(beamline, make_bus):
    hook = StopOnChannel("stop_here", bus=beamline["bus"])
    analysis = Channel("stop_here", bus=make_bus())
    s = scan.loopscan(10_000, 0.001, beamline["mon"], run=False)
    s.set_watchdog_callback(hook)
    threading.Timer(0.2, lambda: setattr(analysis, "value", True)).start()
    s.run()
    assert s.end_reason is databus.EndReason.STOPPED and 10 < s.npoints_done < 10_000


def test_threshold_window_and_failure_hooks(beamline):
    b = beamline
    cases = [  # (hook, scan from, to, over 51 points, points it should stop after)
        (StopOnThreshold("simulation:sim_ct_gauss_noise", above=500), -5, 5, {20, 21, 22, 23}),
        (StopOutsideWindow("axis:robz", -3, 3), -2, 3.1, {51}),  # leaves the window at the end
        (StopAfterFailures(lambda ev: ev["axis:robz"] < 0, 5), -5, 5, {30}),  # fails from robz=0
    ]
    for hook, start, stop, expected in cases:
        s = scan.ascan(b["robz"], start, stop, 51, 0, b["gauss"], run=False)
        s.set_watchdog_callback(hook)
        s.run()
        assert s.end_reason is databus.EndReason.STOPPED, hook
        assert s.npoints_done in expected, (hook, s.npoints_done)
    with pytest.raises(ValueError, match="above=, below="):
        StopOnThreshold("x")
    with pytest.raises(ValueError, match="low <= high"):
        StopOutsideWindow("x", 2, 1)
    s = scan.loopscan(2, 0, b["mon"], run=False)
    s.set_watchdog_callback(StopOnThreshold("simulation:nope", above=1))
    with pytest.raises(KeyError, match="no channel 'simulation:nope'"):
        s.run()


def test_the_runner_under_gevent(bus, run_python):
    code = f"""
from gevent import monkey
monkey.patch_all()
import gevent, json, databus
from databus import scan
from databus.channels import Channel
from databus.hooks import StopOnChannel
from databus.sim import SimMotor, GaussNoiseCounter
bus = databus.connect({bus.url!r}, prefix={bus.settings.prefix!r})
databus.set_default_bus(bus)
scan.set_session("gev")
flip = Channel("g_stop", default_value=False, bus=bus)
s = scan.ascan(SimMotor("m"), 0, 1, 5000, 0.001, GaussNoiseCounter(), run=False)
s.set_watchdog_callback(StopOnChannel("g_stop", bus=bus))
gevent.spawn_later(0.2, setattr, flip, "value", True)
s.run()
result = {{"reason": s.end_reason.value, "points": s.npoints_done, "runner": bus.runner.name}}
print(json.dumps(result))
"""
    import json

    out = json.loads(run_python(code).stdout.strip().splitlines()[-1])
    assert out["reason"] == "stopped" and 10 < out["points"] < 5000 and out["runner"] == "gevent"
