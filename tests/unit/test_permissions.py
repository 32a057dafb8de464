"""domain/permissions.py without a daemon: bits, ACL rules, locks, texts, umask math."""

from __future__ import annotations

import pytest

from oned_images.domain.permissions import (
    ALL,
    CLUSTER_ID,
    GROUP_ID,
    INDIVIDUAL,
    OBJECT_BITS,
    AclRule,
    AuthRequest,
    Caller,
    ObjectAuth,
    Op,
    acl_grants_all,
    acl_visible_terms,
    authorize,
    bits_allow,
    default_acl_rules,
    lock_blocks,
    new_object_perms,
    vdc_group_rules,
)
from oned_images.errors import ErrorCode, OneError
from oned_images.model.objects import Permissions

ADMIN = Caller(0, 0, frozenset({0}), "oneadmin", "oneadmin")
ALICE = Caller(2, 1, frozenset({1}), "alice", "users")
BOB = Caller(3, 100, frozenset({100, 1}), "bob", "g100")
LONER = Caller(4, 100, frozenset({100}), "loner", "g100")


def perms(text: str) -> Permissions:
    """'um- u-- ---' style, as the CLI prints them."""
    bits = [0 if c == "-" else 1 for c in text.replace(" ", "")]
    assert len(bits) == 9
    return Permissions(bits)


def image(oid: int = 5, uid: int = 2, gid: int = 1, p: str = "um- --- ---",
          lock: int = 0) -> ObjectAuth:
    return ObjectAuth("IMAGE", oid, uid, gid, perms(p), lock)


def denied(caller: Caller, rules: list[AclRule], *checks: tuple[Op, ObjectAuth]) -> list[str]:
    req = AuthRequest(caller, rules)
    for op, obj in checks:
        req.add(op, obj)
    return req.failures


# ----------------------------------------------------------------- who is admin
def test_admin_is_uid_0_or_any_member_of_group_0():
    assert ADMIN.is_admin
    assert Caller(0, 1, frozenset({1}), "oneadmin", "users").is_admin
    assert Caller(7, 1, frozenset({1, 0}), "x", "users").is_admin
    assert Caller(1, 0, frozenset({0}), "serveradmin", "oneadmin").is_admin
    assert not ALICE.is_admin
    # an EGID-scoped session carries only that group
    assert not Caller(7, 1, frozenset({1}), "x", "users", scoped=True).is_admin


# ------------------------------------------------------------- owner/group/other
@pytest.mark.parametrize("op,offset", [(Op.USE, 0), (Op.MANAGE, 1), (Op.ADMIN, 2)])
def test_each_triplet_bit_grants_only_its_own_operation(op, offset):
    for who, caller, base in (("owner", ALICE, 0), ("group", BOB, 3), ("other", LONER, 6)):
        bits = [0] * 9
        bits[base + offset] = 1
        obj = ObjectAuth("IMAGE", 9, 2, 1, Permissions(bits))
        # ALICE owns the object, BOB reaches group 1 through a secondary group,
        # LONER only gets the 'other' bits.
        for other_op in (Op.USE, Op.MANAGE, Op.ADMIN):
            assert bits_allow(caller, obj, other_op) is (other_op == op), (who, other_op)


def test_owner_bits_only_apply_to_the_owner_and_group_bits_to_any_member_group():
    obj = image(uid=2, gid=1, p="u-- u-- ---")
    assert bits_allow(ALICE, obj, Op.USE)              # owner
    assert bits_allow(BOB, obj, Op.USE)                # secondary group 1
    assert not bits_allow(LONER, obj, Op.USE)          # neither
    assert not bits_allow(ALICE, obj, Op.MANAGE)       # MANAGE does not imply USE or v.v.
    obj = image(uid=2, gid=1, p="-m- --- ---")
    assert bits_allow(ALICE, obj, Op.MANAGE) and not bits_allow(ALICE, obj, Op.USE)
    assert bits_allow(LONER, image(p="--- --- u--"), Op.USE)


def test_create_and_missing_permissions_are_never_granted_by_bits():
    assert not bits_allow(ALICE, image(p="uma uma uma"), Op.CREATE)
    assert not bits_allow(ALICE, ObjectAuth("IMAGE", 5, 2, 1, None), Op.USE)


