"""XML-RPC bytes on the wire: parse a methodCall, write oned-shaped replies.

The stdlib unmarshaller is reused (expat, fast) with one change: ``<i8>`` is kept
as a distinct type, because xmlrpc-c refuses it where an int is expected.  Replies
are written by hand so that they carry xmlrpc-c's exact shape: CRLF layout,
``<i4>`` ints, ``<i8>-1</i8>`` as the last failure element and CR escaped.
"""

from __future__ import annotations

import xmlrpc.client
from xml.parsers import expat

from oned_images.errors import Fault
from oned_images.xmldoc.served import Served, escape


class I8(int):
    """An ``<i8>`` parameter: an int to Python, not an int to oned."""


class _Unmarshaller(xmlrpc.client.Unmarshaller):
    dispatch = dict(xmlrpc.client.Unmarshaller.dispatch)

    def end_i8(self, data: str) -> None:
        self.append(I8(int(data)))
        self._value = 0

    dispatch["i8"] = end_i8


def parse_call(body: bytes) -> tuple[str, list]:
    """Return (method name, params) or raise Fault -503 as xmlrpc-c does."""
    unmarshaller = _Unmarshaller()
    unmarshaller._encoding = None  # expat already hands us str
    root: list[str] = []
    parser = expat.ParserCreate(None, None)
    parser.buffer_text = True

    def start(tag: str, attrs: dict) -> None:
        if not root:
            root.append(tag)
            if tag != "methodCall":
                raise _NotACall(tag)
        unmarshaller.start(tag, attrs)

    parser.StartElementHandler = start
    parser.EndElementHandler = unmarshaller.end
    parser.CharacterDataHandler = unmarshaller.data
    try:
        parser.Parse(body, True)
        method = unmarshaller.getmethodname()
        params = list(unmarshaller.close())
    except _NotACall as exc:
        raise Fault(
            -503,
            "Call XML not a proper XML-RPC call.  XML-RPC call should be a <methodCall> "
            f"element.  Instead, we have a <{exc.tag}> element.",
        ) from None
    except (expat.ExpatError, ValueError, TypeError, IndexError, KeyError,
            xmlrpc.client.ResponseError) as exc:
        raise Fault(-503, f"Call XML not a proper XML-RPC call.  {exc}") from None
    if not isinstance(method, str) or not method:
        raise Fault(-503, "Call XML not a proper XML-RPC call.  No method name")
    return method, params


class _NotACall(Exception):
    def __init__(self, tag: str) -> None:
        self.tag = tag


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


def response(values: list[object]) -> bytes:
    """An array result: ``[true, value, 0]`` or the 5-element failure."""
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


def success(value: object) -> bytes:
    return response([True, value, 0])


def failure(message: str, code: int, resp_id: int) -> bytes:
    return response([False, message, code, resp_id, I8(-1)])


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
