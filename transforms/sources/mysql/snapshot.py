"""The initial snapshot of MariaDB tables at a binlog position, without blocking row writes.

``START TRANSACTION WITH CONSISTENT SNAPSHOT`` pins an InnoDB read view and MariaDB reports
the binlog position that view corresponds to (``Binlog_snapshot_file`` /
``Binlog_snapshot_position``, and ``BINLOG_GTID_POS`` of it): every transaction committed
before that position is in the snapshot, none after it.  Streaming from that position then
has no gap and no overlap::

    conn = pymysql.connect(..., conv=text_conversions())
    position = begin_snapshot(conn, tables)               # BinlogPosition(file, pos, gtid)
    for batch in read_snapshot(conn, tables, position, server_name='shop', server_id=1):
        emit(batch)                                       # lists of op 'r' ChangeEvents

Rows are read with an unbuffered cursor (PyMySQL's SSCursor), so memory stays bounded
whatever the table size.  Values come as the server's text and are converted here to exactly
what the binlog decoder produces for the same stored value, and each table's
:class:`~transforms.envelope.TableSchema` is built from ``information_schema`` through the
binlog's own column model (``types.ColumnInfo`` → ``types.to_column``), so a snapshot row and
a later streamed row of the same table carry equal schemas and equal values.  Two columns
need the server's help: a FLOAT is printed with 6 digits, so it is selected as a DOUBLE
(exact) and narrowed back; a UUID/INET column is selected as its binary form, as the binlog
holds it.

Every snapshot row sorts at the snapshot position (``file``, ``pos``, row 0); every streamed
change is written after it, so a replayed snapshot row never wins over a newer change.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

from transforms.envelope import ChangeEvent, Op, SourcePosition, TableSchema, snapshot_complete
from transforms.sources.mysql import types as t
from transforms.sources.mysql.stream import BinlogConfigError, BinlogPosition

__all__ = [
    'SYSTEM_DATABASES',
    'SnapshotTable',
    'begin_snapshot',
    'describe_table',
    'quote',
    'read_snapshot',
    'resolve_tables',
    'row_converter',
    'split_table_name',
    'text_conversions',
]

SYSTEM_DATABASES = frozenset({'mysql', 'information_schema', 'performance_schema', 'sys'})


def text_conversions() -> dict[Any, Any]:
    """PyMySQL's ``conv`` for a snapshot connection: values arrive as the server's text (bytes
    for binary columns) and are converted here, per column, to what the decoder produces."""
    try:
        from pymysql import converters
    except ImportError:
        raise ImportError("MySQL/MariaDB sources need PyMySQL: "
                          "pip install 'changebeam[mysql]'") from None
    # Keep the encoders (query arguments need them), drop every decoder.
    return {k: v for k, v in converters.conversions.items() if not isinstance(k, int)}


@dataclasses.dataclass(frozen=True)
class SnapshotTable:
    """A captured table as the snapshot reads it: its envelope schema (equal to the binlog's
    ``TableMap.schema`` for the same definition), the binlog column model behind it, and the
    SELECT list that reads each column in the form the converters expect."""

    schema: TableSchema
    columns: tuple[t.ColumnInfo, ...]
    select: tuple[str, ...]

    @property
    def db(self) -> str:
        return self.schema.schema

    @property
    def table(self) -> str:
        return self.schema.table


# ---------------------------------------------------------------------------------------------
# Table names and definitions

_NAME_PART = r'`(?:[^`]|``)+`|"(?:[^"]|"")+"|[^.`"]+'
_NAME = re.compile(rf'^(?:(?P<db>{_NAME_PART})\.)?(?P<table>{_NAME_PART})$')


def _unquote(part: str) -> str:
    if len(part) > 1 and part[0] == part[-1] and part[0] in '`"':
        return part[1:-1].replace(part[0] * 2, part[0])
    return part


def split_table_name(name: str, default_db: str) -> tuple[str, str]:
    """``db.table``, ``table`` (in ``default_db``) or quoted forms -> (db, table)."""
    match = _NAME.match(name.strip())
    if match is None:
        raise ValueError(f'table {name!r} is not db.table or table')
    db = _unquote(match['db']) if match['db'] else default_db
    if not db:
        raise ValueError(f'table {name!r} names no database and the DSN names none: '
                         'use db.table')
    return db, _unquote(match['table'])


def quote(name: str) -> str:
    return '`' + name.replace('`', '``') + '`'


def _query(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def resolve_tables(conn: Any, databases: Sequence[str],
                   tables: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The base tables to capture: ``tables`` (each must exist), else every base table of
    ``databases``.  Raises BinlogConfigError naming what is missing."""
    if tables:
        missing = []
        for db, table in tables:
            found = _query(conn, 'SELECT TABLE_TYPE FROM information_schema.TABLES '
                                 'WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s', (db, table))
            if not found or str(found[0][0]) != 'BASE TABLE':
                missing.append(f'{db}.{table}' + (f' (a {found[0][0]})' if found else ''))
        if missing:
            raise BinlogConfigError(f'no such table(s): {", ".join(missing)}; check --tables '
                                    '(db.table, case-sensitive)')
        return list(tables)
    found_dbs = {str(r[0]) for r in _query(
        conn, 'SELECT SCHEMA_NAME FROM information_schema.SCHEMATA')}
    unknown = [db for db in databases if db not in found_dbs]
    if unknown:
        raise BinlogConfigError(f'no such database(s): {", ".join(unknown)}; check the DSN\'s '
                                'database')
    result: list[tuple[str, str]] = []
    for db in databases:
        result.extend((db, str(name)) for (name,) in _query(
            conn, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                  "AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME", (db,)))
    return result


