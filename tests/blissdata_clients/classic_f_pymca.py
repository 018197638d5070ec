"""Client F: PyMca's RedisTools (PyMca5/PyMcaCore/RedisTools.py): nodes listed by walking
without waiting (``walk`` or, for the last ones, ``walk_from_last``) on session and scan
nodes, scan info through ``info.get_all()`` and ``info["acquisition_chain"]``, counters
by dimension, their data by ``get_as_array(0, -1)``.

Its functions with only the imports changed (the keyspace scan of
``get_session_scan_list`` left out: the bus has no keyspace to scan). Usage:
classic_f_pymca.py SESSION
"""

import json
import sys

from databus.blissdata.data.node import get_node

_NODE_TYPES = ["channel", "lima", "node_ref_channel", "scan", "scan_group"]


def get_node_list(node, node_type=None, filter=None, dimension=None, unique=False, reverse=False):
    input_node = get_node(node) if not hasattr(node, "name") else node
    if hasattr(input_node, "walk"):
        iterator = input_node.walk_from_last if reverse else input_node.walk
    else:
        iterator = input_node.iterator.walk_from_last if reverse else input_node.iterator.walk
    output_list = []
    for node in iterator(wait=False, include_filter=filter):
        if hasattr(node.name, "startswith") and node.name.startswith("_"):
            continue
        if dimension is not None and (not hasattr(node, "shape") or len(node.shape) != dimension):
            continue
        if node_type is None or node.type == node_type:
            output_list.append(node)
        if unique and len(output_list):
            break
    return output_list


def get_scan_list(session_node):
    return get_node_list(session_node, node_type="scan", filter="scan")


def get_data_channels(node, unique=False):
    return get_node_list(node, node_type="channel", filter="channel", dimension=0, unique=unique)


def get_spectra(node):
    nodes = get_node_list(node, node_type="channel", filter="channel", dimension=1)
    return [n.get_as_array(0, -1) for n in nodes]


def get_scan_data(scan_node, top_master=False):
    data_channels = get_data_channels(scan_node)
    if top_master:
        top_master, channels = next(iter(scan_node.info["acquisition_chain"].items()))
        if "scalars" in channels:
            data_channels = [x for x in data_channels if x.name in channels["scalars"]]
    return {channel.name: channel.get_as_array(0, -1).tolist() for channel in data_channels}


session_node = get_node(sys.argv[1])
scans = get_scan_list(session_node)
last = get_node_list(session_node, node_type="scan", filter="scan", unique=True, reverse=True)
print(
    json.dumps(
        {
            "scans": [s.name for s in scans],
            "titles": [s.info.get_all()["title"] for s in scans],
            "last": last[0].name,
            "timestamps": [s.info["start_timestamp"] for s in scans],
            "data": get_scan_data(scans[-1]),
            "top_master": sorted(get_scan_data(scans[-1], top_master=True)),
            "spectra": len(get_spectra(scans[-1])),
        }
    )
)
