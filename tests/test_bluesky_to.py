"""Bus -> bluesky through real peers: an unmodified ``RemoteDispatcher`` (with ``LiveTable``
and a recording callback, in a subprocess: tests/bluesky_clients/dispatcher.py) receives bus
scans from ``ToBluesky`` and from ``databus bridge to-bluesky``; event-model's schema
validation checks every document it got."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import msgpack
import msgpack_numpy
import numpy as np
import pytest
from event_model import DocumentNames, schema_validators, unpack_event_page

import databus
from databus import FileRef
from databus.clients.bluesky.to_bluesky import ToBluesky

DISPATCHER = Path(__file__).parent / "bluesky_clients" / "dispatcher.py"


class Dispatcher:
    """The dispatcher script in a subprocess; ``result()`` is every (name, doc) it got."""

    def __init__(self, where: Path, address: str, stops: int, **options: object) -> None:
        self.out, self.log = where.with_suffix(".docs"), where.with_suffix(".log")
        args = [sys.executable, str(DISPATCHER), address, str(self.out), str(stops)]
        for option, value in options.items():
            args += [f"--{option}", str(value)]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    @property
    def stdout(self) -> str:
        return self.log.read_text()

    def docs(self) -> list[tuple[str, dict]]:
        """What it recorded so far."""
        if not self.out.exists():
            return []
        with open(self.out, "rb") as f:
            unpacker = msgpack.Unpacker(f, object_hook=msgpack_numpy.decode)
            try:
                return [(name, doc) for name, doc in unpacker]
            except ValueError:  # a document half written
                return []

    def wait(self, condition: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None and not condition():
                raise AssertionError(
                    f"the dispatcher exited {self.proc.returncode}:\n{self.stdout}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"the dispatcher did not get there in time:\n{self.stdout}")
            time.sleep(0.02)

    def ready(self) -> Dispatcher:
        self.wait(lambda: "READY" in self.stdout)
        return self

    def result(self, timeout: float = 60) -> list[tuple[str, dict]]:
        """Every document, once it exited after its last stop; each one validated."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the dispatcher did not finish:\n{self.stdout}") from None
        assert code == 0, self.stdout
        docs = self.docs()
        for name, doc in docs:
            schema_validators[DocumentNames[name]].validate(doc)
        return docs


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[Callable[..., Dispatcher]]:
    """Starts dispatcher subprocesses, killed after the test whatever happened."""
    made: list[Dispatcher] = []

    def start(address: str, stops: int = 1, name: str = "d", **options: object) -> Dispatcher:
        made.append(Dispatcher(tmp_path / name, address, stops, **options))
        return made[-1].ready()

    yield start
    for d in made:
        if d.proc.poll() is None:
            d.proc.kill()
        d.proc.wait(10)


@pytest.fixture
def bridge(bus: databus.Bus) -> Iterator[Callable[..., ToBluesky]]:
    """Starts ``ToBluesky`` bridges on ``bus`` (bound to a free port), closed after."""
    made: list[ToBluesky] = []

    def start(session: str, **options: object) -> ToBluesky:
        options.setdefault("bind", "tcp://127.0.0.1:*")
        made.append(ToBluesky(session, bus=bus, **options).start())  # type: ignore[arg-type]
        return made[-1]

    yield start
    for b in made:
        b.close()


def _names(docs):
    return [name for name, _ in docs]


def _pages(docs):
    return [doc for name, doc in docs if name == "event_page"]


def _column(docs, key):
    return [row["data"][key] for page in _pages(docs) for row in unpack_event_page(page)]


def _seq(docs):
    return [s for page in _pages(docs) for s in page["seq_num"]]


def _session_with_a_scan(bus: databus.Bus, name: str) -> databus.Session:
    """A session the bus knows (a bridge refuses one that never had a scan)."""
    session = bus.session(name)
    session.create_scan(title="first").end()
    return session


