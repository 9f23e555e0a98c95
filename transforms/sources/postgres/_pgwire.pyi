"""Type stub of the C fast path of ``pgtypes.wire_row_decoder`` (``_pgwire.c``)."""
from collections.abc import Callable
from typing import Any

def decode_tuple(
    names: tuple[str, ...],
    modes: bytes,
    parsers: tuple[Callable[[str], Any] | None, ...],
    buf: bytes,
    offset: int,
    /,
) -> tuple[dict[str, Any], int] | None: ...
