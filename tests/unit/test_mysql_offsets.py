"""The MySQL source's resume state: restriction positions and the offset store on local disk."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from transforms.sources.mysql.offsets import (
    POSITION_END,
    Offset,
    OffsetStore,
    OffsetStoreError,
    decode_position,
    encode_position,
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
    second = Offset(file='bin.000002', pos=4, gtid='0-1-9,1-5-2', snapshot='done', server_id=1)
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
