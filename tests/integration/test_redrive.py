"""``python -m pipelines.redrive`` as a user runs it, after a PostgreSQL replica rejected a row:
once the cause is fixed the replica equals the source, and nothing is applied twice."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
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


# -- dead letters in a bucket: where a distributed runner's workers keep nothing ----------------

class _Bucket:
    """A gs:// or s3:// prefix on the test's emulator: its URI, the pipeline flags that reach
    it, and its objects (key → text)."""

    def __init__(self, request: pytest.FixtureRequest, store: str,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        name = f'dead-{uuid.uuid4().hex[:10]}'
        if store == 'gcs':
            gcs = request.getfixturevalue('gcs_server')
            for key, value in gcs.env().items():  # inherited by the subprocesses
                monkeypatch.setenv(key, value)
            client = gcs.client()
            client.create_bucket(name)
            self.uri, self.flags = f'gs://{name}', []
            self.objects = lambda: {b.name: b.download_as_text()
                                    for b in client.list_blobs(name)}
        else:
            moto = request.getfixturevalue('moto_server')
            s3 = moto.client('s3')
            s3.create_bucket(Bucket=name)
            self.uri = f's3://{name}'
            self.flags = [f'--s3_endpoint_url={moto.endpoint_url}',
                          f'--s3_access_key_id={moto.access_key}',
                          f'--s3_secret_access_key={moto.secret_key}',
                          f'--s3_region_name={moto.region}']
            self.objects = lambda: {
                item['Key']: s3.get_object(Bucket=name, Key=item['Key'])['Body'].read().decode()
                for item in s3.list_objects_v2(Bucket=name).get('Contents', [])}

    def letters(self, prefix: str) -> list[dict[str, Any]]:
        """The letters in the objects directly under ``prefix``."""
        return [json.loads(line) for key, text in sorted(self.objects().items())
                if key.rsplit('/', 1)[0] == prefix for line in text.splitlines()]


@pytest.mark.parametrize('store', ['gcs', 's3'])
def test_dead_letters_in_a_bucket_are_kept_and_redriven(
        postgres: Any, pg_db: Any, tmp_path: Path, store: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--dead_letter jsonl:gs://…`` (or s3://) used to make a local directory named ``gs:``:
    on a distributed runner the letters were lost with the worker's disk."""
    bucket = _Bucket(request, store, monkeypatch)
    target = postgres.database('replica')
    try:
        with pg_db.connect() as conn, target.connect() as tconn:
            conn.execute('CREATE TABLE orders (id integer PRIMARY KEY, qty integer, note text)')
            conn.execute("INSERT INTO orders VALUES (1, 1, 'a')")
            cdc = subprocess.Popen(
                [sys.executable, '-m', 'pipelines.cdc', '--source', pg_db.dsn, '--sink',
                 target.dsn, '--dead_letter', f'jsonl:{bucket.uri}/cdc/dead',
                 '--schema_registry', str(tmp_path / 'schemas'), '--progress', 'off',
                 *CAUGHT_UP_OPTIONS, *bucket.flags],
                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, 'PYTHONPATH': str(REPO)})
            wait_for_slot(conn, f'changebeam_{pg_db.name}')
            wait_for_rows(tconn, 1)
            tconn.execute('ALTER TABLE orders ADD CONSTRAINT small CHECK (qty < 100)')
            conn.execute("INSERT INTO orders VALUES (2, 200, 'big'), (3, 3, 'c')")
            conn.execute('UPDATE orders SET qty = 300 WHERE id = 2')
            output = stop_when_caught_up(cdc, conn, f'changebeam_{pg_db.name}')
            rejected = bucket.letters('cdc/dead')
            assert {(d['step'], d['payload']['event']['after']['id']) for d in rejected} == \
                {('WriteChangesToPostgres', 2)}, output[-3000:]
            assert not (tmp_path / f'{bucket.uri.split(":")[0]}:').exists()  # nothing local
            assert rows(tconn).keys() == {1, 3}

            tconn.execute('ALTER TABLE orders DROP CONSTRAINT small')
            summary = redrive('--dead_letter', f'jsonl:{bucket.uri}/cdc/dead', '--sink',
                              target.dsn, *bucket.flags)
            events = len(rejected)
            assert summary == (f'changebeam redrive: read {events}, re-applied {events}, '
                               'failed again 0, skipped 0 (not an event)'), summary
            assert rows(tconn) == rows(conn)
            assert rows(tconn)[2] == (2, 300, 'big')
            # Moved aside only once applied: the next run finds nothing.
            assert bucket.letters('cdc/dead') == []
            assert bucket.letters('cdc/dead/redriven') == rejected
            summary = redrive('--dead_letter', f'jsonl:{bucket.uri}/cdc/dead', '--sink',
                              target.dsn, *bucket.flags)
            assert summary.startswith('changebeam redrive: read 0, re-applied 0'), summary
    finally:
        postgres.drop_database(target.name)


