"""Typed envelope values rendered as PostgreSQL ``COPY … FROM STDIN`` text (pure, no driver).

    render = row_renderer([Column('id', Kind.INT64), Column('tags', Kind.ARRAY, element=Kind.TEXT)])
    render([7, ['a', None, 'b"c']])      # '7\\t{"a",NULL,"b\\\\"c"}\\n'

Each value becomes the input text of its PostgreSQL type, so the server's own input function
converts it into the target column's type: ``infinity``, ``24:00:00`` or a date in 10000 AD (kept
as text forms in the envelope) land exactly as the source had them.  Formatting per column kind
instead of psycopg's per-value dumper lookup is what keeps the sink near COPY speed
(bench/sinks.py).  A value of an unexpected Python type is written as ``str(value)`` and left
for the server to accept or reject.
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from operator import attrgetter
from typing import Any

from transforms.envelope import Column, Kind

try:
    from transforms.sinks.sql import _copytext
except ImportError:  # built without a C compiler: the Python paths below do it all
    _copytext = None  # type: ignore[assignment]

__all__ = ['BINARY_HEADER', 'BINARY_TRAILER', 'NULL', 'binary_codes', 'column_texts', 'escape',
           'row_renderer', 'rows_binary', 'rows_text', 'value_renderer']

NULL = '\\N'
_COPY_ESCAPES = str.maketrans({'\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t'})

Render = Callable[[Any], str]


def escape(text: str) -> str:
    """COPY text escaping: backslash, newline, carriage return and tab."""
    # Four substring scans cost ~0.1 µs; str.translate costs ~1.3 µs even when nothing changes.
    if '\\' in text or '\n' in text or '\t' in text or '\r' in text:
        return text.translate(_COPY_ESCAPES)
    return text


def _plain(value: Any) -> str:
    return escape(value if isinstance(value, str) else str(value))


def _boolean(value: Any) -> str:
    if isinstance(value, bool):
        return 't' if value else 'f'
    return _plain(value)


def _integer(value: Any) -> str:
    return str(value) if type(value) is int else _plain(value)


def _float(value: Any) -> str:
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        if math.isnan(value):
            return 'NaN'
        return 'Infinity' if value > 0 else '-Infinity'
    return _plain(value)


def _iso(value: Any) -> str:
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return _plain(value)


def _bytes_text(value: Any) -> str:
    """bytea hex input form (one backslash: not yet COPY-escaped)."""
    return '\\x' + bytes(value).hex()


def _bytes(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return '\\\\x' + bytes(value).hex()
    return _plain(value)


_BY_KIND: dict[Kind, Render] = {
    Kind.BOOLEAN: _boolean,
    Kind.INT16: _integer,
    Kind.INT32: _integer,
    Kind.INT64: _integer,
    Kind.FLOAT32: _float,
    Kind.FLOAT64: _float,
    Kind.DECIMAL: _plain,  # str(Decimal) is valid numeric input, NaN and Infinity included
    Kind.BYTES: _bytes,
    Kind.DATE: _iso,
    Kind.TIME: _iso,
    Kind.TIMESTAMP: _iso,
    Kind.TIMESTAMPTZ: _iso,  # aware: isoformat carries the offset
}


def _element_text(kind: Kind) -> Render:
    """An array element's input text, before array quoting and COPY escaping."""
    if kind is Kind.BYTES:
        return lambda v: _bytes_text(v) if isinstance(v, (bytes, bytearray, memoryview)) \
            else str(v)
    if kind in (Kind.DATE, Kind.TIME, Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return lambda v: v.isoformat() if isinstance(v, (dt.date, dt.time)) else str(v)
    if kind in (Kind.FLOAT32, Kind.FLOAT64):
        return lambda v: _float(v) if isinstance(v, float) else str(v)
    if kind is Kind.BOOLEAN:
        return lambda v: ('t' if v else 'f') if isinstance(v, bool) else str(v)
    return str


def _array(element: Kind) -> Render:
    text = _element_text(element)

    def literal(value: Any) -> str:
        if not isinstance(value, list):
            return text(value)
        items = []
        for item in value:
            if item is None:
                items.append('NULL')
            elif isinstance(item, list):
                items.append(literal(item))
            else:
                items.append('"' + text(item).replace('\\', '\\\\').replace('"', '\\"') + '"')
        return '{' + ','.join(items) + '}'

    def render(value: Any) -> str:
        return escape(literal(value))
    return render


def value_renderer(column: Column) -> Render:
    """The COPY text of one non-NULL value of ``column``."""
    if column.kind is Kind.ARRAY:
        return _array(column.element or Kind.TEXT)
    return _BY_KIND.get(column.kind, _plain)


# Column-wise fast paths: when every value of a column has the expected type, one C-level map
# renders the whole column (~0.1 µs a value instead of ~0.6 µs through value_renderer).
_ISO: dict[type, Callable[[Any], str]] = {
    dt.datetime: dt.datetime.isoformat, dt.date: dt.date.isoformat, dt.time: dt.time.isoformat}
_TEXT_KINDS = frozenset({Kind.STRING, Kind.TEXT, Kind.JSON, Kind.UUID, Kind.ENUM, Kind.INTERVAL,
                         Kind.TIMETZ})
_INT_KINDS = frozenset({Kind.INT16, Kind.INT32, Kind.INT64})
_NONE = type(None)
_TZINFO = attrgetter('tzinfo')
_UTC = dt.timezone.utc
_UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)
_ARRAY_SPECIAL = ('\\', '"', '\n', '\t', '\r')


