"""Bytes done and total of the driver actions running for images (copies, downloads).

A driver reports progress on stderr with ``INFO: progress <done> <total>`` lines
(drivers/datastore/common/image_source.py writes one a second at most; any
third-party script may too; total 0 = unknown).  The runner feeds them here; the
record lives while the action runs, is logged every LOG_EVERY seconds with its rate
and ETA, and is read by GET /api/progress (rpc/uploads.py).  Nothing of it reaches
the XML-RPC documents, which stay exactly oned's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger

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

    def start(self, oid: int, action: str) -> None:
        now = self.clock()
        self.records[oid] = Record(action, 0, 0, now, now, now)

    def update(self, oid: int, action: str, done: int, total: int) -> None:
        now = self.clock()
        rec = self.records.get(oid)
        if rec is None:
            rec = self.records[oid] = Record(action, 0, 0, now, now, now)
        rec.done, rec.total, rec.updated = done, total, now
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


def _mb(n: int) -> str:
    return f"{n / 1048576:.1f} MB"
