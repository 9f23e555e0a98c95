"""The Debezium JSON and CloudEvents encodings: lossless round trips and precise errors."""
from __future__ import annotations

import copy
import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit import strategies as cst
from transforms.envelope import (
    ChangeEvent,
    Column,
    EnvelopeError,
    Kind,
    Op,
    SourcePosition,
    TableSchema,
    TransactionInfo,
    debezium_json_bytes,
    decode_json_value,
    dumps,
    dumps_bytes,
    encode_json_value,
    from_cloudevent,
    from_debezium_json,
    to_cloudevent,
    to_debezium_json,
)

events = cst.table_schemas().flatmap(cst.change_events)
column_values = cst.columns().flatmap(lambda c: st.tuples(st.just(c), cst.values(c)))


def _over_the_wire(doc: dict[str, Any]) -> Any:
    return json.loads(dumps(doc))


@given(events)
def test_debezium_json_round_trip_is_lossless(event: ChangeEvent) -> None:
    decoded = from_debezium_json(_over_the_wire(to_debezium_json(event)), event.table)
    assert cst.comparable(decoded) == cst.comparable(event)


@given(events)
def test_debezium_json_bytes_is_the_general_encoding_byte_for_byte(event: ChangeEvent) -> None:
    assert debezium_json_bytes(event) == dumps_bytes(to_debezium_json(event))


def test_debezium_json_bytes_converts_other_zones_and_falls_back_for_big_integers() -> None:
    table = TableSchema('s', 't', (Column('id', Kind.INT64), Column('at', Kind.TIMESTAMPTZ),
                                   Column('n', Kind.DECIMAL)), key=('id',))
    zone = dt.timezone(dt.timedelta(hours=5, minutes=30))
    event = ChangeEvent(op=Op.CREATE, table=table,
                        source=SourcePosition('postgresql', 's', 'd', 's', 't', 0),
                        after={'id': 1, 'at': dt.datetime(2024, 1, 1, 5, 30, tzinfo=zone),
                               'n': Decimal('1.50')})
    line = debezium_json_bytes(event)
    assert json.loads(line)['after'] == {'id': 1, 'at': '2024-01-01T00:00:00Z', 'n': '1.50'}
    assert line == dumps_bytes(to_debezium_json(event))
    assert event.after is not None and event.after['at'].tzinfo is zone  # not changed in place
    huge = event.replace(after={'id': 2**70, 'at': None, 'n': None})
    assert json.loads(debezium_json_bytes(huge))['after']['id'] == 2**70


@given(events)
def test_cloudevent_round_trip_is_lossless(event: ChangeEvent) -> None:
    decoded = from_cloudevent(_over_the_wire(to_cloudevent(event)), event.table)
    assert cst.comparable(decoded) == cst.comparable(event)


@given(column_values)
def test_every_kind_value_survives_json_text(column_value: tuple[Column, Any]) -> None:
    column, value = column_value
    wire = json.loads(json.dumps(encode_json_value(column, value), allow_nan=False))
    assert cst.comparable(decode_json_value(column, wire)) == cst.comparable(value)


@given(cst.columns(kinds=st.just(Kind.TIMESTAMPTZ)).flatmap(cst.values))
def test_timestamptz_is_written_in_utc_and_read_back_aware_in_utc(value: Any) -> None:
    column = Column('t', Kind.TIMESTAMPTZ)
    encoded = encode_json_value(column, value)
    decoded = decode_json_value(column, encoded)
    if isinstance(value, str):
        assert decoded == value
    else:
        assert encoded.endswith('Z')
        assert decoded.tzinfo is dt.timezone.utc
        # Not `decoded == value`: Python never calls a datetime in a DST gap or fold equal to
        # one in another zone (PEP 495), so compare instants in UTC.
        assert decoded == value.astimezone(dt.timezone.utc)


# ---------------------------------------------------------------------------------------------
# The value rules of DESIGN.md, one by one

def _json(kind: Kind, value: Any, **column: Any) -> Any:
    return encode_json_value(Column('c', kind, **column), value)


