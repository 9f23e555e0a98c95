"""The binlog stream and decoder against a real MariaDB 10.11: values, images, positions.

Every test writes to a database of its own and reads the binlog from the position before its
writes, decoding only its own database's tables (the server is shared by the session).
"""
from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pymysql
import pytest

from tests.services.mariadb import MariaDBDatabase, MariaDBServer
from transforms.envelope import Kind, TableSchema
from transforms.sources.mysql import binlog as b
from transforms.sources.mysql.snapshot import describe_table
from transforms.sources.mysql.stream import (
    BinlogConfigError,
    BinlogPosition,
    BinlogPurgedError,
    BinlogStream,
    BinlogStreamError,
    StreamItem,
)
from transforms.sources.mysql.types import geometry_value

pytestmark = pytest.mark.integration

_server_ids = itertools.count(5000)


def open_stream(conn: pymysql.connections.Connection, db: str | None = None,
                start: BinlogPosition | None = None, **options: Any) -> BinlogStream:
    include = (lambda schema, table: schema == db) if db else None
    stream = BinlogStream(conn, server_id=next(_server_ids), include=include, **options)
    stream.start(start)
    return stream


def read_until(stream: BinlogStream, done: Callable[[list[StreamItem]], bool],
               timeout: float = 20.0) -> list[StreamItem]:
    items: list[StreamItem] = []
    deadline = time.monotonic() + timeout
    while not done(items):
        assert time.monotonic() < deadline, f'timed out after {len(items)} items'
        item = stream.read(0.5)
        if item is not None:
            assert not isinstance(item.event, Exception), item.event
            items.append(item)
    return items


def rows_of(items: list[StreamItem]) -> list[b.Rows]:
    return [i.event for i in items if isinstance(i.event, b.Rows)]


def commits(items: list[StreamItem]) -> list[StreamItem]:
    return [i for i in items if i.checkpoint is not None]


def execute(conn: pymysql.connections.Connection, *statements: str) -> None:
    with conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)


@pytest.fixture
def position(mariadb: MariaDBServer) -> BinlogPosition:
    """The binlog end before the test writes anything."""
    with mariadb.connect() as conn:
        stream = BinlogStream(conn, server_id=next(_server_ids))
        return stream.current_position()


# ---------------------------------------------------------------------------------------------
# Every column type: the decoded binlog values are what SELECT returns

_ALL_TYPES = """
CREATE TABLE all_types (
  id INT NOT NULL PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  f FLOAT, d DOUBLE, dec_small DECIMAL(5,2), dec_big DECIMAL(65,30), dec_u DECIMAL(9,0) UNSIGNED,
  dt DATE, tm TIME, tm3 TIME(3), tm6 TIME(6), dtm DATETIME, dtm2 DATETIME(2), dtm6 DATETIME(6),
  ts TIMESTAMP NULL, ts6 TIMESTAMP(6) NULL, y YEAR,
  c CHAR(10), c255 CHAR(255), vc VARCHAR(300), c_latin1 CHAR(5) CHARACTER SET latin1,
  vc_latin1 VARCHAR(10) CHARACTER SET latin1, vc_ucs2 VARCHAR(10) CHARACTER SET ucs2,
  bn BINARY(4), vbn VARBINARY(10),
  tt TINYTEXT, tx TEXT, mt MEDIUMTEXT, lt LONGTEXT, tb TINYBLOB, bl BLOB, mb MEDIUMBLOB,
  lb LONGBLOB, e ENUM('a','b','it''s'), s SET('x','y','z'), b1 BIT(1), b64 BIT(64),
  j JSON, g GEOMETRY, pt POINT
) DEFAULT CHARSET=utf8mb4
"""

