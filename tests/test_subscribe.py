"""Following sessions and reading channels against a real server."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import databus
from databus import node
from databus._events import EventType, ScanEnd


class Collector:
    """Follows in a thread until ``until(event)`` or ``timeout``; ``.events``."""

    def __init__(self, iterator_factory, until=None, timeout=10.0):
        self.events, self.error = [], None
        self.started = threading.Event()
        self.stop = node.StopHandler()
        self._until = until
        self._factory = iterator_factory
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.started.wait(timeout), "the walk did not start"

    def _run(self):
        try:
            for event in self._factory(started_event=self.started, stop_handler=self.stop):
                self.events.append(event)
                if self._until and self._until(event):
                    return
        except BaseException as exc:  # surfaced by join()
            self.error = exc
            self.started.set()

    def join(self, timeout=10.0):
        self._thread.join(timeout)
        self.stop.stop()
        assert not self._thread.is_alive(), f"walk still running; got {self.kinds()}"
        if self.error:
            raise self.error
        return self.events

    def kinds(self):
        return [(e.type.name, e.node.name) for e in self.events]


def ended(event):
    return event.type is EventType.END_SCAN


def publish(session, n=10, title="ascan", end=True, reason="finished"):
    scan = session.create_scan(title=title, type="ascan", npoints=n)
    x = scan.channel("axis:robz", "float64", unit="mm")
    g = scan.channel("simulation:gauss", "float64")
    scan.prepare()
    scan.start()
    for i in range(n):
        x.send(i / 10)
        g.send(float(np.exp(-((i - n / 2) ** 2) / 4)))
    if end:
        scan.end(reason)
    return scan


def check_order(events):
    """The ordering rules, per scan."""
    seen: dict = {}
    for e in events:
        scan = e.node if e.node.type in ("scan", "scan_group") else e.node.parent
        s = seen.setdefault(
            scan.db_name, {"new": False, "prepared": False, "ended": False, "nodes": set()}
        )
        assert not s["ended"], f"{e.type.name} after END_SCAN"
        if e.type is EventType.NEW_NODE:
            if e.node is scan or e.node.type == "scan":
                s["new"] = True
            else:
                assert s["new"], "channel before its scan"
                s["nodes"].add(e.node.db_name)
        elif e.type is EventType.PREPARED_SCAN:
            s["prepared"] = True
        elif e.type is EventType.NEW_DATA:
            assert s["prepared"] and e.node.db_name in s["nodes"], "data before PREPARED/NEW_NODE"
        elif e.type is EventType.END_SCAN:
            s["ended"] = True


def data_of(events, name):
    blocks = [e.data for e in events if e.type is EventType.NEW_DATA and e.node.name == name]
    assert [b.first_index for b in blocks] == list(
        np.cumsum([0] + [b.block_size for b in blocks[:-1]])
    )
    return np.concatenate([b.data for b in blocks]) if blocks else np.empty(0)


def test_follow_delivers_a_scan_in_order_with_its_end_reason(bus):
    session = bus.session("follow")
    c = Collector(session.follow, until=ended)
    scan = publish(session, n=50, reason="stopped")
    events = c.join()
    check_order(events)
    assert c.kinds()[:4] == [
        ("NEW_NODE", "1_ascan"),
        ("NEW_NODE", "axis:robz"),
        ("NEW_NODE", "simulation:gauss"),
        ("PREPARED_SCAN", "1_ascan"),
    ]
    assert c.kinds()[-1] == ("END_SCAN", "1_ascan")
    assert events[-1].data == ScanEnd(databus.EndReason.STOPPED, None)
    assert data_of(events, "axis:robz").tolist() == [i / 10 for i in range(50)]
    for e in events:
        if e.type is EventType.NEW_DATA:
            assert e.data.description["name"] == e.node.name
    assert events[0].node.db_name == scan.key


def test_a_failed_scan_carries_its_error(bus):
    session = bus.session("fail")
    c = Collector(session.follow, until=ended)
    with pytest.raises(ZeroDivisionError), session.create_scan(title="t") as scan:
        scan.channel("x", "float64").send(1.0)
        print(1 / 0)
    events = c.join()
    assert events[-1].data == ScanEnd("failed", "ZeroDivisionError: division by zero")


def test_late_join_delivers_the_running_scan_from_index_0(bus):
    session = bus.session("late")
    scan = publish(session, n=20, end=False)
    time.sleep(0.2)  # those 20 points are in Redis before the walk starts
    c = Collector(session.follow, until=ended)
    scan.channels["axis:robz"].send(99.0)
    scan.end()
    events = c.join()
    check_order(events)
    assert c.kinds()[0] == ("NEW_NODE", "1_ascan") and c.kinds()[-1] == ("END_SCAN", "1_ascan")
    assert data_of(events, "axis:robz").tolist() == [i / 10 for i in range(20)] + [99.0]


def test_a_channel_declared_while_the_scan_runs_comes_as_a_new_node_before_its_data(bus):
    session = bus.session("latech")
    c = Collector(session.follow, until=ended)
    scan = publish(session, n=5, end=False)
    late = scan.channel("baseline:ring_current", "float64", attrs={"stream": "baseline"})
    late.send(np.array([200.0, 199.5]))
    scan.channels["axis:robz"].send(9.0)
    scan.end()
    live = c.join()
    replayed = Collector(lambda **kw: session.follow(replay=True, **kw), until=ended).join()
    for events in (live, replayed):
        check_order(events)  # NEW_NODE of the late channel before its NEW_DATA
        kinds = [(e.type.name, e.node.name) for e in events]
        assert kinds.index(("PREPARED_SCAN", "1_ascan")) < kinds.index(
            ("NEW_NODE", "baseline:ring_current")
        )
        assert data_of(events, "baseline:ring_current").tolist() == [200.0, 199.5]
        assert data_of(events, "axis:robz").tolist() == [i / 10 for i in range(5)] + [9.0]
    node = live[0].node.refresh()
    assert node.channels["baseline:ring_current"].info["attrs"] == {"stream": "baseline"}
    assert node.channels["baseline:ring_current"][:].tolist() == [200.0, 199.5]


def test_exclude_existing_children_skips_the_running_scan(bus):
    session = bus.session("excl")
    first = publish(session, n=3, end=False)
    c = Collector(
        lambda **kw: session.node.walk_on_new_events(exclude_existing_children=True, **kw),
        until=ended,
    )
    first.end()
    publish(session, n=3)
    c.join()
    assert {name for _, name in c.kinds() if name.endswith("_ascan")} == {"2_ascan"}


def test_walk_events_replays_then_ends_without_wait(bus):
    session = bus.session("replay")
    publish(session, n=5)
    publish(session, n=7, reason="aborted")
    events = list(session.node.walk_events(wait=False))
    check_order(events)
    ends = [e for e in events if e.type is EventType.END_SCAN]
    assert [(e.node.name, e.data.reason) for e in ends] == [
        ("1_ascan", "finished"),
        ("2_ascan", "aborted"),
    ]
    assert (
        len(
            data_of(
                [e for e in events if e.node.parent and e.node.parent.name == "2_ascan"],
                "simulation:gauss",
            )
        )
        == 7
    )


def test_walk_yields_nodes_and_walk_from_last_starts_at_the_last_scan(bus):
    session = bus.session("nodes")
    publish(session, n=2)
    publish(session, n=2)
    nodes = list(session.node.walk(wait=False))
    assert [n.name for n in nodes] == [
        "1_ascan",
        "axis:robz",
        "simulation:gauss",
        "2_ascan",
        "axis:robz",
        "simulation:gauss",
    ]
    assert [n.type for n in nodes[:2]] == ["scan", "channel"]
    last = list(session.node.walk_from_last(wait=False, include_filter="scan"))
    assert [n.name for n in last] == ["2_ascan"]
    with pytest.warns(DeprecationWarning, match="include_filter"):
        assert [n.name for n in session.node.walk(wait=False, filter="scan")] == [
            "1_ascan",
            "2_ascan",
        ]


@pytest.mark.parametrize("include", ["channel", ("channel",), lambda n: n.type == "channel"])
def test_include_filter_forms(bus, include):
    session = bus.session("filters")
    publish(session, n=3)
    events = list(session.node.walk_events(include_filter=include, wait=False))
    assert {e.node.type for e in events} == {"channel"}
    assert {e.type for e in events} == {EventType.NEW_NODE, EventType.NEW_DATA}


def test_exclude_children_keeps_scan_events_only(bus):
    session = bus.session("exclch")
    publish(session, n=3)
    events = list(session.node.walk_events(exclude_children="scan", wait=False))
    assert [e.type.name for e in events] == ["NEW_NODE", "PREPARED_SCAN", "END_SCAN"]


def test_stop_handler_from_another_thread_ends_the_walk_promptly(bus):
    session = bus.session("stop")
    c = Collector(session.follow)
    time.sleep(0.2)
    start = time.monotonic()
    c.stop.stop()
    c.join(timeout=2)
    assert time.monotonic() - start < 1.0


def test_several_walks_in_one_process_see_the_same_events(bus):
    session = bus.session("many")
    walks = [Collector(session.follow, until=ended) for _ in range(3)]
    publish(session, n=30)
    results = [w.join() for w in walks]
    assert len({tuple(w.kinds()) for w in walks}) == 1
    for events in results:
        assert data_of(events, "simulation:gauss").shape == (30,)


def test_frames_arrive_whole_and_without_copies(bus):
    session = bus.session("frames")
    c = Collector(session.follow, until=ended)
    scan = session.create_scan(title="frames")
    img = scan.channel("det:image", "uint16", (1024, 1024))
    scan.prepare()
    for i in range(6):
        img.send(np.full((1024, 1024), i, np.uint16))
    scan.end()
    events = c.join()
    frames = [e for e in events if e.type is EventType.NEW_DATA]
    data = np.concatenate([e.data.data for e in frames])
    assert data.shape == (6, 1024, 1024) and [int(f[0, 0]) for f in data] == list(range(6))
    one = [e.data.data for e in frames if e.data.block_size == 1]
    assert all(not d.flags.owndata for d in one)  # views on the reply buffer


class TestChannelAccess:
    def test_bliss_semantics(self, bus):
        scan = publish(bus.session("get"), n=10)
        ch = bus.scan(scan.key).channels["axis:robz"]
        values = [i / 10 for i in range(10)]
        assert len(ch) == 10 and ch.get(3) == values[3] and ch.get(-1) == values[-1]
        assert ch.get(2, 4).tolist() == values[2:5]  # inclusive
        assert ch.get(7, -1).tolist() == values[7:]
        assert ch[2:4].tolist() == values[2:4] and ch[::3].tolist() == values[::3]
        assert ch.get_as_array().tolist() == values and np.asarray(ch).tolist() == values
        assert (ch.short_name, ch.unit, ch.dtype, ch.shape, ch.type) == (
            "robz",
            "mm",
            np.float64,
            (),
            "channel",
        )
        with pytest.raises(databus.EndOfData, match="ended with 10 points"):
            ch.get(10)

    def test_get_as_array_reads_ranges_as_bliss_clients_call_it(self, bus):
        scan = publish(bus.session("gaa"), n=10, end=False)
        time.sleep(0.2)
        ch = bus.scan(scan.key).channels["axis:robz"]
        values = [i / 10 for i in range(10)]
        assert ch.get_as_array(0, -1).tolist() == values
        assert ch.get_as_array(7, -1).tolist() == values[7:]
        assert ch.get_as_array(2, 4).tolist() == values[2:5]  # inclusive
        assert ch.get_as_array(8, 99).tolist() == values[8:]  # what exists so far
        assert ch.get_as_array(-2, -1).tolist() == values[-2:]
        assert ch.get_as_array(3, None).tolist() == values[3]
        nothing_new = ch.get_as_array(10, -1)  # a polling loop that is up to date
        assert nothing_new.shape == (0,) and nothing_new.dtype == np.float64
        assert ch.fullname == "axis:robz" and ch.short_name == "robz"
        with pytest.raises(IndexError, match="index out of range"):
            ch.get_as_array(-11, -1)
        scan.end()

    def test_info_get_all_reads_the_info_again_as_bliss_does(self, bus):
        scan = bus.session("info").create_scan(title="first")
        scan.channel("x", "float64", unit="mm")
        node_ = bus.scan(scan.key)
        info = node_.info
        scan.update_info(title="second", fastfit={"peak": 1.5})
        assert isinstance(info, dict) and info["title"] == "first"  # as read
        assert info.get_all()["title"] == "second" and info.get_all()["fastfit"] == {"peak": 1.5}
        assert node_.info["title"] == "second"  # get_all() read the record again
        channel_info = node_.channels["x"].info
        assert channel_info.get_all()["unit"] == "mm" and channel_info.get_all() == channel_info
        scan.end()

    def test_not_yet_published_is_its_own_error(self, bus):
        scan = publish(bus.session("nyp"), n=3, end=False)
        time.sleep(0.2)
        ch = bus.scan(scan.key).channels["axis:robz"]
        with pytest.raises(databus.NotYetPublished, match="has 3 points so far"):
            ch.get(5)
        assert isinstance(databus.NotYetPublished("x"), IndexError)
        scan.end()

    def test_expired_data_names_range_channel_and_file(self, make_bus):
        bus = make_bus(retention_ttl=0.3)
        scan = publish(bus.session("exp"), n=5)
        node_ = bus.scan(scan.key)
        ch = node_.channels["simulation:gauss"]
        bus.redis.persist(scan.key)  # the record outlives the data, as when a writer saved it
        bus.redis.hset(
            scan.key,
            mapping={"file": "/data/exp.h5", "dataset:simulation:gauss": "/1.1/measurement/gauss"},
        )
        time.sleep(0.6)
        with pytest.raises(databus.DataExpired) as info:
            ch.get(1, 3)
        err = info.value
        assert isinstance(err, IndexError) and (err.first, err.last) == (1, 3)
        assert "'simulation:gauss'" in str(err) and scan.key in str(err) and "1..3" in str(err)
        assert "/data/exp.h5:/1.1/measurement/gauss" in str(err) and err.file == "/data/exp.h5"

    def test_points_a_lossy_channel_dropped_are_a_gap_event_and_data_lost(self, make_bus, admin):
        bus = make_bus(buffer_bytes=2 * 2**20)
        scan = bus.session("lossy_read").create_scan()
        img = scan.channel("img", "uint8", (2**20,), lossy=True)
        admin.client_pause(300, all=True)  # the server stalls: the buffer fills up
        for i in range(20):
            img.send(np.full(2**20, i, np.uint8))
        scan.end()
        events = list(bus.session("lossy_read").follow(replay=True, wait=False))
        gaps = [e.data for e in events if e.type is EventType.GAP]
        got = [e.data for e in events if e.type is EventType.NEW_DATA]
        assert gaps and all(g.reason == "dropped" for g in gaps)
        spans = [(d.first_index, d.block_size) for d in gaps + got]
        assert sorted(i for a, n in spans for i in range(a, a + n)) == list(range(20))
        ch = bus.scan(scan.key).channels["img"]
        with pytest.raises(databus.DataLost, match="dropped by the publisher") as info:
            ch.get(gaps[0].first_index)
        assert info.value.reason == "dropped"

    def test_a_corrupt_entry_raises_on_read_and_the_walk_goes_on(self, bus, caplog):
        session = bus.session("corrupt")
        c = Collector(session.follow, until=ended)
        scan = session.create_scan(title="c")
        x = scan.channel("x", "float64")
        scan.prepare()
        x.send(np.arange(3.0))
        time.sleep(0.2)
        bus.redis.xadd(x.key, {"d": b"garbage", "n": 1}, id="3-1")  # injected by hand
        x.queue.skip(1, gap=True)  # the publisher skips the index the garbage took
        x.send(np.arange(4.0, 6.0))
        scan.end()
        events = c.join()
        data = [e for e in events if e.type is EventType.NEW_DATA]
        assert data_of([e for e in data if e.data.first_index < 3], "x").tolist() == [0, 1, 2]
        assert [e.data.first_index for e in events if e.type is EventType.NEW_DATA][-1] == 4
        assert events[-1].type is EventType.END_SCAN
        assert any("3-1" in r.message for r in caplog.records)
        with pytest.raises(databus.CorruptEntry, match=r"ch:x entry 3-1") as info:
            bus.scan(scan.key).channels["x"].get(3)
        assert info.value.entry_id == "3-1"

    def test_lima_frames_come_from_the_detectors_file(self, bus, tmp_path):
        h5py = pytest.importorskip("h5py")
        path = tmp_path / "det.h5"
        frames = np.arange(5 * 8 * 8, dtype=np.uint16).reshape(5, 8, 8)
        with h5py.File(path, "w") as f:
            f["entry/data"] = frames
        session = bus.session("lima")
        c = Collector(session.follow, until=ended)
        scan = session.create_scan(title="lima")
        det = scan.channel("lima:image", "uint16", (8, 8), kind="ref")
        scan.prepare()
        det.send(databus.FileRef(str(path), "entry/data", 0, 3))
        det.send(databus.FileRef(str(path), "entry/data", 3, 5))
        scan.end()
        events = c.join()
        refs = [r for e in events if e.type is EventType.NEW_DATA for r in e.data.data]
        assert [len(r) for r in refs] == [3, 2] and events[1].node.type == "lima"
        ch = bus.scan(scan.key).channels["lima:image"]
        assert len(ch) == 5 and np.array_equal(ch.get(4), frames[4])
        assert np.array_equal(ch.get(1, 3), frames[1:4]) and np.array_equal(
            ch.get_as_array(), frames
        )
        path.unlink()
        with pytest.raises(databus.DataExpired, match=r"det.h5:entry/data, which cannot be read"):
            ch.get(0)


class TestNodesAndScans:
    def test_classic_lookups(self, bus):
        databus.set_default_bus(bus)
        try:
            scan = publish(bus.session("classic"), n=2)
            session = node.get_session_node("classic")
            assert session.type == "session" and [s.name for s in session.children()] == ["1_ascan"]
            assert node.get_session_node("not_yet").scans() == []
            with pytest.raises(ValueError, match="':'"):
                node.get_session_node("a:b")
            assert node.get_node(scan.key).number == 1
            ch = node.get_node(f"{scan.key}:simulation:gauss")
            assert ch.name == "simulation:gauss" and ch.parent.db_name == scan.key
            assert node.get_node(f"{scan.key}:nope") is None and node.get_node("absent") is None
            assert node.get_node(bus.key("classic", 99)) is None
            assert "classic" in [s.name for s in node.sessions_list()]
            assert node.get_node("classic").name == "classic"
            found = node.get_nodes(scan.key, "absent", f"{scan.key}:simulation:gauss")
            assert [getattr(n, "db_name", None) for n in found] == [scan.key, None, ch.db_name]
            watched = node.get_or_create_node("not_yet_either", node_type="session")
            assert watched.type == "session" and watched.scans() == []
            assert node.get_or_create_node(scan.key).number == 1
            with pytest.raises(ValueError, match="only creates session nodes"):
                node.get_or_create_node("x", node_type="scan")
        finally:
            databus.set_default_bus(None)

    def test_new_api_scan_objects(self, bus):
        session = bus.session("newapi")
        scan = publish(session, n=4, end=False)
        opened = bus.scan(scan.key)
        assert opened.state is databus.ScanState.STARTED and opened.end_reason is None
        with pytest.raises(databus.ReadTimeout, match=r"did not end within 0\.2 s"):
            opened.wait_end(timeout=0.2)
        threading.Timer(0.3, scan.end, args=("stopped",)).start()
        assert opened.wait_end(timeout=5) == ScanEnd(databus.EndReason.STOPPED, None)
        assert opened.state is databus.ScanState.ENDED
        assert [s.key for s in session.scans()] == [scan.key]
        assert set(opened.channels) == {"axis:robz", "simulation:gauss"}
        assert opened.info["npoints"] == 4
        with pytest.raises(databus.UnknownScan):
            bus.scan(bus.key("newapi", 2))
        with pytest.raises(databus.UnknownScan, match="not a databus scan key"):
            bus.scan("garbage")


def test_a_scan_whose_publisher_died_ends_as_lost(make_bus, monkeypatch):
    from databus import _walks as walks

    monkeypatch.setattr(walks, "LOST_CHECK_S", 0.2)
    bus = make_bus()
    session = bus.session("lost")
    c = Collector(session.follow, until=ended)
    code = f"""
