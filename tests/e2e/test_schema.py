"""Schema versions: a fresh database is created current; an older one stops start-up
until `oned-images db upgrade` migrates it, keeping every image."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from tests.support.daemon import backend

pytestmark = [pytest.mark.timeout(120)]


@pytest.mark.sqlite_only
def test_v1_database_is_refused_then_upgraded(fresh_daemon):
    if backend() != "sqlite":
        pytest.skip("builds a version-1 SQLite file by hand")
    d = fresh_daemon()
    one = d.client()
    iid = one.image.allocate('NAME="kept"\nSOURCE="/var/tmp/kept"\nFORMAT="raw"\nSIZE="3"', 1)
    expected = d.raw().one.image.info(d.session(), iid)[1]
    d.stop()
    # Turn the file back into schema version 1: no body_rpc, no oid index.
    con = sqlite3.connect(d.var / "one.db")
    con.execute("DROP INDEX image_pool_oid")
    con.execute("ALTER TABLE image_pool DROP COLUMN body_rpc")
    con.execute("DELETE FROM schema_version WHERE version > 1")
    con.commit()
    con.close()

    with pytest.raises(RuntimeError) as exc:
        d.start()
    assert ("Database schema version 1 is older than this oned-images needs (9). Back up the "
            "database, then run: oned-images db upgrade") in str(exc.value)

    conf = d.tmp / "oned-images.conf"
    status = subprocess.run([sys.executable, "-m", "oned_images", "db", "status", "--config",
                             str(conf)], capture_output=True, text=True, timeout=60)
    assert status.stdout.strip() == "schema version: 1; this release: 9"
    up = subprocess.run([sys.executable, "-m", "oned_images", "db", "upgrade", "--config",
                         str(conf)], capture_output=True, text=True, timeout=60)
    assert (up.returncode, up.stdout.strip()) == (0, "applied migrations: [2, 3, 4, 5, 6, 7, 8, 9]")

    d.start()
    assert d.raw().one.image.info(d.session(), iid)[1] == expected
    listing = d.raw().one.imagepool.info(d.session(), -2, 0, -1)[1]
    assert listing == f"<IMAGE_POOL>{expected}</IMAGE_POOL>"


@pytest.mark.sqlite_only
def test_newer_database_is_refused(fresh_daemon):
    if backend() != "sqlite":
        pytest.skip("edits the SQLite file by hand")
    d = fresh_daemon()
    d.stop()
    con = sqlite3.connect(d.var / "one.db")
    con.execute("INSERT INTO schema_version VALUES (99, 0)")
    con.commit()
    con.close()
    with pytest.raises(RuntimeError) as exc:
        d.start()
    assert ("Database schema version 99 is newer than this oned-images knows (9). Run a newer "
            "oned-images release.") in str(exc.value)


def test_bad_config_names_file_line_and_key(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text('PORT = 2633\n\nLISTEN_ADRESS = "0.0.0.0"\n')
    out = subprocess.run([sys.executable, "-m", "oned_images", "serve", "--config", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"oned-images: configuration error: {conf}:3: LISTEN_ADRESS: "
                                  "unknown configuration key")
    conf.write_text('PORT = "http"\n')
    out = subprocess.run([sys.executable, "-m", "oned_images", "serve", "--config", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "bad.conf:1: PORT: bad value 'http'" in out.stderr


@pytest.mark.timeout(120)
def test_postgresql_v2_bytea_bodies_are_migrated(fresh_daemon):
    """Schema 3 turns PostgreSQL's bytea body_rpc into text (it decoded twice as slow)."""
    if backend() == "sqlite":
        pytest.skip("a PostgreSQL migration")
    d = fresh_daemon()
    iid = d.client().image.allocate('NAME="pgkept"\nSOURCE="/var/tmp/k"\nFORMAT="raw"\n'
                                    'SIZE="2"', 1)
    expected = d.raw().one.image.info(d.session(), iid)[1]
    d.stop()
    from urllib.parse import urlparse

    import psycopg2

    u = urlparse(backend())
    conn = psycopg2.connect(host=u.hostname, port=u.port or 5432, user=u.username,
                            password=u.password, dbname=d.pg_db)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE image_pool ALTER COLUMN body_rpc TYPE bytea "
                    "USING convert_to(body_rpc, 'UTF8')")
        cur.execute("DELETE FROM schema_version WHERE version > 2")
        for table in ("user_quotas", "group_quotas", "system_attributes"):
            cur.execute(f"DROP TABLE {table}")
    conn.close()
    with pytest.raises(RuntimeError, match=r"version 2 is older than this oned-images needs"):
        d.start()
    up = subprocess.run([sys.executable, "-m", "oned_images", "db", "upgrade", "--config",
                         str(d.tmp / "oned-images.conf")], capture_output=True, text=True,
                        timeout=60)
    assert (up.returncode, up.stdout.strip()) == (0, "applied migrations: [3, 4, 5, 6, 7, 8, 9]")
    d.start()
    assert d.raw().one.image.info(d.session(), iid)[1] == expected


