"""What a virtual machine charges to its owner's and group's VM_QUOTA and IMAGE_QUOTA
(vms.md §5.13), and to DATASTORE_QUOTA for disks kept in their image datastore (TM
target SELF), worked out from the VM's template and state; domain/quotas.py keeps the
counters.

oned 7.0 charges VMS, CPU, MEMORY and SYSTEM_DISK_SIZE for as long as the VM exists
(allocate/instantiate until DONE), RVMS 1 per image DISK, and RUNNING_VMS,
RUNNING_CPU, RUNNING_MEMORY while the VM is in a *running* state: PENDING, HOLD,
CLONING(_FAILURE) and ACTIVE except the LCM states of a powered-off, suspended,
stopped or undeployed VM (VirtualMachine::is_running_quota; verified: a VM allocated
on hold counts in RUNNING_VMS_USED).  So a poweroff, suspend, stop or undeploy gives
the RUNNING_* usage back when it ends, and a terminate, stop or undeploy started from
such a state takes it again (LifeCycleManager's ``Quotas::vm_add``) until it ends.

Rather than one charge per code path, what a VM holds is a function of its stored
state (:func:`held`), and the one writer of VM rows (vms.write_vm) hands the stored and
the new VM to :func:`written`, which moves the difference: state changes, DONE,
attached and detached disks, disk snapshots and owner changes all follow from it and
no path can miss one.  Limits are checked where oned checks them, before the change,
as dry runs: allocate/instantiate (the first charge, AUTHORIZATION), resume (ACTION),
attach and chown (AUTHORIZATION); the other moves add without checking, as oned's
``vm_add`` does.
"""

from __future__ import annotations

from oned_images import errors
from oned_images.domain import quotas
from oned_images.domain import vm_states as vs
from oned_images.model.objects import Vm
from oned_images.template import Template, Vector

V, L = vs.VmState, vs.Lcm
#: ACTIVE LCM states in which a VM does not count as running: the hot-plug, snapshot,
#: resize and migration work done on a powered-off, suspended, stopped or undeployed VM
NOT_RUNNING_LCM = frozenset({
    L.HOTPLUG_SAVEAS_POWEROFF, L.HOTPLUG_SAVEAS_SUSPENDED, L.HOTPLUG_SAVEAS_UNDEPLOYED,
    L.HOTPLUG_SAVEAS_STOPPED, L.HOTPLUG_PROLOG_POWEROFF, L.HOTPLUG_EPILOG_POWEROFF,
    L.HOTPLUG_NIC_POWEROFF, L.DISK_SNAPSHOT_POWEROFF, L.DISK_SNAPSHOT_REVERT_POWEROFF,
    L.DISK_SNAPSHOT_DELETE_POWEROFF, L.DISK_SNAPSHOT_SUSPENDED,
    L.DISK_SNAPSHOT_REVERT_SUSPENDED, L.DISK_SNAPSHOT_DELETE_SUSPENDED,
    L.DISK_RESIZE_POWEROFF, L.DISK_RESIZE_UNDEPLOYED, L.PROLOG_MIGRATE_POWEROFF,
    L.PROLOG_MIGRATE_POWEROFF_FAILURE, L.PROLOG_MIGRATE_SUSPEND,
    L.PROLOG_MIGRATE_SUSPEND_FAILURE, L.BACKUP_POWEROFF,
})
RUNNING_STATES = frozenset({V.PENDING, V.HOLD, V.CLONING, V.CLONING_FAILURE})


def running(state: int, lcm: int) -> bool:
    """VirtualMachine::is_running_quota."""
    if state == V.ACTIVE:
        return lcm not in NOT_RUNNING_LCM
    return state in RUNNING_STATES


def _float(value: str | None) -> float:
    try:
        return float((value or "").strip() or 0)
    except ValueError:
        return 0.0


def _int(value: str | None) -> int | None:
    try:
        return int((value or "").strip())
    except ValueError:
        return None


def _disks(tmpl: Template) -> list[Vector]:
    return [d for d in tmpl.get_all("DISK") if isinstance(d, dict)]


def _tm_target(disk: Vector) -> str:
    """VirtualMachineDisk::get_tm_target: CLONE_TARGET of a cloned disk, else
    LN_TARGET."""
    clone = (disk.get("CLONE") or "").upper()
    if clone not in ("YES", "NO"):
        return ""
    return disk.get("CLONE_TARGET" if clone == "YES" else "LN_TARGET") or ""


def system_disk_size(tmpl: Template) -> float:
    """VirtualMachineDisks::system_ds_size(include_snapshots): the MB a VM's disks take
    in the system datastore: volatile disks (TYPE FS/SWAP) and image disks whose TM
    target is SYSTEM, each with its snapshots."""
    total = 0
    for disk in _disks(tmpl):
        size = _int(disk.get("SIZE"))
        if size is None:
            continue
        snaps = _int(disk.get("DISK_SNAPSHOT_TOTAL_SIZE"))
        if snaps is not None:
            size += snaps
        volatile = (disk.get("TYPE") or "").upper() in ("FS", "SWAP")
        if volatile or _tm_target(disk) == "SYSTEM":
            total += size
    return float(total)


