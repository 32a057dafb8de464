"""The cache counters that the workers of one parent share in memory (store/versions.py).

The parent (oned_images/workers.py) creates the block before it starts any worker: an
anonymous memory file (``memfd``) every worker inherits by descriptor and maps, so it
needs no path, leaves nothing behind on disk, cannot be mixed up with another parent's,
and a restarted worker maps the very block its predecessor wrote.

Layout: one row per worker (worker k writes row k-1 only), one 8-byte counter per cache
slot in each row.  A slot has one writing process and, in it, :meth:`publish` holds a
lock (PostgreSQL's DB threads), so a publish is a plain read, compare, store with no
cross-process lock, and a reader takes the largest value of a slot over the rows: a
monotonic maximum without compare-and-swap, which Python cannot do on a mapping.  The
slots are 8-byte aligned, so on the 64-bit machines this runs on a store and a load are
each one instruction: a reader sees the old or the new value, never a mix.
"""

from __future__ import annotations

import mmap
import os
import threading

#: counters per row: one per cache registered with store/versions.py.
SLOTS = 16
_WIDTH = 8


def create(rows: int) -> int:
    """A zeroed block for ``rows`` workers: its descriptor (close-on-exec; the parent
    passes it to each worker with ``pass_fds``)."""
    fd = os.memfd_create("oned-images-cache-versions", os.MFD_CLOEXEC)
    os.ftruncate(fd, rows * SLOTS * _WIDTH)
    return fd


class SharedCounters:
    """The block mapped in one process; ``row`` is its worker's (1-based)."""

    def __init__(self, fd: int, row: int) -> None:
        size = os.fstat(fd).st_size
        self.rows = size // (SLOTS * _WIDTH)
        if not 1 <= row <= self.rows:
            raise ValueError(f"worker {row} has no row in a block of {self.rows}")
        self._map = mmap.mmap(fd, size)  # keeps its own reference to the file
        self._view = memoryview(self._map).cast("q")
        self._mine = (row - 1) * SLOTS
        self._lock = threading.Lock()

    def value(self, slot: int) -> int:
        """The largest value any worker published for ``slot``."""
        view = self._view
        return max(view[r * SLOTS + slot] for r in range(self.rows))

    def publish(self, values: dict[int, int]) -> None:
        """Raise this worker's counters to ``values`` (slot -> value); never lowers one."""
        view, mine = self._view, self._mine
        with self._lock:
            for slot, value in values.items():
                if value > view[mine + slot]:
                    view[mine + slot] = value

    def close(self) -> None:
        self._view.release()
        self._map.close()
