"""Dead letters: records a stage could not decode, convert or write, kept with the reason.

No stage drops a record silently or lets one bad record crash the pipeline: it emits a
:class:`DeadLetter` on its ``DEAD_LETTER`` tagged output instead, and the pipeline writes those
with :class:`WriteDeadLetters`::

    results = events | 'ApplyChanges' >> beam.ParDo(_ApplyFn()).with_outputs(DEAD_LETTER, main='ok')
    results[DEAD_LETTER] | 'WriteDeadLetters' >> WriteDeadLetters('jsonl:/var/lib/cb/dead')

A dead-letter file is JSON Lines, one record a line, one file per bundle that had dead letters,
stored before the source acknowledges the bundle's position: in a local directory written
under a hidden name, fsynced and renamed; under ``gs://`` or ``s3://`` (where a distributed
runner's workers keep nothing) an object.  Either way a file appears whole, and is never
written again.

A sink's dead letter carries the event it could not write as :func:`event_payload`, which
:func:`event_from_payload` turns back into the same :class:`~transforms.envelope.ChangeEvent`,
so ``python -m pipelines.redrive`` can apply it again once the cause is fixed.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from typing import Any

import apache_beam as beam

from transforms.envelope import ChangeEvent, EnvelopeError, from_debezium_json, to_debezium_json
from transforms.retry import with_retries
from transforms.schema.registry import schema_from_json, schema_to_json

__all__ = [
    'DEAD_LETTER',
    'DeadLetter',
    'NotAnEvent',
    'WriteDeadLetters',
    'event_from_payload',
    'event_payload',
    'is_remote',
    'parse_dead_letter_uri',
]

_LOG = logging.getLogger(__name__)

DEAD_LETTER = 'dead_letter'
"""The output tag every stage uses for its dead letters."""


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A record that a step could not handle, with enough context to replay or inspect it.

    ``payload`` is the original record as it reached the step (bytes are kept as bytes and
    written base64-encoded); ``retryable`` says whether replaying it unchanged may succeed (a
    lost connection) or not (a value the target rejects).
    """

    step: str
    error: str
    payload: Any
    retryable: bool = False
    time_ms: int = dataclasses.field(default_factory=lambda: int(time.time() * 1000))
    source: str = ''  # where the payload came from: table, position, file or message id

    def to_json(self) -> dict[str, Any]:
        payload = self.payload
        if isinstance(payload, (bytes, bytearray, memoryview)):
            encoded: Any = {'base64': base64.b64encode(bytes(payload)).decode('ascii')}
        else:
            encoded = _jsonable(payload)
        return {
            'step': self.step,
            'error': self.error,
            'retryable': self.retryable,
            'time_ms': self.time_ms,
            'source': self.source,
            'payload': encoded,
        }

    @classmethod
    def from_exception(cls, step: str, exc: BaseException, payload: Any, *,
                       retryable: bool = False, source: str = '') -> DeadLetter:
        return cls(step=step, error=f'{type(exc).__name__}: {exc}', payload=payload,
                   retryable=retryable, source=source)


def _jsonable(value: Any) -> Any:
    """Whatever the payload is, something JSON can hold without losing what a person needs."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)


class NotAnEvent(ValueError):
    """A dead letter's payload does not hold a change event (undecodable WAL, a broken value)."""


def event_payload(event: ChangeEvent) -> dict[str, Any]:
    """The payload of a change event's dead letter, readable and lossless given itself::

        {"event": <Debezium JSON, to_debezium_json>, "table": <TableSchema, schema_to_json>}

    An event whose values do not fit its schema (the reason a file sink rejects it) cannot be
    encoded; it is kept as ``{"unencodable": repr(event), "encode_error": …}`` for a person.
    """
    try:
        payload = {'event': to_debezium_json(event), 'table': schema_to_json(event.table)}
        json.dumps(payload, allow_nan=False)  # a value of the wrong type may pass the encoders
    except Exception as exc:
        return {'unencodable': repr(event), 'encode_error': f'{type(exc).__name__}: {exc}'}
    return payload


