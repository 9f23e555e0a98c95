"""Binlog decoding speed: changebeam's decoder vs python-mysql-replication vs mariadb-binlog.

Two workloads, each written into a binlog file of its own on a throwaway MariaDB:

* bulk: ``--bulk-rows`` rows inserted in transactions of 10,000 rows (1,000-row INSERTs);
* oltp: ``--oltp-txns`` single-row INSERT transactions (autocommit).

Each file is then read over the replication protocol, to the end of the file, by

* changebeam: ``BinlogStream`` (socket + decoding every value to typed dicts);
* changebeam decode-only: ``BinlogDecoder`` over the file's bytes (no network);
* mysql-replication 1.0.17 (``pip install mysql-replication``; not a changebeam dependency),
  accessing ``event.rows`` so every value is decoded;
* ``mariadb-binlog --read-from-remote-server -v``: the C client decoding rows to pseudo-SQL,
  the physical limit,

and rows/s are printed with ratios.  Usage::

    .venv/bin/python -m bench.mysql_cdc                      # starts its own server
    .venv/bin/python -m bench.mysql_cdc --bulk-rows 50000 --oltp-txns 5000
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from transforms.sources.mysql.binlog import BinlogDecoder, Rotate, Rows, binlog_file_events
from transforms.sources.mysql.stream import BinlogPosition, BinlogStream

_TABLE = """
CREATE TABLE bench (
  id BIGINT NOT NULL PRIMARY KEY,
  k INT NOT NULL,
  c CHAR(120) NOT NULL,
  pad VARCHAR(60) NOT NULL,
  amount DECIMAL(12,2),
  created DATETIME(6),
  note TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


def _row(i: int, rnd: random.Random) -> tuple[Any, ...]:
    return (i, rnd.randint(0, 1 << 30), f'{rnd.getrandbits(128):040x}' * 2,
            f'pad-{i}-{rnd.random()}', Decimal(rnd.randint(0, 10 ** 9)) / 100,
            dt.datetime(2024, 1, 1) + dt.timedelta(seconds=i, microseconds=i % 999999),
            None if i % 3 else f'note {i}')


_INSERT = 'INSERT INTO bench VALUES (%s, %s, %s, %s, %s, %s, %s)'


def _new_file(conn: Any) -> str:
    with conn.cursor() as cur:
        cur.execute('FLUSH BINARY LOGS')
        cur.execute('SHOW MASTER STATUS')
        return str(cur.fetchone()[0])


def write_workloads(conn: Any, bulk_rows: int, oltp_txns: int) -> dict[str, tuple[str, int]]:
    """Writes both workloads; returns workload -> (binlog file, rows)."""
    rnd = random.Random(7)
    with conn.cursor() as cur:
        cur.execute('DROP TABLE IF EXISTS bench')
        cur.execute(_TABLE)
    files = {}
    files['bulk'] = (_new_file(conn), bulk_rows)
    conn.autocommit(False)
    with conn.cursor() as cur:
        for txn_start in range(0, bulk_rows, 10_000):
            for stmt_start in range(txn_start, min(txn_start + 10_000, bulk_rows), 1000):
                cur.executemany(_INSERT, [_row(i, rnd) for i in
                                          range(stmt_start, min(stmt_start + 1000, bulk_rows))])
            conn.commit()
    conn.autocommit(True)
    files['oltp'] = (_new_file(conn), oltp_txns)
    with conn.cursor() as cur:
        for i in range(bulk_rows, bulk_rows + oltp_txns):
            cur.execute(_INSERT, _row(i, rnd))
    _new_file(conn)
    return files


def read_changebeam(connect: Callable[[], Any], file: str) -> int:
    stream = BinlogStream(connect(), server_id=9001)
    stream.start(BinlogPosition(file, 4), until_end=True)
    rows = 0
    try:
        while True:
            item = stream.read(5.0)
            if item is None:
                break
            event = item.event
            if type(event) is Rows:
                rows += len(event.rows)
            elif type(event) is Rotate and not event.artificial:
                break
    finally:
        stream.close()
    return rows


def read_changebeam_file(datadir: str, file: str) -> int:
    with open(os.path.join(datadir, file), 'rb') as f:
        data = f.read()
    decoder = BinlogDecoder()
    rows = 0
    for start, end in binlog_file_events(data):
        event = decoder.decode(data, start, end)
        if type(event) is Rows:
            rows += len(event.rows)
    return rows


def read_mysql_replication(settings: dict[str, Any], file: str) -> int:
    from pymysqlreplication import BinLogStreamReader
    from pymysqlreplication.event import RotateEvent
    from pymysqlreplication.row_event import WriteRowsEvent

    reader = BinLogStreamReader(connection_settings=settings, server_id=9002, log_file=file,
                                log_pos=4, resume_stream=True, blocking=False,
                                # is_mariadb=True ignores log_file (dumps from the first
                                # binlog) in 1.0.17; the plain MySQL dump works on MariaDB.
                                is_mariadb=False, only_events=[WriteRowsEvent, RotateEvent])
    rows = 0
    try:
        for event in reader:
            if isinstance(event, WriteRowsEvent):
                rows += len(event.rows)
            elif isinstance(event, RotateEvent) and event.next_binlog != file \
                    and event.timestamp:
                break
    finally:
        reader.close()
    return rows


def read_mariadb_binlog(port: int, file: str) -> int:
    tool = shutil.which('mariadb-binlog') or shutil.which('mysqlbinlog')
    if tool is None:
        raise SystemExit('mariadb-binlog not found: apt-get install mariadb-client')
    out = subprocess.run([tool, '--no-defaults', '--read-from-remote-server', '--host=127.0.0.1',
                          f'--port={port}', '--user=root', '-v', file],
                         check=True, capture_output=True).stdout
    return out.count(b'### INSERT INTO')


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    rows = fn()
    return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--bulk-rows', type=int, default=200_000)
    parser.add_argument('--oltp-txns', type=int, default=20_000)
    parser.add_argument('--skip-mysql-replication', action='store_true')
    args = parser.parse_args()
    # A plain SIGTERM would skip the `with` block's exit and leave the server running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    from tests.services.mariadb import MariaDBServer

    print('starting a throwaway MariaDB …', flush=True)
    with MariaDBServer.start() as server:
        db = server.create_database('bench')
        setup = server.connect(db)
        t0 = time.perf_counter()
        files = write_workloads(setup, args.bulk_rows, args.oltp_txns)
        print(f'wrote workloads in {time.perf_counter() - t0:.1f} s', flush=True)
        settings = {'host': '127.0.0.1', 'port': server.port, 'user': 'root', 'passwd': ''}
        readers: dict[str, Callable[[str], int]] = {
            'mariadb-binlog -v (C)': lambda f: read_mariadb_binlog(server.port, f),
            'changebeam stream': lambda f: read_changebeam(server.connect, f),
            'changebeam decode only': lambda f: read_changebeam_file(server.datadir, f),
        }
        if not args.skip_mysql_replication:
            readers['mysql-replication'] = lambda f: read_mysql_replication(settings, f)
        for workload, (file, expected) in files.items():
            print(f'\n{workload}: {expected} rows in {file}')
            results = {}
            for name, read in readers.items():
                rows, seconds = timed(lambda read=read, file=file: read(file))
                if rows != expected:
                    raise SystemExit(f'{name} read {rows} rows, expected {expected}')
                results[name] = rows / seconds
                print(f'  {name:26s} {rows / seconds:>10,.0f} rows/s  ({seconds:.2f} s)',
                      flush=True)
            ours = results['changebeam stream']
            for name, rate in results.items():
                if name != 'changebeam stream':
                    print(f'  changebeam stream / {name}: {ours / rate:.2f}x')
        setup.close()


if __name__ == '__main__':
    main()
