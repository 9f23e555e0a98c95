"""SQL text the sinks run, built from quoted identifiers only (no driver, no I/O).

    pg_ident('x"; DROP TABLE t; --')    # '"x""; DROP TABLE t; --"': one literal column name
    my_ident('a`b')                     # '`a``b`'

Every identifier goes through :func:`pg_ident` / :func:`my_ident`.  PostgreSQL statements take
values as ``%s`` parameters, so :func:`pg_ident` doubles a ``%`` in a name and the sink always
executes them with a parameter tuple (psycopg turns ``%%`` back into ``%`` only then).  MariaDB
statements are complete text: values arrive as literals the driver escaped, and the sink
executes them without parameters, so PyMySQL never %-formats them.

Bookkeeping the sinks add to a target (names starting ``_cb_`` are reserved):

* ``_cb_pos`` on every target table: the ``sort_key`` of the source change that last wrote the
  row.  An upsert changes a row only when its position is newer, so a replayed or stale change
  is a no-op.
* ``_cb_id`` on a table without a key: position plus a hash of the row, unique, so replaying an
  append does not duplicate it.
* a tombstone table (PostgreSQL ``_changebeam.tombstones``, MariaDB ``_changebeam_tombstones``)
  with ``(tbl, key, pos)``: the position of the last delete of each deleted key (``key`` is a
  hash of the key values) and, under key ``'*'``, of the table's last truncate.  A change older
  than its key's tombstone or the table's truncate is not applied, so an old insert arriving after
  the delete does not resurrect the row.  Under key ``'~'``, a position no older than any of the
  table's key tombstones: a batch whose changes are all newer has none of its keys looked up.
  ``written_at`` (the target's clock when the sink wrote the mark) lets the sink prune marks
  older than its retention (:data:`PG_PRUNE_TOMBSTONES`).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

from transforms.sinks.sql.routing import TargetTable

__all__ = [
    'KEY_HASH',
    'POS',
    'RESERVED',
    'ROW_ID',
    'TRUNCATED',
    'my_alter_table',
    'my_append',
    'my_create_table',
    'my_create_tombstones',
    'my_delete',
    'my_drop_columns',
    'my_ident',
    'my_record_tombstones',
    'my_table',
    'my_upsert',
    'pg_alter_table',
    'pg_append',
    'pg_comment_columns',
    'pg_copy',
    'pg_create_stage',
    'pg_create_table',
    'pg_create_tombstones',
    'pg_delete',
    'pg_drop_columns',
    'pg_ident',
    'pg_record_tombstones',
    'pg_table',
    'pg_upsert',
]

POS = '_cb_pos'
ROW_ID = '_cb_id'
KEY_HASH = '_cb_key'
RESERVED = frozenset({POS, ROW_ID, KEY_HASH})
TRUNCATED = '*'
"""The tombstone key that holds a table's last truncate position (a key hash is hex)."""
NEWEST = '~'
"""The tombstone key that holds a position no older than any of the table's key tombstones
(``'~'`` sorts after every hex digest, ``'*'`` before)."""

ColumnDef = tuple[str, str, bool]
"""(name, DDL type, nullable)."""


def _check(name: str) -> str:
    if not isinstance(name, str) or not name or '\x00' in name:
        raise ValueError(f'{name!r} cannot be an SQL identifier (empty or contains NUL)')
    return name


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode('utf-8'), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------------
# PostgreSQL

PG_TOMBSTONES = '"_changebeam"."tombstones"'
_PG_POS_TYPE = 'text COLLATE "C"'  # byte order = the sort_key's order, whatever the database's


def pg_ident(name: str) -> str:
    """A PostgreSQL identifier, double-quoted with embedded quotes doubled (and ``%`` doubled)."""
    return '"' + _check(name).replace('"', '""').replace('%', '%%') + '"'


def pg_label(target: TargetTable) -> str:
    """The target's quoted name as a value (the tombstones' ``tbl``), unambiguous for any name."""
    return '.'.join('"' + _check(p).replace('"', '""') + '"'
                    for p in (target.schema or 'public', target.table))


def pg_table(target: TargetTable) -> str:
    return f'{pg_ident(target.schema or "public")}.{pg_ident(target.table)}'


