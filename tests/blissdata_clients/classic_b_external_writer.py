"""Client B: BLISS's external HDF5 writer example
(scripts/external_saving_example/external_saving_example.py): a session walk hands each
new scan to a writer greenlet that walks the scan's own events and writes its channels.

The example's idioms with only the imports changed, its sub-scan naming included (one
entry per top master, found as the nodes whose parent is the scan); left out: the
instrument/meta groups (silx's dicttonx). The loop ends after NSCANS scans.
Usage: classic_b_external_writer.py SESSION NSCANS
"""

import json
import sys

import gevent
import h5py
import numpy

from databus.blissdata.data.node import get_session_node
from databus.blissdata.data.nodes.channel import ChannelDataNode
from databus.blissdata.data.nodes.lima import LimaImageChannelDataNode


class HDF5_Writer:
    def __init__(self, scan_node):
        self.scan_node = scan_node
        self.scan_name = scan_node.name
        filename = self.scan_info("filename").replace(".", "_external.")
        self.file = h5py.File(filename, mode="a")
        self.subscans = {}
        self.channels, self.lima_channels = [], []
        self.channel_indices = {}
        self.summary = {"file": filename, "events": 0, "nodes": []}
        self._greenlet = gevent.spawn(self.run)

    def h5_scan_name(self, node):
        found = [value for key, value in self.subscans.items() if key in node.db_name]
        if len(found) != 1:
            raise RuntimeError("Trouble identifying sub-scan: " + node.db_name)
        return self.inject_subscan_nr(found[0])

    def inject_subscan_nr(self, postfix):
        tmp = self.scan_name.split("_")
        tmp[0] = tmp[0] + postfix
        return "_".join(tmp)

    def add_subscan(self, node):
        if node.db_name not in self.subscans:
            self.subscans[node.db_name] = "" if not self.subscans else f".{len(self.subscans)}"
            entry = self.file.create_group(self.inject_subscan_nr(self.subscans[node.db_name]))
            entry.attrs["NX_class"] = "NXentry"
            entry["title"] = self.scan_info("title")
            entry.create_group("measurement").attrs["NX_class"] = "NXcollection"

    def scan_info(self, key):
        return self.scan_node.info.get(key)

    def wait_end(self):
        self._greenlet.get()

    def run(self):
        for event_type, node, _event_data in self.scan_node.walk_events():
            self.summary["events"] += 1
            if event_type == event_type.NEW_NODE and node.type == "channel":
                self.channels.append(node)
                self.channel_indices[node.name] = 0
                npoints = self.scan_info("npoints") or 1
                self.file.create_dataset(
                    self.h5_scan_name(node) + f"/measurement/{node.name}",
                    shape=tuple([npoints, *list(node.shape)]),
                    dtype=node.dtype,
                    maxshape=tuple([None] + [None] * len(node.shape)),
                    fillvalue=numpy.nan,
                )
            elif event_type == event_type.NEW_NODE and node.type == "lima":
                self.lima_channels.append(node)
            elif event_type == event_type.NEW_DATA and node.type == "channel":
                self.update_data(node)
            elif event_type == event_type.NEW_NODE and (
                node.parent.type == "scan" or node.parent.type == "scan_group"
            ):
                self.add_subscan(node)
            elif event_type == event_type.END_SCAN:
                self.finalize()
                break

    def update_data(self, node):
        data = node.get_as_array(self.channel_indices[node.name], -1)
        data_len = data.shape[0]
        if data_len > 0:
            dataset = self.file[self.h5_scan_name(node) + f"/measurement/{node.name}"]
            new_point_index = self.channel_indices[node.name] + data_len
            if dataset.shape[0] < new_point_index:
                dataset.resize(new_point_index, axis=0)
            dataset[self.channel_indices[node.name] : new_point_index] = data
            self.channel_indices[node.name] += data_len

    def lima_ref_array(self, node):
        tmp = node.get(0, -1).all_image_references()
        if tmp != []:
            tmp = numpy.array(tmp, ndmin=2)
            return numpy.array(
                (tmp[:, 0], tmp[:, 3], tmp[:, 2], tmp[:, 1]), dtype=h5py.special_dtype(vlen=str)
            ).T
        return None

    def finalize(self):
        for c in self.channels:
            self.update_data(c)
        for c in self.lima_channels:
            data = self.lima_ref_array(c)
            self.file.create_dataset(self.h5_scan_name(c) + f"/measurement/{c.name}", data=data)
        for node in self.scan_node.walk(wait=False):
            if node.db_name == self.scan_node.db_name:
                continue
            kind = "data" if isinstance(node, ChannelDataNode) else "other"
            kind = "lima" if isinstance(node, LimaImageChannelDataNode) else kind
            self.summary["nodes"].append([node.name, kind])
        self.summary["info_keys"] = sorted(self.scan_node.info.get_all())
        self.summary["datasets"] = {
            name: list(ds.shape) for name, ds in self.file[f"{self.scan_name}/measurement"].items()
        }
        row = self.file[f"{self.scan_name}/measurement"]["sim_det:image"][-1]
        self.summary["lima_row"] = [x.decode() for x in row]
        self.file.close()


def listen_scans_of_session(session, nscans):
    session_node = get_session_node(session)
    scan_stack, done = {}, []
    print("ready", flush=True)
    for event_type, node, _event_data in session_node.walk_on_new_events(
        include_filter=["scan", "scan_group"]
    ):
        if event_type == event_type.NEW_NODE:
            scan_stack[node.db_name] = HDF5_Writer(node)
        elif event_type == event_type.END_SCAN:
            s = scan_stack.pop(node.db_name, None)
            if s is not None:
                s.wait_end()
                done.append(s.summary)
            if len(done) == nscans:
                return done


print(json.dumps(listen_scans_of_session(sys.argv[1], int(sys.argv[2]))))
