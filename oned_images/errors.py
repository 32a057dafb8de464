"""OpenNebula error codes and the one place that formats their texts.

Domain code raises :class:`OneError`; the XML-RPC layer turns it into oned's
5-element failure array.  Texts follow ``Request::failure_message`` of oned 7.0.2
(api.md §1.4) because the CLI prints them verbatim and FireEdge greps the
``[method]`` prefix.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    SUCCESS = 0x0000
    AUTHENTICATION = 0x0100
    AUTHORIZATION = 0x0200
    NO_EXISTS = 0x0400
    ACTION = 0x0800
    XML_RPC_API = 0x1000
    INTERNAL = 0x2000
    ALLOCATE = 0x4000
    LOCKED = 0x8000


class OneError(Exception):
    """An API failure: code, optional detail, the object kind it names and resp_id."""

    def __init__(
        self,
        code: ErrorCode,
        detail: str = "",
        *,
        obj: str | None = None,
        resp_id: int = -1,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.obj = obj
        self.resp_id = resp_id

    def message(self, method: str, uid: int, default_obj: str) -> str:
        obj = self.obj or default_obj
        prefix = f"[{method}]"
        code = self.code
        if code == ErrorCode.AUTHENTICATION:
            return f"{prefix} User couldn't be authenticated, aborting call."
        if code == ErrorCode.AUTHORIZATION:
            if self.detail:
                return f"{prefix} User [{uid}] : {self.detail}."
            return f"{prefix} User [{uid}] not authorized to perform action on {obj}."
        if code == ErrorCode.NO_EXISTS:
            if self.resp_id == -1:
                return f"{prefix} Error getting {obj} Pool."
            return f"{prefix} Error getting {obj} [{self.resp_id}]."
        if code == ErrorCode.ALLOCATE:
            text = f"{prefix} Error allocating a new {obj}."
            return f"{text} {self.detail}" if self.detail else text
        if code == ErrorCode.LOCKED:
            return f"{prefix} The resource {obj} is locked. [{self.resp_id}]."
        return f"{prefix} {self.detail}"

    def __repr__(self) -> str:
        return f"OneError({self.code.name}, {self.detail!r}, obj={self.obj!r}, resp_id={self.resp_id})"


def authentication() -> OneError:
    return OneError(ErrorCode.AUTHENTICATION)


def authorization(detail: str = "") -> OneError:
    return OneError(ErrorCode.AUTHORIZATION, detail)


def no_exists(obj: str | None, oid: int) -> OneError:
    return OneError(ErrorCode.NO_EXISTS, obj=obj, resp_id=oid)


def action(detail: str) -> OneError:
    return OneError(ErrorCode.ACTION, detail)


def api(detail: str) -> OneError:
    return OneError(ErrorCode.XML_RPC_API, detail)


def internal(detail: str, resp_id: int = -1) -> OneError:
    return OneError(ErrorCode.INTERNAL, detail, resp_id=resp_id)


def allocate(detail: str = "", obj: str | None = None) -> OneError:
    return OneError(ErrorCode.ALLOCATE, detail, obj=obj)


class Fault(Exception):
    """An XML-RPC fault, for what xmlrpc-c itself rejects (api.md §1.5)."""

    NOT_ENOUGH = "Not enough parameters"
    NOT_INT = "Parameter that is supposed to be integer is not"
    NOT_STRING = "Parameter that is supposed to be a string is not"
    NOT_BOOL = "Parameter that is supposed to be boolean is not"

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
