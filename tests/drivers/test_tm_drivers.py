"""Run the transfer-manager (TM) driver scripts on real files with OpenNebula's argv.

Each test lays out a DATASTORE_LOCATION the way oned-images does (image datastore 1,
system datastore 0, paths with oned's genuine double slash), puts real raw and qcow2
images in it and calls ``drivers/tm/<shared|qcow2|dummy>/<action>`` with the argv
one_tm.rb gives them (vms.md section 7.2).  Disk contents are compared as the guest
sees them (qemu-img convert to raw), so a qcow2 chain and a flat copy compare alike.
The image-level half of the snapshot story runs the datastore driver's fs/snap_*
scripts on what the TM left, the layout they expect (drivers.md 4.9).

Needs: bash, python3, qemu-utils, genisoimage (isoinfo), util-linux, e2fsprogs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from oned_images.driver.parse import failure_text
from tests.drivers.test_fs_driver import Driver, snap_image

ROOT = Path(__file__).resolve().parents[2]
TM_DIR = ROOT / "drivers" / "tm"
ACTIONS = ["clone", "ln", "mvds", "cpds", "delete", "mv", "mkimage", "mkswap", "context",
           "snap_create", "snap_revert", "snap_delete", "resize"]
MiB = 1024 * 1024
VM = 7

pytestmark = [pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing"),
              pytest.mark.timeout(90)]


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """The failure text the runner (and so oned's TRANSFER FAILURE) reports."""
        return failure_text(self.err, self.rc)


class Layout:
    """DATASTORE_LOCATION with image datastore 1 (the fs driver's BASE_PATH) and
    system datastore 0; ``fe``/``host`` prefixes as oned writes them."""

    def __init__(self, root: Path) -> None:
        self.fs = Driver(root)                      # the datastore driver, same tree
        self.location = f"{root}/var//datastores"    # oned's genuine double slash
        self.real = Path(os.path.normpath(self.location))
        self.images = self.fs.base
        self.images.mkdir(parents=True, exist_ok=True)
        self.system = self.real / "0"
        self.vms = root / "var" / "vms"
        self.tmpdir = root / "tmpdir"
        self.tmpdir.mkdir(exist_ok=True)

    def sysdir(self, vm: int = VM) -> str:
        return f"{self.location}/0/{vm}"

    def disk(self, n: int, vm: int = VM) -> str:
        return f"{self.sysdir(vm)}/disk.{n}"

    def disk_file(self, n: int, vm: int = VM) -> Path:
        return self.system / str(vm) / f"disk.{n}"

    def run(self, tm: str, action: str, *args, env: dict | None = None,
            timeout: int = 60) -> Run:
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C",
                   "HOME": str(self.fs.home), "TMPDIR": str(self.tmpdir),
                   "ONED_DATASTORE_LOCATION": self.location,
                   "ONED_VMS_LOCATION": str(self.vms)}
        environ.update(env or {})
        proc = subprocess.run([str(TM_DIR / tm / action), *map(str, args)],
                              capture_output=True, timeout=timeout, env=environ,
                              stdin=subprocess.DEVNULL, cwd=self.fs.root, check=False)
        res = Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        assert list(self.tmpdir.iterdir()) == [], res   # the private TMPDIR is left empty
        return res

    def ok(self, tm: str, action: str, *args, **kw) -> Run:
        res = self.run(tm, action, *args, **kw)
        assert res.rc == 0, res
        return res

    def failed(self, tm: str, action: str, *args, text: str, **kw) -> Run:
        res = self.run(tm, action, *args, **kw)
        assert res.rc == 1, res
        assert res.text.startswith(text), res
        return res

    def system_files(self) -> list[str]:
        if not self.system.exists():
            return []
        return sorted(str(p.relative_to(self.system)) for p in self.system.rglob("*"))

    def image_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.images)) for p in self.images.rglob("*"))


@pytest.fixture
def lay(tmp_path) -> Layout:
    return Layout(tmp_path)


def qemu_io(path, fmt: str, cmd: str) -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", cmd, str(path)], capture_output=True,
                   check=True)


def info(path) -> dict:
    import json
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         capture_output=True, check=True).stdout
    return json.loads(out)


def guest(path, tmp: Path) -> bytes:
    """What a guest reads from the disk at ``path`` (chains followed)."""
    dst = tmp / "guest.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(path), str(dst)],
                   capture_output=True, check=True)
    data = dst.read_bytes()
    dst.unlink()
    return data


