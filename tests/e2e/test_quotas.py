"""Datastore quotas (api.md §6.7, §8.3): limits per user and group, default quotas,
oned's refusal texts, and the charges of allocate, clone, chown and delete, each in the
transaction of the image change."""

from __future__ import annotations

import threading
import xmlrpc.client

import pytest

from tests.support.daemon import quota_drift, wait_for
from tests.support.seed import (
    call,
    dummy_datastore,
    fails,
    group,
    info,
    num,
    ok,
    section,
    unique,
    user,
    wait_state,
)

AUTHZ, NO_EXISTS, ACTION = 512, 1024, 2048
EMPTY_OTHERS = "<NETWORK_QUOTA></NETWORK_QUOTA><VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA>"


def entry(ds: int, images: str, images_used: str, size: str, size_used: str) -> str:
    return (f"<DATASTORE><ID><![CDATA[{ds}]]></ID><IMAGES><![CDATA[{images}]]></IMAGES>"
            f"<IMAGES_USED><![CDATA[{images_used}]]></IMAGES_USED><SIZE><![CDATA[{size}]]>"
            f"</SIZE><SIZE_USED><![CDATA[{size_used}]]></SIZE_USED></DATASTORE>")


def dsq(*entries: str) -> str:
    return "<DATASTORE_QUOTA>" + "".join(entries) + "</DATASTORE_QUOTA>"


def defaults_doc(daemon, method: str, *args, session: str | None = None) -> str:
    """A DEFAULT_*_QUOTAS reply (no XSD has it as a root: the tests compare it with the
    section of a USER / GROUP document, which is validated)."""
    reply = call(daemon, method, *args, session=session)
    assert len(reply) == 3 and reply[0] is True and reply[2] == 0, reply
    return reply[1]


def user_quota(daemon, uid: int) -> str:
    return section(ok(daemon, "one.user.info", uid), "DATASTORE_QUOTA")


def group_quota(daemon, gid: int) -> str:
    return section(ok(daemon, "one.group.info", gid), "DATASTORE_QUOTA")


def datablock(daemon, ds: int, session: str, size: int = 10, name: str | None = None):
    """The whole reply of a DATABLOCK allocate as ``session`` (mkfs by the dummy driver)."""
    text = f'NAME="{name or unique("q")}"\nTYPE="DATABLOCK"\nSIZE="{size}"'
    return call(daemon, "one.image.allocate", text, ds, session=session)


def allocated(daemon, ds: int, session: str, size: int = 10) -> int:
    reply = datablock(daemon, ds, session, size)
    assert reply[0] is True, reply
    return wait_state_id(daemon, reply[1])


def wait_state_id(daemon, oid: int) -> int:
    wait_state(daemon, oid, 1)
    return oid


@pytest.fixture(scope="module")
def qds(daemon):
    return dummy_datastore(daemon, "quota-ds")


