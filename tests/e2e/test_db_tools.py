"""`oned-images db backup|restore|fsck|upgrade` on real databases (SQLite or the
PostgreSQL of ONED_TEST_DB), with real daemons before and after."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import threading
import time
import xmlrpc.client
from pathlib import Path

import pytest

from oned_images.store import schema
from tests.support.daemon import backend, db_tool, wait_for
from tests.support.seed import (
    call,
    connect_db,
    dummy_datastore,
    edit_body,
    field,
    group,
    info,
    num,
    ok,
    read_body,
    register,
    section,
    unique,
    user,
)

pytestmark = [pytest.mark.timeout(120)]


def db(d, *args: str) -> subprocess.CompletedProcess:
    return db_tool(d, *args)


def configured(d):
    """A daemon's config and (on PostgreSQL) its empty database, not started."""
    d.tmp.mkdir(parents=True, exist_ok=True)
    d.write_config()
    return d


def sql(d, statement: str, params: tuple = ()) -> list[tuple]:
    conn, mark = connect_db(d)
    try:
        cur = conn.cursor()
        cur.execute(statement.replace("?", mark), params)
        rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


FSCK_HINT = ("oned-images db fsck before serve (it lists datastore files that no "
             "restored image references; --repair and serve move them to lost+found)")
MONITORED = re.compile(r"<(TOTAL_MB|FREE_MB|USED_MB)>\d+</\1>")


def pools(d) -> dict[str, str]:
    """The whole XML of the pools a restore must give back (datastore capacity figures
    are measured again by each daemon, so they are masked)."""
    s = d.session()
    proxy = d.raw()
    return {
        "images": proxy.one.imagepool.info(s, -2, -1, -1)[1],
        "datastores": MONITORED.sub(r"<\1>N</\1>", proxy.one.datastorepool.info(s)[1]),
        "users": proxy.one.userpool.info(s)[1],
        "groups": proxy.one.grouppool.info(s)[1],
        "acl": proxy.one.acl.info(s)[1],
        "vms": proxy.one.vmpool.infoextended(s, -2, -1, -1, -2)[1],
    }


def image_ids(xml: str) -> list[int]:
    return sorted(int(i) for i in re.findall(r"<IMAGE><ID>(\d+)</ID>", xml))


def ds_images(d, ds: int) -> list[int]:
    """The IMAGES a datastore document lists."""
    listed = re.search(r"<IMAGES>(.*?)</IMAGES>", ok(d, "one.datastore.info", ds)).group(1)
    return [int(i) for i in re.findall(r"<ID>(\d+)</ID>", listed)]


# ------------------------------------------------------------------ backup / restore
@pytest.mark.slow
def test_online_backup_while_allocating_restores_elsewhere(fresh_daemon, tmp_path):
    d = fresh_daemon()
    ds = dummy_datastore(d, "bk-ds")
    for _ in range(5):
        register(d, ds)
    user(d, "bk-user")

    stop = threading.Event()
    made: list[int] = []
    errors: list[BaseException] = []

    def allocate() -> None:
        proxy = xmlrpc.client.ServerProxy(d.url)
        try:
            while not stop.is_set():
                reply = proxy.one.image.allocate(
                    d.session(), f'NAME="{unique("live")}"\nSOURCE="/var/tmp/x"\n'
                    'FORMAT="raw"\nSIZE="1"', ds)
                assert reply[0] is True, reply
                made.append(reply[1])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=allocate) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(made) >= 3 or errors)
        before = len(made)
        first = tmp_path / "during.db"
        out = db(d, "backup", str(first))
        after = len(made)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert errors == []
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"backup written to {first} (schema version {schema.CURRENT}; ")
    assert after > before  # the daemon kept allocating while the backup ran

    # The backup taken under load: a consistent snapshot of some prefix of the work.
    d1 = configured(fresh_daemon(start=False))
    out = db(d1, "restore", str(first))
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(f"; run {FSCK_HINT}\n")
    d1.start()
    restored = image_ids(pools(d1)["images"])
    assert restored[:5] == [0, 1, 2, 3, 4]
    # what was answered before the backup started is in it; at most what was answered by
    # its end (plus the three calls in flight) is
    assert 5 + before <= len(restored) <= 5 + after + 3
    for oid in restored:  # every restored document is the original's, byte for byte
        assert call(d1, "one.image.info", oid)[1] == call(d, "one.image.info", oid)[1]
    assert ds_images(d1, ds) == restored
    # the id counter came with the rows: a new image never reuses a restored id
    assert register(d1, ds) > max(restored)
    d1.stop()

    # Quiet now: a second backup restores to exactly the original pools.
    second = tmp_path / "after.db"
    assert db(d, "backup", str(second)).returncode == 0
    d2 = configured(fresh_daemon(start=False))
    out = db(d2, "restore", str(second))
    assert out.returncode == 0, out.stderr
    d2.start()
    assert pools(d2) == pools(d)
    assert image_ids(pools(d2)["images"]) == sorted(set(range(5)) | set(made))


