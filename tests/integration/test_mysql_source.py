"""The MySQL/MariaDB source end to end, as a user runs it: ``python -m pipelines.cdc`` against a
real MariaDB 10.11, checked by rebuilding the tables from the emitted change files (or by
comparing a replica database) with what SELECT returns."""
from __future__ import annotations

import collections
import datetime as dt
import decimal
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pymysql
import pymysql.cursors
import pytest

from tests.integration.outage import (
    assert_gave_up_in_one_line,
    ended_by_itself,
    wait_for_first_insert,
)
from tests.integration.test_mysql_binlog import _ALL_TYPES, _VALUES
from tests.integration.test_postgres_source import stop_once
from tests.replay import apply_envelopes, read_jsonl_dir
from transforms.envelope import (
    SNAPSHOT_COMPLETE,
    Column,
    Kind,
    Op,
    TableSchema,
    decode_json_value,
)
from transforms.sources.mysql.offsets import Offset, OffsetStore, file_index
from transforms.sources.mysql.snapshot import describe_table
from transforms.sources.mysql.types import geometry_value

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# Running the pipeline

def start_cdc(dsn: str, sink: str, workdir: Path, *extra: str) -> subprocess.Popen[str]:
    """The CDC pipeline from ``dsn`` into ``sink``; offsets and dead letters under ``workdir``
    unless ``extra`` says otherwise."""
    if not any(arg == '--offset_store' for arg in extra):
        extra = ('--offset_store', str(workdir / 'offsets.json'), *extra)
    if not any(arg == '--schema_registry' for arg in extra):
        extra = ('--schema_registry', str(workdir / 'schemas'), *extra)
    return subprocess.Popen(
        [sys.executable, '-m', 'pipelines.cdc', '--source', dsn, '--sink', sink,
         '--dead_letter', f'jsonl:{workdir / "dead"}', '--progress', 'off', *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def stop_when_caught_up(process: subprocess.Popen[str], conn: Any, workdir: Path) -> str:
    """Stops a pipeline started with ``CAUGHT_UP_OPTIONS`` once its offset store is at the
    binlog's end as of now, so that its sink wrote everything committed so far; its output."""
    file, pos = fetch_all(conn, 'SHOW MASTER STATUS')[0][:2]
    target = (file_index(file), int(pos))
    store = OffsetStore(str(workdir / 'offsets.json'))

    def recorded() -> bool:
        offset = store.load()
        return offset is not None and offset.file is not None and \
            (file_index(offset.file), offset.pos) >= target
    return stop_once(process, recorded, f'recorded {file}:{pos} in the offset store')


CAUGHT_UP_OPTIONS = ('--heartbeat_secs', '0.5', '--max_idle_secs', '60')
"""For :func:`stop_when_caught_up`: the offset store follows the binlog past other
transactions at once, and a pipeline left behind by a failed test still ends."""


def wait_for_offsets(path: Path, process: subprocess.Popen[str], timeout: float = 60) -> None:
    """The source wrote its start position (or the snapshot's): a change committed from now
    on is in the snapshot or in the stream."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(process.communicate()[0][-3000:])
        assert time.monotonic() < deadline, 'the source never recorded a position'
        time.sleep(0.05)


def fetch_all(conn: Any, sql: str) -> tuple[tuple[Any, ...], ...]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return tuple(cur.fetchall())


def execute(conn: Any, *statements: str) -> None:
    with conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)


def dead_letters(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted((workdir / 'dead').glob('*.jsonl'))
            for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Replaying envelopes and comparing with SELECT

def position(doc: dict[str, Any]) -> tuple[int, int, int]:
    source = doc['source']
    return file_index(source['file']), source['pos'], source['row']


def replay(docs: list[dict[str, Any]], schemas: dict[str, TableSchema]
           ) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Table -> key -> row (typed values) after applying ``docs`` in binlog order."""
    ordered = [d for d in docs if d['op'] != 'm'
               or (d.get('message') or {}).get('kind') == SNAPSHOT_COMPLETE]
    state = apply_envelopes(ordered, {name: s.key for name, s in schemas.items()}, position)
    typed: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    for name, rows in state.items():
        table = schemas[name]
        typed[name] = {}
        for row in rows.values():
            values = {c.name: comparable(c, decode_json_value(c, row.get(c.name)))
                      for c in table.columns}
            typed[name][tuple(values[k] for k in table.key)] = values
    return typed


def comparable(column: Column, value: Any) -> Any:
    """One form for an envelope value and PyMySQL's SELECT value of the same column."""
    if value is None:
        return None
    kind = column.kind
    if kind is Kind.FLOAT32:
        return float(f'{value:.6g}')  # SELECT prints a FLOAT with 6 digits
    if kind is Kind.TIME:
        if isinstance(value, dt.timedelta):
            return value
        if isinstance(value, str):
            sign = -1 if value.startswith('-') else 1
            hours, minutes, seconds = value.lstrip('-').split(':')
            return sign * dt.timedelta(hours=int(hours), minutes=int(minutes),
                                       seconds=float(seconds))
        return dt.timedelta(hours=value.hour, minutes=value.minute, seconds=value.second,
                            microseconds=value.microsecond)
    if kind is Kind.TIMESTAMPTZ and isinstance(value, dt.datetime) and value.tzinfo:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if kind is Kind.BOOLEAN and isinstance(value, bool):
        return bytes([value])
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def select_rows(conn: Any, table: TableSchema) -> dict[tuple[Any, ...], dict[str, Any]]:
    geometry = {c.name for c in table.columns
                if c.source_type in ('geometry', 'point', 'linestring', 'polygon')}
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(f'SELECT * FROM `{table.schema}`.`{table.table}`')
        rows = {}
        for row in cur.fetchall():
            values = {c.name: comparable(c, geometry_value(row[c.name])
                                         if c.name in geometry and row[c.name] else row[c.name])
                      for c in table.columns}
            rows[tuple(values[k] for k in table.key)] = values
    return rows


def assert_rebuilt_equals_source(conn: Any, db: str, docs: list[dict[str, Any]],
                                 tables: list[str]) -> None:
    schemas = {f'{db}.{name}': describe_table(conn, db, name).schema for name in tables}
    state = replay([d for d in docs if f'{d["source"]["db"]}.{d["source"]["table"]}'
                    in schemas], schemas)
    for name, table in schemas.items():
        expected = select_rows(conn, table)
        rebuilt = state.get(name, {})
        assert rebuilt.keys() == expected.keys(), (name, sorted(rebuilt.keys() ^ expected.keys(),
                                                              key=repr)[:10])
        for key, row in expected.items():
            assert rebuilt[key] == row, (name, key, {c: (rebuilt[key][c], v) for c, v in
                                                     row.items() if rebuilt[key][c] != v})


# ---------------------------------------------------------------------------------------------
# State check: every column type, snapshot then stream

def mixed_workload(conn: Any) -> None:
    execute(conn,
            'INSERT INTO all_types (id, tiu, biu, dec_big, dtm6, e, s, j, lb) VALUES '
            "(4, 200, 18446744073709551615, '1.000000000000000000000000000001', "
            "'2024-02-29 23:59:59.000001', 'b', 'y,z', '{\"k\": \"v\"}', REPEAT(0xff, 70000))",
            'INSERT INTO all_types (id) VALUES (5), (6)')
    conn.begin()  # one transaction over two tables
    execute(conn,
            'INSERT INTO other SELECT CONCAT(\'k\', seq), seq FROM seq_1_to_50',
            'UPDATE all_types SET iu = iu - 1, tx = CONCAT(tx, \' é\') WHERE id = 1',
            "UPDATE all_types SET dec_small = 0.01, dtm2 = '2000-01-01 00:00:00.5' WHERE id = 2",
            "DELETE FROM other WHERE k = 'k7'")
    conn.commit()
    execute(conn,
            'UPDATE all_types SET id = 40 WHERE id = 4',  # a primary-key update
            'DELETE FROM all_types WHERE id = 3',
            "UPDATE other SET v = -v WHERE k LIKE 'k1%'",
            'UPDATE all_types SET bl = NULL, lb = REPEAT(0x01, 10), j = \'[]\' WHERE id = 40',
            'TRUNCATE other',
            "INSERT INTO other VALUES ('after-truncate', 1)",
            'DELETE FROM all_types WHERE id = 6')


def test_state_check_every_column_type(mariadb_db: Any, tmp_path: Path) -> None:
    conn = mariadb_db.connect()
    execute(conn, "SET time_zone = '+00:00'", "SET sql_mode = ''", _ALL_TYPES,
            'CREATE TABLE other (k VARCHAR(20) PRIMARY KEY, v INT)',
            "INSERT INTO other VALUES ('before-snapshot', 0)",
            *(f'INSERT INTO all_types VALUES ({values})' for values in _VALUES))
    out = tmp_path / 'out'
    cdc = start_cdc(mariadb_db.dsn, f'jsonl:{out}', tmp_path, *CAUGHT_UP_OPTIONS)
    wait_for_offsets(tmp_path / 'offsets.json', cdc)
    mixed_workload(conn)
    output = stop_when_caught_up(cdc, conn, tmp_path)
    docs = read_jsonl_dir(str(out))
    assert_rebuilt_equals_source(conn, mariadb_db.name, docs, ['all_types', 'other'])
    ops = collections.Counter(d['op'] for d in docs if d['source']['table'] == 'all_types')
    assert ops['r'] == 3 and ops['d'] == 2 and ops['u'] >= 4, ops
    assert sum(d['op'] == 't' for d in docs) == 1
    # The snapshot's schema (information_schema) and the binlog's are the same version.
    versions = list((tmp_path / 'schemas' / f'{mariadb_db.name}.all_types').glob('*.json'))
    assert len(versions) == 1, versions
    # One transaction over two tables: one GTID, orders counted per table.
    multi = [d for d in docs if d['op'] == 'c' and d['source']['table'] == 'other'
             and d['after']['k'] == 'k1']
    tx = multi[0]['transaction']
    together = [d for d in docs if (d.get('transaction') or {}).get('id') == tx['id']]
    assert {d['source']['table'] for d in together} == {'other', 'all_types'}
    assert sorted(d['transaction']['total_order'] for d in together) == \
        list(range(1, len(together) + 1))
    streamed = [d for d in docs if d['op'] in 'cud']
    assert all(d['source']['gtid'] and d['source']['server_id'] == 1 for d in streamed)
    assert not dead_letters(tmp_path), output[-2000:]
    stored = OffsetStore(str(tmp_path / 'offsets.json')).load()
    assert stored is not None and stored.snapshot == 'done'
    assert stored.gtid == max((d['source']['gtid'] for d in streamed),
                              key=lambda g: int(g.split('-')[2]))


# ---------------------------------------------------------------------------------------------
# Crash check

@pytest.mark.parametrize('stop', [signal.SIGKILL, signal.SIGTERM], ids=['sigkill', 'sigterm'])
def test_stopped_mid_stream_loses_nothing_and_keeps_order(mariadb_db: Any, tmp_path: Path,
                                                          stop: signal.Signals) -> None:
    """SIGKILL is a crash; SIGTERM (or Ctrl-C) a clean stop that writes what was read."""
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE counters (k INT PRIMARY KEY, v INT NOT NULL)',
            'INSERT INTO counters SELECT seq, 0 FROM seq_1_to_20')
    writing = threading.Event()
    writing.set()
    committed: list[tuple[int, int]] = []

    def writer() -> None:
        import random
        rng = random.Random(1)
        with mariadb_db.connect() as wconn, wconn.cursor() as cur:
            while writing.is_set():
                k = rng.randint(1, 20)
                cur.execute('UPDATE counters SET v = v + 1 WHERE k = %s', (k,))
                cur.execute('SELECT v FROM counters WHERE k = %s', (k,))
                committed.append((k, cur.fetchone()[0]))
                time.sleep(0.001)

    offsets = tmp_path / 'offsets.json'
    run1, run2 = tmp_path / 'run1', tmp_path / 'run2'
    first = start_cdc(mariadb_db.dsn, f'jsonl:{run1}', tmp_path, '--snapshot', 'never')
    wait_for_offsets(offsets, first)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(list(run1.glob(f'{mariadb_db.name}.counters/*.jsonl'))) < 5:
            assert time.monotonic() < deadline and first.poll() is None, 'no progress'
            time.sleep(0.1)
        first.send_signal(stop)
        if stop == signal.SIGTERM:
            finish(first, timeout=30)  # status 0
        first.wait()
        stored = OffsetStore(str(offsets)).load()
        time.sleep(1)  # the writer goes on while the pipeline is down
        second = start_cdc(mariadb_db.dsn, f'jsonl:{run2}', tmp_path, '--snapshot', 'never',
                           *CAUGHT_UP_OPTIONS)
        time.sleep(3)
    finally:
        writing.clear()
        thread.join()
    stop_when_caught_up(second, conn, tmp_path)
    assert stored is not None and stored.file is not None
    runs = [[d for d in read_jsonl_dir(str(run)) if d['op'] != 'm'] for run in (run1, run2)]
    if stop == signal.SIGTERM:  # all it recorded was written, and it wrote nothing else
        assert all(position(d)[:2] < (file_index(stored.file), stored.pos) for d in runs[0])
        assert {(d['after']['k'], d['after']['v']) for d in runs[0]} == \
            set(committed[:len(runs[0])])
    seen = [(d['after']['k'], d['after']['v']) for run in runs for d in run]
    assert set(committed) <= set(seen), 'a committed change is missing'
    first_run = {(d['after']['k'], d['after']['v']) for d in runs[0]}
    replayed = [d for d in runs[1] if (d['after']['k'], d['after']['v']) in first_run]
    boundary = (file_index(stored.file), stored.pos)
    assert all(position(d)[:2] >= boundary for d in runs[1]), 'the restart did not resume'
    assert all(position(d)[:2] >= boundary for d in replayed), \
        'a change the offset store had recorded was delivered again'
    assert len(runs[0]) > 20 and len(runs[1]) > 20
    for run in runs:
        per_key: dict[int, list[int]] = collections.defaultdict(list)
        for doc in sorted(run, key=position):
            per_key[doc['after']['k']].append(doc['after']['v'])
        for k, values in per_key.items():
            assert values == sorted(values), f'key {k} out of order: {values}'


# ---------------------------------------------------------------------------------------------
# Snapshot under concurrent writes

def test_snapshot_under_concurrent_writes(mariadb_db: Any, tmp_path: Path) -> None:
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT, note TEXT)',
            "INSERT INTO accounts SELECT seq, seq, CONCAT('n', seq) FROM seq_1_to_20000")
    stop = threading.Event()
    committed = [0]

    def writer() -> None:
        import random
        rng = random.Random(2)
        with mariadb_db.connect(autocommit=False) as wconn, wconn.cursor() as cur:
            next_id = 20001
            while not stop.is_set():
                cur.execute('UPDATE accounts SET balance = balance + 1 WHERE id = %s',
                            (rng.randint(1, next_id - 1),))
                cur.execute('INSERT INTO accounts VALUES (%s, 0, NULL)', (next_id,))
                cur.execute('DELETE FROM accounts WHERE id = %s', (rng.randint(1, next_id),))
                wconn.commit()
                committed[0] += 1
                next_id += 1

    thread = threading.Thread(target=writer)
    thread.start()
    out = tmp_path / 'out'
    try:
        cdc = start_cdc(mariadb_db.dsn, f'jsonl:{out}', tmp_path, *CAUGHT_UP_OPTIONS)
        wait_for_offsets(tmp_path / 'offsets.json', cdc)
        # Transactions after the snapshot began, however slowly this machine writes them.
        target, deadline = committed[0] + 100, time.monotonic() + 60
        while committed[0] < target and thread.is_alive():
            assert time.monotonic() < deadline, f'{committed[0]} transactions written'
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    stop_when_caught_up(cdc, conn, tmp_path)
    docs = read_jsonl_dir(str(out))
    snapshot = [d for d in docs if d['op'] == 'r']
    streamed = [d for d in docs if d['op'] in 'cud']
    assert len(snapshot) > 19000 and len(streamed) > 100
    at = position(snapshot[0])
    assert all(position(d) == at for d in snapshot)
    assert all(position(d)[:2] > at[:2] for d in streamed), 'overlap'
    assert_rebuilt_equals_source(conn, mariadb_db.name, docs, ['accounts'])


