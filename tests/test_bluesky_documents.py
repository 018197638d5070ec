"""The composer of event-model runs, without a server: every document it returns passes
event-model's schema validation, and its rules (streams, data keys, gaps, end reasons)."""

from __future__ import annotations

import numpy as np
import pytest
from event_model import DocumentNames, schema_validators

from databus import Descriptor, FileRef
from databus.clients.bluesky._documents import RunDocuments
from databus.clients.bluesky._layout import chain_streams, data_keys_of, stream_of
from databus.clients.bluesky._rows import StreamRows


def _valid(docs):
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)
    return docs


def _run(descs, info=None, **kwargs):
    return RunDocuments("t:scan:{s:7}", 7, 100.0, info or {}, descs, clock=lambda: 5.0, **kwargs)


def test_rows_complete_in_every_channel_come_as_runs_around_gaps():
    rows = StreamRows(["a", "b"])
    rows.add("a", 0, np.arange(10), 10)
    assert rows.take() == []
    rows.add("b", 0, np.arange(6) * 10, 6)
    rows.gap("b", 6, 2, "dropped")
    rows.add("b", 8, np.arange(8, 15) * 10, 7)
    runs = rows.take()
    assert [(a, b) for a, b, _ in runs] == [(0, 6), (8, 10)]
    np.testing.assert_array_equal(runs[1][2]["a"], [8, 9])
    np.testing.assert_array_equal(runs[1][2]["b"], [80, 90])
    assert rows.emitted == 8 and rows.incomplete == 5


def test_rows_cut_file_references_to_the_run():
    rows = StreamRows(["x", "img"])
    rows.add("img", 0, [FileRef("/f.h5", "/d", 10, 14), FileRef("/f.h5", "/d", 20, 22)], 6)
    rows.add("x", 0, np.zeros(3), 3)
    ((_, _, first),) = rows.take()
    assert first["img"] == [FileRef("/f.h5", "/d", 10, 13)]
    rows.add("x", 3, np.zeros(3), 3)
    ((_, _, second),) = rows.take()
    assert second["img"] == [FileRef("/f.h5", "/d", 13, 14), FileRef("/f.h5", "/d", 20, 22)]


def test_a_run_from_start_to_stop_validates_and_pages_follow_the_rows():
    descs = [
        Descriptor.create("axis:robz", "float64", unit="mm"),
        Descriptor.create("diode:diode", "int32"),
        Descriptor.create("mca:spectrum", "float32", (8,)),
        Descriptor.create("status", None, kind="json"),
    ]
    info = {"type": "ascan", "npoints": 4, "motors": ["robz"], "a.b": {"c/d": 1}}
    run = _run(descs, info)
    ((_, start),) = _valid(run.open())
    assert (start["scan_id"], start["plan_name"], start["num_points"]) == (7, "ascan", 4)
    assert start["motors"] == ["robz"] and start["hints"]["dimensions"] == [[["robz"], "primary"]]
    assert start["databus"]["scan_info"]["a_b"] == {"c_d": 1}
    assert start["detectors"] == ["diode", "mca", "status"]
    assert _valid(run.data("axis:robz", 0, np.arange(4.0), 4)) == []
    run.data("diode:diode", 0, np.arange(4, dtype="i4"), 4)
    run.data("mca:spectrum", 0, np.ones((4, 8), "f4"), 4)
    docs = _valid(run.data("status", 0, ["ok", {"n": 1}, 2, "x"], 4))
    assert _names(docs) == ["descriptor", "event_page"]
    keys = docs[0][1]["data_keys"]
    assert keys["robz"] == {
        "source": "databus:t:scan:{s:7}/axis:robz",
        "units": "mm",
        "dtype": "number",
        "dtype_numpy": "<f8",
        "shape": [],
    }
    assert (keys["diode"]["dtype"], keys["spectrum"]["shape"]) == ("integer", [8])
    assert keys["status"]["dtype"] == "string"
    assert docs[0][1]["object_keys"]["axis"] == ["robz"]
    page = docs[1][1]
    assert page["seq_num"] == [1, 2, 3, 4] and page["time"] == [5.0] * 4
    assert page["data"]["robz"] == [0.0, 1.0, 2.0, 3.0]
    assert page["data"]["status"] == ["ok", '{"n": 1}', "2", "x"]
    assert len(page["data"]["spectrum"]) == 4 and page["data"]["spectrum"][0].shape == (8,)
    stop = _valid(run.close("finished"))[-1][1]
    assert (stop["exit_status"], stop["num_events"]) == ("success", {"primary": 4})


