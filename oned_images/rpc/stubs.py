"""Pools the image clients read but this daemon has nothing in (api.md §8.2).

The CLI's ``oneimage show`` lists VMs, ``oneimage orphans`` lists templates and
FireEdge reads the zone endpoint; empty but well-formed answers keep them working.
"""

from __future__ import annotations

from oned_images.domain.permissions import Caller
from oned_images.errors import api
from oned_images.rpc.wire import Params

#: VirtualMachinePoolInfo's state argument: -2 (any) .. CLONING_FAILURE (11).
VM_STATES = range(-2, 12)


async def vmpool_info(app, caller: Caller, p: Params) -> str:
    flag = p.int(1)
    p.int(2)
    p.int(3)
    state = p.int(4)
    if p.has(5):
        p.str(5)
    if state not in VM_STATES:
        raise api("Incorrect filter_flag, state")
    if flag < -4:
        raise api("Incorrect filter_flag")
    return "<VM_POOL></VM_POOL>"



async def zonepool_info(app, caller: Caller, p: Params) -> str:
    port = app.port or app.config.port
    return (
        "<ZONE_POOL><ZONE><ID>0</ID><NAME>OpenNebula</NAME><STATE>0</STATE><TEMPLATE>"
        f"<ENDPOINT><![CDATA[http://localhost:{port}/RPC2]]></ENDPOINT></TEMPLATE>"
        "<SERVER_POOL></SERVER_POOL></ZONE></ZONE_POOL>"
    )

