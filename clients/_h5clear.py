"""Make a file a killed SWMR writer left behind writable again, as HDF5's ``h5clear -s -i``
does: clear the "open for write / SWMR write" flags of its superblock, and move the
superblock's end-of-file address up to the file's real size (a SWMR writer only updates
it on close, so the data it appended lies beyond it).

Superblock versions 2 and 3 (``libver="latest"``) keep the flags in byte 11, then the base,
extension, end-of-file and root addresses, then a Jenkins lookup3 checksum of everything
before it. The checksum is verified before anything is written, so a file this code does
not understand is left alone.
"""

from __future__ import annotations

import struct
from pathlib import Path

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, as HDF5 checksums its metadata."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    offset = 0
    while length > 12:
        a = (a + int.from_bytes(data[offset : offset + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[offset + 4 : offset + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[offset + 8 : offset + 12], "little")) & _MASK
        a = (a - c) & _MASK
        a ^= _rot(c, 4)
        c = (c + b) & _MASK
        b = (b - a) & _MASK
        b ^= _rot(a, 6)
        a = (a + c) & _MASK
        c = (c - b) & _MASK
        c ^= _rot(b, 8)
        b = (b + a) & _MASK
        a = (a - c) & _MASK
        a ^= _rot(c, 16)
        c = (c + b) & _MASK
        b = (b - a) & _MASK
        b ^= _rot(a, 19)
        a = (a + c) & _MASK
        c = (c - b) & _MASK
        c ^= _rot(b, 4)
        b = (b + a) & _MASK
        offset += 12
        length -= 12
    if length == 0:
        return c
    tail = data[offset:] + b"\x00" * (12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    c ^= b
    c = (c - _rot(b, 14)) & _MASK
    a ^= c
    a = (a - _rot(c, 11)) & _MASK
    b ^= a
    b = (b - _rot(a, 25)) & _MASK
    c ^= b
    c = (c - _rot(b, 16)) & _MASK
    a ^= c
    a = (a - _rot(c, 4)) & _MASK
    b ^= a
    b = (b - _rot(a, 14)) & _MASK
    c ^= b
    c = (c - _rot(b, 24)) & _MASK
    return c


def clear_status_flags(path: str | Path) -> bool:
    """Clear the write-access flags of ``path``'s superblock and raise its end-of-file
    address to the file's size; True if anything changed. ValueError if the file does not
    start with a superblock this code understands. The caller must make sure no process
    has the file open for writing."""
    size = Path(path).stat().st_size
    with open(path, "r+b") as f:
        head = f.read(12)
        if head[:8] != _SIGNATURE or head[8] not in (2, 3):
            raise ValueError(f"{path}: not an HDF5 file with a version 2/3 superblock at offset 0")
        size_of_offsets = head[9]
        length = 12 + 4 * size_of_offsets
        f.seek(0)
        block = bytearray(f.read(length + 4))
        (stored,) = struct.unpack("<I", block[length:])
        if lookup3(bytes(block[:length])) != stored:
            raise ValueError(f"{path}: superblock checksum mismatch; not touching it")
        eof_at = 12 + 2 * size_of_offsets
        eof = int.from_bytes(block[eof_at : eof_at + size_of_offsets], "little")
        if block[11] == 0 and eof >= size:
            return False
        block[11] = 0
        block[eof_at : eof_at + size_of_offsets] = max(eof, size).to_bytes(
            size_of_offsets, "little"
        )
        block[length:] = struct.pack("<I", lookup3(bytes(block[:length])))
        f.seek(0)
        f.write(block)
    return True
