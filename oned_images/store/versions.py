"""Caches that stay right when several daemons write one database.

A daemon keeps some tables in memory (users, groups and ACLs: every call reads them).
Each such cache is registered here with its tables; a trigger on those tables (a
statement trigger on PostgreSQL, row triggers on SQLite, which has no other kind) bumps
the cache's counter in ``cache_versions`` in the writing transaction, so no code path
that writes them can forget to.  Before a call is answered, the daemon
reads the counters and reloads every cache whose counter moved.

Why counters and not LISTEN/NOTIFY: a notification reaches the other daemons some time
after the writer's commit, and a client that changes a password on daemon A and logs in
on daemon B at once could be served from B's stale cache in between.  Reading the
counters is ordered after the commit the client saw, so the very next call is right.
The read is shared: calls that arrive while one is in flight wait for the next one (sent
after they arrived), so under load one small query serves many calls.

A daemon that is alone on the database skips the read (nobody else writes): each lease
renewal tells it how many daemons are live, inside the renewal's transaction, and a
joining daemon serves only once every other one has renewed after it registered
(``daemons.others_saw``), so none of them can still believe it is alone.  A daemon that
becomes alone again reads the counters once more before it stops reading them.

The workers of one parent (WORKERS = N, oned_images/workers.py) skip the read too while
they are the only daemons live: they share the counters in memory
(store/shared_counters.py).  Every writing transaction of a worker reads the counters
as its last statement (``Database.on_write``, installed here: one small SELECT on the DB
thread, inside the transaction, so it sees its own trigger bumps) and, after the commit
and so before the writing call's reply is sent, raises the shared counters to what it
read.  A client that saw that reply and calls a sibling finds the shared counter above
the sibling's ``known``: the sibling reads the database as above and reloads.  Equal
counters mean every commit a client of this parent saw is already in the cache, and
the call goes on without a database round trip.  What can be missed, and what repairs
it: a worker killed between its commit and the publish (its client got no reply; the
next writing transaction of any worker, the lease renewals included, publishes what
the database holds); a restarted worker (it maps the same block and reads the database
once at start, then publishes it).  The renewal also counts the live daemons that are
not siblings (``daemons.census``: same host, same parent process, a ``<base>-w<k>``
name): while one is live, its writes reach no shared counter and every call reads the
database as before; when the last one goes, the next call reads once more.  A daemon
without WORKERS installs nothing of this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import peewee
from twisted.internet import defer
from twisted.logger import Logger

from oned_images.store.models import CacheVersionRow, database_proxy
from oned_images.store.shared_counters import SLOTS, SharedCounters

log = Logger(namespace="ReM")

#: "onedimg3": serialises the (idempotent) trigger set-up of daemons starting together.
SETUP_KEY = int.from_bytes(b"onedimg3", "big")

_FUNCTION = """
CREATE OR REPLACE FUNCTION oned_images_bump_cache() RETURNS trigger AS $$
BEGIN
    INSERT INTO cache_versions (name, version) VALUES (TG_ARGV[0], 1)
    ON CONFLICT (name) DO UPDATE SET version = cache_versions.version + 1;
    RETURN NULL;
END $$ LANGUAGE plpgsql
"""


_SQLITE_TRIGGER = (
    'CREATE TRIGGER "{trigger}" AFTER {event} ON "{table}" '
    "FOR EACH ROW BEGIN INSERT INTO cache_versions (name, version) VALUES ('{name}', 1) "
    "ON CONFLICT (name) DO UPDATE SET version = version + 1; END")


def install_triggers(caches: dict[str, list[str]]) -> None:
    """Create the bump function and one statement trigger per (cache, table); run at
    every start (a restored database comes back without triggers)."""
    db = database_proxy.obj
    if isinstance(db, peewee.SqliteDatabase):
        _install_sqlite_triggers(caches)
        return
    db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SETUP_KEY,))
    db.execute_sql(_FUNCTION)
    for name, tables in caches.items():
        for table in tables:
            trigger = f"oned_images_cache_{table}"
            db.execute_sql(f'DROP TRIGGER IF EXISTS "{trigger}" ON "{table}"')
            db.execute_sql(
                f'CREATE TRIGGER "{trigger}" AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE '
                f'ON "{table}" FOR EACH STATEMENT EXECUTE FUNCTION '
                f"oned_images_bump_cache('{name}')")
        CacheVersionRow.insert(name=name, version=0).on_conflict_ignore().execute()


def _install_sqlite_triggers(caches: dict[str, list[str]]) -> None:
    """Three row triggers per (cache, table), under the writer lock (store/database.py).
    Only missing or different ones are (re)made: a schema change makes every other
    daemon's connection prepare its statements again."""
    db = database_proxy.obj
    have = dict(db.execute_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                               "AND name LIKE 'oned_images_cache_%'").fetchall())
    for name, tables in caches.items():
        for table in tables:
            for event in ("INSERT", "UPDATE", "DELETE"):
                trigger = f"oned_images_cache_{table}_{event.lower()}"
                sql = _SQLITE_TRIGGER.format(trigger=trigger, table=table, event=event,
                                             name=name)
                if have.get(trigger) == sql:
                    continue
                db.execute_sql(f'DROP TRIGGER IF EXISTS "{trigger}"')
                db.execute_sql(sql)
        CacheVersionRow.insert(name=name, version=0).on_conflict_ignore().execute()


