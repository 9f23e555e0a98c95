"""WriteChangesToFiles: change events as JSON Lines under DIR/schema.table/, never half-written."""
from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time
from decimal import Decimal

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.envelope import (
    ChangeEvent,
    Column,
    Kind,
    Op,
    SourcePosition,
    TableSchema,
    TransactionInfo,
    from_debezium_json,
)
from transforms.sinks.files import WriteChangesToFiles

REPO = pathlib.Path(__file__).resolve().parents[2]
PART = re.compile(r'part-\d+-[0-9a-f]{12}-\d{6}\.jsonl')

ORDERS = TableSchema('public', 'orders', (
    Column('id', Kind.INT32, 'integer', nullable=False),
    Column('amount', Kind.DECIMAL, 'numeric(10,2)', precision=10, scale=2),
    Column('placed_at', Kind.TIMESTAMPTZ, 'timestamp with time zone'),
    Column('raw', Kind.BYTES, 'bytea'),
), key=('id',))
CUSTOMERS = TableSchema('crm', 'customers', (
    Column('id', Kind.INT64, 'bigint', nullable=False),
    Column('name', Kind.STRING, 'text'),
), key=('id',))


def position(table: TableSchema, lsn: int) -> SourcePosition:
    return SourcePosition(connector='postgresql', name='shop', db='shop', schema=table.schema,
                          table=table.table, ts_ms=1_700_000_000_000, tx_id=lsn // 10,
                          lsn=lsn, commit_lsn=lsn + 5)


def order(n: int, op: Op = Op.CREATE) -> ChangeEvent:
    row = {'id': n, 'amount': Decimal(f'{n}.50'),
           'placed_at': dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=n),
           'raw': bytes([n % 256, 0, 255])}
    return ChangeEvent(op=op, table=ORDERS, source=position(ORDERS, 1000 + n),
                       before=row if op is Op.DELETE else None,
                       after=None if op is Op.DELETE else row, ts_ms=1_700_000_000_500,
                       transaction=TransactionInfo(f'{n}:{1000 + n}', 1, 1))


def customer(n: int) -> ChangeEvent:
    return ChangeEvent(op=Op.UPDATE, table=CUSTOMERS, source=position(CUSTOMERS, 5000 + n),
                       before={'id': n}, after={'id': n, 'name': f'Zoë {n} "quoted"\n'},
                       ts_ms=1_700_000_000_600)


def committed_files(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in directory.rglob('*.jsonl') if not p.name.startswith('.'))


def read_back(directory: pathlib.Path, table: TableSchema) -> list[ChangeEvent]:
    events = []
    for path in committed_files(directory / table.name):
        assert PART.fullmatch(path.name), path.name
        text = path.read_text(encoding='utf-8')
        assert text.endswith('\n'), f'{path} ends in a partial line'
        events += [from_debezium_json(json.loads(line), table) for line in text.splitlines()]
    return events


def write(directory: pathlib.Path, events: list[ChangeEvent]) -> None:
    with beam.Pipeline() as pipeline:
        _ = (pipeline
             | 'Create' >> beam.Create(events)
             | 'WriteChangesToFiles' >> WriteChangesToFiles(f'jsonl:{directory}'))


def test_events_of_two_tables_land_in_their_directories_and_read_back(
        tmp_path: pathlib.Path) -> None:
    lake = tmp_path / 'lake'
    orders = [order(n) for n in range(20)] + [order(20, Op.DELETE)]
    customers = [customer(n) for n in range(7)]
    write(lake, orders + customers)

    assert sorted(p.name for p in lake.iterdir()) == ['crm.customers', 'public.orders']
    by_lsn = lambda e: e.source.lsn  # noqa: E731
    assert sorted(read_back(lake, ORDERS), key=by_lsn) == orders
    assert sorted(read_back(lake, CUSTOMERS), key=by_lsn) == customers
    assert not [p for p in lake.rglob('*') if p.name.endswith('.tmp')]


def test_another_run_adds_files_and_never_overwrites(tmp_path: pathlib.Path) -> None:
    write(tmp_path, [order(1)])
    first = committed_files(tmp_path)
    write(tmp_path, [order(2)])
    assert set(first) < set(committed_files(tmp_path))
    assert sorted(e.after['id'] for e in read_back(tmp_path, ORDERS) if e.after) == [1, 2]


