"""The VM document (vm.xsd, vms.md §5.4) in its three forms, and its parser.

* full (``one.vm.info``): every HISTORY record, in SEQ order;
* extended (``one.vmpool.infoextended``, oned's DB body): only the current record;
* short (``one.vmpool.info``, ``VirtualMachine::to_xml_short``): a few TEMPLATE and
  USER_TEMPLATE attributes and the current record's placement fields.

The stored row keeps the full form as its body (the source of truth) and the other
two already escaped for XML-RPC, so listings are byte concatenations.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from oned_images.model.objects import History, Vm
from oned_images.template import Template
from oned_images.xmldoc.common import c, num, parse, perms_from, perms_xml, template_from, text
from oned_images.xmldoc.image import lock_from, lock_xml

#: History::to_xml element order (numbers except HOSTNAME, VM_MAD, TM_MAD)
HISTORY_FIELDS = (
    "OID", "SEQ", "HOSTNAME", "HID", "CID", "STIME", "ETIME", "VM_MAD", "TM_MAD", "DS_ID",
    "PLAN_ID", "ACTION_ID", "PSTIME", "PETIME", "RSTIME", "RETIME", "ESTIME", "EETIME",
    "ACTION", "UID", "GID", "REQUEST_ID",
)
_HISTORY_STRINGS = frozenset({"HOSTNAME", "VM_MAD", "TM_MAD"})
#: the short DISK's children, in oned's order (empty when the DISK has no such key)
SHORT_DISK = ("DISK_ID", "DATASTORE", "DATASTORE_ID", "IMAGE", "IMAGE_ID", "SIZE", "TYPE",
              "CLONE", "CLONE_TARGET", "LN_TARGET", "DISK_SNAPSHOT_TOTAL_SIZE")
#: the USER_TEMPLATE attributes the short form keeps, in its order
SHORT_USER = ("LABELS", "ERROR", "SCHED_MESSAGE", "SCHED_RANK", "SCHED_DS_RANK",
              "SCHED_REQUIREMENTS", "SCHED_DS_REQUIREMENTS", "USER_PRIORITY", "SCHED_ACTION")
BACKUPS = "<BACKUPS><BACKUP_CONFIG/><BACKUP_IDS></BACKUP_IDS></BACKUPS>"


def history_xml(h: History) -> str:
    parts = ["<HISTORY>"]
    for name in HISTORY_FIELDS:
        value = getattr(h, name.lower())
        if name == "HOSTNAME":
            parts.append(f"<HOSTNAME>{escape(value)}</HOSTNAME>")
        elif name in _HISTORY_STRINGS:
            parts.append(c(name, value))
        else:
            parts.append(f"<{name}>{value}</{name}>")
    parts.append("</HISTORY>")
    return "".join(parts)


def _records(records: list[History]) -> str:
    if not records:
        return "<HISTORY_RECORDS/>"
    return "<HISTORY_RECORDS>" + "".join(history_xml(h) for h in records) + "</HISTORY_RECORDS>"


def vm_xml(vm: Vm, all_history: bool = True) -> str:
    """The full form (every record) or, with ``all_history=False``, the extended one."""
    records = vm.history if all_history else vm.history[-1:]
    return "".join((
        f"<VM><ID>{vm.id}</ID><UID>{vm.uid}</UID><GID>{vm.gid}</GID>",
        f"<UNAME>{vm.uname}</UNAME><GNAME>{vm.gname}</GNAME><NAME>{vm.name}</NAME>",
        perms_xml(vm.perms), f"<LAST_POLL>{vm.last_poll}</LAST_POLL>",
        f"<STATE>{vm.state}</STATE><LCM_STATE>{vm.lcm_state}</LCM_STATE>",
        f"<PREV_STATE>{vm.prev_state}</PREV_STATE>",
        f"<PREV_LCM_STATE>{vm.prev_lcm_state}</PREV_LCM_STATE>",
        f"<RESCHED>{vm.resched}</RESCHED><STIME>{vm.stime}</STIME><ETIME>{vm.etime}</ETIME>",
        f"<DEPLOY_ID>{escape(vm.deploy_id)}</DEPLOY_ID>", lock_xml(vm.lock),
        "<MONITORING></MONITORING><SCHED_ACTIONS></SCHED_ACTIONS>",
        vm.template.to_xml("TEMPLATE"), vm.user_template.to_xml("USER_TEMPLATE"),
        _records(records), "".join(t.to_xml("SNAPSHOTS") for t in vm.snapshots), BACKUPS,
        "</VM>",
    ))


def _plain(name: str, value: str | None) -> str:
    return f"<{name}>{escape(value or '')}</{name}>"


def _vector_cdata(name: str, value: str | dict) -> str:
    if isinstance(value, str):
        return c(name, value)
    return f"<{name}>" + "".join(c(k, value[k]) for k in sorted(value)) + f"</{name}>"


def vm_short_xml(vm: Vm) -> str:
    """VirtualMachine::to_xml_short (vms.md §5.4)."""
    t = vm.template
    disks = []
    for disk in t.get_all("DISK"):
        d = disk if isinstance(disk, dict) else {}
        disks.append("<DISK>" + "".join(
            c(k, d[k]) if k in d else f"<{k}></{k}>" for k in SHORT_DISK) + "</DISK>")
    graphics = t.get_vector("GRAPHICS")
    user = vm.user_template
    if len(user) == 0:
        user_xml = "<USER_TEMPLATE/>"
    else:
        kept = [_vector_cdata(name, value) for name in SHORT_USER
                for value in user.get_all(name)]
        user_xml = "<USER_TEMPLATE>" + "".join(kept) + "</USER_TEMPLATE>"
    if vm.history:
        h = vm.history[-1]
        hist = (f"<HISTORY_RECORDS><HISTORY><OID>{h.oid}</OID><SEQ>{h.seq}</SEQ>"
                f"{c('HOSTNAME', h.hostname)}<HID>{h.hid}</HID><CID>{h.cid}</CID>"
                f"<DS_ID>{h.ds_id}</DS_ID>{c('VM_MAD', h.vm_mad)}{c('TM_MAD', h.tm_mad)}"
                f"{c('ACTION', str(h.action))}</HISTORY></HISTORY_RECORDS>")
    else:
        hist = "<HISTORY_RECORDS/>"
    return "".join((
        f"<VM><ID>{vm.id}</ID><UID>{vm.uid}</UID><GID>{vm.gid}</GID>",
        f"<UNAME>{vm.uname}</UNAME><GNAME>{vm.gname}</GNAME><NAME>{vm.name}</NAME>",
        f"<LAST_POLL>{vm.last_poll}</LAST_POLL>",
        f"<STATE>{vm.state}</STATE><LCM_STATE>{vm.lcm_state}</LCM_STATE>",
        f"<RESCHED>{vm.resched}</RESCHED><STIME>{vm.stime}</STIME><ETIME>{vm.etime}</ETIME>",
        f"<DEPLOY_ID>{escape(vm.deploy_id)}</DEPLOY_ID>",
        f"<LOCK><LOCKED>{vm.lock.locked}</LOCKED></LOCK>" if vm.lock else "",
        "<TEMPLATE>", _plain("CPU", t.get("CPU")), _plain("MEMORY", t.get("MEMORY")),
        _plain("VCPU", t.get("VCPU")), *disks,
        _vector_cdata("GRAPHICS", graphics) if graphics is not None else "",
        "</TEMPLATE><MONITORING/>", user_xml, hist, "</VM>",
    ))


def _history_from(el) -> History:
    values = {}
    for name in HISTORY_FIELDS:
        key = name.lower()
        values[key] = text(el, name) if name in _HISTORY_STRINGS else num(el, name)
    return History(**values)


def vm_from(body: str) -> Vm:
    el = parse(body)
    records = el.find("HISTORY_RECORDS")
    return Vm(
        id=num(el, "ID"), uid=num(el, "UID"), gid=num(el, "GID"), uname=text(el, "UNAME"),
        gname=text(el, "GNAME"), name=text(el, "NAME"), perms=perms_from(el),
        last_poll=num(el, "LAST_POLL"), state=num(el, "STATE"),
        lcm_state=num(el, "LCM_STATE"), prev_state=num(el, "PREV_STATE"),
        prev_lcm_state=num(el, "PREV_LCM_STATE"), resched=num(el, "RESCHED"),
        stime=num(el, "STIME"), etime=num(el, "ETIME"), deploy_id=text(el, "DEPLOY_ID"),
        lock=lock_from(el), template=template_from(el, "TEMPLATE"),
        user_template=template_from(el, "USER_TEMPLATE"),
        history=[_history_from(h) for h in records] if records is not None else [],
        snapshots=[Template.from_element(n, replace_mode=False)
                   for n in el.findall("SNAPSHOTS")],
    )

