"""Redrive: apply the change events of dead letters again, once what rejected them is fixed.

    python -m pipelines.redrive --dead_letter jsonl:dead-letters \\
        --sink postgresql://cdc@replica/shop [--only_step WriteChangesToPostgres] [--dry_run] \\
        [--tombstone_retention_hours 168]

A sink that cannot write an event (a CHECK constraint, a value the target column cannot hold)
dead-letters it with the event and its table schema (``transforms.dead_letter.event_payload``).
Once the cause is fixed (the column widened, the constraint dropped), this reads every
``*.jsonl`` file directly in the dead-letter directory, turns each letter that holds an event
back into a :class:`~transforms.envelope.ChangeEvent` and applies them, in source order, through
the same sink transform as ``pipelines.cdc --sink``.  Events rejected again go to a new
dead-letter directory (``--failed``, default ``DIR/failed-<UTC time>``).

Only after the pipeline finished, i.e. the sink committed, are the redriven letters moved into
``DIR/redriven/`` (a file keeps, in place, only its letters that were not redriven), so a second
run does not apply them again.  Database sinks would ignore them anyway: every target row keeps
the source position that last wrote it (``_cb_pos``) and older events are skipped.  A letter
that holds no event (undecodable WAL, an unencodable value) is counted as skipped and stays.

DIR may be ``gs://…`` or ``s3://…`` (dead letters written by a distributed runner): read and
written through Beam's FileSystems, configured by the pipeline options given (``--s3_*``).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import transforms.coders  # noqa: F401  (registers the ChangeEvent coder)
from pipelines.cdc import _OneLineParser, _setup_failure, sink_transform
from pipelines.options import OptionError, SinkSpec, _retention_hours, parse_sink
from transforms.dead_letter import (
    NotAnEvent,
    WriteDeadLetters,
    event_from_payload,
    is_remote,
    parse_dead_letter_uri,
)
from transforms.envelope import ChangeEvent
from transforms.gcs_emulator import connect_gcs_emulator_anonymously
from transforms.retry import with_retries

__all__ = ['Inventory', 'Letter', 'main', 'move_aside', 'read_dead_letters']

_LOG = logging.getLogger(__name__)

REDRIVEN = 'redriven'
"""The subdirectory of the dead-letter directory that redriven letters are moved into."""


@dataclasses.dataclass(frozen=True)
class Letter:
    """One line of a dead-letter file: ``event`` when it holds one, else ``skipped`` says why
    (``other step`` for a letter ``--only_step`` leaves out)."""

    path: str
    line: str  # as read, without the newline: moved aside byte for byte
    step: str
    event: ChangeEvent | None = None
    skipped: str = ''


@dataclasses.dataclass(frozen=True)
class Inventory:
    """What a dead-letter directory holds, read once before anything is applied."""

    letters: tuple[Letter, ...]

    @property
    def events(self) -> list[ChangeEvent]:
        """The letters' events in source order, each distinct event once."""
        unique: dict[tuple[str, str, str, str], ChangeEvent] = {}
        for letter in self.letters:
            event = letter.event
            if event is not None:
                unique.setdefault(_identity(event), event)
        return sorted(unique.values(), key=lambda e: e.source.sort_key)

    def count(self, skipped: str | None = None) -> int:
        if skipped is None:
            return sum(letter.event is not None for letter in self.letters)
        return sum(letter.skipped == skipped for letter in self.letters)


def _identity(event: ChangeEvent) -> tuple[str, str, str, str]:
    # The same change dead-lettered twice (a bundle the runner retried) is applied once.
    return (event.source.name, event.table.name, event.source.sort_key, event.op.value)


_NOT_AN_EVENT = 'not an event'
_OTHER_STEP = 'other step'


# -- the dead-letter directory: local (files written, fsynced, renamed) or gs:// / s3://
#    (objects written whole through Beam's FileSystems, which the pipeline options configure).
#    The pipeline never writes a file again once it is there, so one may be rewritten here
#    while the pipeline runs on.

