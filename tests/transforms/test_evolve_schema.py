"""Schema versions and the four schema-change policies, run in a real Beam pipeline."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest

from transforms.envelope import (
    ChangeEvent,
    Column,
    Kind,
    Op,
    RenderedChanges,
    SourcePosition,
    TableSchema,
    debezium_json_bytes,
)
from transforms.schema.evolve import EvolveSchema, SchemaChangeError, diff
from transforms.schema.registry import SchemaRegistry, fingerprint

V1 = TableSchema('public', 'orders', (
    Column('id', Kind.INT32, 'integer', False), Column('qty', Kind.INT32, 'integer'),
    Column('note', Kind.STRING, 'character varying(20)')), key=('id',))
ADDED = TableSchema('public', 'orders', (*V1.columns, Column('paid', Kind.BOOLEAN, 'boolean')),
                    key=('id',))
WIDENED = TableSchema('public', 'orders', (
    V1.columns[0], Column('qty', Kind.INT64, 'bigint'), Column('note', Kind.TEXT, 'text')),
    key=('id',))
RETYPED = TableSchema('public', 'orders', (
    V1.columns[0], Column('qty', Kind.TEXT, 'text'), V1.columns[2]), key=('id',))


def event(table: TableSchema, lsn: int, **after: Any) -> ChangeEvent:
    return ChangeEvent(op=Op.CREATE, table=table, after=after, source=SourcePosition(
        'postgresql', 'shop', 'shop', table.schema, table.table, 0, lsn=lsn, commit_lsn=lsn))


_COLLECTED: dict[str, list[ChangeEvent]] = {}  # the in-process runner shares module state


class _Collect(beam.DoFn):
    def __init__(self, key: str) -> None:
        self._key = key

    def process(self, element: ChangeEvent) -> None:
        _COLLECTED.setdefault(self._key, []).append(element)


def run(events: list[ChangeEvent], registry: Path, policy: str) -> list[ChangeEvent]:
    key = f'{registry}:{len(_COLLECTED)}'
    # One bundle, in order: a DoFn keeps per-table state, as it does behind a source.
    with beam.Pipeline() as pipeline:
        _ = (pipeline | beam.Create([events]) | beam.FlatMap(lambda batch: batch)
             | EvolveSchema(str(registry), policy) | beam.ParDo(_Collect(key)))
    return _COLLECTED.pop(key, [])


def test_registry_ids_are_stable_across_instances_and_ordered_by_position(tmp_path: Path) -> None:
    first = SchemaRegistry(str(tmp_path)).register(V1, position='0001')
    again = SchemaRegistry(str(tmp_path)).register(V1, position='0009')
    assert first.version == again.version == fingerprint(V1)
    assert again.position == '0001'  # written once: the first position stays
    SchemaRegistry(str(tmp_path)).register(ADDED, position='0005')
    versions = SchemaRegistry(str(tmp_path)).versions('public.orders')
    assert [v.schema for v in versions] == [V1, ADDED]
    assert fingerprint(ADDED) != fingerprint(V1)


def test_diff_names_added_removed_and_retyped_columns() -> None:
    change = diff(V1, RETYPED)
    assert change.retyped == (('qty', 'integer', 'text'),) and not change.added
    change = diff(ADDED, V1)
    assert change.removed == ('paid',) and 'paid' in change.describe()


def test_evolve_emits_a_schema_change_before_the_first_row_of_each_version(
        tmp_path: Path) -> None:
    out = run([event(V1, 10, id=1, qty=2, note='a'), event(ADDED, 20, id=2, qty=1, note='b',
                                                           paid=True)], tmp_path, 'evolve')
    assert [e.op for e in out] == [Op.MESSAGE, Op.CREATE, Op.MESSAGE, Op.CREATE]
    assert out[0].message['kind'] == 'schema_change' and out[0].message['previous_version'] is None
    assert out[2].message['added'] == ['paid'] and out[2].message['compatible']
    assert out[1].schema_version == fingerprint(V1) == out[0].schema_version
    assert out[3].schema_version == fingerprint(ADDED) == out[2].message['version']
    assert [v.schema for v in SchemaRegistry(str(tmp_path)).versions('public.orders')] == \
        [V1, ADDED]


def test_a_restarted_pipeline_continues_from_the_registered_version(tmp_path: Path) -> None:
    run([event(V1, 10, id=1, qty=2, note='a')], tmp_path, 'evolve')
    out = run([event(V1, 30, id=3, qty=2, note='c')], tmp_path, 'evolve')
    assert [e.op for e in out] == [Op.CREATE]  # same version: no new schema-change event
    assert out[0].schema_version == fingerprint(V1)


def test_strict_passes_compatible_widening_and_stops_on_an_incompatible_retype(
        tmp_path: Path) -> None:
    out = run([event(V1, 10, id=1, qty=2, note='a'),
               event(WIDENED, 20, id=2, qty=3, note='b')], tmp_path / 'ok', 'strict')
    assert out[-1].schema_version == fingerprint(WIDENED)
    with pytest.raises(Exception) as info:
        run([event(V1, 10, id=1, qty=2, note='a'), event(RETYPED, 20, id=2, qty='many',
                                                         note='b')], tmp_path / 'no', 'strict')
    text = str(info.value)
    assert SchemaChangeError.__name__ in text or 'incompatible schema change' in text
    assert 'qty: integer -> text' in text


def test_lenient_moves_an_incompatible_retype_to_a_new_column(tmp_path: Path) -> None:
    out = run([event(V1, 10, id=1, qty=2, note='a'),
               event(RETYPED, 20, id=2, qty='many', note='b')], tmp_path, 'lenient')
    last = out[-1]
    assert last.after == {'id': 2, 'qty__text': 'many', 'note': 'b'}
    assert [c.name for c in last.table.columns] == ['id', 'qty', 'note', 'qty__text']
    assert last.message == {'lenient': ['qty']}
    assert out[-2].message['kind'] == 'schema_change' and not out[-2].message['compatible']


def test_ignore_projects_every_event_onto_the_first_schema(tmp_path: Path) -> None:
    out = run([event(V1, 10, id=1, qty=2, note='a'),
               event(ADDED, 20, id=2, qty=1, note='b', paid=True)], tmp_path, 'ignore')
    last = out[-1]
    assert last.table == V1 and last.after == {'id': 2, 'qty': 1, 'note': 'b'}
    assert last.schema_version == fingerprint(V1) and last.message == {'ignore': ['paid']}
    assert [e.op for e in out].count(Op.MESSAGE) == 1


def test_ignore_leaves_a_retyped_columns_values_out_too(tmp_path: Path) -> None:
    """Kept, they did not fit the first schema's type: every later row of the table became a
    dead letter of the Avro and Parquet sinks (and a jsonl line its reader refuses)."""
    out = run([event(V1, 10, id=1, qty=2, note='a'),
               event(RETYPED, 20, id=2, qty='many', note='b')], tmp_path, 'ignore')
    last = out[-1]
    assert last.table == V1 and last.after == {'id': 2, 'note': 'b'}
    assert last.schema_version == fingerprint(V1) and last.message == {'ignore': ['qty']}


def run_batched(batches: list[list[ChangeEvent]], registry: Path, policy: str
                ) -> list[list[ChangeEvent]]:
    key = f'{registry}:{len(_COLLECTED)}'
    with beam.Pipeline() as pipeline:
        _ = (pipeline | beam.Create([batches]) | beam.FlatMap(lambda batch: batch)
             | EvolveSchema(str(registry), policy, batched=True) | beam.ParDo(_Collect(key)))
    collected: Any = _COLLECTED.pop(key, [])  # the lists, collected as they are
    return collected


@pytest.mark.parametrize('policy', ['evolve', 'lenient', 'ignore', 'strict'])
def test_batched_lists_give_the_same_events_in_the_same_lists(tmp_path: Path,
                                                               policy: str) -> None:
    later = WIDENED if policy == 'strict' else RETYPED
    events = [event(V1, 10, id=1, qty=2, note='a'), event(V1, 11, id=2, qty=3, note='b'),
              event(ADDED, 20, id=3, qty=1, note='c', paid=True),
              event(ADDED, 21, id=4, qty=1, note='d', paid=False),
              event(later, 30, id=5, qty='7' if later is RETYPED else 7, note='e'),
              event(later, 31, id=6, qty='8' if later is RETYPED else 8, note='f')]
    batches = [events[:1], events[1:4], [], events[4:]]
    one_by_one = run(events, tmp_path / 'single', policy)
    lists = run_batched(batches, tmp_path / 'batched', policy)
    assert len(lists) == len(batches)  # one list out per list in
    assert [e for batch in lists for e in batch] == one_by_one
    if policy == 'evolve':  # the schema change sits in its list, before its first row
        assert [e.op for e in lists[1]] == [Op.CREATE, Op.MESSAGE, Op.CREATE, Op.CREATE]
        assert lists[2] == []


def rendered(events: list[ChangeEvent]) -> list[Any]:
    """The events as a source with render_json hands them on: runs of one table's documents."""
    out: list[Any] = []
    for e in events:
        doc = debezium_json_bytes(e)[:-1]
        if out and out[-1].table is e.table:
            out[-1].docs.append(doc)
        else:
            out.append(RenderedChanges(e.table, e.source, e.ts_ms, [doc]))
    return out


