"""one.image.delete end to end (api.md §2.3): locked images, force, the FORCE_DELETE
quirk, refusals by state, immediate removal without SOURCE, the RM round trip."""

from __future__ import annotations

import re

import pytest

from tests.support.seed import (
    CTIME,
    edit_body,
    fails,
    fault,
    info,
    num,
    ok,
    open_gate,
    register,
    section,
    template_dict,
    user,
    wait_gone,
    wait_state,
)

M = "one.image.delete"
RM_ERROR = ("Error removing image from datastore. Retry the operation or manually remove "
            "image source  and run the delete --force operation to completely delete the image")


def ds_images(daemon, ds_id: int) -> list[int]:
    return [int(x) for x in re.findall(r"<ID>(\d+)</ID>",
                                       section(ok(daemon, "one.datastore.info", ds_id), "IMAGES"))]


def test_missing_image(daemon):
    assert fails(daemon, M, 999) == ("[one.image.delete] Error getting image [999].", 1024, 999)
    assert fails(daemon, M, 999, True) == ("[one.image.delete] Error getting image [999].",
                                           1024, 999)


@pytest.mark.parametrize("force", ["absent", False, True])
def test_ready_image_goes_through_rm(daemon, ds, force):
    oid = register(daemon, ds)
    assert oid in ds_images(daemon, ds)
    args = () if force == "absent" else (force,)
    assert ok(daemon, M, oid, *args) == oid
    wait_gone(daemon, oid)
    assert oid not in ds_images(daemon, ds)
    assert fails(daemon, "one.image.info", oid) == (
        f"[one.image.info] Error getting image [{oid}].", 1024, oid)


def test_admin_force_flag_is_type_checked(daemon, ds):
    oid = register(daemon, ds)
    assert fault(daemon, M, oid, "yes") == (-501, "Parameter that is supposed to be boolean is not")
    assert num(info(daemon, oid), "STATE") == 1


def test_delete_state_is_visible_while_rm_runs(flaky, fds):
    oid = register(flaky, fds, extra='MODE="rm:gate"\n')
    assert ok(flaky, M, oid) == oid
    xml = info(flaky, oid)
    assert (num(xml, "STATE"), num(xml, "PREV_STATE")) == (7, 7)
    # a DELETE image cannot be enabled, cloned or snapshotted
    assert fails(flaky, "one.image.enable", oid, True) == (
        "[one.image.enable] Could not enable image: Image cannot be in state DELETE.", 8192, -1)
    open_gate(flaky, "rm", oid)
    wait_gone(flaky, oid)
    assert oid not in ds_images(flaky, fds)


def test_rm_failure_leaves_an_error_image(flaky, fds):
    oid = register(flaky, fds, extra='MODE="rm:fail"\n')
    ok(flaky, M, oid)
    xml = wait_state(flaky, oid, 5)
    assert re.fullmatch(rf"{CTIME} : {re.escape(RM_ERROR)}: the disk is on fire; and smoking",
                        template_dict(xml)["ERROR"])
    assert "FORCE_DELETE" not in template_dict(xml)
    # an ERROR image with a SOURCE goes through RM again; FORCE_DELETE drops it even if
    # RM fails once more
    assert ok(flaky, M, oid, True) == oid
    wait_gone(flaky, oid)


def test_locked_image_needs_force(flaky, fds):
    oid = ok(flaky, "one.image.allocate", 'NAME="copying"\nPATH="/var/tmp/c.img"\n'
             'MODE="cp:gate"', fds)
    assert num(info(flaky, oid), "STATE") == 4
    assert fails(flaky, M, oid) == (
        "[one.image.delete] Image locked, use --force flag to remove the image. Force delete "
        "may leave some files on Datastore", 8192, oid)
    assert fails(flaky, M, oid, False)[1:] == (8192, oid)
    assert "FORCE_DELETE" not in template_dict(info(flaky, oid))
    # SOURCE is still empty: the row goes at once (and the copy is cancelled)
    assert ok(flaky, M, oid, True) == oid
    assert fails(flaky, "one.image.info", oid) == (
        f"[one.image.info] Error getting image [{oid}].", 1024, oid)
    assert oid not in ds_images(flaky, fds)


