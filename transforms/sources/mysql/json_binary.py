"""MySQL's binary JSON (the storage and binlog form of a ``JSON`` column) to JSON text.

MySQL 5.7+ writes JSON column values to the binlog in its binary format (sql-common/
json_binary.h); MariaDB never does: its JSON is a LONGTEXT, already text.  The text produced
here is what ``SELECT`` shows for the document (``{"a": 1, "b": [true, null]}``: MySQL's
separators, keys in stored order), so the envelope carries the same string either way::

    to_json_text(b'\\x04\\x01')   # 'true'

Format summary::

    doc          ::= type value
    type         ::= 0x00 small object | 0x01 large object | 0x02 small array | 0x03 large array
                   | 0x04 literal | 0x05 int16 | 0x06 uint16 | 0x07 int32 | 0x08 uint32
                   | 0x09 int64 | 0x0a uint64 | 0x0b double | 0x0c string | 0x0f opaque
    object       ::= count size key-entry* value-entry* key* value*
    array        ::= count size value-entry* value*
    count, size  ::= uint16 (small) | uint32 (large), little-endian
    key-entry    ::= key-offset (uint16 | uint32) key-length (uint16)
    value-entry  ::= type (offset | inlined value): literals and 16-bit ints are inlined, and
                     in large containers 32-bit ints too; offsets count from the container's
                     first byte (its count)
    string       ::= length (7 bits per byte, low first, high bit = more) utf8mb4 bytes
    opaque       ::= field type (uint8) length (as string) bytes
"""
from __future__ import annotations

import base64
import json
import struct

from transforms.sources.mysql import types

__all__ = ['JsonDecodeError', 'to_json_text']


class JsonDecodeError(ValueError):
    """Bytes that are not a valid MySQL binary JSON document."""


_SMALL_OBJECT, _LARGE_OBJECT, _SMALL_ARRAY, _LARGE_ARRAY = 0, 1, 2, 3
_LITERAL, _INT16, _UINT16, _INT32, _UINT32, _INT64, _UINT64, _DOUBLE = 4, 5, 6, 7, 8, 9, 10, 11
_STRING, _OPAQUE = 12, 15
_LITERALS = {0: 'null', 1: 'true', 2: 'false'}
_SCALARS = {
    _INT16: struct.Struct('<h'), _UINT16: struct.Struct('<H'), _INT32: struct.Struct('<i'),
    _UINT32: struct.Struct('<I'), _INT64: struct.Struct('<q'), _UINT64: struct.Struct('<Q'),
}
_DOUBLE_STRUCT = struct.Struct('<d')
_U16 = struct.Struct('<H')
_U32 = struct.Struct('<I')


def to_json_text(data: bytes) -> str:
    """The JSON text of one binary JSON document; raises JsonDecodeError for corrupt input.

    An empty value (which the server writes for a JSON ``null`` in some paths) is ``null``.
    """
    if not data:
        return 'null'
    out: list[str] = []
    try:
        _value(data, data[0], 1, out)
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise JsonDecodeError(f'corrupt binary JSON: {exc}') from None
    return ''.join(out)


def _value(data: bytes, kind: int, pos: int, out: list[str]) -> None:
    if kind <= _LARGE_ARRAY:
        _container(data, kind, pos, out)
    elif kind == _LITERAL:
        out.append(_literal(data[pos]))
    elif kind in _SCALARS:
        out.append(str(_SCALARS[kind].unpack_from(data, pos)[0]))
    elif kind == _DOUBLE:
        out.append(_double_text(_DOUBLE_STRUCT.unpack_from(data, pos)[0]))
    elif kind == _STRING:
        length, pos = _var_length(data, pos)
        out.append(json.dumps(data[pos:pos + length].decode('utf-8'), ensure_ascii=False))
    elif kind == _OPAQUE:
        field_type = data[pos]
        length, pos = _var_length(data, pos + 1)
        out.append(_opaque(field_type, data[pos:pos + length]))
    else:
        raise JsonDecodeError(f'unknown binary JSON type 0x{kind:02x}')


