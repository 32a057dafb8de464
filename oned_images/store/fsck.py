"""``oned-images db fsck [--repair]``: what a crash or a hand edit can leave behind.

Like onedb fsck, every check compares two things that must agree and, with
``--repair``, makes the derived one follow the authoritative one:

* each pool row's XML body is the truth (clients are served it, the code reads
  it); its filter columns and its served copy (``body_rpc``) are derived from it.
  A body that is not well-formed cannot be repaired from its columns: restore
  that row from a backup.
* users are the truth for group membership (a group's USERS); an owner
  (UID/GID) that no longer exists becomes oneadmin (user and group 0 always
  exist); UNAME/GNAME/DATASTORE copy the owner's and the datastore's names.
* an image's VMS collection is the truth for RUNNING_VMS (and READY/USED).
* the id counters (``pool_control``) must be at least the largest id in use, or
  the next allocate collides with an existing object.
* files: an fs datastore image whose SOURCE (under BASE_PATH) is missing goes
  to ERROR with an ERROR text saying which file is missing (nothing is deleted;
  the operator decides to re-register or delete it).  A file in BASE_PATH that
  no image references is **moved** to ``<DATASTORE_LOCATION>/lost+found/<ds id>/``
  rather than deleted: it may be the only copy of an image whose row was lost
  (a restored older backup, a hand edit), and the daemon's start-up sweep would
  delete driver-named orphans.
* the quota counters (user_quotas, group_quotas) are derived from what exists: the
  images (DATASTORE: IMAGES, SIZE) and the VMs that are not DONE (VM, IMAGE RVMS,
  DATASTORE of SELF disks) are recounted and the counters follow; the limits stay.
  The rows of users or groups that are gone are dropped.
* a LOCKED image with no daemon running is only noted: the next start re-runs
  its copy/clone/removal, which is better than anything fsck could do.

A repair runs in one transaction, while the database lock is held (so no
daemon can be running, see :mod:`oned_images.store.lock`); stray files are
moved after that transaction commits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import peewee
from lxml import etree

from oned_images.domain import driver_replies as replies
from oned_images.domain import hosts, identity, quotas, templates, vm_quotas
from oned_images.domain.clusters import CLUSTER_PERMS
from oned_images.domain.datastores import ds_meta
from oned_images.domain.images import _meta as image_meta
from oned_images.domain.images import write_image
from oned_images.domain.states import ImageState
from oned_images.domain.vm_states import VmState
from oned_images.driver import reaper
from oned_images.model.objects import Datastore, Group, Image, User
from oned_images.store import image_vms, pools, schema
from oned_images.store.database import Database
from oned_images.store.lock import DatabaseInUse, DatabaseLock
from oned_images.store.models import (
    ALL_MODELS,
    ClusterRow,
    DatastoreRow,
    GroupRow,
    HostRow,
    ImageRow,
    ImageVmRow,
    PoolControl,
    PoolObject,
    TemplateRow,
    UserRow,
    VmRow,
    database_proxy,
)
from oned_images.xmldoc.cluster import cluster_from, cluster_xml
from oned_images.xmldoc.common import parse
from oned_images.xmldoc.datastore import datastore_from, datastore_xml
from oned_images.xmldoc.host import host_from, host_xml
from oned_images.xmldoc.image import image_from
from oned_images.xmldoc.served import escape
from oned_images.xmldoc.template_doc import vmtemplate_from, vmtemplate_xml
from oned_images.xmldoc.user import group_from, group_xml, user_from, user_xml
from oned_images.xmldoc.vm import vm_from

S = ImageState
LOCKED = (S.LOCKED, S.LOCKED_USED, S.LOCKED_USED_PERS)
#: states in which an image's file must exist (ERROR/LOCKED/INIT/DELETE may lack it).
FILE_STATES = (S.READY, S.USED, S.USED_PERS, S.DISABLED, S.CLONE)
#: states fsck may move to ERROR when the file is gone.
TO_ERROR = (S.READY, S.USED, S.USED_PERS, S.DISABLED)


@dataclass
class Finding:
    """One line of the report."""

    what: str  # e.g. "image 5"
    problem: str
    repaired: str = ""  # what --repair did; "" when it could not repair
    note: bool = False  # informational: does not make the exit code 1

    def line(self, repair: bool) -> str:
        text = f"{self.what}: {self.problem}"
        if self.note:
            return f"note: {text}"
        if repair:
            text += f" -> {self.repaired}" if self.repaired else " -> NOT repaired"
        return text


@dataclass
class _Kind:
    """How one pool table's columns follow from its body."""

    label: str
    parse: Callable[[str], object]
    meta: Callable[[object], pools.RowMeta]
    extra: Callable[[object], dict] = lambda _obj: {}
    #: the document of an object; set for kinds written back by _write_back's generic path
    xml: Callable[[object], str] | None = None


