"""HTTP side of uploads: the tus 1.0 protocol at /uploads/ and GET /api/progress.

tus 1.0.0 core with the creation, creation-with-upload, termination, expiration
and checksum (md5, sha1, sha256) extensions, so off-the-shelf clients (tuspy,
tus-js-client, Uppy) work unchanged.  Requests authenticate with HTTP Basic
``user:password`` or ``user:token``, checked by the XML-RPC session code
(Identity.authenticate).  The decisions are domain/uploads.py's.

Bodies are streamed: twisted.web would buffer a request body in memory or a
temporary file before render() runs, so the site's request class hands the
upload requests to :func:`got_length` when their headers are in.  A PATCH is
decided there (credentials, upload, offset, content type) and its chunks go to a
staging.Writer, which writes them on a thread and pauses the connection when the
disk falls behind.  A refused request's body is read and dropped; the refusal is
answered once it is in (HTTP/1.1 gives no earlier moment that every client reads).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web import resource, server

from oned_images import errors
from oned_images.domain.uploads import Refused
from oned_images.rpc.bodies import NullBody
from oned_images.store.staging import ID, Writer

log = Logger(namespace="UpM")

UPLOADS_PATH = b"/uploads"
PROGRESS_PATH = b"/api/progress"
TUS_VERSION = b"1.0.0"
EXTENSIONS = b"creation,creation-with-upload,termination,expiration,checksum"
CHECKSUMS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}
OFFSET_TYPE = b"application/offset+octet-stream"
#: the header giving the image allocated from a finished upload
IMAGE_HEADER = b"X-One-Image-Id"
CHECKSUM_MISMATCH = 460
#: bytes one read of an upload's connection takes (Twisted reads 64 KiB)
READ_SIZE = 1 << 20


def is_upload_path(path: bytes) -> bool:
    return path == UPLOADS_PATH or path.startswith(UPLOADS_PATH + b"/")


def _header(request: Any, name: bytes) -> str | None:
    value = request.requestHeaders.getRawHeaders(name)
    return value[0].decode("latin-1").strip() if value else None


def _method(request: Any, command: bytes) -> str:
    override = _header(request, b"X-HTTP-Method-Override")
    return (override or command.decode("latin-1")).upper()


def _upload_id(path: bytes) -> str:
    rest = path[len(UPLOADS_PATH):].split(b"?", 1)[0].strip(b"/")
    text = rest.decode("latin-1")
    return text if ID.match(text) else ""


def _caller(app: Any, request: Any):
    """The authenticated caller, or Refused(401)."""
    raw = _header(request, b"Authorization") or ""
    scheme, _, value = raw.partition(" ")
    session = ""
    if scheme.lower() == "basic":
        try:
            session = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            session = ""
    peer = getattr(request.getClientAddress(), "host", "-")
    if not session:
        raise Refused(401, "HTTP Basic credentials (user:password or user:token) required")
    try:
        return app.identity.authenticate(session, peer)
    except errors.OneError:
        raise Refused(401, "User couldn't be authenticated") from None


def _check_version(request: Any) -> None:
    if _header(request, b"Tus-Resumable") != TUS_VERSION.decode():
        raise Refused(412, "Tus-Resumable 1.0.0 is the only version served")


def _checksum(request: Any):
    """(algorithm, expected digest bytes, hashlib object) of Upload-Checksum, or None."""
    raw = _header(request, b"Upload-Checksum")
    if raw is None:
        return None
    algo, _, value = raw.partition(" ")
    algo = algo.lower()
    if algo not in CHECKSUMS:
        raise Refused(400, f"Unsupported checksum algorithm {algo!r} (md5, sha1, sha256)")
    try:
        expected = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, "Upload-Checksum value is not base64") from None
    return algo, expected, CHECKSUMS[algo]()


def _number(request: Any, name: bytes) -> int:
    raw = _header(request, name)
    if raw is None:
        raise Refused(400, f"{name.decode()} header required")
    if not raw.isdigit():
        raise Refused(400, f"{name.decode()} must be a non-negative integer")
    return int(raw)


@dataclass
class BodyState:
    """What got_length decided for one request's body."""

    method: str
    app: Any = None
    refused: Refused | None = None
    caller: Any = None
    upload: Any = None
    writer: Writer | None = None
    checksum: Any = None
    #: creation-with-upload: chunks received while the creation is decided
    early: list[bytes] = field(default_factory=list)
    creating: defer.Deferred | None = None
    #: the body was settled (or is being): once only
    ended: bool = False
    #: the connection closed before the body was in
    lost: bool = False


