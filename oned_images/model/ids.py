"""An ascending collection of object ids kept as the XML its body stores.

An image's <VMS> lists every VM that uses it: 10,000 ids for an image every VM of a
template is cloned from.  Each VM created from that template reads and writes the
image (acquire), and parsing 10,000 <ID> elements into numbers and printing them
back at each one made instantiate slow down as the pool grew.  This collection keeps
the stored text and answers the questions an acquire or release asks (is the VM
there; add it; remove it) with string operations that run at memory speed; the
numbers are parsed only when something iterates over them.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Iterator


class SortedIds:
    """Ids in ascending order, each at most once (oned's ObjectCollection)."""

    __slots__ = ("_ids", "_xml")

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._ids: list[int] | None = sorted(ids)
        self._xml: str | None = None

    @classmethod
    def from_xml(cls, inner: str) -> SortedIds | None:
        """From the text between <NAME> and </NAME> as image_xml writes it
        (``<ID>1</ID><ID>5</ID>``); None when the text has another shape (blanks,
        CDATA, …): the caller parses it the slow way then."""
        if inner and not (inner.startswith("<ID>") and inner.endswith("</ID>")):
            return None
        if any(bad in inner for bad in (" ", "\n", "\t", "\r", "<![", "/>", "-")):
            return None
        obj = cls.__new__(cls)
        obj._ids, obj._xml = None, inner
        return obj

    # -------------------------------------------------------------- internals
    def _list(self) -> list[int]:
        if self._ids is None:
            inner = self._xml or ""
            self._ids = [int(s) for s in inner[4:-5].split("</ID><ID>")] if inner else []
            self._xml = None
        return self._ids

    def _last(self) -> int | None:
        """The greatest id (the last one), read off the end of the text."""
        inner = self._xml or ""
        if not inner:
            return None
        return int(inner[inner.rfind("<ID>") + 4:-5])

    # -------------------------------------------------------------- queries
    def __contains__(self, oid: object) -> bool:
        if self._ids is not None:
            return oid in self._ids
        if not isinstance(oid, int):
            return False
        last = self._last()
        if last is None or oid > last:
            return False
        return f"<ID>{oid}</ID>" in (self._xml or "")

    def __iter__(self) -> Iterator[int]:
        return iter(self._list())

    def __len__(self) -> int:
        if self._ids is not None:
            return len(self._ids)
        return (self._xml or "").count("<ID>")

    def __bool__(self) -> bool:
        return bool(self._ids) if self._ids is not None else bool(self._xml)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SortedIds):
            return list(self) == list(other)
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))

    # -------------------------------------------------------------- changes
    def add(self, oid: int) -> bool:
        """Insert ``oid``; False when it was there already."""
        if oid in self:
            return False
        if self._ids is None:
            last = self._last()
            if last is None or oid > last:
                self._xml = f"{self._xml or ''}<ID>{oid}</ID>"
                return True
        insort(self._list(), oid)
        return True

    def discard(self, oid: int) -> bool:
        """Remove ``oid``; False when it was not there."""
        if oid not in self:
            return False
        if self._ids is None:
            self._xml = (self._xml or "").replace(f"<ID>{oid}</ID>", "", 1)
        else:
            self._ids.remove(oid)
        return True

    def xml(self, name: str) -> str:
        if self._ids is None:
            return f"<{name}>{self._xml or ''}</{name}>"
        if not self._ids:
            return f"<{name}></{name}>"
        return f"<{name}><ID>" + "</ID><ID>".join(map(str, self._ids)) + f"</ID></{name}>"
