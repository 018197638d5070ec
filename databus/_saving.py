"""Where a scan is saved: the file name rules of the NeXus writer's layouts, shared by the
writer (which writes there) and the scan runner (which announces it as BLISS does, in
``scan_info["filename"]``), so the two cannot disagree."""

from __future__ import annotations

import datetime
import hashlib
import re
from pathlib import Path
from typing import Any, Literal

#: Longest file or folder name the writer makes, in UTF-8 bytes (255 is the usual limit).
FILE_NAME_BYTES = 200
_ESCAPED = re.compile("%(25|2F|00|2E)")

Layout = Literal["session", "scan"]


def hdf5_name(name: str) -> str:
    """``name`` as a valid HDF5 link name, one to one: ``%``, ``/`` and NUL become ``%25``,
    ``%2F`` and ``%00``, a leading ``.`` ``%2E``, the empty name ``%``."""
    clean = name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    if clean.startswith("."):
        clean = "%2E" + clean[1:]
    return clean or "%"


def original_name(stored: str) -> str:
    """The name ``hdf5_name`` made ``stored`` from."""
    if stored == "%":
        return ""
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), stored)


def file_name(name: str) -> str:
    """``name`` as a file or folder name: ``hdf5_name``, and past ``FILE_NAME_BYTES`` cut
    and ended with ``%~`` and a hash of ``name`` (escaping never makes ``%~``)."""
    clean = hdf5_name(name)
    raw = clean.encode(errors="surrogateescape")
    if len(raw) <= FILE_NAME_BYTES:
        return clean
    digest = hashlib.sha256(name.encode(errors="surrogateescape")).hexdigest()[:16]
    cut = raw[: FILE_NAME_BYTES - 2 - len(digest)].decode(errors="ignore")
    return f"{cut}%~{digest}"


def scan_file(root: Path, session: str, number: int, created: float, layout: Layout) -> Path:
    """The file scan ``number`` of ``session`` goes to under ``root``: one per session and
    day of creation (``session`` layout) or one per scan (``scan`` layout)."""
    folder = file_name(session)
    if layout == "scan":
        return root / folder / f"{folder}_{number:04d}.h5"
    day = datetime.datetime.fromtimestamp(created).strftime("%Y%m%d")
    return root / folder / f"{folder}_{day}.h5"


#: The scan-info ``type`` of a scan an analysis derived from another; its ``source`` is the
#: other scan's key, and the writer puts it next to that scan's file (``processed_file``).
PROCESSED = "processed"


def derived_from(info: dict[str, Any]) -> str | None:
    """The key of the scan a derived scan's ``info`` names as its source (None if it is
    not a derived scan)."""
    source = info.get("source")
    return source if info.get("type") == PROCESSED and isinstance(source, str) else None


def processed_file(raw: Path) -> Path:
    """Where the results derived from the scans of file ``raw`` go: ``<raw>_processed.h5``
    beside it, as dranspose's reducers write them."""
    return raw.with_name(f"{raw.stem}_processed{raw.suffix}")