KINDS: dict[type[PoolObject], _Kind] = {
    ImageRow: _Kind("image", image_from, image_meta,
                    lambda img: {"datastore_id": img.datastore_id}),
    DatastoreRow: _Kind("datastore", datastore_from, ds_meta),
    UserRow: _Kind("user", user_from, identity._meta),
    GroupRow: _Kind("group", group_from, identity._group_meta),
    ClusterRow: _Kind("cluster", cluster_from, lambda cl: pools.RowMeta(
        cl.name, 0, 0, CLUSTER_PERMS), xml=cluster_xml),
    HostRow: _Kind("host", host_from, hosts._meta,
                   lambda h: {"state": h.state, "cid": h.cluster_id}, xml=host_xml),
    TemplateRow: _Kind("template", vmtemplate_from, templates._meta, xml=vmtemplate_xml),
}


#: pools whose counter row bootstrap creates (pools.next_oid): a missing one would restart
#: ids at the pool's floor, onto existing ids.  (acl gets its row with the first added
#: rule; its floor is above the default rules.)
COUNTED = tuple(KINDS)


@dataclass
class _State:
    repair: bool
    daemon: bool
    findings: list[Finding] = field(default_factory=list)
    images: dict[int, Image] = field(default_factory=dict)
    #: clusters, hosts, templates: (label, id) -> (model, object), for write-back only
    others: dict[tuple[str, int], tuple] = field(default_factory=dict)
    datastores: dict[int, Datastore] = field(default_factory=dict)
    users: dict[int, User] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)
    dirty: set[tuple[str, int]] = field(default_factory=set)
    #: (datastore id, path, destination) of files no image references
    strays: list[tuple[int, str, str]] = field(default_factory=list)
    #: an image's <VMS> rows that name a VM holding it (image_vms; see _check_image_vms)
    vms_of: dict[int, list[int]] = field(default_factory=dict)
    #: image_vms rows to delete: (image id, VM id)
    stale_vm_rows: list[tuple[int, int]] = field(default_factory=list)
    #: quota documents to write back recounted, and rows of owners that are gone
    quota_writes: dict[tuple[str, int], quotas.Doc] = field(default_factory=dict)
    quota_drops: list[tuple[str, int]] = field(default_factory=list)

    def add(self, what: str, problem: str, repaired: str = "", note: bool = False) -> None:
        self.findings.append(Finding(what, problem, repaired if self.repair else "", note))


def run(database: Database, var_location: str, repair: bool) -> tuple[list[str], str, int]:
    """The whole of ``db fsck``: (report lines, a refusal for stderr or "", exit status).

    Raises DatabaseInUse for ``--repair`` on a database a daemon holds."""
    lock = DatabaseLock(database.settings)
    running = ""
    try:
        lock.acquire("oned-images db fsck --repair" if repair else "oned-images db fsck")
    except DatabaseInUse as exc:
        if repair:
            raise
        running = str(exc)
    try:
        lines = [f"note: {running}; findings may include work in progress"] if running else []
        drivers = [] if running else leftover_drivers(var_location)
        if drivers:
            if repair:
                return [], ("refusing to fsck --repair: driver processes left by a daemon "
                            f"that died still run (process groups {drivers}); start "
                            "oned-images serve once (it stops them) or kill them first"), 2
            lines.append(f"note: driver processes left by a daemon that died still run "
                         f"(process groups {drivers}); their files may show up as "
                         "unreferenced")
        current = database.read_sync(schema.version, database.db)
        if current is None:
            return lines, ("fsck: the database is empty (no oned-images has started on "
                           "it)"), 2
        if current != schema.CURRENT:
            return lines, (f"fsck: the database has schema version {current}, this release "
                           f"checks version {schema.CURRENT}: run oned-images db upgrade "
                           "first"), 2
        check = database.run_sync if repair else database.read_sync  # beside daemons
        findings, strays = check(check_database, repair, bool(running))
        if repair:
            move_strays(strays)
    finally:
        lock.release()
    lines += [f.line(repair) for f in findings]
    problems = [f for f in findings if not f.note]
    if repair and problems:
        left = sum(1 for f in problems if not f.repaired)
        lines.append(f"{len(problems)} problem(s) found, {len(problems) - left} repaired"
                     + (f", {left} need you" if left else ""))
    return lines, "", 1 if problems else 0