_VALUES = [
    "1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,"
    " -9223372036854775808, 18446744073709551615, 0.1, 1.5e300, -999.99,"
    " '-12345678901234567890123456789012345.123456789012345678901234567891', 999999999,"
    " '2024-02-29', '-838:59:59', '12:34:56.789', '-00:00:01.5', '1000-01-01 00:00:00',"
    " '2024-01-02 03:04:05.67', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07',"
    " '1970-01-01 00:00:01.000001', 2155, 'abc', REPEAT('é', 255), 'héllo wörld 🎉',"
    " 'café', 'ÿ€‰', 'ĉü', 'ab', 0x00010203, 'tiny', 'text', 'medium', 'long', 0x01, 0x0203,"
    " 0x04, 0x05, 'it''s', 'x,z', 1, b'1000000000000000000000000000000000000000000000000000000"
    "000000001', '{\"a\": [1, 2.5, null, true], \"b\": \"x\"}',"
    " ST_GeomFromText('LINESTRING(0 0, 1 1)'), ST_GeomFromText('POINT(3 4)', 4326)",
    "2, 127, 0, 32767, 0, 8388607, 0, 2147483647, 0, 9223372036854775807, 0, -3.4e38, -0.0,"
    " 0, 0, 0, '0000-00-00', '00:00:00', '23:59:59.999', '838:59:59', '0000-00-00 00:00:00',"
    " '2024-02-29 12:00:00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', NULL, 0, '', '',"
    " '', '', '', '', '', '', '', '', '', '', '', '', '', '', '', '', 0, b'0', 'null',"
    " ST_GeomFromText('POINT(0 0)'), NULL",
    "3" + ", NULL" * 48,
]


def _as_select_value(kind: Kind, value: Any) -> Any:
    """Our decoded value in the form PyMySQL's SELECT returns."""
    if value is None:
        return None
    if kind is Kind.TIME:
        if isinstance(value, str):
            sign = -1 if value.startswith('-') else 1
            hours, minutes, seconds = value.lstrip('-').split(':')
            return sign * dt.timedelta(hours=int(hours), minutes=int(minutes),
                                       seconds=float(seconds))
        return dt.timedelta(hours=value.hour, minutes=value.minute, seconds=value.second,
                            microseconds=value.microsecond)
    if kind is Kind.TIMESTAMPTZ and isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)  # the session's time zone is UTC
    if kind is Kind.BOOLEAN:
        return bytes([value])
    return value


def _select_value(name: str, value: Any) -> Any:
    if name in ('g', 'pt') and value is not None:
        return geometry_value(value)  # SELECT returns the internal SRID + WKB form
    if name == 'f' and value is not None:
        return float(f'{value:.7g}')
    return value


def test_every_column_type_round_trips(mariadb_db: MariaDBDatabase,
                                       position: BinlogPosition) -> None:
    conn = mariadb_db.connect()
    execute(conn, "SET time_zone = '+00:00'", "SET sql_mode = ''", _ALL_TYPES,
            *(f'INSERT INTO all_types VALUES ({values})' for values in _VALUES))
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute('SELECT * FROM all_types ORDER BY id')
        selected = cur.fetchall()
    stream = open_stream(mariadb_db.server.connect(), mariadb_db.name, position)
    try:
        items = read_until(stream, lambda items: len(rows_of(items)) == 3)
    finally:
        stream.close()
    events = rows_of(items)
    schema: TableSchema = events[0].table.schema
    decoded = [row for event in events for row in event.rows]
    assert [row['id'] for row in decoded] == [1, 2, 3]
    for ours, theirs in zip(decoded, selected, strict=True):
        for column in schema.columns:
            got = _as_select_value(column.kind, ours[column.name])
            if column.name == 'f' and got is not None:
                got = float(f'{got:.7g}')
            want = _select_value(column.name, theirs[column.name])
            assert got == want, f'row {ours["id"]} column {column.name}: {got!r} != {want!r}'
    # typed values where Python can hold them, the text form where it cannot
    row1, row2 = decoded[0], decoded[1]
    assert row1['biu'] == Decimal(2 ** 64 - 1) and isinstance(row1['biu'], Decimal)
    assert row1['tm'] == '-838:59:59' and row1['tm3'] == dt.time(12, 34, 56, 789000)
    assert row1['ts6'] == dt.datetime(1970, 1, 1, 0, 0, 1, 1, tzinfo=dt.timezone.utc)
    assert row2['dt'] == '0000-00-00' and row2['ts'] == '0000-00-00 00:00:00'
    assert row1['pt'][:5] == b'\x01\x01\x00\x00\x20'  # EWKB point carrying SRID 4326
    assert row1['j'] == '{"a": [1, 2.5, null, true], "b": "x"}'
    kinds = {c.name: c.kind for c in schema.columns}
    assert (kinds['b1'], kinds['e'], kinds['dec_big'], kinds['ts']) == \
        (Kind.BOOLEAN, Kind.ENUM, Kind.DECIMAL, Kind.TIMESTAMPTZ)
    assert schema.key == ('id',)


