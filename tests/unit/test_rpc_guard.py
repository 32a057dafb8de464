"""The last-resort guard of the /RPC2 resource: whatever escapes dispatch still
gets a reply (in-process site on the real reactor, a real HTTP client)."""

from __future__ import annotations

import http.client

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from oned_images.rpc import wire
from oned_images.rpc.resource import RpcResource, RpcSite

pytestmark = pytest.mark.timeout(30)


def post(port: int, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
    resp = conn.getresponse()
    result = resp.status, resp.read()
    conn.close()
    return result


@pytest_twisted.ensureDeferred
async def test_an_exception_escaping_dispatch_still_gets_a_fault_reply(monkeypatch):
    async def broken(self, body, peer):
        raise RuntimeError("a bug")

    monkeypatch.setattr(RpcResource, "dispatch", broken)
    port = reactor.listenTCP(0, RpcSite(None, 1 << 20).guarded(), interface="127.0.0.1")
    try:
        status, reply = await threads.deferToThread(
            post, port.getHost().port, b"<methodCall><methodName>x</methodName></methodCall>")
    finally:
        await port.stopListening()
    assert (status, reply) == (200, wire.fault(-500, "Internal error"))
