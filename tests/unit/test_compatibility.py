"""Avro compatibility rules: each rule both ways, the modes, and agreement with fastavro."""
from __future__ import annotations

import io
import string
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.envelope import ChangeEvent, Column, Kind, Op, SourcePosition, TableSchema
from transforms.envelope_avro import avro_schema, from_avro_record, to_avro_record
from transforms.schema.compatibility import (
    Incompatibility,
    Mode,
    check,
    incompatibilities,
    is_compatible,
)


def record(*fields: dict[str, Any], name: str = 'R', **extra: Any) -> dict[str, Any]:
    return {'type': 'record', 'name': name, 'fields': list(fields), **extra}


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {'name': name, 'type': type_, **extra}


def _resolves_in_fastavro(reader: Any, writer: Any, records: list[Any]) -> bool:
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(writer), records)
    out.seek(0)
    try:
        list(fastavro.reader(out, reader_schema=fastavro.parse_schema(reader)))
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Each rule, compatible and not

def test_added_field_needs_a_default() -> None:
    old = record(field('id', 'long'))
    with_default = record(field('id', 'long'), field('note', ['null', 'string'], default=None))
    without = record(field('id', 'long'), field('note', 'string'))
    assert check(with_default, old) == []
    assert check(without, old) == [Incompatibility(
        'note', "not in the writer's R and has no default")]


def test_removed_field_is_skipped_by_the_reader_but_needed_by_an_old_reader() -> None:
    old = record(field('id', 'long'), field('note', 'string'))
    new = record(field('id', 'long'))
    assert check(reader=new, writer=old) == []
    assert [p.path for p in check(reader=old, writer=new)] == ['note']


PRIMITIVES = ['null', 'boolean', 'int', 'long', 'float', 'double', 'bytes', 'string']
PROMOTABLE = {('int', 'long'), ('int', 'float'), ('int', 'double'), ('long', 'float'),
              ('long', 'double'), ('float', 'double'), ('string', 'bytes'),
              ('bytes', 'string')}
SAMPLE = {'null': None, 'boolean': True, 'int': -7, 'long': 2**40, 'float': 1.5,
          'double': 2.25, 'bytes': b'ab', 'string': 'ab'}


@pytest.mark.parametrize('writer', PRIMITIVES)
@pytest.mark.parametrize('reader', PRIMITIVES)
def test_primitive_promotions(writer: str, reader: str) -> None:
    expected = writer == reader or (writer, reader) in PROMOTABLE
    problems = check(record(field('v', reader)), record(field('v', writer)))
    assert (problems == []) is expected
    if not expected:
        assert problems[0].path == 'v' and writer in problems[0].reason
    assert _resolves_in_fastavro(record(field('v', reader)), record(field('v', writer)),
                                 [{'v': SAMPLE[writer]}]) is expected


def test_nullable_unions() -> None:
    nullable_int = record(field('v', ['null', 'int']))
    plain_int = record(field('v', 'int'))
    # A reader union needs *some* branch for the writer's type…
    assert check(reader=nullable_int, writer=plain_int) == []
    assert check(reader=record(field('v', ['null', 'long'])), writer=plain_int) == []
    # …and every branch of a writer union must resolve: null cannot be read as int.
    [problem] = check(reader=plain_int, writer=nullable_int)
    assert 'null' in problem.reason
    [problem] = check(reader=nullable_int, writer=record(field('v', ['null', 'string'])))
    assert 'string' in problem.reason and 'union' in problem.reason
    assert check(reader=record(field('v', ['string', 'null', 'int'])), writer=nullable_int) == []


def _enum(*symbols: str, **extra: Any) -> dict[str, Any]:
    return record(field('e', {'type': 'enum', 'name': 'Color', 'symbols': list(symbols),
                              **extra}))


