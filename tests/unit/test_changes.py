"""ChangeAssembler: decoded pgoutput messages in, Debezium-shaped ChangeEvents out."""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit import strategies as cst
from tests.unit.pgoutput_frames import encode
from transforms.envelope import (
    ChangeEvent,
    Column,
    Kind,
    Op,
    dumps,
    from_debezium_json,
    to_debezium_json,
)
from transforms.sources.postgres import pgtypes
from transforms.sources.postgres.catalog import CatalogColumn
from transforms.sources.postgres.changes import HEARTBEAT_PREFIX, ChangeAssembler, _xid_follows
from transforms.sources.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    RelationColumn,
    Truncate,
    TypeMessage,
    Update,
)

INT4, TEXT, NUMERIC, TIMESTAMPTZ, JSONB, INT4_ARRAY = 23, 25, 1700, 1184, 3802, 1007
NUMERIC_10_2 = ((10 << 16) | 2) + 4
ORDERS, CUSTOMERS, MOOD_OID = 16401, 16402, 16500
NOW = 1_700_000_000.25
COMMIT_US = 1_700_000_000_123_456
FINAL_LSN = 0x16B3748
XID = 742


def orders(identity: str = 'd', *, extra: Sequence[RelationColumn] = ()) -> Relation:
    full = identity == 'f'
    columns = (
        RelationColumn('id', INT4, -1, True),
        RelationColumn('note', TEXT, -1, full),
        RelationColumn('amount', NUMERIC, NUMERIC_10_2, full),
        RelationColumn('placed_at', TIMESTAMPTZ, -1, full),
        RelationColumn('doc', JSONB, -1, full),
        RelationColumn('tags', INT4_ARRAY, -1, full),
        *extra,
    )
    return Relation(xid=None, oid=ORDERS, namespace='public', name='orders',
                    replica_identity=identity, columns=columns)


def customers() -> Relation:
    return Relation(xid=None, oid=CUSTOMERS, namespace='crm', name='customers',
                    replica_identity='d',
                    columns=(RelationColumn('id', INT4, -1, True),
                             RelationColumn('name', TEXT, -1, False)))


ROW = ('1', 'hello', '12.50', '2024-03-01 10:15:30.5+02', '{"a": [1, 2]}', '{1,NULL,3}')
ROW_VALUES = {
    'id': 1, 'note': 'hello', 'amount': Decimal('12.50'),
    'placed_at': dt.datetime(2024, 3, 1, 8, 15, 30, 500000, tzinfo=dt.timezone.utc),
    'doc': '{"a": [1, 2]}', 'tags': [1, None, 3],
}
ROW2 = ('2', 'bye', '0.99', '2024-03-02 00:00:00+00', 'null', '{}')
KEY_ONLY = ('1', None, None, None, None, None)


class FakeCatalog:
    """The two catalog look-ups, counting calls: primary keys by OID and non-builtin types."""

    def __init__(self, keys: Mapping[int, tuple[str, ...]] | None = None,
                 types: Mapping[int, pgtypes.TypeInfo] | None = None) -> None:
        self.keys = dict(keys if keys is not None else {ORDERS: ('id',), CUSTOMERS: ('id',)})
        self.types = dict(types or {})
        self.type_lookups: list[list[int]] = []

    def lookup_key(self, oid: int) -> tuple[str, ...]:
        return self.keys.get(oid, ())

    def lookup_types(self, oids: Sequence[int]) -> dict[int, pgtypes.TypeInfo]:
        self.type_lookups.append(sorted(oids))
        return {oid: self.types[oid] for oid in oids if oid in self.types}


def assembler(catalog: FakeCatalog | None = None) -> ChangeAssembler:
    catalog = catalog or FakeCatalog()
    return ChangeAssembler('shop-prod', 'shop', catalog.lookup_key, catalog.lookup_types,
                           clock=lambda: NOW)


def begin(asm: ChangeAssembler, xid: int = XID, final_lsn: int = FINAL_LSN) -> None:
    asm.begin(Begin(final_lsn=final_lsn, commit_ts=COMMIT_US, xid=xid))


def commit(asm: ChangeAssembler, final_lsn: int = FINAL_LSN) -> None:
    asm.commit(Commit(flags=0, commit_lsn=final_lsn, end_lsn=final_lsn + 40,
                      commit_ts=COMMIT_US))


