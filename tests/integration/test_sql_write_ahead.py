"""Applier.submit: the next batch is planned and rendered while the one before is written.

What a user checks: the target still equals the source, late events still lose against
tombstones written by the batch in flight, failures and dead letters still reach the caller.
"""
from __future__ import annotations

import random
import sys
import threading
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


def test_postgres_target_equals_the_source_when_batches_are_written_ahead(pg_db):
    events = stream()
    expected = pg_expected(events)
    shuffled = list(events)
    random.Random(5).shuffle(shuffled)
    default_interval = sys.getswitchinterval()
    applier = Applier(_PostgresTarget(pg_db.dsn))
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

        def spy_groups(tb: Any, changes: Any, *, ahead: bool) -> Any:
            rendered()
            return real_groups(tb, changes, ahead=ahead)
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
    # The rejected row of the batch in flight comes back when the next batch goes in.
    letters = applier.submit([change('c', 9, after={'id': 4, 'note': 'next'})])
    assert [(e.after['id'], 'no_bad' in letter.error) for letter, e in letters] == [(2, True)]
    assert applier.drain() == []
    applier.close()
    with pg_db.connect() as conn:
        assert conn.execute('SELECT id, note FROM shop.items ORDER BY id').fetchall() == \
            [(1, 'a'), (3, 'fine'), (4, 'next')]
