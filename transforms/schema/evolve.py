"""``EvolveSchema``: tag every event with its table's schema version and handle schema changes.

    events | 'EvolveSchema' >> EvolveSchema('/var/lib/cb/schemas', policy='evolve')

When a table's schema differs from the version before (a column added, dropped, renamed or
retyped; a new table), the new version is registered (see ``registry``) and a schema-change
event (``op: m``, ``message.kind = 'schema_change'``, with the difference) is emitted *before*
the first row of the new version, so sinks and consumers react in order.  Policies:

- ``evolve`` (default): every change is registered; sinks follow (ALTER, new files).
- ``strict``: compatible changes pass as under ``evolve``; an incompatible one (Avro BACKWARD
  rules: new readers must read old data) stops the pipeline with the difference printed.
- ``lenient``: compatible changes pass; for an incompatible one the event keeps the previous
  columns and the retyped value moves to a new column ``<name>__<kind>``; the event is marked
  (``message.lenient``).  A dropped column stays in the schema, NULL from then on.
- ``ignore``: every event is projected onto the table's first registered schema: new columns
  are left out; a retyped column's values are left out too (marked in ``message.ignored``).

A renamed column cannot be told apart from a drop plus an add in the WAL: it is handled as
both (the old name stays in targets, NULL for new rows).  A schema that is already registered
(rows replayed after a restart, or a table changed back to an earlier shape) is used as it is,
without a schema-change event.  DROP TABLE leaves no trace in the
log: the target table is kept.
"""
from __future__ import annotations

import dataclasses
import logging
import operator
from collections.abc import Generator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

import transforms.coders  # noqa: F401  (registers the ChangeEvent coder)
from transforms.envelope import ChangeEvent, Column, Op, RenderedChanges, TableSchema
from transforms.schema.compatibility import Mode, incompatibilities
from transforms.schema.registry import SchemaRegistry, SchemaVersion

__all__ = ['POLICIES', 'EvolveSchema', 'SchemaChange', 'SchemaChangeError', 'diff']

_LOG = logging.getLogger(__name__)

POLICIES = ('evolve', 'strict', 'lenient', 'ignore')


class SchemaChangeError(RuntimeError):
    """An incompatible schema change under ``strict``; the message holds the difference."""


@dataclasses.dataclass(frozen=True)
class SchemaChange:
    """What changed between two versions of a table (names; types as source type text)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    retyped: tuple[tuple[str, str, str], ...] = ()  # (column, old type, new type)
    key_changed: bool = False

    def describe(self) -> str:
        lines = [f'  + {name}' for name in self.added]
        lines += [f'  - {name}' for name in self.removed]
        lines += [f'  ~ {name}: {old} -> {new}' for name, old, new in self.retyped]
        if self.key_changed:
            lines.append('  ~ key columns changed')
        return '\n'.join(lines) or '  (no column change)'

    def to_json(self) -> dict[str, Any]:
        return {'added': list(self.added), 'removed': list(self.removed),
                'retyped': [list(r) for r in self.retyped], 'key_changed': self.key_changed}


def _type_text(column: Column) -> str:
    return column.source_type or column.kind.value


def diff(old: TableSchema, new: TableSchema) -> SchemaChange:
    old_columns, new_columns = old.by_name, new.by_name
    return SchemaChange(
        added=tuple(n for n in new_columns if n not in old_columns),
        removed=tuple(n for n in old_columns if n not in new_columns),
        retyped=tuple((n, _type_text(old_columns[n]), _type_text(c))
                      for n, c in new_columns.items()
                      if n in old_columns and (c.kind, c.element, c.source_type) != (
                          old_columns[n].kind, old_columns[n].element,
                          old_columns[n].source_type)),
        key_changed=old.key != new.key)


def _keep_defaults(table: TableSchema, earlier: TableSchema) -> TableSchema:
    """``table`` with the ``Column.default`` of each column ``earlier`` has, where ``table``'s
    has none (the same object when nothing changes).

    The value rows older than ``ADD COLUMN … DEFAULT`` read stays the column's for its life,
    as the PostgreSQL source keeps it while it runs; but a source that first sees the column
    after a table rewrite cleared it from the catalog (a restart) reads no value.  Without
    this, that would register a version differing only in the default."""
    known = earlier.by_name
    columns = tuple(
        dataclasses.replace(c, default=known[c.name].default)
        if c.default is None and c.name in known and known[c.name].default is not None else c
        for c in table.columns)
    if all(map(operator.is_, columns, table.columns)):
        return table
    return dataclasses.replace(table, columns=columns)


def _incompatible(old: TableSchema, new: TableSchema) -> list[str]:
    from transforms.envelope_avro import avro_schema

    problems = incompatibilities(avro_schema(new), avro_schema(old), Mode.BACKWARD)
    return [str(p) for p in problems]


def _lenient_schema(old: TableSchema, new: TableSchema) -> tuple[TableSchema, dict[str, str]]:
    """Old columns kept with their types (dropped ones too), new ones appended, and a retyped
    column's new values moved to ``<name>__<kind>``."""
    columns = list(old.columns)
    moved: dict[str, str] = {}
    names = {c.name for c in columns}
    for column in new.columns:
        previous = old.by_name.get(column.name)
        if previous is None:
            columns.append(dataclasses.replace(column, nullable=True))
        elif (previous.kind, previous.element) != (column.kind, column.element):
            target = f'{column.name}__{column.kind.value}'
            moved[column.name] = target
            if target not in names:
                columns.append(dataclasses.replace(column, name=target, nullable=True))
                names.add(target)
    merged = TableSchema(old.schema, old.table, tuple(
        dataclasses.replace(c, nullable=True) if c.name not in new.by_name else c
        for c in columns), old.key)
    return merged, moved


