"""Public BLISS clients' idioms (``tests/blissdata_clients/classic_*.py``, one script per
client A-I of the compatibility review, only their imports changed) run in subprocesses
against scans published by the runner, and give what BLISS would give them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from conftest import eventually

import databus
from databus import scan
from databus.channels import Channel
from databus.sim import SimDetector

CLIENTS = Path(__file__).parent / "blissdata_clients"


class Client:
    """A client script running against ``bus`` (through ``DATABUS_URL``/``DATABUS_PREFIX``,
    as any process finds the bus)."""

    def __init__(self, bus: databus.Bus, script: str, *args: str) -> None:
        env = dict(os.environ, DATABUS_URL=bus.url, DATABUS_PREFIX=bus.settings.prefix)
        self.proc = subprocess.Popen(
            [sys.executable, str(CLIENTS / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def result(self, timeout: float = 60) -> dict:
        """The JSON the script prints last, once it has exited cleanly."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"client still running after {timeout} s:\n{out}\n{err}") from None
        assert self.proc.returncode == 0, f"client failed:\n{out}\n{err}"
        result: dict = json.loads(out.strip().splitlines()[-1])
        return result


def _blocked(admin: redis.Redis) -> int:
    return int(admin.info("clients")["blocked_clients"])


@pytest.fixture
def walking(bus, admin):
    """``walking(script, *args)``: a client script started, once it said ``ready`` and its
    session walk blocks on the server (one more blocked client than before it started), so
    the scans published next are new to it. Clients left running are killed afterwards."""
    started: list[Client] = []

    def start(script: str, *args: str) -> Client:
        before = _blocked(admin)
        client = Client(bus, script, *args)
        started.append(client)
        assert client.proc.stdout is not None
        line = client.proc.stdout.readline()
        if line.strip() != "ready" or not eventually(lambda: _blocked(admin) > before, 10):
            client.proc.kill()
            raise AssertionError(f"client did not start: {line}{client.proc.communicate()[1]}")
        return client

    yield start
    for client in started:
        if client.proc.poll() is None:
            client.proc.kill()
            client.proc.communicate()


def run(bus: databus.Bus, script: str, *args: str) -> dict:
    return Client(bus, script, *args).result()


def points(bus: databus.Bus, key: str, channel: str) -> list:
    return databus.ChannelNode.get(bus.scan(key).channels[channel], 0, -1).tolist()


def two_scans(b: dict, frames: Path, npoints: int) -> tuple[scan.StepScan, scan.StepScan]:
    """An ascan of ``npoints`` with the gauss counter and a file detector (8x8 frames in
    ``frames``), then a loopscan of 3 points of the diode."""
    det = SimDetector(shape=(8, 8), mode="file", directory=frames)
    first = scan.ascan(b["robz"], -1, 1, npoints, 0, b["gauss"], det)
    return first, scan.loopscan(3, 0, b["diode"])


class StopAlignmentHook(scan.WatchdogCallback):
    """The documentation's hook: stop the scan once the analysis sets ``stop_alignment``."""

    def __init__(self) -> None:
        super().__init__()
        self._stop_flag = Channel("stop_alignment", value=False)

    def on_scan_data(self, *args):
        if self._stop_flag.value:
            raise StopIteration


def test_a_data_life_analysis_stops_the_alignment_after_the_peak(beamline, walking):
    b = beamline
    client = walking("classic_a_data_life.py", "runner")
    s = scan.ascan(b["robz"], -5, 5, 500, 0.001, b["gauss"], save=False, run=False)
    s.set_watchdog_callback(StopAlignmentHook())
    s.run()
    got = client.result()
    assert got["scans"] == [s.key] and got["end"] == s.key
    assert s.end_reason is databus.EndReason.STOPPED
    assert 250 < s.npoints_done < 500  # past the peak (robz = 0), well before the end
    assert got["stopped_at_value"] < got["max_value"] / 2
    assert got["max_value"] <= max(points(b["bus"], s.key, "simulation:sim_ct_gauss_noise"))


