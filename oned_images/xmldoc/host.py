"""The HOST document (host.xsd, vms.md §6.2) and the HOST_POOL wrapper."""

from __future__ import annotations

from lxml import etree

from oned_images.model.objects import Host
from oned_images.xmldoc.common import c, ids_from, ids_xml, num, parse, template_from, text


def host_xml(h: Host) -> str:
    return "".join((
        f"<HOST><ID>{h.id}</ID><NAME>{h.name}</NAME><STATE>{h.state}</STATE>",
        f"<PREV_STATE>{h.prev_state}</PREV_STATE>", c("IM_MAD", h.im_mad), c("VM_MAD", h.vm_mad),
        f"<CLUSTER_ID>{h.cluster_id}</CLUSTER_ID><CLUSTER>{h.cluster}</CLUSTER>",
        f"<HOST_SHARE><MEM_USAGE>{h.mem_usage}</MEM_USAGE><CPU_USAGE>{h.cpu_usage}</CPU_USAGE>",
        f"<TOTAL_MEM>{h.total_mem}</TOTAL_MEM><TOTAL_CPU>{h.total_cpu}</TOTAL_CPU>",
        f"<MAX_MEM>{h.max_mem}</MAX_MEM><MAX_CPU>{h.max_cpu}</MAX_CPU>",
        f"<RUNNING_VMS>{h.running_vms}</RUNNING_VMS><VMS_THREAD>{h.vms_thread}</VMS_THREAD>",
        "<DATASTORES>", c("DISK_USAGE", str(h.disk_usage)), c("FREE_DISK", str(h.free_disk)),
        c("MAX_DISK", str(h.max_disk)), c("USED_DISK", str(h.used_disk)), "</DATASTORES>",
        h.pci_xml, h.numa_xml, "</HOST_SHARE>",
        ids_xml("VMS", h.vms), h.template.to_xml("TEMPLATE"), h.monitoring_xml,
        "</HOST>",
    ))


def host_from(body: str) -> Host:
    el = parse(body)
    share = el.find("HOST_SHARE")
    ds = share.find("DATASTORES")
    pci = share.find("PCI_DEVICES")
    numa = share.find("NUMA_NODES")
    return Host(
        id=num(el, "ID"), name=text(el, "NAME"), state=num(el, "STATE"),
        prev_state=num(el, "PREV_STATE"), im_mad=text(el, "IM_MAD"), vm_mad=text(el, "VM_MAD"),
        cluster_id=num(el, "CLUSTER_ID"), cluster=text(el, "CLUSTER"),
        mem_usage=num(share, "MEM_USAGE"), cpu_usage=num(share, "CPU_USAGE"),
        total_mem=num(share, "TOTAL_MEM"), total_cpu=num(share, "TOTAL_CPU"),
        max_mem=num(share, "MAX_MEM"), max_cpu=num(share, "MAX_CPU"),
        running_vms=num(share, "RUNNING_VMS"), vms_thread=num(share, "VMS_THREAD", 1),
        disk_usage=num(ds, "DISK_USAGE"), free_disk=num(ds, "FREE_DISK"),
        max_disk=num(ds, "MAX_DISK"), used_disk=num(ds, "USED_DISK"),
        pci_xml=nested_xml(pci, "PCI_DEVICES"), numa_xml=nested_xml(numa, "NUMA_NODES"),
        vms=ids_from(el, "VMS"), template=template_from(el, "TEMPLATE"),
        monitoring_xml=nested_xml(el.find("MONITORING"), "MONITORING"),
    )


#: leaves written without CDATA in oned's nested host sections (numbers it prints itself).
PLAIN_LEAVES = frozenset({"TIMESTAMP", "ID"})


def nested_xml(el: etree._Element | None, name: str) -> str:
    """A nested section (PCI_DEVICES, NUMA_NODES, MONITORING) written back as oned writes
    it: leaf values CDATA, except MONITORING's own TIMESTAMP and ID; an empty MONITORING
    is ``<MONITORING/>``, the other empty sections ``<X></X>``."""
    if el is None or len(el) == 0:
        return "<MONITORING/>" if name == "MONITORING" else f"<{name}></{name}>"

    def walk(node: etree._Element, depth: int) -> str:
        if len(node) == 0:
            value = node.text or ""
            if depth == 1 and name == "MONITORING" and node.tag in PLAIN_LEAVES:
                return f"<{node.tag}>{value}</{node.tag}>"
            return c(node.tag, value)
        return f"<{node.tag}>" + "".join(walk(ch, depth + 1) for ch in node) + f"</{node.tag}>"

    return walk(el, 0)