def _project(row: Any, schema: TableSchema, moved: dict[str, str]) -> tuple[Any, list[str]]:
    if row is None:
        return None, []
    out, dropped = {}, []
    for name, value in row.items():
        target = moved.get(name, name)
        if target in schema.by_name:
            out[target] = value
        else:
            dropped.append(name)
    return out, dropped


# (the source's TableSchema object, the version events are tagged with, the schema they are
#  projected onto under lenient/ignore or None, column moves under lenient)
_State = tuple[TableSchema, SchemaVersion, 'TableSchema | None', dict[str, str]]


class _EvolveSchemaFn(beam.DoFn):
    def __init__(self, registry_uri: str, policy: str) -> None:
        self._uri = registry_uri
        self._policy = policy

    def setup(self) -> None:
        self._registry = SchemaRegistry(self._uri)
        self._current: dict[str, _State] = {}
        self._announced: set[int] = set()  # versions whose schema-change event this worker made
        self._changes = Metrics.counter('EvolveSchema', 'schema_changes')

    def process(self, event: ChangeEvent) -> list[ChangeEvent]:
        # A list, not a generator: this runs once per event, and Beam iterates a list faster.
        table = event.table
        if not table.columns:  # a logical message: no table, no schema
            return [event]
        state = self._current.get(table.name)
        out: list[ChangeEvent] = []
        if state is None or (state[0] is not table and state[0] != table):
            state = self._register(event, state, out)
        _, version, target, moved = state
        if target is None:
            out.append(event.replace(schema_version=version.version))
            return out
        before, dropped_before = _project(event.before, target, moved)
        after, dropped_after = _project(event.after, target, moved)
        mark = {self._policy: sorted(set(dropped_before + dropped_after) | moved.keys())}
        out.append(event.replace(table=target, before=before, after=after,
                                 unchanged=frozenset(moved.get(n, n) for n in event.unchanged
                                                     if moved.get(n, n) in target.by_name),
                                 schema_version=version.version,
                                 message={**(event.message or {}), **mark}))
        return out

    def _register(self, event: ChangeEvent, state: _State | None,
                  out: list[Any]) -> _State:
        """The table's state from ``event`` on; the schema-change event, if any, into ``out``."""
        changes = self._new_schema(event, state)
        while True:
            try:
                out.append(next(changes))
            except StopIteration as done:
                return done.value

    def _new_schema(self, event: ChangeEvent,
                    state: _State | None) -> Generator[ChangeEvent, None, _State]:
        table = incoming = event.table  # state[0] stays the events' own object
        position = event.source.sort_key
        previous: SchemaVersion | None = state[1] if state else self._registry.latest(table.name)
        new_state: _State
        known = previous if previous is not None and previous.schema == table else \
            self._registry.lookup(table)
        if known is None and previous is not None:
            # After a restart the source may no longer see a column's default (see
            # _keep_defaults): the version with it is still the one the table has.
            table = _keep_defaults(table, previous.schema)
            if table is not incoming:
                known = previous if previous.schema == table else self._registry.lookup(table)
        if known is not None and self._policy != 'ignore':
            # A schema already registered is no change: after a restart the slot replays rows
            # written before a later version, and they must not read as a reverse change.
            if known.version not in self._announced and position <= known.position:
                yield self._announce_again(event, known)
            new_state = (incoming, known, None, {})
            self._current[table.name] = new_state
            return new_state
        if self._policy == 'ignore' and previous is not None:
            first = self._registry.versions(table.name)[0]
            if first.version not in self._announced and position <= first.position:
                yield self._announce_again(event, first)
            # A retyped column's values would not fit the first schema's type (the file sinks
            # dead-lettered every such row): left out like a new column's ('' is no column).
            retyped = {c.name: '' for c in incoming.columns
                       if c.name in first.schema.by_name
                       and (first.schema.by_name[c.name].kind, first.schema.by_name[c.name].element)
                       != (c.kind, c.element)}
            new_state = (incoming, first, first.schema, retyped)
            self._current[table.name] = new_state
            _LOG.warning('%s changed schema; --schema_change ignore keeps version %016x',
                         table.name, first.version)
            return new_state
        change = diff(previous.schema, table) if previous is not None else \
            SchemaChange(added=tuple(c.name for c in table.columns))
        problems = _incompatible(previous.schema, table) if previous is not None else []
        registered_schema, target = table, None
        moved: dict[str, str] = {}
        if problems and self._policy == 'strict':
            old_id = previous.version if previous is not None else 0
            raise SchemaChangeError(
                f'{table.name}: incompatible schema change at {position} under '
                f'--schema_change strict (from version {old_id:016x}):\n'
                f'{change.describe()}\nwhy: ' + '; '.join(problems))
        if problems and self._policy == 'lenient':
            assert previous is not None
            registered_schema, moved = _lenient_schema(previous.schema, table)
            target = registered_schema
        version = self._registry.register(registered_schema, position)
        self._changes.inc()
        _LOG.info('%s: schema version %016x at %s\n%s', table.name, version.version, position,
                  change.describe())
        yield self._schema_change(event, version, previous, change, problems)
        new_state = (incoming, version, target, moved)
        self._current[table.name] = new_state
        return new_state

    def _schema_change(self, event: ChangeEvent, version: SchemaVersion,
                       previous: SchemaVersion | None, change: SchemaChange,
                       problems: list[str]) -> ChangeEvent:
        """The ``m`` event announcing ``version`` of ``event``'s table."""
        self._announced.add(version.version)
        return ChangeEvent(
            op=Op.MESSAGE, table=version.schema, source=event.source, ts_ms=event.ts_ms,
            schema_version=version.version,
            message={'kind': 'schema_change', 'table': event.table.name,
                     'version': version.version,
                     'previous_version': previous.version if previous else None,
                     'compatible': not problems, 'policy': self._policy,
                     'incompatibilities': problems, **change.to_json()})

    def _announce_again(self, event: ChangeEvent, version: SchemaVersion) -> ChangeEvent:
        """The schema-change event of a version registered at or after ``event``'s position,
        not announced by this worker: the slot replays from before the version, so the event
        that announced it may never have reached the sink (a crash between registering it and
        the sink's commit).  A duplicate, at worst, as the rows after the last confirmation."""
        versions = self._registry.versions(event.table.name)
        at = next(i for i, v in enumerate(versions) if v.version == version.version)
        previous = versions[at - 1] if at else None
        if previous is None:
            change = SchemaChange(added=tuple(c.name for c in version.schema.columns))
            problems: list[str] = []
        else:
            change = diff(previous.schema, version.schema)
            problems = _incompatible(previous.schema, version.schema)
        _LOG.info('%s: schema version %016x announced again: the stream replays from %s, '
                  'before it took effect', event.table.name, version.version,
                  event.source.sort_key)
        return self._schema_change(event, version, previous, change, problems)


