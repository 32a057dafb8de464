"""one.datastore.* and one.datastorepool.info against the real daemon (api.md §1.8, §8)."""

from __future__ import annotations

import re
from pathlib import Path

import pyone
import pytest

from tests.conftest import unique
from tests.support.daemon import wait_for
from tests.support.replies import fails, ok

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"
AUTH, AUTHZ, NO_EXISTS, ACTION, API, INTERNAL = 256, 512, 1024, 2048, 4096, 8192
IMAGE_DS_TEMPLATE = (
    "<ALLOW_ORPHANS><![CDATA[FORMAT]]></ALLOW_ORPHANS><CLONE_TARGET><![CDATA[SYSTEM]]>"
    "</CLONE_TARGET><DISK_TYPE><![CDATA[FILE]]></DISK_TYPE><DS_MAD><![CDATA[fs]]></DS_MAD>"
    "<LN_TARGET><![CDATA[SYSTEM]]></LN_TARGET><PERSISTENT_SNAPSHOTS><![CDATA[YES]]>"
    "</PERSISTENT_SNAPSHOTS><RESTRICTED_DIRS><![CDATA[/]]></RESTRICTED_DIRS><SAFE_DIRS>"
    "<![CDATA[/var/tmp]]></SAFE_DIRS><TM_MAD><![CDATA[local]]></TM_MAD><TYPE><![CDATA["
    "IMAGE_DS]]></TYPE>")



def normalise(xml: str) -> str:
    """Blank out what differs by machine: BASE_PATH prefix, monitor figures, IMAGES."""
    xml = re.sub(r"<BASE_PATH><!\[CDATA\[.*?/(\d+)\]\]></BASE_PATH>",
                 r"<BASE_PATH><![CDATA[BASE/\1]]></BASE_PATH>", xml)
    for tag in ("TOTAL_MB", "FREE_MB", "USED_MB"):
        xml = re.sub(rf"<{tag}>\d+</{tag}>", f"<{tag}>N</{tag}>", xml)
    return re.sub(r"<IMAGES>(<ID>\d+</ID>)*</IMAGES>", "<IMAGES></IMAGES>", xml)


def perms_xml(text: str) -> str:
    names = ("OWNER_U", "OWNER_M", "OWNER_A", "GROUP_U", "GROUP_M", "GROUP_A",
             "OTHER_U", "OTHER_M", "OTHER_A")
    bits = [0 if c == "-" else 1 for c in text.replace(" ", "")]
    return "<PERMISSIONS>" + "".join(f"<{n}>{b}</{n}>" for n, b in zip(names, bits,
                                                                      strict=True)) + \
        "</PERMISSIONS>"


def ds_doc(oid: int, name: str, template: str, *, ds_mad: str = "fs", tm_mad: str = "local",
           type_: int = 0, disk_type: int = 0, state: int = 0, perms: str = "um- u-- ---",
           owner: tuple[int, int, str, str] = (0, 0, "oneadmin", "oneadmin"),
           images: str = "") -> str:
    """A DATASTORE document in normalised form (see normalise)."""
    uid, gid, uname, gname = owner
    return (f"<DATASTORE><ID>{oid}</ID><UID>{uid}</UID><GID>{gid}</GID><UNAME>{uname}</UNAME>"
            f"<GNAME>{gname}</GNAME><NAME>{name}</NAME>{perms_xml(perms)}"
            f"<DS_MAD><![CDATA[{ds_mad}]]></DS_MAD><TM_MAD><![CDATA[{tm_mad}]]></TM_MAD>"
            f"<BASE_PATH><![CDATA[BASE/{oid}]]></BASE_PATH><TYPE>{type_}</TYPE>"
            f"<DISK_TYPE>{disk_type}</DISK_TYPE><STATE>{state}</STATE>"
            "<CLUSTERS><ID>0</ID></CLUSTERS><TOTAL_MB>N</TOTAL_MB><FREE_MB>N</FREE_MB>"
            f"<USED_MB>N</USED_MB><IMAGES>{images}</IMAGES><TEMPLATE>{template}</TEMPLATE>"
            "</DATASTORE>")


def info(proxy, session, oid: int) -> str:
    return normalise(ok(proxy.one.datastore.info(session, oid)))


@pytest.fixture
def admin(daemon):
    return daemon.raw(), daemon.session()


def new_user(daemon, groups: list[int] | None = None):
    name = unique("dsu")
    uid = daemon.raw().one.user.allocate(daemon.session(), name, "pw", "", groups or [])[1]
    return uid, name, f"{name}:pw"


def new_ds(proxy, session, extra: str = "", mad: str = "fs", tm: str = "local"):
    name = unique("ds")
    oid = ok(proxy.one.datastore.allocate(
        session, f'NAME="{name}"\nDS_MAD="{mad}"\nTM_MAD="{tm}"\n{extra}', -1))
    return oid, name


# --------------------------------------------------------------------- bootstrap
def test_bootstrap_datastores_match_oned(fresh_daemon):
    d = fresh_daemon()
    proxy, s = d.raw(), d.session()
    pool = ok(proxy.one.datastorepool.info(s))
    sample = (SAMPLES / "one.datastorepool.info.body.xml").read_text().strip()
    assert normalise(pool) == normalise(sample)
    for oid in (0, 1, 2):
        assert f"<BASE_PATH><![CDATA[{d.var}/datastores/{oid}]]></BASE_PATH>" in pool
        assert ok(proxy.one.datastore.info(s, oid)) in pool
    # the default datastores are monitored before the port opens; the system one is not
    figures = {int(i): (int(t), int(f), int(u)) for i, t, f, u in re.findall(
        r"<DATASTORE><ID>(\d+)</ID>.*?<TOTAL_MB>(\d+)</TOTAL_MB><FREE_MB>(\d+)</FREE_MB>"
        r"<USED_MB>(\d+)</USED_MB>", pool)}
    assert figures[0] == (0, 0, 0)
    for oid in (1, 2):
        total, free, used = figures[oid]
        assert total > 0 and 0 <= free <= total and 0 <= used <= total
    # user datastores start at 100
    oid, _ = new_ds(proxy, s)
    assert oid == 100
    # oned 7 lets even the default datastores go
    assert ok(proxy.one.datastore.delete(s, 2)) == 2
    assert [int(i) for i in re.findall(r"<DATASTORE><ID>(\d+)</ID>",
                                       ok(proxy.one.datastorepool.info(s)))] == [100, 1, 0]
    oid, _ = new_ds(proxy, s)
    assert oid == 101


