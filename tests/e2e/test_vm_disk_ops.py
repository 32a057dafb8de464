"""VM disk operations through the TM driver (vms.md §5.8-§5.10, §7, §8) on dummy
datastores: disk snapshots (create, revert, delete, rename, the trees, the image copy),
save-as, attach/detach, their refusals and a restart in the middle of one.  The same
operations on real files are in test_vm_disk_files.py."""

from __future__ import annotations

import pytest

from tests.e2e.test_vms import history, wait_host, wait_vm
from tests.support.seed import (
    dummy_datastore,
    edit_body,
    fails,
    fault,
    field,
    num,
    ok,
    parse,
    register,
    snapshot,
    snapshots,
    unique,
    user,
    wait_for,
)

pytestmark = [pytest.mark.timeout(120)]
INTERNAL, NO_EXISTS, AUTHZ, ACTION, ALLOCATE = 8192, 1024, 512, 2048, 16384
SMALL = 'CPU="0.1"\nMEMORY="64"'


@pytest.fixture(scope="module")
def world(daemon):
    """A dummy host, a dummy system datastore and a dummy image datastore."""
    hid = ok(daemon, "one.host.allocate", unique("dh"), "dummy", "dummy", -1)
    wait_host(daemon, hid)
    sys_ds = ok(daemon, "one.datastore.allocate",
                f'NAME="{unique("sys")}"\nTYPE="SYSTEM_DS"\nTM_MAD="dummy"', -1)
    img_ds = dummy_datastore(daemon, unique("ids"))
    return {"host": hid, "sys": sys_ds, "ds": img_ds}


def vm_with(daemon, world, *disks: str, state: str = "running") -> int:
    text = f'NAME="{unique("dv")}"\n{SMALL}\n' + "\n".join(disks)
    oid = ok(daemon, "one.vm.allocate", text, True)
    ok(daemon, "one.vm.deploy", oid, world["host"], False, world["sys"], "")
    wait_vm(daemon, oid, 3, 3)
    if state == "poweroff":
        ok(daemon, "one.vm.action", "poweroff", oid)
        wait_vm(daemon, oid, 8)
    return oid


def image(daemon, world, persistent: bool = True, fmt: str = "raw") -> int:
    iid = register(daemon, world["ds"], fmt=fmt, size=10,
                   extra='PERSISTENT="YES"\n' if persistent else "")
    return iid


def snaps(doc: str, disk_id: int) -> list[dict]:
    for el in parse(doc).findall("SNAPSHOTS"):
        if el.findtext("DISK_ID") == str(disk_id):
            return [{c.tag: c.text for c in s} for s in el.findall("SNAPSHOT")]
    return []


def snap_header(doc: str, disk_id: int) -> dict:
    for el in parse(doc).findall("SNAPSHOTS"):
        if el.findtext("DISK_ID") == str(disk_id):
            return {c.tag: c.text for c in el if c.tag != "SNAPSHOT"}
    return {}


def strip_dates(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "DATE"} for s in items]


