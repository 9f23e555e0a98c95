"""CDC pipeline options: every option's good and bad values, the messages, and the defaults."""
from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import (
    SCHEMA_CHANGE_POLICIES,
    SNAPSHOT_MODES,
    CdcConfig,
    OptionError,
    SinkSpec,
    parse_sink,
    validate_cdc,
)

SOURCE = 'postgresql://cdc@db.example/shop'
SINK = 'jsonl:/data/lake'


def config(*args: str, source: str | None = SOURCE, sink: str | None = SINK) -> CdcConfig:
    argv = list(args)
    if source is not None:
        argv += ['--source', source]
    if sink is not None:
        argv += ['--sink', sink]
    return validate_cdc(PipelineOptions(argv))


def rejected(*args: str, **kwargs: str | None) -> OptionError:
    with pytest.raises(OptionError) as info:
        config(*args, **kwargs)
    return info.value


def test_defaults_for_a_postgres_source_and_a_local_file_sink() -> None:
    cfg = config(source='postgresql://cdc@db.example:5433/shop', sink='jsonl:/data/lake/')
    assert cfg.source.kind == 'postgresql' and cfg.source.port == 5433
    assert cfg.sink == SinkSpec('jsonl', '/data/lake/')
    assert cfg.tables == ()
    assert cfg.snapshot == 'initial'
    assert cfg.max_idle_secs is None
    assert cfg.dead_letter == 'jsonl:/data/lake/_dead_letters'
    assert cfg.slot_name == 'changebeam_shop'
    assert cfg.publication == 'changebeam_shop'
    assert cfg.schema_change == 'evolve'
    assert cfg.heartbeat_secs == 10.0
    assert cfg.server_name == 'shop'


def test_dead_letters_go_under_a_local_file_sink_directory() -> None:
    assert config(sink='jsonl:out').dead_letter == 'jsonl:out/_dead_letters'
    assert config(sink='parquet:rel/dir').dead_letter == 'jsonl:rel/dir/_dead_letters'


@pytest.mark.parametrize('sink, stored', [('jsonl:gs://bucket/lake', 'gs://bucket/lake'),
                                           ('avro:s3://bucket/lake/', 's3://bucket/lake')])
def test_what_must_be_kept_goes_beside_files_in_a_bucket(sink: str, stored: str) -> None:
    cfg = config(sink=sink, source='mysql://cdc@db.example/shop')
    assert cfg.dead_letter == f'jsonl:{stored}/_dead_letters'
    assert cfg.schema_registry == f'{stored}/_schemas'
    assert cfg.offset_store == f'{stored}/_offsets/shop.json'


@pytest.mark.parametrize('sink', ['postgresql://u@replica/shop', 'mysql://u@replica/shop'])
def test_dead_letters_default_to_a_local_directory_for_database_sinks(sink: str) -> None:
    assert config(sink=sink).dead_letter == 'jsonl:dead-letters'
    assert config(sink=sink).schema_registry == 'schemas'


def test_explicit_dead_letter_directory_wins() -> None:
    assert config('--dead_letter', 'jsonl:/var/dead').dead_letter == 'jsonl:/var/dead'


@pytest.mark.parametrize('value', ['jsonl:', '/var/dead', 'avro:/var/dead', 's3://bucket/dead'])
def test_bad_dead_letter_uri(value: str) -> None:
    error = rejected('--dead_letter', value)
    assert error.option == '--dead_letter'
    assert str(error) == f'--dead_letter {value!r}: use jsonl:DIR'


@pytest.mark.parametrize('value', ['jsonl:ftp://host/dead', 'jsonl:gs:///dead', 'jsonl:s3://'])
def test_a_dead_letter_uri_that_would_become_a_local_directory_is_refused(value: str) -> None:
    error = rejected('--dead_letter', value)
    assert str(error) == (f'--dead_letter {value!r}: use jsonl:DIR with DIR a local directory, '
                          'gs://BUCKET/… or s3://BUCKET/…')


@pytest.mark.parametrize('value', ['jsonl:gs://bucket', 'jsonl:s3://bucket/cdc/dead'])
def test_dead_letters_in_a_bucket(value: str) -> None:
    assert config('--dead_letter', value).dead_letter == value


# -- what the runner must do for the guarantees to hold -----------------------------------------

def test_spark_is_refused_it_never_finalizes_bundles() -> None:
    error = rejected('--runner', 'SparkRunner')
    assert error.option == '--runner'
    assert "never calls Beam's bundle finalizer" in str(error)


