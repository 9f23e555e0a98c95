"""The C TupleData decoder (``_pgwire``) against the generated Python one it replaces.

``wire_row_decoder(columns, native=False)`` is the reference.  The C decoder must give the same
row (same values, same types, the same ``timezone.utc`` object) or the same None, on tuples
PostgreSQL would send and on anything the network could hand it: the caller trusts None to
mean "take the general path" and trusts a row to be the row.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit import strategies as cst
from tests.unit.pgoutput_frames import RawText, tuple_data
from transforms.envelope import Column
from transforms.sources.postgres import pgtypes
from transforms.sources.postgres.pgoutput import UNCHANGED_TOAST, RelationColumn
from transforms.sources.postgres.pgtypes import column_for, wire_row_decoder

try:
    from transforms.sources.postgres import _pgwire
except ImportError:  # built without a compiler: only the Python decoder to test
    _pgwire = None  # type: ignore[assignment]

UTC = dt.timezone.utc

needs_native = pytest.mark.skipif(
    _pgwire is None, reason='transforms.sources.postgres._pgwire was not built (no C compiler?)')


def test_extension_is_built_on_ci() -> None:
    if not os.environ.get('CI'):
        pytest.skip('CI is not set: a checkout without a C compiler may run the Python path')
    from transforms.sources.postgres import _pgwire as built  # must not raise
    assert pgtypes._NATIVE_DECODE_TUPLE is built.decode_tuple  # and it is the one in use


# ---------------------------------------------------------------------------------------------
# Frames and columns

# The column types whose tuples the fast path reads, by mode: text, int, bool, timestamptz
# (native when UTC) and a parser call (numeric, float8, date, bytea, an array).
TEXT_OIDS = (25, 1043, 114)
INT_OIDS = {21: 16, 23: 32, 20: 64, 26: 32}  # oid -> bits (oid is unsigned 32-bit)
BOOL, TIMESTAMPTZ, NUMERIC, FLOAT8, DATE, BYTEA, INT4_ARRAY = 16, 1184, 1700, 701, 1082, 17, 1007
FAST_OIDS = (*TEXT_OIDS, *INT_OIDS, BOOL, TIMESTAMPTZ, NUMERIC, FLOAT8, DATE, BYTEA, INT4_ARRAY)

UNCHANGED = UNCHANGED_TOAST  # an unchanged TOASTed value: kind 'u', no payload


def col(oid: int, name: str = 'c') -> Column:
    return column_for(RelationColumn(name, oid, -1, False), {})


def columns_of(*oids: int) -> tuple[Column, ...]:
    return tuple(col(oid, f'c{i}') for i, oid in enumerate(oids))


def tuple_bytes(values: Sequence[Any], count: int | None = None) -> bytes:
    """``tuple_data`` with this file's shorthand: bytes are a text value's raw bytes (invalid
    UTF-8 too), a bytearray a binary value."""
    return tuple_data([RawText(v) if type(v) is bytes else bytes(v) if type(v) is bytearray
                       else v for v in values], count)


def exact(result: tuple[dict[str, Any], int] | None) -> Any:
    """What must be identical: None, or the end offset and each value's name, type and repr,
    in order (repr tells 1.50 from 1.5, -0.0 from 0.0; NaN equals NaN), and UTC by identity."""
    if result is None:
        return None
    row, end = result
    return end, [(name, type(value), repr(value),
                  value.tzinfo is UTC if isinstance(value, dt.datetime) else None)
                 for name, value in row.items()]


def both(columns: Sequence[Column], buf: bytes, offset: int = 0) -> Any:
    """The Python decoder's result, after checking the C decoder gives the identical one."""
    expected = wire_row_decoder(columns, native=False)(buf, offset)
    if _pgwire is not None:
        assert exact(wire_row_decoder(columns, native=True)(buf, offset)) == exact(expected)
    return expected


# ---------------------------------------------------------------------------------------------
# Edge cases, named

DECLINE = object()


def one(oid: int, text: str | bytes) -> Any:
    result = both((col(oid),), tuple_bytes([text]))
    return DECLINE if result is None else result[0]['c']