# ----------------------------------------------------------------- ACL strings
def test_default_rules_and_their_strings():
    rules = default_acl_rules()
    assert [(r.oid, r.to_string()) for r in rules] == [
        (0, "@1 VM+IMAGE+TEMPLATE+DOCUMENT+SECGROUP+VMGROUP+BACKUPJOB/* CREATE *"),
        (1, "* ZONE/* USE *"),
        (2, "* MARKETPLACE+MARKETPLACEAPP/* USE *"),
        (3, "@1 HOST/* MANAGE #0"),
        (4, "@1 NET/* USE #0"),
        (5, "@1 DATASTORE/* USE #0"),
    ]
    assert [(hex(r.user), hex(r.resource), int(r.rights), hex(r.zone)) for r in rules] == [
        ("0x200000001", "0x121429400000000", 8, "0x400000000"),
        ("0x400000000", "0x800400000000", 1, "0x400000000"),
        ("0x400000000", "0x18000400000000", 1, "0x400000000"),
        ("0x200000001", "0x2400000000", 2, "0x100000000"),
        ("0x200000001", "0x4400000000", 1, "0x100000000"),
        ("0x200000001", "0x100400000000", 1, "0x100000000"),
    ]


def test_rule_strings_for_individual_cluster_and_combined_rights():
    rule = AclRule(9, INDIVIDUAL | 7, OBJECT_BITS["IMAGE"] | INDIVIDUAL | 12,
                   Op.USE | Op.MANAGE, ALL)
    assert rule.to_string() == "#7 IMAGE/#12 USE+MANAGE *"
    rule = AclRule(9, ALL, OBJECT_BITS["DATASTORE"] | CLUSTER_ID | 0,
                   Op.USE | Op.MANAGE | Op.ADMIN | Op.CREATE, INDIVIDUAL | 0)
    assert rule.to_string() == "* DATASTORE/%0 USE+MANAGE+ADMIN+CREATE #0"
    rule = AclRule(9, GROUP_ID | 3, OBJECT_BITS["USER"] | OBJECT_BITS["GROUP"] | GROUP_ID | 3,
                   Op.ADMIN, ALL)
    assert rule.to_string() == "@3 USER+GROUP/@3 ADMIN *"


def test_vdc_rules_for_a_new_group():
    assert [r.to_string() for r in vdc_group_rules(100)] == [
        "@100 HOST/* MANAGE #0", "@100 NET/* USE #0", "@100 DATASTORE/* USE #0"]
    assert [r.oid for r in vdc_group_rules(100)] == [-1, -1, -1]


# ------------------------------------------------------------------- ACL rules
def test_default_acl_lets_users_create_images_and_use_datastores():
    rules = default_acl_rules()
    ds = ObjectAuth("DATASTORE", 1, 0, 0, perms("um- u-- ---"), 0, (0,))
    assert denied(ALICE, rules, (Op.CREATE, ObjectAuth("IMAGE", -1)), (Op.USE, ds)) == []
    assert denied(ALICE, rules, (Op.MANAGE, ds)) == ["Not authorized to perform MANAGE "
                                                     "DATASTORE [1]"]
    assert denied(LONER, rules, (Op.CREATE, ObjectAuth("IMAGE", -1)), (Op.USE, ds)) == [
        "Not authorized to perform CREATE IMAGE",
        "Not authorized to perform USE DATASTORE [1]",
    ]
    # a secondary membership of group 1 is enough
    assert denied(BOB, rules, (Op.CREATE, ObjectAuth("IMAGE", -1)), (Op.USE, ds)) == []
    assert denied(LONER, rules + vdc_group_rules(100), (Op.USE, ds)) == []


@pytest.mark.parametrize("resource,visible", [
    (OBJECT_BITS["IMAGE"] | INDIVIDUAL | 5, {5}),
    (OBJECT_BITS["IMAGE"] | GROUP_ID | 1, {5, 6}),
    (OBJECT_BITS["IMAGE"] | ALL, {5, 6, 7}),
    (OBJECT_BITS["DATASTORE"] | ALL, set()),
])
def test_acl_resource_forms(resource, visible):
    rules = [AclRule(10, INDIVIDUAL | LONER.uid, resource, Op.USE, ALL)]
    objs = {5: image(5, gid=1), 6: image(6, gid=1), 7: image(7, gid=0)}
    seen = {oid for oid, obj in objs.items() if not denied(LONER, rules, (Op.USE, obj))}
    assert seen == visible


