"""Datastore quotas of users and groups (oned's Quotas / QuotaDatastore), api.md §6.7.

A user or group may have a QUOTAS document (tables ``user_quotas`` / ``group_quotas``, as
oned's) whose DATASTORE_QUOTA holds one DATASTORE vector per datastore: the limits IMAGES
(count) and SIZE (MB) with their ``_USED`` counters.  A limit of -1 means "the default"
(DEFAULT_USER_QUOTAS / DEFAULT_GROUP_QUOTAS in ``system_attributes``), -2 unlimited.
oneadmin (uid 0) and the oneadmin group (gid 0) are never accounted.

Every function taking no ``db`` runs inside the caller's DB transaction and locks the
quota rows it changes (users before groups, each by ascending id), so a charge commits
or rolls back together with the image change it belongs to, and concurrent charges
against one limit are serialised by the row lock.  Only DATASTORE quotas exist here; the
NETWORK, VM and IMAGE sections are always empty.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from lxml import etree

from oned_images import errors
from oned_images.store.models import GroupQuotasRow, SystemAttributeRow, UserQuotasRow
from oned_images.store.pools import for_update
from oned_images.template import Template, cdata

DEFAULT = -1.0
UNLIMITED = -2.0
#: QuotaDatastore::DS_METRICS: the order limits are checked in.
METRICS = ("SIZE", "IMAGES")
USER, GROUP = "user", "group"
DEFAULT_ROOT = {USER: "DEFAULT_USER_QUOTAS", GROUP: "DEFAULT_GROUP_QUOTAS"}
EMPTY_OTHERS = "<NETWORK_QUOTA></NETWORK_QUOTA><VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA>"
_INT_ID = re.compile(r"^[+-]?\d+$")

#: one DATASTORE vector: ID, IMAGES, IMAGES_USED, SIZE, SIZE_USED as oned prints them.
Entry = dict[str, str]


def float_str(value: float) -> str:
    """one_util::float_to_str: whole numbers without decimals, others with two."""
    return f"{value:.0f}" if value == math.ceil(value) else f"{value:.2f}"


def _num(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


# ------------------------------------------------------------------ documents
def parse_entries(xml: str | None) -> list[Entry]:
    """The DATASTORE vectors of a stored QUOTAS / DEFAULT_*_QUOTAS document."""
    if not xml:
        return []
    root = etree.fromstring(xml.encode("utf-8"))
    return [{child.tag: child.text or "" for child in ds}
            for ds in root.iterfind("DATASTORE_QUOTA/DATASTORE")]


def datastore_quota_xml(entries: Iterable[Entry]) -> str:
    parts = ["<DATASTORE_QUOTA>"]
    for entry in entries:
        parts.append("<DATASTORE>")
        parts.extend(f"<{k}>{cdata(entry[k])}</{k}>" for k in sorted(entry))
        parts.append("</DATASTORE>")
    parts.append("</DATASTORE_QUOTA>")
    return "".join(parts)


def sections_xml(entries: Iterable[Entry]) -> str:
    """Quotas::to_xml: the four sections, only DATASTORE_QUOTA ever filled."""
    return datastore_quota_xml(entries) + EMPTY_OTHERS


def quotas_xml(oid: int, entries: Iterable[Entry]) -> str:
    """The user_quotas / group_quotas body (what the pools list after each object)."""
    return f"<QUOTAS><ID>{oid}</ID>{sections_xml(entries)}</QUOTAS>"


def defaults_xml(kind: str, entries: Iterable[Entry]) -> str:
    root = DEFAULT_ROOT[kind]
    return f"<{root}>{sections_xml(entries)}</{root}>"


# ------------------------------------------------------------------ storage
def _model(kind: str):
    return UserQuotasRow if kind == USER else GroupQuotasRow


def read(kind: str, oid: int, lock: bool = False, create: bool = True) -> list[Entry]:
    """A user's or group's entries; with ``lock`` the row is locked for the rest of the
    transaction, and first created if missing unless ``create`` is false (INSERT … ON
    CONFLICT DO NOTHING, so two first charges on PostgreSQL lock the same row)."""
    model = _model(kind)
    if lock and create:
        model.insert(oid=oid, body=quotas_xml(oid, [])).on_conflict_ignore().execute()
    query = model.select(model.body).where(model.oid == oid)
    row = (for_update(query) if lock else query).tuples().first()
    return parse_entries(row[0]) if row else []


def write(kind: str, oid: int, entries: list[Entry]) -> None:
    model = _model(kind)
    model.update(body=quotas_xml(oid, entries)).where(model.oid == oid).execute()


def drop(kind: str, oid: int) -> None:
    """A deleted user's or group's quotas go with it (UserPool::drop)."""
    model = _model(kind)
    model.delete().where(model.oid == oid).execute()


def all_rows(kind: str) -> dict[int, list[Entry]]:
    model = _model(kind)
    return {oid: parse_entries(body) for oid, body in model.select(model.oid, model.body)
            .tuples()}


def read_defaults(kind: str, lock: bool = False) -> list[Entry]:
    name = DEFAULT_ROOT[kind]
    if lock:
        SystemAttributeRow.insert(name=name, body=defaults_xml(kind, [])) \
            .on_conflict_ignore().execute()
    query = SystemAttributeRow.select(SystemAttributeRow.body).where(
        SystemAttributeRow.name == name)
    row = (for_update(query) if lock else query).tuples().first()
    return parse_entries(row[0]) if row else []


def write_defaults(kind: str, entries: list[Entry]) -> None:
    SystemAttributeRow.update(body=defaults_xml(kind, entries)).where(
        SystemAttributeRow.name == DEFAULT_ROOT[kind]).execute()


# ------------------------------------------------------------------ accounting
def _find(entries: list[Entry], ds_id: str) -> Entry | None:
    for entry in entries:
        if entry.get("ID") == ds_id:
            return entry
    return None


def _cleanup(entries: list[Entry], ds_id: str, is_default: bool) -> None:
    """Quota::cleanup_quota: an entry with no usage and only implicit limits goes."""
    implicit = UNLIMITED if is_default else DEFAULT
    entry = _find(entries, ds_id)
    if entry is None:
        return
    if all(_num(entry.get(f"{m}_USED")) == 0 and _num(entry.get(m)) == implicit
           for m in METRICS):
        entries.remove(entry)


def _check_add(kind: str, oid: int, ds_id: int, usage: dict[str, float],
               check: bool = True) -> None:
    """Quota::check_quota: every limit first (SIZE, then IMAGES), then the counters."""
    entries = read(kind, oid, lock=True)
    qid = str(ds_id)
    entry = _find(entries, qid)
    if entry is None:
        entry = {"ID": qid}
        for metric in METRICS:
            entry[metric] = float_str(DEFAULT)
            entry[f"{metric}_USED"] = "0"
        entries.append(entry)
    fallback = _find(read_defaults(kind), qid)
    for metric in METRICS if check else ():
        limit = _num(entry.get(metric))
        if limit == DEFAULT:
            limit = _num(fallback.get(metric)) if fallback else UNLIMITED
        if limit != UNLIMITED and _num(entry.get(f"{metric}_USED")) + usage[metric] > limit:
            raise errors.authorization(
                f"{kind} [{oid}] limit of {limit:g} reached for {metric} quota in "
                f"DATASTORE with ID: {ds_id}")
    for metric in METRICS:
        entry[f"{metric}_USED"] = float_str(_num(entry.get(f"{metric}_USED")) + usage[metric])
    write(kind, oid, entries)


def _del(kind: str, oid: int, ds_id: int, usage: dict[str, float]) -> None:
    """Quota::del_quota: counters down (never refused), then cleanup; a user or group
    deleted since (its row went with it) gets no new row."""
    entries = read(kind, oid, lock=True, create=False)
    entry = _find(entries, str(ds_id))
    if entry is None:
        return
    for metric in METRICS:
        entry[f"{metric}_USED"] = float_str(_num(entry.get(f"{metric}_USED")) - usage[metric])
    _cleanup(entries, str(ds_id), is_default=False)
    write(kind, oid, entries)


def _accounted(uid: int, gid: int) -> list[tuple[str, int]]:
    """Request::quota_authorization: nobody for oneadmin / group oneadmin, nor for -1."""
    out = []
    if uid not in (0, -1):
        out.append((USER, uid))
    if gid not in (0, -1):
        out.append((GROUP, gid))
    return out


def charge(uid: int, gid: int, ds_id: int, size: float, images: int = 1) -> None:
    """Charge an image (IMAGES, SIZE MB) to a user and a group, or raise AUTHORIZATION
    with oned's text (the transaction then rolls back whatever was charged)."""
    usage = {"SIZE": float(size), "IMAGES": float(images)}
    for kind, oid in _accounted(uid, gid):
        _check_add(kind, oid, ds_id, usage)


