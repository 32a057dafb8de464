"""A request body that stores nothing: twisted.web writes a request's body into
``request.content``; a refused XML-RPC call and a streamed upload replace it with this."""

from __future__ import annotations

from typing import Any


class NullBody:
    """The file interface twisted.web uses on ``request.content``, keeping nothing."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass
