"""Client L: a service writing every new scan's scalar data as a SPEC file scan (the
blissdata 2.x writer-service idiom: get_next_scan, load_scan, wait for PREPARED with
update(), one cursor per stream read to EndOfStream, the end info once CLOSED). Only the
import prefix differs from a blissdata script.

Usage: bd2_spec_writer.py <number of scans> <spec file>; $BLISSDATA_URL names the
server. Prints READY once it watches, then one JSON line: what it wrote per scan.
"""

import json
import os
import sys

import numpy as np

from databus.blissdata import DataStore, ScanState
from databus.blissdata.exceptions import EndOfStream


def read_stream(stream):
    values = []
    cursor = stream.cursor()
    while True:
        try:
            view = cursor.read()
        except EndOfStream:
            return np.concatenate(values) if values else np.empty(0)
        values.append(np.asarray(view.get_data(), dtype=float))


def write_scan(out, scan):
    while scan.state < ScanState.PREPARED:
        scan.update()
    streams = {
        name: stream
        for name, stream in scan.streams.items()
        if stream.kind == "array" and stream.shape == ()
    }
    columns = {name: read_stream(stream) for name, stream in streams.items()}
    while scan.state < ScanState.CLOSED:
        scan.update()
    info = scan.info
    labels = [name.split(":")[-1] for name in columns]
    npoints = min((len(c) for c in columns.values()), default=0)
    out.write(f"\n#S {info.get('scan_nb', scan.number)} {info.get('title', scan.name)}\n")
    out.write(f"#C end_reason {info.get('end_reason')}\n")
    out.write(f"#N {len(labels)}\n#L {'  '.join(labels)}\n")
    for i in range(npoints):
        out.write(" ".join(f"{columns[name][i]:.10g}" for name in columns) + "\n")
    return {"key": scan.key, "labels": labels, "npoints": npoints, "end": info.get("end_reason")}


def main():
    wanted, path = int(sys.argv[1]), sys.argv[2]
    data_store = DataStore(os.environ["BLISSDATA_URL"])
    since = data_store.get_last_scan_timetag()
    print("READY", flush=True)
    written = []
    with open(path, "w") as out:
        out.write("#F spec\n")
        while len(written) < wanted:
            since, key = data_store.get_next_scan(since=since)
            written.append(write_scan(out, data_store.load_scan(key)))
    print(json.dumps(written))


if __name__ == "__main__":
    main()
