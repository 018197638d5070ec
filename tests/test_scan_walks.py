"""Classic walks bound to one scan (BLISS's per-scan writer idiom), the walk options every
walk takes, and the node-class hooks the BLISS namespace builds on; against a real server."""

import json
import threading
import time

import numpy as np
import pytest
from conftest import eventually
from test_memory import _until
from test_subscribe import Collector, ended, publish

from databus import node
from databus._events import EventData, EventType
from databus._memory import MemoryGuard
from databus._store.wire import Link, Wire
from databus._subscribe import ChannelNode, ScanNode, SessionNode, get_scan


def kinds(events):
    return [(e.type.name, e.node.name) for e in events]


def values(events, name):
    blocks = [e.data for e in events if e.type is EventType.NEW_DATA and e.node.name == name]
    assert [b.first_index for b in blocks] == list(
        np.cumsum([0] + [b.block_size for b in blocks[:-1]])
    )
    return np.concatenate([b.data for b in blocks]).tolist() if blocks else []


def in_thread(walk):
    """Run ``walk`` (an iterator) to its end in a thread; (thread, events)."""
    events: list = []
    thread = threading.Thread(target=lambda: events.extend(walk), daemon=True)
    thread.start()
    return thread, events


WHOLE = [
    ("NEW_NODE", "axis:robz"),
    ("NEW_NODE", "simulation:gauss"),
    ("PREPARED_SCAN", "1_ascan"),
]


class TestScanWalkEvents:
    @pytest.mark.parametrize("wait", [True, False])
    def test_an_ended_scan_is_walked_whole_then_the_walk_ends(self, bus, wait):
        scan = publish(bus.session("ended"), n=6, reason="aborted")
        events = list(bus.scan(scan.key).walk_events(wait=wait))
        assert kinds(events)[:3] == WHOLE
        assert kinds(events)[-1] == ("END_SCAN", "1_ascan")
        assert events[-1].data.reason == "aborted"
        assert values(events, "axis:robz") == [i / 10 for i in range(6)]
        assert {e.type for e in events[3:-1]} == {EventType.NEW_DATA}

    def test_a_running_scan_is_followed_until_it_ends(self, bus):
        scan = publish(bus.session("running"), n=5, end=False)
        started = threading.Event()
        thread, events = in_thread(bus.scan(scan.key).walk_events(started_event=started))
        assert started.wait(5)
        for i in range(5, 30):
            scan.channels["axis:robz"].send(i / 10)
        scan.end()
        thread.join(10)
        assert not thread.is_alive(), "the walk did not end with its scan"
        assert kinds(events)[:3] == WHOLE and kinds(events)[-1] == ("END_SCAN", "1_ascan")
        assert values(events, "axis:robz") == [i / 10 for i in range(30)]

    def test_no_wait_on_a_running_scan_returns_what_exists_now(self, bus):
        scan = publish(bus.session("nowait"), n=8, end=False)
        reader = bus.scan(scan.key)
        assert eventually(lambda: len(reader.channels["simulation:gauss"]) == 8)
        events = list(reader.walk_events(wait=False))
        assert kinds(events)[:3] == WHOLE
        assert EventType.END_SCAN not in {e.type for e in events}
        assert len(values(events, "simulation:gauss")) == 8
        scan.end()

    def test_walk_yields_the_scans_channel_nodes(self, bus):
        scan = publish(bus.session("nodes"), n=2)
        nodes = list(bus.scan(scan.key).walk())
        assert [(n.name, n.type) for n in nodes] == [
            ("axis:robz", "channel"),
            ("simulation:gauss", "channel"),
        ]
        assert {n.parent.db_name for n in nodes} == {scan.key}

    def test_include_filter_channel_keeps_the_walk_ending_with_the_scan(self, bus):
        scan = publish(bus.session("chonly"), n=4, end=False)
        thread, events = in_thread(bus.scan(scan.key).walk_events(include_filter="channel"))
        scan.end()
        thread.join(10)
        assert not thread.is_alive()
        assert {e.type for e in events} == {EventType.NEW_NODE, EventType.NEW_DATA}
        assert values(events, "axis:robz") == [i / 10 for i in range(4)]

    def test_walk_on_new_events_joins_a_running_scan_whole_and_an_ended_one_at_its_end(self, bus):
        session = bus.session("new")
        running = publish(session, n=3, end=False)
        c = Collector(bus.scan(running.key).walk_on_new_events, until=ended)
        running.end()
        events = c.join()
        assert kinds(events)[:3] == WHOLE and len(values(events, "axis:robz")) == 3
        late = list(bus.scan(running.key).walk_on_new_events())
        assert kinds(late) == [("PREPARED_SCAN", "1_ascan"), ("END_SCAN", "1_ascan")]


