"""PostgreSQL types: relation columns to envelope :class:`Column`\\ s, pgoutput text to values.

Pure code.  The replication stream looks up the OIDs of a Relation message's columns once
(``CATALOG_QUERY``; builtin types are known without it), builds the columns, then a row decoder
per relation that turns every tuple of that relation into a dict of typed values::

    types = type_infos(cursor.execute(CATALOG_QUERY, [oids]).fetchall())
    columns = [column_for(c, types) for c in relation.columns]
    decode_row = row_decoder(columns)
    after, unchanged = decode_row(insert.new)

The text forms parsed are those the walsender prints with its defaults (``DateStyle`` ISO,
``IntervalStyle`` postgres, ``bytea_output`` hex, any ``TimeZone``).  A value Python cannot
hold (``infinity``, a BC or a five-digit-year date, ``24:00:00``) stays the text str, as
``transforms/envelope.py`` specifies; a value that is not a valid text form of its type raises
``ValueError`` naming the column, the type and the text, so the caller can dead-letter it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

import orjson

from transforms.envelope import Column, Kind, TableSchema
from transforms.sources.postgres.pgoutput import UNCHANGED_TOAST

__all__ = [
    'BUILTIN_TYPES',
    'CATALOG_QUERY',
    'TypeInfo',
    'column_for',
    'format_type',
    'is_builtin',
    'missing_value_text',
    'row_decoder',
    'text_parser',
    'type_infos',
    'wire_doc_renderer',
    'wire_row_decoder',
    'wire_row_renderer',
]


@dataclasses.dataclass(frozen=True)
class TypeInfo:
    """What changebeam needs to know about one ``pg_type`` row.

    ``typtype``: ``'b'`` base, ``'e'`` enum, ``'d'`` domain, ``'c'`` composite, ``'r'`` range,
    ``'m'`` multirange, ``'p'`` pseudo.  ``base_oid`` is the type a domain is over (0 otherwise;
    it may itself be a domain) and ``base_typmod`` the domain's type modifier of it.
    ``elem_oid`` is the element type of a true array type (0 otherwise).  ``delimiter`` is the
    type's ``typdelim``: the separator of elements in an array *of this type*.
    """

    oid: int
    name: str
    namespace: str
    typtype: str
    base_oid: int = 0
    elem_oid: int = 0
    enum_labels: tuple[str, ...] = ()
    delimiter: str = ','
    base_typmod: int = -1

    def __post_init__(self) -> None:
        # Database drivers return arrays as lists; keep the dataclass hashable.
        if not isinstance(self.enum_labels, tuple):
            object.__setattr__(self, 'enum_labels', tuple(self.enum_labels or ()))


# The rows of the requested types and, recursively, of their array elements and domain bases,
# so that an enum[] or a domain over a user type resolves from one round trip.  Columns are in
# TypeInfo's field order: ``TypeInfo(*row)``.  "True" arrays only: int2vector and oidvector
# have an element type too but print as space-separated lists (format_type's own test).
CATALOG_QUERY = """\
WITH RECURSIVE wanted(oid) AS (
    SELECT unnest(%s::oid[])
  UNION
    SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END
    FROM wanted w JOIN pg_catalog.pg_type t ON t.oid = w.oid
    WHERE t.typtype = 'd' OR (t.typelem <> 0 AND t.typlen = -1 AND t.typstorage <> 'p')
)
SELECT t.oid::int8,
       t.typname::text,
       n.nspname::text,
       t.typtype::text,
       t.typbasetype::int8,
       CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 AND t.typlen = -1
                 AND t.typstorage <> 'p'
            THEN t.typelem ELSE 0 END::int8,
       COALESCE((SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                 FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid), '{}'::text[]),
       t.typdelim::text,
       t.typtypmod
