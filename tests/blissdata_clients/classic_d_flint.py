"""Client D: Flint's scan history and data readers (bliss/flint/helper/scan_history.py)
and its live image (bliss/flint/manager/scan_manager.py): the session's scans without
waiting, a scan's scalar channels by ``scan_info["channels"]``, the last image of a lima
channel with ``from_stream``.

Its idioms with only the imports changed. Usage: classic_d_flint.py SESSION
"""

import json
import sys

from databus.blissdata.data.node import get_node, get_session_node


def get_scans(session_name):
    session_node = get_session_node(session_name)
    scan_types = ("scan",)
    for scan in session_node.walk(
        wait=False, include_filter=scan_types, exclude_children=scan_types
    ):
        info = scan.info
        node_name = info["node_name"]
        yield {
            "node_name": node_name,
            "start_time": info["start_time"],
            "scan_nb": info["scan_nb"],
            "type": info["type"],
            "title": info["title"],
        }


def get_data_from_redis(scan_node_name, scan_info):
    channel_names = {name for name, c in scan_info["channels"].items() if c.get("dim", 0) == 0}
    result = {}
    scan = get_node(scan_node_name)
    for node in scan.walk(wait=False):
        if node.name not in channel_names:
            continue
        result[node.name] = node.get_as_array(0, -1).tolist()
    return result


def last_images(scan_node_name):
    images = {}
    scan = get_node(scan_node_name)
    for node in scan.walk(wait=False):
        if node.type != "lima":
            continue
        node.from_stream = True
        image_view = node.get(-1)
        live = image_view.get_last_live_image()
        last = image_view.get_last_image()
        images[node.name] = [live.frame_number, list(live.data.shape), last.frame_number]
    return images


history = list(get_scans(sys.argv[1]))
last = history[-1]["node_name"]
scan_info = dict(get_node(last).info.items())
print(
    json.dumps(
        {
            "history": history,
            "data": get_data_from_redis(last, scan_info),
            "images": last_images(last),
        }
    )
)
