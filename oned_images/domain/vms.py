"""Virtual machine verbs (vms.md §5): allocate, instantiate (§4.7), info, pool info,
rename, chmod, chown, deploy and the one.vm.action life cycle with the dummy drivers.

What may happen to a VM is declared in domain/vm_states.py; this module checks the
rights, applies a rule inside one DB transaction (the VM row and its host's row locked
together, so concurrent calls never leave either half-written) and then plays the dummy
drivers' answers: each transient LCM state becomes the next one a moment later, in its
own transaction, scheduled on the reactor (never blocking it).  Images are acquired and
released only through domain/vm_disks.py.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import peewee
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from oned_images import errors
from oned_images.config import DaemonConfig
from oned_images.domain import locks, vm_disks, vm_ops, vm_quotas, vm_tm, vm_transfer
from oned_images.domain import vm_states as vs
from oned_images.domain.datastores import ds_auth
from oned_images.domain.hosts import OFFLINE, host_auth, read_host, write_host
from oned_images.domain.identity import Identity
from oned_images.domain.names import name_error
from oned_images.domain.ownership import chmod_plan, chown_plan
from oned_images.domain.permissions import (
    AuthRequest,
    Caller,
    ObjectAuth,
    Op,
    new_object_perms,
)
from oned_images.domain.pool_query import pool_bodies, pool_filter, row_auth
from oned_images.domain.templates import (
    extend_disks,
    read_template,
    restricted_attr,
    template_auth,
)
from oned_images.driver import tm
from oned_images.model.objects import Datastore, History, Host, Permissions, Vm
from oned_images.store import daemons, pools
from oned_images.store.database import Database
from oned_images.store.models import DatastoreRow, HostRow, VmRow, database_proxy
from oned_images.template import Template, TemplateError
from oned_images.xmldoc.datastore import datastore_from
from oned_images.xmldoc.host import host_from
from oned_images.xmldoc.served import Served, escape, rpc_bytes
from oned_images.xmldoc.vm import vm_from, vm_short_xml, vm_xml

log = Logger(namespace="DiM")

OBJ = "virtual machine"
TEMPLATE_OBJ = "virtual machine template"
V, L = vs.VmState, vs.Lcm
ONEADMIN = Caller(0, 0, frozenset({0}), "oneadmin", "oneadmin")
#: seconds the dummy VMM/TM driver takes to answer one operation (oned: ~0.06 s)
DRIVER_DELAY = 0.05
#: templates longer than this are parsed off the reactor thread
PARSE_IN_THREAD = 64 * 1024
#: attributes VirtualMachine::insert keeps in TEMPLATE (vms.md §5.3); every other
#: attribute the user wrote stays in USER_TEMPLATE
VM_ATTRS = frozenset({
    "VMID", "TEMPLATE_ID", "MEMORY", "CPU", "VCPU", "CPU_COST", "MEMORY_COST", "DISK_COST",
    "OS", "RAW", "PCI", "NIC_DEFAULT", "NIC", "NIC_ALIAS", "CONTEXT", "DISK",
    "SUBMIT_ON_HOLD", "GRAPHICS", "VIDEO", "EMULATOR", "INPUT", "FEATURES",
    "CLONING_TEMPLATE_ID", "TOPOLOGY", "NUMA_NODE", "HYPERV_OPTIONS", "SPICE_OPTIONS", "TPM",
    "TM_MAD_SYSTEM", "AUTOMATIC_REQUIREMENTS", "AUTOMATIC_DS_REQUIREMENTS",
    "AUTOMATIC_NIC_REQUIREMENTS", "MEMORY_MAX", "VCPU_MAX", "MEMORY_SLOTS",
    "MEMORY_RESIZE_MODE", "CPU_MODEL", "SECURITY_GROUP_RULE", "VMGROUP", "IMPORTED",
})


# ------------------------------------------------------------------ row access
def vm_auth(vm: Vm) -> ObjectAuth:
    return ObjectAuth("VM", vm.id, vm.uid, vm.gid, vm.perms, vm.lock.locked if vm.lock else 0)


def _meta(vm: Vm) -> pools.RowMeta:
    return pools.RowMeta(vm.name, vm.uid, vm.gid, vm.perms)


def _columns(vm: Vm) -> dict:
    """The filter columns and the two served forms of a VM row (see models.VmRow)."""
    ext, short = escape(vm_xml(vm, all_history=False)), escape(vm_short_xml(vm))
    if isinstance(database_proxy.obj, peewee.SqliteDatabase):
        ext, short = ext.encode("utf-8"), short.encode("utf-8")
    return {"state": vm.state, "lcm_state": vm.lcm_state, "ext_rpc": ext, "short_rpc": short}


def read_vm(oid: int, lock: bool = False) -> Vm:
    body = pools.body(VmRow, oid, lock=lock)
    if body is None:
        raise errors.no_exists(OBJ, oid)
    return vm_from(body)


def write_vm(vm: Vm) -> None:
    """VirtualMachinePool::update: PREV_STATE/PREV_LCM_STATE take the state written.

    A write that moves the VM into a state with driver work due (a transfer, a dummy
    driver answer, a disk operation) claims that work for the running daemon in this
    transaction, and one that moves it out of such a state releases it (README
    "Several daemons"): PREV_* still hold the state the row was read in.  What the
    VM holds of its owner's quotas follows the write (vm_quotas.written)."""
    stored = pools.body(VmRow, vm.id)
    vm_quotas.written(vm_from(stored) if stored is not None else None, vm)
    old, new = (vm.prev_state, vm.prev_lcm_state), (vm.state, vm.lcm_state)
    if new != old:
        if transient(*new):
            daemons.claim("vm", vm.id, vs.Lcm(vm.lcm_state).name)
        elif transient(*old):
            daemons.release("vm", vm.id)
    vm.prev_state, vm.prev_lcm_state = vm.state, vm.lcm_state
    pools.update(VmRow, vm.id, _meta(vm), vm_xml(vm), **_columns(vm))


_disk_op_states: frozenset[int] | None = None


def transient(state: int, lcm: int) -> bool:
    """Whether a VM in (state, lcm) waits on a driver: a transfer, a dummy driver answer
    (vms.md §7.4) or a disk snapshot, save-as or hot-plug (vm_disk_ops.TRANSIENT)."""
    global _disk_op_states
    if state != V.ACTIVE:
        return False
    if _disk_op_states is None:
        from oned_images.domain.vm_disk_ops import TRANSIENT  # imports this module
        _disk_op_states = frozenset(TRANSIENT)
    return lcm in vs.STEPS or lcm in _disk_op_states


def _now() -> int:
    return int(time.time())


def _request_id() -> int:
    return secrets.randbelow(10000)


def _positive_int(value: str | None) -> bool:
    try:
        return value is not None and int(value.strip()) > 0
    except ValueError:
        return False


def _positive_float(value: str | None) -> bool:
    try:
        return value is not None and float(value.strip()) > 0
    except ValueError:
        return False


def capacity(vm: Vm) -> tuple[int, int]:
    """(CPU×100, MEMORY in KB): what the VM takes from its host."""
    try:
        cpu = int(float(vm.template.get("CPU") or 0) * 100)
    except ValueError:
        cpu = 0
    try:
        mem = int(vm.template.get("MEMORY") or 0) * 1024
    except ValueError:
        mem = 0
    return cpu, mem