# ------------------------------------------------------------------ disk snapshots
def test_disk_snapshots_of_a_persistent_image_become_the_image_snapshots(daemon, world):
    iid = image(daemon, world)
    oid = vm_with(daemon, world, f"DISK=[IMAGE_ID={iid}]")
    assert ok(daemon, "one.vm.disksnapshotcreate", oid, 0, "s0") == 0
    doc = wait_vm(daemon, oid, 3, 3)
    assert snap_header(doc, 0) == {"ALLOW_ORPHANS": "NO", "CURRENT_BASE": "-1",
                                   "DISK_ID": "0", "NEXT_SNAPSHOT": "1"}
    assert strip_dates(snaps(doc, 0)) == [
        {"ACTIVE": "YES", "ID": "0", "NAME": "s0", "PARENT": "-1", "SIZE": "10"}]
    assert field(doc, "TEMPLATE/DISK/DISK_SNAPSHOT_TOTAL_SIZE") == "10"
    assert "DISK_SNAPSHOT_ACTIVE" not in doc
    h = history(doc)
    assert [r["SEQ"] for r in h] == ["0", "1"] and h[0]["ACTION"] == "25"
    # the image list is copied at once (LN_TARGET NONE), without DISK_ID
    img = ok(daemon, "one.image.info", iid)
    assert parse(img).findtext("SNAPSHOTS/NEXT_SNAPSHOT") == "1"
    assert parse(img).find("SNAPSHOTS/DISK_ID") is None
    assert fails(daemon, "one.image.snapshotdelete", iid, 0)[:2] == (
        "[one.image.snapshotdelete] Cannot delete snapshot in state USED", ACTION)

    assert ok(daemon, "one.vm.disksnapshotcreate", oid, 0, "") == 1
    doc = wait_vm(daemon, oid, 3, 3)
    assert strip_dates(snaps(doc, 0)) == [
        {"CHILDREN": "1", "ID": "0", "NAME": "s0", "PARENT": "-1", "SIZE": "10"},
        {"ACTIVE": "YES", "ID": "1", "PARENT": "0", "SIZE": "10"}]
    assert field(doc, "TEMPLATE/DISK/DISK_SNAPSHOT_TOTAL_SIZE") == "20"
    assert ok(daemon, "one.vm.disksnapshotrename", oid, 0, 1, "s1") == oid
    assert fails(daemon, "one.vm.disksnapshotrevert", oid, 0, 0) == (
        f"[one.vm.disksnapshotrevert] Could not revert to disk snapshot for VM {oid}, "
        "wrong state RUNNING.", ACTION, -1)
    ok(daemon, "one.vm.action", "poweroff", oid)
    wait_vm(daemon, oid, 8)
    assert ok(daemon, "one.vm.disksnapshotrevert", oid, 0, 0) == oid
    doc = wait_vm(daemon, oid, 8)
    assert [s.get("ACTIVE") for s in snaps(doc, 0)] == ["YES", None]
    assert history(doc)[-2]["ACTION"] == "41"
    ok(daemon, "one.vm.action", "terminate", oid)
    wait_vm(daemon, oid, 6)
    img = wait_for_state(daemon, iid, 1)
    listed = [{c.tag: c.text for c in s if c.tag != "DATE"}
              for s in parse(img).findall("SNAPSHOTS/SNAPSHOT")]
    assert listed == [
        {"ACTIVE": "YES", "CHILDREN": "1", "ID": "0", "NAME": "s0", "PARENT": "-1",
         "SIZE": "10"},
        {"ID": "1", "NAME": "s1", "PARENT": "0", "SIZE": "10"}]
    # the next VM gets the list back, ids go on
    oid2 = vm_with(daemon, world, f"DISK=[IMAGE_ID={iid}]")
    doc = ok(daemon, "one.vm.info", oid2)
    assert [s["ID"] for s in snaps(doc, 0)] == ["0", "1"]
    assert ok(daemon, "one.vm.disksnapshotcreate", oid2, 0, "") == 2
    wait_vm(daemon, oid2, 3, 3)
    ok(daemon, "one.vm.action", "terminate", oid2)
    wait_vm(daemon, oid2, 6)


def wait_for_state(daemon, iid: int, wanted: int) -> str:
    wait_for(lambda: num(ok(daemon, "one.image.info", iid), "STATE") == wanted)
    return ok(daemon, "one.image.info", iid)


def test_snapshot_delete_rules_and_refusals(daemon, world):
    iid = image(daemon, world)
    vol = 'DISK=[TYPE="fs", SIZE="5"]'
    oid = vm_with(daemon, world, f"DISK=[IMAGE_ID={iid}]", vol, state="poweroff")
    name = "one.vm.disksnapshotcreate"
    assert fails(daemon, name, oid, 7, "x") == (f"[{name}] VM disk does not exist", ACTION, -1)
    assert fails(daemon, name, oid, 1, "x") == (
        f"[{name}] Cannot make snapshots on volatile disks", ACTION, -1)
    assert fails(daemon, name, 9999, 0, "x")[:2] == (
        f"[{name}] Error getting virtual machine [9999].", NO_EXISTS)
    for _ in range(3):
        ok(daemon, name, oid, 0, "")
        wait_vm(daemon, oid, 8)
    doc = ok(daemon, "one.vm.info", oid)
    assert [(s["ID"], s["PARENT"], s.get("CHILDREN"), s.get("ACTIVE"))
            for s in snaps(doc, 0)] == [("0", "-1", "1", None), ("1", "0", "2", None),
                                         ("2", "1", None, "YES")]
    d = "one.vm.disksnapshotdelete"
    assert fails(daemon, d, oid, 0, 0) == (
        f"[{d}] Cannot delete snapshot 0 for persistent disk images", ACTION, -1)
    assert fails(daemon, d, oid, 0, 9) == (f"[{d}] Snapshot does not exist", ACTION, -1)
    assert fails(daemon, d, oid, 1, 0) == (f"[{d}] Snapshot does not exist", ACTION, -1)
    r = "one.vm.disksnapshotrevert"
    assert fails(daemon, r, oid, 0, 9) == (
        f"[{r}] Disk id (0) or snapshot id (9) is not valid.", ACTION, -1)
    assert fails(daemon, r, oid, 5, 0) == (f"[{r}] VM disk does not exist", ACTION, -1)
    n = "one.vm.disksnapshotrename"
    assert fails(daemon, n, oid, 1, 0, "x") == (
        f"[{n}] The VM does not have any snapshot", ACTION, -1)
    assert fails(daemon, n, oid, 0, 9, "x") == (f"[{n}] Snapshot does not exist", ACTION, -1)
    # a snapshot inside the chain: its child moves to its parent
    assert ok(daemon, d, oid, 0, 1) == oid
    doc = wait_vm(daemon, oid, 8)
    assert [(s["ID"], s["PARENT"], s.get("CHILDREN"), s.get("ACTIVE"))
            for s in snaps(doc, 0)] == [("0", "-1", "2", None), ("2", "0", None, "YES")]
    assert history(doc)[-2]["ACTION"] == "26"
    # the active snapshot's delete: its parent becomes active
    assert ok(daemon, d, oid, 0, 2) == oid
    doc = wait_vm(daemon, oid, 8)
    assert [(s["ID"], s.get("CHILDREN"), s.get("ACTIVE")) for s in snaps(doc, 0)] == [
        ("0", None, "YES")]
    assert field(doc, "TEMPLATE/DISK/DISK_SNAPSHOT_TOTAL_SIZE") == "10"
    # wrong types are faults, nothing changes
    assert fault(daemon, name, str(oid), 0, "x")[0] == -501
    assert fault(daemon, d, oid, 0)[0] == -501
    assert ok(daemon, "one.vm.info", oid) == doc
    ok(daemon, "one.vm.action", "terminate", oid)
    wait_vm(daemon, oid, 6)