def lines(elements: list[Any]) -> list[bytes]:
    return [line for element in elements for line in (
        element.lines() if isinstance(element, RenderedChanges)
        else debezium_json_bytes(element) + b'\n').splitlines()]


@pytest.mark.parametrize('policy', ['evolve', 'strict'])
def test_rendered_runs_get_the_versions_and_schema_changes_events_get(tmp_path: Path,
                                                                       policy: str) -> None:
    later = WIDENED if policy == 'strict' else RETYPED
    events = [event(V1, 10, id=1, qty=2, note='a'), event(V1, 11, id=2, qty=3, note='b'),
              event(ADDED, 20, id=3, qty=1, note='c', paid=True),
              event(ADDED, 21, id=4, qty=1, note='d', paid=False),
              event(later, 30, id=5, qty='7' if later is RETYPED else 7, note='e')]
    one_by_one = run(events, tmp_path / 'events', policy)
    runs = run_batched([rendered(events[:3]), rendered(events[3:])], tmp_path / 'runs', policy)
    out = [element for batch in runs for element in batch]
    assert lines(out) == lines(one_by_one)
    assert [type(e).__name__ for e in out] == [
        'ChangeEvent', 'RenderedChanges', 'ChangeEvent', 'RenderedChanges', 'RenderedChanges',
        'ChangeEvent', 'RenderedChanges']
    assert [e.schema_version for e in out if isinstance(e, RenderedChanges)] == [
        fingerprint(V1), fingerprint(ADDED), fingerprint(ADDED), fingerprint(later)]


