"""Value formats of binlog columns: packed decimals, temporals, text, bits, geometry.

The packers below are written from the MySQL format description (strings/decimal.cc,
my_time.cc), independently of the decoder, so a round trip checks the decoder against the
format; the fixed vectors come from MariaDB 10.11 and from MySQL's own format comments.
"""
from __future__ import annotations

import datetime as dt
import decimal
import re
import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.envelope import Kind
from transforms.sources.mysql import types as t
from transforms.sources.mysql.rows import compile_rows

_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def pack_decimal(value: Decimal, precision: int, scale: int) -> bytes:
    """MySQL decimal2bin: digits in groups of nine, big-endian, sign in the top bit."""
    negative = value < 0
    with decimal.localcontext() as ctx:
        ctx.prec = 100  # formatting rounds to the context's precision
        digits = f'{abs(value):.{scale}f}'
    int_digits, _, frac_digits = digits.partition('.')
    intg = precision - scale
    int_digits = int_digits.lstrip('0').rjust(intg, '0')
    assert len(int_digits) == intg, (value, precision, scale)
    out = b''
    lead = intg % 9
    if lead:
        out += int(int_digits[:lead]).to_bytes(_DIG2BYTES[lead], 'big')
    for i in range(lead, intg, 9):
        out += int(int_digits[i:i + 9]).to_bytes(4, 'big')
    full = scale // 9 * 9
    for i in range(0, full, 9):
        out += int(frac_digits[i:i + 9]).to_bytes(4, 'big')
    if scale % 9:
        out += int(frac_digits[full:]).to_bytes(_DIG2BYTES[scale % 9], 'big')
    if negative:
        out = bytes(b ^ 0xff for b in out)
    return bytes([out[0] ^ 0x80]) + out[1:]


_FRAC_BYTES = (0, 1, 1, 2, 2, 3, 3)
_FRAC_UNIT = (1, 10000, 10000, 100, 100, 1, 1)