def test_enum_symbols() -> None:
    assert check(reader=_enum('RED', 'GREEN', 'BLUE'), writer=_enum('RED', 'GREEN')) == []
    [problem] = check(reader=_enum('RED'), writer=_enum('RED', 'GREEN'))
    assert problem.path == 'e' and 'GREEN' in problem.reason
    assert check(reader=_enum('RED', 'OTHER', default='OTHER'), writer=_enum('RED', 'GREEN')) \
        == []
    assert _resolves_in_fastavro(_enum('RED', 'OTHER', default='OTHER'),
                                 _enum('RED', 'GREEN'), [{'e': 'GREEN'}])
    assert not _resolves_in_fastavro(_enum('RED'), _enum('RED', 'GREEN'), [{'e': 'GREEN'}])


def test_records_match_by_unqualified_name_or_reader_alias() -> None:
    writer = record(field('id', 'int'), name='Order', namespace='shop.v1')
    assert check(record(field('id', 'int'), name='Order', namespace='shop.v2'), writer) == []
    [problem] = check(record(field('id', 'int'), name='Purchase'), writer)
    assert 'shop.v1.Order' in problem.reason
    assert check(record(field('id', 'int'), name='Purchase', aliases=['shop.v1.Order']),
                 writer) == []
    nested_w = record(field('o', writer))
    nested_r = record(field('o', record(field('id', 'long'), name='Invoice')))
    assert [p.path for p in check(nested_r, nested_w)] == ['o']


def test_field_renamed_with_a_reader_alias() -> None:
    writer = record(field('qty', 'int'))
    assert check(record(field('quantity', 'int', aliases=['qty'])), writer) == []
    assert [p.path for p in check(record(field('quantity', 'int')), writer)] == ['quantity']
    [problem] = check(record(field('quantity', 'string', aliases=['qty'])), writer)
    assert problem.path == 'quantity' and 'int' in problem.reason
    assert _resolves_in_fastavro(record(field('quantity', 'long', aliases=['qty'])), writer,
                                 [{'qty': 3}])


def test_fixed_size_and_name() -> None:
    def fixed(size: int, name: str = 'Hash') -> dict[str, Any]:
        return record(field('h', {'type': 'fixed', 'name': name, 'size': size}))
    assert check(fixed(16), fixed(16)) == []
    [problem] = check(fixed(32), fixed(16))
    assert 'size 16' in problem.reason and '32' in problem.reason
    assert check(fixed(16, 'Digest'), fixed(16)) != []


def test_arrays_and_maps_resolve_their_items_and_values() -> None:
    def array(items: Any) -> dict[str, Any]:
        return record(field('a', {'type': 'array', 'items': items}))

    def map_(values: Any) -> dict[str, Any]:
        return record(field('m', {'type': 'map', 'values': values}))

    assert check(array('long'), array('int')) == []
    assert [p.path for p in check(array('int'), array('long'))] == ['a']
    assert check(map_(['null', 'double']), map_('float')) == []
    assert check(map_('int'), map_('string')) != []
    inner_w = array(record(field('x', 'int'), name='P'))
    inner_r = array(record(field('x', 'int'), field('y', 'int'), name='P'))
    assert [p.path for p in check(inner_r, inner_w)] == ['a[].y']
    deep_r = map_({'type': 'array', 'items': ['null', 'int']})
    deep_w = map_({'type': 'array', 'items': ['null', 'string']})
    assert [p.path for p in check(deep_r, deep_w)] == ['m{}[]']
    assert check(array('int'), map_('int')) != []


def test_logical_types_are_judged_as_their_underlying_type() -> None:
    date = {'type': 'int', 'logicalType': 'date'}
    micros = {'type': 'long', 'logicalType': 'timestamp-micros'}
    assert check(record(field('d', 'int')), record(field('d', date))) == []
    assert check(record(field('d', date)), record(field('d', 'int'))) == []
    assert check(record(field('d', micros)), record(field('d', date))) == []  # int → long
    assert check(record(field('d', date)), record(field('d', micros))) != []  # long ↛ int
    decimal = {'type': 'bytes', 'logicalType': 'decimal', 'precision': 5, 'scale': 2}
    assert check(record(field('n', ['null', 'string', decimal])),
                 record(field('n', ['null', 'string', decimal]))) == []


