"""The CDC pipeline: a database's committed row changes, streamed into a sink.

    python -m pipelines.cdc --runner DirectRunner \\
        --source postgresql://cdc@localhost/shop --sink jsonl:/tmp/shop-changes

``--help`` lists every option.  Options are checked before the pipeline starts; a bad one ends
the program with exit status 2 and one line naming the option, the value and what is valid.
"""
from __future__ import annotations

import argparse
import datetime as dt
import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.options import CdcConfig, CdcOptions, OptionError, SinkSpec, validate_cdc
from transforms.dead_letter import WriteDeadLetters
from transforms.dsn import display
from transforms.gcs_emulator import connect_gcs_emulator_anonymously

__all__ = ['build', 'main', 'sink_transform']

_LOG = logging.getLogger(__name__)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f'{self.prog}: error: {message}\n')


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog='python -m pipelines.cdc', allow_abbrev=False,
        description='Stream every committed row change of a PostgreSQL or MySQL/MariaDB '
                    'database into a sink, starting with a consistent snapshot.',
        epilog='Any other Beam pipeline option (--runner, --project, --region, --temp_location, '
               '--streaming, --checkpointing_interval …) is passed to the runner. '
               'Default runner: DirectRunner.')
    CdcOptions._add_argparse_args(parser)
    parser.add_argument('--runner', default='DirectRunner',
                        help='Beam runner: DirectRunner (local), DataflowRunner or FlinkRunner.')
    return parser


def build(pipeline: beam.Pipeline, config: CdcConfig) -> None:
    """Adds source → sink (and dead letters) to ``pipeline``."""
    if config.source.kind == 'mysql':
        from transforms.sources.mysql.read import ReadMySqlChanges

        try:
            read_mysql = ReadMySqlChanges(
                config.source.raw, tables=config.tables, snapshot=config.snapshot,
                max_idle_secs=config.max_idle_secs, heartbeat_secs=config.heartbeat_secs,
                offset_store=config.offset_store, server_name=config.server_name,
                dead_letter=config.dead_letter, progress=config.progress,
                reconnect_secs=config.reconnect_secs, batched=True)
        except ValueError as exc:
            raise OptionError('--source', str(config.source), str(exc)) from None
        events = pipeline | 'ReadMySqlChanges' >> read_mysql
    else:
        from transforms.sources.postgres.read import ReadPostgresChanges

        events = pipeline | 'ReadPostgresChanges' >> ReadPostgresChanges(
            config.source.raw, tables=config.tables, slot_name=config.slot_name,
            publication=config.publication, snapshot=config.snapshot,
            max_idle_secs=config.max_idle_secs, heartbeat_secs=config.heartbeat_secs,
            server_name=config.server_name, dead_letter=config.dead_letter,
            progress=config.progress, reconnect_secs=config.reconnect_secs, batched=True,
            # JSON lines rendered as the source reads a change: less than half the cost.  Not
            # under lenient or ignore, which rewrite rows after the source.
            render_json=(config.sink.kind == 'jsonl'
                         and config.schema_change in ('evolve', 'strict')))
    from transforms.schema.evolve import EvolveSchema

    # Lists of events from source to sink: one Beam element per event costs more than most
    # changes do.
    events = events | 'EvolveSchema' >> EvolveSchema(config.schema_registry,
                                                      config.schema_change, batched=True)
    label, writer = sink_transform(config.sink,
                                   tombstone_retention_hours=config.tombstone_retention_hours,
                                   reconnect_secs=config.reconnect_secs)
    dead = events | label >> writer
    _ = dead | 'WriteSinkDeadLetters' >> WriteDeadLetters(config.dead_letter)


def sink_transform(sink: SinkSpec, *, tombstone_retention_hours: float = 168.0,
                   reconnect_secs: float | None = None) -> tuple[str, beam.PTransform]:
    """The label and sink transform for ``sink`` (also used by ``pipelines.redrive``);
    ``tombstone_retention_hours`` and ``reconnect_secs`` (how long a lost target is waited
    for; None: a few attempts) are for database sinks (0 hours: keep tombstones forever)."""
    if sink.is_file:
        from transforms.sinks.files import WriteChangesToFiles

        try:
            return 'WriteChangesToFiles', WriteChangesToFiles(f'{sink.kind}:{sink.target}')
        except ValueError as exc:
            raise OptionError('--sink', f'{sink.kind}:{sink.target}',
                              str(exc).split(': ', 1)[-1]) from None
    retention = _tombstone_retention(tombstone_retention_hours)
    try:
        if sink.kind == 'postgresql':
            from transforms.sinks.sql import WriteChangesToPostgres

            return 'WriteChangesToPostgres', WriteChangesToPostgres(
                sink.target, tombstone_retention=retention, reconnect_secs=reconnect_secs)
        from transforms.sinks.sql import WriteChangesToMySQL

        return 'WriteChangesToMySQL', WriteChangesToMySQL(
            sink.target, tombstone_retention=retention, reconnect_secs=reconnect_secs)
    except ValueError as exc:  # a DSN parameter the driver would not take
        raise OptionError('--sink', display(sink.target),
                          str(exc).split("': ", 1)[-1]) from None


