"""one.user.*, one.userpool.info, one.group.*, one.grouppool.info, one.acl.info and the
session forms (password, SHA-1 upgrade, login tokens, serveradmin server_cipher),
against the real daemon with pyone and plain xmlrpc.client (api.md §1.7-1.9, §8)."""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
import time
from pathlib import Path

import pyone
import pytest

from oned_images.domain.identity import server_cipher_token
from tests.conftest import unique
from tests.support.daemon import ADMIN_PASSWORD, backend, wait_for
from tests.support.replies import fails, ok

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
EMPTY_QUOTAS = ("<DATASTORE_QUOTA></DATASTORE_QUOTA><NETWORK_QUOTA></NETWORK_QUOTA>"
                "<VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA>")
AUTH, AUTHZ, NO_EXISTS, ACTION, API, INTERNAL = 256, 512, 1024, 2048, 4096, 8192


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()



def token_password(doc: str) -> str:
    match = re.search(r"<TOKEN_PASSWORD><!\[CDATA\[([0-9a-f]{64})\]\]></TOKEN_PASSWORD>", doc)
    assert match, doc
    return match.group(1)


def user_doc(uid: int, name: str, password_field: str, gid: int, gname: str,
             groups: list[int], template: str, tokens: str = "", driver: str = "core",
             extended: bool = True) -> str:
    body = (f"<USER><ID>{uid}</ID><GID>{gid}</GID><GROUPS>"
            + "".join(f"<ID>{g}</ID>" for g in groups)
            + f"</GROUPS><GNAME>{gname}</GNAME><NAME>{name}</NAME>"
            f"<PASSWORD><![CDATA[{password_field}]]></PASSWORD>"
            f"<AUTH_DRIVER><![CDATA[{driver}]]></AUTH_DRIVER><ENABLED>1</ENABLED>{tokens}"
            f"<TEMPLATE>{template}</TEMPLATE>")
    if extended:
        return (body + EMPTY_QUOTAS
                + f"<DEFAULT_USER_QUOTAS>{EMPTY_QUOTAS}</DEFAULT_USER_QUOTAS></USER>")
    return body + "</USER>"


def group_doc(gid: int, name: str, users: list[int], template: str = "",
              extended: bool = True) -> str:
    body = (f"<GROUP><ID>{gid}</ID><NAME>{name}</NAME><TEMPLATE>{template}</TEMPLATE><USERS>"
            + "".join(f"<ID>{u}</ID>" for u in users) + "</USERS><ADMINS></ADMINS>")
    if extended:
        return (body + EMPTY_QUOTAS
                + f"<DEFAULT_GROUP_QUOTAS>{EMPTY_QUOTAS}</DEFAULT_GROUP_QUOTAS></GROUP>")
    return body + "</GROUP>"


def tp(value: str) -> str:
    return f"<TOKEN_PASSWORD><![CDATA[{value}]]></TOKEN_PASSWORD>"


@pytest.fixture
def admin(daemon):
    proxy = daemon.raw()
    return proxy, daemon.session()


def new_user(daemon, password: str = "pw", groups: list[int] | None = None):
    """(uid, name, session) of a fresh core user, created by oneadmin."""
    name = unique("u")
    uid = ok(daemon.raw().one.user.allocate(daemon.session(), name, password, "", groups or []))
    return uid, name, f"{name}:{password}"


def new_group(daemon) -> tuple[int, str]:
    name = unique("g")
    return ok(daemon.raw().one.group.allocate(daemon.session(), name)), name


