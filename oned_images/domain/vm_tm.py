"""What the VM disk operations (disk snapshots, save-as, attach/detach) share: where a
VM's disk file is, the TRANSFER lines that touch it, the HISTORY record they close,
and running one transfer in the background with its end applied in one transaction.

The pattern of every operation (vms.md §5.8-§5.10, §7.4): a first transaction checks,
marks the disk and moves the VM to its transient LCM state; the TM lines then run
through :class:`~oned_images.driver.tm.TransferManager` (off the reactor, journaled);
a second transaction applies success or failure.  At start, :func:`interrupted_vms`
gives the VMs a killed daemon left in one of these transient states.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from oned_images.domain.driver_replies import ctime
from oned_images.domain.permissions import Caller
from oned_images.domain.vm_states import Lcm, VmState
from oned_images.domain.vm_transfer import Where
from oned_images.driver.tm import TmAction, TmResult
from oned_images.model.objects import History, Vm
from oned_images.store import daemons
from oned_images.template import Template, Vector

log = Logger(namespace="TrM")
V, L = VmState, Lcm


def vector_int(value: str | None) -> int | None:
    try:
        return int((value or "").strip())
    except ValueError:
        return None


def disks(vm: Vm) -> list[Vector]:
    return [d for d in vm.template.get_all("DISK") if isinstance(d, dict)]


def disk_of(vm: Vm, disk_id: int) -> Vector | None:
    for d in disks(vm):
        if vector_int(d.get("DISK_ID")) == disk_id:
            return d
    return None


def is_volatile(disk: Vector) -> bool:
    return vector_int(disk.get("IMAGE_ID")) is None


def disk_ds(disk: Vector, place_: Where) -> tuple[str, int]:
    """(TM_MAD, datastore id) of the lines of a disk: the image datastore's, or the
    system datastore's for a volatile disk."""
    if is_volatile(disk):
        return disk.get("TM_MAD") or "", place_.sys_ds
    return disk.get("TM_MAD") or "", vector_int(disk.get("DATASTORE_ID")) or 0


def close_cp_history(vm: Vm, caller: Caller, code: int, request_id: int = -1) -> None:
    """DispatchManager::close_cp_history: the current record is closed with the
    requester's ACTION and a copy on the same host opens SEQ+1 (vms.md §5.4)."""
    if not vm.history:
        return
    now = int(time.time())
    h = vm.history[-1]
    h.etime = now
    h.retime = h.retime or now
    h.action, h.uid, h.gid, h.request_id = code, caller.uid, caller.gid, request_id
    vm.history.append(History(
        oid=vm.id, seq=h.seq + 1, hostname=h.hostname, hid=h.hid, cid=h.cid, stime=now,
        vm_mad=h.vm_mad, tm_mad=h.tm_mad, ds_id=h.ds_id, plan_id=h.plan_id,
        action_id=h.action_id, rstime=now))


def set_vm_error(vm: Vm, result: TmResult) -> None:
    """TransferManagerProtocol: a failure's text in USER_TEMPLATE/ERROR (vms.md §7.4)."""
    if result.error:
        vm.user_template.set("ERROR", f"{ctime()}: {result.error}")


def snapshot_list(vm: Vm, disk_id: int) -> Template | None:
    for t in vm.snapshots:
        if vector_int(t.get("DISK_ID")) == disk_id:
            return t
    return None


def snapshots_by_disk(vm: Vm) -> dict[int, Template]:
    """The VM's lists as release_disks wants them (vms.md §1.5)."""
    out = {}
    for t in vm.snapshots:
        disk_id = vector_int(t.get("DISK_ID"))
        if disk_id is not None:
            out[disk_id] = t
    return out


def tm_target(disk: Vector) -> str:
    """VirtualMachineDisk::get_tm_target: CLONE_TARGET of a copied disk (CLONE=YES),
    LN_TARGET of one used in place, "" without CLONE (a volatile disk)."""
    clone = (disk.get("CLONE") or "").upper()
    if not clone:
        return ""
    return ((disk.get("CLONE_TARGET") if clone == "YES" else disk.get("LN_TARGET")) or
            "").upper()


