"""The value rows older than a column read, for columns added by ``ALTER TABLE … ADD COLUMN``.

MariaDB and MySQL give every existing row a new column's DEFAULT (or, for a NOT NULL column
without one, its type's implicit default: 0, '', the first ENUM label) without writing a row
event, so the binlog never shows those rows with it.  ``information_schema.COLUMNS`` still
holds the DEFAULT; it becomes ``Column.default`` in the form the PostgreSQL source gives it,
the value's PostgreSQL text form (``'7'``, ``'2024-03-01'``, ``'\\x6162'``), which the sinks
give the rows a target already holds::

    column_defaults(conn, 'shop', 'orders', table_map.columns[3:], mariadb=True)
    # {'c': '7'}

A DEFAULT that is an expression (``current_timestamp()``, ``(1 + 1)``, an AUTO_INCREMENT or
generated column) gives each row its own value, or one the catalog does not tell: the column
gets no default and a warning says so.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from transforms.envelope import Kind
from transforms.sources.mysql import types as t
from transforms.sources.mysql.snapshot import row_converter

__all__ = ['column_defaults', 'default_text']

_LOG = logging.getLogger(__name__)

_QUERY = ('SELECT COLUMN_NAME, DATA_TYPE, COLUMN_DEFAULT, EXTRA FROM information_schema.COLUMNS '
          'WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s')

_NUMBER = re.compile(r'[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?')
_QUOTED = re.compile(r"'((?:[^'\\]|''|\\.)*)'", re.DOTALL)
_BITS = re.compile(r"b'([01]*)'", re.IGNORECASE)
_HEX = re.compile(r'0x([0-9a-fA-F]*)')
_ESCAPES = {'0': '\0', 'n': '\n', 'r': '\r', 't': '\t', 'b': '\b', 'Z': '\x1a'}
_UNESCAPE = re.compile(r"\\(.)|''", re.DOTALL)
# Values whose catalog text is not their binlog form (MariaDB's UUID, INET4, INET6 are
# stored binary), or that have no literal (GEOMETRY).
_NOT_LITERAL_TYPES = frozenset({'uuid', 'inet4', 'inet6', 'geometry', 'point', 'linestring',
                                'polygon', 'multipoint', 'multilinestring', 'multipolygon',
                                'geometrycollection'})
_OWN_VALUE = ('auto_increment', 'generated', 'persistent')  # EXTRA of per-row values
_TEMPORAL_KINDS = frozenset({Kind.DATE, Kind.TIME, Kind.TIMESTAMP, Kind.TIMESTAMPTZ})


def _unescape(body: str) -> str:
    # MariaDB prints a string DEFAULT as an SQL literal: '' for a quote, \\ \0 \n \r escaped.
    return _UNESCAPE.sub(lambda m: "'" if m.group(1) is None
                         else _ESCAPES.get(m.group(1), m.group(1)), body)


def _literal(info: t.ColumnInfo, text: str, mariadb: bool) -> Any:
    """The catalog's DEFAULT as the server's text of the value (bytes for binary columns and
    BIT), as a SELECT of the column would give it.  ValueError for an expression."""
    binary = info.collation == t.BINARY_COLLATION
    bits = _BITS.fullmatch(text)
    if bits:
        number = int(bits.group(1) or '0', 2)
        return number.to_bytes(max(1, (info.length + 7) // 8), 'big')
    if mariadb:
        quoted = _QUOTED.fullmatch(text)
        if quoted:
            value = _unescape(quoted.group(1))
        elif _NUMBER.fullmatch(text):
            value = text
        else:
            raise ValueError(f'its DEFAULT {text} is an expression, not a constant')
    elif binary and _HEX.fullmatch(text):  # MySQL prints a binary DEFAULT as hex
        return bytes.fromhex(text[2:])
    else:
        value = text  # MySQL: the value's text; EXTRA marks expressions (DEFAULT_GENERATED)
    if binary:
        if '?' in value:  # the catalog prints a byte that is no character as '?'
            raise ValueError(f'its DEFAULT {text} may hold bytes the catalog shows as "?"')
        return value.encode()
    return value


def _implicit(info: t.ColumnInfo) -> Any:
    """What a NOT NULL column added without DEFAULT gives existing rows: its type's zero."""
    if info.type == t.ENUM:
        return info.symbols[0] if info.symbols else ''
    if info.type == t.BIT:
        return bytes(max(1, (info.length + 7) // 8))
    if info.type in (t.DATE, t.NEWDATE, t.TIME, t.TIME2, t.DATETIME, t.DATETIME2,
                     t.TIMESTAMP, t.TIMESTAMP2):
        raise ValueError('it is NOT NULL without DEFAULT, so older rows hold the zero date or '
                         'time, which has no value in the targets')
    if info.collation == t.BINARY_COLLATION:
        return bytes(info.length) if info.type == t.STRING else b''
    if info.type == t.JSON:
        raise ValueError('it is a JSON column NOT NULL without DEFAULT')
    if info.collation is not None or info.type == t.SET:
        return ''
    return '0'


def _pg_text(value: Any) -> str:
    """``value`` (the binlog decoder's) in PostgreSQL's text form."""
    if isinstance(value, bool):
        return 't' if value else 'f'
    if isinstance(value, bytes):
        return '\\x' + value.hex()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Decimal):
        return format(value, 'f')
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=' ')
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (int, str)):
        return str(value)
    raise ValueError(f'its DEFAULT {value!r} has no text form here')