def test_other_users_and_locked_vms_are_refused(daemon, world):
    iid = image(daemon, world, persistent=False)
    oid = vm_with(daemon, world, f"DISK=[IMAGE_ID={iid}]")
    _uid, session = user(daemon)
    assert fails(daemon, "one.vm.disksnapshotcreate", oid, 0, "x", session=session)[1] == AUTHZ
    assert fails(daemon, "one.vm.disksaveas", oid, 0, unique("n"), "", -1,
                 session=session)[1] == AUTHZ
    assert fails(daemon, "one.vm.attach", oid, f"DISK=[IMAGE_ID={iid}]",
                 session=session)[1] == AUTHZ
    ok(daemon, "one.vm.lock", oid, 4, False)
    assert fails(daemon, "one.vm.disksnapshotcreate", oid, 0, "x")[1] == AUTHZ
    assert fails(daemon, "one.vm.detach", oid, 0)[1] == AUTHZ
    ok(daemon, "one.vm.unlock", oid)
    before = ok(daemon, "one.vm.info", oid)
    assert "<SNAPSHOTS>" not in before
    ok(daemon, "one.vm.action", "terminate", oid)
    wait_vm(daemon, oid, 6)


# ------------------------------------------------------------------ save-as
def test_disksaveas_gives_a_ready_image(daemon, world):
    iid = image(daemon, world, persistent=False, fmt="qcow2")
    oid = vm_with(daemon, world, f"DISK=[IMAGE_ID={iid}]")
    name = unique("saved")
    new = ok(daemon, "one.vm.disksaveas", oid, 0, name, "", -1)
    img = wait_for_state(daemon, new, 1)
    assert field(img, "NAME") == name and field(img, "FORMAT") == "qcow2"
    assert num(img, "SIZE") == 10 and field(img, "SOURCE")
    t = {c.tag: c.text for c in parse(img).find("TEMPLATE")}
    assert {k: t.get(k) for k in ("SAVED_IMAGE_ID", "SAVED_DISK_ID", "SAVED_VM_ID",
                                  "SAVE_AS_HOT")} == {
        "SAVED_IMAGE_ID": str(iid), "SAVED_DISK_ID": "0", "SAVED_VM_ID": str(oid),
        "SAVE_AS_HOT": None}
    doc = wait_vm(daemon, oid, 3, 3)
    assert "HOTPLUG_SAVE_AS" not in doc and len(history(doc)) == 1
    sa = "one.vm.disksaveas"
    assert fails(daemon, sa, oid, 0, name, "", -1) == (
        f"[{sa}] Error allocating a new image. NAME is already taken by IMAGE {new}.",
        ALLOCATE, -1)
    assert fails(daemon, sa, oid, 4, unique("n"), "", -1)[:2] == (
        f"[{sa}] Cannot use DISK. DISK does not exist.", INTERNAL)
    assert fails(daemon, sa, oid, 0, unique("n"), "", 3)[:2] == (
        f"[{sa}] Cannot use DISK. Snapshot does not exist.", INTERNAL)
    assert fault(daemon, sa, oid, 0, unique("n"), "")[0] == -501
    wait_vm(daemon, oid, 3, 3)
    # of a snapshot
    ok(daemon, "one.vm.disksnapshotcreate", oid, 0, "")
    wait_vm(daemon, oid, 3, 3)
    snap_img = ok(daemon, sa, oid, 0, unique("fromsnap"), "DATABLOCK", 0)
    img = wait_for_state(daemon, snap_img, 1)
    assert num(img, "TYPE") == 2
    ok(daemon, "one.vm.action", "terminate", oid)
    wait_vm(daemon, oid, 6)
    held = ok(daemon, "one.vm.allocate", f"{SMALL}\nDISK=[IMAGE_ID={iid}]", True)
    assert fails(daemon, sa, held, 0, unique("n"), "", -1)[:2] == (
        f"[{sa}] VM has to be RUNNING, POWEROFF or SUSPENDED to save disks.", INTERNAL)


