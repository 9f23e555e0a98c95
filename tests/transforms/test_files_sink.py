"""WriteChangesToFiles: change events as JSON Lines, Avro and Parquet files, never half-written."""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from decimal import Decimal
from typing import Any

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit import strategies as cst
from transforms.dead_letter import WriteDeadLetters
from transforms.envelope import (
    ChangeEvent,
    Column,
    Kind,
    Op,
    RenderedChanges,
    SourcePosition,
    TableSchema,
    TransactionInfo,
    avro_schema,
    debezium_json_bytes,
    encode_json_value,
    from_avro_record,
    from_debezium_json,
    to_avro_record,
)
from transforms.sinks import files
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
        # Not an event any more (its value does not fit its column): kept for a person to read.
        assert_that(dead | 'Describe' >> beam.Map(
                        lambda d: (d.step, d.source, d.payload['unencodable'])),
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
        while not any(_size(p) > 0 for p in table.glob('.part-*.tmp')):
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


# ---------------------------------------------------------------------------------------------
# Avro and Parquet

EVERY_KIND = TableSchema('public', 'every_kind', (
    Column('id', Kind.INT64, 'bigint', nullable=False),
    Column('flag', Kind.BOOLEAN),
    Column('small', Kind.INT16),
    Column('medium', Kind.INT32),
    Column('real', Kind.FLOAT32),
    Column('double', Kind.FLOAT64),
    Column('price', Kind.DECIMAL, 'numeric(10,2)', precision=10, scale=2),
    Column('any_numeric', Kind.DECIMAL, 'numeric'),
    Column('name', Kind.STRING),
    Column('blob', Kind.BYTES),
    Column('day', Kind.DATE),
    Column('at', Kind.TIME),
    Column('at_tz', Kind.TIMETZ),
    Column('local', Kind.TIMESTAMP),
    Column('instant', Kind.TIMESTAMPTZ),
    Column('span', Kind.INTERVAL),
    Column('doc', Kind.JSON),
    Column('uid', Kind.UUID),
    Column('mood', Kind.ENUM, symbols=('ok', 'sad')),
    Column('tags', Kind.ARRAY, element=Kind.STRING),
    Column('days', Kind.ARRAY, element=Kind.DATE),
    Column('grid', Kind.ARRAY, element=Kind.INT32),
    Column('amounts', Kind.ARRAY, element=Kind.DECIMAL, precision=6, scale=1),
    Column('other', Kind.TEXT),
    Column('order id', Kind.INT32),  # not an Avro name
), key=('id',))

UTC = dt.timezone.utc


def every_kind_events() -> list[ChangeEvent]:
    typical = {
        'id': 1, 'flag': True, 'small': -32768, 'medium': 2**31 - 1, 'real': 1.5,
        'double': 1 / 3, 'price': Decimal('12.34'), 'any_numeric': Decimal('-1E+30'),
        'name': 'Zoë "x"\n', 'blob': b'\x00\xff', 'day': dt.date(2024, 2, 29),
        'at': dt.time(23, 59, 59, 999999), 'at_tz': '12:00:00+02',
        'local': dt.datetime(2024, 1, 1, 12, 30),
        'instant': dt.datetime(2024, 1, 1, 12, tzinfo=UTC), 'span': '1 day 02:00:00',
        'doc': '{"a": [1, null]}', 'uid': '00000000-0000-0000-0000-000000000000',
        'mood': 'sad', 'tags': ['a', None, ''], 'days': [dt.date(2020, 1, 1), None],
        'grid': [1, None, -3], 'amounts': [Decimal('1.5'), None], 'other': '(1,2)', 'order id': 7,
    }
    # What Python or the typed column cannot hold: text forms, other scales, several dimensions
    edges = {
        'id': 2, 'flag': False, 'small': 0, 'medium': -(2**31), 'real': math.nan,
        'double': -0.0, 'price': Decimal('1.5'), 'any_numeric': Decimal('NaN'), 'name': '',
        'blob': b'', 'day': 'infinity', 'at': '24:00:00', 'at_tz': '24:00:00+00',
        'local': '10000-01-01 00:00:00', 'instant': '-infinity', 'span': '00:00:00',
        'doc': 'null', 'uid': '123e4567-e89b-12d3-a456-426614174000', 'mood': 'ok',
        'tags': [], 'days': ['infinity', dt.date.min], 'grid': [[1, 2], [3, None]],
        'amounts': [Decimal('1.25')], 'other': '', 'order id': None,
    }
    bounds = {
        'id': 3, 'double': math.inf, 'price': Decimal('-99999999.99'),
        'day': dt.date.max, 'at': dt.time.min, 'local': dt.datetime.min,
        'instant': dt.datetime.max.replace(tzinfo=UTC),
        'any_numeric': Decimal('0.000000000000000000000000000000000000000001'),
    }
    nulls = {c.name: None for c in EVERY_KIND.columns} | {'id': 4}
    source = position(EVERY_KIND, 10)
    return [
        ChangeEvent(op=Op.CREATE, table=EVERY_KIND, source=source, after=typical, ts_ms=1,
                    transaction=TransactionInfo('tx:1', 3, 1)),
        ChangeEvent(op=Op.UPDATE, table=EVERY_KIND, source=position(EVERY_KIND, 11),
                    before=typical, after=edges, ts_ms=2),
        ChangeEvent(op=Op.READ, table=EVERY_KIND, source=position(EVERY_KIND, 12),
                    after=bounds, ts_ms=3, schema_version=None),
        ChangeEvent(op=Op.UPDATE, table=EVERY_KIND, source=position(EVERY_KIND, 13),
                    before={'id': 4}, after={k: v for k, v in nulls.items() if k != 'doc'},
                    unchanged=frozenset({'doc'}), ts_ms=4),
        ChangeEvent(op=Op.DELETE, table=EVERY_KIND, source=position(EVERY_KIND, 14),
                    before=nulls, ts_ms=5),
        ChangeEvent(op=Op.MESSAGE, table=EVERY_KIND, source=position(EVERY_KIND, 15),
                    message={'prefix': 'audit', 'content': 'x'}, ts_ms=6),
    ]


def comparable_events(events: list[ChangeEvent]) -> list[Any]:
    return sorted((cst.comparable(e) for e in events), key=repr)


def visible(directory: pathlib.Path, ext: str) -> list[pathlib.Path]:
    return sorted(p for p in directory.rglob(f'*.{ext}') if not p.name.startswith('.'))


def read_avro(path: pathlib.Path | io.BytesIO,
              table: TableSchema | None = None) -> list[ChangeEvent]:
    """Events of one Avro file, decoded with the schema the file embeds."""
    handle = open(path, 'rb') if isinstance(path, pathlib.Path) else path
    with handle:
        reader = fastavro.reader(handle)
        records = list(reader)
        embedded = reader.writer_schema
    assert embedded is not None
    if table is not None:
        assert embedded['name'].endswith('.Envelope')
        assert [f['name'] for f in embedded['fields'][0]['type'][1]['fields']] == \
            [f['name'] for f in avro_schema(table)['fields'][0]['type'][1]['fields']]
    events = []
    for record in records:
        assert table is not None
        events.append(from_avro_record(record, table))
    return events


def parquet_to_events(data: pa.Table, table: TableSchema) -> list[ChangeEvent]:
    """Decodes Parquet rows: typed values, overridden by the row's ``*_text`` map entries."""
    avro_names = {f.get('sql_name', f['name']): f['name']
                  for f in avro_schema(table)['fields'][0]['type'][1]['fields']}
    events = []
    for row in data.to_pylist():
        record = dict(row)
        for key in ('before', 'after'):
            values, text = row[key], dict(row.pop(f'{key}_text') or [])
            record.pop(f'{key}_text')
            if values is not None:
                record[key] = {avro_names[name]: text.get(name, value)
                               for name, value in values.items()}
        events.append(from_avro_record(record, table))
    return events


def run(events: list[ChangeEvent], uri: str, **options: Any) -> list[tuple[str, str, str]]:
    """Writes ``events`` to ``uri``; returns the dead letters' (step, error, source)."""
    with tempfile.TemporaryDirectory() as dead:
        with beam.Pipeline() as pipeline:
            letters = (pipeline
                       | 'Create' >> beam.Create(events)
                       | 'WriteChangesToFiles' >> WriteChangesToFiles(uri, **options))
            _ = letters | 'WriteDeadLetters' >> WriteDeadLetters(f'jsonl:{dead}')
        docs = [json.loads(line) for path in pathlib.Path(dead).glob('*.jsonl')
                for line in path.read_text().splitlines()]
    return [(d['step'], d['error'], d['source']) for d in docs]


@pytest.mark.parametrize('fmt', ['jsonl', 'avro'])
def test_lists_of_events_land_like_the_events_one_by_one(tmp_path: pathlib.Path,
                                                         fmt: str) -> None:
    broken = ChangeEvent(op=Op.CREATE, table=ORDERS, source=position(ORDERS, 7),
                         after={'id': 7, 'raw': 'not bytes'})
    letters = run([[order(1), order(2)], [], [broken, order(3)]], f'{fmt}:{tmp_path}')
    assert [(step, source) for step, _, source in letters] == \
        [('EncodeJson' if fmt == 'jsonl' else 'EncodeAvro', 'public.orders')]
    if fmt == 'jsonl':
        got = read_back(tmp_path, ORDERS)
    else:
        got = [e for p in visible(tmp_path / 'public.orders', 'avro') for e in read_avro(p, ORDERS)]
    assert comparable_events(got) == comparable_events([order(1), order(2), order(3)])


def test_rendered_runs_land_as_the_lines_of_their_events(tmp_path: pathlib.Path) -> None:
    orders = [order(n).replace(schema_version=77) for n in range(300)]
    runs = [RenderedChanges(ORDERS, orders[low].source, 0, [
        debezium_json_bytes(e.replace(schema_version=None))[:-1]
        for e in orders[low:low + 100]], 77) for low in range(0, 300, 100)]
    batches = [[runs[0], customer(1)], [runs[1], runs[2]]]
    assert run(batches, f'jsonl:{tmp_path}', max_file_bytes=30_000) == []
    files = visible(tmp_path / 'public.orders', 'jsonl')
    assert len(files) >= 2  # rolled by size, a run at a time
    lines = [line for path in files for line in path.read_bytes().splitlines()]
    assert sorted(lines) == sorted(debezium_json_bytes(e) for e in orders)
    assert read_back(tmp_path, CUSTOMERS) == [customer(1)]


def test_rendered_runs_are_refused_by_a_sink_of_another_format(tmp_path: pathlib.Path) -> None:
    e = order(1)
    runs = [RenderedChanges(ORDERS, e.source, e.ts_ms, [debezium_json_bytes(e)[:-1]], 1)]
    with pytest.raises(Exception, match='rendered JSON lines reached a avro sink'):
        run([runs], f'avro:{tmp_path}')


def test_avro_files_read_back_as_the_events_of_every_kind(tmp_path: pathlib.Path) -> None:
    events = every_kind_events() + [order(n) for n in range(5)]
    assert run(events, f'avro:{tmp_path}') == []

    files = visible(tmp_path, 'avro')
    assert sorted({p.parent.relative_to(tmp_path).as_posix() for p in files}) == \
        ['public.every_kind/v=0', 'public.orders/v=0']
    assert all(re.fullmatch(r'part-\d+-[0-9a-f]{12}-\d{6}\.avro', p.name) for p in files)
    got = [e for p in visible(tmp_path / 'public.every_kind', 'avro')
           for e in read_avro(p, EVERY_KIND)]
    got += [e for p in visible(tmp_path / 'public.orders', 'avro') for e in read_avro(p, ORDERS)]
    assert comparable_events(got) == comparable_events(events)
    with open(files[0], 'rb') as handle:
        assert fastavro.reader(handle).codec == 'deflate'
    assert not [p for p in tmp_path.rglob('*') if p.name.endswith('.tmp')]


def test_parquet_files_read_back_as_the_events_column_by_column(tmp_path: pathlib.Path) -> None:
    events = every_kind_events()
    assert run(events, f'parquet:{tmp_path}') == []

    [path] = visible(tmp_path, 'parquet')
    assert path.parent.relative_to(tmp_path).as_posix() == 'public.every_kind/v=0'
    data = pq.read_table(path)
    assert data.num_rows == len(events)
    by_ts = {e.ts_ms: e for e in events}  # unique in every_kind_events()
    expected = [by_ts[ts] for ts in data.column('ts_ms').to_pylist()]

    # Envelope columns
    assert data.column('op').to_pylist() == [e.op.value for e in expected]
    assert data.column('ts_ms').to_pylist() == [e.ts_ms for e in expected]
    assert data.column('source').to_pylist() == [to_avro_record(e)['source'] for e in expected]
    assert data.column('transaction').to_pylist() == \
        [to_avro_record(e)['transaction'] for e in expected]
    assert data.column('unchanged').to_pylist() == [sorted(e.unchanged) for e in expected]
    assert data.schema.field('after').type == data.schema.field('before').type
    after = data.schema.field('after').type
    assert {after.field(i).name: str(after.field(i).type) for i in range(after.num_fields)} == {
        'id': 'int64', 'flag': 'bool', 'small': 'int32', 'medium': 'int32', 'real': 'double',
        'double': 'double', 'price': 'decimal128(10, 2)', 'any_numeric': 'string',
        'name': 'string', 'blob': 'binary', 'day': 'date32[day]', 'at': 'time64[us]',
        'at_tz': 'string', 'local': 'timestamp[us]', 'instant': 'timestamp[us, tz=UTC]',
        'span': 'string', 'doc': 'string', 'uid': 'string', 'mood': 'string',
        'tags': 'list<element: string>', 'days': 'list<element: date32[day]>',
        'grid': 'list<element: int32>', 'amounts': 'list<element: decimal128(6, 1)>',
        'other': 'string', 'order id': 'int32'}

    # Row columns: a typed value, or NULL plus the text form in the sibling map
    after_values = data.column('after').combine_chunks()
    after_text = [dict(t or []) for t in data.column('after_text').to_pylist()]
    for column in EVERY_KIND.columns:
        got = after_values.field(column.name).to_pylist()
        for event, value, text in zip(expected, got, after_text, strict=True):
            want = None if event.after is None else event.after.get(column.name)
            if column.name in text:
                assert value is None
                if isinstance(want, list):
                    want = json.dumps(encode_json_value(column, want), separators=(',', ':'))
                assert text[column.name] == str(want)
            else:
                if isinstance(want, Decimal) and pa.types.is_string(after.field(column.name).type):
                    want = str(want)  # a numeric without precision: its exact text
                assert cst.comparable(value) == cst.comparable(want), (column.name, event.op)
    edges = after_text[[e.ts_ms for e in expected].index(2)]
    assert edges == {'price': '1.5', 'day': 'infinity', 'at': '24:00:00',
                     'local': '10000-01-01 00:00:00', 'instant': '-infinity',
                     'days': '["infinity","0001-01-01"]', 'grid': '[[1,2],[3,null]]',
                     'amounts': '["1.25"]'}
    assert comparable_events(parquet_to_events(data, EVERY_KIND)) == comparable_events(events)
    metadata = data.schema.metadata
    assert json.loads(metadata[b'changebeam.table'])['columns'][6]['precision'] == 10


def test_a_schema_change_starts_a_file_in_a_new_version_directory(
        tmp_path: pathlib.Path) -> None:
    v2 = TableSchema('public', 'orders', (*ORDERS.columns, Column('note', Kind.STRING)),
                     key=('id',))
    old = [dataclasses.replace(order(n), schema_version=1) for n in range(3)]
    new = [ChangeEvent(op=Op.CREATE, table=v2, source=position(v2, 50 + n), schema_version=2,
                       after={'id': 50 + n, 'note': f'n{n}'}) for n in range(3)]
    # The same version number with another column list is another file, never a mixed one.
    renamed = TableSchema('public', 'orders', (Column('id', Kind.INT32), Column('memo', Kind.TEXT)))
    odd = ChangeEvent(op=Op.CREATE, table=renamed, source=position(renamed, 90),
                      schema_version=2, after={'id': 90, 'memo': 'm'})
    interleaved = [old[0], new[0], old[1], new[1], odd, old[2], new[2]]
    for fmt in ('avro', 'parquet'):
        assert run(interleaved, f'{fmt}:{tmp_path / fmt}') == []
        table_dir = tmp_path / fmt / 'public.orders'
        assert sorted(p.name for p in table_dir.iterdir()) == ['v=1', 'v=2']
        assert len(visible(table_dir / 'v=1', fmt)) == 1
        assert len(visible(table_dir / 'v=2', fmt)) == 2
        got = []
        for path in visible(table_dir, fmt):
            if fmt == 'avro':
                with open(path, 'rb') as handle:
                    columns = [f['name'] for f in fastavro.reader(handle).writer_schema['fields']
                               [0]['type'][1]['fields']]
                table = {('id', 'amount', 'placed_at', 'raw'): ORDERS, ('id', 'memo'): renamed,
                         ('id', 'amount', 'placed_at', 'raw', 'note'): v2}[tuple(columns)]
                got += read_avro(path, table)
            else:
                data = pq.read_table(path)
                meta = json.loads(data.schema.metadata[b'changebeam.table'])
                columns = [c['name'] for c in meta['columns']]
                table = {3: renamed, 4: ORDERS, 5: v2}[len(columns) + (1 if 'memo' in columns
                                                                      else 0)]
                got += parquet_to_events(data, table)
        assert comparable_events(got) == comparable_events(interleaved)


def test_files_roll_at_max_file_bytes_and_every_one_is_complete(tmp_path: pathlib.Path) -> None:
    events = [order(n) for n in range(600)]
    for fmt, options in (('avro', {'codec': 'null'}), ('parquet', {'row_group_rows': 50}),
                         ('jsonl', {})):
        assert run(events, f'{fmt}:{tmp_path / fmt}', max_file_bytes=20_000, **options) == []
        files = visible(tmp_path / fmt, fmt)
        assert len(files) >= 3, fmt
        got = []
        for path in files:
            if fmt == 'avro':
                got += read_avro(path, ORDERS)
            elif fmt == 'parquet':
                got += parquet_to_events(pq.read_table(path), ORDERS)
            else:
                got += [from_debezium_json(json.loads(line), ORDERS)
                        for line in path.read_text().splitlines()]
        assert sorted(e.source.lsn or 0 for e in got) == [e.source.lsn for e in events], fmt
        # A file is committed once it passes the limit: by at most one block / row group.
        assert max(p.stat().st_size for p in files) < 20_000 + 16_000, fmt


@pytest.mark.parametrize('fmt, step', [('avro', 'EncodeAvro'), ('parquet', 'EncodeParquet'),
                                       ('jsonl', 'EncodeJson')])
def test_events_that_cannot_be_encoded_are_dead_letters_naming_the_field(
        tmp_path: pathlib.Path, fmt: str, step: str) -> None:
    wrong_type = ChangeEvent(op=Op.CREATE, table=ORDERS, source=position(ORDERS, 7),
                             after={'id': 7, 'raw': 'not bytes'})
    # A lone surrogate (undecodable source bytes) has no UTF-8 form: Avro and Parquet refuse
    # it; JSON may carry it as a \udc80 escape, which is the envelope's business.
    surrogate = ChangeEvent(op=Op.UPDATE, table=CUSTOMERS, source=position(CUSTOMERS, 8),
                            after={'id': 8, 'name': 'bad \udc80 byte'})
    good = [order(1), customer(2), order(3)]
    bad = [wrong_type] if fmt == 'jsonl' else [wrong_type, surrogate]
    letters = run([good[0], *bad[:1], good[1], *bad[1:], good[2]], f'{fmt}:{tmp_path}',
                  row_group_rows=2)
    errors = {src: error for _, error, src in letters}
    assert sorted((s, src) for s, _, src in letters) == sorted((step, e.table.name) for e in bad)
    assert 'after.raw: ' in errors['public.orders'], errors
    if fmt != 'jsonl':
        assert errors['crm.customers'].startswith('after.name: '), errors
        assert 'surrogate' in errors['crm.customers'], errors
    got: list[ChangeEvent] = []
    for table in (ORDERS, CUSTOMERS):
        for path in visible(tmp_path / table.name, fmt):
            if fmt == 'avro':
                got += read_avro(path, table)
            elif fmt == 'parquet':
                got += parquet_to_events(pq.read_table(path), table)
            else:
                got += [from_debezium_json(json.loads(line), table)
                        for line in path.read_text().splitlines()]
    assert comparable_events(got) == comparable_events(good)


@pytest.mark.parametrize('uri, options, problem', [
    ('avro:/lake', {'codec': 'gzip'}, "codec 'gzip' is not one of"),
    ('parquet:/lake', {'codec': 'deflate'}, "codec 'deflate' is not one of"),
    ('jsonl:/lake', {'codec': 'deflate'}, 'jsonl files take no codec'),
    ('avro:/lake', {'max_file_bytes': 0}, 'max_file_bytes must be a positive integer'),
    ('parquet:/lake', {'row_group_rows': -1}, 'row_group_rows must be a positive integer'),
])
def test_impossible_options_are_value_errors_naming_the_uri(uri: str, options: dict[str, Any],
                                                            problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(uri)) + '.*' + re.escape(problem)):
        WriteChangesToFiles(uri, **options)