@pytest.mark.parametrize('extra', [(), ('--streaming',), ('--checkpointing_interval=10000',)])
def test_flink_needs_streaming_and_checkpoints(extra: tuple[str, ...]) -> None:
    error = rejected('--runner', 'FlinkRunner', *extra)
    assert str(error) == (
        "--runner 'FlinkRunner': Flink calls Beam's bundle finalizer, where the sources confirm "
        'what the sink committed, only in streaming mode after a checkpoint: add --streaming '
        '--checkpointing_interval=MILLISECONDS')


def test_flink_with_streaming_and_checkpoints() -> None:
    cfg = config('--runner', 'FlinkRunner', '--streaming', '--checkpointing_interval', '10000')
    assert cfg.sink == SinkSpec('jsonl', '/data/lake')


DATAFLOW = ('--runner', 'DataflowRunner')


def test_dataflow_refuses_files_on_a_workers_disk() -> None:
    error = rejected(*DATAFLOW, sink='parquet:/data/lake')
    assert str(error) == ("--sink 'parquet:/data/lake': on DataflowRunner a worker's disk is "
                          'discarded with the worker: use gs://BUCKET/… or s3://BUCKET/…')


@pytest.mark.parametrize('option, value', [('--dead_letter', 'jsonl:/var/dead'),
                                           ('--schema_registry', '/var/schemas')])
def test_dataflow_refuses_a_local_directory_given_for_what_must_be_kept(
        option: str, value: str) -> None:
    error = rejected(*DATAFLOW, option, value, sink='jsonl:gs://b/lake')
    assert error.option == option
    assert str(error).startswith(f'{option} {value!r}: ')
    assert "a worker's disk is discarded" in str(error)


def test_dataflow_with_a_database_sink_needs_dead_letters_and_registry_named() -> None:
    sink = 'postgresql://u@replica/shop'
    error = rejected(*DATAFLOW, sink=sink)
    assert str(error) == (
        "--dead_letter None: is required on DataflowRunner unless the sink is files in gs:// "
        "or s3:// (the default, dead-letters, would be on a worker's disk, discarded with the "
        'worker): use gs://BUCKET/… or s3://BUCKET/…')
    error = rejected(*DATAFLOW, '--dead_letter', 'jsonl:gs://b/dead', sink=sink)
    assert error.option == '--schema_registry'
    cfg = config(*DATAFLOW, '--dead_letter', 'jsonl:gs://b/dead', '--schema_registry',
                 's3://b/schemas', sink=sink)
    assert cfg.schema_registry == 's3://b/schemas'


def test_dataflow_with_a_mysql_source_needs_the_offset_store_kept() -> None:
    mysql = 'mysql://cdc@db.example/shop'
    kept = ('--dead_letter', 'jsonl:gs://b/dead', '--schema_registry', 'gs://b/schemas')
    error = rejected(*DATAFLOW, *kept, source=mysql, sink='mysql://u@replica/shop')
    assert error.option == '--offset_store'
    assert config(*DATAFLOW, *kept, '--snapshot', 'only', source=mysql,
                  sink='mysql://u@replica/shop').snapshot == 'only'  # a backfill keeps none
    assert config(*DATAFLOW, source=mysql, sink='avro:gs://b/lake').offset_store == \
        'gs://b/lake/_offsets/shop.json'


@pytest.mark.parametrize('runner', ['DirectRunner', 'apache_beam.runners.direct.DirectRunner',
                                    'PortableRunner'])
def test_other_runners_keep_local_directories(runner: str) -> None:
    assert config('--runner', runner, sink='postgresql://u@r/shop').dead_letter == \
        'jsonl:dead-letters'


@pytest.mark.parametrize('database, slot', [
    ('shop', 'changebeam_shop'),
    ('Shop-DB', 'changebeam_shop_db'),
    ('my db', 'changebeam_my_db'),
    ('x' * 80, 'changebeam_' + 'x' * 52),
])
def test_slot_name_defaults_to_a_valid_name_from_the_database(database: str, slot: str) -> None:
    cfg = config(source=f'postgresql://cdc@db/{database.replace(" ", "%20")}')
    assert cfg.slot_name == slot and len(slot) <= 63
    assert cfg.publication == slot
    assert cfg.server_name == database


def test_source_without_a_database() -> None:
    cfg = config(source='postgresql://cdc@db')
    assert (cfg.slot_name, cfg.server_name) == ('changebeam_db', 'changebeam')