@pytest.mark.parametrize(('oid', 'text', 'expected'), [
    (25, '', ''),
    (25, 'héllo\n\t"\'\\', 'héllo\n\t"\'\\'),
    (25, '\U0001f600', '\U0001f600'),
    (25, b'\xff', DECLINE),  # invalid UTF-8
    (25, b'caf\xc3', DECLINE),  # truncated sequence
    (25, b'\xed\xa0\x80', DECLINE),  # an encoded surrogate: not UTF-8 either
    (25, b'\xc0\x80', DECLINE),  # overlong NUL
    (1043, b'a\x00b', 'a\x00b'),  # PostgreSQL never sends NUL, but it is valid UTF-8
    (NUMERIC, b'\xff', DECLINE),  # invalid UTF-8 before a parser call
    (BOOL, b'\xff', DECLINE),
    (TIMESTAMPTZ, b'2024-01-01 00:00:00+0\xff', DECLINE),
])
def test_text(oid: int, text: str | bytes, expected: Any) -> None:
    assert one(oid, text) == expected


@pytest.mark.parametrize(('text', 'expected'), [
    ('0', 0), ('-0', 0), ('+5', 5), ('-5', -5), ('007', 7), ('-007', -7), ('+000', 0),
    ('123456789012345678', 123456789012345678),  # 18 digits: the fast path's limit
    ('-123456789012345678', -123456789012345678),
    ('9223372036854775807', 2**63 - 1), ('-9223372036854775808', -(2**63)),  # 19 digits
    ('9999999999999999999', 10**19 - 1), ('-9999999999999999999', 1 - 10**19),
    ('18446744073709551616', 2**64),
    ('0000000000000000000000000042', 42),  # leading zeros past 18 digits
    ('1' * 100, int('1' * 100)),
    # int(bytes) takes these, so the C decoder does too (PostgreSQL prints none of them).
    (' 5', 5), ('5 ', 5), ('\t-5\n', -5), ('1_000', 1000),
    ('', DECLINE), ('+', DECLINE), ('-', DECLINE), ('--5', DECLINE), ('+-5', DECLINE),
    ('12a', DECLINE), ('a12', DECLINE), ('1.0', DECLINE), ('1e3', DECLINE), ('0x10', DECLINE),
    ('1__0', DECLINE), ('_1', DECLINE), ('5\x00', DECLINE), ('\x005', DECLINE),
    ('1 2', DECLINE),
    ('\u0661', DECLINE),  # an Arabic-Indic digit: int(str) takes it, int(bytes) does not
    ('1' * 5000, DECLINE),  # past sys.get_int_max_str_digits()
    (b'\xff', DECLINE),
])
@pytest.mark.parametrize('oid', [21, 20])
def test_int(oid: int, text: str, expected: Any) -> None:
    got = one(oid, text)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(('text', 'expected'), [
    ('t', True), ('f', False),
    ('true', DECLINE), ('false', DECLINE), ('T', DECLINE), ('F', DECLINE), ('1', DECLINE),
    ('0', DECLINE), ('', DECLINE), ('t ', DECLINE), ('tt', DECLINE),
])
def test_bool(text: str, expected: Any) -> None:
    got = one(BOOL, text)
    assert got is expected