def event_from_payload(payload: Any) -> ChangeEvent:
    """The inverse of :func:`event_payload` (as read back from JSON); :class:`NotAnEvent`
    saying why for any other payload."""
    if not isinstance(payload, dict) or not {'event', 'table'} <= payload.keys():
        if isinstance(payload, dict) and 'unencodable' in payload:
            raise NotAnEvent(f'the event could not be encoded: {payload.get("encode_error")}')
        shape = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise NotAnEvent(f'not a change event payload (expected event and table, got {shape})')
    try:
        table = schema_from_json(payload['table'])
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise NotAnEvent(f'table: not a table schema ({type(exc).__name__}: {exc})') from None
    try:
        return from_debezium_json(payload['event'], table)
    except EnvelopeError as exc:
        raise NotAnEvent(f'event.{exc}') from None


_REMOTE = ('gs://', 's3://')


def parse_dead_letter_uri(uri: str) -> str:
    """The directory of a ``jsonl:DIR`` URI (DIR local, ``gs://BUCKET[/…]`` or
    ``s3://BUCKET[/…]``); ValueError naming the URI otherwise."""
    scheme, sep, path = uri.partition(':')
    if not sep or scheme != 'jsonl' or not path:
        raise ValueError(f'dead-letter URI {uri!r} is not supported; use jsonl:DIR')
    if '://' in path and (not path.startswith(_REMOTE)
                          or not path.split('://', 1)[1].split('/', 1)[0]):
        # Anything else would become a local directory named after the scheme.
        raise ValueError(f'dead-letter URI {uri!r} is not supported; use jsonl:DIR with DIR '
                         'a local directory, gs://BUCKET/… or s3://BUCKET/…')
    return path


def is_remote(directory: str) -> bool:
    """Whether a dead-letter directory is in object storage rather than on this machine."""
    return directory.startswith(_REMOTE)


class _WriteDeadLettersFn(beam.DoFn):
    """Stores each bundle's dead letters, before the bundle ends, as one file of its own.

    A file appears whole (written under a hidden name, fsynced, renamed) and is never written
    again, so ``pipelines.redrive`` may rewrite or remove it while the pipeline runs on: with
    one file a worker kept open for appending, the letters written after a redrive moved
    that file aside went to a file no longer in the directory, and were lost.  In object
    storage (``gs://``, ``s3://``) each bundle's file is an object, written whole."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def setup(self) -> None:
        # Names unique to this DoFn instance: concurrent workers never share a file.
        self._instance = uuid.uuid4().hex[:12]
        self._remote = is_remote(self._directory)
        self._bundles = 0
        self._lock = threading.Lock()
        if not self._remote:
            os.makedirs(self._directory, exist_ok=True)

    def start_bundle(self) -> None:
        self._lines: list[str] = []

    def process(self, letter: DeadLetter) -> None:
        # ASCII escapes: a lone surrogate (undecodable source bytes) must not fail the write.
        self._lines.append(json.dumps(letter.to_json()) + '\n')
        beam.metrics.Metrics.counter('DeadLetters', letter.step).inc()

    def finish_bundle(self) -> None:
        if not self._lines:
            return
        with self._lock:
            self._bundles += 1
            # Sorted by name, one worker's files are in the order it wrote them.
            name = f'dead-letters-{self._instance}-{self._bundles:08d}.jsonl'
            data = ''.join(self._lines).encode()
            if self._remote:
                path = f'{self._directory.rstrip("/")}/{name}'
                self._write_object(path, data)
            else:
                path = os.path.join(self._directory, name)
                self._write_file(path, data)
        _LOG.warning('%d dead letter(s) written to %s', len(self._lines), path)
        self._lines = []

    def _write_file(self, path: str, data: bytes) -> None:
        directory, name = os.path.split(path)
        temp = os.path.join(directory, f'.{name}.tmp')  # not *.jsonl: redrive never reads it
        with open(temp, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temp, path)
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the rename itself survives a crash
        finally:
            os.close(descriptor)

    @staticmethod
    def _write_object(path: str, data: bytes) -> None:
        """Objects appear whole; a failed upload is made again, and one that keeps failing
        fails the bundle, so the source confirms nothing of it."""
        from apache_beam.io.filesystems import FileSystems

        def upload() -> None:
            with FileSystems.create(path, mime_type='application/x-ndjson') as handle:
                handle.write(data)

        with_retries(upload, f'writing dead letters to {path}')


class WriteDeadLetters(beam.PTransform):
    """Writes :class:`DeadLetter` records to ``jsonl:DIR`` (one JSON object a line)."""

    def __init__(self, uri: str) -> None:
        super().__init__()
        self._directory = parse_dead_letter_uri(uri)

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
        return letters | 'AppendDeadLetters' >> beam.ParDo(_WriteDeadLettersFn(self._directory))
