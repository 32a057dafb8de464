"""Object locks (one.<object>.lock / unlock, api.md §2.13): one set of rules for every
lockable kind (images, VM templates).  The caller authorizes MANAGE without the lock
check first; these functions decide what the new lock is."""

from __future__ import annotations

import secrets
import time

from oned_images import errors
from oned_images.domain.permissions import Caller
from oned_images.model.objects import Lock

#: requested level -> stored level (4 "ALL" is stored as USE, 1)
STORED_LEVEL = {1: 1, 2: 2, 3: 3, 4: 1}


def locked(caller: Caller, current: Lock | None, level: int, test: bool) -> Lock:
    """The lock after one.*.lock(level, test), or oned's refusal."""
    stored = STORED_LEVEL.get(level)
    if stored is None:
        raise errors.action("Wrong lock level specified")
    if current is not None:
        if test:
            raise errors.action(str(current.time))
        if current.owner != caller.uid and not caller.is_admin:
            raise errors.action("Error trying to lock the resource.")
    return Lock(stored, caller.uid, int(time.time()), secrets.randbelow(10000))


def unlocked(caller: Caller, current: Lock | None) -> None:
    """one.*.unlock: only the lock's owner or an admin may remove it (returns no lock)."""
    owner = current.owner if current else -1
    if not caller.is_admin and owner != caller.uid:
        raise errors.action("Cannot unlock: Lock is owned by another user")
    return None