def one(events: list[ChangeEvent]) -> ChangeEvent:
    assert len(events) == 1
    return events[0]


def round_trip(event: ChangeEvent) -> ChangeEvent:
    return from_debezium_json(json.loads(dumps(to_debezium_json(event))), event.table)


# -- inserts and the event's position ---------------------------------------------------------


def test_insert_has_typed_values_position_and_transaction() -> None:
    asm = assembler()
    asm.relation(orders())
    begin(asm)
    event = one(asm.change(Insert(xid=None, relation_oid=ORDERS, new=ROW), 0x16B3700))
    commit(asm)

    assert event.op is Op.CREATE
    assert event.before is None
    assert event.after == ROW_VALUES
    assert event.unchanged == frozenset()
    assert event.ts_ms == int(NOW * 1000)
    source = event.source
    assert (source.connector, source.name, source.db, source.schema, source.table) == (
        'postgresql', 'shop-prod', 'shop', 'public', 'orders')
    assert (source.lsn, source.commit_lsn, source.tx_id) == (0x16B3700, FINAL_LSN, XID)
    assert source.ts_ms == COMMIT_US // 1000
    assert source.snapshot == 'false'
    assert event.transaction is not None
    assert (event.transaction.id, event.transaction.total_order,
            event.transaction.data_collection_order) == (f'{XID}:{FINAL_LSN}', 1, 1)
    assert event.key == (1,)


FRAME_CHANGES = [
    Insert(xid=None, relation_oid=ORDERS, new=ROW),
    Insert(xid=None, relation_oid=ORDERS, new=KEY_ONLY),
    Update(xid=None, relation_oid=ORDERS, old=None, key=None, new=ROW2),
    Update(xid=None, relation_oid=ORDERS, old=None, key=None,
           new=('1', UNCHANGED_TOAST, '13.00', ROW[3], UNCHANGED_TOAST, ROW[5])),
    Update(xid=None, relation_oid=ORDERS, old=ROW, key=None, new=ROW2),
    Update(xid=None, relation_oid=ORDERS, old=None, key=KEY_ONLY, new=ROW2),
    Delete(xid=None, relation_oid=ORDERS, old=None, key=KEY_ONLY),
    Insert(xid=None, relation_oid=CUSTOMERS, new=('7', 'Ann')),
]


@pytest.mark.parametrize('message', FRAME_CHANGES, ids=range(len(FRAME_CHANGES)))
def test_the_fast_path_from_frames_gives_the_events_of_the_general_path(
        message: Insert | Update | Delete) -> None:
    fast, general = assembler(), assembler()
    for asm in (fast, general):
        asm.relation(orders())
        asm.relation(customers())
        begin(asm)
    frame = encode(message)
    taken = fast.change_from_frame(frame, 0x16B3700)
    expected = general.change(message, 0x16B3700)
    plain = isinstance(message, Insert) or (
        isinstance(message, Update) and message.old is None and message.key is None
        and UNCHANGED_TOAST not in message.new)
    if plain:  # text and null values of an insert or a key-keeping update: taken
        assert taken == expected
    else:  # declined: the caller decodes the frame and takes the general path
        assert taken is None


def test_the_fast_path_declines_what_the_general_path_reports() -> None:
    asm = assembler()
    asm.relation(orders())
    frame = encode(Insert(xid=None, relation_oid=ORDERS, new=ROW))
    with pytest.raises(ValueError, match='outside a transaction'):
        asm.change_from_frame(frame, 1)
    begin(asm)
    unknown = encode(Insert(xid=None, relation_oid=ORDERS + 99, new=ROW))
    bad = encode(Insert(xid=None, relation_oid=ORDERS, new=('x', *ROW[1:])))
    for declined in (unknown, bad, frame[:-2], frame + b'\0', b'I', b'B' + frame[1:]):
        assert asm.change_from_frame(declined, 1) is None