@pytest.mark.parametrize(('text', 'expected'), [
    ('2024-01-02 03:04:05+00', dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ('2024-01-02 03:04:05.1+00', dt.datetime(2024, 1, 2, 3, 4, 5, 100000, tzinfo=UTC)),
    ('2024-01-02 03:04:05.12+00', dt.datetime(2024, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)),
    ('2024-01-02 03:04:05.123+00', dt.datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)),
    ('2024-01-02 03:04:05.1234+00', dt.datetime(2024, 1, 2, 3, 4, 5, 123400, tzinfo=UTC)),
    ('2024-01-02 03:04:05.12345+00', dt.datetime(2024, 1, 2, 3, 4, 5, 123450, tzinfo=UTC)),
    ('2024-01-02 03:04:05.123456+00', dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
    ('2024-01-02 03:04:05.000001+00', dt.datetime(2024, 1, 2, 3, 4, 5, 1, tzinfo=UTC)),
    ('2024-02-29 23:59:59+00', dt.datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
    ('2000-02-29 00:00:00+00', dt.datetime(2000, 2, 29, tzinfo=UTC)),
    ('0001-01-01 00:00:00+00', dt.datetime(1, 1, 1, tzinfo=UTC)),
    ('9999-12-31 23:59:59.999999+00', dt.datetime.max.replace(tzinfo=UTC)),
    # Not UTC: the Python parser converts, the result is still in UTC.
    ('2024-01-02 03:04:05+02', dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)),
    ('2024-01-02 03:04:05.5-07:30', dt.datetime(2024, 1, 2, 10, 34, 5, 500000, tzinfo=UTC)),
    ('2024-01-02 03:04:05+00:00', dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ('1900-01-01 00:00:00+00:09:21', dt.datetime(1899, 12, 31, 23, 50, 39, tzinfo=UTC)),
    # Values Python cannot hold stay text.
    ('infinity', 'infinity'), ('-infinity', '-infinity'),
    ('0001-01-01 00:00:00+01', '0001-01-01 00:00:00+01'),  # before year 1 in UTC
    ('10000-01-01 00:00:00+00', '10000-01-01 00:00:00+00'),
    ('0044-03-15 12:00:00+00 BC', '0044-03-15 12:00:00+00 BC'),
    # Not timestamps: the general path says why.
    ('2023-02-29 00:00:00+00', DECLINE), ('2024-04-31 00:00:00+00', DECLINE),
    ('1900-02-29 00:00:00+00', DECLINE), ('2024-12-32 00:00:00+00', DECLINE),
    ('2024-13-01 00:00:00+00', DECLINE), ('2024-00-01 00:00:00+00', DECLINE),
    ('2024-01-00 00:00:00+00', DECLINE), ('0000-01-01 00:00:00+00', DECLINE),
    ('2024-01-01 00:60:00+00', DECLINE), ('2024-01-01 00:00:60+00', DECLINE),
    ('2024-01-01 00:00:00.+00', DECLINE), ('2024-01-01 00:00:00.1234567+00', DECLINE),
    ('2024-01-01 00:00:00.12a+00', DECLINE), ('2024-01-01 00:00:00', DECLINE),
    ('2024-01-01 00:00:00+0', DECLINE), ('', DECLINE), ('garbage', DECLINE),
    ('2024-1-01 00:00:00+00', DECLINE), ('2024-01-01 0:00:00+000', DECLINE),
])
def test_timestamptz(text: str, expected: Any) -> None:
    got = one(TIMESTAMPTZ, text)
    assert got == expected
    assert type(got) is type(expected)
    if isinstance(got, dt.datetime):
        assert got.tzinfo is UTC


@pytest.mark.parametrize('text', [
    '2024-01-01T00:00:00+00',  # other separators and digits: whatever fromisoformat says
    '2024-01-01 24:00:00+00',
    '\uff12\uff10\uff12\uff14-01-01 00:00:00+00',  # fullwidth digits
    '2024-01-01 00:00:00+00 ',
    '2024-01-01 00:00:00Z',
])
def test_timestamptz_odd_shapes_agree(text: str) -> None:
    one(TIMESTAMPTZ, text)  # both() asserts the agreement


def test_parser_calls() -> None:
    buf = tuple_bytes(['1.50', '-0', '2024-02-29', '\\x00ff', '{1,NULL,3}'])
    row = both(columns_of(NUMERIC, FLOAT8, DATE, BYTEA, INT4_ARRAY), buf)
    assert row == ({'c0': Decimal('1.50'), 'c1': -0.0, 'c2': dt.date(2024, 2, 29),
                    'c3': b'\x00\xff', 'c4': [1, None, 3]}, len(buf))
    assert both(columns_of(NUMERIC), tuple_bytes(['abc'])) is None
    assert both(columns_of(INT4_ARRAY), tuple_bytes(['{1,'])) is None


FIVE = columns_of(20, 25, TIMESTAMPTZ, NUMERIC, 23)
FIVE_VALUES = ['42', 'x', '2024-01-01 00:00:00+00', '1.5', '7']


def test_the_frame_around_the_tuple() -> None:
    frame = b'I\x00\x00\x40\x00N' + tuple_bytes(FIVE_VALUES)
    row = {'c0': 42, 'c1': 'x', 'c2': dt.datetime(2024, 1, 1, tzinfo=UTC),
           'c3': Decimal('1.5'), 'c4': 7}
    assert both(FIVE, frame, 6) == (row, len(frame))
    assert both(FIVE, frame + b'trailing', 6) == (row, len(frame))  # the caller checks the end
    assert both((), b'\x00\x00') == ({}, 2)
    assert both(FIVE, tuple_bytes([None] * 5)) == (dict.fromkeys(row), 7)


@pytest.mark.parametrize(('name', 'buf', 'offset'), [
    ('count one short', tuple_bytes(FIVE_VALUES[:4]), 0),
    ('count one over', tuple_bytes([*FIVE_VALUES, None]), 0),
    ('count says 6 for 5 values', tuple_bytes(FIVE_VALUES, count=6), 0),
    ('count says 4 for 5 values', tuple_bytes(FIVE_VALUES, count=4), 0),
    ('last length one past the end', tuple_bytes(FIVE_VALUES)[:-1], 0),
    ('length cut after 0 bytes', tuple_bytes(FIVE_VALUES)[:3], 0),
    ('length cut after 1 byte', tuple_bytes(FIVE_VALUES)[:4], 0),
    ('length cut after 2 bytes', tuple_bytes(FIVE_VALUES)[:5], 0),
    ('length cut after 3 bytes', tuple_bytes(FIVE_VALUES)[:6], 0),
    ('value cut', tuple_bytes(FIVE_VALUES)[:8], 0),
    ('length 0xffffffff',
     tuple_bytes(FIVE_VALUES)[:2] + b't\xff\xff\xff\xff42' + tuple_bytes(FIVE_VALUES)[9:], 0),
    ('length 0x80000000', tuple_bytes(FIVE_VALUES)[:2] + b't\x80\x00\x00\x0042', 0),
    ('no values at all', b'\x00\x05', 0),
    ('count cut in half', b'\x00', 0),
    ('empty buffer', b'', 0),
    ('unchanged TOAST', tuple_bytes([*FIVE_VALUES[:3], UNCHANGED, '7']), 0),
    ('binary value', tuple_bytes([*FIVE_VALUES[:3], bytearray(b'\x01'), '7']), 0),
    ('unknown kind', tuple_bytes(FIVE_VALUES).replace(b't', b'q', 1), 0),
    ('offset at the end', tuple_bytes(FIVE_VALUES), len(tuple_bytes(FIVE_VALUES))),
    ('offset past the end', tuple_bytes(FIVE_VALUES), 1000),
    ('offset past any index', tuple_bytes(FIVE_VALUES), 2**70),
])
def test_declines(name: str, buf: bytes, offset: int) -> None:
    assert both(FIVE, buf, offset) is None, name


# ---------------------------------------------------------------------------------------------
# Properties: generated tuples, then the same tuples damaged

def _pg_timestamptz(value: dt.datetime, offset_minutes: int) -> str:
    local = value + dt.timedelta(minutes=offset_minutes)
    text = f'{local.year:04d}-{local:%m-%d %H:%M:%S}'
    if local.microsecond:
        text += f'.{local.microsecond:06d}'.rstrip('0')
    sign = '-' if offset_minutes < 0 else '+'
    hours, minutes = divmod(abs(offset_minutes), 60)
    return text + f'{sign}{hours:02d}' + (f':{minutes:02d}' if minutes else '')


@st.composite
def timestamptz_texts(draw: Any) -> str:
    offset = draw(st.sampled_from([0, 0, 0, 60, -300, 330, -570, 14 * 60]))
    value = draw(st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)))
    return _pg_timestamptz(value, offset)


