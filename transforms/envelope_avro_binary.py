"""Avro binary encoding of change events, straight from a ChangeEvent to a record's bytes.

    encode = avro_encoder(table)
    block.write(encode(event))  # the bytes fastavro would write for to_avro_record(event)

The file sink writes a record per event into Avro container blocks.  fastavro spends ~0.4 µs
per value dispatching on the schema at run time, and ``to_avro_record`` builds dicts only for
fastavro to take them apart again; here each table version gets an encoder generated once,
whose code already knows every field's type and union branch (about three times faster).

The encoding is defined by :mod:`transforms.envelope_avro`: the generated code inlines the
common case of each column (an ``int`` in range, a ``str``, a ``datetime`` in UTC ...) and
calls that module's per-column encoders for the rest.  When anything raises, the event is
encoded again the reference way, ``to_avro_record`` then ``fastavro.schemaless_writer``, so
the result, or the error, is always what that gives.
"""
from __future__ import annotations

import datetime as dt
import functools
import io
import json
import struct
from collections.abc import Callable, Mapping
from decimal import MAX_PREC, Context, Decimal
from typing import Any, cast

from transforms.envelope import _VERSION, ChangeEvent, Kind, Op, TableSchema
from transforms.envelope_avro import (
    _INT_RANGE,
    _LONG_RANGE,
    _UTC,
    _branches,
    _check_str,
    _compiled,
    avro_schema,
    to_avro_record,
)

__all__ = ['avro_encoder']

_ONE_BYTE = tuple(bytes((n,)) for n in range(128))
_NULL = b'\x00'  # union branch 0, and the end of an array
_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_EPOCH_DAYS = dt.date(1970, 1, 1).toordinal()
_DOUBLE = struct.Struct('<d').pack
_EXACT = Context(prec=MAX_PREC)  # scaleb() without rounding


# ---------------------------------------------------------------------------------------------
# Avro's primitive encodings