def test_relation_becomes_the_table_schema() -> None:
    asm = assembler()
    asm.relation(orders())
    table = asm.table_for(ORDERS)
    assert (table.schema, table.table, table.name, table.key) == (
        'public', 'orders', 'public.orders', ('id',))
    kinds = {c.name: (c.kind, c.source_type) for c in table.columns}
    assert kinds == {
        'id': (Kind.INT32, 'integer'), 'note': (Kind.STRING, 'text'),
        'amount': (Kind.DECIMAL, 'numeric(10,2)'),
        'placed_at': (Kind.TIMESTAMPTZ, 'timestamp with time zone'),
        'doc': (Kind.JSON, 'jsonb'), 'tags': (Kind.ARRAY, 'integer[]'),
    }
    amount = table.column('amount')
    assert (amount.precision, amount.scale) == (10, 2)
    assert table.column('tags').element is Kind.INT32


def test_sql_nulls_stay_none() -> None:
    asm = assembler()
    asm.relation(orders())
    begin(asm)
    event = one(asm.change(Insert(xid=None, relation_oid=ORDERS, new=KEY_ONLY), 1))
    assert event.after == {'id': 1, 'note': None, 'amount': None, 'placed_at': None,
                           'doc': None, 'tags': None}


def test_orders_inside_a_transaction_count_all_and_per_table() -> None:
    asm = assembler()
    asm.relation(orders())
    asm.relation(customers())
    begin(asm)
    events = [
        *asm.change(Insert(xid=None, relation_oid=ORDERS, new=ROW), 100),
        *asm.change(Insert(xid=None, relation_oid=CUSTOMERS, new=('7', 'Ada')), 200),
        *asm.change(Insert(xid=None, relation_oid=ORDERS, new=ROW2), 300),
        *asm.change(Delete(xid=None, relation_oid=CUSTOMERS, old=None, key=('7', None)), 400),
    ]
    commit(asm)
    assert [(e.table.name, e.transaction.total_order, e.transaction.data_collection_order)
            for e in events if e.transaction] == [
        ('public.orders', 1, 1), ('crm.customers', 2, 1),
        ('public.orders', 3, 2), ('crm.customers', 4, 2)]
    assert [e.source.lsn for e in events] == [100, 200, 300, 400]
    assert {e.source.commit_lsn for e in events} == {FINAL_LSN}
    # positions sort the way the changes were made
    assert sorted(events, key=lambda e: e.source.sort_key) == events

    begin(asm, xid=743, final_lsn=FINAL_LSN + 1000)
    event = one(asm.change(Insert(xid=None, relation_oid=CUSTOMERS, new=('8', 'Bo')), 500))
    assert event.transaction is not None
    assert (event.transaction.id, event.transaction.total_order,
            event.transaction.data_collection_order) == (f'743:{FINAL_LSN + 1000}', 1, 1)
    assert event.source.sort_key > events[-1].source.sort_key


def test_transaction_state() -> None:
    asm = assembler()
    assert not asm.in_transaction
    begin(asm)
    assert asm.in_transaction
    commit(asm)
    assert not asm.in_transaction


def test_change_outside_a_transaction_is_an_error() -> None:
    asm = assembler()
    asm.relation(orders())
    with pytest.raises(ValueError, match=r'public\.orders arrived outside a transaction'):
        asm.change(Insert(xid=None, relation_oid=ORDERS, new=ROW), 1)


# -- updates and deletes under each replica identity ------------------------------------------


def test_default_identity_update_without_key_change_has_no_before() -> None:
    asm = assembler()
    asm.relation(orders('d'))
    begin(asm)
    event = one(asm.change(Update(xid=None, relation_oid=ORDERS, old=None, key=None, new=ROW), 1))
    assert event.op is Op.UPDATE
    assert event.before is None
    assert event.after == ROW_VALUES


def test_default_identity_update_of_the_key_has_only_the_old_key_in_before() -> None:
    asm = assembler()
    asm.relation(orders('d'))
    begin(asm)
    event = one(asm.change(
        Update(xid=None, relation_oid=ORDERS, old=None, key=KEY_ONLY,
               new=('5', *ROW[1:])), 1))
    assert event.before == {'id': 1}
    assert event.after == {**ROW_VALUES, 'id': 5}
    assert event.key == (5,)


def test_default_identity_delete_has_only_the_key_in_before() -> None:
    asm = assembler()
    asm.relation(orders('d'))
    begin(asm)
    event = one(asm.change(Delete(xid=None, relation_oid=ORDERS, old=None, key=KEY_ONLY), 9))
    assert event.op is Op.DELETE
    assert event.before == {'id': 1}
    assert event.after is None
    assert event.key == (1,)
    assert event.source.lsn == 9


