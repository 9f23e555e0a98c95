"""The MySQL sink's C literals (``_copytext.rows_sql``) against its Python ones, through MariaDB.

The sink renders a group of rows in C when every value has the one Python type its column's
code takes, else column by column in Python.  What a user checks is that the replica holds
what the Python literals would have written: the same rows are inserted once from each, into
a table of the types the sink creates, and must read back equal, or both inserts must fail
with the same error.  Where Python refuses a value (NaN, more decimals than the column
keeps), C must decline the rows, so that the refusal, naming the column, still happens.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_copy_binary import typed_rows
from transforms.envelope import Column, Kind, TableSchema
from transforms.sinks.sql import mysql
from transforms.sinks.sql.typemap import mysql_type

pytestmark = pytest.mark.skipif(mysql._copytext is None,
                                reason='transforms.sinks.sql._copytext was not built')
UTC = dt.timezone.utc
LIMIT = 2 << 20

small = st.integers(-12, 12)
texts = st.text(st.characters(blacklist_categories=('Cs',)), max_size=8) | st.sampled_from(
    ['', "it's", 'a\\b', '\\', "\\'", 'nul\x00', 'tab\there', 'nl\nand\r', '\x1a', 'é€😀',
     '"q"', 'NULL', "'); DROP TABLE t; --"])
json_texts = st.sampled_from(['{}', '[1, 2]', '{"a": "é", "b": [null, true]}', '"s"', '3.5',
                              '{"q": "it\'s"}', '{"x": "\\u0000"}', '{"b": "\\\\"}', 'not json'])
finite = st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-10**9,
                     max_value=10**9)
decimals = st.decimals(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [Decimal('1E+3'), Decimal('-0'), Decimal('0.000'), Decimal('1.2E-7'), Decimal('0.10'),
     Decimal('1.005'), Decimal('2.500'), Decimal('NaN'), Decimal('-Infinity')])
naive = st.datetimes(min_value=dt.datetime(1000, 1, 1))
aware = st.datetimes(min_value=dt.datetime(1000, 1, 2), max_value=dt.datetime(9999, 12, 30),
                     timezones=st.just(UTC))
element_texts = st.text(st.characters(blacklist_categories=('Cs',)), max_size=5) | \
    st.sampled_from(['"', '\\', "'", '\x00', '\x1f', '\n', 'é'])

# Per column: (the source Column, values of the one type its C code takes, values now and
# then of another type, out of range, or that Python refuses).
COLUMNS: dict[str, tuple[Column, Any, Any]] = {
    'bigint': (Column('c', Kind.INT64, 'bigint'), st.integers(-2**63, 2**63 - 1) | small,
               st.integers() | st.booleans()),
    'int': (Column('c', Kind.INT32, 'integer'), st.integers(-2**31, 2**31 - 1) | small,
            st.integers(-2**40, 2**40)),
    'text': (Column('c', Kind.STRING, 'text'), texts, st.integers() | st.binary(max_size=3)),
    'varchar(5)': (Column('c', Kind.STRING, 'character varying(5)'), texts, texts),
    'json': (Column('c', Kind.JSON, 'jsonb'), json_texts, json_texts),
    'double': (Column('c', Kind.FLOAT64, 'double precision'), st.floats(allow_nan=False,
                                                                        allow_infinity=False),
               st.floats() | st.integers(-10, 10)),
    'decimal(12,2)': (Column('c', Kind.DECIMAL, 'numeric(12,2)', precision=12, scale=2),
                      finite, decimals | st.integers(-10, 10) | st.floats()),
    'decimal': (Column('c', Kind.DECIMAL, 'numeric'), finite, decimals),
    'date': (Column('c', Kind.DATE, 'date'), st.dates(min_value=dt.date(1000, 1, 1)),
             naive | st.just('infinity')),
    'time': (Column('c', Kind.TIME, 'time without time zone'), st.times(),
             st.times(timezones=st.just(UTC))),
    'datetime': (Column('c', Kind.TIMESTAMP, 'timestamp without time zone'), naive, aware),
    'timestamptz': (Column('c', Kind.TIMESTAMPTZ, 'timestamp with time zone'), aware,
                    st.datetimes(min_value=dt.datetime(1000, 1, 2),
                                 max_value=dt.datetime(9999, 12, 30),
                                 timezones=st.just(dt.timezone(dt.timedelta(hours=2))))
                    | naive | st.just('-infinity')),
    'boolean': (Column('c', Kind.BOOLEAN, 'boolean'), st.booleans(), st.integers(0, 1)),
    'bytes': (Column('c', Kind.BYTES, 'bytea'), st.binary(max_size=10), st.text(max_size=3)),
    'text[]': (Column('c', Kind.ARRAY, 'text[]', element=Kind.TEXT),
               st.lists(element_texts | st.none(), max_size=3),
               st.lists(st.lists(element_texts, max_size=2), max_size=2)),
    'integer[]': (Column('c', Kind.ARRAY, 'integer[]', element=Kind.INT32),
                  st.lists(st.integers(-2**31, 2**31 - 1) | small | st.none(), max_size=3),
                  st.lists(st.floats(allow_nan=False) | st.booleans(), max_size=3)),
    'boolean[]': (Column('c', Kind.ARRAY, 'boolean[]', element=Kind.BOOLEAN),
                  st.lists(st.booleans(), max_size=3), st.lists(st.integers(), max_size=2)),
}


@pytest.fixture(scope='module')
def conn(mariadb: Any) -> Any:
    name = mariadb.create_database('literals')
    connection = mariadb.connect(name)
    connection.autocommit(False)  # each insert is rolled back
    with connection.cursor() as cur:  # the sink's session (_MySQLTarget.connect)
        cur.execute(f"SET SESSION sql_mode = '{mysql._SQL_MODE}', time_zone = '+00:00'")
    yield connection
    connection.close()
    mariadb.drop_database(name)


def _table(kinds: list[str]) -> TableSchema:
    columns = []
    for i, name in enumerate(kinds):
        column = COLUMNS[name][0]
        columns.append(Column(f'c{i}', column.kind, column.source_type,
                              precision=column.precision, scale=column.scale,
                              element=column.element))
    return TableSchema('src', 't', tuple(columns))


def _python_rows(table: TableSchema, rows: list[list[Any]]) -> list[str] | str:
    """The Python path's row tuples, or why it refuses a value."""
    converters = {name: mysql._null_safe(name, fn)
                  for name, fn in mysql._converters(table, mysql._escape_string).items()}
    try:
        by_column = [mysql._column_literals(column, list(values), converters[column.name])
                     for column, values in zip(table.columns, zip(*rows, strict=True), strict=True)]
    except ValueError as exc:
        return str(exc)
    tails = [f"'{i:04d}'" for i in range(len(rows))]
    return ['(' + ', '.join(row) + ')' for row in zip(*by_column, tails, strict=True)]


