"""bluesky -> bus with the real peers: a RunEngine with ophyd.sim devices publishing
through ``BusPublisher``, event-model's composers for frames in HDF5 files, and bluesky's
own 0MQ ``Publisher`` -> ``Proxy`` -> ``databus bridge from-bluesky``."""

import os
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

bluesky = pytest.importorskip("bluesky")
h5py = pytest.importorskip("h5py")

import bluesky.plan_stubs as bps  # noqa: E402
import bluesky.plans as bp  # noqa: E402
import event_model  # noqa: E402
from bluesky import RunEngine  # noqa: E402
from bluesky.preprocessors import SupplementalData  # noqa: E402
from conftest import Running, eventually  # noqa: E402
from ophyd.sim import SynSignal, det, motor, motor1, motor2  # noqa: E402

import databus  # noqa: E402
from databus import EventType, FileRef  # noqa: E402
from databus._server import EmbeddedServer  # noqa: E402
from databus.clients.bluesky import BusPublisher, FromBluesky  # noqa: E402


class Recorder:
    """The documents a RunEngine emitted, as a second callback sees them."""

    def __init__(self):
        self.docs = []

    def __call__(self, name, doc):
        self.docs.append((name, doc))

    def of(self, name):
        return [d for n, d in self.docs if n == name]


def engine(publisher, baseline=()):
    RE = RunEngine({})
    RE.subscribe(publisher)
    recorder = Recorder()
    RE.subscribe(recorder)
    if baseline:
        RE.preprocessors.append(SupplementalData(baseline=list(baseline)))
    return RE, recorder


def followed(bus, session, runs, timeout=20.0):
    """The events of ``runs`` scans of ``session``, followed with the SDK from the start."""
    from databus.node import StopHandler

    events, ended, stop = [], [], StopHandler()

    def walk():
        for event in bus.session(session).follow(replay=True, stop_handler=stop):
            events.append(event)
            if event.type is EventType.END_SCAN:
                ended.append(event)
                if len(ended) == runs:
                    return

    t = threading.Thread(target=walk, daemon=True)
    t.start()
    t.join(timeout)
    stop.stop()
    assert len(ended) == runs, [(e.type.name, e.node.name) for e in events]
    return events


def by_scan(events):
    """{scan key: {"node", "end", "order": [(type, name)], "data": {channel: array}}}"""
    scans = {}
    for e in events:
        scan = e.node if e.node.type == "scan" else e.node.parent
        s = scans.setdefault(scan.db_name, {"node": scan, "order": [], "data": {}})
        s["order"].append((e.type.name, e.node.name))
        if e.type is EventType.NEW_DATA:
            d = e.data.data
            prev = s["data"].get(e.node.name)
            if isinstance(d, list):
                s["data"][e.node.name] = (prev or []) + d
            else:
                s["data"][e.node.name] = d if prev is None else np.concatenate([prev, d])
        elif e.type is EventType.END_SCAN:
            s["end"] = e.data
    return list(scans.values())


def column(recorder, stream, key):
    """One data key's values over a stream's events, as the RunEngine emitted them."""
    uid = {d["uid"] for d in recorder.of("descriptor") if d["name"] == stream}
    return np.array([ev["data"][key] for ev in recorder.of("event") if ev["descriptor"] in uid])