def _pg_list(names: Sequence[str], prefix: str = '') -> str:
    return ', '.join(prefix + pg_ident(n) for n in names)


# When the sink wrote a tombstone (its newest position): what retention prunes by.  The
# target's clock, not the source's commit time: a tombstone protects against replays, which
# come from positions the source has not confirmed yet, and the source confirms a position
# soon after the sink commits it; a week-old backlog caught up today must not be pruned today.
_PG_WRITTEN_AT = 'written_at timestamptz NOT NULL DEFAULT now()'
_PG_WRITTEN_AT_INDEX = '"tombstones_written_at"'


def pg_create_tombstones() -> list[str]:
    return [
        'CREATE SCHEMA IF NOT EXISTS "_changebeam"',
        f'CREATE TABLE IF NOT EXISTS {PG_TOMBSTONES} (tbl text COLLATE "C" NOT NULL, '
        'key text COLLATE "C" NOT NULL, pos text COLLATE "C" NOT NULL, '
        f'{_PG_WRITTEN_AT}, PRIMARY KEY (tbl, key))',
    ]


# What a session does, asked from another one (the sink's stall check): state, wait event,
# seconds in that state, the start of its statement.
PG_SESSION_ACTIVITY = (
    'SELECT state, wait_event_type, wait_event, '
    'extract(epoch FROM clock_timestamp() - state_change)::float8, left(query, 100) '
    'FROM pg_stat_activity WHERE pid = %s')

# Whether the tombstone table has ``written_at`` and its index (a table made by an older
# version has neither).  Checked first because ALTER TABLE takes its exclusive lock even when
# IF NOT EXISTS then finds nothing to do, and would queue every batch behind it.
PG_TOMBSTONES_CURRENT = (
    'SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '
    "to_regclass('\"_changebeam\".\"tombstones\"') AND attname = 'written_at' "
    "AND NOT attisdropped) AND to_regclass('\"_changebeam\".\"tombstones_written_at\"') "
    'IS NOT NULL')


def pg_upgrade_tombstones() -> list[str]:
    """Add ``written_at`` to an older tombstone table: its tombstones count as written now
    (``now()`` is stable, so PostgreSQL 11+ adds the column without rewriting the table)."""
    return [
        f'ALTER TABLE {PG_TOMBSTONES} ADD COLUMN IF NOT EXISTS {_PG_WRITTEN_AT}',
        f'CREATE INDEX IF NOT EXISTS {_PG_WRITTEN_AT_INDEX} ON {PG_TOMBSTONES} (written_at)',
    ]


def _pg_column(column: ColumnDef) -> str:
    name, type_, nullable = column
    return f'{pg_ident(name)} {type_}' + ('' if nullable else ' NOT NULL')


def pg_create_table(target: TargetTable, columns: Sequence[ColumnDef],
                    key: Sequence[str]) -> list[str]:
    """Schema and table (with ``_cb_pos``, and ``_cb_id`` when keyless), if absent."""
    parts = [_pg_column(c) for c in columns]
    parts.append(f'{pg_ident(POS)} {_PG_POS_TYPE}')
    if key:
        parts.append(f'PRIMARY KEY ({_pg_list(key)})')
    else:
        parts.append(f'{pg_ident(ROW_ID)} text COLLATE "C" UNIQUE')
    return [
        f'CREATE SCHEMA IF NOT EXISTS {pg_ident(target.schema or "public")}',
        f'CREATE TABLE IF NOT EXISTS {pg_table(target)} ({", ".join(parts)})',
    ]


def pg_add_columns(target: TargetTable, columns: Sequence[ColumnDef],
                   hidden: Sequence[str] = ()) -> list[str]:
    """Columns (and hidden bookkeeping columns) an existing table lacks."""
    adds = [f'ADD COLUMN IF NOT EXISTS {_pg_column((n, t, True))}' for n, t, _ in columns]
    adds += [f'ADD COLUMN IF NOT EXISTS {pg_ident(n)} {_PG_POS_TYPE}' for n in hidden]
    statements = [f'ALTER TABLE {pg_table(target)} {", ".join(adds)}'] if adds else []
    if ROW_ID in hidden:
        index = pg_ident(f'_cb_id_{_short_hash(str(target))}')
        statements.append(f'CREATE UNIQUE INDEX IF NOT EXISTS {index} '
                          f'ON {pg_table(target)} ({pg_ident(ROW_ID)})')
    return statements


