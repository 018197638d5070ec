"""A 0MQ REQ client that receives and decodes frames as CrystFEL 0.12's indexamajig does with
``--zmq-input=ADDR --zmq-request=next --data-format=msgpack``, and raises ``CrystfelRejects``
(naming the rule, ``RULES``) for every message CrystFEL would refuse or misread.

How CrystFEL receives (src/im-zmq.c, src/indexamajig.c at tag 0.12.0), done the same here:
each indexamajig worker connects its own REQ socket with RCVTIMEO 3000 ms and LINGER 0; it
sends the request string (without NUL) once, and after a receive timeout it waits again
without sending another; it reads one message part per reply; a reply of 15 bytes or less
is dropped and the next request sent. A multi-part reply is refused here: CrystFEL would take
the first part as the frame and never read the rest, so its next request fails (EFSM, the REQ
socket still in the middle of the reply) and that worker gets no frame again.

Where CrystFEL's decoder is lenient and would compute with a wrong value without a word,
this client is strict, and says so in the rule: the image's ``data`` must hold exactly
``ss * fs * 4`` bytes, its ``type`` must be ``<f4`` or ``<i4`` (CrystFEL logs another type
and goes on with the panel unfilled), ``shape`` values must be ints 1..2**31-1, peak values
must be msgpack floats, int scalars must fit int64 and strings hold no NUL, and every
top-level key must be reachable under its own name (no earlier key its prefix). The panel
bounds check against a geometry file (image-msgpack.c:381-391) is not done: there is none.

``lazy=True`` is NOT what CrystFEL does: after each receive timeout the client drops its
socket, connects a new one and sends the request again, so a test can go on after the
server was killed. A reply still on its way to the dropped socket is lost with it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import msgpack
import numpy as np
import zmq

__all__ = [
    "RCVTIMEO_MS",
    "RULES",
    "CrystfelFrame",
    "CrystfelRejects",
    "CrystfelReqClient",
    "MsgpackMap",
    "ReplyTimeout",
    "decode",
    "lookup",
]

#: CrystFEL's receive timeout (im-zmq.c:91-92), after which it waits again.
RCVTIMEO_MS = 3000
#: indexamajig processes a message only when it is longer than this (bytes).
SHORT_MESSAGE_BYTES = 15

#: What CrystFEL 0.12.0 checks, by rule name: where, and what.
RULES: Mapping[str, str] = MappingProxyType(
    {
        "multipart": "im-zmq.c:151-170 one message part per reply (zmq_msg_recv)",
        "short": "indexamajig.c:565-566 a message of 15 bytes or less is ignored",
        "unpack": "image-msgpack.c:463-468 the message unpacks as msgpack",
        "main-object": (
            "image-msgpack.c:49-69 the top level is a map, or a non-empty array whose first "
            "element (a map) is used"
        ),
        "image-missing": (
            "image-msgpack.c:72-105,338-343 the image key is found (a key K answers the lookup "
            "of W when K is a prefix of W, first match wins)"
        ),
        "image-map": "image-msgpack.c:345-348 the image is a map",
        "type": "image-msgpack.c:350-359 the image has 'type', a str",
        "type-value": (
            "image-msgpack.c:405-436 'type' is '<i4' or '<f4' (strict: CrystFEL logs another "
            "type and leaves the panel unfilled)"
        ),
        "shape": (
            "image-msgpack.c:361-379 the image has 'shape', an array of 2 values [ss, fs] read "
            "as unsigned ints (strict: ints 1..2**31-1)"
        ),
        "data": "image-msgpack.c:393-403 the image has 'data', a bin",
        "data-size": (
            "image-msgpack.c:405-431 'data' is read as ss*fs 4-byte values (strict: exactly "
            "ss*fs*4 bytes; CrystFEL does not check)"
        ),
        "header": (
            "image-msgpack.c:245-315 a scalar is a msgpack int (read as int64; strict: in its "
            "range), float or str"
        ),
        "header-str": (
            "image-msgpack.c:232-242, image.c:463-466 a str scalar has 1..16384 bytes and no "
            "newline (strict: no NUL, where CrystFEL cuts it)"
        ),
        "shadowed": (
            "image-msgpack.c:72-105 (strict) every key is found under its own name: no earlier "
            "key is a prefix of it"
        ),
        "peak-list": (
            "image-msgpack.c:172-203 the peak list is found, a map with arrays 'fs', 'ss' and "
            "'intensity' of equal size"
        ),
        "peak-values": (
            "image-msgpack.c:214-216 peak values are read as doubles without a type check "
            "(strict: msgpack floats only)"
        ),
    }
)

_INT_MAX = 2**31 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_MAX_STRING_BYTES = 16 * 1024
_IMAGE_TYPES = ("<f4", "<i4")


class CrystfelRejects(ValueError):
    """A message CrystFEL 0.12 would refuse or misread; ``rule`` is a key of ``RULES``."""

    def __init__(self, rule: str, detail: str) -> None:
        self.rule = rule
        super().__init__(f"{detail} [{rule}: {RULES[rule]}]")


class ReplyTimeout(TimeoutError):
    """No reply within the caller's timeout. The request stays outstanding, as in CrystFEL:
    the next receive waits for its reply without sending another."""


class MsgpackMap(list[tuple[object, object]]):
    """A msgpack map as its (key, value) pairs in message order, duplicates kept: the way
    CrystFEL walks it (str keys are str, bin keys bytes)."""


def _key_bytes(key: object) -> bytes | None:
    """A map key's bytes as CrystFEL compares them; None for keys neither str nor bin."""
    if isinstance(key, str):
        return key.encode("utf-8", "surrogateescape")
    if isinstance(key, bytes):
        return key
    return None


