"""The PostgreSQL source end to end, as a user runs it: ``python -m pipelines.cdc`` against a real
PostgreSQL 15, checked by rebuilding the tables from the emitted change files."""
from __future__ import annotations

import base64
import collections
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.outage import (
    assert_gave_up_in_one_line,
    ended_by_itself,
    wait_for_first_insert,
)
from tests.replay import apply_envelopes, read_jsonl_dir, source_rows, table_state
from tests.services.postgres import PgDatabase
from transforms.envelope import Op
from transforms.sources.postgres.catalog import primary_key, resolve_tables
from transforms.sources.postgres.changes import ChangeAssembler
from transforms.sources.postgres.pgtypes import CATALOG_QUERY, TypeInfo
from transforms.sources.postgres.replication import SESSION_OPTIONS, parse_lsn
from transforms.sources.postgres.snapshot import relation_from_catalog

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def start_cdc(dsn: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, '-m', 'pipelines.cdc', '--source', dsn, '--sink', f'jsonl:{out}',
         '--progress', 'off', *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start_cdc_to(dsn: str, sink: str, workdir: Path, *extra: str) -> subprocess.Popen[str]:
    """The pipeline with a database sink; dead letters under ``workdir``."""
    return subprocess.Popen(
        [sys.executable, '-m', 'pipelines.cdc', '--source', dsn, '--sink', sink,
         '--dead_letter', f'jsonl:{workdir / "dead"}', '--schema_registry',
         str(workdir / 'schemas'), '--progress', 'off', *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def stop_once(process: subprocess.Popen[str], reached: Callable[[], bool], what: str,
              timeout: float = 120) -> str:
    """SIGTERM for a pipeline once ``reached()`` (polled), then its output (exit status 0).

    Unlike ``--max_idle_secs``, which stops on its own after that long without a change, this
    cannot stop a pipeline early while a slow (loaded) test is still between two writes."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if reached():
            process.send_signal(signal.SIGTERM)
            break
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f'never {what}: {process.communicate()[0][-3000:]}')
        time.sleep(0.05)
    return finish(process, timeout)


def caught_up(conn: Any, slot: str) -> tuple[Callable[[], bool], str]:
    """Whether ``slot`` has confirmed everything committed until now (a pipeline confirms
    what its sink wrote), and what that is, for a message."""
    target = conn.execute('SELECT pg_current_wal_lsn()::text').fetchone()[0]

    def confirmed() -> bool:
        row = conn.execute('SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots '
                           'WHERE slot_name = %s', (target, slot)).fetchone()
        return bool(row and row[0])
    return confirmed, f'confirmed {target} to slot {slot}'


def stop_when_caught_up(process: subprocess.Popen[str], conn: Any, slot: str) -> str:
    """Stops a pipeline started with ``CAUGHT_UP_OPTIONS`` once its slot confirmed everything
    committed so far, so that its sink wrote it; its output."""
    return stop_once(process, *caught_up(conn, slot))


CAUGHT_UP_OPTIONS = ('--heartbeat_secs', '0.5', '--max_idle_secs', '60')
"""For :func:`stop_when_caught_up`: heartbeats confirm WAL past the last change at once, and a
pipeline left behind by a failed test still ends."""


def wait_for_slot(conn: Any, slot: str, timeout: float = 60) -> None:
    """Until a pipeline streams from ``slot``.  A slot being created is listed, and active,
    while it waits for the transactions running then to end (what commits meanwhile is in its
    snapshot, not in its stream); then it has a confirmed position but is inactive until the
    pipeline read the snapshot and starts streaming."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute('SELECT active AND confirmed_flush_lsn IS NOT NULL '
                           'FROM pg_replication_slots WHERE slot_name = %s', (slot,)).fetchone()
        if row and row[0]:
            return
        time.sleep(0.1)
    raise AssertionError(f'slot {slot} never became active')


def schemas_of(conn: Any) -> dict[str, Any]:
    def types(oids: Any) -> dict[int, TypeInfo]:
        return {row[0]: TypeInfo(*row) for row in
                conn.execute(CATALOG_QUERY, (list(oids),)).fetchall()}
    assembler = ChangeAssembler('t', 't', lambda oid: primary_key(conn, oid), types)
    return {ref.name: assembler.relation(relation_from_catalog(conn, ref)).schema
            for ref in resolve_tables(conn, ())}


def assert_rebuilt_equals_source(conn: Any, docs: list[dict[str, Any]],
                                 tables: list[str]) -> None:
    schemas = schemas_of(conn)
    state = apply_envelopes([d for d in docs if f'{d["source"]["schema"]}.'
                             f'{d["source"]["table"]}' in tables],
                            {name: schemas[name].key for name in tables})
    for name in tables:
        expected = source_rows(conn, schemas[name])
        rebuilt = table_state(state.get(name, {}), schemas[name])
        assert rebuilt.keys() == expected.keys(), name
        for key, row in expected.items():
            assert rebuilt[key] == row, (name, key)


TYPES_SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE every_type (
    id serial PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, num numeric, num_p numeric(10, 2),
    f4 real, f8 double precision, flag boolean, t text, vc varchar(20), ch char(4), u uuid,
    raw bytea, d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
    js json, jsb jsonb, ints integer[], texts text[], grid integer[][], m mood, p posint,
    big text);
CREATE TABLE other (k text PRIMARY KEY, v integer);
CREATE TABLE full_identity (id integer PRIMARY KEY, big text, note text);
ALTER TABLE full_identity REPLICA IDENTITY FULL;
"""

ROWS = [
    "(1, -32768, 2147483647, -9223372036854775808, 'NaN', 12.50, 'Infinity', '-Infinity', true, "
    "'tab\tnew\nline \"q\" \\ back', 'varchar', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
    "'\\x00ff10', 'infinity', '24:00:00', '10:11:12.5+05:30', '-infinity', 'infinity', "
    "'1 year 2 mons 3 days 04:05:06.5', 'null', '{\"a\": [1, 2.5, null]}', '{1,NULL,3}', "
    "'{\"with,comma\",NULL,\"NULL\",\"\"}', '{{1,2},{3,4}}', 'happy', 5, NULL)",
    "(2, 0, 0, 0, 123456789012345678901234567890.123456789, -0.01, 1.5, 3.141592653589793, "
    "false, '', 'é漢字😀', '    ', NULL, '', '0044-03-15 BC', '00:00:00', '00:00:00-03:30', "
    "'2024-02-29 23:59:59.999999', '1999-12-31 23:59:59.123456+00', '-1 days', '[]', 'null', "
    "'{}', '{}', '{{NULL,2},{3,NULL}}', 'sad', 1, NULL)",
    "(3, NULL, NULL, NULL, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
    "'2024-01-01', NULL, NULL, '2024-06-01 12:00', '2024-06-01 12:00+02', NULL, NULL, NULL, "
    "NULL, NULL, NULL, NULL, NULL, NULL)",
]


def mixed_workload(conn: Any) -> None:
    conn.execute('INSERT INTO every_type VALUES ' + ', '.join(ROWS))
    conn.execute("INSERT INTO every_type (id, big) VALUES (4, repeat('toast', 40000))")
    conn.execute("INSERT INTO full_identity VALUES (1, repeat('big', 50000), 'a'), (2, 'x', 'b')")
    with conn.transaction():  # one transaction over several tables
        conn.execute("INSERT INTO other SELECT 'k' || g, g FROM generate_series(1, 50) g")
        conn.execute('UPDATE every_type SET i4 = i4 + 1 WHERE id = 2')
        conn.execute("UPDATE every_type SET t = 'only t changed' WHERE id = 4")  # big unchanged
        conn.execute("UPDATE full_identity SET note = 'changed' WHERE id = 1")  # big unchanged
    conn.execute("UPDATE every_type SET id = 40 WHERE id = 4")  # primary-key update
    conn.execute('DELETE FROM every_type WHERE id = 3')
    conn.execute("UPDATE other SET v = -v WHERE k LIKE 'k1%'")
    conn.execute('TRUNCATE other')
    conn.execute("INSERT INTO other VALUES ('after-truncate', 1)")
    conn.execute("UPDATE every_type SET big = repeat('new', 30000), jsb = 'null' WHERE id = 40")


def test_state_check_mixed_workload_every_type(pg_db: Any, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        # Output settings a European DBA might choose: the source must not depend on them.
        for setting, value in (('DateStyle', 'SQL, DMY'), ('IntervalStyle', 'sql_standard'),
                               ('bytea_output', 'escape'), ('TimeZone', 'Asia/Kolkata')):
            conn.execute(f'ALTER DATABASE "{pg_db.name}" SET {setting} = \'{value}\'')
    with pg_db.connect(options=SESSION_OPTIONS) as conn:
        conn.execute(TYPES_SCHEMA)
        conn.execute("INSERT INTO other VALUES ('before-snapshot', 0)")
        cdc = start_cdc(pg_db.dsn, tmp_path / 'out', *CAUGHT_UP_OPTIONS)
        wait_for_slot(conn, f'changebeam_{pg_db.name}')
        mixed_workload(conn)
        output = stop_when_caught_up(cdc, conn, f'changebeam_{pg_db.name}')
        docs = read_jsonl_dir(str(tmp_path / 'out'))
        assert_rebuilt_equals_source(conn, docs, ['public.every_type', 'public.other',
                                                  'public.full_identity'])
    ops = collections.Counter(d['op'] for d in docs)
    assert ops['r'] == 1 and ops['t'] == 1 and ops['d'] == 1, (ops, output[-4000:])
    # REPLICA IDENTITY DEFAULT: the unchanged TOAST column is named, never given a value.
    toast = [d for d in docs if d['op'] == 'u' and d['source']['table'] == 'every_type'
             and d['after']['id'] == 4]
    assert toast and toast[0]['unchanged'] == ['big'] and 'big' not in toast[0]['after']
    # REPLICA IDENTITY FULL: the old value fills it in.
    full = [d for d in docs if d['op'] == 'u' and d['source']['table'] == 'full_identity']
    assert full[0]['after']['big'] == 'big' * 50000 and 'unchanged' not in full[0]
    assert not list((tmp_path / 'out' / '_dead_letters').glob('*.jsonl')), output


PARTITIONED = """
CREATE TABLE m (id integer NOT NULL, at date NOT NULL, v text, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE m_jan PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE m_feb PARTITION OF m FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
-- attached later, its columns in another order: rows must still read as m's
CREATE TABLE m_mar (v text, at date NOT NULL, id integer NOT NULL);
ALTER TABLE m ATTACH PARTITION m_mar FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
INSERT INTO m SELECT g, date '2026-01-01' + g % 90, 'v' || g FROM generate_series(1, 300) g;
"""


@pytest.mark.parametrize('tables, existing', [((), False), (('--tables', 'public.m'), False),
                                             ((), True)],
                         ids=['all tables', 'listed', 'publication made without the option'])
def test_a_partitioned_table_is_captured_as_one_table(pg_db: Any, tmp_path: Path,
                                                      tables: tuple[str, ...],
                                                      existing: bool) -> None:
    """Snapshot and stream of a partitioned table both name the table, not its partitions:
    the rebuilt table equals the source, a row moved to another partition included."""
    slot = f'changebeam_{pg_db.name}'
    with pg_db.connect() as conn:
        conn.execute(PARTITIONED)
        if existing:  # as an earlier release made it: changes under the partitions' names
            conn.execute(f'CREATE PUBLICATION {slot} FOR ALL TABLES')
        cdc = start_cdc(pg_db.dsn, tmp_path / 'out', *CAUGHT_UP_OPTIONS, *tables)
        wait_for_slot(conn, slot)
        conn.execute("INSERT INTO m SELECT g, date '2026-01-01' + g % 90, 'w' || g "
                     'FROM generate_series(301, 400) g')
        conn.execute("UPDATE m SET v = 'u' || id WHERE id % 7 = 0")
        conn.execute("UPDATE m SET at = date '2026-03-15' WHERE id IN (1, 2)")  # jan -> mar
        conn.execute('DELETE FROM m WHERE id % 11 = 0')
        conn.execute("CREATE TABLE m_apr PARTITION OF m "
                     "FOR VALUES FROM ('2026-04-01') TO ('2026-05-01')")
        conn.execute("INSERT INTO m VALUES (1000, '2026-04-02', 'april')")
        output = stop_when_caught_up(cdc, conn, slot)
        docs = read_jsonl_dir(str(tmp_path / 'out'))
        assert {d['source']['table'] for d in docs} == {'m'}, output[-3000:]
        assert_rebuilt_equals_source(conn, docs, ['public.m'])
    assert collections.Counter(d['op'] for d in docs)['r'] == 300
    moved = [d['op'] for d in docs
             if d['op'] in ('c', 'u', 'd') and (d['after'] or d['before'])['id'] == 1]
    assert moved == ['d', 'c'], moved  # jan -> mar: out of one partition, into another


def test_generated_columns_are_left_out_of_snapshot_and_stream_alike(pg_db: Any,
                                                                    tmp_path: Path) -> None:
    slot = f'changebeam_{pg_db.name}'
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE g (id integer PRIMARY KEY, price numeric, qty integer, '
                     'total numeric GENERATED ALWAYS AS (price * qty) STORED, note text)')
        conn.execute("INSERT INTO g VALUES (1, 2.5, 4, DEFAULT, 'before')")
        cdc = start_cdc(pg_db.dsn, tmp_path / 'out', *CAUGHT_UP_OPTIONS)
        wait_for_slot(conn, slot)
        conn.execute("INSERT INTO g VALUES (2, 1.5, 2, DEFAULT, 'after')")
        conn.execute('UPDATE g SET qty = qty + 1')
        output = stop_when_caught_up(cdc, conn, slot)
        docs = read_jsonl_dir(str(tmp_path / 'out'))
        assert_rebuilt_equals_source(conn, docs, ['public.g'])
    rows = [d['after'] for d in docs if d['op'] in ('r', 'c', 'u')]
    assert len(rows) == 4 and all(list(row) == ['id', 'price', 'qty', 'note'] for row in rows), (
        rows, output[-2000:])


@pytest.mark.parametrize('stop', [signal.SIGKILL, signal.SIGTERM], ids=['sigkill', 'sigterm'])
def test_stopped_mid_stream_loses_nothing_and_keeps_order(pg_db: Any, tmp_path: Path,
                                                          stop: signal.Signals) -> None:
    """SIGKILL is a crash; SIGTERM (or Ctrl-C) a clean stop that writes what was read."""
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE counters (k integer PRIMARY KEY, v integer NOT NULL)')
        conn.execute('INSERT INTO counters SELECT g, 0 FROM generate_series(1, 20) g')
    writing = threading.Event()
    writing.set()
    committed: list[tuple[int, int]] = []

    def writer() -> None:
        import random
        rng = random.Random(1)
        with pg_db.connect() as conn:
            while writing.is_set():
                k = rng.randint(1, 20)
                v = conn.execute('UPDATE counters SET v = v + 1 WHERE k = %s RETURNING v',
                                 (k,)).fetchone()[0]
                committed.append((k, v))
                time.sleep(0.001)

    first = start_cdc(pg_db.dsn, tmp_path / 'run1', '--snapshot', 'never')
    with pg_db.connect() as conn:
        wait_for_slot(conn, f'changebeam_{pg_db.name}')
        thread = threading.Thread(target=writer)
        thread.start()
        deadline = time.monotonic() + 60
        while len(list((tmp_path / 'run1').glob('*/*.jsonl'))) < 5:
            assert time.monotonic() < deadline and first.poll() is None, 'no progress'
            time.sleep(0.1)
        first.send_signal(stop)
        if stop == signal.SIGTERM:
            finish(first, timeout=30)  # status 0
        first.wait()
        deadline = time.monotonic() + 30
        while conn.execute('SELECT active FROM pg_replication_slots').fetchone()[0]:
            # The walsender ends after it has applied the last status the pipeline sent.
            assert time.monotonic() < deadline, 'the slot stayed active'
            time.sleep(0.02)
        confirmed = parse_lsn(conn.execute(
            'SELECT confirmed_flush_lsn::text FROM pg_replication_slots').fetchone()[0])
        time.sleep(1)  # the writer goes on while the pipeline is down
        second = start_cdc(pg_db.dsn, tmp_path / 'run2', '--snapshot', 'never',
                           *CAUGHT_UP_OPTIONS)
        time.sleep(3)
        writing.clear()
        thread.join()
        stop_when_caught_up(second, conn, f'changebeam_{pg_db.name}')
    runs = [[d for d in read_jsonl_dir(str(tmp_path / run)) if d['op'] == 'u']
            for run in ('run1', 'run2')]
    if stop == signal.SIGTERM:  # all it confirmed was written, and it wrote nothing else
        assert all(d['source']['commit_lsn'] <= confirmed for d in runs[0])
        assert {(d['after']['k'], d['after']['v']) for d in runs[0]} == \
            set(committed[:len(runs[0])])
    seen = [(d['after']['k'], d['after']['v']) for run in runs for d in run]
    assert set(committed) <= set(seen), 'a committed change is missing'
    first_run = {(d['after']['k'], d['after']['v']) for d in runs[0]}
    replayed = [d for d in runs[1] if (d['after']['k'], d['after']['v']) in first_run]
    assert all(d['source']['commit_lsn'] >= confirmed for d in replayed), \
        'a change confirmed before the crash was delivered again'
    for run in runs:
        per_key: dict[int, list[int]] = collections.defaultdict(list)
        for doc in run:
            per_key[doc['after']['k']].append(doc['after']['v'])
        for k, values in per_key.items():
            assert values == sorted(values), f'key {k} out of order: {values}'


def test_snapshot_under_concurrent_writes(pg_db: Any, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE accounts (id integer PRIMARY KEY, balance bigint, note text)')
        conn.execute("INSERT INTO accounts SELECT g, g, 'n' || g FROM generate_series(1, 20000) g")
    stop = threading.Event()

    def writer() -> None:
        import random
        rng = random.Random(2)
        with pg_db.connect() as conn:
            next_id = 20001
            while not stop.is_set():
                with conn.transaction():
                    conn.execute('UPDATE accounts SET balance = balance + 1 WHERE id = %s',
                                 (rng.randint(1, next_id - 1),))
                    conn.execute('INSERT INTO accounts VALUES (%s, 0, NULL)', (next_id,))
                    conn.execute('DELETE FROM accounts WHERE id = %s',
                                 (rng.randint(1, next_id),))
                next_id += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        cdc = start_cdc(pg_db.dsn, tmp_path / 'out', *CAUGHT_UP_OPTIONS)
        with pg_db.connect() as conn:
            wait_for_slot(conn, f'changebeam_{pg_db.name}')
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
    with pg_db.connect() as conn:
        stop_when_caught_up(cdc, conn, f'changebeam_{pg_db.name}')
    docs = read_jsonl_dir(str(tmp_path / 'out'))
    snapshot = [d for d in docs if d['op'] == 'r']
    streamed = [d for d in docs if d['op'] not in ('r', 'm')]
    assert len(snapshot) > 19000 and streamed
    consistent_point = snapshot[0]['source']['commit_lsn']
    assert all(d['source']['commit_lsn'] > consistent_point for d in streamed), 'overlap'
    with pg_db.connect() as conn:
        assert_rebuilt_equals_source(conn, docs, ['public.accounts'])


def test_idle_source_keeps_retained_wal_flat(postgres: Any, pg_db: Any, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE quiet (id integer PRIMARY KEY)')
    other = postgres.database('busy')
    try:
        cdc = start_cdc(pg_db.dsn, tmp_path / 'out', '--heartbeat_secs', '0.5')
        with pg_db.connect() as conn, other.connect() as busy:
            slot = f'changebeam_{pg_db.name}'
            wait_for_slot(conn, slot)
            busy.execute('CREATE TABLE noise (id serial, payload text)')
            retained, unconfirmed = [], []
            for round_ in range(6):
                busy.execute("INSERT INTO noise (payload) SELECT repeat('x', 1000) "
                             'FROM generate_series(1, 4000)')  # ~5 MB of WAL each round
                # restart_lsn moves only when a running-xacts record past the confirmed
                # position is decoded; PostgreSQL logs one every 15 s or at a checkpoint.
                busy.execute('CHECKPOINT')
                # Sampled once the slot has moved on (however slowly this machine decodes and
                # beats), or after 30 s: without heartbeats it never does.
                deadline = time.monotonic() + 30
                while True:
                    lag = conn.execute(
                        'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, '
                        'pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint '
                        'FROM pg_replication_slots WHERE slot_name = %s', (slot,)).fetchone()
                    settled = lag[1] < 1024 * 1024 and (round_ < 2 or lag[0] < 8 * 1024 * 1024)
                    if settled or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                retained.append(int(lag[0]))
                unconfirmed.append(int(lag[1]))
        cdc.send_signal(signal.SIGTERM)
        cdc.wait(30)
    finally:
        postgres.drop_database(other.name)
    # ~30 MB of WAL written in another database: an idle slot without heartbeats would retain
    # all of it; with them the retained WAL stays at about one round.
    assert max(unconfirmed) < 1024 * 1024, unconfirmed
    assert max(retained[2:]) < 8 * 1024 * 1024, retained


def run_until_error(dsn: str, tmp_path: Path, *extra: str) -> str:
    process = start_cdc(dsn, tmp_path / 'out', '--max_idle_secs', '1', *extra)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output[-2000:]
    return output


def test_table_without_replica_identity_is_refused_with_the_fix(pg_db: Any,
                                                                tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE keyless (a integer, b text)')
    output = run_until_error(pg_db.dsn, tmp_path)
    assert 'public.keyless' in output and 'REPLICA IDENTITY FULL' in output


def test_a_partition_without_replica_identity_is_refused_with_the_fix(
        pg_db: Any, tmp_path: Path) -> None:
    """REPLICA IDENTITY FULL on a keyless partitioned table does not reach its partitions:
    publishing it would make the application's UPDATEs of their rows fail."""
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE events (at date, body text) PARTITION BY RANGE (at)')
        conn.execute("CREATE TABLE events_jan PARTITION OF events "
                     "FOR VALUES FROM ('2026-01-01') TO ('2026-02-01')")
        conn.execute('ALTER TABLE events REPLICA IDENTITY FULL')
        output = run_until_error(pg_db.dsn, tmp_path, '--tables', 'public.events')
        assert 'public.events_jan' in output and 'REPLICA IDENTITY FULL' in output
        conn.execute('ALTER TABLE events_jan REPLICA IDENTITY FULL')
        conn.execute("INSERT INTO events VALUES ('2026-01-05', 'x')")
        conn.execute("UPDATE events SET body = 'y'")  # what the refusal protects
        slot = f'changebeam_{pg_db.name}'
        cdc = start_cdc(pg_db.dsn, tmp_path / 'out', '--tables', 'public.events',
                        *CAUGHT_UP_OPTIONS)
        wait_for_slot(conn, slot)
        conn.execute("UPDATE events SET body = 'z'")
        stop_when_caught_up(cdc, conn, slot)
    docs = read_jsonl_dir(str(tmp_path / 'out'))
    assert [(d['op'], d['after']['body']) for d in docs if d['op'] in ('r', 'u')] == [
        ('r', 'y'), ('u', 'z')]


def test_a_partition_whose_identity_lacks_the_key_is_refused_with_the_fix(
        pg_db: Any, tmp_path: Path) -> None:
    """A partition logs its own replica identity as the old row: one without the table's key
    would leave deleted rows in the targets."""
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE acct (id integer PRIMARY KEY, code text NOT NULL) '
                     'PARTITION BY RANGE (id)')
        conn.execute('CREATE TABLE acct_low PARTITION OF acct FOR VALUES FROM (0) TO (100)')
        conn.execute('CREATE UNIQUE INDEX acct_low_code ON acct_low (code)')
        conn.execute('ALTER TABLE acct_low REPLICA IDENTITY USING INDEX acct_low_code')
    output = run_until_error(pg_db.dsn, tmp_path, '--tables', 'public.acct')
    assert ('partition public.acct_low of table public.acct logs (code)' in output
            and "lacks the table's key (id)" in output
            and 'ALTER TABLE public.acct_low REPLICA IDENTITY FULL' in output), output[-2000:]


def test_a_table_named_twice_in_tables_is_copied_once(pg_db: Any, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE a (id integer PRIMARY KEY)')
        conn.execute('INSERT INTO a SELECT generate_series(1, 3)')
    output = finish(start_cdc(pg_db.dsn, tmp_path / 'out', '--tables', 'a,public.a',
                              '--snapshot', 'only'))
    docs = read_jsonl_dir(str(tmp_path / 'out'))
    assert sorted(d['after']['id'] for d in docs if d['op'] == 'r') == [1, 2, 3], output[-2000:]
    assert sum(d['op'] == 'm' and d['message'].get('kind') == 'snapshot_complete'
               for d in docs) == 1


def test_a_database_moved_to_another_cluster_is_refused_not_silently_stale(
        pg_db: Any, tmp_path: Path) -> None:
    """A dump restored on another cluster keeps the publication and its comment, where the
    pipeline records its snapshot; WAL positions start over there, below those the replicas
    hold, which then took every change for an old one and stayed stale without a word."""
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE a (id integer PRIMARY KEY)')
        conn.execute('INSERT INTO a VALUES (1)')
    out = tmp_path / 'out'
    slot = f'changebeam_{pg_db.name}'
    finish(start_cdc(pg_db.dsn, out, '--max_idle_secs', '1'))  # a first run records it
    with pg_db.connect() as conn:
        cluster = str(conn.execute('SELECT system_identifier FROM pg_control_system()')
                      .fetchone()[0])
        comment = conn.execute('SELECT obj_description(oid, %s) FROM pg_publication',
                               ('pg_publication',)).fetchone()[0]
        assert f'; cluster {cluster}' in comment, comment
        output = finish(start_cdc(pg_db.dsn, out, '--max_idle_secs', '1'))  # a restart: fine
        assert 'another PostgreSQL cluster' not in output
        # As restored from a dump of another cluster: the comment came along, the slot not.
        conn.execute(f"SELECT pg_drop_replication_slot('{slot}')")
        moved = comment.replace(cluster, '7300000000000000001')
        conn.execute(f"COMMENT ON PUBLICATION {slot} IS '{moved}'")
    result = start_cdc(pg_db.dsn, out, '--max_idle_secs', '1')
    output, _ = result.communicate(timeout=120)
    assert result.returncode == 1, output[-3000:]
    assert output.strip().splitlines()[-1] == (
        f"python -m pipelines.cdc: error: publication '{slot}' was made on another "
        f'PostgreSQL cluster (system identifier 7300000000000000001, this one {cluster}): the '
        'database was moved, and WAL positions started over below those the replicas and '
        'consumers hold, which would take every change for an old one. Empty the replicas '
        "(their tables and changebeam's tombstones) or give the sink a new target, run "
        f'COMMENT ON PUBLICATION "{slot}" IS NULL, and start again with --snapshot initial')


def test_an_unlogged_table_is_refused_when_named_and_left_out_otherwise(
        pg_db: Any, tmp_path: Path) -> None:
    """An UNLOGGED table's changes never reach the WAL: a snapshot of it could never be kept
    up to date, so it is not silently copied once."""
    slot = f'changebeam_{pg_db.name}'
    with pg_db.connect() as conn:
        conn.execute('CREATE UNLOGGED TABLE cache (k integer PRIMARY KEY, v text)')
        conn.execute('CREATE TABLE kept (k integer PRIMARY KEY, v text)')
        conn.execute("INSERT INTO cache VALUES (1, 'c')")
        conn.execute("INSERT INTO kept VALUES (1, 'k')")
        output = run_until_error(pg_db.dsn, tmp_path, '--tables', 'public.kept,public.cache')
        assert 'table public.cache is UNLOGGED' in output
        assert 'ALTER TABLE "public"."cache" SET LOGGED' in output
        cdc = start_cdc(pg_db.dsn, tmp_path / 'all', *CAUGHT_UP_OPTIONS)
        wait_for_slot(conn, slot)
        conn.execute("INSERT INTO cache VALUES (2, 'c')")
        conn.execute("INSERT INTO kept VALUES (2, 'k')")
        output = stop_when_caught_up(cdc, conn, slot)
    assert 'not captured: UNLOGGED table(s) public.cache' in output
    docs = read_jsonl_dir(str(tmp_path / 'all'))
    assert sorted((d['op'], d['after']['k']) for d in docs if d['op'] in ('r', 'c')) == [
        ('c', 2), ('r', 1)]
    assert {d['source']['table'] for d in docs} == {'kept'}


def test_dropping_tables_from_a_listed_publication_is_refused_not_silently_narrow(
        pg_db: Any, tmp_path: Path) -> None:
    """After a run with --tables, a run without it would still read only the listed tables
    (the publication cannot become FOR ALL TABLES): it says so instead."""
    slot = f'changebeam_{pg_db.name}'
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE a (id integer PRIMARY KEY)')
        conn.execute('CREATE TABLE b (id integer PRIMARY KEY)')
        cdc = start_cdc(pg_db.dsn, tmp_path / 'out', '--tables', 'public.a', *CAUGHT_UP_OPTIONS)
        wait_for_slot(conn, slot)
        stop_when_caught_up(cdc, conn, slot)
    output = run_until_error(pg_db.dsn, tmp_path)
    assert "publication '" + slot + "' lists the tables public.a, but --tables was not given" \
        in output, output[-2000:]


def test_role_without_replication_is_refused_with_the_fix(pg_db: Any, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute('DROP ROLE IF EXISTS plain_user')
        conn.execute('CREATE ROLE plain_user LOGIN')
    dsn = pg_db.dsn.replace('postgres@', 'plain_user@', 1)
    output = run_until_error(dsn, tmp_path)
    assert 'plain_user' in output and 'REPLICATION' in output


def test_wal_level_replica_is_refused_with_the_fix(tmp_path: Path) -> None:
    from tests.services.postgres import PostgresServer

    server = PostgresServer.start(extra_settings={'wal_level': 'replica'})
    try:
        output = run_until_error(server.dsn('postgres'), tmp_path)
    finally:
        server.stop()
    assert "wal_level is 'replica'" in output and 'wal_level = ' in output


def test_cli_reports_counts_and_never_the_password(pg_db: Any, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE ROLE cdc_pw LOGIN REPLICATION PASSWORD 'hunter2secret'")
        conn.execute('CREATE TABLE small (id integer PRIMARY KEY)')
        conn.execute('INSERT INTO small SELECT generate_series(1, 10)')
        conn.execute('GRANT SELECT ON small TO cdc_pw')
        conn.execute(f'GRANT CREATE ON DATABASE "{pg_db.name}" TO cdc_pw')
        conn.execute('ALTER TABLE small OWNER TO cdc_pw')
    dsn = pg_db.dsn.replace('postgres@', 'cdc_pw:hunter2secret@', 1)
    output = finish(start_cdc(dsn, tmp_path / 'out', '--max_idle_secs', '1',
                              '--tables', 'public.small'))
    assert 'hunter2secret' not in output
    assert 'changes=10' in output
    lines = [doc for path in sorted((tmp_path / 'out').glob('*/*.jsonl'))
             for doc in map(json.loads, path.read_text().splitlines()) if doc['op'] == 'r']
    assert sorted(d['after']['id'] for d in lines) == list(range(1, 11))
    assert os.path.isdir(tmp_path / 'out' / 'public.small')


def test_sigkill_during_snapshot_takes_it_again(pg_db: Any, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE wide (id integer PRIMARY KEY, payload text)')
        conn.execute("INSERT INTO wide SELECT g, repeat('p', 200) "
                     'FROM generate_series(1, 150000) g')
    out = tmp_path / 'out'
    first = start_cdc(pg_db.dsn, out)
    deadline = time.monotonic() + 60
    while not list(out.glob('*/.part-*.tmp')):  # the snapshot is being written
        assert time.monotonic() < deadline and first.poll() is None, 'snapshot never started'
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not list(out.glob('*/*.jsonl')), 'the killed snapshot committed a file'
    with pg_db.connect() as conn:
        conn.execute('UPDATE wide SET payload = NULL WHERE id % 1000 = 0')
        conn.execute('DELETE FROM wide WHERE id > 149000')
        second = start_cdc(pg_db.dsn, out, *CAUGHT_UP_OPTIONS)
        wait_for_slot(conn, f'changebeam_{pg_db.name}')
        conn.execute("INSERT INTO wide VALUES (0, 'after the restart')")
        output = stop_when_caught_up(second, conn, f'changebeam_{pg_db.name}')
        assert 'taking the snapshot again' in output
        assert_rebuilt_equals_source(conn, read_jsonl_dir(str(out)), ['public.wide'])


def test_lost_slot_is_refused_with_the_recovery(tmp_path: Path) -> None:
    from tests.services.postgres import PostgresServer

    server = PostgresServer.start(extra_settings={
        'max_slot_wal_keep_size': '1MB', 'min_wal_size': '32MB', 'max_wal_size': '32MB'})
    try:
        dsn = server.dsn('postgres')
        with server.connect('postgres') as conn:
            conn.execute('CREATE TABLE t (id integer PRIMARY KEY, payload text)')
            conn.execute("SELECT pg_create_logical_replication_slot('changebeam_postgres', "
                         "'pgoutput')")
            for _ in range(40):  # the inactive slot falls ~80 MB behind; checkpoints remove it
                conn.execute("INSERT INTO t SELECT g, repeat('x', 2000) "
                             'FROM generate_series(1, 1000) g ON CONFLICT (id) DO UPDATE '
                             'SET payload = excluded.payload')
                conn.execute('SELECT pg_switch_wal()')
                conn.execute('CHECKPOINT')
                status = conn.execute('SELECT wal_status FROM pg_replication_slots').fetchone()
                if status[0] == 'lost':
                    break
            assert status[0] == 'lost'
        output = run_until_error(dsn, tmp_path, '--snapshot', 'never')
    finally:
        server.stop()
    assert "slot 'changebeam_postgres' is lost" in output
    assert "pg_drop_replication_slot('changebeam_postgres')" in output
    assert '--snapshot initial' in output


def test_table_rewrite_during_the_snapshot_loses_no_row(pg_db: Any, tmp_path: Path) -> None:
    # ALTER … TYPE rewrites the table, and a rewrite (like TRUNCATE) is not MVCC-safe: a
    # snapshot taken before it sees the table empty. The rewrite must wait for the snapshot.
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE a_big (id integer PRIMARY KEY, payload text)')
        conn.execute("INSERT INTO a_big SELECT g, repeat('p', 300) "
                     'FROM generate_series(1, 100000) g')
        conn.execute('CREATE TABLE z_small (id integer PRIMARY KEY, v integer)')
        conn.execute('INSERT INTO z_small SELECT g, g FROM generate_series(1, 1000) g')
        cdc = start_cdc(pg_db.dsn, tmp_path / 'out', *CAUGHT_UP_OPTIONS)
        deadline = time.monotonic() + 60
        while not conn.execute('SELECT 1 FROM pg_replication_slots WHERE slot_name = %s',
                               (f'changebeam_{pg_db.name}',)).fetchone():
            assert time.monotonic() < deadline and cdc.poll() is None, 'no slot'
            time.sleep(0.01)
        conn.execute('ALTER TABLE z_small ALTER COLUMN v TYPE bigint')  # waits, then rewrites
        stop_when_caught_up(cdc, conn, f'changebeam_{pg_db.name}')
        docs = read_jsonl_dir(str(tmp_path / 'out'))
        assert sum(d['op'] == 'r' and d['source']['table'] == 'z_small' for d in docs) == 1000
        assert_rebuilt_equals_source(conn, docs, ['public.a_big', 'public.z_small'])


@pytest.mark.parametrize('ddl, refused', [
    ('ALTER TABLE t ALTER COLUMN v TYPE bigint', 'truncated or rewritten during the snapshot: t'),
    ('TRUNCATE t', 'truncated or rewritten during the snapshot: t'),
    ('ALTER TABLE t DROP COLUMN v', 'columns dropped or renamed during the snapshot: public.t'),
    ('ALTER TABLE t RENAME COLUMN v TO w',
     'columns dropped or renamed during the snapshot: public.t'),
    ('ALTER TABLE t ADD COLUMN w integer DEFAULT 7', None),
    ('ALTER TABLE t ALTER COLUMN note TYPE text', None),  # varchar -> text: no rewrite
])
def test_ddl_between_the_snapshot_and_its_read_is_refused_or_read_as_of_the_snapshot(
        pg_db: Any, ddl: str, refused: str | None) -> None:
    """DDL committed after the slot's snapshot but before the read locks the table: a table
    the snapshot would see empty (rewrite, TRUNCATE) or could not select (a column gone) is
    refused before any row; otherwise every row is read in the snapshot's columns."""
    from transforms.sources.postgres.replication import ReplicationStream
    from transforms.sources.postgres.snapshot import SnapshotInvalidated, read_snapshot

    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE t (id integer PRIMARY KEY, v integer, note varchar(8))')
        conn.execute("INSERT INTO t SELECT g, g, 'n' || g FROM generate_series(1, 100) g")
        stream = ReplicationStream.connect(pg_db.dsn)
        try:
            created = stream.create_slot('probe', export_snapshot=True)
            conn.execute(ddl)  # after the snapshot's point
            assembler = ChangeAssembler('t', 't', lambda oid: primary_key(conn, oid),
                                        lambda oids: {})
            with pg_db.connect(options=SESSION_OPTIONS) as reader:
                read = functools.partial(read_snapshot, reader, created.snapshot,
                                         resolve_tables(conn, ()), assembler,
                                         created.consistent_point)
                if refused is not None:
                    with pytest.raises(SnapshotInvalidated, match=f'^{refused}$'):
                        next(read())
                    return
                events = [event for batch in read() for event in batch]
        finally:
            stream.close()
    rows = [event.after for event in events if event.op is Op.READ]
    assert rows == [{'id': i, 'v': i, 'note': f'n{i}'} for i in range(1, 101)]
    assert [c.name for c in events[0].table.columns] == ['id', 'v', 'note']


def test_a_partition_truncated_after_the_snapshot_point_is_refused(pg_db: Any) -> None:
    """A partitioned table has no storage of its own: its partitions are what a rewrite or
    TRUNCATE after the snapshot's point would empty."""
    from transforms.sources.postgres.replication import ReplicationStream
    from transforms.sources.postgres.snapshot import SnapshotInvalidated, read_snapshot

    with pg_db.connect() as conn:
        conn.execute(PARTITIONED)
        stream = ReplicationStream.connect(pg_db.dsn)
        try:
            created = stream.create_slot('probe', export_snapshot=True)
            conn.execute('TRUNCATE m_feb')
            assembler = ChangeAssembler('t', 't', lambda oid: primary_key(conn, oid),
                                        lambda oids: {})
            with pg_db.connect(options=SESSION_OPTIONS) as reader:
                with pytest.raises(SnapshotInvalidated,
                                   match=r'^truncated or rewritten during the snapshot: m_feb$'):
                    next(read_snapshot(reader, created.snapshot, resolve_tables(conn, ()),
                                       assembler, created.consistent_point))
        finally:
            stream.close()


def test_a_column_dropped_before_the_snapshot_is_read_retakes_it(pg_db: Any,
                                                                 tmp_path: Path) -> None:
    """A column dropped after the slot's consistent point, before the snapshot locks the
    table: the pipeline drops the slot, takes the snapshot again, and the rebuilt table
    equals the source."""
    from tests.services.proxy import CuttingProxy

    slot = f'changebeam_{pg_db.name}'
    proxy = CuttingProxy.start(pg_db.server.port)
    with pg_db.connect() as conn, pg_db.connect() as running:
        conn.execute('CREATE TABLE t (id integer PRIMARY KEY, v integer, w text)')
        conn.execute("INSERT INTO t SELECT g, g, 'w' || g FROM generate_series(1, 500) g")
        # A transaction with an id keeps the new slot short of its consistent point.
        running.execute('BEGIN')
        running.execute('SELECT pg_current_xact_id()')
        dsn = f'postgresql://{pg_db.server.user}@127.0.0.1:{proxy.port}/{pg_db.name}'
        cdc = start_cdc(dsn, tmp_path / 'out', *CAUGHT_UP_OPTIONS)
        try:
            deadline = time.monotonic() + 60
            while not conn.execute('SELECT active FROM pg_replication_slots '
                                   'WHERE slot_name = %s', (slot,)).fetchone():
                assert time.monotonic() < deadline and cdc.poll() is None, 'no slot'
                time.sleep(0.01)
            proxy.hold_new()  # the snapshot's connection waits
            running.execute('COMMIT')
            while not conn.execute('SELECT confirmed_flush_lsn IS NOT NULL FROM '
                                   'pg_replication_slots WHERE slot_name = %s',
                                   (slot,)).fetchone()[0]:  # created: its snapshot is taken
                assert time.monotonic() < deadline and cdc.poll() is None, 'slot not created'
                time.sleep(0.01)
            conn.execute('ALTER TABLE t DROP COLUMN v')
            conn.execute("UPDATE t SET w = 'x' || id WHERE id <= 10")
            proxy.release_new()
            output = stop_when_caught_up(cdc, conn, slot)
            assert 'columns dropped or renamed during the snapshot: public.t' in output
            assert 'taking the snapshot again' in output
            docs = read_jsonl_dir(str(tmp_path / 'out'))
            assert_rebuilt_equals_source(conn, docs, ['public.t'])
            assert all('v' not in d['after'] for d in docs if d['op'] == 'r')
        finally:
            if cdc.poll() is None:
                cdc.kill()
            proxy.close()


def _dedup_per_key(docs: list[dict[str, Any]]) -> dict[int, list[int]]:
    """Values per key in delivery order, each source position counted once (a consumer
    drops what it saw: the docs carry their positions)."""
    seen: set[tuple[int, int]] = set()
    per_key: dict[int, list[int]] = collections.defaultdict(list)
    for doc in docs:
        position = (doc['source']['commit_lsn'], doc['source']['lsn'])
        if doc['op'] != 'u' or position in seen:
            continue
        seen.add(position)
        per_key[doc['after']['k']].append(doc['after']['v'])
    return per_key


@pytest.mark.parametrize('outage', ['walsender terminated', 'server restarted',
                                    'network cut three times', 'network silent',
                                    'network silent on the control connection'])
def test_a_lost_connection_is_reopened_and_loses_nothing(tmp_path: Path, outage: str) -> None:
    """The source reconnects by itself and reads again what it had not emitted: every
    committed change arrives, in order per key, in one run that exits with status 0."""
    from tests.services.postgres import PostgresServer
    from tests.services.proxy import CuttingProxy

    server = PostgresServer.start()
    proxy = CuttingProxy.start(server.port)
    try:
        dsn, slot = server.dsn('postgres'), 'changebeam_postgres'
        if outage.startswith('network'):  # the pipeline connects through the proxy
            dsn = f'postgresql://{server.user}@127.0.0.1:{proxy.port}/postgres'
        if outage == 'network silent':  # the walsender left behind frees the slot soon
            with server.connect('postgres') as conn:
                conn.execute("ALTER SYSTEM SET wal_sender_timeout = '5s'")
                conn.execute('SELECT pg_reload_conf()')
        with server.connect('postgres') as conn:
            conn.execute('CREATE TABLE counters (k integer PRIMARY KEY, v integer NOT NULL)')
            conn.execute('INSERT INTO counters SELECT g, 0 FROM generate_series(1, 20) g')
        writing, paused = threading.Event(), threading.Event()
        writing.set()
        committed: dict[int, list[int]] = collections.defaultdict(list)
        idle = threading.Event()

        def writer() -> None:
            import random
            rng = random.Random(2)
            while writing.is_set():
                if paused.is_set():
                    idle.set()  # its connection is closed
                    time.sleep(0.05)
                    continue
                with server.connect('postgres', autocommit=False) as conn:
                    while writing.is_set() and not paused.is_set():
                        # Transactions of 1-30 updates: a loss often falls inside one.
                        done = []
                        for _ in range(rng.randint(1, 30)):
                            k = rng.randint(1, 20)
                            done.append((k, conn.execute(
                                'UPDATE counters SET v = v + 1 WHERE k = %s RETURNING v',
                                (k,)).fetchone()[0]))
                        conn.commit()
                        for k, v in done:
                            committed[k].append(v)
                        time.sleep(0.002)

        pipeline = start_cdc(dsn, tmp_path / 'out', '--snapshot', 'never',
                             '--reconnect_secs', '60', *CAUGHT_UP_OPTIONS)
        thread = threading.Thread(target=writer)
        with server.connect('postgres') as conn:
            wait_for_slot(conn, slot)
        thread.start()
        time.sleep(2)
        if outage == 'walsender terminated':
            with server.connect('postgres') as conn:
                assert conn.execute('SELECT pg_terminate_backend(active_pid) FROM '
                                    'pg_replication_slots WHERE slot_name = %s',
                                    (slot,)).fetchone()[0]
        elif outage == 'network silent':
            proxy.black_hole()  # the replication connection: open, but nothing comes through
        elif outage == 'network silent on the control connection':
            proxy.black_hole('first')  # opened first; heartbeats (0.5 s) query it
        elif outage.startswith('network'):
            for _ in range(3):  # at a byte: mostly inside a transaction, often mid-message
                proxy.cut_after(20_000)
                proxy.wait_for_cut(timeout=30)
                time.sleep(0.5)
        else:
            paused.set()
            # The writer's connection closes between transactions: a restart at its COMMIT
            # could commit what the writer then takes for failed.
            assert idle.wait(30), 'the writer never paused'
            server.restart(down_secs=2)
            paused.clear()
        time.sleep(3)
        writing.clear()
        thread.join()
        with server.connect('postgres') as conn:
            wait_for_slot(conn, slot)  # back again
            output = stop_when_caught_up(pipeline, conn, slot)
    finally:
        proxy.close()
        server.stop()
    assert 'reconnecting' in output and 'reconnected after' in output, output[-3000:]
    if outage == 'network silent':
        assert 'no answer from the server for 2' in output, output[-3000:]
    if outage == 'network silent on the control connection':
        assert 'the control connection: no answer from the server for 20 s; reconnecting' \
            in output, output[-3000:]
    delivered = _dedup_per_key(read_jsonl_dir(str(tmp_path / 'out')))
    assert sum(map(len, committed.values())) > 100
    for k, values in committed.items():
        assert delivered[k] == values, f'key {k}: committed {values}, delivered {delivered[k]}'


def test_a_commit_right_after_a_message_record_is_delivered(pg_db: Any, tmp_path: Path) -> None:
    """A non-transactional message (such as the source's own heartbeat) reports the end of
    its WAL record as its position, which is where the next record starts: a commit written
    right after it has the same position.  Both arrive, and the run ends with status 0."""
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE t (id integer PRIMARY KEY)')
    pipeline = start_cdc(pg_db.dsn, tmp_path / 'out', '--snapshot', 'never',
                         '--slot_name', 'adjacent', *CAUGHT_UP_OPTIONS)
    message_ends = {}
    with pg_db.connect() as conn:
        wait_for_slot(conn, 'adjacent')
        with pg_db.connect(autocommit=False) as writer:
            for i in range(20):
                writer.execute('INSERT INTO t VALUES (%s)', (i,))
                # Written while the insert's transaction is open: its commit record follows.
                message_ends[i] = conn.execute(
                    "SELECT pg_logical_emit_message(false, 'app', %s) - '0/0'",
                    (str(i),)).fetchone()[0]
                writer.commit()
        output = stop_when_caught_up(pipeline, conn, 'adjacent')
    docs = read_jsonl_dir(str(tmp_path / 'out'))
    inserts = {d['after']['id']: d['source']['commit_lsn'] for d in docs if d['op'] == 'c'}
    assert sorted(inserts) == list(range(20)), output[-3000:]
    shared = [i for i in range(20) if inserts[i] == message_ends[i]]
    assert len(shared) >= 10, (inserts, message_ends)  # the case this test is about happened
    messages = {int(d['message']['content']): d['source']['lsn'] for d in docs
                if d['op'] == 'm' and (d.get('message') or {}).get('prefix') == 'app'}
    assert messages == message_ends, output[-3000:]


@pytest.mark.parametrize('outage', ['down', 'frozen'])
def test_a_source_unreachable_for_longer_than_reconnect_secs_stops_with_one_line(
        tmp_path: Path, outage: str) -> None:
    """The server shuts down, or freezes (SIGSTOP: connections stay open and nothing answers,
    which neither a closed socket nor TCP reveals): after --reconnect_secs the pipeline stops
    with one line instead of waiting for ever."""
    from tests.services.postgres import PostgresServer

    server = PostgresServer.start()
    try:
        dsn = server.dsn('postgres')
        with server.connect('postgres') as conn:
            conn.execute('CREATE TABLE t (id integer PRIMARY KEY)')
        pipeline = start_cdc(dsn, tmp_path / 'out', '--snapshot', 'never',
                             '--reconnect_secs', '3', '--heartbeat_secs', '0.5')
        with server.connect('postgres') as conn:
            wait_for_slot(conn, 'changebeam_postgres')
            conn.execute('INSERT INTO t VALUES (1)')
        wait_for_first_insert(tmp_path / 'out', pipeline)
        if outage == 'down':
            server.halt()
            output, waited = ended_by_itself(pipeline, timeout=60)
            server.resume()
        else:
            server.freeze()
            try:
                output, waited = ended_by_itself(pipeline, timeout=150)
            finally:
                server.thaw()
    finally:
        server.stop()
    assert_gave_up_in_one_line(pipeline, output)
    if outage == 'down':
        assert 3 <= waited < 30
    else:  # the replication stream's silence or the heartbeat's unanswered query, 20 s
        assert 'no answer from the server for 2' in output, output[-3000:]
        assert 20 <= waited < 90, waited
    assert [d['after']['id'] for d in read_jsonl_dir(str(tmp_path / 'out'))
            if d['op'] == 'c'] == [1]


def test_a_source_restart_during_the_snapshot_says_what_to_do(tmp_path: Path) -> None:
    """The snapshot is not resumed but taken again: the pipeline stops, and its line said
    only psycopg's 'the connection is lost' (which side? then what?)."""
    from tests.services.postgres import PostgresServer

    source = PostgresServer.start()  # its own: it restarts mid-snapshot
    try:
        with source.connect() as conn:
            conn.execute('CREATE TABLE wide (id integer PRIMARY KEY, payload text)')
            conn.execute("INSERT INTO wide SELECT g, repeat('p', 200) "
                         'FROM generate_series(1, 300000) g')
        out = tmp_path / 'out'
        cdc = start_cdc(source.dsn(), out, '--reconnect_secs', '60', '--max_idle_secs', '5')
        deadline = time.monotonic() + 90
        while not any(out.glob('public.wide/part-*')):  # rows of the snapshot written
            assert cdc.poll() is None and time.monotonic() < deadline, \
                cdc.communicate()[0][-3000:]
            time.sleep(0.05)
        source.restart(down_secs=2)
        output, _ = cdc.communicate(timeout=240)
        assert cdc.returncode == 1, output[-3000:]
        last = output.strip().splitlines()[-1]
        assert last.startswith('python -m pipelines.cdc: error: the snapshot: the connection '
                               'to the source broke ('), last
        assert last.endswith('run again once it is back: the snapshot is taken again (none of '
                             'it was confirmed)'), last
        finish(start_cdc(source.dsn(), tmp_path / 'again', '--max_idle_secs', '2'))
        ids = {d['after']['id'] for d in read_jsonl_dir(str(tmp_path / 'again'))
               if d['op'] == 'r'}
        assert len(ids) == 300000
    finally:
        source.stop()


@contextlib.contextmanager
def database_in(postgres: Any, encoding: str) -> Iterator[PgDatabase]:
    """A throwaway database in ``encoding`` (C collation), dropped afterwards."""
    name = f'enc_{encoding.lower()}_{uuid.uuid4().hex[:8]}'
    with postgres.connect() as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' "
                     "LC_CTYPE 'C' TEMPLATE template0")
    try:
        yield PgDatabase(name, postgres)
    finally:
        postgres.drop_database(name)


@pytest.mark.parametrize('encoding', ['LATIN1', 'SQL_ASCII'])
def test_a_database_in_another_encoding_streams_its_text(postgres: Any, tmp_path: Path,
                                                         encoding: str) -> None:
    """pgoutput prints text in the client encoding: a LATIN1 database's 'é' streamed as a
    LATIN1 byte, which no UTF-8 decoder takes (every such change a dead letter); a SQL_ASCII
    database was refused for its wal_level (its session returns bytes)."""
    with database_in(postgres, encoding) as db:
        name = db.name
        with db.connect() as conn:
            conn.execute("SET client_encoding = 'UTF8'")
            conn.execute('CREATE TABLE t (id int PRIMARY KEY, s text)')
            conn.execute("INSERT INTO t VALUES (1, 'café, snapshot')")
            cdc = start_cdc(db.dsn, tmp_path / 'out', *CAUGHT_UP_OPTIONS)
            wait_for_slot(conn, f'changebeam_{name}')
            conn.execute("INSERT INTO t VALUES (2, 'naïve, streamed')")
            conn.execute("UPDATE t SET s = s || ' ß' WHERE id = 1")
            output = stop_when_caught_up(cdc, conn, f'changebeam_{name}')
            docs = read_jsonl_dir(str(tmp_path / 'out'))
            assert_rebuilt_equals_source(conn, docs, ['public.t'])
        assert sorted(d['after']['s'] for d in docs if d['op'] != 'm') == [
            'café, snapshot', 'café, snapshot ß', 'naïve, streamed'], output[-3000:]
        assert not list((tmp_path / 'out' / '_dead_letters').glob('*.jsonl')), output


def test_tables_whose_dotted_names_join_alike_stay_two_tables(pg_db: Any, tmp_path: Path) -> None:
    """``"a.b".c`` and ``a."b.c"`` are two tables: each gets its own directory, schema versions
    and per-table order, none the other's columns (both used to be ``a.b.c``)."""
    with pg_db.connect() as conn:
        conn.execute('CREATE SCHEMA "a.b"')
        conn.execute('CREATE SCHEMA a')
        conn.execute('CREATE TABLE "a.b".c (id integer PRIMARY KEY, x text)')
        conn.execute('CREATE TABLE a."b.c" (id integer PRIMARY KEY, y integer, z integer)')
        conn.execute('''INSERT INTO "a.b".c VALUES (1, 'one'), (2, 'two')''')
        conn.execute('INSERT INTO a."b.c" VALUES (1, 10, 100)')
    out = tmp_path / 'out'
    process = start_cdc(pg_db.dsn, out, '--schema_registry', str(tmp_path / 'schemas'),
                        *CAUGHT_UP_OPTIONS)
    slot = f'changebeam_{pg_db.name}'.lower()
    with pg_db.connect() as conn:
        wait_for_slot(conn, slot)
        with conn.transaction():  # one transaction over both
            conn.execute('''INSERT INTO "a.b".c VALUES (3, 'three')''')
            conn.execute('INSERT INTO a."b.c" VALUES (2, 20, 200), (3, 30, 300)')
        output = stop_when_caught_up(process, conn, slot)
    by_directory = {path.name: [json.loads(line) for file in sorted(path.glob('*.jsonl'))
                                for line in file.read_text().splitlines()]
                    for path in out.iterdir() if path.is_dir()}
    assert not by_directory.pop('_dead_letters', None), output[-2000:]
    assert set(by_directory) == {'%22a.b%22.c', 'a.%22b.c%22'}, output[-2000:]
    for directory, columns in (('%22a.b%22.c', {'id', 'x'}), ('a.%22b.c%22', {'id', 'y', 'z'})):
        docs = by_directory[directory]
        rows = [d for d in docs if d['op'] != 'm']
        assert all(set(d['after']) == columns for d in rows), rows
        changes = [d['message'] for d in docs if d['op'] == 'm'
                   and d['message'].get('kind') == 'schema_change']
        assert len(changes) == 1 and changes[0]['previous_version'] is None, changes
    streamed = [d for d in by_directory['a.%22b.c%22'] if d['op'] == 'c']
    assert [d['transaction']['data_collection_order'] for d in streamed] == [1, 2]


def test_sql_ascii_bytes_that_are_not_utf8_are_dead_letters_snapshot_and_stream(
        postgres: Any, tmp_path: Path) -> None:
    """A SQL_ASCII database stores any bytes as text.  A value that is not UTF-8 made the
    server refuse the whole snapshot copy (a crash, no row read); now that row, as a change
    streamed with such a value, is a dead letter naming the column and the bytes, and every
    other row arrives."""
    with database_in(postgres, 'SQL_ASCII') as db:
        name = db.name
        with db.connect() as conn:
            conn.execute("SET client_encoding = 'SQL_ASCII'")
            conn.execute('CREATE TABLE t (id int PRIMARY KEY, s text, n int)')
            conn.execute(b"INSERT INTO t VALUES (1, 'caf\xe9 in latin1', 1), "
                         b"(2, 'ascii', 2), (3, 'caf\xc3\xa9 in utf-8', 3), (4, 'tab\tnl\n', 4)")
            conn.execute("SET client_encoding = 'UTF8'")  # for the queries' parameters
            cdc = start_cdc(db.dsn, tmp_path / 'out', *CAUGHT_UP_OPTIONS)
            wait_for_slot(conn, f'changebeam_{name}')
            conn.execute("SET client_encoding = 'SQL_ASCII'")
            conn.execute(b"INSERT INTO t VALUES (5, 'na\xefve', 5), (6, 'fine', 6)")
            conn.execute("SET client_encoding = 'UTF8'")
            output = stop_when_caught_up(cdc, conn, f'changebeam_{name}')
        docs = [d for d in read_jsonl_dir(str(tmp_path / 'out')) if 'op' in d]  # not letters
        rows = {d['after']['id']: d['after']['s'] for d in docs if d['op'] in ('r', 'c')}
        assert rows == {2: 'ascii', 3: 'café in utf-8', 4: 'tab\tnl\n', 6: 'fine'}, output
        letters = [json.loads(line) for path in (tmp_path / 'out' / '_dead_letters').glob(
            '*.jsonl') for line in path.read_text().splitlines()]
        by_step = {letter['step']: letter for letter in letters}
        assert sorted(by_step) == ['DecodeWal', 'ReadSnapshot'], letters
        snapshot = by_step['ReadSnapshot']
        assert "column 's' of public.t" in snapshot['error'], snapshot
        assert "b'caf\\xe9 in latin1'" in snapshot['error'], snapshot
        # The row's fields in COPY text form, for a person (or COPY) to take up.
        assert base64.b64decode(snapshot['payload']['base64']) == b'1\tcaf\xe9 in latin1\t1'
        streamed = by_step['DecodeWal']
        assert "the text of column 2 is not UTF-8 (b'na\\xefve')" in streamed['error'], streamed
        assert b"na\xefve" in base64.b64decode(streamed['payload']['base64'])
        # The snapshot did not show every row: its end says so, so that no consumer takes
        # the row it left out for one the source deleted.
        ends = [d['message'] for d in docs if d['op'] == 'm'
                and d['message'].get('kind') == 'snapshot_complete']
        assert [(end['rows'], end.get('skipped')) for end in ends] == [(3, 1)], ends
