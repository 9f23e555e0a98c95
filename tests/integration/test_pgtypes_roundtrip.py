"""pgtypes and the pgoutput decoder against a real PostgreSQL 15.

The text each type's output function prints (what pgoutput sends) is fetched in text format
and parsed with ``text_parser``; the expected value is what psycopg's own loaders make of the
same value, so the two implementations check each other.  Values psycopg cannot load
(infinity, BC, year > 9999) must come back as the server's text.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from transforms.envelope import Kind
from transforms.sources.postgres import pgtypes
from transforms.sources.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Insert,
    LogicalMessage,
    PgOutputDecoder,
    Relation,
    RelationColumn,
    Truncate,
    TypeMessage,
    Update,
)

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
ZONES = ('UTC', 'Asia/Kolkata', 'America/St_Johns', 'Pacific/Chatham')

# SQL type -> input literals whose values Python can hold (psycopg loads them too)
LOADABLE: dict[str, list[str]] = {
    'smallint': ['-32768', '32767', '0'],
    'integer': ['-2147483648', '2147483647'],
    'bigint': ['-9223372036854775808', '9223372036854775807'],
    'oid': ['0', '4294967295'],
    'boolean': ['true', 'false'],
    'numeric': ['NaN', 'Infinity', '-Infinity', '0', '-0.000000000000000000001',
                '123456789012345678901234567890.123456789', '1.50', '1e-20'],
    'numeric(10,2)': ['12345678.9', '-0.5'],
    'real': ['NaN', 'Infinity', '-Infinity', '1.1', '3.4028235e38', '1e-45', '-0', '16777217'],
    'double precision': ['NaN', 'Infinity', '-Infinity', '1.1', '1e308', '5e-324', '-0',
                         '123456789012345678', '1e15', '0.0001', '0.00001'],
    'text': ['', 'héllo', 'tab\there', 'quote"back\\slash', 'NULL', '{a,b}'],
    'character varying(5)': ['ab', ''],
    'character(4)': ['ab'],
    '"char"': ['x'],
    'name': ['a name'],
    'bytea': ['\\x', '\\x00ff5c22', 'plain'],
    'uuid': ['A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'],
    'date': ['2024-02-29', '0001-01-01', '9999-12-31', '1970-01-01'],
    'time': ['00:00', '23:59:59.999999', '12:34:56.5', '12:34:56.120'],
    'time(0)': ['12:34:56.7'],
    'timestamp': ['2024-02-29 12:34:56.789', '0001-01-01 00:00', '9999-12-31 23:59:59.999999',
                  '2000-01-01 00:00:00.000001'],
    'timestamptz': ['2024-02-29 12:34:56.789+00', '2024-07-01 00:00:00+00',
                    '1850-01-01 00:00+00', '1900-01-01 00:00:00.5+00', '1970-01-01 00:00+00',
                    '0001-06-01 00:00+00', '9999-06-01 00:00+00'],
    'json': ['{"b":1, "a" : [1,2]}', 'null', '"x"'],
    'jsonb': ['{"b":1, "a" : [1,2]}', 'null', '[1, "x,y"]'],
    'integer[]': ['{}', '{1,NULL,3}', '{{1,2},{3,4}}', '[0:1]={5,6}', '[0:1][2:3]={{1,2},{3,4}}'],
    'text[]': ['{"", " ", "a,b", "NULL", null, "back\\\\slash", "quo\\"te", "{x}", é}'],
    'numeric[]': ['{NaN,1.50,NULL,-Infinity}'],
    'double precision[]': ['{1.5,NaN,-Infinity}'],
    'boolean[]': ['{t,f,NULL}'],
    'date[]': ['{2024-01-01,NULL}'],
    'timestamp[]': ['{"2024-01-01 00:00:00.5"}'],
    'timestamptz[]': ['{"2024-01-01 00:00:00+00","1850-01-01 00:00+00"}'],
    'bytea[]': ['{"\\\\x00ff","\\\\x"}'],
    'uuid[]': ['{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'],
    'jsonb[]': ['{"{\\"a\\": [1]}","null"}'],
    'character varying[]': ['{a,"b c"}'],
    'smallint[]': ['{{{1}},{{2}}}'],
    'bigint[]': ['{9223372036854775807}'],
    'real[]': ['{1.1,NaN}'],
    'time[]': ['{12:00:00.5}'],
}

# SQL type -> input literals whose output must stay the server's text
TEXT_FORMS: dict[str, list[str]] = {
    'date': ['infinity', '-infinity', '0001-12-31 BC', '4713-01-01 BC', '10000-01-01',
             '5874897-12-31'],
    'time': ['24:00:00'],
    'timestamp': ['infinity', '-infinity', '0001-01-01 00:00 BC', '294276-12-31 23:59:59.999999',
                  '10000-01-01 00:00'],
    'timestamptz': ['infinity', '-infinity', '0044-03-15 12:00+00 BC', '10000-06-01 00:00+00'],
    'interval': ['1 year 2 mons 3 days 04:05:06.7', '-1 day', '0', '-178000000 years'],
    'timetz': ['24:00:00+01', '12:34:56.5+05:30'],
    'money': ['12.34'],
    'inet': ['192.168.0.1/24', '::1'],
    'int4range': ['[1,5)'],
    'xml': ['<a>b</a>'],
    'bit(3)': ['101'],
    'point': ['(1,2)'],
    'box[]': ['{((1,2),(3,4));((0,0),(1,1))}'],
}


def _array_literal(values: Sequence[str]) -> str:
    quoted = ('"' + v.replace('\\', '\\\\').replace('"', '\\"') + '"' for v in values)
    return '{' + ','.join(quoted) + '}'


def _server_text(conn: psycopg.Connection[Any], sql_type: str, literals: Sequence[str]
                 ) -> tuple[list[str], int, int]:
    """The output-function text of each literal as ``sql_type``, and the column's oid/typmod."""
    query = (f'SELECT x::{sql_type} FROM unnest($1::text[]) WITH ORDINALITY AS u(x, n) '
             'ORDER BY n')
    result = conn.pgconn.exec_params(query.encode(), [_array_literal(literals).encode()])
    assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message
    texts = [result.get_value(i, 0).decode() for i in range(result.ntuples)]
    return texts, result.ftype(0), result.fmod(0)


