"""Command line: ``oned-images serve`` and ``oned-images db status|upgrade|backup|restore|fsck``."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

from oned_images import ONE_VERSION, __version__
from oned_images.config import SYSTEM_CONFIG_FILE, ConfigError, load

CONFIG_HELP = ("configuration file (default: the first that exists of "
               f"$ONE_LOCATION/etc/oned-images.conf, {SYSTEM_CONFIG_FILE} and the copy "
               "shipped with oned-images)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oned-images",
        description=(
            "An OpenNebula 7.0-compatible image service. It answers OpenNebula's XML-RPC API "
            "(one.image.*, one.imagepool.info, users, groups, datastores, system) on "
            "http://LISTEN_ADDRESS:PORT/RPC2, so pyone and the oneimage/onedatastore CLI can "
            "use it (ONE_XMLRPC=http://127.0.0.1:2633/RPC2, ONE_AUTH=~/.one/one_auth)."),
    )
    parser.add_argument("--version", action="version",
                        version=f"oned-images {__version__} (OpenNebula {ONE_VERSION} API)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon in the foreground",
                           description="Run the daemon in the foreground until SIGTERM/SIGINT. "
                           "On first start it creates the database and the default users, "
                           "groups and datastores; the oneadmin password comes from $ONE_AUTH "
                           "or ~/.one/one_auth (oneadmin:password), or is generated there.")
    serve.add_argument("--config", default=None, help=CONFIG_HELP)
    serve.add_argument("--port-file", default=None,
                       help="write the bound TCP port to this file once listening "
                            "(useful with PORT = 0)")
    serve.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # workers.py
    _db_parser(sub)
    return parser


def _db_parser(sub) -> None:
    """``db status|upgrade|backup|restore|fsck`` (onedb's counterparts)."""
    db = sub.add_parser(
        "db", help="database tools: status, upgrade, backup, restore, fsck",
        description="Database tools, like OpenNebula's onedb. They read the DB section of "
        "the configuration file (SQLite file or PostgreSQL database). backup runs while "
        "the daemon serves; restore and fsck --repair refuse a database that a running "
        "oned-images holds (and a daemon cannot start while they run).")
    config_help = CONFIG_HELP
    db.add_argument("--config", default=None, help=config_help)
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=description)
        p.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
        return p

    action("status", "show the database's schema version",
           "Print the stored schema version and the version this release needs.")
    action("upgrade", "migrate the database to this release's schema",
           "Apply the numbered migrations from the stored schema version to this "
           "release's. Back the database up first (db backup).")
    backup = action(
        "backup", "write a consistent backup while the daemon may run",
        "Write a consistent copy of the whole database to FILE. The backup is an SQLite "
        "database file in the daemon's table layout, whatever the backend: SQLite is copied "
        "with SQLite's online backup API, PostgreSQL read in one REPEATABLE READ, READ ONLY "
        "transaction, so the daemon keeps serving and writing meanwhile. The file is "
        "written to a temporary name and renamed when complete. A backup restores into "
        "either backend.")
    backup.add_argument("file", nargs="?", metavar="FILE",
                        help="where to write (default: VAR_LOCATION/backups/"
                             "oned-images-YYYYMMDD-HHMMSS.db)")
    backup.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    restore = action(
        "restore", "replace the database with a backup (daemon stopped)",
        "Restore FILE (written by db backup) into the configured database. The file is "
        "checked first (SQLite quick_check, schema version: a newer version is refused; an "
        "older one is restored as is and db upgrade must run before serve). Refused while "
        "an oned-images daemon holds the database, and when the database already holds "
        "data unless --force. Atomic: SQLite gets a temporary file renamed over the "
        "database, PostgreSQL one transaction that drops and recreates the tables. Files in "
        "the datastores are not part of a backup: run db fsck after a restore.")
    restore.add_argument("file", metavar="FILE", help="the backup file")
    restore.add_argument("--force", action="store_true",
                         help="replace a database that already holds data")
    fsck = action(
        "fsck", "check (and --repair) the database and the datastore files",
        "Check what a crash or a hand edit can leave: stored bodies that are not "
        "well-formed or disagree with their row's columns or served copy, owners (users, "
        "groups) and datastores that do not exist, group membership, RUNNING_VMS against "
        "the VMS list, datastore IMAGES lists, id counters below the largest id, fs "
        "datastore images whose file is missing, files in an fs datastore that no image "
        "references, LOCKED images with no daemon running (a note: the next start re-runs "
        "their action). One line per finding. Exit status: 0 clean, 1 problems found "
        "(with --repair: found, and each line says what was done), 2 not checked (no "
        "database, another schema version, --repair refused).")
    fsck.add_argument(
        "--repair", action="store_true",
        help="fix what was found, in one transaction, with the daemon stopped (refused "
             "while one runs): derived columns and copies are rewritten from the body, "
             "missing owners become oneadmin, images whose file is missing go to ERROR with "
             "an ERROR text, unreferenced files are moved (never deleted) to "
             "DATASTORE_LOCATION/lost+found/<datastore id>/; a body that is not well-formed "
             "is only reported (restore that row from a backup)")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"oned-images: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.command == "db":
        if args.action in ("backup", "restore", "fsck"):
            raise SystemExit(_db_tool(args, config))
        raise SystemExit(_db(args.action, config))
    if config.workers > 1 and not args.worker:
        from oned_images.workers import supervise

        raise SystemExit(supervise(config, args.port_file))
    _serve(config, args.port_file, args.worker)


