"""Typed live parameters of an analysis (clients/analysis/_parameters.py) and the
``databus params`` command (clients/analysis/params.py), on a real server."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import eventually

from databus.channels import Channel
from databus.clients.analysis._parameters import (
    BinaryParameter,
    BoolParameter,
    FloatParameter,
    IntParameter,
    Parameter,
    Parameters,
    StrParameter,
    UnknownAnalysis,
    UnknownParameter,
    parameters_hash,
)

ROI = [
    IntParameter(name="till_x", default=2, description="last row of the ROI"),
    IntParameter(name="from_y", default=8),
    FloatParameter(name="threshold", default=0.5, description="counts per pixel"),
    StrParameter(name="mode", default="mean"),
    BoolParameter(name="dark", default=False),
    BinaryParameter(name="poni", default=b"", description="pyFAI geometry file"),
]
DEFAULTS = {
    "till_x": 2,
    "from_y": 8,
    "threshold": 0.5,
    "mode": "mean",
    "dark": False,
    "poni": b"",
}


@pytest.mark.parametrize(
    ("param", "given", "taken"),
    [
        (IntParameter("n"), "3", 3),
        (IntParameter("n"), " -7 ", -7),
        (IntParameter("n"), np.int16(4), 4),
        (FloatParameter("f"), "0.5", 0.5),
        (FloatParameter("f"), "1e-3", 1e-3),
        (FloatParameter("f"), 2, 2.0),
        (FloatParameter("f"), np.float32(0.25), 0.25),
        (StrParameter("s"), "fast", "fast"),
        (BoolParameter("b"), "true", True),
        (BoolParameter("b"), " False ", False),
        (BoolParameter("b"), "YES", True),
        (BoolParameter("b"), "0", False),
        (BoolParameter("b"), np.bool_(True), True),
        (BinaryParameter("p"), b"\x00\x01", b"\x00\x01"),
        (BinaryParameter("p"), bytearray(b"ab"), b"ab"),
        (BinaryParameter("p"), "dist: 0.1", b"dist: 0.1"),
    ],
)
def test_check_converts_text_and_numbers(param, given, taken):
    value = param.check(given)
    assert value == taken and type(value) is type(taken)


@pytest.mark.parametrize(
    ("param", "given", "error", "says"),
    [
        (IntParameter("till_x"), "3.5", ValueError, "not a whole number"),
        (IntParameter("till_x"), "abc", ValueError, "not a whole number"),
        (IntParameter("till_x"), 2.5, TypeError, r"\(float\)"),
        (IntParameter("till_x"), True, TypeError, r"\(bool\)"),
        (IntParameter("till_x"), None, TypeError, r"\(NoneType\)"),
        (FloatParameter("till_x"), "fast", ValueError, "not a number"),
        (FloatParameter("till_x"), "", ValueError, "not a number"),
        (FloatParameter("till_x"), False, TypeError, r"\(bool\)"),
        (StrParameter("till_x"), 3, TypeError, r"\(int\)"),
        (BoolParameter("till_x"), "maybe", ValueError, "say one of"),
        (BoolParameter("till_x"), 1, TypeError, r"\(int\)"),
        (BinaryParameter("till_x"), 3, TypeError, "give bytes"),
    ],
)
def test_check_refuses_by_name_type_and_value(param, given, error, says):
    with pytest.raises(error, match=rf"parameter 'till_x' \({param.type_name}\) cannot take "):
        param.check(given)
    with pytest.raises(error, match=says):
        param.check(given)


def test_descriptions_are_checked_when_made():
    assert FloatParameter("f", default=1).default == 1.0
    assert type(FloatParameter("f", default=1).default) is float
    assert IntParameter(name="till_x", default=2).description == ""  # the tutorial's call
    with pytest.raises(ValueError, match="'till_x' \\(int\\) cannot take 'two'"):
        IntParameter("till_x", default="two")
    with pytest.raises(TypeError, match="base class"):
        Parameter("x", default=1)
    for bad in ("", "#schema", "a:b", "a b", 3):
        with pytest.raises(ValueError, match="parameter name"):
            IntParameter(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="description is a str"):
        IntParameter("x", description=None)  # type: ignore[arg-type]


def test_defaults_are_the_values_until_set(bus):
    with Parameters(bus, "roi", ROI) as params:
        assert params.values() == DEFAULTS
        assert [p.name for p in params.descriptions] == list(DEFAULTS)
        snapshot = params.snapshot()
        assert snapshot.parameters["till_x"].value == 2  # dranspose's parameters["x"].value
        assert snapshot.hash == params.hash() == parameters_hash(DEFAULTS)
        assert params.snapshot() is snapshot  # nothing changed: nothing built again
        with pytest.raises(TypeError):
            snapshot.parameters["till_x"] = None  # type: ignore[index]


def test_a_value_set_elsewhere_is_seen_within_ms(bus, make_bus):
    first = Parameters(bus, "roi", ROI)
    second = Parameters(make_bus(), "roi", ROI)
    before = first.hash()
    assert second.set("till_x", "3") == 3
    assert eventually(lambda: first.values()["till_x"] == 3, timeout=2)
    assert first.hash() != before
    assert first.hash() == second.hash()
    second.set("till_x", 2)
    assert eventually(lambda: first.hash() == before, timeout=2)  # equal values, equal hash
    second.set("poni", b"\x00geometry")
    assert eventually(lambda: first.values()["poni"] == b"\x00geometry", timeout=2)
    first.close()
    second.close()


def test_a_later_process_declaring_keeps_the_values_set(bus, make_bus):
    with Parameters(bus, "roi", ROI) as params:
        params.set("threshold", 2.5)
    with Parameters(make_bus(), "roi", ROI) as later:
        assert later.values() == {**DEFAULTS, "threshold": 2.5}


def test_a_changed_declaration_converts_or_resets_the_stored_values(bus, make_bus):
    with Parameters(bus, "roi", ROI) as params:
        params.set("till_x", 5)
        params.set("mode", "max")
    changed = [FloatParameter("till_x", default=1.0), IntParameter("mode", default=1)]
    with Parameters(make_bus(), "roi", changed) as later:
        assert later.values() == {"till_x": 5.0, "mode": 1}
        assert type(later.values()["till_x"]) is float
    with Parameters.attach(make_bus(), "roi") as attached:
        assert [(p.name, p.type_name) for p in attached.descriptions] == [
            ("till_x", "float"),
            ("mode", "int"),
        ]


def test_a_bad_value_written_past_set_is_ignored(bus, make_bus, caplog):
    with Parameters(bus, "roi", ROI) as params:
        params.set("till_x", 4)
        raw = Channel("analysis:roi:till_x", bus=make_bus())
        raw.value = "four"
        said = "ignored a value on the bus: parameter 'till_x' (int)"
        # The channel holds the new value before its callback (which logs) has run.
        assert eventually(lambda: said in caplog.text, timeout=5)
        assert params._channels["till_x"].value == "four"
        assert params.values()["till_x"] == 4
        raw.value = 6
        assert eventually(lambda: params.values()["till_x"] == 6, timeout=2)
        raw.close()


def test_bad_values_and_names_are_refused(bus):
    with Parameters(bus, "roi", ROI) as params:
        with pytest.raises(ValueError, match=r"'till_x' \(int\) cannot take 'many'"):
            params.set("till_x", "many")
        with pytest.raises(TypeError, match=r"'dark' \(bool\) cannot take 2"):
            params.set("dark", 2)
        with pytest.raises(UnknownParameter, match="no parameter 'tillx'; it has: till_x, from_y"):
            params.set("tillx", 3)
        assert params.values() == DEFAULTS
    with pytest.raises(ValueError, match="declared twice"):
        Parameters(bus, "twice", [IntParameter("a"), FloatParameter("a")])
    with pytest.raises(TypeError, match=r"IntParameter\(name=\.\.\., default=\.\.\.\)"):
        Parameters(bus, "loose", [{"name": "a"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="analysis name"):
        Parameters(bus, "a:b", ROI)


def test_attach_needs_a_declared_analysis(bus):
    with pytest.raises(UnknownAnalysis, match="no analysis 'nobody' on the bus"):
        Parameters.attach(bus, "nobody")
    with Parameters(bus, "roi", ROI), Parameters.attach(bus, "roi") as attached:
        assert attached.descriptions == tuple(ROI)
        assert attached.values() == DEFAULTS


# ------------------------------------------------------------------- databus params


def cli(bus, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    return subprocess.run(
        [sys.executable, "-m", "databus", "params", *args],
        env=env,
        capture_output=True,
        timeout=60,
    )


def test_the_command_sets_gets_and_lists(bus, tmp_path):
    params = Parameters(bus, "roi", ROI)
    done = cli(bus, "set", "roi", "till_x", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "roi: till_x = 3\n"
    assert eventually(lambda: params.values()["till_x"] == 3, timeout=2)

    geometry = b"Distance: 0.1\nPixel1: 7.5e-05\n\x00"
    (tmp_path / "det.poni").write_bytes(geometry)
    done = cli(bus, "set", "roi", "poni", f"@{tmp_path / 'det.poni'}")
    assert done.returncode == 0, done.stderr
    assert eventually(lambda: params.values()["poni"] == geometry, timeout=2)
    got = cli(bus, "get", "roi", "poni")
    assert got.returncode == 0 and got.stdout == geometry

    assert cli(bus, "set", "roi", "dark", "yes").returncode == 0
    got = cli(bus, "get", "roi")
    assert got.returncode == 0, got.stderr
    lines = got.stdout.decode().splitlines()
    assert lines[:5] == [
        "till_x = 3",
        "from_y = 8",
        "threshold = 0.5",
        "mode = mean",
        "dark = true",
    ]
    assert lines[5].startswith(f"poni = <{len(geometry)} bytes, sha256 ")
    assert cli(bus, "get", "roi", "dark").stdout == b"true\n"

    listed = cli(bus, "list", "roi")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split(None, 3) for line in listed.stdout.decode().splitlines()]
    assert rows[0] == ["NAME", "TYPE", "VALUE", "DESCRIPTION"]
    assert rows[1] == ["till_x", "int", "3", "last row of the ROI"]
    assert rows[2] == ["from_y", "int", "8"]
    assert rows[3] == ["threshold", "float", "0.5", "counts per pixel"]
    assert rows[5] == ["dark", "bool", "true"]
    assert rows[6][:2] == ["poni", "binary"] and rows[6][3].endswith("pyFAI geometry file")
    assert cli(bus, "set", "roi", "poni", "@@text").returncode == 0  # @@: a leading @
    assert eventually(lambda: params.values()["poni"] == b"@text", timeout=2)
    params.close()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["list", "nobody"], "no analysis 'nobody' on the bus"),
        (["set", "roi", "tillx", "3"], "no parameter 'tillx'; it has: till_x, from_y, threshold"),
        (["get", "roi", "tillx"], "no parameter 'tillx'; it has: till_x"),
        (["set", "roi", "till_x", "3.5"], "parameter 'till_x' (int) cannot take '3.5'"),
        (["set", "roi", "dark", "perhaps"], "parameter 'dark' (bool) cannot take 'perhaps'"),
        (["set", "roi", "poni", "@/nonexistent/det.poni"], "No such file or directory"),
    ],
)
def test_the_command_exits_2_saying_what_is_wrong(bus, args, says):
    with Parameters(bus, "roi", ROI) as params:
        done = cli(bus, *args)
        assert done.returncode == 2, done
        assert done.stderr.decode().startswith("databus params: ")
        assert says in done.stderr.decode()
        assert params.values() == DEFAULTS
