"""Row-level work on the pool tables; called inside Database.run transactions.

Ids come from ``pool_control`` and are never reused (oned's PoolSQL).  Every
write stores the whole document plus its filter columns, like oned's
``UPDATE … SET name, body, uid, gid, owner_u, group_u, other_u``.
"""

from __future__ import annotations

from dataclasses import dataclass

import peewee

from oned_images.model.objects import Permissions
from oned_images.store.compiled import Compiled
from oned_images.store.models import PoolControl, PoolObject, database_proxy
from oned_images.xmldoc.served import escape


@dataclass(frozen=True)
class RowMeta:
    name: str
    uid: int
    gid: int
    perms: Permissions


def for_update(query: peewee.Query) -> peewee.Query:
    """Row locks where the backend has them (PostgreSQL); SQLite has one writer anyway."""
    return query.for_update() if database_proxy.obj.for_update else query


def next_oid(table: str, floor: int = 0) -> int:
    """Reserve the next id of ``table`` (at least ``floor``), wrapping at INT_MAX as oned.

    A missing counter row is created with INSERT … ON CONFLICT DO NOTHING first, so
    two first inserts racing on PostgreSQL both end up locking the same row.
    """
    row = _COUNTER.first(table)
    if row is None:
        PoolControl.insert(tablename=table, last_oid=floor - 1).on_conflict_ignore().execute()
        row = _COUNTER.first(table)
    oid = max(int(row[0]) + 1, floor)
    if oid > 2**31 - 1:
        oid = floor
    _SET_COUNTER.execute(oid, table)
    return oid


_MARK_TABLE, _MARK_OID = "\x00table", -(2**62) + 7
_COUNTER = Compiled(lambda table: for_update(
    PoolControl.select(PoolControl.last_oid).where(PoolControl.tablename == table).limit(1)),
    _MARK_TABLE)
_SET_COUNTER = Compiled(lambda oid, table: PoolControl.update(last_oid=oid)
                        .where(PoolControl.tablename == table), _MARK_OID, _MARK_TABLE)


def _served(model: type[PoolObject], body: str, extra: dict) -> dict:
    if "body_rpc" in model._meta.fields:
        served = escape(body)
        # SQLite hands BLOBs back without a UTF-8 decode (listings skip a decode and an
        # encode per row); psycopg2 is the other way round: text is fast, bytea slow.
        is_sqlite = isinstance(database_proxy.obj, peewee.SqliteDatabase)
        extra["body_rpc"] = served.encode("utf-8") if is_sqlite else served
    return extra


def insert(model: type[PoolObject], oid: int, meta: RowMeta, body: str, **extra) -> None:
    extra = _served(model, body, extra)
    _write("insert", model, dict(
        oid=oid, name=meta.name, body=body, uid=meta.uid, gid=meta.gid,
        owner_u=meta.perms.owner_u, group_u=meta.perms.group_u, other_u=meta.perms.other_u,
        **extra))


def update(model: type[PoolObject], oid: int, meta: RowMeta, body: str, **extra) -> None:
    extra = _served(model, body, extra)
    _write("update", model, dict(
        name=meta.name, body=body, uid=meta.uid, gid=meta.gid,
        owner_u=meta.perms.owner_u, group_u=meta.perms.group_u, other_u=meta.perms.other_u,
        **extra), oid)


def _write(verb: str, model: type[PoolObject], columns: dict, oid: int | None = None) -> None:
    """model.insert(**columns) or model.update(**columns).where(oid), its SQL compiled
    once (store/compiled.py); values go through each field's db_value, as peewee does."""
    names = tuple(columns)
    key = (verb, model, names)
    if (query := _WRITES.get(key)) is None:
        fields = [model._meta.fields[n] for n in names]
        markers = [_marker(f, i) for i, f in enumerate(fields)]
        if verb == "update":
            markers.append(_marker(model.oid, len(markers)))

        def build(*values, model=model, names=names) -> peewee.Query:
            cols = dict(zip(names, values, strict=False))
            if verb == "insert":
                return model.insert(**cols)
            return model.update(**cols).where(model.oid == values[-1])
        query = _WRITES[key] = Compiled(build, *markers)
    values = [model._meta.fields[n].db_value(v) for n, v in columns.items()]
    if oid is not None:
        values.append(model.oid.db_value(oid))
    query.execute(*values)


def _marker(field: peewee.Field, i: int) -> int | str:
    """A value no row holds that the field's db_value leaves as it is."""
    if isinstance(field, peewee.IntegerField):
        return -(2**62) + 1000 + i
    return f"\x00marker{i}"


_WRITES: dict[tuple, Compiled] = {}


def body(model: type[PoolObject], oid: int, *, lock: bool = False) -> str | None:
    key = (model, lock)
    if (query := _BODY.get(key)) is None:
        def build(oid: int, model=model, lock=lock) -> peewee.Query:
            query = model.select(model.body).where(model.oid == oid).limit(1)
            return for_update(query) if lock else query
        query = _BODY[key] = Compiled(build, _MARK_OID)
    row = query.first(oid)
    return model.body.python_value(row[0]) if row else None


_BODY: dict[tuple[type[PoolObject], bool], Compiled] = {}


def delete(model: type[PoolObject], oid: int) -> None:
    model.delete().where(model.oid == oid).execute()


def oid_by_name(model: type[PoolObject], name: str, uid: int | None = None) -> int | None:
    key = (model, uid is not None)
    if (query := _BY_NAME.get(key)) is None:
        def build(name: str, uid: int | None = None, model=model) -> peewee.Query:
            query = model.select(model.oid).where(model.name == name)
            if uid is not None:
                query = query.where(model.uid == uid)
            return query.limit(1)
        markers = (_MARK_NAME, _MARK_OID) if uid is not None else (_MARK_NAME,)
        query = _BY_NAME[key] = Compiled(build, *markers)
    row = query.first(name) if uid is None else query.first(name, uid)
    return model.oid.python_value(row[0]) if row else None


_MARK_NAME = "\x00name"
_BY_NAME: dict[tuple[type[PoolObject], bool], Compiled] = {}


def bodies(model: type[PoolObject], where: peewee.Expression | None = None,
           order_desc: bool = False, offset: int = 0, limit: int | None = None) -> list[str]:
    query = model.select(model.body)
    if where is not None:
        query = query.where(where)
    query = query.order_by(model.oid.desc() if order_desc else model.oid.asc())
    if limit is not None:
        query = query.limit(limit).offset(max(offset, 0))
    return [r[0] for r in query.tuples()]