def _texts(oid: int) -> st.SearchStrategy[str]:
    """What PostgreSQL prints for a value of the type."""
    if oid in INT_OIDS:
        bits = INT_OIDS[oid]
        low, high = (0, 2**32 - 1) if oid == 26 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return st.integers(low, high).map(str)
    if oid == BOOL:
        return st.sampled_from('tf')
    if oid == TIMESTAMPTZ:
        return timestamptz_texts() | st.sampled_from(cst.TIMESTAMPTZ_TEXT)
    if oid == NUMERIC:
        return st.decimals(allow_nan=False).map(str) | st.sampled_from(['NaN', 'Infinity'])
    if oid == FLOAT8:
        return st.floats().map(repr)
    if oid == DATE:
        return st.dates().map(lambda d: f'{d.year:04d}-{d:%m-%d}') | st.sampled_from(
            ['infinity', '-infinity', '10000-01-01', '0044-03-15 BC'])
    if oid == BYTEA:
        return st.binary(max_size=8).map(lambda b: '\\x' + b.hex())
    if oid == INT4_ARRAY:
        element = st.integers(-(2**31), 2**31 - 1).map(str) | st.just('NULL')
        return st.lists(element, max_size=4).map(lambda xs: '{' + ','.join(xs) + '}')
    return cst.text