FROM pg_catalog.pg_type t
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
WHERE t.oid = ANY(ARRAY(SELECT oid FROM wanted))
"""


def type_infos(rows: Iterable[Sequence[Any]]) -> dict[int, TypeInfo]:
    """OID → TypeInfo from the rows of ``CATALOG_QUERY``."""
    infos = (TypeInfo(*row) for row in rows)
    return {info.oid: info for info in infos}


class _RelationColumn(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def type_oid(self) -> int: ...
    @property
    def type_modifier(self) -> int: ...


# ---------------------------------------------------------------------------------------------
# Builtin types: (oid, typname, array oid), typtype 'b' unless listed in _BUILTIN_TYPTYPES.

_BUILTINS = (
    (16, 'bool', 1000), (17, 'bytea', 1001), (18, 'char', 1002), (19, 'name', 1003),
    (20, 'int8', 1016), (21, 'int2', 1005), (22, 'int2vector', 1006), (23, 'int4', 1007),
    (24, 'regproc', 1008), (25, 'text', 1009), (26, 'oid', 1028), (27, 'tid', 1010),
    (28, 'xid', 1011), (29, 'cid', 1012), (30, 'oidvector', 1013), (114, 'json', 199),
    (142, 'xml', 143), (600, 'point', 1017), (601, 'lseg', 1018), (602, 'path', 1019),
    (603, 'box', 1020), (604, 'polygon', 1027), (628, 'line', 629), (650, 'cidr', 651),
    (700, 'float4', 1021), (701, 'float8', 1022), (718, 'circle', 719),
    (774, 'macaddr8', 775), (790, 'money', 791), (829, 'macaddr', 1040), (869, 'inet', 1041),
    (1033, 'aclitem', 1034), (1042, 'bpchar', 1014), (1043, 'varchar', 1015),
    (1082, 'date', 1182), (1083, 'time', 1183), (1114, 'timestamp', 1115),
    (1184, 'timestamptz', 1185), (1186, 'interval', 1187), (1266, 'timetz', 1270),
    (1560, 'bit', 1561), (1562, 'varbit', 1563), (1700, 'numeric', 1231),
    (1790, 'refcursor', 2201), (2202, 'regprocedure', 2207), (2203, 'regoper', 2208),
    (2204, 'regoperator', 2209), (2205, 'regclass', 2210), (2206, 'regtype', 2211),
    (2950, 'uuid', 2951), (2970, 'txid_snapshot', 2949), (3220, 'pg_lsn', 3221),
    (3614, 'tsvector', 3643), (3615, 'tsquery', 3645), (3734, 'regconfig', 3735),
    (3769, 'regdictionary', 3770), (3802, 'jsonb', 3807), (3904, 'int4range', 3905),
    (3906, 'numrange', 3907), (3908, 'tsrange', 3909), (3910, 'tstzrange', 3911),
    (3912, 'daterange', 3913), (3926, 'int8range', 3927), (4072, 'jsonpath', 4073),
    (4089, 'regnamespace', 4090), (4096, 'regrole', 4097), (4191, 'regcollation', 4192),
    (4451, 'int4multirange', 6150), (4532, 'nummultirange', 6151),
    (4533, 'tsmultirange', 6152), (4534, 'tstzmultirange', 6153),
    (4535, 'datemultirange', 6155), (4536, 'int8multirange', 6157),
    (5038, 'pg_snapshot', 5039), (5069, 'xid8', 271),
)
_BUILTIN_TYPTYPES = {3904: 'r', 3906: 'r', 3908: 'r', 3910: 'r', 3912: 'r', 3926: 'r',
                     4451: 'm', 4532: 'm', 4533: 'm', 4534: 'm', 4535: 'm', 4536: 'm'}
_BUILTIN_DELIMITERS = {603: ';'}  # box: its text form holds commas


def _builtin_types() -> dict[int, TypeInfo]:
    types = {}
    for oid, name, array_oid in _BUILTINS:
        types[oid] = TypeInfo(oid, name, 'pg_catalog', _BUILTIN_TYPTYPES.get(oid, 'b'),
                              delimiter=_BUILTIN_DELIMITERS.get(oid, ','))
        types[array_oid] = TypeInfo(array_oid, '_' + name, 'pg_catalog', 'b', elem_oid=oid,
                                    delimiter=_BUILTIN_DELIMITERS.get(oid, ','))
    return types


#: The types of a stock PostgreSQL (15) whose OIDs never change, known without a query.
BUILTIN_TYPES: Mapping[int, TypeInfo] = _builtin_types()

_BASE_KINDS = {
    16: Kind.BOOLEAN, 17: Kind.BYTES, 18: Kind.STRING, 19: Kind.STRING, 20: Kind.INT64,
    21: Kind.INT16, 23: Kind.INT32, 25: Kind.STRING, 26: Kind.INT64, 114: Kind.JSON,
    700: Kind.FLOAT32, 701: Kind.FLOAT64, 1042: Kind.STRING, 1043: Kind.STRING,
    1082: Kind.DATE, 1083: Kind.TIME, 1114: Kind.TIMESTAMP, 1184: Kind.TIMESTAMPTZ,
    1186: Kind.INTERVAL, 1266: Kind.TIMETZ, 1700: Kind.DECIMAL, 2950: Kind.UUID,
    3802: Kind.JSON,
}

# ---------------------------------------------------------------------------------------------
# format_type(oid, typmod), reimplemented: the typmod encodings are those of the types' typmodout
# functions (numeric: ((p << 16) | s) + 4; varchar/bpchar: length + 4; bit, time*: as is).

_NUMERIC, _BPCHAR, _VARCHAR, _INTERVAL = 1700, 1042, 1043, 1186
_FIXED_NAMES = {16: 'boolean', 18: '"char"', 20: 'bigint', 21: 'smallint', 23: 'integer',
                700: 'real', 701: 'double precision'}
_TIME_NAMES = {1083: ('time', ' without time zone'), 1266: ('time', ' with time zone'),
               1114: ('timestamp', ' without time zone'),
               1184: ('timestamp', ' with time zone')}

# interval typmod: range mask in bits 16..30 (bit numbers are datetime.h's field codes),
# precision in bits 0..15 (0xFFFF: none).
_MONTH, _YEAR, _DAY, _HOUR, _MINUTE, _SECOND = (1 << f for f in (1, 2, 3, 10, 11, 12))
_INTERVAL_FIELDS = {
    _YEAR: ' year', _MONTH: ' month', _DAY: ' day', _HOUR: ' hour', _MINUTE: ' minute',
    _SECOND: ' second', _YEAR | _MONTH: ' year to month', _DAY | _HOUR: ' day to hour',
    _DAY | _HOUR | _MINUTE: ' day to minute',
    _DAY | _HOUR | _MINUTE | _SECOND: ' day to second', _HOUR | _MINUTE: ' hour to minute',
    _HOUR | _MINUTE | _SECOND: ' hour to second', _MINUTE | _SECOND: ' minute to second',
    0x7FFF: '',
}

# Keywords quote_identifier() quotes: all but the unreserved ones.
_KEYWORDS = frozenset("""
all analyse analyze and any array as asc asymmetric authorization between bigint binary bit
boolean both case cast char character check coalesce collate collation column concurrently
constraint create cross current_catalog current_date current_role current_schema current_time
current_timestamp current_user dec decimal default deferrable desc distinct do else end except
exists extract false fetch float for foreign freeze from full grant greatest group grouping
having ilike in initially inner inout int integer intersect interval into is isnull join
lateral leading least left like limit
localtime localtimestamp national natural nchar none normalize not notnull null nullif numeric
offset on only or order out outer overlaps overlay placing position precision primary real
references returning right row select session_user setof similar smallint some substring
symmetric table tablesample then time timestamp to trailing treat trim true union
unique user using values varchar variadic verbose when where window with xmlattributes
xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize
xmltable
""".split())
_PLAIN_IDENT = re.compile(r'[a-z_][a-z0-9_$]*')


def _quote_ident(name: str) -> str:
    if _PLAIN_IDENT.fullmatch(name) and name not in _KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def _lookup(oid: int, types: Mapping[int, TypeInfo]) -> TypeInfo | None:
    info = types.get(oid)
    return info if info is not None else BUILTIN_TYPES.get(oid)


def format_type(oid: int, typmod: int, types: Mapping[int, TypeInfo] = BUILTIN_TYPES) -> str:
    """The SQL type text ``format_type(oid, typmod)`` prints, with user types schema-qualified
    unless in ``public`` (the default search_path)."""
    if oid in _FIXED_NAMES:
        return _FIXED_NAMES[oid]
    if oid in _TIME_NAMES:
        name, zone = _TIME_NAMES[oid]
        return f'{name}({typmod}){zone}' if typmod >= 0 else name + zone
    if oid == _NUMERIC:
        if typmod < 4:
            return 'numeric'
        precision, scale = _numeric_typmod(typmod)
        return f'numeric({precision},{scale})'
    if oid == _VARCHAR:
        return f'character varying({typmod - 4})' if typmod >= 4 else 'character varying'
    if oid == _BPCHAR:
        # Without a typmod PostgreSQL says bpchar: "character" alone would mean character(1).
        return f'character({typmod - 4})' if typmod >= 4 else 'bpchar'
    if oid == 1560:
        return f'bit({typmod})' if typmod >= 0 else '"bit"'
    if oid == 1562:
        return f'bit varying({typmod})' if typmod >= 0 else 'bit varying'
    if oid == _INTERVAL:
        return 'interval' + _interval_typmod(typmod)
    info = _lookup(oid, types)
    if info is None:
        return f'(unknown type oid {oid})'
    if info.elem_oid:
        return format_type(info.elem_oid, typmod, types) + '[]'
    name = _quote_ident(info.name)
    if info.namespace in ('', 'pg_catalog', 'public'):
        return name
    return f'{_quote_ident(info.namespace)}.{name}'


def _numeric_typmod(typmod: int) -> tuple[int, int]:
    packed = typmod - 4
    # The scale is an 11-bit signed field (negative scales exist since PostgreSQL 15).
    return (packed >> 16) & 0xFFFF, ((packed & 0x7FF) ^ 0x400) - 0x400


def _interval_typmod(typmod: int) -> str:
    if typmod < 0:
        return ''
    fields = _INTERVAL_FIELDS.get((typmod >> 16) & 0x7FFF, '')
    precision = typmod & 0xFFFF
    return fields if precision == 0xFFFF else f'{fields}({precision})'


# ---------------------------------------------------------------------------------------------
# Columns


def _resolve(oid: int, typmod: int, types: Mapping[int, TypeInfo]
             ) -> tuple[int, int, TypeInfo | None]:
    """Follow domains down to their base type: (oid, typmod, info) of that base."""
    info = _lookup(oid, types)
    for _ in range(32):  # a domain chain cannot loop; the bound guards a corrupt mapping
        if info is None or info.typtype != 'd':
            break
        if info.base_typmod >= 0:
            typmod = info.base_typmod
        oid = info.base_oid
        info = _lookup(oid, types)
    return oid, typmod, info


def _scalar_kind(oid: int, info: TypeInfo | None) -> Kind:
    kind = _BASE_KINDS.get(oid)
    if kind is not None:
        return kind
    if info is not None and info.typtype == 'e':
        return Kind.ENUM
    return Kind.TEXT


def column_for(col: _RelationColumn, types: Mapping[int, TypeInfo]) -> Column:
    """The envelope column of a pgoutput Relation column; unknown types become Kind.TEXT."""
    source_type = format_type(col.type_oid, col.type_modifier, types)
    oid, typmod, info = _resolve(col.type_oid, col.type_modifier, types)
    element = None
    if info is not None and info.elem_oid:
        oid, typmod, info = _resolve(info.elem_oid, typmod, types)
        element = Kind.TEXT if info is not None and info.elem_oid else _scalar_kind(oid, info)
    kind = _scalar_kind(oid, info)
    precision = scale = None
    if oid == _NUMERIC and typmod >= 4:
        precision, scale = _numeric_typmod(typmod)
    return Column(
        name=col.name,
        kind=Kind.ARRAY if element is not None else kind,
        source_type=source_type,
        element=element,
        precision=precision,
        scale=scale,
        symbols=info.enum_labels if kind is Kind.ENUM and info is not None else (),
    )


# ---------------------------------------------------------------------------------------------
# Text forms

_UTC = dt.timezone.utc
_FRACTION_PAD = '000000'

# What the ISO DateStyle prints for a value Python's types cannot hold: kept as text.
_DATE_TEXT = re.compile(r'-?infinity|\d{4}-\d\d-\d\d BC|\d{5,}-\d\d-\d\d(?: BC)?')
_TIMESTAMP_TEXT = re.compile(
    r'-?infinity|(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})? BC'
    r'|\d{5,}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?(?: BC)?)')
_TIMESTAMPTZ = re.compile(
    r'(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d{1,6})?[+-]\d\d(?::\d\d){0,2}')
_TIMESTAMPTZ_TEXT = re.compile(
    r'-?infinity|\d{4,}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?[+-]\d\d(?::\d\d){0,2} BC'
    r'|\d{5,}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?[+-]\d\d(?::\d\d){0,2}')
_LEAP_CYCLE_YEARS = 400  # the Gregorian calendar repeats every 400 years
_datetime_fromisoformat = dt.datetime.fromisoformat


def _parse_date(text: str) -> dt.date | str:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        if _DATE_TEXT.fullmatch(text):
            return text
        raise ValueError('not an ISO date') from None


def _parse_time(text: str) -> dt.time | str:
    size = len(text)
    if 8 < size < 15:  # PostgreSQL drops trailing zeros of the fraction; Python 3.10 wants 3 or 6
        text += _FRACTION_PAD[:15 - size]
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        if text == '24:00:00':
            return text
        raise ValueError('not an ISO time') from None


def _parse_timestamp(text: str) -> dt.datetime | str:
    size = len(text)
    padded = text + _FRACTION_PAD[:26 - size] if 19 < size < 26 else text
    try:
        if size >= 19:
            return dt.datetime.fromisoformat(padded)
    except ValueError:
        pass
    if _TIMESTAMP_TEXT.fullmatch(text):
        return text
    raise ValueError('not an ISO timestamp')


def _parse_timestamptz(text: str) -> dt.datetime | str:
    # Rewritten into the one form every Python >= 3.10 fromisoformat takes (6 fraction digits,
    # offset with minutes): ~4x faster than matching the parts and calling datetime.replace.
    sign = text.find('+', 19)
    if sign < 0:
        sign = text.find('-', 19)
    if sign == 19 or 20 < sign < 27:
        offset = text[sign:]
        if len(offset) == 3:
            offset += ':00'
        try:
            value = _datetime_fromisoformat(text[:sign] + _FRACTION_PAD[:26 - sign] + offset
                                            if sign > 19 else text[:19] + offset)
        except ValueError:
            pass
        else:
            if value.tzinfo is _UTC:
                return value
            try:
                return value.astimezone(_UTC)
            except OverflowError:
                return text  # in range locally but not in UTC (year 1 or 9999)
    return _timestamptz_slow(text)


def _timestamptz_slow(text: str) -> dt.datetime | str:
    match = _TIMESTAMPTZ.fullmatch(text)
    if match is None:
        if _TIMESTAMPTZ_TEXT.fullmatch(text):
            return _far_timestamptz(text)
        raise ValueError('not an ISO timestamp with time zone')
    # Well-formed but rejected by the fast path: an impossible date or time, say.
    dt.datetime.fromisoformat(match.group(1))
    raise ValueError('not an ISO timestamp with time zone')


def _far_timestamptz(text: str) -> dt.datetime | str:
    # '10000-01-01 04:30:00+05:30' is 9999-12-31 23:00 UTC: parse it 400 years earlier (same
    # calendar) and move the result back; anything else of this form has no Python value.
    if text.startswith('10000-') and not text.endswith(('BC', 'infinity')):
        shifted = _parse_timestamptz(str(10000 - _LEAP_CYCLE_YEARS) + text[5:])
        if isinstance(shifted, dt.datetime) and shifted.year < 10000 - _LEAP_CYCLE_YEARS:
            return shifted.replace(year=shifted.year + _LEAP_CYCLE_YEARS)
    return text


_BYTEA_ESCAPED = re.compile(r'(?:[^\\]|\\\\|\\[0-3][0-7]{2})*', re.DOTALL)
_BYTEA_ESCAPE = re.compile(r'\\(\\|[0-3][0-7]{2})')


def _parse_bytea(text: str) -> bytes:
    if text.startswith('\\x'):
        return bytes.fromhex(text[2:])
    # bytea_output = 'escape': printable ASCII as is, '\\' for a backslash, '\ooo' otherwise.
    if not _BYTEA_ESCAPED.fullmatch(text):
        raise ValueError('not a bytea in hex or escape format')
    return _BYTEA_ESCAPE.sub(
        lambda m: '\\' if m.group(1) == '\\' else chr(int(m.group(1), 8)), text
    ).encode('latin-1')


def _parse_bool(text: str) -> bool:
    if text == 't':
        return True
    if text == 'f':
        return False
    raise ValueError("not 't' or 'f'")


def _parse_float(text: str) -> float:
    # float() also takes 'inf', 'nan', '1_0': PostgreSQL never prints those, so no stricter check.
    return float(text)


_SCALAR_PARSERS: dict[Kind, Callable[[str], Any]] = {
    Kind.BOOLEAN: _parse_bool,
    Kind.INT16: int,
    Kind.INT32: int,
    Kind.INT64: int,
    Kind.FLOAT32: _parse_float,
    Kind.FLOAT64: _parse_float,
    Kind.DECIMAL: Decimal,
    Kind.BYTES: _parse_bytea,
    Kind.DATE: _parse_date,
    Kind.TIME: _parse_time,
    Kind.TIMESTAMP: _parse_timestamp,
    Kind.TIMESTAMPTZ: _parse_timestamptz,
}

# Array literal tokens, as array_out prints them: braces, the delimiter, a quoted element with
# backslash escapes, or an unquoted element (never containing blanks, quotes or backslashes).
_ARRAY_DIMENSIONS = re.compile(r'(?:\[-?\d+:-?\d+\])+=')
_UNESCAPE = re.compile(r'\\(.)', re.DOTALL)
_ARRAY_TOKENS: dict[str, re.Pattern[str]] = {}


def _array_tokens(delimiter: str) -> re.Pattern[str]:
    pattern = _ARRAY_TOKENS.get(delimiter)
    if pattern is None:
        d = re.escape(delimiter)
        pattern = re.compile(
            rf'\s*(?:(\{{)|(\}})|({d})|"((?:[^"\\]|\\.)*)"|([^{{}}"\\\s{d}]+))\s*', re.DOTALL)
        _ARRAY_TOKENS[delimiter] = pattern
    return pattern


def _array_parser(element: Callable[[str], Any] | None, delimiter: str
                  ) -> Callable[[str], list[Any]]:
    tokens = _array_tokens(delimiter)

    def item(text: str) -> Any:
        return text if element is None else element(text)

    def parse(text: str) -> list[Any]:
        start = 0
        if text.startswith('['):
            dims = _ARRAY_DIMENSIONS.match(text)
            if dims is None:
                raise ValueError('malformed array dimensions')
            start = dims.end()
        # Fast path: one dimension, nothing quoted (so no escapes, blanks or empty strings).
        if text.find('{', start + 1) < 0 and '"' not in text and text.startswith('{', start):
            if not text.endswith('}'):
                raise ValueError('array literal does not end with "}"')
            body = text[start + 1:-1]
            if not body:
                return []
            parts = body.split(delimiter)
            if '' in parts:
                raise ValueError('empty array element')
            return [None if part == 'NULL' else item(part) for part in parts]
        return _parse_nested(text, start, tokens, item)

    return parse


def _parse_nested(text: str, pos: int, tokens: re.Pattern[str],
                  item: Callable[[str], Any]) -> list[Any]:
    stack: list[list[Any]] = []
    root: list[Any] | None = None
    want_item = True  # after '{' or a delimiter
    just_opened = False
    size = len(text)
    while pos < size:
        match = tokens.match(text, pos)
        if match is None:
            raise ValueError(f'unexpected character at position {pos}')
        pos = match.end()
        opened, closed, delim, quoted, bare = match.groups()
        if opened:
            if not want_item or (root is not None and not stack):
                raise ValueError(f'unexpected "{{" at position {match.start()}')
            inner: list[Any] = []
            if stack:
                stack[-1].append(inner)
            else:
                root = inner
            stack.append(inner)
            just_opened = True
            continue
        if closed:
            if not stack or (want_item and not just_opened):
                raise ValueError(f'unexpected "}}" at position {match.start()}')
            stack.pop()
            want_item = just_opened = False
            continue
        if not stack or want_item == (delim is not None):
            raise ValueError(f'unexpected {match.group().strip()!r} at position {match.start()}')
        just_opened = False
        if delim is not None:
            want_item = True
            continue
        want_item = False
        if quoted is not None:
            stack[-1].append(item(_UNESCAPE.sub(r'\1', quoted) if '\\' in quoted else quoted))
        else:
            stack[-1].append(None if bare == 'NULL' else item(bare))
    if root is None or stack:
        raise ValueError('unterminated array literal')
    return root


def _delimiter_of(column: Column) -> str:
    # Column does not carry typdelim; box is the only builtin type whose arrays use ';'.
    return ';' if column.source_type.startswith('box[') else ','


def _raw_parser(column: Column, delimiter: str | None = None) -> Callable[[str], Any] | None:
    """The parser of a column's text form; None when the text is the value."""
    if column.kind is Kind.ARRAY:
        element = _SCALAR_PARSERS.get(column.element or Kind.TEXT)
        return _array_parser(element, delimiter or _delimiter_of(column))
    return _SCALAR_PARSERS.get(column.kind)


