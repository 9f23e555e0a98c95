"""The live progress line a source prints on stderr (``--progress``): changes read and
confirmed downstream, rate, lag and the source position, at most once a second.

The line is rewritten in place (``\r``); a log record printed meanwhile first ends it, so
records never run on after the line and the line goes on below them."""
from __future__ import annotations

import logging
import sys
import time

__all__ = ['ProgressLine']

_OPEN = [False]  # a progress line is on the terminal, not ended yet


class _EndTheLine(logging.Filter):
    """On the root logger's handlers: a record starts on a line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _OPEN[0]:
            _OPEN[0] = False
            sys.stderr.write('\n')
        return True


class ProgressLine:
    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._last = time.monotonic()
        self._last_total = 0
        self._width = 0
        if enabled:
            for handler in logging.getLogger().handlers:
                if not any(isinstance(f, _EndTheLine) for f in handler.filters):
                    handler.addFilter(_EndTheLine())

    def update(self, emitted: int, confirmed: int, lag_ms: float | None, where: str) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last < 1.0:
            return
        rate = (emitted - self._last_total) / (now - self._last)
        lag = '-' if lag_ms is None else f'{lag_ms:,.0f} ms'
        text = (f'[changebeam] {emitted:,} changes read, {confirmed:,} confirmed · '
                f'{rate:,.0f}/s · lag {lag} · {where}')
        # Spaces over what a longer line before left (no escape codes: it may be a file).
        sys.stderr.write('\r' + text + ' ' * max(0, self._width - len(text)))
        sys.stderr.flush()
        self._width = len(text)
        _OPEN[0] = True
        self._last, self._last_total = now, emitted
