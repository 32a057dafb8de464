"""Documents kept ready to send: already escaped for an XML-RPC ``<string>``.

Info calls serve stored bodies.  Escaping (``&``, ``<``, ``>``, CR) a 17 MB pool
listing costs more than reading it, so each body is stored a second time in
its escaped, UTF-8 encoded form and listings are byte concatenations.
"""

from __future__ import annotations


def escape(text: str) -> str:
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    if "\r" in text:
        text = text.replace("\r", "&#x0d;")
    return text


def rpc_bytes(body: str) -> bytes:
    return escape(body).encode("utf-8")


class Served:
    """A string result given as escaped UTF-8 chunks (joined once, on the wire)."""

    __slots__ = ("chunks",)

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    @classmethod
    def pool(cls, root: str, bodies: list[bytes]) -> Served:
        return cls([f"&lt;{root}&gt;".encode(), *bodies, f"&lt;/{root}&gt;".encode()])

    def preview(self, limit: int = 40) -> str:
        head = b"".join(self.chunks[:2])[: limit * 4].decode("utf-8", "replace")
        text = head.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        return text if len(text) <= limit else text[: limit - 3] + "..."
