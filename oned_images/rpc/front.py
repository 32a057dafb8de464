"""A lean HTTP/1.1 reader for the plain XML-RPC call, in front of twisted.web.

A call with a new connection per call spent more time in twisted.web's machinery
(request and header objects, log contexts, per-request timers and several writes per
reply) than in answering it.  This protocol reads the one request shape every
OpenNebula client sends -- ``POST /RPC2`` with a Content-Length body -- and answers it
with one write, byte for byte what twisted.web's Site writes for it (status line,
Connection/Server/Date/Content-Type/Content-Length headers, persistence rules).
Anything else on the connection (another path or method, chunked bodies, Expect,
folded or odd headers, an over-long or refused body, HTTP/0.9...) is handed, with the
bytes read so far, to twisted.web's channel for the rest of the connection: errors,
/, /uploads/, /metrics and /api/progress keep their one implementation there.

The connection stays behind limits.DeadlineProtocol (deadlines, per-peer caps),
which this protocol tells when headers and body are complete, as RpcRequest does.
"""

from __future__ import annotations

import re
import time
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet import tcp as tcp_transport
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.web import server
from twisted.web.http import datetimeToString

from oned_images import memory
from oned_images.rpc import wire
from oned_images.rpc.limits import DeadlineProtocol

log = Logger(namespace="ReM")

_PREFIXES = (b"POST /RPC2 HTTP/1.1\r\n", b"POST /RPC2 HTTP/1.0\r\n")
_PREFIX_LEN = len(_PREFIXES[0])
#: a longer head goes to twisted.web, which applies its own size limit and error.
MAX_HEAD = 8192
MAX_HEADERS = 64
#: one header line as twisted.web accepts it without a question (token name, visible
#: ASCII value): anything else is twisted.web's to judge.
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e\t]*?)[ \t]*\Z")
#: headers that change how twisted.web reads or answers the request.
_HANDED_OFF = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"http2-settings"))
_SERVER = b"Server: " + server.version + b"\r\n"
_XML_TAIL = b"Content-Type: text/xml; charset=utf-8\r\nContent-Length: "
#: replies from this size on are written after their headers (resource.SPLIT_WRITE).
SPLIT_WRITE = 1 << 20


