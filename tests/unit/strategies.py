"""Hypothesis strategies for the envelope's types, shared by every test that needs them.

    from tests.unit import strategies as cst

    @given(cst.table_schemas().flatmap(cst.change_events))
    def test_round_trip(event): ...

Values cover what :class:`~transforms.envelope.Kind` allows in memory, edge values first: type
bounds, NaN/±Infinity, datetime.min/max, the database's text forms of values Python cannot hold
(``infinity``, ``10000-01-01``, ``24:00:00``), aware datetimes in any offset, empty bytes,
unicode and control characters, the JSON document ``null``, arrays with NULL elements and
several dimensions.  :func:`comparable` turns values or events into something ``==`` can judge
(NaN equal to NaN, -0.0 distinct from 0.0, ``1.50`` distinct from ``1.5``, instants in UTC).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from transforms.envelope import (
    ChangeEvent,
    Column,
    Kind,
    Op,
    SourcePosition,
    TableSchema,
    TransactionInfo,
)

__all__ = [
    'change_events',
    'column_names',
    'columns',
    'comparable',
    'json_documents',
    'json_objects',
    'kinds',
    'rows',
    'source_positions',
    'table_schemas',
    'text',
    'values',
]

INT_BOUNDS = {Kind.INT16: 16, Kind.INT32: 32, Kind.INT64: 64}
LONG_MAX = 2**63 - 1

# Text forms PostgreSQL/MySQL emit for values Python's types cannot hold.
DATE_TEXT = ('infinity', '-infinity', '10000-01-01', '0044-03-15 BC', '0000-00-00')
TIME_TEXT = ('24:00:00', '838:59:59', '-12:00:00')
TIMESTAMP_TEXT = ('infinity', '-infinity', '10000-01-01 00:00:00', '0044-03-15 12:00:00 BC',
                  '0000-00-00 00:00:00')
TIMESTAMPTZ_TEXT = ('infinity', '-infinity', '10000-01-01 00:00:00+00',
                    '0044-03-15 12:00:00+00 BC')
SPECIAL_DECIMALS = (Decimal('NaN'), Decimal('Infinity'), Decimal('-Infinity'))

# No NUL (no database stores it in text) and no lone surrogates (not encodable as UTF-8).
text = st.text(st.characters(exclude_categories=('Cs',), exclude_characters='\x00'),
               max_size=20)

kinds = st.sampled_from(list(Kind))

_SQL_NAMES = ('id', 'order id', 'order_id', '1st', 'prénom', 'a-b', 'a_b', 'Order', 'select',
              '_', 'x.y', 'x_y', 'ünïcödé', 'CamelCase', '  ')


def column_names() -> st.SearchStrategy[str]:
    """SQL column names, often ones that are not Avro names or sanitise to the same one."""
    return st.one_of(
        st.sampled_from(_SQL_NAMES),
        st.from_regex(r'[a-z_][a-z0-9_]{0,8}', fullmatch=True),
        text.filter(bool),
    )


def _decimal_shape(draw: Any) -> tuple[int | None, int | None]:
    return draw(st.one_of(
        st.just((None, None)),
        st.integers(1, 40).flatmap(lambda p: st.tuples(st.just(p), st.integers(0, p))),
        st.tuples(st.integers(1, 5), st.integers(6, 10)),  # PostgreSQL 15: scale > precision
        st.tuples(st.integers(1, 5), st.integers(-3, -1)),  # and a negative scale
    ))


@st.composite
def columns(draw: Any, kinds: st.SearchStrategy[Kind] = kinds,
            names: st.SearchStrategy[str] | None = None) -> Column:
    """A :class:`Column` of any Kind (or of one drawn from ``kinds``)."""
    kind = draw(kinds)
    element = None
    if kind is Kind.ARRAY:
        element = draw(st.sampled_from([k for k in Kind if k is not Kind.ARRAY]))
    precision = scale = None
    if Kind.DECIMAL in (kind, element):
        precision, scale = _decimal_shape(draw)
    symbols: tuple[str, ...] = ()
    if Kind.ENUM in (kind, element):
        symbols = tuple(draw(st.lists(text.filter(bool), min_size=1, max_size=4, unique=True)))
    return Column(
        name=draw(names if names is not None else column_names()),
        kind=kind,
        source_type=draw(st.sampled_from(['', kind.value])),
        nullable=draw(st.booleans()),
        element=element,
        precision=precision,
        scale=scale,
        symbols=symbols,
        default=draw(st.none() | st.just('NULL')),
    )


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                          st.floats(allow_nan=False, allow_infinity=False), text)
json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8)
json_objects = st.dictionaries(text, json_values, max_size=4)


def json_documents() -> st.SearchStrategy[str]:
    """JSON documents as text, the JSON/JSONB column value; often the document ``null``."""
    return st.one_of(st.just('null'),
                     json_values.map(lambda v: json.dumps(v, ensure_ascii=False)))


def _in_utc(value: dt.datetime) -> bool:
    try:
        value.astimezone(dt.timezone.utc)
    except OverflowError:
        return False
    return True


_offsets = st.builds(dt.timezone, st.timedeltas(min_value=dt.timedelta(hours=-23, minutes=-59),
                                                max_value=dt.timedelta(hours=23, minutes=59)))


def _timezones() -> st.SearchStrategy[dt.tzinfo]:
    try:
        import zoneinfo
        zoneinfo.ZoneInfo('Europe/Paris')
    except Exception:  # no tz database on this machine: fixed offsets only
        return _offsets
    return st.one_of(_offsets, st.timezones())


def _decimals(column: Column) -> st.SearchStrategy[Decimal]:
    many_digits = st.builds(
        lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
        st.integers(0, 1), st.lists(st.integers(0, 9), min_size=1, max_size=60),
        st.integers(-60, 60))
    options = [st.sampled_from(SPECIAL_DECIMALS),
               st.decimals(allow_nan=False, allow_infinity=False), many_digits]
    if column.precision is not None and column.scale is not None:
        # Values shaped like the column's own: the ones a typed encoding must keep exactly.
        precision, scale = column.precision, column.scale
        options.append(st.builds(
            lambda sign, unscaled: Decimal((sign, tuple(int(d) for d in str(unscaled)), -scale)),
            st.integers(0, 1), st.integers(0, 10**max(precision, 1) - 1)))
    return st.one_of(options)


def _scalars(kind: Kind, column: Column) -> st.SearchStrategy[Any]:
    if kind is Kind.BOOLEAN:
        return st.booleans()
    if kind in INT_BOUNDS:
        bits = INT_BOUNDS[kind]
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if kind is Kind.FLOAT32:
        return st.floats(width=32)
    if kind is Kind.FLOAT64:
        return st.floats()
    if kind is Kind.DECIMAL:
        return _decimals(column)
    if kind is Kind.BYTES:
        return st.binary(max_size=32)
    if kind is Kind.DATE:
        return st.one_of(st.dates(), st.sampled_from([dt.date.min, dt.date.max]),
                         st.sampled_from(DATE_TEXT))
    if kind is Kind.TIME:
        return st.one_of(st.times(), st.sampled_from([dt.time.min, dt.time.max]),
                         st.sampled_from(TIME_TEXT))
    if kind is Kind.TIMESTAMP:
        return st.one_of(st.datetimes(), st.sampled_from([dt.datetime.min, dt.datetime.max]),
                         st.sampled_from(TIMESTAMP_TEXT))
    if kind is Kind.TIMESTAMPTZ:
        utc_bounds = [dt.datetime.min.replace(tzinfo=dt.timezone.utc),
                      dt.datetime.max.replace(tzinfo=dt.timezone.utc)]
        return st.one_of(st.datetimes(timezones=_timezones()).filter(_in_utc),
                         st.sampled_from(utc_bounds), st.sampled_from(TIMESTAMPTZ_TEXT))
    if kind is Kind.JSON:
        return json_documents()
    if kind is Kind.UUID:
        return st.uuids().map(str) | st.just(str(uuid.UUID(int=0)))
    if kind is Kind.ENUM:
        return st.sampled_from(column.symbols) if column.symbols else text
    if kind is Kind.TIMETZ:
        return st.sampled_from(['12:00:00+02', '24:00:00+00', '00:00:00-15:59']) | text
    if kind is Kind.INTERVAL:
        return st.sampled_from(['1 day 02:00:00', '-178000000 years', '00:00:00']) | text
    return text  # STRING, TEXT


def values(column: Column) -> st.SearchStrategy[Any]:
    """A non-NULL in-memory value of ``column``."""
    if column.kind is not Kind.ARRAY:
        return _scalars(column.kind, column)
    element = st.none() | _scalars(column.element or Kind.TEXT, column)
    return st.one_of(
        st.lists(element, max_size=5),
        st.lists(st.lists(element, max_size=3), min_size=1, max_size=3),  # two dimensions
    )


@st.composite
def table_schemas(draw: Any, column_strategy: st.SearchStrategy[Column] | None = None,
                  max_columns: int = 8) -> TableSchema:
    """A :class:`TableSchema` with uniquely named columns and a key of some of them."""
    cols = draw(st.lists(column_strategy if column_strategy is not None else columns(),
                         min_size=1, max_size=max_columns, unique_by=lambda c: c.name))
    key = draw(st.lists(st.sampled_from([c.name for c in cols]), unique=True, max_size=2))
    return TableSchema(
        schema=draw(st.sampled_from(['public', '', 'Sales Data', '1x', 'app']) | text),
        table=draw(column_names()),
        columns=tuple(cols),
        key=tuple(key),
    )


@st.composite
def rows(draw: Any, table: TableSchema, complete: bool = False) -> dict[str, Any]:
    """A row of ``table``: each column NULL or a value; some columns absent unless complete."""
    out = {}
    for column in table.columns:
        if not complete and draw(st.integers(0, 4)) == 0:
            continue
        out[column.name] = draw(st.none() | values(column))
    return out


_connectors = st.sampled_from(['postgresql', 'mysql', 'mariadb'])
_longs = st.integers(0, LONG_MAX)


@st.composite
def source_positions(draw: Any) -> SourcePosition:
    """A :class:`SourcePosition`: optional fields set or not, numbers up to Avro's long."""
    def maybe(strategy: st.SearchStrategy[Any]) -> Any:
        return draw(st.none() | strategy)
    return SourcePosition(
        connector=draw(_connectors),
        name=draw(text),
        db=draw(text),
        schema=draw(text),
        table=draw(text),
        # The CloudEvent `time` is a datetime: keep the commit time within years 1970..9999.
        ts_ms=draw(st.integers(0, 253402300799999)),
        snapshot=draw(st.sampled_from(['true', 'last', 'false'])),
        tx_id=maybe(_longs),
        lsn=maybe(_longs),
        commit_lsn=maybe(_longs),
        file=maybe(st.integers(1, 999999).map(lambda n: f'mysql-bin.{n:06d}')),
        pos=maybe(_longs),
        row=maybe(st.integers(0, 2**31 - 1)),
        gtid=maybe(text),
        server_id=maybe(st.integers(0, 2**32 - 1)),
        thread=maybe(_longs),
        epoch=maybe(st.integers(0, 127)),
    )


