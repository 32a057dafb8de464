"""Several daemons on one SQLite file (README "Several daemons", *SQLite*): the shared
lock of the daemons beside the tools' exclusive one, and the writer lock that every
writing transaction takes while reads go without it."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time

import pytest

from oned_images.model.settings import DbSettings
from oned_images.store.database import Database
from oned_images.store.lock import DatabaseInUse, DatabaseLock, sqlite_lock_path


def test_daemons_share_the_sqlite_lock_and_the_tools_name_every_live_one(tmp_path):
    settings = DbSettings(path=str(tmp_path / "one.db"))
    me = f"(pid {os.getpid()} on {socket.gethostname()})"
    d0, d1 = DatabaseLock(settings), DatabaseLock(settings)
    d0.acquire("oned-images serve d0", shared=True)
    d1.acquire("oned-images serve d1", shared=True)
    with open(sqlite_lock_path(settings.path), "a") as f:  # a daemon that died meanwhile
        f.write(f"oned-images serve gone (pid 999999999 on {socket.gethostname()})\n")
    with pytest.raises(DatabaseInUse) as refused:
        DatabaseLock(settings).acquire("oned-images db restore")
    assert str(refused.value) == (f"The database {settings.path} is in use by "
                                  f"oned-images serve d0 {me}, oned-images serve d1 {me}")
    d0.release()
    d1.release()
    with DatabaseLock(settings) as tool:
        tool.acquire("oned-images db restore")
        with pytest.raises(DatabaseInUse, match=r"in use by oned-images db restore \(pid "):
            DatabaseLock(settings).acquire("oned-images serve", shared=True)
        with open(sqlite_lock_path(settings.path)) as f:
            assert f.read() == f"oned-images db restore {me}\n"
    alone = DatabaseLock(settings)
    alone.acquire("oned-images serve d2", shared=True)  # alone: the names start anew
    with open(sqlite_lock_path(settings.path)) as f:
        assert f.read() == f"oned-images serve d2 {me}\n"
    alone.release()


@pytest.fixture
def database(tmp_path):
    db = Database(None, DbSettings(path=str(tmp_path / "one.db")))
    db.run_sync(lambda: db.db.execute_sql("CREATE TABLE t (x INTEGER)"))
    yield db
    db.stop()


def _free(path: str) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _insert(db: Database, x: int) -> None:
    db.db.execute_sql("INSERT INTO t (x) VALUES (?)", (x,))


def _rows(db: Database) -> list[int]:
    return [r[0] for r in db.db.execute_sql("SELECT x FROM t ORDER BY x").fetchall()]


def test_a_write_waits_for_the_writer_lock_another_process_holds_and_a_read_does_not(
        database):
    holder = subprocess.Popen(["flock", database.writers.path, "sleep", "0.6"])
    try:
        while _free(database.writers.path):  # until the other process has the lock
            time.sleep(0.01)
        t0 = time.monotonic()
        assert database.read_sync(_rows, database) == []
        read = time.monotonic() - t0
        database.run_sync(_insert, database, 1)
        waited = time.monotonic() - t0
    finally:
        holder.wait(timeout=10)
    assert read < 0.2, read
    assert waited > 0.3, waited
    assert database.read_sync(_rows, database) == [1]


def test_a_read_transaction_that_writes_is_refused_and_rolled_back(database):
    with pytest.raises(RuntimeError, match=r"'_insert' wrote in a read-only transaction: "
                                           "run it with Database.run"):
        database.read_sync(_insert, database, 2)
    assert database.read_sync(_rows, database) == []