# ---------------------------------------------------------------------------------------------
# Schema change mid-stream

def test_add_column_mid_stream(mariadb_db: Any, tmp_path: Path) -> None:
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20))',
            "INSERT INTO items VALUES (1, 'snapshot')")
    out = tmp_path / 'out'
    cdc = start_cdc(mariadb_db.dsn, f'jsonl:{out}', tmp_path, *CAUGHT_UP_OPTIONS)
    wait_for_offsets(tmp_path / 'offsets.json', cdc)
    execute(conn, "INSERT INTO items VALUES (2, 'before')",
            'ALTER TABLE items ADD COLUMN price DECIMAL(8,2) NULL',
            "INSERT INTO items VALUES (3, 'after', 9.99)",
            "UPDATE items SET price = 1.5 WHERE id = 2")
    stop_when_caught_up(cdc, conn, tmp_path)
    docs = sorted(read_jsonl_dir(str(out)), key=position)
    changes = [(d['op'], d['after']) for d in docs if d['op'] in 'rcu']
    assert changes == [('r', {'id': 1, 'name': 'snapshot'}), ('c', {'id': 2, 'name': 'before'}),
                       ('c', {'id': 3, 'name': 'after', 'price': '9.99'}),
                       ('u', {'id': 2, 'name': 'before', 'price': '1.50'})]
    ddl = [d for d in docs if d['op'] == 'm' and d['message']['kind'] == 'ddl']
    assert [d['message']['sql'] for d in ddl] == \
        ['ALTER TABLE items ADD COLUMN price DECIMAL(8,2) NULL']
    assert ddl[0]['message']['table'] == 'items'
    assert position(docs[2])[:2] < position(ddl[0])[:2] < position(docs[-1])[:2]
    # EvolveSchema registered the new version where the new table map took effect.
    change = [d for d in docs if d['op'] == 'm' and d['message']['kind'] == 'schema_change']
    assert [c['message']['added'] for c in change] == [['id', 'name'], ['price']]
    assert_rebuilt_equals_source(conn, mariadb_db.name, docs, ['items'])