def test_publication_defaults_to_an_explicit_slot_name() -> None:
    cfg = config('--slot_name', 'orders_slot')
    assert (cfg.slot_name, cfg.publication) == ('orders_slot', 'orders_slot')
    cfg = config('--slot_name', 'orders_slot', '--publication', 'orders_pub')
    assert (cfg.slot_name, cfg.publication) == ('orders_slot', 'orders_pub')


@pytest.mark.parametrize('option', ['--slot_name', '--publication'])
@pytest.mark.parametrize('value', ['Orders', 'orders-slot', 'x' * 64, 'ordérs'])
def test_bad_slot_and_publication_names(option: str, value: str) -> None:
    error = rejected(option, value)
    assert error.option == option
    assert str(error) == f'{option} {value!r}: use 1-63 lower-case letters, digits or _'


def test_server_name_overrides_the_database_name() -> None:
    assert config('--server_name', 'prod-shop').server_name == 'prod-shop'


def test_source_is_required() -> None:
    error = rejected(source=None)
    assert error.option == '--source'
    assert 'is required' in str(error) and 'postgresql://' in str(error)


@pytest.mark.parametrize('source', ['postgres://u@h/db', 'mysql://u@h/db', 'mariadb://u@h/db',
                                    'postgresql://u@/db?host=/run/pg'])
def test_accepted_sources(source: str) -> None:
    assert config(source=source).source.raw == source


@pytest.mark.parametrize('source, problem', [
    ('bogus://x', "unsupported scheme 'bogus'"),
    ('mysql://u:pw@/db', 'needs a host'),
    ('postgresql://u:pw@h:abc/db', 'abc'),
])
def test_bad_source_names_option_value_and_problem(source: str, problem: str) -> None:
    error = rejected(source=source)
    assert error.option == '--source'
    assert str(error).startswith('--source ')
    assert problem in str(error)
    assert 'pw' not in str(error)


def test_bad_source_error_never_shows_the_password() -> None:
    error = rejected(source='postgresql://u:topsecret@h:abc/db')
    assert 'topsecret' not in str(error)
    assert "'postgresql://u:***@h:abc/db'" in str(error)


def test_keyword_value_source_error_never_shows_the_password() -> None:
    error = rejected(source='host=db user=cdc password=topsecret dbname=shop')
    assert error.option == '--source'
    assert 'topsecret' not in str(error)


@pytest.mark.parametrize('value, spec', [
    ('jsonl:out', SinkSpec('jsonl', 'out')),
    ('avro:/data/lake', SinkSpec('avro', '/data/lake')),
    ('parquet:gs://bucket/lake', SinkSpec('parquet', 'gs://bucket/lake')),
    ('jsonl:s3://bucket/lake', SinkSpec('jsonl', 's3://bucket/lake')),
    ('postgresql://u:pw@replica/shop', SinkSpec('postgresql', 'postgresql://u:pw@replica/shop')),
    ('postgres://u@replica/shop', SinkSpec('postgresql', 'postgres://u@replica/shop')),
    ('mariadb://u@replica/shop', SinkSpec('mysql', 'mariadb://u@replica/shop')),
])
def test_parse_sink_accepts_files_and_databases(value: str, spec: SinkSpec) -> None:
    assert parse_sink(value) == spec
    assert parse_sink(value).is_file == (spec.kind in ('jsonl', 'avro', 'parquet'))


@pytest.mark.parametrize('value', ['jsonl:', 'csv:out', 'out', 's3://bucket/lake', 'JSONL:out',
                                   'jsonl', 'kafka://broker/topic'])
def test_bad_sink_names_option_value_and_what_is_valid(value: str) -> None:
    error = rejected(sink=value)
    assert error.option == '--sink'
    assert str(error).startswith(f'--sink {value!r}: use jsonl:DIR, avro:DIR, parquet:DIR')


def test_sink_is_required() -> None:
    error = rejected(sink=None)
    assert error.option == '--sink' and 'is required' in str(error)


def test_bad_database_sink_error_never_shows_the_password() -> None:
    with pytest.raises(OptionError) as info:
        parse_sink('mysql://u:topsecret@/db')
    assert info.value.option == '--sink'
    assert 'topsecret' not in str(info.value) and 'needs a host' in str(info.value)


@pytest.mark.parametrize('mode', SNAPSHOT_MODES)
def test_snapshot_modes(mode: str) -> None:
    assert config('--snapshot', mode).snapshot == mode


