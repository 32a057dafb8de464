"""Shared bench helpers: a daemon in a temp dir (same harness as the tests), timing."""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.daemon import ADMIN_PASSWORD, Daemon  # noqa: E402

SESSION = f"oneadmin:{ADMIN_PASSWORD}"


class BenchDaemon(Daemon):
    """A test-harness daemon whose temporary directory goes with it (a benchmark leaves
    gigabytes of datastore files behind otherwise)."""

    def drop(self) -> None:
        super().drop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def start_daemon(extra: str = "LOG = [ SYSTEM = \"std\", DEBUG_LEVEL = 1 ]\n",
                 workers: int = 1, db: str | None = None) -> Daemon:
    """``workers``: WORKERS (SQLite file or PostgreSQL); ``db``: a PostgreSQL URL as ONED_TEST_DB
    takes it (a database of its own is created there), default ONED_TEST_DB or SQLite."""
    if db:
        os.environ["ONED_TEST_DB"] = db
    if workers > 1:
        extra += f"WORKERS = {workers}\n"
    d = BenchDaemon(Path(tempfile.mkdtemp(prefix="oned-bench-")), extra_config=extra)
    return d.start()


def metrics_config(mode: str) -> str:
    """The METRICS switch for a benchmark daemon ("off": no instruments at all)."""
    return f'METRICS = "{mode}"\n'


def scrape_time(d: Daemon, reps: int) -> list[float]:
    """GET /metrics to last byte over a kept-alive connection."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)

    def once() -> None:
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200, reply.status

    out = timed(once, reps)
    conn.close()
    return out


def proxy(d: Daemon) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(d.url)


def rss_mb(d: Daemon) -> float:
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    p = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000  # noqa: E731
    return (f"{name}: n={len(s)} mean={statistics.mean(s) * 1000:.3f} ms "
            f"p50={p(0.5):.3f} ms p99={p(0.99):.3f} ms")
