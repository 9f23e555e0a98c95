"""Creating the replication slot waits for transactions open when it began: the log names them.

What a user checks: a pipeline that does not start because a session sits idle in a transaction
(in any database of the server) says so, naming the process and what ends the wait, instead of
waiting without a word; once that transaction ends, the slot is created and the pipeline goes on.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from tests.integration.background import Background, wait_for_log
from transforms.sources.postgres.read import create_slot
from transforms.sources.postgres.replication import ReplicationStream

pytestmark = pytest.mark.integration


def test_creating_a_slot_names_the_open_transaction_it_waits_for(postgres, pg_db,
                                                                  caplog) -> None:
    caplog.set_level(logging.INFO, logger='transforms.sources.postgres.read')
    other = postgres.database('other')  # another database of the same server counts too
    with other.connect() as conn:
        conn.execute('CREATE TABLE t (id integer)')
    blocker = other.connect()
    blocker.execute("SET application_name = 'nightly-report'")
    blocker.execute('BEGIN')
    blocker.execute('INSERT INTO t VALUES (1)')  # holds a transaction id from now on
    pid = blocker.info.backend_pid
    time.sleep(1.1)  # older than the slot creation by more than the report's rounding

    stream = ReplicationStream.connect(pg_db.dsn)
    creating = Background(lambda: create_slot(stream, pg_db.dsn, 'waits_for_a_session',
                                              export_snapshot=False, report_every_s=0.5))
    try:
        warning = wait_for_log(caplog, lambda message: f'process {pid} ' in message, 30)
        assert creating.is_alive(), creating.error  # still waiting: the transaction is open
    finally:
        blocker.execute('COMMIT')
        blocker.close()
    assert creating.join(30), 'the slot is still not created after the transaction ended'
    try:
        assert creating.error is None, creating.error
        assert warning is not None, [r.getMessage() for r in caplog.records]
        assert 'creating slot waits_for_a_session has waited' in warning
        assert f'process {pid} (database {other.name}, user ' in warning
        assert ', nightly-report) idle in transaction for ' in warning
        assert 'INSERT INTO t VALUES (1)' in warning
        assert 'pg_terminate_backend(pid)' in warning
        assert creating.result.consistent_point > 0
        with pg_db.connect() as conn:
            assert conn.execute("SELECT count(*) FROM pg_replication_slots "
                                "WHERE slot_name = 'waits_for_a_session'").fetchone()[0] == 1
    finally:
        stream.close()
        with pg_db.connect() as conn:
            conn.execute("SELECT pg_drop_replication_slot('waits_for_a_session')")
        postgres.drop_database(other.name)


def test_setting_up_names_the_session_holding_the_lock_it_waits_for(pg_db, tmp_path,
                                                                      monkeypatch,
                                                                      caplog) -> None:
    """Adding a table to the publication needs a lock that a ``CREATE INDEX`` or a manual
    ``VACUUM`` holds for as long as it runs (held here by ``LOCK TABLE … IN SHARE MODE``): the
    pipeline waits, and the log says for what and for whom; then it starts."""
    import apache_beam as beam

    from transforms.sources.postgres import read
    from transforms.sources.postgres.read import ReadPostgresChanges

    monkeypatch.setattr(read, '_SLOT_WAIT_REPORT_S', 0.5)
    caplog.set_level(logging.INFO, logger='transforms.sources.postgres.read')
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE public.t (id integer PRIMARY KEY)')
    holder = pg_db.connect()
    holder.execute("SET application_name = 'index-build'")
    holder.execute('BEGIN')
    holder.execute('LOCK TABLE public.t IN SHARE MODE')  # as CREATE INDEX would
    pid = holder.info.backend_pid
    pipeline = beam.Pipeline(runner='DirectRunner')
    _ = (pipeline
         | ReadPostgresChanges(pg_db.dsn, tables=['public.t'], snapshot='never',
                               max_idle_secs=1, dead_letter=f'jsonl:{tmp_path / "dead"}')
         | beam.Map(lambda event: None))
    running = Background(lambda: pipeline.run().wait_until_finish())
    try:
        warning = wait_for_log(caplog, lambda message: message.startswith('starting: '), 60)
        assert running.is_alive(), running.error
    finally:
        holder.execute('COMMIT')
        holder.close()
    assert running.join(60), 'the pipeline did not go on once the lock was released'
    assert running.error is None, running.error
    assert warning is not None, [r.getMessage() for r in caplog.records]
    assert "'CREATE PUBLICATION " in warning and ' has waited ' in warning
    assert f'for a lock held by process {pid} (database {pg_db.name}, user ' in warning
    assert ', index-build) idle in transaction for ' in warning
    assert 'LOCK TABLE public.t IN SHARE MODE' in warning


_STREAMED: list[int] = []  # keys the in-process pipeline below emitted (pickled by name)


def _keep_key(event: Any) -> None:
    _STREAMED.append(event.key[0])


def test_a_start_that_waited_longer_than_max_idle_still_streams(pg_db, tmp_path) -> None:
    """``--max_idle_secs`` is time without changes once streaming began: a start held up by a
    lock for longer than that is not idle time.  (It used to count, and such a pipeline
    stopped after its first round, missing the change written a second later.)"""
    import apache_beam as beam

    from tests.integration.test_postgres_source import wait_for_slot
    from transforms.sources.postgres.read import ReadPostgresChanges

    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE public.t (id integer PRIMARY KEY)')
    holder = pg_db.connect()
    holder.execute('BEGIN')
    holder.execute('LOCK TABLE public.t IN SHARE MODE')  # the publication waits for it
    _STREAMED.clear()
    pipeline = beam.Pipeline(runner='DirectRunner')
    _ = (pipeline
         | ReadPostgresChanges(pg_db.dsn, tables=['public.t'], slot_name='late_start',
                               snapshot='never', max_idle_secs=4,
                               dead_letter=f'jsonl:{tmp_path / "dead"}')
         | beam.Map(_keep_key))
    running = Background(lambda: pipeline.run().wait_until_finish())
    try:
        time.sleep(5)  # held up longer than --max_idle_secs
        assert running.is_alive(), running.error
    finally:
        holder.execute('COMMIT')
        holder.close()
    with pg_db.connect() as conn:
        wait_for_slot(conn, 'late_start')
        time.sleep(1)  # past the first round, well within the idle time
        conn.execute('INSERT INTO public.t VALUES (1)')
    assert running.join(60), 'the pipeline did not stop once idle'
    assert running.error is None, running.error
    assert _STREAMED == [1]


def test_a_backfill_with_no_replication_slot_free_says_what_to_do(tmp_path) -> None:
    """``--snapshot only`` keeps no slot, but takes its exact position from a temporary one:
    with every slot in use it stops with one line saying so (the server's own words do not
    tell that a backfill needs a slot at all), and writes nothing."""
    from tests.integration.test_postgres_source import start_cdc
    from tests.services.postgres import PostgresServer

    server = PostgresServer.start(extra_settings={'max_replication_slots': '1'})
    try:
        with server.connect('postgres') as conn:
            conn.execute('CREATE TABLE t (id integer PRIMARY KEY)')
            conn.execute('INSERT INTO t VALUES (1)')
            conn.execute("SELECT pg_create_logical_replication_slot('occupier', 'pgoutput')")
        process = start_cdc(server.dsn('postgres'), tmp_path / 'out', '--tables', 'public.t',
                            '--snapshot', 'only')
        output, _ = process.communicate(timeout=120)
    finally:
        server.stop()
    assert process.returncode == 1, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith('python -m pipelines.cdc: error: the copy takes its exact position '
                           'from a temporary replication slot'), output[-3000:]
    assert 'raise max_replication_slots' in last and 'pg_drop_replication_slot' in last
    assert 'Traceback' not in output
    assert not list((tmp_path / 'out').rglob('*.jsonl'))


@pytest.mark.parametrize('mode', ['initial', 'only'])
def test_a_stop_while_the_slot_waits_ends_the_pipeline_at_once(pg_db, tmp_path,
                                                               mode: str) -> None:
    """SIGTERM (or Ctrl-C) while the slot waits for a session idle in a transaction: the wait
    was inside libpq, where Python's signal handler never ran, so neither a first nor a second
    signal did anything.  Now the creation is cancelled, nothing is left behind, exit 0."""
    import signal
    import subprocess

    from tests.integration.test_postgres_source import start_cdc

    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE t (id integer PRIMARY KEY)')
        conn.execute('INSERT INTO t VALUES (1)')
    blocker = pg_db.connect()
    blocker.execute('BEGIN')
    blocker.execute('INSERT INTO t VALUES (2)')
    cdc = start_cdc(pg_db.dsn, tmp_path / 'out', '--snapshot', mode)
    try:
        with pg_db.connect() as conn:
            deadline = time.monotonic() + 60
            while not conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' "
                    "AND query LIKE 'CREATE_REPLICATION_SLOT%'").fetchone()[0]:
                assert cdc.poll() is None, cdc.communicate()[0][-3000:]
                assert time.monotonic() < deadline, 'the slot creation never started'
                time.sleep(0.1)
            time.sleep(0.5)  # waiting for the blocker's transaction now
            cdc.send_signal(signal.SIGTERM)
            try:
                output, _ = cdc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                raise AssertionError('SIGTERM did not stop a pipeline whose slot waits') from None
            assert cdc.returncode == 0, output[-3000:]
            assert 'CREATE_REPLICATION_SLOT cancelled: a stop was asked for before streaming ' \
                'began: stopping' in output, output[-3000:]
            assert conn.execute('SELECT count(*) FROM pg_replication_slots').fetchone()[0] == 0
            assert not list((tmp_path / 'out').glob('*/part-*'))  # nothing was read
    finally:
        if cdc.poll() is None:
            cdc.kill()
            cdc.wait()
        blocker.execute('ROLLBACK')
        blocker.close()