# --------------------------------------------------------------------- bootstrap
def test_bootstrap_users_groups_and_acl_exactly(fresh_daemon):
    d = fresh_daemon()
    proxy, s = d.raw(), d.session()

    sample = (SAMPLES / "one.user.info.body.xml").read_text().strip()
    doc = ok(proxy.one.user.info(s, -1))
    expected = re.sub(r"<PASSWORD><!\[CDATA\[[0-9a-f]{64}\]\]>",
                      f"<PASSWORD><![CDATA[{sha256(ADMIN_PASSWORD)}]]>", sample)
    expected = expected.replace(token_password(sample), token_password(doc))
    assert doc == expected
    assert ok(proxy.one.user.info(s, 0)) == doc

    server_line = (d.var / ".one" / "sunstone_auth").read_text()
    assert re.fullmatch(r"serveradmin:[^:\s]+\n", server_line)
    secret = server_line.strip().split(":", 1)[1]
    for name in ("onegate_auth", "oneflow_auth"):
        path = d.var / ".one" / name
        assert path.read_text() == server_line
        assert path.stat().st_mode & 0o777 == 0o600
    serveradmin = ok(proxy.one.user.info(s, 1))
    assert serveradmin == user_doc(1, "serveradmin", sha256(secret), 0, "oneadmin", [0],
                                   tp(token_password(serveradmin)), driver="server_cipher")
    assert token_password(serveradmin) != token_password(doc)

    pool = ok(proxy.one.userpool.info(s))
    assert pool == (
        "<USER_POOL>"
        + user_doc(1, "serveradmin", sha256(secret), 0, "oneadmin", [0],
                   tp(token_password(serveradmin)), driver="server_cipher", extended=False)
        + f"<QUOTAS><ID>1</ID>{EMPTY_QUOTAS}</QUOTAS>"
        + user_doc(0, "oneadmin", sha256(ADMIN_PASSWORD), 0, "oneadmin", [0],
                   tp(token_password(doc)), extended=False)
        + f"<QUOTAS><ID>0</ID>{EMPTY_QUOTAS}</QUOTAS>"
        + f"<DEFAULT_USER_QUOTAS>{EMPTY_QUOTAS}</DEFAULT_USER_QUOTAS></USER_POOL>")

    assert ok(proxy.one.grouppool.info(s)) == (
        "<GROUP_POOL>"
        + group_doc(1, "users", [], extended=False) + f"<QUOTAS><ID>1</ID>{EMPTY_QUOTAS}</QUOTAS>"
        + group_doc(0, "oneadmin", [0, 1], extended=False)
        + f"<QUOTAS><ID>0</ID>{EMPTY_QUOTAS}</QUOTAS>"
        + f"<DEFAULT_GROUP_QUOTAS>{EMPTY_QUOTAS}</DEFAULT_GROUP_QUOTAS></GROUP_POOL>")
    assert ok(proxy.one.group.info(s, 0)) == group_doc(0, "oneadmin", [0, 1])
    assert ok(proxy.one.group.info(s, -1)) == group_doc(0, "oneadmin", [0, 1])
    assert ok(proxy.one.group.info(s, 1)) == group_doc(1, "users", [])

    acl = ok(proxy.one.acl.info(s))
    assert acl == (
        "<ACL_POOL>"
        "<ACL><ID>0</ID><USER>200000001</USER><RESOURCE>121429400000000</RESOURCE>"
        "<RIGHTS>8</RIGHTS><ZONE>400000000</ZONE>"
        "<STRING>@1 VM+IMAGE+TEMPLATE+DOCUMENT+SECGROUP+VMGROUP+BACKUPJOB/* CREATE *</STRING>"
        "</ACL>"
        "<ACL><ID>1</ID><USER>400000000</USER><RESOURCE>800400000000</RESOURCE>"
        "<RIGHTS>1</RIGHTS><ZONE>400000000</ZONE><STRING>* ZONE/* USE *</STRING></ACL>"
        "<ACL><ID>2</ID><USER>400000000</USER><RESOURCE>18000400000000</RESOURCE>"
        "<RIGHTS>1</RIGHTS><ZONE>400000000</ZONE>"
        "<STRING>* MARKETPLACE+MARKETPLACEAPP/* USE *</STRING></ACL>"
        "<ACL><ID>3</ID><USER>200000001</USER><RESOURCE>2400000000</RESOURCE>"
        "<RIGHTS>2</RIGHTS><ZONE>100000000</ZONE><STRING>@1 HOST/* MANAGE #0</STRING></ACL>"
        "<ACL><ID>4</ID><USER>200000001</USER><RESOURCE>4400000000</RESOURCE>"
        "<RIGHTS>1</RIGHTS><ZONE>100000000</ZONE><STRING>@1 NET/* USE #0</STRING></ACL>"
        "<ACL><ID>5</ID><USER>200000001</USER><RESOURCE>100400000000</RESOURCE>"
        "<RIGHTS>1</RIGHTS><ZONE>100000000</ZONE><STRING>@1 DATASTORE/* USE #0</STRING></ACL>"
        "</ACL_POOL>")

    # ids: users from 2, groups from 100; a new group joins the default VDC.
    assert ok(proxy.one.user.allocate(s, "first", "pw", "", [])) == 2
    assert ok(proxy.one.group.allocate(s, "firstgroup")) == 100
    assert ok(proxy.one.user.allocate(s, "second", "pw", "", [100])) == 3
    acl = ok(proxy.one.acl.info(s))
    assert acl.endswith(
        "<ACL><ID>6</ID><USER>200000064</USER><RESOURCE>2400000000</RESOURCE>"
        "<RIGHTS>2</RIGHTS><ZONE>100000000</ZONE><STRING>@100 HOST/* MANAGE #0</STRING></ACL>"
        "<ACL><ID>7</ID><USER>200000064</USER><RESOURCE>4400000000</RESOURCE>"
        "<RIGHTS>1</RIGHTS><ZONE>100000000</ZONE><STRING>@100 NET/* USE #0</STRING></ACL>"
        "<ACL><ID>8</ID><USER>200000064</USER><RESOURCE>100400000000</RESOURCE>"
        "<RIGHTS>1</RIGHTS><ZONE>100000000</ZONE><STRING>@100 DATASTORE/* USE #0</STRING></ACL>"
        "</ACL_POOL>")
    # ACL ids are never reused: delete the group's user and the group, make another one
    ok(proxy.one.user.delete(s, 3))
    assert ok(proxy.one.group.delete(s, 100)) == 100
    assert "@100" not in ok(proxy.one.acl.info(s))
    assert ok(proxy.one.group.allocate(s, "secondgroup")) == 101
    assert [int(i) for i in re.findall(r"<ACL><ID>(\d+)</ID>", ok(proxy.one.acl.info(s)))] == [
        0, 1, 2, 3, 4, 5, 9, 10, 11]
    # everything survives a restart
    d.restart()
    assert ok(d.raw().one.user.info(s, 2)).startswith(
        "<USER><ID>2</ID><GID>1</GID><GROUPS><ID>1</ID></GROUPS><GNAME>users</GNAME>"
        "<NAME>first</NAME>")
    assert ok(d.raw().one.user.allocate(s, "third", "pw", "", [])) == 4
    assert ok(d.raw().one.group.allocate(s, "thirdgroup")) == 102