def missing_value_text(column: Column, text: str) -> str | None:
    """The text form of the value ``pg_attribute.attmissingval`` holds for ``column``.

    ``text`` is ``attmissingval::text``: a one-element array of the column's type (``'{7}'``,
    ``'{"a b"}'``, ``'{"{1,2}"}'`` for an array column).  None for a NULL element.  Raises
    ValueError for anything but one element.
    """
    # The array's delimiter is that of the column's own type: ';' for box (an array column's
    # type, itself an array type, uses ',').
    delimiter = ';' if column.source_type == 'box' else ','
    try:
        values = _array_parser(None, delimiter)(text)
    except ValueError as exc:
        raise ValueError(f'missing value of column {column.name!r}: {exc}: {text!r}') from None
    if len(values) != 1 or isinstance(values[0], list):
        raise ValueError(f'missing value of column {column.name!r} is not one value: {text!r}')
    value: str | None = values[0]
    return value


_CONVERSION_ERRORS = (ValueError, ArithmeticError, KeyError, IndexError, TypeError)


def _conversion_error(column: Column, text: str, exc: BaseException) -> ValueError:
    shown = text if len(text) <= 200 else text[:200] + '…'
    detail = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
    if len(detail) > 120:  # int() and friends repeat the text
        detail = detail[:120] + '…'
    return ValueError(f'column {column.name!r} of type {column.source_type or column.kind.value}:'
                      f' cannot convert {shown!r}: {detail}')