def test_numeric_columns_after_a_year_column_keep_their_sign(mariadb_db: MariaDBDatabase,
                                                              position: BinlogPosition) -> None:
    # MariaDB's SIGNEDNESS metadata has a bit for YEAR: a decoder that skips it hands every
    # later numeric column its neighbour's sign.
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE t (id INT PRIMARY KEY, y YEAR, u INT UNSIGNED, s INT, '
                  'mu MEDIUMINT UNSIGNED, ms MEDIUMINT, du DECIMAL(20,0) UNSIGNED)',
            'INSERT INTO t VALUES (1, 2024, 4294967295, -1, 16777215, -1, 12345678901234567890)')
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute('SELECT * FROM t')
        selected = cur.fetchall()
    stream = open_stream(mariadb_db.server.connect(), mariadb_db.name, position)
    try:
        items = read_until(stream, lambda items: len(rows_of(items)) == 1)
    finally:
        stream.close()
    event = rows_of(items)[0]
    assert event.rows == selected
    assert event.table.schema == describe_table(conn, mariadb_db.name, 't').schema


# Tables without a PRIMARY KEY: the key the binlog names (the server promotes its first
# unique key of whole NOT NULL columns), which the snapshot must name too.
_KEYS = {
    'pk': ('CREATE TABLE pk (u INT NOT NULL UNIQUE, id INT PRIMARY KEY)', ('id',)),
    'uk': ('CREATE TABLE uk (id INT NOT NULL, v INT, UNIQUE KEY (id))', ('id',)),
    'composite': ('CREATE TABLE composite (a INT NOT NULL, b VARCHAR(5) NOT NULL, '
                  'UNIQUE KEY (b, a))', ('b', 'a')),
    'nullable_first': ('CREATE TABLE nullable_first (a INT, b INT NOT NULL, UNIQUE KEY (a), '
                       'UNIQUE KEY (b))', ('b',)),
    'twins': ('CREATE TABLE twins (a INT NOT NULL, b INT NOT NULL, UNIQUE KEY k2 (b, a), '
              'UNIQUE KEY k1 (a, b))', ('b', 'a')),
    'nullable': ('CREATE TABLE nullable (a INT, UNIQUE KEY (a))', ()),
    'prefix': ('CREATE TABLE prefix (s VARCHAR(50) NOT NULL, UNIQUE KEY (s(10)))', ()),
    'plain': ('CREATE TABLE plain (a INT NOT NULL, KEY (a))', ()),
}


def test_the_snapshot_names_the_key_the_binlog_names(mariadb_db: MariaDBDatabase,
                                                     position: BinlogPosition) -> None:
    conn = mariadb_db.connect()
    execute(conn, "SET sql_mode = ''", *(sql for sql, _ in _KEYS.values()),
            *(f'INSERT INTO {name} () VALUES ()' for name in _KEYS))
    stream = open_stream(mariadb_db.server.connect(), mariadb_db.name, position)
    try:
        items = read_until(stream, lambda items: len(rows_of(items)) == len(_KEYS))
    finally:
        stream.close()
    streamed = {event.table.table: event.table.schema for event in rows_of(items)}
    for name, (_, key) in _KEYS.items():
        assert streamed[name].key == key, name
        assert describe_table(conn, mariadb_db.name, name).schema == streamed[name], name