def _join(directory: str, name: str) -> str:
    return f'{directory.rstrip("/")}/{name}' if is_remote(directory) else \
        os.path.join(directory, name)


def _split(path: str) -> tuple[str, str]:
    return tuple(path.rsplit('/', 1)) if is_remote(path) else os.path.split(path)  # type: ignore[return-value]


def _letter_files(directory: str) -> list[str]:
    """The ``*.jsonl`` files directly in ``directory``, sorted by name."""
    if is_remote(directory):
        from apache_beam.io.filesystems import FileSystems

        found = FileSystems.match([_join(directory, '*.jsonl')])[0].metadata_list
        return sorted(m.path for m in found)
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory))
            if n.endswith('.jsonl') and os.path.isfile(os.path.join(directory, n))]


def _read_text(path: str) -> str:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path, compression_type='uncompressed') as handle:
            return handle.read().decode('utf-8')
    with open(path, encoding='utf-8') as handle:
        return handle.read()


def _directory_exists(directory: str) -> bool:
    if is_remote(directory):
        return True  # a prefix: "no letters" is an empty listing, not an error
    return os.path.isdir(directory)


def read_dead_letters(directory: str, only_step: str | None = None) -> Inventory:
    """Every letter of the ``*.jsonl`` files directly in ``directory`` (not ``redriven/``)."""
    letters = []
    for path in _letter_files(directory):
        lines = _read_text(path).splitlines()
        for number, line in enumerate(lines, 1):
            if line.strip():
                letters.append(_letter(path, number, line, only_step))
    return Inventory(tuple(letters))


def _letter(path: str, number: int, line: str, only_step: str | None) -> Letter:
    try:
        doc = json.loads(line)
    except ValueError as exc:
        _LOG.warning('%s:%d is not JSON (%s): skipped', path, number, exc)
        return Letter(path, line, '', skipped=_NOT_AN_EVENT)
    step = doc.get('step', '') if isinstance(doc, dict) else ''
    if only_step is not None and step != only_step:
        return Letter(path, line, step, skipped=_OTHER_STEP)
    try:
        event = event_from_payload(doc.get('payload') if isinstance(doc, dict) else None)
    except NotAnEvent as exc:
        _LOG.info('%s:%d (step %s) holds no change event: %s', path, number, step or '?', exc)
        return Letter(path, line, step, skipped=_NOT_AN_EVENT)
    return Letter(path, line, step, event=event)


def move_aside(inventory: Inventory) -> int:
    """Move the letters whose events were applied into ``redriven/`` next to their file; a file
    keeps only its skipped letters (and is removed when none are left).  Returns the number of
    files touched.

    The redriven lines are appended and fsynced before the original is replaced, so a crash in
    between leaves them in both places (a later run applies them again: harmless for database
    sinks, see the module docstring), never in neither.
    """
    by_file: dict[str, list[Letter]] = {}
    for letter in inventory.letters:
        by_file.setdefault(letter.path, []).append(letter)
    touched = 0
    for path, letters in by_file.items():
        done = [letter.line for letter in letters if letter.event is not None]
        if not done:
            continue
        kept = [letter.line for letter in letters if letter.event is None]
        directory, name = _split(path)
        if is_remote(path):
            _move_aside_object(path, _join(_join(directory, REDRIVEN), name), done, kept)
            touched += 1
            continue
        aside = os.path.join(directory, REDRIVEN)
        os.makedirs(aside, exist_ok=True)
        _append(os.path.join(aside, name), done)
        if kept:
            temp = os.path.join(directory, f'.{name}.redrive-tmp')
            with open(temp, 'w', encoding='utf-8') as handle:
                handle.write(''.join(line + '\n' for line in kept))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        else:
            os.unlink(path)
        touched += 1
    return touched


