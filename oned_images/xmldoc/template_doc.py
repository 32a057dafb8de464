"""The VMTEMPLATE document (vmtemplate.xsd, vms.md §4.9): LOCK before PERMISSIONS, as
images."""

from __future__ import annotations

from oned_images.model.objects import VmTemplate
from oned_images.xmldoc.common import num, parse, perms_from, perms_xml, template_from, text
from oned_images.xmldoc.image import lock_from, lock_xml


def vmtemplate_xml(t: VmTemplate) -> str:
    return "".join((
        f"<VMTEMPLATE><ID>{t.id}</ID><UID>{t.uid}</UID><GID>{t.gid}</GID>",
        f"<UNAME>{t.uname}</UNAME><GNAME>{t.gname}</GNAME><NAME>{t.name}</NAME>",
        lock_xml(t.lock), perms_xml(t.perms), f"<REGTIME>{t.regtime}</REGTIME>",
        t.template.to_xml("TEMPLATE"), "</VMTEMPLATE>",
    ))


def vmtemplate_from(body: str) -> VmTemplate:
    el = parse(body)
    return VmTemplate(
        id=num(el, "ID"), uid=num(el, "UID"), gid=num(el, "GID"), uname=text(el, "UNAME"),
        gname=text(el, "GNAME"), name=text(el, "NAME"), lock=lock_from(el),
        perms=perms_from(el), regtime=num(el, "REGTIME"), template=template_from(el, "TEMPLATE"),
    )
