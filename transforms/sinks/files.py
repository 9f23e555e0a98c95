"""``WriteChangesToFiles``: change events as JSON Lines, Avro or Parquet files, never half-written.

    dead = events | 'WriteFiles' >> WriteChangesToFiles('avro:s3://lake/changes')

``jsonl:DIR``, ``avro:DIR`` or ``parquet:DIR``, where DIR is a local directory, ``s3://bucket/prefix``
or ``gs://bucket/prefix``.  JSON Lines go to ``DIR/schema.table/``; Avro and Parquet files hold one
schema each and go to ``DIR/schema.table/v=<schema_version>/`` (a new file whenever an event's
table schema or version differs from the open file's).

Commit protocol: each bundle writes each file under a hidden temporary name
(``.part-<writer>-<n>.<ext>.tmp``; for S3 and GCS a local spool), and in ``finish_bundle``, or
as soon as it exceeds ``max_file_bytes``, finishes it as ``part-<ms>-<writer>-<seq>.<ext>``:
a local file is fsynced and renamed, an object uploaded whole (again, should an upload fail).
A reader listing ``*.avro`` never sees a partial file, and what a bundle wrote is durable
before the source acknowledges it.  A replay after a crash may write an event
again in a later file (at-least-once); ``source`` positions tell the copies apart.

An event that cannot be encoded goes to the ``DEAD_LETTER`` output, with the error naming the
field; the rest of its file is written.  docs/files.md has the layout, the Parquet type mapping
and the S3/GCS options.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any, NoReturn, cast

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

import transforms.coders  # noqa: F401  (registers the ChangeEvent coder)
from transforms.dead_letter import DEAD_LETTER, DeadLetter, event_payload
from transforms.envelope import (
    ChangeEvent,
    Column,
    EnvelopeError,
    Kind,
    RenderedChanges,
    TableSchema,
    avro_schema,
    debezium_json_bytes,
    dumps,
    encode_json_value,
    to_avro_record,
)
from transforms.envelope_avro_binary import avro_encoder
from transforms.retry import with_retries

__all__ = ['FILE_FORMATS', 'WriteChangesToFiles']

_LOG = logging.getLogger(__name__)

FILE_FORMATS = ('jsonl', 'avro', 'parquet')
_SCHEMES = ('s3', 'gs')
_DEFAULT_CODECS = {'jsonl': None, 'avro': 'deflate', 'parquet': 'snappy'}
_AVRO_CODECS = ('null', 'deflate', 'bzip2', 'snappy', 'zstandard', 'xz', 'lz4')
_PARQUET_CODECS = ('none', 'snappy', 'gzip', 'brotli', 'zstd', 'lz4')
_DEFAULT_MAX_FILE_BYTES = 128 * 2**20
_DEFAULT_ROW_GROUP_ROWS = 10_000
_AVRO_BLOCK_BYTES = 64 * 1024
_FOOTER_BYTES_PER_CHUNK = 110
_ARROW_BATCH_ROWS = 1_000  # Parquet rows converted to Arrow at a time
_GCS_CHUNK_BYTES = 8 * 2**20  # resumable upload chunk
_SPOOL_BYTES = 8 * 2**20  # an s3:// or gs:// file held in memory; beyond, in a local temp file
# The filesystem options a worker needs; captured from the pipeline's options at expand time.
_FILESYSTEM_OPTION_PREFIXES = ('s3_', 'project')


# ---------------------------------------------------------------------------------------------
# The URI

@dataclasses.dataclass(frozen=True)
class _Target:
    """A parsed sink URI: the file format and the root directory (local path or object URL)."""

    format: str
    root: str
    scheme: str  # '' for a local directory, else 's3' or 'gs'

    def join(self, *parts: str) -> str:
        if not self.scheme:
            return os.path.join(self.root, *parts)
        return '/'.join([self.root.rstrip('/'), *parts])


def _parse_uri(uri: str) -> _Target:
    fmt, sep, root = uri.partition(':')
    valid = ', '.join(f'{f}:DIR' for f in FILE_FORMATS)
    hint = f'use {valid} (DIR a local directory, s3://bucket/prefix or gs://bucket/prefix)'
    if not sep or fmt not in FILE_FORMATS or not root:
        raise ValueError(f'file sink {uri!r}: {hint}')
    if '://' not in root:
        return _Target(fmt, root, '')
    scheme, _, rest = root.partition('://')
    if scheme not in _SCHEMES:
        raise ValueError(f'file sink {uri!r}: {scheme}:// is not supported; {hint}')
    bucket = rest.split('/', 1)[0]
    if not bucket or any(c.isspace() for c in bucket) or bucket in ('.', '..'):
        raise ValueError(f'file sink {uri!r}: no bucket name; {hint}')
    return _Target(fmt, root, scheme)


def _directory_name(table: TableSchema) -> str:
    # Table names may hold '/', NUL or '..': percent-encode what is unsafe (reversibly, so two
    # tables never share a directory) and never start with a dot.
    name = urllib.parse.quote(table.name, safe='._$-') or '_'
    return '%2E' + name[1:] if name.startswith('.') else name


# ---------------------------------------------------------------------------------------------
# Where bytes go: a local directory, Beam's FileSystems (s3://), or google-cloud-storage (gs://)

class _CountingStream:
    """A write-only stream that counts what went through it (pyarrow needs ``tell``)."""

    def __init__(self, raw: Any, name: str = '') -> None:
        self.raw = raw
        self.name = name  # for errors: a full disk's OSError names no file
        self.size = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            self.raw.write(data)
        except OSError as exc:
            _raise_naming(exc, self.name)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def seekable(self) -> bool:  # fastavro asks, to decide whether to append
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        # Closing is the store's job (commit or abort): a format writer's close() must not
        # finish an upload that is about to be discarded.
        self.closed = True


def _raise_naming(exc: OSError, path: str) -> NoReturn:
    """Raise ``exc``, with ``path`` as its file name when it names none (a failed write's does
    not: "No space left on device" should say where)."""
    if exc.filename is not None or not path:
        raise exc
    raise type(exc)(exc.errno, exc.strerror, path) from exc


class _Store:
    """Creates a file under a temporary name, then commits (renames) or aborts it."""

    def create(self, path: str) -> Any:
        raise NotImplementedError

    def commit(self, raw: Any, temp: str, final: str) -> None:
        raise NotImplementedError

    def abort(self, raw: Any, temp: str) -> None:
        raise NotImplementedError


class _LocalStore(_Store):
    def create(self, path: str) -> IO[bytes]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, 'wb')

    def commit(self, raw: IO[bytes], temp: str, final: str) -> None:
        try:
            raw.flush()
            os.fsync(raw.fileno())  # a full disk may show only now
            raw.close()
        except OSError as exc:
            _raise_naming(exc, temp)
        os.replace(temp, final)
        # The rename itself must survive a power loss, not just the file's contents.
        fd = os.open(os.path.dirname(final), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self, raw: IO[bytes], temp: str) -> None:
        # Closing flushes what is buffered, which fails again on a full disk: the file is
        # closed all the same, and the error that made us abort is the one to report.
        with contextlib.suppress(OSError):
            raw.close()
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


class _RemoteStore(_Store):
    """An object store.  A file is spooled locally (in memory up to ``_SPOOL_BYTES``, then in a
    temporary file) and uploaded whole to its final name when committed: an object appears
    only complete, and an upload that fails (a connection reset, throttling, a 5xx the client
    library gave up on) is simply made again from the spool (``transforms.retry``) before the
    error fails the bundle."""

    def create(self, path: str) -> Any:
        return tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)

    def commit(self, raw: Any, temp: str, final: str) -> None:
        def upload() -> None:
            raw.seek(0)
            self._upload(raw, final)

        try:
            with_retries(upload, f'uploading {final}')
        finally:
            raw.close()

    def abort(self, raw: Any, temp: str) -> None:
        raw.close()  # nothing was uploaded: only commit uploads

    def _upload(self, spool: IO[bytes], final: str) -> None:
        raise NotImplementedError


class _BeamStore(_RemoteStore):
    """s3:// through Beam's FileSystems (a multipart upload for a large file)."""

    def __init__(self, root: str, options: Mapping[str, Any]) -> None:
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions

        global_fs = FileSystems.get_filesystem(root)
        # Explicit options win over the process-wide ones FileSystems.set_options installed.
        self._fs = (type(global_fs)(PipelineOptions.from_dictionary(dict(options)))
                    if options else global_fs)

    def _upload(self, spool: IO[bytes], final: str) -> None:
        from apache_beam.io.filesystem import CompressionTypes

        out = self._fs.create(final, compression_type=CompressionTypes.UNCOMPRESSED)
        shutil.copyfileobj(spool, out, _SPOOL_BYTES)
        out.close()  # completes the upload: the object appears now