def system_datastores() -> list[Datastore]:
    """The enabled SYSTEM_DS datastores, by id."""
    out = []
    for body in pools.bodies(DatastoreRow):
        ds = datastore_from(body)
        if ds.type == 1:
            out.append(ds)
    return out


def _host_join(h: Host, vm: Vm) -> None:
    if vm.id in h.vms:
        return
    cpu, mem = capacity(vm)
    h.cpu_usage += cpu
    h.mem_usage += mem
    h.running_vms += 1
    h.vms.append(vm.id)


def _host_leave(vm: Vm) -> None:
    """Give the host back what the VM took (once: STOPPED VMs have left already)."""
    if not vm.history:
        return
    body = pools.body(HostRow, vm.history[-1].hid, lock=True)
    if body is None:
        return
    h = host_from(body)
    if vm.id not in h.vms:
        return
    cpu, mem = capacity(vm)
    h.cpu_usage = max(h.cpu_usage - cpu, 0)
    h.mem_usage = max(h.mem_usage - mem, 0)
    h.running_vms = max(h.running_vms - 1, 0)
    h.vms.remove(vm.id)
    write_host(h)


def _clean_up(vm: Vm, caller: Caller, *, resubmit: bool) -> None:
    """LifeCycleManager::clean_up_vm's record keeping when a VM's run is cut short
    (recover delete / delete-recreate, terminate from a failure): CLEANUP_DELETE or
    CLEANUP_RESUBMIT, the requester's ACTION (13 / 14) in the current HISTORY record,
    the end of the phase the VM was in, and the host's capacity back.  The record's
    ETIME is written when the cleanup ends (_step): until then an ETIME says the VM
    had left its host before (STOPPED/UNDEPLOYED: its files are on the front-end).
    The caller writes the VM and starts the cleanup transfer."""
    prev = vm.lcm_state
    vm.lcm_state = L.CLEANUP_RESUBMIT if resubmit else L.CLEANUP_DELETE
    vm.resched = 0
    if not vm.history:
        return
    now = _now()
    h = vm.history[-1]
    h.action = vs.DELETE_RECREATE_ACTION if resubmit else vs.DELETE_ACTION
    h.uid, h.gid, h.request_id = caller.uid, caller.gid, _request_id()
    if prev in vs.CLEANUP_PROLOG:
        h.petime = now
    elif prev in vs.CLEANUP_EPILOG:
        h.eetime = now
    elif prev not in vs.CLEANUP_KEEPS_TIMES:
        h.retime = now
    _host_leave(vm)


def _free_vm_resources(vm: Vm) -> None:
    """DispatchManager::free_vm_resources for a VM ended by recover delete (not
    running) or delete-db: the images are released as at the end of a normal run
    (persistent ones READY: delete-db skips oned's image check, and the check finds
    nothing to fail in a VM that is not ACTIVE), the VM is DONE, and the current
    HISTORY record is closed (RETIME if the VM ran, ETIME).  Writes the VM."""
    vm_disks.release_disks(vm.id, vm.template, failed=False,
                           snapshots=vm_tm.snapshots_by_disk(vm))
    now = _now()
    vm.state, vm.lcm_state, vm.etime = V.DONE, L.LCM_INIT, now
    if vm.history:
        h = vm.history[-1]
        if h.rstime and not h.retime:
            h.retime = now
        h.etime = h.etime or now
    write_vm(vm)


@dataclass(frozen=True)
class _Cleanup:
    """recover delete's answer for a VM that ended at once: the transfer that deletes
    its files (None: none) and the owner whose driver slots it takes."""

    transfer: vm_transfer.Transfer | None
    owner: int


# ------------------------------------------------------------------ building a VM
def _split(tmpl: Template) -> tuple[Template, Template]:
    """VirtualMachine::insert's two templates: VM attributes and the user's others."""
    vm_t, user_t = Template(), Template()
    for attr in tmpl:
        (vm_t if attr.name in VM_ATTRS else user_t).add(attr.name, attr.copy().value)
    return vm_t, user_t


def _check_capacity_attrs(t: Template) -> None:
    if not _positive_int(t.get("MEMORY")):
        raise errors.internal("MEMORY attribute must be a positive integer value.")
    if not _positive_float(t.get("CPU")):
        raise errors.internal("CPU attribute must be a positive float or integer value.")
    if t.has("VCPU") and not _positive_int(t.get("VCPU")):
        raise errors.internal("VCPU attribute must be a positive integer value.")
    for cost in ("CPU_COST", "MEMORY_COST", "DISK_COST"):
        value = t.get(cost)
        if value is not None:
            try:
                ok = float(value.strip()) >= 0
            except ValueError:
                ok = False
            if not ok:
                raise errors.internal(f"{cost} attribute must be a positive float or "
                                      "integer value.")


def _cluster_set(value: str) -> set[int]:
    return {int(c) for c in value.split(",") if c.strip().lstrip("-").isdigit()}


def _joined(ids: set[int]) -> str:
    return ",".join(str(c) for c in sorted(ids))


def _vm_clusters(t: Template) -> set[int] | None:
    """The clusters every element of the VM allows (VirtualMachine::
    get_cluster_requirements): the kernel's and initrd's datastores, then each image
    DISK's, intersected; None when nothing names a cluster."""
    clusters: set[int] | None = None
    os_vec = t.get_vector("OS") or {}
    for kind in ("KERNEL", "INITRD"):
        value = os_vec.get(f"{kind}_DS_CLUSTER_ID") or ""
        if not value:
            continue
        these = _cluster_set(value)
        clusters = these if clusters is None else clusters & these
        if not clusters:
            raise errors.internal(f"Incompatible cluster in {kind} datastore, it should be "
                                  f"in cluster {value}.")
    for n, disk in enumerate(d for d in t.get_all("DISK") if isinstance(d, dict)):
        if "CLUSTER_ID" not in disk:
            continue  # a volatile disk: placed with the system datastore
        these = _cluster_set(disk["CLUSTER_ID"])
        if not these:
            raise errors.internal(f"Missing clusters. Datastore for DISK {n} is not in any "
                                  "cluster")
        if clusters is not None and not clusters & these:
            raise errors.internal(
                f"Incompatible clusters in DISK. Datastore for DISK {n} is not in the same "
                f"cluster as the one used by other VM elements (cluster {_joined(clusters)})")
        clusters = these if clusters is None else clusters & these
    return clusters


def _automatic_requirements(t: Template) -> None:
    """AUTOMATIC_*REQUIREMENTS from the clusters of the kernel/initrd and DISK
    datastores (vms.md §3.2, §5.3)."""
    clusters = _vm_clusters(t)
    if not clusters:
        t.set("AUTOMATIC_REQUIREMENTS", "!(PIN_POLICY = PINNED)")
        return
    ids = sorted(clusters)
    hosts = " | ".join(f"CLUSTER_ID = {cid}" for cid in ids)
    ds = " | ".join(f'"CLUSTERS/ID" @> {cid}' for cid in ids)
    t.set("AUTOMATIC_REQUIREMENTS", f"({hosts}) & !(PIN_POLICY = PINNED)")
    tm_system = t.get("TM_MAD_SYSTEM")
    t.set("AUTOMATIC_DS_REQUIREMENTS",
          f"({ds})" + (f' & (TM_MAD = "{tm_system}")' if tm_system else ""))
    t.set("AUTOMATIC_NIC_REQUIREMENTS", f"({ds})")


