"""peewee models: oned's table layout (OneDB.cc), and nothing else.

Each pool table keeps the object's complete XML document in ``body`` (served as
is by info calls) plus the denormalised columns that filters and the per-owner
name uniqueness need.
"""

from __future__ import annotations

import peewee

database_proxy = peewee.DatabaseProxy()


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class PoolControl(BaseModel):
    """Last id handed out per pool; ids are never reused."""

    tablename = peewee.CharField(max_length=32, primary_key=True)
    last_oid = peewee.BigIntegerField()

    class Meta:
        table_name = "pool_control"


class PoolObject(BaseModel):
    oid = peewee.IntegerField(primary_key=True)
    name = peewee.CharField(max_length=128)
    body = peewee.TextField()
    uid = peewee.IntegerField()
    gid = peewee.IntegerField()
    owner_u = peewee.IntegerField()
    group_u = peewee.IntegerField()
    other_u = peewee.IntegerField()


class ServedText(peewee.Field):
    """A TEXT column that stores values exactly as given (no str/bytes conversion).

    pools.insert writes bytes on SQLite, where a BLOB value reads back without a
    UTF-8 decode, and str on PostgreSQL, where psycopg2 reads text about twice as
    fast as bytea: each backend gets the fast path for listings.
    """

    field_type = "TEXT"


class ImageRow(PoolObject):
    #: not in oned's table: lets a datastore list its IMAGES without a body rewrite
    #: per allocate (which would make allocate cost grow with the pool).
    datastore_id = peewee.IntegerField(default=-1)
    #: the body escaped for an XML-RPC <string> (NULL: derive it from body).
    body_rpc = ServedText(null=True)

    class Meta:
        table_name = "image_pool"
        # ("oid",) duplicates the primary key on purpose: on SQLite it lets a deep
        # page (LIMIT 200 OFFSET 50000) skip rows on a covering index instead of
        # walking the table's leaf pages with their bodies.
        indexes = ((("name", "uid"), True), (("uid",), False), (("gid",), False),
                   (("datastore_id",), False), (("oid",), False))


class ImageVmRow(BaseModel):
    """Not in oned's tables: the ids of an image's <VMS>, one row per VM, spliced
    into the image document when it is served (store/image_vms.py), so an acquire
    does not rewrite a body that lists every VM."""

    image_oid = peewee.IntegerField()
    vm_oid = peewee.IntegerField()

    class Meta:
        table_name = "image_vms"
        primary_key = peewee.CompositeKey("image_oid", "vm_oid")


class DatastoreRow(PoolObject):
    cid = peewee.IntegerField(default=0)

    class Meta:
        table_name = "datastore_pool"


class UserRow(PoolObject):
    class Meta:
        table_name = "user_pool"
        indexes = ((("name",), True),)


class GroupRow(PoolObject):
    class Meta:
        table_name = "group_pool"
        indexes = ((("name",), True),)


class AclRow(BaseModel):
    oid = peewee.IntegerField(primary_key=True)
    userset = peewee.BigIntegerField()
    resource = peewee.BigIntegerField()
    rights = peewee.BigIntegerField()
    zone = peewee.BigIntegerField()

    class Meta:
        table_name = "acl"


class UserQuotasRow(BaseModel):
    """oned's user_quotas: the QUOTAS document of a user that was ever charged or limited."""

    oid = peewee.IntegerField(primary_key=True, column_name="user_oid")
    body = peewee.TextField()

    class Meta:
        table_name = "user_quotas"


class GroupQuotasRow(BaseModel):
    oid = peewee.IntegerField(primary_key=True, column_name="group_oid")
    body = peewee.TextField()

    class Meta:
        table_name = "group_quotas"


class SystemAttributeRow(BaseModel):
    """oned's system_attributes: DEFAULT_USER_QUOTAS and DEFAULT_GROUP_QUOTAS."""

    name = peewee.CharField(max_length=128, primary_key=True)
    body = peewee.TextField()

    class Meta:
        table_name = "system_attributes"


class ClusterRow(PoolObject):
    class Meta:
        table_name = "cluster_pool"
        indexes = ((("name",), True),)