def count(uid: int, gid: int, ds_id: int, size: float, images: int = 1) -> None:
    """Add usage without checking a limit (counting images that already exist)."""
    usage = {"SIZE": float(size), "IMAGES": float(images)}
    for kind, oid in _accounted(uid, gid):
        _check_add(kind, oid, ds_id, usage, check=False)


def release(uid: int, gid: int, ds_id: int, size: float, images: int = 1) -> None:
    usage = {"SIZE": float(size), "IMAGES": float(images)}
    for kind, oid in _accounted(uid, gid):
        _del(kind, oid, ds_id, usage)


def move(old: tuple[int, int], new: tuple[int, int], ds_id: int, size: float) -> None:
    """chown: charge the new owner and/or group (only the side that changes), then
    release the old one, as oned's PoolObjectSQL chown with att_new / att_old."""
    (old_uid, old_gid), (new_uid, new_gid) = old, new
    if new_uid == old_uid:
        new_uid = old_uid = -1
    if new_gid == old_gid:
        new_gid = old_gid = -1
    # Lock every row involved in one order (users, then groups, by id) before
    # changing any, so two chowns in opposite directions cannot deadlock; rows of the
    # new side are created (its user and group exist), the old side's only locked.
    new_side = set(_accounted(new_uid, new_gid))
    for kind, oid in sorted(new_side | set(_accounted(old_uid, old_gid)),
                            key=lambda k: (k[0] != USER, k[1])):
        read(kind, oid, lock=True, create=(kind, oid) in new_side)
    charge(new_uid, new_gid, ds_id, size)
    release(old_uid, old_gid, ds_id, size)