def test_acl_user_forms_zone_and_rights():
    obj = image(5, uid=0, gid=0)
    for user, ok in ((ALL, True), (INDIVIDUAL | 4, True), (INDIVIDUAL | 2, False),
                     (GROUP_ID | 100, True), (GROUP_ID | 1, False)):
        rules = [AclRule(10, user, OBJECT_BITS["IMAGE"] | ALL, Op.USE, ALL)]
        assert (denied(LONER, rules, (Op.USE, obj)) == []) is ok, hex(user)
    # a rule for another zone does not count, nor does a right it does not give
    assert denied(LONER, [AclRule(10, ALL, OBJECT_BITS["IMAGE"] | ALL, Op.USE,
                                  INDIVIDUAL | 1)], (Op.USE, obj))
    assert denied(LONER, [AclRule(10, ALL, OBJECT_BITS["IMAGE"] | ALL, Op.USE, ALL)],
                  (Op.MANAGE, obj)) == ["Not authorized to perform MANAGE IMAGE [5]"]
    # a rule for another object type does not count either
    assert denied(LONER, [AclRule(10, ALL, OBJECT_BITS["DATASTORE"] | ALL, Op.USE, ALL)],
                  (Op.USE, obj))


def test_cluster_rules_match_clustered_objects():
    ds = ObjectAuth("DATASTORE", 100, 0, 0, perms("um- --- ---"), 0, (0,))
    rules = [AclRule(10, ALL, OBJECT_BITS["DATASTORE"] | CLUSTER_ID | 0, Op.USE, ALL)]
    assert denied(LONER, rules, (Op.USE, ds)) == []
    rules = [AclRule(10, ALL, OBJECT_BITS["DATASTORE"] | CLUSTER_ID | 1, Op.USE, ALL)]
    assert denied(LONER, rules, (Op.USE, ds)) == ["Not authorized to perform USE "
                                                  "DATASTORE [100]"]


def test_acl_helpers_for_pool_filters():
    rules = default_acl_rules() + [
        AclRule(10, INDIVIDUAL | 4, OBJECT_BITS["IMAGE"] | INDIVIDUAL | 7, Op.USE, ALL),
        AclRule(11, GROUP_ID | 100, OBJECT_BITS["IMAGE"] | GROUP_ID | 3, Op.USE, ALL),
        AclRule(12, GROUP_ID | 1, OBJECT_BITS["IMAGE"] | INDIVIDUAL | 8, Op.USE, ALL),
    ]
    assert acl_visible_terms(LONER, rules, "IMAGE", Op.USE) == ({7}, {3})
    assert acl_visible_terms(BOB, rules, "IMAGE", Op.USE) == ({8}, {3})
    assert not acl_grants_all(LONER, rules, "DATASTORE", Op.USE)
    assert acl_grants_all(ALICE, rules, "DATASTORE", Op.USE)
    assert not acl_grants_all(ALICE, rules, "DATASTORE", Op.MANAGE)
    assert acl_grants_all(LONER, rules, "ZONE", Op.USE)


# ---------------------------------------------------------------- self & groups
def test_users_may_use_themselves_and_members_their_groups():
    me = ObjectAuth("USER", 2, 2, 1, perms("um- --- ---"))
    other = ObjectAuth("USER", 3, 3, 1, perms("um- --- ---"))
    assert denied(ALICE, [], (Op.USE, me), (Op.MANAGE, me)) == []
    assert denied(ALICE, [], (Op.USE, other), (Op.ADMIN, me)) == [
        "Not authorized to perform USE USER [3]", "Not authorized to perform ADMIN USER [2]"]
    group1 = ObjectAuth("GROUP", 1, -1, 1, perms("um- u-- ---"))
    group100 = ObjectAuth("GROUP", 100, -1, 100, perms("um- u-- ---"))
    assert denied(BOB, [], (Op.USE, group1), (Op.USE, group100)) == []
    assert denied(ALICE, [], (Op.USE, group100), (Op.MANAGE, group1)) == [
        "Not authorized to perform USE GROUP [100]", "Not authorized to perform MANAGE GROUP [1]"]


# ----------------------------------------------------------------------- locks
@pytest.mark.parametrize("level,blocked", [
    (0, set()),
    (1, {Op.USE, Op.MANAGE, Op.ADMIN, Op.CREATE}),
    (2, {Op.MANAGE, Op.ADMIN, Op.CREATE}),
    (3, {Op.ADMIN, Op.CREATE}),
    (4, {Op.ADMIN, Op.CREATE}),
])
def test_lock_levels(level, blocked):
    assert {op for op in Op if lock_blocks(level, op)} == blocked


def test_locks_stop_admins_and_owners_with_different_texts():
    locked = image(5, uid=2, p="uma --- ---", lock=2)
    assert denied(ADMIN, [], (Op.USE, locked)) == []
    assert denied(ADMIN, [], (Op.MANAGE, locked)) == ["IMAGE is locked. [5]"]
    assert denied(ALICE, [], (Op.USE, locked)) == []
    assert denied(ALICE, [], (Op.MANAGE, locked), (Op.ADMIN, locked)) == [
        "Not authorized to perform MANAGE IMAGE [5]", "Not authorized to perform ADMIN IMAGE [5]"]
    # info/lock/unlock are no-lock operations
    req = AuthRequest(ADMIN, [])
    req.add(Op.ADMIN, image(5, lock=3), check_lock=False)
    assert req.failures == []
    req = AuthRequest(ALICE, [])
    req.add(Op.MANAGE, image(5, uid=2, lock=1), check_lock=False)
    assert req.failures == []


