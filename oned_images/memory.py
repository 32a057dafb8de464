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


def keep_large_buffers_off_the_heap() -> bool:
    """Fix glibc's mmap threshold; False where there is no glibc mallopt."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