def test_restore_refusals(fresh_daemon, tmp_path):
    d = fresh_daemon()
    iid = register(d, 1, name="keep-me")
    bk = tmp_path / "b.db"
    assert db(d, "backup", str(bk)).returncode == 0
    again = db(d, "backup", str(bk))
    assert (again.returncode, again.stderr) == (
        1, f"oned-images: backup: {bk} exists; give another FILE or --force to overwrite it\n")

    # a running daemon holds the database
    out = db(d, "restore", str(bk), "--force")
    assert out.returncode == 1
    where = (str(d.var / "one.db") if backend() == "sqlite"
             else f"{d.pg_db} on 127.0.0.1")
    assert re.fullmatch(rf"oned-images: refusing to restore: The database {re.escape(where)} "
                        r"is in use by oned-images serve \(pid \d+ on \S+\); stop it first\n",
                        out.stderr), out.stderr
    d.stop()

    # an existing database needs --force
    out = db(d, "restore", str(bk))
    kept = (f"{d.var / 'one.db'} holds a database; add --force to replace it"
            if backend() == "sqlite"
            else f"the database {d.pg_db} on 127.0.0.1 holds tables; add --force to replace them")
    assert (out.returncode, out.stderr) == (1, f"oned-images: restore: {kept}\n")

    # a newer schema is refused; a damaged or foreign file too
    newer = tmp_path / "newer.db"
    newer.write_bytes(bk.read_bytes())
    con = sqlite3.connect(newer)
    con.execute("INSERT INTO schema_version VALUES (99, 0)")
    con.commit()
    con.close()
    out = db(d, "restore", str(newer), "--force")
    assert (out.returncode, out.stderr) == (
        1, f"oned-images: restore: {newer} has schema version 99, newer than this oned-images "
        f"knows ({schema.CURRENT}); restore it with a newer release\n")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    out = db(d, "restore", str(junk), "--force")
    assert out.returncode == 1
    assert out.stderr.startswith(f"oned-images: restore: {junk}: ")

    # the daemon cannot start while a tool holds the database
    from oned_images.config import load
    from oned_images.service import Daemon as Service
    from oned_images.store.lock import DatabaseLock

    settings = Service(None, load(str(d.tmp / "oned-images.conf"))).open_database().settings
    with DatabaseLock(settings) as lock:
        lock.acquire("oned-images db restore")
        with pytest.raises(RuntimeError, match=r"in use by oned-images db restore \(pid "):
            d.start()
    # nothing was changed by the refusals
    d.start()
    assert field(info(d, iid), "NAME") == "keep-me"

    # --force after a crash: the dead daemon's WAL must not leak into the restored file
    later = register(d, 1, name="after-backup")
    d.kill9()
    if backend() == "sqlite":
        assert (d.var / "one.db-wal").stat().st_size > 0
    out = db(d, "restore", str(bk), "--force")
    assert out.returncode == 0, out.stderr
    d.start()
    assert image_ids(pools(d)["images"]) == [iid]
    assert call(d, "one.image.info", later)[0] is False