def test_recursive_and_referenced_named_types() -> None:
    node = {'type': 'record', 'name': 'Node', 'namespace': 'x', 'fields': [
        field('value', 'int'), field('next', ['null', 'Node'], default=None)]}
    node_long = {'type': 'record', 'name': 'Node', 'namespace': 'x', 'fields': [
        field('value', 'long'), field('next', ['null', 'x.Node'], default=None)]}
    assert check(node_long, node) == []
    assert [p.path for p in check(node, node_long)] == ['value']
    pair = record(field('a', {'type': 'fixed', 'name': 'Id', 'namespace': 'k', 'size': 4}),
                  field('b', 'k.Id'))
    assert check(pair, pair) == []


@pytest.mark.parametrize('schema', [
    record(field('x', 'Missing')),
    {'type': 'record', 'name': 'R'},
    {'nope': 1},
    record(field('a', {'type': 'fixed', 'name': 'F', 'size': 1}),
           field('b', {'type': 'fixed', 'name': 'F', 'size': 1})),
])
def test_invalid_schema_raises_value_error(schema: Any) -> None:
    with pytest.raises(ValueError):
        check(schema, record(field('x', 'int')))


# ---------------------------------------------------------------------------------------------
# Modes

V1 = record(field('id', 'int'))
V2 = record(field('id', 'int'), field('name', 'string', default=''))
V3 = record(field('id', 'long'), field('name', 'string'))  # drops name's default


@pytest.mark.parametrize(('mode', 'new', 'old', 'expected'), [
    (Mode.BACKWARD, V2, V1, True),  # reads old data: the new field has a default
    (Mode.FORWARD, V2, V1, True),  # old reader ignores the new field
    (Mode.FULL, V2, V1, True),
    (Mode.BACKWARD, V1, V2, True),  # a field removed
    (Mode.BACKWARD, V3, V2, True),  # int → long; name is in V2's data
    (Mode.FORWARD, V3, V2, False),  # V2 reading long as int
    (Mode.FULL, V3, V2, False),
    (Mode.BACKWARD, V3, [V1, V2], True),  # only the last version counts
    (Mode.BACKWARD_TRANSITIVE, V3, [V1, V2], False),  # V1 data has no name, V3 no default
    (Mode.BACKWARD_TRANSITIVE, V2, [V1, V1], True),
    (Mode.FORWARD_TRANSITIVE, V2, [V1, V2], True),
    (Mode.FORWARD_TRANSITIVE, V3, [V1, V2], False),
    (Mode.FULL_TRANSITIVE, V2, [V1], True),
    (Mode.FULL_TRANSITIVE, V3, [V2, V3], False),
    (Mode.NONE, V3, [V1, V2], True),
    ('BACKWARD', V2, V1, True),
    (Mode.BACKWARD, V2, [], True),
])
def test_modes(mode: Mode | str, new: Any, old: Any, expected: bool) -> None:
    assert is_compatible(new, old, mode) is expected


def test_incompatibilities_say_direction_and_version() -> None:
    [problem] = incompatibilities(V3, [V1, V2], Mode.BACKWARD_TRANSITIVE)
    assert problem.path == 'name'
    assert problem.reason.startswith('new schema reading old schema #0 data')
    [problem] = incompatibilities(V3, V2, 'FORWARD')
    assert problem.reason.startswith('the old schema reading new data')
    assert str(problem).startswith('id: ')


def test_unknown_mode_is_rejected_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match='BACKWARD_TRANSITIVE'):
        is_compatible(V1, V1, 'SIDEWAYS')


