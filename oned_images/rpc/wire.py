"""XML-RPC bytes on the wire: parse a methodCall, write oned-shaped replies.

Calls are read with expat and checked with xmlrpc-c's rules and fault texts (the
server library oned uses): ``<i8>`` is kept as a distinct type, because xmlrpc-c
refuses it where an int is expected, and every malformed body is a -503 fault.  Replies
are written by hand so that they carry xmlrpc-c's exact shape: CRLF layout,
``<i4>`` ints, ``<i8>-1</i8>`` as the last failure element and CR escaped.
"""

from __future__ import annotations

import binascii
import re
from xml.parsers import expat

from twisted.logger import Logger

from oned_images.errors import Fault
from oned_images.xmldoc.served import Served, escape

log = Logger(namespace="ReM")


class I8(int):
    """An ``<i8>`` parameter: an int to Python, not an int to oned."""


class DateTime(str):
    """A ``<dateTime.iso8601>`` parameter, kept as its text: no handler reads one."""


#: xmlrpc-c's XMLRPC_NESTING_LIMIT_DEFAULT: a parameter's <value> may hold values
#: nested this deep, the next level is "Nested data structure too deep.".
NESTING_LIMIT = 64
#: any element deeper than this cannot be part of a call within NESTING_LIMIT
#: (methodCall/params/param + three elements per array or struct level).
_MAX_DEPTH = 3 * NESTING_LIMIT + 8
_PREFIX = "Call XML not a proper XML-RPC call.  "
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_LEADING_INT = re.compile(r"[+-]?[0-9]+")
_STRTOD = re.compile(r"[ \t\n\v\f\r]*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
                     r"|inf(inity)?|nan)\Z", re.IGNORECASE)
_C_SPACE = " \t\n\v\f\r"


class _Bad(Exception):
    """A parse fault's detail, before the 'Call XML not a proper …' prefix."""


class _Node:
    """One closed element: its name, child nodes and text (a <value> keeps its value)."""

    __slots__ = ("name", "children", "text", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.children: list[_Node] = []
        self.text: list[str] = []
        self.value: object = None


def parse_call(body: bytes) -> tuple[str, list]:
    """Return (method name, params) or raise Fault -503 as xmlrpc-c does.

    The call is checked element by element with xmlrpc-c's rules and texts, so
    anything that is not a methodCall (a <fault>, a methodResponse, a DOCTYPE,
    unknown types, values nested deeper than xmlrpc-c's limit) is a fault here and
    never an exception of another kind.  Values are built as their elements close,
    so memory follows the values, not the element tree, and nothing recurses.
    """
    try:
        fast = _fast(body)
        return fast if fast is not None else _parse(body)
    except _Bad as exc:
        raise Fault(-503, _PREFIX + str(exc)) from None
    except Fault:
        raise
    except Exception as exc:  # noqa: BLE001 — whatever a body does, the reply is a fault
        log.failure("Parsing a call failed unexpectedly")  # a bug here, not in the body
        raise Fault(-503, _PREFIX + type(exc).__name__) from None


_WS = rb"[ \t\n]*"
_KINDS = rb"string|int|i4|i8|boolean"
#: a character of a scalar's text that needs no XML processing (no markup, entity,
#: CR or control character: each of those takes the full parser).
_PLAIN = rb"[^<>&\r\x00-\x08\x0b\x0c\x0e-\x1f]*"
_VALUE = rb"<value><(" + _KINDS + rb")>(" + _PLAIN + rb")</\1></value>"
_FAST = re.compile(
    rb"(?:<\?xml version=(?:\"1\.0\"|'1\.0')(?: encoding=(?:\"[Uu][Tt][Ff]-8\"|'[Uu][Tt][Ff]-8'))?"
    rb" ?\?>" + _WS + rb")?<methodCall>" + _WS + rb"<methodName>([A-Za-z0-9_.]+)</methodName>"
    + _WS + rb"(?:<params>(" + _WS + rb"(?:<param>" + _WS + rb"<value><(?:" + _KINDS + rb")>"
    + _PLAIN + rb"</(?:" + _KINDS + rb")></value>" + _WS + rb"</param>" + _WS + rb")*)</params>"
    + _WS + rb")?</methodCall>" + _WS)
_FAST_VALUE = re.compile(_VALUE)


def _fast(body: bytes) -> tuple[str, list] | None:
    """The call of a plain body (what pyone, the Ruby CLI and Sunstone send: scalar
    parameters, no entity, comment or attribute), read with two regular expressions;
    None for any other body, which the full parser reads.  Where it answers, the
    answer is the full parser's: the same values from the same _scalar, the same
    fault for the first bad scalar (a plain body has no other fault to come first)."""
    match = _FAST.fullmatch(body)
    if match is None:
        return None
    block = match.group(2) or b""
    values = list(_FAST_VALUE.finditer(block))
    if len(values) != block.count(b"<param>"):
        return None  # <int>1</string>: not well-formed, the full parser says how
    params = []
    for value in values:
        kind, raw = value.group(1), value.group(2)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if "\ufffe" in text or "\uffff" in text:
            return None
        params.append(_scalar(kind.decode(), text))
    return match.group(1).decode(), params


def _parse(body: bytes) -> tuple[str, list]:
    stack: list[_Node] = []
    root: list[_Node] = []
    values_open = 0
    parser = expat.ParserCreate(None, None)
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def doctype(*_: object) -> None:
        # No DTD at all: no entity expansion (billion laughs), no external entity (XXE).
        raise _Bad("Call is not valid XML.  a DOCTYPE declaration is not accepted")

    def start(tag: str, _attrs: object) -> None:
        nonlocal values_open
        if tag == "value":
            values_open += 1
            if values_open > NESTING_LIMIT:  # counted from the param's own <value>
                raise _Bad("Nested data structure too deep.")
        if len(stack) >= _MAX_DEPTH:
            raise _Bad("Nested data structure too deep.")
        if not stack and not root and tag != "methodCall":
            raise _Bad("XML-RPC call should be a <methodCall> element.  Instead, we have a "
                       f"<{tag}> element.")
        stack.append(_Node(tag))

    def end(tag: str) -> None:
        nonlocal values_open
        node = stack.pop()
        if tag == "value":
            values_open -= 1
            node.value = _read_value(node)
            node.children = []
            node.text = []
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)

    def text(data: str) -> None:
        stack[-1].text.append(data)

    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise _Bad(f"Call is not valid XML.  {expat.ErrorString(exc.code)}") from None
    return _call(root[0])