@dataclass
class NewVm:
    """What allocate/instantiate hand to the insert transaction."""

    caller: Caller
    tmpl: Template
    hold: bool
    perms: Permissions
    path: str  # "allocate" | "instantiate"


# ------------------------------------------------------------------ the verbs
@dataclass
class Vms:
    db: Database
    config: DaemonConfig
    identity: Identity
    reactor: Any
    #: the VM templates (instantiate reads and clones them)
    templates: Any = None
    #: called with a VM's id when it becomes PENDING (the scheduler's trigger)
    on_pending: Callable[[int], None] | None = None
    #: the TransferManager (driver/tm.py) that runs PROLOG/EPILOG; None: every system
    #: datastore behaves like TM dummy (bare tests)
    tms: Any = None
    _pending_calls: list = field(default_factory=list)
    #: VMs whose transfer a restart interrupted (see resume_drivers)
    _resumed: set = field(default_factory=set)
    #: VMs whose driver answer is being worked out (a transfer may be running)
    _busy: set = field(default_factory=set)
    #: VM id -> the LCM state whose transfer is running
    _running: dict = field(default_factory=dict)
    #: resume_drivers ran at start (later takeovers skip its CLONING check)
    _started: bool = False

    def _auth(self, caller: Caller) -> AuthRequest:
        return AuthRequest(caller, self.identity.acl)

    def _perms(self, caller: Caller) -> Permissions:
        return new_object_perms(caller.uid, caller.gid, self.identity.umask_for(caller),
                                self.config.enable_other_permissions)

    async def parse(self, text: str, context: str = "") -> Template:
        """oned's template parser; long texts off the reactor thread."""
        def parse() -> Template:
            try:
                return Template.parse(text, replace_mode=False)
            except TemplateError as exc:
                raise errors.internal(context + exc.message) from None

        if len(text) > PARSE_IN_THREAD:
            return await threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                                   parse)
        return parse()

    # -------------------------------------------------------------- allocate
    async def allocate(self, caller: Caller, text: str, hold: bool) -> int:
        tmpl = await self.parse(text)
        if not caller.is_admin:
            attr = restricted_attr(tmpl)
            if attr:
                raise errors.authorization(f"VM Template includes a restricted attribute {attr}")
        req = self._auth(caller)
        req.add(Op.CREATE, ObjectAuth("VM", -1))
        req.check()
        new = NewVm(caller, tmpl, hold, self._perms(caller), "allocate")
        oid = await self.db.run(self._insert_authorized, new)
        self._placed(oid)
        return oid

    def _insert_authorized(self, new: NewVm) -> int:
        vm_disks.authorize_disks(new.caller, new.tmpl, self.config)
        extended = new.tmpl.copy()
        extend_disks(extended, new.caller.uid, self.config, self.templates.uid_of)
        vm_quotas.check_new(new.caller.uid, new.caller.gid, extended)
        return self._insert(new)

    def _insert(self, new: NewVm) -> int:
        """VirtualMachinePool::allocate + VirtualMachine::insert in one transaction: a
        failure rolls back the id, every acquired image and the row together."""
        caller, tmpl = new.caller, new.tmpl
        oid = pools.next_oid("vm_pool")
        name = tmpl.get("NAME")
        prefix = tmpl.get("TEMPLATE_NAME") or "one"
        tmpl.remove("NAME")
        tmpl.remove("TEMPLATE_NAME")
        if name is None or name == "":
            name = f"{prefix}-{oid}"
        else:
            err = name_error(name)
            if err:
                raise errors.internal(err)
        vm_t, user_t = _split(tmpl)
        _check_capacity_attrs(vm_t)
        for single in ("CPU", "MEMORY", "VCPU"):  # insert replaces them by one value each
            value = vm_t.get(single)
            if value is not None:
                vm_t.set(single, value)
        vm_t.set("VMID", str(oid))
        os_vec = vm_t.get_vector("OS")
        if os_vec is None:
            vm_t.set("OS", {})
            os_vec = vm_t.get_vector("OS")
        os_vec["UUID"] = str(uuid.uuid4())
        vm_disks.acquire_disks(oid, caller.uid, caller.gid, vm_t, self.config, path=new.path)
        vm_quotas.charge_new(caller.uid, caller.gid, vm_t)
        hold = new.hold or (vm_t.get("SUBMIT_ON_HOLD") or "").upper() == "YES"
        if new.hold:
            vm_t.set("SUBMIT_ON_HOLD", "YES")
        deploy_id = user_t.get("DEPLOY_ID") or ""
        if deploy_id.startswith("one-") and deploy_id[4:].isdigit():
            raise errors.internal(f"Trying to import an OpenNebula VM: '{deploy_id}'.")
        _automatic_requirements(vm_t)
        state = V.HOLD if hold else V.PENDING
        if any((d.get("CLONING") or "").upper() == "YES" for d in vm_t.get_all("DISK")
               if isinstance(d, dict)):
            state = V.CLONING  # an image is still being copied (vms.md §5.3 step 7)
        vm = Vm(oid, caller.uid, caller.gid, caller.uname, caller.gname, name,
                perms=new.perms, state=state, stime=_now(), template=vm_t,
                user_template=user_t, snapshots=vm_disks.disk_snapshot_lists(vm_t))
        vm.prev_state = state
        pools.insert(VmRow, oid, _meta(vm), vm_xml(vm), **_columns(vm))
        return oid

    def _placed(self, oid: int) -> None:
        if self.on_pending is not None:
            self.on_pending(oid)

    # -------------------------------------------------------------- instantiate
    async def instantiate(self, caller: Caller, tid: int, name: str, hold: bool, extra: str,
                          persistent: bool) -> int:
        t = await self.db.run(read_template, tid)
        if (t.template.get("VROUTER") or "").upper() == "YES":
            raise errors.action("Virtual router templates cannot be instantiated")
        extra_t = await self.parse(extra) if extra else Template()
        if persistent:
            clone_name = name or f"{t.name}-copy"
            new_tid = await self.templates.clone(caller, tid, clone_name, True)
            await self._persistent_clones(caller, new_tid)
            if extra:
                await self.templates.update(caller, new_tid, extra, 1)
            return await self.instantiate(caller, new_tid, name, hold,
                                          f"CLONING_TEMPLATE_ID={tid}", False)
        if not caller.is_admin and len(extra_t):
            for attr in extra_t:
                if restricted_attr(Template([attr])):
                    raise errors.authorization(
                        f"User Template includes a restricted attribute {attr.name}")
        tmpl = t.template.copy()
        tmpl.merge(extra_t)
        for attr in ("NAME", "TEMPLATE_NAME", "TEMPLATE_ID"):
            tmpl.remove(attr)
        tmpl.set("TEMPLATE_NAME", t.name)
        tmpl.set("TEMPLATE_ID", str(tid))
        if name:
            tmpl.set("NAME", name)
        req = self._auth(caller)
        req.add(Op.USE, template_auth(t))
        if extra:
            req.add(Op.CREATE, ObjectAuth("TEMPLATE", -1))
        req.add(Op.CREATE, ObjectAuth("VM", -1))
        req.check()
        new = NewVm(caller, tmpl, hold, self._perms(caller), "instantiate")

        def txn() -> int:
            # oned authorizes a copy that went through the extended info (vms.md §2.1):
            # IMAGE does not overwrite the user's IMAGE_ID, and the DISKs of LOCKED
            # images carry CLONING=YES, which skips the image lock check
            copy = dataclasses.replace(t, template=tmpl.copy())
            self.templates._extend_disks(copy, caller.uid)
            vm_disks.authorize_disks(caller, copy.template, self.config)
            vm_quotas.check_new(caller.uid, caller.gid, copy.template)
            try:
                return self._insert(new)
            except errors.OneError as exc:
                if exc.code in (errors.ErrorCode.INTERNAL, errors.ErrorCode.ACTION):
                    raise errors.allocate(exc.detail, TEMPLATE_OBJ) from None
                raise

        oid = await self.db.run(txn)
        self._placed(oid)
        return oid

    # -------------------------------------------------------------- CLONING VMs
    def disks_unlocked(self, iid: int, vm_ids: list[int]) -> None:
        """ImageManager's hook: the copy of image ``iid`` that the CLONING VMs
        ``vm_ids`` waited on has ended (LifeCycleManager::trigger_disk_lock_success /
        _failure)."""
        d = self.db.run(self._lock_check, vm_ids)

        def placed(pending: list[int]) -> None:
            for oid in pending:
                self._placed(oid)

        d.addCallback(placed)
        d.addErrback(lambda f: log.failure("lock check of the VMs of image {iid} failed", f,
                                           iid=iid))

    def _lock_check(self, vm_ids: list[int]) -> list[int]:
        """vms.md §5.3 step 7 for each VM still CLONING: every CLONING image ready ->
        the DISKs get their SOURCE/DRIVER/FORMAT and the VM goes HOLD (SUBMIT_ON_HOLD)
        or PENDING; one image in ERROR -> CLONING_FAILURE; else it keeps waiting.
        Returns the VMs that became PENDING."""
        pending = []
        for oid in sorted(set(vm_ids)):
            body = pools.body(VmRow, oid, lock=True)
            if body is None:
                continue
            vm = vm_from(body)
            if vm.state == V.CLONING and _cloning_checked(vm):
                pending.append(oid)
        return pending

    async def _persistent_clones(self, caller: Caller, tid: int) -> None:
        """The images a persistent instantiate cloned become persistent (vms.md §4.7)."""
        t = await self.db.run(read_template, tid)
        for disk in t.template.get_all("DISK"):
            if isinstance(disk, dict) and disk.get("IMAGE_ID", "").isdigit():
                try:
                    await self.templates.images.persistent(caller, int(disk["IMAGE_ID"]), True)
                except errors.OneError as exc:
                    log.warn("image {iid} of template {tid} stays non-persistent: {e!r}",
                             iid=disk["IMAGE_ID"], tid=tid, e=exc)

    # -------------------------------------------------------------- reading
    async def info(self, caller: Caller, oid: int) -> Served:
        row = await self.db.read(info_row_vm, oid)
        if row is None:
            raise errors.no_exists(OBJ, oid)
        if not caller.is_admin:
            req = self._auth(caller)
            req.add(Op.USE, row_auth("VM", oid, row), check_lock=False)
            req.check()
        return Served([row[0]])

    async def pool_info(self, caller: Caller, flag: int, start: int, end: int, state: int,
                        query: str, extended: bool) -> Served:
        if state < -2 or state > 11:
            raise errors.api("Incorrect filter_flag, state")
        if flag < -4:
            raise errors.api("Incorrect filter_flag")
        if query:
            raise errors.internal("JSON query search is not supported by the SQL backend")
        where = pool_filter(caller, self.identity.acl, flag, VmRow, "VM")
        if state == -1:
            cond = VmRow.state != V.DONE
            where = cond if where is None else where & cond
        elif state >= 0:
            cond = VmRow.state == state
            where = cond if where is None else where & cond
        order = self.identity.user_option(caller, "API_LIST_ORDER",
                                          self.config.api_list_order).upper()
        column = VmRow.ext_rpc if extended else VmRow.short_rpc
        bodies = await self.db.read(pool_bodies, where, order != "ASC", start, end, VmRow,
                                   column)
        return Served.pool("VM_POOL", bodies)

    # -------------------------------------------------------------- owner verbs
    async def _mutate(self, oid: int, fn: Callable[[Vm], bool | None]) -> None:
        def txn() -> None:
            vm = read_vm(oid, lock=True)
            if fn(vm) is not False:
                write_vm(vm)

        await self.db.run(txn)

    def _manage(self, caller: Caller, vm: Vm, operation: str | None) -> None:
        """The right ``operation`` needs on the VM (vm_ops; None: MANAGE)."""
        req = self._auth(caller)
        op = self.identity.vm_right(caller, operation) if operation else Op.MANAGE
        req.add(op, vm_auth(vm))
        req.check()

    async def rename(self, caller: Caller, oid: int, name: str) -> int:
        def apply(vm: Vm) -> bool:
            if name == vm.name:
                return False
            self._manage(caller, vm, "rename")
            err = name_error(name)
            if err:
                raise errors.action(err)
            vm.name = name
            return True

        await self._mutate(oid, apply)
        return oid

    async def chmod(self, caller: Caller, oid: int, values: list[int]) -> int:
        def apply(vm: Vm) -> None:
            vm.perms = chmod_plan(caller, self._auth(caller), vm_auth(vm), vm.perms, values,
                                  self.config.enable_other_permissions)

        await self._mutate(oid, apply)
        return oid

    async def chown(self, caller: Caller, oid: int, uid: int, gid: int) -> int:
        user = self.identity.user(uid) if uid > -1 else None
        group = self.identity.group(gid) if gid > -1 else None

        def apply(vm: Vm) -> None:
            new_user, new_group = chown_plan(self._auth(caller), vm_auth(vm), vm.uid, vm.gid,
                                             user, group)
            vm_quotas.check_owner(vm, new_user.id if new_user else vm.uid,
                                  new_group.id if new_group else vm.gid)
            if new_user is not None:
                vm.uid, vm.uname = new_user.id, new_user.name
            if new_group is not None:
                vm.gid, vm.gname = new_group.id, new_group.name

        await self._mutate(oid, apply)
        return oid

    async def lock(self, caller: Caller, oid: int, level: int, test: bool) -> int:
        def apply(vm: Vm) -> None:
            req = self._auth(caller)
            req.add(Op.MANAGE, vm_auth(vm), check_lock=False)
            req.check()
            vm.lock = locks.locked(caller, vm.lock, level, test)

        await self._mutate(oid, apply)
        return oid

    async def unlock(self, caller: Caller, oid: int) -> int:
        def apply(vm: Vm) -> None:
            req = self._auth(caller)
            req.add(Op.MANAGE, vm_auth(vm), check_lock=False)
            req.check()
            vm.lock = locks.unlocked(caller, vm.lock)

        await self._mutate(oid, apply)
        return oid

    # -------------------------------------------------------------- deploy
    async def deploy(self, caller: Caller, oid: int, hid: int, enforce: bool, ds_id: int,
                     extra: str, *, scheduled: bool = False) -> int:
        if extra:
            await self.parse(extra)

        def txn() -> None:
            h = read_host(hid)
            if h.state == OFFLINE:
                raise errors.action("Host is offline, cannot use it to deploy VM")
            # rows are locked VM first, then host, everywhere (the driver answers too),
            # so two transactions never wait for each other on PostgreSQL
            vm = read_vm(oid, lock=True)
            h = read_host(hid, lock=True)
            target = ds_id
            if target == -1 and vm.state in (V.STOPPED, V.UNDEPLOYED) and vm.history:
                target = vm.history[-1].ds_id
            if target == -1:
                candidates = [d for d in system_datastores() if h.cluster_id in d.clusters]
                if not candidates:
                    raise errors.action(f"cluster [{h.cluster_id}] does not have any "
                                        "datastore of type SYSTEM_DS.")
                ds = candidates[0]
            else:
                body = pools.body(DatastoreRow, target)
                if body is None:
                    raise errors.no_exists("datastore", target)
                ds = datastore_from(body)
                if ds.type != 1:
                    raise errors.internal(f"Trying to use datastore [{target}] to deploy the "
                                          "VM, but it is not of type system datastore.")
                if h.cluster_id not in ds.clusters:
                    raise errors.action(f"datastore [{target}] and host [{hid}] are not in the "
                                        f"same cluster [{h.cluster_id}].")
            req = self._auth(caller)
            req.add(self.identity.vm_right(caller, "deploy"), vm_auth(vm))
            req.add(Op.MANAGE, host_auth(h))
            req.add(Op.USE, ds_auth(ds))
            req.check()
            first = vs.DEPLOY_FROM.get(vm.state)
            if first is None:
                raise errors.action("Deploy action is not available for state "
                                    f"{vs.state_str(vm.state, vm.lcm_state)}")
            if enforce:
                cpu, mem = capacity(vm)
                free_cpu, free_mem = h.max_cpu - h.cpu_usage, h.max_mem - h.mem_usage
                if cpu > free_cpu:
                    raise errors.action(f"virtual machine [{oid}] does not fit in host "
                                        f"[{hid}]. Not enough CPU: {cpu}/{free_cpu}")
                if mem > free_mem:
                    raise errors.action(f"virtual machine [{oid}] does not fit in host "
                                        f"[{hid}]. Not enough memory: {mem}/{free_mem}")
            if h.vm_mad != "dummy":
                raise errors.action(f"Cannot find vmm driver: {h.vm_mad}")
            now = _now()
            vm.history.append(History(
                oid=vm.id, seq=len(vm.history), hostname=h.name, hid=h.id, cid=h.cluster_id,
                stime=now, vm_mad=h.vm_mad, tm_mad=ds.tm_mad, ds_id=ds.id,
                plan_id=-1 if scheduled else -2, action_id=0 if scheduled else -1,
                pstime=now))
            if not vm.template.has("TM_MAD_SYSTEM"):
                vm_transfer.check_tm_mad_disks(vm.template, ds, _datastore_or_none)
                vm.template.set("TM_MAD_SYSTEM", ds.tm_mad)
            vm_transfer.volatile_disk_info(
                vm.template, ds,
                self.config.tm_mad(ds.tm_mad).get("DRIVER") or ds.template.get("DRIVER") or "")
            if first == L.PROLOG:
                vm_transfer.set_os_paths(vm, self.config.datastore_location)
            vm.state, vm.lcm_state = V.ACTIVE, first
            _host_join(h, vm)
            write_host(h)
            write_vm(vm)
            return first

        self._drive(oid, V.ACTIVE, await self.db.run(txn))
        return oid

    # -------------------------------------------------------------- actions
    async def action(self, caller: Caller, name: str, oid: int) -> int:
        def txn() -> tuple[int, int] | None:
            vm = read_vm(oid, lock=True)
            act = vs.ACTIONS.get(name)
            self._manage(caller, vm, vm_ops.ACTION_STRINGS.get(name))
            if act is None:
                raise errors.action(f'Action "{name}" is not supported')
            if name == "resume":
                vm_quotas.check_resume(vm)
            rule = vs.rule_for(act, vm.state, vm.lcm_state)
            if rule is None:
                text = act.refusal.format(id=oid, state=vs.state_str(vm.state, vm.lcm_state))
                raise errors.action(f'Error performing action "{name}": {text}')
            if name in ("resched", "unresched"):
                vm.resched = 1 if name == "resched" else 0
                write_vm(vm)
                return None
            if rule.to is None:
                return None
            now = _now()
            h = vm.history[-1] if vm.history else None
            if rule.history and h is not None:
                h.action, h.uid, h.gid, h.request_id = (rule.history, caller.uid, caller.gid,
                                                        _request_id())
            state, lcm = rule.to
            if (state, lcm) == vs.DONE_NOW:
                vm_disks.release_disks(vm.id, vm.template, failed=False,
                                       snapshots=vm_tm.snapshots_by_disk(vm))
                vm.etime = now
            elif (vm.state in (V.POWEROFF, V.SUSPENDED) and state == V.ACTIVE
                  and lcm in (L.BOOT_POWEROFF, L.BOOT_SUSPENDED) and h is not None):
                # resume from POWEROFF/SUSPENDED closes the record and opens SEQ+1
                h.etime = h.retime = now
                vm.history.append(History(
                    oid=vm.id, seq=h.seq + 1, hostname=h.hostname, hid=h.hid, cid=h.cid,
                    stime=now, vm_mad=h.vm_mad, tm_mad=h.tm_mad, ds_id=h.ds_id,
                    plan_id=h.plan_id, action_id=h.action_id, rstime=now))
            elif lcm in (L.EPILOG, L.EPILOG_STOP, L.EPILOG_UNDEPLOY) and h is not None:
                if vm.state in (V.POWEROFF, V.SUSPENDED, V.ACTIVE):
                    h.retime = h.retime or now
                h.estime = now
            elif lcm == L.CLEANUP_DELETE:
                _clean_up(vm, caller, resubmit=False)
            vm.state, vm.lcm_state = state, lcm
            write_vm(vm)
            return state, lcm

        moved = await self.db.run(txn)
        if moved is not None:
            state, lcm = moved
            if state == V.PENDING:
                self._placed(oid)
            elif state == V.ACTIVE:
                self._drive(oid, state, lcm)
        return oid

    # -------------------------------------------------------------- recover
    async def recover(self, caller: Caller, oid: int, op: int) -> int:
        """one.vm.recover (VirtualMachineRecover): 0 failure, 1 success (answer the VM's
        pending driver operation as if it had failed / succeeded), 2 retry (a *_FAILURE
        state runs its operation again), 3 delete (an ACTIVE VM: CLEANUP_DELETE, the
        VM's files are deleted, nothing saved, and its persistent images end in ERROR,
        vms.md §1.4; any other: DONE at once, see _recover_delete),
        4 delete-recreate (the VM's files are deleted and it is PENDING again, same id,
        images kept), 5 delete-db (DONE at once, no driver runs, images released).
        The operation code is checked before the VM is looked up; the right is the one
        its operation needs (vm_ops: ADMIN for all of them by default)."""
        if op not in RECOVER_RIGHTS:
            raise errors.action("Wrong recovery operation code")

        def txn() -> tuple[int, int] | _Cleanup | None:
            vm = read_vm(oid, lock=True)
            self._manage(caller, vm, RECOVER_RIGHTS[op])
            if op == 3:
                return self._recover_delete(vm, caller)
            if op == 4:
                return self._delete_recreate(vm, caller)
            if op == 5:
                return self._delete_db(vm)
            if op != 2 and vm.state == V.CLONING_FAILURE:
                # DispatchManager::recover: disk_lock_success / _failure, the same check
                return (V.PENDING, L.LCM_INIT) if _cloning_checked(vm) else None
            if vm.state != V.ACTIVE:
                what = "a retry" if op == 2 else "a recover operation"
                raise errors.action(f"Could not perform {what} on VM {oid}, wrong state "
                                    f"{vs.state_str(vm.state, vm.lcm_state)}.")
            base = vs.FAILURE_OF.get(vm.lcm_state)
            if op == 2:
                if base is None:
                    return None
                vm.lcm_state = base
                write_vm(vm)
                return V.ACTIVE, base
            current = base if base is not None else vm.lcm_state
            if current not in vs.STEPS:
                return None
            if op == 0:
                failure = vs.TM_FAILURE.get(current)
                if failure is None or failure == vm.lcm_state:
                    return None
                vm.lcm_state = failure
                write_vm(vm)
                return None
            vm.lcm_state = current
            write_vm(vm)
            return self._step(oid)

        moved = await self.db.run(txn)
        if isinstance(moved, _Cleanup):
            self._run_cleanup(oid, moved)
            moved = vs.DONE_NOW
        running = self._running.get(oid)
        if self.tms is not None and running is not None and op != 2:
            now = await self.db.run(lambda: read_vm(oid).lcm_state)
            if now != running and self._running.get(oid) == running:
                # the transfer of the state the VM left is stale (never the cleanup an
                # answer may already have started for the state it is in now)
                self.tms.cancel(oid)
        if op in (3, 5) and moved == vs.DONE_NOW:
            self._forget_files(oid)
        elif moved is not None and moved[0] == V.PENDING:
            self._placed(oid)
        elif moved is not None:
            self._drive(oid, *moved)
        return oid

    def _recover_delete(self, vm: Vm,
                        caller: Caller) -> tuple[int, int] | _Cleanup | None:
        """DispatchManager::delete_vm: an ACTIVE VM goes CLEANUP_DELETE (its images are
        released when the cleanup ends, persistent ones ERROR); a VM that is not
        running ends at once with its images released as at a normal end, and one with
        files (POWEROFF, SUSPENDED on the host; STOPPED, UNDEPLOYED on the front-end)
        gets their cleanup transfer started, whose answer nobody waits for."""
        if vm.state == V.DONE:
            return None  # DispatchManager::delete_vm: nothing to do, success
        if vm.state in (V.PENDING, V.HOLD, V.CLONING, V.CLONING_FAILURE, V.INIT):
            _free_vm_resources(vm)
            return None
        if vm.state != V.ACTIVE:
            cleanup = None
            if vm.history:
                left = vm.state in (V.STOPPED, V.UNDEPLOYED)
                try:
                    cleanup = vm_transfer.epilog(
                        vm, self.config.datastore_location,
                        host=tm_frontend() if left else None, cleanup=True)
                except vm_transfer.TransferError as exc:
                    log.error("VM {oid}: epilog_delete not run: {why}", oid=vm.id,
                              why=exc.text)
            if vm.state in (V.POWEROFF, V.SUSPENDED):
                _host_leave(vm)
            _free_vm_resources(vm)
            return _Cleanup(cleanup, vm.uid)
        _clean_up(vm, caller, resubmit=False)
        write_vm(vm)
        return V.ACTIVE, L.CLEANUP_DELETE

    def _delete_recreate(self, vm: Vm, caller: Caller) -> tuple[int, int] | None:
        """DispatchManager::delete_recreate: an ACTIVE VM's files are deleted first
        (CLEANUP_RESUBMIT, LifeCycleManager::trigger_delete_recreate), then it is
        PENDING; a STOPPED/UNDEPLOYED or HOLD VM is PENDING at once (its files stay
        where they are: the next PROLOG writes the disks again).  The images stay
        acquired and the HISTORY stays (the next deploy opens SEQ+1); the snapshot
        lists of disks not used in place go."""
        state = vm.state
        if state == V.POWEROFF:
            raise errors.action("Cannot delete-recreate a powered off VM. Resume it first")
        if state == V.SUSPENDED:
            raise errors.action("Cannot delete-recreate a suspended VM. Resume it first")
        if state == V.DONE:
            raise errors.action("Cannot delete-recreate a VM already in DONE state")
        if state in (V.INIT, V.PENDING, V.CLONING, V.CLONING_FAILURE):
            return None
        if state == V.ACTIVE:
            if vm.lcm_state == L.CLEANUP_DELETE:
                log.error("VM {oid}: delete-recreate of a VM in CLEANUP_DELETE ignored",
                          oid=vm.id)
                return None
            if vm.lcm_state == L.CLEANUP_RESUBMIT:
                return self._step(vm.id)  # the cleanup's answer, at once
            _clean_up(vm, caller, resubmit=True)
            vm_tm.drop_non_persistent_snapshots(vm)
            write_vm(vm)
            return V.ACTIVE, L.CLEANUP_RESUBMIT
        if state in (V.STOPPED, V.UNDEPLOYED):
            vm_tm.drop_non_persistent_snapshots(vm)
        if vm.history:
            h = vm.history[-1]
            h.action, h.uid, h.gid, h.request_id = (vs.DELETE_RECREATE_ACTION, caller.uid,
                                                    caller.gid, _request_id())
        vm.state, vm.lcm_state = V.PENDING, L.LCM_INIT
        write_vm(vm)
        return V.PENDING, L.LCM_INIT

    def _delete_db(self, vm: Vm) -> tuple[int, int] | None:
        """DispatchManager::delete_vm_db: DONE at once without any driver (the files in
        the system datastore stay); the host gets its capacity back and the images are
        released as at the end of a normal run (persistent ones READY, never ERROR:
        free_vm_resources without the image check)."""
        if vm.state == V.DONE:
            return None
        if vm.state in (V.SUSPENDED, V.POWEROFF, V.ACTIVE):
            _host_leave(vm)
        _free_vm_resources(vm)
        return vs.DONE_NOW

    def _run_cleanup(self, oid: int, cleanup: _Cleanup) -> None:
        """The epilog_delete of a VM that is DONE already (recover delete of a VM that
        was not running): started and logged, its answer changes nothing."""
        transfer = cleanup.transfer
        if self.tms is None or transfer is None or vm_transfer.runs_nothing(transfer):
            return
        d = defer.ensureDeferred(self.tms.transfer(oid, transfer.actions, op=transfer.op,
                                                   owner=cleanup.owner, env=transfer.env))
        d.addCallback(lambda result: result.ok or log.warn(
            "VM {oid}: the cleanup of a deleted VM failed: {why}", oid=oid, why=result.info))
        d.addErrback(lambda f: log.failure("VM {oid}: cleanup transfer crashed", f, oid=oid))

    def _forget_files(self, oid: int) -> None:
        """The daemon's own files of a VM that is DONE (context.sh, transfer files)."""
        shutil.rmtree(os.path.join(self.config.var_location, "vms", str(oid)),
                      ignore_errors=True)

    # -------------------------------------------------------------- the dummy drivers
    def _drive(self, oid: int, state: int, lcm: int) -> None:
        """The dummy driver answers the operation of ``lcm`` after DRIVER_DELAY; a TM
        transfer starts at once (as oned hands it to the TM driver): its scripts take
        the time, and a transfer of the dummy TM alone waits DRIVER_DELAY itself."""
        if state != V.ACTIVE:
            return
        delay = 0 if self.tms is not None and lcm in TM_STATES else DRIVER_DELAY
        self._pending_calls = [c for c in self._pending_calls if c.active()]
        self._pending_calls.append(self.reactor.callLater(delay, self._answer, oid))

    def _answer(self, oid: int) -> None:
        d = defer.ensureDeferred(self._answer_async(oid))

        def next_step(moved: tuple[int, int] | None) -> None:
            if moved is not None and moved[0] == V.PENDING:
                self._placed(oid)  # delete-recreate's cleanup is done
            elif moved is not None:
                self._drive(oid, *moved)

        d.addCallback(next_step)
        d.addErrback(lambda f: log.failure("VM {oid}: driver answer failed", f, oid=oid))

    async def _answer_async(self, oid: int) -> tuple[int, int] | None:
        """The driver answer of the VM's transient state: for the TM states (vms.md §7.4)
        the transfer runs first and its result decides the next state."""
        if self.tms is None:
            return await self.db.run(self._answered, oid)
        if oid in self._busy:
            # a second answer for the same moment (one scheduled just before an action
            # moved the VM on): the VM's chain already runs, and a transfer must never
            # run twice (a repeated clone would overwrite the disk of a running VM)
            return None
        self._busy.add(oid)
        try:
            return await self._transfer_answer(oid)
        finally:
            self._busy.discard(oid)

    async def _transfer_answer(self, oid: int) -> tuple[int, int] | None:
        plan = await self.db.run(self._plan, oid)
        if plan is None:
            return None
        lcm, owner, transfer = plan
        if transfer is None:  # the dummy VMM's answer to the state the plan saw
            return self._moved(oid, await self.db.run(self._answered, oid, lcm))
        if isinstance(transfer, vm_transfer.TransferError):
            log.error("VM {oid}: {op} not run: {why}", oid=oid, op=vs.Lcm(lcm).name,
                      why=transfer.text)
            return await self.db.run(self._answered, oid, lcm, transfer.text)
        error = None
        if vm_transfer.runs_nothing(transfer):   # the dummy TM's answer
            await task.deferLater(self.reactor, DRIVER_DELAY, lambda: None)
            if self.tms.runner.stopping:
                return None  # as a cancelled answer: the next start gives it
        else:
            self._running[oid] = lcm
            try:
                result = await self.tms.transfer(oid, transfer.actions, op=transfer.op,
                                                 owner=owner, env=transfer.env)
            finally:
                self._running.pop(oid, None)
            if self.tms.runner.stopping:
                return None  # the daemon stops: journaled, the next start runs it again
            if not result.ok:
                error = result.info or "-"
        self._resumed.discard(oid)
        return self._moved(oid, await self.db.run(self._answered, oid, lcm, error))

    def _moved(self, oid: int, moved: tuple[int, int] | None) -> tuple[int, int] | None:
        if moved == STALE:
            # the VM moved on meanwhile (one.vm.recover, an action): the answers that
            # came while this one was worked out were dropped, so its new state gets one
            self.reactor.callLater(0, self._drive, oid, V.ACTIVE, 0)
            return None
        return moved

    def _plan(self, oid: int) -> tuple[int, int, Any] | None:
        """(LCM state, owner, Transfer or TransferError) of an ACTIVE VM, the transfer
        None when a TM transfer does not answer its state; None for other VMs.  Writes
        context.sh for a prolog."""
        body = pools.body(VmRow, oid)
        if body is None:
            return None
        vm = vm_from(body)
        if vm.state != V.ACTIVE or not daemons.owns("vm", oid):
            return None  # (another daemon took the VM's work over: it runs the transfer)
        lcm = vm.lcm_state
        if lcm not in TM_STATES or not vm.history:
            return lcm, vm.uid, None
        cfg = self.config
        vms_dir = os.path.join(cfg.var_location, "vms")
        try:
            if lcm in PROLOGS:
                if vm.template.get_vector("CONTEXT") is not None:
                    write_context(vms_dir, vm)
                if lcm == L.PROLOG:
                    transfer = vm_transfer.prolog(vm, cfg.datastore_location, vms_dir)
                else:  # resume: the files come back from the front-end
                    transfer = vm_transfer.move(vm, cfg.datastore_location, tm_frontend(),
                                                vm.history[-1].hostname, "prolog")
            elif lcm in (L.EPILOG_STOP, L.EPILOG_UNDEPLOY):
                transfer = vm_transfer.move(vm, cfg.datastore_location,
                                            vm.history[-1].hostname, tm_frontend(),
                                            "epilog_stop")
            else:
                from_fe = bool(vm.history[-1].etime)  # STOPPED/UNDEPLOYED: it left
                transfer = vm_transfer.epilog(
                    vm, cfg.datastore_location, host=tm_frontend() if from_fe else None,
                    cleanup=lcm in CLEANUPS)
                if oid in self._resumed:
                    transfer = vm_transfer.without_saved(transfer)
        except vm_transfer.TransferError as exc:
            return lcm, vm.uid, exc
        return lcm, vm.uid, transfer

    def _answered(self, oid: int, expect: int | None = None,
                  error: str | None = None) -> tuple[int, int] | None:
        """A driver answer of this daemon, applied by :meth:`_step` unless another daemon
        took the VM's work over meanwhile (this one's lease ran out): that one's run
        decides, this late answer is dropped.  The VM row is locked before its claim, as
        every write of a VM does."""
        if pools.body(VmRow, oid, lock=True) is None:
            return None
        if not daemons.owns("vm", oid):
            log.warn("VM {oid}: dropped a driver answer, another daemon took the VM's "
                     "work over", oid=oid)
            return None
        return self._step(oid, expect, error)

    def _step(self, oid: int, expect: int | None = None,
              error: str | None = None) -> tuple[int, int] | None:
        """One driver answer: the VM's transient LCM state becomes the next one.

        ``expect`` is the LCM state a transfer ran for: if the VM left it meanwhile
        (one.vm.recover, a cleanup) the answer is stale and ignored.  ``error`` is the
        failure text of that transfer: the VM goes to the state's FAILURE state
        (vms.md §7.4) with USER_TEMPLATE/ERROR, except a cleanup, which ends DONE."""
        body = pools.body(VmRow, oid, lock=True)
        if body is None:
            return None
        vm = vm_from(body)
        if expect is not None and (vm.state, vm.lcm_state) != (V.ACTIVE, expect):
            return STALE
        step = vs.STEPS.get(vm.lcm_state) if vm.state == V.ACTIVE else None
        if step is None:
            return None
        if error is not None:
            text = f"{time.ctime()}: Error executing image transfer script: {error}"
            if error and not error.startswith("-"):
                vm.user_template.set("ERROR", text)
            failure = vs.TM_FAILURE.get(vm.lcm_state)
            if failure is not None:
                log.error("VM {oid}: {lcm} failed: {error}", oid=oid,
                          lcm=vs.Lcm(vm.lcm_state).name, error=error)
                vm.lcm_state = failure
                write_vm(vm)
                return None
        now = _now()
        h = vm.history[-1] if vm.history else None
        state, lcm = step.to
        if h is not None:
            if vm.lcm_state in (L.PROLOG, L.PROLOG_RESUME, L.PROLOG_UNDEPLOY):
                h.petime = now
                h.rstime = now
            elif lcm == L.RUNNING and step.op == "deploy":
                # the dummy VMM's deploy answer (a restore keeps the domain it had)
                vm.deploy_id = f"{h.hostname}:{vm.name}:dummy"
            if lcm in (L.EPILOG, L.EPILOG_STOP, L.EPILOG_UNDEPLOY):
                h.retime = h.retime or now
                h.estime = now
            if step.leaves_host:
                h.eetime = now if vm.lcm_state not in CLEANUPS else h.eetime
                h.etime = h.etime or now
        if step.leaves_host:
            _host_leave(vm)
        if step.done:
            vm_disks.release_disks(vm.id, vm.template,
                                   failed=vm.lcm_state == L.CLEANUP_DELETE,
                                   snapshots=vm_tm.snapshots_by_disk(vm))
            vm.etime = now
            shutil.rmtree(os.path.join(self.config.var_location, "vms", str(oid)),
                          ignore_errors=True)
        if vm.lcm_state == L.CLEANUP_RESUBMIT:
            vm.deploy_id = ""  # DispatchManager::trigger_resubmit
        vm.state, vm.lcm_state = state, lcm
        write_vm(vm)
        return state, lcm

    async def resume_drivers(self, only: set[int] | None = None) -> None:
        """At start: VMs left in a transient LCM state get their driver answer.

        A transfer the previous run did not finish (journaled, or not yet started, or
        finished without its answer stored) is run again from the VM's state: every
        prolog line is idempotent (files are written under ``.tmp`` names and renamed;
        tm.sweep_partial_files removed the halves a KILL left; ln swaps its link), and so
        are DELETE and MV; an epilog MVDS ends by removing the disk it saved, so in an
        interrupted epilog an MVDS whose disk is gone already ran and is left out.
        Journals of other transfers (disk snapshots, save-as) are left to their owners.

        ``only``: the VMs this daemon has just taken over (vm_takeover.py); the others'
        work belongs to live daemons."""
        ids = await self.db.run(lambda: [r[0] for r in VmRow.select(VmRow.oid).where(
            (VmRow.state == V.ACTIVE) & VmRow.lcm_state.in_(list(vs.STEPS))).tuples()])
        if only is not None:
            ids = [i for i in ids if i in only]
        if self.tms is not None:
            for item in self.tms.interrupted():
                if item.op in LIFE_CYCLE_OPS and (only is None or item.vm_id in only):
                    log.warn("VM {oid}: the {op} transfer was interrupted by a restart; "
                             "running it again", oid=item.vm_id, op=item.op)
                    self.tms.forget(item.vm_id)
            self._resumed.update(ids)
        for oid in ids:
            self._drive(oid, V.ACTIVE, 0)
        if only is not None and self._started:
            return  # a takeover while running: the CLONING check below is the start's
        self._started = True
        # a copy may have ended between its image's transaction and the lock check of
        # the VMs that waited on it (a stop in between): check every CLONING VM once
        cloning = await self.db.run(lambda: [r[0] for r in VmRow.select(VmRow.oid).where(
            VmRow.state == V.CLONING).tuples()])
        if cloning:
            self.disks_unlocked(-1, cloning)

    def stop(self) -> None:
        for call in self._pending_calls:
            if call.active():
                call.cancel()
        self._pending_calls = []


