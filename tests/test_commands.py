"""What each action writes, read off the command builders without a server; and the
schema's writing side read back by its reading side."""

import pytest

from databus import EndReason, ScanState
from databus._store import commands, keys, schema

PREFIX, SESSION = "p", "sess"
SCAN = keys.scan(PREFIX, SESSION, 7)


def _stored(mapping):
    """A mapping as HGETALL/XRANGE return it: bytes keys, bytes values."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in mapping.items()}


#: The TTLs and the feed's length of the creations built here.
LIMITS = {"running_ttl": 60, "retention_ttl": 3600, "feed_length": 10}


def _pairs(command, start):
    flat = command[start:]
    return dict(zip(flat[::2], flat[1::2], strict=True))


def test_a_scans_keys_share_its_slot_and_get_the_running_ttl():
    made = commands.create_scan(PREFIX, SESSION, 7, b"\x80", 100.0, 100.0, **LIMITS)
    scan_keys = {keys.scan_log(SCAN), SCAN}
    expiring = {c[1]: c[2] for c in made if c[0] == "PEXPIRE"}
    assert {expiring[k] for k in scan_keys} == {60_000}
    assert {keys.hash_slot(k) for k in (*scan_keys, keys.channel(SCAN, "x"))} == {
        keys.hash_slot(SCAN)
    }
    assert expiring[keys.session_log(PREFIX, SESSION)] == 3_600_000
    # the indexes drop what is older than the retention time
    trims = [c for c in made if c[0] == "ZREMRANGEBYSCORE"]
    assert {c[1] for c in trims} == {keys.sessions(PREFIX), keys.scans(PREFIX)}
    assert {c[3] for c in trims} == {100.0 - 3600}


def test_a_new_record_reads_back_as_created():
    (hset,) = [
        c
        for c in commands.create_scan(PREFIX, SESSION, 7, b"\x80", 100.0, 100.0, **LIMITS)
        if c[0] == "HSET"
    ]
    record = schema.ScanRecord.parse(SCAN, _stored(_pairs(hset, 2)))
    assert (record.number, record.state, record.created, record.ended) == (
        7,
        ScanState.CREATED,
        100.0,
        None,
    )


def test_an_end_gives_every_key_the_retention_ttl_and_reads_back():
    streams = [keys.channel(SCAN, n) for n in ("a", "b")]
    made = commands.end_scan(
        PREFIX,
        SESSION,
        SCAN,
        7,
        EndReason.FAILED,
        200.0,
        "boom",
        {"a": 3},
        [SCAN, *streams],
        3600,
    )
    assert {c[1] for c in made if c[0] == "PEXPIRE"} == {SCAN, *streams}
    (hset,) = [c for c in made if c[0] == "HSET"]
    fields = _pairs(hset, 2)
    record = schema.ScanRecord.parse(SCAN, _stored(fields))
    assert (record.state, record.end_reason, record.error, record.ended) == (
        ScanState.ENDED,
        EndReason.FAILED,
        "boom",
        200.0,
    )
    assert fields[schema.dropped_field("a")] == 3
    session_entry = next(c for c in made if c[1] == keys.session_log(PREFIX, SESSION))
    entry = schema.LogEntry.parse("log", "1-0", _stored(_pairs(session_entry, 3)))
    assert (entry.event, entry.scan, entry.reason, entry.error) == (
        schema.LogEvent.ENDED,
        SCAN,
        "failed",
        None,
    )


def test_the_file_writers_notes_read_back():
    fields = {**schema.file_record("/data/s.h5", {"a": "/7.1/a"}), **schema.written_record(9.5)}
    note = commands.note(SCAN, fields)
    record = schema.ScanRecord.parse(SCAN, _stored(_pairs(note, 4)))
    assert (record.file, record.written) == ("/data/s.h5", 9.5)
    bare = schema.ScanRecord.parse(SCAN, _stored({"number": 7}))
    assert (bare.file, bare.written) == (None, None)


@pytest.mark.parametrize(
    "entry",
    [
        schema.created_entry(1.0, SCAN, 7),
        schema.state_entry(ScanState.PREPARED, 1.0, SCAN, 7),
        schema.state_entry(ScanState.STARTED, 1.0),
        schema.ended_entry(EndReason.STOPPED, 1.0, "why"),
        schema.channel_entry("det:image"),
        schema.info_entry(),
        schema.lost_entry("x", 3, 9),
        schema.evicted_entry(SCAN, 7, 1.0, "finished", None, b"\x80"),
    ],
)
def test_every_log_entry_written_parses_to_its_event(entry):
    parsed = schema.LogEntry.parse("log", "1-0", _stored(entry))
    assert parsed.event == entry["event"]
    assert parsed.event in set(schema.LogEvent)
    assert parsed.scan == entry.get("scan")
    assert parsed.name == entry.get("name")


def test_a_stop_request_says_its_reason_and_nothing_else_is_one():
    assert schema.stop_reason(_stored(schema.stop_entry("too hot", 1.0))) == "too hot"
    assert schema.stop_reason({b"event": b"stop"}) == "requested"
    assert schema.stop_reason(_stored(schema.info_entry())) is None


def test_a_restore_writes_the_states_the_scan_had_reached():
    made = commands.restore_scan(
        PREFIX,
        SESSION,
        SCAN,
        7,
        b"\x80",
        100.0,
        {"x": b"desc"},
        ScanState.STARTED,
        150.0,
        **LIMITS,
    )
    assert made[0][0] == "EVAL" and made[0][-2:] == (7, 0)  # counter raised, not advanced
    events = [_pairs(c, 3)["event"] for c in made if c[0] == "XADD" and c[1] == keys.scan_log(SCAN)]
    assert events == ["created", "channel", "prepared", "started"]
    (state,) = [c for c in made if c[0] == "HSET" and "restored" in c]
    assert _pairs(state, 2) == {"state": int(ScanState.STARTED), "restored": 150.0}
