"""PostgreSQL type mapping and text-form parsing.

Expected text forms below were printed by PostgreSQL 15 (``SELECT v::<type>`` through the type's
output function, the one pgoutput uses) unless a comment says otherwise.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.unit.pgoutput_frames import tuple_data
from transforms.envelope import Column, Kind
from transforms.sources.postgres.pgoutput import UNCHANGED_TOAST, RelationColumn
from transforms.sources.postgres.pgtypes import (
    BUILTIN_TYPES,
    CATALOG_QUERY,
    TypeInfo,
    column_for,
    format_type,
    is_builtin,
    row_decoder,
    text_parser,
    type_infos,
    wire_row_decoder,
)

UTC = dt.timezone.utc


def col(oid: int, typmod: int = -1, types: dict[int, TypeInfo] | None = None,
        name: str = 'c') -> Column:
    return column_for(RelationColumn(name, oid, typmod, False), types or {})


def parse(oid: int, text: str, typmod: int = -1, types: dict[int, TypeInfo] | None = None
          ) -> Any:
    return text_parser(col(oid, typmod, types))(text)


# ---------------------------------------------------------------------------------------------
# column_for: kind and the type text format_type() prints (checked against PostgreSQL 15)

# (oid, typmod) -> (kind, source_type, element)
BUILTIN_COLUMNS = [
    ((16, -1), (Kind.BOOLEAN, 'boolean', None)),
    ((17, -1), (Kind.BYTES, 'bytea', None)),
    ((18, -1), (Kind.STRING, '"char"', None)),
    ((20, -1), (Kind.INT64, 'bigint', None)),
    ((21, -1), (Kind.INT16, 'smallint', None)),
    ((23, -1), (Kind.INT32, 'integer', None)),
    ((25, -1), (Kind.STRING, 'text', None)),
    ((26, -1), (Kind.INT64, 'oid', None)),
    ((114, -1), (Kind.JSON, 'json', None)),
    ((142, -1), (Kind.TEXT, 'xml', None)),
    ((700, -1), (Kind.FLOAT32, 'real', None)),
    ((701, -1), (Kind.FLOAT64, 'double precision', None)),
    ((790, -1), (Kind.TEXT, 'money', None)),
    ((1042, -1), (Kind.STRING, 'bpchar', None)),
    ((1042, 5), (Kind.STRING, 'character(1)', None)),
    ((1042, 7), (Kind.STRING, 'character(3)', None)),
    ((1043, -1), (Kind.STRING, 'character varying', None)),
    ((1043, 24), (Kind.STRING, 'character varying(20)', None)),
    ((1082, -1), (Kind.DATE, 'date', None)),
    ((1083, -1), (Kind.TIME, 'time without time zone', None)),
    ((1083, 0), (Kind.TIME, 'time(0) without time zone', None)),
    ((1266, 6), (Kind.TIMETZ, 'time(6) with time zone', None)),
    ((1114, -1), (Kind.TIMESTAMP, 'timestamp without time zone', None)),
    ((1184, -1), (Kind.TIMESTAMPTZ, 'timestamp with time zone', None)),
    ((1184, 3), (Kind.TIMESTAMPTZ, 'timestamp(3) with time zone', None)),
    ((1186, -1), (Kind.INTERVAL, 'interval', None)),
    ((1186, 458751), (Kind.INTERVAL, 'interval year to month', None)),
    ((1186, 2147418115), (Kind.INTERVAL, 'interval(3)', None)),
    ((1186, 470286338), (Kind.INTERVAL, 'interval day to second(2)', None)),
    ((1186, 67174399), (Kind.INTERVAL, 'interval hour', None)),
    ((1560, -1), (Kind.TEXT, '"bit"', None)),
    ((1560, 5), (Kind.TEXT, 'bit(5)', None)),
    ((1562, -1), (Kind.TEXT, 'bit varying', None)),
    ((1562, 7), (Kind.TEXT, 'bit varying(7)', None)),
    ((1700, -1), (Kind.DECIMAL, 'numeric', None)),
    ((1700, 655366), (Kind.DECIMAL, 'numeric(10,2)', None)),
    ((1700, 327684), (Kind.DECIMAL, 'numeric(5,0)', None)),
    ((1700, 657410), (Kind.DECIMAL, 'numeric(10,-2)', None)),
    ((2950, -1), (Kind.UUID, 'uuid', None)),
    ((3802, -1), (Kind.JSON, 'jsonb', None)),
    ((869, -1), (Kind.TEXT, 'inet', None)),
    ((650, -1), (Kind.TEXT, 'cidr', None)),
    ((829, -1), (Kind.TEXT, 'macaddr', None)),
    ((22, -1), (Kind.TEXT, 'int2vector', None)),  # has an element type, but is no array
    ((3904, -1), (Kind.TEXT, 'int4range', None)),
    ((1000, -1), (Kind.ARRAY, 'boolean[]', Kind.BOOLEAN)),
    ((1001, -1), (Kind.ARRAY, 'bytea[]', Kind.BYTES)),
    ((1005, -1), (Kind.ARRAY, 'smallint[]', Kind.INT16)),
    ((1007, -1), (Kind.ARRAY, 'integer[]', Kind.INT32)),
    ((1016, -1), (Kind.ARRAY, 'bigint[]', Kind.INT64)),
    ((1009, -1), (Kind.ARRAY, 'text[]', Kind.STRING)),
    ((1015, 14), (Kind.ARRAY, 'character varying(10)[]', Kind.STRING)),
    ((1014, 5), (Kind.ARRAY, 'character(1)[]', Kind.STRING)),
    ((1021, -1), (Kind.ARRAY, 'real[]', Kind.FLOAT32)),
    ((1022, -1), (Kind.ARRAY, 'double precision[]', Kind.FLOAT64)),
    ((1231, 655366), (Kind.ARRAY, 'numeric(10,2)[]', Kind.DECIMAL)),
    ((1182, -1), (Kind.ARRAY, 'date[]', Kind.DATE)),
    ((1183, -1), (Kind.ARRAY, 'time without time zone[]', Kind.TIME)),
    ((1115, 0), (Kind.ARRAY, 'timestamp(0) without time zone[]', Kind.TIMESTAMP)),
    ((1185, -1), (Kind.ARRAY, 'timestamp with time zone[]', Kind.TIMESTAMPTZ)),
    ((1187, -1), (Kind.ARRAY, 'interval[]', Kind.INTERVAL)),
    ((2951, -1), (Kind.ARRAY, 'uuid[]', Kind.UUID)),
    ((3807, -1), (Kind.ARRAY, 'jsonb[]', Kind.JSON)),
    ((199, -1), (Kind.ARRAY, 'json[]', Kind.JSON)),
    ((1020, -1), (Kind.ARRAY, 'box[]', Kind.TEXT)),
    ((1561, 1), (Kind.ARRAY, 'bit(1)[]', Kind.TEXT)),
]


@pytest.mark.parametrize(('oid_typmod', 'expected'), BUILTIN_COLUMNS,
                         ids=[e[1] for _, e in BUILTIN_COLUMNS])
def test_builtin_columns(oid_typmod: tuple[int, int], expected: tuple[Kind, str, Kind | None]
                         ) -> None:
    column = col(*oid_typmod, name='x')
    assert (column.kind, column.source_type, column.element) == expected
    assert column.name == 'x'


def test_numeric_precision_and_scale() -> None:
    assert (col(1700, 655366).precision, col(1700, 655366).scale) == (10, 2)
    assert (col(1700, 657410).precision, col(1700, 657410).scale) == (10, -2)
    assert (col(1700, -1).precision, col(1700, -1).scale) == (None, None)
    array = col(1231, ((1000 << 16) | 999) + 4)
    assert (array.source_type, array.precision, array.scale) == ('numeric(1000,999)[]', 1000, 999)


MOOD = TypeInfo(16873, 'mood', 's2', 'e', enum_labels=['x', 'y y', 'z"'])  # type: ignore[arg-type]
MOOD_ARRAY = TypeInfo(16872, '_mood', 's2', 'b', elem_oid=16873)
CAMEL = TypeInfo(16859, 'CamelType', 'public', 'e', enum_labels=('a',))
CAMEL_ARRAY = TypeInfo(16858, '_CamelType', 'public', 'b', elem_oid=16859)
KEYWORD = TypeInfo(16862, 'select', 'public', 'e', enum_labels=('b',))
WEIRD = TypeInfo(16888, 'Weird Name', 's2', 'e', enum_labels=('q',))
MONEY_D = TypeInfo(16880, 'd', 's2', 'd', base_oid=1700, base_typmod=524295)  # numeric(8,3)
MONEY_DD = TypeInfo(16882, 'dd', 's2', 'd', base_oid=16880)  # a domain over s2.d
MONEY_D_ARRAY = TypeInfo(16879, '_d', 's2', 'b', elem_oid=16880)
POSINT = TypeInfo(16620, 'posint', 'public', 'd', base_oid=23)
COMP = TypeInfo(16886, 'comp', 's2', 'c')
CITEXT = TypeInfo(16754, 'citext', 'public', 'b')
USER_TYPES = {t.oid: t for t in (MOOD, MOOD_ARRAY, CAMEL, CAMEL_ARRAY, KEYWORD, WEIRD, MONEY_D,
                                 MONEY_DD, MONEY_D_ARRAY, POSINT, COMP, CITEXT)}


@pytest.mark.parametrize(('oid', 'kind', 'source_type', 'element'), [
    (16873, Kind.ENUM, 's2.mood', None),
    (16872, Kind.ARRAY, 's2.mood[]', Kind.ENUM),
    (16859, Kind.ENUM, '"CamelType"', None),
    (16858, Kind.ARRAY, '"CamelType"[]', Kind.ENUM),
    (16862, Kind.ENUM, '"select"', None),
    (16888, Kind.ENUM, 's2."Weird Name"', None),
    (16880, Kind.DECIMAL, 's2.d', None),
    (16882, Kind.DECIMAL, 's2.dd', None),
    (16879, Kind.ARRAY, 's2.d[]', Kind.DECIMAL),
    (16620, Kind.INT32, 'posint', None),
    (16886, Kind.TEXT, 's2.comp', None),
    (16754, Kind.TEXT, 'citext', None),
    (99999, Kind.TEXT, '(unknown type oid 99999)', None),
])
def test_user_type_columns(oid: int, kind: Kind, source_type: str, element: Kind | None
                           ) -> None:
    column = col(oid, types=USER_TYPES)
    assert (column.kind, column.source_type, column.element) == (kind, source_type, element)


def test_enum_symbols_and_domain_typmod() -> None:
    assert col(16873, types=USER_TYPES).symbols == ('x', 'y y', 'z"')
    assert col(16872, types=USER_TYPES).symbols == ('x', 'y y', 'z"')
    dd = col(16882, types=USER_TYPES)
    assert (dd.precision, dd.scale) == (8, 3)
    assert (col(16879, types=USER_TYPES).precision, col(16879, types=USER_TYPES).scale) == (8, 3)


def test_domain_cycle_in_a_corrupt_mapping_does_not_hang() -> None:
    loop = {1: TypeInfo(1, 'a', 'x', 'd', base_oid=2), 2: TypeInfo(2, 'b', 'x', 'd', base_oid=1)}
    assert col(1, types=loop).kind is Kind.TEXT


def test_type_infos_and_catalog_query_shape() -> None:
    rows = [(16873, 'mood', 's2', 'e', 0, 0, ['x', 'y'], ',', -1)]
    assert type_infos(rows) == {16873: TypeInfo(16873, 'mood', 's2', 'e', 0, 0, ('x', 'y'))}
    assert hash(type_infos(rows)[16873])  # lists became tuples
    assert CATALOG_QUERY.count('%s') == 1
    assert 'ANY(' in CATALOG_QUERY


def test_builtin_types() -> None:
    for oid in (16, 17, 20, 21, 23, 25, 26, 114, 142, 700, 701, 790, 1042, 1043, 1082, 1083,
                1114, 1184, 1186, 1266, 1560, 1562, 1700, 2950, 3802, 869, 650, 829, 1000, 1005,
                1007, 1016, 1009, 1015, 1014, 1021, 1022, 1231, 1182, 1115, 1185, 2951, 3807,
                199, 1001, 1183, 1187):
        assert is_builtin(oid), oid
    assert not is_builtin(16384)
    assert BUILTIN_TYPES[1007].elem_oid == 23
    assert BUILTIN_TYPES[1020].delimiter == ';'
    assert format_type(1007, -1) == 'integer[]'


# ---------------------------------------------------------------------------------------------
# text_parser: one case per type, edge values included

SCALAR_CASES = [
    (21, '-32768', -32768),
    (23, '2147483647', 2147483647),
    (20, '-9223372036854775808', -9223372036854775808),
    (26, '4294967295', 4294967295),
    (16, 't', True),
    (16, 'f', False),
    (1700, '-12345678901234567890.123456789', Decimal('-12345678901234567890.123456789')),
    (1700, '0.00000000000000000001', Decimal('1E-20')),
    (1700, '1.50', Decimal('1.50')),
    (1700, 'Infinity', Decimal('Infinity')),
    (1700, '-Infinity', Decimal('-Infinity')),
    (701, '1.1', 1.1),
    (701, '1e+308', 1e308),
    (701, '5e-324', 5e-324),
    (701, '1.2345678901234568e+17', 1.2345678901234568e17),
    (701, 'Infinity', math.inf),
    (701, '-Infinity', -math.inf),
    (700, '3.4028235e+38', 3.4028235e38),
    (700, '1e-45', 1e-45),
    (25, 'héllo\nworld', 'héllo\nworld'),
    (1043, '', ''),
    (1042, 'ab  ', 'ab  '),
    (2950, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
    (17, '\\x', b''),
    (17, '\\x00ff5c', b'\x00\xff\\'),
    (17, '\\000\\377\\\\A', b'\x00\xff\\A'),  # bytea_output = 'escape'
    (17, 'plain', b'plain'),  # escape format of printable ASCII
    (1082, '2024-02-29', dt.date(2024, 2, 29)),
    (1082, '0001-01-01', dt.date(1, 1, 1)),
    (1082, '9999-12-31', dt.date(9999, 12, 31)),
    (1082, '0001-12-31 BC', '0001-12-31 BC'),
    (1082, '4713-01-01 BC', '4713-01-01 BC'),
    (1082, '10000-01-01', '10000-01-01'),
    (1082, '5874897-12-31', '5874897-12-31'),
    (1082, 'infinity', 'infinity'),
    (1082, '-infinity', '-infinity'),
    (1083, '00:00:00', dt.time(0)),
    (1083, '23:59:59.999999', dt.time(23, 59, 59, 999999)),
    (1083, '12:34:56.5', dt.time(12, 34, 56, 500000)),
    (1083, '12:34:56.12', dt.time(12, 34, 56, 120000)),
    (1083, '24:00:00', '24:00:00'),
    (1266, '24:00:00+01', '24:00:00+01'),
    (1266, '23:59:59.999999-15:59', '23:59:59.999999-15:59'),
    (1114, '2024-02-29 12:34:56.789', dt.datetime(2024, 2, 29, 12, 34, 56, 789000)),
    (1114, '2000-01-01 00:00:00.000001', dt.datetime(2000, 1, 1, 0, 0, 0, 1)),
    (1114, '0001-01-01 00:00:00', dt.datetime(1, 1, 1)),
    (1114, '9999-12-31 23:59:59.999999', dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
    (1114, '0001-01-01 00:00:00 BC', '0001-01-01 00:00:00 BC'),
    (1114, '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59.999999'),
    (1114, 'infinity', 'infinity'),
    (1114, '-infinity', '-infinity'),
    (1184, '2024-02-29 12:34:56.789+00', dt.datetime(2024, 2, 29, 12, 34, 56, 789000, UTC)),
    (1184, '2000-01-01 00:00:00.000001+00', dt.datetime(2000, 1, 1, 0, 0, 0, 1, UTC)),
    (1184, '2000-01-01 00:00:00.123456-03:30:52',
     dt.datetime(2000, 1, 1, 3, 30, 52, 123456, UTC)),
    (1184, '2024-02-29 18:04:56.789+05:30', dt.datetime(2024, 2, 29, 12, 34, 56, 789000, UTC)),
    (1184, '2024-06-30 21:30:00-02:30', dt.datetime(2024, 7, 1, tzinfo=UTC)),  # St. John's
    (1184, '1899-12-31 20:29:08-03:30:52', dt.datetime(1900, 1, 1, tzinfo=UTC)),  # its LMT
    (1184, '1850-01-01 05:53:28+05:53:28', dt.datetime(1850, 1, 1, tzinfo=UTC)),
    (1184, '0001-01-01 05:53:28+05:53:28', dt.datetime(1, 1, 1, tzinfo=UTC)),
    (1184, '10000-01-01 04:30:00+05:30', dt.datetime(9999, 12, 31, 23, tzinfo=UTC)),
    (1184, '9999-12-31 20:29:59-03:30', dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    (1184, '10000-01-01 00:00:00+00', '10000-01-01 00:00:00+00'),
    (1184, '9999-12-31 23:00:00-05', '9999-12-31 23:00:00-05'),  # 10000 AD in UTC
    (1184, '0044-03-15 12:00:00+00 BC', '0044-03-15 12:00:00+00 BC'),
    (1184, 'infinity', 'infinity'),
    (1184, '-infinity', '-infinity'),
    (1186, '1 year 2 mons 3 days 04:05:06.7', '1 year 2 mons 3 days 04:05:06.7'),
    (1186, '-1 days', '-1 days'),
    (114, '{"b":1, "a" : [1,2]}', '{"b":1, "a" : [1,2]}'),
    (3802, 'null', 'null'),
    (790, '$12.34', '$12.34'),
    (869, '192.168.0.1/24', '192.168.0.1/24'),
]


@pytest.mark.parametrize(('oid', 'text', 'expected'), SCALAR_CASES,
                         ids=[f'{oid}:{text}' for oid, text, _ in SCALAR_CASES])
def test_scalar_text_forms(oid: int, text: str, expected: Any) -> None:
    value = parse(oid, text)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, dt.datetime):
        assert value.tzinfo == expected.tzinfo


def test_special_floats_and_decimals() -> None:
    assert math.isnan(parse(701, 'NaN'))
    assert math.isnan(parse(700, 'NaN'))
    assert math.copysign(1.0, parse(701, '-0')) == -1.0
    nan = parse(1700, 'NaN')
    assert isinstance(nan, Decimal) and nan.is_nan()
    assert str(parse(1700, '1.50')) == '1.50'  # scale kept


def test_enum_and_domain_values() -> None:
    assert parse(16873, 'y y', types=USER_TYPES) == 'y y'
    assert parse(16620, '7', types=USER_TYPES) == 7
    assert parse(16882, '12.500', types=USER_TYPES) == Decimal('12.500')


BAD_TEXT = [
    (23, '1.5'), (23, ''), (21, 'x'), (16, 'true'), (16, ''), (1700, 'abc'), (701, 'one'),
    (17, '\\x0'), (17, '\\xzz'), (17, 'a\\9b'), (17, 'tail\\'),
    (1082, '2023-02-29'), (1082, 'yesterday'), (1082, '2024-1-1'),
    (1083, '25:00:00'), (1083, 'noon'), (1083, '24:00:01'),
    (1114, '2024-02-30 00:00:00'), (1114, '2024-01-01T00:00:00x'), (1114, 'now'),
    (1184, '2024-01-01 00:00:00'), (1184, '2024-13-01 00:00:00+00'), (1184, 'soon'),
    (1184, '2024-01-01 00:00:00+0'),
    (1007, '{1,2'), (1007, '1,2}'), (1007, '{1,,2}'), (1007, '{"1}'), (1007, '{1}}'),
    (1007, '{}}'), (1007, '{,1}'), (1007, '{1,}'), (1007, '[1:2]{1,2}'), (1007, '{{1},{2}'),
    (1007, '{a"b}'), (1007, '{1,x}'), (1007, ''), (1007, '{{1,2},{3,4}}x'), (1009, '{a,,b}'),
    (1009, '{a,}'),
]


@pytest.mark.parametrize(('oid', 'text'), BAD_TEXT, ids=[f'{o}:{t}' for o, t in BAD_TEXT])
def test_bad_text_raises_naming_column_type_and_text(oid: int, text: str) -> None:
    parser = text_parser(col(oid, name='amount'))
    with pytest.raises(ValueError) as info:
        parser(text)
    message = str(info.value)
    assert "'amount'" in message
    assert col(oid).source_type in message
    assert repr(text) in message


def test_long_bad_text_is_shortened_in_the_error() -> None:
    with pytest.raises(ValueError) as info:
        parse(23, 'x' * 10_000)
    assert len(str(info.value)) < 400


def test_unmodelled_types_are_text() -> None:
    assert text_parser(col(869)) is str
    assert text_parser(col(25)) is str


# ---------------------------------------------------------------------------------------------
# Arrays

ARRAY_CASES = [
    (1007, '{}', []),
    (1007, '{1,NULL,3}', [1, None, 3]),
    (1005, '{{1,2},{3,NULL}}', [[1, 2], [3, None]]),
    (1007, '[-2:-1]={7,8}', [7, 8]),
    (1007, '[0:1][2:3]={{1,2},{3,4}}', [[1, 2], [3, 4]]),
    (1007, '{{{1}},{{2}}}', [[[1]], [[2]]]),
    (1009, '{""," ","a,b","NULL","null","back\\\\slash","quo\\"te","{x}","tab\there",é,NULL}',
     ['', ' ', 'a,b', 'NULL', 'null', 'back\\slash', 'quo"te', '{x}', 'tab\there', 'é', None]),
    (1231, '{NaN,1.50,NULL}', ['nan', Decimal('1.50'), None]),
    (1185, '{"2024-01-01 00:00:00+00",infinity}',
     [dt.datetime(2024, 1, 1, tzinfo=UTC), 'infinity']),
    (1182, '{2024-01-01,infinity,"0001-01-01 BC"}',
     [dt.date(2024, 1, 1), 'infinity', '0001-01-01 BC']),
    (1001, '{"\\\\x00ff","\\\\x"}', [b'\x00\xff', b'']),
    (3807, '{"{\\"a\\": [1, \\"x,y\\"]}","null"}', ['{"a": [1, "x,y"]}', 'null']),
    (1000, '{t,f,NULL}', [True, False, None]),
    (1022, '{1.5,NaN,-Infinity}', [1.5, 'nan', -math.inf]),
    (1020, '{(3,4),(1,2);(2,2),(0,0)}', ['(3,4),(1,2)', '(2,2),(0,0)']),  # box uses ';'
    (1017, '{"(1,2)"}', ['(1,2)']),  # point[]
    (1183, '{24:00:00,12:00:00.5}', ['24:00:00', dt.time(12, 0, 0, 500000)]),
    (1187, '{"1 day",-00:00:01}', ['1 day', '-00:00:01']),
]


def _nan_safe(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_safe(v) for v in value]
    if isinstance(value, (float, Decimal)) and value != value:  # NaN, as a comparable marker
        return 'nan'
    return value


@pytest.mark.parametrize(('oid', 'text', 'expected'), ARRAY_CASES,
                         ids=[f'{oid}:{text}' for oid, text, _ in ARRAY_CASES])
def test_array_text_forms(oid: int, text: str, expected: list[Any]) -> None:
    assert _nan_safe(parse(oid, text)) == expected


def test_user_type_arrays() -> None:
    assert parse(16872, '{x,"y y","z\\""}', types=USER_TYPES) == ['x', 'y y', 'z"']
    assert parse(16879, '{1.000,NULL}', types=USER_TYPES) == [Decimal('1.000'), None]


def test_array_delimiter_override() -> None:
    column = col(1009)
    assert text_parser(column, delimiter=';')('{a,b;c}') == ['a,b', 'c']


def test_bad_array_element_names_the_column() -> None:
    with pytest.raises(ValueError, match=r"'c' of type date\[\]"):
        parse(1182, '{2024-02-30}')


# ---------------------------------------------------------------------------------------------
# row_decoder

ROW_COLUMNS = (
    col(23, name='id'), col(1043, 24, name='name'), col(1700, 655366, name='amount'),
    col(25, name='doc'), col(17, name='blob'), col(1184, name='at'),
)


def test_row_decoder_builds_typed_row_and_names_unchanged_columns() -> None:
    decode = row_decoder(ROW_COLUMNS)
    row, unchanged = decode(('7', 'x', '1.50', UNCHANGED_TOAST, b'\x00\x01',
                             '2024-01-01 00:00:00+00'))
    assert row == {'id': 7, 'name': 'x', 'amount': Decimal('1.50'), 'blob': b'\x00\x01',
                   'at': dt.datetime(2024, 1, 1, tzinfo=UTC)}
    assert 'doc' not in row
    assert unchanged == frozenset({'doc'})
    assert list(row) == ['id', 'name', 'amount', 'blob', 'at']  # column order


def test_row_decoder_without_toast_and_with_nulls() -> None:
    row, unchanged = row_decoder(ROW_COLUMNS)(('1', None, None, None, '\\x01', None))
    assert row == {'id': 1, 'name': None, 'amount': None, 'doc': None, 'blob': b'\x01',
                   'at': None}
    assert unchanged == frozenset()


def test_row_decoder_rejects_binary_values_for_non_bytea() -> None:
    with pytest.raises(ValueError, match=r"'id' of type integer.*binary"):
        row_decoder(ROW_COLUMNS)((b'\x00\x00\x00\x07', None, None, None, None, None))


def test_row_decoder_conversion_error_names_column() -> None:
    with pytest.raises(ValueError, match=r"column 'amount' of type numeric\(10,2\).*'abc'"):
        row_decoder(ROW_COLUMNS)(('1', None, 'abc', None, None, None))


def test_row_decoder_rejects_wrong_arity() -> None:
    with pytest.raises(ValueError, match='2 values for 6 columns'):
        row_decoder(ROW_COLUMNS)(('1', None))


# ---------------------------------------------------------------------------------------------
# wire_row_decoder: the fast path must give exactly the general path's rows, or decline

_TEXT_CASES = [(oid, text) for oid, text, _ in SCALAR_CASES]


@st.composite
def wire_rows(draw: Any) -> tuple[tuple[Column, ...], tuple[Any, ...]]:
    cases = draw(st.lists(st.sampled_from(_TEXT_CASES), min_size=1, max_size=8))
    columns = tuple(col(oid, name=f'c{i}') for i, (oid, _) in enumerate(cases))
    values = tuple(draw(st.sampled_from([text, None, text, UNCHANGED_TOAST, b'\x01']))
                   for _, text in cases)
    return columns, values


@given(wire_rows())
def test_wire_row_decoder_agrees_with_the_general_path(case: Any) -> None:
    columns, values = case
    frame = b'I\x00\x00\x00\x01N' + tuple_data(values)
    fast = wire_row_decoder(columns)(frame, 6)
    try:
        row, unchanged = row_decoder(columns)(values)
    except ValueError:
        assert fast is None  # a binary value for a non-bytea column: the general path says why
        return
    if unchanged or any(isinstance(v, bytes) for v in values):
        assert fast is None  # not text or null: left to the general path
        return
    assert fast == (row, len(frame))
    assert [type(v) for v in fast[0].values()] == [type(v) for v in row.values()]


def test_wire_row_decoder_declines_what_it_cannot_read() -> None:
    columns = ROW_COLUMNS
    good = ('7', 'x', '1.50', None, '\\x01', '2024-01-01 00:00:00+00')
    decode = wire_row_decoder(columns)
    frame = tuple_data(good)
    assert decode(frame, 0) == ({'id': 7, 'name': 'x', 'amount': Decimal('1.50'), 'doc': None,
                                 'blob': b'\x01', 'at': dt.datetime(2024, 1, 1, tzinfo=UTC)},
                                len(frame))
    assert decode(frame[:-3], 0) is None  # truncated: the last value overruns the frame
    assert decode(tuple_data(good[:5]), 0) is None  # one value short
    assert decode(tuple_data(('7', 'x', 'abc', None, None, None)), 0) is None  # bad numeric
    assert decode(tuple_data(('7x', None, None, None, None, None)), 0) is None  # bad integer
    assert decode(frame.replace(b't', b'q', 1), 0) is None  # unknown column kind


def test_wire_row_decoder_column_names_are_data_not_code() -> None:
    name = "x']=1\nimport os\nos._exit(3)#"
    columns = (col(23, name=name), col(25, name='"; DROP'))
    assert wire_row_decoder(columns)(tuple_data(('5', 'y')), 0) == (
        {name: 5, '"; DROP': 'y'}, 14)


# ---------------------------------------------------------------------------------------------
# Properties: generate a value, print it the way PostgreSQL does, parse, compare.

@given(st.integers(-(2**63), 2**63 - 1))
def test_int8_roundtrip(value: int) -> None:
    assert parse(20, str(value)) == value


def pg_float_out(value: float) -> str:
    if math.isnan(value):
        return 'NaN'
    if math.isinf(value):
        return 'Infinity' if value > 0 else '-Infinity'
    # Shortest round-trip digits, exponent form outside [1e-4, 1e15) as float8out prints.
    text = repr(value)
    if abs(value) >= 1e15 or (value != 0 and abs(value) < 1e-4):
        text = f'{value:.17e}'
        mantissa, exponent = text.split('e')
        for digits in range(1, 18):
            candidate = f'{value:.{digits - 1}e}'
            if float(candidate) == value:
                mantissa, exponent = candidate.split('e')
                break
        text = f'{mantissa}e{exponent[0]}{int(exponent[1:]):02d}'
    return text.removesuffix('.0') if text.endswith('.0') else text


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_float8_roundtrip(value: float) -> None:
    got = parse(701, pg_float_out(value))
    assert (math.isnan(got) and math.isnan(value)) or got == value
    assert math.copysign(1.0, got) == math.copysign(1.0, value) or math.isnan(value)


def pg_numeric_out(value: Decimal) -> str:
    if value.is_nan():
        return 'NaN'
    if value.is_infinite():
        return '-Infinity' if value.is_signed() else 'Infinity'
    text = format(value, 'f')
    return text.lstrip('-') if value.is_zero() else text  # numeric has no negative zero


@given(st.decimals(allow_nan=True, allow_infinity=True, places=None))
def test_numeric_roundtrip(value: Decimal) -> None:
    assume(not value.is_snan())
    text = pg_numeric_out(value)
    got = parse(1700, text)
    assert str(got) == text or (got.is_nan() and value.is_nan()) or pg_numeric_out(got) == text
    if value.is_finite():
        assert got == value


def pg_time_out(value: dt.time) -> str:
    text = value.strftime('%H:%M:%S')
    if value.microsecond:
        text += f'.{value.microsecond:06d}'.rstrip('0')
    return text


def pg_offset_out(seconds: int) -> str:
    sign = '-' if seconds < 0 else '+'
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = f'{sign}{hours:02d}'
    if minutes or secs:
        text += f':{minutes:02d}'
    if secs:
        text += f':{secs:02d}'
    return text


@given(st.times())
def test_time_roundtrip(value: dt.time) -> None:
    assert parse(1083, pg_time_out(value)) == value


@given(st.dates())
def test_date_roundtrip(value: dt.date) -> None:
    assert parse(1082, f'{value.year:04d}-{value.month:02d}-{value.day:02d}') == value


@given(st.datetimes())
def test_timestamp_roundtrip(value: dt.datetime) -> None:
    text = f'{value.year:04d}-{value:%m-%d} {pg_time_out(value.time())}'
    assert parse(1114, text) == value


@given(st.datetimes(), st.integers(-(16 * 3600 - 1), 16 * 3600 - 1))
def test_timestamptz_roundtrip_from_any_offset(utc: dt.datetime, offset: int) -> None:
    try:
        local = utc + dt.timedelta(seconds=offset)
    except OverflowError:
        assume(False)
        return
    text = f'{local.year:04d}-{local:%m-%d} {pg_time_out(local.time())}{pg_offset_out(offset)}'
    got = parse(1184, text)
    assert got == utc.replace(tzinfo=UTC)
    assert got.tzinfo is UTC


@given(st.binary(max_size=64))
def test_bytea_roundtrip_hex_and_escape(value: bytes) -> None:
    assert parse(17, '\\x' + value.hex()) == value
    escaped = ''.join('\\\\' if b == 92 else chr(b) if 32 <= b < 127 else f'\\{b:03o}'
                      for b in value)
    assert parse(17, escaped) == value


def pg_array_element(text: str) -> str:
    # array_out quotes empty strings, NULL look-alikes, and anything with special characters.
    if text == '' or text.upper() == 'NULL' or re.search(r'[{}",\\\s]', text):
        return '"' + text.replace('\\', '\\\\').replace('"', '\\"') + '"'
    return text


def pg_array_out(value: Any, element_out: Any) -> str:
    if isinstance(value, list):
        return '{' + ','.join(pg_array_out(v, element_out) for v in value) + '}'
    return 'NULL' if value is None else element_out(value)


def _rectangular(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    def build(shape: list[int]) -> st.SearchStrategy[list[Any]]:
        if len(shape) == 1:
            return st.lists(st.one_of(st.none(), element), min_size=shape[0],
                            max_size=shape[0])
        return st.lists(build(shape[1:]), min_size=shape[0], max_size=shape[0])
    return st.lists(st.integers(1, 3), min_size=1, max_size=3).flatmap(build)


_array_text = st.text(st.characters(blacklist_characters='\0', blacklist_categories=('Cs',)),
                      max_size=8)


@given(st.one_of(st.just([]), _rectangular(st.integers(-(2**31), 2**31 - 1))),
       st.booleans(), st.integers(-5, 5))
def test_int_array_roundtrip(value: list[Any], decorate: bool, lower: int) -> None:
    text = pg_array_out(value, str)
    if decorate and value:
        dims, level = '', value
        while isinstance(level, list):
            dims += f'[{lower}:{lower + len(level) - 1}]'
            level = level[0]
        text = f'{dims}={text}'
    assert parse(1007, text) == value


@given(st.one_of(st.just([]), _rectangular(_array_text)))
def test_text_array_roundtrip(value: list[Any]) -> None:
    assert parse(1009, pg_array_out(value, pg_array_element)) == value


@given(_rectangular(st.decimals(allow_nan=False, allow_infinity=False, places=3)))
def test_numeric_array_roundtrip(value: list[Any]) -> None:
    got = parse(1231, pg_array_out(value, pg_numeric_out))
    assert got == value
