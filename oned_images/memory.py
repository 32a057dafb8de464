"""Keep the daemon's resident memory flat after large replies (glibc only).

A whole-pool listing builds a reply of tens of megabytes.  glibc serves the first
such buffer with mmap and frees it back to the system, but then raises its mmap
threshold to that size, so every later one comes from the heap and stays resident
once freed (10,000 images: 63 MB before the first listing, 80 MB after it, for good).
A fixed threshold of 1 MiB keeps large buffers on mmap: resident memory stays at the
pool's own size.  Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt's parameter number for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def _libc_function(name: str):
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_large_buffers_off_the_heap() -> bool:
    """Fix glibc's mmap threshold; False where there is no glibc mallopt."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


_trim = _libc_function("malloc_trim")
if _trim is not None:
    _trim.argtypes = (ctypes.c_size_t,)


def release_freed_memory() -> None:
    """Give the pages of freed heap memory back to the system (glibc malloc_trim).

    A whole-pool listing's bodies (10,000 of them, 18 MB) are made on the database
    thread, in that thread's malloc arena, and freed once the reply is sent: glibc only
    trims an arena when a large free reaches the top of its heap, so a part of them
    stayed resident (about 6 MB more after a few listings on a new connection each).
    Called after each large reply (rpc/front.py); a few milliseconds at 10,000 images,
    and resident memory after listings is then below what it was before them.
    Elsewhere (no glibc) it does nothing."""
    if _trim is not None:
        _trim(0)
