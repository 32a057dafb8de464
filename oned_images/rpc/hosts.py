"""one.host.*, one.hostpool.info, one.cluster.info and one.clusterpool.info adapters."""

from __future__ import annotations

from oned_images.domain.permissions import Caller
from oned_images.rpc.wire import Params


async def allocate(app, caller: Caller, p: Params) -> int:
    # the cluster id is required: 3 parameters are a fault (vms.md §6.1)
    name, im_mad, vm_mad, cluster_id = p.str(1), p.str(2), p.str(3), p.int(4)
    return await app.hosts.allocate(caller, name, im_mad, vm_mad, cluster_id)


async def delete(app, caller: Caller, p: Params) -> int:
    return await app.hosts.delete(caller, p.int(1))


async def status(app, caller: Caller, p: Params) -> int:
    return await app.hosts.status(caller, p.int(1), p.int(2))


async def update(app, caller: Caller, p: Params) -> int:
    oid, text = p.int(1), p.str(2)
    return await app.hosts.update(caller, oid, text, p.opt_int(3, 0))


async def rename(app, caller: Caller, p: Params) -> int:
    return await app.hosts.rename(caller, p.int(1), p.str(2))


async def info(app, caller: Caller, p: Params) -> str:
    oid = p.int(1)
    if caller.is_admin and p.has(2):
        p.bool(2)  # decrypt: hosts carry no encrypted attributes here
    return await app.hosts.info(caller, oid)


async def pool_info(app, caller: Caller, p: Params) -> str:
    return await app.hosts.pool_info(caller)


async def cluster_info(app, caller: Caller, p: Params) -> str:
    oid = p.int(1)
    if caller.is_admin and p.has(2):
        p.bool(2)
    return await app.clusters.info(caller, oid)


async def cluster_pool_info(app, caller: Caller, p: Params) -> str:
    return await app.clusters.pool_info(caller)
