"""Every Redis key name databus uses is built here, and nowhere else.

Layout (``P`` is the settings' prefix, names are %-escaped by ``escape``)::

    P:sessions                      ZSET  session name -> last activity (unix s)
    P:scans                         ZSET  scan key -> creation time (unix s)
    P:feed                          STREAM  every scan created, all sessions, in order
    P:session:{<session>}:seq       STRING  last scan number (INCR)
    P:session:{<session>}:log       STREAM  scan created / prepared / started / ended
    P:scan:{<session>:<n>}          HASH  the scan record: info, state, descriptors
    P:scan:{<session>:<n>}:log      STREAM  channel created, state changes, end
    P:scan:{<session>:<n>}:ch:<ch>  STREAM  one channel's points, ID = first index
    P:scan:{<session>:<n>}:ctl      STREAM  requests to the running scan (stop)
    P:shared:<name>                 HASH  a shared channel: n (version), v (msgpack value);
                                          also the pub/sub topic its changes go to
    P:share:{<session>}:<group>     STREAM  a point share's work items (scan, first, stop),
                                          handed out by the consumer group <group>
    P:share:{<session>}:<group>:marks  HASH  scan key -> points handed to the share so far
    P:share:{<session>}:<group>:results  STREAM  (scan, first, stop, data) per claim served

The braces are hash tags: every key of one scan lands in one Redis Cluster slot (one
XREAD covers all of its streams, one MULTI/EXEC writes them), the session's own keys and
its point shares in the session's slot; the global indexes are one key (one slot) each.
Escaping keeps user names from adding braces.

Names are checked by ``check_name`` before any key is built from them: a non-empty
``str`` of at most ``MAX_SESSION_NAME`` (sessions) or ``MAX_CHANNEL_NAME`` (scan and
shared channels) characters, encodable as UTF-8 (no lone surrogate such as ``"\\udcff"``),
without control characters (NUL, newline, tab, DEL...); a session name has no ``':'``.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote, unquote

from redis.crc import key_slot

from .._errors import InvalidName

#: Longest session name, in characters (it becomes part of key and file names).
MAX_SESSION_NAME = 128
#: Longest channel name (scan channels and shared channels), in characters.
MAX_CHANNEL_NAME = 256

# Characters kept as they are in a key; everything else (":", "{", "}", "%", spaces,
# non-ASCII) is %-escaped so a name can neither split a key nor open a hash tag.
_SAFE = "-_.~!$&'()*+,;=@[]^`|"


def escape(name: str) -> str:
    """A user-given name as it appears inside a key."""
    return quote(name, safe=_SAFE)


def unescape(part: str) -> str:
    """The inverse of ``escape``."""
    return unquote(part)


def check_name(kind: str, name: object, max_len: int) -> str:
    """``name`` if it can name a ``kind`` (session, channel...); else ``InvalidName`` saying
    which rule it breaks: a non-empty str, UTF-8, no control character, ``max_len`` at most."""
    if not isinstance(name, str) or not name:
        raise InvalidName(f"a {kind} name is a non-empty string, got {name!r:.80}")
    if len(name) > max_len:
        raise InvalidName(
            f"a {kind} name has at most {max_len} characters, got {len(name)}: {name[:40]!r}..."
        )
    try:
        name.encode()
    except UnicodeEncodeError as exc:
        raise InvalidName(
            f"a {kind} name must be valid text, got {name!r} with {name[exc.start]!r} at "
            f"{exc.start} (a lone surrogate: decode bytes with errors='replace')"
        ) from None
    bad = next((c for c in name if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise InvalidName(
            f"a {kind} name cannot contain control characters, got {name!r} "
            f"(try {''.join(c for c in name if unicodedata.category(c) != 'Cc')!r})"
        )
    return name


def check_session_name(name: object) -> str:
    """``name`` if ``check_name`` accepts it as a session name and it has no ``':'``."""
    checked = check_name("session", name, MAX_SESSION_NAME)
    if ":" in checked:
        raise InvalidName(
            f"a session name cannot contain ':', got {checked!r} "
            f"(try {checked.replace(':', '_')!r})"
        )
    return checked


def sessions(prefix: str) -> str:
    """Index of sessions by last activity."""
    return f"{prefix}:sessions"


def scans(prefix: str) -> str:
    """Index of all scans by creation time (status, memory cap)."""
    return f"{prefix}:scans"


def feed(prefix: str) -> str:
    """The feed of new scans across sessions: one entry per scan created (its key,
    session, number), in creation order, so a reader resumes from an entry ID."""
    return f"{prefix}:feed"


def session_seq(prefix: str, session: str) -> str:
    """Counter that numbers a session's scans."""
    return f"{prefix}:session:{{{escape(session)}}}:seq"


def session_log(prefix: str, session: str) -> str:
    """The session's log stream."""
    return f"{prefix}:session:{{{escape(session)}}}:log"


def scan(prefix: str, session: str, number: int) -> str:
    """The scan record (a hash); also the scan's public key, ``bus.scan(key)``."""
    return f"{prefix}:scan:{{{escape(session)}:{number}}}"


def scan_log(scan_key: str) -> str:
    """The scan's log stream."""
    return f"{scan_key}:log"


def scan_control(scan_key: str) -> str:
    """Requests addressed to the running scan (a stream)."""
    return f"{scan_key}:ctl"


def channel(scan_key: str, name: str) -> str:
    """The stream of one channel's points."""
    return f"{scan_key}:ch:{escape(name)}"


def shared(prefix: str, name: str) -> str:
    """A shared channel's hash, and the pub/sub topic that announces its changes."""
    return f"{prefix}:shared:{escape(name)}"


def shared_pattern(prefix: str) -> str:
    """The SCAN pattern that matches every shared channel's hash."""
    return f"{prefix}:shared:*"


def shared_name(prefix: str, key: str) -> str:
    """The name of the shared channel whose hash is ``key``."""
    return unescape(key[len(f"{prefix}:shared:") :])


def share(prefix: str, session: str, group: str) -> str:
    """The work items of point share ``group`` over ``session``'s scans (a stream whose
    consumer group of the same name hands each item to one member)."""
    return f"{prefix}:share:{{{escape(session)}}}:{escape(group)}"


def share_marks(share_key: str) -> str:
    """How far each scan's points went into the share (a hash; the share's hash tag)."""
    return f"{share_key}:marks"


def share_results(share_key: str) -> str:
    """What the share's members made of their claims (a stream; the share's hash tag)."""
    return f"{share_key}:results"


def parse_scan(key: str) -> tuple[str, str, int]:
    """Split a scan key into (prefix, session, number); ValueError if it is not one."""
    head, sep, tag = key.partition(":scan:{")
    if not sep or not tag.endswith("}") or not head:
        raise ValueError(f"not a databus scan key: {key!r} (expected '<prefix>:scan:{{s:n}}')")
    session, _, number = tag[:-1].rpartition(":")
    if not session or not number.isdigit():
        raise ValueError(f"not a databus scan key: {key!r} (expected '<prefix>:scan:{{s:n}}')")
    return head, unescape(session), int(number)


def hash_slot(key: str) -> int:
    """The Redis Cluster slot of ``key`` (CRC16 of its hash tag), as the server computes
    it: redis-py's own ``key_slot``, which its cluster client routes by."""
    return key_slot(key.encode())
