"""The rendered path of the PostgreSQL source (``ChangeAssembler.render_into``) against the
general one, on real pgoutput frames of every type pgtypes knows: the JSON lines must be the
same bytes as those of the ChangeEvents, and most changes must take the rendered path."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.integration.test_pgtypes_roundtrip import LOADABLE, TEXT_FORMS
from transforms.envelope import (
    ChangeEvent,
    RenderedChanges,
    TableSchema,
    debezium_json_bytes,
    debezium_row_json,
)
from transforms.sources.postgres import catalog, changes, pgtypes
from transforms.sources.postgres.changes import ChangeAssembler
from transforms.sources.postgres.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    PgOutputDecoder,
    Relation,
    Truncate,
    TypeMessage,
    Update,
)

pytestmark = pytest.mark.integration

NOW = 1_700_000_000.25
VERSION = 0x1234_5678_9ABC_DEF0


def _assembler(conn: Any) -> ChangeAssembler:
    def lookup_types(oids: Any) -> dict[int, pgtypes.TypeInfo]:
        return pgtypes.type_infos(conn.execute(pgtypes.CATALOG_QUERY, (list(oids),)).fetchall())

    return ChangeAssembler('srv', 'db', lambda oid: catalog.primary_key(conn, oid),
                           lookup_types, clock=lambda: NOW)


def _lines(element: Any, version: int | None) -> bytes:
    if isinstance(element, RenderedChanges):
        return RenderedChanges(element.table, element.source, element.ts_ms, element.docs,
                               version).lines()
    assert isinstance(element, ChangeEvent)
    return debezium_json_bytes(element.replace(schema_version=version)) + b'\n'


def _feed(assembler: ChangeAssembler, frames: list[tuple[int, bytes]], render: bool
          ) -> tuple[list[Any], int]:
    """What the read loop does with each frame; the batch, and how many changes rendered."""
    decoder = PgOutputDecoder()
    batch: list[Any] = []
    rendered = 0
    for lsn, frame in frames:
        if render and assembler.render_into(batch, frame, lsn):
            rendered += 1
            continue
        events = assembler.change_from_frame(frame, lsn) if render else None
        if events is None:
            message = decoder.decode(frame)
            if isinstance(message, (Insert, Update, Delete, Truncate)):
                events = assembler.change(message, lsn)
            elif isinstance(message, Begin):
                assembler.begin(message)
            elif isinstance(message, Commit):
                assembler.commit(message)
            elif isinstance(message, Relation):
                assembler.relation(message)
            elif isinstance(message, TypeMessage):
                assembler.type(message)
        batch.extend(events or ())
    return batch, rendered


@pytest.mark.parametrize('native', [True, False], ids=['render_doc', 'python'])
def test_rendered_lines_are_the_events_json_for_every_type(pg_db: Any, monkeypatch: Any,
                                                           native: bool) -> None:
    if not native:  # as without the C module: every document filled in Python (changes._fill)
        monkeypatch.setattr(pgtypes, '_NATIVE_RENDER_DOC', None)
    values = {**LOADABLE, **TEXT_FORMS}
    with pg_db.connect() as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok')")
        conn.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
        values['mood'] = ['ok', 'sad']
        values['posint'] = ['7']
        values['text'] = [*values['text'], 'ctl\x01\x1f\x7f', '\u2028 \U0001f600 </script>',
                          'x' * 5000]
        for number, sql_type in enumerate(values):
            conn.execute(f'CREATE TABLE t{number} (id int PRIMARY KEY, v {sql_type})')
        conn.execute('CREATE PUBLICATION p FOR ALL TABLES')
        conn.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        with conn.transaction():  # one transaction over every table: runs of several tables
            for number, (sql_type, literals) in enumerate(values.items()):
                for row, literal in enumerate([*literals, None]):
                    conn.execute(f'INSERT INTO t{number} VALUES (%s, %s::{sql_type})',
                                 (row, literal))
        for number in range(len(values)):
            conn.execute(f'UPDATE t{number} SET v = v WHERE id = 0')  # an Update, no old row
            conn.execute(f'UPDATE t{number} SET id = -id WHERE id = 1')  # with a key: general
        conn.execute('DELETE FROM t0 WHERE id = 0')
        frames = [(_lsn(lsn), bytes(data))
                  for lsn, data in conn.execute(
                      """SELECT lsn::text, data FROM pg_logical_slot_get_binary_changes(
                         's', NULL, NULL, 'proto_version', '1', 'publication_names', 'p')""")]
        fast, fast_rendered = _feed(_assembler(conn), frames, render=True)
        slow, _ = _feed(_assembler(conn), frames, render=False)

    changes = sum(len(values[t]) + 1 for t in values) + 2 * len(values) + 1
    assert len(slow) == changes
    assert sum(len(e.docs) if isinstance(e, RenderedChanges) else 1 for e in fast) == changes
    for version in (VERSION, None):
        expected = b''.join(_lines(event, version) for event in slow)
        got = b''.join(_lines(element, version) for element in fast)
        assert got.splitlines() == expected.splitlines()
    # The inserts of one table follow each other: one run per table of the transaction.
    runs = [e for e in fast if isinstance(e, RenderedChanges)]
    assert len({id(run.table) for run in runs[:len(values)]}) == len(runs[:len(values)])
    # Every insert and key-keeping update is rendered; only the key changes and the delete
    # take the general path.
    assert fast_rendered == changes - len(values) - 1


def test_the_c_renderer_writes_the_benchmark_rows_itself(pg_db: Any, monkeypatch: Any) -> None:
    """Tables shaped like bench.postgres_cdc's and one with a bool: every insert and update is
    rendered by the C renderer itself, not by decoding and encoding (the fallback), but for
    the two rows of values it declines; and the lines are still those of the general path."""
    if pgtypes.wire_row_renderer(TableSchema('', 't', ())) is None:
        pytest.skip('transforms.sources.postgres._pgwire was not built (no C compiler?)')
    with pg_db.connect() as conn:
        conn.execute('CREATE TABLE bench (id bigint PRIMARY KEY, a int, b text, c numeric, '
                     'd timestamptz)')
        conn.execute('CREATE TABLE flags (id int PRIMARY KEY, "on" bool, note varchar(20), '
                     'u uuid, s smallint)')
        conn.execute('CREATE PUBLICATION p FOR ALL TABLES')
        conn.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        with conn.transaction():  # bench's bulk workload, its values and some edges
            conn.execute("INSERT INTO bench SELECT g, g % 1000, md5(g::text), g * 1.5, "
                         "now() + g * interval '1.25 ms' FROM generate_series(1, 400) g")
            conn.execute(
                'INSERT INTO bench VALUES (-9, -2147483648, %s, -0.000001, %s), '
                "(0, NULL, '', 0, '2024-02-29 00:00:00+00'), "
                "(123456789012345678, 2147483646, 'x', -12345678901234567890.25, "
                "'9999-12-31 23:59:59.999999+00'), (1000, NULL, NULL, NULL, NULL)",
                ['q"uote \\ tab\t ctl\x01\x1f \x7f é \u2028 \U0001f600 </script>',
                 '0999-12-31 23:59:59.5+00'])
            conn.execute("INSERT INTO flags SELECT g, g % 3 = 0, 'n' || g, "
                         "md5(g::text)::uuid, g - 100 FROM generate_series(1, 200) g")
            conn.execute('INSERT INTO flags VALUES (0, NULL, NULL, NULL, NULL)')
        conn.execute("UPDATE bench SET a = a + 1, d = d + interval '1 s'")
        conn.execute('UPDATE flags SET "on" = NOT "on"')
        conn.execute("INSERT INTO bench VALUES (1001, 1, 'y', 0.0000001, now())")  # '1E-7'
        frames = [(_lsn(lsn), bytes(data))
                  for lsn, data in conn.execute(
                      """SELECT lsn::text, data FROM pg_logical_slot_get_binary_changes(
                         's', NULL, NULL, 'proto_version', '1', 'publication_names', 'p')""")]
        encoded: list[Any] = []  # the rows the fallback encoded

        def counted(table: TableSchema, row: Any) -> bytes | None:
            encoded.append(row)
            return debezium_row_json(table, row)

        monkeypatch.setattr(changes, 'debezium_row_json', counted)
        fast, fast_rendered = _feed(_assembler(conn), frames, render=True)
        monkeypatch.undo()
        slow, _ = _feed(_assembler(conn), frames, render=False)

    changes_made = 2 * 404 + 2 * 201 + 1
    assert len(slow) == changes_made
    assert fast_rendered == changes_made
    # The update to 10000-01-01 (a text form) and '1E-7' go by the decoder.
    assert [(row['id'], row['d'], row['c']) for row in encoded] == [
        (123456789012345678, '10000-01-01 00:00:00.999999+00',
         Decimal('-12345678901234567890.25')),
        (1001, encoded[1]['d'], Decimal('1E-7'))]
    expected = b''.join(_lines(event, VERSION) for event in slow)
    got = b''.join(_lines(element, VERSION) for element in fast)
    assert got.splitlines() == expected.splitlines()


def _lsn(text: str) -> int:
    high, low = text.split('/')
    return (int(high, 16) << 32) | int(low, 16)
