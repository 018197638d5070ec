"""Where msgpack objects end in a buffer, without decoding them, and a record (a map)
read from a buffer with its large bins left in place. Pure: bytes only.

msgpack's own Unpacker copies what it reads into a buffer of its own and every ``bin``
into a new ``bytes``; a capture's frames are most of its bytes, so the reader walks a
record's structure here (a few dozen bytes) and hands its data on as views of the file's
mapping: no copy between the page cache and the socket a replay sends them on.
"""

from __future__ import annotations

from typing import Any

from databus._encoding import unpack_meta


class Short(Exception):
    """The object runs past the end of the buffer (cut short, or a corrupt length)."""


class Malformed(ValueError):
    """Bytes that are no msgpack (the type byte 0xc1), or a record that is not a map."""


def _fixed() -> dict[int, int]:
    """Sizes of the objects whose first byte says it all."""
    sizes = {b: 1 for b in (*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3)}
    sizes.update({b: 1 + (b & 0x1F) for b in range(0xA0, 0xC0)})  # fixstr
    sizes.update({0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9})
    sizes.update({0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9})
    sizes.update({0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18})  # fixext
    return sizes


_FIXED = _fixed()
#: type byte -> (bytes of the length, bytes before the payload) for bin, str and ext.
_SIZED = {
    0xC4: (1, 2),
    0xC5: (2, 3),
    0xC6: (4, 5),
    0xD9: (1, 2),
    0xDA: (2, 3),
    0xDB: (4, 5),
    0xC7: (1, 3),
    0xC8: (2, 4),
    0xC9: (4, 6),
}
#: type byte -> (bytes of the count, objects per count) for arrays and maps.
_COUNTED = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
_BINS = (0xC4, 0xC5, 0xC6)


def _number(buf: memoryview, at: int, size: int) -> int:
    if at + 1 + size > len(buf):
        raise Short
    return int.from_bytes(buf[at + 1 : at + 1 + size], "big")


def end_of(buf: memoryview, at: int) -> int:
    """The offset after the msgpack object that starts at ``at``; ``Short`` if it runs
    past the end of ``buf``, ``Malformed`` for a byte no msgpack object starts with."""
    pending = 1
    n = len(buf)
    while pending:
        if at >= n or pending > n - at:  # every object takes a byte at least
            raise Short
        first = buf[at]
        pending -= 1
        if first in _FIXED:
            at += _FIXED[first]
        elif 0x80 <= first <= 0x8F:
            pending += 2 * (first & 0x0F)
            at += 1
        elif 0x90 <= first <= 0x9F:
            pending += first & 0x0F
            at += 1
        elif first in _SIZED:
            width, head = _SIZED[first]
            at += head + _number(buf, at, width)
        elif first in _COUNTED:
            width, per = _COUNTED[first]
            pending += per * _number(buf, at, width)
            at += 1 + width
        else:
            raise Malformed(f"byte {first:#04x} starts no msgpack object")
    if at > n:
        raise Short
    return at


def map_size(buf: memoryview, at: int) -> tuple[int, int]:
    """(number of pairs, offset of the first key) of the map that starts at ``at``."""
    if at >= len(buf):
        raise Short
    first = buf[at]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F, at + 1
    if first in (0xDE, 0xDF):
        width = 2 if first == 0xDE else 4
        return _number(buf, at, width), at + 1 + width
    raise Malformed(f"a record is a msgpack map, but byte {first:#04x} starts no map")


def read_map(buf: memoryview, at: int) -> tuple[dict[Any, Any], int]:
    """The map that starts at ``at`` and the offset after it: its values decoded as
    ``databus._encoding.unpack_meta`` does, except ``bin`` values, which stay views of
    ``buf`` (no copy). ``Short``, ``Malformed``, or what msgpack raises for bad content."""
    pairs, at = map_size(buf, at)
    fields: dict[Any, Any] = {}
    for _ in range(pairs):
        end = end_of(buf, at)
        key = unpack_meta(buf[at:end])
        first = buf[end] if end < len(buf) else None
        if first in _BINS:
            width, head = _SIZED[first]
            start = end + head
            at = start + _number(buf, end, width)
            if at > len(buf):
                raise Short
            fields[key] = buf[start:at]
        else:
            at = end_of(buf, end)
            fields[key] = unpack_meta(buf[end:at])
    return fields, at