def _long(n: int) -> bytes:
    """Zig-zag varint of an int or long (the caller checked the range)."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(value: str) -> bytes:
    data = value.encode('utf-8')  # a lone surrogate raises: the reference path names it
    return _long(len(data)) + data


def _bytes(value: bytes) -> bytes:
    return _long(len(value)) + value


def _boolean(value: bool) -> bytes:
    return b'\x01' if value else b'\x00'


def _date(value: dt.date) -> bytes:
    return _long(value.toordinal() - _EPOCH_DAYS)


def _time_micros(value: dt.time) -> bytes:
    return _long(((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000
                 + value.microsecond)


def _micros(delta: dt.timedelta) -> bytes:
    return _long((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _local_timestamp_micros(value: dt.datetime) -> bytes:
    return _micros(value - _EPOCH)


def _timestamp_micros(value: dt.datetime) -> bytes:
    return _micros(value - _EPOCH_UTC)


def _decimal_writer(scale: int) -> Callable[[Decimal], bytes]:
    def write(value: Decimal) -> bytes:
        # The column's encoder only lets through a Decimal of exponent -scale.
        unscaled = int(value.scaleb(scale, _EXACT))
        data = unscaled.to_bytes((abs(unscaled).bit_length() + 8) // 8, 'big', signed=True)
        return _long(len(data)) + data
    return write


_PRIMITIVE_WRITERS: dict[str, Callable[[Any], bytes]] = {
    'boolean': _boolean, 'int': _long, 'long': _long, 'double': _DOUBLE, 'bytes': _bytes,
    'string': _string,
}
_LOGICAL_WRITERS: dict[str, Callable[[Any], bytes]] = {
    'date': _date, 'time-micros': _time_micros,
    'local-timestamp-micros': _local_timestamp_micros, 'timestamp-micros': _timestamp_micros,
}


def _writer(branch: Any) -> Callable[[Any], bytes]:
    """Writes a value of one (non-null) union branch of :func:`_branches`."""
    if not isinstance(branch, dict):
        return _PRIMITIVE_WRITERS[branch]
    if branch['type'] == 'array':
        return _array_writer(branch['items'][1:])
    if branch['logicalType'] == 'decimal':
        return _decimal_writer(branch['scale'])
    return _LOGICAL_WRITERS[branch['logicalType']]


def _union_writer(branches: list[Any]) -> Callable[[Any], bytes]:
    """Writes a non-None value of ``['null', *branches]`` as its encoder normalized it.

    ``branches`` is one branch, or ``['string', typed]`` where a ``str`` is a text form.
    """
    if len(branches) == 1:
        only = _writer(branches[0])
        return lambda value: b'\x02' + only(value)
    text, typed = _writer(branches[0]), _writer(branches[1])
    return lambda value: (b'\x02' + text(value) if isinstance(value, str)
                          else b'\x04' + typed(value))


def _array_writer(item_branches: list[Any]) -> Callable[[list[Any]], bytes]:
    item = _union_writer(item_branches)

    def write(value: list[Any]) -> bytes:
        if not value:
            return _NULL
        return b''.join([_long(len(value)), *[_NULL if v is None else item(v) for v in value],
                         _NULL])
    return write


def _string_array(values: list[str]) -> bytes:
    if not values:
        return _NULL
    return b''.join([_long(len(values)), *map(_string, values), _NULL])


# ---------------------------------------------------------------------------------------------
# Rows: generated per table version

# The values a column's encoder returns unchanged, by Kind: the test on the value `v`, and how
# the typed branch (the last of the column's branches) writes them.
_AS_IS: dict[Kind, tuple[str, Callable[[Any], bytes]]] = {
    Kind.BOOLEAN: ('v is True or v is False', _boolean),
    Kind.INT16: ('type(v) is int and INT_MIN <= v <= INT_MAX', _long),
    Kind.INT32: ('type(v) is int and INT_MIN <= v <= INT_MAX', _long),
    Kind.INT64: ('type(v) is int and LONG_MIN <= v <= LONG_MAX', _long),
    Kind.FLOAT32: ('type(v) is float', _DOUBLE),
    Kind.FLOAT64: ('type(v) is float', _DOUBLE),
    Kind.BYTES: ('type(v) is bytes', _bytes),
    Kind.DATE: ('type(v) is date', _date),
    Kind.TIME: ('type(v) is time and v.tzinfo is None', _time_micros),
    Kind.TIMESTAMP: ('type(v) is datetime and v.tzinfo is None', _local_timestamp_micros),
    # astimezone(UTC), what the encoder does, returns a datetime in UTC as it is
    Kind.TIMESTAMPTZ: ('type(v) is datetime and v.tzinfo is UTC', _timestamp_micros),
}
_TEXT_AS_IS = ('type(v) is str', _string)  # the kinds whose encoder is _check_str
_SCOPE = {
    'missing': object(), 'NULL': _NULL, 'INT_MIN': _INT_RANGE[0], 'INT_MAX': _INT_RANGE[1],
    'LONG_MIN': _LONG_RANGE[0], 'LONG_MAX': _LONG_RANGE[1], 'date': dt.date, 'time': dt.time,
    'datetime': dt.datetime, 'UTC': _UTC,
}

_RowWriter = Callable[[Mapping[str, Any], list[bytes]], list[str]]


def _generate_rows(table: TableSchema) -> _RowWriter:
    """``write(row, parts)``: appends the row record's encoding to ``parts``, returns the
    columns absent from ``row``; raises on any value it cannot write (or a key no column)."""
    codec = _compiled(table).codec
    scope: dict[str, Any] = dict(_SCOPE)
    lines = ['def write(row, parts):', '    put = parts.append', '    absent = []']
    for i, field in enumerate(codec.fields):
        column = table.by_name[field.column]
        branches = _branches(column.kind, column)
        scope[f'e{i}'] = field.encode
        scope[f'w{i}'] = _union_writer(branches)
        general = f'put(w{i}(e{i}(v)))'
        as_is = _TEXT_AS_IS if field.encode is _check_str else _AS_IS.get(column.kind)
        lines += [f'    v = row.get({field.column!r}, missing)',
                  '    if v is missing:',
                  f'        absent.append({field.column!r})',
                  '        put(NULL)',
                  '    elif v is None:',
                  '        put(NULL)']
        if as_is is None:
            lines += ['    else:', f'        {general}']
        else:
            test, scope[f'f{i}'] = as_is
            index = bytes((2 * len(branches),))  # the typed branch: the last one
            lines += [f'    elif {test}:',
                      f'        put({index!r})',
                      f'        put(f{i}(v))',
                      '    else:', f'        {general}']
    # Each column is either in the row or absent: any other key is not a column.
    lines += [f'    if len(row) + len(absent) != {len(codec.fields)}:',
              '        raise LookupError',
              '    return absent']
    exec(compile('\n'.join(lines), f'<avro encoder of {table.name!r}>', 'exec'), scope)
    return cast(_RowWriter, scope['write'])


# ---------------------------------------------------------------------------------------------
# The envelope

_LONG_MIN, _LONG_MAX = _LONG_RANGE
_VERSION_BYTES = _string(_VERSION)
_OPS = {op: _string(op.value) for op in Op}


def _checked_long(value: Any) -> bytes:
    if type(value) is int and _LONG_MIN <= value <= _LONG_MAX:
        return _long(value)
    raise ValueError(f'not an Avro long: {value!r}')  # the reference path says which field


def _optional_long(value: Any) -> bytes:
    if value is None:
        return _NULL
    if type(value) is int and _LONG_MIN <= value <= _LONG_MAX:
        return b'\x02' + _long(value)
    raise ValueError(f'not an Avro long: {value!r}')


def _optional_string(value: Any) -> bytes:
    return _NULL if value is None else b'\x02' + _string(value)


class _Encoder:
    """The encoder of one table version: generated rows, a hand-written envelope."""

    def __init__(self, table: TableSchema) -> None:
        import fastavro

        self._rows = _generate_rows(table)
        self._schema = fastavro.parse_schema(avro_schema(table))
        self._fastavro = fastavro.schemaless_writer
        # The source fields that identify where events come from, encoded once: a table's
        # events share them.  Keyed by the strings; bounded like the sink's open files.
        self._origins: dict[tuple[str, ...], tuple[bytes, bytes]] = {}

    def __call__(self, event: ChangeEvent) -> bytes:
        try:
            return self._encode(event)
        except Exception:
            return self._reference(event)

    def _reference(self, event: ChangeEvent) -> bytes:
        buffer = io.BytesIO()
        self._fastavro(buffer, self._schema, to_avro_record(event))
        return buffer.getvalue()

    def _origin(self, key: tuple[str, ...]) -> tuple[bytes, bytes]:
        connector, name, snapshot, db, schema, table = map(_string, key)
        if len(self._origins) >= 64:
            self._origins.clear()
        origin = self._origins[key] = (_VERSION_BYTES + connector + name,
                                       snapshot + db + schema + table)
        return origin

    def _encode(self, event: ChangeEvent) -> bytes:
        parts: list[bytes] = []
        put = parts.append
        rows = self._rows
        before_absent: list[str] = []
        after_absent: list[str] = []
        if event.before is None:
            put(_NULL)
        else:
            put(b'\x02')
            before_absent = rows(event.before, parts)
        if event.after is None:
            put(_NULL)
        else:
            put(b'\x02')
            after_absent = rows(event.after, parts)
        source = event.source
        key = (source.connector, source.name, source.snapshot, source.db, source.schema,
               source.table)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origin(key)
        put(origin[0])  # version, connector, name
        put(_checked_long(source.ts_ms))
        put(origin[1])  # snapshot, db, schema, table
        put(_optional_long(source.tx_id))
        put(_optional_long(source.lsn))
        put(_optional_long(source.commit_lsn))
        put(_optional_string(source.file))
        put(_optional_long(source.pos))
        put(_optional_long(source.row))
        put(_optional_string(source.gtid))
        put(_optional_long(source.server_id))
        put(_optional_long(source.thread))
        put(_optional_long(source.epoch))
        put(_OPS[event.op])
        put(_checked_long(event.ts_ms))
        tx = event.transaction
        if tx is None:
            put(_NULL)
        else:
            put(b'\x02')
            put(_string(tx.id))
            put(_checked_long(tx.total_order))
            put(_checked_long(tx.data_collection_order))
        put(_optional_long(event.schema_version))
        unchanged = event.unchanged
        put(_string_array(sorted(unchanged)) if unchanged else _NULL)
        message = event.message
        if message is None:
            put(_NULL)
        else:
            put(b'\x02')
            put(_string(json.dumps(dict(message), ensure_ascii=False, allow_nan=False,
                                   separators=(',', ':'))))
        put(_string_array(before_absent))
        if after_absent and unchanged:
            after_absent = [name for name in after_absent if name not in unchanged]
        put(_string_array(after_absent))
        return b''.join(parts)


@functools.lru_cache(maxsize=256)
def avro_encoder(table: TableSchema) -> Callable[[ChangeEvent], bytes]:
    """A function giving the Avro binary encoding of an event of ``table``.

    The bytes are what ``fastavro.schemaless_writer`` writes for ``to_avro_record(event)``
    with the schema ``avro_schema(table)`` (any version); the errors are theirs too
    (:class:`~transforms.envelope.EnvelopeError` naming the field, or fastavro's).
    """
    return _Encoder(table)
