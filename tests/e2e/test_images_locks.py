"""one.image.lock / unlock end to end (api.md §2.13, §5.4): levels, test mode, owners,
what each level blocks for oneadmin and for users, and the lock dropped by a state
change."""

from __future__ import annotations

import time

import pytest

from tests.support.seed import (
    edit_body,
    fails,
    field,
    info,
    num,
    ok,
    open_gate,
    parse,
    pool,
    register,
    section,
    snapshot,
    snapshots,
    unique,
    user,
    wait_gone,
    wait_state,
)


def lock_of(daemon, oid) -> dict | None:
    el = parse(info(daemon, oid)).find("LOCK")
    return None if el is None else {c.tag: int(c.text) for c in el}


@pytest.mark.parametrize("level,stored", [(1, 1), (2, 2), (3, 3), (4, 1)])
def test_levels(daemon, ds, level, stored):
    oid = register(daemon, ds)
    before = int(time.time())
    assert ok(daemon, "one.image.lock", oid, level) == oid
    lock = lock_of(daemon, oid)
    assert (lock["LOCKED"], lock["OWNER"]) == (stored, 0)
    assert before <= lock["TIME"] <= int(time.time())
    assert 0 <= lock["REQ_ID"] <= 9999
    xml = info(daemon, oid)
    # LOCK sits between NAME and PERMISSIONS
    assert f"</NAME>{section(xml, 'LOCK')}<PERMISSIONS>" in xml


@pytest.mark.parametrize("level", [0, 5, -1])
def test_wrong_level(daemon, ds, level):
    oid = register(daemon, ds)
    assert fails(daemon, "one.image.lock", oid, level) == (
        "[one.image.lock] Wrong lock level specified", 2048, -1)
    assert lock_of(daemon, oid) is None


def test_missing_image(daemon):
    assert fails(daemon, "one.image.lock", 999, 1) == (
        "[one.image.lock] Error getting image [999].", 1024, 999)
    assert fails(daemon, "one.image.unlock", 999) == (
        "[one.image.unlock] Error getting image [999].", 1024, 999)


def test_test_mode_returns_the_lock_time(daemon, ds, one):
    oid = register(daemon, ds)
    # unlocked: the lock is simply taken
    assert ok(daemon, "one.image.lock", oid, 2, True) == oid
    lock = lock_of(daemon, oid)
    message, code, resp_id = fails(daemon, "one.image.lock", oid, 3, True)
    assert (message, code, resp_id) == (f"[one.image.lock] {lock['TIME']}", 2048, -1)
    assert int(message.split(" ")[1]) == lock["TIME"]  # what the Ruby helper parses
    assert lock_of(daemon, oid) == lock
    # without test, the owner (or an admin) overwrites the lock
    assert one.image.lock(oid, 3, False) == oid
    assert lock_of(daemon, oid)["LOCKED"] == 3


def test_unlock(daemon, ds, one):
    oid = register(daemon, ds)
    ok(daemon, "one.image.lock", oid, 1)
    assert ok(daemon, "one.image.unlock", oid) == oid
    assert lock_of(daemon, oid) is None
    assert "<LOCK>" not in info(daemon, oid)
    # admin unlocking an unlocked image: success
    assert one.image.unlock(oid) == oid


