"""What a target table needs so it can hold the rows of a new source schema (pure, no driver).

    plan = plan_alteration(target_columns, event.table,
                           wanted=lambda c: postgres_type(c, 'postgresql'), dialect='postgresql')
    plan.add, plan.widen, plan.relax       # the ALTERs to run before the new version's rows
    plan.problems                          # why the target cannot follow (the rows dead-letter)

Targets only ever grow, so every version's rows keep fitting and a replayed old row still lands:

* a new source column is added, nullable; one whose ``Column.default`` is set (the value rows
  older than the column read at the source, e.g. after ``ADD COLUMN c int DEFAULT 7``) is added
  with that value as its DEFAULT, so the target's existing rows get it, and the DEFAULT is
  dropped right after (``add_default`` / ``drop_defaults``): later rows come with their values;
* a retyped column is widened only when the target's current type cannot hold the new type's
  values (``integer`` → ``bigint``, ``varchar(10)`` → ``text``, ``numeric(10,2)`` →
  ``numeric(14,4)``, ``VARBINARY(4)`` → ``LONGBLOB``, ``DATETIME`` → ``DATETIME(6)``, anything
  → ``text``): to the new source type when that holds every value the target already has,
  else to the narrowest type holding both.  A source type that got
  narrower (``bigint`` → ``integer``) needs nothing: the target still holds it.  Unless the
  narrowing rounds (``numeric(10,2)`` → ``numeric(10,0)`` or ``integer``, ``double`` →
  ``real``, ``DATETIME(6)`` → ``DATETIME``): the source's ALTER rewrote every row with the
  rounded value, which the log never shows, so the target column is converted the same way
  (``narrow``);
* a column the source no longer has (dropped, or renamed: the log shows a drop plus an add) is
  kept, made nullable if needed; sinks write NULL into it from then on.  It is marked in the
  target's catalog (``mark``, a column comment), so that when a column of that name comes back
  the kept one, with its old values, is dropped and the column added as new (``readd``): the
  source's existing rows read the new column's default, not the old values;
* anything else (``text`` → ``integer``, ``date`` → ``timestamp``, a changed key) is a problem:
  converting would fail or change values, so the sink refuses with the column and both types.

A schema *older* than the target's shape (rows replayed after a restart, from before a
column was widened) only needs its values to fit: a ``text`` column the sink widened from
``integer`` stores the old integers as text, as the source's own ALTER converted them
(``older=True``).

Type texts are compared as shapes (integer ranges, decimal digits, string and byte string
lengths, digits of a second, enum labels) after the dialect's aliases are folded, so
``varchar(10)`` and ``character varying(10)``, or ``INT`` and ``int(11)``, are the same type.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from transforms.envelope import Column, TableSchema
from transforms.sinks.sql.routing import TargetTable
from transforms.sinks.sql.statements import (
    POS,
    RESERVED,
    ROW_ID,
    ColumnDef,
    my_ident,
    my_table,
    pg_ident,
    pg_table,
)

__all__ = ['DROPPED_NOTE', 'Alteration', 'TargetColumn', 'add_default', 'drop_defaults',
           'filled', 'holds', 'narrowed', 'plan_alteration', 'storable', 'widened']

DIALECTS = ('postgresql', 'mysql')
DROPPED_NOTE = 'changebeam: dropped at the source'
"""The comment marking a target column kept after the source dropped it."""


@dataclasses.dataclass(frozen=True)
class TargetColumn:
    """A column as the target's catalog shows it: type text, nullability, primary-key part."""

    name: str
    type: str
    nullable: bool = True
    key: bool = False
    dropped: bool = False  # marked as kept after the source dropped it (``DROPPED_NOTE``)


@dataclasses.dataclass(frozen=True)
class Widening:
    """``column`` goes from the target's ``old`` type to ``new`` (``nullable`` as it was)."""

    column: str
    old: str
    new: str
    nullable: bool