def _insert(conn: Any, table: TableSchema, values: str) -> tuple[str, Any]:
    """What the table holds after inserting ``values`` (rolled back), or the error code."""
    names = ', '.join(f'`{c.name}`' for c in table.columns)
    with conn.cursor() as cur:
        try:
            cur.execute(f'INSERT INTO t ({names}, n) VALUES {values}')
            cur.execute('SELECT * FROM t ORDER BY n')
            return 'ok', cur.fetchall()
        except pymysql.err.MySQLError as exc:
            return 'error', exc.args[0]
        finally:
            conn.rollback()


def _both(conn: Any, kinds: list[str], rows: list[list[Any]]
          ) -> tuple[list[str] | None, tuple[str, Any] | None, list[str] | str]:
    table = _table(kinds)
    definition = ', '.join(f'`{c.name}` {mysql_type(c)}' for c in table.columns)
    with conn.cursor() as cur:
        cur.execute('DROP TABLE IF EXISTS t')
        cur.execute(f'CREATE TABLE t ({definition}, n VARCHAR(8) PRIMARY KEY) ENGINE=InnoDB '
                    'DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin')
    codes = mysql._literal_codes(table, [c.name for c in table.columns], '')
    assert codes is not None
    tails = [f"'{i:04d}'" for i in range(len(rows))]
    chunks = mysql._copytext.rows_sql(codes, rows, tails, LIMIT)
    python = _python_rows(table, rows)
    from_c = _insert(conn, table, chunks[0]) if chunks is not None else None
    return chunks, from_c, python


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_rows(COLUMNS, plain=False))
def test_c_literals_land_what_python_literals_do(conn: Any, table: Any) -> None:
    kinds, rows = table
    chunks, from_c, python = _both(conn, kinds, rows)
    if chunks is None:
        return  # declined: the sink renders these rows in Python
    assert len(chunks) == 1
    assert not isinstance(python, str), f'C rendered what Python refuses ({python}): {rows}'
    assert from_c == _insert(conn, _table(kinds), ', '.join(python)), (kinds, rows)
    _same_text(chunks[0], python)


