"""WriteChangesToPostgres / WriteChangesToMySQL against real PostgreSQL 15 and MariaDB servers.

What a user checks: after applying a change stream, the target holds exactly the source's final
state, and it still does after the stream (or part of it, or an old event) is delivered again.
"""
from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter

from transforms.dead_letter import WriteDeadLetters
from transforms.envelope import (
    ChangeEvent,
    Column,
    Kind,
    Op,
    RenderedChanges,
    SourcePosition,
    TableSchema,
)
from transforms.sinks.sql import WriteChangesToMySQL, WriteChangesToPostgres
from transforms.sinks.sql.apply import Applier
from transforms.sinks.sql.postgres import _PostgresTarget

pytestmark = pytest.mark.integration

ITEMS = TableSchema('shop', 'items', (
    Column('id', Kind.INT64, 'bigint', nullable=False),
    Column('price', Kind.DECIMAL, 'numeric(12,2)', precision=12, scale=2),
    Column('seen', Kind.TIMESTAMPTZ, 'timestamp with time zone'),
    Column('blob', Kind.BYTES, 'bytea'),
    Column('doc', Kind.JSON, 'jsonb'),
    Column('tags', Kind.ARRAY, 'text[]', element=Kind.STRING),
    Column('note', Kind.TEXT, 'text'),
), key=('id',))
COLUMNS = [c.name for c in ITEMS.columns]
UTC = dt.timezone.utc


def change(op: str, lsn: int, *, table: TableSchema = ITEMS, before: dict | None = None,
           after: dict | None = None, unchanged: tuple[str, ...] = (),
           connector: str = 'postgresql') -> ChangeEvent:
    source = SourcePosition(connector, 'src', 'shop', table.schema, table.table, 1_700_000_000_000,
                            commit_lsn=lsn - lsn % 3 + 3, lsn=lsn)  # three changes a transaction
    return ChangeEvent(Op(op), table, source, before=before, after=after,
                       unchanged=frozenset(unchanged))


def _row(rnd: random.Random, key: int, lsn: int, mariadb_safe: bool) -> dict[str, Any]:
    seen: Any = dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=lsn, microseconds=7)
    price = Decimal(rnd.randint(0, 10**6)) / 100
    if not mariadb_safe and lsn % 11 == 0:
        seen = rnd.choice(['infinity', '-infinity'])
    if not mariadb_safe and lsn % 13 == 0:
        price = Decimal('NaN')
    return {
        'id': key,
        'price': price,
        'seen': seen,
        'blob': bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 8))),
        'doc': rnd.choice(['{"a": [1, 2.5, "x"]}', 'null', '"text"', f'{{"n": {lsn}}}']),
        'tags': rnd.choice([[], ['a', None, 'b"c\\d\t'], [f't{lsn}', "it's"]]),
        'note': f'note {lsn}\n\\N ' + 'x' * rnd.choice([0, 5000]),  # large values get TOASTed
    }


def stream(seed: int = 7, count: int = 240, *, mariadb_safe: bool = False) -> list[ChangeEvent]:
    """Inserts, full and partial (TOAST-unchanged) updates, deletes, re-inserts, a truncate."""
    rnd = random.Random(seed)
    live: set[int] = set()
    events = []
    for lsn in range(1, count + 1):
        if lsn == count // 3:
            events.append(change('t', lsn))
            live.clear()
            continue
        key = rnd.randint(1, 30)
        if key not in live:
            events.append(change('r' if lsn < 20 else 'c', lsn,
                                 after=_row(rnd, key, lsn, mariadb_safe)))
            live.add(key)
        elif rnd.random() < 0.2:
            events.append(change('d', lsn, before={'id': key}))
            live.discard(key)
        elif rnd.random() < 0.3:
            row = _row(rnd, key, lsn, mariadb_safe)
            del row['note']
            events.append(change('u', lsn, before={'id': key}, after=row, unchanged=('note',)))
        else:
            events.append(change('u', lsn, before={'id': key},
                                 after=_row(rnd, key, lsn, mariadb_safe)))
    events.append(change('m', count + 1))
    return events


def final_state(events: list[ChangeEvent]) -> dict[Any, dict[str, Any]]:
    """The source's table after ``events``, computed independently of the sink."""
    state: dict[Any, dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: e.source.sort_key):
        if event.op is Op.TRUNCATE:
            state.clear()
        elif event.op is Op.DELETE:
            state.pop(event.before['id'], None)
        elif event.op is not Op.MESSAGE:
            row = dict(state.get(event.after['id'], {})) if event.unchanged else {}
            row.update(event.after)
            state[event.after['id']] = row
    return state


def run(events: list[ChangeEvent], sink: beam.PTransform, dead_dir: Path) -> tuple[list, Any]:
    """Runs Create(events) | sink on the default runner; returns (dead letters, metrics)."""
    pipeline = beam.Pipeline()
    dead = pipeline | 'CreateEvents' >> beam.Create(events) | 'Write' >> sink
    dead | 'WriteDeadLetters' >> WriteDeadLetters(f'jsonl:{dead_dir}')
    result = pipeline.run()
    result.wait_until_finish()
    letters = [json.loads(line) for path in sorted(dead_dir.glob('*.jsonl'))
               for line in path.read_text().splitlines()]
    for path in dead_dir.glob('*.jsonl'):
        path.unlink()
    return letters, result.metrics()


def counter(metrics: Any, name: str) -> int:
    results = metrics.query(MetricsFilter().with_name(name))['counters']
    return sum(r.committed for r in results)


# --- PostgreSQL ----------------------------------------------------------------------------

def pg_rows(db: Any, table: str = 'shop.items') -> dict[Any, tuple]:
    from psycopg.types.datetime import TimestamptzLoader

    class _InfinityLoader(TimestamptzLoader):  # Python's datetime cannot hold 'infinity'
        def load(self, data: Any) -> Any:
            text = bytes(data).decode()
            return text if text.endswith('infinity') else super().load(data)

    with db.connect() as conn:
        conn.adapters.register_loader('timestamptz', _InfinityLoader)
        rows = conn.execute(f'SELECT {", ".join(COLUMNS)} FROM {table}').fetchall()
    return {row[0]: tuple(_normal(v) for v in row) for row in rows}