def _utc_texts(values: Sequence[dt.datetime]) -> list[str]:
    """isoformat() of UTC datetimes, ~2x cheaper: an aware isoformat costs ~1.2 µs (the offset
    lookup), the naive one plus the same instant's arithmetic ~0.6 µs."""
    iso, naive, epoch = dt.datetime.isoformat, _NAIVE_EPOCH, _UTC_EPOCH
    return [iso(naive + (v - epoch)) + '+00:00' for v in values]


def _array_fast(element: Kind, values: Sequence[list[Any]]) -> list[str] | None:
    """Array literals of flat lists of plain text or integers, whole column at once (~0.2 µs a
    value instead of ~1 µs through the per-value quoting); None when another path must."""
    items = [item for value in values for item in value]
    types = set(map(type, items))
    if not types:
        return ['{}'] * len(values)
    if len(types) > 1:
        return None
    type_ = types.pop()
    if type_ is str and element in _TEXT_KINDS:
        joined = '\x1f'.join(items)
        if any(c in joined for c in _ARRAY_SPECIAL):
            return None
        return ['{"' + '","'.join(v) + '"}' if v else '{}' for v in values]
    if type_ is int and element in _INT_KINDS:
        return ['{"' + '","'.join(map(str, v)) + '"}' if v else '{}' for v in values]
    return None


def _column_fast(kind: Kind, values: Sequence[Any], element: Kind | None = None
                 ) -> list[str] | None:
    """The COPY texts of a column's values if a fast path applies, else None."""
    types = set(map(type, values))
    has_null = _NONE in types
    types.discard(_NONE)
    if not types:
        return [NULL] * len(values)
    if len(types) > 1:
        return None
    type_ = types.pop()
    present = [v for v in values if v is not None] if has_null else values
    texts: list[str]
    if kind in _TEXT_KINDS and type_ is str:
        joined = '\x1f'.join(present)
        if '\\' in joined or '\n' in joined or '\t' in joined or '\r' in joined:
            texts = [escape(v) for v in present]
        else:
            texts = list(present)
    elif kind in _INT_KINDS and type_ is int:
        texts = list(map(str, present))
    elif kind is Kind.DECIMAL and type_ is Decimal:
        texts = list(map(str, present))
    elif kind in (Kind.FLOAT32, Kind.FLOAT64) and type_ is float and all(map(math.isfinite,
                                                                               present)):
        texts = list(map(repr, present))
    elif kind is Kind.TIMESTAMPTZ and type_ is dt.datetime and \
            set(map(_TZINFO, present)) == {_UTC}:
        texts = _utc_texts(present)
    elif kind in (Kind.DATE, Kind.TIME, Kind.TIMESTAMP, Kind.TIMESTAMPTZ) and type_ in _ISO:
        texts = list(map(_ISO[type_], present))
    elif kind is Kind.BYTES and type_ is bytes:
        texts = ['\\\\x' + h for h in map(bytes.hex, present)]
    elif kind is Kind.BOOLEAN and type_ is bool:
        texts = ['t' if v else 'f' for v in present]
    elif kind is Kind.ARRAY and type_ is list:
        fast = _array_fast(element or Kind.TEXT, present)
        if fast is None:
            return None
        texts = fast
    else:
        return None
    if not has_null:
        return texts
    rendered = iter(texts)
    return [NULL if v is None else next(rendered) for v in values]


def column_texts(column: Column, values: Sequence[Any]) -> list[str]:
    """The COPY texts of one column's values (NULL as ``\\N``)."""
    fast = _column_fast(column.kind, values, column.element)
    if fast is not None:
        return fast
    render = value_renderer(column)
    return [NULL if v is None else render(v) for v in values]


# What _copytext.rows_text takes each column's values for (its CODE_* numbers): the types the
# column-wise paths above render alike (a value of another type makes it hand the rows back).
_NATIVE_KINDS: dict[Kind, int] = {
    **{kind: 1 for kind in _INT_KINDS}, **{kind: 2 for kind in _TEXT_KINDS},
    Kind.DECIMAL: 3, Kind.FLOAT32: 4, Kind.FLOAT64: 4, Kind.TIMESTAMPTZ: 5,
    Kind.TIMESTAMP: 6, Kind.DATE: 7, Kind.BYTES: 8, Kind.BOOLEAN: 9}
