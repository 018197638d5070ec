"""Client K: a facility's event provider that turns every finished blissdata scan into an
event (DAMNIT's blissdata provider idiom: a resumable get_next_scan loop with a timeout,
pending scans polled with update(block=False) until CLOSED, identity and end info read
from the scan). Only the import prefix differs from a blissdata script.

Usage: bd2_scan_watcher.py <number of scans>; $BLISSDATA_URL names the server. Prints
READY once it watches, then one JSON line: the events.
"""

import json
import os
import sys

from databus.blissdata.redis_engine.scan import ScanState
from databus.blissdata.redis_engine.store import DataStore

try:
    from databus.blissdata.exceptions import NoScanAvailable, ScanLoadError, ScanNotFoundError
except ImportError:  # blissdata < 2.4
    from databus.blissdata.redis_engine.exceptions import (
        NoScanAvailable,
        ScanLoadError,
        ScanNotFoundError,
    )


class Watcher:
    def __init__(self, url, trigger_state=ScanState.CLOSED, poll_interval=0.2):
        self.data_store = DataStore(url)
        self.trigger_state = trigger_state
        self.poll_interval = poll_interval
        self.pending = {}

    def events(self):
        since = self.data_store.get_last_scan_timetag()
        print("READY", flush=True)
        while True:
            try:
                since, key = self.data_store.get_next_scan(since=since, timeout=self.poll_interval)
            except NoScanAvailable:
                pass
            else:
                self.add_scan(key)
            yield from self.check_pending()

    def add_scan(self, key):
        try:
            scan = self.data_store.load_scan(key)
        except ScanNotFoundError:
            return
        except ScanLoadError:
            return
        self.pending[key] = scan

    def check_pending(self):
        for key, scan in list(self.pending.items()):
            try:
                while scan.update(block=False):
                    pass
            except ScanNotFoundError:
                del self.pending[key]
                continue
            if scan.state >= self.trigger_state:
                del self.pending[key]
                yield self.scan_to_event(scan)

    def scan_to_event(self, scan):
        info = scan.info
        return {
            "key": scan.key,
            "session": scan.session,
            "name": scan.name,
            "number": int(info.get("scan_nb", scan.number)),
            "proposal": getattr(scan, "proposal", None),
            "end_reason": info.get("end_reason"),
            "filename": info.get("filename"),
            "title": info.get("title"),
            "state": scan.state.name,
        }


def main():
    wanted = int(sys.argv[1])
    events = []
    for event in Watcher(os.environ["BLISSDATA_URL"]).events():
        events.append(event)
        if len(events) == wanted:
            break
    print(json.dumps(events))


if __name__ == "__main__":
    main()
