"""A listing's rows read straight from the database driver, each backend its fast way.

A whole-pool listing reads every row of a pool table: at 10,000 images about 40 MB of
SQLite pages (a row holds its body and its served copy) for 18 MB of served text.
SQLite reads them one ``pread`` of a page at a time into its page cache, which is far
too small to keep them: half of the listing's time.  Through a memory map the pages
are read where the kernel's page cache already holds them.  The map is made for the
read and dropped after it (``mmap_size`` is 0 otherwise), so the daemon's resident
memory does not keep the 40 MB of mapped pages once the listing is read.

On PostgreSQL psycopg2 decodes text into str, which the reply then encodes back into
the same bytes: here text columns come as the bytes the server sent, when the
connection's encoding is UTF-8 (any other client encoding keeps the decode).

Called inside Database.run transactions (one thread per connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import peewee

from oned_images.store.models import database_proxy

#: SQLite caps a larger value at its compile-time maximum (SQLITE_MAX_MMAP_SIZE).
_MAP_SIZE = 1 << 40


def fetch_rows(sql: str, params: Sequence[Any], mapped: bool = True) -> list[tuple]:
    """Every row of ``sql`` as the driver returns them (text as bytes, see above);
    ``mapped``: read SQLite's pages through the map (a listing of many rows)."""
    db = database_proxy.obj
    if isinstance(db, peewee.SqliteDatabase):
        if not mapped:
            return db.execute_sql(sql, params).fetchall()
        db.execute_sql(f"PRAGMA mmap_size={_MAP_SIZE}")
        try:
            return db.execute_sql(sql, params).fetchall()
        finally:
            db.execute_sql("PRAGMA mmap_size=0")
    if isinstance(db, peewee.PostgresqlDatabase):
        from psycopg2 import extensions

        with peewee.__exception_wrapper__:
            cursor = db.cursor()
            if cursor.connection.encoding == "UTF8":
                extensions.register_type(extensions.BYTES, cursor)
            cursor.execute(sql, params)
            return cursor.fetchall()
    return db.execute_sql(sql, params).fetchall()
