"""Bad input, fuzzed with hypothesis: every case ends in a clear exception or a skipped,
logged entry; no hang, no crash of a walk, no corruption of other channels.

Example counts (sum >= 10,000): coerce 3000, metadata 2000, names 1500, raw entries 3000,
records 500, server round trips 300, walks over garbage 100, shared-channel garbage 100,
poison in session logs, scan logs and scan records 150 each.

Deterministic by default (the ``ci`` profile in conftest); random exploration, new inputs
each run and ten times as many: ``DATABUS_FUZZ_SCALE=10 python -m pytest tests/test_fuzz.py
--hypothesis-profile=explore``.
"""

import contextlib
import itertools
import math
import os
import threading

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import redis
from conftest import DTYPES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import databus
from databus import _encoding as enc
from databus._errors import CorruptEntry, DtypeError, MetadataError, PointError, ShapeError
from databus._store import keys

NUMERIC = DTYPES
FAST = settings(deadline=None, suppress_health_check=list(HealthCheck))


#: ``DATABUS_FUZZ_SCALE=10`` multiplies every property's examples (random exploration).
SCALE = int(os.environ.get("DATABUS_FUZZ_SCALE", "1"))
#: The suite's per-test timeout (pyproject), scaled with the number of examples.
pytestmark = pytest.mark.timeout(120 * SCALE)


def fuzz(examples):
    """Hypothesis settings for ``examples`` cases (times ``SCALE``), without deadlines (a
    shared CI box); the profile (conftest) decides whether the inputs are the same each run."""
    return settings(FAST, max_examples=examples * SCALE)


point_shapes = st.sampled_from([(), (3,), (2, 2), (1, 4, 2)])
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
awkward = (
    anything
    | st.builds(object)
    | st.sets(st.integers(), max_size=3)
    | st.just(1j)
    | st.just(math.inf)
)


def value_for_a_channel():
    return st.one_of(
        hnp.arrays(
            st.sampled_from([*NUMERIC, "U3", "M8[s]"]),
            hnp.array_shapes(min_dims=0, max_dims=4, max_side=4),
        ),
        st.none(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.lists(st.lists(st.floats(), max_size=3), max_size=3),  # ragged more often than not
        st.text(max_size=4),
        st.binary(max_size=4),
        st.complex_numbers(),
    )


@fuzz(3000)
@given(dtype=st.sampled_from(NUMERIC), shape=point_shapes, value=value_for_a_channel())
def test_coerce_accepts_or_says_why(dtype, shape, value):
    desc = enc.Descriptor.create("c", dtype, shape)
    try:
        block = enc.coerce(desc, value)
    except (DtypeError, ShapeError) as exc:
        assert "'c'" in str(exc)  # the message names the channel
        return
    assert block.dtype == np.dtype(dtype) and block.shape[1:] == shape and block.flags.c_contiguous
    source = np.asarray(value)
    if source.dtype.kind in "iub" and np.dtype(dtype).kind in "iub":  # exact for integers
        assert np.array_equal(block.reshape(-1), source.astype(dtype).reshape(-1))


@fuzz(2000)
@given(info=awkward)
def test_metadata_round_trips_or_names_the_culprit(info):
    try:
        raw = enc.pack_meta({"k": info}, what="scan info")
    except MetadataError as exc:
        assert "scan info" in str(exc)
        return
    enc.unpack_meta(raw)  # whatever was packed unpacks


@fuzz(1500)
@given(
    # What the API lets through (keys.check_name refuses lone surrogates, tested apart).
    session=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60)
    | st.builds(
        lambda c, n: c * n,
        st.characters(exclude_categories=["Cs"]),
        st.integers(10_000, 10_050),
    ),
    channel=st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    number=st.integers(1, 10**9),
)
def test_any_name_makes_keys_that_round_trip_in_one_slot(session, channel, number):
    scan = keys.scan("p", session, number)
    assert keys.parse_scan(scan) == ("p", session, number)
    assert keys.hash_slot(keys.channel(scan, channel)) == keys.hash_slot(scan)
    assert keys.unescape(keys.escape(channel)) == channel


raw_fields = st.dictionaries(
    st.sampled_from([b"d", b"n", b"m", b"r", b"end", b"x", "d", "n"]),
    st.binary(max_size=40) | st.integers().map(lambda i: str(i).encode()),
    max_size=4,
)
raw_ids = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 4)).map(
    lambda t: b"%d-%d" % t
) | st.just(enc.SEAL_ID)