# -------------------------------------------------------------------- user info
def test_user_allocate_and_info_documents(daemon, admin):
    proxy, s = admin
    name = unique("doc")
    uid = ok(proxy.one.user.allocate(s, name, "secret", "", []))
    doc = ok(proxy.one.user.info(s, uid))
    assert doc == user_doc(uid, name, sha256("secret"), 1, "users", [1],
                           tp(token_password(doc)))
    # the user reads itself with -1 and with its id
    mine = ok(proxy.one.user.info(f"{name}:secret", -1))
    assert mine == doc == ok(proxy.one.user.info(f"{name}:secret", uid))
    # pyone sees the same object
    info = daemon.client(name, "secret").user.info(-1)
    assert (info.ID, info.NAME, info.GID, info.GROUPS.ID, info.AUTH_DRIVER) == (
        uid, name, 1, [1], "core")
    assert info.TEMPLATE["TOKEN_PASSWORD"] == token_password(doc)

    # explicit groups: the first is the primary one; a foreign driver keeps the password as is
    gid, gname = new_group(daemon)
    name2 = unique("doc")
    uid2 = ok(proxy.one.user.allocate(s, name2, "plain-secret", "x509", [gid, 1]))
    doc2 = ok(proxy.one.user.info(s, uid2))
    assert doc2 == user_doc(uid2, name2, "plain-secret", gid, gname, [1, gid],
                            tp(token_password(doc2)), driver="x509")
    assert ok(proxy.one.group.info(s, gid)) == group_doc(gid, gname, [uid2])
    # x509 users never log in with the password (no external driver here)
    fails(proxy.one.user.info(f"{name2}:plain-secret", -1),
          "[one.user.info] User couldn't be authenticated, aborting call.", AUTH)


def test_user_info_errors(daemon, admin):
    proxy, s = admin
    fails(proxy.one.user.info(s, 99999), "[one.user.info] Error getting user [99999].",
          NO_EXISTS, 99999)
    fails(proxy.one.user.info(s, -5), "[one.user.info] Error getting user [-5].",
          NO_EXISTS, -5)
    uid, _, session = new_user(daemon)
    fails(proxy.one.user.info(session, 0),
          f"[one.user.info] User [{uid}] : Not authorized to perform USE USER [0].", AUTHZ)
    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting user \[99999\]"):
        daemon.client().user.info(99999)


def test_userpool_visibility(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon)
    own = ok(proxy.one.user.info(s, uid))
    pool = ok(proxy.one.userpool.info(session))
    assert pool == ("<USER_POOL>" + own.split(EMPTY_QUOTAS)[0] + "</USER>"
                    + f"<QUOTAS><ID>{uid}</ID>{EMPTY_QUOTAS}</QUOTAS>"
                    + f"<DEFAULT_USER_QUOTAS>{EMPTY_QUOTAS}</DEFAULT_USER_QUOTAS></USER_POOL>")
    everyone = ok(proxy.one.userpool.info(s))
    ids = [int(i) for i in re.findall(r"<USER><ID>(\d+)</ID>", everyone)]
    assert ids == sorted(ids, reverse=True) and {0, 1, uid} <= set(ids)
    assert [int(i) for i in re.findall(r"<QUOTAS><ID>(\d+)</ID>", everyone)] == ids
    # pyone binds the pool, names resolve
    names = {u.NAME: u.ID for u in daemon.client().userpool.info().USER}
    assert names["oneadmin"] == 0 and names["serveradmin"] == 1 and names[name] == uid


def test_user_allocate_errors(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon)
    m = "[one.user.allocate]"
    fails(proxy.one.user.allocate(s, name, "pw", "", []),
          f"{m} NAME is already taken by USER {uid}.", INTERNAL)
    fails(proxy.one.user.allocate(s, "oneadmin", "pw", "", []),
          f"{m} NAME is already taken by USER 0.", INTERNAL)
    for bad, char in (("a b", " "), ("a:b", ":"), ("a&b", "&"), ("a/b", "/"), ("a<b", "<")):
        fails(proxy.one.user.allocate(s, bad, "pw", "", []),
              f"{m} Invalid NAME, char '{char}' is not allowed.", INTERNAL)
    fails(proxy.one.user.allocate(s, "", "pw", "", []),
          f"{m} Invalid NAME, it cannot be empty.", INTERNAL)
    fails(proxy.one.user.allocate(s, "n" * 129, "pw", "", []),
          f"{m} Invalid NAME, max length is 128 chars.", INTERNAL)
    # the password is checked first
    fails(proxy.one.user.allocate(s, "", "", "", []),
          f"{m} Invalid password, it cannot be empty.", INTERNAL)
    fails(proxy.one.user.allocate(s, unique("p"), "two words", "", []),
          f"{m} Invalid password, character ' ' is not allowed.", INTERNAL)
    fails(proxy.one.user.allocate(s, unique("p"), "tab\there", "", []),
          f"{m} Invalid password, character '\t' is not allowed.", INTERNAL)
    fails(proxy.one.user.allocate(s, unique("p"), "pw", "", [1, 99999]),
          f"{m} Error getting group [99999].", NO_EXISTS, 99999)
    # non-admins: CREATE USER, and MANAGE on groups other than their primary one
    fails(proxy.one.user.allocate(session, unique("p"), "pw", "", []),
          f"{m} User [{uid}] : Not authorized to perform CREATE USER.", AUTHZ)
    fails(proxy.one.user.allocate(session, unique("p"), "pw", "", [1, 0]),
          f"{m} User [{uid}] : Not authorized to perform CREATE USER; "
          "Not authorized to perform MANAGE GROUP [0].", AUTHZ)
    with pytest.raises(pyone.OneInternalException, match="NAME is already taken by USER 0"):
        daemon.client().user.allocate("oneadmin", "pw", "", [])


