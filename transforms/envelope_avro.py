"""Avro encoding of :class:`~transforms.envelope.ChangeEvent`, one record schema per table.

The record follows the Debezium envelope (``before``, ``after``, ``source``, ``op``, ``ts_ms``,
``transaction``) and is lossless for every in-memory value a :class:`~transforms.envelope.Kind`
allows, given the table's schema::

    schema = fastavro.parse_schema(avro_schema(table, version=3))
    fastavro.writer(out, schema, [to_avro_record(event) for event in events])
    same = [from_avro_record(record, table) for record in fastavro.reader(out)]

Values use Avro logical types where one fits, with a ``string`` branch first in the union for
what the logical type cannot hold: a date in 10000 AD or ``infinity`` (the database's text form,
kept as ``str`` in memory), a ``NaN`` decimal, a decimal whose exponent is not the column's scale
(``1.5`` in ``numeric(5,2)``: the decimal branch would read back as ``1.50``), a multi-dimensional
array (its JSON text).  The string branch comes before the logical one because fastavro picks
the first branch that accepts a value, and its ``date`` branch accepts (and parses) ``str``.

Column names that are not Avro names (``order id``, ``1st``) are sanitised with a digest of the
original (unique, and stable as columns come and go), and the original is kept in the field's
``sql_name`` attribute, which :func:`from_avro_record` maps back.

Every row field is nullable, so a column may be absent from a row (an unchanged TOASTed column,
a column the source did not capture) without a placeholder value: the envelope lists absent
columns in ``unchanged`` (absent from ``after``, value unchanged) or in ``before_absent`` /
``after_absent``, so SQL NULL and "absent" stay distinct.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from transforms.envelope import (
    _VERSION,
    ChangeEvent,
    Column,
    EnvelopeError,
    Kind,
    Op,
    SourcePosition,
    TableSchema,
    TransactionInfo,
    decode_json_value,
    encode_json_value,
)

__all__ = ['avro_record_converter', 'avro_schema', 'from_avro_record', 'to_avro_record']

_NAMESPACE = 'io.changebeam'
_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)
_UTC = dt.timezone.utc
_AVRO_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')


# ---------------------------------------------------------------------------------------------
# Names

def _sanitise(name: str) -> str:
    """The closest valid Avro name: invalid characters become ``_``, a leading digit gets one."""
    clean = re.sub(r'[^A-Za-z0-9_]', '_', name)
    if not clean or clean[0].isdigit():
        clean = '_' + clean
    return clean


def _field_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """Unique Avro field names for ``names``; a name that is already valid is kept as is.

    An invalid name becomes its sanitised form plus a digest of the original (``order id`` →
    ``order_id_ae40deab``): a pure function of the column's own name, so adding a real
    ``order_id`` column in a later version can never take over the field that held
    ``order id``'s data, which readers match by name.
    """
    taken = {name for name in names if _AVRO_NAME.fullmatch(name)}
    out = []
    for name in names:
        if _AVRO_NAME.fullmatch(name):
            out.append(name)
            continue
        digest = hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]
        base = candidate = f'{_sanitise(name)}_{digest}'
        n = 1
        while candidate in taken:  # only a column literally named like another's digest
            n += 1
            candidate = f'{base}_{n}'
        taken.add(candidate)
        out.append(candidate)
    return tuple(out)


def _namespace(table: TableSchema) -> str:
    parts = [part for part in (table.schema, table.table) if part]
    return '.'.join(_sanitise(part) for part in parts) or '_'


# ---------------------------------------------------------------------------------------------
# Column kinds: Avro types and value conversions

def _decimal_schema(column: Column) -> dict[str, Any] | None:
    precision, scale = column.precision, column.scale
    # Avro requires 0 <= scale <= precision; PostgreSQL allows numeric(3,5) and numeric(3,-2).
    if precision is None or scale is None or precision < 1 or not 0 <= scale <= precision:
        return None
    return {'type': 'bytes', 'logicalType': 'decimal', 'precision': precision, 'scale': scale}


_LOGICAL = {
    Kind.DATE: {'type': 'int', 'logicalType': 'date'},
    Kind.TIME: {'type': 'long', 'logicalType': 'time-micros'},
    Kind.TIMESTAMP: {'type': 'long', 'logicalType': 'local-timestamp-micros'},
    Kind.TIMESTAMPTZ: {'type': 'long', 'logicalType': 'timestamp-micros'},
}
_PRIMITIVE = {
    Kind.BOOLEAN: 'boolean',
    Kind.INT16: 'int',
    Kind.INT32: 'int',
    Kind.INT64: 'long',
    Kind.FLOAT32: 'double',  # Python floats are doubles: an Avro float would lose bits
    Kind.FLOAT64: 'double',
    Kind.BYTES: 'bytes',
}


def _branches(kind: Kind, column: Column) -> list[Any]:
    """The non-null union branches holding a value of ``kind``; ``string`` always first."""
    if kind in _PRIMITIVE:
        return [_PRIMITIVE[kind]]
    if kind in _LOGICAL:
        return ['string', dict(_LOGICAL[kind])]
    if kind is Kind.DECIMAL:
        decimal = _decimal_schema(column)
        return ['string'] if decimal is None else ['string', decimal]
    if kind is Kind.ARRAY:
        element = _element_kind(column)
        items = ['null', *_branches(element, column)]
        return ['string', {'type': 'array', 'items': items}]
    return ['string']  # STRING, TEXT, JSON, UUID, ENUM, INTERVAL, TIMETZ: the text form


def _element_kind(column: Column) -> Kind:
    element = column.element or Kind.TEXT
    # An array of arrays is just a multi-dimensional array: its values go to the JSON branch.
    return Kind.TEXT if element is Kind.ARRAY else element


def _int_encoder(low: int, high: int, avro: str) -> Callable[[Any], Any]:
    def encode(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f'not an integer: {value!r}')
        if not low <= value <= high:
            raise ValueError(f'{value} is out of range for an Avro {avro}')
        return value
    return encode


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f'not a boolean: {value!r}')
    return value


def _check_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'not a string: {value!r}')
    return value


def _encode_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'not a number: {value!r}')
    return float(value)


def _encode_bytes(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f'not bytes: {value!r}')
    return bytes(value)


def _decimal_encoder(column: Column) -> Callable[[Any], Any]:
    decimal = _decimal_schema(column)

    def encode(value: Any) -> Decimal | str:
        if not isinstance(value, Decimal):
            raise ValueError(f'not a Decimal: {value!r}')
        if decimal is not None:
            sign, digits, exponent = value.as_tuple()
            # Only a value the decimal branch reads back identically: same exponent (1.5 would
            # come back as 1.50), digits within the precision, and not -0 (the sign is lost).
            if (exponent == -decimal['scale'] and len(digits) <= decimal['precision']
                    and not (sign and not any(digits))):
                return value
        return str(value)  # NaN, ±Infinity, and any exponent: the exact text
    return encode


def _encode_date(value: Any) -> Any:
    if isinstance(value, str) or (isinstance(value, dt.date)
                                  and not isinstance(value, dt.datetime)):
        return value
    raise ValueError(f'not a date or its text form: {value!r}')


def _encode_time(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if not isinstance(value, dt.time):
        raise ValueError(f'not a time or its text form: {value!r}')
    if value.tzinfo is not None:
        # fastavro's time-micros drops the zone silently; TIMETZ values are text.
        raise ValueError(f'a time with a time zone is a TIMETZ value: {value!r}')
    return value


def _encode_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if not isinstance(value, dt.datetime):
        raise ValueError(f'not a datetime or its text form: {value!r}')
    if value.tzinfo is not None:
        raise ValueError(f'a timestamp without time zone holds a naive datetime: {value!r}')
    return value


def _encode_timestamptz(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if not isinstance(value, dt.datetime):
        raise ValueError(f'not a datetime or its text form: {value!r}')
    if value.tzinfo is None:
        # fastavro would read a naive datetime as the machine's local time (time.mktime).
        raise ValueError(f'a timestamp with time zone needs an aware datetime: {value!r}')
    try:
        return value.astimezone(_UTC)
    except OverflowError:
        raise ValueError(f'{value!r} is outside the datetime range in UTC') from None


def _encoder(kind: Kind, column: Column) -> Callable[[Any], Any]:
    if kind is Kind.BOOLEAN:
        return _check_bool
    if kind in (Kind.INT16, Kind.INT32):
        return _int_encoder(*_INT_RANGE, 'int')
    if kind is Kind.INT64:
        return _int_encoder(*_LONG_RANGE, 'long')
    if kind in (Kind.FLOAT32, Kind.FLOAT64):
        return _encode_float
    if kind is Kind.DECIMAL:
        return _decimal_encoder(column)
    if kind is Kind.BYTES:
        return _encode_bytes
    if kind is Kind.DATE:
        return _encode_date
    if kind is Kind.TIME:
        return _encode_time
    if kind is Kind.TIMESTAMP:
        return _encode_timestamp
    if kind is Kind.TIMESTAMPTZ:
        return _encode_timestamptz
    if kind is Kind.ARRAY:
        return _array_encoder(column)
    return _check_str


def _array_encoder(column: Column) -> Callable[[Any], Any]:
    element = _encoder(_element_kind(column), column)

    def encode(value: Any) -> list[Any] | str:
        if not isinstance(value, list):
            raise ValueError(f'not a list: {value!r}')
        for item in value:  # (a loop: any() over a generator costs twice as much)
            if isinstance(item, list):
                # Several dimensions: the JSON form, whose rules are lossless for every element.
                return json.dumps(encode_json_value(column, value), ensure_ascii=False,
                                  allow_nan=False, separators=(',', ':'))
        return [None if item is None else element(item) for item in value]
    return encode


def _decode_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            pass
    raise ValueError(f'not a decimal: {value!r}')


def _decode_timestamptz(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(_UTC)
    raise ValueError(f'not an aware datetime or its text form: {value!r}')


def _decoder(kind: Kind, column: Column) -> Callable[[Any], Any]:
    if kind in (Kind.FLOAT32, Kind.FLOAT64):
        return _encode_float  # fastavro gives float; an int (a promoted writer) becomes one
    if kind is Kind.DECIMAL:
        return _decode_decimal
    if kind is Kind.TIMESTAMPTZ:
        return _decode_timestamptz
    if kind is Kind.ARRAY:
        return _array_decoder(column)
    # Every other kind reads back as the value it was written from: check it is one.
    return _encoder(kind, column)


def _array_decoder(column: Column) -> Callable[[Any], Any]:
    element = _decoder(_element_kind(column), column)

    def decode(value: Any) -> list[Any]:
        if isinstance(value, str):
            try:
                return decode_json_value(column, json.loads(value))
            except json.JSONDecodeError as exc:
                raise ValueError(f'not a JSON array: {exc}') from None
        if not isinstance(value, list):
            raise ValueError(f'not a list: {value!r}')
        return [None if item is None else element(item) for item in value]
    return decode


# ---------------------------------------------------------------------------------------------
# The envelope

@dataclasses.dataclass(frozen=True)
class _Field:
    column: str  # the SQL name
    avro: str  # the Avro field name
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class _Codec:
    fields: tuple[_Field, ...]
    by_avro: Mapping[str, _Field]


def _row_fields(table: TableSchema) -> list[dict[str, Any]]:
    """The fields of the row record: every column nullable, its SQL name kept if sanitised."""
    names = _field_names(tuple(c.name for c in table.columns))
    fields = []
    for column, name in zip(table.columns, names, strict=True):
        field: dict[str, Any] = {
            'name': name,
            'type': ['null', *_branches(column.kind, column)],
            'default': None,
        }
        if name != column.name:
            field['sql_name'] = column.name
        fields.append(field)
    return fields


@functools.lru_cache(maxsize=512)
def _codec(table: TableSchema) -> _Codec:
    fields = []
    for avro_field in _row_fields(table):
        column = table.by_name[avro_field.get('sql_name', avro_field['name'])]
        fields.append(_Field(column.name, avro_field['name'], _encoder(column.kind, column),
                             _decoder(column.kind, column)))
    return _Codec(tuple(fields), {f.avro: f for f in fields})


def _nullable(avro_type: Any) -> dict[str, Any]:
    return {'type': ['null', avro_type], 'default': None}


def _name_list() -> dict[str, Any]:
    return {'type': {'type': 'array', 'items': 'string'}, 'default': []}


_SOURCE_REQUIRED = (('version', 'string'), ('connector', 'string'), ('name', 'string'),
                    ('ts_ms', 'long'), ('snapshot', 'string'), ('db', 'string'),
                    ('schema', 'string'), ('table', 'string'))
# (attribute, Avro field name, Avro type) of the optional SourcePosition fields
_SOURCE_OPTIONAL = (('tx_id', 'txId', 'long'), ('lsn', 'lsn', 'long'),
                    ('commit_lsn', 'commit_lsn', 'long'), ('file', 'file', 'string'),
                    ('pos', 'pos', 'long'), ('row', 'row', 'long'), ('gtid', 'gtid', 'string'),
                    ('server_id', 'server_id', 'long'), ('thread', 'thread', 'long'),
                    ('epoch', 'epoch', 'long'))


def avro_schema(table: TableSchema, version: int | None = None) -> dict[str, Any]:
    """The Avro schema (a JSON-ready dict) of ``table``'s change events.

    The record is ``<schema>.<table>.Envelope`` with the row record ``<schema>.<table>.Value``
    (names sanitised); ``version``, when given, is kept in the record's ``schema_version``
    attribute.  A column's field name depends only on the column's own name, so the schemas
    of two versions of a table resolve against each other by Avro's rules (see
    :mod:`transforms.schema.compatibility`).
    """
    row = {'type': 'record', 'name': 'Value', 'fields': _row_fields(table)}
    source = {
        'type': 'record', 'name': 'Source', 'namespace': _NAMESPACE,
        'fields': [{'name': name, 'type': avro} for name, avro in _SOURCE_REQUIRED]
        + [{'name': name, **_nullable(avro)} for _, name, avro in _SOURCE_OPTIONAL],
    }
    transaction = {
        'type': 'record', 'name': 'Transaction', 'namespace': _NAMESPACE,
        'fields': [{'name': 'id', 'type': 'string'},
                   {'name': 'total_order', 'type': 'long'},
                   {'name': 'data_collection_order', 'type': 'long'}],
    }
    schema: dict[str, Any] = {
        'type': 'record',
        'name': 'Envelope',
        'namespace': _namespace(table),
        'doc': f'Change events of {table.name}',
        'fields': [
            {'name': 'before', **_nullable(row)},
            {'name': 'after', **_nullable('Value')},
            {'name': 'source', 'type': source},
            {'name': 'op', 'type': 'string'},
            {'name': 'ts_ms', 'type': 'long'},
            {'name': 'transaction', **_nullable(transaction)},
            {'name': 'schema_version', **_nullable('long')},
            {'name': 'unchanged', **_name_list()},
            {'name': 'message', **_nullable('string')},  # the JSON text of an 'm' payload
            {'name': 'before_absent', **_name_list()},
            {'name': 'after_absent', **_name_list()},
        ],
    }
    if version is not None:
        schema['schema_version'] = version
    return schema


def _check_range(value: Any, field: str, avro: str = 'long') -> Any:
    low, high = _INT_RANGE if avro == 'int' else _LONG_RANGE
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise EnvelopeError(field, f'expected int, got {value!r}')
    if not low <= value <= high:
        raise EnvelopeError(field, f'{value} is out of range for an Avro {avro}')
    return value


def _row_to_avro(codec: _Codec, row: Mapping[str, Any] | None,
                 field: str) -> tuple[dict[str, Any] | None, list[str]]:
    if row is None:
        return None, []
    known = {f.column for f in codec.fields}
    for name in row:
        if name not in known:
            raise EnvelopeError(f'{field}.{name}', 'not a column of the table')
    out: dict[str, Any] = {}
    absent = []
    for f in codec.fields:
        if f.column not in row:
            out[f.avro] = None
            absent.append(f.column)
            continue
        value = row[f.column]
        try:
            out[f.avro] = None if value is None else f.encode(value)
        except ValueError as exc:
            raise EnvelopeError(f'{field}.{f.column}', str(exc)) from None
    return out, absent


# ---------------------------------------------------------------------------------------------
# Compiled row conversion
#
# `_row_to_avro` above is the reference: a loop over the columns calling each one's encoder.
# Converting rows is most of `to_avro_record`'s time, so each table version also gets a
# function generated for it, straight-line code with the common case of each column inlined,
# for instance for `id bigint, placed timestamptz`:
#
#     def convert(row):
#         absent = []
#         v = row.get('id', missing)
#         if v is missing:
#             absent.append('id')
#             x0 = None
#         elif v is None:
#             x0 = None
#         else:
#             x0 = v if type(v) is int and LONG_MIN <= v <= LONG_MAX else e0(v)
#         v = row.get('placed', missing)
#         ...
#             x1 = v if type(v) is datetime and v.tzinfo is UTC else e1(v)
#         if len(row) + len(absent) != 2:
#             raise LookupError  # a key that is no column
#         return {'id': x0, 'placed': x1}, absent
#
# Each inlined test only accepts values the column's encoder would return unchanged; anything
# else goes through the encoder (e0, e1: the reference's own functions).  When the generated
# function raises, the reference converts the row again to name the column that failed.

_MISSING = object()
_LONG_MIN, _LONG_MAX = _LONG_RANGE
_TRANSACTION = f'{_NAMESPACE}.Transaction'

# Values a column's encoder returns as they are, by Kind: (the test, written in terms of the
# value `v`, the Avro branch such a value is written as).
_AS_IS: dict[Kind, tuple[str, str]] = {
    Kind.BOOLEAN: ('v is True or v is False', 'boolean'),
    Kind.INT16: ('type(v) is int and INT_MIN <= v <= INT_MAX', 'int'),
    Kind.INT32: ('type(v) is int and INT_MIN <= v <= INT_MAX', 'int'),
    Kind.INT64: ('type(v) is int and LONG_MIN <= v <= LONG_MAX', 'long'),
    Kind.FLOAT32: ('type(v) is float', 'double'),
    Kind.FLOAT64: ('type(v) is float', 'double'),
    Kind.BYTES: ('type(v) is bytes', 'bytes'),
    Kind.DATE: ('type(v) is date', 'int'),
    Kind.TIME: ('type(v) is time and v.tzinfo is None', 'long'),
    Kind.TIMESTAMP: ('type(v) is datetime and v.tzinfo is None', 'long'),
    # astimezone(UTC) returns a datetime already in UTC itself
    Kind.TIMESTAMPTZ: ('type(v) is datetime and v.tzinfo is UTC', 'long'),
}
_TEXT_AS_IS = ('type(v) is str', 'string')  # kinds whose encoder is _check_str


def _branch_name(branch: Any) -> str:
    """The name fastavro's tuple notation gives a union branch (a logical type: its base)."""
    return branch['type'] if isinstance(branch, dict) else branch


