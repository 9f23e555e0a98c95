"""SQL builders, routing, batch planning and DSN checks of the SQL sinks (no database needed)."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms import envelope
from transforms.envelope import ChangeEvent, Column, Kind, Op, SourcePosition, TableSchema
from transforms.sinks.sql import WriteChangesToMySQL, WriteChangesToPostgres, copytext
from transforms.sinks.sql import statements as sql
from transforms.sinks.sql.batch import key_hash, plan_batch
from transforms.sinks.sql.routing import TargetTable, mysql_target, postgres_target

ITEMS = TableSchema('public', 'items', (
    Column('id', Kind.INT64, 'bigint', nullable=False),
    Column('name', Kind.STRING, 'text'),
    Column('doc', Kind.TEXT, 'text'),
), key=('id',))
LOG = TableSchema('public', 'log', (Column('line', Kind.STRING, 'text'),))


def event(op, lsn, before=None, after=None, table=ITEMS, unchanged=()):
    source = SourcePosition('postgresql', 'src', 'db', table.schema, table.table, 0,
                            commit_lsn=lsn, lsn=lsn)
    return ChangeEvent(Op(op), table, source, before=before, after=after,
                       unchanged=frozenset(unchanged))


def pos(lsn):
    return event('c', lsn, after={'id': 0}).source.sort_key


# --- identifiers ---------------------------------------------------------------------------

@pytest.mark.parametrize(('name', 'quoted'), [
    ('items', '"items"'),
    ('x"; DROP TABLE t; --', '"x""; DROP TABLE t; --"'),
    ('100%', '"100%%"'),  # statements run with parameters: psycopg turns %% back into %
    ('Ünïcode space', '"Ünïcode space"'),
])
def test_pg_ident_quotes_any_name(name, quoted):
    assert sql.pg_ident(name) == quoted


@pytest.mark.parametrize(('name', 'quoted'), [
    ('items', '`items`'),
    ('x`; DROP TABLE t; --', '`x``; DROP TABLE t; --`'),
    ('100%', '`100%`'),  # MariaDB statements never go through %-formatting
])
def test_my_ident_quotes_any_name(name, quoted):
    assert sql.my_ident(name) == quoted


@pytest.mark.parametrize('name', ['', 'a\x00b'])
def test_names_sql_cannot_hold_are_refused(name):
    with pytest.raises(ValueError, match='identifier'):
        sql.pg_ident(name)
    with pytest.raises(ValueError, match='identifier'):
        sql.my_ident(name)


@given(st.text(min_size=1).filter(lambda s: '\x00' not in s))
def test_quoted_identifiers_round_trip(name):
    """Unquoting what the builders emit gives back exactly the name: nothing escapes the quotes."""
    pg = sql.pg_ident(name)
    assert pg[0] == pg[-1] == '"'
    assert pg[1:-1].replace('%%', '%').replace('""', '"') == name
    assert '"' not in pg[1:-1].replace('""', '')
    my = sql.my_ident(name)
    assert my[1:-1].replace('``', '`') == name and '`' not in my[1:-1].replace('``', '')


# --- statements ----------------------------------------------------------------------------

TARGET = TargetTable('public', 'items')


def test_pg_create_table_adds_position_and_key():
    statements = sql.pg_create_table(TARGET, [('id', 'bigint', False), ('name', 'text', True)],
                                     ['id'])
    assert statements == [
        'CREATE SCHEMA IF NOT EXISTS "public"',
        'CREATE TABLE IF NOT EXISTS "public"."items" ("id" bigint NOT NULL, "name" text, '
        '"_cb_pos" text COLLATE "C", PRIMARY KEY ("id"))',
    ]


def test_pg_create_table_without_key_gets_a_unique_row_id():
    [_, create] = sql.pg_create_table(TARGET, [('line', 'text', True)], [])
    assert '"_cb_id" text COLLATE "C" UNIQUE' in create and 'PRIMARY KEY' not in create


def test_pg_upsert_only_overwrites_older_rows():
    statement = sql.pg_upsert(TARGET, 'pg_temp."s"', ['id', 'name', '_cb_pos'], ['id'])
    assert statement == (
        'INSERT INTO "public"."items" AS _cb_t ("id", "name", "_cb_pos") '
        'OVERRIDING SYSTEM VALUE SELECT "id", "name", "_cb_pos" FROM pg_temp."s" '
        'ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name", '
        '"_cb_pos" = EXCLUDED."_cb_pos" '
        'WHERE _cb_t."_cb_pos" IS NULL OR _cb_t."_cb_pos" < EXCLUDED."_cb_pos"')


def test_pg_delete_only_removes_older_rows():
    statement = sql.pg_delete(TARGET, 'pg_temp."s"', ['a', 'b'])
    assert statement.endswith('WHERE _cb_t."a" = _cb_s."a" AND _cb_t."b" = _cb_s."b" '
                              'AND (_cb_t."_cb_pos" IS NULL OR _cb_t."_cb_pos" < _cb_s."_cb_pos")')


def test_pg_copy_is_sent_verbatim_so_percent_is_not_doubled():
    assert sql.pg_copy('pg_temp."s"', ['100%', 'a"b']) == \
        'COPY pg_temp."s" ("100%", "a""b") FROM STDIN'


def test_my_upsert_assigns_the_position_last():
    statement = sql.my_upsert(TargetTable(None, 'items'), ['id', 'name', '_cb_pos'], ['id'],
                              ["(1, 'a', 'p1')", "(2, 'b', 'p2')"])
    newer = '`_cb_pos` IS NULL OR `_cb_pos` < VALUES(`_cb_pos`)'
    assert statement == (
        "INSERT INTO `items` (`id`, `name`, `_cb_pos`) VALUES (1, 'a', 'p1'), (2, 'b', 'p2') "
        f'ON DUPLICATE KEY UPDATE `name` = IF({newer}, VALUES(`name`), `name`), '
        f'`_cb_pos` = IF({newer}, VALUES(`_cb_pos`), `_cb_pos`)')


def test_my_delete_guards_each_row_by_its_position():
    statement = sql.my_delete(TargetTable('db', 't'), ['k'], [(['1'], "'p1'"), (['2'], "'p2'")])
    assert statement == (
        'DELETE FROM `db`.`t` WHERE (`k` = 1 AND (`_cb_pos` IS NULL OR `_cb_pos` < \'p1\')) '
        "OR (`k` = 2 AND (`_cb_pos` IS NULL OR `_cb_pos` < 'p2'))")


def test_labels_are_unambiguous():
    assert sql.pg_label(TargetTable('a.b', 'c')) != sql.pg_label(TargetTable('a', 'b.c'))
    assert sql.pg_label(TargetTable('s', 'x"y')) == '"s"."x""y"'
    assert sql.my_label(TargetTable(None, 'x`y')) == '`x``y`'


def test_lock_keys_are_stable_signed_64_bit():
    key = sql.pg_lock_key(TARGET)
    assert key == sql.pg_lock_key(TargetTable('public', 'items'))
    assert -2 ** 63 <= key < 2 ** 63
    assert key != sql.pg_lock_key(TargetTable('public', 'other'))
    assert len(sql.my_lock_name(TARGET)) <= 64


# --- routing -------------------------------------------------------------------------------

def test_default_targets_follow_the_design():
    assert postgres_target(ITEMS) == TargetTable('public', 'items')
    assert mysql_target(ITEMS) == TargetTable(None, 'items')


def test_routes_override_targets():
    assert postgres_target(ITEMS, {'public.items': 'copy.items2'}) == TargetTable('copy', 'items2')
    assert postgres_target(ITEMS, {'other.t': 'x'}) == TargetTable('public', 'items')
    assert postgres_target(ITEMS, lambda t: ('odd.schema', t.table)) == \
        TargetTable('odd.schema', 'items')
    assert mysql_target(ITEMS, lambda t: f'src_{t.table}') == TargetTable(None, 'src_items')
    assert mysql_target(ITEMS, lambda t: None) == TargetTable(None, 'items')


# --- batch planning ------------------------------------------------------------------------

def plan(events):
    return plan_batch(events, postgres_target)


def test_changes_to_one_key_collapse_to_the_newest():
    batch = plan([
        event('u', 3, after={'id': 1, 'name': 'c', 'doc': 'x'}),
        event('c', 1, after={'id': 1, 'name': 'a', 'doc': 'x'}),
        event('u', 2, after={'id': 1, 'name': 'b', 'doc': 'x'}),
        event('c', 1, after={'id': 2, 'name': 'z', 'doc': 'y'}),
    ])
    [tb] = batch.tables.values()
    assert batch.size == 4
    assert {c.key: (c.row['name'], c.pos) for c in tb.changes.values()} == {
        '[1]': ('c', pos(3)), '[2]': ('z', pos(1))}
    # Rejected, the state of key 1 dead-letters every change it stands for.
    assert [e.source.lsn for e in tb.changes['[1]'].events] == [1, 2, 3]


def test_two_source_tables_with_one_target_are_kept_apart():
    auth = TableSchema('auth', 'items', ITEMS.columns, key=('id',))
    batch = plan_batch([event('c', 2, table=auth, after={'id': 1, 'name': 'b', 'doc': 'x'}),
                        event('c', 1, after={'id': 1, 'name': 'a', 'doc': 'x'}),
                        event('c', 3, table=auth, after={'id': 2, 'name': 'c', 'doc': 'x'})],
                       mysql_target)
    mine = TargetTable(None, 'items')
    assert [c.row['name'] for c in batch.tables[mine].changes.values()] == ['a']
    assert [c.row['name'] for c in batch.strays[mine, 'auth.items'].changes.values()] == [
        'b', 'c']


def test_a_partial_update_keeps_the_unchanged_value_of_an_earlier_image():
    batch = plan([
        event('c', 1, after={'id': 1, 'name': 'a', 'doc': 'big'}),
        event('u', 2, after={'id': 1, 'name': 'b'}, unchanged={'doc'}),
    ])
    [change] = batch.tables[TARGET].changes.values()
    assert change.row == {'id': 1, 'name': 'b', 'doc': 'big'}
    assert [e.source.lsn for e in change.events] == [1, 2]


def test_a_partial_update_alone_writes_only_its_columns():
    batch = plan([event('u', 2, after={'id': 1, 'name': 'b'}, unchanged={'doc'})])
    [change] = batch.tables[TARGET].changes.values()
    assert change.columns == ('id', 'name')


def test_delete_then_insert_is_an_upsert_and_insert_then_delete_is_a_delete():
    batch = plan([
        event('d', 1, before={'id': 1}),
        event('c', 2, after={'id': 1, 'name': 'new', 'doc': None}),
        event('c', 3, after={'id': 2, 'name': 'x', 'doc': None}),
        event('d', 4, before={'id': 2}),
    ])
    changes = batch.tables[TARGET].changes
    assert changes['[1]'].row['name'] == 'new'
    assert changes['[2]'].row is None and changes['[2]'].values == (2,)
    assert changes['[2]'].key_hash == key_hash('[2]')
    assert [e.source.lsn for e in changes['[1]'].events] == [1, 2]
    assert [e.source.lsn for e in changes['[2]'].events] == [3, 4]


def test_an_update_of_the_key_deletes_the_old_key():
    batch = plan([event('u', 5, before={'id': 1, 'name': 'a'},
                        after={'id': 9, 'name': 'a', 'doc': None})])
    changes = batch.tables[TARGET].changes
    assert changes['[1]'].row is None and changes['[9]'].row['id'] == 9


def test_a_truncate_drops_earlier_changes_but_keeps_later_ones():
    batch = plan([
        event('c', 1, after={'id': 1, 'name': 'a', 'doc': None}),
        event('t', 2),
        event('c', 3, after={'id': 2, 'name': 'b', 'doc': None}),
    ])
    tb = batch.tables[TARGET]
    assert tb.truncate == pos(2)
    assert list(tb.changes) == ['[2]']


def snapshot_done(lsn, table=ITEMS):
    return envelope.snapshot_complete(table, event('r', lsn, after={}, table=table).source,
                                      1, 0)


def test_a_snapshot_complete_event_marks_its_table_and_keeps_the_rows():
    batch = plan([
        event('r', 4, after={'id': 1, 'name': 'a', 'doc': None}),
        snapshot_done(4),
        event('c', 5, after={'id': 2, 'name': 'b', 'doc': None}),
    ])
    tb = batch.tables[TARGET]
    assert tb.snapshot == pos(4) and list(tb.changes) == ['[1]', '[2]']
    assert tb.events()[-1].message['kind'] == 'snapshot_complete'
    assert batch.messages == 0 and not batch.rejected  # applied, not ignored


def test_a_snapshot_complete_event_alone_still_names_its_table():
    # An empty source table: the target must be created (and emptied of older rows).
    batch = plan([snapshot_done(4, table=LOG)])
    assert batch.tables[TargetTable('public', 'log')].snapshot == pos(4)


def test_a_snapshot_that_skipped_rows_deletes_nothing():
    # Its dead-lettered rows are still at the source: a row the snapshot did not bring may be
    # one of them, so none is taken as deleted; the rows it did bring are written.
    done = envelope.snapshot_complete(ITEMS, event('r', 4, after={}).source, 1, 0, skipped=2)
    assert done.message == {'kind': 'snapshot_complete', 'table': ITEMS.name, 'rows': 1,
                            'skipped': 2}
    batch = plan([event('r', 4, after={'id': 1, 'name': 'a', 'doc': None}), done])
    tb = batch.tables[TARGET]
    assert tb.snapshot is None and list(tb.changes) == ['[1]']
    assert batch.incomplete_snapshots == [done] and batch.messages == 1
    assert 'skipped' not in snapshot_done(4).message  # a full snapshot says nothing of it


def test_other_messages_touch_no_table():
    batch = plan([ChangeEvent(Op.MESSAGE, ITEMS, event('c', 4).source,
                              message={'kind': 'ddl', 'sql': 'ALTER TABLE items ...'})])
    assert batch.tables == {} and batch.messages == 1


def test_keyless_tables_append_and_report_deletes():
    batch = plan([
        event('c', 1, after={'line': 'x'}, table=LOG),
        event('c', 2, after={'line': 'x'}, table=LOG),
        event('d', 3, before={'line': 'x'}, table=LOG),
    ])
    tb = batch.tables[TargetTable('public', 'log')]
    assert [c.row for c in tb.appends] == [{'line': 'x'}, {'line': 'x'}]
    assert len({c.key_hash for c in tb.appends}) == 2  # distinct positions: distinct row ids
    assert len(batch.unkeyed_deletes) == 1


def test_messages_are_counted_and_malformed_events_rejected():
    batch = plan([
        event('m', 1),
        event('c', 2, after=None),
        event('d', 3, before={'name': 'no key'}),
        event('c', 4, after={'id': None, 'name': 'x'}),
    ])
    assert batch.messages == 1
    assert [reason.split(' ')[0] for _, reason in batch.rejected] == ["op", 'the', 'the']
    assert not batch.tables[TARGET].changes


def test_reserved_column_names_are_rejected():
    table = TableSchema('public', 't', (Column('id', Kind.INT32), Column('_cb_pos', Kind.TEXT)),
                        key=('id',))
    batch = plan([event('c', 1, after={'id': 1, '_cb_pos': 'x'}, table=table)])
    [(_, reason)] = batch.rejected
    assert 'reserved' in reason


def test_typed_keys_have_canonical_text():
    table = TableSchema('s', 't', (Column('k', Kind.DECIMAL), Column('t', Kind.TIMESTAMPTZ)),
                        key=('k', 't'))
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    batch = plan([event('c', 1, after={'k': Decimal('1.50'), 't': when}, table=table)])
    [key] = batch.tables[TargetTable('s', 't')].changes
    assert key == '["1.50", "2024-01-02T03:04:05Z"]'


@given(st.lists(st.tuples(st.sampled_from('cud'), st.integers(1, 4)), min_size=1, max_size=30),
       st.randoms())
def test_the_plan_does_not_depend_on_arrival_order(ops, rnd):
    """Shuffled delivery of the same events gives the same final state per key."""
    events = [event(op, lsn, before={'id': key}, after=None if op == 'd' else
                    {'id': key, 'name': f'v{lsn}', 'doc': None})
              for lsn, (op, key) in enumerate(ops, start=1)]
    shuffled = list(events)
    rnd.shuffle(shuffled)

    def final(evts):
        changes = plan(evts).tables[TARGET].changes
        return {k: (c.pos, c.row) for k, c in changes.items()}
    assert final(events) == final(shuffled)
    expected = {}
    for lsn, (op, key) in enumerate(ops, start=1):
        expected[f'[{key}]'] = None if op == 'd' else f'v{lsn}'
    assert {k: row and row['name'] for k, (_, row) in final(events).items()} == expected


# --- construction-time validation --------------------------------------------------------

@pytest.mark.parametrize('dsn', [
    'postgresql://app:s3cret@db:notaport/x',
    'mysql://app:s3cret@db/x',
    'nonsense',
])
def test_postgres_sink_refuses_a_bad_dsn_without_showing_the_password(dsn):
    with pytest.raises(ValueError) as info:
        WriteChangesToPostgres(dsn)
    assert 's3cret' not in str(info.value)
    assert 'dsn' in str(info.value)


@pytest.mark.parametrize(('dsn', 'problem'), [
    ('mysql://app:s3cret@db:3306/', 'no database'),
    ('postgresql://app:s3cret@db/x', 'not a mysql:// DSN'),
    ('mysql://app:s3cret@db:99999999/x', 'port'),
    ('mysql://app:s3cret@db/x?sslmode=require', 'unknown parameter'),
])
def test_mysql_sink_refuses_a_bad_dsn_without_showing_the_password(dsn, problem):
    with pytest.raises(ValueError, match=problem) as info:
        WriteChangesToMySQL(dsn)
    assert 's3cret' not in str(info.value) and '***' in str(info.value)


def test_sinks_refuse_bad_options():
    with pytest.raises(ValueError, match='route'):
        WriteChangesToPostgres('postgresql://db/x', route=42)
    with pytest.raises(ValueError, match='max_batch_size'):
        WriteChangesToMySQL('mysql://db/x', max_batch_size=0)
    with pytest.raises(ValueError, match='connections 3 must be 1 or 2'):
        WriteChangesToPostgres('postgresql://db/x', connections=3)
    with pytest.raises(ValueError, match=r'tombstone_retention .* must not be negative'):
        WriteChangesToPostgres('postgresql://db/x', tombstone_retention=dt.timedelta(hours=-1))
    with pytest.raises(ValueError, match=r'tombstone_retention 3600 must be a datetime\.timedelta'):
        WriteChangesToMySQL('mysql://db/x', tombstone_retention=3600)  # type: ignore[arg-type]
    # Zero and None both keep tombstones forever.
    WriteChangesToPostgres('postgresql://db/x', tombstone_retention=dt.timedelta(0))
    WriteChangesToMySQL('mysql://db/x', tombstone_retention=None)


def test_tombstone_prunes_are_bounded_and_leave_rewritten_tombstones():
    # Oldest first, a bounded number per statement, only rows still old when deleted (a batch
    # may rewrite a tombstone between the subquery and the delete).
    assert 'ORDER BY written_at LIMIT %s' in sql.PG_PRUNE_TOMBSTONES
    assert sql.PG_PRUNE_TOMBSTONES.endswith('AND written_at < now() - make_interval(secs => %s)')
    assert sql.my_prune_tombstones(7 * 86400, 5000).endswith(
        'WHERE written_at < NOW(6) - INTERVAL 604800000000 MICROSECOND '
        'ORDER BY written_at, tbl, `key` LIMIT 5000')
    # A rewritten tombstone (a newer delete of the key) counts as written now.
    assert 'written_at = EXCLUDED.written_at WHERE _cb_d.pos < EXCLUDED.pos' in \
        sql.pg_record_tombstones('stage')
    assert 'written_at = IF(pos < VALUES(pos), CURRENT_TIMESTAMP(6), written_at), ' \
        'pos = GREATEST(pos, VALUES(pos))' in sql.my_record_tombstones(["('t', 'k', 'p')"])


# --- COPY text -------------------------------------------------------------------------------

def test_copy_text_renders_each_kind_as_postgres_input():
    columns = [Column('i', Kind.INT64), Column('d', Kind.DECIMAL), Column('f', Kind.FLOAT64),
               Column('b', Kind.BOOLEAN), Column('t', Kind.TIMESTAMPTZ), Column('x', Kind.BYTES),
               Column('s', Kind.TEXT), Column('a', Kind.ARRAY, element=Kind.TEXT)]
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    row = [7, Decimal('NaN'), float('-inf'), True, when, b'\x00\xff', 'a\tb\\c\nd',
           ['x', None, 'q"\\', ['nested']]]
    assert copytext.rows_text(columns, [row], ['tail']) == (
        '7\tNaN\t-Infinity\tt\t2024-01-02T03:04:05.000006+00:00\t\\\\x00ff\t'
        'a\\tb\\\\c\\nd\t{"x",NULL,"q\\\\"\\\\\\\\",{"nested"}}\ttail\n')


def test_copy_text_keeps_text_forms_python_cannot_hold():
    columns = [Column('t', Kind.TIMESTAMPTZ), Column('d', Kind.DATE), Column('h', Kind.TIME)]
    assert copytext.rows_text(columns, [['infinity', '10000-01-01', '24:00:00'], [None] * 3]) == \
        'infinity\t10000-01-01\t24:00:00\n\\N\t\\N\t\\N\n'


def test_a_backslash_n_string_is_not_null():
    assert copytext.rows_text([Column('s', Kind.STRING)], [['\\N'], [None]]) == '\\\\N\n\\N\n'


_KIND_VALUES = {
    Kind.INT64: st.integers(),
    Kind.DECIMAL: st.decimals(allow_nan=True, allow_infinity=True),
    Kind.FLOAT64: st.floats(),
    Kind.BOOLEAN: st.booleans(),
    Kind.BYTES: st.binary(max_size=8),
    Kind.TEXT: st.text(max_size=8),
    Kind.TIMESTAMPTZ: st.datetimes(timezones=st.just(dt.timezone.utc)) | st.just('infinity')
    | st.datetimes(timezones=st.sampled_from([dt.timezone(dt.timedelta(hours=-5)),
                                              dt.timezone(dt.timedelta(minutes=330))])),
    Kind.DATE: st.dates() | st.just('infinity'),
}


@given(st.sampled_from(list(_KIND_VALUES)).flatmap(
    lambda kind: st.tuples(st.just(kind), st.lists(st.none() | _KIND_VALUES[kind], max_size=6))))
def test_column_fast_paths_render_like_the_per_value_path(kind_values):
    kind, values = kind_values
    column = Column('c', kind)
    render = copytext.value_renderer(column)
    assert copytext.column_texts(column, values) == \
        [copytext.NULL if v is None else render(v) for v in values]


_ELEMENTS = {
    Kind.TEXT: st.text(max_size=4),
    Kind.INT64: st.integers(),
    Kind.FLOAT64: st.floats(),
}


@given(st.sampled_from(list(_ELEMENTS)).flatmap(lambda kind: st.tuples(
    st.just(kind), st.lists(st.none() | st.lists(st.none() | _ELEMENTS[kind] | st.lists(
        _ELEMENTS[kind], max_size=2), max_size=3), max_size=6))))
def test_array_fast_paths_render_like_the_per_value_path(kind_values):
    kind, values = kind_values
    column = Column('c', Kind.ARRAY, element=kind)
    render = copytext.value_renderer(column)
    assert copytext.column_texts(column, values) == \
        [copytext.NULL if v is None else render(v) for v in values]


def test_array_fast_path_quotes_like_postgres_expects():
    column = Column('c', Kind.ARRAY, element=Kind.TEXT)
    assert copytext.column_texts(column, [['a', 'b c'], [], None, ['']]) == \
        ['{"a","b c"}', '{}', '\\N', '{""}']
    ints = Column('c', Kind.ARRAY, element=Kind.INT32)
    assert copytext.column_texts(ints, [[1, -2], []]) == ['{"1","-2"}', '{}']