class _Date:
    """The Date header's line, formatted once a second rather than once a reply."""

    second = -1
    line = b""

    @classmethod
    def get(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.line = b"Date: " + datetimeToString(now) + b"\r\n"
            cls.second = now
        return cls.line


class RpcFront(protocol.ServerFactory):
    """Builds RpcFrontProtocol; ``site`` (resource.RpcSite) answers and takes over."""

    def __init__(self, site: Any) -> None:
        self.site = site
        self.resource = site.resource
        self.max_body = site.requestFactory.max_body

    def buildProtocol(self, addr: Any) -> RpcFrontProtocol:  # noqa: N802 (Twisted API)
        p = RpcFrontProtocol()
        p.factory, p.addr = self, addr
        p.callLater = self.site.reactor.callLater  # the site's clock, as its channels'
        return p

    def doStart(self) -> None:  # noqa: N802 (Twisted API)
        self.site.doStart()

    def doStop(self) -> None:  # noqa: N802 (Twisted API)
        self.site.doStop()


class RpcFrontProtocol(protocol.Protocol, TimeoutMixin):
    """One connection: plain calls answered here until something else arrives."""

    factory: RpcFront
    addr: Any = None
    #: twisted.web's channel once the connection is handed over.
    channel: Any = None
    buf = b""
    #: while a body arrives: its chunks after ``buf`` and how many bytes all hold.
    more: list | None = None
    have = 0
    need = 0
    answering = False
    paused = False
    lost = False
    peer = "-"

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self.peer = getattr(self.addr, "host", "-")
        self.setTimeout(self.factory.site.timeOut)  # twisted.web's idle timeout

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if self.channel is not None:
            self.channel.dataReceived(data)
            return
        if self.more is not None:  # a body on its way: no copy per chunk
            self.more.append(data)
            self.have += len(data)
            if self.answering:
                if self.have > self.factory.max_body + MAX_HEAD and not self.paused:
                    self.paused = True
                    self.transport.pauseProducing()  # resumed by _done
                return
            self.resetTimeout()
            if self.have < self.need:
                return
            self.buf = b"".join(self.more)
            self.more = None
        else:
            self.buf = self.buf + data if self.buf else data
            if self.answering:
                self.more, self.have, self.need = [self.buf], len(self.buf), 0
                return
            self.resetTimeout()
        self._next()

    def _next(self) -> None:
        """Read the buffered request, if whole; hand the connection over if not plain."""
        buf = self.buf
        if not buf:
            return
        head_end = buf.find(b"\r\n\r\n")
        if not buf.startswith(_PREFIXES[0]) and not buf.startswith(_PREFIXES[1]):
            if len(buf) >= _PREFIX_LEN or not (_PREFIXES[0].startswith(buf)
                                               or _PREFIXES[1].startswith(buf)):
                self._hand_over()
            return
        if head_end < 0:
            if len(buf) > MAX_HEAD:
                self._hand_over()
            return
        parsed = self._head(buf[_PREFIX_LEN:head_end + 2])
        if parsed is None:
            self._hand_over()
            return
        length, close_token = parsed
        deadline = self.transport if isinstance(self.transport, DeadlineProtocol) else None
        start = head_end + 4
        if len(buf) - start < length:
            if deadline is not None and deadline.body_started is None:
                deadline.headers_received()
            self.more, self.have, self.need = [buf], len(buf), start + length
            return
        if deadline is not None:
            if deadline.body_started is None:
                deadline.headers_received()
            deadline.body_received()
        body = buf[start:start + length]
        self.buf = buf[start + length:]
        version = buf[11:19]
        persistent = version == b"HTTP/1.1" and not close_token
        self.answering = True
        self.setTimeout(None)
        d = defer.ensureDeferred(self.factory.resource.dispatch(body, self.peer))
        d.addCallbacks(self._reply, self._last_resort,
                       callbackArgs=(version, persistent, close_token),
                       errbackArgs=(version, persistent, close_token))
        d.addErrback(self._broken)

    def _head(self, head: bytes) -> tuple[int, bool] | None:
        """Content-Length and whether Connection says close; None: twisted.web's case."""
        if head.count(b"\n") != head.count(b"\r\n"):
            return None
        lines = head.split(b"\r\n")[:-1]
        if len(lines) > MAX_HEADERS:
            return None
        length: int | None = None
        connection: bytes | None = None
        for line in lines:
            m = _HEADER.match(line)
            if m is None:
                return None
            name, value = m.group(1).lower(), m.group(2)
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"connection":
                if connection is not None:
                    return None
                connection = value
            elif name in _HANDED_OFF:
                return None
        if length is None or length == 0 or length > self.factory.max_body:
            return None
        # twisted.web's checkPersistence: the first Connection header, split on spaces.
        close = connection is not None and b"close" in [
            t.lower() for t in connection.split(b" ")]
        return length, close

    def _hand_over(self) -> None:
        """twisted.web's channel reads the rest of this connection, from the buffer on."""
        self.setTimeout(None)
        buf, self.buf = self.buf, b""
        if self.more is not None:
            buf, self.more = b"".join(self.more), None
        self.channel = self.factory.site.buildProtocol(self.addr)
        self.channel.makeConnection(self.transport)
        if buf:
            self.channel.dataReceived(buf)

    def _reply(self, payload: bytes | wire.Parts, version: bytes, persistent: bool,
               close: bool) -> None:
        if self.lost:
            return
        head = [version, b" 200 OK\r\n"]
        if close and version == b"HTTP/1.1":
            head.append(b"Connection: close\r\n")
        head += [_SERVER, _Date.get(), _XML_TAIL, b"%d\r\n\r\n" % len(payload)]
        if isinstance(payload, bytes) and len(payload) < SPLIT_WRITE:
            head.append(payload)
            self._write(b"".join(head))
            self._done(persistent)
            return
        # A large reply is not joined with its headers (nor its parts together): they
        # are handed to sendmsg as they are (_PartsWriter).
        parts = payload.take() if isinstance(payload, wire.Parts) else [payload]
        _PartsWriter(self, [b"".join(head), *parts], persistent,
                     trim=len(payload) >= SPLIT_WRITE).start()

    def _socket(self) -> Any:
        """The connection's socket when bytes may be sent on it directly now: a TCP
        transport behind our own DeadlineProtocol (never past a TLS one, which needs
        the bytes), holding nothing that was written before; else None."""
        tcp = self.transport
        if isinstance(tcp, DeadlineProtocol):
            tcp = tcp.transport
        sock = getattr(tcp, "socket", None)
        if (sock is None or not isinstance(tcp, tcp_transport.Connection) or tcp.dataBuffer
                or tcp._tempDataBuffer or tcp.disconnecting or tcp.disconnected):
            return None
        return sock

    def _write(self, data: bytes) -> None:
        """Send now what the socket takes, the rest through the transport's buffer.

        A TCP transport only writes on the reactor's next turn, after asking epoll
        whether the socket is writable (two more epoll_ctl, one more epoll_wait and a
        reactor turn per reply, about a tenth of a short call's time).  A reply to a
        call is whole here, and the socket's buffer is empty when the transport's is:
        one send() usually takes it all."""
        sock = self._socket()
        if sock is None:
            self.transport.write(data)
            return
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error the transport's own write reports
        if sent < len(data):
            self.transport.write(data[sent:] if sent else data)

    def _done(self, persistent: bool) -> None:
        if isinstance(self.transport, DeadlineProtocol):
            self.transport.response_sent()
        self.answering = False
        if not persistent:
            self.buf, self.more = b"", None
            self.transport.loseConnection()
            return
        self.setTimeout(self.factory.site.timeOut)
        if self.more is not None:  # what arrived while answering
            self.buf = b"".join(self.more)  # its first chunk is what buf held
            self.more = None
            if self.paused:
                self.paused = False
                self.transport.resumeProducing()
        if self.buf:
            self._next()

    def _last_resort(self, failure: Any, version: bytes, persistent: bool,
                     close: bool) -> None:
        """Whatever escaped dispatch or the write still gets a reply (resource._last_resort)."""
        log.failure("Request from {ip} failed unexpectedly", failure, ip=self.peer)
        if not self.lost:
            self._reply(wire.fault(-500, "Internal error"), version, persistent, close)

    def _broken(self, failure: Any) -> None:
        """A reply that failed half-written must not hold the connection."""
        log.failure("Reply to {ip} failed unexpectedly", failure, ip=self.peer)
        self.transport.abortConnection()

    def timeoutConnection(self) -> None:  # noqa: N802 (Twisted API)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 (Twisted API)
        self.lost = True
        self.setTimeout(None)
        if self.channel is not None:
            self.channel.connectionLost(reason)


class _PartsWriter:
    """Writes a large reply's parts with sendmsg, no part copied (a pull producer).

    Twisted's transport takes bytes only and joins whatever it holds before sending
    it, SEND_LIMIT (128 KiB) per reactor turn: an 18 MB listing was joined once more
    and sent in about 140 turns.  Here the parts go to sendmsg, IOV_MAX at a time,
    for as long as the socket takes them; when it is full, the next piece (at most
    PIECE bytes, copied) goes to the transport, which sends it once the socket is
    writable and then asks for more (resumeProducing).  Where the socket may not be
    written directly (_socket), every piece goes through the transport."""

    #: sendmsg's limit on buffers per call (Linux UIO_MAXIOV).
    IOV_MAX = 1024
    PIECE = 1 << 16

    def __init__(self, proto: RpcFrontProtocol, parts: list[bytes], persistent: bool,
                 trim: bool) -> None:
        self.proto = proto
        self.parts = parts
        self.persistent = persistent
        #: give freed memory back once sent (memory.release_freed_memory): a reply of
        #: SPLIT_WRITE or more (a listing's bodies, made in the DB thread's arena)
        self.trim = trim
        self.index = 0    # the first part not wholly sent
        self.offset = 0   # bytes of it already sent

    def start(self) -> None:
        """Most replies fit the socket's buffer: sent here at once, they need no
        producer, and the connection's next call (or its close) is not a turn away."""
        if self._send():
            self._finish()
        else:
            self.proto.transport.registerProducer(self, False)  # calls resumeProducing

    def _send(self) -> bool:
        """As much of the reply as the socket takes now; True when it took the rest."""
        parts = self.parts
        sock = self.proto._socket()
        while sock is not None and self.index < len(parts):
            batch = parts[self.index:self.index + self.IOV_MAX]
            if self.offset:
                batch[0] = memoryview(batch[0])[self.offset:]
            try:
                sent = sock.sendmsg(batch)
            except OSError:
                break  # EAGAIN: full; another error: the transport's write reports it
            self._advance(sent)
            if sent < sum(map(len, batch)):
                break
        return self.index >= len(parts)

    def _finish(self) -> None:
        self.parts = []
        if self.trim:  # on the next turn, once the callbacks that made the reply let go
            self.proto.callLater(0, memory.release_freed_memory)
        if not self.proto.lost:
            self.proto._done(self.persistent)

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted API)
        """The transport holds nothing more to send: more of the reply."""
        proto, parts = self.proto, self.parts
        if not self._send():
            part = parts[self.index]
            piece = part[self.offset:self.offset + self.PIECE]
            self._advance(len(piece))
            proto.transport.write(piece)
            return
        proto.transport.unregisterProducer()
        self._finish()

    def _advance(self, sent: int) -> None:
        """``sent`` more bytes are gone (empty parts on the way are passed too)."""
        parts = self.parts
        while self.index < len(parts):
            left = len(parts[self.index]) - self.offset
            if sent < left:
                self.offset += sent
                return
            sent -= left
            self.index += 1
            self.offset = 0

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted API)
        pass  # a pull producer is only asked when the transport is empty

    def stopProducing(self) -> None:  # noqa: N802 (Twisted API)
        """The connection is gone: drop the reply."""
        self.parts = []
        self.index = self.offset = 0
        if self.trim:
            self.proto.callLater(0, memory.release_freed_memory)