def check_database(repair: bool, daemon_running: bool) -> tuple[list[Finding], list]:
    """Inside one transaction: every check on the rows; repairs written when asked."""
    if isinstance(database_proxy.obj, peewee.PostgresqlDatabase):
        # First statement of the transaction: every check reads one snapshot, so a
        # running daemon's writes cannot show up as half-made inconsistencies.
        database_proxy.obj.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
                                       + ("" if repair else ", READ ONLY"))
    st = _State(repair, daemon_running)
    _check_rows(st)
    _check_users_groups(st)
    _check_datastores(st)
    _check_image_vms(st)
    _check_images(st)
    _check_counters(st)
    _check_quotas(st)
    _find_strays(st)
    if repair:
        _write_back(st)
    return st.findings, st.strays


def leftover_drivers(var_location: str) -> list[int]:
    """Driver process groups a killed daemon left running (they outlive it, see
    driver.reaper): their half-written files must not be taken for strays.  Workers
    (WORKERS > 1) record theirs under run/w<k>/."""
    run = Path(var_location) / "run"
    alive = []
    for entry in [e for d in (run, *run.glob("w[0-9]*")) if reaper.run_dir(d).is_dir()
                  for e in reaper.run_dir(d).iterdir()]:
        try:
            pid, script = int(entry.name), entry.read_text()
        except (ValueError, OSError):
            continue
        if reaper._alive_with(pid, script):
            alive.append(pid)
    return sorted(alive)


def move_strays(strays: list[tuple[int, str, str]]) -> None:
    """Move unreferenced files into lost+found (same file system: a rename)."""
    for _ds, path, dest in strays:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.rename(path, dest)


# ------------------------------------------------------------------ rows and bodies
def _check_rows(st: _State) -> None:
    for model in ALL_MODELS:
        if "body" not in model._meta.fields or "oid" not in model._meta.fields:
            continue  # system_attributes: keyed by name, read by the quota code
        kind = KINDS.get(model)
        label = kind.label if kind else model._meta.table_name
        has_served = "body_rpc" in model._meta.fields
        columns = [f for f in model._meta.sorted_fields
                   if f.name not in ("oid", "body", "body_rpc")]
        select = [model.oid, model.body, *columns] + ([model.body_rpc] if has_served else [])
        for row in model.select(*select).order_by(model.oid).tuples().iterator():
            oid, body = row[0], row[1]
            what = f"{label} {oid}"
            try:
                obj = kind.parse(body) if kind else parse(body)
            except etree.XMLSyntaxError as exc:
                st.add(what, f"the stored body is not well-formed XML ({exc}); restore this "
                       "row from a backup")
                continue
            except (ValueError, TypeError) as exc:  # e.g. <RUNNING_VMS>x</RUNNING_VMS>
                st.add(what, f"the stored body cannot be read ({exc}); restore this row "
                       "from a backup")
                continue
            if kind is None:
                continue
            if obj.id != oid:
                st.add(what, f"the body's ID is {obj.id}; restore this row from a backup")
                continue
            _register(st, model, obj)
            meta = kind.meta(obj)
            want = {"name": meta.name, "uid": meta.uid, "gid": meta.gid,
                    "owner_u": meta.perms.owner_u, "group_u": meta.perms.group_u,
                    "other_u": meta.perms.other_u, **kind.extra(obj)}
            have = dict(zip((f.name for f in columns), row[2:2 + len(columns)], strict=True))
            wrong = [f"{k} is {have[k]!r}, the body says {v!r}" for k, v in want.items()
                     if k in have and have[k] != v]
            if wrong:
                st.add(what, "columns disagree with the body: " + "; ".join(wrong),
                       "columns rewritten from the body")
                st.dirty.add((label, oid))
            if has_served:
                served = row[-1]
                if served is not None:
                    text = served if isinstance(served, str) else bytes(served).decode(
                        "utf-8", "replace")
                    if text != escape(body):
                        st.add(what, "the served copy (body_rpc) differs from the body",
                               "served copy rewritten from the body")
                        st.dirty.add((label, oid))