def test_lock_owners(daemon, ds):
    a_uid, a = user(daemon)
    b_uid, b = user(daemon)
    oid = ok(daemon, "one.image.allocate", 'NAME="shared"\nTYPE="DATABLOCK"\nSIZE="1"', ds,
             session=a)
    wait_state(daemon, oid, 1)  # the end of the MKFS would drop the lock
    ok(daemon, "one.image.chmod", oid, -1, -1, -1, 1, 1, -1, -1, -1, -1, session=a)
    # a user unlocking an unlocked image gets the "another user" error (QUIRK)
    assert fails(daemon, "one.image.unlock", oid, session=b) == (
        "[one.image.unlock] Cannot unlock: Lock is owned by another user", 2048, -1)
    ok(daemon, "one.image.lock", oid, 1, session=a)
    assert lock_of(daemon, oid)["OWNER"] == a_uid
    assert fails(daemon, "one.image.lock", oid, 2, session=b) == (
        "[one.image.lock] Error trying to lock the resource.", 2048, -1)
    assert fails(daemon, "one.image.unlock", oid, session=b) == (
        "[one.image.unlock] Cannot unlock: Lock is owned by another user", 2048, -1)
    # the owner re-locks at another level
    ok(daemon, "one.image.lock", oid, 2, session=a)
    assert lock_of(daemon, oid)["LOCKED"] == 2
    # an admin takes it over
    ok(daemon, "one.image.lock", oid, 3)
    assert (lock_of(daemon, oid)["OWNER"], lock_of(daemon, oid)["LOCKED"]) == (0, 3)
    assert fails(daemon, "one.image.unlock", oid, session=a)[0] == (
        "[one.image.unlock] Cannot unlock: Lock is owned by another user")
    ok(daemon, "one.image.unlock", oid)
    ok(daemon, "one.image.lock", oid, 1, session=b)
    assert ok(daemon, "one.image.unlock", oid, session=b) == oid
    # lock needs MANAGE (no-lock): a user outside the image's group is refused
    c_uid, c = user(daemon, groups=[ok(daemon, "one.group.allocate", unique("g"))])
    assert fails(daemon, "one.image.lock", oid, 1, session=c) == (
        f"[one.image.lock] User [{c_uid}] : Not authorized to perform MANAGE IMAGE [{oid}].",
        512, -1)
    assert fails(daemon, "one.image.unlock", oid, session=c)[1] == 512


def manage_calls(oid, name):
    return [
        ("one.image.update", (oid, 'X="1"', 1)),
        ("one.image.chmod", (oid, -1, -1, -1, 1, -1, -1, -1, -1, -1)),
        ("one.image.enable", (oid, False)),
        ("one.image.persistent", (oid, True)),
        ("one.image.chtype", (oid, "DATABLOCK")),
        ("one.image.rename", (oid, name + "-renamed")),
        ("one.image.chown", (oid, -1, 1)),
        ("one.image.snapshotdelete", (oid, 0)),
        ("one.image.snapshotrevert", (oid, 0)),
        ("one.image.snapshotflatten", (oid, 0)),
        ("one.image.delete", (oid,)),
    ]


@pytest.mark.parametrize("level", [1, 4, 2])
def test_use_and_manage_locks_block_oneadmin(daemon, ds, level):
    name = unique("locked")
    oid = register(daemon, ds, name=name)
    edit_body(daemon, oid, SNAPSHOTS=snapshots(snapshot(0, active=True)))
    ok(daemon, "one.image.lock", oid, level)
    before = info(daemon, oid)
    for method, args in manage_calls(oid, name):
        assert fails(daemon, method, *args) == (
            f"[{method}] User [0] : IMAGE is locked. [{oid}].", 512, -1), method
    # what a lock never blocks
    assert info(daemon, oid) == before
    assert oid in pool(daemon)
    assert ok(daemon, "one.image.lock", oid, level) == oid
    # clone checks snapshots before authorizing (where locks are seen)
    assert fails(daemon, "one.image.clone", oid, unique("c")) == (
        "[one.image.clone] Cannot clone images with snapshots", 2048, -1)
    assert ok(daemon, "one.image.unlock", oid) == oid
    plain = register(daemon, ds)
    ok(daemon, "one.image.lock", plain, level)
    if level == 2:  # a USE operation passes a MANAGE lock
        wait_state(daemon, ok(daemon, "one.image.clone", plain, unique("c")), 1)
    else:
        assert fails(daemon, "one.image.clone", plain, unique("c")) == (
            f"[one.image.clone] User [0] : IMAGE is locked. [{plain}].", 512, -1)


def test_clone_through_a_manage_lock_drops_it(daemon, ds):
    oid = register(daemon, ds)
    ok(daemon, "one.image.lock", oid, 2)
    new = ok(daemon, "one.image.clone", oid, unique("from-locked"))
    wait_state(daemon, new, 1)
    wait_state(daemon, oid, 1)
    # READY -> USED -> READY: every state change unlocks (QUIRK)
    assert lock_of(daemon, oid) is None


