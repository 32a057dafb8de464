"""The start-up sweep of fs datastores: partial files go, complete ones are kept aside."""

from __future__ import annotations

import os

from oned_images.driver import reaper

KEPT = "0123456789abcdef0123456789abcdef"
STRAY = "fedcba9876543210fedcba9876543210"


def test_partials_are_deleted_complete_strays_moved_to_lost_found(tmp_path):
    base = tmp_path / "datastores" / "7"
    base.mkdir(parents=True)
    (base / KEPT).write_bytes(b"image in use")
    (base / f"{KEPT}.snap").mkdir()
    (base / f"{STRAY}.tmp").write_bytes(b"half a copy")
    (base / f"{STRAY}.download").write_bytes(b"half a download")
    (base / STRAY).write_bytes(b"an image whose row is gone")
    (base / f"{STRAY}.snap").mkdir()
    (base / f"{STRAY}.snap" / "0").write_bytes(b"its snapshot")
    (base / "notes.txt").write_bytes(b"not ours")

    handled = reaper.sweep_orphans(str(base), 7, {str(base / KEPT)})

    assert sorted(os.listdir(base)) == sorted([KEPT, f"{KEPT}.snap", "notes.txt"])
    lost = tmp_path / "datastores" / "lost+found" / "7"
    assert sorted(os.listdir(lost)) == sorted([STRAY, f"{STRAY}.snap"])
    assert (lost / STRAY).read_bytes() == b"an image whose row is gone"
    assert (lost / f"{STRAY}.snap" / "0").read_bytes() == b"its snapshot"
    assert sorted(handled) == sorted(str(base / n) for n in
                                     (f"{STRAY}.tmp", f"{STRAY}.download", STRAY,
                                      f"{STRAY}.snap"))


def test_a_second_stray_of_the_same_name_does_not_overwrite_the_first(tmp_path):
    base = tmp_path / "ds" / "1"
    base.mkdir(parents=True)
    lost = tmp_path / "ds" / "lost+found" / "1"
    lost.mkdir(parents=True)
    (lost / STRAY).write_bytes(b"first")
    (base / STRAY).write_bytes(b"second")
    reaper.sweep_orphans(str(base), 1, set())
    assert (lost / STRAY).read_bytes() == b"first"
    assert (lost / f"{STRAY}.1").read_bytes() == b"second"