def pg_alter_table(target: TargetTable, add: Sequence[ColumnDef] = (),
                   retype: Sequence[tuple[str, str]] = (), relax: Sequence[str] = (),
                   hidden: Sequence[str] = ()) -> list[str]:
    """One ALTER TABLE (one rewrite at most): columns to add (nullable), ``(column, type)`` to
    convert with ``USING column::type`` (PostgreSQL's own cast, as the source's ALTER used),
    columns to make nullable, and missing bookkeeping columns."""
    parts = [f'ALTER COLUMN {pg_ident(n)} TYPE {t} USING {pg_ident(n)}::{t}' for n, t in retype]
    parts += [f'ALTER COLUMN {pg_ident(n)} DROP NOT NULL' for n in relax]
    statements = pg_add_columns(target, add, hidden)
    if parts:
        if statements and statements[0].startswith('ALTER TABLE'):
            statements[0] += ', ' + ', '.join(parts)
        else:
            statements.insert(0, f'ALTER TABLE {pg_table(target)} {", ".join(parts)}')
    return statements


def pg_drop_columns(target: TargetTable, names: Sequence[str]) -> list[str]:
    """Drop kept columns whose name the source uses again, before they are added anew."""
    if not names:
        return []
    drops = ', '.join(f'DROP COLUMN IF EXISTS {pg_ident(n)}' for n in names)
    return [f'ALTER TABLE {pg_table(target)} {drops}']


def pg_comment_columns(target: TargetTable, names: Sequence[str], comment: str) -> list[str]:
    literal = "'" + comment.replace("'", "''").replace('%', '%%') + "'"
    return [f'COMMENT ON COLUMN {pg_table(target)}.{pg_ident(n)} IS {literal}' for n in names]


def pg_stage(number: int) -> str:
    return f'pg_temp.{pg_ident(f"_cb_stage_{number}")}'


def pg_create_stage(stage: str, target: TargetTable, columns: Sequence[str],
                    extra: Sequence[str] = ()) -> str:
    """A temp table with the target's types for ``columns``, plus text columns ``extra``."""
    select = [pg_ident(c) for c in columns] + [f'NULL::text AS {pg_ident(e)}' for e in extra]
    return (f'CREATE TEMP TABLE IF NOT EXISTS {stage} AS SELECT {", ".join(select)} '
            f'FROM {pg_table(target)} WITH NO DATA')


def pg_copy(stage: str, columns: Sequence[str], binary: bool = False) -> str:
    """COPY into a staging table, as text or ``binary``; run *without* parameters (psycopg
    sends it verbatim)."""
    names = ', '.join('"' + _check(n).replace('"', '""') + '"' for n in columns)
    return f'COPY {stage} ({names}) FROM STDIN' + (' (FORMAT binary)' if binary else '')


def pg_upsert(target: TargetTable, stage: str, columns: Sequence[str],
              key: Sequence[str], nulled: Sequence[str] = ()) -> str:
    """Insert staged rows; update a row only if the staged position is newer than the row's.

    ``columns`` includes the key and ``_cb_pos``; the staged rows have distinct keys.
    ``nulled`` are target columns the rows' schema lacks (dropped at the source): set NULL.
    """
    updates = [c for c in columns if c not in key]
    assignments = ', '.join([f'{pg_ident(c)} = EXCLUDED.{pg_ident(c)}' for c in updates]
                            + [f'{pg_ident(c)} = NULL' for c in nulled])
    pos = pg_ident(POS)
    # OVERRIDING SYSTEM VALUE: the source's values, also into a GENERATED ALWAYS AS IDENTITY
    # column of a table made from the source's own DDL (ignored where there is none).
    return (f'INSERT INTO {pg_table(target)} AS _cb_t ({_pg_list(columns)}) '
            f'OVERRIDING SYSTEM VALUE SELECT {_pg_list(columns)} FROM {stage} '
            f'ON CONFLICT ({_pg_list(key)}) DO UPDATE SET {assignments} '
            f'WHERE _cb_t.{pos} IS NULL OR _cb_t.{pos} < EXCLUDED.{pos}')


