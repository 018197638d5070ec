"""bluesky's own LiveTable on a bus session: the to-bluesky bridge feeds an unmodified
RemoteDispatcher (here both in this process; `databus bridge to-bluesky` runs the bridge
on its own).

python examples/bluesky_live_table.py [--session NAME] [--scans N] [--fields a,b]
"""

import argparse
import asyncio

import msgpack
from bluesky.callbacks import LiveTable
from bluesky.callbacks.zmq import RemoteDispatcher

import databus
from databus.clients.bluesky import ToBluesky
from databus.scan import current_session

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--session", default=None, help="default: DATABUS_SESSION or demo_session")
parser.add_argument("--scans", type=int, default=0, help="exit after this many runs (0: never)")
parser.add_argument("--fields", default="robz,sim_ct_gauss_noise", help="LiveTable's columns")
args = parser.parse_args()

bus = databus.connect()
bridge = ToBluesky(args.session or current_session(), bind="tcp://127.0.0.1:*", bus=bus)
bridge.start()
dispatcher = RemoteDispatcher(bridge.address.removeprefix("tcp://"), deserializer=msgpack.unpackb)
dispatcher.subscribe(LiveTable(args.fields.split(",")))
ended = 0


def after_scans(name: str, doc: dict) -> None:
    """Ends the dispatcher's loop (from inside it) after ``--scans`` runs."""
    global ended
    if name == "stop":
        ended += 1
        if ended == args.scans:
            for task in asyncio.all_tasks(dispatcher.loop):  # its receiving task
                task.cancel()


dispatcher.subscribe(after_scans)
print(f"following {bridge.session.name} with LiveTable, through {bridge.address}", flush=True)
try:
    dispatcher.start()
except asyncio.CancelledError:  # the last run asked for has ended
    pass
finally:
    bridge.close()
    bus.close()
