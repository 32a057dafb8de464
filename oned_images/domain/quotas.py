"""Quotas of users and groups (oned's Quotas, QuotaDatastore, QuotaVirtualMachine,
QuotaImage), api.md §6.7, vms.md §5.13.

A user or group may have a QUOTAS document (tables ``user_quotas`` / ``group_quotas``, as
oned's) with four sections: DATASTORE_QUOTA (one DATASTORE vector per datastore: IMAGES,
SIZE in MB), NETWORK_QUOTA (kept as stored, never charged here), VM_QUOTA (one VM vector:
VMS, RUNNING_VMS, CPU, RUNNING_CPU, MEMORY, RUNNING_MEMORY, SYSTEM_DISK_SIZE) and
IMAGE_QUOTA (one IMAGE vector per image: RVMS, the VMs running it).  Every limit has its
``_USED`` counter.  A limit of -1 means "the default" (DEFAULT_USER_QUOTAS /
DEFAULT_GROUP_QUOTAS in ``system_attributes``), -2 unlimited.  oneadmin (uid 0) and the
oneadmin group (gid 0) are never accounted.

Every function taking no ``db`` runs inside the caller's DB transaction and locks the
quota rows it changes (users before groups, each by ascending id), so a charge commits
or rolls back together with the image or VM change it belongs to, and concurrent charges
against one limit are serialised by the row lock.  Quota rows are always the last rows a
transaction locks (after images, datastores and VMs), so no two paths wait on each other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from lxml import etree

from oned_images import errors
from oned_images.store.models import (
    GroupQuotasRow,
    GroupRow,
    SystemAttributeRow,
    UserQuotasRow,
    UserRow,
)
from oned_images.store.pools import for_update
from oned_images.template import Template, cdata

DEFAULT = -1.0
UNLIMITED = -2.0
#: the sections of a quotas document, in the order oned prints them
SECTIONS = ("DATASTORE", "NETWORK", "VM", "IMAGE")
#: each section's metrics, in the order their limits are checked (QuotaDatastore::
#: DS_METRICS, QuotaVirtualMachine::VM_METRICS, QuotaImage::IMAGE_METRICS)
SECTION_METRICS: dict[str, tuple[str, ...]] = {
    "DATASTORE": ("SIZE", "IMAGES"),
    "NETWORK": ("LEASES",),
    "VM": ("VMS", "RUNNING_VMS", "CPU", "RUNNING_CPU", "MEMORY", "RUNNING_MEMORY",
           "SYSTEM_DISK_SIZE"),
    "IMAGE": ("RVMS",),
}
METRICS = SECTION_METRICS["DATASTORE"]
VM_METRICS = SECTION_METRICS["VM"]
USER, GROUP = "user", "group"
DEFAULT_ROOT = {USER: "DEFAULT_USER_QUOTAS", GROUP: "DEFAULT_GROUP_QUOTAS"}
_INT_ID = re.compile(r"^[+-]?\d+$")

#: one quota vector (DATASTORE, VM, IMAGE …): its ID, limits and counters as printed.
Entry = dict[str, str]
#: a whole quotas document: section name -> its vectors, in stored order.
Doc = dict[str, list[Entry]]
#: what one request adds to (or takes from) a section's counters, per metric.
Usage = Mapping[str, float]


def float_str(value: float) -> str:
    """one_util::float_to_str: whole numbers without decimals, others with two."""
    return f"{value:.0f}" if value == math.ceil(value) else f"{value:.2f}"


def _num(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def empty() -> Doc:
    return {section: [] for section in SECTIONS}


# ------------------------------------------------------------------ documents
def parse_doc(xml: str | None) -> Doc:
    """The vectors of every section of a stored QUOTAS / DEFAULT_*_QUOTAS document."""
    doc = empty()
    if not xml:
        return doc
    root = etree.fromstring(xml.encode("utf-8"))
    for section in SECTIONS:
        doc[section] = [{child.tag: child.text or "" for child in vector}
                        for vector in root.iterfind(f"{section}_QUOTA/{section}")]
    return doc


def parse_entries(xml: str | None) -> list[Entry]:
    """The DATASTORE vectors of a stored document."""
    return parse_doc(xml)["DATASTORE"]


def section_xml(section: str, entries: Iterable[Entry]) -> str:
    """One ``<X_QUOTA>`` element: each vector's children sorted by name (a
    VectorAttribute's map order), the values as CDATA."""
    parts = [f"<{section}_QUOTA>"]
    for entry in entries:
        parts.append(f"<{section}>")
        parts.extend(f"<{k}>{cdata(entry[k])}</{k}>" for k in sorted(entry))
        parts.append(f"</{section}>")
    parts.append(f"</{section}_QUOTA>")
    return "".join(parts)


