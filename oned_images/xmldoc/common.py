"""Pieces shared by every document: permissions, id collections, parsing.

Documents are written by string concatenation in oned's fixed element order
(one line, no whitespace) because that is both byte-exact and several times
faster than building an lxml tree per object.
"""

from __future__ import annotations

from lxml import etree

from oned_images.model.objects import PERM_NAMES, Permissions
from oned_images.template import Template, cdata

PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


def perms_xml(perms: Permissions) -> str:
    inner = "".join(f"<{n}>{b}</{n}>" for n, b in zip(PERM_NAMES, perms.bits, strict=True))
    return f"<PERMISSIONS>{inner}</PERMISSIONS>"


def ids_xml(name: str, ids: list[int]) -> str:
    if not ids:
        return f"<{name}></{name}>"
    # one join over the numbers: an image that 10,000 VMs use is rendered at each acquire
    return f"<{name}><ID>" + "</ID><ID>".join(map(str, sorted(ids))) + f"</ID></{name}>"


def c(name: str, value: str) -> str:
    return f"<{name}>{cdata(value)}</{name}>"


def parse(body: str) -> etree._Element:
    return etree.fromstring(body.encode("utf-8"), PARSER)


def text(el: etree._Element, name: str, default: str = "") -> str:
    child = el.find(name)
    if child is None or child.text is None:
        return default
    return child.text


def num(el: etree._Element, name: str, default: int = 0) -> int:
    value = text(el, name)
    return int(value) if value.strip() else default


def perms_from(el: etree._Element) -> Permissions:
    p = el.find("PERMISSIONS")
    if p is None:
        return Permissions()
    return Permissions([num(p, n) for n in PERM_NAMES])


def ids_from(el: etree._Element, name: str) -> list[int]:
    node = el.find(name)
    if node is None:
        return []
    return [int(t) for t in node.xpath("ID/text()")]


def template_from(el: etree._Element, name: str) -> Template:
    node = el.find(name)
    if node is None:
        return Template()
    return Template.from_element(node, replace_mode=False)
