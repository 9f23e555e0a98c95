"""One batch of change events reduced to what a SQL target must end up holding.

    plan = plan_batch(events, target_of=lambda table: postgres_target(table))
    for table in plan.tables.values():
        table.truncate, table.changes, table.appends    # what to write, per target table

Pure (no driver, no Beam).  Events are ordered by ``source.sort_key``; per target table:

* several changes of one key collapse to the last one (an update that omits columns,
  ``event.unchanged``, is merged over the earlier row image of the batch, so it still leaves
  those columns alone);
* an update that changes the key deletes the old key and writes the new one;
* a truncate drops the batch's earlier changes of the table and is written first;
* a table without a key gets every inserted, read or updated row appended (a delete of such a
  table cannot name a row: it is reported in ``unkeyed_deletes`` and not applied);
* a table's ``snapshot_complete`` event (``envelope.snapshot_complete``) sets ``snapshot``: rows
  older than the snapshot are gone from the source, written like a truncate at its position
  but after the batch's rows; unless the snapshot skipped rows (dead letters): then it goes to
  ``incomplete_snapshots`` and nothing is deleted (a row it did not bring may be one of them);
* other ``m`` events are counted in ``messages``; malformed events go to ``rejected`` with a
  reason;
* a source table whose target is already another source table's in the batch (``a.users`` and
  ``b.users`` both to a MariaDB ``users``) gets a batch of its own in ``strays``: the sink
  writes one source table's rows into a target table and refuses the other's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

from transforms.envelope import SNAPSHOT_COMPLETE, ChangeEvent, Op, TableSchema, encode_json_value
from transforms.sinks.sql.routing import TargetTable
from transforms.sinks.sql.statements import RESERVED

__all__ = ['Batch', 'Rendered', 'RowChange', 'TableBatch', 'hashed', 'key_hash', 'plan_batch']

_UPSERTS = frozenset({Op.CREATE, Op.READ, Op.UPDATE})
_ROW = operator.attrgetter('row')
_TABLE = operator.attrgetter('table')
_PLAIN = (int, str, bool)


@dataclasses.dataclass(slots=True)
class RowChange:
    """The final state of one row in a batch: ``row`` to write, or None to delete it.

    ``key`` is the key values as canonical JSON text and ``key_hash`` its digest (the
    tombstone key; '' until :func:`hashed` computes it, which deletes always have); for a
    keyless table's append, ``key_hash`` is the row's ``_cb_id``.  ``values`` are a delete's
    typed key values.  ``event`` is the source event whose values the state holds, ``earlier``
    the batch's earlier events of the key that it merges or replaces (see ``events``).
    """

    key: str
    key_hash: str
    pos: str
    row: Mapping[str, Any] | None
    event: ChangeEvent
    table: TableSchema
    values: tuple[Any, ...] = ()
    earlier: tuple[ChangeEvent, ...] = ()
    # Columns the row image lacks whose values the target holds under another key: an update
    # moved the key and left them unchanged (TOAST).  (that key's values, the columns)
    carry: tuple[tuple[Any, ...], tuple[str, ...]] | None = None

    @property
    def events(self) -> list[ChangeEvent]:
        """The source events this state stands for, oldest first: if the target rejects it,
        each is a dead letter (none of them reached the target)."""
        return [*self.earlier, self.event]

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns this state writes (in the row image's order)."""
        return tuple(self.row or ())