def _tombstone_retention(hours: float) -> dt.timedelta | None:
    """``--tombstone_retention_hours`` as the database sinks take it (0: keep forever)."""
    return dt.timedelta(hours=hours) if hours else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    connect_gcs_emulator_anonymously()
    parser = _parser()
    known, beam_args = parser.parse_known_args(argv)
    mistyped = _mistyped(beam_args)
    if mistyped:
        parser.error(mistyped)
    options = PipelineOptions(argv)
    try:
        config = validate_cdc(options)
    except OptionError as exc:
        parser.error(str(exc))
    options.view_as(StandardOptions).runner = known.runner
    # force: PipelineOptions has already logged (unparsed arguments), which gave the root
    # logger a WARNING-level handler; without it nothing below WARNING would show.
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: '
                        '%(message)s', force=True)
    for noisy in ('apache_beam', 'absl'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A failing bundle's exception reaches main() below, which prints one line for a setup
    # failure or re-raises with the traceback; the runner logging it first only doubles it.
    logging.getLogger('apache_beam.runners').setLevel(logging.CRITICAL)
    pipeline = beam.Pipeline(options=options)
    try:
        build(pipeline, config)
    except OptionError as exc:
        parser.error(str(exc))
    _LOG.info('capturing %s into %s:%s', config.source, config.sink.kind,
              '***' if not config.sink.is_file else config.sink.target)
    unreachable = _check_sink(config.sink)
    if unreachable:
        sys.stderr.write(f'{parser.prog}: error: {unreachable}\n')
        return 1
    if known.runner == 'DirectRunner':
        _stop_on_signals()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as exc:
        message = _setup_failure(exc)
        if message is None:
            raise  # a bug: the traceback is what a developer needs
        sys.stderr.write(f'{parser.prog}: error: {message}\n')
        return 1
    _summary(result)
    return 0


def _mistyped(beam_args: Sequence[str]) -> str | None:
    """An option left to the runner that is no Beam option but nearly one of ours: ``--tabels``
    (or ``--table``) would otherwise pass to the runner, which ignores it, and the pipeline
    would capture every table.  Others pass on (``--checkpointing_interval`` is Flink's)."""
    import difflib

    ours = [action.option_strings[0] for action in _parser()._actions
            if action.option_strings and action.option_strings[0].startswith('--')]
    beams = {f'--{name}' for name in PipelineOptions([]).get_all_options()}
    for arg in beam_args:
        name = arg.split('=', 1)[0]
        if not name.startswith('--') or name in beams:
            continue
        close = difflib.get_close_matches('--' + name[2:].replace('-', '_'), ours, n=1,
                                          cutoff=0.75)
        if close:
            return f'{name} is not an option; did you mean {close[0]}?'
    return None


def _check_sink(sink: SinkSpec) -> str | None:
    """Why a database sink cannot be written, in one line, before the source creates a slot
    for it: a wrong password or database was retried for half a minute, after that."""
    if sink.is_file:
        return None
    from transforms.sinks.sql.apply import WriteChanges

    _label, writer = sink_transform(sink)
    assert isinstance(writer, WriteChanges)
    try:
        writer.check_connection()
    except Exception as exc:  # the driver's own error says what is wrong
        return f'--sink {display(sink.target)!r}: cannot connect: {" ".join(str(exc).split())}'
    return None


def _stop_on_signals() -> None:
    """SIGTERM or SIGINT (Ctrl-C) stops the sources at the end of their round, as
    ``--max_idle_secs`` does: what they read is written and confirmed, and the program ends
    with status 0.  A second signal ends it at once (what is not confirmed is read again on
    restart)."""
    from transforms.sources.stream_range import STOP

    def handle(signum: int, _frame: object) -> None:
        if STOP.is_set():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _LOG.info('%s: stopping once what was read is written (again to stop at once)',
                  signal.Signals(signum).name)
        STOP.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)


# Failures of the machine the pipeline writes on (a full disk, a read-only or forbidden
# directory for the sink, the offsets or the dead letters): the user's to fix, in one line.
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                 errno.EPERM})


def _setup_failure(exc: BaseException) -> str | None:
    """One line for a failure the user must fix (connection, configuration, a schema change
    under strict), or None for anything else."""
    known = ('SourceSetupError', 'ReplicationError', 'NoAnswer', 'OperationalError',
             'SchemaChangeError', 'BinlogConfigError', 'BinlogPurgedError',
             'BinlogConnectionLost', 'SourceUnavailable', 'OffsetStoreError',
             'TargetUnavailable')
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _ENVIRONMENT_ERRNOS:
            where = f': {cause.filename}' if cause.filename else ''
            return (f'{cause.strerror}{where} (once that is fixed, run again: what was not '
                    'confirmed is read again)')
        if type(cause).__name__ in known:
            text = str(cause).split(" [while running '")[0].strip()
            return text if type(cause).__name__ == 'SchemaChangeError' else \
                ' '.join(text.split())
        cause = cause.__cause__ or cause.__context__
    return None


def _summary(result: beam.runners.runner.PipelineResult) -> None:
    try:
        counters = result.metrics().query()['counters']
    except Exception:  # a runner without metrics support: nothing to summarise
        return
    totals: dict[str, int] = {}
    for counter in counters:
        name = f'{counter.key.metric.namespace}.{counter.key.metric.name}'
        totals[name] = totals.get(name, 0) + (counter.committed or counter.attempted or 0)
    wanted = ['ReadPostgresChanges.changes', 'ReadMySqlChanges.changes',
              'EvolveSchema.schema_changes', 'WriteChangesToFiles.events',
              'WriteChangesToFiles.files', 'WriteChangesToPostgres.rows_applied',
              'WriteChangesToMySQL.rows_applied', 'ReadPostgresChanges.dead_letters',
              'ReadMySqlChanges.dead_letters']
    parts = [f'{name.split(".")[1]}={totals[name]:,}' for name in wanted if name in totals]
    dead = sum(v for k, v in totals.items() if k.startswith('DeadLetters.'))
    if dead:
        parts.append(f'dead letters written={dead:,}')
    print('changebeam summary: ' + (', '.join(parts) or 'no changes'), file=sys.stderr)


if __name__ == '__main__':
    sys.exit(main())
