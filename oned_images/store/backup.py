"""``oned-images db backup`` and ``db restore``: consistent online backups.

One format for both backends: **a backup is an SQLite database file** in the
daemon's own table layout (the file a SQLite install would have).  Why not
pg_dump for PostgreSQL: its client must be at least the server's major version,
its custom format can only go back into PostgreSQL through pg_restore, and the
schema version of a dump cannot be checked before restoring it.  An SQLite file
is read with the Python standard library, can be inspected with ``sqlite3``,
restores into either backend (so it also moves an install between SQLite and
PostgreSQL), and its schema version is one query away.

* SQLite source: SQLite's online backup API in one step, i.e. one read
  transaction: a consistent snapshot while the daemon keeps writing (WAL mode
  lets it write during the copy).
* PostgreSQL source: every table is read in one ``REPEATABLE READ READ ONLY``
  transaction (one snapshot of the whole database; the daemon's writes go on),
  into tables created from the models; the served bodies (``body_rpc``) are
  stored as SQLite stores them (BLOBs).
* Restore checks the file (``quick_check``, schema version: a newer one is
  refused, an older one is restored as is and ``db upgrade`` is named), refuses
  a database in use by a daemon (see :mod:`oned_images.store.lock`) and an
  existing database without ``force``, and is atomic: SQLite gets a temporary
  file renamed over the database, PostgreSQL one transaction that drops and
  recreates the tables.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

import peewee

from oned_images.model.settings import DbSettings
from oned_images.store import schema
from oned_images.store.database import open_database
from oned_images.store.lock import DatabaseLock
from oned_images.store.models import ALL_MODELS, BaseModel, ServedText, database_proxy
from oned_images.xmldoc.served import escape

BATCH = 500


class BackupError(Exception):
    """A refusal or failure of backup/restore, worded for the operator."""


@dataclass(frozen=True)
class BackupInfo:
    path: str
    version: int | None
    tables: dict[str, int]  # table -> rows

    def summary(self) -> str:
        rows = ", ".join(f"{t} {n}" for t, n in sorted(self.tables.items()))
        return f"schema version {self.version}; rows: {rows}"


def default_backup_path(var_location: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(var_location, "backups", f"oned-images-{stamp}.db")


def _tmp_beside(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def _fsync_file_and_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _publish(tmp: str, path: str) -> None:
    """fsync the finished temporary file, then rename it into place."""
    _fsync_file_and_dir(tmp)
    os.replace(tmp, path)
    _fsync_file_and_dir(path)


@contextlib.contextmanager
def _models_on(db: peewee.Database) -> Iterator[None]:
    """Point the models (and pools' backend checks) at ``db`` for a while."""
    previous = database_proxy.obj
    database_proxy.initialize(db)
    try:
        yield
    finally:
        database_proxy.initialize(previous)


# ------------------------------------------------------------------ inspecting a file
def check_file(path: str) -> BackupInfo:
    """Check that ``path`` is a sound backup and read its schema version and row counts."""
    if not os.path.isfile(path):
        raise BackupError(f"{path}: no such backup file")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: cannot open: {exc}") from None
    try:
        check = con.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"{path}: the file is damaged ({check})")
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        if "schema_version" not in tables:
            raise BackupError(f"{path}: not an oned-images database (no schema_version table)")
        version = con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        counts = {t: con.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path}: not an SQLite database ({exc})") from None
    finally:
        con.close()
    return BackupInfo(path, int(version) if version is not None else 0, counts)


# ------------------------------------------------------------------ backup
def backup(settings: DbSettings, out: str, force: bool = False) -> BackupInfo:
    """Write a consistent copy of the database to ``out`` (atomically)."""
    if os.path.exists(out) and not force:
        raise BackupError(f"{out} exists; give another FILE or --force to overwrite it")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = _tmp_beside(out)
    try:
        if settings.backend == "sqlite":
            _backup_sqlite(settings.path, tmp)
        else:
            _backup_postgresql(settings, tmp)
        info = check_file(tmp)
        os.chmod(tmp, 0o600)  # it holds password hashes and the serveradmin secret
        _publish(tmp, out)
    finally:
        for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return BackupInfo(out, info.version, info.tables)