class _EvolveSchemaBatchFn(_EvolveSchemaFn):
    """The same, over lists of events (a source's batches): one list out per list in.
    The lists may hold RenderedChanges too (``ReadPostgresChanges(render_json=True)``)."""

    def process(  # type: ignore[override]
            self, events: list[Any]) -> list[list[Any]]:
        out: list[Any] = []
        current = self._current
        for event in events:
            state = current.get(event.table.name)
            if event.__class__ is RenderedChanges:
                out.extend(self._tag_run(event, state))
            elif state is not None and state[0] is event.table and state[2] is None:
                out.append(event.replace(schema_version=state[1].version))  # the usual case
            else:
                out.extend(super().process(event))
        return [out]

    def _tag_run(self, run: RenderedChanges, state: _State | None) -> list[Any]:
        """The run with its schema version, after the schema-change event of a new one."""
        table = run.table
        if not table.columns:
            return [run]
        out: list[Any] = []
        if state is None or (state[0] is not table and state[0] != table):
            first = ChangeEvent(op=Op.CREATE, table=table, source=run.source, ts_ms=run.ts_ms)
            state = self._register(first, state, out)
        if state[2] is not None:
            # Rendered lines cannot be projected onto another schema (pipelines.cdc renders
            # only under evolve and strict, which never project).
            raise TypeError(f'{table.name}: --schema_change {self._policy} projects rows onto '
                            'an older schema, which rendered JSON lines cannot follow: read '
                            'without render_json')
        out.append(RenderedChanges(table, run.source, run.ts_ms, run.docs,
                                   state[1].version))
        return out


class EvolveSchema(beam.PTransform):
    """Tags ChangeEvents with schema versions kept in a registry at ``registry_uri``.

    With ``batched`` the input and output elements are lists of events (see the sources'
    ``batched``), order kept; schema-change events go into the list before their row.
    """

    def __init__(self, registry_uri: str, policy: str = 'evolve', *,
                 batched: bool = False) -> None:
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f'schema change policy {policy!r} must be one of '
                             f'{", ".join(POLICIES)}')
        SchemaRegistry(registry_uri)  # validates the URI
        self._uri = registry_uri
        self._policy = policy
        self._batched = batched

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        if self._batched:
            # Lists of events, or of anything a source puts in them (RenderedChanges).
            element = beam.typehints.List[ChangeEvent] \
                if events.element_type == beam.typehints.List[ChangeEvent] \
                else beam.typehints.List[Any]
            return events | 'TagVersions' >> beam.ParDo(
                _EvolveSchemaBatchFn(self._uri, self._policy)).with_output_types(element)
        return events | 'TagVersions' >> beam.ParDo(
            _EvolveSchemaFn(self._uri, self._policy)).with_output_types(ChangeEvent)

