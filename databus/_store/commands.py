"""Command builders: what databus asks of Redis, as argument tuples, executed nowhere here.

Pure functions, as redis-py's command mixins are: each returns the commands (``Command``
tuples) of one action, from key names (``keys``) and field mappings (``schema``), and
``wire`` runs them. So a test can look at what an action writes without a server, and
the one place that executes (and, later, routes commands to cluster nodes) sees them all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._encoding import GAP_SERVER_LOST, SEAL_ID, gap_entry, seal_fields
from .._states import EndReason, ScanState
from .._timing import milliseconds
from . import keys, schema

#: A command as its arguments: ("XADD", key, id, field, value, ...).
Command = tuple[Any, ...]

#: Commands that name no key (a cluster runs them on any node, or on each: ``wire``).
KEYLESS = frozenset({"PING", "INFO", "SCAN"})


def key_of(command: Command) -> str | None:
    """The first key ``command`` names (its cluster slot decides the node that runs it);
    None for a command without keys (``KEYLESS``, an EVAL of no key)."""
    name = str(command[0]).upper()
    if name in KEYLESS:
        return None
    if name in ("EVAL", "EVALSHA"):
        return str(command[3]) if int(command[2]) > 0 else None
    if name in ("XREAD", "XREADGROUP"):
        return str(command[[str(a).upper() for a in command].index("STREAMS") + 1])
    return str(command[1])


#: Raises a session's scan counter to at least ARGV[1], adds ARGV[2], returns it: a
#: server restarted without its data restarts counters at 0, and a process must not hand
#: out a number it has already used.
_COUNTER = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if n < floor then n = floor end
n = n + tonumber(ARGV[2])
redis.call('SET', KEYS[1], n)
return n
"""


def _flat(mapping: dict[str, Any]) -> list[Any]:
    return [item for pair in mapping.items() for item in pair]


def hset(key: str, mapping: dict[str, Any]) -> Command:
    return ("HSET", key, *_flat(mapping))


def xadd(key: str, fields: dict[Any, Any], entry_id: Any = "*") -> Command:
    return ("XADD", key, entry_id, *_flat(fields))


def pexpire(key: str, seconds: float) -> Command:
    return ("PEXPIRE", key, milliseconds(seconds))


def refresh(scan_keys: Iterable[str], seconds: float) -> list[Command]:
    """Give each of ``scan_keys`` ``seconds`` to live (again)."""
    return [pexpire(key, seconds) for key in scan_keys]


# ------------------------------------------------------------------ indexes


def sessions(prefix: str) -> Command:
    """Names of the sessions active within the retention time, oldest first."""
    return ("ZRANGE", keys.sessions(prefix), 0, -1)


# ------------------------------------------------------------------ publishing


def ping() -> Command:
    """A publisher's check that its connection (and the server) is still there."""
    return ("PING",)


def client_counts() -> Command:
    """The server's client counts; ``blocked_clients`` is how many readers wait for entries."""
    return ("INFO", "clients")


def next_number(prefix: str, session: str, floor: int, add: int = 1) -> Command:
    """The session's scan counter raised to ``floor`` plus ``add``; replies the number."""
    return ("EVAL", _COUNTER, 1, keys.session_seq(prefix, session), floor, add)


def create_scan(
    prefix: str,
    session: str,
    number: int,
    packed_info: bytes,
    created: float,
    now: float,
    *,
    running_ttl: float,
    retention_ttl: float,
    feed_length: int,
) -> list[Command]:
    """Creating scan ``number`` (at ``created``; ``now`` differs when it is written again):
    its record, its log's first entry, the session log's entry, the indexes (trimmed to
    ``retention_ttl`` before ``now``), the feed's entry (the feed capped to about
    ``feed_length`` entries), and their TTLs (running for the scan's keys)."""
    oldest = now - retention_ttl
    key = keys.scan(prefix, session, number)
    slog = keys.session_log(prefix, session)
    feed = keys.feed(prefix)
    commands = [
        hset(key, schema.new_record(session, number, packed_info, created)),
        pexpire(key, running_ttl),
        xadd(keys.scan_log(key), schema.created_entry(created)),
        pexpire(keys.scan_log(key), running_ttl),
        (
            "XADD",
            slog,
            "MINID",
            "~",
            int(oldest * 1000),
            "*",
            *_flat(schema.created_entry(created, key, number)),
        ),
        pexpire(slog, retention_ttl),
        pexpire(keys.session_seq(prefix, session), retention_ttl),
        (
            "XADD",
            feed,
            "MAXLEN",
            "~",
            feed_length,
            "*",
            *_flat(schema.feed_entry(created, key, session, number)),
        ),
        pexpire(feed, retention_ttl),
    ]
    for index, member in ((keys.sessions(prefix), session), (keys.scans(prefix), key)):
        commands += [
            ("ZADD", index, created, member),
            ("ZREMRANGEBYSCORE", index, "-inf", oldest),
            pexpire(index, retention_ttl),
        ]
    return commands