def pg_append(target: TargetTable, stage: str, columns: Sequence[str]) -> str:
    """Insert staged rows of a keyless table; a row whose ``_cb_id`` exists is a replay."""
    return (f'INSERT INTO {pg_table(target)} ({_pg_list(columns)}) '
            f'OVERRIDING SYSTEM VALUE SELECT {_pg_list(columns)} FROM {stage} '
            f'ON CONFLICT ({pg_ident(ROW_ID)}) DO NOTHING')


def pg_delete(target: TargetTable, stage: str, key: Sequence[str]) -> str:
    """Delete rows matching staged keys whose position is older than the staged delete."""
    match = ' AND '.join(f'_cb_t.{pg_ident(k)} = _cb_s.{pg_ident(k)}' for k in key)
    pos = pg_ident(POS)
    return (f'DELETE FROM {pg_table(target)} AS _cb_t USING {stage} AS _cb_s WHERE {match} '
            f'AND (_cb_t.{pos} IS NULL OR _cb_t.{pos} < _cb_s.{pos})')


def pg_record_tombstones(stage: str) -> str:
    """Tombstones for the staged deletes (parameter: the target's name), keeping the newest."""
    return (f'INSERT INTO {PG_TOMBSTONES} AS _cb_d (tbl, key, pos) '
            f'SELECT %s, {pg_ident(KEY_HASH)}, {pg_ident(POS)} FROM {stage} '
            'ON CONFLICT (tbl, key) DO UPDATE SET pos = EXCLUDED.pos, '
            'written_at = EXCLUDED.written_at WHERE _cb_d.pos < EXCLUDED.pos')


# Key hashes travel as one comma-separated text parameter: hex needs no quoting, and one string
# costs far less to send than a 5000-element array parameter.
PG_READ_TOMBSTONES = (f'SELECT key, pos FROM {PG_TOMBSTONES} WHERE tbl = %s '
                      "AND key = ANY(string_to_array(%s, ',') || '*'::text)")
# The table's truncate mark, whether it has any key's tombstone, and its newest-tombstone mark
# (parameters: the label twice): '*' sorts before every hex digest, so the first two entries in
# key order tell the first two (a table without deletes then needs no key hashes and no lookup
# of 5000 keys; one whose tombstones are all older than the batch, no lookup either).
PG_TOMBSTONE_MARKS = (f'(SELECT key, pos FROM {PG_TOMBSTONES} WHERE tbl = %s '
                      f'ORDER BY key LIMIT 2) UNION ALL SELECT key, pos FROM {PG_TOMBSTONES} '
                      f"WHERE tbl = %s AND key = '{NEWEST}'")
# Raises the newest-tombstone mark to the batch's newest delete (parameters: label, position,
# label, label).  Without a mark (tombstones an older version wrote, or a mark pruned or
# truncated away) it starts from the newest key tombstone there is: that scan runs only then
# (COALESCE evaluates its second subquery only when the first gives NULL).
PG_MARK_NEWEST = (
    f'INSERT INTO {PG_TOMBSTONES} AS _cb_d (tbl, key, pos) '
    f"VALUES (%s, '{NEWEST}', GREATEST(%s, COALESCE("
    f"(SELECT pos FROM {PG_TOMBSTONES} WHERE tbl = %s AND key = '{NEWEST}'), "
    f"(SELECT max(pos) FROM {PG_TOMBSTONES} WHERE tbl = %s AND key > '{TRUNCATED}' "
    f"AND key < '{NEWEST}')))) "
    'ON CONFLICT (tbl, key) DO UPDATE SET pos = GREATEST(_cb_d.pos, EXCLUDED.pos), '
    'written_at = EXCLUDED.written_at')
PG_DROP_TOMBSTONES = (f'DELETE FROM {PG_TOMBSTONES} '
                      "WHERE tbl = %s AND key = ANY(string_to_array(%s, ','))")
