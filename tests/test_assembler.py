"""The assembler's ordering rules, from recorded entry lists; no server."""

import numpy as np
import pytest
from conftest import stored

from databus import _encoding as enc
from databus._assembler import Assembler
from databus._errors import CorruptEntry
from databus._events import EventType, ScanEnd
from databus._store import keys

SLOG = "p:session:{s}:log"
SCAN = keys.scan("p", "s", 1)
SCAN_LOG = keys.scan_log(SCAN)


class FakeNode:
    def __init__(self, type_, name):
        self.type, self.name, self.db_name = type_, name, name

    def __repr__(self):
        return self.name


def record(*channels):
    rec = {b"number": b"1", b"info": enc.pack_meta({})}
    for desc in channels:
        rec[f"ch:{desc.name}".encode()] = desc.to_meta()
    return rec


def make(include=None, descend=lambda n: True, data=True):
    from databus._assembler import make_filter

    return Assembler(
        SLOG,
        make_scan=lambda key, rec: FakeNode("scan", key),
        make_channel=lambda scan, desc: FakeNode("channel", desc.name),
        wants=make_filter(include),
        descend=descend,
        data=data,
    )


X = enc.Descriptor.create("x", "float64")
IMG = enc.Descriptor.create("img", "uint8", (3 * enc.ENTRY_BYTES // 2,))


def log(i, event, **fields):
    return (
        f"{i}-0".encode(),
        {b"event": event.encode(), **{k.encode(): v.encode() for k, v in fields.items()}},
    )


def kinds(events):
    return [(e.type.name, e.node.name) for e in events]


def test_a_scan_in_order_and_streams_follow_the_state():
    asm = make()
    recs = {SCAN: record(X)}
    ev = asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    assert kinds(ev) == [("NEW_NODE", SCAN)]
    ev = asm.feed([(SCAN_LOG, [log(1, "created"), log(2, "channel", name="x")])], recs)
    assert kinds(ev) == [("NEW_NODE", "x")]
    xkey = keys.channel(SCAN, "x")
    assert xkey not in asm.streams()  # no data before PREPARED_SCAN
    ev = asm.feed([(SCAN_LOG, [log(3, "prepared")])], recs)
    assert kinds(ev) == [("PREPARED_SCAN", SCAN)] and asm.streams()[xkey] == "0-0"
    data = stored(enc.block_entries(X, 0, np.arange(5.0))) + stored(
        enc.block_entries(X, 5, np.arange(5.0, 8))
    )
    ev = asm.feed([(xkey, data)], recs)
    assert kinds(ev) == [("NEW_DATA", "x")]  # one event per channel per batch
    assert ev[0].data.first_index == 0 and ev[0].data.block_size == 8
    assert ev[0].data.data.tolist() == list(range(8)) and ev[0].data.description["dtype"] == "<f8"
    # "ended" comes, but the channel has not been read to its seal: END_SCAN waits.
    ev = asm.feed([(SCAN_LOG, [log(4, "ended", reason="stopped")])], recs)
    assert ev == [] and asm.active == 1
    ev = asm.feed([(xkey, stored([(enc.SEAL_ID, enc.seal_fields(8))]))], recs)
    assert kinds(ev) == [("END_SCAN", SCAN)] and ev[0].data == ScanEnd("stopped", None)
    assert asm.streams() == {SLOG: "1-0"} and asm.active == 0  # the scan's streams released


def test_reply_order_is_session_log_then_scan_logs_then_channels():
    asm = make()
    recs = {SCAN: record(X)}
    asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    asm.feed([(SCAN_LOG, [log(2, "channel", name="x"), log(3, "prepared")])], recs)
    xkey = keys.channel(SCAN, "x")
    reply = [
        (
            xkey,
            stored(enc.block_entries(X, 0, np.ones(2)))
            + stored([(enc.SEAL_ID, enc.seal_fields(2))]),
        ),
        (SCAN_LOG, [log(4, "ended", reason="failed", error="boom")]),
    ]
    ev = asm.feed(reply, recs)
    assert kinds(ev) == [("NEW_DATA", "x"), ("END_SCAN", SCAN)]
    assert ev[-1].data == ScanEnd("failed", "boom")


def test_include_filter_scan_reads_no_channel_stream():
    asm = make(include="scan")
    recs = {SCAN: record(X)}
    events = asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    events += asm.feed([(SCAN_LOG, [log(2, "channel", name="x"), log(3, "prepared")])], recs)
    assert keys.channel(SCAN, "x") not in asm.streams()
    events += asm.feed([(SCAN_LOG, [log(4, "ended", reason="finished")])], recs)
    assert kinds(events) == [("NEW_NODE", SCAN), ("PREPARED_SCAN", SCAN), ("END_SCAN", SCAN)]


def test_excluded_children_and_callable_filters():
    asm = make(include=lambda n: n.type == "channel", descend=lambda n: True)
    recs = {SCAN: record(X)}
    ev = asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    ev += asm.feed([(SCAN_LOG, [log(2, "channel", name="x"), log(3, "prepared")])], recs)
    assert kinds(ev) == [("NEW_NODE", "x")]
    asm = make(descend=lambda n: n.type != "scan")
    ev = asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    ev += asm.feed([(SCAN_LOG, [log(2, "channel", name="x"), log(3, "prepared")])], recs)
    assert kinds(ev) == [("NEW_NODE", SCAN), ("PREPARED_SCAN", SCAN)]


def test_a_corrupt_entry_is_skipped_and_the_walk_goes_on():
    asm = make()
    recs = {SCAN: record(X)}
    asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    asm.feed([(SCAN_LOG, [log(2, "channel", name="x"), log(3, "prepared")])], recs)
    xkey = keys.channel(SCAN, "x")
    good1 = stored(enc.block_entries(X, 0, np.ones(2)))
    bad = [(b"2-1", {b"d": b"\x00" * 5, b"n": b"1"})]
    good2 = stored(enc.block_entries(X, 3, np.ones(2)))
    ev = asm.feed([(xkey, good1 + bad + good2)], recs)
    assert [(e.data.first_index, e.data.block_size) for e in ev] == [(0, 2), (3, 2)]
    assert asm.skipped[0][:2] == (xkey, "2-1") and "cannot decode" in asm.skipped[0][2]
    assert asm.streams()[xkey] == "3-1"


def test_an_incomplete_split_point_is_read_again():
    asm = make()
    recs = {SCAN: record(IMG)}
    asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    asm.feed([(SCAN_LOG, [log(2, "channel", name="img"), log(3, "prepared")])], recs)
    key = keys.channel(SCAN, "img")
    parts = stored(enc.block_entries(IMG, 0, np.ones((2, *IMG.shape), np.uint8)))
    assert [p[0] for p in parts] == [b"0-1", b"0-2", b"1-1", b"1-2"]
    ev = asm.feed([(key, parts[:3])], recs)
    assert [(e.data.first_index, e.data.block_size) for e in ev] == [(0, 1)]
    assert asm.streams()[key] == "1-0"  # so the next XREAD returns 1-1 and 1-2
    ev = asm.feed([(key, parts[2:])], recs)
    assert [(e.data.first_index, e.data.block_size) for e in ev] == [(1, 1)]


def test_a_lossy_gap_splits_the_data_event():
    asm = make()
    recs = {SCAN: record(X)}
    asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    asm.feed([(SCAN_LOG, [log(2, "channel", name="x"), log(3, "prepared")])], recs)
    xkey = keys.channel(SCAN, "x")
    entries = stored(enc.block_entries(X, 0, np.ones(2))) + stored(
        enc.block_entries(X, 5, np.ones(3))
    )
    ev = asm.feed([(xkey, entries)], recs)
    assert [(e.data.first_index, e.data.block_size) for e in ev] == [(0, 2), (5, 3)]


def span(event):
    """(first index, points) of a NEW_DATA or GAP event."""
    return event.data.first_index, event.data.block_size


def test_gap_markers_become_gap_events_for_what_this_reader_missed_only():
    asm = make()
    recs = {SCAN: record(X)}
    asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    asm.feed([(SCAN_LOG, [log(2, "channel", name="x"), log(3, "prepared")])], recs)
    xkey = keys.channel(SCAN, "x")
    ev = asm.feed(
        [
            (
                xkey,
                stored(enc.block_entries(X, 0, np.ones(2)))
                + stored([enc.gap_entry(2, 5, enc.GAP_DROPPED)])
                + stored(enc.block_entries(X, 5, np.ones(3))),
            )
        ],
        recs,
    )
    assert [(e.type.name, span(e)) for e in ev] == [
        ("NEW_DATA", (0, 2)),
        ("GAP", (2, 3)),
        ("NEW_DATA", (5, 3)),
    ]
    assert ev[1].data.reason == "dropped"
    # The server restarted empty: its marker covers 0..11, of which this reader has 0..7.
    lost = stored([enc.gap_entry(0, 12, enc.GAP_SERVER_LOST)])
    ev = asm.feed([(xkey, lost + stored(enc.block_entries(X, 12, np.ones(1))))], recs)
    assert [(e.type.name, span(e)) for e in ev] == [("GAP", (8, 4)), ("NEW_DATA", (12, 1))]
    assert ev[0].data.reason == "server lost"
    # A marker over points this reader already has yields nothing.
    assert asm.feed([(xkey, stored([enc.gap_entry(0, 13, enc.GAP_SERVER_LOST)]))], recs) == []


def test_a_scan_whose_keys_vanished_ends_as_lost():
    asm = make()
    recs = {SCAN: record(X)}
    asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    asm.feed([(SCAN_LOG, [log(2, "channel", name="x"), log(3, "prepared")])], recs)
    ev = asm.lost(SCAN, "publisher gone")
    assert kinds(ev) == [("END_SCAN", SCAN)] and ev[0].data == ScanEnd("lost", "publisher gone")
    assert asm.streams() == {SLOG: "1-0"}


def evicted(i, channels, **fields):
    entry_id, f = log(i, "evicted", scan=SCAN, **fields)
    return entry_id, {**f, b"channels": enc.pack_meta(channels)}


def test_an_evicted_scan_ends_with_gaps_for_what_was_not_read():
    asm = make()
    recs = {SCAN: record(X)}
    asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], recs)
    asm.feed([(SCAN_LOG, [log(2, "channel", name="x"), log(3, "prepared")])], recs)
    xkey = keys.channel(SCAN, "x")
    asm.feed([(xkey, stored(enc.block_entries(X, 0, np.ones(4))))], recs)
    # Evicted when x had 10 points; img was declared after this walk's last scan-log read.
    channels = {"x": [10, X.to_meta()], "img": [3, IMG.to_meta()]}
    ev = asm.feed([(SLOG, [evicted(4, channels, reason="stopped", error="by hand")])], recs)
    assert [(e.type.name, e.node.name) for e in ev] == [
        ("NEW_NODE", "img"),
        ("GAP", "x"),
        ("GAP", "img"),
        ("END_SCAN", SCAN),
    ]
    assert [span(e) for e in ev[1:3]] == [(4, 6), (0, 3)]
    assert {e.data.reason for e in ev[1:3]} == {"evicted"}
    assert ev[-1].data == ScanEnd("stopped", "by hand")
    assert asm.streams() == {SLOG: "4-0"} and asm.active == 0