def datastore_quota_xml(entries: Iterable[Entry]) -> str:
    return section_xml("DATASTORE", entries)


def sections_xml(doc: Doc) -> str:
    """Quotas::to_xml: the four sections in oned's order."""
    return "".join(section_xml(s, doc.get(s, [])) for s in SECTIONS)


def quotas_xml(oid: int, doc: Doc) -> str:
    """The user_quotas / group_quotas body (what the pools list after each object)."""
    return f"<QUOTAS><ID>{oid}</ID>{sections_xml(doc)}</QUOTAS>"


def defaults_xml(kind: str, doc: Doc) -> str:
    root = DEFAULT_ROOT[kind]
    return f"<{root}>{sections_xml(doc)}</{root}>"


# ------------------------------------------------------------------ storage
def _model(kind: str):
    return UserQuotasRow if kind == USER else GroupQuotasRow


def read(kind: str, oid: int, lock: bool = False, create: bool = True) -> Doc:
    """A user's or group's document; with ``lock`` the row is locked for the rest of the
    transaction, and first created if missing unless ``create`` is false (INSERT … ON
    CONFLICT DO NOTHING, so two first charges on PostgreSQL lock the same row)."""
    model = _model(kind)
    if lock and create:
        model.insert(oid=oid, body=quotas_xml(oid, empty())).on_conflict_ignore().execute()
    query = model.select(model.body).where(model.oid == oid)
    row = (for_update(query) if lock else query).tuples().first()
    return parse_doc(row[0] if row else None)


def write(kind: str, oid: int, doc: Doc) -> None:
    model = _model(kind)
    model.update(body=quotas_xml(oid, doc)).where(model.oid == oid).execute()


def drop(kind: str, oid: int) -> None:
    """A deleted user's or group's quotas go with it (UserPool::drop)."""
    model = _model(kind)
    model.delete().where(model.oid == oid).execute()


def all_rows(kind: str) -> dict[int, Doc]:
    model = _model(kind)
    return {oid: parse_doc(body) for oid, body in model.select(model.oid, model.body)
            .tuples()}


def read_defaults(kind: str, lock: bool = False) -> Doc:
    name = DEFAULT_ROOT[kind]
    if lock:
        SystemAttributeRow.insert(name=name, body=defaults_xml(kind, empty())) \
            .on_conflict_ignore().execute()
    query = SystemAttributeRow.select(SystemAttributeRow.body).where(
        SystemAttributeRow.name == name)
    row = (for_update(query) if lock else query).tuples().first()
    return parse_doc(row[0] if row else None)


def write_defaults(kind: str, doc: Doc) -> None:
    SystemAttributeRow.update(body=defaults_xml(kind, doc)).where(
        SystemAttributeRow.name == DEFAULT_ROOT[kind]).execute()


# ------------------------------------------------------------------ accounting
def _find(entries: list[Entry], section: str, qid: str) -> Entry | None:
    """Quota::get_quota: the vector of ``qid``; the VM section's global vector is the
    one without CLUSTER_IDS (QuotaVirtualMachine::get_quota)."""
    for entry in entries:
        if section == "VM":
            if not entry.get("CLUSTER_IDS"):
                return entry
        elif entry.get("ID") == qid:
            return entry
    return None