transactions = st.builds(TransactionInfo, id=text, total_order=_longs,
                         data_collection_order=_longs)


@st.composite
def change_events(draw: Any, table: TableSchema) -> ChangeEvent:
    """A :class:`ChangeEvent` of ``table`` with any op, rows, unchanged columns and metadata."""
    op = draw(st.sampled_from(list(Op)))
    before = draw(st.none() | rows(table))
    after = draw(st.none() | rows(table))
    unchanged: frozenset[str] = frozenset()
    if after is not None:
        unchanged = frozenset(draw(st.lists(st.sampled_from([c.name for c in table.columns]),
                                            unique=True, max_size=3)))
        after = {name: value for name, value in after.items() if name not in unchanged}
    return ChangeEvent(
        op=op,
        table=table,
        source=draw(source_positions()),
        before=before,
        after=after,
        ts_ms=draw(st.integers(-(2**63), LONG_MAX)),
        transaction=draw(st.none() | transactions),
        schema_version=draw(st.none() | st.integers(0, 2**31 - 1)),
        unchanged=unchanged,
        message=draw(st.none() | json_objects),
    )


def comparable(value: Any) -> Any:
    """``value`` (an event, row or column value) in a form whose ``==`` means "the same".

    Python's ``==`` says NaN != NaN, -0.0 == 0.0, Decimal('1.5') == Decimal('1.50') and
    True == 1; a lossless encoding must keep all of those apart (or together) exactly.
    Aware datetimes compare as UTC instants and must come back in UTC.
    """
    if isinstance(value, ChangeEvent):
        fields = [(f.name, comparable(getattr(value, f.name)))
                  for f in dataclasses.fields(value) if f.name != 'table']
        return ('ChangeEvent', value.table, *fields)
    if isinstance(value, float):
        return ('float', 'nan' if math.isnan(value) else value.hex())
    if isinstance(value, Decimal):
        return ('Decimal', str(value))  # exact: keeps the exponent and the sign of zero
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return ('datetime', value.astimezone(dt.timezone.utc).isoformat())
    if isinstance(value, (dt.date, dt.time)):
        return (type(value).__name__, value.isoformat())
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(comparable(v) for v in value))
    if isinstance(value, (dict, frozenset)) or hasattr(value, 'items'):
        if isinstance(value, frozenset):
            return ('frozenset', tuple(sorted(value)))
        return ('dict', tuple(sorted((k, comparable(v)) for k, v in value.items())))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, comparable(dataclasses.asdict(value)))
    return (type(value).__name__, value)