#: what _step answers when the VM left the state the answer was for
STALE = (-1, -1)
#: the transient LCM states a TM transfer answers (the others: the dummy VMM)
TM_STATES = frozenset({L.PROLOG, L.PROLOG_RESUME, L.PROLOG_UNDEPLOY, L.EPILOG,
                       L.EPILOG_STOP, L.EPILOG_UNDEPLOY, L.CLEANUP_DELETE,
                       L.CLEANUP_RESUBMIT})
#: the cleanups (recover delete, delete-recreate): their transfer never saves a disk
CLEANUPS = frozenset({L.CLEANUP_DELETE, L.CLEANUP_RESUBMIT})
PROLOGS = frozenset({L.PROLOG, L.PROLOG_RESUME, L.PROLOG_UNDEPLOY})
#: one.vm.recover's operation codes (0 failure, 1 success, 2 retry, 3 delete,
#: 4 delete-recreate, 5 delete-db), each with the VM operation whose right it needs
RECOVER_RIGHTS = {0: "recover", 1: "recover", 2: "retry", 3: "delete", 4: "delete-recreate",
                  5: "delete"}
#: the transfer files' ops of the life cycle (vms.md §7.1)
LIFE_CYCLE_OPS = frozenset({"prolog", "epilog", "epilog_stop", "epilog_delete"})