@pytest.mark.parametrize("serializer", ["pickle", "msgpack", "msgpack-numpy"])
def test_a_scan_running_before_the_dispatcher_arrives_is_sent_from_its_start(
    bus, bridge, dispatcher, serializer
):
    session = _session_with_a_scan(bus, "late")
    scan = session.create_scan(type="ascan", npoints=100, motors=["robz"], title="ascan robz")
    robz = scan.channel("axis:robz", "float64", unit="mm")
    diode = scan.channel("diode:diode", "int32")
    mca = scan.channel("mca:spectrum", "float32", (8,))
    spectra = np.arange(800, dtype="float32").reshape(100, 8)
    scan.prepare()
    scan.start()
    for i in range(50):
        robz.send(i / 10)
        diode.send(i * 3)
        mca.send(spectra[i])
    time.sleep(0.2)  # half the scan is on the bus before bridge and dispatcher exist
    b = bridge("late", serializer=serializer)
    d = dispatcher(b.address, deserializer=serializer, fields="robz,diode")
    for i in range(50, 100):
        robz.send(i / 10)
        diode.send(i * 3)
        mca.send(spectra[i])
    scan.end()

    docs = d.result()
    names = _names(docs)
    assert names[:2] == ["start", "descriptor"] and names[-1] == "stop"
    assert set(names[2:-1]) == {"event_page"}
    start = docs[0][1]
    assert (start["scan_id"], start["plan_name"], start["motors"]) == (2, "ascan", ["robz"])
    assert start["databus"]["scan_info"]["title"] == "ascan robz"
    keys = docs[1][1]["data_keys"]
    assert keys["robz"]["units"] == "mm" and keys["spectrum"]["shape"] == [8]
    assert _seq(docs) == list(range(1, 101))
    assert _column(docs, "robz") == [i / 10 for i in range(100)]
    assert _column(docs, "diode") == [i * 3 for i in range(100)]
    got = _column(docs, "spectrum")
    np.testing.assert_array_equal(np.array(got), spectra)
    if serializer != "msgpack":  # pickle and msgpack-numpy keep numpy arrays
        assert isinstance(_pages(docs)[0]["data"]["spectrum"][0], np.ndarray)
    stop = docs[-1][1]
    assert (stop["exit_status"], stop["num_events"]) == ("success", {"primary": 100})
    printed = re.findall(r"^\|\s+(\d+) \| [\d:.]+ \|\s+([\d.]+) \|\s+(\d+) \|$", d.stdout, re.M)
    assert [(int(s), float(x), int(y)) for s, x, y in printed] == [
        (i + 1, round(i / 10, 3), i * 3) for i in range(100)
    ]
    stats = b.statistics()
    assert (stats.documents, stats.events, stats.runs, stats.failures) == (len(docs), 100, 1, 0)


@pytest.mark.parametrize("resources", ["stream", "legacy"])
def test_frames_in_files_arrive_as_resources_that_read_back(
    bus, bridge, dispatcher, tmp_path, resources
):
    frames = np.arange(6 * 4 * 5, dtype="uint16").reshape(6, 4, 5)
    path = tmp_path / "det.h5"
    with h5py.File(path, "w") as f:
        f["entry/data/data"] = frames
    session = _session_with_a_scan(bus, "frames")
    b = bridge("frames", serializer="msgpack", resources=resources, prefix=b"bl01")
    d = dispatcher(b.address, deserializer="msgpack", prefix="bl01")
    scan = session.create_scan(type="ct")
    x = scan.channel("x", "float64")
    image = scan.channel("lima:image", "uint16", (4, 5), kind="ref")
    scan.prepare()
    for i in range(6):
        x.send(float(i))
    image.send(FileRef(str(path), "/entry/data/data", 0, 4))
    image.send(FileRef(str(path), "/entry/data/data", 4, 6))
    scan.end()

    docs = d.result()
    assert _column(docs, "x") == [float(i) for i in range(6)]
    key = docs[1][1]["data_keys"]["image"]
    assert (key["shape"], key["dtype_numpy"]) == ([4, 5], "<u2")
    read = np.zeros_like(frames)
    with h5py.File(path, "r") as f:
        if resources == "stream":
            assert key["external"] == "STREAM:"
            (resource,) = [doc for name, doc in docs if name == "stream_resource"]
            assert resource["uri"] == f"file://localhost{path}"
            assert resource["mimetype"] == "application/x-hdf5"
            dataset = f[resource["parameters"]["dataset"]]
            datums = [doc for name, doc in docs if name == "stream_datum"]
            for datum in datums:
                rows = slice(datum["seq_nums"]["start"] - 1, datum["seq_nums"]["stop"] - 1)
                read[rows] = dataset[datum["indices"]["start"] : datum["indices"]["stop"]]
            assert "image" not in _pages(docs)[0]["data"]
        else:
            assert key["external"] == "FILESTORE:"
            (resource,) = [doc for name, doc in docs if name == "resource"]
            assert (resource["spec"], resource["root"]) == ("AD_HDF5", "/")
            assert resource["resource_path"] == str(path).lstrip("/")
            points = {
                datum_id: point
                for name, doc in docs
                if name == "datum_page"
                for datum_id, point in zip(
                    doc["datum_id"], doc["datum_kwargs"]["point_number"], strict=True
                )
            }
            ids = _column(docs, "image")
            assert len(ids) == 6
            read[:] = [f["entry/data/data"][points[i]] for i in ids]
    np.testing.assert_array_equal(read, frames)
    assert docs[-1][1]["num_events"] == {"primary": 6}


