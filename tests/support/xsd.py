"""Validate daemon documents against OpenNebula's own schemas (../shared/xsd).

oned's documents carry no namespace while the schemas declare
http://opennebula.org/XMLSchema, so a copy of each document is moved into that
namespace before validation.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from lxml import etree

NS = "http://opennebula.org/XMLSchema"
ROOTS = {
    "IMAGE": "image.xsd", "IMAGE_POOL": "image_pool.xsd",
    "DATASTORE": "datastore.xsd", "DATASTORE_POOL": "datastore_pool.xsd",
    "USER": "user.xsd", "USER_POOL": "user_pool.xsd",
    "GROUP": "group.xsd", "GROUP_POOL": "group_pool.xsd",
    "ACL_POOL": "acl_pool.xsd", "OPENNEBULA_CONFIGURATION": "opennebula_configuration.xsd",
    "VM_POOL": "vm_pool.xsd", "VMTEMPLATE_POOL": "vmtemplate_pool.xsd",
    "ZONE_POOL": "zone_pool.xsd", "CLUSTER_POOL": "cluster_pool.xsd",
    "CLUSTER": "cluster.xsd", "HOST": "host.xsd", "HOST_POOL": "host_pool.xsd",
    "VMTEMPLATE": "vmtemplate.xsd", "VM": "vm.xsd",
}


def xsd_dir() -> Path:
    env = os.environ.get("ONED_XSD_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "xsd"


@functools.cache
def schema(filename: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(xsd_dir() / filename)))


def namespaced(xml: str) -> etree._Element:
    root = etree.fromstring(xml.encode("utf-8"))
    for el in root.iter():
        if isinstance(el.tag, str) and not el.tag.startswith("{"):
            el.tag = f"{{{NS}}}{el.tag}"
    return root


def validate(xml: str) -> str:
    """Raise AssertionError with the schema's complaint unless ``xml`` validates."""
    root_name = etree.fromstring(xml.encode("utf-8")).tag
    filename = ROOTS[root_name]
    sch = schema(filename)
    doc = namespaced(xml)
    if not sch.validate(doc):
        raise AssertionError(f"{root_name} does not validate against {filename}: "
                             f"{sch.error_log.last_error}\n{xml[:2000]}")
    return root_name
