"""Applying batches of change events to a SQL target, whatever its dialect, and the Beam DoFn.

    applier = Applier(_PostgresTarget(dsn))     # or _MySQLTarget(dsn)
    applier.open()
    letters = applier.apply(events)            # committed; [(DeadLetter, event), ...] for rejects
    letters = applier.submit(events)           # written on a writer thread; earlier letters
    letters = applier.drain()                  # the batches in flight committed; their letters
    applier.close()

One batch is one transaction: the target tables' locks, then per table the schema step (create
the table on first sight; when the batch brings a schema not seen before, read the table's
columns from the catalog once and ALTER it so it holds that schema's rows, see ``alter``), then
the truncate, deletes, upserts and appends that :func:`~transforms.sinks.sql.batch.plan_batch`
reduced the batch to, each skipped where the target already holds a newer position (row
``_cb_pos``, tombstone, truncate mark).  A target whose DDL commits implicitly (MariaDB) runs
the schema step just before the transaction instead; a table the sink cannot make fit, or a
second source table for one target table (whose rows would overwrite the first one's), dead-letters
that table's events of the batch with the reason.  If the target rejects the
batch, it is retried row by row, one savepoint per row, and only the rows the target rejects
become dead letters.  A lost connection (or a
deadlock, serialization failure, shutdown) is retried with exponential backoff on a new
connection, ``max_attempts`` times in all, then raised: never dead-lettered.

Tombstones and truncate marks older than ``tombstone_retention`` (by the target's clock when
they were written) are deleted after a committed batch, at most once per ``prune_interval_s``
and at most ``_PRUNE_LIMIT`` at a time, in their own short transaction: a replay older than the
retention is then applied again (see docs/sinks.md, *Tombstone retention*).
"""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import operator
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

import transforms.coders  # noqa: F401  (registers the ChangeEvent coder)
from transforms.dead_letter import DEAD_LETTER, DeadLetter, event_payload
from transforms.deadline import CHECK_ANSWER_S, STALL_CHECK_S, NoAnswer, stall_watch
from transforms.envelope import ChangeEvent, Column, RenderedChanges, TableSchema
from transforms.sinks.sql.alter import Alteration, TargetColumn, plan_alteration
from transforms.sinks.sql.batch import Batch, Rendered, RowChange, TableBatch, plan_batch
from transforms.sinks.sql.routing import Route, TargetTable, check_route
from transforms.sinks.sql.statements import NEWEST, POS, TRUNCATED

__all__ = ['Applier', 'Target', 'WriteChanges']

_LOG = logging.getLogger(__name__)
_T = TypeVar('_T')
DEFAULT_TOMBSTONE_RETENTION = dt.timedelta(days=7)
_PRUNE_INTERVAL_S = 600.0
# A batch still waiting for the target this long is checked from a new connection, which must
# answer within DEFAULT_PROBE_TIMEOUT_S.
DEFAULT_STALL_CHECK_S = STALL_CHECK_S
DEFAULT_PROBE_TIMEOUT_S = CHECK_ANSWER_S
# Tombstones deleted per prune statement: ~10 ms of server time (a 100k-tombstone scan took
# 10-13 ms).  A prune that hits the limit is followed by another after the next batch.
_PRUNE_LIMIT = 5000


