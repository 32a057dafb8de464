"""Schema versions and numbered migrations.

An empty database is created at the current version (so the README's first
command just works).  A database at another version stops start-up: an older
one names ``oned-images db upgrade``, a newer one names the release it needs,
the same contract as oned's "Database version mismatch" and ``onedb upgrade``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import peewee

from oned_images.store.models import ALL_MODELS, SchemaVersion


def _v1_initial(db: peewee.Database) -> None:
    db.create_tables(ALL_MODELS)


def _v2_served_bodies(db: peewee.Database) -> None:
    """image_pool.body_rpc (each body stored escaped for XML-RPC, so listings are copies)
    and an index on oid alone (deep pages skip rows on the index)."""
    from playhouse.migrate import SchemaMigrator, migrate

    from oned_images.xmldoc.served import rpc_bytes

    columns = {c.name for c in db.get_columns("image_pool")}
    if "body_rpc" not in columns:
        migrator = SchemaMigrator.from_database(db)
        migrate(migrator.add_column("image_pool", "body_rpc", peewee.BlobField(null=True)))
    db.execute_sql('CREATE INDEX IF NOT EXISTS "image_pool_oid" ON "image_pool" ("oid")')
    cursor = db.execute_sql("SELECT oid, body FROM image_pool WHERE body_rpc IS NULL")
    rows = cursor.fetchall()
    param = db.param
    for oid, body in rows:
        db.execute_sql(f"UPDATE image_pool SET body_rpc = {param} WHERE oid = {param}",
                       (rpc_bytes(body), oid))


def _v3_served_bodies_as_text(db: peewee.Database) -> None:
    """image_pool.body_rpc becomes text on PostgreSQL: a 10,000-image listing spent
    most of its time decoding bytea.  SQLite keeps BLOB values in the column (they
    read back without a decode), so there is nothing to change there."""
    if isinstance(db, peewee.PostgresqlDatabase):
        kind = db.execute_sql(
            "SELECT data_type FROM information_schema.columns WHERE table_name = "
            "'image_pool' AND column_name = 'body_rpc'").fetchone()
        if kind and kind[0] == "bytea":
            db.execute_sql('ALTER TABLE "image_pool" ALTER COLUMN "body_rpc" TYPE text '
                           "USING convert_from(\"body_rpc\", 'UTF8')")


def _v4_datastore_quotas(db: peewee.Database) -> None:
    """user_quotas, group_quotas and system_attributes (oned's tables) for datastore
    quotas; the usage of the images that already exist is counted in, as onedb fsck
    would, so the counters are right from the first start."""
    from oned_images.domain import quotas
    from oned_images.store.models import GroupQuotasRow, SystemAttributeRow, UserQuotasRow
    from oned_images.xmldoc.image import image_from

    db.create_tables([UserQuotasRow, GroupQuotasRow, SystemAttributeRow])
    usage: dict[tuple[int, int, int], list[int]] = {}
    cursor = db.execute_sql("SELECT body FROM image_pool ORDER BY oid")
    for (body,) in cursor.fetchall():
        img = image_from(body)
        total = usage.setdefault((img.uid, img.gid, img.datastore_id), [0, 0])
        total[0] += img.size
        total[1] += 1
    for (uid, gid, ds_id), (size, images) in usage.items():
        quotas.count(uid, gid, ds_id, size, images)


def _v5_hosts_templates(db: peewee.Database) -> None:
    """cluster_pool (with cluster 0 ``default``), host_pool and template_pool: the
    tables oned keeps for clusters, hosts and VM templates."""
    from oned_images.model.objects import Permissions
    from oned_images.store import pools
    from oned_images.store.models import ClusterRow, HostRow, TemplateRow
    from oned_images.xmldoc.cluster import cluster_xml, default_cluster

    db.create_tables([ClusterRow, HostRow, TemplateRow])
    if not ClusterRow.select().where(ClusterRow.oid == 0).exists():
        cluster = default_cluster()
        meta = pools.RowMeta(cluster.name, 0, 0, Permissions([1, 1, 0, 0, 0, 0, 0, 0, 0]))
        pools.insert(ClusterRow, 0, meta, cluster_xml(cluster))
        pools.next_oid("cluster_pool", 100 - 1)


def _v6_vms(db: peewee.Database) -> None:
    """vm_pool: virtual machines (vms.md §5)."""
    from oned_images.store.models import VmRow

    db.create_tables([VmRow])


def _v7_several_daemons(db: peewee.Database) -> None:
    """daemons, driver_claims, cache_versions and datastore_markers: what several
    daemons on one PostgreSQL database share (leases, owned driver work, cache
    invalidation, the shared-storage check).  Images a previous single daemon left
    LOCKED have no claim: the next start reconciles them as before."""
    from oned_images.store.models import HA_MODELS

    db.create_tables(HA_MODELS)


def _v8_image_vms(db: peewee.Database) -> None:
    """image_vms: the VM ids of each image's <VMS> move out of its body into rows
    (store/image_vms.py); each body keeps an empty <VMS></VMS> and gets its served
    copy again."""
    from oned_images.store import image_vms
    from oned_images.store.models import ImageVmRow
    from oned_images.xmldoc.image import image_from, image_xml, strip_vms
    from oned_images.xmldoc.served import escape

    db.create_tables([ImageVmRow])
    is_sqlite = isinstance(db, peewee.SqliteDatabase)
    param = db.param
    rows = db.execute_sql("SELECT oid, body FROM image_pool ORDER BY oid").fetchall()
    for oid, body in rows:
        new, vms = strip_vms(body)
        if vms is None:  # a body of another shape: parsed whole
            img = image_from(body)
            vms = list(img.vms)
            img.vms = type(img.vms)()
            new = image_xml(img)
        if not vms and new == body:
            continue
        image_vms.store(oid, vms)
        served = escape(new)
        db.execute_sql(f"UPDATE image_pool SET body = {param}, body_rpc = {param} "
                       f"WHERE oid = {param}",
                       (new, served.encode("utf-8") if is_sqlite else served, oid))


def _v9_vm_quotas(db: peewee.Database) -> None:
    """VM_QUOTA and IMAGE_QUOTA (domain/vm_quotas.py): what the VMs of a v8 database
    hold (every VM but the DONE ones) is counted into their owners' and groups' quotas,
    as onedb fsck would, so their DONE later releases what was charged."""
    from oned_images.domain import quotas, vm_quotas
    from oned_images.xmldoc.vm import vm_from

    rows = db.execute_sql("SELECT body FROM vm_pool WHERE state <> 6 ORDER BY oid").fetchall()
    for (body,) in rows:
        vm = vm_from(body)
        quotas.vm_moved(((vm.uid, vm.gid), {}, [], {}), vm_quotas.held(vm))


#: version -> migration taking the schema from version-1 to version.
MIGRATIONS: dict[int, Callable[[peewee.Database], None]] = {
    1: _v1_initial,
    2: _v2_served_bodies,
    3: _v3_served_bodies_as_text,
    4: _v4_datastore_quotas,
    5: _v5_hosts_templates,
    6: _v6_vms,
    7: _v7_several_daemons,
    8: _v8_image_vms,
    9: _v9_vm_quotas,
}
CURRENT = max(MIGRATIONS)


class SchemaError(Exception):
    pass


def version(db: peewee.Database) -> int | None:
    """The stored schema version; None for an empty database."""
    if not db.table_exists(SchemaVersion._meta.table_name):
        if db.get_tables():
            return 0
        return None
    row = SchemaVersion.select(peewee.fn.MAX(SchemaVersion.version)).scalar()
    return int(row) if row is not None else 0


def create(db: peewee.Database) -> None:
    """A fresh database at the current version."""
    for v in sorted(MIGRATIONS):
        MIGRATIONS[v](db)
        SchemaVersion.create(version=v, applied=int(time.time()))


def check(db: peewee.Database) -> bool:
    """True when the database was empty and has just been created."""
    current = version(db)
    if current is None:
        create(db)
        return True
    if current < CURRENT:
        raise SchemaError(
            f"Database schema version {current} is older than this oned-images needs "
            f"({CURRENT}). Back up the database, then run: oned-images db upgrade")
    if current > CURRENT:
        raise SchemaError(
            f"Database schema version {current} is newer than this oned-images knows "
            f"({CURRENT}). Run a newer oned-images release.")
    return False


def upgrade(db: peewee.Database) -> list[int]:
    current = version(db)
    if current is None:
        create(db)
        return sorted(MIGRATIONS)
    if current > CURRENT:
        raise SchemaError(f"Database schema version {current} is newer than {CURRENT}")
    applied = []
    for v in sorted(v for v in MIGRATIONS if v > current):
        MIGRATIONS[v](db)
        SchemaVersion.create(version=v, applied=int(time.time()))
        applied.append(v)
    return applied
