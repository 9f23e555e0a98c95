"""WriteChangesToMySQL: keep MariaDB/MySQL tables equal to the source tables (effectively-once).

    dead = events | 'WriteToMariaDB' >> WriteChangesToMySQL('mysql://app@db:3306/replica')

Source ``schema.table`` goes to ``table`` in the DSN's database (created on first sight: source
types verbatim from a MySQL/MariaDB source, else the typemap's; altered when the source's
schema changes, see ``alter``: MariaDB commits DDL implicitly, so the ALTER runs just before
the batch transaction, and is idempotent if the batch is retried).  Each batch is one
transaction of multi-row ``INSERT … ON DUPLICATE KEY UPDATE c = IF(row older, new, old)``
statements (measured in bench/sinks.py against ``LOAD DATA LOCAL INFILE``; see docs/sinks.md).
The session runs in strict mode with ``NO_AUTO_VALUE_ON_ZERO`` and UTC: a value MariaDB cannot
hold (NaN, ±Infinity, ``infinity`` and other temporal text forms, out-of-range numbers or dates,
decimals with more digits after the point than the column keeps) is rejected and its row goes
to the dead-letter output instead of being silently changed.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import operator
import socket
import struct
from collections.abc import Callable, Sequence
from decimal import Decimal
from itertools import accumulate
from typing import Any

from transforms.deadline import notice_lost_peer
from transforms.dsn import mysql_connect_args, mysql_error_from_server, parse_dsn, redact
from transforms.envelope import Column, Kind, TableSchema, encode_json_value
from transforms.sinks.sql import statements as sql
from transforms.sinks.sql.alter import (
    DROPPED_NOTE,
    Alteration,
    TargetColumn,
    add_default,
    drop_defaults,
    filled,
)
from transforms.sinks.sql.apply import (
    DEFAULT_STALL_CHECK_S,
    DEFAULT_TOMBSTONE_RETENTION,
    Target,
    WriteChanges,
    keys_to_look_up,
)
from transforms.sinks.sql.batch import RowChange, TableBatch, hashed
from transforms.sinks.sql.routing import Route, TargetTable, mysql_target
from transforms.sinks.sql.typemap import SAME_DATABASE, mysql_scale, mysql_type

try:
    from transforms.sinks.sql import _copytext
except ImportError:  # built without a C compiler: the column-wise paths below do it all
    _copytext = None  # type: ignore[assignment]

__all__ = ['WriteChangesToMySQL']

_LOG = logging.getLogger(__name__)
_STEP = 'WriteChangesToMySQL'
_SQL_MODE = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO'
# Server errors worth a new attempt: too many connections, server shutdown, lock wait timeout,
# deadlock, connection killed; every client error (2000-2999: gone away, lost, cannot connect).
_RETRYABLE_CODES = frozenset({1040, 1053, 1205, 1213, 1927})
_STATEMENT_BYTES = 2 << 20  # per multi-row statement, well under max_allowed_packet (16 MiB)
_DELETES_PER_STATEMENT = 500
_LOCK_TIMEOUT_S = 60
# The table comment naming the source table whose rows a target table holds (``Target.claim``).
_SOURCE_NOTE = 'changebeam source: '
def _pymysql() -> Any:
    try:
        import pymysql
    except ImportError as exc:
        raise ImportError("WriteChangesToMySQL needs PyMySQL: pip install "
                          "'changebeam[mysql]'") from exc
    return pymysql


def _connect_args(dsn: str) -> dict[str, Any]:
    """PyMySQL keyword arguments for a ``mysql://`` DSN that names the target database;
    ValueError naming the redacted DSN."""
    args = mysql_connect_args(dsn)
    database = parse_dsn(dsn, option='dsn').database
    if not database:
        raise ValueError(f'dsn {redact(dsn)!r} names no database; tables are written to the '
                         "DSN's database: mysql://USER@HOST[:PORT]/DB")
    return {**args, 'database': database}


# ---------------------------------------------------------------------------------------------
# Values → SQL literals (the only way values enter statements)

def _escape_string(text: str) -> str:
    # Backslash escaping is right because the session's sql_mode (set in connect()) has no
    # NO_BACKSLASH_ESCAPES.
    return str(_pymysql().converters.escape_string(text))


def _reject(kind: str, value: Any) -> str:
    raise ValueError(f'MariaDB cannot hold {kind} value {value!r}')


def _quoted(escape: Callable[[str], str]) -> Callable[[Any], str]:
    def literal(value: Any) -> str:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return "_binary X'" + bytes(value).hex() + "'"
        return "'" + escape(str(value)) + "'"
    return literal


def _float(value: Any) -> str:
    number = float(value)
    if number != number or number in (float('inf'), float('-inf')):
        return _reject('float', value)
    return repr(number) + ('e0' if 'e' not in repr(number) else '')


def _decimals(value: Decimal) -> int:
    """How many digits a finite ``value`` has after the point, trailing zeros aside."""
    _, digits, exponent = value.as_tuple()
    significant = ''.join(map(str, digits)).rstrip('0')
    if not significant:
        return 0
    return max(0, -(int(exponent) + len(digits) - len(significant)))


def _decimal(scale: int | None) -> Callable[[Any], str]:
    """The literal of a value for a DECIMAL column keeping ``scale`` digits after the point."""
    def literal(value: Any) -> str:
        if not isinstance(value, Decimal):
            value = Decimal(str(value))
        if not value.is_finite():
            return _reject('decimal', value)
        # MariaDB rounds extra digits with only a Note, even in strict mode: refused here.
        if scale is not None and _decimals(value) > scale:
            raise ValueError(f'MariaDB cannot hold decimal value {value:f} unchanged: it has '
                             f'{_decimals(value)} digits after the point, and the column\'s '
                             f'type keeps {scale} (MariaDB would round it); round such values '
                             f'at the source, e.g. with a type numeric(p,s) with s <= {scale}')
        return format(value, 'f')
    return literal


def _integer(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        value = int(value)
    return str(value)


def _temporal(quote: Callable[[Any], str]) -> Callable[[Any], str]:
    def literal(value: Any) -> str:
        if isinstance(value, str):
            return quote(value)  # a text form; MariaDB accepts or rejects it (strict mode)
        if isinstance(value, dt.datetime):
            if value.tzinfo is not None:
                value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
            return "'" + value.isoformat(' ') + "'"
        if isinstance(value, dt.time) and value.tzinfo is not None:
            value = value.replace(tzinfo=None)
        return "'" + value.isoformat() + "'"
    return literal


def _converters(table: TableSchema, escape: Callable[[str], str],
                connector: str = '') -> dict[str, Callable[[Any], str]]:
    """Per column, the SQL literal of a value (of a ``connector`` source's ``table``)."""
    quote = _quoted(escape)
    out: dict[str, Callable[[Any], str]] = {}
    for column in table.columns:
        kind = column.kind
        if kind is Kind.BOOLEAN:
            out[column.name] = lambda v: '1' if v else '0'
        elif kind in (Kind.INT16, Kind.INT32, Kind.INT64):
            out[column.name] = _integer
        elif kind in (Kind.FLOAT32, Kind.FLOAT64):
            out[column.name] = _float
        elif kind is Kind.DECIMAL:
            out[column.name] = _decimal(mysql_scale(column, connector))
        elif kind in (Kind.DATE, Kind.TIME, Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
            out[column.name] = _temporal(quote)
        elif kind is Kind.ARRAY:
            out[column.name] = _json_array(column, quote)
        elif _is_geometry(column, connector):
            out[column.name] = _geometry
        else:
            out[column.name] = quote
    return out


_GEOMETRIES = ('geometry', 'point', 'linestring', 'polygon', 'multipoint', 'multilinestring',
               'multipolygon', 'geometrycollection')
_EWKB_SRID = 0x20000000  # the EWKB flag: an SRID follows the geometry type


def _is_geometry(column: Column, connector: str) -> bool:
    """A MySQL/MariaDB geometry column, which the sink creates as the same type: its values
    (WKB, or EWKB with an SRID) go in through ST_GeomFromWKB, not as bytes."""
    return (column.kind is Kind.BYTES and SAME_DATABASE.get(connector) == 'mysql'
            and column.source_type.lower().startswith(_GEOMETRIES))


def _geometry(value: Any) -> str:
    wkb = bytes(value)
    order = '<' if wkb[:1] == b'\x01' else '>'
    (type_,) = struct.unpack_from(order + 'I', wkb, 1)
    srid = 0
    if type_ & _EWKB_SRID:
        (srid,) = struct.unpack_from(order + 'I', wkb, 5)
        wkb = wkb[:1] + struct.pack(order + 'I', type_ & ~_EWKB_SRID) + wkb[9:]
    return f"ST_GeomFromWKB(X'{wkb.hex()}', {srid})"


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # made once: the C encoder
_JSON_AS_IS = frozenset({Kind.BOOLEAN, Kind.INT16, Kind.INT32, Kind.INT64, Kind.STRING, Kind.TEXT,
                         Kind.JSON, Kind.UUID, Kind.ENUM, Kind.INTERVAL, Kind.TIMETZ})


def _json_array(column: Column, quote: Callable[[Any], str]) -> Callable[[Any], str]:
    as_is = (column.element or Kind.TEXT) in _JSON_AS_IS  # elements already JSON values

    def literal(value: Any) -> str:
        return quote(_JSON.encode(value if as_is else encode_json_value(column, value)))
    return literal


_NONE = type(None)
_ISO_SPACE = operator.methodcaller('isoformat', ' ')
_INTEGERS = frozenset({Kind.INT16, Kind.INT32, Kind.INT64})
_TEMPORAL = frozenset({Kind.DATE, Kind.TIME, Kind.TIMESTAMP})
_QUOTED = frozenset({Kind.STRING, Kind.TEXT, Kind.JSON, Kind.UUID, Kind.ENUM, Kind.INTERVAL,
                     Kind.TIMETZ})
# Inside '…' MariaDB needs only the quote and the backslash escaped; NUL too, to be safe.
_NEEDS_ESCAPE = ('\\', "'", '\x00')


def _column_literals(column: Column, values: Sequence[Any], convert: Callable[[Any], str],
                     connector: str = '') -> list[str]:
    """SQL literals of one column's values (of a ``connector`` source): one C-level map when
    every value has the expected type (~5x cheaper than ``convert`` per value, which handles
    everything else)."""
    types = set(map(type, values))
    types.discard(_NONE)
    texts: list[str] | None = None
    if len(types) == 1 and len(values) > 1:
        type_ = types.pop()
        present = [v for v in values if v is not None]
        kind = column.kind
        if kind in _QUOTED and type_ is str:
            joined = '\x1f'.join(present)
            if not any(c in joined for c in _NEEDS_ESCAPE):
                texts = ["'" + v + "'" for v in present]
        elif kind in _INTEGERS and type_ is int:
            texts = list(map(str, present))
        elif kind is Kind.DECIMAL and type_ is Decimal and all(map(Decimal.is_finite, present)):
            scale = mysql_scale(column, connector)
            if scale is None or all(v.as_tuple().exponent >= -scale for v in present):
                texts = [format(v, 'f') for v in present]
        elif kind in _TEMPORAL and type_ in (dt.date, dt.time):
            texts = ["'" + v + "'" for v in map(type_.isoformat, present)]
        elif kind is Kind.TIMESTAMP and type_ is dt.datetime and all(
                v.tzinfo is None for v in present):
            texts = ["'" + v + "'" for v in map(_ISO_SPACE, present)]
        elif kind is Kind.TIMESTAMPTZ and type_ is dt.datetime and all(
                v.tzinfo is dt.timezone.utc for v in present):
            # MariaDB takes no offset in a DATETIME literal: drop the fixed '+00:00'.
            texts = ["'" + v[:-6] + "'" for v in map(_ISO_SPACE, present)]
        elif kind is Kind.ARRAY and type_ is list and (column.element or Kind.TEXT) in _JSON_AS_IS:
            texts = list(map(_JSON.encode, present))
            if any(c in '\x1f'.join(texts) for c in _NEEDS_ESCAPE):
                texts = ["'" + _escape_string(t) + "'" for t in texts]
            else:
                texts = ["'" + t + "'" for t in texts]
        elif kind is Kind.BYTES and type_ is bytes and not _is_geometry(column, connector):
            texts = ["_binary X'" + h + "'" for h in map(bytes.hex, present)]
        if texts is not None and len(present) < len(values):
            rendered = iter(texts)
            texts = ['NULL' if v is None else next(rendered) for v in values]
    return texts if texts is not None else list(map(convert, values))


# What _copytext.rows_sql takes each column's values for (its LIT_* numbers): the one type
# the column-wise paths above render alike; 0: none (the rows are rendered column-wise).
_LITERAL_CODES = {**{kind: 1 for kind in _INTEGERS}, **{kind: 2 for kind in _QUOTED},
                  Kind.FLOAT32: 4, Kind.FLOAT64: 4, Kind.TIMESTAMP: 5, Kind.TIMESTAMPTZ: 6,
                  Kind.DATE: 7, Kind.TIME: 8, Kind.BOOLEAN: 10}
_LIT_DECIMAL, _LIT_BYTES, _LIT_JSON_ARRAY, _LIT_DECIMAL_SCALE = 3, 9, 11, 1000


def _literal_codes(table: TableSchema, columns: Sequence[str], connector: str
                   ) -> tuple[int, ...] | None:
    """rows_sql's codes for ``columns`` of ``table``; None if one has no code (or the
    extension is not built)."""
    if _copytext is None:
        return None
    codes = []
    for name in columns:
        column = table.by_name[name]
        kind = column.kind
        if kind is Kind.DECIMAL:
            scale = mysql_scale(column, connector)
            code = _LIT_DECIMAL if scale is None else _LIT_DECIMAL_SCALE + scale
        elif kind is Kind.ARRAY:
            code = _LIT_JSON_ARRAY if (column.element or Kind.TEXT) in _JSON_AS_IS else 0
        elif kind is Kind.BYTES:
            code = 0 if _is_geometry(column, connector) else _LIT_BYTES
        else:
            code = _LITERAL_CODES.get(kind, 0)
        if not code:
            return None
        codes.append(code)
    return tuple(codes)


def _null_safe(name: str, convert: Callable[[Any], str]) -> Callable[[Any], str]:
    def literal(value: Any) -> str:
        if value is None:
            return 'NULL'
        try:
            return convert(value)
        except ValueError as exc:  # the dead letter must say which column held the value
            raise ValueError(f'column {name!r}: {exc}') from None
    return literal


def _default_literal(column: Column, escape: Callable[[str], str]) -> str:
    """The SQL literal of ``column.default`` (a PostgreSQL source's text form of the value rows
    older than the column hold), converted like every value of its kind: ValueError naming the
    column for one MariaDB cannot hold."""
    from transforms.sources.postgres.pgtypes import text_parser

    assert column.default is not None
    value = text_parser(column)(column.default)
    convert = _converters(TableSchema('', '', (column,)), escape)[column.name]
    return _null_safe(column.name, convert)(value)


class _MySQLTarget(Target):
    step = _STEP
    dialect = 'mysql'
    transactional_ddl = False

    def __init__(self, dsn: str, route: Route = None) -> None:
        self._dsn = dsn
        self._args = _connect_args(dsn)
        self._route = route
        self._conn: Any = None

    @property
    def permanent(self) -> tuple[type[BaseException], ...]:  # type: ignore[override]
        return (_pymysql().err.MySQLError, ValueError, TypeError, OverflowError)

    def __getstate__(self) -> dict[str, Any]:
        return {'_dsn': self._dsn, '_args': self._args, '_route': self._route, '_conn': None}

    def target_of(self, table: TableSchema) -> TargetTable:
        return mysql_target(table, self._route)

    def _tcp_socket(self, timeout: float | None = None) -> socket.socket | None:
        """The connection's TCP socket, set to notice a lost server within about a minute
        (PyMySQL's own waits ~15 min for TCP to give up); None over a unix socket."""
        if self._args.get('unix_socket'):
            return None
        sock = socket.create_connection((self._args['host'], self._args['port']),
                                        timeout or self._args.get('connect_timeout', 10))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        notice_lost_peer(sock)
        return sock

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> None:
        pymysql = _pymysql()
        self._conn = pymysql.connect(autocommit=True, defer_connect=True, **self._args)
        self._conn.connect(self._tcp_socket())
        self._cur = self._conn.cursor()
        self._literals: dict[int, tuple[TableSchema, dict[str, Callable[[Any], str]]]] = {}
        self._run(f"SET SESSION sql_mode = '{_SQL_MODE}', time_zone = '+00:00'")
        self._run('SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED')
        self._run(sql.my_create_tombstones())
        self._run(sql.MY_TOMBSTONES_CURRENT)
        if not self._cur.fetchone()[0]:
            _LOG.info('%s: adding written_at to %s (made by an older version)', _STEP,
                      sql.MY_TOMBSTONES)
            self._run(sql.my_upgrade_tombstones())
        _LOG.info('%s connected to %s', _STEP, redact(self._dsn))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection must not hide the original error
                pass
            self._conn = None

    def fileno(self) -> int | None:
        sock = getattr(self._conn, '_sock', None)  # PyMySQL's socket; None once closed
        return None if sock is None else sock.fileno()

    def probe(self, timeout_s: float) -> str:
        conn = self._conn
        if conn is None:
            raise ConnectionError('not connected')
        session = conn.thread_id()  # the id the server sent when it greeted us
        args = {**self._args, 'connect_timeout': timeout_s, 'read_timeout': timeout_s,
                'write_timeout': timeout_s}
        pymysql = _pymysql()
        other = pymysql.connect(autocommit=True, defer_connect=True, **args)
        try:
            other.connect(self._tcp_socket(timeout_s))
            with other.cursor() as cur:
                cur.execute(sql.MY_SESSION_ACTIVITY, (session,))
                row = cur.fetchone()
                holders = self._row_lock_holders(cur, session) if row is not None else []
        except pymysql.err.OperationalError as exc:
            if mysql_error_from_server(exc):
                raise
            # 2003: cannot connect, 2013: lost the connection: no answer.
            raise ConnectionError(self.describe(exc)) from exc
        finally:
            other.close()
        if row is None:
            raise ConnectionError(f'the server has no session {session} any more')
        command, state, seconds_in, query = row
        doing = f'{command}, {state}' if state else command
        held = f'; waits for row locks held by {"; ".join(holders)}' if holders else ''
        return f'session {session} {doing} for {seconds_in} s: {query}{held}'

    @staticmethod
    def _row_lock_holders(cur: Any, session: int) -> list[str]:
        """The sessions holding the InnoDB row locks ``session`` waits for, one line each;
        empty when it waits for none, or when the user may not see InnoDB's transactions
        (that needs the PROCESS privilege): the check must not fail for want of it."""
        try:
            cur.execute(sql.MY_ROW_LOCK_HOLDERS, (session,))
            rows = cur.fetchall()
        except _pymysql().err.MySQLError:
            return []
        # An idle session's last statement is not kept: its open transaction is what holds.
        return [f'session {holder} (user {user}) {command} for {seconds} s: {query}' if query
                else f'session {holder} (user {user}) idle in a transaction for {seconds} s'
                for holder, user, command, seconds, query in rows]

    def is_retryable(self, exc: BaseException) -> bool:
        pymysql = _pymysql()
        if isinstance(exc, OSError):
            return True
        if isinstance(exc, pymysql.err.InterfaceError):
            return True  # the connection is closed
        if not isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InternalError)):
            return False
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        return code in _RETRYABLE_CODES or 2000 <= code < 3000

    def describe(self, exc: BaseException) -> str:
        if len(exc.args) == 2 and isinstance(exc.args[0], int):
            return f'{type(exc).__name__} [{exc.args[0]}]: {exc.args[1]}'
        return f'{type(exc).__name__}: {exc}'

    def _run(self, statement: str) -> int:
        # Never with parameters: values are literals already, and a '%' in a name stays as is.
        return self._cur.execute(statement)

    def _escape(self, text: str) -> str:
        return _escape_string(text)

    def _literal(self, text: str) -> str:
        return "'" + _escape_string(text) + "'"

    def _convert(self, table: TableSchema, connector: str) -> dict[str, Callable[[Any], str]]:
        cached = self._literals.get(id(table))  # a table's events all come from one source
        if cached is None or cached[0] is not table:
            converters = {name: _null_safe(name, fn)
                          for name, fn in _converters(table, self._escape, connector).items()}
            cached = self._literals[id(table)] = (table, converters)
            if len(self._literals) > 1024:
                self._literals = {id(table): cached}
        return cached[1]

    # -- tables ---------------------------------------------------------------------------

    def columns(self, target: TargetTable) -> dict[str, TargetColumn]:
        database = self._literal(target.schema) if target.schema else 'DATABASE()'
        self._run("SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE = 'YES', COLUMN_KEY = 'PRI', "
                  f'COLUMN_COMMENT = {self._literal(DROPPED_NOTE)} '
                  f'FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {database} '
                  f'AND TABLE_NAME = {self._literal(target.table)} ORDER BY ORDINAL_POSITION')
        return {name: TargetColumn(name, type_, bool(nullable), bool(key), bool(dropped))
                for name, type_, nullable, key, dropped in self._cur.fetchall()}

    def column_type(self, column: Column, connector: str, key: bool) -> str:
        return mysql_type(column, connector, key=key)

    def create(self, target: TargetTable, schema: TableSchema, connector: str) -> None:
        definitions = [(c.name, self.column_type(c, connector, c.name in schema.key),
                        c.nullable) for c in schema.columns]
        self._run(sql.my_create_table(target, definitions, schema.key,
                                      self._literal(_SOURCE_NOTE + schema.name)))

    def claim(self, target: TargetTable, source: str) -> str | None:
        # In the table comment: a restarted sink, or another worker, must see it too.
        database = self._literal(target.schema) if target.schema else 'DATABASE()'
        self._run(sql.my_table_comment(database, self._literal(target.table)))
        row = self._cur.fetchone()
        comment = row[0] if row else ''
        if comment.startswith(_SOURCE_NOTE):
            return str(comment[len(_SOURCE_NOTE):])
        if comment:  # the table's own comment (made by someone else): left alone
            return None
        self._run(sql.my_set_comment(target, self._literal(_SOURCE_NOTE + source)))
        return source

    def unclaim(self, target: TargetTable) -> str:
        return f"ALTER TABLE {sql.my_table(target)} COMMENT=''"

    def high_water(self, target: TargetTable) -> str:
        self._run(sql.my_high_water(target, self._literal(sql.my_label(target))))
        return str(self._cur.fetchone()[0] or '')

    def alter(self, target: TargetTable, alteration: Alteration) -> None:
        modify = [(w.column, w.new, w.nullable) for w in alteration.widen + alteration.narrow]
        # A kept column is marked by its comment, which MODIFY restates with the definition
        # (and NULL: a kept column is made nullable anyway).
        marked = {c.name for c in alteration.mark}
        modify += [(c.name, c.type, True) for c in alteration.relax if c.name not in marked]
        comment = f' COMMENT {self._literal(DROPPED_NOTE)}'
        modify += [(c.name, c.type + comment, True) for c in alteration.mark]
        # A column older rows hold a value of at the source (ADD COLUMN … DEFAULT <constant>):
        # added with that DEFAULT so existing rows get it, which is then dropped.  A value
        # MariaDB cannot hold raises (ValueError, or the server's error) before any DDL: the
        # table's rows become dead letters.
        defaults = {c.name: _default_literal(c, self._escape) for c in alteration.defaults}
        add = [add_default(c, defaults[c[0]], self.dialect) if c[0] in defaults else c
               for c in alteration.add]
        # A column back after a drop goes first, with the old values the sink kept: a separate
        # statement, as ADD COLUMN IF NOT EXISTS would still see it.
        statements = sql.my_drop_columns(target, alteration.readd)
        statements += sql.my_alter_table(target, add, modify, alteration.hidden)
        statements += drop_defaults(target, list(defaults), self.dialect)
        for statement in statements:
            self._run(statement)

    # -- transactions -----------------------------------------------------------------------

    def begin(self, row_by_row: bool) -> None:
        self._run('BEGIN')

    def commit(self) -> None:
        self._run('COMMIT')
        self._run('SELECT RELEASE_ALL_LOCKS()')

    def rollback(self) -> None:
        if self._conn is None or not self._conn.open:
            return
        try:
            self._run('ROLLBACK')
            self._run('SELECT RELEASE_ALL_LOCKS()')
        except Exception:  # the connection died; the next attempt reconnects
            pass

    def savepoint(self) -> None:
        self._run('SAVEPOINT cb_row')

    def release(self) -> None:
        self._run('RELEASE SAVEPOINT cb_row')

    def rollback_to(self) -> None:
        self._run('ROLLBACK TO SAVEPOINT cb_row')

    def lock(self, targets: Sequence[TargetTable]) -> None:
        for target in targets:
            self._run(f'SELECT GET_LOCK({self._literal(sql.my_lock_name(target))}, '
                      f'{_LOCK_TIMEOUT_S})')
            if self._cur.fetchone()[0] != 1:
                raise _pymysql().err.OperationalError(
                    1205, f'timed out waiting for the changebeam lock of {target}')

    # -- writes -----------------------------------------------------------------------------

    def tombstones(self, target: TargetTable, changes: Sequence[RowChange]) -> dict[str, str]:
        label = self._literal(sql.my_label(target))
        self._run(sql.my_tombstone_marks(label))
        marks = dict(self._cur.fetchall())
        if keys_to_look_up(marks, changes):
            keys = [f"'{h}'" for h in hashed(changes)]  # hex digests: nothing to escape
            self._run(sql.my_read_tombstones(label, keys))
            marks = dict(self._cur.fetchall())
        return marks

    def truncate(self, target: TargetTable, pos: str) -> None:
        position = f"'{pos}'"  # a hex sort key
        label = self._literal(sql.my_label(target))
        self._run(sql.my_delete_older(target, position))
        self._run(sql.my_truncate_tombstones(label, position))
        self._run(sql.my_record_tombstones([f"({label}, '{sql.TRUNCATED}', {position})"]))

    def delete(self, tb: TableBatch, changes: Sequence[RowChange]) -> None:
        convert = self._convert(tb.table, tb.connector)
        key = tb.table.key
        label = self._literal(sql.my_label(tb.target))
        integer_key = len(key) == 1 and tb.table.by_name[key[0]].kind in _INTEGERS
        for start in range(0, len(changes), _DELETES_PER_STATEMENT):
            chunk = changes[start:start + _DELETES_PER_STATEMENT]
            rows = [([convert[k](v) for k, v in zip(key, c.values, strict=True)], f"'{c.pos}'")
                    for c in chunk]
            self._run(sql.my_delete(tb.target, key, rows, integer_key))
            self._run(sql.my_record_tombstones(
                [f"({label}, '{c.key_hash}', '{c.pos}')" for c in chunk]))
        if changes:
            newest = f"'{max(c.pos for c in changes)}'"
            if not self._run(sql.my_raise_newest(label, newest)):
                self._run(sql.my_mark_newest(label, newest))

    def read_row(self, tb: TableBatch, table: TableSchema, key: Sequence[Any],
                 names: Sequence[str]) -> Sequence[Any] | None:
        self._run(f'SELECT {", ".join(sql.my_ident(n) for n in names)} '
                  f'FROM {sql.my_table(tb.target)} WHERE '
                  + self._key_match(table, tb.connector, key))
        row = self._cur.fetchone()
        return None if row is None else tuple(row)

    def set_carried(self, tb: TableBatch, changes: Sequence[RowChange],
                    values: dict[int, dict[str, Any]]) -> None:
        literal = self._conn.literal  # the values as the driver read them, written back as is
        for change in changes:
            assert change.row is not None
            assignments = ', '.join(f'{sql.my_ident(n)} = {literal(v)}'
                                    for n, v in values[id(change)].items())
            new = tuple(change.row[k] for k in change.table.key)
            self._run(f'UPDATE {sql.my_table(tb.target)} SET {assignments} WHERE '
                      + self._key_match(change.table, tb.connector, new)
                      + f' AND {sql.my_ident(sql.POS)} = {self._literal(change.pos)}')

    def _key_match(self, table: TableSchema, connector: str, values: Sequence[Any]) -> str:
        convert = self._convert(table, connector)
        return ' AND '.join(f'{sql.my_ident(k)} = {convert[k](v)}'
                            for k, v in zip(table.key, values, strict=True))

    def render_upserts(self, tb: TableBatch, upserts: list[RowChange]
                       ) -> list[tuple[list[str], tuple[str, ...], list[str]]]:
        return self._rows(tb, upserts, with_id=False)  # the rows as escaped literals

    def upsert(self, tb: TableBatch, changes: Sequence[RowChange]) -> int:
        rendered = tb.prepared
        groups = rendered.groups if rendered is not None and rendered.matches(tb, changes) \
            else self._rows(tb, changes, with_id=False)
        for columns, nulled, rows in groups:
            self._run(sql.my_upsert(tb.target, columns, tb.table.key, rows, nulled))
        return 0  # MariaDB's affected-row count cannot tell a stale row from an unchanged one

    def append(self, tb: TableBatch, changes: Sequence[RowChange]) -> None:
        for columns, _, rows in self._rows(tb, changes, with_id=True):
            self._run(sql.my_append(tb.target, columns, rows))

    def _rows(self, tb: TableBatch, changes: Sequence[RowChange],
              with_id: bool) -> list[tuple[list[str], tuple[str, ...], list[str]]]:
        """Changes grouped by the columns they write (and the kept columns they set NULL), as
        escaped row tuples, in chunks (one statement each; from C, a chunk's rows come joined
        as one text)."""
        out: list[tuple[list[str], tuple[str, ...], list[str]]] = []
        for columns, nulled, group in tb.by_columns(changes):
            table = group[0].table
            # Rows older than a column a newer schema of the batch added with a default: the
            # source's rows hold the default, not NULL.
            fill = filled(tb.schemas, table, nulled) if len(tb.schemas) > 1 and nulled else {}
            nulled = tuple(n for n in nulled if n not in fill)
            names = [*columns, *fill, sql.POS] + ([sql.ROW_ID] if with_id else [])
            defaults = [_default_literal(column, self._escape) for column in fill.values()]
            codes = _literal_codes(table, columns, tb.connector) if len(group) > 1 else None
            if codes is not None:
                # In C (~10x cheaper), when every value has the type its column's code takes.
                prefix = ''.join(literal + ', ' for literal in defaults)
                tails = [f"{prefix}'{c.pos}', '{c.key_hash}'" for c in group] if with_id \
                    else [f"{prefix}'{c.pos}'" for c in group]
                values = [c.row.values() for c in group]  # type: ignore[union-attr]
                chunks = _copytext.rows_sql(codes, values, tails, _STATEMENT_BYTES)
                if chunks is not None:
                    out.extend((names, nulled, [chunk]) for chunk in chunks)
                    continue
            converters = self._convert(table, tb.connector)
            by_column = [
                _column_literals(table.by_name[name], values, converters[name], tb.connector)
                for name, values in zip(columns, zip(*(c.row.values() for c in group),  # type: ignore[union-attr]
                                                     strict=True), strict=True)]
            for literal in defaults:
                by_column.append([literal] * len(group))
            by_column.append([f"'{c.pos}'" for c in group])
            if with_id:
                by_column.append([f"'{c.key_hash}'" for c in group])
            rows = ['(' + text + ')' for text in map(', '.join, zip(*by_column, strict=True))]
            start = 0
            limit = _STATEMENT_BYTES
            for end, size in enumerate(accumulate(map(len, rows)), start=1):
                if size >= limit:
                    out.append((names, nulled, rows[start:end]))
                    start, limit = end, size + _STATEMENT_BYTES
            if start < len(rows):
                out.append((names, nulled, rows[start:]))
        return out

    def drop_tombstones(self, target: TargetTable, hashes: Sequence[str]) -> None:
        label = self._literal(sql.my_label(target))
        self._run(sql.my_drop_tombstones(label, [f"'{h}'" for h in hashes]))

    def prune_tombstones(self, older_than_s: float, limit: int) -> int:
        return int(self._run(sql.my_prune_tombstones(older_than_s, limit)))  # autocommitted


class WriteChangesToMySQL(WriteChanges):
    """Applies :class:`~transforms.envelope.ChangeEvent` s to MariaDB/MySQL; returns dead letters.

    Options as :class:`~transforms.sinks.sql.apply.WriteChanges`.
    """

    def __init__(self, dsn: str, *, route: Route = None, max_batch_size: int = 5000,
                 max_attempts: int = 6, backoff_s: float = 0.5,
                 tombstone_retention: dt.timedelta | None = DEFAULT_TOMBSTONE_RETENTION,
                 stall_check_s: float | None = DEFAULT_STALL_CHECK_S,
                 reconnect_secs: float | None = None) -> None:
        super().__init__(route=route, max_batch_size=max_batch_size,
                         max_attempts=max_attempts, backoff_s=backoff_s,
                         tombstone_retention=tombstone_retention, stall_check_s=stall_check_s,
                         reconnect_secs=reconnect_secs)
        _connect_args(dsn)
        self._dsn = dsn

    def _target(self) -> Target:
        return _MySQLTarget(self._dsn, self._route)
