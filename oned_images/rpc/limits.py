"""How long a request may take to arrive and how many connections a peer may hold.

twisted.web's own timeout is an idle timeout: every byte resets it, so a client
that trickles one header byte a second keeps its connection, and enough of them
starve everyone else.  This wraps the site's connections (twisted.protocols.policies'
WrappingFactory and ProtocolWrapper, with TimeoutMixin as the clock):

* the request line and headers must arrive within ``header_timeout`` seconds of
  the request's first byte, its body within ``body_timeout`` + received /
  ``body_min_rate`` seconds (a minimum average rate after a grace time); past
  that the connection is aborted;
* a peer address may hold ``max_per_peer`` connections and all peers together
  ``max_total``; a connection over either bound is closed as soon as it is accepted.

The request (resource.RpcRequest) tells its connection when its headers and body
are complete, because only the HTTP parser knows.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from twisted.logger import Logger
from twisted.protocols import policies

from oned_images.model.settings import Limits

log = Logger(namespace="ReM")


class DeadlineProtocol(policies.ProtocolWrapper, policies.TimeoutMixin):
    """One connection: a deadline per request, armed by its first byte.

    TimeoutMixin is used as a one-shot timer (never reset by data): the wrapped
    HTTP channel keeps its own idle timeout between requests.  The body's deadline
    moves on with every byte received (``body_min_rate`` bytes buy a second), so
    a large body at a fair rate passes and a trickle does not, whatever length it
    claims.
    """

    factory: ConnectionLimits
    peer_host = ""
    #: a request's body is complete and it is being answered: no deadline.
    answering = False
    #: while a body is read: when it started and how many bytes came since.
    body_started: float | None = None
    body_bytes = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if self.timeOut is None and not self.answering:
            self.setTimeout(self.factory.limits.header_timeout)
        if self.body_started is not None:
            self.body_bytes += len(data)
        super().dataReceived(data)

    def headers_received(self) -> None:
        self.body_started = time.monotonic()
        self.body_bytes = 0
        self.setTimeout(self.factory.limits.body_timeout)

    def body_received(self) -> None:
        self.setTimeout(None)
        self.body_started = None
        self.answering = True

    def response_sent(self) -> None:
        self.answering = False

    def timeoutConnection(self) -> None:  # noqa: N802 (Twisted API)
        limits = self.factory.limits
        if self.body_started is None:
            what = f"request line and headers not received within {limits.header_timeout:g} s"
        else:
            deadline = (self.body_started + limits.body_timeout
                        + self.body_bytes / limits.body_min_rate)
            left = deadline - time.monotonic()
            if left > 0:
                self.setTimeout(left)
                return
            what = (f"request body slower than {limits.body_min_rate} bytes/s "
                    f"after {limits.body_timeout:g} s")
        log.info("Closed connection from {peer}: {what}", peer=self.peer_host, what=what)
        self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 (Twisted API)
        self.setTimeout(None)
        super().connectionLost(reason)


class ConnectionLimits(policies.WrappingFactory):
    """Counts connections per peer address and in total; refuses beyond the limits."""

    protocol = DeadlineProtocol

    def __init__(self, wrapped: Any, limits: Limits) -> None:
        super().__init__(wrapped)
        self.limits = limits
        self.per_peer: Counter[str] = Counter()
        self._refused = 0
        self._refused_logged_at = 0.0

    def buildProtocol(self, addr: Any) -> DeadlineProtocol | None:  # noqa: N802
        host = getattr(addr, "host", "")
        if (self.per_peer[host] >= self.limits.max_per_peer
                or sum(self.per_peer.values()) >= self.limits.max_total):
            self._note_refused(host)
            return None
        proto = super().buildProtocol(addr)
        proto.peer_host = host
        self.per_peer[host] += 1
        return proto

    def unregisterProtocol(self, p: DeadlineProtocol) -> None:  # noqa: N802
        super().unregisterProtocol(p)
        self.per_peer[p.peer_host] -= 1
        if self.per_peer[p.peer_host] <= 0:
            del self.per_peer[p.peer_host]

    def _note_refused(self, host: str) -> None:
        """One short log line per 10 s at most: a flood must not flood the log."""
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= 10:
            log.warn("Refused {n} connection(s) over the limits (last from {peer}: "
                     "{held} held by it, {total} in total)", n=self._refused, peer=host,
                     held=self.per_peer[host], total=sum(self.per_peer.values()))
            self._refused = 0
            self._refused_logged_at = now
