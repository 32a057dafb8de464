"""one.vm.attach / one.vm.detach (vms.md §5.10, §1.6, §7.2): a disk joins or leaves a
RUNNING or POWEROFF VM.

attach acquires the image through vm_disks.acquire_disks(path="attach") on the VM's
template plus the new DISK (without DISK_ID), in the transaction that moves the VM to
HOTPLUG / HOTPLUG_PROLOG_POWEROFF; the disk file is then made by the PROLOG line of the
disk (CLONE, LN, MKIMAGE, MKSWAP).  detach runs the disk's EPILOG line (MVDS for a
SAVE=YES disk, else DELETE).  A failed attach and a successful detach remove the DISK
and release its image, unless another disk of the VM uses it; the disk's snapshot list
goes back to a persistent image as at any release (§1.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.logger import Logger

from oned_images import errors
from oned_images.config import DaemonConfig
from oned_images.domain import snapshots as snap
from oned_images.domain import vm_disks, vm_quotas, vm_tm, vm_transfer
from oned_images.domain import vm_states as vs
from oned_images.domain.identity import Identity
from oned_images.domain.images import read_image
from oned_images.domain.permissions import AuthRequest, Caller
from oned_images.domain.states import ImageType
from oned_images.domain.templates import restricted_attr
from oned_images.domain.vms import read_vm, vm_auth, write_vm
from oned_images.driver.tm import TmAction, TmResult
from oned_images.model.objects import Vm
from oned_images.template import Template, Vector

log = Logger(namespace="LCM")
V, L = vs.VmState, vs.Lcm
_int = vm_tm.vector_int

ATTACH_IN = {(V.ACTIVE, L.RUNNING): L.HOTPLUG, (V.POWEROFF, 0): L.HOTPLUG_PROLOG_POWEROFF}
DETACH_IN = {(V.ACTIVE, L.RUNNING): L.HOTPLUG, (V.POWEROFF, 0): L.HOTPLUG_EPILOG_POWEROFF}
HOTPLUG_STATES = frozenset({L.HOTPLUG, L.HOTPLUG_PROLOG_POWEROFF, L.HOTPLUG_EPILOG_POWEROFF})


def _state_key(vm: Vm) -> tuple[int, int]:
    return (vm.state, vm.lcm_state if vm.state == V.ACTIVE else 0)


def _marked(vm: Vm, marker: str) -> Vector | None:
    for disk in vm_tm.disks(vm):
        if (disk.get(marker) or "").upper() == "YES":
            return disk
    return None


def _alone(vm: Vm, disk: Vector) -> Vm:
    """The VM as if ``disk`` were its only disk (and it had no context)."""
    t = Template()
    t.add("DISK", disk)
    return replace(vm, template=t)


def prolog_line(config: DaemonConfig, vm: Vm, disk: Vector) -> TmAction:
    """The PROLOG line that makes one disk's file (vms.md §7.2): the deploy's."""
    try:
        transfer = vm_transfer.prolog(_alone(vm, disk), config.datastore_location, "")
    except vm_transfer.TransferError as exc:
        raise errors.action(exc.text) from None
    return transfer.actions[0]


def epilog_line(config: DaemonConfig, vm: Vm, disk: Vector) -> TmAction:
    """The EPILOG line of one disk (MVDS for SAVE=YES, else DELETE), the terminate's
    without the VM directory's DELETE."""
    try:
        transfer = vm_transfer.epilog(_alone(vm, disk), config.datastore_location)
    except vm_transfer.TransferError as exc:
        raise errors.action(exc.text) from None
    return transfer.actions[0]


def remove_disk(vm: Vm, disk: Vector) -> None:
    """VirtualMachinePool::delete_attach_disk: the DISK and its snapshot list leave the
    VM; its image is released (snapshots written back) unless another disk of the VM
    still uses it."""
    disk_id = _int(disk.get("DISK_ID"))
    listed = vm_tm.snapshot_list(vm, disk_id) if disk_id is not None else None
    kept = [d for d in vm_tm.disks(vm) if d is not disk]
    vm.template.remove("DISK")
    for d in kept:
        vm.template.add("DISK", d)
    vm.snapshots = [t for t in vm.snapshots if _int(t.get("DISK_ID")) != disk_id]
    iid = _int(disk.get("IMAGE_ID"))
    if iid is None or any(_int(d.get("IMAGE_ID")) == iid for d in kept):
        return
    alone = Template()
    alone.add("DISK", disk)
    vm_disks.release_disks(vm.id, alone, failed=False,
                           snapshots={disk_id: listed} if listed is not None else {})


def _begin(config: DaemonConfig, caller: Caller, vm: Vm, disk: Vector, lcm: int, code: int,
           line: Callable[[DaemonConfig, Vm, Vector], TmAction]) -> TmAction:
    """The disk is marked ATTACH (oned marks a detached one so too), the history record
    closed with ``code``, the VM moved to ``lcm`` and written; returns its TM line."""
    disk["ATTACH"] = "YES"
    vm_tm.close_cp_history(vm, caller, code)
    vm.state, vm.lcm_state = V.ACTIVE, lcm
    action = line(config, vm, disk)
    write_vm(vm)
    return action