def _child(parent: _Node, name: str) -> _Node:
    for child in parent.children:
        if child.name == name:
            return child
    raise _Bad(f"Expected <{parent.name}> to have child <{name}>")


def _call(call: _Node) -> tuple[str, list]:
    name_elem = _child(call, "methodName")
    if name_elem.children:
        raise _Bad("A <methodName> element should not have children.  This one has "
                   f"{len(name_elem.children)} of them.")
    params: list = []
    if len(call.children) > 1:
        for param in _child(call, "params").children:
            if param.name != "param":
                raise _Bad(f"Expected element of type <param>, found <{param.name}>")
            if len(param.children) != 1:
                raise _Bad(f"Expected <param> to have 1 children, found {len(param.children)}")
            value = param.children[0]
            if value.name != "value":
                raise _Bad(f"Expected element of type <value>, found <{value.name}>")
            params.append(value.value)
    if len(call.children) > 2:
        raise _Bad("<methodCall> has extraneous children, other than <methodName> and "
                   f"<params>.  Total child count = {len(call.children)}")
    return "".join(name_elem.text), params


def _read_value(node: _Node) -> object:
    """A closed <value>: its children are closed (their own values already built)."""
    if not node.children:
        return "".join(node.text)
    if len(node.children) > 1:
        raise _Bad(f"<value> has {len(node.children)} child elements.  Only zero or one "
                   "make sense.")
    typed = node.children[0]
    if typed.name == "struct":
        return _struct(typed)
    if typed.name == "array":
        return _array(typed)
    if typed.children:
        raise _Bad("The child of a <value> element is neither <array> nor <struct>, but has "
                   f"{len(typed.children)} child elements of its own.")
    return _scalar(typed.name, "".join(typed.text))


def _array(array: _Node) -> list:
    if len(array.children) != 1:
        raise _Bad(f"<array> element has {len(array.children)} children.  Only one <data> "
                   "makes sense.")
    data = array.children[0]
    if data.name != "data":
        raise _Bad(f"<array> element has <{data.name}> child.  Only <data> makes sense.")
    items = []
    for item in data.children:
        if item.name != "value":
            raise _Bad(f"<data> element has <{item.name}> child.  Only <value> makes sense.")
        items.append(item.value)
    return items


