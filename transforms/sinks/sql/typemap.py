"""Column types for tables a SQL sink creates: envelope :class:`Column` → target DDL type.

    postgres_type(Column('price', Kind.DECIMAL, precision=10, scale=2))   # 'numeric(10,2)'
    mysql_type(Column('tags', Kind.ARRAY, element=Kind.STRING))           # 'JSON'

A column keeps its source type verbatim when source and target are the same database
(``Column.source_type`` from a ``postgresql`` source into PostgreSQL, from a ``mysql``/``mariadb``
source into MariaDB), provided the type text is a plain type name (no statement separators or
comments; MariaDB ``enum``/``set`` are rebuilt from ``Column.symbols``).  Otherwise the column's
:class:`Kind` decides:

==============  =============================  ==============================================
Kind            PostgreSQL                     MariaDB
==============  =============================  ==============================================
BOOLEAN         boolean                        BOOLEAN (tinyint(1))
INT16           smallint (integer if the       SMALLINT
                source type is unsigned)
INT32           integer (bigint if unsigned)   INT
INT64           bigint (numeric(20,0) if       BIGINT
                unsigned)
FLOAT32         real                           FLOAT
FLOAT64         double precision               DOUBLE
DECIMAL         numeric(p,s), or numeric       DECIMAL(p,s) with p ≤ 65, s ≤ 30; without a
                without a precision            precision DECIMAL(65,30)
STRING          varchar(n) if the source       VARCHAR(n) for n ≤ 255 (or a key column,
                gives a length, else text      VARCHAR(n or 255)), else LONGTEXT
TEXT            text                           LONGTEXT (key column: VARCHAR(255))
BYTES           bytea                          LONGBLOB (key column: VARBINARY(255))
DATE            date                           DATE
TIME            time (interval from MySQL or   TIME(6)
                MariaDB, whose TIME is a
                duration: -838:59:59 to
                838:59:59)
TIMETZ          timetz                         VARCHAR(32), the text form
TIMESTAMP       timestamp                      DATETIME(6)
TIMESTAMPTZ     timestamptz                    DATETIME(6), in UTC
INTERVAL        interval                       VARCHAR(64), the text form
JSON            jsonb                          JSON (LONGTEXT checked by JSON_VALID)
UUID            uuid                           UUID
ENUM            text                           ENUM(symbols…), VARCHAR(255) without symbols
ARRAY           <element type>[]               JSON (the array as a JSON array)
==============  =============================  ==============================================

What MariaDB cannot hold is rejected by the server (strict mode) or by the sink's value
conversion, and the row goes to the dead-letter output: NaN and ±Infinity (float and decimal),
temporal text forms such as ``infinity`` or dates after 9999-12-31, decimals beyond 65 digits or
with more digits after the point than the column keeps (30 for ``numeric`` without a
precision: :func:`mysql_scale`).
"""
from __future__ import annotations

import re

from transforms.envelope import Column, Kind

__all__ = ['SAME_DATABASE', 'mysql_scale', 'mysql_type', 'postgres_type']

SAME_DATABASE = {'postgresql': 'postgresql', 'mysql': 'mysql', 'mariadb': 'mysql'}
"""Source connector name → the target dialect whose types it can reuse verbatim."""

_PG_KIND = {
    Kind.BOOLEAN: 'boolean',
    Kind.INT16: 'smallint',
    Kind.INT32: 'integer',
    Kind.INT64: 'bigint',
    Kind.FLOAT32: 'real',
    Kind.FLOAT64: 'double precision',
    Kind.DECIMAL: 'numeric',
    Kind.STRING: 'text',
    Kind.TEXT: 'text',
    Kind.BYTES: 'bytea',
    Kind.DATE: 'date',
    Kind.TIME: 'time',
    Kind.TIMETZ: 'timetz',
    Kind.TIMESTAMP: 'timestamp',
    Kind.TIMESTAMPTZ: 'timestamptz',
    Kind.INTERVAL: 'interval',
    Kind.JSON: 'jsonb',
    Kind.UUID: 'uuid',
    Kind.ENUM: 'text',
}
# A source's unsigned integer needs the next wider signed type to hold its whole range.
_PG_UNSIGNED = {Kind.INT16: 'integer', Kind.INT32: 'bigint', Kind.INT64: 'numeric(20,0)'}

_MY_KIND = {
    Kind.BOOLEAN: 'BOOLEAN',
    Kind.INT16: 'SMALLINT',
    Kind.INT32: 'INT',
    Kind.INT64: 'BIGINT',
    Kind.FLOAT32: 'FLOAT',
    Kind.FLOAT64: 'DOUBLE',
    Kind.STRING: 'LONGTEXT',
    Kind.TEXT: 'LONGTEXT',
    Kind.BYTES: 'LONGBLOB',
    Kind.DATE: 'DATE',
    Kind.TIME: 'TIME(6)',
    Kind.TIMETZ: 'VARCHAR(32)',
    Kind.TIMESTAMP: 'DATETIME(6)',
    Kind.TIMESTAMPTZ: 'DATETIME(6)',
    Kind.INTERVAL: 'VARCHAR(64)',
    Kind.JSON: 'JSON',
    Kind.UUID: 'UUID',
    Kind.ARRAY: 'JSON',
}
_MY_KEY = {Kind.STRING: 'VARCHAR(255)', Kind.TEXT: 'VARCHAR(255)', Kind.JSON: 'VARCHAR(255)',
           Kind.ARRAY: 'VARCHAR(255)', Kind.BYTES: 'VARBINARY(255)'}
