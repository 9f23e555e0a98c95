"""Dead letters: records a stage could not decode, convert or write, kept with the reason.

No stage drops a record silently or lets one bad record crash the pipeline: it emits a
:class:`DeadLetter` on its ``DEAD_LETTER`` tagged output instead, and the pipeline writes those
with :class:`WriteDeadLetters`::

    results = events | 'ApplyChanges' >> beam.ParDo(_ApplyFn()).with_outputs(DEAD_LETTER, main='ok')
    results[DEAD_LETTER] | 'WriteDeadLetters' >> WriteDeadLetters('jsonl:/var/lib/cb/dead')

A dead-letter file is JSON Lines, one record a line, appended and fsynced per bundle, so what a
bundle reported is on disk before the source acknowledges the bundle's position.

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
from typing import IO, Any

import apache_beam as beam

from transforms.envelope import ChangeEvent, EnvelopeError, from_debezium_json, to_debezium_json
from transforms.schema.registry import schema_from_json, schema_to_json

__all__ = [
    'DEAD_LETTER',
    'DeadLetter',
    'NotAnEvent',
    'WriteDeadLetters',
    'event_from_payload',
    'event_payload',
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


def parse_dead_letter_uri(uri: str) -> str:
    """The directory of a ``jsonl:DIR`` URI; ValueError naming the URI otherwise."""
    scheme, sep, path = uri.partition(':')
    if not sep or scheme != 'jsonl' or not path:
        raise ValueError(f'dead-letter URI {uri!r} is not supported; use jsonl:DIR')
    return path


class _WriteDeadLettersFn(beam.DoFn):
    """Appends each bundle's dead letters to a per-worker JSONL file, fsynced at bundle end."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def setup(self) -> None:
        os.makedirs(self._directory, exist_ok=True)
        # One file per DoFn instance: concurrent workers never interleave partial lines.
        name = f'dead-letters-{uuid.uuid4().hex[:12]}.jsonl'
        self._path = os.path.join(self._directory, name)
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

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
            if self._file is None:
                self._file = open(self._path, 'a', encoding='utf-8')
            self._file.write(''.join(self._lines))
            self._file.flush()
            os.fsync(self._file.fileno())
        _LOG.warning('%d dead letter(s) written to %s', len(self._lines), self._path)
        self._lines = []

    def teardown(self) -> None:
        handle = getattr(self, '_file', None)
        if handle is not None:
            handle.close()


class WriteDeadLetters(beam.PTransform):
    """Writes :class:`DeadLetter` records to ``jsonl:DIR`` (one JSON object a line)."""

    def __init__(self, uri: str) -> None:
        super().__init__()
        self._directory = parse_dead_letter_uri(uri)

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
        return letters | 'AppendDeadLetters' >> beam.ParDo(_WriteDeadLettersFn(self._directory))