_SIMPLE_TYPES = {
    'tinyint': t.TINY, 'smallint': t.SHORT, 'mediumint': t.INT24, 'int': t.LONG,
    'bigint': t.LONGLONG, 'date': t.DATE, 'year': t.YEAR, 'json': t.JSON,
}
_TEMPORAL_TYPES = {'time': t.TIME2, 'datetime': t.DATETIME2, 'timestamp': t.TIMESTAMP2}
_BLOB_WIDTHS = {'tiny': 1, '': 2, 'medium': 3, 'long': 4}
_GEOMETRY_TYPES = ('geometry', 'point', 'linestring', 'polygon', 'multipoint',
                   'multilinestring', 'multipolygon', 'geometrycollection')
_BINARY_TYPES = {'uuid': 16, 'inet6': 16, 'inet4': 4}  # MariaDB types stored as binary(n)
_ENUM_LABEL = re.compile(r"'((?:[^']|'')*)'")

_COLUMNS_QUERY = (
    'SELECT c.COLUMN_NAME, c.DATA_TYPE, c.COLUMN_TYPE, c.IS_NULLABLE, '
    'c.CHARACTER_OCTET_LENGTH, c.NUMERIC_PRECISION, c.NUMERIC_SCALE, c.DATETIME_PRECISION, '
    'co.ID, c.COLUMN_KEY FROM information_schema.COLUMNS c '
    'LEFT JOIN information_schema.COLLATIONS co ON co.COLLATION_NAME = c.COLLATION_NAME '
    'WHERE c.TABLE_SCHEMA = %s AND c.TABLE_NAME = %s ORDER BY c.ORDINAL_POSITION')


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def _column_info(position: int, row: Sequence[Any]) -> t.ColumnInfo:
    """One information_schema.COLUMNS row as the binlog's TABLE_MAP would describe it."""
    name, data_type, column_type, nullable, octets, precision, scale, fsp, collation = row[:9]
    data_type, column_type = str(data_type).lower(), str(column_type).lower()
    info = t.ColumnInfo(position=position, name=str(name), type=t.NULL,
                        nullable=str(nullable) == 'YES', unsigned='unsigned' in column_type,
                        collation=int(collation) if collation is not None else None)
    replace = info._replace
    if data_type in _SIMPLE_TYPES:
        return replace(type=_SIMPLE_TYPES[data_type])
    if data_type in _TEMPORAL_TYPES:
        return replace(type=_TEMPORAL_TYPES[data_type], fsp=_int(fsp))
    if data_type == 'float':
        return replace(type=t.FLOAT, length=4)
    if data_type == 'double':
        return replace(type=t.DOUBLE, length=8)
    if data_type == 'decimal':
        return replace(type=t.NEWDECIMAL, precision=_int(precision), scale=_int(scale))
    if data_type in ('char', 'binary'):
        return replace(type=t.STRING, length=_int(octets),
                       collation=t.BINARY_COLLATION if data_type == 'binary' else info.collation)
    if data_type in ('varchar', 'varbinary'):
        return replace(type=t.VARCHAR, length=_int(octets),
                       collation=t.BINARY_COLLATION if data_type == 'varbinary'
                       else info.collation)
    if data_type.endswith(('text', 'blob')):
        size = data_type[:-4]
        if size in _BLOB_WIDTHS:
            binary = data_type.endswith('blob')
            return replace(type=t.BLOB, length=_BLOB_WIDTHS[size],
                           collation=t.BINARY_COLLATION if binary else info.collation)
    if data_type in ('enum', 'set'):
        original = str(row[2])  # the labels keep their case
        labels = original[original.index('(') + 1:original.rindex(')')]
        symbols = tuple(m.replace("''", "'") for m in _ENUM_LABEL.findall(labels))
        return replace(type=t.ENUM if data_type == 'enum' else t.SET, symbols=symbols)
    if data_type == 'bit':
        return replace(type=t.BIT, length=_int(precision))
    if data_type in _GEOMETRY_TYPES:
        return replace(type=t.GEOMETRY, length=4,
                       geometry_type=_GEOMETRY_TYPES.index(data_type))
    if data_type in _BINARY_TYPES:
        return replace(type=t.STRING, length=_BINARY_TYPES[data_type],
                       collation=t.BINARY_COLLATION)
    raise t.UnsupportedColumnError(f'column {name!r} has type {column_type}, which the '
                                   'snapshot cannot read yet')


