"""Latency of one.system.version, one.user.info and one.image.info over loopback.

Usage: python bench/latency.py [N]   (a persistent HTTP connection, like the Ruby CLI)
"""

from __future__ import annotations

import sys

from bench.common import SESSION, proxy, start_daemon, summary, timed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    d = start_daemon()
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


if __name__ == "__main__":
    main()
