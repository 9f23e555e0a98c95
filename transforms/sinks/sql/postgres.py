"""WriteChangesToPostgres: keep PostgreSQL tables equal to the source tables (effectively-once).

    dead = events | 'WriteToPostgres' >> WriteChangesToPostgres('postgresql://app@db/replica')
    dead | 'WriteDeadLetters' >> WriteDeadLetters('jsonl:/var/lib/changebeam/dead')

Source ``schema.table`` goes to ``schema.table`` (schema and table are created on first sight,
with the source's column types verbatim from a PostgreSQL source, else the typemap's, and
altered inside the batch transaction when the source's schema changes: see ``alter``).  Each
batch is one transaction: rows are COPYed into a temp staging table shaped like the target and
merged with ``INSERT … SELECT … ON CONFLICT (key) DO UPDATE … WHERE row._cb_pos < new._cb_pos``
(measured in bench/sinks.py against plain COPY; see docs/sinks.md).  Staging also makes every
value go through PostgreSQL's own input function for the target type, so text forms such as
``infinity`` or ``24:00:00`` land as the source had them.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from transforms.dsn import parse_dsn, pg_ask, pg_conninfo, redact
from transforms.envelope import Column, Kind, TableSchema
from transforms.sinks.sql import statements as sql
from transforms.sinks.sql.alter import (
    DROPPED_NOTE,
    Alteration,
    TargetColumn,
    add_default,
    drop_defaults,
    filled,
)
from transforms.sinks.sql.apply import (
    DEFAULT_STALL_CHECK_S,
    DEFAULT_TOMBSTONE_RETENTION,
    Target,
    WriteChanges,
    keys_to_look_up,
)
from transforms.sinks.sql.batch import RowChange, TableBatch, hashed
from transforms.sinks.sql.copytext import (
    BINARY_HEADER,
    BINARY_TRAILER,
    binary_codes,
    rows_binary,
    rows_text,
)
from transforms.sinks.sql.routing import Route, TargetTable, postgres_target
from transforms.sinks.sql.typemap import postgres_type
from transforms.sources.postgres.catalog import lock_wait

__all__ = ['WriteChangesToPostgres']

_LOG = logging.getLogger(__name__)
_STEP = 'WriteChangesToPostgres'
# SQLSTATE classes worth a new attempt: connection exception, transaction rollback (serialization
# failure, deadlock), insufficient resources, operator intervention (shutdown), system error.
_RETRYABLE_CLASSES = frozenset({'08', '40', '53', '57', '58'})
_RETRYABLE_STATES = frozenset({'55P03'})  # lock_not_available
_COPY_CHUNK_ROWS = 1000
# The live columns of a table: format_type prints the type text a PostgreSQL source's columns
# carry (Column.source_type), so the two compare as text; key = part of the primary key;
# dropped = the comment marking a column kept after the source dropped it.
_COLUMNS = ('SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, '
            'COALESCE(a.attnum = ANY(i.indkey::int2[]), false), '
            'COALESCE(col_description(a.attrelid, a.attnum) = %s, false) '
            'FROM pg_attribute a LEFT JOIN pg_index i '
            'ON i.indrelid = a.attrelid AND i.indisprimary '
            'WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped '
            'ORDER BY a.attnum')
# A staging table's column types, in order (which of them binary COPY can fill).
_STAGE_TYPES = ('SELECT atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass '
                'AND attnum > 0 AND NOT attisdropped ORDER BY attnum')
_TEXT_OID = 25


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError("WriteChangesToPostgres needs psycopg 3: pip install "
                          "'changebeam[postgres]'") from exc
    return psycopg


def _parse(dsn: str) -> str:
    if not isinstance(dsn, str):
        raise ValueError(f'dsn must be a postgresql:// URI string, got {type(dsn).__name__}')
    parsed = parse_dsn(dsn, option='dsn')
    if parsed.kind != 'postgresql':
        raise ValueError(f'dsn {redact(dsn)!r} is not a PostgreSQL DSN; use '
                         'postgresql://USER[:PASSWORD]@HOST[:PORT]/DB')
    return dsn


class _PostgresTarget(Target):
    step = _STEP
    dialect = 'postgresql'
    transactional_ddl = True

    def __init__(self, dsn: str, route: Route = None, connections: int = 2) -> None:
        self._dsn = dsn
        self._route = route
        self._conn: Any = None
        self.lanes = connections
        # Bumped by every CREATE/ALTER of a target table, by any lane (shared with them): a
        # staging table keeps the column types of when it was made, so one made before is not
        # used after.
        self._shape = [0]
        # By staging key (which names the shape): rows_binary's codes for its value columns,
        # None where one has no binary path; from the first lane to make such a table.
        self._codes: dict[tuple[Any, ...], tuple[int, ...] | None] = {}

    def lane(self) -> _PostgresTarget:
        twin = _PostgresTarget(self._dsn, self._route, self.lanes)
        twin._shape = self._shape
        twin._codes = self._codes
        return twin

    @property
    def permanent(self) -> tuple[type[BaseException], ...]:  # type: ignore[override]
        return (_psycopg().Error, ValueError, TypeError, OverflowError)

    def __getstate__(self) -> dict[str, Any]:
        return {'_dsn': self._dsn, '_route': self._route, '_conn': None, '_shape': [0],
                '_codes': {}, 'lanes': self.lanes}

    def target_of(self, table: TableSchema) -> TargetTable:
        return postgres_target(table, self._route)

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> None:
        psycopg = _psycopg()
        self._conn = psycopg.connect(pg_conninfo(self._dsn), autocommit=True)
        self._cur = self._conn.cursor()
        self._stages: dict[tuple[Any, ...], str] = {}
        self._stage_codes: dict[str, tuple[int, ...] | None] = {}  # this session's, by name
        self._pending: list[tuple[str, Sequence[Any]]] = []
        self._row_by_row = False
        self._known_types: dict[str, bool] = {}
        for attempt in (1, 2):
            try:
                with self._conn.transaction():
                    self._run(f"SELECT to_regclass('{sql.PG_TOMBSTONES}') IS NOT NULL")
                    existed = self._cur.fetchone()[0]
                    for statement in sql.pg_create_tombstones():
                        self._run(statement)
                    self._run(sql.PG_TOMBSTONES_CURRENT)
                    if not self._cur.fetchone()[0]:  # its index is made here, new or old
                        if existed:
                            _LOG.info('%s: adding written_at to %s (made by an older '
                                      'version)', _STEP, sql.PG_TOMBSTONES)
                        for statement in sql.pg_upgrade_tombstones():
                            self._run(statement)
                break
            except psycopg.errors.UniqueViolation:
                if attempt == 2:  # two workers creating it at once: the other one won
                    raise
        _LOG.info('%s connected to %s', _STEP, redact(self._dsn))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection must not hide the original error
                pass
            self._conn = None

    def fileno(self) -> int | None:
        conn = self._conn
        return None if conn is None or conn.closed else conn.fileno()

    def probe(self, timeout_s: float) -> str:
        conn = self._conn
        if conn is None:
            raise ConnectionError('not connected')
        pid = conn.info.backend_pid  # a field libpq keeps: no round trip

        def ask(other: Any) -> tuple[Any, str | None]:
            row = other.execute(sql.PG_SESSION_ACTIVITY, (pid,)).fetchone()
            # Who holds the lock it waits for: what an operator needs to know.
            return row, lock_wait(other, pid) if row is not None and row[1] == 'Lock' else None

        row, locked = pg_ask(self._dsn, ask, timeout_s)
        if row is None:
            raise ConnectionError(f'the server has no session {pid} any more')
        if locked is not None:
            return f'session {pid}: {locked}'
        state, wait_type, wait_event, seconds_in, query = row
        waiting = f', waiting for {wait_type} {wait_event}' if wait_type else ''
        return f'session {pid} {state}{waiting} for {seconds_in or 0:.0f} s: {query}'

    def is_retryable(self, exc: BaseException) -> bool:
        psycopg = _psycopg()
        if isinstance(exc, OSError):
            return True
        if not isinstance(exc, psycopg.Error):
            return False
        if self._conn is None or self._conn.closed or self._conn.broken:
            return True
        state = getattr(exc, 'sqlstate', None)
        if state is None:
            return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
        return state[:2] in _RETRYABLE_CLASSES or state in _RETRYABLE_STATES

    def describe(self, exc: BaseException) -> str:
        state = getattr(exc, 'sqlstate', None)
        text = str(exc).strip()
        return f'{type(exc).__name__} [{state}]: {text}' if state else \
            f'{type(exc).__name__}: {text}'

    def _run(self, statement: str, params: Sequence[Any] = ()) -> Any:
        # Always with a parameter sequence: pg_ident doubled any '%' in names for this.
        if self._pending:
            return self._flush((statement, params))
        return self._cur.execute(statement, params)

    def _defer(self, statement: str, params: Sequence[Any] = ()) -> None:
        """Send ``statement`` with the next one, in the same round trip: a statement whose
        result nothing reads (BEGIN, the locks, a stage's TRUNCATE).  Every round trip of a
        batch costs the writer thread a wait for the GIL besides the server's answer."""
        self._pending.append((statement, params))

    def _settle(self) -> None:
        """Row by row, a write's deferred statements are sent before the write returns."""
        if self._row_by_row:
            self._flush()

    def _flush(self, last: tuple[str, Sequence[Any]] | None = None) -> Any:
        """The deferred statements, then ``last`` (whose result the cursor holds), in one
        round trip (libpq's pipeline mode); the first error is raised as it would be alone."""
        pending, self._pending = self._pending, []
        if not pending:
            return self._cur.execute(*last) if last is not None else self._cur
        with self._conn.pipeline():
            for statement, params in pending:
                self._cur.execute(statement, params)
            if last is not None:
                self._cur.execute(*last)
        return self._cur

    # -- tables ---------------------------------------------------------------------------

    def columns(self, target: TargetTable) -> dict[str, TargetColumn]:
        self._run(_COLUMNS, (DROPPED_NOTE, sql.pg_label(target)))
        return {name: TargetColumn(name, type_, nullable, key, dropped)
                for name, type_, nullable, key, dropped in self._cur.fetchall()}

    def column_type(self, column: Column, connector: str, key: bool) -> str:
        type_ = postgres_type(column, connector)
        if connector != 'postgresql' or type_ != column.source_type:
            return type_
        # A user-defined source type (enum, domain) may not exist here: then map the kind.
        known = self._known_types.get(type_)
        if known is None:
            psycopg = _psycopg()
            self._flush()  # the batch's BEGIN first: the block below must be a savepoint
            try:
                with self._conn.transaction():  # a savepoint inside the batch transaction
                    self._run('SELECT to_regtype(%s)', (type_,))
                    known = self._cur.fetchone()[0] is not None
            except psycopg.Error:
                known = False
            self._known_types[type_] = known
        if not known:
            _LOG.warning('%s: type %r of column %r does not exist in the target; using %r',
                         _STEP, type_, column.name, postgres_type(column))
            return postgres_type(column)
        return type_

    def create(self, target: TargetTable, schema: TableSchema, connector: str) -> None:
        definitions = [(c.name, self.column_type(c, connector, c.name in schema.key),
                        c.nullable) for c in schema.columns]
        psycopg = _psycopg()
        self._flush()  # the batch's BEGIN first: the block below must be a savepoint
        for attempt in (1, 2):
            try:
                with self._conn.transaction():  # a savepoint: a failure leaves the batch usable
                    for statement in sql.pg_create_table(target, definitions, schema.key):
                        self._run(statement)
                break
            except psycopg.errors.UniqueViolation:
                if attempt == 2:  # another writer created the schema at the same time
                    raise
        self._shape[0] += 1

    def high_water(self, target: TargetTable) -> str:
        self._run(sql.pg_high_water(target), (sql.pg_label(target),))
        return self._cur.fetchone()[0] or ''

    def alter(self, target: TargetTable, alteration: Alteration) -> None:
        # A column older rows hold a value of at the source (ADD COLUMN … DEFAULT <constant>)
        # is added with it as DEFAULT, the source's text form cast to the column's type (a
        # value the type cannot take fails the ALTER: the table's rows become dead letters),
        # and the DEFAULT is dropped in the same transaction.  A column back after a drop goes
        # first, with the old values the sink kept (the marks are comments on the columns).
        defaults = {c.name: c.default for c in alteration.defaults if c.default is not None}
        add = [add_default(c, defaults[c[0]], self.dialect) if c[0] in defaults else c
               for c in alteration.add]
        statements = sql.pg_drop_columns(target, alteration.readd)
        statements += sql.pg_alter_table(
            target, add, [(w.column, w.new) for w in alteration.widen + alteration.narrow],
            [c.name for c in alteration.relax], alteration.hidden)
        statements += drop_defaults(target, list(defaults), self.dialect)
        statements += sql.pg_comment_columns(target, [c.name for c in alteration.mark],
                                             DROPPED_NOTE)
        self._flush()  # the batch's BEGIN first: the block below must be a savepoint
        with self._conn.transaction():
            for statement in statements:
                self._run(statement)
        self._shape[0] += 1  # staging tables copy the target's column types: make new ones

    def _stage_key(self, target: TargetTable, columns: Sequence[str],
                   extra: Sequence[str] = ()) -> tuple[Any, ...]:
        return (target, tuple(columns), tuple(extra), self._shape[0])

    def _stage(self, target: TargetTable, columns: Sequence[str], extra: Sequence[str] = ()) -> str:
        key = self._stage_key(target, columns, extra)
        stage = self._stages.get(key)
        if stage is None:
            digest = hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()
            stage = f'pg_temp.{sql.pg_ident("_cb_stage_" + digest)}'
            self._defer(sql.pg_create_stage(stage, target, columns, extra))
            self._run(_STAGE_TYPES, (stage,))
            oids = [oid for oid, in self._cur.fetchall()]
            # The rows' values, then their position as text (an upsert's stage; the others
            # are COPYed as text).
            codes = binary_codes(oids[:-1]) if not extra and oids[-1:] == [_TEXT_OID] \
                else None
            self._stages[key] = stage
            self._stage_codes[stage] = self._codes[key] = codes
        return stage

    def _copy(self, stage: str, names: Sequence[str], chunks: Iterable[str | bytes],
              binary: bool = False) -> None:
        """COPY the ``chunks`` (rows of the ``names`` columns, see :func:`_chunks`): COPY
        text, or the tuples of binary COPY."""
        self._flush()  # COPY has no place in a pipeline
        with self._cur.copy(sql.pg_copy(stage, names, binary)) as copy:
            if binary:
                copy.write(BINARY_HEADER)
            for chunk in chunks:
                copy.write(chunk)
            if binary:
                copy.write(BINARY_TRAILER)

    # -- transactions -----------------------------------------------------------------------

    def begin(self, row_by_row: bool) -> None:
        # Row by row, each row's statements go before its step ends (_settle): a failure must
        # be that row's, inside its savepoint.
        self._row_by_row = row_by_row
        self._defer('BEGIN')
        if row_by_row:  # a deferred constraint must fail at its row, not at COMMIT
            self._defer('SET CONSTRAINTS ALL IMMEDIATE')

    def commit(self) -> None:
        self._run('COMMIT')

    def rollback(self) -> None:
        self._pending = []  # never sent: nothing of them to undo
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            if conn.info.transaction_status != _psycopg().pq.TransactionStatus.IDLE:
                self._run('ROLLBACK')
        except Exception:  # the connection died; the next attempt reconnects
            pass
        # A staging table created inside the rolled-back transaction is gone.
        self._stages.clear()

    def savepoint(self) -> None:
        self._run('SAVEPOINT _cb_row')

    def release(self) -> None:
        self._run('RELEASE SAVEPOINT _cb_row')

    def rollback_to(self) -> None:
        self._run('ROLLBACK TO SAVEPOINT _cb_row')
        self._stages.clear()

    def lock(self, targets: Sequence[TargetTable]) -> None:
        for target in targets:  # sent with the batch's first statement that needs an answer
            self._defer('SELECT pg_advisory_xact_lock(%s)', (sql.pg_lock_key(target),))

    # -- writes -----------------------------------------------------------------------------

    def tombstones(self, target: TargetTable, changes: Sequence[RowChange]) -> dict[str, str]:
        label = sql.pg_label(target)
        self._run(sql.PG_TOMBSTONE_MARKS, (label, label))
        marks = dict(self._cur.fetchall())
        if keys_to_look_up(marks, changes):
            self._run(sql.PG_READ_TOMBSTONES, (label, ','.join(hashed(changes))))
            marks = dict(self._cur.fetchall())
        return marks

    def truncate(self, target: TargetTable, pos: str) -> None:
        self._run(sql.pg_newer_rows_exist(target), (pos,))
        if self._cur.fetchone()[0]:
            self._run(sql.pg_delete_older(target), (pos,))
        else:
            self._run(sql.pg_truncate(target))
        label = sql.pg_label(target)
        self._run(sql.PG_TRUNCATE_TOMBSTONES, (label, pos))
        self._run(sql.PG_MARK_TRUNCATE, (label, pos))

    def delete(self, tb: TableBatch, changes: Sequence[RowChange]) -> None:
        key = list(tb.table.key)
        stage = self._stage(tb.target, [*key, sql.POS], [sql.KEY_HASH])
        self._copy(stage, [*key, sql.POS, sql.KEY_HASH],
                   _chunks([tb.table.by_name[k] for k in key], [c.values for c in changes],
                           [f'{c.pos}\t{c.key_hash}' for c in changes]))
        self._run(sql.pg_delete(tb.target, stage, key))
        label = sql.pg_label(tb.target)
        self._defer(sql.pg_record_tombstones(stage), (label,))
        self._defer(sql.PG_MARK_NEWEST, (label, max(c.pos for c in changes), label, label))
        self._defer(f'TRUNCATE {stage}')
        self._settle()

    def read_row(self, tb: TableBatch, table: TableSchema, key: Sequence[Any],
                 names: Sequence[str]) -> Sequence[Any] | None:
        # As text: it goes back through the column's own input function, whatever the type.
        self._run(f'SELECT {", ".join(f"{sql.pg_ident(n)}::text" for n in names)} '
                  f'FROM {sql.pg_table(tb.target)} WHERE '
                  + ' AND '.join(f'{sql.pg_ident(k)} = %s' for k in table.key), key)
        row = self._cur.fetchone()
        return None if row is None else tuple(row)

    def set_carried(self, tb: TableBatch, changes: Sequence[RowChange],
                    values: dict[int, dict[str, Any]]) -> None:
        key = tb.table.key
        types = self.columns(tb.target)
        for change in changes:
            assert change.row is not None
            given = values[id(change)]
            assignments = ', '.join(f'{sql.pg_ident(n)} = %s::{types[n].type}' for n in given)
            self._run(f'UPDATE {sql.pg_table(tb.target)} SET {assignments} WHERE '
                      + ' AND '.join(f'{sql.pg_ident(k)} = %s' for k in key)
                      + f' AND {sql.pg_ident(sql.POS)} = %s',
                      (*given.values(), *(change.row[k] for k in key), change.pos))

    def render_upserts(self, tb: TableBatch, upserts: list[RowChange]) -> list[_Group]:
        return _upsert_groups(tb, upserts, ahead=True, codes=self._codes_of(tb))

    def _codes_of(self, tb: TableBatch) -> Callable[[list[str]], tuple[int, ...] | None]:
        """What binary COPY codes a group's staging table takes (None: text), as far as the
        staging tables made so far tell; ``upsert`` checks them against its own."""
        return lambda names: self._codes.get(self._stage_key(tb.target, names))

    def stage_ahead(self, tb: TableBatch) -> None:
        # Into staging tables this session made in an earlier transaction only: making one
        # reads the target table, and a lock on it held until this batch commits could stop
        # the batch this one waits for (another lane's ALTER) for good.
        rendered = tb.prepared
        if rendered is None or self._row_by_row:
            return
        stages = []
        for names, _, _, _, codes in rendered.groups:
            stage = self._stages.get(self._stage_key(tb.target, names))
            if stage is None or (codes is not None and self._stage_codes.get(stage) != codes):
                return
            stages.append(stage)
        for stage, (names, _, _, chunks, codes) in zip(stages, rendered.groups, strict=True):
            self._copy(stage, names, chunks, codes is not None)
        tb.staged = (rendered, self._shape[0], stages)

    def upsert(self, tb: TableBatch, changes: Sequence[RowChange]) -> int:
        rendered, staged = tb.prepared, tb.staged
        tb.staged = None
        if rendered is not None and rendered.matches(tb, changes):
            groups = rendered.groups
            # Staged ahead (before the lock) and still what goes in: nothing to COPY.
            copied = staged is not None and staged[0] is rendered and staged[1] == self._shape[0]
        else:
            # Row by row, as text: a rejected value's error quotes it (COPY's context).
            groups = _upsert_groups(tb, changes, ahead=False,
                                    codes=None if self._row_by_row else self._codes_of(tb))
            copied = False
        if staged is not None and not copied:  # stale rows, or the table changed since
            for stage in staged[2]:
                self._defer(f'TRUNCATE {stage}')
        stale = 0
        for names, nulled, group, chunks, codes in groups:
            stage = self._stage(tb.target, names)
            if codes is not None and self._stage_codes.get(stage) != codes:
                # Binary for another lane's staging table whose types this one's lack (the
                # target was altered in between, not by the sink): as text.
                chunks, codes = _text_chunks(group), None
            if not copied:
                self._copy(stage, names, chunks, codes is not None)
            self._run(sql.pg_upsert(tb.target, stage, names, tb.table.key, nulled))
            stale += len(group) - max(self._cur.rowcount, 0)
            self._defer(f'TRUNCATE {stage}')  # with the next statement (COMMIT, often)
        self._settle()
        return stale

    def append(self, tb: TableBatch, changes: Sequence[RowChange]) -> None:
        for columns, nulled, group in tb.by_columns(changes):
            fill = _fill(tb, group[0].table, nulled)
            names = [*columns, *fill, sql.POS, sql.ROW_ID]
            stage = self._stage(tb.target, names)
            self._copy(stage, names, _chunks(_copy_columns(group[0].table, columns, fill),
                                             _values(group, fill),
                                             [f'{c.pos}\t{c.key_hash}' for c in group]))
            self._run(sql.pg_append(tb.target, stage, names))
            self._defer(f'TRUNCATE {stage}')
        self._settle()

    def drop_tombstones(self, target: TargetTable, hashes: Sequence[str]) -> None:
        self._run(sql.PG_DROP_TOMBSTONES, (sql.pg_label(target), ','.join(hashes)))

    def prune_tombstones(self, older_than_s: float, limit: int) -> int:
        # Its own short transaction; a tombstone row a batch holds makes it give up (55P03)
        # rather than keep the rows it already deleted locked while it waits.
        self._flush()
        with self._conn.transaction():
            self._run("SET LOCAL lock_timeout = '2s'")
            self._run(sql.PG_PRUNE_TOMBSTONES, (older_than_s, limit, older_than_s))
            return max(self._cur.rowcount, 0)


# Staged column names, target columns to set NULL, the changes, their COPY chunks, and the
# binary COPY codes the chunks were made for (None: COPY text).
_Group = tuple[list[str], list[str], list[RowChange], Iterable[str | bytes],
               tuple[int, ...] | None]


def _upsert_groups(tb: TableBatch, changes: Sequence[RowChange], *, ahead: bool,
                   codes: Callable[[list[str]], tuple[int, ...] | None] | None = None
                   ) -> list[_Group]:
    """Per group of ``TableBatch.by_columns``: the staged column names, the target columns to
    set NULL, the changes and their COPY chunks.  Binary when ``codes`` knows the staging
    table's and every value has their Python type (the server parses binary values for a
    fraction of text's cost); else COPY text, a list when rendered ``ahead``, else rendered
    while the COPY runs, so that the server parses one chunk while the next is made."""
    groups: list[_Group] = []
    for columns, nulled, group in tb.by_columns(changes):
        fill = _fill(tb, group[0].table, nulled)
        names = [*columns, *fill, sql.POS]
        cleared = [n for n in nulled if n not in fill]
        found = codes(names) if codes is not None and not fill else None
        binary = _binary_chunks(found, group) if found is not None else None
        if binary is not None:
            groups.append((names, cleared, group, binary, found))
            continue
        chunks = _chunks(_copy_columns(group[0].table, columns, fill), _values(group, fill),
                         [c.pos for c in group])
        groups.append((names, cleared, group, list(chunks) if ahead else chunks, None))
    return groups


def _binary_chunks(codes: tuple[int, ...], group: list[RowChange]) -> list[bytes] | None:
    """The group's binary COPY tuples, ``_COPY_CHUNK_ROWS`` rows a chunk; None if a value
    is not of the type its column's code encodes."""
    rows = _values(group, {})
    tails = [c.pos for c in group]
    chunks = []
    for start in range(0, len(rows), _COPY_CHUNK_ROWS):
        end = start + _COPY_CHUNK_ROWS
        chunk = rows_binary(codes, rows[start:end], tails[start:end])
        if chunk is None:
            return None
        chunks.append(chunk)
    return chunks


def _text_chunks(group: list[RowChange]) -> Iterator[str]:
    """COPY text of a group rendered for binary (whose rows fill no column)."""
    return _chunks(_copy_columns(group[0].table, group[0].columns, {}), _values(group, {}),
                   [c.pos for c in group])


def _chunks(columns: Sequence[Column], rows: Sequence[Iterable[Any]],
            tails: Sequence[str]) -> Iterator[str]:
    """COPY text of ``rows`` (values of ``columns``, then the text ``tails`` of the hidden
    columns), ``_COPY_CHUNK_ROWS`` rows at a time."""
    for start in range(0, len(rows), _COPY_CHUNK_ROWS):
        end = start + _COPY_CHUNK_ROWS
        yield rows_text(columns, rows[start:end], tails[start:end])


def _fill(tb: TableBatch, table: TableSchema, nulled: Sequence[str]) -> dict[str, str]:
    """Columns rows of ``table`` lack that a newer schema of the batch added with a default:
    the rows are older than the column, so they get its value (text form) rather than NULL."""
    if len(tb.schemas) < 2 or not nulled:
        return {}
    return {name: column.default for name, column in filled(tb.schemas, table, nulled).items()
            if column.default is not None}


def _copy_columns(table: TableSchema, columns: Sequence[str],
                  fill: dict[str, str]) -> list[Column]:
    # A filled value is already its PostgreSQL text form: COPY it as text.
    return [table.by_name[n] for n in columns] + [Column(n, Kind.TEXT) for n in fill]


def _values(group: Sequence[RowChange], fill: dict[str, str]) -> list[Iterable[Any]]:
    if not fill:
        return [c.row.values() for c in group]  # type: ignore[union-attr]
    texts = tuple(fill.values())
    return [(*c.row.values(), *texts) for c in group]  # type: ignore[union-attr]


class WriteChangesToPostgres(WriteChanges):
    """Applies :class:`~transforms.envelope.ChangeEvent` s to PostgreSQL; returns dead letters.

    Options as :class:`~transforms.sinks.sql.apply.WriteChanges`, and ``connections``: how
    many connections each sink instance writes on (1 or 2).  With 2, a batch is COPYed into
    staging while the one before it is merged, and the batches still commit in order.
    """

    def __init__(self, dsn: str, *, route: Route = None, max_batch_size: int = 5000,
                 max_attempts: int = 6, backoff_s: float = 0.5,
                 tombstone_retention: dt.timedelta | None = DEFAULT_TOMBSTONE_RETENTION,
                 stall_check_s: float | None = DEFAULT_STALL_CHECK_S,
                 reconnect_secs: float | None = None, connections: int = 2) -> None:
        super().__init__(route=route, max_batch_size=max_batch_size,
                         max_attempts=max_attempts, backoff_s=backoff_s,
                         tombstone_retention=tombstone_retention, stall_check_s=stall_check_s,
                         reconnect_secs=reconnect_secs)
        if connections not in (1, 2):
            raise ValueError(f'connections {connections!r} must be 1 or 2')
        self._dsn = _parse(dsn)
        self._connections = connections

    def _target(self) -> Target:
        return _PostgresTarget(self._dsn, self._route, self._connections)
