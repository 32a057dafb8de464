"""one.vm.recover delete-recreate (4) and delete-db (5) (DispatchManager::delete_recreate,
delete_vm_db, LifeCycleManager::trigger_delete_recreate), and the kernel/initrd files
of OS/KERNEL_DS, INITRD_DS copied by the PROLOG (TransferManager::trigger_prolog,
vms.md §3.2), on real files with the shipped TM scripts.

The TM driver "rec" of these tests runs the shared scripts and keeps a copy of the
transfer file each transfer runs (the daemon's journal of it), so that the lines are
compared exactly."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.e2e.test_vm_transfers import fs_datastore, host, image, inputs, sysdir, wait_image
from tests.support.daemon import wait_for
from tests.support.seed import fails, field, num, ok, parse, unique, user

pytestmark = [pytest.mark.timeout(120)]
__all__ = ["inputs"]  # the module fixture of test_vm_transfers, used here too

PENDING, HOLD, ACTIVE, STOPPED, SUSPENDED, DONE, POWEROFF = 1, 2, 3, 4, 5, 6, 8
RUNNING, CLEANUP_RESUBMIT = 3, 15
READY, USED, USED_PERS = 1, 2, 8
ACTION, AUTHZ, NO_EXISTS = 2048, 512, 1024
NOWHERE = 'SCHED_REQUIREMENTS="NAME=\\"nohost\\""'

REC_SCRIPT = """#!/usr/bin/env bash
action=${0##*/}
dir=$(cd -- "$(dirname -- "$0")" && pwd)
vmid=${*: -2:1}
journal=${ONED_VMS_LOCATION%/*}/run/tm/$vmid
if stamp=$(date -r "$journal" +%s%N 2>/dev/null); then
    [ -e "$dir/transfer.$vmid.$stamp" ] || cp -- "$journal" "$dir/transfer.$vmid.$stamp"
fi
if [ -e "$dir/hang.$action" ]; then exec sleep 300; fi
exec "$dir/../shared/$action" "$@"
"""
TM_ACTIONS = ("clone", "ln", "mvds", "cpds", "delete", "mv", "mkimage", "mkswap", "context",
              "snap_create", "snap_revert", "snap_delete", "resize")


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """A daemon with the shipped drivers and "rec"; a system, an image and a files
    datastore on rec, a dummy host."""
    from tests.support.daemon import REPO, Daemon

    tmp = tmp_path_factory.mktemp("rectm")
    remotes = tmp / "remotes"
    (remotes / "tm" / "rec").mkdir(parents=True)
    (remotes / "datastore").symlink_to(REPO / "drivers" / "datastore")
    for name in ("common", "shared", "dummy"):
        (remotes / "tm" / name).symlink_to(REPO / "drivers" / "tm" / name)
    for action in TM_ACTIONS:
        script = remotes / "tm" / "rec" / action
        script.write_text(REC_SCRIPT)
        script.chmod(0o755)
    conf = (f'DATASTORE_MAD = [ EXECUTABLE = "one_datastore", ARGUMENTS = "-t 15 -d dummy,fs", '
            f'REMOTES = "{remotes}", KILL_GRACE = 1 ]\n'
            'TM_MAD = [ EXECUTABLE = "one_tm", ARGUMENTS = "-d dummy,shared,rec -w 20" ]\n'
            # rec runs the shared scripts: shared's TM_MAD_CONF (a TM_MAD needs one)
            'TM_MAD_CONF = [ NAME = "rec", LN_TARGET = "NONE", CLONE_TARGET = "SYSTEM", '
            'SHARED = "YES", DS_MIGRATE = "YES", ALLOW_ORPHANS = "FORMAT" ]\n')
    d = Daemon(tmp / "daemon", extra_config=conf).start()
    d.tmdir = remotes / "tm" / "rec"  # type: ignore[attr-defined]
    d.hid = host(d)  # type: ignore[attr-defined]
    d.sys_ds = fs_datastore(d, "rec", "SYSTEM_DS")  # type: ignore[attr-defined]
    d.img_ds = fs_datastore(d, "rec")  # type: ignore[attr-defined]
    d.files_ds = fs_datastore(d, "rec", "FILE_DS", 'DS_MAD="fs"\n')  # type: ignore
    wait_for(lambda: num(ok(d, "one.datastore.info", d.files_ds), "FREE_MB") > 0)
    yield d
    d.drop()


def transfers(d, oid: int) -> list[str]:
    """The transfer files the VM's transfers ran, in order (each as its journal)."""
    files = sorted(d.tmdir.glob(f"transfer.{oid}.*"), key=lambda p: int(p.suffix[1:]))
    return [f.read_text() for f in files]


def hang(d, *actions: str) -> None:
    for f in d.tmdir.glob("hang.*"):
        f.unlink()
    for action in actions:
        (d.tmdir / f"hang.{action}").write_text("")


def wait_vm(d, oid: int, state: int, lcm: int = 0, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        doc = ok(d, "one.vm.info", oid)
        if (num(doc, "STATE"), num(doc, "LCM_STATE")) == (state, lcm):
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)


def history(doc: str) -> list[dict[str, str]]:
    return [{c.tag: c.text or "" for c in h}
            for h in parse(doc).findall("HISTORY_RECORDS/HISTORY")]


def image_vms(d, iid: int) -> tuple[int, int, list[str]]:
    doc = ok(d, "one.image.info", iid)
    return num(doc, "STATE"), num(doc, "RUNNING_VMS"), [
        e.text for e in parse(doc).findall("VMS/ID")]


def host_use(d) -> tuple[int, int, int, list[str]]:
    doc = ok(d, "one.host.info", d.hid)
    return (num(doc, "HOST_SHARE/RUNNING_VMS"), num(doc, "HOST_SHARE/CPU_USAGE"),
            num(doc, "HOST_SHARE/MEM_USAGE"), [e.text for e in parse(doc).findall("VMS/ID")])


def two_disk_vm(d, inputs, extra: str = "") -> tuple[int, int, int, str]:
    nonp, _ = image(d, d.img_ds, inputs["raw"], False)
    pers, pers_src = image(d, d.img_ds, inputs["qcow2"], True)
    oid = ok(d, "one.vm.allocate", f'CPU="0.5"\nMEMORY="16"\n{NOWHERE}\n'
             f'DISK=[IMAGE_ID="{nonp}"]\nDISK=[IMAGE_ID="{pers}"]\n{extra}', True)
    return oid, nonp, pers, pers_src


def running(d, oid: int) -> str:
    ok(d, "one.vm.deploy", oid, d.hid, False, d.sys_ds, "")
    return wait_vm(d, oid, ACTIVE, RUNNING)


# ------------------------------------------------------------------ delete-recreate
def test_delete_recreate_of_a_running_vm_cleans_up_and_makes_it_pending_again(rec, inputs):
    d = rec
    hang(d)
    oid, nonp, pers, pers_src = two_disk_vm(d, inputs)
    before = running(d, oid)
    vdir = sysdir(d, d.sys_ds, oid)
    assert sorted(p.name for p in vdir.iterdir()) == ["disk.0", "disk.1"]
    assert host_use(d)[3] == [str(oid)]
    ok(d, "one.vm.recover", oid, 4)
    doc = wait_vm(d, oid, PENDING)
    assert not vdir.exists()  # the cleanup deleted the VM's files, saved nothing
    # same id, same images (kept acquired), the record closed with ACTION 14
    assert field(doc, "DEPLOY_ID") == ""
    assert field(doc, "TEMPLATE/DISK[1]/IMAGE_ID") == str(nonp)
    assert image_vms(d, nonp) == (USED, 1, [str(oid)])
    assert image_vms(d, pers) == (USED_PERS, 1, [str(oid)])
    assert host_use(d) == (0, 0, 0, [])
    (h,) = history(doc)
    (h0,) = history(before)
    assert (h["SEQ"], h["ACTION"], h["UID"], h["GID"]) == ("0", "14", "0", "0")
    assert int(h["REQUEST_ID"]) >= 0
    assert int(h["ETIME"]) >= int(h0["STIME"]) and int(h["ETIME"]) > 0
    assert int(h["RETIME"]) > 0 and h["EETIME"] == "0" and h["PETIME"] == h0["PETIME"]
    assert num(doc, "PREV_STATE") == PENDING and num(doc, "ETIME") == 0
    sysd = f"{d.var}/datastores/{d.sys_ds}/{oid}"
    hostname = h["HOSTNAME"]
    assert transfers(d, oid)[1:] == [  # after the prolog: the cleanup, never an MVDS
        "# epilog_delete\n"
        f"DELETE rec {hostname}:{sysd}/disk.0 {oid} {d.img_ds}\n"
        f"DELETE rec {hostname}:{sysd}/disk.1 {oid} {d.img_ds}\n"
        f"DELETE rec {hostname}:{sysd} {oid} {d.sys_ds}\n"]
    # deployed again: a new record, the disks written again
    again = running(d, oid)
    assert [r["SEQ"] for r in history(again)] == ["0", "1"]
    assert history(again)[0]["ACTION"] == "14" and history(again)[1]["ACTION"] == "0"
    assert sorted(p.name for p in vdir.iterdir()) == ["disk.0", "disk.1"]
    ok(d, "one.vm.action", "terminate", oid)
    wait_vm(d, oid, DONE)
    assert image_vms(d, pers) == (READY, 0, [])
    assert image_vms(d, nonp) == (READY, 0, [])


def test_delete_recreate_of_a_hanging_prolog_cancels_it(rec, inputs):
    d = rec
    hang(d, "ln")
    oid, nonp, pers, _ = two_disk_vm(d, inputs)
    ok(d, "one.vm.deploy", oid, d.hid, False, d.sys_ds, "")
    vdir = sysdir(d, d.sys_ds, oid)
    wait_for(lambda: (vdir / "disk.0").exists())  # the clone ran, the ln hangs
    started = time.monotonic()
    ok(d, "one.vm.recover", oid, 4)
    doc = wait_vm(d, oid, PENDING, timeout=10)
    assert time.monotonic() - started < 10
    assert not vdir.exists()
    (h,) = history(doc)
    assert (h["ACTION"], int(h["PETIME"]) > 0, h["RETIME"]) == ("14", True, "0")
    assert image_vms(d, pers) == (USED_PERS, 1, [str(oid)])
    hang(d)
    ok(d, "one.vm.recover", oid, 5)
    assert image_vms(d, pers) == (READY, 0, [])


def test_delete_recreate_of_stopped_and_hold_vms_and_its_refusals(rec, inputs):
    d = rec
    hang(d)
    oid, _, pers, pers_src = two_disk_vm(d, inputs)
    running(d, oid)
    vdir = sysdir(d, d.sys_ds, oid)
    ok(d, "one.vm.action", "poweroff", oid)
    wait_vm(d, oid, POWEROFF)
    assert fails(d, "one.vm.recover", oid, 4)[:2] == (
        "[one.vm.recover] Cannot delete-recreate a powered off VM. Resume it first", ACTION)
    ok(d, "one.vm.action", "resume", oid)
    wait_vm(d, oid, ACTIVE, RUNNING)
    ok(d, "one.vm.action", "suspend", oid)
    wait_vm(d, oid, SUSPENDED)
    assert fails(d, "one.vm.recover", oid, 4)[:2] == (
        "[one.vm.recover] Cannot delete-recreate a suspended VM. Resume it first", ACTION)
    ok(d, "one.vm.action", "stop", oid)
    wait_vm(d, oid, STOPPED)
    runs = len(transfers(d, oid))
    ok(d, "one.vm.recover", oid, 4)  # STOPPED: PENDING at once, no transfer
    doc = ok(d, "one.vm.info", oid)
    assert (num(doc, "STATE"), num(doc, "LCM_STATE")) == (PENDING, 0)
    # (resume from POWEROFF opened SEQ 1; stop wrote 9 into it, delete-recreate 14)
    assert [r["ACTION"] for r in history(doc)] == ["19", "14"]
    assert len(transfers(d, oid)) == runs
    assert (vdir / "disk.1").is_symlink()  # the files stay until the next PROLOG
    ok(d, "one.vm.recover", oid, 4)  # PENDING: nothing to do
    assert num(ok(d, "one.vm.info", oid), "STATE") == PENDING
    ok(d, "one.vm.action", "hold", oid)
    ok(d, "one.vm.recover", oid, 4)  # HOLD -> PENDING
    doc = ok(d, "one.vm.info", oid)
    assert num(doc, "STATE") == PENDING and len(history(doc)) == 2
    again = running(d, oid)  # a fresh PROLOG (not a resume): CLONE/LN again
    assert [r["SEQ"] for r in history(again)] == ["0", "1", "2"]
    assert transfers(d, oid)[-1].startswith("# prolog\nCLONE rec ")
    ok(d, "one.vm.action", "terminate", oid)
    wait_vm(d, oid, DONE)
    assert fails(d, "one.vm.recover", oid, 4)[:2] == (
        "[one.vm.recover] Cannot delete-recreate a VM already in DONE state", ACTION)
    assert image_vms(d, pers) == (READY, 0, [])
    # a hold VM without history
    held = ok(d, "one.vm.allocate", f'CPU="0.1"\nMEMORY="16"\n{NOWHERE}', True)
    ok(d, "one.vm.recover", held, 4)
    doc = ok(d, "one.vm.info", held)
    assert num(doc, "STATE") == PENDING and "<HISTORY_RECORDS/>" in doc
    ok(d, "one.vm.recover", held, 5)


# ------------------------------------------------------------------ delete-db
def test_delete_db_ends_the_vm_without_any_driver(rec, inputs):
    d = rec
    hang(d)
    oid, nonp, pers, pers_src = two_disk_vm(d, inputs)
    running(d, oid)
    vdir = sysdir(d, d.sys_ds, oid)
    runs = transfers(d, oid)
    ok(d, "one.vm.recover", oid, 5)
    doc = ok(d, "one.vm.info", oid)  # DONE when the call returns
    assert (num(doc, "STATE"), num(doc, "LCM_STATE"), num(doc, "PREV_STATE")) == (DONE, 0, DONE)
    assert num(doc, "ETIME") > 0
    (h,) = history(doc)
    assert h["ACTION"] == "0" and int(h["ETIME"]) > 0 and int(h["RETIME"]) > 0
    assert h["EETIME"] == "0" and h["ESTIME"] == "0"
    # no transfer ran: the files stay in the system datastore
    assert transfers(d, oid) == runs
    assert sorted(p.name for p in vdir.iterdir()) == ["disk.0", "disk.1"]
    # images released as at a normal end (a persistent one READY, not ERROR)
    assert image_vms(d, pers) == (READY, 0, [])
    assert image_vms(d, nonp) == (READY, 0, [])
    assert host_use(d) == (0, 0, 0, [])
    assert not (d.var / "vms" / str(oid)).exists()
    ok(d, "one.vm.recover", oid, 5)  # DONE: nothing to do, success
    assert oid in [int(e.text) for e in parse(
        ok(d, "one.vmpool.info", -2, -1, -1, DONE)).findall("VM/ID")]


@pytest.mark.parametrize("where", ["poweroff", "hold", "prolog"])
def test_delete_db_from_other_states(rec, inputs, where):
    d = rec
    hang(d, "ln") if where == "prolog" else hang(d)
    oid, nonp, pers, _ = two_disk_vm(d, inputs)
    if where == "poweroff":
        running(d, oid)
        ok(d, "one.vm.action", "poweroff", oid)
        wait_vm(d, oid, POWEROFF)
    elif where == "prolog":
        ok(d, "one.vm.deploy", oid, d.hid, False, d.sys_ds, "")
        wait_for(lambda: (sysdir(d, d.sys_ds, oid) / "disk.0").exists())
    ok(d, "one.vm.recover", oid, 5)
    doc = ok(d, "one.vm.info", oid)
    assert (num(doc, "STATE"), num(doc, "LCM_STATE")) == (DONE, 0)
    assert image_vms(d, pers) == (READY, 0, [])
    assert host_use(d) == (0, 0, 0, [])
    if where == "prolog":
        # the hanging line was stopped, its answer dropped: the VM stays DONE
        time.sleep(0.5)
        assert num(ok(d, "one.vm.info", oid), "STATE") == DONE
        assert field(ok(d, "one.vm.info", oid), "USER_TEMPLATE/ERROR") is None
    hang(d)


def test_recover_codes_and_rights(rec, inputs):
    d = rec
    assert fails(d, "one.vm.recover", 99999, 6)[:2] == (
        "[one.vm.recover] Wrong recovery operation code", ACTION)
    assert fails(d, "one.vm.recover", 99999, -1)[:2] == (
        "[one.vm.recover] Wrong recovery operation code", ACTION)
    assert fails(d, "one.vm.recover", 99999, 4)[:2] == (
        "[one.vm.recover] Error getting virtual machine [99999].", NO_EXISTS)
    uid, sess = user(d)
    mine = ok(d, "one.vm.allocate", f'CPU="0.1"\nMEMORY="16"\n{NOWHERE}', True, session=sess)
    for op in (4, 5):
        assert fails(d, "one.vm.recover", mine, op, session=sess)[:2] == (
            f"[one.vm.recover] User [{uid}] : Not authorized to perform ADMIN VM [{mine}].",
            AUTHZ)
    assert num(ok(d, "one.vm.info", mine), "STATE") == HOLD


# ------------------------------------------------------------------ kernel and initrd
def test_prolog_copies_the_kernel_and_initrd_files(rec, inputs):
    d = rec
    hang(d)
    base = Path(inputs["raw"]).parent
    kfile, rfile = base / "vmlinuz", base / "initrd.img"
    kfile.write_bytes(b"kernel-bytes\x00\x01" * 100)
    rfile.write_bytes(b"initrd-bytes\x02" * 100)
    kernel = ok(d, "one.image.allocate", f'NAME="{unique("vmlinuz")}"\nPATH="{kfile}"\n'
                'TYPE="KERNEL"', d.files_ds)
    ramdisk = ok(d, "one.image.allocate", f'NAME="{unique("initrd")}"\nPATH="{rfile}"\n'
                 'TYPE="RAMDISK"', d.files_ds)
    ksrc = field(wait_image(d, kernel, READY), "SOURCE")
    rsrc = field(wait_image(d, ramdisk, READY), "SOURCE")
    disk, disk_src = image(d, d.img_ds, inputs["raw"], False)
    oid = ok(d, "one.vm.allocate", f'CPU="0.1"\nMEMORY="16"\n{NOWHERE}\n'
             f'DISK=[IMAGE_ID="{disk}"]\nOS=[KERNEL="/boot/old",'
             f'KERNEL_DS="$FILE[IMAGE_ID={kernel}]",INITRD_DS="$FILE[IMAGE_ID={ramdisk}]",'
             'ARCH="x86_64"]', True)
    held = ok(d, "one.vm.info", oid)
    os_before = {e.tag: e.text for e in parse(held).find("TEMPLATE/OS")}
    assert "KERNEL" not in os_before and "INITRD" not in os_before
    doc = running(d, oid)
    hostname = field(doc, "HISTORY_RECORDS/HISTORY/HOSTNAME")
    sysd = f"{d.var}/datastores/{d.sys_ds}/{oid}"
    assert {e.tag: e.text for e in parse(doc).find("TEMPLATE/OS")} == {
        **os_before, "KERNEL": f"{sysd}/kernel", "INITRD": f"{sysd}/initrd"}
    assert os_before == {
        "ARCH": "x86_64", "INITRD_DS": f"$FILE[IMAGE_ID={ramdisk}]",
        "INITRD_DS_CLUSTER_ID": "0", "INITRD_DS_DSID": str(d.files_ds),
        "INITRD_DS_ID": str(ramdisk), "INITRD_DS_SOURCE": rsrc, "INITRD_DS_TM": "rec",
        "KERNEL_DS": f"$FILE[IMAGE_ID={kernel}]", "KERNEL_DS_CLUSTER_ID": "0",
        "KERNEL_DS_DSID": str(d.files_ds), "KERNEL_DS_ID": str(kernel),
        "KERNEL_DS_SOURCE": ksrc, "KERNEL_DS_TM": "rec", "UUID": os_before["UUID"]}
    fe = socket.gethostname()
    assert transfers(d, oid) == [
        "# prolog\n"
        f"CLONE rec {fe}:{disk_src} {hostname}:{sysd}/disk.0 {oid} {d.img_ds}\n"
        f"CLONE rec {fe}:{ksrc} {hostname}:{sysd}/kernel {oid} {d.files_ds}\n"
        f"CLONE rec {fe}:{rsrc} {hostname}:{sysd}/initrd {oid} {d.files_ds}\n"]
    vdir = Path(sysd)
    assert (vdir / "kernel").read_bytes() == kfile.read_bytes()
    assert (vdir / "initrd").read_bytes() == rfile.read_bytes()
    assert not (vdir / "kernel").is_symlink()
    # no acquire: the files' images stay READY and unused
    assert image_vms(d, kernel) == (READY, 0, [])
    assert image_vms(d, ramdisk) == (READY, 0, [])
    ok(d, "one.vm.action", "terminate", oid)
    wait_vm(d, oid, DONE)
    assert not vdir.exists()  # the VM directory's DELETE takes them
    assert Path(ksrc).read_bytes() == kfile.read_bytes()


# ------------------------------------------------------------------ delete (3) when not running
def test_delete_of_a_stopped_vm_ends_it_at_once_and_cleans_up_on_the_front_end(rec, inputs):
    """DispatchManager::delete_vm of a STOPPED VM: the epilog_delete runs on the
    front-end (where the files are) while the VM is DONE already, its images READY."""
    d = rec
    hang(d)
    oid, nonp, pers, _ = two_disk_vm(d, inputs)
    running(d, oid)
    ok(d, "one.vm.action", "stop", oid)
    wait_vm(d, oid, STOPPED)
    vdir = sysdir(d, d.sys_ds, oid)
    ok(d, "one.vm.recover", oid, 3)
    doc = ok(d, "one.vm.info", oid)
    assert (num(doc, "STATE"), num(doc, "LCM_STATE"), num(doc, "ETIME") > 0) == (DONE, 0, True)
    assert image_vms(d, pers) == (READY, 0, [])
    assert image_vms(d, nonp) == (READY, 0, [])
    wait_for(lambda: not vdir.exists())
    fe, sysd = socket.gethostname(), f"{d.var}/datastores/{d.sys_ds}/{oid}"
    wait_for(lambda: transfers(d, oid)[-1].startswith("# epilog_delete"))
    assert transfers(d, oid)[-1] == (
        "# epilog_delete\n"
        f"DELETE rec {fe}:{sysd}/disk.0 {oid} {d.img_ds}\n"
        f"DELETE rec {fe}:{sysd}/disk.1 {oid} {d.img_ds}\n"
        f"DELETE rec {fe}:{sysd} {oid} {d.sys_ds}\n")
    assert num(ok(d, "one.vm.info", oid), "STATE") == DONE