def test_monitor_figures_of_the_default_datastore(daemon, one):
    ds = one.datastore.info(1)
    assert ds.TOTAL_MB > 0 and ds.FREE_MB <= ds.TOTAL_MB and ds.USED_MB <= ds.TOTAL_MB
    assert (ds.ID, ds.NAME, ds.TYPE, ds.DS_MAD, ds.TM_MAD, ds.CLUSTERS.ID) == (
        1, "default", 0, "fs", "local", [0])
    assert ds.BASE_PATH == f"{daemon.var}/datastores/1"
    assert one.datastore.info(0).TOTAL_MB == 0


# ----------------------------------------------------------------------- allocate
def test_allocate_text_and_xml_templates(daemon, admin):
    proxy, s = admin
    oid, name = new_ds(proxy, s, 'DESCRIPTION="text"\nLN_TARGET="NONE"')
    # TM_MAD_CONF wins over the template for LN_TARGET/CLONE_TARGET
    assert info(proxy, s, oid) == ds_doc(oid, name, IMAGE_DS_TEMPLATE.replace(
        "<DISK_TYPE>", "<DESCRIPTION><![CDATA[text]]></DESCRIPTION><DISK_TYPE>"))
    xname = unique("xds")
    xid = ok(proxy.one.datastore.allocate(
        s, f"<TEMPLATE><NAME>{xname}</NAME><TYPE>file_ds</TYPE><DS_MAD>fs</DS_MAD>"
        "<TM_MAD>local</TM_MAD><DISK_TYPE>BLOCK</DISK_TYPE><SAFE_DIRS>/srv</SAFE_DIRS>"
        "</TEMPLATE>", -1))
    assert xid == oid + 1
    assert info(proxy, s, xid) == ds_doc(
        xid, xname, type_=2,
        template="<ALLOW_ORPHANS><![CDATA[FORMAT]]></ALLOW_ORPHANS><CLONE_TARGET><![CDATA["
        "SYSTEM]]></CLONE_TARGET><DS_MAD><![CDATA[fs]]></DS_MAD><LN_TARGET><![CDATA[SYSTEM]]>"
        "</LN_TARGET><PERSISTENT_SNAPSHOTS><![CDATA[YES]]></PERSISTENT_SNAPSHOTS><SAFE_DIRS>"
        "<![CDATA[/srv]]></SAFE_DIRS><TM_MAD><![CDATA[local]]></TM_MAD><TYPE><![CDATA["
        "FILE_DS]]></TYPE>")
    # a system datastore: no DS_MAD, SHARED/DS_MIGRATE from TM_MAD_CONF
    sname = unique("sys")
    sid = ok(proxy.one.datastore.allocate(
        s, f'NAME="{sname}"\nTYPE="SYSTEM_DS"\nTM_MAD="shared"\nLN_TARGET="SELF"', -1))
    assert info(proxy, s, sid) == ds_doc(
        sid, sname, ds_mad="-", tm_mad="shared", type_=1,
        template="<ALLOW_ORPHANS><![CDATA[MIXED]]></ALLOW_ORPHANS><DISK_TYPE><![CDATA[FILE]]>"
        "</DISK_TYPE><DS_MIGRATE><![CDATA[YES]]></DS_MIGRATE><PERSISTENT_SNAPSHOTS><![CDATA["
        "YES]]></PERSISTENT_SNAPSHOTS><RESTRICTED_DIRS><![CDATA[/]]></RESTRICTED_DIRS>"
        "<SAFE_DIRS><![CDATA[/var/tmp]]></SAFE_DIRS><SHARED><![CDATA[YES]]></SHARED><TM_MAD>"
        "<![CDATA[shared]]></TM_MAD><TYPE><![CDATA[SYSTEM_DS]]></TYPE>")
    # a backup datastore has no TM_MAD
    bname = unique("bck")
    bid = ok(proxy.one.datastore.allocate(s, f'NAME="{bname}"\nTYPE="BACKUP_DS"\n'
                                             'DS_MAD="dummy"', -1))
    assert info(proxy, s, bid) == ds_doc(
        bid, bname, ds_mad="dummy", tm_mad="-", type_=3,
        template="<DS_MAD><![CDATA[dummy]]></DS_MAD><RESTRICTED_DIRS><![CDATA[/]]>"
        "</RESTRICTED_DIRS><SAFE_DIRS><![CDATA[/var/tmp]]></SAFE_DIRS><TYPE><![CDATA["
        "BACKUP_DS]]></TYPE>")
    # an image datastore with another disk type, through pyone
    one = daemon.client()
    bl = one.datastore.allocate({"NAME": unique("blk"), "DS_MAD": "dummy", "TM_MAD": "dummy",
                                 "DISK_TYPE": "block"}, -1)
    ds = one.datastore.info(bl)
    assert (ds.TYPE, ds.DISK_TYPE, ds.TEMPLATE["DISK_TYPE"], ds.TEMPLATE["LN_TARGET"]) == (
        0, 2, "BLOCK", "NONE")
    # an unknown TYPE is an image datastore (Datastore::str_to_type)
    fid = ok(proxy.one.datastore.allocate(s, f'NAME="{unique("foo")}"\nTYPE="FOO"\n'
                                             'DS_MAD="fs"\nTM_MAD="local"', -1))
    assert "<TYPE>0</TYPE>" in ok(proxy.one.datastore.info(s, fid))
    assert "<TYPE><![CDATA[IMAGE_DS]]></TYPE>" in ok(proxy.one.datastore.info(s, fid))


