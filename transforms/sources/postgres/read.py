"""``ReadPostgresChanges``: every committed row change of PostgreSQL tables, as ChangeEvents.

    events = pipeline | 'ReadChanges' >> ReadPostgresChanges(
        'postgresql://cdc@db/shop', tables=['public.orders'], snapshot='initial')

A splittable DoFn over the LSN: each round blocks on the replication socket for up to
``round_secs`` (no busy wait: an idle pipeline sleeps in ``select``), emits whole transactions,
then defers the rest.  The round's last commit LSN is confirmed to the slot only in the bundle
finalizer, i.e. after the fused sink committed what the round emitted: a crash replays from the
last confirmed transaction and loses nothing (at-least-once; sinks dedup by position).

A broken replication connection (server restart, terminated walsender, a network gone silent)
is reopened for up to ``reconnect_secs``, at the end of the last transaction emitted: what the
round read but had not emitted is read again, so nothing is lost.  Queries on the control
connection while streaming (catalog lookups, heartbeats) must be answered within
``_CONTROL_ANSWER_S``, or that connection is shut down and reopened the same way.

With ``snapshot='initial'`` a new slot exports its snapshot and the tables are copied (op ``r``)
before streaming starts at the slot's consistent point: no gap, no overlap.  A restart before
the snapshot was confirmed downstream drops the slot and takes the snapshot again.  A table
added to ``tables`` of a slot that streams already is copied at the next start, at an exact
position of its own (a temporary slot's snapshot), while the slot streams on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import Timestamp

import transforms.coders  # noqa: F401  (registers the ChangeEvent coder)
from transforms.dead_letter import DEAD_LETTER, DeadLetter, WriteDeadLetters
from transforms.deadline import (
    CHECK_ANSWER_S,
    STALL_CHECK_S,
    NoAnswer,
    answer_within,
    stall_watch,
)
from transforms.dsn import display, parse_dsn, pg_ask, pg_conninfo, pg_error_from_server
from transforms.envelope import ChangeEvent, Op
from transforms.sources.postgres import catalog, pgtypes
from transforms.sources.postgres.changes import HEARTBEAT_PREFIX, ChangeAssembler
from transforms.sources.postgres.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputDecoder,
    Relation,
    Truncate,
    TypeMessage,
    Update,
)
from transforms.sources.postgres.replication import (
    FRAME_BEGIN,
    FRAME_COMMIT,
    SESSION_OPTIONS,
    Interrupted,
    ReplicationError,
    ReplicationStream,
    SlotCreated,
    format_lsn,
    parse_lsn,
)
from transforms.sources.postgres.snapshot import SnapshotInvalidated, read_snapshot
from transforms.sources.progress import ProgressLine
from transforms.sources.stream_range import (
    END,
    RECONNECT_SECS,
    STOP,
    StreamReadFn,
    end_bundles_promptly,
    snapshot_broke,
)

__all__ = ['SNAPSHOT_MODES', 'ReadPostgresChanges']

_LOG = logging.getLogger(__name__)
_T = TypeVar('_T')

SNAPSHOT_MODES = ('initial', 'never', 'only')
_SNAPSHOT_ATTEMPTS = 5
_SNAPSHOT_PENDING = 'changebeam: snapshot pending for slot '
_SNAPSHOT_DONE = 'changebeam: snapshot confirmed for slot '
_TABLES_NOTE = '; tables '  # then a JSON list of the tables snapshots covered
_CLUSTER_NOTE = '; cluster '  # then the server's system identifier, before the tables note
_METRICS = 'ReadPostgresChanges'
_BEHIND_US = 1_000_000  # a commit sent this long after it happened means a backlog
_CATCH_UP_ROUND_S = 1.0  # the longest round while catching up
_CAUGHT_UP_S = 0.02  # while catching up, a stream silent this long has caught up
# A catalog lookup or heartbeat unanswered this long: the control connection is dead (a hung
# server, a network dropping packets), as the replication stream's silence is (replication.py).
_CONTROL_ANSWER_S = 20.0
# Creating a slot waits for the transactions open when it began, and setting up for locks:
# after this long (and every as long again) the log names what it waits for.
_SLOT_WAIT_REPORT_S = 30.0


@dataclasses.dataclass(frozen=True)
class _SourceConfig:
    """Everything the reading DoFn needs; picklable."""

    dsn: str
    tables: tuple[str, ...]
    slot: str
    publication: str
    snapshot: str
    max_idle_secs: float | None
    heartbeat_secs: float
    server_name: str
    database: str
    round_secs: float
    batch_size: int
    progress: bool
    reconnect_secs: float = RECONNECT_SECS
    render_json: bool = False


@beam.DoFn.unbounded_per_element()
class _ReadSlotFn(StreamReadFn):
    """Reads one replication slot; emits lists of ChangeEvents (a transaction or a chunk)."""

    _cluster = ''  # the server's system identifier, once _check_cluster asked

    def __init__(self, config: _SourceConfig) -> None:
        self._config = config
        self.reconnect_secs = config.reconnect_secs

    def setup(self) -> None:
        self._control: Any = None
        self._stream: ReplicationStream | None = None
        self._lock = threading.Lock()
        self._changes = Metrics.counter(_METRICS, 'changes')
        self._bytes = Metrics.counter(_METRICS, 'bytes')
        self._lag = Metrics.distribution(_METRICS, 'lag_ms')
        self._retained = Metrics.gauge(_METRICS, 'slot_retained_bytes')
        self._dead = Metrics.counter(_METRICS, 'dead_letters')
        self._progress = ProgressLine(self._config.progress)
        self._emitted = 0
        self._confirmed_changes = 0
        self._last_lag: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def _open(self) -> None:

        config = self._config
        self._control = _connect(config.dsn)
        catalog.check_server(self._control)
        self._assembler = ChangeAssembler(config.server_name, config.database,
                                          self._lookup_key, self._lookup_types,
                                          self._lookup_missing)
        self._decoder = PgOutputDecoder()
        self._resync = False  # the stream read past the restriction it was handed, or broke
        # After a lost connection: the end of the last transaction emitted.  Transactions the
        # lost round claimed after it were not emitted, and are read again from there.
        self._emitted_end = 0
        self._replay_from: int | None = None
        self._listed: list[str] | None = None  # the tables --tables names, resolved
        self._idle_since = time.monotonic()
        self._last_heartbeat = time.monotonic()
        self._watermark = Timestamp(0)

    @contextmanager
    def _asking(self) -> Iterator[Any]:
        """The control connection, for queries made while streaming: one thread at a time,
        and a server that does not answer within _CONTROL_ANSWER_S raises NoAnswer."""
        with self._lock, answer_within(self._control.fileno(), _CONTROL_ANSWER_S,
                                       'the control connection'):
            yield self._control

    def _lookup_key(self, relation_oid: int) -> tuple[str, ...]:
        with self._asking() as control:
            return catalog.primary_key(control, relation_oid)

    def _lookup_missing(self, relation_oid: int) -> dict[str, catalog.CatalogColumn]:
        with self._asking() as control:
            return catalog.missing_values(control, relation_oid)

    def _lookup_types(self, oids: Sequence[int]) -> dict[int, pgtypes.TypeInfo]:
        with self._asking() as control:
            rows = control.execute(pgtypes.CATALOG_QUERY, (list(oids),)).fetchall()
        return {info.oid: info for info in (pgtypes.TypeInfo(*row) for row in rows)}

    def teardown(self) -> None:
        stream = getattr(self, '_stream', None)
        if stream is not None:
            stream.close()
            self._stream = None
        if getattr(self, '_control', None) is not None:
            self._control.close()
            self._control = None
        if self._config.progress:
            sys.stderr.write('\n')

    # -- the splittable process ----------------------------------------------------------------

    def _begin(self, start: int, tracker: Any, finalizer: Any) -> Iterator[Any]:
        """First round: publication, slot and (maybe) the snapshot.

        Setting up may wait for a lock (the publication's ``ALTER``/``CREATE`` needs one that
        a ``CREATE INDEX`` or a manual ``VACUUM`` of a table holds): every 30 s a new
        connection looks, and a warning names the statement and who holds the lock.  A server
        that does not answer that connection either has the control connection shut down."""
        control = self._control
        pid = control.info.backend_pid

        def check(waited: float) -> None:
            waiting = _ask_server(self._config.dsn, lambda conn: catalog.lock_wait(conn, pid))
            if waiting is not None:
                _LOG.warning('starting: %s; it goes on once they end', waiting)

        try:
            with stall_watch(control.fileno, _SLOT_WAIT_REPORT_S, check, 'starting'):
                yield from self._set_up(start, tracker, finalizer)
        except Interrupted as exc:
            # SIGTERM / Ctrl-C while a slot waited for transactions to end: nothing was read.
            _LOG.info('%s before streaming began: stopping', exc)

    def _set_up(self, start: int, tracker: Any, finalizer: Any) -> Iterator[Any]:
        config = self._config
        tables = catalog.resolve_tables(self._control, config.tables)
        if config.snapshot == 'only':
            yield from self._exact_snapshot(tables, tracker, finalizer)
            return
        slot = catalog.slot_info(self._control, config.slot)
        if slot is not None and slot.active_pid:
            raise catalog.SourceSetupError(
                f'slot {config.slot!r} is in use by process {slot.active_pid}: another pipeline '
                'reads it; stop that one or pass another --slot_name')
        wants_snapshot = config.snapshot == 'initial'
        self._check_cluster()
        confirmed, covered = self._covered()
        if slot is not None and wants_snapshot and not confirmed:
            _LOG.warning('slot %s exists but its snapshot was never confirmed downstream: '
                         'dropping it and taking the snapshot again', config.slot)
            catalog.drop_slot(self._control, config.slot)
            slot = None
        listed = self._listed = [t.name for t in tables] if config.tables else None
        added: list[catalog.TableRef] = []
        with_added: set[str] = set()
        if slot is not None and listed is not None and confirmed:
            # Tables the publication held until now, whose rows a snapshot brought (or that
            # were never to be copied): recorded before the publication changes, so a crash
            # from here on copies the others again at the next start.
            held = catalog.published_tables(self._control, config.publication)
            covered = held if covered is None else covered & held
            self._set_marker(_SNAPSHOT_DONE, covered)
            added = [t for t in tables if t.name not in covered]
            with_added = covered | {t.name for t in added}
        catalog.ensure_publication(self._control, config.publication,
                                   tables if config.tables else None)
        if added and wants_snapshot:
            # Published from now on; the rows they hold are copied at an exact position after
            # that, so the changes between the two arrive twice, in order by position.
            _LOG.info('taking a snapshot of table(s) %s, added to --tables',
                      ', '.join(t.name for t in added))
            yield from self._exact_snapshot(
                added, tracker, finalizer, claim=False,
                committed=lambda rows: self._snapshot_committed(rows, with_added))
        elif added:
            _LOG.warning(
                'table(s) %s added to --tables: their changes stream from now on, but not the '
                'rows they already hold (--snapshot never); to copy those, run once with '
                '--snapshot only --tables %s and the same --sink (it may run while this '
                'pipeline streams)', ', '.join(t.name for t in added),
                ','.join(t.name for t in added))
        for attempt in range(1, _SNAPSHOT_ATTEMPTS + 1):
            stream = ReplicationStream.connect(config.dsn)
            if slot is not None:
                start_lsn = parse_lsn(slot.confirmed_flush or '0/0')
                break
            self._set_marker(_SNAPSHOT_PENDING)
            try:
                created = create_slot(stream, config.dsn, config.slot,
                                      export_snapshot=wants_snapshot, until=STOP)
            except BaseException:
                stream.close()
                raise
            start_lsn = created.consistent_point
            _LOG.info('created slot %s at %s', config.slot, format_lsn(start_lsn))
            if not wants_snapshot:
                self._set_marker(_SNAPSHOT_DONE, listed)
                break
            try:
                yield from self._snapshot(created.snapshot, tables, start_lsn, tracker,
                                          finalizer,
                                          committed=lambda rows: self._snapshot_committed(
                                              rows, listed))
                break
            except SnapshotInvalidated as exc:
                if attempt == _SNAPSHOT_ATTEMPTS:
                    raise
                _LOG.warning('%s: dropping slot %s and taking the snapshot again', exc,
                             config.slot)
                stream.close()
                catalog.drop_slot(self._control, config.slot)
        stream.start(config.slot, max(start_lsn, start), config.publication)
        self._stream = stream
        self._emitted_end = max(start_lsn, start)
        # --max_idle_secs counts from here: a start that waited for a lock or an open
        # transaction, or a long snapshot, is not time without changes.
        self._idle_since = time.monotonic()

    def _exact_snapshot(self, tables: Sequence[catalog.TableRef], tracker: Any,
                        finalizer: Any, *, claim: bool = True,
                        committed: Callable[[int], None] | None = None) -> Iterator[Any]:
        """The tables as of an exact WAL position, without a lasting slot: ``--snapshot only``,
        and tables added to ``--tables`` of a slot that streams already (not claimed: the
        stream's own positions, before and after, follow).

        The current WAL position is not exact on a primary: a commit already in the WAL but not
        yet visible (its fsync, or a synchronous standby, still awaited) lies before it unseen,
        and a target that got that commit from a stream would take the snapshot's older row as
        newer.  A temporary slot's exported snapshot divides the commits exactly at its
        consistent point (creating it waits for the transactions running then to end); the
        slot goes with its connection.  A standby has no logical slots (before PostgreSQL 16):
        there the replay position read before the snapshot is exact (read_snapshot).
        """
        if self._control.execute('SELECT pg_is_in_recovery()').fetchone()[0]:
            yield from self._snapshot(None, tables, 0, tracker, finalizer, claim=claim,
                                      committed=committed)
            return
        for attempt in range(1, _SNAPSHOT_ATTEMPTS + 1):
            stream = ReplicationStream.connect(self._config.dsn)
            try:
                try:
                    created = create_slot(stream, self._config.dsn,
                                          f'changebeam_backfill_{secrets.token_hex(6)}',
                                          export_snapshot=True, temporary=True, until=STOP)
                except ReplicationError as exc:
                    if exc.sqlstate != '53400':  # configuration_limit_exceeded
                        raise
                    raise catalog.SourceSetupError(
                        'the copy takes its exact position from a temporary replication slot '
                        '(dropped when it ends), and every slot max_replication_slots allows '
                        'is in use: drop one no longer read (pg_drop_replication_slot) or '
                        'raise max_replication_slots (a restart); a standby needs none') from exc
                yield from self._snapshot(created.snapshot, tables, created.consistent_point,
                                          tracker, finalizer, claim=claim, committed=committed)
                return
            except SnapshotInvalidated as exc:
                if attempt == _SNAPSHOT_ATTEMPTS:
                    raise
                _LOG.warning('%s: taking the snapshot again', exc)
            finally:
                stream.close()

    def _snapshot(self, name: str | None, tables: Sequence[catalog.TableRef],
                  consistent_point: int, tracker: Any, finalizer: Any, *, claim: bool = True,
                  committed: Callable[[int], None] | None = None) -> Iterator[Any]:
        """Emits the snapshot's batches; ``committed(rows)`` once the sink committed them."""
        if claim and not tracker.try_claim(consistent_point):
            return
        rows = 0
        letters: list[DeadLetter] = []  # rows that could not be read (see read_snapshot)
        import psycopg

        try:
            with _connect(self._config.dsn) as conn, watched_by_a_new_connection(
                    conn.fileno, self._config.dsn, 'the snapshot'):
                for batch in read_snapshot(conn, name, tables, self._assembler,
                                           consistent_point,
                                           batch_size=self._config.batch_size,
                                           letters=letters):
                    read = sum(event.op is Op.READ for event in batch)  # not the markers
                    rows += read
                    self._emitted += read
                    self._changes.inc(read)
                    yield batch
                    if letters:
                        self._dead.inc(len(letters))
                        for letter in letters:
                            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
                        letters.clear()
                    self._progress.update(self._emitted, self._confirmed_changes, None,
                                          f'snapshot at {format_lsn(consistent_point)}')
        except psycopg.OperationalError as exc:
            if pg_error_from_server(exc):
                raise
            raise snapshot_broke(exc) from exc
        _LOG.info('snapshot of %d table(s): %d rows', len(tables), rows)
        if committed is not None:
            finalizer.register(lambda: committed(rows))

    def _snapshot_committed(self, rows: int, covered: Iterable[str] | None) -> None:
        self._confirmed_changes += rows
        self._set_marker(_SNAPSHOT_DONE, covered)

    def _set_marker(self, text: str, tables: Iterable[str] | None = None) -> None:
        # The publication's comment records whether this slot's snapshot reached the sink, and
        # (with --tables) which tables a snapshot covered: it lives in the source database (so
        # every worker and restart sees it) without adding anything to the application's
        # schema.
        comment = text + self._config.slot
        if self._cluster:
            comment += _CLUSTER_NOTE + self._cluster
        if tables is not None:
            comment += _TABLES_NOTE + json.dumps(sorted(tables))
        with self._lock:
            self._control.execute(
                f'COMMENT ON PUBLICATION {catalog.quote_ident(self._config.publication)} IS '
                + "'" + comment.replace("'", "''") + "'")

    def _marker(self) -> str:
        row = self._control.execute(
            'SELECT obj_description(oid, %s) FROM pg_publication WHERE pubname = %s',
            ('pg_publication', self._config.publication)).fetchone()
        return (row[0] if row else None) or ''

    def _check_cluster(self) -> None:
        """Refuse a publication whose marker names another cluster: the database was moved
        (a dump restored, which keeps the publication's comment, or an upgrade).  WAL
        positions start over there, below those every replica and consumer holds, so each
        would take every change and snapshot row for an old one, and keep its rows: silently
        stale for ever."""
        stream = ReplicationStream.connect(self._config.dsn)
        try:
            self._cluster = str(stream.identify_system()['systemid'])
        finally:
            stream.close()
        marker = self._marker()
        head = _CLUSTER_NOTE
        if head not in marker or not marker.startswith((_SNAPSHOT_DONE, _SNAPSHOT_PENDING)):
            return  # none yet, or recorded by an older release
        recorded = marker.split(head, 1)[1].split(';', 1)[0].strip()
        if recorded != self._cluster:
            raise catalog.SourceSetupError(
                f'publication {self._config.publication!r} was made on another PostgreSQL '
                f'cluster (system identifier {recorded}, this one {self._cluster}): the '
                'database was moved, and WAL positions started over below those the replicas '
                'and consumers hold, which would take every change for an old one. Empty the '
                'replicas (their tables and changebeam\'s tombstones) or give the sink a new '
                'target, run COMMENT ON PUBLICATION '
                f'{catalog.quote_ident(self._config.publication)} IS NULL, and start again '
                'with --snapshot initial')

    def _covered(self) -> tuple[bool, set[str] | None]:
        """Whether this slot's snapshot was confirmed downstream, and the tables snapshots
        covered since (None: not recorded, as without --tables or by an older release)."""
        comment = self._marker()
        head = _SNAPSHOT_DONE + self._config.slot
        if comment.startswith(head + _CLUSTER_NOTE):  # the cluster is _check_cluster's
            cluster_end = comment.find(';', len(head) + len(_CLUSTER_NOTE))
            comment = head + (comment[cluster_end:] if cluster_end >= 0 else '')
        if comment.startswith(head + _TABLES_NOTE):
            try:
                return True, set(json.loads(comment[len(head) + len(_TABLES_NOTE):]))
            except ValueError:
                return True, None
        return comment == head, None

    def _reconnect(self, start: int) -> None:
        """Reopen the stream: the runner handed us a restriction we are not positioned at, or
        the connection broke (then at the end of the last transaction emitted)."""

        config = self._config
        old = self._stream
        assert old is not None
        old.close()
        if self._control.closed or self._control.broken:
            self._control.close()
            self._control = _connect(config.dsn)
        with self._asking() as control:
            if catalog.slot_info(control, config.slot) is None:
                raise catalog.SourceSetupError(
                    f'slot {config.slot!r} no longer exists (dropped while the pipeline ran); '
                    'restart with --snapshot initial to copy the tables again')
        at = start if self._replay_from is None else self._replay_from
        _LOG.info('restarting replication at %s', format_lsn(at))
        stream = ReplicationStream.connect(config.dsn)
        try:
            stream.confirm(old.confirmed_lsn, send=False)  # never report less than confirmed
            stream.start(config.slot, at, config.publication)
        except BaseException:
            stream.close()
            raise
        self._stream = stream
        self._decoder = PgOutputDecoder()
        self._assembler.abandon()
        self._resync = False

    def _transient(self, exc: BaseException) -> bool:
        import psycopg

        if isinstance(exc, ReplicationError):
            return exc.transient
        return isinstance(exc, (psycopg.OperationalError, NoAnswer))

    def _stream_round(self, tracker: Any, finalizer: Any, watermark: Any) -> Iterator[Any]:
        """One round; a broken connection ends it early, and the next one reconnects."""
        import psycopg

        try:
            yield from self._read_round(tracker, finalizer, watermark)
        except (ReplicationError, psycopg.OperationalError, NoAnswer) as exc:
            if not self._transient(exc):
                raise
            # What the round read but did not emit is dropped, its claim notwithstanding: from
            # the end of the last transaction emitted, the next round reads it again.
            self._replay_from = self._emitted_end
            self._connection_lost(exc)
            if self._emitted_end:
                emitted = self._emitted
                finalizer.register(
                    lambda lsn=self._emitted_end, n=emitted: self._confirm(lsn, n))
            tracker.defer_remainder()

    def _read_round(self, tracker: Any, finalizer: Any, watermark: Any) -> Iterator[Any]:
        config = self._config
        stream = self._stream
        assert stream is not None
        decoder, assembler = self._decoder, self._assembler
        start = tracker.current_restriction().start
        began = time.monotonic()
        deadline = began + config.round_secs
        longest = began + max(config.round_secs, _CATCH_UP_ROUND_S)
        batch: list[Any] = []  # ChangeEvents, and RenderedChanges with render_json
        pending = 0  # the changes in batch
        render = config.render_json
        letters: list[DeadLetter] = []
        confirm_lsn = 0
        last_end = self._emitted_end  # the end of the last transaction read whole
        commit_ts = None
        received = stream.payload_bytes  # the round's bytes: the difference at its end
        skipping = False  # replayed by the server, emitted before a reconnect
        catching_up = False  # a commit arrived long after it happened: read on while frames wait
        try_claim = tracker.try_claim
        frame_begin, frame_commit = FRAME_BEGIN, FRAME_COMMIT
        while True:
            in_tx = assembler.in_transaction
            # A transaction is never cut: inside one, wait for its remaining changes.  The
            # round length bounds commit-to-sink latency; each round is one sink file per table.
            if in_tx:
                timeout = 5.0
            elif catching_up:
                # Past the usual round length, a socket dry for _CAUGHT_UP_S means caught up,
                # and ends the round.  Not a moment's dryness: a reader faster than the
                # walsender finds the socket empty between most frames, and every round costs
                # a bundle (~30 ms) during which the server stops once the socket is full.
                timeout = max(_CAUGHT_UP_S, deadline - time.monotonic())
            else:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            frames = stream.read_batch(timeout)
            if not frames:
                if in_tx:
                    continue
                break
            ended = False  # the round ends after this frame
            frames_left = iter(frames)
            for data_start, payload in frames_left:
                if data_start >= 0:  # not a Begin or Commit _pqcopy decoded
                    events = None
                    if payload and payload[0] in _FAST_KINDS and not skipping \
                            and not decoder.in_stream:
                        try:
                            if render and assembler.render_into(batch, payload, data_start):
                                events = _RENDERED
                            else:
                                events = assembler.change_from_frame(payload, data_start)
                        except (ValueError, KeyError) as exc:
                            letters.append(_letter('ConvertRow', exc, payload, config, data_start))
                            continue
                    if events is None:  # not taken by the fast path: decode it
                        try:
                            message = decoder.decode(payload)
                        except ValueError as exc:
                            letters.append(_letter('DecodeWal', exc, payload, config, data_start))
                            continue
                        if type(message) is Begin:  # on to the Begin below, as _pqcopy gives it
                            data_start = frame_begin
                            payload = (message.final_lsn, message.commit_ts, message.xid)
                        elif type(message) is Commit:
                            data_start = frame_commit
                            payload = (message.flags, message.commit_lsn, message.end_lsn,
                                       message.commit_ts)
                        elif isinstance(message, _CHANGES):
                            if skipping:
                                continue
                            try:
                                events = assembler.change(message, data_start)
                            except (ValueError, KeyError) as exc:
                                letters.append(
                                    _letter('ConvertRow', exc, payload, config, data_start))
                                continue
                        elif isinstance(message, LogicalMessage):
                            if message.transactional:
                                if not skipping:
                                    event = assembler.message(message, data_start)
                                    if event is not None:
                                        batch.append(event)
                                        pending += 1
                            # A non-transactional message's lsn is the END of its record, where
                            # the next record starts: a commit written right after it has that
                            # lsn as final_lsn.  So the message claims the position before,
                            # inside its own record.
                            elif message.lsn - 1 >= start:
                                if not try_claim(message.lsn - 1):
                                    self._resync = True
                                    ended = True
                                    break
                                confirm_lsn = max(confirm_lsn, message.lsn)
                                event = assembler.message(message, data_start)
                                if event is not None:
                                    yield from self._emit([event], 1)
                            continue
                        else:
                            if isinstance(message, Relation):
                                try:
                                    assembler.relation(message)
                                except (ValueError, KeyError) as exc:
                                    letters.append(_letter('DecodeRelation', exc, payload,
                                                           config, data_start))
                            elif isinstance(message, TypeMessage):
                                assembler.type(message)
                            elif not isinstance(message, Origin):
                                letters.append(DeadLetter(
                                    'DecodeWal', f'unexpected {type(message).__name__} message '
                                    '(streamed transactions are not requested)', payload,
                                    source=_where(config, data_start)))
                            continue
                    if events is not None:
                        if events is _RENDERED:
                            pending += 1
                        else:
                            batch.extend(events)
                            pending += len(events)
                        if pending >= config.batch_size:
                            yield from self._emit(batch, pending)
                            batch = []
                            pending = 0
                            self._emitted_end = last_end
                        continue
                # A Begin or a Commit, as (final_lsn, commit_ts, xid) or (flags, commit_lsn,
                # end_lsn, commit_ts): the only frames of a small transaction besides its change.
                if data_start == frame_begin:
                    final_lsn, begin_ts, xid = payload
                    assembler.begin_at(final_lsn, begin_ts, xid)
                    if final_lsn < start:
                        # Emitted before a reconnect, unless the connection broke before it was.
                        replay_from = self._replay_from
                        skipping = replay_from is None or final_lsn < replay_from
                    elif try_claim(final_lsn):
                        skipping = False
                        self._replay_from = None
                    else:
                        self._resync = True  # this Begin is the residual's: reread it there
                        ended = True
                        break
                    continue
                _flags, _commit_lsn, end_lsn, end_ts = payload
                assembler.commit()
                if not skipping:
                    last_end = end_lsn
                    # Whole transactions only; several small ones share a batch (one Beam
                    # element each costs more than the changes of a small transaction).
                    if pending >= config.batch_size:
                        yield from self._emit(batch, pending)
                        batch = []
                        pending = 0
                        self._emitted_end = last_end
                    confirm_lsn = end_lsn
                    commit_ts = end_ts
                skipping = False
                if stream.send_time_us - end_ts > _BEHIND_US:
                    # Sent long after its commit: a backlog.  Catch up in longer rounds, since
                    # every round is a bundle that costs ~30 ms to finish and start.
                    catching_up = True
                if time.monotonic() >= (longest if catching_up else deadline):
                    ended = True
                    break
            if ended:
                stream.unread(list(frames_left))  # the next round's
                break
        if batch:
            yield from self._emit(batch, pending)
        self._emitted_end = last_end
        self._bytes.inc(stream.payload_bytes - received)
        if letters:
            self._dead.inc(len(letters))
            for letter in letters:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
        now = time.monotonic()
        if commit_ts is not None:
            self._idle_since = now
            lag = time.time() * 1000 - commit_ts / 1000
            self._lag.update(int(lag))
            self._last_lag = lag
            self._advance_watermark(watermark, Timestamp(micros=commit_ts))
        elif not assembler.in_transaction:
            # Caught up: nothing committed before now can still arrive (no lag to show).
            self._advance_watermark(watermark, Timestamp.now() - 1)
            self._last_lag = 0.0
        if confirm_lsn:
            emitted = self._emitted
            finalizer.register(lambda lsn=confirm_lsn, n=emitted: self._confirm(lsn, n))
        self._maybe_heartbeat(now)
        self._progress.update(self._emitted, self._confirmed_changes, self._last_lag,
                              f'slot at {format_lsn(stream.confirmed_lsn)}')
        idle = now - self._idle_since
        if STOP.is_set() or (config.max_idle_secs is not None
                             and idle >= config.max_idle_secs):
            if STOP.is_set():
                _LOG.info('stop requested: stopping after %d change(s)', self._emitted)
            else:
                _LOG.info('no change for %.1f s: stopping', idle)
            tracker.try_claim(END - 1)
            return
        tracker.defer_remainder()

    def _emit(self, batch: list[Any], changes: int) -> Iterator[list[Any]]:
        self._emitted += changes
        self._changes.inc(changes)
        yield batch

    def _advance_watermark(self, estimator: Any, value: Timestamp) -> None:
        if value > self._watermark:
            self._watermark = value
            estimator.set_watermark(value)

    def _confirm(self, lsn: int, emitted: int) -> None:
        """Bundle finalizer: the sink committed everything up to ``lsn``."""
        self._confirmed_changes = emitted
        if self._stream is not None:
            try:
                self._stream.confirm(lsn)
            except ReplicationError as exc:  # kept: the next connection reports it
                self._connection_lost(exc)

    def _maybe_heartbeat(self, now: float) -> None:
        config = self._config
        if not config.heartbeat_secs or now - self._last_heartbeat < config.heartbeat_secs:
            return
        self._last_heartbeat = now
        with self._asking() as control:
            if now - self._idle_since >= config.heartbeat_secs:
                # Non-transactional, so it streams at once; confirming it advances the slot
                # even while the captured tables are idle and other databases write.
                control.execute('SELECT pg_logical_emit_message(false, %s, %s)',
                                (HEARTBEAT_PREFIX, ''))
            row = control.execute(
                'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint '
                'FROM pg_replication_slots WHERE slot_name = %s', (config.slot,)).fetchone()
        if row and row[0] is not None:
            self._retained.set(int(row[0]))


_CHANGES = (Insert, Update, Delete, Truncate)
_FAST_KINDS = b'IU'  # the frames ChangeAssembler.change_from_frame may take
_RENDERED: list[ChangeEvent] = []  # the change is in the batch already (render_into)


def create_slot(stream: ReplicationStream, dsn: str, name: str, *, export_snapshot: bool,
                temporary: bool = False, report_every_s: float | None = None,
                until: threading.Event | None = None) -> SlotCreated:
    """``stream.create_slot``, saying what it waits for when that takes long.

    A logical slot starts at a point where no transaction that had written is open, so
    creating one waits until those open when it began have ended, in every database of the
    server: a session left idle in a transaction, or a forgotten prepared transaction, makes it
    wait for ever without a word.  Every ``report_every_s`` (default 30 s) a new connection
    looks them up, and a warning names them and what ends them.  A server that does not
    answer that connection either has the slot's connection shut down (:class:`NoAnswer`).
    Setting ``until`` (a stop was asked for) cancels the wait: :class:`Interrupted`."""
    every = _SLOT_WAIT_REPORT_S if report_every_s is None else report_every_s

    def check(waited: float) -> None:
        blockers = _ask_server(dsn, lambda conn: catalog.slot_blockers(conn, waited))
        if blockers:
            _LOG.warning(
                'creating slot %s has waited %.0f s for the transactions open when it began to '
                'end (a logical slot starts where none is open; those of every database count): '
                '%s. It goes on once they commit or roll back (pg_terminate_backend(pid) ends a '
                'session, ROLLBACK PREPARED a prepared transaction)', name, waited,
                '; '.join(blockers))
        elif blockers is not None:
            _LOG.info('creating slot %s: still waiting after %.0f s', name, waited)

    with stall_watch(stream.fileno, every, check, f'creating slot {name}'):
        return stream.create_slot(name, export_snapshot=export_snapshot, temporary=temporary,
                                  until=until)


def watched_by_a_new_connection(fileno: Callable[[], int | None], dsn: str,
                                what: str) -> AbstractContextManager[None]:
    """A block of work on one connection (a snapshot's COPY, which may take hours) that the
    server could leave waiting for ever by hanging with the connection open: every
    ``STALL_CHECK_S`` (60 s) a new connection must get an answer within ``CHECK_ANSWER_S``
    (20 s), else the block's connection is shut down and the block fails
    with :class:`NoAnswer`."""
    def check(waited: float) -> None:
        _ask_server(dsn, lambda conn: conn.execute('SELECT 1'))

    return stall_watch(fileno, STALL_CHECK_S, check, what)


def _connect(dsn: str) -> Any:
    """A control or snapshot connection (autocommit, the session settings the decoder
    expects, the connection timeouts of transforms.dsn)."""
    import psycopg

    return psycopg.connect(pg_conninfo(dsn, options=SESSION_OPTIONS), autocommit=True)


def _ask_server(dsn: str, ask: Callable[[Any], _T]) -> _T | None:
    """A stall watch's check: ``ask(conn)`` on a new connection that must connect and answer
    within ``CHECK_ANSWER_S``.  Raises :class:`NoAnswer` when the server does not answer; None
    when it answers with an error of its own (too many connections, starting up): it is
    there, which is what was asked."""
    try:
        return pg_ask(dsn, ask, CHECK_ANSWER_S)
    except ConnectionError as exc:
        raise NoAnswer(f'nor did a new connection within {CHECK_ANSWER_S:g} s ({exc})') from exc
    except Exception as exc:
        _LOG.info('a check from a new connection got an error from the server: %s',
                  ' '.join(str(exc).split()))
        return None


def _where(config: _SourceConfig, data_start: int) -> str:
    return f'{config.slot}@{format_lsn(data_start)}'


def _letter(step: str, exc: Exception, payload: bytes, config: _SourceConfig,
            data_start: int) -> DeadLetter:
    return DeadLetter.from_exception(step, exc, payload, source=_where(config, data_start))


def _unbatch(batch: list[ChangeEvent]) -> list[ChangeEvent]:
    return batch


class ReadPostgresChanges(beam.PTransform):
    """Reads committed row changes of PostgreSQL tables through a logical replication slot.

    Returns a PCollection of :class:`~transforms.envelope.ChangeEvent` (with ``batched``, of
    lists of them in order, each a few whole transactions: a Beam element costs more than
    most changes; ``EvolveSchema(batched=True)`` and the sinks take them as they are).
    Records that cannot be decoded go to ``dead_letter`` (``jsonl:DIR``) with the raw
    message.

    ``render_json`` (with ``batched``) is for a pipeline whose only reader of the changes is
    ``EvolveSchema`` (``evolve`` or ``strict``) then ``WriteChangesToFiles('jsonl:…')``: the
    commonest changes (inserts, and updates without an old row) come as
    :class:`~transforms.envelope.RenderedChanges`, their JSON lines written as the source read
    them, which at least halves the cost of a change.  Any other reader refuses them.
    """

    def __init__(self, dsn: str, *, tables: Sequence[str] = (), slot_name: str | None = None,
                 publication: str | None = None, snapshot: str = 'initial',
                 max_idle_secs: float | None = None, heartbeat_secs: float = 10.0,
                 server_name: str | None = None, dead_letter: str = 'jsonl:dead-letters',
                 round_secs: float = 0.15, batch_size: int = 500,
                 progress: bool = False, reconnect_secs: float = RECONNECT_SECS,
                 batched: bool = False, render_json: bool = False) -> None:
        super().__init__()
        parsed = parse_dsn(dsn, option='dsn')
        if render_json and not batched:
            raise ValueError('render_json needs batched=True')
        if parsed.kind != 'postgresql':
            raise ValueError(f'dsn {display(dsn)!r} is not a postgresql:// DSN')
        if snapshot not in SNAPSHOT_MODES:
            raise ValueError(f'snapshot {snapshot!r} must be one of {", ".join(SNAPSHOT_MODES)}')
        if max_idle_secs is not None and max_idle_secs <= 0:
            raise ValueError(f'max_idle_secs {max_idle_secs!r} must be more than zero')
        if round_secs <= 0 or batch_size <= 0:
            raise ValueError('round_secs and batch_size must be more than zero')
        if reconnect_secs < 0:
            raise ValueError(f'reconnect_secs {reconnect_secs!r} must not be negative')
        slot = slot_name or f'changebeam_{parsed.database or "db"}'.lower()
        self._config = _SourceConfig(
            dsn=dsn, tables=tuple(tables), slot=slot, publication=publication or slot,
            snapshot=snapshot, max_idle_secs=max_idle_secs, heartbeat_secs=heartbeat_secs,
            server_name=server_name or parsed.database or 'postgres',
            database=parsed.database or 'postgres', round_secs=round_secs,
            batch_size=batch_size, progress=progress, reconnect_secs=reconnect_secs,
            render_json=render_json)
        self._dead_letter = dead_letter
        self._batched = batched

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        end_bundles_promptly()  # else every round waits ~20 ms for Beam's sampler thread
        read = (pbegin
                | 'Start' >> beam.Impulse()
                | 'ReadSlot' >> beam.ParDo(_ReadSlotFn(self._config))
                .with_output_types(beam.typehints.List[Any] if self._config.render_json
                                   else beam.typehints.List[ChangeEvent])
                .with_outputs(DEAD_LETTER, main='changes'))
        _ = read[DEAD_LETTER] | 'WriteDeadLetters' >> WriteDeadLetters(self._dead_letter)
        if self._batched:
            return read.changes
        return read.changes | 'Unbatch' >> beam.FlatMap(_unbatch).with_output_types(
            ChangeEvent)