@dataclasses.dataclass(frozen=True)
class Alteration:
    """The ALTERs that let a target table hold one source schema; empty when none is needed.

    ``kept`` are target columns the schema lacks (the sink writes NULL into them); ``relax``
    those of them that must drop NOT NULL first (as ``TargetColumn`` s, for their types);
    ``hidden`` the sink's bookkeeping columns a table made by someone else lacks; ``defaults``
    the source columns among ``add`` whose ``default`` the target's existing rows must get;
    ``mark`` kept columns to mark as dropped at the source; ``readd`` marked columns the schema
    has again, dropped before being added anew (they are in ``add``); ``narrow`` columns
    converted to a type with fewer digits of a fraction, as the source's ALTER rounded them.
    """

    add: tuple[ColumnDef, ...] = ()
    widen: tuple[Widening, ...] = ()
    relax: tuple[TargetColumn, ...] = ()
    hidden: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    defaults: tuple[Column, ...] = ()
    mark: tuple[TargetColumn, ...] = ()
    readd: tuple[str, ...] = ()
    narrow: tuple[Widening, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.widen or self.relax or self.hidden or self.mark
                    or self.narrow)


# ---------------------------------------------------------------------------------------------
# Type shapes

@dataclasses.dataclass(frozen=True)
class _Shape:
    family: str  # 'int', 'numeric', 'float', 'string', 'bytes', 'temporal', 'enum' or 'other'
    low: int = 0  # int: the range
    high: int = 0
    digits: int | None = None  # numeric: digits before the point; None: unbounded
    scale: int | None = None  # numeric: digits after it; None: unbounded; temporal: of seconds
    bits: int = 0  # float: mantissa bits
    length: int | None = None  # string: characters, bytes: bytes; None: unbounded
    symbols: tuple[str, ...] = ()  # enum labels
    text: str = ''  # other: the normalized type text; temporal: the type's name


def _int(bits: int, unsigned: bool = False) -> _Shape:
    if unsigned:
        return _Shape('int', 0, 2 ** bits - 1)
    return _Shape('int', -2 ** (bits - 1), 2 ** (bits - 1) - 1)


_PG_INTS = {'smallint': 16, 'int2': 16, 'integer': 32, 'int': 32, 'int4': 32, 'bigint': 64,
            'int8': 64}
_PG_FLOATS = {'real': 24, 'float4': 24, 'double precision': 53, 'float8': 53, 'float': 53}
_PG_ALIASES = {
    'bool': 'boolean',
    'timestamptz': 'timestamp with time zone',
    'timetz': 'time with time zone',
    'char': 'character',
    'bpchar': 'character',
    'varbit': 'bit varying',
}
_MY_INTS = {'tinyint': 8, 'bool': 8, 'boolean': 8, 'smallint': 16, 'mediumint': 24, 'int': 32,
            'integer': 32, 'bigint': 64}
_MY_FLOATS = {'float': 24, 'double': 53, 'double precision': 53, 'real': 53}
# MariaDB's TEXT types hold bytes; in characters of utf8mb4 (up to 4 bytes each) that is:
_MY_TEXTS = {'tinytext': 63, 'text': 16383, 'mediumtext': 4194303, 'longtext': None,
             'json': None}
# Byte strings by their maximum length in bytes.  Not BINARY(n): it pads its values to n bytes,
# so a wider one changes the values the target already holds.
_MY_BLOBS = {'tinyblob': 255, 'blob': 65535, 'mediumblob': 16777215, 'longblob': None}
# Types that keep 0-6 digits of fractions of a second (0 when no precision is given).
_MY_TEMPORALS = ('datetime', 'time', 'timestamp')
_MY_ALIASES = {'dec': 'decimal', 'fixed': 'decimal', 'numeric': 'decimal',
               'character varying': 'varchar'}

_NAME_ARGS = re.compile(r'^([a-z][a-z0-9_ ]*[a-z0-9_]|[a-z])\s*(?:\(([^()]*)\))?\s*([a-z ]*)$')
_NUMBERS = re.compile(r'^\s*(\d+)\s*(?:,\s*(\d+)\s*)?$')
_LABEL = re.compile(r"'((?:[^'\\]|''|\\.)*)'")


def _normal(text: str) -> str:
    """Lower case and single spaces, except inside double quotes (quoted names keep case)."""
    parts = re.split(r'("(?:[^"]|"")*")', text.strip())
    return ''.join(p if p.startswith('"') else ' '.join(p.lower().split()) for p in parts)


