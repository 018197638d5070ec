"""A live table of a session's scans: one row per point, as the points arrive.

python examples/live_table.py [--session NAME] [--scans N]
"""

import argparse

import numpy as np

import databus
from databus.scan import current_session

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--session", default=None, help="default: DATABUS_SESSION or demo_session")
parser.add_argument(
    "--scans", type=int, default=0, help="exit after this many scans end (0: never)"
)
args = parser.parse_args()

bus = databus.connect()
session = bus.session(args.session or current_session())
print(f"following {session.name} on {bus!r}", flush=True)
tables: dict[str, dict] = {}
ended = 0
for event in session.follow():
    node = event.node
    if event.type is databus.EventType.PREPARED_SCAN:
        scalars = [c for c in node.channels.values() if c.shape == () and c.type == "channel"]
        names = [c.short_name for c in scalars]
        tables[node.db_name] = {"columns": {c.name: [] for c in scalars}, "printed": 0}
        print(f"\n{node.info.get('title', node.db_name)}", flush=True)
        print(f"{'#':>5}" + "".join(f"{n:>16}" for n in names))
    elif event.type is databus.EventType.NEW_DATA and node.parent.db_name in tables:
        table = tables[node.parent.db_name]
        if node.name in table["columns"]:
            table["columns"][node.name].extend(np.asarray(event.data.data).tolist())
            complete = min(len(v) for v in table["columns"].values())
            for row in range(table["printed"], complete):
                cells = "".join(f"{v[row]:>16.6g}" for v in table["columns"].values())
                print(f"{row:>5}{cells}", flush=True)
            table["printed"] = complete
    elif event.type is databus.EventType.END_SCAN:
        tables.pop(node.db_name, None)
        print(f"-- {node.db_name} {event.data.reason}", flush=True)
        ended += 1
        if args.scans and ended >= args.scans:
            break
