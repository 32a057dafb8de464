"""VM disk snapshots (vms.md §5.8, §8): one.vm.disksnapshotcreate / revert / delete /
rename.

A disk's snapshot list lives in the VM document (``/VM/SNAPSHOTS`` with its DISK_ID,
``Vm.snapshots``); the files are made by the TM ``snap_*`` scripts of the disk's
datastore.  For a persistent image whose disks are used in place (LN_TARGET NONE) the
list is copied into the image after every operation, and in any case when the VM
releases the image (vm_disks.release_disks with the VM's lists), so that the datastore
driver's snap_* scripts then find those very files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from oned_images import errors
from oned_images.config import DaemonConfig
from oned_images.domain import snapshots as snap
from oned_images.domain import vm_states as vs
from oned_images.domain import vm_tm, vm_transfer
from oned_images.domain.identity import Identity
from oned_images.domain.images import image_auth, read_image, write_image
from oned_images.domain.permissions import AuthRequest, Caller, Op
from oned_images.domain.states import ImageState, ImageType
from oned_images.domain.vms import read_vm, vm_auth, write_vm
from oned_images.driver import tm
from oned_images.driver.tm import TmResult
from oned_images.model.objects import Vm
from oned_images.template import Template, Vector

log = Logger(namespace="LCM")
V, L = vs.VmState, vs.Lcm
_int = vm_tm.vector_int

#: the LCM state of each operation, by the VM state it starts from
CREATE_IN = {(V.ACTIVE, L.RUNNING): L.DISK_SNAPSHOT, (V.POWEROFF, 0): L.DISK_SNAPSHOT_POWEROFF,
             (V.SUSPENDED, 0): L.DISK_SNAPSHOT_SUSPENDED}
DELETE_IN = {(V.ACTIVE, L.RUNNING): L.DISK_SNAPSHOT_DELETE,
             (V.POWEROFF, 0): L.DISK_SNAPSHOT_DELETE_POWEROFF,
             (V.SUSPENDED, 0): L.DISK_SNAPSHOT_DELETE_SUSPENDED}
REVERT_IN = {(V.POWEROFF, 0): L.DISK_SNAPSHOT_REVERT_POWEROFF}
#: transient LCM state -> the operation it runs
OPERATION = {**{lcm: "create" for lcm in CREATE_IN.values()},
             **{lcm: "delete" for lcm in DELETE_IN.values()},
             **{lcm: "revert" for lcm in REVERT_IN.values()},
             L.DISK_SNAPSHOT_REVERT_SUSPENDED: "revert"}
#: HISTORY ACTION codes (vms.md §5.4)
HISTORY = {"create": 25, "revert": 41, "delete": 26}


# ------------------------------------------------------------------ the list rules
def orphans_mode(disk: Vector) -> str:
    """The list mode, fixed when the list is created: DISK ALLOW_ORPHANS, FORMAT meaning
    YES for raw disks and NO for the others, absent meaning NO."""
    value = (disk.get("ALLOW_ORPHANS") or "NO").upper()
    if value == "FORMAT":
        return "YES" if (disk.get("FORMAT") or "raw").lower() == "raw" else "NO"
    return value if value in ("YES", "NO", "MIXED") else "NO"


def new_list(disk: Vector, disk_id: int) -> Template:
    t = Template()
    t.add("ALLOW_ORPHANS", orphans_mode(disk))
    t.add("CURRENT_BASE", "-1")
    t.add("DISK_ID", str(disk_id))
    t.add("NEXT_SNAPSHOT", "0")
    return t


def active_id(t: Template) -> int:
    for s in snap.snapshots(t):
        if (s.get("ACTIVE") or "").upper() == "YES":
            return _int(s.get("ID")) or 0
    return -1


def add_snapshot(t: Template, name: str, size: int, now: int) -> int:
    """Snapshots::create_snapshot: the new one's PARENT by mode; returns its id."""
    sid = _int(t.get("NEXT_SNAPSHOT")) or 0
    mode = snap.mode(t)
    parent = -1
    if mode == "NO":
        parent = active_id(t)
    elif mode == "MIXED":
        parent = _int(t.get("CURRENT_BASE"))
        parent = -1 if parent is None else parent
    new = {"DATE": str(now), "ID": str(sid), "PARENT": str(parent), "SIZE": str(size)}
    if name:
        new["NAME"] = name
    if parent != -1:
        for s in snap.snapshots(t):
            if s.get("ID") == str(parent):
                s["CHILDREN"] = ",".join([*snap.children(s), str(sid)])
    t.add("SNAPSHOT", new)
    t.set("NEXT_SNAPSHOT", str(sid + 1))
    return sid


