"""The initial snapshot: every row of the captured tables as of the slot's consistent point.

Rows are read with ``COPY … TO STDOUT`` (text form, the same text pgoutput sends, so one set of
type parsers serves both) inside a REPEATABLE READ transaction that imports the snapshot the
slot exported, and come out as ``op: r`` events in batches, so memory stays bounded whatever
the table size::

    for batch in read_snapshot(conn, snapshot_name, tables, assembler, consistent_point):
        emit(batch)

Every snapshot row sorts at ``(consistent_point, 0)``; every streamed change committed after
the consistent point sorts later, so replaying either never lets a snapshot row win over a
newer change.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

from transforms.dead_letter import DeadLetter
from transforms.envelope import ChangeEvent, Op, SourcePosition, TableSchema, snapshot_complete
from transforms.sources.postgres.catalog import TableRef, quote_ident, table_columns
from transforms.sources.postgres.changes import ChangeAssembler
from transforms.sources.postgres.pgoutput import Relation, RelationColumn
from transforms.sources.postgres.replication import parse_lsn

__all__ = ['SnapshotInvalidated', 'read_snapshot', 'relation_from_catalog']


def relation_from_catalog(conn: Any, ref: TableRef) -> Relation:
    """The Relation message pgoutput would send for ``ref``, built from the catalog."""
    identity = set()
    if ref.replica_identity == 'f':
        identity = {name for name, _, _ in table_columns(conn, ref.oid)}
    else:
        flag = 'indisreplident' if ref.replica_identity == 'i' else 'indisprimary'
        rows = conn.execute(
            f'SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid '
            f'AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.{flag}',
            (ref.oid,)).fetchall()
        identity = {name for (name,) in rows}
    columns = tuple(RelationColumn(name, oid, typmod, name in identity)
                    for name, oid, typmod in table_columns(conn, ref.oid))
    return Relation(None, ref.oid, ref.schema, ref.table, ref.replica_identity, columns)


class SnapshotInvalidated(RuntimeError):
    """A captured table was truncated or rewritten after the snapshot's point: its rows are
    invisible to the snapshot, so the snapshot must be taken again."""


_REWRITTEN_SQL = """
SELECT c.relname
FROM unnest(%s::oid[]) AS t(oid)
CROSS JOIN LATERAL (SELECT t.oid UNION SELECT relid FROM pg_partition_tree(t.oid)) AS r(oid)
JOIN pg_class c ON c.oid = r.oid
WHERE c.relkind <> 'p' AND c.relfilenode IS DISTINCT FROM pg_relation_filenode(c.oid)
"""


def _utf8_row(values: Sequence[bytes | None], table: TableSchema, position: SourcePosition,
              letters: list[DeadLetter] | None) -> list[str | None] | None:
    """A SQL_ASCII row's fields decoded as UTF-8; None, and a dead letter, if one is not."""
    try:
        return [None if value is None else value.decode() for value in values]
    except UnicodeDecodeError:
        pass
    error = 'a value is not UTF-8'
    for column, value in zip(table.columns, values, strict=True):
        if value is None:
            continue
        try:
            value.decode()
        except UnicodeDecodeError as exc:
            bad = value[max(0, exc.start - 16):exc.end + 16]
            error = (f'column {column.name!r} of {table.name} holds bytes that are not UTF-8 '
                     f'({bad!r}); the database is SQL_ASCII, which stores any bytes as text')
            break
    if letters is None:
        raise ValueError(error)
    line = b'\t'.join(b'\\N' if value is None else
                       value.replace(b'\\', b'\\\\').replace(b'\t', b'\\t')
                       .replace(b'\n', b'\\n').replace(b'\r', b'\\r')
                       for value in values)
    letters.append(DeadLetter('ReadSnapshot', error, line,
                              source=f'{table.name}@{position.sort_key}'))
    return None


def _snapshot_columns(conn: Any, ref: TableRef) -> set[str]:
    return {name for name, _, _ in table_columns(conn, ref.oid)}


def _current_columns(conn: Any, ref: TableRef) -> set[str]:
    """The table's columns as the relation cache has them now (the lock made it current)."""
    cursor = conn.execute(f'SELECT * FROM {ref.quoted} WHERE false')
    return {column.name for column in cursor.description or ()}


