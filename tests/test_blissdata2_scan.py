"""blissdata 2.x's scan and search tests (2.4.5's ``tests/redis_engine/test_scan.py`` and
``test_search.py``), written again against ``databus.blissdata``.

Ported (the behaviour, through the public API): test_creation, test_state_transition,
test_forbidden_state_transition; test_search_empty_db, test_search_all_scans,
test_search_specific_scans (identity kept in the scan info), test_get_next_scan_empty_db,
test_get_next_scan_missed, test_get_next_scan_blocking (a timetag taken first instead of
MONITOR, which our ACL user may not run), test_get_next_scan_skip_deleted,
test_get_last_scan, test_get_last_scan_empty_db, test_get_last_scan_deleted,
test_get_last_scan_skip_deleted ("deleted": the scan's keys removed, as when they expire
or the memory guard evicts the scan).

Not ported: test_deletion and test_get_next_scan_deleted's ``delete_scan`` (no deletion
API: ended scans expire or the memory guard evicts them; the skip is tested with removed
keys); test_json_size_exception (our limit is ``Settings.max_info_bytes``, raising
``MetadataError``: tests/test_publish.py); test_distributed_stream_publishing
(``get_writer_stream``: one stream written from several processes is not supported, a
channel has one writer).
"""

from __future__ import annotations

import threading

import pytest

import databus
from databus.blissdata import DataStore, ScanState
from databus.blissdata.exceptions import (
    NoScanAvailable,
    NoWritePermission,
    ScanNotFoundError,
    UnauthorizeStateTransition,
)
from databus.blissdata.streams.default import Stream

DUMMY_ID = {
    "name": "dummy_scan",
    "number": 42,
    "data_policy": "dummy_policy",
    "session": "dummy_session",
    "proposal": "dummy_proposal",
    "collection": "dummy_collection",
    "dataset": "dummy_dataset",
}


@pytest.fixture
def data_store(bus):
    """A store on the test's bus; the scans a test leaves open are closed after it."""
    store = DataStore(bus)
    made = []
    create = store.create_scan

    def create_scan(*args, **kwargs):
        made.append(create(*args, **kwargs))
        return made[-1]

    store.create_scan = create_scan
    yield store
    for scan in made:
        if scan.state < ScanState.CLOSED:
            scan.close()


def _delete(admin, key):
    """Remove a scan's record, as its expiry or the memory guard would."""
    admin.delete(key)


def test_creation(data_store):
    rw_scan = data_store.create_scan(DUMMY_ID)
    ro_scan = data_store.load_scan(rw_scan.key)
    assert ro_scan.state is ScanState.CREATED
    for key, val in DUMMY_ID.items():
        assert getattr(ro_scan, key) == val
        assert getattr(rw_scan, key) == val
    assert ro_scan.path is None
    rw_scan.close()


def test_identity_is_checked(data_store):
    with pytest.raises(ValueError, match="missing number"):
        data_store.create_scan({"name": "x", "data_policy": "none"})
    with pytest.raises(ValueError, match="unknown field"):
        data_store.create_scan({**DUMMY_ID, "sample": "x"})
    with pytest.raises(TypeError, match="number must be an int"):
        data_store.create_scan({**DUMMY_ID, "number": "42"})


def test_state_transition(data_store):
    rw_scan = data_store.create_scan(DUMMY_ID)
    ro_scan = data_store.load_scan(rw_scan.key)
    assert ro_scan.state is ScanState.CREATED

    rw_scan.prepare()

    # ro_scan is not aware of the change until it updates
    assert ro_scan.state is ScanState.CREATED
    assert ro_scan.update()
    assert ro_scan.state is ScanState.PREPARED
    rw_scan.close()


def test_forbidden_state_transition(data_store):
    rw_scan = data_store.create_scan(DUMMY_ID)
    ro_scan = data_store.load_scan(rw_scan.key)
    assert ro_scan.state is ScanState.CREATED

    with pytest.raises(UnauthorizeStateTransition, match="from CREATED to STOPPED"):
        rw_scan.stop()

    # transition blocked, nothing has changed
    assert ro_scan.state is ScanState.CREATED
    assert not ro_scan.update(timeout=0.1)
    assert ro_scan.state is ScanState.CREATED
    rw_scan.close()