# ------------------------------------------------------------------ limits
def test_user_limits_on_allocate(daemon, qds):
    uid, s = user(daemon)
    assert user_quota(daemon, uid) == dsq()
    assert ok(daemon, "one.user.quota", uid,
              f"DATASTORE = [ ID = {qds}, IMAGES = 2, SIZE = 100 ]") == uid
    assert user_quota(daemon, uid) == dsq(entry(qds, "2", "0", "100", "0"))
    # SIZE is checked before IMAGES
    assert fails(daemon, "one.image.allocate", 'NAME="big"\nTYPE="DATABLOCK"\nSIZE="101"',
                 qds, session=s) == (
        f"[one.image.allocate] User [{uid}] : user [{uid}] limit of 100 reached for SIZE "
        f"quota in DATASTORE with ID: {qds}.", AUTHZ, -1)
    allocated(daemon, qds, s, 60)
    allocated(daemon, qds, s, 40)
    assert user_quota(daemon, uid) == dsq(entry(qds, "2", "2", "100", "100"))
    assert fails(daemon, "one.image.allocate", 'NAME="third"\nTYPE="DATABLOCK"\nSIZE="0"',
                 qds, session=s) == (
        f"[one.image.allocate] User [{uid}] : user [{uid}] limit of 2 reached for IMAGES "
        f"quota in DATASTORE with ID: {qds}.", AUTHZ, -1)
    # the refusal took no id and changed no counter; other datastores are not limited
    assert user_quota(daemon, uid) == dsq(entry(qds, "2", "2", "100", "100"))
    other = dummy_datastore(daemon)
    allocated(daemon, other, s, 500)
    assert user_quota(daemon, uid) == dsq(entry(qds, "2", "2", "100", "100"),
                                          entry(other, "-1", "1", "-1", "500"))
    # the users group is charged as well (no limit: -1, the default, which is none)
    assert group_quota(daemon, 1).count(f"<ID><![CDATA[{qds}]]></ID>") == 1
    # raising the limit keeps the counters; pyone reads the document
    # (a limit left out of the new vector goes back to -1)
    ok(daemon, "one.user.quota", uid, f"DATASTORE = [ ID = {qds}, IMAGES = 3 ]")
    assert user_quota(daemon, uid) == dsq(entry(qds, "3", "2", "-1", "100"),
                                          entry(other, "-1", "1", "-1", "500"))
    q = daemon.client().user.info(uid).DATASTORE_QUOTA.DATASTORE
    assert [(d.ID, d.IMAGES, d.IMAGES_USED, d.SIZE, d.SIZE_USED) for d in q] == [
        (str(qds), "3", "2", "-1", "100"), (str(other), "-1", "1", "-1", "500")]


def test_oneadmin_is_never_accounted(daemon, qds):
    before = ok(daemon, "one.user.info", 0)
    ok(daemon, "one.image.allocate", 'NAME="adm-q"\nTYPE="DATABLOCK"\nSIZE="5"', qds)
    assert section(ok(daemon, "one.user.info", 0), "DATASTORE_QUOTA") == dsq()
    assert section(ok(daemon, "one.group.info", 0), "DATASTORE_QUOTA") == dsq()
    assert ok(daemon, "one.user.info", 0) == before


# ------------------------------------------------------------------ charges
def test_delete_releases_and_the_entry_goes(daemon, qds):
    uid, s = user(daemon)
    iid = allocated(daemon, qds, s, 7)
    assert user_quota(daemon, uid) == dsq(entry(qds, "-1", "1", "-1", "7"))
    ok(daemon, "one.image.delete", iid, session=s)
    wait_for(lambda: call(daemon, "one.image.info", iid)[0] is False)
    # no usage and only default limits left: Quota::cleanup_quota drops the entry
    assert user_quota(daemon, uid) == dsq()
    # with a limit set, the entry stays with its counters at 0
    ok(daemon, "one.user.quota", uid, f'DATASTORE = [ ID = "{qds}", SIZE = "50" ]')
    iid = allocated(daemon, qds, s, 7)
    ok(daemon, "one.image.delete", iid, True, session=s)
    wait_for(lambda: call(daemon, "one.image.info", iid)[0] is False)
    assert user_quota(daemon, uid) == dsq(entry(qds, "-1", "0", "50", "0"))


def test_chown_moves_the_usage(daemon, qds):
    a, sa = user(daemon)
    b, _ = user(daemon)
    gid = group(daemon)
    iid = allocated(daemon, qds, sa, 30)
    ok(daemon, "one.user.quota", b, f"DATASTORE = [ ID = {qds}, SIZE = 20 ]")
    assert fails(daemon, "one.image.chown", iid, b, -1) == (
        f"[one.image.chown] User [0] : user [{b}] limit of 20 reached for SIZE quota in "
        f"DATASTORE with ID: {qds}.", AUTHZ, -1)
    assert num(info(daemon, iid), "UID") == a
    assert user_quota(daemon, a) == dsq(entry(qds, "-1", "1", "-1", "30"))
    ok(daemon, "one.user.quota", b, f"DATASTORE = [ ID = {qds}, SIZE = 30 ]")
    ok(daemon, "one.image.chown", iid, b, gid)
    assert user_quota(daemon, a) == dsq()
    assert user_quota(daemon, b) == dsq(entry(qds, "-1", "1", "30", "30"))
    assert group_quota(daemon, gid) == dsq(entry(qds, "-1", "1", "-1", "30"))
    # only the side that changes moves: a group-only chown leaves the user's counters
    ok(daemon, "one.image.chown", iid, -1, 1)
    assert user_quota(daemon, b) == dsq(entry(qds, "-1", "1", "30", "30"))
    assert group_quota(daemon, gid) == dsq()


