"""The Avro encoding: lossless round trips through real fastavro files, schema shape, errors."""
from __future__ import annotations

import datetime as dt
import io
import math
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit import strategies as cst
from transforms import envelope_avro
from transforms.envelope import (
    ChangeEvent,
    Column,
    EnvelopeError,
    Kind,
    Op,
    SourcePosition,
    TableSchema,
    TransactionInfo,
)
from transforms.envelope_avro import (
    avro_record_converter,
    avro_schema,
    from_avro_record,
    to_avro_record,
)

batches = cst.table_schemas().flatmap(
    lambda table: st.lists(cst.change_events(table), min_size=1, max_size=3))


def _through_avro_file(table: TableSchema, events: list[ChangeEvent],
                       version: int | None = None) -> list[dict[str, Any]]:
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(avro_schema(table, version)),
                    [to_avro_record(e) for e in events])
    out.seek(0)
    return list(fastavro.reader(out))


@given(batches)
def test_avro_file_round_trip_is_lossless(events: list[ChangeEvent]) -> None:
    table = events[0].table
    records = _through_avro_file(table, events)
    decoded = [from_avro_record(record, table) for record in records]
    assert [cst.comparable(e) for e in decoded] == [cst.comparable(e) for e in events]


@given(cst.table_schemas().flatmap(cst.change_events))
def test_record_round_trip_without_a_file(event: ChangeEvent) -> None:
    decoded = from_avro_record(to_avro_record(event), event.table)
    assert cst.comparable(decoded) == cst.comparable(event)


@given(cst.table_schemas())
def test_schema_is_valid_avro_with_unique_names_mapped_back(table: TableSchema) -> None:
    schema = avro_schema(table)
    fastavro.parse_schema(schema)
    row = schema['fields'][0]['type'][1]
    names = [f['name'] for f in row['fields']]
    assert len(set(names)) == len(names)
    assert [f.get('sql_name', f['name']) for f in row['fields']] == \
        [c.name for c in table.columns]


# ---------------------------------------------------------------------------------------------
# Schema shape

def _row_fields(table: TableSchema) -> dict[str, dict[str, Any]]:
    row = avro_schema(table)['fields'][0]['type'][1]
    return {f.get('sql_name', f['name']): f for f in row['fields']}


def test_envelope_is_debezium_shaped_and_named_after_the_table() -> None:
    table = TableSchema('Sales Data', '2024 orders', (Column('id', Kind.INT64),))
    schema = avro_schema(table, version=3)
    assert schema['name'] == 'Envelope'
    assert schema['namespace'] == 'Sales_Data._2024_orders'
    assert schema['schema_version'] == 3
    assert [f['name'] for f in schema['fields']] == [
        'before', 'after', 'source', 'op', 'ts_ms', 'transaction', 'schema_version',
        'unchanged', 'message', 'before_absent', 'after_absent']
    assert 'schema_version' not in avro_schema(table)


@pytest.mark.parametrize(('column', 'branches'), [
    (Column('c', Kind.BOOLEAN), ['boolean']),
    (Column('c', Kind.INT16), ['int']),
    (Column('c', Kind.INT64), ['long']),
    (Column('c', Kind.FLOAT32), ['double']),
    (Column('c', Kind.DECIMAL), ['string']),
    (Column('c', Kind.DECIMAL, precision=10, scale=2),
     ['string', {'type': 'bytes', 'logicalType': 'decimal', 'precision': 10, 'scale': 2}]),
    (Column('c', Kind.DECIMAL, precision=3, scale=5), ['string']),
    (Column('c', Kind.DATE), ['string', {'type': 'int', 'logicalType': 'date'}]),
    (Column('c', Kind.TIME), ['string', {'type': 'long', 'logicalType': 'time-micros'}]),
    (Column('c', Kind.TIMESTAMP),
     ['string', {'type': 'long', 'logicalType': 'local-timestamp-micros'}]),
    (Column('c', Kind.TIMESTAMPTZ),
     ['string', {'type': 'long', 'logicalType': 'timestamp-micros'}]),
    (Column('c', Kind.BYTES), ['bytes']),
    (Column('c', Kind.UUID), ['string']),
    (Column('c', Kind.JSON), ['string']),
    (Column('c', Kind.ARRAY, element=Kind.INT32),
     ['string', {'type': 'array', 'items': ['null', 'int']}]),
    (Column('c', Kind.ARRAY, element=Kind.DATE),
     ['string', {'type': 'array', 'items': ['null', 'string',
                                           {'type': 'int', 'logicalType': 'date'}]}]),
])
def test_column_kind_maps_to_avro_type(column: Column, branches: list[Any]) -> None:
    field = _row_fields(TableSchema('s', 't', (column,)))['c']
    assert field['type'] == ['null', *branches]
    assert field['default'] is None


