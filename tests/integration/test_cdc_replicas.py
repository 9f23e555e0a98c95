"""A PostgreSQL source kept in sync into another PostgreSQL database and into MariaDB, through
``python -m pipelines.cdc`` as a user runs it: the target must equal the source, even when the
pipeline is killed mid-stream and replays."""
from __future__ import annotations

import datetime as dt
import decimal
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_postgres_source import (
    CAUGHT_UP_OPTIONS,
    TYPES_SCHEMA,
    database_in,
    finish,
    mixed_workload,
    start_cdc_to,
    stop_when_caught_up,
    wait_for_slot,
)

pytestmark = pytest.mark.integration


def pg_rows(conn: Any, table: str) -> dict[Any, Any]:
    """Rows as PostgreSQL's own JSON rendering, without changebeam's position column."""
    rows = conn.execute(f"SELECT to_jsonb(_row) - '_cb_pos' FROM {table} _row").fetchall()
    return {json.dumps(r[0].get('id', r[0].get('k')), sort_keys=True): r[0] for r in rows}


def test_postgres_replica_equals_source_for_every_type(postgres: Any, pg_db: Any,
                                                       tmp_path: Path) -> None:
    target = postgres.database('replica')
    try:
        with pg_db.connect() as conn:
            conn.execute(TYPES_SCHEMA)
            with target.connect() as tconn:  # the enum and domain must exist on the target
                tconn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');"
                              'CREATE DOMAIN posint AS integer CHECK (VALUE > 0)')
            cdc = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
            wait_for_slot(conn, f'changebeam_{pg_db.name}')
            mixed_workload(conn)
            stop_when_caught_up(cdc, conn, f'changebeam_{pg_db.name}')
            with target.connect() as tconn:
                for table in ('public.every_type', 'public.other', 'public.full_identity'):
                    assert pg_rows(tconn, table) == pg_rows(conn, table), table
    finally:
        postgres.drop_database(target.name)


def test_postgres_replica_survives_sigkill_and_replay(postgres: Any, pg_db: Any,
                                                     tmp_path: Path) -> None:
    target = postgres.database('replica')
    stop = threading.Event()

    def writer() -> None:
        import random
        rng = random.Random(3)
        with pg_db.connect() as conn:
            next_id = 1000
            while not stop.is_set():
                with conn.transaction():
                    conn.execute('UPDATE counters SET v = v + 1 WHERE k = %s',
                                 (rng.randint(1, 50),))
                    conn.execute('INSERT INTO counters VALUES (%s, 0)', (next_id,))
                    conn.execute('DELETE FROM counters WHERE k = %s', (next_id - 7,))
                next_id += 1

    try:
        with pg_db.connect() as conn:
            conn.execute('CREATE TABLE counters (k integer PRIMARY KEY, v integer NOT NULL)')
            conn.execute('INSERT INTO counters SELECT g, 0 FROM generate_series(1, 50) g')
            first = start_cdc_to(pg_db.dsn, target.dsn, tmp_path)
            wait_for_slot(conn, f'changebeam_{pg_db.name}')
            thread = threading.Thread(target=writer)
            thread.start()
            try:
                time.sleep(4)
                first.send_signal(signal.SIGKILL)
                first.wait()
                time.sleep(1)
                second = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
                time.sleep(4)
            finally:
                stop.set()
                thread.join()
            stop_when_caught_up(second, conn, f'changebeam_{pg_db.name}')
            with target.connect() as tconn:
                replica = pg_rows(tconn, 'public.counters')
            source = pg_rows(conn, 'public.counters')
        assert len(source) > 50 and replica == source
    finally:
        postgres.drop_database(target.name)