@dataclasses.dataclass
class TableBatch:
    """Everything a batch does to one target table."""

    target: TargetTable
    table: TableSchema  # the newest schema seen in the batch
    schemas: list[TableSchema]  # every distinct schema seen, oldest first
    since: list[str]  # the position of each schema's first event in the batch
    connector: str  # the source's connector name (decides whether types are reused verbatim)
    truncate: str | None = None
    truncate_events: list[ChangeEvent] = dataclasses.field(default_factory=list)
    snapshot: str | None = None  # a completed snapshot's position: older rows are gone
    snapshot_events: list[ChangeEvent] = dataclasses.field(default_factory=list)
    changes: dict[str, RowChange] = dataclasses.field(default_factory=dict)
    appends: list[RowChange] = dataclasses.field(default_factory=list)
    # The target table's columns, once the sink has made it hold every schema of the batch.
    target_columns: frozenset[str] = frozenset()
    # What the target rendered ahead for the upserts (``Target.render_upserts``), if anything.
    prepared: Any = dataclasses.field(default=None, repr=False)
    # What the target sent of it before the batch's lock (``Target.stage_ahead``), if anything.
    staged: Any = dataclasses.field(default=None, repr=False)
    _nulled: dict[int, tuple[TableSchema, frozenset[str], tuple[str, ...]]] = dataclasses.field(
        default_factory=dict, repr=False)

    @property
    def keyed(self) -> bool:
        return bool(self.table.key)

    def nulled(self, table: TableSchema) -> tuple[str, ...]:
        """Target columns a row of ``table`` must set NULL: kept after the source dropped
        (or renamed) them, so their old values do not outlive the change."""
        cached = self._nulled.get(id(table))
        if cached is None or cached[0] is not table or cached[1] is not self.target_columns:
            names = tuple(sorted(self.target_columns - table.by_name.keys() - RESERVED))
            cached = self._nulled[id(table)] = (table, self.target_columns, names)
        return cached[2]

    def by_columns(self, changes: Sequence[RowChange]
                   ) -> list[tuple[tuple[str, ...], tuple[str, ...], list[RowChange]]]:
        """``changes`` grouped by the columns they write (with the kept columns they set
        NULL), and by schema: the same column names can have other types in another version."""
        if not changes:
            return []
        # Nearly always one group: checked at C speed (a dict's tuple, list.count) for ~0.1 µs
        # a row, against ~0.35 for the loop below.
        shapes = list(map(tuple, map(_ROW, changes)))
        schemas = list(map(_TABLE, changes))
        if shapes.count(shapes[0]) == len(shapes) \
                and all(map(operator.is_, schemas, repeat(schemas[0]))):
            return [(shapes[0], self.nulled(schemas[0]), list(changes))]
        groups: dict[tuple[tuple[str, ...], int], list[RowChange]] = {}
        for change in changes:
            groups.setdefault((change.columns, id(change.table)), []).append(change)
        return [(columns, self.nulled(group[0].table), group)
                for (columns, _), group in groups.items()]

    def events(self) -> list[ChangeEvent]:
        out = list(self.truncate_events)
        for change in [*self.changes.values(), *self.appends]:
            out.extend(change.events)
        out.extend(self.snapshot_events)
        return out


class Rendered:
    """A target's text for a table's upserts, rendered ahead (``Target.render_upserts``), and what
    it was rendered for: ``groups`` is the target's own."""

    __slots__ = ('changes', 'columns', 'groups')

    def __init__(self, columns: frozenset[str], changes: list[RowChange], groups: Any) -> None:
        self.columns = columns
        self.changes = changes
        self.groups = groups

    def matches(self, tb: TableBatch, changes: Sequence[RowChange]) -> bool:
        """Rendered for these very changes, against the target's columns as they are now
        (a tombstone or truncate mark that makes some stale, or a table altered since, and
        the text is rendered again)."""
        return (self.columns is tb.target_columns or self.columns == tb.target_columns) \
            and len(changes) == len(self.changes) \
            and all(map(operator.is_, changes, self.changes))


@dataclasses.dataclass
class Batch:
    tables: dict[TargetTable, TableBatch]  # by target: the first source table's
    rejected: list[tuple[ChangeEvent, str]]
    unkeyed_deletes: list[ChangeEvent]
    messages: int
    size: int
    # Other source tables going to a target in ``tables``, by target and source table name.
    strays: dict[tuple[TargetTable, str], TableBatch] = dataclasses.field(default_factory=dict)
    # snapshot_complete events of snapshots that skipped rows: no row is taken as deleted.
    incomplete_snapshots: list[ChangeEvent] = dataclasses.field(default_factory=list)


def key_hash(text: str) -> str:
    """The 32-hex-digit digest of a key's canonical text (fixed width for any key)."""
    return hashlib.blake2b(text.encode('utf-8'), digest_size=16).hexdigest()


def hashed(changes: Iterable[RowChange]) -> list[str]:
    """The changes' key hashes, computing those not known yet.

    Upserts get theirs only when needed (the target holds tombstones): ~0.5 µs a row."""
    out = []
    for change in changes:
        if not change.key_hash:
            change.key_hash = key_hash(change.key)
        out.append(change.key_hash)
    return out