def activate(t: Template, sid: int) -> None:
    for s in snap.snapshots(t):
        if s.get("ID") == str(sid):
            s["ACTIVE"] = "YES"
        else:
            s.pop("ACTIVE", None)


def drop(t: Template, sid: int) -> None:
    """A snapshot whose creation failed goes, and its parent forgets it."""
    out = []
    for s in snap.snapshots(t):
        if s.get("ID") == str(sid):
            continue
        kids = [c for c in snap.children(s) if c != str(sid)]
        if kids:
            s["CHILDREN"] = ",".join(kids)
        else:
            s.pop("CHILDREN", None)
        out.append(s)
    t.remove("SNAPSHOT")
    for s in out:
        t.add("SNAPSHOT", s)


def delete_error(t: Template, sid: int, persistent: bool) -> str | None:
    """Snapshots::test_delete (vms.md §5.8)."""
    s = snap.find(t, sid)
    if s is None:
        return "Snapshot does not exist"
    mode = snap.mode(t)
    active = (s.get("ACTIVE") or "").upper() == "YES"
    kids = snap.children(s)
    if mode == "MIXED":
        if active:
            return "Cannot delete the active snapshot"
        if kids:
            return "Cannot delete snapshot with children"
        return None
    if mode in ("NO", "LINEAR"):
        if persistent and sid == 0:
            return "Cannot delete snapshot 0 for persistent disk images"
        if len(kids) > 1:
            return "Cannot delete snapshot with more than one children"
        if active and kids:
            return "Cannot delete the active snapshot with children"
        if kids:
            child = snap.find(t, int(kids[0]))
            if child is not None and snap.children(child):
                return "Cannot delete snapshot if child has children"
            parent = snap.find(t, _int(s.get("PARENT")) or -1)
            if parent is not None and len(snap.children(parent)) > 1:
                return "Cannot delete snapshot if parent has more than one child"
    return None


def total_size(t: Template | None) -> int:
    if t is None:
        return 0
    return sum(_int(s.get("SIZE")) or 0 for s in snap.snapshots(t))


def _sort(t: Template) -> None:
    """SNAPSHOT children in the schema's (alphabetical) order: vectors keep the order
    their keys were set in."""
    items = [dict(sorted(s.items())) for s in snap.snapshots(t)]
    t.remove("SNAPSHOT")
    for s in items:
        t.add("SNAPSHOT", s)


def _set_list(vm: Vm, disk: Vector, disk_id: int, t: Template | None) -> None:
    """Store ``t`` as the disk's list (None or empty: the disk has none any more)."""
    if t is not None:
        _sort(t)
    vm.snapshots = [x for x in vm.snapshots if _int(x.get("DISK_ID")) != disk_id]
    if t is not None and snap.count(t):
        vm.snapshots.append(t)
        vm.snapshots.sort(key=lambda x: _int(x.get("DISK_ID")) or 0)
    disk["DISK_SNAPSHOT_TOTAL_SIZE"] = str(total_size(t))


def copy_to_image(disk: Vector, t: Template | None, *, success: bool,
                  size: int | None = None) -> None:
    """vms.md §8 copy points (b) and (c): a persistent disk used in place gives its
    list to its USED_PERS image after each snapshot operation (a failed one too,
    unless the disk is a copy in the system datastore)."""
    if (disk.get("PERSISTENT") or "").upper() != "YES":
        return
    target = (disk.get("LN_TARGET") or "").upper()
    if (success and target != "NONE") or (not success and target == "SYSTEM"):
        return
    iid = _int(disk.get("IMAGE_ID"))
    try:
        img = read_image(iid, lock=True) if iid is not None else None
    except errors.OneError:
        img = None
    if img is None or img.state != ImageState.USED_PERS \
            or img.type not in (ImageType.OS, ImageType.DATABLOCK):
        return
    keep = (disk.get("PERSISTENT_SNAPSHOTS") or "YES").upper() != "NO"
    if t is not None and snap.count(t) and keep:
        copy = t.copy()
        copy.remove("DISK_ID")
        img.snapshots = copy
    else:
        img.snapshots = Template()
    if size is not None:
        img.size = size
    write_image(img)


def _state_key(vm: Vm) -> tuple[int, int]:
    return (vm.state, vm.lcm_state if vm.state == V.ACTIVE else 0)