def test_a_unique_text_column_streams_without_mariadbs_hidden_hash_column(
        mariadb_db: Any, tmp_path: Path) -> None:
    """MariaDB enforces UNIQUE on a whole TEXT column with a hidden DB_ROW_HASH_1 column,
    which row images carry and SELECT does not show: the streamed schema is the snapshot's,
    with no extra column or version, also after a column is added."""
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE u (id INT PRIMARY KEY, t TEXT NOT NULL, UNIQUE (t))',
            "INSERT INTO u VALUES (1, 'a')")
    out = tmp_path / 'out'
    cdc = start_cdc(mariadb_db.dsn, f'jsonl:{out}', tmp_path, *CAUGHT_UP_OPTIONS)
    wait_for_offsets(tmp_path / 'offsets.json', cdc)
    execute(conn, "INSERT INTO u VALUES (2, 'b')", "UPDATE u SET t = 'c' WHERE id = 1",
            'ALTER TABLE u ADD COLUMN n INT', "INSERT INTO u VALUES (3, 'd', 4)",
            'DELETE FROM u WHERE id = 2')
    stop_when_caught_up(cdc, conn, tmp_path)
    docs = sorted(read_jsonl_dir(str(out)), key=position)
    change = [d for d in docs if d['op'] == 'm' and d['message']['kind'] == 'schema_change']
    assert [c['message']['added'] for c in change] == [['id', 't'], ['n']]
    assert [(d['op'], d['after']) for d in docs if d['op'] in 'cu'] == [
        ('c', {'id': 2, 't': 'b'}), ('u', {'id': 1, 't': 'c'}), ('c', {'id': 3, 't': 'd', 'n': 4})]
    assert_rebuilt_equals_source(conn, mariadb_db.name, docs, ['u'])


# ---------------------------------------------------------------------------------------------
# Replicas: MariaDB -> PostgreSQL and MariaDB -> MariaDB

REPLICA_TABLE = """
CREATE TABLE orders (
  id INT PRIMARY KEY, customer VARCHAR(40) NOT NULL, total DECIMAL(12,2), qty INT UNSIGNED,
  big BIGINT, weight DOUBLE, placed DATETIME(6), paid_at TIMESTAMP(3) NULL, day DATE,
  note TEXT, raw BLOB, status ENUM('new','paid','sent'), doc JSON)
"""


def replica_workload(conn: Any) -> None:
    execute(conn,
            "UPDATE orders SET status = 'paid', paid_at = '2026-02-01 10:00:00.123', "
            "customer = 'changed' WHERE id <= 20",
            'DELETE FROM orders WHERE id > 290',
            "INSERT INTO orders VALUES (1000, 'late', 9.99, 4294967295, -1, 0.5, "
            "'2026-03-01 00:00:00.000001', NULL, '1999-12-31', 'é😀', 0x00ff, 'sent', '[1]')",
            'UPDATE orders SET id = 2000 WHERE id = 1000')


def _replica_rows(rows: list[tuple[Any, ...]]) -> dict[Any, list[Any]]:
    out = {}
    for row in rows:
        values = []
        for value in row:
            if isinstance(value, decimal.Decimal):
                value = value.normalize()
            elif isinstance(value, dt.datetime) and value.tzinfo is not None:
                value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
            elif isinstance(value, (bytes, bytearray, memoryview)):
                value = bytes(value)
            elif isinstance(value, (dict, list)):
                value = json.dumps(value)
            values.append(value)
        out[values[0]] = values
    return out


_REPLICA_COLUMNS = 'id, customer, total, qty, big, weight, placed, paid_at, day, note, raw, ' \
                   'status, doc'


def _seed_orders(conn: Any) -> None:
    execute(conn, REPLICA_TABLE,
            "INSERT INTO orders SELECT seq, CONCAT('c', seq), seq * 1.25, seq * 1000, "
            "seq * 1000000000, seq / 8, '2026-01-01 00:00:00' + INTERVAL seq MINUTE, NULL, "
            "'2026-01-01' + INTERVAL seq DAY, REPEAT('n', seq), 0x00ff, 'new', "
            "JSON_OBJECT('n', seq) FROM seq_1_to_300")


def test_mariadb_replica_in_another_database_equals_source(mariadb_db: Any, mariadb: Any,
                                                            tmp_path: Path) -> None:
    target = mariadb.database('replica')
    try:
        conn = mariadb_db.connect()
        _seed_orders(conn)
        cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
        wait_for_offsets(tmp_path / 'offsets.json', cdc)
        replica_workload(conn)
        stop_when_caught_up(cdc, conn, tmp_path)
        with conn.cursor() as cur:
            cur.execute(f'SELECT {_REPLICA_COLUMNS} FROM orders')
            source = _replica_rows(list(cur.fetchall()))
        with target.connect() as tconn, tconn.cursor() as cur:
            cur.execute(f'SELECT {_REPLICA_COLUMNS} FROM orders')
            replica = _replica_rows(list(cur.fetchall()))
        assert len(source) == 291 and replica == source
        assert not dead_letters(tmp_path)
    finally:
        mariadb.drop_database(target.name)


def test_a_snapshot_taken_again_leaves_no_deleted_or_doubled_row(mariadb_db: Any, mariadb: Any,
                                                                  tmp_path: Path) -> None:
    """Killed while its snapshot streams into a replica, a pipeline leaves part of it applied;
    the next start takes the snapshot again.  Rows deleted meanwhile must go from the replica,
    and a keyless table's appended rows must not be doubled."""
    target = mariadb.database('replica')
    try:
        conn = mariadb_db.connect()
        execute(conn, 'CREATE TABLE a_log (line VARCHAR(20))',
                "INSERT INTO a_log SELECT CONCAT('l', seq) FROM seq_1_to_2000",
                'CREATE TABLE b_wide (id INT PRIMARY KEY, payload VARCHAR(300))',
                "INSERT INTO b_wide SELECT seq, REPEAT('p', 200) FROM seq_1_to_150000")
        first = start_cdc(mariadb_db.dsn, target.dsn, tmp_path)
        deadline = time.monotonic() + 60
        with target.connect(autocommit=True) as tconn, tconn.cursor() as tcur:
            while True:  # part of b_wide (so all of a_log) is in the replica
                assert time.monotonic() < deadline and first.poll() is None, 'no snapshot rows'
                try:
                    tcur.execute('SELECT count(*) FROM b_wide')
                    if tcur.fetchone()[0]:
                        break
                except pymysql.err.ProgrammingError:  # not created yet
                    pass
                time.sleep(0.02)
            first.send_signal(signal.SIGKILL)
            first.wait()
            tcur.execute('SELECT count(*) FROM b_wide')
            applied = tcur.fetchone()[0]
            assert 0 < applied < 150000, applied
            execute(conn, 'DELETE FROM b_wide WHERE id <= 100',  # rows the replica holds
                    "DELETE FROM a_log WHERE line IN ('l1', 'l2')")
            second = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
            wait_for_offsets(tmp_path / 'offsets.json', second)
            execute(conn, "INSERT INTO b_wide VALUES (0, 'after the restart')")
            output = stop_when_caught_up(second, conn, tmp_path)
            assert 'taking the snapshot again' in output
            for sql in ('SELECT id, payload FROM b_wide ORDER BY id',
                        'SELECT line FROM a_log ORDER BY line'):
                assert fetch_all(tconn, sql) == fetch_all(conn, sql), sql
    finally:
        mariadb.drop_database(target.name)