def _key_text(table: TableSchema, row: Any) -> str | None:
    """The key values of ``row`` as canonical JSON; None if a key column is missing or NULL."""
    key = table.key
    if len(key) == 1:
        value = row.get(key[0])
        if type(value) is int:  # the common case, and what json.dumps([value]) gives
            return f'[{value}]'
    values = []
    for name in key:
        value = row.get(name)
        if value is None:
            return None
        if type(value) not in _PLAIN:
            value = encode_json_value(table.by_name[name], value)
        values.append(value)
    return json.dumps(values)  # default arguments: the C encoder, ~3x faster than custom ones


def _row_id(table: TableSchema, pos: str, row: Any) -> str:
    doc = {c.name: encode_json_value(c, row[c.name]) for c in table.columns if c.name in row}
    text = json.dumps(doc, sort_keys=True, separators=(',', ':'), ensure_ascii=False)
    return pos + key_hash(text)


def _problem(event: ChangeEvent) -> str | None:
    if event.op in _UPSERTS and event.after is None:
        return f"op '{event.op.value}' without an after image"
    if event.op is Op.DELETE and event.table.key and event.before is None:
        return 'delete without a before image (the key)'
    return None


def _table_batch(batch: Batch, table: TableSchema, pos: str, connector: str,
                 target_of: Callable[[TableSchema], TargetTable]) -> TableBatch | str:
    """The batch of ``table``'s target (made on first sight), or why its events are rejected."""
    reserved = RESERVED.intersection(table.by_name)
    if reserved:
        return f'column name(s) {sorted(reserved)} are reserved for the sink\'s bookkeeping'
    try:
        target = target_of(table)
    except (ValueError, TypeError) as exc:
        return f'route: {exc}'
    tb = batch.tables.get(target)
    if tb is not None and tb.table.name != table.name:  # another source table, same target
        tb = batch.strays.get((target, table.name))
        if tb is None:
            tb = batch.strays[target, table.name] = TableBatch(target, table, [table], [pos],
                                                               connector)
    elif tb is None:
        tb = batch.tables[target] = TableBatch(target, table, [table], [pos], connector)
    if tb.table != table:  # events are in position order: this schema is the newer one
        tb.table = table
        if table not in tb.schemas:
            tb.schemas.append(table)
            tb.since.append(pos)
    return tb


def plan_batch(events: Iterable[ChangeEvent],
               target_of: Callable[[TableSchema], TargetTable]) -> Batch:
    """Reduce ``events`` (any order) to per-table final states; see the module docstring."""
    events = events if isinstance(events, list) else list(events)
    positions = [e.source.sort_key for e in events]
    # An order of indexes rather than (position, event) pairs: every object the sink keeps
    # alive through a batch is rescanned by the garbage collector (a large cost through Beam).
    # Stable: equal positions keep their arrival order.
    order = sorted(range(len(events)), key=positions.__getitem__)
    batch = Batch(tables={}, rejected=[], unkeyed_deletes=[], messages=0, size=len(events))
    # By id(TableSchema): a source shares one schema object among its events, so this skips
    # hashing schemas and targets per event (the plan costs a few µs an event; this was half).
    known: dict[int, TableBatch | str] = {}
    message, update, upserts = Op.MESSAGE, Op.UPDATE, _UPSERTS
    for index in order:
        pos, event = positions[index], events[index]
        op = event.op
        if op is message and not (event.table.columns and event.message
                                  and event.message.get('kind') == SNAPSHOT_COMPLETE):
            batch.messages += 1
            continue
        if op is message and event.message.get('skipped'):  # type: ignore[union-attr]
            batch.incomplete_snapshots.append(event)
            batch.messages += 1
            continue
        table = event.table
        tb = known.get(id(table))
        if tb is None:
            tb = known[id(table)] = _table_batch(batch, table, pos, event.source.connector,
                                                 target_of)
        if isinstance(tb, str):
            batch.rejected.append((event, tb))
            continue
        if op is message:
            tb.snapshot = pos
            tb.snapshot_events.append(event)
            continue
        after = event.after
        if op in upserts and after is not None and table.key and (op is not update
                                                                   or not event.before):
            # The common case inline: an insert or update that does not move the key.
            key = _key_text(table, after)
            if key is not None:
                previous = tb.changes.get(key)
                if previous is None:
                    tb.changes[key] = RowChange(key, '', pos, after, event, table)
                    continue
                if previous.row is None or len(after) >= len(table.columns):  # replaces it
                    tb.changes[key] = RowChange(key, '', pos, after, event, table,
                                                earlier=_stood_for(previous))
                    continue
        problem = _problem(event) or _fold(tb, pos, event)
        if problem == 'unkeyed delete':
            batch.unkeyed_deletes.append(event)
        elif problem:
            batch.rejected.append((event, problem))
    return batch