def test_clone_charges_the_caller(daemon, qds):
    uid, s = user(daemon)
    src = allocated(daemon, qds, s, 25)
    ok(daemon, "one.user.quota", uid, f"DATASTORE = [ ID = {qds}, SIZE = 60 ]")
    new = ok(daemon, "one.image.clone", src, unique("qc"), session=s)
    wait_state(daemon, new, 1)
    assert user_quota(daemon, uid) == dsq(entry(qds, "-1", "2", "60", "50"))
    assert fails(daemon, "one.image.clone", src, unique("qc"), session=s) == (
        f"[one.image.clone] User [{uid}] : user [{uid}] limit of 60 reached for SIZE quota "
        f"in DATASTORE with ID: {qds}.", AUTHZ, -1)
    assert user_quota(daemon, uid) == dsq(entry(qds, "-1", "2", "60", "50"))


def test_group_quota(daemon, qds):
    gid = group(daemon)
    # (also in "users", whose ACL lets them create images)
    u1, s1 = user(daemon, groups=[gid, 1])
    u2, s2 = user(daemon, groups=[gid, 1])
    assert ok(daemon, "one.group.quota", gid, f"DATASTORE=[ID={qds},IMAGES=1]") == gid
    allocated(daemon, qds, s1, 3)
    assert fails(daemon, "one.image.allocate", 'NAME="g2"\nTYPE="DATABLOCK"\nSIZE="3"', qds,
                 session=s2) == (
        f"[one.image.allocate] User [{u2}] : group [{gid}] limit of 1 reached for IMAGES "
        f"quota in DATASTORE with ID: {qds}.", AUTHZ, -1)
    # the user's charge was rolled back with the group's refusal
    assert user_quota(daemon, u2) == dsq()
    assert group_quota(daemon, gid) == dsq(entry(qds, "1", "1", "-1", "3"))
    pool = ok(daemon, "one.grouppool.info")
    assert (f"<QUOTAS><ID>{gid}</ID>{dsq(entry(qds, '1', '1', '-1', '3'))}{EMPTY_OTHERS}"
            "</QUOTAS>") in pool
    assert (f"<QUOTAS><ID>{u1}</ID>{dsq(entry(qds, '-1', '1', '-1', '3'))}{EMPTY_OTHERS}"
            "</QUOTAS>") in ok(daemon, "one.userpool.info")