def _tagger(branch: str) -> Callable[[Any], tuple[str, Any]]:
    """Tags an encoder's result of a ``['null', 'string', <branch>]`` column."""
    def tag(value: Any) -> tuple[str, Any]:
        return ('string', value) if isinstance(value, str) else (branch, value)
    return tag


def _generate_rows(table: TableSchema, codec: _Codec,
                   tagged: bool) -> Callable[[Mapping[str, Any]], tuple[dict[str, Any],
                                                                            list[str]]]:
    scope: dict[str, Any] = {
        'missing': _MISSING,
        'INT_MIN': _INT_RANGE[0], 'INT_MAX': _INT_RANGE[1], 'LONG_MIN': _LONG_MIN,
        'LONG_MAX': _LONG_MAX, 'date': dt.date, 'time': dt.time, 'datetime': dt.datetime,
        'UTC': _UTC,
    }
    lines = ['def convert(row):', '    absent = []']
    for i, f in enumerate(codec.fields):
        column = table.by_name[f.column]
        scope[f'e{i}'] = f.encode
        branches = _branches(column.kind, column)
        if not tagged:
            convert = f'e{i}(v)'
        elif len(branches) == 1:
            convert = f'({_branch_name(branches[0])!r}, e{i}(v))'
        else:  # ['string', typed]: a str from the encoder is a text form
            scope[f't{i}'] = _tagger(_branch_name(branches[1]))
            convert = f't{i}(e{i}(v))'
        as_is = _TEXT_AS_IS if f.encode is _check_str else _AS_IS.get(column.kind)
        if as_is is not None:
            test, branch = as_is
            value = f'({branch!r}, v)' if tagged else 'v'
            convert = f'{value} if {test} else {convert}'
        lines += [f'    v = row.get({f.column!r}, missing)',
                  '    if v is missing:',
                  f'        absent.append({f.column!r})',
                  f'        x{i} = None',
                  '    elif v is None:',
                  f'        x{i} = None',
                  '    else:',
                  f'        x{i} = {convert}']
    items = ', '.join(f'{f.avro!r}: x{i}' for i, f in enumerate(codec.fields))
    # Each column is either in the row or absent: any other key is not a column.
    lines += [f'    if len(row) + len(absent) != {len(codec.fields)}:',
              '        raise LookupError',
              f'    return {{{items}}}, absent']
    exec(compile('\n'.join(lines), f'<avro rows of {table.name!r}>', 'exec'), scope)
    return cast(Callable[[Mapping[str, Any]], tuple[dict[str, Any], list[str]]],
                scope['convert'])