def _register(st: _State, model: type[PoolObject], obj) -> None:
    table = {ImageRow: st.images, DatastoreRow: st.datastores, UserRow: st.users,
             GroupRow: st.groups}.get(model)
    if table is None:
        st.others[(KINDS[model].label, obj.id)] = (model, obj)
    else:
        table[obj.id] = obj


# ------------------------------------------------------------------ references
def _check_users_groups(st: _State) -> None:
    for user in st.users.values():
        what = f"user {user.id}"
        missing = [g for g in user.groups if g not in st.groups]
        if missing:
            user.groups = [g for g in user.groups if g in st.groups]
            st.add(what, f"GROUPS names groups that do not exist: {missing}",
                   "removed from GROUPS")
            st.dirty.add(("user", user.id))
        if user.gid not in st.groups:
            home = st.groups.get(identity.USERS_GROUP)
            st.add(what, f"primary group {user.gid} does not exist",
                   f"primary group set to {home.id} ({home.name})" if home else "")
            if home is not None:
                user.gid = home.id
                st.dirty.add(("user", user.id))
        if user.gid in st.groups:
            if user.gid not in user.groups:
                user.groups = sorted({*user.groups, user.gid})
                st.add(what, f"primary group {user.gid} is missing from GROUPS",
                       "added to GROUPS")
                st.dirty.add(("user", user.id))
            name = st.groups[user.gid].name
            if user.gname != name:
                st.add(what, f"GNAME is {user.gname!r}, group {user.gid} is {name!r}",
                       "GNAME set")
                user.gname = name
                st.dirty.add(("user", user.id))
    for group in st.groups.values():
        what = f"group {group.id}"
        members = sorted(u.id for u in st.users.values() if group.id in u.groups)
        if sorted(group.users) != members:
            st.add(what, f"USERS is {sorted(group.users)}, the users in it are {members}",
                   "USERS rebuilt from the users")
            group.users = members
            st.dirty.add(("group", group.id))
        admins = [a for a in group.admins if a in st.users]
        if admins != group.admins:
            st.add(what, f"ADMINS names users that do not exist: "
                   f"{sorted(set(group.admins) - set(admins))}", "removed from ADMINS")
            group.admins = admins
            st.dirty.add(("group", group.id))


def _check_owner(st: _State, label: str, obj) -> None:
    """UID/GID of an image or datastore: existing objects, and their current names."""
    what = f"{label} {obj.id}"
    if obj.uid not in st.users:
        st.add(what, f"owner user {obj.uid} does not exist", "owner set to oneadmin (0)")
        obj.uid = 0
        st.dirty.add((label, obj.id))
    if obj.gid not in st.groups:
        st.add(what, f"group {obj.gid} does not exist", "group set to oneadmin (0)")
        obj.gid = 0
        st.dirty.add((label, obj.id))
    for attr, pool, owner in (("uname", st.users, obj.uid), ("gname", st.groups, obj.gid)):
        if owner in pool and getattr(obj, attr) != pool[owner].name:
            st.add(what, f"{attr.upper()} is {getattr(obj, attr)!r}, the owner is "
                   f"{pool[owner].name!r}", f"{attr.upper()} set")
            setattr(obj, attr, pool[owner].name)
            st.dirty.add((label, obj.id))


def _check_datastores(st: _State) -> None:
    for ds in st.datastores.values():
        _check_owner(st, "datastore", ds)
        if ds.images:
            # IMAGES is served from the image rows; the stored list must stay empty, or
            # a hand edit's list would be taken for the truth by another tool.
            st.add(f"datastore {ds.id}", f"the stored IMAGES list is {ds.images} (it is "
                   "served from the images that name the datastore)", "stored list emptied")
            ds.images = []
            st.dirty.add(("datastore", ds.id))