class _Sink(NullBody):
    """request.content of an upload request: chunks to the writer (or held, or dropped)."""

    def __init__(self, state: BodyState) -> None:
        self.state = state

    def write(self, data: bytes) -> None:
        st = self.state
        if st.writer is not None:
            st.writer.write(data)
        elif st.creating is not None and st.refused is None:
            st.early.append(data)


def _transport(request: Any):
    return request.channel.transport


def _start_writer(app: Any, request: Any, st: BodyState, offset: int) -> None:
    upload = app.uploads.begin_patch(st.caller, st.upload.id, offset)
    st.upload = upload
    transport = _transport(request)
    # an upload's body is read in bigger pieces than Twisted's 64 KiB: 16 times fewer
    # reads, chunks and callbacks on the reactor's thread (memory stays bounded by the
    # writer's HIGH mark, which pauses the connection)
    if getattr(transport, "bufferSize", READ_SIZE) < READ_SIZE:
        transport.bufferSize = READ_SIZE
    st.writer = Writer(app.uploads.staging.data_path(upload.id), offset,
                       upload.length - offset, st.checksum[2] if st.checksum else None,
                       deferToThread, transport.pauseProducing, transport.resumeProducing)


def _stale(app: Any) -> defer.Deferred | None:
    """/RPC2's per-call cache check (store/versions.py): a Deferred that fires once what
    other daemons committed is in the caches, or None (one daemon)."""
    versions = getattr(app, "versions", None)
    return versions.fresh() if versions is not None else None


def got_length(app: Any, request: Any, length: int | None) -> None:
    """An upload request's headers are in: decide where its body goes."""
    st = BodyState(_method(request, request.channel._command), app)
    request.upload_state = st
    request.content = _Sink(st)
    path = request.channel._path  # (the channel forgets it once the headers are in)
    stale = _stale(app) if st.method in ("PATCH", "POST") else None
    if stale is not None or (st.method == "PATCH" and app.uploads.shared):
        st.creating = defer.ensureDeferred(_decide_when_fresh(app, request, st, length, path,
                                                              stale))
        return
    _decide(app, request, st, length, path)


async def _decide_when_fresh(app: Any, request: Any, st: BodyState, length: int | None,
                             path: bytes, stale: defer.Deferred | None) -> Any:
    """With other daemons live, or a PATCH with WORKERS > 1: the body waits (connection
    paused, early chunks held) until the caches are fresh and the upload is this
    worker's (_claimed), then is decided as one daemon decides it at once."""
    mine = st.creating
    transport = _transport(request) if request.channel is not None else None
    if transport is not None:
        transport.pauseProducing()
    try:
        if stale is not None:
            await stale
        if st.method == "PATCH" and app.uploads.shared:
            await _claimed(app, request, st, path)
        st.creating = None
        if st.refused is None:
            _decide(app, request, st, length, path)
        inner, st.creating = st.creating, mine
        if inner is not None:
            return await inner  # a creation with upload: _create takes the early chunks
        if st.writer is not None:
            early, st.early = st.early, []
            for chunk in early:
                st.writer.write(chunk)
            if st.lost:
                body_lost(request)
        else:
            st.early = []
        return st.upload
    finally:
        if transport is not None:
            transport.resumeProducing()


async def _claimed(app: Any, request: Any, st: BodyState, path: bytes) -> None:
    """WORKERS > 1: the PATCH's upload is made this worker's and locked for the request
    (UploadManager.claim; released by _release).  An unauthenticated request claims
    nothing (_decide refuses it as before)."""
    try:
        _check_version(request)
        caller = _caller(app, request)
    except Refused:
        return
    try:
        await app.uploads.claim(caller, _upload_id(path), lock=True)
    except Refused as refused:
        st.refused = refused


def _release(app: Any, st: BodyState) -> None:
    """The request that holds its upload's lock (WORKERS > 1) is over."""
    if st.upload is not None:
        app.uploads.unlock(st.upload.id)


def _decide(app: Any, request: Any, st: BodyState, length: int | None, path: bytes) -> None:
    try:
        if st.method in ("PATCH", "POST"):
            _check_version(request)
            st.caller = _caller(app, request)
        if st.method == "PATCH":
            if _header(request, b"Content-Type") != OFFSET_TYPE.decode():
                raise Refused(415, "Content-Type must be application/offset+octet-stream")
            offset = _number(request, b"Upload-Offset")
            st.checksum = _checksum(request)
            st.upload = app.uploads.find(st.caller, _upload_id(path))
            _start_writer(app, request, st, offset)
        elif st.method == "POST" and length:
            if _header(request, b"Content-Type") != OFFSET_TYPE.decode():
                raise Refused(415, "Content-Type must be application/offset+octet-stream")
            st.checksum = _checksum(request)
            st.creating = defer.ensureDeferred(_create(app, request, st))
    except Refused as refused:
        st.refused = refused
        if st.method == "PATCH":
            app.uploads.unlock(_upload_id(path))