@fuzz(3000)
@given(
    kind=st.sampled_from(["array", "json", "ref", "frames"]),
    entries=st.lists(st.tuples(raw_ids, raw_fields), max_size=5),
)
def test_decoding_garbage_yields_blocks_or_a_corrupt_entry(kind, entries):
    desc = {
        "array": enc.Descriptor.create("c", "float64", (2,)),
        "json": enc.Descriptor.create("c", None, kind="json"),
        "ref": enc.Descriptor.create("c", "uint16", (2, 2), kind="ref"),
        "frames": enc.Descriptor.create("c", "uint8", (3 * enc.ENTRY_BYTES,)),
    }[kind]
    try:
        for item in enc.decode_entries(desc, "key", entries):
            assert isinstance(item, (int, enc.Block))
    except CorruptEntry as exc:
        assert exc.key == "key" and exc.entry_id is not None


@fuzz(500)
@given(records=st.lists(awkward, max_size=5))
def test_record_packing(records):
    try:
        packed = [enc.pack_record(r, "log") for r in records]
    except MetadataError as exc:
        assert "channel 'log'" in str(exc)
        return
    _, fields = enc.record_entry(0, packed)
    (block,) = enc.decode_entries(
        enc.Descriptor.create("log", None, kind="json"),
        "k",
        [(b"0-1", {k: (str(v).encode() if isinstance(v, int) else v) for k, v in fields.items()})],
    )
    assert block.count == len(records)


@pytest.fixture(scope="module")
def fuzz_bus(valkey_server):
    bus = databus.connect(f"{valkey_server.url}/15", prefix="fuzz")
    yield bus
    bus.close()
    admin = redis.Redis.from_url(f"{valkey_server.admin_url}?db=15")
    admin.flushdb()
    admin.close()


@fuzz(300)
@given(
    dtype=st.sampled_from(NUMERIC),
    shape=point_shapes,
    values=st.lists(value_for_a_channel(), min_size=1, max_size=4),
)
def test_bad_sends_leave_the_scan_and_its_other_channels_intact(fuzz_bus, dtype, shape, values):
    scan = fuzz_bus.session("fz").create_scan(title="fuzz")
    fuzzed = scan.channel("fuzzed", dtype, shape)
    witness = scan.channel("witness", "float64")
    accepted = 0
    for i, value in enumerate(values):
        witness.send(float(i))
        try:
            fuzzed.send(value)
            accepted += len(enc.coerce(fuzzed.desc, value))
        except PointError:
            pass
    scan.end()
    node = fuzz_bus.scan(scan.key)
    assert node.channels["witness"].get_as_array().tolist() == [
        float(i) for i in range(len(values))
    ]
    assert len(node.channels["fuzzed"]) == accepted


_WALK_SESSIONS = itertools.count()


@fuzz(100)
@given(
    garbage=st.lists(st.tuples(st.integers(0, 50), raw_fields), min_size=1, max_size=5),
    log_garbage=st.lists(raw_fields, max_size=3),
)
def test_a_walk_survives_garbage_in_streams_and_logs(fuzz_bus, garbage, log_garbage):
    session = fuzz_bus.session(f"walk{next(_WALK_SESSIONS)}")  # a replay reads one scan
    scan = session.create_scan(title="garbage")
    good, bad = scan.channel("good", "float64"), scan.channel("bad", "float64")
    scan.prepare()
    good.send(np.arange(5.0))
    for fields in log_garbage:
        fuzz_bus.redis.xadd(keys.scan_log(scan.key), fields or {b"x": b"1"})
    for index, fields in sorted(garbage, key=lambda g: g[0]):
        with contextlib.suppress(redis.ResponseError):  # an ID out of order: refused
            fuzz_bus.redis.xadd(bad.key, fields or {b"x": b"1"}, id=f"{index + 100}-1")
    scan.end()
    events = list(session.node.walk_events(wait=False))
    mine = [e for e in events if e.node.db_name.startswith(scan.key)]
    assert mine[-1].type is databus.EventType.END_SCAN
    got = [e.data for e in mine if e.type is databus.EventType.NEW_DATA and e.node.name == "good"]
    assert np.concatenate([d.data for d in got]).tolist() == [0, 1, 2, 3, 4]