def test_allocate_errors(daemon, admin):
    proxy, s = admin
    m = "[one.datastore.allocate]"
    name = unique("e")
    cases = [
        (f'NAME="{name}"\nTM_MAD="local"', "No DS_MAD in template."),
        (f'NAME="{name}"\nDS_MAD="fs"', "No TM_MAD in template."),
        (f'NAME="{name}"\nTYPE="SYSTEM_DS"\nDS_MAD="fs"\nTM_MAD="local"',
         "SYSTEM datastores cannot have DS_MAD defined."),
        (f'NAME="{name}"\nTYPE="SYSTEM_DS"', "No TM_MAD in template."),
        ('NAME="default"\nDS_MAD="fs"\nTM_MAD="local"', "NAME is already taken by DATASTORE 1."),
        ('NAME="system"\nTM_MAD="local"', "NAME is already taken by DATASTORE 0."),
        ('DS_MAD="fs"\nTM_MAD="local"', "Invalid NAME, it cannot be empty"),
        ('NAME="a/b"\nDS_MAD="fs"\nTM_MAD="local"', "Invalid NAME, char '/' is not allowed"),
        (f'NAME="{"n" * 129}"\nDS_MAD="fs"\nTM_MAD="local"',
         "Invalid NAME, max length is 128 chars"),
        (f'NAME="{name}"\nDS_MAD="fs"\nTM_MAD="local"\nDISK_TYPE="FLOPPY"',
         "Unknown DISK_TYPE in template."),
        (f'NAME="{name}"\nDS_MAD="fs"\nTM_MAD="local"\nDISK_TYPE="CDROM"',
         "Invalid DISK_TYPE for an Image Datastore."),
        (f'NAME="{name}"\nTYPE="SYSTEM_DS"\nTM_MAD="local"\nDISK_TYPE="ISCSI"',
         "Invalid DISK_TYPE for a System Datastore."),
        ("NAME", "Parse error: syntax error, unexpected $end, expecting EQUAL or EQUAL_EMPTY "
                 "at line 0, columns 1:5"),
    ]
    for template, text in cases:
        fails(proxy.one.datastore.allocate(s, template, -1), f"{m} {text}", INTERNAL)
    good = f'NAME="{name}"\nDS_MAD="fs"\nTM_MAD="local"'
    fails(proxy.one.datastore.allocate(s, good, 5), f"{m} Error getting cluster [5].",
          NO_EXISTS, 5)
    uid, _, session = new_user(daemon)
    fails(proxy.one.datastore.allocate(session, good, -1),
          f"{m} User [{uid}] : Not authorized to perform CREATE DATASTORE; "
          "Not authorized to perform ADMIN CLUSTER [0].", AUTHZ)
    # nothing of the above took an id or the name
    oid = ok(proxy.one.datastore.allocate(s, good, 0))
    assert ok(proxy.one.datastore.allocate(s, good.replace(name, name + "x"))) == oid + 1
    fails(proxy.one.datastore.allocate(s, good, -1),
          f"{m} NAME is already taken by DATASTORE {oid}.", INTERNAL)
    with pytest.raises(pyone.OneInternalException, match=r"No DS_MAD in template\."):
        daemon.client().datastore.allocate({"NAME": unique("p"), "TM_MAD": "local"}, -1)


def test_new_datastore_permissions_follow_the_umask(daemon, admin):
    proxy, s = admin
    uid, name, session = new_user(daemon, groups=[0])
    ok(proxy.one.user.update(s, uid, 'UMASK="002"', 1))
    oid, dsname = new_ds(proxy, session)
    assert info(proxy, s, oid) == ds_doc(oid, dsname, IMAGE_DS_TEMPLATE, perms="uma uma u-a",
                                         owner=(uid, 0, name, "oneadmin"))
    ok(proxy.one.user.update(s, uid, 'UMASK="777"', 1))
    oid, dsname = new_ds(proxy, session)
    # GROUP_U is always granted on a new datastore
    assert perms_xml("--- u-- ---") in ok(proxy.one.datastore.info(s, oid))


# ------------------------------------------------------------------ info & pool
def test_info_and_pool_visibility(daemon, admin):
    proxy, s = admin
    oid, name = new_ds(proxy, s)
    fails(proxy.one.datastore.info(s, 99999), "[one.datastore.info] Error getting datastore "
          "[99999].", NO_EXISTS, 99999)
    fails(proxy.one.datastore.info(s, -1), "[one.datastore.info] Error getting datastore "
          "Pool.", NO_EXISTS, -1)
    everything = ok(proxy.one.datastorepool.info(s))
    ids = [int(i) for i in re.findall(r"<DATASTORE><ID>(\d+)</ID>", everything)]
    assert ids == sorted(ids, reverse=True) and {0, 1, 2, oid} <= set(ids)
    # "@1 DATASTORE/* USE #0": members of users see every datastore
    uid, _, session = new_user(daemon)
    # (monitor figures may move between calls)
    assert normalise(ok(proxy.one.datastorepool.info(session))) == normalise(everything)
    assert info(proxy, session, oid) == info(proxy, s, oid)
    # a user only in a new group: the group joined the default VDC, whose rule
    # "@<gid> DATASTORE/* USE #0" opens them all as well
    gid = ok(proxy.one.group.allocate(s, unique("g")))
    uid2, _, session2 = new_user(daemon, groups=[gid])
    assert normalise(ok(proxy.one.datastorepool.info(session2))) == normalise(everything)
    # API_LIST_ORDER per user
    ok(proxy.one.user.update(s, uid2, 'OPENNEBULA=[API_LIST_ORDER="ASC"]', 1))
    asc = ok(proxy.one.datastorepool.info(session2))
    assert [int(i) for i in re.findall(r"<DATASTORE><ID>(\d+)</ID>", asc)] == sorted(ids)
    # pyone
    pool = daemon.client().datastorepool.info()
    assert {d.NAME: d.ID for d in pool.DATASTORE}[name] == oid


