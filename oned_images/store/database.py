"""The database: peewee bound to SQLite or PostgreSQL, worked off the reactor.

Every unit of database work is a plain function run by :meth:`Database.run` on a
dedicated thread pool inside one transaction; it returns plain data, never query
objects.  SQLite gets exactly one thread per daemon; PostgreSQL gets a small pool with
row locks (``SELECT … FOR UPDATE``).

Several daemons on one SQLite file (same host): every transaction that may write
(:meth:`Database.run`) first takes the database's writer lock (:class:`WriteLock`, a
``flock`` the DB thread waits for, in the kernel's queue) and then ``BEGIN IMMEDIATE``,
so writers of all the daemons run one after the other, each from the latest commit:
what ``FOR UPDATE`` gives on PostgreSQL, without SQLite's busy handler (which polls with
sleeps of up to 100 ms) and without SQLITE_BUSY_SNAPSHOT (a deferred transaction that
read, then writes after another process committed).  Transactions that only read
(:meth:`Database.read`: info and pool listings, the cache counters) stay deferred: a WAL
snapshot that neither waits for nor holds back the writers.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

import peewee
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure

from oned_images.model.settings import DbSettings
from oned_images.store.lock import WriteLock
from oned_images.store.models import database_proxy

T = TypeVar("T")


#: one.db holds password hashes and login tokens.
DB_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_sqlite_files(path: str) -> None:
    """Create the database file 0600 whatever the umask, and tighten an existing one and
    the side files an earlier run left.  SQLite creates its -wal, -shm and -journal
    files with the mode of the database file, so they follow.  Called by the daemon
    before the first connection (not by read-only tools, which must not create it)."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, DB_FILE_MODE)
    except FileNotFoundError:
        return  # no such directory: SQLite says so when it opens the database
    try:
        os.fchmod(fd, DB_FILE_MODE)
    except PermissionError:
        pass  # not our file: its owner decides
    finally:
        os.close(fd)
    for suffix in SQLITE_SIDE_FILES:
        try:
            os.chmod(path + suffix, DB_FILE_MODE)
        except (FileNotFoundError, PermissionError):
            pass


def open_database(settings: DbSettings) -> peewee.Database:
    if settings.backend == "sqlite":
        return peewee.SqliteDatabase(
            settings.path,
            pragmas={
                "journal_mode": "wal",
                "synchronous": "normal",
                "busy_timeout": settings.timeout_ms,
                "foreign_keys": 0,
            },
            check_same_thread=False,
        )
    if settings.backend == "postgresql":
        return peewee.PostgresqlDatabase(
            settings.db_name,
            user=settings.user,
            password=settings.passwd or None,
            host=settings.server or None,
            port=settings.port,
        )
    raise ValueError(f"unknown DB backend {settings.backend!r}")


class DatabaseMissing(Exception):
    """The configured database does not exist and cannot be created: one line saying what to do."""


def _pg_connect(settings: DbSettings, dbname: str):
    import psycopg2

    return psycopg2.connect(dbname=dbname, user=settings.user, password=settings.passwd or None,
                            host=settings.server or None, port=settings.port)


def _pg_maintenance(settings: DbSettings):
    """A connection to the server's maintenance database (postgres, else template1)."""
    import psycopg2

    try:
        return _pg_connect(settings, "postgres")
    except psycopg2.OperationalError:
        return _pg_connect(settings, "template1")


def database_exists(settings: DbSettings) -> bool:
    """Whether the configured database is there, without creating it (SQLite would).

    On PostgreSQL a refused connection is told apart by the catalogue, not by the
    server's (translated) message; other failures are raised as they came."""
    if settings.backend == "sqlite":
        return Path(settings.path).exists()
    import psycopg2

    try:
        _pg_connect(settings, settings.db_name).close()
        return True
    except psycopg2.OperationalError as exc:
        refused = exc
    try:
        conn = _pg_maintenance(settings)
    except psycopg2.OperationalError:
        raise refused from None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.db_name,))
            if cur.fetchone() is not None:
                raise refused  # there, but not for us: the original reason
    finally:
        conn.close()
    return False


def ensure_database(settings: DbSettings) -> bool:
    """Create the PostgreSQL database when it is missing, as oned creates its MySQL one.

    True when it was created.  A role that may not create databases gets
    :class:`DatabaseMissing` with the statement a superuser has to run."""
    if database_exists(settings):
        return False
    from psycopg2 import errors, sql

    conn = _pg_maintenance(settings)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.db_name)))
    except errors.InsufficientPrivilege:
        raise DatabaseMissing(
            f'PostgreSQL database "{settings.db_name}" does not exist on '
            f'{settings.server}:{settings.port} and role "{settings.user}" may not create it: '
            f'as a superuser run CREATE DATABASE "{settings.db_name}" OWNER "{settings.user}"; '
            f'(or ALTER ROLE "{settings.user}" CREATEDB)') from None
    except (errors.DuplicateDatabase, errors.UniqueViolation):
        return False  # created meanwhile by another process (either error, by timing)
    finally:
        conn.close()
    return True


