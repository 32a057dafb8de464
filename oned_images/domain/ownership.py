"""chmod and chown rules shared by images, datastores and templates (api.md §2.8-2.9)."""

from __future__ import annotations

from oned_images import errors
from oned_images.domain.identity import group_auth, user_auth
from oned_images.domain.permissions import AuthRequest, Caller, ObjectAuth, Op
from oned_images.model.objects import Group, Permissions, User


def chmod_plan(caller: Caller, auth: AuthRequest, obj: ObjectAuth, current: Permissions,
               values: list[int], enable_other: bool) -> Permissions:
    """Check a chmod request and return the new permissions.

    Order as oned: values equal to the current ADMIN/OTHER bits are dropped,
    the operation is ADMIN if an ADMIN bit still changes, the 'other' switch,
    authorization, then the -1..1 range check.
    """
    vals = list(values)
    for i in (2, 5, 8, 6, 7):
        if vals[i] == current.bits[i]:
            vals[i] = -1
    op = Op.ADMIN if any(vals[i] != -1 for i in (2, 5, 8)) else Op.MANAGE
    if any(vals[i] != -1 for i in (6, 7, 8)) and not enable_other and not caller.is_admin:
        raise errors.authorization("'other' permissions is disabled in oned.conf")
    auth.add(op, obj)
    auth.check()
    if any(v not in (-1, 0, 1) for v in vals):
        raise errors.internal("New permission values must be -1, 0 or 1")
    bits = [cur if v == -1 else v for cur, v in zip(current.bits, vals, strict=True)]
    return Permissions(bits)


def chown_plan(auth: AuthRequest, obj: ObjectAuth, uid: int, gid: int, user: User | None,
               group: Group | None) -> tuple[User | None, Group | None]:
    """Check a chown request; returns the new owner and group, None where nothing changes.

    oned asks MANAGE on the object, MANAGE on a new owner and USE on a new group; a
    "new" owner or group equal to the current one is no change and asks nothing.
    """
    new_user = user if user is not None and user.id != uid else None
    new_group = group if group is not None and group.id != gid else None
    auth.add(Op.MANAGE, obj)
    if new_user is not None:
        auth.add(Op.MANAGE, user_auth(new_user))
    if new_group is not None:
        auth.add(Op.USE, group_auth(new_group))
    auth.check()
    return new_user, new_group
