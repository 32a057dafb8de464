"""The /RPC2 HTTP endpoint: oned's HTTP rules, dispatch through the method table.

Request order follows oned (api.md §1.6): parse, find the method, read the
session, authenticate, then let the handler read its parameters.  Domain
errors become oned's failure array here and nowhere else; only what xmlrpc-c
itself rejects becomes a Fault.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web import http, resource, server

from oned_images import errors, logs
from oned_images.logs import MASK, redact
from oned_images.metrics import UNKNOWN_METHOD
from oned_images.rpc import uploads, wire
from oned_images.rpc.bodies import NullBody
from oned_images.rpc.front import RpcFront
from oned_images.rpc.limits import ConnectionLimits, DeadlineProtocol, Limits
from oned_images.rpc.metrics import METRICS_PATH
from oned_images.rpc.registry import TABLE, Method
from oned_images.rpc.web import WebResource
from oned_images.xmldoc.served import Served

log = Logger(namespace="ReM")

RPC_PATH = b"/RPC2"
#: bodies above this size are parsed on a thread, not on the reactor.
PARSE_IN_THREAD = 256 * 1024
#: replies from this size on are written after their headers (RpcResource._write).
SPLIT_WRITE = 1 << 20
_request_ids = itertools.count(1)


class RpcRequest(server.Request):
    """Caps the body at MESSAGE_SIZE before it is buffered (the site sets max_body),
    and tells its connection's deadline (limits.DeadlineProtocol) how far it got."""

    max_body = 1073741824
    too_large: int | None = None

    def _deadline(self) -> DeadlineProtocol | None:
        transport = getattr(self.channel, "transport", None)
        return transport if isinstance(transport, DeadlineProtocol) else None

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted API)
        if (deadline := self._deadline()) is not None:
            deadline.headers_received()
        site = getattr(self.channel, "site", None)
        if getattr(site, "uploads", None) is not None and uploads.is_upload_path(
                self.channel._path):
            uploads.got_length(site.uploads.app, self, length)  # streamed, not buffered
            return
        if length is not None and length > self.max_body:
            self.too_large = length
            self.content = NullBody()  # type: ignore[assignment]  # refused: dropped
            return
        super().gotLength(length)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        if (deadline := self._deadline()) is not None:
            deadline.body_received()
        super().requestReceived(command, path, version)

    def finish(self) -> None:
        if (deadline := self._deadline()) is not None:
            deadline.response_sent()
        super().finish()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 (Twisted API)
        uploads.body_lost(self)
        super().connectionLost(reason)


#: a call line shows at most this many parameters (a call may carry a million).
LOGGED_PARAMS = 20