# ------------------------------------------------------------------ attach / detach
def test_attach_and_detach(daemon, world):
    iid = image(daemon, world, persistent=False)
    pers = image(daemon, world)
    oid = vm_with(daemon, world, f"DISK=[IMAGE_ID={iid}]")
    assert ok(daemon, "one.vm.attach", oid, f"DISK=[IMAGE_ID={pers}]") == oid
    doc = wait_vm(daemon, oid, 3, 3)
    disks = parse(doc).findall("TEMPLATE/DISK")
    assert [d.findtext("DISK_ID") for d in disks] == ["0", "1"]
    assert disks[1].findtext("TM_MAD_SYSTEM") == "dummy" and disks[1].findtext("TARGET") == "sdb"
    assert "ATTACH" not in [c.tag for c in disks[1]]
    assert history(doc)[0]["ACTION"] == "21"
    assert num(ok(daemon, "one.image.info", pers), "STATE") == 8
    at = "one.vm.attach"
    assert fails(daemon, at, oid, f"DISK=[IMAGE_ID={pers}]") == (
        f"[{at}] Cannot acquire image {pers}, it is persistent and already in use",
        ACTION, -1)
    assert fails(daemon, at, oid, f'DISK=[IMAGE_ID={iid}, TARGET="sda"]') == (
        f"[{at}] Target sda is already in use.", ACTION, -1)
    assert fails(daemon, at, oid, 'NIC=[NETWORK="x"]') == (
        f"[{at}] Internal error parsing DISK attribute", ACTION, -1)
    assert fails(daemon, at, oid, "DISK=[IMAGE_ID=99999]") == (
        f"[{at}] Image with ID: 99999 does not exist", ACTION, -1)
    dt = "one.vm.detach"
    assert fails(daemon, dt, oid, 7) == (
        f"[{dt}] Could not detach disk with DISK_ID 7, it does not exist.", ACTION, -1)
    assert ok(daemon, dt, oid, 1) == oid
    doc = wait_vm(daemon, oid, 3, 3)
    assert [d.findtext("DISK_ID") for d in parse(doc).findall("TEMPLATE/DISK")] == ["0"]
    img = wait_for_state(daemon, pers, 1)
    assert num(img, "RUNNING_VMS") == 0
    # POWEROFF: HOTPLUG_PROLOG_POWEROFF / HOTPLUG_EPILOG_POWEROFF and back
    ok(daemon, "one.vm.action", "poweroff", oid)
    wait_vm(daemon, oid, 8)
    ok(daemon, at, oid, f"DISK=[IMAGE_ID={iid}]")
    doc = wait_vm(daemon, oid, 8)
    assert [d.findtext("DISK_ID") for d in parse(doc).findall("TEMPLATE/DISK")] == ["0", "1"]
    ok(daemon, dt, oid, 1)
    doc = wait_vm(daemon, oid, 8)
    assert num(ok(daemon, "one.image.info", iid), "RUNNING_VMS") == 1  # disk 0 keeps it
    ok(daemon, "one.vm.action", "terminate", oid)
    wait_vm(daemon, oid, 6)
    held = ok(daemon, "one.vm.allocate", SMALL, True)
    assert fails(daemon, at, held, f"DISK=[IMAGE_ID={iid}]") == (
        f"[{at}] VM is not running in any host", ACTION, -1)