def write(path, fmt: str, byte: int, offset: int = 0) -> None:
    qemu_io(path, fmt, f"write -P {byte:#x} {offset} 64k")


def pattern(byte: int, base: bytes, offset: int = 0) -> bytes:
    """``base`` with 64 KiB of ``byte`` at ``offset``."""
    return base[:offset] + bytes([byte]) * 65536 + base[offset + 65536:]


def make_image(lay: Layout, fmt: str, name: str = "a" * 32) -> Path:
    path = lay.images / name
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), "4M"], check=True)
    write(path, fmt, 0xA0)
    return path


def fe(path) -> str:
    return f"frontend:{path}"


def host(path) -> str:
    return f"node1:{path}"


# ------------------------------------------------------------- the tree --

def test_every_action_has_an_executable_script():
    for tm in ("shared", "qcow2", "dummy"):
        for action in ACTIONS:
            script = TM_DIR / tm / action
            assert script.is_file() and os.access(script, os.X_OK), script
    for tm in ("shared", "qcow2"):
        tools = (TM_DIR / tm / "tools").read_text()
        commands = {ln.split()[0] for ln in tools.splitlines() if ln.strip()
                    and not ln.startswith("#")}
        assert {"bash", "python3", "qemu-img", "genisoimage", "mkswap"} <= commands


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck missing")
    # the library with what it sources; the action scripts (a few lines each) alone
    res = subprocess.run(["shellcheck", "-x", "-P", "SCRIPTDIR", "tm_common.sh"],
                         cwd=TM_DIR / "common", capture_output=True, check=False)
    assert res.returncode == 0, res.stdout.decode()
    scripts = [f"{tm}/{a}" for tm in ("shared", "qcow2") for a in ACTIONS]
    res = subprocess.run(["shellcheck", "-e", "SC1091", *scripts], cwd=TM_DIR,
                         capture_output=True, check=False)
    assert res.returncode == 0, res.stdout.decode()
    res = subprocess.run(["shellcheck", *ACTIONS], cwd=TM_DIR / "dummy",
                         capture_output=True, check=False)
    assert res.returncode == 0, res.stdout.decode()


def test_dummy_does_nothing_and_succeeds(lay):
    src = make_image(lay, "raw")
    for action in ACTIONS:
        res = lay.run("dummy", action, fe(src), host(lay.disk(0)), VM, 1)
        assert (res.rc, res.out, res.err) == (0, "", ""), action
    assert lay.system_files() == []
    assert lay.image_files() == [src.name]


# ---------------------------------------------------- non-persistent disks --