# Text a value of any type might be sent as, right or wrong for the column.
_odd_texts = st.one_of(
    st.sampled_from(['', '+5', '-0', '007', ' 7', '1_0', '9' * 19, '9' * 30, 'x', 't', 'true',
                     'infinity', '2024-01-01 00:00:00+00', '2024-02-30 00:00:00+00', '{}', 'NaN',
                     '2024-01-01 00:00:00.5+00:00']),
    st.text(st.characters(exclude_categories=('Cs',)), max_size=30),
    st.binary(max_size=30),
)


@st.composite
def tuples(draw: Any) -> tuple[tuple[Column, ...], list[Any], bool]:
    """Columns, values, and whether every value is text PostgreSQL prints or a null."""
    oids = draw(st.lists(st.sampled_from(FAST_OIDS), max_size=8))
    values = []
    printed = True
    for oid in oids:
        if draw(st.integers(0, 9)) < 7:
            values.append(draw(st.none() | _texts(oid)))
        else:
            printed = False
            values.append(draw(st.one_of(
                _odd_texts, st.just(UNCHANGED), st.binary(max_size=4).map(bytearray))))
    return columns_of(*oids), values, printed


# Many examples, no deadline: a loaded CI machine must not turn a slow example into a failure.
# (The first test to draw text pays for Hypothesis's unicode tables, hence too_slow.)
fuzz = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(tuples())
def test_generated_tuples(case: tuple[tuple[Column, ...], list[Any], bool]) -> None:
    columns, values, printed = case
    frame = b'U\x00\x00\x00\x01N' + tuple_bytes(values)
    result = both(columns, frame, 6)
    if printed:  # what PostgreSQL sends is what the fast path is for
        assert result is not None
        assert result[1] == len(frame)


@fuzz
@given(tuples(), st.data())
def test_damaged_tuples(case: tuple[tuple[Column, ...], list[Any], bool], data: Any) -> None:
    columns, values, _ = case
    frame = bytearray(tuple_bytes(values))
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(['flip', 'cut', 'insert', 'delete']))
        at = data.draw(st.integers(0, len(frame)))
        if how == 'flip' and at < len(frame):
            frame[at] = data.draw(st.integers(0, 255))
        elif how == 'cut':
            del frame[at:]
        elif how == 'insert':
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=6))
        elif at < len(frame):
            del frame[at:at + data.draw(st.integers(1, 6))]
    buf = bytes(frame)
    both(columns, buf, data.draw(st.integers(0, len(buf) + 1)))


@fuzz
@given(st.lists(st.sampled_from(FAST_OIDS), max_size=4), st.binary(max_size=64),
       st.integers(0, 8))
def test_random_bytes(oids: list[int], buf: bytes, offset: int) -> None:
    both(columns_of(*oids), buf, offset)


@fuzz
@given(st.lists(st.sampled_from(FAST_OIDS), max_size=4), st.data())
def test_random_values_with_the_right_count(oids: list[int], data: Any) -> None:
    # The count and the kinds right, so the values themselves reach the converters.
    values = [data.draw(st.none() | st.binary(max_size=24)) for _ in oids]
    both(columns_of(*oids), tuple_bytes(values))


# ---------------------------------------------------------------------------------------------
# The C function itself: its contract with pgtypes, errors and references

@needs_native
def test_wire_row_decoder_picks_c_by_default() -> None:
    assert wire_row_decoder(FIVE).__class__.__name__ == 'partial'
    assert wire_row_decoder(FIVE, native=False).__name__ == 'decode'


def test_without_the_extension_the_python_decoder_serves(monkeypatch: Any) -> None:
    monkeypatch.setattr(pgtypes, '_NATIVE_DECODE_TUPLE', None)
    decode = wire_row_decoder(FIVE)
    assert decode.__name__ == 'decode'  # type: ignore[attr-defined]
    assert decode(tuple_bytes(FIVE_VALUES), 0) is not None
    with pytest.raises(ImportError, match='_pgwire was not built'):
        wire_row_decoder(FIVE, native=True)


def _raise(exc: BaseException) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        raise exc
    return parse


