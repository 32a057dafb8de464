"""Image pool at scale: allocate throughput, full listings, a page, daemon memory.

Usage: python -m bench.pool [--big 100000] [--metrics on|off]
  * allocate throughput (SOURCE-given images, no copy): sequential, then 8 clients,
    measured at the start and again around 10,000 images;
  * one.imagepool.info(-2,-1,-1) at 1,000 and 10,000 images, one page of 200 at
    1,000 / 10,000 (and --big N, rows inserted straight into the database);
  * daemon resident memory at 10,000 images and after 100 full listings;
  * with metrics on, at 1,000 and 10,000 images: the image count's database time, a
    scrape that counts, one.image.info while a client scrapes in a loop.
"""

from __future__ import annotations

import argparse
import threading
import time
import xmlrpc.client

from bench.common import (
    SESSION,
    metrics_config,
    proxy,
    rss_mb,
    scrape_time,
    start_daemon,
    summary,
    timed,
)

TEMPLATE = 'NAME="img-{n}"\nSOURCE="/var/tmp/src/{n}"\nFORMAT="raw"\nSIZE="1"\nDESCRIPTION="b"'


def allocate_range(d, start: int, count: int, clients: int) -> float:
    errors: list[str] = []
    shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
    firsts = [start + sum(shares[:i]) for i in range(clients)]

    def work(first: int, n_images: int) -> None:
        p = xmlrpc.client.ServerProxy(d.url)
        for n in range(first, first + n_images):
            r = p.one.image.allocate(SESSION, TEMPLATE.format(n=n), 1)
            if not r[0]:
                errors.append(r[1])

    threads = [threading.Thread(target=work, args=(f, k)) for f, k in zip(firsts, shares,
                                                                            strict=True)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    assert not errors, errors[:3]
    return count / elapsed


def scrape(d, p, n: int, metrics: str) -> None:
    """With metrics on: what the image count costs the database (all its chunks, read
    beside the daemon on SQLite), a scrape that counts, and one.image.info while a
    client scrapes as fast as it can (counts are then reused, see README Metrics)."""
    if metrics != "on":
        return
    if d.pg_db is None:
        print(summary(f"image count at {n} [DB, all chunks]", count_time(d, 5)))
    time.sleep(30)  # let the reuse window of the last count pass
    print(summary(f"GET /metrics at {n} [a scrape that counts]", scrape_time(d, 1)))
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            scrape_time(d, 1)

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        print(summary(f"one.image.info at {n} while scraping in a loop",
                      timed(lambda: p.one.image.info(SESSION, 0), 300)))
    finally:
        stop.set()
        flooder.join()
    print(summary(f"one.image.info at {n} without scrapes",
                  timed(lambda: p.one.image.info(SESSION, 0), 300)))


def count_time(d, reps: int) -> list[float]:
    import sqlite3

    from oned_images.metrics import _COUNT_SQLITE, COUNT_CHUNK

    con = sqlite3.connect(d.var / "one.db")
    top = con.execute("SELECT MAX(oid) FROM image_pool").fetchone()[0]

    def once() -> None:
        for low in range(0, top + 1, COUNT_CHUNK):
            con.execute(_COUNT_SQLITE, (low, low + COUNT_CHUNK)).fetchall()

    out = timed(once, reps)
    con.close()
    return out


def listing(d, p, n: int) -> None:
    for args, label in (((-2, -1, -1), f"imagepool.info(-2,-1,-1) at {n}"),
                        ((-2, 0, -200), f"page of 200 at {n}")):
        body = p.one.imagepool.info(SESSION, *args)[1]
        reps = 5 if args[2] == -1 and n >= 10000 else 30
        print(summary(label + " [server, to last byte]", server_time(d, args, reps * 4)),
              f"({len(body) / 1e6:.1f} MB)")
        print(summary(label + " [incl. xmlrpc.client parse]",
                      timed(lambda a=args: p.one.imagepool.info(SESSION, *a), reps)))


INSERT = ("INSERT INTO image_pool (oid, name, body, body_rpc, uid, gid, owner_u, group_u, "
          "other_u, datastore_id) VALUES (?,?,?,?,?,?,?,?,?,?)")


def server_time(d, args: tuple, reps: int) -> list[float]:
    """Request to last byte over a kept-alive connection, without parsing the reply."""
    import http.client

    body = xmlrpc.client.dumps((SESSION, *args), "one.imagepool.info").encode()
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)

    def once() -> None:
        conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
        conn.getresponse().read()

    out = timed(once, reps)
    conn.close()
    return out


