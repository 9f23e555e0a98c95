"""Creating the replication slot waits for transactions open when it began: the log names them.

What a user checks: a pipeline that does not start because a session sits idle in a transaction
(in any database of the server) says so, naming the process and what ends the wait, instead of
waiting without a word; once that transaction ends, the slot is created and the pipeline goes on.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

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
    outcome: dict[str, Any] = {}

    def create() -> None:
        try:
            outcome['created'] = create_slot(stream, pg_db.dsn, 'waits_for_a_session',
                                             export_snapshot=False, report_every_s=0.5)
        except BaseException as exc:
            outcome['error'] = exc

    thread = threading.Thread(target=create, daemon=True)
    thread.start()
    try:
        warning = None
        deadline = time.monotonic() + 30
        while warning is None and time.monotonic() < deadline:
            warning = next((r.getMessage() for r in caplog.records
                            if f'process {pid} ' in r.getMessage()), None)
            time.sleep(0.05)
        assert thread.is_alive(), outcome  # still waiting: the transaction is open
    finally:
        blocker.execute('COMMIT')
        blocker.close()
    thread.join(30)
    assert not thread.is_alive(), 'the slot is still not created after the transaction ended'
    try:
        assert 'error' not in outcome, outcome
        assert warning is not None, [r.getMessage() for r in caplog.records]
        assert 'creating slot waits_for_a_session has waited' in warning
        assert f'process {pid} (database {other.name}, user ' in warning
        assert ', nightly-report) idle in transaction for ' in warning
        assert 'INSERT INTO t VALUES (1)' in warning
        assert 'pg_terminate_backend(pid)' in warning
        assert outcome['created'].consistent_point > 0
        with pg_db.connect() as conn:
            assert conn.execute("SELECT count(*) FROM pg_replication_slots "
                                "WHERE slot_name = 'waits_for_a_session'").fetchone()[0] == 1
    finally:
        stream.close()
        with pg_db.connect() as conn:
            conn.execute("SELECT pg_drop_replication_slot('waits_for_a_session')")
        postgres.drop_database(other.name)
