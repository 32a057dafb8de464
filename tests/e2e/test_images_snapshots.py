"""snapshotdelete / snapshotrevert / snapshotflatten end to end (api.md §2.11, §4.3,
§7.4).  Snapshots only come from VMs, so they are seeded into the stored document."""

from __future__ import annotations

import re

import pytest

from tests.support.seed import (
    CTIME,
    edit_body,
    fails,
    flaky_daemon,
    flaky_datastore,
    info,
    num,
    ok,
    open_gate,
    register,
    section,
    snapshot,
    snapshots,
    template_dict,
    user,
    wait_state,
)

DELETE, REVERT, FLATTEN = ("one.image.snapshotdelete", "one.image.snapshotrevert",
                           "one.image.snapshotflatten")
ALL = (DELETE, REVERT, FLATTEN)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One daemon with the fake driver: "ok" behaves like dummy, "gate" holds an action."""
    d = flaky_daemon(tmp_path_factory.mktemp("snap-flaky"))
    yield d
    d.drop()


@pytest.fixture(scope="module")
def ds(daemon):
    return flaky_datastore(daemon, "snap-ds")


def tree() -> str:
    """NO mode: 0 has children 1 and 2, 2 is the active one."""
    return snapshots(snapshot(0, children="1,2", name="base", size=10),
                     snapshot(1, parent=0, size=20),
                     snapshot(2, parent=0, active=True, size=30))


def seeded(daemon, ds, snaps: str | None = None, mode: str = "", kind: str = "DATABLOCK"):
    extra = f'TYPE="{kind}"\nPERSISTENT="YES"\n' + (f'MODE="{mode}"\n' if mode else "")
    oid = register(daemon, ds, size=30, extra=extra)
    edit_body(daemon, oid, SNAPSHOTS=snaps or tree())
    return oid


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("method", ALL)
def test_missing_image_and_authorization(daemon, ds, method):
    assert fails(daemon, method, 999, 0) == (f"[{method}] Error getting image [999].",
                                             1024, 999)
    oid = seeded(daemon, ds)
    uid, session = user(daemon)
    assert fails(daemon, method, oid, 0, session=session) == (
        f"[{method}] User [{uid}] : Not authorized to perform MANAGE IMAGE [{oid}].", 512, -1)


@pytest.mark.parametrize("method", ALL)
def test_datastore_must_exist(daemon, ds, method):
    oid = seeded(daemon, ds)
    edit_body(daemon, oid, DATASTORE_ID="555")
    assert fails(daemon, method, oid, 0) == (f"[{method}] Datastore no longer exists",
                                             2048, -1)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("kind,ds_id", [("CDROM", None), ("KERNEL", 2)])
def test_types_without_snapshots(daemon, ds, method, kind, ds_id):
    oid = register(daemon, ds if ds_id is None else ds_id, extra=f'TYPE="{kind}"\n')
    assert fails(daemon, method, oid, 0) == (
        f"[{method}] IMAGES of type KERNEL, RAMDISK, BACKUP and CONTEXT does not have "
        "snapshots.", 2048, -1)


@pytest.mark.parametrize("method,verb", [(DELETE, "delete snapshot"),
                                         (REVERT, "revert to snapshot"),
                                         (FLATTEN, "flatten snapshot")])
@pytest.mark.parametrize("state,name", [(3, "DISABLED"), (5, "ERROR"), (8, "USED"),
                                        (6, "CLONE")])
def test_only_ready_images(daemon, ds, method, verb, state, name):
    oid = seeded(daemon, ds)
    edit_body(daemon, oid, STATE=str(state))
    assert fails(daemon, method, oid, 1) == (f"[{method}] Cannot {verb} in state {name}",
                                             2048, -1)


@pytest.mark.parametrize("method", ALL)
def test_unknown_snapshot(daemon, ds, method):
    oid = seeded(daemon, ds)
    assert fails(daemon, method, oid, 7) == (f"[{method}] Snapshot does not exist", 2048, -1)
    plain = register(daemon, ds, extra='TYPE="OS"\n')
    assert fails(daemon, method, plain, 0) == (f"[{method}] Snapshot does not exist",
                                               2048, -1)


@pytest.mark.parametrize("mode", ["NO", "MIXED"])
def test_delete_rules_in_deny_modes(daemon, ds, mode):
    oid = seeded(daemon, ds, snapshots(snapshot(0, children="1,2"), snapshot(1, parent=0),
                                       snapshot(2, parent=0, active=True), mode=mode))
    assert fails(daemon, DELETE, oid, 2) == (f"[{DELETE}] Cannot delete the active snapshot",
                                             2048, -1)
    assert fails(daemon, DELETE, oid, 0) == (
        f"[{DELETE}] Cannot delete snapshot with children", 2048, -1)
    # revert and flatten have no such rules
    assert num(info(daemon, oid), "STATE") == 1


# ------------------------------------------------------------------ delete
def test_delete_round_trip(daemon, ds, one):
    oid = seeded(daemon, ds, mode="snap_delete:gate")
    assert ok(daemon, DELETE, oid, 1) == 1
    xml = info(daemon, oid)
    assert [num(xml, t) for t in ("STATE", "PREV_STATE", "TARGET_SNAPSHOT")] == [4, 4, 1]
    assert section(xml, "SNAPSHOTS") == tree()  # unchanged until the driver answers
    assert fails(daemon, DELETE, oid, 1) == (f"[{DELETE}] Cannot delete snapshot in state "
                                             "LOCKED", 2048, -1)
    assert fails(daemon, "one.image.delete", oid) == (
        "[one.image.delete] Image locked, use --force flag to remove the image. Force delete "
        "may leave some files on Datastore", 8192, oid)
    open_gate(daemon, "snap_delete", oid)
    xml = wait_state(daemon, oid, 1)
    assert (num(xml, "TARGET_SNAPSHOT"), num(xml, "PREV_STATE"), num(xml, "SIZE")) == (
        -1, 1, 30)
    assert section(xml, "SNAPSHOTS") == snapshots(
        snapshot(0, children="2", name="base", size=10),
        snapshot(2, parent=0, active=True, size=30), next_id=3)
    assert "ERROR" not in template_dict(xml)
    img = one.image.info(oid)
    assert [s.ID for s in img.SNAPSHOTS.SNAPSHOT] == [0, 2]


def test_delete_anything_with_orphans_allowed(daemon, ds):
    oid = seeded(daemon, ds, snapshots(snapshot(0), snapshot(1, active=True), mode="YES"))
    assert ok(daemon, DELETE, oid, 1) == 1
    xml = wait_state(daemon, oid, 1)
    assert section(xml, "SNAPSHOTS") == snapshots(snapshot(0), mode="YES", next_id=2)


def test_delete_failure_keeps_the_snapshot(daemon, ds):
    oid = seeded(daemon, ds, mode="snap_delete:fail")
    assert ok(daemon, DELETE, oid, 1) == 1
    xml = wait_state(daemon, oid, 1)
    assert re.fullmatch(rf"{CTIME} : Error removing snapshot 1 from image {oid}: the disk is "
                        "on fire; and smoking", template_dict(xml)["ERROR"])
    assert section(xml, "SNAPSHOTS") == tree()
    assert num(xml, "TARGET_SNAPSHOT") == -1


# ------------------------------------------------------------------ revert
def test_revert_in_deny_mode(daemon, ds, one):
    oid = seeded(daemon, ds, mode="snap_revert:gate")
    assert one.image.snapshotrevert(oid, 0) == 0
    assert [num(info(daemon, oid), t) for t in ("STATE", "TARGET_SNAPSHOT")] == [4, 0]
    open_gate(daemon, "snap_revert", oid)
    xml = wait_state(daemon, oid, 1)
    assert section(xml, "SNAPSHOTS") == snapshots(
        snapshot(0, children="1,2", name="base", size=10, active=True),
        snapshot(1, parent=0, size=20), snapshot(2, parent=0, size=30))
    assert (num(xml, "SIZE"), num(xml, "TARGET_SNAPSHOT")) == (10, -1)


def test_revert_in_linear_mode_drops_younger_snapshots(daemon, ds):
    oid = seeded(daemon, ds, snapshots(snapshot(0, size=5), snapshot(1, size=6),
                                       snapshot(2, size=7, active=True), mode="LINEAR"))
    assert ok(daemon, REVERT, oid, 1) == 1
    xml = wait_state(daemon, oid, 1)
    assert section(xml, "SNAPSHOTS") == snapshots(
        snapshot(0, size=5), snapshot(1, size=6, active=True), mode="LINEAR", next_id=3)
    assert num(xml, "SIZE") == 6


def test_revert_in_mixed_mode_moves_the_current_base(daemon, ds):
    oid = seeded(daemon, ds, snapshots(snapshot(0, children="1"), snapshot(1, parent=0,
                                                                           active=True),
                                       mode="MIXED"))
    assert ok(daemon, REVERT, oid, 0) == 0
    xml = wait_state(daemon, oid, 1)
    assert section(xml, "SNAPSHOTS") == snapshots(
        snapshot(0, children="1", active=True), snapshot(1, parent=0), mode="MIXED",
        current_base=0)


def test_revert_failure(daemon, ds):
    oid = seeded(daemon, ds, mode="snap_revert:silent")
    assert ok(daemon, REVERT, oid, 0) == 0
    xml = wait_state(daemon, oid, 1)
    assert re.fullmatch(rf"{CTIME} : Error reverting image {oid} to snapshot 0: exit code 4",
                        template_dict(xml)["ERROR"])
    assert (section(xml, "SNAPSHOTS"), num(xml, "SIZE")) == (tree(), 30)


# ------------------------------------------------------------------ flatten
def test_flatten_empties_the_list(daemon, ds, one):
    oid = seeded(daemon, ds, mode="snap_flatten:gate")
    assert ok(daemon, FLATTEN, oid, 2) == 2
    assert [num(info(daemon, oid), t) for t in ("STATE", "TARGET_SNAPSHOT")] == [4, 2]
    open_gate(daemon, "snap_flatten", oid)
    xml = wait_state(daemon, oid, 1)
    assert section(xml, "SNAPSHOTS") == "<SNAPSHOTS></SNAPSHOTS>"
    assert "</TEMPLATE><SNAPSHOTS></SNAPSHOTS><BACKUP_INCREMENTS>" in xml
    assert num(xml, "TARGET_SNAPSHOT") == -1
    assert one.image.info(oid).SNAPSHOTS.SNAPSHOT == []
    # with no snapshots left the image may be cloned and made non-persistent again
    new = ok(daemon, "one.image.clone", oid, "after-flatten")
    wait_state(daemon, new, 1)
    wait_state(daemon, oid, 1)
    assert ok(daemon, "one.image.persistent", oid, False) == oid
    assert fails(daemon, FLATTEN, oid, 2) == (f"[{FLATTEN}] Snapshot does not exist", 2048, -1)


def test_flatten_failure(daemon, ds):
    oid = seeded(daemon, ds, mode="snap_flatten:fail")
    assert ok(daemon, FLATTEN, oid, 0) == 0
    xml = wait_state(daemon, oid, 1)
    assert re.fullmatch(rf"{CTIME} : Error flattening image snapshot: the disk is on fire; "
                        "and smoking", template_dict(xml)["ERROR"])
    assert section(xml, "SNAPSHOTS") == tree()


def test_snapshot_ops_on_os_images(daemon, ds):
    oid = seeded(daemon, ds, kind="OS")
    assert ok(daemon, FLATTEN, oid, 1) == 1
    assert section(wait_state(daemon, oid, 1), "SNAPSHOTS") == "<SNAPSHOTS></SNAPSHOTS>"
