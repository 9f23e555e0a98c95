"""The change event every stage passes on, and its lossless encodings.

A source turns one row change into one :class:`ChangeEvent`; schema evolution tags it with a
version; sinks write it.  The event holds *typed Python values* (``int``, ``Decimal``,
``datetime`` …) and the :class:`TableSchema` that says how to read them, so every encoding is
lossless and reversible given that schema::

    doc = to_debezium_json(event)            # Debezium-compatible dict, json.dumps-able
    same = from_debezium_json(doc, event.table)

Value rules (DESIGN.md): integers and floats as numbers (NaN/±Infinity as strings), decimals as
exact strings, dates ``YYYY-MM-DD``, timestamps ISO-8601, timestamptz ISO-8601 UTC with ``Z``,
bytes base64, json documents as a string holding the document, arrays as JSON arrays, anything
else as the database's text form.  A value Python cannot hold (a date in 10000 AD, ``infinity``,
``24:00:00``) stays the database's text form, as a ``str``, in memory and on the wire.

An unchanged TOASTed (or otherwise unavailable) column is never given a placeholder value: it
is *absent* from ``after`` and named in ``unchanged``, so sinks leave the target column as is.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any, TypeVar

import orjson

__all__ = [
    'SNAPSHOT_COMPLETE',
    'ChangeEvent',
    'Column',
    'EnvelopeError',
    'Kind',
    'Op',
    'RenderedChanges',
    'SourcePosition',
    'TableSchema',
    'TransactionInfo',
    'avro_schema',  # noqa: F822 (lazy, see __getattr__)
    'debezium_json_bytes',
    'debezium_row_json',
    'decode_json_value',
    'dumps',
    'dumps_bytes',
    'encode_json_value',
    'from_avro_record',  # noqa: F822
    'from_cloudevent',
    'from_debezium_json',
    'snapshot_complete',
    'to_avro_record',  # noqa: F822
    'to_cloudevent',
    'to_debezium_json',
]


class EnvelopeError(ValueError):
    """A document is not a valid change envelope; the message names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f'{field}: {problem}')
        self.field = field


class Op(str, enum.Enum):
    """Debezium operation codes."""

    CREATE = 'c'
    UPDATE = 'u'
    DELETE = 'd'
    READ = 'r'  # a snapshot row
    TRUNCATE = 't'
    MESSAGE = 'm'  # a logical message or a schema-change record