@needs_native
def test_parser_exceptions_decline_but_base_exceptions_propagate() -> None:
    buf = tuple_bytes(['x'])
    for exc in (ValueError('no'), ArithmeticError(), MemoryError(), RecursionError()):
        assert _pgwire.decode_tuple(('a',), b'c', (_raise(exc),), buf, 0) is None
        assert sys.exc_info() == (None, None, None)
    with pytest.raises(KeyboardInterrupt):  # as in Python: `except Exception` does not catch it
        _pgwire.decode_tuple(('a',), b'c', (_raise(KeyboardInterrupt()),), buf, 0)
    with pytest.raises(KeyboardInterrupt):
        _pgwire.decode_tuple(('a',), b'z', (_raise(KeyboardInterrupt()),),
                             tuple_bytes(['infinity']), 0)


@needs_native
@pytest.mark.parametrize(('args', 'error'), [
    ((('a',), b's', (None,), bytearray(b'\x00\x01n'), 0), TypeError),  # bytes only
    ((('a',), b's', (None,), memoryview(b'\x00\x01n'), 0), TypeError),
    ((('a',), b's', (None,), b'\x00\x01n', 0.0), TypeError),
    ((['a'], b's', (None,), b'\x00\x01n', 0), TypeError),
    ((('a',), 's', (None,), b'\x00\x01n', 0), TypeError),
    ((('a',), b'ss', (None,), b'\x00\x01n', 0), ValueError),
    ((('a',), b's', (None, None), b'\x00\x01n', 0), ValueError),
    ((('a',), b'x', (None,), b'\x00\x01n', 0), ValueError),  # unknown mode
    ((('a',), b'c', (None,), b'\x00\x01n', 0), TypeError),  # a parser call without a parser
    ((('a',), b'z', (3,), b'\x00\x01n', 0), TypeError),
    ((('a',), b's', (None,), b'\x00\x01n'), TypeError),  # four arguments
    (((b'a',), b's', (None,), b'\x00\x01n', 0), TypeError),  # a name that is not a str
])
def test_a_wrong_plan_raises(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        _pgwire.decode_tuple(*args)


@needs_native
def test_negative_offset_is_out_of_range() -> None:
    # The Python decoder would index from the end; no caller passes a negative offset.
    assert _pgwire.decode_tuple(('a',), b's', (None,), b'\x00\x01n', -3) is None


def _leaked_bytes(call: Callable[[], Any]) -> int:
    for _ in range(200):  # fill free lists and caches first
        call()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            call()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@needs_native
def test_no_reference_leaks_on_any_path() -> None:
    sentinel = object()
    names = ('a', 'b', 'c')
    modes = b'czc'
    good = tuple_bytes(['x', '2024-01-01 00:00:00+00', 'y'])
    parsers: tuple[Any, ...] = (lambda text: sentinel, pgtypes._parse_timestamptz, str)
    failing: tuple[Any, ...] = (lambda text: sentinel, pgtypes._parse_timestamptz,
                                _raise(ValueError('no')))
    cases = [
        (parsers, good, 0),  # a row
        (failing, good, 0),  # the last parser raises after two values are in the row
        (parsers, tuple_bytes(['x', 'infinity', 'y']), 0),  # the timestamptz parser call
        (parsers, good[:-1], 0),  # the last value runs past the end
        (parsers, tuple_bytes(['x', '2024-01-01 00:00:00+00', UNCHANGED]), 0),
        (parsers, tuple_bytes(['x', b'\xff', 'y']), 0),  # invalid UTF-8
        (parsers, good, 2**70),  # offset overflow
        (parsers, tuple_bytes(['x', None]), 0),  # count mismatch
    ]
    watched = [sentinel, names, modes, good, UTC, *names, parsers, failing]
    for plan, buf, offset in cases:
        def call(plan: tuple[Any, ...] = plan, buf: bytes = buf, offset: int = offset) -> Any:
            return _pgwire.decode_tuple(names, modes, plan, buf, offset)

        counts = [sys.getrefcount(o) for o in watched]
        assert _leaked_bytes(call) < 4096, (plan, buf, offset)
        assert [sys.getrefcount(o) for o in watched] == counts, (plan, buf, offset)
    long_int = ('a',), b'i', (None,), tuple_bytes(['1' * 200]), 0
    assert _leaked_bytes(lambda: _pgwire.decode_tuple(*long_int)) < 4096
    bad_long_int = ('a',), b'i', (None,), tuple_bytes(['1' * 200 + 'x']), 0
    assert _leaked_bytes(lambda: _pgwire.decode_tuple(*bad_long_int)) < 4096