@pytest.mark.parametrize('uri', ['avro:s3://bucket/lake', 'parquet:gs://bucket', 'jsonl:./lake',
                                 'parquet:/abs/lake'])
def test_supported_uris_are_accepted(uri: str) -> None:
    WriteChangesToFiles(uri)


# ---------------------------------------------------------------------------------------------
# The pure format writers, over every Kind (property-based)

_batches = cst.table_schemas().flatmap(
    lambda table: st.lists(cst.change_events(table), min_size=1, max_size=6))


def _write_pure(writer: Any, events: list[ChangeEvent]) -> None:
    for event in events:
        assert writer.add(event) == []
    assert writer.close() == []


@settings(max_examples=60, deadline=None)
@given(_batches)
def test_avro_writer_round_trips_any_events(events: list[ChangeEvent]) -> None:
    table = events[0].table
    buffer = io.BytesIO()
    _write_pure(files._AvroWriter(files._CountingStream(buffer), table, 3, 'deflate', 512),
                events)
    buffer.seek(0)
    assert fastavro.reader(io.BytesIO(buffer.getvalue())).writer_schema['schema_version'] == 3
    decoded = read_avro(buffer, table)
    assert [cst.comparable(e) for e in decoded] == [cst.comparable(e) for e in events]


@settings(max_examples=60, deadline=None)
@given(_batches)
def test_parquet_writer_round_trips_any_events(events: list[ChangeEvent]) -> None:
    table = events[0].table
    buffer = io.BytesIO()
    _write_pure(files._ParquetWriter(files._CountingStream(buffer), table, 0, 'snappy', 4),
                events)
    data = pq.read_table(io.BytesIO(buffer.getvalue()))
    decoded = parquet_to_events(data, table)
    assert [cst.comparable(e) for e in decoded] == [cst.comparable(e) for e in events]


