"""Pool listings shared by every pool with owners (images, VM templates): the filter
flag's row filter and the page of served bodies, in one place."""

from __future__ import annotations

import peewee

from oned_images.domain.permissions import (
    Caller,
    ObjectAuth,
    Op,
    Permissions,
    acl_grants_all,
    acl_visible_terms,
)
from oned_images.store.compiled import Compiled
from oned_images.store.listing import fetch_rows
from oned_images.store.models import PoolObject
from oned_images.xmldoc.served import rpc_bytes


def pool_filter(caller: Caller, acl, flag: int, T: type[PoolObject],
            kind: str) -> peewee.Expression | None:
    """The row filter of one.<pool>.info's filter flag (api.md §3): -4 the caller's
    primary group, -3 the caller's, -2 all visible, -1 the caller's and the caller's
    groups', >= 0 one user's; visibility by the USE bits and ACL rules of ``kind``."""
    groups = sorted(caller.groups)
    unrestricted = caller.is_admin or acl_grants_all(caller, acl, kind, Op.USE)

    def visible(*extra: peewee.Expression) -> peewee.Expression:
        oids, gids = acl_visible_terms(caller, acl, kind, Op.USE)
        cond = (T.other_u == 1) | ((T.gid.in_(groups)) & (T.group_u == 1))
        for e in extra:
            cond = cond | e
        if oids:
            cond = cond | T.oid.in_(sorted(oids))
        if gids:
            cond = cond | T.gid.in_(sorted(gids))
        return cond

    if flag == -3:
        return T.uid == caller.uid
    if flag == -4:
        base = T.gid == caller.gid
        return base if unrestricted else base & visible(T.uid == caller.uid)
    if flag == -2:
        return None if unrestricted else (T.uid == caller.uid) | visible()
    if flag == -1:
        grp = T.gid.in_(groups)
        return (T.uid == caller.uid) | (grp if unrestricted else grp & visible())
    base = T.uid == flag
    if unrestricted or flag == caller.uid:
        return base
    return base & visible()


def served_body(body: str, served: str | bytes | None) -> bytes:
    """The stored escaped body (bytes on SQLite, text on PostgreSQL, see pools.insert);
    rows written by other tools may lack it (NULL)."""
    if served is None:
        return rpc_bytes(body)
    return served.encode("utf-8") if isinstance(served, str) else bytes(served)


def _info_fields(T: type[PoolObject]) -> tuple:
    return (T.body, T.body_rpc, T.uid, T.gid, T.owner_u, T.group_u, T.other_u)


#: per pool model: its info query, compiled once (store/compiled.py: peewee's query
#: building cost 30 times what SQLite takes to run it).
_INFO: dict[type[PoolObject], Compiled] = {}


def row_auth(kind: str, oid: int, row) -> ObjectAuth:
    """The object an info row describes, for its USE check: the row's owner, group and
    use rights are all oned's USE needs, so no document is parsed for it."""
    _body, uid, gid, owner_u, group_u, other_u = row
    return ObjectAuth(kind, oid, uid, gid,
                      Permissions([owner_u, 0, 0, group_u, 0, 0, other_u, 0, 0]))


def info_row(oid: int, T: type[PoolObject]):
    """(served body, uid, gid, owner_u, group_u, other_u) of one row, or None."""
    query = _INFO.get(T)
    if query is None:
        query = _INFO[T] = Compiled(lambda marker: T.select(*_info_fields(T))
                                    .where(T.oid == marker).limit(1), -(2**62) + 7)
    row = query.first(oid)
    if row is None:
        return None
    row = [f.python_value(v) for f, v in zip(_info_fields(T), row, strict=True)]
    return (served_body(row[0], row[1]), *row[2:])


#: a listing of more rows than this reads its pages through a memory map
#: (store/listing.py); a page of fewer finds them in SQLite's own cache, and mapping
#: the whole file for it cost more than the read (about 0.1 ms a page of 200).
MAPPED_ROWS = 1000

