"""Rebuild table state from emitted change envelopes and compare it with the source's SELECT.

This is what a user checks of a CDC pipeline: replaying every change by key, in source order,
gives exactly the rows the source table holds.  Values are compared through psycopg's own type
conversion (independent of changebeam's pgoutput parsing), normalised to one form per type.
"""
from __future__ import annotations

import datetime as dt
import decimal
import glob
import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from transforms.envelope import SNAPSHOT_COMPLETE, Kind, TableSchema

__all__ = ['apply_envelopes', 'normalise', 'read_jsonl_dir', 'source_rows', 'table_state']


def read_jsonl_dir(directory: str) -> list[dict[str, Any]]:
    """Every envelope in the committed ``*.jsonl`` files under ``directory`` (not temp files)."""
    docs = []
    for path in sorted(glob.glob(os.path.join(directory, '*', '*.jsonl'))):
        with open(path, encoding='utf-8') as handle:
            for number, line in enumerate(handle, 1):
                if not line.endswith('\n'):
                    raise AssertionError(f'{path}:{number}: partial line in a committed file')
                docs.append(json.loads(line))
    return docs


def _sort_key(doc: Mapping[str, Any]) -> tuple[int, int]:
    source = doc['source']
    return source.get('commit_lsn') or 0, source.get('lsn') or 0


def apply_envelopes(docs: Iterable[Mapping[str, Any]], keys: Mapping[str, tuple[str, ...]],
                    position: Callable[[Mapping[str, Any]], Any] = _sort_key
                    ) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Table name -> key -> row (JSON-form values), after applying ``docs`` in source order.

    ``keys`` gives each table's key columns; ``position`` orders the docs (default: PostgreSQL
    positions).  A duplicate (same position) applies idempotently.  A ``snapshot_complete``
    message removes the rows of its table last written before it: the snapshot did not bring
    them again, so they were deleted meanwhile (unless it ``skipped`` rows, as the sinks do).
    """
    state: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    written: dict[str, dict[tuple[Any, ...], Any]] = {}  # each row's position
    for doc in sorted(docs, key=position):
        source = doc['source']
        table = f'{source["schema"]}.{source["table"]}'
        rows = state.setdefault(table, {})
        at = written.setdefault(table, {})
        op = doc['op']
        if op == 't':
            rows.clear()
            at.clear()
            continue
        if op == 'm':
            message = doc.get('message') or {}
            if message.get('kind') == SNAPSHOT_COMPLETE and not message.get('skipped'):
                snapshot = position(doc)
                for key in [k for k, p in at.items() if p < snapshot]:
                    del rows[key], at[key]
            continue
        key_columns = keys[table]
        if op == 'd':
            old = tuple(doc['before'][k] for k in key_columns)
            rows.pop(old, None)
            at.pop(old, None)
            continue
        after = dict(doc['after'])
        if op == 'u' and doc.get('before') is not None:
            old_key = tuple(doc['before'][k] for k in key_columns)
            new_key = tuple(after[k] for k in key_columns)
            if old_key != new_key:
                previous = rows.pop(old_key, {})
                at.pop(old_key, None)
            else:
                previous = rows.get(new_key, {})
        else:
            previous = rows.get(tuple(after[k] for k in key_columns), {})
        for name in doc.get('unchanged', []):
            assert name in previous, f'{table}: unchanged column {name} of an unknown row'
            after[name] = previous[name]
        key = tuple(after[k] for k in key_columns)
        rows[key] = after
        at[key] = position(doc)
    return state


def normalise(kind: Kind, value: Any) -> Any:
    """One comparable form for a JSON-encoded envelope value or a psycopg-loaded value."""
    if value is None:
        return None
    if isinstance(value, list):
        return [normalise(kind, v) for v in value]
    if kind in (Kind.INT16, Kind.INT32, Kind.INT64):
        return int(value)  # a domain over an integer type loads as str in psycopg
    if kind in (Kind.FLOAT32, Kind.FLOAT64):
        number = float(value) if not isinstance(value, str) else \
            {'NaN': math.nan, 'Infinity': math.inf, '-Infinity': -math.inf}[value]
        return 'NaN' if math.isnan(number) else number
    if kind is Kind.DECIMAL:
        return decimal.Decimal(value).normalize() if str(value) != 'NaN' else 'NaN'
    if kind is Kind.JSON:
        return value  # both sides hold the document text: a 'null' document is not SQL NULL
    if kind is Kind.UUID:
        return str(uuid.UUID(str(value)))
    if kind is Kind.BYTES:
        import base64
        return bytes(value) if not isinstance(value, str) else base64.b64decode(value)
    if kind is Kind.TIMESTAMPTZ:
        if isinstance(value, str):
            if not value.endswith('Z'):
                return value  # a text form such as 'infinity', on both sides
            value = dt.datetime.fromisoformat(value[:-1] + '+00:00')
        return value.astimezone(dt.timezone.utc)
    parse = {Kind.TIMESTAMP: dt.datetime.fromisoformat, Kind.DATE: dt.date.fromisoformat,
             Kind.TIME: dt.time.fromisoformat}.get(kind)
    if parse is not None and isinstance(value, str):
        try:
            return parse(value)
        except ValueError:
            return value  # 'infinity', '0044-03-15 BC', '24:00:00': the text form
    return value


def source_rows(conn: Any, table: TableSchema) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The table's rows as psycopg loads them, keyed like :func:`apply_envelopes`, normalised.

    Interval, json and other text-form kinds are selected as ``::text`` so both sides use the
    database's text form; dates and timestamps psycopg cannot hold stay text too.
    """
    selected = []
    for column in table.columns:
        ident = '"' + column.name.replace('"', '""') + '"'
        # (not STRING: char(n)::text would trim the padding the column really holds)
        text_form = column.kind in (Kind.INTERVAL, Kind.TIMETZ, Kind.TEXT, Kind.ENUM, Kind.JSON)
        selected.append(f'{ident}::text' if text_form else ident)
    sql = (f'SELECT {", ".join(selected)} FROM "{table.schema}"."{table.table}"')
    rows = {}
    cursor = conn.cursor()
    _register_lenient_temporal_loaders(cursor)
    for values in cursor.execute(sql).fetchall():
        row = {c.name: normalise(c.element or c.kind if c.kind is Kind.ARRAY else c.kind, v)
               for c, v in zip(table.columns, values, strict=True)}
        rows[tuple(row[k] for k in table.key)] = row
    return rows


def table_state(rows: Mapping[tuple[Any, ...], Mapping[str, Any]], table: TableSchema
                ) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Replayed JSON-form rows, normalised the same way as :func:`source_rows`."""
    out = {}
    for row in rows.values():
        norm = {c.name: normalise(c.element or c.kind if c.kind is Kind.ARRAY else c.kind,
                                  row.get(c.name))
                for c in table.columns}
        out[tuple(norm[k] for k in table.key)] = norm
    return out


def _register_lenient_temporal_loaders(context: Any) -> None:
    """Dates and timestamps Python cannot hold load as their text form instead of failing."""
    from psycopg import DataError
    from psycopg.types import datetime as pgdt

    for name, base in (('date', pgdt.DateLoader), ('timestamp', pgdt.TimestampLoader),
                       ('timestamptz', pgdt.TimestamptzLoader), ('time', pgdt.TimeLoader)):
        def load(self: Any, data: Any, _base: Any = base) -> Any:
            try:
                return _base.load(self, data)
            except (DataError, ValueError):
                return bytes(data).decode()
        loader = type(f'Lenient{base.__name__}', (base,), {'load': load})
        context.adapters.register_loader(name, loader)