def test_a_snapshot_taken_again_leaves_no_deleted_or_doubled_row(postgres: Any, pg_db: Any,
                                                                  tmp_path: Path) -> None:
    """Killed while its snapshot streams into a replica, a pipeline leaves part of it applied;
    the next start takes the snapshot again.  Rows deleted meanwhile must go from the replica,
    and a keyless table's appended rows must not be doubled."""
    import psycopg

    target = postgres.database('replica')
    slot = f'changebeam_{pg_db.name}'
    try:
        with pg_db.connect() as conn, target.connect() as tconn:
            conn.execute('CREATE TABLE a_log (line text) ; ALTER TABLE a_log REPLICA IDENTITY FULL')
            conn.execute("INSERT INTO a_log SELECT 'l' || g FROM generate_series(1, 2000) g")
            conn.execute('CREATE TABLE b_wide (id integer PRIMARY KEY, payload text)')
            conn.execute("INSERT INTO b_wide SELECT g, repeat('p', 200) "
                         'FROM generate_series(1, 150000) g')
            first = start_cdc_to(pg_db.dsn, target.dsn, tmp_path)
            deadline = time.monotonic() + 60
            while True:  # part of b_wide (so all of a_log) is in the replica
                assert time.monotonic() < deadline and first.poll() is None, 'no snapshot rows'
                try:
                    if tconn.execute('SELECT count(*) FROM b_wide').fetchone()[0]:
                        break
                except psycopg.errors.UndefinedTable:
                    pass
                time.sleep(0.02)
            first.send_signal(signal.SIGKILL)
            first.wait()
            applied = tconn.execute('SELECT count(*) FROM b_wide').fetchone()[0]
            assert 0 < applied < 150000, applied
            conn.execute('DELETE FROM b_wide WHERE id <= 100')  # rows the replica holds
            conn.execute("DELETE FROM a_log WHERE line IN ('l1', 'l2')")
            second = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
            wait_for_slot(conn, slot)
            conn.execute("INSERT INTO b_wide VALUES (0, 'after the restart')")
            output = stop_when_caught_up(second, conn, slot)
            assert 'taking the snapshot again' in output
            assert pg_rows(tconn, 'public.b_wide') == pg_rows(conn, 'public.b_wide')
            lines = 'SELECT line FROM a_log ORDER BY line'
            assert tconn.execute(lines).fetchall() == conn.execute(lines).fetchall()
    finally:
        postgres.drop_database(target.name)


def test_snapshot_only_backfills_bring_a_replica_up_to_date_each_time(
        postgres: Any, pg_db: Any, tmp_path: Path) -> None:
    """``--snapshot only`` (no slot) run again later: rows changed, added and deleted since
    the first backfill are right in the replica after the second."""
    target = postgres.database('replica')
    try:
        with pg_db.connect() as conn, target.connect() as tconn:
            conn.execute('CREATE TABLE items (id integer PRIMARY KEY, qty integer)')
            conn.execute('INSERT INTO items SELECT g, g FROM generate_series(1, 500) g')
            for run in range(2):
                if run:
                    conn.execute('UPDATE items SET qty = -qty WHERE id <= 10')
                    conn.execute('DELETE FROM items WHERE id > 490')
                    conn.execute('INSERT INTO items SELECT g, g FROM generate_series(501, 520) g')
                finish(start_cdc_to(pg_db.dsn, target.dsn, tmp_path, '--snapshot', 'only'))
                assert pg_rows(tconn, 'public.items') == pg_rows(conn, 'public.items'), run
            assert not conn.execute('SELECT count(*) FROM pg_replication_slots').fetchone()[0]
    finally:
        postgres.drop_database(target.name)