def test_full_identity_update_and_delete_carry_the_whole_old_row() -> None:
    asm = assembler()
    asm.relation(orders('f'))
    begin(asm)
    update = one(asm.change(Update(xid=None, relation_oid=ORDERS, old=ROW, key=None,
                                   new=('1', *ROW2[1:])), 1))
    delete = one(asm.change(Delete(xid=None, relation_oid=ORDERS, old=ROW, key=None), 2))
    assert update.before == ROW_VALUES
    assert update.after is not None and update.after['note'] == 'bye'
    assert delete.before == ROW_VALUES
    assert delete.after is None


def test_index_identity_without_primary_key_uses_the_identity_columns_as_key() -> None:
    asm = assembler(FakeCatalog(keys={}))
    relation = Relation(xid=None, oid=ORDERS, namespace='public', name='orders',
                        replica_identity='i',
                        columns=(RelationColumn('sku', TEXT, -1, True),
                                 RelationColumn('qty', INT4, -1, False)))
    asm.relation(relation)
    assert asm.table_for(ORDERS).key == ('sku',)
    begin(asm)
    event = one(asm.change(Delete(xid=None, relation_oid=ORDERS, old=None,
                                  key=('A-1', None)), 1))
    assert event.before == {'sku': 'A-1'}
    assert event.key == ('A-1',)


def test_index_identity_beside_a_primary_key_keys_on_the_identity_columns() -> None:
    """The old-row image holds the identity index's columns only: a delete keyed on the
    primary key could not name its row."""
    asm = assembler(FakeCatalog(keys={ORDERS: ('id',)}))
    relation = Relation(xid=None, oid=ORDERS, namespace='public', name='orders',
                        replica_identity='i',
                        columns=(RelationColumn('id', INT4, -1, False),
                                 RelationColumn('sku', TEXT, -1, True),
                                 RelationColumn('qty', INT4, -1, False)))
    asm.relation(relation)
    assert asm.table_for(ORDERS).key == ('sku',)
    begin(asm)
    event = one(asm.change(Delete(xid=None, relation_oid=ORDERS, old=None,
                                  key=(None, 'A-1', None)), 1))
    assert event.before == {'sku': 'A-1'}
    assert event.key == ('A-1',)


def test_table_without_key_or_identity_has_an_empty_key() -> None:
    asm = assembler(FakeCatalog(keys={}))
    asm.relation(orders('n'))
    assert asm.table_for(ORDERS).key == ()


# -- unchanged TOAST ----------------------------------------------------------------------------


def test_unchanged_toast_is_filled_from_a_full_old_row() -> None:
    asm = assembler()
    asm.relation(orders('f'))
    begin(asm)
    new = ('1', UNCHANGED_TOAST, '13.00', ROW[3], UNCHANGED_TOAST, ROW[5])
    event = one(asm.change(Update(xid=None, relation_oid=ORDERS, old=ROW, key=None, new=new), 1))
    assert event.after == {**ROW_VALUES, 'amount': Decimal('13.00')}
    assert event.unchanged == frozenset()


def test_unchanged_toast_without_old_row_is_absent_and_listed() -> None:
    asm = assembler()
    asm.relation(orders('d'))
    begin(asm)
    new = ('1', UNCHANGED_TOAST, '13.00', ROW[3], UNCHANGED_TOAST, ROW[5])
    event = one(asm.change(Update(xid=None, relation_oid=ORDERS, old=None, key=None, new=new), 1))
    assert event.after is not None
    assert 'note' not in event.after and 'doc' not in event.after
    assert event.after['amount'] == Decimal('13.00')
    assert event.unchanged == frozenset({'note', 'doc'})
    # the encoding says which columns to leave alone, and reads back the same
    assert to_debezium_json(event)['unchanged'] == ['doc', 'note']
    assert round_trip(event) == event


def test_unchanged_toast_with_a_key_change_stays_unchanged() -> None:
    asm = assembler()
    asm.relation(orders('d'))
    begin(asm)
    new = ('2', UNCHANGED_TOAST, *ROW[2:])
    event = one(asm.change(Update(xid=None, relation_oid=ORDERS, old=None, key=KEY_ONLY,
                                  new=new), 1))
    assert event.before == {'id': 1}
    assert event.after is not None and 'note' not in event.after
    assert event.unchanged == frozenset({'note'})


