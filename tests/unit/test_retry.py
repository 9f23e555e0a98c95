"""transforms.retry: a repeatable step made again after failures, then given up on."""
from __future__ import annotations

import logging

import pytest

from transforms import retry


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(retry.time, 'sleep', slept.append)
    return slept


def test_a_step_that_fails_then_works_is_made_again_with_growing_pauses(
        pauses: list[float], caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 5:
            raise ConnectionResetError(f'reset {len(calls)}')
        return 'done'

    with caplog.at_level(logging.WARNING):
        assert retry.with_retries(flaky, 'uploading x') == 'done'
    assert len(calls) == 5 and pauses == [0.5, 1.0, 2.0, 4.0]
    assert 'uploading x failed (reset 4); trying again in 4.0 s (attempt 4 of 6)' in caplog.text


def test_the_last_error_is_raised_after_every_attempt(pauses: list[float]) -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise PermissionError(f'denied {len(calls)}')

    with pytest.raises(PermissionError, match='denied 6'):
        retry.with_retries(broken, 'writing y')
    assert len(calls) == retry.ATTEMPTS == 6 and pauses == [0.5, 1.0, 2.0, 4.0, 8.0]