class _RowConverter:
    """Converts the ``before`` or ``after`` rows of one table version (see above)."""

    def __init__(self, table: TableSchema, codec: _Codec, tagged: bool) -> None:
        self.codec = codec
        self.record_name = f'{_namespace(table)}.Value'  # the row record's full name
        self._fast = _generate_rows(table, codec, tagged)

    def convert(self, row: Mapping[str, Any] | None,
                field: str) -> tuple[dict[str, Any] | None, list[str]]:
        if row is None:
            return None, []
        try:
            return self._fast(row)
        except Exception:
            _row_to_avro(self.codec, row, field)  # raises EnvelopeError naming the column
            raise


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """Everything derived once per table version."""

    codec: _Codec
    rows: _RowConverter
    tagged_rows: _RowConverter


@functools.lru_cache(maxsize=512)
def _compile(table: TableSchema) -> _Compiled:
    codec = _codec(table)
    return _Compiled(codec, _RowConverter(table, codec, False),
                     _RowConverter(table, codec, True))


_BY_IDENTITY: dict[int, tuple[TableSchema, _Compiled]] = {}


def _compiled(table: TableSchema) -> _Compiled:
    # Events of a table share one TableSchema object, whose hash (every column's fields) costs
    # more than converting a small row: look it up by identity first.  The entry holds the
    # table, so its id is not reused while the entry lives.
    entry = _BY_IDENTITY.get(id(table))
    if entry is not None and entry[0] is table:
        return entry[1]
    compiled = _compile(table)
    if len(_BY_IDENTITY) >= 512:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[id(table)] = (table, compiled)
    return compiled


