"""Client H: the ewoks session watcher that submits a scan's workflows (the ewoksjob /
ewoks BLISS integration): monkey-patched by gevent first, a session walk over scans
only, ``ev.type == ev.type.NEW_NODE``, the workflows, file name and scan number from the
scan's info.

Its loop with only the imports changed; the workflows are recorded, not submitted, and
the loop ends after NSCANS scans. Usage: classic_h_ewoks_watcher.py SESSION NSCANS
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Mapping  # noqa: E402

from databus.blissdata.data.node import get_session_node  # noqa: E402

session = get_session_node(sys.argv[1])
nscans, seen, submitted = int(sys.argv[2]), 0, []
scan_types = ("scan", "scan_group")
print("ready", flush=True)
for ev in session.walk_on_new_events(exclude_children=scan_types, wait=True):
    if ev.type == ev.type.NEW_NODE and ev.node.type == "scan":
        seen += 1
        info = ev.node.info
        workflows = info.get("workflows")
        if workflows:
            filename = info.get("filename")
            scan_nb = info.get("scan_nb")
            for wfname, nxprocess in workflows.items():
                if not isinstance(nxprocess, Mapping):
                    continue
                config = nxprocess["configuration"]
                submitted.append([wfname, config["data"], scan_nb, filename])
    if seen == nscans and ev.type == ev.type.END_SCAN:
        break
print(json.dumps({"submitted": submitted, "scans": seen}))