# ---------------------------------------------------------------- update
def test_update_replace_and_merge(daemon, admin):
    proxy, s = admin
    oid, name = new_ds(proxy, s)
    m = "[one.datastore.update]"
    assert ok(proxy.one.datastore.update(s, oid, 'LIMIT_MB="100"\nDISK_TYPE="BLOCK"', 1)) == oid
    assert info(proxy, s, oid) == ds_doc(oid, name, disk_type=2, template=IMAGE_DS_TEMPLATE
                                         .replace("FILE", "BLOCK")
                                         .replace("<LN_TARGET>", "<LIMIT_MB><![CDATA[100]]>"
                                                                 "</LIMIT_MB><LN_TARGET>"))
    # replace: the template is the new one, TYPE/DISK_TYPE/DS_MAD/TM_MAD are kept in it
    ok(proxy.one.datastore.update(s, oid, "<TEMPLATE><ONLY>this</ONLY></TEMPLATE>", 0))
    assert info(proxy, s, oid) == ds_doc(
        oid, name, disk_type=2,
        template="<DISK_TYPE><![CDATA[BLOCK]]></DISK_TYPE><DS_MAD><![CDATA[fs]]></DS_MAD>"
        "<ONLY><![CDATA[this]]></ONLY><TM_MAD><![CDATA[local]]></TM_MAD><TYPE><![CDATA["
        "IMAGE_DS]]></TYPE>")
    # changing the drivers through the template
    ok(proxy.one.datastore.update(s, oid, 'DS_MAD="dummy"\nTM_MAD="dummy"'))
    doc = ok(proxy.one.datastore.info(s, oid))
    assert "<DS_MAD><![CDATA[dummy]]></DS_MAD><TM_MAD><![CDATA[dummy]]></TM_MAD>" in doc
    fails(proxy.one.datastore.update(s, oid, 'A="1"', 2), f"{m} Wrong update type", API)
    fails(proxy.one.datastore.update(s, 99999, 'A="1"', 0),
          f"{m} Error getting datastore [99999].", NO_EXISTS, 99999)
    uid, _, session = new_user(daemon)
    fails(proxy.one.datastore.update(session, oid, 'A="1"', 1),
          f"{m} User [{uid}] : Not authorized to perform MANAGE DATASTORE [{oid}].", AUTHZ)
    fails(proxy.one.datastore.update(s, oid, "A B", 1),
          f"{m} Cannot update template. Parse error: syntax error, unexpected VARIABLE, "
          "expecting EQUAL or EQUAL_EMPTY at line 0, columns 3:4", INTERNAL)
    daemon.client().datastore.update(oid, {"FROM_PYONE": "yes"}, 1)
    assert daemon.client().datastore.info(oid).TEMPLATE["FROM_PYONE"] == "yes"


# ---------------------------------------------------------------- chmod / chown
def test_chmod(daemon, admin):
    proxy, s = admin
    oid, name = new_ds(proxy, s)
    m = "[one.datastore.chmod]"
    assert ok(proxy.one.datastore.chmod(s, oid, -1, -1, 1, 0, 1, -1, 1, -1, -1)) == oid
    assert perms_xml("uma -m- u--") in ok(proxy.one.datastore.info(s, oid))
    fails(proxy.one.datastore.chmod(s, oid, 2, -1, -1, -1, -1, -1, -1, -1, -1),
          f"{m} New permission values must be -1, 0 or 1", INTERNAL)
    fails(proxy.one.datastore.chmod(s, oid, -1, -1, -1, -1, -1, -1, -1, -1, -2),
          f"{m} New permission values must be -1, 0 or 1", INTERNAL)
    fails(proxy.one.datastore.chmod(s, 99999, 1, 1, 1, 1, 1, 1, 1, 1, 1),
          f"{m} Error getting datastore [99999].", NO_EXISTS, 99999)
    # an owner (without OWNER_A) may change MANAGE-level bits but not ADMIN ones
    ok(proxy.one.datastore.chmod(s, oid, 1, 1, 0, 1, 0, 0, 0, 0, 0))
    uid, uname, session = new_user(daemon)
    ok(proxy.one.datastore.chown(s, oid, uid, -1))
    fails(proxy.one.datastore.chmod(session, oid, -1, -1, 1, -1, -1, -1, -1, -1, -1),
          f"{m} User [{uid}] : Not authorized to perform ADMIN DATASTORE [{oid}].", AUTHZ)
    fails(proxy.one.datastore.chmod(session, oid, -1, -1, -1, -1, -1, 1, -1, -1, -1),
          f"{m} User [{uid}] : Not authorized to perform ADMIN DATASTORE [{oid}].", AUTHZ)
    # values equal to the current ADMIN bits do not count as changes
    assert ok(proxy.one.datastore.chmod(session, oid, 1, 1, 0, 1, 1, 0, 1, 0, 0)) == oid
    assert perms_xml("um- um- u--") in ok(proxy.one.datastore.info(s, oid))
    # someone else gets nothing
    other, _, other_session = new_user(daemon)
    fails(proxy.one.datastore.chmod(other_session, oid, -1, -1, -1, 1, -1, -1, -1, -1, -1),
          f"{m} User [{other}] : Not authorized to perform MANAGE DATASTORE [{oid}].", AUTHZ)
    # pyone
    daemon.client().datastore.chmod(oid, 1, 1, 0, 1, 0, 0, 0, 0, 0)
    p = daemon.client().datastore.info(oid).PERMISSIONS
    assert (p.OWNER_U, p.OWNER_M, p.OWNER_A, p.GROUP_U, p.GROUP_M, p.OTHER_U) == (
        1, 1, 0, 1, 0, 0)


def test_chmod_other_bits_when_disabled(fresh_daemon):
    d = fresh_daemon('ENABLE_OTHER_PERMISSIONS = "NO"\n')
    proxy, s = d.raw(), d.session()
    oid, _ = new_ds(proxy, s)
    uid = ok(proxy.one.user.allocate(s, "owner", "pw", "", []))
    ok(proxy.one.datastore.chown(s, oid, uid, 1))
    fails(proxy.one.datastore.chmod("owner:pw", oid, -1, -1, -1, -1, -1, -1, 1, -1, -1),
          f"[one.datastore.chmod] User [{uid}] : 'other' permissions is disabled in "
          "oned.conf.", AUTHZ)
    assert ok(proxy.one.datastore.chmod("owner:pw", oid, -1, -1, -1, -1, 1, -1, 0, -1, -1)) == oid
    assert perms_xml("um- um- ---") in ok(proxy.one.datastore.info(s, oid))
    assert ok(proxy.one.datastore.chmod(s, oid, -1, -1, -1, -1, -1, -1, 1, -1, -1)) == oid
    assert perms_xml("um- um- u--") in ok(proxy.one.datastore.info(s, oid))


