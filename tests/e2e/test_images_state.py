"""enable/disable, persistent and chtype end to end (api.md §2.4-§2.6, §5, §7.2-§7.3)."""

from __future__ import annotations

import pytest

from tests.support.seed import (
    edit_body,
    fails,
    fault,
    info,
    num,
    ok,
    open_gate,
    register,
    snapshot,
    snapshots,
    template_dict,
    user,
    wait_state,
)

TYPES = {"OS": 0, "CDROM": 1, "DATABLOCK": 2, "KERNEL": 3, "RAMDISK": 4, "CONTEXT": 5}


def states(daemon, oid) -> tuple[int, int]:
    xml = info(daemon, oid)
    return num(xml, "STATE"), num(xml, "PREV_STATE")


# ------------------------------------------------------------------ enable
def test_disable_enable_cycle(daemon, ds, one):
    oid = register(daemon, ds)
    assert ok(daemon, "one.image.enable", oid, False) == oid
    assert states(daemon, oid) == (3, 3)
    assert ok(daemon, "one.image.enable", oid, False) == oid  # no-op
    assert states(daemon, oid) == (3, 3)
    assert one.image.enable(oid, True) == oid
    assert states(daemon, oid) == (1, 1)
    assert ok(daemon, "one.image.enable", oid, True) == oid  # no-op
    assert states(daemon, oid) == (1, 1)


def test_enable_errors(daemon, ds):
    assert fails(daemon, "one.image.enable", 999, True) == (
        "[one.image.enable] Error getting image [999].", 1024, 999)
    oid = register(daemon, ds)
    uid, session = user(daemon)
    assert fails(daemon, "one.image.enable", oid, False, session=session) == (
        f"[one.image.enable] User [{uid}] : Not authorized to perform MANAGE IMAGE [{oid}].",
        512, -1)
    assert fault(daemon, "one.image.enable", oid, 1) == (
        -501, "Parameter that is supposed to be boolean is not")
    assert fault(daemon, "one.image.enable", oid) == (-501, "Not enough parameters")


def test_locked_image_cannot_be_enabled_or_disabled(flaky, fds):
    oid = ok(flaky, "one.image.allocate", 'NAME="lk"\nPATH="/var/tmp/lk"\nMODE="cp:gate"', fds)
    assert fails(flaky, "one.image.enable", oid, False) == (
        "[one.image.enable] Could not disable image: Image cannot be in state LOCKED.",
        8192, -1)
    assert fails(flaky, "one.image.enable", oid, True) == (
        "[one.image.enable] Could not enable image: Image cannot be in state LOCKED.",
        8192, -1)
    # a copying image may become persistent, and its type may change
    assert ok(flaky, "one.image.persistent", oid, True) == oid
    assert ok(flaky, "one.image.chtype", oid, "CDROM") == oid
    xml = info(flaky, oid)
    assert (num(xml, "STATE"), num(xml, "PREV_STATE"), num(xml, "PERSISTENT"),
            num(xml, "TYPE")) == (4, 4, 1, 1)
    open_gate(flaky, "cp", oid)
    xml = wait_state(flaky, oid, 1)
    assert (num(xml, "PERSISTENT"), num(xml, "TYPE")) == (1, 1)


def test_error_image_enable_and_disable(flaky, fds):
    a = ok(flaky, "one.image.allocate", 'NAME="err-a"\nPATH="/var/tmp/e"\nMODE="cp:fail"', fds)
    b = ok(flaky, "one.image.allocate", 'NAME="err-b"\nPATH="/var/tmp/e"\nMODE="cp:fail"', fds)
    error = template_dict(wait_state(flaky, a, 5))["ERROR"]
    wait_state(flaky, b, 5)
    ok(flaky, "one.image.enable", a, True)
    xml = info(flaky, a)
    assert (num(xml, "STATE"), num(xml, "PREV_STATE")) == (1, 1)
    assert template_dict(xml)["ERROR"] == error  # not cleared
    ok(flaky, "one.image.enable", b, False)
    assert states(flaky, b) == (3, 3)


def test_enable_error_image_with_vms_goes_back_to_used(daemon, ds):
    np = register(daemon, ds)
    pers = register(daemon, ds, extra='PERSISTENT="YES"\n')
    for oid in (np, pers):
        edit_body(daemon, oid, STATE="5", RUNNING_VMS="1")
        ok(daemon, "one.image.enable", oid, True)
    assert [num(info(daemon, i), "STATE") for i in (np, pers)] == [2, 8]
    # USED_PERS prints as USED
    assert fails(daemon, "one.image.enable", pers, False) == (
        "[one.image.enable] Could not disable image: Image cannot be in state USED.", 8192, -1)


@pytest.mark.parametrize("state,name", [(2, "USED"), (6, "CLONE"), (7, "DELETE"),
                                        (9, "LOCKED_USED"), (10, "LOCKED_USED")])
