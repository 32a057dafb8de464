"""The Images page's files as the daemon serves them at / (rpc/web.py, WEB_PAGE).

What a browser relies on: content types, the CSP, caching (revalidated index, immutable
hashed assets, ETag), gzip; and that the page shipped in the checkout (web/dist) is the
one the daemon serves. The page itself is driven by tests/e2e/test_web_page.py.
"""

from __future__ import annotations

import gzip
import re

import requests

from tests.support.daemon import REPO

DIST = REPO / "web" / "dist"


def base(daemon) -> str:
    return f"http://127.0.0.1:{daemon.port}"


def assets() -> list[str]:
    """The files index.html loads, as the build wrote them."""
    return re.findall(r'(?:src|href)="(/assets/[^"]+)"', (DIST / "index.html").read_text())


def test_index_is_the_built_page_with_its_security_headers(daemon):
    r = requests.get(base(daemon) + "/", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert r.status_code == 200
    assert r.content == (DIST / "index.html").read_bytes()
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["Content-Security-Policy"] == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "Content-Encoding" not in r.headers
    # a query string changes nothing (the page's own links never carry credentials)
    assert requests.get(base(daemon) + "/?x=1", timeout=10).content == r.content


def test_assets_are_immutable_typed_and_gzipped(daemon):
    found = assets()
    assert sorted(p.rsplit(".", 1)[1] for p in found) == ["css", "js"]
    for path in found:
        r = requests.get(base(daemon) + path, headers={"Accept-Encoding": "gzip"},
                         timeout=10, stream=True)
        raw = r.raw.read()
        assert r.status_code == 200
        assert r.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(raw) == (DIST / path.lstrip("/")).read_bytes()
        assert int(r.headers["Content-Length"]) == len(raw)
        assert r.headers["Content-Type"] == {
            "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}[
            path.rsplit(".", 1)[1]]
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert r.headers["Vary"] == "Accept-Encoding"


def test_etag_revalidation_answers_304(daemon):
    first = requests.get(base(daemon) + "/", timeout=10)
    again = requests.get(base(daemon) + "/", headers={"If-None-Match": first.headers["ETag"]},
                         timeout=10)
    assert (again.status_code, again.content) == (304, b"")
    head = requests.head(base(daemon) + "/", headers={"Accept-Encoding": "identity"},
                         timeout=10)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == len((DIST / "index.html").read_bytes())
    assert head.content == b""


def test_only_built_files_are_served(daemon):
    for path in ("/index.html", "/assets/", "/assets/../etc/passwd", "/src/main.jsx",
                 "/assets/nothing.js", "/package.json"):
        r = requests.get(base(daemon) + path, timeout=10)
        # not the page's: /RPC2's resource answers (GET is not its method)
        assert r.status_code == 405, path
        assert r.text == "POST is the only HTTP method this server understands", path
    r = requests.post(base(daemon) + "/", data=b"x", timeout=10)
    assert (r.status_code, r.headers["Allow"]) == (405, "GET, HEAD")


def test_web_page_no_leaves_slash_to_rpc(fresh_daemon):
    d = fresh_daemon('WEB_PAGE = "NO"\n')
    r = requests.get(base(d) + "/", timeout=10)
    assert r.status_code == 405
    assert r.text == "POST is the only HTTP method this server understands"
    assert "Content-Security-Policy" not in r.headers