_NATIVE_CODES: dict[tuple[tuple[Kind, Kind | None], ...], tuple[int, ...] | None] = {}


def _native_codes(columns: Sequence[Column]) -> tuple[int, ...] | None:
    shape = tuple((c.kind, c.element) for c in columns)
    try:
        return _NATIVE_CODES[shape]
    except KeyError:
        pass
    codes: list[int] = []
    for kind, element in shape:
        if kind is Kind.ARRAY:
            element = element or Kind.TEXT
            code = 10 if element in _TEXT_KINDS else 11 if element in _INT_KINDS else None
        else:
            code = _NATIVE_KINDS.get(kind)
        if code is None:
            break
        codes.append(code)
    found = _NATIVE_CODES[shape] = tuple(codes) if len(codes) == len(shape) and codes else None
    return found


def rows_text(columns: Sequence[Column], rows: Sequence[Iterable[Any]],
              tails: Sequence[str] = ()) -> str:
    """COPY text of ``rows`` (values in ``columns`` order); ``tails[i]`` ends line i as is.

    In C (``_copytext``) when every value has the type its column's fast path expects
    (~4x cheaper); else, or without the extension, column by column in Python."""
    if not rows:
        return ''
    if _copytext is not None:
        codes = _native_codes(columns)
        if codes is not None:
            text = _copytext.rows_text(codes, rows, tails)
            if text is not None:
                return text
    return _rows_text(columns, rows, tails)


def _rows_text(columns: Sequence[Column], rows: Sequence[Iterable[Any]],
               tails: Sequence[str] = ()) -> str:
    """rows_text's Python path (and the reference its C path is tested against)."""
    if not rows:
        return ''
    if columns:
        by_column = [column_texts(c, v)
                     for c, v in zip(columns, zip(*rows, strict=True), strict=True)]
    else:
        by_column = []
    if tails:
        by_column.append(list(tails))
    return '\n'.join(map('\t'.join, zip(*by_column, strict=True))) + '\n'


def row_renderer(columns: Sequence[Column]) -> Callable[[Iterable[Any], str], str]:
    """A function rendering a row as a COPY text line: ``render(values, tail)``.

    ``values`` are in ``columns`` order; ``tail`` is appended as is (already-safe text of
    further columns, such as ``'\\t' + position``).
    """
    renders = [value_renderer(c) for c in columns]

    def render(values: Iterable[Any], tail: str = '') -> str:
        return '\t'.join([NULL if v is None else r(v)
                          for r, v in zip(renders, values, strict=True)]) + tail + '\n'
    return render


# Binary COPY: what _copytext.rows_binary encodes (its BIN_* numbers), by the type OID of the
# column it goes into.  The server parses a binary value only as exactly its column's type
# (an int8 for an int4 column is an error, not a cast), so this is keyed by the staging
# table's own types: a domain, an enum or any type not listed here makes the rows go as text.
_BINARY_CODES: dict[int, int] = {
    16: 1,  # bool
    17: 2,  # bytea
    21: 3, 23: 4, 20: 5,  # int2, int4, int8
    25: 6, 1043: 6, 1042: 6, 114: 6,  # text, varchar, bpchar, json: the UTF-8
    3802: 7,  # jsonb
    701: 8,  # float8 (not float4: its text input rounds the decimal, not the double)
    1700: 9,  # numeric
    1082: 10, 1114: 11, 1184: 12,  # date, timestamp, timestamptz
    2950: 13,  # uuid
    1009: 14, 1015: 15, 1005: 16, 1007: 17, 1016: 18,  # text[], varchar[], int2/4/8[]
}
BINARY_HEADER = b'PGCOPY\n\xff\r\n\x00' + bytes(8)  # signature, flags, no extension
BINARY_TRAILER = b'\xff\xff'


def binary_codes(type_oids: Sequence[int]) -> tuple[int, ...] | None:
    """rows_binary's codes for columns of these types; None if one has no binary path here
    (or the extension is not built)."""
    if _copytext is None:
        return None
    codes = tuple(_BINARY_CODES.get(oid, 0) for oid in type_oids)
    return None if 0 in codes or not codes else codes


def rows_binary(codes: tuple[int, ...], rows: Sequence[Iterable[Any]],
                tails: Sequence[str] = ()) -> bytes | None:
    """Binary COPY tuples of ``rows`` (no header or trailer) for columns of ``codes``
    (:func:`binary_codes`), ``tails[i]`` one more text value of row i; None when a value is
    not of the one Python type its column's code encodes: then the rows go as text.

    Cheaper for the server than text (it parses no numbers, dates or array literals): the
    bench's table into a staging table cost it 1.1 to 2.0 against 2.6 to 2.9 µs a row, and the
    rendering ~0.2 against ~0.6 µs."""
    if _copytext is None:
        return None
    if not rows:
        return b''
    return _copytext.rows_binary(codes, rows, tails)