@pytest.mark.parametrize('schema, table', [
    ('..', '..'),
    ('', '..'),
    ('', '.'),
    ('public', '../../escaped'),
    ('/etc', 'passwd'),
    ('', '/tmp/abs'),
    ('x', 'a/../../b'),
    ('', 'nul\x00byte'),
    ('', ''),
    ('', '.hidden'),
])
def test_table_names_cannot_escape_the_directory(tmp_path: pathlib.Path, schema: str,
                                                 table: str) -> None:
    lake = tmp_path / 'lake'
    evil = TableSchema(schema, table, (Column('id', Kind.INT32),), key=('id',))
    event = ChangeEvent(op=Op.CREATE, table=evil, source=position(evil, 1), after={'id': 1})
    write(lake, [event])

    assert [p.name for p in tmp_path.iterdir()] == ['lake']
    files = committed_files(lake)
    assert len(files) == 1
    file = files[0]
    assert file.resolve().parent.parent == lake.resolve()  # DIR/<one directory>/part-….jsonl
    assert not file.parent.name.startswith('.')  # not hidden, not '.' or '..'
    assert from_debezium_json(json.loads(file.read_text()), evil) == event


def test_an_event_that_cannot_be_encoded_is_a_dead_letter(tmp_path: pathlib.Path) -> None:
    broken = ChangeEvent(op=Op.CREATE, table=ORDERS, source=position(ORDERS, 7),
                         after={'id': 7, 'raw': 'not bytes'})
    with test_pipeline.TestPipeline() as pipeline:
        dead = (pipeline
                | 'Create' >> beam.Create([order(1), broken, order(2)])
                | 'WriteChangesToFiles' >> WriteChangesToFiles(f'jsonl:{tmp_path}'))
        assert_that(dead | 'Describe' >> beam.Map(lambda d: (d.step, d.source, d.payload)),
                    equal_to([('EncodeJson', 'public.orders', repr(broken))]))
    assert sorted(e.after['id'] for e in read_back(tmp_path, ORDERS) if e.after) == [1, 2]


@pytest.mark.parametrize('uri', ['csv:/data/lake', 'jsonl:', '/data/lake', 'JSONL:/data',
                                 'avro:ftp://host/lake', 'parquet:s3://', 'jsonl:gs:///lake',
                                 'avro:hdfs://nn/lake'])
def test_unsupported_uri_is_a_value_error_naming_it(uri: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(uri))):
        WriteChangesToFiles(uri)


# A pipeline that commits some files, then writes one huge bundle slowly and waits to be killed.
_KILLED_WRITER = textwrap.dedent('''
    import datetime as dt, sys, time
    import apache_beam as beam
    from transforms.envelope import ChangeEvent, Column, Kind, Op, SourcePosition, TableSchema
    from transforms.sinks.files import WriteChangesToFiles

    TABLE = TableSchema('public', 'big', (Column('id', Kind.INT64), Column('note', Kind.STRING)))

    def event(n, slow=False):
        if slow:
            time.sleep(0.002)
        return ChangeEvent(op=Op.CREATE, table=TABLE, after={'id': n, 'note': 'x' * 3000},
                           source=SourcePosition('postgresql', 's', 'd', 'public', 'big', 0,
                                                 lsn=n, commit_lsn=n))

    with beam.Pipeline() as p:
        _ = p | beam.Create(range(40)) | beam.Map(event) | WriteChangesToFiles(sys.argv[1])
    print('committed', flush=True)
    with beam.Pipeline() as p:
        # one element fanned out inside the fused stage: a single bundle of 100k events
        _ = (p | beam.Create([100_000]) | beam.FlatMap(lambda n: iter(range(n)))
             | beam.Map(event, slow=True) | WriteChangesToFiles(sys.argv[1]))
''')


def test_a_killed_writer_leaves_no_partial_visible_file(tmp_path: pathlib.Path) -> None:
    lake = tmp_path / 'lake'
    script = tmp_path / 'killed_writer.py'
    script.write_text(_KILLED_WRITER)
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), f'jsonl:{lake}'], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b'committed'
        table = lake / 'public.big'
        deadline = time.monotonic() + 30
        # Mid-bundle: the hidden temporary file has been created and has had data flushed to it.
        while not any(p.stat().st_size > 0 for p in table.glob('.part-*.tmp')):
            assert proc.poll() is None, 'the slow pipeline ended before it could be killed'
            assert time.monotonic() < deadline, 'the slow bundle never started writing'
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    visible = committed_files(lake)
    assert visible, 'the first pipeline should have committed files'
    ids = []
    for path in visible:
        text = path.read_text(encoding='utf-8')
        assert text.endswith('\n'), f'{path} ends in a partial line'
        ids += [json.loads(line)['after']['id'] for line in text.splitlines()]
    assert sorted(ids) == list(range(40))  # only the first pipeline's events are visible
    leftovers = [p for p in lake.rglob('*') if p.is_file() and p not in visible]
    assert leftovers
    assert all(re.fullmatch(r'\.part-[0-9a-f]{12}-\d+\.jsonl\.tmp', p.name) for p in leftovers)
