"""Trying again what failed on the way to an object store.

    with_retries(lambda: upload(spool), f'uploading {name}')

Client libraries retry what they recognise as transient; a connection broken in the middle of
a request or a reply still surfaces as whatever error the library's parser made of it.  What
goes through here is a whole, repeatable step (an upload from a local copy, the write of a
small document), so it is simply made again, up to ``ATTEMPTS`` times with pauses growing from
``FIRST_PAUSE_S`` to ``LONGEST_PAUSE_S``; the last error is raised.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ['ATTEMPTS', 'FIRST_PAUSE_S', 'LONGEST_PAUSE_S', 'with_retries']

ATTEMPTS = 6
FIRST_PAUSE_S = 0.5
LONGEST_PAUSE_S = 8.0

_LOG = logging.getLogger(__name__)
_T = TypeVar('_T')


def with_retries(work: Callable[[], _T], what: str) -> _T:
    """``work()``, made again after any exception, for up to ``ATTEMPTS`` attempts."""
    pause = FIRST_PAUSE_S
    for attempt in range(1, ATTEMPTS):
        try:
            return work()
        except Exception as exc:
            reason = ' '.join(str(exc).split())[:300] or type(exc).__name__
            _LOG.warning('%s failed (%s); trying again in %.1f s (attempt %d of %d)', what,
                         reason, pause, attempt, ATTEMPTS)
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE_S)
    return work()