def _db(action: str, config) -> int:
    from twisted.internet import reactor

    from oned_images.service import Daemon
    from oned_images.store import schema
    from oned_images.store.database import database_exists

    daemon = Daemon(reactor, config)
    settings = daemon.open_database_settings()
    try:
        if not database_exists(settings):
            where = (settings.path if settings.backend == "sqlite" else
                     f'PostgreSQL database "{settings.db_name}" on '
                     f"{settings.server}:{settings.port}")
            print(f"oned-images: no database yet ({where}): the first `oned-images serve` "
                  "creates it", file=sys.stderr)
            return 1
        database = daemon.open_database()
        if action == "status":
            current = database.read_sync(schema.version, database.db)
            print(f"schema version: {current if current is not None else 'empty'}; "
                  f"this release: {schema.CURRENT}")
            if current == schema.CURRENT:
                from oned_images.store import daemons

                for name, host, pid, left, work in database.read_sync(daemons.status):
                    print(f"daemon {name}: pid {pid} on {host}, lease {left:.0f} s left, "
                          f"{len(work)} driver actions" + (": " + ", ".join(work) if work
                                                           else ""))
            return 0
        applied = database.run_sync(schema.upgrade, database.db)
        print(f"applied migrations: {applied or 'none'}")
        return 0
    except schema.SchemaError as exc:
        print(f"oned-images: {exc}", file=sys.stderr)
        return 1
    except _db_errors() as exc:
        print(f"oned-images: {_cannot_open(exc)}", file=sys.stderr)
        return 1


def _db_errors() -> tuple[type[Exception], ...]:
    """What a database that cannot be reached raises: peewee's wrappers, and psycopg2's own
    from the connections made before peewee (existence check, CREATE DATABASE)."""
    import peewee
    import psycopg2

    return (peewee.OperationalError, peewee.InterfaceError, psycopg2.OperationalError)


