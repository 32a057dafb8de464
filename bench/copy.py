"""Copy throughput through one.image.allocate (fs driver) against plain `cp`, and
one.image.info latency while 20 copies run.

Usage: python bench/copy.py [SIZE_MB]   (default 1024; source files under /var/tmp)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import SESSION, proxy, start_daemon, summary


def make_file(path: Path, size_mb: int) -> None:
    subprocess.run(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={size_mb}",
                    "status=none"], check=True)


def cold_cache() -> None:
    """Flush and drop the page cache (root only) so both copies read from disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def wait_ready(p, ids: list[int], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [p.one.image.info(SESSION, i)[1].split("<STATE>")[1].split("<")[0]
                  for i in ids]
        if all(s in ("1", "5") for s in states):
            assert all(s == "1" for s in states), states
            return
        time.sleep(0.05)
    raise TimeoutError


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    work = Path("/var/tmp") / f"oned-bench-copy-{os.getpid()}"
    work.mkdir()
    d = start_daemon()
    try:
        p = proxy(d)
        src = work / "big.raw"
        make_file(src, size_mb)
        base = d.var / "datastores" / "1"
        plain_runs, our_runs = [], []
        for rnd in range(2):
            cold_cache()
            t0 = time.perf_counter()
            subprocess.run(["cp", str(src), str(base / "plain-copy")], check=True)
            os.sync()
            plain_runs.append(time.perf_counter() - t0)
            (base / "plain-copy").unlink()
            cold_cache()
            t0 = time.perf_counter()
            iid = p.one.image.allocate(SESSION, f'NAME="big{rnd}"\nPATH="{src}"', 1)[1]
            wait_ready(p, [iid])
            os.sync()
            our_runs.append(time.perf_counter() - t0)
        plain, ours = min(plain_runs), min(our_runs)
        print(f"{size_mb} MiB (cold cache, incl. sync): plain cp {plain:.2f}s "
              f"({size_mb / plain:.0f} MiB/s), one.image.allocate to READY {ours:.2f}s "
              f"({size_mb / ours:.0f} MiB/s), ratio {ours / plain:.2f}")

        small = max(16, size_mb // 8)
        files = []
        for n in range(20):
            f = work / f"c{n}.raw"
            make_file(f, small)
            files.append(f)
        latencies: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            q = proxy(d)
            while not stop.is_set():
                t = time.perf_counter()
                q.one.image.info(SESSION, iid)
                latencies.append(time.perf_counter() - t)
                time.sleep(0.005)

        ids = [p.one.image.allocate(SESSION, f'NAME="c{n}"\nPATH="{f}"', 1)[1]
               for n, f in enumerate(files)]
        th = threading.Thread(target=probe)
        th.start()
        try:
            wait_ready(p, ids)
        finally:
            stop.set()
            th.join()
        print(summary(f"one.image.info while 20 copies of {small} MiB run", latencies))
    finally:
        d.drop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