import os, time, databus
bus = databus.connect({bus.url!r}, prefix={bus.settings.prefix!r}, running_ttl=0.5)
scan = bus.session("lost").create_scan(title="doomed")
scan.channel("x", "float64").send(1.0)
scan.prepare()
time.sleep(0.3)
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    events = c.join(timeout=15)
    assert events[-1].type is EventType.END_SCAN and events[-1].data.reason == "lost"
    assert events[-1].node.end_reason is databus.EndReason.LOST
    assert str(events[-1].data.reason) == "lost"


SCRIPT_1 = """
from databus import node
session_node = node.get_session_node('demo_session')
for event, *values in session_node.walk_on_new_events(include_filter='scan'):
    if event == event.NEW_NODE:
        scan = values[0]
        print(f'Scan {scan.db_name} started', flush=True)
    elif event == event.END_SCAN:
        scan = values[0]
        print(f'Scan {scan.db_name} ends', flush=True)
"""

SCRIPT_2 = """
from databus import node
session_node = node.get_session_node('demo_session')
for event, *values in session_node.walk_on_new_events():
    if event == event.NEW_NODE:
        node = values[0]
        if node.type == 'scan':
            max_value = 0.
    elif event == event.NEW_DATA_IN_CHANNEL:
        channel = values[0]
        if not channel.name.find('gauss') > -1:
            continue
        data_value = channel.get(-1)
        max_value = max(max_value, data_value)
        print(f'{channel.name} {data_value:.4f} max {max_value:.4f}', flush=True)
"""