def _record_from_rows(event: ChangeEvent, rows: _RowConverter, tagged: bool) -> dict[str, Any]:
    """The envelope around the converted rows; ``tagged``: union values as ``(branch, v)``."""
    before: Any
    after: Any
    before, before_absent = rows.convert(event.before, 'before')
    after, after_absent = rows.convert(event.after, 'after')
    source = event.source
    ts_ms = source.ts_ms
    if not (type(ts_ms) is int and _LONG_MIN <= ts_ms <= _LONG_MAX):
        ts_ms = _check_range(ts_ms, 'source.ts_ms')
    optional = _optional_long_tagged if tagged else _optional_long
    file: Any = source.file
    gtid: Any = source.gtid
    if tagged:
        file = ('string', file) if type(file) is str else file
        gtid = ('string', gtid) if type(gtid) is str else gtid
    source_record = {
        'version': _VERSION, 'connector': source.connector, 'name': source.name,
        'ts_ms': ts_ms, 'snapshot': source.snapshot, 'db': source.db, 'schema': source.schema,
        'table': source.table,
        'txId': optional(source.tx_id, 'source.txId'),
        'lsn': optional(source.lsn, 'source.lsn'),
        'commit_lsn': optional(source.commit_lsn, 'source.commit_lsn'),
        'file': file,
        'pos': optional(source.pos, 'source.pos'),
        'row': optional(source.row, 'source.row'),
        'gtid': gtid,
        'server_id': optional(source.server_id, 'source.server_id'),
        'thread': optional(source.thread, 'source.thread'),
        'epoch': optional(source.epoch, 'source.epoch'),
    }
    transaction: Any = None
    tx = event.transaction
    if tx is not None:
        transaction = {
            'id': tx.id,
            'total_order': _check_range(tx.total_order, 'transaction.total_order'),
            'data_collection_order': _check_range(tx.data_collection_order,
                                                  'transaction.data_collection_order'),
        }
        if tagged:
            transaction = (_TRANSACTION, transaction)
    message: Any = None
    if event.message is not None:
        try:
            message = json.dumps(dict(event.message), ensure_ascii=False, allow_nan=False,
                                 separators=(',', ':'))
        except (TypeError, ValueError) as exc:
            raise EnvelopeError('message', f'not JSON-encodable: {exc}') from None
        if tagged:
            message = ('string', message)
    ts_ms = event.ts_ms
    if not (type(ts_ms) is int and _LONG_MIN <= ts_ms <= _LONG_MAX):
        ts_ms = _check_range(ts_ms, 'ts_ms')
    unchanged = event.unchanged
    if after_absent and unchanged:
        # Unchanged columns are absent too, but `unchanged` already says so.
        after_absent = [name for name in after_absent if name not in unchanged]
    if tagged:
        if before is not None:
            before = (rows.record_name, before)
        if after is not None:
            after = (rows.record_name, after)
    return {
        'before': before,
        'after': after,
        'source': source_record,
        'op': event.op.value,
        'ts_ms': ts_ms,
        'transaction': transaction,
        'schema_version': optional(event.schema_version, 'schema_version'),
        'unchanged': sorted(unchanged) if unchanged else [],
        'message': message,
        'before_absent': before_absent,
        'after_absent': after_absent,
    }


