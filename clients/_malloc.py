"""Process-wide memory tuning for the commands that move frames (bridges, capture,
replay)."""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> None:
    """Let glibc keep freed buffers in the process instead of unmapping them: each frame
    read, encoded and sent makes and frees several 2 MiB buffers, and a fresh mapping costs
    a page fault per 4 KiB touched. Nothing on other C libraries. A command calls it at
    its start; a library leaves the process's allocator alone."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20)
    except (OSError, AttributeError):
        log.debug("not glibc: freed frame buffers go back to the system")