def _psycopg_values(conn: psycopg.Connection[Any], sql_type: str, literals: Sequence[str]
                    ) -> list[Any]:
    query = (f'SELECT x::{sql_type} FROM unnest(%s::text[]) WITH ORDINALITY AS u(x, n) '
             'ORDER BY n')
    return [row[0] for row in conn.execute(query, (list(literals),))]  # type: ignore[arg-type]


def _expected(kind: Kind, element: Kind | None, value: Any) -> Any:
    """psycopg's value in the envelope's in-memory form."""
    if value is None:
        return None
    if kind is Kind.ARRAY:
        return [_expected(element or Kind.TEXT, None, v) for v in value]
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _json_loads(value: Any) -> Any:
    if isinstance(value, list):
        return [_json_loads(v) for v in value]
    return None if value is None else json.loads(value)


def _same(got: Any, expected: Any) -> bool:
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(map(_same, got, expected))
    if got != got and expected != expected:  # NaN, float or Decimal
        return True
    if isinstance(got, float) and got == 0 and isinstance(expected, float):
        return str(got) == str(expected)  # -0.0 is not 0.0 here
    if isinstance(got, dt.datetime) and isinstance(expected, dt.datetime):
        return got == expected and got.tzinfo == expected.tzinfo
    return type(got) is type(expected) and got == expected


def pgtypes_column(oid: int, typmod: int, name: str = 'v') -> RelationColumn:
    return RelationColumn(name, oid, typmod, False)


def _types_for(conn: psycopg.Connection[Any], oid: int) -> dict[int, pgtypes.TypeInfo]:
    if pgtypes.is_builtin(oid):
        return {}
    return pgtypes.type_infos(conn.execute(pgtypes.CATALOG_QUERY, ([oid],)).fetchall())


