"""The NeXus writer against a real server and real files."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from conftest import Running, eventually  # noqa: E402

import databus  # noqa: E402
from databus import scan  # noqa: E402
from databus._saving import hdf5_name, original_name  # noqa: E402
from databus.sim import SimDetector  # noqa: E402


def the_file(root):
    files = sorted(p for p in (root / "runner").glob("*.h5") if "_processed" not in p.name)
    assert len(files) == 1, files
    return files[0]


def same_as_published(bus, key, entry):
    """Every channel in the file equals what Redis holds, point by point."""
    node = bus.scan(key)
    names = [original_name(n.decode()) for n in entry["writer/channels"][()]]
    paths = [p.decode() for p in entry["writer/paths"][()]]
    for name, path, count in zip(names, paths, entry["writer/progress"][()], strict=True):
        published = node.channels[name].get_as_array()
        assert count == len(published), name
        if path:
            np.testing.assert_array_equal(entry[path][()], published, err_msg=name)


def test_layout_data_and_default_plots(beamline, tmp_path):
    b = beamline
    w = Running(b["bus"], tmp_path, compression="gzip")
    s1 = scan.ascan(b["robz"], -2, 2, 21, 0.001, b["gauss"], b["diode"], b["mon"])
    s2 = scan.amesh(
        b["robz"], -1, 1, 4, b["roby"], -1, 1, 3, 0.001, SimDetector(shape=(64, 64)), b["gauss"]
    )
    w.wait_for(2)
    w.stop()
    with h5py.File(the_file(tmp_path), "r") as f:
        assert f.attrs["NX_class"] == "NXroot" and f.attrs["default"] == "1.1"
        for attr in ("creator", "file_time", "HDF5_Version", "NeXus_version"):
            assert attr in f.attrs
        e = f["1.1"]
        assert e.attrs["NX_class"] == "NXentry" and e.attrs["default"] == "plotselect"
        assert e["title"][()] == b"ascan robz -2 2 21 0.001" and e["end_reason"][()] == b"finished"
        for field in ("start_time", "end_time", "program_name"):
            assert field in e
        assert (
            e["scan_info/npoints"][()] == 21
            and next(iter(json.loads(e["scan_info/channels"][()]))) == "axis:robz"
        )
        assert e["instrument"].attrs["NX_class"] == "NXinstrument"
        assert e["instrument/robz"].attrs["NX_class"] == "NXpositioner"
        assert e["instrument/diode"].attrs["NX_class"] == "NXdetector"
        assert e["instrument/robz/value"].attrs["units"] == "mm"
        assert e["instrument/positioners/robz"] == e["instrument/robz/value"]
        assert sorted(e["measurement"]) == [
            "diode",
            "elapsed_time",
            "mon",
            "robz",
            "sim_ct_gauss_noise",
        ]
        plot = e["plotselect"]
        assert plot.attrs["signal"] == "sim_ct_gauss_noise" and list(plot.attrs["axes"]) == ["robz"]
        same_as_published(b["bus"], s1.key, e)
        mesh = f["2.1"]
        assert mesh["plotselect/sim_ct_gauss_noise"].shape == (3, 4)
        assert list(mesh["plotselect"].attrs["axes"]) == ["roby", "robz"]
        frames = mesh["instrument/sim_det/data"]
        assert frames.chunks == (1, 64, 64) and frames.compression == "gzip"
        assert frames.attrs["interpretation"] == "image"
        same_as_published(b["bus"], s2.key, mesh)


def test_tools_open_the_default_plot(beamline, tmp_path):
    b = beamline
    w = Running(b["bus"], tmp_path)
    scan.ascan(b["robz"], -2, 2, 11, 0, b["gauss"])
    scan.amesh(b["robz"], -1, 1, 3, b["roby"], -1, 1, 2, 0, b["gauss"])
    w.wait_for(2)
    w.stop()
    path = the_file(tmp_path)
    nexus = pytest.importorskip("nexusformat.nexus")
    root = nexus.nxload(str(path))
    plot = root["1.1"].plottable_data
    assert plot.nxsignal.nxname == "sim_ct_gauss_noise" and [a.nxname for a in plot.nxaxes] == [
        "robz"
    ]
    assert root["2.1"].plottable_data.nxsignal.shape == (2, 3)
    nxdata = pytest.importorskip("silx.io.nxdata")
    import silx.io

    with silx.io.open(str(path)) as f:
        default = nxdata.get_default(f["1.1"])
        assert default.is_valid and default.signal_name == "sim_ct_gauss_noise"


def test_punx_finds_no_error_but_the_esrf_entry_names(beamline, tmp_path):
    if not shutil_which("punx"):
        pytest.skip("punx is not installed")
    b = beamline
    w = Running(b["bus"], tmp_path)
    scan.ascan(b["robz"], -2, 2, 5, 0, b["gauss"])
    w.wait_for(1)
    w.stop()
    out = subprocess.run(
        ["punx", "validate", str(the_file(tmp_path))], capture_output=True, text=True, timeout=120
    ).stdout
    errors = [line for line in out.splitlines() if " ERROR " in line]
    # NeXus names allow only [A-Za-z0-9_]; the issue asks for ESRF-style "<number>.1" entries.
    assert errors and all(
        line.split()[0] == "/1.1" and "validItemName" in line for line in errors
    ), errors


def shutil_which(name):
    import shutil

    return shutil.which(name)


def test_readers_see_the_file_grow_while_it_is_written(beamline, tmp_path):
    b = beamline
    w = Running(b["bus"], tmp_path, flush_s=0.1)
    s = scan.timescan(0.01, b["diode"], run=False)
    runner = threading.Thread(target=s.run)
    runner.start()
    deadline = time.monotonic() + 10
    while not list((tmp_path / "runner").glob("*.h5")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    lengths = []
    with h5py.File(the_file(tmp_path), "r", swmr=True, locking=False) as f:
        ds = f["1.1/instrument/diode/data"]
        for _ in range(5):
            ds.refresh()
            lengths.append(ds.shape[0])
            time.sleep(0.3)
    b["bus"].scan(s.key).request_stop("enough")
    runner.join(5)
    w.wait_for(1)
    w.stop()
    assert lengths[-1] > lengths[0] > 0 and lengths == sorted(lengths), lengths


def writer_process(bus, root):
    env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    return subprocess.Popen(
        [sys.executable, "-m", "databus", "writer", "--session", "runner", "--root", str(root)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_log(proc, text, timeout=20):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} in the writer's log: {lines}")


def test_kill_9_and_restart_loses_and_repeats_nothing(beamline, tmp_path):
    b = beamline
    first = writer_process(b["bus"], tmp_path)
    wait_for_log(first, "writing sessions")
    s = scan.loopscan(400, 0.005, b["diode"], b["mon"], SimDetector(shape=(32, 32)), run=False)
    runner = threading.Thread(target=s.run)
    runner.start()
    wait_for_log(first, "writing ")
    time.sleep(0.8)
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(0.3)
    second = writer_process(b["bus"], tmp_path)
    lines = wait_for_log(second, "resuming")
    assert any("from {" in line for line in lines)
    runner.join(30)
    wait_for_log(second, "finished")
    second.send_signal(signal.SIGTERM)
    assert second.wait(10) == 0
    with h5py.File(the_file(tmp_path), "r") as f:
        e = f["1.1"]
        assert e["end_reason"][()] == b"finished"
        assert list(e["writer/progress"][()]) == [400] * 4
        same_as_published(b["bus"], s.key, e)
    # The record says where the scan went (DataExpired names it) and that it is written.
    record = b["bus"].redis.hgetall(s.key)
    assert record[b"file"] == str(the_file(tmp_path)).encode() and b"written" in record
    assert record[b"dataset:simulation:diode"].startswith(b"/1.1/")


def stored_progress(root):
    """The diode's ``writer/progress`` in the file a live writer has open (0 until flushed)."""
    try:
        with h5py.File(the_file(root), "r", swmr=True, locking=False) as f:
            return int(f["1.1/writer/progress"][1])
    except (OSError, KeyError):
        return 0


