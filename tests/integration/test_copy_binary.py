"""Binary COPY (``copytext.rows_binary``) against text COPY, through a real PostgreSQL.

The sink stages rows in binary when every value has the one Python type its column's type
takes that way.  What a user checks is that the replica holds what text COPY would have
written: here the same rows go into two tables of the same types, one in each format, and
the tables must read back equal, or both COPYs must fail with the same SQLSTATE (a value
too long for varchar(5), numeric overflow, bad JSON).  When ``rows_binary`` declines (None),
text alone is what the sink sends, and the rows of plain values must never be declined.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.services.postgres import PostgresServer
from transforms.envelope import Column, Kind
from transforms.sinks.sql import copytext

pytestmark = pytest.mark.skipif(copytext._copytext is None,
                                reason='transforms.sinks.sql._copytext was not built')
UTC = dt.timezone.utc

texts = st.text(st.characters(blacklist_categories=('Cs',), blacklist_characters='\x00'),
                max_size=8) | st.sampled_from(['', 'a\\b', 'tab\there', 'nl\nand\r', '\\N',
                                               'é€😀', '"q"', 'NULL', '{a,b}'])
json_texts = st.sampled_from(['{}', '[1, 2]', '{"a": "é", "b": [null, true]}', '"s"', '3.5',
                              '{"a": 1, "a": 2}', 'not json', '{"x": "\\u0000"}'])
aware = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                     timezones=st.just(UTC))
finite = st.decimals(allow_nan=False, allow_infinity=False)
decimals = finite | st.sampled_from([Decimal('1E+3'), Decimal('-0'), Decimal('0.000'),
                                     Decimal('1.2E-7'), Decimal('-12345678.905'),
                                     Decimal('99999999999.995'), Decimal('1E-1000'),
                                     Decimal('1E+1001'), Decimal('NaN'), Decimal('-Infinity')])
int4 = st.integers(-2**31, 2**31 - 1)

# Per column type: (the Column the sink would render it as, values of the type the binary path
# takes, values now and then of another type or out of range, which it must decline or encode
# to what text would give).
TYPES: dict[str, tuple[Column, Any, Any]] = {
    'bigint': (Column('c', Kind.INT64), st.integers(-2**63, 2**63 - 1),
               st.integers() | st.booleans()),
    'integer': (Column('c', Kind.INT32), int4, st.integers(-2**40, 2**40)),
    'smallint': (Column('c', Kind.INT16), st.integers(-2**15, 2**15 - 1),
                 st.integers(-2**20, 2**20)),
    'text': (Column('c', Kind.STRING), texts, st.integers() | st.just('nul\x00')),
    'varchar(5)': (Column('c', Kind.STRING), texts, texts),
    'character(3)': (Column('c', Kind.STRING), texts, texts),
    'json': (Column('c', Kind.JSON), json_texts, json_texts),
    'jsonb': (Column('c', Kind.JSON), json_texts, json_texts),
    'double precision': (Column('c', Kind.FLOAT64), st.floats(), st.integers()),
    'real': (Column('c', Kind.FLOAT32), st.floats(width=32), st.floats(width=32)),
    'numeric': (Column('c', Kind.DECIMAL), decimals, decimals | st.integers()),
    'numeric(12,2)': (Column('c', Kind.DECIMAL), finite, decimals),
    'date': (Column('c', Kind.DATE), st.dates(), st.datetimes() | st.just('infinity')),
    'timestamp': (Column('c', Kind.TIMESTAMP), st.datetimes(), aware),
    'timestamptz': (Column('c', Kind.TIMESTAMPTZ), aware,
                    st.datetimes(timezones=st.just(dt.timezone(dt.timedelta(hours=2))))
                    | st.datetimes() | st.just('-infinity')),
    'timestamp(3) with time zone': (Column('c', Kind.TIMESTAMPTZ), aware, aware),
    'boolean': (Column('c', Kind.BOOLEAN), st.booleans(), st.integers(0, 1)),
    'bytea': (Column('c', Kind.BYTES), st.binary(max_size=10), st.text(max_size=3)),
    'uuid': (Column('c', Kind.UUID), st.uuids().map(str),
             st.uuids().map(lambda u: str(u).upper()) | st.uuids().map(lambda u: u.hex)
             | st.just('not-a-uuid')),
    'text[]': (Column('c', Kind.ARRAY, element=Kind.TEXT), st.lists(texts | st.none(),
                                                                    max_size=3),
               st.lists(st.lists(texts, max_size=2), max_size=2)),
    'varchar(4)[]': (Column('c', Kind.ARRAY, element=Kind.STRING),
                     st.lists(texts | st.none(), max_size=3), st.lists(texts, max_size=3)),
    'integer[]': (Column('c', Kind.ARRAY, element=Kind.INT32), st.lists(int4 | st.none(),
                                                                        max_size=3),
                  st.lists(st.integers(), max_size=3)),
    'bigint[]': (Column('c', Kind.ARRAY, element=Kind.INT64),
                 st.lists(st.integers(-2**63, 2**63 - 1), max_size=3),
                 st.lists(st.integers(), max_size=2)),
    'interval': (Column('c', Kind.INTERVAL), st.just('1 day'), st.just('2 hours')),
}
# The types binary COPY takes (the rest, real and interval here, always go as text).
BINARY = set(TYPES) - {'real', 'interval'}


@pytest.fixture(scope='module')
def conn(postgres: PostgresServer) -> Any:
    name = postgres.create_database('copybin')
    with psycopg.connect(postgres.dsn(name), autocommit=True) as c:
        c.execute("SET TimeZone = 'UTC'")
        yield c


def _types(conn: Any, table: str) -> list[int]:
    return [oid for oid, in conn.execute(
        'SELECT atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 '
        'ORDER BY attnum', (table,))]


def _load(conn: Any, table: str, fmt: str, data: bytes | str) -> tuple[str, Any]:
    try:
        with conn.transaction():
            with conn.cursor().copy(f'COPY {table} FROM STDIN (FORMAT {fmt})') as copy:
                copy.write(data)
            rows = conn.execute(f'SELECT array_agg(t::text ORDER BY n) FROM {table} t'
                                ).fetchone()[0]
            raise _RolledBack(rows)
    except _RolledBack as done:
        return 'ok', done.rows
    except psycopg.Error as exc:
        return 'error', exc.sqlstate


class _RolledBack(Exception):
    def __init__(self, rows: Any) -> None:
        self.rows = rows


def _copy_both(conn: Any, types: list[str], rows: list[list[Any]]
               ) -> tuple[bytes | None, tuple[str, Any], tuple[str, Any] | None]:
    definition = ', '.join(f'c{i} {t}' for i, t in enumerate(types))
    conn.execute('DROP TABLE IF EXISTS pg_temp.t')
    conn.execute(f'CREATE TEMP TABLE t ({definition}, n text)')
    columns = [Column(f'c{i}', TYPES[t][0].kind, element=TYPES[t][0].element)
               for i, t in enumerate(types)]
    tails = [f'{i:04d}' for i in range(len(rows))]
    text = copytext.rows_text(columns, rows, tails)
    codes = copytext.binary_codes(_types(conn, 'pg_temp.t')[:-1])  # n: the text tails
    binary = copytext.rows_binary(codes, rows, tails) if codes is not None else None
    as_text = _load(conn, 't', 'text', text)
    as_binary = None
    if binary is not None:
        as_binary = _load(conn, 't', 'binary',
                          copytext.BINARY_HEADER + binary + copytext.BINARY_TRAILER)
    return binary, as_text, as_binary


@st.composite
def typed_rows(draw: Any, types: Mapping[str, tuple[Column, Any, Any]], plain: bool,
               pool: Sequence[str] = ()) -> tuple[list[str], list[list[Any]]]:
    """1 to 4 of ``types`` (from ``pool``, else any) and 1 to 5 rows of them: values of each
    type's own strategy, or (not ``plain``) now and then of its other one, or None."""
    names = draw(st.lists(st.sampled_from(sorted(pool or types)), min_size=1, max_size=4))
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        row = []
        for name in names:
            _, own, other = types[name]
            values = own if plain else own | other
            row.append(draw(values) if draw(st.integers(0, 9)) else None)
        rows.append(row)
    return names, rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_rows(TYPES, plain=False))
