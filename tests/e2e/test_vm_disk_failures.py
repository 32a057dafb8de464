"""VM disk operations when the TM script fails or the daemon is killed in the middle
(vms.md §7.4): a TM driver written by someone else to OpenNebula's argv contract (a
Python fixture, not our shell library) fails or holds the action a test asks for."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from lxml import etree

from tests.e2e.test_vms import wait_host, wait_vm
from tests.support.seed import (
    REPO,
    field,
    num,
    ok,
    parse,
    register,
    unique,
    wait_for,
    write_scripts,
)

pytestmark = [pytest.mark.timeout(120)]
ACTIONS = ("clone", "ln", "mvds", "cpds", "delete", "mkimage", "mkswap", "context", "mv",
           "snap_create", "snap_revert", "snap_delete", "resize")
#: one script for every action: logs its argv, then fails or waits if told so by a file
HANDMADE = """#!{python}
import json, os, sys, time
gates = {gates!r}
action = os.path.basename(sys.argv[0])
with open(os.path.join(gates, "calls.jsonl"), "a") as log:
    log.write(json.dumps([action] + sys.argv[1:]) + "\\n")
hold = os.path.join(gates, "hold." + action)
while os.path.exists(hold):
    time.sleep(0.05)
if os.path.exists(os.path.join(gates, "fail." + action)):
    sys.stderr.write("handmade " + action + " refused: disk is on fire\\n")
    sys.exit(3)
