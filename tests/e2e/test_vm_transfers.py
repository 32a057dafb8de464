"""VM disks through the transfer manager (issue 10, vms.md §7): PROLOG on deploy writes
the disks into the system datastore, EPILOG on terminate saves persistent disks into
their image (MVDS) and deletes the rest, on real files with the shipped TM drivers; the
FAILURE states of a failing, hanging or killed TM script; terminate from a failure;
one.vm.recover; kill -9 of the daemon in PROLOG and EPILOG."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import wait_for
from tests.support.seed import CTIME, fails, field, num, ok, parse, unique

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


def test_stop_undeploy_resume_keep_the_files_and_terminate_from_stopped_saves(daemon, inputs):
    d = daemon
    hid = host(d)
    sys_ds = fs_datastore(d, "shared", "SYSTEM_DS")
    img_ds = fs_datastore(d, "shared")
    pers, pers_src = image(d, img_ds, inputs["qcow2"], True)
    oid = ok(d, "one.vm.allocate", f'CPU="0.1"\nMEMORY="16"\nDISK=[IMAGE_ID="{pers}"]\n'
             'DISK=[TYPE="swap",SIZE="1"]', True)
    ok(d, "one.vm.deploy", oid, hid, False, sys_ds, "")
    wait_vm(d, oid, ACTIVE, RUNNING)
    vdir = sysdir(d, sys_ds, oid)
    write(vdir / "disk.0", "qcow2")
    swap = digest(vdir / "disk.1")
    ok(d, "one.vm.action", "stop", oid)  # SAVE_STOP, EPILOG_STOP (MV to the front-end)
    wait_vm(d, oid, STOPPED)
    assert os.readlink(vdir / "disk.0") == pers_src and digest(vdir / "disk.1") == swap
    ok(d, "one.vm.deploy", oid, hid, False, -1, "")  # PROLOG_RESUME (MV back), BOOT_STOPPED
    doc = wait_vm(d, oid, ACTIVE, RUNNING)
    assert [h.findtext("DS_ID") for h in parse(doc).findall("HISTORY_RECORDS/HISTORY")] == \
        [str(sys_ds)] * 2
    ok(d, "one.vm.action", "poweroff", oid)
    wait_vm(d, oid, POWEROFF)
    ok(d, "one.vm.action", "undeploy", oid)  # EPILOG_UNDEPLOY
    wait_vm(d, oid, UNDEPLOYED)
    assert os.readlink(vdir / "disk.0") == pers_src and digest(vdir / "disk.1") == swap
    ok(d, "one.vm.action", "terminate", oid)  # EPILOG on the front-end
    wait_vm(d, oid, DONE)
    assert not vdir.exists() and written(pers_src, "qcow2")
    assert num(ok(d, "one.image.info", pers), "STATE") == READY
    log = d.log_text()
    # one transfer per operation (oned's transfer file names: resume is a prolog, undeploy
    # an epilog_stop)
    assert [line.split("TRANSFER SUCCESS ")[1] for line in log.splitlines()
            if f"TRANSFER SUCCESS {oid} " in line] == [
        f"{oid} (prolog, 2 of 2 lines)", f"{oid} (epilog_stop, 3 of 3 lines)",
        f"{oid} (prolog, 3 of 3 lines)", f"{oid} (epilog_stop, 3 of 3 lines)",
        f"{oid} (epilog, 3 of 3 lines)"]


# ------------------------------------------------------------------ failures
#: a TM driver "bad" that runs the shared scripts unless a file mode.<action> in its
#: directory says fail (an error text on stderr, exit 1), hang (sleep), hangdir (sleep
#: when the path is a VM directory) or partial (a half-written disk.<n>.tmp, then
#: sleep: what a KILLed copy leaves)
BAD_SCRIPT = """#!/usr/bin/env bash
action=${0##*/}
dir=$(cd -- "$(dirname -- "$0")" && pwd)
mode=$(cat -- "$dir/mode.$action" 2>/dev/null || true)
case $mode in
    fail) echo "INFO: bad $action failing on purpose" >&2
          echo "bad $action: No space left on device" >&2; exit 1 ;;
    hang) exec sleep 300 ;;
    hangdir) [[ ${1##*/} == disk.* ]] || exec sleep 300 ;;
    partial) dst=${2#*:}; mkdir -p -- "${dst%/*}"; head -c 4096 /dev/zero > "$dst.tmp"
             exec sleep 300 ;;
esac
exec "$dir/../shared/$action" "$@"
"""
TM_ACTIONS = ("clone", "ln", "mvds", "cpds", "delete", "mv", "mkimage", "mkswap", "context",
              "snap_create", "snap_revert", "snap_delete", "resize")


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A daemon whose REMOTES holds the shipped drivers and the "bad" TM driver; every
    TM action times out after 3 s (TM_MAD -w 3)."""
    from tests.support.daemon import REPO, Daemon

    tmp = tmp_path_factory.mktemp("badtm")
    remotes = tmp / "remotes"
    (remotes / "tm" / "bad").mkdir(parents=True)
    (remotes / "datastore").symlink_to(REPO / "drivers" / "datastore")
    for name in ("common", "shared", "qcow2", "dummy", "local"):
        (remotes / "tm" / name).symlink_to(REPO / "drivers" / "tm" / name)
    for action in TM_ACTIONS:
        script = remotes / "tm" / "bad" / action
        script.write_text(BAD_SCRIPT)
        script.chmod(0o755)
    conf = (f'DATASTORE_MAD = [ EXECUTABLE = "one_datastore", ARGUMENTS = "-t 15 -d dummy,fs", '
            f'REMOTES = "{remotes}", KILL_GRACE = 1 ]\n'
            'TM_MAD = [ EXECUTABLE = "one_tm", ARGUMENTS = "-d dummy,shared,qcow2,local,bad '
            '-w 3" ]\n'
            'TM_MAD_CONF = [ NAME = "bad", LN_TARGET = "NONE", CLONE_TARGET = "SYSTEM", '
            'SHARED = "YES" ]\n')
    d = Daemon(tmp / "daemon", extra_config=conf).start()
    d.modes = remotes / "tm" / "bad"  # type: ignore[attr-defined]
    d.hid = host(d)  # type: ignore[attr-defined]
    d.sys_ds = fs_datastore(d, "bad", "SYSTEM_DS")  # type: ignore[attr-defined]
    d.img_ds = fs_datastore(d, "bad")  # type: ignore[attr-defined]
    yield d
    d.drop()


def mode(d, **modes: str) -> None:
    """Set the bad driver's behaviour per action (others: the shared scripts)."""
    for f in d.modes.glob("mode.*"):
        f.unlink()
    for action, how in modes.items():
        (d.modes / f"mode.{action}").write_text(how)


def two_disk_vm(d, inputs, *, deploy: bool = True) -> tuple[int, int, int, str, Path]:
    """A VM with a non-persistent raw disk 0 and a persistent qcow2 disk 1 on "bad"."""
    nonp, _ = image(d, d.img_ds, inputs["raw"], False)
    pers, pers_src = image(d, d.img_ds, inputs["qcow2"], True)
    oid = ok(d, "one.vm.allocate", f'CPU="0.1"\nMEMORY="16"\nDISK=[IMAGE_ID="{nonp}"]\n'
             f'DISK=[IMAGE_ID="{pers}"]', True)
    if deploy:
        ok(d, "one.vm.deploy", oid, d.hid, False, d.sys_ds, "")
    return oid, nonp, pers, pers_src, sysdir(d, d.sys_ds, oid)


def error_of(doc: str) -> str:
    return field(doc, "USER_TEMPLATE/ERROR") or ""


def test_failing_prolog_then_terminate_puts_the_persistent_image_in_error(bad, inputs):
    d = bad
    mode(d, ln="fail")
    oid, nonp, pers, _, vdir = two_disk_vm(d, inputs)
    doc = wait_vm(d, oid, ACTIVE, PROLOG_FAILURE)
    assert re.fullmatch(CTIME + ": Error executing image transfer script: "
                        "bad ln: No space left on device", error_of(doc)), error_of(doc)
    assert (vdir / "disk.0").is_file()  # the clone ran before the failing ln
    # images stay acquired in a failure state (vms.md §7.4)
    assert num(ok(d, "one.image.info", pers), "STATE") == USED_PERS
    ok(d, "one.vm.action", "terminate", oid)
    wait_vm(d, oid, DONE)
    assert not vdir.exists()  # the cleanup deleted what the prolog wrote
    img = ok(d, "one.image.info", pers)
    assert num(img, "STATE") == ERROR and num(img, "RUNNING_VMS") == 0
    assert num(ok(d, "one.image.info", nonp), "STATE") == READY


def test_hanging_prolog_is_killed_by_the_timeout_and_recover_retry_runs_it_again(
        bad, inputs):
    d = bad
    mode(d, clone="hang")
    started = time.monotonic()
    oid, _, pers, pers_src, vdir = two_disk_vm(d, inputs)
    doc = wait_vm(d, oid, ACTIVE, PROLOG_FAILURE, timeout=20)
    assert 3 <= time.monotonic() - started < 15
    assert re.fullmatch(CTIME + ": Error executing image transfer script: .+", error_of(doc))
    assert "time" in error_of(doc).lower(), error_of(doc)
    assert not (vdir / "disk.0").exists() and not (vdir / "disk.0.tmp").exists()
    mode(d)
    ok(d, "one.vm.recover", oid, 2)  # retry
    wait_vm(d, oid, ACTIVE, RUNNING)
    assert (vdir / "disk.0").is_file() and os.readlink(vdir / "disk.1") == pers_src
    write(vdir / "disk.1", "qcow2")
    # a failing epilog keeps everything; retry then saves and ends the VM
    mode(d, mvds="fail")
    ok(d, "one.vm.action", "terminate", oid)
    doc = wait_vm(d, oid, ACTIVE, EPILOG_FAILURE)
    assert error_of(doc).endswith(": Error executing image transfer script: "
                                  "bad mvds: No space left on device")
    assert num(ok(d, "one.image.info", pers), "STATE") == USED_PERS
    assert vdir.exists()
    mode(d)
    ok(d, "one.vm.recover", oid, 2)
    wait_vm(d, oid, DONE)
    assert not vdir.exists() and written(pers_src, "qcow2")
    assert num(ok(d, "one.image.info", pers), "STATE") == READY


def test_recover_success_failure_delete_and_refusals(bad, inputs):
    d = bad
    mode(d, clone="fail")
    oid, _, pers, _, vdir = two_disk_vm(d, inputs)
    wait_vm(d, oid, ACTIVE, PROLOG_FAILURE)
    mode(d)
    ok(d, "one.vm.recover", oid, 0)  # failure of a failure: stays
    assert num(ok(d, "one.vm.info", oid), "LCM_STATE") == PROLOG_FAILURE
    ok(d, "one.vm.recover", oid, 1)  # success: the prolog counts as done
    wait_vm(d, oid, ACTIVE, RUNNING)
    assert fails(d, "one.vm.recover", oid, 7)[:2] == (
        "[one.vm.recover] Wrong recovery operation code", 2048)
    ok(d, "one.vm.action", "poweroff", oid)
    wait_vm(d, oid, POWEROFF)
    # DispatchManager::recover / retry (oned 7.0's texts)
    assert fails(d, "one.vm.recover", oid, 1)[:2] == (
        f"[one.vm.recover] Could not perform a recover operation on VM {oid}, wrong state "
        "POWEROFF.", 2048)
    assert fails(d, "one.vm.recover", oid, 2)[:2] == (
        f"[one.vm.recover] Could not perform a retry on VM {oid}, wrong state POWEROFF.", 2048)
    # delete of a VM that is not running (DispatchManager::delete_vm): DONE when the call
    # returns, images released as at a normal end (persistent READY, not ERROR), the
    # files deleted by a cleanup transfer that runs after (nothing saved)
    ok(d, "one.vm.recover", oid, 3)
    doc = ok(d, "one.vm.info", oid)
    assert (num(doc, "STATE"), num(doc, "LCM_STATE")) == (DONE, 0)
    assert field(doc, "HISTORY_RECORDS/HISTORY[last()]/ACTION") == "19"
    wait_for(lambda: not vdir.exists())
    assert num(ok(d, "one.image.info", pers), "STATE") == READY
    # delete of a DONE VM: nothing to do, success (DispatchManager::delete_vm)
    assert ok(d, "one.vm.recover", oid, 3) == oid
    assert ok(d, "one.vm.info", oid) == doc
    assert fails(d, "one.vm.recover", 9999, 3)[:2] == (
        "[one.vm.recover] Error getting virtual machine [9999].", 1024)


@pytest.mark.parametrize("op", [1, 3])
def test_recover_while_a_prolog_hangs(bad, inputs, op):
    """success (1) or delete (3) of a VM whose prolog script hangs: the script is
    cancelled and the VM goes on from its new state at once."""
    d = bad
    mode(d, ln="hang")
    oid, _, pers, _, vdir = two_disk_vm(d, inputs)
    wait_for(lambda: (vdir / "disk.0").exists())  # the clone ran, the ln hangs
    assert num(ok(d, "one.vm.info", oid), "LCM_STATE") == 1
    started = time.monotonic()
    ok(d, "one.vm.recover", oid, op)
    if op == 1:
        wait_vm(d, oid, ACTIVE, RUNNING, timeout=2.5)  # before TM_MAD -w 3 would kill it
        assert time.monotonic() - started < 2.5
        assert not error_of(ok(d, "one.vm.info", oid))
        # the operator said the prolog succeeded; the cancelled ln made no disk.1
        assert sorted(p.name for p in vdir.iterdir()) == ["disk.0"]
        mode(d)
        ok(d, "one.vm.recover", oid, 3)
        wait_vm(d, oid, DONE)
    else:
        wait_vm(d, oid, DONE, timeout=2.5)
        assert time.monotonic() - started < 2.5
    assert num(ok(d, "one.image.info", pers), "STATE") == ERROR
    assert not vdir.exists()


def test_template_values_reach_the_drivers_only_as_argv_words(bad, inputs):
    d = bad
    mode(d)
    canary = Path("/var/tmp") / f"oned-canary-{os.getpid()}"
    for fmt, text in (
            (f"raw;touch${{IFS}}{canary}", f"Unsupported image format raw;touch${{IFS}}{canary}"),
            (f"raw $(touch {canary})", "Invalid TM argument 'raw $(touch "
                                       f"{canary})': empty or with white space")):
        oid = ok(d, "one.vm.allocate", f'CPU="0.1"\nMEMORY="16"\n'
                 f'DISK=[TYPE="fs",SIZE="1",FORMAT="{fmt}"]', True)
        ok(d, "one.vm.deploy", oid, d.hid, False, d.sys_ds, "")
        doc = wait_vm(d, oid, ACTIVE, PROLOG_FAILURE)
        assert error_of(doc).endswith(": Error executing image transfer script: " + text), \
            error_of(doc)
        assert not canary.exists()
        ok(d, "one.vm.action", "terminate", oid)
        wait_vm(d, oid, DONE)
        assert not sysdir(d, d.sys_ds, oid).exists()


# ------------------------------------------------------------------ restarts
@pytest.mark.parametrize("redo", ["works", "fails", "after a stop"])
def test_kill9_in_prolog_then_restart_redoes_it_without_leftovers(bad, inputs, redo):
    d = bad
    mode(d, clone="partial")
    oid, nonp, pers, pers_src, vdir = two_disk_vm(d, inputs)
    wait_for(lambda: (vdir / "disk.0.tmp").exists())
    if redo == "after a stop":
        d.stop()  # SIGTERM: the killed script is no PROLOG failure
    else:
        d.kill9()
    mode(d, **({"clone": "fail"} if redo == "fails" else {}))
    d.start()
    if redo == "fails":
        # the half-written copy went at start (tm.sweep_partial_files), not by the redo
        wait_vm(d, oid, ACTIVE, PROLOG_FAILURE)
        assert list(vdir.iterdir()) == []
        ok(d, "one.vm.action", "terminate", oid)
        wait_vm(d, oid, DONE)
        assert not vdir.exists()
        assert num(ok(d, "one.image.info", pers), "STATE") == ERROR
        assert num(ok(d, "one.image.info", nonp), "STATE") == READY
        return
    wait_vm(d, oid, ACTIVE, RUNNING)
    assert sorted(p.name for p in vdir.iterdir()) == ["disk.0", "disk.1"]
    assert os.readlink(vdir / "disk.1") == pers_src
    assert not (d.var / "run" / "tm" / str(oid)).exists()  # the journal was dealt with
    ok(d, "one.vm.action", "terminate", oid)
    wait_vm(d, oid, DONE)
    assert not vdir.exists()
    assert num(ok(d, "one.image.info", pers), "STATE") == READY


def test_kill9_in_epilog_then_restart_finishes_it_and_keeps_the_data(bad, inputs):
    d = bad
    mode(d)
    oid, _, pers, pers_src, vdir = two_disk_vm(d, inputs)
    wait_vm(d, oid, ACTIVE, RUNNING)
    write(vdir / "disk.1", "qcow2")
    mode(d, delete="hangdir")  # disk.0 deleted, mvds ran, the VM directory's delete hangs
    ok(d, "one.vm.action", "terminate", oid)
    wait_for(lambda: not (vdir / "disk.1").is_symlink() and not (vdir / "disk.0").exists()
             and vdir.exists(), timeout=10)
    time.sleep(0.3)  # the last DELETE is running (TM_MAD -w 3 kills it after 3 s)
    assert num(ok(d, "one.vm.info", oid), "LCM_STATE") == 11
    d.kill9()
    mode(d)
    d.start()
    wait_vm(d, oid, DONE)
    assert not vdir.exists()
    assert written(pers_src, "qcow2")
    assert num(ok(d, "one.image.info", pers), "STATE") == READY