def _cleanup(entries: list[Entry], section: str, qid: str, is_default: bool) -> None:
    """Quota::cleanup_quota: a vector with no usage and only implicit limits goes."""
    implicit = UNLIMITED if is_default else DEFAULT
    entry = _find(entries, section, qid)
    if entry is None:
        return
    if all(_num(entry.get(f"{m}_USED")) == 0 and _num(entry.get(m)) == implicit
           for m in SECTION_METRICS[section]):
        entries.remove(entry)


def _check_add(doc: Doc, defaults: Doc, who: str, section: str, qid: str, usage: Usage,
               check: bool = True) -> None:
    """Quota::check_quota on one vector of ``doc``: a missing vector is created with
    default limits; every requested limit is checked first (in the section's metric
    order), then the counters move.  ``who`` prefixes the refusal (``user [5]``)."""
    entries = doc[section]
    entry = _find(entries, section, qid)
    metrics = SECTION_METRICS[section]
    if entry is None:
        entry = {"ID": qid} if qid else {}
        for metric in metrics:
            entry[metric] = float_str(DEFAULT)
            entry[f"{metric}_USED"] = "0"
        entries.append(entry)
    fallback = _find(defaults[section], section, qid)
    for metric in metrics if check else ():
        if metric not in usage:
            continue
        limit = _num(entry.get(metric))
        if limit == DEFAULT:
            limit = _num(fallback.get(metric)) if fallback else UNLIMITED
        if limit != UNLIMITED and _num(entry.get(f"{metric}_USED")) + usage[metric] > limit:
            where = f" with ID: {qid}" if qid else ""
            raise errors.authorization(
                f"{who} limit of {limit:g} reached for {metric} quota in {section}{where}")
    for metric in metrics:
        if metric in usage:
            entry[f"{metric}_USED"] = float_str(_num(entry.get(f"{metric}_USED"))
                                                + usage[metric])


def _del(doc: Doc, section: str, qid: str, usage: Usage) -> None:
    """Quota::del_quota: counters down (never refused), then cleanup."""
    entry = _find(doc[section], section, qid)
    if entry is None:
        return
    for metric in SECTION_METRICS[section]:
        if metric in usage:
            entry[f"{metric}_USED"] = float_str(_num(entry.get(f"{metric}_USED"))
                                                - usage[metric])
    _cleanup(doc[section], section, qid, is_default=False)


def _owner_exists(kind: str, oid: int) -> bool:
    """A VM of a deleted user or group gets no quota row back for it."""
    model = UserRow if kind == USER else GroupRow
    return model.select(model.oid).where(model.oid == oid).exists()


def sides(uid: int, gid: int) -> list[tuple[str, int]]:
    """Request::quota_authorization: nobody for oneadmin / group oneadmin, nor for -1."""
    out = []
    if uid not in (0, -1):
        out.append((USER, uid))
    if gid not in (0, -1):
        out.append((GROUP, gid))
    return out


#: one request: (section, quota id, usage) in the order oned checks them
Request = list[tuple[str, str, Usage]]


def _apply(uid: int, gid: int, request: Request, check: bool = True,
           dry_run: bool = False) -> None:
    """Charge ``request`` to the user, then the group (each document locked, checked
    and written as a whole), or raise AUTHORIZATION with oned's text (the transaction
    then rolls back whatever was charged).  ``dry_run``: only check."""
    for kind, oid in sides(uid, gid):
        doc = read(kind, oid, lock=True)
        defaults = read_defaults(kind)
        for section, qid, usage in request:
            _check_add(doc, defaults, f"{kind} [{oid}]", section, qid, usage, check)
        if not dry_run:
            write(kind, oid, doc)


