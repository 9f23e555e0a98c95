"""A database sink whose batch gets no answer: a hung server is left, a busy one waited for.

What a user checks: a target that stops answering (frozen, or something between that still
acknowledges for it) does not hang the pipeline for ever, and the batch reaches the target once
it is back; a batch that merely waits (for a lock another session holds) is not cut short, and
the log says what it waits for.  Real PostgreSQL 15 and MariaDB servers; "frozen" is SIGSTOP.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.integration.background import Background, wait_for_log
from tests.integration.test_sql_sinks import (
    my_expected,
    my_rows,
    pg_expected,
    pg_rows,
    stream,
)
from transforms.envelope import ChangeEvent
from transforms.sinks.sql.apply import Applier
from transforms.sinks.sql.mysql import _MySQLTarget
from transforms.sinks.sql.postgres import _PostgresTarget

pytestmark = pytest.mark.integration

_APPLY = 'transforms.sinks.sql.apply'


def _applying(applier: Applier, events: list[ChangeEvent]) -> Background:
    return Background(lambda: applier.apply(events))


def _applied(applying: Background, timeout: float = 60) -> Any:
    """The dead letters of the batch, once it committed."""
    assert applying.join(timeout), f'the batch still waits after {timeout} s more'
    if applying.error is not None:
        raise applying.error
    return applying.result


def _logged(caplog: Any, text: str, timeout: float = 30) -> str | None:
    return wait_for_log(caplog, lambda message: text in message, timeout)


def _half_applied(target: Any, *, mariadb_safe: bool
                  ) -> tuple[Applier, list[ChangeEvent], list[ChangeEvent]]:
    """An Applier checking after 1 s (answer within 2 s; 60 s and 20 s in earnest) that applied
    the first half of a stream (so its table exists); the whole stream and the half to go."""
    events = stream(count=300, mariadb_safe=mariadb_safe)
    applier = Applier(target, backoff_s=0.2, stall_check_s=1.0, probe_timeout_s=2.0)
    applier.open()
    assert applier.apply(events[:150]) == []
    return applier, events, events[150:]


def _on_the_shared_server(kind: str, request: Any) -> tuple[Any, Any, Callable, Callable]:
    """A database of the session's server, a sink target on it, and how to read and expect
    its rows."""
    if kind == 'postgres':
        db = request.getfixturevalue('pg_db')
        return db, _PostgresTarget(db.dsn), pg_rows, pg_expected
    db = request.getfixturevalue('mariadb_db')
    return db, _MySQLTarget(db.dsn), my_rows, my_expected


def _warnings(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == _APPLY
            and r.levelno >= logging.WARNING]


@contextmanager
def _target_on_its_own_server(kind: str) -> Iterator[tuple[Any, Any, Callable, Callable]]:
    """A database on a throwaway server of its own (frozen by the test, not the shared one)."""
    if kind == 'postgres':
        from tests.services.postgres import PostgresServer

        pg = PostgresServer.start()
        try:
            db = pg.database()
            yield pg, _PostgresTarget(db.dsn), lambda: pg_rows(db), pg_expected
        finally:
            pg.thaw()
            pg.stop()
    else:
        from tests.services.mariadb import MariaDBServer

        my = MariaDBServer.start()
        try:
            db = my.database()
            yield my, _MySQLTarget(db.dsn), lambda: my_rows(db), my_expected
        finally:
            my.thaw()
            my.stop()


@pytest.mark.parametrize('kind', ['postgres', 'mariadb'])
def test_a_batch_on_a_frozen_server_is_retried_on_a_new_connection(kind, caplog) -> None:
    """The server freezes with the sink connected (connections stay open, the kernel still
    acknowledges, nothing answers).  Without a check the batch would wait for ever; with it,
    after ``stall_check_s`` a new connection gets no answer either, the batch's connection is
    shut down and the batch retried; once the server runs again it commits, exactly."""
    caplog.set_level(logging.INFO, logger=_APPLY)
    with _target_on_its_own_server(kind) as (server, target, rows, expected_of):
        applier, events, rest = _half_applied(target, mariadb_safe=kind == 'mariadb')
        server.freeze()
        try:
            applying = _applying(applier, rest)
            gave_up = _logged(caplog, 'reconnecting in', timeout=30)
        finally:
            server.thaw()
        letters = _applied(applying)
        applier.close()
        assert gave_up is not None, _warnings(caplog)
        assert 'no answer for ' in gave_up
        assert 'nor did a check from a new connection within 2 s' in gave_up
        assert letters == []
        assert rows() == expected_of(events)


@pytest.mark.parametrize('kind', ['postgres', 'mariadb'])
def test_a_batch_waiting_for_a_lock_waits_and_the_log_says_for_what(kind, request,
                                                                    caplog) -> None:
    """Another session holds a lock the batch needs, for longer than ``stall_check_s``: the
    server answers the check, so the batch is not cut short (no reconnect); the warning names
    the wait; the batch commits once the lock is released."""
    caplog.set_level(logging.INFO, logger=_APPLY)
    db, target, rows, expected = _on_the_shared_server(kind, request)
    applier, events, rest = _half_applied(target, mariadb_safe=kind == 'mariadb')
    with db.connect() as holder:
        if kind == 'postgres':
            holder.execute("SET application_name = 'maintenance'")
            holder.execute('BEGIN')
            holder.execute('LOCK TABLE shop.items IN ACCESS EXCLUSIVE MODE')
        else:
            with holder.cursor() as cur:
                cur.execute('LOCK TABLES `items` READ')
        applying = _applying(applier, rest)
        waiting = _logged(caplog, 'still waiting for the target', timeout=30)
        if kind == 'postgres':
            holder.execute('COMMIT')
        else:
            with holder.cursor() as cur:
                cur.execute('UNLOCK TABLES')
    letters = _applied(applying)
    applier.close()
    assert waiting is not None, _warnings(caplog)
    assert 'lock' in waiting.lower(), waiting
    if kind == 'postgres':  # and who holds it
        assert ' for a lock held by process ' in waiting, waiting
        assert ', maintenance) idle in transaction for ' in waiting, waiting
        assert 'LOCK TABLE shop.items IN ACCESS EXCLUSIVE MODE' in waiting, waiting
    assert not [w for w in _warnings(caplog) if 'reconnecting' in w]
    assert letters == []
    assert rows(db) == expected(events)


def test_a_batch_waiting_for_the_one_before_on_the_other_connection_says_so(pg_db,
                                                                         caplog) -> None:
    """Two batches in flight on two connections; the first waits for a lock past
    ``stall_check_s``.  The second waits for the first to commit: its check says so (and cuts
    nothing), rather than report its own session idle in its transaction."""
    caplog.set_level(logging.INFO, logger=_APPLY)
    applier, events, rest = _half_applied(_PostgresTarget(pg_db.dsn), mariadb_safe=False)
    with pg_db.connect() as holder:
        holder.execute('BEGIN')
        holder.execute('LOCK TABLE shop.items IN ACCESS EXCLUSIVE MODE')
        assert applier.submit(rest[:75]) == []
        assert applier.submit(rest[75:]) == []
        before = _logged(caplog, 'for the batch before this one', timeout=30)
        first = _logged(caplog, 'still waiting for the target', timeout=30)
        holder.execute('COMMIT')
    assert applier.drain() == []
    applier.close()
    assert before is not None, _warnings(caplog)
    assert first is not None and 'held by process' in first, first
    assert all('held by process' in w for w in _warnings(caplog)
               if 'still waiting for the target' in w), _warnings(caplog)
    assert not [w for w in _warnings(caplog) if 'reconnecting' in w]
    assert pg_rows(pg_db) == pg_expected(events)


@pytest.mark.parametrize('kind', ['postgres', 'mariadb'])
def test_a_batch_waiting_for_row_locks_names_the_session_holding_them(kind, request,
                                                                      caplog) -> None:
    """An application holds rows of the target locked (``SELECT … FOR UPDATE`` in an open
    transaction): the warning names that session and its statement."""
    caplog.set_level(logging.INFO, logger=_APPLY)
    db, target, rows, expected = _on_the_shared_server(kind, request)
    applier, events, rest = _half_applied(target, mariadb_safe=kind == 'mariadb')
    with db.connect() as holder:
        if kind == 'postgres':
            holder.execute('BEGIN')
            holder.execute('SELECT id FROM shop.items FOR UPDATE').fetchall()
            session = holder.info.backend_pid
        else:
            with holder.cursor() as cur:
                cur.execute('START TRANSACTION')
                cur.execute('SELECT id FROM `items` FOR UPDATE')
                cur.fetchall()
            session = holder.thread_id()
        applying = _applying(applier, rest)
        waiting = _logged(caplog, 'still waiting for the target', timeout=30)
        if kind == 'postgres':
            holder.execute('COMMIT')
        else:
            holder.commit()
    letters = _applied(applying)
    applier.close()
    assert waiting is not None, _warnings(caplog)
    if kind == 'postgres':
        assert f'held by process {session} ' in waiting, waiting
        assert 'idle in transaction for ' in waiting and 'FOR UPDATE' in waiting, waiting
    else:  # MariaDB keeps no statement of an idle session
        assert (f'waits for row locks held by session {session} (user {db.server.user}) '
                'idle in a transaction for ') in waiting, waiting
    assert letters == []
    assert rows(db) == expected(events)


def test_a_mariadb_sink_without_the_process_privilege_still_waits_and_says_why(mariadb_db,
                                                                               caplog) -> None:
    """InnoDB's lock tables need PROCESS, which a sink's user rarely has: the check then says
    what the session does without naming the holder, and never takes the refusal for a server
    that does not answer (no reconnect)."""
    caplog.set_level(logging.INFO, logger=_APPLY)
    db = mariadb_db
    with db.connect() as admin, admin.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'cb_limited'@'%' IDENTIFIED BY 'pw'")
        cur.execute(f"GRANT ALL ON `{db.name}`.* TO 'cb_limited'@'%'")
    dsn = f'mysql://cb_limited:pw@127.0.0.1:{db.server.port}/{db.name}'
    applier, events, rest = _half_applied(_MySQLTarget(dsn), mariadb_safe=True)
    try:
        with db.connect() as holder:
            with holder.cursor() as cur:
                cur.execute('START TRANSACTION')
                cur.execute('SELECT id FROM `items` FOR UPDATE')
                cur.fetchall()
            applying = _applying(applier, rest)
            waiting = _logged(caplog, 'still waiting for the target', timeout=30)
            holder.commit()
        letters = _applied(applying)
    finally:
        applier.close()
        with db.connect() as admin, admin.cursor() as cur:
            cur.execute("DROP USER IF EXISTS 'cb_limited'@'%'")
    assert waiting is not None, _warnings(caplog)
    assert 'Updating for ' in waiting and 'row locks held by' not in waiting, waiting
    assert not [w for w in _warnings(caplog) if 'reconnecting' in w]
    assert letters == []
    assert my_rows(db) == my_expected(events)


def test_a_check_refused_for_too_many_connections_counts_as_an_answer(caplog) -> None:
    """A busy target at max_connections refuses the check's connection: the server answered,
    so the batch is not cut short (cutting it would make it reconnect into the same refusal)."""
    import psycopg

    from tests.services.postgres import PostgresServer

    caplog.set_level(logging.INFO, logger=_APPLY)
    server = PostgresServer.start(extra_settings={
        'max_connections': '6', 'superuser_reserved_connections': '0', 'max_wal_senders': '0'})
    fillers: list[Any] = []
    try:
        db = server.database()
        applier, events, rest = _half_applied(_PostgresTarget(db.dsn), mariadb_safe=False)
        holder = db.connect()
        holder.execute('BEGIN')
        holder.execute('LOCK TABLE shop.items IN ACCESS EXCLUSIVE MODE')
        while True:  # every connection the server allows, taken
            try:
                fillers.append(psycopg.connect(db.dsn))
            except psycopg.OperationalError:
                break
        applying = _applying(applier, rest)
        waiting = _logged(caplog, 'still waiting for the target', timeout=30)
        for conn in fillers:
            conn.close()
        holder.execute('COMMIT')
        holder.close()
        letters = _applied(applying)
        applier.close()
        assert waiting is not None, _warnings(caplog)
        assert 'a check from a new connection got' in waiting, waiting
        assert 'too many clients' in waiting, waiting
        assert not [w for w in _warnings(caplog) if 'reconnecting' in w]
        assert letters == []
        assert pg_rows(db) == pg_expected(events)
    finally:
        for conn in fillers:
            conn.close()
        server.stop()
