"""The daemon: builds every part from the configuration and starts them in order.

Start: port bound (reading paused; a port in use stops here, before anything is
created) → driver tree checked → database created if missing, opened and migrated →
caches loaded → driver runner → restart reconciliation → the port starts accepting
(only then is the daemon "ready") → datastore monitor timer.  Stop runs in reverse: stop listening, stop timers, stop the
driver runner (running actions are left to reconciliation), close the database.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from oned_images import logs, workers
from oned_images.config import WEB_ROOT, DaemonConfig
from oned_images.domain import vm_takeover
from oned_images.domain.clusters import Clusters
from oned_images.domain.datastores import Datastores, bootstrap_datastores
from oned_images.domain.hosts import Hosts
from oned_images.domain.identity import Identity, bootstrap_identity
from oned_images.domain.images import ImageManager
from oned_images.domain.scheduler import Scheduler
from oned_images.domain.templates import Templates
from oned_images.domain.uploads import UploadManager
from oned_images.domain.vm_disk_ops import VmDiskOps
from oned_images.domain.vms import Vms
from oned_images.driver import progress, reaper
from oned_images.driver.checks import check_drivers
from oned_images.driver.runner import DriverRunner
from oned_images.driver.tm import ACTIONS as TM_ACTIONS
from oned_images.driver.tm import TransferManager
from oned_images.metrics import PUBLISH_SECONDS, Metrics
from oned_images.rpc.metrics import MetricsResource
from oned_images.rpc.resource import RpcSite
from oned_images.rpc.uploads import ProgressResource, UploadResource
from oned_images.rpc.web import WebResource
from oned_images.store import daemons, schema
from oned_images.store.database import (
    Database,
    DbSettings,
    ensure_database,
    private_sqlite_files,
)
from oned_images.store.lock import DatabaseLock
from oned_images.store.models import DatastoreRow
from oned_images.store.shared_counters import SharedCounters
from oned_images.store.versions import CacheVersions
from oned_images.systemd import Notifier

log = Logger(namespace="OnM")


class StartupError(Exception):
    """Start-up cannot go on (port in use, ...): one line for the operator."""


class _NotReadyYet(protocol.Factory):
    """The bound port's factory until the site is attached (reading is paused meanwhile)."""

    noisy = False

    def logPrefix(self) -> str:  # noqa: N802 (Twisted API)
        return "XML-RPC port (accepting after reconciliation)"


def one_auth_path() -> Path:
    env = os.environ.get("ONE_AUTH")
    if env:
        return Path(env)
    return Path.home() / ".one" / "one_auth"


#: "onedimg4": daemons that start together on an empty database: one of them creates
#: and bootstraps it, the others wait and find it made.
BOOTSTRAP_KEY = int.from_bytes(b"onedimg4", "big")


def _create_or_check(db: Database, cfg: DaemonConfig) -> tuple[Path, bool, str] | None:
    """One transaction: the schema check, and on an empty database its creation and
    oned's bootstrap (groups, users, ACLs, datastores 0-2).  Several daemons starting
    together on one empty database would otherwise each find it empty and collide
    half-way (a unique violation, a daemon dead at start); here they queue on a
    transaction-level advisory lock (PostgreSQL) or the writer lock (SQLite), and only
    the first finds it empty.  (the credentials file, generated or not, and the
    serveradmin secret) when this daemon bootstrapped it; None when it was made."""
    if db.is_postgres:
        db.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_KEY,))
    if not schema.check(db.db):
        return None
    name, password, path, generated = oneadmin_credentials()
    server_secret = secrets.token_hex(16)
    bootstrap_identity(name, password, server_secret)
    bootstrap_datastores(cfg)
    return path, generated, server_secret


def oneadmin_credentials() -> tuple[str, str, Path, bool]:
    """(name, password, file, generated): oned's bootstrap reads ~/.one/one_auth."""
    path = one_auth_path()
    try:
        line = path.read_text(encoding="utf-8").strip().splitlines()[0]
        name, sep, password = line.partition(":")
        if sep and name and password:
            return name, password, path, False
    except (OSError, IndexError):
        pass
    password = secrets.token_hex(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"oneadmin:{password}\n")
    return "oneadmin", password, path, True


