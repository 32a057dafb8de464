"""Local HTTP servers for driver tests: one on 127.0.0.1 and one on 127.0.0.2.

Paths: ``/<file>`` (Range-aware), ``/redirect/<host:port/path>`` (302 there),
``/hang`` (accepts, never answers), ``/slow/<file>`` (64 KiB every 50 ms),
``/stall-after-probe/<file>`` (ranged GETs answered, a full GET stops after 1000
bytes).  A request with an absolute URI (as sent to a forward proxy) is served as
its path.  Only loopback addresses are ever used.
"""

from __future__ import annotations

import http.server
import re
import threading
import time
from pathlib import Path


class LocalServers:
    """A file server on 127.0.0.1 and a second one on 127.0.0.2 with redirects,
    stalls and a Range-aware GET."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "www"
        self.dir.mkdir()
        self.requests: list[tuple[str, str, str | None]] = []
        #: "host:port/path": a full (not ranged) GET of a file is redirected there
        self.redirect_full_get: str | None = None
        self.servers = []
        self.a = self._start("127.0.0.1")
        self.b = self._start("127.0.0.2")

    def _start(self, host: str) -> str:
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((host, self.path, rng))
                if self.path.startswith("http://"):   # as a forward proxy: serve it too
                    self.path = "/" + self.path.split("/", 3)[3]
                if self.path.startswith("/redirect/"):
                    self.send_response(302)
                    target = self.path[len("/redirect/"):]
                    if "://" not in target:
                        target = "http://" + target
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.startswith("/slow/"):
                    data = (outer.dir / self.path[len("/slow/"):]).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    try:
                        for pos in range(0, len(data), 65536):
                            self.wfile.write(data[pos:pos + 65536])
                            self.wfile.flush()
                            time.sleep(0.05)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if self.path.startswith("/hang"):
                    time.sleep(30)
                    return
                name = self.path.lstrip("/")
                if rng is None and outer.redirect_full_get and "/" not in name:
                    self.send_response(302)
                    self.send_header("Location", "http://" + outer.redirect_full_get)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.startswith("/stall-after-probe/"):
                    name = self.path[len("/stall-after-probe/"):]
                    if rng is None:
                        data = (outer.dir / name).read_bytes()
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data[:1000])
                        self.wfile.flush()
                        time.sleep(30)
                        return
                target = outer.dir / name
                if not target.is_file():
                    self.send_error(404)
                    return
                data = target.read_bytes()
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                if m:
                    start, end = int(m[1]), min(int(m[2] or len(data) - 1), len(data) - 1)
                    chunk = data[start:end + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    chunk = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        srv = http.server.ThreadingHTTPServer((host, 0), H)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.servers.append(srv)
        return f"{host}:{srv.server_address[1]}"

    def close(self):
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