def _backup_sqlite(db_path: str, tmp: str) -> None:
    if not os.path.isfile(db_path):
        raise BackupError(f"{db_path}: no such database")
    src = sqlite3.connect(db_path, timeout=30)
    dst = sqlite3.connect(tmp)
    try:
        # pages=-1: the whole database in one step, under one read transaction: a
        # consistent snapshot (the daemon, in WAL mode, keeps writing meanwhile).
        src.backup(dst, pages=-1)
        # A backup is a single self-contained file: no WAL beside it.
        dst.execute("PRAGMA journal_mode = DELETE")
    finally:
        dst.close()
        src.close()


def _backup_postgresql(settings: DbSettings, tmp: str) -> None:
    src = open_database(settings)
    dst = peewee.SqliteDatabase(tmp)
    try:
        src.connect()
        with src.atomic():
            # First statement of the transaction: one snapshot for every table.
            src.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            present = set(src.get_tables())
            models = [m for m in ALL_MODELS if m._meta.table_name in present]
            unknown = present - {m._meta.table_name for m in ALL_MODELS}
            if unknown:
                raise BackupError("the database has tables this release does not know "
                                  f"({', '.join(sorted(unknown))}); back it up with the release "
                                  "that created them")
            with dst.bind_ctx(models):
                dst.create_tables(models)
            with dst.atomic():
                for model in models:
                    _copy_table(src, dst, model)
    finally:
        if not src.is_closed():
            src.close()
        dst.close()


# ------------------------------------------------------------------ copying rows
def _copy_table(src: peewee.Database, dst: peewee.Database, model: type[BaseModel]) -> int:
    """Copy one table's rows by column name; served bodies take the target's form
    (bytes on SQLite, text on PostgreSQL, as pools.insert writes them) and missing ones
    are made from the body (schema 2's migration would otherwise write bytes into the
    text column that the current layout has on PostgreSQL)."""
    table = model._meta.table_name
    have = {c.name for c in src.get_columns(table)}
    fields = [f for f in model._meta.sorted_fields if f.column_name in have]
    served = [i for i, f in enumerate(fields) if isinstance(f, ServedText)]
    body = next((i for i, f in enumerate(fields) if f.name == "body"), None)
    to_bytes = isinstance(dst, peewee.SqliteDatabase)
    names = ", ".join(f'"{f.column_name}"' for f in fields)
    marks = ", ".join([dst.param] * len(fields))
    insert = f'INSERT INTO "{table}" ({names}) VALUES ({marks})'
    cursor = src.execute_sql(f'SELECT {names} FROM "{table}"')
    count = 0
    while True:
        rows = cursor.fetchmany(BATCH)
        if not rows:
            break
        if served:
            rows = [list(r) for r in rows]
            for r in rows:
                for i in served:
                    if r[i] is None and body is not None:
                        # a derived copy missing (rows of schema 1, hand edits): make it
                        r[i] = escape(r[body])
                    r[i] = _served_value(r[i], to_bytes)
        if isinstance(dst, peewee.PostgresqlDatabase):
            from psycopg2.extras import execute_values

            # one INSERT per batch: row-by-row executemany made a 10,000-image restore
            # several times slower
            execute_values(dst.cursor(), f'INSERT INTO "{table}" ({names}) VALUES %s', rows,
                           page_size=BATCH)
        else:
            dst.cursor().executemany(insert, rows)
        count += len(rows)
    return count


