"""Pools the image clients read but this daemon has nothing in (api.md §8.2).

The CLI's ``oneimage show`` lists VMs, ``oneimage orphans`` lists templates and
FireEdge reads the zone endpoint; empty but well-formed answers keep them working.
"""

from __future__ import annotations

from oned_images.domain.permissions import Caller
from oned_images.rpc.wire import Params


async def zonepool_info(app, caller: Caller, p: Params) -> str:
    port = app.port or app.config.port
    return (
        "<ZONE_POOL><ZONE><ID>0</ID><NAME>OpenNebula</NAME><STATE>0</STATE><TEMPLATE>"
        f"<ENDPOINT><![CDATA[http://localhost:{port}/RPC2]]></ENDPOINT></TEMPLATE>"
        "<SERVER_POOL></SERVER_POOL></ZONE></ZONE_POOL>"
    )