#: values no caller passes, where a compiled listing takes the call's (store/compiled.py)
_MARK_LOW, _MARK_HIGH = -(2**62) + 13, -(2**62) + 17


def _listing(T: type[PoolObject], served: peewee.Field, where, desc: bool, shape: str,
             *values: int) -> peewee.Query:
    """The listing query of one shape (see pool_rows): "all" rows, "from" an id,
    a "range" of ids, a "page" of ``limit`` rows, or a "deep" page past an offset.

    A deep page skips its rows on the id alone, in a subquery, and reads only the
    page's bodies: it does not walk the bodies it skips."""
    order = T.oid.desc() if desc else T.oid.asc()

    def filtered(query: peewee.Query) -> peewee.Query:
        return query if where is None else query.where(where)

    if shape == "deep":
        limit, offset = values
        ids = filtered(T.select(T.oid)).order_by(order).limit(limit).offset(offset)
        return T.select(T.oid, served).where(T.oid.in_(ids)).order_by(order)
    query = filtered(T.select(T.oid, served))
    if shape == "from":
        query = query.where(T.oid >= values[0])
    elif shape == "range":
        query = query.where((T.oid >= values[0]) & (T.oid <= values[1]))
    query = query.order_by(order)
    return query.limit(values[0]) if shape == "page" else query


#: the SQL of each shape's listing of every row (no filter: an admin's, or a pool the
#: caller may see whole), built once (store/compiled.py; peewee took about 60 us a page)
_COMPILED: dict[tuple, Compiled] = {}


def _listing_sql(T: type[PoolObject], served: peewee.Field, where, desc: bool, shape: str,
                 values: tuple[int, ...]) -> tuple[str, list]:
    if where is not None:  # the caller's own filter: its SQL is the caller's
        return _listing(T, served, where, desc, shape, *values).sql()
    key = (T, served.name, desc, shape)
    query = _COMPILED.get(key)
    if query is None:
        markers = (_MARK_LOW, _MARK_HIGH)[:len(values)]
        query = _COMPILED[key] = Compiled(
            lambda *m: _listing(T, served, None, desc, shape, *m), *markers)
    return query.sql(*values)


def pool_rows(where, desc: bool, start: int, end: int,
              T: type[PoolObject], column: peewee.Field | None = None) -> list[tuple[int, bytes]]:
    """One page of (id, served body) (``start``/``end`` as api.md §3: an id range, or
    ``end < -1`` a page of ``-end`` rows from offset ``start``); ``column`` names
    another served column than ``body_rpc`` (the VM pool's short and extended forms,
    never NULL)."""
    served = column if column is not None else T.body_rpc
    values: tuple[int, ...]
    if end < -1:
        shape, values = ("deep", (-end, start)) if start > 0 else ("page", (-end,))
    elif start == -1:
        shape, values = "all", ()
    elif end == -1:
        shape, values = "from", (start,)
    else:
        shape, values = "range", (start, end)
    sql, params = _listing_sql(T, served, where, desc, shape, values)
    rows = fetch_rows(sql, params, mapped=shape not in ("page", "deep")
                      or values[0] > MAPPED_ROWS)
    if all(type(r[1]) is bytes for r in rows):
        return rows
    if any(r[1] is None for r in rows):
        # Rare: rows without the escaped copy; fetch their bodies by id.
        bodies = dict(T.select(T.oid, T.body).where(T.oid.in_([r[0] for r in rows]))
                      .tuples())
        return [(r[0], served_body(bodies[r[0]], r[1])) for r in rows]
    # text (PostgreSQL in another client encoding, a row another tool wrote)
    return [(r[0], served_body("", r[1])) for r in rows]


def pool_bodies(where, desc: bool, start: int, end: int,
                T: type[PoolObject], column: peewee.Field | None = None) -> list[bytes]:
    """The served bodies of :func:`pool_rows`."""
    return [r[1] for r in pool_rows(where, desc, start, end, T, column)]