@pytest.mark.parametrize("tm", ["shared", "qcow2"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_clone_write_snapshots_saveas_delete(lay, tmp_path, tm, fmt):
    src = make_image(lay, fmt)
    original = guest(src, tmp_path)
    lay.ok(tm, "clone", fe(src), host(lay.disk(0)), VM, 1)
    disk = lay.disk_file(0)
    if tm == "qcow2":   # an overlay on the image: nothing copied
        assert info(disk)["format"] == "qcow2"
        assert info(disk)["backing-filename"] == str(src)
        assert info(disk)["backing-filename-format"] == fmt
        disk_fmt = "qcow2"
    else:               # a copy
        assert not disk.is_symlink() and info(disk)["format"] == fmt
        assert "backing-filename" not in info(disk)
        disk_fmt = fmt
    assert guest(disk, tmp_path) == original

    write(disk, disk_fmt, 0xB1)                       # state A
    state_a = pattern(0xB1, original)
    lay.ok(tm, "snap_create", host(lay.disk(0)), 0, VM, 1)
    write(disk, disk_fmt, 0xB2, 65536)                # state B
    state_b = pattern(0xB2, state_a, 65536)
    lay.ok(tm, "snap_create", host(lay.disk(0)), 1, VM, 1)
    write(disk, disk_fmt, 0xB3, 131072)               # state C
    state_c = pattern(0xB3, state_b, 131072)
    assert guest(disk, tmp_path) == state_c
    snaps = lay.system / str(VM) / "disk.0.snap"
    if disk_fmt == "qcow2":   # a chain: disk.0 -> disk.0.snap/2 -> 1 -> 0 (-> image)
        assert os.readlink(disk) == f"{snaps}/2"
        assert sorted(p.name for p in snaps.iterdir()) == ["0", "1", "2"]
        assert info(snaps / "2")["backing-filename"] == f"{snaps}/1"
        assert info(snaps / "1")["backing-filename"] == f"{snaps}/0"
    else:                     # full copies
        assert sorted(p.name for p in snaps.iterdir()) == ["0", "1"]
    assert guest(snaps / "0", tmp_path) == state_a
    assert guest(snaps / "1", tmp_path) == state_b

    # save-as of the disk and of snapshot 0 into new image files
    new = lay.images / ("c" * 32)
    lay.ok(tm, "cpds", host(lay.disk(0)), new, -1, VM, 1)
    assert guest(new, tmp_path) == state_c
    assert "backing-filename" not in info(new) and info(new)["format"] == disk_fmt
    new0 = lay.images / ("d" * 32)
    lay.ok(tm, "cpds", host(lay.disk(0)), new0, 0, VM, 1)
    assert guest(new0, tmp_path) == state_a

    lay.ok(tm, "snap_revert", host(lay.disk(0)), 0, VM, 1)    # (powered off)
    assert guest(disk, tmp_path) == state_a
    lay.ok(tm, "snap_delete", host(lay.disk(0)), 1, VM, 1)
    assert guest(disk, tmp_path) == state_a
    assert sorted(p.name for p in snaps.iterdir()) == (["0", "2"] if disk_fmt == "qcow2"
                                                       else ["0"])
    lay.ok(tm, "snap_delete", host(lay.disk(0)), 0, VM, 1)
    assert guest(disk, tmp_path) == state_a
    lay.ok(tm, "snap_create", host(lay.disk(0)), 2, VM, 1)   # ids go on
    assert (snaps / "2").exists()

    assert guest(src, tmp_path) == original       # the image never changed
    lay.ok(tm, "delete", host(lay.disk(0)), VM, 1)
    assert lay.system_files() == [str(VM)]
    lay.ok(tm, "delete", host(lay.sysdir()), VM, 0)
    assert lay.system_files() == []
    assert lay.image_files() == sorted([src.name, new.name, new0.name])


# ------------------------------------------------------- persistent disks --

@pytest.mark.parametrize("tm", ["shared", "qcow2"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_persistent_snapshots_stay_with_the_image(lay, tmp_path, tm, fmt):
    """The guide's "Managing Snapshots in Persistent Images" on the files: a VM writes,
    takes two snapshots, reverts, ends (mvds, delete); the image keeps the snapshots
    where the datastore driver's snap_* scripts then work on them."""
    src = make_image(lay, fmt)
    original = guest(src, tmp_path)
    lay.ok(tm, "ln", fe(src), host(lay.disk(0)), VM, 1)
    disk = lay.disk_file(0)
    assert os.readlink(disk) == str(src)          # used in place
    write(disk, fmt, 0xC1)
    state_a = pattern(0xC1, original)
    lay.ok(tm, "snap_create", host(lay.disk(0)), 0, VM, 1)
    write(disk, fmt, 0xC2, 65536)
    state_b = pattern(0xC2, state_a, 65536)
    lay.ok(tm, "snap_create", host(lay.disk(0)), 1, VM, 1)
    write(disk, fmt, 0xC3, 131072)
    snaps = Path(f"{src}.snap")
    if fmt == "qcow2":
        assert os.readlink(snaps / "0") == str(src)
        assert os.readlink(disk) == f"{snaps}/2"
        assert sorted(p.name for p in snaps.iterdir()) == ["0", "1", "2"]
    else:
        assert sorted(p.name for p in snaps.iterdir()) == ["0", "1"]
    lay.ok(tm, "snap_revert", host(lay.disk(0)), 1, VM, 1)
    assert guest(disk, tmp_path) == state_b
    lay.ok(tm, "mvds", host(lay.disk(0)), src, VM, 1)
    assert not disk.exists() and not disk.is_symlink()
    lay.ok(tm, "delete", host(lay.sysdir()), VM, 0)
    assert lay.system_files() == []
    assert guest(snaps / "0", tmp_path) == state_a
    assert guest(snaps / "1", tmp_path) == state_b

    # the image is READY again: oneimage snapshot-revert / -flatten through fs/snap_*
    ok_fs = lay.fs
    res = snap_image(ok_fs, "snap_revert", src, 0, fmt)
    assert res.rc == 0, res
    current = snaps / "2" if fmt == "qcow2" else src
    assert guest(current, tmp_path) == state_a
    # a VM using it again sees the reverted state (qcow2: the active layer)
    lay.ok(tm, "ln", fe(src), host(lay.disk(0, vm=VM + 1)), VM + 1, 1)
    assert guest(lay.disk_file(0, vm=VM + 1), tmp_path) == state_a
    if fmt == "qcow2":   # the layer fs/snap_revert wrote got an absolute backing name
        assert info(snaps / "2")["backing-filename"] == f"{snaps}/0"
    lay.ok(tm, "delete", host(lay.disk(0, vm=VM + 1)), VM + 1, 1)
    res = snap_image(ok_fs, "snap_flatten", src, 1, fmt)
    assert res.rc == 0, res
    assert guest(src, tmp_path) == state_b
    assert lay.image_files() == [src.name]


def test_persistent_snapshot_delete_in_the_middle_of_a_chain(lay, tmp_path):
    src = make_image(lay, "qcow2")
    lay.ok("qcow2", "ln", fe(src), host(lay.disk(1)), VM, 1)
    disk = lay.disk_file(1)
    for snap in range(3):
        write(disk, "qcow2", 0xD0 + snap, snap * 65536)
        lay.ok("qcow2", "snap_create", host(lay.disk(1)), snap, VM, 1)
    state = guest(disk, tmp_path)
    snaps = Path(f"{src}.snap")
    lay.ok("qcow2", "snap_delete", host(lay.disk(1)), 1, VM, 1)   # 0 <- 1 <- 2 <- 3
    assert sorted(p.name for p in snaps.iterdir()) == ["0", "2", "3"]
    assert info(snaps / "2")["backing-filename"] == f"{snaps}/0"
    assert guest(disk, tmp_path) == state
    lay.failed("qcow2", "snap_delete", host(lay.disk(1)), 0, VM, 1,
               text="Cannot delete snapshot 0: it is the image itself")
    lay.failed("qcow2", "snap_delete", host(lay.disk(1)), 3, VM, 1,
               text="Cannot delete snapshot 3: it is the active disk state")
    lay.failed("qcow2", "snap_revert", host(lay.disk(1)), 3, VM, 1,
               text="Cannot revert to snapshot 3: it is the active disk state")
    lay.failed("qcow2", "snap_create", host(lay.disk(1)), 2, VM, 1,
               text="Snapshot 2 already exists")


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_mvds_moves_a_copied_persistent_disk_back(lay, tmp_path, fmt):
    """A persistent disk that was copied into the system datastore (a foreign TM's
    LN_TARGET SYSTEM layout) is moved back over SOURCE."""
    src = make_image(lay, fmt)
    disk = lay.disk_file(2)
    disk.parent.mkdir(parents=True)
    shutil.copy(src, disk)
    write(disk, fmt, 0xE1)
    expected = guest(disk, tmp_path)
    lay.ok("shared", "mvds", host(lay.disk(2)), src, VM, 1)
    assert guest(src, tmp_path) == expected and not disk.exists()
    lay.failed("shared", "mvds", host(lay.disk(2)), src, VM, 1,
               text=f"Disk {lay.real}/0/{VM}/disk.2 does not exist")


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_raw_copies_keep_holes_and_never_scan_the_data(lay, tmp_path):
    """Every full copy of a raw file (clone, snap_create, snap_revert, cpds, mvds of a
    copied disk) copies what the source holds: the data of a file with no holes is
    copied as it is (by the kernel: copy_file_range, or a reflink), zero blocks
    included, not read into user space and scanned for zeros as --sparse=always did;
    the holes of a sparse file stay holes."""
    src = lay.images / ("a" * 32)
    with open(src, "wb") as f:       # 1 MiB data, 1 MiB zeros: no hole
        f.write(os.urandom(MiB) + bytes(MiB))
        os.fsync(f.fileno())
    want, blocks = src.read_bytes(), allocated(src)
    assert blocks >= 2 * MiB          # (a file system that allocates as expected)

    def same(path: Path) -> None:
        assert path.read_bytes() == want
        assert allocated(path) == blocks, path

    lay.ok("shared", "clone", fe(src), host(lay.disk(0)), VM, 1)
    disk = lay.disk_file(0)
    same(disk)
    lay.ok("shared", "snap_create", host(lay.disk(0)), 0, VM, 1)
    same(disk.with_name("disk.0.snap") / "0")
    write(disk, "raw", 0xC1)
    lay.ok("shared", "snap_revert", host(lay.disk(0)), 0, VM, 1)
    same(disk)
    new = lay.images / ("c" * 32)
    lay.ok("shared", "cpds", host(lay.disk(0)), new, -1, VM, 1)
    same(new)
    lay.ok("shared", "cpds", host(lay.disk(0)), lay.images / ("d" * 32), 0, VM, 1)
    same(lay.images / ("d" * 32))
    # a persistent disk copied into the system datastore goes back over its SOURCE
    other = lay.disk_file(1)
    shutil.copy(disk, other)
    os.rename(other, other.with_name("elsewhere"))
    os.symlink(other.with_name("elsewhere"), other)
    lay.ok("shared", "mvds", host(lay.disk(1)), new, VM, 1)
    same(new)
    assert not other.exists() and not other.is_symlink()

    sparse = lay.images / ("e" * 32)   # 1 MiB data in 8 MiB
    with open(sparse, "wb") as f:
        f.seek(3 * MiB)
        f.write(os.urandom(MiB))
        f.truncate(8 * MiB)
    lay.ok("shared", "clone", fe(sparse), host(lay.disk(2)), VM, 1)
    assert lay.disk_file(2).read_bytes() == sparse.read_bytes()
    assert allocated(lay.disk_file(2)) <= allocated(sparse) < 2 * MiB


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace missing")
def test_a_copy_is_synced_before_its_rename(lay):
    """The .tmp file of a copy is fdatasync'ed before it is renamed into place, so a
    crash never leaves a published disk whose data was only in the page cache."""
    src = make_image(lay, "raw")
    trace = lay.tmpdir.parent / "trace"
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C",
               "HOME": str(lay.fs.home), "TMPDIR": str(lay.tmpdir),
               "ONED_DATASTORE_LOCATION": lay.location}
    subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e",
                    "trace=openat,fdatasync,fsync,rename,renameat,renameat2",
                    str(TM_DIR / "shared" / "clone"), fe(src), host(lay.disk(0)),
                    str(VM), "1"], env=environ, check=True, capture_output=True,
                   timeout=60)
    calls = trace.read_text().splitlines()
    tmp = f"{lay.real}/0/{VM}/disk.0.tmp"
    opened = [i for i, c in enumerate(calls) if "openat(" in c and tmp in c]
    synced = [i for i, c in enumerate(calls) if "fdatasync(" in c or "fsync(" in c]
    renamed = [i for i, c in enumerate(calls) if "rename" in c and tmp in c]
    assert opened and renamed and len(synced) == 1, calls
    assert opened[-1] < synced[0] < renamed[0], calls
    assert lay.disk_file(0).read_bytes() == src.read_bytes()


# ------------------------------------------------------- volatile, context --

@pytest.mark.parametrize("tm", ["shared", "qcow2"])
def test_mkimage_mkswap_resize(lay, tm):
    lay.ok(tm, "mkimage", 8, "raw", host(lay.disk(3)), VM, 0)
    raw = lay.disk_file(3)
    assert info(raw)["format"] == "raw" and raw.stat().st_size == 8 * MiB
    lay.ok(tm, "mkimage", 8, "qcow2", host(lay.disk(4)), VM, 0)
    assert (info(lay.disk_file(4))["format"], info(lay.disk_file(4))["virtual-size"]) == \
        ("qcow2", 8 * MiB)
    lay.ok(tm, "mkimage", 8, "raw", host(lay.disk(5)), VM, 0, env={"ONED_DISK_FS": "ext4"})
    with open(lay.disk_file(5), "rb") as f:
        f.seek(1080)
        assert f.read(2) == b"\x53\xef"            # the ext4 superblock magic
    lay.ok(tm, "mkswap", 4, host(lay.disk(6)), VM, 0)
    with open(lay.disk_file(6), "rb") as f:
        f.seek(4086)
        assert f.read(10) == b"SWAPSPACE2"
    lay.ok(tm, "resize", host(lay.disk(4)), 16, VM, 0)
    assert info(lay.disk_file(4))["virtual-size"] == 16 * MiB
    lay.ok(tm, "resize", host(lay.disk(3)), 12, VM, 0)
    assert lay.disk_file(3).stat().st_size == 12 * MiB
    lay.failed(tm, "mkimage", 0, "raw", host(lay.disk(7)), VM, 0,
               text="Invalid image size '0'")
    lay.failed(tm, "mkimage", 8, "vmdk", host(lay.disk(7)), VM, 0,
               text="Unsupported image format vmdk")
    lay.failed(tm, "mkimage", 8, "raw", host(lay.disk(7)), VM, 0,
               env={"ONED_DISK_FS": "ntfs"}, text="Unsupported file system type ntfs")
    lay.failed(tm, "mkimage", 8, "raw", host(lay.disk(7)), VM, 100,
               text=f"Not allowed to use {lay.real}/0/{VM}/disk.7: not in system datastore 100")
    assert lay.system_files() == [str(VM)] + [f"{VM}/disk.{n}" for n in range(3, 7)]


def iso_file(iso: Path, name: str) -> bytes:
    return subprocess.run(["isoinfo", "-R", "-i", str(iso), "-x", f"/{name}"],
                          capture_output=True, check=True).stdout


@pytest.mark.skipif(shutil.which("isoinfo") is None, reason="genisoimage missing")
@pytest.mark.parametrize("tm", ["shared", "qcow2"])
def test_context_iso(lay, tm):
    vmdir = lay.vms / str(VM)
    vmdir.mkdir(parents=True)
    (vmdir / "context.sh").write_text("# Context variables generated by OpenNebula\n"
                                      "ETH0_IP='10.0.0.7'\n")
    files_ds = lay.real / "2"
    files_ds.mkdir(parents=True)
    (files_ds / ("f" * 32)).write_bytes(b"#!/bin/sh\necho init\n")
    lay.ok(tm, "context", vmdir / "context.sh", f"{files_ds / ('f' * 32)}:init.sh",
           host(lay.disk(9)), VM, 0)
    iso = lay.disk_file(9)
    listing = subprocess.run(["isoinfo", "-R", "-f", "-i", str(iso)], capture_output=True,
                             check=True, text=True).stdout.split()
    assert sorted(listing) == ["/context.sh", "/init.sh"]
    assert iso_file(iso, "context.sh") == (vmdir / "context.sh").read_bytes()
    assert iso_file(iso, "init.sh") == b"#!/bin/sh\necho init\n"
    label = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True,
                           check=True, text=True).stdout
    assert "Volume id: CONTEXT" in label

    other = lay.vms / str(VM + 1)
    other.mkdir()
    (other / "context.sh").write_text("X=1\n")
    nowhere = "not an image file of a datastore nor in the VM's directory"
    other_disk = lay.system / str(VM + 1) / "disk.0"      # another VM's disk
    other_disk.parent.mkdir(parents=True)
    other_disk.write_bytes(b"their data")
    for path, why in (("/etc/passwd", nowhere), (other / "context.sh", nowhere),
                      (other_disk, nowhere),
                      (vmdir / "missing", "No such file or directory"),
                      ("relative.sh", "not an absolute path")):
        lay.failed(tm, "context", path, host(lay.disk(10)), VM, 0,
                   text=f"Not allowed to use context file {path}: {why}")
    assert not lay.disk_file(10).exists()
    # a symlink planted in the VM's directory does not open the rest of the disk
    (vmdir / "leak").symlink_to("/etc/passwd")
    lay.failed(tm, "context", vmdir / "leak", host(lay.disk(10)), VM, 0,
               text=f"Not allowed to use context file {vmdir / 'leak'}: {nowhere}")


