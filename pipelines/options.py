"""Pipeline options of the changebeam pipelines, and their validation.

Options are Beam ``PipelineOptions`` so that Dataflow Flex Templates and Flink see them as
ordinary pipeline parameters.  :func:`validate_cdc` turns them into a frozen :class:`CdcConfig`
before anything runs, or raises :class:`OptionError` naming the option, the value and what would
be valid::

    config = validate_cdc(PipelineOptions(argv).view_as(CdcOptions))
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from transforms.dead_letter import parse_dead_letter_uri
from transforms.dsn import Dsn, DsnError, display, parse_dsn

__all__ = [
    'SCHEMA_CHANGE_POLICIES',
    'SNAPSHOT_MODES',
    'CdcConfig',
    'CdcOptions',
    'OptionError',
    'SinkSpec',
    'parse_sink',
    'validate_cdc',
]

SNAPSHOT_MODES = ('initial', 'never', 'only')
SCHEMA_CHANGE_POLICIES = ('evolve', 'strict', 'lenient', 'ignore')
FILE_SINKS = ('jsonl', 'avro', 'parquet')
DATABASE_SINKS = ('postgresql', 'postgres', 'mysql', 'mariadb')
_IDENT = r'[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+"'
_TABLE = re.compile(rf'^(?:(?P<schema>{_IDENT})\.)?(?P<table>{_IDENT})$')
_SLOT = re.compile(r'^[a-z0-9_]{1,63}$')
_MAX_RETENTION_HOURS = 24 * 366 * 100.0


class OptionError(ValueError):
    """An option has a value that cannot work; the message names option, value and what is valid."""

    def __init__(self, option: str, value: object, valid: str) -> None:
        super().__init__(f'{option} {value!r}: {valid}')
        self.option = option


@dataclasses.dataclass(frozen=True)
class SinkSpec:
    """Where changes go: ``kind`` is a file format (jsonl, avro, parquet) or a database."""

    kind: str
    target: str  # directory/URI for files, the DSN for databases

    @property
    def is_file(self) -> bool:
        return self.kind in FILE_SINKS


@dataclasses.dataclass(frozen=True)
class CdcConfig:
    """Validated options of ``pipelines.cdc``."""

    source: Dsn
    tables: tuple[str, ...]
    sink: SinkSpec
    snapshot: str
    max_idle_secs: float | None
    dead_letter: str
    slot_name: str
    publication: str
    schema_change: str
    schema_registry: str
    heartbeat_secs: float
    server_name: str
    progress: bool
    offset_store: str = ''  # MySQL/MariaDB sources only
    reconnect_secs: float = 300.0  # 0: a broken source connection stops the pipeline
    tombstone_retention_hours: float = 168.0  # database sinks only; 0: keep forever


class CdcOptions(PipelineOptions):
    """Options of the CDC pipeline (``python -m pipelines.cdc --help`` lists them)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group('changebeam CDC')
        group.add_argument(
            '--source', default=None,
            help='Database to capture: postgresql://USER[:PASSWORD]@HOST[:PORT]/DB '
                 '(host may be a socket directory: postgresql://USER@/DB?host=/run/pg) or '
                 'mysql://USER[:PASSWORD]@HOST[:PORT]/DB.')
        group.add_argument(
            '--tables', default='',
            help='Comma-separated schema.table names to capture (default: every table).')
        group.add_argument(
            '--sink', default=None,
            help='Where changes go: jsonl:DIR, avro:DIR, parquet:DIR (DIR may be s3:// or gs://), '
                 'postgresql://… or mysql://… (a replica kept equal to the source).')
        group.add_argument(
            '--snapshot', default='initial',
            help='initial: copy existing rows (op r) then stream; never: stream only; '
                 'only: copy existing rows and stop. Default: initial.')
        group.add_argument(
            '--max_idle_secs', default=None,
            help='Stop cleanly after this many seconds without a new change, counted once '
                 'streaming began (default: run forever).')
        group.add_argument(
            '--dead_letter', default=None,
            help='Where records that cannot be decoded or written go, as jsonl:DIR, DIR a '
                 'directory, gs://… or s3://… (default: DIR/_dead_letters under a file sink\'s '
                 'DIR, else ./dead-letters; required on Dataflow with a database sink).')
        group.add_argument(
            '--slot_name', default=None,
            help='PostgreSQL replication slot to create or resume (default: changebeam_<db>).')
        group.add_argument(
            '--publication', default=None,
            help='PostgreSQL publication to create or reuse (default: same as the slot name).')
        group.add_argument(
            '--schema_change', default='evolve',
            help='What a schema change does: evolve (register a new version, sinks follow), '
                 'strict (stop with the difference), lenient (additive changes only), '
                 'ignore (keep the first schema). Default: evolve.')
        group.add_argument(
            '--schema_registry', default=None,
            help='Where table schema versions are kept: a directory, gs://… or s3://… '
                 '(default: DIR/_schemas under a file sink\'s DIR, else ./schemas; required '
                 'on Dataflow with a database sink).')
        group.add_argument(
            '--heartbeat_secs', default='10',
            help='How often an idle source writes a heartbeat so the slot keeps advancing '
                 '(default: 10; 0 disables).')
        group.add_argument(
            '--reconnect_secs', default='300',
            help='How long a streaming source keeps reconnecting after its connection broke '
                 '(server restart, failover, network), resuming where it was, and a database '
                 'sink retries a target that stopped answering (default: 300; 0: the source '
                 'stops the pipeline at once, the sink after a few quick attempts).')
        group.add_argument(
            '--offset_store', default=None,
            help='Where a MySQL/MariaDB source records the binlog position the sink reached: '
                 'a file path, gs://… or s3://… (default: DIR/_offsets/NAME.json under a '
                 'file sink\'s DIR, else ./offsets/NAME.json; NAME is --server_name).')
        group.add_argument(
            '--server_name', default=None,
            help='Logical name of the source in events (source.name; default: the DB name).')
        group.add_argument(
            '--tombstone_retention_hours', default='168',
            help='Database sinks: hours a deleted row\'s tombstone keeps stopping late, older '
                 'changes of it from bringing the row back, before it is pruned '
                 '(default: 168 = 7 days; 0 keeps tombstones forever).')
        group.add_argument(
            '--progress', default='auto',
            help='Print a live progress line to stderr: on, off or auto (on for a terminal).')