async def _create(app: Any, request: Any, st: BodyState):
    """Creation (with upload): decided before a byte is stored; the body waits
    (connection paused) meanwhile."""
    paused = st.method == "POST" and request.channel is not None and bool(
        request.requestHeaders.getRawHeaders(b"Content-Length"))
    transport = _transport(request) if paused else None
    if transport is not None:
        transport.pauseProducing()
    try:
        length = _number(request, b"Upload-Length")
        st.upload = await app.uploads.create(st.caller, length,
                                             _header(request, b"Upload-Metadata") or "")
        if paused:
            _start_writer(app, request, st, 0)
            early, st.early = st.early, []
            for chunk in early:
                st.writer.write(chunk)
            if st.lost:
                body_lost(request)
    except Refused as refused:
        st.refused = refused
        st.early = []
    finally:
        if transport is not None:
            transport.resumeProducing()
    return st.upload


def body_lost(request: Any) -> None:
    """The connection closed before the body was in: keep what reached the disk."""
    st = getattr(request, "upload_state", None)
    if st is None or st.ended:
        return
    st.lost = True
    if st.writer is None:   # (a creation still deciding settles it when it has)
        return
    st.ended = True
    d = defer.ensureDeferred(_settle(st.app, st))
    d.addErrback(lambda f: log.failure("Upload {id}: settling a cut PATCH failed", f,
                                       id=st.upload.id))
    d.addBoth(lambda _: _release(st.app, st))


async def _settle(app: Any, st: BodyState) -> tuple[bool, str | None]:
    """Wait for the writer, then store the new offset; (kept, error text)."""
    writer = st.writer
    await writer.drained(defer.Deferred)
    await deferToThread(writer.close_sync, True)
    keep, why = writer.error is None, writer.error
    if keep and st.checksum is not None:
        keep = st.checksum[2].digest() == st.checksum[1]
        why = None if keep else "checksum mismatch"
        if not keep:
            st.refused = Refused(CHECKSUM_MISMATCH, "Checksum Mismatch: the "
                                 f"{st.checksum[0]} of the body is not Upload-Checksum's")
    await app.uploads.end_patch(st.upload, writer.written, keep)
    return keep, why


class _AsyncResource(resource.Resource):
    """A resource answered by ``_answer`` (a coroutine); whatever escapes it is a 500."""

    isLeaf = True

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app

    def render(self, request: server.Request) -> int:
        d = defer.ensureDeferred(self._answer(request))
        d.addErrback(UploadResource._failed, request)
        request.notifyFinish().addErrback(lambda _: None)
        return server.NOT_DONE_YET

    async def _answer(self, request: server.Request) -> None:
        raise NotImplementedError


