"""Type stub of the SQL sink's C COPY text renderer (``_copytext.c``)."""
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