def parse_sink(value: str | None, option: str = '--sink') -> SinkSpec:
    valid = ('use jsonl:DIR, avro:DIR, parquet:DIR, postgresql://USER@HOST/DB or '
             'mysql://USER@HOST/DB')
    if not value:
        raise OptionError(option, value, f'is required; {valid}')
    if '://' in value:
        scheme = value.split('://', 1)[0].lower()
        if scheme in DATABASE_SINKS:
            try:
                dsn = parse_dsn(value, option=option)
            except DsnError as exc:
                raise OptionError(option, exc.shown, exc.problem) from None
            return SinkSpec(dsn.kind, value)
    kind, sep, target = value.partition(':')
    if sep and kind in FILE_SINKS and target:
        return SinkSpec(kind, target)
    raise OptionError(option, display(value) if '://' in value else value, valid)


def _positive_float(option: str, value: str | None, *, allow_zero: bool = False,
                    unit: str = 'seconds', finite: bool = True) -> float | None:
    if value is None or value == '':
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if number < 0 or (number == 0 and not allow_zero) or number != number or \
            (finite and not math.isfinite(number)):
        least = 'zero or more' if allow_zero else 'more than zero'
        raise OptionError(option, value, f'must be a number of {unit}, {least}')
    return number


def _choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise OptionError(option, value, f'must be one of {", ".join(choices)}')
    return value


def _tables(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(',') if name.strip())
    for name in names:
        if not _TABLE.match(name):
            raise OptionError('--tables', name, 'each table must be schema.table or table '
                              '(quote unusual names: "My Schema"."Orders")')
    return names