# -- truncate, schema changes, errors -----------------------------------------------------------


def test_truncate_of_two_tables_is_one_event_each() -> None:
    asm = assembler()
    asm.relation(orders())
    asm.relation(customers())
    begin(asm)
    events = asm.change(Truncate(xid=None, relation_oids=(ORDERS, CUSTOMERS), cascade=True,
                                 restart_identity=False), 77)
    assert [(e.op, e.table.name, e.before, e.after) for e in events] == [
        (Op.TRUNCATE, 'public.orders', None, None), (Op.TRUNCATE, 'crm.customers', None, None)]
    assert [e.source.lsn for e in events] == [77, 77]
    assert [e.transaction.total_order for e in events if e.transaction] == [1, 2]


def test_truncate_of_an_unknown_relation_is_an_error() -> None:
    asm = assembler()
    asm.relation(orders())
    begin(asm)
    with pytest.raises(ValueError, match=str(CUSTOMERS)):
        asm.change(Truncate(xid=None, relation_oids=(ORDERS, CUSTOMERS), cascade=False,
                            restart_identity=False), 1)


@pytest.mark.parametrize('message', [
    Insert(xid=None, relation_oid=ORDERS, new=ROW),
    Update(xid=None, relation_oid=ORDERS, old=None, key=None, new=ROW),
    Delete(xid=None, relation_oid=ORDERS, old=None, key=KEY_ONLY),
])
def test_change_before_its_relation_is_an_error(message: Insert | Update | Delete) -> None:
    asm = assembler()
    asm.relation(customers())
    begin(asm)
    with pytest.raises(ValueError, match=f'relation {ORDERS} arrived before its Relation'):
        asm.change(message, 1)
    with pytest.raises(ValueError, match=str(ORDERS)):
        asm.table_for(ORDERS)


def test_a_new_relation_message_changes_the_shape_of_later_events() -> None:
    asm = assembler()
    asm.relation(orders())
    begin(asm)
    before = one(asm.change(Insert(xid=None, relation_oid=ORDERS, new=ROW), 1))
    asm.relation(orders(extra=[RelationColumn('qty', INT4, -1, False)]))
    after = one(asm.change(Insert(xid=None, relation_oid=ORDERS, new=(*ROW, '3')), 2))
    assert 'qty' not in before.table.by_name
    assert after.table.column('qty').kind is Kind.INT32
    assert after.after is not None and after.after['qty'] == 3
    assert round_trip(before) == before and round_trip(after) == after


@pytest.mark.parametrize('position, text, column', [
    (0, 'abc', 'id'),
    (2, 'twelve', 'amount'),
    (3, 'yesterday', 'placed_at'),
    (5, '{1,x}', 'tags'),
])
def test_a_value_that_does_not_convert_names_its_column(position: int, text: str,
                                                       column: str) -> None:
    asm = assembler()
    asm.relation(orders())
    begin(asm)
    row = list(ROW)
    row[position] = text
    with pytest.raises(ValueError) as info:
        asm.change(Insert(xid=None, relation_oid=ORDERS, new=tuple(row)), 1)
    assert repr(column) in str(info.value)
    assert repr(text) in str(info.value)


def test_a_tuple_of_the_wrong_width_is_an_error() -> None:
    asm = assembler()
    asm.relation(orders())
    begin(asm)
    with pytest.raises(ValueError, match='5 values for 6 columns'):
        asm.change(Insert(xid=None, relation_oid=ORDERS, new=ROW[:5]), 1)