def test_snapshot_only_backfills_bring_a_replica_up_to_date_each_time(
        mariadb_db: Any, mariadb: Any, tmp_path: Path) -> None:
    """``--snapshot only`` run again later: rows changed, added and deleted since the first
    backfill are right in the replica after the second."""
    target = mariadb.database('replica')
    try:
        conn = mariadb_db.connect()
        execute(conn, 'CREATE TABLE items (id INT PRIMARY KEY, qty INT)',
                'INSERT INTO items SELECT seq, seq FROM seq_1_to_500')
        select = 'SELECT id, qty FROM items ORDER BY id'
        with target.connect(autocommit=True) as tconn:
            for run in range(2):
                if run:
                    execute(conn, 'UPDATE items SET qty = -qty WHERE id <= 10',
                            'DELETE FROM items WHERE id > 490',
                            'INSERT INTO items SELECT seq, seq FROM seq_501_to_520')
                finish(start_cdc(mariadb_db.dsn, target.dsn, tmp_path, '--snapshot', 'only'))
                assert fetch_all(tconn, select) == fetch_all(conn, select), run
    finally:
        mariadb.drop_database(target.name)


def test_a_table_added_to_tables_is_copied_then_streamed(
        mariadb_db: Any, mariadb: Any, tmp_path: Path) -> None:
    """A restart with one more table in --tables copies the rows it already holds (at the
    binlog position of then, while the stream resumes earlier) and the replica ends equal;
    the start after that copies nothing.  Under --snapshot never it says how to copy them."""
    target = mariadb.database('replica')
    db = mariadb_db.name
    both = ('--tables', f'{db}.a,{db}.b', *CAUGHT_UP_OPTIONS)
    try:
        conn = mariadb_db.connect()
        execute(conn, 'CREATE TABLE a (id INT PRIMARY KEY, v TEXT)',
                'CREATE TABLE b (id INT PRIMARY KEY, v TEXT)',
                "INSERT INTO a SELECT seq, CONCAT('a', seq) FROM seq_1_to_50",
                "INSERT INTO b SELECT seq, CONCAT('b', seq) FROM seq_1_to_5000")
        cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, '--tables', f'{db}.a',
                        *CAUGHT_UP_OPTIONS)
        wait_for_offsets(tmp_path / 'offsets.json', cdc)
        stop_when_caught_up(cdc, conn, tmp_path)
        execute(conn, "UPDATE b SET v = 'before' WHERE id <= 5")  # not captured yet
        cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, *both)
        execute(conn, "UPDATE b SET v = 'streamed' WHERE id BETWEEN 3 AND 8",
                "INSERT INTO b VALUES (0, 'new')")
        execute(conn, "UPDATE b SET v = 'after' WHERE id IN (0, 1, 4)")
        output = stop_when_caught_up(cdc, conn, tmp_path)
        assert f'taking a snapshot of table(s) {db}.b, added to --tables' in output, output
        with target.connect(autocommit=True) as tconn:
            for table in ('a', 'b'):
                select = f'SELECT id, v FROM {table} ORDER BY id'
                assert fetch_all(tconn, select) == fetch_all(conn, select), table
        cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, *both)
        execute(conn, "INSERT INTO a VALUES (1000, 'later')")  # so there is a change to wait for
        assert 'taking a snapshot' not in stop_when_caught_up(cdc, conn, tmp_path)
        execute(conn, 'CREATE TABLE c (id INT PRIMARY KEY)')
        cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, '--tables', f'{db}.a,{db}.b,{db}.c',
                        '--snapshot', 'never', *CAUGHT_UP_OPTIONS)
        execute(conn, "INSERT INTO a VALUES (1001, 'later')")
        output = stop_when_caught_up(cdc, conn, tmp_path)
        assert (f'table(s) {db}.c added to --tables' in output
                and f'--snapshot only --tables {db}.c' in output), output[-3000:]
        # Every table from now on (no --tables): the one never listed is copied, once.
        execute(conn, 'CREATE TABLE d (id INT PRIMARY KEY)',
                'INSERT INTO d SELECT seq FROM seq_1_to_30')
        for run in range(2):
            cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
            execute(conn, f'INSERT INTO a VALUES ({1002 + run}, "later")')
            output = stop_when_caught_up(cdc, conn, tmp_path)
            assert (f'taking a snapshot of table(s) {db}.d' in output) == (run == 0), output
        with target.connect(autocommit=True) as tconn:
            assert fetch_all(tconn, 'SELECT id FROM d ORDER BY id') == tuple(
                (i,) for i in range(1, 31))
    finally:
        mariadb.drop_database(target.name)


def test_postgres_replica_equals_mariadb_source(mariadb_db: Any, pg_db: Any,
                                                tmp_path: Path) -> None:
    conn = mariadb_db.connect()
    _seed_orders(conn)
    cdc = start_cdc(mariadb_db.dsn, pg_db.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
    wait_for_offsets(tmp_path / 'offsets.json', cdc)
    replica_workload(conn)
    stop_when_caught_up(cdc, conn, tmp_path)
    with conn.cursor() as cur:
        cur.execute(f'SELECT {_REPLICA_COLUMNS} FROM orders')
        source = _replica_rows(list(cur.fetchall()))
    with pg_db.connect() as pconn:
        columns = _REPLICA_COLUMNS.replace('paid_at', "paid_at AT TIME ZONE 'UTC'")
        rows = pconn.execute(f'SELECT {columns} FROM "{mariadb_db.name}".orders').fetchall()
    replica = _replica_rows(rows)
    assert len(source) == 291 and replica.keys() == source.keys()
    for key, row in source.items():
        assert replica[key] == row, (key, replica[key], row)
    assert not dead_letters(tmp_path)


def test_a_year_column_replicates_into_mariadb(mariadb_db: Any, mariadb: Any,
                                               tmp_path: Path) -> None:
    """The sink creates `year`, information_schema shows it as `year(4)`: the same type, so
    the rows are written, not refused as a schema change; the integers after the YEAR keep
    their sign in the stream."""
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE t (id INT PRIMARY KEY, y YEAR, u INT UNSIGNED, s INT)',
            'INSERT INTO t VALUES (1, 2024, 4294967295, -1), (2, NULL, 0, 0)')
    target = mariadb.database('replica')
    try:
        cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
        wait_for_offsets(tmp_path / 'offsets.json', cdc)
        execute(conn, 'INSERT INTO t VALUES (3, 1901, 4294967295, -1)',
                'UPDATE t SET y = 2155 WHERE id = 2')
        stop_when_caught_up(cdc, conn, tmp_path)
        source = fetch_all(conn, 'SELECT id, y, u, s FROM t ORDER BY id')
        with target.connect() as tconn:
            replica = fetch_all(tconn, 'SELECT id, y, u, s FROM t ORDER BY id')
        assert source == ((1, 2024, 4294967295, -1), (2, 2155, 0, 0), (3, 1901, 4294967295, -1))
        assert replica == source
        assert not dead_letters(tmp_path)
    finally:
        mariadb.drop_database(target.name)


