"""A bluesky RunEngine whose runs are bus scans, held by a shared channel: BusPublisher
publishes each run; a suspender on ChannelSignal("beam_lost") pauses the plan while any
process sets that channel (`python -c "from databus import channels;
channels.Channel('beam_lost').value = True"`).

python examples/bluesky_runengine.py [--session NAME] [--points N]
"""

import argparse

from bluesky import RunEngine
from bluesky import plans as bp
from bluesky.suspenders import SuspendBoolHigh
from ophyd.sim import det, motor

from databus.clients.bluesky import BusPublisher, ChannelSignal

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--session", default="bluesky", help="the bus session of the runs")
parser.add_argument("--points", type=int, default=11)
args = parser.parse_args()

RE = RunEngine()
with BusPublisher(session=args.session) as publisher:
    RE.subscribe(publisher)
    RE.install_suspender(SuspendBoolHigh(ChannelSignal("beam_lost", default_value=False)))
    (uid,) = RE(bp.scan([det], motor, -1, 1, args.points))
    print(f"run {uid} published to session {args.session!r}", flush=True)
stats = publisher.statistics()
print(f"{stats.published} documents published, {stats.dropped} dropped", flush=True)