def test_a_scan_that_expired_before_the_restart_is_marked(beamline, tmp_path):
    b = beamline
    first = writer_process(b["bus"], tmp_path)
    wait_for_log(first, "writing sessions")
    s = scan.timescan(0.01, b["diode"], run=False)
    runner = threading.Thread(target=s.run)
    runner.start()
    wait_for_log(first, "writing ")
    assert eventually(lambda: stored_progress(tmp_path) > 0, timeout=10)
    first.send_signal(signal.SIGKILL)
    first.wait()
    b["bus"].scan(s.key).request_stop()
    runner.join(5)
    expire(b["bus"], s.key)
    second = writer_process(b["bus"], tmp_path)
    wait_for_log(second, "data expired before it was written")
    second.send_signal(signal.SIGTERM)
    second.wait(10)
    assert_marked_expired(the_file(tmp_path))


def expire(bus, scan_key):
    """Delete a scan's record and channel streams, as expiry would."""
    node = bus.scan(scan_key)
    bus.redis.delete(scan_key, *[c.key for c in node.channels.values()])


def assert_marked_expired(path, entry="1.1"):
    """The entry of a scan that expired before it was written says so, and what is missing."""
    with h5py.File(path, "r") as f:
        e = f[entry]
        assert e["end_reason"][()].startswith(b"incomplete: the scan expired")
        missing = json.loads(e["writer/missing"][()])
        assert missing["simulation:diode"][0] == e["writer/progress"][()][1] > 0


