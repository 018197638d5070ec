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


def test_runs_at_once_are_scans_of_their_own_and_bad_parts_are_counted(bus, caplog):
    pub = BusPublisher(session="twobs", bus=bus)
    keys = {k: {"source": k, "dtype": "number", "shape": []} for k in ("x", "y")}
    runs = [event_model.compose_run(metadata={"plan_name": f"p{i}"}) for i in range(2)]
    descs = [r.compose_descriptor(name="primary", data_keys=keys) for r in runs]

    def event(i, x, seq):
        doc = descs[i].compose_event(
            data={"y": 10.0 * seq, "x": x}, timestamps={"x": 0.0}, seq_num=seq, validate=False
        )
        return ("event", doc)

    docs = [("start", r.start_doc) for r in runs]
    docs += [("descriptor", d.descriptor_doc) for d in descs]
    docs += [event(0, 1.0, 1), event(1, "not a number", 1), event(1, 2.0, 2), event(0, 3.0, 2)]
    docs += [("event", {**docs[-1][1], "descriptor": "never-declared"})]
    docs += [("stop", runs[1].compose_stop(exit_status="abort", reason="user abort"))]
    docs += [event(0, 5.0, 3), ("stop", runs[0].compose_stop())]
    for name, doc in docs:
        pub(name, doc)
    assert pub.flush(10)
    stats = pub.statistics()
    assert (stats.unmapped, stats.failed, stats.runs_started, stats.runs_ended) == (2, 0, 2, 2)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "1 row(s) left out: 'x' refused" in messages and "never-declared" in messages
    first, second = by_scan(followed(bus, "twobs", 2))
    assert first["node"].info["plan_name"] == "p0" and second["node"].info["plan_name"] == "p1"
    assert first["data"]["x"].tolist() == [1.0, 3.0, 5.0] and second["data"]["x"].tolist() == [2.0]
    assert second["data"]["y"].tolist() == [20.0]  # the refused row is left out whole
    assert (first["end"].reason, second["end"].reason) == ("finished", "stopped")
    assert second["end"].error == "user abort"


def test_close_ends_a_run_whose_stop_never_came_as_interrupted(bus):
    pub = BusPublisher(session="openbs", bus=bus)
    run = event_model.compose_run()
    desc = run.compose_descriptor(
        name="primary", data_keys={"x": {"source": "x", "dtype": "integer", "shape": []}}
    )
    pub("start", run.start_doc)
    pub("descriptor", desc.descriptor_doc)
    pub("event", desc.compose_event(data={"x": 7}, timestamps={"x": 0.0}, seq_num=1))
    pub.close()
    (scan,) = by_scan(followed(bus, "openbs", 1))
    assert scan["end"].reason == "interrupted" and "stop" in scan["end"].error
    assert scan["data"]["x"].tolist() == [7] and scan["data"]["x"].dtype == np.int64
    assert pub.statistics().runs_ended == 1


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


