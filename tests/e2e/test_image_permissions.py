"""Permission and object-lock matrix for every image method.

api.md §1.8-§1.9 (who is admin, owner/group/other bits, default ACLs), §1.4 (texts),
§2 (order of checks per method), §2.16 (which operation each method needs, which lock
levels block it), §3.1 (pool row filters) and §5.4 (object locks versus state LOCKED).

Part 1: for a caller who is (a) the owner, (b) a member of the image's group (through a
secondary group, and through the primary group), (c) any other user — each with the
image's bits granting exactly USE, MANAGE or ADMIN to that class — and for (d) oneadmin,
(e) a user whose primary group is oneadmin and (f) a user with oneadmin as a secondary
group: every method is allowed, or fails with exactly
``[<m>] User [<uid>] : Not authorized to perform <OP> IMAGE [<id>].`` (512), or with the
text the spec gives for what comes after (or before) authorization.

Part 2: every lock level (1, 2, 3 and 4 = "ALL", stored as 1) against every method, for
admins (``IMAGE is locked. [<id>]``) and for the owner, a group member and another user
holding all three bits of their class (a lock denial then looks like a permission
denial).

Every cell gets images of its own (SOURCE images: READY at once, no driver); one module
daemon and one set of users are shared. Every document returned is validated
(``check_document``: the XSDs, minus the two spots where oned 7.0.2 and its XSD differ).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import pytest

from tests.support.seed import (
    call,
    check_document,
    edit_body,
    fails,
    field,
    info,
    num,
    ok,
    parse,
    pool,
    read_body,
    register,
    section,
    snapshot,
    snapshots,
    template_dict,
    unique,
    user,
)

USE, MANAGE, ADMIN = "USE", "MANAGE", "ADMIN"
OP_BIT = {USE: 1, MANAGE: 2, ADMIN: 4}
#: stored lock level (1 USE, 2 MANAGE, 3 ADMIN) -> the smallest operation bit it blocks
LEVEL_BLOCKS_FROM = {1: 1, 2: 2, 3: 4}
#: requested level -> stored level (4 "ALL" is stored as 1, api.md §2.13)
STORED_LEVEL = {1: 1, 2: 2, 3: 3, 4: 1}

CLASS_BASE = {"owner": 0, "member": 3, "member_primary": 3, "other": 6}
OP_OFFSET = {USE: 0, MANAGE: 1, ADMIN: 2}
ADMINS = ("oneadmin", "admin_primary", "admin_secondary")

# Seeded snapshots (deny mode): 0 <- 1, 0 active, so that snapshot 1 can be deleted,
# reverted to and flattened as soon as the caller passes authorization.
SNAPSHOTS = snapshots(snapshot(0, children="1", active=True), snapshot(1, parent=0))
SNAP_ID = 1
NOT_BACKUP = ("Can only restore images of type BACKUP", 2048)
FOREIGN_UNLOCK = ("Cannot unlock: Lock is owned by another user", 2048)
FOREIGN_LOCK = ("Error trying to lock the resource.", 2048)
LOCKED_STATE = ("Image locked, use --force flag to remove the image. Force delete may "
                "leave some files on Datastore", 8192)


# ------------------------------------------------------------------ the shared world
@dataclasses.dataclass
class World:
    ds: int                       # dummy image datastore, capacity check off
    gid: int                      # the group every test image belongs to
    uids: dict[str, int]
    sessions: dict[str, str | None]   # None = oneadmin (the daemon's own session)


@pytest.fixture(scope="module")
def world(daemon) -> World:
    ds = ok(daemon, "one.datastore.allocate",
            f'NAME="{unique("perm-ds")}"\nDS_MAD="dummy"\nTM_MAD="dummy"\n'
            'DATASTORE_CAPACITY_CHECK="NO"\n', -1)
    gid = ok(daemon, "one.group.allocate", unique("perm-g"))
    uids: dict[str, int] = {"oneadmin": 0}
    sessions: dict[str, str | None] = {"oneadmin": None}
    for who, groups in (("owner", [1]), ("member", [1, gid]), ("member_primary", [gid, 1]),
                        ("other", [1]),
                        ("admin_primary", [0]), ("admin_secondary", [1, 0])):
        uids[who], sessions[who] = user(daemon, unique(who), groups=groups)
    # the users are what the matrix assumes they are
    for who, (primary, groups) in {"owner": (1, {1}), "member": (1, {1, gid}),
                                   "member_primary": (gid, {1, gid}),
                                   "other": (1, {1}), "admin_primary": (0, {0}),
                                   "admin_secondary": (1, {0, 1})}.items():
        xml = ok(daemon, "one.user.info", uids[who])
        assert num(xml, "GID") == primary, (who, xml)
        assert {int(e.text) for e in parse(xml).findall("GROUPS/ID")} == groups, (who, xml)
    return World(ds, gid, uids, sessions)


def bits_for(who: str, grant: str | None) -> list[int]:
    """Nine chmod values: exactly ``grant`` for ``who``'s class, everything else off."""
    bits = [0] * 9
    if grant is not None:
        bits[CLASS_BASE[who] + OP_OFFSET[grant]] = 1
    return bits


