"""``databus web`` in a real browser (Debian's chromium, headless, driven by playwright):
the page shows sessions, scans, plots, frames and mesh maps as they arrive, reconnects
after a server restart, and serves 20 pages at once. Screenshots go to the test's
tmp_path (printed). Plus the server's safety rules and its pure parts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from conftest import canvas_sum, eventually, needs_chromium, state, wait

from databus.channels import Channel, shared_names
from databus.clients.web import _decimate, _wire
from databus.clients.web._files import FileRoot
from databus.clients.web._model import mesh_axes, mesh_spans
from databus.clients.web._page import View
from databus.clients.web.server import ServerThread, check_exposure, listen, make_app
from databus.scan import mesh_shape


class WebServer:
    """``databus web`` as a subprocess on the test's bus, on a free (or given) port."""

    def __init__(self, make_bus, *args: str, port: int = 0) -> None:
        env = {**os.environ, "DATABUS_URL": make_bus.url, "DATABUS_PREFIX": make_bus.prefix}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "databus", "web", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        if "serving" not in line:
            rest = self.proc.stdout.read()
            self.stop()
            raise AssertionError(f"databus web did not start: {line}{rest}")
        self.url = line.split()[3]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def web(make_bus) -> Iterator:
    """Starts ``databus web`` servers for this test's bus; stops them after."""
    started: list[WebServer] = []

    def start(*args: str, port: int = 0) -> WebServer:
        server = WebServer(make_bus, *args, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def screenshot(page, tmp_path: Path, name: str) -> None:
    where = tmp_path / f"{name}.png"
    page.screenshot(path=str(where), full_page=True)
    print(f"screenshot: {where}")


def run_in_thread(function, *args, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=function, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def det():
    from databus.sim import SimDetector

    return SimDetector("sim_det", shape=(256, 256))


@needs_chromium
def test_scan_appears_grows_and_ends_in_the_page(beamline, web, browser, det, tmp_path):
    from databus.scan import ascan

    server = web("--session", "runner", "--max-fps", "20")
    page = browser.new_page()
    page.goto(server.url)
    wait(page, "s.connected && s.sessions.includes('runner')")
    scan = ascan(beamline["robz"], 0, 1, 40, 0.03, beamline["diode"], det, save=False, run=False)
    thread = run_in_thread(scan.run)
    wait(page, "s.frame.drawn >= 1")
    first = canvas_sum(page, "frame")
    wait(page, "s.frame.drawn >= 3")
    assert canvas_sum(page, "frame") != first, "the frame image did not change"
    thread.join(30)
    wait(page, "s.scans.length === 1 && s.scans[0].reason === 'finished'")
    wait(page, "s.plot.rows === 40 && s.plot.points === 40")
    assert state(page, "plot.bin") == 1
    node = beamline["bus"].scan(scan.key).channels["simulation:diode"]
    assert state(page, "plot.cols['simulation:diode']") == pytest.approx(list(np.asarray(node)))
    row = page.locator("#scans tbody tr").first
    assert row.locator(".state").inner_text() == "finished"
    assert row.locator(".count").inner_text() == "40/40"
    assert page.locator("#plot canvas").count() >= 1
    assert state(page, "frame.index") == 39
    page.hover("#frame", position={"x": 256, "y": 256})
    wait(page, "s.pixel !== null")
    pixel = state(page, "pixel")
    assert pixel["value"] == int(det_frame_value(beamline["bus"], scan.key, pixel))
    screenshot(page, tmp_path, "ascan")
    page.close()


@needs_chromium
def test_frames_given_as_references_to_files_are_shown(beamline, web, browser, tmp_path):
    from databus.scan import ascan
    from databus.sim import SimDetector

    det = SimDetector("file_det", shape=(96, 128), mode="file", directory=tmp_path / "det")
    server = web("--session", "runner")
    page = browser.new_page()
    page.goto(server.url)
    wait(page, "s.connected")
    scan = ascan(beamline["robz"], 0, 1, 8, 0.01, det, save=False)
    frames = beamline["bus"].scan(scan.key).channels["file_det:image"]
    assert frames.type == "lima" and frames.file_refs()[0].file.startswith(str(tmp_path))
    wait(page, "s.frame.index === 7 && s.frame.channel === 'file_det:image'")
    assert state(page, "frame.full") == [96, 128] and canvas_sum(page, "frame") != 0
    page.hover("#frame", position={"x": 300, "y": 200})
    wait(page, "s.pixel !== null")
    pixel = state(page, "pixel")
    assert pixel["value"] == int(frames.get(pixel["index"])[pixel["row"], pixel["col"]])
    page.close()
    for path in (tmp_path / "det").rglob("*.h5"):
        path.unlink()
    later = web("--session", "runner")  # reads the ended scan afresh: its file is gone
    page = browser.new_page()
    page.goto(later.url)
    wait(page, "s.scans.length === 1 && Object.keys(s.scans[0].unreadable).length === 1")
    assert "file_det:image" in page.inner_text("#alerts")
    assert "cannot be read" in state(page, "scans[0].unreadable['file_det:image']")
    page.close()


def det_frame_value(bus, key: str, pixel: dict) -> float:
    frames = bus.scan(key).channels["sim_det:image"]
    return frames.get(pixel["index"])[pixel["row"], pixel["col"]]


@needs_chromium
def test_mesh_scan_draws_a_map(beamline, web, browser, tmp_path):
    from databus.scan import amesh

    server = web("--session", "runner")
    page = browser.new_page()
    page.goto(server.url)
    wait(page, "s.connected")
    amesh(beamline["robz"], 0, 1, 6, beamline["roby"], 0, 1, 5, 0.01, beamline["gauss"], save=False)
    wait(page, "s.mesh.points === 30 && s.plot.points === 30")
    assert page.locator("#mesh-box").is_visible()
    assert canvas_sum(page, "mesh") != 0
    assert page.evaluate(
        "() => [document.getElementById('mesh').width, document.getElementById('mesh').height]"
    ) == [6, 5]
    screenshot(page, tmp_path, "amesh")
    page.close()


@needs_chromium
def test_a_snake_mesh_is_mapped_by_its_motors_positions(beamline, web, browser, tmp_path):
    from databus.scan import StepScan

    server = web("--session", "runner")
    page = browser.new_page()
    page.goto(server.url)
    wait(page, "s.connected")
    rows, cols = 4, 6
    fast, slow = np.meshgrid(np.linspace(-1, 1, cols), np.linspace(-1, 1, rows))
    fast[1::2] = fast[1::2, ::-1]  # every other line runs backwards
    info = {"start": [-1.0, -1.0], "stop": [1.0, 1.0], "data_dim": 2, "shape": [rows, cols]}
    snake = StepScan(
        "amesh",
        "snake mesh",
        [beamline["robz"], beamline["roby"]],
        np.column_stack([fast.ravel(), slow.ravel()]),
        0.001,
        [beamline["gauss"]],
        npoints=rows * cols,
        save=False,
        info=info,
    )
    snake.run()
    wait(page, f"s.mesh.points === {rows * cols} && s.mesh.drawn >= 1")
    counts = np.asarray(beamline["bus"].scan(snake.key).channels["simulation:sim_ct_gauss_noise"])
    placed = counts.reshape(rows, cols)
    placed[1::2] = placed[1::2, ::-1]
    expected = _decimate.to_8bit(placed, *_decimate.auto_levels(placed))
    assert page.evaluate("() => Array.from(window.databusView.mesh.codes)") == list(
        expected.ravel()
    )
    assert state(page, "mesh.axes") == ["axis:robz", "axis:roby"]
    assert "over axis:robz (across) and axis:roby (down)" in page.inner_text("#mesh-info")
    screenshot(page, tmp_path, "snake")
    page.close()


@needs_chromium
def test_a_written_scan_links_its_file_which_downloads(beamline, web, browser, tmp_path):
    from conftest import Running

    from databus.scan import loopscan

    root = tmp_path / "data"
    root.mkdir()
    server = web("--session", "runner", "--files", str(root))
    page = browser.new_page()
    page.goto(server.url)
    wait(page, "s.connected")
    writer = Running(beamline["bus"], root)
    try:
        scan = loopscan(5, 0.001, beamline["diode"])
        writer.wait_for(1)
    finally:
        writer.stop()
    node = beamline["bus"].scan(scan.key)
    assert node.file is not None and Path(node.file).is_absolute() and node.written is not None
    wait(page, "s.scans.length === 1 && s.scans[0].download !== null && s.scans[0].file_complete")
    assert state(page, "scans[0].file") == node.file
    assert page.locator("#scan-meta .file").inner_text() == node.file
    with page.expect_download() as download:
        page.click("#scan-meta a.download")
    assert Path(download.value.path()).read_bytes()[:4] == b"\x89HDF"
    assert download.value.suggested_filename == Path(node.file).name
    page.close()


def test_files_outside_the_directory_served_are_refused(web, tmp_path):
    root = tmp_path / "served"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a b.h5").write_bytes(b"\x89HDF inside")
    (tmp_path / "secret.h5").write_bytes(b"secret")
    (root / "link.h5").symlink_to(tmp_path / "secret.h5")
    files = FileRoot(root)
    assert files.link(str(root / "sub" / "a b.h5")) == "files/sub/a%20b.h5"
    assert files.link(str(tmp_path / "secret.h5")) is None and files.link(None) is None
    for outside in ["../secret.h5", str(tmp_path / "secret.h5"), "link.h5", "sub/../../secret.h5"]:
        with pytest.raises(PermissionError, match="outside"):
            files.find(outside)
    with pytest.raises(FileNotFoundError):
        files.find("sub")
    with pytest.raises(ValueError, match="not a directory"):
        FileRoot(tmp_path / "secret.h5")

    def status(server, path: str) -> int | bytes:
        try:
            with urllib.request.urlopen(server.url + path, timeout=5) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            return exc.code

    served = web("--session", "runner", "--files", str(root))
    assert status(served, "files/sub/a%20b.h5") == b"\x89HDF inside"
    refused = [
        "files/../secret.h5",
        "files/%2E%2E/secret.h5",
        "files/sub/..%2F..%2Fsecret.h5",
        "files/" + str(tmp_path / "secret.h5"),
        "files/%2F" + quote(str(tmp_path / "secret.h5")[1:], safe=""),
        "files/link.h5",
    ]
    assert {path: status(served, path) for path in refused} == dict.fromkeys(refused, 403)
    assert status(served, "files/missing.h5") == 404
    assert status(web("--session", "runner"), "files/sub/a%20b.h5") == 404


@needs_chromium
def test_page_on_a_session_without_scans(bus, web, browser):
    server = web("--session", "nothing_here")
    page = browser.new_page()
    page.goto(server.url)
    wait(page, "s.connected && s.sessions.length === 1")
    assert page.locator("#no-scans").is_visible()
    assert page.locator("#scans tbody tr").count() == 0
    assert "nothing_here" in page.locator("#sessions").inner_text()
    page.close()


@needs_chromium
def test_page_reconnects_after_a_server_restart(beamline, web, browser):
    from databus.scan import loopscan

    server = web("--session", "runner")
    page = browser.new_page()
    page.goto(server.url)
    wait(page, "s.connected")
    loopscan(25, 0.001, beamline["diode"], save=False)
    wait(page, "s.plot.points === 25 && s.plot.rows === 25")
    port = server.port
    server.stop()
    wait(page, "!s.connected")
    again = web("--session", "runner", port=port)
    wait(page, "s.connected && s.connects === 2")
    loopscan(10, 0.001, beamline["diode"], save=False)
    wait(page, "s.scans.length === 2 && s.plot.points === 10 && s.plot.rows === 10")
    assert again.url == server.url
    page.close()


@needs_chromium
def test_twenty_pages_at_once(beamline, web, browser):
    from databus.scan import ascan

    server = web("--session", "runner")
    context = browser.new_context()
    pages = [context.new_page() for _ in range(20)]
    for page in pages:
        page.goto(server.url)
    for page in pages:
        wait(page, "s.connected")
    ascan(beamline["robz"], 0, 1, 50, 0.002, beamline["diode"], beamline["mon"], save=False)
    for page in pages:
        wait(page, "s.scans.length === 1 && s.scans[0].reason === 'finished'")
        wait(page, "s.plot.points === 50 && s.plot.rows === 50")
    context.close()


@needs_chromium
def test_shared_channels_listed_and_set_only_when_allowed(bus, web, browser):
    holder = Channel("attenuator", value=3, bus=bus)
    try:
        read_only = web("--session", "runner")
        page = browser.new_page()
        page.goto(read_only.url)
        wait(page, "s.shared.attenuator === 3")
        assert page.locator("#shared tr[data-name=attenuator] .value").inner_text() == "3"
        assert page.locator("#shared button").count() == 0
        page.close()
        writable = web("--session", "runner", "--allow-set")
        page = browser.new_page()
        page.goto(writable.url)
        wait(page, "s.shared.attenuator === 3 && s.allowSet")
        page.fill("#shared tr[data-name=attenuator] input", "5")
        page.click("#shared tr[data-name=attenuator] button")
        wait(page, "s.shared.attenuator === 5")
        assert eventually(lambda: holder.value == 5)
        page.close()
    finally:
        holder.close()


def test_a_server_thread_stops_cleanly_and_frees_its_port(bus, tmp_path):
    with ServerThread(make_app(bus, ["runner"], files=tmp_path)) as served:
        with urllib.request.urlopen(served.url, timeout=5) as page:
            assert b"databus live view" in page.read()
        port = int(served.url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(OSError):
            ServerThread(make_app(bus, ["runner"]), port=port)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("databus-web")]
    listen("127.0.0.1", port).close()
    with pytest.raises(ValueError, match="not a directory"):
        make_app(bus, ["runner"], files=tmp_path / "none")


def test_shared_names_lists_channels_with_a_value(bus):
    first = Channel("b:one", value=1, bus=bus)
    second = Channel("a two", value="x", bus=bus)
    try:
        assert shared_names(bus) == ["a two", "b:one"]
    finally:
        first.close()
        second.close()


def test_read_only_server_refuses_to_set(bus, web):
    server = web("--session", "runner")
    import asyncio

    import aiohttp

    async def talk() -> dict:
        async with aiohttp.ClientSession() as session, session.ws_connect(server.url + "ws") as ws:
            assert (await ws.receive_json())["type"] == "hello"
            await ws.send_json({"op": "set", "name": "x", "value": 1})
            while True:
                message = await ws.receive_json()
                if message["type"] == "error":
                    return message

    found: list[dict] = []  # in a thread of its own: playwright's loop runs in this one
    run_in_thread(lambda: found.append(asyncio.run(talk()))).join(20)
    (error,) = found
    assert "read-only" in error["message"] and "--allow-set" in error["message"]
    assert "x" not in shared_names(bus)


def test_non_loopback_bind_needs_a_token(make_bus):
    env = {**os.environ, "DATABUS_PREFIX": make_bus.prefix}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "databus",
            "web",
            "--bind",
            "0.0.0.0",
            "--port",
            "0",
            "--url",
            "redis://127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--token" in proc.stderr
    with pytest.raises(ValueError, match="--token"):
        check_exposure("192.168.1.2", None, None)
    check_exposure("127.0.0.1", None, None)
    check_exposure("::1", None, None)
    check_exposure("0.0.0.0", "secret", None)
    check_exposure("0.0.0.0", None, ("databus", "pw"))


def test_token_guards_every_request(web):
    server = web("--session", "runner", "--token", "s3cret")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.url, timeout=5)
    assert refused.value.code == 401
    with urllib.request.urlopen(server.url + "?token=s3cret", timeout=5) as ok:
        assert b"databus live view" in ok.read()
    with contextlib.suppress(urllib.error.HTTPError), pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(server.url + "static/app.js?token=wrong", timeout=5)


def test_envelope_keeps_min_and_max_per_bin():
    values = np.array([1.0, 5.0, np.nan, 2.0, 9.0, -1.0, 4.0])
    rows = _decimate.envelope({"y": values}, 3, 30)
    assert list(rows["index"]) == [30, 32, 33, 35, 36, 36]
    assert list(rows["y"]) == [1.0, 5.0, -1.0, 9.0, 4.0, 4.0]
    raw = _decimate.envelope({"y": values[:2]}, 1, 7)
    assert list(raw["index"]) == [7, 8] and list(raw["y"]) == [1.0, 5.0]


def test_bin_size_follows_the_plan_or_powers_of_two():
    assert _decimate.bin_size(1000, 10, 800) == 1
    assert _decimate.bin_size(10_000, 10, 800) == 13
    assert _decimate.bin_size(0, 1600, 800) == 1
    assert _decimate.bin_size(0, 1601, 800) == 4
    with pytest.raises(ValueError, match="1 pixel"):
        _decimate.bin_size(10, 10, 0)


def test_frames_shrink_by_block_maximum_and_map_to_8_bits():
    frame = np.zeros((100, 60), dtype=np.uint16)
    frame[51, 7] = 1000
    small, factor = _decimate.shrink(frame, 50, 50)
    assert factor == 2 and small.shape == (50, 30) and small[25, 3] == 1000
    codes = _decimate.to_8bit(np.array([0.0, 50.0, 100.0, np.nan, 200.0]), 0, 100)
    assert list(codes) == [1, 128, 255, _decimate.NO_VALUE, 255]
    logged = _decimate.to_8bit(np.array([-1.0, 1.0, 10.0, 100.0]), 1, 100, log=True)
    assert list(logged) == [1, 1, 128, 255]
    with pytest.raises(ValueError, match="2D"):
        _decimate.shrink(np.zeros(5), 2, 2)


def test_mesh_points_go_where_their_motors_were():
    values = np.arange(6.0)
    by_index = _decimate.mesh_grid(values[:5], (2, 3))
    assert by_index.tolist()[0] == [0.0, 1.0, 2.0] and np.isnan(by_index[1, 2])
    snake_fast, slow = np.array([0, 1, 2, 2, 1, 0.0]), np.array([0, 0, 0, 1, 1, 1.0])
    spans = ((0.0, 2.0), (0.0, 1.0))
    snake = _decimate.mesh_grid(values, (2, 3), snake_fast, slow, spans)
    assert snake.tolist() == [[0, 1, 2], [5, 4, 3]]
    jittered = _decimate.mesh_grid(
        values[:4], (2, 2), np.array([0.1, 4.9, -0.2, 5.1]), np.array([0.0, 0.1, 2.0, 1.9])
    )  # spans: the positions'
    assert jittered.tolist() == [[0, 1], [2, 3]]
    descending = _decimate.mesh_grid(
        values[:3], (1, 3), np.array([1, 0.5, 0]), np.zeros(3), ((1.0, 0.0), (0.0, 0.0))
    )
    assert descending.tolist() == [[0, 1, 2]]
    channels = ["axis:a", "axis:b", "axis:c", "x"]
    scatter = {
        "plots": [
            {
                "kind": "scatter-plot",
                "items": [{"kind": "scatter", "x": "axis:c", "y": "axis:a", "value": "x"}],
            }
        ]
    }
    assert mesh_axes(scatter, channels) == ("axis:c", "axis:a")
    assert mesh_axes({"motors": ["b", "a"]}, channels) == ("axis:b", "axis:a")
    assert mesh_axes({}, channels) == ("axis:a", "axis:b") and mesh_axes({}, ["x"]) is None
    assert mesh_spans({"start": [0, 1], "stop": [2, 3.5]}) == ((0.0, 2.0), (1.0, 3.5))
    assert mesh_spans({"start": [0], "stop": [2]}) is None
    for bad in (["4", 5], [0, 5], [True, 5], [4.0, 5]):  # any publisher's info: no map
        assert mesh_shape({"data_dim": 2, "shape": bad}) is None


def test_messages_round_trip():
    arrays = {"a": np.arange(3.0), "b": np.arange(5, dtype=np.uint8)}
    header, back = _wire.unpack(_wire.pack({"type": "t", "level": float("nan")}, arrays))
    assert header == {"type": "t", "level": None}
    assert list(back["a"]) == [0.0, 1.0, 2.0] and list(back["b"]) == [0, 1, 2, 3, 4]


def test_bad_view_messages_name_the_field():
    assert View.parse({"scan": "k", "width": 640}).width == 640
    with pytest.raises(ValueError, match=r"width must be 1\.\.4096"):
        View.parse({"width": 0})
    with pytest.raises(ValueError, match="frame must be"):
        View.parse({"frame": [1]})
    with pytest.raises(ValueError, match="levels"):
        View.parse({"levels": 3})