class _GcsStore(_RemoteStore):
    """gs:// through google-cloud-storage, never overwriting an object.

    Beam's GCS filesystem looks for credentials for ~20 s before connecting anonymously; the
    client library honours ``STORAGE_EMULATOR_HOST`` and needs no credentials there.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        try:
            from google.cloud import storage  # type: ignore[attr-defined]
        except ImportError:
            raise ImportError("gs:// file sinks need google-cloud-storage: "
                              "pip install 'changebeam[gcp]'") from None
        self._client = storage.Client(project=options.get('project'))

    def _upload(self, spool: IO[bytes], final: str) -> None:
        from google.api_core.exceptions import PreconditionFailed

        bucket, _, name = final.removeprefix('gs://').partition('/')
        blob = self._client.bucket(bucket).blob(name, chunk_size=_GCS_CHUNK_BYTES)
        try:
            blob.upload_from_file(spool, if_generation_match=0)
        except PreconditionFailed:
            # The object exists: an earlier attempt's upload whose answer was lost, or
            # another writer's object under the same name, which is not overwritten.
            blob.reload()
            if blob.md5_hash != _md5_base64(spool):
                raise
            _LOG.info('%s was uploaded by an earlier attempt', final)


def _md5_base64(spool: IO[bytes]) -> str:
    spool.seek(0)
    digest = hashlib.md5(usedforsecurity=False)
    while chunk := spool.read(_SPOOL_BYTES):
        digest.update(chunk)
    return base64.b64encode(digest.digest()).decode('ascii')


def _open_store(target: _Target, options: Mapping[str, Any]) -> _Store:
    if target.scheme == 'gs':
        return _GcsStore(options)
    if target.scheme:
        return _BeamStore(target.root, options)
    return _LocalStore()


# ---------------------------------------------------------------------------------------------
# File formats: pure writers over a stream, no Beam

class _EncodeError(ValueError):
    """An event (or one value of it) cannot be written in the file's format."""