# ---------------------------------------------------------------------------------------------
# Images, multi-row events and transactions

def test_update_images_and_multi_row_events(mariadb_db: MariaDBDatabase,
                                            position: BinlogPosition) -> None:
    conn = mariadb_db.connect()
    values = ', '.join(f"({i}, 'name {i}', {i * 10})" for i in range(1, 1001))
    execute(conn,
            'CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40), qty INT)',
            f'INSERT INTO items VALUES {values}',
            "UPDATE items SET qty = qty + 1, name = CONCAT(name, '!') WHERE id <= 600",
            'DELETE FROM items WHERE id > 900')
    stream = open_stream(mariadb_db.server.connect(), mariadb_db.name, position)
    try:
        items = read_until(stream, lambda items: len(commits(items)) == 4)  # DDL + 3 DML
    finally:
        stream.close()
    events = rows_of(items)
    by_op: dict[str, list[Any]] = {}
    for event in events:
        by_op.setdefault(event.op.value, []).extend(event.rows)
    assert len([e for e in events if e.op.value == 'c']) > 1  # 1000 rows span several events
    assert [r['id'] for r in by_op['c']] == list(range(1, 1001))
    assert len(by_op['u']) == 600
    before, after = by_op['u'][41]
    assert before == {'id': 42, 'name': 'name 42', 'qty': 420}
    assert after == {'id': 42, 'name': 'name 42!', 'qty': 421}
    assert [r['id'] for r in by_op['d']] == list(range(901, 1001))
    # all changes of one transaction carry its GTID; the commit carries the checkpoint
    gtids = {i.gtid for i in items if isinstance(i.event, b.Rows) and i.event.op.value == 'u'}
    assert len(gtids) == 1
    commit = next(i for i in items if isinstance(i.event, b.Xid) and i.gtid in gtids)
    assert commit.checkpoint is not None and commit.checkpoint.gtid == commit.gtid


def test_ddl_and_non_transactional_commits_are_checkpoints(mariadb_db: MariaDBDatabase,
                                                            position: BinlogPosition) -> None:
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE log (id INT PRIMARY KEY) ENGINE=Aria',
            'INSERT INTO log VALUES (1)', 'ALTER TABLE log ADD COLUMN note TEXT',
            "INSERT INTO log VALUES (2, 'after the DDL')")
    stream = open_stream(mariadb_db.server.connect(), mariadb_db.name, position)
    try:
        items = read_until(stream, lambda items: len(commits(items)) == 4)
    finally:
        stream.close()
    kinds = [(type(i.event).__name__, getattr(i.event, 'sql', '')[:5]) for i in commits(items)]
    assert kinds == [('Query', 'CREAT'), ('Query', 'COMMI'), ('Query', 'ALTER'),
                     ('Query', 'COMMI')]
    inserted = rows_of(items)
    assert inserted[0].rows == [{'id': 1}]
    assert inserted[1].rows == [{'id': 2, 'note': 'after the DDL'}]  # the new table map


def test_compressed_binlog_events(mariadb_db: MariaDBDatabase, position: BinlogPosition) -> None:
    admin = mariadb_db.server.connect()
    execute(admin, 'SET GLOBAL log_bin_compress = ON', 'SET GLOBAL log_bin_compress_min_len = 10')
    try:
        conn = mariadb_db.connect()
        execute(conn, 'CREATE TABLE z (id INT PRIMARY KEY, v TEXT)',
                "INSERT INTO z VALUES (1, REPEAT('x', 500)), (2, 'y')",
                "UPDATE z SET v = 'short' WHERE id = 1")
    finally:
        execute(admin, 'SET GLOBAL log_bin_compress = OFF')
    stream = open_stream(mariadb_db.server.connect(), mariadb_db.name, position)
    try:
        items = read_until(stream, lambda items: len(commits(items)) == 3)
    finally:
        stream.close()
    inserted, updated = rows_of(items)
    assert inserted.rows == [{'id': 1, 'v': 'x' * 500}, {'id': 2, 'v': 'y'}]
    assert updated.rows == [({'id': 1, 'v': 'x' * 500}, {'id': 1, 'v': 'short'})]