def _numeric(args: str | None, default: tuple[int | None, int | None]) -> _Shape | None:
    if args is None:
        precision, scale = default
    else:
        match = _NUMBERS.match(args)
        if match is None:
            return None
        precision, scale = int(match.group(1)), int(match.group(2) or 0)
    if precision is None:
        return _Shape('numeric')
    return _Shape('numeric', digits=precision - (scale or 0), scale=scale or 0)


def shape(type_text: str, dialect: str) -> _Shape:
    """The shape of a type text of ``dialect`` ('postgresql' or 'mysql')."""
    text = _normal(type_text)
    if dialect == 'postgresql':
        return _pg_shape(text)
    return _my_shape(text)


def _parts(text: str, suffixes: tuple[str, ...]) -> tuple[str, str | None, str] | None:
    """(name, arguments, tail) of ``int(11) unsigned``, ``timestamp with time zone`` …"""
    match = _NAME_ARGS.match(text)
    if match is None:
        return None
    name, args, tail = match.group(1), match.group(2), match.group(3).strip()
    for suffix in suffixes:
        if not tail and name.endswith(' ' + suffix):
            name, tail = name[:-len(suffix) - 1], suffix
    return name, args, tail


def _pg_shape(text: str) -> _Shape:
    if text.endswith('[]'):  # arrays: compared as their element type's text
        element = _pg_shape(text[:-2].strip())
        return _Shape('other', text=(element.text or repr(element)) + '[]')
    parts = _parts(text, ('with time zone', 'without time zone'))
    if parts is None:
        return _Shape('other', text=text)
    name, args, tail = parts
    if name in _PG_INTS and args is None and not tail:
        return _int(_PG_INTS[name])
    if name in ('numeric', 'decimal') and not tail:
        return _numeric(args, (None, None)) or _Shape('other', text=text)
    if name in _PG_FLOATS and args is None and not tail:
        return _Shape('float', bits=_PG_FLOATS[name])
    if name == 'text' and args is None and not tail:
        return _Shape('string')
    if name in ('character varying', 'varchar') and not tail:
        if args is None:
            return _Shape('string')
        numbers = _NUMBERS.match(args)
        if numbers and numbers.group(2) is None:
            return _Shape('string', length=int(numbers.group(1)))
    name = _PG_ALIASES.get(name, name)
    for zone in ('with time zone', 'without time zone'):
        if name.endswith(' ' + zone):
            name, tail = name[:-len(zone) - 1], zone
    if name in ('timestamp', 'time') and not tail:
        tail = 'without time zone'
    arguments = f'({args.replace(" ", "")})' if args is not None else ''
    return _Shape('other', text=' '.join(p for p in (name + arguments, tail) if p))


def _my_shape(text: str) -> _Shape:
    text = text.replace(' zerofill', '')
    if text.startswith('enum(') and text.endswith(')'):
        labels = tuple(m.group(1).replace("''", "'") for m in _LABEL.finditer(text[5:-1]))
        return _Shape('enum', symbols=labels)
    parts = _parts(text, ('unsigned', 'signed'))
    if parts is None:
        return _Shape('other', text=text)
    name, args, tail = parts
    name = _MY_ALIASES.get(name, name)
    if name == 'year' and args in (None, '4') and not tail:
        # A column created as `year` reads back from information_schema as `year(4)`.
        return _Shape('other', text='year')
    if name in _MY_INTS and tail in ('', 'unsigned', 'signed'):
        return _int(_MY_INTS[name], unsigned=tail == 'unsigned')
    if name == 'decimal' and tail in ('', 'signed'):
        return _numeric(args, (10, 0)) or _Shape('other', text=text)
    if name in _MY_FLOATS and args is None and tail in ('', 'signed'):
        return _Shape('float', bits=_MY_FLOATS[name])
    if name in _MY_TEXTS and args is None and not tail:
        return _Shape('string', length=_MY_TEXTS[name])
    if name == 'varchar' and args is not None and not tail:
        numbers = _NUMBERS.match(args)
        if numbers and numbers.group(2) is None:
            return _Shape('string', length=int(numbers.group(1)))
    if name in _MY_BLOBS and args is None and not tail:
        return _Shape('bytes', length=_MY_BLOBS[name])
    if name == 'varbinary' and args is not None and not tail:
        numbers = _NUMBERS.match(args)
        if numbers and numbers.group(2) is None:
            return _Shape('bytes', length=int(numbers.group(1)))
    if name in _MY_TEMPORALS and not tail:
        numbers = _NUMBERS.match(args or '0')
        if numbers and numbers.group(2) is None:
            return _Shape('temporal', scale=int(numbers.group(1)), text=name)
    return _Shape('other', text=text)


