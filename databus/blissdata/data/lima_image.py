"""BLISS's ``data.lima_image``: ``Frame``, what a lima view's ``get_last_image()`` returns."""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Frame"]


class Frame(NamedTuple):
    """One image: its pixels, its index in the scan (None if unknown) and where it was
    read (``"file"``; BLISS also has ``"memory"`` and ``"video"`` from a Lima server)."""

    data: Any
    frame_number: int | None
    source: str | None
