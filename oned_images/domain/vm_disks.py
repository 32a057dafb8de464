"""The image side of virtual machines (vms.md §1-§3): who may use the images a VM
template names, acquiring them when a VM is created or a disk attached, and releasing
them when the VM ends.

The three functions of the seam with the VM core (domain/vms.py) run inside the VM's
own database transaction, so a refusal part-way (the 2nd DISK cannot be acquired) rolls
back every image already acquired together with the VM row: nothing of this module is
kept outside the database (no cache, no counter), and image rows are written through
``images.write_image``, which stores the served copy of the body in the same statement.

Image rows are locked (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite has one writer) in
ascending id order before any of them is read for an acquire, so two VMs taking the same
images never deadlock and of two concurrent acquires of one persistent image exactly one
wins.  States only move through ``states.next_state`` (events ``acquire``, ``release``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

from oned_images import errors
from oned_images.config import DaemonConfig
from oned_images.domain import snapshots as snap
from oned_images.domain.datastores import read_ds
from oned_images.domain.disks import datastore_disk_attribute, image_disk_attribute
from oned_images.domain.driver_replies import set_state
from oned_images.domain.file_vars import FileVarError, parse_file_refs
from oned_images.domain.identity import _read_acl
from oned_images.domain.images import image_auth, write_image
from oned_images.domain.permissions import AuthRequest, Caller, Op
from oned_images.domain.states import (
    DISK_TYPES,
    FILE_TYPES,
    ImageState,
    ImageType,
    InvalidTransition,
    next_state,
    state_to_str,
)
from oned_images.domain.templates import disk_image_id
from oned_images.model.objects import Image
from oned_images.store import image_vms, pools
from oned_images.store.models import ImageRow, UserRow
from oned_images.template import Template, Vector
from oned_images.xmldoc.image import image_from
from oned_images.xmldoc.user import user_from

S = ImageState
PATHS = ("allocate", "instantiate", "attach")
#: the object one.template.instantiate names in its ALLOCATE texts (vms.md §1.3)
TEMPLATE_OBJ = "virtual machine template"
_LEADING_INT = re.compile(r"\s*([+-]?\d+)")
_BLANKS = " \t\n\v\f\r"


# ------------------------------------------------------------------ small helpers
def _vector_int(value: str | None) -> int | None:
    """oned's vector_value(name, int&): an istringstream read, so leading blanks are
    skipped and trailing text ignored; None when it does not start with a number."""
    if value is None:
        return None
    m = _LEADING_INT.match(value)
    return int(m.group(1)) if m else None


def _disks(tmpl: Template) -> list[Vector]:
    """The DISK vectors, live (a DISK given as a single value is not a disk for oned)."""
    return [d for d in tmpl.get_all("DISK") if isinstance(d, dict)]


def _uid_of(uname: str) -> int | None:
    return pools.oid_by_name(UserRow, uname)


def _disk_uid(disk: dict[str, str], default_uid: int) -> int | None:
    """VirtualMachineDisk::get_uid: IMAGE_UID (must parse), else IMAGE_UNAME's id
    (unknown: None), else ``default_uid``."""
    if disk.get("IMAGE_UID"):
        return _vector_int(disk["IMAGE_UID"])
    if disk.get("IMAGE_UNAME"):
        return _uid_of(disk["IMAGE_UNAME"])
    return default_uid


def _image(oid: int, lock: bool = False) -> Image | None:
    """The image with its VMS read row by row as asked (an acquire asks one
    question of a list that may hold 10,000 ids: store/image_vms.py)."""
    body = pools.body(ImageRow, oid, lock=lock)
    if body is None:
        return None
    img = image_from(body)
    image_vms.attach(img)
    return img


def _owner(uid: int, gid: int) -> Caller:
    """The VM owner as an authorization subject (all its groups, as UserPool reads)."""
    body = pools.body(UserRow, uid)
    if body is None:
        return Caller(uid, gid, frozenset({gid}), "", "")
    user = user_from(body)
    return Caller(uid, user.gid, frozenset(user.groups) | {user.gid}, user.name, user.gname)


def _targets(prefix: str) -> Iterator[str]:
    """``<prefix>a`` … ``<prefix>z``, ``<prefix>aa``, ``<prefix>ab`` …"""
    n = 0
    while True:
        suffix, k = "", n
        while True:
            suffix = chr(ord("a") + k % 26) + suffix
            k = k // 26 - 1
            if k < 0:
                break
        yield prefix + suffix
        n += 1


def _assign(queue: list[tuple[str, Vector]], used: set[str]) -> None:
    for prefix, disk in queue:
        target = next(t for t in _targets(prefix) if t not in used)
        disk["TARGET"] = target
        used.add(target)


class _Refused(Exception):
    """An acquire refusal: oned's text, and the DISK index when the text carries one."""

    def __init__(self, text: str, disk_no: int | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.disk_no = disk_no


def _error(path: str, refused: _Refused) -> errors.OneError:
    """vms.md §1.3: INTERNAL ``DISK n: …`` for one.vm.allocate, ALLOCATE with the
    template's object name for one.template.instantiate, ACTION without the DISK
    prefix for one.vm.attach."""
    text = refused.text
    if path == "attach":
        return errors.action(text)
    if refused.disk_no is not None:
        text = f"DISK {refused.disk_no}: {text}"
    if path == "instantiate":
        return errors.allocate(text, TEMPLATE_OBJ)
    return errors.internal(text)


# ------------------------------------------------------------------ authorization
def authorize_disks(caller: Caller, tmpl: Template, config: DaemonConfig) -> None:
    """vms.md §2.1 (VirtualMachineDisk::authorize), before anything is created.

    A DISK with IMAGE names the image of IMAGE_UID, IMAGE_UNAME or the caller, and when
    it exists **its id is written into the DISK's IMAGE_ID** (oned's QUIRK: pass a copy
    of the template to keep the user's IMAGE_ID winning at acquire, as instantiate
    does); else IMAGE_ID names it.  Images that do not resolve get no check (acquire
    reports them).  USE on each image, the object lock included unless the DISK is
    CLONING=YES.  Failures are joined with ``; `` into one AUTHORIZATION error."""
    req = AuthRequest(caller, _read_acl())
    for disk in _disks(tmpl):
        named = {k: v for k, v in disk.items() if k != "IMAGE_ID"} if "IMAGE" in disk else disk
        iid = disk_image_id(named, caller.uid, _uid_of,
                            lambda name, uid: pools.oid_by_name(ImageRow, name, uid))
        if iid is None:
            # a name that resolves to nothing: the IMAGE_ID is looked up (vms.md §2.1).
            # instantiate's extended copy names each image by IMAGE (its NAME) and
            # IMAGE_ID, so another user's image is checked by its id, not skipped
            iid = _vector_int(disk.get("IMAGE_ID"))
        img = _image(iid) if iid is not None else None
        if img is None:
            continue
        if "IMAGE" in disk:
            disk["IMAGE_ID"] = str(img.id)
        cloning = (disk.get("CLONING") or "").upper() == "YES"
        req.add(Op.USE, image_auth(img), check_lock=not cloning)
    req.check()


# ------------------------------------------------------------------ acquire
def _take(vm_id: int, img: Image, attach: bool) -> None:
    """ImageManager::acquire_image on a row-locked image: the refusals of vms.md §1.2,
    then the VM joins VMS (RUNNING_VMS counts it once) and the state moves."""
    itype = ImageType(img.type)
    if itype not in DISK_TYPES:
        raise _Refused(f"Image {img.id} ({img.name}) of type {itype.name} cannot be used "
                       "as DISK.")
    shareable = (img.template.get("PERSISTENT_TYPE") or "").upper() == "SHAREABLE"
    state = S(img.state)
    in_use = f"Cannot acquire image {img.id}, it is persistent and already in use"
    locked = f"Cannot acquire image {img.id}, it is locked"
    if state in (S.USED_PERS, S.LOCKED_USED_PERS) and not shareable:
        raise _Refused(in_use)
    if attach and state in (S.LOCKED, S.LOCKED_USED, S.LOCKED_USED_PERS):
        raise _Refused(locked)
    try:
        new = next_state("acquire", state, persistent=img.persistent)
    except InvalidTransition:
        raise _Refused(f"Cannot acquire image {img.id}, it is in state: "
                       f"{state_to_str(state)}") from None
    if img.vms.add(vm_id):
        img.running_vms += 1
    if new != state:
        set_state(img, new)  # a state change drops a user lock (api.md §5.4)
    write_image(img)


def _resolve(disk: Vector, uid: int) -> int | None | str:
    """ImagePool::acquire_disk's choice: an image id, a name look-up failure text, or
    None for a volatile DISK."""
    iid = _vector_int(disk.get("IMAGE_ID"))
    if iid is not None:
        return iid
    if "IMAGE" not in disk:
        return None
    name = disk["IMAGE"]
    owner = _disk_uid(disk, uid)
    who = uid if owner is None else owner
    found = pools.oid_by_name(ImageRow, name, owner) if owner is not None else None
    if found is None:
        return (f"User {who} does not own an image with name: {name} . Set IMAGE_UNAME or "
                "IMAGE_UID of owner in DISK.")
    return found


def _acquire_disk(vm_id: int, uid: int, disk: Vector, disk_id: int, config: DaemonConfig,
                  attach: bool) -> tuple[ImageType, int | None]:
    """One DISK: acquire its image (or check a volatile one) and fill it in.  Returns
    the type that decides its TARGET queue and the image id (None: volatile)."""
    ref = _resolve(disk, uid)
    if isinstance(ref, str):
        raise _Refused(ref)
    if ref is None:
        kind = (disk.get("TYPE") or "").upper()
        if kind not in ("SWAP", "FS"):
            raise _Refused(f"Unknown disk type {kind}")
        size = _vector_int(disk.get("SIZE"))
        if size is None or size <= 0:
            raise _Refused("SIZE attribute must be a positive integer value.")
        if not disk.get("DEV_PREFIX"):
            disk["DEV_PREFIX"] = config.default_device_prefix
        _finish(disk, vm_id, disk_id)
        return ImageType.DATABLOCK, None
    img = _image(ref, lock=True)
    if img is None:
        raise _Refused(f"Image with ID: {ref} does not exist")
    _take(vm_id, img, attach)
    size = _vector_int(disk.get("SIZE"))
    if size is not None:
        if img.persistent and size != img.size:
            raise _Refused(f"SIZE attribute is not supported for persistent image [{img.id}].")
        if img.type == ImageType.CDROM and size != img.size:
            raise _Refused(f"SIZE attribute is not supported for CDROM image [{img.id}].")
        if size < img.size:
            raise _Refused(f"SIZE of {size}MB is less than the image [{img.id}] size of "
                           f"{img.size}MB.")
    image_disk_attribute(disk, img, config)
    try:
        ds = read_ds(img.datastore_id)
    except errors.OneError:
        raise _Refused("Associated datastore for the image does not exist") from None
    datastore_disk_attribute(disk, ds)
    _finish(disk, vm_id, disk_id)
    return ImageType(img.type), img.id


def _finish(disk: Vector, vm_id: int, disk_id: int) -> None:
    if (disk.get("SERIAL") or "").lower() == "auto":
        disk["SERIAL"] = f"{vm_id}-{disk_id}"
    disk["DISK_ID"] = str(disk_id)


def _lock_images(disks: list[Vector], uid: int) -> None:
    """Row locks on every image the DISKs name, ascending: one order for everybody."""
    ids = set()
    for disk in disks:
        ref = _resolve(disk, uid)
        if isinstance(ref, int):
            ids.add(ref)
    for iid in sorted(ids):
        pools.body(ImageRow, iid, lock=True)


def _count_check(tmpl: Template, vm_id: int, disks: list[Vector]) -> None:
    prefixes = [(d.get("DEV_PREFIX") or "").lower() for d in disks]
    os_vec = tmpl.get_vector("OS") or {}
    machine = (os_vec.get("MACHINE") or "").lower()
    if prefixes.count("hd") > 4 and "q35" not in machine and "virt" not in machine:
        raise _Refused(f"Non q35 or virt VM {vm_id} has more than 4 hd disks")
    if prefixes.count("sd") > 256:
        raise _Refused(f"VM {vm_id} has more than 256 disks")


def _get_images(vm_id: int, uid: int, tmpl: Template, config: DaemonConfig) -> list[int]:
    """VirtualMachineDisks::get_images: every DISK in order, then the TARGETs."""
    disks = _disks(tmpl)
    tsys = tmpl.get("TM_MAD_SYSTEM") or ""
    _lock_images(disks, uid)
    acquired: list[int] = []
    used: set[str] = set()
    os_queue: list[tuple[str, Vector]] = []
    cdrom_queue: list[tuple[str, Vector]] = []
    data_queue: list[tuple[str, Vector]] = []
    for n, disk in enumerate(disks):
        if tsys:
            disk["TM_MAD_SYSTEM"] = tsys
        else:
            disk.pop("TM_MAD_SYSTEM", None)
        try:
            itype, iid = _acquire_disk(vm_id, uid, disk, n, config, attach=False)
        except _Refused as exc:
            raise _Refused(exc.text, n) from None
        if iid is not None:
            acquired.append(iid)
        target = disk.get("TARGET") or ""
        if target:
            if target in used:
                raise _Refused(f"Two disks have defined the same target {target}")
            used.add(target)
            continue
        entry = (disk["DEV_PREFIX"], disk)
        if itype == ImageType.OS and not os_queue:
            os_queue.append(entry)  # the first OS disk gets the first device
        elif itype == ImageType.CDROM:
            cdrom_queue.append(entry)
        else:
            data_queue.append(entry)
    _count_check(tmpl, vm_id, disks)
    _assign(os_queue, used)
    context = tmpl.get_vector("CONTEXT")
    if context is not None:
        target = context.get("TARGET") or ""
        if target:
            if target in used:
                raise _Refused(f"Two disks have defined the same target {target}")
            used.add(target)
        else:
            cdrom_queue.append((context.get("DEV_PREFIX") or config.default_cdrom_device_prefix,
                                context))
        context["DISK_ID"] = str(len(disks))
    _assign(cdrom_queue, used)
    _assign(data_queue, used)
    return acquired


def _attach(vm_id: int, uid: int, tmpl: Template, config: DaemonConfig) -> list[int]:
    """VirtualMachineDisks::set_up_attach for the DISKs without DISK_ID (the new ones):
    DISK_ID = max(DISK_IDs, CONTEXT DISK_ID) + 1, the first free TARGET of the prefix."""
    disks = _disks(tmpl)
    old = [d for d in disks if "DISK_ID" in d]
    new = [d for d in disks if "DISK_ID" not in d]
    used = {d["TARGET"] for d in old if d.get("TARGET")}
    ids = [_vector_int(d.get("DISK_ID")) for d in old]
    context = tmpl.get_vector("CONTEXT")
    if context is not None:
        if context.get("TARGET"):
            used.add(context["TARGET"])
        ids.append(_vector_int(context.get("DISK_ID")))
    next_id = max([i for i in ids if i is not None], default=-1) + 1
    tsys = tmpl.get("TM_MAD_SYSTEM") or ""
    _lock_images(new, uid)
    acquired: list[int] = []
    for disk in new:
        if tsys:
            disk["TM_MAD_SYSTEM"] = tsys
        else:
            disk.pop("TM_MAD_SYSTEM", None)
        _itype, iid = _acquire_disk(vm_id, uid, disk, next_id, config, attach=True)
        if iid is not None:
            acquired.append(iid)
        target = disk.get("TARGET") or ""
        if target:
            if target in used:
                raise _Refused(f"Target {target} is already in use.")
            used.add(target)
        else:
            _assign([(disk["DEV_PREFIX"], disk)], used)
        next_id += 1
    return acquired


# ------------------------------------------------------------------ $FILE[...]
def _file_resolver(vm_uid: int, owner: Caller):
    rules = _read_acl()

    def resolve(var: str, var1: str, val1: str, var2: str, val2: str) -> int:
        """get_image_path (vms.md §3.1)."""
        if var != "FILE":
            raise FileVarError("Must use FILE variable for attribute.")
        if var1 == "IMAGE":
            uid = vm_uid
            if var2:
                found = _disk_uid({var1: val1, var2: val2}, vm_uid)
                uid = -1 if found is None else found
            iid = pools.oid_by_name(ImageRow, val1, uid)
            img = _image(iid) if iid is not None else None
            if img is None:
                raise FileVarError(f"User {uid} does not own an image with name: {val1} . Set "
                                   "IMAGE_UNAME or IMAGE_UID of owner.")
        elif var1 == "IMAGE_ID":
            parsed = _vector_int(val1)
            iid = -1 if parsed is None else parsed
            img = _image(iid)
            if img is None:
                raise FileVarError(f"Image with ID: {iid} does not exist")
        else:
            raise FileVarError("Cannot get image, set IMAGE_ID or IMAGE.")
        req = AuthRequest(owner, rules)
        req.add(Op.USE, image_auth(img))
        if req.failures:
            raise FileVarError("User not authorize to use image.")
        return img.id

    return resolve


def _parse_files(value: str, resolve) -> list[int]:
    """VirtualMachine::parse_file_attribute: leading blanks stripped, errors wrapped."""
    value = value.lstrip(_BLANKS)
    try:
        return parse_file_refs(value, resolve)
    except FileVarError as exc:
        raise _Refused(f"Error parsing: {value}. {exc.message}") from None


def _os_file(os_vec: Vector, base: str, wanted: ImageType, resolve) -> None:
    """VirtualMachine::set_os_file (vms.md §3.2)."""
    attr = os_vec.get(f"{base}_DS") or ""
    if not attr:
        return
    ids = _parse_files(attr, resolve)
    if len(ids) != 1:
        raise _Refused(f"Only one FILE variable can be used in: {attr}")
    img = _image(ids[0])
    if img is None:
        raise _Refused(f"Image no longer exists in attribute: {attr}")
    os_vec.pop(base, None)
    os_vec[f"{base}_DS_ID"] = str(img.id)
    os_vec[f"{base}_DS_SOURCE"] = img.source
    os_vec[f"{base}_DS_DSID"] = str(img.datastore_id)
    kind = ImageType(img.type).name
    if img.type != wanted:
        raise _Refused(f"{base} needs an image of type {wanted.name} and not {kind}")
    if img.state != S.READY:
        raise _Refused(f"{kind} Image '{img.id} 'not in READY state.")
    try:
        ds = read_ds(img.datastore_id)
    except errors.OneError:
        raise _Refused("Associated datastore for image does not exist") from None
    os_vec[f"{base}_DS_TM"] = ds.tm_mad
    if ds.clusters:
        os_vec[f"{base}_DS_CLUSTER_ID"] = ",".join(str(c) for c in ds.clusters)


def _parse_os(tmpl: Template, resolve) -> None:
    """VirtualMachine::parse_os: one OS vector at most (created when absent, with a
    UUID), KERNEL_DS before INITRD_DS."""
    vectors = tmpl.get_all("OS")
    if len(vectors) > 1:
        raise _Refused("Only one OS attribute can be defined.")
    if not vectors:
        tmpl.add("OS", {})
    os_vec = tmpl.get_vector("OS")
    if os_vec is None:
        raise _Refused("Internal error parsing OS attribute.")
    _os_file(os_vec, "KERNEL", ImageType.KERNEL, resolve)
    if not os_vec.get("UUID"):
        os_vec["UUID"] = str(uuid.uuid4())
    _os_file(os_vec, "INITRD", ImageType.RAMDISK, resolve)


def _context_files(tmpl: Template, resolve) -> None:
    """The FILES_DS part of VirtualMachine::parse_context (vms.md §3.3)."""
    context = tmpl.get_vector("CONTEXT")
    if context is None:
        return
    files_ds = context.pop("FILES_DS", "")
    if not files_ds:
        return
    parts = []
    for iid in _parse_files(files_ds, resolve):
        img = _image(iid)
        if img is None:
            continue
        parts.append(f"{img.source}:'{img.name}' ")
        if img.type != ImageType.CONTEXT:
            raise _Refused("Only images of type CONTEXT can be used in FILE_DS attribute.")
        if img.state != S.READY:
            raise _Refused(f"{ImageType(img.type).name} Image '{iid}' not in READY state.")
    if parts:
        context["FILES_DS"] = "".join(parts)


def acquire_disks(vm_id: int, uid: int, gid: int, tmpl: Template, config: DaemonConfig,
                  *, path: str) -> list[int]:
    """Inside the transaction that inserts VM ``vm_id`` (or attaches a disk to it):
    vms.md §1.2, §2, §3 on ``tmpl``, mutated in place.  Returns the image ids acquired,
    one per image DISK in DISK order (an image named by two DISKs appears twice).

    allocate / instantiate: OS (one at most; KERNEL_DS, INITRD_DS ``$FILE``; UUID),
    every DISK (DISK_ID = position), TARGETs, CONTEXT (DISK_ID, TARGET, FILES_DS).
    attach: the DISKs without DISK_ID are the new ones; the others and CONTEXT only
    say which DISK_IDs and TARGETs are taken.  Refusals raise OneError with oned's
    code and text for ``path``; the caller's rollback undoes what was acquired."""
    if path not in PATHS:
        raise ValueError(f"unknown acquire path {path!r}")
    try:
        if path == "attach":
            return _attach(vm_id, uid, tmpl, config)
        resolve = _file_resolver(uid, _owner(uid, gid))
        _parse_os(tmpl, resolve)
        acquired = _get_images(vm_id, uid, tmpl, config)
        _context_files(tmpl, resolve)
        return acquired
    except _Refused as exc:
        raise _error(path, exc) from None


# ------------------------------------------------------------------ release
def _release_image(vm_id: int, img: Image, failed: bool) -> None:
    """ImageManager::release_image (vms.md §1.4)."""
    if img.type in FILE_TYPES or img.type == ImageType.BACKUP:
        return
    state = S(img.state)
    running = img.running_vms - 1 if vm_id in img.vms else img.running_vms
    try:
        new = next_state("release", state, running_vms=running, cloning_ops=img.cloning_ops,
                         failed=int(failed))
    except InvalidTransition:
        return  # "Releasing image in wrong state": VMS and RUNNING_VMS stay (QUIRK)
    img.vms.discard(vm_id)
    img.running_vms = running
    if state in (S.USED_PERS, S.LOCKED_USED_PERS):
        img.modtime = int(time.time())
    if new != state:
        set_state(img, new)
    write_image(img)


def release_disks(vm_id: int, tmpl: Template, *, failed: bool,
                  snapshots: dict[int, Template] | None = None) -> None:
    """Inside the transaction that ends VM ``vm_id``: VirtualMachineDisks::release_images
    (vms.md §1.5) then release_image for every DISK with an IMAGE_ID.

    A persistent OS/DATABLOCK image still USED_PERS gets the disk's SIZE when it grew,
    and its snapshot list back: ``snapshots`` maps a DISK_ID to the VM's list for that
    disk; without it (no VM disk snapshots yet) the list acquire copied into the disk
    is the image's own, unchanged while the VM held it.  A disk without a list (or with
    PERSISTENT_SNAPSHOTS=NO) clears the image's (``<SNAPSHOTS></SNAPSHOTS>``, QUIRK).
    Datastore quotas of SELF disks are the VM core's, with the rest of its quotas."""
    disks = _disks(tmpl)
    for iid in sorted({i for d in disks if (i := _vector_int(d.get("IMAGE_ID"))) is not None}):
        pools.body(ImageRow, iid, lock=True)  # the order acquire locks in: no deadlock
    for disk in disks:
        iid = _vector_int(disk.get("IMAGE_ID"))
        if iid is None:
            continue
        img = _image(iid, lock=True)
        if img is None:
            continue
        writable = (img.state == S.USED_PERS
                    and img.type in (ImageType.OS, ImageType.DATABLOCK))
        if writable:
            size = _vector_int(disk.get("SIZE")) or 0
            original = _vector_int(disk.get("ORIGINAL_SIZE")) or 0
            if size > original:
                img.size = size
            keep = (disk.get("PERSISTENT_SNAPSHOTS") or "YES").upper() != "NO"
            disk_id = _vector_int(disk.get("DISK_ID"))
            if snapshots is not None:
                listed = snapshots.get(disk_id) if disk_id is not None else None
            else:
                listed = img.snapshots if snap.count(img.snapshots) else None
            if listed is not None and keep:
                copy = listed.copy()
                copy.remove("DISK_ID")
                img.snapshots = copy
            else:
                img.snapshots = Template()
        _release_image(vm_id, img, failed)


def disk_snapshot_lists(tmpl: Template) -> list[Template]:
    """The VM's disk snapshot lists right after acquire (vms.md §2.6): a copy of the
    list of each DISK whose OS/DATABLOCK image has snapshots, with DISK_ID.  Call it
    in the transaction of acquire_disks, after it."""
    out = []
    for disk in _disks(tmpl):
        iid = _vector_int(disk.get("IMAGE_ID"))
        img = _image(iid) if iid is not None else None
        if img is None or img.type not in (ImageType.OS, ImageType.DATABLOCK):
            continue
        if not snap.count(img.snapshots):
            continue
        copy = img.snapshots.copy()
        copy.set("DISK_ID", disk.get("DISK_ID", ""))
        out.append(copy)
    return out


def disk_snapshots_xml(tmpl: Template) -> str:
    """The ``/VM/SNAPSHOTS`` elements of :func:`disk_snapshot_lists` (vms.md §5.4)."""
    return "".join(t.to_xml("SNAPSHOTS") for t in disk_snapshot_lists(tmpl))


# ------------------------------------------------------------------ CLONING VMs
def cloning_check(tmpl: Template) -> str:
    """LifeCycleManager::trigger_disk_lock_success's question for a CLONING VM (vms.md
    §5.3 step 7), asked when one of its images leaves LOCKED_USED(_PERS): ``"ready"``
    when every image of a CLONING=YES DISK is USED/USED_PERS (then call
    :func:`clear_cloning` for each), ``"failed"`` when one is ERROR (CLONING_FAILURE),
    else ``"cloning"``.  Runs inside a DB transaction."""
    states = []
    for disk in _disks(tmpl):
        if (disk.get("CLONING") or "").upper() != "YES":
            continue
        iid = _vector_int(disk.get("IMAGE_ID"))
        img = _image(iid) if iid is not None else None
        states.append(S(img.state) if img is not None else S.ERROR)
    if any(s == S.ERROR for s in states):
        return "failed"
    if all(s in (S.USED, S.USED_PERS) for s in states):
        return "ready"
    return "cloning"


def clear_all_cloning(tmpl: Template) -> None:
    """LifeCycleManager::trigger_disk_lock_success once every CLONING image is ready:
    each CLONING DISK in turn gets :func:`clear_cloning` with its image."""
    for disk in [d for d in _disks(tmpl) if (d.get("CLONING") or "").upper() == "YES"]:
        iid = _vector_int(disk.get("IMAGE_ID"))
        img = _image(iid) if iid is not None else None
        if img is None:
            disk.pop("CLONING", None)
            continue
        clear_cloning(tmpl, img)


def clear_cloning(tmpl: Template, img: Image) -> None:
    """VirtualMachineDisks::clear_cloning_image_id: the first CLONING DISK of ``img`` loses
    CLONING and gets its SOURCE and, when known, DRIVER/FORMAT; IMAGE_STATE is not
    refreshed (verified on oned 7.0.2: it stays 9)."""
    for disk in _disks(tmpl):
        if (_vector_int(disk.get("IMAGE_ID")) == img.id
                and (disk.get("CLONING") or "").upper() == "YES"):
            disk.pop("CLONING", None)
            disk["SOURCE"] = img.source
            if img.format:
                disk["DRIVER"] = img.format
                disk["FORMAT"] = img.format
            return