#: state directories (VAR_LOCATION, run/, .one/, the datastores): the daemon's user and
#: group only, whatever the umask.  Their contents keep the modes they are given.
STATE_DIR_MODE = 0o750


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) or tighten it to STATE_DIR_MODE."""
    path = Path(path)
    path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    try:
        os.chmod(path, STATE_DIR_MODE)
    except PermissionError as exc:
        log.warn("Cannot restrict {path} to mode 0750: {error}", path=str(path), error=exc)
    return path


@dataclass
class App:
    """What the XML-RPC adapters reach: configuration and the domain services."""

    config: DaemonConfig
    db: Database
    identity: Identity
    datastores: Datastores
    images: ImageManager
    drivers: DriverRunner
    #: the bound TCP port (PORT may be 0), for documents that name the endpoint.
    port: int = 0
    #: the Prometheus instruments (oned_images.metrics); None only in bare tests.
    metrics: Metrics | None = None
    #: tus uploads (domain/uploads.py); None when UPLOADS = "NO".
    uploads: UploadManager | None = None
    #: clusters, hosts and VM templates (vms.md §4, §6); None only in bare tests.
    clusters: Clusters | None = None
    hosts: Hosts | None = None
    templates: Templates | None = None
    #: virtual machines and their placement (vms.md §5); None only in bare tests.
    vms: Vms | None = None
    scheduler: Scheduler | None = None
    #: transfer-manager actions of VM disks (driver/tm.py, vms.md §7); None only in bare tests.
    tms: TransferManager | None = None
    #: the caches' cross-daemon invalidation (store/versions.py); None in bare tests.
    versions: CacheVersions | None = None
    #: VM disk snapshots, save-as and hot-plug (vms.md §5.8-§5.10); None only in bare tests.
    disk_ops: VmDiskOps | None = None

    async def datastores_ids(self) -> list[int]:
        return await self.db.run(
            lambda: [r[0] for r in DatastoreRow.select(DatastoreRow.oid)
                     .order_by(DatastoreRow.oid).tuples()])


@dataclass
class Daemon:
    reactor: Any
    config: DaemonConfig
    port_file: str | None = None
    app: App | None = None
    _listening: Any = None
    _monitor: task.LoopingCall | None = None
    _flush: task.LoopingCall | None = None
    _expire: task.LoopingCall | None = None
    _heartbeat: task.LoopingCall | None = None
    _publish: task.LoopingCall | None = None
    _registered: float = 0.0
    observer: Any = None
    bootstrap_note: str = ""
    #: held while the daemon runs: db restore / fsck --repair refuse a database in use.
    db_lock: DatabaseLock | None = None
    ready: defer.Deferred = field(default_factory=defer.Deferred)
    systemd: Notifier | None = None
    #: a worker's listening socket, inherited from the parent (oned_images/workers.py).
    listen_socket: socket.socket | None = None
    #: a worker's cache counters shared with its siblings (store/versions.py).
    shared_counters: SharedCounters | None = None

    def open_database_settings(self) -> DbSettings:
        cfg = self.config
        settings = cfg.db
        if settings.backend == "sqlite" and not settings.path:
            settings = DbSettings(**{**settings.__dict__, "path": cfg.db_path})
        return settings

    def open_database(self) -> Database:
        return Database(self.reactor, self.open_database_settings())

    def bind(self) -> None:
        """Listen before anything is created, so a port in use stops start-up before a
        database is bootstrapped.  Reading stays paused (clients wait in the backlog)
        until start() attaches the site after reconciliation."""
        cfg = self.config
        try:
            self._listening = (
                workers.adopt(self.reactor, self.listen_socket, _NotReadyYet())
                if self.listen_socket is not None else
                self.reactor.listenTCP(cfg.port, _NotReadyYet(), interface=cfg.listen_address))
        except CannotListenError as exc:
            why = getattr(exc.socketError, "strerror", None) or str(exc.socketError)
            raise StartupError(f"cannot listen on {cfg.listen_address}:{cfg.port}: "
                               f"{why}") from None
        self._listening.stopReading()

    def _serve_on(self, site: Any) -> int:
        port = self._listening
        placeholder, port.factory = port.factory, site
        site.doStart()
        placeholder.doStop()
        port.startReading()
        return port.getHost().port

    def prepare(self) -> App:
        """Everything before the reactor serves: port, driver tree, DB, bootstrap, caches."""
        cfg = self.config
        if self._listening is None:
            self.bind()
        drivers = DriverRunner(self.reactor, cfg.driver, cfg)
        if cfg.worker:
            drivers.progress.board = progress.Board(self.reactor, cfg.run_location,
                                                    deferToThread)
        check_drivers(cfg.driver, drivers.environment()["PATH"])
        for state in (cfg.var_location, Path(cfg.var_location) / "run", cfg.run_location,
                      reaper.run_dir(cfg.run_location), cfg.datastore_location):
            private_dir(state)
        auth_dir = Path(cfg.var_location) / ".one"
        if auth_dir.exists():
            private_dir(auth_dir)
        if cfg.db.backend == "postgresql" and ensure_database(cfg.db):
            log.info("Created PostgreSQL database {name}", name=cfg.db.db_name)
        db = self.open_database()
        if not db.is_postgres:
            private_sqlite_files(db.settings.path)
        self.db_lock = DatabaseLock(db.settings)
        try:
            self.db_lock.acquire("oned-images serve", shared=True)
        except OSError as exc:  # the SQLite file's directory is missing or not ours
            raise StartupError(f"cannot open the database: {exc.filename}: "
                               f"{exc.strerror}") from None
        made = db.run_sync(_create_or_check, db, cfg)
        if made is not None:
            path, generated, server_secret = made
            private_dir(auth_dir)
            for fname in ("sunstone_auth", "onegate_auth", "oneflow_auth"):
                target = auth_dir / fname
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(f"serveradmin:{server_secret}\n")
            how = "generated into" if generated else "taken from"
            self.bootstrap_note = f"new database bootstrapped; oneadmin credentials {how} {path}"
            log.info("Bootstrapped a new database: oneadmin credentials {how} {path}",
                     how=how, path=str(path))
        me = daemons.Me(cfg.daemon_name or daemons.default_name(
            self._listening.getHost().port), socket.gethostname(), os.getpid(),
            os.path.abspath(cfg.run_location), float(cfg.daemon_lease))
        daemons.set_current(me)
        self._registered, live, strangers = db.run_sync(daemons.register, me)
        logs.set_daemon_name(me.name)
        identity = Identity(db, cfg)
        versions = CacheVersions(db, enabled=True, shared=self.shared_counters)
        versions.register("identity", ["user_pool", "group_pool", "acl"], identity.reload)
        versions.peers(live, strangers)
        versions.setup_sync()  # the counters first: a write after them reloads again
        identity.load_sync()
        datastores = Datastores(db, cfg, identity)
        images = ImageManager(db, cfg, identity, datastores, drivers, self.reactor)
        datastores.on_created = images.monitor_soon
        images.peers = versions.peers
        self.app = App(cfg, db, identity, datastores, images, drivers)
        self.app.versions = versions
        self.app.clusters = Clusters(db, identity)
        tm_timeouts = {a: cfg.tm.timeout for a in TM_ACTIONS} if cfg.tm.timeout else None
        self.app.tms = TransferManager(drivers, cfg, allowed=cfg.tm.allowed,
                                       timeouts=tm_timeouts)
        self.app.hosts = Hosts(db, identity, self.reactor)
        self.app.templates = Templates(db, cfg, identity, images)
        self.app.vms = Vms(db, cfg, identity, self.reactor, self.app.templates)
        self.app.vms.tms = self.app.tms
        self.app.scheduler = Scheduler(db, self.app.vms, self.reactor)
        self.app.vms.on_pending = self.app.scheduler.pending
        self.app.disk_ops = VmDiskOps(self.app)
        images.on_unlocked = self.app.vms.disks_unlocked
        if cfg.metrics != "off":  # off: no instruments either, not only no endpoint
            self.app.metrics = instrument(self.app)
        return self.app

    async def start(self) -> None:
        cfg = self.config
        app = self.app or self.prepare()
        app.db.start()
        self.systemd = Notifier(self.reactor)
        self.systemd.starting("Reconciling interrupted driver actions, monitoring datastores")
        log.info("oned-images starting: config {conf} ({why}), database {db}, datastores {ds}, "
                 "drivers {drv}", conf=cfg.source_file, why=cfg.source_why or "given",
                 db=(app.db.settings.path if cfg.db.backend == "sqlite"
                     else f"postgresql://{cfg.db.user}@{cfg.db.server}:{cfg.db.port}/"
                          f"{cfg.db.db_name}"),
                 ds=cfg.datastore_location, drv=cfg.driver.remotes)
        await app.images.check_markers()
        await app.images.reconcile()
        if cfg.uploads:
            app.uploads = UploadManager(app)
            await app.uploads.reconcile()
        # Capacity checks read FREE_MB: know it before the first allocate arrives.
        await app.images.monitor_all()
        await app.hosts.start_monitoring()
        await vm_takeover.take_over(app)  # only VMs whose owner is gone (or this run's)
        app.scheduler.start()

        async def heartbeat() -> None:
            await app.images.heartbeat()
            await vm_takeover.tick(app)

        self._heartbeat = task.LoopingCall(
            lambda: defer.ensureDeferred(heartbeat()).addErrback(
                lambda f: log.failure("lease renewal failed", f)))
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(cfg.daemon_lease / 3, now=False)
        await self._seen_by_the_others(app)
        site = RpcSite(app, cfg.message_size, limits=cfg.http_limits)
        site.metrics = MetricsResource(app, cfg.metrics)
        if app.uploads is not None:
            site.uploads, site.progress = UploadResource(app), ProgressResource(app)
        if cfg.web_page:
            site.web = WebResource(WEB_ROOT)
        port = self._serve_on(site.guarded())
        app.port = port
        if self.port_file:
            tmp = self.port_file + ".tmp"
            Path(tmp).write_text(str(port))
            os.replace(tmp, self.port_file)
        log.info("Listening on http://{addr}:{port}/RPC2", addr=cfg.listen_address, port=port)
        self._monitor = task.LoopingCall(app.images.monitor_all)
        self._monitor.clock = self.reactor
        self._monitor.start(cfg.monitoring_interval_datastore, now=False).addErrback(
            lambda f: log.failure("datastore monitor stopped", f))
        if app.uploads is not None:
            self._expire = task.LoopingCall(
                lambda: defer.ensureDeferred(app.uploads.expire()))
            self._expire.clock = self.reactor
            self._expire.start(min(60, cfg.upload_expiration), now=False).addErrback(
                lambda f: log.failure("upload expiry stopped", f))
        if app.metrics is not None and app.metrics.shared:
            self._publish = task.LoopingCall(app.metrics.publish)
            self._publish.clock = self.reactor
            self._publish.start(PUBLISH_SECONDS, now=True).addErrback(
                lambda f: log.failure("publishing metrics stopped", f))
        if self.observer is not None:
            self._flush = task.LoopingCall(self.observer.flush)
            self._flush.clock = self.reactor
            self._flush.start(1.0, now=False)
        self.ready.callback(port)
        self.systemd.ready(f"Listening on http://{cfg.listen_address}:{port}/RPC2")

    async def _seen_by_the_others(self, app: App) -> None:
        """Serve only once every other live daemon knows this one exists: from then on
        they check their caches before each call (store/versions.py)."""
        me = daemons.current()
        if me is None or app.versions is None or app.versions.alone:
            return
        log.info("Waiting for the other daemons on this database to renew their leases")
        while not await app.db.read(daemons.others_saw, me, self._registered):
            await task.deferLater(self.reactor, 0.1, lambda: None)

    async def stop(self) -> None:
        if self.systemd is not None:
            self.systemd.stopping()
        if self._listening is not None:
            await self._listening.stopListening()
        for loop in (self._monitor, self._flush, self._expire, self._heartbeat, self._publish):
            if loop is not None and loop.running:
                loop.stop()
        if self.app is not None:
            if self.app.hosts is not None:
                self.app.hosts.stop_monitoring()
            if self.app.scheduler is not None:
                self.app.scheduler.stop()
                self.app.vms.stop()
            await self.app.drivers.stop()
            me = daemons.current()
            if me is not None:
                try:  # the others take this daemon's (cancelled) work at once
                    await self.app.db.run(daemons.leave, me.name)
                except Exception:  # noqa: BLE001 - a lost database: the lease ends it
                    log.failure("could not leave the daemons table")
            self.app.db.stop()
        if self.db_lock is not None:
            self.db_lock.release()
        if self.observer is not None:
            self.observer.flush()


def instrument(app: App) -> Metrics:
    """The daemon's private metrics registry, hooked to the DB, the runner and the
    in-memory state that gauges read at scrape time."""
    metrics = Metrics()
    app.db.observe = metrics.db_done
    app.drivers.observe = metrics.driver_done

    def state() -> dict[str, float]:
        queued, running = app.drivers.load()
        return {"driver_queued_actions": queued, "driver_running_actions": running,
                "cached_sessions": len(app.identity._sessions),
                "cache_reloads": app.versions.reloads if app.versions else 0,
                "cache_checks": app.versions.checks if app.versions else 0}

    metrics.read_state(state)
    me = daemons.current()
    if me is not None:
        metrics.name_daemon(me.name, me.host)
    return metrics
