"""update, chmod, chown and rename end to end (api.md §2.7-§2.10)."""

from __future__ import annotations

import pytest

from tests.support.seed import (
    dummy_datastore,
    fails,
    fault,
    field,
    info,
    num,
    ok,
    parse,
    pool,
    register,
    section,
    template_dict,
    unique,
    user,
)


@pytest.fixture(scope="module")
def ds(daemon):
    return dummy_datastore(daemon, "update-dummy")


def perms(daemon, oid) -> list[int]:
    return [int(e.text) for e in parse(info(daemon, oid)).find("PERMISSIONS")]


# ------------------------------------------------------------------ update
def test_update_replace_is_the_default(daemon, ds, one):
    oid = register(daemon, ds, extra='DESCRIPTION="d"\nKEEP="no"\n')
    before = info(daemon, oid)
    assert ok(daemon, "one.image.update", oid, 'A="1"\nB=[ X="y" ]') == oid
    xml = info(daemon, oid)
    assert section(xml, "TEMPLATE") == (
        "<TEMPLATE><A><![CDATA[1]]></A><B><X><![CDATA[y]]></X></B></TEMPLATE>")
    assert ok(daemon, "one.image.update", oid, 'C="3"', 0) == oid
    assert template_dict(info(daemon, oid)) == {"C": "3"}
    assert one.image.update(oid, {"D": "4"}) == oid
    after = info(daemon, oid)
    assert template_dict(after) == {"D": "4"}
    assert field(after, "MODTIME") == field(before, "MODTIME")


def test_update_append_merges(daemon, ds, one):
    oid = register(daemon, ds, extra='DESCRIPTION="d"\nVEC=[ A="1", B="2" ]\n')
    assert ok(daemon, "one.image.update", oid, 'DESCRIPTION="new"\nVEC=[ C="3" ]\nX="x"',
              1) == oid
    assert template_dict(info(daemon, oid)) == {
        "DESCRIPTION": "new", "DEV_PREFIX": "sd", "VEC": {"C": "3"}, "X": "x"}
    assert one.image.update(oid, {"Y": "y"}, 1) == oid
    assert template_dict(info(daemon, oid))["Y"] == "y"


def test_update_does_not_touch_top_level_fields(daemon, ds):
    oid = register(daemon, ds, name="top-level")
    ok(daemon, "one.image.update", oid, 'NAME="other"\nTYPE="CDROM"\nPERSISTENT="YES"\n'
       'SIZE="99"\nSOURCE="/elsewhere"', 1)
    xml = info(daemon, oid)
    assert (field(xml, "NAME"), num(xml, "TYPE"), num(xml, "PERSISTENT"), num(xml, "SIZE"),
            field(xml, "SOURCE")) == ("top-level", 0, 0, 1, "/var/tmp/src.img")
    assert template_dict(xml) == {"DEV_PREFIX": "sd", "NAME": "other", "PERSISTENT": "YES",
                                  "SIZE": "99", "SOURCE": "/elsewhere", "TYPE": "CDROM"}


def test_update_errors(daemon, ds):
    oid = register(daemon, ds)
    assert fails(daemon, "one.image.update", 999, "A=1") == (
        "[one.image.update] Error getting image [999].", 1024, 999)
    assert fails(daemon, "one.image.update", oid, "A=1", 2) == (
        "[one.image.update] Wrong update type", 4096, -1)
    assert fails(daemon, "one.image.update", oid, "A=1", -1) == (
        "[one.image.update] Wrong update type", 4096, -1)
    assert fails(daemon, "one.image.update", oid, "A = = ") == (
        "[one.image.update] Cannot update template. Parse error: syntax error, unexpected "
        "$end, expecting OBRACKET or CCDATA or STRING at line 0, columns 6:7", 8192, -1)
    assert fails(daemon, "one.image.update", oid, "<T><A>1</T>", 1) == (
        "[one.image.update] Cannot update template. Parse error: XML Template malformed.",
        8192, -1)
    uid, session = user(daemon)
    # authorization comes before the update type check
    assert fails(daemon, "one.image.update", oid, "A=1", 2, session=session) == (
        f"[one.image.update] User [{uid}] : Not authorized to perform MANAGE IMAGE [{oid}].",
        512, -1)
    assert fault(daemon, "one.image.update", oid, "A=1", True) == (
        -501, "Parameter that is supposed to be integer is not")
    assert template_dict(info(daemon, oid)) == {"DEV_PREFIX": "sd"}


