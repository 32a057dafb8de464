"""wire.parse_call against hostile bodies: every malformed call is a -503 fault
with xmlrpc-c's text, nothing else ever escapes, and valid calls parse as before."""

from __future__ import annotations

import time

import pytest

from oned_images.errors import Fault
from oned_images.rpc import wire

P = "Call XML not a proper XML-RPC call.  "


def call(params: str, name: str = "one.image.info") -> bytes:
    return (f"<?xml version='1.0'?><methodCall><methodName>{name}</methodName>"
            f"<params>{params}</params></methodCall>").encode()


def param(value: str) -> str:
    return f"<param><value>{value}</value></param>"


def fault_of(body: bytes) -> tuple[int, str]:
    with pytest.raises(Fault) as exc:
        wire.parse_call(body)
    return exc.value.code, exc.value.text


def nested(depth: int) -> str:
    return "<array><data><value>" * (depth - 1) + "<i4>1</i4>" + "</value></data></array>" * (
        depth - 1)


HOSTILE = [
    # a <fault> where <params> belongs: once escaped the error path and hung the connection
    (b"<methodCall><methodName>one.system.version</methodName><fault><value><struct>"
     b"<member><name>faultCode</name><value><int>4</int></value></member>"
     b"<member><name>faultString</name><value>x</value></member></struct></value></fault>"
     b"</methodCall>",
     P + "Expected <methodCall> to have child <params>"),
    (b"<methodCall><methodName>x</methodName><params/><fault/></methodCall>",
     P + "<methodCall> has extraneous children, other than <methodName> and <params>.  "
     "Total child count = 3"),
    (b"<methodResponse><params><param><value>x</value></param></params></methodResponse>",
     P + "XML-RPC call should be a <methodCall> element.  Instead, we have a "
     "<methodResponse> element."),
    (b"<methodCall><params/></methodCall>", P + "Expected <methodCall> to have child "
     "<methodName>"),
    (b"<methodCall><methodName>a<b/></methodName></methodCall>",
     P + "A <methodName> element should not have children.  This one has 1 of them."),
    (b"", P + "Call is not valid XML.  no element found"),
    (b"<methodCall>", P + "Call is not valid XML.  no element found"),
    (b"\xff\xfe<methodCall/>", P + "Call is not valid XML.  not well-formed (invalid token)"),
    (b"<methodCall><methodName>a\xc3(</methodName></methodCall>",
     P + "Call is not valid XML.  not well-formed (invalid token)"),
    (b"<methodCall><methodName>a\x00</methodName></methodCall>",
     P + "Call is not valid XML.  not well-formed (invalid token)"),
    (b'<!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
     b"<methodCall><methodName>&b;</methodName></methodCall>",
     P + "Call is not valid XML.  a DOCTYPE declaration is not accepted"),
    (b'<!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     b"<methodCall><methodName>&x;</methodName></methodCall>",
     P + "Call is not valid XML.  a DOCTYPE declaration is not accepted"),
    (call(param("<i4>99999999999999999999999</i4>")),
     P + "<int> XML element value '99999999999999999999999' represents a number beyond the "
     "range that XML-RPC allows (-2147483648 - 2147483647)"),
    (call(param("<int>4294967296</int>")),
     P + "<int> value 4294967296 is above the range allowed by XML-RPC (maximum is "
     "2147483647)"),
    (call(param("<int>-4294967296</int>")),
     P + "<int> value -4294967296 is below the range allowed by XML-RPC (minimum is "
     "-2147483648)"),
    (call(param("<int>12abc</int>")),
     P + "<int> value '12abc' contains non-numerical junk: 'abc'"),
    (call(param("<int></int>")), P + "<int> XML element content is empty"),
    (call(param("<int> 1</int>")), P + "<int> content ' 1' starts with white space"),
    # more digits than Python's int() converts (4,300): a fault, never a traceback
    (call(param("<int>" + "9" * 5000 + "</int>")),
     P + "<int> XML element value '" + "9" * 5000 + "' represents a number beyond the "
     "range that XML-RPC allows (-2147483648 - 2147483647)"),
    (call(param("<i8>-" + "0" * 4999 + "7x</i8>")),
     P + "<i8> value '-" + "0" * 4999 + "7x' contains non-numerical junk: 'x'"),
    (call(param("<i8>99999999999999999999999</i8>")),
     P + "<i8> XML element value '99999999999999999999999' represents a number beyond the "
     "range that XML-RPC allows (-9223372036854775808 - 9223372036854775807)"),
    (call(param("<boolean>yes</boolean>")),
     P + "<boolean> XML element content must be either '0' or '1' according to XML-RPC.  "
     "This one has 'yes'"),
    (call(param("<double>1..2</double>")),
     P + "<double> element value '1..2' is not a valid floating point number.  Two decimal "
     "points"),
    (call(param("<foo>1</foo>")), P + "Unknown value type -- XML element is named <foo>"),
    (call(param("<string>a<b/></string>")),
     P + "The child of a <value> element is neither <array> nor <struct>, but has 1 child "
     "elements of its own."),
    (call(param("<i4>1</i4><i4>2</i4>")),
     P + "<value> has 2 child elements.  Only zero or one make sense."),
    (call(param("<struct><member><value>1</value></member></struct>")),
     P + "<member> element has 1 children.  Only one <name> and one <value> make sense."),
    (call(param("<struct><member><value>1</value><value>2</value></member></struct>")),
     P + "<member> has no <name> child"),
    (call(param("<struct><member><name>a</name><name>b</name></member></struct>")),
     P + "<member> has no <value> child"),
    (call(param("<struct><member><name>a<i4/></name><value/></member></struct>")),
     P + "<name> element has 1 children.  Should have none."),
    (call(param("<struct><value>1</value></struct>")),
     P + "<value> element found where only <member> makes sense"),
    (call(param("<array></array>")),
     P + "<array> element has 0 children.  Only one <data> makes sense."),
    (call(param("<array><value>1</value></array>")),
     P + "<array> element has <value> child.  Only <data> makes sense."),
    (call(param("<array><data><i4>1</i4></data></array>")),
     P + "<data> element has <i4> child.  Only <value> makes sense."),
    (call("<param></param>"), P + "Expected <param> to have 1 children, found 0"),
    (call("<param><i4>1</i4></param>"), P + "Expected element of type <value>, found <i4>"),
    (call("<value>1</value>"), P + "Expected element of type <param>, found <value>"),
    (call(param(nested(65))), P + "Nested data structure too deep."),
    (call(param("<array><data><value>" * 1000)), P + "Nested data structure too deep."),
    (b"<methodCall>" + b"<a>" * 100000, P + "Nested data structure too deep."),
]


