"""How the SQL sinks decide to ALTER a target for a new source schema (no database needed)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.envelope import ChangeEvent, Column, Kind, Op, SourcePosition, TableSchema
from transforms.sinks.sql import statements as sql
from transforms.sinks.sql.alter import (
    TargetColumn,
    add_default,
    drop_defaults,
    filled,
    holds,
    narrowed,
    plan_alteration,
    storable,
    widened,
)
from transforms.sinks.sql.batch import plan_batch
from transforms.sinks.sql.routing import TargetTable, postgres_target
from transforms.sinks.sql.typemap import mysql_type, postgres_type

T = TargetTable('public', 'items')


# --- types: which target type holds which source type --------------------------------------

@pytest.mark.parametrize(('target', 'new'), [
    ('character varying(10)', 'varchar(10)'),
    ('integer', 'int4'),
    ('timestamp with time zone', 'timestamptz'),
    ('timestamp without time zone', 'timestamp'),
    ('numeric(12,2)', 'numeric(12, 2)'),
    ('integer[]', 'int[]'),
    ('bigint', 'integer'),  # the source narrowed: the target still holds every value
    ('text', 'character varying(10)'),
    ('numeric', 'numeric(30,10)'),
    ('numeric(12,0)', 'integer'),
    ('double precision', 'integer'),
])
def test_postgres_types_that_need_no_alter(target, new):
    assert holds(target, new, 'postgresql')


@pytest.mark.parametrize(('target', 'new'), [
    ('int(11)', 'INT'),
    ('bigint(20) unsigned', 'BIGINT UNSIGNED'),
    ('tinyint(1)', 'BOOLEAN'),
    ('longtext', 'JSON'),
    ('longtext', 'VARCHAR(20)'),
    ('decimal(12,2)', 'DECIMAL(12,2)'),
    ('datetime(6)', 'DATETIME(6)'),
    ("enum('a','b''c')", "ENUM('a')"),
    ('bigint(20)', 'INT UNSIGNED'),
    ('year(4)', 'year'),  # how information_schema shows a column created as `year`
    ('longblob', 'VARBINARY(255)'),
    ('datetime(6)', 'datetime'),
])
def test_mariadb_types_that_need_no_alter(target, new):
    assert holds(target, new, 'mysql')


@pytest.mark.parametrize(('target', 'new', 'expected'), [
    ('integer', 'bigint', 'bigint'),
    ('smallint', 'integer', 'integer'),
    ('character varying(10)', 'text', 'text'),
    ('character varying(10)', 'character varying(20)', 'character varying(20)'),
    ('integer', 'text', 'text'),
    ('integer', 'character varying(10)', 'text'),  # a cast to varchar(n) would truncate
    ('date', 'text', 'text'),
    ('numeric(10,2)', 'numeric(12,2)', 'numeric(12,2)'),
    ('numeric(10,2)', 'numeric(10,4)', 'numeric(12,4)'),  # holds both the old and the new
    ('integer', 'numeric(12,2)', 'numeric(12,2)'),
    ('bigint', 'numeric(5,2)', 'numeric(21,2)'),
    ('numeric(12,2)', 'numeric', 'numeric'),
    ('real', 'double precision', 'double precision'),
])
def test_postgres_widenings(target, new, expected):
    assert not holds(target, new, 'postgresql')
    assert widened(target, new, 'postgresql') == expected


@pytest.mark.parametrize(('target', 'new', 'expected'), [
    ('int(11)', 'BIGINT', 'BIGINT'),
    ('int(11) unsigned', 'INT', 'BIGINT'),
    ('bigint(20) unsigned', 'BIGINT', 'DECIMAL(20,0)'),
    ('varchar(10)', 'LONGTEXT', 'LONGTEXT'),
    ('varchar(10)', 'VARCHAR(200)', 'VARCHAR(200)'),
    ('int(11)', 'LONGTEXT', 'LONGTEXT'),
    ('decimal(10,2)', 'DECIMAL(10,4)', 'DECIMAL(12,4)'),
    ("enum('a','b')", "ENUM('c','a')", "ENUM('a','b','c')"),
    ('float', 'DOUBLE', 'DOUBLE'),
    ('varbinary(4)', 'varbinary(10)', 'varbinary(10)'),
    ('blob', 'longblob', 'longblob'),
    ('tinyblob', 'varbinary(300)', 'varbinary(300)'),
    ('datetime', 'datetime(6)', 'datetime(6)'),
    ('time', 'time(3)', 'time(3)'),
    ('timestamp(3)', 'timestamp(6)', 'timestamp(6)'),
])
def test_mariadb_widenings(target, new, expected):
    assert not holds(target, new, 'mysql')
    assert widened(target, new, 'mysql') == expected


def test_a_mariadb_key_column_widens_to_an_indexable_type():
    assert widened('int(11)', 'VARCHAR(255)', 'mysql', key=True) == 'VARCHAR(255)'


@pytest.mark.parametrize(('target', 'new', 'dialect'), [
    ('text', 'integer', 'postgresql'),
    ('character varying(10)', 'integer', 'postgresql'),
    ('date', 'timestamp without time zone', 'postgresql'),
    ('timestamp without time zone', 'timestamp with time zone', 'postgresql'),
    ('bigint', 'double precision', 'postgresql'),  # not every bigint is exact in a double
    ('boolean', 'integer', 'postgresql'),
    ('jsonb', 'json', 'postgresql'),
    ('mood', 'text[]', 'postgresql'),
    ('longtext', 'INT', 'mysql'),
    ('datetime(6)', 'DATE', 'mysql'),
    ('decimal(65,30)', 'DECIMAL(65,0)', 'mysql'),  # MariaDB's 65 digits cannot hold both
    ('datetime(6)', 'time(6)', 'mysql'),
    ('binary(4)', 'binary(10)', 'mysql'),  # pads the values the target holds with zeros
])
def test_changes_no_target_can_follow_safely(target, new, dialect):
    assert not holds(target, new, dialect)
    assert widened(target, new, dialect) is None


def test_old_values_are_storable_in_a_column_widened_to_text():
    assert storable('text', 'integer', 'postgresql')
    assert storable('LONGTEXT', 'INT', 'mysql')
    assert not storable('character varying(10)', 'integer', 'postgresql')
    assert not storable('date', 'integer', 'postgresql')


PG_TYPES = ['smallint', 'integer', 'bigint', 'numeric', 'numeric(5,0)', 'numeric(10,2)',
            'numeric(30,10)', 'real', 'double precision', 'text', 'character varying(3)',
            'character varying(40)', 'date', 'boolean', 'jsonb', 'uuid',
            'timestamp with time zone']
MY_TYPES = ['TINYINT', 'SMALLINT', 'INT', 'INT UNSIGNED', 'BIGINT', 'BIGINT UNSIGNED',
            'DECIMAL(5,0)', 'DECIMAL(10,2)', 'DECIMAL(40,20)', 'FLOAT', 'DOUBLE', 'VARCHAR(3)',
            'VARCHAR(40)', 'LONGTEXT', 'DATE', 'DATETIME(6)', "ENUM('a','b')", "ENUM('c')"]


@given(st.sampled_from([('postgresql', t) for t in PG_TYPES] + [('mysql', t) for t in MY_TYPES]),
       st.data())
def test_a_widened_type_holds_the_old_and_the_new_values(first, data):
    dialect, target = first
    new = data.draw(st.sampled_from(PG_TYPES if dialect == 'postgresql' else MY_TYPES))
    if holds(target, new, dialect):
        return
    wider = widened(target, new, dialect)
    if wider is None:
        return
    assert storable(wider, target, dialect) and holds(wider, new, dialect), (target, new, wider)
    if 'text' not in wider.lower() and wider != 'LONGTEXT':
        assert holds(wider, target, dialect), (target, new, wider)


@pytest.mark.parametrize(('target', 'new', 'dialect', 'expected'), [
    ('numeric(10,2)', 'numeric(10,0)', 'postgresql', 'numeric(10,0)'),
    ('numeric(10,2)', 'integer', 'postgresql', 'integer'),
    ('numeric(20,4)', 'numeric(10,2)', 'postgresql', 'numeric(18,2)'),  # wider integer part
    ('numeric', 'numeric(10,2)', 'postgresql', 'numeric(10,2)'),
    ('double precision', 'real', 'postgresql', 'real'),
    ('double precision', 'integer', 'postgresql', 'integer'),
    ('decimal(10,2)', 'DECIMAL(8,0)', 'mysql', 'DECIMAL(8,0)'),
    ('double', 'FLOAT', 'mysql', 'FLOAT'),
    ('datetime(6)', 'DATETIME', 'mysql', 'DATETIME'),
])
def test_a_narrowing_that_rounds_converts_the_target_too(target, new, dialect, expected):
    assert narrowed(target, new, dialect) == expected


@pytest.mark.parametrize(('target', 'new', 'dialect'), [
    ('bigint', 'integer', 'postgresql'),  # the source's ALTER fails rather than change a value
    ('text', 'character varying(10)', 'postgresql'),
    ('numeric(12,2)', 'numeric(10,2)', 'postgresql'),
    ('numeric(12,2)', 'numeric', 'postgresql'),
    ('numeric(12,0)', 'integer', 'postgresql'),
    ('longtext', 'VARCHAR(20)', 'mysql'),
    ('datetime(6)', 'DATETIME(6)', 'mysql'),
])
def test_narrowings_that_keep_every_value_need_nothing(target, new, dialect):
    assert narrowed(target, new, dialect) is None


# --- the plan for a table --------------------------------------------------------------------

V1 = TableSchema('public', 'items', (
    Column('id', Kind.INT64, 'bigint', nullable=False),
    Column('n', Kind.INT32, 'integer'),
    Column('code', Kind.STRING, 'character varying(10)'),
    Column('gone', Kind.TEXT, 'text'),
), key=('id',))


def existing(*columns: tuple[str, str, bool, bool]) -> dict[str, TargetColumn]:
    return {c[0]: TargetColumn(*c) for c in columns}


TARGET = existing(('id', 'bigint', False, True), ('n', 'integer', True, False),
                  ('code', 'character varying(10)', True, False),
                  ('gone', 'text', False, False), ('_cb_pos', 'text', True, False))


def pg_plan(schema: TableSchema, target=TARGET, **kwargs):
    return plan_alteration(target, schema, lambda c: postgres_type(c, 'postgresql'),
                           'postgresql', **kwargs)


def test_the_same_schema_needs_nothing():
    plan = pg_plan(V1)
    assert not plan and plan.problems == () and plan.kept == ()


def test_new_columns_are_added_nullable_and_retyped_ones_widened():
    v2 = TableSchema('public', 'items', (
        *V1.columns[:1], Column('n', Kind.INT64, 'bigint'), Column('code', Kind.TEXT, 'text'),
        V1.columns[3], Column('c2', Kind.INT32, 'integer', nullable=False)), key=('id',))
    plan = pg_plan(v2)
    assert plan.add == (('c2', 'integer', True),)
    assert [(w.column, w.old, w.new) for w in plan.widen] == [
        ('n', 'integer', 'bigint'), ('code', 'character varying(10)', 'text')]
    assert plan.problems == ()


def test_a_dropped_column_is_kept_and_made_nullable():
    v2 = TableSchema('public', 'items', V1.columns[:3], key=('id',))
    plan = pg_plan(v2)
    assert plan.kept == ('gone',)
    assert [c.name for c in plan.relax] == ['gone']
    assert plan.add == () and plan.widen == ()


def test_a_rename_is_a_kept_column_plus_a_new_one():
    v2 = TableSchema('public', 'items', (*V1.columns[:3], Column('here', Kind.TEXT, 'text')),
                     key=('id',))
    plan = pg_plan(v2)
    assert plan.kept == ('gone',) and plan.add == (('here', 'text', True),)


def test_a_narrowing_the_target_cannot_follow_names_the_column_and_both_types():
    v2 = TableSchema('public', 'items', (*V1.columns[:3], Column('gone', Kind.INT32, 'integer')),
                     key=('id',))
    plan = pg_plan(v2)
    assert len(plan.problems) == 1
    assert "column 'gone'" in plan.problems[0]
    assert 'integer' in plan.problems[0] and 'type text' in plan.problems[0]
    # Rows from before the target was widened (a replay) only need to fit.
    assert pg_plan(v2, older=True).problems == ()


def test_a_scale_cut_with_the_same_precision_rounds_rather_than_widens():
    """numeric(10,2) -> numeric(10,0) has more digits before the point, and rounds."""
    price = Column('price', Kind.DECIMAL, 'numeric(10,0)')
    v2 = TableSchema('public', 'items', (*V1.columns, price), key=('id',))
    have = {**TARGET, 'price': TargetColumn('price', 'numeric(10,2)')}
    plan = pg_plan(v2, target=have)
    assert plan.widen == () and [(w.column, w.new) for w in plan.narrow] == [
        ('price', 'numeric(10,0)')]
    # Rows from before the change (a replay) are older than the target's rounded values.
    older = pg_plan(v2, target=have, older=True)
    assert older.narrow == () and [w.new for w in older.widen] == ['numeric(12,2)']


def test_a_kept_column_is_marked_and_added_anew_when_its_name_comes_back():
    v2 = TableSchema('public', 'items', V1.columns[:3], key=('id',))
    assert [c.name for c in pg_plan(v2).mark] == ['gone']
    marked = {**TARGET, 'gone': TargetColumn('gone', 'text', dropped=True)}
    assert pg_plan(v2, target=marked).mark == ()  # once
    back = Column('gone', Kind.INT32, 'integer', default='7')
    v3 = TableSchema('public', 'items', (*V1.columns[:3], back), key=('id',))
    plan = pg_plan(v3, target=marked)
    assert plan.readd == ('gone',) and plan.add == (('gone', 'integer', True),)
    assert plan.defaults == (back,) and plan.problems == () and plan.kept == ()
    # A column that was never dropped is the same column: kept as it is.
    assert not pg_plan(V1) and pg_plan(V1).readd == ()


def test_a_changed_key_is_a_problem():
    v2 = TableSchema('public', 'items', V1.columns, key=('id', 'n'))
    assert 'key changed' in pg_plan(v2).problems[0]


def test_a_table_made_by_someone_else_gets_the_bookkeeping_columns():
    plan = pg_plan(V1, target={k: v for k, v in TARGET.items() if k != '_cb_pos'})
    assert plan.hidden == ('_cb_pos',)
    keyless = TableSchema('public', 'log', (Column('line', Kind.TEXT, 'text'),))
    plan = pg_plan(keyless, target=existing(('line', 'text', True, False)))
    assert plan.hidden == ('_cb_pos', '_cb_id')


def test_mariadb_plan_uses_the_typemap_for_a_postgres_source():
    target = existing(('id', 'bigint(20)', False, True), ('n', 'int(11)', True, False),
                      ('code', 'varchar(10)', True, False), ('gone', 'longtext', True, False),
                      ('_cb_pos', 'varchar(32)', True, False))
    v2 = TableSchema('public', 'items', (
        V1.columns[0], Column('n', Kind.INT64, 'bigint'), Column('code', Kind.TEXT, 'text'),
        Column('gone', Kind.INT32, 'integer')), key=('id',))
    plan = plan_alteration(target, v2, lambda c: mysql_type(c, 'postgresql', key=c.name == 'id'),
                           'mysql')
    assert [(w.column, w.new) for w in plan.widen] == [('n', 'BIGINT'), ('code', 'LONGTEXT')]
    assert "column 'gone'" in plan.problems[0] and 'longtext' in plan.problems[0]


def test_unknown_dialects_are_refused():
    with pytest.raises(ValueError, match='dialect'):
        plan_alteration({}, V1, str, 'oracle')


# --- the SQL it runs -------------------------------------------------------------------------

def test_pg_alter_is_one_statement_converting_with_postgres_cast():
    [statement] = sql.pg_alter_table(T, [('c1', 'text', True)], [('n', 'bigint')], ['gone'])
    assert statement == (
        'ALTER TABLE "public"."items" ADD COLUMN IF NOT EXISTS "c1" text, '
        'ALTER COLUMN "n" TYPE bigint USING "n"::bigint, ALTER COLUMN "gone" DROP NOT NULL')
    [only] = sql.pg_alter_table(T, retype=[('we"ird', 'text')])
    assert only == ('ALTER TABLE "public"."items" '
                    'ALTER COLUMN "we""ird" TYPE text USING "we""ird"::text')


def test_my_alter_restates_the_column_definition():
    [statement] = sql.my_alter_table(TargetTable(None, 'items'), [('c1', 'LONGTEXT', True)],
                                     [('n', 'BIGINT', False), ('gone', 'longtext', True)])
    assert statement == ('ALTER TABLE `items` ADD COLUMN IF NOT EXISTS `c1` LONGTEXT NULL, '
                         'MODIFY COLUMN `n` BIGINT NOT NULL, MODIFY COLUMN `gone` longtext NULL')


def test_upserts_set_kept_columns_null_only_when_the_row_is_newer():
    statement = sql.pg_upsert(T, 'stage', ['id', 'n', '_cb_pos'], ['id'], ['gone'])
    assert ('SET "n" = EXCLUDED."n", "_cb_pos" = EXCLUDED."_cb_pos", "gone" = NULL WHERE'
            in statement)
    statement = sql.my_upsert(TargetTable(None, 'items'), ['id', 'n', '_cb_pos'], ['id'],
                              ['(1, 2, 3)'], ['gone'])
    assert ('`gone` = IF(`_cb_pos` IS NULL OR `_cb_pos` < VALUES(`_cb_pos`), NULL, `gone`), '
            '`_cb_pos` = IF(') in statement


def test_a_batch_knows_each_schema_and_where_it_starts_and_what_rows_set_null():
    v2 = TableSchema('public', 'items', V1.columns[:3], key=('id',))

    def event(lsn: int, table: TableSchema) -> ChangeEvent:
        source = SourcePosition('postgresql', 's', 'd', 'public', 'items', 0, commit_lsn=lsn,
                                lsn=lsn)
        return ChangeEvent(Op.CREATE, table, source, after={'id': lsn})

    plan = plan_batch([event(3, v2), event(1, V1), event(2, V1), event(4, v2)],
                      postgres_target)
    [tb] = plan.tables.values()
    assert tb.schemas == [V1, v2]
    assert tb.since == [event(1, V1).source.sort_key, event(3, v2).source.sort_key]
    tb.target_columns = frozenset(TARGET)
    assert tb.nulled(v2) == ('gone',) and tb.nulled(V1) == ()


# --- ADD COLUMN … DEFAULT: the value rows older than the column hold at the source ----------

def test_a_new_column_with_a_missing_value_is_added_with_it_as_default():
    c2 = Column('c2', Kind.INT32, 'integer', default='7')
    v2 = TableSchema('public', 'items', (*V1.columns, c2), key=('id',))
    plan = pg_plan(v2)
    assert plan.add == (('c2', 'integer', True),) and plan.defaults == (c2,)
    assert pg_plan(TableSchema('public', 'items', V1.columns, key=('id',))).defaults == ()
    # A column the target has already needs nothing, whatever its default.
    have = {**TARGET, 'c2': TargetColumn('c2', 'integer')}
    assert not pg_plan(v2, target=have) and pg_plan(v2, target=have).defaults == ()


def test_pg_adds_the_default_as_a_cast_literal_then_drops_it():
    add = add_default(('c2', 'integer', True), '7', 'postgresql')
    assert add == ('c2', "integer DEFAULT '7'::integer", True)
    statements = sql.pg_alter_table(T, [add, ('c1', 'text', True)])
    statements += drop_defaults(T, ['c2'], 'postgresql')
    assert statements == [
        'ALTER TABLE "public"."items" ADD COLUMN IF NOT EXISTS "c2" integer DEFAULT '
        "'7'::integer, ADD COLUMN IF NOT EXISTS \"c1\" text",
        'ALTER TABLE "public"."items" ALTER COLUMN "c2" DROP DEFAULT']
    # Quotes doubled; '%' doubled too (statements run with a parameter sequence).
    assert add_default(('t', 'character varying(5)', True), "it's 5%", 'postgresql')[1] == (
        "character varying(5) DEFAULT 'it''s 5%%'::character varying(5)")
    assert drop_defaults(T, [], 'postgresql') == []


def test_mariadb_adds_the_default_literal_then_drops_it():
    target = TargetTable(None, 'items')
    add = add_default(('c2', 'INT', True), '7', 'mysql')
    statements = sql.my_alter_table(target, [add]) + drop_defaults(target, ['c2', 'd`'], 'mysql')
    assert statements == [
        'ALTER TABLE `items` ADD COLUMN IF NOT EXISTS `c2` INT DEFAULT 7 NULL',
        'ALTER TABLE `items` ALTER COLUMN `c2` DROP DEFAULT, ALTER COLUMN `d``` DROP DEFAULT']


def test_mariadb_default_literals_are_converted_like_values():
    from transforms.sinks.sql.mysql import _default_literal

    def literal(column: Column) -> str:
        return _default_literal(column, lambda t: t.replace("'", "\\'"))

    assert literal(Column('c', Kind.INT32, 'integer', default='7')) == '7'
    assert literal(Column('c', Kind.BOOLEAN, 'boolean', default='t')) == '1'
    assert literal(Column('c', Kind.TEXT, 'text', default="it's")) == "'it\\'s'"
    assert literal(Column('c', Kind.TIMESTAMPTZ, 'timestamp with time zone',
                          default='2024-03-01 10:15:30+02')) == "'2024-03-01 08:15:30'"
    assert literal(Column('c', Kind.ARRAY, 'integer[]', element=Kind.INT32,
                          default='{1,NULL}')) == "'[1, null]'"
    # What MariaDB cannot hold is refused, naming the column (the rows become dead letters).
    with pytest.raises(ValueError, match=r"column 'c'.*cannot hold float"):
        literal(Column('c', Kind.FLOAT64, 'double precision', default='NaN'))


def test_rows_older_than_a_column_with_a_default_get_it_in_the_same_batch():
    c2 = Column('c2', Kind.INT32, 'integer', default='7')
    v2 = TableSchema('public', 'items', (*V1.columns, Column('c1', Kind.TEXT, 'text')),
                     key=('id',))
    v3 = TableSchema('public', 'items', (*v2.columns, c2), key=('id',))
    v4 = TableSchema('public', 'items', (*V1.columns, Column('c1', Kind.TEXT, 'text'),
                                         Column('c2', Kind.INT64, 'bigint')), key=('id',))
    # c1 came without a default: NULL; c2 with one: 7, for rows of V1 and of v2 alike.
    assert filled([V1, v2, v3], V1, ['c1', 'c2', 'gone']) == {'c2': c2}
    assert filled([V1, v2, v3], v2, ['c2']) == {'c2': c2}
    assert filled([V1, v2, v3], v3, ['gone']) == {}
    # The first newer schema having the column says (a rewrite later cleared the value).
    assert filled([V1, v3, v4], V1, ['c2']) == {'c2': c2}
    assert filled([V1, v4], V1, ['c2']) == {}