def _names(docs):
    return [name for name, _ in docs]


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("finished", "success"),
        ("stopped", "success"),
        ("aborted", "abort"),
        ("interrupted", "abort"),
        ("failed", "fail"),
        ("lost", "fail"),
        ("something new", "fail"),
    ],
)
def test_end_reasons_map_to_exit_status(reason, status):
    run = _run([Descriptor.create("x", "float64")])
    docs = _valid(run.close(reason, "boom"))
    assert [n for n, _ in docs] == ["start", "descriptor", "stop"]
    assert (docs[-1][1]["exit_status"], docs[-1][1]["reason"]) == (status, f"{reason}: boom")


def test_gaps_and_trailing_rows_are_in_the_stop_document():
    run = _run([Descriptor.create("x", "float64"), Descriptor.create("y", "float64")])
    run.open()
    run.data("x", 0, np.arange(10.0), 10)
    run.data("y", 0, np.arange(2.0), 2)
    run.gap("y", 2, 3, "dropped")
    pages = _valid(run.data("y", 5, np.arange(3.0), 3))
    assert [p["seq_num"] for _, p in pages] == [[6, 7, 8]]
    stop = _valid(run.close("aborted"))[-1][1]
    assert stop["num_events"] == {"primary": 5}
    assert stop["databus"]["gaps"] == [
        {"stream": "primary", "data_key": "y", "first": 2, "count": 3, "reason": "dropped"}
    ]
    assert stop["databus"]["incomplete"] == {"primary": 2}


def test_streams_follow_attrs_and_the_top_masters_of_the_chain():
    descs = [
        Descriptor.create("axis:robz", "float64"),
        Descriptor.create("timer:t", "float64"),
        Descriptor.create("mca:fast", "float64"),
        Descriptor.create("env:temp", "float64", attrs={"stream": "baseline"}),
    ]
    chain = {
        "axis": {"scalars": ["timer:t"], "master": {"scalars": ["axis:robz"]}},
        "fast": {"scalars": ["mca:fast"]},
    }
    members = chain_streams({"acquisition_chain": chain})
    assert {d.name: stream_of(d, members) for d in descs} == {
        "axis:robz": "primary",
        "timer:t": "primary",
        "mca:fast": "fast",
        "env:temp": "baseline",
    }
    assert {stream_of(d, chain_streams({})) for d in descs} == {"primary", "baseline"}
    run = _run(descs, {"acquisition_chain": chain})
    run.open()
    fast = _valid(run.data("mca:fast", 0, np.arange(3.0), 3))
    assert [d["name"] for _, d in fast[:1]] == ["fast"] and fast[1][1]["seq_num"] == [1, 2, 3]
    names = [doc["name"] for n, doc in _valid(run.close("finished")) if n == "descriptor"]
    assert names == ["primary", "baseline"]


def test_data_keys_are_short_names_unless_two_channels_share_one():
    names = ["axis:robz", "p1:ch", "p2:ch", "x"]
    assert data_keys_of([Descriptor.create(n, "float64") for n in names]) == {
        "axis:robz": "robz",
        "p1:ch": "p1_ch",
        "p2:ch": "p2_ch",
        "x": "x",
    }


def test_a_scan_from_bluesky_keeps_its_uid_and_plan():
    info = {"uid": "abc-123", "plan_name": "grid_scan", "detectors": ["det"], "hints": {}}
    start = _valid(_run([Descriptor.create("det", "float64")], info).open())[0][1]
    assert (start["uid"], start["plan_name"], start["detectors"]) == (
        "abc-123",
        "grid_scan",
        ["det"],
    )
    other = _run([Descriptor.create("det", "float64")], {}).open()[0][1]["uid"]
    assert other == _run([Descriptor.create("det", "float64")], {}).open()[0][1]["uid"] != "abc-123"