def test_enum_columns_are_looked_up_once_and_again_after_a_type_message() -> None:
    mood = pgtypes.TypeInfo(MOOD_OID, 'mood', 'public', 'e', enum_labels=('sad', 'ok', 'happy'))
    catalog = FakeCatalog(types={MOOD_OID: mood})
    asm = assembler(catalog)
    relation = Relation(xid=None, oid=CUSTOMERS, namespace='crm', name='customers',
                        replica_identity='d',
                        columns=(RelationColumn('id', INT4, -1, True),
                                 RelationColumn('mood', MOOD_OID, -1, False)))
    asm.relation(relation)
    asm.relation(relation)
    assert catalog.type_lookups == [[MOOD_OID]]  # builtins are never looked up
    column = asm.table_for(CUSTOMERS).column('mood')
    assert (column.kind, column.symbols) == (Kind.ENUM, ('sad', 'ok', 'happy'))

    asm.type(TypeMessage(xid=None, oid=MOOD_OID, namespace='public', name='mood'))
    asm.relation(relation)
    assert catalog.type_lookups == [[MOOD_OID], [MOOD_OID]]
    begin(asm)
    event = one(asm.change(Insert(xid=None, relation_oid=CUSTOMERS, new=('1', 'happy')), 1))
    assert event.after == {'id': 1, 'mood': 'happy'}


# -- logical messages ---------------------------------------------------------------------------


def test_heartbeat_messages_are_not_events() -> None:
    asm = assembler()
    begin(asm)
    assert asm.message(LogicalMessage(xid=XID, transactional=True, lsn=5,
                                      prefix=HEARTBEAT_PREFIX, content=b'1'), 5) is None
    assert asm.message(LogicalMessage(xid=None, transactional=False, lsn=5,
                                      prefix='changebeam_heartbeat', content=b''), 5) is None


def test_transactional_application_message_is_an_m_event_in_its_transaction() -> None:
    asm = assembler()
    begin(asm)
    event = asm.message(LogicalMessage(xid=XID, transactional=True, lsn=55, prefix='audit',
                                       content='{"user": "zoë"}'.encode()), 55)
    assert event is not None
    assert event.op is Op.MESSAGE
    assert event.message == {'prefix': 'audit', 'content': '{"user": "zoë"}',
                             'transactional': True}
    assert (event.source.lsn, event.source.commit_lsn, event.source.tx_id) == (
        55, FINAL_LSN, XID)
    assert event.source.ts_ms == COMMIT_US // 1000
    assert event.before is None and event.after is None
    assert round_trip(event) == event


def test_non_transactional_binary_message_is_base64_at_its_own_lsn() -> None:
    asm = assembler()
    event = asm.message(LogicalMessage(xid=None, transactional=False, lsn=90, prefix='bin',
                                       content=b'\xff\x00\xfe'), 90)
    assert event is not None
    assert event.message == {'prefix': 'bin', 'content_base64': '/wD+', 'transactional': False}
    assert (event.source.lsn, event.source.commit_lsn, event.source.tx_id) == (90, 90, None)
    assert event.source.ts_ms == int(NOW * 1000)
    assert round_trip(event) == event


# -- encodings ----------------------------------------------------------------------------------


def test_every_kind_of_event_round_trips_through_debezium_json() -> None:
    asm = assembler()
    asm.relation(orders('f'))
    asm.relation(customers())
    begin(asm)
    events = [
        *asm.change(Insert(xid=None, relation_oid=ORDERS, new=ROW), 1),
        *asm.change(Update(xid=None, relation_oid=ORDERS, old=ROW, key=None, new=ROW2), 2),
        *asm.change(Update(xid=None, relation_oid=CUSTOMERS, old=None, key=('7', None),
                           new=('8', 'Ada')), 3),
        *asm.change(Delete(xid=None, relation_oid=ORDERS, old=ROW2, key=None), 4),
        *asm.change(Truncate(xid=None, relation_oids=(ORDERS, CUSTOMERS), cascade=False,
                             restart_identity=True), 5),
    ]
    assert [e.op.value for e in events] == ['c', 'u', 'u', 'd', 't', 't']
    for event in events:
        doc = to_debezium_json(event)
        assert doc['op'] == event.op.value
        assert doc['source']['lsn'] == event.source.lsn
        assert doc['source']['commit_lsn'] == FINAL_LSN
        assert round_trip(event) == event


_INT4 = st.integers(-(2**31), 2**31 - 1)
_TEXT = st.text(st.characters(codec='utf-8', exclude_characters='\x00',
                              exclude_categories=('Cs',)))
_NUMERIC = st.decimals(min_value=Decimal('-99999999.99'), max_value=Decimal('99999999.99'),
                       places=2)
_INSTANT = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                        timezones=st.just(dt.timezone.utc))
_ELEMENTS = st.lists(st.none() | _INT4, max_size=5)