_POISON_SESSIONS = itertools.count()
GOOD = "<the valid scan's key>"
log_values = (
    st.binary(max_size=12)
    | st.sampled_from([b"\xff", b"created", b"ended", b"evicted", b"channel", b"info", b"x"])
    | st.just(GOOD)
)
log_entries = st.dictionaries(
    st.sampled_from([b"event", b"scan", b"name", b"reason", b"error", b"channels", b"\xfe"]),
    log_values,
    min_size=1,
    max_size=5,
)
descriptor_metas = st.sampled_from(
    [
        enc.Descriptor.create("x", "float64").to_meta(),
        enc.Descriptor.create("x", "uint8", (3,)).to_meta(),
        enc.Descriptor.create("x", None, kind="json").to_meta(),
        enc.Descriptor.create("y", "int16").to_meta(),
        enc.pack_meta({"name": "x"}),
    ]
)
record_values = (
    st.binary(max_size=12)
    | st.integers().map(lambda i: str(i).encode())
    | st.dictionaries(
        st.sampled_from(["channels", "type", "title", "save"]),
        st.recursive(
            st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5) | st.binary(),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=6,
        ),
    ).map(enc.pack_meta)
    | descriptor_metas
)
record_fields = st.dictionaries(
    st.sampled_from(
        [b"number", b"info", b"state", b"end_reason", b"error", b"created", b"ended", b"ch:x"]
    ),
    record_values,
    min_size=1,
    max_size=4,
)


def poison_session(bus):
    """A session of its own for one example, and the key its first scan will have."""
    session = bus.session(f"poison{next(_POISON_SESSIONS)}")
    return session, keys.scan(bus.settings.prefix, session.name, 1)


def with_key(fields, key):
    """``fields`` with the placeholder ``GOOD`` replaced by ``key``."""
    return {k: key if v == GOOD else v for k, v in fields.items()}


def publish_good(session, before_end=()):
    """An ended scan of 5 points on ``x``; ``before_end`` entries go to its log first."""
    scan = session.create_scan(title="good")
    x = scan.channel("x", "float64")
    scan.prepare()
    x.send(np.arange(5.0))
    for fields in before_end:
        session.bus.redis.xadd(keys.scan_log(scan.key), with_key(fields, scan.key))
    scan.end()
    return scan


def assert_delivered_whole(session, scan):
    """A replay of ``session`` (it must not raise) delivers ``scan`` whole, then its end
    (again after a second "created" entry of it: a walk follows what the log says)."""
    events = list(session.node.walk_events(wait=False))
    mine = [e for e in events if e.node.db_name.startswith(scan.key)]
    ends = [i for i, e in enumerate(mine) if e.type is databus.EventType.END_SCAN]
    assert ends and ends[-1] == len(mine) - 1
    for start, end in zip([0] + [i + 1 for i in ends[:-1]], ends, strict=True):
        assert mine[start].type is databus.EventType.NEW_NODE
        got = [e.data.data for e in mine[start:end] if e.type is databus.EventType.NEW_DATA]
        assert np.concatenate(got).tolist() == [0, 1, 2, 3, 4]


@fuzz(150)
@given(entries=st.lists(log_entries, min_size=1, max_size=4))
def test_a_follower_delivers_the_valid_scan_past_garbage_in_its_session_log(fuzz_bus, entries):
    session, good_key = poison_session(fuzz_bus)
    for fields in entries:
        fuzz_bus.redis.xadd(session.node.log_key, with_key(fields, good_key))
    good = publish_good(session)
    assert good.key == good_key
    assert_delivered_whole(session, good)
    assert good_key in [s.key for s in session.node.scans()]


@fuzz(150)
@given(entries=st.lists(log_entries, min_size=1, max_size=4))
def test_a_follower_delivers_the_valid_scan_past_garbage_in_its_scan_log(fuzz_bus, entries):
    session, _ = poison_session(fuzz_bus)
    good = publish_good(session, before_end=entries)
    assert_delivered_whole(session, good)
    fuzz_bus.scan(good.key).wait_end(0)


@fuzz(150)
@given(fields=record_fields)
def test_a_follower_delivers_the_valid_scan_past_a_garbage_record(fuzz_bus, fields):
    session, bad_key = poison_session(fuzz_bus)
    bad = publish_good(session)
    fuzz_bus.redis.hset(bad_key, mapping=fields)
    good = publish_good(session)
    assert_delivered_whole(session, good)
    assert good.key in [s.key for s in session.node.scans()]
    try:
        node = fuzz_bus.scan(bad.key)
    except CorruptEntry as exc:
        assert bad.key in str(exc)
    else:  # a record that still decodes reads as one
        assert set(node.channels) <= {"x", "y"} and isinstance(node.info, dict)


@fuzz(100)
@given(message=st.binary(max_size=60))
def test_garbage_on_a_shared_channel_topic_is_ignored(fuzz_bus, message):
    from databus.channels import Channel

    holder = Channel("fuzzed_flag", default_value="safe", bus=fuzz_bus)
    fuzz_bus.redis.publish(holder.key, message)
    holder.value = "still fine"
    deadline = threading.Event()
    deadline.wait(0.01)
    assert holder.value == "still fine"
