"""One RESP reply read from a socket with the values of one field of a stream's entries
received straight into a caller's buffer: a big frame reaches its final place with the
kernel's copy alone (redis-py with hiredis copies it three times more: into its read
buffer, into hiredis', into a bytes object, and the reader joins the parts once more).

Only what XRANGE answers is understood (RESP2 and RESP3): arrays, maps, bulk and simple
strings, integers, nulls and errors.
"""

from __future__ import annotations

import socket
from typing import Any

#: Bytes asked of the socket at a time for what is not a field value.
CHUNK = 64 * 1024


class ProtocolError(Exception):
    """The bytes on the connection are not a reply this reader understands."""


class EntriesReader:
    """Reads XRANGE replies from ``sock``: the values of ``field`` go, one after the other,
    into the ``out`` buffer of ``read``; each entry then holds a memoryview of its part of
    ``out``. A value that would overflow ``out`` is read and dropped (``overflow`` True)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._lo = self._hi = 0
        self._field = b""
        self._out = memoryview(bytearray())
        self._filled = 0
        self.overflow = False

    @property
    def pending(self) -> bool:
        """True if bytes beyond the last reply were received (the connection is out of step)."""
        return self._hi > self._lo

    def read(self, field: bytes, out: memoryview) -> tuple[list[tuple[bytes, dict]], int]:
        """One XRANGE reply: [(entry ID, fields)] and the bytes of ``out`` filled. A server
        error is raised as ``ServerReply``."""
        self._field, self._out, self._filled, self.overflow = field, out, 0, False
        reply = self._value(to_out=False)
        if isinstance(reply, ServerReply):
            raise reply
        if not isinstance(reply, list):
            raise ProtocolError(f"XRANGE answered {type(reply).__name__}, not an array")
        entries = []
        for entry in reply:
            if not isinstance(entry, list) or len(entry) != 2:
                raise ProtocolError(f"an XRANGE entry is {entry!r:.80}, not [ID, fields]")
            entry_id, flat = entry
            entries.append((entry_id, flat if isinstance(flat, dict) else _pairs(flat)))
        return entries, self._filled

    def _value(self, *, to_out: bool) -> Any:
        """The next value; ``to_out``: a bulk string goes to the buffer (a field's value)."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return self._into_out(size) if to_out else self._bulk(size)
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else self._items(count)
        if kind == b"%":
            return _pairs(self._items(2 * int(rest)))
        if kind in (b"+", b":"):
            return rest
        if kind == b"_":
            return None
        if kind == b"-":
            return ServerReply(rest.decode(errors="replace"))
        raise ProtocolError(f"unexpected reply {line[:40]!r}")

    def _items(self, count: int) -> list[Any]:
        """``count`` values of an array or map; a value after the key ``field`` (in a flat
        list of field-value pairs) goes to the buffer."""
        items: list[Any] = []
        for i in range(count):
            items.append(self._value(to_out=bool(i % 2) and items[i - 1] == self._field))
        return items

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n", self._lo, self._hi)
            if end >= 0:
                line = bytes(self._view[self._lo : end])
                self._lo = end + 2
                return line
            self._fill()

    def _fill(self) -> None:
        """Receive more bytes into the read buffer (moving what is left to its start)."""
        if self._lo == self._hi:
            self._lo = self._hi = 0
        elif self._hi == len(self._buf):
            kept = self._hi - self._lo
            self._buf[:kept] = self._view[self._lo : self._hi]
            self._lo, self._hi = 0, kept
        received = self._sock.recv_into(self._view[self._hi :])
        if not received:
            raise ConnectionError("the server closed the connection")
        self._hi += received

    def _receive(self, dest: memoryview) -> None:
        """Exactly ``len(dest)`` bytes of a value into ``dest``, then its CRLF."""
        have = min(len(dest), self._hi - self._lo)
        dest[:have] = self._view[self._lo : self._lo + have]
        self._lo += have
        while have < len(dest):
            received = self._sock.recv_into(dest[have:])
            if not received:
                raise ConnectionError("the server closed the connection")
            have += received
        while self._hi - self._lo < 2:
            self._fill()
        self._lo += 2

    def _bulk(self, size: int) -> bytes:
        value = bytearray(size)
        self._receive(memoryview(value))
        return bytes(value)

    def _into_out(self, size: int) -> memoryview | bytes:
        if self._filled + size > len(self._out):
            self.overflow = True
            return self._bulk(size)
        dest = self._out[self._filled : self._filled + size]
        self._receive(dest)
        self._filled += size
        return dest


def _pairs(flat: Any) -> dict:
    """A flat [key, value, ...] list as a dict."""
    if not isinstance(flat, list) or len(flat) % 2:
        raise ProtocolError(f"{flat!r:.80} is not a list of field-value pairs")
    return dict(zip(flat[::2], flat[1::2], strict=True))


class ServerReply(Exception):
    """An error reply of the server (its text)."""