def _datastore_or_none(ds_id: int) -> Datastore | None:
    body = pools.body(DatastoreRow, ds_id)
    return datastore_from(body) if body is not None else None


def tm_frontend() -> str:
    return tm.frontend()


def write_context(vms_dir: str, vm: Vm) -> str:
    """VAR/vms/<id>/context.sh (the CONTEXT line's first file), private to the daemon."""
    directory = os.path.join(vms_dir, str(vm.id))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, "context.sh")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(vm_transfer.context_script(vm))
    os.replace(tmp, path)
    return path


def info_row_vm(oid: int):
    """(full body escaped, uid, gid, owner_u, group_u, other_u) of one VM, or None."""
    row = (VmRow.select(VmRow.body, VmRow.uid, VmRow.gid, VmRow.owner_u, VmRow.group_u,
                        VmRow.other_u).where(VmRow.oid == oid).limit(1).tuples().first())
    if row is None:
        return None
    return (rpc_bytes(row[0]), *row[1:])


def _cloning_checked(vm: Vm) -> bool:
    """LifeCycleManager::trigger_disk_lock_success for a CLONING or CLONING_FAILURE VM
    (vms.md §5.3 step 7): every CLONING image ready -> HOLD (SUBMIT_ON_HOLD) or PENDING,
    one in ERROR -> CLONING_FAILURE, else CLONING; written when it moved.  True: the VM
    is PENDING now (the scheduler's to place).  Runs inside a DB transaction."""
    verdict = vm_disks.cloning_check(vm.template)
    before = vm.state
    if verdict == "failed":
        vm.state = V.CLONING_FAILURE
    elif verdict == "ready":
        vm_disks.clear_all_cloning(vm.template)
        hold = (vm.template.get("SUBMIT_ON_HOLD") or "").upper() == "YES"
        vm.state = V.HOLD if hold else V.PENDING
    else:
        vm.state = V.CLONING
    if vm.state != before or verdict == "ready":
        write_vm(vm)
    return vm.state == V.PENDING