def text_parser(column: Column, delimiter: str | None = None) -> Callable[[str], Any]:
    """A function from the column's pgoutput text form to its envelope value.

    ``delimiter`` overrides the array element separator (typdelim of the element type).
    The function raises ValueError naming the column, its type and the text.
    """
    parse = _raw_parser(column, delimiter)
    if parse is None:
        return str

    def parse_column(text: str) -> Any:
        try:
            return parse(text)
        except _CONVERSION_ERRORS as exc:
            raise _conversion_error(column, text, exc) from None

    return parse_column


_NO_COLUMNS: frozenset[str] = frozenset()


def row_decoder(columns: Sequence[Column]
                ) -> Callable[[Sequence[Any]], tuple[dict[str, Any], frozenset[str]]]:
    """A function from a pgoutput tuple of these columns to ``(row, unchanged)``.

    ``row`` maps names to typed values, leaving out unchanged TOASTed columns, whose names are
    ``unchanged``.  A binary-format value (bytes) is accepted for a BYTES column only.
    Raises ValueError naming the column for a value that cannot be converted.
    """
    columns = tuple(columns)
    plan = tuple((c.name, _raw_parser(c), c.kind is Kind.BYTES, c) for c in columns)
    count = len(plan)

    def decode(values: Sequence[Any]) -> tuple[dict[str, Any], frozenset[str]]:
        if len(values) != count:
            raise ValueError(f'tuple has {len(values)} values for {count} columns')
        row: dict[str, Any] = {}
        unchanged: list[str] | None = None
        for (name, parse, binary_ok, column), value in zip(plan, values, strict=True):
            if value.__class__ is str:
                if parse is None:
                    row[name] = value
                else:
                    try:
                        row[name] = parse(value)
                    except _CONVERSION_ERRORS as exc:
                        raise _conversion_error(column, value, exc) from None
            elif value is None:
                row[name] = None
            elif value is UNCHANGED_TOAST:
                if unchanged is None:
                    unchanged = []
                unchanged.append(name)
            elif binary_ok and isinstance(value, bytes):
                row[name] = value
            else:
                raise ValueError(
                    f'column {name!r} of type {column.source_type or column.kind.value}: '
                    f'got a {type(value).__name__} value; binary format is supported for '
                    'bytea only (start replication without binary)')
        return row, (_NO_COLUMNS if unchanged is None else frozenset(unchanged))

    return decode


