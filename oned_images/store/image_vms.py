"""The ids of the VMs that use each image, one row per (image, VM): an image's <VMS>.

An image every VM of a template is cloned from lists 10,000 VM ids.  Kept inside the
image's body, each acquire and release rewrote that body and its served copy (about
300 kB for two images at 10,000 VMs), so one.template.instantiate cost more as the
pool grew.  Here an acquire inserts one row and a release deletes one; the stored
body keeps an empty ``<VMS></VMS>`` and the ids are spliced into it when the
document is served (:func:`splice_one`, :func:`splice_page`), so clients read the
same bytes as before.  Called inside Database.run transactions.
"""

from __future__ import annotations

from collections.abc import Iterator

from oned_images.model.ids import SortedIds
from oned_images.model.objects import Image
from oned_images.store.compiled import Compiled
from oned_images.store.models import ImageVmRow

T = ImageVmRow
_MARK_IMAGE, _MARK_VM = -(2**62) + 7, -(2**62) + 11

#: the empty element of a stored body as its served copy escapes it; the first one
#: after the end of FS is the element itself (xmldoc.image._cut_vms)
_EMPTY = b"&lt;/DATASTORE&gt;&lt;VMS&gt;&lt;/VMS&gt;"
_FS_END = b"]]&gt;&lt;/FS&gt;"

_HAS = Compiled(lambda image, vm: T.select(T.vm_oid).where(
    (T.image_oid == image) & (T.vm_oid == vm)).limit(1), _MARK_IMAGE, _MARK_VM)
_DROP = Compiled(lambda image, vm: T.delete().where(
    (T.image_oid == image) & (T.vm_oid == vm)), _MARK_IMAGE, _MARK_VM)
_ADD = Compiled(lambda image, vm: T.insert(image_oid=image, vm_oid=vm), _MARK_IMAGE, _MARK_VM)
_DROP_IMAGE = Compiled(lambda image: T.delete().where(T.image_oid == image), _MARK_IMAGE)
_IDS = Compiled(lambda image: T.select(T.vm_oid).where(T.image_oid == image)
                .order_by(T.vm_oid), _MARK_IMAGE)


def contains(image_id: int, vm_id: int) -> bool:
    return _HAS.first(image_id, vm_id) is not None


class StoredVms:
    """An image's <VMS> as its rows: membership, add and discard ask or change one
    row (kept until :meth:`flush`, which write_image calls); iterating reads them all.
    ``loaded`` reads them at once (read_image: its image may be used outside the
    transaction)."""

    __slots__ = ("image_id", "_added", "_removed", "_all")

    def __init__(self, image_id: int, loaded: bool = False) -> None:
        self.image_id = image_id
        self._added: set[int] = set()
        self._removed: set[int] = set()
        self._all: set[int] | None = set(ids(image_id)) if loaded else None

    def __contains__(self, oid: object) -> bool:
        if not isinstance(oid, int):
            return False
        if oid in self._added:
            return True
        if oid in self._removed:
            return False
        if self._all is not None:
            return oid in self._all
        return contains(self.image_id, oid)

    def add(self, oid: int) -> bool:
        if oid in self:
            return False
        if oid in self._removed:
            self._removed.discard(oid)
        else:
            self._added.add(oid)
        return True

    def discard(self, oid: int) -> bool:
        if oid not in self:
            return False
        if oid in self._added:
            self._added.discard(oid)
        else:
            self._removed.add(oid)
        return True

    def _list(self) -> list[int]:
        if self._all is None:
            self._all = set(ids(self.image_id))
        return sorted((self._all - self._removed) | self._added)

    def __iter__(self) -> Iterator[int]:
        return iter(self._list())

    def __len__(self) -> int:
        return len(self._list())

    def __bool__(self) -> bool:
        return bool(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StoredVms, SortedIds, list)):
            return self._list() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._list())

    def xml(self, name: str) -> str:
        return SortedIds(self._list()).xml(name)

    def flush(self) -> None:
        """The changes into the rows (inside the transaction that writes the image)."""
        for oid in sorted(self._added):
            _ADD.execute(self.image_id, oid)
        for oid in sorted(self._removed):
            _DROP.execute(self.image_id, oid)
        if self._all is not None:
            self._all = (self._all - self._removed) | self._added
        self._added.clear()
        self._removed.clear()