def _cannot_open(exc: BaseException) -> str:
    """A driver error (psycopg2, sqlite3) as one line: database errors are multi-line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "cannot open the database: " + ("; ".join(lines) or type(exc).__name__)


def _db_tool(args, config) -> int:
    """db backup / restore / fsck: the logic is in store.backup and store.fsck."""
    import sqlite3

    import peewee
    from twisted.internet import reactor

    from oned_images.service import Daemon
    from oned_images.store import backup, fsck
    from oned_images.store.lock import DatabaseInUse

    database = Daemon(reactor, config).open_database()
    settings = database.settings
    if args.action == "fsck" and settings.backend == "sqlite" and \
            not os.path.isfile(settings.path):
        print(f"oned-images: fsck: no database at {settings.path}", file=sys.stderr)
        return 2
    try:
        if args.action == "backup":
            out = args.file or backup.default_backup_path(config.var_location)
            info = backup.backup(settings, out, force=args.force)
            print(f"backup written to {info.path} ({info.summary()})")
            return 0
        if args.action == "restore":
            info, nxt = backup.restore(settings, args.file, force=args.force)
            print(f"restored {info.path} ({info.summary()}); {nxt}")
            return 0
        lines, problem, code = fsck.run(database, config.var_location, args.repair)
        for line in lines:
            print(line)
        if problem:
            print(f"oned-images: {problem}", file=sys.stderr)
        return code
    except DatabaseInUse as exc:
        what = "fsck --repair" if args.action == "fsck" else args.action
        print(f"oned-images: refusing to {what}: {exc}; stop it first", file=sys.stderr)
        return 2 if args.action == "fsck" else 1  # fsck: 1 means "found problems"
    except backup.BackupError as exc:
        print(f"oned-images: {args.action}: {exc}", file=sys.stderr)
        return 1
    except (peewee.DatabaseError, sqlite3.Error, OSError) as exc:
        print(f"oned-images: {args.action}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        # psycopg2's connection errors (the lock's own connection) are not peewee's
        if type(exc).__module__.startswith("psycopg2"):
            print(f"oned-images: {args.action}: {_one_line(exc)}", file=sys.stderr)
            return 1
        raise
    finally:
        database.stop()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _limit_malloc_arenas() -> None:
    """glibc gives every thread that allocates its own malloc arena; with a pool of DB
    threads moving 10 MB listings that doubles resident memory (170 vs 88 MB at
    10,000 images on PostgreSQL).  Two arenas cost nothing measurable in speed."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _serve(config, port_file: str | None, worker: int = 0) -> None:
    from pathlib import Path

    _limit_malloc_arenas()

    from twisted.internet import reactor

    from oned_images.logs import start_logging
    from oned_images.service import Daemon, StartupError
    from oned_images.store.database import DatabaseMissing
    from oned_images.store.schema import SchemaError

    Path(config.var_location).mkdir(parents=True, exist_ok=True)
    observer = start_logging(config.log_system, config.log_file, config.log_debug_level)
    from oned_images.memory import keep_large_buffers_off_the_heap

    keep_large_buffers_off_the_heap()
    listen_socket = None
    if worker:  # one of WORKERS (oned_images/workers.py): the parent's socket, a name
        from oned_images import workers

        listen_socket = workers.inherited_socket()
        config = workers.worker_config(config, worker, listen_socket.getsockname()[1])
    daemon = Daemon(reactor, config, port_file=port_file, listen_socket=listen_socket)
    if worker:
        daemon.shared_counters = workers.inherited_counters(worker)
    daemon.observer = observer
    # logrotate: SIGHUP reopens oned.log (on the reactor, not inside a write).
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(observer.reopen))
    try:
        daemon.prepare()
    except (SchemaError, StartupError, DatabaseMissing) as exc:
        print(f"oned-images: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except ConfigError as exc:
        print(f"oned-images: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except _db_errors() as exc:
        print(f"oned-images: {_cannot_open(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    where = config.log_file if config.log_system == "file" else "standard error"
    if worker <= 1:  # of several workers, the first says it for all
        print(f"oned-images: config {config.source_file} ({config.source_why}), "
              f"database {config.db.backend} "
              f"({daemon.app.db.settings.path or config.db.server}), datastores in "
              f"{config.datastore_location}, log in {where}", file=sys.stderr)
    if daemon.bootstrap_note:
        print(f"oned-images: {daemon.bootstrap_note}", file=sys.stderr)

    from twisted.internet import defer

    def started(port: int) -> None:
        if not worker:  # the parent says it once all workers listen
            print(f"oned-images: listening on http://{config.listen_address}:{port}/RPC2",
                  file=sys.stderr, flush=True)

    def failed(failure) -> None:
        print(f"oned-images: cannot start: {failure.getErrorMessage()}", file=sys.stderr)
        observer.flush()
        reactor.stop()
        global _exit_code
        _exit_code = 1

    daemon.ready.addCallback(started)
    reactor.callWhenRunning(lambda: defer.ensureDeferred(daemon.start()).addErrback(failed))
    reactor.addSystemEventTrigger("before", "shutdown",
                                  lambda: defer.ensureDeferred(daemon.stop()))
    reactor.run()
    raise SystemExit(_exit_code)


_exit_code = 0
