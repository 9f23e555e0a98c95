"""The SQL sink's COPY text in C (``_copytext``) against its Python path, value for value.

What a user checks is that a replica holds the source's values; the sink tests do that end to
end.  Here the two renderers of the same rows must give the same text, for every kind the C
path takes and for the values it hands back to Python (another type, a zone other than UTC,
an array element needing quotes, a lone surrogate)."""
from __future__ import annotations

import datetime as dt
import math
import os
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.envelope import Column, Kind
from transforms.sinks.sql import copytext

try:
    from transforms.sinks.sql import _copytext
except ImportError:  # built without a compiler: the Python path alone
    _copytext = None  # type: ignore[assignment]

needs_native = pytest.mark.skipif(
    _copytext is None, reason='transforms.sinks.sql._copytext was not built (no C compiler?)')
UTC = dt.timezone.utc


def test_extension_is_built_on_ci() -> None:
    if not os.environ.get('CI'):
        pytest.skip('CI is not set: a checkout without a C compiler may run the Python path')
    from transforms.sinks.sql import _copytext as built  # must not raise
    assert copytext._copytext is built


texts = st.text(st.characters(blacklist_categories=('Cs',)), max_size=12) | st.sampled_from(
    ['', 'a\\b', 'tab\there', 'nl\nand\rcr', '\\N', 'é€😀', '"quoted"'])
aware = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                     timezones=st.just(UTC))
# A column's values: mostly its own type; sometimes one a fast path does not take.
KINDS: dict[str, tuple[Column, Any]] = {
    'int': (Column('c', Kind.INT64), st.integers() | st.booleans()),
    'text': (Column('c', Kind.STRING), texts | st.integers()),
    'json': (Column('c', Kind.JSON), texts),
    'decimal': (Column('c', Kind.DECIMAL), st.decimals(allow_nan=True) | st.integers()),
    'float': (Column('c', Kind.FLOAT64), st.floats()),
    'timestamptz': (Column('c', Kind.TIMESTAMPTZ),
                    aware | st.datetimes(timezones=st.just(dt.timezone(dt.timedelta(hours=2))))
                    | st.datetimes() | st.sampled_from(['infinity'])),
    'timestamp': (Column('c', Kind.TIMESTAMP), st.datetimes() | aware),
    'date': (Column('c', Kind.DATE), st.dates() | st.datetimes() | st.just('10000-01-01')),
    'bytes': (Column('c', Kind.BYTES), st.binary(max_size=10)),
    'bool': (Column('c', Kind.BOOLEAN), st.booleans() | st.integers(0, 1)),
    'text array': (Column('c', Kind.ARRAY, element=Kind.TEXT),
                   st.lists(texts | st.none(), max_size=3)),
    'int array': (Column('c', Kind.ARRAY, element=Kind.INT32),
                  st.lists(st.integers() | st.none(), max_size=3)),
}


@st.composite
def tables(draw: Any) -> tuple[list[Column], list[list[Any]], list[str]]:
    names = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=5))
    columns = [Column(f'c{i}', KINDS[n][0].kind, element=KINDS[n][0].element)
               for i, n in enumerate(names)]
    plain = draw(st.booleans())  # often every value of the column's own type: the C path
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row = []
        for name in names:
            values = KINDS[name][1]
            if plain:
                values = {'int': st.integers(), 'text': texts,
                          'decimal': st.decimals(allow_nan=False), 'timestamptz': aware,
                          'timestamp': st.datetimes(), 'date': st.dates(),
                          'bool': st.booleans(), 'float': st.floats(allow_nan=False,
                                                                    allow_infinity=False),
                          'text array': st.lists(st.text('abc é', max_size=3), max_size=3),
                          'int array': st.lists(st.integers(), max_size=3)}.get(name, values)
            row.append(draw(st.none() | values))
        rows.append(row)
    tails = draw(st.just([]) | st.just([f'pos{i}' for i in range(len(rows))]))
    return columns, rows, tails


@needs_native
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_c_and_python_give_the_same_copy_text(table: Any) -> None:
    columns, rows, tails = table
    assert copytext.rows_text(columns, rows, tails) == copytext._rows_text(columns, rows, tails)


@needs_native
def test_what_the_c_path_renders_and_what_it_hands_back() -> None:
    columns = [Column('id', Kind.INT64), Column('price', Kind.DECIMAL),
               Column('seen', Kind.TIMESTAMPTZ), Column('name', Kind.TEXT),
               Column('tags', Kind.ARRAY, element=Kind.TEXT), Column('blob', Kind.BYTES),
               Column('ok', Kind.BOOLEAN), Column('day', Kind.DATE), Column('x', Kind.FLOAT64)]
    codes = copytext._native_codes(columns)
    assert codes is not None
    row = [2**70, Decimal('-0.010'), dt.datetime(2024, 2, 29, 23, 59, 59, 5, tzinfo=UTC),
           'a\\b\tc\nd\re', ['x', 'é'], b'\x00\xab', False, dt.date(33, 1, 2), 0.1]
    assert _copytext.rows_text(codes, [row, [None] * 9], ['t1', 't2']) == (
        '1180591620717411303424\t-0.010\t2024-02-29T23:59:59.000005+00:00\t'
        'a\\\\b\\tc\\nd\\re\t{"x","é"}\t\\\\x00ab\tf\t0033-01-02\t0.1\tt1\n'
        + '\t'.join(['\\N'] * 9) + '\tt2\n')
    # Handed back: Python renders such rows (quotes it the C path does not, other zones).
    for value, index in ((['say "hi"'], 4), (dt.datetime(2024, 1, 1, tzinfo=dt.timezone(
            dt.timedelta(hours=1))), 2), (True, 0), (math.inf, 8), ('\ud800', 3), (1, 3)):
        changed = list(row)
        changed[index] = value
        assert _copytext.rows_text(codes, [changed], []) is None, value
    # A row of the wrong length, or tails that do not match: Python says what is wrong.
    assert _copytext.rows_text(codes, [row[:-1]], []) is None
    assert _copytext.rows_text(codes, [row], ['a', 'b']) is None
    with pytest.raises(ValueError):
        copytext.rows_text(columns, [row[:-1]])
    # A kind the C path does not take: no codes, the Python path.
    assert copytext._native_codes([Column('t', Kind.TIME)]) is None