def test_unsaved_scans_bad_names_and_scan_layout(beamline, tmp_path):
    b = beamline
    w = Running(b["bus"], tmp_path, layout="scan")
    scan.ct(0.001, b["diode"])  # save=False: no file
    published = b["bus"].session("runner").create_scan(title="odd names")
    odd = published.channel("ctrl:a/b", "float64")
    published.prepare()
    odd.send(np.arange(3.0))
    published.end()
    s = scan.loopscan(2, 0, b["mon"])
    w.wait_for(2)
    w.stop()
    files = sorted(p.name for p in (tmp_path / "runner").glob("*.h5"))
    assert files == ["runner_0002.h5", "runner_0003.h5"]
    with h5py.File(tmp_path / "runner" / "runner_0002.h5", "r") as f:
        assert f["2.1/measurement/a%2Fb"][()].tolist() == [0, 1, 2]
    assert hdf5_name("a/b") == "a%2Fb" and hdf5_name("..") == "%2E." and hdf5_name("") == "%"
    assert s.key.endswith(":3}")


def test_a_corrupt_entry_is_a_logged_error_and_the_file_stays_valid(beamline, tmp_path, caplog):
    b = beamline
    w = Running(b["bus"], tmp_path)
    published = b["bus"].session("runner").create_scan(title="corrupt")
    x = published.channel("x", "float64")
    published.prepare()
    x.send(np.arange(3.0))
    time.sleep(0.3)
    b["bus"].redis.xadd(x.key, {"d": b"\x00" * 5, "n": 1}, id="3-1")  # a point of the wrong size
    x.queue.skip(1, gap=False)  # the publisher goes on after it, without a gap marker
    x.send(np.arange(4.0, 6.0))
    published.end()
    good = scan.loopscan(3, 0, b["mon"])
    w.wait_for(2)
    w.stop()
    assert any("3-1" in r.getMessage() for r in caplog.records)
    with h5py.File(the_file(tmp_path), "r") as f:
        data = f["1.1/measurement/x"][()]
        assert data[:3].tolist() == [0, 1, 2] and np.isnan(data[3]) and data[4:].tolist() == [4, 5]
        gaps = f["1.1/writer/gaps"]
        assert gaps[()].tolist() == [[0, 3, 3, 2]]  # channel 0 (x), points 3..3, "missing"
        assert gaps.attrs["reasons"][2] == "missing"
        assert f["2.1/end_reason"][()] == b"finished"
    assert good.end_reason is databus.EndReason.FINISHED


def test_a_root_that_cannot_be_written_is_a_clear_error(bus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env = {**os.environ, "DATABUS_URL": bus.url}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "databus",
            "writer",
            "--session",
            "w",
            "--root",
            str(blocker / "sub"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2 and f"cannot write to {blocker / 'sub'}" in proc.stderr


def test_a_channel_declared_mid_scan_is_added_to_the_entry_being_written(beamline, tmp_path):
    b = beamline
    w = Running(b["bus"], tmp_path)
    published = b["bus"].session("runner").create_scan(title="late streams")
    x = published.channel("axis:x", "float64")
    published.prepare()
    published.start()
    x.send(np.arange(3.0))
    eventually(lambda: list((tmp_path / "runner").glob("*.h5")))  # the entry is made
    time.sleep(0.3)  # ... and its first points stored
    current = published.channel("baseline:current", "float64", unit="mA")
    frames = published.channel("cam:image", "uint16", (4, 5))
    current.send(np.array([200.0, 199.0]))
    frames.send(np.ones((3, 4, 5), dtype=np.uint16))
    x.send(np.arange(3.0, 6.0))
    published.end()
    w.wait_for(1)
    w.stop()
    assert not w.writer.errors
    with h5py.File(the_file(tmp_path), "r") as f:
        e = f["1.1"]
        assert e["end_reason"][()] == b"finished"
        assert e["measurement/x"][()].tolist() == [0, 1, 2, 3, 4, 5]
        assert e["measurement/current"][()].tolist() == [200.0, 199.0]
        assert e["measurement/current"].attrs["units"] == "mA"
        assert e["measurement/image"].shape == (3, 4, 5)
        assert e["writer/progress"][()].tolist() == [6, 2, 3]
        same_as_published(b["bus"], published.key, e)


def test_a_derived_scan_is_written_next_to_its_sources_file(beamline, tmp_path):
    b = beamline
    w = Running(b["bus"], tmp_path)
    raw = scan.loopscan(3, 0, b["mon"])
    derived = (
        b["bus"]
        .session("runner")
        .create_scan({"title": "processed", "type": "processed", "source": raw.key})
    )
    delta = derived.channel("delta", "float64")
    derived.prepare()
    delta.send(np.arange(3.0))
    derived.end()
    w.wait_for(2)
    w.stop()
    raw_file = the_file(tmp_path)
    processed = raw_file.with_name(f"{raw_file.stem}_processed.h5")
    with h5py.File(processed, "r") as f:
        assert f[f"{derived.number}.1/measurement/delta"][()].tolist() == [0, 1, 2]
    with h5py.File(raw_file, "r") as f:
        assert list(f) == [f"{b['bus'].scan(raw.key).number}.1"]