def test_user_delete(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon)
    other, _, other_session = new_user(daemon)
    m = "[one.user.delete]"
    fails(proxy.one.user.delete(session, other),
          f"{m} User [{uid}] : Not authorized to perform ADMIN USER [{other}].", AUTHZ)
    fails(proxy.one.user.delete(session, uid),
          f"{m} User [{uid}] : Not authorized to perform ADMIN USER [{uid}].", AUTHZ)
    fails(proxy.one.user.delete(session, 0),
          f"{m} User [{uid}] : Not authorized to perform ADMIN USER [0].", AUTHZ)
    fails(proxy.one.user.delete(s, 0), f"{m} Cannot delete user. oneadmin cannot be deleted.",
          ACTION)
    fails(proxy.one.user.delete(s, 99999), f"{m} Error getting user [99999].", NO_EXISTS,
          99999)
    assert str(uid) in re.search(r"<USERS>(.*?)</USERS>", ok(proxy.one.group.info(s, 1)))[1]
    assert ok(proxy.one.user.delete(s, uid)) == uid
    fails(proxy.one.user.info(s, uid), f"[one.user.info] Error getting user [{uid}].",
          NO_EXISTS, uid)
    assert f"<ID>{uid}</ID>" not in re.search(r"<USERS>(.*?)</USERS>",
                                              ok(proxy.one.group.info(s, 1)))[1]
    fails(proxy.one.user.info(session, -1),
          "[one.user.info] User couldn't be authenticated, aborting call.", AUTH)
    fails(proxy.one.user.delete(s, uid), f"{m} Error getting user [{uid}].", NO_EXISTS, uid)
    # the name is free again, the id is not reused
    again = ok(proxy.one.user.allocate(s, name, "pw", "", []))
    assert again > other
    assert ok(proxy.one.user.info(other_session, -1))


def test_user_passwd(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon, "first")
    other, _, _ = new_user(daemon)
    m = "[one.user.passwd]"
    assert ok(proxy.one.user.passwd(session, uid, "second")) == uid
    fails(proxy.one.user.info(session, -1),
          "[one.user.info] User couldn't be authenticated, aborting call.", AUTH)
    doc = ok(proxy.one.user.info(f"{name}:second", -1))
    assert f"<PASSWORD><![CDATA[{sha256('second')}]]></PASSWORD>" in doc
    assert ok(proxy.one.user.passwd(s, uid, "third")) == uid
    assert ok(proxy.one.user.info(f"{name}:third", -1))
    fails(proxy.one.user.passwd(s, uid, ""), f"{m} Invalid password, it cannot be empty",
          ACTION)
    fails(proxy.one.user.passwd(s, uid, "a b"),
          f"{m} Invalid password, character ' ' is not allowed", ACTION)
    fails(proxy.one.user.passwd(f"{name}:third", other, "x"),
          f"{m} User [{uid}] : Not authorized to perform MANAGE USER [{other}].", AUTHZ)
    fails(proxy.one.user.passwd(s, 99999, "x"), f"{m} Error getting user [99999].",
          NO_EXISTS, 99999)
    # a new password drops the login tokens
    token = ok(proxy.one.user.login(f"{name}:third", name, "", 600, -1))
    assert ok(proxy.one.user.info(f"{name}:{token}", -1))
    ok(proxy.one.user.passwd(s, uid, "fourth"))
    assert "<LOGIN_TOKEN>" not in ok(proxy.one.user.info(s, uid))
    fails(proxy.one.user.info(f"{name}:{token}", -1),
          "[one.user.info] User couldn't be authenticated, aborting call.", AUTH)
    # pyone
    daemon.client().user.passwd(uid, "fifth")
    assert daemon.client(name, "fifth").user.info(-1).ID == uid


def test_user_update_replace_and_merge(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon)
    m = "[one.user.update]"
    original = token_password(ok(proxy.one.user.info(s, uid)))
    assert ok(proxy.one.user.update(session, uid, 'A="1"\nB="2"\nV=[X="x",Y="y"]', 1)) == uid
    doc = ok(proxy.one.user.info(s, uid))
    assert re.search(r"<TEMPLATE>.*</TEMPLATE>", doc)[0] == (
        "<TEMPLATE><A><![CDATA[1]]></A><B><![CDATA[2]]></B>"
        f"<TOKEN_PASSWORD><![CDATA[{original}]]></TOKEN_PASSWORD>"
        "<V><X><![CDATA[x]]></X><Y><![CDATA[y]]></Y></V></TEMPLATE>")
    # merge replaces same-named attributes and keeps the rest
    ok(proxy.one.user.update(s, uid, "<TEMPLATE><B>3</B><C>4</C></TEMPLATE>", 1))
    doc = ok(proxy.one.user.info(s, uid))
    assert re.search(r"<TEMPLATE>.*</TEMPLATE>", doc)[0] == (
        "<TEMPLATE><A><![CDATA[1]]></A><B><![CDATA[3]]></B><C><![CDATA[4]]></C>"
        f"<TOKEN_PASSWORD><![CDATA[{original}]]></TOKEN_PASSWORD>"
        "<V><X><![CDATA[x]]></X><Y><![CDATA[y]]></Y></V></TEMPLATE>")
    # replace (explicit 0, and the default when absent)
    ok(proxy.one.user.update(s, uid, 'ONLY="this"', 0))
    assert re.search(r"<TEMPLATE>.*</TEMPLATE>", ok(proxy.one.user.info(s, uid)))[0] == (
        "<TEMPLATE><ONLY><![CDATA[this]]></ONLY></TEMPLATE>")
    ok(proxy.one.user.update(s, uid, 'OTHER="that"'))
    assert re.search(r"<TEMPLATE>.*</TEMPLATE>", ok(proxy.one.user.info(s, uid)))[0] == (
        "<TEMPLATE><OTHER><![CDATA[that]]></OTHER></TEMPLATE>")
    fails(proxy.one.user.update(s, uid, 'A="1"', 2), f"{m} Wrong update type", API)
    fails(proxy.one.user.update(s, uid, 'A="1"', -1), f"{m} Wrong update type", API)
    fails(proxy.one.user.update(s, 99999, 'A="1"', 0), f"{m} Error getting user [99999].",
          NO_EXISTS, 99999)
    fails(proxy.one.user.update(session, 0, 'A="1"', 0),
          f"{m} User [{uid}] : Not authorized to perform MANAGE USER [0].", AUTHZ)
    fails(proxy.one.user.update(s, uid, "A B", 0),
          f"{m} Cannot update template. Parse error: syntax error, unexpected VARIABLE, "
          "expecting EQUAL or EQUAL_EMPTY at line 0, columns 3:4", INTERNAL)
    # pyone, dict form
    daemon.client().user.update(uid, {"K": "v"}, 1)
    assert daemon.client().user.info(uid).TEMPLATE == {"OTHER": "that", "K": "v"}


