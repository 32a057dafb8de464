"""A lean XML-RPC client for benchmarks: raw sockets, one call at a time, two modes.

* ``keep``: one kept-alive HTTP/1.1 connection for every call (the Ruby CLI, pyone);
* ``new``: a new TCP connection per call, closed after the reply (oned closes every
  connection, and most of its clients reconnect).

Raw sockets keep the client's own cost small and measurable: every call records the
client thread's CPU time (``cpu``), so a figure can say how much of it is the client.
The endpoint is any server given as a URL and a ``user:password`` auth file, or the
benchmark's own daemon (bench.common.start_daemon).
"""

from __future__ import annotations

import os
import socket
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse


@dataclass
class Endpoint:
    url: str
    session: str
    #: the server's pid when it runs on this machine (resident memory), else None.
    pid: int | None = None
    #: the server's CPU time over the last allocate run's wall time (bench.figures).
    busy: float | None = None

    @classmethod
    def from_args(cls, url: str, auth_file: str | None, pid: int | None = None) -> Endpoint:
        session = Path(auth_file).read_text().strip().splitlines()[0] if auth_file else ""
        return cls(url, session, pid)

    def pids(self) -> list[int]:
        """The server and its child processes: with WORKERS > 1 the workers serve (and
        the parent idles); a daemon's children are its driver scripts."""
        if self.pid is None:
            return []
        out = [self.pid]
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    def cpu_seconds(self) -> float | None:
        """The server's user + system CPU time so far (its threads and its live child
        processes together: the workers when WORKERS > 1)."""
        if self.pid is None:
            return None
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # ended meanwhile
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float | None:
        """Resident memory of the server (summed over its workers when WORKERS > 1)."""
        if self.pid is None:
            return None
        total = 0
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += sum(int(line.split()[1]) for line in text.splitlines()
                         if line.startswith("VmRSS:"))
        return total / 1024
        return None


@dataclass
class Client:
    """Calls one endpoint; ``mode`` is ``keep`` or ``new`` (see the module docstring)."""

    endpoint: Endpoint
    mode: str = "keep"
    timeout: float = 120.0
    sock: socket.socket | None = None
    #: CPU seconds the client spent in its last call (encode, syscalls, read, parse).
    cpu: float = 0.0
    _addr: tuple[str, int] = field(default=("", 0))
    _path: str = "/RPC2"
    _retried: bool = False

    def __post_init__(self) -> None:
        u = urlparse(self.endpoint.url)
        # Resolved once: a per-call getaddrinfo would be the client's cost, not the server's.
        info = socket.getaddrinfo(u.hostname or "127.0.0.1", u.port or 80, 0,
                                  socket.SOCK_STREAM)[0]
        self._family, self._addr = info[0], info[4]
        self._path = u.path or "/RPC2"
        self._host = u.netloc

    def request(self, method: str, *params) -> bytes:
        """The HTTP request of one call with the session as first parameter (built once
        per distinct call by the benchmarks, outside the timed loop)."""
        body = xmlrpc.client.dumps((self.endpoint.session, *params), method).encode()
        return (f"POST {self._path} HTTP/1.1\r\nHost: {self._host}\r\n"
                f"User-Agent: oned-images-bench\r\nContent-Type: text/xml\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def send(self, request: bytes) -> bytes:
        """One call: the reply's body, read to its last byte (not parsed)."""
        c0 = time.thread_time()
        if self.sock is None:
            self.sock = socket.socket(self._family)
            self.sock.settimeout(self.timeout)
            self.sock.connect(self._addr)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        sock.sendall(request)
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                if not buf and self.mode == "keep" and not self._retried:
                    # the server closed the idle kept-alive connection (HTTP clients
                    # reconnect and send again, as pyone's and the Ruby CLI's do)
                    sock.close()
                    self.sock = None
                    self._retried = True
                    try:
                        return self.send(request)
                    finally:
                        self._retried = False
                raise ConnectionError("connection closed before the reply's headers")
            buf += chunk
        head = buf[:end].lower()
        at = head.find(b"\ncontent-length:")
        if at < 0:
            raise ConnectionError(f"reply without content-length: {buf[:end]!r}")
        stop = head.find(b"\r", at + 1)
        length = int(head[at + 16:stop if stop > 0 else None])
        parts = [buf[end + 4:]]
        got = len(parts[0])
        while got < length:
            chunk = sock.recv(max(65536, length - got))
            if not chunk:
                raise ConnectionError("connection closed inside the reply's body")
            parts.append(chunk)
            got += len(chunk)
        if self.mode == "new" or b"\nconnection: close" in head:
            sock.close()
            self.sock = None
        self.cpu = time.thread_time() - c0
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def call(self, method: str, *params):
        """A parsed call (setup and checks, not timing): oned's [ok, value, ...] array."""
        return xmlrpc.client.loads(self.send(self.request(method, *params)))[0][0]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