def _optional_long(value: Any, field: str) -> Any:
    if value is None or (type(value) is int and _LONG_MIN <= value <= _LONG_MAX):
        return value
    return _check_range(value, field)


def _optional_long_tagged(value: Any, field: str) -> Any:
    if value is None:
        return None
    if not (type(value) is int and _LONG_MIN <= value <= _LONG_MAX):
        value = _check_range(value, field)
    return ('long', value)


def to_avro_record(event: ChangeEvent) -> dict[str, Any]:
    """The event as a record of :func:`avro_schema` ``(event.table)``, ready for fastavro."""
    return _record_from_rows(event, _compiled(event.table).rows, False)


def avro_record_converter(table: TableSchema) -> Callable[[ChangeEvent], dict[str, Any]]:
    """A function turning events of ``table`` into records for fastavro's *writers* only.

    The records are :func:`to_avro_record`'s with every non-null union value in fastavro's
    tuple notation, ``(branch name, value)``: fastavro then writes the branch it is told
    instead of validating the value against each branch in turn, which is a third of its
    time on a typical row.  The bytes written are the same; only writers understand the
    notation (not ``from_avro_record``, nor fastavro's ``validate``).  Raises
    :class:`~transforms.envelope.EnvelopeError` like :func:`to_avro_record`.
    """
    rows = _compiled(table).tagged_rows
    return functools.partial(_record_from_rows, rows=rows, tagged=True)