def validate_cdc(options: PipelineOptions) -> CdcConfig:
    """Check every CDC option; raise OptionError for the first bad one."""
    opts = options.view_as(CdcOptions)
    if not opts.source:
        raise OptionError('--source', opts.source, 'is required: postgresql://… or mysql://…')
    try:
        source = parse_dsn(opts.source, option='--source')
    except DsnError as exc:
        raise OptionError('--source', exc.shown, exc.problem) from None
    sink = parse_sink(opts.sink)
    if opts.dead_letter:
        if not opts.dead_letter.startswith('jsonl:') or len(opts.dead_letter) <= len('jsonl:'):
            raise OptionError('--dead_letter', opts.dead_letter, 'use jsonl:DIR')
        dead_letter = opts.dead_letter
    elif _beside(sink):  # beside the files, also in a bucket (a worker's disk is not kept)
        dead_letter = f'jsonl:{_beside(sink)}/_dead_letters'
    else:
        dead_letter = 'jsonl:dead-letters'
    try:
        parse_dead_letter_uri(dead_letter)
    except ValueError:
        raise OptionError('--dead_letter', dead_letter, 'use jsonl:DIR with DIR a local '
                          'directory, gs://BUCKET/… or s3://BUCKET/…') from None
    if opts.schema_registry:
        schema_registry = opts.schema_registry
    elif _beside(sink):
        schema_registry = f'{_beside(sink)}/_schemas'
    else:
        schema_registry = 'schemas'
    slot = opts.slot_name or _default_slot(source.database)
    if not _SLOT.match(slot):
        raise OptionError('--slot_name', slot, 'use 1-63 lower-case letters, digits or _')
    publication = opts.publication or slot
    if not _SLOT.match(publication):
        raise OptionError('--publication', publication, 'use 1-63 lower-case letters, digits or _')
    heartbeat = _positive_float('--heartbeat_secs', opts.heartbeat_secs, allow_zero=True)
    progress = _choice('--progress', opts.progress, ('on', 'off', 'auto'))
    server_name = opts.server_name or source.database or 'changebeam'
    config = CdcConfig(
        source=source,
        tables=_tables(opts.tables or ''),
        sink=sink,
        snapshot=_choice('--snapshot', opts.snapshot, SNAPSHOT_MODES),
        max_idle_secs=_positive_float('--max_idle_secs', opts.max_idle_secs),
        dead_letter=dead_letter,
        slot_name=slot,
        publication=publication,
        schema_change=_choice('--schema_change', opts.schema_change, SCHEMA_CHANGE_POLICIES),
        schema_registry=schema_registry,
        heartbeat_secs=heartbeat or 0.0,
        server_name=server_name,
        offset_store=_offset_store(opts.offset_store, sink, server_name),
        progress=progress == 'on' or (progress == 'auto' and _stderr_is_tty()),
        tombstone_retention_hours=_retention_hours(opts.tombstone_retention_hours),
        reconnect_secs=_positive_float('--reconnect_secs', opts.reconnect_secs,
                                       allow_zero=True) or 0.0,
    )
    _check_runner(options, config, given={'--dead_letter': bool(opts.dead_letter),
                                          '--schema_registry': bool(opts.schema_registry),
                                          '--offset_store': bool(opts.offset_store)})
    return config


def _runner_name(options: PipelineOptions) -> str:
    """'direct', 'dataflow', 'flink', 'spark', … from --runner however it is spelled."""
    runner = options.view_as(StandardOptions).runner or 'DirectRunner'
    name = str(runner).rsplit('.', 1)[-1].lower()
    return name[:-len('runner')] if name.endswith('runner') and name != 'runner' else name


