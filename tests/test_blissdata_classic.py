"""The classic namespace (``databus.blissdata.data...``): BLISS's return values on our nodes,
checked against scans published on a real server. The client scripts of
``tests/blissdata_clients`` are run in ``test_blissdata_classic_clients.py``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import eventually

import databus
from databus import scan
from databus.blissdata.config.channels import Channel
from databus.blissdata.data.events import EventData, ImageNotSaved
from databus.blissdata.data.lima_image import Frame
from databus.blissdata.data.node import (
    DataNode,
    DataNodeContainer,
    get_node,
    get_nodes,
    get_or_create_node,
    get_session_node,
    sessions_list,
)
from databus.blissdata.data.nodes.channel import ChannelDataNode
from databus.blissdata.data.nodes.lima import LimaImageChannelDataNode
from databus.blissdata.data.nodes.scan import ScanNode
from databus.blissdata.data.scan import ScansObserver, ScansWatcher
from databus.blissdata.streaming import DataStreamReaderStopHandler
from databus.sim import SimDetector


@pytest.fixture
def running(bus):
    """A scan still running with channel ``x`` holding points 0..9 (float64), in two
    entries (0..4, 5..9)."""
    published = bus.session("classic").create_scan({"title": "x"})
    x = published.channel("x", "float64")
    published.prepare()
    published.start()
    for first in (0, 5):
        for i in range(first, first + 5):
            x.send(float(i))
        assert eventually(lambda n=first + 5: len(bus.scan(published.key).channels["x"]) == n)
    yield published
    if published.state is not databus.ScanState.ENDED:
        published.end()


def _channel(bus, published, name="x"):
    node = get_node(f"{published.key}:{name}", bus)
    assert isinstance(node, ChannelDataNode | LimaImageChannelDataNode)
    return node


def test_get_returns_none_for_a_point_not_there_and_what_exists_of_a_range(bus, running):
    ch = _channel(bus, running)
    assert ch.get(3) == 3.0 and ch.get(-1) == 9.0
    assert ch.get(10) is None  # not published yet: BLISS's polling idiom
    assert ch.get(2, 100).tolist() == list(range(2, 10))  # the part that exists
    assert len(ch.get(20, 30)) == 0 and len(ch.get(5, 2)) == 0
    assert ch.get(-5, 3).tolist() == [0, 1, 2, 3]  # BLISS reads a range from 0 then
    assert ch.get(0, -2).tolist() == list(range(10))  # any negative end: to the end
    arr = ch.get_as_array(7, -1)
    assert arr.dtype == np.float64 and arr.tolist() == [7, 8, 9]
    assert np.isnan(ch.get_as_array(10))  # BLISS: asarray(None, float64)
    assert ch[...].tolist() == list(range(10)) and ch[8:].tolist() == [8, 9]
    with pytest.raises(databus.NotYetPublished):
        ch[10]
    assert np.asarray(ch).tolist() == list(range(10))
    running.end()
    assert ch.get(10) is None  # past the end of an ended scan


def test_points_gone_from_redis_still_raise_our_error(bus, admin, running):
    ch = _channel(bus, running)
    admin.xtrim(ch.key, minid="5-0", approximate=False)  # points 0..4 trimmed away
    with pytest.raises(databus.DataExpired) as err:
        ch.get(0)
    assert isinstance(err.value, IndexError) and (err.value.first, err.value.last) == (0, 0)
    with pytest.raises(databus.DataExpired):
        ch.get(0, -1)
    assert ch.get(6) == 6.0


def test_channel_info_has_blisss_keys_alongside_ours(bus, running):
    ch = _channel(bus, running)
    info = ch.info
    assert info["shape"] == () and info["dtype"] == np.dtype("float64")
    assert info["fullname"] == "x" == ch.fullname and info["unit"] is None
    assert info["kind"] == "array" and info.get_all()["name"] == "x"


def test_node_functions_give_the_classic_classes(bus, running):
    session = get_session_node("classic", bus)
    assert isinstance(session, DataNodeContainer) and session.type == "session"
    scan_node = get_node(running.key, bus)
    assert isinstance(scan_node, ScanNode) and isinstance(scan_node, DataNodeContainer)
    assert isinstance(scan_node.parent, type(session))
    assert [type(c) for c in scan_node.children()] == [ChannelDataNode]
    assert isinstance(scan_node.children()[0], DataNode)
    assert [type(s) for s in session.children()] == [ScanNode]
    assert get_nodes(running.key, "nobody", bus=bus)[1] is None
    assert get_or_create_node("classic", node_type="session", bus=bus) == session
    assert "classic" in [s.name for s in sessions_list(bus)]
    with pytest.warns(FutureWarning):
        assert scan_node.iterator is scan_node
    with pytest.raises(ValueError, match="only creates session nodes"):
        get_or_create_node("x", node_type="scan", bus=bus)


def test_a_file_detector_is_a_lima_node_read_through_views(beamline, tmp_path):
    b = beamline
    det = SimDetector(shape=(6, 4), mode="file", directory=tmp_path)
    done = scan.ascan(b["robz"], -1, 1, 5, 0, b["gauss"], det)
    node = get_node(f"{done.key}:sim_det:image", b["bus"])
    assert isinstance(node, LimaImageChannelDataNode) and node.type == "lima"
    assert not isinstance(node, ChannelDataNode)  # siblings, as in BLISS
    frames = databus.ChannelNode.get(node, 0, -1)  # the SDK's read: pixels
    view = node.get(0, -1)
    assert len(view) == 5 and view.last_index == 5 and view.to_index == 4
    assert np.array_equal(np.asarray(list(view)), frames)
    assert np.array_equal(view.as_array(), frames) and np.array_equal(view[-1], frames[4])
    assert np.array_equal(node.get(2).as_array(), frames[2])  # one image: the image
    assert np.array_equal(view.get_image(3), frames[3])
    assert node.get_as_array(1, 2).shape == (2, 6, 4)
    last = view.get_last_image()
    assert isinstance(last, Frame) and last.frame_number == 4 and last.source == "file"
    assert view.get_last_live_image() == Frame(None, None, None)  # not from_stream
    node.from_stream = True
    assert node.get(-1).get_last_live_image().frame_number == 4
    path = str(tmp_path / f"runner_{b['bus'].scan(done.key).number}_sim_det.h5")
    refs = view.all_image_references(saved=True)
    assert refs == [(path, "/entry/data/data", i, "HDF5") for i in range(5)]
    assert view.image_reference(2) == refs[2]
    with pytest.raises(RuntimeError, match="not ready"):
        view.image_references([4, 5])
    assert list(view.iter_image_references([3, 4, 5])) == refs[3:]
    assert view.status_event.last_image_saved == 4 and view.status_event.proxy is None
    mapped = node._event_data(EventData(0, databus.ChannelNode.file_refs(node), {}, 5))
    assert mapped.data == refs  # NEW_DATA: one reference per image


def test_frames_in_the_bus_are_a_lima_node_without_references(beamline):
    b = beamline
    done = scan.ascan(b["robz"], -1, 1, 3, 0, SimDetector(shape=(4, 4)))
    node = get_node(f"{done.key}:sim_det:image", b["bus"])
    assert isinstance(node, LimaImageChannelDataNode)
    assert node.get(0, -1).as_array().shape == (3, 4, 4)
    with pytest.raises(ImageNotSaved, match="holds its images in the bus"):
        node.get(0, -1).all_image_references()
    assert node._event_data(EventData(0, np.zeros((3, 4, 4)), {}, 3)).data == []


def test_stop_handler_and_shared_channel_names(bus):
    handler = DataStreamReaderStopHandler()
    handler.stop()
    assert handler.stopped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flag = Channel("classic_stop", default_value=False, bus=bus)
    assert flag.value is False and flag.default_value is False
    flag.close()


def test_a_scan_walk_follows_its_own_scan_after_others_in_the_session(bus):
    session = bus.session("walks")
    earlier = session.create_scan()
    earlier.channel("x", "float64")
    earlier.start()
    earlier.end()
    published = session.create_scan()
    x = published.channel("x", "float64")
    published.start()
    x.send(1.0)
    walk = get_node(published.key, bus).walk_events()
    first = next(walk)  # while the scan runs
    published.end()
    events = [first, *walk]
    assert [(e.type.name, e.node.db_name) for e in events] == [
        ("NEW_NODE", f"{published.key}:x"),
        ("PREPARED_SCAN", published.key),
        ("NEW_DATA", f"{published.key}:x"),
        ("END_SCAN", published.key),
    ]
    assert isinstance(events[0].node, ChannelDataNode)


class Recorder(ScansObserver):
    """Writes down the watcher's calls: (method, scan key, what came)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_scan_created(self, scan_db_name, scan_info):
        self.calls.append(("created", scan_db_name, scan_info["title"]))

    def on_scan_started(self, scan_db_name, scan_info):
        self.calls.append(("started", scan_db_name))

    def on_child_created(self, scan_db_name, node):
        self.calls.append(("child", scan_db_name, node.fullname))

    def on_scalar_data_received(self, scan_db_name, channel_name, index, data_bunch):
        self.calls.append(("scalars", scan_db_name, channel_name, index, list(data_bunch)))

    def on_lima_ref_received(self, scan_db_name, channel_name, dim, source_node, event_data):
        self.calls.append(("lima", scan_db_name, channel_name, dim, event_data.data))

    def on_scan_finished(self, scan_db_name, scan_info):
        self.calls.append(("finished", scan_db_name, scan_info["end_timestamp"] > 0))