def test_special_floats_are_strings_and_finite_floats_numbers() -> None:
    assert _json(Kind.FLOAT64, math.nan) == 'NaN'
    assert _json(Kind.FLOAT64, -math.inf) == '-Infinity'
    assert _json(Kind.FLOAT32, 1.5) == 1.5
    assert math.copysign(1, decode_json_value(Column('c', Kind.FLOAT64), -0.0)) == -1


def test_decimals_are_exact_strings_keeping_their_scale() -> None:
    assert _json(Kind.DECIMAL, Decimal('1.50')) == '1.50'
    assert _json(Kind.DECIMAL, Decimal('NaN')) == 'NaN'
    digits = '12345678901234567890123456789012345678901234567890.000000000000000000001'
    assert decode_json_value(Column('c', Kind.DECIMAL), digits) == Decimal(digits)
    assert str(decode_json_value(Column('c', Kind.DECIMAL), '-0.00')) == '-0.00'


def test_temporal_values_and_their_text_forms() -> None:
    assert _json(Kind.DATE, dt.date(44, 3, 15)) == '0044-03-15'
    assert _json(Kind.TIMESTAMP, dt.datetime.max) == '9999-12-31T23:59:59.999999'
    paris = dt.timezone(dt.timedelta(hours=1))
    assert _json(Kind.TIMESTAMPTZ, dt.datetime(2024, 1, 1, 0, 30, tzinfo=paris)) == \
        '2023-12-31T23:30:00Z'
    for kind, text in [(Kind.DATE, '10000-01-01'), (Kind.DATE, '0044-03-15 BC'),
                       (Kind.TIME, '24:00:00'), (Kind.TIMESTAMP, 'infinity'),
                       (Kind.TIMESTAMPTZ, '-infinity')]:
        assert _json(kind, text) == text
        assert decode_json_value(Column('c', kind), text) == text


def test_json_document_null_is_not_sql_null() -> None:
    table = TableSchema('public', 'docs', (Column('doc', Kind.JSON),))
    source = SourcePosition('postgresql', 'pg', 'db', 'public', 'docs', 0)
    for value in ('null', None):
        event = ChangeEvent(Op.CREATE, table, source, after={'doc': value})
        doc = _over_the_wire(to_debezium_json(event))
        assert doc['after']['doc'] == value
        assert from_debezium_json(doc, table).after == {'doc': value}


def test_bytes_are_base64_and_arrays_json_arrays() -> None:
    assert _json(Kind.BYTES, b'') == ''
    assert _json(Kind.BYTES, b'\x00\xff') == 'AP8='
    assert _json(Kind.ARRAY, [[1.5, None], [math.nan]], element=Kind.FLOAT64) == \
        [[1.5, None], ['NaN']]
    assert _json(Kind.ARRAY, [Decimal('1.0'), None], element=Kind.DECIMAL) == ['1.0', None]


def test_unchanged_column_is_absent_not_a_placeholder() -> None:
    table = TableSchema('public', 't', (Column('id', Kind.INT32), Column('body', Kind.TEXT)))
    source = SourcePosition('postgresql', 'pg', 'db', 'public', 't', 0)
    event = ChangeEvent(Op.UPDATE, table, source, after={'id': 1}, unchanged=frozenset({'body'}))
    doc = to_debezium_json(event)
    assert doc['after'] == {'id': 1}
    assert doc['unchanged'] == ['body']
    assert from_debezium_json(doc, table) == event