def test_table_evolution_through_the_avro_envelope() -> None:
    """Adding a nullable column keeps the envelope FULL compatible; narrowing a type does not."""
    v1 = TableSchema('public', 't', (Column('id', Kind.INT64), Column('n', Kind.INT32)))
    v2 = TableSchema('public', 't', (*v1.columns, Column('note', Kind.TEXT)))
    v3 = TableSchema('public', 't', (Column('id', Kind.INT32), Column('n', Kind.INT64)))
    s1, s2, s3 = avro_schema(v1, 1), avro_schema(v2, 2), avro_schema(v3, 3)
    assert is_compatible(s2, s1, Mode.FULL)
    # One report per named type: `after` shares `before`'s Value record.
    assert [p.path for p in incompatibilities(s3, s1, Mode.BACKWARD)] == ['before.id']
    source = SourcePosition('postgresql', 'pg', 'db', 'public', 't', 0, lsn=1)
    old = ChangeEvent(Op.CREATE, v1, source, after={'id': 1, 'n': 2})
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(s1), [to_avro_record(old)])
    out.seek(0)
    [read] = fastavro.reader(out, reader_schema=fastavro.parse_schema(s2))
    assert from_avro_record(read, v2).after == {'id': 1, 'n': 2, 'note': None}


# ---------------------------------------------------------------------------------------------
# Agreement with a real Avro reader, on generated schema pairs

_SYMBOLS = ['A', 'B', 'C', 'D']
_DATA = {
    'null': st.none(),
    'boolean': st.booleans(),
    'int': st.integers(-(2**31), 2**31 - 1),
    'long': st.integers(-(2**63), 2**63 - 1),
    'float': st.floats(width=32),
    'double': st.floats(),
    # ASCII, so that the legal bytes → string promotion has valid UTF-8 to decode
    'bytes': st.binary(max_size=4).map(lambda b: bytes(x & 0x7F for x in b)),
    'string': st.text(max_size=4),
}


class _Names:
    def __init__(self) -> None:
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f'{prefix}{self.count}'


def _schema(draw: Any, names: _Names, depth: int = 0) -> Any:
    kinds = ['primitive'] * 4 + ['enum', 'fixed', 'array', 'map', 'nullable']
    if depth < 2:
        kinds.append('record')
    kind = draw(st.sampled_from(kinds))
    if kind == 'primitive':
        return draw(st.sampled_from(PRIMITIVES))
    if kind == 'enum':
        symbols = draw(st.lists(st.sampled_from(_SYMBOLS), min_size=1, unique=True))
        return {'type': 'enum', 'name': names.fresh('E'), 'symbols': symbols}
    if kind == 'fixed':
        return {'type': 'fixed', 'name': names.fresh('F'), 'size': draw(st.integers(1, 3))}
    if kind == 'array':
        return {'type': 'array', 'items': _schema(draw, names, depth + 1)}
    if kind == 'map':
        return {'type': 'map', 'values': _schema(draw, names, depth + 1)}
    if kind == 'nullable':
        inner = _schema(draw, names, depth + 1)
        return ['null', inner] if inner != 'null' and not isinstance(inner, list) else inner
    fields = [field(f'f{i}', _schema(draw, names, depth + 1))
              for i in range(draw(st.integers(1, 3)))]
    return record(*fields, name=names.fresh('R'))


