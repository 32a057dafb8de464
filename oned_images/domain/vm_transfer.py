"""The TRANSFER lines of a VM's life-cycle operations (vms.md §7.2), from its stored
template and its current HISTORY record.

oned's TransferManager writes one line per disk and chooses the driver of each line
the same way: an image disk's lines use its image datastore's TM_MAD (``DISK/TM_MAD``),
with the ``.<system tm>`` suffix when the disk was deployed on a system datastore of
another TM (``DISK/TM_MAD_SYSTEM``, vms.md §2.11); volatile disks, the context disk and
the VM directory use the system datastore's TM_MAD (``HISTORY/TM_MAD``).  This module
only builds lines (pure functions, nothing runs); a line that cannot be built is a
:class:`TransferError` whose text is the failure oned reports.

Every template value reaches a driver as one argv word of a
:class:`~oned_images.driver.tm.TmAction` (which refuses white space and control
characters): nothing is ever put into a shell line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from oned_images import errors
from oned_images.driver import tm
from oned_images.driver.tm import TmAction
from oned_images.model.objects import Datastore, Vm
from oned_images.template import Template

#: a FILES_DS entry as parse_context writes it: ``<SOURCE>:'<NAME>' ``
_FILES_DS = re.compile(r"(\S+?):'([^']*)'")
#: CONTEXT attributes that are not context variables
_NOT_VARIABLES = frozenset({"DISK_ID", "TARGET", "DEV_PREFIX", "FILES_DS", "FILES"})
_ISO_NAME = re.compile(r"[/\s]")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TransferError(Exception):
    """A line oned could not write: the transfer fails with this text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Transfer:
    """The lines of one operation and what the scripts need besides them."""

    op: str
    actions: tuple[TmAction, ...]
    env: dict[str, str]


def _disks(vm: Vm) -> list[dict]:
    return [d for d in vm.template.get_all("DISK") if isinstance(d, dict)]


def _int(value: str | None, default: int = -1) -> int:
    try:
        return int((value or "").strip())
    except ValueError:
        return default


def system_tm(disk: dict) -> str:
    """The ``.<system tm>`` of a disk's lines: only when its TM differs (§2.11)."""
    system = (disk.get("TM_MAD_SYSTEM") or "").strip()
    if system and system.lower() != (disk.get("TM_MAD") or "").strip().lower():
        return system
    return ""


@dataclass(frozen=True)
class Where:
    """Where a deployed VM's disks are: its host, system TM and datastore, and paths."""

    host: str
    sys_tm: str
    sys_ds: int
    location: str
    vm_id: int

    def disk(self, disk_id: int) -> str:
        return tm.disk_path(self.location, self.sys_ds, self.vm_id, disk_id)

    @property
    def dir(self) -> str:
        return tm.system_dir(self.location, self.sys_ds, self.vm_id)


def where(vm: Vm, location: str, host: str | None = None) -> Where:
    """The last HISTORY record's place; ``host`` overrides it (the front-end, a move)."""
    h = vm.history[-1]
    return Where(host or h.hostname, h.tm_mad, h.ds_id, location, vm.id)


def _image_disk(disk: dict) -> bool:
    return bool((disk.get("IMAGE_ID") or "").strip())


def _build(make, *args, **kwargs) -> TmAction:
    try:
        return make(*args, **kwargs)
    except ValueError as exc:
        raise TransferError(str(exc)) from None


# ------------------------------------------------------------------ deploy
def check_tm_mad_disks(tmpl: Template, sys_ds: Datastore,
                       image_ds: Callable[[int], Datastore | None]) -> None:
    """VirtualMachine::check_tm_mad_disks at the first deploy (vms.md §2.11): an image
    disk of another TM than the system datastore's takes the image datastore's
    CLONE_TARGET_<SYS>, LN_TARGET_<SYS>, DISK_TYPE_<SYS> and TM_MAD_SYSTEM=<sys>."""
    system = sys_ds.tm_mad
    mode = system.upper()
    for disk in tmpl.get_all("DISK"):
        if not isinstance(disk, dict) or not _image_disk(disk):
            continue
        if (disk.get("TM_MAD") or "").lower() == system.lower():
            continue
        ds = image_ds(_int(disk.get("DATASTORE_ID")))
        values = [ds.template.get(f"{a}_{mode}") if ds is not None else None
                  for a in ("CLONE_TARGET", "LN_TARGET", "DISK_TYPE")]
        if not all(values):
            raise errors.action(f"Image Datastore does not support transfer mode: {system}")
        disk["CLONE_TARGET"], disk["LN_TARGET"], disk["DISK_TYPE"] = values
        disk["TM_MAD_SYSTEM"] = system