def new_image(daemon, w: World, bits: list[int], snaps: bool = False,
              state_locked: bool = False) -> tuple[int, str]:
    """A SOURCE image owned by 'owner', group ``w.gid``, with exactly ``bits``."""
    name = unique("perm")
    oid = register(daemon, w.ds, name=name)
    ok(daemon, "one.image.chown", oid, w.uids["owner"], w.gid)
    ok(daemon, "one.image.chmod", oid, *bits)
    if snaps:
        edit_body(daemon, oid, SNAPSHOTS=SNAPSHOTS)
    if state_locked:  # state LOCKED without a driver running (api.md §2.3 step 2)
        edit_body(daemon, oid, STATE="4")
    xml = info(daemon, oid)
    assert (num(xml, "UID"), num(xml, "GID")) == (w.uids["owner"], w.gid)
    assert [int(e.text) for e in parse(xml).find("PERMISSIONS")] == bits
    return oid, name


def lock_of(daemon, oid: int) -> dict | None:
    el = parse(info(daemon, oid)).find("LOCK")
    return None if el is None else {c.tag: int(c.text) for c in el}


def give_lock_to(daemon, oid: int, uid: int, level: int = 1) -> None:
    """An object lock owned by ``uid`` (taken by oneadmin, then re-owned in the body)."""
    ok(daemon, "one.image.lock", oid, level)
    lock = section(read_body(daemon, oid), "LOCK")
    edit_body(daemon, oid, LOCK=re.sub(r"<OWNER>\d+</OWNER>", f"<OWNER>{uid}</OWNER>", lock))
    assert lock_of(daemon, oid)["OWNER"] == uid


def gone_or_deleting(daemon, oid: int) -> bool:
    reply = call(daemon, "one.image.info", oid)
    if reply[0] is False:
        return reply[1:4] == [f"[one.image.info] Error getting image [{oid}].", 1024, oid]
    return num(reply[1], "STATE") == 7


# ------------------------------------------------------------------ methods
@dataclasses.dataclass
class Ctx:
    daemon: object
    w: World
    oid: int
    name: str
    who: str
    uid: int
    bits: list[int]


@dataclasses.dataclass(frozen=True)
class Method:
    key: str
    method: str
    op: str | None                     # operation checked on the image
    args: Callable[[Ctx], tuple]
    check: Callable[[Ctx, object], None] = lambda c, v: None   # after a success
    snaps: bool = False                # seed snapshots 0 <- 1
    state_locked: bool = False         # seed STATE LOCKED
    setup: Callable[[Ctx], None] | None = None
    # "auth": the op is authorized (and blocked by locks); "before_auth": a check that
    # fails first for everyone; "no_auth": succeeds without any authorization
    kind: str = "auth"
    # what a caller who passes authorization gets instead of success:
    # (message, code) for non-admins / for admins, or None for success
    granted_failure: tuple | None = None
    granted_failure_admin: tuple | None = None
    in_lock_matrix: bool = True


def _new_name(c: Ctx) -> str:
    return c.name + "-renamed"


def _check_info(c: Ctx, v) -> None:
    assert num(v, "ID") == c.oid