class Kind(str, enum.Enum):
    """Logical column type: decides the in-memory value and every encoding of it.

    In-memory values: BOOLEAN bool; INT16/INT32/INT64 int; FLOAT32/FLOAT64 float;
    DECIMAL Decimal (NaN/±Infinity included); DATE date; TIME time; TIMESTAMP naive datetime;
    TIMESTAMPTZ aware datetime in UTC; BYTES bytes; ARRAY list (nested for several dimensions,
    None for NULL elements) of the element kind's values; every other kind str.  DATE, TIME,
    TIMESTAMP and TIMESTAMPTZ also accept str: the database's text form of a value Python's
    types cannot hold.
    """

    BOOLEAN = 'boolean'
    INT16 = 'int16'
    INT32 = 'int32'
    INT64 = 'int64'
    FLOAT32 = 'float32'
    FLOAT64 = 'float64'
    DECIMAL = 'decimal'
    STRING = 'string'
    BYTES = 'bytes'
    DATE = 'date'
    TIME = 'time'
    TIMETZ = 'timetz'
    TIMESTAMP = 'timestamp'
    TIMESTAMPTZ = 'timestamptz'
    INTERVAL = 'interval'
    JSON = 'json'
    UUID = 'uuid'
    ENUM = 'enum'
    ARRAY = 'array'
    TEXT = 'text'  # a type we do not model: the database's text form


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a captured table.

    ``source_type`` is the database's own type name (``numeric(10,2)``, ``varchar(20)``,
    ``int unsigned``), kept so a sink of the same database can recreate the column exactly.
    ``element`` is the element kind of an ARRAY; ``symbols`` the labels of an ENUM.
    ``default``: PostgreSQL text form (not SQL) of the value rows older than the column hold.
    """

    name: str
    kind: Kind
    source_type: str = ''
    nullable: bool = True
    element: Kind | None = None
    precision: int | None = None
    scale: int | None = None
    symbols: tuple[str, ...] = ()
    default: str | None = None  # text form of the value rows older than the column hold


def _name_part(part: str) -> str:
    if '.' in part or '"' in part:
        return '"' + part.replace('"', '""') + '"'
    return part


@dataclasses.dataclass(frozen=True)
class TableSchema:
    """The shape of a captured table at one point in its history.

    ``key`` names the columns that identify a row (primary key or replica identity); empty for a
    table without one, whose changes sinks can only append.
    """

    schema: str
    table: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()

    @cached_property
    def name(self) -> str:
        """``schema.table`` (``table`` without a schema): the table's identity in the
        pipeline (schema registry, file directories, routes, per-table order).  A part that
        holds a dot or a double quote is double-quoted as in SQL, so that two tables never
        share a name: ``"a.b".c`` and ``a."b.c"``, not ``a.b.c`` for both."""
        table = _name_part(self.table)
        return f'{_name_part(self.schema)}.{table}' if self.schema else table

    @property
    def dotted_name(self) -> str:
        """``schema.table`` joined as it is, quoting nothing: what :attr:`name` was before
        it quoted parts with dots, which a target made then may have recorded."""
        return f'{self.schema}.{self.table}' if self.schema else self.table

    @cached_property
    def by_name(self) -> dict[str, Column]:
        return {column.name: column for column in self.columns}

    @cached_property
    def json_encoders(self) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
        return tuple((c.name, _json_encoder(c.kind, c.element)) for c in self.columns)

    @cached_property
    def json_converters(self) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
        """The columns whose values change form in JSON (most do not: ints, text)."""
        return tuple((name, fn) for name, fn in self.json_encoders if fn is not _identity)

    @cached_property
    def orjson_converters(self) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
        """``json_converters`` but for the values orjson renders as they are (DECIMAL through
        its ``default``, TIMESTAMPTZ when a UTC datetime): see :func:`debezium_json_bytes`."""
        return tuple((c.name, fn) for c, (_, fn)
                     in zip(self.columns, self.json_encoders, strict=True)
                     if fn is not _identity and c.kind not in _ORJSON_NATIVE)

    @cached_property
    def timestamptz_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind is Kind.TIMESTAMPTZ)

    @cached_property
    def json_decoders(self) -> dict[str, Callable[[Any], Any]]:
        return {c.name: _json_decoder(c.kind, c.element) for c in self.columns}

    def __getstate__(self) -> dict[str, Any]:
        # Only the fields: the cached lookups hold closures, which need not travel.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def column(self, name: str) -> Column:
        try:
            return self.by_name[name]
        except KeyError:
            known = ', '.join(self.by_name) or '(none)'
            raise KeyError(f'{self.name} has no column {name!r}; columns: {known}') from None


_Built = TypeVar('_Built', bound='_FromFields')


class _FromFields:
    """``from_fields``: build a frozen dataclass from a dict holding every field, without its
    ``__init__`` (sources build one per change, and the __init__ of frozen fields costs
    several microseconds)."""

    __slots__ = ()

    @classmethod
    def from_fields(cls: type[_Built], fields: dict[str, Any]) -> _Built:
        built = object.__new__(cls)
        built.__dict__.update(fields)
        return built


@dataclasses.dataclass(frozen=True)
class SourcePosition(_FromFields):
    """Where a change came from and where it sits in the source's log.

    Fields follow Debezium's ``source`` block.  ``sort_key`` orders changes of one source the
    way they committed (and, inside a transaction, the way they were made); sinks store it per
    row to ignore a replayed or stale change.

    PostgreSQL: ``commit_lsn`` of the transaction and ``lsn`` of the change; snapshot rows carry
    the slot's consistent point as ``commit_lsn`` and ``lsn`` 0, so every streamed change sorts
    after them.  MySQL/MariaDB: binlog ``file`` and ``pos`` of the rows event and ``row`` within it,
    and ``epoch``: how many times the source moved to another server's binlog (a failover), whose
    file/pos say nothing about the old one's; None until the first move.  Changes sort by epoch
    first.
    """

    connector: str
    name: str
    db: str
    schema: str
    table: str
    ts_ms: int  # commit time at the source, ms since the epoch
    snapshot: str = 'false'  # 'true', 'last' (the snapshot's last event) or 'false'
    tx_id: int | None = None
    lsn: int | None = None
    commit_lsn: int | None = None
    file: str | None = None
    pos: int | None = None
    row: int | None = None
    gtid: str | None = None
    server_id: int | None = None
    thread: int | None = None
    epoch: int | None = None

    @property
    def sort_key(self) -> str:
        """A fixed-width hex string; comparing two as strings compares the positions."""
        # %-formatting (noqa): ~0.3 µs cheaper than an f-string with format specs, per event a
        # sink plans.
        if self.connector == 'postgresql':
            return '%016x%016x' % (self.commit_lsn or 0, self.lsn or 0)  # noqa: UP031
        file_index = int(self.file.rsplit('.', 1)[-1]) if self.file else 0
        if self.epoch:  # the top 8 of the file number's 32 bits: keys of epoch 0 are unchanged
            file_index |= self.epoch << EPOCH_SHIFT
        return '%08x%016x%08x' % (file_index, self.pos or 0, self.row or 0)  # noqa: UP031


EPOCH_SHIFT = 24
"""Binlog file numbers stay below ``1 << EPOCH_SHIFT`` (16.7 million files); the epoch sits
above them in a MySQL/MariaDB sort key."""
MAX_EPOCH = 127
"""The last epoch a sort key (8 bits) and a restriction position (7 bits under the sign of an
int64) can hold."""


@dataclasses.dataclass(frozen=True)
class TransactionInfo(_FromFields):
    """Debezium's ``transaction`` block: the event's place in its transaction."""

    id: str
    total_order: int
    data_collection_order: int


@dataclasses.dataclass(frozen=True)
class ChangeEvent(_FromFields):
    """One row change (or truncate, or message) of one table, with typed values.

    Guarantees: ``before`` and ``after`` hold only columns of ``table`` with values of their
    kind; a column named in ``unchanged`` is absent from ``after`` and its value at the source
    did not change.  ``message`` carries the payload of an ``m`` event.
    """

    op: Op
    table: TableSchema
    source: SourcePosition
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    ts_ms: int = 0  # when changebeam processed it
    transaction: TransactionInfo | None = None
    schema_version: int | None = None
    unchanged: frozenset[str] = frozenset()
    message: Mapping[str, Any] | None = None


    def replace(self, **changes: Any) -> ChangeEvent:
        """A copy with ``changes`` applied; a fast path for per-event tagging (no __init__)."""
        copy = object.__new__(ChangeEvent)
        state = copy.__dict__
        state.update(self.__dict__)
        for name, value in changes.items():
            if name not in state:
                raise TypeError(f'ChangeEvent has no field {name!r}')
            state[name] = value
        return copy

    @property
    def key(self) -> tuple[Any, ...]:
        """The values of the key columns, from ``after`` (or ``before`` for a delete)."""
        row = self.after if self.after is not None else self.before
        if row is None:
            return ()
        return tuple(row.get(name) for name in self.table.key)


SNAPSHOT_COMPLETE = 'snapshot_complete'
"""``message['kind']`` of the ``m`` event that follows a table's snapshot rows (see
:func:`snapshot_complete`)."""


def snapshot_complete(table: TableSchema, source: SourcePosition, rows: int,
                      ts_ms: int, skipped: int = 0) -> ChangeEvent:
    """The event after the last snapshot row of ``table`` (at the snapshot's ``source``
    position, also when the table is empty): the snapshot showed every row the table had
    there, so a row a consumer holds from an older position that the snapshot did not bring
    again is gone from the source.  A snapshot taken again after an interrupted one (or on a
    target that already holds rows) needs this to remove what was deleted meanwhile.

    ``skipped`` rows the snapshot read but could not turn into events (dead letters) make
    ``message['skipped']``: then the snapshot did not show every row, and a row it did not
    bring may still be at the source."""
    message = {'kind': SNAPSHOT_COMPLETE, 'table': table.name, 'rows': rows}
    if skipped:
        message['skipped'] = skipped
    return ChangeEvent(op=Op.MESSAGE, table=table, source=source, ts_ms=ts_ms, message=message)


# ---------------------------------------------------------------------------------------------
# JSON values

_SPECIAL_FLOATS = {'NaN': math.nan, 'Infinity': math.inf, '-Infinity': -math.inf}


def _float_to_json(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return 'NaN'
    return 'Infinity' if value > 0 else '-Infinity'


def _float_from_json(value: Any) -> float:
    if isinstance(value, str):
        try:
            return _SPECIAL_FLOATS[value]
        except KeyError:
            raise ValueError(f'not a number: {value!r}') from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'not a number: {value!r}')
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float, e.g. 10**400
        raise ValueError(f'out of range for a float: {value}') from None
    if not math.isfinite(number):
        # A non-finite *number* is a parser's reading of 1e400 or a bare NaN literal, not one
        # of ours: NaN/±Infinity travel as strings.
        raise ValueError(f'not a finite number: {value!r}')
    return number


def _int_from_json(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'not an integer: {value!r}')
    return value


def _bool_from_json(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f'not a boolean: {value!r}')
    return value


def _str_from_json(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'not a string: {value!r}')
    return value


def _decimal_from_json(value: Any) -> Decimal:
    try:
        return Decimal(_str_from_json(value))
    except InvalidOperation:
        raise ValueError(f'not a decimal: {value!r}') from None


def _bytes_from_json(value: Any) -> bytes:
    try:
        return base64.b64decode(_str_from_json(value), validate=True)
    except (ValueError, TypeError):
        raise ValueError(f'not base64: {value!r}') from None


def _timestamptz_to_json(value: dt.datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is not dt.timezone.utc:  # sources hand UTC values: skip the conversion
        value = value.astimezone(dt.timezone.utc)
    return value.isoformat()[:-6] + 'Z'  # drop '+00:00'


def _timestamptz_from_json(value: Any) -> dt.datetime | str:
    text = _str_from_json(value)
    if not text.endswith('Z'):
        return text  # a text form such as 'infinity'
    value = dt.datetime.fromisoformat(text[:-1])
    if value.tzinfo is not None:  # '…+05:00Z': replacing the zone would shift the instant
        raise ValueError(f'both an offset and Z: {text!r}')
    return value.replace(tzinfo=dt.timezone.utc)


def _temporal_from_json(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def decode(value: Any) -> Any:
        text = _str_from_json(value)
        try:
            return parse(text)
        except ValueError:
            return text  # kept as the database's text form, as it was encoded
    return decode


def _iso(value: Any) -> str:
    return value if isinstance(value, str) else value.isoformat()


def _identity(value: Any) -> Any:
    return value


_JSON_ENCODERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.FLOAT32: _float_to_json,
    Kind.FLOAT64: _float_to_json,
    Kind.DECIMAL: str,
    Kind.BYTES: lambda v: base64.b64encode(v).decode('ascii'),
    Kind.DATE: _iso,
    Kind.TIME: _iso,
    Kind.TIMESTAMP: _iso,
    Kind.TIMESTAMPTZ: _timestamptz_to_json,
}

_JSON_DECODERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.BOOLEAN: _bool_from_json,
    Kind.INT16: _int_from_json,
    Kind.INT32: _int_from_json,
    Kind.INT64: _int_from_json,
    Kind.FLOAT32: _float_from_json,
    Kind.FLOAT64: _float_from_json,
    Kind.DECIMAL: _decimal_from_json,
    Kind.BYTES: _bytes_from_json,
    Kind.DATE: _temporal_from_json(dt.date.fromisoformat),
    Kind.TIME: _temporal_from_json(dt.time.fromisoformat),
    Kind.TIMESTAMP: _temporal_from_json(dt.datetime.fromisoformat),
    Kind.TIMESTAMPTZ: _timestamptz_from_json,
}


def _json_encoder(kind: Kind, element: Kind | None = None) -> Callable[[Any], Any]:
    if kind is Kind.ARRAY:
        inner = _json_encoder(element or Kind.TEXT)
        if inner is _identity:
            return _identity

        def encode_array(value: Any) -> Any:
            if isinstance(value, list):
                return [None if v is None else encode_array(v) for v in value]
            return inner(value)
        return encode_array
    return _JSON_ENCODERS.get(kind, _identity)


def _json_decoder(kind: Kind, element: Kind | None = None) -> Callable[[Any], Any]:
    if kind is Kind.ARRAY:
        inner = _json_decoder(element or Kind.TEXT)

        def decode_array(value: Any) -> Any:
            if isinstance(value, list):
                return [None if v is None else decode_array(v) for v in value]
            return inner(value)

        def decode_top(value: Any) -> Any:
            if not isinstance(value, list):
                raise ValueError(f'not an array: {value!r}')
            return decode_array(value)
        return decode_top
    return _JSON_DECODERS.get(kind, _str_from_json)


def encode_json_value(column: Column, value: Any) -> Any:
    """One column value to its JSON form (None stays None)."""
    return None if value is None else _json_encoder(column.kind, column.element)(value)


def decode_json_value(column: Column, value: Any) -> Any:
    """The inverse of :func:`encode_json_value`; raises ValueError for a value of the wrong form."""
    return None if value is None else _json_decoder(column.kind, column.element)(value)


def _row_to_json(table: TableSchema, row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)  # rows hold only the table's columns, in column order (ChangeEvent's rule)
    for name, encode in table.json_converters:
        value = out.get(name)
        if value is not None:
            out[name] = encode(value)
    return out


def _row_from_json(table: TableSchema, doc: Any, field: str) -> dict[str, Any] | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise EnvelopeError(field, f'expected an object, got {type(doc).__name__}')
    decoders = table.json_decoders
    out = {}
    for name, value in doc.items():
        decode = decoders.get(name)
        if decode is None:
            raise EnvelopeError(f'{field}.{name}', f'{table.name} has no such column')
        try:
            out[name] = None if value is None else decode(value)
        except ValueError as exc:
            kind = table.by_name[name].kind.value
            raise EnvelopeError(f'{field}.{name}', f'bad {kind} value: {exc}') from None
    return out


# ---------------------------------------------------------------------------------------------
# Debezium JSON envelope

_SOURCE_OPTIONAL = ('tx_id', 'lsn', 'commit_lsn', 'file', 'pos', 'row', 'gtid', 'server_id',
                    'thread', 'epoch')
_SOURCE_JSON_NAMES = {'tx_id': 'txId'}
_VERSION = '0.1.0'


_SOURCE_OPTIONAL_NAMES = tuple((attr, _SOURCE_JSON_NAMES.get(attr, attr))
                               for attr in _SOURCE_OPTIONAL)


def _source_to_json(source: SourcePosition) -> dict[str, Any]:
    state = source.__dict__
    doc: dict[str, Any] = {
        'version': _VERSION,
        'connector': state['connector'],
        'name': state['name'],
        'ts_ms': state['ts_ms'],
        'snapshot': state['snapshot'],
        'db': state['db'],
        'schema': state['schema'],
        'table': state['table'],
    }
    for attr, name in _SOURCE_OPTIONAL_NAMES:
        value = state[attr]
        if value is not None:
            doc[name] = value
    return doc


def to_debezium_json(event: ChangeEvent) -> dict[str, Any]:
    """The Debezium envelope (``payload`` part) as a JSON-ready dict."""
    return _debezium_doc(event, _row_to_json)


def _debezium_doc(event: ChangeEvent,
                  encode_row: Callable[[TableSchema, Mapping[str, Any] | None], Any]
                  ) -> dict[str, Any]:
    table = event.table
    doc: dict[str, Any] = {
        'before': encode_row(table, event.before),
        'after': encode_row(table, event.after),
        'source': _source_to_json(event.source),
        'op': event.op.value,
        'ts_ms': event.ts_ms,
        'transaction': None if event.transaction is None else {
            'id': event.transaction.id,
            'total_order': event.transaction.total_order,
            'data_collection_order': event.transaction.data_collection_order,
        },
    }
    if event.unchanged:
        doc['unchanged'] = sorted(event.unchanged)
    if event.schema_version is not None:
        doc['schema_version'] = event.schema_version
    if event.message is not None:
        doc['message'] = dict(event.message)
    return doc


_ORJSON_NATIVE = frozenset((Kind.DECIMAL, Kind.TIMESTAMPTZ))
_UTC = dt.timezone.utc


def _row_for_orjson(table: TableSchema, row: Mapping[str, Any] | None) -> Any:
    if row is None:
        return None
    out: dict[str, Any] | None = None  # a copy only when a value must change form
    for name, encode in table.orjson_converters:
        value = row.get(name)
        if value is not None:
            if out is None:
                out = dict(row)
            out[name] = encode(value)
    for name in table.timestamptz_columns:
        value = row.get(name)
        # orjson writes a UTC datetime exactly as _timestamptz_to_json does ('…Z'); another
        # zone would keep its offset, so those (never from our sources) are converted here.
        if value.__class__ is dt.datetime and value.tzinfo is not _UTC:
            if out is None:
                out = dict(row)
            out[name] = _timestamptz_to_json(value)
    return row if out is None else out


def _orjson_default(value: Any) -> Any:
    if value.__class__ is Decimal:
        return str(value)
    raise TypeError(f'{type(value).__name__} is not JSON')


def debezium_json_bytes(event: ChangeEvent) -> bytes:
    """``dumps_bytes(to_debezium_json(event))``, byte for byte, at about half the cost.

    The rows go to orjson as they are, but for the values whose JSON form orjson does not
    write itself: decimals and UTC timestamps need no per-value Python call.  Anything orjson
    refuses takes the general path.
    """
    doc = _debezium_doc(event, _row_for_orjson)
    try:
        return orjson.dumps(doc, default=_orjson_default, option=orjson.OPT_UTC_Z)
    except TypeError:
        return dumps_bytes(to_debezium_json(event))


def debezium_row_json(table: TableSchema, row: Mapping[str, Any]) -> bytes | None:
    """The JSON of ``row`` exactly as it appears inside :func:`debezium_json_bytes`, or None
    when orjson refuses it or a value does not convert (that path then takes the general
    encoder, with another form or the error that makes the event a dead letter)."""
    try:
        return orjson.dumps(_row_for_orjson(table, row), default=_orjson_default,
                            option=orjson.OPT_UTC_Z)
    except (TypeError, ValueError, AttributeError, OverflowError):  # what the sink catches
        return None


@dataclasses.dataclass
class RenderedChanges:
    """Row changes of one table, in order, already rendered as Debezium JSON: the form a
    source hands a JSON-lines sink when it is told that is all that reads them (building a
    :class:`ChangeEvent` and encoding it costs more than reading the change).

    Each of ``docs`` is :func:`debezium_json_bytes` of an event whose ``schema_version`` is
    None, without the closing ``}``: :meth:`lines` closes them, with the version schema
    evolution gave the run.  ``source`` and ``ts_ms`` are the first change's, for the
    schema-change event a new version starts with.  Sources put runs in their batches (lists)
    beside ChangeEvents, order kept; only ``EvolveSchema`` and the JSON-lines file sink take
    them.
    """

    table: TableSchema
    source: SourcePosition
    ts_ms: int
    docs: list[bytes]
    schema_version: int | None = None

    def lines(self) -> bytes:
        """The JSON lines of the run, each ended by a newline."""
        if self.schema_version is None:
            end = b'}\n'
        else:
            end = b',"schema_version":%d}\n' % self.schema_version
        return end.join(self.docs) + end


def _require(doc: Mapping[str, Any], field: str, types: type | tuple[type, ...],
             prefix: str = '', optional: bool = False) -> Any:
    name = prefix + field
    if field not in doc:
        if optional:
            return None
        raise EnvelopeError(name, 'missing')
    value = doc[field]
    if value is None and optional:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise EnvelopeError(name, f'expected {_type_names(types)}, got {value!r}')
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    return ' or '.join(t.__name__ for t in _as_tuple(types))


def _source_from_json(doc: Any) -> SourcePosition:
    if not isinstance(doc, dict):
        raise EnvelopeError('source', 'expected an object')
    fields: dict[str, Any] = {}
    for attr in ('connector', 'name', 'db', 'schema', 'table', 'snapshot'):
        fields[attr] = _require(doc, attr, str, 'source.')
    fields['ts_ms'] = _require(doc, 'ts_ms', int, 'source.')
    for attr in _SOURCE_OPTIONAL:
        types: type = str if attr in ('file', 'gtid') else int
        fields[attr] = _require(doc, _SOURCE_JSON_NAMES.get(attr, attr), types, 'source.',
                                optional=True)
    return SourcePosition(**fields)


def from_debezium_json(doc: Any, table: TableSchema) -> ChangeEvent:
    """The inverse of :func:`to_debezium_json`, given the table's schema.

    Raises :class:`EnvelopeError` naming the first field that is missing or malformed.
    """
    if not isinstance(doc, dict):
        raise EnvelopeError('(envelope)', f'expected an object, got {type(doc).__name__}')
    op_code = _require(doc, 'op', str)
    try:
        op = Op(op_code)
    except ValueError:
        valid = ', '.join(o.value for o in Op)
        raise EnvelopeError('op', f'{op_code!r} is not one of {valid}') from None
    tx_doc = _require(doc, 'transaction', dict, optional=True)
    transaction = None
    if tx_doc is not None:
        transaction = TransactionInfo(
            id=_require(tx_doc, 'id', str, 'transaction.'),
            total_order=_require(tx_doc, 'total_order', int, 'transaction.'),
            data_collection_order=_require(tx_doc, 'data_collection_order', int, 'transaction.'),
        )
    unchanged = _require(doc, 'unchanged', list, optional=True) or []
    for i, name in enumerate(unchanged):
        if not isinstance(name, str) or name not in table.by_name:
            raise EnvelopeError(f'unchanged[{i}]', f'{name!r} is not a column of {table.name}')
    if 'before' not in doc:
        raise EnvelopeError('before', 'missing')
    if 'after' not in doc:
        raise EnvelopeError('after', 'missing')
    return ChangeEvent(
        op=op,
        table=table,
        source=_source_from_json(doc.get('source')) if 'source' in doc
        else _raise(EnvelopeError('source', 'missing')),
        before=_row_from_json(table, doc['before'], 'before'),
        after=_row_from_json(table, doc['after'], 'after'),
        ts_ms=_require(doc, 'ts_ms', int),
        transaction=transaction,
        schema_version=_require(doc, 'schema_version', int, optional=True),
        unchanged=frozenset(unchanged),
        message=_require(doc, 'message', dict, optional=True),
    )


def _raise(exc: Exception) -> Any:
    raise exc


# ---------------------------------------------------------------------------------------------
# CloudEvents 1.0, structured JSON mode

_CLOUDEVENT_TYPES = {
    Op.CREATE: 'created', Op.UPDATE: 'updated', Op.DELETE: 'deleted', Op.READ: 'read',
    Op.TRUNCATE: 'truncated', Op.MESSAGE: 'message',
}


def _cloudevent_id(event: ChangeEvent) -> str:
    """Unique per event and the same for its replays, so consumers can deduplicate by it.

    A position alone is not unique: the rows of a snapshot share the snapshot's, a
    ``snapshot_complete`` or ``schema_change`` event shares a row's, a TRUNCATE of several
    tables is one position.  So the table and op follow it, then what tells such events
    apart: a snapshot row's key (its values' hash for a keyless table), a message's kind."""
    source = event.source
    parts = [source.connector, source.name, source.sort_key, event.table.name, event.op.value]
    if event.op is Op.READ and event.after is not None:
        table = event.table
        names = table.key or tuple(c.name for c in table.columns if c.name in event.after)
        values = [encode_json_value(table.column(n), event.after.get(n)) for n in names]
        parts.append(hashlib.sha256(json.dumps(values, separators=(',', ':')).encode())
                     .hexdigest()[:16])
    elif event.op is Op.MESSAGE and event.message is not None:
        parts.append(str(event.message.get('kind') or event.message.get('prefix') or ''))
    return ':'.join(parts)


