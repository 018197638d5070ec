"""Client M: a workflow task reading one scan's data point by point while it runs (the
ewoksdata 2.x idiom: load_scan by key, update until PREPARED, pick streams by their
encoding, a CursorGroup read to EndOfStream, the final state with update(block=False)).
Only the import prefix differs from a blissdata script.

Usage: bd2_ewoks_reader.py <number of scans>; $BLISSDATA_URL names the server. Prints
READY once it watches, then one JSON line per scan read.
"""

import json
import os
import sys

import numpy as np

from databus.blissdata.exceptions import EndOfStream
from databus.blissdata.redis_engine.scan import ScanState
from databus.blissdata.redis_engine.store import DataStore
from databus.blissdata.streams import CursorGroup


def iter_scan_data(data_store, key):
    scan = data_store.load_scan(key)
    while scan.state < ScanState.PREPARED:
        scan.update(block=True)
    streams = {
        name: stream
        for name, stream in scan.streams.items()
        if stream.event_stream.encoding["type"] == "numeric" or stream.plugin == "lima"
    }
    group = CursorGroup(streams)
    while True:
        try:
            views = group.read()
        except EndOfStream:
            break
        for stream, view in views.items():
            yield stream.name, view.index, view.get_data()
    while scan.update(block=False):
        pass
    yield None, scan.state.name, scan.info.get("end_reason")


def main():
    wanted = int(sys.argv[1])
    data_store = DataStore(os.environ["BLISSDATA_URL"])
    since = data_store.get_last_scan_timetag()
    print("READY", flush=True)
    summaries = []
    for _ in range(wanted):
        since, key = data_store.get_next_scan(since=since)
        counts, sums, first = {}, {}, {}
        for name, index, data in iter_scan_data(data_store, key):
            if name is None:
                state, end_reason = index, data
                continue
            first.setdefault(name, index)
            counts[name] = counts.get(name, 0) + len(data)
            sums[name] = sums.get(name, 0.0) + float(np.sum(data))
        summaries.append(
            {"key": key, "counts": counts, "sums": sums, "state": state, "end": end_reason}
        )
    print(json.dumps(summaries))


if __name__ == "__main__":
    main()