def test_frames_in_files_as_stream_or_legacy_resources():
    descs = [
        Descriptor.create("x", "float64"),
        Descriptor.create("img", "uint16", (4, 5), kind="ref"),
    ]
    refs = [
        FileRef("/data/a.h5", "/entry/data/data", 0, 2),
        FileRef("/data/a.h5", "/entry/data/data", 2, 3),
    ]
    run = _run(descs)
    run.open()
    run.data("x", 0, np.arange(3.0), 3)
    docs = _valid(run.data("img", 0, refs, 3))[1:]
    assert _names(docs) == ["stream_resource", "stream_datum", "stream_datum", "event_page"]
    resource = docs[0][1]
    assert resource["uri"] == "file://localhost/data/a.h5"
    assert resource["parameters"] == {
        "dataset": "/entry/data/data",
        "chunk_shape": [1, 4, 5],
        "multiplier": 1,
    }
    assert docs[2][1]["indices"] == {"start": 2, "stop": 3}
    assert docs[2][1]["seq_nums"] == {"start": 3, "stop": 4}
    assert set(docs[3][1]["data"]) == {"x"}

    legacy = _run(descs, resources="legacy")
    legacy.open()
    legacy.data("x", 0, np.arange(3.0), 3)
    docs = _valid(legacy.data("img", 0, [FileRef("/data/b.h5", "/det", 0, 3)], 3))[1:]
    assert _names(docs) == ["resource", "datum_page", "event_page"]
    assert (
        docs[0][1]["spec"] == "HDF5_DATASET" and docs[0][1]["resource_kwargs"]["dataset"] == "/det"
    )
    assert docs[2][1]["data"]["img"] == docs[1][1]["datum_id"]
    assert docs[2][1]["filled"] == {"img": [False] * 3}


def test_bad_resources_option_is_refused():
    with pytest.raises(ValueError, match="'stream' or 'legacy'"):
        _run([], resources="files")


def test_channels_declared_mid_run_join_their_stream_until_its_descriptor_went():
    run = _run([Descriptor.create("x", "float64")])
    run.open()
    run.add_channel(Descriptor.create("y", "float64"))
    assert run.data("x", 0, np.arange(5.0), 5) == []  # rows wait for y now
    docs = _valid(run.data("y", 0, np.arange(5.0) * 2, 5))
    assert set(docs[0][1]["data_keys"]) == {"x", "y"}
    assert docs[1][1]["data"] == {"x": [0.0, 1.0, 2.0, 3.0, 4.0], "y": [0.0, 2.0, 4.0, 6.0, 8.0]}
    run.add_channel(Descriptor.create("z", "float64", attrs={"stream": "primary"}))
    late = _valid(run.data("z", 0, np.arange(2.0), 2))
    assert late[0][1]["name"] == "primary_z" and late[1][1]["data"] == {"z": [0.0, 1.0]}
    stop = _valid(run.close("finished"))[-1][1]
    assert stop["num_events"] == {"primary": 5, "primary_z": 2}


def test_a_run_from_bluesky_keeps_its_data_keys_event_times_and_timestamps():
    stream = {"stream": "baseline"}
    descs = [
        Descriptor.create(
            "axis:motor", "float64", attrs={"stream": "primary", "data_key": "motor"}
        ),
        Descriptor.create("det", "float64", attrs={"stream": "primary", "data_key": "det"}),
        Descriptor.create(
            "primary:time", "float64", attrs={"stream": "primary", "event_field": "time"}
        ),
        Descriptor.create(
            "primary:timestamps",
            "float64",
            (2,),
            attrs={"stream": "primary", "event_field": "timestamps", "keys": ["motor", "det"]},
        ),
        Descriptor.create("baseline:motor", "float64", attrs={**stream, "data_key": "motor"}),
    ]
    run = _run(descs, {"uid": "u-1", "motors": ["motor"], "detectors": ["det"]})
    assert _valid(run.open())[0][1]["motors"] == ["motor"]
    run.data("axis:motor", 0, np.array([1.0, 2.0]), 2)
    run.data("det", 0, np.array([10.0, 20.0]), 2)
    run.data("primary:time", 0, np.array([100.0, 101.0]), 2)
    docs = _valid(run.data("primary:timestamps", 0, np.array([[99.0, 98.0], [99.5, 98.5]]), 2))
    assert set(docs[0][1]["data_keys"]) == {"motor", "det"}
    page = docs[1][1]
    assert page["time"] == [100.0, 101.0]
    assert page["timestamps"] == {"motor": [99.0, 99.5], "det": [98.0, 98.5]}
    baseline = _valid(run.data("baseline:motor", 0, np.array([1.0]), 1))
    assert set(baseline[0][1]["data_keys"]) == {"motor"} and baseline[0][1]["name"] == "baseline"
