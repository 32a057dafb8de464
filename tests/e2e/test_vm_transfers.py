"""VM disks through the transfer manager (issue 10, vms.md §7): PROLOG on deploy writes
the disks into the system datastore, EPILOG on terminate saves persistent disks into
their image (MVDS) and deletes the rest, on real files with the shipped TM drivers; the
FAILURE states of a failing, hanging or killed TM script; terminate from a failure;
one.vm.recover; kill -9 of the daemon in PROLOG and EPILOG."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.seed import field, num, ok, unique

pytestmark = [pytest.mark.timeout(120)]

ACTIVE, DONE, POWEROFF, STOPPED, UNDEPLOYED = 3, 6, 8, 4, 9
RUNNING, PROLOG_FAILURE, EPILOG_FAILURE = 3, 39, 40
READY, USED, ERROR, USED_PERS = 1, 2, 5, 8
PATTERN = "0x5a"


# ------------------------------------------------------------------ helpers
def wait_vm(d, oid: int, state: int, lcm: int = 0, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        doc = ok(d, "one.vm.info", oid)
        if (num(doc, "STATE"), num(doc, "LCM_STATE")) == (state, lcm):
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)


def wait_image(d, iid: int, state: int, timeout: float = 30.0) -> str:
    return wait_for(lambda: (lambda doc: doc if num(doc, "STATE") == state else None)(
        ok(d, "one.image.info", iid)), timeout)


def host(d) -> int:
    hid = ok(d, "one.host.allocate", unique("tmh"), "dummy", "dummy", -1)
    wait_for(lambda: num(ok(d, "one.host.info", hid), "STATE") == 2)
    return hid


def fs_datastore(d, tm_mad: str, kind: str = "IMAGE_DS", extra: str = "") -> int:
    text = f'NAME="{unique(tm_mad)}"\nTM_MAD="{tm_mad}"\nTYPE="{kind}"\n' + extra
    if kind == "IMAGE_DS":
        text += 'DS_MAD="fs"\n'
    ds = ok(d, "one.datastore.allocate", text, -1)
    if kind == "IMAGE_DS":
        wait_for(lambda: num(ok(d, "one.datastore.info", ds), "FREE_MB") > 0)
    return ds


def written(path: Path | str, fmt: str) -> bool:
    """True when the first 64 KiB of the image hold PATTERN."""
    out = subprocess.run(["qemu-io", "-f", fmt, "-c", f"read -P {PATTERN} 0 64k", str(path)],
                         capture_output=True, text=True, check=False)
    return out.returncode == 0 and "Pattern verification failed" not in out.stdout


def write(path: Path | str, fmt: str) -> None:
    out = subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {PATTERN} 0 64k", str(path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "wrote 65536" in out.stdout, out


def digest(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def inputs():
    # /tmp is among the datastores' RESTRICTED_DIRS
    base = Path("/var/tmp") / f"oned-images-vmtm-{os.getpid()}"
    base.mkdir(parents=True, exist_ok=True)
    raw = base / "base.raw"
    with open(raw, "wb") as f:
        f.write(b"\x01" * 65536)
        f.truncate(4 * 1024 * 1024)
    qcow = base / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "4M"], check=True)
    yield {"raw": raw, "qcow2": qcow}
    subprocess.run(["rm", "-rf", str(base)], check=True)


def image(d, ds: int, path: Path, persistent: bool) -> tuple[int, str]:
    iid = ok(d, "one.image.allocate",
             f'NAME="{unique("vmimg")}"\nPATH="{path}"\nTYPE="OS"\n'
             f'PERSISTENT="{"YES" if persistent else "NO"}"', ds)
    doc = wait_image(d, iid, READY)
    return iid, field(doc, "SOURCE")


def sysdir(d, sys_ds: int, vm: int) -> Path:
    return d.var / "datastores" / str(sys_ds) / str(vm)


# ------------------------------------------------------------------ deploy and terminate
@pytest.mark.parametrize("tm_mad", ["shared", "qcow2"])
def test_deploy_writes_disks_and_terminate_saves_persistent_ones(daemon, inputs, tm_mad):
    d = daemon
    hid = host(d)
    sys_ds = fs_datastore(d, tm_mad, "SYSTEM_DS")
    img_ds = fs_datastore(d, tm_mad)
    pers, pers_src = image(d, img_ds, inputs["qcow2"], True)
    nonp, nonp_src = image(d, img_ds, inputs["raw"], False)
    nonp_before = digest(nonp_src)
    oid = ok(d, "one.vm.allocate",
             f'NAME="files"\nCPU="0.1"\nMEMORY="16"\n'
             f'DISK=[IMAGE_ID="{pers}"]\nDISK=[IMAGE_ID="{nonp}"]\n'
             'DISK=[TYPE="fs",SIZE="2",FORMAT="raw"]\n'
             'CONTEXT=[HOSTNAME="vm1",NOTE="it\'s $(touch /tmp/pwned) `id`"]', True)
    ok(d, "one.vm.deploy", oid, hid, False, sys_ds, "")
    doc = wait_vm(d, oid, ACTIVE, RUNNING)
    assert field(doc, "TEMPLATE/TM_MAD_SYSTEM") == tm_mad
    vdir = sysdir(d, sys_ds, oid)
    # persistent: used in place (LN, target NONE); non-persistent: a copy or an overlay
    assert os.readlink(vdir / "disk.0") == pers_src
    assert (vdir / "disk.1").is_file() and not (vdir / "disk.1").is_symlink()
    info = subprocess.run(["qemu-img", "info", "--output=json", str(vdir / "disk.1")],
                          capture_output=True, text=True, check=True).stdout
    if tm_mad == "qcow2":
        assert '"format": "qcow2"' in info and nonp_src in info  # backed by the image
    else:
        assert '"format": "raw"' in info and digest(vdir / "disk.1") == nonp_before
    # volatile: the qcow2 TM's DRIVER makes it qcow2 (vms.md §2.8)
    vol = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(vdir / "disk.2")],
                                    capture_output=True, text=True, check=True).stdout)
    assert (vol["format"], vol["virtual-size"]) == (
        "qcow2" if tm_mad == "qcow2" else "raw", 2 * 1024 * 1024)
    assert (vdir / "disk.3").is_file()  # the context ISO
    ctx = (d.var / "vms" / str(oid) / "context.sh").read_text()
    assert "NOTE='it'\\''s $(touch /tmp/pwned) `id`'\n" in ctx
    assert "HOSTNAME='vm1'\n" in ctx
    assert not Path("/tmp/pwned").exists()
    # the guest writes into both disks
    write(vdir / "disk.0", "qcow2")
    write(vdir / "disk.1", "qcow2" if tm_mad == "qcow2" else "raw")
    assert num(ok(d, "one.image.info", pers), "STATE") == USED_PERS
    assert num(ok(d, "one.image.info", nonp), "STATE") == USED
    ok(d, "one.vm.action", "terminate", oid)
    wait_vm(d, oid, DONE)
    assert not vdir.exists()
    assert not (d.var / "vms" / str(oid)).exists()
    assert written(pers_src, "qcow2")  # MVDS: the persistent image keeps the changes
    assert digest(nonp_src) == nonp_before  # the non-persistent one does not
    assert num(ok(d, "one.image.info", pers), "STATE") == READY
    assert num(ok(d, "one.image.info", nonp), "STATE") == READY