# ---------------------------------------------------------------- failures --

@pytest.mark.parametrize("tm", ["shared", "qcow2"])
def test_failures_missing_source_and_paths_outside(lay, tmp_path, tm):
    src = make_image(lay, "raw")
    missing = lay.images / ("9" * 32)
    lay.failed(tm, "clone", fe(missing), host(lay.disk(0)), VM, 1,
               text=f"Cannot read image {lay.real}/1/{'9' * 32} (No such file or directory)")
    lay.failed(tm, "ln", fe(missing), host(lay.disk(0)), VM, 1,
               text=f"Cannot read image {lay.real}/1/{'9' * 32} (No such file or directory)")
    outside = tmp_path / "elsewhere"
    outside.write_bytes(b"x" * 1024)
    cases = [
        ("clone", fe(outside), host(lay.disk(0)), VM, 1,
         f"Not allowed to use {outside}: not an image of datastore 1"),
        ("clone", fe(src), host(lay.disk(0)), VM, 2,           # the image is in ds 1
         f"Not allowed to use {src}: not an image of datastore 2"),
        ("clone", fe(src), host(f"{lay.location}/0/{VM + 1}/disk.0"), VM, 1,
         f"Not allowed to use {lay.real}/0/{VM + 1}/disk.0: not a directory or disk of VM {VM}"),
        ("clone", fe(src), host(f"{lay.location}/0/{VM}/../{VM + 1}/disk.0"), VM, 1,
         f"Bad path argument 'node1:{lay.location}/0/{VM}/../{VM + 1}/disk.0'"),
        ("clone", fe(src), host(f"{tmp_path}/disk.0"), VM, 1,
         f"Not allowed to use {tmp_path}/disk.0: not a directory or disk of VM {VM}"),
        ("clone", fe(src), f"{lay.disk(0)} extra", VM, 1, "Bad path argument"),
        ("clone", fe(src), "nohostnopath", VM, 1, "Bad path argument 'nohostnopath'"),
        ("clone", fe(src), host(lay.disk(0)), "7;rm", 1, "Invalid VM id '7;rm'"),
        ("cpds", host(lay.disk(0)), "/etc/cron.d/x", -1, VM, 1,
         "Not allowed to use /etc/cron.d/x: not an image of datastore 1"),
        ("delete", host(lay.real), VM, 0, f"Not allowed to use {lay.real}: not a directory"),
        ("delete", host(f"{lay.location}/0"), VM, 0,
         f"Not allowed to use {lay.real}/0: not a directory"),
        ("delete", host(lay.sysdir()), VM, 1, f"Not allowed to use {lay.real}/0/{VM}: "
         "not in system datastore 1"),
        ("snap_create", host(lay.disk(0)), "../1", VM, 1, "Invalid snapshot id '../1'"),
        ("clone", fe(src), host(lay.disk(0)), VM, "Wrong number of arguments (3 given, 4 expected)"),
    ]
    for action, *args, text in cases:
        lay.failed(tm, action, *args, text=text)
    assert lay.system_files() == [] and outside.read_bytes() == b"x" * 1024
    lay.failed(tm, "clone", fe(src), host(lay.disk(0)), VM, 1,
               env={"ONED_DATASTORE_LOCATION": ""},
               text="ONED_DATASTORE_LOCATION is not set")

    # a VM directory that is a symlink out of the datastore is refused
    lay.system.mkdir(parents=True, exist_ok=True)
    escape = tmp_path / "escape"
    escape.mkdir()
    (lay.system / str(VM)).symlink_to(escape)
    lay.failed(tm, "clone", fe(src), host(lay.disk(0)), VM, 1,
               text=f"Not allowed to use {lay.real}/0/{VM}/disk.0: {lay.real}/0/{VM} "
                    f"resolves to {escape}")
    lay.failed(tm, "delete", host(lay.sysdir()), VM, 0, text="Not allowed to use")
    assert escape.exists() and list(escape.iterdir()) == []
    (lay.system / str(VM)).unlink()

    # a disk that links out of the datastores is neither read nor written
    (lay.system / str(VM)).mkdir()
    (lay.system / str(VM) / "disk.0").symlink_to(outside)
    lay.failed(tm, "snap_create", host(lay.disk(0)), 0, VM, 1, text="Not allowed to use")
    lay.failed(tm, "cpds", host(lay.disk(0)), lay.images / ("e" * 32), -1, VM, 1,
               text="Not allowed to use")
    lay.ok(tm, "delete", host(lay.disk(0)), VM, 1)     # removes the link only
    assert outside.read_bytes() == b"x" * 1024
    # snapshots that do not exist
    lay.ok(tm, "clone", fe(src), host(lay.disk(0)), VM, 1)
    for action in ("snap_revert", "snap_delete"):
        lay.failed(tm, action, host(lay.disk(0)), 4, VM, 1,
                   text="Snapshot 4 does not exist")
    lay.failed(tm, "cpds", host(lay.disk(0)), lay.images / ("e" * 32), 4, VM, 1,
               text="Snapshot 4 does not exist")
    assert not (lay.images / ("e" * 32)).exists()


