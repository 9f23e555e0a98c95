"""The live progress line a source prints on stderr (``--progress``): changes read and
confirmed downstream, rate, lag and the source position, at most once a second."""
from __future__ import annotations

import sys
import time

__all__ = ['ProgressLine']


class ProgressLine:
    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._last = time.monotonic()
        self._last_total = 0

    def update(self, emitted: int, confirmed: int, lag_ms: float | None, where: str) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last < 1.0:
            return
        rate = (emitted - self._last_total) / (now - self._last)
        lag = '-' if lag_ms is None else f'{lag_ms:,.0f} ms'
        sys.stderr.write(f'\r[changebeam] {emitted:,} changes read, {confirmed:,} confirmed · '
                         f'{rate:,.0f}/s · lag {lag} · {where}   ')
        sys.stderr.flush()
        self._last, self._last_total = now, emitted