def _move_aside_object(path: str, aside: str, done: list[str], kept: list[str]) -> None:
    """``move_aside`` for an object: objects cannot be appended to or renamed, so the object
    in ``redriven/`` is written whole (what an earlier run moved there, then ``done``) before
    the original is written again with ``kept`` only, or deleted."""
    from apache_beam.io.filesystems import FileSystems

    earlier = _read_text(aside) if FileSystems.exists(aside) else ''
    _write_object(aside, earlier + ''.join(line + '\n' for line in done))
    if kept:
        _write_object(path, ''.join(line + '\n' for line in kept))
    elif path.startswith('gs://'):
        # One request: FileSystems deletes through GCS's batch API, which emulators lack.
        from apache_beam.io.gcp.gcsio import GcsIO

        GcsIO().delete(path)
    else:
        FileSystems.delete([path])


def _write_object(path: str, text: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    def write() -> None:
        with FileSystems.create(path, mime_type='application/x-ndjson') as handle:
            handle.write(text.encode('utf-8'))

    with_retries(write, f'writing {path}')


def _append(path: str, lines: Iterable[str]) -> None:
    with open(path, 'a', encoding='utf-8') as handle:
        handle.write(''.join(line + '\n' for line in lines))
        handle.flush()
        os.fsync(handle.fileno())


def _count_lines(directory: str, before: set[str]) -> int:
    """Letters in the ``*.jsonl`` files of ``directory`` that are not in ``before``."""
    return sum(sum(1 for line in _read_text(path).splitlines() if line.strip())
               for path in set(_letter_files(directory)) - before)


def build(pipeline: beam.Pipeline, events: Sequence[ChangeEvent], sink: SinkSpec,
          failed: str, *, tombstone_retention_hours: float = 168.0) -> None:
    """Adds events → sink → failed dead letters to ``pipeline``."""
    label, writer = sink_transform(sink, tombstone_retention_hours=tombstone_retention_hours)
    # No reshuffle: one bundle, in source order, as the stream delivered them.
    created = pipeline | 'CreateEvents' >> beam.Create(list(events), reshuffle=False)
    dead = created | label >> writer
    _ = dead | 'WriteFailedAgain' >> WriteDeadLetters(failed)


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog='python -m pipelines.redrive',
        description='Apply the change events of dead letters again, through the same sink as '
                    'pipelines.cdc, once what rejected them is fixed.',
        epilog='Any other Beam pipeline option (--runner, --s3_endpoint_url …) is passed to '
               'the runner. Default runner: DirectRunner.')
    parser.add_argument('--dead_letter', '--dead-letter', required=True,
                        help='The dead-letter directory to redrive, as jsonl:DIR.')
    parser.add_argument('--sink', required=True,
                        help='Where the events go, as for pipelines.cdc: jsonl:DIR, avro:DIR, '
                             'parquet:DIR, postgresql://… or mysql://….')
    parser.add_argument('--only_step', '--only-step', default=None,
                        help='Redrive only the dead letters of this step (e.g. '
                             'WriteChangesToPostgres); others are left in place.')
    parser.add_argument('--failed', default=None,
                        help='Where events rejected again go, as jsonl:DIR '
                             '(default: jsonl:DIR/failed-<UTC time> under --dead_letter).')
    parser.add_argument('--tombstone_retention_hours', '--tombstone-retention-hours',
                        default='168',
                        help='Database sinks: as for pipelines.cdc, which this should match '
                             '(the sink prunes tombstones older than it after a batch; '
                             'default: 168 = 7 days; 0 keeps tombstones forever).')
    parser.add_argument('--dry_run', '--dry-run', action='store_true',
                        help='Read and decode the dead letters, print what would be redriven, '
                             'apply and move nothing.')
    parser.add_argument('--runner', default='DirectRunner', help='Beam runner.')
    return parser


