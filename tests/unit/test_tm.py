"""driver/tm.py: TRANSFER lines built as oned writes them (vms.md 7.2) and run through
the same DriverRunner as datastore actions, on the real reactor, with the shipped TM
drivers on real files and with small drivers written in another style."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, task

from oned_images.config import DaemonConfig, DriverSettings
from oned_images.driver import tm
from oned_images.driver.runner import DriverRunner
from oned_images.driver.tm import Interrupted, TmAction, TransferManager

ROOT = Path(__file__).resolve().parents[2]
VM = 7

pytestmark = pytest.mark.timeout(90)


def make_tm(tmp_path: Path, drivers: dict[str, dict[str, str]] | None = None,
            **kw) -> TransferManager:
    """A runner and a TransferManager; ``drivers`` (name -> action -> script text) makes
    a REMOTES of their own, otherwise the shipped drivers/ is used."""
    from twisted.internet import reactor

    remotes = ROOT / "drivers"
    if drivers is not None:
        remotes = tmp_path / "remotes"
        for name, scripts in drivers.items():
            d = remotes / "tm" / name
            d.mkdir(parents=True)
            for action, text in scripts.items():
                (d / action).write_text(text)
                (d / action).chmod(0o755)
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    config = DaemonConfig(var_location=str(var),
                          datastore_location=f"{tmp_path}/var//datastores")
    settings = DriverSettings(concurrency=15, allowed=("dummy", "fs"), timeouts={},
                              remotes=str(remotes), kill_grace=1)
    return TransferManager(DriverRunner(reactor, settings, config), config, **kw)


def sleep(seconds: float) -> defer.Deferred:
    from twisted.internet import reactor
    return task.deferLater(reactor, seconds, lambda: None)


# ----------------------------------------------------------------- lines --

def test_lines_are_oneds():
    loc = "/var/lib/one//datastores"
    disk = tm.disk_path(loc, 0, 7, 1)
    assert disk == "/var/lib/one//datastores/0/7/disk.1"   # oned's double slash, kept
    src = "/var/lib/one//datastores/1/3d1f"
    cases = [
        (tm.clone("qcow2", src, "node1", disk, 7, 1, fe="front"),
         f"CLONE qcow2 front:{src} node1:{disk} 7 1"),
        (tm.ln("shared", src, "node1", disk, 7, 1, fe="front", system_tm="ssh"),
         f"LN.ssh shared front:{src} node1:{disk} 7 1"),
        (tm.clone("ceph", "one/one-3", "node1", disk, 7, 1, fe="front"),
         f"CLONE ceph front:one/one-3 node1:{disk} 7 1"),
        (tm.clone("ceph", "pool:one-3", "node1", disk, 7, 1, fe="front"),   # ':' as is
         f"CLONE ceph pool:one-3 node1:{disk} 7 1"),
        (tm.mkimage("shared", 1024, "raw", "node1", disk, 7, 0),
         f"MKIMAGE shared 1024 raw node1:{disk} 7 0"),
        (tm.mkswap("shared", 512, "node1", disk, 7, 0), f"MKSWAP shared 512 node1:{disk} 7 0"),
        (tm.context("shared", ["/var/lib/one/vms/7/context.sh", "/f:init.sh"], "node1", disk,
                    7, 0),
         f"CONTEXT shared /var/lib/one/vms/7/context.sh /f:init.sh node1:{disk} 7 0"),
        (tm.mvds("qcow2", "node1", disk, src, 7, 1), f"MVDS qcow2 node1:{disk} {src} 7 1"),
        (tm.cpds("qcow2", "node1", disk, src, -1, 7, 1),
         f"CPDS qcow2 node1:{disk} {src} -1 7 1"),
        (tm.delete("shared", "node1", tm.system_dir(loc, 0, 7), 7, 0),
         "DELETE shared node1:/var/lib/one//datastores/0/7 7 0"),
        (tm.mv("shared", "node1", disk, "front", disk, 7, 0),
         f"MV shared node1:{disk} front:{disk} 7 0"),
        (tm.snap_create("qcow2", "node1", disk, 3, 7, 1),
         f"SNAP_CREATE qcow2 node1:{disk} 3 7 1"),
        (tm.snap_revert("qcow2", "node1", disk, 3, 7, 1),
         f"SNAP_REVERT qcow2 node1:{disk} 3 7 1"),
        (tm.snap_delete("qcow2", "node1", disk, 3, 7, 1, system_tm="ssh"),
         f"SNAP_DELETE.ssh qcow2 node1:{disk} 3 7 1"),
        (tm.resize("qcow2", "node1", disk, 2048, 7, 1), f"RESIZE qcow2 node1:{disk} 2048 7 1"),
    ]
    for action, line in cases:
        assert action.line == line
        assert TmAction.parse(line) == action
    assert cases[1][0].script_name == "ln.ssh" and cases[1][0].name == "ln"
    assert tm.clone("shared", src, "h", disk, 1, 1).args[0] == f"{tm.frontend()}:{src}"


def test_bad_words_never_make_a_line():
    for bad in ("a b", "", "x\ny", "tab\there"):
        with pytest.raises(ValueError, match="Invalid TM argument"):
            TmAction("CLONE", "shared", ("ok", bad))
    with pytest.raises(ValueError, match="Invalid TM driver name"):
        TmAction("CLONE", "../fs", ())
    with pytest.raises(ValueError, match="Invalid TM action"):
        TmAction("clone;", "shared", ())
    with pytest.raises(ValueError):
        tm.mvds("shared", "h", "/d/disk.0", "/img with space", 1, 1)


def test_script_resolution_as_one_tm(tmp_path):
    ok = "#!/bin/sh\nexit 0\n"
    tms = make_tm(tmp_path, {"t": {"clone": ok, "clone.ssh": ok, "ln": ok}, "u": {"ln": ok}})
    base = tmp_path / "remotes" / "tm"
    assert tms.script(TmAction("CLONE", "t", (), "ssh")) == (str(base / "t/clone.ssh"), "")
    assert tms.script(TmAction("LN", "t", (), "ssh")) == (str(base / "t/ln"), "")
    assert tms.script(TmAction("MKIMAGE", "t", ())) == \
        (None, f"Driver path '{base}/t/mkimage' does not exists")
    assert tms.script(TmAction("MV", "t", (), "ssh")) == \
        (None, f"Driver path '{base}/t/mv.ssh' nor '{base}/t/mv' exists")
    assert tms.script(TmAction("LN", "nope", ())) == \
        (None, "Transfer Driver 'nope' not available")
    only_t = TransferManager(tms.runner, tms.config, remotes=str(tmp_path / "remotes"),
                             allowed=["t"])
    assert only_t.script(TmAction("LN", "u", ())) == (None, "Transfer Driver 'u' not available")


# ------------------------------------------------- the shipped drivers --

@pytest_twisted.ensureDeferred
async def test_prolog_snapshot_saveas_epilog_on_real_files(tmp_path):
    if shutil.which("qemu-img") is None or shutil.which("genisoimage") is None:
        pytest.skip("qemu-utils or genisoimage missing")
    tms = make_tm(tmp_path)
    loc = tms.config.datastore_location
    images = tmp_path / "var" / "datastores" / "1"
    images.mkdir(parents=True)
    os_img, data_img = images / ("a" * 32), images / ("b" * 32)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(os_img), "4M"], check=True)
    data_img.write_bytes(b"persistent" * 1000)
    vmdir = tmp_path / "var" / "vms" / str(VM)
    vmdir.mkdir(parents=True)
    (vmdir / "context.sh").write_text("ETH0_IP='10.0.0.7'\n")
    disk = [tm.disk_path(loc, 0, VM, n) for n in range(4)]

    prolog = [tm.clone("qcow2", str(os_img), "node1", disk[0], VM, 1),
              tm.ln("shared", str(data_img), "node1", disk[1], VM, 1),
              tm.mkimage("shared", 8, "raw", "node1", disk[2], VM, 0),
              tm.context("shared", [str(vmdir / "context.sh")], "node1", disk[3], VM, 0)]
    result = await tms.transfer(VM, prolog, op="prolog", owner=3)
    assert (result.ok, result.message, result.error) == (True, "TRANSFER SUCCESS 7", None)
    assert [r.action for r in result.results] == ["clone", "ln", "mkimage", "context"]
    sysdir = Path(os.path.normpath(tm.system_dir(loc, 0, VM)))
    assert sorted(p.name for p in sysdir.iterdir()) == [f"disk.{n}" for n in range(4)]
    assert os.readlink(sysdir / "disk.1") == str(data_img)
    assert tms.interrupted() == []          # the journal went with the transfer

    (sysdir / "disk.1").write_bytes(b"written by the VM")
    assert (await tms.run(tm.snap_create("shared", "node1", disk[1], 0, VM, 1), VM)).ok
    new = images / ("c" * 32)
    saved = await tms.run(tm.cpds("shared", "node1", disk[1], str(new), 0, VM, 1), VM,
                          op="disk_saveas")
    assert saved.ok and new.read_bytes() == b"written by the VM"

    epilog = [tm.delete("qcow2", "node1", disk[0], VM, 1),
              tm.mvds("shared", "node1", disk[1], str(data_img), VM, 1),
              tm.delete("shared", "node1", disk[2], VM, 0),
              tm.delete("shared", "node1", disk[3], VM, 0),
              tm.delete("shared", "node1", tm.system_dir(loc, 0, VM), VM, 0)]
    result = await tms.transfer(VM, epilog, op="epilog")
    assert result.ok, result
    assert not sysdir.exists() and list(sysdir.parent.iterdir()) == []
    assert data_img.read_bytes() == b"written by the VM"
    assert Path(f"{data_img}.snap/0").read_bytes() == b"written by the VM"
    assert os_img.exists() and tms.runner.started == 11


@pytest_twisted.ensureDeferred
async def test_failure_texts_and_the_first_failure_stops(tmp_path):
    tms = make_tm(tmp_path)
    loc = tms.config.datastore_location
    missing = f"{loc}/1/{'9' * 32}"
    disk0 = tm.disk_path(loc, 0, VM, 0)
    lines = [tm.mkimage("shared", 4, "raw", "node1", disk0, VM, 0),
             tm.clone("shared", missing, "node1", tm.disk_path(loc, 0, VM, 1), VM, 1),
             tm.mkimage("shared", 4, "raw", "node1", tm.disk_path(loc, 0, VM, 2), VM, 0)]
    result = await tms.transfer(VM, lines, op="prolog")
    text = f"Cannot read image {os.path.normpath(missing)} (No such file or directory)"
    assert (result.ok, result.info, result.failed) == (False, text, lines[1])
    assert result.message == f"TRANSFER FAILURE 7 {text}"
    assert result.error == f"Error executing image transfer script: {text}"
    assert [r.exit_code for r in result.results] == [0, 1]    # the third never ran
    outside = await tms.run(tm.clone("shared", "/etc/passwd", "node1", disk0, VM, 1), VM)
    assert outside.info == ("Not allowed to use /etc/passwd: not an image of datastore 1 "
                            f"({tmp_path}/var/datastores/1)")
    unknown = await tms.run(tm.clone("nope", missing, "node1", disk0, VM, 1), VM)
    assert (unknown.info, unknown.results) == ("Transfer Driver 'nope' not available", [])


# ------------------------------------- a driver written in another style --

STOCK_STYLE = """#!/bin/bash
# written to OpenNebula's contract the way its stock scripts are
SRC=$1
DST=$2
VMID=$3
DSID=$4
arg_path() {{ echo "$1" | sed -e 's/^[^:]*:\\(.*\\)$/\\1/'; }}
STDIN=$(cat)
echo "$0|$#|$SRC|$(arg_path "$DST")|$VMID|$DSID|$STDIN|$(pwd)|$ONED_DATASTORE_LOCATION|\
$(ps -o pgid= -p $$ | tr -d ' ')|$$" >> {log}
echo "INFO: {name}: linked $SRC" >&2
{tail}
"""


@pytest_twisted.ensureDeferred
async def test_a_foreign_driver_runs_unchanged(tmp_path):
    log = tmp_path / "calls"
    fail = 'echo "ERROR: ln: no luck" >&2\necho "Error linking $SRC" >&2\nexit 3'
    tms = make_tm(tmp_path, {"stock": {
        "ln": STOCK_STYLE.format(log=log, name="ln", tail="exit 0"),
        "clone": STOCK_STYLE.format(log=log, name="clone", tail=fail),
        "delete": STOCK_STYLE.format(log=log, name="delete", tail="exit 0")}})
    lines = [TmAction.parse("LN stock fe:/s/1 node1:/d/0/7/disk.0 7 1"),
             TmAction.parse("CLONE.ssh stock fe:/s/2 node1:/d/0/7/disk.1 7 1"),
             TmAction.parse("DELETE stock node1:/d/0/7 7 0")]
    result = await tms.transfer(VM, lines, op="prolog")
    assert (result.ok, result.info, result.failed) == (False, "Error linking fe:/s/2", lines[1])
    calls = [line.split("|") for line in log.read_text().splitlines()]
    assert len(calls) == 2        # DELETE never ran
    script = str(tmp_path / "remotes/tm/stock/ln")
    argv0, argc, src, dst, vmid, dsid, stdin, cwd, loc, pgid, pid = calls[0]
    assert (argv0, argc, src, dst, vmid, dsid, stdin) == \
        (script, "4", "fe:/s/1", "/d/0/7/disk.0", "7", "1", "")
    assert (cwd, loc) == (str(tmp_path / "var"), tms.config.datastore_location)
    assert pgid == pid            # a process group of its own
    assert calls[1][0] == str(tmp_path / "remotes/tm/stock/clone")   # clone.ssh -> clone
    assert result.results[0].logs == [("INFO", "ln: linked fe:/s/1")]
    assert result.results[1].logs == [("INFO", "clone: linked fe:/s/2"),
                                      ("ERROR", "ln: no luck")]


# ----------------------------------------- timeouts, cancel, journal --

@pytest_twisted.ensureDeferred
async def test_a_hang_is_killed_by_the_timeout_and_leaves_no_file(tmp_path, monkeypatch):
    """The shipped shared/clone with a cp that hangs after writing part of the disk."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "cp").write_text('#!/bin/sh\nfor last; do :; done\necho partial > "$last"\n'
                             'exec sleep 60\n')
    (fake / "cp").chmod(0o755)
    monkeypatch.setenv("ONED_DRIVER_PATH", f"{fake}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    tms = make_tm(tmp_path, timeouts={"clone": 1})
    loc = tms.config.datastore_location
    images = tmp_path / "var" / "datastores" / "1"
    images.mkdir(parents=True)
    (images / ("a" * 32)).write_bytes(b"\0" * 65536)
    action = tm.clone("shared", f"{loc}/1/{'a' * 32}", "node1", tm.disk_path(loc, 0, VM, 0),
                      VM, 1)
    result = await tms.run(action, VM, op="prolog")
    script = str(ROOT / "drivers/tm/shared/clone")
    assert (result.ok, result.timed_out) == (False, True)
    assert result.info == f"Timeout executing {script} {' '.join(action.args)}"
    assert result.results[0].exit_code == 255
    sysdir = tmp_path / "var" / "datastores" / "0" / str(VM)
    assert list(sysdir.iterdir()) == []        # the TERM trap removed disk.0.tmp
    assert list((tmp_path / "var" / "run" / "drivers").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_cancel_kills_the_line_and_skips_the_rest(tmp_path):
    marker = tmp_path / "ran"
    tms = make_tm(tmp_path, {"t": {"clone": "#!/bin/sh\nexec sleep 30\n",
                                   "delete": f"#!/bin/sh\ntouch {marker}\n"}})
    lines = [TmAction("CLONE", "t", ("a:/x", "b:/y", "7", "1")),
             TmAction("DELETE", "t", ("b:/y", "7", "0"))]
    running = defer.ensureDeferred(tms.transfer(VM, lines, op="prolog"))
    await sleep(0.5)
    assert tms.cancel(VM + 1) is None
    ended = tms.cancel(VM)
    await ended
    result = await running
    assert (result.ok, result.cancelled, result.info) == (False, True, "Action cancelled")
    assert len(result.results) == 1 and not marker.exists()


@pytest_twisted.ensureDeferred
async def test_journal_survives_a_stop_for_reconciliation(tmp_path):
    tms = make_tm(tmp_path, {"t": {"clone": "#!/bin/sh\nexec sleep 30\n"}})
    lines = [TmAction("CLONE", "t", ("a:/x", "b:/y", "7", "1")),
             TmAction("CLONE", "t", ("a:/x", "b:/z", "7", "1"))]
    running = defer.ensureDeferred(tms.transfer(VM, lines, op="prolog"))
    await sleep(0.5)
    journal = tmp_path / "var" / "run" / "tm" / str(VM)
    assert journal.read_text() == "# prolog\n" + "".join(a.line + "\n" for a in lines)
    await tms.runner.stop()          # the daemon stops in the middle of PROLOG
    result = await running
    assert (result.ok, result.cancelled) == (False, True)
    assert tms.interrupted() == [Interrupted(VM, "prolog", tuple(lines))]
    tms.forget(VM)
    assert tms.interrupted() == []


@pytest_twisted.ensureDeferred
async def test_one_transfer_per_vm_at_a_time(tmp_path):
    log = tmp_path / "log"
    script = f"""#!/bin/sh
echo "start $3 $(date +%s%N)" >> {log}
sleep 0.3
echo "end $3 $(date +%s%N)" >> {log}
"""
    tms = make_tm(tmp_path, {"t": {"clone": script}})

    def lines(vm):
        return [TmAction("CLONE", "t", ("a:/x", "b:/y", str(vm), "1")) for _ in range(2)]

    runs = [tms.transfer(7, lines(7)), tms.transfer(7, lines(7)), tms.transfer(8, lines(8))]
    results = await defer.gatherResults([defer.ensureDeferred(r) for r in runs])
    assert all(r.ok for r in results)
    events = sorted((int(t), kind, vm) for kind, vm, t in
                    (line.split() for line in log.read_text().splitlines()))
    per_vm = {"7": 0, "8": 0}
    both = False
    for _, kind, vm in events:
        per_vm[vm] += 1 if kind == "start" else -1
        assert per_vm[vm] <= 1
        both = both or (per_vm["7"] == 1 and per_vm["8"] == 1)
    assert both                       # different VMs do run at the same time


def test_tm_tools_are_checked_at_start(tmp_path):
    from oned_images.driver.checks import missing_tm_tools

    remotes = tmp_path / "remotes"
    (remotes / "tm" / "x").mkdir(parents=True)
    (remotes / "tm" / "x" / "tools").write_text(
        "# comment\nsh dash scripts\nno-such-command-here some-pkg snapshots of x\n")
    settings = DriverSettings(remotes=str(remotes))
    missing = missing_tm_tools(settings, "/usr/bin:/bin")
    assert [(tm_mad, t.command, t.package, t.needed_for) for tm_mad, t in missing] == \
        [("x", "no-such-command-here", "some-pkg", "snapshots of x")]
    shipped = DriverSettings(remotes=str(ROOT / "drivers"))
    assert [t.command for _, t in missing_tm_tools(shipped, "/nonexistent")] == \
        [t.split()[0] for tm_mad in ("local", "qcow2", "shared")
         for t in (ROOT / "drivers/tm" / tm_mad / "tools").read_text().splitlines()
         if t.strip() and not t.startswith("#")]


def test_sweep_partial_files_after_a_kill(tmp_path):
    loc = tmp_path / "datastores"
    vm = loc / "0" / "7"
    (vm / "disk.1.snap").mkdir(parents=True)
    img_snap = loc / "1" / ("a" * 32 + ".snap")
    img_snap.mkdir(parents=True)
    keep = [vm / "disk.0", vm / "disk.1.snap" / "0", img_snap / "0", loc / "1" / ("a" * 32),
            vm / "notes.tmp"]
    partial = [vm / "disk.0.tmp", vm / "disk.2.tmp.conv", vm / "disk.1.snap" / "1.tmp",
               img_snap / "3.tmp"]
    for f in keep + partial:
        f.write_bytes(b"x")
    assert sorted(tm.sweep_partial_files(str(loc))) == sorted(map(str, partial))
    assert all(f.exists() for f in keep) and not any(f.exists() for f in partial)
    assert tm.sweep_partial_files(str(tmp_path / "none")) == []