def _same_text(chunk: str, python: list[str]) -> None:
    # Where Python escapes nothing, its literals are the C ones to the character (elsewhere
    # it escapes more than MariaDB needs: the values, compared above, are what must agree).
    if '\\' not in ''.join(python):
        assert chunk == ', '.join(python)


_MAY_FAIL = {'varchar(5)', 'json'}  # plain values too long, or not JSON


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_rows(COLUMNS, plain=True))
def test_c_takes_plain_values_of_every_kind(conn: Any, table: Any) -> None:
    kinds, rows = table
    chunks, from_c, python = _both(conn, kinds, rows)
    assert chunks is not None, (kinds, rows)
    assert not isinstance(python, str), python
    assert from_c == _insert(conn, _table(kinds), ', '.join(python)), (kinds, rows)
    _same_text(chunks[0], python)
    if not set(kinds) & _MAY_FAIL:
        assert from_c is not None and from_c[0] == 'ok', (kinds, rows, from_c)


@pytest.mark.parametrize('kind', ['text', 'text[]', 'json'])
def test_every_ascii_character_lands_alike(conn: Any, kind: str) -> None:
    """Each of the 128 ASCII characters (controls, quotes, backslash, NUL) alone, between
    others, and beside non-ASCII, from C and from Python (json: inside a JSON string)."""
    texts = [t for code in range(128)
             for t in (chr(code), f'a{chr(code)}b', f'{chr(code)}é😀')]
    if kind == 'text[]':
        values: list[Any] = [[t, None, t + t] for t in texts]
    elif kind == 'json':
        values = [mysql._JSON.encode({'k': t}) for t in texts]
    else:
        values = texts
    rows = [[v] for v in values]
    chunks, from_c, python = _both(conn, [kind], rows)
    assert chunks is not None and from_c is not None and from_c[0] == 'ok', from_c
    assert not isinstance(python, str), python
    assert from_c == _insert(conn, _table([kind]), ', '.join(python))


@pytest.mark.parametrize(('kind', 'value'), [
    ('bigint', True), ('int', 1.5), ('text', 7), ('text', 'lone \udc80 surrogate'),
    ('double', float('nan')), ('double', float('inf')), ('double', 3),
    ('decimal(12,2)', Decimal('1.005')), ('decimal(12,2)', Decimal('NaN')),
    ('decimal', Decimal('Infinity')), ('decimal(12,2)', 12),
    ('date', dt.datetime(2024, 1, 1)), ('time', dt.time(1, tzinfo=UTC)),
    ('datetime', dt.datetime(2024, 1, 1, tzinfo=UTC)), ('timestamptz', dt.datetime(2024, 1, 1)),
    ('timestamptz', dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))),
    ('boolean', 1), ('bytes', bytearray(b'x')), ('text[]', [['nested']]),
    ('integer[]', [1.5]), ('text[]', ('a', 'b')),
])
def test_c_declines_what_python_must_decide(kind: str, value: Any) -> None:
    table = _table([kind])
    codes = mysql._literal_codes(table, ['c0'], '')
    assert codes is not None
    assert mysql._copytext.rows_sql(codes, [[value], [None]], (), LIMIT) is None


def test_kinds_without_a_code_leave_the_rows_to_python() -> None:
    point = Column('g', Kind.BYTES, 'point')  # from MariaDB: ST_GeomFromWKB(…)
    dates = Column('d', Kind.ARRAY, 'date[]', element=Kind.DATE)  # encode_json_value
    numbers = Column('n', Kind.ARRAY, 'numeric[]', element=Kind.DECIMAL)
    for column, connector in ((point, 'mysql'), (dates, ''), (numbers, '')):
        table = TableSchema('src', 't', (Column('id', Kind.INT64), column))
        assert mysql._literal_codes(table, ['id', column.name], connector) is None


def test_rows_are_cut_into_statements_of_about_the_limit() -> None:
    rows = [[i, 'x' * (i % 50)] for i in range(2000)]
    tails = [f"'{i:06d}'" for i in range(len(rows))]
    whole = mysql._copytext.rows_sql((1, 2), rows, tails, LIMIT)
    assert whole is not None and len(whole) == 1
    chunks = mysql._copytext.rows_sql((1, 2), rows, tails, 4096)
    assert chunks is not None and len(chunks) > 10
    assert ', '.join(chunks) == whole[0]  # every row once, in order
    longest = max(len(f"({i}, '{'x' * (i % 50)}', '{i:06d}')") for i in range(len(rows)))
    for chunk in chunks[:-1]:
        assert 4096 <= len(chunk.encode()) < 4096 + 2 + longest
    assert mysql._copytext.rows_sql((1,), [], [], 10) == []
