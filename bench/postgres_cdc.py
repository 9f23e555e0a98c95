"""PostgreSQL CDC throughput, memory and latency against the limit measured in the same run.

    python -m bench.postgres_cdc                 # defaults: well under 6 minutes on 2 cores
    python -m bench.postgres_cdc --profile       # + a cProfile'd pipeline run on the bulk WAL

What it does (see bench/README.md for what each number means):

1. starts a throwaway PostgreSQL 15 (tests.services.postgres) and stops it at the end;
2. per workload, a fresh database with ``bench(id bigint primary key, a int, b text, c numeric,
   d timestamptz)``, a publication FOR ALL TABLES and one logical slot (pgoutput) per reader,
   all created BEFORE the workload is written, so every reader decodes the same WAL:
   - bulk: INSERT … SELECT generate_series then UPDATE of every row, in large transactions;
   - oltp: pgbench, one single-row INSERT or UPDATE per transaction;
3. reads that WAL with pg_recvlogical (the physical limit: walsender + pgoutput + network),
   with a plain Python loop (ReplicationStream + PgOutputDecoder + ChangeAssembler, then also
   the JSON encoding), and with the changebeam pipeline (``pipelines.cdc`` on DirectRunner, a
   subprocess writing ``jsonl:``), counting every line the sink committed;
4. reports the pipeline's peak RSS for two backlog sizes, and the commit-to-visible latency of a
   steady ~2,000 changes/s stream.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TABLE = 'bench'
PUBLICATION = 'bench_pub'
TABLE_DDL = (f'CREATE TABLE {TABLE} (id bigint PRIMARY KEY, a int, b text, c numeric, '
             'd timestamptz)')
SERVER_SETTINGS = {
    # Room for the whole backlog without checkpoints in the middle of a measurement; no
    # autovacuum writing WAL (and using a core) while the readers run.
    'shared_buffers': '256MB',
    'max_wal_size': '8GB',
    'checkpoint_timeout': '1h',
    'autovacuum': 'off',
    'wal_sender_timeout': '5min',
}
PIPELINE_TIMEOUT_S = 600.0


# ---------------------------------------------------------------------------------------------
# Output


_START = time.monotonic()


def say(text: str) -> None:
    print(f'[{time.monotonic() - _START:6.1f}s] {text}', flush=True)


def loud(text: str) -> None:
    bar = '!' * 78
    print(f'\n{bar}\n!!! ERROR: {text}\n{bar}\n', flush=True)


def rate(changes: int, seconds: float | None) -> float | None:
    if not seconds or seconds <= 0:
        return None
    return changes / seconds


def fmt_rate(value: float | None) -> str:
    return '-' if value is None else f'{value:,.0f}'


# ---------------------------------------------------------------------------------------------
# Server, databases, slots, workloads


def pg_bin(name: str) -> str:
    from tests.services.postgres import _bindir

    return str(_bindir() / name)


@dataclasses.dataclass
class Workload:
    name: str
    database: str
    dsn: str
    changes: int = 0
    end_lsn: str = ''
    write_secs: float = 0.0
    slots: list[str] = dataclasses.field(default_factory=list)
    # A slot created part-way through, that sees only the last ``small_changes`` changes.
    small_slot: str | None = None
    small_changes: int = 0


def prepare_database(server: Any, prefix: str, slots: Sequence[str],
                     preload: Callable[[Any], None] | None = None) -> Workload:
    database = server.create_database(prefix)
    with server.connect(database) as conn:
        conn.execute(TABLE_DDL)
        if preload is not None:
            preload(conn)  # before the slots: not part of the WAL the readers decode
        conn.execute(f'CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES')
        for slot in slots:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    return Workload(prefix, database, server.dsn(database), slots=list(slots))


def end_position(conn: Any) -> str:
    # The insert position, not the flush position: with asynchronous commit the last commits
    # may not be flushed yet when we ask (the walsender sends them once they are).
    return conn.execute('SELECT pg_current_wal_insert_lsn()::text').fetchone()[0]


def write_bulk(server: Any, work: Workload, rows: int, tx_rows: int, small: int) -> None:
    """``rows`` inserted then updated, ``tx_rows`` rows per transaction: 2 x rows changes."""
    transactions: list[tuple[str, tuple[int, int], int]] = []
    for low in range(1, rows + 1, tx_rows):
        high = min(low + tx_rows - 1, rows)
        transactions.append((
            f'INSERT INTO {TABLE} SELECT g, g %% 1000, md5(g::text), g * 1.5, '
            "timestamptz '2024-01-01 00:00:00Z' + g * interval '1 ms' "
            'FROM generate_series(%s::bigint, %s::bigint) g', (low, high), high - low + 1))
    for low in range(1, rows + 1, tx_rows):
        high = min(low + tx_rows - 1, rows)
        transactions.append((
            f"UPDATE {TABLE} SET a = a + 1, d = d + interval '1 s', b = b || 'x' "
            'WHERE id BETWEEN %s::bigint AND %s::bigint', (low, high), high - low + 1))
    # The small-backlog slot starts before the shortest run of final transactions holding at
    # least ``small`` changes.
    small_from = None
    if small:
        tail = 0
        for index in range(len(transactions) - 1, -1, -1):
            tail += transactions[index][2]
            if tail >= small:
                small_from, work.small_changes = index, tail
                break
    started = time.monotonic()
    with server.connect(work.database) as conn:
        for index, (sql, params, changes) in enumerate(transactions):
            if index == small_from:
                work.small_slot = f'{work.name}_small'
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                             (work.small_slot,))
            conn.execute(sql, params)  # autocommit: one statement, one transaction
            work.changes += changes
        work.end_lsn = end_position(conn)
    work.write_secs = time.monotonic() - started


def pgbench(server: Any, database: str, scripts: dict[str, str], args: Sequence[str],
            workdir: Path) -> str:
    command = [pg_bin('pgbench'), '-n', '-M', 'prepared', '-h', server.socket_dir,
               '-p', str(server.port), '-U', server.user]
    for name, text in scripts.items():
        path = workdir / name
        path.write_text(text)
        command += ['-f', f'{path}@1']
    command += [*args, database]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f'pgbench failed ({result.returncode}): {result.stderr[-2000:]}')
    return result.stdout


def write_oltp(server: Any, work: Workload, transactions: int, preloaded: int,
               workdir: Path) -> None:
    clients = 2
    per_client = max(1, transactions // clients)
    scripts = {
        'oltp_insert.sql':
            '\\set a random(1, 1000000)\n'
            f"INSERT INTO {TABLE} VALUES (nextval('bench_ids'), :a, md5(:a::text), :a * 1.5, "
            'clock_timestamp());\n',
        'oltp_update.sql':
            f'\\set id random(1, {preloaded})\n'
            f'UPDATE {TABLE} SET a = a + 1, d = clock_timestamp() WHERE id = :id;\n',
    }
    started = time.monotonic()
    out = pgbench(server, work.database, scripts,
                  ['-c', str(clients), '-j', str(clients), '-t', str(per_client)], workdir)
    work.write_secs = time.monotonic() - started
    match = re.search(r'number of transactions actually processed: (\d+)', out)
    failed = re.search(r'number of failed transactions: (\d+)', out)
    if match is None or (failed is not None and int(failed.group(1))):
        raise RuntimeError(f'pgbench did not run every transaction:\n{out}')
    work.changes = int(match.group(1))
    with server.connect(work.database) as conn:
        work.end_lsn = end_position(conn)


def oltp_preload(rows: int) -> Callable[[Any], None]:
    def preload(conn: Any) -> None:
        conn.execute(f'INSERT INTO {TABLE} SELECT g, g, md5(g::text), g * 1.5, now() '
                     'FROM generate_series(1, %s::bigint) g', (rows,))
        conn.execute(f'CREATE SEQUENCE bench_ids START {rows + 1}')
    return preload


# ---------------------------------------------------------------------------------------------
# Readers


def read_pg_recvlogical(work: Workload, slot: str) -> float:
    """Seconds pg_recvlogical needs to stream the slot to ``end_lsn`` into /dev/null."""
    command = [pg_bin('pg_recvlogical'), '-d', work.dsn, '--slot', slot, '--start',
               '-o', 'proto_version=1', '-o', f'publication_names={PUBLICATION}',
               '--endpos', work.end_lsn, '-f', '/dev/null', '--no-loop']
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            timeout=PIPELINE_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f'pg_recvlogical failed ({result.returncode}): {result.stderr}')
    return seconds


def read_python(work: Workload, slot: str, mode: str) -> tuple[float, int]:
    """A plain loop without Beam over the slot; returns (seconds, changes).

    ``receive``: frames read through ``ReplicationStream.read_batch`` (the C loop of
    ``_pqcopy``, as the pipeline reads) and dropped (changes counted by the message type
    byte), the floor of the pipeline's reader; ``decode``: also decoded
    and assembled into ChangeEvents the way the pipeline does (fast path first);
    ``json``: also the Debezium JSON line of each event (``debezium_json_bytes``, as the
    jsonl sink makes it).
    """
    import psycopg

    from transforms.envelope import debezium_json_bytes
    from transforms.sources.postgres import catalog, pgtypes
    from transforms.sources.postgres.changes import ChangeAssembler
    from transforms.sources.postgres.pgoutput import (
        Begin,
        Commit,
        Delete,
        Insert,
        PgOutputDecoder,
        Relation,
        Truncate,
        TypeMessage,
        Update,
        new_begin,
        new_commit,
    )
    from transforms.sources.postgres.replication import (
        FRAME_BEGIN,
        FRAME_COMMIT,
        ReplicationStream,
    )

    changes_types = (Insert, Update, Delete, Truncate)
    control = psycopg.connect(work.dsn, autocommit=True)

    def lookup_types(oids: Sequence[int]) -> dict[int, Any]:
        rows = control.execute(pgtypes.CATALOG_QUERY, (list(oids),)).fetchall()
        return pgtypes.type_infos(rows)

    assembler = ChangeAssembler(work.database, work.database,
                                lambda oid: catalog.primary_key(control, oid), lookup_types)
    decoder = PgOutputDecoder()
    stream = ReplicationStream.connect(work.dsn)
    count = 0
    encoded_bytes = 0
    started = time.perf_counter()
    try:
        stream.start(slot, 0, PUBLICATION)
        done = False
        while not done:
            frames = stream.read_batch(10.0)
            if not frames:
                break  # nothing for 10 s: the caller reports the shortfall
            for start, payload in frames:
                if start < 0:  # a Begin or Commit the C loop decoded
                    message: Any = new_begin(*payload) if start == FRAME_BEGIN \
                        else new_commit(*payload)
                    if mode == 'receive':
                        if start == FRAME_COMMIT and count >= work.changes:
                            done = True
                            break
                        continue
                elif mode == 'receive':
                    if payload[0] in b'IUD':
                        count += 1
                    elif payload[0] == 0x43 and count >= work.changes:  # 'C'ommit
                        done = True
                        break
                    continue
                else:
                    events = assembler.change_from_frame(payload, start) \
                        if payload[0] in b'IU' else None
                    if events is not None:
                        count += len(events)
                        if mode == 'json':
                            for event in events:
                                encoded_bytes += len(debezium_json_bytes(event))
                        continue
                    message = decoder.decode(payload)
                kind = type(message)
                if kind in changes_types:
                    events = assembler.change(message, start)
                    count += len(events)
                    if mode == 'json':
                        for event in events:
                            encoded_bytes += len(debezium_json_bytes(event))
                elif kind is Begin:
                    assembler.begin(message)
                elif kind is Commit:
                    assembler.commit(message)
                    if count >= work.changes:
                        done = True
                        break
                elif kind is Relation:
                    assembler.relation(message)
                elif kind is TypeMessage:
                    assembler.type(message)
        seconds = time.perf_counter() - started
    finally:
        stream.close()
        control.close()
    return seconds, count


# ---------------------------------------------------------------------------------------------
# The changebeam pipeline, in a subprocess


@dataclasses.dataclass
class SinkScan:
    lines: int = 0
    files: int = 0
    dead_letters: int = 0
    first_event: float | None = None  # ts_ms of the earliest line: when the source built it
    last_visible: float | None = None  # ctime of the newest file: its rename into place
    tables: dict[str, int] = dataclasses.field(default_factory=dict)


def count_lines(path: Path) -> tuple[int, bytes]:
    """(number of row-change lines, first line) of a file; schema-change records (op m, which
    EvolveSchema adds before a table's first row) are not changes of the workload."""
    lines, first = 0, b''
    with open(path, 'rb') as handle:
        for line in handle:
            if not line.endswith(b'\n') or b'"op":"m"' in line:
                continue
            first = first or line
            lines += 1
    return lines, first


def scan_sink(directory: Path, dead_directory: Path) -> SinkScan:
    scan = SinkScan()
    for path in sorted(directory.glob('*/part-*.jsonl')):
        stat = path.stat()
        lines, first = count_lines(path)
        scan.files += 1
        scan.lines += lines
        scan.tables[path.parent.name] = scan.tables.get(path.parent.name, 0) + lines
        if first:
            processed = json.loads(first)['ts_ms'] / 1000
            scan.first_event = processed if scan.first_event is None \
                else min(scan.first_event, processed)
        visible = max(stat.st_ctime, stat.st_mtime)
        scan.last_visible = visible if scan.last_visible is None \
            else max(scan.last_visible, visible)
    if dead_directory.exists():
        for path in dead_directory.rglob('*'):
            if path.is_file() and not path.name.startswith('.'):
                scan.dead_letters += count_lines(path)[0]
    return scan


@dataclasses.dataclass
class PipelineRun:
    label: str
    expected: int
    wall_secs: float = 0.0
    max_rss_kib: int = 0
    cpu_secs: float = 0.0  # user + system of the whole process, start-up included
    exit_code: int = 0
    started: float = 0.0  # wall clock at launch
    streaming_at: float | None = None  # when its walsender took the slot (START_REPLICATION)
    scan: SinkScan = dataclasses.field(default_factory=SinkScan)
    log_path: Path | None = None

    @property
    def streaming_secs(self) -> float | None:
        """START_REPLICATION → last sink file renamed into place."""
        if self.streaming_at is None or self.scan.last_visible is None:
            return None
        return self.scan.last_visible - self.streaming_at

    @property
    def event_secs(self) -> float | None:
        """First event built by the source → last sink file renamed into place."""
        if self.scan.first_event is None or self.scan.last_visible is None:
            return None
        return self.scan.last_visible - self.scan.first_event

    @property
    def ok(self) -> bool:
        return (self.exit_code == 0 and self.scan.lines == self.expected
                and self.scan.dead_letters == 0)

    def check(self) -> None:
        if self.exit_code != 0:
            loud(f'{self.label}: the pipeline exited with status {self.exit_code} '
                 f'(log: {self.log_path})')
        if self.scan.lines != self.expected:
            loud(f'{self.label}: the sink holds {self.scan.lines:,} events but '
                 f'{self.expected:,} changes were written — a benchmark that loses (or '
                 f'duplicates) data is wrong; the figures of this run mean nothing '
                 f'(per table: {self.scan.tables}; log: {self.log_path})')
        if self.scan.dead_letters:
            loud(f'{self.label}: {self.scan.dead_letters:,} dead letters (log: {self.log_path})')


def pipeline_command(work: Workload, slot: str, sink: Path, dead: Path, idle_secs: float,
                     profile: Path | None = None) -> list[str]:
    command = [sys.executable]
    if profile is not None:
        command += ['-m', 'cProfile', '-o', str(profile)]
    return [
        *command, '-m', 'pipelines.cdc', '--runner', 'DirectRunner',
        '--source', work.dsn, '--snapshot', 'never', '--slot_name', slot,
        '--publication', PUBLICATION, '--sink', f'jsonl:{sink}', '--dead_letter', f'jsonl:{dead}',
        '--max_idle_secs', str(idle_secs), '--progress', 'off']


def launch(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, 'PYTHONPATH': str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    with open(log_path, 'wb') as log:
        return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def wait_rusage(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, int, float]:
    """(exit code, max RSS in KiB, CPU seconds) of this child alone (wait4, not
    RUSAGE_CHILDREN)."""
    timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
    timer.start()
    try:
        _pid, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def watch_slot(dsn: str, slot: str, process: subprocess.Popen[bytes], run: PipelineRun,
               interval: float = 0.02) -> threading.Thread:
    """Records when the slot becomes active, i.e. when the pipeline sent START_REPLICATION:
    Beam's start-up before that is not part of the streaming time."""
    import psycopg

    def watch() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while process.poll() is None:
                row = conn.execute('SELECT active FROM pg_replication_slots '
                                   'WHERE slot_name = %s', (slot,)).fetchone()
                if row and row[0]:
                    run.streaming_at = time.time()
                    return
                time.sleep(interval)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def run_pipeline(label: str, work: Workload, slot: str, expected: int, workdir: Path,
                 idle_secs: float = 2.0, profile: Path | None = None) -> PipelineRun:
    sink, dead = workdir / f'sink-{slot}', workdir / f'dead-{slot}'
    run = PipelineRun(label, expected, log_path=workdir / f'pipeline-{slot}.log')
    assert run.log_path is not None
    run.started = time.time()
    process = launch(pipeline_command(work, slot, sink, dead, idle_secs, profile), run.log_path)
    watcher = watch_slot(work.dsn, slot, process, run)
    run.exit_code, run.max_rss_kib, run.cpu_secs = wait_rusage(process, PIPELINE_TIMEOUT_S)
    run.wall_secs = time.time() - run.started
    watcher.join()
    run.scan = scan_sink(sink, dead)
    run.check()
    shutil.rmtree(sink, ignore_errors=True)
    return run


# ---------------------------------------------------------------------------------------------
# Latency


@dataclasses.dataclass
class Latency:
    rows: int = 0
    seen: int = 0
    visible_ms: list[float] = dataclasses.field(default_factory=list)  # ctime - commit
    polled_ms: list[float] = dataclasses.field(default_factory=list)  # first poll - commit
    run: PipelineRun | None = None


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def measure_latency(server: Any, workdir: Path, seconds: float, per_second: int,
                    poll_secs: float = 0.01) -> Latency:
    slot = 'latency_beam'
    work = prepare_database(server, 'latency', [slot])
    sink, dead = workdir / 'sink-latency', workdir / 'dead-latency'
    log_path = workdir / 'pipeline-latency.log'
    result = Latency()
    result.run = run = PipelineRun('latency', 0, log_path=log_path)
    run.started = time.time()
    process = launch(pipeline_command(work, slot, sink, dead, idle_secs=4.0), log_path)
    deadline = time.monotonic() + 120
    with server.connect(work.database) as conn:
        while not conn.execute('SELECT active FROM pg_replication_slots WHERE slot_name = %s',
                               (slot,)).fetchone()[0]:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'the latency pipeline did not start; see {log_path}')
            time.sleep(0.05)
    say(f'latency: pipeline streaming after {time.time() - run.started:.1f} s; '
        f'pgbench -R {per_second} for {seconds:.0f} s')

    stop = threading.Event()

    def poll() -> None:
        seen: set[str] = set()
        while True:
            finished = stop.is_set()
            for path in sorted(sink.glob('*/part-*.jsonl')):
                if path.name in seen:
                    continue
                now = time.time()
                seen.add(path.name)
                visible = path.stat().st_ctime
                with open(path, 'rb') as handle:
                    for line in handle:
                        committed = json.loads(line)['source']['ts_ms'] / 1000
                        result.visible_ms.append((visible - committed) * 1000)
                        result.polled_ms.append((now - committed) * 1000)
            if finished:
                return
            time.sleep(poll_secs)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    # A row carries its own clock_timestamp(); the latency uses the commit time the event
    # carries (source.ts_ms), which is when it became visible to readers of the database.
    script = {'latency.sql': f"INSERT INTO {TABLE} VALUES (nextval('bench_ids'), 1, 'x', 1, "
                             'clock_timestamp());\n'}
    with server.connect(work.database) as conn:
        conn.execute('CREATE SEQUENCE bench_ids')
    pgbench(server, work.database, script,
            ['-c', '2', '-j', '2', '-R', str(per_second), '-T', str(int(seconds))], workdir)
    with server.connect(work.database) as conn:
        result.rows = conn.execute(f'SELECT count(*) FROM {TABLE}').fetchone()[0]
    run.exit_code, run.max_rss_kib, run.cpu_secs = wait_rusage(process, PIPELINE_TIMEOUT_S)
    run.wall_secs = time.time() - run.started
    stop.set()
    poller.join()
    result.seen = len(result.visible_ms)
    run.expected = result.rows
    run.scan = scan_sink(sink, dead)
    run.check()
    server.drop_database(work.database)
    return result


# ---------------------------------------------------------------------------------------------
# Profile


def print_profile(path: Path, top: int = 15) -> None:
    import io
    import pstats

    for order in ('cumulative', 'tottime'):
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(top)
        text = out.getvalue()
        body = text[text.find('   ncalls'):] if '   ncalls' in text else text
        print(f'\n--- top {top} by {order} ---')
        print(body.rstrip())


# ---------------------------------------------------------------------------------------------
# Main


@dataclasses.dataclass
class Row:
    workload: str
    changes: int
    limit_secs: list[float]
    receive: tuple[float, int]
    decode: tuple[float, int]
    encode: tuple[float, int] | None
    pipeline: PipelineRun

    @property
    def limit_rate(self) -> float | None:
        return rate(self.changes, min(self.limit_secs))


def read_all(work: Workload, args: argparse.Namespace, workdir: Path) -> Row:
    recv1, decode_slot, encode_slot, beam_slot, recv2, receive_slot = work.slots[:6]
    limits = [read_pg_recvlogical(work, recv1)]
    say(f'{work.name}: pg_recvlogical {limits[0]:.2f} s '
        f'({fmt_rate(rate(work.changes, limits[0]))}/s)')
    receive = read_python(work, receive_slot, 'receive')
    say(f'{work.name}: receive only {receive[0]:.2f} s '
        f'({fmt_rate(rate(receive[1], receive[0]))}/s)')
    if receive[1] != work.changes:
        loud(f'{work.name}: receive loop saw {receive[1]:,} changes, expected {work.changes:,}')
    decode = read_python(work, decode_slot, 'decode')
    say(f'{work.name}: receive+decode {decode[0]:.2f} s ({fmt_rate(rate(decode[1], decode[0]))}/s)')
    if decode[1] != work.changes:
        loud(f'{work.name}: decode-only loop saw {decode[1]:,} changes, expected {work.changes:,}')
    encode = None
    if not args.skip_encode:
        encode = read_python(work, encode_slot, 'json')
        say(f'{work.name}: receive+decode+JSON {encode[0]:.2f} s '
            f'({fmt_rate(rate(encode[1], encode[0]))}/s)')
    run = run_pipeline(work.name, work, beam_slot, work.changes, workdir)
    say(f'{work.name}: changebeam {run.scan.lines:,} events, streaming '
        f'{run.streaming_secs or math.nan:.2f} s (process {run.wall_secs:.1f} s, '
        f'max RSS {run.max_rss_kib / 1024:,.0f} MiB)')
    limits.append(read_pg_recvlogical(work, recv2))
    say(f'{work.name}: pg_recvlogical again {limits[1]:.2f} s')
    return Row(work.name, work.changes, limits, receive, decode, encode, run)


def print_table(rows: Sequence[Row]) -> None:
    header = (f'{"workload":<9}{"changes":>11}{"pg_recvlogical/s":>18}{"receive-only/s":>16}'
              f'{"decode-only/s":>15}'
              f'{"+JSON/s":>11}{"changebeam/s":>14}{"ratio":>8}{"target":>8}  ok')
    print(header)
    print('-' * len(header))
    for row in rows:
        limit = row.limit_rate
        receive = rate(row.receive[1], row.receive[0])
        decode = rate(row.decode[1], row.decode[0])
        encode = rate(row.encode[1], row.encode[0]) if row.encode else None
        beam = rate(row.pipeline.scan.lines, row.pipeline.streaming_secs)
        ratio = beam / limit if beam and limit else None
        target = 0.5 if row.workload == 'bulk' else 0.9
        verdict = ('DATA LOSS' if not row.pipeline.ok
                   else 'yes' if ratio is not None and ratio >= target else 'NO')
        print(f'{row.workload:<9}{row.changes:>11,}{fmt_rate(limit):>18}{fmt_rate(receive):>16}'
              f'{fmt_rate(decode):>15}'
              f'{fmt_rate(encode):>11}{fmt_rate(beam):>14}'
              f'{"-" if ratio is None else f"{ratio:.2f}x":>8}{f"{target}x":>8}  {verdict}')
    print()
    for row in rows:
        run = row.pipeline
        limits = ', '.join(f'{s:.2f}' for s in row.limit_secs)
        startup = (run.streaming_at - run.started) if run.streaming_at else math.nan
        tail = run.started + run.wall_secs - (run.scan.last_visible or math.nan)
        print(f'  {row.workload}: pg_recvlogical {limits} s (best used); changebeam streaming '
              f'{run.streaming_secs or math.nan:.2f} s of a {run.wall_secs:.1f} s process '
              f'using {run.cpu_secs:.1f} s CPU (startup {startup:.1f} s, idle tail {tail:.1f} s '
              f'excluded); '
              f'first-event→last-file {run.event_secs or math.nan:.2f} s; '
              f'{run.scan.lines:,}/{row.changes:,} events in {run.scan.files} files')


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m bench.postgres_cdc',
        description='changebeam PostgreSQL CDC throughput, memory and latency against '
                    'pg_recvlogical, measured in the same run on a throwaway PostgreSQL 15.')
    parser.add_argument('--bulk-rows', type=int, default=500_000,
                        help='rows inserted then updated in the bulk workload (changes: 2 x rows; '
                             'default %(default)s)')
    parser.add_argument('--bulk-tx-rows', type=int, default=100_000,
                        help='rows per bulk transaction (default %(default)s)')
    parser.add_argument('--small-backlog', type=int, default=300_000,
                        help='changes of the smaller backlog for the memory comparison '
                             '(rounded up to whole bulk transactions; 0: skip; '
                             'default %(default)s)')
    parser.add_argument('--oltp-tx', type=int, default=100_000,
                        help='single-change transactions of the OLTP workload '
                             '(default %(default)s)')
    parser.add_argument('--oltp-preload', type=int, default=10_000,
                        help='rows loaded before the OLTP slots, for its UPDATEs '
                             '(default %(default)s)')
    parser.add_argument('--latency-secs', type=float, default=20.0,
                        help='duration of the steady latency stream; 0: skip '
                             '(default %(default)s)')
    parser.add_argument('--latency-rate', type=int, default=2000,
                        help='changes/s of the latency stream (default %(default)s)')
    parser.add_argument('--skip-encode', action='store_true',
                        help='skip the receive+decode+JSON loop (the +JSON/s column)')
    parser.add_argument('--profile', nargs='?', const='', default=None, metavar='FILE',
                        help='also run the pipeline under cProfile on the bulk WAL and print '
                             'the top 15 functions (FILE keeps the .prof; adds ~1 min)')
    parser.add_argument('--keep', action='store_true',
                        help='keep the work directory (pipeline logs) instead of deleting it')
    args = parser.parse_args(argv)
    if args.bulk_rows <= 0 or args.bulk_tx_rows <= 0 or args.oltp_tx <= 0:
        parser.error('sizes must be positive')
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.services.postgres import PostgresServer

    workdir = Path(tempfile.mkdtemp(prefix='changebeam-bench-'))
    say(f'work dir {workdir}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores')
    server = PostgresServer.start(extra_settings=SERVER_SETTINGS)
    rows: list[Row] = []
    failed = False
    small_run: PipelineRun | None = None
    profile_path: Path | None = None
    latency: Latency | None = None
    try:
        say(f'PostgreSQL 15 on port {server.port}')

        # -- bulk -------------------------------------------------------------------------------
        slots = ['bulk_recv1', 'bulk_decode', 'bulk_encode', 'bulk_beam', 'bulk_recv2',
                 'bulk_receive']
        if args.profile is not None:
            slots.append('bulk_profile')
        bulk = prepare_database(server, 'bulk', slots)
        write_bulk(server, bulk, args.bulk_rows, args.bulk_tx_rows, args.small_backlog)
        say(f'bulk: {bulk.changes:,} changes written in {bulk.write_secs:.1f} s '
            f'(end {bulk.end_lsn})')
        rows.append(read_all(bulk, args, workdir))
        if bulk.small_slot:
            small_run = run_pipeline('bulk-small', bulk, bulk.small_slot, bulk.small_changes,
                                     workdir)
            say(f'bulk-small: {small_run.scan.lines:,} events, max RSS '
                f'{small_run.max_rss_kib / 1024:,.0f} MiB')
        if args.profile is not None:
            profile_path = Path(args.profile) if args.profile else workdir / 'bulk.prof'
            run = run_pipeline('bulk-profile', bulk, 'bulk_profile', bulk.changes, workdir,
                               profile=profile_path)
            say(f'bulk-profile: {run.scan.lines:,} events under cProfile, streaming '
                f'{run.streaming_secs or math.nan:.2f} s '
                f'({fmt_rate(rate(run.scan.lines, run.streaming_secs))}/s under the profiler)')
        server.drop_database(bulk.database)

        # -- OLTP -------------------------------------------------------------------------------
        oltp = prepare_database(
            server, 'oltp', ['oltp_recv1', 'oltp_decode', 'oltp_encode', 'oltp_beam',
                             'oltp_recv2', 'oltp_receive'],
            preload=oltp_preload(args.oltp_preload))
        write_oltp(server, oltp, args.oltp_tx, args.oltp_preload, workdir)
        say(f'oltp: {oltp.changes:,} single-change transactions written in '
            f'{oltp.write_secs:.1f} s (end {oltp.end_lsn})')
        rows.append(read_all(oltp, args, workdir))
        server.drop_database(oltp.database)

        # -- latency ----------------------------------------------------------------------------
        if args.latency_secs > 0:
            latency = measure_latency(server, workdir, args.latency_secs, args.latency_rate)
    finally:
        server.stop()

    print(f'\n=== changebeam PostgreSQL CDC vs pg_recvlogical (same WAL, same run; '
          f'{os.cpu_count()} cores, load average now {os.getloadavg()[0]:.2f}) ===\n')
    print_table(rows)
    failed = any(not row.pipeline.ok for row in rows)
    print('\n  changebeam/s = events in the sink / (last sink file renamed into place - the moment '
          'the pipeline\'s walsender\n  took the slot, polled every 20 ms): Beam start-up and the '
          '--max_idle_secs tail are excluded; the sink\'s fsync+rename is included.')

    print('\n=== peak memory of the pipeline process (max RSS, wait4) ===')
    mem_rows = [(r, r.changes) for r in rows if r.workload == 'bulk']
    for row, changes in mem_rows:
        print(f'  backlog {changes:>11,} changes (bulk): '
              f'{row.pipeline.max_rss_kib / 1024:8,.0f} MiB')
    if small_run is not None:
        failed |= not small_run.ok
        print(f'  backlog {small_run.expected:>11,} changes (bulk): '
              f'{small_run.max_rss_kib / 1024:8,.0f} MiB'
              + ('' if small_run.ok else '   <-- events missing, see error above'))
        if mem_rows:
            big = mem_rows[0][0].pipeline.max_rss_kib
            growth = (big - small_run.max_rss_kib) / max(1, small_run.max_rss_kib)
            print(f'  growth from {small_run.expected:,} to {mem_rows[0][1]:,} changes: '
                  f'{growth:+.0%} (flat: within ±15%) → '
                  f'{"flat" if abs(growth) <= 0.15 else "NOT flat"}')
    for row in rows:
        if row.workload != 'bulk':
            print(f'  oltp {row.changes:,} changes: {row.pipeline.max_rss_kib / 1024:,.0f} MiB')

    if latency is not None:
        latency_run = latency.run
        assert latency_run is not None
        failed |= not latency_run.ok
        p50, p99 = percentile(latency.visible_ms, 0.5), percentile(latency.visible_ms, 0.99)
        print(f'\n=== latency: commit → line visible in the sink, {latency.rows:,} rows at '
              f'~{args.latency_rate:,}/s for {args.latency_secs:.0f} s ===')
        print(f'  p50 {p50:,.0f} ms   p99 {p99:,.0f} ms   max '
              f'{max(latency.visible_ms, default=math.nan):,.0f} ms   (target p99 < 250 ms: '
              f'{"yes" if p99 < 250 else "NO"})')
        print(f'  visible = ctime of the committed part file (its rename); commit = '
              f'source.ts_ms (ms, truncated).\n  cross-check, seen by a 10 ms poll: p50 '
              f'{percentile(latency.polled_ms, 0.5):,.0f} ms, p99 '
              f'{percentile(latency.polled_ms, 0.99):,.0f} ms; {latency.seen:,} of '
              f'{latency.rows:,} rows seen; pipeline max RSS '
              f'{latency_run.max_rss_kib / 1024:,.0f} MiB')

    if profile_path is not None and profile_path.exists():
        print(f'\n=== cProfile of the pipeline process on the bulk WAL ({profile_path}) ===')
        print_profile(profile_path)
    if failed:
        loud('at least one pipeline run lost, duplicated or dead-lettered events: see above')
    if args.keep:
        print(f'\nwork dir kept: {workdir}')
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    say('done')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
