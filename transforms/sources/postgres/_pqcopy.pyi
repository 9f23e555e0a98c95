"""Type stub of the replication stream's C frame loop (``_pqcopy.c``)."""
from typing import Any

def bind(path: str, /) -> Any: ...
def identify(libpq: Any, pgconn_ptr: int, /) -> tuple[int, int]: ...
def read_frames(
    libpq: Any,
    pgconn_ptr: int,
    max_frames: int,
    /,
) -> tuple[list[tuple[int, Any]], int, int, int, int, int]: ...
