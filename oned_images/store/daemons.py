"""Several daemons on one database: who is alive (leases) and who runs which driver action.

Each daemon has a row in ``daemons`` whose ``lease_until`` it pushes forward every third
of its lease.  Each driver action in progress has a row in ``driver_claims`` naming the
daemon that runs it, written in the transaction that makes the action due (see
:func:`claim`), so no daemon can see due work without an owner.  Work whose owner is
gone (no row, or a lease in the past) is taken over by :mod:`oned_images.domain.images`'s
reconciliation, the same code a single daemon runs at its restart; those takeovers are
serialised by a transaction-level advisory lock on PostgreSQL (on SQLite every writing
transaction already holds the database's writer lock, store/database.py), so two daemons
never take the same work.

Every function here runs inside a :meth:`Database.run` transaction.  Times are Unix
seconds of the daemons' clocks: their hosts must keep time (NTP), as any lease needs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import peewee

from oned_images.model.settings import default_daemon_name
from oned_images.store.models import DaemonRow, DriverClaimRow, database_proxy

#: "onedimg2": the transaction lock that serialises reconciliations and takeovers.
TAKEOVER_KEY = int.from_bytes(b"onedimg2", "big")


class DaemonNameInUse(Exception):
    """Start-up refused: a live daemon already has this name."""


@dataclass(frozen=True)
class Me:
    """The running daemon's identity, set once at start (see :func:`set_current`)."""

    name: str
    host: str
    pid: int
    #: DaemonConfig.run_location (its driver pid records), in the ``var_location`` column.
    var_location: str
    lease: float


_current: Me | None = None


def set_current(me: Me | None) -> None:
    global _current
    _current = me


def current() -> Me | None:
    return _current


default_name = default_daemon_name


def _postgres() -> bool:
    return not isinstance(database_proxy.obj, peewee.SqliteDatabase)


def serialise_takeovers() -> None:
    """Held until the transaction ends: one reconciliation or takeover at a time (SQLite:
    the writer lock that every :meth:`Database.run` transaction holds)."""
    if _postgres():
        database_proxy.obj.execute_sql("SELECT pg_advisory_xact_lock(%s)", (TAKEOVER_KEY,))


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is an oned-images process of this host (a pid can be reused)."""
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False
    return b"oned_images" in cmdline or b"oned-images" in cmdline


def _gone(host: str, pid: int, lease_until: float, now: float, here: bool = False) -> bool:
    """A daemon is gone when its lease ran out; with ``here`` (a daemon's start) also
    when it ran on this host and its process has ended, so a restart after a kill -9
    need not wait for the lease.  Running daemons go by the lease alone."""
    if lease_until < now:
        return True
    if not here:
        return False
    me = _current
    return me is not None and host == me.host and pid != me.pid and not _pid_alive(pid)


def register(me: Me) -> tuple[float, int, int]:
    """The daemon's row, at start: (the time it was written, how many daemons are live
    with this one, how many of them are not its siblings: :func:`census`).  A live daemon of the same name refuses it; the claims an earlier run
    under this name left (kill -9, then restart) lose their owner, so the reconciliation
    that follows takes them like any dead daemon's work."""
    now = time.time()
    serialise_takeovers()
    row = DaemonRow.get_or_none(DaemonRow.name == me.name)
    if row is not None and row.lease_until >= now and row.pid != me.pid:
        same_host_dead = row.host == me.host and not _pid_alive(row.pid)
        if not same_host_dead:
            raise DaemonNameInUse(
                f"A daemon named {me.name!r} is already running (pid {row.pid} on "
                f"{row.host}, lease until {time.strftime('%H:%M:%S', time.localtime(row.lease_until))}): "
                "give each daemon its own DAEMON_NAME")
    DaemonRow.delete().where(DaemonRow.name == me.name).execute()
    DaemonRow.insert(name=me.name, host=me.host, pid=me.pid, var_location=me.var_location,
                     started=int(now), lease_until=now + me.lease, renewed=now).execute()
    DriverClaimRow.update(owner="").where(DriverClaimRow.owner == me.name).execute()
    return (now, *census(now, here=True))


def renew(me: Me, peers: Callable[[int, int], None] | None = None) -> bool:
    """Push the lease forward; False when it had already run out (another daemon may have
    taken this daemon's work: it must stop its own driver actions).

    ``peers`` is told :func:`census`, inside the transaction: before its
    commit, which a joining daemon waits for (:func:`others_saw`) before it serves."""
    now = time.time()
    row = DaemonRow.get_or_none(DaemonRow.name == me.name)
    ok = row is not None and row.lease_until >= now
    if row is None:
        DaemonRow.insert(name=me.name, host=me.host, pid=me.pid,
                         var_location=me.var_location, started=int(now),
                         lease_until=now + me.lease, renewed=now).execute()
    else:
        DaemonRow.update(lease_until=now + me.lease, renewed=now).where(
            DaemonRow.name == me.name).execute()
    if peers is not None:
        peers(*census(now))
    return ok