def _check_runner(options: PipelineOptions, config: CdcConfig, given: dict[str, bool]) -> None:
    """What the runner needs for the sources' guarantees to hold.

    The sources confirm a position (the slot's, the offset store's) in Beam's bundle
    finalizer, once the sink committed: a runner that never calls it would never let the slot
    advance.  And what must outlive a worker (files, dead letters, schema versions, binlog
    offsets) cannot live on a Dataflow worker's disk, which is discarded with the worker."""
    runner = _runner_name(options)
    if runner in ('spark', 'sparkportable'):
        raise OptionError('--runner', options.view_as(StandardOptions).runner,
                          "Spark's runner never calls Beam's bundle finalizer, where the "
                          'sources confirm what the sink committed (the slot or offset would '
                          'never advance): use DirectRunner, DataflowRunner or FlinkRunner')
    if runner == 'flink':
        every = options.get_all_options(retain_unknown_options=True)
        if not every.get('streaming') or not every.get('checkpointing_interval'):
            raise OptionError('--runner', options.view_as(StandardOptions).runner,
                              "Flink calls Beam's bundle finalizer, where the sources confirm "
                              'what the sink committed, only in streaming mode after a '
                              'checkpoint: add --streaming --checkpointing_interval=MILLISECONDS')
    if runner != 'dataflow':
        return
    stored = {'--dead_letter': parse_dead_letter_uri(config.dead_letter),
              '--schema_registry': config.schema_registry}
    if config.source.kind == 'mysql' and config.snapshot != 'only':
        stored['--offset_store'] = config.offset_store
    if config.sink.is_file:
        stored = {'--sink': config.sink.target, **stored}
    for option, where in stored.items():
        if where.startswith(('gs://', 's3://')):
            continue
        if option == '--sink' or given.get(option):
            shown = f'{config.sink.kind}:{where}' if option == '--sink' else \
                f'jsonl:{where}' if option == '--dead_letter' else where
            raise OptionError(option, shown, "on DataflowRunner a worker's disk is discarded "
                              'with the worker: use gs://BUCKET/… or s3://BUCKET/…')
        raise OptionError(option, None, 'is required on DataflowRunner unless the sink is '
                          f'files in gs:// or s3:// (the default, {where}, would be on a '
                          "worker's disk, discarded with the worker): use gs://BUCKET/… or "
                          's3://BUCKET/…')


def _retention_hours(value: str | None) -> float:
    hours = _positive_float('--tombstone_retention_hours', value, allow_zero=True,
                            unit='hours', finite=False) or 0.0
    if hours > _MAX_RETENTION_HOURS:  # infinity, or more than a timedelta holds
        raise OptionError('--tombstone_retention_hours', value,
                          f'must be at most {_MAX_RETENTION_HOURS:.0f} hours; 0 keeps '
                          'tombstones forever')
    return hours


def _beside(sink: SinkSpec) -> str | None:
    """The directory of a file sink that can also hold dead letters, schema versions and
    offsets (local, gs:// or s3://; the sink itself refuses other schemes)."""
    if not sink.is_file or ('://' in sink.target
                            and not sink.target.startswith(('gs://', 's3://'))):
        return None
    return sink.target.rstrip('/')


def _offset_store(value: str | None, sink: SinkSpec, server_name: str) -> str:
    if value:
        scheme, sep, rest = value.partition('://')
        if (sep and scheme not in ('gs', 's3', 'file')) or value.endswith('/') or \
                (sep and '/' not in rest.strip('/')):
            raise OptionError('--offset_store', value,
                              'use a file path, gs://BUCKET/PATH or s3://BUCKET/PATH')
        return value
    name = re.sub(r'[^A-Za-z0-9_.-]', '_', server_name) + '.json'
    if _beside(sink):
        return f'{_beside(sink)}/_offsets/{name}'
    return f'offsets/{name}'


def _default_slot(database: str) -> str:
    cleaned = re.sub(r'[^a-z0-9_]', '_', (database or 'db').lower())
    return f'changebeam_{cleaned}'[:63]


def _stderr_is_tty() -> bool:
    import sys
    return sys.stderr.isatty()
