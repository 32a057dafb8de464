"""one.system.version / one.system.config adapters."""

from __future__ import annotations

from oned_images import ONE_VERSION
from oned_images.domain.permissions import Caller
from oned_images.rpc.wire import Params
from oned_images.xmldoc.config import configuration_xml


async def version(app, caller: Caller, p: Params) -> str:
    return ONE_VERSION


async def config(app, caller: Caller, p: Params) -> str:
    return configuration_xml(app.config, show_db=caller.gid == 0)