def test_backup_default_path_and_cross_backend_restore(fresh_daemon, tmp_path):
    """Without FILE the backup goes to VAR_LOCATION/backups; the one format restores into
    either backend (PostgreSQL runs: PostgreSQL -> SQLite -> PostgreSQL)."""
    d = fresh_daemon()
    ds = dummy_datastore(d, "x-ds")
    register(d, ds, name="travels")
    user(d, "traveller")
    assert d.raw().one.vm.allocate(d.session(), 'NAME="vm-travels"\nCPU="1"\nMEMORY="8"',
                                   True)[0]
    out = db(d, "backup")
    assert out.returncode == 0, out.stderr
    made = sorted((d.var / "backups").iterdir())
    assert len(made) == 1 and re.fullmatch(r"oned-images-\d{8}-\d{6}\.db", made[0].name)
    assert out.stdout.startswith(f"backup written to {made[0]} (")
    assert made[0].stat().st_mode & 0o777 == 0o600  # password hashes, serveradmin secret
    if backend() == "sqlite":
        return
    original = pools(d)
    # PostgreSQL backup -> an SQLite install
    lite = configured(fresh_daemon(extra_config='DB = [ BACKEND = "sqlite" ]\n', start=False))
    out = db(lite, "restore", str(made[0]))
    assert out.returncode == 0, out.stderr
    assert (lite.var / "one.db").is_file()
    lite.start()
    assert pools(lite) == original
    lite.stop()
    # ... and its backup back into a fresh PostgreSQL database
    again = tmp_path / "from-sqlite.db"
    assert db(lite, "backup", str(again)).returncode == 0
    pg = configured(fresh_daemon(start=False))
    sql(pg, "CREATE TABLE operator_notes (note text)")
    sql(pg, "INSERT INTO operator_notes VALUES ('not ours')")
    assert db(pg, "restore", str(again)).returncode == 0
    pg.start()
    assert pools(pg) == original
    assert sql(pg, "SELECT note FROM operator_notes") == [("not ours",)]  # left alone
    pg.stop()
    # a PostgreSQL database that does not exist: one line, no traceback
    gone = configured(fresh_daemon(start=False))
    conf = gone.tmp / "oned-images.conf"
    conf.write_text(conf.read_text().replace(f'DB_NAME = "{gone.pg_db}"',
                                             'DB_NAME = "oned_no_such_db"'))
    out = db(gone, "restore", str(again))
    assert out.returncode == 1
    assert out.stderr.startswith("oned-images: restore: ") and out.stderr.count("\n") == 1
    assert 'database "oned_no_such_db" does not exist' in out.stderr


def test_fsck_repairs_template_and_host_columns(fresh_daemon):
    d = fresh_daemon()
    proxy, session = d.raw(), d.session()
    tid = proxy.one.template.allocate(session, 'NAME="cols"')[1]
    hid = proxy.one.host.allocate(session, "cols-h", "kvm", "kvm", -1)[1]
    d.stop()
    sql(d, "UPDATE template_pool SET name = 'edited' WHERE oid = ?", (tid,))
    sql(d, "UPDATE host_pool SET state = 5 WHERE oid = ?", (hid,))
    out = db(d, "fsck", "--repair")
    assert out.returncode == 1, out.stdout
    assert (f"template {tid}: columns disagree with the body: name is 'edited', the body says "
            "'cols' -> columns rewritten from the body") in out.stdout
    assert (f"host {hid}: columns disagree with the body: state is 5, the body says 0 -> "
            "columns rewritten from the body") in out.stdout
    assert db(d, "fsck").stdout == ""
    d.start()
    assert "<NAME>cols</NAME>" in d.raw().one.template.info(d.session(), tid)[1]


# ------------------------------------------------------------------ upgrade from every version
def _undo_v2(d) -> None:
    """Back to schema 1: no served copies, no oid index."""
    sql(d, "DROP INDEX image_pool_oid")
    sql(d, "ALTER TABLE image_pool DROP COLUMN body_rpc")


def _undo_v3(d) -> None:
    """Back to schema 2: PostgreSQL kept served copies as bytea (SQLite: no change)."""
    if backend() != "sqlite":
        sql(d, "ALTER TABLE image_pool ALTER COLUMN body_rpc TYPE bytea "
               "USING convert_to(body_rpc, 'UTF8')")


def _undo_v4(d) -> None:
    """Back to schema 3: no quota tables."""
    for table in ("user_quotas", "group_quotas", "system_attributes"):
        sql(d, f"DROP TABLE {table}")


def _undo_v5(d) -> None:
    """Back to schema 4: no cluster, host or template tables."""
    for table in ("cluster_pool", "host_pool", "template_pool"):
        sql(d, f"DROP TABLE {table}")
    sql(d, "DELETE FROM pool_control WHERE tablename IN "
           "('cluster_pool', 'host_pool', 'template_pool')")


def _undo_v6(d) -> None:
    """Back to schema 5: no VM table."""
    sql(d, "DROP TABLE vm_pool")
    sql(d, "DELETE FROM pool_control WHERE tablename = 'vm_pool'")


