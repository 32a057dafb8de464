"""chmod and chown rules shared by images and datastores (api.md §2.8-2.9)."""

from __future__ import annotations

from oned_images import errors
from oned_images.domain.permissions import AuthRequest, Caller, ObjectAuth, Op
from oned_images.model.objects import Permissions


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
