"""The IMAGE document (api.md §4) and the IMAGE_POOL wrapper."""

from __future__ import annotations

from lxml import etree

from oned_images.model.ids import SortedIds
from oned_images.model.objects import Image, Lock
from oned_images.xmldoc.common import (
    c,
    ids_from,
    ids_xml,
    num,
    parse,
    perms_from,
    perms_xml,
    template_from,
    text,
)


def lock_xml(lock: Lock | None) -> str:
    if lock is None:
        return ""
    return (
        f"<LOCK><LOCKED>{lock.locked}</LOCKED><OWNER>{lock.owner}</OWNER>"
        f"<TIME>{lock.time}</TIME><REQ_ID>{lock.req_id}</REQ_ID></LOCK>"
    )


def lock_from(el: etree._Element) -> Lock | None:
    node = el.find("LOCK")
    if node is None:
        return None
    return Lock(num(node, "LOCKED"), num(node, "OWNER"), num(node, "TIME"), num(node, "REQ_ID"))


def image_xml(img: Image, vms: bool = True) -> str:
    """The document; ``vms=False`` leaves <VMS> empty, as the stored body keeps it
    (the ids are rows of image_vms, spliced in when served)."""
    return "".join((
        f"<IMAGE><ID>{img.id}</ID><UID>{img.uid}</UID><GID>{img.gid}</GID>",
        f"<UNAME>{img.uname}</UNAME><GNAME>{img.gname}</GNAME><NAME>{img.name}</NAME>",
        lock_xml(img.lock),
        perms_xml(img.perms),
        f"<TYPE>{img.type}</TYPE><DISK_TYPE>{img.disk_type}</DISK_TYPE>",
        f"<PERSISTENT>{img.persistent}</PERSISTENT><REGTIME>{img.regtime}</REGTIME>",
        f"<MODTIME>{img.modtime}</MODTIME>",
        c("SOURCE", img.source), c("PATH", img.path), c("FORMAT", img.format), c("FS", img.fs),
        f"<SIZE>{img.size}</SIZE><STATE>{img.state}</STATE><PREV_STATE>{img.prev_state}</PREV_STATE>",
        f"<RUNNING_VMS>{img.running_vms}</RUNNING_VMS><CLONING_OPS>{img.cloning_ops}</CLONING_OPS>",
        f"<CLONING_ID>{img.cloning_id}</CLONING_ID>",
        f"<TARGET_SNAPSHOT>{img.target_snapshot}</TARGET_SNAPSHOT>",
        f"<DATASTORE_ID>{img.datastore_id}</DATASTORE_ID><DATASTORE>{img.datastore}</DATASTORE>",
        (img.vms if isinstance(img.vms, SortedIds) else SortedIds(img.vms)).xml("VMS")
        if vms else "<VMS></VMS>",
        ids_xml("CLONES", img.clones), ids_xml("APP_CLONES", img.app_clones),
        img.template.to_xml("TEMPLATE"),
        img.snapshots.to_xml("SNAPSHOTS"),
        img.backup_increments.to_xml("BACKUP_INCREMENTS"),
        ids_xml("BACKUP_DISK_IDS", img.backup_disk_ids),
        "</IMAGE>",
    ))


def _cut_vms(body: str) -> tuple[str, SortedIds | None]:
    """The body without its <VMS> ids, and those ids kept as text (model/ids.py).
    VMS follows DATASTORE, after the last CDATA of the fixed part (FS) and before any
    user text (TEMPLATE), so the first ``</DATASTORE><VMS>`` after ``]]></FS>`` is the
    element itself; a body of another shape is parsed whole."""
    fs_end = body.find("]]></FS>")
    start = body.find("</DATASTORE><VMS>", fs_end) if fs_end >= 0 else -1
    if start < 0 or "CDATA" in body[fs_end:start]:
        return body, None
    start += len("</DATASTORE><VMS>")
    end = body.find("</VMS>", start)
    ids = SortedIds.from_xml(body[start:end]) if end >= 0 else None
    if ids is None:
        return body, None
    return body[:start] + body[end:], ids


def image_from(body: str) -> Image:
    body, vms = _cut_vms(body)
    el = parse(body)
    return Image(
        id=num(el, "ID"), uid=num(el, "UID"), gid=num(el, "GID"),
        uname=text(el, "UNAME"), gname=text(el, "GNAME"), name=text(el, "NAME"),
        lock=lock_from(el), perms=perms_from(el),
        type=num(el, "TYPE"), disk_type=num(el, "DISK_TYPE"), persistent=num(el, "PERSISTENT"),
        regtime=num(el, "REGTIME"), modtime=num(el, "MODTIME"),
        source=text(el, "SOURCE"), path=text(el, "PATH"), format=text(el, "FORMAT"),
        fs=text(el, "FS"), size=num(el, "SIZE"), state=num(el, "STATE"),
        prev_state=num(el, "PREV_STATE"), running_vms=num(el, "RUNNING_VMS"),
        cloning_ops=num(el, "CLONING_OPS"), cloning_id=num(el, "CLONING_ID", -1),
        target_snapshot=num(el, "TARGET_SNAPSHOT", -1), datastore_id=num(el, "DATASTORE_ID"),
        datastore=text(el, "DATASTORE"),
        vms=vms if vms is not None else SortedIds(ids_from(el, "VMS")), clones=ids_from(el, "CLONES"),
        app_clones=ids_from(el, "APP_CLONES"), template=template_from(el, "TEMPLATE"),
        snapshots=template_from(el, "SNAPSHOTS"),
        backup_increments=template_from(el, "BACKUP_INCREMENTS"),
        backup_disk_ids=ids_from(el, "BACKUP_DISK_IDS"),
    )


def pool_xml(root: str, bodies: list[str]) -> str:
    return f"<{root}>" + "".join(bodies) + f"</{root}>"


def strip_vms(body: str) -> tuple[str, list[int] | None]:
    """The body with an empty <VMS></VMS> and the ids it listed (store/image_vms.py
    keeps them in rows); None for a body of another shape."""
    new, ids = _cut_vms(body)
    return (new, list(ids)) if ids is not None else (body, None)
