"""Who has the database: one lock that a running daemon and the db tools share.

``oned-images serve`` holds it for as long as it runs; ``db restore`` and
``db fsck --repair`` take it for their work, so neither can rewrite a database
under a daemon and no daemon can start in the middle of a restore or repair.

* SQLite: an exclusive ``flock`` on ``<database file>.lock`` (it names the
  holder).  The kernel drops it when the holder dies, even by kill -9, so a
  crash never leaves a stale lock; the file is opened close-on-exec, so driver
  scripts (which may outlive a killed daemon) never inherit it.
* PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a
  connection of its own, held by the server for that connection (advisory
  locks are per database, so daemons on other databases of the same server are
  not affected); its ``application_name`` names the holder.  Daemons take it
  shared (several serve one PostgreSQL database), the tools exclusive.

SQLite serves one daemon: a second ``serve`` on the same file is refused with a
message saying so (its one writer and its file locks are local to one host).
"""

from __future__ import annotations

import fcntl
import os
import socket

from oned_images.model.settings import DbSettings
from oned_images.store.schema import SchemaError

#: "onedimg1" as a bigint: the advisory lock key of an oned-images database.
PG_LOCK_KEY = int.from_bytes(b"onedimg1", "big")


class DatabaseInUse(SchemaError):
    """A start-up or tool refusal: another process holds the database.

    A SchemaError subclass so that ``serve`` reports it the way it reports a
    schema mismatch (one line, exit 1)."""


def holder_name(what: str) -> str:
    return f"{what} (pid {os.getpid()} on {socket.gethostname()})"


def sqlite_lock_path(db_path: str) -> str:
    return db_path + ".lock"


def pg_connect(settings: DbSettings, application_name: str = "oned-images"):
    """A psycopg2 connection with the daemon's settings (autocommit)."""
    import psycopg2

    conn = psycopg2.connect(dbname=settings.db_name, user=settings.user,
                            password=settings.passwd or None, host=settings.server or None,
                            port=settings.port, application_name=application_name[:63])
    conn.autocommit = True
    return conn


class DatabaseLock:
    """The lock of one database; :meth:`acquire` raises DatabaseInUse naming the holder."""

    def __init__(self, settings: DbSettings) -> None:
        self.settings = settings
        self._fd: int | None = None
        self._conn = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._conn is not None

    def acquire(self, what: str, shared: bool = False) -> None:
        """``shared``: a daemon's hold (PostgreSQL lets several daemons share it)."""
        name = holder_name(what)
        if self.settings.backend == "sqlite":
            self._acquire_sqlite(name, shared)
        else:
            self._acquire_pg(name, shared)

    def _acquire_sqlite(self, name: str, shared: bool = False) -> None:
        path = sqlite_lock_path(self.settings.path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                other = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
            hint = ""
            if shared and other.startswith("oned-images serve"):
                hint = ("; SQLite serves one daemon: to run several, put them on one "
                        "PostgreSQL database (DB = [ BACKEND = \"postgresql\", ... ])")
            raise DatabaseInUse(f"The database {self.settings.path} is in use by "
                                f"{other or 'another process'}{hint}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (name + "\n").encode(), 0)
        self._fd = fd

    def _acquire_pg(self, name: str, shared: bool = False) -> None:
        conn = pg_connect(self.settings, name)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock_shared(%s)" if shared else
                        "SELECT pg_try_advisory_lock(%s)", (PG_LOCK_KEY,))
            if cur.fetchone()[0]:
                self._conn = conn
                return
            other = pg_lock_holder(cur)
        conn.close()
        raise DatabaseInUse(f"The database {self.settings.db_name} on {self.settings.server} is "
                            f"in use by {other or 'another process'}")

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._conn is not None:
            self._conn.close()  # the server drops a session's advisory locks with it
            self._conn = None

    def __enter__(self) -> DatabaseLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def pg_lock_holder(cur) -> str:
    """application_name of the session holding the advisory lock of this database."""
    cur.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = %s AND l.objid = %s",
        (PG_LOCK_KEY >> 32, PG_LOCK_KEY & 0xFFFFFFFF))
    row = cur.fetchone()
    return row[0] if row else ""


def daemon_running(settings: DbSettings) -> str | None:
    """The holder of the database's lock, or None when nobody holds it (probe only)."""
    lock = DatabaseLock(settings)
    try:
        lock.acquire("oned-images db probe")
    except DatabaseInUse as exc:
        return str(exc)
    lock.release()
    return None
