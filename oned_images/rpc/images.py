"""one.image.* and one.imagepool.info adapters: unpack, call one verb, return.

Optional trailing parameters are read exactly when oned reads them: the
decrypt flag of info and the no_check_capacity flag of allocate only for
admins (a non-admin may send anything there).
"""

from __future__ import annotations

from oned_images.domain.permissions import Caller
from oned_images.rpc.wire import Params


async def allocate(app, caller: Caller, p: Params) -> int:
    text, ds_id = p.str(1), p.int(2)
    no_check = p.opt_bool(3, False) if caller.is_admin else False
    return await app.images.allocate(caller, text, ds_id, no_check)


async def clone(app, caller: Caller, p: Params) -> int:
    oid, name = p.int(1), p.str(2)
    return await app.images.clone(caller, oid, name, p.opt_int(3, -1))


async def delete(app, caller: Caller, p: Params) -> int:
    oid = p.int(1)
    return await app.images.delete(caller, oid, p.opt_bool(2, False))


async def enable(app, caller: Caller, p: Params) -> int:
    return await app.images.enable(caller, p.int(1), p.bool(2))


async def persistent(app, caller: Caller, p: Params) -> int:
    return await app.images.persistent(caller, p.int(1), p.bool(2))


async def chtype(app, caller: Caller, p: Params) -> int:
    return await app.images.chtype(caller, p.int(1), p.str(2))


async def update(app, caller: Caller, p: Params) -> int:
    oid, text = p.int(1), p.str(2)
    return await app.images.update(caller, oid, text, p.opt_int(3, 0))


async def chmod(app, caller: Caller, p: Params) -> int:
    oid = p.int(1)
    return await app.images.chmod(caller, oid, [p.int(i) for i in range(2, 11)])


async def chown(app, caller: Caller, p: Params) -> int:
    return await app.images.chown(caller, p.int(1), p.int(2), p.int(3))


async def rename(app, caller: Caller, p: Params) -> int:
    return await app.images.rename(caller, p.int(1), p.str(2))


async def snapshot_delete(app, caller: Caller, p: Params) -> int:
    return await app.images.snapshot(caller, p.int(1), p.int(2), "snap_delete")


async def snapshot_revert(app, caller: Caller, p: Params) -> int:
    return await app.images.snapshot(caller, p.int(1), p.int(2), "snap_revert")


async def snapshot_flatten(app, caller: Caller, p: Params) -> int:
    return await app.images.snapshot(caller, p.int(1), p.int(2), "snap_flatten")


async def restore(app, caller: Caller, p: Params) -> str:
    oid, ds_id, options = p.int(1), p.int(2), p.str(3)
    return await app.images.restore(caller, oid, ds_id, options)


async def lock(app, caller: Caller, p: Params) -> int:
    oid, level = p.int(1), p.int(2)
    return await app.images.lock(caller, oid, level, p.opt_bool(3, False))


async def unlock(app, caller: Caller, p: Params) -> int:
    return await app.images.unlock(caller, p.int(1))


async def info(app, caller: Caller, p: Params) -> str:
    oid = p.int(1)
    if caller.is_admin and p.has(2):
        p.bool(2)  # decrypt: no IMAGE_ENCRYPTED_ATTR is configured, nothing to decrypt
    return await app.images.info(caller, oid)


async def pool_info(app, caller: Caller, p: Params) -> str:
    flag, start, end = p.int(1), p.int(2), p.int(3)
    return await app.images.pool_info(caller, flag, start, end)
