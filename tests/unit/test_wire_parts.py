"""A reply of JOIN_LIMIT bytes or more is left in its parts (rpc/wire.py Parts): the
same bytes as the joined reply, its bodies the listing's own objects (not copied), and
/metrics counts it as the success it is."""

from __future__ import annotations

import xmlrpc.client

from oned_images.metrics import call_outcome
from oned_images.rpc import wire
from oned_images.xmldoc.served import Served

HEAD = (b'<?xml version="1.0" encoding="UTF-8"?>\r\n<methodResponse>\r\n<params>\r\n'
        b"<param><value><array><data>\r\n<value><boolean>1</boolean></value>\r\n"
        b"<value><string>&lt;IMAGE_POOL&gt;")
TAIL = (b"&lt;/IMAGE_POOL&gt;</string></value>\r\n<value><i4>0</i4></value>\r\n"
        b"</data></array></value></param>\r\n</params>\r\n</methodResponse>\r\n")


def bodies(count: int) -> list[bytes]:
    return [b"&lt;IMAGE&gt;&lt;ID&gt;%d&lt;/ID&gt;%s&lt;/IMAGE&gt;" % (n, b"x" * 3000)
            for n in range(count)]


def test_a_large_listing_is_its_parts_with_the_joined_reply_s_bytes():
    listed = bodies(400)
    reply = wire.success(Served.pool("IMAGE_POOL", listed))
    assert isinstance(reply, wire.Parts)
    whole = HEAD + b"".join(listed) + TAIL
    assert reply.joined() == whole and len(reply) == len(whole) >= wire.JOIN_LIMIT
    assert all(p is b for p, b in zip(reply.parts[6:406], listed, strict=True))
    assert reply.prefix(300).startswith(HEAD) and whole.startswith(reply.prefix(300))
    assert reply.prefix(10 ** 9) == whole
    assert call_outcome(reply.prefix(256)) == ("success", 0)
    assert xmlrpc.client.loads(whole)[0][0][1].count("<IMAGE>") == 400


def test_a_smaller_listing_is_joined():
    listed = bodies(10)
    assert wire.success(Served.pool("IMAGE_POOL", listed)) == HEAD + b"".join(listed) + TAIL