def _release(uid: int, gid: int, request: Request) -> None:
    """Take ``request`` back; a user or group deleted since (its row went with it) gets
    no new row."""
    for kind, oid in sides(uid, gid):
        doc = read(kind, oid, lock=True, create=False)
        for section, qid, usage in request:
            _del(doc, section, qid, usage)
        write(kind, oid, doc)


def _ds_request(ds_id: int, size: float, images: int) -> Request:
    return [("DATASTORE", str(ds_id), {"SIZE": float(size), "IMAGES": float(images)})]


def charge(uid: int, gid: int, ds_id: int, size: float, images: int = 1) -> None:
    """Charge an image (IMAGES, SIZE MB) to a user and a group, or raise AUTHORIZATION
    with oned's text (the transaction then rolls back whatever was charged)."""
    _apply(uid, gid, _ds_request(ds_id, size, images))


def count(uid: int, gid: int, ds_id: int, size: float, images: int = 1) -> None:
    """Add usage without checking a limit (counting images that already exist)."""
    _apply(uid, gid, _ds_request(ds_id, size, images), check=False)


def release(uid: int, gid: int, ds_id: int, size: float, images: int = 1) -> None:
    _release(uid, gid, _ds_request(ds_id, size, images))


def lock_sides(old: tuple[int, int], new: tuple[int, int]) -> tuple[tuple[int, int],
                                                                   tuple[int, int]]:
    """chown's rows locked in one order (users, then groups, by id) before any changes,
    so two chowns in opposite directions cannot deadlock; rows of the new side are
    created (its user and group exist), the old side's only locked.  Returns (old, new)
    with the unchanged side as -1 (PoolObjectSQL chown's att_new / att_old)."""
    (old_uid, old_gid), (new_uid, new_gid) = old, new
    if new_uid == old_uid:
        new_uid = old_uid = -1
    if new_gid == old_gid:
        new_gid = old_gid = -1
    new_side = set(sides(new_uid, new_gid))
    for kind, oid in sorted(new_side | set(sides(old_uid, old_gid)),
                            key=lambda k: (k[0] != USER, k[1])):
        read(kind, oid, lock=True, create=(kind, oid) in new_side)
    return (old_uid, old_gid), (new_uid, new_gid)


def move(old: tuple[int, int], new: tuple[int, int], ds_id: int, size: float) -> None:
    """chown of an image: charge the new owner and/or group (only the side that
    changes), then release the old one."""
    (old_uid, old_gid), (new_uid, new_gid) = lock_sides(old, new)
    charge(new_uid, new_gid, ds_id, size)
    release(old_uid, old_gid, ds_id, size)


# ------------------------------------------------------------------ VM and IMAGE quotas
def vm_request(usage: Usage, images: Iterable[int] = ()) -> Request:
    """Quotas::quota_check(VIRTUALMACHINE): the VM vector, then one IMAGE vector per
    image DISK (RVMS 1 each, so two DISKs of one image count twice)."""
    request: Request = [("VM", "", usage)] if usage else []
    request.extend(("IMAGE", str(iid), {"RVMS": 1.0}) for iid in images)
    return request


def ds_request(datastores: Mapping[int, float]) -> Request:
    """VirtualMachineDisks::image_ds_quotas: SIZE (IMAGES 0) per datastore that holds a
    disk of the VM itself (TM target SELF)."""
    return [("DATASTORE", str(ds), {"SIZE": float(size), "IMAGES": 0.0})
            for ds, size in datastores.items()]


def vm_charge(uid: int, gid: int, usage: Usage, images: Iterable[int] = (),
              datastores: Mapping[int, float] | None = None, check: bool = True,
              dry_run: bool = False) -> None:
    """Charge a VM's usage (VM_QUOTA) and its image DISKs (IMAGE_QUOTA RVMS) to its
    owner and group, then its SELF disks (DATASTORE_QUOTA), or raise AUTHORIZATION with
    oned's text.  ``check`` false: add without looking at the limits
    (Quotas::vm_add); ``dry_run``: only check."""
    _apply(uid, gid, vm_request(usage, list(images)), check, dry_run)
    if datastores:
        _apply(uid, gid, ds_request(datastores), check, dry_run)


