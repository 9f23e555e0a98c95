"""What the tests of waits share: work run on a thread of its own, and a log line waited for."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Background:
    """``work()`` on a daemon thread: what it returned (``result``) or raised (``error``)."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._work = work
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._work()
        except BaseException as exc:
            self.error = exc

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Whether the work ended within ``timeout`` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def wait_for_log(caplog: Any, matches: Callable[[str], bool], timeout: float) -> str | None:
    """The first captured log message ``matches`` accepts, waiting up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        for record in caplog.records:
            if matches(record.getMessage()):
                return record.getMessage()
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
