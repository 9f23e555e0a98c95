"""Envelope columns → PostgreSQL and MariaDB DDL types (transforms/sinks/sql/typemap.py)."""
from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.envelope import Column, Kind
from transforms.sinks.sql.typemap import mysql_scale, mysql_type, postgres_type


@pytest.mark.parametrize(('column', 'expected'), [
    (Column('a', Kind.BOOLEAN), 'boolean'),
    (Column('a', Kind.INT16), 'smallint'),
    (Column('a', Kind.INT32), 'integer'),
    (Column('a', Kind.INT64), 'bigint'),
    (Column('a', Kind.FLOAT32), 'real'),
    (Column('a', Kind.FLOAT64), 'double precision'),
    (Column('a', Kind.DECIMAL, precision=10, scale=2), 'numeric(10,2)'),
    (Column('a', Kind.DECIMAL), 'numeric'),
    (Column('a', Kind.STRING), 'text'),
    (Column('a', Kind.STRING, source_type='varchar(20)'), 'varchar(20)'),
    (Column('a', Kind.BYTES), 'bytea'),
    (Column('a', Kind.DATE), 'date'),
    (Column('a', Kind.TIME), 'interval'),  # MariaDB's TIME is a duration
    (Column('a', Kind.TIMESTAMP), 'timestamp'),
    (Column('a', Kind.TIMESTAMPTZ), 'timestamptz'),
    (Column('a', Kind.INTERVAL), 'interval'),
    (Column('a', Kind.JSON), 'jsonb'),
    (Column('a', Kind.UUID), 'uuid'),
    (Column('a', Kind.ENUM, symbols=('x', 'y')), 'text'),
    (Column('a', Kind.ARRAY, element=Kind.INT32), 'integer[]'),
    (Column('a', Kind.ARRAY, element=Kind.TIMESTAMPTZ), 'timestamptz[]'),
    (Column('a', Kind.TEXT), 'text'),
])
def test_postgres_type_by_kind(column, expected):
    assert postgres_type(column, 'mysql') == expected


@pytest.mark.parametrize(('source_type', 'kind', 'expected'), [
    ('int unsigned', Kind.INT32, 'bigint'),
    ('bigint unsigned', Kind.INT64, 'numeric(20,0)'),
    ('smallint(5) unsigned', Kind.INT16, 'integer'),
    ('tinyint(1)', Kind.BOOLEAN, 'boolean'),
    ('datetime(6)', Kind.TIMESTAMP, 'timestamp'),
    ('timestamp', Kind.TIMESTAMPTZ, 'timestamptz'),
    ('json', Kind.JSON, 'jsonb'),
])
def test_mariadb_source_into_postgres(source_type, kind, expected):
    """MariaDB → PostgreSQL: unsigned integers get a type that holds their whole range."""
    assert postgres_type(Column('a', kind, source_type=source_type), 'mysql') == expected


def test_postgres_source_type_is_reused_verbatim_for_a_postgres_source():
    column = Column('a', Kind.DECIMAL, source_type='numeric(12,4)', precision=12, scale=4)
    assert postgres_type(column, 'postgresql') == 'numeric(12,4)'
    column = Column('t', Kind.TIMESTAMPTZ, source_type='timestamp(3) with time zone')
    assert postgres_type(column, 'postgresql') == 'timestamp(3) with time zone'
    column = Column('d', Kind.ENUM, source_type='"Mood Type"', symbols=('ok',))
    assert postgres_type(column, 'postgresql') == '"Mood Type"'


@pytest.mark.parametrize('source_type', [
    'int; DROP TABLE t', 'int -- x', 'int /* x */', "text DEFAULT 'x'", '"unterminated',
])
def test_unsafe_source_types_are_not_reused(source_type):
    column = Column('a', Kind.INT32, source_type=source_type)
    assert postgres_type(column, 'postgresql') == 'integer'
    assert mysql_type(column, 'mysql') == 'INT'