def test_rendered_runs_are_refused_where_rows_would_be_projected(tmp_path: Path) -> None:
    runs = rendered([event(V1, 10, id=1, qty=2, note='a'), event(RETYPED, 20, id=2, qty='x',
                                                                 note='b')])
    with pytest.raises(Exception, match='projects rows onto an older schema'):
        run_batched([runs], tmp_path, 'lenient')


def test_bad_policy_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'sometimes' must be one of evolve, strict"):
        EvolveSchema(str(tmp_path), 'sometimes')


def test_rows_replayed_after_a_restart_are_not_a_reverse_change(tmp_path: Path) -> None:
    run([event(V1, 10, id=1, qty=2, note='a'), event(WIDENED, 20, id=2, qty=3, note='b')],
        tmp_path, 'strict')
    # The restarted pipeline sees the slot replay rows from before the widening first.
    out = run([event(V1, 11, id=1, qty=2, note='a'), event(WIDENED, 21, id=2, qty=3, note='b')],
              tmp_path, 'strict')
    assert [e.op for e in out] == [Op.CREATE, Op.CREATE]
    assert [e.schema_version for e in out] == [fingerprint(V1), fingerprint(WIDENED)]
    # Replayed from where the versions took effect, their events come again, in their order:
    # announced once more (the first time may never have reached the sink), never reversed.
    out = run([event(V1, 10, id=1, qty=2, note='a'), event(WIDENED, 20, id=2, qty=3, note='b')],
              tmp_path, 'strict')
    assert [e.op for e in out] == [Op.MESSAGE, Op.CREATE, Op.MESSAGE, Op.CREATE]
    assert [e.message['previous_version'] for e in out[::2]] == [None, fingerprint(V1)]


def _with_paid_default(default: str | None) -> TableSchema:
    paid = Column('paid', Kind.BOOLEAN, 'boolean', default=default)
    return TableSchema('public', 'orders', (*V1.columns, paid), key=('id',))


