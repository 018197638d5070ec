"""The analysis half of the online-analysis loop: follow the session, track the maximum of
the gauss counter, and once the signal falls below half of it (the peak is behind us) set
the shared channel ``stop_alignment``, which stops the scan (stop_alignment_scan.py).

    python examples/stop_alignment_analysis.py [--scans N]
"""

import argparse

from databus import channels, node
from databus.scan import current_session

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--scans", type=int, default=1, help="exit after this many scans (0: never)")
args = parser.parse_args()

stop_alignment = channels.Channel("stop_alignment", default_value=False)
session_node = node.get_session_node(current_session())
print(f"following {session_node.name}", flush=True)
ended = 0
for event, *values in session_node.walk_on_new_events():
    if event == event.NEW_NODE:
        if values[0].type == "scan":
            max_value, stopped = 0.0, False
    elif event == event.NEW_DATA_IN_CHANNEL:
        channel = values[0]
        if channel.name.find("gauss") < 0 or stopped:
            continue
        data_value = float(values[1].data[-1])  # the newest point of this read
        max_value = max(max_value, data_value)
        if max_value > 100 and data_value < max_value / 2:  # well above the noise, then past it
            stop_alignment.value = True
            stopped = True
            last = values[1].first_index + values[1].block_size - 1
            print(f"peak {max_value:.1f} passed at point {last}: stop", flush=True)
    elif event == event.END_SCAN:
        ended += 1
        print(f"{values[0].db_name} ended: {values[1].reason}", flush=True)
        if args.scans and ended >= args.scans:
            break
