"""Bytes done and total of the driver actions running for images (copies, downloads).

A driver reports progress on stderr with ``INFO: progress <done> <total>`` lines
(drivers/datastore/common/image_source.py writes one a second at most; any
third-party script may too; total 0 = unknown).  The runner feeds them here; the
record lives while the action runs, is logged every LOG_EVERY seconds with its rate
and ETA, and is read by GET /api/progress (rpc/uploads.py).  Nothing of it reaches
the XML-RPC documents, which stay exactly oned's.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from oned_images.config import DaemonConfig

log = Logger(namespace="ImM")

#: the message of an INFO line (after "INFO: " and an optional script name)
PROGRESS = re.compile(r"(?:^|\s)progress (\d+) (\d+)\s*$")
LOG_EVERY = 5.0


def parse(message: str) -> tuple[int, int] | None:
    """(done, total) of a progress message, else None."""
    m = PROGRESS.search(message)
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass
class Record:
    action: str
    done: int
    total: int
    started: float
    updated: float
    logged: float

    def rate(self, now: float) -> float:
        """Average bytes/s since the action started."""
        elapsed = now - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float) -> float | None:
        rate = self.rate(now)
        if self.total <= 0 or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate


class Progress:
    """The live records, by image id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.records: dict[int, Record] = {}
        #: WORKERS > 1: where the records are published for the sibling workers
        self.board: Board | None = None

    def start(self, oid: int, action: str) -> None:
        now = self.clock()
        self.records[oid] = Record(action, 0, 0, now, now, now)
        self._changed()

    def _changed(self) -> None:
        if self.board is not None:
            self.board.changed(self.snapshot)

    def update(self, oid: int, action: str, done: int, total: int) -> None:
        now = self.clock()
        rec = self.records.get(oid)
        if rec is None:
            rec = self.records[oid] = Record(action, 0, 0, now, now, now)
        rec.done, rec.total, rec.updated = done, total, now
        self._changed()
        if now - rec.logged >= LOG_EVERY:
            rec.logged = now
            eta = rec.eta(now)
            log.info("{action} for image {oid}: {done} of {total} ({rate:.1f} MB/s, ETA {eta})",
                     action=action, oid=oid, done=_mb(done),
                     total=_mb(total) if total > 0 else "unknown size",
                     rate=rec.rate(now) / 1048576,
                     eta=f"{eta:.0f}s" if eta is not None else "unknown")

    def end(self, oid: int) -> None:
        self.records.pop(oid, None)
        self._changed()

    def snapshot(self, oids: set[int] | None = None) -> dict[str, dict]:
        """{"<id>": {"action", "done", "total", "rate", "eta"}} (rate in bytes/s, eta in
        seconds or null), for the ids in ``oids`` (None: all)."""
        now = self.clock()
        out = {}
        for oid, rec in sorted(self.records.items()):
            if oids is not None and oid not in oids:
                continue
            eta = rec.eta(now)
            out[str(oid)] = {"action": rec.action, "done": rec.done, "total": rec.total,
                             "rate": round(rec.rate(now)),
                             "eta": round(eta, 1) if eta is not None else None}
        return out


class Board:
    """WORKERS > 1: each worker's records, published as ``<run>/w<k>/progress.json`` so
    that GET /api/progress, which any worker may answer, shows every worker's copies.

    A worker writes its snapshot at most once per EVERY seconds while copies report
    (on a thread, replaced atomically), and at once when the set of copies changes; a
    reader takes the siblings' files no older than FRESH seconds (a dead worker's file
    says nothing).  Figures are at most EVERY seconds old; the reader's own are live."""

    EVERY = 1.0
    FRESH = 10.0

    def __init__(self, reactor: Any, run_dir: str, in_thread: Callable) -> None:
        self.reactor = reactor
        self.path = os.path.join(run_dir, "progress.json")
        self.parent = os.path.dirname(run_dir)
        self.own = os.path.basename(run_dir)
        self.in_thread = in_thread
        self._keys: set[str] = set()
        self._last = 0.0
        self._writing = False
        self._due: Any = None
        self._pending: Callable[[], dict] | None = None

    def changed(self, snapshot: Callable[[], dict]) -> None:
        self._pending = snapshot
        if self._writing or self._due is not None:
            return
        now = self.reactor.seconds()
        keys = set(snapshot())
        if keys != self._keys or now - self._last >= self.EVERY:
            self._write()
        else:
            self._due = self.reactor.callLater(self._last + self.EVERY - now, self._write)

    def _write(self) -> None:
        self._due = None
        snapshot, self._pending = self._pending, None
        if snapshot is None:
            return
        data = snapshot()
        self._keys, self._last, self._writing = set(data), self.reactor.seconds(), True
        d = self.in_thread(self._write_sync, json.dumps(data))

        def done(_: Any) -> None:
            self._writing = False
            if self._pending is not None:
                self.changed(self._pending)

        d.addErrback(lambda f: log.failure("progress board not written", f))
        d.addBoth(done)

    def _write_sync(self, text: str) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, self.path)

    def siblings_sync(self) -> dict[str, dict]:
        """The records the other workers published lately (on a thread)."""
        out: dict[str, dict] = {}
        try:
            names = sorted(os.listdir(self.parent))
        except FileNotFoundError:
            return out
        now = time.time()
        for name in names:
            if name == self.own or not DaemonConfig.is_worker_dir(name):
                continue
            path = os.path.join(self.parent, name, "progress.json")
            try:
                with open(path, encoding="utf-8") as src:
                    if now - os.fstat(src.fileno()).st_mtime > self.FRESH:
                        continue
                    data = json.load(src)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                out.update(data)
        return out


def _mb(n: int) -> str:
    return f"{n / 1048576:.1f} MB"
