"""Client C: BLISS's ScansWatcher (blissdata/data/scan.py, the base of Flint and of the
shell's scan display): one session walk from a thread, dispatching scan creation, start,
end and data to an observer by node type, routing data by ``node.fullname``.

Its idioms with only the imports changed; the observer records what it is given, and the
watcher stops (DataStreamReaderStopHandler) after NSCANS scans.
Usage: classic_c_scans_watcher.py SESSION NSCANS
"""

import json
import sys
import threading
import traceback

from databus.blissdata.data.events import EventType
from databus.blissdata.data.node import get_or_create_node
from databus.blissdata.streaming import DataStreamReaderStopHandler

session_name, nscans = sys.argv[1], int(sys.argv[2])
seen = {"created": [], "started": [], "finished": [], "scalars": {}, "ndim": {}, "lima": {}}
running_scans = set()
stop_handler = DataStreamReaderStopHandler()
ready_event = threading.Event()


def scan_db_name_from_child(db_name):
    for scan_db_name in running_scans:
        if db_name.startswith(scan_db_name + ":"):
            return scan_db_name
    return None


def watch():
    session_node = get_or_create_node(session_name, node_type="session")
    for event in session_node.walk_on_new_events(
        stop_handler=stop_handler,
        exclude_existing_children=("scan", "scan_group"),
        started_event=ready_event,
    ):
        event_type, node, event_data = event
        if event_type == EventType.NEW_NODE:
            if node.type == "scan":
                scan_info = node.info.get_all()
                running_scans.add(node.db_name)
                seen["created"].append([scan_info["title"], sorted(scan_info.get("channels", {}))])
        elif event_type == EventType.NEW_DATA:
            if not hasattr(node, "fullname"):
                continue
            fullname = node.fullname
            scan_db_name = scan_db_name_from_child(node.db_name)
            if scan_db_name is None:
                continue
            if node.type == "channel":
                dim = len(event_data.description.get("shape"))
                into = seen["scalars"] if dim == 0 else seen["ndim"]
                values = into.setdefault(scan_db_name, {}).setdefault(fullname, [])
                assert event_data.first_index == len(values)
                values.extend(numpy_list(event_data.data))
            elif node.type == "lima":
                refs = seen["lima"].setdefault(scan_db_name, {}).setdefault(fullname, [])
                assert event_data.first_index == len(refs)
                refs.extend([list(ref) for ref in event_data.data])
        elif event_type == EventType.PREPARED_SCAN:
            if node.db_name in running_scans:
                seen["started"].append(node.info.get_all()["title"])
        elif event_type == EventType.END_SCAN and node.db_name in running_scans:
            seen["finished"].append(node.info.get_all()["title"])
            running_scans.discard(node.db_name)
            if len(seen["finished"]) == nscans:
                stop_handler.stop()


def numpy_list(data):
    return [x.tolist() if hasattr(x, "tolist") else x for x in data]


def run():
    try:
        watch()
    except BaseException:
        seen["error"] = traceback.format_exc()
        ready_event.set()


watcher = threading.Thread(target=run)
watcher.start()
ready_event.wait()
print("ready", flush=True)
watcher.join()
if "error" in seen:
    sys.exit(seen["error"])
print(json.dumps(seen))
