"""MySQL/MariaDB binlog column types: what a TABLE_MAP says about a column, and its values.

A TABLE_MAP event describes each column by a type code, a few bytes of per-type metadata and,
with ``binlog_row_metadata=FULL``, optional metadata (names, signedness, collations, ENUM/SET
labels, geometry types, primary key).  :class:`ColumnInfo` holds all of it for one column;
:func:`to_column` maps it to the envelope's :class:`~transforms.envelope.Column` and
:class:`~transforms.envelope.Kind`::

    info = ColumnInfo(index=0, name='price', type=NEWDECIMAL, precision=10, scale=2)
    to_column(info)   # Column('price', Kind.DECIMAL, 'decimal(10,2)', precision=10, scale=2)

The value readers here (packed decimals, temporals, text by collation) are plain functions over
``bytes`` and an offset; ``rows.py`` compiles them into one decoder per table.

Type mapping (value in memory):

=====================================  ===========================================================
tinyint, smallint, mediumint, int      INT16/INT32/INT64 ``int`` (unsigned widens one size)
bigint                                 INT64 ``int``; ``bigint unsigned`` DECIMAL(20,0) ``Decimal``
                                       (it does not fit in an int64)
float / double                         FLOAT32 / FLOAT64 ``float`` (a float keeps its shortest
                                       decimal form that rounds to the same 32-bit value)
decimal(p,s)                           DECIMAL ``Decimal``, exact, with ``s`` fraction digits
date, datetime(n), time(n)             DATE ``date``, TIMESTAMP naive ``datetime``, TIME ``time``;
                                       the server's text form (``str``) for zero dates, a time
                                       below 0 or from 24 h on, or anything else Python lacks
timestamp(n)                           TIMESTAMPTZ ``datetime`` in UTC; zero stays ``str``
year                                   INT16 ``int`` (``0`` for the zero year)
char, varchar, text, enum, set         STRING (ENUM: ENUM with its labels) ``str``, decoded by
                                       the column's charset
binary, varbinary, blob                BYTES ``bytes`` (``binary(n)`` padded back to n bytes)
bit(1) / bit(n)                        BOOLEAN ``bool`` / BYTES ``bytes`` (big-endian, as SELECT)
json (MySQL's binary JSON)             JSON ``str``: the document's text as MySQL prints it.
                                       MariaDB's JSON is a LONGTEXT: STRING ``str``
geometry                               BYTES: the WKB; a non-zero SRID is kept in the EWKB form
                                       (PostGIS's: type | 0x20000000, then the SRID)
=====================================  ===========================================================
"""
from __future__ import annotations

import codecs
import datetime as dt
import decimal
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

from transforms.envelope import Column, Kind

__all__ = [
    'ColumnInfo',
    'UnsupportedColumnError',
    'charset_of',
    'column_meta_size',
    'decimal_reader',
    'is_character',
    'is_numeric',
    'parse_column_meta',
    'text_decoder',
    'to_column',
]


class UnsupportedColumnError(ValueError):
    """A column whose values this decoder cannot represent; the message says which and why."""


# Type codes as they appear in a TABLE_MAP (enum_field_types).
DECIMAL = 0  # pre-5.0 unpacked decimal; never written by a server that writes ROW events
TINY = 1
SHORT = 2
LONG = 3
FLOAT = 4
DOUBLE = 5
NULL = 6
TIMESTAMP = 7
LONGLONG = 8
INT24 = 9
DATE = 10
TIME = 11
DATETIME = 12
YEAR = 13
NEWDATE = 14
VARCHAR = 15
BIT = 16
TIMESTAMP2 = 17
DATETIME2 = 18
TIME2 = 19
VARCHAR_COMPRESSED = 140  # MariaDB column compression
BLOB_COMPRESSED = 141
JSON = 245
NEWDECIMAL = 246
ENUM = 247
SET = 248
TINY_BLOB = 249
MEDIUM_BLOB = 250
LONG_BLOB = 251
BLOB = 252
VAR_STRING = 253
STRING = 254
GEOMETRY = 255

