"""The analysis half of the online-analysis loop, as BLISS's data-flow documentation writes
it with only the imports changed: follow the session, keep the maximum of the gauss counter,
and once its last value falls under half that maximum (the peak is behind us) set the shared
channel ``stop_alignment``, which stops the scan (stop_alignment_scan.py).

It waits for the peak because the counter counts like a detector: a background (200 counts)
with Poisson noise never falls under half its own highest fluctuation. Added to the
documentation's code: the ``following`` line once subscribed, ``flush=True``, and the end
of each scan, after ``--scans`` of which it exits.

    python examples/stop_alignment_analysis.py [--scans N]
"""

import argparse

from databus import channels, node
from databus.scan import current_session

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--scans", type=int, default=1, help="exit after this many scans (0: never)")
args = parser.parse_args()

max_value = 0.0
# communication channel for bliss session
stop_alignment = channels.Channel("stop_alignment", default_value=False)
session_node = node.get_session_node(current_session())
print(f"following {session_node.name}", flush=True)
ended = 0
for event, *values in session_node.walk_on_new_events():
    if event == event.NEW_NODE:
        node = values[0]
        if node.type == "scan":
            # reset max_value to 0
            # when a new scan starts.
            max_value = 0.0
    elif event == event.NEW_DATA_IN_CHANNEL:
        channel = values[0]
        if not channel.name.find("gauss") > -1:
            continue
        data_value = channel.get(-1)  # last value
        if data_value > max_value:
            max_value = data_value
        elif data_value < (max_value / 2.0):
            print(
                f"Stop Alignment scan max_value:{max_value} current_value:{data_value}",
                flush=True,
            )
            # stop the scan
            stop_alignment.value = True
    elif event == event.END_SCAN:
        ended += 1
        print(f"{values[0].db_name} ended: {values[1].reason}", flush=True)
        if args.scans and ended >= args.scans:
            break
