"""Hot queries whose SQL is built once per database, then run with new values.

Building a query's SQL is most of what peewee costs on the hot paths: about 190 us
for a one-row select by id, which SQLite then runs in about 6 us.  A ``Compiled``
builds its peewee query once per database with marker values in place of the
variable ones, and afterwards hands the same SQL text to ``execute_sql`` with the
call's values where the markers were.  The SQL is exactly what peewee would send
(same text, same placeholders of the backend); constants peewee parameterises
(a LIMIT) keep their place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import peewee

from oned_images.store.models import database_proxy


class Compiled:
    """``build(*markers)`` is the query; ``markers`` are values no caller passes and
    that peewee sends unchanged as parameters (ints and plain strings)."""

    def __init__(self, build: Callable[..., peewee.Query], *markers: Any) -> None:
        self.build = build
        self.markers = markers
        #: per database object: (sql, [index of the value, or None], [constants]).
        self._cache: dict[int, tuple[peewee.Database, str, list[int | None], list[Any]]] = {}

    def _compile(self, db: peewee.Database) -> tuple[str, list[int | None], list[Any]]:
        entry = self._cache.get(id(db))
        if entry is not None and entry[0] is db:
            return entry[1:]
        sql, params = self.build(*self.markers).sql()
        slots: list[int | None] = []
        for p in params:
            hit = [i for i, m in enumerate(self.markers) if type(p) is type(m) and p == m]
            slots.append(hit[0] if hit else None)
        if sorted({s for s in slots if s is not None}) != list(range(len(self.markers))):
            raise RuntimeError(f"a marker is missing from the parameters of {sql!r}")
        self._cache[id(db)] = (db, sql, slots, list(params))
        return sql, slots, list(params)

    def sql(self, *values: Any) -> tuple[str, list[Any]]:
        """The SQL text and parameters of the query with ``values`` in the markers'
        places (for a caller that runs it its own way: store/listing.py)."""
        sql, slots, consts = self._compile(database_proxy.obj)
        return sql, [consts[i] if s is None else values[s] for i, s in enumerate(slots)]

    def execute(self, *values: Any) -> Any:
        """The cursor of the query run with ``values`` in the markers' places."""
        return database_proxy.obj.execute_sql(*self.sql(*values))

    def first(self, *values: Any) -> Sequence[Any] | None:
        return self.execute(*values).fetchone()