@pytest.mark.parametrize('zone', ZONES)
def test_text_parser_agrees_with_psycopg(pg_db: Any, zone: str) -> None:
    with pg_db.connect() as conn:
        conn.execute(f"SET TimeZone = '{zone}'")
        for sql_type, literals in LOADABLE.items():
            texts, oid, typmod = _server_text(conn, sql_type, literals)
            column = pgtypes.column_for(pgtypes_column(oid, typmod), _types_for(conn, oid))
            parse = pgtypes.text_parser(column)
            for text, loaded in zip(texts, _psycopg_values(conn, sql_type, literals),
                                    strict=True):
                got = parse(text)
                if Kind.JSON in (column.kind, column.element):
                    # documents stay text; psycopg parses them
                    assert _json_loads(got) == loaded, (sql_type, text)
                    continue
                expected = _expected(column.kind, column.element, loaded)
                assert _same(got, expected), (zone, sql_type, text, got, expected)


@pytest.mark.parametrize('zone', ZONES)
def test_values_python_cannot_hold_stay_text(pg_db: Any, zone: str) -> None:
    with pg_db.connect() as conn:
        conn.execute(f"SET TimeZone = '{zone}'")
        for sql_type, literals in TEXT_FORMS.items():
            texts, oid, typmod = _server_text(conn, sql_type, literals)
            column = pgtypes.column_for(pgtypes_column(oid, typmod), _types_for(conn, oid))
            parse = pgtypes.text_parser(column)
            for text in texts:
                got = parse(text)
                if column.kind is Kind.ARRAY:
                    assert all(isinstance(v, str) for v in got), (sql_type, text, got)
                elif isinstance(got, dt.datetime):
                    # 10000-06-01 00:00+00 shown at a negative offset is still in 9999 locally
                    assert zone != 'UTC' and got.year == 9999, (sql_type, text, got)
                else:
                    assert got == text, (sql_type, text, got)


def test_enum_domain_and_user_array_values(pg_db: Any) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE SCHEMA s2; CREATE TYPE s2.mood AS ENUM ('ok', 'so so', 'x\"y')")
        conn.execute('CREATE DOMAIN s2.money8 AS numeric(8,3) CHECK (VALUE > 0)')
        conn.execute('CREATE DOMAIN s2.money8b AS s2.money8')
        conn.execute('CREATE TABLE s2.t (m s2.mood, ms s2.mood[], d s2.money8b, ds s2.money8[])')
        conn.execute("""INSERT INTO s2.t VALUES ('so so', '{ok,"so so","x\\"y",NULL}', 1.5,
                        '{2.25,NULL}')""")
        atts = conn.execute("""SELECT attname, atttypid::int8, atttypmod FROM pg_attribute
                               WHERE attrelid = 's2.t'::regclass AND attnum > 0
                               ORDER BY attnum""").fetchall()
        types = pgtypes.type_infos(conn.execute(pgtypes.CATALOG_QUERY,
                                                ([a[1] for a in atts],)).fetchall())
        columns = [pgtypes.column_for(pgtypes_column(oid, typmod, name), types)
                   for name, oid, typmod in atts]
        assert [(c.kind, c.element, c.source_type) for c in columns] == [
            (Kind.ENUM, None, 's2.mood'), (Kind.ARRAY, Kind.ENUM, 's2.mood[]'),
            (Kind.DECIMAL, None, 's2.money8b'), (Kind.ARRAY, Kind.DECIMAL, 's2.money8[]')]
        assert columns[0].symbols == ('ok', 'so so', 'x"y')
        assert (columns[2].precision, columns[2].scale) == (8, 3)
        result = conn.pgconn.exec_(b'SELECT * FROM s2.t')
        texts = tuple(result.get_value(0, i).decode() for i in range(result.nfields))
        row, unchanged = pgtypes.row_decoder(columns)(texts)
        assert row == {'m': 'so so', 'ms': ['ok', 'so so', 'x"y', None], 'd': Decimal('1.500'),
                       'ds': [Decimal('2.250'), None]}
        assert unchanged == frozenset()