_ONE_BYTE_META = frozenset({FLOAT, DOUBLE, BLOB, GEOMETRY, JSON, TIMESTAMP2, DATETIME2, TIME2,
                            BLOB_COMPRESSED, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB})
_TWO_BYTE_META = frozenset({VARCHAR, VAR_STRING, BIT, NEWDECIMAL, STRING, ENUM, SET,
                            VARCHAR_COMPRESSED})


def column_meta_size(type_code: int) -> int:
    """Bytes of per-column metadata a TABLE_MAP holds for a column of this type."""
    if type_code in _ONE_BYTE_META:
        return 1
    if type_code in _TWO_BYTE_META:
        return 2
    return 0


def is_numeric(type_code: int, mariadb: bool) -> bool:
    """Whether the SIGNEDNESS optional metadata has a bit for this column.

    MariaDB also gives YEAR columns a bit (a ``Field_tiny`` underneath; seen in 10.11's
    binlog), MySQL does not.  Counting a column the server skips, or skipping one it counts,
    hands every later numeric column its neighbour's signedness.
    """
    if type_code == YEAR:
        return mariadb
    return type_code in (TINY, SHORT, INT24, LONG, LONGLONG, FLOAT, DOUBLE, NEWDECIMAL, DECIMAL)


def is_character(type_code: int, mariadb: bool) -> bool:
    """Whether the (DEFAULT_|COLUMN_)CHARSET optional metadata covers this column.

    ``type_code`` is the *real* type (ENUM/SET, not STRING, for enum and set columns); BLOB
    columns count, binary ones carrying the ``binary`` collation (63).  MariaDB also counts
    GEOMETRY columns (a blob underneath; seen in 10.11's binlog), MySQL does not.
    """
    if type_code == GEOMETRY:
        return mariadb
    return type_code in (STRING, VAR_STRING, VARCHAR, BLOB, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB,
                         VARCHAR_COMPRESSED, BLOB_COMPRESSED)


class ColumnInfo(NamedTuple):
    """Everything the binlog says about one column of a table.

    ``type`` is the real type: ENUM or SET for those columns (the binlog sends them as STRING
    with the real type in the metadata).  ``length`` is, by type: the maximum byte length of a
    CHAR/VARCHAR, the byte width of the length prefix of a BLOB/TEXT/JSON/GEOMETRY, the byte
    width of an ENUM/SET value, the float's byte width, the number of bits of a BIT.
    ``fsp`` is the fractional-second precision of a temporal type.  ``collation`` is None for
    columns without a charset or when the table map carried none.  ``hidden``: a column the
    server keeps for itself (MariaDB's ``DB_ROW_HASH_<n>``), in row images but not in the table
    a SELECT or ``information_schema`` shows, so in no event or schema.
    """

    position: int
    name: str
    type: int
    length: int = 0
    precision: int = 0
    scale: int = 0
    fsp: int = 0
    unsigned: bool = False
    nullable: bool = True
    collation: int | None = None
    symbols: tuple[str, ...] = ()
    geometry_type: int | None = None
    hidden: bool = False


def parse_column_meta(type_code: int, meta: bytes) -> dict[str, int]:
    """Decodes one column's TABLE_MAP metadata bytes into :class:`ColumnInfo` fields."""
    if type_code in (FLOAT, DOUBLE, BLOB, GEOMETRY, JSON, BLOB_COMPRESSED, TINY_BLOB,
                     MEDIUM_BLOB, LONG_BLOB):
        return {'length': meta[0]}
    if type_code in (TIMESTAMP2, DATETIME2, TIME2):
        return {'fsp': meta[0]}
    if type_code in (VARCHAR, VAR_STRING, VARCHAR_COMPRESSED):
        return {'length': meta[0] | meta[1] << 8}
    if type_code == BIT:
        return {'length': meta[1] * 8 + meta[0]}
    if type_code == NEWDECIMAL:
        return {'precision': meta[0], 'scale': meta[1]}
    if type_code in (STRING, ENUM, SET):
        real, low = meta[0], meta[1]
        if real in (ENUM, SET):
            return {'type': real, 'length': low}
        # CHAR longer than 255 bytes: the two high bits of the length hide in the real type
        # byte, XOR-ed into its 0x30 bits (which are always set in a real STRING type code).
        if real & 0x30 != 0x30:
            return {'type': real | 0x30, 'length': ((real & 0x30) ^ 0x30) << 4 | low}
        return {'type': real, 'length': low}
    return {}