def _undo_v7(d) -> None:
    """Back to schema 6: no daemon, claim, cache version or marker tables (nor the
    SQLite triggers that bump cache_versions, which every start makes)."""
    if backend() == "sqlite":
        for (name,) in sql(d, "SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            sql(d, f'DROP TRIGGER "{name}"')
    for table in ("daemons", "driver_claims", "cache_versions", "datastore_markers"):
        sql(d, f"DROP TABLE {table}")


def _undo_v8(d) -> None:
    """Back to the schema before 8: no image_vms table (this test's images have no VMs,
    so no body needs its <VMS> ids back)."""
    sql(d, "DROP TABLE image_vms")


def _undo_v9(d) -> None:
    """Back to the schema before 9: quota rows carry no VM_QUOTA / IMAGE_QUOTA usage
    (this test's database has no VMs, so there is none to take out)."""


#: migration N -> how a test turns a schema-N database back into schema N-1. A new
#: migration needs its entry here, or test_upgrade_from_every_version fails.
UNDO = {2: _undo_v2, 3: _undo_v3, 4: _undo_v4, 5: _undo_v5, 6: _undo_v6, 7: _undo_v7,
        8: _undo_v8, 9: _undo_v9}


@pytest.mark.slow
@pytest.mark.parametrize("start", sorted(schema.MIGRATIONS)[:-1])
def test_upgrade_from_every_version(fresh_daemon, tmp_path, start):
    assert set(UNDO) == set(schema.MIGRATIONS) - {1}, \
        "add the undo step of the new migration to UNDO"
    d = fresh_daemon()
    iid = register(d, 1, name=f"from-v{start}")
    before = pools(d)
    d.stop()
    for version in sorted((v for v in UNDO if v > start), reverse=True):
        UNDO[version](d)
        sql(d, "DELETE FROM schema_version WHERE version = ?", (version,))
    with pytest.raises(RuntimeError, match=f"Database schema version {start} is older"):
        d.start()
    # a backup of the old database restores as is and names db upgrade
    bk = tmp_path / "old.db"
    assert db(d, "backup", str(bk)).returncode == 0
    d2 = configured(fresh_daemon(start=False))
    out = db(d2, "restore", str(bk))
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(f"; the restored database has schema version {start}: run "
                               f"oned-images db upgrade, then {FSCK_HINT}\n")
    for daemon in (d, d2):
        up = db(daemon, "upgrade")
        assert (up.returncode, up.stdout) == (
            0, f"applied migrations: {[v for v in sorted(schema.MIGRATIONS) if v > start]}\n")
        assert db(daemon, "status").stdout == (f"schema version: {schema.CURRENT}; this "
                                               f"release: {schema.CURRENT}\n")
        daemon.start()
        assert pools(daemon) == before
        assert field(info(daemon, iid), "NAME") == f"from-v{start}"
        daemon.stop()


def test_upgrade_moves_image_vms_ids_into_rows(fresh_daemon):
    """Schema 8: the ids a body lists in <VMS> become image_vms rows, the body keeps an
    empty <VMS></VMS>, and the served document is byte for byte the old body."""
    d = fresh_daemon()
    iid = register(d, 1, name="used-before-8")
    vms = [d.raw().one.vm.allocate(d.session(), 'CPU="1"\nMEMORY="8"', True)[1]
           for _ in range(3)]
    a, b = vms[0], vms[2]  # VMs that exist: fsck checks the rows name live VMs
    d.stop()
    body = sql(d, "SELECT body FROM image_pool WHERE oid = ?", (iid,))[0][0]
    assert "<STATE>1</STATE>" in body and "<RUNNING_VMS>0</RUNNING_VMS>" in body
    used = body.replace("<STATE>1</STATE>", "<STATE>2</STATE>").replace(
        "<RUNNING_VMS>0</RUNNING_VMS>", "<RUNNING_VMS>2</RUNNING_VMS>")
    old = used.replace("<VMS></VMS>", f"<VMS><ID>{a}</ID><ID>{b}</ID></VMS>")
    sql(d, "UPDATE image_pool SET body = ?, body_rpc = NULL WHERE oid = ?", (old, iid))
    _undo_v8(d)
    sql(d, "DELETE FROM schema_version WHERE version >= 8")
    up = db(d, "upgrade")
    assert (up.returncode, up.stdout) == (0, "applied migrations: [8, 9]\n"), up.stderr
    assert sql(d, "SELECT image_oid, vm_oid FROM image_vms ORDER BY vm_oid") == [
        (iid, a), (iid, b)]
    assert sql(d, "SELECT body FROM image_pool WHERE oid = ?", (iid,))[0][0] == used
    assert db(d, "fsck").stdout == ""
    d.start()
    assert info(d, iid) == old
    assert ok(d, "one.imagepool.info", -2, iid, iid) == f"<IMAGE_POOL>{old}</IMAGE_POOL>"


# ------------------------------------------------------------------ fsck
def fs_image(d, name: str) -> tuple[int, Path]:
    """An image of the fs datastore 1 whose SOURCE is a real file in BASE_PATH."""
    base = d.var / "datastores" / "1"
    base.mkdir(parents=True, exist_ok=True)
    path = base / (unique("f").replace("-", "").ljust(32, "0")[:32])
    path.write_bytes(b"\0" * 1024)
    iid = register(d, 1, name=name, source=str(path))
    return iid, path


def test_fsck_clean_database(fresh_daemon):
    d = fresh_daemon()
    fs_image(d, "clean")
    # hosts (one monitored) and templates are clean too
    proxy, session = d.raw(), d.session()
    hid = proxy.one.host.allocate(session, "fsck-h", "dummy", "dummy", -1)[1]
    proxy.one.host.allocate(session, "fsck-kvm", "kvm", "kvm", 0)
    proxy.one.template.allocate(session, 'NAME="fsck-t"\nDISK=[IMAGE_ID="0"]')
    deadline = time.monotonic() + 10
    while "<STATE>2</STATE>" not in proxy.one.host.info(session, hid)[1]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # and a VM running on the host
    vid = proxy.one.vm.allocate(session, 'CPU="1"\nMEMORY="8"', True)[1]
    proxy.one.vm.deploy(session, vid, hid, False, -1, "")
    while "<LCM_STATE>3</LCM_STATE>" not in proxy.one.vm.info(session, vid)[1]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    running = db(d, "fsck")
    assert running.returncode == 0, running.stdout
    assert re.fullmatch(r"note: The database .* is in use by oned-images serve \(pid \d+ on "
                        r"\S+\); findings may include work in progress\n", running.stdout)
    refused = db(d, "fsck", "--repair")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert re.fullmatch(r"oned-images: refusing to fsck --repair: The database .* is in use "
                        r"by oned-images serve \(pid \d+ on \S+\); stop it first\n",
                        refused.stderr), refused.stderr
    d.stop()
    out = db(d, "fsck")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    # driver processes that a killed daemon left behind are still writing files
    records = d.var / "run" / "drivers"
    records.mkdir(parents=True, exist_ok=True)
    leftover = subprocess.Popen(["sleep", "60"])
    try:
        (records / str(leftover.pid)).write_text("sleep")
        out = db(d, "fsck", "--repair")
        assert (out.returncode, out.stdout) == (2, "")
        assert out.stderr == (
            "oned-images: refusing to fsck --repair: driver processes left by a daemon that "
            f"died still run (process groups [{leftover.pid}]); start oned-images serve once "
            "(it stops them) or kill them first\n")
        out = db(d, "fsck")
        assert (out.returncode, out.stdout) == (
            0, f"note: driver processes left by a daemon that died still run (process groups "
               f"[{leftover.pid}]); their files may show up as unreferenced\n")
    finally:
        leftover.kill()
        leftover.wait()
    assert db(d, "fsck", "--repair").returncode == 0
    # nothing to check: one line, exit status 2
    empty = configured(fresh_daemon(start=False))
    out = db(empty, "fsck")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (f"oned-images: fsck: no database at {empty.var / 'one.db'}\n"
                          if backend() == "sqlite" else
                          "oned-images: fsck: the database is empty (no oned-images has "
                          "started on it)\n")


def test_fsck_finds_and_repairs_damage(fresh_daemon):
    d = fresh_daemon()
    ds = dummy_datastore(d, "fsck-ds")
    gone, gone_path = fs_image(d, "file-gone")
    kept, _ = fs_image(d, "file-kept")
    counted = register(d, ds, name="counted")
    orphan = register(d, ds, name="orphan-owner")
    named = register(d, ds, name="ds-name")
    renamed = register(d, ds, name="columns")
    uid, _ = user(d, "member")
    gone_group = group(d, "dissolved")
    moved, _ = user(d, "moved", groups=[gone_group])
    proxy, session = d.raw(), d.session()
    done_vm = proxy.one.vm.allocate(session, 'CPU="1"\nMEMORY="8"', True)[1]
    assert proxy.one.vm.action(session, "terminate-hard", done_vm)[0]
    live_vm = proxy.one.vm.allocate(session, 'CPU="1"\nMEMORY="8"', True)[1]
    d.stop()
    # <VMS> rows: a VM that never existed, a DONE VM, an image that is gone, and one
    # of a live VM (which stays)
    for image_id, vm_id in ((kept, 4242), (kept, done_vm), (9999, 5), (9999, 7),
                            (named, live_vm)):
        sql(d, "INSERT INTO image_vms (image_oid, vm_oid) VALUES (?, ?)", (image_id, vm_id))
    edit_body(d, named, STATE="2", RUNNING_VMS="1")
    sql(d, "DELETE FROM group_pool WHERE oid = ?", (gone_group,))
    base = d.var / "datastores" / "1"
    gone_path.unlink()
    stray = base / ("ab" * 16)
    stray.write_bytes(b"left by a crash")
    (base / "notes.txt").write_text("hand copied")
    sql(d, "UPDATE pool_control SET last_oid = 1 WHERE tablename = 'image_pool'")
    sql(d, "DELETE FROM pool_control WHERE tablename = 'user_pool'")
    edit_body(d, counted, STATE="2", RUNNING_VMS="3")
    edit_body(d, orphan, UID="77")
    sql(d, "UPDATE image_pool SET uid = 77 WHERE oid = ?", (orphan,))
    edit_body(d, named, DATASTORE="old-name")
    user_body = sql(d, "SELECT body FROM user_pool WHERE oid = ?", (uid,))[0][0]
    sql(d, "UPDATE user_pool SET body = ? WHERE oid = ?",
        (user_body.replace("<GROUPS><ID>1</ID></GROUPS>",
                           "<GROUPS><ID>1</ID><ID>150</ID></GROUPS>"), uid))
    sql(d, "UPDATE image_pool SET name = 'hand-edited' WHERE oid = ?", (renamed,))
    sql(d, "UPDATE image_pool SET body_rpc = ? WHERE oid = ?",
        ("&lt;IMAGE&gt;stale&lt;/IMAGE&gt;", kept))
    ds_body = sql(d, "SELECT body FROM datastore_pool WHERE oid = ?", (ds,))[0][0]
    sql(d, "UPDATE datastore_pool SET body = ? WHERE oid = ?",
        (ds_body.replace("<IMAGES></IMAGES>", "<IMAGES><ID>42</ID></IMAGES>"), ds))
    group_body = sql(d, "SELECT body FROM group_pool WHERE oid = 1")[0][0]
    sql(d, "UPDATE group_pool SET body = ? WHERE oid = 1",
        (group_body.replace(f"<ID>{uid}</ID>", ""),))

    lost = d.var / "datastores" / "lost+found" / "1"
    expected = [
        (f"image {kept}: the served copy (body_rpc) differs from the body",
         "served copy rewritten from the body"),
        (f"image {renamed}: columns disagree with the body: name is 'hand-edited', the body "
         "says 'columns'", "columns rewritten from the body"),
        (f"group 1: USERS is [], the users in it are [{uid}, {moved}]",
         "USERS rebuilt from the users"),
        (f"user {moved}: GROUPS names groups that do not exist: [{gone_group}]",
         "removed from GROUPS"),
        (f"user {moved}: primary group {gone_group} does not exist",
         "primary group set to 1 (users)"),
        (f"user {moved}: primary group 1 is missing from GROUPS", "added to GROUPS"),
        (f"user {moved}: GNAME is 'dissolved', group 1 is 'users'", "GNAME set"),
        (f"user {uid}: GROUPS names groups that do not exist: [150]", "removed from GROUPS"),
        (f"image {named}: DATASTORE is 'old-name', datastore {ds} is 'fsck-ds'",
         "DATASTORE set"),
        (f"image {gone}: its file {gone_path} does not exist", "state ERROR"),
        (f"image {counted}: RUNNING_VMS is 3, VMS lists 0", "RUNNING_VMS set to 0"),
        (f"image {kept}: VMS lists VM 4242, which does not exist", "VM removed from VMS"),
        (f"image {kept}: VMS lists VM {done_vm}, which is DONE", "VM removed from VMS"),
        ("table image_vms: image 9999 does not exist, its rows list VMs [5, 7]",
         "rows deleted"),
        (f"image {counted}: USED with no VM and no clone in progress", "state READY"),
        (f"image {orphan}: owner user 77 does not exist", "owner set to oneadmin (0)"),
        (f"datastore {ds}: the stored IMAGES list is [42] (it is served from the images "
         "that name the datastore)", "stored list emptied"),
        (f"table image_pool: id counter is 1, below the largest id {renamed}",
         f"counter set to {renamed}"),
        (f"table user_pool: has no id counter in pool_control (largest id {moved})",
         f"counter set to {moved}"),
        (f"datastore 1: {base / 'notes.txt'} is referenced by no image",
         f"moved to {lost / 'notes.txt'}"),
        (f"datastore 1: {stray} is referenced by no image", f"moved to {lost / stray.name}"),
    ]
    found = db(d, "fsck")
    assert found.returncode == 1, found.stderr
    assert sorted(found.stdout.splitlines()) == sorted(line for line, _ in expected)

    fixed = db(d, "fsck", "--repair")
    assert fixed.returncode == 1, fixed.stderr
    assert sorted(fixed.stdout.splitlines()) == sorted(
        [f"{line} -> {done}" for line, done in expected]
        + [f"{len(expected)} problem(s) found, {len(expected)} repaired"])

    clean = db(d, "fsck")
    assert (clean.returncode, clean.stdout) == (0, ""), clean.stdout
    assert (lost / stray.name).read_bytes() == b"left by a crash"
    assert (lost / "notes.txt").read_text() == "hand copied"

    d.start()
    doc = info(d, gone)
    assert num(doc, "STATE") == 5
    assert re.fullmatch(r".+ : The image file " + re.escape(str(gone_path))
                        + r" is missing \(found by oned-images db fsck\)",
                        field(doc, "TEMPLATE/ERROR"))
    doc = info(d, counted)
    assert (num(doc, "STATE"), num(doc, "RUNNING_VMS")) == (1, 0)
    doc = info(d, orphan)
    assert (num(doc, "UID"), field(doc, "UNAME")) == (0, "oneadmin")
    assert call(d, "one.image.info", kept)[1] == read_body(d, kept)
    assert pools(d)["images"].count("<NAME>columns</NAME>") == 1
    assert ds_images(d, ds) == [counted, orphan, named, renamed]
    assert field(info(d, named), "DATASTORE") == "fsck-ds"
    assert sql(d, "SELECT image_oid, vm_oid FROM image_vms ORDER BY image_oid") == [
        (named, live_vm)]
    assert section(info(d, named), "VMS") == f"<VMS><ID>{live_vm}</ID></VMS>"
    assert section(info(d, kept), "VMS") == "<VMS></VMS>"
    assert re.search(r"<GROUPS><ID>1</ID></GROUPS>", ok(d, "one.user.info", uid))
    assert f"<USERS><ID>{uid}</ID><ID>{moved}</ID></USERS>" in ok(d, "one.group.info", 1)
    doc = ok(d, "one.user.info", moved)
    assert (num(doc, "GID"), field(doc, "GNAME"), field(doc, "GROUPS/ID")) == (1, "users", "1")
    assert register(d, ds) == renamed + 1
    assert user(d, "after-repair")[0] == moved + 1
    d.stop()
    assert db(d, "fsck").stdout == ""


def test_fsck_reports_what_it_cannot_repair(fresh_daemon):
    d = fresh_daemon()
    ds = dummy_datastore(d, "broken-ds")
    broken = register(d, ds, name="broken")
    unreadable = register(d, ds, name="unreadable")
    locked = register(d, ds, name="locked")
    homeless = register(d, ds, name="homeless")
    d.stop()
    edit_body(d, homeless, DATASTORE_ID="999")
    sql(d, "UPDATE image_pool SET datastore_id = 999 WHERE oid = ?", (homeless,))
    sql(d, "UPDATE image_pool SET body = ? WHERE oid = ?", ("<IMAGE><ID>", broken))
    edit_body(d, locked, STATE="4")
    edit_body(d, unreadable, RUNNING_VMS="many")
    out = db(d, "fsck", "--repair")
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"image {broken}: the stored body is not well-formed XML (")
    assert lines[0].endswith("); restore this row from a backup -> NOT repaired")
    assert lines[1:] == [
        f"image {unreadable}: the stored body cannot be read (invalid literal for int() with "
        "base 10: 'many'); restore this row from a backup -> NOT repaired",
        f"note: image {locked}: LOCKED with no driver action running (no daemon holds the "
        "database); the next start re-runs it",
        f"image {homeless}: datastore 999 does not exist; move the image's files and delete "
        "or re-register it -> NOT repaired",
        "3 problem(s) found, 0 repaired, 3 need you"]


