"""Type stub of the SQL sinks' C row renderers (``_copytext.c``)."""
from collections.abc import Iterable, Sequence
from typing import Any

def rows_text(
    codes: tuple[int, ...],
    rows: Sequence[Iterable[Any]],
    tails: Sequence[str],
    /,
) -> str | None: ...
def rows_binary(
    codes: tuple[int, ...],
    rows: Sequence[Iterable[Any]],
    tails: Sequence[str],
    /,
) -> bytes | None: ...
def rows_sql(
    codes: tuple[int, ...],
    rows: Sequence[Iterable[Any]],
    tails: Sequence[str],
    limit: int,
    /,
) -> list[str] | None: ...