# ---------------------------------------------------------------------------------------------
# Charsets

# Collation id -> charset: MariaDB 10.11's information_schema.COLLATIONS, plus MySQL 8's own ids
# (76 utf8mb3_tolower_ci, 248-250 gb18030, 255-323 the utf8mb4 *_0900_* collations).
_COLLATIONS: dict[str, tuple[int | range, ...]] = {
    'armscii8': (32, 64, 1056, 1088),
    'ascii': (11, 65, 1035, 1089),
    'big5': (1, 84, 1025, 1108),
    'binary': (63,),
    'cp1250': (26, 34, 44, 66, 99, 1050, 1090),
    'cp1251': (14, 23, range(50, 53), range(1074, 1076)),
    'cp1256': (57, 67, 1081, 1091),
    'cp1257': (29, range(58, 60), range(1082, 1084)),
    'cp850': (4, 80, 1028, 1104),
    'cp852': (40, 81, 1064, 1105),
    'cp866': (36, 68, 1060, 1092),
    'cp932': (range(95, 97), range(1119, 1121)),
    'dec8': (3, 69, 1027, 1093),
    'eucjpms': (range(97, 99), range(1121, 1123)),
    'euckr': (19, 85, 1043, 1109),
    'gb18030': (range(248, 251),),
    'gb2312': (24, 86, 1048, 1110),
    'gbk': (28, 87, 1052, 1111),
    'geostd8': (range(92, 94), range(1116, 1118)),
    'greek': (25, 70, 1049, 1094),
    'hebrew': (16, 71, 1040, 1095),
    'hp8': (6, 72, 1030, 1096),
    'keybcs2': (37, 73, 1061, 1097),
    'koi8r': (7, 74, 1031, 1098),
    'koi8u': (22, 75, 1046, 1099),
    'latin1': (5, 8, 15, 31, range(47, 50), 94, 1032, 1071),
    'latin2': (2, 9, 21, 27, 77, 1033, 1101),
    'latin5': (30, 78, 1054, 1102),
    'latin7': (20, range(41, 43), 79, 1065, 1103),
    'macce': (38, 43, 1062, 1067),
    'macroman': (39, 53, 1063, 1077),
    'sjis': (13, 88, 1037, 1112),
    'swe7': (10, 82, 1034, 1106),
    'tis620': (18, 89, 1042, 1113),
    'ucs2': (35, 90, range(128, 152), 159, range(640, 643), 1059, 1114, 1152, 1174),
    'ujis': (12, 91, 1036, 1115),
    'utf16': (range(54, 56), range(101, 125), range(672, 675), range(1078, 1080), 1125, 1147),
    'utf16le': (56, 62, 1080, 1086),
    'utf32': (range(60, 62), range(160, 184), range(736, 739), range(1084, 1086), 1184, 1206),
    'utf8mb3': (33, 76, 83, range(192, 216), 223, range(576, 579), 1057, 1107, 1216, 1238),
    'utf8mb4': (range(45, 47), range(224, 248), range(255, 324), range(608, 611),
                range(1069, 1071), 1248, 1270),
}
_CHARSET_BY_ID: dict[int, str] = {
    i: name
    for name, ids in _COLLATIONS.items()
    for item in ids
    for i in (item if isinstance(item, range) else (item,))
}
BINARY_COLLATION = 63

