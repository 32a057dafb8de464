"""VM driver work whose owner is gone: taken over at start and at each lease check.

Each VM's in-flight driver work (a transfer, a dummy driver answer, a disk operation) is
claimed in ``driver_claims`` (kind "vm") by the write that makes it due
(vms.write_vm).  A daemon that starts, or whose lease check finds a claim without a live
owner, takes those VMs and runs the single-daemon restart code on them only: the TM
partial files of their directories are swept, their life-cycle step is redone
(Vms.resume_drivers) and their disk operation failed (VmDiskOps.recover).  A live
daemon's VMs are never touched (README "Several daemons").
"""

from __future__ import annotations

from typing import Any

from twisted.internet import threads
from twisted.logger import Logger

from oned_images.domain import vm_states as vs
from oned_images.domain.vms import transient
from oned_images.driver.tm import sweep_partial_files
from oned_images.store import daemons
from oned_images.store.models import VmRow

log = Logger(namespace="LCM")


def _take() -> tuple[set[int], bool]:
    """(the VMs claimed for this daemon now, whether other daemons are live)."""
    daemons.serialise_takeovers()
    due = {oid: vs.Lcm(lcm).name for oid, state, lcm in VmRow.select(
        VmRow.oid, VmRow.state, VmRow.lcm_state).where(VmRow.state == vs.VmState.ACTIVE)
        .tuples() if transient(state, lcm)}
    return daemons.take_vm_work(due), daemons.others_live()


async def take_over(app: Any, at_start: bool = True) -> set[int]:
    """Claim the VMs with due work and no live owner, then redo or fail their work as a
    restart does.  At start (and alone) the whole datastore tree is swept as before; with
    other daemons live only the taken VMs' directories."""
    taken, others = await app.db.run(_take)
    if not at_start and not taken:
        return taken
    if taken and not at_start:
        log.warn("Taking over the driver work of VMs {ids}: their daemon is gone",
                 ids=sorted(taken))
    # what a KILLed TM script left half-written goes before any transfer runs again
    await threads.deferToThread(sweep_partial_files, app.config.datastore_location,
                                taken if others or not at_start else None)
    await app.vms.resume_drivers(taken)
    await app.disk_ops.recover(taken)
    return taken


async def tick(app: Any) -> None:
    """The lease check's part for VMs: cheap unless a claim lost its owner."""
    if await app.db.run(daemons.orphaned_vm_work):
        await take_over(app, at_start=False)