def default_text(info: t.ColumnInfo, data_type: str, default: str | None, extra: str,
                 mariadb: bool) -> str | None:
    """The PostgreSQL text form of the value rows older than the column read, from its
    ``information_schema.COLUMNS`` row (``DATA_TYPE``, ``COLUMN_DEFAULT``, ``EXTRA``); None for
    NULL.  Raises ValueError saying why the value cannot be known."""
    lowered = extra.lower()
    if 'default_generated' in lowered:  # MySQL's mark of an expression DEFAULT
        raise ValueError(f'its DEFAULT {default} is an expression, not a constant')
    if any(word in lowered for word in _OWN_VALUE):
        raise ValueError(f'each row has its own value ({extra})')
    if default is None or (mariadb and default == 'NULL'):
        if info.nullable:
            return None
        raw = _implicit(info)
    elif data_type.lower() in _NOT_LITERAL_TYPES:
        raise ValueError(f'its DEFAULT {default} is a {data_type} the binlog holds in '
                         'another form')
    else:
        raw = _literal(info, default, mariadb)
    column = t.to_column(info)
    try:
        value = row_converter((info,))((raw,))[info.name]
    except (ValueError, ArithmeticError, TypeError) as exc:
        raise ValueError(f'its DEFAULT {default} is not a value of its type: {exc}') from None
    if isinstance(value, str) and column.kind in _TEMPORAL_KINDS:
        raise ValueError(f'its DEFAULT {value!r}, a zero date or a time outside a day, has '
                         'no value in the targets')
    return _pg_text(value)


def column_defaults(conn: Any, db: str, table: str, columns: Sequence[t.ColumnInfo], *,
                    mariadb: bool) -> dict[str, str | None]:
    """``Column.default`` of each of ``columns`` (the binlog's description of them) of
    ``db.table``, from ``information_schema`` as it is now.

    A value that cannot be known is None, with a warning naming the table and column: rows
    older than the column are NULL in database targets.
    """
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")  # a TIMESTAMP DEFAULT, in UTC
        cur.execute(_QUERY, (db, table))
        rows = {str(r[0]): r for r in cur.fetchall()}
    out: dict[str, str | None] = {}
    for info in columns:
        row = rows.get(info.name)
        if row is None:
            reason: str | None = 'the column is no longer in the table'
        else:
            try:
                out[info.name] = default_text(info, str(row[1]), _text(row[2]),
                                              _text(row[3]) or '', mariadb)
                continue
            except ValueError as exc:
                reason = str(exc)
        out[info.name] = None
        _LOG.warning('%s.%s: column %r was added, and the value rows older than it read at the '
                     'source cannot be known (%s); those rows are NULL in database targets '
                     'until written again: backfill the table if they matter',
                     db, table, info.name, reason)
    return out


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