def _check_state(*states: int):
    def check(c: Ctx, v) -> None:
        assert v == c.oid
        assert num(info(c.daemon, c.oid), "STATE") in states

    return check


def _check_field(path: str, expected: Callable[[Ctx], object]):
    def check(c: Ctx, v) -> None:
        assert v == c.oid
        xml = info(c.daemon, c.oid)
        assert field(xml, path) == str(expected(c)), xml

    return check


def _check_clone(c: Ctx, v) -> None:
    assert isinstance(v, int) and v != c.oid
    xml = info(c.daemon, v)
    assert (num(xml, "UID"), field(xml, "NAME")) == (c.uid, c.name + "-copy")


def _check_update(c: Ctx, v) -> None:
    assert v == c.oid
    assert template_dict(info(c.daemon, c.oid))["X"] == "1"


def _check_deleted(c: Ctx, v) -> None:
    assert v == c.oid
    assert gone_or_deleting(c.daemon, c.oid)


def _check_snapshot_call(c: Ctx, v) -> None:
    assert v == SNAP_ID  # snapshot calls return the snapshot id (api.md §2.11)
    assert num(info(c.daemon, c.oid), "STATE") in (1, 4)


def _check_locked(c: Ctx, v) -> None:
    assert v == c.oid
    lock = lock_of(c.daemon, c.oid)
    assert (lock["LOCKED"], lock["OWNER"]) == (1, c.uid)


def _check_unlocked(c: Ctx, v) -> None:
    assert v == c.oid
    assert lock_of(c.daemon, c.oid) is None


def _admin_toggle(c: Ctx) -> tuple:
    # change GROUP_A (an ADMIN bit) to the opposite of its current value
    return (c.oid, -1, -1, -1, -1, -1, 1 - c.bits[5], -1, -1, -1)


def _admin_same(c: Ctx) -> tuple:
    # "set" GROUP_A to its current value and GROUP_U to 1: the ADMIN value equal to the
    # current one is dropped before the op is chosen, so this is MANAGE (api.md §2.8)
    return (c.oid, -1, -1, -1, 1, -1, c.bits[5], -1, -1, -1)


def _own_lock(c: Ctx) -> None:
    give_lock_to(c.daemon, c.oid, c.uid)


def _oneadmin_lock(c: Ctx) -> None:
    ok(c.daemon, "one.image.lock", c.oid, 1)