"""


@pytest.fixture
def tmd(fresh_daemon, tmp_path):
    """A daemon whose REMOTES hold the shipped drivers and the TM driver 'handmade'."""
    remotes = tmp_path / "remotes"
    gates = tmp_path / "gates"
    gates.mkdir()
    for kind, names in (("datastore", ("dummy", "fs", "common")),
                        ("tm", ("dummy", "shared", "qcow2", "common"))):
        (remotes / kind).mkdir(parents=True, exist_ok=True)
        for name in names:
            (remotes / kind / name).symlink_to(REPO / "drivers" / kind / name)
    write_scripts(remotes / "tm" / "handmade",
                  {a: HANDMADE.format(python=sys.executable, gates=str(gates))
                   for a in ACTIONS})
    conf = (f'DATASTORE_MAD = [ EXECUTABLE = "one_datastore", ARGUMENTS = "-t 15 -d dummy,fs",'
            f' REMOTES = "{remotes}", KILL_GRACE = 1 ]\n'
            'TM_MAD_CONF = [ NAME = "handmade", LN_TARGET = "NONE", CLONE_TARGET = "SYSTEM",'
            ' SHARED = "YES", ALLOW_ORPHANS = "NO" ]\n'
            'TM_MAD = [ EXECUTABLE = "one_tm", ARGUMENTS = "-d dummy,shared,qcow2,handmade" ]\n')
    d = fresh_daemon(conf)
    d.gates = gates  # type: ignore[attr-defined]
    hid = ok(d, "one.host.allocate", unique("hm"), "dummy", "dummy", -1)
    wait_host(d, hid)
    sys_ds = ok(d, "one.datastore.allocate",
                f'NAME="{unique("hsys")}"\nTYPE="SYSTEM_DS"\nTM_MAD="handmade"', -1)
    img_ds = ok(d, "one.datastore.allocate",
                f'NAME="{unique("hds")}"\nDS_MAD="dummy"\nTM_MAD="handmade"', -1)
    wait_for(lambda: num(ok(d, "one.datastore.info", img_ds), "FREE_MB") > 0)
    d.world = {"host": hid, "sys": sys_ds, "ds": img_ds}  # type: ignore[attr-defined]
    return d


def calls(d) -> list[list[str]]:
    path = d.gates / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def gate(d, kind: str, action: str) -> Path:
    path = d.gates / f"{kind}.{action}"
    path.touch()
    return path


def running_vm(d, *images: int) -> int:
    disks = "\n".join(f"DISK=[IMAGE_ID={i}]" for i in images)
    oid = ok(d, "one.vm.allocate", f'CPU="0.1"\nMEMORY="16"\n{disks}', True)
    ok(d, "one.vm.deploy", oid, d.world["host"], False, d.world["sys"], "")
    wait_vm(d, oid, 3, 3)
    return oid


def error_of(doc: str) -> str:
    return field(doc, "USER_TEMPLATE/ERROR") or ""


def test_the_lines_a_foreign_driver_gets_and_its_failures(tmd):
    d = tmd
    pers = register(d, d.world["ds"], extra='PERSISTENT="YES"\n', size=10)
    other = register(d, d.world["ds"], size=10)
    oid = running_vm(d, pers)
    hostname = field(ok(d, "one.vm.info", oid), "HISTORY_RECORDS/HISTORY/HOSTNAME")
    disk0 = f"{hostname}:{d.var}/datastores/{d.world['sys']}/{oid}/disk.0"
    # success: the argv of OpenNebula's contract
    ok(d, "one.vm.disksnapshotcreate", oid, 0, "s")
    wait_vm(d, oid, 3, 3)
    assert calls(d)[-1] == ["snap_create", disk0, "0", str(oid), str(d.world["ds"])]
    # snap_create fails: the snapshot goes, the VM is RUNNING with the script's text
    gate(d, "fail", "snap_create")
    assert ok(d, "one.vm.disksnapshotcreate", oid, 0, "t") == 1
    doc = wait_vm(d, oid, 3, 3)
    assert [s.findtext("ID") for s in parse(doc).findall("SNAPSHOTS/SNAPSHOT")] == ["0"]
    assert error_of(doc).endswith(": Error executing image transfer script: handmade "
                                  "snap_create refused: disk is on fire"), doc
    # the image keeps the list of the successful one (copy point c)
    assert [s.findtext("ID") for s in parse(ok(d, "one.image.info", pers)).findall(
        "SNAPSHOTS/SNAPSHOT")] == ["0"]
    # save-as: cpds fails -> image ERROR with the text, VM back
    gate(d, "fail", "cpds")
    new = ok(d, "one.vm.disksaveas", oid, 0, unique("bad"), "", -1)
    img = wait_for(lambda: (lambda x: x if num(x, "STATE") == 5 else None)(
        ok(d, "one.image.info", new)))
    assert "handmade cpds refused: disk is on fire" in field(img, "TEMPLATE/ERROR")
    wait_vm(d, oid, 3, 3)
    cpds = [c for c in calls(d) if c[0] == "cpds"][-1]
    assert cpds[:2] == ["cpds", disk0] and cpds[3:] == ["-1", str(oid), str(d.world["ds"])]
    assert cpds[2] == field(img, "SOURCE")
    # attach: clone fails -> the disk goes, the image is released
    gate(d, "fail", "clone")
    ok(d, "one.vm.attach", oid, f"DISK=[IMAGE_ID={other}]")
    doc = wait_vm(d, oid, 3, 3)
    assert [e.text for e in parse(doc).findall("TEMPLATE/DISK/DISK_ID")] == ["0"]
    assert "handmade clone refused" in error_of(doc)
    img = ok(d, "one.image.info", other)
    assert (num(img, "STATE"), num(img, "RUNNING_VMS")) == (1, 0)
    # detach: delete fails -> the DISK stays
    (d.gates / "fail.clone").unlink()
    ok(d, "one.vm.attach", oid, f"DISK=[IMAGE_ID={other}]")
    wait_vm(d, oid, 3, 3)
    gate(d, "fail", "delete")
    ok(d, "one.vm.detach", oid, 1)
    doc = wait_vm(d, oid, 3, 3)
    assert [e.text for e in parse(doc).findall("TEMPLATE/DISK/DISK_ID")] == ["0", "1"]
    assert num(ok(d, "one.image.info", other), "RUNNING_VMS") == 1


@pytest.mark.parametrize(("what", "how"), [("snap_create", "kill9"), ("cpds", "kill9"),
                                           ("snap_create", "stop"), ("clone", "kill9")])
def test_kill_9_or_stop_in_the_middle_then_restart(tmd, what, how):
    d = tmd
    pers = register(d, d.world["ds"], extra='PERSISTENT="YES"\n', size=10)
    oid = running_vm(d, pers)
    gate(d, "hold", what)
    other = register(d, d.world["ds"], size=10)
    if what == "snap_create":
        ok(d, "one.vm.disksnapshotcreate", oid, 0, "s")
    elif what == "clone":
        ok(d, "one.vm.attach", oid, f"DISK=[IMAGE_ID={other}]")
    else:
        new = ok(d, "one.vm.disksaveas", oid, 0, unique("k"), "", -1)
    wait_for(lambda: any(c[0] == what for c in calls(d)))
    doc = ok(d, "one.vm.info", oid)
    if what == "cpds":  # between MKFS and the end of cpds (vms.md §5.9)
        assert num(doc, "LCM_STATE") == 26
        img = ok(d, "one.image.info", new)
        assert (num(img, "STATE"), field(img, "FORMAT"), field(img, "TEMPLATE/SAVE_AS_HOT")) \
            == (4, "raw", "YES")
        disk = {c.tag: c.text for c in parse(doc).find("TEMPLATE/DISK")}
        assert {k: disk.get(k) for k in ("HOTPLUG_SAVE_AS", "HOTPLUG_SAVE_AS_ACTIVE",
                                         "HOTPLUG_SAVE_AS_SNAPSHOT_ID",
                                         "HOTPLUG_SAVE_AS_SOURCE")} == {
            "HOTPLUG_SAVE_AS": str(new), "HOTPLUG_SAVE_AS_ACTIVE": "YES",
            "HOTPLUG_SAVE_AS_SNAPSHOT_ID": "-1",
            "HOTPLUG_SAVE_AS_SOURCE": field(img, "SOURCE")}
    elif what == "clone":
        assert num(doc, "LCM_STATE") == 17
        assert num(ok(d, "one.image.info", other), "RUNNING_VMS") == 1
    else:
        assert num(doc, "LCM_STATE") == 57
        assert field(doc, "TEMPLATE/DISK/DISK_SNAPSHOT_ACTIVE") == "YES"
    if how == "kill9":
        d.kill9()
    else:
        d.stop()  # the stop kills the held script: no failure is stored before the end
    (d.gates / f"hold.{what}").unlink()
    d.start()
    doc = wait_vm(d, oid, 3, 3)
    assert "interrupted by a restart" in error_of(doc)
    if what == "snap_create":
        assert parse(doc).find("SNAPSHOTS") is None
        assert "DISK_SNAPSHOT_ACTIVE" not in doc
    elif what == "clone":  # the attach failed: the disk went, its image was released
        assert [e.text for e in parse(doc).findall("TEMPLATE/DISK/DISK_ID")] == ["0"]
        img = ok(d, "one.image.info", other)
        assert (num(img, "STATE"), num(img, "RUNNING_VMS")) == (1, 0)
    else:
        assert "HOTPLUG_SAVE_AS" not in doc
        img = ok(d, "one.image.info", new)
        assert num(img, "STATE") == 5
        assert "interrupted by a restart" in field(img, "TEMPLATE/ERROR")
    # the VM goes on: a new snapshot works
    time.sleep(0.1)
    ok(d, "one.vm.disksnapshotcreate", oid, 0, "after")
    wait_vm(d, oid, 3, 3)
    ok(d, "one.vm.action", "terminate", oid)
    wait_vm(d, oid, 6)
    assert num(ok(d, "one.image.info", pers), "STATE") == 1


def test_failed_revert_and_delete_leave_the_list_unchanged(tmd):
    d = tmd
    pers = register(d, d.world["ds"], extra='PERSISTENT="YES"\n', size=10)
    oid = running_vm(d, pers)
    for _ in range(2):
        ok(d, "one.vm.disksnapshotcreate", oid, 0, "")
        wait_vm(d, oid, 3, 3)
    ok(d, "one.vm.action", "poweroff", oid)
    before = wait_vm(d, oid, 8)
    listed = parse(before).find("SNAPSHOTS")
    gate(d, "fail", "snap_revert")
    gate(d, "fail", "snap_delete")
    ok(d, "one.vm.disksnapshotrevert", oid, 0, 0)
    doc = wait_vm(d, oid, 8)
    assert "handmade snap_revert refused" in error_of(doc)
    ok(d, "one.vm.disksnapshotdelete", oid, 0, 1)
    doc = wait_vm(d, oid, 8)
    assert "handmade snap_delete refused" in error_of(doc)
    assert etree.tostring(parse(doc).find("SNAPSHOTS")) == etree.tostring(listed)
    assert [s.findtext("ID") for s in parse(ok(d, "one.image.info", pers)).findall(
        "SNAPSHOTS/SNAPSHOT")] == ["0", "1"]