class TestScanWalkScope:
    def test_only_the_bound_scans_streams_are_read(self, bus, monkeypatch):
        session = bus.session("scope")
        scans = [publish(session, n=3 + i) for i in range(3)]
        reads: list[str] = []
        calls: list[tuple] = []
        link_read, wire_call = Link.read, Wire.call

        def spy_read(self, streams, *args, **kwargs):
            reads.extend(streams)
            return link_read(self, streams, *args, **kwargs)

        def spy_call(self, *command):
            calls.append(command)
            return wire_call(self, *command)

        monkeypatch.setattr(Link, "read", spy_read)
        monkeypatch.setattr(Wire, "call", spy_call)
        middle = bus.scan(scans[1].key)
        events = list(middle.walk_events())
        assert {e.node.db_name for e in events if e.node.type == "scan"} == {scans[1].key}
        assert {e.node.parent.db_name for e in events if e.node.type == "channel"} == {scans[1].key}
        assert len(values(events, "axis:robz")) == 4
        assert reads and all(key.startswith(scans[1].key) for key in reads)
        touched = {str(arg) for command in calls for arg in command[1:2]}
        assert session.node.log_key not in touched
        assert not any(scan.key in key for key in touched for scan in (scans[0], scans[2]))

    def test_a_scan_evicted_while_its_walk_reads_it_ends_with_gaps(self, bus):
        """The memory guard deletes the ended scan a scan walk has begun to read: GAP
        events (``evicted``) for the rest, then END_SCAN, and the walk ends."""
        scan = bus.session("evict").create_scan(title="big")
        with scan:
            img = scan.channel("img", "uint16", (512, 1024))  # 1 MiB frames: 16 to a read
            for i in range(40):
                img.send(np.full((512, 1024), i, np.uint16))
        events = bus.scan(scan.key).walk_events()
        got = _until(events, EventType.NEW_DATA)
        assert MemoryGuard(bus, cap=2**40).check(force=True).evicted == (scan.key,)
        rest = list(events)
        points = (EventType.NEW_DATA, EventType.GAP)
        spans = [(e.data.first_index, e.data.block_size) for e in got + rest if e.type in points]
        indices = [i for first, size in spans for i in range(first, first + size)]
        assert indices == list(range(40))
        assert {e.data.reason for e in rest if e.type is EventType.GAP} == {"evicted"}
        assert rest[-1].type is EventType.END_SCAN and rest[-1].data.reason == "finished"


