"""The --progress line: rewritten in place, never glued to a log record, shorter lines clean."""
from __future__ import annotations

import logging
import sys

import pytest

from transforms.sources import progress
from transforms.sources.progress import ProgressLine


def test_a_log_record_starts_on_a_line_of_its_own(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # as basicConfig makes it, on stderr
    handler.setFormatter(logging.Formatter('%(levelname)s %(message)s'))
    monkeypatch.setattr(root, 'handlers', [handler])
    monkeypatch.setattr(progress, '_OPEN', [False])
    clock = iter(float(n) for n in range(0, 100, 2))
    monkeypatch.setattr(progress.time, 'monotonic', lambda: next(clock))
    line = ProgressLine(True)
    line.update(120, 100, 21775.0, 'slot at 0/1517D20')
    logging.getLogger('x').warning('reconnecting')
    line.update(120, 120, 0.0, 'slot at 0/1')
    err = capsys.readouterr().err
    first, record, second = err.split('\n')
    assert first == ('\r[changebeam] 120 changes read, 100 confirmed · 60/s · lag 21,775 ms · '
                     'slot at 0/1517D20')
    assert record == 'WARNING reconnecting'
    shorter = '[changebeam] 120 changes read, 120 confirmed · 0/s · lag 0 ms · slot at 0/1'
    assert second == '\r' + shorter + ' ' * (len(first) - 1 - len(shorter))


def test_without_progress_records_are_left_alone(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(logging.getLogger(), 'handlers', [handler])
    ProgressLine(False).update(1, 1, None, 'x')
    assert not handler.filters
    assert capsys.readouterr().err == ''
