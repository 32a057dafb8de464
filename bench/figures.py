"""Every figure of issue 13's table, against any endpoint, in both connection modes.

Usage:
  python -m bench.figures                          # starts its own daemon (bench.common)
  python -m bench.figures --url http://host:2633/RPC2 --auth FILE [--pid PID]
options: --mode keep|new|both (default both), --n CALLS (2000), --images 10000,
         --copy-mb 100 (0: no copy figures), --only version,info,allocate,pool,copy,
         its own daemon: --workers N (WORKERS), --db postgresql://... (its backend)

FILE holds ``user:password`` (an oneadmin-group account: it allocates images in
datastore 1).  With --pid (or its own daemon) the server's resident memory is read
from /proc.  Figures are medians and p99 of calls timed to the reply's last byte by a
raw-socket client (bench.client); ``client cpu`` is what the client itself spent per
call, part of every figure.  Modes: ``keep`` is one kept-alive connection, ``new`` a
new TCP connection per call (oned's clients).  The pool is filled up to --images by
allocating SOURCE images (no copy) before the listings are measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.client import Client, Endpoint

TAG = f"b{os.getpid()}x{int(time.time()) % 100000}"
TEMPLATE = 'NAME="{tag}-{n}"\nSOURCE="/var/tmp/src/{n}"\nFORMAT="raw"\nSIZE="1"\nDESCRIPTION="b"'


def stats(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s), s[min(len(s) - 1, int(0.99 * len(s)))]


def line(name: str, mode: str, samples: list[float], cpu: list[float] | None = None,
         extra: str = "") -> None:
    p50, p99 = stats(samples)
    text = f"{name:<34} [{mode:<4}] n={len(samples):<5} p50={p50 * 1e3:8.3f} ms  p99={p99 * 1e3:8.3f} ms"
    if cpu:
        text += f"  client cpu p50={statistics.median(cpu) * 1e3:.3f} ms"
    print(text + extra, flush=True)


def latency(ep: Endpoint, mode: str, name: str, method: str, params: tuple, n: int) -> None:
    c = Client(ep, mode)
    req = c.request(method, *params)
    first = c.call(method, *params)
    assert first[0], first
    for _ in range(min(200, n)):
        c.send(req)
    times, cpu = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        c.send(req)
        times.append(time.perf_counter() - t0)
        cpu.append(c.cpu)
    c.close()
    line(name, mode, times, cpu)


def allocate(ep: Endpoint, mode: str, first: int, count: int, clients: int) -> float:
    """SOURCE images allocated by ``clients`` threads; images per second (``ep.busy``:
    the server's CPU time over the run's wall time, 1.0 = one core, when known)."""
    errors: list[str] = []
    shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    starts = [first + sum(shares[:i]) for i in range(clients)]
    import xmlrpc.client

    def work(start: int, k: int) -> None:
        c = Client(ep, mode)
        for n in range(start, start + k):
            r = xmlrpc.client.loads(c.send(c.request(
                "one.image.allocate", TEMPLATE.format(tag=TAG, n=n), 1)))[0][0]
            if not r[0]:
                errors.append(r[1])
        c.close()

    threads = [threading.Thread(target=work, args=a) for a in zip(starts, shares, strict=True)]
    cpu0, t0 = ep.cpu_seconds(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu1 = ep.cpu_seconds()
    ep.busy = None if cpu0 is None else (cpu1 - cpu0) / elapsed
    assert not errors, errors[:3]
    return count / elapsed


def pool_size(ep: Endpoint) -> int:
    c = Client(ep, "keep")
    body = c.send(c.request("one.imagepool.info", -2, -1, -1))
    c.close()
    return body.count(b"&lt;IMAGE&gt;") + body.count(b"<IMAGE>")


def wait_ready(c: Client, iid: int, timeout: float = 600) -> None:
    req = c.request("one.image.info", iid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = c.send(req)
        for marker in (b"&lt;STATE&gt;", b"<STATE>"):
            if marker in body:
                state = body.split(marker)[1][:2].rstrip(b"&<")
                break
        if state == b"1":
            return
        if state == b"5":
            raise RuntimeError(f"image {iid} went to ERROR")
        time.sleep(0.001)
    raise TimeoutError(iid)


def copy_figures(ep: Endpoint, size_mb: int, runs: int) -> None:
    """An image from PATH to READY (allocate to the first info that says READY, polled
    every millisecond on a kept-alive connection) against `cp` of the same file, both
    with the source in the page cache (the same file read again); then an empty 1 GiB
    datablock (the mkfs action), raw and ext4."""
    work = Path(tempfile.mkdtemp(prefix="oned-bench-fig-", dir="/var/tmp"))
    try:
        for size in dict.fromkeys((size_mb, 1)):  # --copy-mb 1: once
            src = work / f"src-{size}.raw"
            subprocess.run(["dd", "if=/dev/urandom", f"of={src}", "bs=1M", f"count={size}",
                            "status=none"], check=True)
            src.read_bytes()
            plain, ours = [], []
            c = Client(ep, "keep")
            for r in range(runs):
                t0 = time.perf_counter()
                subprocess.run(["cp", str(src), str(work / "plain")], check=True)
                plain.append(time.perf_counter() - t0)
                (work / "plain").unlink()
                t0 = time.perf_counter()
                res = c.call("one.image.allocate", f'NAME="{TAG}-copy{size}-{r}"\nPATH="{src}"', 1)
                assert res[0], res
                wait_ready(c, res[1])
                ours.append(time.perf_counter() - t0)
            c.close()
            line(f"{size} MiB from PATH to READY", "keep", ours)
            line(f"{size} MiB plain cp", "-", plain)
        c = Client(ep, "keep")
        for fs in ("", "ext4"):
            times = []
            for r in range(runs):
                t0 = time.perf_counter()
                extra = f'\nFS="{fs}"' if fs else ""
                res = c.call("one.image.allocate", f'NAME="{TAG}-mkfs{fs}-{r}"\n'
                             f'TYPE="DATABLOCK"\nSIZE="1024"{extra}', 1)
                assert res[0], res
                wait_ready(c, res[1])
                times.append(time.perf_counter() - t0)
            line(f"1 GiB empty datablock {fs or 'raw'} (mkfs)", "keep", times)
        c.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url")
    ap.add_argument("--auth", help="file with user:password")
    ap.add_argument("--pid", type=int, help="the server's pid, for its resident memory")
    ap.add_argument("--mode", choices=("keep", "new", "both"), default="both")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--copy-mb", type=int, default=100)
    ap.add_argument("--copy-runs", type=int, default=5)
    ap.add_argument("--only", default="version,info,allocate,pool,rss,copy")
    ap.add_argument("--workers", type=int, default=1,
                    help="its own daemon: WORKERS (more than 1 needs --db or ONED_TEST_DB)")
    ap.add_argument("--db", help="its own daemon: a PostgreSQL URL (postgresql://user:pw@"
                                 "host:port/any: a database of its own is made there)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    modes = ("keep", "new") if args.mode == "both" else (args.mode,)
    daemon = None
    if args.url:
        ep = Endpoint.from_args(args.url, args.auth, args.pid)
    else:
        from bench.common import SESSION, start_daemon

        daemon = start_daemon(workers=args.workers, db=args.db)
        ep = Endpoint(daemon.url, SESSION, daemon.proc.pid)
    try:
        load = os.getloadavg()
        print(f"endpoint {ep.url}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
              f"{os.cpu_count()} cpus" + (f"; WORKERS = {args.workers}" if daemon else ""),
              flush=True)
        if (rss := ep.rss_mb()) is not None:
            print(f"server RSS at start: {rss:.1f} MB", flush=True)
        c = Client(ep, "keep")
        iid = c.call("one.image.allocate", TEMPLATE.format(tag=TAG, n="info"), 1)[1]
        c.close()
        for mode in modes:
            if "version" in only:
                latency(ep, mode, "one.system.version", "one.system.version", (), args.n)
            if "info" in only:
                latency(ep, mode, "one.image.info", "one.image.info", (iid,), args.n)
        next_n = 0
        if "allocate" in only:
            for mode in modes:
                for clients in (1, 8):
                    for _ in range(2):
                        rate = allocate(ep, mode, next_n, 500, clients)
                        next_n += 500
                        busy = (f"  server cpu {ep.busy:.2f} cores" if ep.busy is not None
                                else "")
                        print(f"{'allocate (SOURCE), ' + str(clients) + ' client(s)':<34} "
                              f"[{mode:<4}] 500 images: {rate:7.0f} /s{busy}", flush=True)
        if "pool" in only or "rss" in only:
            have = pool_size(ep)
            if have < args.images:
                rate = allocate(ep, "keep", next_n, args.images - have, 8)
                print(f"(filled the pool to {args.images} images at {rate:.0f}/s)", flush=True)
        if "pool" in only:
            print(f"pool: {pool_size(ep)} images", flush=True)
            for mode in modes:
                latency(ep, mode, "one.imagepool.info whole pool", "one.imagepool.info",
                        (-2, -1, -1), 20)
                latency(ep, mode, "one.imagepool.info page of 200", "one.imagepool.info",
                        (-2, 0, -200), min(args.n, 1000))
        if "rss" in only and (rss := ep.rss_mb()) is not None:
            print(f"server RSS at {pool_size(ep)} images: {rss:.1f} MB", flush=True)
            c = Client(ep, "keep")
            req = c.request("one.imagepool.info", -2, -1, -1)
            for _ in range(50):
                c.send(req)
            c.close()
            # at rest: the daemon gives a listing's freed memory back on the turn after
            # its last byte, which a reading taken at once can beat (+17 MB); on a busy
            # machine that turn may come late, so read until the figure stops falling
            # (at most 3 s)
            time.sleep(0.5)
            rss, deadline = ep.rss_mb(), time.monotonic() + 2.5
            while time.monotonic() < deadline:
                time.sleep(0.25)
                if (now := ep.rss_mb()) >= rss:
                    break
                rss = now
            print(f"server RSS after 50 more whole-pool listings: {rss:.1f} MB", flush=True)
        if "copy" in only and args.copy_mb:
            copy_figures(ep, args.copy_mb, args.copy_runs)
    finally:
        if daemon is not None:
            daemon.drop()


if __name__ == "__main__":
    main()
