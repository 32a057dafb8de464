"""Upload throughput through /uploads/ (tus, tuspy) against plain `cp`, the daemon's
RSS while it runs, and one.image.info latency while 4 uploads run.

Usage: python bench/upload.py [SIZE_MB] [PARALLEL_MB]   (defaults 2048 and 512; files
under /var/tmp; the upload goes over loopback in 64 MB PATCH requests)
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from tusclient import client as tus

from bench.common import SESSION, proxy, rss_mb, start_daemon, summary

mp = multiprocessing.get_context("fork")

AUTH = {"Authorization": "Basic " + base64.b64encode(SESSION.encode()).decode()}
CHUNK = 64 << 20


def make_file(path: Path, size_mb: int) -> None:
    subprocess.run(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={size_mb}",
                    "status=none"], check=True)


def upload(d, path: Path, name: str) -> tuple[float, str]:
    """(seconds until the last PATCH answered, upload URL)."""
    up = tus.TusClient(f"http://127.0.0.1:{d.port}/uploads/", headers=AUTH).uploader(
        str(path), chunk_size=CHUNK, metadata={"name": name, "type": "DATABLOCK"})
    t0 = time.perf_counter()
    up.upload()
    return time.perf_counter() - t0, up.url


def image_of(url: str) -> int:
    import requests
    reply = requests.head(url, headers={**AUTH, "Tus-Resumable": "1.0.0"}, timeout=30)
    return int(reply.headers["X-One-Image-Id"])


def wait_ready(p, oid: int, timeout: float = 1800) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        state = p.one.image.info(SESSION, oid)[1].split("<STATE>")[1].split("<")[0]
        if state in ("1", "5"):
            assert state == "1", state
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise TimeoutError


def probe(url: str, oid: int, stop, out) -> None:
    """one.image.info calls, 5 ms apart, until ``stop``: their durations to ``out``."""
    import xmlrpc.client
    p, lat = xmlrpc.client.ServerProxy(url), []
    while not stop.is_set():
        t1 = time.perf_counter()
        p.one.image.info(SESSION, oid)
        lat.append(time.perf_counter() - t1)
        time.sleep(0.005)
    out.send(lat)


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    parallel_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    work = Path("/var/tmp") / f"oned-bench-upload-{os.getpid()}"
    work.mkdir()
    d = start_daemon('LOG = [ SYSTEM = "std", DEBUG_LEVEL = 1 ]\n')
    try:
        p = proxy(d)
        src = work / "big.raw"
        make_file(src, size_mb)
        base = d.var / "datastores" / "1"
        base.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        subprocess.run(["cp", str(src), str(base / "plain-copy")], check=True)
        os.sync()
        plain = time.perf_counter() - t0
        (base / "plain-copy").unlink()

        rss_idle = rss_mb(d)
        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(rss_mb(d))
                time.sleep(0.05)
        sampler = threading.Thread(target=sample)
        sampler.start()
        took, url = upload(d, src, "bench-upload")
        big = image_of(url)
        ready = wait_ready(p, big)
        done.set()
        sampler.join()
        quarters = [samples[len(samples) * q // 4:len(samples) * (q + 1) // 4] or [rss_idle]
                    for q in range(4)]
        print(f"file: {size_mb} MB")
        print(f"cp (+sync): {plain:.2f} s, {size_mb / plain:.0f} MB/s")
        print(f"upload over loopback (tuspy, {CHUNK >> 20} MB PATCHes): {took:.2f} s, "
              f"{size_mb / took:.0f} MB/s, ratio upload/cp {took / plain:.2f}")
        print(f"image READY {ready:.2f} s after the last PATCH (staged file moved)")
        print(f"daemon RSS: {rss_idle:.0f} MB idle, {max(samples):.0f} MB peak during the "
              f"upload; max of each quarter of it: "
              f"{', '.join(f'{max(q):.0f}' for q in quarters)} MB ({len(samples)} samples)")

        small = []
        for i in range(4):
            path = work / f"p{i}.raw"
            make_file(path, parallel_mb)
            small.append(path)
        urls: list[str] = []
        threads = [threading.Thread(target=lambda i=i: urls.append(
            upload(d, small[i], f"bench-par-{i}")[1])) for i in range(4)]
        idle = []
        for _ in range(200):
            t1 = time.perf_counter()
            p.one.image.info(SESSION, big)
            idle.append(time.perf_counter() - t1)
        par_rss: list[float] = []
        t_par = time.perf_counter()
        for t in threads:
            t.start()
        # the latency is measured from a process of its own: in this one the 4
        # uploaders' threads would hold the GIL the caller needs
        stop = mp.Event()
        mine, theirs = mp.Pipe()
        prober = mp.Process(target=probe, args=(d.url, big, stop, theirs))
        prober.start()
        while any(t.is_alive() for t in threads):
            par_rss.append(rss_mb(d))
            time.sleep(0.05)
        for t in threads:
            t.join()
        stop.set()
        lat = mine.recv()
        prober.join()
        t_par = time.perf_counter() - t_par
        print(f"4 parallel uploads of {parallel_mb} MB: {t_par:.2f} s, "
              f"{4 * parallel_mb / t_par:.0f} MB/s in all; daemon RSS peak {max(par_rss):.0f} MB")
        print(summary("image.info idle", idle))
        print(summary(f"image.info during 4 uploads of {parallel_mb} MB", lat))
    finally:
        d.drop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
