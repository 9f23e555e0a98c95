"""Upsert throughput of the SQL sinks against the physical limit of each database.

    .venv/bin/python -m bench.sinks [--rows 100000] [--batch 5000] [--only postgres|mariadb]

Starts throwaway servers (tests/services), builds ``--rows`` change events of a 7-column table
(bigint key, numeric, timestamptz, text, jsonb/JSON, text[]/JSON, bytea/blob) in memory, then:

* PostgreSQL: ``COPY … FROM STDIN`` of the same rows, pre-rendered as text, into an empty table
  with the same primary key (the limit; the same rows as binary COPY, the format the sink
  stages rows in where the target's types allow, which the server parses faster; and COPY of
  the Python values through psycopg's ``write_row``, the limit for a Python client) vs the
  sink applying the events as inserts into an empty target and as updates of every row
  (``Applier``, no Beam: each batch handed
  to the writer thread with ``submit`` as the sink does, and the updates also one batch at a
  time with ``apply``, which renders and writes in turn), and end to end
  through a Beam pipeline on the default runner (which includes making the events: the
  "Beam alone" line measures that part);
* MariaDB: ``LOAD DATA LOCAL INFILE`` of the same rows vs the sink, likewise.

Prints, per measurement, rows/s of wall-clock time and rows per CPU-second (this process plus
the server's processes, read from /proc), and each figure's ratio to the limit's, measured
again just before it (a VM's speed drifts by ±15 % within minutes).  On a shared machine the
wall-clock figures swing with other load; the CPU figures much less.  Not a test: run it by
hand.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import apache_beam as beam

import transforms.coders  # noqa: F401  (registers the ChangeEvent coder)
from transforms.envelope import ChangeEvent, Column, Kind, Op, SourcePosition, TableSchema
from transforms.sinks.sql import WriteChangesToMySQL, WriteChangesToPostgres, copytext
from transforms.sinks.sql.apply import Applier, Target
from transforms.sinks.sql.mysql import _MySQLTarget
from transforms.sinks.sql.postgres import _PostgresTarget

TABLE = TableSchema('bench', 'items', (
    Column('id', Kind.INT64, 'bigint', nullable=False),
    Column('price', Kind.DECIMAL, 'numeric(12,2)', precision=12, scale=2),
    Column('seen', Kind.TIMESTAMPTZ, 'timestamp with time zone'),
    Column('name', Kind.STRING, 'text'),
    Column('doc', Kind.JSON, 'jsonb'),
    Column('tags', Kind.ARRAY, 'text[]', element=Kind.STRING),
    Column('blob', Kind.BYTES, 'bytea'),
), key=('id',))
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _row(i: int, version: int) -> dict:
    return {
        'id': i,
        'price': Decimal(i % 100_000 + version) / 100,
        'seen': _EPOCH + dt.timedelta(seconds=i, microseconds=version),
        'name': f'item {i} v{version}',
        'doc': f'{{"n": {i}, "v": {version}}}',
        'tags': ['a', f't{i % 7}'],
        'blob': i.to_bytes(8, 'big'),
    }


def events(rows: int, version: int, op: Op, step: int = 1) -> Iterator[ChangeEvent]:
    """Changes of rows 0, ``step``, … below ``rows`` sharing one TableSchema object, as a fused
    source would emit them (a delete's image: the key)."""
    for i in range(0, rows, step):
        lsn = version * 10 * rows + i + 1
        source = SourcePosition('postgresql', 'bench', 'bench', 'bench', 'items', 0,
                                commit_lsn=lsn, lsn=lsn)
        if op is Op.DELETE:
            yield ChangeEvent(op, TABLE, source, before={'id': i})
        else:
            yield ChangeEvent(op, TABLE, source, after=_row(i, version))


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of process ``pid``, its live children and its reaped children, from /proc.

    A PostgreSQL backend that exits within a measurement shows up in the postmaster's
    cutime/cstime once reaped.
    """
    tick = os.sysconf('SC_CLK_TCK')
    total = 0.0
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid:
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        elif int(fields[1]) == pid:  # fields[1] is the parent pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


Rates = tuple[float, float]  # rows/s wall clock, rows per CPU-second


def _timed(label: str, rows: int, server_pid: int, work: Callable[[], object]) -> Rates:
    server_cpu, client_cpu = _tree_cpu_s(server_pid), time.process_time()
    started = time.perf_counter()
    work()
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    server_cpu = _tree_cpu_s(server_pid) - server_cpu
    cpu = client_cpu + server_cpu
    print(f'  {label:<56} {rows / wall:>9,.0f} rows/s {rows / cpu:>9,.0f} rows/CPU-s '
          f'(client {client_cpu / rows * 1e6:.1f} + server {server_cpu / rows * 1e6:.1f} '
          'µs/row)', flush=True)
    return rows / wall, rows / cpu


def _apply_all(target: Target, batches: list[list[ChangeEvent]], *, ahead: bool = True
               ) -> Callable[[], None]:
    """Apply every batch: handed to the writer thread as the sink does (``ahead``), or one
    at a time, each committed before the next is planned."""
    def work() -> None:
        applier = Applier(target)
        applier.open()
        for batch in batches:
            letters = applier.submit(batch) if ahead else applier.apply(batch)
            assert not letters, letters[0][0].error
        letters = applier.drain()
        assert not letters, letters[0][0].error
        applier.close()
    return work


def _prebuilt(rows: int) -> list[list[ChangeEvent]]:
    """Inserts and updates of every row, deletes of every other row, then upserts of every row
    again (half of them bringing a deleted key back), built before timing anything.

    Hundreds of thousands of pre-built events are an artefact of the benchmark (a pipeline holds
    one batch): frozen, the garbage collector does not rescan them after every batch, which
    otherwise doubles the sink's measured Python time.
    """
    data = [list(events(rows, 1, Op.CREATE)), list(events(rows, 2, Op.UPDATE)),
            list(events(rows, 3, Op.UPDATE)), list(events(rows, 5, Op.DELETE, step=2)),
            list(events(rows, 6, Op.UPDATE))]
    gc.collect()
    gc.freeze()
    return data


def _chunks(items: list[ChangeEvent], size: int) -> list[list[ChangeEvent]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _source_batches(rows: int, version: int, size: int = 500) -> Iterator[list[ChangeEvent]]:
    """The events as a batched source hands them on (lists of ``size``, typed so that Beam
    sizes them with ChangeEventCoder's cheap estimate), after the ``gc.freeze()`` the sources
    do once the worker is up."""
    gc.freeze()
    batch: list[ChangeEvent] = []
    for event in events(rows, version, Op.UPDATE):
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _through_beam(sink: beam.PTransform, rows: int, version: int) -> Callable[[], None]:
    def work() -> None:
        # Impulse + FlatMap: Create is slower than the sink (FACTS.md).
        with beam.Pipeline() as pipeline:
            _ = (pipeline | 'Impulse' >> beam.Impulse()
                 | 'MakeEvents' >> beam.FlatMap(lambda _: _source_batches(rows, version))
                 .with_output_types(beam.typehints.List[ChangeEvent])
                 | 'Write' >> sink)
    return work


class _Discard(beam.DoFn):
    def process(self, element: list[ChangeEvent]) -> None:
        return None


_BEAM_ALONE: list[Rates] = []


def bench_beam_overhead(rows: int) -> None:
    """What generating the events in a pipeline costs without any sink (part of the Beam rows)."""
    def work() -> None:
        with beam.Pipeline() as pipeline:
            _ = (pipeline | 'Impulse' >> beam.Impulse()
                 | 'MakeEvents' >> beam.FlatMap(lambda _: _source_batches(rows, 3))
                 .with_output_types(beam.typehints.List[ChangeEvent])
                 | 'Discard' >> beam.ParDo(_Discard()))
    print(f'Beam alone, {rows:,} events', flush=True)
    _BEAM_ALONE.append(_timed('Impulse | FlatMap(make events, lists of 500) | no-op DoFn',
                              rows, 0, work))


def _without_making_events(through_beam: Rates) -> Rates:
    """What the sink adds to a pipeline: the per-row time of the Beam run minus that of making
    the events (measured alone), which a real pipeline pays in its source instead.  The sink
    writes a batch while the events after it are made, so in wall-clock time this is the
    sink's added cost, not the time it takes alone (the "Applier" lines)."""
    alone = _BEAM_ALONE[0]
    return (1 / (1 / through_beam[0] - 1 / alone[0]),
            1 / (1 / through_beam[1] - 1 / alone[1]))


def _report(limit: Rates | dict[str, Rates], rates: dict[str, Rates], limit_label: str) -> None:
    """Each rate against ``limit``, or against its own limit (measured just before it)."""
    for label, (wall, cpu) in rates.items():
        own = limit[label] if isinstance(limit, dict) else limit
        print(f'  {label:<40} {wall / own[0]:.2f}x {limit_label} (wall clock), '
              f'{cpu / own[1]:.2f}x (CPU)')


def _limits_before(measures: dict[str, Callable[[], Rates]],
                   runs: dict[str, Callable[[], Rates]]
                   ) -> tuple[dict[str, Rates], dict[str, dict[str, Rates]]]:
    """Run each of ``runs`` right after a new measurement of each limit: the machine's speed
    drifts (±15 % within minutes on a shared VM), and a ratio should compare the two at
    one time.  (the rates; by limit, the limit measured before each)"""
    rates: dict[str, Rates] = {}
    limits: dict[str, dict[str, Rates]] = {name: {} for name in measures}
    for label, run in runs.items():
        for name, measure in measures.items():
            limits[name][label] = measure()
        rates[label] = run()
    return rates, limits


def _sink_runs(rows: int, pid: int, data: list[list[ChangeEvent]], batch: int,
               target: Callable[[], Target], sink: Callable[[], beam.PTransform]
               ) -> dict[str, Callable[[], Rates]]:
    """The sink's measurements, in order: inserts, updates, a stale replay, updates one batch
    at a time, updates through Beam, deletes of every other row, upserts of every row beside
    their tombstones (each on a new target or sink, as a pipeline starts)."""
    return {
        'sink, inserts into an empty table': lambda: _timed(
            'sink: inserts into an empty table (Applier)', rows, pid,
            _apply_all(target(), _chunks(data[0], batch))),
        'sink, updates of every row': lambda: _timed(
            'sink: updates of every row (Applier)', rows, pid,
            _apply_all(target(), _chunks(data[1], batch))),
        'sink, stale replay (no-op)': lambda: _timed(
            'sink: replay of the inserts, all stale (Applier)', rows, pid,
            _apply_all(target(), _chunks(data[0], batch))),
        'sink, updates, one batch at a time': lambda: _timed(
            'sink: updates again, one batch at a time (apply)', rows, pid,
            _apply_all(target(), _chunks(data[2], batch), ahead=False)),
        'sink, updates through Beam': lambda: _timed(
            'sink: updates through a Beam pipeline (default runner)', rows, pid,
            _through_beam(sink(), rows, 4)),
        'sink, deletes of every other row': lambda: _timed(
            'sink: deletes of every other row (Applier)', len(data[3]), pid,
            _apply_all(target(), _chunks(data[3], batch))),
        'sink, upserts beside tombstones': lambda: _timed(
            'sink: upserts of every row, half of them deleted (Applier)', rows, pid,
            _apply_all(target(), _chunks(data[4], batch))),
    }


def bench_postgres(rows: int, batch: int) -> None:
    from tests.services.postgres import PostgresServer

    print(f'PostgreSQL 15, {rows:,} rows, batches of {batch:,}', flush=True)
    data = _prebuilt(rows)
    with PostgresServer.start() as server:
        name = server.create_database('bench')
        pid = int((server.base_dir / 'data' / 'postmaster.pid').read_text().split()[0])
        with server.connect(name) as conn:
            conn.execute('CREATE TABLE copy_target (id bigint PRIMARY KEY, price numeric(12,2), '
                         'seen timestamptz, name text, doc jsonb, tags text[], blob bytea)')
            limit = _copy_limit(conn, pid, rows, 'text', _copy_text(rows))
            limit()
            # The sink stages rows as binary COPY where it can: the same limit in that format.
            binary = _copy_binary(rows)
            binary_limit = _copy_limit(conn, pid, rows, 'binary', binary)
            conn.execute('TRUNCATE copy_target')
            python_rows = [tuple(e.after.values()) for e in data[0]]  # type: ignore[union-attr]

            def copy_rows() -> None:
                with conn.cursor().copy('COPY copy_target FROM STDIN') as cp:
                    for row in python_rows:
                        cp.write_row(row)
            python_limit = _timed('COPY of the Python values (psycopg write_row)', rows, pid,
                                  copy_rows)
            dsn = server.dsn(name)
            measures = {'COPY': limit, 'binary COPY': binary_limit} if binary else \
                {'COPY': limit}
            rates, limits = _limits_before(measures, _sink_runs(
                rows, pid, data, batch, lambda: _PostgresTarget(dsn),
                lambda: WriteChangesToPostgres(dsn, max_batch_size=batch)))
    rates["sink's added time in Beam"] = _without_making_events(
        rates['sink, updates through Beam'])
    for name, own in limits.items():
        own["sink's added time in Beam"] = own['sink, updates through Beam']
        print(f'  ratios against the {name} measured just before each:')
        _report(own, rates, name)
    _report(python_limit, rates, 'write_row COPY')


def _copy_limit(conn: Any, pid: int, rows: int, format_: str, data: bytes
                ) -> Callable[[], Rates]:
    """A measurement of the limit: ``data`` COPYed in ``format_`` into the emptied table."""
    def copy() -> None:
        with conn.cursor().copy(f'COPY copy_target FROM STDIN (FORMAT {format_})') as cp:
            cp.write(data)

    def limit() -> Rates:
        conn.execute('TRUNCATE copy_target')
        return _timed(f'COPY (pre-rendered {format_}) into an empty table', rows, pid, copy)
    return limit


def _copy_text(rows: int) -> bytes:
    out = io.StringIO()
    for i in range(rows):
        r = _row(i, 1)
        out.write(f'{i}\t{r["price"]}\t{r["seen"].isoformat()}\t{r["name"]}\t{r["doc"]}\t'
                  f'{{a,t{i % 7}}}\t\\\\x{r["blob"].hex()}\n')
    return out.getvalue().encode()


def _copy_binary(rows: int) -> bytes:
    """The same rows as binary COPY data (b'' without the C extension: no such limit then)."""
    codes = copytext.binary_codes([20, 1700, 1184, 25, 3802, 1009, 17])  # copy_target's types
    if codes is None:
        return b''
    data = copytext.rows_binary(codes, [list(_row(i, 1).values()) for i in range(rows)])
    assert data is not None
    return copytext.BINARY_HEADER + data + copytext.BINARY_TRAILER


def bench_mariadb(rows: int, batch: int) -> None:
    from tests.services.mariadb import MariaDBServer

    print(f'MariaDB, {rows:,} rows, batches of {batch:,}', flush=True)
    data = _prebuilt(rows)
    with MariaDBServer.start() as server, tempfile.TemporaryDirectory() as tmp:
        name = server.create_database('bench')
        path = os.path.join(tmp, 'rows.tsv')
        with open(path, 'w', encoding='utf-8') as out:
            for i in range(rows):
                r = _row(i, 1)
                seen = r['seen'].replace(tzinfo=None).isoformat(' ')
                out.write(f'{i}\t{r["price"]}\t{seen}\t{r["name"]}\t{r["doc"]}\t'
                          f'["a", "t{i % 7}"]\t{r["blob"].hex()}\n')
        with server.connect(name, local_infile=True) as conn, conn.cursor() as cur:
            cur.execute('SELECT @@pid_file')
            with open(cur.fetchone()[0]) as pid_file:
                pid = int(pid_file.read().split()[0])
            cur.execute('CREATE TABLE load_target (id BIGINT PRIMARY KEY, price DECIMAL(12,2), '
                        'seen DATETIME(6), name LONGTEXT, doc JSON, tags JSON, `blob` LONGBLOB) '
                        'DEFAULT CHARSET=utf8mb4')

            def load() -> None:
                cur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE load_target "
                            '(id, price, seen, name, doc, tags, @b) SET `blob` = UNHEX(@b)')
                conn.commit()

            def limit() -> Rates:
                cur.execute('TRUNCATE load_target')
                return _timed('LOAD DATA LOCAL INFILE into an empty table', rows, pid, load)
            dsn = server.dsn(name)
            rates, limits = _limits_before({'LOAD DATA': limit}, _sink_runs(
                rows, pid, data, batch, lambda: _MySQLTarget(dsn),
                lambda: WriteChangesToMySQL(dsn, max_batch_size=batch)))
    rates["sink's added time in Beam"] = _without_making_events(
        rates['sink, updates through Beam'])
    own = limits['LOAD DATA']
    own["sink's added time in Beam"] = own['sink, updates through Beam']
    print('  ratios against the LOAD DATA measured just before each:')
    _report(own, rates, 'LOAD DATA')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rows', type=int, default=100_000)
    parser.add_argument('--batch', type=int, default=5000)
    parser.add_argument('--only', choices=['postgres', 'mariadb'])
    args = parser.parse_args()
    bench_beam_overhead(args.rows)
    if args.only in (None, 'postgres'):
        bench_postgres(args.rows, args.batch)
    if args.only in (None, 'mariadb'):
        bench_mariadb(args.rows, args.batch)


if __name__ == '__main__':
    main()