def bulk_insert(d, upto: int) -> None:
    """Rows written straight into the database in the daemon's own format (bench only)."""
    import sqlite3

    from oned_images.xmldoc.image import image_from, image_xml
    from oned_images.xmldoc.served import escape

    con = sqlite3.connect(d.var / "one.db")
    body = con.execute("SELECT body FROM image_pool ORDER BY oid DESC LIMIT 1").fetchone()[0]
    tmpl = image_from(body)
    start = con.execute("SELECT MAX(oid) FROM image_pool").fetchone()[0] + 1
    rows = []
    for oid in range(start, upto):
        tmpl.id, tmpl.name = oid, f"bulk-{oid}"
        body = image_xml(tmpl)
        rows.append((oid, tmpl.name, body, escape(body).encode(), 0, 0, 1, 0, 0, 1))
        if len(rows) == 20000:
            con.executemany(INSERT, rows)
            rows = []
    con.executemany(INSERT, rows)
    con.execute("UPDATE pool_control SET last_oid = ? WHERE tablename = 'image_pool'",
                (upto - 1,))
    con.commit()
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=100000)
    ap.add_argument("--metrics", choices=("on", "off"), default="on")
    args = ap.parse_args()
    d = start_daemon('LOG = [ SYSTEM = "std", DEBUG_LEVEL = 1 ]\n'
                     + metrics_config(args.metrics))
    try:
        p = proxy(d)
        print(f"daemon RSS at start: {rss_mb(d):.1f} MB")
        print(f"allocate sequential (0-500): {allocate_range(d, 0, 500, 1):.0f}/s")
        print(f"allocate 8 clients (500-1000): {allocate_range(d, 500, 500, 8):.0f}/s")
        listing(d, p, 1000)
        scrape(d, p, 1000, args.metrics)
        print(f"allocate 8 clients (1000-9000): {allocate_range(d, 1000, 8000, 8):.0f}/s")
        print(f"allocate sequential (9000-9504): {allocate_range(d, 9000, 504, 1):.0f}/s")
        print(f"allocate 8 clients (9504-10000): {allocate_range(d, 9504, 496, 8):.0f}/s")
        n = len(p.one.imagepool.info(SESSION, -2, -1, -1)[1].split("<IMAGE>")) - 1
        assert n == 10000, n
        listing(d, p, 10000)
        scrape(d, p, 10000, args.metrics)
        print(f"daemon RSS at 10,000 images: {rss_mb(d):.1f} MB")
        for _ in range(100):
            p.one.imagepool.info(SESSION, -2, -1, -1)
        print(f"daemon RSS after 100 full listings: {rss_mb(d):.1f} MB")
        if args.big > 10000 and d.pg_db is None:
            bulk_insert(d, args.big)
            print(summary(f"page of 200 at {args.big} [server]",
                          server_time(d, (-2, 0, -200), 100)))
            print(summary(f"page of 200 at offset 50000 of {args.big} [server]",
                          server_time(d, (-2, 50000, -200), 100)))
            print(f"allocate sequential at {args.big}: "
                  f"{allocate_range(d, args.big, 300, 1):.0f}/s")
    finally:
        d.drop()


if __name__ == "__main__":
    main()
