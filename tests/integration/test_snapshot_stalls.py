"""A snapshot whose source server hangs ends with an error instead of waiting for ever.

What a user checks: a snapshot may run for hours or wait for a lock, so no read timeout fits;
but when the server hangs with the snapshot's connection open (frozen: SIGSTOP, the kernel
still acknowledging), the pipeline must not wait without end.  The server is frozen while the
snapshot is surely in progress (MariaDB: its read waits for a table lock; PostgreSQL: the
pipeline still holds its first batch, since a lock the snapshot would wait for is one that
also holds back the slot it starts from); the check (shortened here from 60 s and 20 s) finds
no answer from a new connection either and ends the snapshot with an error naming the wait.
Real throwaway PostgreSQL 15 and MariaDB servers.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest

from tests.integration.background import Background
from transforms.deadline import NoAnswer

pytestmark = pytest.mark.integration


def _no_answer_in(exc: BaseException | None) -> NoAnswer | None:
    while exc is not None:
        if isinstance(exc, NoAnswer):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


_FIRST_BATCH = threading.Event()


def _hold_the_first_batch(event: Any) -> None:
    """Downstream of the source (same bundle, same thread): the snapshot is in progress
    while this waits."""
    if not _FIRST_BATCH.is_set():
        _FIRST_BATCH.set()
        time.sleep(6)  # the server freezes meanwhile; the check cuts the connection


def _wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize('kind', ['postgres', 'mariadb'])
def test_a_snapshot_on_a_frozen_server_ends_with_an_error_not_a_hang(kind, tmp_path: Path,
                                                                     monkeypatch) -> None:
    if kind == 'postgres':
        from tests.services.postgres import PostgresServer
        from transforms.sources.postgres import read as source
        from transforms.sources.postgres.read import ReadPostgresChanges

        server: Any = PostgresServer.start()
    else:
        from tests.services.mariadb import MariaDBServer
        from transforms.sources.mysql import read as source  # type: ignore[no-redef]
        from transforms.sources.mysql.read import ReadMySqlChanges

        server = MariaDBServer.start()
    monkeypatch.setattr(source, 'STALL_CHECK_S', 0.5)
    monkeypatch.setattr(source, 'CHECK_ANSWER_S', 2.0)
    frozen = False
    _FIRST_BATCH.clear()
    try:
        db = server.database()
        holder = db.connect()
        pipeline = beam.Pipeline(runner='DirectRunner')
        if kind == 'postgres':
            holder.execute('CREATE TABLE public.t (id integer PRIMARY KEY)')
            holder.execute('INSERT INTO public.t SELECT generate_series(1, 5000)')
            read = ReadPostgresChanges(db.dsn, tables=['public.t'], snapshot='only',
                                       dead_letter=f'jsonl:{tmp_path / "dead"}')

            def snapshot_waits() -> bool:
                return _FIRST_BATCH.is_set()
        else:
            with holder.cursor() as cur:
                cur.execute('CREATE TABLE t (id INT PRIMARY KEY)')
                cur.execute('INSERT INTO t VALUES ' + ','.join(f'({i})' for i in range(1, 101)))
                cur.execute('LOCK TABLES t WRITE')
            read = ReadMySqlChanges(db.dsn, tables=[f'{db.name}.t'], snapshot='only',
                                    offset_store=str(tmp_path / 'offsets.json'),
                                    dead_letter=f'jsonl:{tmp_path / "dead"}')

            def snapshot_waits() -> bool:
                with db.connect() as conn, conn.cursor() as cur:
                    cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                                "WHERE STATE LIKE 'Waiting for table metadata lock'")
                    return cur.fetchone()[0] > 0
        _ = pipeline | read | beam.Map(_hold_the_first_batch)
        running = Background(lambda: pipeline.run().wait_until_finish())
        _wait_until(snapshot_waits, 60, 'the snapshot never started to wait for the lock')
        time.sleep(1.5)  # checks pass meanwhile: the server answers, the snapshot waits on
        assert running.is_alive(), running.error
        server.freeze()
        frozen = True
        began = time.monotonic()
        still_waiting = not running.join(60)
        waited = time.monotonic() - began
    finally:
        if frozen:
            server.thaw()
        server.stop()
    assert not still_waiting, 'the snapshot still waits on the frozen server'
    cause = _no_answer_in(running.error)
    assert cause is not None, running.error
    assert str(cause).startswith('the snapshot: no answer for '), str(cause)
    assert 'nor did a new connection within 2 s' in str(cause)
    assert waited < 30, waited


def test_a_check_refused_for_too_many_connections_lets_the_work_go_on(monkeypatch) -> None:
    """The source's checks (snapshot, slot creation, set-up) on a server at max_connections:
    it refused the check, so it is there: nothing is cut.  A frozen one is no answer."""
    import psycopg

    from tests.services.postgres import PostgresServer
    from transforms.sources.postgres import read
    from transforms.sources.postgres.read import _ask_server

    monkeypatch.setattr(read, 'CHECK_ANSWER_S', 2.0)  # 20 s in earnest
    server = PostgresServer.start(extra_settings={
        'max_connections': '4', 'superuser_reserved_connections': '0', 'max_wal_senders': '0'})
    fillers: list[Any] = []
    try:
        dsn = server.dsn('postgres')
        assert _ask_server(dsn, lambda conn: conn.execute('SELECT 42').fetchone()[0]) == 42
        while True:
            try:
                fillers.append(psycopg.connect(dsn))
            except psycopg.OperationalError:
                break
        assert _ask_server(dsn, lambda conn: conn.execute('SELECT 1')) is None
        for conn in fillers:
            conn.close()
        fillers.clear()
        server.freeze()
        try:
            began = time.monotonic()
            with pytest.raises(NoAnswer, match='nor did a new connection within 2 s'):
                _ask_server(dsn, lambda conn: conn.execute('SELECT 1'))
            assert time.monotonic() - began < 10
        finally:
            server.thaw()
    finally:
        for conn in fillers:
            conn.close()
        server.stop()
