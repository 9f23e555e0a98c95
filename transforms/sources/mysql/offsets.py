"""Where the MySQL/MariaDB source resumes: restriction positions and the offset store.

The source is a splittable DoFn over one integer per binlog position, monotonic across files
and across the servers it moved between (the epoch, see ``SourcePosition``)::

    encode_position('bin.000003', 1234)            # 3 << 32 | 1234
    decode_position(3 << 32 | 1234)                # (3, 1234)
    encode_position('bin.000001', 4, epoch=1)      # 1 << 56 | 1 << 32 | 4: after all of epoch 0

The offset store is one small JSON document at a URI (a local path, ``gs://…`` or
``s3://…``) holding the position just after the last transaction whose events the sink
committed, as a GTID state and as file/pos, and whether the initial snapshot reached the sink::

    store = OffsetStore('/var/lib/changebeam/shop.offset.json')
    store.save(Offset(file='bin.000003', pos=1234, gtid='0-1-120', snapshot='done'))
    store.load()                           # Offset(...) or None before the first save

A local file is replaced atomically (temporary file, fsync, rename, fsync of the directory), so
a crash leaves the old document or the new one, never a torn one; an object store writes an
object whole or not at all.  The source writes the store only in Beam's bundle finalizer, i.e.
after the sink committed everything up to the stored position.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from transforms.envelope import EPOCH_SHIFT, MAX_EPOCH
from transforms.retry import with_retries

__all__ = [
    'POSITION_END',
    'SNAPSHOT_STATES',
    'Offset',
    'OffsetStore',
    'OffsetStoreError',
    'decode_position',
    'encode_position',
    'epoch_of',
    'file_index',
]

POSITION_END = (1 << 63) - 1
"""The end of the unbounded restriction (exclusive)."""

_POS_BITS = 32  # a binlog event header holds its end position in 4 bytes
_FORMAT = 1
_REMOTE_SCHEMES = ('gs', 's3')

SNAPSHOT_STATES = ('pending', 'done', 'skipped')
"""``pending``: a snapshot was started and its rows may not have reached the sink (a restart
takes it again); ``done``: they did; ``skipped``: the pipeline started without one."""


class OffsetStoreError(RuntimeError):
    """The offset store cannot be read or written; the message names the URI and the fix."""


def file_index(file: str) -> int:
    """The sequence number of a binlog file name (``bin.000003`` -> 3)."""
    suffix = file.rsplit('.', 1)[-1]
    if '.' not in file or not suffix.isdigit():
        raise ValueError(f'binlog file name {file!r} does not end in .NUMBER')
    return int(suffix)


def encode_position(file: str, pos: int, epoch: int = 0) -> int:
    """One integer per binlog position, increasing with (epoch, file sequence number,
    offset)."""
    if not 0 <= pos < 1 << _POS_BITS:
        raise ValueError(f'binlog pos {pos} out of range')
    index = file_index(file)
    if index >= 1 << EPOCH_SHIFT:
        raise ValueError(f'binlog file number {index} of {file!r} is beyond '
                         f'{(1 << EPOCH_SHIFT) - 1}')
    if not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f'epoch {epoch} out of range (at most {MAX_EPOCH} server moves)')
    return (epoch << EPOCH_SHIFT | index) << _POS_BITS | pos


def epoch_of(position: int) -> int:
    """The epoch of an encoded position."""
    return position >> (EPOCH_SHIFT + _POS_BITS)


def decode_position(position: int) -> tuple[int, int]:
    """(file sequence number, offset) of an encoded position, whatever its epoch."""
    return (position >> _POS_BITS) & ((1 << EPOCH_SHIFT) - 1), position & ((1 << _POS_BITS) - 1)


@dataclasses.dataclass(frozen=True)
class Offset:
    """Where to resume: just after the last transaction whose events the sink committed.

    ``gtid`` is the GTID state at that point (MariaDB ``domain-server-seq`` per domain, MySQL a
    GTID set), None when the server writes no GTIDs; ``file``/``pos`` is the same point in the
    binlog of the server with id ``server_id``.  A resume prefers the GTID (it survives a
    failover); file/pos serves when there is none.  ``snapshot`` is one of
    :data:`SNAPSHOT_STATES`.  ``epoch`` counts the source's moves to another server (see
    ``SourcePosition``); a resume on a server other than ``server_id`` moves once more.
    ``tables`` are the ``db.table`` names a ``--tables`` list captured (None: every table of
    the databases), so a restart can tell which tables it adds.
    """

    file: str | None
    pos: int
    gtid: str | None = None
    snapshot: str = 'done'
    server_id: int | None = None
    epoch: int = 0
    tables: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.file is None and not self.gtid:
            raise ValueError('an offset needs a binlog file/pos or a GTID')
        if self.snapshot not in SNAPSHOT_STATES:
            raise ValueError(f'snapshot state {self.snapshot!r} must be one of '
                             f'{", ".join(SNAPSHOT_STATES)}')

    def to_json(self) -> dict[str, Any]:
        return {'format': _FORMAT, 'gtid': self.gtid, 'file': self.file, 'pos': self.pos,
                'snapshot': self.snapshot, 'server_id': self.server_id, 'epoch': self.epoch,
                'tables': None if self.tables is None else list(self.tables),
                'written_ms': int(time.time() * 1000)}

    @classmethod
    def from_json(cls, doc: Any) -> Offset:
        if not isinstance(doc, dict) or doc.get('format') != _FORMAT:
            raise ValueError(f'not a changebeam offset document (format {_FORMAT})')
        return cls(file=doc.get('file'), pos=int(doc.get('pos') or 4), gtid=doc.get('gtid'),
                   snapshot=doc.get('snapshot', 'done'), server_id=doc.get('server_id'),
                   epoch=int(doc.get('epoch') or 0),
                   tables=None if doc.get('tables') is None else tuple(doc['tables']))


class OffsetStore:
    """One offset document at ``uri``: a local path (or ``file://``), ``gs://`` or ``s3://``.

    ``options`` are Beam pipeline options for the remote filesystem (``s3_endpoint_url`` …);
    without them Beam's process-wide options apply.
    """

    def __init__(self, uri: str, options: Mapping[str, Any] | None = None) -> None:
        if not uri or not uri.strip():
            raise ValueError('offset store URI is empty; use a file path, gs://BUCKET/PATH or '
                             's3://BUCKET/PATH')
        scheme, sep, rest = uri.partition('://')
        if sep and scheme == 'file':
            uri = rest
        elif sep and scheme not in _REMOTE_SCHEMES:
            raise ValueError(f'offset store {uri!r}: unsupported scheme {scheme!r}; use a file '
                             'path, gs://BUCKET/PATH or s3://BUCKET/PATH')
        elif sep and '/' not in rest.strip('/'):
            raise ValueError(f'offset store {uri!r} names a bucket but no object; use '
                             f'{scheme}://BUCKET/PATH')
        if uri.endswith('/'):
            raise ValueError(f'offset store {uri!r} is a directory; name a file in it, e.g. '
                             f'{uri}offsets.json')
        self._uri = uri
        self._remote = bool(sep) and scheme != 'file'
        self._options = dict(options or {})
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        return self._uri

    def load(self) -> Offset | None:
        """The stored offset, or None if nothing was stored yet."""
        try:
            data = with_retries(self._read, f'reading {self._uri}') if self._remote else \
                self._read()
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise OffsetStoreError(f'cannot read the offset store {self._uri}: {exc}') from exc
        if data is None:
            return None
        try:
            return Offset.from_json(json.loads(data))
        except (ValueError, TypeError) as exc:
            raise OffsetStoreError(
                f'the offset store {self._uri} holds no valid offset ({exc}); delete it and '
                'restart with --snapshot initial') from None

    def save(self, offset: Offset) -> None:
        """Writes ``offset`` (an object store's write is made again if it fails)."""
        data = json.dumps(offset.to_json(), sort_keys=True).encode()
        with self._lock:
            try:
                if self._remote:
                    with_retries(lambda: self._write(data), f'writing {self._uri}')
                else:
                    self._write(data)
            except Exception as exc:
                raise OffsetStoreError(
                    f'cannot write the offset store {self._uri}: {exc}') from exc

    def delete(self) -> None:
        """Removes the stored offset (the next start takes a snapshot or starts at the end)."""
        if self._remote:
            fs = self._filesystem()
            if fs.exists(self._uri):
                fs.delete([self._uri])
            return
        try:
            os.unlink(self._uri)
        except FileNotFoundError:
            pass

    # -- storage ---------------------------------------------------------------------------

    def _filesystem(self) -> Any:
        from apache_beam.io.filesystems import FileSystems

        fs = FileSystems.get_filesystem(self._uri)
        if self._options:
            from apache_beam.options.pipeline_options import PipelineOptions

            # Explicit options win over the process-wide ones FileSystems.set_options installed.
            fs = type(fs)(PipelineOptions.from_dictionary(self._options))
        return fs

    def _read(self) -> bytes | None:
        if self._remote:
            fs = self._filesystem()
            if not fs.exists(self._uri):
                return None
            with fs.open(self._uri) as handle:
                return bytes(handle.read())
        with open(self._uri, 'rb') as handle:
            return handle.read()

    def _write(self, data: bytes) -> None:
        if self._remote:
            from apache_beam.io.filesystem import CompressionTypes

            with self._filesystem().create(
                    self._uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                handle.write(data)  # the object appears whole on close, or not at all
            return
        directory = os.path.dirname(os.path.abspath(self._uri))
        os.makedirs(directory, exist_ok=True)
        temp = f'{self._uri}.{os.getpid()}.{threading.get_ident()}.tmp'
        try:
            with open(temp, 'wb') as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self._uri)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        # The rename itself must survive a power loss: sync the directory entry too.
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