def _check_images(st: _State) -> None:
    for img in st.images.values():
        what = f"image {img.id}"
        _check_owner(st, "image", img)
        ds = st.datastores.get(img.datastore_id)
        if ds is None:
            st.add(what, f"datastore {img.datastore_id} does not exist; move the image's "
                   "files and delete or re-register it")
        elif img.datastore != ds.name:
            st.add(what, f"DATASTORE is {img.datastore!r}, datastore {ds.id} is {ds.name!r}",
                   "DATASTORE set")
            img.datastore = ds.name
            st.dirty.add(("image", img.id))
        _check_running_vms(st, img)
        state = S(img.state)
        if state in LOCKED and not st.daemon:
            st.add(what, "LOCKED with no driver action running (no daemon holds the "
                   "database); the next start re-runs it", note=True)
        if ds is not None and ds.ds_mad == "fs" and state in FILE_STATES and \
                _inside(img.source, ds.base_path) and not os.path.lexists(img.source):
            if state in TO_ERROR:
                st.add(what, f"its file {img.source} does not exist", "state ERROR")
                if st.repair:
                    replies.set_state(img, S.ERROR)
                    replies.set_error(img, f"The image file {img.source} is missing "
                                      "(found by oned-images db fsck)")
                    st.dirty.add(("image", img.id))
            else:
                st.add(what, f"its file {img.source} does not exist (state {state.name})")


def _check_image_vms(st: _State) -> None:
    """The image_vms rows (an image's <VMS>, spliced in when served) must name an
    image and a VM that exist, and a VM that is not DONE: a DONE VM released its
    images, and a row left by a hand edit or a crash keeps an image USED for ever
    (and a persistent one unusable by any other VM)."""
    vm_state = dict(VmRow.select(VmRow.oid, VmRow.state).tuples())
    rows = ImageVmRow.select(ImageVmRow.image_oid, ImageVmRow.vm_oid).order_by(
        ImageVmRow.image_oid, ImageVmRow.vm_oid).tuples()
    gone: dict[int, list[int]] = {}
    for image_id, vm_id in rows:
        if image_id not in st.images:
            gone.setdefault(image_id, []).append(vm_id)
            st.stale_vm_rows.append((image_id, vm_id))
        elif vm_id not in vm_state or vm_state[vm_id] == VmState.DONE:
            why = "does not exist" if vm_id not in vm_state else "is DONE"
            st.add(f"image {image_id}", f"VMS lists VM {vm_id}, which {why}",
                   "VM removed from VMS")
            st.stale_vm_rows.append((image_id, vm_id))
        else:
            st.vms_of.setdefault(image_id, []).append(vm_id)
    for image_id, vm_ids in gone.items():
        st.add("table image_vms", f"image {image_id} does not exist, its rows list VMs "
               f"{vm_ids}", "rows deleted")


def _check_quotas(st: _State) -> None:
    """The quota counters must be what exists holds (after this run's repairs of
    owners): a charge lost to a crash or a hand edit would otherwise refuse, or allow,
    for ever.  onedb fsck recounts them the same way."""
    held: dict[tuple[str, int], list[quotas.Request]] = {}
    for img in st.images.values():
        for side in quotas.sides(img.uid, img.gid):
            held.setdefault(side, []).append(quotas.image_request(img.datastore_id, img.size))
    done = int(VmState.DONE)
    for (body,) in VmRow.select(VmRow.body).where(VmRow.state != done).order_by(
            VmRow.oid).tuples().iterator():
        vm = vm_from(body)
        request = quotas.held_request(vm_quotas.held(vm))
        for side in quotas.sides(vm.uid, vm.gid):
            held.setdefault(side, []).append(request)
    for kind, owners in ((quotas.USER, st.users), (quotas.GROUP, st.groups)):
        rows = quotas.all_rows(kind)
        for oid in sorted(set(rows) | {o for k, o in held if k == kind}):
            what = f"{kind} {oid} quotas"
            if oid not in owners:
                if oid in rows:
                    st.add(what, f"the {kind} does not exist", "row deleted")
                    st.quota_drops.append((kind, oid))
                continue
            have = rows.get(oid, quotas.empty())
            requests = held.get((kind, oid), [])
            want = quotas.recounted(have, requests)
            drift = quotas.usage_drift(have, want, len(requests))
            if drift:
                st.add(what, "; ".join(drift), "counters recounted")
                st.quota_writes[(kind, oid)] = want