def test_every_state_is_seen_by_a_blocking_reader(data_store):
    rw_scan = data_store.create_scan(DUMMY_ID, info={"title": "t"})
    rw_scan.create_stream(Stream.make_definition("x", "float64"))
    ro_scan = data_store.load_scan(rw_scan.key)
    seen = []

    def follow():
        while ro_scan.state < ScanState.CLOSED:
            if ro_scan.update(timeout=10):
                seen.append(ro_scan.state)

    reader = threading.Thread(target=follow)
    reader.start()
    for step in (rw_scan.prepare, rw_scan.start, rw_scan.stop):
        step()
        target = rw_scan.state
        while not seen or seen[-1] < target:
            reader.join(0.01)
    rw_scan.info["end_reason"] = "SUCCESS"
    rw_scan.close()
    reader.join(10)
    assert seen == [ScanState.PREPARED, ScanState.STARTED, ScanState.STOPPED, ScanState.CLOSED]
    assert ro_scan.info["end_reason"] == "SUCCESS"
    assert ro_scan.node.end_reason == "finished"
    assert list(ro_scan.streams) == ["x"]


def test_info_set_before_close_and_end_reasons(data_store):
    rw_scan = data_store.create_scan(DUMMY_ID, info={"title": "a"})
    rw_scan.info = {"title": "b", "npoints": 3}
    rw_scan.prepare()
    ro_scan = data_store.load_scan(rw_scan.key)
    assert ro_scan.info["title"] == "b" and ro_scan.name == "dummy_scan"
    rw_scan.start()
    rw_scan.info["end_reason"] = "USER_ABORT"
    rw_scan.close()
    assert ro_scan.update(block=False) and ro_scan.state is ScanState.CLOSED
    assert ro_scan.info["end_reason"] == "USER_ABORT"
    assert ro_scan.node.end_reason == "interrupted"
    assert not ro_scan.update()  # closed: returns at once


def test_a_reader_cannot_write(data_store):
    rw_scan = data_store.create_scan(DUMMY_ID)
    ro_scan = data_store.load_scan(rw_scan.key)
    with pytest.raises(NoWritePermission):
        ro_scan.prepare()
    with pytest.raises(NoWritePermission):
        ro_scan.info = {}
    rw_scan.close()


def test_load_unknown_scan(data_store, bus):
    with pytest.raises(ScanNotFoundError):
        data_store.load_scan(bus.key("nobody", 1))
    with pytest.raises(databus.UnknownScan):  # our error too
        data_store.load_scan("not a key")


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("finished", "SUCCESS"),
        ("stopped", "SUCCESS"),
        ("failed", "FAILURE"),
        ("aborted", "FAILURE"),
        ("interrupted", "USER_ABORT"),
    ],
)
def test_end_reason_of_our_scans_in_bliss_words(data_store, bus, ours, theirs):
    scan = bus.session("s").create_scan({"type": "ascan"})
    scan.end(ours)
    loaded = data_store.load_scan(scan.key)
    assert loaded.state is ScanState.CLOSED
    assert loaded.info["end_reason"] == theirs
    assert (loaded.session, loaded.name, loaded.number) == ("s", "ascan", scan.number)


# ------------------------------------------------------------------ search


def _identity(i, **more):
    return {"name": "scan", "number": i, "data_policy": "esrf", "session": "a", **more}


def test_search_empty_db(data_store):
    assert data_store.search_existing_scans() == ("0-0", [])
    assert data_store.search_existing_scans(name="abc*") == ("0-0", [])


def test_search_all_scans(data_store):
    scan = data_store.create_scan(_identity(1))
    ts, found = data_store.search_existing_scans()
    millis, _ = (int(x) for x in ts.split("-"))
    assert millis > 0 and found == [scan.key]

    scans = [data_store.create_scan(_identity(i)) for i in range(1, 4)]
    ts2, found = data_store.search_existing_scans()
    assert ts2 > ts or len(ts2) > len(ts)
    assert found == [scan.key] + [s.key for s in scans]
    assert data_store.get_next_scan(since=ts, block=False)[1] == scans[0].key


def test_search_specific_scans(data_store):
    for i in range(20):
        data_store.create_scan(
            {
                "name": "scan",
                "number": i,
                "data_policy": "esrf",
                "session": f"session{i % 2}",
                "proposal": f"proposal{i}",
                "collection": f"collection{i}",
                "dataset": f"dataset{i}",
            }
        )

    def count(**fields):
        return len(data_store.search_existing_scans(**fields)[1])

    assert count() == 20
    assert count(dataset="dataset") == 0
    assert count(dataset="dataset1") == 1
    assert count(dataset="dataset1*") == 11  # 1, 10..19
    assert count(number=1, session="session0") == 0
    assert count(number=0, session="session0") == 1
    assert count(dataset="dataset1*", session="session0") == 5  # 10, 12..18
    assert count(dataset="dataset*", session="session*") == 20
    assert count(dataset="*set1") == 1 and count(dataset="*set1*") == 11
    with pytest.raises(ValueError, match="unknown field"):
        data_store.search_existing_scans(sample="x")


# ---------------------------------------------------------------- the feed


def test_get_next_scan_empty_db(data_store):
    with pytest.raises(NoScanAvailable):
        data_store.get_next_scan(block=False)
    with pytest.raises(NoScanAvailable):
        data_store.get_next_scan(timeout=0.1)


