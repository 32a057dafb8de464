"""one.imagepool.info end to end (api.md §3): filters for admins and users, id ranges,
pagination, ordering, the empty pool."""

from __future__ import annotations

import re

import pytest

from tests.support.seed import (
    fails,
    fault,
    ok,
    pool,
    pool_ids,
    register,
    start_daemon,
    user,
    wait_settled,
)

M = "one.imagepool.info"


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """A fresh daemon holding exactly images 0-7 (api.md §3.2's examples)."""
    d = start_daemon(tmp_path_factory.mktemp("pool8"))
    for _ in range(8):
        register(d, 1)
    yield d
    d.drop()


@pytest.mark.parametrize("args,expected", [
    ((-1, -1), [7, 6, 5, 4, 3, 2, 1, 0]),
    ((2, -1), [7, 6, 5, 4, 3, 2]),
    ((2, 5), [5, 4, 3, 2]),
    ((-1, 3), [7, 6, 5, 4, 3, 2, 1, 0]),
    ((5, 2), []),
    ((3, 3), [3]),
    ((0, -2), [7, 6]),
    ((2, -2), [5, 4]),
    ((6, -2), [1, 0]),
    ((8, -2), []),
    ((0, -200), [7, 6, 5, 4, 3, 2, 1, 0]),
    ((3, -3, -1), [4, 3, 2]),
    ((-1, -2), [7, 6]),
    ((-3, -2), [7, 6]),
    ((100, 200), []),
])
def test_ranges_and_pages(eight, args, expected):
    assert pool(eight, -2, *args) == expected


def test_empty_pool_document(eight):
    assert ok(eight, M, -2, 100, 200) == "<IMAGE_POOL></IMAGE_POOL>"


def test_pool_is_the_concatenation_of_the_info_documents(eight, one):
    body = ok(eight, M, -2, -1, -1)
    docs = "".join(ok(eight, "one.image.info", i) for i in range(7, -1, -1))
    assert body == f"<IMAGE_POOL>{docs}</IMAGE_POOL>"
    assert [i.ID for i in eight.client().imagepool.info(-2, 0, -3).IMAGE] == [7, 6, 5]


def test_bad_filter_and_missing_parameters(eight):
    assert fails(eight, M, -5, -1, -1) == ("[one.imagepool.info] Incorrect filter_flag",
                                           4096, -1)
    assert fault(eight, M, -2, -1) == (-501, "Not enough parameters")
    assert fault(eight, M, -2, -1, "x") == (
        -501, "Parameter that is supposed to be integer is not")
    # authentication comes first
    assert fails(eight, M, -2, -1, session="oneadmin:wrong") == (
        "[one.imagepool.info] User couldn't be authenticated, aborting call.", 256, -1)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """oneadmin: private P, G chowned to users with GROUP_U, O with OTHER_U;
    u1 and u2 (users) own one image each."""
    d = start_daemon(tmp_path_factory.mktemp("poolmix"))
    p = register(d, 1, name="private")
    g = register(d, 1, name="group-visible")
    ok(d, "one.image.chown", g, -1, 1)
    ok(d, "one.image.chmod", g, -1, -1, -1, 1, -1, -1, -1, -1, -1)
    o = register(d, 1, name="other-visible")
    ok(d, "one.image.chmod", o, -1, -1, -1, -1, -1, -1, 1, -1, -1)
    u1, s1 = user(d, "u1")
    u2, s2 = user(d, "u2")
    i1 = ok(d, "one.image.allocate", 'NAME="i1"\nTYPE="DATABLOCK"\nSIZE="0"', 1, session=s1)
    i2 = ok(d, "one.image.allocate", 'NAME="i2"\nTYPE="DATABLOCK"\nSIZE="0"', 1, session=s2)
    for oid in (i1, i2):
        wait_settled(d, oid)
    # a locked image is listed as usual
    ok(d, "one.image.lock", i2, 1, session=s2)
    d.ids = dict(P=p, G=g, O=o, I1=i1, I2=i2, u1=u1, u2=u2, s1=s1, s2=s2)
    yield d
    d.drop()


def names(d, *keys):
    return sorted((d.ids[k] for k in keys), reverse=True)


def test_admin_filters(mixed):
    d = mixed
    assert pool(d, -4) == names(d, "P", "O")
    assert pool(d, -3) == names(d, "P", "G", "O")
    assert pool(d, -2) == names(d, "P", "G", "O", "I1", "I2")
    assert pool(d, -1) == names(d, "P", "G", "O")
    assert pool(d, d.ids["u1"]) == names(d, "I1")
    assert pool(d, 0) == names(d, "P", "G", "O")
    assert pool(d, 999) == []


def test_user_filters(mixed):
    d = mixed
    s1 = d.ids["s1"]
    assert pool(d, -4, session=s1) == names(d, "G", "I1")
    assert pool(d, -3, session=s1) == names(d, "I1")
    assert pool(d, -2, session=s1) == names(d, "G", "O", "I1")
    assert pool(d, -1, session=s1) == names(d, "G", "I1")
    assert pool(d, 0, session=s1) == names(d, "G", "O")
    assert pool(d, d.ids["u1"], session=s1) == names(d, "I1")
    assert pool(d, d.ids["u2"], session=s1) == []
    # the user reads what the pool shows
    for oid in pool(d, -2, session=s1):
        assert ok(d, "one.image.info", oid, session=s1) == ok(d, "one.image.info", oid)