def declare_channel(scan_key: str, name: str, packed_desc: bytes) -> list[Command]:
    """Channel ``name`` of the scan, with its descriptor."""
    return [
        hset(scan_key, {schema.channel_field(name): packed_desc}),
        xadd(keys.scan_log(scan_key), schema.channel_entry(name)),
    ]


def update_info(scan_key: str, packed_info: bytes) -> list[Command]:
    return [
        hset(scan_key, schema.info_record(packed_info)),
        xadd(keys.scan_log(scan_key), schema.info_entry()),
    ]


def move_state(
    prefix: str, session: str, scan_key: str, number: int, state: ScanState, when: float
) -> list[Command]:
    """The scan moved to ``state`` (PREPARED, STARTED): record, scan log, session log."""
    return [
        hset(scan_key, schema.state_record(state)),
        xadd(keys.scan_log(scan_key), schema.state_entry(state, when)),
        xadd(keys.session_log(prefix, session), schema.state_entry(state, when, scan_key, number)),
    ]


def end_scan(
    prefix: str,
    session: str,
    scan_key: str,
    number: int,
    reason: EndReason,
    when: float,
    error: str | None,
    dropped: dict[str, int],
    scan_keys: Iterable[str],
    retention_ttl: float,
) -> list[Command]:
    """The scan's end in its record and both logs; every key of the scan (``scan_keys``)
    gets the retention TTL."""
    return [
        hset(scan_key, schema.end_record(reason, when, error, dropped)),
        xadd(keys.scan_log(scan_key), schema.ended_entry(reason, when, error)),
        xadd(
            keys.session_log(prefix, session),
            schema.ended_entry(reason, when, None, scan_key, number),
        ),
        *refresh(scan_keys, retention_ttl),
    ]


def restore_probe(scan_key: str, streams: Iterable[str]) -> list[Command]:
    """What a publisher reads after a reconnection: whether the record is still there, and
    the last entry of each of its channels' ``streams``."""
    return [
        ("HEXISTS", scan_key, "number"),
        *(("XREVRANGE", stream, "+", "-", "COUNT", 1) for stream in streams),
    ]


def restore_scan(
    prefix: str,
    session: str,
    scan_key: str,
    number: int,
    packed_info: bytes,
    created: float,
    channels: dict[str, bytes],
    state: ScanState,
    when: float,
    *,
    running_ttl: float,
    retention_ttl: float,
    feed_length: int,
) -> list[Command]:
    """Writing a scan's record and log entries again, on a server that lost them: its
    creation (a new feed entry too), its ``channels`` (name -> packed descriptor), and its
    ``state``."""
    commands = [
        next_number(prefix, session, number, 0),
        *create_scan(
            prefix,
            session,
            number,
            packed_info,
            created,
            when,
            running_ttl=running_ttl,
            retention_ttl=retention_ttl,
            feed_length=feed_length,
        ),
    ]
    for name, packed in channels.items():
        commands += declare_channel(scan_key, name, packed)
    commands.append(hset(scan_key, schema.state_record(state, restored=when)))
    slog = keys.session_log(prefix, session)
    for reached in (ScanState.PREPARED, ScanState.STARTED):
        if state >= reached:
            commands += [
                xadd(keys.scan_log(scan_key), schema.state_entry(reached, when)),
                xadd(slog, schema.state_entry(reached, when, scan_key, number)),
            ]
    return commands


def lost_points(
    scan_key: str,
    channel: str,
    stream: str,
    first: int,
    stop: int,
    packed_ranges: bytes,
    running_ttl: float,
) -> list[Command]:
    """Points [first, stop) of ``channel`` that a server restarted empty lost: a gap marker
    in its ``stream``, every range lost so far (``packed_ranges``) in the record, an entry
    in the scan log."""
    return [
        gap(stream, first, stop, GAP_SERVER_LOST),
        pexpire(stream, running_ttl),
        hset(scan_key, {schema.lost_field(channel): packed_ranges}),
        xadd(keys.scan_log(scan_key), schema.lost_entry(channel, first, stop)),
    ]