def _primary_key(conn: Any, db: str, table: str, marked: set[str]) -> tuple[str, ...]:
    """The key the binlog's PRIMARY_KEY metadata names for ``db.table``, in key order.

    Without a PRIMARY KEY, the server promotes its first UNIQUE key of whole NOT NULL columns
    to the primary key, and the binlog names that key: information_schema marks its columns
    ``PRI`` (``marked``).  The unique index holding exactly those columns gives their order;
    rows come in the server's own key order, so of two such indexes the promoted one is first.
    """
    if not marked:
        return ()
    indexes: dict[str, list[tuple[int, str]]] = {}
    for index, seq, column in _query(
            conn, 'SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME FROM information_schema.STATISTICS '
                  'WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND NON_UNIQUE = 0', (db, table)):
        indexes.setdefault(str(index), []).append((int(seq), str(column)))
    for parts in indexes.values():
        if {column for _, column in parts} == marked and len(parts) == len(marked):
            return tuple(column for _, column in sorted(parts))
    raise BinlogConfigError(f'{db}.{table}: information_schema marks {sorted(marked)} as its '
                            'primary key, but no unique index holds exactly those columns, so '
                            'the snapshot cannot tell their order; capture the table after '
                            'giving it a PRIMARY KEY')


def _select_expression(info: t.ColumnInfo, data_type: str) -> str:
    name = quote(info.name)
    if info.type == t.FLOAT:
        return f'({name} + 0e0)'  # exact as a DOUBLE; the FLOAT's own text has 6 digits only
    if data_type in _BINARY_TYPES:
        return f'CAST({name} AS BINARY({_BINARY_TYPES[data_type]}))'
    return name


def describe_table(conn: Any, db: str, table: str) -> SnapshotTable:
    """``db.table``'s definition from information_schema, modelled as the binlog models it."""
    rows = _query(conn, _COLUMNS_QUERY, (db, table))
    if not rows:
        raise BinlogConfigError(f'no such table: {db}.{table}')
    columns = tuple(_column_info(i, row) for i, row in enumerate(rows))
    key = _primary_key(conn, db, table, {str(r[0]) for r in rows if str(r[9]) == 'PRI'})
    schema = TableSchema(db, table, tuple(t.to_column(c) for c in columns), key)
    select = tuple(_select_expression(c, str(r[1]).lower()) for c, r in zip(columns, rows,
                                                                            strict=True))
    return SnapshotTable(schema, columns, select)


# ---------------------------------------------------------------------------------------------
# Values: the server's text -> what the binlog decoder produces