PG_TRUNCATE_TOMBSTONES = f'DELETE FROM {PG_TOMBSTONES} WHERE tbl = %s AND pos < %s'
PG_MARK_TRUNCATE = (f'INSERT INTO {PG_TOMBSTONES} AS _cb_d (tbl, key, pos) '
                    f"VALUES (%s, '{TRUNCATED}', %s) ON CONFLICT (tbl, key) DO UPDATE "
                    'SET pos = EXCLUDED.pos, written_at = EXCLUDED.written_at '
                    'WHERE _cb_d.pos < EXCLUDED.pos')
# Up to %s (limit) tombstones and truncate marks, of every table, written more than %s seconds
# ago, oldest first (parameters: seconds, limit, seconds).  The outer condition is not
# redundant: a tombstone a batch rewrote meanwhile is a new row version, and PostgreSQL
# re-checks only that condition (not the ctid list) on it.
PG_PRUNE_TOMBSTONES = (
    f'DELETE FROM {PG_TOMBSTONES} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {PG_TOMBSTONES} '
    'WHERE written_at < now() - make_interval(secs => %s) ORDER BY written_at LIMIT %s)) '
    'AND written_at < now() - make_interval(secs => %s)')


def pg_newer_rows_exist(target: TargetTable) -> str:
    return f'SELECT EXISTS (SELECT 1 FROM {pg_table(target)} WHERE {pg_ident(POS)} >= %s)'


def pg_high_water(target: TargetTable) -> str:
    """The newest position the table reflects: its rows', deletes' and truncate's (parameter:
    the target's label).  Scans the table: only run when a schema change needs it."""
    return (f'SELECT GREATEST((SELECT max({pg_ident(POS)}) FROM {pg_table(target)}), '
            f'(SELECT max(pos) FROM {PG_TOMBSTONES} WHERE tbl = %s))')


def pg_truncate(target: TargetTable) -> str:
    return f'TRUNCATE {pg_table(target)}'


def pg_delete_older(target: TargetTable) -> str:
    pos = pg_ident(POS)
    return f'DELETE FROM {pg_table(target)} WHERE {pos} IS NULL OR {pos} < %s'


def pg_lock_key(target: TargetTable) -> int:
    """A signed 64-bit advisory-lock key for a target table."""
    digest = hashlib.blake2b(f'changebeam:{target}'.encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'big', signed=True)


# ---------------------------------------------------------------------------------------------
# MariaDB

MY_TOMBSTONES = '`_changebeam_tombstones`'
_MY_POS_TYPE = 'VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin'
_MY_TABLE_OPTIONS = 'ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin'


def my_ident(name: str) -> str:
    """A MariaDB identifier, backquoted with embedded backquotes doubled."""
    return '`' + _check(name).replace('`', '``') + '`'


def my_label(target: TargetTable) -> str:
    """The target's quoted name as a value (the tombstones' ``tbl``)."""
    return '.'.join('`' + _check(p).replace('`', '``') + '`'
                    for p in (target.schema, target.table) if p)


def my_table(target: TargetTable) -> str:
    if target.schema:
        return f'{my_ident(target.schema)}.{my_ident(target.table)}'
    return my_ident(target.table)


def _my_list(names: Sequence[str]) -> str:
    return ', '.join(my_ident(n) for n in names)


# As _PG_WRITTEN_AT; the session's time zone is UTC (set on connect).
_MY_WRITTEN_AT = 'written_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)'


def my_create_tombstones() -> str:
    return (f'CREATE TABLE IF NOT EXISTS {MY_TOMBSTONES} ('
            'tbl VARCHAR(400) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL, '
            f'`key` {_MY_POS_TYPE} NOT NULL, pos {_MY_POS_TYPE} NOT NULL, {_MY_WRITTEN_AT}, '
            f'PRIMARY KEY (tbl, `key`), KEY written_at (written_at)) {_MY_TABLE_OPTIONS}')


# Whether the tombstone table has ``written_at``'s index, and so the column (see
# PG_TOMBSTONES_CURRENT; an ALTER would also commit a transaction, and wait for every batch).
# What a session does, asked from another one (the sink's stall check): command, state,
# seconds in it, the start of its statement.
MY_SESSION_ACTIVITY = (
    "SELECT COMMAND, STATE, TIME, LEFT(COALESCE(INFO, ''), 100) "
    'FROM information_schema.PROCESSLIST WHERE ID = %s')