class Workers:
    """The DB threads: a C queue of calls, each answered on the reactor.

    What twisted's ThreadPool did for us (a thread team, a Python Condition per hand-off,
    log context), minus its cost: the hand-off was a tenth of the reactor's busy time
    under image.info.  Calls run in order of arrival; ``stop`` lets the queued ones
    finish, then joins the threads.
    """

    _STOP = object()

    def __init__(self, reactor: IReactorThreads, threads: int, name: str) -> None:
        self.reactor = reactor
        self.size = threads
        self.name = name
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.size):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        for _ in self.threads:
            self.queue.put(self._STOP)
        for thread in self.threads:
            thread.join()
        self.threads = []

    def call(self, fn: Callable[..., T], *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.queue.put((d, fn, args))
        return d

    def _work(self) -> None:
        get = self.queue.get
        while (item := get()) is not self._STOP:
            self._answer(*item)
            del item  # an idle thread holds nothing (a listing's rows are megabytes)

    def _answer(self, d: Deferred, fn: Callable[..., Any], args: tuple) -> None:
        try:
            result = fn(*args)
        except BaseException:  # noqa: BLE001 — the caller's Deferred carries it
            self.reactor.callFromThread(d.errback, Failure())
        else:
            self.reactor.callFromThread(d.callback, result)


class Database:
    """Runs functions on the DB threads, one transaction each."""

    def __init__(self, reactor: IReactorThreads, settings: DbSettings) -> None:
        self.reactor = reactor
        self.settings = settings
        self.db = open_database(settings)
        database_proxy.initialize(self.db)
        threads = 1 if settings.backend == "sqlite" else max(1, settings.connections)
        self.pool = Workers(reactor, threads, "db")
        self.is_postgres = settings.backend == "postgresql"
        #: SQLite: one writer at a time across the daemons on the file (None in memory)
        self.writers = (WriteLock(settings.path) if not self.is_postgres
                        and settings.path not in ("", ":memory:") else None)
        #: called with the seconds each transaction of run() took (metrics).
        self.observe: Callable[[float], None] | None = None
        #: a writing transaction's last statement (on its DB thread, before the commit);
        #: what it returns runs after the commit (store/versions.py, WORKERS only).
        self.on_write: Callable[[], Callable[[], None]] | None = None

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()
        if not self.db.is_closed():
            self.db.close()
        if self.writers is not None:
            self.writers.close()

    def _in_transaction(self, fn: Callable[..., T], args: tuple, write: bool = True) -> T:
        db = self.db
        if db.is_closed():
            db.connect(reuse_if_open=True)
        hook = self.on_write if write else None
        try:
            if self.is_postgres:
                with db.atomic():
                    result = fn(*args)
                    committed = hook() if hook is not None else None
            elif write:  # the writer lock first, released after the commit
                with self.writers or nullcontext(), db.atomic("IMMEDIATE"):
                    result = fn(*args)
                    committed = hook() if hook is not None else None
            else:
                return self._read_only(fn, args)
        except peewee.InterfaceError:
            db.close()
            raise
        except peewee.OperationalError:
            if self.is_postgres:
                # A dropped server connection: reconnect on the next call.
                db.close()
            raise
        if committed is not None:
            committed()
        return result

    def _read_only(self, fn: Callable[..., T], args: tuple) -> T:
        """A deferred SQLite transaction; a write in it is a programming error (it
        would upgrade without the writer lock) and is rolled back with one."""
        conn = self.db.connection()
        before = conn.total_changes
        with self.db.atomic():
            result = fn(*args)
            if conn.total_changes != before:
                raise RuntimeError(f"{getattr(fn, '__qualname__', fn)!r} wrote in a "
                                   "read-only transaction: run it with Database.run")
            return result

    def run(self, fn: Callable[..., T], *args: Any):
        """Deferred firing with ``fn(*args)`` run in one transaction off the reactor."""
        return self.pool.call(self._timed, fn, args, True)

    def read(self, fn: Callable[..., T], *args: Any):
        """:meth:`run` for a ``fn`` that only reads (see the module docstring)."""
        return self.pool.call(self._timed, fn, args, False)

    def _timed(self, fn: Callable[..., T], args: tuple, write: bool) -> T:
        """The transaction, timed for /metrics (``observe`` is called on the DB thread)."""
        started = time.perf_counter()
        try:
            return self._in_transaction(fn, args, write)
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - started)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """For start-up and CLI commands, before the reactor runs."""
        return self._in_transaction(fn, args)

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`run_sync` for a ``fn`` that only reads."""
        return self._in_transaction(fn, args, False)