def test_run_engine_scans_appear_on_the_bus_with_streams_data_and_end(bus, tmp_path):
    cam = SynSignal(func=lambda: np.arange(12, dtype=np.uint16).reshape(3, 4), name="cam")
    pub = BusPublisher(session="rebs", bus=bus)
    writer = Running(bus, tmp_path, session="rebs")
    RE, rec = engine(pub, baseline=[motor1])
    RE(bp.scan([det, cam], motor, -1, 1, 5))
    RE(bp.grid_scan([det], motor1, 0, 1, 3, motor2, 0, 1, 2))
    RE(bp.count([det], num=3))
    assert pub.flush(20)
    stats = pub.statistics()
    assert (stats.failed, stats.dropped, stats.unmapped) == (0, 0, 0), stats
    assert stats.runs_started == stats.runs_ended == 3 and stats.published == len(rec.docs)
    scans = by_scan(followed(bus, "rebs", 3))
    starts = rec.of("start")
    assert [s["node"].info["uid"] for s in scans] == [d["uid"] for d in starts]
    step, grid, count = scans
    info = step["node"].info
    assert (info["plan_name"], info["type"], info["npoints"], info["motors"]) == (
        "scan",
        "scan",
        5,
        ["motor"],
    )
    assert info["title"] == "scan motor" and info["scan_id"] == starts[0]["scan_id"]
    assert grid["node"].info["shape"] == [3, 2] and count["node"].info["npoints"] == 3
    for s in scans:
        assert s["end"].reason == "finished"
        order = s["order"]
        for name in s["data"]:  # every channel announced before its data, late ones too
            assert order.index(("NEW_NODE", name)) < order.index(("NEW_DATA", name))
        assert order.index(("PREPARED_SCAN", s["node"].name)) < order.index(
            ("NEW_NODE", "primary:time")
        )
    data = step["data"]
    assert set(data) == {
        "det", "cam", "axis:motor", "axis:motor_setpoint", "primary:time", "primary:timestamps",
        "baseline:motor1", "baseline:motor1_setpoint", "baseline:time", "baseline:timestamps",
    }  # fmt: skip
    np.testing.assert_array_equal(data["det"], column(rec, "primary", "det")[:5])
    np.testing.assert_array_equal(data["axis:motor"], np.linspace(-1, 1, 5))
    assert data["cam"].shape == (5, 3, 4) and data["cam"].dtype == np.uint16
    np.testing.assert_array_equal(data["cam"][2], np.arange(12).reshape(3, 4))
    assert len(data["baseline:motor1"]) == 2  # before and after the primary stream
    channels = step["node"].refresh().channels
    assert channels["baseline:motor1"].info["attrs"]["stream"] == "baseline"
    assert channels["baseline:motor1"].info["attrs"]["data_key"] == "motor1"
    assert channels["det"].info["attrs"]["source"] == "SIM:det"
    primary = {
        d["uid"]
        for d in rec.of("descriptor")
        if d["name"] == "primary" and d["run_start"] == starts[0]["uid"]
    }
    events = [e for e in rec.of("event") if e["descriptor"] in primary]
    np.testing.assert_array_equal(data["primary:time"], [e["time"] for e in events])
    stamped = channels["primary:timestamps"].info["attrs"]["keys"]
    np.testing.assert_array_equal(
        data["primary:timestamps"], [[e["timestamps"][k] for k in stamped] for e in events]
    )
    assert grid["data"]["axis:motor2"].tolist() == [0, 1, 0, 1, 0, 1]
    writer.wait_for(3)
    writer.stop()
    (path,) = (tmp_path / "rebs").glob("*.h5")
    with h5py.File(path, "r") as f:
        e = f[f"{step['node'].number}.1"]
        assert e["end_reason"][()] == b"finished"
        np.testing.assert_array_equal(e["measurement/det"][()], data["det"])
        assert e["measurement/cam"].shape == (5, 3, 4)
        assert e["instrument/positioners/motor"][()].tolist() == data["axis:motor"].tolist()
        assert e["plotselect"].attrs["signal"] == "det"


def test_a_plan_that_fails_mid_run_ends_its_scan_failed_with_the_reason(bus):
    pub = BusPublisher(session="failbs", bus=bus)
    RE, _ = engine(pub)

    def broken():
        yield from bps.open_run()
        yield from bps.trigger_and_read([det, motor])
        raise RuntimeError("the sample fell off")

    with pytest.raises(RuntimeError, match="fell off"):
        RE(broken())
    assert pub.flush(10)
    (scan,) = by_scan(followed(bus, "failbs", 1))
    assert scan["end"].reason == "failed" and "the sample fell off" in scan["end"].error
    assert len(scan["data"]["det"]) == 1
    assert scan["node"].refresh().info["stop"]["exit_status"] == "fail"


def frames_file(path, n, shape=(4, 5)):
    frames = np.arange(n * np.prod(shape), dtype=np.uint16).reshape(n, *shape)
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=frames)
    return frames


def test_frames_in_hdf5_files_become_file_references(bus, tmp_path, caplog):
    frames = frames_file(tmp_path / "det.h5", 6)
    pub = BusPublisher(session="refbs", bus=bus)
    run = event_model.compose_run()
    docs = [("start", run.start_doc)]
    key = {"source": "SIM:det", "dtype": "array", "dtype_numpy": "<u2", "shape": [4, 5]}
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            "img": {**key, "external": "FILESTORE:"},
            "x": {"source": "x", "dtype": "number", "shape": []},
        },
    )
    docs.append(("descriptor", desc.descriptor_doc))
    resource = run.compose_resource(
        spec="AD_HDF5",
        root=str(tmp_path),
        resource_path="det.h5",
        resource_kwargs={"frame_per_point": 2},
    )
    docs.append(("resource", resource.resource_doc))
    for i in range(3):
        datum = resource.compose_datum(datum_kwargs={"point_number": i})
        docs.append(("datum", datum))
        ev = desc.compose_event(
            data={"img": datum["datum_id"], "x": float(i)},
            timestamps={"img": 1.0, "x": 2.0},
            filled={"img": False},
            seq_num=i + 1,
        )
        docs.append(("event", ev))
    other = run.compose_resource(spec="NPY_SEQ", root="/", resource_path="x", resource_kwargs={})
    docs.append(("resource", other.resource_doc))  # a spec with no mapping: counted
    s_desc = run.compose_descriptor(
        name="cam", data_keys={"frames": {**key, "external": "STREAM:"}}
    )
    docs.append(("descriptor", s_desc.descriptor_doc))
    sres = run.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=f"file://localhost{tmp_path}/det.h5",
        data_key="frames",
        parameters={"dataset": "/entry/data/data"},
    )
    docs.append(("stream_resource", sres.stream_resource_doc))
    for start, stop in ((0, 4), (4, 6)):
        docs.append(
            (
                "stream_datum",
                sres.compose_stream_datum(
                    indices={"start": start, "stop": stop},
                    seq_nums={"start": start + 1, "stop": stop + 1},
                    descriptor=s_desc.descriptor_doc,
                ),
            )
        )
    docs.append(("stop", run.compose_stop()))
    for name, doc in docs:
        event_model.schema_validators[getattr(event_model.DocumentNames, name)].validate(doc)
        pub(name, doc)
    assert pub.flush(10)
    stats = pub.statistics()
    assert (stats.failed, stats.unmapped, stats.runs_ended) == (0, 1, 1), stats
    assert any("NPY_SEQ" in r.getMessage() for r in caplog.records)
    (scan,) = by_scan(followed(bus, "refbs", 1))
    path = str(tmp_path / "det.h5")
    refs = [FileRef(path, "/entry/data/data", 2 * i, 2 * i + 2) for i in range(3)]
    assert scan["data"]["img"] == refs
    assert scan["data"]["cam:frames"] == [
        FileRef(path, "/entry/data/data", 0, 4),
        FileRef(path, "/entry/data/data", 4, 6),
    ]
    node = scan["node"].refresh().channels["cam:frames"]
    np.testing.assert_array_equal(node[:], frames)  # read from the detector's file


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def proxy():
    """A bluesky 0MQ Proxy in a subprocess: (input port, output port)."""
    ports = free_port(), free_port()
    code = f"from bluesky.callbacks.zmq import Proxy; Proxy({ports[0]}, {ports[1]}).start()"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield ports
    finally:
        proc.kill()
        proc.wait(10)