@pytest.mark.parametrize(('column', 'expected'), [
    (Column('a', Kind.BOOLEAN), 'BOOLEAN'),
    (Column('a', Kind.INT16), 'SMALLINT'),
    (Column('a', Kind.INT32), 'INT'),
    (Column('a', Kind.INT64), 'BIGINT'),
    (Column('a', Kind.FLOAT32), 'FLOAT'),
    (Column('a', Kind.FLOAT64), 'DOUBLE'),
    (Column('a', Kind.DECIMAL, precision=10, scale=2), 'DECIMAL(10,2)'),
    (Column('a', Kind.DECIMAL), 'DECIMAL(65,30)'),
    (Column('a', Kind.DECIMAL, precision=100, scale=50), 'DECIMAL(65,30)'),
    (Column('a', Kind.STRING), 'LONGTEXT'),
    (Column('a', Kind.STRING, source_type='varchar(20)'), 'VARCHAR(20)'),
    (Column('a', Kind.STRING, source_type='varchar(5000)'), 'LONGTEXT'),
    (Column('a', Kind.BYTES), 'LONGBLOB'),
    (Column('a', Kind.DATE), 'DATE'),
    (Column('a', Kind.TIME), 'TIME(6)'),
    (Column('a', Kind.TIMETZ), 'VARCHAR(32)'),
    (Column('a', Kind.TIMESTAMP), 'DATETIME(6)'),
    (Column('a', Kind.TIMESTAMPTZ), 'DATETIME(6)'),
    (Column('a', Kind.INTERVAL), 'VARCHAR(64)'),
    (Column('a', Kind.JSON), 'JSON'),
    (Column('a', Kind.UUID), 'UUID'),
    (Column('a', Kind.ENUM, symbols=('x', "it's")), "ENUM('x','it''s')"),
    (Column('a', Kind.ENUM), 'VARCHAR(255)'),
    (Column('a', Kind.ARRAY, element=Kind.INT32), 'JSON'),
    (Column('a', Kind.TEXT), 'LONGTEXT'),
])
def test_mysql_type_from_a_postgres_source(column, expected):
    assert mysql_type(column, 'postgresql') == expected


def test_mysql_key_columns_get_indexable_types():
    assert mysql_type(Column('k', Kind.STRING), 'postgresql', key=True) == 'VARCHAR(255)'
    assert mysql_type(Column('k', Kind.TEXT), 'postgresql', key=True) == 'VARCHAR(255)'
    assert mysql_type(Column('k', Kind.BYTES), 'postgresql', key=True) == 'VARBINARY(255)'
    column = Column('k', Kind.STRING, source_type='character varying(600)')
    assert mysql_type(column, 'postgresql', key=True) == 'VARCHAR(600)'


def test_mysql_source_type_is_reused_verbatim_for_a_mariadb_source():
    column = Column('a', Kind.INT64, source_type='int(10) unsigned')
    assert mysql_type(column, 'mysql') == 'int(10) unsigned'
    assert mysql_type(column, 'mariadb') == 'int(10) unsigned'
    enum = Column('e', Kind.ENUM, source_type="enum('a','b''c')", symbols=('a', "b'c"))
    assert mysql_type(enum, 'mysql') == "ENUM('a','b''c')"


_SAFE = re.compile(r"^(?:[A-Za-z0-9_ .,()\[\]]|\"(?:[^\"]|\"\")*\"|'(?:[^'\\]|''|\\\\)*')+$")

columns = st.builds(
    Column,
    name=st.just('c'),
    kind=st.sampled_from(list(Kind)),
    source_type=st.text(max_size=30),
    nullable=st.booleans(),
    element=st.none() | st.sampled_from([k for k in Kind if k is not Kind.ARRAY]),
    precision=st.none() | st.integers(1, 1000),
    scale=st.none() | st.integers(0, 1000),
    symbols=st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple),
)


@given(columns, st.sampled_from(['postgresql', 'mysql', 'mariadb', 'other']), st.booleans())
def test_every_column_maps_to_a_type_that_cannot_break_out_of_ddl(column, connector, key):
    """Whatever a source reports, the DDL type is a type name: no ';', comment or stray quote."""
    for type_ in (postgres_type(column, connector), mysql_type(column, connector, key=key)):
        assert type_ and _SAFE.match(type_), type_
        assert ';' not in type_.split("'")[0] and '--' not in type_.split("'")[0]


@pytest.mark.parametrize(('column', 'connector', 'expected'), [
    (Column('v', Kind.DECIMAL, 'numeric'), 'postgresql', 30),
    (Column('v', Kind.DECIMAL, 'numeric(40,35)', precision=40, scale=35), 'postgresql', 30),
    (Column('v', Kind.DECIMAL, 'numeric(10,2)', precision=10, scale=2), 'postgresql', 2),
    (Column('v', Kind.DECIMAL, 'decimal(65,38)', precision=65, scale=38), 'mariadb', 38),
    (Column('v', Kind.DECIMAL, 'decimal(10,0) unsigned'), 'mariadb', 0),
    (Column('v', Kind.DECIMAL, 'decimal'), 'mysql', 0),
    (Column('v', Kind.DECIMAL, 'money'), 'mysql', None),
])
def test_mysql_scale_is_the_digits_the_created_column_keeps(column, connector, expected):
    assert mysql_scale(column, connector) == expected
