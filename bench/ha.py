"""Several daemons on one database: allocate rate and one.image.info p50/p99 with 1, 2
and 3 daemons, and the takeover time after a kill -9 (README "Several daemons").

    python3 -m bench.ha [--db postgresql://postgres:postgres@127.0.0.1:5432/postgres]
    python3 -m bench.ha --db sqlite --clients 1,8    # daemons on the first one's SQLite file

Every client thread calls one daemon (client i -> daemon i mod N), in both connection
modes of bench.client.  Each daemon is its own process with its own DB connections; on
this machine they share its cores with the PostgreSQL server (on SQLite: take turns with
the writer lock) and the clients, so the figures say "no regression, no error" more than
"N times faster".
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path

from bench.client import Client, Endpoint
from bench.common import SESSION
from bench.figures import TAG, TEMPLATE, stats
from tests.support.daemon import start_several
from tests.support.remotes import driver_config, make_remotes

LOG = 'LOG = [ SYSTEM = "std", DEBUG_LEVEL = 1 ]\n'


def allocate_rate(eps: list[Endpoint], mode: str, first: int, count: int,
                  clients: int) -> float:
    """Images per second, ``clients`` threads spread over the daemons."""
    errors: list[str] = []
    share = count // clients

    def work(k: int) -> None:
        c = Client(eps[k % len(eps)], mode)
        for n in range(first + k * share, first + (k + 1) * share):
            r = xmlrpc.client.loads(c.send(c.request(
                "one.image.allocate", TEMPLATE.format(tag=TAG, n=n), 1)))[0][0]
            if not r[0]:
                errors.append(r[1])
        c.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    assert not errors, errors[:3]
    return share * clients / elapsed


def info_latency(eps: list[Endpoint], mode: str, iid: int, n: int) -> tuple[list[float], float]:
    """one.image.info from one client per daemon at once: every call's time, calls/s."""
    samples: list[list[float]] = [[] for _ in eps]

    def work(k: int) -> None:
        c = Client(eps[k], mode)
        req = c.request("one.image.info", iid)
        for _ in range(100):
            c.send(req)
        for _ in range(n):
            t0 = time.perf_counter()
            c.send(req)
            samples[k].append(time.perf_counter() - t0)
        c.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(eps))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    every = sum(samples, [])
    return every, len(every) / elapsed


def takeover(db: str, lease: int, copies: int) -> None:
    """kill -9 of a daemon running ``copies`` copies: seconds until the survivor re-runs
    them (its "Reconciling" line) and until every image is READY."""
    work = Path(tempfile.mkdtemp(prefix="oned-bench-ha-"))
    remotes = make_remotes(work / "remotes", {"slow": {
        "cp": "#!/bin/sh\ncat >/dev/null\nsleep 0.5\necho /x/$1 raw\n",
        "monitor": "#!/bin/sh\ncat >/dev/null\necho USED_MB=1; echo FREE_MB=100000; "
                   "echo TOTAL_MB=100001\n",
        "stat": "#!/bin/sh\ncat >/dev/null\necho 1\n"}})
    os.environ["ONED_TEST_DB"] = db
    daemons = start_several(work, 2, f"DAEMON_LEASE = {lease}\n"
                            + driver_config(remotes, "-t 15 -d dummy,fs,slow"))
    try:
        survivor, victim = daemons
        ds = survivor.raw().one.datastore.allocate(
            SESSION, 'NAME="slow"\nDS_MAD="slow"\nTM_MAD="dummy"\n'
            'DATASTORE_CAPACITY_CHECK="NO"', -1)[1]
        (remotes / "datastore" / "slow" / "cp").write_text(
            "#!/bin/sh\ncat >/dev/null\nsleep 600\necho /x/$1 raw\n")
        ids = [victim.raw().one.image.allocate(SESSION, f'NAME="t{n}"\nPATH="/var/tmp/t{n}"',
                                               ds)[1] for n in range(copies)]
        time.sleep(1)
        (remotes / "datastore" / "slow" / "cp").write_text(
            "#!/bin/sh\ncat >/dev/null\nsleep 0.5\necho /x/$1 raw\n")
        t0 = time.monotonic()
        victim.kill9()
        rerun = ready = None
        proxy = survivor.raw()
        while time.monotonic() - t0 < lease + 60 and ready is None:
            if rerun is None and "Reconciling image" in survivor.log_text():
                rerun = time.monotonic() - t0
            if all("<STATE>1</STATE>" in proxy.one.image.info(SESSION, i)[1] for i in ids):
                ready = time.monotonic() - t0
            time.sleep(0.05)
        print(f"takeover after kill -9 (DAEMON_LEASE = {lease} s, renewed every "
              f"{lease / 3:.1f} s, {copies} copies): re-run after {rerun:.2f} s, all READY "
              f"after {ready:.2f} s", flush=True)
    finally:
        for d in reversed(daemons):
            d.drop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", default=os.environ.get(
        "ONED_TEST_DB", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--mode", choices=("keep", "new", "both"), default="both")
    ap.add_argument("--n", type=int, default=2000, help="info calls per client")
    ap.add_argument("--images", type=int, default=600, help="allocates per run")
    ap.add_argument("--clients", default="6", help="allocate clients, e.g. 1,8")
    ap.add_argument("--lease", type=int, default=5)
    ap.add_argument("--daemons", default="1,2,3")
    args = ap.parse_args()
    os.environ["ONED_TEST_DB"] = args.db
    modes = ("keep", "new") if args.mode == "both" else (args.mode,)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cpus",
          flush=True)
    for count in (int(x) for x in args.daemons.split(",")):
        work = Path(tempfile.mkdtemp(prefix="oned-bench-ha-"))
        daemons = start_several(work, count, LOG)
        try:
            eps = [Endpoint(d.url, SESSION, d.proc.pid) for d in daemons]
            c = Client(eps[0], "keep")
            iid = c.call("one.image.allocate", TEMPLATE.format(tag=TAG, n="info"), 1)[1]
            c.close()
            first = 0
            for mode in modes:
                for clients in (int(x) for x in args.clients.split(",")):
                    rate = allocate_rate(eps, mode, first, args.images, clients)
                    first += args.images
                    print(f"{count} daemon(s) [{mode:<4}] allocate {clients} clients: "
                          f"{rate:6.0f} /s", flush=True)
                every, calls = info_latency(eps, mode, iid, args.n)
                p50, p99 = stats(every)
                print(f"{count} daemon(s) [{mode:<4}] image.info ({count} clients): "
                      f"p50={p50 * 1e3:.3f} ms p99={p99 * 1e3:.3f} ms, {calls:.0f} calls/s",
                      flush=True)
        finally:
            for d in reversed(daemons):
                d.drop()
            shutil.rmtree(work, ignore_errors=True)
    takeover(args.db, args.lease, 10)


if __name__ == "__main__":
    main()
