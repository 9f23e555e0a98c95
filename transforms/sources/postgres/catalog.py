"""What the PostgreSQL source asks the server's catalog, on an ordinary connection.

Pre-flight checks (wal_level, privileges, replica identity, lost slots) fail with one line that
says what to do; the publication and the slot are created or reused here; primary keys and
column types are looked up for the tables the stream and the snapshot see.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

__all__ = ['CatalogColumn', 'SlotInfo', 'SourceSetupError', 'TableRef', 'check_server',
           'drop_slot', 'ensure_publication', 'lock_wait', 'missing_values', 'primary_key',
           'published_tables', 'quote_ident', 'resolve_tables', 'slot_blockers', 'slot_info',
           'table_columns']

_LOG = logging.getLogger(__name__)


class SourceSetupError(RuntimeError):
    """The source database is not ready for CDC; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class TableRef:
    """A captured table as the catalog knows it."""

    oid: int
    schema: str
    table: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    has_primary_key: bool

    @property
    def name(self) -> str:
        return f'{self.schema}.{self.table}'

    @property
    def quoted(self) -> str:
        return f'{quote_ident(self.schema)}.{quote_ident(self.table)}'


@dataclasses.dataclass(frozen=True)
class SlotInfo:
    name: str
    plugin: str
    database: str
    active_pid: int | None
    confirmed_flush: str | None
    wal_status: str | None


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_server(conn: Any) -> None:
    """wal_level must be logical and the user must be allowed to replicate."""
    wal_level = conn.execute('SHOW wal_level').fetchone()[0]
    if wal_level != 'logical':
        raise SourceSetupError(
            f'wal_level is {wal_level!r}; logical replication needs wal_level=logical: '
            "run ALTER SYSTEM SET wal_level = 'logical' and restart PostgreSQL")
    superuser, replication, user = conn.execute(
        'SELECT rolsuper, rolreplication, rolname FROM pg_roles WHERE rolname = current_user'
    ).fetchone()
    if not (superuser or replication):
        raise SourceSetupError(
            f'role {user!r} may not replicate: run ALTER ROLE {quote_ident(user)} REPLICATION '
            '(and GRANT SELECT on the captured tables for the snapshot)')


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relreplident,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       c.relpersistence = 'u'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%%'
"""


_UNPUBLISHABLE_PARTITIONS_SQL = """
SELECT n.nspname || '.' || c.relname
FROM unnest(%s::oid[]) AS t(oid)
CROSS JOIN LATERAL pg_partition_tree(t.oid) AS p
JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE p.isleaf AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (
    SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
ORDER BY 1
"""

# Each captured table's key (its replica identity index's columns, else its primary key's: as
# the stream keys it) at level 0, then the columns each of its partitions logs as the old row's
# identity (REPLICA IDENTITY FULL: all).
_PARTITION_IDENTITY_SQL = """
SELECT t.oid, p.level, n.nspname || '.' || c.relname, c.relreplident,
       ARRAY(SELECT a.attname FROM pg_index i JOIN pg_attribute a
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = c.oid
               AND CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END)
FROM unnest(%s::oid[]) AS t(oid)
CROSS JOIN LATERAL pg_partition_tree(t.oid) AS p
JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE p.level = 0 OR p.isleaf
ORDER BY p.level, 3
"""


def resolve_tables(conn: Any, names: Sequence[str]) -> list[TableRef]:
    """The tables to capture: ``names`` (schema.table, default schema public) or all of them.

    Raises SourceSetupError naming a table that does not exist, and naming every table whose
    updates PostgreSQL would refuse to publish (no primary key and no replica identity) — adding
    such a table to a publication would make the application's UPDATEs fail — and a partition
    whose replica identity lacks its table's key.  An UNLOGGED table's changes are not in the
    write-ahead log: one named is refused, and without names they are left out (with a
    warning).
    """
    rows = conn.execute(_TABLES_SQL + ' ORDER BY 2, 3').fetchall()
    found = {(schema, table): TableRef(oid, schema, table, ident, has_pk)
             for oid, schema, table, ident, has_pk, _ in rows}
    unlogged = {(schema, table) for _, schema, table, _, _, no_wal in rows if no_wal}
    if names:
        chosen = []
        for name in names:
            schema, table = _split_name(name)
            ref = found.get((schema, table))
            if ref is None:
                known = ', '.join(f'{s}.{t}' for s, t in found) or '(none)'
                raise SourceSetupError(f'--tables: no table {schema}.{table} in this database; '
                                       f'tables: {known}')
            if (schema, table) in unlogged:
                raise SourceSetupError(
                    f'table {ref.name} is UNLOGGED, so its changes are not in the write-ahead '
                    f'log and cannot be captured: run ALTER TABLE {ref.quoted} SET LOGGED, or '
                    'leave it out of --tables')
            # A table named twice (``a,public.a``) would be copied twice.
            if ref not in chosen:
                chosen.append(ref)
    else:
        chosen = [ref for key, ref in found.items() if key not in unlogged]
        if unlogged:
            _LOG.warning('not captured: UNLOGGED table(s) %s (their changes are not in the '
                         'write-ahead log; ALTER TABLE … SET LOGGED to capture them)',
                         ', '.join(f'{s}.{t}' for s, t in sorted(unlogged)))
    unpublishable = [t.name for t in chosen if t.replica_identity == 'n'
                     or (t.replica_identity == 'd' and not t.has_primary_key)]
    # A partitioned table's replica identity is not its partitions': each must have its own.
    unpublishable += [name for (name,) in conn.execute(
        _UNPUBLISHABLE_PARTITIONS_SQL, ([t.oid for t in chosen],)).fetchall()]
    if unpublishable:
        first = unpublishable[0]
        raise SourceSetupError(
            f'table(s) {", ".join(unpublishable)} have no primary key or replica identity, so '
            f'PostgreSQL cannot publish their updates and deletes: run ALTER TABLE {first} '
            'REPLICA IDENTITY FULL (or add a primary key), or leave them out of --tables')
    _check_partition_identities(conn, chosen)
    return chosen


def _check_partition_identities(conn: Any, tables: Sequence[TableRef]) -> None:
    """A partition logs its own replica identity as the old row, which must hold the key its
    table's changes carry, or their deletes and key changes could not name a row."""
    keys: dict[int, list[str]] = {}
    for oid, level, name, ident, columns in conn.execute(
            _PARTITION_IDENTITY_SQL, ([t.oid for t in tables],)).fetchall():
        if level == 0:
            keys[oid] = columns
            continue
        if ident == 'f' or set(keys[oid]) <= set(columns):
            continue
        table = next(t for t in tables if t.oid == oid)
        key = ', '.join(keys[oid])
        raise SourceSetupError(
            f'partition {name} of table {table.name} logs ({", ".join(columns)}) as the old '
            f"row's replica identity, which lacks the table's key ({key}), so its deletes "
            f'and key changes could not be applied: run ALTER TABLE {name} REPLICA IDENTITY '
            f'FULL (or USING a unique index that includes ({key})), or leave {table.name} '
            'out of --tables')


def _split_name(name: str) -> tuple[str, str]:
    parts = _split_quoted(name)
    if len(parts) == 1:
        return 'public', parts[0]
    return parts[0], parts[1]


def _split_quoted(name: str) -> list[str]:
    parts: list[str] = []
    current, quoted, i = '', False, 0
    while i < len(name):
        ch = name[i]
        if ch == '"':
            if quoted and i + 1 < len(name) and name[i + 1] == '"':
                current += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == '.' and not quoted:
            parts.append(current)
            current = ''
        else:
            current += ch
        i += 1
    parts.append(current)
    return parts


def published_tables(conn: Any, name: str) -> set[str]:
    """The ``schema.table`` names a publication lists (none for FOR ALL TABLES)."""
    return {f'{schema}.{table}' for schema, table in conn.execute(
        'SELECT n.nspname, c.relname FROM pg_publication_rel r '
        'JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid '
        'JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = %s',
        (name,)).fetchall()}


def ensure_publication(conn: Any, name: str, tables: Sequence[TableRef] | None) -> None:
    """Create the publication (FOR ALL TABLES when ``tables`` is None) or align its table list.

    It publishes a partitioned table's changes under the table's own name
    (``publish_via_partition_root``), as the snapshot reads it, not under its partitions'.
    """
    exists = conn.execute('SELECT puballtables, pubviaroot FROM pg_publication '
                          'WHERE pubname = %s', (name,)).fetchone()
    target = 'ALL TABLES' if tables is None else \
        'TABLE ' + ', '.join(t.quoted for t in tables)
    if exists is None:
        conn.execute(f'CREATE PUBLICATION {quote_ident(name)} FOR {target} '
                     'WITH (publish_via_partition_root = true)')
        _LOG.info('created publication %s for %s', name, target)
        return
    if not exists[1]:
        conn.execute(f'ALTER PUBLICATION {quote_ident(name)} '
                     'SET (publish_via_partition_root = true)')
    if tables is None and not exists[0]:
        # PostgreSQL cannot turn it into FOR ALL TABLES, and the slot could not decode a
        # change written between dropping it and making it anew ('publication … does not
        # exist', checked on 15).
        listed = ', '.join(sorted(published_tables(conn, name))) or '(none)'
        raise SourceSetupError(
            f'publication {name!r} lists the tables {listed}, but --tables was not given: pass '
            'them (and any others) with --tables, or pass --slot_name and --publication with '
            'new names to capture every table from a new snapshot')
    if tables is not None and not exists[0]:
        conn.execute(f'ALTER PUBLICATION {quote_ident(name)} SET {target}')
    elif tables is not None and exists[0]:
        raise SourceSetupError(
            f'publication {name!r} exists FOR ALL TABLES but --tables was given: drop it '
            f'(DROP PUBLICATION {quote_ident(name)}) or pass --publication with another name')


def slot_info(conn: Any, name: str) -> SlotInfo | None:
    row = conn.execute(
        'SELECT slot_name, plugin, database, active_pid, confirmed_flush_lsn::text, wal_status '
        'FROM pg_replication_slots WHERE slot_name = %s', (name,)).fetchone()
    if row is None:
        return None
    info = SlotInfo(*row)
    database = conn.execute('SELECT current_database()').fetchone()[0]
    if info.plugin != 'pgoutput' or info.database != database:
        raise SourceSetupError(
            f'slot {name!r} exists but is a {info.plugin} slot of database {info.database!r}; '
            f'pass another --slot_name')
    if info.wal_status == 'lost':
        raise SourceSetupError(
            f'slot {name!r} is lost: PostgreSQL removed WAL it still needed '
            f'(max_slot_wal_keep_size). Drop it (SELECT pg_drop_replication_slot({name!r})) '
            'and restart with --snapshot initial to copy the tables again')
    return info


def primary_key(conn: Any, relation_oid: int) -> tuple[str, ...]:
    rows = conn.execute(
        'SELECT a.attname FROM pg_index i JOIN pg_attribute a '
        'ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) '
        'WHERE i.indrelid = %s AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)',
        (relation_oid,)).fetchall()
    return tuple(name for (name,) in rows)


def table_columns(conn: Any, relation_oid: int) -> list[tuple[str, int, int]]:
    """(name, type oid, typmod) of the columns pgoutput publishes, in table order."""
    return conn.execute(
        "SELECT attname, atttypid::int, atttypmod FROM pg_attribute WHERE attrelid = %s "
        "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
        (relation_oid,)).fetchall()


@dataclasses.dataclass(frozen=True)
class CatalogColumn:
    """What ``pg_attribute`` says *now* of a column, for the value rows older than it read."""

    missing: str | None  # attmissingval::text, a one-element array literal; None: none
    has_default: bool  # atthasdef
    xmin: int  # the transaction that last wrote the column's pg_attribute row


def missing_values(conn: Any, relation_oid: int) -> dict[str, CatalogColumn]:
    """The live columns of a table by name, with ``attmissingval::text``: the value rows older
    than an ``ADD COLUMN … DEFAULT <constant>`` read (PostgreSQL 11+, no rewrite).  A rewrite
    since (``VACUUM FULL``, ``CLUSTER``, a rewriting ``ALTER … TYPE``) cleared it and rewrote
    the row, so ``xmin`` tells whether the answer is younger than a change being decoded."""
    rows = conn.execute(
        'SELECT attname, CASE WHEN atthasmissing THEN attmissingval::text END, atthasdef, '
        'xmin::text::bigint FROM pg_attribute WHERE attrelid = %s AND attnum > 0 '
        'AND NOT attisdropped', (relation_oid,)).fetchall()
    return {name: CatalogColumn(text, has_default, xmin)
            for name, text, has_default, xmin in rows}


# One line about a backend (``{b}``: the pg_stat_activity alias; ``{since}``: its column the
# age counts from).
_BACKEND_LINE = """format('process %%s (database %%s, user %%s%%s) %%s for %%s s: %%s', {b}.pid,
       {b}.datname, {b}.usename,
       CASE WHEN {b}.application_name <> '' THEN ', ' || {b}.application_name END, {b}.state,
       round(extract(epoch FROM clock_timestamp() - {b}.{since}))::bigint,
       left(regexp_replace({b}.query, '\\s+', ' ', 'g'), 80))"""

# Transactions that hold a transaction id (they wrote), anywhere on the server, begun at least
# %s seconds ago, and prepared transactions (nobody's session holds those); oldest first.
_SLOT_BLOCKERS_SQL = f"""
SELECT line FROM (
  SELECT a.xact_start AS since, {_BACKEND_LINE.format(b='a', since='xact_start')} AS line
  FROM pg_stat_activity AS a
  WHERE a.backend_xid IS NOT NULL AND a.backend_type = 'client backend'
    AND a.xact_start <= clock_timestamp() - make_interval(secs => %s)
  UNION ALL
  SELECT prepared,
         format('prepared transaction %%L (database %%s, owner %%s) since %%s s', gid,
                database, owner, round(extract(epoch FROM clock_timestamp() - prepared))::bigint)
  FROM pg_prepared_xacts
  WHERE prepared <= clock_timestamp() - make_interval(secs => %s)
) AS tx ORDER BY since LIMIT 5
"""

# A session waiting for a lock: its statement, how long, and who holds what it waits for.
_LOCK_WAIT_SQL = f"""
SELECT left(regexp_replace(w.query, '\\s+', ' ', 'g'), 80),
       round(extract(epoch FROM clock_timestamp() - w.state_change))::bigint,
       (SELECT string_agg({_BACKEND_LINE.format(b='h', since='xact_start')}, '; ')
        FROM pg_stat_activity AS h WHERE h.pid = ANY (pg_blocking_pids(w.pid)))
FROM pg_stat_activity AS w WHERE w.pid = %s AND w.wait_event_type = 'Lock'
"""


def lock_wait(conn: Any, pid: int) -> str | None:
    """What backend ``pid`` waits for, when it waits for a lock: its statement, for how long,
    and the sessions holding the lock (one line each); else None."""
    row = conn.execute(_LOCK_WAIT_SQL, (pid,)).fetchone()
    if row is None:
        return None
    statement, seconds, holders = row
    held = f'held by {holders}' if holders else 'no session holds any more'
    return f'{statement!r} has waited {seconds} s for a lock {held}'


def slot_blockers(conn: Any, running_for_s: float) -> list[str]:
    """The transactions a logical slot being created for ``running_for_s`` seconds may wait
    for: creating one waits until every transaction that had written when it began has ended,
    in every database of the server (a prepared one too), to start at a point where none is
    open.  One line each, oldest first; at most 5."""
    rows = conn.execute(_SLOT_BLOCKERS_SQL, (running_for_s, running_for_s)).fetchall()
    return [line for (line,) in rows]


def drop_slot(conn: Any, name: str, timeout: float = 30.0) -> None:
    """Drop a slot once no walsender holds it (one we just disconnected exits asynchronously)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute('SELECT active FROM pg_replication_slots WHERE slot_name = %s',
                           (name,)).fetchone()
        if row is None:
            return
        if not row[0]:
            conn.execute('SELECT pg_drop_replication_slot(%s)', (name,))
            return
        if time.monotonic() > deadline:
            raise SourceSetupError(f'slot {name!r} is still in use; cannot drop it')
        time.sleep(0.05)