@pytest.mark.parametrize("who,flag", [("admin", -2), ("admin", -3), ("u1", -2),
                                       ("u1", -4), ("u1", 0)])
def test_pages_are_slices_of_the_listing(mixed, who, flag):
    """Every page, from every offset, in both orders, is that slice of the whole
    listing of the same filter: the same documents, byte for byte (a filtered page
    and an admin's are built by different paths: domain/pool_query.py)."""
    d = mixed
    session = d.ids["s1"] if who == "u1" else None
    kw = {"session": session} if session else {}
    for order in ("DESC", "ASC"):
        if session:
            ok(d, "one.user.update", d.ids["u1"], f'OPENNEBULA=[ API_LIST_ORDER="{order}" ]', 1)
        whole = ok(d, M, flag, -1, -1, **kw)
        docs = re.findall(r"<IMAGE>.*?</IMAGE>", whole, re.S)
        assert whole == "<IMAGE_POOL>" + "".join(docs) + "</IMAGE_POOL>"
        ids = pool(d, flag, **kw)
        assert len(docs) == len(ids) >= 2
        assert ids == sorted(ids, reverse=order == "DESC")
        for size in (2, 3, 4):  # end -1 is no page: every row
            for start in range(len(ids) + 1):
                page = ok(d, M, flag, start, -size, **kw)
                assert page == ("<IMAGE_POOL>" + "".join(docs[start:start + size])
                                + "</IMAGE_POOL>"), (order, size, start)
        if not session:
            break
    if session:
        ok(d, "one.user.update", d.ids["u1"], 'OPENNEBULA=[ API_LIST_ORDER="DESC" ]', 1)


def test_user_of_another_group(mixed):
    d = mixed
    gid = ok(d, "one.group.allocate", "outsiders")
    uid, session = user(d, "u3", groups=[gid])
    assert pool(d, -2, session=session) == names(d, "O")
    assert pool(d, -4, session=session) == []
    assert pool(d, -1, session=session) == []
    # a secondary group counts for group visibility
    ok(d, "one.user.addgroup", uid, 1)
    assert pool(d, -1, session=session) == names(d, "G")
    assert pool(d, -2, session=session) == names(d, "G", "O")


def test_pyone_pool(mixed):
    client = mixed.client("u1", "pw")
    assert [i.ID for i in client.imagepool.info(-2, -1, -1).IMAGE] == names(mixed, "G", "O",
                                                                             "I1")
    assert pool_ids(ok(mixed, M, -2, -1, -1, 7)) == names(mixed, "P", "G", "O", "I1", "I2")


def test_order_follows_api_list_order_of_the_user(mixed):
    d = mixed
    uid, session = user(d, "ascending")
    a = ok(d, "one.image.allocate", 'NAME="a"\nTYPE="DATABLOCK"\nSIZE="0"', 1, session=session)
    b = ok(d, "one.image.allocate", 'NAME="b"\nTYPE="DATABLOCK"\nSIZE="0"', 1, session=session)
    assert pool(d, -3, session=session) == [b, a]
    ok(d, "one.user.update", uid, 'OPENNEBULA=[ API_LIST_ORDER="ASC" ]', 1)
    assert pool(d, -3, session=session) == [a, b]
    assert pool(d, -2, session=session) == sorted(names(d, "G", "O") + [a, b])
    # pages follow that order
    assert pool(d, -2, 0, -2, session=session) == [d.ids["G"], d.ids["O"]]
    # oneadmin keeps the default: newest first
    assert pool(d, uid) == [b, a]


def test_a_listing_over_a_mebibyte_on_a_kept_alive_connection(tmp_path):
    """Replies from 1 MiB on have their headers written first and the document on the
    next reactor turn (rpc/resource.py SPLIT_WRITE): the same bytes, Content-Length
    right, and the connection serves the next call."""
    import http.client
    import xmlrpc.client

    from tests.support.daemon import ADMIN_PASSWORD

    d = start_daemon(tmp_path)
    words = " ".join(f"w{i}" for i in range(450))
    for _ in range(400):
        register(d, 1, extra=f'DESCRIPTION="{words}"\n')
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    session = f"oneadmin:{ADMIN_PASSWORD}"

    def call(method: str, *args) -> tuple[bytes, list]:
        conn.request("POST", "/RPC2", xmlrpc.client.dumps((session, *args), method),
                     {"Content-Type": "text/xml"})
        reply = conn.getresponse()
        body = reply.read()
        assert reply.status == 200
        assert reply.getheader("Content-Length") == str(len(body))
        assert reply.getheader("Content-Type") == "text/xml; charset=utf-8"
        return body, xmlrpc.client.loads(body)[0][0]

    try:
        big, value = call(M, -2, -1, -1)
        assert len(big) > 1 << 20 and value[0] is True
        again, _ = call(M, -2, -1, -1)
        assert again == big
        ids = pool_ids(value[1])
        assert len(ids) == 400
        # the pool is the images' documents one after the other (as below the threshold)
        docs = "".join(call("one.image.info", i)[1][1] for i in ids[:3])
        assert value[1].startswith("<IMAGE_POOL>" + docs)
    finally:
        conn.close()
        d.drop()