# ---------------------------------------------------------------------------------------------
# Resuming

def _insert_transactions(conn: pymysql.connections.Connection, ids: range) -> None:
    for i in ids:
        execute(conn, f'INSERT INTO t VALUES ({i})')


@pytest.mark.parametrize('by', ['gtid', 'file_pos'])
def test_resume_delivers_the_next_transaction_exactly_once(
        mariadb_db: MariaDBDatabase, position: BinlogPosition, by: str) -> None:
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE t (id INT PRIMARY KEY)')
    _insert_transactions(conn, range(1, 6))
    stream = open_stream(mariadb_db.server.connect(), mariadb_db.name, position)
    try:
        # stop after the DDL and the first 3 inserts were committed
        items = read_until(stream, lambda items: len(commits(items)) == 4)
    finally:
        stream.close()
    checkpoint = commits(items)[-1].checkpoint
    assert checkpoint is not None and checkpoint.gtid and checkpoint.file
    assert [r['id'] for e in rows_of(items) for r in e.rows] == [1, 2, 3]
    _insert_transactions(conn, range(6, 8))
    start = BinlogPosition(gtid=checkpoint.gtid) if by == 'gtid' \
        else BinlogPosition(checkpoint.file, checkpoint.pos)
    stream = open_stream(mariadb_db.server.connect(), mariadb_db.name, start)
    try:
        items = read_until(stream, lambda items: len(commits(items)) == 4)
        # Listen 2 s more: a duplicate would arrive by then. Bounded by time, not by a silent
        # read, since heartbeats keep arriving about once a second.
        deadline = time.monotonic() + 2.0
        while (remaining := deadline - time.monotonic()) > 0:
            extra = stream.read(remaining)
            if extra is not None:
                items.append(extra)
    finally:
        stream.close()
    assert [r['id'] for e in rows_of(items) for r in e.rows] == [4, 5, 6, 7]
    resumed = commits(items)
    assert resumed[-1].checkpoint.gtid.split('-')[2] == \
        str(int(checkpoint.gtid.split('-')[2]) + 4)  # type: ignore[union-attr]


def test_a_gtid_start_over_a_large_backlog_reads_it_once_and_stops(
        mariadb_db: MariaDBDatabase) -> None:
    # mysql-replication's is_mariadb + auto_position + non-blocking replays such a backlog
    # forever (FACTS.md): a malformed dump request, then a silent reconnect from the start.
    conn = mariadb_db.connect()
    execute(conn, 'CREATE TABLE t (id INT PRIMARY KEY, pad TEXT)')
    with conn.cursor() as cur:
        cur.execute('SELECT @@gtid_binlog_pos')
        start_gtid = cur.fetchone()[0]
        for i in range(1, 1001):
            cur.execute('INSERT INTO t VALUES (%s, %s)', (i, 'x' * (i % 7) * 100))
        cur.execute("INSERT INTO t SELECT seq, REPEAT('y', 2000) FROM seq_1001_to_6000")
    stream = BinlogStream(mariadb_db.server.connect(), server_id=next(_server_ids),
                          include=lambda db, _: db == mariadb_db.name)
    stream.start(BinlogPosition(gtid=start_gtid), until_end=True)
    ids: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while not stream.at_end:
            assert time.monotonic() < deadline, f'still reading after {len(ids)} rows'
            item = stream.read(1.0)
            if item is not None and isinstance(item.event, b.Rows):
                ids.extend(row['id'] for row in item.event.rows)
    finally:
        stream.close()
    assert ids == list(range(1, 6001))