def attach(img: Image, loaded: bool = False) -> None:
    """``img.vms`` becomes its rows; ids its body listed itself (a body written by
    hand or by another tool) join them, to be stored as rows at the next write."""
    listed = list(img.vms) if img.vms else []
    img.vms = StoredVms(img.id, loaded)  # type: ignore[assignment]
    for oid in listed:
        img.vms.add(oid)


def store(image_id: int, vms: object) -> None:
    """write_image's half for the ids: a :class:`StoredVms` writes its changes; ids
    of a plain list (set by other code, or listed by a body written by hand) join
    the rows; an empty one (parsed from a stored body) changes nothing."""
    if isinstance(vms, StoredVms) and vms.image_id == image_id:
        vms.flush()
        return
    for oid in sorted(set(vms)):  # type: ignore[call-overload]
        if not contains(image_id, oid):
            _ADD.execute(image_id, oid)


def ids(image_id: int) -> SortedIds:
    return SortedIds(int(r[0]) for r in _IDS.execute(image_id).fetchall())


def drop(image_id: int, vm_id: int) -> None:
    """One id out of an image's VMS (fsck: a row naming a VM that is gone)."""
    _DROP.execute(image_id, vm_id)


def drop_image(image_id: int) -> None:
    """The image row is gone: no VMS of it is left behind."""
    _DROP_IMAGE.execute(image_id)


def ids_of(image_ids: list[int]) -> dict[int, list[int]]:
    """The VMS of several images (one query: a page names its images, a whole pool
    reads its id range rather than a 10,000-term IN)."""
    if not image_ids:
        return {}
    if len(image_ids) <= _IN_SIZES[-1]:
        wanted = set(image_ids)
        ids = sorted(wanted)
        size = next(s for s in _IN_SIZES if s >= len(ids))
        ids += [ids[-1]] * (size - len(ids))  # a repeated id changes nothing in an IN
        rows = _in_query(size).execute(*ids).fetchall()
    else:
        rows = _RANGE.execute(min(image_ids), max(image_ids)).fetchall()
        if not rows:
            return {}
        wanted = set(image_ids)
    out: dict[int, list[int]] = {}
    for image, vm in rows:
        if image in wanted:
            out.setdefault(int(image), []).append(int(vm))
    return out


_RANGE = Compiled(lambda low, high: T.select(T.image_oid, T.vm_oid)
                  .where((T.image_oid >= low) & (T.image_oid <= high))
                  .order_by(T.image_oid, T.vm_oid), _MARK_IMAGE, _MARK_VM)
#: the IN query of a page, compiled once per size (building its SQL cost more than
#: the rest of a page of 200); a page's ids are padded to the next size
_IN_SIZES = (10, 50, 200, 500)
_IN: dict[int, Compiled] = {}


def _in_query(count: int) -> Compiled:
    query = _IN.get(count)
    if query is None:
        markers = [_MARK_IMAGE + 2 * n for n in range(count)]
        query = _IN[count] = Compiled(lambda *ids: T.select(T.image_oid, T.vm_oid)
                                      .where(T.image_oid.in_(list(ids)))
                                      .order_by(T.image_oid, T.vm_oid), *markers)
    return query


def _filled(served: bytes, vms: list[int]) -> bytes:
    """The served copy with ``vms`` in its empty <VMS> element (a body of another
    shape, which keeps its own ids, is left as it is)."""
    if not vms:
        return served
    fs_end = served.find(_FS_END)
    at = served.find(_EMPTY, fs_end if fs_end >= 0 else 0)
    if at < 0:
        return served
    cut = at + len(_EMPTY) - len(b"&lt;/VMS&gt;")
    inner = b"".join(b"&lt;ID&gt;%d&lt;/ID&gt;" % v for v in vms)
    return served[:cut] + inner + served[cut:]


def splice_one(image_id: int, served: bytes) -> bytes:
    """One.image.info's document: the stored copy with the image's VMS."""
    return _filled(served, list(ids(image_id)))


def splice_rows(rows: list[tuple[int, bytes]]) -> list[bytes]:
    """A listing page from its (image id, served body) rows: each body with its
    image's VMS (only the bodies of images that VMs use are rewritten)."""
    bodies = [r[1] for r in rows]
    vms = ids_of([r[0] for r in rows])
    if vms:
        for i, (oid, body) in enumerate(rows):
            if oid in vms:
                bodies[i] = _filled(body, vms[oid])
    return bodies
