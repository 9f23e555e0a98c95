"""Row image decoders compiled once per table map: the hot loop of the binlog source.

A ROWS event is a run of row images, each a null bitmap then the values of the non-null
columns back to back, with no per-value type tags: how to read a value follows only from the
TABLE_MAP.  Interpreting that metadata per value is what makes generic decoders slow (one
function call, a type dispatch and a dict per value).  Instead, for each table map (and set of
columns present in the images) this module writes the Python source of one function that reads
every row of an event, column by column, as straight-line code, and compiles it once::

    decode = compile_rows(columns, present=(0, 1, 2))
    rows = decode(event_bytes, first_row_offset, end_offset)   # [{'id': 1, 'name': 'a', ...}]

Measured trade-offs behind the shape of the generated code:

* adjacent fixed-width little-endian columns (integers, doubles, YEAR, DATE, BIT(1)) are read
  with ONE precompiled ``struct.Struct.unpack_from`` when none of them is NULL in the row, which
  is most rows; the generic per-column path runs only when a nullable column in the run is NULL;
* NOT NULL columns skip the null-bit test altogether;
* the row dict is built with a literal of constant keys (the column names, inserted with
  ``repr``, which always yields a valid string literal) rather than ``dict(zip(...))``.

The generated source is kept on the function (``decode.source``) for debugging.  Values are
what ``types.py`` documents; a malformed image raises (IndexError, struct.error, ValueError,
UnicodeDecodeError), which the caller turns into one error naming the event.
"""
from __future__ import annotations

import datetime as dt
import decimal
import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from transforms.sources.mysql import types as t
from transforms.sources.mysql.json_binary import to_json_text

__all__ = ['RowsDecoder', 'compile_rows']

RowsDecoder = Callable[[bytes, int, int], list[Any]]

# A column either joins a fixed-width run: (struct format, item count, value expression over
# the items '{0}', '{1}' …), or is read by its own lines of code (setting ``v``).
_Fixed = tuple[str, int, str]


def _length_prefix(width: int) -> str:
    """A line setting ``q`` to the end of a value whose ``width``-byte length is at ``p``; the
    value then is ``b[p + width:q]`` (followed by ``p = q``)."""
    if width == 1:
        return 'q = p + 1 + b[p]'
    if width == 2:
        return 'q = p + 2 + (b[p] | b[p + 1] << 8)'
    if width == 3:
        return 'q = p + 3 + (b[p] | b[p + 1] << 8 | b[p + 2] << 16)'
    if width == 4:
        return 'q = p + 4 + _U32(b, p)[0]'
    raise t.UnsupportedColumnError(f'length prefix of {width} bytes')


