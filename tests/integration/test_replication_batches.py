"""ReplicationStream.read_batch (the C frame loop of ``_pqcopy``) against read, frame by frame,
on the same WAL of a real PostgreSQL: the same messages at the same positions, and a pipeline
whose rounds end in the middle of a batch loses, repeats and reorders nothing."""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from transforms.sources.postgres import replication
from transforms.sources.postgres.pgoutput import (
    Begin,
    Commit,
    PgOutputDecoder,
    new_begin,
    new_commit,
)
from transforms.sources.postgres.replication import (
    FRAME_BEGIN,
    FRAME_COMMIT,
    ReplicationStream,
)

pytestmark = pytest.mark.integration

SMALL_TX = 400
_EVENTS: list[Any] = []  # what the in-process pipeline emitted (the function is pickled by name)
_LOCK = threading.Lock()


def _collect(event: Any) -> None:
    with _LOCK:
        _EVENTS.append(event)


def _workload(conn: Any) -> int:
    """Transactions of every shape the stream carries; returns how many were committed."""
    committed = 0
    for i in range(SMALL_TX):  # single-change transactions: Begin, Insert, Commit
        conn.execute("INSERT INTO public.t VALUES (%s, 'row ' || %s)", (i, i))
        committed += 1
    with conn.transaction():  # one large one
        conn.execute("INSERT INTO public.t SELECT g, repeat('x', 3000) "
                     'FROM generate_series(10000, 12000) g')
    committed += 1
    conn.execute("UPDATE public.t SET v = 'updated' WHERE id < 50")
    conn.execute('DELETE FROM public.t WHERE id >= 11990')
    conn.execute("SELECT pg_logical_emit_message(true, 'test', 'in a transaction')")
    conn.execute("SELECT pg_logical_emit_message(false, 'test', 'on its own')")
    conn.execute('TRUNCATE public.u')
    return committed + 4  # the update, the delete, the transactional message, the truncate


@pytest.fixture
def wal(pg_db: Any) -> tuple[Any, int]:
    """A table, a publication and three slots, all made before the workload is written."""
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE public.t (id integer PRIMARY KEY, v text)')
        conn.execute('CREATE TABLE public.u (id integer PRIMARY KEY)')
        conn.execute('CREATE PUBLICATION p FOR TABLE public.t, public.u')
        for slot in ('by_frame', 'by_batch', 'fallback'):
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        commits = _workload(conn)
    return pg_db, commits


def _wait_until_sent(dsn: str, slot: str, wal_bytes: int) -> None:
    """Until the walsender of ``slot`` has decoded and sent ``wal_bytes`` of WAL past the
    slot's start (a few dozen small transactions)."""
    import psycopg

    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                'SELECT pg_wal_lsn_diff(r.sent_lsn, s.confirmed_flush_lsn) '
                'FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid '
                'WHERE s.slot_name = %s', (slot,)).fetchone()
            if row and row[0] is not None and row[0] >= wal_bytes:
                return
            assert time.monotonic() < deadline, f'slot {slot}: the walsender sent {row}'
            time.sleep(0.02)


def _messages(dsn: str, slot: str, commits: int, batched: bool
              ) -> tuple[list[tuple[int | None, Any]], list[int], ReplicationStream]:
    """(data_start or None for a decoded Begin/Commit, message) until ``commits`` Commits;
    also the size of each batch read."""
    decoder = PgOutputDecoder()
    stream = ReplicationStream.connect(dsn)
    stream.start(slot, 0, 'p')
    if batched:  # frames wait in the socket: the first batch holds more than one, however
        _wait_until_sent(dsn, slot, 8192)  # fast this reader is against the walsender
    messages: list[tuple[int | None, Any]] = []
    sizes: list[int] = []
    seen = 0
    try:
        while seen < commits:
            if batched:
                frames = stream.read_batch(10.0)
            else:
                frame = stream.read(10.0)
                frames = [] if frame is None else [(frame.data_start, bytes(frame.payload))]
            assert frames, f'the stream stopped after {seen} of {commits} commits'
            sizes.append(len(frames))
            for start, payload in frames:
                if start == FRAME_BEGIN:
                    message, start = new_begin(*payload), None
                elif start == FRAME_COMMIT:
                    message, start = new_commit(*payload), None
                else:
                    assert isinstance(payload, bytes)
                    message = decoder.decode(payload)
                messages.append((start, message))
                seen += isinstance(message, Commit)
    finally:
        stream.close()
    return messages, sizes, stream