_UTC = dt.timezone.utc
_date_iso = dt.date.fromisoformat
_datetime_iso = dt.datetime.fromisoformat
_F32 = struct.Struct('<f')


def _micros(frac: str) -> int:
    return int(frac.ljust(6, '0')) if frac else 0


# fromisoformat (C) is ~9x faster than slicing the text; the slicing path serves what it
# refuses: 1, 2, 4 or 5 fraction digits before Python 3.11, and values Python cannot hold.

def _date(text: str) -> dt.date | str:
    try:
        return _date_iso(text)
    except ValueError:
        return text  # the zero date or another value Python's date cannot hold


def _datetime_parts(text: str) -> dt.datetime:
    return dt.datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]),
                       int(text[14:16]), int(text[17:19]), _micros(text[20:]))


def _datetime(text: str) -> dt.datetime | str:
    try:
        return _datetime_iso(text)
    except ValueError:
        try:
            return _datetime_parts(text)
        except ValueError:
            return text


def _timestamp(text: str) -> dt.datetime | str:
    # The session's time zone is UTC (begin_snapshot sets it), as the binlog's seconds are.
    value = _datetime(text)
    return value if isinstance(value, str) else value.replace(tzinfo=_UTC)


def _time(text: str) -> dt.time | str:
    if text.startswith('-'):
        return text  # negative: the text form, as the decoder gives it
    hours, minutes, rest = text.split(':')
    hour = int(hours)
    if hour >= 24:
        return text
    seconds, _, frac = rest.partition('.')
    return dt.time(hour, int(minutes), int(seconds), _micros(frac))


def _float32(text: str) -> float:
    return t.float32(_F32.pack(float(text)), 0)


def _bit1(data: bytes) -> bool:
    return bool(data[-1])


def _converter(info: t.ColumnInfo) -> Callable[[Any], Any] | None:
    """text (bytes for binary columns) -> the decoder's value; None: keep as it comes."""
    code = info.type
    if code in (t.TINY, t.SHORT, t.INT24, t.LONG, t.YEAR):
        return int
    if code == t.LONGLONG:
        return Decimal if info.unsigned else int
    if code == t.NEWDECIMAL:
        return Decimal
    if code == t.FLOAT:
        return _float32
    if code == t.DOUBLE:
        return float
    if code == t.DATE:
        return _date
    if code == t.TIME2:
        return _time
    if code == t.DATETIME2:
        return _datetime
    if code == t.TIMESTAMP2:
        return _timestamp
    if code == t.BIT and info.length == 1:
        return _bit1
    if code == t.GEOMETRY:
        return t.geometry_value
    return None  # strings, enums, sets, JSON text, binary strings and blobs, bit(n)


def row_converter(columns: Sequence[t.ColumnInfo]) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """A function turning one SELECT row (text values) into the decoder's row dict."""
    names = tuple(c.name for c in columns)
    convert = tuple(_converter(c) for c in columns)
    if not any(convert):
        def plain(values: Sequence[Any]) -> dict[str, Any]:
            return dict(zip(names, values, strict=True))
        return plain
    pairs = tuple(zip(names, convert, strict=True))

    def typed(values: Sequence[Any]) -> dict[str, Any]:
        return {name: value if fn is None or value is None else fn(value)
                for (name, fn), value in zip(pairs, values, strict=True)}
    return typed


# ---------------------------------------------------------------------------------------------
# The snapshot

_ER_TABLE_DEF_CHANGED = 1412
_ATTEMPTS = 5


