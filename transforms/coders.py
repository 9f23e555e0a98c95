"""A Beam coder for ChangeEvent: what crosses a fusion break, a shuffle or a worker boundary.

Importing this module registers :class:`ChangeEventCoder` for ``ChangeEvent``; a PCollection
typed ``ChangeEvent`` (``.with_output_types(ChangeEvent)``) then uses it instead of pickling
each event whole.  Pickling an event repeats its TableSchema (every column's name and type)
and the dataclass machinery in every element; this coder writes the schema once per distinct
schema object as cached bytes, rows as value tuples in column order and positions as plain
tuples, and rebuilds the schema object from a per-process cache on decode.
``bench/coder.py`` measures it against Beam's default pickle coder.
"""
from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import apache_beam as beam

from transforms.envelope import (
    ChangeEvent,
    Column,
    Kind,
    Op,
    SourcePosition,
    TableSchema,
    TransactionInfo,
)

__all__ = ['ChangeEventCoder']

_POSITION_FIELDS = tuple(f.name for f in dataclasses.fields(SourcePosition))
_OPS = {op.value: op for op in Op}
_KINDS = {kind.value: kind for kind in Kind}
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _schema_bytes(table: TableSchema) -> bytes:
    columns = tuple((c.name, c.kind.value, c.source_type, c.nullable,
                     c.element.value if c.element else None, c.precision, c.scale, c.symbols,
                     c.default) for c in table.columns)
    return pickle.dumps((table.schema, table.table, table.key, columns), _PROTOCOL)


def _schema_from_bytes(data: bytes) -> TableSchema:
    schema, table, key, columns = pickle.loads(data)
    return TableSchema(schema, table, tuple(
        Column(name, _KINDS[kind], source_type, nullable, _KINDS[element] if element else None,
               precision, scale, symbols, default)
        for name, kind, source_type, nullable, element, precision, scale, symbols, default
        in columns), key)


class ChangeEventCoder(beam.coders.Coder):
    """Deterministic for equal events built from equal schemas; not order-preserving."""

    def __init__(self) -> None:
        self._encoded: dict[int, tuple[TableSchema, bytes]] = {}
        self._decoded: dict[bytes, TableSchema] = {}

    def encode(self, event: ChangeEvent) -> bytes:
        table = event.table
        cached = self._encoded.get(id(table))
        if cached is None or cached[0] is not table:
            cached = (table, _schema_bytes(table))
            if len(self._encoded) > 10_000:
                self._encoded.clear()
            self._encoded[id(table)] = cached
        names = [c.name for c in table.columns]
        source = event.source
        tx = event.transaction
        return pickle.dumps((
            cached[1],
            event.op.value,
            tuple(getattr(source, f) for f in _POSITION_FIELDS),
            _row(event.before, names),
            _row(event.after, names),
            event.ts_ms,
            None if tx is None else (tx.id, tx.total_order, tx.data_collection_order),
            event.schema_version,
            tuple(event.unchanged),
            event.message,
        ), _PROTOCOL)

    def decode(self, data: bytes) -> ChangeEvent:
        (schema_bytes, op, source, before, after, ts_ms, tx, version, unchanged,
         message) = pickle.loads(data)
        table = self._decoded.get(schema_bytes)
        if table is None:
            table = _schema_from_bytes(schema_bytes)
            if len(self._decoded) > 10_000:
                self._decoded.clear()
            self._decoded[schema_bytes] = table
        names = [c.name for c in table.columns]
        return ChangeEvent(
            op=_OPS[op],
            table=table,
            source=SourcePosition(*source),
            before=_unrow(before, names),
            after=_unrow(after, names),
            ts_ms=ts_ms,
            transaction=None if tx is None else TransactionInfo(*tx),
            schema_version=version,
            unchanged=frozenset(unchanged),
            message=message,
        )

    def estimate_size(self, event: ChangeEvent) -> int:
        # Runners sample element sizes for their statistics; encoding each sampled event (with
        # its schema) would cost more than processing it, so estimate from the row widths.
        row = event.after if event.after is not None else event.before
        return 96 + 24 * (len(row) if row else 0)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return ChangeEvent

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]


def _row(row: Any, names: list[str]) -> Any:
    """A full row as a tuple in column order; a partial one (unchanged TOAST, key-only before
    image) stays a dict so absent columns stay absent."""
    if row is None:
        return None
    if len(row) == len(names):
        try:
            return tuple([row[name] for name in names])
        except KeyError:
            pass
    return dict(row)


def _unrow(row: Any, names: list[str]) -> Any:
    if row is None or isinstance(row, dict):
        return row
    return dict(zip(names, row, strict=True))


beam.coders.registry.register_coder(ChangeEvent, ChangeEventCoder)