def test_chgrp_moves_the_primary_group(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon)
    gid, gname = new_group(daemon)
    m = "[one.user.chgrp]"
    assert ok(proxy.one.user.chgrp(s, uid, gid)) == uid
    doc = ok(proxy.one.user.info(s, uid))
    assert re.search(r"<GID>.*</NAME>", doc)[0] == (
        f"<GID>{gid}</GID><GROUPS><ID>{gid}</ID></GROUPS><GNAME>{gname}</GNAME>"
        f"<NAME>{name}</NAME>")
    assert ok(proxy.one.group.info(s, gid)) == group_doc(gid, gname, [uid])
    assert f"<ID>{uid}</ID>" not in ok(proxy.one.group.info(s, 1))
    # back to users, through a secondary membership: the old primary group stays
    ok(proxy.one.user.addgroup(s, uid, 1))
    assert ok(proxy.one.user.chgrp(s, uid, 1)) == uid
    doc = ok(proxy.one.user.info(s, uid))
    assert re.search(r"<GID>.*</GNAME>", doc)[0] == (
        f"<GID>1</GID><GROUPS><ID>1</ID><ID>{gid}</ID></GROUPS><GNAME>users</GNAME>")
    assert ok(proxy.one.group.info(s, gid)) == group_doc(gid, gname, [uid])
    # same group: nothing to do
    assert ok(proxy.one.user.chgrp(session, uid, 1)) == uid
    fails(proxy.one.user.chgrp(s, uid, -1), f"{m} Wrong group ID", API)
    fails(proxy.one.user.chgrp(s, 99999, 1), f"{m} Error getting user [99999].", NO_EXISTS,
          99999)
    fails(proxy.one.user.chgrp(s, uid, 99999), f"{m} Error getting group [99999].", NO_EXISTS,
          99999)
    fails(proxy.one.user.chgrp(s, 0, 1),
          f"{m} user [0] oneadmin cannot be moved outside of the group [0] oneadmin", INTERNAL)
    fails(proxy.one.user.chgrp(s, 0, 0),
          f"{m} user [0] oneadmin cannot be moved outside of the group [0] oneadmin", INTERNAL)
    other_gid, _ = new_group(daemon)
    fails(proxy.one.user.chgrp(session, uid, other_gid),
          f"{m} User [{uid}] : Not authorized to perform USE GROUP [{other_gid}].", AUTHZ)
    # a member may move itself to one of its groups (USE GROUP, MANAGE itself)
    assert ok(proxy.one.user.chgrp(session, uid, gid)) == uid
    assert daemon.client(name, "pw").user.info(-1).GID == gid


def test_addgroup_and_delgroup(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon)
    gid, gname = new_group(daemon)
    assert ok(proxy.one.user.addgroup(s, uid, gid)) == uid
    doc = ok(proxy.one.user.info(s, uid))
    assert f"<GROUPS><ID>1</ID><ID>{gid}</ID></GROUPS><GNAME>users</GNAME>" in doc
    assert ok(proxy.one.group.info(s, gid)) == group_doc(gid, gname, [uid])
    # a member sees the group, in the pool and by id
    assert ok(proxy.one.group.info(session, gid)) == group_doc(gid, gname, [uid])
    pool = ok(proxy.one.grouppool.info(session))
    assert [int(i) for i in re.findall(r"<GROUP><ID>(\d+)</ID>", pool)] == [gid, 1]
    fails(proxy.one.user.addgroup(s, uid, gid), "[one.user.addgroup] User is already in this "
          "group", ACTION)
    fails(proxy.one.user.addgroup(s, uid, 99999), "[one.user.addgroup] Error getting group "
          "[99999].", NO_EXISTS, 99999)
    fails(proxy.one.user.addgroup(s, 99999, gid), "[one.user.addgroup] Error getting user "
          "[99999].", NO_EXISTS, 99999)
    fails(proxy.one.user.addgroup(session, uid, 0),
          f"[one.user.addgroup] User [{uid}] : Not authorized to perform MANAGE GROUP [0].",
          AUTHZ)
    fails(proxy.one.user.delgroup(session, uid, gid),
          f"[one.user.delgroup] User [{uid}] : Not authorized to perform MANAGE GROUP "
          f"[{gid}].", AUTHZ)
    fails(proxy.one.user.delgroup(s, uid, 1),
          "[one.user.delgroup] Cannot remove user from the primary group", ACTION)
    fails(proxy.one.user.delgroup(s, uid, 0), "[one.user.delgroup] User is not part of this "
          "group", ACTION)
    assert ok(proxy.one.user.delgroup(s, uid, gid)) == uid
    assert "<GROUPS><ID>1</ID></GROUPS>" in ok(proxy.one.user.info(s, uid))
    assert ok(proxy.one.group.info(s, gid)) == group_doc(gid, gname, [])
    fails(proxy.one.group.info(session, gid),
          f"[one.group.info] User [{uid}] : Not authorized to perform USE GROUP [{gid}].",
          AUTHZ)
    # pyone
    one = daemon.client()
    one.user.addgroup(uid, 0)
    assert one.user.info(uid).GROUPS.ID == [0, 1]
    # now an admin: it sees every group
    assert "<GROUP><ID>0</ID>" in ok(proxy.one.grouppool.info(session))
    one.user.delgroup(uid, 0)