def test_cloudevent_ids_tell_apart_the_events_of_one_position() -> None:
    """A snapshot's rows share its position; a snapshot_complete or schema_change event shares
    a row's; a TRUNCATE of two tables is one position.  With the position as the id, a
    consumer deduplicating by id kept one row of a whole snapshot."""
    from transforms.envelope import snapshot_complete

    keyed = TableSchema('public', 't', (Column('id', Kind.INT32), Column('v', Kind.TEXT)),
                        key=('id',))
    keyless = TableSchema('public', 'log', (Column('v', Kind.TEXT),))
    other = TableSchema('public', 'u', (Column('id', Kind.INT32),), key=('id',))
    at = SourcePosition('postgresql', 'pg', 'db', 'public', 't', 1700000000123, lsn=0,
                        commit_lsn=0x20)
    events = [
        ChangeEvent(Op.READ, keyed, at, after={'id': 1, 'v': 'a'}),
        ChangeEvent(Op.READ, keyed, at, after={'id': 2, 'v': 'a'}),
        ChangeEvent(Op.READ, keyless, at, after={'v': 'a'}),
        ChangeEvent(Op.READ, keyless, at, after={'v': 'b'}),
        snapshot_complete(keyed, at, 2, 0),
        ChangeEvent(Op.MESSAGE, keyed, at, message={'kind': 'schema_change'}),
        ChangeEvent(Op.TRUNCATE, keyed, at),
        ChangeEvent(Op.TRUNCATE, other, at),
    ]
    ids = [to_cloudevent(event)['id'] for event in events]
    assert len(set(ids)) == len(events), ids
    # A replay (same position, same row; another time) keeps its id; a changed value of the
    # same key does too: it is the same row of the same snapshot.
    again = ChangeEvent(Op.READ, keyed, at, after={'id': 1, 'v': 'z'}, ts_ms=9)
    assert to_cloudevent(again)['id'] == ids[0]


def test_cloudevent_id_is_stable_per_source_position() -> None:
    table = TableSchema('public', 't', (Column('id', Kind.INT32),))
    source = SourcePosition('postgresql', 'pg', 'db', 'public', 't', 1700000000123,
                            lsn=0x10, commit_lsn=0x20)
    first = to_cloudevent(ChangeEvent(Op.CREATE, table, source, after={'id': 1}, ts_ms=1))
    replay = to_cloudevent(ChangeEvent(Op.CREATE, table, source, after={'id': 1}, ts_ms=2))
    later = to_cloudevent(ChangeEvent(Op.CREATE, table, SourcePosition(
        'postgresql', 'pg', 'db', 'public', 't', 1700000000124, lsn=0x30, commit_lsn=0x40),
        after={'id': 2}))
    assert first['id'] == replay['id'] != later['id']
    assert first['time'] == '2023-11-14T22:13:20.123Z'
    assert first['subject'] == 'public.t'


# ---------------------------------------------------------------------------------------------
# Malformed envelopes: every error names the field that is wrong

TABLE = TableSchema('public', 'orders', (
    Column('id', Kind.INT64, nullable=False),
    Column('amount', Kind.DECIMAL, precision=10, scale=2),
    Column('paid', Kind.BOOLEAN),
    Column('at', Kind.TIMESTAMPTZ),
    Column('price', Kind.FLOAT64),
    Column('photo', Kind.BYTES),
    Column('tags', Kind.ARRAY, element=Kind.STRING),
), key=('id',))
EVENT = ChangeEvent(
    op=Op.UPDATE,
    table=TABLE,
    source=SourcePosition('postgresql', 'pg', 'shop', 'public', 'orders', 1700000000000,
                          tx_id=7, lsn=100, commit_lsn=90),
    before={'id': 1, 'amount': Decimal('1.00')},
    after={'id': 1, 'amount': Decimal('2.50'), 'paid': True,
           'at': dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), 'price': 1.5,
           'photo': b'\x01', 'tags': ['a', None]},
    ts_ms=1700000000100,
    transaction=TransactionInfo('7:90', 3, 1),
    schema_version=2,
)


def _delete(doc: dict[str, Any], path: str) -> None:
    *parents, last = path.split('.')
    for part in parents:
        doc = doc[part]
    del doc[last]


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split('.')
    for part in parents:
        doc = doc[part]
    doc[last] = value


@pytest.mark.parametrize('path', [
    'op', 'before', 'after', 'source', 'ts_ms', 'source.connector', 'source.ts_ms',
    'source.table', 'transaction.id', 'transaction.total_order',
    'transaction.data_collection_order',
])
def test_missing_field_is_named(path: str) -> None:
    doc = to_debezium_json(EVENT)
    _delete(doc, path)
    with pytest.raises(EnvelopeError) as err:
        from_debezium_json(doc, TABLE)
    assert err.value.field == path
    assert 'missing' in str(err.value)


