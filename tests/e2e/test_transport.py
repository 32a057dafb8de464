"""The HTTP and XML-RPC envelope, byte for byte against oned 7.0.2's samples."""

from __future__ import annotations

import http.client
import re
import xmlrpc.client
from pathlib import Path

import pytest

from tests.support.daemon import ADMIN_PASSWORD

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"


def post(daemon, body: bytes, path: str = "/RPC2", method: str = "POST",
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    hdrs = {"Content-Type": "text/xml"}
    if headers is not None:
        hdrs = headers
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    result = resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    conn.close()
    return result


def call(method: str, *params) -> bytes:
    return xmlrpc.client.dumps(params, method).encode()


def test_version_reply_is_byte_identical_to_oned(daemon):
    status, headers, body = post(daemon, call("one.system.version",
                                              f"oneadmin:{ADMIN_PASSWORD}"))
    assert status == 200
    assert headers["content-type"] == "text/xml; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    assert body == (SAMPLES / "one.system.version.response.xml").read_bytes()


def test_bad_auth_reply_is_byte_identical_to_oned(daemon):
    _, _, body = post(daemon, call("one.image.info", "oneadmin:wrong", 0))
    assert body == (SAMPLES / "one.image.info.badauth.response.xml").read_bytes()


def test_not_found_reply_is_byte_identical_to_oned(daemon):
    _, _, body = post(daemon, call("one.image.info", f"oneadmin:{ADMIN_PASSWORD}", 999999))
    assert body == (SAMPLES / "one.image.info.notfound.response.xml").read_bytes()


def test_allocate_in_missing_datastore_is_byte_identical(daemon):
    _, _, body = post(daemon, call("one.image.allocate", f"oneadmin:{ADMIN_PASSWORD}",
                                   'NAME="x"\nPATH="/var/tmp/x"', 999))
    assert body == (SAMPLES / "one.image.allocate.nods.response.xml").read_bytes()


def test_allocate_without_size_is_byte_identical(daemon):
    _, _, body = post(daemon, call("one.image.allocate", f"oneadmin:{ADMIN_PASSWORD}",
                                   'NAME="nosize"\nSOURCE="/var/tmp/x"\nFORMAT="raw"', 1))
    assert body == (SAMPLES / "one.image.allocate.nosize.response.xml").read_bytes()


def test_options_get_and_other_paths(daemon):
    status, headers, body = post(daemon, b"", method="OPTIONS")
    assert (status, headers.get("allow"), body) == (200, "POST", b"")
    status, _, body = post(daemon, b"", method="GET")
    assert status == 405
    assert body == b"POST is the only HTTP method this server understands"
    status, _, _ = post(daemon, b"", path="/other", method="GET")
    assert status == 405
    status, _, _ = post(daemon, call("one.system.version", "a:b"), path="/other")
    assert status == 404


def test_content_length_rules(daemon):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    conn.putrequest("POST", "/RPC2")
    conn.putheader("Content-Type", "text/xml")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411
    conn.close()
    status, _, _ = post(daemon, b"", headers={"Content-Type": "text/xml",
                                             "Content-Length": "0"})
    assert status == 400


def test_body_over_message_size_is_refused_and_daemon_serves_on(fresh_daemon):
    d = fresh_daemon("MESSAGE_SIZE = 1000\n")
    status, _, body = post(d, b"<" * 5000)
    assert status == 500
    assert body == b"XML-RPC request too large (5000 bytes)"
    assert d.client().system.version() == "7.0.2"


def test_faults(daemon):
    session = f"oneadmin:{ADMIN_PASSWORD}"
    proxy = daemon.raw()
    cases = [
        (lambda: proxy.one.image.nosuchcall(session), -506,
         "Method 'one.image.nosuchcall' not defined"),
        (lambda: proxy.one.image.info(session), -501, "Not enough parameters"),
        (lambda: proxy.one.image.info(session, "zero"), -501,
         "Parameter that is supposed to be integer is not"),
        (lambda: proxy.one.image.info(7, 0), -501,
         "Parameter that is supposed to be a string is not"),
        (lambda: proxy.one.image.enable(session, 0, "yes"), -501,
         "Parameter that is supposed to be boolean is not"),
        (lambda: proxy.one.image.info(), -501, "Not enough parameters"),
    ]
    for fn, code, text in cases:
        with pytest.raises(xmlrpc.client.Fault) as exc:
            fn()
        assert (exc.value.faultCode, exc.value.faultString) == (code, text)


def test_i8_is_not_an_int(daemon):
    body = (b'<?xml version="1.0"?><methodCall><methodName>one.image.info</methodName><params>'
            b"<param><value><string>oneadmin:" + ADMIN_PASSWORD.encode()
            + b"</string></value></param><param><value><i8>1</i8></value></param>"
            b"</params></methodCall>")
    _, _, reply = post(daemon, body)
    assert b"Parameter that is supposed to be integer is not" in reply
    assert b"<fault>" in reply


def test_not_a_call(daemon):
    _, _, reply = post(daemon, b"<junk/>")
    fault = xmlrpc.client.loads(reply) if False else None
    assert fault is None
    assert b"<i4>-503</i4>" in reply
    assert (b"Call XML not a proper XML-RPC call.  XML-RPC call should be a &lt;methodCall&gt; "
            b"element.  Instead, we have a &lt;junk&gt; element.") in reply
    _, _, reply = post(daemon, b"<methodCall><params>")
    assert b"<i4>-503</i4>" in reply


def test_auth_comes_before_parameter_checks(daemon):
    proxy = daemon.raw()
    reply = proxy.one.imagepool.info("oneadmin:bad", -2, -1)
    assert reply == [False, "[one.imagepool.info] User couldn't be authenticated, aborting "
                     "call.", 256, -1, -1]
    with pytest.raises(xmlrpc.client.Fault):
        proxy.one.imagepool.info(f"oneadmin:{ADMIN_PASSWORD}", -2, -1)


def test_extra_parameters_are_ignored(daemon):
    proxy = daemon.raw()
    reply = proxy.one.imagepool.info(f"oneadmin:{ADMIN_PASSWORD}", -2, 0, -3, -1, "extra")
    assert reply[0] is True and reply[2] == 0
    assert reply[1].startswith("<IMAGE_POOL>")


def test_session_without_colon_and_unknown_user(daemon):
    proxy = daemon.raw()
    text = "[one.system.version] User couldn't be authenticated, aborting call."
    for session in ("oneadmin", "nobody:x", "bad name:x", ":x", ""):
        assert proxy.one.system.version(session) == [False, text, 256, -1, -1]


def test_cr_is_escaped_in_strings(daemon, one):
    # A literal CR would be normalised to LF by any XML parser: send it as &#13;.
    body = call("one.image.allocate", f"oneadmin:{ADMIN_PASSWORD}",
                'NAME="cr"\nSOURCE="/var/tmp/cr"\nFORMAT="raw"\nSIZE="1"\nDESCRIPTION="a@b"', 1)
    _, _, reply = post(daemon, body.replace(b"a@b", b"a&#13;b"))
    iid = xmlrpc.client.loads(reply)[0][0][1]
    _, _, reply = post(daemon, call("one.image.info", f"oneadmin:{ADMIN_PASSWORD}", iid))
    assert b"a&#x0d;b" in reply
    assert re.search(rb"<value><i4>0</i4></value>\r\n</data>", reply)


def test_daemon_keeps_serving_after_garbage(daemon):
    for body in (b"\x00\xff" * 100, b"<methodCall>" * 1000, b"<?xml version='1.0'?><a>"):
        status, _, _ = post(daemon, body)
        assert status == 200
    assert daemon.client().system.version() == "7.0.2"


@pytest.mark.timeout(120)
def test_hundred_megabyte_body_gets_a_fault_and_nothing_changes(daemon, one):
    before = daemon.raw().one.imagepool.info(daemon.session(), -2, -1, -1)
    junk = b"<methodCall><methodName>one.image.allocate</methodName><params>" + b"x" * (100 << 20)
    status, _, reply = post(daemon, junk)
    assert status == 200
    assert b"<i4>-503</i4>" in reply
    assert daemon.raw().one.imagepool.info(daemon.session(), -2, -1, -1) == before
    assert one.system.version() == "7.0.2"


# --- hostile bodies (issue 7): every one is answered with xmlrpc-c's -503 fault ----------

PARSE = "Call XML not a proper XML-RPC call.  "


def fault_reply(daemon, body: bytes) -> tuple[int, str]:
    status, headers, reply = post_bounded(daemon, body)
    assert status == 200 and headers["content-type"] == "text/xml; charset=utf-8"
    with pytest.raises(xmlrpc.client.Fault) as exc:
        xmlrpc.client.loads(reply)
    return exc.value.faultCode, exc.value.faultString


def post_bounded(daemon, body: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """post() with a short timeout: a request that is never answered fails the test."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=timeout)
    conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
    resp = conn.getresponse()
    result = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return result


def test_fault_inside_method_call_is_answered_with_a_parse_fault(daemon):
    body = (b"<methodCall><methodName>one.system.version</methodName><fault><value><struct>"
            b"<member><name>faultCode</name><value><int>4</int></value></member>"
            b"<member><name>faultString</name><value>x</value></member></struct></value>"
            b"</fault></methodCall>")
    status, _, reply = post_bounded(daemon, body)
    assert status == 200
    assert reply == wire_fault(-503, PARSE + "Expected <methodCall> to have child <params>")
    assert "Traceback" not in daemon.log_text()


def wire_fault(code: int, text: str) -> bytes:
    from oned_images.rpc import wire

    return wire.fault(code, text)


HOSTILE_OVER_HTTP = [
    (b"<methodResponse><params><param><value>x</value></param></params></methodResponse>",
     PARSE + "XML-RPC call should be a <methodCall> element.  Instead, we have a "
     "<methodResponse> element."),
    (b'<!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
     b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><methodCall><methodName>&c;</methodName>'
     b"</methodCall>",
     PARSE + "Call is not valid XML.  a DOCTYPE declaration is not accepted"),
    (b'<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><methodCall><methodName>&x;'
     b"</methodName></methodCall>",
     PARSE + "Call is not valid XML.  a DOCTYPE declaration is not accepted"),
    (b"<methodCall><methodName>one.system.version\xff</methodName></methodCall>",
     PARSE + "Call is not valid XML.  not well-formed (invalid token)"),
    (b"<methodCall>\x00</methodCall>",
     PARSE + "Call is not valid XML.  not well-formed (invalid token)"),
    (call("one.image.info", "s", 0).replace(b"<int>0</int>", b"<int>" + b"9" * 400 + b"</int>"),
     PARSE + f"<int> XML element value '{'9' * 400}' represents a number beyond the range "
     "that XML-RPC allows (-2147483648 - 2147483647)"),
    (call("one.image.info", "s", 0).replace(b"<int>0</int>", b"<float>1</float>"),
     PARSE + "Unknown value type -- XML element is named <float>"),
    (b"<methodCall><methodName>one.image.info</methodName><params><param><value><struct>"
     b"<member><value>1</value></member></struct></value></param></params></methodCall>",
     PARSE + "<member> element has 1 children.  Only one <name> and one <value> make sense."),
    (b"<methodCall><methodName>one.image.info</methodName><params><param><value><array>"
     b"<data><value><array><data><value/></data></array></value></data></array></value>"
     b"</param><param></param></params></methodCall>",
     PARSE + "Expected <param> to have 1 children, found 0"),
]


def test_hostile_bodies_get_fault_replies_and_the_daemon_serves_on(daemon):
    for body, text in HOSTILE_OVER_HTTP:
        assert fault_reply(daemon, body) == (-503, text)
    assert daemon.client().system.version() == "7.0.2"
    assert "Traceback" not in daemon.log_text()


def nested_call(depth: int) -> bytes:
    return (b"<methodCall><methodName>one.image.info</methodName><params><param><value>"
            + b"oneadmin:" + ADMIN_PASSWORD.encode() + b"</value></param><param><value>"
            + b"<array><data><value>" * depth + b"<i4>1</i4>" + b"</value></data></array>" * depth
            + b"</value></param></params></methodCall>")


@pytest.mark.timeout(60)
def test_a_million_levels_of_nesting_are_refused_with_one_short_line(daemon):
    before = len(daemon.log_text())
    assert fault_reply(daemon, nested_call(1_000_000)) == (-503, PARSE + "Nested data structure too "
                                                   "deep.")
    # 63 levels inside the param's own <value> is xmlrpc-c's limit of 64: still a call
    with pytest.raises(xmlrpc.client.Fault) as exc:
        xmlrpc.client.loads(post_bounded(daemon, nested_call(63))[2])
    assert exc.value.faultString == "Parameter that is supposed to be integer is not"
    assert fault_reply(daemon, nested_call(64)) == (-503, PARSE + "Nested data structure too deep.")
    log = daemon.log_text()[before:]
    assert "Traceback" not in log and "RecursionError" not in log
    assert max(map(len, log.splitlines()), default=0) < 1000
    assert log.count("IP:127.0.0.1 malformed call, FAULT 'Call XML not a proper XML-RPC call.  "
                     "Nested data structure too deep.'") == 2


@pytest.mark.timeout(60)
def test_a_huge_call_is_logged_in_a_short_line(daemon):
    before = len(daemon.log_text())
    params = b"<param><value><i4>7</i4></value></param>" * 200_000
    body = (b"<methodCall><methodName>one.system.version</methodName><params><param><value>"
            + b"oneadmin:" + ADMIN_PASSWORD.encode() + b"</value></param>" + params
            + b"<param><value>" + b"y" * 100_000 + b"</value></param>"
            + b"</params></methodCall>")
    status, _, reply = post_bounded(daemon, body, timeout=50)
    assert status == 200 and xmlrpc.client.loads(reply)[0][0] == [True, "7.0.2", 0]
    log = daemon.log_text()[before:]
    lines = [line for line in log.splitlines() if "one.system.version invoked" in line]
    assert len(lines) == 1 and len(lines[0]) < 1000, lines[0][:300]
    assert "Traceback" not in log


def test_many_concurrent_fault_bodies_are_all_answered(daemon):
    """The campaign's ~1,000 held connections: each one now gets its fault at once."""
    import socket

    body = (b"<methodCall><methodName>one.system.version</methodName><fault><value>"
            b"<struct></struct></value></fault></methodCall>")
    request = (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body
    expected = wire_fault(-503, PARSE + "Expected <methodCall> to have child <params>")
    for _ in range(4):  # in batches below the per-peer connection limit
        socks = [socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
                 for _ in range(50)]
        for s in socks:
            s.sendall(request)
        for s in socks:
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            s.close()
            assert reply.endswith(b"\r\n\r\n" + expected)
    assert daemon.client().system.version() == "7.0.2"
