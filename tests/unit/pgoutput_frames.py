"""Test-only encoder of pgoutput messages: the inverse of the decoder, written from the spec.

``encode(message)`` gives the bytes the walsender would send for a decoded message; a message
whose ``xid`` is not None is encoded as inside a stream block (xid after the type byte).
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from transforms.sources.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeMessage,
    Update,
)

PG_EPOCH_US = 946_684_800_000_000


def _u8(value: int) -> bytes:
    return struct.pack('!B', value)


def _u16(value: int) -> bytes:
    return struct.pack('!H', value)


def _u32(value: int) -> bytes:
    return struct.pack('!I', value)


def _i32(value: int) -> bytes:
    return struct.pack('!i', value)


def _u64(value: int) -> bytes:
    return struct.pack('!Q', value)


def _ts(unix_us: int) -> bytes:
    return struct.pack('!q', unix_us - PG_EPOCH_US)


def _string(value: str) -> bytes:
    return value.encode() + b'\0'


def _xid(xid: int | None) -> bytes:
    return b'' if xid is None else _u32(xid)


class RawText(bytes):
    """A text value given as its bytes, as they go on the wire (invalid UTF-8 too)."""


def tuple_data(values: Sequence[Any], count: int | None = None) -> bytes:
    """TupleData: str or RawText as text ('t'), None as null, UNCHANGED_TOAST as 'u', other
    bytes-like as a binary value ('b'); ``count`` overrides the column count written."""
    out = [_u16(len(values) if count is None else count)]
    for value in values:
        if value is None:
            out.append(b'n')
        elif value is UNCHANGED_TOAST:
            out.append(b'u')
        elif isinstance(value, (str, RawText)):
            data = value.encode() if isinstance(value, str) else bytes(value)
            out.append(b't' + _u32(len(data)) + data)
        else:
            out.append(b'b' + _u32(len(value)) + bytes(value))
    return b''.join(out)


def encode(message: Any) -> bytes:
    """The pgoutput bytes of a decoded message."""
    m = message
    if isinstance(m, Begin):
        return b'B' + _u64(m.final_lsn) + _ts(m.commit_ts) + _u32(m.xid)
    if isinstance(m, Commit):
        return b'C' + _u8(m.flags) + _u64(m.commit_lsn) + _u64(m.end_lsn) + _ts(m.commit_ts)
    if isinstance(m, Origin):
        return b'O' + _u64(m.commit_lsn) + _string(m.name)
    if isinstance(m, Relation):
        columns = b''.join(_u8(int(c.is_key)) + _string(c.name) + _u32(c.type_oid)
                           + _i32(c.type_modifier) for c in m.columns)
        return (b'R' + _xid(m.xid) + _u32(m.oid) + _string(m.namespace) + _string(m.name)
                + m.replica_identity.encode() + _u16(len(m.columns)) + columns)
    if isinstance(m, TypeMessage):
        return b'Y' + _xid(m.xid) + _u32(m.oid) + _string(m.namespace) + _string(m.name)
    if isinstance(m, Insert):
        return b'I' + _xid(m.xid) + _u32(m.relation_oid) + b'N' + tuple_data(m.new)
    if isinstance(m, Update):
        before = b''
        if m.key is not None:
            before = b'K' + tuple_data(m.key)
        elif m.old is not None:
            before = b'O' + tuple_data(m.old)
        return (b'U' + _xid(m.xid) + _u32(m.relation_oid) + before + b'N'
                + tuple_data(m.new))
    if isinstance(m, Delete):
        before = b'K' + tuple_data(m.key) if m.key is not None else b'O' + tuple_data(m.old)
        return b'D' + _xid(m.xid) + _u32(m.relation_oid) + before
    if isinstance(m, Truncate):
        options = int(m.cascade) | (2 if m.restart_identity else 0)
        return (b'T' + _xid(m.xid) + _u32(len(m.relation_oids)) + _u8(options)
                + b''.join(_u32(oid) for oid in m.relation_oids))
    if isinstance(m, LogicalMessage):
        return (b'M' + _xid(m.xid) + _u8(int(m.transactional)) + _u64(m.lsn)
                + _string(m.prefix) + _u32(len(m.content)) + m.content)
    if isinstance(m, StreamStart):
        return b'S' + _u32(m.xid) + _u8(int(m.first_segment))
    if isinstance(m, StreamStop):
        return b'E'
    if isinstance(m, StreamCommit):
        return (b'c' + _u32(m.xid) + _u8(m.flags) + _u64(m.commit_lsn) + _u64(m.end_lsn)
                + _ts(m.commit_ts))
    if isinstance(m, StreamAbort):
        return b'A' + _u32(m.xid) + _u32(m.subxid)
    raise TypeError(f'cannot encode {m!r}')
