"""GET /metrics on the XML-RPC port: Prometheus' text format, for whom METRICS allows.

METRICS = "loopback" (the default) serves peers in 127.0.0.0/8 and ::1 only, so a
daemon listening on 0.0.0.0 does not show its call mix and image counts to the
network; "on" serves everyone, "off" answers 404 as for any unknown path.  The image
counts are refreshed on the DB thread before the text is generated, and the text
is generated on a thread: with a thousand series it takes milliseconds of CPU that
the reactor must not spend in one go.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from prometheus_client.exposition import choose_encoder
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web import http, resource, server

log = Logger(namespace="ReM")

METRICS_PATH = b"/metrics"
MODES = ("on", "off", "loopback")


def refusal(mode: str, peer: str) -> int | None:
    """The HTTP status refusing ``peer`` under METRICS = ``mode``, or None to serve."""
    if mode == "on":
        return None
    if mode == "off":
        return http.NOT_FOUND
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return http.FORBIDDEN
    mapped = getattr(address, "ipv4_mapped", None)
    return None if (mapped or address).is_loopback else http.FORBIDDEN


class MetricsResource(resource.Resource):
    isLeaf = True

    def __init__(self, app: Any, mode: str) -> None:
        super().__init__()
        self.app = app
        self.mode = mode

    def render(self, request: server.Request) -> bytes | int:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        peer = getattr(request.getClientAddress(), "host", "")
        code = refusal(self.mode, peer)
        if code == http.NOT_FOUND:
            request.setResponseCode(code)
            return b"No such resource"
        if code is not None:
            request.setResponseCode(code)
            return b'/metrics is served to loopback peers only (METRICS = "loopback")'
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"Allow", b"GET, HEAD")
            return b"GET is the only HTTP method /metrics understands"
        d = defer.ensureDeferred(self._render(request))
        d.addErrback(self._failed, request)
        request.notifyFinish().addErrback(lambda _: None)
        return server.NOT_DONE_YET

    async def _render(self, request: server.Request) -> None:
        metrics = self.app.metrics
        await metrics.refresh(self.app.db)
        encoder, content_type = choose_encoder(
            (request.getHeader(b"accept") or b"").decode("latin-1"))
        metrics.snapshot()
        payload = await deferToThread(encoder, metrics.page)
        if request.finished or request._disconnected:
            return
        request.setHeader(b"Content-Type", content_type.encode())
        if metrics.name:
            request.setHeader(b"X-Daemon-Name", metrics.name.encode())
        request.setHeader(b"Content-Length", str(len(payload)).encode())
        request.write(payload)
        request.finish()

    @staticmethod
    def _failed(failure: Any, request: server.Request) -> None:
        log.failure("/metrics failed", failure)
        if request.finished or request._disconnected:
            return
        request.setResponseCode(http.INTERNAL_SERVER_ERROR)
        request.write(b"metrics unavailable")
        request.finish()
