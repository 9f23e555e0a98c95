"""Can data written with one Avro schema be read with another?  Avro's resolution rules.

Follows the "Schema Resolution" section of the Avro specification, judged statically for every
value the writer's schema allows (not just the values seen so far)::

    problems = check(reader=new_schema, writer=old_schema)   # [] when compatible
    is_compatible(new_schema, [v1, v2, v3], Mode.BACKWARD_TRANSITIVE)

Rules: reader fields are matched to writer fields by name or by the reader field's aliases; a
reader field the writer lacks needs a default; writer-only fields are skipped.  Types match when
equal or promotable (int→long/float/double, long→float/double, float→double, string↔bytes).
Records, enums and fixed match by unqualified name or the reader's aliases, fixed also by size.
Every branch of a writer union must resolve; a non-union writer needs some reader union
branch (the first that matches, as readers pick it).  A writer enum symbol the reader lacks
needs the reader enum's default.  Arrays and maps resolve their items and values.  A logical
type is judged as its underlying type (readers fall back to it).
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

__all__ = ['Incompatibility', 'Mode', 'check', 'incompatibilities', 'is_compatible']

_PRIMITIVES = frozenset({'null', 'boolean', 'int', 'long', 'float', 'double', 'bytes', 'string'})
_PROMOTIONS = {
    'int': frozenset({'long', 'float', 'double'}),
    'long': frozenset({'float', 'double'}),
    'float': frozenset({'double'}),
    'string': frozenset({'bytes'}),
    'bytes': frozenset({'string'}),
}


class Mode(str, enum.Enum):
    """Which direction(s) a new schema version must stay compatible in (Confluent's names)."""

    NONE = 'NONE'
    BACKWARD = 'BACKWARD'  # the new schema reads data written with the last one
    FORWARD = 'FORWARD'  # the last schema reads data written with the new one
    FULL = 'FULL'  # both
    BACKWARD_TRANSITIVE = 'BACKWARD_TRANSITIVE'  # … with every earlier one
    FORWARD_TRANSITIVE = 'FORWARD_TRANSITIVE'
    FULL_TRANSITIVE = 'FULL_TRANSITIVE'


@dataclasses.dataclass(frozen=True)
class Incompatibility:
    """One reason a reader cannot read a writer's data.

    ``path`` names the reader's field (``after.amount``; ``[]`` steps into array items, ``{}``
    into map values; empty for the top level).  A named type reached by several paths is
    reported at the first.
    """

    path: str
    reason: str

    def __str__(self) -> str:
        return f'{self.path or "(top level)"}: {self.reason}'


# ---------------------------------------------------------------------------------------------
# Parsed schemas: references resolved, logical types dropped

@dataclasses.dataclass(frozen=True)
class _Primitive:
    name: str


@dataclasses.dataclass(frozen=True)
class _Ref:
    fullname: str


@dataclasses.dataclass(frozen=True)
class _Array:
    items: _Node


@dataclasses.dataclass(frozen=True)
class _Map:
    values: _Node


@dataclasses.dataclass(frozen=True)
class _Union:
    branches: tuple[_Node, ...]


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    aliases: frozenset[str]
    type: _Node
    has_default: bool


@dataclasses.dataclass
class _Named:
    kind: str  # 'record', 'enum' or 'fixed'
    fullname: str
    aliases: frozenset[str]
    fields: tuple[_Field, ...] = ()
    symbols: tuple[str, ...] = ()
    default: str | None = None
    size: int = 0

    @property
    def short_name(self) -> str:
        return self.fullname.rsplit('.', 1)[-1]


_Node = _Primitive | _Ref | _Array | _Map | _Union


class _Parsed:
    """A schema with its named types by full name; raises ValueError for an invalid one."""

    def __init__(self, schema: Any) -> None:
        self.names: dict[str, _Named] = {}
        self.root = self._parse(schema, '')

    def deref(self, node: _Node) -> _Node | _Named:
        return self.names[node.fullname] if isinstance(node, _Ref) else node

    @staticmethod
    def _qualify(name: str, namespace: str) -> str:
        return name if '.' in name or not namespace else f'{namespace}.{name}'

    def _parse(self, schema: Any, namespace: str) -> _Node:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return _Primitive(schema)
            for fullname in (self._qualify(schema, namespace), schema):
                if fullname in self.names:
                    return _Ref(fullname)
            known = ', '.join(sorted(self.names)) or 'none'
            raise ValueError(f'unknown type {schema!r} (named types defined so far: {known})')
        if isinstance(schema, list):
            return _Union(tuple(self._parse(branch, namespace) for branch in schema))
        if not isinstance(schema, dict) or 'type' not in schema:
            raise ValueError(f'not an Avro schema: {schema!r}')
        kind = schema['type']
        if kind in ('record', 'error', 'enum', 'fixed'):
            return self._parse_named(schema, namespace)
        if kind == 'array':
            return _Array(self._parse(schema['items'], namespace))
        if kind == 'map':
            return _Map(self._parse(schema['values'], namespace))
        # {"type": "int", "logicalType": "date"}, {"type": "SomeName"}, {"type": [...]}
        return self._parse(kind, namespace)

    def _parse_named(self, schema: dict[str, Any], namespace: str) -> _Ref:
        name = schema.get('name')
        if not isinstance(name, str) or not name:
            raise ValueError(f'a {schema["type"]} needs a name: {schema!r}')
        if '.' in name:
            own_namespace = name.rsplit('.', 1)[0]
        else:
            own_namespace = schema.get('namespace', namespace) or ''
        fullname = self._qualify(name, own_namespace)
        if fullname in self.names:
            raise ValueError(f'{fullname} is defined twice')
        named = _Named(
            kind='record' if schema['type'] == 'error' else schema['type'],
            fullname=fullname,
            aliases=frozenset(self._qualify(a, own_namespace) for a in schema.get('aliases', ())),
            symbols=tuple(schema.get('symbols', ())),
            default=schema.get('default') if schema['type'] == 'enum' else None,
            size=schema.get('size', 0),
        )
        self.names[fullname] = named  # before the fields: a record may refer to itself
        if named.kind == 'record':
            fields = schema.get('fields')
            if not isinstance(fields, list):
                raise ValueError(f'record {fullname} needs a list of fields')
            named.fields = tuple(
                _Field(name=f['name'], aliases=frozenset(f.get('aliases', ())),
                       type=self._parse(f['type'], own_namespace), has_default='default' in f)
                for f in fields)
        return _Ref(fullname)


def _describe(node: _Node | _Named) -> str:
    if isinstance(node, _Primitive):
        return node.name
    if isinstance(node, _Named):
        return f'{node.kind} {node.fullname}'
    if isinstance(node, _Array):
        return 'array'
    if isinstance(node, _Map):
        return 'map'
    if isinstance(node, _Union):
        return 'union'
    return node.fullname


# ---------------------------------------------------------------------------------------------
# Resolution

class _Resolver:
    def __init__(self, reader: _Parsed, writer: _Parsed) -> None:
        self.reader = reader
        self.writer = writer
        self.problems: list[Incompatibility] = []
        self._seen: set[tuple[str, str]] = set()

    def mismatch(self, r: _Node | _Named, w: _Node | _Named) -> str | None:
        """Why ``r`` does not "match" ``w`` in the specification's sense, or None if it does.

        Shallow for named types (name and size, not fields); array items and map values are
        compared the same way, a union among them deferred to resolution.
        """
        if isinstance(r, _Union) or isinstance(w, _Union):
            return None
        if isinstance(r, _Primitive) and isinstance(w, _Primitive):
            if r.name == w.name or r.name in _PROMOTIONS.get(w.name, ()):
                return None
        elif isinstance(r, _Named) and isinstance(w, _Named) and r.kind == w.kind:
            if r.short_name != w.short_name and w.fullname not in r.aliases:
                return (f"writer's {_describe(w)} is not reader's {r.fullname} "
                        f'nor one of its aliases')
            if r.kind == 'fixed' and r.size != w.size:
                return f'fixed {r.fullname} has size {w.size} in the writer, {r.size} in the reader'
            return None
        elif isinstance(r, _Array) and isinstance(w, _Array):
            inner = self.mismatch(self.reader.deref(r.items), self.writer.deref(w.items))
            return None if inner is None else f'array items: {inner}'
        elif isinstance(r, _Map) and isinstance(w, _Map):
            inner = self.mismatch(self.reader.deref(r.values), self.writer.deref(w.values))
            return None if inner is None else f'map values: {inner}'
        return f"writer's {_describe(w)} cannot be read as {_describe(r)}"

    def resolve(self, r_node: _Node, w_node: _Node, path: str) -> None:
        r, w = self.reader.deref(r_node), self.writer.deref(w_node)
        if isinstance(w, _Union):
            for branch in w.branches:  # any of them may have been written
                self.resolve(r_node, branch, path)
            return
        if isinstance(r, _Union):
            for branch in r.branches:
                if self.mismatch(self.reader.deref(branch), w) is None:
                    self.resolve(branch, w_node, path)
                    return
            choices = ', '.join(_describe(self.reader.deref(b)) for b in r.branches)
            self._add(path, f"writer's {_describe(w)} matches no branch of the reader's union "
                            f'[{choices}]')
            return
        problem = self.mismatch(r, w)
        if problem is not None:
            self._add(path, problem)
        elif isinstance(r, _Named) and isinstance(w, _Named):
            if r.kind == 'record':
                self._resolve_record(r, w, path)
            elif r.kind == 'enum':
                missing = [s for s in w.symbols if s not in r.symbols]
                if missing and r.default is None:
                    self._add(path, f'reader enum {r.fullname} lacks writer symbols '
                                    f'{", ".join(missing)} and has no default')
        elif isinstance(r, _Array) and isinstance(w, _Array):
            self.resolve(r.items, w.items, f'{path}[]')
        elif isinstance(r, _Map) and isinstance(w, _Map):
            self.resolve(r.values, w.values, f'{path}{{}}')

    def _resolve_record(self, r: _Named, w: _Named, path: str) -> None:
        if (r.fullname, w.fullname) in self._seen:  # a recursive type, already being checked
            return
        self._seen.add((r.fullname, w.fullname))
        writer_fields = {f.name: f for f in w.fields}
        for field in r.fields:
            field_path = f'{path}.{field.name}' if path else field.name
            written = writer_fields.get(field.name) or next(
                (writer_fields[a] for a in sorted(field.aliases) if a in writer_fields), None)
            if written is not None:
                self.resolve(field.type, written.type, field_path)
            elif not field.has_default:
                self._add(field_path, f"not in the writer's {w.fullname} and has no default")

    def _add(self, path: str, reason: str) -> None:
        self.problems.append(Incompatibility(path, reason))


def check(reader: Any, writer: Any) -> list[Incompatibility]:
    """Why data written with ``writer`` cannot be read with ``reader``; empty if it can.

    Both are Avro schemas as parsed JSON (a record dict, or any schema).  Raises ValueError
    for a schema that is not valid Avro (an unknown type name, a record without fields).
    """
    resolver = _Resolver(_Parsed(reader), _Parsed(writer))
    resolver.resolve(resolver.reader.root, resolver.writer.root, '')
    return resolver.problems


def incompatibilities(new: Any, old: Any, mode: Mode | str) -> list[Incompatibility]:
    """Why ``new`` breaks ``mode`` against ``old``: one schema, or a list of versions.

    ``old`` as a list holds the earlier versions oldest first (so a top-level union schema
    must be passed as ``[union]``); non-transitive modes compare with its last entry only.
    Each reason says which direction failed and against which version.
    """
    try:
        mode = Mode(mode)
    except ValueError:
        valid = ', '.join(m.value for m in Mode)
        raise ValueError(f'unknown compatibility mode {mode!r}; valid: {valid}') from None
    versions = list(old) if isinstance(old, Sequence) and not isinstance(old, str) else [old]
    if mode is Mode.NONE or not versions:
        return []
    if not mode.value.endswith('_TRANSITIVE'):
        versions = versions[-1:]
    base = mode.value.removesuffix('_TRANSITIVE')
    single = len(versions) == 1
    problems = []
    for i, version in enumerate(versions):
        label = 'the old schema' if single else f'old schema #{i}'
        if base in ('BACKWARD', 'FULL'):
            problems += [Incompatibility(p.path, f'new schema reading {label} data: {p.reason}')
                         for p in check(new, version)]
        if base in ('FORWARD', 'FULL'):
            problems += [Incompatibility(p.path, f'{label} reading new data: {p.reason}')
                         for p in check(version, new)]
    return problems


def is_compatible(new: Any, old: Any, mode: Mode | str) -> bool:
    """Whether ``new`` keeps ``mode`` against ``old`` (one schema or a list of versions)."""
    return not incompatibilities(new, old, mode)