def read_versions() -> dict[str, int]:
    return {n: int(v) for n, v in
            CacheVersionRow.select(CacheVersionRow.name, CacheVersionRow.version).tuples()}


@dataclass
class Cache:
    tables: list[str]
    #: reloads the cache from the database (one transaction)
    reload: Callable[[], Awaitable[Any]]


@dataclass
class CacheVersions:
    """The registered caches of one daemon and the shared counter read."""

    db: Any
    enabled: bool = False
    caches: dict[str, Cache] = field(default_factory=dict)
    known: dict[str, int] = field(default_factory=dict)
    reloads: int = 0
    #: counter reads on the database (metrics)
    checks: int = 0
    #: no other daemon is live: nothing can be stale (see the module docstring)
    alone: bool = True
    #: WORKERS: the counters this parent's workers share (None: not a worker)
    shared: SharedCounters | None = None
    #: live daemons that are not this one's siblings (None: not counted yet)
    strangers: int | None = None
    _once: bool = False
    _slots: dict[str, int] = field(default_factory=dict)
    _waiting: list[defer.Deferred] = field(default_factory=list)
    _running: bool = False

    def register(self, name: str, tables: list[str],
                 reload: Callable[[], Awaitable[Any]]) -> None:
        """A cache of ``tables``: ``reload`` runs before the next call whenever any
        daemon wrote one of them (another helper's VM cache registers the same way)."""
        self.caches[name] = Cache(list(tables), reload)
        if len(self.caches) > SLOTS:
            raise ValueError(f"more than {SLOTS} caches: raise shared_counters.SLOTS")

    def setup_sync(self) -> None:
        """At start: triggers in place, the current counters known."""
        if not self.enabled:
            return
        self.db.run_sync(install_triggers, {n: c.tables for n, c in self.caches.items()})
        self.known = self.db.run_sync(read_versions)
        if self.shared is not None:
            self._slots = {name: slot for slot, name in enumerate(sorted(self.caches))}
            self.shared.publish(self._by_slot(self.known))
            self.db.on_write = self._last_statement

    def _by_slot(self, versions: dict[str, int]) -> dict[int, int]:
        return {self._slots[n]: v for n, v in versions.items() if n in self._slots}

    def _last_statement(self) -> Callable[[], None]:
        """``Database.on_write``: the counters as this transaction leaves them; they are
        published once it committed."""
        rows = self.db.db.execute_sql("SELECT name, version FROM cache_versions").fetchall()
        versions = self._by_slot({n: int(v) for n, v in rows})
        shared = self.shared
        return lambda: shared.publish(versions)

    def peers(self, live: int, strangers: int | None = None) -> None:
        """How many daemons are live (this one included) and how many of them are not
        this worker's siblings; called inside the renewal's transaction, on a DB thread,
        so it holds before another daemon sees the commit."""
        alone = live <= 1
        if (alone and not self.alone) or (strangers == 0 and self.strangers):
            self._once = True  # what the last peer (or stranger) wrote before it left
        self.alone = alone
        self.strangers = strangers

    def fresh(self) -> defer.Deferred | None:
        """None when nothing can be stale (one daemon); else fires once every cache
        reflects what was committed before this call."""
        if not self.enabled or (self.alone and not self._once):
            return None
        if self.shared is not None and self.strangers == 0 and not self._once:
            value, known = self.shared.value, self.known
            if not any(value(slot) > known.get(name, 0) for name, slot in self._slots.items()):
                return None  # every commit a client of this parent saw is in the caches
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        if not self._running:
            self._running = True
            defer.ensureDeferred(self._round())
        return d

    async def _round(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            self._once = False
            self.checks += 1
            error = None
            try:
                versions = await self.db.read(read_versions)
                for name, version in versions.items():
                    cache = self.caches.get(name)
                    if cache is None or self.known.get(name) == version:
                        continue
                    await cache.reload()
                    self.known[name] = version
                    self.reloads += 1
            except Exception as exc:  # noqa: BLE001 - every waiter gets it
                log.failure("cache version check failed")
                error = exc
            for d in batch:
                if error is None:
                    d.callback(None)
                else:
                    d.errback(error)
        self._running = False
