"""karabo-bridge messages read by the real peer, PyPI karabo-bridge: its ``deserialize``, its
reference ``serialize`` to compare with, and its ``Client`` against a REP (or PUSH) socket
that answers with our message. No Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import msgpack
import numpy as np
import pytest
import zmq
from karabo_bridge import Client, deserialize, serialize

from databus.clients.frames._karabo import PROTOCOLS, karabo_message

SOURCE = "DATABUS/DET/sim_det:frames"
TIMESTAMP = 1700000000.123456
TRAIN_ID = 10_000_000_001
METADATA = {
    "source": SOURCE,
    "timestamp": TIMESTAMP,
    "timestamp.sec": "1700000000",
    "timestamp.frac": "123456000000000000",
    "timestamp.tid": TRAIN_ID,
}


def _values() -> dict[str, object]:
    """A 2 MiB uint16 frame, float32 and int32 arrays and one scalar of each kind."""
    rng = np.random.default_rng(14)
    return {
        "image.data": rng.integers(0, 2**16, size=(1024, 1024), dtype=np.uint16),
        "image.mask": rng.random((16, 8), dtype=np.float32),
        "peaks.fs": rng.integers(-(2**31), 2**31, size=5, dtype=np.int32),
        "motor.position": 0.125,
        "frame_index": 41,
        "scan.key": "esrf:scan:abc",
        "shutter.open": True,
        "count.gain": np.float32(0.5),
        "count.big": np.uint64(2**64 - 1),
    }


def _assert_values_arrived(got: dict[str, object], sent: dict[str, object]) -> None:
    """Arrays bit-exact with dtype and shape; scalars equal and of the Python type."""
    assert sorted(got) == sorted(sent)
    for key, value in sent.items():
        back = got[key]
        if isinstance(value, np.ndarray):
            assert isinstance(back, np.ndarray), key
            assert (back.dtype, back.shape) == (value.dtype, value.shape), key
            assert back.tobytes() == value.tobytes(), key
        else:
            plain = value.item() if isinstance(value, np.generic) else value
            assert type(back) is type(plain) and back == plain, key


def _received(data: dict, meta: dict, protocol: str) -> dict[str, object]:
    """The values of our source as the client returned them; 1.0 adds the metadata."""
    assert list(data) == [SOURCE] and meta == {SOURCE: METADATA}
    got = dict(data[SOURCE])
    if protocol == "1.0":
        assert got.pop("metadata") == METADATA
    return got


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_clients_deserializer_returns_values_and_metadata(protocol):
    sent = _values()
    data, meta = deserialize(karabo_message(SOURCE, sent, TIMESTAMP, TRAIN_ID, protocol))
    _assert_values_arrived(_received(data, meta, protocol), sent)


def test_2_2_has_the_parts_and_headers_of_the_reference_server():
    sent = _values()
    ours = karabo_message(SOURCE, sent, TIMESTAMP, TRAIN_ID)
    theirs = serialize({SOURCE: sent}, {SOURCE: METADATA}, protocol_version="2.2")
    assert len(ours) == len(theirs) == 2 + 2 * 3
    for part, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        if part >= 2 and part % 2:
            assert bytes(mine) == bytes(reference), part
        else:
            assert msgpack.unpackb(mine) == msgpack.unpackb(reference), part
    assert msgpack.unpackb(ours[2]) == {
        "source": SOURCE,
        "content": "array",
        "path": "image.data",
        "dtype": "uint16",
        "shape": [1024, 1024],
    }


def test_1_0_decodes_as_the_reference_servers_message():
    sent = {k: v for k, v in _values().items() if not isinstance(v, np.generic)}
    ours = karabo_message(SOURCE, sent, TIMESTAMP, TRAIN_ID, "1.0")
    theirs = serialize({SOURCE: sent}, {SOURCE: METADATA}, protocol_version="1.0")
    assert len(ours) == len(theirs) == 1
    (our_data, our_meta), (their_data, their_meta) = deserialize(ours), deserialize(theirs)
    assert our_meta == their_meta
    _assert_values_arrived(our_data[SOURCE], their_data[SOURCE])


def test_2_2_sends_a_contiguous_frame_from_its_own_memory():
    frame = np.arange(64, dtype=np.uint16).reshape(8, 8)
    part = karabo_message(SOURCE, {"image.data": frame}, TIMESTAMP, TRAIN_ID)[3]
    assert isinstance(part, memoryview)
    assert np.shares_memory(np.frombuffer(part, dtype=np.uint8), frame)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_strided_or_fortran_frame_arrives_in_c_order(protocol):
    base = np.arange(12 * 10, dtype=np.int32).reshape(12, 10)
    sent = {"image.strided": base[::3, 1::2], "image.fortran": np.asfortranarray(base)}
    message = karabo_message(SOURCE, sent, TIMESTAMP, TRAIN_ID, protocol)
    for key, value in deserialize(message)[0][SOURCE].items():
        if key != "metadata":
            np.testing.assert_array_equal(value, sent[key])
            assert value.shape == sent[key].shape


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_zero_d_empty_bool_and_big_endian_arrays_keep_dtype_and_shape(protocol):
    sent = {
        "gain": np.asarray(np.float32(0.25)),
        "empty": np.zeros((0, 3), dtype=np.float64),
        "mask": np.array([[True, False], [False, True]]),
        "be": np.arange(4, dtype=">u2"),
        "label": np.array(["a", "bc"]),
    }
    data, meta = deserialize(karabo_message(SOURCE, sent, TIMESTAMP, TRAIN_ID, protocol))
    _assert_values_arrived(_received(data, meta, protocol), sent)


class _Server:
    """A karabo-bridge server socket in a thread, answering with the given messages."""

    def __init__(self, kind: int, messages: Sequence[list]) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(kind)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.requests: list[bytes] = []
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(messages,), daemon=True)

    def _serve(self, messages: Sequence[list]) -> None:
        try:
            for message in messages:
                if self._socket.type == zmq.REP:
                    if not self._socket.poll(10_000, zmq.POLLIN):
                        raise TimeoutError("no request came")
                    self.requests.append(self._socket.recv())
                self._socket.send_multipart(message, copy=False)
        except BaseException as exc:
            self._errors.append(exc)

    @contextmanager
    def running(self) -> Iterator[None]:
        self._thread.start()
        try:
            yield
        finally:
            self._thread.join(timeout=20)
            self._context.destroy(linger=0)
        assert not self._thread.is_alive()
        if self._errors:
            raise self._errors[0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_client_gets_each_frame_over_req_rep(protocol):
    first, second = _values(), _values()
    second["image.data"] = np.ascontiguousarray(second["image.data"][::-1])
    second["image.data"].flags.writeable = False
    messages = [
        karabo_message(SOURCE, first, TIMESTAMP, TRAIN_ID, protocol),
        karabo_message(SOURCE, second, TIMESTAMP, TRAIN_ID, protocol),
    ]
    server = _Server(zmq.REP, messages)
    with server.running(), Client(server.endpoint, timeout=10) as client:
        received = [client.next(), client.next()]
    assert server.requests == [b"next", b"next"]
    for (data, meta), sent in zip(received, [first, second], strict=True):
        _assert_values_arrived(_received(data, meta, protocol), sent)


def test_the_client_gets_the_message_as_is_from_a_push_socket():
    sent = _values()
    server = _Server(zmq.PUSH, [karabo_message(SOURCE, sent, TIMESTAMP, TRAIN_ID)])
    with server.running(), Client(server.endpoint, sock="PULL", timeout=10) as client:
        data, meta = client.next()
    _assert_values_arrived(_received(data, meta, "2.2"), sent)


@pytest.mark.parametrize(
    ("timestamp", "sec", "frac"),
    [
        (1700000000, "1700000000", "0" * 18),
        (1700000000.5, "1700000000", "5" + "0" * 17),
        (1e-05, "0", "00001" + "0" * 13),
        (np.float32(2.5), "2", "5" + "0" * 17),
    ],
)
def test_timestamp_seconds_and_attoseconds_as_text(timestamp, sec, frac):
    meta = deserialize(karabo_message(SOURCE, {}, timestamp, 1))[1][SOURCE]
    assert meta["timestamp"] == float(timestamp)
    assert (meta["timestamp.sec"], meta["timestamp.frac"]) == (sec, frac)


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"data": {"obj": np.array([{}, 1], dtype=object)}}, ValueError, "'obj'"),
        ({"data": {"rec": np.zeros(2, dtype=[("a", "<i4")])}}, ValueError, "'rec'"),
        ({"data": {3: 1.0}}, TypeError, "3"),
        ({"data": {"": 1.0}}, ValueError, "empty key"),
        ({"data": {"z": 1 + 2j}}, TypeError, "'z'"),
        ({"data": {"z": np.complex64(1)}}, TypeError, "'z'"),
        ({"data": {"when": np.datetime64(0, "s")}}, TypeError, "'when'"),
        ({"data": {"xs": [1, 2]}}, TypeError, "'xs'"),
        ({"data": {"none": None}}, TypeError, "'none'"),
        ({"data": {"huge": 2**64}}, ValueError, "'huge'"),
        ({"data": {"metadata": 1}, "protocol": "1.0"}, ValueError, "'metadata'"),
        ({"protocol": "2.1"}, ValueError, "'2.1'"),
        ({"source": ""}, ValueError, "source"),
        ({"source": b"S"}, TypeError, "source"),
        ({"train_id": 0}, ValueError, "train_id"),
        ({"train_id": 2**64}, ValueError, "train_id"),
        ({"train_id": True}, TypeError, "train_id"),
        ({"train_id": 1.0}, TypeError, "train_id"),
        ({"timestamp": float("nan")}, ValueError, "timestamp"),
        ({"timestamp": -1.0}, ValueError, "timestamp"),
        ({"timestamp": "now"}, TypeError, "timestamp"),
    ],
)
def test_bad_input_is_refused_naming_what_is_wrong(kwargs, error, named):
    call = {"source": SOURCE, "data": {}, "timestamp": TIMESTAMP, "train_id": 1, **kwargs}
    with pytest.raises(error, match=named):
        karabo_message(**call)


def test_a_data_key_named_metadata_is_data_under_2_2():
    data, meta = deserialize(karabo_message(SOURCE, {"metadata": 1}, TIMESTAMP, TRAIN_ID))
    assert data == {SOURCE: {"metadata": 1}} and meta == {SOURCE: METADATA}
