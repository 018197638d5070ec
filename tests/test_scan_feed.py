"""The feed of new scans across sessions: ``Bus.last_scan_tag``, ``next_scan``, ``find_scans``."""

import threading

import pytest

import databus
from databus._store import commands, keys


def _scan(bus, session, **info):
    scan = bus.session(session).create_scan(info)
    scan.end()
    return scan


def test_the_feed_entry_is_written_with_the_scan_capped_and_expiring():
    made = commands.create_scan(
        "p", "s", 3, b"\x80", 100.0, 100.0, running_ttl=60, retention_ttl=3600, feed_length=50
    )
    (add,) = [c for c in made if c[0] == "XADD" and c[1] == keys.feed("p")]
    assert add[2:6] == ("MAXLEN", "~", 50, "*")
    fields = dict(zip(add[6::2], add[7::2], strict=True))
    assert (fields["scan"], fields["session"], fields["number"]) == (keys.scan("p", "s", 3), "s", 3)
    assert ("PEXPIRE", keys.feed("p"), 3_600_000) in made


def test_next_scan_follows_every_session_in_creation_order_and_resumes(bus):
    assert bus.last_scan_tag() == "0-0"
    made = [_scan(bus, session, title=f"t{i}") for i, session in enumerate("abab")]
    tag, seen = "0-0", []
    for _ in made:
        tag, node = bus.next_scan(since=tag, timeout=0)
        seen.append(node.db_name)
    assert seen == [s.key for s in made]
    assert tag == bus.last_scan_tag()
    with pytest.raises(databus.ReadTimeout):
        bus.next_scan(since=tag, timeout=0)
    # resuming from the second scan's tag gives the third
    second, _ = bus.next_scan(since="0-0", timeout=0)
    second, _ = bus.next_scan(since=second, timeout=0)
    assert bus.next_scan(since=second, timeout=0)[1].db_name == made[2].key


def test_next_scan_from_now_waits_for_the_next_scan(bus):
    _scan(bus, "old")
    with pytest.raises(databus.ReadTimeout):
        bus.next_scan(timeout=0)  # from now: the scan made before does not count
    got = []
    waiter = threading.Thread(target=lambda: got.append(bus.next_scan(timeout=10)))
    waiter.start()
    made = []
    while not got and len(made) < 100:  # until the waiter, wherever it starts, gets one
        made.append(_scan(bus, "new", title="awaited").key)
        waiter.join(0.05)
    waiter.join(10)
    ((tag, node),) = got
    assert node.db_name in made and node.info["title"] == "awaited"
    made.append(_scan(bus, "new").key)
    assert bus.next_scan(since=tag, timeout=0)[1].db_name == made[made.index(node.db_name) + 1]


def test_a_timeout_raises_read_timeout(bus):
    with pytest.raises(databus.ReadTimeout, match=r"within 0\.05 s"):
        bus.next_scan(since="0-0", timeout=0.05)


def test_scans_already_gone_are_skipped(bus, admin):
    made = [_scan(bus, "s") for _ in range(5)]
    for gone in (made[0], made[2], made[4]):
        admin.unlink(gone.key)
    tag, node = bus.next_scan(since="0-0", timeout=0)
    assert node.db_name == made[1].key
    tag, node = bus.next_scan(since=tag, timeout=1)
    assert node.db_name == made[3].key
    with pytest.raises(databus.ReadTimeout):
        bus.next_scan(since=tag, timeout=0)  # the last one is gone too


def test_bad_arguments_are_named(bus):
    with pytest.raises(ValueError, match="since must be a tag"):
        bus.next_scan(since="yesterday", timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        bus.next_scan(timeout=-1)
    with pytest.raises(TypeError, match="number is a scan number"):
        bus.find_scans(number="3")


def test_find_scans_matches_session_number_and_info(bus):
    for i in range(6):
        _scan(bus, f"session{i % 2}", type="ascan" if i < 4 else "dscan", title=f"scan {i}")
    keys_of = lambda found: [bus.scan(k).info["title"] for k in found[1]]  # noqa: E731
    assert keys_of(bus.find_scans()) == [f"scan {i}" for i in range(6)]
    assert keys_of(bus.find_scans(session="session1")) == ["scan 1", "scan 3", "scan 5"]
    assert keys_of(bus.find_scans(session="session*", type="dscan")) == ["scan 4", "scan 5"]
    assert keys_of(bus.find_scans(session="session0", number=2)) == ["scan 2"]
    assert keys_of(bus.find_scans(title="*n 3")) == ["scan 3"]
    assert keys_of(bus.find_scans(title="scan*", type="a*")) == [f"scan {i}" for i in range(4)]
    assert bus.find_scans(type="scan*")[1] == []  # no wildcard in the value: equality
    assert bus.find_scans(missing_field=1)[1] == []


def test_find_scans_leaves_out_scans_that_are_gone(bus, admin):
    kept, gone = _scan(bus, "s", type="a"), _scan(bus, "s", type="a")
    admin.unlink(gone.key)
    assert bus.find_scans()[1] == [kept.key]
    assert bus.find_scans(type="a")[1] == [kept.key]


def test_the_search_tag_resumes_right_after_the_search(bus):
    assert bus.find_scans() == ("0-0", [])
    before = _scan(bus, "s")
    tag, found = bus.find_scans()
    assert found == [before.key] and tag == bus.last_scan_tag()
    after = _scan(bus, "s")
    assert bus.next_scan(since=tag, timeout=0)[1].db_name == after.key


def test_the_search_and_its_tag_agree(bus):
    """Scans created while searching are either found with a tag after them or come
    from next_scan(since=tag): never both, never neither."""
    stop = threading.Event()

    def create():
        while not stop.is_set():
            _scan(bus, "busy")

    maker = threading.Thread(target=create)
    maker.start()
    try:
        for _ in range(20):
            tag, found = bus.find_scans()
            after = bus.find_scans()[1]
            assert after[: len(found)] == found
            for expected in after[len(found) :]:
                tag, node = bus.next_scan(since=tag, timeout=5)
                assert node.db_name == expected
    finally:
        stop.set()
        maker.join()


def test_a_read_only_user_follows_and_searches_the_feed(bus, make_bus, admin, valkey_server):
    admin.acl_setuser(
        "feedreader",
        enabled=True,
        passwords=["+r3ad"],
        keys=["~*"],
        commands=["+@read", "+@connection", "-@write", "-@scripting"],
    )
    try:
        db = make_bus.url.rpartition("db=")[2]
        url = f"redis://feedreader:r3ad@127.0.0.1:{valkey_server.port}/{db}"
        reader = databus.connect(url, prefix=bus.settings.prefix)
        made = _scan(bus, "s", type="a")
        tag, found = reader.find_scans(type="a")
        assert found == [made.key] and tag == reader.last_scan_tag()
        later = _scan(bus, "s")
        assert reader.next_scan(since=tag, timeout=0)[1].db_name == later.key
        reader.close()
    finally:
        admin.acl_deluser("feedreader")