METHODS = [
    Method("info", "one.image.info", USE, lambda c: (c.oid,), _check_info),
    Method("clone", "one.image.clone", USE, lambda c: (c.oid, c.name + "-copy"), _check_clone),
    Method("delete", "one.image.delete", MANAGE, lambda c: (c.oid, False), _check_deleted),
    # state LOCKED: delete needs ADMIN and --force (api.md §2.3 step 2)
    Method("delete_locked_state_forced", "one.image.delete", ADMIN, lambda c: (c.oid, True),
           _check_deleted, state_locked=True),
    Method("delete_locked_state_unforced", "one.image.delete", ADMIN, lambda c: (c.oid, False),
           state_locked=True, kind="before_auth"),
    Method("enable", "one.image.enable", MANAGE, lambda c: (c.oid, False), _check_state(3)),
    # no-ops are still authorized first (§2.4, §2.5 steps 1-2)
    Method("enable_noop", "one.image.enable", MANAGE, lambda c: (c.oid, True), _check_state(1)),
    Method("persistent", "one.image.persistent", MANAGE, lambda c: (c.oid, True),
           _check_field("PERSISTENT", lambda c: 1)),
    Method("persistent_noop", "one.image.persistent", MANAGE, lambda c: (c.oid, False),
           _check_field("PERSISTENT", lambda c: 0)),
    Method("chtype", "one.image.chtype", MANAGE, lambda c: (c.oid, "DATABLOCK"),
           _check_field("TYPE", lambda c: 2)),
    Method("update", "one.image.update", MANAGE, lambda c: (c.oid, 'X="1"', 1), _check_update),
    Method("chmod_manage", "one.image.chmod", MANAGE,
           lambda c: (c.oid, -1, -1, -1, 1, -1, -1, -1, -1, -1),
           _check_field("PERMISSIONS/GROUP_U", lambda c: 1)),
    Method("chmod_admin", "one.image.chmod", ADMIN, _admin_toggle,
           _check_field("PERMISSIONS/GROUP_A", lambda c: 1 - c.bits[5])),
    Method("chmod_admin_unchanged", "one.image.chmod", MANAGE, _admin_same,
           _check_field("PERMISSIONS/GROUP_U", lambda c: 1)),
    Method("chown", "one.image.chown", MANAGE, lambda c: (c.oid, -1, 1),
           _check_field("GID", lambda c: 1)),
    Method("rename", "one.image.rename", MANAGE, lambda c: (c.oid, _new_name(c)),
           _check_field("NAME", _new_name)),
    # the current name: success without authorization (api.md §2.10 step 3)
    Method("rename_same", "one.image.rename", None, lambda c: (c.oid, c.name),
           _check_field("NAME", lambda c: c.name), kind="no_auth"),
    Method("snapshotdelete", "one.image.snapshotdelete", MANAGE, lambda c: (c.oid, SNAP_ID),
           _check_snapshot_call, snaps=True),
    Method("snapshotrevert", "one.image.snapshotrevert", MANAGE, lambda c: (c.oid, SNAP_ID),
           _check_snapshot_call, snaps=True),
    Method("snapshotflatten", "one.image.snapshotflatten", MANAGE,
           lambda c: (c.oid, SNAP_ID), _check_snapshot_call, snaps=True),
    Method("lock", "one.image.lock", MANAGE, lambda c: (c.oid, 1), _check_locked),
    # a lock held by oneadmin: only admins may take it over (§2.13)
    Method("lock_held_by_another", "one.image.lock", MANAGE, lambda c: (c.oid, 2),
           _check_field("LOCK/OWNER", lambda c: c.uid), setup=_oneadmin_lock,
           granted_failure=FOREIGN_LOCK, in_lock_matrix=False),
    # unlocking an image that is not locked: admins succeed, any other caller that passes
    # MANAGE gets the lock-owner error (QUIRK, api.md §2.13)
    Method("unlock", "one.image.unlock", MANAGE, lambda c: (c.oid,), _check_unlocked,
           granted_failure=FOREIGN_UNLOCK),
    # the caller's own lock: released by anyone who passes MANAGE
    Method("unlock_own_lock", "one.image.unlock", MANAGE, lambda c: (c.oid,),
           _check_unlocked, setup=_own_lock, in_lock_matrix=False),
    Method("restore", "one.image.restore", USE, lambda c: (c.oid, c.w.ds, ""),
           granted_failure=NOT_BACKUP, granted_failure_admin=NOT_BACKUP),
]
BY_KEY = {m.key: m for m in METHODS}

CLASSES = ("owner", "member", "member_primary", "other")
CELLS = [(who, grant) for who in CLASSES for grant in (USE, MANAGE, ADMIN)]
CELLS += [(who, None) for who in ADMINS]


def cell_id(cell) -> str:
    who, grant = cell
    return who if grant is None else f"{who}-{grant}"


def denial(method: str, uid: int, op: str, oid: int) -> tuple:
    return (f"[{method}] User [{uid}] : Not authorized to perform {op} IMAGE [{oid}].", 512, -1)


def locked(method: str, uid: int, oid: int) -> tuple:
    return (f"[{method}] User [{uid}] : IMAGE is locked. [{oid}].", 512, -1)