# The sessions whose InnoDB transactions hold the row locks a session waits for (the
# information_schema tables need the PROCESS privilege).
MY_ROW_LOCK_HOLDERS = (
    'SELECT DISTINCT b.trx_mysql_thread_id, p.USER, p.COMMAND, p.TIME, '
    "LEFT(COALESCE(b.trx_query, p.INFO, ''), 100) "
    'FROM information_schema.INNODB_TRX AS r '
    'JOIN information_schema.INNODB_LOCK_WAITS AS w ON w.requesting_trx_id = r.trx_id '
    'JOIN information_schema.INNODB_TRX AS b ON b.trx_id = w.blocking_trx_id '
    'LEFT JOIN information_schema.PROCESSLIST AS p ON p.ID = b.trx_mysql_thread_id '
    'WHERE r.trx_mysql_thread_id = %s')

MY_TOMBSTONES_CURRENT = (
    'SELECT EXISTS (SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() '
    "AND TABLE_NAME = '_changebeam_tombstones' AND INDEX_NAME = 'written_at' "
    "AND COLUMN_NAME = 'written_at')")


def my_upgrade_tombstones() -> str:
    """Add ``written_at`` (and its index) to an older tombstone table; its tombstones count as
    written now."""
    return (f'ALTER TABLE {MY_TOMBSTONES} ADD COLUMN IF NOT EXISTS {_MY_WRITTEN_AT}, '
            'ADD INDEX IF NOT EXISTS written_at (written_at)')


def _my_column(column: ColumnDef) -> str:
    name, type_, nullable = column
    return f'{my_ident(name)} {type_}' + (' NULL' if nullable else ' NOT NULL')


def my_create_table(target: TargetTable, columns: Sequence[ColumnDef],
                    key: Sequence[str], comment: str = "''") -> str:
    """CREATE TABLE; ``comment`` is the table comment's literal."""
    parts = [_my_column(c) for c in columns]
    parts.append(f'{my_ident(POS)} {_MY_POS_TYPE} NULL')
    if key:
        parts.append(f'PRIMARY KEY ({_my_list(key)})')
    else:
        parts.append(f'{my_ident(ROW_ID)} VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin '
                     'NULL UNIQUE')
    return (f'CREATE TABLE IF NOT EXISTS {my_table(target)} ({", ".join(parts)}) '
            f'{_MY_TABLE_OPTIONS} COMMENT={comment}')


def my_table_comment(database: str, table: str) -> str:
    """The comment of a table, by its database's and its name's literals (no row: no table)."""
    return ('SELECT TABLE_COMMENT FROM information_schema.TABLES '
            f'WHERE TABLE_SCHEMA = {database} AND TABLE_NAME = {table}')


def my_set_comment(target: TargetTable, comment: str) -> str:
    return f'ALTER TABLE {my_table(target)} COMMENT={comment}'


def my_add_columns(target: TargetTable, columns: Sequence[ColumnDef],
                   hidden: Sequence[str] = ()) -> list[str]:
    adds = [f'ADD COLUMN IF NOT EXISTS {_my_column((n, t, True))}' for n, t, _ in columns]
    for name in hidden:
        unique = ' UNIQUE' if name == ROW_ID else ''
        adds.append(f'ADD COLUMN IF NOT EXISTS {my_ident(name)} {_MY_POS_TYPE} NULL{unique}')
    return [f'ALTER TABLE {my_table(target)} {", ".join(adds)}'] if adds else []


def my_alter_table(target: TargetTable, add: Sequence[ColumnDef] = (),
                   modify: Sequence[ColumnDef] = (), hidden: Sequence[str] = ()) -> list[str]:
    """One ALTER TABLE: columns to add (nullable), columns to redefine as ``(name, type,
    nullable)`` (MODIFY restates the whole definition), missing bookkeeping columns."""
    statements = my_add_columns(target, add, hidden)
    parts = [f'MODIFY COLUMN {_my_column(c)}' for c in modify]
    if parts:
        if statements:
            statements[0] += ', ' + ', '.join(parts)
        else:
            statements.append(f'ALTER TABLE {my_table(target)} {", ".join(parts)}')
    return statements