# ----------------------------------------------------------------------- groups
def test_groups(daemon, admin):
    proxy, s = admin
    uid, _, session = new_user(daemon)
    gid, gname = new_group(daemon)
    assert ok(proxy.one.group.info(s, gid)) == group_doc(gid, gname, [])
    m = "[one.group.allocate]"
    fails(proxy.one.group.allocate(s, gname), f"{m} NAME is already taken by GROUP {gid}.",
          INTERNAL)
    fails(proxy.one.group.allocate(s, "users"), f"{m} NAME is already taken by GROUP 1.",
          INTERNAL)
    fails(proxy.one.group.allocate(s, ""), f"{m} Invalid NAME, it cannot be empty", INTERNAL)
    fails(proxy.one.group.allocate(s, "a#b"), f"{m} Invalid NAME, char '#' is not allowed",
          INTERNAL)
    fails(proxy.one.group.allocate(s, "g" * 129), f"{m} Invalid NAME, max length is 128 chars",
          INTERNAL)
    fails(proxy.one.group.allocate(session, unique("g")),
          f"{m} User [{uid}] : Not authorized to perform CREATE GROUP.", AUTHZ)
    # its VDC rules
    acl = ok(proxy.one.acl.info(s))
    assert re.findall(rf"<STRING>(@{gid} [^<]*)</STRING>", acl) == [
        f"@{gid} HOST/* MANAGE #0", f"@{gid} NET/* USE #0", f"@{gid} DATASTORE/* USE #0"]
    # info errors and the primary group of the caller
    fails(proxy.one.group.info(s, 99999), "[one.group.info] Error getting group [99999].",
          NO_EXISTS, 99999)
    fails(proxy.one.group.info(session, 0),
          f"[one.group.info] User [{uid}] : Not authorized to perform USE GROUP [0].", AUTHZ)
    assert ok(proxy.one.group.info(session, -1)).startswith("<GROUP><ID>1</ID><NAME>users")
    # the pool: admins see all groups (newest first), members only their own
    pool = ok(proxy.one.grouppool.info(s))
    ids = [int(i) for i in re.findall(r"<GROUP><ID>(\d+)</ID>", pool)]
    assert ids == sorted(ids, reverse=True) and {0, 1, gid} <= set(ids)
    assert ok(proxy.one.grouppool.info(session)) == (
        "<GROUP_POOL>" + ok(proxy.one.group.info(s, 1)).split(EMPTY_QUOTAS)[0] + "</GROUP>"
        + f"<QUOTAS><ID>1</ID>{EMPTY_QUOTAS}</QUOTAS>"
        + f"<DEFAULT_GROUP_QUOTAS>{EMPTY_QUOTAS}</DEFAULT_GROUP_QUOTAS></GROUP_POOL>")
    assert {g.NAME: g.ID for g in daemon.client().grouppool.info().GROUP}[gname] == gid
    # delete
    m = "[one.group.delete]"
    fails(proxy.one.group.delete(session, gid),
          f"{m} User [{uid}] : Not authorized to perform ADMIN GROUP [{gid}].", AUTHZ)
    fails(proxy.one.group.delete(s, 99999), f"{m} Error getting group [99999].", NO_EXISTS,
          99999)
    for system in (0, 1):
        fails(proxy.one.group.delete(s, system),
              f"{m} Cannot delete group. System Groups (ID < 100) cannot be deleted.", ACTION)
    ok(proxy.one.user.addgroup(s, uid, gid))
    fails(proxy.one.group.delete(s, gid), f"{m} Cannot delete group. Group {gid} is not empty.",
          ACTION)
    ok(proxy.one.user.delgroup(s, uid, gid))
    assert ok(proxy.one.group.delete(s, gid)) == gid
    fails(proxy.one.group.info(s, gid), f"[one.group.info] Error getting group [{gid}].",
          NO_EXISTS, gid)
    assert f"@{gid} " not in ok(proxy.one.acl.info(s))
    # pyone
    one = daemon.client()
    new = one.group.allocate(unique("g"))
    assert one.group.info(new).USERS.ID == []
    one.group.delete(new)


def test_acl_info_is_for_admins(daemon, admin):
    proxy, s = admin
    uid, _, session = new_user(daemon)
    acl = ok(proxy.one.acl.info(s))
    assert re.findall(r"<ID>(\d)</ID><USER>[0-9a-f]+</USER>", acl)[:6] == list("012345")
    fails(proxy.one.acl.info(session),
          f"[one.acl.info] User [{uid}] : Not authorized to perform MANAGE ACL.", AUTHZ)
    # group 0 members are admins
    ok(proxy.one.user.addgroup(s, uid, 0))
    assert ok(proxy.one.acl.info(session)) == acl