def test_scans_watcher_reports_a_scans_life_to_its_observer(beamline, tmp_path, caplog):
    b = beamline
    watcher = ScansWatcher("runner", b["bus"])
    recorder = Recorder()
    watcher.set_observer(recorder)
    with watcher.watch():
        with pytest.raises(RuntimeError, match=r"before run\(\)"):
            watcher.set_observer(recorder)
        det = SimDetector(shape=(4, 4), mode="file", directory=tmp_path)
        done = scan.ascan(b["robz"], -1, 1, 3, 0, b["gauss"], det)
        assert watcher.wait_no_more_running_scans(10) and watcher.running_scan_names() == []
    assert watcher.wait_terminated(5)
    key = done.key
    calls = recorder.calls
    assert calls[0] == ("created", key, done.title) and calls[-1] == ("finished", key, True)
    assert ("started", key) in calls and ("child", key, "sim_det:image") in calls
    name = "simulation:sim_ct_gauss_noise"
    gauss = [x for c in calls if c[0] == "scalars" and c[2] == name for x in c[4]]
    assert gauss == databus.ChannelNode.get(b["bus"].scan(key).channels[name], 0, -1).tolist()
    refs = [r for c in calls if c[0] == "lima" for r in c[4]]
    assert "unknown log event" not in caplog.text  # the runner's 'info' entries are known
    assert [r[2] for r in refs] == [0, 1, 2] and {c[3] for c in calls if c[0] == "lima"} == {2}