class HostRow(PoolObject):
    """oned's host_pool: STATE and CID are columns too (the scheduler's filters)."""

    state = peewee.IntegerField(default=0)
    cid = peewee.IntegerField(default=0)

    class Meta:
        table_name = "host_pool"
        indexes = ((("name",), True),)


class TemplateRow(PoolObject):
    #: the body escaped for an XML-RPC <string>, as image_pool.body_rpc.
    body_rpc = ServedText(null=True)

    class Meta:
        table_name = "template_pool"
        indexes = ((("name", "uid"), True), (("uid",), False), (("gid",), False))


class VmRow(PoolObject):
    """oned's vm_pool: STATE and LCM_STATE are columns (pool state filter, scheduler).
    ``body`` is the full document (every HISTORY record); ``ext_rpc`` the extended
    form (current record only, one.vmpool.infoextended) and ``short_rpc`` the short
    form (one.vmpool.info), both escaped for XML-RPC as image_pool.body_rpc is (not
    called body_rpc: they are not the body's escaped copy)."""

    state = peewee.IntegerField(default=0)
    lcm_state = peewee.IntegerField(default=0)
    ext_rpc = ServedText(null=True)
    short_rpc = ServedText(null=True)

    class Meta:
        table_name = "vm_pool"
        indexes = ((("uid",), False), (("gid",), False), (("state",), False),
                   (("oid",), False))
class DaemonRow(BaseModel):
    """A daemon serving this database (several can): its lease and where it runs.

    ``lease_until`` (Unix time) is renewed every third of DAEMON_LEASE; a row whose lease
    has passed belongs to a dead daemon, whose work another daemon takes over."""

    name = peewee.CharField(max_length=128, primary_key=True)
    host = peewee.CharField(max_length=255)
    pid = peewee.IntegerField()
    var_location = peewee.TextField()
    started = peewee.BigIntegerField()
    lease_until = peewee.DoubleField()
    #: when the lease was last renewed: a joining daemon waits until every other one
    #: has renewed after it registered (and so knows it is no longer alone).
    renewed = peewee.DoubleField(default=0)

    class Meta:
        table_name = "daemons"


class DriverClaimRow(BaseModel):
    """A driver action in progress and the daemon that runs it.  Written in the very
    transaction that makes the action due (the image turns LOCKED, DELETE, ...), so no
    daemon ever sees due work without its owner; removed with the reply."""

    kind = peewee.CharField(max_length=16)
    oid = peewee.IntegerField()
    action = peewee.CharField(max_length=32)
    owner = peewee.CharField(max_length=128)
    since = peewee.DoubleField()

    class Meta:
        table_name = "driver_claims"
        primary_key = peewee.CompositeKey("kind", "oid")
        indexes = ((("owner",), False),)


class CacheVersionRow(BaseModel):
    """One counter per cached set of tables, bumped by a trigger on every write to them
    (store/versions.py), so a daemon knows its cache is stale before it serves a call."""

    name = peewee.CharField(max_length=64, primary_key=True)
    version = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "cache_versions"


class DatastoreMarkerRow(BaseModel):
    """The token each datastore's marker file holds: a daemon that does not find it in
    BASE_PATH does not see the shared storage and runs no driver work there."""

    oid = peewee.IntegerField(primary_key=True, column_name="datastore_oid")
    token = peewee.CharField(max_length=64)

    class Meta:
        table_name = "datastore_markers"


class SchemaVersion(BaseModel):
    version = peewee.IntegerField(primary_key=True)
    applied = peewee.BigIntegerField()

    class Meta:
        table_name = "schema_version"


ALL_MODELS: list[type[BaseModel]] = [
    PoolControl,
    ImageRow,
    DatastoreRow,
    UserRow,
    GroupRow,
    AclRow,
    SchemaVersion,
    UserQuotasRow,
    GroupQuotasRow,
    SystemAttributeRow,
    ClusterRow,
    HostRow,
    TemplateRow,
    VmRow,
    DaemonRow,
    DriverClaimRow,
    CacheVersionRow,
    DatastoreMarkerRow,
    ImageVmRow,
]

#: tables of the running daemons' state, not of objects (HA: schema 7).
HA_MODELS: list[type[BaseModel]] = [DaemonRow, DriverClaimRow, CacheVersionRow,
                                    DatastoreMarkerRow]