def test_a_backfill_keeps_the_replica_rows_it_could_not_read(postgres: Any,
                                                             tmp_path: Path) -> None:
    """A SQL_ASCII row whose text is not UTF-8 is a dead letter of the snapshot.  That
    snapshot did not show every row, so the replica's copy of the row must not be taken for
    one the source deleted.  Before, the replica lost the row, which the source still has
    (a dead letter of the snapshot is COPY text: redrive cannot write it back).  Now it
    stays, with its older value, and the output says why."""
    target = postgres.database('replica')
    try:
        with database_in(postgres, 'SQL_ASCII') as db, db.connect() as conn, \
                target.connect() as tconn:
            conn.execute('CREATE TABLE t (id integer PRIMARY KEY, s text)')
            conn.execute("INSERT INTO t VALUES (1, 'ascii'), (2, 'fine'), (3, 'kept')")
            finish(start_cdc_to(db.dsn, target.dsn, tmp_path / 'first', '--snapshot', 'only'))
            read = 'SELECT id, s FROM t ORDER BY id'
            assert tconn.execute(read).fetchall() == [(1, 'ascii'), (2, 'fine'), (3, 'kept')]
            conn.execute("SET client_encoding = 'SQL_ASCII'")
            conn.execute(b"UPDATE t SET s = 'na\xefve' WHERE id = 2")
            conn.execute("UPDATE t SET s = 'new' WHERE id = 1")
            output = finish(start_cdc_to(db.dsn, target.dsn, tmp_path / 'second',
                                         '--snapshot', 'only'))
            assert tconn.execute(read).fetchall() == [(1, 'new'), (2, 'fine'), (3, 'kept')]
            assert 'the snapshot of public.t left 1 row(s) out (dead letters)' in output, \
                output[-3000:]
            letters = [json.loads(line) for path in (tmp_path / 'second' / 'dead').glob(
                '*.jsonl') for line in path.read_text().splitlines()]
            assert [letter['step'] for letter in letters] == ['ReadSnapshot'], letters
            assert "b'na\\xefve'" in letters[0]['error'], letters
    finally:
        postgres.drop_database(target.name)


def test_a_backfill_during_a_commit_not_yet_visible_leaves_the_replica_right(
        tmp_path: Path) -> None:
    """A commit already in the WAL but not yet visible (here it waits for a synchronous
    standby; a slow fsync does the same, for less time) when ``--snapshot only`` starts: the
    stream delivers it to the replica; the backfill, which cannot see it, must not overwrite
    it with the row as it was before."""
    from tests.services.postgres import PostgresServer

    server = PostgresServer.start({'synchronous_commit': 'local'})  # only one session waits
    try:
        source, target = server.database('src'), server.database('replica')
        with source.connect() as conn:
            conn.execute('CREATE TABLE items (id integer PRIMARY KEY, qty integer)')
            conn.execute('INSERT INTO items SELECT g, g FROM generate_series(1, 100) g')
            cdc = start_cdc_to(source.dsn, target.dsn, tmp_path / 'stream', *CAUGHT_UP_OPTIONS)
            slot = f'changebeam_{source.name}'
            wait_for_slot(conn, slot)
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
            conn.execute('SELECT pg_reload_conf()')

            def held_update() -> None:
                with source.connect() as held:
                    # A backend takes a reloaded setting before its next statement, once the
                    # postmaster has passed the reload on: soon, not at once.
                    waited = time.monotonic() + 30
                    while held.execute('SHOW synchronous_standby_names').fetchone()[0] \
                            != 'nobody':
                        assert time.monotonic() < waited, 'the setting never took effect'
                        time.sleep(0.05)
                    held.execute('SET synchronous_commit = on')
                    held.execute('UPDATE items SET qty = -1 WHERE id = 1')  # waits at COMMIT

            updater = threading.Thread(target=held_update)
            updater.start()
            deadline = time.monotonic() + 30
            while not conn.execute("SELECT 1 FROM pg_stat_activity "
                                   "WHERE wait_event = 'SyncRep'").fetchone():
                assert time.monotonic() < deadline, 'the update never waited for the standby'
                time.sleep(0.05)
            backfill = start_cdc_to(source.dsn, target.dsn, tmp_path / 'backfill',
                                    '--snapshot', 'only')
            # Until the backfill is done or waits for the transaction to end (its slot does).
            while backfill.poll() is None and not conn.execute(
                    'SELECT 1 FROM pg_replication_slots WHERE temporary').fetchone():
                assert time.monotonic() < deadline + 60, 'the backfill neither ended nor waited'
                time.sleep(0.05)
            conn.execute('ALTER SYSTEM RESET synchronous_standby_names')
            conn.execute('SELECT pg_reload_conf()')
            updater.join(30)
            finish(backfill)
            stop_when_caught_up(cdc, conn, slot)
            with target.connect() as tconn:
                assert pg_rows(tconn, 'public.items') == pg_rows(conn, 'public.items')
                assert tconn.execute('SELECT qty FROM items WHERE id = 1').fetchone() == (-1,)
    finally:
        server.stop()


