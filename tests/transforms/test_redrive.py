"""pipelines.redrive into a file sink: dead letters back to events, in source order, moved aside
only once written; letters without an event, of another step, or in a dry run stay."""
from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from pipelines import redrive
from transforms.dead_letter import DeadLetter, event_payload
from transforms.envelope import (
    ChangeEvent,
    Column,
    Kind,
    Op,
    SourcePosition,
    TableSchema,
    from_debezium_json,
)

ORDERS = TableSchema('public', 'orders', (
    Column('id', Kind.INT64, 'bigint', nullable=False),
    Column('total', Kind.DECIMAL, 'numeric(10,2)', precision=10, scale=2),
    Column('raw', Kind.BYTES, 'bytea'),
), key=('id',))


def order(n: int) -> ChangeEvent:
    source = SourcePosition('postgresql', 'shop', 'shop', 'public', 'orders', 1_700_000_000_000,
                            commit_lsn=n * 10, lsn=n * 10 + 1)
    return ChangeEvent(Op.CREATE, ORDERS, source, after={'id': n, 'raw': bytes([n])})


def line(step: str, payload: Any) -> str:
    return json.dumps(DeadLetter(step, 'IntegrityError: no', payload).to_json()) + '\n'


def summary_of(capsys: pytest.CaptureFixture[str]) -> str:
    return next(s for s in capsys.readouterr().err.splitlines()
            if s.startswith('changebeam redrive: read'))


def written(lake: pathlib.Path) -> list[int]:
    return [from_debezium_json(json.loads(text), ORDERS).after['id']  # type: ignore[index]
            for path in sorted((lake / 'public.orders').glob('*.jsonl'))
            for text in path.read_text().splitlines()]


def test_events_are_written_in_source_order_and_only_theirs_moved_aside(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead, lake = tmp_path / 'dead', tmp_path / 'lake'
    dead.mkdir()
    # Out of order across two files; one event twice (a retried bundle); one file mixed.
    (dead / 'a.jsonl').write_text(line('EncodeJson', event_payload(order(3)))
                                  + line('EncodeJson', event_payload(order(1))))
    (dead / 'b.jsonl').write_text(line('DecodeWal', b'\x00')
                                  + line('EncodeJson', event_payload(order(2)))
                                  + line('EncodeJson', event_payload(order(1))))
    whole_before = (dead / 'a.jsonl').read_text()
    mixed_before = (dead / 'b.jsonl').read_text().splitlines(keepends=True)

    argv = ['--dead_letter', f'jsonl:{dead}', '--sink', f'jsonl:{lake}',
            '--failed', f'jsonl:{tmp_path / "failed"}']
    assert redrive.main([*argv, '--dry_run']) == 0
    assert summary_of(capsys) == ('changebeam redrive: read 5, would re-apply 3, skipped 1 '
                                  '(not an event), duplicates 1 (dry run)')
    assert not lake.exists() and not (dead / 'redriven').exists()

    assert redrive.main(argv) == 0
    assert summary_of(capsys) == ('changebeam redrive: read 5, re-applied 3, failed again 0, '
                                  'skipped 1 (not an event), duplicates 1')
    assert written(lake) == [1, 2, 3]
    assert sorted(p.name for p in dead.glob('*.jsonl')) == ['b.jsonl']
    assert (dead / 'b.jsonl').read_text().splitlines(keepends=True) == mixed_before[:1]
    assert (dead / 'redriven' / 'a.jsonl').read_text() == whole_before  # byte for byte
    assert (dead / 'redriven' / 'b.jsonl').read_text().splitlines(keepends=True) == \
        mixed_before[1:]

    assert redrive.main(argv) == 0  # again: nothing left to apply
    assert summary_of(capsys) == ('changebeam redrive: read 1, re-applied 0, failed again 0, '
                                  'skipped 1 (not an event)')
    assert written(lake) == [1, 2, 3]


def test_only_step_leaves_the_other_steps_letters_in_place(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead, lake = tmp_path / 'dead', tmp_path / 'lake'
    dead.mkdir()
    (dead / 'a.jsonl').write_text(line('WriteChangesToPostgres', event_payload(order(1)))
                                  + line('EncodeJson', event_payload(order(2))))
    assert redrive.main(['--dead_letter', f'jsonl:{dead}', '--sink', f'jsonl:{lake}',
                         '--only-step', 'EncodeJson',
                         '--failed', f'jsonl:{tmp_path / "failed"}']) == 0
    assert summary_of(capsys) == ('changebeam redrive: read 2, re-applied 1, failed again 0, '
                                  'skipped 0 (not an event), left 1 (other step)')
    assert written(lake) == [2]
    assert [json.loads(s)['step'] for s in (dead / 'a.jsonl').read_text().splitlines()] == \
        ['WriteChangesToPostgres']


@pytest.mark.parametrize('argv, option', [
    (['--dead_letter', 'dead', '--sink', 'jsonl:out'], '--dead_letter'),
    (['--dead_letter', 'jsonl:{tmp}', '--sink', 'csv:out'], '--sink'),
    (['--dead_letter', 'jsonl:{tmp}/missing', '--sink', 'jsonl:out'], '--dead_letter'),
    (['--dead_letter', 'jsonl:{tmp}', '--sink', 'jsonl:out', '--tombstone_retention_hours',
      '-1'], '--tombstone_retention_hours'),
])
def test_a_bad_option_is_one_line_and_exit_status_2(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        option: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        redrive.main([a.replace('{tmp}', str(tmp_path)) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f'python -m pipelines.redrive: error: {option} ')