def test_clone_refuses_an_image_with_a_backing_file(lay, tmp_path):
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"s" * 4096)
    evil = lay.images / ("b" * 32)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    str(secret), str(evil)], check=True)
    for tm in ("shared", "qcow2"):
        for action in ("clone", "ln"):
            lay.failed(tm, action, fe(evil), host(lay.disk(0)), VM, 1,
                       text=f"Image has a backing file ({secret}), refusing it")
    assert lay.system_files() == []


def test_mv_on_this_machine(lay):
    lay.ok("shared", "mkimage", 4, "raw", host(lay.disk(0)), VM, 0)
    lay.ok("shared", "mv", host(lay.disk(0)), f"frontend:{lay.disk(0)}", VM, 0)
    assert lay.disk_file(0).exists()
    lay.ok("shared", "mv", host(lay.sysdir()), host(f"{lay.location}/100/{VM}"), VM, 100)
    assert (lay.real / "100" / str(VM) / "disk.0").exists()
    assert lay.system_files() == []


def test_a_datastore_directory_may_be_a_symlink(lay, tmp_path):
    """An operator's datastores/0 -> /elsewhere/0 (another disk) works; a VM directory
    that is itself a link out is refused (test_failures_missing_source_and_paths_outside)."""
    src = make_image(lay, "qcow2")
    elsewhere = tmp_path / "big" / "0"
    elsewhere.mkdir(parents=True)
    lay.real.joinpath("0").symlink_to(elsewhere)
    lay.ok("qcow2", "clone", fe(src), host(lay.disk(0)), VM, 1)
    lay.ok("qcow2", "snap_create", host(lay.disk(0)), 0, VM, 1)
    lay.ok("qcow2", "cpds", host(lay.disk(0)), lay.images / ("c" * 32), 0, VM, 1)
    assert sorted(p.name for p in (elsewhere / str(VM)).iterdir()) == ["disk.0", "disk.0.snap"]
    lay.ok("qcow2", "delete", host(lay.sysdir()), VM, 0)
    assert list(elsewhere.iterdir()) == []