def volatile_disk_info(tmpl: Template, sys_ds: Datastore, tm_driver: str) -> None:
    """set_volatile_disk_info (vms.md §2.8): volatile disks take the system datastore's
    attributes and a FORMAT (FS: the TM's DRIVER if configured, else theirs, else raw;
    SWAP: raw)."""
    for disk in tmpl.get_all("DISK"):
        if not isinstance(disk, dict) or _image_disk(disk):
            continue
        disk["DATASTORE"], disk["DATASTORE_ID"] = sys_ds.name, str(sys_ds.id)
        disk["TM_MAD"] = sys_ds.tm_mad
        disk["CLUSTER_ID"] = ",".join(str(c) for c in sys_ds.clusters)
        for attr in ("CLONE_TARGET", "LN_TARGET"):
            value = sys_ds.template.get(attr)
            if value:
                disk[attr] = value
        disk.setdefault("DISK_TYPE", "FILE")
        if (disk.get("TYPE") or "").upper() == "SWAP":
            fmt = "raw"
        else:
            fmt = tm_driver or disk.get("FORMAT") or "raw"
        disk["DRIVER"] = disk["FORMAT"] = fmt


# ------------------------------------------------------------------ prolog
def context_script(vm: Vm) -> str:
    """context.sh: the CONTEXT variables as shell assignments (single-quoted, so the
    guest's shell reads every value literally)."""
    ctx = vm.template.get_vector("CONTEXT") or {}
    lines = ["# Context variables generated by OpenNebula"]
    for name, value in ctx.items():
        if name in _NOT_VARIABLES or not _VARIABLE.match(name) or not isinstance(value, str):
            continue
        lines.append(f"{name}='" + value.replace("'", "'\\''") + "'")
    return "\n".join(lines) + "\n"


def context_files(vm: Vm) -> list[str]:
    """The files of the context ISO besides context.sh: FILES_DS (``SOURCE:name``, white
    space in a name becomes ``_`` as in the ISO) and FILES (admins only)."""
    ctx = vm.template.get_vector("CONTEXT") or {}
    out = [f"{src}:{_ISO_NAME.sub('_', name) or os.path.basename(src)}"
           for src, name in _FILES_DS.findall(ctx.get("FILES_DS") or "")]
    out += (ctx.get("FILES") or "").split()
    return out


#: the OS attributes of the kernel and initrd files (vms.md §3.2), in line order
OS_FILES = ("KERNEL", "INITRD")


@dataclass(frozen=True)
class OsFile:
    """A kernel or initrd file of the VM's OS: its image in a files datastore and the
    name it gets in the VM directory."""

    base: str
    source: str
    ds_id: str
    tm_mad: str

    @property
    def name(self) -> str:
        return self.base.lower()


def os_files(vm: Vm) -> list[OsFile]:
    """prolog_os_transfer_commands' choice: KERNEL then INITRD, each only when OS has
    <BASE>_DS and the <BASE>_DS_SOURCE, _DSID and _TM that VM creation resolved it to
    (an OS/KERNEL without KERNEL_DS is a path on the host and travels nowhere)."""
    os_vec = vm.template.get_vector("OS") or {}
    out = []
    for base in OS_FILES:
        if not os_vec.get(f"{base}_DS"):
            continue
        source, ds_id, tm_mad = (os_vec.get(f"{base}_DS_{a}") or ""
                                 for a in ("SOURCE", "DSID", "TM"))
        if source and ds_id and tm_mad:
            out.append(OsFile(base, source, ds_id, tm_mad))
    return out


def set_os_paths(vm: Vm, location: str) -> None:
    """TransferManager::trigger_prolog: OS/KERNEL and OS/INITRD name the copies the
    PROLOG makes in the VM directory (``<sysdir>/kernel``, ``<sysdir>/initrd``)."""
    os_vec = vm.template.get_vector("OS")
    if os_vec is None:
        return
    w = where(vm, location)
    for f in os_files(vm):
        os_vec[f.base] = f"{w.dir}/{f.name}"


def os_file_lines(vm: Vm, w: Where, fe: str) -> list[TmAction]:
    """``CLONE <files ds tm> <fe>:<SOURCE> <host>:<sysdir>/kernel <vm> <files ds>`` (then
    ``initrd``): unlike a disk line the SOURCE always gets the front-end prefix and
    the line never a ``.<system tm>`` suffix."""
    return [_build(TmAction, "CLONE", f.tm_mad,
                   (f"{fe}:{f.source}", f"{w.host}:{w.dir}/{f.name}", str(vm.id), f.ds_id))
            for f in os_files(vm)]