def test_geometry_columns_replicate_into_mariadb(mariadb_db: Any, mariadb: Any,
                                                 tmp_path: Path) -> None:
    """Geometry values are (E)WKB in the events; written as plain bytes the target refused
    every one ('Cannot get geometry object'), and each such row was dead-lettered."""
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE geo (id INT PRIMARY KEY, g GEOMETRY, pt POINT)',
            "INSERT INTO geo VALUES (1, ST_GeomFromText('LINESTRING(0 0, 1 1)'), "
            "ST_GeomFromText('POINT(3 4)', 4326)), (2, NULL, NULL)")
    target = mariadb.database('replica')
    query = 'SELECT id, ST_AsText(g), ST_SRID(g), ST_AsText(pt), ST_SRID(pt) FROM geo ORDER BY id'
    try:
        cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
        wait_for_offsets(tmp_path / 'offsets.json', cdc)
        execute(conn, "INSERT INTO geo VALUES (3, ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 0))', "
                      "3857), ST_GeomFromText('POINT(-1.5 2.25)'))",
                "UPDATE geo SET pt = ST_GeomFromText('POINT(5 6)', 4326) WHERE id = 2")
        stop_when_caught_up(cdc, conn, tmp_path)
        source = fetch_all(conn, query)
        with target.connect() as tconn:
            replica = fetch_all(tconn, query)
        assert source[0] == (1, 'LINESTRING(0 0,1 1)', 0, 'POINT(3 4)', 4326)
        assert replica == source
        assert not dead_letters(tmp_path)
    finally:
        mariadb.drop_database(target.name)


@pytest.mark.parametrize('sink', ['mariadb', 'postgres'])
def test_a_table_keyed_by_a_unique_not_null_key_replicates_equal(
        mariadb_db: Any, mariadb: Any, pg_db: Any, tmp_path: Path, sink: str) -> None:
    """Without a PRIMARY KEY the server keys the table by its UNIQUE NOT NULL key, and so
    does the binlog: the snapshot must create the replica with that key too, or the
    streamed upserts find no key to update."""
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE uk (id INT NOT NULL, v INT, UNIQUE KEY (id))',
            'INSERT INTO uk VALUES (1, 1), (2, 2)')
    target = mariadb.database('replica') if sink == 'mariadb' else pg_db
    try:
        cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
        wait_for_offsets(tmp_path / 'offsets.json', cdc)
        execute(conn, 'UPDATE uk SET v = 10 WHERE id = 1', 'UPDATE uk SET id = 3 WHERE id = 2')
        stop_when_caught_up(cdc, conn, tmp_path)
        source = fetch_all(conn, 'SELECT id, v FROM uk ORDER BY id, v')
        if sink == 'mariadb':
            with target.connect() as tconn:
                replica = fetch_all(tconn, 'SELECT id, v FROM uk ORDER BY id, v')
        else:
            with pg_db.connect() as pconn:
                replica = tuple(pconn.execute(f'SELECT id, v FROM "{mariadb_db.name}".uk '
                                              'ORDER BY id, v').fetchall())
        assert source == ((1, 10), (3, 2))
        assert tuple(map(tuple, replica)) == source
        assert not dead_letters(tmp_path)
    finally:
        if sink == 'mariadb':
            mariadb.drop_database(target.name)


_DEFAULTED = ('c', 's', 'd', 'day', 'at', 'e', 'z', 'b', 'flag', 'late')


def _defaulted_rows(conn: Any, columns: str, table: str = 't') -> dict[Any, list[Any]]:
    with conn.cursor() as cur:
        cur.execute(f'SELECT {columns} FROM {table} ORDER BY id')
        rows = list(cur.fetchall())
    return _replica_rows([tuple(bool(v[0]) if isinstance(v, bytes) and len(v) == 1 else v
                                for v in row) for row in rows])


@pytest.mark.parametrize('sink', ['mariadb', 'postgres'])
def test_rows_older_than_an_added_column_hold_its_default_in_the_replica(
        mariadb_db: Any, mariadb: Any, pg_db: Any, tmp_path: Path, sink: str) -> None:
    """MariaDB gives the rows a table holds the DEFAULT of a column added to it, without a
    row event: the replica's rows not written again hold it too, also for a column added
    while the pipeline was stopped.  A DEFAULT that is an expression cannot be known: NULL,
    with a warning naming the column."""
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE t (id INT PRIMARY KEY, a INT)',
            'INSERT INTO t VALUES (1, 1), (2, 2)')
    target = mariadb.database('replica') if sink == 'mariadb' else pg_db

    def replica(columns: str) -> dict[Any, list[Any]]:
        if sink == 'mariadb':
            with target.connect() as tconn:
                return _defaulted_rows(tconn, columns)
        with pg_db.connect() as pconn:
            rows = pconn.execute(f'SELECT {columns} FROM "{mariadb_db.name}".t '
                                 'ORDER BY id').fetchall()
        return _replica_rows(rows)

    try:
        cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
        wait_for_offsets(tmp_path / 'offsets.json', cdc)
        execute(conn, "ALTER TABLE t ADD COLUMN c INT NOT NULL DEFAULT 7, "
                      "ADD COLUMN s VARCHAR(20) DEFAULT 'it''s \\\\ 50%', "
                      "ADD COLUMN d DECIMAL(8,2) DEFAULT 1.5, "
                      "ADD COLUMN day DATE DEFAULT '2024-03-01', "
                      "ADD COLUMN at DATETIME(3) DEFAULT '2024-03-01 10:00:00.5', "
                      "ADD COLUMN e ENUM('x','y') NOT NULL DEFAULT 'y', "
                      "ADD COLUMN z INT NOT NULL, ADD COLUMN b VARBINARY(4) DEFAULT 'ab', "
                      "ADD COLUMN flag BIT(1) DEFAULT b'1', "
                      "ADD COLUMN now DATETIME DEFAULT CURRENT_TIMESTAMP",
                'UPDATE t SET a = 20 WHERE id = 2')  # row 1 is never written again
        output = stop_when_caught_up(cdc, conn, tmp_path)
        # Added while the pipeline was stopped: the restarted stream reads the ALTER first.
        execute(conn, 'ALTER TABLE t ADD COLUMN late INT DEFAULT 5',
                'UPDATE t SET a = 200 WHERE id = 2')
        cdc = start_cdc(mariadb_db.dsn, target.dsn, tmp_path, *CAUGHT_UP_OPTIONS)
        stop_when_caught_up(cdc, conn, tmp_path)
        columns = 'id, a, ' + ', '.join(_DEFAULTED)
        source = _defaulted_rows(conn, columns)
        assert source[1] == [1, 1, 7, "it's \\ 50%", decimal.Decimal('1.5'),
                             dt.date(2024, 3, 1), dt.datetime(2024, 3, 1, 10, 0, 0, 500000),
                             'y', 0, b'ab', True, 5]
        assert replica(columns) == source
        assert replica('id, now')[1] == [1, None]
        assert "column 'now' was added, and the value rows older than it read" in output
        assert not dead_letters(tmp_path)
    finally:
        if sink == 'mariadb':
            mariadb.drop_database(target.name)


# ---------------------------------------------------------------------------------------------
# Clear failures

def run_until_error(dsn: str, tmp_path: Path, *extra: str) -> str:
    process = start_cdc(dsn, f'jsonl:{tmp_path / "out"}', tmp_path, '--max_idle_secs', '1',
                        *extra)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output[-2000:]
    return output


def test_a_purged_position_says_how_to_recover(mariadb_db: Any, tmp_path: Path) -> None:
    execute(mariadb_db.connect(), 'CREATE TABLE t (id INT PRIMARY KEY)')
    offsets = tmp_path / 'offsets.json'
    # A position in a binlog file the server no longer has, as after PURGE BINARY LOGS.
    OffsetStore(str(offsets)).save(Offset(file='bin.000000', pos=4, snapshot='done',
                                          server_id=1))
    output = run_until_error(mariadb_db.dsn, tmp_path)
    last = output.strip().splitlines()[-1]
    assert last.startswith('python -m pipelines.cdc: error: the stored binlog position is no '
                           'longer on the server'), output[-2000:]
    assert f'delete the offset store {offsets} and restart with --snapshot initial' in last


def test_a_user_without_binlog_monitor_is_refused_with_the_fix(mariadb: Any, mariadb_db: Any,
                                                               tmp_path: Path) -> None:
    with mariadb.connect() as admin:
        for host in ('%', 'localhost'):
            execute(admin, f"CREATE USER IF NOT EXISTS 'halfcdc'@'{host}' IDENTIFIED BY 'pw'",
                    f"GRANT REPLICATION SLAVE, SELECT ON *.* TO 'halfcdc'@'{host}'")
        try:
            dsn = mariadb_db.dsn.replace('root@', 'halfcdc:pw@', 1)
            output = run_until_error(dsn, tmp_path)
        finally:
            for host in ('%', 'localhost'):
                execute(admin, f"DROP USER 'halfcdc'@'{host}'")
    last = output.strip().splitlines()[-1]
    assert 'lacks the BINLOG MONITOR privilege' in last and 'GRANT BINLOG MONITOR' in last
    assert ':pw@' not in output


