"""Freed memory back to the system during a load.

glibc keeps what a process frees in its heap for later allocations; a load's transients (a
chunk's float32 rows, a matrix before and after the kernel's packing) freed that way stayed
resident, so a 108 MB stage sat at 180 MB and its next layer's transients grew the peak
further. `malloc_trim(0)` after each layer returns the free pages (where there is no glibc,
nothing is done)."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc's malloc_trim; elsewhere nothing)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