_Rejected = list[tuple[ChangeEvent, Exception]]


class _FormatWriter:
    """Writes one file's events to ``stream``.

    ``add`` raises for an event it cannot encode and leaves the file as if the event had
    never been offered; writers that convert in batches return the events a batch rejected.
    """

    step = ''
    extension = ''
    stream: _CountingStream

    @property
    def size(self) -> int:
        """The file's size if it were closed now, give or take a block."""
        return self.stream.size

    def add(self, event: ChangeEvent) -> _Rejected:
        raise NotImplementedError

    def close(self) -> _Rejected:
        raise NotImplementedError


class _JsonLinesWriter(_FormatWriter):
    step = 'EncodeJson'
    extension = 'jsonl'

    def __init__(self, stream: _CountingStream) -> None:
        self.stream = stream

    def add(self, event: ChangeEvent) -> _Rejected:
        try:
            line = debezium_json_bytes(event) + b'\n'
        except (TypeError, ValueError, AttributeError) as exc:
            raise _EncodeError(_json_failure(event, exc)) from None
        self.stream.write(line)
        return []

    def close(self) -> _Rejected:
        return []


def _json_failure(event: ChangeEvent, exc: Exception) -> str:
    """The error, prefixed with the field that caused it where one value can be blamed."""
    for field in ('before', 'after'):
        row = getattr(event, field)
        if not isinstance(row, Mapping):
            continue
        for name, value in row.items():
            try:
                column = event.table.column(name)
                dumps({'v': encode_json_value(column, value)}).encode('utf-8')
            except (KeyError, TypeError, ValueError, AttributeError) as inner:
                return f'{field}.{name}: {inner}'
    return f'{type(exc).__name__}: {exc}'