@pytest.mark.parametrize(('path', 'value'), [
    ('op', 'x'),
    ('op', 1),
    ('ts_ms', '1700000000100'),
    ('ts_ms', True),
    ('source.ts_ms', '1700000000000'),
    ('source.lsn', 'A/1'),
    ('source.file', 3),
    ('source.snapshot', False),
    ('transaction.id', 7),
    ('transaction.total_order', 1.5),
    ('schema_version', '2'),
    ('message', 'hello'),
    ('after.id', '1'),
    ('after.id', 1.0),
    ('after.id', True),
    ('after.amount', 2.5),
    ('after.amount', 'two'),
    ('after.paid', 'true'),
    ('after.at', 1704067200000),
    ('after.at', '2024-01-01T00:00:00+05:00Z'),
    ('after.price', 'fast'),
    ('after.price', math.inf),  # what json.loads makes of 1e400 or a bare Infinity
    ('after.price', 10**400),
    ('after.photo', 'not base64!'),
    ('after.tags', 'a,b'),
    ('after.tags', [1]),
    ('after.nope', 1),
    ('before', [1]),
])
def test_malformed_field_is_named(path: str, value: Any) -> None:
    doc = copy.deepcopy(to_debezium_json(EVENT))
    _set(doc, path, value)
    with pytest.raises(EnvelopeError) as err:
        from_debezium_json(doc, TABLE)
    assert err.value.field == path


def test_unknown_unchanged_column_is_named() -> None:
    doc = to_debezium_json(EVENT)
    doc['unchanged'] = ['id', 'ghost']
    with pytest.raises(EnvelopeError) as err:
        from_debezium_json(doc, TABLE)
    assert err.value.field == 'unchanged[1]'


@pytest.mark.parametrize('doc', [None, [], 'x'])
def test_envelope_that_is_not_an_object(doc: Any) -> None:
    with pytest.raises(EnvelopeError):
        from_debezium_json(doc, TABLE)


@pytest.mark.parametrize(('path', 'value', 'field'), [
    ('specversion', '0.3', 'specversion'),
    ('id', None, 'id'),
    ('data', 'x', 'data'),
    ('data.op', 'x', 'data.op'),
    ('data.after.id', 'one', 'data.after.id'),
])
def test_malformed_cloudevent_names_the_field(path: str, value: Any, field: str) -> None:
    doc = to_cloudevent(EVENT)
    _set(doc, path, value)
    with pytest.raises(EnvelopeError) as err:
        from_cloudevent(doc, TABLE)
    assert err.value.field == field


def test_a_row_json_that_does_not_convert_is_declined_not_raised() -> None:
    from transforms.envelope import debezium_row_json

    table = TableSchema('public', 't', (Column('b', Kind.BYTES, 'bytea'),
                                        Column('d', Kind.DATE, 'date')))
    assert debezium_row_json(table, {'b': b'\x00', 'd': None}) == b'{"b":"AA==","d":null}'
    assert debezium_row_json(table, {'b': 'not bytes', 'd': None}) is None
    assert debezium_row_json(table, {'b': None, 'd': 5}) is None
    assert debezium_row_json(table, {'b': None, 'd': None, 'x': 2**70}) is None


@pytest.mark.parametrize(('schema', 'table', 'name'), [
    ('public', 'orders', 'public.orders'),
    ('', 'orders', 'orders'),
    ('a.b', 'c', '"a.b".c'),
    ('a', 'b.c', 'a."b.c"'),
    ('', 'b.c', '"b.c"'),
    ('we"ird', 't', '"we""ird".t'),
    ('Shop', 'Order Items', 'Shop.Order Items'),  # only dots and quotes are quoted
])
def test_table_names_quote_the_parts_that_would_make_them_ambiguous(schema: str, table: str,
                                                                   name: str) -> None:
    assert TableSchema(schema, table, ()).name == name
    assert TableSchema(schema, table, ()).dotted_name == (f'{schema}.{table}' if schema
                                                          else table)


@given(st.text(max_size=6), st.text(min_size=1, max_size=6), st.text(max_size=6),
       st.text(min_size=1, max_size=6))
def test_two_tables_never_share_a_name(schema: str, table: str, schema2: str,
                                       table2: str) -> None:
    if (schema, table) != (schema2, table2):
        assert TableSchema(schema, table, ()).name != TableSchema(schema2, table2, ()).name
