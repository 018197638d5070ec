"""Client E: the BLISS Nexus writer's subscribers (nexus_writer_service/subscribers/
session_writer.py, base_subscriber.py, scan_writer_base.py), under gevent as it runs:
a session walk over scans only, one greenlet per scan walking that scan's events with a
stop handler and a started event, channel data from ``event_data.data`` (or
``get_as_array(n, -1)``), lima references unpacked as ``(uri, suburi, index, fmt)``, and
at the end ``get(0, -1).all_image_references(saved=True)``.

Its idioms with only the imports changed. Usage: classic_e_nexus_writer.py SESSION NSCANS
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from databus.blissdata.data.node import get_session_node  # noqa: E402
from databus.blissdata.streaming import DataStreamReaderStopHandler  # noqa: E402

scan_types = ("scan", "scan_group")


def scan_writer(node, started_event, out):
    stop_handler = DataStreamReaderStopHandler()
    points, refs, lima_nodes = {}, {}, {}
    for event_type, n, event_data in node.walk_events(
        stop_handler=stop_handler, started_event=started_event
    ):
        if event_type == event_type.NEW_NODE and n.type in ("channel", "lima"):
            points.setdefault(n.fullname, 0)
            if n.type == "lima":
                lima_nodes[n.fullname] = n
        elif event_type == event_type.NEW_DATA and n.type == "channel":
            data = event_data.data
            if data is None:
                data = n.get_as_array(points[n.fullname], -1)
            assert event_data.first_index == points[n.fullname]
            points[n.fullname] += len(data)
        elif event_type == event_type.NEW_DATA and n.type == "lima":
            for uri, suburi, index, fmt in event_data.data:
                refs.setdefault(n.fullname, []).append([uri, suburi, index, fmt])
                points[n.fullname] += 1
        elif event_type == event_type.END_SCAN:
            info = node.info.get_all()
            saved = {
                name: [list(r) for r in lima.get(0, -1).all_image_references(saved=True)]
                for name, lima in lima_nodes.items()
            }
            out[node.db_name] = {
                "title": info["title"],
                "points": points,
                "refs_match": saved == refs,
                "nrefs": {name: len(r) for name, r in refs.items()},
            }
            stop_handler.stop()


session_node = get_session_node(sys.argv[1])
nscans, out, writers = int(sys.argv[2]), {}, []
print("ready", flush=True)
for event_type, node, _ in session_node.walk_on_new_events(
    include_filter=scan_types, exclude_children=scan_types
):
    if event_type == event_type.NEW_NODE:
        started = gevent.event.Event()
        writers.append(gevent.spawn(scan_writer, node, started, out))
        started.wait()
    elif event_type == event_type.END_SCAN and len(writers) == nscans:
        break
gevent.joinall(writers, raise_error=True)
print(json.dumps(out))
