"""Capture and replay on a real server: a capture replayed and captured again holds the same
content; following, killing and stopping a capture; pace; the commands."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from analysis_clients import logged_deltas
from analysis_clients.dumps import dump_frames
from conftest import eventually

import databus
from databus.clients.capture import (
    Capture,
    CaptureError,
    ChannelDeclared,
    PointsSent,
    ScanCut,
    ScanEnded,
    ScanStarted,
    content_differences,
    read_capture,
    replay,
)
from databus.clients.capture._files import CaptureWriter

FRAME = (1100, 1000)  # uint16: 2.2 MB, over an entry: each frame stored in two parts


def _detector_file(path: Path) -> np.ndarray:
    """Frames a detector wrote to its own file (for a ref channel)."""
    frames = np.arange(6 * 16, dtype=np.int32).reshape(6, 4, 4)
    with h5py.File(path, "w") as f:
        f["entry/data"] = frames
    return frames


def _publish_mixed(session: databus.Session, detector: Path) -> databus.Scan:
    """A scan of every kind of channel, with NaN, a gap made with skip(), file references,
    info changed at the end, prepared and started."""
    scan = session.create_scan({"title": "mixed", "npoints": 6, "motors": ["robz"]})
    elapsed = scan.channel("timer:elapsed_time", "float64", unit="s")
    mon = scan.channel("mon", "int32")
    spectrum = scan.channel("mca:spectrum", "float32", (128,))
    image = scan.channel("det:image", "uint16", FRAME)
    notes = scan.channel("notes", kind="json")
    lima = scan.channel("lima:image", "int32", (4, 4), kind="ref")
    scan.prepare()
    scan.start()
    rng = np.random.default_rng(3)
    for i in range(6):
        elapsed.send(np.nan if i == 2 else i * 0.1)
        if i == 3:
            mon.skip(2)  # points the producer lost: a GAP
        elif i != 4:
            mon.send(i * 7)
        spectrum.send(rng.random(128, dtype=np.float32))
        image.send(rng.integers(0, 65535, FRAME, dtype=np.uint16))
        notes.send({"point": i, "comment": "é" * i, "values": np.arange(i)})
    lima.send(databus.FileRef(str(detector), "entry/data", 0, 4))
    lima.send(databus.FileRef(str(detector), "entry/data", 4, 6))
    scan.end(info={"end_time": "later"})
    return scan


def _publish_failing(session: databus.Session) -> None:
    """A scan prepared (never started) that its code ends by failing."""
    with pytest.raises(RuntimeError), session.create_scan(title="failing") as scan:
        x = scan.channel("x", "float64")
        scan.prepare()
        x.send(1.5)
        raise RuntimeError("boom")


def test_a_replayed_capture_captured_again_holds_the_same_content(bus, tmp_path):
    detector = tmp_path / "det.h5"
    frames = _detector_file(detector)
    mixed = _publish_mixed(bus.session("orig"), detector)
    _publish_failing(bus.session("orig"))
    first = tmp_path / "first.dbcap"
    stats = Capture(bus, "orig", first, embed_refs=True).run()
    assert (stats.scans, stats.ended, stats.unembedded) == (2, 2, 0)
    bus.session("copy").create_scan(title="already there").end()  # replays get new numbers

    numbers = replay(bus, first, "copy", speed=None)

    assert numbers == [2, 3]
    again = tmp_path / "again.dbcap"
    Capture(bus, "copy", again, scans=numbers, embed_refs=True).run()
    assert content_differences(first, again) == []
    replayed = bus.scan(bus.key("copy", 2))
    assert replayed.info["replayed_from"] == {
        "file": str(first.resolve()),
        "session": "orig",
        "scan": mixed.number,
        "key": mixed.key,
    }
    assert (replayed.info["scan_nb"], replayed.info["session_name"]) == (2, "copy")
    assert replayed.info["end_time"] == "later"
    original = mixed.key
    for name in ("det:image", "mca:spectrum", "timer:elapsed_time"):
        a, b = bus.scan(original).channels[name][:], replayed.channels[name][:]
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    with pytest.raises(databus.DataLost):
        replayed.channels["mon"].get(3)
    assert (
        replayed.channels["lima:image"].file_refs()
        == bus.scan(original).channels["lima:image"].file_refs()
    )
    failed = bus.scan(bus.key("copy", 3))
    assert (failed.end_reason, failed.error) == (databus.EndReason.FAILED, "RuntimeError: boom")
    assert sorted(failed.state_times()) == [databus.ScanState.PREPARED, databus.ScanState.ENDED]
    with read_capture(again) as reader:
        lima = [r for r in reader if isinstance(r, PointsSent) and r.channel == "lima:image"]
    assert np.array_equal(np.concatenate([r.frames for r in lima]), frames)


def test_a_difference_in_content_is_named(bus, tmp_path):
    session = bus.session("orig")
    for values, title in (([1.0, 2.0], "a"), ([1.0, 2.5], "b")):
        with session.create_scan(title=title) as scan:
            x = scan.channel("x", "float64")
            scan.prepare()
            scan.start()
            x.send(np.array(values))
    for n in (1, 2):
        Capture(bus, "orig", tmp_path / f"{n}.dbcap", scans=[n]).run()

    found = content_differences(tmp_path / "1.dbcap", tmp_path / "2.dbcap")

    assert found == [
        "scan 1 (number 1 in A, 2 in B): the info differs in 'title'",
        "scan 1 (number 1 in A, 2 in B): channel 'x': the points differ",
    ]


def test_a_capture_refuses_scans_the_bus_does_not_hold(bus, tmp_path):
    with pytest.raises(databus.UnknownScan, match="no scan in the bus: nothing to capture"):
        Capture(bus, "empty", tmp_path / "a.dbcap")
    bus.session("s").create_scan(title="one").end()
    with pytest.raises(
        databus.UnknownScan, match=r"has no scan 5, 7 in the bus .* it holds scans: 1"
    ):
        Capture(bus, "s", tmp_path / "a.dbcap", scans=[7, 5])
    (tmp_path / "b.dbcap").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        Capture(bus, "s", tmp_path / "b.dbcap")
    assert not (tmp_path / "a.dbcap").exists()


def test_a_replay_of_chosen_scans(bus, tmp_path):
    for title in ("a", "b", "c"):
        bus.session("orig").create_scan(title=title).end()
    path = tmp_path / "a.dbcap"
    Capture(bus, "orig", path).run()
    with pytest.raises(ValueError, match=r"holds no scan 4, 9; it holds scans 1, 2, 3"):
        replay(bus, path, "copy", scans=[2, 4, 9])
    assert bus.session("copy").scans() == []  # nothing was published
    with pytest.raises(ValueError, match="speed is a factor > 0"):
        replay(bus, path, "copy", speed=0)

    assert replay(bus, path, "copy", scans=[3, 1], speed=None) == [1, 2]

    assert [s.info["title"] for s in bus.session("copy").scans()] == ["a", "c"]


def _env(bus: databus.Bus) -> dict[str, str]:
    return {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}


def _databus(bus: databus.Bus, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "databus", *args],
        env=_env(bus),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _records(path: Path) -> list:
    """What a capture being written holds so far."""
    if not path.exists():
        return []
    try:
        with read_capture(path, partial_ok=True) as reader:
            return list(reader)
    except CaptureError:
        return []  # its header is not written yet


def test_follow_captures_new_scans_until_sigint(bus, tmp_path):
    path = tmp_path / "follow.dbcap"
    capture = _databus(bus, "capture", "--session", "live", "--follow", "-o", str(path))
    try:
        assert capture.stdout is not None
        assert capture.stdout.readline().startswith("capture: session live into")
        session = bus.session("live")
        for title in ("first", "second"):
            with session.create_scan(title=title) as scan:
                x = scan.channel("x", "float64")
                scan.prepare()
                scan.start()
                x.send(np.arange(10.0))
        running = session.create_scan(title="running at the end")
        running.channel("y", "int64").send(1)

        def seen() -> bool:
            records = _records(path)
            return sum(isinstance(r, ScanEnded) for r in records) == 2 and any(
                isinstance(r, ScanStarted) and r.info["title"] == "running at the end"
                for r in records
            )

        assert eventually(seen, timeout=20)
        capture.send_signal(signal.SIGINT)
        out, err = capture.communicate(timeout=30)
    finally:
        capture.kill()
    running.end()
    assert capture.returncode == 0, err
    assert "3 scan(s) (2 ended)" in out
    with read_capture(path) as reader:  # complete: it has its closing record
        records = list(reader)
        assert reader.complete
    titles = [r.info["title"] for r in records if isinstance(r, ScanStarted)]
    assert titles == ["first", "second", "running at the end"]
    assert [r.scan for r in records if isinstance(r, ScanCut)] == [running.key]


def test_a_capture_killed_mid_scan_is_readable_to_its_last_record(bus, tmp_path):
    scan = bus.session("live").create_scan(title="killed")
    image = scan.channel("det:image", "uint16", (256, 256))
    scan.prepare()
    scan.start()
    stop = threading.Event()

    def publish() -> None:
        while not stop.wait(0.01):
            image.send(np.full((256, 256), len(image), dtype=np.uint16))

    sender = threading.Thread(target=publish)
    sender.start()
    path = tmp_path / "killed.dbcap"
    capture = _databus(bus, "capture", "--session", "live", "--scan", "1", "-o", str(path))
    try:
        assert eventually(lambda: sum(isinstance(r, PointsSent) for r in _records(path)) >= 3, 20)
        capture.send_signal(signal.SIGKILL)
        capture.wait(timeout=10)
    finally:
        capture.kill()
        stop.set()
        sender.join()
        scan.end()
    with pytest.raises(
        CaptureError,
        match=r"byte \d+: the (record that starts here is cut short|file ends after a complete)",
    ) as info:
        read_capture(path)
    assert 0 < info.value.offset <= path.stat().st_size
    with read_capture(path, partial_ok=True) as reader:
        records = list(reader)
        assert not reader.complete
    data = [r for r in records if isinstance(r, PointsSent)]
    assert len(data) >= 3 and not any(isinstance(r, ScanEnded) for r in records)
    assert all(np.all(r.data[i] == r.first + i) for r in data for i in range(r.count))

    (number,) = replay(bus, path, "again", speed=None, partial_ok=True)

    replayed = bus.scan(bus.key("again", number))
    assert replayed.end_reason == databus.EndReason.INTERRUPTED
    assert replayed.error == "the capture ended before this scan did"
    assert len(replayed.channels["det:image"]) == sum(r.count for r in data)


def _paced_scan(session: databus.Session, points: int, period: float) -> None:
    with session.create_scan(title="paced") as scan:
        x = scan.channel("x", "float64")
        scan.prepare()
        scan.start()
        for i in range(points):
            time.sleep(period)
            x.send(float(i))


def _captured_live(bus: databus.Bus, session: str, path: Path, publish) -> list:
    """Capture what ``publish()`` publishes in ``session``, following it as it happens."""
    capture = Capture(bus, session, path, follow=True)
    thread = threading.Thread(target=capture.run)
    thread.start()
    try:
        publish()
        assert eventually(lambda: capture.statistics().ended == 1, timeout=10)
    finally:
        capture.stop()
        thread.join(10)
    with read_capture(path) as reader:
        return list(reader)


def test_replay_at_speed_1_keeps_the_captured_pace(bus, tmp_path):
    first = tmp_path / "paced.dbcap"
    records = _captured_live(bus, "orig", first, lambda: _paced_scan(bus.session("orig"), 8, 0.05))
    span = max(r.t for r in records)
    assert span >= 0.3  # 8 points 50 ms apart, seen as they came

    def replayed() -> None:
        started = time.monotonic()
        replay(bus, first, "copy", speed=1)
        assert time.monotonic() - started >= 0.5 * span

    again = _captured_live(bus, "copy", tmp_path / "again.dbcap", replayed)
    times = [r.t for r in again]
    assert times == sorted(times) and max(times) >= 0.5 * span
    assert content_differences(first, tmp_path / "again.dbcap") == []


def test_the_commands_capture_and_replay(bus, tmp_path):
    _publish_failing(bus.session("orig"))
    path = tmp_path / "cli.dbcap"
    capture = _databus(bus, "capture", "--session", "orig", "-o", str(path))
    out, err = capture.communicate(timeout=60)
    assert capture.returncode == 0, err
    assert "1 scan(s) (1 ended), 1 points" in out

    done = _databus(bus, "replay", str(path), "--session", "copy", "--speed", "max")
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert f"replay: 1 scan(s) of {path} into session copy as scan(s) 1 in" in out
    assert bus.scan(bus.key("copy", 1)).error == "RuntimeError: boom"

    refused = _databus(bus, "capture", "--session", "orig", "--scan", "9", "-o", str(path))
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "has no scan 9 in the bus" in err
    path.write_bytes(path.read_bytes()[:-1])
    refused = _databus(bus, "replay", str(path), "--session", "copy")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "cut short" in err and "--partial" in err


def test_a_capture_that_cannot_write_stops_and_says_why(bus, tmp_path):
    """A full disk (here: a file size limit) stops the command with exit code 1 and the
    error; the file keeps what was written, without its closing record."""
    with bus.session("orig").create_scan(title="big") as scan:
        image = scan.channel("det:image", "uint16", (512, 1024))
        scan.prepare()
        scan.start()
        image.send(np.ones((4, 512, 1024), dtype=np.uint16))
    path = tmp_path / "full.dbcap"

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails instead (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    capture = subprocess.Popen(
        [sys.executable, "-m", "databus", "capture", "--session", "orig", "-o", str(path)],
        env=_env(bus),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limited,
    )
    _, err = capture.communicate(timeout=60)

    assert capture.returncode == 1
    assert "capture stopped: OSError: [Errno 27] File too large" in err
    with pytest.raises(CaptureError, match=r"cut short .* \(killed, or out of disk space\)"):
        read_capture(path)
    with read_capture(path, partial_ok=True) as reader:
        assert isinstance(next(iter(reader)), ScanStarted)


def test_frames_that_cannot_be_read_are_left_out_and_counted(bus, tmp_path):
    with bus.session("orig").create_scan(title="refs") as scan:
        lima = scan.channel("lima:image", "int32", (4, 4), kind="ref")
        scan.prepare()
        lima.send(databus.FileRef(str(tmp_path / "gone.h5"), "entry/data", 0, 3))
    path = tmp_path / "refs.dbcap"

    stats = Capture(bus, "orig", path, embed_refs=True).run()

    assert stats.unembedded == 3
    with read_capture(path) as reader:
        (data,) = [r for r in reader if isinstance(r, PointsSent)]
    assert data.frames is None
    assert data.data == [databus.FileRef(str(tmp_path / "gone.h5"), "entry/data", 0, 3)]


def test_scans_that_were_lost_or_cut_are_replayed_interrupted(bus, tmp_path):
    path = tmp_path / "made.dbcap"
    writer = CaptureWriter(path, {"session": "orig"}, "test")
    for n, key in ((1, "p:scan:{orig:1}"), (2, "p:scan:{orig:2}")):
        writer.write(ScanStarted(key, 0.0, "orig", n, {"title": f"scan {n}"}, None, 0.0, True))
        writer.write(ChannelDeclared(key, 0.0, {"name": "x", "dtype": "<f8", "shape": []}))
        writer.write(PointsSent(key, 0.0, "x", 0, 2, np.array([1.0, 2.0])))
    writer.write(ScanEnded("p:scan:{orig:1}", 0.1, "lost", "its publisher died", {}))
    writer.write(ScanCut("p:scan:{orig:2}", 0.1))
    writer.close()

    numbers = replay(bus, path, "copy", speed=None)

    lost, cut = (bus.scan(bus.key("copy", n)) for n in numbers)
    assert (lost.end_reason, lost.error) == (
        databus.EndReason.INTERRUPTED,
        "the original scan was lost: its publisher died",
    )
    assert (cut.end_reason, cut.error) == (
        databus.EndReason.INTERRUPTED,
        "the capture stopped before the scan ended",
    )
    assert list(cut.channels["x"][:]) == [1.0, 2.0]


def test_an_analysis_runs_offline_on_a_capture_as_on_a_dranspose_dump(bus, tmp_path):
    """``databus run --replay FILE.dbcap`` (issue 16, part 3, over this format): the
    tutorial's reducer gets the deltas it gets from a dranspose dump of the same frames."""
    frames = np.random.default_rng(7).integers(0, 1000, (12, 32, 32)).astype(np.uint16)
    with bus.session("live").create_scan(title="frames") as scan:
        image = scan.channel("det:image", "uint16", (32, 32))
        scan.prepare()
        scan.start()
        image.send(frames)
    capture = tmp_path / "frames.dbcap"
    Capture(bus, "live", capture).run()
    dump = tmp_path / "frames.cbors"
    dump_frames(dump, "xrd", frames)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "tests"), str(root)])}
    env = {**env, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    deltas = []
    for path, channels, session in ((capture, "xrd=det:image", "a"), (dump, "xrd", "b")):
        command = ["--worker", "examples.analysis_tutorial.worker:TestWorker"]
        command += ["--reducer", "examples.analysis_tutorial.reducer:TestReducer"]
        command += ["--channels", channels, "--replay", str(path), "--session", session]
        command += ["--url", bus.url]
        run = subprocess.run(
            [sys.executable, "-m", "databus", "run", *command],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        deltas.append(logged_deltas(run.stdout + run.stderr))
    assert len(deltas[0]) == 12 and deltas[0] == deltas[1]