# ------------------------------------------------------------------ channel streams


def gap(stream: str, first: int, stop: int, reason: str) -> Command:
    """A gap marker: points [first, stop) of the channel will never be in ``stream``."""
    entry_id, fields = gap_entry(first, stop, reason)
    return xadd(stream, fields, entry_id)


def seal(stream: str, total: int) -> Command:
    """The seal of a channel's ``stream``: the channel has ``total`` points, no more."""
    return xadd(stream, dict(seal_fields(total)), SEAL_ID)


def seal_scan(scan_key: str, when: float) -> list[Command]:
    """Every channel of the scan is sealed (its data complete): record and scan log."""
    return [
        hset(scan_key, schema.sealed_record(when)),
        xadd(keys.scan_log(scan_key), schema.sealed_entry(when)),
    ]


# ------------------------------------------------------------------ reading


def record(scan_key: str) -> Command:
    """A scan's record, whole (HGETALL: a dict of bytes)."""
    return ("HGETALL", scan_key)


def entries(stream: str, start: str = "-", end: str = "+", count: int | None = None) -> Command:
    """Entries of ``stream`` from ``start`` to ``end`` (inclusive, or exclusive after
    ``(``), oldest first, at most ``count``."""
    return ("XRANGE", stream, start, end, *(() if count is None else ("COUNT", count)))


def entries_back(stream: str, end: str = "+", start: str = "-", count: int = 1) -> Command:
    """Entries of ``stream`` from ``end`` back to ``start``, newest first: by default its
    last entry."""
    return ("XREVRANGE", stream, end, start, "COUNT", count)


def feed_last(prefix: str) -> Command:
    """The feed's last entry: its ID is the tag of the last scan created."""
    return entries_back(keys.feed(prefix))


def found_scans(prefix: str, tag: str) -> list[Command]:
    """The keys of the scans created within the retention time, oldest first, and the
    feed's entries after ``tag``: the scans created after ``tag`` are left out of the
    keys with no transaction (which a read-only user may not run)."""
    return [scans(prefix), entries(keys.feed(prefix), f"({tag}")]


def scan_infos(scan_keys: Iterable[str]) -> list[Command]:
    """The packed info of each scan (None for one that is gone)."""
    return [("HGET", key, "info") for key in scan_keys]


def exists(*names: str) -> Command:
    """How many of ``names`` exist."""
    return ("EXISTS", *names)


def points(stream: str, first: int, last: int, max_seq: str, *, split: bool) -> list[Command]:
    """What a reader of points ``first`` .. ``last`` of a channel needs: the entry before
    them (a block may start earlier; not for ``split`` points, whose parts carry their own
    index) and theirs. Entry IDs are ``<point index>-<sequence>``, ``max_seq`` the largest
    sequence. Whether a gap marker follows missing ones: ``points_after``."""
    before = [] if split else [entries_back(stream, f"{first}-{max_seq}")]
    return [*before, entries(stream, f"{first}-0", f"{last}-{max_seq}")]


def points_after(stream: str, last: int, max_seq: str) -> Command:
    """The entry after point ``last`` (a gap marker, if points up to it are lost)."""
    return entries(stream, f"({last}-{max_seq}", "+", 1)


def stream_length(stream: str) -> Command:
    """How many entries ``stream`` holds (0 if it does not exist): a cheap sign of news."""
    return ("XLEN", stream)


def saved_where(scan_key: str, channel: str) -> Command:
    """Where the file writer saved channel ``channel`` of the scan: its file, dataset."""
    return ("HMGET", scan_key, schema.FILE, schema.dataset_field(channel))


def request_stop(scan_key: str, reason: str, when: float, retention_ttl: float) -> list[Command]:
    """A reader's request, on the scan's control stream, that the running scan stop."""
    control = keys.scan_control(scan_key)
    return [xadd(control, schema.stop_entry(reason, when)), pexpire(control, retention_ttl)]


# ------------------------------------------------------------------ memory guard