# ---------------------------------------------------------------------------------------------
# The offset store on S3

def test_offset_store_on_s3(moto_server: Any) -> None:
    s3 = moto_server.client('s3')
    bucket = f'offsets-{time.time_ns()}'
    s3.create_bucket(Bucket=bucket)
    options = {'s3_endpoint_url': moto_server.endpoint_url,
               's3_access_key_id': moto_server.access_key,
               's3_secret_access_key': moto_server.secret_key,
               's3_region_name': moto_server.region}
    store = OffsetStore(f's3://{bucket}/cdc/shop.json', options)
    try:
        assert store.load() is None
        offset = Offset(file='bin.000002', pos=777, gtid='0-1-42', snapshot='done', server_id=1)
        store.save(offset)
        store.save(offset)
        assert store.load() == offset
        store.delete()
        assert store.load() is None
    finally:
        for item in s3.list_objects_v2(Bucket=bucket).get('Contents', []):
            s3.delete_object(Bucket=bucket, Key=item['Key'])
        s3.delete_bucket(Bucket=bucket)


def test_offset_store_on_s3_through_a_network_that_cuts(moto_server: Any,
                                                        monkeypatch: Any) -> None:
    """Each write and read of the offset is cut once at a random byte, either way: it is made
    again, and every load returns the offset saved last."""
    import random

    from tests.services.proxy import CuttingProxy

    monkeypatch.setattr('transforms.retry.FIRST_PAUSE_S', 0.01)
    s3 = moto_server.client('s3')
    bucket = f'offsets-{time.time_ns()}'
    s3.create_bucket(Bucket=bucket)
    proxy = CuttingProxy.start(moto_server.port)
    options = {'s3_endpoint_url': f'http://127.0.0.1:{proxy.port}',
               's3_access_key_id': moto_server.access_key,
               's3_secret_access_key': moto_server.secret_key,
               's3_region_name': moto_server.region}
    store = OffsetStore(f's3://{bucket}/cdc/shop.json', options)
    rng = random.Random(6)
    try:
        for n in range(1, 7):
            offset = Offset(file='bin.000002', pos=n, gtid=f'0-1-{n}', server_id=1)
            for step in (lambda o=offset: store.save(o), store.load):
                to_server = rng.random() < 0.5
                proxy.cut_after(rng.randint(1, 1500 if to_server else 600), to_server=to_server)
                result = step()
            assert result == offset
        assert proxy.cuts >= 6
    finally:
        proxy.close()
        for item in s3.list_objects_v2(Bucket=bucket).get('Contents', []):
            s3.delete_object(Bucket=bucket, Key=item['Key'])
        s3.delete_bucket(Bucket=bucket)


def test_sigkill_during_snapshot_takes_it_again(mariadb_db: Any, tmp_path: Path) -> None:
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE wide (id INT PRIMARY KEY, payload VARCHAR(300))',
            "INSERT INTO wide SELECT seq, REPEAT('p', 200) FROM seq_1_to_150000")
    out = tmp_path / 'out'
    first = start_cdc(mariadb_db.dsn, f'jsonl:{out}', tmp_path)
    deadline = time.monotonic() + 60
    while not list(out.glob('*/.part-*.tmp')):  # the snapshot is being written
        assert time.monotonic() < deadline and first.poll() is None, 'snapshot never started'
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not list(out.glob('*/*.jsonl')), 'the killed snapshot committed a file'
    stored = OffsetStore(str(tmp_path / 'offsets.json')).load()
    assert stored is not None and stored.snapshot == 'pending'
    execute(conn, 'UPDATE wide SET payload = NULL WHERE id % 1000 = 0',
            'DELETE FROM wide WHERE id > 149000')
    second = start_cdc(mariadb_db.dsn, f'jsonl:{out}', tmp_path, *CAUGHT_UP_OPTIONS)
    wait_for_offsets(tmp_path / 'offsets.json', second)
    execute(conn, "INSERT INTO wide VALUES (0, 'after the restart')")
    output = stop_when_caught_up(second, conn, tmp_path)
    assert 'taking the snapshot again' in output
    assert_rebuilt_equals_source(conn, mariadb_db.name, read_jsonl_dir(str(out)), ['wide'])
    stored = OffsetStore(str(tmp_path / 'offsets.json')).load()
    assert stored is not None and stored.snapshot == 'done'


def test_a_row_image_other_than_full_is_refused_with_the_fix(mariadb: Any, mariadb_db: Any,
                                                             tmp_path: Path) -> None:
    with mariadb.connect() as admin:
        execute(admin, 'SET GLOBAL binlog_row_image = MINIMAL')
        try:
            output = run_until_error(mariadb_db.dsn, tmp_path)
        finally:
            execute(admin, 'SET GLOBAL binlog_row_image = FULL')
    last = output.strip().splitlines()[-1]
    assert 'binlog_row_image is MINIMAL, needs FULL' in last and 'SET GLOBAL' in last


def test_ddl_waits_for_the_snapshot_instead_of_breaking_it(mariadb_db: Any) -> None:
    from transforms.sources.mysql.snapshot import begin_snapshot, read_snapshot, text_conversions

    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE first (id INT PRIMARY KEY)',
            'CREATE TABLE later (id INT PRIMARY KEY)', 'INSERT INTO first VALUES (1)',
            'INSERT INTO later VALUES (1), (2)')
    snapshot = mariadb_db.connect(conv=text_conversions())
    tables = [(mariadb_db.name, 'first'), (mariadb_db.name, 'later')]
    at = begin_snapshot(snapshot, tables)
    # Without the metadata lock, TRUNCATE would succeed and the snapshot's read of `later`
    # would fail with "Table definition has changed".
    execute(conn, 'SET SESSION lock_wait_timeout = 1')
    with pytest.raises(pymysql.err.OperationalError, match='Lock wait timeout'):
        execute(conn, 'TRUNCATE later')
    execute(conn, 'INSERT INTO later VALUES (3)')  # row writes go on
    events = [e for batch in read_snapshot(snapshot, tables, at, server_name='s', server_id=1)
              for e in batch]
    done = {'kind': SNAPSHOT_COMPLETE}
    assert [(e.table.table, e.after if e.op is Op.READ else {'kind': e.message['kind']})
            for e in events] == [('first', {'id': 1}), ('first', done),
                                 ('later', {'id': 1}), ('later', {'id': 2}), ('later', done)]
    assert [e.message['rows'] for e in events if e.message] == [1, 2]
    assert [e.source.snapshot for e in events] == ['true'] * 4 + ['last']
    execute(conn, 'TRUNCATE later')  # the snapshot ended: its locks are gone


# ---------------------------------------------------------------------------------------------
# A lost connection

def increment_counters(conn: Any, seconds: float, committed: dict[int, list[int]]) -> None:
    """For ``seconds``, one-row transactions adding 1 to a random counter ``k`` of 1-20 in
    ``counters``; the value each reached, appended to ``committed[k]``."""
    import random
    rng = random.Random(len(committed))
    deadline = time.monotonic() + seconds
    with conn.cursor() as cur:
        while time.monotonic() < deadline:
            k = rng.randint(1, 20)
            cur.execute('UPDATE counters SET v = v + 1 WHERE k = %s', (k,))
            cur.execute('SELECT v FROM counters WHERE k = %s', (k,))
            committed[k].append(cur.fetchone()[0])
            time.sleep(0.002)


def updated_values(out: Path) -> dict[int, list[int]]:
    """Per key ``k``, the values of ``v`` that updates delivered into ``jsonl:out``, in binlog
    order, each change once (a replay repeats a change's position)."""
    delivered: dict[int, list[int]] = collections.defaultdict(list)
    seen = set()
    for doc in sorted((d for d in read_jsonl_dir(str(out)) if d['op'] == 'u'), key=position):
        if position(doc) not in seen:
            seen.add(position(doc))
            delivered[doc['after']['k']].append(doc['after']['v'])
    return delivered


