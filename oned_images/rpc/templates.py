"""one.template.* and one.templatepool.info adapters (vms.md §4.1); instantiate creates
a virtual machine and is in rpc/vms.py."""

from __future__ import annotations

from oned_images.domain.permissions import Caller
from oned_images.rpc.wire import Params


async def allocate(app, caller: Caller, p: Params) -> int:
    return await app.templates.allocate(caller, p.str(1))


async def info(app, caller: Caller, p: Params):
    oid = p.int(1)
    extended = p.opt_bool(2, False)
    if caller.is_admin and p.has(3):
        p.bool(3)  # decrypt: no VM_ENCRYPTED_ATTR are configured, nothing to decrypt
    return await app.templates.info(caller, oid, extended)


async def update(app, caller: Caller, p: Params) -> int:
    oid, text = p.int(1), p.str(2)
    return await app.templates.update(caller, oid, text, p.opt_int(3, 0))


async def delete(app, caller: Caller, p: Params) -> int:
    oid = p.int(1)
    return await app.templates.delete(caller, oid, p.opt_bool(2, False))


async def clone(app, caller: Caller, p: Params) -> int:
    oid, name = p.int(1), p.str(2)
    return await app.templates.clone(caller, oid, name, p.opt_bool(3, False))


async def chmod(app, caller: Caller, p: Params) -> int:
    oid = p.int(1)
    values = [p.int(i) for i in range(2, 11)]
    return await app.templates.chmod(caller, oid, values, p.opt_bool(11, False))


async def chown(app, caller: Caller, p: Params) -> int:
    return await app.templates.chown(caller, p.int(1), p.int(2), p.int(3))


async def rename(app, caller: Caller, p: Params) -> int:
    return await app.templates.rename(caller, p.int(1), p.str(2))


async def lock(app, caller: Caller, p: Params) -> int:
    oid, level = p.int(1), p.int(2)
    return await app.templates.lock(caller, oid, level, p.opt_bool(3, False))


async def unlock(app, caller: Caller, p: Params) -> int:
    return await app.templates.unlock(caller, p.int(1))


async def pool_info(app, caller: Caller, p: Params):
    flag, start, end = p.int(1), p.int(2), p.int(3)
    return await app.templates.pool_info(caller, flag, start, end)