# ------------------------------------------------------------------ login tokens
def test_login_tokens(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon)
    m = "[one.user.login]"
    token = ok(proxy.one.user.login(session, name, "", 600, -1))
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    before = int(time.time())
    doc = ok(proxy.one.user.info(f"{name}:{token}", -1))
    expire = int(re.search(r"<EXPIRATION_TIME>(\d+)</EXPIRATION_TIME>", doc)[1])
    assert before - 5 <= expire - 600 <= before + 5
    assert (f"<LOGIN_TOKEN><TOKEN>{token}</TOKEN><EXPIRATION_TIME>{expire}</EXPIRATION_TIME>"
            "<EGID>-1</EGID></LOGIN_TOKEN><TEMPLATE>") in doc
    # own token texts, -1 = never expires, kept ordered by text
    assert ok(proxy.one.user.login(session, name, "zz-forever", -1, -1)) == "zz-forever"
    assert ok(proxy.one.user.login(session, name, "aa-mine", 60, -1)) == "aa-mine"
    doc = ok(proxy.one.user.info(s, uid))
    assert re.findall(r"<TOKEN>([^<]+)</TOKEN>", doc) == sorted(["aa-mine", token,
                                                                 "zz-forever"])
    assert ("<LOGIN_TOKEN><TOKEN>zz-forever</TOKEN><EXPIRATION_TIME>-1</EXPIRATION_TIME>"
            "<EGID>-1</EGID></LOGIN_TOKEN>") in doc
    assert ok(proxy.one.user.info(f"{name}:zz-forever", -1))
    assert [t.TOKEN for t in daemon.client(name, token).user.info(-1).LOGIN_TOKEN] == sorted(
        ["aa-mine", token, "zz-forever"])
    # remove one, then all
    assert ok(proxy.one.user.login(session, name, "aa-mine", 0, -1)) == "aa-mine"
    fails(proxy.one.user.info(f"{name}:aa-mine", -1),
          "[one.user.info] User couldn't be authenticated, aborting call.", AUTH)
    fails(proxy.one.user.login(session, name, "aa-mine", 0, -1),
          f"{m} Could not find token: aa-mine", API)
    assert ok(proxy.one.user.login(session, name, "", 0, -1)) == ""
    assert "<LOGIN_TOKEN>" not in ok(proxy.one.user.info(s, uid))
    fails(proxy.one.user.info(f"{name}:{token}", -1),
          "[one.user.info] User couldn't be authenticated, aborting call.", AUTH)
    # errors of api.md §8.2
    fails(proxy.one.user.login(session, name, "", -2, -1), f"{m} Wrong valid period for token",
          API)
    fails(proxy.one.user.login(session, unique("nobody"), "", 60, -1),
          f"{m} Error getting user Pool.", NO_EXISTS)
    fails(proxy.one.user.login(session, "oneadmin", "", 60, -1),
          f"{m} User [{uid}] : Not authorized to perform MANAGE USER [0].", AUTHZ)
    fails(proxy.one.user.login(session, name, "", 60, 0),
          f"{m} EGID is not in user group list", API)
    for i in range(10):
        ok(proxy.one.user.login(session, name, f"t{i}", 600, -1))
    fails(proxy.one.user.login(session, name, "", 600, -1),
          f"{m} Max number of tokens limit reached.", API)
    ok(proxy.one.user.login(session, name, "", 0, -1))
    # the last parameter is optional
    assert re.fullmatch(r"[0-9a-f]{64}", ok(proxy.one.user.login(session, name, "", 60)))
    # pyone
    assert daemon.client(name, "pw").user.login(name, "via-pyone", 60, -1) == "via-pyone"


def test_login_token_expiry(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon)
    ok(proxy.one.user.login(session, name, "short", 2, -1))
    doc = ok(proxy.one.user.info(f"{name}:short", -1))
    expire = int(re.search(r"<EXPIRATION_TIME>(\d+)</EXPIRATION_TIME>", doc)[1])
    time.sleep(max(0.0, expire - time.time()) + 0.2)
    fails(proxy.one.user.info(f"{name}:short", -1),
          "[one.user.info] User couldn't be authenticated, aborting call.", AUTH)
    # oned drops the expired token it was shown
    wait_for(lambda: "<LOGIN_TOKEN>" not in ok(proxy.one.user.info(s, uid)))


def test_group_scoped_tokens(daemon, admin):
    proxy, s = admin
    gid, gname = new_group(daemon)
    uid, name, session = new_user(daemon, groups=[1, gid])
    token = ok(proxy.one.user.login(session, name, "", 600, gid))
    assert f"<EGID>{gid}</EGID>" in ok(proxy.one.user.info(s, uid))
    scoped = f"{name}:{token}"
    # the session runs with primary group = EGID and that group only
    assert ok(proxy.one.group.info(scoped, -1)) == ok(proxy.one.group.info(s, gid))
    assert [int(i) for i in re.findall(r"<GROUP><ID>(\d+)</ID>",
                                       ok(proxy.one.grouppool.info(scoped)))] == [gid]
    fails(proxy.one.group.info(scoped, 1),
          f"[one.group.info] User [{uid}] : Not authorized to perform USE GROUP [1].", AUTHZ)
    # the user document itself is unchanged
    assert f"<GID>1</GID><GROUPS><ID>1</ID><ID>{gid}</ID></GROUPS>" in ok(
        proxy.one.user.info(scoped, -1))
    fails(proxy.one.user.login(scoped, name, "", 60, -1),
          "[one.user.login] Cannot create a full token with a specific group token", API)
    fails(proxy.one.user.login(scoped, name, "", 60, 1),
          "[one.user.login] EGID is not in user group list", API)
    assert ok(proxy.one.user.login(scoped, name, "second-scoped", 60, gid)) == "second-scoped"
    # oned compares the target's groups with the session's, so even oneadmin can only
    # give another user scoped tokens (an admin may pick any group)
    fails(proxy.one.user.login(s, name, "", 60, -1),
          "[one.user.login] Cannot create a full token with a specific group token", API)
    assert ok(proxy.one.user.login(s, name, "admin-made", 60, 0)) == "admin-made"
    # leaving the group kills the group's tokens
    ok(proxy.one.user.delgroup(s, uid, gid))
    fails(proxy.one.user.info(scoped, -1),
          "[one.user.info] User couldn't be authenticated, aborting call.", AUTH)
    wait_for(lambda: token not in ok(proxy.one.user.info(s, uid)))
    assert ok(proxy.one.user.info(session, -1))