def test_binary_copy_lands_what_text_copy_does(conn: Any, table: Any) -> None:
    types, rows = table
    _, as_text, as_binary = _copy_both(conn, types, rows)
    if as_binary is not None:
        assert as_binary == as_text, (types, rows)


_PLAIN_OK = {'varchar(5)', 'character(3)', 'varchar(4)[]', 'json', 'jsonb', 'numeric(12,2)'}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed_rows(TYPES, plain=True, pool=BINARY))
def test_binary_takes_plain_values_of_its_types(conn: Any, table: Any) -> None:
    types, rows = table
    if any(isinstance(v, Decimal) and (not v.is_finite() or abs(v.adjusted()) > 900
                                       or len(v.as_tuple().digits) > 900)
           for row in rows for v in row):
        return  # beyond what the binary path takes: text says what the server thinks
    binary, as_text, as_binary = _copy_both(conn, types, rows)
    assert binary is not None, (types, rows)
    assert as_binary == as_text, (types, rows)
    if not set(types) & _PLAIN_OK:  # values of these may be too long or not JSON
        assert as_text[0] == 'ok', (types, rows, as_text)


@pytest.mark.parametrize(('type_', 'value'), [
    ('integer', 2**31), ('smallint', -2**15 - 1), ('bigint', True), ('text', 'a\x00b'),
    ('text', 7), ('numeric', Decimal('NaN')), ('numeric', Decimal('1E+1001')),
    ('numeric', 12), ('timestamptz', dt.datetime(2024, 1, 1)),
    ('timestamptz', dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))),
    ('timestamp', dt.datetime(2024, 1, 1, tzinfo=UTC)), ('date', dt.datetime(2024, 1, 1)),
    ('uuid', 'not-a-uuid'), ('uuid', '{12345678-1234-1234-1234-123456789abc}'),
    ('text[]', [['nested']]), ('integer[]', [2**31]), ('bytea', bytearray(b'x')),
    ('text', 'lone \udc80 surrogate'),
])
def test_binary_declines_what_only_text_may_take(conn: Any, type_: str, value: Any) -> None:
    conn.execute('DROP TABLE IF EXISTS pg_temp.d')
    conn.execute(f'CREATE TEMP TABLE d (c {type_})')
    codes = copytext.binary_codes(_types(conn, 'pg_temp.d'))
    assert codes is not None
    assert copytext.rows_binary(codes, [[value]]) is None


@pytest.mark.parametrize('type_', ['real', 'interval', 'citext_like'])
def test_types_without_a_binary_path_go_as_text(conn: Any, type_: str) -> None:
    if type_ == 'citext_like':  # a domain: the server's binary input would be the base type's
        conn.execute('DROP DOMAIN IF EXISTS short_text CASCADE')
        conn.execute('CREATE DOMAIN short_text AS text CHECK (length(VALUE) < 3)')
        type_ = 'short_text'
    conn.execute('DROP TABLE IF EXISTS pg_temp.d')
    conn.execute(f'CREATE TEMP TABLE d (a bigint, c {type_})')
    assert copytext.binary_codes(_types(conn, 'pg_temp.d')) is None