def _literal(code: int) -> str:
    try:
        return _LITERALS[code]
    except KeyError:
        raise JsonDecodeError(f'unknown JSON literal 0x{code:02x}') from None


def _container(data: bytes, kind: int, start: int, out: list[str]) -> None:
    large = kind in (_LARGE_OBJECT, _LARGE_ARRAY)
    is_object = kind in (_SMALL_OBJECT, _LARGE_OBJECT)
    word = _U32 if large else _U16
    width = word.size
    count = word.unpack_from(data, start)[0]
    size = word.unpack_from(data, start + width)[0]
    if start + size > len(data):
        raise JsonDecodeError(f'container of {size} bytes overruns the document')
    entry = start + 2 * width
    keys: list[str] = []
    if is_object:
        for _ in range(count):
            key_offset = word.unpack_from(data, entry)[0]
            key_length = _U16.unpack_from(data, entry + width)[0]
            key = data[start + key_offset:start + key_offset + key_length].decode('utf-8')
            keys.append(json.dumps(key, ensure_ascii=False))
            entry += width + 2
    out.append('{' if is_object else '[')
    for i in range(count):
        if i:
            out.append(', ')
        if is_object:
            out.append(keys[i])
            out.append(': ')
        value_type = data[entry]
        if value_type == _LITERAL:
            out.append(_literal(data[entry + 1]))
        elif value_type in (_INT16, _UINT16) or (large and value_type in (_INT32, _UINT32)):
            out.append(str(_SCALARS[value_type].unpack_from(data, entry + 1)[0]))
        else:
            offset = word.unpack_from(data, entry + 1)[0]
            _value(data, value_type, start + offset, out)
        entry += 1 + width
    out.append('}' if is_object else ']')


def _var_length(data: bytes, pos: int) -> tuple[int, int]:
    length = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7f) << shift
        if not byte & 0x80:
            return length, pos
        shift += 7
        if shift > 28:
            raise JsonDecodeError('string length longer than 5 bytes')


def _double_text(value: float) -> str:
    # MySQL prints 1e+30 as 1e30; repr is otherwise the same shortest round-trip form.
    return repr(value).replace('e+', 'e')


def _packed_temporal(field_type: int, packed: int) -> str:
    """MySQL's in-memory "packed" temporal longlong: ((ymd << 17 | hms) << 24) + microseconds,
    with ymd = (year * 13 + month) << 5 | day and hms = h << 12 | m << 6 | s; a TIME is
    (hms << 24) + microseconds, negated when negative.
    """
    negative = packed < 0
    packed = -packed if negative else packed
    us, whole = packed & 0xffffff, packed >> 24
    if field_type == types.TIME:  # hms alone, hours not limited to 5 bits
        sign = '-' if negative else ''
        return f'"{sign}{whole >> 12:02d}:{whole >> 6 & 63:02d}:{whole & 63:02d}.{us:06d}"'
    hms, ymd = whole & 0x1ffff, whole >> 17
    hour, minute, second = hms >> 12, hms >> 6 & 63, hms & 63
    year_month = ymd >> 5
    date = f'{year_month // 13:04d}-{year_month % 13:02d}-{ymd & 31:02d}'
    if field_type == types.DATE:
        return f'"{date}"'
    return f'"{date} {hour:02d}:{minute:02d}:{second:02d}.{us:06d}"'


def _opaque(field_type: int, payload: bytes) -> str:
    if field_type == types.NEWDECIMAL and len(payload) >= 2:
        precision, scale = payload[0], payload[1]
        size, read = types.decimal_reader(precision, scale)
        if len(payload) >= 2 + size:
            return str(read(payload, 2))
    if field_type in (types.DATE, types.TIME, types.DATETIME, types.TIMESTAMP) \
            and len(payload) >= 8:
        return _packed_temporal(field_type, struct.unpack_from('<q', payload)[0])
    # What MySQL itself prints for any other opaque value.
    return f'"base64:type{field_type}:{base64.b64encode(payload).decode("ascii")}"'
