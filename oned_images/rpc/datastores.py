"""one.datastore.* and one.datastorepool.info adapters."""

from __future__ import annotations

from oned_images.domain.permissions import Caller
from oned_images.rpc.wire import Params


async def allocate(app, caller: Caller, p: Params) -> int:
    text = p.str(1)
    return await app.datastores.allocate(caller, text, p.opt_int(2, -1))


async def delete(app, caller: Caller, p: Params) -> int:
    return await app.datastores.delete(caller, p.int(1))


async def info(app, caller: Caller, p: Params) -> str:
    return await app.datastores.info(caller, p.int(1))


async def update(app, caller: Caller, p: Params) -> int:
    oid, text = p.int(1), p.str(2)
    return await app.datastores.update(caller, oid, text, p.opt_int(3, 0))


async def chmod(app, caller: Caller, p: Params) -> int:
    oid = p.int(1)
    return await app.datastores.chmod(caller, oid, [p.int(i) for i in range(2, 11)])


async def chown(app, caller: Caller, p: Params) -> int:
    return await app.datastores.chown(caller, p.int(1), p.int(2), p.int(3))


async def rename(app, caller: Caller, p: Params) -> int:
    return await app.datastores.rename(caller, p.int(1), p.str(2))


async def enable(app, caller: Caller, p: Params) -> int:
    return await app.datastores.enable(caller, p.int(1), p.bool(2))


async def pool_info(app, caller: Caller, p: Params) -> str:
    return await app.datastores.pool_info(caller)