def others_saw(me: Me, since: float) -> bool:
    """Whether every other live daemon renewed its lease after ``since`` (this daemon's
    registration), so that each knows it is no longer alone and checks its caches."""
    now = time.time()
    return not DaemonRow.select().where(
        (DaemonRow.name != me.name) & (DaemonRow.lease_until >= now)
        & (DaemonRow.renewed < since)).exists()


def leave(name: str) -> None:
    """A clean stop: the row goes, so the others take its (cancelled) work at once."""
    DaemonRow.delete().where(DaemonRow.name == name).execute()


def _rows() -> list[tuple[str, str, int, float, str]]:
    return list(DaemonRow.select(DaemonRow.name, DaemonRow.host, DaemonRow.pid,
                                 DaemonRow.lease_until, DaemonRow.var_location).tuples())


def live_names(now: float | None = None, here: bool = False) -> set[str]:
    now = time.time() if now is None else now
    return {n for n, h, p, lease, _v in _rows() if not _gone(h, p, lease, now, here)}


def census(now: float, here: bool = False) -> tuple[int, int]:
    """(live daemons with this one, those of them that are not its siblings)."""
    me = _current
    live = [(n, h, p) for n, h, p, lease, _v in _rows() if not _gone(h, p, lease, now, here)]
    strangers = sum(1 for n, h, p in live if not (me and n == me.name) and not _sibling(n, h, p))
    return len(live), strangers


def _sibling(name: str, host: str, pid: int) -> bool:
    """Whether daemon ``name`` is another worker of this daemon's parent (WORKERS,
    oned_images/workers.py): a ``<base>-w<k>`` name on this one's base, on this host,
    a child of this process's parent (the name alone could be anyone's)."""
    me = _current
    base, sep, k = me.name.rpartition("-w") if me else ("", "", "")
    other, osep, other_k = name.rpartition("-w")
    if not (sep and k.isdigit() and osep and other_k.isdigit() and other == base):
        return False
    parent = os.getppid()
    return host == me.host and pid != me.pid and parent != 1 and _parent(pid) == parent


def _parent(pid: int) -> int:
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return 0
    return int(stat.rsplit(b")", 1)[1].split()[1])  # the field after the name: state, ppid


@dataclass(frozen=True)
class Dead:
    """A daemon whose lease ran out: where its leftover driver processes may be."""

    name: str
    host: str
    var_location: str


def bury_dead(here: bool = False) -> list[Dead]:
    """Remove the rows of daemons whose lease ran out; their claims become ownerless."""
    now = time.time()
    dead = [Dead(n, h, v) for n, h, p, lease, v in _rows() if _gone(h, p, lease, now, here)]
    if dead:
        DaemonRow.delete().where(DaemonRow.name.in_([d.name for d in dead])).execute()
    return dead


def orphaned_work() -> bool:
    """Whether a claim has no live owner, or a daemon's lease ran out (cheap: the tick
    asks it before it runs the full reconciliation)."""
    now = time.time()
    rows = _rows()
    live = {n for n, h, p, lease, _v in rows if not _gone(h, p, lease, now)}
    if len(live) < len(rows):
        return True
    return DriverClaimRow.select().where(DriverClaimRow.owner.not_in(list(live) or [""])).exists()


def claims() -> dict[tuple[str, int], str]:
    """(kind, oid) -> owner of every claim."""
    return {(k, o): w for k, o, w in DriverClaimRow.select(
        DriverClaimRow.kind, DriverClaimRow.oid, DriverClaimRow.owner).tuples()}


def claim(kind: str, oid: int, action: str) -> None:
    """The running daemon owns ``action`` on (kind, oid) from this transaction on."""
    me = _current
    if me is None:
        return  # a tool or a unit test: no daemon runs the action
    (DriverClaimRow.insert(kind=kind, oid=oid, action=action, owner=me.name,
                           since=time.time())
     .on_conflict(conflict_target=[DriverClaimRow.kind, DriverClaimRow.oid],
                  update={DriverClaimRow.action: action, DriverClaimRow.owner: me.name,
                          DriverClaimRow.since: time.time()})
     .execute())