@pytest.mark.parametrize('value', ['sometimes', 'Initial', ''])
def test_bad_snapshot_mode(value: str) -> None:
    error = rejected('--snapshot', value)
    assert error.option == '--snapshot'
    assert str(error) == f'--snapshot {value!r}: must be one of initial, never, only'


@pytest.mark.parametrize('policy', SCHEMA_CHANGE_POLICIES)
def test_schema_change_policies(policy: str) -> None:
    assert config('--schema_change', policy).schema_change == policy


def test_bad_schema_change_policy() -> None:
    error = rejected('--schema_change', 'yolo')
    assert error.option == '--schema_change'
    assert str(error) == "--schema_change 'yolo': must be one of evolve, strict, lenient, ignore"


@pytest.mark.parametrize('value, seconds', [('30', 30.0), ('0.5', 0.5), ('1e3', 1000.0)])
def test_max_idle_secs(value: str, seconds: float) -> None:
    assert config('--max_idle_secs', value).max_idle_secs == seconds


@pytest.mark.parametrize('value', ['0', '-1', 'abc', 'nan', '10s', 'inf'])
def test_bad_max_idle_secs(value: str) -> None:
    error = rejected('--max_idle_secs', value)
    assert error.option == '--max_idle_secs'
    assert str(error) == (f'--max_idle_secs {value!r}: must be a number of seconds, '
                          'more than zero')


@pytest.mark.parametrize('value, seconds', [('0', 0.0), ('2.5', 2.5), ('10', 10.0)])
def test_heartbeat_secs_zero_disables(value: str, seconds: float) -> None:
    assert config('--heartbeat_secs', value).heartbeat_secs == seconds


@pytest.mark.parametrize('value', ['-1', 'often', 'nan'])
def test_bad_heartbeat_secs(value: str) -> None:
    error = rejected('--heartbeat_secs', value)
    assert error.option == '--heartbeat_secs'
    assert str(error) == (f'--heartbeat_secs {value!r}: must be a number of seconds, '
                          'zero or more')


@pytest.mark.parametrize('value, hours', [(None, 168.0), ('0', 0.0), ('0.5', 0.5),
                                          ('720', 720.0)])
def test_tombstone_retention_hours_default_to_a_week_and_zero_keeps_forever(
        value: str | None, hours: float) -> None:
    args = ('--tombstone_retention_hours', value) if value is not None else ()
    assert config(*args, sink='postgresql://u@replica/shop').tombstone_retention_hours == hours


@pytest.mark.parametrize('value, valid', [
    ('-1', 'must be a number of hours, zero or more'),
    ('a week', 'must be a number of hours, zero or more'),
    ('inf', 'must be at most 878400 hours; 0 keeps tombstones forever'),
])
def test_bad_tombstone_retention_hours(value: str, valid: str) -> None:
    error = rejected('--tombstone_retention_hours', value)
    assert error.option == '--tombstone_retention_hours'
    assert str(error) == f'--tombstone_retention_hours {value!r}: {valid}'


def test_tables_are_split_trimmed_and_may_be_quoted() -> None:
    cfg = config('--tables', ' public.orders, customers ,,"My Schema"."Order Lines"')
    assert cfg.tables == ('public.orders', 'customers', '"My Schema"."Order Lines"')


@pytest.mark.parametrize('name', ['a.b.c', 'public.', '1orders', 'public.order lines',
                                  '"unterminated.orders'])
def test_bad_table_name_is_named(name: str) -> None:
    error = rejected('--tables', f'public.ok,{name}')
    assert error.option == '--tables'
    assert str(error).startswith(f'--tables {name!r}: each table must be schema.table or table')


@pytest.mark.parametrize('value, expected', [('on', True), ('off', False)])
def test_progress(value: str, expected: bool) -> None:
    assert config('--progress', value).progress is expected


def test_progress_auto_is_off_when_stderr_is_not_a_terminal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr('sys.stderr.isatty', lambda: False)
    assert config().progress is False
    monkeypatch.setattr('sys.stderr.isatty', lambda: True)
    assert config().progress is True


def test_bad_progress() -> None:
    error = rejected('--progress', 'yes')
    assert error.option == '--progress'
    assert str(error) == "--progress 'yes': must be one of on, off, auto"


def test_option_error_is_a_value_error() -> None:
    # Callers that only know ValueError (Flex Template launchers, tests) still catch it.
    assert issubclass(OptionError, ValueError)