def _struct(struct: _Node) -> dict:
    members: dict[str, object] = {}
    for member in struct.children:
        if member.name != "member":
            raise _Bad(f"<{member.name}> element found where only <member> makes sense")
        if len(member.children) != 2:
            raise _Bad(f"<member> element has {len(member.children)} children.  Only one "
                       "<name> and one <value> make sense.")
        names = [c for c in member.children if c.name == "name"]
        if not names:
            raise _Bad("<member> has no <name> child")
        if names[0].children:
            raise _Bad(f"<name> element has {len(names[0].children)} children.  Should have "
                       "none.")
        values = [c for c in member.children if c.name == "value"]
        if not values:
            raise _Bad("<member> has no <value> child")
        members["".join(names[0].text)] = values[0].value
    return members


def _scalar(kind: str, text: str) -> object:
    if kind in ("int", "i4", "i1", "i2", "ex.i1", "ex.i2"):
        return _integer("int", text, _INT32)
    if kind in ("i8", "ex.i8"):
        return I8(_integer("i8", text, _INT64))
    if kind == "boolean":
        if text not in ("0", "1"):
            raise _Bad("<boolean> XML element content must be either '0' or '1' according "
                       f"to XML-RPC.  This one has '{text}'")
        return text == "1"
    if kind == "string":
        return text
    if kind == "double":
        return _double(text)
    if kind == "dateTime.iso8601":
        return DateTime(text)
    if kind == "base64":
        try:
            return binascii.a2b_base64(text.encode("ascii", "ignore"))
        except binascii.Error:
            raise _Bad("Incorrect Base64 padding") from None
    if kind in ("nil", "ex.nil"):
        return None
    raise _Bad(f"Unknown value type -- XML element is named <{kind}>")


def _integer(kind: str, text: str, bounds: tuple[int, int]) -> int:
    """strtol/strtoll and xmlrpc-c's checks around them, with the same texts."""
    if not text:
        raise _Bad(f"<{kind}> XML element content is empty")
    if text[0] in _C_SPACE:
        raise _Bad(f"<{kind}> content '{text}' starts with white space")
    digits = text[1:] if text[0] in "+-" else text
    if len(digits) < 10 and digits.isascii() and digits.isdigit():
        return int(text)  # the common case: within every range, no junk
    match = _LEADING_INT.match(text)
    lead = match.group() if match else "0"
    sig = lead.lstrip("+-").lstrip("0") or "0"
    if len(sig) > 19:
        # beyond int64 whatever the digits (strtoll saturates); and Python's int() refuses
        # strings of more than 4,300 digits, which would be a traceback instead of a fault
        value = _INT64[0] - 1 if lead.startswith("-") else _INT64[1] + 1
    else:
        value = -int(sig) if lead.startswith("-") else int(sig)
    tail = text[match.end():] if match else text
    if not _INT64[0] <= value <= _INT64[1]:
        raise _Bad(f"<{kind}> XML element value '{text}' represents a number beyond the range "
                   f"that XML-RPC allows ({bounds[0]} - {bounds[1]})")
    if value < bounds[0]:
        raise _Bad(f"<{kind}> value {value} is below the range allowed by XML-RPC (minimum "
                   f"is {bounds[0]})")
    if value > bounds[1]:
        raise _Bad(f"<{kind}> value {value} is above the range allowed by XML-RPC (maximum "
                   f"is {bounds[1]})")
    if tail:
        raise _Bad(f"<{kind}> value '{text}' contains non-numerical junk: '{tail}'")
    return value


def _double(text: str) -> float:
    """xmlrpc-c's strict XML-RPC double, then strtod's wider forms, as it does."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    problem = ""
    if digits.count(".") > 1:
        problem = "Two decimal points"
    else:
        for i, c in enumerate(digits):
            if c != "." and not "0" <= c <= "9":
                problem = f"Garbage (not sign, digit, or period) starting at '{digits[i:]}'"
                break
        else:
            if not digits.replace(".", ""):
                problem = "No digits"
    if not problem:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            problem = "Value exceeds the size allowed by XML-RPC"
        else:
            return value
    if _STRTOD.match(text):
        value = float(text.strip(_C_SPACE))
        if value not in (float("inf"), float("-inf")) or "inf" in text.lower():
            return value
    raise _Bad(f"<double> element value '{text}' is not a valid floating point number.  "
               f"{problem}")


_HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\r\n<methodResponse>\r\n'


def _value(value: object) -> str:
    if isinstance(value, bool):
        return f"<value><boolean>{int(value)}</boolean></value>"
    if isinstance(value, I8):
        return f"<value><i8>{int(value)}</i8></value>"
    if isinstance(value, int):
        return f"<value><i4>{value}</i4></value>"
    if isinstance(value, str):
        return f"<value><string>{escape(value)}</string></value>"
    raise TypeError(f"cannot serialise {type(value).__name__}")


#: replies of this size or more are left in parts: a joined buffer this large is a
#: fresh mmap, each page faulted in (a page of 200 images, 360 KB, joined twice: about
#: a third of its time on a new connection); smaller ones are joined from malloc's heap.
JOIN_LIMIT = 1 << 16


class Parts:
    """A reply left in its parts: the bodies of a large listing are written as they
    are (rpc/front.py hands them to sendmsg) instead of being joined into one more
    buffer of the reply's size (a whole pool of 10,000 images: 18 MB, a fresh mmap
    whose every page is faulted in, then freed: about a sixth of the listing's time)."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes], size: int) -> None:
        self.parts = parts
        self.size = size

    def __len__(self) -> int:
        return self.size

    def prefix(self, size: int) -> bytes:
        """At least the first ``size`` bytes (all of them when the reply is shorter)."""
        out, have = [], 0
        for part in self.parts:
            if have >= size:
                break
            out.append(part)
            have += len(part)
        return b"".join(out)

    def joined(self) -> bytes:
        return b"".join(self.parts)

    def take(self) -> list[bytes]:
        """The parts, handed over: the writer that sends them holds the last reference,
        so they are freed as soon as they are sent."""
        parts, self.parts = self.parts, []
        return parts