def test_c_scans_watcher_gets_every_point_and_image_reference(beamline, walking, tmp_path):
    b = beamline
    client = walking("classic_c_scans_watcher.py", "runner", "2")
    first, second = two_scans(b, tmp_path, 7)
    got = client.result()
    titles = [first.title, second.title]
    assert [t for t, _ in got["created"]] == titles == got["started"] == got["finished"]
    assert got["created"][0][1] == sorted(b["bus"].scan(first.key).channels)
    gauss = points(b["bus"], first.key, "simulation:sim_ct_gauss_noise")
    assert got["scalars"][first.key]["simulation:sim_ct_gauss_noise"] == gauss
    diode = points(b["bus"], second.key, "simulation:diode")
    assert got["scalars"][second.key]["simulation:diode"] == diode
    assert got["ndim"] == {} and list(got["lima"]) == [first.key]
    refs = got["lima"][first.key]["sim_det:image"]
    assert [r[2:] for r in refs] == [[i, "HDF5"] for i in range(7)]
    assert {r[1] for r in refs} == {"/entry/data/data"} and Path(refs[0][0]).parent == tmp_path


def test_h_ewoks_watcher_under_gevent_submits_the_scans_workflows(beamline, walking):
    b = beamline
    client = walking("classic_h_ewoks_watcher.py", "runner", "2")
    scan.loopscan(2, 0, b["diode"])
    workflows = {"proc": {"configuration": {"data": {"graph": {"id": "g"}}}}, "skip": 1}
    with_wf = scan.StepScan(
        "loopscan",
        "loopscan 2 0",
        [],
        None,
        0,
        [b["diode"]],
        npoints=2,
        info={"workflows": workflows},
    ).run()
    got = client.result()
    info = b["bus"].scan(with_wf.key).info
    assert got == {
        "scans": 2,
        "submitted": [["proc", {"graph": {"id": "g"}}, info["scan_nb"], info["filename"]]],
    }
    assert info["scan_nb"] == b["bus"].scan(with_wf.key).number


def test_b_external_writer_writes_every_channel_and_the_lima_references(
    beamline, walking, tmp_path
):
    b = beamline
    scan.set_saving(tmp_path / "data")  # the example writes next to BLISS's file
    (tmp_path / "data" / "runner").mkdir(parents=True)
    client = walking("classic_b_external_writer.py", "runner", "1")
    det = SimDetector(shape=(8, 8), mode="file", directory=tmp_path)
    s = scan.ascan(b["robz"], -1, 1, 6, 0, b["gauss"], det)
    (got,) = client.result()
    scan.set_saving(None)
    assert got["datasets"] == {
        "axis:robz": [6],
        "timer:elapsed_time": [6],
        "simulation:sim_ct_gauss_noise": [6],
        "sim_det:image": [6, 4],  # (file, format, index, path) per image
    }
    assert got["lima_row"][1:] == ["HDF5", "5", "/entry/data/data"]
    kinds = dict(got["nodes"])
    assert kinds["sim_det:image"] == "lima" and kinds["axis:robz"] == "data"
    assert {"title", "npoints", "acquisition_chain"} <= set(got["info_keys"])
    import h5py

    with h5py.File(got["file"], "r") as f:
        entry = f[b["bus"].scan(s.key).name]["measurement"]
        gauss = points(b["bus"], s.key, "simulation:sim_ct_gauss_noise")
        assert entry["simulation:sim_ct_gauss_noise"][()].tolist() == gauss


def test_d_flint_history_scalars_and_last_image(beamline, tmp_path):
    b = beamline
    scan.loopscan(2, 0, b["diode"])
    det = SimDetector(shape=(8, 8), mode="file", directory=tmp_path)
    s = scan.ascan(b["robz"], -1, 1, 4, 0, b["gauss"], det)
    got = run(b["bus"], "classic_d_flint.py", "runner")
    last = b["bus"].scan(s.key)
    assert [h["scan_nb"] for h in got["history"]] == [last.number - 1, last.number]
    assert got["history"][-1]["node_name"] == s.key and got["history"][-1]["title"] == s.title
    assert got["data"]["simulation:sim_ct_gauss_noise"] == points(
        b["bus"], s.key, "simulation:sim_ct_gauss_noise"
    )
    assert got["images"] == {"sim_det:image": [3, [8, 8], 3]}


def test_e_nexus_writer_subscribers_under_gevent(beamline, walking, tmp_path):
    b = beamline
    client = walking("classic_e_nexus_writer.py", "runner", "2")
    first, second = two_scans(b, tmp_path, 5)
    got = client.result()
    assert got[first.key]["refs_match"] and got[first.key]["nrefs"] == {"sim_det:image": 5}
    assert got[first.key]["points"]["simulation:sim_ct_gauss_noise"] == 5
    assert got[second.key]["points"]["simulation:diode"] == 3