def test_read_batch_gives_what_read_gives(wal: tuple[Any, int]) -> None:
    db, commits = wal
    by_frame, _, frame_stream = _messages(db.dsn, 'by_frame', commits, batched=False)
    by_batch, sizes, stream = _messages(db.dsn, 'by_batch', commits, batched=True)
    # The bytes metric counts the same pgoutput bytes, however they were read.
    assert stream.payload_bytes == frame_stream.payload_bytes > 0
    if os.environ.get('CI'):  # built there: the C loop must be the one that ran
        assert stream._reader is not None
    assert max(sizes) > 1, 'every batch held one frame: nothing was read in one call'
    assert len(by_batch) == len(by_frame)
    for (start, message), (frame_start, frame_message) in zip(by_batch, by_frame, strict=True):
        assert message == frame_message
        if start is not None:  # a raw frame keeps its position
            assert start == frame_start
    kinds = [type(m).__name__ for _, m in by_frame]
    assert kinds.count('Begin') == kinds.count('Commit') == commits
    for kind in ('Insert', 'Update', 'Delete', 'Truncate', 'LogicalMessage', 'Relation'):
        assert kind in kinds
    decoded = [m for start, m in by_batch if start is None]
    if stream._reader is not None:  # Begin and Commit came decoded, nothing else did
        assert len(decoded) == 2 * commits
        assert all(isinstance(m, (Begin, Commit)) for m in decoded)


def test_without_the_c_loop_read_batch_reads_frame_by_frame(wal: tuple[Any, int],
                                                            monkeypatch: Any) -> None:
    db, commits = wal
    by_frame, _, _ = _messages(db.dsn, 'by_frame', commits, batched=False)
    monkeypatch.setattr(replication, '_bound_libpq', lambda pgconn: None)
    fallback, sizes, stream = _messages(db.dsn, 'fallback', commits, batched=True)
    assert stream._reader is None and set(sizes) == {1}
    assert [m for _, m in fallback] == [m for _, m in by_frame]
    assert [s for s, _ in fallback] == [s for s, _ in by_frame]


def test_rounds_ending_inside_a_batch_lose_and_repeat_nothing(wal: tuple[Any, int],
                                                              monkeypatch: Any,
                                                              tmp_path: Any) -> None:
    """Rounds of 5 ms over a backlog, each batch read taking longer than that: a round ends at
    the first commit past its deadline with more frames of the batch in hand, which the next
    round must take first."""
    import apache_beam as beam

    from tests.integration.background import Background
    from transforms.sources.postgres import read
    from transforms.sources.postgres.read import ReadPostgresChanges

    db, _ = wal
    monkeypatch.setattr(read, '_CATCH_UP_ROUND_S', 0.005)  # a backlog's rounds are longer
    unread: list[int] = []
    original = ReplicationStream.unread

    def counting(self: ReplicationStream, frames: list[tuple[int, Any]]) -> None:
        if frames:
            unread.append(len(frames))
        original(self, frames)

    monkeypatch.setattr(ReplicationStream, 'unread', counting)
    # However fast this machine reads and decodes, every batch holds several transactions and
    # arrives after the round's deadline: a slow network, made certain (without it, a fast
    # reader took the whole backlog before a deadline, or a slow walsender sent one
    # transaction per batch, and no round ended inside one).
    read_batch = ReplicationStream.read_batch

    def slow_and_large(self: ReplicationStream, timeout: float) -> list[tuple[int, Any]]:
        if self._unread:  # the frames a round left: at once
            return read_batch(self, timeout)
        began = time.monotonic()
        frames = read_batch(self, timeout)
        while frames and len(frames) < 60:
            more = read_batch(self, 0.05)
            if not more:
                break
            frames += more
        time.sleep(max(0.0, began + 0.006 - time.monotonic()))
        return frames

    monkeypatch.setattr(ReplicationStream, 'read_batch', slow_and_large)
    _EVENTS.clear()
    pipeline = beam.Pipeline(runner='DirectRunner')
    _ = (pipeline
         | ReadPostgresChanges(db.dsn, tables=['public.t', 'public.u'], slot_name='by_batch',
                               publication='p', snapshot='never', max_idle_secs=2,
                               round_secs=0.005, dead_letter=f'jsonl:{tmp_path / "dead"}')
         | beam.Map(_collect))
    running = Background(lambda: pipeline.run().wait_until_finish())
    assert running.join(180), 'the pipeline did not stop'
    assert running.error is None, running.error
    assert unread, 'no round ended inside a batch: the test did not test that'
    events = list(_EVENTS)
    assert not (tmp_path / 'dead').exists() or not any((tmp_path / 'dead').rglob('*.jsonl'))

    rows = [e for e in events if e.table.name == 'public.t']
    inserts = [e.key[0] for e in rows if e.op.value == 'c']
    assert inserts == list(range(SMALL_TX)) + list(range(10000, 12001))  # once each, in order
    assert sorted(e.key[0] for e in rows if e.op.value == 'u') == list(range(50))
    assert sorted(e.key[0] for e in rows if e.op.value == 'd') == list(range(11990, 12001))
    assert [e.op.value for e in events if e.table.name == 'public.u'] == ['t']
    positions = [e.source.sort_key for e in rows]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