#: what a VM holds: its (uid, gid), its VM_QUOTA usage, its image DISKs (one id per
#: DISK) and the MB of its SELF disks per datastore
Held = tuple[tuple[int, int], Usage, Iterable[int], Mapping[int, float]]


def _held_items(usage: Usage, images: Iterable[int],
                datastores: Mapping[int, float]) -> list[tuple[tuple[str, str, str], float]]:
    request = vm_request(usage, images) + ds_request(datastores)
    return [((section, qid, metric), value) for section, qid, use in request
            for metric, value in use.items()]


def vm_moved(old: Held, new: Held) -> None:
    """A VM written: what it held before is taken back and what it holds now is added
    (owner, state or disks may have changed), without looking at the limits (the
    checks are the callers', :func:`vm_charge` with ``dry_run``).  Each user or group
    row is touched only when its share changes, in the one lock order (users, then
    groups, by id); counters that go down get Quota::del_quota's cleanup."""
    shares: dict[tuple[str, int], dict[tuple[str, str, str], float]] = {}
    for (owner, *what), sign in ((old, -1.0), (new, 1.0)):
        items = _held_items(*what)
        for side in sides(*owner):
            share = shares.setdefault(side, {})
            for key, value in items:
                share[key] = share.get(key, 0.0) + sign * value
    for kind, oid in sorted(shares, key=lambda k: (k[0] != USER, k[1])):
        plus: dict[tuple[str, str], dict[str, float]] = {}
        minus: dict[tuple[str, str], dict[str, float]] = {}
        for (section, qid, metric), value in shares[(kind, oid)].items():
            if value > 0:
                plus.setdefault((section, qid), {})[metric] = value
            elif value < 0:
                minus.setdefault((section, qid), {})[metric] = -value
        if not (plus or minus):
            continue
        doc = read(kind, oid, lock=True, create=bool(plus) and _owner_exists(kind, oid))
        for (section, qid), use in plus.items():
            _check_add(doc, empty(), "", section, qid, use, check=False)
        for (section, qid), use in minus.items():
            _del(doc, section, qid, use)
        write(kind, oid, doc)


# ------------------------------------------------------------------ recount (db fsck)
#: the sections whose counters follow what the objects hold (NETWORK is never charged)
COUNTED_SECTIONS = ("DATASTORE", "VM", "IMAGE")


def image_request(ds_id: int, size: float) -> Request:
    """What one image holds of its owner's and group's quotas (IMAGES 1, SIZE)."""
    return _ds_request(ds_id, size, 1)


def held_request(held: Held) -> Request:
    """What a VM holds (vm_quotas.held) as one request: VM, IMAGE and SELF disks."""
    _owner, usage, images, datastores = held
    return vm_request(usage, list(images)) + ds_request(datastores)


def recounted(doc: Doc, requests: Iterable[Request]) -> Doc:
    """``doc`` with its counters as ``requests`` (everything its user or group holds
    now) add them up, in the order the charges use (limits kept; a vector left with no
    usage and implicit limits goes, Quota::cleanup_quota; NETWORK kept as stored)."""
    out = {section: [dict(e) for e in doc.get(section, [])] for section in SECTIONS}
    for section in COUNTED_SECTIONS:
        for entry in out[section]:
            for metric in SECTION_METRICS[section]:
                entry[f"{metric}_USED"] = "0"
    for request in requests:
        for section, qid, usage in request:
            _check_add(out, empty(), "", section, qid, usage, check=False)
    for section in COUNTED_SECTIONS:
        for entry in list(out[section]):
            _cleanup(out[section], section, entry.get("ID", ""), is_default=False)
    return out


