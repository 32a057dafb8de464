"""The Images page at / on the XML-RPC port (WEB_PAGE), from its built files.

The page is built from web/ with vite (README "The Images page") into web/dist, which
is committed and shipped in the wheel as package data, so serving it needs no node.
Its files are read once when the daemon starts and kept in memory with their gzip
form and ETag (a few hundred kB): a request never touches the disk.

Only the built files are served: ``/`` (index.html) and ``/assets/<name>``; anything
else goes on to /RPC2's resource as before.  Every answer carries a
Content-Security-Policy that allows this origin's scripts, styles and connections
only, no inline code, no framing.  index.html is revalidated on every load; the assets
have content-hashed names, so they are cached for a year.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger
from twisted.web import http, resource, server

log = Logger(namespace="ReM")

INDEX = "index.html"
ASSETS = "assets"
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".woff2": b"font/woff2",
    ".json": b"application/json",
}
#: what the page may load and reach: its own origin only (/RPC2, /uploads/, /api/progress)
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       b"font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
       b"frame-ancestors 'none'")
SECURITY_HEADERS = {
    b"Content-Security-Policy": CSP,
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cross-Origin-Opener-Policy": b"same-origin",
}
REVALIDATE = b"no-cache"
IMMUTABLE = b"public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: bytes
    etag: bytes
    cache: bytes


def load(root: Path) -> dict[bytes, Asset]:
    """The servable files under ``root`` (the built page) by URL path; {} when not built."""
    files: dict[bytes, Asset] = {}
    index = root / INDEX
    if not index.is_file():
        return files
    candidates = [(b"/", index, REVALIDATE)]
    assets = root / ASSETS
    if assets.is_dir():
        candidates += [(f"/{ASSETS}/{p.name}".encode(), p, IMMUTABLE)
                       for p in sorted(assets.iterdir())
                       if p.is_file() and p.suffix in CONTENT_TYPES]
    for url, path, cache in candidates:
        body = path.read_bytes()
        ctype = CONTENT_TYPES[path.suffix]
        squeezed = gzip.compress(body, 9, mtime=0) if ctype.startswith(b"text/") else None
        files[url] = Asset(body, squeezed if squeezed and len(squeezed) < len(body) else None,
                           ctype, b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"',
                           cache)
    return files


class WebResource(resource.Resource):
    """GET/HEAD of the page's files (the site routes only their paths here)."""

    isLeaf = True

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.files = load(root)
        if not self.files:
            log.warn("The Images page is not built ({root} has no {index}): / answers 404; "
                     "build it with `npm ci && npm run build` in web/",
                     root=str(root), index=INDEX)

    def serves(self, path: bytes) -> bool:
        return path == b"/" or path in self.files

    def render(self, request: server.Request) -> bytes:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        asset = self.files.get(request.path)
        if asset is None:
            request.setResponseCode(http.NOT_FOUND)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"The Images page is not built (see README, The Images page)"
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"GET is the only HTTP method the page understands"
        request.setHeader(b"Content-Type", asset.content_type)
        request.setHeader(b"Cache-Control", asset.cache)
        request.setHeader(b"Vary", b"Accept-Encoding")
        if request.setETag(asset.etag) == http.CACHED:
            return b""
        body = asset.body
        accepted = (request.getHeader(b"accept-encoding") or b"").lower()
        if asset.gzipped is not None and b"gzip" in accepted:
            body = asset.gzipped
            request.setHeader(b"Content-Encoding", b"gzip")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return b"" if request.method == b"HEAD" else body