def test_admin_lock_level(daemon, ds):
    oid = register(daemon, ds)
    ok(daemon, "one.image.lock", oid, 3)
    assert ok(daemon, "one.image.update", oid, 'X="1"', 1) == oid
    assert ok(daemon, "one.image.rename", oid, unique("renamed")) == oid
    assert fails(daemon, "one.image.chmod", oid, -1, -1, 1, -1, -1, -1, -1, -1, -1) == (
        f"[one.image.chmod] User [0] : IMAGE is locked. [{oid}].", 512, -1)
    # setting OWNER_A to its current value is no ADMIN operation
    assert ok(daemon, "one.image.chmod", oid, -1, -1, 0, 1, -1, -1, -1, -1, -1) == oid
    assert lock_of(daemon, oid)["LOCKED"] == 3


def test_lock_of_the_owner_denies_the_owner_like_a_permission(daemon, ds):
    uid, session = user(daemon)
    oid = ok(daemon, "one.image.allocate", 'NAME="own-lock"\nTYPE="DATABLOCK"\nSIZE="1"', ds,
             session=session)
    wait_state(daemon, oid, 1)
    ok(daemon, "one.image.lock", oid, 2, session=session)
    assert fails(daemon, "one.image.update", oid, 'X="1"', session=session) == (
        f"[one.image.update] User [{uid}] : Not authorized to perform MANAGE IMAGE [{oid}].",
        512, -1)
    assert info(daemon, oid, session=session) == info(daemon, oid)
    ok(daemon, "one.image.lock", oid, 1, session=session)
    assert fails(daemon, "one.image.clone", oid, unique("c"), session=session) == (
        f"[one.image.clone] User [{uid}] : Not authorized to perform USE IMAGE [{oid}].",
        512, -1)
    assert ok(daemon, "one.image.unlock", oid, session=session) == oid
    assert ok(daemon, "one.image.update", oid, 'X="1"', session=session) == oid


def test_state_change_drops_the_lock(daemon, ds):
    oid = register(daemon, ds)
    ok(daemon, "one.image.lock", oid, 3)
    ok(daemon, "one.image.enable", oid, False)
    assert lock_of(daemon, oid) is None
    ok(daemon, "one.image.lock", oid, 3)
    ok(daemon, "one.image.enable", oid, False)  # no state change: the lock stays
    assert lock_of(daemon, oid)["LOCKED"] == 3
    ok(daemon, "one.image.enable", oid, True)
    assert lock_of(daemon, oid) is None
    # a change that is no state change keeps it
    ok(daemon, "one.image.lock", oid, 3)
    ok(daemon, "one.image.update", oid, 'X="1"', 1)
    ok(daemon, "one.image.persistent", oid, True)
    assert lock_of(daemon, oid)["LOCKED"] == 3


def test_driver_completion_drops_the_lock(flaky, fds):
    oid = ok(flaky, "one.image.allocate", 'NAME="lk"\nPATH="/var/tmp/lk"\nMODE="cp:gate"', fds)
    ok(flaky, "one.image.lock", oid, 3)
    assert lock_of(flaky, oid)["LOCKED"] == 3
    # ADMIN lock: the forced delete of a LOCKED image is an ADMIN operation
    assert fails(flaky, "one.image.delete", oid, True) == (
        f"[one.image.delete] User [0] : IMAGE is locked. [{oid}].", 512, -1)
    open_gate(flaky, "cp", oid)
    wait_state(flaky, oid, 1)
    assert lock_of(flaky, oid) is None


def test_snapshot_completion_and_delete_drop_the_lock(flaky, fds):
    oid = register(flaky, fds, extra='TYPE="DATABLOCK"\nPERSISTENT="YES"\n'
                   'MODE="snap_flatten:gate rm:gate"\n')
    edit_body(flaky, oid, SNAPSHOTS=snapshots(snapshot(0, active=True)))
    ok(flaky, "one.image.lock", oid, 3)
    assert ok(flaky, "one.image.snapshotflatten", oid, 0) == 0
    xml = info(flaky, oid)
    # READY -> LOCKED keeps it (LOCKED is the one state that does not unlock)
    assert (num(xml, "STATE"), lock_of(flaky, oid)["LOCKED"]) == (4, 3)
    open_gate(flaky, "snap_flatten", oid)
    wait_state(flaky, oid, 1)
    assert lock_of(flaky, oid) is None
    ok(flaky, "one.image.lock", oid, 3)
    ok(flaky, "one.image.delete", oid)
    xml = info(flaky, oid)
    assert (num(xml, "STATE"), field(xml, "LOCK")) == (7, None)
    open_gate(flaky, "rm", oid)
    wait_gone(flaky, oid)