def test_v3_database_gets_quota_tables_with_the_usage_of_its_images(fresh_daemon):
    """Schema 4 adds oned's user_quotas, group_quotas and system_attributes; the images
    a v3 database already has are counted into their owners' datastore quotas."""
    from tests.support.seed import connect_db, dummy_datastore, ok, section, wait_state

    d = fresh_daemon()
    ds = dummy_datastore(d)
    uid = ok(d, "one.user.allocate", "old", "pw", "", [])
    for name, size in (("a", 3), ("b", 4)):
        iid = ok(d, "one.image.allocate", f'NAME="{name}"\nTYPE="DATABLOCK"\nSIZE="{size}"',
                 ds, session="old:pw")
        wait_state(d, iid, 1)
    wait_state(d, ok(d, "one.image.allocate", 'NAME="adm"\nTYPE="DATABLOCK"\nSIZE="9"', ds), 1)
    expected = ok(d, "one.imagepool.info", -2, -1, -1)
    d.stop()
    conn, _ = connect_db(d)
    cur = conn.cursor()
    for table in ("user_quotas", "group_quotas", "system_attributes"):
        cur.execute(f"DROP TABLE {table}")
    cur.execute("DELETE FROM schema_version WHERE version > 3")
    conn.commit()
    conn.close()

    with pytest.raises(RuntimeError, match=r"version 3 is older than this oned-images needs "
                                           r"\(9\)"):
        d.start()
    up = subprocess.run([sys.executable, "-m", "oned_images", "db", "upgrade", "--config",
                         str(d.tmp / "oned-images.conf")], capture_output=True, text=True,
                        timeout=60)
    assert (up.returncode, up.stdout.strip()) == (0, "applied migrations: [4, 5, 6, 7, 8, 9]")
    d.start()
    assert ok(d, "one.imagepool.info", -2, -1, -1) == expected
    used = (f"<DATASTORE_QUOTA><DATASTORE><ID><![CDATA[{ds}]]></ID><IMAGES><![CDATA[-1]]>"
            "</IMAGES><IMAGES_USED><![CDATA[2]]></IMAGES_USED><SIZE><![CDATA[-1]]></SIZE>"
            "<SIZE_USED><![CDATA[7]]></SIZE_USED></DATASTORE></DATASTORE_QUOTA>")
    assert section(ok(d, "one.user.info", uid), "DATASTORE_QUOTA") == used
    assert section(ok(d, "one.group.info", 1), "DATASTORE_QUOTA") == used
    assert section(ok(d, "one.user.info", 0), "DATASTORE_QUOTA") == (
        "<DATASTORE_QUOTA></DATASTORE_QUOTA>")
    # and the counters go on from there
    ok(d, "one.user.quota", uid, f"DATASTORE = [ ID = {ds}, IMAGES = 2 ]")
    reply = d.raw().one.image.allocate("old:pw", 'NAME="c"\nTYPE="DATABLOCK"\nSIZE="1"', ds)
    assert reply[1] == (f"[one.image.allocate] User [{uid}] : user [{uid}] limit of 2 reached "
                        f"for IMAGES quota in DATASTORE with ID: {ds}.")