def test_chown(daemon, admin):
    proxy, s = admin
    oid, name = new_ds(proxy, s)
    m = "[one.datastore.chown]"
    uid, uname, session = new_user(daemon)
    gid = ok(proxy.one.group.allocate(s, gname := unique("g")))
    assert ok(proxy.one.datastore.chown(s, oid, uid, gid)) == oid
    assert info(proxy, s, oid) == ds_doc(oid, name, IMAGE_DS_TEMPLATE,
                                         owner=(uid, gid, uname, gname))
    assert ok(proxy.one.datastore.chown(s, oid, -1, 1)) == oid
    assert info(proxy, s, oid) == ds_doc(oid, name, IMAGE_DS_TEMPLATE,
                                         owner=(uid, 1, uname, "users"))
    fails(proxy.one.datastore.chown(s, oid, 99999, -1), f"{m} Error getting user [99999].",
          NO_EXISTS, 99999)
    fails(proxy.one.datastore.chown(s, oid, -1, 99999), f"{m} Error getting group [99999].",
          NO_EXISTS, 99999)
    fails(proxy.one.datastore.chown(s, 99999, 0, 0), f"{m} Error getting datastore [99999].",
          NO_EXISTS, 99999)
    # the owner (MANAGE) may not give it to someone else nor to a foreign group
    fails(proxy.one.datastore.chown(session, oid, 0, 0),
          f"{m} User [{uid}] : Not authorized to perform MANAGE USER [0]; "
          "Not authorized to perform USE GROUP [0].", AUTHZ)
    # ... but may keep it (unchanged ids are not checked)
    assert ok(proxy.one.datastore.chown(session, oid, uid, 1)) == oid
    # users MANAGE themselves, so only the datastore is refused here
    fails(proxy.one.datastore.chown(session, 1, uid, -1),
          f"{m} User [{uid}] : Not authorized to perform MANAGE DATASTORE [1].", AUTHZ)
    daemon.client().datastore.chown(oid, 0, 0)
    ds = daemon.client().datastore.info(oid)
    assert (ds.UID, ds.GID, ds.UNAME, ds.GNAME) == (0, 0, "oneadmin", "oneadmin")


# --------------------------------------------------------------- rename / enable
def test_rename(daemon, admin):
    proxy, s = admin
    oid, name = new_ds(proxy, s, 'DATASTORE_CAPACITY_CHECK="NO"', mad="dummy", tm="dummy")
    iid = ok(proxy.one.image.allocate(s, 'NAME="renamed-ds-img"\nSOURCE="/var/tmp/x"\n'
                                         'FORMAT="raw"\nSIZE="1"', oid))
    m = "[one.datastore.rename]"
    new = unique("renamed")
    assert ok(proxy.one.datastore.rename(s, oid, new)) == oid
    assert f"<NAME>{new}</NAME>" in ok(proxy.one.datastore.info(s, oid))
    assert f"<DATASTORE>{new}</DATASTORE>" in ok(proxy.one.image.info(s, iid))
    fails(proxy.one.datastore.rename(s, oid, "default"),
          f"{m} datastore cannot be renamed to default because it collides with datastore 1",
          ACTION)
    fails(proxy.one.datastore.rename(s, oid, "a/b"), f"{m} Invalid NAME, char '/' is not "
          "allowed", ACTION)
    fails(proxy.one.datastore.rename(s, oid, ""), f"{m} Invalid NAME, it cannot be empty",
          ACTION)
    fails(proxy.one.datastore.rename(s, 99999, "x"), f"{m} Error getting datastore [99999].",
          NO_EXISTS, 99999)
    uid, _, session = new_user(daemon)
    fails(proxy.one.datastore.rename(session, oid, unique("no")),
          f"{m} User [{uid}] : Not authorized to perform MANAGE DATASTORE [{oid}].", AUTHZ)
    # the same name succeeds without any authorization
    assert proxy.one.datastore.rename(session, oid, new) == [True, oid, 0]
    daemon.client().datastore.rename(oid, name)
    assert daemon.client().datastore.info(oid).NAME == name
    assert daemon.client().image.info(iid).DATASTORE == name


def test_enable_only_system_datastores(daemon, admin):
    proxy, s = admin
    sid = ok(proxy.one.datastore.allocate(s, f'NAME="{unique("sys")}"\nTYPE="SYSTEM_DS"\n'
                                             'TM_MAD="local"', -1))
    m = "[one.datastore.enable]"
    assert ok(proxy.one.datastore.enable(s, sid, False)) == sid
    assert "<STATE>1</STATE>" in ok(proxy.one.datastore.info(s, sid))
    assert ok(proxy.one.datastore.enable(s, sid, True)) == sid
    assert "<STATE>0</STATE>" in ok(proxy.one.datastore.info(s, sid))
    fails(proxy.one.datastore.enable(s, 1, False),
          f"{m} Only SYSTEM_DS can be disabled or enabled", INTERNAL)
    fails(proxy.one.datastore.enable(s, 99999, True), f"{m} Error getting datastore [99999].",
          NO_EXISTS, 99999)
    uid, _, session = new_user(daemon)
    fails(proxy.one.datastore.enable(session, sid, False),
          f"{m} User [{uid}] : Not authorized to perform MANAGE DATASTORE [{sid}].", AUTHZ)
    daemon.client().datastore.enable(sid, False)
    assert daemon.client().datastore.info(sid).STATE == 1