def my_drop_columns(target: TargetTable, names: Sequence[str]) -> list[str]:
    """Drop kept columns whose name the source uses again, before they are added anew."""
    if not names:
        return []
    drops = ', '.join(f'DROP COLUMN IF EXISTS {my_ident(n)}' for n in names)
    return [f'ALTER TABLE {my_table(target)} {drops}']


def my_upsert(target: TargetTable, columns: Sequence[str], key: Sequence[str],
              rows: Sequence[str], nulled: Sequence[str] = ()) -> str:
    """A multi-row upsert; ``rows`` are escaped ``(v1, v2, …)`` tuples in ``columns`` order.

    MariaDB evaluates the UPDATE assignments left to right against the row being updated, so
    ``_cb_pos`` is assigned last and every earlier assignment still sees the stored position.
    ``nulled`` are target columns the rows' schema lacks (dropped at the source): set NULL.
    """
    pos = my_ident(POS)
    newer = f'{pos} IS NULL OR {pos} < VALUES({pos})'
    updates = [c for c in columns if c not in key and c != POS]
    assignments = ', '.join(
        [f'{my_ident(c)} = IF({newer}, VALUES({my_ident(c)}), {my_ident(c)})' for c in updates]
        + [f'{my_ident(c)} = IF({newer}, NULL, {my_ident(c)})' for c in nulled]
        + [f'{pos} = IF({newer}, VALUES({pos}), {pos})'])
    return (f'INSERT INTO {my_table(target)} ({_my_list(columns)}) VALUES {", ".join(rows)} '
            f'ON DUPLICATE KEY UPDATE {assignments}')


def my_append(target: TargetTable, columns: Sequence[str], rows: Sequence[str]) -> str:
    """A multi-row insert into a keyless table; a row whose ``_cb_id`` exists is a replay."""
    row_id = my_ident(ROW_ID)
    return (f'INSERT INTO {my_table(target)} ({_my_list(columns)}) VALUES {", ".join(rows)} '
            f'ON DUPLICATE KEY UPDATE {row_id} = {row_id}')


def my_delete(target: TargetTable, key: Sequence[str],
              rows: Sequence[tuple[Sequence[str], str]], integer_key: bool = False) -> str:
    """Delete each ``(escaped key values, escaped position)`` row if its position is older.

    ``integer_key``: the key is one integer column, and each row's position is picked for it
    by ``FIELD`` over an ``IN`` list, which costs the server half as much as a disjunction of
    one condition per row (5.4 against 10.2 µs a row, 500 rows a statement).  ``FIELD`` and
    ``IN`` compare integers alike; other types could compare otherwise in one of them (as
    strings, as doubles), and a key ``FIELD`` missed would keep its row.
    """
    pos = my_ident(POS)
    if integer_key and len(key) == 1:
        column = my_ident(key[0])
        keys = ', '.join(values[0] for values, _ in rows)
        positions = ', '.join(position for _, position in rows)
        return (f'DELETE FROM {my_table(target)} WHERE {column} IN ({keys}) AND ({pos} IS NULL '
                f'OR {pos} < ELT(FIELD({column}, {keys}), {positions}))')
    conditions = []
    for values, position in rows:
        match = ' AND '.join(f'{my_ident(k)} = {v}' for k, v in zip(key, values, strict=True))
        conditions.append(f'({match} AND ({pos} IS NULL OR {pos} < {position}))')
    return f'DELETE FROM {my_table(target)} WHERE {" OR ".join(conditions)}'


def my_record_tombstones(rows: Sequence[str]) -> str:
    """Tombstones from escaped ``(tbl, key, pos)`` tuples, keeping the newest position."""
    # written_at first: MariaDB assigns left to right, and it must still see the old pos.
    return (f'INSERT INTO {MY_TOMBSTONES} (tbl, `key`, pos) VALUES {", ".join(rows)} '
            'ON DUPLICATE KEY UPDATE '
            'written_at = IF(pos < VALUES(pos), CURRENT_TIMESTAMP(6), written_at), '
            'pos = GREATEST(pos, VALUES(pos))')


def my_read_tombstones(tbl: str, keys: Sequence[str]) -> str:
    """The tombstones of escaped ``keys`` and the truncate mark of escaped table label ``tbl``."""
    wanted = ', '.join([*keys, f"'{TRUNCATED}'"])
    return f'SELECT `key`, pos FROM {MY_TOMBSTONES} WHERE tbl = {tbl} AND `key` IN ({wanted})'