def _reset_sequence(db: peewee.Database, model: type[BaseModel]) -> None:
    """An auto-increment key continues after the copied rows (PostgreSQL sequences do
    not see explicit inserts)."""
    pk = model._meta.primary_key
    if not isinstance(pk, peewee.AutoField):
        return
    table, col = model._meta.table_name, pk.column_name
    db.execute_sql(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', '{col}'), "
                   f'COALESCE(MAX("{col}"), 1), MAX("{col}") IS NOT NULL) FROM "{table}"')


def _served_value(value, to_bytes: bool):
    if value is None:
        return None
    if to_bytes:
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return value if isinstance(value, str) else bytes(value).decode("utf-8")


# ------------------------------------------------------------------ restore
def restore(settings: DbSettings, path: str, force: bool = False) -> tuple[BackupInfo, str]:
    """Restore ``path`` into the configured database; returns (info, what to do next)."""
    info = check_file(path)
    if info.version is not None and info.version > schema.CURRENT:
        raise BackupError(f"{path} has schema version {info.version}, newer than this "
                          f"oned-images knows ({schema.CURRENT}); restore it with a newer "
                          "release")
    if settings.backend == "sqlite":
        os.makedirs(os.path.dirname(os.path.abspath(settings.path)), exist_ok=True)
    with DatabaseLock(settings) as lock:
        lock.acquire("oned-images db restore")
        if settings.backend == "sqlite":
            _restore_sqlite(settings.path, path, force)
        else:
            _restore_postgresql(settings, path, force)
    # The datastores' files are not in a backup: files of images made after it are
    # referenced by no restored image (the daemon's start moves them to lost+found).
    fsck = ("run oned-images db fsck before serve (it lists datastore files that no "
            "restored image references; --repair and serve move them to lost+found)")
    if info.version is not None and info.version < schema.CURRENT:
        nxt = (f"the restored database has schema version {info.version}: run "
               f"oned-images db upgrade, then {fsck[4:]}")
    else:
        nxt = fsck
    return info, nxt


def _sqlite_has_tables(path: str) -> bool:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return False
    con = sqlite3.connect(path, timeout=30)
    try:
        return con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'"
                           ).fetchone()[0] > 0
    finally:
        con.close()


def _restore_sqlite(db_path: str, backup_file: str, force: bool) -> None:
    if _sqlite_has_tables(db_path) and not force:
        raise BackupError(f"{db_path} holds a database; add --force to replace it")
    tmp = _tmp_beside(db_path)
    try:
        src = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = WAL")  # as the daemon runs it
        finally:
            dst.close()
            src.close()
        if os.path.exists(db_path):
            # Fold the old database's WAL into it and drop it: a WAL left beside the new
            # file would be replayed into it.
            old = sqlite3.connect(db_path, timeout=30)
            try:
                old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                old.close()
            for side in (db_path + "-wal", db_path + "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(side)
        _publish(tmp, db_path)
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _restore_postgresql(settings: DbSettings, backup_file: str, force: bool) -> None:
    dst = open_database(settings)
    src = peewee.SqliteDatabase(f"file:{backup_file}?mode=ro", uri=True)
    try:
        dst.connect()
        backup_tables = set(src.get_tables())
        with _models_on(dst), dst.atomic():
            # Only this release's tables are replaced; anything else in the database is
            # left alone.
            known = {m._meta.table_name for m in ALL_MODELS}
            existing = [t for t in dst.get_tables() if t in known]
            if existing and not force:
                raise BackupError(f"the database {settings.db_name} on {settings.server} "
                                  "holds tables; add --force to replace them")
            for table in existing:
                dst.execute_sql(f'DROP TABLE "{table}" CASCADE')
            # The current layout; an older backup's rows fit it (migrations only add), and
            # its schema_version rows make `db upgrade` run the migrations it lacks.
            dst.create_tables(ALL_MODELS)
            for model in ALL_MODELS:
                if model._meta.table_name in backup_tables:
                    _copy_table(src, dst, model)
                    _reset_sequence(dst, model)
    finally:
        src.close()
        if not dst.is_closed():
            dst.close()
