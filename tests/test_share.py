"""Point shares: every point of a channel claimed by exactly one member of a group, across
scans, members, restarts and stalled members."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import databus


def _scan(bus, session="s", channel="det:image", shape=(4, 4), dtype="uint16"):
    scan = bus.session(session).create_scan({"title": "frames"})
    ch = scan.channel(channel, dtype, shape)
    scan.prepare()
    scan.start()
    return scan, ch


def _frame(index, shape=(4, 4), dtype="uint16"):
    return np.full(shape, index, dtype)


def _drain(share, timeout=0.3):
    """(scan number, index) of every point claimed until nothing came for ``timeout`` s."""
    got = []
    while (claim := share.claim(timeout=timeout)) is not None:
        got += [(claim.scan.number, i) for i in claim.indices]
        share.done(claim)
    return got


def test_two_members_share_two_scans_each_point_once(bus):
    session = bus.session("s")
    a = session.share("det:image", "crystfel", consumer="a")
    b = session.share("det:image", "crystfel", consumer="b")
    got = {"a": [], "b": []}
    stop = threading.Event()

    def member(name, share):
        while not stop.is_set():
            claim = share.claim(timeout=0.05)
            if claim is None:
                continue
            for i in claim.indices:
                frame = claim.channel.get(i)
                assert (frame == i).all()  # the point claimed is the point read
                got[name].append((claim.scan.number, i))
            share.done(claim)

    threads = [threading.Thread(target=member, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    numbers = []
    for _ in range(2):
        scan, ch = _scan(bus)
        numbers.append(scan.number)
        for i in range(150):
            ch.send(_frame(i))
            if i % 10 == 0:
                time.sleep(0.002)
        scan.end()
    expected = {(n, i) for n in numbers for i in range(150)}
    deadline = time.monotonic() + 10
    while len(got["a"]) + len(got["b"]) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    every = got["a"] + got["b"]
    assert len(every) == len(set(every))  # nothing twice
    assert set(every) == expected  # nothing skipped
    assert got["a"] and got["b"]  # both worked
    stats = a.statistics()
    assert stats.claimed == stats.done == len(got["a"])
    a.close()
    b.close()


def test_a_frame_split_into_parts_is_claimed_whole(bus):
    shape = (1024, 1024)
    scan, ch = _scan(bus, shape=shape, dtype="uint32")  # 4 MiB: three entries per frame
    with bus.session("s").share("det:image", "g", consumer="a") as share:
        for i in range(3):
            ch.send(_frame(i, shape, "uint32"))
        scan.end()
        claims = []
        while (claim := share.claim(timeout=0.3)) is not None:
            claims.append(claim)
            assert (claim.channel.get(claim.first) == claim.first).all()
            share.done(claim)
    assert [(c.first, c.stop) for c in claims] == [(0, 1), (1, 2), (2, 3)]


def test_batch_claims_ranges_of_at_most_batch_points(bus):
    scan, ch = _scan(bus)
    ch.send(np.stack([_frame(i) for i in range(10)]))
    scan.end()
    with bus.session("s").share("det:image", "g", batch=4, first_scan=scan.number) as share:
        ranges = []
        while (claim := share.claim(timeout=0.3)) is not None:
            ranges.append((claim.first, claim.stop))
            share.done(claim)
    assert ranges == [(0, 4), (4, 8), (8, 10)]


def test_a_restarted_member_gets_its_unacknowledged_claims_first(bus):
    scan, ch = _scan(bus)
    for i in range(6):
        ch.send(_frame(i))
    scan.end()
    first = bus.session("s").share("det:image", "g", consumer="bridge-1", first_scan=1)
    held = [first.claim(timeout=1) for _ in range(2)]  # claimed, never served: it "died"
    first.close()
    again = bus.session("s").share("det:image", "g", consumer="bridge-1")
    got = _drain(again)
    assert [i for _, i in got] == [c.first for c in held] + [2, 3, 4, 5]
    assert again.statistics().resumed == 2
    again.close()


def test_a_stalled_members_claim_is_taken_over_after_claim_after(bus):
    scan, ch = _scan(bus)
    ch.send(_frame(0))
    ch.send(_frame(1))
    scan.end()
    stalled = bus.session("s").share("det:image", "g", consumer="stalled", first_scan=1)
    held = stalled.claim(timeout=1)
    assert held is not None and held.first == 0
    other = bus.session("s").share("det:image", "g", consumer="other", claim_after=0.2)
    t0 = time.monotonic()
    got = _drain(other, timeout=1.0)
    assert sorted(i for _, i in got) == [0, 1]
    assert time.monotonic() - t0 >= 0.2
    assert other.statistics().taken_over == 1
    stalled.close()
    other.close()


def test_a_new_group_starts_at_the_running_scan_and_an_old_one_resumes(bus):
    session = bus.session("s")
    old, old_ch = _scan(bus)
    old_ch.send(_frame(0))
    old.end()
    running, ch = _scan(bus)
    ch.send(_frame(0))
    ch.send(_frame(1))
    share = session.share("det:image", "g", consumer="a")
    ch.send(_frame(2))
    running.end()
    assert _drain(share) == [(running.number, 0), (running.number, 1), (running.number, 2)]
    share.close()
    # a scan that ran while no member was up is served when one comes back
    missed, missed_ch = _scan(bus)
    missed_ch.send(_frame(0))
    missed.end()
    with session.share("det:image", "g", consumer="a") as back:
        assert _drain(back) == [(missed.number, 0)]


def test_only_the_sessions_scans_and_new_ones_are_served(bus):
    share = bus.session("s").share("det:image", "g")
    other, other_ch = _scan(bus, session="other")
    other_ch.send(_frame(0))
    other.end()
    scan, ch = _scan(bus)
    ch.send(_frame(7))
    scan.end()
    claims = []
    while (claim := share.claim(timeout=0.3)) is not None:
        claims.append(claim)
        share.done(claim)
    assert [(c.scan.key, c.first) for c in claims] == [(scan.key, 0)]
    share.close()


def test_claim_waits_for_points_to_come(bus):
    scan, ch = _scan(bus)
    share = bus.session("s").share("det:image", "g")
    assert share.claim(timeout=0) is None
    timer = threading.Timer(0.2, ch.send, args=(_frame(0),))
    timer.start()
    t0 = time.monotonic()
    claim = share.claim(timeout=5)
    assert claim is not None and claim.first == 0
    assert 0.15 < time.monotonic() - t0 < 2
    timer.join()
    scan.end()
    share.close()


def test_acknowledged_items_are_trimmed_and_stalled_ones_taken_over(any_bus):
    bus = any_bus  # Valkey and Redis 7.0: XAUTOCLAIM, XINFO GROUPS in a script
    scan, ch = _scan(bus, shape=())
    ch.send(np.arange(2500, dtype="uint16"))
    scan.end()
    stalled = bus.session("s").share("det:image", "g", consumer="x", first_scan=scan.number)
    assert stalled.claim(timeout=1).first == 0
    share = bus.session("s").share("det:image", "g", claim_after=0.1)
    got = _drain(share)
    assert sorted(i for _, i in got) == list(range(2500))
    assert share.statistics().taken_over == 1
    assert bus.redis.xlen(share.key) < 1000
    share.close()
    stalled.close()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"batch": 0}, ValueError),
        ({"batch": 1.5}, ValueError),
        ({"claim_after": 0}, ValueError),
        ({"first_scan": "1"}, ValueError),
        ({"consumer": ""}, databus.InvalidName),
    ],
)
def test_bad_arguments_are_refused_by_name(bus, kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs)) if error is ValueError else "consumer"):
        bus.session("s").share("det:image", "g", **kwargs)


def test_a_bad_group_name_is_refused(bus):
    with pytest.raises(databus.InvalidName, match="share group"):
        bus.session("s").share("det:image", "")


def test_a_slow_claim_is_never_taken_back_by_its_own_member(bus):
    scan, ch = _scan(bus)
    for i in range(3):
        ch.send(_frame(i))
    scan.end()
    share = bus.session("s").share("det:image", "g", claim_after=0.1, first_scan=scan.number)
    slow = share.claim(timeout=1)
    time.sleep(0.3)  # longer than claim_after: its own claim stays its own
    assert [share.claim(timeout=1).first for _ in range(2)] == [1, 2]
    assert share.claim(timeout=0.3) is None
    share.done(slow)
    assert share.statistics().taken_over == 0
    share.close()


def test_results_are_recorded_with_their_claims_and_read_once_in_order(bus, admin):
    scan, ch = _scan(bus, shape=())
    session = bus.session("s")
    workers = [session.share("det:image", "g", consumer=c, batch=3) for c in ("a", "b")]
    ch.send(np.arange(10, dtype="uint16"))
    scan.end()
    for turn in range(10):
        claim = workers[turn % 2].claim(timeout=0.5)
        if claim is None:
            break
        data = None if claim.first == 3 else f"{claim.first}-{claim.stop}".encode()
        workers[turn % 2].record(claim, data)
    with session.share_results("g") as results:
        got = results.read(timeout=1)
        assert [(r.scan, r.first, r.stop, r.data) for r in got] == [
            (scan.key, 0, 3, b"0-3"),
            (scan.key, 3, 6, None),
            (scan.key, 6, 9, b"6-9"),
            (scan.key, 9, 10, b"9-10"),
        ]
        assert results.read(timeout=0.1) == []  # each once
        results.trim()
    assert admin.xlen(workers[0].key + ":results") == 1  # the last one read stays
    assert workers[0].statistics().done + workers[1].statistics().done == 4
    for w in workers:
        w.close()


def test_a_claim_whose_member_died_unrecorded_is_recorded_once_by_another(bus):
    scan, ch = _scan(bus, shape=())
    ch.send(np.arange(4, dtype="uint16"))
    scan.end()
    session = bus.session("s")
    dead = session.share("det:image", "g", consumer="dead", first_scan=scan.number)
    assert dead.claim(timeout=1).first == 0  # taken, never recorded: the member dies
    live = session.share("det:image", "g", consumer="live", claim_after=0.1)
    while (claim := live.claim(timeout=0.5)) is not None:
        live.record(claim, b"%d" % claim.first)
    got = session.share_results("g").read(timeout=1)
    assert sorted(int(r.data) for r in got) == [0, 1, 2, 3]
    live.close()
    dead.close()