def is_builtin(oid: int) -> bool:
    """Whether ``oid`` is a builtin type known without ``CATALOG_QUERY``."""
    return oid in BUILTIN_TYPES


_INT_KINDS = (Kind.INT16, Kind.INT32, Kind.INT64)

_WireDecoder = Callable[[bytes, int], tuple[dict[str, Any], int] | None]
_WireRenderer = Callable[[bytes, int], tuple[bytes, int] | None]
_DocRenderer = Callable[[bytes, int, tuple[bytes, ...], tuple[Any, ...]], bytes | None]
_NativeDecodeTuple = Callable[
    [tuple[str, ...], bytes, tuple[Callable[[str], Any] | None, ...], bytes, int],
    tuple[dict[str, Any], int] | None]
_NativeRenderTuple = Callable[[tuple[bytes, ...], bytes, bytes, int], tuple[bytes, int] | None]
_NativeRenderDoc = Callable[[tuple[bytes, ...], bytes, bytes, int, tuple[bytes, ...],
                             tuple[Any, ...]], bytes | None]


def _load_native() -> tuple[_NativeDecodeTuple | None, _NativeRenderTuple | None,
                            _NativeRenderDoc | None]:
    # The C fast path is built by setup.py when a compiler is there (optional=True); the
    # generated Python decoder below gives the same rows, a few times slower, and rows are
    # encoded in Python.
    try:
        from transforms.sources.postgres import _pgwire
    except ImportError:
        return None, None, None
    # An extension built from an older _pgwire.c (a checkout pulled without a rebuild) still
    # decodes; only the renderer is missing.
    return (_pgwire.decode_tuple, getattr(_pgwire, 'render_tuple', None),
            getattr(_pgwire, 'render_doc', None))


