"""Client G: ewoksdata's BLISS reader (ewoksdata/data/bliss.py): a scan's points from
memory (``get_node(db_name)``, ``scan_node.walk_events()``, counters from
``event_data.data`` or ``get_as_array(i, -1)``, lima images by views ``get(i, -1)``
listed, ``ImageNotSaved`` caught) and ``last_lima_image`` (``from_stream``,
``get(-1).get_last_live_image()``).

Its functions with only the imports changed (silx's retry decorators left out).
Usage: classic_g_ewoksdata.py SCAN_DB_NAME LIMA_NAME COUNTER_NAME
"""

import json
import sys

from databus.blissdata.data.events.lima import ImageNotSaved
from databus.blissdata.data.node import get_node


def _get_node(db_name, node_type):
    node = get_node(db_name)
    if node is None:
        raise RuntimeError(f"Redis node {db_name} does not exist")
    if node.type != node_type:
        raise RuntimeError(f"Not a Redis {node_type} node")
    return node


def last_lima_image(db_name):
    node = _get_node(db_name, "lima")
    node.from_stream = True
    dataview = node.get(-1)
    image = dataview.get_last_live_image()
    if image is None or image.data is None:
        raise RuntimeError("Cannot get last image from lima")
    return image.data


def iter_bliss_scan_data_from_memory(db_name, lima_names, counter_names):
    scan_node = _get_node(db_name, "scan")
    indices = {name: 0 for name in lima_names + counter_names}
    buffers = {name: [] for name in lima_names + counter_names}
    for event_type, node, event_data in scan_node.walk_events():
        if node.type == "lima":
            name = node.db_name.split(":")[-2]
            if name not in lima_names:
                continue
            dataview = node.get(indices[name], -1)
            try:
                data = list(dataview)
            except ImageNotSaved:
                continue
            indices[name] += len(data)
            buffers[name].extend(data)
        elif node.type == "channel":
            name = node.db_name.split(":")[-1]
            if name not in counter_names:
                continue
            data = event_data.data if event_data else node.get_as_array(indices[name], -1)
            indices[name] += len(data)
            buffers[name].extend(data)
        nyield = min(len(v) for v in buffers.values())
        if nyield:
            for i in range(nyield):
                yield {name: values[i] for name, values in buffers.items()}
            buffers = {name: values[nyield:] for name, values in buffers.items()}
        if event_type == event_type.END_SCAN:
            break


scan_db_name, lima, counter = sys.argv[1:4]
rows = list(iter_bliss_scan_data_from_memory(scan_db_name, [lima], [counter]))
image = last_lima_image(f"{scan_db_name}:{lima}:image")
print(
    json.dumps(
        {
            "rows": len(rows),
            "counter": [float(r[counter]) for r in rows],
            "image_sums": [int(r[lima].sum()) for r in rows],
            "last_image_sum": int(image.sum()),
        }
    )
)