class CallLog:
    """What the call log may show of one call: no password, token or session secret.

    The method table declares the secret parameters and results (registry.py); their
    texts, and the session's secret, are also masked wherever else they would appear
    (oned's "Could not find token: <token>").  Texts shorter than MIN_SECRET are only
    masked where declared: replacing every "pw" would mangle the log, not protect it.
    """

    MIN_SECRET = 4

    def __init__(self, method: Method, values: list, session: str) -> None:
        self.method = method
        secret = session.partition(":")[2]
        found = {secret, secret.rpartition(":")[2]}
        found.update(values[i] for i in method.secret_params
                     if i < len(values) and isinstance(values[i], str))
        self.secrets = sorted((s for s in found if len(s) >= self.MIN_SECRET), key=len,
                              reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def params(self, values: list) -> str:
        shown = []
        for i, value in enumerate(values[1:LOGGED_PARAMS + 1], start=1):
            if i in self.method.secret_params:
                shown.append(MASK)
            elif isinstance(value, str):
                value = redact(value[:4096])  # before the cut, which could hide a pattern
                shown.append(value if len(value) <= 60 else value[:57] + "...")
            else:
                shown.append((repr(value).lower() if isinstance(value, bool)
                              else str(value))[:60])
        if len(values) > LOGGED_PARAMS + 1:
            shown.append(f"... ({len(values) - 1 - LOGGED_PARAMS} more)")
        return self.mask(", ".join(shown))

    def result(self, value: Any) -> str:
        if self.method.secret_result:
            return MASK
        if isinstance(value, Served):
            return self.mask(value.preview())
        if isinstance(value, str):
            return self.mask(value if len(value) <= 40 else value[:37] + "...")
        return str(value)


class RpcResource(resource.Resource):
    isLeaf = True

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app

    def render(self, request: server.Request) -> bytes | int:
        method = request.method
        if method == b"OPTIONS":
            request.setHeader(b"Allow", b"POST")
            return b""
        if method != b"POST":
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"Allow", b"POST")
            request.setHeader(b"Content-Type", b"text/plain")
            return b"POST is the only HTTP method this server understands"
        if request.path != RPC_PATH:
            request.setResponseCode(http.NOT_FOUND)
            request.setHeader(b"Content-Type", b"text/plain")
            return b"No such resource"
        too_large = getattr(request, "too_large", None)
        if too_large is not None:
            request.setResponseCode(http.INTERNAL_SERVER_ERROR)
            request.setHeader(b"Content-Type", b"text/plain")
            return f"XML-RPC request too large ({too_large} bytes)".encode()
        length = request.getHeader(b"content-length")
        if length is None:
            request.setResponseCode(http.LENGTH_REQUIRED)
            request.setHeader(b"Content-Type", b"text/plain")
            return b"Content-length header required"
        if not length.isdigit() or int(length) == 0:
            request.setResponseCode(http.BAD_REQUEST)
            request.setHeader(b"Content-Type", b"text/plain")
            return b"Invalid content-length header"
        body = request.content.read()
        peer = getattr(request.getClientAddress(), "host", "-")
        d = defer.ensureDeferred(self.dispatch(body, peer))
        d.addCallback(self._write, request)
        d.addErrback(self._last_resort, request)
        request.notifyFinish().addErrback(lambda _: None)
        return server.NOT_DONE_YET

    @classmethod
    def _write(cls, payload: bytes | wire.Parts, request: server.Request) -> None:
        if request.finished or request._disconnected:
            return
        if isinstance(payload, wire.Parts):
            payload = payload.joined()  # twisted.web joins what it is given anyway
        request.setHeader(b"Content-Type", b"text/xml; charset=utf-8")
        request.setHeader(b"Content-Length", str(len(payload)).encode())
        if len(payload) < SPLIT_WRITE:
            request.write(payload)
            request.finish()
            return
        # The transport joins what it holds before sending: the headers and an 18 MB
        # listing would be copied once more (16% of a whole-pool listing's CPU time).
        # The headers go out on this reactor turn, the payload alone on the next one: a
        # call made due now still runs on this turn, before its writes; the call it
        # schedules runs on the next turn.
        request.write(b"")
        later = request.channel.callLater
        later(0, later, 0, cls._write_body, payload, request)

    @staticmethod
    def _write_body(payload: bytes, request: server.Request) -> None:
        if request.finished or request._disconnected:
            return
        request.write(payload)
        request.finish()

    @classmethod
    def _last_resort(cls, failure: Any, request: server.Request) -> None:
        """Whatever escaped dispatch or the write still gets a reply: never a held connection."""
        log.failure("Request from {ip} failed unexpectedly", failure,
                    ip=getattr(request.getClientAddress(), "host", "-"))
        if not request.startedWriting:
            cls._write(wire.fault(-500, "Internal error"), request)
        elif not request.finished:
            request.loseConnection()  # a reply cut short must not hold the connection

    async def dispatch(self, body: bytes, peer: str) -> bytes | wire.Parts:
        """Answer one call; counted and timed for /metrics (oned_images.metrics)."""
        started, named = time.perf_counter(), [UNKNOWN_METHOD]
        payload = await self._answer(body, peer, named)
        if self.app.metrics is not None:
            head = payload if isinstance(payload, bytes) else payload.prefix(256)
            self.app.metrics.call_done(named[-1], head, time.perf_counter() - started)
        return payload

    async def _answer(self, body: bytes, peer: str, named: list[str]) -> bytes | wire.Parts:
        """The call's reply; appends the method's name to ``named`` once it is known."""
        try:
            if len(body) > PARSE_IN_THREAD:
                name, values = await deferToThread(wire.parse_call, body)
            else:
                name, values = wire.parse_call(body)
        except errors.Fault as fault:
            # One short line (repr: no control character reaches the log); the reply
            # carries the whole text.
            log.debug("IP:{ip} malformed call, FAULT {text!r}", ip=peer, text=fault.text[:160])
            return wire.fault(fault.code, fault.text)
        if name.startswith("system."):
            return self._introspect(name, values)
        method = TABLE.get(name)
        if method is None:
            return wire.fault(-506, f"Method '{name}' not defined")
        named.append(name)
        params = wire.Params(values)
        try:
            session = params.str(0)
        except errors.Fault as fault:
            return wire.fault(fault.code, fault.text)
        req_id = next(_request_ids) % 10000
        uid = -1
        debug = logs.debug_enabled
        shown = CallLog(method, values, session)
        try:
            versions = self.app.versions
            if versions is not None and (stale := versions.fresh()) is not None:
                await stale  # what another daemon committed before this call is seen
            caller = self.app.identity.authenticate(session, peer)
            uid = caller.uid
            if debug:
                log.debug("Req:{req} UID:{uid} IP:{ip} {method} invoked , {params}",
                          req=req_id, uid=uid, ip=peer, method=name,
                          params=shown.params(values))
            value = await method.handler(self.app, caller, params)
        except errors.OneError as exc:
            message = exc.message(name, uid, method.obj)
            if debug:
                log.debug("Req:{req} UID:{uid} {method} result FAILURE {msg}", req=req_id,
                          uid=uid, method=name, msg=shown.mask(message))
            return wire.failure(message, int(exc.code), exc.resp_id)
        except errors.Fault as fault:
            if debug:
                log.debug("Req:{req} UID:{uid} {method} result FAULT {text}", req=req_id,
                          uid=uid, method=name, text=shown.mask(fault.text))
            return wire.fault(fault.code, fault.text)
        except Exception:
            log.failure("Req:{req} UID:{uid} {method} failed unexpectedly", req=req_id,
                        uid=uid, method=name)
            return wire.failure(f"[{name}] Internal error", int(errors.ErrorCode.INTERNAL), -1)
        if debug:
            log.debug("Req:{req} UID:{uid} {method} result SUCCESS, {value}", req=req_id,
                      uid=uid, method=name, value=shown.result(value))
        return wire.success(value)

    @staticmethod
    def _introspect(name: str, values: list) -> bytes:
        """xmlrpc-c's built-in introspection; no OpenNebula client uses it."""
        if name == "system.listMethods":
            return wire.response_any(sorted(TABLE))
        if name in ("system.methodSignature", "system.methodHelp"):
            target = values[0] if values and isinstance(values[0], str) else None
            method = TABLE.get(target or "")
            if method is None:
                return wire.fault(-508, f"Method '{target}' does not exist")
            if name == "system.methodHelp":
                return wire.response_any(method.help)
            sig = method.signature.split(":")
            types = {"A": "array", "s": "string", "i": "int", "b": "boolean"}
            return wire.response_any([[types[sig[0]]] + [types[c] for c in sig[1]]])
        return wire.fault(-506, f"Method '{name}' not defined")


