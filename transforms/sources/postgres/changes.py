"""Turns decoded pgoutput messages into ChangeEvents: relation cache, row values, transactions.

Pure apart from look-up callables (primary keys, type catalog rows and, optionally, the
missing values of columns added with a constant default), so the whole message-to-event logic
is tested without a server::

    assembler = ChangeAssembler('shop', 'shop', lookup_key, lookup_types, lookup_missing)
    assembler.begin(begin)
    events = assembler.change(insert, lsn)      # list of ChangeEvent
    assembler.commit(commit)

Unchanged TOASTed columns: pgoutput sends no value for them.  When the old tuple (REPLICA
IDENTITY FULL) carries the value it is copied into ``after``; otherwise the column is left out
of ``after`` and named in ``ChangeEvent.unchanged``, so a sink leaves the target column as is.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from transforms.envelope import (
    ChangeEvent,
    Column,
    Op,
    RenderedChanges,
    SourcePosition,
    TableSchema,
    TransactionInfo,
    debezium_json_bytes,
    debezium_row_json,
)
from transforms.sources.postgres import pgtypes
from transforms.sources.postgres.catalog import CatalogColumn
from transforms.sources.postgres.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    Truncate,
    TypeMessage,
    Update,
)

__all__ = ['HEARTBEAT_PREFIX', 'MESSAGES_TABLE', 'ChangeAssembler', 'RelationState']

_LOG = logging.getLogger(__name__)

_INSERT, _UPDATE, _NEW_TUPLE = b'IUN'
_U32 = struct.Struct('!I')
_NO_COLUMNS: frozenset[str] = frozenset()
# render_into's markers in the order it fills them: a marker value, and what stays of it
# around the value filled in.
_MARKERS = (
    (b'"after":{}', b'"after":', b''),
    (b'"ts_ms":-1000001', b'"ts_ms":', b''),
    (b'"txId":-1000002', b'"txId":', b''),
    (b'"lsn":-1000003', b'"lsn":', b''),
    (b'"commit_lsn":-1000004', b'"commit_lsn":', b''),
    (b'"ts_ms":-1000005', b'"ts_ms":', b''),
    (b'"id":"-1000006"', b'"id":"', b'"'),
    (b'"total_order":-1000007', b'"total_order":', b''),
    (b'"data_collection_order":-1000008', b'"data_collection_order":', b''),
)


def _xid_follows(xid: int, other: int) -> bool:
    """Whether 32-bit transaction id ``xid`` is newer than ``other``, modulo wraparound."""
    return 0 < (xid - other) % 2**32 < 2**31


HEARTBEAT_PREFIX = 'changebeam_heartbeat'
"""Prefix of the logical messages the source emits to keep an idle slot advancing."""

MESSAGES_TABLE = TableSchema(schema='', table='_messages', columns=())
"""The pseudo-table of ``m`` events (logical decoding messages)."""


@dataclasses.dataclass(frozen=True)
class RelationState:
    """A relation as last described by the server, with its prebuilt row decoders (and JSON
    renderer, for the relations whose column types it writes)."""

    relation: Relation
    schema: TableSchema
    decode_row: Callable[[Sequence[Any]], tuple[dict[str, Any], frozenset[str]]]
    identity: tuple[str, ...]  # replica identity columns, as flagged in the Relation message
    decode_wire: Callable[[bytes, int], tuple[dict[str, Any], int] | None]  # the fast path
    # render_into's faster path, straight to a change's document (pgtypes.wire_doc_renderer);
    # None for a relation of other types, or without the C module
    render_doc: Callable[[bytes, int, tuple[bytes, ...], tuple[Any, ...]], bytes | None] | None


def _fill(parts: tuple[bytes, ...], row: bytes, values: tuple[Any, ...]) -> bytes:
    """What ``RelationState.render_doc`` writes, in Python: the parts with the row after the
    first and each value (an int in decimal, bytes as they are) after each next one."""
    out = [parts[0], row]
    for part, value in zip(parts[1:-1], values, strict=True):
        out.append(part)
        out.append(value if type(value) is bytes else b'%d' % value)
    out.append(parts[-1])
    return b''.join(out)


class ChangeAssembler:
    """Keeps the state of one replication stream: relations, types and the open transaction."""

    def __init__(self, server_name: str, database: str,
                 lookup_key: Callable[[int], tuple[str, ...]],
                 lookup_types: Callable[[Sequence[int]], Mapping[int, pgtypes.TypeInfo]],
                 lookup_missing: Callable[[int], Mapping[str, CatalogColumn]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``lookup_missing(relation_oid)``: the table's columns in the catalog by name (see
        ``catalog.missing_values``); ``attmissingval`` becomes ``Column.default``.  None: no
        defaults."""
        self._server = server_name
        self._database = database
        self._lookup_key = lookup_key
        self._lookup_types = lookup_types
        self._lookup_missing = lookup_missing
        self._clock = clock
        self._types: dict[int, pgtypes.TypeInfo] = {}
        self._relations: dict[int, RelationState] = {}
        # The open transaction: (final_lsn, commit_ts, xid) of its Begin; None between them.
        self._tx: tuple[int, int, int] | None = None
        self._tx_source: dict[str, Any] | None = None  # _tx_fields() builds it when asked
        self._tx_id: str | None = None  # _event's, made once a transaction when asked
        # Defaults from the dataclass itself, so that a new field cannot be missed.
        self._source_template: dict[str, Any] = {
            **{f.name: f.default for f in dataclasses.fields(SourcePosition)
               if f.default is not dataclasses.MISSING},
            'connector': 'postgresql', 'name': server_name, 'db': database, 'schema': '',
            'table': '', 'ts_ms': 0}
        self._total_order = 0
        self._table_order: dict[str, int] = {}
        # render_into: per relation oid, (its TableSchema, parts of an Insert, of an Update)
        self._formats: dict[int, tuple[TableSchema, tuple[bytes, ...] | None,
                                       tuple[bytes, ...] | None]] = {}
        self._tx_values: tuple[int, int, int, bytes] = (0, 0, 0, b'')

    @property
    def server_name(self) -> str:
        return self._server

    @property
    def database(self) -> str:
        return self._database

    # -- transaction boundaries ----------------------------------------------------------------

    def begin(self, message: Begin) -> None:
        self.begin_at(message.final_lsn, message.commit_ts, message.xid)

    def begin_at(self, final_lsn: int, commit_ts: int, xid: int) -> None:
        """A Begin's fields (the read loop gets them decoded by ``_pqcopy``): once per
        transaction, so only what every change needs is made here."""
        self._tx = (final_lsn, commit_ts, xid)
        self._total_order = 0
        self._table_order = {}
        self._tx_source = None
        self._tx_id = None
        self._tx_values = (commit_ts // 1000, xid, final_lsn, b'%d:%d' % (xid, final_lsn))

    def _tx_fields(self) -> dict[str, Any]:
        """Every field of the transaction's source positions but schema, table and lsn."""
        source = self._tx_source
        if source is None:
            commit_ms, xid, final_lsn, _ = self._tx_values
            source = self._tx_source = self._source_template.copy()
            source['ts_ms'] = commit_ms
            source['tx_id'] = xid
            source['commit_lsn'] = final_lsn
        return source

    def commit(self, message: Commit | None = None) -> None:
        """The transaction ended (its Commit; the read loop passes none)."""
        self._tx = None

    def abandon(self) -> None:
        """Forget a transaction whose rest will not arrive (the connection broke)."""
        self._tx = None

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    # -- schema --------------------------------------------------------------------------------

    def relation(self, message: Relation) -> RelationState:
        unknown = [c.type_oid for c in message.columns
                   if c.type_oid not in self._types and not pgtypes.is_builtin(c.type_oid)]
        if unknown:
            self._types.update(self._lookup_types(unknown))
        columns = tuple(pgtypes.column_for(c, self._types) for c in message.columns)
        if self._lookup_missing is not None:
            columns = self._with_missing_values(message, columns,
                                                self._relations.get(message.oid))
        identity = tuple(c.name for c in message.columns if c.is_key)
        # The old-row image holds the replica identity index's columns only, whatever the
        # primary key: keyed on the primary key, a delete or a key change could not name its
        # row.  PostgreSQL requires that index to be unique, not partial and on NOT NULL
        # columns, so it is a key.  (Its index dropped, the table has no identity: UPDATEs
        # and DELETEs fail at the source.)
        if message.replica_identity == 'i' and identity:
            key = identity
        else:
            key = self._lookup_key(message.oid)
        table = TableSchema(schema=message.namespace, table=message.name, columns=columns,
                            key=key)
        state = RelationState(message, table, pgtypes.row_decoder(columns), identity,
                              pgtypes.wire_row_decoder(columns), pgtypes.wire_doc_renderer(table))
        self._relations[message.oid] = state
        return state

    def _with_missing_values(self, message: Relation, columns: tuple[Column, ...],
                             previous: RelationState | None) -> tuple[Column, ...]:
        """Columns added by ``ADD COLUMN … DEFAULT <constant>`` (PostgreSQL 11+) carry the value
        the rows older than it read, which the log never shows, as ``Column.default``.

        The catalog answers as it is now, not as of the change: a stream that lags behind a
        rewrite (``VACUUM FULL``, ``CLUSTER``, a rewriting ``ALTER … TYPE``) would read the value
        as gone.  So it is looked up only for columns the stream sees for the first time; a
        column it already knows keeps the value it came with, through any later version."""
        assert self._lookup_missing is not None
        known = {c.name: c.default for c in previous.schema.columns} if previous else {}
        new = previous is None or any(c.name not in known for c in columns)
        catalog = self._lookup_missing(message.oid) if new else {}
        xid = message.xid if message.xid is not None else \
            self._tx[2] if self._tx is not None else None
        out = []
        for column in columns:
            if column.name in known:
                default = known[column.name]
            else:
                default = self._missing_value(message, column, catalog.get(column.name), xid)
            out.append(column if default is None else dataclasses.replace(column, default=default))
        return tuple(out)

    @staticmethod
    def _missing_value(message: Relation, column: Column, entry: CatalogColumn | None,
                       xid: int | None) -> str | None:
        if entry is not None and entry.missing is not None:
            try:
                return pgtypes.missing_value_text(column, entry.missing)
            except ValueError as exc:  # never seen; the column stays without a default
                _LOG.warning('%s.%s: %s', message.namespace, message.name, exc)
                return None
        if entry is not None and entry.has_default and xid is not None \
                and _xid_follows(entry.xmin, xid):
            # Written after this change: a rewrite since may have cleared the value.
            _LOG.warning(
                '%s.%s: column %r has a DEFAULT, and its catalog row changed after transaction '
                '%d that first shows it (the table was altered or rewritten since), so the '
                'value rows older than the column read can no longer be known; if it was '
                'added with a constant DEFAULT, rows not written since are NULL in the '
                'targets: backfill the table', message.namespace, message.name, column.name, xid)
        return None

    def type(self, message: TypeMessage) -> None:
        # Type messages only name a type; enums and domains need the catalog, so forget what we
        # knew and ask again when a Relation uses it.
        self._types.pop(message.oid, None)

    def table_for(self, relation_oid: int) -> TableSchema:
        return self._state(relation_oid).schema

    def _state(self, relation_oid: int) -> RelationState:
        try:
            return self._relations[relation_oid]
        except KeyError:
            raise ValueError(f'change for relation {relation_oid} arrived before its Relation '
                             'message') from None

    # -- changes -------------------------------------------------------------------------------

    def change(self, message: Insert | Update | Delete | Truncate, lsn: int) -> list[ChangeEvent]:
        """The events of one Insert/Update/Delete (one event) or Truncate (one per table)."""
        if isinstance(message, Truncate):
            return [self._event(Op.TRUNCATE, self._state(oid), lsn, None, None, frozenset())
                    for oid in message.relation_oids]
        state = self._state(message.relation_oid)
        if isinstance(message, Insert):
            after, unchanged = state.decode_row(message.new)
            return [self._event(Op.CREATE, state, lsn, None, after, unchanged)]
        if isinstance(message, Update):
            before = self._old_row(state, message.old, message.key)
            after, unchanged = state.decode_row(message.new)
            if unchanged and before is not None:
                # REPLICA IDENTITY FULL sends the old values: the unchanged value is known.
                for name in [n for n in unchanged if n in before]:
                    after[name] = before[name]
                unchanged = frozenset(n for n in unchanged if n not in after)
            return [self._event(Op.UPDATE, state, lsn, before, after, unchanged)]
        before = self._old_row(state, message.old, message.key)
        return [self._event(Op.DELETE, state, lsn, before, None, frozenset())]

    def change_from_frame(self, buf: bytes, lsn: int) -> list[ChangeEvent] | None:
        """The fast path of :meth:`change` for the commonest frames, still undecoded: an
        Insert, or an Update without an old tuple, whose values are all text or null.

        None when the frame is anything else (or does not parse): decode it with
        ``PgOutputDecoder`` and call :meth:`change`, which also gives the precise errors.
        Never for frames inside a streamed (protocol v2) block, which carry an xid first.
        """
        kind = buf[0]
        if (kind != _INSERT and kind != _UPDATE) or len(buf) < 6 or buf[5] != _NEW_TUPLE:
            return None
        state = self._relations.get(_U32.unpack_from(buf, 1)[0])
        if state is None:
            return None
        decoded = state.decode_wire(buf, 6)
        if decoded is None or decoded[1] != len(buf):
            return None
        op = Op.CREATE if kind == _INSERT else Op.UPDATE
        return [self._event(op, state, lsn, None, decoded[0], _NO_COLUMNS)]

    def render_into(self, batch: list[Any], buf: bytes, lsn: int) -> bool:
        """:meth:`change_from_frame` for a JSON-lines sink: the change's Debezium JSON goes
        straight into ``batch``, in the last :class:`RenderedChanges` when it is of the same
        table, else in a new one; no ChangeEvent is built.  The document is byte for byte
        what :func:`debezium_json_bytes` writes for the event :meth:`change_from_frame` gives.

        False, with nothing changed, for a frame ``change_from_frame`` would not take or a
        row orjson refuses: take the general path.
        """
        kind = buf[0]
        if (kind != _INSERT and kind != _UPDATE) or len(buf) < 6 or buf[5] != _NEW_TUPLE \
                or self._tx is None:
            return False
        oid = _U32.unpack_from(buf, 1)[0]
        state = self._relations.get(oid)
        if state is None:
            return False
        table = state.schema
        formats = self._formats.get(oid)
        if formats is None or formats[0] is not table:
            formats = self._formats[oid] = (table, self._format(table, Op.CREATE),
                                            self._format(table, Op.UPDATE))
        parts = formats[1] if kind == _INSERT else formats[2]
        if parts is None:
            return False
        name = table.name
        total = self._total_order + 1
        order = self._table_order.get(name, 0) + 1
        commit_ms, xid, commit_lsn, tx_id = self._tx_values
        now_ms = int(self._clock() * 1000)
        values = (commit_ms, xid, lsn, commit_lsn, now_ms, tx_id, total, order)
        render = state.render_doc
        doc = render(buf, 6, parts, values) if render is not None else None
        if doc is None:  # a value the renderer is not sure of, or no renderer: decode, encode
            decoded = state.decode_wire(buf, 6)
            if decoded is None or decoded[1] != len(buf):
                return False
            row = debezium_row_json(table, decoded[0])
            if row is None:
                return False
            doc = _fill(parts, row, values)
        self._total_order = total
        self._table_order[name] = order
        last = batch[-1] if batch else None
        if last is not None and last.__class__ is RenderedChanges and last.table is table:
            last.docs.append(doc)
        else:
            fields = self._tx_fields().copy()
            fields['schema'] = table.schema
            fields['table'] = table.table
            fields['lsn'] = lsn
            batch.append(RenderedChanges(table, SourcePosition.from_fields(fields), now_ms,
                                         [doc]))
        return True

    def _format(self, table: TableSchema, op: Op) -> tuple[bytes, ...] | None:
        """The parts render_into fills for ``op`` changes of ``table``: the document of an
        event made of markers, split where the markers are (the row goes after the first
        part, each value of render_into after the next).  None (never render) unless each
        marker shows exactly once, in the order render_into fills them."""
        fields = self._source_template.copy()
        fields.update(schema=table.schema, table=table.table, ts_ms=-1000001, tx_id=-1000002,
                      lsn=-1000003, commit_lsn=-1000004)
        doc = debezium_json_bytes(ChangeEvent.from_fields({
            'op': op, 'table': table, 'source': SourcePosition.from_fields(fields),
            'before': None, 'after': {}, 'ts_ms': -1000005,
            'transaction': TransactionInfo.from_fields({
                'id': '-1000006', 'total_order': -1000007, 'data_collection_order': -1000008}),
            'schema_version': None, 'unchanged': _NO_COLUMNS, 'message': None}))
        if not doc.endswith(b'}'):
            return None
        parts = []
        rest = doc
        for marker, before, after in _MARKERS:
            head, found, tail = rest.partition(marker)
            if not found or doc.count(marker) != 1:  # missing, out of order or repeated
                return None
            parts.append(head + before)
            rest = after + tail
        parts.append(rest[:-1])  # the caller closes it, with the schema version
        return tuple(parts)

    def _old_row(self, state: RelationState, old: Sequence[Any] | None,
                 key: Sequence[Any] | None) -> dict[str, Any] | None:
        if old is not None:
            row, _missing = state.decode_row(old)
            return row
        if key is not None:
            # A key tuple carries every column, null except the replica identity ones.
            row, _ = state.decode_row(key)
            return {name: row[name] for name in state.identity if name in row}
        return None

    def _event(self, op: Op, state: RelationState, lsn: int, before: dict[str, Any] | None,
               after: dict[str, Any] | None, unchanged: frozenset[str]) -> ChangeEvent:
        if self._tx is None:
            raise ValueError(f'{op.name} of {state.schema.name} arrived outside a transaction')
        table = state.schema
        name = table.name
        self._total_order += 1
        order = self._table_order[name] = self._table_order.get(name, 0) + 1
        fields = self._tx_fields().copy()
        fields['schema'] = table.schema
        fields['table'] = table.table
        fields['lsn'] = lsn
        tx_id = self._tx_id
        if tx_id is None:
            tx_id = self._tx_id = self._tx_values[3].decode('ascii')
        # Built without the dataclasses' __init__: this runs once per change (hot path).
        return ChangeEvent.from_fields({
            'op': op, 'table': table, 'source': SourcePosition.from_fields(fields),
            'before': before, 'after': after, 'ts_ms': int(self._clock() * 1000),
            'transaction': TransactionInfo.from_fields({
                'id': tx_id, 'total_order': self._total_order,
                'data_collection_order': order}),
            'schema_version': None, 'unchanged': unchanged, 'message': None})

    def message(self, message: LogicalMessage, lsn: int) -> ChangeEvent | None:
        """An ``m`` event for an application's logical message; None for our heartbeats."""
        if message.prefix == HEARTBEAT_PREFIX:
            return None
        content = bytes(message.content)
        try:
            payload: dict[str, Any] = {'prefix': message.prefix, 'content': content.decode()}
        except UnicodeDecodeError:
            payload = {'prefix': message.prefix,
                       'content_base64': base64.b64encode(content).decode('ascii')}
        payload['transactional'] = message.transactional
        tx = self._tx if message.transactional else None
        now_ms = int(self._clock() * 1000)
        return ChangeEvent(
            op=Op.MESSAGE,
            table=MESSAGES_TABLE,
            source=SourcePosition(
                connector='postgresql', name=self._server, db=self._database, schema='',
                table='', ts_ms=tx[1] // 1000 if tx else now_ms,
                tx_id=tx[2] if tx else None, lsn=lsn, commit_lsn=tx[0] if tx else lsn),
            ts_ms=now_ms,
            message=payload,
        )
