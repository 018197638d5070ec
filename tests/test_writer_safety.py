"""The NeXus writer against hostile names, links, references, full disks, a second writer
and a dying thread (issue 19), with a real server and real files."""

import datetime
import json
import os
import signal
import subprocess
import threading
import types

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from conftest import Running, eventually  # noqa: E402
from test_writer import (  # noqa: E402
    assert_marked_expired,
    expire,
    same_as_published,
    wait_for_log,
    writer_process,
)

import databus  # noqa: E402
from databus import scan  # noqa: E402
from databus._saving import FILE_NAME_BYTES, file_name, hdf5_name, original_name  # noqa: E402
from databus.clients.writer import NexusWriter, serve  # noqa: E402


def today_file(root, session="runner"):
    day = datetime.datetime.now().strftime("%Y%m%d")
    return root / file_name(session) / f"{file_name(session)}_{day}.h5"


def publish(bus, session, channels, info=None, points=3):
    """A scan of ``points`` float points on each of ``channels``, ended; its key."""
    s = bus.session(session).create_scan(info or {"title": f"{session} scan"})
    writers = [s.channel(name, "float64") for name in channels]
    s.prepare()
    for k, w in enumerate(writers):
        w.send(np.arange(points, dtype=float) + 10 * k)
    s.end()
    return s.key


def test_names_map_one_to_one():
    names = ["a/b", "a_b", "a%2Fb", ".", "..", "", "x\0y", " x", "x", "%", "%~"]
    mapped = [hdf5_name(n) for n in names]
    assert len(set(mapped)) == len(names)
    assert all("/" not in m and "\0" not in m and not m.startswith(".") for m in mapped)
    assert [original_name(m) for m in mapped] == names
    long_a, long_b = "s" * 300 + "a", "s" * 300 + "b"
    files = [file_name(n) for n in (long_a, long_b, "é" * 150, *names)]
    assert len(set(files)) == len(files)
    assert all(len(f.encode()) <= FILE_NAME_BYTES for f in files)
    assert file_name(long_a).startswith("s" * 100) and "%~" in file_name(long_a)


def test_colliding_and_nul_names_are_written_whole_and_the_next_scan_too(bus, tmp_path):
    w = Running(bus, tmp_path)
    odd = bus.session("runner").create_scan(
        {"title": "odd\0names", "a/b": 1, "a_b": 2, "note": "x\0y"}
    )
    channels = ["det:image", "det:data", "ctrl:x\0y", "ctrl:x_y", "c:positioners"]
    writers = []
    for name in list(channels):
        try:
            writers.append(odd.channel(name, "float64"))
        except ValueError:  # an API that refuses NUL: test_names_map_one_to_one covers it
            channels.remove(name)
    odd.prepare()
    for k, ch in enumerate(writers):
        ch.send(np.arange(5.0) + 10 * k)
    odd.end()
    nxt = publish(bus, "runner", ["ctrl:diode"])
    w.wait_for(2)
    w.stop()
    assert w.writer.errors == []
    with h5py.File(today_file(tmp_path), "r") as f:
        e = f["1.1"]
        assert e["end_reason"][()] == b"finished" and e["title"][()] == b"odd\\0names"
        assert e["scan_info/a%2Fb"][()] == 1 and e["scan_info/a_b"][()] == 2
        assert json.loads(e["scan_info/note"][()]) == "x\0y"
        stored = [original_name(n.decode()) for n in e["writer/channels"][()]]
        assert sorted(stored) == sorted(channels)
        same_as_published(bus, odd.key, e)
        paths = [p.decode() for p in e["writer/paths"][()]]
        assert len(set(paths)) == len(paths)
        for name, path in zip(stored, paths, strict=True):
            assert original_name(e[path].attrs["channel"]) == name
        expected = {"c_positioners", "data", "det_image", "x%00y", "x_y"}
        if "ctrl:x\0y" not in channels:
            expected.remove("x%00y")
        assert set(e["measurement"]) == expected
        assert original_name(f["1.1"]["scan_key"][()].decode()) == odd.key
        assert f["2.1/end_reason"][()] == b"finished"
        same_as_published(bus, nxt, f["2.1"])