# ---------------------------------------------------------------------------------------------
# A killed Avro writer

_KILLED_AVRO_WRITER = textwrap.dedent('''
    import os, sys, time
    import apache_beam as beam
    from transforms.envelope import ChangeEvent, Column, Kind, Op, SourcePosition, TableSchema
    from transforms.sinks.files import WriteChangesToFiles

    TABLE = TableSchema('public', 'big', (Column('id', Kind.INT64), Column('note', Kind.STRING)))

    def event(n, slow=False):
        if slow:
            time.sleep(0.001)
        return ChangeEvent(op=Op.CREATE, table=TABLE,
                           after={'id': n, 'note': os.urandom(1500).hex()},
                           source=SourcePosition('postgresql', 's', 'd', 'public', 'big', 0,
                                                 lsn=n, commit_lsn=n))

    sink = lambda: WriteChangesToFiles(sys.argv[1], max_file_bytes=100_000)
    with beam.Pipeline() as p:
        _ = p | beam.Create(range(40)) | beam.Map(event) | sink()
    print('committed', flush=True)
    with beam.Pipeline() as p:
        # one element fanned out inside the fused stage: a single bundle of 100k events,
        # which rolls (commits) a file every ~35 events while it runs
        _ = (p | beam.Create([100_000]) | beam.FlatMap(lambda n: iter(range(1000, 1000 + n)))
             | beam.Map(event, slow=True) | sink())
''')