class Target(abc.ABC):
    """One connection to a SQL target and its dialect's statements (picklable until connected).

    ``permanent`` lists the exception types that mean "the target rejects this" (as opposed to
    :meth:`is_retryable` failures, which mean "try again on a new connection").  ``dialect``
    names the type system (see ``alter``); ``transactional_ddl`` says whether CREATE/ALTER can
    run inside the batch transaction.
    """

    step: str
    dialect: str
    transactional_ddl: bool
    permanent: tuple[type[BaseException], ...]
    # Connections an Applier may write batches on at once (see Applier.submit); above 1 the
    # target needs ``lane`` and ``stage_ahead``, else there is nothing to overlap.
    lanes: int = 1

    def lane(self) -> Target:
        """A new target for another connection to the same place (``lanes`` > 1), sharing
        what the two must agree on."""
        raise NotImplementedError

    def stage_ahead(self, tb: TableBatch) -> None:
        """Optional: in the batch transaction, before :meth:`lock`, send what ``tb``'s
        rendered upserts (``tb.prepared``) need without the lock, to overlap the batch written
        on another lane; ``upsert`` uses it only if it still fits (``tb.staged``)."""
        return None

    @abc.abstractmethod
    def target_of(self, table: TableSchema) -> TargetTable: ...

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def is_retryable(self, exc: BaseException) -> bool: ...

    def describe(self, exc: BaseException) -> str:
        return f'{type(exc).__name__}: {exc}'.strip()

    def fileno(self) -> int | None:
        """The socket of the connection batches are written on; None when not connected (or
        when the target has no :meth:`probe`: then a stalled batch is never checked)."""
        return None

    def probe(self, timeout_s: float) -> str:
        """From a new connection that must connect and answer within ``timeout_s``: what the
        batch connection's session is doing now, in a few words.  Raises ``OSError`` (a
        ``ConnectionError``) when the server does not answer, or no longer knows that session;
        anything else it raises means the server answered, with an error."""
        raise NotImplementedError

    @abc.abstractmethod
    def columns(self, target: TargetTable) -> dict[str, TargetColumn]:
        """The table's columns as its catalog shows them now; empty if it does not exist."""

    @abc.abstractmethod
    def column_type(self, column: Column, connector: str, key: bool) -> str:
        """The type the sink gives ``column`` (of a ``connector`` source) in this target."""

    @abc.abstractmethod
    def create(self, target: TargetTable, schema: TableSchema, connector: str) -> None:
        """Create the table (and its schema) for ``schema``'s rows, if it does not exist."""

    def claim(self, target: TargetTable, source: str) -> str | None:
        """The source table (``schema.table``) whose rows the existing ``target`` holds, as
        recorded on it; with no record yet, ``source``, recorded now.  None when the target
        keeps no record (then the :class:`Applier` remembers the first source table it sees)."""
        return None

    def unclaim(self, target: TargetTable) -> str:
        """The statement that clears :meth:`claim`'s record ('' when there is none)."""
        return ''

    @abc.abstractmethod
    def high_water(self, target: TargetTable) -> str:
        """The newest source position the table reflects (rows, deletes, truncate); ''."""

    @abc.abstractmethod
    def alter(self, target: TargetTable, alteration: Alteration) -> None:
        """Run ``alteration``'s ADD / widening / DROP NOT NULL as one ALTER TABLE."""

    @abc.abstractmethod
    def begin(self, row_by_row: bool) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def rollback(self) -> None:
        """Roll back the open transaction, if any; never raises."""

    @abc.abstractmethod
    def savepoint(self) -> None: ...

    @abc.abstractmethod
    def release(self) -> None: ...

    @abc.abstractmethod
    def rollback_to(self) -> None: ...

    @abc.abstractmethod
    def lock(self, targets: Sequence[TargetTable]) -> None:
        """Serialize writers of the same tables until commit (in this sorted order)."""

    @abc.abstractmethod
    def tombstones(self, target: TargetTable, changes: Sequence[RowChange]) -> dict[str, str]:
        """Tombstone positions of these changes' keys by key hash, and the truncate mark under
        ``'*'``.  Hashes not computed yet need computing (``batch.hashed``) only if
        :func:`keys_to_look_up` says so."""

    @abc.abstractmethod
    def truncate(self, target: TargetTable, pos: str) -> None:
        """Delete rows older than ``pos``, drop older tombstones, mark the truncate."""

    @abc.abstractmethod
    def delete(self, tb: TableBatch, changes: Sequence[RowChange]) -> None:
        """Delete rows older than each change and record the tombstones."""

    def carried(self, tb: TableBatch, changes: Sequence[RowChange]) -> dict[int, dict[str, Any]]:
        """For changes with ``carry``: the carried columns' values as the target's rows under
        the carried-from keys hold them (read before the batch deletes those rows), by
        ``id(change)``; a change whose row the target lacks is left out."""
        kept = tb.target_columns or frozenset(self.columns(tb.target))
        out: dict[int, dict[str, Any]] = {}
        for change in changes:
            assert change.carry is not None
            old, names = change.carry
            names = tuple(n for n in names if n in kept)
            row = self.read_row(tb, change.table, old, names) if names else None
            if row is not None:
                out[id(change)] = dict(zip(names, row, strict=True))
        return out

    @abc.abstractmethod
    def read_row(self, tb: TableBatch, table: TableSchema, key: Sequence[Any],
                 names: Sequence[str]) -> Sequence[Any] | None:
        """Columns ``names`` of the target's row whose key values (of ``table``'s key) are
        ``key``, in a form :meth:`set_carried` writes back unchanged; None without the row."""

    @abc.abstractmethod
    def set_carried(self, tb: TableBatch, changes: Sequence[RowChange],
                    values: dict[int, dict[str, Any]]) -> None:
        """Write ``values`` (from :meth:`carried`) into the changes' rows, where the row is
        the one the change wrote (its position)."""

    def render_upserts(self, tb: TableBatch, upserts: list[RowChange]) -> Any:
        """Optional: ``upserts`` rendered ahead of the batch's transaction, without the
        connection (it may run while another batch is being written); None for nothing.  The
        Applier keeps it as ``tb.prepared`` (a ``Rendered``), which ``upsert`` uses only if it
        still ``matches``."""
        return None

    @abc.abstractmethod
    def upsert(self, tb: TableBatch, changes: Sequence[RowChange]) -> int:
        """Write rows where the target's row is older or absent; the number skipped as stale."""

    @abc.abstractmethod
    def append(self, tb: TableBatch, changes: Sequence[RowChange]) -> None: ...

    @abc.abstractmethod
    def drop_tombstones(self, target: TargetTable, hashes: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def prune_tombstones(self, older_than_s: float, limit: int) -> int:
        """Delete up to ``limit`` tombstones and truncate marks (of every table) written more
        than ``older_than_s`` seconds ago, oldest first, in a transaction of their own (outside
        any batch); the number deleted."""


def keys_to_look_up(marks: dict[str, str], changes: Sequence[RowChange]) -> bool:
    """Whether the tombstones of ``changes``' keys must be read, given the table's marks (its
    truncate mark, first key tombstones and newest-tombstone mark): not when the table has no
    key tombstone, nor when every change is newer than the newest one, as in a stream that
    catches up (a replay of older changes is looked up).  Leaves only the truncate mark in
    ``marks`` when not."""
    keyed = any(key != TRUNCATED and key != NEWEST for key in marks)
    newest = marks.get(NEWEST)
    if keyed and changes and (newest is None or min(map(_POSITION, changes)) <= newest):
        return True
    for key in [key for key in marks if key != TRUNCATED]:
        del marks[key]
    return False


_POSITION = operator.attrgetter('pos')


def _retention_seconds(retention: dt.timedelta | None) -> float | None:
    """``retention`` in seconds, None for "keep forever" (None or zero); ValueError otherwise."""
    if retention is None:
        return None
    if not isinstance(retention, dt.timedelta):
        raise ValueError(f'tombstone_retention {retention!r} must be a datetime.timedelta '
                         '(or None to keep tombstones forever)')
    seconds = retention.total_seconds()
    if seconds < 0:
        raise ValueError(f'tombstone_retention {retention!r} must not be negative (zero or '
                         'None: keep tombstones forever)')
    return seconds or None


def _check_stall(stall_check_s: float | None, probe_timeout_s: float) -> None:
    if stall_check_s is not None and not stall_check_s > 0:
        raise ValueError(f'stall_check_s {stall_check_s!r} must be > 0 (None: never check)')
    if not probe_timeout_s > 0:
        raise ValueError(f'probe_timeout_s {probe_timeout_s!r} must be > 0')


class _Written:
    def __init__(self) -> None:
        self.letters: list[tuple[DeadLetter, ChangeEvent]] = []
        self.applied: dict[TargetTable, int] = {}
        self.stale = 0


class _Outcome:
    """What one batch did, counted into the metrics on the caller's thread (Beam's metrics
    belong to the thread that updates them, and the writer thread has none)."""

    def __init__(self, plan: Batch, started: float) -> None:
        self.plan = plan
        self.started = started
        self.written = _Written()
        self.finished = started
        self.pruned = 0


# The writer thread waits on the target's socket several times per batch while the caller
# renders the next batch; each time it wakes, it waits for the GIL up to the switch interval
# (5 ms by default), and the server idles meanwhile.  While a batch is in flight the interval
# is 0.1 ms.  Measured (PostgreSQL updates, the backend's idle time per batch from
# /proc/<pid>/schedstat): the round trip that starts a COPY left the server idle 1.6 ms at a
# 0.5 ms interval and 0.7 ms at 0.1 ms; 0.02 ms gained nothing more.  At 5 ms, writing ahead
# was slower than writing in turn (0.8-0.9x).
_WRITER_SWITCH_INTERVAL_S = 0.0001
_switching = threading.Lock()
_switch_holders = 0
_switch_saved = 0.0


class _BatchBeforeFailed(Exception):
    """The batch submitted before this one failed: this one writes nothing (it is raised from
    ``drain`` or ``submit``, the bundle is retried, and batches commit in order)."""


def _after(previous: concurrent.futures.Future[_Outcome]) -> None:
    """Wait until the batch before (on another lane) is done; raise if it failed."""
    concurrent.futures.wait([previous])
    if previous.exception() is not None:
        raise _BatchBeforeFailed('the batch submitted before this one failed')


def _fast_switching(hold: bool) -> None:
    """Take (or give back) the short GIL switch interval, process-wide, counted."""
    global _switch_holders, _switch_saved
    with _switching:
        if hold:
            if _switch_holders == 0:
                _switch_saved = sys.getswitchinterval()
                sys.setswitchinterval(min(_switch_saved, _WRITER_SWITCH_INTERVAL_S))
            _switch_holders += 1
        else:
            _switch_holders -= 1
            if _switch_holders == 0:
                sys.setswitchinterval(_switch_saved)


_LONGEST_RECONNECT_PAUSE_S = 10.0


class TargetUnavailable(ConnectionError):
    """The target did not answer for the whole ``reconnect_s`` the sink was given."""


class Applier:
    """Writes batches through a :class:`Target`: effectively-once, dead letters, retries.

    ``apply`` writes a batch and returns when it is committed.  ``submit`` hands the batch to
    a writer thread and returns at once with the dead letters of batches that finished before
    it, so that the caller's next batch is planned and rendered while this one is written;
    batches still commit one at a time, in order, and ``drain`` waits for the last one.  A
    target with ``lanes`` > 1 (PostgreSQL) gets that many connections, each with its writer
    thread, and that many batches in flight: a batch sends what needs no lock
    (``Target.stage_ahead``: the COPY into staging) while the one before it is written, then
    waits for that one to commit before it takes its locks (so batches still commit in order,
    and none after one that failed).

    ``tombstone_retention`` (None: keep forever) prunes old tombstones after a batch, at most
    once per ``prune_interval_s`` of ``clock``.

    A batch still waiting for the target after ``stall_check_s`` seconds (and every
    ``stall_check_s`` after that) is looked at from a new connection (:meth:`Target.probe`,
    which must answer within ``probe_timeout_s``): a server that answers gets the batch a
    warning saying what its session does (a lock wait, a long DELETE) and the batch waits on;
    one that does not (it hangs, or something between still acknowledges for it) has the
    batch's connection shut down, and the batch is retried like after any lost connection.
    None: wait for ever, unchecked.
    """

    def __init__(self, target: Target, *, max_attempts: int = 6, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, tombstone_retention: dt.timedelta | None = None,
                 prune_interval_s: float = _PRUNE_INTERVAL_S,
                 stall_check_s: float | None = DEFAULT_STALL_CHECK_S,
                 probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
                 reconnect_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        _check_stall(stall_check_s, probe_timeout_s)
        self.target = target
        # Given: also retry for that long after the first failure, however many attempts
        # that takes (pauses up to 10 s), then raise TargetUnavailable.
        self._reconnect_s = reconnect_s
        self._stall_check_s = stall_check_s
        self._probe_timeout_s = probe_timeout_s
        self._retention_s = _retention_seconds(tombstone_retention)
        self._prune_interval_s = prune_interval_s
        self._clock = clock
        self._next_prune: float | None = None  # None: after the first batch
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        step = target.step
        self._applied = Metrics.counter(step, 'rows_applied')
        self._stale = Metrics.counter(step, 'rows_stale')
        self._dead = Metrics.counter(step, 'dead_letters')
        self._messages = Metrics.counter(step, 'messages_ignored')
        self._unkeyed = Metrics.counter(step, 'deletes_without_key')
        self._batch_size = Metrics.distribution(step, 'batch_size')
        self._latency = Metrics.distribution(step, 'apply_latency_ms')
        self._per_table: dict[TargetTable, Any] = {}
        self._connected = False
        # (target, schema) pairs the target table is known to hold, and its columns then.
        self._fitted: set[tuple[TargetTable, TableSchema]] = set()
        self._target_columns: dict[TargetTable, frozenset[str]] = {}
        # True while this lane waits for the batch before, on another lane (whose own stall
        # check looks at it): this lane's check then has nothing of its own to say.
        self._awaiting = False
        # The source table each target table holds the rows of, where the target keeps no record.
        self._sources: dict[TargetTable, str] = {}
        self._altered = Metrics.counter(step, 'tables_altered')
        self._pruned = Metrics.counter(step, 'tombstones_pruned')
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        # Batches submitted and not drained yet, oldest first, at most one per lane.
        self._in_flight: collections.deque[concurrent.futures.Future[_Outcome]] = \
            collections.deque()
        self._lanes: list[Applier] = [self]  # the others are made on first use
        self._submitted = 0

    def open(self) -> None:
        self._retry(lambda: None)

    def close(self) -> None:
        """Wait for the batches in flight (their outcome is lost: call ``drain`` first to have
        it), stop the writer threads and close the connections."""
        try:
            self.drain()
        except Exception:  # closing after a failure: it was raised to the caller already
            pass
        finally:
            for lane in self._lanes:
                if lane._writer is not None:
                    lane._writer.shutdown()
                    lane._writer = None
                lane.target.close()
                lane._connected = False

    def apply(self, events: Sequence[ChangeEvent]) -> list[tuple[DeadLetter, ChangeEvent]]:
        """Apply ``events`` and commit; returns the dead letters (with their events)."""
        letters = self.drain()
        if events:
            letters += self._counted(self._write_batch(self._prepare(events)))
        return letters

    def submit(self, events: Sequence[ChangeEvent]) -> list[tuple[DeadLetter, ChangeEvent]]:
        """Start applying ``events`` on a writer thread; returns the dead letters of the
        batches submitted before that are committed by now: with every lane busy, first the
        oldest (a failure of it is raised here)."""
        if not events:
            return []
        prepared = self._prepare(events)  # while the batches before are written
        lanes = max(1, self.target.lanes)
        letters: list[tuple[DeadLetter, ChangeEvent]] = []
        while len(self._in_flight) >= lanes:
            letters += self._drain_oldest()
        while self._in_flight and self._in_flight[0].done():
            letters += self._drain_oldest()
        lane = self._lane(self._submitted % lanes)
        self._submitted += 1
        previous = self._in_flight[-1] if self._in_flight else None
        if lane._writer is None:
            lane._writer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f'{self.target.step} writer')
        _fast_switching(True)
        try:
            self._in_flight.append(lane._writer.submit(lane._write_batch, prepared, previous))
        except BaseException:
            _fast_switching(False)
            raise
        return letters

    def drain(self) -> list[tuple[DeadLetter, ChangeEvent]]:
        """Wait for the batches in flight, if any; their dead letters (the first failure is
        raised, once every batch in flight is done)."""
        concurrent.futures.wait(list(self._in_flight))
        letters: list[tuple[DeadLetter, ChangeEvent]] = []
        while self._in_flight:
            letters += self._drain_oldest()
        return letters

    def _drain_oldest(self) -> list[tuple[DeadLetter, ChangeEvent]]:
        future = self._in_flight.popleft()
        try:
            outcome = future.result()
        except BaseException:
            for rest in self._in_flight:  # they never write after this one failed
                concurrent.futures.wait([rest])
                _fast_switching(False)
            self._in_flight.clear()
            raise
        finally:
            _fast_switching(False)
        return self._counted(outcome)

    def _lane(self, index: int) -> Applier:
        """Lane ``index``: this Applier for 0, else one more on a connection of its own, which
        shares what the sink knows of the target tables (and leaves pruning to lane 0)."""
        while len(self._lanes) <= index:
            lane = Applier(self.target.lane(), max_attempts=self._max_attempts,
                           backoff_s=self._backoff_s, max_backoff_s=self._max_backoff_s,
                           stall_check_s=self._stall_check_s,
                           probe_timeout_s=self._probe_timeout_s,
                           reconnect_s=self._reconnect_s, clock=self._clock)
            lane._fitted, lane._target_columns = self._fitted, self._target_columns
            lane._sources = self._sources
            self._lanes.append(lane)
        return self._lanes[index]

    def _prepare(self, events: Sequence[ChangeEvent]) -> _Outcome:
        """Plan the batch and let the target render it ahead: no connection needed."""
        outcome = _Outcome(plan_batch(events, self.target.target_of), time.monotonic())
        for tb in outcome.plan.tables.values():
            # Only for a table the sink knows fits every schema of the batch; rendered
            # against the columns known now (the writer checks they still are).
            columns = self._target_columns.get(tb.target)
            if columns is None or any((tb.target, s) not in self._fitted for s in tb.schemas):
                continue
            tb.target_columns = columns
            # The upserts as they are when no tombstone or truncate mark makes one stale:
            # nearly always (else ``Rendered.matches`` fails and they are rendered again).
            upserts = [c for c in tb.changes.values() if c.row is not None] if tb.keyed else []
            if not upserts:
                continue
            try:
                groups = self.target.render_upserts(tb, upserts)
            except Exception:  # rendered again in the transaction, with its proper errors
                continue
            if groups is not None:
                tb.prepared = Rendered(columns, upserts, groups)
        return outcome

    def _write_batch(self, outcome: _Outcome,
                     previous: concurrent.futures.Future[_Outcome] | None = None) -> _Outcome:
        """Everything a batch does on the connection (on a writer thread for ``submit``),
        committed after ``previous`` (the batch submitted before it, on another lane)."""
        plan = outcome.plan
        if plan.unkeyed_deletes:
            _LOG.warning('%d delete(s) of table(s) without a key not applied (no row identity): %s',
                         len(plan.unkeyed_deletes),
                         sorted({e.table.name for e in plan.unkeyed_deletes}))
        for event in plan.incomplete_snapshots:
            _LOG.warning(
                '%s: the snapshot of %s left %d row(s) out (dead letters): rows the target '
                'holds from before it are kept, since one of them may be such a row, even '
                'where the source deleted them meanwhile; take the snapshot again once the '
                'dead letters are dealt with', self.target.step, event.table.name,
                event.message.get('skipped'))  # type: ignore[union-attr]
        tables = [*plan.tables.values(), *plan.strays.values()]
        if previous is not None and not tables:
            self._await(previous)
        if tables:
            try:
                done = self._retry(
                    lambda: self._write(tables, row_by_row=False, previous=previous))
            except Exception as exc:
                if not self._rejected(exc):
                    raise
                _LOG.warning('batch of %d event(s) rejected (%s); retrying row by row',
                             plan.size, self.target.describe(exc))
                done = self._retry(lambda: self._write(tables, row_by_row=True))
            outcome.written = done
        outcome.written.letters[:0] = [(self._letter(reason, e), e) for e, reason in plan.rejected]
        outcome.finished = time.monotonic()
        outcome.pruned = self._prune()
        return outcome

    def _counted(self, outcome: _Outcome) -> list[tuple[DeadLetter, ChangeEvent]]:
        """Count a finished batch into the metrics; its dead letters."""
        plan, written = outcome.plan, outcome.written
        if plan.messages:
            self._messages.inc(plan.messages)
        if plan.unkeyed_deletes:
            self._unkeyed.inc(len(plan.unkeyed_deletes))
        self._count(written)
        if written.letters:
            self._dead.inc(len(written.letters))
        self._batch_size.update(plan.size)
        self._latency.update(int((outcome.finished - outcome.started) * 1000))
        if outcome.pruned:
            self._pruned.inc(outcome.pruned)
        return written.letters

    def _prune(self) -> int:
        """Delete tombstones older than the retention, if due; never fails the batch (which
        is committed): a failed prune is logged and tried again at the next interval.  The
        number pruned."""
        if self._retention_s is None or not self._connected:
            return 0
        now = self._clock()
        if self._next_prune is not None and now < self._next_prune:
            return 0
        self._next_prune = now + self._prune_interval_s
        target = self.target
        try:
            with self._watched():
                pruned = target.prune_tombstones(self._retention_s, _PRUNE_LIMIT)
        except Exception as exc:
            target.rollback()
            _LOG.warning('%s: pruning tombstones failed (next try in %.0f s): %s', target.step,
                         self._prune_interval_s, target.describe(exc))
            if target.is_retryable(exc):  # maybe a lost connection: the next batch reconnects
                target.close()
                self._connected = False
            return 0
        if pruned:
            _LOG.info('%s pruned %d tombstone(s) older than %.0f s', target.step, pruned,
                      self._retention_s)
        if pruned >= _PRUNE_LIMIT:  # more to do: again after the next batch
            self._next_prune = now
        return pruned

    def _rejected(self, exc: BaseException) -> bool:
        """The target refused the data (as opposed to failing to talk to us)."""
        return isinstance(exc, self.target.permanent) and not self.target.is_retryable(exc)

    def _count(self, written: _Written) -> None:
        for target, count in written.applied.items():
            self._applied.inc(count)
            counter = self._per_table.get(target)
            if counter is None:
                counter = self._per_table[target] = Metrics.counter(
                    self.target.step, f'rows_applied:{target}')
            counter.inc(count)
        if written.stale:
            self._stale.inc(written.stale)

    def _letter(self, error: str, event: ChangeEvent) -> DeadLetter:
        # The event with its schema, so pipelines.redrive can apply it once the cause is fixed.
        return DeadLetter(step=self.target.step, error=error, payload=event_payload(event),
                          source=f'{event.table.name}@{event.source.sort_key}')

    def _retry(self, work: Callable[[], _T]) -> _T:
        target = self.target
        failed_at: float | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._watched():
                    if not self._connected:
                        target.connect()
                        self._connected = True
                    return work()
            except Exception as exc:
                target.rollback()
                if not target.is_retryable(exc):
                    raise
                now = time.monotonic()
                failed_at = now if failed_at is None else failed_at
                timed = self._reconnect_s is not None
                if attempt >= self._max_attempts and (
                        self._reconnect_s is None or now - failed_at >= self._reconnect_s):
                    _LOG.error('%s: giving up after %d attempts: %s', target.step, attempt,
                               target.describe(exc))
                    target.close()  # the next batch (a retried bundle) starts on a new one
                    self._connected = False
                    if timed:
                        raise TargetUnavailable(
                            f'{target.step}: the target has not answered for '
                            f'{now - failed_at:.0f} s ({" ".join(target.describe(exc).split())}'
                            '); run again once it is back: what it did not commit is read '
                            'again') from exc
                    raise
                delay = min(self._backoff_s * 2 ** (attempt - 1),
                            _LONGEST_RECONNECT_PAUSE_S if timed else self._max_backoff_s)
                _LOG.warning('%s: %s; reconnecting in %.1f s (attempt %d%s)', target.step,
                             target.describe(exc), delay, attempt,
                             f' of {self._max_attempts}' if not timed else
                             f', for up to {self._reconnect_s:.0f} s')
                target.close()
                self._connected = False
                time.sleep(delay)

    def _watched(self) -> contextlib.AbstractContextManager[None]:
        if self._stall_check_s is None:
            return contextlib.nullcontext()
        return stall_watch(self.target.fileno, self._stall_check_s, self._check_stalled,
                           'the target')

    def _await(self, previous: concurrent.futures.Future[_Outcome]) -> None:
        self._awaiting = True
        try:
            _after(previous)
        finally:
            self._awaiting = False

    def _check_stalled(self, waited: float) -> None:
        """On the stall watch's thread: raises when the server does not answer a new
        connection either (the batch's connection is then shut down); else says what the
        batch waits for."""
        target = self.target
        if self._awaiting:  # not on this connection: the other lane's check says what
            _LOG.info('%s: still waiting after %.0f s for the batch before this one, on the '
                      'other connection', target.step, waited)
            return
        try:
            doing = target.probe(self._probe_timeout_s)
        except OSError as exc:  # no answer, or the session is gone (Target.probe)
            raise NoAnswer(f'nor did a check from a new connection within '
                           f'{self._probe_timeout_s:g} s ({target.describe(exc)})') from exc
        except Exception as exc:  # an error from the server: it is there
            doing = f'(a check from a new connection got {target.describe(exc)})'
        _LOG.warning('%s: still waiting for the target after %.0f s; it answers a new '
                     'connection, so the batch waits on: %s', target.step, waited, doing)

    def _fit(self, tb: TableBatch,
             fitted: dict[TargetTable, frozenset[str]]) -> str | None:
        """Create or ALTER ``tb``'s target so it holds every schema of the batch; None when
        done (``fitted`` gets the table's columns), else why it cannot be."""
        target = self.target
        todo = [s for s in tb.schemas if (tb.target, s) not in self._fitted]
        if not todo:
            tb.target_columns = self._target_columns[tb.target]
            return None
        try:
            existing = target.columns(tb.target)
            if not existing:
                target.create(tb.target, todo[0], tb.connector)
                _LOG.info('%s created table %s', target.step, tb.target)
                existing = target.columns(tb.target)
            # Two source tables in one target table would overwrite and delete each other's
            # rows (same keys, each one's truncates and snapshot ends): the first one keeps it.
            source = tb.table.name
            owner = target.claim(tb.target, source) or self._sources.setdefault(tb.target,
                                                                                 source)
            # A target recorded before names quoted their dotted parts has the plain join.
            if owner != source and owner != tb.table.dotted_name:
                return self._shared(tb.target, owner, source)
            high_water: str | None = None
            for schema in todo:
                wanted = functools.partial(self._column_type, tb, schema)
                # A schema older than another of the batch needs only to fit (its rows were
                # converted at the source like the target's column; MariaDB may have altered
                # the table already in an attempt that then failed).
                older = schema is not tb.schemas[-1]
                alteration = plan_alteration(existing, schema, wanted, target.dialect,
                                             older=older)
                if ((alteration.problems and not older) or alteration.narrow
                        or alteration.mark or alteration.readd):
                    # So do rows from before the target's shape (a replay after a restart).
                    # A real change the target cannot follow never gets a row applied, so its
                    # rows are always newer than everything the table reflects.  Nor does a
                    # replay round the target's values, or mark a column dropped that a newer
                    # schema has again, or take a marked column it still has for one added
                    # again (and drop the old values the target keeps for it).
                    if high_water is None:
                        high_water = target.high_water(tb.target)
                    if tb.since[tb.schemas.index(schema)] < high_water:
                        unmarked = {name: dataclasses.replace(column, dropped=False)
                                    for name, column in existing.items()}
                        alteration = dataclasses.replace(
                            plan_alteration(unmarked, schema, wanted, target.dialect,
                                            older=True), mark=())
                if alteration.problems:
                    return (f'{target.step} cannot make {tb.target} hold the rows of '
                            f'{schema.name} as the source now has it: '
                            + '; '.join(alteration.problems))
                if alteration:
                    target.alter(tb.target, alteration)
                    self._altered.inc()
                    done = {
                        'added': [c[0] for c in alteration.add if c[0] not in alteration.readd]
                        + list(alteration.hidden),
                        'widened': [f'{w.column} {w.old} -> {w.new}' for w in alteration.widen],
                        'narrowed (rounding its values as the source did)':
                            [f'{w.column} {w.old} -> {w.new}' for w in alteration.narrow],
                        'made nullable': [c.name for c in alteration.relax],
                        'marked as dropped at the source': [c.name for c in alteration.mark],
                        'added again in place of the kept column': list(alteration.readd),
                    }
                    _LOG.info('%s altered %s for a new schema of %s: %s', target.step,
                              tb.target, schema.name,
                              ', '.join(f'{what} {names}' for what, names in done.items()
                                        if names))
                    existing = target.columns(tb.target)
                if alteration.kept:
                    _LOG.info('%s keeps column(s) %s of %s that %s no longer has: NULL in the '
                              'rows written from now on', target.step, list(alteration.kept),
                              tb.target, schema.name)
        except Exception as exc:
            if not self._rejected(exc):
                raise
            return f'cannot create or alter {tb.target}: {target.describe(exc)}'
        tb.target_columns = fitted[tb.target] = frozenset(existing)
        return None

    def _shared(self, target: TargetTable, owner: str, source: str) -> str:
        """Why ``source``'s rows cannot go into ``target``, which holds ``owner``'s."""
        own = source.replace('.', '_')
        unclaim = self.target.unclaim(target)
        replaces = (f'; if {source} replaces {owner} (a table renamed or moved at the source), '
                    f'run {unclaim} and restart') if unclaim else ''
        return (f'{self.target.step} cannot write the rows of {source} into {target}: that '
                f'table holds the rows of {owner}, and two source tables in one target table '
                "overwrite and delete each other's rows; give one of them a table of its own "
                f'with the sink\'s route option (route={{{source!r}: {own!r}}}) or a pipeline '
                f'with another target database{replaces}')

    def _column_type(self, tb: TableBatch, schema: TableSchema, column: Column) -> str:
        return self.target.column_type(column, tb.connector, column.name in schema.key)

    def _fit_all(self, tables: list[TableBatch], written: _Written,
                 fitted: dict[TargetTable, frozenset[str]]) -> list[TableBatch]:
        """The tables whose targets hold their rows; the others' events become dead letters."""
        ready = []
        for tb in tables:
            error = self._fit(tb, fitted)
            if error is None:
                ready.append(tb)
                continue
            _LOG.error('%s', error)
            written.letters += [(self._letter(error, e), e) for e in tb.events()]
        return ready

    def _write(self, tables: list[TableBatch], row_by_row: bool,
               previous: concurrent.futures.Future[_Outcome] | None = None) -> _Written:
        target = self.target
        written = _Written()
        fitted: dict[TargetTable, frozenset[str]] = {}
        if not target.transactional_ddl:  # its DDL would commit the batch transaction
            if previous is not None:  # DDL of one batch before the commit of the one before
                self._await(previous)
            tables = self._fit_all(tables, written, fitted)
        target.begin(row_by_row)
        for tb in tables:
            tb.staged = None
            if not row_by_row and tb.prepared is not None:
                target.stage_ahead(tb)  # while the batch before is written
        if previous is not None:
            self._await(previous)
        # In one order for every writer; a MariaDB table of the DSN's database has no schema.
        target.lock(sorted({tb.target for tb in tables}, key=lambda t: (t.schema or '', t.table)))
        if target.transactional_ddl:  # after the lock: one writer alters a table at a time
            tables = self._fit_all(tables, written, fitted)
        for tb in tables:
            marks = target.tombstones(tb.target, list(tb.changes.values()))
            truncated = marks.get(TRUNCATED)
            if tb.truncate and (truncated is None or tb.truncate > truncated):
                pos = tb.truncate
                if self._step(row_by_row, functools.partial(target.truncate, tb.target, pos),
                              tb.truncate_events, written):
                    truncated = pos
            deletes, upserts = [], []
            floor = truncated or ''
            keyed_marks = len(marks) > (TRUNCATED in marks)  # else no key hash is needed
            for change in tb.changes.values():
                if change.pos <= floor or (keyed_marks
                                           and change.pos <= marks.get(change.key_hash, '')):
                    written.stale += 1
                elif change.row is None:
                    deletes.append(change)
                else:
                    upserts.append(change)
            appends = [c for c in tb.appends if truncated is None or c.pos > truncated]
            written.stale += len(tb.appends) - len(appends)
            # Values an update that moved a key left unchanged: under the old key, which the
            # deletes below remove; written into the new key's row once it is there.
            moved = [c for c in upserts if c.carry is not None]
            carried = target.carried(tb, moved) if moved else {}
            if not row_by_row:
                if deletes:
                    target.delete(tb, deletes)
                if upserts or tb.staged is not None:
                    # None left (all stale): it drops the rows staged ahead for them, which
                    # would otherwise go in with the next batch.
                    written.stale += target.upsert(tb, upserts)
                if appends:
                    target.append(tb, appends)
                done = deletes + upserts + appends
            else:
                done = []
                for change in deletes + upserts + appends:
                    newer = functools.partial(self._holds_newer, tb, change) \
                        if change.row is not None and change.key else None
                    if self._step(True, functools.partial(self._one, tb, change), change.events,
                                  written, newer):
                        done.append(change)
            if carried:
                target.set_carried(tb, [c for c in moved if id(c) in carried], carried)
            revived = [c.key_hash for c in done if c.row is not None and c.key_hash in marks] \
                if keyed_marks else []
            if revived:
                target.drop_tombstones(tb.target, revived)
            if tb.snapshot and tb.snapshot > floor:
                # After the snapshot's rows: what it did not bring again was deleted meanwhile
                # (an interrupted snapshot taken again, a target that already held rows).
                self._step(row_by_row, functools.partial(target.truncate, tb.target,
                                                         tb.snapshot),
                           tb.snapshot_events, written)
            elif tb.snapshot and tb.snapshot < floor:
                # A truncate streamed after a backfill's position does this; so does a source
                # whose positions started over (a database moved to another PostgreSQL
                # cluster), whose every row this target would now take for an old one.
                _LOG.warning(
                    '%s: a snapshot of %s at %s arrived after the table was emptied at the '
                    'later position %s: its rows older than that are skipped. If the source '
                    'moved to another server or cluster (positions started over), the target '
                    'no longer follows it: empty it and take the snapshot again',
                    target.step, tb.table.name, tb.snapshot, floor)
            written.applied[tb.target] = len(done)
        target.commit()
        # Only now: a rolled-back transaction took its ALTERs with it (PostgreSQL).
        self._target_columns.update(fitted)
        self._fitted.update((tb.target, s) for tb in tables for s in tb.schemas)
        return written

    def _one(self, tb: TableBatch, change: RowChange) -> None:
        if change.row is None:
            self.target.delete(tb, [change])
        elif change.key:
            self.target.upsert(tb, [change])
        else:
            self.target.append(tb, [change])

    def _step(self, row_by_row: bool, work: Callable[[], object], events: list[ChangeEvent],
              written: _Written, newer: Callable[[], bool] | None = None) -> bool:
        """Run ``work``; row by row, inside a savepoint whose failure dead-letters ``events``,
        unless ``newer()`` says the target already holds a newer state of the row: the
        target checks a row's constraints before the guard that would have skipped it, so an
        old state it rejects (a redriven letter, a replay) is stale, not a dead letter."""
        if not row_by_row:
            work()
            return True
        target = self.target
        target.savepoint()
        try:
            work()
        except Exception as exc:
            if not self._rejected(exc):
                raise
            target.rollback_to()
            if newer is not None and newer():
                written.stale += 1
                return False
            error = target.describe(exc)
            written.letters += [(self._letter(error, e), e) for e in events]
            return False
        target.release()
        return True

    def _holds_newer(self, tb: TableBatch, change: RowChange) -> bool:
        assert change.row is not None
        try:
            row = self.target.read_row(tb, change.table,
                                       tuple(change.row[k] for k in change.table.key), (POS,))
        except Exception:  # it cannot tell: the rejection stands
            return False
        return row is not None and row[0] is not None and str(row[0]) >= change.pos


class _ApplyChangesFn(beam.DoFn):
    """Buffers a bundle's events (flushing every ``max_batch_size``) and applies them.

    Dead letters are emitted in the global window: ``process`` takes no window or timestamp
    parameter because Beam's per-element cost for one is ~5 µs, as much as applying the row.
    """

    def __init__(self, target: Target, *, max_batch_size: int, max_attempts: int,
                 backoff_s: float, tombstone_retention: dt.timedelta | None,
                 stall_check_s: float | None, reconnect_s: float | None) -> None:
        self._target = target
        self._reconnect_s = reconnect_s
        self._max_batch_size = max_batch_size
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._tombstone_retention = tombstone_retention
        self._stall_check_s = stall_check_s

    def setup(self) -> None:
        self._applier = Applier(self._target, max_attempts=self._max_attempts,
                                backoff_s=self._backoff_s,
                                tombstone_retention=self._tombstone_retention,
                                stall_check_s=self._stall_check_s,
                                reconnect_s=self._reconnect_s)
        self._applier.open()

    def start_bundle(self) -> None:
        self._pending: list[ChangeEvent] = []

    def process(self, element: Any) -> Any:
        # Events one at a time or a source's batches (lists).  A plain function, not a
        # generator: Beam calls it faster, and it rarely outputs.
        pending = self._pending
        letters: list[DeadLetter] = []
        for event in element if isinstance(element, list) else (element,):
            if isinstance(event, ChangeEvent):
                pending.append(event)
            elif isinstance(event, RenderedChanges):  # a wiring mistake, not bad data
                raise TypeError(f'{event.table.name}: rendered JSON lines reached a database '
                                'sink; read without render_json')
            else:
                letters.append(self._not_an_event(event))
        while len(self._pending) >= self._max_batch_size:
            letters.extend(self._flush(self._max_batch_size))
        return [beam.pvalue.TaggedOutput(DEAD_LETTER, letter) for letter in letters] \
            if letters else None

    def _not_an_event(self, element: Any) -> DeadLetter:
        return DeadLetter(step=self._target.step, payload=element,
                          error=f'expected a ChangeEvent, got {type(element).__name__}')

    def finish_bundle(self) -> Any:
        # The bundle (and with it the source's acknowledgement) completes only once every
        # batch of it is committed.
        letters = self._flush() + [letter for letter, _ in self._applier.drain()]
        for letter in letters:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, WindowedValue(letter, MIN_TIMESTAMP, (GlobalWindow(),)))

    def _flush(self, limit: int | None = None) -> list[DeadLetter]:
        """Hands the first ``limit`` pending events (all when None) to the writer thread as
        one transaction; the dead letters of the batch written before."""
        if limit is None or limit >= len(self._pending):
            pending, self._pending = self._pending, []
        else:
            pending, self._pending = self._pending[:limit], self._pending[limit:]
        if not pending:
            return []
        return [letter for letter, _ in self._applier.submit(pending)]

    def teardown(self) -> None:
        applier = getattr(self, '_applier', None)
        if applier is not None:
            applier.close()