def test_invalid_column_names_are_sanitised_uniquely_and_kept_as_sql_name() -> None:
    table = TableSchema('public', 't', tuple(Column(name, Kind.INT32) for name in (
        'order id', 'order_id', '1st', 'order-id', 'prénom')))
    fields = _row_fields(table)
    assert {name: f['name'] for name, f in fields.items()} == {
        'order id': 'order_id_ae40deab', 'order_id': 'order_id', '1st': '_1st_e01ddf65',
        'order-id': 'order_id_e3f2b5e8', 'prénom': 'pr_nom_3d79ffd7'}
    assert 'sql_name' not in fields['order_id']
    assert fields['order id']['sql_name'] == 'order id'
    event = ChangeEvent(Op.CREATE, table, _source(), after={
        'order id': 1, 'order_id': 2, '1st': 3, 'order-id': 4, 'prénom': 5})
    [record] = _through_avro_file(table, [event])
    assert record['after']['order_id_ae40deab'] == 1 and record['after']['order_id'] == 2
    assert from_avro_record(record, table) == event


def test_sanitised_name_does_not_move_when_columns_are_added() -> None:
    """Readers match fields by name: a later real `order_id` must not take `order id`'s."""
    v1 = TableSchema('public', 't', (Column('order id', Kind.INT32),))
    v2 = TableSchema('public', 't', (Column('order_id', Kind.INT32), *v1.columns))
    assert _row_fields(v1)['order id']['name'] == _row_fields(v2)['order id']['name']


# ---------------------------------------------------------------------------------------------
# What fastavro gives back, value by value

def _source() -> SourcePosition:
    return SourcePosition('postgresql', 'pg', 'db', 'public', 't', 1700000000000, lsn=1)


def _one(column: Column, value: Any) -> tuple[Any, Any]:
    """(the value as stored in the Avro record, the value decoded from the file)."""
    table = TableSchema('public', 't', (column,))
    event = ChangeEvent(Op.CREATE, table, _source(), after={column.name: value})
    [record] = _through_avro_file(table, [event])
    return record['after'][column.name], from_avro_record(record, table).after[column.name]


def test_timestamptz_in_any_offset_reads_back_as_the_same_instant_in_utc() -> None:
    tokyo = dt.timezone(dt.timedelta(hours=9))
    stored, value = _one(Column('c', Kind.TIMESTAMPTZ),
                         dt.datetime(2024, 1, 1, 8, 0, 0, 1, tzinfo=tokyo))
    assert value == dt.datetime(2023, 12, 31, 23, 0, 0, 1, tzinfo=dt.timezone.utc)
    assert value.tzinfo is dt.timezone.utc
    assert stored.tzinfo is dt.timezone.utc


@pytest.mark.parametrize(('value', 'branch'), [
    (Decimal('123.45'), Decimal),
    (Decimal('-0.01'), Decimal),
    (Decimal('1.5'), str),  # the decimal branch would read back as 1.50
    (Decimal('-0.00'), str),  # and lose the sign of zero
    (Decimal('123456.78'), str),  # more digits than numeric(5,2)
    (Decimal('NaN'), str),
    (Decimal('-Infinity'), str),
])
def test_decimal_uses_the_typed_branch_only_when_exact(value: Decimal, branch: type) -> None:
    stored, decoded = _one(Column('c', Kind.DECIMAL, precision=5, scale=2), value)
    assert isinstance(stored, branch)
    assert str(decoded) == str(value)


@pytest.mark.parametrize(('kind', 'value'), [
    (Kind.DATE, '10000-01-01'),
    (Kind.DATE, '2024-01-01'),  # fastavro's date branch would parse this str into a date
    (Kind.DATE, dt.date.min),
    (Kind.TIME, '24:00:00'),
    (Kind.TIME, dt.time(23, 59, 59, 999999)),
    (Kind.TIMESTAMP, '0044-03-15 12:00:00 BC'),
    (Kind.TIMESTAMP, dt.datetime.max),
    (Kind.TIMESTAMPTZ, 'infinity'),
    (Kind.TIMESTAMPTZ, dt.datetime.min.replace(tzinfo=dt.timezone.utc)),
])
def test_temporal_values_and_text_forms_come_back_as_they_were(kind: Kind, value: Any) -> None:
    stored, decoded = _one(Column('c', kind), value)
    assert type(stored) is type(value)
    assert decoded == value