# ------------------------------------------------------------------ the verbs
@dataclass
class VmSnapshots:
    db: Any
    config: DaemonConfig
    identity: Identity
    tms: Any
    background: vm_tm.Background

    def _auth(self, caller: Caller, operation: str, vm: Vm, disk: Vector | None = None,
              image_too: bool = False) -> None:
        req = AuthRequest(caller, self.identity.acl)
        req.add(self.identity.vm_right(caller, operation), vm_auth(vm))
        if image_too and disk is not None and not vm_tm.is_volatile(disk):
            try:
                img = read_image(_int(disk.get("IMAGE_ID")), lock=False)
            except errors.OneError:
                img = None
            if img is not None:
                req.add(Op.MANAGE, image_auth(img))
        req.check()

    def _line(self, action: str, vm: Vm, disk: Vector, disk_id: int, sid: int):
        where = vm_transfer.where(vm, self.config.datastore_location)
        tm_mad, ds_id = vm_tm.disk_ds(disk, where)
        build = {"create": tm.snap_create, "revert": tm.snap_revert,
                 "delete": tm.snap_delete}[action]
        return build(tm_mad, where.host, where.disk(disk_id), sid, vm.id, ds_id,
                     system_tm=vm_transfer.system_tm(disk))

    def _begin(self, caller: Caller, vm: Vm, action: str, disk: Vector, disk_id: int,
               sid: int, lcm: int):
        """The disk is marked, the history record closed, the VM moved to ``lcm`` and
        written; returns the TM line to run."""
        disk["DISK_SNAPSHOT_ACTIVE"] = "YES"
        disk["DISK_SNAPSHOT_ID"] = str(sid)
        vm_tm.close_cp_history(vm, caller, HISTORY[action])
        vm.state, vm.lcm_state = V.ACTIVE, lcm
        line = self._line(action, vm, disk, disk_id, sid)
        write_vm(vm)
        return line

    def _start(self, vm: Vm, action: str, disk_id: int, sid: int, line) -> None:
        async def work() -> None:
            result = await vm_tm.run_lines(self.tms, vm.id, [line], "disk_snapshot", vm.uid)
            if result.cancelled and self.tms.runner.stopping:
                return  # the next start finds the VM in its transient state
            await self.db.run(self._finish, vm.id, action, disk_id, sid, result)

        self.background.start(f"disk snapshot {action}", vm.id, work)

    # -------------------------------------------------------------- create
    async def create(self, caller: Caller, oid: int, disk_id: int, name: str) -> int:
        def txn():
            vm = read_vm(oid, lock=True)
            disk = vm_tm.disk_of(vm, disk_id)
            if disk is None:
                raise errors.action("VM disk does not exist")
            if vm_tm.is_volatile(disk):
                raise errors.action("Cannot make snapshots on volatile disks")
            persistent = (disk.get("PERSISTENT") or "").upper() == "YES"
            self._auth(caller, "disk-snapshot-create", vm, disk,
                       persistent or (disk.get("LN_TARGET") or "").upper() == "NONE")
            lcm = CREATE_IN.get(_state_key(vm))
            if lcm is None:
                raise errors.action(f"Could not create a new snapshot for VM {oid}, wrong "
                                    f"state {vs.state_str(vm.state, vm.lcm_state)}.")
            size = _int(disk.get("SIZE"))
            if size is None or size < 0:
                raise errors.action("Wrong size in disk")
            if (disk.get("READONLY") or "").upper() == "YES" \
                    or (disk.get("TYPE") or "").upper() == "CDROM":
                raise errors.action("Cannot make snapshots on readonly disks")
            t = vm_tm.snapshot_list(vm, disk_id) or new_list(disk, disk_id)
            sid = add_snapshot(t, name, size, int(time.time()))
            _set_list(vm, disk, disk_id, t)
            line = self._begin(caller, vm, "create", disk, disk_id, sid, lcm)
            return vm, sid, line

        vm, sid, line = await self.db.run(txn)
        self._start(vm, "create", disk_id, sid, line)
        return sid

    # -------------------------------------------------------------- revert
    async def revert(self, caller: Caller, oid: int, disk_id: int, sid: int) -> int:
        def txn():
            vm = read_vm(oid, lock=True)
            self._auth(caller, "disk-snapshot-revert", vm)
            lcm = REVERT_IN.get(_state_key(vm))
            if lcm is None:
                raise errors.action(f"Could not revert to disk snapshot for VM {oid}, wrong "
                                    f"state {vs.state_str(vm.state, vm.lcm_state)}.")
            disk = vm_tm.disk_of(vm, disk_id)
            if disk is None:
                raise errors.action("VM disk does not exist")
            t = vm_tm.snapshot_list(vm, disk_id)
            if t is None:
                raise errors.action("Snapshot does not exist")
            if snap.find(t, sid) is None:
                raise errors.action(f"Disk id ({disk_id}) or snapshot id ({sid}) is not "
                                    "valid.")
            line = self._begin(caller, vm, "revert", disk, disk_id, sid, lcm)
            return vm, line

        vm, line = await self.db.run(txn)
        self._start(vm, "revert", disk_id, sid, line)
        return oid

    # -------------------------------------------------------------- delete
    async def delete(self, caller: Caller, oid: int, disk_id: int, sid: int) -> int:
        def txn():
            vm = read_vm(oid, lock=True)
            disk = vm_tm.disk_of(vm, disk_id)
            persistent = disk is not None and (disk.get("PERSISTENT") or "").upper() == "YES"
            self._auth(caller, "disk-snapshot-delete", vm, disk, persistent)
            lcm = DELETE_IN.get(_state_key(vm))
            if lcm is None:
                raise errors.action(f"Could not delete disk snapshot from VM {oid}, wrong "
                                    f"state {vs.state_str(vm.state, vm.lcm_state)}.")
            if disk is None:
                raise errors.action("VM disk does not exist")
            t = vm_tm.snapshot_list(vm, disk_id)
            if t is None:
                raise errors.action("Snapshot does not exist")
            err = delete_error(t, sid, persistent)
            if err:
                raise errors.action(err)
            line = self._begin(caller, vm, "delete", disk, disk_id, sid, lcm)
            return vm, line

        vm, line = await self.db.run(txn)
        self._start(vm, "delete", disk_id, sid, line)
        return oid

    # -------------------------------------------------------------- rename
    async def rename(self, caller: Caller, oid: int, disk_id: int, sid: int,
                     name: str) -> int:
        def txn() -> None:
            vm = read_vm(oid, lock=True)
            self._auth(caller, "disk-snapshot-rename", vm)
            if vm_tm.disk_of(vm, disk_id) is None:
                raise errors.action("VM disk does not exist")
            t = vm_tm.snapshot_list(vm, disk_id)
            if t is None:
                raise errors.action("The VM does not have any snapshot")
            s = snap.find(t, sid)
            if s is None:
                raise errors.action("Snapshot does not exist")
            s["NAME"] = name
            _sort(t)
            write_vm(vm)

        await self.db.run(txn)
        return oid

    # -------------------------------------------------------------- the TM's answer
    def _finish(self, oid: int, action: str, disk_id: int, sid: int,
                result: TmResult) -> None:
        """LifeCycleManager::disk_snapshot_success / _failure in one transaction."""
        try:
            vm = read_vm(oid, lock=True)
        except errors.OneError:
            return
        if vm_tm.taken_over(oid, f"disk snapshot {action}"):
            return
        if vm.state != V.ACTIVE or OPERATION.get(vm.lcm_state) != action:
            log.warn("VM {vm}: disk snapshot {a} answer in state {s}, ignored", vm=oid,
                     a=action, s=vs.state_str(vm.state, vm.lcm_state))
            return
        disk = vm_tm.disk_of(vm, disk_id)
        t = vm_tm.snapshot_list(vm, disk_id)
        if disk is not None:
            disk.pop("DISK_SNAPSHOT_ACTIVE", None)
            disk.pop("DISK_SNAPSHOT_ID", None)
        image_size = None
        if disk is not None and t is not None:
            if result.ok:
                if action == "create":
                    if snap.mode(t) != "MIXED":
                        activate(t, sid)
                elif action == "revert":
                    image_size = snap.revert(t, sid)
                    disk["SIZE"] = str(image_size)
                else:
                    snap.delete(t, sid)
            elif action == "create":
                drop(t, sid)
            _set_list(vm, disk, disk_id, t)
            copy_to_image(disk, t, success=result.ok, size=image_size)
        if not result.ok:
            vm_tm.set_vm_error(vm, result)
        vm_tm.set_back(vm)
        write_vm(vm)

    def fail_interrupted(self, vm: Vm) -> None:
        """At start, in a transaction: an operation a killed daemon left half done is
        failed (create: the snapshot goes; revert/delete: the list is unchanged), with
        a text saying so, and the VM goes back to where it was."""
        action = OPERATION.get(vm.lcm_state)
        for disk in vm_tm.disks(vm):
            if (disk.get("DISK_SNAPSHOT_ACTIVE") or "").upper() != "YES":
                continue
            disk_id, sid = _int(disk.get("DISK_ID")), _int(disk.get("DISK_SNAPSHOT_ID"))
            disk.pop("DISK_SNAPSHOT_ACTIVE", None)
            disk.pop("DISK_SNAPSHOT_ID", None)
            t = vm_tm.snapshot_list(vm, disk_id) if disk_id is not None else None
            if action == "create" and t is not None and sid is not None:
                drop(t, sid)
                _set_list(vm, disk, disk_id, t)
        result = TmResult(vm.id, False, f"disk snapshot {action} interrupted by a restart "
                          "of oned-images; check the disk files")
        vm_tm.set_vm_error(vm, result)
        vm_tm.set_back(vm)