def _size(path: pathlib.Path) -> int:
    """A hidden file's size; 0 once a roll renamed it (between listing and looking)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_a_killed_avro_writer_leaves_only_complete_avro_files(tmp_path: pathlib.Path) -> None:
    lake = tmp_path / 'lake'
    script = tmp_path / 'killed_avro_writer.py'
    script.write_text(_KILLED_AVRO_WRITER)
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), f'avro:{lake}'], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    table = lake / 'public.big' / 'v=0'
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b'committed'
        deadline = time.monotonic() + 60
        # Mid-bundle: files of the big bundle have been rolled, and the current hidden one
        # has blocks in it.
        while not (len(visible(table, 'avro')) >= 4
                   and any(_size(p) > 20_000 for p in table.glob('.part-*.avro.tmp'))):
            assert proc.poll() is None, 'the slow pipeline ended before it could be killed'
            assert time.monotonic() < deadline, 'the slow bundle never rolled a file'
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    big = TableSchema('public', 'big', (Column('id', Kind.INT64), Column('note', Kind.STRING)))
    ids = []
    for path in visible(lake, 'avro'):
        ids += [e.after['id'] for e in read_avro(path, big) if e.after]  # reads every block
    assert set(range(40)) <= set(ids)
    assert len(ids) == len(set(ids)) > 40
    leftovers = [p for p in lake.rglob('*') if p.is_file() and not p.name.endswith('.avro')]
    assert leftovers
    assert all(re.fullmatch(r'\.part-[0-9a-f]{12}-\d+\.avro\.tmp', p.name) for p in leftovers)


def test_parquet_row_groups_keep_their_size_across_arrow_batches() -> None:
    """Rows go to Arrow a batch at a time; a row group still holds row_group_rows events."""
    surrogate = ChangeEvent(op=Op.UPDATE, table=CUSTOMERS, source=position(CUSTOMERS, 1500),
                            after={'id': 1500, 'name': 'bad \udc80 byte'})
    events = [surrogate if n == 1500 else customer(n) for n in range(2700)]
    out = io.BytesIO()
    writer = files._ParquetWriter(files._CountingStream(out), CUSTOMERS, 0, 'snappy', 1200)
    rejected = [bad for event in events for bad, _ in writer.add(event)]
    rejected += [bad for bad, _ in writer.close()]
    assert rejected == [surrogate]
    metadata = pq.ParquetFile(io.BytesIO(out.getvalue())).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == \
        [1200, 1199, 300]
    got = parquet_to_events(pq.read_table(io.BytesIO(out.getvalue())), CUSTOMERS)
    assert got == [e for e in events if e is not surrogate]


def test_a_write_to_a_full_disk_names_the_file_and_aborting_it_raises_nothing(tmp_path) -> None:
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    import errno

    from transforms.sinks.files import _CountingStream, _LocalStore

    with open('/dev/full', 'wb', buffering=0) as raw:
        stream = _CountingStream(raw, str(tmp_path / '.part-1.jsonl.tmp'))
        with pytest.raises(OSError) as info:
            stream.write(b'{"op": "c"}\n')
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / '.part-1.jsonl.tmp')
    assert stream.size == 0

    buffered = open('/dev/full', 'wb')  # the store's abort closes it
    buffered.write(b'x' * 100)  # buffered: the failing flush comes at close
    temp = tmp_path / '.part-2.jsonl.tmp'
    temp.write_bytes(b'partial')
    _LocalStore().abort(buffered, str(temp))
    assert buffered.closed and not temp.exists()