def _normal(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_nan():
        return 'NaN'
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def pg_expected(events: list[ChangeEvent]) -> dict[Any, tuple]:
    out = {}
    for key, row in final_state(events).items():
        values = [row.get(c) for c in COLUMNS]
        values[4] = None if values[4] is None else json.loads(values[4])
        out[key] = tuple(_normal(v) for v in values)
    return out


def test_postgres_target_equals_the_source_after_replays_and_stale_duplicates(pg_db, tmp_path):
    events = stream()
    expected = pg_expected(events)
    assert len(expected) > 5
    sink = WriteChangesToPostgres(pg_db.dsn, max_batch_size=17)

    letters, metrics = run(events, sink, tmp_path)
    assert letters == []
    assert pg_rows(pg_db) == expected
    assert counter(metrics, 'rows_applied') > 0
    assert counter(metrics, 'rows_applied:shop.items') == counter(metrics, 'rows_applied')
    assert counter(metrics, 'messages_ignored') == 1

    # Delivered again in full, then from the middle: nothing changes.
    assert run(events, sink, tmp_path)[0] == []
    assert pg_rows(pg_db) == expected
    assert run(events[len(events) // 2:], sink, tmp_path)[0] == []
    assert pg_rows(pg_db) == expected

    # Old events arriving late: the insert of a row deleted since, an old version of a live row.
    deleted = next(e for e in reversed(events) if e.op is Op.DELETE
                   and e.before['id'] not in expected)
    old_insert = next(e for e in events if e.op in (Op.CREATE, Op.READ)
                      and e.after['id'] == deleted.before['id'])
    live_key = next(iter(expected))
    old_update = next(e for e in events if e.after and e.after['id'] == live_key)
    assert run([old_insert, old_update], sink, tmp_path)[0] == []
    assert pg_rows(pg_db) == expected

    # The whole stream again, shuffled, in small batches that arrive out of order.
    shuffled = list(events)
    random.Random(3).shuffle(shuffled)
    assert run(shuffled, sink, tmp_path)[0] == []
    assert pg_rows(pg_db) == expected


def test_lists_of_events_from_a_batched_source_apply_the_same(pg_db, tmp_path):
    events = stream()
    sizes = [1, 40, 3, 0, 17, 60]  # lists longer than max_batch_size are applied in parts
    lists, rest = [], list(events)
    while rest:
        size = sizes[len(lists) % len(sizes)]
        lists.append(rest[:size])
        rest = rest[size:]
    lists[1] = [*lists[1][:5], 'not an event', *lists[1][5:]]
    letters, metrics = run(lists, WriteChangesToPostgres(pg_db.dsn, max_batch_size=17), tmp_path)
    assert [(d['error'], d['payload']) for d in letters] == \
        [('expected a ChangeEvent, got str', 'not an event')]
    assert pg_rows(pg_db) == pg_expected(events)
    assert counter(metrics, 'rows_applied') > 0


def test_rendered_json_lines_are_refused_not_dead_lettered(pg_db, tmp_path):
    first = stream(count=1)[0]
    run_of_lines = RenderedChanges(first.table, first.source, 0, [b'{"op":"c"'], 1)
    with pytest.raises(Exception, match='rendered JSON lines reached a database sink'):
        run([[first, run_of_lines]], WriteChangesToPostgres(pg_db.dsn), tmp_path)


def test_postgres_columns_keep_the_source_types(pg_db, tmp_path):
    run(stream(count=10), WriteChangesToPostgres(pg_db.dsn), tmp_path)
    with pg_db.connect() as conn:
        types = dict(conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = 'shop.items'::regclass AND a.attnum > 0").fetchall())
    assert types == {'id': 'bigint', 'price': 'numeric(12,2)', 'seen': 'timestamp with time zone',
                     'blob': 'bytea', 'doc': 'jsonb', 'tags': 'text[]', 'note': 'text',
                     '_cb_pos': 'text'}


def test_unchanged_columns_are_left_as_they_were(pg_db, tmp_path):
    sink = WriteChangesToPostgres(pg_db.dsn)
    big = 'toasted ' * 4000
    insert = change('c', 1, after={'id': 1, 'price': Decimal('1.00'), 'note': big, 'doc': '{}'})
    update = change('u', 4, before={'id': 1}, after={'id': 1, 'price': Decimal('2.00')},
                    unchanged=('note', 'doc'))
    assert run([insert], sink, tmp_path)[0] == []
    assert run([update], sink, tmp_path)[0] == []  # in a batch of its own
    with pg_db.connect() as conn:
        assert conn.execute('SELECT price, note, doc FROM shop.items').fetchall() == \
            [(Decimal('2.00'), big, {})]


def test_rows_the_target_rejects_become_dead_letters_and_the_rest_commits(pg_db, tmp_path):
    sink = WriteChangesToPostgres(pg_db.dsn)
    first = [change('c', 1, after={'id': 1, 'price': Decimal('1'), 'note': 'a'})]
    run(first, sink, tmp_path)
    with pg_db.connect() as conn:
        conn.execute('ALTER TABLE shop.items ADD CONSTRAINT price_positive CHECK (price > 0), '
                     'ALTER COLUMN note SET NOT NULL')
    events = [
        change('c', 4, after={'id': 2, 'price': Decimal('-5'), 'note': 'negative'}),
        change('c', 5, after={'id': 3, 'price': Decimal('3'), 'note': 'fine'}),
        change('c', 6, after={'id': 4, 'price': Decimal('4'), 'note': None}),
        change('c', 7, after={'id': 5, 'price': Decimal('1e20'), 'note': 'overflow'}),
        change('u', 8, before={'id': 1}, after={'id': 1, 'price': Decimal('9'), 'note': 'b'}),
    ]
    letters, metrics = run(events, sink, tmp_path)
    errors = {letter['payload']['event']['after']['id']: letter['error'] for letter in letters}
    assert set(errors) == {2, 4, 5}
    assert 'price_positive' in errors[2] and '[23514]' in errors[2]
    assert 'null value in column "note"' in errors[4]
    assert 'overflow' in errors[5]
    assert all(letter['step'] == 'WriteChangesToPostgres' for letter in letters)
    assert letters[0]['payload']['event']['source']['lsn'] in (4, 6, 7)
    assert counter(metrics, 'dead_letters') == 3
    with pg_db.connect() as conn:
        assert conn.execute('SELECT id, note FROM shop.items ORDER BY id').fetchall() == \
            [(1, 'b'), (3, 'fine')]


def test_names_are_taken_literally_never_as_sql(pg_db, tmp_path):
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE t (x int)')
    evil = 'x"; DROP TABLE t; --'
    table = TableSchema('we"ird', 'ta"ble; DROP TABLE t', (
        Column('id', Kind.INT32, 'integer'),
        Column(evil, Kind.STRING, 'text'),
        Column('100%', Kind.STRING, 'text'),
        Column("it's", Kind.STRING, 'text'),
    ), key=('id',))
    events = [change('c', 1, table=table, after={'id': 1, evil: 'a', '100%': 'b', "it's": 'c'}),
              change('d', 4, table=table, before={'id': 1}),
              change('c', 5, table=table, after={'id': 2, evil: 'd', '100%': 'e', "it's": 'f'})]
    assert run(events, WriteChangesToPostgres(pg_db.dsn), tmp_path)[0] == []
    with pg_db.connect() as conn:
        rows = conn.execute('SELECT id, "x""; DROP TABLE t; --", "100%", "it\'s" '
                            'FROM "we""ird"."ta""ble; DROP TABLE t"').fetchall()
        assert rows == [(2, 'd', 'e', 'f')]
        assert conn.execute("SELECT to_regclass('public.t') IS NOT NULL").fetchone() == (True,)


def test_mariadb_source_into_postgres_uses_the_typemap(pg_db, tmp_path):
    table = TableSchema('shop', 'orders', (
        Column('id', Kind.INT64, 'bigint unsigned'),
        Column('qty', Kind.INT32, 'int(10) unsigned'),
        Column('paid', Kind.BOOLEAN, 'tinyint(1)'),
        Column('at', Kind.TIMESTAMP, 'datetime(6)'),
        Column('state', Kind.ENUM, "enum('new','done')", symbols=('new', 'done')),
    ), key=('id',))
    at = dt.datetime(2024, 5, 6, 7, 8, 9, 123456)
    events = [change('c', 1, table=table, connector='mysql',
                     after={'id': 2**64 - 1, 'qty': 2**32 - 1, 'paid': True, 'at': at,
                            'state': 'done'})]
    assert run(events, WriteChangesToPostgres(pg_db.dsn), tmp_path)[0] == []
    with pg_db.connect() as conn:
        assert conn.execute('SELECT id, qty, paid, at, state FROM shop.orders').fetchall() == \
            [(2**64 - 1, 2**32 - 1, True, at, 'done')]
        types = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'orders'").fetchall())
    assert types['id'] == 'numeric' and types['qty'] == 'bigint' and types['paid'] == 'boolean'


def test_a_mariadb_time_is_a_duration_in_postgres_also_in_a_column_made_as_time(
        pg_db, tmp_path):
    """MariaDB's TIME runs from -838:59:59 to 838:59:59; PostgreSQL's time stops at 24:00, so
    such values were dead-lettered.  An interval holds them, and a replica made by an earlier
    release (a time column) is widened to one."""
    table = TableSchema('shop', 'shifts', (
        Column('id', Kind.INT32, 'int(11)'), Column('length', Kind.TIME, 'time'),
    ), key=('id',))
    values = {1: dt.time(10, 0), 2: '-01:00:00', 3: '25:00:00', 4: '-838:59:59'}
    events = [change('c', n, table=table, connector='mysql', after={'id': n, 'length': v})
              for n, v in values.items()]
    with pg_db.connect() as conn:
        conn.execute('CREATE SCHEMA shop; CREATE TABLE shop.shifts (id integer PRIMARY KEY, '
                     "length time); INSERT INTO shop.shifts VALUES (9, '23:59:59')")
    assert run(events, WriteChangesToPostgres(pg_db.dsn), tmp_path)[0] == []
    with pg_db.connect() as conn:
        got = dict(conn.execute('SELECT id, length::text FROM shop.shifts').fetchall())
        kind = conn.execute("SELECT data_type FROM information_schema.columns "
                            "WHERE table_name = 'shifts' AND column_name = 'length'").fetchone()
    assert got == {1: '10:00:00', 2: '-01:00:00', 3: '25:00:00', 4: '-838:59:59',
                   9: '23:59:59'}
    assert kind == ('interval',)


def test_keyless_tables_are_appended_once(pg_db, tmp_path):
    table = TableSchema('public', 'audit', (Column('line', Kind.STRING, 'text'),))
    events = [change('c', n, table=table, after={'line': f'l{n % 3}'}) for n in range(1, 8)]
    sink = WriteChangesToPostgres(pg_db.dsn)
    run(events, sink, tmp_path)
    run(events[2:], sink, tmp_path)  # a replay appends nothing
    with pg_db.connect() as conn:
        count = conn.execute('SELECT count(*) FROM public.audit').fetchone()[0]
    assert count == 7


@pytest.mark.parametrize('target', ['postgres', 'mariadb'])
def test_truncate_marks_and_tombstones_stop_late_events_batch_after_batch(target, request):
    # The sink reads key tombstones only when the table has some: each case on its own table.
    if target == 'postgres':
        db = request.getfixturevalue('pg_db')
        make: Any = _PostgresTarget
    else:
        from transforms.sinks.sql.mysql import _MySQLTarget
        db = request.getfixturevalue('mariadb_db')
        make = _MySQLTarget
    applier = Applier(make(db.dsn))
    applier.open()

    def row(key: int, lsn: int) -> dict[str, Any]:
        return {'id': key, 'note': f'{key}@{lsn}'}

    def keys() -> dict[int, str]:
        if target == 'postgres':
            with db.connect() as conn:
                return dict(conn.execute('SELECT id, note FROM shop.items').fetchall())
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute('SELECT id, note FROM items')
            return dict(cur.fetchall())

    assert applier.apply([change('c', 10, after=row(1, 10)), change('t', 20)]) == []
    assert keys() == {}
    # Only a truncate mark: an insert from before it is stale, a newer one lands.
    assert applier.apply([change('c', 15, after=row(1, 15)), change('c', 21, after=row(2, 21))]) \
        == []
    assert keys() == {2: '2@21'}
    # A key's tombstone: its late insert is stale, other keys of the batch land.
    assert applier.apply([change('d', 30, before={'id': 2})]) == []
    assert applier.apply([change('c', 25, after=row(2, 25)), change('c', 26, after=row(3, 26))]) \
        == []
    assert keys() == {3: '3@26'}
    # A newer insert brings the key back (and clears its tombstone: an older replay stays out).
    assert applier.apply([change('c', 40, after=row(2, 40))]) == []
    assert applier.apply([change('c', 27, after=row(2, 27))]) == []
    assert keys() == {2: '2@40', 3: '3@26'}
    applier.close()


def cut_connections(db: Any) -> None:
    """Terminate every other session on ``db``'s database: the sink's connection is lost."""
    with db.connect() as conn:
        conn.execute('SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")


def test_a_lost_connection_is_retried_and_then_raised(pg_db):
    applier = Applier(_PostgresTarget(pg_db.dsn), backoff_s=0.01)
    applier.open()
    cut_connections(pg_db)
    assert applier.apply([change('c', 1, after={'id': 1, 'note': 'after reconnect'})]) == []
    applier.close()
    with pg_db.connect() as conn:
        assert conn.execute('SELECT note FROM shop.items').fetchall() == [('after reconnect',)]

    import psycopg
    nowhere = pg_db.dsn.replace(pg_db.name, 'no_such_database')
    applier = Applier(_PostgresTarget(nowhere), max_attempts=3, backoff_s=0.01)
    with pytest.raises(psycopg.OperationalError):
        applier.open()


@pytest.mark.parametrize('target', ['postgres', 'mariadb'])
def test_connections_cut_inside_batches_are_retried_and_the_target_ends_exact(target, request):
    """A network cuts the sink's connection at random bytes, both ways: inside a batch's rows,
    its merge, its COMMIT or the reply to it (the client cannot know whether it committed).
    Each batch is retried on a new connection, nothing is dead-lettered, and the target equals
    the source."""
    from tests.services.proxy import CuttingProxy

    if target == 'postgres':
        db = request.getfixturevalue('pg_db')
        proxy = CuttingProxy.start(db.server.port)
        target_of: Any = _PostgresTarget
        dsn = f'postgresql://{db.server.user}@127.0.0.1:{proxy.port}/{db.name}'
        events = stream(count=1500)
        expected, rows = pg_expected(events), pg_rows
    else:
        from transforms.sinks.sql.mysql import _MySQLTarget
        db = request.getfixturevalue('mariadb_db')
        proxy = CuttingProxy.start(db.server.port)
        target_of = _MySQLTarget
        dsn = db.dsn.replace(f':{db.server.port}/', f':{proxy.port}/')
        events = stream(count=1500, mariadb_safe=True)
        expected, rows = my_expected(events), my_rows
    rnd = random.Random(5)
    applier = Applier(target_of(dsn), backoff_s=0.01)
    applier.open()
    armed = 0
    for start in range(0, len(events), 30):
        if not proxy.armed:
            to_server = rnd.random() < 0.5
            proxy.cut_after(rnd.randint(1, 20_000 if to_server else 400), to_server=to_server)
            armed += 1
        assert applier.apply(events[start:start + 30]) == []
    applier.close()
    proxy.close()
    assert proxy.cuts >= 20, (proxy.cuts, armed)
    assert rows(db) == expected


# --- MariaDB -------------------------------------------------------------------------------

def my_rows(db: Any) -> dict[Any, tuple]:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(f'SELECT {", ".join(f"`{c}`" for c in COLUMNS)} FROM `items`')
        rows = cur.fetchall()
    return {row[0]: (row[0], row[1], row[2], row[3], None if row[4] is None else
                     json.loads(row[4]), None if row[5] is None else json.loads(row[5]), row[6])
            for row in rows}


def my_expected(events: list[ChangeEvent]) -> dict[Any, tuple]:
    out = {}
    for key, row in final_state(events).items():
        seen = row.get('seen')
        seen = seen.astimezone(UTC).replace(tzinfo=None) if seen is not None else None
        doc = row.get('doc')
        out[key] = (key, row.get('price'), seen, row.get('blob'),
                    None if doc is None else json.loads(doc), row.get('tags'), row.get('note'))
    return out


def test_mariadb_target_equals_the_source_after_replays_and_stale_duplicates(mariadb_db,
                                                                              tmp_path):
    events = stream(mariadb_safe=True)
    expected = my_expected(events)
    sink = WriteChangesToMySQL(mariadb_db.dsn, max_batch_size=17)
    letters, metrics = run(events, sink, tmp_path)
    assert letters == []
    assert my_rows(mariadb_db) == expected
    assert counter(metrics, 'rows_applied:items') > 0
    for replay in (events, events[len(events) // 2:]):
        assert run(replay, sink, tmp_path)[0] == []
        assert my_rows(mariadb_db) == expected
    shuffled = list(events)
    random.Random(5).shuffle(shuffled)
    assert run(shuffled, sink, tmp_path)[0] == []
    assert my_rows(mariadb_db) == expected


@pytest.mark.parametrize('key_type', ['bigint', 'text'])
def test_mariadb_deletes_remove_exactly_the_rows_older_than_them(mariadb_db, key_type):
    """A batch of deletes, each against a row that is older (deleted) or newer (kept) than it.
    With an integer key they go as one IN list with each row's position picked by FIELD: keys
    a double cannot tell apart (2**53 and 2**53 + 1) and the int64 extremes are among them.
    A text key goes one condition per row."""
    from transforms.sinks.sql.mysql import _MySQLTarget

    kind = Kind.INT64 if key_type == 'bigint' else Kind.STRING
    table = TableSchema('shop', 'items', (Column('id', kind, key_type, nullable=False),
                                          Column('note', Kind.TEXT, 'text')), key=('id',))
    numbers = [-2**63, -1, 0, 7, 2**53, 2**53 + 1, 2**53 + 2, 2**63 - 2, 2**63 - 1]
    numbers += list(range(100, 1200))  # past one statement's 500 rows
    keys: list[Any] = numbers if key_type == 'bigint' else [f'k{n}' for n in numbers]
    rnd = random.Random(3)
    written = {k: rnd.randrange(1_000, 9_000) for k in keys}
    deletes = {k: rnd.randrange(1_000, 9_000) for k in keys}
    # 2**53 + 1 is 2**53 as a double. The first one's delete comes first and its row is newer
    # (kept); the second one's row is older than its delete, but not than the first one's.
    written[keys[4]], deletes[keys[4]] = 5_300, 5_200
    written[keys[5]], deletes[keys[5]] = 5_500, 6_000
    for k in keys:
        if written[k] == deletes[k]:
            written[k] += 1
    newer = {k for k in keys if written[k] > deletes[k]}
    applier = Applier(_MySQLTarget(mariadb_db.dsn))
    applier.open()
    assert applier.apply([change('c', written[k], table=table, after={'id': k, 'note': f'{k}'})
                          for k in keys]) == []
    assert applier.apply([change('d', deletes[k], table=table, before={'id': k})
                          for k in sorted(keys, key=deletes.__getitem__)]) == []
    applier.close()
    with mariadb_db.connect() as conn, conn.cursor() as cur:
        cur.execute('SELECT id, note FROM items')
        left = dict(cur.fetchall())
    assert set(left) == newer
    assert all(left[k] == f'{k}' for k in newer)


def test_mariadb_rejects_become_dead_letters_and_the_rest_commits(mariadb_db, tmp_path):
    sink = WriteChangesToMySQL(mariadb_db.dsn)
    run([change('c', 1, after={'id': 1, 'price': Decimal('1'), 'note': 'a'})], sink, tmp_path)
    with mariadb_db.connect() as conn, conn.cursor() as cur:
        cur.execute('ALTER TABLE items ADD CONSTRAINT price_positive CHECK (price > 0)')
    events = [
        change('c', 4, after={'id': 2, 'price': Decimal('-5'), 'note': 'negative'}),
        change('c', 5, after={'id': 3, 'price': Decimal('3'), 'note': 'fine',
                              'seen': dt.datetime(2024, 1, 1, 12, tzinfo=UTC)}),
        change('c', 6, after={'id': 4, 'price': Decimal('NaN'), 'note': 'nan'}),
        change('c', 7, after={'id': 5, 'price': Decimal('4'), 'seen': 'infinity'}),
        change('c', 8, after={'id': 6, 'price': Decimal('1e20'), 'note': 'overflow'}),
        change('u', 9, before={'id': 1}, after={'id': 1, 'price': Decimal('9'), 'note': 'b'}),
    ]
    letters, _ = run(events, sink, tmp_path)
    errors = {letter['payload']['event']['after']['id']: letter['error'] for letter in letters}
    assert set(errors) == {2, 4, 5, 6}
    assert 'price_positive' in errors[2] and '[4025]' in errors[2]
    assert 'NaN' in errors[4]
    assert 'seen' in errors[5]
    assert 'price' in errors[6]
    with mariadb_db.connect() as conn, conn.cursor() as cur:
        cur.execute('SELECT id, note, seen FROM items ORDER BY id')
        assert cur.fetchall() == ((1, 'b', None), (3, 'fine', dt.datetime(2024, 1, 1, 12)))


def test_mariadb_refuses_decimals_it_would_round_and_the_rest_commits(mariadb_db, tmp_path):
    # A PostgreSQL numeric without a precision becomes DECIMAL(65,30), and MariaDB rounds a
    # value with more digits after the point even in strict mode.
    table = TableSchema('shop', 'amounts', (Column('id', Kind.INT64, 'bigint', nullable=False),
                                            Column('v', Kind.DECIMAL, 'numeric')), key=('id',))
    values = {1: Decimal('0.000000000000000000000000000000123'),
              2: Decimal('1.0000000000000000000000000000001'),
              3: Decimal('2.5'),
              4: Decimal('7.' + '0' * 40),  # equal to its rounded self: nothing is lost
              5: Decimal('12345678901234567890.123456789012345678901234567891')}
    events = [change('c', key, table=table, after={'id': key, 'v': v})
              for key, v in values.items()]
    letters, _ = run(events, WriteChangesToMySQL(mariadb_db.dsn), tmp_path)
    errors = {letter['payload']['event']['after']['id']: letter['error'] for letter in letters}
    assert set(errors) == {1, 2}
    assert "column 'v'" in errors[1] and '0.000000000000000000000000000000123' in errors[1]
    assert "column 'v'" in errors[2] and '1.0000000000000000000000000000001' in errors[2]
    with mariadb_db.connect() as conn, conn.cursor() as cur:
        cur.execute('SELECT id, v FROM amounts ORDER BY id')
        assert dict(cur.fetchall()) == {key: values[key] for key in (3, 4, 5)}


def test_mariadb_never_merges_two_source_tables_into_one_target_table(mariadb_db, tmp_path):
    # a.users and b.users (or PostgreSQL public.users and auth.users) both go to `users`.
    users_a = TableSchema('a', 'users', (Column('id', Kind.INT32, 'integer', nullable=False),
                                         Column('name', Kind.TEXT, 'text')), key=('id',))
    users_b = TableSchema('b', 'users', (Column('id', Kind.INT32, 'integer', nullable=False),
                                         Column('pw', Kind.TEXT, 'text')), key=('id',))
    first = [change('c', 1, table=users_a, after={'id': 1, 'name': 'alice'}),
             change('c', 2, table=users_b, after={'id': 1, 'pw': 's1'}),
             change('c', 3, table=users_a, after={'id': 2, 'name': 'bob'}),
             change('c', 4, table=users_b, after={'id': 3, 'pw': 's3'})]
    # Restarted (a new sink, no memory), b.users' rows now first in the batch.
    again = [change('u', 5, table=users_b, before={'id': 1}, after={'id': 1, 'pw': 's2'}),
             change('u', 6, table=users_a, before={'id': 1}, after={'id': 1, 'name': 'ann'})]

    def users() -> tuple:
        with mariadb_db.connect() as conn, conn.cursor() as cur:
            cur.execute('SELECT id, name FROM users ORDER BY id')
            return cur.fetchall()

    for events, refused, expected in ((first, [2, 4], ((1, 'alice'), (2, 'bob'))),
                                      (again, [5], ((1, 'ann'), (2, 'bob')))):
        letters, _ = run(events, WriteChangesToMySQL(mariadb_db.dsn), tmp_path)
        assert sorted(letter['source'] for letter in letters) == [
            f'b.users@{e.source.sort_key}' for e in events if e.source.lsn in refused]
        error = letters[0]['error']
        assert 'b.users' in error and 'a.users' in error and 'into users' in error, error
        assert "route={'b.users': 'b_users'}" in error, error
        assert users() == expected

    routed = WriteChangesToMySQL(mariadb_db.dsn, route={'b.users': 'b_users'})
    assert run([*first, *again], routed, tmp_path)[0] == []
    with mariadb_db.connect() as conn, conn.cursor() as cur:
        cur.execute('SELECT id, pw FROM b_users ORDER BY id')
        assert cur.fetchall() == ((1, 's2'), (3, 's3'))
    assert users() == ((1, 'ann'), (2, 'bob'))


def test_mariadb_target_recorded_under_a_dotted_name_before_it_was_quoted(mariadb_db, tmp_path):
    """A target made when ``"a.b".users`` was named ``a.b.users`` holds that name in its
    comment: the same source table, now named with quotes, still writes to it."""
    table = TableSchema('a.b', 'users', (Column('id', Kind.INT32, 'integer', nullable=False),
                                         Column('name', Kind.TEXT, 'text')), key=('id',))
    assert table.name == '"a.b".users'
    with mariadb_db.connect() as conn, conn.cursor() as cur:
        cur.execute('CREATE TABLE users (id int PRIMARY KEY, name text, _cb_pos varchar(64)) '
                    "COMMENT='changebeam source: a.b.users'")
    letters, _ = run([change('c', 1, table=table, after={'id': 1, 'name': 'alice'})],
                     WriteChangesToMySQL(mariadb_db.dsn), tmp_path)
    assert letters == []
    with mariadb_db.connect() as conn, conn.cursor() as cur:
        cur.execute('SELECT id, name FROM users')
        assert cur.fetchall() == ((1, 'alice'),)


def test_mariadb_route_into_another_database_beside_an_unrouted_table(mariadb, mariadb_db,
                                                                      tmp_path):
    """A batch with a table routed to 'otherdb.t' (a form docs/sinks.md allows) and one
    that is not crashed the sink on every attempt (sorting a schema None against a str)."""
    other = mariadb.create_database('other')
    a = TableSchema('shop', 'a', (Column('id', Kind.INT32, 'integer', nullable=False),),
                    key=('id',))
    b = TableSchema('shop', 'b', (Column('id', Kind.INT32, 'integer', nullable=False),),
                    key=('id',))
    events = [change('c', 1, table=a, after={'id': 1}), change('c', 2, table=b, after={'id': 2})]
    try:
        for route in ({'shop.a': f'{other}.aa'}, {'shop.a': (other, 'ab')}):
            assert run(events, WriteChangesToMySQL(mariadb_db.dsn, route=route), tmp_path)[0] \
                == []
        with mariadb_db.connect() as conn, conn.cursor() as cur:
            cur.execute(f'SELECT id FROM {other}.aa UNION ALL SELECT id FROM {other}.ab')
            assert cur.fetchall() == ((1,), (1,))
            cur.execute('SELECT id FROM b')
            assert cur.fetchall() == ((2,),)
    finally:
        mariadb.drop_database(other)


def test_mariadb_unchanged_columns_and_literal_names(mariadb_db, tmp_path):
    evil = 'x`; DROP TABLE t; --'
    table = TableSchema('s', 'ta`ble"; DROP TABLE t', (
        Column('id', Kind.INT32, 'integer'),
        Column(evil, Kind.STRING, 'text'),
        Column('100%', Kind.TEXT, 'text'),
    ), key=('id',))
    with mariadb_db.connect() as conn, conn.cursor() as cur:
        cur.execute('CREATE TABLE t (x int)')
    sink = WriteChangesToMySQL(mariadb_db.dsn)
    big = "it's \\ big " * 3000
    assert run([change('c', 1, table=table, after={'id': 1, evil: 'a', '100%': big})],
               sink, tmp_path)[0] == []
    assert run([change('u', 4, table=table, before={'id': 1}, after={'id': 1, evil: 'b'},
                       unchanged=('100%',))], sink, tmp_path)[0] == []
    with mariadb_db.connect() as conn, conn.cursor() as cur:
        cur.execute('SELECT id, `x``; DROP TABLE t; --`, `100%` FROM `ta``ble"; DROP TABLE t`')
        assert cur.fetchall() == ((1, 'b', big),)
        cur.execute("SHOW TABLES LIKE 't'")
        assert cur.fetchall() == (('t',),)


# --- Schema changes ------------------------------------------------------------------------

def _versions() -> list[TableSchema]:
    """A PostgreSQL table through ADD, DROP, three retypes and a RENAME (WAL-style: drop+add)."""
    v1 = TableSchema('shop', 'evolving', (
        Column('id', Kind.INT64, 'bigint', nullable=False),
        Column('n', Kind.INT32, 'integer'),
        Column('code', Kind.STRING, 'character varying(10)'),
        Column('m', Kind.INT32, 'integer'),
        Column('gone', Kind.TEXT, 'text'),
        Column('old', Kind.TEXT, 'text'),
    ), key=('id',))
    cols = list(v1.columns)
    versions = [v1]

    def step(columns: list[Column]) -> None:
        cols[:] = columns
        versions.append(TableSchema('shop', 'evolving', tuple(columns), key=('id',)))

    step([*cols, Column('c1', Kind.TEXT, 'text')])
    step([c for c in cols if c.name != 'gone'])
    step([Column('n', Kind.INT64, 'bigint') if c.name == 'n' else c for c in cols])
    step([Column('code', Kind.TEXT, 'text') if c.name == 'code' else c for c in cols])
    step([Column('m', Kind.TEXT, 'text') if c.name == 'm' else c for c in cols])
    step([c for c in cols if c.name != 'old'] + [Column('new', Kind.TEXT, 'text')])
    return versions


def _version_row(table: TableSchema, key: int, version: int) -> dict[str, Any]:
    values = {'n': version if version < 3 else 2**40 + version, 'code': f'v{version}',
              'm': version if table.by_name['m'].kind is Kind.INT32 else f'm{version}',
              'gone': f'g{version}', 'old': f'o{version}', 'c1': f'c{version}',
              'new': f'w{version}'}
    return {'id': key, **{c.name: values[c.name] for c in table.columns if c.name != 'id'}}


def _evolving_events(versions: list[TableSchema]) -> list[list[ChangeEvent]]:
    """Per version: an insert of a new row (id = 10 + version) and an update of row 1."""
    out, lsn = [], 0
    for number, table in enumerate(versions):
        events = []
        if number == 0:
            for key in (1, 2):
                lsn += 1
                events.append(change('c', lsn, table=table, after=_version_row(table, key, 0)))
        lsn += 1
        events.append(change('c', lsn, table=table, after=_version_row(table, 10 + number, number)))
        lsn += 1
        events.append(change('u', lsn, table=table, before={'id': 1},
                             after=_version_row(table, 1, number)))
        out.append(events)
    return out


def _apply(applier: Applier, events: list[ChangeEvent]) -> list[Any]:
    return [letter for letter, _ in applier.apply(events)]


def _schema_change_story(applier_for: Any, read: Any, types: Any, bystanders: Any) -> None:
    """Applies the versions as a restarted sink would see them, then checks the target."""
    versions = _versions()
    batches = _evolving_events(versions)
    first = applier_for()
    assert _apply(first, [*batches[0], *batches[1]]) == []  # v1, then v2's ADD in the batch
    assert _apply(first, batches[2]) == []
    first.close()
    # A restarted sink: no schema-change message, no memory; the catalog tells what to do.
    second = applier_for()
    assert _apply(second, batches[3]) == []
    assert _apply(second, [*batches[4], *batches[5]]) == []  # two retypes in one batch
    assert _apply(second, batches[6]) == []
    # Replays of old versions' rows are stale: they change nothing, and fit the wider target.
    assert _apply(second, [e for batch in batches for e in batch]) == []
    second.close()
    # Restarted again, replaying a row from before `m` became text that never got applied
    # (lost in a crash): an old integer fits the widened column, as its text.
    third = applier_for()
    late = change('c', 8, table=versions[4], after=_version_row(versions[4], 99, 4))
    assert _apply(third, [late]) == []

    # text -> integer cannot be followed: that table's rows of the batch become dead letters
    # naming the column and both types; another table's rows in the same batch commit.
    narrowed = TableSchema('shop', 'evolving', tuple(
        Column('c1', Kind.INT32, 'integer') if c.name == 'c1' else c
        for c in versions[-1].columns), key=('id',))
    other = TableSchema('shop', 'bystander', (Column('id', Kind.INT64, 'bigint'),), key=('id',))
    bad = [change('u', 100, table=narrowed, before={'id': 1},
                  after={**_version_row(versions[-1], 1, 7), 'c1': 5}),
           change('c', 101, table=other, after={'id': 1}),
           change('c', 102, table=narrowed, after={**_version_row(versions[-1], 50, 7), 'c1': 6})]
    letters = _apply(third, bad)
    assert [letter.source for letter in letters] == [
        f'shop.evolving@{bad[0].source.sort_key}', f'shop.evolving@{bad[2].source.sort_key}']
    assert all("column 'c1' changed to integer" in letter.error and 'text' in letter.error
               for letter in letters), letters[0].error
    assert _apply(third, bad[2:]) != []  # still refused, never half-applied
    third.close()
    assert bystanders() == 1

    def converted(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, 'm': str(row['m'])}  # as the source's ALTER … TYPE text converted it

    rows = read()
    last = versions[-1]
    # Written after the DROP and the RENAME: the kept columns are NULL.
    assert rows[1] == {**_version_row(last, 1, 6), 'gone': None, 'old': None}
    # Never written again: the kept columns still hold the values from before.
    assert rows[2] == converted({**_version_row(versions[0], 2, 0), 'c1': None, 'new': None})
    for number, table in enumerate(versions):
        expected = {c: None for c in ('gone', 'old', 'c1', 'new')}
        key = 10 + number
        assert rows[key] == converted({**expected, **_version_row(table, key, number)})
    assert rows[99] == converted({**expected, **_version_row(versions[4], 99, 4)})
    assert 50 not in rows and rows[1]['c1'] == 'c6'
    assert types() == {'n': 'bigint', 'code': 'text', 'm': 'text'}


def test_postgres_target_follows_schema_changes(pg_db):
    def read() -> dict[int, dict[str, Any]]:
        with pg_db.connect() as conn:
            docs = conn.execute("SELECT to_jsonb(t) - '_cb_pos' FROM shop.evolving t").fetchall()
        return {d['id']: d for (d,) in docs}

    def types() -> dict[str, str]:
        with pg_db.connect() as conn:
            return dict(conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'shop.evolving'::regclass AND attname IN ('n', 'code', 'm')"
            ).fetchall())

    def bystanders() -> int:
        with pg_db.connect() as conn:
            return conn.execute('SELECT count(*) FROM shop.bystander').fetchone()[0]

    _schema_change_story(lambda: Applier(_PostgresTarget(pg_db.dsn)), read, types, bystanders)


def test_mariadb_target_follows_schema_changes(mariadb_db):
    from transforms.sinks.sql.mysql import _MySQLTarget

    def read() -> dict[int, dict[str, Any]]:
        with mariadb_db.connect() as conn, conn.cursor() as cur:
            cur.execute('SELECT id, n, code, m, gone, old, c1, new FROM evolving')
            names = [d[0] for d in cur.description]
            return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}

    def types() -> dict[str, str]:
        with mariadb_db.connect() as conn, conn.cursor() as cur:
            cur.execute('SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS '
                        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'evolving' "
                        "AND COLUMN_NAME IN ('n', 'code', 'm')")
            found = dict(cur.fetchall())
        return {k: {'longtext': 'text', 'bigint(20)': 'bigint'}.get(v, v)
                for k, v in found.items()}

    def bystanders() -> int:
        with mariadb_db.connect() as conn, conn.cursor() as cur:
            cur.execute('SELECT count(*) FROM bystander')
            return cur.fetchone()[0]

    _schema_change_story(lambda: Applier(_MySQLTarget(mariadb_db.dsn)), read, types,
                         bystanders)


def test_the_mysql_sink_notices_a_lost_server_within_about_a_minute(mariadb_db: Any) -> None:
    """PyMySQL's own socket keeps the kernel's keepalive (first probe after 2 h) and waits
    ~15 min of retransmissions for unacknowledged data: a sink behind a network that lost the
    server would hang that long.  The sink's socket is set like libpq's (30 s idle, 3 x 10 s
    probes, 60 s for data to be acknowledged) and still works."""
    import socket

    from transforms.sinks.sql.mysql import _MySQLTarget

    target = _MySQLTarget(mariadb_db.dsn)
    target.connect()
    try:
        sock = target._conn._sock  # PyMySQL keeps the socket there
        tcp = socket.IPPROTO_TCP
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert [sock.getsockopt(tcp, option) for option in (
            socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT,
            socket.TCP_USER_TIMEOUT)] == [30, 10, 3, 60000]
        target._conn.ping(reconnect=False)
    finally:
        target._conn.close()


def test_a_snapshot_older_than_the_tables_mark_is_not_skipped_silently(pg_db, caplog):
    """A source whose positions started over (a PostgreSQL database moved to another cluster,
    whose first pipeline takes a snapshot) had every row taken for an old one, without a
    word: the target stayed as it was."""
    import logging

    from transforms.envelope import snapshot_complete
    from transforms.sinks.sql.postgres import _PostgresTarget

    caplog.set_level(logging.WARNING, logger='transforms.sinks.sql.apply')
    applier = Applier(_PostgresTarget(pg_db.dsn))
    applier.open()
    try:
        first = change('r', 900, after=_row(random.Random(1), 1, 900, False))
        assert _apply(applier, [first, snapshot_complete(ITEMS, first.source, 1, 0)]) == []
        assert not caplog.records
        # The new cluster's snapshot: positions below the first one's.
        again = change('r', 30, after=_row(random.Random(2), 1, 30, False))
        assert _apply(applier, [again, snapshot_complete(ITEMS, again.source, 1, 0)]) == []
    finally:
        applier.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and 'a snapshot of shop.items at ' in warnings[0], warnings
    assert 'the target no longer follows it: empty it and take the snapshot again' in \
        warnings[0]


def _applier_and_read(target: str, request: Any, table: str, columns: str) -> tuple[Any, Any]:
    """(a new Applier for each call, the target table's rows by id) for either database."""
    if target == 'postgres':
        db = request.getfixturevalue('pg_db')

        def read() -> dict[int, tuple]:
            with db.connect() as conn:
                rows = conn.execute(f'SELECT id, {columns} FROM shop.{table}').fetchall()
            return {row[0]: tuple(row[1:]) for row in rows}

        return lambda: Applier(_PostgresTarget(db.dsn)), read
    from transforms.sinks.sql.mysql import _MySQLTarget
    db = request.getfixturevalue('mariadb_db')

    def read_my() -> dict[int, tuple]:
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute(f'SELECT id, {columns} FROM {table}')
            return {row[0]: tuple(row[1:]) for row in cur.fetchall()}

    return lambda: Applier(_MySQLTarget(db.dsn)), read_my


@pytest.mark.parametrize('target', ['postgres', 'mariadb'])
def test_a_column_dropped_and_added_again_reads_as_the_source_reads_it(target, request):
    """DROP COLUMN status, then ADD COLUMN status text DEFAULT 'new': the source's existing
    rows read 'new'.  The sink kept the dropped column with its old values; when the name comes
    back (after a restart in between), those old values must not show in the live column."""
    id_ = Column('id', Kind.INT64, 'bigint', nullable=False)
    v1 = TableSchema('shop', 'readded', (id_, Column('status', Kind.TEXT, 'text'),
                                         Column('flag', Kind.INT32, 'integer')), key=('id',))
    v2 = TableSchema('shop', 'readded', (id_,), key=('id',))
    v3 = TableSchema('shop', 'readded', (id_, Column('status', Kind.TEXT, 'text',
                                                     default='new'),
                                         Column('flag', Kind.TEXT, 'text')), key=('id',))
    applier_for, read = _applier_and_read(target, request, 'readded', 'status, flag')
    first = applier_for()
    assert _apply(first, [change('c', n, table=v1, after={'id': n, 'status': f'old{n}',
                                                          'flag': n}) for n in (1, 2, 3)]) == []
    assert _apply(first, [change('u', 4, table=v2, before={'id': 1}, after={'id': 1})]) == []
    first.close()
    second = applier_for()  # no memory of the drop: the target's catalog has to tell
    events = [change('c', 5, table=v3, after={'id': 4, 'status': 'four', 'flag': 'f'}),
              change('u', 6, table=v3, before={'id': 2},
                     after={'id': 2, 'status': 'two', 'flag': None})]
    assert _apply(second, events) == []
    expected = {1: ('new', None), 2: ('two', None), 3: ('new', None), 4: ('four', 'f')}
    assert read() == expected
    # A replay of everything (the drop included) changes nothing.
    replay = [change('c', n, table=v1, after={'id': n, 'status': f'old{n}', 'flag': n})
              for n in (1, 2, 3)]
    replay += [change('u', 4, table=v2, before={'id': 1}, after={'id': 1}), *events]
    assert _apply(second, replay) == []
    second.close()
    third = applier_for()
    assert _apply(third, replay) == []
    third.close()
    assert read() == expected


@pytest.mark.parametrize('target', ['postgres', 'mariadb'])
def test_a_narrowing_that_rounds_at_the_source_rounds_the_target_too(target, request):
    """numeric(10,2) -> numeric(10,0): the source's ALTER rounds every row (1.50 -> 2) and the
    log shows none of it; the target's rows not written since must read the same."""
    id_ = Column('id', Kind.INT64, 'bigint', nullable=False)
    v1 = TableSchema('shop', 'narrowed', (
        id_, Column('price', Kind.DECIMAL, 'numeric(10,2)', precision=10, scale=2),
        Column('ratio', Kind.FLOAT64, 'double precision')), key=('id',))
    v2 = TableSchema('shop', 'narrowed', (
        id_, Column('price', Kind.DECIMAL, 'numeric(10,0)', precision=10, scale=0),
        Column('ratio', Kind.FLOAT32, 'real')), key=('id',))
    # A 4-byte float read at its full precision (MariaDB's text protocol gives 6 digits).
    ratio = 'ratio::float8' if target == 'postgres' else 'CAST(ratio AS DOUBLE)'
    applier_for, read = _applier_and_read(target, request, 'narrowed', f'price, {ratio}')
    first = applier_for()
    old = [change('c', 1, table=v1, after={'id': 1, 'price': Decimal('1.50'), 'ratio': 16777217.0}),
           change('c', 2, table=v1, after={'id': 2, 'price': Decimal('-2.49'), 'ratio': 1.5}),
           change('c', 3, table=v1, after={'id': 3, 'price': Decimal('12345678.99'),
                                           'ratio': None})]
    assert _apply(first, old) == []
    new = [change('u', 4, table=v2, before={'id': 3},
                  after={'id': 3, 'price': Decimal('7'), 'ratio': 2.0})]
    assert _apply(first, new) == []
    first.close()
    # As the source reads them: rounded half away from zero; 2**24 + 1 as a 4-byte float.
    expected = {1: (Decimal('2'), 16777216.0), 2: (Decimal('-2'), 1.5),
                3: (Decimal('7'), 2.0)}
    assert read() == expected
    second = applier_for()  # a replay after a restart leaves the values as they are
    assert _apply(second, [*old, *new]) == []
    second.close()
    assert read() == expected


def test_a_table_made_from_the_sources_ddl_with_an_identity_column(pg_db, tmp_path):
    """'A table that exists is kept': one made beforehand from the source's DDL (pg_dump
    --schema-only) with GENERATED ALWAYS AS IDENTITY refused every row ('cannot insert a
    non-DEFAULT value'); PostgreSQL's own replication writes the source's values."""
    table = TableSchema('shop', 'tickets', (
        Column('id', Kind.INT64, 'bigint', nullable=False), Column('note', Kind.TEXT, 'text'),
    ), key=('id',))
    with pg_db.connect() as conn:
        conn.execute('CREATE SCHEMA shop; CREATE TABLE shop.tickets (id bigint GENERATED ALWAYS '
                     'AS IDENTITY PRIMARY KEY, note text)')
    events = [change('c', 1, table=table, after={'id': 7, 'note': 'a'}),
              change('u', 2, table=table, before={'id': 7}, after={'id': 7, 'note': 'b'}),
              change('c', 3, table=table, after={'id': 9, 'note': 'c'})]
    assert run(events, WriteChangesToPostgres(pg_db.dsn), tmp_path)[0] == []
    with pg_db.connect() as conn:
        assert conn.execute('SELECT id, note FROM shop.tickets ORDER BY id').fetchall() == \
            [(7, 'b'), (9, 'c')]


def test_rows_naming_their_columns_in_another_order_land_in_the_right_columns(pg_db):
    # A batch's rows are COPYed by group of the columns they name, in the order they name
    # them; a row with the same columns in another order must not join the others' group
    # (two text columns: its values would land swapped without an error).
    names = TableSchema('shop', 'names', (
        Column('id', Kind.INT64, 'bigint', nullable=False), Column('first', Kind.TEXT, 'text'),
        Column('last', Kind.TEXT, 'text')), key=('id',))
    applier = Applier(_PostgresTarget(pg_db.dsn))
    applier.open()
    assert applier.apply([change('c', 1, table=names,
                                 after={'id': 1, 'first': 'Ada', 'last': 'Lovelace'})]) == []
    assert applier.apply([
        change('c', 4, table=names, after={'id': 2, 'first': 'Alan', 'last': 'Turing'}),
        change('c', 5, table=names, after={'id': 3, 'last': 'Hopper', 'first': 'Grace'}),
        change('c', 7, table=names, after={'id': 4, 'first': 'Edsger', 'last': 'Dijkstra'}),
        change('c', 8, table=names, after={'id': 5, 'last': 'Liskov', 'first': 'Barbara'}),
    ]) == []
    applier.close()
    with pg_db.connect() as conn:
        assert conn.execute('SELECT id, first, last FROM shop.names ORDER BY id').fetchall() == \
            [(1, 'Ada', 'Lovelace'), (2, 'Alan', 'Turing'), (3, 'Grace', 'Hopper'),
             (4, 'Edsger', 'Dijkstra'), (5, 'Barbara', 'Liskov')]