def _mutate(draw: Any, schema: Any, names: _Names, depth: int = 0) -> Any:
    """A reader for ``schema``: often the same, sometimes changed in one of the rule's ways."""
    change = draw(st.sampled_from(['keep'] * 3 + ['replace', 'nullable', 'rename', 'other']))
    if change == 'replace':  # an unrelated type: incompatible unless by luck
        return _schema(draw, names, depth)
    if change == 'nullable' and not isinstance(schema, list) and schema != 'null':
        inner = _mutate(draw, schema, names, depth)
        if isinstance(inner, list) or inner == 'null':  # a union in a union is no schema
            return inner
        return draw(st.permutations(['null', inner]))
    if isinstance(schema, str):
        if change == 'other':
            promoted = sorted({schema} | set(_PROMOTE.get(schema, ())))
            return draw(st.sampled_from([*promoted, draw(st.sampled_from(PRIMITIVES))]))
        return schema
    if isinstance(schema, list):
        inner = _mutate(draw, schema[1], names, depth)
        if change == 'other':
            return inner  # drop null: fails for a NULL written
        return ['null', inner] if inner != 'null' and not isinstance(inner, list) else inner
    kind = schema['type']
    out = dict(schema)
    if kind == 'enum' and change == 'other':
        symbols = draw(st.lists(st.sampled_from(_SYMBOLS), min_size=1, unique=True))
        out['symbols'] = symbols
        if draw(st.booleans()):
            out['default'] = draw(st.sampled_from(symbols))
    elif kind == 'fixed' and change == 'other':
        out['size'] = draw(st.integers(1, 3))
    elif kind in ('enum', 'fixed', 'record') and change == 'rename':
        out['name'] = names.fresh('N')
        if draw(st.booleans()):
            out['aliases'] = [schema['name']]
    elif kind == 'array':
        out['items'] = _mutate(draw, schema['items'], names, depth + 1)
    elif kind == 'map':
        out['values'] = _mutate(draw, schema['values'], names, depth + 1)
    if kind == 'record':
        fields = []
        for f in schema['fields']:
            fate = draw(st.sampled_from(['keep'] * 4 + ['drop', 'rename', 'alias']))
            if fate == 'drop':
                continue
            new = field(f['name'], _mutate(draw, f['type'], names, depth + 1))
            if fate in ('rename', 'alias'):
                new['name'] = names.fresh('g')
                if fate == 'alias':
                    new['aliases'] = [f['name']]
            fields.append(new)
        if change == 'other':  # a field the writer does not have
            added = field(names.fresh('h'), ['null', 'int'])
            if draw(st.booleans()):
                added['default'] = None
            fields.append(added)
        out['fields'] = fields
    return out


_PROMOTE = {'int': ('long', 'float', 'double'), 'long': ('float', 'double'),
            'float': ('double',), 'string': ('bytes',), 'bytes': ('string',)}


def _data(schema: Any) -> st.SearchStrategy[Any]:
    if isinstance(schema, str):
        return _DATA[schema]
    if isinstance(schema, list):
        return st.one_of([_data(branch) for branch in schema])
    kind = schema['type']
    if kind == 'enum':
        return st.sampled_from(schema['symbols'])
    if kind == 'fixed':
        return st.binary(min_size=schema['size'], max_size=schema['size'])
    if kind == 'array':
        return st.lists(_data(schema['items']), max_size=3)
    if kind == 'map':
        return st.dictionaries(st.text(string.ascii_lowercase, max_size=2),
                               _data(schema['values']), max_size=2)
    return st.fixed_dictionaries({f['name']: _data(f['type']) for f in schema['fields']})


@st.composite
def _cases(draw: Any) -> tuple[Any, Any, list[Any]]:
    names = _Names()
    writer = record(*[field(f'f{i}', _schema(draw, names, 1))
                      for i in range(draw(st.integers(1, 4)))], name='Top')
    reader = _mutate(draw, writer, names)
    if not isinstance(reader, dict) or reader.get('type') != 'record':
        reader = writer
    reader = {**reader, 'name': 'Top'}
    return writer, reader, draw(st.lists(_data(writer), min_size=1, max_size=6))


@given(_cases())
def test_pairs_judged_compatible_resolve_in_fastavro(case: tuple[Any, Any, list[Any]]) -> None:
    writer, reader, records = case
    if check(reader, writer) == []:
        assert _resolves_in_fastavro(reader, writer, records)


def test_pairs_judged_incompatible_mostly_fail_in_fastavro() -> None:
    """A static judgement covers every value, a reader only the values written: an enum
    symbol or a NULL that the sample never uses goes unnoticed, so not all must fail."""
    outcomes: list[bool] = []

    @given(_cases())
    def sample(case: tuple[Any, Any, list[Any]]) -> None:
        writer, reader, records = case
        if check(reader, writer):
            outcomes.append(_resolves_in_fastavro(reader, writer, records))

    sample()
    assert len(outcomes) >= 15  # about 40 of the 100 generated pairs are incompatible
    failed = outcomes.count(False)
    assert failed / len(outcomes) >= 0.75, f'only {failed} of {len(outcomes)} failed to read'
