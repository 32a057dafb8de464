"""Latency of one.system.version, one.user.info and one.image.info over loopback.

Usage: python -m bench.latency [N] [--metrics on|off]   (a persistent HTTP connection,
like the Ruby CLI; --metrics off: no instruments, to measure what they cost)
"""

from __future__ import annotations

import argparse

from bench.common import SESSION, metrics_config, proxy, start_daemon, summary, timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=2000)
    ap.add_argument("--metrics", choices=("on", "off"), default="on")
    args = ap.parse_args()
    n = args.n
    d = start_daemon('LOG = [ SYSTEM = "std", DEBUG_LEVEL = 1 ]\n'
                     + metrics_config(args.metrics))
    try:
        p = proxy(d)
        iid = p.one.image.allocate(SESSION, 'NAME="b"\nSOURCE="/var/tmp/b"\nFORMAT="raw"\n'
                                   'SIZE="1"', 1)[1]
        for _ in range(200):
            p.one.system.version(SESSION)
        print(summary("one.system.version", timed(lambda: p.one.system.version(SESSION), n)))
        print(summary("one.user.info(-1)", timed(lambda: p.one.user.info(SESSION, -1), n)))
        print(summary("one.image.info", timed(lambda: p.one.image.info(SESSION, iid), n)))
    finally:
        d.drop()
    if args.metrics == "on":
        print(hook_cost())


def hook_cost(n: int = 100000) -> str:
    """In-process cost of what metrics add to one one.image.info: the call hook on a
    real reply payload and the DB hook of its one transaction (no network noise)."""
    import time

    from oned_images.metrics import Metrics
    from oned_images.rpc import wire

    m = Metrics()
    payload = wire.success("<IMAGE>" + "x" * 1500 + "</IMAGE>")
    t0 = time.perf_counter()
    for _ in range(n):
        m.call_done("one.image.info", payload, 0.001)
        m.db_done(0.0002)
    per = (time.perf_counter() - t0) / n
    return f"metrics hooks per one.image.info (in-process): {per * 1e6:.2f} us"


if __name__ == "__main__":
    main()