def test_admins_pass_everything_else():
    assert denied(ADMIN, [], (Op.ADMIN, image(5, uid=9, gid=9, p="--- --- ---")),
                  (Op.CREATE, ObjectAuth("DATASTORE", -1)),
                  (Op.MANAGE, ObjectAuth("USER", 3, 3, 1, perms("um- --- ---")))) == []


# ---------------------------------------------------------------- failure texts
def test_failures_are_joined_and_formatted_like_oned():
    req = AuthRequest(ALICE, default_acl_rules())
    req.add(Op.MANAGE, ObjectAuth("USER", 3, 3, 1, perms("um- --- ---")))
    req.add(Op.USE, ObjectAuth("GROUP", 0, -1, 0, perms("um- u-- ---")))
    err = req.error()
    assert isinstance(err, OneError) and err.code == ErrorCode.AUTHORIZATION
    assert err.message("one.image.chown", ALICE.uid, "image") == (
        "[one.image.chown] User [2] : Not authorized to perform MANAGE USER [3]; "
        "Not authorized to perform USE GROUP [0].")
    with pytest.raises(OneError) as exc:
        req.check()
    assert exc.value.resp_id == -1
    assert AuthRequest(ALICE, []).error() is None
    AuthRequest(ALICE, []).check()


def test_authorize_helper_and_create_texts():
    with pytest.raises(OneError) as exc:
        authorize(LONER, default_acl_rules(), Op.CREATE, ObjectAuth("DATASTORE", -1))
    assert exc.value.message("one.datastore.allocate", 4, "datastore") == (
        "[one.datastore.allocate] User [4] : Not authorized to perform CREATE DATASTORE.")
    authorize(ALICE, default_acl_rules(), Op.CREATE, ObjectAuth("IMAGE", -1))
    with pytest.raises(OneError) as exc:
        authorize(ALICE, [], Op.MANAGE, image(5, lock=1))
    assert exc.value.detail == "Not authorized to perform MANAGE IMAGE [5]"
    authorize(ALICE, [], Op.MANAGE, image(5, lock=1), check_lock=False)


# ------------------------------------------------------------------ umask math
@pytest.mark.parametrize("uid,gid,umask,other,expected", [
    (0, 0, 0o177, True, "um- --- ---"),     # 777 & ~177 = 600
    (2, 1, 0o177, True, "um- --- ---"),     # 666 & ~177 = 600
    (2, 1, 0o177, False, "um- --- ---"),    # 660 & ~177 = 600
    (2, 1, 0o000, True, "um- um- um-"),     # 666
    (2, 1, 0o000, False, "um- um- ---"),    # 660
    (0, 5, 0o000, False, "uma uma uma"),    # owner oneadmin: 777
    (5, 0, 0o000, True, "uma uma uma"),     # group oneadmin: 777
    (0, 0, 0o022, True, "uma u-a u-a"),     # 755
    (2, 1, 0o022, True, "um- u-- u--"),     # 644
    (2, 1, 0o137, True, "um- u-- ---"),     # what bootstrap datastores get (640)
    (0, 0, 0o777, True, "--- --- ---"),
])
def test_new_object_perms(uid, gid, umask, other, expected):
    got = new_object_perms(uid, gid, umask, other)
    text = " ".join("".join(("uma"[i] if got.bits[b + i] else "-") for i in range(3))
                    for b in (0, 3, 6))
    assert text == expected
    assert got.owner_u == got.bits[0] and got.group_u == got.bits[3]
    assert got.other_u == got.bits[6]


def test_session_cache_stays_bounded():
    from types import SimpleNamespace

    from oned_images.domain import identity as ident

    clock = [1000.0]
    idn = ident.Identity(db=None, config=SimpleNamespace(session_expiration_time=10),
                         clock=lambda: clock[0])
    for i in range(ident.SESSION_CACHE_LIMIT):
        idn._remember(f"s{i}", (0, clock[0] + 10, -1))
    assert len(idn._sessions) == ident.SESSION_CACHE_LIMIT
    clock[0] += 20  # everything cached so far has expired
    idn._remember("fresh", (0, clock[0] + 10, -1))
    assert list(idn._sessions) == ["fresh"]