def run_script(bus, script, done):
    """Run a BLISS script against a scan that is already running when it starts (late
    join), then publish 20 more points, paced; the lines it printed once ``done(lines)``."""
    env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(x.strip() for x in proc.stdout), daemon=True
    )
    reader.start()

    def wait_for(condition):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not condition():
            time.sleep(0.02)

    try:
        scan = publish(bus.session("demo_session"), n=5, end=False)
        wait_for(lambda: lines)  # the script has joined the running scan
        g = scan.channels["simulation:gauss"]
        values = [float(np.exp(-((i - 10) ** 2) / 8)) for i in range(20)]
        for value in values:
            g.send(value)
            time.sleep(0.02)
        scan.end()
        wait_for(lambda: done(lines, values))
    finally:
        proc.kill()
        proc.wait()
        reader.join(5)
    return scan, values, lines


def test_bliss_script_following_scans(bus):
    scan, _, lines = run_script(bus, SCRIPT_1, lambda lines, _: len(lines) == 2)
    assert lines == [f"Scan {scan.key} started", f"Scan {scan.key} ends"]


def test_bliss_script_following_channel_data(bus):
    def done(lines, values):
        return lines and lines[-1].split()[1] == f"{values[-1]:.4f}"

    _, values, lines = run_script(bus, SCRIPT_2, done)
    assert all(line.startswith("simulation:gauss ") for line in lines)
    printed = [float(line.split()[1]) for line in lines]
    assert printed[-1] == pytest.approx(values[-1], abs=1e-4)
    assert float(lines[-1].split()[-1]) == pytest.approx(max(printed), abs=1e-4)
    assert max(printed) == pytest.approx(1.0, abs=1e-4)  # paced: the script saw the peak