def test_get_next_scan_missed(data_store):
    data_store.create_scan(DUMMY_ID)
    with pytest.raises(NoScanAvailable):
        data_store.get_next_scan(block=False)


def test_get_next_scan_blocking(data_store):
    since = data_store.get_last_scan_timetag()
    got = []
    waiter = threading.Thread(target=lambda: got.append(data_store.get_next_scan(since)))
    waiter.start()
    scan = data_store.create_scan(DUMMY_ID)
    waiter.join(10)
    assert not waiter.is_alive()
    assert got[0][1] == scan.key


def test_get_next_scan_in_creation_order_across_sessions(data_store, bus):
    since = data_store.get_last_scan_timetag()
    keys = []
    for i in range(6):
        keys.append(data_store.create_scan(_identity(i, session=f"s{i % 3}")).key)
        ours = bus.session("runner").create_scan({"type": "ct"})
        ours.end()
        keys.append(ours.key)
    got = []
    for _ in keys:
        since, key = data_store.get_next_scan(since=since, timeout=1)
        got.append(key)
    assert got == keys
    assert since == data_store.get_last_scan_timetag()


def test_get_next_scan_skip_deleted(data_store, admin):
    scans = [data_store.create_scan(DUMMY_ID) for _ in range(5)]
    _delete(admin, scans[0].key)
    _delete(admin, scans[2].key)
    for kwargs in ({}, {"timeout": 1}, {"block": False}):
        ts, key = data_store.get_next_scan(since="0-0", **kwargs)
        assert key == scans[1].key
        ts, key = data_store.get_next_scan(since=ts, **kwargs)
        assert key == scans[3].key
        ts, key = data_store.get_next_scan(since=ts, **kwargs)
        assert key == scans[4].key
    assert data_store.get_next_scan(since=0, block=False)[1] == scans[1].key


def test_get_last_scan(data_store):
    scans = [data_store.create_scan(DUMMY_ID) for _ in range(5)]
    ts, key = data_store.get_last_scan()
    assert key == scans[-1].key and ts == data_store.get_last_scan_timetag()


def test_get_last_scan_empty_db(data_store):
    with pytest.raises(NoScanAvailable):
        data_store.get_last_scan()


def test_get_last_scan_deleted(data_store, admin):
    scan = data_store.create_scan(DUMMY_ID)
    _delete(admin, scan.key)
    with pytest.raises(NoScanAvailable):
        data_store.get_last_scan()


def test_get_last_scan_skip_deleted(data_store, admin):
    scans = [data_store.create_scan(DUMMY_ID) for _ in range(5)]
    _delete(admin, scans[-1].key)
    assert data_store.get_last_scan()[1] == scans[-2].key


def test_data_store_from_url_and_default(bus, monkeypatch):
    monkeypatch.setenv("DATABUS_PREFIX", bus.settings.prefix)
    store = DataStore(bus.url)
    assert store.bus is not bus and store.bus.url == bus.url
    assert store.get_last_scan_timetag() == "0-0"
    databus.set_default_bus(bus)
    try:
        assert DataStore().bus is bus
    finally:
        databus.set_default_bus(None)


def test_a_record_that_does_not_decode_is_a_scan_validation_error(data_store, admin):
    from databus.blissdata.exceptions import ScanLoadError, ScanValidationError

    scan = data_store.create_scan(DUMMY_ID)
    admin.hset(scan.key, "number", "not a number")
    with pytest.raises(ScanValidationError) as exc:
        data_store.load_scan(scan.key)
    assert isinstance(exc.value, ScanLoadError) and isinstance(exc.value.__cause__, ValueError)


def test_old_module_paths_still_import_with_a_warning():
    import importlib
    import sys

    for old, new in (
        ("databus.blissdata.scan", "Scan"),
        ("databus.blissdata.redis_engine.exceptions", "NoScanAvailable"),
    ):
        sys.modules.pop(old, None)
        with pytest.warns(FutureWarning, match="deprecated"):
            module = importlib.import_module(old)
        assert getattr(module, new) is getattr(
            importlib.import_module("databus.blissdata" + (".exceptions" if "exc" in old else "")),
            new,
        )


def test_info_changed_in_place_with_arrays_is_published(data_store):
    import numpy as np

    rw_scan = data_store.create_scan(DUMMY_ID, info={"channels": {"x": {}}, "pos": np.zeros(2)})
    rw_scan.info["channels"]["x"]["no_saving"] = True
    rw_scan.info["pos"] = np.ones(2)
    rw_scan.prepare()
    ro_scan = data_store.load_scan(rw_scan.key)
    assert ro_scan.info["channels"] == {"x": {"no_saving": True}}
    assert list(ro_scan.info["pos"]) == [1.0, 1.0]