# ----------------------------------------------------------------------- delete
def test_delete(daemon, admin):
    proxy, s = admin
    oid, name = new_ds(proxy, s, 'DATASTORE_CAPACITY_CHECK="NO"', mad="dummy", tm="dummy")
    iid = ok(proxy.one.image.allocate(s, 'NAME="keeps-ds-busy"\nSOURCE="/var/tmp/x"\n'
                                         'FORMAT="raw"\nSIZE="1"', oid))
    assert f"<IMAGES><ID>{iid}</ID></IMAGES>" in ok(proxy.one.datastore.info(s, oid))
    m = "[one.datastore.delete]"
    fails(proxy.one.datastore.delete(s, oid),
          f"{m} Cannot delete datastore. Datastore {oid} is not empty.", ACTION)
    uid, _, session = new_user(daemon)
    fails(proxy.one.datastore.delete(session, oid),
          f"{m} User [{uid}] : Not authorized to perform ADMIN DATASTORE [{oid}].", AUTHZ)
    fails(proxy.one.datastore.delete(s, 99999), f"{m} Error getting datastore [99999].",
          NO_EXISTS, 99999)
    ok(proxy.one.image.delete(s, iid))
    wait_for(lambda: proxy.one.image.info(s, iid)[0] is False)
    assert ok(proxy.one.datastore.delete(s, oid)) == oid
    fails(proxy.one.datastore.info(s, oid), f"[one.datastore.info] Error getting datastore "
          f"[{oid}].", NO_EXISTS, oid)
    assert f"<NAME>{name}</NAME>" not in ok(proxy.one.datastorepool.info(s))
    # the name is free again, the id is not reused
    again = ok(proxy.one.datastore.allocate(s, f'NAME="{name}"\nDS_MAD="fs"\nTM_MAD="local"'))
    assert again > oid
    daemon.client().datastore.delete(again)
    with pytest.raises(pyone.OneNoExistsException):
        daemon.client().datastore.info(again)


# ------------------------------------------------------ TM_MAD_CONF (issue 7)
def _without_tm_mad_conf(d) -> None:
    """Make ``d`` write the shipped configuration minus every TM_MAD_CONF vector."""
    write = d.write_config

    def write_config():
        conf = write()
        conf.write_text(re.sub(r"^TM_MAD_CONF\s*=\s*\[.*?\]\s*$", "", conf.read_text(),
                               flags=re.S | re.M))
        return conf

    d.write_config = write_config


def test_bootstrap_datastores_without_tm_mad_conf_in_the_file(fresh_daemon):
    # oned has built-in TM_MAD_CONF entries for the drivers a file does not configure
    # (OpenNebulaTemplate::set_multiple_conf_default), so a minimal file still gives the
    # default datastores their LN_TARGET, CLONE_TARGET, ALLOW_ORPHANS, ...
    d = fresh_daemon(start=False)
    _without_tm_mad_conf(d)
    d.start()
    assert "TM_MAD_CONF" not in (d.tmp / "oned-images.conf").read_text()
    proxy, s = d.raw(), d.session()
    sample = (SAMPLES / "one.datastorepool.info.body.xml").read_text().strip()
    assert normalise(ok(proxy.one.datastorepool.info(s))) == normalise(sample)
    # ... and so does a datastore allocated later
    oid, name = new_ds(proxy, s)
    assert info(proxy, s, oid) == ds_doc(oid, name, IMAGE_DS_TEMPLATE)


def test_persistent_snapshots_default_and_tm_mad_system_modes(fresh_daemon):
    d = fresh_daemon(
        'TM_MAD_CONF = [ NAME = "modes", LN_TARGET = "none", CLONE_TARGET = "self", '
        'SHARED = "yes", TM_MAD_SYSTEM = "ssh, shared", LN_TARGET_SSH = "system", '
        'CLONE_TARGET_SSH = "SYSTEM", DISK_TYPE_SSH = "FILE", LN_TARGET_SHARED = "NONE", '
        'CLONE_TARGET_SHARED = "SELF", DISK_TYPE_SHARED = "RBD", '
        'PERSISTENT_SNAPSHOTS = "NO" ]\n')
    proxy, s = d.raw(), d.session()
    oid, name = new_ds(proxy, s, tm="modes")
    assert info(proxy, s, oid) == ds_doc(
        oid, name, tm_mad="modes",
        template="<ALLOW_ORPHANS><![CDATA[NO]]></ALLOW_ORPHANS><CLONE_TARGET><![CDATA[SELF]]>"
        "</CLONE_TARGET><CLONE_TARGET_SHARED><![CDATA[SELF]]></CLONE_TARGET_SHARED>"
        "<CLONE_TARGET_SSH><![CDATA[SYSTEM]]></CLONE_TARGET_SSH><DISK_TYPE><![CDATA[FILE]]>"
        "</DISK_TYPE><DISK_TYPE_SHARED><![CDATA[RBD]]></DISK_TYPE_SHARED><DISK_TYPE_SSH>"
        "<![CDATA[FILE]]></DISK_TYPE_SSH><DS_MAD><![CDATA[fs]]></DS_MAD><LN_TARGET><![CDATA["
        "NONE]]></LN_TARGET><LN_TARGET_SHARED><![CDATA[NONE]]></LN_TARGET_SHARED>"
        "<LN_TARGET_SSH><![CDATA[SYSTEM]]></LN_TARGET_SSH><PERSISTENT_SNAPSHOTS><![CDATA[NO]]>"
        "</PERSISTENT_SNAPSHOTS><RESTRICTED_DIRS><![CDATA[/]]></RESTRICTED_DIRS><SAFE_DIRS>"
        "<![CDATA[/var/tmp]]></SAFE_DIRS><TM_MAD><![CDATA[modes]]></TM_MAD><TM_MAD_SYSTEM>"
        "<![CDATA[ssh, shared]]></TM_MAD_SYSTEM><TYPE><![CDATA[IMAGE_DS]]></TYPE>")
    # a TM_MAD_CONF without PERSISTENT_SNAPSHOTS gives YES (oned 7.0.2's "local" has none,
    # its datastores all show YES), one without ALLOW_ORPHANS gives NO
    oid, name = new_ds(proxy, s, mad="dummy", tm="dummy")
    assert info(proxy, s, oid) == ds_doc(
        oid, name, ds_mad="dummy", tm_mad="dummy",
        template="<ALLOW_ORPHANS><![CDATA[NO]]></ALLOW_ORPHANS><CLONE_TARGET><![CDATA[SYSTEM]]>"
        "</CLONE_TARGET><DISK_TYPE><![CDATA[FILE]]></DISK_TYPE><DS_MAD><![CDATA[dummy]]>"
        "</DS_MAD><LN_TARGET><![CDATA[NONE]]></LN_TARGET><PERSISTENT_SNAPSHOTS><![CDATA[YES]]>"
        "</PERSISTENT_SNAPSHOTS><RESTRICTED_DIRS><![CDATA[/]]></RESTRICTED_DIRS><SAFE_DIRS>"
        "<![CDATA[/var/tmp]]></SAFE_DIRS><TM_MAD><![CDATA[dummy]]></TM_MAD><TYPE><![CDATA["
        "IMAGE_DS]]></TYPE>")


