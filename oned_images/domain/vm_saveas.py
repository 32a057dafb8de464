"""one.vm.disksaveas (vms.md §5.9): a VM disk, or one of its snapshots, becomes a new
image in the datastore of the disk's image.

The new image is inserted LOCKED with FORMAT ``save_as`` in the transaction that moves
the VM to HOTPLUG_SAVEAS*; the datastore's MKFS then only reserves its SOURCE (the fs
driver's ``save_as`` case), the TM ``cpds`` copies the disk there, and the image becomes
READY with the disk's format, or ERROR with the script's text.  The VM goes back to the
state it came from in every case; an image a killed daemon left LOCKED goes to ERROR at
the next start (ImageManager.reconcile), never stays LOCKED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from oned_images import errors
from oned_images.config import DaemonConfig
from oned_images.domain import snapshots as snap
from oned_images.domain import vm_states as vs
from oned_images.domain import vm_tm, vm_transfer
from oned_images.domain.datastores import ds_auth, read_ds
from oned_images.domain.driver_replies import set_error, set_state
from oned_images.domain.identity import Identity
from oned_images.domain.images import ImageManager, read_image, write_image
from oned_images.domain.images import _meta as image_meta
from oned_images.domain.permissions import AuthRequest, Caller, ObjectAuth, Op, new_object_perms
from oned_images.domain.states import ImageState, ImageType
from oned_images.domain.vms import read_vm, vm_auth, write_vm
from oned_images.driver import tm
from oned_images.driver.parse import DriverResult
from oned_images.driver.tm import TmResult
from oned_images.model.objects import Vm
from oned_images.store import pools
from oned_images.store.models import ImageRow
from oned_images.template import Template
from oned_images.xmldoc import drv_action
from oned_images.xmldoc.image import image_xml

log = Logger(namespace="LCM")
V, L = vs.VmState, vs.Lcm
S = ImageState
_int = vm_tm.vector_int

SAVEAS_IN = {(V.ACTIVE, L.RUNNING): L.HOTPLUG_SAVEAS, (V.POWEROFF, 0): L.HOTPLUG_SAVEAS_POWEROFF,
             (V.SUSPENDED, 0): L.HOTPLUG_SAVEAS_SUSPENDED,
             (V.UNDEPLOYED, 0): L.HOTPLUG_SAVEAS_UNDEPLOYED,
             (V.STOPPED, 0): L.HOTPLUG_SAVEAS_STOPPED}
SAVEAS_STATES = frozenset(SAVEAS_IN.values())
#: the disk markers of a save-as in progress
MARKERS = ("HOTPLUG_SAVE_AS_ACTIVE", "HOTPLUG_SAVE_AS_SNAPSHOT_ID", "HOTPLUG_SAVE_AS",
           "HOTPLUG_SAVE_AS_SOURCE")


def _state_key(vm: Vm) -> tuple[int, int]:
    return (vm.state, vm.lcm_state if vm.state == V.ACTIVE else 0)


def clear_markers(vm: Vm) -> None:
    for disk in vm_tm.disks(vm):
        for name in MARKERS:
            disk.pop(name, None)


@dataclass
class _Job:
    vm_id: int
    uid: int
    disk_id: int
    snap_id: int
    image_id: int
    ds_id: int
    ds_mad: str
    mode: str
    b64: str


@dataclass
class VmSaveAs:
    db: Any
    config: DaemonConfig
    identity: Identity
    tms: Any
    images: ImageManager
    background: vm_tm.Background

    async def saveas(self, caller: Caller, oid: int, disk_id: int, name: str, type_text: str,
                     snap_id: int) -> int:
        default_persistent = self.identity.user_option(
            caller, "DEFAULT_IMAGE_PERSISTENT", self.config.default_image_persistent)
        perms = new_object_perms(caller.uid, caller.gid, self.identity.umask_for(caller),
                                 self.config.enable_other_permissions)

        def txn() -> _Job:
            vm = read_vm(oid, lock=True)
            lcm = SAVEAS_IN.get(_state_key(vm))
            if lcm is None:
                raise errors.internal("VM has to be RUNNING, POWEROFF or SUSPENDED to save "
                                      "disks.")
            disk = vm_tm.disk_of(vm, disk_id)
            if disk is None:
                raise errors.internal("Cannot use DISK. DISK does not exist.")
            iid = _int(disk.get("IMAGE_ID"))
            if iid is None:
                raise errors.internal("Cannot use DISK. DISK does not have a valid IMAGE_ID.")
            size = _int(disk.get("SIZE")) or 0
            if snap_id != -1:
                t = vm_tm.snapshot_list(vm, disk_id)
                s = snap.find(t, snap_id) if t is not None else None
                if s is None:
                    raise errors.internal("Cannot use DISK. Snapshot does not exist.")
                size = _int(s.get("SIZE")) or size
            src = read_image(iid, lock=False)
            if src.type not in (ImageType.OS, ImageType.DATABLOCK, ImageType.CDROM):
                raise errors.internal("Cannot save_as image of type "
                                      f"{ImageType(src.type).name}")
            ds = read_ds(src.datastore_id)
            req = AuthRequest(caller, self.identity.acl)
            req.add(self.identity.vm_right(caller, "disk-saveas"), vm_auth(vm))
            req.add(Op.CREATE, ObjectAuth("IMAGE", -1))
            req.add(Op.USE, ds_auth(ds))
            req.check()
            itype = (type_text or ImageType(src.type).name).upper()
            if itype == "CDROM":
                itype = "OS"  # a saved disk is a writable image
            tmpl = Template()
            tmpl.set("NAME", name)
            tmpl.set("SIZE", str(size))
            tmpl.set("SAVED_IMAGE_ID", str(iid))
            tmpl.set("SAVED_DISK_ID", str(disk_id))
            tmpl.set("SAVED_VM_ID", str(oid))
            tmpl.set("SAVE_AS_HOT", "YES")
            tmpl.set("TYPE", itype)
            for attr in ("TARGET", "DEV_PREFIX"):
                value = src.template.get(attr)
                if value:
                    tmpl.set(attr, value)
            persistent = (default_persistent.upper() == "YES" if default_persistent
                          else bool(src.persistent))
            try:
                new_id, _follow = self.images._insert_allocate(
                    caller, tmpl, ds.id, size, persistent, itype, perms, True)
            except errors.OneError as exc:
                if exc.code == errors.ErrorCode.ALLOCATE:  # the object is the image
                    raise errors.allocate(exc.detail, "image") from None
                raise
            img = read_image(new_id)
            img.format = "save_as"
            for attr in ("DRIVER", "TYPE", "NAME", "SIZE", "PERSISTENT"):
                img.template.remove(attr)
            # oned inserts it with these values: PREV_STATE stays 0 (write_image would
            # copy LOCKED into it)
            pools.update(ImageRow, img.id, image_meta(img), image_xml(img),
                         datastore_id=img.datastore_id)
            ds = read_ds(ds.id)
            disk["HOTPLUG_SAVE_AS_ACTIVE"] = "YES"
            disk["HOTPLUG_SAVE_AS_SNAPSHOT_ID"] = str(snap_id)
            vm.state, vm.lcm_state = V.ACTIVE, lcm
            write_vm(vm)
            return _Job(oid, vm.uid, disk_id, snap_id, new_id, ds.id, ds.ds_mad,
                        self.config.ds_mad(ds.ds_mad).mode, drv_action.action_data(img, ds))

        job = await self.db.run(txn)
        self.background.start("disk save-as", oid, lambda: self._run(job))
        return job.image_id

    # -------------------------------------------------------------- the drivers
    async def _run(self, job: _Job) -> None:
        try:
            made = await self.images.drivers.run(
                "mkfs", job.ds_mad, job.image_id, job.b64, key=("image", job.image_id),
                mode=job.mode, owner=job.uid)
        except Exception as exc:  # noqa: BLE001 - the image must not stay LOCKED
            made = DriverResult("mkfs", job.image_id, 255, "", "",
                                error=f"Internal error running the driver: {exc!r}")
        if made.cancelled and self.images.drivers.stopping:
            return
        line = await self.db.run(self._made, job, made)
        if line is None:
            return
        result = await vm_tm.run_lines(self.tms, job.vm_id, [line], "disk_saveas", job.uid)
        if result.cancelled and self.tms.runner.stopping:
            return
        await self.db.run(self._copied, job, result)
        self.images.monitor_soon(job.ds_id)

    def _vm(self, job: _Job) -> Vm | None:
        try:
            vm = read_vm(job.vm_id, lock=True)
        except errors.OneError:
            return None
        return vm if vm.state == V.ACTIVE and vm.lcm_state in SAVEAS_STATES else None

    def _image(self, job: _Job):
        try:
            img = read_image(job.image_id, lock=True)
        except errors.OneError:
            return None
        return img if img.state == S.LOCKED else None

    def _restore(self, vm: Vm | None, result: TmResult | None = None) -> None:
        if vm is None:
            return
        clear_markers(vm)
        if result is not None and not result.ok:
            vm_tm.set_vm_error(vm, result)
        vm_tm.set_back(vm)
        write_vm(vm)

    def _made(self, job: _Job, made: DriverResult):
        """MKFS answered: SOURCE known, the VM disk learns it, the cpds line is built."""
        vm = self._vm(job)
        if vm is not None and vm_tm.taken_over(job.vm_id, "disk save-as"):
            return None
        img = self._image(job)
        if img is None:  # force-deleted meanwhile: the VM goes back
            self._restore(vm)
            return None
        if not made.ok or not made.first_line.split():
            set_state(img, S.ERROR)
            set_error(img, f"Error creating datablock: {made.error}" if made.error
                      else "Error creating datablock")
            write_image(img)
            self._restore(vm)
            return None
        disk = vm_tm.disk_of(vm, job.disk_id) if vm is not None else None
        if vm is None or disk is None:
            set_state(img, S.ERROR)
            set_error(img, f"Error saving disk {job.disk_id} of VM {job.vm_id}: the VM or "
                      "its disk is gone")
            write_image(img)
            self._restore(vm)
            return None
        img.source = made.first_line.split()[0]
        img.format = disk.get("FORMAT") or disk.get("DRIVER") or "raw"
        write_image(img)
        disk["HOTPLUG_SAVE_AS"] = str(img.id)
        disk["HOTPLUG_SAVE_AS_SOURCE"] = img.source
        write_vm(vm)
        front_end = vm.lcm_state in (L.HOTPLUG_SAVEAS_STOPPED, L.HOTPLUG_SAVEAS_UNDEPLOYED)
        where = vm_transfer.where(vm, self.config.datastore_location,
                                  tm.frontend() if front_end else None)
        tm_mad, ds_id = vm_tm.disk_ds(disk, where)
        return tm.cpds(tm_mad, where.host, where.disk(job.disk_id), img.source, job.snap_id,
                       vm.id, ds_id, system_tm=vm_transfer.system_tm(disk))

    def _copied(self, job: _Job, result: TmResult) -> None:
        """cpds answered: the image READY (SAVE_AS_HOT gone) or ERROR; the VM back."""
        vm = self._vm(job)
        if vm is not None and vm_tm.taken_over(job.vm_id, "disk save-as"):
            return
        img = self._image(job)
        if img is not None:
            if result.ok:
                set_state(img, S.READY)
                img.template.remove("SAVE_AS_HOT")
            else:
                set_state(img, S.ERROR)
                set_error(img, result.error or result.info or "Error saving the disk")
            write_image(img)
        self._restore(vm, result)

    def fail_interrupted(self, vm: Vm) -> None:
        """At start, in a transaction: a VM a killed daemon left in HOTPLUG_SAVEAS*
        goes back (its image went to ERROR in ImageManager.reconcile)."""
        clear_markers(vm)
        vm_tm.set_vm_error(vm, TmResult(vm.id, False, "disk save-as interrupted by a "
                                        "restart of oned-images"))
        vm_tm.set_back(vm)
