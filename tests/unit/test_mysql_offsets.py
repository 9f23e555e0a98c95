"""The MySQL source's pure parts: restriction positions, the offset store on local disk, what
ReadMySqlChanges refuses at construction, and how statements become events."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from transforms.envelope import MAX_EPOCH, SourcePosition
from transforms.sources.mysql.offsets import (
    POSITION_END,
    Offset,
    OffsetStore,
    OffsetStoreError,
    decode_position,
    encode_position,
    epoch_of,
    file_index,
)


def test_positions_increase_across_files_and_decode_back() -> None:
    positions = [('bin.000001', 4), ('bin.000001', 4_000_000_000), ('bin.000002', 4),
                 ('bin.000002', 120), ('bin.999999', 2 ** 32 - 1)]
    encoded = [encode_position(f, p) for f, p in positions]
    assert encoded == sorted(encoded) and len(set(encoded)) == len(encoded)
    assert all(0 < e < POSITION_END for e in encoded)
    assert [decode_position(e) for e in encoded] == [(file_index(f), p) for f, p in positions]
    assert file_index('mysql-bin.000123') == 123


def test_a_later_epoch_sorts_after_every_position_of_an_earlier_one() -> None:
    """After a failover the new server's files may be numbered lower than the old one's."""
    old = encode_position('bin.999999', 2 ** 32 - 1)
    moved = encode_position('bin.000001', 4, epoch=1)
    last = encode_position('bin.000001', 4, epoch=MAX_EPOCH)
    assert old < moved < last < POSITION_END
    assert decode_position(moved) == (1, 4) and epoch_of(moved) == 1 and epoch_of(old) == 0
    assert decode_position(last) == (1, 4) and epoch_of(last) == MAX_EPOCH
    with pytest.raises(ValueError, match='epoch 128 out of range'):
        encode_position('bin.000001', 4, epoch=MAX_EPOCH + 1)
    with pytest.raises(ValueError, match='binlog file number 16777216'):
        encode_position('bin.16777216', 4)


def test_sort_keys_order_by_epoch_first_and_epoch_zero_keys_are_unchanged() -> None:
    def source(file: str, pos: int, epoch: int | None) -> SourcePosition:
        return SourcePosition('mysql', 'm', 'db', 'db', 't', 0, file=file, pos=pos, row=2,
                              epoch=epoch)

    # the keys written before epochs existed, which database sinks have stored
    assert source('bin.000010', 300, None).sort_key == \
        '0000000a000000000000012c00000002'
    assert source('bin.000010', 300, 0).sort_key == source('bin.000010', 300, None).sort_key
    assert source('bin.000001', 4, 1).sort_key > source('bin.999999', 2 ** 32 - 1, None).sort_key
    assert source('bin.000001', 4, 2).sort_key > source('bin.000009', 4, 1).sort_key
    assert len({len(source('bin.000001', 4, e).sort_key) for e in (None, 1, MAX_EPOCH)}) == 1


def test_an_offset_keeps_its_epoch_and_one_written_before_epochs_has_none(
        tmp_path: Path) -> None:
    store = OffsetStore(str(tmp_path / 'o.json'))
    moved = Offset(file='bin.000002', pos=4, gtid='0-2-90', server_id=2, epoch=3)
    store.save(moved)
    assert store.load() == moved
    doc = json.loads((tmp_path / 'o.json').read_text())
    del doc['epoch']
    (tmp_path / 'o.json').write_text(json.dumps(doc))
    assert store.load() == Offset(file='bin.000002', pos=4, gtid='0-2-90', server_id=2)


@pytest.mark.parametrize('file', ['bin', 'bin.log', 'bin.'])
def test_a_file_name_without_a_sequence_number_is_refused(file: str) -> None:
    with pytest.raises(ValueError, match='NUMBER'):
        encode_position(file, 4)


def test_nothing_stored_yet_loads_as_none(tmp_path: Path) -> None:
    assert OffsetStore(str(tmp_path / 'missing' / 'o.json')).load() is None


def test_save_then_load_round_trips_and_replaces(tmp_path: Path) -> None:
    store = OffsetStore(str(tmp_path / 'state' / 'shop.json'))  # the directory is created
    first = Offset(file='bin.000001', pos=330, gtid='0-1-7', snapshot='pending', server_id=1)
    store.save(first)
    assert store.load() == first
    second = Offset(file='bin.000002', pos=4, gtid='0-1-9,1-5-2', snapshot='done', server_id=1,
                    tables=('shop.orders', 'shop.items'))
    store.save(second)
    assert OffsetStore(f'file://{tmp_path}/state/shop.json').load() == second
    # nothing but the document is left behind (no temporary files)
    assert os.listdir(tmp_path / 'state') == ['shop.json']
    doc = json.loads((tmp_path / 'state' / 'shop.json').read_text())
    assert doc['gtid'] == '0-1-9,1-5-2' and doc['file'] == 'bin.000002' and doc['pos'] == 4


def test_a_failed_write_keeps_the_previous_offset(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = OffsetStore(str(tmp_path / 'o.json'))
    kept = Offset(file='bin.000001', pos=500, gtid='0-1-3')
    store.save(kept)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', broken_fsync)
    with pytest.raises(OffsetStoreError, match='No space left'):
        store.save(Offset(file='bin.000001', pos=900, gtid='0-1-4'))
    monkeypatch.undo()
    assert store.load() == kept
    assert os.listdir(tmp_path) == ['o.json']


def test_a_corrupt_document_says_how_to_recover(tmp_path: Path) -> None:
    path = tmp_path / 'o.json'
    path.write_text('{"format": 1, "file": "bin.0000')  # torn by something other than us
    with pytest.raises(OffsetStoreError, match='delete it and restart with --snapshot initial'):
        OffsetStore(str(path)).load()


def test_delete_forgets_the_offset(tmp_path: Path) -> None:
    store = OffsetStore(str(tmp_path / 'o.json'))
    store.save(Offset(file=None, pos=4, gtid='0-1-1', snapshot='skipped'))
    store.delete()
    store.delete()  # twice is fine
    assert store.load() is None


@pytest.mark.parametrize('uri, problem', [
    ('', 'empty'),
    ('ftp://host/o.json', "unsupported scheme 'ftp'"),
    ('s3://bucket', 'names a bucket but no object'),
    ('/var/lib/cb/', 'is a directory'),
])
def test_bad_uris_are_refused_at_construction(uri: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        OffsetStore(uri)


def test_an_offset_needs_a_position() -> None:
    with pytest.raises(ValueError, match='file/pos or a GTID'):
        Offset(file=None, pos=4)
    with pytest.raises(ValueError, match='snapshot state'):
        Offset(file='bin.000001', pos=4, snapshot='maybe')


# ---------------------------------------------------------------------------------------------
# ReadMySqlChanges: what it refuses at construction, and how statements become events

@pytest.mark.parametrize('dsn, options, problem', [
    ('postgresql://u@h/db', {}, 'not a mysql:// DSN'),
    ('mysql://u@h/db?colour=red', {}, "unknown parameter 'colour'"),
    ('mysql://u@h', {}, 'names no database'),
    ('mysql://u@h/db', {'offset_store': None}, 'offset_store is required'),
    ('mysql://u@h/db', {'offset_store': 'ftp://x/o.json'}, "unsupported scheme 'ftp'"),
    ('mysql://u@h/db', {'snapshot': 'sometimes'}, 'initial, never, only'),
    ('mysql://u@h/db', {'server_id': 0}, 'server_id 0'),
    ('mysql://u@h/db', {'tables': ['mysql.user']}, 'system database'),
    ('mysql://u@h/db', {'max_idle_secs': 0}, 'max_idle_secs'),
    ('mysql://u:hunter2@h/db', {'dead_letter': 'csv:x'}, 'jsonl:DIR'),
])
def test_read_mysql_changes_refuses_bad_options(dsn: str, options: dict[str, object],
                                                problem: str) -> None:
    from transforms.sources.mysql.read import ReadMySqlChanges

    arguments: dict[str, object] = {'offset_store': '/tmp/o.json', **options}
    with pytest.raises(ValueError, match=problem) as info:
        ReadMySqlChanges(dsn, **arguments)  # type: ignore[arg-type]
    assert 'hunter2' not in str(info.value)


def test_tables_may_come_from_several_databases() -> None:
    from transforms.sources.mysql.read import ReadMySqlChanges

    read = ReadMySqlChanges('mysql://u@h', tables=['shop.orders', '`b.d`.`t``x`'],
                            offset_store='/tmp/o.json')
    config = read._config
    assert config.tables == (('shop', 'orders'), ('b.d', 't`x'))
    assert config.databases == ()
    assert 0x40000000 <= config.server_id < 2 ** 32 and not config.server_id_explicit


def _builder(tables: set[tuple[str, str]]) -> object:
    from transforms.envelope import Column, Kind, TableSchema
    from transforms.sources.mysql.read import _EventBuilder

    def lookup(db: str, table: str) -> TableSchema:
        return TableSchema(db, table, (Column('id', Kind.INT32),), ('id',))

    return _EventBuilder('srv', lambda db, table: (db, table) in tables,
                         frozenset(db for db, _ in tables), lookup, clock=lambda: 1.0)


def _query(sql: str, db: str = 'shop') -> object:
    from transforms.sources.mysql.binlog import Query

    return Query(sql, db, thread_id=7, error_code=0, timestamp=1700000000, server_id=1,
                 next_pos=500)


def test_ddl_of_captured_tables_becomes_an_m_event() -> None:
    builder: Any = _builder({('shop', 'orders')})
    [event] = builder.statement(_query('ALTER TABLE `orders` ADD COLUMN note TEXT'),
                                'bin.000001', 400, '0-1-9')
    assert event.op.value == 'm' and not event.table.columns
    assert event.message == {'kind': 'ddl', 'sql': 'ALTER TABLE `orders` ADD COLUMN note TEXT',
                             'db': 'shop', 'table': 'orders'}
    source = event.source
    assert (source.db, source.table, source.file, source.pos, source.gtid, source.thread,
            source.ts_ms) == ('shop', 'orders', 'bin.000001', 400, '0-1-9', 7, 1700000000000)
    assert builder.statement(_query('DROP TABLE IF EXISTS other.orders'), 'bin.000001', 4,
                             None) == []
    assert builder.statement(_query('ALTER TABLE customers ADD x INT'), 'bin.000001', 4,
                             None) == []  # a table of the database that is not captured
    assert builder.statement(_query("GRANT SELECT ON *.* TO 'u'@'%'"), 'bin.000001', 4,
                             None) == []
    [index] = builder.statement(_query('CREATE INDEX i ON orders (id)'), 'bin.000001', 4, None)
    assert index.message['table'] is None and index.message['db'] == 'shop'


def test_truncate_of_a_captured_table_is_a_t_event() -> None:
    builder: Any = _builder({('shop', 'orders')})
    [event] = builder.statement(_query('TRUNCATE TABLE shop.`orders`', db=''), 'bin.000002',
                                90, '0-1-3')
    assert event.op.value == 't' and event.table.name == 'shop.orders'
    assert event.table.key == ('id',)
    assert builder.statement(_query('TRUNCATE other'), 'bin.000002', 90, None) == []


def test_columns_a_table_gains_carry_the_default_the_catalog_gives_once() -> None:
    """The stream asks the catalog only for columns it sees for the first time; the columns
    of a table's first rows are its baseline, unless an ALTER of it came first."""
    from transforms.envelope import Op
    from transforms.sources.mysql.binlog import Rows, TableMap
    from transforms.sources.mysql.read import _EventBuilder
    from transforms.sources.mysql.types import LONG, ColumnInfo

    asked: list[list[str]] = []

    def lookup_defaults(db: str, table: str, columns: Any) -> dict[str, str | None]:
        asked.append([c.name for c in columns])
        return {c.name: f'{c.name}-default' for c in columns}

    builder = _EventBuilder('srv', lambda db, table: True, frozenset({'shop'}),
                            lambda db, table: None,  # type: ignore[arg-type,return-value]
                            clock=lambda: 1.0, lookup_defaults=lookup_defaults)

    def defaults(table: str, *names: str) -> dict[str, str | None]:
        columns = tuple(ColumnInfo(i, n, LONG) for i, n in enumerate(names))
        table_map = TableMap(1, 'shop', table, columns, (0,), True, repr(names).encode())
        [event] = builder.rows(Rows(Op.CREATE, table_map, [dict.fromkeys(names, 1)], 1, 1, 1,
                                    True), 'bin.000001', 4, None)
        return {c.name: c.default for c in event.table.columns}

    assert defaults('t', 'id', 'a') == {'id': None, 'a': None} and asked == []
    assert defaults('t', 'id', 'a', 'c') == {'id': None, 'a': None, 'c': 'c-default'}
    assert defaults('t', 'id', 'c', 'd') == {'id': None, 'c': 'c-default', 'd': 'd-default'}
    assert asked == [['c'], ['d']]
    builder.statement(_query('ALTER TABLE u ADD COLUMN c INT DEFAULT 7'), 'bin.000001', 9, None)
    assert defaults('u', 'id', 'c') == {'id': 'id-default', 'c': 'c-default'}
    builder.statement(_query('DROP TABLE t'), 'bin.000001', 10, None)
    builder.statement(_query('CREATE TABLE t (id INT, c INT DEFAULT 7)'), 'bin.000001', 11, None)
    assert defaults('t', 'id', 'c') == {'id': None, 'c': None}