_NATIVE_DECODE_TUPLE, _NATIVE_RENDER_TUPLE, _NATIVE_RENDER_DOC = _load_native()

# Column modes of _pgwire.decode_tuple and render_tuple (its MODE_* defines): _MODE_CALL is
# decode_tuple's only, _MODE_DECIMAL render_tuple's only.
_MODE_TEXT, _MODE_INT, _MODE_BOOL, _MODE_TIMESTAMPTZ, _MODE_CALL = b's', b'i', b'b', b'z', b'c'
_MODE_DECIMAL = b'd'


def wire_row_decoder(columns: Sequence[Column], *, native: bool | None = None
                     ) -> _WireDecoder:
    """A fast path from a pgoutput TupleData, still in its frame, straight to a row dict.

    ``decode(frame, offset)`` -> ``(row, end offset)``, or None whenever the tuple is anything
    but text and null values of these columns that all convert (an unchanged TOAST value, a
    binary value, a malformed frame, a bad value): the caller then takes the general path
    (``pgoutput`` + :func:`row_decoder`), which gives the same rows and the precise errors.

    ``native``: None (the default) uses the C decoder when it was built, else the Python one;
    True insists on C (ImportError without it), False takes Python, the reference the C
    decoder is tested against.  ``frame`` must be bytes for the C decoder.
    """
    if native is None:
        native = _NATIVE_DECODE_TUPLE is not None
    if not native:
        return _python_wire_row_decoder(columns)
    if _NATIVE_DECODE_TUPLE is None:
        raise ImportError('the C pgoutput decoder transforms.sources.postgres._pgwire was not'
                          ' built; reinstall with a C compiler and Python headers, or pass'
                          ' native=None')
    modes: list[bytes] = []
    parsers: list[Callable[[str], Any] | None] = []
    for column in columns:
        parse = _raw_parser(column)
        if parse is None:
            modes.append(_MODE_TEXT)
        elif column.kind in _INT_KINDS:
            modes.append(_MODE_INT)
            parse = None
        elif parse is _parse_bool:
            modes.append(_MODE_BOOL)
            parse = None
        elif parse is _parse_timestamptz:
            modes.append(_MODE_TIMESTAMPTZ)  # the parser still takes whatever is not UTC
        else:
            modes.append(_MODE_CALL)
        parsers.append(parse)
    decode: _WireDecoder = functools.partial(
        _NATIVE_DECODE_TUPLE, tuple(c.name for c in columns), b''.join(modes), tuple(parsers))
    return decode