def to_cloudevent(event: ChangeEvent) -> dict[str, Any]:
    """A CloudEvent (structured JSON) whose ``data`` is the Debezium envelope."""
    source = event.source
    time = dt.datetime.fromtimestamp(source.ts_ms / 1000, dt.timezone.utc)
    return {
        'specversion': '1.0',
        'id': _cloudevent_id(event),
        'source': f'/changebeam/{source.connector}/{source.name}/{source.db}',
        'type': f'io.changebeam.{source.connector}.row.{_CLOUDEVENT_TYPES[event.op]}',
        'time': time.replace(tzinfo=None).isoformat(timespec='milliseconds') + 'Z',
        'subject': event.table.name,
        'datacontenttype': 'application/json',
        'data': to_debezium_json(event),
    }


def from_cloudevent(doc: Any, table: TableSchema) -> ChangeEvent:
    """The inverse of :func:`to_cloudevent`, given the table's schema."""
    if not isinstance(doc, dict):
        raise EnvelopeError('(cloudevent)', 'expected an object')
    if _require(doc, 'specversion', str) != '1.0':
        raise EnvelopeError('specversion', f'{doc["specversion"]!r} is not 1.0')
    for field in ('id', 'source', 'type'):
        _require(doc, field, str)
    data = _require(doc, 'data', dict)
    try:
        return from_debezium_json(data, table)
    except EnvelopeError as exc:
        raise EnvelopeError(f'data.{exc.field}', str(exc).split(': ', 1)[1]) from None


def dumps_bytes(doc: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an encoded envelope (orjson: ~3x the standard library here).

    The encoders never leave NaN or other non-JSON values in ``doc``; a document orjson
    refuses (an integer beyond 64 bits in a message payload) goes through the standard library.
    """
    try:
        return orjson.dumps(doc)
    except TypeError:  # orjson.JSONEncodeError subclasses TypeError
        return json.dumps(doc, separators=(',', ':'), allow_nan=False).encode()


def dumps(doc: Mapping[str, Any]) -> str:
    """Compact JSON text of an encoded envelope."""
    return dumps_bytes(doc).decode()


def __getattr__(name: str) -> Any:
    # The Avro encoding lives in envelope_avro (it imports this module); re-exported lazily.
    if name in ('avro_schema', 'from_avro_record', 'to_avro_record'):
        from transforms import envelope_avro
        return getattr(envelope_avro, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
