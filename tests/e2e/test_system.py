"""one.system.version/config and the pools image clients read around images (api.md §8)."""

from __future__ import annotations

import re
import xmlrpc.client

import pytest

from oned_images.domain.identity import server_cipher_token
from tests.conftest import unique
from tests.support.daemon import backend
from tests.support.replies import fails, ok

AUTH, AUTHZ, NO_EXISTS, ACTION, API, INTERNAL = 256, 512, 1024, 2048, 4096, 8192
BAD = "oneadmin:wrong"



def c(name: str, value: str) -> str:
    return f"<{name}><![CDATA[{value}]]></{name}>"


def vector(name: str, **values: str) -> str:
    return f"<{name}>" + "".join(c(k, v) for k, v in sorted(values.items())) + f"</{name}>"


def expected_config(var: str, db: str) -> str:
    """What etc/oned-images.conf plus the test overrides must produce, key by key."""
    return (
        "<OPENNEBULA_CONFIGURATION>"
        + c("API_LIST_ORDER", "DESC")
        + c("DATASTORE_CAPACITY_CHECK", "yes")
        + c("DATASTORE_LOCATION", f"{var}/datastores")
        + vector("DATASTORE_MAD", ARGUMENTS="-t 15 -d dummy,fs", EXECUTABLE="one_datastore")
        + db
        + c("DEFAULT_CDROM_DEVICE_PREFIX", "hd")
        + c("DEFAULT_DEVICE_PREFIX", "sd")
        + c("DEFAULT_IMAGE_PERSISTENT", "")
        + c("DEFAULT_IMAGE_PERSISTENT_NEW", "")
        + c("DEFAULT_IMAGE_TYPE", "OS")
        + c("DEFAULT_UMASK", "177")
        + vector("DS_MAD_CONF", NAME="dummy", PERSISTENT_ONLY="NO", REQUIRED_ATTRS="")
        + vector("DS_MAD_CONF", MARKETPLACE_ACTIONS="export", NAME="fs", PERSISTENT_ONLY="NO",
                 REQUIRED_ATTRS="")
        + c("ENABLE_OTHER_PERMISSIONS", "YES")
        + c("IMAGE_RESTRICTED_ATTR", "SOURCE")
        + c("LISTEN_ADDRESS", "127.0.0.1")
        + vector("LOG", DEBUG_LEVEL="3", SYSTEM="std")
        + c("MESSAGE_SIZE", "1073741824")
        + c("MONITORING_INTERVAL_DATASTORE", "300")
        + c("PORT", "0")
        + c("SESSION_EXPIRATION_TIME", "900")
        + vector("TM_MAD_CONF", CLONE_TARGET="SYSTEM", DS_MIGRATE="YES", LN_TARGET="NONE",
                 NAME="dummy", SHARED="YES")
        + vector("TM_MAD_CONF", ALLOW_ORPHANS="FORMAT", CLONE_TARGET="SYSTEM",
                 DS_MIGRATE="YES", LN_TARGET="SYSTEM", NAME="local",
                 PERSISTENT_SNAPSHOTS="YES", SHARED="NO")
        + vector("TM_MAD_CONF", ALLOW_ORPHANS="MIXED", CLONE_TARGET="SYSTEM",
                 DS_MIGRATE="YES", LN_TARGET="NONE", NAME="shared", SHARED="YES")
        + vector("TM_MAD_CONF", ALLOW_ORPHANS="MIXED", CLONE_TARGET="SYSTEM", DRIVER="qcow2",
                 LN_TARGET="NONE", NAME="qcow2", SHARED="YES")
        # oned 7.0.2's own values (samples/one.system.config.body.xml), line breaks kept
        + c("VM_ADMIN_OPERATIONS", "migrate, delete, recover, retry, deploy, resched,\n"
            "    backup, restore")
        + c("VM_MANAGE_OPERATIONS", "undeploy, hold, release, stop, suspend, resume, reboot,\n"
            "    poweroff, disk-attach, nic-attach, disk-snapshot, terminate, disk-resize,\n"
            "    snapshot, updateconf, rename, resize, update, disk-saveas, sched-action,\n"
            "    sg-attach, pci-attach")
        + c("VM_USE_OPERATIONS", "")
        + "</OPENNEBULA_CONFIGURATION>")


def new_user(daemon, groups: list[int] | None = None):
    name = unique("sys")
    uid = daemon.raw().one.user.allocate(daemon.session(), name, "pw", "", groups or [])[1]
    return uid, name, f"{name}:pw"