def test_sessions_with_close_or_bad_names_get_files_of_their_own(bus, tmp_path):
    sessions = ["a/b", "a_b", " x", "x", "n" * 300, "nul\0name", "bad:name"]
    writer = NexusWriter(bus, sessions, tmp_path)
    thread = threading.Thread(target=writer.run, args=(started := threading.Event(),))
    thread.start()
    assert started.wait(10)
    keys = [publish(bus, name, ["c:v"]) for name in sessions[:4]]
    assert eventually(lambda: len(writer.written) == 4, timeout=15), writer.errors
    writer.stop_handler.stop()
    thread.join(10)
    # Names the bus refuses (':' always; NUL and 300 characters once the API checks names)
    # are one error each; the other sessions are written all the same.
    assert any("'bad:name' cannot be followed" in e for e in writer.errors)
    assert all("cannot be followed" in e for e in writer.errors), writer.errors
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == sorted(file_name(s) for s in sessions[:4])
    for name, key in zip(sessions[:4], keys, strict=True):
        with h5py.File(today_file(tmp_path, name), "r") as f:
            assert original_name(f["1.1/scan_key"][()].decode()) == key


def test_a_symlinked_lock_file_is_refused_and_its_target_kept(bus, tmp_path):
    root, victim = tmp_path / "root", tmp_path / "victim"
    victim.write_text("precious")
    lock = today_file(root)
    lock = lock.with_name(f".{lock.name}.lock")
    lock.parent.mkdir(parents=True)
    lock.symlink_to(victim)
    w = Running(bus, root)
    publish(bus, "runner", ["c:v"])
    publish(bus, "runner", ["c:v"])
    assert eventually(lambda: len(w.writer.errors) >= 2)
    w.stop()
    assert victim.read_text() == "precious"
    assert len(w.writer.errors) == 2, w.writer.errors  # once per scan, not once per event
    assert all("is a symbolic link; refusing to open it" in e for e in w.writer.errors)


@pytest.mark.parametrize("link", ["folder", "file", "hard"])
def test_a_symlink_out_of_the_root_is_refused(bus, tmp_path, link):
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    target = today_file(root)
    if link == "folder":
        target.parent.symlink_to(outside)
    elif link == "file":
        target.parent.mkdir()
        target.symlink_to(outside / "victim.h5")
    else:
        target.parent.mkdir()
        (outside / "victim.h5").write_bytes(b"precious")
        os.link(outside / "victim.h5", target)
    w = Running(bus, root)
    publish(bus, "runner", ["c:v"])
    assert eventually(lambda: w.writer.errors)
    w.stop()
    if link == "hard":
        assert (outside / "victim.h5").read_bytes() == b"precious"
        assert "refusing to write a file with other hard links" in w.writer.errors[0]
    else:
        assert list(outside.iterdir()) == []
        assert "refusing to write through a symbolic link" in w.writer.errors[0]