def test_gaps_and_an_aborted_end_are_in_the_stop_document(make_bus, admin, dispatcher):
    bus = make_bus(buffer_bytes=2 * 2**20)
    session = _session_with_a_scan(bus, "gaps")
    with ToBluesky("gaps", bind="tcp://127.0.0.1:*", bus=bus).start() as b:
        d = dispatcher(b.address)
        scan = session.create_scan(type="timescan")
        x = scan.channel("x", "float64")
        img = scan.channel("img", "uint8", (2**20,), lossy=True)
        scan.prepare()
        admin.client_pause(300, all=True)  # the server stalls: the lossy channel drops
        for i in range(20):
            x.send(float(i))
            img.send(np.full(2**20, i, np.uint8))
        x.send(20.0)
        x.send(21.0)  # two rows img never sends: incomplete at the end
        scan.end("aborted", error="a hook raised")
        docs = d.result()
    dropped = scan.statistics().dropped_points
    assert dropped > 0
    stop = docs[-1][1]
    assert (stop["exit_status"], stop["reason"]) == ("abort", "aborted: a hook raised")
    gaps = stop["databus"]["gaps"]
    assert {(g["stream"], g["data_key"], g["reason"]) for g in gaps} == {
        ("primary", "img", "dropped")
    }
    lost = {i for g in gaps for i in range(g["first"], g["first"] + g["count"])}
    assert len(lost) == dropped
    sent = [i for i in range(20) if i not in lost]
    assert _seq(docs) == [i + 1 for i in sent]
    assert _column(docs, "x") == [float(i) for i in sent]
    assert [int(frame[0]) for frame in _column(docs, "img")] == sent
    assert stop["num_events"] == {"primary": 20 - dropped}
    assert stop["databus"]["incomplete"] == {"primary": 2}


def test_a_slow_callback_under_a_flood_gets_every_document_in_order(bus, bridge, dispatcher):
    session = _session_with_a_scan(bus, "flood")
    b = bridge("flood", serializer="msgpack")
    d = dispatcher(b.address, deserializer="msgpack", slow=0.01)
    scan = session.create_scan(type="timescan")
    channels = [scan.channel(f"c{k}", "float64") for k in range(4)]
    scan.prepare()
    n = 100_000
    for i in range(n):
        value = float(i)
        for channel in channels:
            channel.send(value)
    scan.end()

    docs = d.result(timeout=120)
    assert _names(docs)[:2] == ["start", "descriptor"] and _names(docs)[-1] == "stop"
    assert _seq(docs) == list(range(1, n + 1))
    assert _column(docs, "c3") == [float(i) for i in range(n)]
    assert docs[-1][1]["num_events"] == {"primary": n}
    assert b.statistics().dropped == 0


def test_drop_mode_drops_for_the_slow_dispatcher_only(bus, bridge, dispatcher, caplog):
    session = _session_with_a_scan(bus, "drop")
    b = bridge("drop", serializer="msgpack-numpy", on_slow="drop", hwm=20)
    options = {"deserializer": "msgpack-numpy", "stops": 2}
    fast = dispatcher(b.address, name="fast", **options)
    slow = dispatcher(b.address, name="slow", slow=0.05, **options)
    warmup = session.create_scan(type="ct")  # both dispatchers are subscribed once they have it
    warmup.channel("x", "float64").send(0.0)
    warmup.end()
    for d in (fast, slow):
        d.wait(lambda d=d: "stop" in _names(d.docs()))
    scan = session.create_scan(type="timescan")
    x = scan.channel("x", "float64")
    spectrum = scan.channel("spectrum", "float64", (4096,))
    scan.prepare()
    n = 1000
    # The slow one is frozen during the flood (slower than any callback), so its queues fill
    # for certain: the bridge's 20 documents and the kernel's buffers (its 0MQ thread is
    # frozen too), ~300 pages of 32 KiB. The fast one's receive queue alone (1000) holds
    # every document of the flood, so it loses none even when it falls behind.
    slow.proc.send_signal(signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="databus.clients._xpub"):
            for i in range(n):
                x.send(float(i))
                spectrum.send(np.full(4096, i, "float64"))
                time.sleep(0.001)
            scan.end()
            docs = fast.result()
    finally:
        slow.proc.send_signal(signal.SIGCONT)
    flood = docs[4:]
    assert _names(docs[:4]) == ["start", "descriptor", "event_page", "stop"]
    assert _seq(flood) == list(range(1, n + 1))
    assert _column(flood, "x") == [float(i) for i in range(n)]
    assert [int(s[0]) for s in _column(flood, "spectrum")] == list(range(n))
    assert b.statistics().dropped > 0
    assert any("slow subscriber lost" in r.getMessage() for r in caplog.records)


