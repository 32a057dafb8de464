"""one.user.*, one.userpool.info, one.group.*, one.grouppool.info, one.acl.info."""

from __future__ import annotations

from oned_images.domain import quotas
from oned_images.domain.permissions import Caller
from oned_images.errors import Fault
from oned_images.rpc.wire import Params


async def allocate(app, caller: Caller, p: Params) -> int:
    name, password, driver = p.str(1), p.str(2), p.str(3)
    gids: list[int] = []
    if p.has(4):
        raw = p.values[4]
        if not isinstance(raw, list) or not all(
                isinstance(g, int) and not isinstance(g, bool) for g in raw):
            raise Fault(-501, "Parameter that is supposed to be an array is not")
        gids = list(raw)
    return await app.identity.user_allocate(caller, name, password, driver, gids)


async def delete(app, caller: Caller, p: Params) -> int:
    return await app.identity.user_delete(caller, p.int(1))


async def passwd(app, caller: Caller, p: Params) -> int:
    return await app.identity.passwd(caller, p.int(1), p.str(2))


async def info(app, caller: Caller, p: Params) -> str:
    return await app.identity.user_info(caller, p.int(1))


async def update(app, caller: Caller, p: Params) -> int:
    uid, text = p.int(1), p.str(2)
    return await app.identity.user_update(caller, uid, text, p.opt_int(3, 0))


async def chgrp(app, caller: Caller, p: Params) -> int:
    return await app.identity.chgrp(caller, p.int(1), p.int(2))


async def addgroup(app, caller: Caller, p: Params) -> int:
    return await app.identity.addgroup(caller, p.int(1), p.int(2))


async def delgroup(app, caller: Caller, p: Params) -> int:
    return await app.identity.delgroup(caller, p.int(1), p.int(2))


async def login(app, caller: Caller, p: Params) -> str:
    username, token, valid = p.str(1), p.str(2), p.int(3)
    return await app.identity.login(caller, username, token, valid, p.opt_int(4, -1))


async def pool_info(app, caller: Caller, p: Params) -> str:
    return await app.identity.userpool_info(caller)


async def group_allocate(app, caller: Caller, p: Params) -> int:
    return await app.identity.group_allocate(caller, p.str(1))


async def group_delete(app, caller: Caller, p: Params) -> int:
    return await app.identity.group_delete(caller, p.int(1))


async def group_info(app, caller: Caller, p: Params) -> str:
    return await app.identity.group_info(caller, p.int(1))


async def group_update(app, caller: Caller, p: Params) -> int:
    gid, text = p.int(1), p.str(2)
    return await app.identity.group_update(caller, gid, text, p.opt_int(3, 0))


async def group_pool_info(app, caller: Caller, p: Params) -> str:
    return await app.identity.grouppool_info(caller)


async def acl_info(app, caller: Caller, p: Params) -> str:
    return app.identity.acl_info(caller)


async def quota(app, caller: Caller, p: Params) -> int:
    return await app.identity.user_quota(caller, p.int(1), p.str(2))


async def group_quota(app, caller: Caller, p: Params) -> int:
    return await app.identity.group_quota(caller, p.int(1), p.str(2))


async def userquota_info(app, caller: Caller, p: Params) -> str:
    return await app.identity.default_quota_info(quotas.USER)


async def userquota_update(app, caller: Caller, p: Params) -> str:
    return await app.identity.default_quota_update(caller, quotas.USER, p.str(1))


async def groupquota_info(app, caller: Caller, p: Params) -> str:
    return await app.identity.default_quota_info(quotas.GROUP)


async def groupquota_update(app, caller: Caller, p: Params) -> str:
    return await app.identity.default_quota_update(caller, quotas.GROUP, p.str(1))
