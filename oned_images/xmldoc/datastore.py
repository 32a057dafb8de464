"""The DATASTORE document (datastore.xsd, api.md §8.3)."""

from __future__ import annotations

from oned_images.model.objects import Datastore
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


def datastore_xml(ds: Datastore) -> str:
    return "".join((
        f"<DATASTORE><ID>{ds.id}</ID><UID>{ds.uid}</UID><GID>{ds.gid}</GID>",
        f"<UNAME>{ds.uname}</UNAME><GNAME>{ds.gname}</GNAME><NAME>{ds.name}</NAME>",
        perms_xml(ds.perms),
        c("DS_MAD", ds.ds_mad), c("TM_MAD", ds.tm_mad), c("BASE_PATH", ds.base_path),
        f"<TYPE>{ds.type}</TYPE><DISK_TYPE>{ds.disk_type}</DISK_TYPE><STATE>{ds.state}</STATE>",
        ids_xml("CLUSTERS", ds.clusters),
        f"<TOTAL_MB>{ds.total_mb}</TOTAL_MB><FREE_MB>{ds.free_mb}</FREE_MB>",
        f"<USED_MB>{ds.used_mb}</USED_MB>",
        ids_xml("IMAGES", ds.images),
        ds.template.to_xml("TEMPLATE"),
        "</DATASTORE>",
    ))


def datastore_from(body: str) -> Datastore:
    el = parse(body)
    return Datastore(
        id=num(el, "ID"), uid=num(el, "UID"), gid=num(el, "GID"),
        uname=text(el, "UNAME"), gname=text(el, "GNAME"), name=text(el, "NAME"),
        perms=perms_from(el), ds_mad=text(el, "DS_MAD"), tm_mad=text(el, "TM_MAD"),
        base_path=text(el, "BASE_PATH"), type=num(el, "TYPE"), disk_type=num(el, "DISK_TYPE"),
        state=num(el, "STATE"), clusters=ids_from(el, "CLUSTERS"),
        total_mb=num(el, "TOTAL_MB"), free_mb=num(el, "FREE_MB"), used_mb=num(el, "USED_MB"),
        images=ids_from(el, "IMAGES"), template=template_from(el, "TEMPLATE"),
    )