def run_cell(daemon, m: Method, c: Ctx, *, allowed: bool, admin: bool,
             blocked_text: tuple | None = None) -> None:
    """Call ``m`` and compare with the spec; a refused call must leave the image as it was."""
    session = c.w.sessions[c.who]
    before = info(daemon, c.oid)
    reply = call(daemon, m.method, *m.args(c), session=session)
    label = f"{m.key} as {c.who} bits={c.bits}"
    if m.kind == "before_auth":  # delete of a LOCKED-state image without force
        assert reply == [False, f"[{m.method}] {LOCKED_STATE[0]}", LOCKED_STATE[1], c.oid,
                         -1], (label, reply)
        assert info(daemon, c.oid) == before
        return
    if not allowed and m.kind == "auth":
        expected = blocked_text or denial(m.method, c.uid, m.op, c.oid)
        assert reply == [False, *expected, -1], (label, reply)
        after = info(daemon, c.oid)
        if m.key == "delete_locked_state_forced":
            # FORCE_DELETE is written before authorization (QUIRK, api.md §2.3 step 3)
            assert template_dict(after).get("FORCE_DELETE") == "YES", after
        else:
            assert after == before, label
        return
    failure = m.granted_failure_admin if admin else m.granted_failure
    if failure is not None:
        assert reply == [False, f"[{m.method}] {failure[0]}", failure[1], -1, -1], (label,
                                                                                    reply)
        assert info(daemon, c.oid) == before
        return
    assert len(reply) == 3 and reply[0] is True and reply[2] == 0, (label, reply)
    if isinstance(reply[1], str):
        check_document(reply[1])
    m.check(c, reply[1])


# ------------------------------------------------------------------ part 1: permissions
@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
@pytest.mark.parametrize("key", list(BY_KEY))
def test_permission_matrix(daemon, world, key, cell):
    who, grant = cell
    m = BY_KEY[key]
    admin = who in ADMINS
    bits = bits_for(who, grant)
    oid, name = new_image(daemon, world, bits, snaps=m.snaps, state_locked=m.state_locked)
    c = Ctx(daemon, world, oid, name, who, world.uids[who], bits)
    if m.setup is not None:
        m.setup(c)
    allowed = admin or grant == m.op
    run_cell(daemon, m, c, allowed=allowed, admin=admin)


@pytest.mark.parametrize("who", list(CLASSES) + list(ADMINS))
def test_info_of_negative_ids(daemon, world, who):
    """§2.14 edge: admins get NO_EXISTS (``Pool.`` for -1), everyone else AUTHORIZATION
    without an id suffix."""
    session = world.sessions[who]
    for oid in (-1, -5):
        reply = call(daemon, "one.image.info", oid, session=session)
        if who in ADMINS:
            text = ("[one.image.info] Error getting image Pool." if oid == -1
                    else f"[one.image.info] Error getting image [{oid}].")
            assert reply == [False, text, 1024, oid, -1], (who, reply)
        else:
            assert reply == [False, f"[one.image.info] User [{world.uids[who]}] : Not "
                             "authorized to perform USE IMAGE.", 512, -1, -1], (who, reply)


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_imagepool_visibility(daemon, world, cell):
    """§3.1 row filters, for an image of 'owner' in group G: ALL = own rows, other_u, or
    group_u with G among the caller's groups (admins: everything); MINE_GROUP = own rows
    plus *visible* rows of the caller's groups (admins: all rows of their groups); GROUP =
    rows of the caller's primary group, visible ones for non-admins; MINE = own rows; a
    uid = that user's rows, visible ones unless it is the caller."""
    who, grant = cell
    bits = bits_for(who, grant)
    oid, _ = new_image(daemon, world, bits)
    session = world.sessions[who]
    admin = who in ADMINS
    use_bit = grant == USE
    in_g = who in ("member", "member_primary")           # G is one of the caller's groups
    in_all = admin or who == "owner" or ((in_g or who == "other") and use_bit)
    in_mine_group = who == "owner" or (in_g and use_bit)
    in_group = who == "member_primary" and use_bit       # G is the primary group
    rows = {flag: oid in pool(daemon, flag, -1, -1, session=session)
            for flag in (-4, -3, -2, -1, world.uids["owner"])}
    assert rows == {-4: in_group, -3: who == "owner", -2: in_all, -1: in_mine_group,
                    world.uids["owner"]: in_all}, (who, grant, bits)
    # a lock never hides a row
    ok(daemon, "one.image.lock", oid, 1)
    assert (oid in pool(daemon, -2, session=session)) is in_all


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_allocate_into_a_datastore(daemon, world, cell):
    """allocate = CREATE IMAGE + USE DATASTORE (§2.1 step 8). Every caller here is in
    `users` (or an admin): the default ACLs (#0 CREATE IMAGE for @1, #5 USE DATASTORE/*
    for @1, §1.8) grant both whatever the datastore's own bits say."""
    who, grant = cell
    ds = ok(daemon, "one.datastore.allocate",
            f'NAME="{unique("alloc-ds")}"\nDS_MAD="dummy"\nTM_MAD="dummy"\n'
            'DATASTORE_CAPACITY_CHECK="NO"\n', -1)
    ok(daemon, "one.datastore.chown", ds, world.uids["owner"], world.gid)
    ok(daemon, "one.datastore.chmod", ds, *bits_for(who, grant))
    name = unique("alloc")
    new = ok(daemon, "one.image.allocate", f'NAME="{name}"\nTYPE="DATABLOCK"\nSIZE="1"\n', ds,
             session=world.sessions[who])
    xml = info(daemon, new)
    assert (num(xml, "UID"), num(xml, "DATASTORE_ID"), field(xml, "NAME")) == (
        world.uids[who], ds, name)