# ----------------------------------------------------------------------- version
def test_version_for_every_kind_of_caller(daemon, one):
    proxy = daemon.raw()
    assert one.system.version() == "7.0.2"
    assert proxy.one.system.version(daemon.session()) == [True, "7.0.2", 0]
    _, name, session = new_user(daemon)
    assert proxy.one.system.version(session) == [True, "7.0.2", 0]
    assert daemon.client(name, "pw").system.version() == "7.0.2"
    fails(proxy.one.system.version(BAD),
          "[one.system.version] User couldn't be authenticated, aborting call.", AUTH)
    # extra parameters are ignored
    assert proxy.one.system.version(daemon.session(), 1, "x") == [True, "7.0.2", 0]


# ------------------------------------------------------------------------ config
@pytest.mark.sqlite_only
@pytest.mark.skipif(backend() != "sqlite", reason="the DB vector differs on PostgreSQL")
def test_config_document_reflects_the_configuration(daemon):
    proxy, s = daemon.raw(), daemon.session()
    doc = ok(proxy.one.system.config(s))
    full_db = "<DB>" + c("BACKEND", "sqlite") + c("TIMEOUT", "2500") + "</DB>"
    assert doc == expected_config(str(daemon.var), full_db)
    # DB fields are hidden from callers whose primary group is not oneadmin ...
    uid, name, session = new_user(daemon)
    hidden_db = "<DB>" + c("TIMEOUT", "2500") + "</DB>"
    assert ok(proxy.one.system.config(session)) == expected_config(str(daemon.var), hidden_db)
    # ... even when oneadmin is one of their secondary groups
    ok(proxy.one.user.addgroup(s, uid, 0))
    assert ok(proxy.one.system.config(session)) == expected_config(str(daemon.var), hidden_db)
    ok(proxy.one.user.chgrp(s, uid, 0))
    assert ok(proxy.one.system.config(session)) == doc
    # serveradmin is in oneadmin; a wrapped session runs as (and with the group of) its target
    key = re.search(r"<PASSWORD><!\[CDATA\[([0-9a-f]{64})",
                    ok(proxy.one.user.info(s, 1)))[1]
    other, other_name, _ = new_user(daemon)
    token = server_cipher_token("serveradmin", key, other_name, 2**31 - 1)
    assert ok(proxy.one.system.config(f"serveradmin:{other_name}:{token}")) == \
        expected_config(str(daemon.var), hidden_db)
    token = server_cipher_token("serveradmin", key, "serveradmin", 2**31 - 1)
    assert ok(proxy.one.system.config(f"serveradmin:serveradmin:{token}")) == doc
    fails(proxy.one.system.config(BAD),
          "[one.system.config] User couldn't be authenticated, aborting call.", AUTH)
    # pyone binds it
    conf = daemon.client().system.config()
    assert (conf.DEFAULT_UMASK, conf.PORT, conf.DATASTORE_LOCATION) == (
        ["177"], 0, [f"{daemon.var}/datastores"])


def test_config_of_a_customised_daemon(fresh_daemon, tmp_path):
    location = tmp_path / "elsewhere"
    d = fresh_daemon(f'DEFAULT_UMASK = 027\nENABLE_OTHER_PERMISSIONS = "NO"\n'
                     f'API_LIST_ORDER = "ASC"\nDATASTORE_LOCATION = "{location}"\n'
                     'MESSAGE_SIZE = 5000000\nSESSION_EXPIRATION_TIME = 0\n'
                     'IMAGE_RESTRICTED_ATTR = "SOURCE"\nIMAGE_RESTRICTED_ATTR = "DRIVER"\n'
                     'DATASTORE_CAPACITY_CHECK = "no"\n')
    doc = ok(d.raw().one.system.config(d.session()))
    for expected in (c("API_LIST_ORDER", "ASC"), c("DATASTORE_CAPACITY_CHECK", "no"),
                     c("DATASTORE_LOCATION", str(location)), c("DEFAULT_UMASK", "027"),
                     c("ENABLE_OTHER_PERMISSIONS", "NO"), c("MESSAGE_SIZE", "5000000"),
                     c("SESSION_EXPIRATION_TIME", "0"),
                     c("IMAGE_RESTRICTED_ATTR", "SOURCE") + c("IMAGE_RESTRICTED_ATTR", "DRIVER")):
        assert expected in doc
    # and the daemon behaves accordingly: datastores live there, umask 027, ASC pools
    pool = ok(d.raw().one.datastorepool.info(d.session()))
    assert [int(i) for i in re.findall(r"<DATASTORE><ID>(\d+)</ID>", pool)] == [0, 1, 2]
    assert f"<BASE_PATH><![CDATA[{location}/1]]></BASE_PATH>" in pool
    oid = ok(d.raw().one.datastore.allocate(d.session(), 'NAME="x"\nDS_MAD="fs"\n'
                                                         'TM_MAD="local"', -1))
    info = ok(d.raw().one.datastore.info(d.session(), oid))
    # 777 & ~027 = 750: uma u-a ---
    assert ("<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>1</OWNER_A>"
            "<GROUP_U>1</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>1</GROUP_A><OTHER_U>0</OTHER_U>"
            "<OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>") in info
    assert [int(i) for i in re.findall(r"<USER><ID>(\d+)</ID>",
                                       ok(d.raw().one.userpool.info(d.session())))] == [0, 1]