def _streaming_with_row_2_rejected(pg_db: Any, target: Any, conn: Any, tconn: Any,
                                   workdir: Path) -> tuple[Any, str]:
    """A pipeline streaming ``orders`` into ``target``, whose CHECK (qty >= 0) rejected the
    insert of row 2 in a batch of its own (its letter is in ``workdir / 'dead'``)."""
    conn.execute('CREATE TABLE orders (id integer PRIMARY KEY, qty integer, note text)')
    conn.execute("INSERT INTO orders VALUES (1, 1, 'a')")
    cdc = start_cdc_to(pg_db.dsn, target.dsn, workdir, *CAUGHT_UP_OPTIONS)
    slot = f'changebeam_{pg_db.name}'
    wait_for_slot(conn, slot)
    wait_for_rows(tconn, 1)
    tconn.execute('ALTER TABLE orders ADD CONSTRAINT positive CHECK (qty >= 0)')
    conn.execute("INSERT INTO orders VALUES (2, -1, 'x')")
    deadline = time.monotonic() + 60
    while not letters(workdir / 'dead'):
        assert time.monotonic() < deadline, 'row 2 was never dead-lettered'
        time.sleep(0.2)
    return cdc, slot


def test_redrive_while_the_pipeline_streams_loses_no_later_letter(postgres: Any, pg_db: Any,
                                                                   tmp_path: Path) -> None:
    """Fix the target, redrive, keep streaming: the natural way.  The pipeline used to keep
    one dead-letter file open for appending, which the redrive moved aside, so every letter
    written after it went to a file no longer in the directory: lost, its position confirmed."""
    target = postgres.database('replica')
    dead = tmp_path / 'dead'
    try:
        with pg_db.connect() as conn, target.connect() as tconn:
            cdc, slot = _streaming_with_row_2_rejected(pg_db, target, conn, tconn, tmp_path)
            tconn.execute('ALTER TABLE orders DROP CONSTRAINT positive')
            summary = redrive('--dead_letter', f'jsonl:{dead}', '--sink', target.dsn,
                              '--failed', f'jsonl:{tmp_path / "failed"}')
            assert summary.startswith('changebeam redrive: read 1, re-applied 1,'), summary
            # The pipeline streams on; the target rejects another row.
            tconn.execute("ALTER TABLE orders ADD CONSTRAINT no_bad CHECK (note <> 'bad')")
            conn.execute("INSERT INTO orders VALUES (3, 3, 'bad')")
            output = stop_when_caught_up(cdc, conn, slot)
            assert [d['payload']['event']['after']['id'] for d in letters(dead)] == [3], \
                output[-3000:]
            tconn.execute('ALTER TABLE orders DROP CONSTRAINT no_bad')
            redrive('--dead_letter', f'jsonl:{dead}', '--sink', target.dsn,
                    '--failed', f'jsonl:{tmp_path / "failed2"}')
            assert rows(tconn) == rows(conn)
    finally:
        postgres.drop_database(target.name)


@pytest.mark.parametrize('fixed', [True, False], ids=['rule dropped', 'rule kept'])
def test_a_letter_older_than_the_targets_row_is_reported_not_counted_applied(
        postgres: Any, pg_db: Any, tmp_path: Path, fixed: bool) -> None:
    """The rejected insert of a row that a later update then wrote: redriving the insert
    changes nothing (the target holds the newer row), which redrive did not say.  With the
    rule still there the target checked the old row against it before the guard that skips
    it, and the letter 'failed again'."""
    target = postgres.database('replica')
    dead = tmp_path / 'dead'
    try:
        with pg_db.connect() as conn, target.connect() as tconn:
            cdc, slot = _streaming_with_row_2_rejected(pg_db, target, conn, tconn, tmp_path)
            conn.execute("UPDATE orders SET qty = 5, note = 'y' WHERE id = 2")
            stop_when_caught_up(cdc, conn, slot)
            assert len(letters(dead)) == 1
            if fixed:
                tconn.execute('ALTER TABLE orders DROP CONSTRAINT positive')
            result = subprocess.run(
                [sys.executable, '-m', 'pipelines.redrive', '--dead_letter', f'jsonl:{dead}',
                 '--sink', target.dsn], cwd=REPO, capture_output=True, text=True, timeout=180)
            assert result.returncode == 0, result.stderr[-3000:]
            lines = [line for line in result.stderr.splitlines()
                     if line.startswith('changebeam redrive: ')]
            assert lines == [
                'changebeam redrive: read 1, re-applied 1, failed again 0, row changes older '
                'than the target 1, skipped 0 (not an event)',
                'changebeam redrive: 1 row change(s) were skipped: the target already held a '
                'newer state of those rows (a value a later partial update left unchanged '
                'stays as the target has it)'], result.stderr[-3000:]
            assert rows(tconn) == rows(conn)
    finally:
        postgres.drop_database(target.name)