def _answers(key: bytes, name: bytes) -> bool:
    """``strncmp(key, name, len(key)) == 0`` with ``name`` NUL-terminated, as
    find_msgpack_kv compares."""
    for i, byte in enumerate(key):
        wanted = name[i] if i < len(name) else 0
        if byte != wanted:
            return False
        if byte == 0:
            return True
    return True


def _find(pairs: MsgpackMap, name: str) -> int | None:
    """The index of the pair that CrystFEL's lookup of ``name`` finds in ``pairs``."""
    wanted = name.encode("utf-8", "surrogateescape")
    for index, (key, _value) in enumerate(pairs):
        key_bytes = _key_bytes(key)
        if key_bytes is not None and _answers(key_bytes, wanted):
            return index
    return None


def lookup(obj: object, name: str) -> object | None:
    """The value CrystFEL finds for ``name`` in ``obj`` (find_msgpack_kv): the first key that
    is a prefix of ``name``; None when there is none or ``obj`` is not a map."""
    if not isinstance(obj, MsgpackMap):
        return None
    index = _find(obj, name)
    return None if index is None else obj[index][1]


def _header(name: str, value: object) -> int | float | str:
    """A scalar as CrystFEL's header reader takes it; CrystfelRejects otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise CrystfelRejects("header", f"scalar {name!r} is {type(value).__name__} {value!r}")
    if isinstance(value, int) and not _I64_MIN <= value <= _I64_MAX:
        raise CrystfelRejects("header", f"scalar {name!r} = {value} is outside int64")
    if isinstance(value, str):
        size = len(value.encode("utf-8", "surrogateescape"))
        if not 1 <= size <= _MAX_STRING_BYTES or "\n" in value or "\0" in value:
            raise CrystfelRejects("header-str", f"scalar {name!r} = {value!r} ({size} bytes)")
    return value


def _image(main: MsgpackMap, image_key: str) -> np.ndarray:
    """The image map's pixels as a read-only (ss, fs) array; CrystfelRejects otherwise."""
    image = lookup(main, image_key)
    if image is None:
        raise CrystfelRejects("image-missing", f"no key answers {image_key!r}")
    if not isinstance(image, MsgpackMap):
        raise CrystfelRejects("image-map", f"{image_key!r} is {type(image).__name__}")
    dtype = lookup(image, "type")
    if not isinstance(dtype, str):
        raise CrystfelRejects("type", f"'type' of {image_key!r} is {dtype!r}")
    shape = lookup(image, "shape")
    if not isinstance(shape, list) or len(shape) != 2:
        raise CrystfelRejects("shape", f"'shape' of {image_key!r} is {shape!r}")
    if not all(type(size) is int and 1 <= size <= _INT_MAX for size in shape):
        raise CrystfelRejects("shape", f"'shape' of {image_key!r} is {shape!r}")
    data = lookup(image, "data")
    if not isinstance(data, bytes):
        raise CrystfelRejects("data", f"'data' of {image_key!r} is {type(data).__name__}")
    if dtype not in _IMAGE_TYPES:
        raise CrystfelRejects("type-value", f"'type' of {image_key!r} is {dtype!r}")
    ss, fs = shape
    if len(data) != ss * fs * 4:
        raise CrystfelRejects(
            "data-size", f"'data' holds {len(data)} bytes; shape {shape} needs {ss * fs * 4}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(ss, fs)


def _peaks(main: MsgpackMap, peak_list_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The peak list's fs, ss and intensity as float64 arrays; CrystfelRejects otherwise."""
    peak_list = lookup(main, peak_list_key)
    if peak_list is None:
        raise CrystfelRejects("peak-list", f"no key answers {peak_list_key!r}")
    columns = []
    for name in ("fs", "ss", "intensity"):
        values = lookup(peak_list, name)
        if not isinstance(values, list):
            raise CrystfelRejects("peak-list", f"{peak_list_key!r} has no array {name!r}")
        if not all(type(value) is float for value in values):
            raise CrystfelRejects("peak-values", f"{peak_list_key!r} {name!r} is {values!r}")
        columns.append(np.array(values, dtype=np.float64))
    fs, ss, intensity = columns
    if not len(fs) == len(ss) == len(intensity):
        raise CrystfelRejects(
            "peak-list", f"sizes fs {len(fs)}, ss {len(ss)}, intensity {len(intensity)}"
        )
    return fs, ss, intensity


@dataclass(frozen=True)
class CrystfelFrame:
    """One frame as CrystFEL decodes it.

    ``image``: (ss, fs) read-only array of the message's ``<f4`` or ``<i4`` pixels.
    ``scalars``: every other top-level entry but maps, as CrystFEL's header reader gets it.
    ``peaks``: (fs, ss, intensity) float64 arrays, or None when no peak list was asked for.
    ``raw``: the main map's pairs in message order (nested maps as ``MsgpackMap`` too).
    ``size``: the message's length in bytes.
    """

    image: np.ndarray
    scalars: Mapping[str, int | float | str]
    peaks: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    raw: MsgpackMap
    size: int

    def lookup(self, name: str) -> object | None:
        """The value CrystFEL's lookup of ``name`` finds in the main map (by prefix)."""
        return lookup(self.raw, name)


def decode(
    message: bytes | memoryview,
    *,
    image_key: str = "detector_data",
    peak_list_key: str | None = None,
) -> CrystfelFrame:
    """Decode one message as indexamajig 0.12 does with ``--data-format=msgpack`` (and
    ``--peaks=msgpack`` when ``peak_list_key`` is given); CrystfelRejects naming the rule.
    Bytes after the first msgpack object are ignored, as CrystFEL ignores them."""
    size = len(message)
    if size <= SHORT_MESSAGE_BYTES:
        raise CrystfelRejects("short", f"the message has {size} bytes")
    try:
        top = msgpack.unpackb(
            message,
            raw=False,
            unicode_errors="surrogateescape",
            strict_map_key=False,
            object_pairs_hook=MsgpackMap,
        )
    except msgpack.ExtraData as extra:
        top = extra.unpacked
    except (ValueError, msgpack.UnpackException) as exc:
        raise CrystfelRejects("unpack", f"msgpack says {exc}") from exc
    if isinstance(top, list) and not isinstance(top, MsgpackMap):
        if not top:
            raise CrystfelRejects("main-object", "the top-level array is empty")
        top = top[0]
    if not isinstance(top, MsgpackMap):
        raise CrystfelRejects("main-object", f"the main object is {type(top).__name__}")
    image = _image(top, image_key)
    peaks = None if peak_list_key is None else _peaks(top, peak_list_key)
    taken = {_find(top, image_key), None if peak_list_key is None else _find(top, peak_list_key)}
    scalars: dict[str, int | float | str] = {}
    for index, (key, value) in enumerate(top):
        key_bytes = _key_bytes(key)
        if key_bytes is None or index in taken:
            continue
        name = key_bytes.decode("utf-8", "surrogateescape")
        found = _find(top, name)
        if found != index:
            earlier = top[found][0] if found is not None else None
            raise CrystfelRejects(
                "shadowed", f"key {key!r} is found as the earlier key {earlier!r}"
            )
        if not isinstance(value, MsgpackMap):
            scalars[name] = _header(name, value)
    return CrystfelFrame(image, MappingProxyType(scalars), peaks, top, size)


class CrystfelReqClient:
    """A REQ client that gets frames from ``endpoint`` as an indexamajig worker does.

    ``request`` is the string sent (``--zmq-request``). ``receive()`` returns the next
    message CrystFEL would process, ``next()`` the decoded frame (``decode`` with
    ``image_key`` and ``peak_list_key``). ``lazy=True`` re-connects and re-sends after each
    receive timeout (NOT CrystFEL's behaviour: see the module docstring). ``rcvtimeo_ms``
    is CrystFEL's 3000 unless a test needs a faster lazy re-connect. Counts: ``received``,
    ``ignored_short``, ``timeouts``, ``reconnects``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        request: str = "next",
        image_key: str = "detector_data",
        peak_list_key: str | None = None,
        lazy: bool = False,
        rcvtimeo_ms: int = RCVTIMEO_MS,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.request = request.encode("utf-8")
        self.image_key = image_key
        self.peak_list_key = peak_list_key
        self.lazy = lazy
        self.rcvtimeo_ms = rcvtimeo_ms
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._connect()
        self._request_sent = False
        self.received = 0
        self.ignored_short = 0
        self.timeouts = 0
        self.reconnects = 0

    def _connect(self) -> zmq.Socket:
        """A REQ socket set up as im_zmq_connect does (options after connect, as there)."""
        socket = self._context.socket(zmq.REQ)
        socket.connect(self.endpoint)
        socket.setsockopt(zmq.RCVTIMEO, self.rcvtimeo_ms)
        socket.setsockopt(zmq.LINGER, 0)
        return socket

    def _wait_part(self, deadline: float | None) -> zmq.Frame:
        """One message part, waiting in RCVTIMEO windows as CrystFEL does (re-connecting
        after each when lazy); ReplyTimeout past ``deadline`` (monotonic seconds)."""
        window_end = time.monotonic() + self.rcvtimeo_ms / 1000
        while True:
            if not self._request_sent:
                self._socket.send(self.request)
                self._request_sent = True
            now = time.monotonic()
            wait = window_end - now if deadline is None else min(window_end, deadline) - now
            if self._socket.poll(max(0, round(wait * 1000))):
                return self._socket.recv(copy=False)
            now = time.monotonic()
            if now >= window_end:
                self.timeouts += 1
                window_end = now + self.rcvtimeo_ms / 1000
                if self.lazy:
                    self._socket.close(linger=0)
                    self._socket = self._connect()
                    self._request_sent = False
                    self.reconnects += 1
            if deadline is not None and now >= deadline:
                raise ReplyTimeout(f"no reply from {self.endpoint} in time")

    def receive(self, timeout: float | None = None) -> memoryview:
        """The next message indexamajig would process: one part of more than 15 bytes
        (shorter ones are skipped and counted in ``ignored_short``). Waits up to ``timeout``
        seconds (None: forever, as CrystFEL). Raises ReplyTimeout, or CrystfelRejects for a
        multi-part reply (after reading all its parts)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            part = self._wait_part(deadline)
            self._request_sent = False
            if part.more:
                parts = 1
                while self._socket.getsockopt(zmq.RCVMORE):
                    self._socket.recv(copy=False)
                    parts += 1
                raise CrystfelRejects("multipart", f"the reply has {parts} parts")
            if len(part) <= SHORT_MESSAGE_BYTES:
                self.ignored_short += 1
                continue
            self.received += 1
            return part.buffer

    def next(self, timeout: float | None = None) -> CrystfelFrame:
        """The next frame, decoded as CrystFEL decodes it (``receive`` then ``decode``)."""
        message = self.receive(timeout)
        return decode(message, image_key=self.image_key, peak_list_key=self.peak_list_key)

    def close(self) -> None:
        """Close the socket (LINGER 0) and the context when the client made it."""
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> CrystfelReqClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
