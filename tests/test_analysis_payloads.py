"""Analysis payloads (clients/analysis/_payloads.py): msgpack round trips that keep every
type, dataclasses by name across processes, and refusals that name the path. No server."""

from __future__ import annotations

import collections
import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import numpy as np
import pytest

from databus._encoding import pack_meta
from databus.clients.analysis._payloads import (
    UnknownPayloadClass,
    pack_payload,
    register_payload,
    unpack_payload,
)


def round_trip(obj: Any) -> Any:
    return unpack_payload(pack_payload(obj, where="test"))


@dataclasses.dataclass
class Start:
    filename: str


@dataclasses.dataclass
class Result:
    intensity: float
    integrated: np.ndarray
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@register_payload(name="tests.Frozen")
@dataclasses.dataclass(frozen=True)
class Frozen:
    shape: tuple[int, int]
    start: Start


@dataclasses.dataclass(slots=True)
class Slotted:
    value: np.float32
    checked: bool = dataclasses.field(default=False, init=False)
    inits: ClassVar[list[Any]] = []

    def __post_init__(self) -> None:
        self.inits.append(self.value)
        self.checked = True


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**64 - 1, -(2**63), 1.5, float("inf"), "", "é ☃", b"", b"\x00\xff", True, False, None],
)
def test_scalars_come_back_with_their_type(value):
    back = round_trip(value)
    assert back == value and type(back) is type(value)


def test_nested_containers_keep_their_types():
    value = {
        "peaks": [(1, 2.5), (3, 4.5)],
        "counts": {0: "zero", -7: ["a", ("b", None)]},
        "empty": ([], (), {}),
        "nested": [[[[1]]]],
    }
    back = round_trip(value)
    assert back == value
    assert type(back["peaks"][0]) is tuple and type(back["empty"]) is tuple
    assert list(back["counts"]) == [0, -7]


NUMERIC_DTYPES = [
    "?", "i1", "u1", "<i2", ">i2", "<u4", "<i8", ">u8", "<f2", "<f4", ">f8", "<c8", "<c16",
]  # fmt: skip


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4), (0, 3), (1, 1, 1, 1)])
def test_arrays_keep_dtype_shape_and_values(dtype, shape):
    arr = (np.arange(int(np.prod(shape))) % 7).astype(dtype).reshape(shape)
    back = round_trip({"a": arr})["a"]
    assert type(back) is np.ndarray
    assert back.dtype == arr.dtype and back.dtype.str == arr.dtype.str
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert back.flags.writeable


def test_non_contiguous_arrays_and_nan_come_back_equal():
    base = np.arange(24, dtype="<f4").reshape(4, 6)
    base[0, 0] = np.nan
    for arr in (base[:, ::2], base.T, np.asfortranarray(base)):
        back = round_trip(arr)
        assert back.shape == arr.shape and back.dtype == arr.dtype
        np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize(
    "value",
    [np.float32(1.5), np.float64(2.5), np.int8(-3), np.uint64(2**64 - 1), np.bool_(True),
     np.complex64(1 + 2j), np.float16(0.5)],
)  # fmt: skip
def test_numpy_scalars_keep_their_dtype(value):
    back = round_trip([value])[0]
    assert type(back) is type(value) and back == value


def test_numpy_text_scalars_become_python_text():
    assert round_trip([np.str_("a"), np.bytes_(b"b")]) == ["a", b"b"]


def test_dataclasses_come_back_whole():
    """The tutorial's Result (not registered) and a registered frozen one, nested."""
    payload = {
        "result": Result(np.float64(9.5), np.linspace(0, 1, 5, dtype="<f4"), {"n": (1, 2)}),
        "frozen": Frozen((10, 10), Start("output/xrd.h5")),
    }
    back = round_trip(payload)
    assert isinstance(back["result"], Result)
    assert type(back["result"].intensity) is np.float64 and back["result"].intensity == 9.5
    np.testing.assert_array_equal(back["result"].integrated, payload["result"].integrated)
    assert back["result"].integrated.dtype == np.dtype("<f4")
    assert back["result"].extra == {"n": (1, 2)}
    assert back["frozen"] == payload["frozen"] and type(back["frozen"].start) is Start


def test_a_dataclass_is_rebuilt_without_its_init():
    """As pickle does: the worker's instance was made already; fields come back as sent."""
    sent = Slotted(np.float32(3))
    back = round_trip(sent)
    assert Slotted.inits == [3]
    assert back.checked and type(back.value) is np.float32 and back.value == 3