def test_update_applies_tm_mad_conf_again(daemon, admin):
    # Datastore::post_update_template: whenever the new template names a TM_MAD,
    # set_tm_mad runs again, so TM_MAD_CONF wins over the update and a new TM_MAD brings
    # its own values
    proxy, s = admin
    oid, name = new_ds(proxy, s)
    ok(proxy.one.datastore.update(s, oid, 'LN_TARGET="NONE"\nALLOW_ORPHANS="YES"', 1))
    assert info(proxy, s, oid) == ds_doc(oid, name, IMAGE_DS_TEMPLATE)
    ok(proxy.one.datastore.update(s, oid, 'TM_MAD="shared"', 1))
    assert info(proxy, s, oid) == ds_doc(oid, name, tm_mad="shared", template=IMAGE_DS_TEMPLATE
                                         .replace("FORMAT", "MIXED")
                                         .replace("<LN_TARGET><![CDATA[SYSTEM]]>",
                                                  "<LN_TARGET><![CDATA[NONE]]>")
                                         .replace("[local]", "[shared]"))
    # replace without TM_MAD: only TM_MAD itself comes back
    ok(proxy.one.datastore.update(s, oid, 'ONLY="this"', 0))
    assert info(proxy, s, oid) == ds_doc(
        oid, name, tm_mad="shared",
        template="<DISK_TYPE><![CDATA[FILE]]></DISK_TYPE><DS_MAD><![CDATA[fs]]></DS_MAD>"
        "<ONLY><![CDATA[this]]></ONLY><TM_MAD><![CDATA[shared]]></TM_MAD><TYPE><![CDATA["
        "IMAGE_DS]]></TYPE>")
    # a system datastore: SHARED and DS_MIGRATE follow the new TM_MAD
    sname = unique("sys")
    sid = ok(proxy.one.datastore.allocate(s, f'NAME="{sname}"\nTYPE="SYSTEM_DS"\n'
                                             'TM_MAD="local"', -1))
    ok(proxy.one.datastore.update(s, sid, 'TM_MAD="shared"\nSHARED="NO"', 1))
    assert info(proxy, s, sid) == ds_doc(
        sid, sname, ds_mad="-", tm_mad="shared", type_=1,
        template="<ALLOW_ORPHANS><![CDATA[MIXED]]></ALLOW_ORPHANS><DISK_TYPE><![CDATA[FILE]]>"
        "</DISK_TYPE><DS_MIGRATE><![CDATA[YES]]></DS_MIGRATE><PERSISTENT_SNAPSHOTS><![CDATA["
        "YES]]></PERSISTENT_SNAPSHOTS><RESTRICTED_DIRS><![CDATA[/]]></RESTRICTED_DIRS>"
        "<SAFE_DIRS><![CDATA[/var/tmp]]></SAFE_DIRS><SHARED><![CDATA[YES]]></SHARED><TM_MAD>"
        "<![CDATA[shared]]></TM_MAD><TYPE><![CDATA[SYSTEM_DS]]></TYPE>")


def test_update_type_rules(daemon, admin):
    # Datastore::post_update_template: datastore 0 is always the system one, a backup
    # datastore keeps its type, and any other TYPE text is read by str_to_type
    # (unknown -> IMAGE_DS)
    proxy, s = admin
    ok(proxy.one.datastore.update(s, 0, 'TYPE="IMAGE_DS"', 1))
    doc = ok(proxy.one.datastore.info(s, 0))
    assert "<TYPE>1</TYPE>" in doc and "<TYPE><![CDATA[SYSTEM_DS]]></TYPE>" in doc
    bid = ok(proxy.one.datastore.allocate(s, f'NAME="{unique("bck")}"\nTYPE="BACKUP_DS"\n'
                                             'DS_MAD="dummy"', -1))
    ok(proxy.one.datastore.update(s, bid, 'TYPE="IMAGE_DS"', 1))
    doc = ok(proxy.one.datastore.info(s, bid))
    assert "<TYPE>3</TYPE>" in doc and "<TYPE><![CDATA[BACKUP_DS]]></TYPE>" in doc
    fid = ok(proxy.one.datastore.allocate(s, f'NAME="{unique("f")}"\nTYPE="FILE_DS"\n'
                                             'DS_MAD="fs"\nTM_MAD="local"', -1))
    ok(proxy.one.datastore.update(s, fid, 'TYPE="FOO"', 1))
    doc = ok(proxy.one.datastore.info(s, fid))
    assert "<TYPE>0</TYPE>" in doc and "<TYPE><![CDATA[IMAGE_DS]]></TYPE>" in doc