def test_arrays_one_dimension_typed_several_as_json_text() -> None:
    column = Column('c', Kind.ARRAY, element=Kind.FLOAT64)
    stored, decoded = _one(column, [1.5, None, math.inf])
    assert stored == [1.5, None, math.inf]
    stored, decoded = _one(column, [[1.5, None], [math.nan]])
    assert stored == '[[1.5,null],["NaN"]]'
    assert decoded[0] == [1.5, None] and math.isnan(decoded[1][0])


def test_absent_columns_stay_absent_and_nulls_stay_null() -> None:
    table = TableSchema('public', 't', (Column('id', Kind.INT32), Column('a', Kind.TEXT),
                                        Column('b', Kind.TEXT)))
    event = ChangeEvent(Op.UPDATE, table, _source(), before={'id': 1},
                        after={'id': 1, 'a': None}, unchanged=frozenset({'b'}))
    [record] = _through_avro_file(table, [event])
    assert record['before_absent'] == ['a', 'b']
    assert record['unchanged'] == ['b'] and record['after_absent'] == []
    assert from_avro_record(record, table) == event


def test_record_without_the_absent_lists_reads_as_complete_rows() -> None:
    table = TableSchema('public', 't', (Column('id', Kind.INT32),))
    record = to_avro_record(ChangeEvent(Op.CREATE, table, _source(), after={'id': 1}))
    del record['before_absent'], record['after_absent'], record['unchanged']
    assert from_avro_record(record, table).after == {'id': 1}


# ---------------------------------------------------------------------------------------------
# Errors name the field

TABLE = TableSchema('public', 'orders', (
    Column('id', Kind.INT32),
    Column('total', Kind.INT64),
    Column('at', Kind.TIMESTAMPTZ),
    Column('local', Kind.TIMESTAMP),
    Column('day', Kind.DATE),
    Column('t', Kind.TIME),
    Column('amount', Kind.DECIMAL, precision=5, scale=2),
    Column('order id', Kind.TEXT),
))


@pytest.mark.parametrize(('after', 'field'), [
    ({'id': 2**31}, 'after.id'),
    ({'id': '1'}, 'after.id'),
    ({'id': True}, 'after.id'),
    ({'total': -(2**63) - 1}, 'after.total'),
    ({'at': dt.datetime(2024, 1, 1)}, 'after.at'),  # naive: fastavro would use local time
    ({'at': dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))}, 'after.at'),
    ({'local': dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)}, 'after.local'),
    ({'day': dt.datetime(2024, 1, 1)}, 'after.day'),
    ({'t': dt.time(1, tzinfo=dt.timezone.utc)}, 'after.t'),
    ({'amount': 1.5}, 'after.amount'),
    ({'order id': b'x'}, 'after.order id'),
    ({'ghost': 1}, 'after.ghost'),
])
def test_value_that_avro_cannot_hold_is_named(after: dict[str, Any], field: str) -> None:
    event = ChangeEvent(Op.CREATE, TABLE, _source(), after=after)
    with pytest.raises(EnvelopeError) as err:
        to_avro_record(event)
    assert err.value.field == field


@pytest.mark.parametrize(('change', 'field'), [
    ({'source': SourcePosition('postgresql', 'pg', 'db', 's', 't', 0, lsn=2**64 - 1)},
     'source.lsn'),
    ({'ts_ms': 2**63}, 'ts_ms'),
    ({'schema_version': 2**63}, 'schema_version'),  # ids are 63-bit fingerprints
    ({'transaction': TransactionInfo('x', -(2**64), 0)}, 'transaction.total_order'),
    ({'message': {'x': math.nan}}, 'message'),
])
def test_envelope_field_that_avro_cannot_hold_is_named(change: dict[str, Any],
                                                       field: str) -> None:
    fields = {'op': Op.MESSAGE, 'table': TABLE, 'source': _source(), **change}
    with pytest.raises(EnvelopeError) as err:
        to_avro_record(ChangeEvent(**fields))
    assert err.value.field == field


def _record() -> dict[str, Any]:
    row = {c.name: None for c in TABLE.columns} | {'id': 1}
    event = ChangeEvent(Op.UPDATE, TABLE, _source(), before=row, after=row,
                        transaction=TransactionInfo('1', 1, 1), message={'a': 1})
    return _through_avro_file(TABLE, [event])[0]