class UploadResource(_AsyncResource):

    def _expires(self, upload: Any) -> bytes:
        return formatdate(self.app.uploads.expires(upload), usegmt=True).encode()

    async def _answer(self, request: server.Request) -> None:
        st: BodyState | None = getattr(request, "upload_state", None)
        method = st.method if st is not None else _method(request, request.method)
        request.setHeader(b"Tus-Resumable", TUS_VERSION)
        request.setHeader(b"Cache-Control", b"no-store")
        try:
            if method == "OPTIONS":
                self._options(request)
                return self._end(request, 204)
            if st is not None and st.creating is not None:
                await st.creating
            if st is not None and st.refused is not None and st.writer is None:
                raise st.refused
            _check_version(request)
            if not (st is not None and st.caller) and (stale := _stale(self.app)) is not None:
                await stale
            caller = st.caller if st is not None and st.caller else _caller(self.app, request)
            upload_id = _upload_id(request.path)
            if method == "POST":
                if request.path.rstrip(b"/") != UPLOADS_PATH:
                    raise Refused(405, "POST creates uploads at /uploads/")
                upload = st.upload if st is not None and st.upload else await \
                    self.app.uploads.create(caller, _number(request, b"Upload-Length"),
                                            _header(request, b"Upload-Metadata") or "")
                host = _header(request, b"Host")
                location = f"/uploads/{upload.id}"
                request.setHeader(b"Location", (f"http://{host}{location}" if host
                                                else location).encode())
                request.setHeader(b"Upload-Expires", self._expires(upload))
                if st is not None and st.writer is not None:
                    await self._patched(request, st, caller)
                return self._end(request, 201)
            if not upload_id:
                raise Refused(404 if request.path.rstrip(b"/") != UPLOADS_PATH else 405,
                              "No such upload")
            if method == "HEAD":
                await self.app.uploads.claim(caller, upload_id)
                upload = self.app.uploads.find(caller, upload_id)
                request.setHeader(b"Upload-Offset", str(upload.offset).encode())
                request.setHeader(b"Upload-Length", str(upload.length).encode())
                if upload.metadata:
                    request.setHeader(b"Upload-Metadata", upload.metadata.encode())
                request.setHeader(b"Upload-Expires", self._expires(upload))
                if upload.image_id >= 0:
                    request.setHeader(IMAGE_HEADER, str(upload.image_id).encode())
                return self._end(request, 200)
            if method == "PATCH":
                await self._patched(request, st, caller)
                return self._end(request, 204)
            if method == "DELETE":
                await self.app.uploads.claim(caller, upload_id, lock=True)
                try:
                    await self.app.uploads.terminate(caller, upload_id)
                finally:
                    self.app.uploads.unlock(upload_id)
                return self._end(request, 204)
            request.setHeader(b"Allow", b"OPTIONS, HEAD, POST, PATCH, DELETE")
            raise Refused(405, f"{method} is not a tus method")
        except Refused as refused:
            if refused.status == 412:
                request.setHeader(b"Tus-Version", TUS_VERSION)
            if refused.status == 401:
                request.setHeader(b"WWW-Authenticate", b'Basic realm="OpenNebula"')
            self._end(request, refused.status, refused.text)

    async def _patched(self, request: server.Request, st: BodyState, caller: Any) -> None:
        """The body of a PATCH (or creation-with-upload) is in: settle it, answer the
        new offset, allocate the image after the last byte."""
        if st.ended:   # (the connection was lost: body_lost settles it)
            raise Refused(400, "Connection lost")
        st.ended = True
        try:
            await self._settled(request, st, caller)
        finally:
            _release(self.app, st)

    async def _settled(self, request: server.Request, st: BodyState, caller: Any) -> None:
        keep, why = await _settle(self.app, st)
        upload = st.upload
        request.setHeader(b"Upload-Offset", str(upload.offset).encode())
        request.setHeader(b"Upload-Expires", self._expires(upload))
        if st.refused is not None:
            raise st.refused
        if not keep:
            raise Refused(400 if why and "Upload-Length" in why else 500,
                          f"Upload body not stored: {why}")
        if upload.offset == upload.length and upload.image_id < 0:
            image_id = await self.app.uploads.complete(caller, upload)
            request.setHeader(IMAGE_HEADER, str(image_id).encode())

    def _options(self, request: server.Request) -> None:
        request.setHeader(b"Tus-Version", TUS_VERSION)
        request.setHeader(b"Tus-Extension", EXTENSIONS)
        request.setHeader(b"Tus-Max-Size",
                          str(self.app.config.upload_max_mb * 1048576).encode())
        request.setHeader(b"Tus-Checksum-Algorithm", b",".join(k.encode() for k in CHECKSUMS))

    @staticmethod
    def _end(request: server.Request, code: int, text: str = "") -> None:
        if request.finished or request._disconnected:
            return
        request.setResponseCode(code, b"Checksum Mismatch" if code == CHECKSUM_MISMATCH
                                else None)
        body = text.encode("utf-8") + (b"\n" if text else b"")
        if body:
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        if body and request.method != b"HEAD":
            request.write(body)
        request.finish()

    @staticmethod
    def _failed(failure: Any, request: server.Request) -> None:
        log.failure("Upload request failed unexpectedly", failure)
        UploadResource._end(request, 500, "Internal error")


class ProgressResource(_AsyncResource):
    """GET /api/progress: {"<image id>": {"action", "done", "total", "rate", "eta"}} of
    the images being copied that the caller may USE (rate bytes/s, eta seconds), by
    every worker of WORKERS > 1 (driver/progress.Board)."""

    async def _answer(self, request: server.Request) -> None:
        try:
            if request.method not in (b"GET", b"HEAD"):
                raise Refused(405, "GET is the only method of /api/progress")
            if (stale := _stale(self.app)) is not None:
                await stale
            caller = _caller(self.app, request)
        except Refused as refused:
            if refused.status == 401:
                request.setHeader(b"WWW-Authenticate", b'Basic realm="OpenNebula"')
            return UploadResource._end(request, refused.status, refused.text)
        progress = self.app.drivers.progress
        records = progress.snapshot()
        if progress.board is not None:  # WORKERS > 1: the siblings' copies too
            records = {**await deferToThread(progress.board.siblings_sync), **records}
        visible = {}
        for key in sorted(records, key=int):
            try:
                await self.app.images.info(caller, int(key))
            except errors.OneError:
                continue
            visible[key] = records[key]
        body = json.dumps(visible).encode()
        if request.finished or request._disconnected:
            return
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.write(body)
        request.finish()