class WriteChanges(beam.PTransform):
    """What the database sinks share: option checks, the applying DoFn, dead letters out.

    ``route`` maps source ``schema.table`` to a target (see ``routing``); ``max_batch_size``
    bounds the events applied per transaction (a bundle is flushed at its end in any case);
    a lost connection is retried ``max_attempts`` times, ``backoff_s`` doubling, then raised;
    with ``reconnect_secs``, also for at least that long (pauses up to 10 s), then
    :class:`TargetUnavailable` is raised (the CLI passes its ``--reconnect_secs``).
    ``tombstone_retention`` is how long a deleted key's tombstone (and a truncate mark) keeps
    stopping late, older changes of it; then it is pruned (None or zero: kept forever).
    A batch still waiting for the target after ``stall_check_s`` is checked from a new
    connection (see :class:`Applier`; None: never).
    Subclasses parse their DSN and say which :class:`Target` applies the changes.
    """

    def __init__(self, *, route: Route = None, max_batch_size: int = 5000,
                 max_attempts: int = 6, backoff_s: float = 0.5,
                 tombstone_retention: dt.timedelta | None = DEFAULT_TOMBSTONE_RETENTION,
                 stall_check_s: float | None = DEFAULT_STALL_CHECK_S,
                 reconnect_secs: float | None = None) -> None:
        super().__init__()
        self._reconnect_s = reconnect_secs
        check_route(route)
        _retention_seconds(tombstone_retention)
        _check_stall(stall_check_s, DEFAULT_PROBE_TIMEOUT_S)
        self._stall_check_s = stall_check_s
        if max_batch_size < 1:
            raise ValueError(f'max_batch_size {max_batch_size} must be at least 1')
        if max_attempts < 1:
            raise ValueError(f'max_attempts {max_attempts} must be at least 1')
        self._route = route
        self._max_batch_size = max_batch_size
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._tombstone_retention = tombstone_retention

    def check_connection(self) -> None:
        """Connect to the target once, and close: the driver's error when it cannot be reached
        or refuses (a wrong password, an unknown database).  The pipeline asks before its
        source sets anything up; the running sink retries what fails later."""
        target = self._target()
        try:
            target.connect()
        finally:
            target.close()

    def _target(self) -> Target:
        raise NotImplementedError

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        fn = _ApplyChangesFn(self._target(), max_batch_size=self._max_batch_size,
                             max_attempts=self._max_attempts, backoff_s=self._backoff_s,
                             tombstone_retention=self._tombstone_retention,
                             stall_check_s=self._stall_check_s,
                             reconnect_s=self._reconnect_s)
        results = events | 'ApplyChanges' >> beam.ParDo(fn).with_outputs(DEAD_LETTER,
                                                                            main='applied')
        return results[DEAD_LETTER]
