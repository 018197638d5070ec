"""CrystFEL's msgpack frame (``databus.clients.frames._crystfel``) read back by a REQ client
written to CrystFEL 0.12's decoder rules (``tests/frames_clients/crystfel_req.py``), bytes
alone and over real 0MQ sockets. No Redis server needed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from frames_clients.crystfel_req import (
    RCVTIMEO_MS,
    CrystfelRejects,
    CrystfelReqClient,
    MsgpackMap,
    ReplyTimeout,
    decode,
)

from databus.clients.frames._crystfel import (
    COMMON_LOOKUPS,
    FRAME_INDEX_KEY,
    IMAGE_KEY,
    MIN_MESSAGE_BYTES,
    PEAK_LIST_KEY,
    SCAN_KEY_KEY,
    SCAN_NUMBER_KEY,
    FrameEncoder,
    PeakList,
    check_keys,
    crystfel_array,
)

#: Every numeric dtype a channel takes (both byte orders where there are two), and the type
#: CrystFEL gets it as.
SENT_AS = {
    "|b1": "<i4",
    "|i1": "<i4",
    "|u1": "<i4",
    "<i2": "<i4",
    ">i2": "<i4",
    "<u2": "<i4",
    ">u2": "<i4",
    "<i4": "<i4",
    ">i4": "<i4",
    "<u4": "<f4",
    ">u4": "<f4",
    "<i8": "<f4",
    ">i8": "<f4",
    "<u8": "<f4",
    "<f2": "<f4",
    ">f2": "<f4",
    "<f4": "<f4",
    ">f4": "<f4",
    "<f8": "<f4",
    ">f8": "<f4",
}


def _frame(dtype: str, shape: tuple[int, int] = (3, 5)) -> np.ndarray:
    """A frame of ``dtype`` spanning its range (ints) or with fractions and signs (floats)."""
    rng = np.random.default_rng(14)
    kind = np.dtype(dtype)
    if kind.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        native = kind.newbyteorder("=")
        return rng.integers(info.min, info.max, shape, dtype=native, endpoint=True).astype(kind)
    return (rng.standard_normal(shape) * 1000).astype(dtype)


def _encode(encoder: FrameEncoder, frame: np.ndarray, index: int = 0, **kwargs: object) -> bytes:
    return encoder.encode(frame, frame_index=index, scan_key="s1:7", scan_number=7, **kwargs)


@pytest.mark.parametrize("dtype", sorted(SENT_AS))
def test_every_dtype_is_decoded_bit_exact_after_its_documented_conversion(dtype, caplog):
    frame = _frame(dtype)
    assert frame.dtype.str == dtype
    encoder = FrameEncoder("det")
    with caplog.at_level(logging.INFO, logger="databus.clients.frames._crystfel"):
        first = decode(_encode(encoder, frame, 0))
        second = decode(_encode(encoder, frame, 1))
    expected = frame.astype(SENT_AS[dtype])
    for decoded in (first, second):
        assert decoded.image.dtype.str == SENT_AS[dtype]
        assert decoded.image.tobytes() == expected.tobytes()
    said = [r.getMessage() for r in caplog.records]
    if np.dtype(dtype) == np.dtype(SENT_AS[dtype]):
        assert said == []
    else:
        assert len(said) == 1, said
        assert f"{np.dtype(dtype).str} are sent as {SENT_AS[dtype]}" in said[0] and "det" in said[0]


def test_a_new_source_dtype_is_said_again_and_each_once(caplog):
    encoder = FrameEncoder("det")
    with caplog.at_level(logging.INFO, logger="databus.clients.frames._crystfel"):
        for dtype in ("<u4", "<f8", "<u4", "<f8", "<f4"):
            _encode(encoder, _frame(dtype))
    assert len(caplog.records) == 2


def test_shape_is_slow_then_fast_on_a_non_square_frame():
    frame = np.arange(3 * 7, dtype="<f4").reshape(3, 7)
    decoded = decode(_encode(FrameEncoder("det"), frame))
    pairs = decoded.lookup(IMAGE_KEY)
    assert isinstance(pairs, MsgpackMap)
    image_map = dict(pairs)
    assert image_map["shape"] == [3, 7] and image_map["type"] == "<f4"
    assert decoded.image.shape == (3, 7)
    assert decoded.image[2, 6] == frame[2, 6] == 20.0
    np.testing.assert_array_equal(decoded.image, frame)


def test_a_crystfel_frame_is_packed_from_its_own_buffer_and_others_are_copied():
    frame = _frame("<f4")
    same, conversion = crystfel_array(frame)
    assert same is frame and conversion is None
    strided = _frame("<i4", (4, 6))[:, ::2]
    copied, conversion = crystfel_array(strided)
    assert (
        conversion is None and copied.flags.c_contiguous and not np.shares_memory(copied, strided)
    )
    np.testing.assert_array_equal(copied, strided)
    message = _encode(FrameEncoder("det"), frame)
    assert frame.tobytes() in bytes(message)


def test_the_dtype_can_be_forced():
    assert crystfel_array(_frame("<u2"), "f4")[0].dtype.str == "<f4"
    small = np.array([[0, 2**31 - 1]], dtype="<u8")
    forced, conversion = crystfel_array(small, "i4")
    assert forced.dtype.str == "<i4" and str(conversion) == "<u8 -> <i4"
    assert forced.tolist() == [[0, 2**31 - 1]]
    with pytest.raises(ValueError, match=r"0\.\.2147483648 .* do not fit in <i4"):
        crystfel_array(np.array([[0, 2**31]], dtype="<i8"), "i4")
    with pytest.raises(TypeError, match="use dtype='f4'"):
        crystfel_array(_frame("<f8"), "i4")
    with pytest.raises(ValueError, match="'f4', 'i4' or None"):
        FrameEncoder("det", dtype="f8")  # type: ignore[arg-type]


def test_floats_beyond_f4_become_infinite_which_crystfel_marks_bad(recwarn):
    frame = np.array([[1e300, -1e300, 0.5]], dtype="<f8")
    decoded = decode(_encode(FrameEncoder("det"), frame))
    assert decoded.image.tolist() == [[np.inf, -np.inf, 0.5]]
    assert len(recwarn) == 0


@pytest.mark.parametrize(
    ("frame", "error", "match"),
    [
        (np.zeros(5, "<f4"), ValueError, "2-D frames only"),
        (np.zeros((2, 3, 4), "<f4"), ValueError, r"got shape \(2, 3, 4\)"),
        (np.zeros((0, 4), "<f4"), ValueError, "empty frame"),
        (np.zeros((2, 2), "<c8"), TypeError, "numbers only"),
        (np.array([["a", "b"]]), TypeError, "numbers only"),
    ],
)
def test_frames_crystfel_cannot_read_are_refused(frame, error, match):
    with pytest.raises(error, match=match):
        _encode(FrameEncoder("det"), frame)


def test_scalars_and_the_frame_place_reach_the_decoder():
    encoder = FrameEncoder("det", scalar_keys=["beam_energy", "detector_distance", "sample"])
    scalars = {
        "beam_energy": np.float32(9500.5),
        "detector_distance": np.int64(120),
        "sample": "lyz",
    }
    decoded = decode(_encode(encoder, _frame("<i4"), 41, scalars=scalars))
    assert dict(decoded.scalars) == {
        FRAME_INDEX_KEY: 41,
        SCAN_KEY_KEY: "s1:7",
        SCAN_NUMBER_KEY: 7,
        "beam_energy": 9500.5,
        "detector_distance": 120,
        "sample": "lyz",
    }
    assert type(decoded.scalars["beam_energy"]) is float
    assert type(decoded.scalars["detector_distance"]) is int


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (True, TypeError, "booleans"),
        (None, TypeError, "int, a float or a str; got NoneType"),
        ([1.0], TypeError, "got list"),
        (2**63, ValueError, "outside int64"),
        ("", ValueError, "1 to 16384 bytes; got 0"),
        ("x" * 16385, ValueError, "got 16385"),
        ("two\nlines", ValueError, "newline"),
        ("nul\0", ValueError, "NUL"),
    ],
)
def test_scalars_crystfel_cannot_read_are_refused(value, error, match):
    encoder = FrameEncoder("det", scalar_keys=["beam_energy"])
    with pytest.raises(error, match=match):
        _encode(encoder, _frame("<f4"), scalars={"beam_energy": value})


def test_undeclared_scalars_and_bad_frame_places_are_refused():
    encoder = FrameEncoder("det", scalar_keys=["beam_energy"])
    float_index: Any = 1.0
    with pytest.raises(ValueError, match=r"\['clen'\] were not declared.*\['beam_energy'\]"):
        _encode(encoder, _frame("<f4"), scalars={"clen": 1.0})
    with pytest.raises(TypeError, match="frame_index must be an int; got float"):
        encoder.encode(_frame("<f4"), frame_index=float_index, scan_key="s", scan_number=1)
    with pytest.raises(ValueError, match="scan_number must be in 0"):
        encoder.encode(_frame("<f4"), frame_index=1, scan_key="s", scan_number=-1)


@pytest.mark.parametrize(
    ("keys", "shorter", "longer"),
    [
        ({"scalar_keys": ["beam", "beam_energy"]}, "beam", "beam_energy"),
        ({"scalar_keys": ["beam_energy", "beam"]}, "beam", "beam_energy"),
        ({"scalar_keys": ["frame"]}, "frame", "frame_index"),
        (
            {"image_key": "detector", "scalar_keys": ["detector_distance"]},
            "detector",
            "detector_distance",
        ),
        ({"peak_list_key": "peak_list", "scalar_keys": ["peak"]}, "peak", "peak_list"),
        ({"scan_number_key": "scan_key_number"}, "scan_key", "scan_key_number"),
    ],
)
def test_keys_that_prefix_another_are_refused_naming_both(keys, shorter, longer):
    with pytest.raises(ValueError, match=f"key '{shorter}' is a prefix of key '{longer}'"):
        FrameEncoder("det", **keys)


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ({"scalar_keys": ["frame_index"]}, "'frame_index' is used twice"),
        ({"scalar_keys": [""]}, "empty key"),
        ({"scalar_keys": ["a\0b"]}, "NUL"),
        ({"image_key": "scan_key"}, "'scan_key' is used twice"),
    ],
)
def test_reserved_empty_and_nul_keys_are_refused(keys, match):
    with pytest.raises(ValueError, match=match):
        FrameEncoder("det", **keys)


def test_default_keys_collide_with_no_common_crystfel_lookup():
    defaults = [FRAME_INDEX_KEY, SCAN_KEY_KEY, SCAN_NUMBER_KEY]
    assert check_keys([*defaults, *COMMON_LOOKUPS]) == (*defaults, *COMMON_LOOKUPS)
    assert FrameEncoder("det", peak_list_key=PEAK_LIST_KEY).keys == (
        IMAGE_KEY,
        FRAME_INDEX_KEY,
        SCAN_KEY_KEY,
        SCAN_NUMBER_KEY,
        PEAK_LIST_KEY,
    )


def test_the_decoder_matches_keys_by_prefix_in_crystfels_direction():
    image = {"type": "<f4", "shape": [1, 4], "data": np.arange(4, dtype="<f4").tobytes()}
    shorter = decode(msgpack.packb({"det": image, "beam_energy": 1.0}))
    assert shorter.image.tolist() == [[0.0, 1.0, 2.0, 3.0]]
    with pytest.raises(CrystfelRejects, match=r"no key answers 'detector_data' \[image-missing"):
        decode(msgpack.packb({"detector_data_2": image}))
    with pytest.raises(CrystfelRejects, match=r"'beam_energy' is found as the earlier key 'beam'"):
        decode(msgpack.packb({"detector_data": image, "beam": 1.0, "beam_energy": 2.0}))
    later = decode(msgpack.packb({"detector_data": image, "beam_energy": 2.0, "beam": 1.0}))
    assert dict(later.scalars) == {"beam_energy": 2.0, "beam": 1.0}
    by_bin_key = decode(msgpack.packb({b"detector_data": image}))
    assert by_bin_key.image.shape == (1, 4)


def test_an_array_of_maps_is_read_from_its_first_map():
    message = _encode(FrameEncoder("det"), _frame("<i4"), 5)
    first = msgpack.unpackb(message)
    decoded = decode(msgpack.packb([first, {"detector_data": "not an image"}]))
    assert decoded.scalars[FRAME_INDEX_KEY] == 5
    np.testing.assert_array_equal(decoded.image, _frame("<i4"))
    with pytest.raises(CrystfelRejects, match=r"array is empty \[main-object"):
        decode(msgpack.packb([]) + b"\0" * 16)
    with pytest.raises(CrystfelRejects, match=r"main object is str \[main-object"):
        decode(msgpack.packb(["x" * 20, first]))


def _image_map(**changes: object) -> dict[str, object]:
    image: dict[str, object] = {
        "type": "<f4",
        "shape": [2, 3],
        "data": np.arange(6, dtype="<f4").tobytes(),
    }
    image.update(changes)
    return {key: value for key, value in image.items() if value is not None}


@pytest.mark.parametrize(
    ("message", "rule"),
    [
        ({"detector_data": [1, 2, 3]}, "image-map"),
        ({"detector_data": _image_map(type=None)}, "type"),
        ({"detector_data": _image_map(type=b"<f4")}, "type"),
        ({"detector_data": _image_map(type="<f8")}, "type-value"),
        ({"detector_data": _image_map(type=">f4")}, "type-value"),
        ({"detector_data": _image_map(shape=[6])}, "shape"),
        ({"detector_data": _image_map(shape=[1, 2, 3])}, "shape"),
        ({"detector_data": _image_map(shape=[2.0, 3.0])}, "shape"),
        ({"detector_data": _image_map(shape=[-2, 3])}, "shape"),
        ({"detector_data": _image_map(shape=None)}, "shape"),
        ({"detector_data": _image_map(data=None)}, "data"),
        ({"detector_data": _image_map(data="text" * 6)}, "data"),
        ({"detector_data": _image_map(data=[0.0] * 6)}, "data"),
        ({"detector_data": _image_map(shape=[3, 3])}, "data-size"),
        ({"detector_data": _image_map(shape=[1, 3])}, "data-size"),
        ({"detector_data": _image_map(), "flag": True}, "header"),
        ({"detector_data": _image_map(), "nothing": None}, "header"),
        ({"detector_data": _image_map(), "list": [1.0]}, "header"),
        ({"detector_data": _image_map(), "blob": b"xyz"}, "header"),
        ({"detector_data": _image_map(), "huge": 2**64 - 1}, "header"),
        ({"detector_data": _image_map(), "text": "a\nb"}, "header-str"),
        ({"detector_data": _image_map(), "text": ""}, "header-str"),
        ({"detector_data": _image_map(), "text": "x" * 16385}, "header-str"),
    ],
)
def test_what_crystfel_refuses_raises_naming_the_rule(message, rule):
    with pytest.raises(CrystfelRejects) as caught:
        decode(msgpack.packb(message))
    assert caught.value.rule == rule
    assert f"[{rule}: " in str(caught.value) and ".c:" in str(caught.value)


def test_peak_lists_travel_as_three_arrays_of_floats():
    encoder = FrameEncoder("det", peak_list_key=PEAK_LIST_KEY)
    peaks = PeakList(fs=[10, 20.5], ss=np.array([3, 4], "<u2"), intensity=[100.0, 2e3])
    message = _encode(encoder, _frame("<f4"), peaks=peaks)
    decoded = decode(message, peak_list_key=PEAK_LIST_KEY).peaks
    assert decoded is not None
    fs, ss, intensity = decoded
    assert fs.tolist() == [10.0, 20.5] and ss.tolist() == [3.0, 4.0]
    assert intensity.tolist() == [100.0, 2000.0]
    raw_peaks = dict(msgpack.unpackb(message)[PEAK_LIST_KEY])
    assert all(type(v) is float for column in raw_peaks.values() for v in column)
    empty = _encode(encoder, _frame("<f4"), peaks=PeakList([], [], []))
    none_found = decode(empty, peak_list_key=PEAK_LIST_KEY).peaks
    assert none_found is not None and [len(c) for c in none_found] == [0, 0, 0]
    without = decode(_encode(encoder, _frame("<f4")))
    assert without.peaks is None and PEAK_LIST_KEY not in without.scalars


def test_bad_peak_lists_are_refused():
    with pytest.raises(
        ValueError, match=r"equal lengths; got \{'fs': 2, 'ss': 1, 'intensity': 2\}"
    ):
        PeakList([1, 2], [1], [1, 2])
    with pytest.raises(ValueError, match="'ss' must be a 1-D array of numbers"):
        PeakList([1], [[1]], [1])
    with pytest.raises(ValueError, match="without peak_list_key"):
        _encode(FrameEncoder("det"), _frame("<f4"), peaks=PeakList([1], [1], [1]))
    image = _image_map()
    cases = [
        ({"detector_data": image}, "peak-list"),
        ({"detector_data": image, "peak_list": [1.0]}, "peak-list"),
        ({"detector_data": image, "peak_list": {"fs": [1.0], "ss": [1.0]}}, "peak-list"),
        (
            {"detector_data": image, "peak_list": {"fs": [1.0], "ss": [], "intensity": [1.0]}},
            "peak-list",
        ),
        (
            {"detector_data": image, "peak_list": {"fs": [1], "ss": [1.0], "intensity": [1.0]}},
            "peak-values",
        ),
    ]
    for message, rule in cases:
        with pytest.raises(CrystfelRejects) as caught:
            decode(msgpack.packb(message), peak_list_key="peak_list")
        assert caught.value.rule == rule, message


def test_every_message_is_longer_than_indexamajig_s_15_byte_floor():
    encoder = FrameEncoder(
        "d", image_key="i", frame_index_key="f", scan_key_key="k", scan_number_key="n"
    )
    smallest = encoder.encode(np.zeros((1, 1), "|u1"), frame_index=0, scan_key="s", scan_number=0)
    assert len(smallest) >= MIN_MESSAGE_BYTES
    assert len(msgpack.packb({"i": {"type": "<i4", "shape": [1, 1], "data": bytes(4)}})) > 15
    fifteen = msgpack.packb({"a": "x" * 11})
    assert len(fifteen) == 15
    with pytest.raises(CrystfelRejects, match=r"15 bytes \[short"):
        decode(fifteen)


class RepServer:
    """A REP socket on a free port of loopback, answering each request with the next reply
    (its parts) from a thread; ``hold`` (when given) must be set before each reply goes."""

    def __init__(
        self,
        replies: Sequence[Sequence[bytes]],
        *,
        hold: threading.Event | None = None,
        port: int | None = None,
    ) -> None:
        self.requests: list[bytes] = []
        self._replies = list(replies)
        self._hold = hold
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        if port is None:
            self.port = self._socket.bind_to_random_port("tcp://127.0.0.1")
        else:
            self._socket.bind(f"tcp://127.0.0.1:{port}")
            self.port = port
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for parts in self._replies:
            while not self._socket.poll(20):
                if self._stop.is_set():
                    return
            self.requests.append(self._socket.recv())
            while self._hold is not None and not self._hold.wait(0.02):
                if self._stop.is_set():
                    return
            self._socket.send_multipart(list(parts))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close(linger=0)
        self._context.term()


@contextmanager
def serving(
    replies: Sequence[Sequence[bytes]],
    *,
    hold: threading.Event | None = None,
    port: int | None = None,
) -> Iterator[RepServer]:
    server = RepServer(replies, hold=hold, port=port)
    try:
        yield server
    finally:
        server.close()


def test_req_rep_round_trip_over_a_real_socket():
    encoder = FrameEncoder("det", scalar_keys=["beam_energy"])
    frames = [_frame("<u2", (4, 9)) + i for i in range(5)]
    messages = [_encode(encoder, f, i, scalars={"beam_energy": 9e3}) for i, f in enumerate(frames)]
    with serving([[m] for m in messages]) as server, CrystfelReqClient(server.endpoint) as client:
        decoded = [client.next(timeout=10) for _ in frames]
    assert server.requests == [b"next"] * 5
    assert [d.scalars[FRAME_INDEX_KEY] for d in decoded] == [0, 1, 2, 3, 4]
    for frame, got in zip(frames, decoded, strict=True):
        assert got.image.dtype.str == "<i4" and got.image.tobytes() == frame.astype("<i4").tobytes()
    assert client.received == 5 and client.ignored_short == 0


def test_the_client_is_set_up_as_crystfel_s_worker_and_sends_its_request_string():
    message = _encode(FrameEncoder("det"), _frame("<f4"))
    with (
        serving([[message]]) as server,
        CrystfelReqClient(server.endpoint, request="give me one") as client,
    ):
        assert client._socket.getsockopt(zmq.RCVTIMEO) == RCVTIMEO_MS == 3000
        assert client._socket.getsockopt(zmq.LINGER) == 0
        assert client._socket.type == zmq.REQ
        client.next(timeout=10)
    assert server.requests == [b"give me one"]


def test_messages_of_15_bytes_or_less_are_skipped_and_a_new_request_sent():
    message = _encode(FrameEncoder("det"), _frame("<f4"), 3)
    short = msgpack.packb({"a": "x" * 11})
    with (
        serving([[short], [b""], [message]]) as server,
        CrystfelReqClient(server.endpoint) as client,
    ):
        decoded = client.next(timeout=10)
    assert decoded.scalars[FRAME_INDEX_KEY] == 3
    assert client.ignored_short == 2 and server.requests == [b"next"] * 3


def test_a_multipart_reply_is_refused_and_the_client_goes_on():
    message = _encode(FrameEncoder("det"), _frame("<f4"), 1)
    with (
        serving([[message, message], [message]]) as server,
        CrystfelReqClient(server.endpoint) as client,
    ):
        with pytest.raises(CrystfelRejects, match=r"the reply has 2 parts \[multipart"):
            client.receive(timeout=10)
        assert client.next(timeout=10).scalars[FRAME_INDEX_KEY] == 1


def test_a_receive_timeout_waits_again_without_sending_another_request():
    message = _encode(FrameEncoder("det"), _frame("<f4"), 2)
    hold = threading.Event()
    with (
        serving([[message]], hold=hold) as server,
        CrystfelReqClient(server.endpoint, rcvtimeo_ms=100) as client,
    ):
        with pytest.raises(ReplyTimeout):
            client.receive(timeout=0.35)
        assert client.timeouts >= 1 and client.reconnects == 0
        hold.set()
        assert client.next(timeout=10).scalars[FRAME_INDEX_KEY] == 2
    assert server.requests == [b"next"]


def test_lazy_reconnects_to_a_restarted_server_where_crystfel_would_wait_forever():
    message = _encode(FrameEncoder("det"), _frame("<f4"), 9)
    dead = RepServer([[message]], hold=threading.Event())
    with (
        CrystfelReqClient(dead.endpoint, rcvtimeo_ms=100) as patient,
        CrystfelReqClient(dead.endpoint, rcvtimeo_ms=100, lazy=True) as lazy,
    ):
        try:
            for client in (patient, lazy):
                with pytest.raises(ReplyTimeout):
                    client.receive(timeout=0.3)
        finally:
            dead.close()
        with serving([[message], [message]], port=dead.port) as restarted:
            assert lazy.next(timeout=10).scalars[FRAME_INDEX_KEY] == 9
            assert lazy.reconnects >= 1
            with pytest.raises(ReplyTimeout):
                patient.receive(timeout=0.5)
    assert restarted.requests == [b"next"]


def test_a_message_built_around_its_pixels_is_the_encoded_frame_byte_for_byte():
    encoder = FrameEncoder("det", scalar_keys=["beam_energy"], peak_list_key="peak_list")
    peaks = PeakList([1.5], [2.5], [30.0])
    frame = _frame("<i4")
    where = {"frame_index": 3, "scan_key": "s1:7", "scan_number": 7}
    message, pixels = encoder.message(
        frame.shape, frame.dtype, **where, scalars={"beam_energy": 9300.0}, peaks=peaks
    )
    pixels[...] = frame
    expected = {
        "frame_index": 3,
        "scan_key": "s1:7",
        "scan_number": 7,
        "beam_energy": 9300.0,
        "peak_list": peaks.to_map(),
        "detector_data": {"type": "<i4", "shape": list(frame.shape), "data": frame.tobytes()},
    }
    assert bytes(message) == msgpack.packb(expected, use_bin_type=True)
    encoded = encoder.encode(frame, **where, scalars={"beam_energy": 9300.0}, peaks=peaks)
    assert bytes(encoded) == bytes(message)
    assert encoder.sends_as_stored("<i4") and not encoder.sends_as_stored("<u4")
    with pytest.raises(ValueError, match="2-D <f4 or <i4"):
        encoder.message((4,), "<f4", **where)


@pytest.mark.parametrize("shape", [(3, 5), (100, 100), (600, 600)], ids=["bin8", "bin16", "bin32"])
def test_the_image_bin_header_is_msgpack_own(shape):
    frame = np.arange(np.prod(shape), dtype="<f4").reshape(shape)
    message = FrameEncoder("det").encode(frame, frame_index=0, scan_key="k", scan_number=1)
    image = {"type": "<f4", "shape": list(shape), "data": frame.tobytes()}
    head = {"frame_index": 0, "scan_key": "k", "scan_number": 1, "detector_data": image}
    assert bytes(message) == msgpack.packb(head, use_bin_type=True)