def _get(record: Mapping[str, Any], key: str, types: type | tuple[type, ...], field: str,
         optional: bool = False) -> Any:
    if key not in record:
        if optional:
            return None
        raise EnvelopeError(field, 'missing')
    value = record[key]
    if value is None and optional:
        return None
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = ' or '.join(t.__name__ for t in allowed)
        raise EnvelopeError(field, f'expected {names}, got {value!r}')
    return value


def _names(record: Mapping[str, Any], key: str, table: TableSchema) -> list[str]:
    names = _get(record, key, list, key, optional=True) or []
    for i, name in enumerate(names):
        if not isinstance(name, str) or name not in table.by_name:
            raise EnvelopeError(f'{key}[{i}]', f'{name!r} is not a column of {table.name}')
    return names


def _row_from_avro(codec: _Codec, record: Any, field: str,
                   absent: set[str]) -> dict[str, Any] | None:
    if record is None:
        return None
    if not isinstance(record, Mapping):
        raise EnvelopeError(field, f'expected a record, got {type(record).__name__}')
    for name in record:
        if name not in codec.by_avro:
            raise EnvelopeError(f'{field}.{name}', 'no such column')
    out: dict[str, Any] = {}
    for f in codec.fields:
        value = record.get(f.avro)
        if f.column in absent:
            if value is not None:
                raise EnvelopeError(f'{field}.{f.column}', 'listed as absent but has a value')
            continue
        try:
            out[f.column] = None if value is None else f.decode(value)
        except ValueError as exc:
            raise EnvelopeError(f'{field}.{f.column}', str(exc)) from None
    return out