class RpcSite(server.Site):
    """A Site whose requests are capped at ``max_body`` bytes (listen on ``guarded()``)."""

    #: the /metrics resource (rpc/metrics.py), set by the daemon.
    metrics: resource.IResource | None = None
    #: /uploads/ and /api/progress (rpc/uploads.py), set by the daemon when UPLOADS.
    uploads: uploads.UploadResource | None = None
    progress: resource.IResource | None = None
    #: the Images page at / (rpc/web.py), set by the daemon when WEB_PAGE.
    web: WebResource | None = None

    def __init__(self, app: Any, max_body: int, timeout: float = 15,
                 limits: Limits | None = None) -> None:
        super().__init__(RpcResource(app), timeout=timeout)
        cls = type("CappedRpcRequest", (RpcRequest,), {"max_body": max_body})
        self.requestFactory = cls
        self.noisy = False
        self.limits = limits or Limits()
        # No form arguments in request.args: no resource reads them, and twisted.web's
        # Content-Type parse (an email.message per POST) was 5% of the reactor's busy
        # time.  Site(parsePOSTFormSubmission=False) in Twisted >= 25; setup.cfg allows
        # 24.7, which reads no such setting (and parses, as before).
        self._parsePOSTFormSubmission = False

    def guarded(self) -> ConnectionLimits:
        """What to listen with: this site, behind the lean reader of plain calls
        (rpc/front.py), the request deadlines and the connection limits."""
        return ConnectionLimits(RpcFront(self), self.limits)

    def getResourceFor(self, request: server.Request) -> resource.IResource:  # noqa: N802
        if request.path == METRICS_PATH and self.metrics is not None:
            return self.metrics
        if self.uploads is not None and uploads.is_upload_path(request.path):
            return self.uploads
        if request.path == uploads.PROGRESS_PATH and self.progress is not None:
            return self.progress
        if self.web is not None and self.web.serves(request.path):
            return self.web
        return self.resource

    def log(self, request: server.Request) -> None:
        """No access log: the call log (ReM lines) already records every request."""
