"""Checks on whole XML-RPC reply arrays (as returned by ``daemon.raw()``)."""

from __future__ import annotations

from tests.support.xsd import validate

AUTH, AUTHZ, NO_EXISTS, ACTION, API, INTERNAL, ALLOCATE = (
    256, 512, 1024, 2048, 4096, 8192, 16384)


def ok(reply):
    """The value of a successful ``[true, value, 0]``; XML documents are validated."""
    assert len(reply) == 3 and reply[0] is True and reply[2] == 0, reply
    value = reply[1]
    if isinstance(value, str) and value.startswith("<"):
        validate(value)
    return value


def fails(reply, text: str, code: int, resp_id: int = -1) -> None:
    """oned's 5-element failure array, exactly."""
    assert reply == [False, text, code, resp_id, -1]
