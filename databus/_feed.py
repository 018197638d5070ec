"""The feed of new scans across every session, and the search that resumes it.

Each scan's creation appends one entry to the feed stream (``keys.feed``) in the same
MULTI/EXEC that writes its record, so the feed's entry IDs ("tags") order every scan of
the bus. A reader keeps the tag of the last scan it took and asks for the next one after
it (``next_scan``); a search (``find_scans``) returns, read atomically with its result,
the tag to resume from, so nothing created after the search is missed. Scans whose keys
are already gone (expired, evicted) are skipped, as blissdata skips deleted ones.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from ._encoding import text, unpack_meta
from ._errors import CorruptEntry, ReadTimeout
from ._store import commands, keys
from ._store.schema import LogEntry, log_entries, warn_skipped
from ._store.wire import ReadLink
from ._subscribe import ScanNode
from ._timing import milliseconds

if TYPE_CHECKING:
    from ._bus import Bus

#: The tag before every scan: ``next_scan(since=NO_SCAN)`` starts at the feed's beginning.
NO_SCAN = "0-0"
_TAG = re.compile(r"\d+(-\d+)?")


def _check_tag(since: object) -> str:
    """``since`` if it is a feed tag (``"<ms>-<seq>"``, or ``"<ms>"``); else ValueError."""
    if not isinstance(since, str) or not _TAG.fullmatch(since):
        raise ValueError(
            f"since must be a tag from last_scan_tag(), next_scan() or find_scans(), "
            f"like '1733011200000-0' (or '0-0' for the first scan kept), not {since!r:.60}"
        )
    return since


def last_scan_tag(bus: Bus) -> str:
    """The tag of the last scan created (``NO_SCAN`` when the feed is empty)."""
    last = bus.wire.call(*commands.feed_last(bus.settings.prefix))
    return text(last[0][0]) if last else NO_SCAN


def next_scan(bus: Bus, since: str | None, timeout: float | None) -> tuple[str, ScanNode]:
    """The first scan created after tag ``since`` (None: after now) that is still there,
    with its tag; blocks up to ``timeout`` seconds (None: for ever, 0: not at all) on a
    connection of its own, then ``ReadTimeout``."""
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout is seconds >= 0 (0: do not wait) or None, not {timeout!r}")
    cursor = last_scan_tag(bus) if since is None else _check_tag(since)
    deadline = None if timeout is None else time.monotonic() + timeout
    feed = keys.feed(bus.settings.prefix)
    link = ReadLink(bus.wire, "scan feed", timeout=timeout, revive=bus.revive_server)
    try:
        while True:
            block_ms: int | None = 0  # XREAD BLOCK 0: until an entry comes
            if deadline is not None:
                remaining = deadline - time.monotonic()
                block_ms = milliseconds(remaining) if remaining > 0 else None
            reply = link.read({feed: cursor}, 1, block_ms)
            if reply is None:
                continue  # the server was lost: read again once it is back
            if not reply:
                if deadline is not None and time.monotonic() >= deadline:
                    raise ReadTimeout(
                        f"no scan was created after tag {cursor} within {timeout:g} s"
                    )
                continue
            ((_, ((entry_id, fields),)),) = reply
            cursor = text(entry_id)
            scan = _scan_of(bus, feed, entry_id, fields)
            if scan is not None:
                return cursor, scan
    finally:
        link.close()


def _scan_of(bus: Bus, feed: str, entry_id: Any, fields: dict) -> ScanNode | None:
    """The scan a feed entry names, if it is still there and its record decodes."""
    try:
        key = LogEntry.parse(feed, entry_id, fields).scan
        if key is None:
            raise CorruptEntry("names no scan", key=feed, entry_id=text(entry_id))
        record = bus.wire.call(*commands.record(key))
        return ScanNode(bus, key, record) if record else None
    except CorruptEntry as exc:
        warn_skipped(feed, text(entry_id), str(exc))
        return None


def _matcher(value: Any) -> Any:
    """A test for one search field: text with ``*`` matches as a wildcard pattern (prefix,
    suffix, infix), anything else by equality."""
    if isinstance(value, str) and "*" in value:
        pattern = re.compile(".*".join(map(re.escape, value.split("*"))), re.DOTALL)
        return lambda found: isinstance(found, str) and pattern.fullmatch(found) is not None
    return lambda found: found == value


def find_scans(
    bus: Bus, session: str | None, number: int | None, info: dict[str, Any]
) -> tuple[str, list[str]]:
    """(tag, keys) of the scans still there whose session, number and scan-info fields
    match (see ``Bus.find_scans``), oldest first. The keys are those of the scans created
    up to the tag: the ones created after it (between the two reads) are left out, as
    ``next_scan(since=tag)`` gives them."""
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
        raise TypeError(f"number is a scan number (an int) or None, not {number!r:.40}")
    tag = last_scan_tag(bus)
    members, newer = bus.wire.run(commands.found_scans(bus.settings.prefix, tag))
    feed = keys.feed(bus.settings.prefix)
    later = {entry.scan for entry in log_entries(feed, newer, warn_skipped)}
    tests = {name: _matcher(value) for name, value in info.items()}
    wants_session = _matcher(session) if session is not None else None
    candidates = []
    for key in map(text, members):
        if key in later:
            continue  # created after the tag: next_scan(since=tag) gives it
        _, in_session, scan_number = keys.parse_scan(key)
        if wants_session is not None and not wants_session(in_session):
            continue
        if number is not None and scan_number != number:
            continue
        candidates.append(key)
    if not tests:
        there = bus.wire.run([commands.exists(key) for key in candidates])
        return tag, [key for key, n in zip(candidates, there, strict=True) if n]
    found = []
    for key, packed in zip(
        candidates, bus.wire.run_each(commands.scan_infos(candidates)), strict=True
    ):
        if packed is None or isinstance(packed, Exception):
            continue
        try:
            scan_info = unpack_meta(packed)
        except Exception as exc:
            warn_skipped(key, "info", f"scan info does not decode ({exc})")
            continue
        if isinstance(scan_info, dict) and all(
            name in scan_info and test(scan_info[name]) for name, test in tests.items()
        ):
            found.append(key)
    return tag, found