def test_a_runengine_run_comes_back_through_the_bus_as_it_was(bus, bridge, dispatcher):
    from bluesky import RunEngine
    from bluesky.plans import scan as step_scan
    from ophyd.sim import det, motor

    from databus.clients.bluesky.publisher import BusPublisher

    _session_with_a_scan(bus, "rt")
    b = bridge("rt", serializer="msgpack")
    sent: list = []
    engine = RunEngine({})
    engine.subscribe(lambda name, doc: sent.append((name, doc)))
    d = dispatcher(b.address, stops=2, deserializer="msgpack", fields="motor,det")
    with BusPublisher(session="rt", bus=bus) as publisher:
        engine.subscribe(publisher)
        engine(step_scan([det], motor, -1, 1, 5))
        engine(abort_after_two(step_scan([det], motor, -1, 1, 5)))
    everything = d.result()
    docs = everything[: _names(everything).index("stop") + 1]
    first = sent[: _names(sent).index("stop") + 1]
    start, events = first[0][1], [doc for name, doc in first if name == "event"]
    assert docs[0][1]["uid"] == start["uid"] and docs[0][1]["plan_name"] == "scan"
    assert docs[0][1]["motors"] == ["motor"]
    descriptor = docs[1][1]
    assert descriptor["name"] == "primary"
    assert set(descriptor["data_keys"]) == {"motor", "motor_setpoint", "det"}
    for key in ("motor", "det"):
        assert _column(docs, key) == [e["data"][key] for e in events]
    page = _pages(docs)
    assert [t for p in page for t in p["time"]] == [e["time"] for e in events]
    stamps = [t for p in page for t in p["timestamps"]["det"]]
    assert stamps == [e["timestamps"]["det"] for e in events]
    assert docs[-1][1]["exit_status"] == "success"
    assert docs[-1][1]["num_events"] == {"primary": 5}
    aborted = [doc for name, doc in sent if name == "stop"][1]
    assert aborted["exit_status"] == "abort"
    stop = everything[-1][1]
    assert (stop["exit_status"], stop["reason"]) == ("abort", aborted["reason"])
    assert stop["num_events"] == {"primary": 2} and stop["databus"]["end_reason"] == "stopped"


def abort_after_two(plan):
    """``plan``, aborted (``RequestAbort``, as ``RE.abort()``) after its second event."""
    from bluesky.utils import RequestAbort

    saves = 0
    for msg in plan:
        yield msg
        saves += msg.command == "save"
        if saves == 2:
            raise RequestAbort()


def test_what_cannot_be_converted_is_counted_and_logged_and_the_rest_goes_on(
    bus, bridge, dispatcher, caplog
):
    session = _session_with_a_scan(bus, "bad")
    b = bridge("bad", serializer="msgpack")
    d = dispatcher(b.address, stops=2, deserializer="msgpack")
    with caplog.at_level(logging.ERROR, logger="databus.clients.bluesky.to_bluesky"):
        with session.create_scan(type="ct") as scan:  # msgpack has no complex numbers
            scan.channel("z", "complex128").send(1 + 2j)
        with session.create_scan(type="ct") as scan:
            scan.channel("x", "float64").send(4.5)
        docs = d.result()
    assert _names(docs) == [
        "start",
        "descriptor",
        "stop",
        "start",
        "descriptor",
        "event_page",
        "stop",
    ]
    assert _column(docs, "x") == [4.5]
    assert b.statistics().failures == 1
    assert any("could not serialize a event_page" in r.getMessage() for r in caplog.records)


def test_connected_to_a_bluesky_proxy_its_dispatchers_get_the_runs(bus, bridge, dispatcher):
    code = (
        "from bluesky.callbacks.zmq import Proxy\n"
        "proxy = Proxy('tcp://127.0.0.1', 'tcp://127.0.0.1')\n"
        "print(proxy.in_port, proxy.out_port, flush=True)\n"
        "proxy.start()\n"
    )
    proxy = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proxy.stdout.readline()  # type: ignore[union-attr]
        proxy_in, proxy_out = (s.rsplit(":", 1)[-1] for s in line.split())
        session = _session_with_a_scan(bus, "proxy")
        d = dispatcher(f"tcp://127.0.0.1:{proxy_out}", stops=1000, deserializer="msgpack")
        b = bridge("proxy", bind=None, connect=f"tcp://127.0.0.1:{proxy_in}", serializer="msgpack")
        # The proxy's PUB side drops what comes before the dispatcher's subscription
        # reached it: scans go until one arrives whole.
        d.wait(lambda: _send_a_scan(session) and _first_whole_run(d.docs()) is not None)
        run = _first_whole_run(d.docs())
        assert _names(run) == ["start", "descriptor", "event_page", "stop"]
        assert _column(run, "x") == [0.0, 1.0, 2.0]
        assert b.statistics().runs >= 1
    finally:
        proxy.kill()
        proxy.wait(10)