def memory() -> Command:
    """The server's memory figures (INFO memory: ``used_memory``, ``maxmemory``...)."""
    return ("INFO", "memory")


def scans(prefix: str) -> Command:
    """Keys of the scans created within the retention time, oldest first."""
    return ("ZRANGE", keys.scans(prefix), 0, -1)


def writer_marks(scan_key: str) -> Command:
    """A scan's state and the file writer's marks: its file, when it was written."""
    return ("HMGET", scan_key, "state", schema.FILE, schema.WRITTEN)


def evict(scan_key: str, channels: Iterable[str], entry: dict[str, Any]) -> list[Command]:
    """Deleting the ended scan ``scan_key`` (``evict_keys``) and noting it in its session
    log (``evict_note``), in one transaction."""
    return [*evict_keys(scan_key, channels), evict_note(scan_key, entry)]


def evict_keys(scan_key: str, channels: Iterable[str]) -> list[Command]:
    """Deleting every key of the ended scan ``scan_key`` (its ``channels``' streams too;
    freed by the server's background thread, so a big scan never stalls it). No command
    here needs memory, so a server over its cap runs them."""
    prefix = keys.parse_scan(scan_key)[0]
    streams = [keys.channel(scan_key, name) for name in channels]
    return [
        ("UNLINK", scan_key, keys.scan_log(scan_key), keys.scan_control(scan_key), *streams),
        ("ZREM", keys.scans(prefix), scan_key),
    ]


def evict_note(scan_key: str, entry: dict[str, Any]) -> Command:
    """Noting in its session log that ``scan_key`` was evicted (``schema.evicted_entry``)."""
    prefix, session, _ = keys.parse_scan(scan_key)
    return xadd(keys.session_log(prefix, session), entry)


# ------------------------------------------------------------------ status


def count_sessions(prefix: str) -> Command:
    """How many sessions were active within the retention time."""
    return ("ZCARD", keys.sessions(prefix))


# ------------------------------------------------------------------ shared channels

#: Writes a shared channel's value (ARGV[1]) unless ARGV[2] is '1' and it has one: bumps
#: its version, sets its TTL (ARGV[3] ms) and publishes "<version> <value>" on its key.
#: Returns {version, value} as stored. The server's order decides which write is last.
_WRITE_SHARED = """
if ARGV[2] == '1' and redis.call('HEXISTS', KEYS[1], 'v') == 1 then
  return {tonumber(redis.call('HGET', KEYS[1], 'n')), redis.call('HGET', KEYS[1], 'v')}
end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[1], n .. ' ' .. ARGV[1])
return {n, ARGV[1]}
"""


def write_shared(key: str, packed: bytes, ttl: float, *, only_if_absent: bool) -> Command:
    """Setting shared channel ``key`` to ``packed`` for everybody (``only_if_absent``: its
    default, kept if it has a value); replies [version, value stored]."""
    flag = "1" if only_if_absent else "0"
    return ("EVAL", _WRITE_SHARED, 1, key, packed, flag, milliseconds(ttl))


def shared_keys(prefix: str, cursor: int) -> Command:
    """One SCAN step over the shared channels' hashes; replies [next cursor, keys]."""
    return ("SCAN", cursor, "MATCH", keys.shared_pattern(prefix), "COUNT", 1000, "TYPE", "hash")


def read_shared(key: str) -> Command:
    """Shared channel ``key``'s [version, packed value] (None, None if it has none)."""
    return ("HMGET", key, "n", "v")


# ------------------------------------------------------------------ file writer

#: HSET into a hash only if it exists: a note never leaves a stray, TTL-less record.
_HSET_IF_EXISTS = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], unpack(ARGV)) end"
)


def note(scan_key: str, fields: dict[str, Any]) -> Command:
    """The file writer's ``fields`` (``schema.file_record``, ``schema.written_record``)
    into the scan's record, if it is still there."""
    return ("EVAL", _HSET_IF_EXISTS, 1, scan_key, *_flat(fields))


# ------------------------------------------------------------------ point shares

#: Makes the share's stream and its consumer group (ARGV[1]) unless they exist, and keeps
#: the number of the first scan it serves (ARGV[2]) unless one is kept; returns that number.
_OPEN_SHARE = """
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
redis.call('HSETNX', KEYS[2], '#first', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return redis.call('HGET', KEYS[2], '#first')
"""