def _summary(read: int, applied: int | None, failed: int, inventory: Inventory,
             duplicates: int, dry_run: bool, stale: int = 0) -> str:
    parts = [f'read {read:,}']
    if dry_run:
        parts.append(f'would re-apply {inventory.count() - duplicates:,}')
    else:
        parts += [f're-applied {applied or 0:,}', f'failed again {failed:,}']
        if stale:
            parts.append(f'row changes older than the target {stale:,}')
    parts.append(f'skipped {inventory.count(_NOT_AN_EVENT):,} (not an event)')
    if inventory.count(_OTHER_STEP):
        parts.append(f'left {inventory.count(_OTHER_STEP):,} (other step)')
    if duplicates:
        parts.append(f'duplicates {duplicates:,}')
    return 'changebeam redrive: ' + ', '.join(parts) + (' (dry run)' if dry_run else '')


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    connect_gcs_emulator_anonymously()
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    try:
        try:
            directory = parse_dead_letter_uri(args.dead_letter)
        except ValueError:
            raise OptionError('--dead_letter', args.dead_letter, 'use jsonl:DIR') from None
        if not _directory_exists(directory):
            raise OptionError('--dead_letter', args.dead_letter, 'no such directory')
        sink = parse_sink(args.sink)
        stamp = dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')
        failed = args.failed or f'jsonl:{_join(directory, f"failed-{stamp}")}'
        try:
            failed_dir = parse_dead_letter_uri(failed)
        except ValueError:
            raise OptionError('--failed', failed, 'use jsonl:DIR') from None
        retention_hours = _retention_hours(args.tombstone_retention_hours)
        sink_transform(sink)  # a bad sink URI is an option error before anything is read
    except OptionError as exc:
        parser.error(str(exc))
    # force: PipelineOptions has already logged (unparsed arguments), which gave the root
    # logger a WARNING-level handler; without it nothing below WARNING would show.
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: '
                        '%(message)s', force=True)
    for noisy in ('apache_beam', 'absl'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger('apache_beam.runners').setLevel(logging.CRITICAL)

    options = PipelineOptions(beam_args)
    options.view_as(StandardOptions).runner = args.runner
    FileSystems.set_options(options)  # gs:// and s3:// letters are read before the pipeline
    inventory = read_dead_letters(directory, args.only_step)
    events = inventory.events
    duplicates = inventory.count() - len(events)
    read = len(inventory.letters)
    if args.dry_run or not events:
        print(_summary(read, 0, 0, inventory, duplicates, args.dry_run), file=sys.stderr)
        return 0
    _LOG.info('redriving %d event(s) from %s into %s', len(events), directory,
              sink.target if sink.is_file else sink.kind)
    before = set(_letter_files(failed_dir))
    pipeline = beam.Pipeline(options=options)
    build(pipeline, events, sink, failed, tombstone_retention_hours=retention_hours)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as exc:
        message = _setup_failure(exc)
        if message is None:
            raise
        sys.stderr.write(f'{parser.prog}: error: {message} (nothing was moved)\n')
        return 1
    # The sink committed and the events it rejected again are on disk: only now move aside.
    failed_again = _count_lines(failed_dir, before)
    stale = _stale(result)
    move_aside(inventory)
    print(_summary(read, len(events) - failed_again, failed_again, inventory, duplicates,
                   False, stale), file=sys.stderr)
    if failed_again:
        print(f'changebeam redrive: events rejected again are in {failed}', file=sys.stderr)
    if stale:
        print(f'changebeam redrive: {stale:,} row change(s) were skipped: the target already '
              'held a newer state of those rows (a value a later partial update left '
              'unchanged stays as the target has it)', file=sys.stderr)
    return 0


def _stale(result: Any) -> int:
    """The database sink's ``rows_stale``: row changes (an event that moves a key makes two)
    the target already held newer."""
    try:
        counters = result.metrics().query()['counters']
    except Exception:  # a runner without metrics: nothing to tell
        return 0
    return sum(c.committed or c.attempted or 0 for c in counters
               if c.key.metric.name == 'rows_stale')


if __name__ == '__main__':
    sys.exit(main())