FORMAT_TYPE_COLUMNS = """
a interval year to month, b interval(3), c interval day to second(2), d interval hour,
e bit, f bpchar, g bit(5), h varbit, i varbit(7), j "char", k char, l char(3), m time(0),
n timetz(6), o timestamp, p timestamptz(3), q numeric(5), r numeric, s numeric(10,-2), t name,
u int2vector, v float4[], w box[], x "CamelType"[], y "select", z s2.mood[], z1 s2.d,
z2 s2.d[], z3 varchar(10)[], z4 oidvector, a1 interval minute to second(0), a2 interval year,
a3 interval month, a4 interval day to hour, a5 interval second(6), a6 interval hour to second,
a7 timestamp(0)[], a8 numeric(1000,999), a9 numeric(3,-5)[], b1 bool, b2 bytea, b3 int8,
b4 int2, b5 int4, b6 text, b7 oid, b8 json, b9 xml, c1 float4, c2 float8, c3 money, c4 varchar,
c5 date, c6 time, c7 timestamptz, c8 interval, c9 timetz, d1 uuid, d2 jsonb, d3 inet, d4 cidr,
d5 macaddr, d6 macaddr8, d7 int4range, d8 int4multirange, d9 tsvector, e1 pg_lsn, e2 point,
e3 s2.comp, e4 s2.dd, e5 pubenum, e6 s2."Weird Name", e7 "CamelType", e8 s2.dd[],
e9 int2vector[], f2 xid8, f3 char(1)[], f4 bit[]
"""


def test_source_type_is_what_format_type_prints(pg_db: Any) -> None:
    with pg_db.connect() as conn:
        conn.execute("""
            CREATE TYPE "CamelType" AS ENUM ('a'); CREATE TYPE "select" AS ENUM ('b');
            CREATE TYPE pubenum AS ENUM ('z', 'y'); CREATE SCHEMA s2;
            CREATE TYPE s2.mood AS ENUM ('x'); CREATE DOMAIN s2.d AS numeric(8,3);
            CREATE DOMAIN s2.dd AS s2.d CHECK (VALUE > 0); CREATE TYPE s2.comp AS (a int);
            CREATE TYPE s2."Weird Name" AS ENUM ('q')""")
        conn.execute(f'CREATE TABLE ft ({FORMAT_TYPE_COLUMNS})')
        atts = conn.execute("""SELECT attname, atttypid::int8, atttypmod,
                                      format_type(atttypid, atttypmod)
                               FROM pg_attribute WHERE attrelid = 'ft'::regclass AND attnum > 0
                               ORDER BY attnum""").fetchall()
        oids = [oid for _, oid, _, _ in atts if not pgtypes.is_builtin(oid)]
        types = pgtypes.type_infos(conn.execute(pgtypes.CATALOG_QUERY, (oids,)).fetchall())
        got = [pgtypes.column_for(pgtypes_column(oid, typmod, name), types).source_type
               for name, oid, typmod, _ in atts]
        assert got == [expected for _, _, _, expected in atts]


def test_builtin_types_match_the_catalog(pg_db: Any) -> None:
    with pg_db.connect() as conn:
        rows = conn.execute("""SELECT oid::int8, typname::text, typtype::text, typdelim::text,
                                      CASE WHEN typcategory = 'A' AND typlen = -1
                                           AND typstorage <> 'p' THEN typelem ELSE 0 END::int8
                               FROM pg_type WHERE oid = ANY(%s)""",
                            (list(pgtypes.BUILTIN_TYPES),)).fetchall()
    assert {r[0]: r[1:] for r in rows} == {
        oid: (info.name, info.typtype, info.delimiter, info.elem_oid)
        for oid, info in pgtypes.BUILTIN_TYPES.items()}