def _magnitude(s: _Shape) -> int:
    return max(-s.low, s.high)


def _int_digits(s: _Shape) -> int:
    return len(str(_magnitude(s)))


def _holds(target: _Shape, new: _Shape) -> bool:
    t, n = target, new
    if t.text == 'interval' and n.text.startswith('time') and n.text.endswith(' without time zone'):
        return True  # a time of day is a duration since midnight (MariaDB TIME: a duration)
    if t.family == n.family:
        if t.family == 'int':
            return t.low <= n.low and t.high >= n.high
        if t.family == 'numeric':
            return ((t.digits is None or (n.digits is not None and t.digits >= n.digits))
                    and (t.scale is None or (n.scale is not None and t.scale >= n.scale)))
        if t.family == 'float':
            return t.bits >= n.bits
        if t.family in ('string', 'bytes'):
            return t.length is None or (n.length is not None and t.length >= n.length)
        if t.family == 'temporal':  # more digits of a second keep every value as it was
            return t.text == n.text and (t.scale or 0) >= (n.scale or 0)
        if t.family == 'enum':
            return set(n.symbols) <= set(t.symbols)
        return t.text == n.text
    if t.family == 'numeric' and n.family == 'int':
        return t.digits is None or 10 ** t.digits > _magnitude(n)
    if t.family == 'int' and n.family == 'numeric':
        if n.scale != 0 or n.digits is None:
            return False
        return t.low <= -(10 ** n.digits - 1) and t.high >= 10 ** n.digits - 1
    if t.family == 'float' and n.family == 'int':
        return _magnitude(n) <= 2 ** t.bits  # every such integer is exact
    if t.family == 'string' and n.family == 'enum':
        return t.length is None or all(len(s) <= t.length for s in n.symbols)
    return False


def holds(target_type: str, new_type: str, dialect: str) -> bool:
    """Whether a column of ``target_type`` can hold every value of ``new_type`` unchanged."""
    return _holds(shape(target_type, dialect), shape(new_type, dialect))


def storable(target_type: str, new_type: str, dialect: str) -> bool:
    """Whether ``new_type``'s values can be written into ``target_type`` without loss: held,
    or kept as their text form in an unbounded string column."""
    t = shape(target_type, dialect)
    return _holds(t, shape(new_type, dialect)) or (t.family == 'string' and t.length is None)


_PG_INT_NAMES = ((16, 'smallint'), (32, 'integer'), (64, 'bigint'))
_MY_INT_NAMES = ((8, 'TINYINT'), (16, 'SMALLINT'), (24, 'MEDIUMINT'), (32, 'INT'),
                 (64, 'BIGINT'))
_MY_MAX_PRECISION = 65
_MY_MAX_SCALE = 30
_MY_SHORT_VARCHAR = 255


def _decimal_type(digits: int | None, scale: int | None, dialect: str) -> str | None:
    if dialect == 'postgresql':
        if digits is None or scale is None:
            return 'numeric'
        return f'numeric({digits + scale},{scale})'
    digits = _MY_MAX_PRECISION - _MY_MAX_SCALE if digits is None else digits
    scale = _MY_MAX_SCALE if scale is None else scale
    if digits + scale > _MY_MAX_PRECISION or scale > _MY_MAX_SCALE:
        return None
    return f'DECIMAL({digits + scale},{scale})'


def _string_type(length: int | None, dialect: str, key: bool) -> str:
    if dialect == 'postgresql':
        return 'text' if length is None else f'character varying({length})'
    if length is not None and (length <= _MY_SHORT_VARCHAR or key):
        return f'VARCHAR({length})'
    return 'VARCHAR(255)' if key else 'LONGTEXT'


