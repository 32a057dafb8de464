"""Slow and greedy clients (issue 7): request deadlines and connections per peer.

Every loopback address is the local host, so a client bound to 127.0.0.2 is
another peer to the daemon (which listens on 127.0.0.1)."""

from __future__ import annotations

import http.client
import socket
import time
import xmlrpc.client

import pytest

LIMITS = ("HTTP_LIMITS = [ HEADER_TIMEOUT = 2, BODY_TIMEOUT = 2, BODY_MIN_RATE = 1000, "
          "MAX_CONN_PER_PEER = 4, MAX_CONN = 6 ]\n")


@pytest.fixture
def guarded(fresh_daemon):
    return fresh_daemon(LIMITS)


def connect(d, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10,
                                 source_address=(source, 0))
    return s


def closed_within(s: socket.socket, seconds: float) -> bool:
    """True if the daemon closes the socket (EOF or reset) within ``seconds``."""
    s.settimeout(seconds)
    try:
        while s.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def version(d, source: str = "127.0.0.1") -> str:
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10,
                                      source_address=(source, 0))
    body = xmlrpc.client.dumps((d.session(),), "one.system.version").encode()
    conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
    reply = xmlrpc.client.loads(conn.getresponse().read())[0][0]
    conn.close()
    return reply[1]


def trickle(s: socket.socket, data: bytes, until: float) -> float:
    """Send one byte every 0.25 s until the daemon hangs up; return when it did."""
    started = time.monotonic()
    for byte in data:
        try:
            s.send(bytes([byte]))
        except OSError:
            return time.monotonic() - started
        if time.monotonic() - started > until:
            break
        time.sleep(0.25)
    return time.monotonic() - started if closed_within(s, 0.5) else float("inf")


REQUEST_HEAD = (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                b"X-Padding: " + b"p" * 200 + b"\r\nContent-Length: 1000\r\n\r\n")


def test_headers_trickled_slowly_are_cut_off(guarded):
    s = connect(guarded)
    took = trickle(s, REQUEST_HEAD, until=12)
    s.close()
    assert 1.5 < took < 4.5
    assert "request line and headers not received within 2 s" in guarded.log_text()
    assert version(guarded) == "7.0.2"


@pytest.mark.parametrize("length", [1000, 10**9])
def test_a_body_trickled_slowly_is_cut_off(guarded, length):
    s = connect(guarded)
    s.sendall(REQUEST_HEAD.replace(b"Content-Length: 1000", b"Content-Length: %d" % length))
    took = trickle(s, b"<" * 1000, until=12)  # 4 B/s: the 2 s of grace and no more
    s.close()
    assert 1.5 < took < 4.5
    assert "request body slower than 1000 bytes/s after 2 s" in guarded.log_text()


def test_a_long_body_at_a_fair_rate_is_served(guarded):
    """6 KB in 3.5 s: longer than the 2 s grace, but at more than 1000 B/s on average."""
    call = xmlrpc.client.dumps((guarded.session(), "x" * 6000), "one.system.version").encode()
    s = connect(guarded)
    s.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(call))
    for i in range(0, len(call), 1800):
        s.sendall(call[i:i + 1800])
        time.sleep(1)
    assert b"<string>7.0.2</string>" in read_reply(s)
    s.close()


def read_reply(s: socket.socket) -> bytes:
    s.settimeout(10)
    reply = b""
    while b"</methodResponse>" not in reply:
        chunk = s.recv(65536)
        assert chunk, reply
        reply += chunk
    return reply


def test_a_slow_but_steady_client_within_the_bounds_is_served(guarded):
    body = xmlrpc.client.dumps((guarded.session(),), "one.system.version").encode()
    s = connect(guarded)
    s.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body))
    time.sleep(1.2)
    s.sendall(b"\r\n" + body[:50])
    time.sleep(1.2)  # 2.4 s in all: more than either bound alone, within each
    s.sendall(body[50:])
    assert b"<string>7.0.2</string>" in read_reply(s)
    s.close()


def test_connections_per_peer_and_in_total_are_bounded(guarded):
    held = [connect(guarded) for _ in range(4)]
    time.sleep(0.3)
    extra = connect(guarded)
    assert closed_within(extra, 3)  # the fifth from 127.0.0.1: closed at once
    assert version(guarded, "127.0.0.2") == "7.0.2"  # another peer is served
    others = [connect(guarded, "127.0.0.2") for _ in range(2)]
    time.sleep(0.3)
    third = connect(guarded, "127.0.0.3")
    assert closed_within(third, 3)  # 6 in total
    for s in held + others:
        s.close()
    time.sleep(0.5)
    assert version(guarded) == "7.0.2"  # once the idle ones are gone, service resumes
    assert "Refused 1 connection(s) over the limits (last from 127.0.0.1: 4 held by it, " \
           "4 in total)" in guarded.log_text()
