"""VM disk snapshots, save-as and attach/detach on real files (issue 10's "Managing
Snapshots in Persistent Images" and "Save Changes" end to end): the TM drivers shared and
qcow2 make the files, the image keeps the VM's snapshots when the VM ends, and the
datastore driver's snapshot calls then work on those very files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_vm_transfers import (
    ACTIVE,
    DONE,
    POWEROFF,
    READY,
    RUNNING,
    fs_datastore,
    host,
    image,
    inputs,  # noqa: F401 - the module fixture
    sysdir,
    wait_image,
    wait_vm,
)
from tests.support.seed import field, num, ok, parse, unique

pytestmark = [pytest.mark.timeout(120)]
A, B, C = "0x5a", "0x33", "0x77"


def qemu_io(path: Path | str, fmt: str, command: str) -> str:
    out = subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out
    return out.stdout


def write(path, fmt: str, pattern: str) -> None:
    assert "wrote 65536" in qemu_io(path, fmt, f"write -P {pattern} 0 64k")


def holds(path, fmt: str, pattern: str) -> bool:
    return "Pattern verification failed" not in qemu_io(path, fmt, f"read -P {pattern} 0 64k")


def image_view(source: str) -> Path:
    """What a qcow2 image with snapshots is: the newest numeric layer of SOURCE.snap."""
    snap = Path(source + ".snap")
    layers = sorted(int(p.name) for p in snap.glob("*") if p.name.isdigit())
    return snap / str(layers[-1]) if layers else Path(source)


def same_content(a, fmt_a: str, b, fmt_b: str) -> bool:
    out = subprocess.run(["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, str(a), str(b)],
                         capture_output=True, text=True, check=False)
    return out.returncode == 0


def snap_ids(doc: str, path: str = "SNAPSHOTS/SNAPSHOT") -> list[int]:
    return [int(s.findtext("ID")) for s in parse(doc).findall(path)]


def deployed(d, tm_mad: str, files: dict, in_vm: int, *kinds: tuple[str, bool]):
    """Images of (input, persistent) on a ``tm_mad`` image datastore, the first
    ``in_vm`` of them the disks of a VM RUNNING on a dummy host and a ``tm_mad`` system
    datastore; returns (vm id, its directory, [(image id, SOURCE)])."""
    hid = host(d)
    sys_ds = fs_datastore(d, tm_mad, "SYSTEM_DS")
    img_ds = fs_datastore(d, tm_mad)
    images = [image(d, img_ds, files[k], pers) for k, pers in kinds]
    disks = "".join(f'\nDISK=[IMAGE_ID="{i}"]' for i, _ in images[:in_vm])
    oid = ok(d, "one.vm.allocate", f'NAME="{unique("dvm")}"\nCPU="0.1"\nMEMORY="16"{disks}',
             True)
    ok(d, "one.vm.deploy", oid, hid, False, sys_ds, "")
    wait_vm(d, oid, ACTIVE, RUNNING)
    return oid, sysdir(d, sys_ds, oid), images


@pytest.mark.parametrize("tm_mad", ["shared", "qcow2"])
def test_disk_snapshots_become_image_snapshots_on_the_files(daemon, inputs, tm_mad):  # noqa: F811
    d = daemon
    oid, vdir, [(pers, pers_src), _] = deployed(d, tm_mad, inputs, 2, ("qcow2", True),
                                                ("raw", False))
    fmt1 = "qcow2" if tm_mad == "qcow2" else "raw"
    write(vdir / "disk.0", "qcow2", A)
    write(vdir / "disk.1", fmt1, A)
    assert ok(d, "one.vm.disksnapshotcreate", oid, 0, "a") == 0
    wait_vm(d, oid, ACTIVE, RUNNING)
    assert ok(d, "one.vm.disksnapshotcreate", oid, 1, "a1") == 0
    wait_vm(d, oid, ACTIVE, RUNNING)
    write(vdir / "disk.0", "qcow2", B)
    write(vdir / "disk.1", fmt1, B)
    assert ok(d, "one.vm.disksnapshotcreate", oid, 0, "b") == 1
    doc = wait_vm(d, oid, ACTIVE, RUNNING)
    assert field(doc, "USER_TEMPLATE/ERROR") is None, doc
    write(vdir / "disk.0", "qcow2", C)
    # save-as of the running disk and of its snapshot 0
    whole = ok(d, "one.vm.disksaveas", oid, 0, unique("whole"), "", -1)
    w = wait_image(d, whole, READY)
    wait_vm(d, oid, ACTIVE, RUNNING)
    from_snap = ok(d, "one.vm.disksaveas", oid, 0, unique("snap0"), "", 0)
    s0 = wait_image(d, from_snap, READY)
    assert (field(w, "FORMAT"), field(s0, "FORMAT")) == ("qcow2", "qcow2")
    assert holds(field(w, "SOURCE"), "qcow2", C)
    assert holds(field(s0, "SOURCE"), "qcow2", A)
    assert same_content(field(w, "SOURCE"), "qcow2", vdir / "disk.0", "qcow2")
    doc = wait_vm(d, oid, ACTIVE, RUNNING)

    ok(d, "one.vm.action", "poweroff", oid)
    wait_vm(d, oid, POWEROFF)
    assert ok(d, "one.vm.disksnapshotrevert", oid, 0, 0) == oid
    doc = wait_vm(d, oid, POWEROFF)
    assert field(doc, "USER_TEMPLATE/ERROR") is None, doc
    assert holds(vdir / "disk.0", "qcow2", A)
    assert ok(d, "one.vm.disksnapshotrevert", oid, 1, 0) == oid
    wait_vm(d, oid, POWEROFF)
    assert holds(vdir / "disk.1", fmt1, A)
    ok(d, "one.vm.action", "terminate", oid)
    wait_vm(d, oid, DONE)
    assert not vdir.exists()

    img = wait_image(d, pers, READY)
    assert snap_ids(img) == [0, 1]
    snap_dir = Path(pers_src + ".snap")
    assert holds(snap_dir / "0", "qcow2", A) and holds(snap_dir / "1", "qcow2", B)
    assert holds(image_view(pers_src), "qcow2", A)  # reverted to 0 before terminate
    # the datastore driver's snapshot calls on those files
    assert ok(d, "one.image.snapshotrevert", pers, 1) == 1
    img = wait_image(d, pers, READY)
    assert field(img, "TEMPLATE/ERROR") is None, img
    assert holds(image_view(pers_src), "qcow2", B)
    assert ok(d, "one.image.snapshotrevert", pers, 0) == 0
    wait_image(d, pers, READY)
    assert ok(d, "one.image.snapshotdelete", pers, 1) == 1
    img = wait_image(d, pers, READY)
    assert field(img, "TEMPLATE/ERROR") is None, img
    assert snap_ids(img) == [0] and not (snap_dir / "1").exists()
    assert ok(d, "one.image.snapshotflatten", pers, 0) == 0
    img = wait_image(d, pers, READY)
    assert field(img, "TEMPLATE/ERROR") is None, img
    assert snap_ids(img) == []
    assert holds(image_view(pers_src), "qcow2", A)


def test_attach_and_detach_make_and_remove_the_file(daemon, inputs):  # noqa: F811
    d = daemon
    oid, vdir, [_, (extra, extra_src), (pers, pers_src)] = deployed(
        d, "shared", inputs, 1, ("raw", False), ("raw", False), ("qcow2", True))
    ok(d, "one.vm.attach", oid, f"DISK=[IMAGE_ID={extra}]")
    doc = wait_vm(d, oid, ACTIVE, RUNNING)
    assert [e.text for e in parse(doc).findall("TEMPLATE/DISK/DISK_ID")] == ["0", "1"]
    assert same_content(vdir / "disk.1", "raw", extra_src, "raw")
    ok(d, "one.vm.action", "poweroff", oid)
    wait_vm(d, oid, POWEROFF)
    ok(d, "one.vm.attach", oid, f"DISK=[IMAGE_ID={pers}]")
    doc = wait_vm(d, oid, POWEROFF)
    assert (vdir / "disk.2").resolve() == Path(pers_src).resolve()
    write(vdir / "disk.2", "qcow2", B)
    ok(d, "one.vm.detach", oid, 2)
    doc = wait_vm(d, oid, POWEROFF)
    assert not (vdir / "disk.2").exists()
    assert holds(pers_src, "qcow2", B)  # MVDS kept the change
    assert num(wait_image(d, pers, READY), "RUNNING_VMS") == 0
    ok(d, "one.vm.detach", oid, 1)
    wait_vm(d, oid, POWEROFF)
    assert not (vdir / "disk.1").exists()
    # a volatile disk: MKIMAGE of the system datastore's TM
    ok(d, "one.vm.attach", oid, 'DISK=[TYPE="fs", SIZE="3", FORMAT="raw"]')
    doc = wait_vm(d, oid, POWEROFF)
    assert field(doc, "USER_TEMPLATE/ERROR") is None, doc
    assert (vdir / "disk.1").stat().st_size == 3 * 1024 * 1024
    ok(d, "one.vm.detach", oid, 1)
    wait_vm(d, oid, POWEROFF)
    assert not (vdir / "disk.1").exists()
    ok(d, "one.vm.action", "terminate", oid)
    wait_vm(d, oid, DONE)
