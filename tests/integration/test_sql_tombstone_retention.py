"""Tombstone retention of the SQL sinks against real PostgreSQL and MariaDB servers.

What a user checks: the tombstone tables stop growing (marks older than the retention are
pruned), a late stale event within the retention is still stopped, and keep-forever keeps
everything.  A tombstone's age is set by moving its ``written_at`` back in the database and the
prune interval runs on a fake clock, so nothing sleeps.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_sql_sinks import change, counter, run
from transforms.sinks.sql import WriteChangesToMySQL, WriteChangesToPostgres
from transforms.sinks.sql.apply import Applier
from transforms.sinks.sql.postgres import _PostgresTarget
from transforms.sinks.sql.statements import NEWEST

pytestmark = pytest.mark.integration

HOUR = dt.timedelta(hours=1)


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Target:
    """One database under test: its sink pieces and SQL to inspect and age its tombstones."""

    def __init__(self, kind: str, db: Any) -> None:
        self.kind = kind
        self.db = db

    def applier(self, **options: Any) -> Applier:
        if self.kind == 'postgres':
            target: Any = _PostgresTarget(self.db.dsn)
        else:
            from transforms.sinks.sql.mysql import _MySQLTarget
            target = _MySQLTarget(self.db.dsn)
        applier = Applier(target, **options)
        applier.open()
        return applier

    def sink(self, **options: Any) -> Any:
        if self.kind == 'postgres':
            return WriteChangesToPostgres(self.db.dsn, **options)
        return WriteChangesToMySQL(self.db.dsn, **options)

    @property
    def tombstones(self) -> str:
        return '_changebeam.tombstones' if self.kind == 'postgres' else '_changebeam_tombstones'

    def execute(self, statement: str) -> list[tuple]:
        if self.kind == 'postgres':
            with self.db.connect() as conn:
                cur = conn.execute(statement)
                return cur.fetchall() if cur.description else []
        with self.db.connect() as conn, conn.cursor() as cur:
            cur.execute(statement)
            rows = list(cur.fetchall())
            conn.commit()
            return rows

    def rows(self) -> dict[int, str]:
        table = 'shop.items' if self.kind == 'postgres' else 'items'
        return dict(self.execute(f'SELECT id, note FROM {table}'))

    def positions(self) -> list[str]:
        """The positions of the tombstones and truncate marks left (sort keys end in the lsn),
        not of the newest-tombstone mark (``'~'``, no older than any of them)."""
        key = 'key' if self.kind == 'postgres' else '`key`'
        return sorted(pos for pos, in self.execute(
            f"SELECT pos FROM {self.tombstones} WHERE {key} <> '{NEWEST}'"))

    def age(self, older_by: dt.timedelta, pos: str | None = None) -> None:
        """Move ``written_at`` back (of the tombstone at ``pos``, or of all)."""
        seconds = int(older_by.total_seconds())
        where = f" WHERE pos = '{pos}'" if pos else ''
        if self.kind == 'postgres':
            self.execute(f"UPDATE {self.tombstones} SET written_at = written_at - "
                         f"make_interval(secs => {seconds}){where}")
        else:
            self.execute(f'UPDATE {self.tombstones} SET written_at = written_at - '
                         f'INTERVAL {seconds} SECOND{where}')


@pytest.fixture(params=['postgres', 'mariadb'])
def target(request: Any) -> Target:
    fixture = 'pg_db' if request.param == 'postgres' else 'mariadb_db'
    return Target(request.param, request.getfixturevalue(fixture))


def row(key: int, lsn: int) -> dict[str, Any]:
    return {'id': key, 'note': f'{key}@{lsn}'}


def pos(lsn: int) -> str:
    return change('c', lsn).source.sort_key


def test_tombstones_older_than_the_retention_are_pruned_then_a_stale_insert_lands(target):
    clock = Clock()
    applier = target.applier(tombstone_retention=HOUR, prune_interval_s=600, clock=clock)
    assert applier.apply([change('c', 10, after=row(1, 10)), change('c', 11, after=row(2, 11)),
                          change('c', 12, after=row(3, 12))]) == []
    assert applier.apply([change('d', 20, before={'id': 1}), change('d', 21, before={'id': 2})]) \
        == []
    assert target.positions() == [pos(20), pos(21)]
    # Key 1's tombstone is older than the retention, key 2's is not.
    target.age(2 * HOUR, pos(20))
    target.age(HOUR / 2, pos(21))

    # The last prune ran less than prune_interval_s ago: nothing is pruned yet.
    assert applier.apply([change('c', 30, after=row(4, 30))]) == []
    assert target.positions() == [pos(20), pos(21)]
    clock.now += 601
    assert applier.apply([change('c', 31, after=row(5, 31))]) == []
    assert target.positions() == [pos(21)]

    # The trade-off: an insert from before key 1's delete, arriving after its tombstone was
    # pruned, brings the row back; key 2's tombstone still stops its stale insert.
    assert applier.apply([change('c', 15, after=row(1, 15)), change('c', 16, after=row(2, 16))]) \
        == []
    assert target.rows() == {1: '1@15', 3: '3@12', 4: '4@30', 5: '5@31'}
    applier.close()


def test_truncate_marks_are_pruned_by_the_same_rule(target):
    clock = Clock()
    applier = target.applier(tombstone_retention=HOUR, prune_interval_s=600, clock=clock)
    assert applier.apply([change('c', 10, after=row(1, 10)), change('t', 20)]) == []
    assert target.positions() == [pos(20)]
    # Within the retention the mark stops an insert from before the truncate.
    clock.now += 601
    assert applier.apply([change('c', 15, after=row(1, 15))]) == []
    assert target.rows() == {} and target.positions() == [pos(20)]
    target.age(2 * HOUR)
    clock.now += 601
    assert applier.apply([change('c', 30, after=row(2, 30))]) == []
    assert target.positions() == []
    assert applier.apply([change('c', 16, after=row(1, 16))]) == []
    assert target.rows() == {1: '1@16', 2: '2@30'}
    applier.close()


def test_a_newer_delete_of_the_key_restarts_its_retention(target):
    clock = Clock()
    applier = target.applier(tombstone_retention=HOUR, prune_interval_s=0, clock=clock)
    assert applier.apply([change('c', 10, after=row(1, 10)), change('d', 11, before={'id': 1})]) \
        == []
    target.age(2 * HOUR)
    # The same key deleted again, in the same batch as the prune that would have removed it.
    assert applier.apply([change('c', 12, after=row(1, 12)), change('d', 13, before={'id': 1})]) \
        == []
    assert target.positions() == [pos(13)]
    assert applier.apply([change('c', 12, after=row(1, 12))]) == []
    assert target.rows() == {}
    applier.close()


@pytest.mark.parametrize('retention', [None, dt.timedelta(0)])
def test_retention_none_or_zero_keeps_every_tombstone(target, retention, tmp_path: Path):
    sink = target.sink(tombstone_retention=retention)
    letters, _ = run([change('c', 10, after=row(1, 10)), change('d', 20, before={'id': 1}),
                      change('c', 21, after=row(2, 21)), change('t', 30)], sink, tmp_path)
    assert letters == []
    target.age(dt.timedelta(days=3650))
    letters, metrics = run([change('c', 15, after=row(1, 15)), change('c', 25, after=row(2, 25)),
                            change('c', 40, after=row(3, 40))], sink, tmp_path)
    assert letters == [] and counter(metrics, 'tombstones_pruned') == 0
    assert target.positions() == [pos(30)]  # the truncate cleared key 1's older tombstone
    assert target.rows() == {3: '3@40'}


def test_the_transforms_prune_after_seven_days_by_default(target, tmp_path: Path):
    sink = target.sink()
    assert run([change('c', 10, after=row(1, 10)), change('d', 20, before={'id': 1}),
                change('c', 21, after=row(2, 21)), change('d', 22, before={'id': 2})],
               sink, tmp_path)[0] == []
    target.age(dt.timedelta(days=8), pos(20))
    target.age(dt.timedelta(days=6), pos(22))
    letters, metrics = run([change('c', 30, after=row(3, 30))], sink, tmp_path)
    assert letters == [] and counter(metrics, 'tombstones_pruned') == 1
    assert target.positions() == [pos(22)]


def test_a_tombstone_table_of_an_older_version_gets_written_at(target):
    applier = target.applier()
    assert applier.apply([change('c', 10, after=row(1, 10)), change('d', 20, before={'id': 1})]) \
        == []
    applier.close()
    # What an older version made: no written_at (dropping it drops its index too).
    target.execute(f'ALTER TABLE {target.tombstones} DROP COLUMN written_at')

    clock = Clock()
    applier = target.applier(tombstone_retention=HOUR, prune_interval_s=600, clock=clock)
    ages = target.execute(
        f"SELECT written_at > now() - interval '1 minute' FROM {target.tombstones} "
        f"WHERE key <> '{NEWEST}'" if target.kind == 'postgres' else
        f'SELECT written_at > NOW(6) - INTERVAL 1 MINUTE FROM {target.tombstones} '
        f"WHERE `key` <> '{NEWEST}'")
    assert [bool(fresh) for fresh, in ages] == [True]  # old tombstones count as written now
    # It still stops the stale insert, and is pruned once older than the retention.
    assert applier.apply([change('c', 15, after=row(1, 15))]) == []
    assert target.rows() == {} and target.positions() == [pos(20)]
    target.age(2 * HOUR)
    clock.now += 601
    assert applier.apply([change('c', 30, after=row(2, 30))]) == []
    assert target.positions() == []
    applier.close()
    # Reopening an up-to-date table changes nothing.
    target.applier().close()
    indexes = target.execute(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = '_changebeam' "
        "AND indexname = 'tombstones_written_at'" if target.kind == 'postgres' else
        "SELECT count(DISTINCT INDEX_NAME) FROM information_schema.STATISTICS WHERE "
        "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '_changebeam_tombstones' "
        "AND INDEX_NAME = 'written_at'")
    assert indexes == [(1,)]


def test_the_newest_tombstone_mark_covers_tombstones_written_without_it(target):
    """A batch whose changes are all newer than the table's newest tombstone (the ``'~'``
    mark) skips looking up their keys.  Tombstones an older version wrote have no mark: the
    first delete batch then starts it from the newest tombstone there is, not from its own
    deletes, which may be older (a replay)."""
    applier = target.applier()
    assert applier.apply([change('c', 10, after=row(1, 10)), change('c', 11, after=row(2, 11))]) \
        == []
    assert applier.apply([change('d', 50, before={'id': 1})]) == []
    key = 'key' if target.kind == 'postgres' else '`key`'
    target.execute(f"DELETE FROM {target.tombstones} WHERE {key} = '{NEWEST}'")  # as before it
    assert applier.apply([change('d', 20, before={'id': 2})]) == []  # older than key 1's
    marks = target.execute(f"SELECT pos FROM {target.tombstones} WHERE {key} = '{NEWEST}'")
    assert marks == [(pos(50),)]
    # Older than key 1's tombstone, newer than the batch that made the mark: still stopped.
    assert applier.apply([change('c', 30, after=row(1, 30))]) == []
    assert target.rows() == {}
    assert applier.apply([change('c', 60, after=row(1, 60)), change('c', 61, after=row(3, 61))]) \
        == []
    assert target.rows() == {1: '1@60', 3: '3@61'}
    applier.close()


@pytest.mark.parametrize('hours, pruned', [('0', False), ('168', True)])
def test_redrive_prunes_by_the_retention_it_is_given(target, tmp_path: Path, hours, pruned):
    # A pipeline that keeps tombstones forever must not lose them to a redrive run with the
    # default retention: redrive takes the same option.
    from pipelines import redrive
    from tests.transforms.test_redrive import line
    from transforms.dead_letter import event_payload

    applier = target.applier(tombstone_retention=None)
    assert applier.apply([change('c', 10, after=row(1, 10)), change('d', 20, before={'id': 1})]) \
        == []
    applier.close()
    target.age(dt.timedelta(days=30))
    dead = tmp_path / 'dead'
    dead.mkdir()
    (dead / 'letters.jsonl').write_text(
        line('WriteChanges', event_payload(change('c', 30, after=row(2, 30)))))
    assert redrive.main(['--dead_letter', f'jsonl:{dead}', '--sink', target.db.dsn,
                         '--tombstone_retention_hours', hours]) == 0
    assert target.rows() == {2: '2@30'}
    assert target.positions() == ([] if pruned else [pos(20)])