@pytest.mark.parametrize("serializer", ["msgpack", "pickle"])
def test_from_bluesky_bridge_publishes_what_a_bluesky_publisher_sends(bus, proxy, serializer):
    import pickle

    import msgpack_numpy
    from bluesky.callbacks.zmq import Publisher

    dumps = msgpack_numpy.packb if serializer == "msgpack" else pickle.dumps

    env = {**os.environ, "DATABUS_PREFIX": bus.settings.prefix}
    bridge = subprocess.Popen(
        [sys.executable, "-m", "databus", "bridge", "from-bluesky", "--zmq",
         f"tcp://127.0.0.1:{proxy[1]}", "--session", "zmqbs", "--url", bus.url,
         "--serializer", serializer],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    sender = None
    try:
        assert bridge.stdout.readline().startswith("from-bluesky: tcp://")
        RE = RunEngine({})
        sender = Publisher(f"127.0.0.1:{proxy[0]}", serializer=dumps)
        RE.subscribe(sender)
        rec = Recorder()
        RE.subscribe(rec)

        def until_received():
            RE(bp.count([det], num=1))
            return len(list(bus.session("zmqbs").node.scans()))

        assert eventually(until_received, timeout=15)  # the slow joiner is subscribed now
        rec.docs.clear()
        RE(bp.scan([det], motor, 0, 1, 4))
        uid = rec.of("start")[0]["uid"]

        def published():
            return [n for n in bus.session("zmqbs").node.scans() if n.info.get("uid") == uid]

        assert eventually(published, timeout=15)
        (node,) = published()
        assert node.wait_end(15).reason == "finished"
        channels = node.refresh().channels
        assert channels["axis:motor"][:].tolist() == np.linspace(0, 1, 4).tolist()
        np.testing.assert_array_equal(channels["det"][:], column(rec, "primary", "det"))
    finally:
        if sender is not None:
            sender.close()  # (its context would block whichever thread collects it)
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
        events = followed(lost_bus, "gonebs", 1)
        (scan,) = by_scan(events)
        assert scan["end"].reason == "finished"  # events were dropped, never the stop
        assert len(scan["data"]["det"]) == 50 - frozen.dropped
        gaps = [e.data for e in events if e.type is EventType.GAP and e.node.name == "det"]
        assert {g.reason for g in gaps} == {"dropped"}  # announced where they were
        assert sum(g.block_size for g in gaps) == frozen.dropped
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


def test_the_mapping_rules_without_a_server():
    from databus.clients.bluesky._channels import channel_name, channel_spec, end_of
    from databus.clients.bluesky._files import (
        Unmapped,
        datum_ref,
        resource_source,
        stream_resource_source,
    )

    assert end_of({"exit_status": "success", "reason": ""}) == ("finished", None)
    assert end_of({"exit_status": "abort", "reason": "RE.abort"}) == ("stopped", "RE.abort")
    assert end_of({"exit_status": "fail", "reason": "boom"}) == ("failed", "boom")
    assert end_of({"exit_status": "odd"})[0] == "failed"
    assert channel_name("primary", "m", {"m"}) == "axis:m"
    assert channel_name("primary", "det", {"m"}) == "det"
    assert channel_name("baseline", "m", {"m"}) == "baseline:m"
    spec = channel_spec("primary", "s", {"dtype": "string", "shape": [], "source": "x"}, "s")
    assert (spec.kind, spec.dtype, spec.attrs["source"]) == ("json", None, "x")
    spec = channel_spec("primary", "a", {"dtype": "array", "shape": [2, 3]}, "a")
    assert spec.dtype is None and spec.with_value(np.zeros((2, 3), "i2")).dtype == "<i2"
    with pytest.raises(Unmapped, match="not fixed"):
        channel_spec("primary", "v", {"dtype": "array", "shape": [None]}, "v")
    source = resource_source(
        {"spec": "AD_HDF5_SWMR", "root": "/data", "resource_path": "a/b.h5",
         "resource_kwargs": {"frame_per_point": 3}}
    )  # fmt: skip
    frames = FileRef("/data/a/b.h5", "/entry/data/data", 6, 9)
    assert datum_ref(source, {"point_number": 2}) == frames
    for bad in (
        {"spec": "TIFF", "root": "/", "resource_path": "x"},
        {"spec": "AD_HDF5", "root": "", "resource_path": "relative.h5"},
    ):
        with pytest.raises(Unmapped):
            resource_source(bad)
    with pytest.raises(Unmapped, match="file:// URI"):
        stream_resource_source(
            {
                "mimetype": "application/x-hdf5",
                "uri": "http://x/y.h5",
                "parameters": {"dataset": "d"},
            }
        )


def test_events_published_together_leave_out_only_the_one_a_channel_refuses(bus):
    pub = BusPublisher(session="coalesce", bus=bus)
    run = event_model.compose_run()
    keys = {k: {"source": k, "dtype": "number", "shape": []} for k in ("x", "y")}
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    for seq in range(1, 201):  # queued faster than the worker creates the scan: one page
        x = "bad" if seq == 77 else float(seq)
        doc = desc.compose_event(
            data={"x": x, "y": -seq}, timestamps={"x": 0.0, "y": 0.0}, seq_num=seq, validate=False
        )
        docs.append(("event", doc))
    docs.append(("stop", run.compose_stop()))
    for name, doc in docs:
        pub(name, doc)
    assert pub.flush(10)
    stats = pub.statistics()
    assert (stats.unmapped, stats.failed, stats.runs_ended) == (1, 0, 1), stats
    (scan,) = by_scan(followed(bus, "coalesce", 1))
    kept = [s for s in range(1, 201) if s != 77]
    assert scan["data"]["x"].tolist() == [float(s) for s in kept]
    assert scan["data"]["y"].tolist() == [-s for s in kept]
    pub.close()