def test_f_pymca_lists_scans_and_reads_counters(beamline):
    b = beamline
    first = scan.loopscan(2, 0, b["diode"])
    second = scan.ascan(b["robz"], 0, 1, 3, 0, b["gauss"])
    got = run(b["bus"], "classic_f_pymca.py", "runner")
    names = [b["bus"].scan(k).name for k in (first.key, second.key)]
    assert got["scans"] == names and got["last"] == names[-1]
    assert got["titles"] == [first.title, second.title]
    assert got["timestamps"] == sorted(got["timestamps"])
    assert got["data"]["simulation:sim_ct_gauss_noise"] == points(
        b["bus"], second.key, "simulation:sim_ct_gauss_noise"
    )
    assert "axis:robz" in got["data"] and "axis:robz" not in got["top_master"]
    assert got["spectra"] == 0


def test_g_ewoksdata_reads_a_scan_from_memory(beamline, tmp_path):
    b = beamline
    det = SimDetector(shape=(8, 8), mode="file", directory=tmp_path)
    s = scan.ascan(b["robz"], -1, 1, 4, 0, b["gauss"], det)
    got = run(b["bus"], "classic_g_ewoksdata.py", s.key, "sim_det", "sim_ct_gauss_noise")
    frames = databus.ChannelNode.get(b["bus"].scan(s.key).channels["sim_det:image"], 0, -1)
    assert got["rows"] == 4
    assert got["counter"] == points(b["bus"], s.key, "simulation:sim_ct_gauss_noise")
    assert got["image_sums"] == [int(f.sum()) for f in frames]
    assert got["last_image_sum"] == int(np.asarray(frames[-1]).sum())


def test_i_xrr_fit_groups_scans_and_publishes_the_result(bus, walking):
    client = walking("classic_i_xrr_fit.py", "xrr")
    keys = []
    for position, flags in enumerate(({"xrr_scan_group_first": True}, {}, {})):
        if position == 2:
            flags = {"xrr_scan_group_last": True}
        published = bus.session("xrr").create_scan({"fastfit": {"watt0": 2.0, **flags}})
        gam = published.channel("axis:gam", "float64")
        roi = published.channel("pilatus300k:roi_counters:roi2_sum", "float64")
        published.prepare()
        published.start()
        for i in range(4):
            gam.send(float(i))
            roi.send(float(10 * position + i))
        published.end()
        keys.append(published.key)
    got = client.result()
    assert got["scans"] == [keys[0], keys[2]] and got["points"] == 8
    assert got["thickness"] == 2.0 * (0 + 1 + 2 + 3 + 20 + 21 + 22 + 23)
    assert Channel("last_film_thickness", bus=bus).value == got["thickness"]


def publish_2x(bus: databus.Bus, session: str) -> str:
    """A scan published with blissdata 2.x's writer API (``databus.blissdata``), as BLISS
    2.x publishes one: a timer, a counter and a spectrum, sent two points at a time."""
    from databus.blissdata import DataStore
    from databus.blissdata.streams.default import Stream

    identity = {"name": "loopscan", "number": 7, "session": session, "data_policy": "none"}
    written = DataStore(bus).create_scan(identity, info={"title": "loopscan 4 0.1"})
    timer = written.create_stream(Stream.make_definition("timer:elapsed_time", "float64"))
    diode = written.create_stream(Stream.make_definition("sim:diode", "float64"))
    spectrum = written.create_stream(Stream.make_definition("sim:spectrum", "float32", (16,)))
    written.prepare()
    written.start()
    for first in (0, 2):
        timer.send(np.arange(first, first + 2) * 0.1)
        diode.send([1.0 + first, 2.0 + first])
        spectrum.send(np.ones((2, 16), np.float32))
    written.stop()
    written.close()
    key: str = written.key
    return key


def test_c_and_e_follow_a_scan_published_by_the_2x_writer(bus, walking):
    watcher = walking("classic_c_scans_watcher.py", "bd2", "1")
    writer = walking("classic_e_nexus_writer.py", "bd2", "1")
    key = publish_2x(bus, "bd2")
    got = watcher.result()
    assert [t for t, _ in got["created"]] == ["loopscan 4 0.1"] == got["finished"]
    assert got["scalars"][key]["sim:diode"] == [1.0, 2.0, 3.0, 4.0]
    assert got["ndim"][key]["sim:spectrum"] == [[1.0] * 16] * 4
    points_seen = writer.result()[key]["points"]
    assert points_seen == {"timer:elapsed_time": 4, "sim:diode": 4, "sim:spectrum": 4}