@pytest.mark.parametrize(('key', 'value', 'field'), [
    ('op', 'x', 'op'),
    ('op', None, 'op'),
    ('ts_ms', 'now', 'ts_ms'),
    ('source', None, 'source'),
    ('transaction', {'id': '1', 'total_order': 1}, 'transaction.data_collection_order'),
    ('message', '{not json', 'message'),
    ('message', '[1]', 'message'),
    ('unchanged', ['ghost'], 'unchanged[0]'),
    ('after', {'id': 'one'}, 'after.id'),
    ('after', {'order_id_ae40deab': 1}, 'after.order id'),
    ('after', {'nope': 1}, 'after.nope'),
    ('before', [1], 'before'),
    ('after_absent', ['id'], 'after.id'),  # absent, yet it has a value
])
def test_malformed_record_is_named(key: str, value: Any, field: str) -> None:
    record = _record()
    record[key] = value
    with pytest.raises(EnvelopeError) as err:
        from_avro_record(record, TABLE)
    assert err.value.field == field


@pytest.mark.parametrize('key', ['op', 'before', 'after', 'source', 'ts_ms'])
def test_missing_record_field_is_named(key: str) -> None:
    record = _record()
    del record[key]
    with pytest.raises(EnvelopeError) as err:
        from_avro_record(record, TABLE)
    assert err.value.field == key


def test_missing_source_field_is_named() -> None:
    record = _record()
    del record['source']['connector']
    with pytest.raises(EnvelopeError) as err:
        from_avro_record(record, TABLE)
    assert err.value.field == 'source.connector'


# ---------------------------------------------------------------------------------------------
# The compiled conversion and the writer-only records of avro_record_converter

class _Int(int):
    pass


class _Str(str):
    pass


class _DateTime(dt.datetime):
    pass


def _unusual(column: Column) -> st.SearchStrategy[Any]:
    """Values off each column's inlined common case: subclasses, other zones, wrong types."""
    return st.one_of(
        cst.values(column),
        st.integers(-(2**64), 2**64).map(_Int),
        cst.text.map(_Str),
        st.binary(max_size=4).map(bytearray),
        st.datetimes().map(lambda d: _DateTime.fromisoformat(d.isoformat())),
        st.datetimes(timezones=st.sampled_from([dt.timezone(dt.timedelta(0)),
                                                dt.timezone(dt.timedelta(hours=-3))])),
        st.sampled_from([True, 0, 1.0, 'x', b'x', Decimal('1'), [1], [[1]], dt.date(2024, 1, 1),
                         dt.time(1, tzinfo=dt.timezone.utc), object()]),
    )


@st.composite
def _rows_of_anything(draw: Any) -> tuple[TableSchema, dict[str, Any]]:
    table = draw(cst.table_schemas())
    row = {}
    for column in table.columns:
        if draw(st.integers(0, 3)):
            row[column.name] = draw(st.none() | _unusual(column))
    if draw(st.integers(0, 9)) == 0:
        row[draw(cst.column_names())] = 1  # perhaps no column of the table
    return table, row


def _outcome(convert: Any, *args: Any) -> Any:
    try:
        return ('ok', cst.comparable(convert(*args)))
    except EnvelopeError as exc:
        return ('error', exc.field)


@given(_rows_of_anything())
def test_compiled_row_conversion_equals_the_reference(case: tuple[TableSchema, dict]) -> None:
    table, row = case
    compiled = envelope_avro._compiled(table)
    reference = _outcome(envelope_avro._row_to_avro, compiled.codec, row, 'after')
    assert _outcome(compiled.rows.convert, row, 'after') == reference
    tagged = _outcome(compiled.tagged_rows.convert, row, 'after')
    assert tagged[0] == reference[0]
    if reference[0] == 'error':
        assert tagged == reference


def _encoded(table: TableSchema, records: list[dict[str, Any]]) -> list[bytes]:
    schema = fastavro.parse_schema(avro_schema(table))
    out = []
    for record in records:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, record)
        out.append(buffer.getvalue())
    return out


@given(batches)
def test_writer_records_encode_to_the_same_bytes_as_plain_records(
        events: list[ChangeEvent]) -> None:
    table = events[0].table
    convert = avro_record_converter(table)
    assert _encoded(table, [convert(e) for e in events]) == \
        _encoded(table, [to_avro_record(e) for e in events])


