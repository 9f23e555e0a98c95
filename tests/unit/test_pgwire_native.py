"""The C TupleData decoder (``_pgwire``) against the generated Python one it replaces, and the C
renderer against decoding then encoding.

``wire_row_decoder(columns, native=False)`` is the reference.  The C decoder must give the same
row (same values, same types, the same ``timezone.utc`` object) or the same None, on tuples
PostgreSQL would send and on anything the network could hand it: the caller trusts None to
mean "take the general path" and trusts a row to be the row.

``wire_row_renderer(table)`` must give exactly ``debezium_row_json`` of that row, or None; None
at least whenever the decoder declines, and never for the values PostgreSQL prints in the forms
it renders (else it would be no fast path at all).
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import tracemalloc
import types
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit import strategies as cst
from tests.unit.pgoutput_frames import RawText, tuple_data
from transforms import envelope
from transforms.envelope import Column, Kind, TableSchema, debezium_row_json
from transforms.sources import postgres
from transforms.sources.postgres import pgtypes
from transforms.sources.postgres.changes import _fill
from transforms.sources.postgres.pgoutput import UNCHANGED_TOAST, RelationColumn
from transforms.sources.postgres.pgtypes import (
    column_for,
    wire_doc_renderer,
    wire_row_decoder,
    wire_row_renderer,
)

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
    from transforms.sources.postgres import _pqcopy  # noqa: F401  (the stream's frame loop)
    assert pgtypes._NATIVE_DECODE_TUPLE is built.decode_tuple  # and it is the one in use
    assert pgtypes._NATIVE_RENDER_DOC is built.render_doc


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


def damaged(data: Any, values: Sequence[Any]) -> bytes:
    """The tuple of ``values`` with one to four bytes flipped, runs cut, inserted or deleted."""
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
    return bytes(frame)


@fuzz
@given(tuples(), st.data())
def test_damaged_tuples(case: tuple[tuple[Column, ...], list[Any], bool], data: Any) -> None:
    columns, values, _ = case
    buf = damaged(data, values)
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


# ---------------------------------------------------------------------------------------------
# render_tuple: the TupleData straight to JSON, against decoding then debezium_row_json

UUID = 2950
# The column types wire_row_renderer takes: text-like, the integers, bool, timestamptz, numeric.
RENDER_OIDS = (*TEXT_OIDS, UUID, *INT_OIDS, BOOL, TIMESTAMPTZ, NUMERIC)


def table_of(columns: Sequence[Column]) -> TableSchema:
    return TableSchema('public', 't', tuple(columns))


def rendered(columns: Sequence[Column], buf: bytes, offset: int = 0
             ) -> tuple[bytes, int] | None:
    """The C renderer's result, after checking it against the reference: whenever it renders,
    the JSON debezium_row_json writes for the row the decoders read, and their end offset;
    None whenever they decline."""
    table = table_of(columns)
    render = wire_row_renderer(table)
    assert render is not None
    got = render(buf, offset)
    decoded = both(columns, buf, offset)
    if decoded is None:
        assert got is None
    elif got is not None:
        assert got == (debezium_row_json(table, decoded[0]), decoded[1])
    # render_doc: the same row inside a document, exactly where nothing follows the tuple.
    render_doc = wire_doc_renderer(table)
    assert render_doc is not None
    doc = render_doc(buf, offset, DOC_PARTS, DOC_VALUES)
    if got is None or got[1] != len(buf):
        assert doc is None
    else:
        assert doc == _fill(DOC_PARTS, got[0], DOC_VALUES)
    return got


# What render_doc writes around a row in rendered(): every kind of value it takes, ints past
# 64 bits and negative ones included.
DOC_PARTS = (b'{"after":', b',"a":', b',"b":', b',"c":', b',"d":"', b'",')
DOC_VALUES = (0, -9_223_372_036_854_775_808, 2**64 + 7, b'12:34')


def test_fill_is_the_document_render_into_writes() -> None:
    assert _fill(DOC_PARTS, b'{}', DOC_VALUES) == (
        b'{"after":{},"a":0,"b":-9223372036854775808,"c":18446744073709551623,"d":"12:34",')


def render_one(oid: int, text: str | bytes) -> Any:
    result = rendered((col(oid),), tuple_bytes([text]))
    if result is None:
        return DECLINE
    json, _ = result
    assert json.startswith(b'{"c":') and json.endswith(b'}')
    return json[5:-1]


@needs_native
@pytest.mark.parametrize(('text', 'expected'), [
    ('', b'""'),
    ('plain md5 0123456789abcdef', b'"plain md5 0123456789abcdef"'),
    ('"\\', b'"\\"\\\\"'),
    ('\b\t\n\f\r', b'"\\b\\t\\n\\f\\r"'),
    ('\x00\x01\x0b\x1a\x1f', b'"\\u0000\\u0001\\u000b\\u001a\\u001f"'),
    ('\x7f/ <>&\'', b'"\x7f/ <>&\'"'),  # DEL, '/' and HTML characters as they are
    ('\u2028\u2029 é \U0001f600', '"\u2028\u2029 é \U0001f600"'.encode()),
    (b'\xef\xbf\xbf\xf4\x8f\xbf\xbf', b'"\xef\xbf\xbf\xf4\x8f\xbf\xbf"'),  # U+FFFF, U+10FFFF
    ('ctl\x01 after é\n', b'"ctl\\u0001 after \xc3\xa9\\n"'),
    (b'\xff', DECLINE),
    (b'caf\xc3', DECLINE),  # truncated sequence
    (b'\xed\xa0\x80', DECLINE),  # an encoded surrogate
    (b'\xc0\x80', DECLINE),  # overlong NUL
    (b'\xe0\x9f\xbf', DECLINE),  # overlong three bytes
    (b'\xf0\x8f\xbf\xbf', DECLINE),  # overlong four bytes
    (b'\xf4\x90\x80\x80', DECLINE),  # past U+10FFFF
    (b'ok\x80', DECLINE),  # a lone continuation byte
])
@pytest.mark.parametrize('oid', [25, 1043, 114])
def test_render_text(oid: int, text: str | bytes, expected: Any) -> None:
    assert render_one(oid, text) == expected


@needs_native
@pytest.mark.parametrize(('text', 'expected'), [
    ('0', b'0'), ('7', b'7'), ('-5', b'-5'), ('32767', b'32767'),
    ('123456789012345678', b'123456789012345678'),  # 18 digits
    ('-123456789012345678', b'-123456789012345678'),
    # What int() takes but orjson would not print back as it is: the decoder's, not ours.
    ('-0', DECLINE), ('007', DECLINE), ('00', DECLINE), ('+5', DECLINE), (' 5', DECLINE),
    ('5 ', DECLINE), ('1_000', DECLINE), ('9' * 30, DECLINE),
    # 19 digits (snowflake-style ids): inside the bigint range only.
    ('9223372036854775807', b'9223372036854775807'),
    ('-9223372036854775808', b'-9223372036854775808'),
    ('1541815603606036480', b'1541815603606036480'),
    ('1000000000000000000', b'1000000000000000000'),
    ('9223372036854775808', DECLINE), ('-9223372036854775809', DECLINE), ('9' * 19, DECLINE),
    ('-' + '9' * 19, DECLINE), ('0123456789012345678', DECLINE),
    # Not integers.
    ('', DECLINE), ('-', DECLINE), ('1.0', DECLINE), ('1e3', DECLINE), ('\u0661', DECLINE),
    ('5\x00', DECLINE), (b'\xff', DECLINE),
])
@pytest.mark.parametrize('oid', [21, 23, 20, 26])
def test_render_int(oid: int, text: str, expected: Any) -> None:
    assert render_one(oid, text) == expected


@needs_native
@pytest.mark.parametrize(('text', 'expected'), [
    ('t', b'true'), ('f', b'false'),
    ('true', DECLINE), ('T', DECLINE), ('1', DECLINE), ('', DECLINE), ('tt', DECLINE),
])
def test_render_bool(text: str, expected: Any) -> None:
    assert render_one(BOOL, text) == expected


@needs_native
@pytest.mark.parametrize(('text', 'expected'), [
    ('2024-01-02 03:04:05+00', b'"2024-01-02T03:04:05Z"'),
    ('2024-01-02 03:04:05.1+00', b'"2024-01-02T03:04:05.100000Z"'),
    ('2024-01-02 03:04:05.12+00', b'"2024-01-02T03:04:05.120000Z"'),
    ('2024-01-02 03:04:05.123+00', b'"2024-01-02T03:04:05.123000Z"'),
    ('2024-01-02 03:04:05.1234+00', b'"2024-01-02T03:04:05.123400Z"'),
    ('2024-01-02 03:04:05.12345+00', b'"2024-01-02T03:04:05.123450Z"'),
    ('2024-01-02 03:04:05.123456+00', b'"2024-01-02T03:04:05.123456Z"'),
    ('2024-01-02 03:04:05.000001+00', b'"2024-01-02T03:04:05.000001Z"'),
    ('2024-01-02 03:04:05.0+00', b'"2024-01-02T03:04:05Z"'),  # no microseconds: no fraction
    ('2024-02-29 23:59:59+00', b'"2024-02-29T23:59:59Z"'),
    ('2000-02-29 00:00:00+00', b'"2000-02-29T00:00:00Z"'),
    ('0001-01-01 00:00:00+00', b'"0001-01-01T00:00:00Z"'),
    ('0999-12-31 23:59:59.5+00', b'"0999-12-31T23:59:59.500000Z"'),
    ('9999-12-31 23:59:59.999999+00', b'"9999-12-31T23:59:59.999999Z"'),
    # Not a valid instant: the decoder declines too.
    ('2023-02-29 00:00:00+00', DECLINE), ('1900-02-29 00:00:00+00', DECLINE),
    ('2024-04-31 00:00:00+00', DECLINE), ('2024-13-01 00:00:00+00', DECLINE),
    ('0000-01-01 00:00:00+00', DECLINE), ('2024-01-01 24:00:00+00', DECLINE),
    ('2024-01-01 00:60:00+00', DECLINE), ('2024-01-01 00:00:60+00', DECLINE),
    ('2024-01-01 00:00:00.1234567+00', DECLINE), ('2024-01-01 00:00:00.+00', DECLINE),
    # Values the decoder's parser reads (another offset, text forms): ours to decline.
    ('2024-01-02 03:04:05+01', DECLINE), ('2024-01-02 03:04:05-00', DECLINE),
    ('2024-01-02 03:04:05+00:00', DECLINE), ('2024-01-02 03:04:05.5-07:30', DECLINE),
    ('infinity', DECLINE), ('-infinity', DECLINE), ('0044-03-15 12:00:00+00 BC', DECLINE),
    ('10000-01-01 00:00:00+00', DECLINE), ('2024-01-01T00:00:00+00', DECLINE),
])
def test_render_timestamptz(text: str, expected: Any) -> None:
    assert render_one(TIMESTAMPTZ, text) == expected


@needs_native
@pytest.mark.parametrize(('text', 'expected'), [
    ('0', b'"0"'), ('-0', b'"-0"'), ('0.0', b'"0.0"'), ('-0.00', b'"-0.00"'), ('1.50', b'"1.50"'),
    ('-0.5', b'"-0.5"'), ('1234567890123456789012345678901234567890.5',
                          b'"1234567890123456789012345678901234567890.5"'),
    # Decimal keeps the plain form down to an adjusted exponent of -6.
    ('0.000001', b'"0.000001"'), ('-0.000001', b'"-0.000001"'), ('0.000000', b'"0.000000"'),
    ('0.0000010', b'"0.0000010"'), ('0.0000012345', b'"0.0000012345"'),
    ('10.0000000001', b'"10.0000000001"'),
    # ... and below it writes an exponent: '1E-7', '0E-7'.
    ('0.0000001', DECLINE), ('-0.0000001', DECLINE), ('0.0000000', DECLINE),
    ('0.00000001234', DECLINE),
    # Not the plain form Decimal prints back.
    ('NaN', DECLINE), ('Infinity', DECLINE), ('-Infinity', DECLINE), ('1e5', DECLINE),
    ('1E-7', DECLINE), ('.5', DECLINE), ('5.', DECLINE), ('-.5', DECLINE), ('007', DECLINE),
    ('00.5', DECLINE), ('+1', DECLINE), (' 1', DECLINE), ('1 ', DECLINE), ('1_0', DECLINE),
    ('', DECLINE), ('-', DECLINE), ('1.2.3', DECLINE), ('--1', DECLINE), (b'\xff', DECLINE),
])
def test_render_numeric(text: str, expected: Any) -> None:
    assert render_one(NUMERIC, text) == expected


@needs_native
def test_render_null_in_every_mode() -> None:
    columns = columns_of(*RENDER_OIDS)
    assert rendered(columns, tuple_bytes([None] * len(columns))) == (
        b'{' + b','.join(b'"c%d":null' % i for i in range(len(columns))) + b'}',
        2 + len(columns))


@needs_native
def test_render_keys_are_orjson_names() -> None:
    names = ['id', 'q"u\\o', 'ctl\x01\n', '\u2028é', '']
    columns = tuple(col(25, name) for name in names)
    buf = tuple_bytes(['v'] * len(names))
    assert rendered(columns, buf) == (orjson.dumps(dict.fromkeys(names, 'v')), len(buf))


@needs_native
def test_render_utf8_exactly_as_bytes_decode() -> None:
    # Every one- and two-byte sequence, and every lead byte of longer ones with the second
    # byte around each boundary of table 3-7 and the others at their range's edges.
    edges = (0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0)
    sequences = [bytes([a]) for a in range(256)]
    sequences += [bytes([a, b]) for a in range(0xC0, 0x100) for b in range(256)]
    sequences += [bytes([a, b, c]) for a in range(0xE0, 0x100) for b in range(0x70, 0xD0)
                  for c in edges]
    sequences += [bytes([a, b, c, d]) for a in range(0xF0, 0x100) for b in range(0x70, 0xD0)
                  for c in edges for d in edges]
    render = wire_row_renderer(table_of(columns_of(25)))
    assert render is not None
    for raw in sequences:
        for text in (raw, b'"' + raw + b'\n'):  # and with escapes around it
            buf = tuple_bytes([text])
            try:
                value = text.decode()
            except UnicodeDecodeError:
                assert render(buf, 0) is None, text
            else:
                assert render(buf, 0) == (b'{"c0":' + orjson.dumps(value) + b'}', len(buf)), text


@needs_native
def test_render_rows_past_the_stack_buffer() -> None:
    # The JSON outgrows 1 KiB in one value and over many: the buffer grows, then grows again.
    values = ['x' * 5000, '\x01' * 3000, '"' * 2000, 'é' * 1500, '1.5', '7', None]
    columns = columns_of(25, 25, 1043, 25, NUMERIC, 20, 25)
    buf = tuple_bytes(values)
    assert rendered(columns, buf) is not None
    many = columns_of(*[20] * 1600)
    buf = tuple_bytes(['-123456789012345678'] * 1600)
    assert rendered(many, buf) is not None
    # Declined after the buffer grew: the last value is invalid.
    assert rendered(columns, tuple_bytes([*values[:-1], b'\xff'])) is None


_INT_NEAR_MISSES = ['0', '-0', '00', '007', '+5', ' 5', '5 ', '1_000', '9' * 18, '-' + '9' * 18,
                    '9' * 19, '-' + '9' * 19, '-9223372036854775809', '18446744073709551616',
                    '1' * 25, '']
_NUMERIC_NEAR_MISSES = ['0.000001', '0.0000001', '0.0000000', '0.000000', '1.50', '-0.5', '-0',
                        'NaN', 'Infinity', '-Infinity', '1e5', '.5', '5.', '00.1', '+1.0',
                        '1_0.0', ' 1']
_TIMESTAMPTZ_NEAR_MISSES = [
    '2024-01-02 03:04:05+00', '2024-01-02 03:04:05.1+00', '2024-01-02 03:04:05.123456+00',
    '2024-01-02 03:04:05.1234567+00', '2024-02-29 00:00:00+00', '2023-02-29 00:00:00+00',
    '2000-02-29 00:00:00+00', '1900-02-29 00:00:00+00', '2024-01-01 24:00:00+00',
    '2024-01-02 03:04:05+01', '2024-01-02 03:04:05-05:30', '2024-01-02 03:04:05+00:00',
    '0999-01-01 00:00:00+00', '0000-01-01 00:00:00+00', 'infinity', '-infinity',
    '0044-03-15 12:00:00+00 BC', '10000-01-01 00:00:00+00']
_TEXT_NEAR_MISSES: list[str | bytes] = [
    b'\xff', b'caf\xc3', b'\xed\xa0\x80', b'\xed\xbf\xbf', b'\xed\x9f\xbf', b'\xc0\x80',
    b'\xc1\xbf', b'\xc2\x80', b'\xe0\x80\x80', b'\xe0\x9f\xbf', b'\xe0\xa0\x80', b'\xe1\x80\x7f',
    b'\xf0\x80\x80\x80', b'\xf0\x8f\xbf\xbf', b'\xf0\x90\x80\x80', b'\xf1\x80\x80\xc0',
    b'\xf4\x8f\xbf\xbf', b'\xf4\x90\x80\x80', b'\xf5\x80\x80\x80', b'\x80', '"', '\\', '\x00',
    '\x1f', '\x7f', '\u2028', 'é', '\U0001f600', 't', 'f', 'true', '']
_NEAR_MISSES: dict[int, list[Any]] = {
    **dict.fromkeys(INT_OIDS, _INT_NEAR_MISSES), NUMERIC: _NUMERIC_NEAR_MISSES,
    TIMESTAMPTZ: _TIMESTAMPTZ_NEAR_MISSES, BOOL: ['t', 'f', 'true', 'T', '', 'tt']}
# Pieces that turn a printed value into one just off the renderer's forms.
_EDITS = [b'0', b'00', b'-', b'+', b'.', b' ', b'e', b'E', b'9', b'_', b':', b'\x00', b'\x7f',
          b'"', b'\\', b'\xff', b'\xc0\x80', b'\xed\xa0\x80', b'\xe0\x9f\xbf', b'\xf4\x90\x80\x80',
          b'\xe2\x80\xa8', b'+00', b'+01', b'.0000001']
# Text a value of any type might be sent as, right or wrong for the column.
_hostile = st.one_of(
    st.sampled_from(_INT_NEAR_MISSES + _NUMERIC_NEAR_MISSES + _TIMESTAMPTZ_NEAR_MISSES
                    + _TEXT_NEAR_MISSES),
    st.text('0123456789-+.eE :', max_size=12),  # near numbers and timestamps
    st.text(st.characters(exclude_categories=('Cs',)), max_size=30),
    st.binary(max_size=30),
)


@st.composite
def plain_numerics(draw: Any) -> str:
    """numeric text as PostgreSQL prints it, in the forms Decimal prints back as they are."""
    if draw(st.integers(0, 9)) == 0:  # the edges of Decimal's plain form
        return draw(st.sampled_from(['0.000000', '-0.000000', '0.000001', '0.0000010', '-0']))
    text = draw(st.sampled_from(['', '-'])) + str(draw(st.integers(0, 10**30)))
    if draw(st.booleans()):
        fraction = draw(st.text('0123456789', min_size=1, max_size=12))
        zeros = len(fraction) - len(fraction.lstrip('0'))
        if text.lstrip('-') == '0' and (zeros > 5 if zeros < len(fraction) else zeros > 6):
            fraction = fraction[zeros:] or '0'  # '0.0000001' would print as '1E-7'
        text += '.' + fraction
    return text


def _printed(oid: int) -> st.SearchStrategy[str]:
    """What PostgreSQL prints for a value of the type, as the walsender sends it (UTC)."""
    if oid in TEXT_OIDS:
        return st.text(st.characters(exclude_categories=('Cs',)), max_size=40)
    if oid == UUID:
        return st.uuids().map(str)
    if oid == TIMESTAMPTZ:
        return st.datetimes(min_value=dt.datetime(1, 1, 1),
                            max_value=dt.datetime(9999, 12, 31)).map(
            lambda value: _pg_timestamptz(value, 0))
    if oid == NUMERIC:
        return plain_numerics()
    if oid in INT_OIDS:  # the whole range, 19-digit bigints too
        bits = INT_OIDS[oid]
        low, high = (0, 2**32 - 1) if oid == 26 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return st.integers(low, high).map(str)
    return _texts(oid)  # bool


@st.composite
def edited(draw: Any, oid: int) -> bytes:
    """A value PostgreSQL prints for the type, then one to three pieces inserted, swapped in or
    removed: the shapes just off the forms the renderer writes."""
    text = draw(_printed(oid)).encode()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        piece = draw(st.sampled_from(_EDITS))
        how = draw(st.sampled_from(['insert', 'replace', 'delete']))
        if how == 'insert':
            text = text[:at] + piece + text[at:]
        elif how == 'replace':
            text = text[:at] + piece + text[at + len(piece):]
        else:
            text = text[:at] + text[at + 1:]
    return text


def _any_text(oid: int) -> st.SearchStrategy[Any]:
    return st.one_of(_printed(oid), edited(oid), st.sampled_from(_NEAR_MISSES.get(oid, [''])),
                     st.sampled_from(_TEXT_NEAR_MISSES), _hostile)


@st.composite
def render_tuples(draw: Any) -> tuple[tuple[Column, ...], list[Any], bool]:
    """Columns, values, and whether every value is text PostgreSQL prints or a null."""
    oids = draw(st.lists(st.sampled_from(RENDER_OIDS), max_size=8))
    values = []
    printed = True
    for oid in oids:
        pick = draw(st.integers(0, 9))
        if pick < 6:
            values.append(draw(st.none() | _printed(oid)))
        else:
            printed = False
            values.append(draw(_any_text(oid) if pick < 9 else st.one_of(
                st.just(UNCHANGED), st.binary(max_size=4).map(bytearray))))
    return columns_of(*oids), values, printed


@needs_native
@fuzz
@given(render_tuples())
def test_render_generated_tuples(case: tuple[tuple[Column, ...], list[Any], bool]) -> None:
    columns, values, printed = case
    frame = b'U\x00\x00\x00\x01N' + tuple_bytes(values)
    result = rendered(columns, frame, 6)
    if printed:  # what PostgreSQL sends is what the renderer is for: it must not decline
        assert result is not None
        assert result[1] == len(frame)


@needs_native
@settings(fuzz, max_examples=1000)
@given(st.sampled_from(RENDER_OIDS).flatmap(lambda oid: st.tuples(st.just(oid), _printed(oid))))
def test_render_every_printed_value(case: tuple[int, str]) -> None:
    oid, text = case
    assert rendered((col(oid),), tuple_bytes([text])) is not None, text


@needs_native
@settings(fuzz, max_examples=2000)
@given(st.sampled_from(RENDER_OIDS).flatmap(lambda oid: st.tuples(st.just(oid), _any_text(oid))))
def test_render_one_value_of_any_text(case: tuple[int, Any]) -> None:
    # One column, so that every value reaches its mode's checks (in a row, the first bad value
    # of another column would decline the tuple first).
    oid, text = case
    rendered((col(oid),), tuple_bytes([text]))


@needs_native
@fuzz
@given(render_tuples(), st.data())
def test_render_damaged_tuples(case: tuple[tuple[Column, ...], list[Any], bool],
                               data: Any) -> None:
    columns, values, _ = case
    buf = damaged(data, values)
    rendered(columns, buf, data.draw(st.integers(0, len(buf) + 1)))


@needs_native
def test_render_declines_every_cut_frame() -> None:
    columns = columns_of(20, 23, 25, NUMERIC, TIMESTAMPTZ, BOOL)
    buf = tuple_bytes(['42', '-7', 'héllo', '1.50', '2024-01-02 03:04:05.5+00', 't'])
    assert rendered(columns, buf) is not None
    for end in range(len(buf)):
        assert rendered(columns, buf[:end]) is None, end


@needs_native
def test_wire_row_renderer_plans() -> None:
    assert wire_row_renderer(table_of(columns_of(*RENDER_OIDS))).__class__.__name__ == 'partial'
    assert wire_row_renderer(table_of(())) is not None
    for other in (FLOAT8, DATE, BYTEA, INT4_ARRAY, 1114, 17):  # JSON forms it does not write
        assert wire_row_renderer(table_of(columns_of(20, other))) is None, other
    twice = (col(20, 'a'), col(25, 'a'))  # a row dict would keep one value
    assert wire_row_renderer(table_of(twice)) is None


def test_without_the_extension_there_is_no_renderer(monkeypatch: Any) -> None:
    monkeypatch.setattr(pgtypes, '_NATIVE_RENDER_TUPLE', None)
    assert wire_row_renderer(table_of(columns_of(20, 25))) is None


def test_an_extension_built_before_the_renderer_still_decodes(monkeypatch: Any) -> None:
    stale = types.ModuleType('transforms.sources.postgres._pgwire')
    stale.decode_tuple = pgtypes._NATIVE_DECODE_TUPLE  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, 'transforms.sources.postgres._pgwire', stale)
    monkeypatch.setattr(postgres, '_pgwire', stale, raising=False)
    assert pgtypes._load_native() == (pgtypes._NATIVE_DECODE_TUPLE, None, None)


@needs_native
def test_a_kind_that_takes_a_json_converter_is_not_rendered(monkeypatch: Any) -> None:
    # The renderer writes uuid text as it is because envelope's JSON form of a uuid is its text;
    # were that to change, its tables must go by the encoder.
    assert wire_row_renderer(table_of(columns_of(20, UUID))) is not None
    monkeypatch.setitem(envelope._JSON_ENCODERS, Kind.UUID, str.upper)
    assert wire_row_renderer(table_of(columns_of(20, UUID))) is None


@needs_native
@pytest.mark.parametrize(('args', 'error'), [
    (((b'"a":',), b's', bytearray(b'\\x00\\x01n'), 0), TypeError),  # bytes only
    (((b'"a":',), b's', memoryview(b'\\x00\\x01n'), 0), TypeError),
    (((b'"a":',), b's', b'\\x00\\x01n', 0.0), TypeError),
    (([b'"a":'], b's', b'\\x00\\x01n', 0), TypeError),
    (((b'"a":',), 's', b'\\x00\\x01n', 0), TypeError),
    ((('"a":',), b's', b'\\x00\\x01n', 0), TypeError),  # a key that is not bytes
    (((b'"a":',), b'ss', b'\\x00\\x01n', 0), ValueError),
    (((b'"a":',), b'c', b'\\x00\\x01n', 0), ValueError),  # decode_tuple's mode, not ours
    (((b'"a":',), b'n', b'\\x00\\x01n', 0), ValueError),
    (((b'"a":',), b's', b'\\x00\\x01n'), TypeError),  # three arguments
])
def test_render_a_wrong_plan_raises(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        _pgwire.render_tuple(*args)


@needs_native
@needs_native
@pytest.mark.parametrize(('parts', 'values', 'error'), [
    ((b'<', b'>'), (1,), TypeError),  # two parts more than values
    ((b'<', b'|', b'>'), (1, 2), TypeError),
    ([b'<', b'|', b'>'], (1,), TypeError),
    ((b'<', b'|', b'>'), [1], TypeError),
    ((b'<', '|', b'>'), (1,), TypeError),  # a part that is not bytes
    ((b'<', b'|', b'>'), ('1',), TypeError),  # a value neither int nor bytes
    ((b'<', b'|', b'>'), (1.5,), TypeError),
])
def test_render_doc_wrong_arguments_raise(parts: Any, values: Any,
                                          error: type[Exception]) -> None:
    with pytest.raises(error):
        _pgwire.render_doc((b'"a":',), b's', b'\x00\x01n', 0, parts, values)


@needs_native
def test_render_doc_declines_what_follows_the_tuple_and_writes_around_the_rest() -> None:
    keys, modes = (b'"a":',), b's'
    assert _pgwire.render_doc(keys, modes, b'\x00\x01n', 0, (b'<', b'|', b'>'), (7,)) \
        == b'<{"a":null}|7>'
    assert _pgwire.render_doc(keys, modes, b'\x00\x01nX', 0, (b'<', b'|', b'>'), (7,)) is None
    assert _pgwire.render_doc(keys, modes, b'\x00\x01', 0, (b'<', b'|', b'>'), (7,)) is None
    assert _pgwire.render_doc(keys, modes, b'\x00\x01n', 0, (b'', b''), ()) == b'{"a":null}'
    big = b'x' * 5000  # past the stack buffer, in a part and in a value
    assert _pgwire.render_doc(keys, modes, b'\x00\x01n', 0, (big, b'|', big), (big,)) \
        == big + b'{"a":null}|' + big + big


@needs_native
def test_render_negative_or_huge_offset_is_out_of_range() -> None:
    assert _pgwire.render_tuple((b'"a":',), b's', b'\x00\x01n', -3) is None
    assert _pgwire.render_tuple((b'"a":',), b's', b'\x00\x01n', 2**70) is None
    assert _pgwire.render_tuple((b'"a":',), b's', b'\x00\x01n', 0) == (b'{"a":null}', 3)


@needs_native
def test_render_no_reference_or_memory_leaks_on_any_path() -> None:
    keys = (b'"a":', b'"b":', b'"c":')
    modes = b'szd'
    big = 'x' * 3000  # past the stack buffer: the heap one must be freed on every path
    cases = [
        tuple_bytes(['x', '2024-01-01 00:00:00+00', '1.5']),  # a row
        tuple_bytes([big, '2024-01-01 00:00:00.5+00', '1.5']),  # a row grown on the heap
        tuple_bytes([big, '2024-01-01 00:00:00+00', '1E5']),  # declined after growing
        tuple_bytes([big, 'infinity', '1.5']),
        tuple_bytes([big, '2024-01-01 00:00:00+00', '1.5'])[:-1],  # runs past the end
        tuple_bytes([big, '2024-01-01 00:00:00+00', UNCHANGED]),
        tuple_bytes([b'\xff', None, None]),  # invalid UTF-8
        tuple_bytes(['x', None]),  # count mismatch
    ]
    parts, values = (b'<' * 2000, b'|', b'|', b'>'), (2**70, b'tx')
    watched = [keys, modes, *keys, parts, values, *parts, *values]
    for buf in [*cases, cases[0] + b'trailing']:
        for offset in (0, 2**70):
            def call(buf: bytes = buf, offset: int = offset) -> Any:
                return _pgwire.render_tuple(keys, modes, buf, offset)

            def call_doc(buf: bytes = buf, offset: int = offset) -> Any:
                return _pgwire.render_doc(keys, modes, buf, offset, parts, values)

            for function in (call, call_doc):
                counts = [sys.getrefcount(o) for o in [*watched, buf]]
                assert _leaked_bytes(function) < 4096, (buf[:40], offset)
                assert [sys.getrefcount(o) for o in [*watched, buf]] == counts, \
                    (buf[:40], offset)
