"""Client N: a BLISS 2.x-style watcher (Nexus writer, Flint) under gevent: one greenlet
follows the feed with get_next_scan(since=...), one greenlet per scan of its session
waits for the scan's states with blocking update() and reads its streams with a
CursorGroup. Only the import prefix differs from a blissdata script.

Usage: bd2_session_watcher.py <session> <number of scans>; $BLISSDATA_URL names the
server. Prints READY once it watches, then one JSON line: per scan, what it saw.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from databus.blissdata.exceptions import EndOfStream  # noqa: E402
from databus.blissdata.redis_engine.scan import ScanState  # noqa: E402
from databus.blissdata.redis_engine.store import DataStore  # noqa: E402
from databus.blissdata.streams import CursorGroup  # noqa: E402


def follow_scan(scan, seen):
    states = [scan.state.name]
    while scan.state < ScanState.PREPARED:
        scan.update()
        states.append(scan.state.name)
    points = {}
    group = CursorGroup(scan.streams)
    while True:
        try:
            views = group.read(timeout=5)
        except EndOfStream:
            break
        for stream, view in views.items():
            points[stream.name] = points.get(stream.name, 0) + len(view)
    while scan.state < ScanState.CLOSED:
        scan.update()
        states.append(scan.state.name)
    seen[scan.key] = {
        "states": states,
        "points": points,
        "sequence": bool(scan.info.get("is_scan_sequence")),
        "end": scan.info.get("end_reason"),
    }


def main():
    session, wanted = sys.argv[1], int(sys.argv[2])
    data_store = DataStore(os.environ["BLISSDATA_URL"])
    since = data_store.get_last_scan_timetag()
    print("READY", flush=True)
    seen, followers = {}, []
    while len(followers) < wanted:
        since, key = data_store.get_next_scan(since=since)
        scan = data_store.load_scan(key)
        if scan.session != session:
            continue
        followers.append(gevent.spawn(follow_scan, scan, seen))
    gevent.joinall(followers, raise_error=True)
    print(json.dumps({"patched": monkey.is_module_patched("socket"), "scans": seen}))


if __name__ == "__main__":
    main()