def test_update_restricted_attributes_for_users(daemon, ds):
    uid, session = user(daemon)
    oid = ok(daemon, "one.image.allocate", 'NAME="r"\nTYPE="DATABLOCK"\nSIZE="1"', ds,
             session=session)
    ok(daemon, "one.image.update", oid, 'SOURCE="/admin/set"\nD="1"', 1)  # oneadmin may
    assert fails(daemon, "one.image.update", oid, 'SOURCE="/mine"', 0, session=session) == (
        "[one.image.update] Cannot update template. Tried to change restricted attribute: "
        "SOURCE", 8192, -1)
    assert fails(daemon, "one.image.update", oid, 'SOURCE="/admin/set"', 1,
                 session=session) == (
        "[one.image.update] Cannot update template. User Template includes a restricted "
        "attribute SOURCE", 8192, -1)
    # replace: the same value is fine, a missing one is carried over silently
    ok(daemon, "one.image.update", oid, 'SOURCE="/admin/set"\nE="2"', 0, session=session)
    assert template_dict(info(daemon, oid)) == {"E": "2", "SOURCE": "/admin/set"}
    ok(daemon, "one.image.update", oid, 'F="3"', session=session)
    assert template_dict(info(daemon, oid)) == {"F": "3", "SOURCE": "/admin/set"}


def test_update_with_xml_input(daemon, ds):
    oid = register(daemon, ds)
    ok(daemon, "one.image.update", oid,
       "<TEMPLATE><lower>v</lower><VEC><sub>s</sub><Z>z</Z></VEC><EMPTY/></TEMPLATE>", 0)
    assert section(info(daemon, oid), "TEMPLATE") == (
        "<TEMPLATE><LOWER><![CDATA[v]]></LOWER><VEC><Z><![CDATA[z]]></Z>"
        "<sub><![CDATA[s]]></sub></VEC></TEMPLATE>")


# ------------------------------------------------------------------ chmod
def test_chmod_sets_and_clears(daemon, ds, one):
    oid = register(daemon, ds)
    assert ok(daemon, "one.image.chmod", oid, 1, 1, 1, 1, 1, 1, 1, 1, 1) == oid
    assert perms(daemon, oid) == [1] * 9
    assert one.image.chmod(oid, -1, 0, 0, 0, -1, 0, -1, 0, 0) == oid
    assert perms(daemon, oid) == [1, 0, 0, 0, 1, 0, 1, 0, 0]


def test_chmod_rules_for_owner(daemon, ds):
    uid, session = user(daemon)
    oid = ok(daemon, "one.image.allocate", 'NAME="c"\nTYPE="DATABLOCK"\nSIZE="1"', ds,
             session=session)
    assert ok(daemon, "one.image.chmod", oid, -1, -1, -1, 1, -1, -1, -1, -1, -1,
              session=session) == oid
    assert perms(daemon, oid) == [1, 1, 0, 1, 0, 0, 0, 0, 0]
    assert fails(daemon, "one.image.chmod", oid, -1, -1, 1, -1, -1, -1, -1, -1, -1,
                 session=session) == (
        f"[one.image.chmod] User [{uid}] : Not authorized to perform ADMIN IMAGE [{oid}].",
        512, -1)
    # "setting" an ADMIN bit to its current value is only a MANAGE operation
    assert ok(daemon, "one.image.chmod", oid, -1, -1, 0, -1, -1, 0, 1, -1, 0,
              session=session) == oid
    assert perms(daemon, oid) == [1, 1, 0, 1, 0, 0, 1, 0, 0]
    # the range check comes after authorization
    assert fails(daemon, "one.image.chmod", oid, 2, -1, -1, -1, -1, -1, -1, -1, -1,
                 session=session) == (
        "[one.image.chmod] New permission values must be -1, 0 or 1", 8192, -1)
    other_uid, other = user(daemon)
    assert fails(daemon, "one.image.chmod", oid, 2, -1, -1, -1, -1, -1, -1, -1, -1,
                 session=other) == (
        f"[one.image.chmod] User [{other_uid}] : Not authorized to perform MANAGE IMAGE "
        f"[{oid}].", 512, -1)