def test_a_server_restart_between_transactions_is_ridden_through(tmp_path: Path) -> None:
    """The dump breaks, the source reconnects (with pauses) from the last transaction it
    read: every committed change arrives in order per key, in one run that exits with 0."""
    from tests.services.mariadb import MariaDBServer

    server = MariaDBServer.start()
    try:
        db = server.create_database('restart')
        dsn = server.dsn(db)
        with server.connect(db) as conn:
            execute(conn, 'CREATE TABLE counters (k INT PRIMARY KEY, v INT NOT NULL)',
                    'INSERT INTO counters SELECT seq, 0 FROM seq_1_to_20')
        committed: dict[int, list[int]] = collections.defaultdict(list)

        def write(seconds: float) -> None:
            with server.connect(db) as wconn:
                increment_counters(wconn, seconds, committed)

        pipeline = start_cdc(dsn, f'jsonl:{tmp_path / "out"}', tmp_path, '--snapshot', 'never',
                             '--reconnect_secs', '60', *CAUGHT_UP_OPTIONS)
        wait_for_offsets(tmp_path / 'offsets.json', pipeline)
        write(2)
        server.restart(down_secs=2)
        write(2)
        with server.connect(db) as conn:
            output = stop_when_caught_up(pipeline, conn, tmp_path)
    finally:
        server.stop()
    assert 'reconnecting' in output and 'reconnected after' in output, output[-3000:]
    delivered = updated_values(tmp_path / 'out')
    assert sum(map(len, committed.values())) > 100
    for k, values in committed.items():
        assert delivered[k] == values, f'key {k}: committed {values}, delivered {delivered[k]}'


def test_a_frozen_server_stops_the_pipeline_with_one_line_not_a_hang(tmp_path: Path) -> None:
    """The server stops (SIGSTOP) with its connections open: the dump misses its heartbeats,
    the reconnect's ping and handshake get no answer, and after --reconnect_secs the pipeline
    stops with one line instead of waiting for ever."""
    from tests.services.mariadb import MariaDBServer

    server = MariaDBServer.start()
    try:
        db = server.create_database('frozen')
        with server.connect(db) as conn:
            execute(conn, 'CREATE TABLE t (id INT PRIMARY KEY)')
        pipeline = start_cdc(server.dsn(db), f'jsonl:{tmp_path / "out"}', tmp_path,
                             '--snapshot', 'never', '--reconnect_secs', '3')
        wait_for_offsets(tmp_path / 'offsets.json', pipeline)
        with server.connect(db) as conn:
            execute(conn, 'INSERT INTO t VALUES (1)')
        wait_for_first_insert(tmp_path / 'out', pipeline)
        server.freeze()
        try:
            output, waited = ended_by_itself(pipeline, timeout=150)
        finally:
            server.thaw()
    finally:
        server.stop()
    assert_gave_up_in_one_line(pipeline, output)
    assert 'no data (not even a heartbeat)' in output, output[-3000:]
    assert 10 <= waited < 90, waited


def test_a_connection_cut_inside_a_transaction_reads_it_again(mariadb_db: Any,
                                                               tmp_path: Path) -> None:
    """The network breaks the dump three times, each inside a transaction (a proxy cuts it at
    a byte): the source reconnects and reads that transaction again from its start.  Every
    committed change arrives, in order per key, in one run that exits with 0."""
    from tests.services.proxy import CuttingProxy

    with mariadb_db.connect() as conn:
        execute(conn, 'CREATE TABLE counters (k INT PRIMARY KEY, v INT NOT NULL)',
                'INSERT INTO counters SELECT seq, 0 FROM seq_1_to_5000')
    proxy = CuttingProxy.start(mariadb_db.server.port)
    dsn = mariadb_db.dsn.replace(f':{mariadb_db.server.port}/', f':{proxy.port}/')
    pipeline = start_cdc(dsn, f'jsonl:{tmp_path / "out"}', tmp_path, '--snapshot', 'never',
                         '--reconnect_secs', '60', *CAUGHT_UP_OPTIONS)
    wait_for_offsets(tmp_path / 'offsets.json', pipeline)
    failures: list[BaseException] = []

    def cut_three_times() -> None:
        try:
            for _ in range(3):
                proxy.cut_after(900_000)
                proxy.wait_for_cut(timeout=60)
        except BaseException as exc:
            failures.append(exc)

    cutter = threading.Thread(target=cut_three_times)
    cutter.start()
    # A transaction of 5,000 row changes is ~95 kB in ~20 row events: a cut at a byte lands
    # inside one (and the cuts fall at the same bytes each run).
    transactions = 40
    with mariadb_db.connect() as conn:
        for _ in range(transactions):
            execute(conn, 'UPDATE counters SET v = v + 1')
        cutter.join(timeout=90)
        output = stop_when_caught_up(pipeline, conn, tmp_path)
    proxy.close()
    assert not failures and proxy.cuts == 3, (failures, output[-3000:])
    assert output.count('the connection broke inside the transaction') == 3, output[-3000:]
    assert output.count('reconnected after') == 3, output[-3000:]
    delivered = updated_values(tmp_path / 'out')
    assert len(delivered) == 5000
    for k, values in delivered.items():
        assert values == list(range(1, transactions + 1)), f'key {k}: {values[:50]}'


def test_a_network_partition_of_both_connections_is_ridden_through(mariadb_db: Any,
                                                                    tmp_path: Path) -> None:
    """Both of the source's connections stay open but carry nothing (packets dropped, no
    reset): the dump notices its missing heartbeats, the control connection its unanswered
    ping, and the source reconnects.  Every committed change arrives, in order per key."""
    from tests.services.proxy import CuttingProxy

    with mariadb_db.connect() as conn:
        execute(conn, 'CREATE TABLE counters (k INT PRIMARY KEY, v INT NOT NULL)',
                'INSERT INTO counters SELECT seq, 0 FROM seq_1_to_20')
    proxy = CuttingProxy.start(mariadb_db.server.port)
    dsn = mariadb_db.dsn.replace(f':{mariadb_db.server.port}/', f':{proxy.port}/')
    pipeline = start_cdc(dsn, f'jsonl:{tmp_path / "out"}', tmp_path, '--snapshot', 'never',
                         '--reconnect_secs', '90', *CAUGHT_UP_OPTIONS)
    wait_for_offsets(tmp_path / 'offsets.json', pipeline)
    committed: dict[int, list[int]] = collections.defaultdict(list)

    def write(seconds: float) -> None:
        with mariadb_db.connect() as wconn:
            increment_counters(wconn, seconds, committed)

    write(1)
    proxy.black_hole('first')  # the control connection (opened first)
    proxy.black_hole('busiest')  # the dump
    write(3)
    with mariadb_db.connect() as conn:
        output = stop_when_caught_up(pipeline, conn, tmp_path)
    proxy.close()
    assert 'no data (not even a heartbeat)' in output, output[-3000:]
    assert 'reconnected after' in output, output[-3000:]
    delivered = updated_values(tmp_path / 'out')
    assert sum(map(len, committed.values())) > 100
    for k, values in committed.items():
        assert delivered[k] == values, f'key {k}: committed {values}, delivered {delivered[k]}'


def test_a_truncate_whose_lookup_finds_the_control_connection_silent_is_read_again(
        mariadb_db: Any, tmp_path: Path) -> None:
    """TRUNCATE of a table the stream has not seen asks the control connection for its
    schema.  If that connection no longer answers, the statement is read again once the
    source has reconnected: a TRUNCATE event, not a dead letter."""
    from tests.services.proxy import CuttingProxy

    with mariadb_db.connect() as conn:
        execute(conn, 'CREATE TABLE quiet (k INT PRIMARY KEY)', 'INSERT INTO quiet VALUES (1)')
    proxy = CuttingProxy.start(mariadb_db.server.port)
    dsn = mariadb_db.dsn.replace(f':{mariadb_db.server.port}/', f':{proxy.port}/')
    pipeline = start_cdc(dsn, f'jsonl:{tmp_path / "out"}', tmp_path, '--snapshot', 'never',
                         '--reconnect_secs', '90', *CAUGHT_UP_OPTIONS)
    wait_for_offsets(tmp_path / 'offsets.json', pipeline)
    proxy.black_hole('first')  # the control connection
    with mariadb_db.connect() as conn:
        execute(conn, 'TRUNCATE TABLE quiet', 'INSERT INTO quiet VALUES (2)')
        output = stop_when_caught_up(pipeline, conn, tmp_path)
    proxy.close()
    assert 'the control connection broke' in output, output[-3000:]
    assert not dead_letters(tmp_path), dead_letters(tmp_path)
    docs = read_jsonl_dir(str(tmp_path / 'out'))
    assert [(d['op'], (d['after'] or {}).get('k')) for d in docs
            if d['source']['table'] == 'quiet' and d['op'] != 'm'] == [('t', None), ('c', 2)], \
        output[-3000:]


