"""Pools the image clients read but this daemon has nothing in (api.md §8.2):
FireEdge reads the zone endpoint; a well-formed answer keeps it working.
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