def _order(**after: Any) -> ChangeEvent:
    row = {'id': 1, 'total': 1, 'at': None, 'local': None, 'day': None, 't': None,
           'amount': None, 'order id': None} | after
    return ChangeEvent(Op.UPDATE, TABLE, _source(), before={'id': 1}, after=row,
                       transaction=TransactionInfo('7:1', 2, 1), schema_version=5)


EDGE_EVENTS = [
    _order(),  # NULLs, and `before` with only the key
    _order(at='infinity', local='-infinity', day='10000-01-01', t='24:00:00'),
    _order(at=dt.datetime.min.replace(tzinfo=dt.timezone.utc), local=dt.datetime.max,
           day=dt.date.min, t=dt.time.max),
    _order(at=dt.datetime(2024, 1, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=9)))),
    _order(amount=Decimal('123.45')), _order(amount=Decimal('1.5')),
    _order(amount=Decimal('-0.00')), _order(amount=Decimal('NaN')),
    _order(id=2**31 - 1, total=-(2**63)),
    ChangeEvent(Op.UPDATE, TABLE, _source(), before=None, after={'id': 1, 'total': 2},
                unchanged=frozenset({'order id', 'day'})),  # unchanged TOASTed columns
    ChangeEvent(Op.DELETE, TABLE, _source(), before={'id': 1}),
    ChangeEvent(Op.TRUNCATE, TABLE, _source()),
    ChangeEvent(Op.MESSAGE, TABLE, _source(), schema_version=6, message={
        'kind': 'schema_change', 'version': 6, 'previous_version': 5,
        'added': ['memo'], 'removed': [], 'retyped': {}, 'key_changed': False}),
]
KINDS_TABLE = TableSchema('public', 'kinds', (
    Column('id', Kind.INT64), Column('raw', Kind.BYTES), Column('doc', Kind.JSON),
    Column('ok', Kind.BOOLEAN), Column('ratio', Kind.FLOAT64),
    Column('days', Kind.ARRAY, element=Kind.DATE),
    Column('prices', Kind.ARRAY, element=Kind.DECIMAL, precision=4, scale=2),
    Column('tags', Kind.ARRAY, element=Kind.TEXT)))
KINDS_EVENTS = [
    ChangeEvent(Op.CREATE, KINDS_TABLE, _source(), after={
        'id': 1, 'raw': b'\x00\xff', 'doc': '{"a": [1, null]}', 'ok': False, 'ratio': math.nan,
        'days': [dt.date(2024, 2, 29), None, 'infinity'],
        'prices': [Decimal('1.00'), Decimal('1.5'), None], 'tags': []}),
    ChangeEvent(Op.CREATE, KINDS_TABLE, _source(), after={
        'id': 2, 'raw': b'', 'doc': 'null', 'ok': True, 'ratio': -0.0,
        'days': [[dt.date(2024, 1, 1)], [None]], 'prices': None, 'tags': [['a', None], []]}),
]


@pytest.mark.parametrize('event', EDGE_EVENTS + KINDS_EVENTS,
                         ids=lambda e: f'{e.op.value}-{sorted((e.after or {}).items())!r}'[:60])
def test_writer_records_read_back_as_the_event(event: ChangeEvent) -> None:
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(avro_schema(event.table, 5)),
                    [avro_record_converter(event.table)(event)])
    out.seek(0)
    [record] = fastavro.reader(out)
    assert cst.comparable(from_avro_record(record, event.table)) == cst.comparable(event)


def test_equal_table_schemas_convert_alike() -> None:
    copy = TableSchema(TABLE.schema, TABLE.table, tuple(TABLE.columns))
    assert copy is not TABLE
    event = _order(amount=Decimal('1.23'))
    moved = ChangeEvent(event.op, copy, event.source, event.before, event.after,
                        transaction=event.transaction, schema_version=5)
    assert to_avro_record(moved) == to_avro_record(event)
    assert envelope_avro._compiled(copy) is envelope_avro._compiled(TABLE)


@pytest.mark.parametrize(('after', 'field'), [
    ({'id': _Int(2**31)}, 'after.id'),
    ({'id': 1.0}, 'after.id'),
    ({'at': _DateTime(2024, 1, 1)}, 'after.at'),
    ({'order id': 1}, 'after.order id'),
    ({'ghost': None}, 'after.ghost'),
])
def test_writer_records_name_the_field_that_cannot_be_held(after: dict[str, Any],
                                                           field: str) -> None:
    with pytest.raises(EnvelopeError) as err:
        avro_record_converter(TABLE)(ChangeEvent(Op.CREATE, TABLE, _source(), after=after))
    assert err.value.field == field
