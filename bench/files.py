"""WriteChangesToFiles (avro:, parquet:) in a DirectRunner pipeline against writing directly.

    python -m bench.files [--events 100000] [--formats avro,parquet]

For each format, four figures in events/s, all over the same generated events (the orders
table of bench/coder.py) written to a local temporary directory:

- ``pipeline``: ``Impulse | FlatMap(generate) | WriteChangesToFiles(...)`` on DirectRunner,
  wall clock of the whole run (pipeline start-up included);
- ``direct``: the same events written without Beam by the sink's own format writer, in one
  loop (Avro: ``avro_encoder`` into 64 KiB blocks of a fastavro container, deflate; Parquet:
  ``to_avro_record`` + the row mapping, converted to Arrow 1,000 rows at a time, ``pyarrow``
  ``ParquetWriter``, snappy, a row group per 10,000 rows) — the sink's limit;
- ``writer only``: fastavro / pyarrow writing records or rows built beforehand.  For Avro
  twice: ``to_avro_record``'s plain records, and the same with each union's branch named
  (``avro_record_converter``), fastavro's fastest way of writing them.

The ratio ``pipeline / direct`` is the figure to watch (target >= 0.7). On a shared machine
the absolute numbers move with the load; the ratios of one run are comparable.
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

from bench.coder import TABLE, make_events
from transforms.envelope import ChangeEvent, avro_schema, to_avro_record
from transforms.envelope_avro import avro_record_converter
from transforms.sinks import files as sink
from transforms.sinks.files import WriteChangesToFiles

_CHUNK = 1000


def generate(total: int) -> Iterator[ChangeEvent]:
    # As the streaming sources do once the worker is up (transforms/sources/stream_range.py):
    # without it, each full collection walks Beam's heap, a third of a Parquet run's time.
    gc.freeze()
    for start in range(0, total, _CHUNK):
        yield from make_events(min(_CHUNK, total - start))


def run_pipeline(fmt: str, total: int, directory: str) -> float:
    start = time.perf_counter()
    with beam.Pipeline(runner='DirectRunner') as pipeline:
        _ = (pipeline
             | 'Impulse' >> beam.Impulse()
             | 'Generate' >> beam.FlatMap(lambda _: generate(total))
             | 'WriteChangesToFiles' >> WriteChangesToFiles(f'{fmt}:{directory}'))
    elapsed = time.perf_counter() - start
    written = [p for p in _files(directory, fmt)]
    assert written, f'the pipeline wrote no {fmt} file'
    return elapsed


def _files(directory: str, fmt: str) -> list[str]:
    return [os.path.join(root, name) for root, _, names in os.walk(directory)
            for name in names if name.endswith(f'.{fmt}')]


def _direct(fmt: str, total: int, path: str) -> float:
    """The sink's own format writer, without Beam."""
    start = time.perf_counter()
    with open(path, 'wb') as out:
        stream = sink._CountingStream(out)
        writer: sink._FormatWriter
        if fmt == 'avro':
            writer = sink._AvroWriter(stream, TABLE, 0, 'deflate', sink._AVRO_BLOCK_BYTES)
        else:
            writer = sink._ParquetWriter(stream, TABLE, 0, 'snappy',
                                         sink._DEFAULT_ROW_GROUP_ROWS)
        rejected = [bad for event in generate(total) for bad in writer.add(event)]
        rejected += writer.close()
    assert not rejected, rejected[:1]
    return time.perf_counter() - start


def avro_direct(total: int, path: str) -> float:
    return _direct('avro', total, path)


def avro_writer_only(total: int, path: str, plain: bool = True) -> float:
    schema = fastavro.parse_schema(avro_schema(TABLE, 0))
    convert = to_avro_record if plain else avro_record_converter(TABLE)
    records = [convert(e) for e in generate(total)]
    start = time.perf_counter()
    with open(path, 'wb') as out:
        fastavro.writer(out, schema, records, codec='deflate')
    return time.perf_counter() - start


def _parquet_rows(events: Iterator[ChangeEvent]) -> Iterator[dict]:
    layout = sink._parquet_layout(TABLE, 0)
    for event in events:
        yield sink._parquet_row(layout, to_avro_record(event))


def parquet_direct(total: int, path: str) -> float:
    return _direct('parquet', total, path)


def parquet_writer_only(total: int, path: str, group: int = 10_000) -> float:
    schema = sink._parquet_layout(TABLE, 0).schema
    rows = list(_parquet_rows(generate(total)))
    start = time.perf_counter()
    with pq.ParquetWriter(path, schema, compression='snappy') as writer:
        for i in range(0, len(rows), group):
            writer.write_table(pa.Table.from_pylist(rows[i:i + group], schema=schema))
    return time.perf_counter() - start


def bench(fmt: str, total: int) -> None:
    workdir = tempfile.mkdtemp(prefix=f'changebeam-bench-{fmt}-')
    try:
        direct, only = ((avro_direct, avro_writer_only) if fmt == 'avro'
                        else (parquet_direct, parquet_writer_only))
        generation_start = time.perf_counter()
        for _ in generate(total):
            pass
        generation = time.perf_counter() - generation_start
        # Interleave the runs so a change in the machine's load hits both sides.
        pipe, dire, alone, tagged = [], [], [], []
        for attempt in range(2):
            out = os.path.join(workdir, f'run{attempt}')
            pipe.append(run_pipeline(fmt, total, out))
            dire.append(direct(total, os.path.join(workdir, f'direct{attempt}.{fmt}')))
            alone.append(only(total, os.path.join(workdir, f'only{attempt}.{fmt}')))
            if fmt == 'avro':
                tagged.append(avro_writer_only(
                    total, os.path.join(workdir, f'tagged{attempt}.avro'), plain=False))
        best_pipe, best_direct, best_only = min(pipe), min(dire), min(alone)
        print(f'{fmt}: {total:,} events (generating them alone: {total / generation:,.0f}/s)')
        print(f'  pipeline     {total / best_pipe:>10,.0f} events/s')
        print(f'  direct       {total / best_direct:>10,.0f} events/s  (the limit)')
        print(f'  writer only  {total / best_only:>10,.0f} events/s  (records prebuilt)')
        if tagged:
            print(f'  writer only  {total / min(tagged):>10,.0f} events/s  '
                  '(records prebuilt, union branches named)')
        print(f'  pipeline / direct = {best_direct / best_pipe:.2f}   '
              f'pipeline / writer only = {best_only / best_pipe:.2f}', end='')
        print(f'   pipeline / writer only (named) = {min(tagged) / best_pipe:.2f}'
              if tagged else '')
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--events', type=int, default=100_000)
    parser.add_argument('--formats', default='avro,parquet')
    args = parser.parse_args()
    for fmt in args.formats.split(','):
        bench(fmt.strip(), args.events)


if __name__ == '__main__':
    main()