def response(values: list[object]) -> bytes | Parts:
    """An array result: ``[true, value, 0]`` or the 5-element failure; :class:`Parts`
    from JOIN_LIMIT bytes on."""
    parts = [_HEAD, b"<params>\r\n<param><value><array><data>\r\n"]
    for i, value in enumerate(values):
        if i:
            parts.append(b"\r\n")
        if isinstance(value, Served):
            parts.append(b"<value><string>")
            parts.extend(value.chunks)
            parts.append(b"</string></value>")
        else:
            parts.append(_value(value).encode("utf-8"))
    parts.append(b"\r\n</data></array></value></param>\r\n</params>\r\n</methodResponse>\r\n")
    size = sum(map(len, parts))
    if size >= JOIN_LIMIT:
        return Parts(parts, size)
    return b"".join(parts)


def fault(code: int, text: str) -> bytes:
    return (
        _HEAD
        + b"<fault><value><struct>\r\n<member><name>faultCode</name>\r\n"
        + f"<value><i4>{code}</i4></value></member>\r\n".encode()
        + b"<member><name>faultString</name>\r\n"
        + f"<value><string>{escape(text)}</string></value></member>\r\n".encode()
        + b"</struct></value>\r\n</fault>\r\n</methodResponse>\r\n"
    )


def success(value: object) -> bytes | Parts:
    return response([True, value, 0])


def failure(message: str, code: int, resp_id: int) -> bytes:
    return response([False, message, code, resp_id, I8(-1)])  # type: ignore[return-value]


class Params:
    """Positional parameters read the way xmlrpc-c's paramList does.

    Index 0 is the session.  Reading a missing or mistyped parameter raises the
    -501 fault; extra trailing parameters are simply never read.
    """

    __slots__ = ("values",)

    def __init__(self, values: list) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def has(self, index: int) -> bool:
        return index < len(self.values)

    def _get(self, index: int) -> object:
        if index >= len(self.values):
            raise Fault(-501, Fault.NOT_ENOUGH)
        return self.values[index]

    def int(self, index: int) -> int:
        value = self._get(index)
        if isinstance(value, bool) or isinstance(value, I8) or not isinstance(value, int):
            raise Fault(-501, Fault.NOT_INT)
        if not -(2**31) <= value < 2**31:
            raise Fault(-501, Fault.NOT_INT)
        return int(value)

    def str(self, index: int) -> str:
        value = self._get(index)
        if not isinstance(value, str):
            raise Fault(-501, Fault.NOT_STRING)
        return value

    def bool(self, index: int) -> bool:
        value = self._get(index)
        if not isinstance(value, bool):
            raise Fault(-501, Fault.NOT_BOOL)
        return value

    def opt_int(self, index: int, default: int) -> int:
        return self.int(index) if self.has(index) else default

    def opt_bool(self, index: int, default: bool) -> bool:
        return self.bool(index) if self.has(index) else default



def _any(value: object) -> str:
    if isinstance(value, list):
        return ("<value><array><data>" + "".join(_any(v) for v in value)
                + "</data></array></value>")
    return _value(value)


def response_any(value: object) -> bytes:
    """A plain (non-OpenNebula) single value reply, for introspection."""
    return (
        _HEAD + b"<params>\r\n<param>" + _any(value).encode("utf-8")
        + b"</param>\r\n</params>\r\n</methodResponse>\r\n"
    )