def test_enable_refused_states(daemon, ds, state, name):
    oid = register(daemon, ds)
    edit_body(daemon, oid, STATE=str(state))
    assert fails(daemon, "one.image.enable", oid, True) == (
        f"[one.image.enable] Could not enable image: Image cannot be in state {name}.",
        8192, -1)
    assert fails(daemon, "one.image.enable", oid, False) == (
        f"[one.image.enable] Could not disable image: Image cannot be in state {name}.",
        8192, -1)


# ------------------------------------------------------------------ persistent
def test_persistent_toggle(daemon, ds, one):
    oid = register(daemon, ds)
    assert ok(daemon, "one.image.persistent", oid, True) == oid
    assert num(info(daemon, oid), "PERSISTENT") == 1
    assert one.image.persistent(oid, False) == oid
    assert num(info(daemon, oid), "PERSISTENT") == 0
    ok(daemon, "one.image.enable", oid, False)
    assert ok(daemon, "one.image.persistent", oid, True) == oid  # DISABLED is fine


def test_persistent_errors(daemon, ds):
    assert fails(daemon, "one.image.persistent", 999, True) == (
        "[one.image.persistent] Error getting image [999].", 1024, 999)
    kernel = register(daemon, 2, extra='TYPE="KERNEL"\n')
    assert fails(daemon, "one.image.persistent", kernel, True) == (
        "[one.image.persistent] KERNEL, RAMDISK and CONTEXT must be non-persistent", 2048, -1)
    # an unchanged flag succeeds without any other check
    assert ok(daemon, "one.image.persistent", kernel, False) == kernel
    oid = register(daemon, ds)
    uid, session = user(daemon)
    assert fails(daemon, "one.image.persistent", oid, True, session=session) == (
        f"[one.image.persistent] User [{uid}] : Not authorized to perform MANAGE IMAGE "
        f"[{oid}].", 512, -1)


def test_persistent_with_snapshots(daemon, ds):
    oid = register(daemon, ds, extra='PERSISTENT="YES"\nTYPE="DATABLOCK"\n')
    edit_body(daemon, oid, SNAPSHOTS=snapshots(snapshot(0, active=True)))
    assert fails(daemon, "one.image.persistent", oid, False) == (
        "[one.image.persistent] Could not make image non-persistent: Image has snapshots.",
        8192, -1)
    assert ok(daemon, "one.image.persistent", oid, True) == oid


@pytest.mark.parametrize("state,name", [(2, "USED"), (6, "CLONE"), (8, "USED"),
                                        (9, "LOCKED_USED"), (10, "LOCKED_USED")])
def test_persistent_refused_states(daemon, ds, state, name):
    oid = register(daemon, ds)
    edit_body(daemon, oid, STATE=str(state))
    assert fails(daemon, "one.image.persistent", oid, True) == (
        f"[one.image.persistent] Could not make image persistent: Image cannot be in state "
        f"{name}.", 8192, -1)


@pytest.mark.parametrize("state", [0, 5, 7])
def test_persistent_allowed_states(daemon, ds, state):
    oid = register(daemon, ds)
    edit_body(daemon, oid, STATE=str(state))
    assert ok(daemon, "one.image.persistent", oid, True) == oid


def test_persistent_needs_the_datastore(daemon, ds):
    oid = register(daemon, ds)
    edit_body(daemon, oid, DATASTORE_ID="555")
    assert fails(daemon, "one.image.persistent", oid, True) == (
        "[one.image.persistent] Datastore no longer exists.", 8192, -1)


def test_lvm_datastores_cannot_change_persistency(fresh_daemon):
    daemon = fresh_daemon('DS_MAD_CONF = [ NAME = "LVM" ]\n')
    lvm = ok(daemon, "one.datastore.allocate",
             'NAME="lvm-ds"\nDS_MAD="LVM"\nTM_MAD="dummy"\nDATASTORE_CAPACITY_CHECK="NO"', -1)
    oid = register(daemon, lvm)
    assert fails(daemon, "one.image.persistent", oid, True) == (
        "[one.image.persistent] lvm datastores doesn't support change of image persistency.",
        8192, -1)
    assert ok(daemon, "one.image.persistent", oid, False) == oid


# ------------------------------------------------------------------ chtype
@pytest.mark.parametrize("start,new,expected", [
    ("OS", "DATABLOCK", 2), ("OS", "datablock", 2), ("DATABLOCK", "CDROM", 1),
    ("CDROM", "os", 0), ("OS", "", 0), ("DATABLOCK", "", 0),
])
def test_chtype_between_disk_types(daemon, ds, start, new, expected):
    oid = register(daemon, ds, extra=f'TYPE="{start}"\nPERSISTENT="YES"\n')
    before = template_dict(info(daemon, oid))
    assert ok(daemon, "one.image.chtype", oid, new) == oid
    xml = info(daemon, oid)
    assert num(xml, "TYPE") == expected
    assert (template_dict(xml), num(xml, "PERSISTENT")) == (before, 1)