#: Hands the points of scan ARGV[1] from its mark up to ARGV[2] to the share, as items of
#: at most ARGV[3] points, at most ARGV[5] items per call; returns the new mark. Points
#: already handed over are not added again, so every member may call it.
_SHARE_POINTS = """
local mark = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local stop, batch, most = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local added = 0
while mark < stop and added < most do
  local upto = math.min(mark + batch, stop)
  redis.call('XADD', KEYS[1], '*', 's', ARGV[1], 'a', mark, 'b', upto)
  mark = upto
  added = added + 1
end
if added > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], mark)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return mark
"""

#: Deletes the items of group ARGV[1] that are handed out and acknowledged: those before
#: its oldest pending one, or before its last delivered one. Returns how many went.
_TRIM_SHARE = """
local upto = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last = nil, nil
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  if name == ARGV[1] then upto = last end
end
if not upto then return 0 end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
if pending[1] > 0 then upto = pending[2] end
return redis.call('XTRIM', KEYS[1], 'MINID', upto)
"""


def open_share(share_key: str, group: str, first_scan: int, ttl: float) -> Command:
    """Create point share ``share_key`` and its consumer ``group`` if they do not exist;
    replies the number of the first scan the share serves (``first_scan`` if it is new)."""
    marks = keys.share_marks(share_key)
    return ("EVAL", _OPEN_SHARE, 2, share_key, marks, group, first_scan, milliseconds(ttl))


def share_points(
    share_key: str, scan_key: str, stop: int, batch: int, ttl: float, most: int
) -> Command:
    """Hand points up to ``stop`` of ``scan_key`` to the share as items of ``batch``
    points (``most`` items at most); replies how far the scan's points are handed over."""
    marks = keys.share_marks(share_key)
    return (
        "EVAL", _SHARE_POINTS, 2, share_key, marks,
        scan_key, stop, batch, milliseconds(ttl), most,
    )  # fmt: skip


#: Takes over (XCLAIM) up to ARGV[4] items of group ARGV[1] that another consumer than
#: ARGV[2] claimed ARGV[3] ms ago or more; returns them as XCLAIM does.
_TAKE_OVER = """
local ids = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])) do
  if p[2] ~= ARGV[2] then ids[#ids + 1] = p[1] end
end
if #ids == 0 then return {} end
return redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(ids))
"""


def take_over(share_key: str, group: str, consumer: str, idle: float, count: int) -> Command:
    """Give ``consumer`` up to ``count`` items another member of ``group`` claimed ``idle``
    seconds ago or more and never acknowledged (it stalled or died); never its own."""
    return ("EVAL", _TAKE_OVER, 1, share_key, group, consumer, milliseconds(idle), count)


def acknowledge(share_key: str, group: str, item_ids: Iterable[Any]) -> Command:
    """Items served: never handed out again."""
    return ("XACK", share_key, group, *item_ids)


def serve_item(
    share_key: str, group: str, item_id: str, result: dict[str, Any], ttl: float
) -> list[Command]:
    """Acknowledge an item and record what was made of it (``schema.share_result``), to be
    run as one transaction: the result exists if and only if the item is acknowledged."""
    results = keys.share_results(share_key)
    return [
        xadd(results, result),
        pexpire(results, ttl),
        ("XACK", share_key, group, item_id),
    ]


def trim_results(share_key: str, upto: str) -> Command:
    """Delete a share's results before ID ``upto`` (read by the one who reduces them)."""
    return ("XTRIM", keys.share_results(share_key), "MINID", upto)


def trim_share(share_key: str, group: str) -> Command:
    """Delete the share's items that are served; replies how many."""
    return ("EVAL", _TRIM_SHARE, 1, share_key, group)


def share_first(share_key: str) -> Command:
    """The number of the first scan a share serves (None if the share does not exist)."""
    return ("HGET", keys.share_marks(share_key), "#first")


#: Gives item ARGV[2] of group ARGV[1] back: the same points as a new item at the end of
#: the share (anyone's to claim), the old one acknowledged. Returns 1, or 0 if it is gone.
_RELEASE_ITEM = """
local item = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])[1]
if item then redis.call('XADD', KEYS[1], '*', unpack(item[2])) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return item and 1 or 0
"""


def release_item(share_key: str, group: str, item_id: str) -> Command:
    """Give a claimed item back to the share, for any member to claim."""
    return ("EVAL", _RELEASE_ITEM, 1, share_key, group, item_id)