def my_tombstone_marks(tbl: str) -> str:
    """The truncate mark of escaped table label ``tbl``, its first key's tombstone, if any, and
    its newest-tombstone mark (see ``PG_TOMBSTONE_MARKS``)."""
    return (f'(SELECT `key`, pos FROM {MY_TOMBSTONES} WHERE tbl = {tbl} ORDER BY `key` LIMIT 2) '
            f"UNION ALL SELECT `key`, pos FROM {MY_TOMBSTONES} WHERE tbl = {tbl} "
            f"AND `key` = '{NEWEST}'")


def my_raise_newest(tbl: str, pos: str) -> str:
    """Raises the newest-tombstone mark of ``tbl`` to escaped ``pos``; changes no row (0)
    where there is no mark: then :func:`my_mark_newest`."""
    return (f'UPDATE {MY_TOMBSTONES} SET pos = GREATEST(pos, {pos}), '
            f"written_at = CURRENT_TIMESTAMP(6) WHERE tbl = {tbl} AND `key` = '{NEWEST}'")


def my_mark_newest(tbl: str, pos: str) -> str:
    """The newest-tombstone mark of ``tbl``: escaped ``pos`` or the newest key tombstone there
    is (tombstones an older version wrote, or a mark pruned or truncated away)."""
    # Every column qualified: unqualified, MariaDB may take ``pos`` in the UPDATE part for the
    # SELECT's (error 1052, ambiguous).
    return (f'INSERT INTO {MY_TOMBSTONES} (tbl, `key`, pos) '
            f"SELECT {tbl}, '{NEWEST}', GREATEST({pos}, COALESCE(max(_cb_old.pos), '')) "
            f"FROM {MY_TOMBSTONES} AS _cb_old WHERE _cb_old.tbl = {tbl} "
            f"AND _cb_old.`key` > '{TRUNCATED}' AND _cb_old.`key` < '{NEWEST}' "
            f'ON DUPLICATE KEY UPDATE {MY_TOMBSTONES}.written_at = CURRENT_TIMESTAMP(6), '
            f'{MY_TOMBSTONES}.pos = GREATEST({MY_TOMBSTONES}.pos, VALUES(pos))')


def my_drop_tombstones(tbl: str, keys: Sequence[str]) -> str:
    return f'DELETE FROM {MY_TOMBSTONES} WHERE tbl = {tbl} AND `key` IN ({", ".join(keys)})'


def my_truncate_tombstones(tbl: str, pos: str) -> str:
    """Tombstones (and the truncate mark) older than a truncate at escaped ``pos``."""
    return f'DELETE FROM {MY_TOMBSTONES} WHERE tbl = {tbl} AND pos < {pos}'


def my_prune_tombstones(seconds: float, limit: int) -> str:
    """Up to ``limit`` tombstones and truncate marks, of every table, written more than
    ``seconds`` ago, oldest first; a row lock held by a batch makes it give up after 2 s."""
    micros = int(seconds * 1_000_000)
    return ('SET STATEMENT innodb_lock_wait_timeout = 2 FOR '
            f'DELETE FROM {MY_TOMBSTONES} WHERE written_at < NOW(6) - INTERVAL {micros:d} '
            f'MICROSECOND ORDER BY written_at, tbl, `key` LIMIT {int(limit):d}')


def my_delete_older(target: TargetTable, pos: str) -> str:
    column = my_ident(POS)
    return f'DELETE FROM {my_table(target)} WHERE {column} IS NULL OR {column} < {pos}'


def my_high_water(target: TargetTable, tbl: str) -> str:
    """The newest position the table reflects (escaped label ``tbl``); scans the table."""
    return (f'SELECT GREATEST(COALESCE((SELECT max({my_ident(POS)}) FROM {my_table(target)}), '
            f"''), COALESCE((SELECT max(pos) FROM {MY_TOMBSTONES} WHERE tbl = {tbl}), ''))")


def my_lock_name(target: TargetTable) -> str:
    """A GET_LOCK name (≤ 64 characters) for a target table."""
    return f'changebeam:{_short_hash(str(target))}'