def test_chmod_updates_the_filter_columns(daemon, ds):
    oid = register(daemon, ds)
    _, session = user(daemon)
    assert oid not in pool(daemon, -2, session=session)
    ok(daemon, "one.image.chmod", oid, -1, -1, -1, -1, -1, -1, 1, -1, -1)
    assert oid in pool(daemon, -2, session=session)
    assert info(daemon, oid, session=session) == info(daemon, oid)


def test_chmod_errors(daemon, ds):
    assert fails(daemon, "one.image.chmod", 999, 1, 1, 1, 1, 1, 1, 1, 1, 1) == (
        "[one.image.chmod] Error getting image [999].", 1024, 999)
    oid = register(daemon, ds)
    assert fault(daemon, "one.image.chmod", oid, 1, 1, 1) == (-501, "Not enough parameters")
    assert perms(daemon, oid) == [1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_other_permissions_disabled(fresh_daemon):
    d = fresh_daemon(extra_config='ENABLE_OTHER_PERMISSIONS = "NO"\n')
    uid, session = user(d)
    oid = ok(d, "one.image.allocate", 'NAME="o"\nTYPE="DATABLOCK"\nSIZE="0"', 1,
             session=session)
    assert fails(d, "one.image.chmod", oid, -1, -1, -1, -1, -1, -1, 1, -1, -1,
                 session=session) == (
        f"[one.image.chmod] User [{uid}] : 'other' permissions is disabled in oned.conf.",
        512, -1)
    # unchanged OTHER bits are dropped first, and admins are not limited
    assert ok(d, "one.image.chmod", oid, -1, -1, -1, 1, -1, -1, 0, 0, -1,
              session=session) == oid
    assert ok(d, "one.image.chmod", oid, -1, -1, -1, -1, -1, -1, 1, -1, -1) == oid
    assert perms(d, oid) == [1, 1, 0, 1, 0, 0, 1, 0, 0]


# ------------------------------------------------------------------ chown
def test_chown_lookups_in_order(daemon, ds):
    oid = register(daemon, ds)
    assert fails(daemon, "one.image.chown", 999, 999, 999) == (
        "[one.image.chown] Error getting user [999].", 1024, 999)
    assert fails(daemon, "one.image.chown", 999, -1, 999) == (
        "[one.image.chown] Error getting group [999].", 1024, 999)
    assert fails(daemon, "one.image.chown", 999, 0, 0) == (
        "[one.image.chown] Error getting image [999].", 1024, 999)
    assert ok(daemon, "one.image.chown", oid, -1, -1) == oid


def test_chown_by_admin(daemon, ds, one):
    uid, session = user(daemon, name=unique("newowner"))
    oid = register(daemon, ds)
    assert ok(daemon, "one.image.chown", oid, uid, -1) == oid
    xml = info(daemon, oid)
    assert (num(xml, "UID"), field(xml, "UNAME"), num(xml, "GID"), field(xml, "GNAME")) == (
        uid, session.split(":")[0], 0, "oneadmin")
    assert oid in pool(daemon, -3, session=session)
    assert one.image.chown(oid, -1, 1) == oid
    xml = info(daemon, oid)
    assert (num(xml, "UID"), num(xml, "GID"), field(xml, "GNAME")) == (uid, 1, "users")
    # no check that the new owner belongs to the new group
    assert ok(daemon, "one.image.chown", oid, 0, 1) == oid
    assert (num(info(daemon, oid), "UID"), num(info(daemon, oid), "GID")) == (0, 1)


def test_chown_name_collision(daemon, ds):
    uid, session = user(daemon)
    name = unique("same")
    theirs = ok(daemon, "one.image.allocate", f'NAME="{name}"\nTYPE="DATABLOCK"\nSIZE="1"', ds,
                session=session)
    mine = register(daemon, ds, name=name)
    assert fails(daemon, "one.image.chown", mine, uid, -1) == (
        f"[one.image.chown] user [{uid}] already owns image [{theirs}] with NAME {name}",
        8192, -1)
    assert num(info(daemon, mine), "UID") == 0


def test_chown_by_users(daemon, ds):
    uid, session = user(daemon)
    other_uid, _ = user(daemon)
    oid = ok(daemon, "one.image.allocate", 'NAME="cu"\nTYPE="DATABLOCK"\nSIZE="1"', ds,
             session=session)
    assert fails(daemon, "one.image.chown", oid, other_uid, -1, session=session) == (
        f"[one.image.chown] User [{uid}] : Not authorized to perform MANAGE USER "
        f"[{other_uid}].", 512, -1)
    assert fails(daemon, "one.image.chown", oid, -1, 0, session=session) == (
        f"[one.image.chown] User [{uid}] : Not authorized to perform USE GROUP [0].", 512, -1)
    assert fails(daemon, "one.image.chown", oid, other_uid, 0, session=session) == (
        f"[one.image.chown] User [{uid}] : Not authorized to perform MANAGE USER "
        f"[{other_uid}]; Not authorized to perform USE GROUP [0].", 512, -1)
    # own uid and own group count as "no change"
    assert ok(daemon, "one.image.chown", oid, uid, 1, session=session) == oid
    foreign = register(daemon, ds)
    assert fails(daemon, "one.image.chown", foreign, uid, -1, session=session) == (
        f"[one.image.chown] User [{uid}] : Not authorized to perform MANAGE IMAGE "
        f"[{foreign}].", 512, -1)


# ------------------------------------------------------------------ rename
def test_rename(daemon, ds, one):
    oid = register(daemon, ds, name=unique("before"))
    new = unique("after with space")
    assert ok(daemon, "one.image.rename", oid, new) == oid
    assert field(info(daemon, oid), "NAME") == new
    assert one.image.rename(oid, "ünïcode") == oid
    assert field(info(daemon, oid), "NAME") == "ünïcode"


def test_rename_errors(daemon, ds):
    assert fails(daemon, "one.image.rename", 999, "x") == (
        "[one.image.rename] Error getting image [999].", 1024, 999)
    a = register(daemon, ds, name=unique("ra"))
    b_name = unique("rb")
    b = register(daemon, ds, name=b_name)
    assert fails(daemon, "one.image.rename", a, b_name) == (
        f"[one.image.rename] image cannot be renamed to {b_name} because it collides with "
        f"image {b}", 2048, -1)
    assert fails(daemon, "one.image.rename", a, "a:b") == (
        "[one.image.rename] Invalid NAME, char ':' is not allowed", 2048, -1)
    assert fails(daemon, "one.image.rename", a, "") == (
        "[one.image.rename] Invalid NAME, it cannot be empty", 2048, -1)
    assert fails(daemon, "one.image.rename", a, "x" * 129) == (
        "[one.image.rename] Invalid NAME, max length is 128 chars", 2048, -1)


def test_rename_authorization_and_same_name_shortcut(daemon, ds):
    name = unique("keep")
    oid = register(daemon, ds, name=name)
    uid, session = user(daemon)
    assert fails(daemon, "one.image.rename", oid, "x", session=session) == (
        f"[one.image.rename] User [{uid}] : Not authorized to perform MANAGE IMAGE [{oid}].",
        512, -1)
    # the same name succeeds without any authorization
    assert ok(daemon, "one.image.rename", oid, name, session=session) == oid
    # another owner's image of that name is no collision
    mine = ok(daemon, "one.image.allocate", 'NAME="x"\nTYPE="DATABLOCK"\nSIZE="1"', ds,
              session=session)
    assert ok(daemon, "one.image.rename", mine, name, session=session) == mine