def lock_claim(kind: str, oid: int) -> None:
    """Lock (kind, oid)'s claim row, if any, before the object's own row: a driver reply
    takes the claim first (:func:`owns`), then the object, so a transaction that may
    release the claim (an image delete) must take them in that order too, or the two
    deadlock on PostgreSQL.  (SQLite: the writer lock orders everything.)"""
    if _current is None or not _postgres():
        return
    (DriverClaimRow.select(DriverClaimRow.owner)
     .where((DriverClaimRow.kind == kind) & (DriverClaimRow.oid == oid))
     .for_update().tuples().first())


def release(kind: str, oid: int) -> None:
    if _current is None:
        return
    DriverClaimRow.delete().where((DriverClaimRow.kind == kind)
                                  & (DriverClaimRow.oid == oid)).execute()


def try_hold(kind: str, oid: int, action: str) -> bool:
    """Claim (kind, oid) unless a live daemon other than this one holds it: the one
    monitor per datastore across daemons."""
    me = _current
    if me is None:
        return True
    row = DriverClaimRow.get_or_none((DriverClaimRow.kind == kind)
                                     & (DriverClaimRow.oid == oid))
    if row is not None and row.owner != me.name and row.owner in live_names():
        return False
    claim(kind, oid, action)
    return True


def hold_alone(kind: str, oid: int, action: str) -> bool:
    """:func:`try_hold`, serialised so that two daemons never both get it (the one
    scheduler pass at a time across daemons)."""
    serialise_takeovers()
    return try_hold(kind, oid, action)


def status() -> list[tuple[str, str, int, float, list[str]]]:
    """(name, host, pid, seconds of lease left, ["image 12 cp", ...]) of live daemons."""
    now = time.time()
    work: dict[str, list[str]] = {}
    for kind, oid, action, owner in (DriverClaimRow.select(
            DriverClaimRow.kind, DriverClaimRow.oid, DriverClaimRow.action,
            DriverClaimRow.owner).order_by(DriverClaimRow.kind, DriverClaimRow.oid).tuples()):
        work.setdefault(owner, []).append(f"{kind} {oid} {action}")
    return [(n, h, p, lease - now, work.get(n, [])) for n, h, p, lease, _v in sorted(_rows())
            if not _gone(h, p, lease, now)]


def owns(kind: str, oid: int) -> bool:
    """Whether the running daemon still holds (kind, oid): a reply of an action another
    daemon took over must not be applied a second time."""
    me = _current
    if me is None:
        return True
    query = (DriverClaimRow.select(DriverClaimRow.owner)
             .where((DriverClaimRow.kind == kind) & (DriverClaimRow.oid == oid)))
    if _postgres():  # (SQLite: the writer lock)
        query = query.for_update()  # a takeover waits until this reply is stored
    row = query.tuples().first()
    return row is not None and row[0] == me.name


def drop_dead_monitors(live: set[str]) -> None:
    """Monitor claims of daemons that died while monitoring: nothing to take over."""
    DriverClaimRow.delete().where((DriverClaimRow.kind == "monitor")
                                  & DriverClaimRow.owner.not_in(list(live) or [""])).execute()


def take_vm_work(due: dict[int, str]) -> set[int]:
    """The VMs whose driver work has no live owner, among ``due`` (VM id -> the action
    due, of every VM with due work), claimed for this daemon in this transaction (the
    takeover, serialised like the images'); claims of VMs with no due work any more and
    a dead daemon's scheduler claim are dropped."""
    live = live_names()
    owners = {o: w for o, w in DriverClaimRow.select(DriverClaimRow.oid, DriverClaimRow.owner)
              .where(DriverClaimRow.kind == "vm").tuples()}
    mine = {oid for oid in due if owners.get(oid) not in live}
    for oid in sorted(mine):
        claim("vm", oid, due[oid])
    stale = [o for o, w in owners.items() if o not in due and w not in live]
    if stale:
        DriverClaimRow.delete().where((DriverClaimRow.kind == "vm")
                                      & DriverClaimRow.oid.in_(stale)).execute()
    DriverClaimRow.delete().where((DriverClaimRow.kind == "scheduler")
                                  & DriverClaimRow.owner.not_in(list(live) or [""])).execute()
    return mine


def orphaned_vm_work() -> bool:
    """Whether a VM claim (or the scheduler's) has no live owner: the tick's cheap test."""
    live = live_names()
    return DriverClaimRow.select().where(
        DriverClaimRow.kind.in_(["vm", "scheduler"])
        & DriverClaimRow.owner.not_in(list(live) or [""])).exists()


def others_live() -> bool:
    """Whether a daemon other than this one holds a lease now."""
    me = _current
    return bool(live_names() - {me.name if me else ""})