def _first_whole_run(docs):
    """The documents of the first run received from its start to its stop, or None."""
    start = None
    for i, (name, _) in enumerate(docs):
        if name == "start":
            start = i
        elif name == "stop" and start is not None:
            return docs[start : i + 1]
    return None


def _send_a_scan(session: databus.Session) -> bool:
    with session.create_scan(type="ct") as scan:
        x = scan.channel("x", "float64")
        for i in range(3):
            x.send(float(i))
    time.sleep(0.1)
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(bus: databus.Bus, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    command = [sys.executable, "-m", "databus", "bridge", "to-bluesky", *args]
    return subprocess.Popen(command, env=env, text=True, **kwargs)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_the_cli_serves_a_dispatcher_and_stops_on_a_signal(bus, dispatcher, tmp_path, stop):
    session = _session_with_a_scan(bus, "cli")
    address = f"tcp://127.0.0.1:{_free_port()}"
    log = tmp_path / "bridge.log"
    with open(log, "w") as out:
        proc = _cli(
            bus,
            "--session",
            "cli",
            "--bind",
            address,
            "--serializer",
            "msgpack",
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "to-bluesky: session" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        d = dispatcher(address, deserializer="msgpack", fields="x")
        with session.create_scan(type="ct") as scan:
            x = scan.channel("x", "float64")
            for i in range(5):
                x.send(i * 1.5)
        docs = d.result()
        assert _column(docs, "x") == [i * 1.5 for i in range(5)]
        proc.send_signal(stop)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert f"session 'cli' -> {address}" in log.read_text()
    assert "events, 1 runs sent; 0 dropped, 0 not converted" in log.read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bind": "tcp://127.0.0.1:*", "connect": "tcp://127.0.0.1:5"}, "exactly one of"),
        ({"bind": "tcp://127.0.0.1:*", "prefix": b"a b"}, "without a space"),
        ({"bind": "tcp://127.0.0.1:*", "on_slow": "wait"}, "'lag' or 'drop'"),
        ({"bind": "tcp://127.0.0.1:*", "hwm": 0}, "hwm must be"),
        ({"bind": "tcp://127.0.0.1:*", "serializer": "json"}, "choose one of"),
        ({"bind": "tcp://127.0.0.1:*", "resources": "files"}, "'stream' or 'legacy'"),
    ],
)
def test_bad_options_are_refused_by_name(bus, options, message):
    _session_with_a_scan(bus, "opts")
    with pytest.raises(ValueError, match=message):
        ToBluesky("opts", bus=bus, **options)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--session", "cli2", "--bind", "nowhere://x"], "cannot bind to 'nowhere://x'"),
    ],
)
def test_the_cli_says_what_is_wrong_and_exits_2(bus, args, message):
    _session_with_a_scan(bus, "cli2")
    proc = _cli(bus, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and message in err, (out, err)


def test_a_bridge_started_before_its_session_says_so_and_sends_its_first_scan(
    bus, bridge, dispatcher, caplog
):
    b = bridge("newcomer")
    assert "no session 'newcomer'" in caplog.text and "waiting for its first scan" in caplog.text
    d = dispatcher(b.address)
    scan = bus.session("newcomer").create_scan(type="ct", npoints=3)
    x = scan.channel("x", "float64")
    scan.prepare()
    scan.start()
    x.send(np.array([1.0, 2.0, 3.0]))
    scan.end()
    docs = d.result()
    assert _names(docs)[0] == "start" and _names(docs)[-1] == "stop"
    assert _column(docs, "x") == [1.0, 2.0, 3.0]


def test_databus_bridge_lists_its_kinds_and_refuses_an_unknown_one(capsys):
    from databus._cli import main as databus_main

    assert databus_main(["bridge", "--help"]) == 0
    out = capsys.readouterr().out
    assert "to-bluesky" in out and "from-bluesky" in out
    assert databus_main(["bridge"]) == 2
    assert databus_main(["bridge", "to-nowhere"]) == 2
    assert "unknown kind 'to-nowhere'" in capsys.readouterr().err
