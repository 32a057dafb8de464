"""store/shared_counters.py: the cache counters the workers of one parent share."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from oned_images.store.shared_counters import SLOTS, SharedCounters, create
from tests.support.daemon import REPO

CHILD = """
import os, sys
from oned_images.store.shared_counters import SharedCounters
block = SharedCounters(int(sys.argv[1]), 2)
for v in range(1, int(sys.argv[2]) + 1):
    block.publish({0: v, 3: 2 * v})
block.publish({0: 1})  # lower: ignored
"""


@pytest.fixture
def fd():
    fd = create(2)
    yield fd
    os.close(fd)


def test_a_counter_is_the_largest_value_any_row_published(fd):
    one, two = SharedCounters(fd, 1), SharedCounters(fd, 2)
    assert [one.value(s) for s in range(SLOTS)] == [0] * SLOTS
    one.publish({0: 5, 1: 9})
    one.publish({0: 3})  # never lowers
    assert (one.value(0), two.value(0), two.value(1)) == (5, 5, 9)
    two.publish({0: 7})
    assert (one.value(0), two.value(0)) == (7, 7)
    one.publish({0: 6})  # below the other row's: the maximum stays
    assert (one.value(0), one.value(1), one.value(2)) == (7, 9, 0)
    with pytest.raises(ValueError, match="worker 3 has no row in a block of 2"):
        SharedCounters(fd, 3)


def test_another_process_publishes_and_this_one_sees_it_rising_only(fd):
    """A child maps the inherited descriptor (as a worker does) and counts up while
    this process reads: every read is a value the child stored, never lower than the
    one before, and the end value is the child's maximum."""
    mine = SharedCounters(fd, 1)
    mine.publish({3: 5})
    n = 20000
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(fd), str(n)], pass_fds=(fd,),
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    seen = []
    while child.poll() is None:
        seen.append((mine.value(0), mine.value(3)))
    assert child.wait(timeout=60) == 0
    firsts, seconds = [a for a, _b in seen], [b for _a, b in seen]
    assert firsts == sorted(firsts) and seconds == sorted(seconds)
    # slot 3 is read after slot 0: at least what the publish before that one stored
    assert all(0 <= a <= n and max(5, 2 * (a - 1)) <= b <= 2 * n for a, b in seen), seen[:5]
    assert (mine.value(0), mine.value(3)) == (n, 2 * n)
    assert SharedCounters(fd, 2).value(0) == n