@given(key=_INT4, note=st.none() | _TEXT, amount=st.none() | _NUMERIC,
       placed_at=st.none() | _INSTANT, tags=st.none() | _ELEMENTS)
def test_any_row_decodes_to_its_values_and_round_trips(
        key: int, note: str | None, amount: Decimal | None, placed_at: dt.datetime | None,
        tags: list[int | None] | None) -> None:
    # The text forms PostgreSQL prints for these values.
    stamp = None if placed_at is None else placed_at.isoformat(sep=' ').replace('+00:00', '+00')
    array = None if tags is None else (
        '{' + ','.join('NULL' if t is None else str(t) for t in tags) + '}')
    asm = assembler()
    asm.relation(orders())
    begin(asm)
    event = one(asm.change(Insert(xid=None, relation_oid=ORDERS, new=(
        str(key), note, None if amount is None else str(amount), stamp, None, array)), 1))
    expected = {'id': key, 'note': note, 'amount': amount, 'placed_at': placed_at, 'doc': None,
                'tags': tags}
    assert cst.comparable(event.after) == cst.comparable(expected)
    assert cst.comparable(round_trip(event)) == cst.comparable(event)


# -- columns added with a constant default (attmissingval) ------------------------------------


def in_catalog(xmin: int = XID - 5, **missing: str | None) -> dict[str, CatalogColumn]:
    """The catalog's columns of orders (plus ``missing``'s), last written by ``xmin``; a
    column given a missing value has a DEFAULT."""
    columns = {name: CatalogColumn(None, False, xmin)
               for name in ('id', 'note', 'amount', 'placed_at', 'doc', 'tags')}
    columns.update({name: CatalogColumn(text, text is not None, xmin)
                    for name, text in missing.items()})
    return columns


def with_lookups(answers: list[dict[str, CatalogColumn]],
                 lookups: list[int]) -> ChangeAssembler:
    """An assembler whose catalog gives ``answers`` in turn, counting look-ups."""
    def lookup_missing(oid: int) -> dict[str, CatalogColumn]:
        lookups.append(oid)
        return answers[len(lookups) - 1]

    catalog = FakeCatalog()
    return ChangeAssembler('shop-prod', 'shop', catalog.lookup_key, catalog.lookup_types,
                           lookup_missing, clock=lambda: NOW)


def defaults(table) -> dict[str, str | None]:
    return {c.name: c.default for c in table.columns if c.default is not None}


def test_a_column_older_rows_read_a_missing_value_of_carries_it_as_default() -> None:
    lookups: list[int] = []
    asm = with_lookups([in_catalog(c2='{7}', label='{"a \\"b\\" c"}', nums='{"{1,2}"}',
                                   gone='{NULL}')], lookups)
    extra = (RelationColumn('c2', INT4, -1, False), RelationColumn('label', TEXT, -1, False),
             RelationColumn('nums', INT4_ARRAY, -1, False),
             RelationColumn('gone', INT4, -1, False))
    table = asm.relation(orders(extra=extra)).schema
    assert lookups == [ORDERS]
    assert defaults(table) == {'c2': '7', 'label': 'a "b" c', 'nums': '{1,2}'}
    # The rows still decode as before: the default is only the text older rows read.
    begin(asm)
    event = one(asm.change(Insert(xid=None, relation_oid=ORDERS,
                                  new=(*ROW, '8', 'x', '{3}', None)), 1))
    assert event.after is not None and event.after['c2'] == 8


def test_a_known_column_keeps_its_default_when_a_later_rewrite_cleared_it() -> None:
    # c2 came with DEFAULT 7; by the time the stream reads the next DDL (a column dropped) the
    # table was rewritten, which cleared attmissingval: c2 keeps 7, the catalog is not asked.
    lookups: list[int] = []
    asm = with_lookups([in_catalog(c2='{7}'), in_catalog(xmin=XID + 9, c2=None, c3='{3}')],
                       lookups)
    c2, c3 = RelationColumn('c2', INT4, -1, False), RelationColumn('c3', INT4, -1, False)
    begin(asm)
    first = asm.relation(orders(extra=(c2,))).schema
    dropped = Relation(xid=None, oid=ORDERS, namespace='public', name='orders',
                       replica_identity='d',
                       columns=tuple(c for c in orders(extra=(c2,)).columns if c.name != 'doc'))
    second = asm.relation(dropped).schema
    assert defaults(first) == defaults(second) == {'c2': '7'}
    assert lookups == [ORDERS]
    # A column new to the stream is looked up; the known one still keeps its value.
    third = asm.relation(orders(extra=(c2, c3))).schema
    assert lookups == [ORDERS, ORDERS]
    assert defaults(third) == {'c2': '7', 'c3': '3'}