# ------------------------------------------------------------------ other pools
def test_vm_and_template_pools_are_empty(daemon, one):
    proxy, s = daemon.raw(), daemon.session()
    assert ok(proxy.one.vmpool.info(s, -2, -1, -1, -1)) == "<VM_POOL></VM_POOL>"
    assert ok(proxy.one.vmpool.info(s, -2, 0, -200, -2, "")) == "<VM_POOL></VM_POOL>"
    fails(proxy.one.vmpool.info(s, -5, -1, -1, -1), "[one.vmpool.info] Incorrect filter_flag",
          API)
    fails(proxy.one.vmpool.info(s, -2, -1, -1, 12),
          "[one.vmpool.info] Incorrect filter_flag, state", API)
    with pytest.raises(xmlrpc.client.Fault, match="Not enough parameters"):
        proxy.one.vmpool.info(s, -2, -1, -1)
    assert ok(proxy.one.templatepool.info(s, -2, -1, -1)) == (
        "<VMTEMPLATE_POOL></VMTEMPLATE_POOL>")
    fails(proxy.one.templatepool.info(s, -9, -1, -1),
          "[one.templatepool.info] Incorrect filter_flag", API)
    with pytest.raises(xmlrpc.client.Fault, match="Not enough parameters"):
        proxy.one.templatepool.info(s, -2)
    _, _, session = new_user(daemon)
    assert ok(proxy.one.vmpool.info(session, -1, -1, -1, -1)) == "<VM_POOL></VM_POOL>"
    assert ok(proxy.one.templatepool.info(session, -3, -1, -1)) == (
        "<VMTEMPLATE_POOL></VMTEMPLATE_POOL>")
    fails(proxy.one.vmpool.info(BAD, -2, -1, -1, -1),
          "[one.vmpool.info] User couldn't be authenticated, aborting call.", AUTH)
    assert one.vmpool.info(-2, -1, -1, -1).VM == []
    assert one.templatepool.info(-2, -1, -1).VMTEMPLATE == []


def test_zone_and_cluster_pools(daemon, one):
    proxy, s = daemon.raw(), daemon.session()
    assert ok(proxy.one.zonepool.info(s)) == (
        "<ZONE_POOL><ZONE><ID>0</ID><NAME>OpenNebula</NAME><STATE>0</STATE><TEMPLATE>"
        f"<ENDPOINT><![CDATA[http://localhost:{daemon.port}/RPC2]]></ENDPOINT></TEMPLATE>"
        "<SERVER_POOL></SERVER_POOL></ZONE></ZONE_POOL>")
    oid = ok(proxy.one.datastore.allocate(s, f'NAME="{unique("cl")}"\nDS_MAD="fs"\n'
                                             'TM_MAD="local"', -1))
    ids = sorted(int(i) for i in re.findall(r"<DATASTORE><ID>(\d+)</ID>",
                                            ok(proxy.one.datastorepool.info(s))))
    assert oid in ids
    assert ok(proxy.one.clusterpool.info(s)) == (
        "<CLUSTER_POOL><CLUSTER><ID>0</ID><NAME>default</NAME><HOSTS></HOSTS><DATASTORES>"
        + "".join(f"<ID>{i}</ID>" for i in ids)
        + "</DATASTORES><VNETS></VNETS><TEMPLATE><RESERVED_CPU><![CDATA[]]></RESERVED_CPU>"
        "<RESERVED_MEM><![CDATA[]]></RESERVED_MEM></TEMPLATE></CLUSTER></CLUSTER_POOL>")
    _, _, session = new_user(daemon)
    assert ok(proxy.one.zonepool.info(session)) == ok(proxy.one.zonepool.info(s))
    fails(proxy.one.zonepool.info(BAD),
          "[one.zonepool.info] User couldn't be authenticated, aborting call.", AUTH)
    zone = one.zonepool.info().ZONE[0]
    assert (zone.ID, zone.NAME, zone.TEMPLATE["ENDPOINT"]) == (0, "OpenNebula",
                                                               f"http://localhost:{daemon.port}/RPC2")
    assert one.clusterpool.info().CLUSTER[0].DATASTORES.ID == ids
