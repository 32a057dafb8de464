"""The floor of a call on this machine, beside the daemon, in alternating rounds.

Usage: python -m bench.floor [--n CALLS] [--rounds R]

Issue 13 measured two floors: a bare Twisted Protocol that answers a canned
one.system.version reply, and twisted.web's Site with a trivial resource.  This
machine's speed changes (other tenants, clock), so a figure of the daemon means little
without the floor measured at the same time: each round times both floors and the
daemon's one.system.version and one.image.info, keep-alive and new connection per call,
with the same raw-socket client as bench.figures; medians over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from bench.client import Client, Endpoint

#: a one-file server, run as its own process as the daemon is: ``protocol`` or ``web``
SERVER = r'''
import sys
from twisted.internet import protocol, reactor
from twisted.web import resource, server

BODY = (b"<?xml version='1.0'?><methodResponse><params><param><value><array><data>"
        b"<value><boolean>1</boolean></value><value><string>7.0.2</string></value>"
        b"<value><i4>0</i4></value></data></array></value></param></params>"
        b"</methodResponse>")
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(BODY)


class Canned(protocol.Protocol):
    """Answers every complete request with the same reply (no parsing beyond framing)."""
    buf = b""

    def dataReceived(self, data):
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            size = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + size:
                return
            self.buf = self.buf[end + 4 + size:]
            self.transport.write(HEAD + BODY)


class Trivial(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        request.content.read()
        request.setHeader(b"content-type", b"text/xml")
        return BODY


factory = (protocol.Factory.forProtocol(Canned) if sys.argv[1] == "protocol"
           else server.Site(Trivial()))
port = reactor.listenTCP(0, factory, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
'''


def start_floor(kind: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, kind], stdout=subprocess.PIPE,
                            text=True)
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}/RPC2"


def timed(ep: Endpoint, mode: str, method: str, params: tuple, n: int) -> float:
    """Median seconds of ``n`` calls after a warm-up."""
    c = Client(ep, mode)
    req = c.request(method, *params)
    for _ in range(min(200, n)):
        c.send(req)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.send(req)
        times.append(time.perf_counter() - t0)
    c.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from bench.common import SESSION, start_daemon

    floors = {kind: start_floor(kind) for kind in ("protocol", "web")}
    daemon = start_daemon()
    try:
        ep = Endpoint(daemon.url, SESSION, daemon.proc.pid)
        c = Client(ep, "keep")
        iid = c.call("one.image.allocate", 'NAME="floor"\nSOURCE="/x"\nSIZE="1"', 1)[1]
        c.close()
        targets = {
            "bare Twisted Protocol, canned version": (
                Endpoint(floors["protocol"][1], "x"), "one.system.version", ()),
            "twisted.web Site, trivial resource": (
                Endpoint(floors["web"][1], "x"), "one.system.version", ()),
            "daemon one.system.version": (ep, "one.system.version", ()),
            "daemon one.image.info": (ep, "one.image.info", (iid,)),
        }
        got: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for mode in ("keep", "new"):
                for name, (target, method, params) in targets.items():
                    got.setdefault((name, mode), []).append(
                        timed(target, mode, method, params, args.n))
        for mode in ("keep", "new"):
            for name in targets:
                runs = got[(name, mode)]
                print(f"{name:<40} [{mode:<4}] p50 of {args.rounds} rounds "
                      f"{statistics.median(runs) * 1e3:7.3f} ms  "
                      f"(rounds {min(runs) * 1e3:.3f}-{max(runs) * 1e3:.3f})", flush=True)
    finally:
        daemon.drop()
        for proc, _ in floors.values():
            proc.terminate()
            proc.wait(5)


if __name__ == "__main__":
    main()