def prolog(vm: Vm, location: str, vms_location: str, *, fe: str | None = None) -> Transfer:
    """The PROLOG transfer of a deploy: CLONE or LN per image disk, MKIMAGE / MKSWAP per
    volatile disk, CLONE of the kernel and initrd files, then CONTEXT (the daemon runs
    the context line too: there is no VMM driver to do it).  ``vms_location`` is where
    context.sh is (VAR/vms)."""
    w = where(vm, location)
    fe = fe or tm.frontend()
    actions: list[TmAction] = []
    env: dict[str, str] = {}
    for n, disk in enumerate(_disks(vm)):
        disk_id = _int(disk.get("DISK_ID"), n)
        if _image_disk(disk):
            needed = [disk.get(a) for a in ("SOURCE", "TM_MAD", "CLONE", "DATASTORE_ID")]
            if not all(needed):
                raise TransferError("missing DISK mandatory attributes (SOURCE, TM_MAD, "
                                    f"CLONE, DATASTORE_ID) for VM {vm.id}, DISK {disk_id}")
            make = tm.clone if disk["CLONE"].upper() == "YES" else tm.ln
            actions.append(_build(make, disk["TM_MAD"], disk["SOURCE"], w.host,
                                  w.disk(disk_id), vm.id, _int(disk["DATASTORE_ID"]),
                                  fe=fe, system_tm=system_tm(disk)))
            continue
        kind = (disk.get("TYPE") or "").upper()
        size = _int(disk.get("SIZE"), 0)
        if kind == "SWAP":
            actions.append(_build(tm.mkswap, w.sys_tm, size, w.host, w.disk(disk_id),
                                  vm.id, w.sys_ds))
        else:
            fmt = disk.get("FORMAT") or disk.get("DRIVER") or "raw"
            if disk.get("FS") and "ONED_DISK_FS" not in env:
                env["ONED_DISK_FS"] = disk["FS"]
            actions.append(_build(tm.mkimage, w.sys_tm, size, fmt, w.host, w.disk(disk_id),
                                  vm.id, w.sys_ds))
    actions += os_file_lines(vm, w, fe)
    ctx = vm.template.get_vector("CONTEXT")
    if ctx is not None:
        script = os.path.join(vms_location, str(vm.id), "context.sh")
        disk_id = _int(ctx.get("DISK_ID"), len(_disks(vm)))
        actions.append(_build(tm.context, w.sys_tm, [script, *context_files(vm)], w.host,
                              w.disk(disk_id), vm.id, w.sys_ds))
    return Transfer("prolog", tuple(actions), env)


# ------------------------------------------------------------------ epilog
def epilog(vm: Vm, location: str, *, host: str | None = None,
           cleanup: bool = False) -> Transfer:
    """EPILOG (terminate): MVDS for persistent disks (SAVE=YES), DELETE for the others,
    then DELETE of the VM directory.  ``cleanup`` (terminate from a failure state,
    CLEANUP_DELETE) never saves: DELETE only.  ``host`` is the front-end for a VM that
    is STOPPED/UNDEPLOYED (its files are there)."""
    w = where(vm, location, host)
    actions: list[TmAction] = []
    for n, disk in enumerate(_disks(vm)):
        disk_id = _int(disk.get("DISK_ID"), n)
        path = w.disk(disk_id)
        if _image_disk(disk):
            tm_mad, ds_id = disk.get("TM_MAD") or w.sys_tm, _int(disk.get("DATASTORE_ID"))
            if (disk.get("SAVE") or "").upper() == "YES" and not cleanup:
                actions.append(_build(tm.mvds, tm_mad, w.host, path, disk.get("SOURCE") or "",
                                      vm.id, ds_id, system_tm=system_tm(disk)))
                continue
            actions.append(_build(tm.delete, tm_mad, w.host, path, vm.id, ds_id,
                                  system_tm=system_tm(disk)))
        else:
            actions.append(_build(tm.delete, w.sys_tm, w.host, path, vm.id, w.sys_ds))
    actions.append(_build(tm.delete, w.sys_tm, w.host, w.dir, vm.id, w.sys_ds))
    return Transfer("epilog_delete" if cleanup else "epilog", tuple(actions), {})


# ------------------------------------------------------------------ stop / undeploy / resume
def move(vm: Vm, location: str, src_host: str, dst_host: str, op: str) -> Transfer:
    """``MV`` per disk, then the VM directory: stop/undeploy move the files from the
    host to the front-end, resume back (here both are this machine, so the paths stay
    and the drivers only check them)."""
    w = where(vm, location)
    actions: list[TmAction] = []
    for n, disk in enumerate(_disks(vm)):
        disk_id = _int(disk.get("DISK_ID"), n)
        path = w.disk(disk_id)
        if _image_disk(disk):
            tm_mad, ds_id = disk.get("TM_MAD") or w.sys_tm, _int(disk.get("DATASTORE_ID"))
            suffix = system_tm(disk)
        else:
            tm_mad, ds_id, suffix = w.sys_tm, w.sys_ds, ""
        actions.append(_build(tm.mv, tm_mad, src_host, path, dst_host, path, vm.id, ds_id,
                              system_tm=suffix))
    actions.append(_build(tm.mv, w.sys_tm, src_host, w.dir, dst_host, w.dir, vm.id,
                          w.sys_ds))
    return Transfer(op, tuple(actions), {})


def without_saved(transfer: Transfer) -> Transfer:
    """An epilog run again after a restart: MVDS removes the disk it saved as its last
    step, so an MVDS whose disk is gone (no file, no link) already ran."""
    def gone(a: TmAction) -> bool:
        return a.action == "MVDS" and not os.path.lexists(a.args[0].partition(":")[2])

    return Transfer(transfer.op, tuple(a for a in transfer.actions if not gone(a)),
                    transfer.env)


def runs_nothing(transfer: Transfer) -> bool:
    """True when every line is for the dummy TM (whose scripts do nothing): the
    transfer then needs no process at all."""
    return all(a.tm_mad == "dummy" for a in transfer.actions)