# ------------------------------------------------------------------ defaults
def test_default_quotas(fresh_daemon):
    d = fresh_daemon()
    ds = dummy_datastore(d)
    empty = f"<DATASTORE_QUOTA></DATASTORE_QUOTA>{EMPTY_OTHERS}"
    assert defaults_doc(d, "one.userquota.info") == f"<DEFAULT_USER_QUOTAS>{empty}</DEFAULT_USER_QUOTAS>"
    assert defaults_doc(d, "one.groupquota.info") == (
        f"<DEFAULT_GROUP_QUOTAS>{empty}</DEFAULT_GROUP_QUOTAS>")
    doc = defaults_doc(d, "one.userquota.update", f"DATASTORE = [ ID = {ds}, IMAGES = 1 ]")
    # an omitted limit of a default quota is -2 (unlimited)
    assert doc == (f"<DEFAULT_USER_QUOTAS>{dsq(entry(ds, '1', '0', '-2', '0'))}{EMPTY_OTHERS}"
                   "</DEFAULT_USER_QUOTAS>")
    assert defaults_doc(d, "one.userquota.info") == doc
    uid, s = user(d)
    assert section(ok(d, "one.user.info", uid), "DEFAULT_USER_QUOTAS") == doc
    assert ok(d, "one.userpool.info").endswith(doc + "</USER_POOL>")
    allocated(d, ds, s, 1)
    assert fails(d, "one.image.allocate", 'NAME="d2"\nTYPE="DATABLOCK"\nSIZE="1"', ds,
                 session=s) == (
        f"[one.image.allocate] User [{uid}] : user [{uid}] limit of 1 reached for IMAGES "
        f"quota in DATASTORE with ID: {ds}.", AUTHZ, -1)
    # -2 on the user's own quota: unlimited whatever the default says
    ok(d, "one.user.quota", uid, f"DATASTORE = [ ID = {ds}, IMAGES = -2 ]")
    allocated(d, ds, s, 1)
    assert section(ok(d, "one.user.info", uid), "DATASTORE_QUOTA") == dsq(
        entry(ds, "-2", "2", "-1", "2"))
    # group defaults, and who may change them
    gdoc = defaults_doc(d, "one.groupquota.update", f"DATASTORE = [ ID = {ds}, SIZE = 1024000 ]")
    assert gdoc == (f"<DEFAULT_GROUP_QUOTAS>{dsq(entry(ds, '-2', '0', '1024000', '0'))}"
                    f"{EMPTY_OTHERS}</DEFAULT_GROUP_QUOTAS>")
    assert section(ok(d, "one.group.info", 1), "DEFAULT_GROUP_QUOTAS") == gdoc
    assert ok(d, "one.grouppool.info").endswith(gdoc + "</GROUP_POOL>")
    ok(d, "one.user.quota", uid, f"DATASTORE = [ ID = {ds}, IMAGES = -1 ]")
    ok(d, "one.datastore.update", ds, 'DATASTORE_CAPACITY_CHECK="NO"', 1)
    big = datablock(d, ds, s, 1024001)
    assert big[1:3] == [
        f"[one.image.allocate] User [{uid}] : user [{uid}] limit of 1 reached for IMAGES "
        f"quota in DATASTORE with ID: {ds}.", AUTHZ]
    ok(d, "one.user.quota", uid, f"DATASTORE = [ ID = {ds}, IMAGES = -2 ]")
    assert datablock(d, ds, s, 1024001)[1:3] == [
        f"[one.image.allocate] User [{uid}] : group [1] limit of 1.024e+06 reached for SIZE "
        f"quota in DATASTORE with ID: {ds}.", AUTHZ]
    for method in ("one.userquota.update", "one.groupquota.update"):
        assert fails(d, method, "DATASTORE=[ID=1,IMAGES=1]", session=s) == (
            f"[{method}] User [{uid}] : The default quotas can only be updated by users in "
            "the oneadmin group.", AUTHZ, -1)
        assert fails(d, method, "DATASTORE=[ID=1,IMAGES=-1]") == (
            f"[{method}] Negative limits or bad format in quota DATASTORE = [ ID=1,IMAGES=-1 ]",
            ACTION, -1)
    # any user may read the defaults
    assert defaults_doc(d, "one.userquota.info", session=s) == doc