def _python_wire_row_decoder(columns: Sequence[Column]) -> _WireDecoder:
    """The Python :func:`wire_row_decoder`: the fallback, and the C decoder's reference.

    The function is generated per relation, one unrolled block per column, so a change costs
    no intermediate tuple and no per-value dispatch.  Only indices go into the generated
    source; column names and parsers are bound as constants.
    """
    constants: dict[str, Any] = {'_unpack': struct.Struct('!I').unpack_from}
    lines = ['def decode(buf, o):', ' try:',
             f'  if (buf[o] << 8 | buf[o + 1]) != {len(columns)}:', '   return None',
             '  o += 2', '  row = {}']
    for i, column in enumerate(columns):
        constants[f'_n{i}'] = column.name
        parse = _raw_parser(column)
        if parse is None:
            value = 'buf[o:e].decode()'
        elif column.kind in _INT_KINDS:
            value = 'int(buf[o:e])'  # int() reads ASCII digits from bytes as from str
        else:
            constants[f'_p{i}'] = parse
            value = f'_p{i}(buf[o:e].decode())'
        lines += [
            '  k = buf[o]',
            '  if k == 116:',  # 't': text
            '   e = o + 5 + _unpack(buf, o + 1)[0]',
            '   o += 5',
            f'   row[_n{i}] = {value}',
            '   o = e',
            '  elif k == 110:',  # 'n': null
            f'   row[_n{i}] = None',
            '   o += 1',
            '  else:',
            '   return None',
        ]
    lines += ['  if o > len(buf):', '   return None', '  return row, o',
              ' except Exception:',  # the general path reports it properly
              '  return None']
    namespace = dict(constants)
    exec(compile('\n'.join(lines), f'<wire_row_decoder {len(columns)} columns>', 'exec'),
         namespace)
    decode: _WireDecoder = namespace['decode']
    return decode