class TestWalkOptions:
    def test_first_index_takes_the_nodes_created_after_it(self, bus):
        session = bus.session("first")
        scan = session.create_scan(type="ascan")
        scan.channel("before", "float64")
        time.sleep(0.02)
        mark = int(time.time() * 1000)
        time.sleep(0.02)
        after = scan.channel("after", "float64")
        scan.prepare()
        after.send(1.0)
        scan.end()
        time.sleep(0.02)
        later = publish(session, n=2)
        reader = bus.scan(scan.key)
        assert kinds(reader.walk_events(first_index=mark)) == [
            ("NEW_NODE", "after"),
            ("PREPARED_SCAN", "1_ascan"),
            ("NEW_DATA", "after"),
            ("END_SCAN", "1_ascan"),
        ]
        assert [n.name for n in reader.walk(first_index=f"{mark}-0")] == ["after"]
        walk = session.node.walk(wait=False, include_filter="scan", first_index=mark)
        assert [n.db_name for n in walk] == [later.key]
        assert len(list(session.node.walk(wait=False, include_filter="scan", first_index=0))) == 2
        after_all = int(time.time() * 1000) + 1
        assert list(session.node.walk(wait=False, first_index=after_all)) == []

    @pytest.mark.parametrize("bad", [-1, "soon", b"1-x", 1.5])
    def test_a_bad_first_index_is_refused_naming_it(self, bus, bad):
        with pytest.raises(ValueError, match="first_index"):
            bus.session("x").node.walk_events(first_index=bad)

    def test_walk_from_last_yields_the_last_node_then_new_ones(self, bus):
        session = bus.session("last")
        publish(session, n=2)
        second = publish(session, n=2)
        reader = bus.scan(second.key)
        assert [n.name for n in reader.walk_from_last(wait=False)] == ["simulation:gauss"]
        assert list(reader.walk_from_last(wait=False, include_last=False)) == []
        assert [n.name for n in session.node.walk_from_last(wait=False)] == ["simulation:gauss"]
        last = session.node.walk_from_last(wait=False, include_filter="scan")
        assert [n.db_name for n in last] == [second.key]
        assert list(session.node.walk_from_last(wait=False, include_last=False)) == []

    def test_walk_from_last_without_include_last_waits_for_new_nodes(self, bus):
        session = bus.session("lastnew")
        publish(session, n=1)
        c = Collector(
            lambda **kw: session.node.walk_from_last(
                include_last=False, include_filter="scan", **kw
            ),
            until=lambda n: True,
        )
        third = publish(session, n=1)
        assert [n.db_name for n in c.join()] == [third.key]

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"exclude_existing_children": "scan"},
            {"exclude_existing_children": ("scan", "scan_group")},
            {"exclude_existing_children": True},
            {"exclude_children": "scan"},  # exclude_existing_children defaults to it
        ],
    )
    def test_exclude_existing_children_on_a_scan_leaves_its_channels_out(self, bus, kwargs):
        scan = publish(bus.session("exist"), n=3)
        events = bus.scan(scan.key).walk_events(**kwargs)
        assert [k for k, _ in kinds(events)] == ["PREPARED_SCAN", "END_SCAN"]

    def test_exclude_existing_children_that_does_not_take_the_scan_changes_nothing(self, bus):
        scan = publish(bus.session("exist2"), n=3)
        reader = bus.scan(scan.key)
        kept = list(reader.walk_events(exclude_children="scan", exclude_existing_children=False))
        assert kinds(kept)[:3] == WHOLE
        assert kinds(reader.walk_events(exclude_existing_children="channel"))[:3] == WHOLE

    def test_exclude_existing_children_by_type_skips_the_running_scans_it_takes(self, bus):
        session = bus.session("exist3")
        running = publish(session, n=2, end=False)
        skip = Collector(
            lambda **kw: session.node.walk_on_new_events(
                exclude_existing_children=("scan", "scan_group"), **kw
            ),
            until=ended,
        )
        keep = Collector(
            lambda **kw: session.node.walk_on_new_events(exclude_existing_children="channel", **kw),
            until=ended,
        )
        running.end()
        new = publish(session, n=2)
        assert {e.node.db_name for e in skip.join() if e.node.type == "scan"} == {new.key}
        assert kinds(keep.join())[0] == ("NEW_NODE", "1_ascan")

    def test_filter_with_include_filter_is_a_value_error(self, bus):
        scan = publish(bus.session("filt"), n=1)
        for walkable in (bus.session("filt").node, bus.scan(scan.key)):
            with pytest.raises(ValueError, match="include_filter"):
                walkable.walk(filter="scan", include_filter="scan")
        with pytest.warns(DeprecationWarning):
            assert [n.name for n in bus.scan(scan.key).walk(filter="channel")] == [
                "axis:robz",
                "simulation:gauss",
            ]

    def test_iterator_is_the_node_with_a_future_warning(self, bus):
        scan = publish(bus.session("iter"), n=1)
        for walkable in (bus.session("iter").node, bus.scan(scan.key)):
            with pytest.warns(FutureWarning, match="iterator"):
                it = walkable.iterator
            assert it is walkable
            assert [n.name for n in it.walk(wait=False)][-1] == "simulation:gauss"
            assert kinds(it.walk_events(wait=False))[-1] == ("END_SCAN", "1_ascan")


