"""Pool listings read in the database thread (store/listing.py, domain/pool_query.py,
store/image_vms.py), on a database in the daemon's schema on the backend of
ONED_TEST_DB: the rows as the driver gives them, the SQLite map dropped after the read,
PostgreSQL text as its UTF-8 bytes, <VMS> spliced into the bodies of images VMs use
and into no other."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from oned_images.domain.pool_query import pool_bodies, pool_rows
from oned_images.model.objects import Image, Permissions
from oned_images.model.settings import DbSettings
from oned_images.store import image_vms, pools, schema
from oned_images.store.database import Database
from oned_images.store.listing import fetch_rows
from oned_images.store.models import ImageRow
from oned_images.xmldoc.image import image_xml
from oned_images.xmldoc.served import rpc_bytes
from tests.support.daemon import _pg_admin, backend

IMAGES = 620  # more than a page's IN query takes (image_vms._IN_SIZES): the range query
ALICE, BOB = 5, 6
EMPTY = b"&lt;VMS&gt;&lt;/VMS&gt;"


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    url = backend()
    pg_name = None
    if url == "sqlite":
        settings = DbSettings(backend="sqlite",
                              path=str(tmp_path_factory.mktemp("listing") / "one.db"))
    else:
        u = urlparse(url)
        pg_name = "oned_listing_" + uuid.uuid4().hex[:12]
        _pg_admin(url, f'CREATE DATABASE "{pg_name}"')
        settings = DbSettings(backend="postgresql", server=u.hostname or "localhost",
                              port=u.port or 5432, user=u.username or "postgres",
                              passwd=u.password or "", db_name=pg_name)
    db = Database(None, settings)
    db.run_sync(schema.create, db.db)

    def fill() -> None:
        for oid in range(IMAGES):
            uid = ALICE if oid % 3 else BOB
            img = Image(oid, uid, 1, "u", "users", f"img-{oid}-é")
            pools.insert(ImageRow, oid, pools.RowMeta(img.name, uid, 1, Permissions()),
                         image_xml(img))
        # VMs use images 4 and 7 (Alice's), 9 (Bob's) and 600 (Alice's)
        for image, vms in ((4, [12, 3]), (7, [5]), (9, [1, 2]), (600, [8])):
            image_vms.store(image, vms)

    db.run_sync(fill)
    yield db
    db.db.close()
    if pg_name:
        _pg_admin(url, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def served(oid: int, vms: list[int] | None = None) -> bytes:
    """The document image ``oid`` is served as (its <VMS> listing ``vms``)."""
    uid = ALICE if oid % 3 else BOB
    doc = rpc_bytes(image_xml(Image(oid, uid, 1, "u", "users", f"img-{oid}-é")))
    assert doc.count(EMPTY) == 1
    inner = b"".join(b"&lt;ID&gt;%d&lt;/ID&gt;" % v for v in vms or [])
    return doc.replace(EMPTY, b"&lt;VMS&gt;" + inner + b"&lt;/VMS&gt;")


USED = {4: [3, 12], 7: [5], 9: [1, 2], 600: [8]}


def listing(database, where, desc: bool, start: int, end: int) -> list[bytes]:
    from oned_images.domain.images import _image_pool_bodies

    return database.run_sync(_image_pool_bodies, where, desc, start, end)


@pytest.mark.parametrize("where, desc, start, end, oids", [
    (None, True, -1, -1, list(range(IMAGES - 1, -1, -1))),          # whole pool: range
    (None, False, 0, -3, [0, 1, 2]),                                # a page: IN
    (None, False, 3, -5, [3, 4, 5, 6, 7]),                          # IN, padded
    (ImageRow.uid == ALICE, False, 0, 10, [1, 2, 4, 5, 7, 8, 10]),  # 9 is Bob's
    (ImageRow.uid == BOB, True, -1, -1, list(range(618, -1, -3))),  # IN, 600 is not his
    (ImageRow.oid != 9, True, -1, -1, [o for o in range(IMAGES - 1, -1, -1) if o != 9]),
    (ImageRow.uid == ALICE, False, 300, -200, [o for o in range(IMAGES) if o % 3][300:]),
], ids=["whole", "page", "page-padded", "alice-range", "bob-whole", "range-without-9",
        "alice-deep-page"])
def test_vms_are_spliced_into_the_bodies_of_images_vms_use_only(database, where, desc,
                                                                 start, end, oids):
    bodies = listing(database, where, desc, start, end)
    assert bodies == [served(o, USED.get(o)) for o in oids]


def test_a_body_without_vms_is_served_as_stored(database):
    """Bodies of images no VM uses are the stored bytes themselves (not rebuilt)."""
    rows = database.run_sync(pool_rows, None, False, 0, -20, ImageRow)
    bodies = image_vms.splice_rows(rows)
    assert [b is r[1] for b, r in zip(bodies, rows, strict=True)] == [
        o not in USED for o in range(20)]


def test_rows_are_the_driver_s_with_text_as_utf8_bytes(database):
    rows = database.run_sync(fetch_rows, "SELECT oid, name, body_rpc FROM image_pool "
                             "WHERE oid < 3 ORDER BY oid", ())
    assert rows == [(o, f"img-{o}-é".encode() if database.is_postgres else f"img-{o}-é",
                     served(o)) for o in range(3)]


@pytest.mark.skipif(backend() == "sqlite", reason="PostgreSQL client encodings")
def test_another_client_encoding_still_lists_utf8(database):
    """psycopg2 decodes text in the connection's encoding: then the bodies are str,
    encoded to UTF-8 as before."""
    conn = database.db.connection()
    conn.set_client_encoding("LATIN1")
    try:
        assert database.run_sync(pool_bodies, None, False, 0, -3, ImageRow) == [
            served(o) for o in range(3)]
    finally:
        conn.set_client_encoding("UTF8")


@pytest.mark.skipif(backend() != "sqlite", reason="SQLite's memory map")
def test_the_sqlite_map_is_made_for_the_read_and_dropped_after_it(database):
    """A listing reads the file through a map (half the time of a pread per page), but
    the daemon's resident memory must not keep it: the file is mapped while the rows
    are read, not after, and mmap_size is back to 0."""
    path = database.settings.path
    with sqlite3.connect(path) as side:  # the rows into the file itself, out of the WAL
        side.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def mapped() -> bool:
        return any(line.rstrip().endswith(path)
                   for line in Path("/proc/self/maps").read_text().splitlines())

    def read() -> list[tuple]:
        database.db.connection().create_function("mapped", 0, mapped)
        return fetch_rows("SELECT count(body_rpc), mapped() FROM image_pool", ())

    assert not mapped()
    assert database.run_sync(read) == [(IMAGES, 1)]
    assert not mapped()
    assert database.run_sync(lambda: database.db.execute_sql("PRAGMA mmap_size")
                             .fetchone()[0]) == 0