@pytest.mark.parametrize('crash', [False, True], ids=['clean', 'killed while copying'])
def test_a_table_added_to_tables_is_copied_then_streamed(postgres: Any, pg_db: Any,
                                                         tmp_path: Path, crash: bool) -> None:
    """A restart with one more table in --tables copies the rows the table already holds (at
    an exact position, while its changes stream) and the replica ends equal; killed while
    copying, the next start copies it again."""
    import signal

    target = postgres.database('replica')
    slot = f'changebeam_{pg_db.name}'
    both = ('--tables', 'public.a,public.b', *CAUGHT_UP_OPTIONS)
    try:
        with pg_db.connect() as conn:
            conn.execute('CREATE TABLE a (id integer PRIMARY KEY, v text)')
            conn.execute('CREATE TABLE b (id integer PRIMARY KEY, v text)')
            conn.execute("INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 50) g")
            conn.execute("INSERT INTO b SELECT g, repeat('b', 200) || g "
                         'FROM generate_series(1, 200000) g')
            cdc = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, '--tables', 'public.a',
                               *CAUGHT_UP_OPTIONS)
            wait_for_slot(conn, slot)
            stop_when_caught_up(cdc, conn, slot)
            conn.execute("UPDATE b SET v = 'before' WHERE id <= 5")  # not captured yet
            cdc = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *both)
            if crash:  # as soon as the copy of b runs (its temporary slot exists)
                deadline = time.monotonic() + 60
                while not conn.execute('SELECT 1 FROM pg_replication_slots '
                                       'WHERE temporary').fetchone():
                    assert time.monotonic() < deadline and cdc.poll() is None, 'no copy'
                    time.sleep(0.01)
                cdc.send_signal(signal.SIGKILL)
                cdc.wait(30)
                conn.execute("UPDATE b SET v = 'between' WHERE id BETWEEN 5 AND 6")
                cdc = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *both)
            conn.execute("UPDATE b SET v = 'streamed' WHERE id BETWEEN 3 AND 8")
            conn.execute("INSERT INTO b VALUES (0, 'new')")
            wait_for_slot(conn, slot)
            conn.execute("UPDATE b SET v = 'after' WHERE id IN (0, 1, 4)")
            output = stop_when_caught_up(cdc, conn, slot)
            assert 'taking a snapshot of table(s) public.b, added to --tables' in output
            with target.connect() as tconn:
                for table in ('public.a', 'public.b'):
                    assert pg_rows(tconn, table) == pg_rows(conn, table), table
            # Copied once it reached the replica: the next start copies nothing.
            cdc = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *both)
            wait_for_slot(conn, slot)
            assert 'taking a snapshot' not in stop_when_caught_up(cdc, conn, slot)
    finally:
        postgres.drop_database(target.name)


def test_a_replica_identity_index_beside_the_primary_key_keys_the_replica(
        postgres: Any, pg_db: Any, tmp_path: Path) -> None:
    """REPLICA IDENTITY USING INDEX on a table with a primary key: the log's old rows hold the
    index's columns only, so deletes and primary-key changes must reach the replica by them."""
    target = postgres.database('replica')
    slot = f'changebeam_{pg_db.name}'
    try:
        with pg_db.connect() as conn, target.connect() as tconn:
            conn.execute('CREATE TABLE acct (id integer PRIMARY KEY, code text NOT NULL, v int);'
                         'CREATE UNIQUE INDEX acct_code ON acct (code);'
                         'ALTER TABLE acct REPLICA IDENTITY USING INDEX acct_code')
            conn.execute("INSERT INTO acct SELECT g, 'c' || g, g FROM generate_series(1, 5) g")
            cdc = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
            wait_for_slot(conn, slot)
            conn.execute('DELETE FROM acct WHERE id = 1')
            conn.execute('UPDATE acct SET id = 20 WHERE id = 2')
            conn.execute("UPDATE acct SET code = 'c30', v = 30 WHERE id = 3")
            with conn.transaction():  # a swap of the identity through a free value
                conn.execute("UPDATE acct SET code = 'tmp' WHERE id = 4")
                conn.execute("UPDATE acct SET code = 'c4' WHERE id = 5")
                conn.execute("UPDATE acct SET code = 'c5' WHERE id = 4")
            conn.execute("INSERT INTO acct VALUES (1, 'c1', 100)")
            output = stop_when_caught_up(cdc, conn, slot)
            assert pg_rows(tconn, 'public.acct') == pg_rows(conn, 'public.acct')
            assert not list((tmp_path / 'dead').rglob('*.jsonl')), output[-3000:]
    finally:
        postgres.drop_database(target.name)