@dataclass
class VmAttach:
    db: Any
    config: DaemonConfig
    identity: Identity
    tms: Any
    background: vm_tm.Background
    #: the VM core (its template parser)
    vms: Any

    def _start(self, vm: Vm, what: str, line: TmAction) -> None:
        async def work() -> None:
            op = "prolog_attach" if what == "attach" else "epilog_detach"
            result = await vm_tm.run_lines(self.tms, vm.id, [line], op, vm.uid)
            if result.cancelled and self.tms.runner.stopping:
                return
            await self.db.run(self._finish, vm.id, what, result)

        self.background.start(f"disk {what}", vm.id, work)

    # -------------------------------------------------------------- attach
    async def attach(self, caller: Caller, oid: int, text: str) -> int:
        tmpl = await self.vms.parse(text)
        new = tmpl.get_vector("DISK")

        def txn():
            vm = read_vm(oid, lock=True)
            if not vm.history:
                raise errors.action("VM is not running in any host")
            req = AuthRequest(caller, self.identity.acl)
            req.add(self.identity.vm_right(caller, "disk-attach"), vm_auth(vm))
            req.check()
            if new is None:
                raise errors.action("Internal error parsing DISK attribute")
            disk = {k: v for k, v in new.items() if k != "DISK_ID"}
            one = Template()
            one.add("DISK", disk)
            if not caller.is_admin:
                attr = restricted_attr(one)
                if attr:
                    raise errors.authorization(f"DISK includes a restricted attribute {attr}")
            vm_disks.authorize_disks(caller, one, self.config)
            disk = one.get_vector("DISK")
            lcm = ATTACH_IN.get(_state_key(vm))
            if lcm is None:
                raise errors.action(f"Could not attach a new disk to VM {oid}, wrong state "
                                    f"{vs.state_str(vm.state, vm.lcm_state)}.")
            work = vm.template.copy()
            work.add("DISK", disk)
            vm_disks.acquire_disks(oid, vm.uid, vm.gid, work, self.config, path="attach")
            added = [d for d in work.get_all("DISK") if isinstance(d, dict)][-1]
            vm_quotas.check_disk(vm, added)
            iid = _int(added.get("IMAGE_ID"))
            cid = vm.history[-1].cid
            if iid is not None:
                clusters = [c.strip() for c in (added.get("CLUSTER_ID") or "").split(",")]
                if str(cid) not in clusters:
                    raise errors.action(f"Image [{iid}] is not part of cluster [{cid}]")
                img = read_image(iid, lock=False)
                if img.type in (ImageType.OS, ImageType.DATABLOCK) and snap.count(img.snapshots):
                    listed = img.snapshots.copy()
                    listed.set("DISK_ID", added["DISK_ID"])
                    vm.snapshots.append(listed)
            vm.template = work
            return vm, _begin(self.config, caller, vm, added, lcm, 21, prolog_line)

        vm, line = await self.db.run(txn)
        self._start(vm, "attach", line)
        return oid

    # -------------------------------------------------------------- detach
    async def detach(self, caller: Caller, oid: int, disk_id: int) -> int:
        def txn():
            vm = read_vm(oid, lock=True)
            req = AuthRequest(caller, self.identity.acl)
            req.add(self.identity.vm_right(caller, "disk-detach"), vm_auth(vm))
            req.check()
            lcm = DETACH_IN.get(_state_key(vm))
            if lcm is None or not vm.history:
                raise errors.action(f"Could not detach disk from VM {oid}, wrong state "
                                    f"{vs.state_str(vm.state, vm.lcm_state)}.")
            disk = vm_tm.disk_of(vm, disk_id)
            if disk is None:
                raise errors.action(f"Could not detach disk with DISK_ID {disk_id}, it does "
                                    "not exist.")
            return vm, _begin(self.config, caller, vm, disk, lcm, 22, epilog_line)

        vm, line = await self.db.run(txn)
        self._start(vm, "detach", line)
        return oid

    # -------------------------------------------------------------- the TM's answer
    def _finish(self, oid: int, what: str, result: TmResult) -> None:
        try:
            vm = read_vm(oid, lock=True)
        except errors.OneError:
            return
        if vm_tm.taken_over(oid, f"disk {what}"):
            return
        if vm.state != V.ACTIVE or vm.lcm_state not in HOTPLUG_STATES:
            log.warn("VM {vm}: disk {w} answer in state {s}, ignored", vm=oid, w=what,
                     s=vs.state_str(vm.state, vm.lcm_state))
            return
        disk = _marked(vm, "ATTACH")
        if disk is not None:
            if result.ok == (what == "attach"):
                disk.pop("ATTACH", None)  # attached, or a detach that failed: it stays
            else:
                remove_disk(vm, disk)
        if not result.ok:
            vm_tm.set_vm_error(vm, result)
        vm_tm.set_back(vm)
        write_vm(vm)

    def fail_interrupted(self, vm: Vm, op: str = "") -> None:
        """At start, in a transaction: a hot-plug a killed daemon left half done fails;
        an attached disk goes (its image released), a detached one stays.  ``op`` is
        the interrupted transfer's (the TM journal), which tells a detach of a RUNNING
        VM from an attach."""
        disk = _marked(vm, "ATTACH")
        if disk is not None:
            if vm.lcm_state == L.HOTPLUG_EPILOG_POWEROFF or op == "epilog_detach":
                disk.pop("ATTACH", None)
            else:
                remove_disk(vm, disk)
        vm_tm.set_vm_error(vm, TmResult(vm.id, False, "disk hot-plug interrupted by a "
                                        "restart of oned-images"))
        vm_tm.set_back(vm)