def test_from_bluesky_bridge_publishes_what_a_bluesky_publisher_sends(bus, proxy, tmp_path):
    import msgpack_numpy
    from bluesky.callbacks.zmq import Publisher

    env = {**os.environ, "DATABUS_PREFIX": bus.settings.prefix}
    bridge = subprocess.Popen(
        [sys.executable, "-m", "databus", "bridge", "from-bluesky", "--zmq",
         f"tcp://127.0.0.1:{proxy[1]}", "--session", "zmqbs", "--url", bus.url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        assert bridge.stdout.readline().startswith("from-bluesky: tcp://")
        RE = RunEngine({})
        sender = Publisher(f"127.0.0.1:{proxy[0]}", serializer=msgpack_numpy.packb)
        RE.subscribe(sender)
        rec = Recorder()
        RE.subscribe(rec)

        def until_received():
            RE(bp.count([det], num=1))
            return len(list(bus.session("zmqbs").node.scans()))

        assert eventually(until_received, timeout=15)  # the slow joiner is subscribed now
        RE(bp.scan([det], motor, 0, 1, 4))
        scans = by_scan(followed(bus, "zmqbs", len(rec.of("start"))))
        last = scans[-1]
        assert last["node"].info["uid"] == rec.of("start")[-1]["uid"]
        assert last["end"].reason == "finished"
        assert last["data"]["axis:motor"].tolist() == np.linspace(0, 1, 4).tolist()
        np.testing.assert_array_equal(last["data"]["det"], column(rec, "primary", "det")[-4:])
        sender.close()  # (its context would block whichever thread collects it)
    finally:
        bridge.send_signal(signal.SIGTERM)
        out, _ = bridge.communicate(timeout=20)
    assert bridge.returncode == 0, out
    assert "runs started" in out and " 0 failed" in out, out


def test_bad_addresses_and_serializers_are_clear_errors(bus):
    with pytest.raises(databus.InvalidURL):
        BusPublisher("nope://here", session="x")
    with pytest.raises(ValueError, match="unknown serializer 'json'"):
        FromBluesky("tcp://127.0.0.1:1", serializer="json", bus=bus)
    with pytest.raises(ValueError, match="cannot connect to 'tcp://no port'"):
        FromBluesky("tcp://no port", bus=bus)


def test_a_frozen_or_gone_server_never_reaches_the_plan_and_losses_are_counted(tmp_path):
    server = EmbeddedServer(tmp_path / "server")
    state = server.start()
    lost_bus = databus.connect(state.url, connect_timeout=1.0, reconnect_timeout=1.0)
    pub = BusPublisher(session="gonebs", bus=lost_bus, max_queue=20)
    try:
        os.kill(state.pid, signal.SIGSTOP)  # frozen: every round trip hangs
        RE, rec = engine(pub)
        try:
            RE(bp.scan([det], motor, 0, 1, 50))  # returns, raises nothing
        finally:
            os.kill(state.pid, signal.SIGCONT)
        assert pub.flush(60)
        frozen = pub.statistics()
        assert frozen.received == len(rec.docs) == 53  # start, descriptor, 50 events, stop
        # the plan went on while the worker waited on the frozen server: the queue overflowed
        assert frozen.dropped > 0
        assert frozen.dropped + frozen.failed + frozen.published == frozen.received
        server.stop()  # gone: every round trip is refused
        RE(bp.count([det], num=5))
        assert pub.flush(60)
        gone = pub.statistics()
        assert gone.received - frozen.received == 8
        assert gone.failed - frozen.failed == 8 and gone.published == frozen.published
    finally:
        pub.close()
        lost_bus.close()
        server.stop()