def usage_drift(have: Doc, want: Doc, steps: int) -> list[str]:
    """The counters of ``have`` that differ from ``want``, as ``X 3: SIZE_USED is 10,
    the objects hold 12`` texts.  Each charge rounds to two decimals (float_str), so
    counters built by ``steps`` charges in another order may differ by that much."""
    slack = 0.005 * steps + 1e-9
    out = []
    for section in COUNTED_SECTIONS:
        keys = {(e.get("ID", ""), m) for doc in (have, want) for e in doc.get(section, [])
                for m in SECTION_METRICS[section]}
        for qid, metric in sorted(keys):
            a, b = (_used(doc, section, qid, metric) for doc in (have, want))
            if abs(a - b) > slack:
                where = f"{section} {qid}" if qid else section
                out.append(f"{where}: {metric}_USED is {float_str(a)}, what exists holds "
                           f"{float_str(b)}")
    return out


def _used(doc: Doc, section: str, qid: str, metric: str) -> float:
    entry = _find(doc.get(section, []), section, qid)
    return _num(entry.get(f"{metric}_USED")) if entry else 0.0


# ------------------------------------------------------------------ limits
def _bad(section: str, vector: dict[str, str]) -> errors.OneError:
    text = ",".join(f"{k}={vector[k]}" for k in sorted(vector))
    return errors.action(f"Negative limits or bad format in quota {section} = [ {text} ]")


def _limits(section: str, vector: dict[str, str], is_default: bool) -> dict[str, str] | None:
    """Quota::new_quota / update_limits: an absent limit is the implicit one; a
    negative one other than -1 / -2 (only -2 for the defaults) is refused."""
    out = {}
    for metric in SECTION_METRICS[section]:
        raw = (vector.get(metric) or "").strip()
        if not raw:
            value = UNLIMITED if is_default else DEFAULT
        else:
            try:
                value = float(raw)
            except ValueError:
                return None
            if math.isnan(value) or math.isinf(value):
                return None
        if value < 0 and value != UNLIMITED and (is_default or value != DEFAULT):
            return None
        out[metric] = float_str(value)
    return out


#: the sections Quotas::set reads, in its order (NETWORK quotas are not kept here)
SET_ORDER = ("DATASTORE", "IMAGE", "VM")


def set_limits(doc: Doc, tmpl: Template, is_default: bool) -> None:
    """Quotas::set: every DATASTORE, IMAGE and VM vector of ``tmpl``, in that order.
    DATASTORE and IMAGE vectors are named by an integer ID; the VM vector is the one
    global vector (QuotaVirtualMachine::get_quota ignores the ID)."""
    for section in SET_ORDER:
        entries = doc[section]
        for vector in tmpl.get_all(section):
            if not isinstance(vector, dict):
                continue
            qid = vector.get("ID", "")
            if section == "VM":
                if (vector.get("CLUSTER_IDS") or "").strip():
                    raise errors.action("Per-cluster VM quotas (CLUSTER_IDS) are not "
                                        "supported by this daemon")
            elif not _INT_ID.match(qid):
                raise _bad(section, vector)
            limits = _limits(section, vector, is_default)
            if limits is None:
                raise _bad(section, vector)
            entry = _find(entries, section, qid)
            if entry is None:
                entry = {"ID": qid} if qid else {}
                for metric in SECTION_METRICS[section]:
                    entry[f"{metric}_USED"] = "0"
                entries.append(entry)
            entry.update(limits)
            _cleanup(entries, section, qid, is_default)


def set_quota(kind: str, oid: int, tmpl: Template) -> None:
    """one.user.quota / one.group.quota: new limits, counters kept."""
    doc = read(kind, oid, lock=True)
    set_limits(doc, tmpl, is_default=False)
    write(kind, oid, doc)


def set_defaults(kind: str, tmpl: Template) -> str:
    """one.userquota.update / one.groupquota.update; returns the new document."""
    doc = read_defaults(kind, lock=True)
    set_limits(doc, tmpl, is_default=True)
    write_defaults(kind, doc)
    return defaults_xml(kind, doc)