# ----------------------------------------------------------------- session forms
def test_password_sessions(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon, "p@ss:word")
    assert ok(proxy.one.user.info(session, -1)).startswith(f"<USER><ID>{uid}</ID>")
    text = "[one.user.info] User couldn't be authenticated, aborting call."
    for bad in (f"{name}:p@ss", f"{name}:", name, f"{name}:{sha256('p@ss:word')}",
                f"{name.upper()}:p@ss:word"):
        fails(proxy.one.user.info(bad, -1), text, AUTH)


@pytest.mark.sqlite_only
@pytest.mark.skipif(backend() != "sqlite", reason="writes the SQLite file directly")
def test_legacy_sha1_password_is_accepted_and_upgraded(fresh_daemon):
    d = fresh_daemon()
    proxy, s = d.raw(), d.session()
    uid = ok(proxy.one.user.allocate(s, "legacy", "old-secret", "", []))
    d.stop()
    sha1 = hashlib.sha1(b"old-secret").hexdigest()
    with sqlite3.connect(d.var / "one.db") as db:
        (body,) = db.execute("SELECT body FROM user_pool WHERE oid = ?", (uid,)).fetchone()
        body = body.replace(sha256("old-secret"), sha1)
        db.execute("UPDATE user_pool SET body = ? WHERE oid = ?", (body, uid))
    d.start()
    proxy = d.raw()
    assert f"<PASSWORD><![CDATA[{sha1}]]></PASSWORD>" in ok(proxy.one.user.info(s, uid))
    fails(proxy.one.user.info(f"legacy:{sha1}", -1),
          "[one.user.info] User couldn't be authenticated, aborting call.", AUTH)
    assert ok(proxy.one.user.info("legacy:old-secret", -1)).startswith(f"<USER><ID>{uid}</ID>")
    wait_for(lambda: f"<PASSWORD><![CDATA[{sha256('old-secret')}]]></PASSWORD>"
             in ok(proxy.one.user.info(s, uid)))
    # and after a restart (no session cache) the password still works
    d.restart()
    assert ok(d.raw().one.user.info("legacy:old-secret", -1))


def test_serveradmin_server_cipher_sessions(daemon, admin):
    proxy, s = admin
    gid, _ = new_group(daemon)
    uid, name, _ = new_user(daemon, groups=[1, gid])
    key = re.search(r"<PASSWORD><!\[CDATA\[([0-9a-f]{64})\]\]>", ok(proxy.one.user.info(s, 1)))[1]
    secret = (daemon.var / ".one" / "sunstone_auth").read_text().strip().split(":", 1)[1]
    assert key == sha256(secret)
    later = int(time.time()) + 300
    token = server_cipher_token("serveradmin", key, name, later)
    session = f"serveradmin:{name}:{token}"
    # the call runs as the target user
    doc = ok(proxy.one.user.info(session, -1))
    assert doc == ok(proxy.one.user.info(s, uid))
    fails(proxy.one.user.info(session, 0),
          f"[one.user.info] User [{uid}] : Not authorized to perform USE USER [0].", AUTHZ)
    assert daemon.client("serveradmin", f"{name}:{token}").user.info(-1).ID == uid
    # with an EGID the group set shrinks to that group
    scoped = f"serveradmin:{name}:{gid}:{token}"
    assert ok(proxy.one.group.info(scoped, -1)).startswith(f"<GROUP><ID>{gid}</ID>")
    fails(proxy.one.group.info(scoped, 1),
          f"[one.group.info] User [{uid}] : Not authorized to perform USE GROUP [1].", AUTHZ)
    # serveradmin itself
    own = server_cipher_token("serveradmin", key, "serveradmin", later)
    assert ok(proxy.one.user.info(f"serveradmin:serveradmin:{own}", -1)).startswith(
        "<USER><ID>1</ID>")
    assert ok(proxy.one.system.version(f"serveradmin:serveradmin:{own}")) == "7.0.2"
    # refused tokens
    text = "[one.user.info] User couldn't be authenticated, aborting call."
    forged = base64.b64encode(b"0123456789abcdef" * 2).decode()
    bad = [
        f"serveradmin:{name}:{forged}",                                   # garbage
        f"serveradmin:{name}:not-base64!",
        f"serveradmin:{name}:" + server_cipher_token("someone", key, name, later),
        f"serveradmin:{name}:" + server_cipher_token("serveradmin", key, name,
                                                     int(time.time()) - 5),   # expired
        f"serveradmin:{name}:" + server_cipher_token("serveradmin", sha256("x"), name,
                                                     later),                  # wrong key
        f"serveradmin:{unique('ghost')}:{token}",                         # unknown target
        f"serveradmin:{name}:0:{token}",                                  # EGID not his
        f"serveradmin:{name}:x:{token}",                                  # EGID not a number
        f"serveradmin:{secret}",                                          # no target
        f"serveradmin:{name}",
        f"{name}:{token}",                       # only server_cipher users may wrap
    ]
    for wrapped in bad:
        fails(proxy.one.user.info(wrapped, -1), text, AUTH)
