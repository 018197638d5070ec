"""Client A: BLISS's data-life documentation (doc/docs/bliss_data_life.md), the online
analysis that stops an alignment scan once the gauss counter falls under half its maximum.

Written as the documentation writes it; only the imports are changed, and the loop ends
after one scan (the documentation's runs forever). Usage: classic_a_data_life.py SESSION
"""

import json
import sys

from databus.blissdata.config import channels
from databus.blissdata.data import node

max_value = 0.0
stop_alignment = channels.Channel("stop_alignment", default_value=False)
session_node = node.get_session_node(sys.argv[1])
seen = {"scans": [], "stopped_at_value": None, "max_value": None, "end": None}
print("ready", flush=True)
for event, *values in session_node.walk_on_new_events():
    if event == event.NEW_NODE:
        node = values[0]
        if node.type == "scan":
            max_value = 0.0
            seen["scans"].append(node.db_name)
    elif event == event.NEW_DATA_IN_CHANNEL:
        channel = values[0]
        if not channel.name.find("gauss") > -1:
            continue
        data_value = channel.get(-1)  # last value
        if data_value > max_value:
            max_value = data_value
        elif data_value < (max_value / 2.0) and not stop_alignment.value:
            print(f"Stop Alignment scan max_value:{max_value} current_value:{data_value}")
            stop_alignment.value = True
            seen["stopped_at_value"] = float(data_value)
    elif event == event.END_SCAN:
        seen["end"] = values[0].db_name
        break
seen["max_value"] = float(max_value)
print(json.dumps(seen))