class _Generator:
    """Builds the source of one rows decoder; ``ns`` collects the helpers it refers to."""

    def __init__(self, columns: Sequence[t.ColumnInfo]) -> None:
        self.columns = columns
        self.ns: dict[str, Any] = {'_U32': struct.Struct('<I').unpack_from, '_Decimal': Decimal,
                                   '_date': t.date_from_int}
        self._structs = 0
        self.decimal_precision = 0  # the widest DECIMAL with a scale, 0 if none

    def helper(self, value: Any, stem: str) -> str:
        name = f'_{stem}{len(self.ns)}'
        self.ns[name] = value
        return name

    def big_endian(self, size: int) -> str:
        """An expression for the unsigned big-endian integer of ``size`` bytes at ``p``."""
        if size in (4, 8):  # struct reads without slicing a bytes object first
            unpack = struct.Struct('>I' if size == 4 else '>Q').unpack_from
            return f'{self.helper(unpack, "BE")}(b, p)[0]'
        return f"int.from_bytes(b[p:p + {size}], 'big')"

    def struct(self, fmt: str) -> tuple[str, int]:
        compiled = struct.Struct('<' + fmt)
        return self.helper(compiled.unpack_from, 'S'), compiled.size

    def fixed(self, c: t.ColumnInfo) -> _Fixed | None:
        u = c.unsigned
        if c.type == t.TINY:
            return ('B' if u else 'b', 1, '{0}')
        if c.type == t.SHORT:
            return ('H' if u else 'h', 1, '{0}')
        if c.type == t.INT24:
            # low 16 bits unsigned + high byte (signed for a signed column) = a 24-bit int
            return ('HB' if u else 'Hb', 2, '({0} | {1} << 16)')
        if c.type == t.LONG:
            return ('I' if u else 'i', 1, '{0}')
        if c.type == t.LONGLONG:
            return ('Q', 1, '_Decimal({0})') if u else ('q', 1, '{0}')
        if c.type == t.DOUBLE:
            return ('d', 1, '{0}')
        if c.type == t.YEAR:
            return ('B', 1, '(1900 + {0} if {0} else 0)')
        if c.type in (t.DATE, t.NEWDATE):
            return ('HB', 2, '_date({0} | {1} << 16)')
        if c.type == t.BIT and c.length == 1:
            return ('B', 1, '({0} != 0)')
        return None

    def code(self, c: t.ColumnInfo, v: str) -> list[str]:
        """Lines reading column ``c`` at ``p`` into variable ``v`` and moving ``p`` past it."""
        fixed = self.fixed(c)
        if fixed is not None:
            fmt, items, expr = fixed
            unpack, size = self.struct(fmt)
            names = [f'a{i}' for i in range(items)]
            return [f'{", ".join(names)}, = {unpack}(b, p); p += {size}',
                    f'{v} = ' + expr.format(*names)]
        reader: Callable[..., Any]
        if c.type == t.FLOAT:
            return [f'{v} = {self.helper(t.float32, "f32_")}(b, p); p += 4']
        if c.type == t.NEWDECIMAL:
            return self._decimal(c, v)
        if c.type in (t.TIME2, t.DATETIME2, t.TIMESTAMP2) and c.fsp > 6:
            raise t.UnsupportedColumnError(f'column {c.name!r}: fsp {c.fsp} > 6')
        if c.type == t.DATETIME2:
            return self._datetime2(c, v)
        if c.type == t.TIMESTAMP2:
            return self._timestamp2(c, v)
        if c.type == t.TIME2:
            size, reader = t.time2_reader(c.fsp)
            return [f'{v} = {self.helper(reader, "tm")}(b, p); p += {size}']
        if c.type in (t.TIME, t.DATETIME, t.TIMESTAMP):
            reader, size = {t.TIME: (t.old_time, 3), t.DATETIME: (t.old_datetime, 8),
                            t.TIMESTAMP: (t.old_timestamp, 4)}[c.type]
            return [f'{v} = {self.helper(reader, "tm")}(b, p); p += {size}']
        if c.type in (t.STRING, t.VARCHAR, t.VAR_STRING):
            width = 1 if c.length < 256 else 2
            value = f'b[p + {width}:q]'
            decode = t.text_decoder(c.collation)
            if decode is None and c.type == t.STRING:
                # BINARY(n) loses its trailing zero bytes in the binlog; SELECT shows n bytes.
                value += f".ljust({c.length}, b'\\0')"
            elif decode is t._utf8:
                value += ".decode('utf-8')"
            elif decode is not None:
                value = f'{self.helper(decode, "txt")}({value})'
            return [_length_prefix(width), f'{v} = {value}; p = q']
        if c.type in (t.BLOB, t.TINY_BLOB, t.MEDIUM_BLOB, t.LONG_BLOB, t.JSON, t.GEOMETRY):
            value = f'b[p + {c.length}:q]'
            if c.type == t.JSON:
                value = f'{self.helper(to_json_text, "json")}({value})'
            elif c.type == t.GEOMETRY:
                value = f'{self.helper(t.geometry_value, "geo")}({value})'
            else:
                decode = t.text_decoder(c.collation)
                if decode is t._utf8:
                    value += ".decode('utf-8')"
                elif decode is not None:
                    value = f'{self.helper(decode, "txt")}({value})'
            return [_length_prefix(c.length), f'{v} = {value}; p = q']
        if c.type == t.ENUM:
            # index 0 is the empty string MySQL stores for an invalid value
            labels = self.helper(('', *c.symbols), 'enum')
            index = 'b[p]' if c.length == 1 else 'b[p] | b[p + 1] << 8'
            return [f'{v} = {labels}[{index}]; p += {c.length}']
        if c.type == t.SET:
            members = self.helper(t.set_reader(c.symbols), 'set')
            return [f"{v} = {members}(int.from_bytes(b[p:p + {c.length}], 'little'));"
                    f' p += {c.length}']
        if c.type == t.BIT:
            width = (c.length + 7) // 8
            return [f'{v} = b[p:p + {width}]; p += {width}']
        if c.type == t.NULL:
            return [f'{v} = None']
        t.to_column(c)  # raises the specific UnsupportedColumnError
        raise t.UnsupportedColumnError(f'column {c.name!r}: type {c.type} not supported')

    # DECIMAL, DATETIME and TIMESTAMP are inlined: a function call per value costs as much
    # as the arithmetic (see types.py for the formats).

    def _decimal(self, c: t.ColumnInfo, v: str) -> list[str]:
        # Non-negative values (the common case) unpack straight into their digit groups
        # with one struct call; a negative one (all bits inverted) takes the generic reader.
        fmt, terms, weight, items = '', [], 1, 0
        for width, digits in reversed(t.decimal_groups(c.precision, c.scale)):
            if width == 3:  # no 3-byte struct code: a byte and a short
                fmt = 'BH' + fmt
                group = '(g{} << 16 | g{})'
                count = 2
            else:
                fmt = {1: 'B', 2: 'H', 4: 'I'}[width] + fmt
                group, count = 'g{}', 1
            terms.append((group, count, weight))
            weight *= 10 ** digits
            items += count
        names = [f'g{i}' for i in range(items)]
        parts, index = [], items
        for group, count, w in terms:  # least significant first
            index -= count
            text = group.format(*range(index, index + count))
            parts.append(text if w == 1 else f'{text} * {w}')
        top_bit = 0x80 << (8 * ({'B': 1, 'H': 2, 'I': 4}[fmt[0]] - 1))
        parts[-1] = parts[-1].replace('g0', f'(g0 ^ {top_bit})', 1)
        unscaled = f"_Decimal({' + '.join(reversed(parts))})"
        size, slow = t.decimal_reader(c.precision, c.scale)
        unpack = self.helper(struct.Struct('>' + fmt).unpack_from, 'D')
        if c.scale:
            # Multiplying by 1E-scale is exact, and fastest, when the thread's decimal
            # context has room for every digit (checked once per event: ``exact``).
            self.ns['_EXACT'] = t._EXACT
            self.decimal_precision = max(self.decimal_precision, c.precision)
            factor = self.helper(Decimal(1).scaleb(-c.scale), 'E')
            value = (f'({unscaled} * {factor} if exact else '
                     f'{unscaled}.scaleb({-c.scale}, _EXACT))')
        else:
            value = unscaled
        return [f'{", ".join(names)}, = {unpack}(b, p)',
                f'{v} = {value} if g0 & {top_bit} else {self.helper(slow, "dneg")}(b, p)',
                f'p += {size}']

    def _datetime2(self, c: t.ColumnInfo, v: str) -> list[str]:
        size, slow = t.datetime2_reader(c.fsp)
        frac_bits = 8 * (size - 5)
        self.ns['_datetime'] = dt.datetime
        fallback = self.helper(slow, 'dt')
        unit = t._FRAC_UNIT[c.fsp]
        us = f', (x & {(1 << frac_bits) - 1}){f" * {unit}" if unit > 1 else ""}' \
            if frac_bits else ''
        whole = f'(x >> {frac_bits})' if frac_bits else 'x'
        # h: sign bit, (year * 13 + month) 17 bits, day 5, hour 5, minute 6, second 6
        return [f'x = {self.big_endian(size)}; p += {size}',
                f'h = {whole} - 0x8000000000; ym = h >> 22',
                'try:',
                f'    {v} = _datetime(ym // 13, ym % 13, h >> 17 & 31, h >> 12 & 31,'
                f' h >> 6 & 63, h & 63{us})',
                'except ValueError:',
                f'    {v} = {fallback}(b, p - {size})']

    def _timestamp2(self, c: t.ColumnInfo, v: str) -> list[str]:
        size, slow = t.timestamp2_reader(c.fsp)
        frac_bits = 8 * (size - 4)
        zero = self.helper(slow(bytes(size), 0), 'zero')
        self.ns['_EPOCH'], self.ns['_td'] = t._EPOCH, dt.timedelta
        if frac_bits:
            delta = (f'_td(0, x >> {frac_bits}, (x & {(1 << frac_bits) - 1})'
                     f'{f" * {t._FRAC_UNIT[c.fsp]}" if t._FRAC_UNIT[c.fsp] > 1 else ""})')
        else:
            delta = '_td(0, x)'
        return [f'x = {self.big_endian(size)}; p += {size}',
                f'{v} = _EPOCH + {delta} if x else {zero}']

    def image(self, present: Sequence[int], indent: str) -> tuple[list[str], str]:
        """Lines decoding one row image into v<i> variables, and the dict literal of them."""
        nulls = (len(present) + 7) // 8
        lines = [f"n = int.from_bytes(b[p:p + {nulls}], 'little'); p += {nulls}"
                 if nulls > 1 else 'n = b[p]; p += 1']
        cols = [self.columns[i] for i in present]
        k = 0
        while k < len(cols):
            run_end = k
            while run_end < len(cols) and self.fixed(cols[run_end]) is not None:
                run_end += 1
            if run_end - k >= 2:
                lines += self._merged_run(cols, k, run_end)
                k = run_end
            else:
                lines += self._one(cols[k], k)
                k += 1
        entries = ', '.join(f'{cols[k].name!r}: v{k}' for k in range(len(cols))
                            if not cols[k].hidden)
        return [indent + line for line in lines], '{' + entries + '}'

    def _one(self, c: t.ColumnInfo, k: int) -> list[str]:
        body = self.code(c, f'v{k}')
        if not c.nullable:
            return body
        return [f'if n & {1 << k}:', f'    v{k} = None', 'else:'] + ['    ' + x for x in body]

    def _merged_run(self, cols: Sequence[t.ColumnInfo], start: int, end: int) -> list[str]:
        fmt, exprs, targets = '', [], []
        for k in range(start, end):
            fixed = self.fixed(cols[k])
            assert fixed is not None
            f, count, expr = fixed
            fmt += f
            if expr == '{0}':  # the unpacked item is the value: unpack straight into it
                targets.append(f'v{k}')
                continue
            names = [f'a{len(targets) + i}' for i in range(count)]
            targets += names
            exprs.append(f'v{k} = ' + expr.format(*names))
        unpack, size = self.struct(fmt)
        merged = [f'{", ".join(targets)}, = {unpack}(b, p); p += {size}', *exprs]
        mask = sum(1 << k for k in range(start, end) if cols[k].nullable)
        if not mask:
            return merged
        slow: list[str] = []
        for k in range(start, end):
            slow += self._one(cols[k], k)
        return ([f'if not n & {mask}:'] + ['    ' + x for x in merged] + ['else:']
                + ['    ' + x for x in slow])