def _purge_all_but_the_current_binlog(conn: pymysql.connections.Connection) -> None:
    # MariaDB keeps a binlog until InnoDB checkpointed its transactions (binlog checkpoint),
    # silently skipping it in PURGE until then.
    deadline = time.monotonic() + 30
    with conn.cursor() as cur:
        while True:
            cur.execute('SHOW MASTER STATUS')
            current = cur.fetchone()[0]
            cur.execute(f"PURGE BINARY LOGS TO '{current}'")
            cur.execute('SHOW BINARY LOGS')
            if [row[0] for row in cur.fetchall()] == [current]:
                return
            assert time.monotonic() < deadline, 'the server kept its old binlogs'
            time.sleep(0.2)


def test_purged_binlog_says_to_resnapshot() -> None:
    with MariaDBServer.start() as server, server.connect() as conn:
        stream = BinlogStream(conn, server_id=next(_server_ids))
        old = stream.current_position()
        execute(conn, 'CREATE DATABASE p', 'CREATE TABLE p.t (id INT PRIMARY KEY)',
                'INSERT INTO p.t VALUES (1)', 'FLUSH BINARY LOGS')
        _purge_all_but_the_current_binlog(conn)
        for start in (old, BinlogPosition(gtid=old.gtid or '0-1-1')):
            stream = open_stream(server.connect(), start=start)
            with pytest.raises(BinlogPurgedError, match='re-snapshot'):
                read_until(stream, lambda _: False, timeout=10)
            stream.close()


# ---------------------------------------------------------------------------------------------
# Server checks and liveness

def test_idle_reads_return_within_the_timeout_and_heartbeats_arrive(
        mariadb: MariaDBServer) -> None:
    stream = open_stream(mariadb.connect(), 'no_such_db', heartbeat=0.3)
    try:
        started = time.monotonic()
        seen: list[Any] = []
        while time.monotonic() - started < 2.0:
            before = time.monotonic()
            item = stream.read(0.25)
            assert time.monotonic() - before < 1.0
            if item is not None:
                seen.append(item.event)
        assert any(isinstance(e, b.Heartbeat) for e in seen)
    finally:
        stream.close()


def test_a_server_without_full_row_metadata_is_refused(mariadb: MariaDBServer) -> None:
    with mariadb.connect() as admin:
        execute(admin, 'SET GLOBAL binlog_row_metadata = MINIMAL')
        try:
            with mariadb.connect() as conn, \
                    pytest.raises(BinlogConfigError, match='binlog_row_metadata=FULL'):
                BinlogStream(conn, server_id=next(_server_ids))
        finally:
            execute(admin, 'SET GLOBAL binlog_row_metadata = FULL')


def test_a_user_without_replication_privileges_is_refused(mariadb: MariaDBServer) -> None:
    with mariadb.connect() as admin:
        for host in ('%', 'localhost'):
            execute(admin, f"CREATE USER IF NOT EXISTS 'nocdc'@'{host}' IDENTIFIED BY 'pw'",
                    f"GRANT SELECT ON *.* TO 'nocdc'@'{host}'")
        try:
            with mariadb.connect(user='nocdc', password='pw') as conn, \
                    pytest.raises(BinlogConfigError, match='GRANT REPLICATION SLAVE'):
                BinlogStream(conn, server_id=next(_server_ids))
        finally:
            for host in ('%', 'localhost'):
                execute(admin, f"DROP USER 'nocdc'@'{host}'")


def test_the_source_servers_own_id_is_refused(mariadb: MariaDBServer) -> None:
    with mariadb.connect() as conn, pytest.raises(ValueError, match="server's own id"):
        BinlogStream(conn, server_id=1)


def test_a_missing_gtid_is_an_error_not_a_silent_skip(mariadb: MariaDBServer) -> None:
    stream = open_stream(mariadb.connect(), start=BinlogPosition(gtid='0-1-999999999'))
    try:
        with pytest.raises(BinlogStreamError, match='999999999'):
            read_until(stream, lambda _: False, timeout=10)
    finally:
        stream.close()
