"""Command line: ``oned-images serve`` and ``oned-images db status|upgrade``."""

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
    db = sub.add_parser("db", help="database schema: status or upgrade")
    db.add_argument("action", choices=("status", "upgrade"),
                    help="status: the schema version (exit 1 when there is no database yet); "
                         "upgrade: apply the migrations this release needs (back up first)")
    db.add_argument("--config", default=None, help=CONFIG_HELP)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"oned-images: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.command == "db":
        raise SystemExit(_db(args.action, config))
    _serve(config, args.port_file)


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
            current = database.run_sync(schema.version, database.db)
            print(f"schema version: {current if current is not None else 'empty'}; "
                  f"this release: {schema.CURRENT}")
            return 0
        applied = database.run_sync(schema.upgrade, database.db)
        print(f"applied migrations: {applied or 'none'}")
        return 0
    except schema.SchemaError as exc:
        print(f"oned-images: {exc}", file=sys.stderr)
        return 1
    except _db_errors() as exc:
        print(f"oned-images: {_one_line(exc)}", file=sys.stderr)
        return 1


def _db_errors() -> tuple[type[Exception], ...]:
    """What a database that cannot be reached raises: peewee's wrappers, and psycopg2's own
    from the connections made before peewee (existence check, CREATE DATABASE)."""
    import peewee
    import psycopg2

    return (peewee.OperationalError, peewee.InterfaceError, psycopg2.OperationalError)


def _one_line(exc: BaseException) -> str:
    """A driver error (psycopg2, sqlite3) as one line: database errors are multi-line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "cannot open the database: " + ("; ".join(lines) or type(exc).__name__)


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


def _serve(config, port_file: str | None) -> None:
    from pathlib import Path

    _limit_malloc_arenas()

    from twisted.internet import reactor

    from oned_images.logs import start_logging
    from oned_images.service import Daemon, StartupError
    from oned_images.store.database import DatabaseMissing
    from oned_images.store.schema import SchemaError

    Path(config.var_location).mkdir(parents=True, exist_ok=True)
    observer = start_logging(config.log_system, config.log_file, config.log_debug_level)
    daemon = Daemon(reactor, config, port_file=port_file)
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
        print(f"oned-images: {_one_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    where = config.log_file if config.log_system == "file" else "standard error"
    print(f"oned-images: config {config.source_file} ({config.source_why}), "
          f"database {config.db.backend} "
          f"({daemon.app.db.settings.path or config.db.server}), datastores in "
          f"{config.datastore_location}, log in {where}", file=sys.stderr)
    if daemon.bootstrap_note:
        print(f"oned-images: {daemon.bootstrap_note}", file=sys.stderr)

    from twisted.internet import defer

    def started(port: int) -> None:
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