def _fold(tb: TableBatch, pos: str, event: ChangeEvent) -> str | None:
    table = event.table
    if event.op is Op.TRUNCATE:
        tb.truncate = pos
        tb.truncate_events.append(event)
        tb.changes.clear()  # all older (events arrive here in position order)
        tb.appends.clear()
        return None
    if not table.key:
        if event.op is Op.DELETE:
            return 'unkeyed delete'
        image = dict(event.after or {})
        tb.appends.append(RowChange('', _row_id(table, pos, image), pos, image, event, table))
        return None
    if event.op is Op.DELETE:
        key = _key_text(table, event.before)
        if key is None:
            return f'the before image lacks key column(s) {list(table.key)}'
        _put(tb, RowChange(key, '', pos, None, event, table, _values(table, event.before),
                           _stood_for(tb.changes.get(key))))
        return None
    after = event.after or {}
    key = _key_text(table, after)
    if key is None:
        return f'the after image lacks key column(s) {list(table.key)}'
    carry = None
    if event.op is Op.UPDATE and event.before:
        old = _key_text(table, event.before)
        if old is not None and old != key:
            if event.unchanged:
                after, carry = _moved(tb.changes.get(old), table, event, after)
            _put(tb, RowChange(old, '', pos, None, event, table,
                               _values(table, event.before), _stood_for(tb.changes.get(old))))
    previous = tb.changes.get(key)
    # The batch's earlier changes of the key, merged or replaced, are rejected with this one:
    # a dead letter for each, none lost because they shared a batch.
    earlier = _stood_for(previous)
    row: Mapping[str, Any]
    if previous is not None and previous.row is not None and len(after) < len(table.columns):
        # A partial image (unchanged columns) keeps the values this batch already holds.
        row = {**previous.row, **after}
        if previous.carry is not None:  # and those the target holds under the key it left
            rest = tuple(name for name in previous.carry[1] if name not in row)
            carry = (previous.carry[0], rest) if rest else None
    else:
        row = after  # never modified: a merge above makes a new dict
    _put(tb, RowChange(key, '', pos, row, event, table, earlier=earlier, carry=carry))
    return None


def _moved(source: RowChange | None, table: TableSchema, event: ChangeEvent,
           after: Mapping[str, Any]
           ) -> tuple[Mapping[str, Any], tuple[tuple[Any, ...], tuple[str, ...]] | None]:
    """An update that moved the key and left columns unchanged: their values are the old
    key's, as this batch holds them (``source``, its state before the move) or else as the
    target does.  PostgreSQL's own apply updates the row in place; writing the new key's
    image alone lost them (NULL), or, where keys were swapped, kept the other row's."""
    unchanged = [name for name in table.by_name if name in event.unchanged and name not in after]
    if source is not None and source.row is not None:
        known = {name: source.row[name] for name in unchanged if name in source.row}
        after = {**known, **after}
        rest = tuple(name for name in unchanged if name not in known)
        if not rest:
            return after, None
        # Not in the batch's image: in the target, under the key the chain started from.
        origin = source.carry[0] if source.carry is not None else _values(table, event.before)
        return after, (origin, rest)
    return after, (_values(table, event.before), tuple(unchanged))


def _values(table: TableSchema, row: Any) -> tuple[Any, ...]:
    return tuple(row[name] for name in table.key)


def _stood_for(previous: RowChange | None) -> tuple[ChangeEvent, ...]:
    """The events a state stands for, as the ``earlier`` of the state that follows it."""
    return () if previous is None else (*previous.earlier, previous.event)


def _put(tb: TableBatch, change: RowChange) -> None:
    if change.row is None:  # a delete's tombstone needs it in any case
        change.key_hash = key_hash(change.key)
    tb.changes[change.key] = change
