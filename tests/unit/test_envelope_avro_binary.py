"""avro_encoder: the bytes (or the error) of fastavro writing to_avro_record's record."""
from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit import strategies as cst
from tests.unit.test_envelope_avro import EDGE_EVENTS, KINDS_EVENTS, TABLE, _rows_of_anything
from transforms.envelope import ChangeEvent, Column, EnvelopeError, Kind, Op, SourcePosition
from transforms.envelope_avro import avro_schema, from_avro_record, to_avro_record
from transforms.envelope_avro_binary import _Encoder, _long, avro_encoder


def _reference(event: ChangeEvent) -> Any:
    """What fastavro writes for to_avro_record(event), or the type of the error raised."""
    buffer = io.BytesIO()
    try:
        fastavro.schemaless_writer(buffer, fastavro.parse_schema(avro_schema(event.table)),
                                   to_avro_record(event))
    except Exception as exc:
        return type(exc)
    return buffer.getvalue()


def _generated(event: ChangeEvent) -> Any:
    """The encoder's own result, without its fallback to the reference."""
    encoder = avro_encoder(event.table)
    assert isinstance(encoder, _Encoder)
    try:
        return encoder._encode(event)
    except Exception as exc:
        return type(exc)


@given(cst.table_schemas().flatmap(cst.change_events))
def test_generated_code_writes_what_fastavro_writes(event: ChangeEvent) -> None:
    assert _generated(event) == _reference(event)


@given(_rows_of_anything(), st.booleans())
def test_any_value_encodes_as_fastavro_does_or_fails_as_it_does(
        case: tuple[Any, dict[str, Any]], as_before: bool) -> None:
    table, row = case
    source = SourcePosition('postgresql', 'pg', 'db', 'public', 't', 1, lsn=2)
    event = ChangeEvent(Op.UPDATE, table, source, **{'before' if as_before else 'after': row})
    expected = _reference(event)
    generated = _generated(event)
    if isinstance(expected, bytes):
        # The generated code may give up (and fall back), but never writes other bytes.
        assert generated == expected or isinstance(generated, type)
        assert avro_encoder(table)(event) == expected
    else:
        assert isinstance(generated, type)
        with pytest.raises(expected):
            avro_encoder(table)(event)


@pytest.mark.parametrize('event', EDGE_EVENTS + KINDS_EVENTS,
                         ids=lambda e: f'{e.op.value}-{sorted((e.after or {}).items())!r}'[:60])
def test_edge_events_encode_like_fastavro_and_read_back(event: ChangeEvent) -> None:
    data = _generated(event)
    assert data == _reference(event)
    record = fastavro.schemaless_reader(io.BytesIO(data),
                                        fastavro.parse_schema(avro_schema(event.table)), None)
    assert cst.comparable(from_avro_record(record, event.table)) == cst.comparable(event)


@pytest.mark.parametrize('n', [0, 1, -1, 63, -64, 64, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63),
                               1_795_000_000_000_000])
def test_long_is_avro_zigzag_varint(n: int) -> None:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, 'long', n)
    assert _long(n) == buffer.getvalue()


@pytest.mark.parametrize(('after', 'error'), [
    ({'id': 2**31}, EnvelopeError),
    ({'amount': Decimal('1')}, None),  # another exponent: the string branch, no error
    ({'order id': 'lone \udc80 surrogate'}, UnicodeEncodeError),
    ({'at': dt.datetime(2024, 1, 1)}, EnvelopeError),
    ({'ghost': 1}, EnvelopeError),
])
def test_values_that_cannot_be_written_raise_the_references_error(
        after: dict[str, Any], error: type[Exception] | None) -> None:
    event = ChangeEvent(Op.CREATE, TABLE, EDGE_EVENTS[0].source, after=after)
    if error is None:
        assert avro_encoder(TABLE)(event) == _reference(event)
        return
    with pytest.raises(error):
        avro_encoder(TABLE)(event)


def test_source_fields_of_the_wrong_type_fail_like_fastavro() -> None:
    table = TABLE
    source = SourcePosition('postgresql', 'pg', 'db', 'public', 't', 1, lsn=2,
                            file=5)  # type: ignore[arg-type]
    event = ChangeEvent(Op.CREATE, table, source, after={'id': 1})
    expected = _reference(event)
    assert isinstance(expected, type)
    with pytest.raises(expected):
        avro_encoder(table)(event)


def test_each_table_version_gets_its_own_encoder() -> None:
    v2 = type(TABLE)(TABLE.schema, TABLE.table, (*TABLE.columns, Column('memo', Kind.TEXT)))
    event = ChangeEvent(Op.CREATE, v2, EDGE_EVENTS[0].source, after={'id': 1, 'memo': 'x'})
    assert avro_encoder(v2) is not avro_encoder(TABLE)
    assert avro_encoder(v2)(event) == _reference(event)