def test_force_delete_is_written_before_authorization(daemon, ds):
    oid = register(daemon, ds)
    uid, session = user(daemon)
    assert fails(daemon, M, oid, True, session=session) == (
        f"[one.image.delete] User [{uid}] : Not authorized to perform MANAGE IMAGE [{oid}].",
        512, -1)
    xml = info(daemon, oid)
    assert template_dict(xml) == {"DEV_PREFIX": "sd", "FORCE_DELETE": "YES"}
    assert num(xml, "STATE") == 1
    # without force nothing is written
    other = register(daemon, ds)
    fails(daemon, M, other, session=session)
    assert "FORCE_DELETE" not in template_dict(info(daemon, other))


def test_locked_state_requires_admin_right(flaky, fds):
    uid, session = user(flaky)
    oid = ok(flaky, "one.image.allocate", 'NAME="mine-copying"\nPATH="/var/tmp/m.img"\n'
             'MODE="cp:gate"', fds, session=session)
    assert fails(flaky, M, oid, True, session=session) == (
        f"[one.image.delete] User [{uid}] : Not authorized to perform ADMIN IMAGE [{oid}].",
        512, -1)
    assert template_dict(info(flaky, oid))["FORCE_DELETE"] == "YES"
    open_gate(flaky, "cp", oid)
    wait_state(flaky, oid, 1)
    # READY again: MANAGE is enough, and RM runs despite the leftover FORCE_DELETE
    assert ok(flaky, M, oid, session=session) == oid
    wait_gone(flaky, oid)


def test_error_image_without_source_goes_at_once(flaky, fds):
    oid = ok(flaky, "one.image.allocate", 'NAME="broken"\nPATH="/var/tmp/b.img"\n'
             'MODE="cp:fail rm:gate"', fds)
    xml = wait_state(flaky, oid, 5)
    assert xml.count("<SOURCE><![CDATA[]]></SOURCE>") == 1
    assert ok(flaky, M, oid) == oid
    assert fails(flaky, "one.image.info", oid)[1:] == (1024, oid)


@pytest.mark.parametrize("state,detail", [
    (2, "There are 3 VMs using it."),
    (8, "There are 3 VMs using it."),
    (6, "There are 2 active clone operations."),
])
def test_refused_states(daemon, ds, state, detail):
    oid = register(daemon, ds)
    edit_body(daemon, oid, STATE=str(state), RUNNING_VMS="3", CLONING_OPS="2")
    assert fails(daemon, M, oid) == (f"[one.image.delete] Cannot delete image. {detail}",
                                     2048, -1)
    assert fails(daemon, M, oid, True)[0] == f"[one.image.delete] Cannot delete image. {detail}"


def test_ready_with_running_vms_is_refused(daemon, ds):
    oid = register(daemon, ds)
    edit_body(daemon, oid, RUNNING_VMS="1")
    assert fails(daemon, M, oid) == (
        "[one.image.delete] Cannot delete image. There are 1 VMs using it.", 2048, -1)


def test_datastore_gone(daemon, ds):
    oid = register(daemon, ds)
    edit_body(daemon, oid, DATASTORE_ID="555")
    assert fails(daemon, M, oid) == (
        "[one.image.delete] Cannot delete image. Datastore no longer exists cannot remove "
        "image", 2048, -1)


@pytest.mark.parametrize("state", [3, 5])
def test_disabled_and_error_images_can_be_deleted(daemon, ds, state):
    oid = register(daemon, ds)
    edit_body(daemon, oid, STATE=str(state))
    assert ok(daemon, M, oid) == oid
    wait_gone(daemon, oid)


def test_object_lock_blocks_even_oneadmin(daemon, ds):
    oid = register(daemon, ds)
    for level in (1, 2):
        ok(daemon, "one.image.lock", oid, level)
        assert fails(daemon, M, oid) == (
            f"[one.image.delete] User [0] : IMAGE is locked. [{oid}].", 512, -1)
        assert fails(daemon, M, oid, True)[0] == (
            f"[one.image.delete] User [0] : IMAGE is locked. [{oid}].")
    ok(daemon, "one.image.lock", oid, 3)
    assert ok(daemon, M, oid) == oid
    wait_gone(daemon, oid)


def test_pyone_delete(daemon, ds, one):
    oid = register(daemon, ds)
    assert one.image.delete(oid) == oid
    wait_gone(daemon, oid)