# ------------------------------------------------------------------ limits
def _bad(vector: dict[str, str]) -> errors.OneError:
    text = ",".join(f"{k}={vector[k]}" for k in sorted(vector))
    return errors.action(f"Negative limits or bad format in quota DATASTORE = [ {text} ]")


def _limits(vector: dict[str, str], is_default: bool) -> dict[str, str] | None:
    """Quota::new_quota / update_limits: an absent limit is the implicit one; a
    negative one other than -1 / -2 (only -2 for the defaults) is refused."""
    out = {}
    for metric in METRICS:
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


def set_limits(entries: list[Entry], tmpl: Template, is_default: bool) -> None:
    """Quota::set for every DATASTORE vector of ``tmpl``, in order."""
    for vector in tmpl.get_all("DATASTORE"):
        if not isinstance(vector, dict):
            continue
        qid = vector.get("ID", "")
        if not _INT_ID.match(qid):
            raise _bad(vector)
        limits = _limits(vector, is_default)
        if limits is None:
            raise _bad(vector)
        entry = _find(entries, qid)
        if entry is None:
            entry = {"ID": qid}
            for metric in METRICS:
                entry[f"{metric}_USED"] = "0"
            entries.append(entry)
        entry.update(limits)
        _cleanup(entries, qid, is_default)


def set_quota(kind: str, oid: int, tmpl: Template) -> None:
    """one.user.quota / one.group.quota: new limits, counters kept."""
    entries = read(kind, oid, lock=True)
    set_limits(entries, tmpl, is_default=False)
    write(kind, oid, entries)


def set_defaults(kind: str, tmpl: Template) -> str:
    """one.userquota.update / one.groupquota.update; returns the new document."""
    entries = read_defaults(kind, lock=True)
    set_limits(entries, tmpl, is_default=True)
    write_defaults(kind, entries)
    return defaults_xml(kind, entries)