def test_a_restarted_source_that_lost_a_default_keeps_the_registered_version(
        tmp_path: Path) -> None:
    """``ADD COLUMN paid boolean DEFAULT false`` registered with its default; after a restart
    and a table rewrite the source reads no default (docs/schema.md): same version, no event."""
    kept, lost = _with_paid_default('false'), _with_paid_default(None)
    run([event(V1, 10, id=1, qty=2, note='a'), event(kept, 20, id=2, qty=1, note='b',
                                                     paid=True)], tmp_path, 'evolve')
    out = run([event(lost, 30, id=3, qty=2, note='c', paid=False),
               event(lost, 40, id=4, qty=2, note='d', paid=True)], tmp_path, 'evolve')
    assert [e.op for e in out] == [Op.CREATE, Op.CREATE]
    assert {e.schema_version for e in out} == {fingerprint(kept)}
    assert out[0].table == lost  # the events themselves are left as they are
    assert [v.schema for v in SchemaRegistry(str(tmp_path)).versions('public.orders')] == \
        [V1, kept]


def test_a_lost_default_is_kept_in_the_next_real_change(tmp_path: Path) -> None:
    kept = _with_paid_default('false')
    run([event(kept, 20, id=2, qty=1, note='b', paid=True)], tmp_path, 'evolve')
    widened = TableSchema('public', 'orders', (*WIDENED.columns, _with_paid_default(None)
                                               .columns[-1]), key=('id',))
    out = run([event(widened, 30, id=3, qty=2, note='c', paid=False)], tmp_path, 'evolve')
    assert [e.op for e in out] == [Op.MESSAGE, Op.CREATE]
    registered = SchemaRegistry(str(tmp_path)).versions('public.orders')[-1].schema
    assert registered.by_name['paid'].default == 'false'
    assert registered.by_name['qty'].source_type == 'bigint'
    assert out[0].message['retyped'] and not out[0].message['added']


@pytest.mark.parametrize('policy', ['evolve', 'strict', 'lenient'])
def test_a_restart_replaying_from_before_a_version_announces_it_again(tmp_path: Path,
                                                                      policy: str) -> None:
    # A crash after the new version was registered, before the sink committed its event: the
    # slot replays from before the version, and the event must come again.
    first = run([event(V1, 10, id=1, qty=2, note='a'), event(ADDED, 20, id=2, qty=1, note='b',
                                                             paid=True)], tmp_path, policy)
    announced = [e for e in first if e.op is Op.MESSAGE]
    replayed = run([event(ADDED, 20, id=2, qty=1, note='b', paid=True),
                    event(ADDED, 21, id=3, qty=1, note='c', paid=False)], tmp_path, policy)
    assert replayed[0].op is Op.MESSAGE
    assert replayed[0].message == announced[-1].message
    assert replayed[0].schema_version == announced[-1].schema_version
    assert [e.op for e in replayed[1:]] == [Op.CREATE, Op.CREATE]
    # Replaying from after the version took effect announces nothing.
    later = run([event(ADDED, 21, id=3, qty=1, note='c', paid=False)], tmp_path, policy)
    assert [e.op for e in later] == [Op.CREATE]
    # Nor does a replay of the first version's rows from after it.
    older = run([event(V1, 11, id=1, qty=3, note='a')], tmp_path, policy)
    assert [e.op for e in older] == [Op.CREATE]
    # The rendered runs of a source take the same path.
    runs = run_batched([rendered([event(ADDED, 20, id=2, qty=1, note='b', paid=True)])],
                       tmp_path, policy) if policy in ('evolve', 'strict') else [[announced[-1]]]
    assert runs[0][0].message == announced[-1].message


def test_under_ignore_a_restart_from_before_the_first_version_announces_it_again(
        tmp_path: Path) -> None:
    first = run([event(V1, 10, id=1, qty=2, note='a'), event(ADDED, 20, id=2, qty=1, note='b',
                                                             paid=True)], tmp_path, 'ignore')
    assert [e.op for e in first] == [Op.MESSAGE, Op.CREATE, Op.CREATE]  # ADDED is never one
    again = run([event(V1, 10, id=1, qty=2, note='a'), event(ADDED, 20, id=2, qty=1, note='b',
                                                             paid=True)], tmp_path, 'ignore')
    assert [e.op for e in again] == [Op.MESSAGE, Op.CREATE, Op.CREATE]
    assert again[0].message == first[0].message
    later = run([event(ADDED, 20, id=2, qty=1, note='b', paid=True)], tmp_path, 'ignore')
    assert [e.op for e in later] == [Op.CREATE]
