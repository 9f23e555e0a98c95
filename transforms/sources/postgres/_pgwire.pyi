"""Type stub of the C fast paths of ``pgtypes.wire_row_decoder``, ``wire_row_renderer`` and
``wire_doc_renderer`` (``_pgwire.c``)."""
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

def render_tuple(
    keys: tuple[bytes, ...],
    modes: bytes,
    buf: bytes,
    offset: int,
    /,
) -> tuple[bytes, int] | None: ...

def render_doc(
    keys: tuple[bytes, ...],
    modes: bytes,
    buf: bytes,
    offset: int,
    parts: tuple[bytes, ...],
    values: tuple[int | bytes, ...],
    /,
) -> bytes | None: ...