def _source_from_avro(record: Any) -> SourcePosition:
    if not isinstance(record, Mapping):
        raise EnvelopeError('source', 'expected a record')
    fields: dict[str, Any] = {}
    for name, avro in _SOURCE_REQUIRED:
        if name != 'version':
            fields[name] = _get(record, name, int if avro == 'long' else str, f'source.{name}')
    for attr, name, avro in _SOURCE_OPTIONAL:
        fields[attr] = _get(record, name, str if avro == 'string' else int, f'source.{name}',
                            optional=True)
    return SourcePosition(**fields)


def from_avro_record(record: Mapping[str, Any], table: TableSchema) -> ChangeEvent:
    """The inverse of :func:`to_avro_record`, for a record as fastavro reads it back.

    Raises :class:`~transforms.envelope.EnvelopeError` naming the first bad field.
    """
    if not isinstance(record, Mapping):
        raise EnvelopeError('(record)', f'expected a record, got {type(record).__name__}')
    codec = _compiled(table).codec
    op_code = _get(record, 'op', str, 'op')
    try:
        op = Op(op_code)
    except ValueError:
        valid = ', '.join(o.value for o in Op)
        raise EnvelopeError('op', f'{op_code!r} is not one of {valid}') from None
    tx = _get(record, 'transaction', Mapping, 'transaction', optional=True)
    transaction = None
    if tx is not None:
        transaction = TransactionInfo(
            id=_get(tx, 'id', str, 'transaction.id'),
            total_order=_get(tx, 'total_order', int, 'transaction.total_order'),
            data_collection_order=_get(tx, 'data_collection_order', int,
                                       'transaction.data_collection_order'),
        )
    unchanged = _names(record, 'unchanged', table)
    before_absent = _names(record, 'before_absent', table)
    after_absent = _names(record, 'after_absent', table)
    message = _get(record, 'message', str, 'message', optional=True)
    if message is not None:
        try:
            message = json.loads(message)
        except json.JSONDecodeError as exc:
            raise EnvelopeError('message', f'not JSON: {exc}') from None
        if not isinstance(message, dict):
            raise EnvelopeError('message', f'expected a JSON object, got {message!r}')
    for key in ('before', 'after', 'source'):
        if key not in record:
            raise EnvelopeError(key, 'missing')
    return ChangeEvent(
        op=op,
        table=table,
        source=_source_from_avro(record['source']),
        before=_row_from_avro(codec, record['before'], 'before', set(before_absent)),
        after=_row_from_avro(codec, record['after'], 'after', {*after_absent, *unchanged}),
        ts_ms=_get(record, 'ts_ms', int, 'ts_ms'),
        transaction=transaction,
        schema_version=_get(record, 'schema_version', int, 'schema_version', optional=True),
        unchanged=frozenset(unchanged),
        message=message,
    )