def test_a_second_writer_takes_over_from_one_killed(beamline, tmp_path, caplog):
    b = beamline
    first = writer_process(b["bus"], tmp_path)
    wait_for_log(first, "writing sessions")
    s = scan.loopscan(300, 0.005, b["diode"], b["mon"], run=False)
    runner = threading.Thread(target=s.run)
    runner.start()
    wait_for_log(first, "writing ")
    second = Running(b["bus"], tmp_path, flush_s=0.1)
    assert eventually(lambda: s.key in second.writer._scans.held, timeout=10)
    assert "being written by another writer" in caplog.text
    first.send_signal(signal.SIGKILL)
    first.wait()
    runner.join(30)
    second.wait_for(1)
    second.stop()
    assert second.writer.errors == []
    with h5py.File(today_file(tmp_path), "r") as f:
        e = f["1.1"]
        assert e["end_reason"][()] == b"finished"
        assert list(e["writer/progress"][()]) == [300] * 3
        same_as_published(b["bus"], s.key, e)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (the test needs root and mount), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk):
    """Fill ``disk`` up; the filler file's path."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == 28
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_holds_the_scans_and_they_are_written_when_space_returns(
    beamline, small_disk, caplog
):
    b = beamline
    w = Running(b["bus"], small_disk, flush_s=0.1)
    first = scan.loopscan(5, 0, b["diode"])
    w.wait_for(1)
    filler = fill(small_disk)
    s = scan.timescan(0.002, b["diode"], b["mon"], run=False)
    runner = threading.Thread(target=s.run)
    runner.start()
    assert eventually(lambda: "no space left" in caplog.text, timeout=10)
    assert eventually(lambda: s.key in w.writer._scans.held, timeout=10)
    b["bus"].scan(s.key).request_stop("enough")
    runner.join(10)
    after = scan.loopscan(50, 0, b["mon"])
    filler.unlink()
    w.wait_for(3, timeout=60)
    w.stop()
    assert caplog.text.count("no space left") == 1, caplog.text
    assert w.writer.errors == []
    with h5py.File(today_file(small_disk), "r") as f:
        for number, key in ((1, first.key), (2, s.key), (3, after.key)):
            e = f[f"{number}.1"]
            assert e["end_reason"][()] in (b"finished", b"stopped"), number
            same_as_published(b["bus"], key, e)


def test_a_scan_that_expired_while_the_disk_was_full_is_marked(beamline, small_disk, caplog):
    b = beamline
    w = Running(b["bus"], small_disk, flush_s=0.1)
    s = scan.timescan(0.002, b["diode"], run=False)
    runner = threading.Thread(target=s.run)
    runner.start()
    assert eventually(lambda: s.key in w.writer._scans.entries, timeout=10)
    assert eventually(
        lambda: w.writer._scans.entries[s.key].channels["simulation:diode"].durable > 0
    )
    filler = fill(small_disk)
    assert eventually(lambda: s.key in w.writer._scans.held, timeout=10)
    b["bus"].scan(s.key).request_stop()
    runner.join(10)
    expire(b["bus"], s.key)
    filler.unlink()
    w.wait_for(1, timeout=60)
    w.stop()
    assert_marked_expired(today_file(small_disk))


def test_frame_references_are_linked_only_from_trusted_files_that_hold_them(bus, tmp_path):
    det = tmp_path / "det"
    det.mkdir()
    frames = np.arange(5 * 16, dtype=np.uint16).reshape(5, 4, 4)
    with h5py.File(det / "frames.h5", "w") as f:
        f["entry/data"] = frames
    s = bus.session("runner").create_scan({"title": "refs"})
    lima = s.channel("lima:image", "uint16", (4, 4), kind="ref")
    s.prepare()
    lima.send(databus.FileRef(str(det / "frames.h5"), "entry/data", 0, 3))
    lima.send(databus.FileRef("/etc/passwd", "entry/data", 0, 1))
    lima.send(databus.FileRef(str(det / "frames.h5"), "entry/data", 0, 10**6))
    lima.send(databus.FileRef(str(det / "frames.h5"), "entry/data", 3, 5))
    s.end()
    w = Running(bus, tmp_path / "root", trust_ref_roots=[det])
    w.wait_for(1)
    w.stop()
    with h5py.File(today_file(tmp_path / "root"), "r") as f:
        holder = f["1.1/instrument/lima"]
        linked = holder["data"]
        assert linked.shape == (3, 4, 4) and linked.is_virtual
        np.testing.assert_array_equal(linked[()], frames[:3])
        rows = [json.loads(r) for r in holder["data_unlinked"][()]]
        assert [(r["index"], r["file"], r["stop"]) for r in rows] == [
            (3, "/etc/passwd", 1),
            (4, str(det / "frames.h5"), 10**6),
            (1000004, str(det / "frames.h5"), 5),
        ]
        assert rows[0]["why"] == "file outside the trusted roots"
        assert "its shape is (5, 4, 4)" in rows[1]["why"]
        assert (
            "past the" in rows[2]["why"]
            and "trust-ref-root" in holder["data_unlinked"].attrs["why"]
        )
        assert f["1.1/measurement/image"] == linked


def test_by_default_frames_are_linked_from_the_detector_directories_the_scan_names(bus, tmp_path):
    det, elsewhere = tmp_path / "det", tmp_path / "elsewhere"
    frames = np.arange(3 * 16, dtype=np.uint16).reshape(3, 4, 4)
    for folder in (det, elsewhere):
        folder.mkdir()
        with h5py.File(folder / "frames.h5", "w") as f:
            f["entry/data"] = frames
    s = bus.session("runner").create_scan(title="named", detector_directories=[str(det)])
    lima = s.channel("lima:image", "uint16", (4, 4), kind="ref")
    s.prepare()
    lima.send(databus.FileRef(str(det / "frames.h5"), "entry/data", 0, 3))
    lima.send(databus.FileRef(str(elsewhere / "frames.h5"), "entry/data", 0, 3))
    s.end()
    w = Running(bus, tmp_path / "root")  # no --trust-ref-root
    w.wait_for(1)
    w.stop()
    with h5py.File(today_file(tmp_path / "root"), "r") as f:
        holder = f["1.1/instrument/lima"]
        np.testing.assert_array_equal(holder["data"][:3], frames)
        (row,) = [json.loads(r) for r in holder["data_unlinked"][()]]
        assert row["file"] == str(elsewhere / "frames.h5")
        assert row["why"] == "file outside the trusted roots"


def test_the_simulated_file_detector_names_its_directory_in_the_scan_info(beamline, tmp_path):
    from databus.sim import SimDetector

    det = SimDetector("cam", shape=(8, 8), mode="file", directory=tmp_path / "cam")
    s = scan.loopscan(3, 0, det)
    info = beamline["bus"].scan(s.key).info
    assert info["detector_directories"] == [str((tmp_path / "cam").absolute())]


def test_a_dead_session_thread_stops_the_writer_with_a_message(bus, tmp_path, caplog):
    class Dying(NexusWriter):
        def _follow_session(self, session, started):
            if session == "bad":
                raise OSError("the walk broke")
            super()._follow_session(session, started)

    writer = Dying(bus, ["good", "bad"], tmp_path, flush_s=0.1)
    assert serve(writer) == 1
    assert "the writer stopped: session 'bad': OSError: the walk broke" in caplog.text


def test_hdf5_failing_on_a_full_disk_is_recovered(beamline, small_disk, monkeypatch, caplog):
    from databus.clients import _writer_files as writer_module

    room = writer_module.ROOM_BYTES
    monkeypatch.setattr(writer_module, "ROOM_BYTES", 0)  # let HDF5 itself hit ENOSPC
    b = beamline
    w = Running(b["bus"], small_disk, flush_s=0.5)
    first = scan.loopscan(5, 0, b["diode"])
    w.wait_for(1)
    filler = fill(small_disk)
    s = scan.loopscan(20, 0, b["diode"], b["mon"])
    assert eventually(lambda: s.key in w.writer._scans.held, timeout=10)
    monkeypatch.setattr(writer_module, "ROOM_BYTES", room)  # tried again once there is room
    filler.unlink()
    w.wait_for(2, timeout=20)
    w.stop()
    assert caplog.text.count("no space left") == 1, caplog.text
    path = today_file(small_disk)
    with h5py.File(path, "r") as f:
        assert f["2.1/end_reason"][()] == b"finished"
        same_as_published(b["bus"], s.key, f["2.1"])
        if "1.1" in f:  # HDF5 got over its failed flush
            assert w.writer.errors == []
            same_as_published(b["bus"], first.key, f["1.1"])
            return
    # HDF5 left the file unreadable: it is set aside, with one error saying so
    (aside,) = path.parent.glob(f"{path.name}.damaged-*")
    assert len(w.writer.errors) == 1 and f"moved to {aside}" in w.writer.errors[0]


def test_an_entry_hdf5_made_without_its_channel_list_is_removed_not_written(
    beamline, tmp_path, monkeypatch
):
    """HDF5 meeting a full disk can make an entry's datasets and lose their data without
    raising (the channel names read back empty): such an entry is removed and the scan
    waits, rather than being written under names that match no channel."""
    from databus.clients import _writer_lifecycle as lifecycle

    def half_made(h5, name, scan, compression):
        group = h5.create_group(name)
        group["writer/channels"] = np.array([b"", b""])
        group["writer/progress"] = np.zeros(2, np.int64)
        return group

    monkeypatch.setattr(lifecycle, "create_entry", half_made)
    s = scan.loopscan(2, 0, beamline["diode"])
    node = beamline["bus"].scan(s.key)
    file = types.SimpleNamespace(path=tmp_path / "f.h5")
    with h5py.File(file.path, "w") as h5:
        with pytest.raises(lifecycle.IncompleteEntry, match="not its channel list"):
            lifecycle.open_entry(file, h5, node, "1.1", {})
        assert "1.1" not in h5
        half_made(h5, "1.1", node, {})  # found so when taken up: made again
        monkeypatch.undo()
        entry, resumed = lifecycle.open_entry(file, h5, node, "1.1", {})
        assert not resumed and set(entry.channels) == set(node.channels)
