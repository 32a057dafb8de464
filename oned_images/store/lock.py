"""Who has the database: one lock that a running daemon and the db tools share.

``oned-images serve`` holds it for as long as it runs; ``db restore`` and
``db fsck --repair`` take it for their work, so neither can rewrite a database
under a daemon and no daemon can start in the middle of a restore or repair.

* SQLite: a ``flock`` on ``<database file>.lock`` (it names the holders, one
  line each).  The kernel drops it when the holder dies, even by kill -9, so a
  crash never leaves a stale lock; the file is opened close-on-exec, so driver
  scripts (which may outlive a killed daemon) never inherit it.  Daemons take
  it shared (several serve one file on one host), the tools exclusive.
* PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a
  connection of its own, held by the server for that connection (advisory
  locks are per database, so daemons on other databases of the same server are
  not affected); its ``application_name`` names the holder.  Daemons take it
  shared (several serve one PostgreSQL database), the tools exclusive.

Several daemons on one SQLite file must run on one host (``flock`` and SQLite's own
WAL locks are local); their writes go one at a time through :class:`WriteLock`.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import threading

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


def sqlite_write_lock_path(db_path: str) -> str:
    return db_path + ".write-lock"


class WriteLock:
    """One writing transaction at a time on an SQLite file, across its daemons' DB
    threads (see store/database.py): an exclusive ``flock`` on
    ``<database file>.write-lock``, waited for in the kernel (no polling), and a
    thread lock, since a ``flock`` does not exclude threads sharing its descriptor.
    Released right after the commit; the kernel drops it when a daemon dies."""

    def __init__(self, db_path: str) -> None:
        self.path = sqlite_write_lock_path(db_path)
        self._fd: int | None = None
        self._thread = threading.Lock()

    def __enter__(self) -> WriteLock:
        self._thread.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()

    def close(self) -> None:
        with self._thread:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


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
        self._shared = False
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
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_APPEND, 0o600)
        line = (name + "\n").encode()
        try:
            if _try_flock(fd, fcntl.LOCK_EX):  # alone: the names start anew
                os.ftruncate(fd, 0)
                os.write(fd, line)
                if shared and not _try_flock(fd, fcntl.LOCK_SH):  # kept shared
                    raise BlockingIOError
            elif shared and _try_flock(fd, fcntl.LOCK_SH):  # beside other daemons
                os.write(fd, line)  # O_APPEND: one line per holder
            else:
                raise BlockingIOError
        except BlockingIOError:
            try:
                other = _live_holders(os.pread(fd, 64 * 1024, 0).decode("utf-8", "replace"))
            finally:
                os.close(fd)
            raise DatabaseInUse(f"The database {self.settings.path} is in use by "
                                f"{other or 'another process'}") from None
        self._fd = fd
        self._shared = shared

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
            if not self._shared:  # a daemon's line may stand beside others' (it is
                os.ftruncate(self._fd, 0)  # skipped once its process is gone)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._conn is not None:
            self._conn.close()  # the server drops a session's advisory locks with it
            self._conn = None

    def __enter__(self) -> DatabaseLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


_PID = re.compile(r"\(pid (\d+) on ([^)]*)\)")


def _live_holders(text: str) -> str:
    """The holder lines of an SQLite lock file whose process still runs (a daemon
    that stopped while others held the lock leaves its line behind), joined."""
    here = socket.gethostname()
    live = []
    for line in filter(None, (ln.strip() for ln in text.splitlines())):
        m = _PID.search(line)
        if m is None or m.group(2) != here or os.path.exists(f"/proc/{m.group(1)}"):
            if line not in live:
                live.append(line)
    return ", ".join(live)


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