def test_following_under_gevent_monkey_patching(bus, run_python):
    code = f"""
from gevent import monkey
monkey.patch_all()
import gevent, json, numpy as np, databus
bus = databus.connect({bus.url!r}, prefix={bus.settings.prefix!r})
session = bus.session("gev")
events, started = [], gevent.event.Event()
def follow():
    for ev in session.follow(started_event=started):
        events.append(ev)
        if ev.type is ev.type.END_SCAN:
            return
walker = gevent.spawn(follow)
started.wait(5)
ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.001)) for _ in range(100)])
scan = session.create_scan(title="g")
x = scan.channel("x", "float64")
scan.prepare()
for i in range(1000):
    x.send(float(i))
    if i % 100 == 0:
        gevent.sleep(0.001)
scan.end()
walker.join(10)
ticker.join()
data = [e.data.data for e in events if e.type is e.type.NEW_DATA]
values = [float(v) for block in data for v in block]
print(json.dumps({{"kinds": [e.type.name for e in events][:3], "last": events[-1].type.name,
                   "values": values == [float(i) for i in range(1000)], "ticks": len(ticks)}}))
"""
    import json

    out = json.loads(run_python(code).stdout.strip().splitlines()[-1])
    assert out == {
        "kinds": ["NEW_NODE", "NEW_NODE", "PREPARED_SCAN"],
        "last": "END_SCAN",
        "values": True,
        "ticks": 100,
    }