def _check_running_vms(st: _State, img: Image) -> None:
    what = f"image {img.id}"
    vms = st.vms_of.get(img.id, [])
    if img.running_vms != len(vms):
        st.add(what, f"RUNNING_VMS is {img.running_vms}, VMS lists {len(vms)}",
               f"RUNNING_VMS set to {len(vms)}")
        img.running_vms = len(vms)
        st.dirty.add(("image", img.id))
    state = S(img.state)
    if state in (S.USED, S.USED_PERS) and not vms and img.cloning_ops == 0:
        st.add(what, "USED with no VM and no clone in progress", "state READY")
        replies.set_state(img, S.READY)
        st.dirty.add(("image", img.id))
    elif state == S.READY and vms:
        used = S.USED_PERS if img.persistent else S.USED
        st.add(what, f"READY while VMS lists {vms}", f"state {used.name}")
        replies.set_state(img, used)
        st.dirty.add(("image", img.id))


def _inside(path: str, directory: str) -> bool:
    return bool(path and directory) and \
        os.path.dirname(os.path.normpath(path)) == os.path.normpath(directory)


# ------------------------------------------------------------------ counters
def _check_counters(st: _State) -> None:
    counters = {r.tablename: int(r.last_oid) for r in PoolControl.select()}
    for model in ALL_MODELS:
        table = model._meta.table_name
        if "oid" not in model._meta.fields or model is PoolControl:
            continue
        top = model.select(peewee.fn.MAX(model.oid)).scalar()
        if top is None:
            continue
        if table not in counters:
            if model in COUNTED:
                st.add(f"table {table}", f"has no id counter in pool_control (largest id "
                       f"{top})", f"counter set to {top}")
                if st.repair:
                    PoolControl.insert(tablename=table, last_oid=top).execute()
        elif counters[table] < top:
            st.add(f"table {table}", f"id counter is {counters[table]}, below the largest "
                   f"id {top}", f"counter set to {top}")
            if st.repair:
                PoolControl.update(last_oid=top).where(PoolControl.tablename == table).execute()


# ------------------------------------------------------------------ files
def _find_strays(st: _State) -> None:
    referenced: dict[str, set[str]] = {}
    for img in st.images.values():
        if img.source:
            src = os.path.normpath(img.source)
            referenced.setdefault(os.path.dirname(src), set()).add(os.path.basename(src))
    for ds in st.datastores.values():
        if ds.ds_mad != "fs" or not ds.base_path or not os.path.isdir(ds.base_path):
            continue
        base = os.path.normpath(ds.base_path)
        keep = referenced.get(base, set())
        lost = reaper.lost_found(base, ds.id)
        for name in sorted(os.listdir(base)):
            if name in keep or any(name.startswith(k + ".") for k in keep):
                continue
            path = os.path.join(base, name)
            dest = reaper.free_name(os.path.join(lost, name))
            st.add(f"datastore {ds.id}", f"{path} is referenced by no image",
                   f"moved to {dest}")
            st.strays.append((ds.id, path, dest))


# ------------------------------------------------------------------ writing repairs
def _write_back(st: _State) -> None:
    for image_id, vm_id in st.stale_vm_rows:
        image_vms.drop(image_id, vm_id)
    for (kind, oid), doc in sorted(st.quota_writes.items()):
        quotas.read(kind, oid, lock=True)  # the row, made if it was missing
        quotas.write(kind, oid, doc)
    for kind, oid in st.quota_drops:
        quotas.drop(kind, oid)
    for label, oid in sorted(st.dirty):
        if label == "image":
            write_image(st.images[oid])
        elif label == "datastore":
            ds = st.datastores[oid]
            pools.update(DatastoreRow, oid, ds_meta(ds), datastore_xml(ds))
        elif label == "user":
            user = st.users[oid]
            pools.update(UserRow, oid, identity._meta(user), user_xml(user))
        elif label == "group":
            group = st.groups[oid]
            pools.update(GroupRow, oid, identity._group_meta(group), group_xml(group))
        elif (label, oid) in st.others:
            model, obj = st.others[(label, oid)]
            kind = KINDS[model]
            pools.update(model, oid, kind.meta(obj), kind.xml(obj), **kind.extra(obj))