def read_snapshot(conn: Any, snapshot: str | None, tables: Sequence[TableRef],
                  assembler: ChangeAssembler, consistent_point: int, *,
                  batch_size: int = 1000,
                  letters: list[DeadLetter] | None = None) -> Iterator[list[ChangeEvent]]:
    """Batches of ``op: r`` events of every row of ``tables``, each table's followed by its
    :func:`~transforms.envelope.snapshot_complete` event; the last of those says snapshot 'last'.

    ``snapshot`` is the name the slot exported, whose ``consistent_point`` the rows carry
    (None, on a standby only: the current state, at the replay position read just before the
    snapshot is taken: every commit replayed by then is visible to it, and one visible that
    was replayed since carries a later position, so a target keeps the newer row either way.
    On a primary the current position is not exact: see ``_exact_snapshot`` in ``read``).

    TRUNCATE and table-rewriting DDL (ALTER … TYPE, VACUUM FULL, CLUSTER) are not MVCC-safe:
    a snapshot from before them sees the table empty.  So the tables are locked in ACCESS
    SHARE mode for the read (such DDL waits; writes do not), and one that was rewritten
    between the snapshot's point and the lock — its file node as of the snapshot differs from
    the current one — raises :class:`SnapshotInvalidated` before any row is produced; so does
    one that lost or renamed a column in between (the snapshot's columns could not be
    selected).  A column added in between is left out: the rows are read with the columns of
    the snapshot's point, and the stream announces the new one after it.

    A SQL_ASCII database stores any bytes as text, and the server refuses to send a value
    that is not UTF-8 in the UTF-8 the session asks for: the whole copy failed.  There each
    table is copied as the bytes it holds and decoded here; a row with a value that is not
    UTF-8 goes to ``letters`` (its fields in COPY text form, naming the column and the
    bytes), as such a change does when streamed, and the rest of the table is read.
    """
    raw = conn.info.parameter_status('server_encoding') == 'SQL_ASCII'
    if not snapshot:
        replayed = conn.execute('SELECT pg_last_wal_replay_lsn()::text').fetchone()[0]
        if replayed is None:
            raise ValueError('a snapshot without a slot is exact on a standby only')
        consistent_point = parse_lsn(replayed)
    conn.execute('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
    try:
        if snapshot:
            conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        if tables:
            # Without a slot's snapshot the lock comes before the transaction's snapshot (taken
            # by its first query), so no DDL can come in between.
            conn.execute('LOCK TABLE ' + ', '.join(t.quoted for t in tables)
                         + ' IN ACCESS SHARE MODE')
        if tables and snapshot:
            # pg_class read through the transaction's snapshot vs the relcache (current state),
            # for each table that has storage: a partitioned table's are its partitions.
            rewritten = conn.execute(_REWRITTEN_SQL, ([t.oid for t in tables],)).fetchall()
            if rewritten:
                raise SnapshotInvalidated(
                    'truncated or rewritten during the snapshot: '
                    + ', '.join(name for (name,) in rewritten))
            # The snapshot's columns (pg_attribute through its snapshot) vs the columns a
            # query sees now: a column dropped or renamed in between could not be read.
            changed = [ref.name for ref in tables
                       if not _snapshot_columns(conn, ref) <= _current_columns(conn, ref)]
            if changed:
                raise SnapshotInvalidated('columns dropped or renamed during the snapshot: '
                                          + ', '.join(changed))
        batch: list[ChangeEvent] = []
        marker: ChangeEvent | None = None
        for ref in tables:
            state = assembler.relation(relation_from_catalog(conn, ref))
            table = state.schema
            if not table.columns:
                continue
            columns = ', '.join(quote_ident(c.name) for c in table.columns)
            sql = f'COPY (SELECT {columns} FROM {ref.quoted}) TO STDOUT'
            position = SourcePosition(
                connector='postgresql', name=assembler.server_name, db=assembler.database,
                schema=table.schema, table=table.table, ts_ms=int(time.time() * 1000),
                snapshot='true', lsn=0, commit_lsn=consistent_point)
            if marker is not None:
                batch.append(marker)
            rows = skipped = 0
            if raw:
                conn.execute("SET LOCAL client_encoding = 'SQL_ASCII'")  # values as bytes
            with conn.cursor().copy(sql) as copy:
                for values in copy.rows():
                    if raw:
                        values = _utf8_row(values, table, position, letters)
                        if values is None:
                            skipped += 1
                            continue
                    after, _ = state.decode_row(values)
                    batch.append(ChangeEvent(op=Op.READ, table=table, source=position,
                                             after=after, ts_ms=int(time.time() * 1000)))
                    rows += 1
                    if len(batch) >= batch_size:
                        yield batch
                        batch = []
            if raw:
                conn.execute("SET LOCAL client_encoding = 'UTF8'")
            marker = snapshot_complete(table, position, rows, int(time.time() * 1000), skipped)
        if marker is not None:  # the snapshot's last event
            batch.append(marker.replace(source=dataclasses.replace(marker.source,
                                                                   snapshot='last')))
        if batch:
            yield batch
    finally:
        conn.rollback()