_MY_MAX_PRECISION = 65
_MY_MAX_SCALE = 30
_MY_SHORT_VARCHAR = 255

# A type name as catalogs print it: words, digits, spaces, parentheses, commas, dots, brackets and
# double-quoted identifiers.  Anything else (a ';', a comment, a quote) is not reused verbatim.
_SAFE_PG_TYPE = re.compile(r'^(?:[A-Za-z0-9_ .,()\[\]]|"(?:[^"\x00]|"")+")+$')
_SAFE_MY_TYPE = re.compile(r'^[A-Za-z0-9_ ,()]+$')
_LENGTH = re.compile(r'\(\s*(\d+)\s*\)')
_MY_DECIMAL = re.compile(r'^\s*(?:decimal|dec|numeric|fixed)\s*(?:\(\s*\d+\s*(?:,\s*(\d+)\s*)?\))?',
                         re.IGNORECASE)


def _is_same_database(column: Column, source_connector: str, dialect: str) -> bool:
    return bool(column.source_type) and SAME_DATABASE.get(source_connector) == dialect


def _unsigned(column: Column) -> bool:
    return 'unsigned' in column.source_type.lower()


def _length(column: Column) -> int | None:
    """A string column's declared length: ``precision``, else the one in ``varchar(n)``."""
    if column.precision:
        return column.precision
    match = _LENGTH.search(column.source_type)
    return int(match.group(1)) if match else None


def postgres_type(column: Column, source_connector: str = '') -> str:
    """The PostgreSQL type for ``column`` (see the module docstring's table)."""
    if (_is_same_database(column, source_connector, 'postgresql')
            and _SAFE_PG_TYPE.match(column.source_type)):
        return column.source_type
    kind = column.kind
    if kind is Kind.ARRAY:
        element = Column(column.name, column.element or Kind.TEXT)
        return postgres_type(element) + '[]'
    if kind in _PG_UNSIGNED and _unsigned(column):
        return _PG_UNSIGNED[kind]
    if kind is Kind.DECIMAL and column.precision:
        return f'numeric({column.precision},{column.scale or 0})'
    if kind is Kind.STRING:
        length = _length(column)
        return f'varchar({length})' if length else 'text'
    if kind is Kind.TIME and SAME_DATABASE.get(source_connector) == 'mysql':
        return 'interval'  # a duration there: -838:59:59 to 838:59:59
    return _PG_KIND.get(kind, 'text')


def mysql_type(column: Column, source_connector: str = '', *, key: bool = False) -> str:
    """The MariaDB type for ``column``; ``key`` when it is part of the primary key."""
    lowered = column.source_type.lower()
    if _is_same_database(column, source_connector, 'mysql'):
        if lowered.startswith(('enum', 'set')) and column.symbols:
            return _mysql_enum(lowered.split('(', 1)[0].strip().upper(), column.symbols)
        if _SAFE_MY_TYPE.match(column.source_type):
            return column.source_type
    kind = column.kind
    if kind is Kind.ENUM:
        return _mysql_enum('ENUM', column.symbols) if column.symbols else 'VARCHAR(255)'
    if kind in (Kind.INT16, Kind.INT32, Kind.INT64) and _unsigned(column):
        return _MY_KIND[kind] + ' UNSIGNED'
    if kind is Kind.DECIMAL:
        if not column.precision:
            return f'DECIMAL({_MY_MAX_PRECISION},{_MY_MAX_SCALE})'
        precision = min(column.precision, _MY_MAX_PRECISION)
        scale = min(column.scale or 0, _MY_MAX_SCALE, precision)
        return f'DECIMAL({precision},{scale})'
    if kind is Kind.STRING:
        length = _length(column)
        if length and (length <= _MY_SHORT_VARCHAR or key):
            return f'VARCHAR({length})'
    if key and kind in _MY_KEY:
        return _MY_KEY[kind]
    return _MY_KIND.get(kind, 'LONGTEXT')


def _mysql_enum(kind: str, symbols: tuple[str, ...]) -> str:
    labels = ','.join("'" + s.replace('\\', '\\\\').replace("'", "''") + "'" for s in symbols)
    return f'{kind}({labels})'


def mysql_scale(column: Column, source_connector: str = '') -> int | None:
    """The digits after the point that :func:`mysql_type` of a DECIMAL ``column`` keeps; None
    when that type is no DECIMAL.  MariaDB rounds a value with more, even in strict mode (with
    only a Note), so the sink must refuse such values itself."""
    match = _MY_DECIMAL.match(mysql_type(column, source_connector))
    return int(match.group(1) or 0) if match else None
