"""``ReadMySqlChanges``: every committed row change of MySQL/MariaDB tables, as ChangeEvents.

    events = pipeline | 'ReadChanges' >> ReadMySqlChanges(
        'mysql://cdc:secret@db/shop', tables=['shop.orders'], snapshot='initial',
        offset_store='gs://bucket/changebeam/shop.offset.json')

A splittable DoFn over the binlog position (``offsets.encode_position``: file sequence number
and offset in one integer): each round blocks on the binlog dump socket for up to
``round_secs`` (no busy wait), emits whole transactions (lists of events, claimed at the
transaction's first event), then defers the rest.  The position after the round's last
transaction is written to the offset store only in the bundle finalizer, i.e. after the fused
sink committed what the round emitted: a crash replays from the last stored transaction and
loses nothing (at-least-once; every event carries ``file``/``pos``/``row`` and sinks drop
replays by that position).

With ``snapshot='initial'`` the tables are first copied (op ``r``) inside a consistent
snapshot whose binlog position is where streaming starts: no gap, no overlap.  The offset
store records whether the snapshot reached the sink; a restart before that takes it again.

DDL statements of the captured databases come out as ``op: m`` events
(``message={'kind': 'ddl', 'sql': …}``) in binlog order; the rows after an ``ALTER TABLE`` carry
the new table map's schema, which ``EvolveSchema`` registers as a new version.  ``TRUNCATE``
is an ``op: t`` event of its table.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import sys
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import Timestamp

import transforms.coders  # noqa: F401  (registers the ChangeEvent coder)
from transforms.dead_letter import DEAD_LETTER, DeadLetter, WriteDeadLetters, parse_dead_letter_uri
from transforms.deadline import CHECK_ANSWER_S, STALL_CHECK_S, NoAnswer, stall_watch
from transforms.dsn import (
    MYSQL_PARAMS,
    display,
    mysql_connect_args,
    mysql_error_from_server,
    parse_dsn,
    redact,
)
from transforms.envelope import (
    MAX_EPOCH,
    ChangeEvent,
    Op,
    SourcePosition,
    TableSchema,
    TransactionInfo,
)
from transforms.sources.mysql import binlog
from transforms.sources.mysql.defaults import column_defaults
from transforms.sources.mysql.offsets import (
    Offset,
    OffsetStore,
    decode_position,
    encode_position,
    epoch_of,
)
from transforms.sources.mysql.snapshot import (
    SYSTEM_DATABASES,
    begin_snapshot,
    describe_table,
    read_snapshot,
    resolve_tables,
    split_table_name,
    text_conversions,
)
from transforms.sources.mysql.stream import (
    BinlogConfigError,
    BinlogConnectionLost,
    BinlogPosition,
    BinlogPurgedError,
    BinlogStream,
    ServerInfo,
    check_server,
)
from transforms.sources.mysql.types import ColumnInfo
from transforms.sources.progress import ProgressLine
from transforms.sources.stream_range import (
    END,
    RECONNECT_SECS,
    STOP,
    StreamReadFn,
    end_bundles_promptly,
    snapshot_broke,
)

__all__ = ['SNAPSHOT_MODES', 'ReadMySqlChanges', 'connect_args']

_LOG = logging.getLogger(__name__)

SNAPSHOT_MODES = ('initial', 'never', 'only')
_METRICS = 'ReadMySqlChanges'
_CONNECTOR = 'mysql'
_DSN_PARAMS = MYSQL_PARAMS - {'charset'}
_DDL_TABLE = TableSchema(schema='', table='_ddl', columns=())
"""The pseudo-table of DDL ``m`` events (no columns: schema stages pass them through)."""
_REMOTE_SAVE_SECS = 1.0  # an object store takes about one write per second per object
_CONTROL_ANSWER_S = 20  # seconds: a control query unanswered this long means a dead connection


def _socket_of(conn: Any) -> int | None:
    sock = getattr(conn, '_sock', None)  # PyMySQL's socket; None once closed
    return None if sock is None else sock.fileno()


def _pymysql() -> Any:
    try:
        import pymysql
    except ImportError as exc:
        raise ImportError("ReadMySqlChanges needs PyMySQL: pip install "
                          "'changebeam[mysql]'") from exc
    return pymysql


def connect_args(dsn: str) -> dict[str, Any]:
    """PyMySQL keyword arguments for a ``mysql://`` DSN (its own character set: the decoder
    expects utf8mb4); ValueError naming the redacted DSN."""
    return mysql_connect_args(dsn, _DSN_PARAMS)


@dataclasses.dataclass(frozen=True)
class _SourceConfig:
    """Everything the reading DoFn needs; picklable."""

    dsn: str
    databases: tuple[str, ...]
    tables: tuple[tuple[str, str], ...]
    snapshot: str
    max_idle_secs: float | None
    heartbeat_secs: float
    server_id: int
    server_id_explicit: bool
    offset_store: str
    offset_options: tuple[tuple[str, Any], ...]
    server_name: str
    round_secs: float
    batch_size: int
    progress: bool
    reconnect_secs: float = RECONNECT_SECS


# ---------------------------------------------------------------------------------------------
# Binlog events -> ChangeEvents (pure: no sockets, no Beam)

_EVENT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ChangeEvent)
                   if f.default is not dataclasses.MISSING}
_new = object.__new__


def _fast_event(op: Op, table: TableSchema, source: SourcePosition, before: Any, after: Any,
                ts_ms: int, transaction: TransactionInfo) -> ChangeEvent:
    # A frozen dataclass's __init__ sets each field through object.__setattr__; for the
    # hundreds of thousands of rows a bulk load produces, filling __dict__ directly is ~3x
    # cheaper.  Defaults come from the dataclass itself, so a new field cannot be missed.
    event = _new(ChangeEvent)
    state = event.__dict__
    state.update(_EVENT_DEFAULTS)
    state['op'] = op
    state['table'] = table
    state['source'] = source
    state['before'] = before
    state['after'] = after
    state['ts_ms'] = ts_ms
    state['transaction'] = transaction
    return event


def _with_row(template: SourcePosition, row: int) -> SourcePosition:
    source = _new(SourcePosition)
    state = source.__dict__
    state.update(template.__dict__)
    state['row'] = row
    return source


_NAME = r'(?:`(?:[^`]|``)+`|[A-Za-z0-9_$]+)'
_QUALIFIED = rf'(?P<name>{_NAME}(?:\s*\.\s*{_NAME})?)'
_TRUNCATE = re.compile(rf'^\s*TRUNCATE\s+(?:TABLE\s+)?{_QUALIFIED}\s*$', re.IGNORECASE)
_DDL_TARGET = re.compile(
    r'^\s*(?:/\*.*?\*/\s*)*(?:CREATE|ALTER|DROP|RENAME)\s+(?:OR\s+REPLACE\s+)?'
    r'(?:TEMPORARY\s+)?(?:ONLINE\s+|IGNORE\s+)*TABLE\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?'
    + _QUALIFIED, re.IGNORECASE | re.DOTALL)
_NEW_TABLE = re.compile(r'^\s*(?:/\*.*?\*/\s*)*(?:CREATE|DROP)\b', re.IGNORECASE | re.DOTALL)
_DDL_VERB = re.compile(r'^\s*(?:/\*.*?\*/\s*)*(CREATE|ALTER|DROP|RENAME)\b',
                       re.IGNORECASE | re.DOTALL)


def _split_sql_name(text: str, default_db: str) -> tuple[str, str]:
    parts = [p.strip() for p in re.findall(_NAME, text)]
    names = [p[1:-1].replace('``', '`') if p.startswith('`') else p for p in parts]
    if len(names) == 2:
        return names[0], names[1]
    return default_db, names[-1]


class _EventBuilder:
    """Turns the decoded events of one binlog stream into ChangeEvents.

    ``lookup(db, table)`` gives a table's current schema when a statement (TRUNCATE) names a
    table no row event described yet.  ``lookup_defaults(db, table, columns)`` gives the
    ``Column.default`` of columns a table gained (see ``defaults.column_defaults``); None: no
    defaults.
    """

    def __init__(self, server_name: str, captured: Callable[[str, str], bool],
                 databases: frozenset[str],
                 lookup: Callable[[str, str], TableSchema],
                 clock: Callable[[], float] = time.time,
                 lookup_defaults: Callable[[str, str, Sequence[ColumnInfo]],
                                           Mapping[str, str | None]] | None = None) -> None:
        self._server = server_name
        self._captured = captured
        self._databases = databases
        self._lookup = lookup
        self._lookup_defaults = lookup_defaults
        self._clock = clock
        self._schemas: dict[tuple[str, str], TableSchema] = {}
        # Per table: the default of each column it has now, as far as the stream knows it;
        # the table map's schema last seen and the one emitted for it (with the defaults);
        # the tables altered before the stream knew their columns.
        self._known: dict[tuple[str, str], dict[str, str | None]] = {}
        self._emitted: dict[tuple[str, str], tuple[TableSchema, TableSchema]] = {}
        self._altered: set[tuple[str, str]] = set()
        self._tx_id = ''
        self._total = 0
        self._orders: dict[str, int] = {}
        self.thread: int | None = None
        self.epoch: int | None = None  # SourcePosition.epoch: None until the source moves

    def begin(self, gtid: str | None, file: str, pos: int) -> None:
        """A transaction starts at ``file``/``pos`` (its GTID or first event)."""
        self._tx_id = gtid or f'{file}:{pos}'
        self._total = 0
        self._orders = {}
        self.thread = None

    def rows(self, event: binlog.Rows, file: str, pos: int, gtid: str | None
             ) -> list[ChangeEvent]:
        """One event per row of a ROWS event.  Raises ValueError for a table whose columns
        have no envelope representation."""
        table_map = event.table
        schema = self._with_defaults(table_map)
        self._schemas[table_map.db, table_map.table] = schema
        template = SourcePosition(
            connector=_CONNECTOR, name=self._server, db=table_map.db, schema=table_map.db,
            table=table_map.table, ts_ms=event.timestamp * 1000, file=file, pos=pos, row=0,
            gtid=gtid, server_id=event.server_id, thread=self.thread, epoch=self.epoch)
        now_ms = int(self._clock() * 1000)
        op = event.op
        tx_id = self._tx_id
        total = self._total
        order = self._orders.get(schema.name, 0)
        out = []
        for index, row in enumerate(event.rows):
            total += 1
            order += 1
            source = _with_row(template, index) if index else template
            if op is Op.UPDATE:
                before, after = row
            elif op is Op.DELETE:
                before, after = row, None
            else:
                before, after = None, row
            out.append(_fast_event(op, schema, source, before, after, now_ms,
                                   TransactionInfo(tx_id, total, order)))
        self._total = total
        self._orders[schema.name] = order
        return out

    def baseline(self, table: TableSchema) -> None:
        """The snapshot read ``table`` with these columns: a column the stream shows later
        was added since."""
        self._known.setdefault((table.schema, table.table),
                               {c.name: None for c in table.columns})

    def _with_defaults(self, table_map: binlog.TableMap) -> TableSchema:
        """The table map's schema, its columns added since the stream (or the snapshot) first
        saw the table carrying the value rows older than them read (``Column.default``),
        which the binlog never shows: MariaDB and MySQL fill existing rows without row events.

        The catalog answers as it is now, not as of the change, so it is asked only for the
        columns the stream sees for the first time; a column it knows keeps the value it came
        with, through any later version.  A table first seen in rows written after an ALTER
        of it (a restart, ``--snapshot never``) may have any column added: all are looked up,
        and the sinks use a default only for a column they add."""
        schema = table_map.schema
        if self._lookup_defaults is None:
            return schema
        name = (table_map.db, table_map.table)
        emitted = self._emitted.get(name)
        if emitted is not None and emitted[0] is schema:
            return emitted[1]
        previous = self._known.get(name)
        if previous is None:
            previous = {} if name in self._altered else {c.name: None for c in schema.columns}
        new = [c for c in table_map.columns if c.name not in previous and not c.hidden]
        looked = self._lookup_defaults(table_map.db, table_map.table, new) if new else {}
        # A dropped column is forgotten: added again, its rows read the new DEFAULT.
        known = self._known[name] = {
            c.name: previous[c.name] if c.name in previous else looked.get(c.name)
            for c in schema.columns}
        self._altered.discard(name)
        columns = tuple(c if known[c.name] is None
                        else dataclasses.replace(c, default=known[c.name])
                        for c in schema.columns)
        out = dataclasses.replace(schema, columns=columns) \
            if any(c.default is not None for c in columns) else schema
        self._emitted[name] = (schema, out)
        return out

    def statement(self, event: binlog.Query, file: str, pos: int, gtid: str | None
                  ) -> list[ChangeEvent]:
        """A DDL statement: an ``m`` event (``t`` for TRUNCATE of a captured table), or
        nothing for statements outside the captured databases."""
        sql = event.sql
        now_ms = int(self._clock() * 1000)
        truncate = _TRUNCATE.match(sql)
        if truncate:
            db, table = _split_sql_name(truncate['name'], event.db)
            if not self._captured(db, table):
                return []
            schema = self._schemas.get((db, table)) or self._lookup(db, table)
            source = SourcePosition(
                connector=_CONNECTOR, name=self._server, db=db, schema=db, table=table,
                ts_ms=event.timestamp * 1000, file=file, pos=pos, row=0, gtid=gtid,
                server_id=event.server_id, thread=event.thread_id, epoch=self.epoch)
            return [ChangeEvent(op=Op.TRUNCATE, table=schema, source=source, ts_ms=now_ms,
                                transaction=TransactionInfo(self._tx_id, 1, 1))]
        if not _DDL_VERB.match(sql):
            return []  # FLUSH, GRANT, SAVEPOINT …: nothing a consumer of row changes needs
        target = _DDL_TARGET.match(sql)
        db, table = _split_sql_name(target['name'], event.db) if target else (event.db, '')
        if not (self._captured(db, table) if table else db in self._databases):
            return []
        self._schemas.pop((db, table), None)
        if _NEW_TABLE.match(sql):
            # Its columns are those of another table now: none was added to older rows.
            self._known.pop((db, table), None)
            self._emitted.pop((db, table), None)
            self._altered.discard((db, table))
        elif table and (db, table) not in self._known:
            self._altered.add((db, table))
        source = SourcePosition(
            connector=_CONNECTOR, name=self._server, db=db, schema=db, table=table,
            ts_ms=event.timestamp * 1000, file=file, pos=pos, row=0, gtid=gtid,
            server_id=event.server_id, thread=event.thread_id, epoch=self.epoch)
        return [ChangeEvent(op=Op.MESSAGE, table=_DDL_TABLE, source=source, ts_ms=now_ms,
                            message={'kind': 'ddl', 'sql': sql, 'db': db,
                                     'table': table or None})]


# ---------------------------------------------------------------------------------------------
# The splittable DoFn

def _check_monitor_privilege(conn: Any, info: ServerInfo) -> None:
    """SHOW MASTER STATUS / SHOW BINARY LOGS need BINLOG MONITOR (MariaDB 10.5+) or
    REPLICATION CLIENT (MySQL); check_server covers REPLICATION SLAVE."""
    with conn.cursor() as cur:
        cur.execute('SHOW GRANTS')
        grants = ' '.join(str(row[0]) for row in cur.fetchall()).upper()
        cur.execute('SELECT CURRENT_USER()')
        user = cur.fetchone()[0]
    wanted = 'BINLOG MONITOR' if info.mariadb else 'REPLICATION CLIENT'
    if any(g in grants for g in ('ALL PRIVILEGES ON *.*', 'SUPER', 'BINLOG MONITOR',
                                 'REPLICATION CLIENT')) or 'GRANT `' in grants:
        return  # (a role may carry it: the statements themselves will tell)
    raise BinlogConfigError(f'{user} lacks the {wanted} privilege (needed to find binlog '
                            f'positions): GRANT {wanted} ON *.* TO {user}')


_CHECKPOINT_QUERIES = frozenset({'COMMIT', 'ROLLBACK'})


@beam.DoFn.unbounded_per_element()
class _ReadBinlogFn(StreamReadFn):
    """Reads one binlog dump; emits lists of ChangeEvents (a transaction or a chunk of one)."""

    def __init__(self, config: _SourceConfig) -> None:
        self._config = config
        self.reconnect_secs = config.reconnect_secs

    def setup(self) -> None:
        config = self._config
        self._control: Any = None
        self._stream: BinlogStream | None = None
        self._info: ServerInfo | None = None
        self._lock = threading.Lock()
        self._changes = Metrics.counter(_METRICS, 'changes')
        self._lag = Metrics.distribution(_METRICS, 'lag_ms')
        self._dead = Metrics.counter(_METRICS, 'dead_letters')
        self._progress = ProgressLine(config.progress)
        self._store = OffsetStore(config.offset_store, dict(config.offset_options))
        self._remote_store = '://' in config.offset_store
        self._emitted = 0
        self._confirmed_changes = 0
        self._last_lag: float | None = None
        self._snapshot_state = 'done'
        self._pending: Offset | None = None
        self._listed: tuple[str, ...] | None = None  # the --tables captured, for the offset
        self._saved: Offset | None = None
        self._saved_at = 0.0

    # -- lifecycle -----------------------------------------------------------------------------

    def _connect(self, **extra: Any) -> Any:
        return _pymysql().connect(autocommit=True, **{**extra, **connect_args(self._config.dsn)})

    def _open(self) -> None:
        config = self._config
        # Unlike the dump (whose silence the server's heartbeats reveal), the control
        # connection would wait for ever on a server that stopped answering: the DSN's
        # read_timeout/write_timeout, else _CONTROL_ANSWER_S.
        self._control = self._connect(read_timeout=_CONTROL_ANSWER_S,
                                      write_timeout=_CONTROL_ANSWER_S)
        self._info = check_server(self._control)
        _check_monitor_privilege(self._control, self._info)
        wanted_tables = frozenset(config.tables)
        databases = frozenset(config.databases)
        if wanted_tables:
            def captured(db: str, table: str) -> bool:
                return (db, table) in wanted_tables
        else:
            def captured(db: str, table: str) -> bool:
                return db in databases
        self._captured = captured
        self._builder = _EventBuilder(config.server_name, captured,
                                      databases | {db for db, _ in wanted_tables},
                                      self._lookup_table, lookup_defaults=self._lookup_defaults)
        self._resync = False
        self._idle_since = time.monotonic()
        self._watermark = Timestamp(0)
        self._resume: BinlogPosition | None = None  # the last transaction boundary read
        # A transaction claimed before the connection broke inside it: where it begins, so
        # the reconnected dump reads it again (its claim notwithstanding) instead of skipping it.
        self._replay_from: int | None = None
        self._epoch = 0  # the source's moves to another server (SourcePosition.epoch)
        self._where = ''

    def _lookup_table(self, db: str, table: str) -> TableSchema:
        try:
            with self._lock:
                return describe_table(self._control, db, table).schema
        except _pymysql().err.OperationalError as exc:
            if not self._transient(exc):
                raise
            # Not the statement's fault: read it again once reconnected (never dead-letter it).
            raise BinlogConnectionLost(f'the control connection broke: {exc}') from exc

    def _lookup_defaults(self, db: str, table: str, columns: Sequence[ColumnInfo]
                         ) -> dict[str, str | None]:
        assert self._info is not None
        try:
            with self._lock:
                return column_defaults(self._control, db, table, columns,
                                       mariadb=self._info.mariadb)
        except _pymysql().err.OperationalError as exc:
            if not self._transient(exc):
                raise
            raise BinlogConnectionLost(f'the control connection broke: {exc}') from exc

    def teardown(self) -> None:
        if getattr(self, '_pending', None) is not None:
            try:
                self._save_pending(force=True)  # set only by finalizers: committed downstream
            except Exception:  # teardown must not hide the error that ended the pipeline
                _LOG.warning('could not write the last offset', exc_info=True)
        stream = getattr(self, '_stream', None)
        if stream is not None:
            stream.close()
            self._stream = None
        if getattr(self, '_control', None) is not None:
            try:
                self._control.close()
            except Exception:  # already broken: nothing to release
                pass
            self._control = None
        if self._config.progress:
            sys.stderr.write('\n')

    # -- the splittable process ----------------------------------------------------------------

    def _begin(self, start: int, tracker: Any, finalizer: Any) -> Iterator[Any]:
        """First round: tables, the offset store and (maybe) the snapshot."""
        config = self._config
        assert self._info is not None
        with self._lock:
            tables = resolve_tables(self._control, config.databases, config.tables)
        if config.snapshot == 'only':
            yield from self._snapshot(tables, tracker, finalizer, record=False)
            return
        names = tuple(f'{db}.{table}' for db, table in tables)
        listed = self._listed = names if config.tables else None  # None: every table
        offset = self._store.load()
        added: list[tuple[str, str]] = []
        if start == 0 and offset is not None and offset.tables is not None \
                and offset.snapshot != 'pending':
            added = [t for t, name in zip(tables, names, strict=True) if name not in offset.tables]
            if added:
                # Not in the offsets written until their copy reached the sink (a restart
                # before that copies them again).
                self._listed = tuple(name for name in names if name in offset.tables)
        if offset is not None:
            moved = offset.server_id is not None and offset.server_id != self._info.server_id
            self._set_epoch(offset.epoch + moved)
        elif start > 0:
            self._set_epoch(epoch_of(start))
        position: BinlogPosition | None
        if start > 0:  # a residual handed to a new instance: resume, never snapshot
            position = self._position_of(offset) if offset else self._file_start(start)
            self._snapshot_state = offset.snapshot if offset else 'done'
        elif offset is not None and (offset.snapshot != 'pending' or config.snapshot == 'never'):
            position = self._position_of(offset)
            self._snapshot_state = 'done' if offset.snapshot == 'pending' else offset.snapshot
            _LOG.info('resuming at %s (offset store %s)', position, self._store.uri)
            shown = ', '.join(f'{db}.{table}' for db, table in added)
            if added and config.snapshot == 'initial':
                # Copied at the binlog position of now, while the stream resumes earlier: the
                # changes in between arrive twice, in order by position.
                _LOG.info('taking a snapshot of table(s) %s, added to --tables', shown)
                yield from self._snapshot(added, tracker, finalizer, record=False,
                                          claim=False, committed=lambda: self._list(listed))
            elif added:
                _LOG.warning(
                    'table(s) %s added to --tables: their changes stream from now on, but not '
                    'the rows they already hold (--snapshot never); to copy those, run once '
                    'with --snapshot only --tables %s and the same --sink (it may run while '
                    'this pipeline streams)', shown, shown.replace(', ', ','))
                self._listed = listed
        elif config.snapshot == 'initial':
            if offset is not None:
                _LOG.warning('the snapshot recorded in %s never reached the sink: taking the '
                             'snapshot again', self._store.uri)
            position = yield from self._snapshot(tables, tracker, finalizer, record=True)
            if position is None:
                return
        else:
            with self._lock:
                position = _current_position(self._control, self._info)
            self._snapshot_state = 'skipped'
            # Recorded before anything streams: a restart must not start at a later "now".
            self._store.save(Offset(position.file, position.pos, position.gtid, 'skipped',
                                    self._info.server_id, self._epoch, self._listed))
        self._start_stream(position)

    def _position_of(self, offset: Offset) -> BinlogPosition:
        assert self._info is not None
        if offset.server_id is not None and offset.server_id != self._info.server_id:
            if offset.gtid:
                _LOG.warning('the offset was written against server id %s, this is %s: '
                             'resuming by GTID %s', offset.server_id, self._info.server_id,
                             offset.gtid)
                return BinlogPosition(gtid=offset.gtid)
            _LOG.warning('the offset was written against server id %s, this is %s, and has '
                         'no GTID: resuming at %s:%s', offset.server_id,
                         self._info.server_id, offset.file, offset.pos)
        elif offset.file:
            self._check_history(offset)
        return BinlogPosition(offset.file, offset.pos, offset.gtid)

    def _check_history(self, offset: Offset) -> None:
        """Refuse an offset past the end of this server's binlogs: its history started over
        (RESET MASTER, a server restored from a backup), so the stored GTID and file/pos name
        other transactions now, and resuming there skipped the first ones written since,
        without a word.  Purging only removes older files, and binlogs only grow."""
        assert offset.file is not None and self._info is not None
        with self._lock, self._control.cursor() as cur:
            cur.execute('SHOW BINARY LOGS')
            sizes = {str(row[0]): int(row[1]) for row in cur.fetchall()}
            newest = max(sizes, key=_file_number, default=None)
            if newest is None:
                return
            if offset.file not in sizes:  # purged (older: the dump says so), or newer than any
                changed = _file_number(offset.file) > _file_number(newest)
                seen = f'the newest binlog is {newest}'
            elif offset.pos > sizes[offset.file]:
                changed, seen = True, f'{offset.file} has {sizes[offset.file]} bytes'
            elif self._info.mariadb and offset.gtid:
                # The GTIDs before that point, as the binlogs now tell: the stored ones if the
                # history is the one read.
                cur.execute('SELECT BINLOG_GTID_POS(%s, %s)', (offset.file, offset.pos))
                row = cur.fetchone()
                at = str(row[0]) if row and row[0] is not None else None
                changed = at is None or _gtid_set(at) != _gtid_set(offset.gtid)
                seen = f'the binlogs now have GTID {at or "none"} there'
            else:
                changed = False
        if changed:
            raise BinlogConfigError(
                f'the offset store {self._store.uri} holds {offset.file}:{offset.pos} after GTID '
                f'{offset.gtid or "-"}, but {seen}: the server\'s binlog history started over '
                '(RESET MASTER, or a server restored from a backup), so the stored position '
                'names other transactions now and resuming there would skip changes; delete '
                'the offset store and restart with --snapshot initial')

    def _file_start(self, position: int) -> BinlogPosition:
        index, _ = decode_position(position)
        with self._lock, self._control.cursor() as cur:
            cur.execute('SHOW BINARY LOGS')
            names = [str(row[0]) for row in cur.fetchall()]
        for name in names:
            if name.rsplit('.', 1)[-1].isdigit() and int(name.rsplit('.', 1)[-1]) == index:
                return BinlogPosition(name, 4)
        raise self._purged(f'binlog file number {index} is no longer on the server')

    def _start_stream(self, position: BinlogPosition) -> None:
        config = self._config
        assert self._info is not None
        server_id = config.server_id
        if server_id == self._info.server_id:
            if config.server_id_explicit:
                raise BinlogConfigError(f'server_id {server_id} is the source server\'s own '
                                        'id; pick another')
            server_id += 1
        stream = BinlogStream(self._connect(), server_id=server_id,
                              include=self._captured)
        try:
            stream.start(position)
        except BinlogPurgedError as exc:
            stream.close()
            raise self._purged(str(exc)) from None
        self._stream = stream
        self._resume = position

    def _reconnect(self, start: int) -> None:
        """Reopens the dump at the last transaction boundary read; what the restriction no
        longer covers is skipped."""
        assert self._stream is not None
        self._stream.close()  # kept until a new one streams: the source has begun
        with self._lock:
            self._control.ping(reconnect=True)  # a server restart broke it too
            info = check_server(self._control)
        assert self._info is not None
        if info.server_id != self._info.server_id:
            self._moved_to(info)
        position = self._resume or self._file_start(start)
        _LOG.info('reconnecting the binlog dump at %s', position)
        self._start_stream(position)
        self._resync = False

    def _moved_to(self, info: ServerInfo) -> None:
        """The connection came back to another server (a failover behind the same address):
        resume by GTID, in a new epoch, so that its positions sort after the old server's."""
        assert self._info is not None
        old = self._info.server_id
        gtid = self._resume.gtid if self._resume is not None else None
        if not gtid:
            raise BinlogConfigError(
                f'the source is now server id {info.server_id}, not {old} (a failover?), and '
                'without GTIDs its binlog positions say nothing about where the old server '
                f'stopped; enable GTIDs, or delete the offset store {self._store.uri} and '
                'restart with --snapshot initial')
        self._set_epoch(self._epoch + 1)
        _LOG.warning('the source is now server id %s, not %s (a failover?): resuming by GTID '
                     '%s; its positions sort after the old server\'s (epoch %d)',
                     info.server_id, old, gtid, self._epoch)
        self._info = info
        self._resume = BinlogPosition(gtid=gtid)
        self._replay_from = None  # the new epoch's positions are all past the restriction

    def _set_epoch(self, epoch: int) -> None:
        if epoch > MAX_EPOCH:
            raise BinlogConfigError(
                f'the source has moved between servers {epoch} times, more than positions '
                f'can count ({MAX_EPOCH}); delete the offset store {self._store.uri} and '
                'restart with --snapshot initial')
        self._epoch = epoch
        self._builder.epoch = epoch or None

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, BinlogConnectionLost):
            return True
        error = _pymysql().err.OperationalError
        # Not: access denied (1044, 1045), which waiting does not mend.
        return isinstance(exc, error) and bool(exc.args) and exc.args[0] not in (1044, 1045)

    def _purged(self, detail: str) -> BinlogPurgedError:
        return BinlogPurgedError(
            f'the stored binlog position is no longer on the server ({detail.split(";")[0]}); '
            f'to recover, delete the offset store {self._store.uri} and restart with '
            '--snapshot initial')

    def _list(self, names: tuple[str, ...] | None) -> None:
        self._listed = names

    def _snapshot(self, tables: Sequence[tuple[str, str]], tracker: Any, finalizer: Any,
                  record: bool, claim: bool = True,
                  committed: Callable[[], None] | None = None,
                  ) -> Generator[Any, None, BinlogPosition | None]:
        """Emits the tables' rows; with ``record`` the offset store tracks the snapshot, and
        ``committed()`` is called once the sink committed them.  Without ``claim`` the
        position is not claimed: tables added to a stream that resumes at an earlier one."""
        config = self._config
        assert self._info is not None
        conn = self._connect(conv=text_conversions())
        # The rows may take hours to read, or wait for a lock: no read timeout fits; but a
        # server that hangs with the connection open would leave them waiting for ever.
        try:
            with stall_watch(lambda: _socket_of(conn), STALL_CHECK_S, self._check_server,
                             'the snapshot'):
                position = begin_snapshot(conn, tables)
                assert position.file is not None
                if claim and not tracker.try_claim(
                        encode_position(position.file, position.pos, self._epoch) - 1):
                    return None
                if record:
                    self._store.save(Offset(position.file, position.pos, position.gtid,
                                            'pending', self._info.server_id, self._epoch,
                                            self._listed))
                rows = 0
                for batch in read_snapshot(conn, tables, position,
                                           server_name=config.server_name,
                                           server_id=self._info.server_id, epoch=self._epoch,
                                           batch_size=config.batch_size):
                    for event in batch:
                        if event.op is Op.READ:
                            rows += 1
                        else:  # a table's marker (snapshot_complete)
                            self._builder.baseline(event.table)
                    yield from self._emit(batch)
                    self._progress.update(self._emitted, self._confirmed_changes, None,
                                          f'snapshot at {position.file}:{position.pos}')
        except _pymysql().err.OperationalError as exc:
            if mysql_error_from_server(exc):
                raise
            raise snapshot_broke(exc) from exc
        finally:
            conn.close()
        _LOG.info('snapshot of %d table(s) at %s:%s: %d rows', len(tables), position.file,
                  position.pos, rows)
        self._idle_since = time.monotonic()
        if record:
            finalizer.register(lambda: self._snapshot_committed(position, rows))
        if committed is not None:
            finalizer.register(committed)
        return position

    def _check_server(self, waited: float) -> None:
        """A stall watch's check: a new connection must get an answer within
        ``CHECK_ANSWER_S``."""
        try:
            conn = self._connect(connect_timeout=CHECK_ANSWER_S, read_timeout=CHECK_ANSWER_S,
                                 write_timeout=CHECK_ANSWER_S)
            try:
                conn.ping(reconnect=False)
            finally:
                conn.close()
        except Exception as exc:
            if mysql_error_from_server(exc):  # it answers
                _LOG.info('a check from a new connection got an error from the server: %s',
                          exc)
                return
            raise NoAnswer(f'nor did a new connection within {CHECK_ANSWER_S:g} s '
                           f'({" ".join(str(exc).split())})') from exc

    def _snapshot_committed(self, position: BinlogPosition, rows: int) -> None:
        assert self._info is not None
        self._confirmed_changes += rows
        self._snapshot_state = 'done'
        self._pending = Offset(position.file, position.pos, position.gtid, 'done',
                               self._info.server_id, self._epoch, self._listed)
        self._save_pending(force=True)

    def _stream_round(self, tracker: Any, finalizer: Any, watermark: Any) -> Iterator[Any]:
        config = self._config
        stream = self._stream
        assert stream is not None
        builder = self._builder
        start = tracker.current_restriction().start
        deadline = time.monotonic() + config.round_secs
        emitted_before = self._emitted
        epoch = self._epoch
        batch: list[ChangeEvent] = []
        letters: list[DeadLetter] = []
        whole = 0  # batch[:whole] holds whole transactions
        confirm: BinlogPosition | None = None
        commit_ts: int | None = None
        in_tx = False
        skipping = False  # replayed by the server after a reconnect: emitted before
        file, file_base = '', 0
        position = 0
        Rows, Gtid, Query = binlog.Rows, binlog.Gtid, binlog.Query
        try:  # a lost connection (the dump's, or the control's during a lookup) ends the round
            while True:
                timeout = 5.0 if in_tx else deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    item = stream.read(timeout)
                except BinlogPurgedError as exc:
                    raise self._purged(str(exc)) from None
                if item is None:
                    if in_tx:
                        continue  # a transaction is never cut: wait for its remaining events
                    break
                event = item.event
                kind = type(event)
                if kind is Rows:
                    if not skipping:
                        try:
                            batch.extend(builder.rows(event, item.file, item.pos, item.gtid))
                        except ValueError as exc:
                            letters.append(DeadLetter.from_exception(
                                'ConvertRow', exc, _rows_payload(event),
                                source=f'{item.file}:{item.pos}'))
                        if len(batch) >= config.batch_size:
                            yield from self._emit(batch)
                            batch = []
                            whole = 0
                    continue
                if kind is Gtid or (kind is Query and not in_tx):
                    # The transaction's first event: claim it (or skip a replay).
                    if item.file is not file:
                        file, file_base = item.file, encode_position(item.file, 0, epoch)
                    position = file_base | item.pos
                    if position < start:
                        # Emitted before a reconnect, unless the connection broke inside it.
                        replay_from = self._replay_from
                        skipping = replay_from is None or position < replay_from
                    elif tracker.try_claim(position):
                        skipping = False
                        self._replay_from = None
                    else:
                        self._resync = True  # this transaction is the residual's: reread it there
                        break
                    in_tx = True
                    builder.begin(item.gtid, item.file, item.pos)
                if kind is Query:
                    if event.sql == 'BEGIN':
                        builder.thread = event.thread_id
                    elif item.checkpoint is not None and event.sql not in _CHECKPOINT_QUERIES \
                            and not skipping:
                        try:
                            batch.extend(builder.statement(event, item.file, item.pos, item.gtid))
                        except BinlogConnectionLost:
                            raise
                        except Exception as exc:  # e.g. TRUNCATE of a table dropped since
                            letters.append(DeadLetter.from_exception(
                                'DecodeStatement', exc, event.sql,
                                source=f'{item.file}:{item.pos}'))
                elif isinstance(event, binlog.BinlogDecodeError):
                    letters.append(DeadLetter.from_exception(
                        'DecodeBinlog', event, event.raw, source=f'{item.file}:{item.pos}'))
                if item.checkpoint is not None:
                    self._resume = item.checkpoint
                    if not skipping:
                        # Several small transactions travel in one list: Beam's cost is per
                        # element, and what the round emits is committed as a whole anyway.
                        if len(batch) >= config.batch_size:
                            yield from self._emit(batch)
                            batch = []
                        whole = len(batch)
                        confirm = item.checkpoint
                        commit_ts = getattr(event, 'timestamp', None)
                    in_tx = skipping = False
                    if time.monotonic() >= deadline:
                        break
        except BinlogConnectionLost as exc:
            if in_tx and not skipping:
                # What was read of this transaction and not emitted is dropped; the next
                # round reads it whole again (what a full batch emitted of it, twice).
                del batch[whole:]
                self._replay_from = position
                _LOG.info('the connection broke inside the transaction at %s:%d: reading '
                          'it again from there', file, decode_position(position)[1])
            self._connection_lost(exc)
        if batch:  # whole transactions only: the loop ends between transactions
            yield from self._emit(batch)
        if letters:
            self._dead.inc(len(letters))
            for letter in letters:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
        now = time.monotonic()
        changed = self._emitted > emitted_before
        if changed:
            self._idle_since = now
        if commit_ts is not None:
            lag = time.time() * 1000 - commit_ts * 1000
            if changed:
                self._lag.update(int(lag))
                self._last_lag = lag
            self._advance_watermark(watermark, Timestamp(commit_ts))
        elif not in_tx:
            # Caught up: nothing committed before now can still arrive (no lag to show).
            self._advance_watermark(watermark, Timestamp.now() - 1)
            self._last_lag = 0.0
        idle = now - self._idle_since
        stopping = STOP.is_set() or (config.max_idle_secs is not None
                                     and idle >= config.max_idle_secs)
        if confirm is not None or stopping or self._pending != self._saved:
            emitted = self._emitted
            server_id = self._info.server_id if self._info is not None else None
            finalizer.register(lambda c=confirm, n=emitted, d=changed, f=stopping,
                               at=(server_id, epoch): self._confirm(c, n, d, f, at))
        if confirm is not None:
            self._where = f'{confirm.file}:{confirm.pos}'
        self._progress.update(self._emitted, self._confirmed_changes, self._last_lag,
                              f'binlog at {self._where}')
        if stopping:
            if STOP.is_set():
                _LOG.info('stop requested: stopping after %d change(s)', self._emitted)
            else:
                _LOG.info('no change for %.1f s: stopping', idle)
            tracker.try_claim(END - 1)
            return
        tracker.defer_remainder()

    def _emit(self, batch: list[ChangeEvent]) -> Iterator[list[ChangeEvent]]:
        self._emitted += len(batch)
        self._changes.inc(len(batch))
        yield batch

    def _advance_watermark(self, estimator: Any, value: Timestamp) -> None:
        if value > self._watermark:
            self._watermark = value
            estimator.set_watermark(value)

    def _confirm(self, checkpoint: BinlogPosition | None, emitted: int, delivered: bool,
                 force: bool, server: tuple[int | None, int]) -> None:
        """Bundle finalizer: the sink committed everything up to ``checkpoint`` (read from
        ``server``: its id and the epoch)."""
        self._confirmed_changes = emitted
        if checkpoint is not None:
            self._pending = Offset(checkpoint.file, checkpoint.pos, checkpoint.gtid,
                                   self._snapshot_state, *server, self._listed)
        self._save_pending(force, delivered)

    def _save_pending(self, force: bool = False, delivered: bool = True) -> None:
        # A round that delivered changes is recorded at once (a local file) or within a
        # second (an object store takes about one write per second per object).  A position
        # that only moved past other databases' transactions is recorded every
        # heartbeat_secs (0: never), so a restart does not reread them all.
        pending = self._pending
        if pending is None or pending == self._saved:
            return
        now = time.monotonic()
        if not force:
            heartbeat = self._config.heartbeat_secs
            if not delivered and not heartbeat:
                return
            interval = 0.0 if delivered else heartbeat
            if self._remote_store:
                interval = max(interval, _REMOTE_SAVE_SECS)
            if now - self._saved_at < interval:
                return
        self._store.save(pending)
        self._saved, self._saved_at = pending, now