class TestChannelOrder:
    @pytest.mark.parametrize(
        "hint",
        [
            ["b:two", "a:one"],
            {"b:two": {"dim": 0, "display_name": "two", "unit": None}, "a:one": {"dim": 0}},
        ],
    )
    def test_channels_follow_the_info_list_or_bliss_dict(self, bus, hint):
        scan = bus.session("order").create_scan(channels=hint)
        for name in ("a:one", "b:two", "c:three"):
            scan.channel(name, "float64")
        scan.end()
        assert list(bus.scan(scan.key).channels) == ["b:two", "a:one", "c:three"]


# ------------------------------------------------------------------ node classes


class MyChannel(ChannelNode):
    def _event_data(self, data: EventData) -> EventData:
        return data._replace(data=[("tagged", float(x)) for x in data.data])


class MySession(SessionNode):
    pass


class MyScan(ScanNode):
    session_class = MySession

    def _channel_class(self, desc):
        return MyChannel


MySession.scan_class = MyScan


class TestNodeClassHooks:
    def test_a_session_subclass_gets_its_own_classes_everywhere(self, bus):
        publish(bus.session("mine"), n=2)
        session = MySession(bus, "mine")
        scans = session.scans()
        assert [type(s) for s in scans] == [MyScan]
        assert {type(c) for c in scans[0].channels.values()} == {MyChannel}
        for events in (list(session.walk_events(wait=False)), list(scans[0].walk_events())):
            scan_nodes = [e.node for e in events if e.node.type == "scan"]
            channel_nodes = [e.node for e in events if e.node.type == "channel"]
            assert channel_nodes and {type(n) for n in channel_nodes} == {MyChannel}
            assert {type(n) for n in scan_nodes} <= {MyScan}
            assert {type(n.parent) for n in channel_nodes} == {MyScan}
        walked = list(session.walk(wait=False))
        assert [type(n) for n in walked] == [MyScan, MyChannel, MyChannel]
        assert type(walked[0].parent) is MySession
        found = get_scan(bus, scans[0].key, MyScan)
        assert type(found) is MyScan and type(found.parent) is MySession
        channel = node.get_node(f"{scans[0].key}:axis:robz", bus, session_class=MySession)
        assert type(channel) is MyChannel and type(channel.parent.parent) is MySession
        assert type(node.get_node("mine", bus, session_class=MySession)) is MySession
        assert [
            type(n) for n in node.get_nodes(scans[0].key, bus=bus, session_class=MySession)
        ] == [MyScan]

    def test_the_event_data_hook_maps_new_data_as_the_walk_yields_it(self, bus):
        publish(bus.session("hook"), n=3)
        scan = MySession(bus, "hook").scans()[0]
        for events in (scan.walk_events(), scan.parent.walk_events(wait=False)):
            data = [
                e.data
                for e in events
                if e.type is EventType.NEW_DATA and e.node.name == "axis:robz"
            ]
            assert [x for d in data for x in d.data] == [("tagged", i / 10) for i in range(3)]
            assert all(isinstance(d, EventData) for d in data)
        plain = list(bus.scan(scan.key).walk_events())
        assert values(plain, "axis:robz") == [i / 10 for i in range(3)]


def test_a_scan_walk_under_gevent_monkey_patching(bus, run_python):
    # The points are sent by a greenlet that can only run while the walk's greenlet waits
    # in its read: a walk blocking the hub would never see the scan end.
    code = f"""
from gevent import monkey
monkey.patch_all()
import gevent, json, databus
bus = databus.connect({bus.url!r}, prefix={bus.settings.prefix!r})
scan = bus.session("gev").create_scan(title="g")
x = scan.channel("x", "float64")
scan.prepare()
started = gevent.event.Event()
walker = gevent.spawn(lambda: list(bus.scan(scan.key).walk_events(started_event=started)))
started.wait(5)

def publish():
    for block in range(5):
        for i in range(100):
            x.send(float(block * 100 + i))
        gevent.sleep(0.005)
    scan.end()

gevent.spawn(publish)
events = walker.get(timeout=10)
got = [float(v) for e in events if e.type is e.type.NEW_DATA for v in e.data.data]
print(json.dumps({{"kinds": [e.type.name for e in events][:2], "last": events[-1].type.name,
                   "values": got == [float(i) for i in range(500)]}}))
"""
    out = json.loads(run_python(code).stdout.strip().splitlines()[-1])
    assert out == {"kinds": ["NEW_NODE", "PREPARED_SCAN"], "last": "END_SCAN", "values": True}