def test_wrong_states_readonly_disks_and_poweroff_saveas(daemon, world):
    iid = image(daemon, world, persistent=False)
    cd = register(daemon, world["ds"], size=1, extra='TYPE="CDROM"\n')
    held = ok(daemon, "one.vm.allocate", f"{SMALL}\nDISK=[IMAGE_ID={iid}]", True)
    c, r, d = ("one.vm.disksnapshotcreate", "one.vm.disksnapshotrevert",
               "one.vm.disksnapshotdelete")
    assert fails(daemon, c, held, 0, "x") == (
        f"[{c}] Could not create a new snapshot for VM {held}, wrong state HOLD.", ACTION, -1)
    assert fails(daemon, d, held, 0, 0) == (
        f"[{d}] Could not delete disk snapshot from VM {held}, wrong state HOLD.", ACTION, -1)
    assert fails(daemon, "one.vm.detach", held, 0) == (
        f"[one.vm.detach] Could not detach disk from VM {held}, wrong state HOLD.", ACTION, -1)
    before = ok(daemon, "one.vm.info", held)
    oid = vm_with(daemon, world, f"DISK=[IMAGE_ID={iid}]", f"DISK=[IMAGE_ID={cd}]",
                  state="poweroff")
    assert fails(daemon, c, oid, 1, "x") == (
        f"[{c}] Cannot make snapshots on readonly disks", ACTION, -1)
    assert fails(daemon, r, oid, 0, 0) == (f"[{r}] Snapshot does not exist", ACTION, -1)
    new = ok(daemon, "one.vm.disksaveas", oid, 0, unique("off"), "", -1)
    img = wait_for_state(daemon, new, 1)
    assert num(img, "SIZE") == 10
    doc = wait_vm(daemon, oid, 8)
    assert "HOTPLUG_SAVE_AS" not in doc and "<SNAPSHOTS>" not in doc
    assert ok(daemon, "one.vm.info", held) == before  # refusals wrote nothing
    ok(daemon, "one.vm.action", "terminate", oid)
    wait_vm(daemon, oid, 6)


def test_attach_brings_the_image_snapshots_and_detach_gives_them_back(daemon, world):
    iid = image(daemon, world, persistent=False)
    pers = image(daemon, world)
    edit_body(daemon, pers, SNAPSHOTS=snapshots(
        snapshot(0, children="1"), snapshot(1, parent=0, active=True, name="top")))
    oid = vm_with(daemon, world, f"DISK=[IMAGE_ID={iid}]", state="poweroff")
    ok(daemon, "one.vm.attach", oid, f"DISK=[IMAGE_ID={pers}]")
    doc = wait_vm(daemon, oid, 8)
    assert snap_header(doc, 1) == {"ALLOW_ORPHANS": "NO", "CURRENT_BASE": "-1",
                                   "DISK_ID": "1", "NEXT_SNAPSHOT": "2"}
    assert [(s["ID"], s.get("ACTIVE")) for s in snaps(doc, 1)] == [("0", None), ("1", "YES")]
    assert field(doc, "TEMPLATE/DISK[2]/DISK_SNAPSHOT_TOTAL_SIZE") == "20"
    # the ids go on from the image's NEXT_SNAPSHOT
    assert ok(daemon, "one.vm.disksnapshotcreate", oid, 1, "") == 2
    wait_vm(daemon, oid, 8)
    assert ok(daemon, "one.vm.disksnapshotrename", oid, 1, 0, "renamed") == oid
    ok(daemon, "one.vm.detach", oid, 1)
    doc = wait_vm(daemon, oid, 8)
    assert parse(doc).find("SNAPSHOTS") is None
    img = wait_for_state(daemon, pers, 1)
    assert [(s.findtext("ID"), s.findtext("NAME"), s.findtext("ACTIVE"))
            for s in parse(img).findall("SNAPSHOTS/SNAPSHOT")] == [
        ("0", "renamed", None), ("1", "top", None), ("2", None, "YES")]
    assert parse(img).findtext("SNAPSHOTS/NEXT_SNAPSHOT") == "3"
    ok(daemon, "one.vm.action", "terminate", oid)
    wait_vm(daemon, oid, 6)


@pytest.mark.parametrize(("method", "args"), [
    ("one.vm.disksnapshotcreate", (0, "0", "x")),
    ("one.vm.disksnapshotrevert", (0, 0, "0")),
    ("one.vm.disksnapshotdelete", (0, 0, 1.5)),
    ("one.vm.disksnapshotrename", (0, 0, 0, 5)),
    ("one.vm.disksaveas", (0, 0, "n", "", "-1")),
    ("one.vm.attach", (0, 7)),
    ("one.vm.detach", ("0", 0)),
    ("one.vm.detach", (0,)),
])
def test_wrong_parameter_types_are_faults(daemon, method, args):
    code, text = fault(daemon, method, *args)
    assert code == -501, text
    assert ok(daemon, "one.system.version")
