"""The serializers of bluesky's 0MQ wire, read back by the real peers' readers
(``pickle.loads``, ``msgpack.unpackb``, ``msgpack_numpy.unpackb``) and by our own."""

from __future__ import annotations

import pickle

import msgpack
import msgpack_numpy
import numpy as np
import pytest

from databus.clients.bluesky._serializers import SERIALIZERS, get_serializer


def _page() -> dict:
    frames = np.arange(24, dtype="<u2").reshape(2, 3, 4)
    return {
        "descriptor": "d-1",
        "uid": ["e-1", "e-2"],
        "seq_num": [1, 2],
        "time": [1.5, 2.5],
        "data": {"x": [0.25, 0.5], "img": list(frames), "n": np.arange(2, dtype="i4")},
        "timestamps": {"x": [1.5, 2.5], "img": [1.5, 2.5], "n": [1.5, 2.5]},
        "filled": {},
        "scalar": np.float32(0.5),
        "flag": np.bool_(True),
        "z": 1 + 2j,
    }


def test_pickle_round_trips_through_pickle_loads():
    doc = _page()
    payload = get_serializer("pickle").dumps(doc)
    back = pickle.loads(payload)
    np.testing.assert_array_equal(back["data"]["img"][1], doc["data"]["img"][1])
    assert get_serializer("pickle").loads(payload)["uid"] == ["e-1", "e-2"]


def test_msgpack_gives_plain_msgpack_unpackb_lists_and_numbers():
    back = msgpack.unpackb(get_serializer("msgpack").dumps({**_page(), "z": 0}))
    assert back["data"]["img"][1] == np.arange(12, 24).reshape(3, 4).tolist()
    assert back["data"]["n"] == [0, 1]
    assert back["scalar"] == 0.5 and back["flag"] is True
    assert back["data"]["x"] == [0.25, 0.5]


def test_msgpack_numpy_gives_msgpack_numpy_unpackb_arrays():
    doc = _page()
    back = msgpack_numpy.unpackb(get_serializer("msgpack-numpy").dumps(doc))
    img = back["data"]["img"][1]
    assert isinstance(img, np.ndarray) and img.dtype == np.dtype("<u2") and img.shape == (3, 4)
    np.testing.assert_array_equal(img, doc["data"]["img"][1])
    assert back["data"]["n"].dtype == np.dtype("i4")
    assert back["scalar"] == np.float32(0.5) and back["scalar"].dtype == np.float32
    assert back["flag"] == np.bool_(True) and back["z"] == 1 + 2j
    assert (
        get_serializer("msgpack-numpy").loads(get_serializer("msgpack-numpy").dumps(doc))["z"]
        == 1 + 2j
    )


def test_msgpack_readers_take_what_msgpack_numpy_packb_sends():
    doc = {"data": {"img": np.arange(6.0).reshape(2, 3)[:, ::2]}, "s": np.int16(-3), "z": 1 - 2j}
    payload = msgpack_numpy.packb(doc)
    for name in ("msgpack", "msgpack-numpy"):
        back = get_serializer(name).loads(payload)
        np.testing.assert_array_equal(back["data"]["img"], [[0.0, 2.0], [3.0, 5.0]])
        assert back["s"] == -3 and back["s"].dtype == np.int16
        assert back["z"] == 1 - 2j


def test_msgpack_readers_refuse_pickled_object_arrays():
    payload = msgpack_numpy.packb({"data": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickled object array"):
        get_serializer("msgpack").loads(payload)


def test_readers_refuse_a_payload_that_is_not_a_document():
    with pytest.raises(ValueError, match="holds a list"):
        get_serializer("msgpack").loads(msgpack.packb([1, 2]))
    with pytest.raises(ValueError, match="holds a str"):
        get_serializer("pickle").loads(pickle.dumps("x"))


def test_msgpack_names_what_it_cannot_serialize():
    with pytest.raises(TypeError, match="cannot serialize object"):
        get_serializer("msgpack").dumps({"x": object()})


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="'json': choose one of msgpack, msgpack-numpy, pickle"):
        get_serializer("json")
    assert sorted(SERIALIZERS) == ["msgpack", "msgpack-numpy", "pickle"]
