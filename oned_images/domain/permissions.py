"""oned's authorization: owner/group/other bits, ACL rules and object locks.

Pure functions over plain data (api.md §1.9), so the permission matrix can be
tested without a daemon.  An :class:`AuthRequest` collects checks the way oned's
AuthRequest does and reports every failed one, joined with ``"; "``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from oned_images.errors import OneError, authorization
from oned_images.model.objects import Permissions


class Op(IntEnum):
    USE = 0x1
    MANAGE = 0x2
    ADMIN = 0x4
    CREATE = 0x8


# PoolObjectSQL::ObjectType bits, as used in ACL resources.
OBJECT_BITS = {
    "VM": 0x0000001000000000,
    "HOST": 0x0000002000000000,
    "NET": 0x0000004000000000,
    "IMAGE": 0x0000008000000000,
    "USER": 0x0000010000000000,
    "TEMPLATE": 0x0000020000000000,
    "GROUP": 0x0000040000000000,
    "ACL": 0x0000080000000000,
    "DATASTORE": 0x0000100000000000,
    "CLUSTER": 0x0000200000000000,
    "DOCUMENT": 0x0000400000000000,
    "ZONE": 0x0000800000000000,
    "SECGROUP": 0x0001000000000000,
    "VDC": 0x0002000000000000,
    "VROUTER": 0x0004000000000000,
    "MARKETPLACE": 0x0008000000000000,
    "MARKETPLACEAPP": 0x0010000000000000,
    "VMGROUP": 0x0020000000000000,
    "VNTEMPLATE": 0x0040000000000000,
    "HOOK": 0x0080000000000000,
    "BACKUPJOB": 0x0100000000000000,
}
INDIVIDUAL = 0x100000000
GROUP_ID = 0x200000000
ALL = 0x400000000
CLUSTER_ID = 0x800000000
ID_MASK = 0xFFFFFFFF
TYPE_MASK = 0xF00000000


@dataclass(frozen=True)
class Caller:
    """Who makes a request: the result of authentication."""

    uid: int
    gid: int
    groups: frozenset[int]
    uname: str
    gname: str
    umask: int | None = None
    #: a group-scoped token or server_cipher session with an EGID.
    scoped: bool = False

    @property
    def is_admin(self) -> bool:
        return self.uid == 0 or 0 in self.groups


@dataclass(frozen=True)
class AclRule:
    oid: int
    user: int
    resource: int
    rights: int
    zone: int

    def to_string(self) -> str:
        def who(value: int) -> str:
            kind = value & TYPE_MASK
            if kind == INDIVIDUAL:
                return f"#{value & ID_MASK}"
            if kind == GROUP_ID:
                return f"@{value & ID_MASK}"
            if kind == CLUSTER_ID:
                return f"%{value & ID_MASK}"
            return "*"

        types = "+".join(n for n, b in OBJECT_BITS.items() if self.resource & b)
        rights = "+".join(op.name for op in Op if self.rights & op)
        return f"{who(self.user)} {types}/{who(self.resource)} {rights} {who(self.zone)}"


def default_acl_rules() -> list[AclRule]:
    """The rules of a fresh oned (api.md §1.8)."""
    create_types = sum(OBJECT_BITS[t] for t in (
        "VM", "IMAGE", "TEMPLATE", "DOCUMENT", "SECGROUP", "VMGROUP", "BACKUPJOB"))
    return [
        AclRule(0, GROUP_ID | 1, create_types | ALL, Op.CREATE, ALL),
        AclRule(1, ALL, OBJECT_BITS["ZONE"] | ALL, Op.USE, ALL),
        AclRule(2, ALL, OBJECT_BITS["MARKETPLACE"] | OBJECT_BITS["MARKETPLACEAPP"] | ALL,
                Op.USE, ALL),
    ] + [AclRule(3 + i, r.user, r.resource, r.rights, r.zone)
         for i, r in enumerate(vdc_group_rules(1))]


def vdc_group_rules(gid: int) -> list[AclRule]:
    """The rules the default VDC (every cluster of zone 0) gives a member group.

    DEFAULT_VDC_CLUSTER_{HOST,NET,DATASTORE}_ACL = MANAGE, USE, USE; oned adds them
    for group 1 at bootstrap and for every group one.group.allocate creates.
    The ids are assigned when the rules are stored (-1 here).
    """
    return [
        AclRule(-1, GROUP_ID | gid, OBJECT_BITS["HOST"] | ALL, Op.MANAGE, INDIVIDUAL | 0),
        AclRule(-1, GROUP_ID | gid, OBJECT_BITS["NET"] | ALL, Op.USE, INDIVIDUAL | 0),
        AclRule(-1, GROUP_ID | gid, OBJECT_BITS["DATASTORE"] | ALL, Op.USE, INDIVIDUAL | 0),
    ]


@dataclass(frozen=True)
class ObjectAuth:
    """What an authorization check needs to know about an object."""

    type: str  # IMAGE, DATASTORE, USER, GROUP
    oid: int
    uid: int = -1
    gid: int = -1
    perms: Permissions | None = None
    lock: int = 0  # stored lock level, 0 = unlocked
    clusters: tuple[int, ...] = ()


def _acl_allows(caller: Caller, rules: list[AclRule], obj: ObjectAuth, op: Op) -> bool:
    type_bit = OBJECT_BITS[obj.type]
    users = {ALL, INDIVIDUAL | caller.uid} | {GROUP_ID | g for g in caller.groups}
    resources = {ALL}
    if obj.oid >= 0:
        resources.add(INDIVIDUAL | obj.oid)
    if obj.gid >= 0:
        resources.add(GROUP_ID | obj.gid)
    resources |= {CLUSTER_ID | c for c in obj.clusters}
    for rule in rules:
        if not rule.rights & op or not rule.resource & type_bit:
            continue
        if rule.user not in users:
            continue
        if rule.zone not in (ALL, INDIVIDUAL | 0):
            continue
        if (rule.resource & (TYPE_MASK | ID_MASK)) in resources:
            return True
    return False


def acl_grants_all(caller: Caller, rules: list[AclRule], obj_type: str, op: Op) -> bool:
    """An ACL rule grants ``op`` on every object of the type (no row filter needed)."""
    type_bit = OBJECT_BITS[obj_type]
    users = {ALL, INDIVIDUAL | caller.uid} | {GROUP_ID | g for g in caller.groups}
    return any(
        rule.rights & op and rule.resource & type_bit and rule.user in users
        and rule.resource & TYPE_MASK == ALL and rule.zone in (ALL, INDIVIDUAL | 0)
        for rule in rules
    )


def acl_visible_terms(caller: Caller, rules: list[AclRule], obj_type: str,
                      op: Op) -> tuple[set[int], set[int]]:
    """Object ids and group ids that an ACL rule opens to ``caller`` (for pool filters)."""
    type_bit = OBJECT_BITS[obj_type]
    users = {ALL, INDIVIDUAL | caller.uid} | {GROUP_ID | g for g in caller.groups}
    oids: set[int] = set()
    gids: set[int] = set()
    for rule in rules:
        if not (rule.rights & op and rule.resource & type_bit and rule.user in users):
            continue
        kind = rule.resource & TYPE_MASK
        if kind == INDIVIDUAL:
            oids.add(rule.resource & ID_MASK)
        elif kind == GROUP_ID:
            gids.add(rule.resource & ID_MASK)
    return oids, gids


def bits_allow(caller: Caller, obj: ObjectAuth, op: Op) -> bool:
    perms = obj.perms
    if perms is None:
        return False
    offset = {Op.USE: 0, Op.MANAGE: 1, Op.ADMIN: 2}.get(op)
    if offset is None:
        return False
    if obj.uid == caller.uid and perms.bits[offset]:
        return True
    if obj.gid in caller.groups and perms.bits[3 + offset]:
        return True
    return bool(perms.bits[6 + offset])


def lock_blocks(lock: int, op: Op) -> bool:
    """A lock at level L denies operations whose bit value is >= L."""
    return lock > 0 and int(op) >= lock


@dataclass
class AuthRequest:
    caller: Caller
    rules: list[AclRule]
    failures: list[str] = field(default_factory=list)

    def add(self, op: Op, obj: ObjectAuth, *, check_lock: bool = True) -> None:
        if check_lock and lock_blocks(obj.lock, op):
            if self.caller.is_admin:
                self.failures.append(f"{obj.type} is locked. [{obj.oid}]")
            else:
                self.failures.append(self._denied(op, obj))
            return
        if self.caller.is_admin:
            return
        if op == Op.USE and obj.type == "USER" and obj.oid == self.caller.uid:
            return
        if obj.type == "GROUP" and op == Op.USE and obj.oid in self.caller.groups:
            return
        if op != Op.CREATE and bits_allow(self.caller, obj, op):
            return
        if _acl_allows(self.caller, self.rules, obj, op):
            return
        self.failures.append(self._denied(op, obj))

    @staticmethod
    def _denied(op: Op, obj: ObjectAuth) -> str:
        suffix = f" [{obj.oid}]" if obj.oid != -1 else ""
        return f"Not authorized to perform {op.name} {obj.type}{suffix}"

    def check(self) -> None:
        if self.failures:
            raise authorization("; ".join(self.failures))

    def error(self) -> OneError | None:
        return authorization("; ".join(self.failures)) if self.failures else None


def authorize(caller: Caller, rules: list[AclRule], op: Op, obj: ObjectAuth,
              *, check_lock: bool = True) -> None:
    req = AuthRequest(caller, rules)
    req.add(op, obj, check_lock=check_lock)
    req.check()


def new_object_perms(owner_uid: int, owner_gid: int, umask: int,
                     enable_other: bool) -> Permissions:
    """oned's set_umask: base 777 for oneadmin-owned objects, else 666 or 660."""
    if owner_uid == 0 or owner_gid == 0:
        base = 0o777
    else:
        base = 0o666 if enable_other else 0o660
    return Permissions.from_umask(umask, base)
