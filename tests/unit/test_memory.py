"""The glibc mmap threshold the daemon fixes at start (oned_images/memory.py)."""

from __future__ import annotations

import subprocess
import sys

from oned_images.memory import keep_large_buffers_off_the_heap


def test_mallopt_is_accepted_on_glibc():
    assert keep_large_buffers_off_the_heap() is True


def test_a_freed_large_buffer_leaves_resident_memory_as_it_was():
    """Without the fixed threshold, an 8 MB buffer freed after a 64 MB one comes from
    the heap, below live objects, and stays resident; with it, it goes back."""
    code = """
import sys
from oned_images.memory import keep_large_buffers_off_the_heap
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
if sys.argv[1] == "fixed":
    keep_large_buffers_off_the_heap()
first = b"x" * (64 << 20)  # glibc's default: mmapped, and the threshold rises to it
del first
keep = []
for _ in range(8):
    big = b"x" * (8 << 20)
    keep.append([b"y" * 2000 for _ in range(100)])  # live objects above it on the heap
    del big
print(rss())
"""
    grown = {mode: int(subprocess.run([sys.executable, "-c", code, mode], check=True,
                                      capture_output=True, text=True).stdout)
             for mode in ("fixed", "default")}
    assert grown["default"] - grown["fixed"] >= 6, grown  # one 8 MB buffer kept