def pack_datetime2(value: dt.datetime, fsp: int) -> bytes:
    ymd = ((value.year * 13 + value.month) << 5) | value.day
    hms = (value.hour << 12) | (value.minute << 6) | value.second
    out = (((ymd << 17) | hms) + 0x8000000000).to_bytes(5, 'big')
    if fsp:
        out += (value.microsecond // _FRAC_UNIT[fsp]).to_bytes(_FRAC_BYTES[fsp], 'big')
    return out


def pack_time2(negative: bool, hours: int, minutes: int, seconds: int, us: int,
               fsp: int) -> bytes:
    bits = 8 * _FRAC_BYTES[fsp]
    units = (((hours << 12) | (minutes << 6) | seconds) << bits) | (us // _FRAC_UNIT[fsp])
    return ((-units if negative else units) + (0x800000 << bits)).to_bytes(3 + bits // 8, 'big')


def pack_timestamp2(value: dt.datetime, fsp: int) -> bytes:
    out = int(value.timestamp()).to_bytes(4, 'big')
    if fsp:
        out += (value.microsecond // _FRAC_UNIT[fsp]).to_bytes(_FRAC_BYTES[fsp], 'big')
    return out


def _truncate_us(us: int, fsp: int) -> int:
    unit = 10 ** (6 - fsp)
    return us // unit * unit


# ---------------------------------------------------------------------------------------------
# DECIMAL

@st.composite
def decimals(draw: st.DrawFn) -> tuple[Decimal, int, int]:
    precision = draw(st.integers(1, 65))
    scale = draw(st.integers(0, min(30, precision)))
    unscaled = draw(st.integers(-(10 ** precision - 1), 10 ** precision - 1))
    return Decimal(f'{unscaled}e-{scale}'), precision, scale  # exact, unlike scaleb


@given(decimals())
def test_decimal_round_trips_exactly_with_its_scale(case: tuple[Decimal, int, int]) -> None:
    value, precision, scale = case
    size, read = t.decimal_reader(precision, scale)
    packed = pack_decimal(value, precision, scale)
    assert len(packed) == size
    decoded = read(b'\xaa' + packed + b'\xbb', 1)
    assert decoded == value
    assert decoded.as_tuple().exponent == -scale  # 1.50 stays 1.50, as SELECT shows it


def test_decimal_vectors_from_mysql_and_mariadb() -> None:
    # MySQL's decimal.cc example: 1234567890.1234 as DECIMAL(14,4).
    assert pack_decimal(Decimal('1234567890.1234'), 14, 4).hex() == '810dfb38d204d2'
    read = t.decimal_reader(14, 4)[1]
    assert read(bytes.fromhex('810dfb38d204d2'), 0) == Decimal('1234567890.1234')
    assert read(bytes.fromhex('7ef204c72dfb2d'), 0) == Decimal('-1234567890.1234')
    # DECIMAL(10,4) -3.1416: 3 bytes for 6 integer digits, 2 for 4 fraction digits
    assert pack_decimal(Decimal('-3.1416'), 10, 4).hex() == '7ffffcfa77'
    assert t.decimal_reader(10, 4)[1](bytes.fromhex('7ffffcfa77'), 0) == Decimal('-3.1416')


def test_decimal_of_65_digits_keeps_every_digit() -> None:
    value = Decimal('-12345678901234567890123456789012345.123456789012345678901234567891')
    read = t.decimal_reader(65, 30)[1]
    assert read(pack_decimal(value, 65, 30), 0) == value


# ---------------------------------------------------------------------------------------------
# Temporals

@given(st.datetimes(min_value=dt.datetime(1000, 1, 1)), st.integers(0, 6))
def test_datetime2_round_trips(value: dt.datetime, fsp: int) -> None:
    value = value.replace(microsecond=_truncate_us(value.microsecond, fsp))
    size, read = t.datetime2_reader(fsp)
    packed = pack_datetime2(value, fsp)
    assert len(packed) == size
    assert read(packed, 0) == value


def test_zero_and_partial_dates_stay_text() -> None:
    zero = bytes.fromhex('8000000000') + b'\0\0\0'
    assert t.datetime2_reader(6)[1](zero, 0) == '0000-00-00 00:00:00.000000'
    assert t.datetime2_reader(0)[1](zero, 0) == '0000-00-00 00:00:00'
    assert t.date_from_int(0) == '0000-00-00'
    assert t.date_from_int(2020 << 9) == '2020-00-00'
    assert t.date_from_int((2024 << 9) | (2 << 5) | 29) == dt.date(2024, 2, 29)


@given(st.booleans(), st.integers(0, 838), st.integers(0, 59), st.integers(0, 59),
       st.integers(0, 999999), st.integers(0, 6))
def test_time2_round_trips(negative: bool, hours: int, minutes: int, seconds: int, us: int,
                           fsp: int) -> None:
    us = _truncate_us(us, fsp)
    size, read = t.time2_reader(fsp)
    packed = pack_time2(negative, hours, minutes, seconds, us, fsp)
    assert len(packed) == size
    value = read(packed, 0)
    is_zero = not (hours or minutes or seconds or us)
    if (negative and not is_zero) or hours >= 24:
        sign = '-' if negative and not is_zero else ''
        frac = f'.{us:06d}'[:fsp + 1] if fsp else ''
        assert value == f'{sign}{hours:02d}:{minutes:02d}:{seconds:02d}{frac}'
    else:
        assert value == dt.time(hours, minutes, seconds, us)


def test_time2_negative_fractions_match_mysqls_table() -> None:
    # my_time.cc documents how negative times with 2-digit fractions are stored.
    read = t.time2_reader(2)[1]
    assert read(bytes.fromhex('7fffffff'), 0) == '-00:00:00.01'
    assert read(bytes.fromhex('7fffff9d'), 0) == '-00:00:00.99'
    assert read(bytes.fromhex('7fffff00'), 0) == '-00:00:01.00'
    assert read(bytes.fromhex('7ffffeff'), 0) == '-00:00:01.01'
    assert read(bytes.fromhex('7ffffef6'), 0) == '-00:00:01.10'
    assert read(bytes.fromhex('80000000'), 0) == dt.time(0)


@given(st.datetimes(min_value=dt.datetime(1970, 1, 1, 0, 0, 1),
                    max_value=dt.datetime(2038, 1, 19, 3, 14, 7)), st.integers(0, 6))
def test_timestamp2_round_trips_as_utc(value: dt.datetime, fsp: int) -> None:
    value = value.replace(microsecond=_truncate_us(value.microsecond, fsp),
                          tzinfo=dt.timezone.utc)
    read = t.timestamp2_reader(fsp)[1]
    assert read(pack_timestamp2(value, fsp), 0) == value


def test_zero_timestamp_is_text() -> None:
    assert t.timestamp2_reader(3)[1](bytes(6), 0) == '0000-00-00 00:00:00.000'


def test_old_temporal_formats() -> None:
    assert t.old_time((-123456).to_bytes(3, 'little', signed=True), 0) == '-12:34:56'
    assert t.old_time((8385959).to_bytes(3, 'little', signed=True), 0) == '838:59:59'
    assert t.old_time((123456).to_bytes(3, 'little'), 0) == dt.time(12, 34, 56)
    assert t.old_datetime((20240102030405).to_bytes(8, 'little'), 0) == \
        dt.datetime(2024, 1, 2, 3, 4, 5)
    assert t.old_datetime(bytes(8), 0) == '0000-00-00 00:00:00'
    assert t.old_timestamp(struct.pack('<I', 86400), 0) == \
        dt.datetime(1970, 1, 2, tzinfo=dt.timezone.utc)
    assert t.old_timestamp(bytes(4), 0) == '0000-00-00 00:00:00'


# ---------------------------------------------------------------------------------------------
# Floats, text, sets, bits, geometry

@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_keeps_the_same_32_bits_in_its_shortest_form(value: float) -> None:
    raw = struct.pack('<f', value)
    decoded = t.float32(raw, 0)
    assert struct.pack('<f', decoded) == raw
    assert len(repr(decoded)) <= len(repr(struct.unpack('<f', raw)[0]))


def test_float32_shows_what_select_shows() -> None:
    assert t.float32(struct.pack('<f', 0.1), 0) == 0.1
    assert t.float32(struct.pack('<f', 3.4028234663852886e38), 0) == 3.4028235e38


def test_mysql_latin1_decodes_every_byte() -> None:
    decode = t.text_decoder(8)  # latin1_swedish_ci
    assert decode is not None
    assert decode(bytes(range(256)))[0x80] == '€'
    assert decode(b'\x81\x8d\x8f\x90\x9d') == '\x81\x8d\x8f\x90\x9d'
    assert decode('Zoë'.encode('latin-1')) == 'Zoë'


def test_charsets_by_collation() -> None:
    assert t.text_decoder(63) is None  # binary: values stay bytes
    assert t.text_decoder(45)(b'\xf0\x9f\x8e\x89') == '🎉'  # type: ignore[misc]
    assert t.text_decoder(255)('é'.encode()) == 'é'  # type: ignore[misc]  # MySQL 8 0900
    assert t.text_decoder(35)('é'.encode('utf-16-be')) == 'é'  # type: ignore[misc]  # ucs2
    with pytest.raises(t.UnsupportedColumnError, match='collation id 9999'):
        t.text_decoder(9999)
    with pytest.raises(t.UnsupportedColumnError, match='armscii8'):
        t.text_decoder(32)


def test_set_members_in_definition_order() -> None:
    read = t.set_reader(('a', 'b', 'c'))
    assert read(0b101) == 'a,c'
    assert read(0) == ''
    assert read(0b111) == 'a,b,c'


def test_geometry_wkb_and_ewkb() -> None:
    wkb = struct.pack('<BIdd', 1, 1, 1.0, 2.0)
    assert t.geometry_value(b'\0\0\0\0' + wkb) == wkb
    ewkb = t.geometry_value(struct.pack('<I', 4326) + wkb)
    assert ewkb == struct.pack('<BIIdd', 1, 0x20000001, 4326, 1.0, 2.0)
    big = struct.pack('>BIdd', 0, 1, 1.0, 2.0)
    assert t.geometry_value(struct.pack('<I', 3857) + big) == \
        struct.pack('>BIIdd', 0, 0x20000001, 3857, 1.0, 2.0)


# ---------------------------------------------------------------------------------------------
# Metadata and the column -> envelope mapping

def test_char_longer_than_255_bytes_hides_its_length_in_the_type_byte() -> None:
    # CHAR(255) utf8mb4 = 1020 bytes: real type 0xfe ^ ((1020 & 0x300) >> 4), low byte 0xfc.
    assert t.parse_column_meta(t.STRING, bytes([0xfe ^ 0x30, 0xfc])) == \
        {'type': t.STRING, 'length': 1020}
    assert t.parse_column_meta(t.STRING, bytes([0xfe, 40])) == {'type': t.STRING, 'length': 40}
    assert t.parse_column_meta(t.STRING, bytes([t.ENUM, 1])) == {'type': t.ENUM, 'length': 1}
    assert t.parse_column_meta(t.BIT, bytes([1, 1])) == {'length': 9}
    assert t.parse_column_meta(t.NEWDECIMAL, bytes([10, 4])) == {'precision': 10, 'scale': 4}


def test_year_has_a_signedness_bit_on_mariadb_only() -> None:
    # MariaDB 10.11 gives YEAR (a Field_tiny) a SIGNEDNESS bit; MySQL 8 does not.
    assert t.is_numeric(t.YEAR, mariadb=True)
    assert not t.is_numeric(t.YEAR, mariadb=False)
    assert t.is_numeric(t.LONG, mariadb=False) and not t.is_numeric(t.DATE, mariadb=True)


@pytest.mark.parametrize(('info', 'kind', 'source_type'), [
    (t.ColumnInfo(0, 'a', t.TINY), Kind.INT16, 'tinyint'),
    (t.ColumnInfo(0, 'a', t.SHORT, unsigned=True), Kind.INT32, 'smallint unsigned'),
    (t.ColumnInfo(0, 'a', t.LONG, unsigned=True), Kind.INT64, 'int unsigned'),
    (t.ColumnInfo(0, 'a', t.LONGLONG, unsigned=True), Kind.DECIMAL, 'bigint unsigned'),
    (t.ColumnInfo(0, 'a', t.NEWDECIMAL, precision=10, scale=2), Kind.DECIMAL, 'decimal(10,2)'),
    (t.ColumnInfo(0, 'a', t.DATETIME2, fsp=3), Kind.TIMESTAMP, 'datetime(3)'),
    (t.ColumnInfo(0, 'a', t.TIMESTAMP2), Kind.TIMESTAMPTZ, 'timestamp'),
    (t.ColumnInfo(0, 'a', t.VARCHAR, length=80, collation=45), Kind.STRING, 'varchar(20)'),
    (t.ColumnInfo(0, 'a', t.STRING, length=3, collation=63), Kind.BYTES, 'binary(3)'),
    (t.ColumnInfo(0, 'a', t.BLOB, length=4, collation=46), Kind.STRING, 'longtext'),
    (t.ColumnInfo(0, 'a', t.BLOB, length=2, collation=63), Kind.BYTES, 'blob'),
    (t.ColumnInfo(0, 'a', t.ENUM, symbols=('x', "it's")), Kind.ENUM, "enum('x','it''s')"),
    (t.ColumnInfo(0, 'a', t.BIT, length=1), Kind.BOOLEAN, 'bit(1)'),
    (t.ColumnInfo(0, 'a', t.JSON), Kind.JSON, 'json'),
    (t.ColumnInfo(0, 'a', t.GEOMETRY, geometry_type=1), Kind.BYTES, 'point'),
])
def test_column_kinds(info: t.ColumnInfo, kind: Kind, source_type: str) -> None:
    column = t.to_column(info)
    assert (column.kind, column.source_type) == (kind, source_type)


def test_decimal_column_carries_precision_and_scale() -> None:
    column = t.to_column(t.ColumnInfo(0, 'p', t.NEWDECIMAL, precision=12, scale=3))
    assert (column.precision, column.scale) == (12, 3)


def test_compressed_columns_are_refused_with_the_fix() -> None:
    with pytest.raises(t.UnsupportedColumnError, match='COMPRESSED'):
        t.to_column(t.ColumnInfo(0, 'c', t.BLOB_COMPRESSED, length=2, collation=45))


# ---------------------------------------------------------------------------------------------
# The compiled row decoder on hand-built images

def test_compiled_rows_read_fixed_runs_with_and_without_nulls() -> None:
    columns = (
        t.ColumnInfo(0, 'id', t.LONG, nullable=False),
        t.ColumnInfo(1, 'small', t.INT24),
        t.ColumnInfo(2, 'u24', t.INT24, unsigned=True),
        t.ColumnInfo(3, 'big', t.LONGLONG, unsigned=True),
        t.ColumnInfo(4, 'y', t.YEAR),
        t.ColumnInfo(5, 'name', t.VARCHAR, length=400, collation=45),
    )
    decode = compile_rows(columns, range(6))
    row1 = (b'\x00' + struct.pack('<i', 7) + (-2).to_bytes(3, 'little', signed=True)
            + (0xabcdef).to_bytes(3, 'little') + struct.pack('<Q', 2 ** 64 - 1) + b'\x7c'
            + struct.pack('<H', 3) + 'hé'.encode())
    row2 = bytes([0b011110]) + struct.pack('<i', 8) + struct.pack('<H', 0)
    rows = decode(row1 + row2, 0, len(row1) + len(row2))
    assert rows == [
        {'id': 7, 'small': -2, 'u24': 0xabcdef, 'big': Decimal(2 ** 64 - 1), 'y': 2024,
         'name': 'hé'},
        {'id': 8, 'small': None, 'u24': None, 'big': None, 'y': None, 'name': ''},
    ]


def test_compiled_rows_only_hold_the_columns_present() -> None:
    columns = (t.ColumnInfo(0, 'id', t.LONG, nullable=False),
               t.ColumnInfo(1, 'v', t.VARCHAR, length=10, collation=45))
    decode = compile_rows(columns, (0,), (0, 1))
    image = struct.pack('<Bi', 0, 5) + struct.pack('<Bi', 0, 5) + b'\x02ok'
    assert decode(image, 0, len(image)) == [({'id': 5}, {'id': 5, 'v': 'ok'})]


def test_a_short_row_image_is_an_error() -> None:
    decode = compile_rows((t.ColumnInfo(0, 'id', t.LONG, nullable=False),), (0,))
    with pytest.raises(ValueError, match='row image ends at 5, event data at 4'):
        decode(b'\x00\x01\x02\x03\x04', 0, 4)


@given(decimals())
def test_compiled_rows_decode_decimals_exactly(case: tuple[Decimal, int, int]) -> None:
    value, precision, scale = case
    decode = compile_rows((t.ColumnInfo(0, 'd', t.NEWDECIMAL, precision=precision,
                                        scale=scale, nullable=False),), (0,))
    image = b'\x00' + pack_decimal(value, precision, scale)
    (row,) = decode(image, 0, len(image))
    assert row['d'] == value and row['d'].as_tuple().exponent == -scale
    with decimal.localcontext() as ctx:
        ctx.prec = 3  # a narrow thread context must not round what the binlog holds
        (row,) = decode(image, 0, len(image))
    assert row['d'] == value and row['d'].as_tuple().exponent == -scale


# ---------------------------------------------------------------------------------------------
# Column defaults: information_schema.COLUMNS.COLUMN_DEFAULT as MariaDB 10.11 prints it

_LATIN = 8  # latin1_swedish_ci: any character collation will do


@pytest.mark.parametrize(('info', 'data_type', 'default', 'text'), [
    (t.ColumnInfo(0, 'c', t.LONG, nullable=False), 'int', '7', '7'),
    (t.ColumnInfo(0, 'c', t.LONG), 'int', 'NULL', None),
    (t.ColumnInfo(0, 'c', t.LONG, nullable=False), 'int', None, '0'),  # NOT NULL, no DEFAULT
    (t.ColumnInfo(0, 'c', t.NEWDECIMAL, precision=10, scale=2), 'decimal', '1.50', '1.50'),
    (t.ColumnInfo(0, 'c', t.LONGLONG, unsigned=True), 'bigint', '18446744073709551615',
     '18446744073709551615'),
    (t.ColumnInfo(0, 'c', t.FLOAT, length=4), 'float', '1.1', '1.1'),
    (t.ColumnInfo(0, 'c', t.VARCHAR, length=20, collation=_LATIN), 'varchar',
     "'a''b\\\\c\\0\\n'", "a'b\\c\0\n"),
    (t.ColumnInfo(0, 'c', t.VARCHAR, length=20, collation=_LATIN), 'varchar', "'NULL'", 'NULL'),
    (t.ColumnInfo(0, 'c', t.VARCHAR, length=5, collation=_LATIN, nullable=False), 'varchar',
     None, ''),
    (t.ColumnInfo(0, 'c', t.DATE), 'date', "'2024-03-01'", '2024-03-01'),
    (t.ColumnInfo(0, 'c', t.DATETIME2, fsp=3), 'datetime', "'2024-03-01 10:00:00.500'",
     '2024-03-01 10:00:00.500000'),
    (t.ColumnInfo(0, 'c', t.TIMESTAMP2), 'timestamp', "'2024-03-01 05:00:00'",
     '2024-03-01 05:00:00+00:00'),
    (t.ColumnInfo(0, 'c', t.BIT, length=1), 'bit', "b'1'", 't'),
    (t.ColumnInfo(0, 'c', t.BIT, length=10), 'bit', "b'101'", '\\x0005'),
    (t.ColumnInfo(0, 'c', t.STRING, length=4, collation=t.BINARY_COLLATION), 'binary',
     "'ab\\0\\0'", '\\x61620000'),
    (t.ColumnInfo(0, 'c', t.ENUM, symbols=('x', 'y'), nullable=False), 'enum', None, 'x'),
])
def test_a_constant_default_becomes_its_postgres_text_form(
        info: t.ColumnInfo, data_type: str, default: str | None, text: str | None) -> None:
    from transforms.sources.mysql.defaults import default_text

    assert default_text(info, data_type, default, '', mariadb=True) == text


@pytest.mark.parametrize(('info', 'data_type', 'default', 'extra', 'reason'), [
    (t.ColumnInfo(0, 'c', t.DATETIME2), 'datetime', 'current_timestamp()', '',
     'current_timestamp() is an expression'),
    (t.ColumnInfo(0, 'c', t.LONG), 'int', '(1 + 1)', '', '(1 + 1) is an expression'),
    (t.ColumnInfo(0, 'c', t.LONG), 'int', None, 'VIRTUAL GENERATED', 'its own value'),
    (t.ColumnInfo(0, 'c', t.TIME2), 'time', "'-01:00:00'", '', 'a time outside a day'),
    (t.ColumnInfo(0, 'c', t.DATE, nullable=False), 'date', None, '', 'the zero date'),
    (t.ColumnInfo(0, 'c', t.VARCHAR, length=4, collation=t.BINARY_COLLATION), 'varbinary',
     "'\\0?'", '', 'shows as "?"'),
    (t.ColumnInfo(0, 'c', t.STRING, length=16, collation=t.BINARY_COLLATION), 'uuid',
     "'123e4567-e89b-12d3-a456-426614174000'", '', 'a uuid the binlog holds in another form'),
    (t.ColumnInfo(0, 'c', t.DATETIME2), 'datetime', 'CURRENT_TIMESTAMP', 'DEFAULT_GENERATED',
     'is an expression'),  # MySQL 8
])
def test_a_default_that_is_no_constant_value_says_why(
        info: t.ColumnInfo, data_type: str, default: str | None, extra: str,
        reason: str) -> None:
    from transforms.sources.mysql.defaults import default_text

    with pytest.raises(ValueError, match=re.escape(reason)):
        default_text(info, data_type, default, extra, mariadb=extra != 'DEFAULT_GENERATED')