def widened(target_type: str, new_type: str, dialect: str, *, key: bool = False) -> str | None:
    """The type to ALTER a ``target_type`` column to so it holds its values and ``new_type``'s;
    None when no safe widening exists.  Only call it when the target does not hold new_type."""
    t, n = shape(target_type, dialect), shape(new_type, dialect)
    if _holds(n, t) and not (n.family == 'string' and t.family != 'string'):
        return new_type  # the source's own new type holds what the target has: follow it
    if n.family == 'string':
        # Any value has a text form, and a cast to text never truncates (a cast to
        # varchar(n) silently would): anything widens to the unbounded string type.
        if t.family == 'string' and t.length is not None and n.length is not None:
            return _string_type(max(t.length, n.length), dialect, key)
        return _string_type(None, dialect, key)
    if t.family == 'int' and n.family == 'int':
        low, high = min(t.low, n.low), max(t.high, n.high)
        names = _PG_INT_NAMES if dialect == 'postgresql' else _MY_INT_NAMES
        for bits, name in names:
            if _holds(_int(bits), _Shape('int', low, high)):
                return name
        return _decimal_type(len(str(max(-low, high))), 0, dialect)
    if {t.family, n.family} <= {'int', 'numeric'}:
        digits: list[int | None] = []
        scales: list[int | None] = []
        for s in (t, n):
            digits.append(_int_digits(s) if s.family == 'int' else s.digits)
            scales.append(0 if s.family == 'int' else s.scale)
        return _decimal_type(
            None if None in digits else max(d for d in digits if d is not None),
            None if None in scales else max(s for s in scales if s is not None), dialect)
    if t.family == 'float' and n.family == 'float':
        return 'double precision' if dialect == 'postgresql' else 'DOUBLE'
    if t.family == 'enum' and n.family == 'enum':
        labels = t.symbols + tuple(s for s in n.symbols if s not in t.symbols)
        return 'ENUM(' + ','.join(
            "'" + s.replace('\\', '\\\\').replace("'", "''") + "'" for s in labels) + ')'
    return None


def narrowed(target_type: str, new_type: str, dialect: str) -> str | None:
    """The type to convert a ``target_type`` column to when the source's column became
    ``new_type``, which the target holds but with fewer digits of a fraction (``numeric(10,2)``
    → ``numeric(10,0)`` or ``integer``, ``double`` → ``real``, ``DATETIME(6)`` → ``DATETIME``):
    the source's ALTER rounded the values of its rows.  None when nothing rounds."""
    t, n = shape(target_type, dialect), shape(new_type, dialect)
    if t.family == 'numeric' and n.family in ('numeric', 'int'):
        scale = 0 if n.family == 'int' else n.scale
        if scale is None or (t.scale is not None and t.scale <= scale):
            return None
        # A target widened beyond the source keeps its longer integer parts: only the
        # fraction is the source's.
        if t.digits is not None and not _holds(n, _Shape('numeric', digits=t.digits,
                                                         scale=scale)):
            return _decimal_type(t.digits, scale, dialect) or new_type
        return new_type
    if t.family == 'float' and (n.family == 'int' or (n.family == 'float'
                                                      and n.bits < t.bits)):
        return new_type
    if t.family == 'temporal' and (n.scale or 0) < (t.scale or 0) and n.text == t.text:
        return new_type
    return None


# ---------------------------------------------------------------------------------------------
# The plan