def test_a_table_added_under_snapshot_never_says_how_to_copy_its_rows(
        pg_db: Any, tmp_path: Path) -> None:
    slot = f'changebeam_{pg_db.name}'
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE a (id integer PRIMARY KEY)')
        conn.execute('CREATE TABLE b (id integer PRIMARY KEY)')
        for tables in ('public.a', 'public.a,public.b'):
            cdc = start_cdc_to(pg_db.dsn, f'jsonl:{tmp_path / "out"}', tmp_path, '--tables',
                               tables, '--snapshot', 'never', *CAUGHT_UP_OPTIONS)
            wait_for_slot(conn, slot)
            output = stop_when_caught_up(cdc, conn, slot)
    assert ('table(s) public.b added to --tables' in output
            and '--snapshot only --tables public.b' in output), output[-3000:]


def test_a_backfill_from_a_standby_reads_at_its_replay_position(tmp_path: Path) -> None:
    """``--snapshot only`` against a hot standby (no logical slot there on PostgreSQL 15):
    every row as the standby has replayed it, at a position no later than that replay."""
    from tests.replay import read_jsonl_dir
    from tests.services.postgres import PostgresServer
    from transforms.sources.postgres.replication import parse_lsn

    primary = PostgresServer.start()
    standby = None
    try:
        source = primary.database('src')
        with source.connect() as conn:
            conn.execute('CREATE TABLE items (id integer PRIMARY KEY, qty integer)')
            conn.execute('INSERT INTO items SELECT g, g FROM generate_series(1, 200) g')
            conn.execute('UPDATE items SET qty = -qty WHERE id <= 10')
            written = parse_lsn(conn.execute(
                'SELECT pg_current_wal_lsn()::text').fetchone()[0])
            expected = pg_rows(conn, 'public.items')
        standby = primary.start_standby()
        with standby.connect(source.name) as sconn:
            deadline = time.monotonic() + 30
            while parse_lsn(sconn.execute(
                    'SELECT pg_last_wal_replay_lsn()::text').fetchone()[0]) < written:
                assert time.monotonic() < deadline, 'the standby never replayed the rows'
                time.sleep(0.05)
            output = finish(start_cdc_to(standby.dsn(source.name), f'jsonl:{tmp_path / "out"}',
                                         tmp_path, '--snapshot', 'only'))
            replayed = parse_lsn(sconn.execute(
                'SELECT pg_last_wal_replay_lsn()::text').fetchone()[0])
        docs = [d for d in read_jsonl_dir(str(tmp_path / 'out')) if d['op'] == 'r']
        assert {json.dumps(d['after']['id']): d['after'] for d in docs} == expected, output
        assert {d['source']['commit_lsn'] for d in docs} <= set(range(written, replayed + 1))
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()