# ------------------------------------------------------------------ who and what
def test_setting_quotas_rules_and_errors(daemon, qds):
    uid, s = user(daemon)
    m, g = "[one.user.quota]", "[one.group.quota]"
    assert fails(daemon, "one.user.quota", uid, "DATASTORE=[ID=1,IMAGES=1]", session=s) == (
        f"{m} User [{uid}] : Not authorized to perform ADMIN USER [{uid}].", AUTHZ, -1)
    assert fails(daemon, "one.group.quota", 1, "DATASTORE=[ID=1,IMAGES=1]", session=s) == (
        f"{g} User [{uid}] : Not authorized to perform ADMIN GROUP [1].", AUTHZ, -1)
    assert fails(daemon, "one.user.quota", 0, "DATASTORE=[ID=1,IMAGES=1]") == (
        f"{m} Cannot set quotas for oneadmin user", ACTION, -1)
    assert fails(daemon, "one.group.quota", 0, "DATASTORE=[ID=1,IMAGES=1]") == (
        f"{g} Cannot set quotas for oneadmin group", ACTION, -1)
    assert fails(daemon, "one.user.quota", 9999, "DATASTORE=[ID=1,IMAGES=1]") == (
        f"{m} Error getting user [9999].", NO_EXISTS, 9999)
    assert fails(daemon, "one.group.quota", 9999, "DATASTORE=[ID=1,IMAGES=1]") == (
        f"{g} User [0] not authorized to perform action on group.", AUTHZ, -1)
    for bad in ("DATASTORE=[ID=1,IMAGES=-3]", "DATASTORE=[ID=x,IMAGES=1]",
                "DATASTORE=[IMAGES=1]", "DATASTORE=[ID=1,SIZE=lots]"):
        shown = ",".join(sorted(bad[len("DATASTORE=["):-1].split(",")))
        assert fails(daemon, "one.user.quota", uid, bad) == (
            f"{m} Negative limits or bad format in quota DATASTORE = [ {shown} ]", ACTION, -1)
    assert fails(daemon, "one.user.quota", uid, "DATASTORE") == (
        f"{m} Parse error: syntax error, unexpected $end, expecting EQUAL or EQUAL_EMPTY at "
        "line 0, columns 1:10", ACTION, -1)
    assert user_quota(daemon, uid) == dsq()
    # several datastores at once, XML form, pyone
    ok(daemon, "one.user.quota", uid,
       "<TEMPLATE><DATASTORE><ID>7</ID><IMAGES>4</IMAGES></DATASTORE>"
       "<DATASTORE><ID>8</ID><SIZE>2.5</SIZE></DATASTORE></TEMPLATE>")
    assert user_quota(daemon, uid) == dsq(entry(7, "4", "0", "-1", "0"),
                                          entry(8, "-1", "0", "2.50", "0"))
    # pyone: a bare {"DATASTORE": …} becomes the XML root, so no DATASTORE vector
    # reaches the call (oned ignores it the same way); {"TEMPLATE": …} is the way
    daemon.client().user.quota(uid, {"DATASTORE": {"ID": 7, "IMAGES": -1}})
    assert "<ID><![CDATA[7]]></ID>" in user_quota(daemon, uid)
    daemon.client().user.quota(uid, {"TEMPLATE": {"DATASTORE": {"ID": 7, "IMAGES": -1}}})
    assert user_quota(daemon, uid) == dsq(entry(8, "-1", "0", "2.50", "0"))
    gid = group(daemon)
    daemon.client().group.quota(gid, {"TEMPLATE": {"DATASTORE": {"ID": qds, "SIZE": 5}}})
    assert group_quota(daemon, gid) == dsq(entry(qds, "-1", "0", "5", "0"))