def test_an_unreadable_evicted_entry_ends_the_scan_as_lost():
    asm = make()
    asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], {SCAN: record(X)})
    bad = (b"2-0", {b"event": b"evicted", b"scan": SCAN.encode(), b"channels": b"\xc1"})
    ev = asm.feed([(SLOG, [bad])], {})
    assert kinds(ev) == [("END_SCAN", SCAN)] and ev[0].data.reason == "lost"
    assert "bad 'evicted' entry" in asm.skipped[0][2]


def test_an_expired_scan_is_ignored_and_unknown_log_events_are_skipped():
    asm = make()
    assert asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], {SCAN: {}}) == []
    asm = make()
    asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], {SCAN: record(X)})
    assert asm.feed([(SCAN_LOG, [log(2, "bogus")])], {}) == []
    assert "unknown log event 'bogus'" in asm.skipped[0][2]


@pytest.mark.parametrize("member", list(EventType))
def test_event_type_members_reach_each_other_as_in_bliss_scripts(member):
    assert member.NEW_NODE is EventType.NEW_NODE
    assert EventType.NEW_DATA_IN_CHANNEL is EventType.NEW_DATA


def test_poison_log_entries_and_records_are_skipped_once_and_the_next_scan_followed():
    def make_scan(key, rec):
        if rec.get(b"number") == b"abc":
            raise CorruptEntry(f"scan record {key}: field 'number' = b'abc' cannot be read")
        return FakeNode("scan", key)

    asm = Assembler(
        SLOG,
        make_scan=make_scan,
        make_channel=lambda scan, desc: FakeNode("channel", desc.name),
        wants=lambda node: True,
        descend=lambda node: True,
    )
    bad = keys.scan("p", "s", 2)
    entries = [
        (b"1-0", {b"event": b"created", b"scan": b"\xff"}),
        log(2, "created", scan=bad),
        log(3, "created", scan=SCAN),
    ]
    assert asm.records_needed([(SLOG, entries)]) == {bad, SCAN}
    ev = asm.feed([(SLOG, entries)], {bad: {b"number": b"abc"}, SCAN: record(X)})
    assert kinds(ev) == [("NEW_NODE", SCAN)] and asm.streams()[SLOG] == "3-0"
    asm.records_needed([(SLOG, entries)])  # the same entries read again: noted once
    assert [s[:2] for s in asm.skipped] == [(SLOG, "1-0"), (SLOG, "2-0")]
    assert "'scan' is not UTF-8" in asm.skipped[0][2] and "'number'" in asm.skipped[1][2]
    ev = asm.feed([(SCAN_LOG, [(b"4-0", {b"event": b"\xff"}), log(5, "ended")])], {})
    assert kinds(ev) == [("END_SCAN", SCAN)] and asm.skipped[-1][:2] == (SCAN_LOG, "4-0")


def test_a_created_entry_without_its_record_is_read_again():
    asm = make()
    assert asm.feed([(SLOG, [log(1, "created", scan=SCAN)])], {}) == []
    assert asm.streams()[SLOG] == "0-0"