def test_decoder_on_real_pgoutput_changes(pg_db: Any) -> None:
    """Changes of a table of many types, fetched as raw pgoutput messages through a slot."""
    with pg_db.connect() as conn:
        conn.execute("""
            CREATE TYPE mood AS ENUM ('sad', 'ok');
            CREATE TABLE t (id int PRIMARY KEY, n numeric(10,2), s varchar(20), m mood,
                            ts timestamptz, d date, arr int[], b bytea, j jsonb, big text,
                            f float8, u uuid);
            CREATE PUBLICATION p FOR TABLE t""")
        conn.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        conn.execute("""INSERT INTO t VALUES
            (1, 12.5, 'héllo', 'ok', '2024-02-29 12:34:56.5+00', 'infinity', '{1,NULL,3}',
             '\\x00ff', '{"a": 1}', (SELECT string_agg(md5(g::text), '') FROM
                                      generate_series(1, 3000) g), 'NaN', gen_random_uuid()),
            (2, NULL, '', 'sad', '-infinity', '0044-03-15 BC', '{}', '', 'null', 'x', -0.0,
             NULL)""")
        conn.execute('UPDATE t SET n = 1 WHERE id = 1')
        conn.execute("SELECT pg_logical_emit_message(true, 'pfx', 'hi')")
        conn.execute('TRUNCATE t')
        frames = [row[0] for row in conn.execute(
            """SELECT data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL,
               'proto_version', '1', 'publication_names', 'p', 'messages', 'true')""")]
        decoder = PgOutputDecoder()
        messages = [decoder.decode(frame) for frame in frames]
        # A Type message precedes each Relation that uses the enum.
        assert [type(m) for m in messages] == [
            Begin, TypeMessage, Relation, Insert, Insert, Commit, Begin, Update, Commit,
            Begin, LogicalMessage, Commit, Begin, TypeMessage, Relation, Truncate, Commit]
        mood = messages[1]
        assert isinstance(mood, TypeMessage) and (mood.namespace, mood.name) == ('public', 'mood')
        relation = messages[2]
        assert isinstance(relation, Relation)
        assert (relation.namespace, relation.name, relation.replica_identity) == ('public', 't',
                                                                                  'd')
        types = pgtypes.type_infos(conn.execute(
            pgtypes.CATALOG_QUERY, ([c.type_oid for c in relation.columns],)).fetchall())
        columns = [pgtypes.column_for(c, types) for c in relation.columns]
        decode_row = pgtypes.row_decoder(columns)
        first, _ = decode_row(messages[3].new)  # type: ignore[union-attr]
        second, _ = decode_row(messages[4].new)  # type: ignore[union-attr]
        assert first['n'] == Decimal('12.50') and first['s'] == 'héllo' and first['m'] == 'ok'
        assert first['ts'] == dt.datetime(2024, 2, 29, 12, 34, 56, 500000, UTC)
        assert first['d'] == 'infinity' and first['arr'] == [1, None, 3]
        assert first['b'] == b'\x00\xff' and json.loads(first['j']) == {'a': 1}
        assert len(first['big']) == 96000 and first['f'] != first['f']
        assert str(uuid.UUID(first['u'])) == first['u']
        assert second == {'id': 2, 'n': None, 's': '', 'm': 'sad', 'ts': '-infinity',
                          'd': '0044-03-15 BC', 'arr': [], 'b': b'', 'j': 'null', 'big': 'x',
                          'f': -0.0, 'u': None}
        update = messages[7]
        assert isinstance(update, Update) and UNCHANGED_TOAST in update.new
        row, unchanged = decode_row(update.new)
        assert unchanged == frozenset({'big'}) and 'big' not in row
        assert row['n'] == Decimal('1.00')
        truncate = messages[15]
        assert isinstance(truncate, Truncate) and truncate.relation_oids == (relation.oid,)
        message = messages[10]
        assert isinstance(message, LogicalMessage)
        assert (message.prefix, message.content, message.transactional) == ('pfx', b'hi', True)
        begin, commit = messages[0], messages[5]
        assert isinstance(begin, Begin) and isinstance(commit, Commit)
        now = dt.datetime.now(UTC).timestamp() * 1e6
        assert abs(commit.commit_ts - now) < 600e6 and begin.commit_ts == commit.commit_ts
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