def begin_snapshot(conn: Any, tables: Sequence[tuple[str, str]] = ()) -> BinlogPosition:
    """Opens a consistent-snapshot transaction on ``conn`` and returns its binlog position.

    Lock-free for rows: MariaDB reports the binlog position matching the InnoDB read view.
    Each of ``tables`` is then opened once, so the transaction holds its metadata lock until
    the snapshot ends: a DDL statement (ALTER, TRUNCATE) on a table not read yet would
    otherwise make it unreadable from this read view ("Table definition has changed").  A DDL
    that slips in before the locks are taken makes this start over (nothing was read yet);
    one issued later waits until the snapshot is read.  ``conn`` then reads the snapshot until
    :func:`read_snapshot` (or the caller) ends the transaction.
    """
    import pymysql

    for attempt in range(1, _ATTEMPTS + 1):
        position = _start_transaction(conn)
        try:
            with conn.cursor() as cur:
                for db, table in tables:
                    cur.execute(f'SELECT 1 FROM {quote(db)}.{quote(table)} LIMIT 1')
                    cur.fetchall()
        except pymysql.err.MySQLError as exc:
            with conn.cursor() as cur:
                cur.execute('ROLLBACK')
            if exc.args[0] != _ER_TABLE_DEF_CHANGED or attempt == _ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
            continue
        return position
    raise AssertionError('unreachable')  # the loop returns or raises


def _start_transaction(conn: Any) -> BinlogPosition:
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
        cur.execute('SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ')
        cur.execute('START TRANSACTION WITH CONSISTENT SNAPSHOT')
        cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
        status = {str(k).lower(): v for k, v in cur.fetchall()}
        file = status.get('binlog_snapshot_file')
        pos = status.get('binlog_snapshot_position')
        if not file or pos is None:
            cur.execute('ROLLBACK')
            raise BinlogConfigError(
                'the server reports no binlog_snapshot_file/position (MySQL has none; MariaDB '
                'does): a lock-free consistent snapshot needs MariaDB; use --snapshot never')
        file_name = file.decode() if isinstance(file, bytes) else str(file)
        cur.execute('SELECT BINLOG_GTID_POS(%s, %s)', (file_name, int(pos)))
        gtid = cur.fetchone()[0]
    if isinstance(gtid, bytes):
        gtid = gtid.decode()
    return BinlogPosition(file_name, int(pos), str(gtid) if gtid else None)


_new = object.__new__


def read_snapshot(conn: Any, tables: Sequence[tuple[str, str]], position: BinlogPosition, *,
                  server_name: str, server_id: int | None, epoch: int = 0,
                  batch_size: int = 1000,
                  clock: Callable[[], float] = time.time) -> Iterator[list[ChangeEvent]]:
    """Batches of ``op: r`` events of every row of ``tables``, read in the transaction
    :func:`begin_snapshot` opened on ``conn`` (with :func:`text_conversions`), which this ends.
    Each table's rows are followed by its :func:`~transforms.envelope.snapshot_complete` event;
    the last of those says snapshot 'last'."""
    import pymysql.cursors

    try:
        batch: list[ChangeEvent] = []
        marker: ChangeEvent | None = None
        for db, name in tables:
            described = describe_table(conn, db, name)
            table = described.schema
            convert = row_converter(described.columns)
            now_ms = int(clock() * 1000)
            source = SourcePosition(
                connector='mysql', name=server_name, db=db, schema=db, table=name,
                ts_ms=now_ms, snapshot='true', file=position.file, pos=position.pos, row=0,
                gtid=position.gtid, server_id=server_id, epoch=epoch or None)
            # Every row's event differs from this one only in ``after``: copying its fields
            # costs a third of a frozen dataclass's __init__, which matters per row.
            template = ChangeEvent(op=Op.READ, table=table, source=source, ts_ms=now_ms).__dict__
            sql = f'SELECT {", ".join(described.select)} FROM {quote(db)}.{quote(name)}'
            if marker is not None:
                batch.append(marker)
            count = 0
            with conn.cursor(pymysql.cursors.SSCursor) as cur:
                cur.execute(sql)
                while True:
                    rows = cur.fetchmany(batch_size)
                    if not rows:
                        break
                    count += len(rows)
                    for values in rows:
                        event = _new(ChangeEvent)
                        state = event.__dict__
                        state.update(template)
                        state['after'] = convert(values)
                        batch.append(event)
                    if len(batch) >= batch_size:
                        yield batch
                        batch = []
            marker = snapshot_complete(table, source, count, int(clock() * 1000))
        if marker is not None:  # the snapshot's last event
            batch.append(marker.replace(source=dataclasses.replace(marker.source,
                                                                   snapshot='last')))
        if batch:
            yield batch
    finally:
        try:
            with conn.cursor() as cur:
                cur.execute('ROLLBACK')
        except Exception:  # a broken connection must not hide the error that broke it
            pass