def test_allocate_needs_create_image(daemon, world):
    """A user outside `users` has no CREATE IMAGE right (default ACLs, §1.8)."""
    uid, session = user(daemon, unique("loner"), groups=[world.gid])
    message, code, resp_id = fails(daemon, "one.image.allocate",
                                   'NAME="x"\nTYPE="DATABLOCK"\nSIZE="1"\n', world.ds,
                                   session=session)
    assert (code, resp_id) == (512, -1)
    assert message.startswith(f"[one.image.allocate] User [{uid}] : "
                              "Not authorized to perform CREATE IMAGE"), message
    # and SOURCE is a restricted attribute for any non-admin (checked first, step 7)
    assert fails(daemon, "one.image.allocate",
                 'NAME="y"\nSOURCE="/s"\nFORMAT="raw"\nSIZE="1"\n', world.ds,
                 session=world.sessions["owner"]) == (
        f"[one.image.allocate] User [{world.uids['owner']}] : Template includes a restricted "
        "attribute SOURCE.", 512, -1)


# ------------------------------------------------------------------ part 2: object locks
LOCK_METHODS = [m.key for m in METHODS if m.in_lock_matrix]
# calls that change no state, so the object lock survives them (the QUIRK of §5.4 only
# drops it on a state change)
KEEPS_LOCK = {"info", "enable_noop", "persistent", "persistent_noop", "chtype", "update",
              "chmod_manage", "chmod_admin", "chmod_admin_unchanged", "chown", "rename",
              "rename_same", "restore", "delete_locked_state_unforced"}


def lock_blocks(m: Method, stored: int) -> bool:
    """info, lock and unlock are "no-lock" checks; the rest per §2.16."""
    if m.key in ("info", "lock", "unlock") or m.kind != "auth":
        return False
    return OP_BIT[m.op] >= LEVEL_BLOCKS_FROM[stored]


@pytest.mark.parametrize("level", [1, 2, 3, 4])
@pytest.mark.parametrize("key", LOCK_METHODS)
@pytest.mark.parametrize("who", ["oneadmin", "admin_secondary", "owner", "member", "other"])
def test_lock_matrix(daemon, world, who, key, level):
    """§5.4 / §2.16: a stored level L blocks every operation with bit >= L, for admins
    (``IMAGE is locked.``) and for anyone else (reported as a permission denial, here for
    callers whose class has all three bits); info, lock and unlock are never blocked.
    The caller takes the lock itself."""
    m = BY_KEY[key]
    admin = who in ADMINS
    bits = [0] * 9
    if not admin:  # every bit of the caller's class
        bits[CLASS_BASE[who]:CLASS_BASE[who] + 3] = [1, 1, 1]
    oid, name = new_image(daemon, world, bits, snaps=m.snaps, state_locked=m.state_locked)
    uid = world.uids[who]
    session = world.sessions[who]
    ok(daemon, "one.image.lock", oid, level, session=session)
    lock = lock_of(daemon, oid)
    assert (lock["LOCKED"], lock["OWNER"]) == (STORED_LEVEL[level], uid)
    c = Ctx(daemon, world, oid, name, who, uid, bits)
    blocked = lock_blocks(m, STORED_LEVEL[level])
    text = None
    if blocked:
        text = locked(m.method, uid, oid) if admin else denial(m.method, uid, m.op, oid)
    if m.key == "unlock":  # the caller owns the lock: it is simply released
        m = dataclasses.replace(m, granted_failure=None)
    run_cell(daemon, m, c, allowed=not blocked, admin=admin, blocked_text=text)
    if not blocked and m.key in KEEPS_LOCK:
        # no state change, so the object lock is still there (QUIRK §5.4 only drops it
        # when the state changes)
        assert lock_of(daemon, oid) == lock, (key, level)


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_lock_never_hides_pool_rows(daemon, world, level):
    oid, _ = new_image(daemon, world, [1, 1, 1, 0, 0, 0, 0, 0, 0])
    ok(daemon, "one.image.lock", oid, level)
    assert oid in pool(daemon, -2)
    assert oid in pool(daemon, -2, session=world.sessions["owner"])