@pytest.mark.parametrize("start,new,expected", [
    ("KERNEL", "RAMDISK", 4), ("RAMDISK", "context", 5), ("CONTEXT", "KERNEL", 3),
])
def test_chtype_between_file_types(daemon, start, new, expected):
    oid = register(daemon, 2, extra=f'TYPE="{start}"\n')
    assert ok(daemon, "one.image.chtype", oid, new) == oid
    assert num(info(daemon, oid), "TYPE") == expected


@pytest.mark.parametrize("start,new,ds_id", [
    ("OS", "KERNEL", None), ("DATABLOCK", "CONTEXT", None), ("CDROM", "RAMDISK", None),
    ("KERNEL", "OS", 2), ("KERNEL", "", 2), ("KERNEL", "FOO", 2), ("RAMDISK", "BACKUP", 2),
])
def test_chtype_incompatible(daemon, ds, start, new, ds_id):
    oid = register(daemon, ds if ds_id is None else ds_id, extra=f'TYPE="{start}"\n')
    assert fails(daemon, "one.image.chtype", oid, new) == (
        "[one.image.chtype] Cannot change image type to an incompatible type for the current "
        "datastore.", 2048, -1)
    assert num(info(daemon, oid), "TYPE") == TYPES[start]


@pytest.mark.parametrize("start,text", [
    ("OS", "Unknown type "), ("CDROM", "nknown type "), ("DATABLOCK", "known type "),
])
def test_chtype_unknown_type_quirk(daemon, ds, start, text):
    oid = register(daemon, ds, extra=f'TYPE="{start}"\n')
    assert fails(daemon, "one.image.chtype", oid, "FOO") == (
        f"[one.image.chtype] {text}", 8192, -1)
    assert num(info(daemon, oid), "TYPE") == TYPES[start]


def test_chtype_with_snapshots(daemon, ds):
    oid = register(daemon, ds, extra='TYPE="DATABLOCK"\nPERSISTENT="YES"\n')
    edit_body(daemon, oid, SNAPSHOTS=snapshots(snapshot(0, active=True)))
    assert fails(daemon, "one.image.chtype", oid, "CDROM") == (
        "[one.image.chtype] Image with snapshots can be only of type OS or DATABLOCK",
        8192, -1)
    assert ok(daemon, "one.image.chtype", oid, "OS") == oid


def test_chtype_errors(daemon, ds):
    assert fails(daemon, "one.image.chtype", 999, "OS") == (
        "[one.image.chtype] Error getting image [999].", 1024, 999)
    oid = register(daemon, ds)
    uid, session = user(daemon)
    assert fails(daemon, "one.image.chtype", oid, "DATABLOCK", session=session) == (
        f"[one.image.chtype] User [{uid}] : Not authorized to perform MANAGE IMAGE [{oid}].",
        512, -1)
    assert fault(daemon, "one.image.chtype", oid, 2) == (
        -501, "Parameter that is supposed to be a string is not")


def test_backup_images(daemon, ds):
    """BACKUP images only come from VM backups: one is seeded into the database."""
    oid = register(daemon, ds, extra='PERSISTENT="YES"\n')
    edit_body(daemon, oid, TYPE="6")
    assert fails(daemon, "one.image.enable", oid, False) == (
        "[one.image.enable] Could not disable image: Backup images cannot be enabled or "
        "disabled.", 8192, -1)
    assert fails(daemon, "one.image.enable", oid, True) == (
        "[one.image.enable] Could not enable image: Backup images cannot be enabled or "
        "disabled.", 8192, -1)
    assert fails(daemon, "one.image.persistent", oid, False) == (
        "[one.image.persistent] BACKUP images must be persistent", 2048, -1)
    assert ok(daemon, "one.image.persistent", oid, True) == oid
    assert fails(daemon, "one.image.chtype", oid, "OS") == (
        "[one.image.chtype] Cannot change type for BACKUP images.", 2048, -1)
    assert fails(daemon, "one.image.clone", oid, "b") == (
        "[one.image.clone] KERNEL, RAMDISK, BACKUP and CONTEXT cannot be cloned.", 2048, -1)
    assert fails(daemon, "one.image.snapshotflatten", oid, 0) == (
        "[one.image.snapshotflatten] IMAGES of type KERNEL, RAMDISK, BACKUP and CONTEXT does "
        "not have snapshots.", 2048, -1)
    # restore of a BACKUP image needs a backup datastore driver this daemon does not have
    assert fails(daemon, "one.image.restore", oid, 1, "") == (
        "[one.image.restore] Could not get datastore driver", 2048, -1)
    assert num(info(daemon, oid), "TYPE") == 6
