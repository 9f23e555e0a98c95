"""DDL mid-stream into an Avro data lake: every file reads back with the schema it embeds, and
— Avro schema resolution — with the table's latest schema, as a lake reader would."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from tests.integration.test_postgres_source import (
    CAUGHT_UP_OPTIONS,
    start_cdc,
    stop_when_caught_up,
    wait_for_slot,
)
from transforms.envelope_avro import avro_schema, from_avro_record
from transforms.schema.registry import SchemaRegistry

pytestmark = pytest.mark.integration

STEPS = [
    'ALTER TABLE items ADD COLUMN c1 text',
    'ALTER TABLE items ALTER COLUMN qty TYPE bigint',
    'ALTER TABLE items ALTER COLUMN note TYPE text',
    'ALTER TABLE items DROP COLUMN c1',
    'ALTER TABLE items RENAME COLUMN note TO memo',
]


def test_every_avro_file_reads_with_its_own_and_with_the_latest_schema(
        pg_db: Any, tmp_path: Path) -> None:
    lake = tmp_path / 'lake'
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE items (id integer PRIMARY KEY, qty integer, '
                     'note varchar(10))')
        cdc = start_cdc(pg_db.dsn, lake, *CAUGHT_UP_OPTIONS, '--sink', f'avro:{lake}',
                        '--schema_registry', str(lake / '_schemas'))
        slot = f'changebeam_{pg_db.name}'
        wait_for_slot(conn, slot)
        next_id = 1
        for step in [None, *STEPS]:
            if step:
                conn.execute(step)
            columns = [r[0] for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'items'::regclass "
                'AND attnum > 0 AND NOT attisdropped ORDER BY attnum').fetchall()]
            for _ in range(3):
                values = {'id': next_id, 'qty': next_id * 10, 'note': f'n{next_id}',
                          'memo': f'm{next_id}', 'c1': f'c{next_id}'}
                conn.execute(f'INSERT INTO items ({", ".join(columns)}) VALUES '
                             f'({", ".join(["%s"] * len(columns))})',
                             [values[c] for c in columns])
                next_id += 1
        stop_when_caught_up(cdc, conn, slot)
    registry = SchemaRegistry(str(lake / '_schemas'))
    versions = registry.versions('public.items')
    assert len(versions) == len(STEPS) + 1
    by_id = {v.version: v for v in versions}
    latest = avro_schema(versions[-1].schema)
    files = sorted(lake.glob('public.items/v=*/part-*.avro'))
    assert {f.parent.name for f in files} == {f'v={v.version}' for v in versions}
    seen = {}
    for path in files:
        table = by_id[int(path.parent.name[2:])].schema
        with open(path, 'rb') as handle:
            own = [from_avro_record(r, table) for r in fastavro.reader(handle)]
        for event in own:  # each row holds exactly the columns of its own version
            if event.after is not None:
                assert set(event.after) == {c.name for c in table.columns}, path
                seen[event.after['id']] = event.after
        with open(path, 'rb') as handle:
            resolved = list(fastavro.reader(handle, reader_schema=fastavro.parse_schema(
                latest)))
        assert len(resolved) == len(own)
        for record, event in zip(resolved, own, strict=True):
            if event.after is None:
                continue
            after = record['after']
            assert after['id'] == event.after['id'] and after['qty'] == event.after['qty']
            # columns the latest schema lacks are skipped; ones it added read as null
            assert after['memo'] == event.after.get('memo')
    assert sorted(seen) == list(range(1, 3 * (len(STEPS) + 1) + 1))


def test_parquet_lake_through_the_cli_holds_every_row_of_every_version(
        pg_db: Any, tmp_path: Path) -> None:
    """The versions EvolveSchema gives are content-derived 63-bit numbers: the Parquet column
    holding them was int32, so through the CLI every event became a dead letter and the lake
    stayed empty (the exit status 0)."""
    import pyarrow.parquet as pq

    from tests.transforms.test_files_sink import parquet_to_events

    lake = tmp_path / 'lake'
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE items (id integer PRIMARY KEY, qty integer, '
                     'note varchar(10))')
        conn.execute("INSERT INTO items VALUES (1, 10, 'one')")  # in the snapshot
        cdc = start_cdc(pg_db.dsn, lake, *CAUGHT_UP_OPTIONS, '--sink', f'parquet:{lake}',
                        '--schema_registry', str(lake / '_schemas'))
        slot = f'changebeam_{pg_db.name}'
        wait_for_slot(conn, slot)
        conn.execute("INSERT INTO items VALUES (2, 20, 'two')")
        # An application's message: an 'm' event of a table without columns, which Parquet
        # could not write (no empty struct), crashing the pipeline on every restart.
        conn.execute("SELECT pg_logical_emit_message(true, 'app', 'hello')")
        conn.execute('ALTER TABLE items ALTER COLUMN qty TYPE bigint')
        conn.execute("INSERT INTO items VALUES (3, 3000000000, 'three')")
        conn.execute('UPDATE items SET note = NULL WHERE id = 1')
        stop_when_caught_up(cdc, conn, slot)
    assert not list(lake.glob('_dead_letters/*.jsonl'))
    [messages] = [pq.read_table(p).to_pylist() for p in lake.glob('_messages/v=*/part-*')]
    assert [json.loads(m['message'])['content'] for m in messages] == ['hello']
    versions = {v.version: v.schema
                for v in SchemaRegistry(str(lake / '_schemas')).versions('public.items')}
    assert len(versions) == 2 and all(v > 2**31 for v in versions)  # as fingerprints are
    got = []
    for path in sorted(lake.glob('public.items/v=*/part-*.parquet')):
        version = int(path.parent.name[2:])
        data = pq.read_table(path)
        assert set(data.column('schema_version').to_pylist()) == {version}
        got += parquet_to_events(data, versions[version])
    rows = sorted((e.source.sort_key, e.op.value, e.after) for e in got if e.op.value != 'm')
    assert [row[1:] for row in rows] == [('r', {'id': 1, 'qty': 10, 'note': 'one'}),
                                         ('c', {'id': 2, 'qty': 20, 'note': 'two'}),
                                         ('c', {'id': 3, 'qty': 3000000000, 'note': 'three'}),
                                         ('u', {'id': 1, 'qty': 10, 'note': None})]
