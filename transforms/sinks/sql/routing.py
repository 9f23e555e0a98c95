"""Which target table a source table's changes go to.

    postgres_target(schema, route=None)     # TargetTable('public', 'items') for public.items
    mysql_target(schema, route={'public.items': 'shop_items'})   # TargetTable(None, 'shop_items')

By default (DESIGN.md) source ``schema.table`` goes to the same ``schema.table`` in a PostgreSQL
target and to ``table`` in the DSN's database in a MariaDB target.  A route overrides that: a
mapping from the source's ``schema.table`` to a target name, or a callable taking the
:class:`TableSchema` and returning one (``None`` keeps the default).  A target name is a
``(schema, table)`` tuple, or a string split at its first dot: ``'sales.items'``; a string
without a dot is a table in ``public`` (PostgreSQL) or in the DSN's database (MariaDB).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from transforms.envelope import TableSchema

__all__ = ['Route', 'TargetTable', 'check_route', 'mysql_target', 'postgres_target']

TargetName = str | tuple[str, str] | None
Route = Callable[[TableSchema], TargetName] | Mapping[str, TargetName] | None


@dataclasses.dataclass(frozen=True, order=True)
class TargetTable:
    """A target table; ``schema`` is None for a MariaDB table in the DSN's database."""

    schema: str | None
    table: str

    def __str__(self) -> str:
        return f'{self.schema}.{self.table}' if self.schema else self.table


def check_route(route: object) -> None:
    """ValueError unless ``route`` is None, a mapping or a callable."""
    if route is not None and not isinstance(route, Mapping) and not callable(route):
        raise ValueError(f'route {route!r} is neither a mapping nor a callable; pass a dict '
                         "{'schema.table': 'target_schema.target_table'} or a function")


def _routed(table: TableSchema, route: Route) -> TargetName:
    if route is None:
        return None
    if isinstance(route, Mapping):
        return route.get(table.name)
    return route(table)


def _split(name: TargetName, default_schema: str | None) -> TargetTable:
    if isinstance(name, tuple):
        schema, table = name
        return TargetTable(schema or default_schema, table)
    if not isinstance(name, str) or not name:
        raise ValueError(f'route gave {name!r}; expected "table", "schema.table" or a tuple')
    schema, dot, table = name.partition('.')
    return TargetTable(schema, table) if dot else TargetTable(default_schema, name)


def postgres_target(table: TableSchema, route: Route = None) -> TargetTable:
    """Where ``table``'s changes go in a PostgreSQL target."""
    name = _routed(table, route)
    if name is None:
        return TargetTable(table.schema or 'public', table.table)
    return _split(name, 'public')


def mysql_target(table: TableSchema, route: Route = None) -> TargetTable:
    """Where ``table``'s changes go in a MariaDB target (schema None: the DSN's database)."""
    name = _routed(table, route)
    if name is None:
        return TargetTable(None, table.table)
    return _split(name, None)