def _gtid_set(text: str) -> frozenset[str]:
    """A MariaDB GTID position (``0-1-22,1-2-5``) as a set, whatever the order."""
    return frozenset(part.strip() for part in text.split(',') if part.strip())


def _file_number(name: str) -> int:
    """The number of a binlog file's name (``bin.000012`` → 12)."""
    tail = name.rsplit('.', 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _current_position(conn: Any, info: ServerInfo) -> BinlogPosition:
    """The server's binlog end (where streaming from now on starts)."""
    with conn.cursor() as cur:
        cur.execute('SHOW MASTER STATUS')
        row = cur.fetchone()
        if not row:
            raise BinlogConfigError('SHOW MASTER STATUS returned nothing: is log_bin on?')
        file, pos = str(row[0]), int(row[1])
        if info.mariadb:
            cur.execute('SELECT BINLOG_GTID_POS(%s, %s)', (file, pos))
        else:
            cur.execute('SELECT @@GLOBAL.gtid_executed')
        gtid = cur.fetchone()[0]
    return BinlogPosition(file, pos, str(gtid) if gtid else None)


def _rows_payload(event: binlog.Rows) -> dict[str, Any]:
    return {'table': f'{event.table.db}.{event.table.table}', 'op': event.op.value,
            'columns': [c.name for c in event.table.columns], 'rows': repr(event.rows)}


def _unbatch(batch: list[ChangeEvent]) -> list[ChangeEvent]:
    return batch


def _default_server_id(*parts: str) -> int:
    # Stable across restarts of the same pipeline (a restarted dump then replaces its dead
    # predecessor's connection on the server) and unlikely to collide with real replicas,
    # which are usually numbered from 1.
    return 0x40000000 + (zlib.crc32('\0'.join(parts).encode()) & 0x3fffffff)


class ReadMySqlChanges(beam.PTransform):
    """Reads committed row changes of MySQL/MariaDB tables from the binlog.

    Returns a PCollection of :class:`~transforms.envelope.ChangeEvent`.  ``tables`` are
    ``db.table`` (or ``table`` in the DSN's database); none: every table of the DSN's
    database.  ``offset_store`` (a file path, ``gs://…`` or ``s3://…``) keeps the resume
    position; ``server_id`` is the replica id the binlog dump registers with (unique among
    the server's replicas; default: derived from the DSN and the offset store).  Records that
    cannot be decoded go to ``dead_letter`` (``jsonl:DIR``).  With ``batched`` the elements
    are lists of events in order (whole transactions), as ``EvolveSchema(batched=True)`` and
    the sinks take them.
    """

    def __init__(self, dsn: str, *, tables: Sequence[str] = (), snapshot: str = 'initial',
                 max_idle_secs: float | None = None, heartbeat_secs: float = 10.0,
                 server_id: int | None = None, offset_store: str | None = None,
                 server_name: str | None = None, dead_letter: str = 'jsonl:dead-letters',
                 round_secs: float = 0.2, batch_size: int = 500, progress: bool = False,
                 offset_options: Mapping[str, Any] | None = None,
                 reconnect_secs: float = RECONNECT_SECS, batched: bool = False) -> None:
        super().__init__()
        parsed = parse_dsn(dsn, option='dsn')
        if parsed.kind != 'mysql':
            raise ValueError(f'dsn {display(dsn)!r} is not a mysql:// DSN')
        connect_args(dsn)  # unknown parameters fail here, not on a worker
        if snapshot not in SNAPSHOT_MODES:
            raise ValueError(f'snapshot {snapshot!r} must be one of {", ".join(SNAPSHOT_MODES)}')
        if max_idle_secs is not None and not max_idle_secs > 0:
            raise ValueError(f'max_idle_secs {max_idle_secs!r} must be more than zero')
        if not heartbeat_secs >= 0:
            raise ValueError(f'heartbeat_secs {heartbeat_secs!r} must be zero or more')
        if not round_secs > 0 or batch_size <= 0:
            raise ValueError('round_secs and batch_size must be more than zero')
        if not reconnect_secs >= 0:
            raise ValueError(f'reconnect_secs {reconnect_secs!r} must not be negative')
        if server_id is not None and not 0 < server_id < 2 ** 32:
            raise ValueError(f'server_id {server_id} must be in 1..4294967295 and unique '
                             'among the server\'s replicas')
        # Named twice (t1,DB.t1): copied twice, every row a duplicate.
        names = tuple(dict.fromkeys(split_table_name(name, parsed.database) for name in tables))
        system = [f'{db}.{table}' for db, table in names if db.lower() in SYSTEM_DATABASES]
        if system:
            raise ValueError(f'tables {", ".join(system)} are in a system database; '
                             'capture application tables')
        if not names and not parsed.database:
            raise ValueError(f'dsn {display(dsn)!r} names no database: name one '
                             '(mysql://USER@HOST/DB) or pass tables as db.table')
        if offset_store is None:
            if snapshot != 'only':
                raise ValueError('offset_store is required: a file path, gs://… or s3://… '
                                 'where the source records the position the sink reached')
            offset_store = 'offsets.json'  # never written under snapshot='only'
        OffsetStore(offset_store)  # validates the URI
        parse_dead_letter_uri(dead_letter)
        self._config = _SourceConfig(
            dsn=dsn, databases=() if names else (parsed.database,), tables=names,
            snapshot=snapshot, max_idle_secs=max_idle_secs, heartbeat_secs=heartbeat_secs,
            server_id=server_id or _default_server_id(redact(dsn), offset_store),
            server_id_explicit=server_id is not None, offset_store=offset_store,
            offset_options=tuple(sorted((offset_options or {}).items())),
            server_name=server_name or parsed.database or 'mysql', round_secs=round_secs,
            batch_size=batch_size, progress=progress, reconnect_secs=reconnect_secs)
        self._dead_letter = dead_letter
        self._batched = batched

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        end_bundles_promptly()  # else every round waits ~20 ms for Beam's sampler thread
        read = (pbegin
                | 'Start' >> beam.Impulse()
                | 'ReadBinlog' >> beam.ParDo(_ReadBinlogFn(self._config))
                .with_output_types(list[ChangeEvent]).with_outputs(DEAD_LETTER, main='changes'))
        _ = read[DEAD_LETTER] | 'WriteDeadLetters' >> WriteDeadLetters(self._dead_letter)
        if self._batched:
            return read.changes
        return read.changes | 'Unbatch' >> beam.FlatMap(_unbatch).with_output_types(
            ChangeEvent)
