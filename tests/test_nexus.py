"""The NeXus tree functions (clients/_nexus.py) on in-memory files: no server, no disk."""

import json
import time

import h5py
import numpy as np
import pytest

from databus._encoding import Descriptor, pack_meta
from databus._saving import hdf5_name, original_name
from databus._subscribe import Node, ScanNode
from databus.clients._nexus import GAP_REASONS, create_entry, plotselect, store_info

_files = iter(range(10**6))


@pytest.fixture
def h5():
    with h5py.File(f"mem{next(_files)}.h5", "w", driver="core", backing_store=False) as f:
        yield f


def scan_node(info, channels):
    """A real ScanNode from a record as the publisher writes it (no server is read)."""
    record = {b"number": b"1", b"info": pack_meta(info), b"created": b"%f" % time.time()}
    for name, dtype, shape, kind in channels:
        desc = Descriptor.create(name, dtype, shape, kind=kind)
        record[f"ch:{name}".encode()] = desc.to_meta()
    return ScanNode(None, "p:scan:{s:1}", record, parent=Node(None, "s", "s", None))


def test_an_entry_has_the_nexus_groups_and_one_dataset_per_channel(h5):
    scan = scan_node(
        {"title": "ascan robz 0 1 3 0.1", "motors": ["robz"], "a/b": 1, "a_b": [1, 2]},
        [
            ("axis:robz", "float64", (), "array"),
            ("sim:diode", "int32", (), "array"),
            ("det:image", "uint16", (4, 4), "array"),
            ("det:data", "uint16", (4, 4), "array"),
            ("log:records", None, (), "json"),
            ("lima:image", "uint16", (4, 4), "ref"),
        ],
    )
    e = create_entry(h5, "1.1", scan, {})
    assert e.attrs["NX_class"] == "NXentry" and h5.attrs["default"] == "1.1"
    assert e["title"][()] == b"ascan robz 0 1 3 0.1"
    assert e["instrument/positioners/robz"] == e["instrument/robz/value"]
    assert e["instrument/robz"].attrs["NX_class"] == "NXpositioner"
    assert e["instrument/det/data"].attrs["interpretation"] == "image"
    assert e["instrument/det/data"].chunks == (1, 4, 4)
    # det:data meets det:image in the 'det' group: it gets a name of its own
    channels = {e[p].attrs["channel"] for p in e["writer/paths"].asstr()[()] if p}
    assert channels == {"axis:robz", "sim:diode", "det:image", "det:data", "log:records"}
    stored = [original_name(n) for n in e["writer/channels"].asstr()[()]]
    assert stored == list(scan.channels)
    assert e["writer/paths"].asstr()[()][stored.index("lima:image")] == ""  # linked at the end
    assert list(e["writer/gaps"].attrs["reasons"]) == list(GAP_REASONS)
    assert e["writer/progress"][()].tolist() == [0] * 6
    assert e["scan_info/a%2Fb"][()] == 1 and e["scan_info/a_b"][()].tolist() == [1, 2]
    assert e["plotselect"].attrs["signal"] == "diode"
    assert list(e["plotselect"].attrs["axes"]) == ["robz"]


def test_a_mesh_is_plotted_as_a_map_once_ended(h5):
    info = {"motors": ["roby", "robz"], "data_dim": 2, "shape": [2, 3]}
    scan = scan_node(
        info,
        [
            ("axis:roby", "float64", (), "array"),
            ("axis:robz", "float64", (), "array"),
            ("sim:diode", "float64", (), "array"),
        ],
    )
    e = create_entry(h5, "1.1", scan, {})
    fast, slow = np.tile([0.0, 1.0, 2.0], 2), np.repeat([10.0, 20.0], 3)
    for path, values in zip(
        e["writer/paths"].asstr()[()], (fast, slow, np.arange(5.0)), strict=True
    ):
        e[path].resize(len(values), axis=0)
        e[path][:] = values
    plotselect(e, info, list(scan.channels), list(e["writer/paths"].asstr()[()]), final=True)
    nxdata = e["plotselect"]
    assert nxdata["diode"].shape == (2, 3)
    assert np.isnan(nxdata["diode"][1, 2])  # the point the scan did not reach
    assert nxdata["robz"][()].tolist() == [10.0, 20.0]
    assert nxdata["roby"][()].tolist() == [0.0, 1.0, 2.0]
    assert list(nxdata.attrs["axes"]) == ["robz", "roby"]


def test_scan_info_keeps_numbers_and_strings_and_the_rest_as_json(h5):
    store_info(
        h5.create_group("scan_info"),
        {"n": 3, "title": "t", "nul": "a\0b", "nested": {"x": [1, "y"]}, "empty": []},
    )
    g = h5["scan_info"]
    assert g["n"][()] == 3 and g["title"][()] == b"t"
    assert json.loads(g["nul"][()]) == "a\0b"
    assert json.loads(g["nested"][()]) == {"x": [1, "y"]}
    assert json.loads(g["empty"][()]) == []


@pytest.mark.parametrize("name", ["a/b", "a_b", ".x", "x", " x", "%2F", "nul\0", "", "é/ü"])
def test_names_map_one_to_one_and_back(h5, name):
    stored = hdf5_name(name)
    assert "/" not in stored and "\0" not in stored and not stored.startswith(".")
    assert original_name(stored) == name
    h5.create_group(stored)  # HDF5 takes it