# charset -> (Python codec, bytes per character at most).  Charsets without a codec here
# (armscii8, dec8, hp8, keybcs2, swe7, geostd8) cannot be decoded to text.
_CODECS: dict[str, tuple[str, int]] = {
    'ascii': ('ascii', 1), 'big5': ('big5', 2), 'binary': ('', 1), 'cp1250': ('cp1250', 1),
    'cp1251': ('cp1251', 1), 'cp1256': ('cp1256', 1), 'cp1257': ('cp1257', 1),
    'cp850': ('cp850', 1), 'cp852': ('cp852', 1), 'cp866': ('cp866', 1), 'cp932': ('cp932', 2),
    'eucjpms': ('euc_jis_2004', 3), 'euckr': ('euc_kr', 2), 'gb18030': ('gb18030', 4),
    'gb2312': ('gb2312', 2), 'gbk': ('gbk', 2), 'greek': ('iso8859_7', 1),
    'hebrew': ('iso8859_8', 1), 'koi8r': ('koi8_r', 1), 'koi8u': ('koi8_u', 1),
    'latin1': ('mysql_latin1', 1), 'latin2': ('iso8859_2', 1), 'latin5': ('iso8859_9', 1),
    'latin7': ('iso8859_13', 1), 'macce': ('mac_latin2', 1), 'macroman': ('mac_roman', 1),
    'sjis': ('shift_jis', 2), 'tis620': ('tis_620', 1), 'ucs2': ('utf_16_be', 2),
    'ujis': ('euc_jp', 3), 'utf16': ('utf_16_be', 4), 'utf16le': ('utf_16_le', 4),
    'utf32': ('utf_32_be', 4), 'utf8mb3': ('utf_8', 3), 'utf8mb4': ('utf_8', 4),
}

# MySQL's latin1 is cp1252 with the five bytes cp1252 leaves undefined mapped to the C1
# controls of the same code, so every byte decodes (as the server itself converts them).
_LATIN1_TABLE = ''.join(
    bytes([i]).decode('cp1252', errors='ignore') or chr(i) for i in range(256))


def _latin1_decode(data: bytes) -> str:
    return codecs.charmap_decode(data, 'strict', _LATIN1_TABLE)[0]


def charset_of(collation: int) -> str:
    """The charset name of a collation id; raises UnsupportedColumnError for an unknown id."""
    try:
        return _CHARSET_BY_ID[collation]
    except KeyError:
        raise UnsupportedColumnError(f'unknown collation id {collation}') from None


def max_char_bytes(collation: int | None) -> int:
    if collation is None:
        return 1
    return _CODECS.get(charset_of(collation), ('', 1))[1]


def text_decoder(collation: int | None) -> Callable[[bytes], str] | None:
    """A bytes -> str function for a collation; None for ``binary`` (values stay bytes).

    Without a collation (binlog_row_metadata=MINIMAL) text is assumed to be UTF-8.
    """
    if collation is None:
        return _utf8
    name = charset_of(collation)
    if name == 'binary':
        return None
    codec = _CODECS.get(name)
    if codec is None:
        raise UnsupportedColumnError(f'charset {name} (collation {collation}) has no Python codec')
    if codec[0] == 'mysql_latin1':
        return _latin1_decode
    if codec[0] == 'utf_8':
        return _utf8
    return _decoder_for(codec[0])


def _utf8(data: bytes) -> str:
    return data.decode('utf-8')


def _decoder_for(encoding: str) -> Callable[[bytes], str]:
    def decode(data: bytes) -> str:
        return data.decode(encoding)
    return decode


# ---------------------------------------------------------------------------------------------
# Packed binary DECIMAL

_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_EXACT = decimal.Context(prec=200)