# ------------------------------------------------------- kernel and initrd --

@pytest.mark.parametrize("tm", ["shared", "qcow2"])
def test_clone_of_a_kernel_and_an_initrd_is_a_plain_copy(lay, tm):
    """The PROLOG's ``CLONE <tm> fe:SOURCE host:<sysdir>/kernel|initrd vmid dsid`` lines
    (OS/KERNEL_DS, INITRD_DS): a byte copy whatever the TM (a qcow2 overlay would not
    boot); clone only, and only those two names."""
    kernel, initrd = lay.images / ("k" * 32), lay.images / ("r" * 32)
    kernel.write_bytes(b"\x7fELF kernel" * 3000)
    initrd.write_bytes(b"\x1f\x8b initrd" * 3000)
    lay.ok(tm, "clone", fe(kernel), host(f"{lay.sysdir()}/kernel"), VM, 1)
    lay.ok(tm, "clone", fe(initrd), host(f"{lay.sysdir()}/initrd"), VM, 1)
    assert lay.system_files() == [str(VM), f"{VM}/initrd", f"{VM}/kernel"]
    vmdir = lay.system / str(VM)
    assert (vmdir / "kernel").read_bytes() == kernel.read_bytes()
    assert (vmdir / "initrd").read_bytes() == initrd.read_bytes()
    assert not (vmdir / "kernel").is_symlink()
    lay.failed(tm, "ln", fe(kernel), host(f"{lay.sysdir()}/kernel"), VM, 1,
               text=f"Not allowed to use {lay.real}/0/{VM}/kernel: not a disk (<dir>/disk.<n>)")
    lay.failed(tm, "clone", fe(kernel), host(lay.sysdir()), VM, 1,
               text=f"Not allowed to use {lay.real}/0/{VM}: not a disk (<dir>/disk.<n>) nor "
                    "<dir>/kernel|initrd")
    lay.failed(tm, "clone", fe(kernel), host(f"{lay.sysdir()}/kernel.1"), VM, 1,
               text=f"Not allowed to use {lay.real}/0/{VM}/kernel.1: not a directory or disk "
                    f"of VM {VM}")
    lay.ok(tm, "delete", host(lay.sysdir()), VM, 0)
    assert lay.system_files() == []