def _norm(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return value.normalize()
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else \
            value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return value


def test_mariadb_replica_equals_postgres_source(pg_db: Any, mariadb_db: Any,
                                               tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE orders (id integer PRIMARY KEY, customer text, '
                     'total numeric(12, 2), paid boolean, placed timestamptz, raw bytea, '
                     'qty bigint, weight double precision, day date)')
        conn.execute("INSERT INTO orders SELECT g, 'c' || g, g * 1.25, g % 2 = 0, "
                     "TIMESTAMPTZ '2026-01-01 00:00:00+00' + g * INTERVAL '1 minute', "
                     "'\\x00ff'::bytea, g::bigint * 1000000000, g / 8.0, DATE '2026-01-01' + g "
                     'FROM generate_series(1, 300) g')
        cdc = start_cdc_to(pg_db.dsn, mariadb_db.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
        wait_for_slot(conn, f'changebeam_{pg_db.name}')
        conn.execute("UPDATE orders SET paid = NOT paid, customer = 'changed' WHERE id <= 20")
        conn.execute('DELETE FROM orders WHERE id > 290')
        conn.execute("INSERT INTO orders VALUES (1000, 'late', 9.99, true, now(), NULL, -1, "
                     "'NaN', NULL)")
        stop_when_caught_up(cdc, conn, f'changebeam_{pg_db.name}')
        columns = 'id, customer, total, paid, placed, raw, qty, weight, day'
        source = {r[0]: r for r in conn.execute(f'SELECT {columns} FROM orders').fetchall()}
    with mariadb_db.connect() as mconn, mconn.cursor() as cursor:
        cursor.execute(f'SELECT {columns} FROM orders')
        replica = {r[0]: r for r in cursor.fetchall()}
    # MariaDB's DOUBLE cannot hold NaN: that row is dead-lettered with the reason, not altered.
    letters = [json.loads(line) for path in (tmp_path / 'dead').glob('*.jsonl')
               for line in path.read_text().splitlines()]
    assert len(letters) == 1 and letters[0]['payload']['event']['after']['id'] == 1000, letters
    assert "column 'weight'" in letters[0]['error'], letters[0]['error']
    del source[1000]
    assert replica.keys() == source.keys()
    for key, row in source.items():
        expected = [_norm(v) for v in row]
        expected[3] = int(row[3])  # MariaDB has no boolean: tinyint(1)
        assert [_norm(v) for v in replica[key]] == expected, key


_TOAST_WORKLOAD = [
    'UPDATE doc SET id = 10 WHERE id = 1',  # the key moves, the stored-apart body does not
    # keys swapped in one transaction: each new key lands on a row that exists
    'BEGIN; UPDATE doc SET id = -2 WHERE id = 2; UPDATE doc SET id = 2 WHERE id = 3; '
    'UPDATE doc SET id = 3 WHERE id = -2; COMMIT',
    # a partial update, then the key moves twice, in one transaction
    "BEGIN; UPDATE doc SET note = 'n' WHERE id = 4; UPDATE doc SET id = 40 WHERE id = 4; "
    "UPDATE doc SET note = 'm' WHERE id = 40; UPDATE doc SET id = 41 WHERE id = 40; COMMIT",
    'UPDATE doc SET id = 50 WHERE id = 5',  # …and one the next batch moves on
    'UPDATE doc SET id = 51 WHERE id = 50',
]


@pytest.mark.parametrize('replica', ['postgresql', 'mariadb'])
def test_a_key_change_keeps_a_large_value_the_update_left_unchanged(
        postgres: Any, pg_db: Any, tmp_path: Path, replica: str,
        request: pytest.FixtureRequest) -> None:
    """PostgreSQL does not log a large (TOAST) value an UPDATE leaves unchanged, also when the
    UPDATE moves the key.  The sink wrote the new key's row without it: NULL, or, for swapped
    keys, the other row's value.  It is the old key's value, which the target holds."""
    target = postgres.database('replica') if replica == 'postgresql' else \
        request.getfixturevalue('mariadb_db')
    try:
        with pg_db.connect() as conn:
            # Incompressible 32 kB bodies: stored out of line, so not logged when unchanged.
            conn.execute('CREATE TABLE doc (id integer PRIMARY KEY, note text, body text);'
                         "INSERT INTO doc SELECT g, 'a', (SELECT string_agg(md5(g || '.' || i), "
                         "'') FROM generate_series(1, 1000) i) FROM generate_series(1, 5) g")
            cdc = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
            slot = f'changebeam_{pg_db.name}'
            wait_for_slot(conn, slot)
            for statement in _TOAST_WORKLOAD:
                conn.execute(statement)
                time.sleep(0.3)  # several batches
            stop_when_caught_up(cdc, conn, slot)
            query = 'SELECT id, note, md5(body) FROM doc ORDER BY id'
            source = conn.execute(query).fetchall()
        if replica == 'postgresql':
            with target.connect() as tconn:
                got = tconn.execute(query).fetchall()
        else:
            with target.connect() as mconn, mconn.cursor() as cursor:
                cursor.execute(query)
                got = [tuple(r) for r in cursor.fetchall()]
        assert got == source
        assert not list((tmp_path / 'dead').glob('*.jsonl'))
    finally:
        if replica == 'postgresql':
            postgres.drop_database(target.name)


def test_a_replica_that_refuses_the_connection_stops_the_start_in_one_line(
        postgres: Any, pg_db: Any, tmp_path: Path) -> None:
    """A wrong database (or password) in --sink was retried for half a minute, after the
    source had created its slot and publication."""
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE t (id integer PRIMARY KEY)')
    sink = postgres.dsn('no_such_replica').replace('postgresql://postgres@',
                                                   'postgresql://postgres:hunter2@')
    started = time.monotonic()
    # A refusal is not an outage: not retried for --reconnect_secs (made long here, so a
    # retry could not pass for a slow start).
    output = start_cdc_to(pg_db.dsn, sink, tmp_path,
                          '--reconnect_secs', '600').communicate(timeout=180)[0]
    assert time.monotonic() - started < 90, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("python -m pipelines.cdc: error: --sink 'postgresql://postgres:***@"), \
        last
    assert 'cannot connect: ' in last and 'database "no_such_replica" does not exist' in last
    assert 'hunter2' not in output and 'Traceback' not in output
    with pg_db.connect() as conn:
        assert conn.execute('SELECT count(*) FROM pg_replication_slots').fetchone()[0] == 0
        assert conn.execute('SELECT count(*) FROM pg_publication').fetchone()[0] == 0


def test_a_replica_down_for_half_a_minute_is_waited_for(pg_db: Any, tmp_path: Path) -> None:
    """The sink gave up after six quick attempts (~16 s) whatever --reconnect_secs said, and
    the pipeline ended with libpq's bare text; a target down longer than --reconnect_secs
    ends it with one line saying which side and what to do."""
    from tests.services.postgres import PostgresServer

    replica = PostgresServer.start()  # a server of its own: it goes down, the source not
    try:
        target = replica.database('replica')
        with pg_db.connect() as conn:
            conn.execute('CREATE TABLE t (id integer PRIMARY KEY, v text)')
            conn.execute("INSERT INTO t VALUES (1, 'a')")
            cdc = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS,
                               '--reconnect_secs', '120')
            slot = f'changebeam_{pg_db.name}'
            wait_for_slot(conn, slot)
            replica.halt()
            for n in range(2, 40):
                conn.execute('INSERT INTO t VALUES (%s, %s)', (n, f'v{n}'))
                time.sleep(0.5)  # ~19 s of changes while the replica is down, then 11 s more
            time.sleep(11)
            replica.resume()
            stop_when_caught_up(cdc, conn, slot)
            with target.connect() as tconn:
                assert pg_rows(tconn, 'public.t') == pg_rows(conn, 'public.t')

            cdc = start_cdc_to(pg_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS,
                               '--reconnect_secs', '5')
            # Halted once it streams into the replica (it checks the target when it starts).
            conn.execute("INSERT INTO t VALUES (99, 'streaming')")
            with target.connect() as tconn:
                deadline = time.monotonic() + 60
                while not tconn.execute('SELECT count(*) FROM t WHERE id = 99').fetchone()[0]:
                    assert time.monotonic() < deadline, 'row 99 never reached the replica'
                    time.sleep(0.1)
            replica.halt()
            conn.execute("INSERT INTO t VALUES (100, 'lost target')")
            output = cdc.communicate(timeout=120)[0]
            assert cdc.returncode == 1, output[-3000:]
            last = output.strip().splitlines()[-1]
            assert last.startswith('python -m pipelines.cdc: error: WriteChangesToPostgres: the '
                                   'target has not answered for '), last
            assert last.endswith('run again once it is back: what it did not commit is read '
                                 'again'), last
    finally:
        replica.stop()
