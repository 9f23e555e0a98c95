"""MySQL binary JSON -> JSON text, on documents built by hand from the format in MySQL's
sql-common/json_binary.h (MariaDB never writes binary JSON, so no server capture exists here).
"""
from __future__ import annotations

import json
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.sources.mysql.json_binary import JsonDecodeError, to_json_text

_INLINE_SMALL = {0x04, 0x05, 0x06}
_INLINE_LARGE = {0x04, 0x05, 0x06, 0x07, 0x08}


def _var_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7f
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _scalar(value: Any) -> tuple[int, bytes]:
    """(type, bytes) of a non-container value."""
    if value is None or isinstance(value, bool):
        return 0x04, bytes([{None: 0, True: 1, False: 2}[value]])
    if isinstance(value, int):
        for kind, fmt in ((0x05, '<h'), (0x06, '<H'), (0x07, '<i'), (0x08, '<I'),
                          (0x09, '<q'), (0x0a, '<Q')):
            try:
                return kind, struct.pack(fmt, value)
            except struct.error:
                continue
        raise ValueError(value)
    if isinstance(value, float):
        return 0x0b, struct.pack('<d', value)
    if isinstance(value, str):
        data = value.encode()
        return 0x0c, _var_length(len(data)) + data
    if isinstance(value, Decimal):  # opaque DECIMAL(10,2)
        from tests.unit.test_binlog_types import pack_decimal
        data = bytes([10, 2]) + pack_decimal(value, 10, 2)
        return 0x0f, bytes([246]) + _var_length(len(data)) + data
    raise TypeError(value)


def _sorted_keys(obj: dict[str, Any]) -> list[str]:
    return sorted(obj, key=lambda k: (len(k.encode()), k.encode()))


def encode(value: Any, large: bool = False) -> tuple[int, bytes]:
    """(type, value bytes) in MySQL's binary JSON."""
    if not isinstance(value, (dict, list)):
        return _scalar(value)
    is_object = isinstance(value, dict)
    width = 4 if large else 2
    word = '<I' if large else '<H'
    keys = _sorted_keys(value) if is_object else []
    items = [value[k] for k in keys] if is_object else list(value)
    header = 2 * width + (len(items) * (width + 2) if is_object else 0) + len(items) * (1 + width)
    key_bytes = [k.encode() for k in keys]
    offset = header + sum(map(len, key_bytes))
    key_entries, value_entries, tail = b'', b'', b''
    key_offset = header
    for k in key_bytes:
        key_entries += struct.pack(word, key_offset) + struct.pack('<H', len(k))
        key_offset += len(k)
    for item in items:
        kind, data = encode(item, large)
        inline = _INLINE_LARGE if large else _INLINE_SMALL
        if kind in inline and len(data) <= width:
            value_entries += bytes([kind]) + data.ljust(width, b'\0')
        else:
            value_entries += bytes([kind]) + struct.pack(word, offset + len(tail))
            tail += data
    body = key_entries + value_entries + b''.join(key_bytes) + tail
    size = 2 * width + len(body)
    kind = (0x00 if is_object else 0x02) + (1 if large else 0)
    return kind, struct.pack(word, len(items)) + struct.pack(word, size) + body


def document(value: Any, large: bool = False) -> bytes:
    kind, data = encode(value, large)
    return bytes([kind]) + data


def mysql_text(value: Any) -> str:
    """The text MySQL prints: ', ' and ': ' separators, keys in stored order."""
    if isinstance(value, dict):
        return '{' + ', '.join(f'{json.dumps(k, ensure_ascii=False)}: {mysql_text(value[k])}'
                               for k in _sorted_keys(value)) + '}'
    if isinstance(value, list):
        return '[' + ', '.join(mysql_text(v) for v in value) + ']'
    if isinstance(value, float):
        return repr(value).replace('e+', 'e')
    return json.dumps(value, ensure_ascii=False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


@given(json_values, st.booleans())
def test_documents_decode_to_mysqls_text(value: Any, large: bool) -> None:
    assert to_json_text(document(value, large)) == mysql_text(value)


def test_inlined_and_offset_values_in_small_and_large_containers() -> None:
    value = {'a': 1, 'bb': 70000, 'c': -5, 'd': [True, False, None, 'x' * 200, 2 ** 40]}
    # keys are stored (and printed) shortest first, then bytewise
    expected = '{"a": 1, "c": -5, "d": [true, false, null, "' + 'x' * 200 \
        + '", 1099511627776], "bb": 70000}'
    assert to_json_text(document(value)) == expected
    assert to_json_text(document(value, large=True)) == expected


def test_scalar_documents() -> None:
    assert to_json_text(b'\x04\x00') == 'null'
    assert to_json_text(b'\x04\x01') == 'true'
    assert to_json_text(document('é"\n')) == '"é\\"\\n"'
    assert to_json_text(document(1e30)) == '1e30'
    assert to_json_text(b'') == 'null'


def test_opaque_decimal_and_temporals() -> None:
    assert to_json_text(document([Decimal('-12.50')])) == '[-12.50]'

    def opaque(field_type: int, packed: int) -> bytes:
        return b'\x0f' + bytes([field_type, 8]) + struct.pack('<q', packed)

    ymd = ((2015 * 13 + 1) << 5) | 15
    hms = (23 << 12) | (24 << 6) | 25
    assert to_json_text(opaque(12, (((ymd << 17) | hms) << 24) + 500)) == \
        '"2015-01-15 23:24:25.000500"'
    assert to_json_text(opaque(10, (ymd << 17) << 24)) == '"2015-01-15"'
    assert to_json_text(opaque(11, -(((100 << 12) | (2 << 6) | 3) << 24))) == \
        '"-100:02:03.000000"'
    assert to_json_text(b'\x0f\xfc\x02\x01\x02') == '"base64:type252:AQI="'


def test_corrupt_documents_raise() -> None:
    with pytest.raises(JsonDecodeError):
        to_json_text(b'\x00\x05\x00\xff\x00')  # 5 members, 255 bytes, in 5 bytes
    with pytest.raises(JsonDecodeError, match='unknown binary JSON type'):
        to_json_text(b'\x0d')