def decimal_size(precision: int, scale: int) -> int:
    intg = precision - scale
    return (intg // 9 * 4 + _DIG2BYTES[intg % 9] + scale // 9 * 4 + _DIG2BYTES[scale % 9])


def decimal_groups(precision: int, scale: int) -> list[tuple[int, int]]:
    """(bytes, digits) of each digit group of a packed DECIMAL, most significant first."""
    intg = precision - scale
    groups = [(_DIG2BYTES[intg % 9], intg % 9)] if intg % 9 else []
    groups += [(4, 9)] * (intg // 9 + scale // 9)
    if scale % 9:
        groups.append((_DIG2BYTES[scale % 9], scale % 9))
    return groups


def decimal_expression(precision: int, scale: int) -> tuple[int, str]:
    """(byte size, Python expression over ``x``) for a packed DECIMAL(precision, scale).

    ``x`` is the big-endian integer of the value's bytes with the sign bit cleared (and, for a
    negative number, every bit inverted back); the expression combines its groups of nine
    decimal digits into the unscaled integer.  The packed form: integer digits, then fraction
    digits, in groups of nine stored as 4-byte big-endian integers; a shorter leading integer
    group and trailing fraction group take ``_DIG2BYTES[digits]`` bytes; the top bit of the
    first byte is set for a non-negative number, and a negative number has every bit inverted.
    """
    intg = precision - scale
    # (bits, 10**digits) for each group, least significant group first.
    groups: list[tuple[int, int]] = []
    if scale % 9:
        groups.append((_DIG2BYTES[scale % 9] * 8, 10 ** (scale % 9)))
    groups += [(32, 10 ** 9)] * (scale // 9 + intg // 9)
    if intg % 9:
        groups.append((_DIG2BYTES[intg % 9] * 8, 10 ** (intg % 9)))
    terms, shift, weight = [], 0, 1
    for i, (bits, base) in enumerate(groups):
        group = f'(x >> {shift})' if shift else 'x'
        if i < len(groups) - 1:
            group = f'({group} & {(1 << bits) - 1})'
        terms.append(group if weight == 1 else f'{group} * {weight}')
        shift += bits
        weight *= base
    return decimal_size(precision, scale), ' + '.join(terms) or '0'


def decimal_reader(precision: int, scale: int) -> tuple[int, Callable[[bytes, int], Decimal]]:
    """(byte size, reader) for a DECIMAL(precision, scale) in MySQL's packed binary form
    (see :func:`decimal_expression`); the Decimal keeps ``scale`` fraction digits."""
    size, expression = decimal_expression(precision, scale)
    sign = 1 << (size * 8 - 1)
    source = (
        'def read(b, p):\n'
        f'    x = int.from_bytes(b[p:p + {size}], "big")\n'
        f'    if x & {sign}:\n'
        f'        x ^= {sign}; s = 1\n'
        '    else:\n'
        f'        x ^= {(1 << size * 8) - 1 ^ sign}; s = -1\n'
        f'    return _Decimal(s * ({expression})).scaleb({-scale}, _EXACT)\n')
    namespace: dict[str, Any] = {'_Decimal': Decimal, '_EXACT': _EXACT}
    exec(compile(source, f'<decimal({precision},{scale}) reader>', 'exec'), namespace)
    return size, namespace['read']


# ---------------------------------------------------------------------------------------------
# Temporals.  The *2 types (MySQL 5.6 format, MariaDB's default) are big-endian with an
# offset instead of a sign; the old ones are little-endian decimal-coded integers.

_UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_FRAC_BYTES = (0, 1, 1, 2, 2, 3, 3)
_FRAC_UNIT = (0, 10000, 10000, 100, 100, 1, 1)  # microseconds per stored unit, by fsp


def _frac_text(us: int, fsp: int) -> str:
    return f'.{us:06d}'[:fsp + 1] if fsp else ''


def date_from_int(value: int) -> dt.date | str:
    """A DATE stored as a 3-byte integer: day in bits 0-4, month 5-8, year 9-23."""
    year, month, day = value >> 9, value >> 5 & 15, value & 31
    try:
        return dt.date(year, month, day)
    except ValueError:
        return f'{year:04d}-{month:02d}-{day:02d}'


def _datetime_or_text(year: int, month: int, day: int, hour: int, minute: int, second: int,
                      us: int, fsp: int) -> dt.datetime | str:
    try:
        return dt.datetime(year, month, day, hour, minute, second, us)
    except ValueError:
        return (f'{year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}'
                + _frac_text(us, fsp))


def _time_or_text(negative: bool, hour: int, minute: int, second: int, us: int,
                  fsp: int) -> dt.time | str:
    if not negative and hour < 24:
        return dt.time(hour, minute, second, us)
    sign = '-' if negative else ''
    return f'{sign}{hour:02d}:{minute:02d}:{second:02d}' + _frac_text(us, fsp)


def datetime2_reader(fsp: int) -> tuple[int, Callable[[bytes, int], dt.datetime | str]]:
    """DATETIME(fsp): 5 bytes, 1 sign bit (set), year*13+month 17 bits, day 5, hour 5,
    minute 6, second 6; then the fraction in ``(fsp + 1) // 2`` big-endian bytes."""
    frac_bytes, unit = _FRAC_BYTES[fsp], _FRAC_UNIT[fsp]
    size = 5 + frac_bytes

    def read(data: bytes, pos: int) -> dt.datetime | str:
        packed = int.from_bytes(data[pos:pos + 5], 'big') - 0x8000000000
        us = int.from_bytes(data[pos + 5:pos + size], 'big') * unit if frac_bytes else 0
        ymd, hms = packed >> 17, packed & 0x1ffff
        year_month = ymd >> 5
        return _datetime_or_text(year_month // 13, year_month % 13, ymd & 31, hms >> 12,
                                 hms >> 6 & 63, hms & 63, us, fsp)

    return size, read


def timestamp2_reader(fsp: int) -> tuple[int, Callable[[bytes, int], dt.datetime | str]]:
    """TIMESTAMP(fsp): big-endian seconds since the epoch (4 bytes), then the fraction.

    Seconds 0 is the zero timestamp ``0000-00-00 00:00:00`` (1970-01-01 00:00:00 UTC itself
    is outside TIMESTAMP's range).
    """
    frac_bytes, unit = _FRAC_BYTES[fsp], _FRAC_UNIT[fsp]
    size = 4 + frac_bytes
    zero = '0000-00-00 00:00:00' + _frac_text(0, fsp)

    def read(data: bytes, pos: int) -> dt.datetime | str:
        seconds = int.from_bytes(data[pos:pos + 4], 'big')
        us = int.from_bytes(data[pos + 4:pos + size], 'big') * unit if frac_bytes else 0
        if not seconds and not us:
            return zero
        return _EPOCH + dt.timedelta(seconds=seconds, microseconds=us)

    return size, read


def time2_reader(fsp: int) -> tuple[int, Callable[[bytes, int], dt.time | str]]:
    """TIME(fsp): 3 bytes + fraction, big-endian, offset by 0x800000 << (8 * fraction bytes).

    The offset value as a whole is signed: for a negative time the fraction bytes borrow from
    the integer part, so both are read as one number.  Integer part: hour 10 bits (bit 12 on),
    minute 6, second 6.
    """
    frac_bytes, unit = _FRAC_BYTES[fsp], _FRAC_UNIT[fsp]
    size = 3 + frac_bytes
    offset = 0x800000 << (8 * frac_bytes)
    frac_mask = (1 << 8 * frac_bytes) - 1
    frac_bits = 8 * frac_bytes

    def read(data: bytes, pos: int) -> dt.time | str:
        packed = int.from_bytes(data[pos:pos + size], 'big') - offset
        negative = packed < 0
        if negative:
            packed = -packed
        hms, us = packed >> frac_bits, (packed & frac_mask) * unit
        return _time_or_text(negative, hms >> 12 & 0x3ff, hms >> 6 & 63, hms & 63, us, fsp)

    return size, read


def old_time(data: bytes, pos: int) -> dt.time | str:
    """Pre-5.6 TIME: a signed 3-byte little-endian integer HHMMSS."""
    value = int.from_bytes(data[pos:pos + 3], 'little', signed=True)
    negative = value < 0
    value = abs(value)
    return _time_or_text(negative, value // 10000, value // 100 % 100, value % 100, 0, 0)


def old_datetime(data: bytes, pos: int) -> dt.datetime | str:
    """Pre-5.6 DATETIME: an 8-byte little-endian integer YYYYMMDDhhmmss."""
    value = int.from_bytes(data[pos:pos + 8], 'little')
    day_part, time_part = divmod(value, 1000000)
    return _datetime_or_text(day_part // 10000, day_part // 100 % 100, day_part % 100,
                             time_part // 10000, time_part // 100 % 100, time_part % 100, 0, 0)


def old_timestamp(data: bytes, pos: int) -> dt.datetime | str:
    """Pre-5.6 TIMESTAMP: 4-byte little-endian seconds since the epoch; 0 is the zero value."""
    seconds = int.from_bytes(data[pos:pos + 4], 'little')
    return _EPOCH + dt.timedelta(seconds=seconds) if seconds else '0000-00-00 00:00:00'


def year_from_byte(value: int) -> int:
    return 1900 + value if value else 0


# ---------------------------------------------------------------------------------------------
# Other values

_F32 = struct.Struct('<f')


def float32(data: bytes, pos: int) -> float:
    """A FLOAT as the shortest decimal that rounds back to the same 32 bits (as SELECT shows
    ``0.1``, not the double ``0.10000000149011612``), so it survives a float32 round trip."""
    raw = data[pos:pos + 4]
    value = _F32.unpack(raw)[0]
    for digits in (6, 7, 8):
        short = float(f'{value:.{digits}g}')
        if _F32.pack(short) == raw:
            return short
    return float(f'{value:.9g}')


def set_reader(symbols: tuple[str, ...]) -> Callable[[int], str]:
    """A SET bitmask -> its members comma-separated in definition order."""
    cache: dict[int, str] = {}

    def read(mask: int) -> str:
        text = cache.get(mask)
        if text is None:
            text = ','.join(s for i, s in enumerate(symbols) if mask >> i & 1)
            if len(cache) < 4096:
                cache[mask] = text
        return text

    return read


def geometry_value(data: bytes) -> bytes:
    """A GEOMETRY value (4-byte little-endian SRID, then WKB) -> WKB, or EWKB for SRID != 0."""
    srid = int.from_bytes(data[:4], 'little')
    wkb = data[4:]
    if not srid:
        return wkb
    order = '<' if wkb[0] == 1 else '>'
    geometry_type = struct.unpack_from(order + 'I', wkb, 1)[0]
    return wkb[:1] + struct.pack(order + 'II', geometry_type | 0x20000000, srid) + wkb[5:]


# ---------------------------------------------------------------------------------------------
# ColumnInfo -> envelope Column

_GEOMETRY_NAMES = ('geometry', 'point', 'linestring', 'polygon', 'multipoint',
                   'multilinestring', 'multipolygon', 'geometrycollection')
_BLOB_NAMES = {1: 'tiny', 2: '', 3: 'medium', 4: 'long'}
_INT_TYPES = {
    # type: (name, signed kind, unsigned kind)
    TINY: ('tinyint', Kind.INT16, Kind.INT16),
    SHORT: ('smallint', Kind.INT16, Kind.INT32),
    INT24: ('mediumint', Kind.INT32, Kind.INT32),
    LONG: ('int', Kind.INT32, Kind.INT64),
    LONGLONG: ('bigint', Kind.INT64, Kind.DECIMAL),
}


def _quote_list(symbols: tuple[str, ...]) -> str:
    return ','.join("'" + s.replace("'", "''") + "'" for s in symbols)


def _fsp_suffix(fsp: int) -> str:
    return f'({fsp})' if fsp else ''


def to_column(info: ColumnInfo) -> Column:
    """The envelope column for a binlog column; raises UnsupportedColumnError if none fits."""
    t = info.type
    name, nullable = info.name, info.nullable

    def col(kind: Kind, source_type: str, **extra: Any) -> Column:
        return Column(name, kind, source_type, nullable, **extra)

    if t in _INT_TYPES:
        type_name, signed_kind, unsigned_kind = _INT_TYPES[t]
        if info.unsigned:
            if t == LONGLONG:
                return col(Kind.DECIMAL, 'bigint unsigned', precision=20, scale=0)
            return col(unsigned_kind, type_name + ' unsigned')
        return col(signed_kind, type_name)
    if t == FLOAT:
        return col(Kind.FLOAT32, 'float' + (' unsigned' if info.unsigned else ''))
    if t == DOUBLE:
        return col(Kind.FLOAT64, 'double' + (' unsigned' if info.unsigned else ''))
    if t == NEWDECIMAL:
        unsigned = ' unsigned' if info.unsigned else ''
        return col(Kind.DECIMAL, f'decimal({info.precision},{info.scale}){unsigned}',
                   precision=info.precision, scale=info.scale)
    if t in (DATE, NEWDATE):
        return col(Kind.DATE, 'date')
    if t in (TIME, TIME2):
        return col(Kind.TIME, 'time' + _fsp_suffix(info.fsp))
    if t in (DATETIME, DATETIME2):
        return col(Kind.TIMESTAMP, 'datetime' + _fsp_suffix(info.fsp))
    if t in (TIMESTAMP, TIMESTAMP2):
        return col(Kind.TIMESTAMPTZ, 'timestamp' + _fsp_suffix(info.fsp))
    if t == YEAR:
        return col(Kind.INT16, 'year')
    if t == ENUM:
        return col(Kind.ENUM, f'enum({_quote_list(info.symbols)})', symbols=info.symbols)
    if t == SET:
        return col(Kind.STRING, f'set({_quote_list(info.symbols)})')
    if t == BIT:
        if info.length == 1:
            return col(Kind.BOOLEAN, 'bit(1)')
        return col(Kind.BYTES, f'bit({info.length})')
    if t == JSON:
        return col(Kind.JSON, 'json')
    if t == GEOMETRY:
        geometry = info.geometry_type or 0
        type_name = _GEOMETRY_NAMES[geometry] if geometry < len(_GEOMETRY_NAMES) else 'geometry'
        return col(Kind.BYTES, type_name)
    if t in (STRING, VARCHAR, VAR_STRING):
        binary = info.collation == BINARY_COLLATION
        chars = info.length // max_char_bytes(info.collation)
        fixed = t == STRING
        if binary:
            return col(Kind.BYTES, f'{"binary" if fixed else "varbinary"}({chars})')
        text_decoder(info.collation)  # raises for a charset without a codec
        return col(Kind.STRING, f'{"char" if fixed else "varchar"}({chars})')
    if t in (BLOB, TINY_BLOB, MEDIUM_BLOB, LONG_BLOB):
        size = _BLOB_NAMES.get(info.length, '')
        if info.collation == BINARY_COLLATION:
            return col(Kind.BYTES, size + 'blob')
        text_decoder(info.collation)
        return col(Kind.STRING, size + 'text')
    if t == NULL:
        return col(Kind.TEXT, 'null')
    if t in (VARCHAR_COMPRESSED, BLOB_COMPRESSED):
        raise UnsupportedColumnError(
            f'column {name!r} uses MariaDB column compression (COMPRESSED attribute), '
            'which changebeam cannot decode; ALTER the column without COMPRESSED')
    raise UnsupportedColumnError(f'column {name!r} has binlog type code {t}, not supported')