def test_register_payload_checks_what_it_gets():
    with pytest.raises(TypeError, match="takes a dataclass"):
        register_payload(dict)
    with pytest.raises(TypeError, match="takes a dataclass"):
        register_payload(Start("x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"registered for .*Frozen.* already"):
        register_payload(Start, name="tests.Frozen")
    assert register_payload(Frozen, name="tests.Frozen") is Frozen  # again: no change


def test_a_local_dataclass_must_be_registered_by_name():
    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(
        TypeError, match=r"worker 1 event 5: result\[0\]: .*Local.*register_payload"
    ):
        pack_payload([Local(1)], where="worker 1 event 5")

    @register_payload(name="tests.Local")
    @dataclasses.dataclass
    class Named:
        x: int

    assert round_trip([Named(2)]) == [Named(2)]


def test_fields_that_differ_name_both_versions():
    raw = pack_meta([msgpack.ExtType(65, b"tests.Frozen"), {"shape": [1, 2]}])
    with pytest.raises(ValueError, match=r"\['shape'\].*\['shape', 'start'\].*different versions"):
        unpack_payload(raw)


def test_bytes_that_are_no_payload_are_refused():
    with pytest.raises(ValueError, match="extension type 99"):
        unpack_payload(pack_meta([msgpack.ExtType(99, b"")]))
    with pytest.raises(ValueError, match="out of place"):
        unpack_payload(pack_meta({"a": msgpack.ExtType(64, b"")}))


def _gen():
    yield 1


@pytest.mark.parametrize(
    ("payload", "path", "what"),
    [
        ({"peaks": [1, 2, 3, len]}, r"result\['peaks'\]\[3\]", "a function"),
        ({"peaks": [1, 2, 3, lambda: 0]}, r"result\['peaks'\]\[3\]", "a function"),
        ([{1, 2}], r"result\[0\]", "a set"),
        ({"o": np.array([1, "a"], dtype=object)}, r"result\['o'\]", "dtype object"),
        ({"s": np.array(["ab"])}, r"result\['s'\]", "dtype <U2"),
        ((1, _gen()), r"result\[1\]", "a generator"),
        ([np.ma.masked_array([1, 2])], r"result\[0\]", "MaskedArray"),
        ([collections.namedtuple("P", "x y")(1, 2)], r"result\[0\]", "namedtuple"),
        ({"n": 2**64}, r"result\['n'\]", "longer than 64 bits"),
        ({"t": {(1, 2): 3}}, r"result\['t'\]", "key \\(1, 2\\) of type tuple"),
        ([Start], r"result\[0\]", "the class Start"),
        (Result(1.0, np.zeros(2), {"f": print}), r"result\.extra\['f'\]", "a function"),
        ([np.datetime64("2024-01-01")], r"result\[0\]", "numpy.datetime64"),
        ({"p": Path("/tmp")}, r"result\['p'\]", "PosixPath"),
        ([collections.OrderedDict(a=1)], r"result\[0\]", "collections.OrderedDict"),
    ],
)
def test_what_cannot_be_sent_is_named_with_its_path(payload, path, what):
    with pytest.raises(TypeError, match=rf"^worker w0, event 7: {path}: cannot send .*{what}"):
        pack_payload(payload, where="worker w0, event 7")


def test_a_payload_that_contains_itself_is_refused():
    loop: list[Any] = [1]
    loop.append({"again": loop})
    with pytest.raises(TypeError, match=r"result\[1\]\['again'\]: the result contains itself"):
        pack_payload(loop, where="w")
    shared = [1]
    assert round_trip([shared, shared]) == [[1], [1]]  # the same list twice is no loop


WORKER = """
import dataclasses

@dataclasses.dataclass
class Result:
    intensity: float
"""

EVIL = """
from pathlib import Path
Path(__file__).with_name("imported").write_text("the payload ran me")

import dataclasses

@dataclasses.dataclass
class Thing:
    x: int
"""


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_reducer_rebuilds_the_workers_dataclass_once_it_imports_it(tmp_path):
    """The tutorial: the worker module defines Result, the reducer imports it from there.
    A process that imported nothing is told which class and what to do."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "__init__.py").write_text("")
    (tmp_path / "src" / "worker.py").write_text(WORKER)
    packed = _python(
        """
        import sys
        from databus.clients.analysis._payloads import pack_payload
        from src.worker import Result
        sys.stdout.write(pack_payload([Result(9.5)], where="w").hex())
        """,
        tmp_path,
    )
    assert packed.returncode == 0, packed.stderr
    importing = _python(
        f"""
        from databus.clients.analysis._payloads import unpack_payload
        from src.worker import Result
        (back,) = unpack_payload(bytes.fromhex("{packed.stdout}"))
        assert type(back) is Result and back.intensity == 9.5, back
        """,
        tmp_path,
    )
    assert importing.returncode == 0, importing.stderr
    not_importing = _python(
        f"""
        import sys
        from databus.clients.analysis._payloads import UnknownPayloadClass, unpack_payload
        try:
            unpack_payload(bytes.fromhex("{packed.stdout}"))
        except UnknownPayloadClass as exc:
            print(exc)
        assert "src.worker" not in sys.modules
        """,
        tmp_path,
    )
    assert not_importing.returncode == 0, not_importing.stderr
    assert "'src.worker:Result' is unknown in this process" in not_importing.stdout
    assert "import its module in the reducer" in not_importing.stdout


def test_a_payload_never_imports_a_module_nor_takes_what_is_no_dataclass(tmp_path, monkeypatch):
    (tmp_path / "evil_payload_module.py").write_text(EVIL)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = pack_meta([msgpack.ExtType(65, b"evil_payload_module:Thing"), {"x": 1}])
    with pytest.raises(UnknownPayloadClass, match="evil_payload_module:Thing"):
        unpack_payload(raw)
    assert "evil_payload_module" not in sys.modules
    assert not (tmp_path / "imported").exists()
    for name in (b"os:system", b"builtins:dict", b"subprocess:Popen", b"tests.Frozen.x"):
        with pytest.raises(UnknownPayloadClass, match=name.decode()):
            unpack_payload(pack_meta([msgpack.ExtType(65, name), {}]))


def test_a_name_that_points_elsewhere_is_refused():
    """A module attribute holding another module's dataclass is not that class's name."""
    sys.modules[__name__].Alias = Start  # type: ignore[attr-defined]
    try:
        raw = pack_meta([msgpack.ExtType(65, f"{__name__}:Alias".encode()), {"filename": "x"}])
        with pytest.raises(UnknownPayloadClass, match="no dataclass 'Alias'"):
            unpack_payload(raw)
    finally:
        del sys.modules[__name__].Alias  # type: ignore[attr-defined]