def _find_unencodable(value: Any, path: str) -> str | None:
    """The path of the first string in ``value`` that UTF-8 cannot encode (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode('utf-8')
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _find_unencodable(item, f'{path}.{key}' if path else str(key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _find_unencodable(item, f'{path}[{i}]')
            if found:
                return found
    return None


class _AvroBlock:
    """What ``fastavro.write.Writer.write_block`` reads: serialized records and their count."""

    def __init__(self, bytes_: io.BytesIO, num_records: int) -> None:
        self.bytes_ = bytes_
        self.num_records = num_records


@functools.lru_cache(maxsize=256)
def _parsed_avro_schema(table: TableSchema, version: int) -> Any:
    import fastavro

    return fastavro.parse_schema(avro_schema(table, version))


class _AvroWriter(_FormatWriter):
    """An Avro object container file with the table's schema embedded.

    Each event is encoded on its own (``avro_encoder``: the bytes fastavro would write for
    ``to_avro_record(event)``, three times faster) and appended to the current block, which is
    handed to fastavro's container writer when full: an event that cannot be encoded (a lone
    surrogate in a string) leaves the block as it was.
    """

    step = 'EncodeAvro'
    extension = 'avro'

    def __init__(self, stream: _CountingStream, table: TableSchema, version: int, codec: str,
                 block_bytes: int) -> None:
        import fastavro

        self.stream = stream
        self._writer = fastavro.write.Writer(cast(IO[bytes], stream),
                                             _parsed_avro_schema(table, version), codec=codec)
        self._encode = avro_encoder(table)
        self._block = io.BytesIO()
        self._count = 0
        self._block_bytes = block_bytes

    def add(self, event: ChangeEvent) -> _Rejected:
        try:
            data = self._encode(event)
        except EnvelopeError:
            raise  # names the field already
        except (TypeError, ValueError, OverflowError) as exc:
            field = _find_unencodable(to_avro_record(event), '')
            raise _EncodeError(f'{field}: {exc}' if field else str(exc)) from None
        self._block.write(data)
        self._count += 1
        if self._block.tell() >= self._block_bytes:
            self._flush_block()
        return []

    def _flush_block(self) -> None:
        if self._count:
            self._writer.write_block(_AvroBlock(self._block, self._count))
            self._block = io.BytesIO()
            self._count = 0

    def close(self) -> _Rejected:
        self._flush_block()
        self._writer.flush()
        return []


# Parquet -------------------------------------------------------------------------------------

def _parquet_decimal(column: Column) -> tuple[int, int] | None:
    precision, scale = column.precision, column.scale
    if precision is None or scale is None or not 1 <= precision <= 38:
        return None
    return (precision, scale) if 0 <= scale <= precision else None


def _arrow_type(kind: Kind, column: Column) -> Any:
    import pyarrow as pa

    if kind is Kind.BOOLEAN:
        return pa.bool_()
    if kind in (Kind.INT16, Kind.INT32):
        return pa.int32()
    if kind is Kind.INT64:
        return pa.int64()
    if kind in (Kind.FLOAT32, Kind.FLOAT64):
        return pa.float64()  # Python floats are doubles: a float32 column would round them
    if kind is Kind.DECIMAL:
        shape = _parquet_decimal(column)
        return pa.string() if shape is None else pa.decimal128(*shape)
    if kind is Kind.BYTES:
        return pa.binary()
    if kind is Kind.DATE:
        return pa.date32()
    if kind is Kind.TIME:
        return pa.time64('us')
    if kind is Kind.TIMESTAMP:
        return pa.timestamp('us')
    if kind is Kind.TIMESTAMPTZ:
        return pa.timestamp('us', tz='UTC')
    if kind is Kind.ARRAY:
        element = column.element or Kind.TEXT
        # An array of arrays is multi-dimensional: its values are JSON text (see _ParquetField).
        return pa.list_(_arrow_type(Kind.TEXT if element is Kind.ARRAY else element, column))
    return pa.string()  # STRING, TEXT, JSON, UUID, ENUM, INTERVAL, TIMETZ: the text form


@dataclasses.dataclass(frozen=True)
class _ParquetField:
    """How one column's value (as ``to_avro_record`` normalized it) becomes a Parquet value.

    ``to_avro_record`` already checked the value against its Kind and replaced what a typed
    column cannot hold exactly with a ``str`` (a date's text form, a decimal of another
    scale, the JSON text of a multi-dimensional array).  In Parquet such a value leaves the
    typed field NULL and goes, as text, into the row's sibling ``<row>_text`` map.
    """

    column: Column
    avro: str
    typed: bool  # the column's Parquet type is not a string
    element_typed: bool  # an array whose elements are not strings

    def split(self, value: Any) -> tuple[Any, str | None]:
        """(value for the typed field, text for the ``_text`` map or None); value not None."""
        if isinstance(value, list):
            if self.element_typed:
                for item in value:
                    if isinstance(item, str):  # one element is a text form: the whole array
                        return None, json.dumps(encode_json_value(self.column, value),
                                                ensure_ascii=False, separators=(',', ':'))
            elif self.column.element is Kind.DECIMAL:  # more than 38 digits: a string list
                return [v if v is None or isinstance(v, str) else str(v) for v in value], None
            return value, None
        if self.typed:
            return (None, value) if isinstance(value, str) else (value, None)
        return str(value), None  # a Decimal of a decimal column stored as string


@dataclasses.dataclass(frozen=True)
class _ParquetLayout:
    schema: Any  # pyarrow.Schema
    fields: tuple[_ParquetField, ...]
    # The fields whose normalized value may need another form; the others pass as they are.
    special: tuple[_ParquetField, ...]
    renamed: bool  # some column's Avro field name is not its SQL name


_SPECIAL_KINDS = frozenset({Kind.DATE, Kind.TIME, Kind.TIMESTAMP, Kind.TIMESTAMPTZ,
                            Kind.DECIMAL, Kind.ARRAY})


_SOURCE_FIELDS = (('version', 'string'), ('connector', 'string'), ('name', 'string'),
                  ('ts_ms', 'int64'), ('snapshot', 'string'), ('db', 'string'),
                  ('schema', 'string'), ('table', 'string'), ('txId', 'int64'),
                  ('lsn', 'int64'), ('commit_lsn', 'int64'), ('file', 'string'),
                  ('pos', 'int64'), ('row', 'int64'), ('gtid', 'string'),
                  ('server_id', 'int64'), ('thread', 'int64'), ('epoch', 'int64'))


@functools.lru_cache(maxsize=256)
def _parquet_layout(table: TableSchema, version: int) -> _ParquetLayout:
    import pyarrow as pa

    row_fields = avro_schema(table)['fields'][0]['type'][1]['fields']
    fields = []
    for column, avro_field in zip(table.columns, row_fields, strict=True):
        arrow = _arrow_type(column.kind, column)
        typed = not pa.types.is_string(arrow)
        element_typed = pa.types.is_list(arrow) and not pa.types.is_string(arrow.value_type)
        fields.append(_ParquetField(column, avro_field['name'], typed, element_typed))
    # The pseudo-tables of 'm' events (_messages, _ddl) have no columns, and Parquet cannot
    # write a struct without fields: their before/after are always null, so they are typed so.
    row = pa.struct([pa.field(f.column.name, _arrow_type(f.column.kind, f.column))
                     for f in fields]) if fields else pa.null()
    text = pa.map_(pa.string(), pa.string())
    names = pa.list_(pa.string())
    schema = pa.schema([
        ('before', row), ('before_text', text),
        ('after', row), ('after_text', text),
        ('source', pa.struct([(name, getattr(pa, kind)()) for name, kind in _SOURCE_FIELDS])),
        ('op', pa.string()),
        ('ts_ms', pa.int64()),
        ('transaction', pa.struct([('id', pa.string()), ('total_order', pa.int64()),
                                   ('data_collection_order', pa.int64())])),
        ('schema_version', pa.int64()),  # content-derived: 63 bits
        ('unchanged', names),
        ('message', pa.string()),  # the JSON text of an 'm' event's payload
        ('before_absent', names),
        ('after_absent', names),
    ], metadata={
        'changebeam.table': _table_json(table),
        'changebeam.schema_version': str(version),
    })
    special = tuple(f for f in fields if f.column.kind in _SPECIAL_KINDS)
    renamed = any(f.avro != f.column.name for f in fields)
    return _ParquetLayout(schema, tuple(fields), special, renamed)


def _leaf_columns(arrow: Any) -> int:
    """How many Parquet columns (column chunks per row group) an Arrow type becomes."""
    import pyarrow as pa

    if pa.types.is_struct(arrow):
        return sum(_leaf_columns(arrow.field(i).type) for i in range(arrow.num_fields))
    if pa.types.is_map(arrow):
        return _leaf_columns(arrow.key_type) + _leaf_columns(arrow.item_type)
    if pa.types.is_list(arrow):
        return _leaf_columns(arrow.value_type)
    return 1


def _table_json(table: TableSchema) -> str:
    """The table's schema as JSON, kept in the file so a reader knows each column's Kind."""
    doc = {f.name: getattr(table, f.name) for f in dataclasses.fields(table)}
    doc['columns'] = [{**dataclasses.asdict(c), 'kind': c.kind.value,
                       'element': c.element.value if c.element else None}
                      for c in table.columns]
    return json.dumps(doc, ensure_ascii=False)


def _parquet_row(layout: _ParquetLayout, record: dict[str, Any]) -> dict[str, Any]:
    """A row of ``layout.schema`` from a fresh ``to_avro_record`` result (changed in place)."""
    for key, text_key in (('before', 'before_text'), ('after', 'after_text')):
        values = record[key]
        text: list[tuple[str, str]] | None = None
        if values is not None:
            if layout.renamed:
                values = record[key] = {f.column.name: values[f.avro] for f in layout.fields}
            for field in layout.special:
                name = field.column.name
                value = values[name]
                if value is None:
                    continue
                typed, as_text = field.split(value)
                if as_text is not None:
                    text = text or []
                    text.append((name, as_text))
                values[name] = typed
        record[text_key] = text
    return record


class _ParquetWriter(_FormatWriter):
    """A Parquet file of one table version, written a row group every ``row_group_rows``.

    Rows are converted to Arrow ``_ARROW_BATCH_ROWS`` at a time and the row group kept as
    Arrow tables until it is full: a whole row group held as Python dicts (and its events)
    gave the garbage collector's full collections three times the objects to walk (bench.files:
    0.27 s instead of 0.09 s per 60,000 events), and holds more memory.
    """

    step = 'EncodeParquet'
    extension = 'parquet'

    def __init__(self, stream: _CountingStream, table: TableSchema, version: int, codec: str,
                 row_group_rows: int) -> None:
        import pyarrow.parquet as pq

        self.stream = stream
        self._layout = _parquet_layout(table, version)
        self._writer = pq.ParquetWriter(stream, self._layout.schema, compression=codec)
        self._row_groups = 0
        self._leaves = sum(_leaf_columns(field.type) for field in self._layout.schema)
        self._rows: list[dict[str, Any]] = []
        self._events: list[ChangeEvent] = []
        self._converted: list[Any] = []  # pyarrow.Table: this row group's converted rows
        self._group_events = 0  # events offered to this row group
        self._row_group_rows = row_group_rows

    def add(self, event: ChangeEvent) -> _Rejected:
        self._rows.append(_parquet_row(self._layout, to_avro_record(event)))
        self._events.append(event)
        self._group_events += 1
        if self._group_events >= self._row_group_rows:
            return self._flush()
        if len(self._rows) >= _ARROW_BATCH_ROWS:
            return self._convert()
        return []

    def _convert(self) -> _Rejected:
        import pyarrow as pa

        rows, events = self._rows, self._events
        self._rows, self._events = [], []
        if not rows:
            return []
        rejected: _Rejected = []
        try:
            table = pa.Table.from_pylist(rows, schema=self._layout.schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            # Only a value the Avro checks let through and Arrow refuses (a lone surrogate):
            # find the rows that fail alone, write the others.
            _LOG.debug('row batch conversion failed (%s); converting row by row', exc)
            good = []
            for row, event in zip(rows, events, strict=True):
                try:
                    pa.Table.from_pylist([row], schema=self._layout.schema)
                except (pa.ArrowException, TypeError, ValueError, OverflowError) as bad:
                    field = _find_unencodable(row, '')
                    rejected.append((event, _EncodeError(f'{field}: {bad}' if field
                                                         else f'{type(bad).__name__}: {bad}')))
                else:
                    good.append(row)
            if not good:
                return rejected
            table = pa.Table.from_pylist(good, schema=self._layout.schema)
        self._converted.append(table)
        return rejected

    def _flush(self) -> _Rejected:
        import pyarrow as pa

        rejected = self._convert()
        tables, self._converted = self._converted, []
        self._group_events = 0
        if tables:
            # One row group, whatever the number of chunks (up to pyarrow's 1Mi rows a group).
            self._writer.write_table(pa.concat_tables(tables))
            self._row_groups += 1
        return rejected

    @property
    def size(self) -> int:
        # The footer keeps statistics for every column chunk of every row group: ~105 bytes
        # each, a lot for small row groups of wide tables.
        return self.stream.size + self._row_groups * self._leaves * _FOOTER_BYTES_PER_CHUNK

    def close(self) -> _Rejected:
        rejected = self._flush()
        self._writer.close()
        return rejected


# ---------------------------------------------------------------------------------------------
# The Beam shell

@dataclasses.dataclass(frozen=True)
class _Settings:
    """Validated, picklable configuration of one sink."""

    target: _Target
    codec: str | None
    max_file_bytes: int
    row_group_rows: int
    filesystem_options: tuple[tuple[str, Any], ...]


class _OpenFile:
    def __init__(self, raw: Any, temp: str, directory: str, writer: _FormatWriter,
                 stream: _CountingStream, table: TableSchema, version: int | None) -> None:
        self.raw = raw
        self.temp = temp
        self.directory = directory
        self.writer = writer
        self.stream = stream
        self.table = table
        self.version = version
        self.events = 0


_ENCODE_ERRORS = (EnvelopeError, _EncodeError, TypeError, ValueError, AttributeError,
                  OverflowError)


class _WriteFilesFn(beam.DoFn):
    def __init__(self, settings: _Settings) -> None:
        self._settings = settings

    def setup(self) -> None:
        settings = self._settings
        self._store = _open_store(settings.target, dict(settings.filesystem_options))
        self._writer_id = uuid.uuid4().hex[:12]
        self._sequence = 0
        self._written = Metrics.counter('WriteChangesToFiles', 'events')
        self._files = Metrics.counter('WriteChangesToFiles', 'files')
        self._bytes = Metrics.counter('WriteChangesToFiles', 'bytes')
        self._open: dict[Any, _OpenFile] = {}

    def start_bundle(self) -> None:
        self._abort_open()  # left by a bundle that failed: its events will be retried
        self._last: _OpenFile | None = None

    def _key(self, event: ChangeEvent) -> Any:
        if self._settings.target.format == 'jsonl':
            return _directory_name(event.table)  # self-describing lines: one file a table
        return (_directory_name(event.table), event.schema_version, event.table)

    def _file_for(self, event: ChangeEvent) -> _OpenFile:
        last = self._last
        # Events of one table share their TableSchema object: skip hashing it per event.
        if (last is not None and last.table is event.table
                and last.version == event.schema_version):
            return last
        key = self._key(event)
        entry = self._open.get(key)
        if entry is None:
            entry = self._open[key] = self._start_file(event)
        self._last = entry
        return entry

    def _start_file(self, event: ChangeEvent) -> _OpenFile:
        settings = self._settings
        target = settings.target
        parts = [_directory_name(event.table)]
        version = event.schema_version or 0
        if target.format != 'jsonl':
            parts.append(f'v={version}')
        directory = target.join(*parts)
        self._sequence += 1
        temp = target.join(*parts, f'.part-{self._writer_id}-{self._sequence}'
                                   f'.{target.format}.tmp')
        raw = self._store.create(temp)
        stream = _CountingStream(raw, temp)
        writer: _FormatWriter
        try:
            if target.format == 'avro':
                writer = _AvroWriter(stream, event.table, version, settings.codec or 'null',
                                     min(_AVRO_BLOCK_BYTES, settings.max_file_bytes))
            elif target.format == 'parquet':
                writer = _ParquetWriter(stream, event.table, version,
                                        settings.codec or 'none', settings.row_group_rows)
            else:
                writer = _JsonLinesWriter(stream)
        except BaseException:
            self._store.abort(raw, temp)
            raise
        return _OpenFile(raw, temp, directory, writer, stream, event.table,
                         event.schema_version)

    def _dead_letter(self, step: str, event: ChangeEvent, exc: Exception) -> DeadLetter:
        # Our own errors already say which field and why; others keep their type's name.
        error = str(exc) if isinstance(exc, _EncodeError) else f'{type(exc).__name__}: {exc}'
        return DeadLetter(step=step, error=error, payload=event_payload(event),
                          source=event.table.name)

    def process(self, element: ChangeEvent | list[ChangeEvent]) -> list[Any] | None:
        # Events one at a time or a source's batches (lists).  A plain function, not a
        # generator: Beam calls it faster, and only dead letters ever leave this step.
        letters: list[Any] = []
        written = 0
        limit = self._settings.max_file_bytes
        events: Sequence[ChangeEvent] = element if isinstance(element, list) else (element,)
        for event in events:
            entry = self._file_for(event)
            writer = entry.writer
            if event.__class__ is RenderedChanges:
                written += self._write_run(entry, cast(RenderedChanges, event))
                if writer.size >= limit:
                    letters.extend(beam.pvalue.TaggedOutput(
                        DEAD_LETTER, self._dead_letter(writer.step, bad, error))
                        for bad, error in self._commit(entry))
                continue
            try:
                rejected = writer.add(event)
            except _ENCODE_ERRORS as exc:
                letters.append(beam.pvalue.TaggedOutput(
                    DEAD_LETTER, self._dead_letter(writer.step, event, exc)))
                continue
            written += 1
            entry.events += 1 - len(rejected)
            if rejected:
                letters.extend(beam.pvalue.TaggedOutput(
                    DEAD_LETTER, self._dead_letter(writer.step, bad, error))
                    for bad, error in rejected)
            if writer.size >= limit:
                # Roll: commit the full file now, the next event of its table starts another.
                letters.extend(beam.pvalue.TaggedOutput(
                    DEAD_LETTER, self._dead_letter(writer.step, bad, error))
                    for bad, error in self._commit(entry))
        self._written.inc(written)
        return letters or None

    def _write_run(self, entry: _OpenFile, run: RenderedChanges) -> int:
        """A source's rendered JSON lines, as they are (a file may pass max_file_bytes by one
        run: a source's batch at most)."""
        if not isinstance(entry.writer, _JsonLinesWriter):
            raise TypeError(f'{run.table.name}: rendered JSON lines reached a '
                            f'{self._settings.target.format} sink; read without render_json')
        entry.stream.write(run.lines())
        entry.events += len(run.docs)
        return len(run.docs)

    def _commit(self, entry: _OpenFile) -> _Rejected:
        self._open = {k: v for k, v in self._open.items() if v is not entry}
        if self._last is entry:
            self._last = None
        try:
            rejected = entry.writer.close()
        except BaseException:
            self._store.abort(entry.raw, entry.temp)
            raise
        entry.events -= len(rejected)
        if entry.events <= 0:  # every event was a dead letter: nothing worth a file
            self._store.abort(entry.raw, entry.temp)
            return rejected
        self._sequence += 1
        stamp = int(time.time() * 1000)
        name = (f'part-{stamp}-{self._writer_id}-{self._sequence:06d}'
                f'.{entry.writer.extension}')
        final = (os.path.join(entry.directory, name) if not self._settings.target.scheme
                 else f'{entry.directory}/{name}')
        self._store.commit(entry.raw, entry.temp, final)
        self._files.inc()
        self._bytes.inc(entry.stream.size)
        return rejected

    def finish_bundle(self) -> Iterator[Any]:
        for entry in list(self._open.values()):
            for bad, exc in self._commit(entry):
                letter = self._dead_letter(entry.writer.step, bad, exc)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, GlobalWindows.windowed_value(letter))
        self._open = {}
        self._last = None

    def teardown(self) -> None:
        self._abort_open()

    def _abort_open(self) -> None:
        for entry in getattr(self, '_open', {}).values():
            # Never committed: the source has not been acknowledged and will replay them.
            self._store.abort(entry.raw, entry.temp)
        self._open = {}