def self_sizes(tmpl: Template) -> dict[int, float]:
    """VirtualMachineDisks::image_ds_quotas: the MB (with snapshots) of each disk whose
    TM target is SELF (the copy lives in the image datastore), per DATASTORE_ID."""
    out: dict[int, float] = {}
    for disk in _disks(tmpl):
        if _tm_target(disk) != "SELF":
            continue
        size, ds = _int(disk.get("SIZE")), _int(disk.get("DATASTORE_ID"))
        if size is None or ds is None:
            continue
        size += _int(disk.get("DISK_SNAPSHOT_TOTAL_SIZE")) or 0
        if size:
            out[ds] = out.get(ds, 0.0) + size
    return out


def image_ids(tmpl: Template) -> list[int]:
    """One id per DISK with an IMAGE_ID, in DISK order (QuotaImage::check)."""
    out = []
    for disk in _disks(tmpl):
        iid = _int(disk.get("IMAGE_ID"))
        if iid is not None:
            out.append(iid)
    return out


def usage(tmpl: Template, *, basic: bool = True, with_running: bool = True) -> dict[str, float]:
    """The VM_QUOTA request of a VM template (QuotaVirtualMachine::check's reading):
    ``basic`` VMS/CPU/MEMORY/SYSTEM_DISK_SIZE, ``with_running`` the RUNNING_* ones; a
    running-only request carries VMS/CPU/MEMORY 0 (their limits are still checked, as
    oned's resume does)."""
    cpu, memory = _float(tmpl.get("CPU")), float(_int(tmpl.get("MEMORY")) or 0)
    out = {"VMS": 1.0, "CPU": cpu, "MEMORY": memory,
           "SYSTEM_DISK_SIZE": system_disk_size(tmpl)} if basic else {
           "VMS": 0.0, "CPU": 0.0, "MEMORY": 0.0, "SYSTEM_DISK_SIZE": 0.0}
    if with_running:
        out.update({"RUNNING_VMS": 1.0, "RUNNING_CPU": cpu, "RUNNING_MEMORY": memory})
    return out


def _running_only(tmpl: Template) -> dict[str, float]:
    return usage(tmpl, basic=False)


# ------------------------------------------------------------------ the charges
def held(vm: Vm) -> quotas.Held:
    """What ``vm`` holds in its state: nothing once DONE; else the whole VM (RUNNING_*
    only in a running state) and RVMS per image DISK."""
    if vm.state == V.DONE:
        return (vm.uid, vm.gid), {}, [], {}
    return ((vm.uid, vm.gid), usage(vm.template, with_running=running(vm.state, vm.lcm_state)),
            image_ids(vm.template), self_sizes(vm.template))


def check_new(uid: int, gid: int, extended: Template) -> None:
    """allocate / instantiate (VirtualMachineAllocate::allocate_authorization, vms.md
    §5.3 step 4): room for the whole VM, RUNNING_* included, and RVMS per image DISK,
    checked on the template's extended copy before the insert, so a quota refusal comes
    before the insert's own (an image that cannot be acquired, a bad MEMORY).
    :func:`charge_new` then charges the VM as inserted."""
    quotas.vm_charge(uid, gid, usage(extended), image_ids(extended), self_sizes(extended),
                     dry_run=True)


def charge_new(uid: int, gid: int, tmpl: Template) -> None:
    """allocate / instantiate (VirtualMachineAllocate::allocate_authorization): the
    whole VM, RUNNING_* included whatever its first state, and RVMS per image DISK;
    over a limit: AUTHORIZATION with oned's text."""
    quotas.vm_charge(uid, gid, usage(tmpl), image_ids(tmpl), self_sizes(tmpl))


def written(old: Vm | None, new: Vm) -> None:
    """vms.write_vm: the difference between what the stored VM held and what the VM
    written holds goes to the counters (a state change into or out of a running
    state, DONE, a disk attached or detached, a disk snapshot, an owner change)."""
    if old is None:
        return
    quotas.vm_moved(held(old), held(new))


def check_resume(vm: Vm) -> None:
    """VirtualMachineAction's resume: the RUNNING_* limits are checked before the
    state is (an ACTION error, ``user [5] limit of 1 reached for RUNNING_VMS quota in
    VM``); the charge itself is :func:`written`'s when the VM moves."""
    try:
        quotas.vm_charge(vm.uid, vm.gid, _running_only(vm.template), dry_run=True)
    except errors.OneError as exc:
        raise errors.action(exc.detail) from None


def check_owner(vm: Vm, uid: int, gid: int) -> None:
    """chown / chgrp (RequestManagerChown for a VM): the side that changes must have
    room for the VM as it is (AUTHORIZATION); -1 leaves a side alone."""
    if vm.state == V.DONE:
        return
    _, use, images, datastores = held(vm)
    # every row the move will touch, locked first in the one order (two opposite
    # chowns must not each hold the row the other waits for)
    _old, (new_uid, new_gid) = quotas.lock_sides((vm.uid, vm.gid), (uid, gid))
    quotas.vm_charge(new_uid, new_gid, use, images, datastores, dry_run=True)


def check_disk(vm: Vm, disk: Vector) -> None:
    """attach: room for the new DISK's system-datastore size and its image's RVMS
    (AUTHORIZATION)."""
    one = Template()
    one.add("DISK", disk)
    quotas.vm_charge(vm.uid, vm.gid, {"VMS": 0.0, "SYSTEM_DISK_SIZE": system_disk_size(one)},
                     image_ids(one), self_sizes(one), dry_run=True)
