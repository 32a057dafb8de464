"""store/staging.py between workers: take (move a sibling's idle upload), lock, load."""

from __future__ import annotations

import os

import pytest

from oned_images.store.staging import Busy, Staging, Upload
from oned_images.template import Template


def staged(tmp_path, worker: int, upload_id: str = "a" * 32, data: bytes = b"12345",
           image_id: int = -1) -> Staging:
    st = Staging(str(tmp_path / f"w{worker}"))
    st.prepare()
    tmpl = Template()
    tmpl.set("NAME", "up")
    tmpl.set("PATH", st.data_path(upload_id))
    st.create(Upload(upload_id, 5, 10, 1, tmpl.to_text(), 1, "", 1.0, 2.0, image_id))
    with open(st.data_path(upload_id), "ab") as out:
        out.write(data)
    return st


def names(tmp_path) -> list[str]:
    return sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("w*/*"))


def test_take_moves_data_and_sidecar_and_the_path_and_holds_the_lock(tmp_path):
    sibling, mine = staged(tmp_path, 1), Staging(str(tmp_path / "w2"))
    mine.prepare()
    before = sibling.load("a" * 32)
    fd = mine.take(sibling, "a" * 32)
    assert fd is not None
    try:
        assert names(tmp_path) == [f"w2/{'a' * 32}.bin", f"w2/{'a' * 32}.json"]
        after = mine.load("a" * 32)
        assert (after.offset, after.uid, after.length, after.touched) == (5, 5, 10, 2.0)
        assert Template.parse(after.template).get("PATH") == mine.data_path("a" * 32)
        assert Template.parse(before.template).get("PATH") == sibling.data_path("a" * 32)
        # the lock is held: nobody else may take or lock it
        with pytest.raises(Busy):
            sibling.take(mine, "a" * 32)
        with pytest.raises(Busy):
            mine.lock("a" * 32)
    finally:
        os.close(fd)
    fd = mine.lock("a" * 32)  # released with the descriptor
    assert fd is not None
    os.close(fd)


def test_nothing_to_take_and_a_moved_upload_is_not_locked(tmp_path):
    sibling, mine = staged(tmp_path, 1), Staging(str(tmp_path / "w2"))
    mine.prepare()
    assert mine.take(sibling, "b" * 32) is None
    assert mine.lock("a" * 32) is None
    fd = mine.take(sibling, "a" * 32)
    os.close(fd)
    assert sibling.lock("a" * 32) is None and sibling.load("a" * 32) is None


def test_a_crash_between_link_and_rename_loses_no_byte(tmp_path):
    """What each directory's start-up (load_all) makes of a take cut short: the sidecar
    is in one directory only, and that one keeps the bytes."""
    sibling, mine = staged(tmp_path, 1), Staging(str(tmp_path / "w2"))
    mine.prepare()
    os.link(sibling.data_path("a" * 32), mine.data_path("a" * 32))  # then the crash
    kept, removed = mine.load_all()
    assert (kept, removed) == ([], ["a" * 32])
    kept, _ = sibling.load_all()
    assert [(u.id, u.offset) for u in kept] == [("a" * 32, 5)]
    with open(sibling.data_path("a" * 32), "rb") as src:
        assert src.read() == b"12345"
