"""one.vm.*, one.vmpool.info, one.vmpool.infoextended and one.template.instantiate
adapters (vms.md §4.7, §5.2)."""

from __future__ import annotations

from oned_images.domain.permissions import Caller
from oned_images.rpc.wire import Params


async def allocate(app, caller: Caller, p: Params) -> int:
    text = p.str(1)
    return await app.vms.allocate(caller, text, p.opt_bool(2, False))


async def info(app, caller: Caller, p: Params):
    oid = p.int(1)
    if caller.is_admin and p.has(2):
        p.bool(2)  # decrypt: no VM_ENCRYPTED_ATTR are configured, nothing to decrypt
    return await app.vms.info(caller, oid)


async def rename(app, caller: Caller, p: Params) -> int:
    return await app.vms.rename(caller, p.int(1), p.str(2))


async def chmod(app, caller: Caller, p: Params) -> int:
    oid = p.int(1)
    return await app.vms.chmod(caller, oid, [p.int(i) for i in range(2, 11)])


async def chown(app, caller: Caller, p: Params) -> int:
    return await app.vms.chown(caller, p.int(1), p.int(2), p.int(3))


async def lock(app, caller: Caller, p: Params) -> int:
    oid, level = p.int(1), p.int(2)
    return await app.vms.lock(caller, oid, level, p.opt_bool(3, False))


async def unlock(app, caller: Caller, p: Params) -> int:
    return await app.vms.unlock(caller, p.int(1))


async def deploy(app, caller: Caller, p: Params) -> int:
    oid, hid = p.int(1), p.int(2)
    enforce = p.opt_bool(3, False)
    ds_id = p.opt_int(4, -1)
    extra = p.str(5) if p.has(5) else ""
    return await app.vms.deploy(caller, oid, hid, enforce, ds_id, extra)


async def action(app, caller: Caller, p: Params) -> int:
    name, oid = p.str(1), p.int(2)
    return await app.vms.action(caller, name, oid)


async def recover(app, caller: Caller, p: Params) -> int:
    return await app.vms.recover(caller, p.int(1), p.int(2))


async def _pool(app, caller: Caller, p: Params, extended: bool):
    flag, start, end, state = p.int(1), p.int(2), p.int(3), p.int(4)
    query = p.str(5) if p.has(5) else ""
    return await app.vms.pool_info(caller, flag, start, end, state, query, extended)


async def pool_info(app, caller: Caller, p: Params):
    return await _pool(app, caller, p, False)


async def pool_info_extended(app, caller: Caller, p: Params):
    return await _pool(app, caller, p, True)


async def instantiate(app, caller: Caller, p: Params) -> int:
    # all five parameters are required: 4 are a fault (vms.md §11 claim 23)
    tid, name, hold, extra = p.int(1), p.str(2), p.bool(3), p.str(4)
    persistent = p.bool(5)
    return await app.vms.instantiate(caller, tid, name, hold, extra, persistent)


# ------------------------------------------------------------------ disk operations
async def disk_snapshot_create(app, caller: Caller, p: Params) -> int:
    oid, disk_id, name = p.int(1), p.int(2), p.str(3)
    return await app.disk_ops.snapshots.create(caller, oid, disk_id, name)


async def disk_snapshot_revert(app, caller: Caller, p: Params) -> int:
    oid, disk_id, sid = p.int(1), p.int(2), p.int(3)
    return await app.disk_ops.snapshots.revert(caller, oid, disk_id, sid)


async def disk_snapshot_delete(app, caller: Caller, p: Params) -> int:
    oid, disk_id, sid = p.int(1), p.int(2), p.int(3)
    return await app.disk_ops.snapshots.delete(caller, oid, disk_id, sid)


async def disk_snapshot_rename(app, caller: Caller, p: Params) -> int:
    oid, disk_id, sid, name = p.int(1), p.int(2), p.int(3), p.str(4)
    return await app.disk_ops.snapshots.rename(caller, oid, disk_id, sid, name)


async def disk_saveas(app, caller: Caller, p: Params) -> int:
    # all five parameters are required: 4 are a fault (vms.md §5.9)
    oid, disk_id, name, type_text, sid = p.int(1), p.int(2), p.str(3), p.str(4), p.int(5)
    return await app.disk_ops.saveas.saveas(caller, oid, disk_id, name, type_text, sid)


async def attach(app, caller: Caller, p: Params) -> int:
    oid, text = p.int(1), p.str(2)
    return await app.disk_ops.hotplug.attach(caller, oid, text)


async def detach(app, caller: Caller, p: Params) -> int:
    oid, disk_id = p.int(1), p.int(2)
    return await app.disk_ops.hotplug.detach(caller, oid, disk_id)
