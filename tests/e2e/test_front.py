"""The lean reader of plain calls (rpc/front.py) answers byte for byte as twisted.web.

Every reply of the lean path is compared, whole (status line, headers, body), with the
reply twisted.web writes for the same call on the same daemon: a request carrying a
header the lean path does not judge (a value with a non-ASCII byte) is handed over to
twisted.web's channel, so the two paths answer side by side.  Only the Date header's
second may differ.
"""

from __future__ import annotations

import re
import socket
import time
import xmlrpc.client

import pytest
from twisted import __version__ as twisted_version

from oned_images.rpc import wire
from tests.support.daemon import ADMIN_PASSWORD

SESSION = f"oneadmin:{ADMIN_PASSWORD}"
#: a header only twisted.web reads: its request goes the twisted.web way.
HANDED_OVER = b"X-Handed-Over: caf\xe9\r\n"
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def body(method: str, *params) -> bytes:
    return xmlrpc.client.dumps(params, method).encode()


def request(call: bytes, version: bytes = b"HTTP/1.1", extra: bytes = b"") -> bytes:
    return (b"POST /RPC2 " + version + b"\r\nHost: x\r\nContent-Type: text/xml\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(call) + call)


def exchange(daemon, data: bytes | list[bytes], replies: int = 1) -> tuple[bytes, bool]:
    """What the daemon sends back for ``data`` (sent at once or piece by piece), read
    until ``replies`` whole replies came or the daemon closed; and whether it closed."""
    s = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
    for piece in ([data] if isinstance(data, bytes) else data):
        s.sendall(piece)
    out, closed = b"", False
    while True:
        if _whole(out) >= replies:
            s.settimeout(0.3)
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            closed = True
            break
        out += chunk
    s.close()
    return _DATE.sub(b"\r\nDate: -\r\n", out), closed


def _whole(out: bytes) -> int:
    n, at = 0, 0
    while (end := out.find(b"\r\n\r\n", at)) >= 0:
        m = re.search(rb"Content-Length: (\d+)", out[at:end])
        if m is None or len(out) < end + 4 + int(m.group(1)):
            break
        n, at = n + 1, end + 4 + int(m.group(1))
    return n


def to_slow_reader(daemon, data: bytes, replies: int) -> bytes:
    """What the daemon sends back for ``data`` pipelined on one connection whose reader
    has a 4 KiB buffer and waits a second before reading: the daemon's writes meet a
    full socket.  Read until ``replies`` whole replies came; Date headers blanked."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", daemon.port))
    s.sendall(data)
    time.sleep(1)  # the daemon writes while nothing is read
    s.settimeout(20)
    out = b""
    while _whole(out) < replies:
        chunk = s.recv(1 << 20)
        assert chunk, "closed before the last reply"
        out += chunk
    s.close()
    return _DATE.sub(b"\r\nDate: -\r\n", out)


CALLS = [
    body("one.system.version", SESSION),
    body("one.user.info", SESSION, -1),
    body("one.image.info", SESSION, 424242),
    body("one.system.version", "oneadmin:wrong"),
    body("one.no.such.method", SESSION),
    b"<methodCall><methodName>one.system.version</methodName><params><param>",
]


@pytest.mark.parametrize("call", CALLS, ids=range(len(CALLS)))
@pytest.mark.parametrize("version,extra", [
    (b"HTTP/1.1", b""),
    (b"HTTP/1.1", b"Connection: close\r\n"),
    (b"HTTP/1.1", b"Connection: Keep-Alive, close\r\n"),
    (b"HTTP/1.1", b"Connection: keep-alive\r\n"),
    (b"HTTP/1.0", b""),
    (b"HTTP/1.0", b"Connection: keep-alive\r\n"),
], ids=["1.1", "close", "list-close", "keep-alive", "1.0", "1.0-keep-alive"])
def test_lean_reply_is_twisted_web_s_reply(daemon, call, version, extra):
    lean = exchange(daemon, request(call, version, extra))
    twisted = exchange(daemon, request(call, version, extra + HANDED_OVER))
    assert lean == twisted
    assert lean[0].startswith(version + b" 200 OK\r\n")
    assert lean[1] == (version == b"HTTP/1.0" or b"close" in extra)


def test_pipelined_calls_are_answered_in_order_on_one_connection(daemon):
    calls = [body("one.system.version", SESSION), body("one.image.info", SESSION, 424242),
             body("one.user.info", SESSION, -1)]
    lean, closed = exchange(daemon, b"".join(request(c) for c in calls), replies=3)
    one_by_one = b"".join(exchange(daemon, request(c))[0] for c in calls)
    assert (lean, closed) == (one_by_one, False)
    assert _whole(lean) == 3


def test_a_request_in_pieces_gets_the_same_reply(daemon):
    data = request(body("one.user.info", SESSION, -1))
    whole = exchange(daemon, data)
    for cut in (1, 5, 25, data.index(b"\r\n\r\n") + 2, data.index(b"\r\n\r\n") + 4, len(data) - 1):
        assert exchange(daemon, [data[:cut], data[cut:]]) == whole


def test_a_plain_call_after_a_handed_over_one_is_still_answered(daemon):
    """The connection stays twisted.web's after a hand-over, and keeps serving."""
    version = body("one.system.version", SESSION)
    both, closed = exchange(daemon, request(version, extra=HANDED_OVER) + request(version),
                            replies=2)
    single = exchange(daemon, request(version))[0]
    assert (both, closed) == (single * 2, False)


_BAD = (b"HTTP/1.1 400 Bad Request\r\n\r\n", True)


def _plain(code: bytes, text: bytes, allow: bytes = b"") -> tuple[bytes, bool]:
    return (b"HTTP/1.1 " + code + b"\r\nServer: TwistedWeb/%s\r\nDate: -\r\n" % VERSION
            + allow + b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(text)
            + text, False)


VERSION = twisted_version.encode()


@pytest.mark.parametrize("head,reply", [
    (b"POST /RPC2 HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", _BAD),
    (b"POST /RPC2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
     _plain(b"400 Bad Request", b"Invalid content-length header")),
    (b"POST /RPC2 HTTP/1.1\r\nContent-Length: x\r\n\r\n", _BAD),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n",
     _plain(b"411 Length Required", b"Content-length header required")),
    (b"POST /RPC2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     _plain(b"411 Length Required", b"Content-length header required")),
    (b"POST /RPC2 HTTP/1.1\r\n Folded: x\r\nContent-Length: 5\r\n\r\nhello", _BAD),
    (b"GET /RPC2 HTTP/1.1\r\n\r\n",
     _plain(b"405 Method Not Allowed", b"POST is the only HTTP method this server understands",
            b"Allow: POST\r\n")),
], ids=["two-lengths", "length-0", "length-x", "no-length", "chunked", "folded", "get"])
def test_what_the_lean_path_does_not_read_is_twisted_web_s(daemon, head, reply):
    """Odd requests get twisted.web's own answer (as before the lean path existed)."""
    assert exchange(daemon, head) == reply


def test_replies_the_socket_cannot_take_at_once_arrive_whole_and_in_order(daemon):
    """Replies under SPLIT_WRITE to pipelined calls of a reader that waits: once the
    socket's buffer is full a send() takes part of a reply, the rest and the next
    replies go through the transport's buffer, in order, whole."""
    words = " ".join(f"w{i}" for i in range(400))
    one = xmlrpc.client.ServerProxy(daemon.url)
    for n in range(250):
        assert one.one.image.allocate(SESSION, f'NAME="front-{n}"\nSOURCE="/var/tmp/f{n}"\n'
                                      f'FORMAT="raw"\nSIZE="1"\nDESCRIPTION="{words}"', 1)[0]
    listing = request(body("one.imagepool.info", SESSION, -2, -1, -1))
    version = request(body("one.system.version", SESSION))
    normal, _ = exchange(daemon, listing)
    assert 500_000 < len(normal) < 1 << 20 and normal.count(b"front-") == 250
    assert to_slow_reader(daemon, listing * 6 + version, 7) == (
        normal * 6 + exchange(daemon, version)[0])


def test_large_replies_are_written_whole_in_order_and_as_twisted_web_s(fresh_daemon):
    """Replies from 64 KiB on are written in their parts with sendmsg (front._PartsWriter):
    byte for byte twisted.web's reply, whole and in order when pipelined behind and
    before other replies to a reader that waits (the socket full, the rest through the
    transport), with Connection: close honoured; a reader that goes away in the middle
    of one leaves the daemon serving."""
    d = fresh_daemon()
    words = " ".join(f"w{i}" for i in range(900))
    one = xmlrpc.client.ServerProxy(d.url)
    for n in range(250):
        assert one.one.image.allocate(SESSION, f'NAME="big-{n}"\nSOURCE="/var/tmp/b{n}"\n'
                                      f'FORMAT="raw"\nSIZE="1"\nDESCRIPTION="{words}"', 1)[0]
    listing = request(body("one.imagepool.info", SESSION, -2, -1, -1))
    version = request(body("one.system.version", SESSION))
    normal, closed = exchange(d, listing)
    assert len(normal) > 1 << 20 and normal.count(b"big-") == 250 and not closed
    assert exchange(d, request(body("one.imagepool.info", SESSION, -2, -1, -1),
                               extra=HANDED_OVER)) == (normal, False)
    reply = normal[normal.index(b"\r\n\r\n") + 4:]
    assert xmlrpc.client.loads(reply)[0][0][1].count("<IMAGE>") == 250
    short = exchange(d, version)[0]
    assert to_slow_reader(d, version + listing * 2 + version + listing, 5) == (
        short + normal * 2 + short + normal)
    closing = exchange(d, request(body("one.imagepool.info", SESSION, -2, -1, -1),
                                  extra=b"Connection: close\r\n"))
    assert closing == (normal.replace(b" 200 OK\r\n", b" 200 OK\r\nConnection: close\r\n", 1),
                       True)
    for _ in range(3):  # gone after the first bytes of a listing
        s = socket.create_connection(("127.0.0.1", d.port))
        s.sendall(listing)
        assert s.recv(1000)
        s.close()
    assert exchange(d, listing) == (normal, False)
    # a page from JOIN_LIMIT (64 KiB) to 1 MiB: in parts too, mostly in one sendmsg
    page = request(body("one.imagepool.info", SESSION, -2, 3, -40))
    paged, closed = exchange(d, page)
    assert wire.JOIN_LIMIT < len(paged) < 1 << 20 and not closed
    assert paged.count(b"big-") == 40 and b"big-246&lt;" in paged and b"big-247&lt;" not in paged
    assert exchange(d, request(body("one.imagepool.info", SESSION, -2, 3, -40),
                               extra=HANDED_OVER)) == (paged, False)
    assert to_slow_reader(d, page + version + page * 3 + listing + page, 7) == (
        paged + short + paged * 3 + normal + paged)
    assert exchange(d, request(body("one.imagepool.info", SESSION, -2, 3, -40),
                               extra=b"Connection: close\r\n")) == (
        paged.replace(b" 200 OK\r\n", b" 200 OK\r\nConnection: close\r\n", 1), True)
    assert "Traceback" not in d.log_text()
