"""Client I: ID10's online XRR fit (a beamline user script): a session walk over scans,
at END_SCAN the scan's ``fastfit`` info groups scans; the group's channels are read by
``scan.walk(wait=False, include_filter="channel")`` and ``get_as_array(0, -1)``, and
the result is published in a shared ``Channel("last_film_thickness")``.

Its loop with only the imports changed; the fit (a remote inference) is replaced by a
sum. Usage: classic_i_xrr_fit.py SESSION
"""

import json
import sys

import numpy as np

from databus.blissdata.config.channels import Channel
from databus.blissdata.data.node import get_session_node

last_film_thickness = Channel("last_film_thickness", default_value=None)
counter_names = ["axis:gam", "pilatus300k:roi_counters:roi2_sum"]


def process_scans(scans):
    data = {k: [] for k in counter_names}
    transm = []
    for scan in scans:
        shape = None
        for node in scan.walk(wait=False, include_filter="channel"):
            if node.name in data:
                tmp = node.get_as_array(0, -1)
                data[node.name].append(tmp)
                shape = len(tmp)
        transm.append(np.ones(shape) * scan.info.get("fastfit")["watt0"])
    data = {k: np.concatenate(v) for k, v in data.items()}
    thickness = float(np.sum(data["pilatus300k:roi_counters:roi2_sum"] * np.concatenate(transm)))
    last_film_thickness.value = thickness
    return {"points": len(data["axis:gam"]), "thickness": thickness}


session_node = get_session_node(sys.argv[1])
received_scans, result = [], None
print("ready", flush=True)
for event_type, node, _event_data in session_node.walk_on_new_events(include_filter=["scan"]):
    if event_type == event_type.END_SCAN:
        params = node.info.get("fastfit")
        if params.get("xrr_scan_group_first", False):
            received_scans = [node]
        if params.get("xrr_scan_group_last", False):
            received_scans.append(node)
            result = process_scans(received_scans)
            break
result["scans"] = [s.db_name for s in received_scans]
print(json.dumps(result))