def test_update_checks_the_disk_type(daemon, admin):
    # post_update_template -> set_ds_disk_type: the allocate-time rule; nothing is kept
    proxy, s = admin
    oid, name = new_ds(proxy, s)
    m = "[one.datastore.update]"
    fails(proxy.one.datastore.update(s, oid, 'DISK_TYPE="CDROM"\nX="1"', 1),
          f"{m} Cannot update template. Invalid DISK_TYPE for an Image Datastore.", INTERNAL)
    fails(proxy.one.datastore.update(s, oid, 'DISK_TYPE="FLOPPY"', 1),
          f"{m} Cannot update template. Unknown DISK_TYPE in template.", INTERNAL)
    sid = ok(proxy.one.datastore.allocate(s, f'NAME="{unique("sys")}"\nTYPE="SYSTEM_DS"\n'
                                             'TM_MAD="local"', -1))
    fails(proxy.one.datastore.update(s, sid, 'DISK_TYPE="ISCSI"', 1),
          f"{m} Cannot update template. Invalid DISK_TYPE for a System Datastore.", INTERNAL)
    assert info(proxy, s, oid) == ds_doc(oid, name, IMAGE_DS_TEMPLATE)
    # a files datastore takes any (and shows none)
    fid = ok(proxy.one.datastore.allocate(s, f'NAME="{unique("f")}"\nTYPE="FILE_DS"\n'
                                             'DS_MAD="fs"\nTM_MAD="local"', -1))
    ok(proxy.one.datastore.update(s, fid, 'DISK_TYPE="CDROM"', 1))
    assert "<DISK_TYPE>0</DISK_TYPE>" in ok(proxy.one.datastore.info(s, fid))


def test_a_tm_mad_without_tm_mad_conf_is_refused(daemon, admin):
    # Datastore::set_tm_mad: the TM_MAD must have a TM_MAD_CONF (the file's or one of
    # the built-in four); allocate and update refuse any other, nothing is stored
    proxy, s = admin
    m = "[one.datastore.allocate]"
    name = unique("tm")
    for template in (f'NAME="{name}"\nDS_MAD="fs"\nTM_MAD="nosuch"',
                     f'NAME="{name}"\nTYPE="SYSTEM_DS"\nTM_MAD="nosuch"',
                     f'NAME="{name}"\nTYPE="FILE_DS"\nDS_MAD="fs"\nTM_MAD="nosuch"'):
        fails(proxy.one.datastore.allocate(s, template, -1),
              f'{m} TM_MAD named "nosuch" is not defined in oned.conf', INTERNAL)
    # a backup datastore has no TM_MAD ("-"): whatever it names is not checked
    bid = ok(proxy.one.datastore.allocate(
        s, f'NAME="{unique("b")}"\nTYPE="BACKUP_DS"\nDS_MAD="dummy"\nTM_MAD="nosuch"', -1))
    assert "<TM_MAD><![CDATA[-]]></TM_MAD>" in ok(proxy.one.datastore.info(s, bid))
    oid, name = new_ds(proxy, s)
    before = info(proxy, s, oid)
    m = "[one.datastore.update]"
    for append in (0, 1):
        fails(proxy.one.datastore.update(s, oid, 'TM_MAD="nosuch"\nX="1"', append),
              f'{m} Cannot update template. TM_MAD named "nosuch" is not defined in '
              "oned.conf", INTERNAL)
    assert info(proxy, s, oid) == before == ds_doc(oid, name, IMAGE_DS_TEMPLATE)
    # the four built-in TM_MAD_CONFs are defined without a line in the file
    for tm in ("dummy", "shared", "qcow2", "local"):
        assert ok(proxy.one.datastore.update(s, oid, f'TM_MAD="{tm}"', 1)) == oid
    assert "<TM_MAD><![CDATA[local]]></TM_MAD>" in ok(proxy.one.datastore.info(s, oid))


def test_a_ds_mad_without_ds_mad_conf_is_refused(fresh_daemon):
    # Datastore::set_ds_mad: the DS_MAD needs a DS_MAD_CONF (the file's, or the
    # built-in dummy and fs); update checks it again, with its REQUIRED_ATTRS
    d = fresh_daemon('DS_MAD_CONF = [ NAME = "needy", REQUIRED_ATTRS = "BRIDGE_LIST, X" ]\n')
    proxy, s = d.raw(), d.session()
    m = "[one.datastore.allocate]"
    name = unique("dsm")
    for template in (f'NAME="{name}"\nDS_MAD="nosuch"\nTM_MAD="local"',
                     f'NAME="{name}"\nDS_MAD="nosuch"',
                     f'NAME="{name}"\nTYPE="BACKUP_DS"\nDS_MAD="nosuch"'):
        fails(proxy.one.datastore.allocate(s, template, -1),
              f'{m} DS_MAD named "nosuch" is not defined in oned.conf', INTERNAL)
    fails(proxy.one.datastore.allocate(s, f'NAME="{name}"\nDS_MAD="needy"\nTM_MAD="local"\n'
                                          'BRIDGE_LIST="h"', -1),
          f'{m} Datastore template is missing the "X" attribute or it\'s empty.', INTERNAL)
    needy = ok(proxy.one.datastore.allocate(
        s, f'NAME="{name}"\nDS_MAD="needy"\nTM_MAD="local"\nBRIDGE_LIST="h"\nX="1"', -1))
    oid, other = new_ds(proxy, s)
    before = info(proxy, s, oid)
    m = "[one.datastore.update]"
    for append in (0, 1):
        fails(proxy.one.datastore.update(s, oid, 'DS_MAD="nosuch"', append),
              f'{m} Cannot update template. DS_MAD named "nosuch" is not defined in '
              "oned.conf", INTERNAL)
    assert info(proxy, s, oid) == before == ds_doc(oid, other, IMAGE_DS_TEMPLATE)
    # the required attributes are checked at every update of the template
    needy_before = info(proxy, s, needy)
    fails(proxy.one.datastore.update(s, needy, 'BRIDGE_LIST="h"', 0),
          f'{m} Cannot update template. Datastore template is missing the "X" attribute '
          "or it's empty.", INTERNAL)
    assert info(proxy, s, needy) == needy_before
    assert ok(proxy.one.datastore.update(s, needy, 'Y="2"', 1)) == needy
    # a system datastore has none ("-") and needs none
    sid = ok(proxy.one.datastore.allocate(s, f'NAME="{unique("sys")}"\nTYPE="SYSTEM_DS"\n'
                                             'TM_MAD="local"', -1))
    assert ok(proxy.one.datastore.update(s, sid, 'Z="1"', 1)) == sid
    assert ok(proxy.one.datastore.update(s, oid, 'DS_MAD="dummy"', 1)) == oid

