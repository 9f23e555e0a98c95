"""The payload of a sink's dead letter: the event and its table, readable and lossless."""
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit import strategies as cst
from transforms.dead_letter import DeadLetter, NotAnEvent, event_from_payload, event_payload
from transforms.envelope import ChangeEvent, Column, Kind, Op, SourcePosition, TableSchema

events = cst.table_schemas().flatmap(cst.change_events)


def _as_written(payload: Any) -> Any:
    """The payload as WriteDeadLetters writes it and a reader gets it back."""
    letter = DeadLetter(step='WriteChangesToPostgres', error='IntegrityError', payload=payload)
    return json.loads(json.dumps(letter.to_json()))['payload']


@given(events)
def test_every_event_of_every_column_kind_survives_the_dead_letter_file(
        event: ChangeEvent) -> None:
    decoded = event_from_payload(_as_written(event_payload(event)))
    assert cst.comparable(decoded) == cst.comparable(event)


@pytest.mark.parametrize('kind', list(Kind), ids=lambda k: k.value)
@settings(max_examples=25)
@given(data=st.data())
def test_each_column_kind_survives_the_dead_letter_file(kind: Kind, data: st.DataObject) -> None:
    table = data.draw(cst.table_schemas(cst.columns(kinds=st.just(kind)), max_columns=3))
    event = data.draw(cst.change_events(table))
    decoded = event_from_payload(_as_written(event_payload(event)))
    assert cst.comparable(decoded) == cst.comparable(event)


ORDERS = TableSchema('public', 'orders', (Column('id', Kind.INT64, 'bigint', nullable=False),
                                          Column('raw', Kind.BYTES, 'bytea')), key=('id',))
SOURCE = SourcePosition('postgresql', 'shop', 'shop', 'public', 'orders', 1, lsn=7,
                        commit_lsn=9)


def test_the_payload_reads_as_the_event_and_its_table() -> None:
    event = ChangeEvent(Op.CREATE, ORDERS, SOURCE, after={'id': 1, 'raw': b'\x00'})
    payload = _as_written(event_payload(event))
    assert payload['event']['after'] == {'id': 1, 'raw': 'AA=='}
    assert payload['event']['op'] == 'c'
    assert payload['table']['columns'][1]['source_type'] == 'bytea'


def test_an_event_that_cannot_be_encoded_is_kept_for_a_person_and_is_not_an_event() -> None:
    broken = ChangeEvent(Op.CREATE, ORDERS, SOURCE, after={'id': 1, 'raw': 'not bytes'})
    payload = _as_written(event_payload(broken))
    assert payload['unencodable'] == repr(broken)
    with pytest.raises(NotAnEvent, match='could not be encoded'):
        event_from_payload(payload)


@pytest.mark.parametrize('payload', [
    {'base64': 'AAEC'},  # undecodable WAL
    'ChangeEvent(op=...)',  # an old file-sink letter
    {'before': None, 'after': {'id': 1}, 'op': 'c'},  # an old SQL-sink letter: no table
    {'event': {'op': 'c'}, 'table': {'schema': 'public'}},
    None,
])
def test_other_payloads_are_not_events(payload: Any) -> None:
    with pytest.raises(NotAnEvent):
        event_from_payload(payload)
