"""``python -m pipelines.redrive`` as a user runs it, after a PostgreSQL replica rejected a row:
once the cause is fixed the replica equals the source, and nothing is applied twice."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_postgres_source import (
    CAUGHT_UP_OPTIONS,
    start_cdc_to,
    stop_when_caught_up,
    wait_for_slot,
)
from transforms.dead_letter import DeadLetter

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def redrive(*argv: str) -> str:
    """Runs the redrive CLI; returns its summary line."""
    result = subprocess.run([sys.executable, '-m', 'pipelines.redrive', *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=180,
                            env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines()
             if line.startswith('changebeam redrive: read')]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def rows(conn: Any) -> dict[int, tuple]:
    return {r[0]: r for r in conn.execute('SELECT id, qty, note FROM orders').fetchall()}


def letters(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob('*.jsonl'))
            for line in path.read_text().splitlines()]


def wait_for_rows(conn: Any, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exists = conn.execute("SELECT to_regclass('public.orders')").fetchone()[0]
        if exists and conn.execute('SELECT count(*) FROM orders').fetchone()[0] >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f'the replica never held {count} rows')


def test_rejected_rows_are_redriven_once_the_target_is_fixed(postgres: Any, pg_db: Any,
                                                            tmp_path: Path) -> None:
    target = postgres.database('replica')
    dead, failed = tmp_path / 'dead', tmp_path / 'failed'
    try:
        with pg_db.connect() as conn, target.connect() as tconn:
            conn.execute('CREATE TABLE orders (id integer PRIMARY KEY, qty integer, note text)')
            conn.execute("INSERT INTO orders VALUES (1, 1, 'a'), (2, 2, 'b')")
            cdc = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
            wait_for_slot(conn, f'changebeam_{pg_db.name}')
            wait_for_rows(tconn, 2)
            # Someone adds a rule the source does not have: the replica rejects row 3.
            tconn.execute('ALTER TABLE orders ADD CONSTRAINT small CHECK (qty < 100)')
            conn.execute("INSERT INTO orders VALUES (3, 500, 'big'), (4, 4, 'd')")
            conn.execute('UPDATE orders SET qty = 600 WHERE id = 3')
            conn.execute("UPDATE orders SET note = 'changed' WHERE id = 1")
            stop_when_caught_up(cdc, conn, f'changebeam_{pg_db.name}')
            rejected = letters(dead)
            assert {(d['step'], d['payload']['event']['after']['id']) for d in rejected} == \
                {('WriteChangesToPostgres', 3)}, rejected
            assert 'small' in rejected[0]['error']
            assert rows(tconn).keys() == {1, 2, 4}
            # A letter that holds no event (undecodable WAL) in a file of its own.
            wal = DeadLetter('DecodeWal', 'PgOutputError: truncated', b'\x00WAL', source='0/1')
            (dead / 'dead-letters-wal.jsonl').write_text(json.dumps(wal.to_json()) + '\n')

            # The rule is still there: the events fail again, into --failed; they are moved
            # aside from the original directory, the WAL letter stays.
            events = len(rejected)
            summary = redrive('--dead_letter', f'jsonl:{dead}', '--sink', target.dsn,
                              '--failed', f'jsonl:{failed}')
            assert summary == (f'changebeam redrive: read {events + 1}, re-applied 0, '
                               f'failed again {events}, skipped 1 (not an event)'), summary
            assert len(letters(failed)) == events
            assert [d['step'] for d in letters(dead)] == ['DecodeWal']
            assert len(letters(dead / 'redriven')) == events

            # Fixed: the failed-again letters apply, and the replica equals the source.
            tconn.execute('ALTER TABLE orders DROP CONSTRAINT small')
            summary = redrive('--dead_letter', f'jsonl:{failed}', '--sink', target.dsn,
                              '--failed', f'jsonl:{tmp_path / "failed2"}')
            assert summary == (f'changebeam redrive: read {events}, re-applied {events}, '
                               'failed again 0, skipped 0 (not an event)'), summary
            assert rows(tconn) == rows(conn)
            assert rows(tconn)[3] == (3, 600, 'big')

            # Running it again applies nothing: the letters were moved aside.
            summary = redrive('--dead_letter', f'jsonl:{failed}', '--sink', target.dsn,
                              '--failed', f'jsonl:{tmp_path / "failed3"}')
            assert summary == ('changebeam redrive: read 0, re-applied 0, failed again 0, '
                               'skipped 0 (not an event)'), summary
            assert rows(tconn) == rows(conn)
    finally:
        postgres.drop_database(target.name)