def compile_rows(columns: Sequence[t.ColumnInfo], present: Sequence[int],
                 present_after: Sequence[int] | None = None) -> RowsDecoder:
    """A function ``(data, start, end) -> rows`` for the rows of one event.

    ``present`` lists the indexes of the columns in each image (all of them with
    binlog_row_image=FULL).  With ``present_after`` (UPDATE events) each row is a
    ``(before, after)`` pair of dicts, the after image holding those columns; else a dict.
    Raises UnsupportedColumnError when a present column cannot be decoded.
    """
    gen = _Generator(columns)
    loop, before_dict = gen.image(present, '        ')
    if present_after is None:
        loop.append(f'        append({before_dict})')
    else:
        loop.append(f'        r = {before_dict}')
        after_lines, after_dict = gen.image(present_after, '        ')
        loop += after_lines
        loop.append(f'        append((r, {after_dict}))')
    prelude = []
    if gen.decimal_precision:
        gen.ns['_getcontext'] = decimal.getcontext
        prelude = ['    c = _getcontext()',
                   f'    exact = c.prec >= {gen.decimal_precision} and c.Emin <= -30'
                   ' and c.Emax >= 65']
    src = ['def decode_rows(b, p, end):',
           '    out = []',
           *prelude,
           '    append = out.append',
           '    while p < end:',
           *loop]
    hint = ''
    if any(columns[i].type in (t.TIME, t.DATETIME, t.TIMESTAMP) for i in present):
        # MariaDB's pre-5.6 "hires" temporals (mysql56_temporal_format=OFF) with fractional
        # seconds take more bytes than the binlog's metadata says; nothing can decode them.
        hint = ('; if a time/datetime/timestamp column has fractional seconds in the old '
                'format, rebuild the table (ALTER TABLE … FORCE) with '
                'mysql56_temporal_format=ON')
    src += ['    if p != end:',
            f"        raise ValueError(f'row image ends at {{p}}, event data at {{end}}{hint}')",
            '    return out']
    source = '\n'.join(src) + '\n'
    namespace = dict(gen.ns)
    exec(compile(source, '<binlog rows decoder>', 'exec'), namespace)
    decode: Any = namespace['decode_rows']
    decode.source = source
    return decode