def test_a_failover_behind_the_same_address_loses_nothing(pg_db: Any, tmp_path: Path) -> None:
    """The source's address moves from a primary to its replica (promoted), whose binlog files
    are numbered lower: the source resumes there by GTID, in a new epoch, so its changes sort
    after the old primary's and a PostgreSQL replica ends equal to the new primary."""
    from tests.services.mariadb import MariaDBServer
    from tests.services.proxy import CuttingProxy

    primary = MariaDBServer.start()
    replica = MariaDBServer.start({'server-id': 2, 'log-slave-updates': 1})
    proxy = CuttingProxy.start(primary.port)
    try:
        with primary.connect() as conn, replica.connect() as rconn:
            execute(conn, *['FLUSH BINARY LOGS'] * 3)  # the primary's files: bin.000004 on
            (gtid,), = fetch_all(conn, 'SELECT @@gtid_binlog_pos')
            with rconn.cursor() as cur:
                cur.execute('SET GLOBAL gtid_slave_pos = %s', (gtid,))
                cur.execute(f"CHANGE MASTER TO master_host = '127.0.0.1', "
                            f"master_port = {primary.port}, master_user = 'root', "
                            "master_use_gtid = slave_pos")
                cur.execute('START SLAVE')
            execute(conn, 'CREATE DATABASE fo', 'CREATE TABLE fo.counters '
                    '(k INT PRIMARY KEY, v INT NOT NULL)',
                    'INSERT INTO fo.counters SELECT seq, 0 FROM fo.seq_1_to_20')
        dsn = f'mysql://root@127.0.0.1:{proxy.port}/fo'
        pipeline = start_cdc(dsn, pg_db.dsn, tmp_path, '--reconnect_secs', '60',
                             *CAUGHT_UP_OPTIONS)
        wait_for_offsets(tmp_path / 'offsets.json', pipeline)

        def write(server: MariaDBServer, seconds: float, seed: int) -> None:
            import random
            rng = random.Random(seed)
            deadline = time.monotonic() + seconds
            with server.connect('fo') as wconn, wconn.cursor() as cur:
                while time.monotonic() < deadline:
                    k = rng.randint(1, 30)
                    cur.execute('INSERT INTO counters VALUES (%s, 1) '
                                'ON DUPLICATE KEY UPDATE v = v + 1', (k,))
                    if rng.random() < 0.05:
                        cur.execute('DELETE FROM counters WHERE k = %s', (rng.randint(1, 30),))
                    time.sleep(0.002)

        write(primary, 2, seed=1)
        with primary.connect() as conn, replica.connect() as rconn:
            (gtid,), = fetch_all(conn, 'SELECT @@gtid_binlog_pos')
            with rconn.cursor() as cur:
                cur.execute('SELECT MASTER_GTID_WAIT(%s, 30)', (gtid,))
                assert cur.fetchone()[0] == 0, 'the replica did not catch up'
                cur.execute('STOP SLAVE')
                cur.execute('RESET SLAVE ALL')  # promoted
            file, = fetch_all(rconn, 'SHOW MASTER STATUS')[0][:1]
            assert file_index(file) < 4, file
        proxy.fail_over(replica.port)
        write(replica, 2, seed=2)
        with replica.connect('fo') as rconn:
            output = stop_when_caught_up(pipeline, rconn, tmp_path)
            source = dict(fetch_all(rconn, 'SELECT k, v FROM counters'))
        with pg_db.connect() as pconn:
            target = dict(pconn.execute('SELECT k, v FROM fo.counters').fetchall())
    finally:
        proxy.close()
        primary.stop()
        replica.stop()
    assert 'the source is now server id 2, not 1' in output, output[-3000:]
    assert len(source) > 20 and target == source
    assert not dead_letters(tmp_path)


@pytest.mark.parametrize('after_reset', [5, 60], ids=['fewer', 'more'])
def test_a_binlog_history_that_started_over_is_refused_not_skipped(tmp_path: Path,
                                                                    after_reset: int) -> None:
    """RESET MASTER (or a server restored from a backup) starts the binlogs and the GTID
    numbering over: the stored position then names other transactions, and a restart resumed
    there, skipping the first ones written since without a word (or, with fewer of them,
    ended with the server's raw error in a traceback)."""
    from tests.services.mariadb import MariaDBServer

    server = MariaDBServer.start()  # its own: RESET MASTER must not touch the shared one's
    try:
        conn = server.connect()
        execute(conn, 'CREATE DATABASE shop', 'CREATE TABLE shop.t (id INT PRIMARY KEY)',
                *(f'INSERT INTO shop.t VALUES ({n})' for n in range(20)))
        sink = f'jsonl:{tmp_path / "out"}'
        finish(start_cdc(server.dsn('shop'), sink, tmp_path, '--snapshot', 'never',
                         '--max_idle_secs', '2'))
        execute(conn, 'RESET MASTER',
                *(f'INSERT INTO shop.t VALUES ({n})' for n in range(100, 100 + after_reset)))
        restarted = start_cdc(server.dsn('shop'), sink, tmp_path, '--snapshot', 'never',
                              '--max_idle_secs', '2')
        output, _ = restarted.communicate(timeout=120)
        assert restarted.returncode == 1, output[-3000:]
        last = output.strip().splitlines()[-1]
        assert last.startswith(f'python -m pipelines.cdc: error: the offset store '
                               f'{tmp_path / "offsets.json"} holds bin.000001:'), last
        assert last.endswith("the server's binlog history started over (RESET MASTER, or a "
                             'server restored from a backup), so the stored position names '
                             'other transactions now and resuming there would skip changes; '
                             'delete the offset store and restart with --snapshot initial')
        # Resuming where the history is the one read still works.
        execute(conn, 'INSERT INTO shop.t VALUES (500)')
        (tmp_path / 'offsets.json').unlink()
        finish(start_cdc(server.dsn('shop'), f'jsonl:{tmp_path / "again"}', tmp_path,
                         '--snapshot', 'initial', '--max_idle_secs', '2'))
        execute(conn, 'INSERT INTO shop.t VALUES (501)')
        finish(start_cdc(server.dsn('shop'), f'jsonl:{tmp_path / "again"}', tmp_path,
                         '--snapshot', 'initial', '--max_idle_secs', '2'))
        ids = {d['after']['id'] for d in read_jsonl_dir(str(tmp_path / 'again'))
               if d['op'] in 'rc'}
        assert ids == {*range(20), *range(100, 100 + after_reset), 500, 501}
    finally:
        server.stop()


def test_an_offset_store_without_a_valid_offset_is_one_line(mariadb_db: Any,
                                                            tmp_path: Path) -> None:
    (tmp_path / 'offsets.json').write_text('')  # truncated (a full disk, an editor)
    run = start_cdc(mariadb_db.dsn, f'jsonl:{tmp_path / "out"}', tmp_path)
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 1 and 'Traceback' not in output, output[-3000:]
    assert output.strip().splitlines()[-1] == (
        f'python -m pipelines.cdc: error: the offset store {tmp_path / "offsets.json"} holds no '
        'valid offset (Expecting value: line 1 column 1 (char 0)); delete it and restart with '
        '--snapshot initial')


def test_a_table_named_twice_in_tables_is_copied_once(mariadb_db: Any, tmp_path: Path) -> None:
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE t1 (id INT PRIMARY KEY)', 'INSERT INTO t1 VALUES (1), (2)')
    out = tmp_path / 'out'
    finish(start_cdc(mariadb_db.dsn, f'jsonl:{out}', tmp_path, '--snapshot', 'only',
                     '--tables', f't1,{mariadb_db.name}.t1'))
    docs = read_jsonl_dir(str(out))
    assert sorted(d['after']['id'] for d in docs if d['op'] == 'r') == [1, 2]
    assert sum(d['op'] == 'm' and d['message'].get('kind') == 'snapshot_complete'
               for d in docs) == 1