def wire_row_renderer(table: TableSchema) -> _WireRenderer | None:
    """A faster path than :func:`wire_row_decoder` for a JSON sink: from a pgoutput TupleData
    of ``table``, still in its frame, straight to the JSON of its row.

    ``render(frame, offset)`` -> ``(json, end offset)``, ``json`` being exactly
    :func:`~transforms.envelope.debezium_row_json` of the row ``wire_row_decoder`` reads there,
    or None whenever that decoder would return None and whenever a value is not in the one
    text form whose JSON the renderer is sure of (a timestamptz in another zone or
    ``infinity``, an integer with a leading zero, a numeric ``Decimal`` would print with an
    exponent, ...): the caller then decodes and encodes the row.

    None (no renderer) when the C module was not built or a column is of another type than
    those whose text is their JSON string (text, varchar, uuid, json, enum ...), integers,
    boolean, timestamptz and numeric.  ``frame`` must be bytes.
    """
    render: _WireRenderer | None = _planned(table, _NATIVE_RENDER_TUPLE)
    return render


def wire_doc_renderer(table: TableSchema) -> _DocRenderer | None:
    """:func:`wire_row_renderer` writing a whole document around the row's JSON:
    ``render(frame, offset, parts, values)`` -> ``parts[0] + json + parts[1] + values[0] + ...
    + parts[-1]`` (an int value in decimal, bytes as they are), or None where the row
    renderer would give None or where anything follows the tuple in ``frame``.  None (no
    renderer) as for :func:`wire_row_renderer`."""
    render: _DocRenderer | None = _planned(table, _NATIVE_RENDER_DOC)
    return render


def _planned(table: TableSchema, native: Callable[..., Any] | None) -> Any:
    """``native`` with ``table``'s render plan bound, or None."""
    plan = _render_plan(table) if native is not None else None
    if native is None or plan is None:
        return None
    return functools.partial(native, *plan)


def _render_plan(table: TableSchema) -> tuple[tuple[bytes, ...], bytes] | None:
    """The C renderers' plan for ``table``: each column's JSON key and render mode."""
    names = [column.name for column in table.columns]
    if len(set(names)) != len(names):  # the row dict would keep one value of a name
        return None
    # The modes write the JSON forms of envelope's rules for these kinds as they stand: a kind
    # that comes to take a converter there is no longer rendered here.
    converted = {name for name, _ in table.orjson_converters}
    modes: list[bytes] = []
    for column in table.columns:
        parse = _raw_parser(column)
        if column.name in converted:
            return None
        if parse is None:
            modes.append(_MODE_TEXT)
        elif column.kind in _INT_KINDS:
            modes.append(_MODE_INT)
        elif parse is _parse_bool:
            modes.append(_MODE_BOOL)
        elif parse is _parse_timestamptz:
            modes.append(_MODE_TIMESTAMPTZ)
        elif parse is Decimal:
            modes.append(_MODE_DECIMAL)
        else:
            return None
    try:
        # orjson's own escaping of the names, as debezium_row_json writes them.
        keys = tuple(orjson.dumps(name) + b':' for name in names)
    except orjson.JSONEncodeError:  # a name orjson refuses: so would debezium_row_json
        return None
    return keys, b''.join(modes)
