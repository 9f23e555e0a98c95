"""Dead letters: the record as JSON, and WriteDeadLetters writing them to jsonl:DIR."""
from __future__ import annotations

import base64
import datetime as dt
import json
import pathlib
from decimal import Decimal
from typing import Any

import apache_beam as beam
import pytest

from transforms.dead_letter import (
    DEAD_LETTER,
    DeadLetter,
    WriteDeadLetters,
    parse_dead_letter_uri,
)


def read_letters(directory: pathlib.Path) -> list[dict[str, Any]]:
    letters = []
    for path in sorted(directory.glob('*.jsonl')):
        text = path.read_text(encoding='utf-8')
        assert text.endswith('\n'), f'{path} ends in a partial line'
        letters += [json.loads(line) for line in text.splitlines()]
    return letters


def test_to_json_keeps_every_field() -> None:
    letter = DeadLetter(step='ApplyChanges', error='IntegrityError: duplicate key',
                        payload={'id': 1, 'name': 'Ada'}, retryable=True, time_ms=1234,
                        source='public.orders@0/16B3748')
    assert letter.to_json() == {
        'step': 'ApplyChanges', 'error': 'IntegrityError: duplicate key', 'retryable': True,
        'time_ms': 1234, 'source': 'public.orders@0/16B3748', 'payload': {'id': 1, 'name': 'Ada'},
    }
    json.dumps(letter.to_json(), allow_nan=False)


@pytest.mark.parametrize('payload', [b'\x00\xffWAL', bytearray(b'\x01\x02'), memoryview(b'ab'),
                                     b''])
def test_bytes_payloads_are_kept_as_base64(payload: Any) -> None:
    doc = DeadLetter('DecodeWal', 'PgOutputError: truncated', payload).to_json()
    assert base64.b64decode(doc['payload']['base64']) == bytes(payload)
    json.dumps(doc)


@pytest.mark.parametrize('payload', [
    {'amount': Decimal('1.50')},
    dt.datetime(2024, 1, 2, 3, 4, 5),
    {'row': b'raw', 'n': 1},
    float('nan'),
    {1, 2},
    object(),
])
def test_non_json_payloads_are_kept_as_their_repr(payload: Any) -> None:
    doc = DeadLetter('Convert', 'TypeError: not serialisable', payload).to_json()
    assert doc['payload'] == repr(payload)
    json.dumps(doc, allow_nan=False)


def test_from_exception_names_the_exception_type() -> None:
    letter = DeadLetter.from_exception('EncodeJson', ValueError('bad int'), 'row', retryable=False,
                                       source='public.t')
    assert letter.error == 'ValueError: bad int'
    assert (letter.step, letter.payload, letter.retryable, letter.source) == (
        'EncodeJson', 'row', False, 'public.t')
    assert letter.time_ms > 1_600_000_000_000  # ms, not s


@pytest.mark.parametrize('uri', ['', 'jsonl:', 'jsonl', '/var/dead', 'avro:/var/dead',
                                 'JSONL:/var/dead', 'file:///var/dead'])
def test_a_bad_uri_is_a_value_error_naming_it(uri: str) -> None:
    with pytest.raises(ValueError) as info:
        WriteDeadLetters(uri)
    assert repr(uri) in str(info.value)
    assert 'jsonl:DIR' in str(info.value)


def test_parse_dead_letter_uri_gives_the_directory() -> None:
    assert parse_dead_letter_uri('jsonl:/var/lib/cb/dead') == '/var/lib/cb/dead'
    assert parse_dead_letter_uri('jsonl:relative/dir') == 'relative/dir'


def _failing(element: int) -> Any:
    if element % 3 == 0:
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.from_exception(
            'Convert', ValueError(f'bad {element}'), element.to_bytes(2, 'big'),
            source=f'row {element}'))
    else:
        yield element


def test_write_dead_letters_in_a_real_pipeline(tmp_path: pathlib.Path) -> None:
    target = tmp_path / 'nested' / 'dead'  # created on demand
    with beam.Pipeline() as pipeline:
        results = (pipeline
                   | 'Create' >> beam.Create(range(30))
                   | 'Convert' >> beam.FlatMap(_failing).with_outputs(DEAD_LETTER, main='ok'))
        _ = results[DEAD_LETTER] | 'WriteDeadLetters' >> WriteDeadLetters(f'jsonl:{target}')

    letters = read_letters(target)
    assert sorted((d['source'], d['error']) for d in letters) == sorted(
        (f'row {n}', f'ValueError: bad {n}') for n in range(0, 30, 3))
    for doc in letters:
        number = int(doc['source'].split()[1])
        assert base64.b64decode(doc['payload']['base64']) == number.to_bytes(2, 'big')
        assert doc['step'] == 'Convert' and doc['retryable'] is False
    assert not [p for p in target.iterdir() if not p.name.endswith('.jsonl')]


def test_a_second_run_adds_a_file_and_keeps_the_first(tmp_path: pathlib.Path) -> None:
    for run in range(2):
        with beam.Pipeline() as pipeline:
            _ = (pipeline
                 | 'Create' >> beam.Create([DeadLetter('Step', f'run {run}', {'run': run})])
                 | 'WriteDeadLetters' >> WriteDeadLetters(f'jsonl:{tmp_path}'))
    assert sorted(d['error'] for d in read_letters(tmp_path)) == ['run 0', 'run 1']
    assert len(list(tmp_path.glob('*.jsonl'))) == 2


def test_no_letters_no_file(tmp_path: pathlib.Path) -> None:
    with beam.Pipeline() as pipeline:
        _ = (pipeline
             | 'Create' >> beam.Create([], reshuffle=False).with_output_types(DeadLetter)
             | 'WriteDeadLetters' >> WriteDeadLetters(f'jsonl:{tmp_path}'))
    assert list(tmp_path.iterdir()) == []


def test_each_bundle_is_fsynced(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transforms.dead_letter as module

    synced: list[int] = []
    real_fsync = module.os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(module.os, 'fsync', fsync)
    with beam.Pipeline() as pipeline:
        _ = (pipeline
             | 'Create' >> beam.Create([DeadLetter('Step', 'e', n) for n in range(5)])
             | 'WriteDeadLetters' >> WriteDeadLetters(f'jsonl:{tmp_path}'))
    assert synced, 'the dead letters were never fsynced'
    assert sorted(d['payload'] for d in read_letters(tmp_path)) == list(range(5))


def test_undecodable_text_in_a_letter_is_still_written(tmp_path: pathlib.Path) -> None:
    bad_sql = b'INSERT INTO t VALUES (\xff)'.decode('utf-8', 'surrogateescape')
    with beam.Pipeline() as pipeline:
        _ = (pipeline
             | 'Create' >> beam.Create([DeadLetter('DecodeBinlog', 'bad query', bad_sql),
                                        DeadLetter('DecodeBinlog', 'fine', 'ok')])
             | 'WriteDeadLetters' >> WriteDeadLetters(f'jsonl:{tmp_path}'))
    letters = read_letters(tmp_path)
    assert sorted(d['error'] for d in letters) == ['bad query', 'fine']
