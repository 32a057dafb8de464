"""The VM disk operations together (vms.md §5.8-§5.10): disk snapshots, save-as and
hot-plug, the transfers they leave running, and what the next start does with the
ones a stopped or killed daemon interrupted."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from oned_images.domain import vm_states as vs
from oned_images.domain import vm_tm
from oned_images.domain.vm_attach import HOTPLUG_STATES, VmAttach
from oned_images.domain.vm_saveas import SAVEAS_STATES, VmSaveAs
from oned_images.domain.vm_snapshots import OPERATION, VmSnapshots
from oned_images.domain.vms import read_vm, write_vm
from oned_images.store.models import VmRow

log = Logger(namespace="LCM")
V = vs.VmState
TRANSIENT = frozenset(OPERATION) | SAVEAS_STATES | HOTPLUG_STATES


class VmDiskOps:
    def __init__(self, app: Any) -> None:
        self.db = app.db
        self.tms = app.tms
        self.background = vm_tm.Background(app.vms.reactor)
        args = (app.db, app.config, app.identity, app.tms)
        self.snapshots = VmSnapshots(*args, self.background)
        self.saveas = VmSaveAs(*args, app.images, self.background)
        self.hotplug = VmAttach(*args, self.background, app.vms)

    async def wait(self) -> None:
        """Until every transfer started so far has been applied (tests, stop)."""
        while self.background.pending:
            await defer.DeferredList(list(self.background.pending))

    async def recover(self, only: set[int] | None = None) -> list[int]:
        """At start, after ImageManager.reconcile: VMs a killed daemon left in a disk
        snapshot, save-as or hot-plug state fail that operation cleanly and go back to
        the state they came from (the scripts were killed by the reaper; a half-made
        snapshot or copy cannot be trusted, so nothing is redone).  Returns their ids.
        ``only``: the VMs this daemon has just taken over (vm_takeover.py)."""
        journal = {i.vm_id: i.op for i in self.tms.interrupted()}

        def txn() -> list[int]:
            ids = [r[0] for r in VmRow.select(VmRow.oid).where(
                (VmRow.state == V.ACTIVE) & VmRow.lcm_state.in_(sorted(TRANSIENT))).tuples()
                   if only is None or r[0] in only]
            for oid in ids:
                vm = read_vm(oid, lock=True)
                if vm.lcm_state in OPERATION:
                    self.snapshots.fail_interrupted(vm)
                elif vm.lcm_state in SAVEAS_STATES:
                    self.saveas.fail_interrupted(vm)
                else:
                    self.hotplug.fail_interrupted(vm, journal.get(oid, ""))
                write_vm(vm)
            return ids

        ids = await self.db.run(txn)
        for oid in ids:
            log.warn("VM {vm}: disk operation interrupted by a restart, failed", vm=oid)
            self.tms.forget(oid)
        return ids
