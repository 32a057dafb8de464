"""driver/progress.Board: a worker's copies published for its siblings (WORKERS > 1)."""

from __future__ import annotations

import json
import os
import time

from twisted.internet import defer, task

from oned_images.driver.progress import Board, Progress


def board_in(tmp_path, worker: int, clock: task.Clock) -> Board:
    run = tmp_path / f"w{worker}"
    run.mkdir(exist_ok=True)
    return Board(clock, str(run), lambda fn, *a: defer.succeed(fn(*a)))


def test_siblings_files_are_read_and_stale_or_own_ones_are_not(tmp_path):
    clock = task.Clock()
    mine, other, dead = (board_in(tmp_path, k, clock) for k in (1, 2, 3))
    (tmp_path / "w1" / "progress.json").write_text(json.dumps({"1": {"done": 1}}))
    (tmp_path / "w2" / "progress.json").write_text(json.dumps({"2": {"done": 2}}))
    (tmp_path / "w3" / "progress.json").write_text(json.dumps({"3": {"done": 3}}))
    old = time.time() - Board.FRESH - 1
    os.utime(tmp_path / "w3" / "progress.json", (old, old))
    (tmp_path / "notes").mkdir()
    assert mine.siblings_sync() == {"2": {"done": 2}}
    assert other.siblings_sync() == {"1": {"done": 1}}
    assert dead.siblings_sync() == {"1": {"done": 1}, "2": {"done": 2}}


def test_writes_are_at_once_for_a_new_or_ended_copy_else_once_a_second(tmp_path):
    clock = task.Clock()
    progress = Progress(clock=clock.seconds)
    progress.board = board_in(tmp_path, 1, clock)
    path = tmp_path / "w1" / "progress.json"

    def published() -> dict:
        return {k: v["done"] for k, v in json.loads(path.read_text()).items()}

    progress.start(7, "cp")
    assert published() == {"7": 0}
    progress.update(7, "cp", 10, 100)
    assert published() == {"7": 0}       # within a second of the last write
    clock.advance(1.0)
    assert published() == {"7": 10}      # the latest figures, a second later
    progress.start(8, "cp")
    assert published() == {"7": 10, "8": 0}
    progress.end(7)
    progress.end(8)
    assert published() == {}