@pytest.mark.parametrize(("body", "text"), HOSTILE, ids=range(len(HOSTILE)))
def test_malformed_calls_are_xmlrpc_c_parse_faults(body, text):
    assert fault_of(body) == (-503, text)


def test_valid_calls_parse_to_the_values_handlers_read():
    body = call(param("<string>a&amp;b</string>") + param("plain") + param("")
                + param("<int>-2147483648</int>") + param("<i4>+7</i4>")
                + param("<i8>9223372036854775807</i8>") + param("<boolean>1</boolean>")
                + param("<double>-1.5</double>") + param("<nil/>")
                + param("<base64>aGk=</base64>")
                + param("<array><data><value><i4>1</i4></value><value>x</value></data></array>")
                + param("<struct><member><name>k</name><value><i4>2</i4></value></member>"
                        "</struct>")
                + param(nested(64)), name="one.x")
    name, values = wire.parse_call(body)
    assert name == "one.x"
    assert values[:12] == ["a&b", "plain", "", -2147483648, 7, 9223372036854775807, True,
                           -1.5, None, b"hi", [1, "x"], {"k": 2}]
    assert type(values[5]) is wire.I8 and type(values[3]) is int
    inner = values[12]
    for _ in range(63):
        inner = inner[0]
    assert inner == 1


def test_method_without_params_and_empty_name():
    assert wire.parse_call(b"<methodCall><methodName>a.b</methodName></methodCall>") == (
        "a.b", [])
    assert wire.parse_call(b"<methodCall><methodName></methodName><params/></methodCall>") == (
        "", [])


def test_a_million_levels_fail_fast_and_without_recursion():
    body = call(param("<array><data><value>" * 1_000_000 + "<i4>1</i4>"
                      + "</value></data></array>" * 1_000_000))
    started = time.monotonic()
    assert fault_of(body) == (-503, P + "Nested data structure too deep.")
    assert time.monotonic() - started < 5


# --- the fast path of plain bodies (wire._fast) answers exactly as the full parser

def _outcome(parse, body: bytes):
    try:
        return ("ok", parse(body))
    except wire._Bad as exc:
        return ("fault", str(exc))


PLAIN_VALUES = [
    "<string>oneadmin:pw</string>", "<string></string>", "<string>a b \u00e9 \u4e2d</string>",
    "<int>5</int>", "<i4>-1</i4>", "<int>+7</int>", "<int> 5</int>", "<int>5x</int>",
    "<int>99999999999</int>", "<int></int>", "<i8>-1</i8>", "<i8>9223372036854775808</i8>",
    "<boolean>1</boolean>", "<boolean>0</boolean>", "<boolean>true</boolean>",
    "<string>tab\there</string>", "<string>a\nb</string>",
]
OTHER_BODIES = [
    call(param("<int>1</string>")), call(param("<string>a&amp;b</string>")),
    call(param("<string>a\rb</string>")), call(param("<string>a\x01b</string>")),
    call(param("<string>]]></string>")), call(param("<double>1.5</double>")),
    call(param("plain")), call(param("<string>a</string><string>b</string>")),
    call(param("<array><data><value><i4>1</i4></value></data></array>")),
    b"<?xml version='1.0' encoding='ISO-8859-1'?><methodCall><methodName>x</methodName>"
    b"</methodCall>",
    b"<methodCall><methodName>one.system.version</methodName></methodCall>",
    b'<?xml version="1.0" ?><methodCall><methodName>a.b</methodName><params></params>'
    b"</methodCall>\n",
    b"<methodCall><methodName>x</methodName></methodCall>junk",
    b"<methodCall><methodName>x</methodName><params><param><value><string>\xff</string>"
    b"</value></param></params></methodCall>",
    call(param("<string>\ufffe</string>")),
]


@pytest.mark.parametrize("value", PLAIN_VALUES)
def test_plain_bodies_take_the_fast_path_with_the_full_parsers_answer(value):
    for body in (call(param(value)), call(param("<string>s:p</string>") + param(value))):
        assert _outcome(wire._fast, body) == _outcome(wire._parse, body), body
    # white space inside <value> takes the full parser
    body = call(param(value)).replace(b"><", b">\n<")
    assert _outcome(wire._fast, body) in (("ok", None), _outcome(wire._parse, body))


@pytest.mark.parametrize("body", OTHER_BODIES)
def test_other_bodies_get_the_full_parsers_answer(body):
    fast = _outcome(wire._fast, body)
    assert fast == ("ok", None) or fast == _outcome(wire._parse, body), body
    full = _outcome(wire._parse, body)
    try:
        got = ("ok", wire.parse_call(body))
    except Fault as fault:
        got = ("fault", fault.text.removeprefix(P))
    assert got == full, body