def test_v4_database_gets_cluster_host_and_template_tables(fresh_daemon):
    """Schema 5 adds oned's cluster_pool (with cluster 0 ``default``), host_pool and
    template_pool to a v4 database; its images are kept and the new pools work."""
    from tests.support.seed import connect_db, fails, ok

    d = fresh_daemon()
    iid = ok(d, "one.image.allocate", 'NAME="v4"\nSOURCE="/var/tmp/v4"\nFORMAT="raw"\n'
                                      'SIZE="1"', 1)
    images = ok(d, "one.imagepool.info", -2, -1, -1)
    cluster = ok(d, "one.cluster.info", 0)
    d.stop()
    conn, _ = connect_db(d)
    cur = conn.cursor()
    for table in ("cluster_pool", "host_pool", "template_pool"):
        cur.execute(f"DROP TABLE {table}")
    cur.execute("DELETE FROM pool_control WHERE tablename = 'cluster_pool'")
    cur.execute("DELETE FROM schema_version WHERE version > 4")
    conn.commit()
    conn.close()

    with pytest.raises(RuntimeError, match=r"version 4 is older than this oned-images needs "
                                           r"\(9\)"):
        d.start()
    up = subprocess.run([sys.executable, "-m", "oned_images", "db", "upgrade", "--config",
                         str(d.tmp / "oned-images.conf")], capture_output=True, text=True,
                        timeout=60)
    assert (up.returncode, up.stdout.strip()) == (0, "applied migrations: [5, 6, 7, 8, 9]")
    d.start()
    assert ok(d, "one.imagepool.info", -2, -1, -1) == images
    assert ok(d, "one.cluster.info", 0) == cluster
    assert ok(d, "one.hostpool.info") == "<HOST_POOL></HOST_POOL>"
    assert ok(d, "one.templatepool.info", -2, -1, -1) == "<VMTEMPLATE_POOL></VMTEMPLATE_POOL>"
    assert ok(d, "one.host.allocate", "h0", "dummy", "dummy", -1) == 0
    assert ok(d, "one.template.allocate", f'NAME="t"\nDISK=[IMAGE_ID="{iid}"]') == 0
    assert fails(d, "one.template.info", 1) == (
        "[one.template.info] Error getting virtual machine template [1].", 1024, 1)


def test_v8_database_counts_its_vms_into_the_vm_quotas(fresh_daemon):
    """Schema 9 charges VM_QUOTA and IMAGE_QUOTA: the VMs a v8 database already has
    (not the DONE ones) are counted into their owners' and groups' quotas, so their
    terminate later gives back exactly that."""
    from tests.support.seed import connect_db, dummy_datastore, ok, register, section, user

    d = fresh_daemon()
    ds = dummy_datastore(d)
    iid = register(d, ds, size=5)
    ok(d, "one.image.chmod", iid, -1, -1, -1, -1, -1, -1, 1, -1, -1)  # OTHER_U
    gid = ok(d, "one.group.allocate", "q9")
    uid, s = user(d, "q9", groups=[gid, 1])
    vm = f'CPU="0.5"\nMEMORY="16"\nDISK=[IMAGE_ID={iid}]\nDISK=[TYPE="swap",SIZE="8"]'
    live = ok(d, "one.vm.allocate", vm, True, session=s)
    gone = ok(d, "one.vm.allocate", vm, True, session=s)
    ok(d, "one.vm.action", "terminate", gone, session=s)
    held = section(ok(d, "one.user.info", uid), "VM_QUOTA") + section(
        ok(d, "one.user.info", uid), "IMAGE_QUOTA")
    assert "<VMS_USED><![CDATA[1]]></VMS_USED>" in held
    assert "<SYSTEM_DISK_SIZE_USED><![CDATA[13]]></SYSTEM_DISK_SIZE_USED>" in held
    d.stop()
    conn, _ = connect_db(d)
    cur = conn.cursor()
    cur.execute(f"DELETE FROM user_quotas WHERE user_oid = {uid}")  # as a v8 left them
    cur.execute(f"DELETE FROM group_quotas WHERE group_oid = {gid}")
    cur.execute("DELETE FROM schema_version WHERE version > 8")
    conn.commit()
    conn.close()
    up = subprocess.run([sys.executable, "-m", "oned_images", "db", "upgrade", "--config",
                         str(d.tmp / "oned-images.conf")], capture_output=True, text=True,
                        timeout=60)
    assert (up.returncode, up.stdout.strip()) == (0, "applied migrations: [9]")
    d.start()
    doc = ok(d, "one.user.info", uid)
    assert section(doc, "VM_QUOTA") + section(doc, "IMAGE_QUOTA") == held
    doc = ok(d, "one.group.info", gid)
    assert section(doc, "VM_QUOTA") + section(doc, "IMAGE_QUOTA") == held
    ok(d, "one.vm.action", "terminate", live, session=s)
    doc = ok(d, "one.user.info", uid)
    assert section(doc, "VM_QUOTA") + section(doc, "IMAGE_QUOTA") == (
        "<VM_QUOTA></VM_QUOTA><IMAGE_QUOTA></IMAGE_QUOTA>")
