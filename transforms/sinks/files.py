"""``WriteChangesToFiles``: change events as files under ``DIR/schema.table/``.

    dead = events | 'WriteFiles' >> WriteChangesToFiles('jsonl:/data/lake')

JSON Lines, one Debezium envelope a line.  Each bundle writes each table's lines to a hidden
temporary file (``.part-….jsonl.tmp``), then flushes, fsyncs and renames it to
``part-<ms>-<writer>-<seq>.jsonl`` in ``finish_bundle``: a reader listing ``*.jsonl`` never sees
a partial file, and what a bundle wrote is durable before the source acknowledges it.  A replay
after a crash may write an event again in a later file (at-least-once); ``source`` positions
tell the copies apart.
"""
from __future__ import annotations

import logging
import os
import time
import urllib.parse
import uuid
from typing import IO, Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.dead_letter import DEAD_LETTER, DeadLetter
from transforms.envelope import ChangeEvent, dumps, to_debezium_json

__all__ = ['FILE_FORMATS', 'WriteChangesToFiles']

_LOG = logging.getLogger(__name__)

FILE_FORMATS = ('jsonl',)


def _directory_name(event: ChangeEvent) -> str:
    # Table names may hold '/', NUL or '..': percent-encode what is unsafe (reversibly, so two
    # tables never share a directory) and never start with a dot.
    name = urllib.parse.quote(event.table.name, safe='._$-') or '_'
    return '%2E' + name[1:] if name.startswith('.') else name


class _WriteJsonLinesFn(beam.DoFn):
    def __init__(self, directory: str) -> None:
        self._directory = directory

    def setup(self) -> None:
        os.makedirs(self._directory, exist_ok=True)
        self._writer = uuid.uuid4().hex[:12]
        self._sequence = 0
        self._written = Metrics.counter('WriteChangesToFiles', 'events')
        self._files = Metrics.counter('WriteChangesToFiles', 'files')

    def start_bundle(self) -> None:
        self._open: dict[str, tuple[str, IO[str]]] = {}

    def process(self, event: ChangeEvent) -> Any:
        try:
            line = dumps(to_debezium_json(event)) + '\n'
        except (TypeError, ValueError, AttributeError) as exc:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, DeadLetter.from_exception(
                'EncodeJson', exc, repr(event), source=event.table.name))
            return
        table_dir = _directory_name(event)
        entry = self._open.get(table_dir)
        if entry is None:
            path = os.path.join(self._directory, table_dir)
            os.makedirs(path, exist_ok=True)
            self._sequence += 1
            temp = os.path.join(path, f'.part-{self._writer}-{self._sequence}.jsonl.tmp')
            entry = self._open[table_dir] = (temp, open(temp, 'w', encoding='utf-8'))
        entry[1].write(line)
        self._written.inc()

    def finish_bundle(self) -> None:
        stamp = int(time.time() * 1000)
        for table_dir, (temp, handle) in self._open.items():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            final = os.path.join(self._directory, table_dir,
                                 f'part-{stamp}-{self._writer}-{self._sequence:06d}.jsonl')
            self._sequence += 1
            os.replace(temp, final)
            self._files.inc()
        if self._open:
            _fsync_dir(self._directory, list(self._open))
        self._open = {}

    def teardown(self) -> None:
        for temp, handle in getattr(self, '_open', {}).values():
            handle.close()
            os.unlink(temp)  # never committed: the source will replay these events


def _fsync_dir(root: str, names: list[str]) -> None:
    # The renames themselves must survive a power loss, not just the files' contents.
    for name in names:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class WriteChangesToFiles(beam.PTransform):
    """Writes ChangeEvents as files under ``URI/schema.table/``; returns the dead letters.

    ``uri`` is ``jsonl:DIR``.
    """

    def __init__(self, uri: str) -> None:
        super().__init__()
        fmt, sep, directory = uri.partition(':')
        if not sep or fmt not in FILE_FORMATS or not directory:
            valid = ' or '.join(f + ':DIR' for f in FILE_FORMATS)
            raise ValueError(f'file sink {uri!r}: use {valid}')
        if '://' in directory:
            raise ValueError(f'file sink {uri!r}: only local directories are supported so far')
        self._directory = directory

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        written = events | 'WriteJsonLines' >> beam.ParDo(
            _WriteJsonLinesFn(self._directory)).with_outputs(DEAD_LETTER, main='done')
        return written[DEAD_LETTER]
