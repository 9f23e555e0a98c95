"""Applier.submit: the next batch is planned and rendered while the one before is written.

What a user checks: the target still equals the source, late events still lose against
tombstones written by the batch in flight, failures and dead letters still reach the caller.
"""
from __future__ import annotations

import random
import sys
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.integration.test_sql_sinks import (
    change,
    cut_connections,
    my_expected,
    my_rows,
    pg_expected,
    pg_rows,
    stream,
)
from transforms.envelope import ChangeEvent
from transforms.sinks.sql import postgres
from transforms.sinks.sql.apply import Applier
from transforms.sinks.sql.postgres import _PostgresTarget

pytestmark = pytest.mark.integration


def submit_all(applier: Applier, events: list[ChangeEvent], size: int) -> list[Any]:
    letters = []
    for start in range(0, len(events), size):
        letters += applier.submit(events[start:start + size])
    return letters + applier.drain()


@pytest.mark.parametrize('connections', [2, 1])
def test_postgres_target_equals_the_source_when_batches_are_written_ahead(pg_db, connections):
    events = stream()
    expected = pg_expected(events)
    shuffled = list(events)
    random.Random(5).shuffle(shuffled)
    default_interval = sys.getswitchinterval()
    applier = Applier(_PostgresTarget(pg_db.dsn, connections=connections))
    applier.open()
    assert submit_all(applier, events, 13) == []
    assert pg_rows(pg_db) == expected
    # Replayed from the middle, then shuffled in small batches: nothing changes.
    assert submit_all(applier, events[len(events) // 2:], 11) == []
    assert submit_all(applier, shuffled, 7) == []
    assert pg_rows(pg_db) == expected
    assert sys.getswitchinterval() == default_interval  # given back once nothing is in flight
    applier.close()


def test_mariadb_target_equals_the_source_when_batches_are_written_ahead(mariadb_db):
    from transforms.sinks.sql.mysql import _MySQLTarget

    events = stream(mariadb_safe=True)
    applier = Applier(_MySQLTarget(mariadb_db.dsn))
    applier.open()
    assert submit_all(applier, events, 13) == []
    assert submit_all(applier, list(reversed(events)), 9) == []
    assert my_rows(mariadb_db) == my_expected(events)
    applier.close()


@pytest.mark.parametrize('target', ['postgres', 'mariadb'])
def test_rows_rendered_ahead_are_used_only_while_they_still_fit(target, request, monkeypatch):
    # Each rendering of the upserts' rows: 'ahead' on the caller's thread, or 'in tx' on the
    # writer thread, in the batch's transaction.
    renders: list[str] = []

    def rendered() -> None:
        renders.append('ahead' if threading.current_thread() is threading.main_thread()
                       else 'in tx')
    if target == 'postgres':
        db = request.getfixturevalue('pg_db')
        make: Any = _PostgresTarget
        real_groups = postgres._upsert_groups

        def spy_groups(tb: Any, changes: Any, *, ahead: bool, codes: Any = None) -> Any:
            rendered()
            return real_groups(tb, changes, ahead=ahead, codes=codes)
        monkeypatch.setattr(postgres, '_upsert_groups', spy_groups)
        table = 'shop.items'
    else:
        from transforms.sinks.sql.mysql import _MySQLTarget
        db = request.getfixturevalue('mariadb_db')
        make = _MySQLTarget
        real_rows = _MySQLTarget._rows

        def spy_rows(self: Any, tb: Any, changes: Any, with_id: bool) -> Any:
            if not with_id:
                rendered()
            return real_rows(self, tb, changes, with_id)
        monkeypatch.setattr(_MySQLTarget, '_rows', spy_rows)
        table = 'items'

    def row(key: int, lsn: int) -> dict[str, Any]:
        return {'id': key, 'note': f'{key}@{lsn}'}

    applier = Applier(make(db.dsn))
    applier.open()
    # The table does not exist yet: nothing to render against, so rendered in the transaction.
    assert applier.submit([change('c', 3, after=row(1, 3)), change('c', 6, after=row(2, 6))]) \
        == []
    assert applier.drain() == []
    assert renders == ['in tx']
    # A known table: rendered ahead, and that text is what is written (once, not twice).
    assert applier.submit([change('u', 9, after=row(1, 9))]) == []
    assert applier.drain() == []
    assert renders == ['in tx', 'ahead']
    # The delete of key 2 is in flight while a late insert of key 2 is rendered ahead; its
    # tombstone makes that insert stale, so the rendering no longer fits and is redone.
    assert applier.submit([change('d', 12, before={'id': 2})]) == []
    assert applier.submit([change('c', 10, after=row(2, 10)), change('c', 15, after=row(3, 15))]) \
        == []
    assert applier.drain() == []
    assert renders == ['in tx', 'ahead', 'ahead', 'in tx']
    with db.connect() as conn:
        cur = conn.cursor()
        cur.execute(f'SELECT id, note FROM {table}')
        assert dict(cur.fetchall()) == {1: '1@9', 3: '3@15'}
    applier.close()


def test_a_failure_of_the_batch_in_flight_is_raised_to_the_caller(pg_db):
    applier = Applier(_PostgresTarget(pg_db.dsn), max_attempts=1)
    applier.open()
    cut_connections(pg_db)
    assert applier.submit([change('c', 3, after={'id': 1, 'note': 'lost'})]) == []
    with pytest.raises(psycopg.OperationalError):
        applier.drain()
    # Nothing is left in flight: the next batch reconnects and lands.
    assert applier.apply([change('c', 6, after={'id': 2, 'note': 'landed'})]) == []
    applier.close()
    with pg_db.connect() as conn:
        assert conn.execute('SELECT id, note FROM shop.items').fetchall() == [(2, 'landed')]


def test_rows_rejected_in_flight_come_back_with_the_next_submit(pg_db):
    applier = Applier(_PostgresTarget(pg_db.dsn))
    applier.open()
    assert applier.apply([change('c', 3, after={'id': 1, 'note': 'a'})]) == []
    with pg_db.connect() as conn:
        conn.execute("ALTER TABLE shop.items ADD CONSTRAINT no_bad CHECK (note <> 'bad')")
    assert applier.submit([change('c', 6, after={'id': 2, 'note': 'bad'}),
                           change('c', 7, after={'id': 3, 'note': 'fine'})]) == []
    # The rejected row of the batch in flight comes back once it is committed: from a later
    # submit (at the latest when every lane is busy) or from drain.
    letters = applier.submit([change('c', 9, after={'id': 4, 'note': 'next'})])
    letters += applier.submit([change('c', 10, after={'id': 5, 'note': 'last'})])
    assert [(e.after['id'], 'no_bad' in letter.error) for letter, e in letters] == [(2, True)]
    assert applier.drain() == []
    applier.close()
    with pg_db.connect() as conn:
        assert conn.execute('SELECT id, note FROM shop.items ORDER BY id').fetchall() == \
            [(1, 'a'), (3, 'fine'), (4, 'next'), (5, 'last')]


def _note(key: int, lsn: int) -> ChangeEvent:
    return change('c', lsn, after={'id': key, 'note': f'{key}@{lsn}'})


def _notes(db: Any) -> dict[int, str]:
    with db.connect() as conn:
        return dict(conn.execute('SELECT id, note FROM shop.items').fetchall())


def test_rows_staged_ahead_still_lose_to_a_tombstone_of_the_batch_before(pg_db, monkeypatch):
    """On two lanes a batch COPYs its rows into staging while the batch before it is still
    written, before that batch's tombstones exist: a late insert of a key the batch before
    deletes is staged, then found stale after the lock, and staged again without it."""
    staged, copies = [], []
    stage_ahead, copy = _PostgresTarget.stage_ahead, _PostgresTarget._copy

    def spy_stage(self: _PostgresTarget, tb: Any) -> None:
        stage_ahead(self, tb)
        staged.append(tb.staged is not None)

    def spy_copy(self: _PostgresTarget, stage: str, names: Any, chunks: Any,
                 binary: bool = False) -> None:
        copies.append(stage)
        copy(self, stage, names, chunks, binary)

    monkeypatch.setattr(_PostgresTarget, 'stage_ahead', spy_stage)
    monkeypatch.setattr(_PostgresTarget, '_copy', spy_copy)
    applier = Applier(_PostgresTarget(pg_db.dsn))
    applier.open()
    try:
        # Lanes take turns.  Lane 0 makes the table (nothing rendered ahead for it), each lane
        # its staging table; from then on rows go into staging before the lock.
        for lsn in (3, 6, 9, 12):
            assert applier.submit([_note(lsn, lsn), _note(2, lsn + 1)]) == []
            assert applier.drain() == []
        assert staged == [False, True, True]
        staged.clear()
        copies.clear()
        # Lane 0 deletes key 2 at 100; lane 1 stages a late insert of it (at 90) at once.
        assert applier.submit([change('d', 100, before={'id': 2})]) == []
        assert applier.submit([_note(2, 90), _note(5, 110)]) == []
        assert applier.drain() == []
    finally:
        applier.close()
    assert staged == [True]  # the inserts (the delete renders nothing ahead)
    # The delete's keys, the inserts staged ahead, then staged again without the stale one.
    assert len(copies) == 3, copies
    assert _notes(pg_db) == {3: '3@3', 6: '6@6', 9: '9@9', 12: '12@12', 5: '5@110'}


@pytest.mark.parametrize('connections', [2, 1])
def test_rows_staged_ahead_of_a_batch_found_all_stale_go_nowhere(pg_db, connections):
    """Late inserts of deleted keys, staged ahead, then every one stale after the lock: the
    batch merged nothing, and its rows stayed staged and went in with the next batch of the
    same connection. The deleted keys came back (or the next batch's own row of such a key
    made the merge fail, and that row became a dead letter)."""
    applier = Applier(_PostgresTarget(pg_db.dsn, connections=connections))
    applier.open()
    try:
        for lsn in (3, 6, 9, 12):  # each connection makes its staging table
            assert applier.submit([_note(lsn, lsn), _note(2, lsn + 1)]) == []
            assert applier.drain() == []
        assert applier.submit([_note(4, 20)]) == []
        assert applier.submit([change('d', 100, before={'id': 2}),
                               change('d', 101, before={'id': 4})]) == []
        assert applier.drain() == []
        for lsn in (90, 92):  # all stale, once on each connection
            assert applier.submit([_note(2, lsn), _note(4, lsn + 1)]) == []
            assert applier.drain() == []
        for lsn in (120, 130):
            assert applier.submit([_note(lsn, lsn), _note(lsn + 1, lsn + 1)]) == []
            assert applier.drain() == []
        assert applier.submit([_note(4, 140)]) == []
        assert applier.drain() == []
    finally:
        applier.close()
    assert _notes(pg_db) == {3: '3@3', 6: '6@6', 9: '9@9', 12: '12@12', 120: '120@120',
                             121: '121@121', 130: '130@130', 131: '131@131', 4: '4@140'}


def test_a_batch_after_one_that_failed_writes_nothing(pg_db):
    """The next batch, on the other lane, waits for the one before it to commit before it
    takes its locks; when that one fails, it writes nothing (batches commit in order, and the
    retried bundle writes both)."""
    applier = Applier(_PostgresTarget(pg_db.dsn), max_attempts=1)
    applier.open()
    try:
        for lsn in (3, 6):  # both lanes connected, each with its staging table
            assert applier.submit([_note(lsn, lsn)]) == []
        assert applier.drain() == []
        first = applier.target._conn.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(pg_db.dsn) as blocker:
            blocker.execute('LOCK TABLE shop.items IN ACCESS EXCLUSIVE MODE')
            assert applier.submit([_note(10, 30)]) == []  # lane 0: waits for the table
            assert applier.submit([_note(11, 33)]) == []  # lane 1: stages, waits for lane 0
            with pg_db.connect() as conn:
                deadline = time.monotonic() + 30
                while not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND "
                                       "wait_event_type = 'Lock'", (first,)).fetchone():
                    assert time.monotonic() < deadline, 'lane 0 never waited for the table'
                    time.sleep(0.02)
                conn.execute('SELECT pg_terminate_backend(%s)', (first,))
            blocker.rollback()
        with pytest.raises(psycopg.OperationalError):
            applier.drain()
        assert _notes(pg_db) == {3: '3@3', 6: '6@6'}
        # Both lanes write again.
        assert applier.submit([_note(10, 30)]) == []
        assert applier.submit([_note(11, 33)]) == []
        assert applier.drain() == []
    finally:
        applier.close()
    assert _notes(pg_db) == {3: '3@3', 6: '6@6', 10: '10@30', 11: '11@33'}


def test_rows_rendered_binary_for_one_connection_go_as_text_where_the_other_differs(pg_db):
    """Binary COPY values are read as exactly the staging column's type.  Rows are rendered
    for the staging table the sink knows (the first connection's); when the target's column
    type changed before the other connection made its own (not through the sink), the rows
    go there as text: binary int8 read as float8 would be a different number, silently."""
    from transforms.envelope import Column, Kind, TableSchema
    counts = TableSchema('shop', 'counts', (Column('id', Kind.INT64, 'bigint', nullable=False),
                                            Column('n', Kind.INT64, 'bigint')), key=('id',))
    applier = Applier(_PostgresTarget(pg_db.dsn))
    applier.open()
    assert applier.submit([change('c', 3, table=counts, after={'id': 1, 'n': 5})]) == []
    assert applier.drain() == []  # the first connection made the table and its staging table
    with pg_db.connect() as conn:
        conn.execute('ALTER TABLE shop.counts ALTER COLUMN n TYPE double precision')
    assert applier.submit([change('c', 6, table=counts, after={'id': 2, 'n': 7})]) == []
    assert applier.submit([change('c', 9, table=counts, after={'id': 3, 'n': 9})]) == []
    assert applier.drain() == []
    applier.close()
    with pg_db.connect() as conn:
        assert conn.execute('SELECT id, n FROM shop.counts ORDER BY id').fetchall() == \
            [(1, 5.0), (2, 7.0), (3, 9.0)]
