"""The database: peewee bound to SQLite or PostgreSQL, worked off the reactor.

Every unit of database work is a plain function run by :meth:`Database.run` on a
dedicated thread pool inside one transaction; it returns plain data, never query
objects.  SQLite gets exactly one thread (one writer, no "database is locked");
PostgreSQL gets a small pool with row locks (``SELECT … FOR UPDATE``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import peewee
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from oned_images.store.models import database_proxy

T = TypeVar("T")


@dataclass(frozen=True)
class DbSettings:
    backend: str = "sqlite"
    path: str = ""
    server: str = "localhost"
    port: int = 5432
    user: str = "oneadmin"
    passwd: str = ""
    db_name: str = "opennebula"
    connections: int = 4
    timeout_ms: int = 2500


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


class Database:
    """Runs functions on the DB threads, one transaction each."""

    def __init__(self, reactor: IReactorThreads, settings: DbSettings) -> None:
        self.reactor = reactor
        self.settings = settings
        self.db = open_database(settings)
        database_proxy.initialize(self.db)
        threads = 1 if settings.backend == "sqlite" else max(1, settings.connections)
        self.pool = ThreadPool(minthreads=threads, maxthreads=threads, name="db")
        self.is_postgres = settings.backend == "postgresql"
        #: called with the seconds each transaction of run() took (metrics).
        self.observe: Callable[[float], None] | None = None

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()
        if not self.db.is_closed():
            self.db.close()

    def _in_transaction(self, fn: Callable[..., T], args: tuple) -> T:
        db = self.db
        if db.is_closed():
            db.connect(reuse_if_open=True)
        try:
            with db.atomic():
                return fn(*args)
        except peewee.InterfaceError:
            db.close()
            raise
        except peewee.OperationalError:
            if self.is_postgres:
                # A dropped server connection: reconnect on the next call.
                db.close()
            raise

    def run(self, fn: Callable[..., T], *args: Any):
        """Deferred firing with ``fn(*args)`` run in one transaction off the reactor."""
        return deferToThreadPool(self.reactor, self.pool, self._timed, fn, args)

    def _timed(self, fn: Callable[..., T], args: tuple) -> T:
        """The transaction, timed for /metrics (``observe`` is called on the DB thread)."""
        started = time.perf_counter()
        try:
            return self._in_transaction(fn, args)
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - started)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """For start-up and CLI commands, before the reactor runs."""
        return self._in_transaction(fn, args)