def plan_alteration(existing: Mapping[str, TargetColumn], schema: TableSchema,
                    wanted: Callable[[Column], str], dialect: str, *,
                    older: bool = False) -> Alteration:
    """What the target table with ``existing`` columns needs to hold rows of ``schema``.

    ``wanted(column)`` is the type the sink would give the column in a new table; ``older``
    says the schema predates the target's shape (its values need only be storable, and a
    narrowing that rounds is not followed: the target's rows are newer).
    """
    if dialect not in DIALECTS:
        raise ValueError(f'dialect {dialect!r} is not one of {", ".join(DIALECTS)}')
    add: list[ColumnDef] = []
    defaults: list[Column] = []
    widen: list[Widening] = []
    narrow: list[Widening] = []
    readd: list[str] = []
    problems: list[str] = []
    for column in schema.columns:
        have = existing.get(column.name)
        want = wanted(column)
        if have is None or have.dropped:
            if have is not None:  # back after a drop: the kept column holds the old values
                readd.append(column.name)
            add.append((column.name, want, True))
            if column.default is not None:
                defaults.append(column)
            continue
        if holds(have.type, want, dialect):
            new = None if older else narrowed(have.type, want, dialect)
            if new is not None:
                narrow.append(Widening(column.name, have.type, new, have.nullable))
            continue
        if older and storable(have.type, want, dialect):
            continue
        new = widened(have.type, want, dialect, key=have.key)
        source = column.source_type or column.kind.value
        if new is None:
            problems.append(
                f'column {column.name!r} changed to {source} ({want} here), which the target '
                f"column's type {have.type} cannot hold, and converting the target column "
                'could fail or change its values; alter the target table by hand (or route '
                'the table elsewhere) and restart')
        else:
            # numeric(10,2) -> numeric(10,0) needs more digits before the point, and rounds.
            rounded = None if older else narrowed(new, want, dialect)
            if rounded is not None:
                narrow.append(Widening(column.name, have.type, rounded, have.nullable))
            else:
                widen.append(Widening(column.name, have.type, new, have.nullable))
    target_key = tuple(name for name, c in existing.items() if c.key)
    if target_key and schema.key and set(target_key) != set(schema.key):
        problems.append(f'the key changed to ({", ".join(schema.key)}) but the target table\'s '
                        f'primary key is ({", ".join(target_key)})')
    kept = tuple(name for name in existing
                 if name not in schema.by_name and name not in RESERVED)
    relax = tuple(existing[name] for name in kept
                  if not existing[name].nullable and not existing[name].key)
    mark = tuple(existing[name] for name in kept
                 if not existing[name].dropped and not existing[name].key)
    hidden = tuple(name for name in (POS, ROW_ID) if name not in existing
                   and (name == POS or not schema.key))
    return Alteration(tuple(add), tuple(widen), relax, hidden, kept, tuple(problems),
                      tuple(defaults), mark, tuple(readd), tuple(narrow))


# ---------------------------------------------------------------------------------------------
# Values older rows hold: ADD COLUMN … DEFAULT, then DROP DEFAULT

def add_default(definition: ColumnDef, literal: str, dialect: str) -> ColumnDef:
    """``definition`` (of an ADD COLUMN) with a DEFAULT: ``literal`` is the value's SQL literal
    on MariaDB (``7``, ``'a''b'``), its PostgreSQL text form on PostgreSQL (cast to the type)."""
    name, type_, nullable = definition
    if dialect == 'postgresql':
        # '%' doubled: the PostgreSQL sink runs every statement with a parameter sequence.
        quoted = "'" + literal.replace("'", "''").replace('%', '%%') + "'"
        return name, f'{type_} DEFAULT {quoted}::{type_}', nullable
    return name, f'{type_} DEFAULT {literal}', nullable


def drop_defaults(target: TargetTable, names: Sequence[str], dialect: str) -> list[str]:
    """The ALTER dropping the DEFAULTs :func:`add_default` gave, so that a later row without
    a value for the column is never filled silently."""
    if not names:
        return []
    if dialect == 'postgresql':
        parts = [f'ALTER COLUMN {pg_ident(n)} DROP DEFAULT' for n in names]
        return [f'ALTER TABLE {pg_table(target)} {", ".join(parts)}']
    parts = [f'ALTER COLUMN {my_ident(n)} DROP DEFAULT' for n in names]
    return [f'ALTER TABLE {my_table(target)} {", ".join(parts)}']


def filled(schemas: Sequence[TableSchema], table: TableSchema,
           missing: Iterable[str]) -> dict[str, Column]:
    """Of the target columns ``missing`` from ``table``'s rows, those a newer schema of the
    batch (``schemas``, oldest first) added with a ``default``: a row of ``table`` is older than
    the column, so the source's row holds the default (not NULL) unless written again later."""
    try:
        index = next(i for i, s in enumerate(schemas) if s is table)
    except StopIteration:
        index = schemas.index(table) if table in schemas else len(schemas)
    out: dict[str, Column] = {}
    for name in missing:
        for newer in schemas[index + 1:]:
            column = newer.by_name.get(name)
            if column is not None:
                if column.default is not None:
                    out[name] = column
                break
    return out