def test_fsck_recounts_quota_counters_and_keeps_the_limits(fresh_daemon):
    """Quota counters are derived from what exists (the images, the VMs not DONE):
    fsck reports counters a crash or a hand edit changed, a vector that went missing and
    a row of a user that is gone; --repair makes the rows exactly what the daemon's own
    charges had made them, limits included, and the daemon then charges on from there."""
    d = fresh_daemon()
    ds = dummy_datastore(d, "quota-ds")
    gid = group(d)
    uid, s = user(d, groups=[gid, 1])
    ok(d, "one.user.quota", uid, f"DATASTORE=[ID={ds},SIZE=500]\nVM=[VMS=10,MEMORY=1000]")
    iid = register(d, ds, size=30)
    ok(d, "one.image.chown", iid, uid, gid)
    other = register(d, ds, size=7)
    ok(d, "one.image.chown", other, uid, gid)
    vm = ok(d, "one.vm.allocate", f'CPU="0.25"\nMEMORY="64"\nDISK=[IMAGE_ID={iid}]', True,
            session=s)
    gone = ok(d, "one.vm.allocate", 'CPU="0.5"\nMEMORY="32"', True, session=s)
    ok(d, "one.vm.action", "terminate", gone, session=s)  # DONE: holds nothing
    body = {k: sql(d, f"SELECT body FROM {k}_quotas WHERE {k}_oid = ?", (o,))[0][0]
            for k, o in (("user", uid), ("group", gid))}
    assert "<SIZE_USED><![CDATA[37]]></SIZE_USED>" in body["user"]
    d.stop()
    damaged = (body["user"].replace("<SIZE_USED><![CDATA[37]]>", "<SIZE_USED><![CDATA[5]]>")
               .replace("<MEMORY_USED><![CDATA[64]]>", "<MEMORY_USED><![CDATA[96]]>"))
    sql(d, "UPDATE user_quotas SET body = ? WHERE user_oid = ?", (damaged, uid))
    lost = re.sub(r"<IMAGE_QUOTA>.*</IMAGE_QUOTA>", "<IMAGE_QUOTA></IMAGE_QUOTA>", body["group"])
    sql(d, "UPDATE group_quotas SET body = ? WHERE group_oid = ?", (lost, gid))
    sql(d, "INSERT INTO user_quotas (user_oid, body) VALUES (?, ?)",
        (4242, "<QUOTAS><ID>4242</ID></QUOTAS>"))
    found = db(d, "fsck")
    assert found.returncode == 1
    assert found.stdout.splitlines() == [
        f"user {uid} quotas: DATASTORE {ds}: SIZE_USED is 5, what exists holds 37; "
        "VM: MEMORY_USED is 96, what exists holds 64",
        "user 4242 quotas: the user does not exist",
        f"group {gid} quotas: IMAGE {iid}: RVMS_USED is 0, what exists holds 1"], found.stdout
    fixed = db(d, "fsck", "--repair")
    assert fixed.stdout.splitlines()[-1] == "3 problem(s) found, 3 repaired", fixed.stdout
    assert db(d, "fsck").stdout == ""
    assert [sql(d, f"SELECT body FROM {k}_quotas WHERE {k}_oid = ?", (o,))[0][0]
            for k, o in (("user", uid), ("group", gid))] == [body["user"], body["group"]]
    assert sql(d, "SELECT user_oid FROM user_quotas WHERE user_oid = 4242") == []
    d.start()
    ok(d, "one.vm.action", "terminate", vm, session=s)
    assert "<MEMORY_USED><![CDATA[0]]></MEMORY_USED>" in ok(d, "one.user.info", uid)