def test_a_default_cleared_after_the_change_is_reported_as_unknown(caplog) -> None:
    c2 = RelationColumn('c2', INT4, -1, False)
    rewritten = {'c2': CatalogColumn(None, True, XID + 3)}
    asm = with_lookups([{**in_catalog(), **rewritten}], [])
    begin(asm)
    with caplog.at_level('WARNING'):
        table = asm.relation(orders(extra=(c2,))).schema
    assert defaults(table) == {}
    assert "column 'c2' has a DEFAULT" in caplog.text and 'backfill' in caplog.text
    assert f'transaction {XID}' in caplog.text


@pytest.mark.parametrize(('xmin', 'has_default'), [
    (XID - 3, True),  # the column's DEFAULT came with no missing value (added, then SET)
    (XID + 3, False),  # rewritten since, but the column has no DEFAULT: nothing was lost
])
def test_a_column_without_a_missing_value_is_not_reported_unless_it_may_have_lost_one(
        caplog, xmin: int, has_default: bool) -> None:
    asm = with_lookups([{**in_catalog(), 'c2': CatalogColumn(None, has_default, xmin)}], [])
    begin(asm)
    with caplog.at_level('WARNING'):
        table = asm.relation(orders(extra=(RelationColumn('c2', INT4, -1, False),))).schema
    assert defaults(table) == {} and caplog.text == ''


@pytest.mark.parametrize(('xid', 'other', 'follows'), [
    (10, 9, True), (9, 10, False), (10, 10, False),
    (3, 2**32 - 5, True),  # after wraparound
    (2**32 - 5, 3, False),
])
def test_transaction_ids_compare_modulo_wraparound(xid: int, other: int, follows: bool) -> None:
    assert _xid_follows(xid, other) is follows


def test_without_missing_values_the_schema_is_the_same_as_without_the_lookup() -> None:
    catalog = FakeCatalog()
    plain = assembler(catalog).relation(orders()).schema
    asm = ChangeAssembler('shop-prod', 'shop', catalog.lookup_key, catalog.lookup_types,
                          lambda oid: in_catalog(), clock=lambda: NOW)
    assert asm.relation(orders()).schema == plain
    assert all(c.default is None for c in plain.columns)


@pytest.mark.parametrize(('column', 'text', 'expected'), [
    (Column('c', Kind.INT32, 'integer'), '{7}', '7'),
    (Column('c', Kind.INT32, 'integer'), '{NULL}', None),
    (Column('c', Kind.TEXT, 'text'), '{"NULL"}', 'NULL'),
    (Column('c', Kind.TEXT, 'text'), '{""}', ''),
    (Column('c', Kind.TEXT, 'text'), '{"a,b \\\\ {c}"}', 'a,b \\ {c}'),
    (Column('c', Kind.TIMESTAMPTZ, 'timestamp with time zone'), '{"2024-03-01 08:15:30+00"}',
     '2024-03-01 08:15:30+00'),
    (Column('c', Kind.ARRAY, 'text[]', element=Kind.TEXT), '{"{a,\\"b c\\"}"}',
     '{a,"b c"}'),
    (Column('c', Kind.TEXT, 'box'), '{(1,1),(0,0)}', '(1,1),(0,0)'),
])
def test_missing_values_are_the_element_of_a_one_element_array(column, text, expected) -> None:
    assert pgtypes.missing_value_text(column, text) == expected


@pytest.mark.parametrize('text', ['{}', '{1,2}', '{{1}}', '7', '{"unterminated}'])
def test_a_missing_value_that_is_not_one_element_is_refused(text) -> None:
    with pytest.raises(ValueError, match="missing value of column 'c'"):
        pgtypes.missing_value_text(Column('c', Kind.INT32, 'integer'), text)
