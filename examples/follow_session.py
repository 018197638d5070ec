"""Print the scans of a session as they start and end.

python examples/follow_session.py [--session NAME] [--scans N]
"""

import argparse

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
ended = 0
for event in session.follow(include_filter="scan"):
    scan = event.node
    if event.type is databus.EventType.NEW_NODE:
        print(f"{scan.db_name} started: {scan.info.get('title', '')}", flush=True)
    elif event.type is databus.EventType.END_SCAN:
        error = f" ({event.data.error})" if event.data.error else ""
        print(f"{scan.db_name} ended: {event.data.reason}{error}", flush=True)
        ended += 1
        if args.scans and ended >= args.scans:
            break
