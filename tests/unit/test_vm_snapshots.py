"""The VM disk snapshot list rules (vms.md §5.8): modes, parents, deletes."""

from __future__ import annotations

import pytest

from oned_images.domain import snapshots as snap
from oned_images.domain import vm_snapshots as vs


def tree(t) -> list[tuple]:
    return [(s["ID"], s["PARENT"], s.get("CHILDREN"), s.get("ACTIVE"))
            for s in snap.snapshots(t)]


@pytest.mark.parametrize(("disk", "mode"), [
    ({}, "NO"), ({"ALLOW_ORPHANS": "yes"}, "YES"), ({"ALLOW_ORPHANS": "MIXED"}, "MIXED"),
    ({"ALLOW_ORPHANS": "FORMAT", "FORMAT": "raw"}, "YES"),
    ({"ALLOW_ORPHANS": "FORMAT", "FORMAT": "qcow2"}, "NO"),
    ({"ALLOW_ORPHANS": "nonsense"}, "NO"),
])
def test_the_mode_is_fixed_from_the_disk(disk, mode):
    t = vs.new_list(disk, 3)
    assert (t.get("ALLOW_ORPHANS"), t.get("DISK_ID"), t.get("NEXT_SNAPSHOT"),
            t.get("CURRENT_BASE")) == (mode, "3", "0", "-1")


def test_no_mode_chains_on_the_active_snapshot():
    t = vs.new_list({}, 0)
    for n in range(3):
        assert vs.add_snapshot(t, f"s{n}" if n else "", 10, 100 + n) == n
        vs.activate(t, n)
    assert tree(t) == [("0", "-1", "1", None), ("1", "0", "2", None), ("2", "1", None, "YES")]
    assert "NAME" not in snap.find(t, 0) and snap.find(t, 1)["NAME"] == "s1"
    assert t.get("NEXT_SNAPSHOT") == "3" and vs.total_size(t) == 30
    assert vs.delete_error(t, 0, True) == "Cannot delete snapshot 0 for persistent disk images"
    assert vs.delete_error(t, 0, False) == "Cannot delete snapshot if child has children"
    assert vs.delete_error(t, 1, True) is None
    assert vs.delete_error(t, 7, True) == "Snapshot does not exist"
    # a failed creation goes and its parent forgets it; ids are not given back
    vs.add_snapshot(t, "", 10, 200)
    vs.drop(t, 3)
    assert tree(t)[-1] == ("2", "1", None, "YES") and t.get("NEXT_SNAPSHOT") == "4"


def test_no_mode_refusals_on_branches():
    t = vs.new_list({}, 0)
    vs.add_snapshot(t, "", 1, 1)
    vs.activate(t, 0)
    vs.add_snapshot(t, "", 1, 2)
    vs.add_snapshot(t, "", 1, 3)  # two children of 0 (0 stays active: creations failed)
    assert vs.delete_error(t, 0, False) == "Cannot delete snapshot with more than one children"
    t = vs.new_list({}, 0)
    vs.add_snapshot(t, "", 1, 1)
    vs.activate(t, 0)
    vs.add_snapshot(t, "", 1, 2)
    assert vs.delete_error(t, 0, False) == "Cannot delete the active snapshot with children"


def test_mixed_and_yes_modes():
    t = vs.new_list({"ALLOW_ORPHANS": "MIXED"}, 0)
    vs.add_snapshot(t, "", 1, 1)
    vs.add_snapshot(t, "", 1, 2)
    assert tree(t) == [("0", "-1", None, None), ("1", "-1", None, None)]
    t.set("CURRENT_BASE", "0")
    vs.add_snapshot(t, "", 1, 3)
    assert tree(t)[0] == ("0", "-1", "2", None)
    assert vs.delete_error(t, 0, True) == "Cannot delete snapshot with children"
    vs.activate(t, 1)
    assert vs.delete_error(t, 1, True) == "Cannot delete the active snapshot"
    y = vs.new_list({"ALLOW_ORPHANS": "YES"}, 0)
    vs.add_snapshot(y, "", 1, 1)
    vs.activate(y, 0)
    vs.add_snapshot(y, "", 1, 2)
    assert tree(y) == [("0", "-1", None, "YES"), ("1", "-1", None, None)]
    assert vs.delete_error(y, 0, True) is None
