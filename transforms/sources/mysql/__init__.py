"""MySQL/MariaDB change data capture from the binlog.

    from transforms.sources.mysql import ReadMySqlChanges

Pure modules (no Beam): ``binlog`` (event decoder), ``rows`` and ``types`` (row values),
``gtid`` (resume positions), ``stream`` (the dump connection), ``snapshot`` (the initial copy),
``offsets`` (restriction positions and the offset store).  ``read`` holds the Beam transform;
it is imported on first use so the decoders stay cheap to import.
"""
from __future__ import annotations

from typing import Any

__all__ = ['ReadMySqlChanges']  # lazy, see __getattr__


def __getattr__(name: str) -> Any:
    if name == 'ReadMySqlChanges':
        from transforms.sources.mysql.read import ReadMySqlChanges

        return ReadMySqlChanges
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