def drop_non_persistent_snapshots(vm: Vm) -> None:
    """VirtualMachineDisks::delete_non_persistent_snapshots (delete-recreate): the
    snapshot list of every disk whose data is not used in place (TM target other than
    NONE) goes, with the disk's DISK_SNAPSHOT_ACTIVE/_ID/_TOTAL_SIZE; the files the
    snapshots were in go with the disks themselves."""
    dropped = set()
    for disk in disks(vm):
        disk_id = vector_int(disk.get("DISK_ID"))
        if disk_id is None or snapshot_list(vm, disk_id) is None or tm_target(disk) == "NONE":
            continue
        dropped.add(disk_id)
        for attr in ("DISK_SNAPSHOT_ACTIVE", "DISK_SNAPSHOT_ID", "DISK_SNAPSHOT_TOTAL_SIZE"):
            disk.pop(attr, None)
    vm.snapshots = [t for t in vm.snapshots if vector_int(t.get("DISK_ID")) not in dropped]


def resume_state(state: int, lcm: int) -> tuple[int, int]:
    """The state a hot operation returns the VM to, from its transient LCM state."""
    return BACK.get(lcm, (state, lcm))


#: transient LCM state -> the (STATE, LCM_STATE) the VM goes back to afterwards
BACK: dict[int, tuple[int, int]] = {
    L.DISK_SNAPSHOT: (V.ACTIVE, L.RUNNING),
    L.DISK_SNAPSHOT_DELETE: (V.ACTIVE, L.RUNNING),
    L.DISK_SNAPSHOT_POWEROFF: (V.POWEROFF, L.LCM_INIT),
    L.DISK_SNAPSHOT_REVERT_POWEROFF: (V.POWEROFF, L.LCM_INIT),
    L.DISK_SNAPSHOT_DELETE_POWEROFF: (V.POWEROFF, L.LCM_INIT),
    L.DISK_SNAPSHOT_SUSPENDED: (V.SUSPENDED, L.LCM_INIT),
    L.DISK_SNAPSHOT_REVERT_SUSPENDED: (V.SUSPENDED, L.LCM_INIT),
    L.DISK_SNAPSHOT_DELETE_SUSPENDED: (V.SUSPENDED, L.LCM_INIT),
    L.HOTPLUG_SAVEAS: (V.ACTIVE, L.RUNNING),
    L.HOTPLUG_SAVEAS_POWEROFF: (V.POWEROFF, L.LCM_INIT),
    L.HOTPLUG_SAVEAS_SUSPENDED: (V.SUSPENDED, L.LCM_INIT),
    L.HOTPLUG_SAVEAS_UNDEPLOYED: (V.UNDEPLOYED, L.LCM_INIT),
    L.HOTPLUG_SAVEAS_STOPPED: (V.STOPPED, L.LCM_INIT),
    L.HOTPLUG: (V.ACTIVE, L.RUNNING),
    L.HOTPLUG_PROLOG_POWEROFF: (V.POWEROFF, L.LCM_INIT),
    L.HOTPLUG_EPILOG_POWEROFF: (V.POWEROFF, L.LCM_INIT),
}


def set_back(vm: Vm) -> None:
    """The VM leaves its transient state for the one it came from."""
    vm.state, vm.lcm_state = resume_state(vm.state, vm.lcm_state)


@dataclass
class Background:
    """Transfers running after their RPC has answered; tests and stop() wait on them."""

    reactor: Any
    pending: set[defer.Deferred] = field(default_factory=set)

    def start(self, what: str, vm_id: int, work: Callable[[], Awaitable[Any]]) -> None:
        d = defer.ensureDeferred(work())
        self.pending.add(d)
        d.addErrback(lambda f: log.failure("{what} of VM {vm} crashed", f, what=what,
                                           vm=vm_id))
        d.addBoth(lambda _: self.pending.discard(d))


def taken_over(vm_id: int, what: str) -> bool:
    """Whether another daemon took the VM's work over while this one's transfer ran
    (its lease ran out): then that daemon decides and this late answer is dropped.
    Call it with the VM row locked (the claim row is locked after it, as writes do)."""
    if daemons.owns("vm", vm_id):
        return False
    log.warn("VM {vm}: dropped the {what} answer, another daemon took the VM's work over",
             vm=vm_id, what=what)
    return True


async def run_lines(tms: Any, vm_id: int, lines: list[TmAction], op: str,
                    owner: int) -> TmResult:
    """One transfer; a bug of ours becomes a failed transfer, never a stuck VM."""
    try:
        return await tms.transfer(vm_id, lines, op=op, owner=owner)
    except Exception as exc:  # noqa: BLE001 - the VM must leave its transient state
        log.failure("TRANSFER {op} of VM {vm} could not run", op=op, vm=vm_id)
        return TmResult(vm_id, False, f"Internal error running the transfer: {exc!r}")