def _check_codec(uri: str, fmt: str, codec: str | None) -> str | None:
    if codec is None:
        return _DEFAULT_CODECS[fmt]
    if fmt == 'jsonl':
        raise ValueError(f'file sink {uri!r}: jsonl files take no codec (got {codec!r})')
    valid = _AVRO_CODECS if fmt == 'avro' else _PARQUET_CODECS
    if codec not in valid:
        raise ValueError(f'file sink {uri!r}: codec {codec!r} is not one of {", ".join(valid)}')
    if fmt == 'parquet':
        import pyarrow as pa

        if codec != 'none' and not pa.Codec.is_available(codec):
            raise ValueError(f'file sink {uri!r}: this pyarrow was built without {codec}')
    else:
        import fastavro

        try:  # codecs other than null and deflate need an extra library
            fastavro.writer(io.BytesIO(), {'type': 'record', 'name': 'Probe', 'fields': []},
                            [{}], codec=codec)
        except (ValueError, ImportError) as exc:
            raise ValueError(f'file sink {uri!r}: codec {codec!r}: {exc}') from None
    return codec


class WriteChangesToFiles(beam.PTransform):
    """Writes ChangeEvents as files under ``URI/schema.table/``; returns the dead letters.

    ``uri`` is ``jsonl:DIR``, ``avro:DIR`` or ``parquet:DIR``; DIR is a local directory,
    ``s3://bucket/prefix`` or ``gs://bucket/prefix``.

    ``codec``: Avro ``deflate`` (default), ``null``, ``snappy``, ``zstandard`` …; Parquet
    ``snappy`` (default), ``zstd``, ``gzip``, ``none`` ….  A file is committed once it exceeds
    ``max_file_bytes`` (so files stay near that size and memory stays bounded), or at the end
    of its bundle.  Parquet files get a row group every ``row_group_rows`` rows.

    ``filesystem_options`` (pipeline options as a dict, e.g. ``{'s3_endpoint_url': …,
    's3_access_key_id': …}``, or a ``PipelineOptions``) configure s3:// and gs://; by default
    the pipeline's own options are used (``--s3_endpoint_url``, ``--s3_region_name``,
    ``--project`` …).
    """

    def __init__(self, uri: str, *, codec: str | None = None,
                 max_file_bytes: int = _DEFAULT_MAX_FILE_BYTES,
                 row_group_rows: int = _DEFAULT_ROW_GROUP_ROWS,
                 filesystem_options: Any = None) -> None:
        super().__init__()
        target = _parse_uri(uri)
        if isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int) \
                or max_file_bytes < 1:
            raise ValueError(f'file sink {uri!r}: max_file_bytes must be a positive integer, '
                             f'got {max_file_bytes!r}')
        if isinstance(row_group_rows, bool) or not isinstance(row_group_rows, int) \
                or row_group_rows < 1:
            raise ValueError(f'file sink {uri!r}: row_group_rows must be a positive integer, '
                             f'got {row_group_rows!r}')
        self._uri = uri
        self._target = target
        self._codec = _check_codec(uri, target.format, codec)
        self._max_file_bytes = max_file_bytes
        self._row_group_rows = row_group_rows
        self._filesystem_options = (None if filesystem_options is None
                                    else _filesystem_options(filesystem_options))

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        options = self._filesystem_options
        if options is None:
            options = _filesystem_options(events.pipeline.options) if self._target.scheme \
                else {}
        settings = _Settings(self._target, self._codec, self._max_file_bytes,
                             self._row_group_rows, tuple(sorted(options.items())))
        label = {'jsonl': 'WriteJsonLines', 'avro': 'WriteAvro', 'parquet': 'WriteParquet'}
        written = events | label[self._target.format] >> beam.ParDo(
            _WriteFilesFn(settings)).with_outputs(DEAD_LETTER, main='done')
        return written[DEAD_LETTER]


def _filesystem_options(options: Any) -> dict[str, Any]:
    """The s3_* options and the GCP project of pipeline options (or a dict of them)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        options = options.get_all_options(drop_default=True)
    return {name: value for name, value in options.items()
            if value is not None and name.startswith(_FILESYSTEM_OPTION_PREFIXES)}