# ------------------------------------------------------------------ joined details
def test_chown_denials_are_joined(daemon, world):
    """§2.9 step 4 / §1.4: MANAGE image, MANAGE target user, USE target group, in that
    order, every failing check listed and joined with '; '."""
    oid, _ = new_image(daemon, world, bits_for("owner", MANAGE))
    owner, other = world.uids["owner"], world.uids["other"]
    before = info(daemon, oid)
    assert fails(daemon, "one.image.chown", oid, other, 0,
                 session=world.sessions["owner"]) == (
        f"[one.image.chown] User [{owner}] : Not authorized to perform MANAGE USER [{other}]; "
        "Not authorized to perform USE GROUP [0].", 512, -1)
    member = world.uids["member"]
    assert fails(daemon, "one.image.chown", oid, member, 0,
                 session=world.sessions["other"]) == (
        f"[one.image.chown] User [{other}] : Not authorized to perform MANAGE IMAGE [{oid}]; "
        f"Not authorized to perform MANAGE USER [{member}]; "
        "Not authorized to perform USE GROUP [0].", 512, -1)
    # the owner and group the image already has are no change, hence no check (step 3)
    assert ok(daemon, "one.image.chown", oid, owner, world.gid,
              session=world.sessions["owner"]) == oid
    assert info(daemon, oid) == before


def test_other_permissions_disabled(fresh_daemon):
    """§2.8 step 4 (before authorization) and §1.8 with ENABLE_OTHER_PERMISSIONS = NO."""
    d = fresh_daemon('ENABLE_OTHER_PERMISSIONS = "NO"\n')
    ds = ok(d, "one.datastore.allocate", 'NAME="nop"\nDS_MAD="dummy"\nTM_MAD="dummy"\n'
            'DATASTORE_CAPACITY_CHECK="NO"\n', -1)
    a_uid, a = user(d, "alice")
    b_uid, b = user(d, "bob")
    oid = ok(d, "one.image.allocate", 'NAME="mine"\nTYPE="DATABLOCK"\nSIZE="1"\n', ds,
             session=a)
    xml = info(d, oid)
    assert [int(e.text) for e in parse(xml).find("PERMISSIONS")] == [1, 1, 0] + [0] * 6
    disabled = "'other' permissions is disabled in oned.conf."
    assert fails(d, "one.image.chmod", oid, -1, -1, -1, -1, -1, -1, 1, -1, -1, session=a) == (
        f"[one.image.chmod] User [{a_uid}] : {disabled}", 512, -1)
    # checked before authorization: a caller without any right gets the same text
    assert fails(d, "one.image.chmod", oid, -1, -1, -1, -1, -1, -1, -1, 1, -1, session=b) == (
        f"[one.image.chmod] User [{b_uid}] : {disabled}", 512, -1)
    # an OTHER value equal to the current one is no change
    assert ok(d, "one.image.chmod", oid, -1, -1, -1, 1, -1, -1, 0, 0, 0, session=a) == oid
    assert info(d, oid) != xml
    # admins may
    assert ok(d, "one.image.chmod", oid, -1, -1, -1, -1, -1, -1, 1, -1, -1) == oid
    assert num(info(d, oid), "PERMISSIONS/OTHER_U") == 1