# ------------------------------------------------------------------ races
def test_concurrent_allocates_against_a_limit(daemon, qds):
    uid, s = user(daemon)
    k, n = 3, 10
    ok(daemon, "one.user.quota", uid, f"DATASTORE = [ ID = {qds}, IMAGES = {k} ]")
    replies: list = []
    start = threading.Barrier(n)

    def one_allocate(i: int) -> None:
        proxy = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
        start.wait()
        replies.append(proxy.one.image.allocate(
            s, f'NAME="race-{i}"\nTYPE="DATABLOCK"\nSIZE="1"', qds))

    threads = [threading.Thread(target=one_allocate, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(replies) == n
    won = [r for r in replies if r[0] is True]
    lost = [r for r in replies if r[0] is False]
    assert len(won) == k
    assert {r[1] for r in lost} == {
        f"[one.image.allocate] User [{uid}] : user [{uid}] limit of {k} reached for IMAGES "
        f"quota in DATASTORE with ID: {qds}."}
    assert user_quota(daemon, uid) == dsq(entry(qds, str(k), str(k), "-1", str(k)))


def test_quota_comes_before_the_persistent_only_check(fresh_daemon):
    # ImageAllocate: quota (step 9), then the DS_MAD_CONF PERSISTENT_ONLY rule (step 10)
    d = fresh_daemon('DS_MAD_CONF = [ NAME = "ponly", PERSISTENT_ONLY = "YES" ]\n')
    ds = ok(d, "one.datastore.allocate", 'NAME="p"\nDS_MAD="ponly"\nTM_MAD="dummy"\n'
            'DATASTORE_CAPACITY_CHECK="NO"', -1)
    uid, s = user(d)
    text = 'NAME="np"\nTYPE="DATABLOCK"\nSIZE="5"\nPERSISTENT="NO"'
    assert fails(d, "one.image.allocate", text, ds, session=s) == (
        "[one.image.allocate] Error allocating a new image. This Datastore only accepts "
        "persistent images.", 16384, -1)
    ok(d, "one.user.quota", uid, f"DATASTORE = [ ID = {ds}, SIZE = 4 ]")
    assert fails(d, "one.image.allocate", text, ds, session=s) == (
        f"[one.image.allocate] User [{uid}] : user [{uid}] limit of 4 reached for SIZE quota "
        f"in DATASTORE with ID: {ds}.", AUTHZ, -1)


def test_deleted_owner_keeps_no_quota_row(daemon, qds):
    from tests.support.seed import connect_db

    def rows(uid: int) -> int:
        conn, mark = connect_db(daemon)
        try:
            cur = conn.cursor()
            cur.execute(f"SELECT COUNT(*) FROM user_quotas WHERE user_oid = {mark}", (uid,))
            return cur.fetchone()[0]
        finally:
            conn.close()

    uid, s = user(daemon)
    iid = allocated(daemon, qds, s, 2)
    assert rows(uid) == 1
    ok(daemon, "one.user.delete", uid)
    assert rows(uid) == 0
    ok(daemon, "one.image.delete", iid)
    wait_for(lambda: call(daemon, "one.image.info", iid)[0] is False)
    assert rows(uid) == 0


def test_snapshot_revert_moves_the_size_charge(daemon, qds):
    # revert sets the image SIZE to the snapshot's; the owner's SIZE_USED follows
    from tests.support.seed import edit_body, register, snapshot, snapshots

    uid, s = user(daemon)
    oid = register(daemon, qds, size=30, extra='TYPE="DATABLOCK"\nPERSISTENT="YES"\n')
    ok(daemon, "one.image.chown", oid, uid, -1)
    assert user_quota(daemon, uid) == dsq(entry(qds, "-1", "1", "-1", "30"))
    edit_body(daemon, oid, SNAPSHOTS=snapshots(snapshot(0, size=5), snapshot(1, size=6),
                                               snapshot(2, size=30, active=True),
                                               mode="LINEAR"))
    assert ok(daemon, "one.image.snapshotrevert", oid, 1, session=s) == 1
    assert num(wait_state(daemon, oid, 1), "SIZE") == 6
    assert user_quota(daemon, uid) == dsq(entry(qds, "-1", "1", "-1", "6"))
    ok(daemon, "one.image.delete", oid, session=s)
    wait_for(lambda: call(daemon, "one.image.info", oid)[0] is False)
    assert user_quota(daemon, uid) == dsq()


def test_the_counters_this_module_left_are_what_a_recount_finds(daemon):
    """Every image charge and release above (allocate, clone, delete, chown, snapshot
    revert, refusals rolled back) left the counters where db fsck's recount puts them.
    Last in the module: it sees what all the tests before it did."""
    assert quota_drift(daemon) == []
