"""A binlog dump connection to MariaDB/MySQL over PyMySQL, decoded with ``binlog.py``.

The connection registers as a replica and asks for the binlog from a position (file + offset,
or a GTID state); the server then pushes events until the connection closes::

    conn = pymysql.connect(host=…, user='cdc', password=…, autocommit=True)
    stream = BinlogStream(conn, server_id=4242)          # checks the server's CDC settings
    stream.start(BinlogPosition(gtid='0-1-120'))         # or file/pos; None = from now on
    while True:
        item = stream.read(timeout=0.5)                  # None when nothing came in time
        if item is None: continue
        handle(item.event)                               # Rows, Gtid, Xid, Query, …
        if item.checkpoint: save(item.checkpoint)        # a transaction ended here

``read`` blocks on the socket for at most ``timeout``; the server sends a heartbeat when idle
(``heartbeat`` seconds), so a silent connection is detected rather than waited on forever.
Nothing reconnects behind the caller's back: a lost connection raises, and the caller resumes
from the last checkpoint it stored (after a sink committed), so no transaction is skipped and
none is replayed from an older position.

The dump stream is read straight from the socket in large chunks (PyMySQL's per-packet objects
cost more than decoding small events); PyMySQL does the handshake, authentication, TLS and the
setup queries.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from transforms.sources.mysql import binlog
from transforms.sources.mysql.binlog import BinlogDecodeError, BinlogDecoder
from transforms.sources.mysql.gtid import MariaGtidState, MySqlGtidSet

__all__ = [
    'BinlogConfigError',
    'BinlogConnectionLost',
    'BinlogPosition',
    'BinlogPurgedError',
    'BinlogStream',
    'BinlogStreamError',
    'ServerInfo',
    'StreamItem',
    'check_server',
]

_LOG = logging.getLogger(__name__)

_COM_BINLOG_DUMP = 0x12
_COM_REGISTER_SLAVE = 0x15
_COM_BINLOG_DUMP_GTID = 0x1e
_BINLOG_DUMP_NON_BLOCK = 0x01
_BINLOG_THROUGH_GTID = 0x04  # COM_BINLOG_DUMP_GTID: the GTID set is given
_MARIA_SLAVE_CAPABILITY_GTID = 4  # the replica understands GTID events
_ER_MASTER_FATAL_ERROR_READING_BINLOG = 1236
_MAX_PACKET = 0xffffff
_RECV_SIZE = 1 << 18
_U32 = struct.Struct('<I')


class BinlogStreamError(RuntimeError):
    """The server refused or broke the binlog dump; the message says why."""


class BinlogConfigError(BinlogStreamError):
    """The server (or the user's privileges) is not set up for CDC; the message says what to
    set."""


class BinlogPurgedError(BinlogStreamError):
    """The requested position is no longer in the server's binlogs."""


class BinlogConnectionLost(BinlogStreamError):
    """The connection closed or went silent; resume from the last stored checkpoint."""


@dataclasses.dataclass(frozen=True)
class BinlogPosition:
    """Where to (re)start reading: after the transactions in ``gtid``, or at ``file``/``pos``.

    ``gtid`` is MariaDB's per-domain state (``0-1-120``) or MySQL's executed GTID set; when
    given, the server finds the file and offset itself, which survives a failover to another
    server of the same replication topology.  ``file``/``pos`` is an event boundary in one
    server's binlog.  A checkpoint from :class:`BinlogStream` carries both.
    """

    file: str | None = None
    pos: int = 4
    gtid: str | None = None

    def __post_init__(self) -> None:
        if self.file is None and not self.gtid:
            raise ValueError('BinlogPosition needs a file (and pos) or a gtid')
        if self.pos < 4:
            raise ValueError(f'binlog pos {self.pos} < 4: positions start after the magic')


class StreamItem(NamedTuple):
    """One decoded event and where it sits.

    ``event`` is a ``binlog`` event tuple, or the :class:`BinlogDecodeError` of an event that
    could not be decoded (with its raw bytes, for a dead-letter record).  ``pos`` is where
    the event starts in ``file``.  ``gtid`` is the GTID of the transaction the event belongs
    to.  ``checkpoint`` is set on the event that ends a transaction (XID, COMMIT, a DDL
    statement): resuming there delivers the next transaction exactly once.
    """

    event: Any
    file: str
    pos: int
    gtid: str | None
    checkpoint: BinlogPosition | None


class ServerInfo(NamedTuple):
    """What :func:`check_server` found."""

    version: str
    mariadb: bool
    server_id: int
    checksum: bool


def _query(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def _one(conn: Any, sql: str, args: Any = None) -> Any:
    rows = _query(conn, sql, args)
    return rows[0][0] if rows else None


_SETTINGS = ('version', 'server_id', 'log_bin', 'binlog_format', 'binlog_row_image',
             'binlog_row_metadata', 'binlog_checksum')


def check_server(conn: Any) -> ServerInfo:
    """Checks the server writes a binlog CDC can use and the user may read it.

    Raises :class:`BinlogConfigError` with one line naming the setting and the fix.
    """
    placeholders = ', '.join(['%s'] * len(_SETTINGS))
    settings = {str(name).lower(): str(value) for name, value in _query(
        conn, f'SHOW GLOBAL VARIABLES WHERE Variable_name IN ({placeholders})', _SETTINGS)}
    version = settings.get('version', '')
    mariadb = 'mariadb' in version.lower()
    wanted = [
        ('log_bin', 'ON', 'start the server with --log-bin (binary logging is off)'),
        ('binlog_format', 'ROW', 'SET GLOBAL binlog_format=ROW and set binlog_format=ROW in '
                                 'the server config'),
        ('binlog_row_image', 'FULL', 'SET GLOBAL binlog_row_image=FULL and in the server '
                                     'config (before images must hold every column)'),
        ('binlog_row_metadata', 'FULL', 'SET GLOBAL binlog_row_metadata=FULL and in the server'
                                        ' config (column names, signedness and charsets)'),
    ]
    for name, value, fix in wanted:
        actual = settings.get(name)
        if actual is None and name == 'binlog_row_metadata':
            raise BinlogConfigError(
                f'server {version} has no binlog_row_metadata: changebeam needs MariaDB 10.5+ '
                'or MySQL 8.0.1+ (column names are not in older binlogs)')
        if (actual or '').upper() != value:
            raise BinlogConfigError(f'{name} is {actual}, needs {value}: {fix}')
    checksum = settings.get('binlog_checksum', 'NONE').upper()
    if checksum not in ('NONE', 'CRC32'):
        raise BinlogConfigError(f'binlog_checksum is {checksum}; expected CRC32 or NONE')
    _check_privileges(conn, mariadb)
    return ServerInfo(version, mariadb, int(settings.get('server_id', 0)), checksum == 'CRC32')


def _check_privileges(conn: Any, mariadb: bool) -> None:
    grants = ' '.join(str(row[0]) for row in _query(conn, 'SHOW GRANTS'))
    upper = grants.upper()
    if 'ON *.*' in upper and ('ALL PRIVILEGES ON *.*' in upper or 'REPLICATION SLAVE' in upper
                              or 'REPLICATION REPLICA' in upper):
        return
    user = _one(conn, 'SELECT CURRENT_USER()')
    if 'GRANT `' in grants or "GRANT '" in grants:
        # Granted through a role perhaps: the dump request itself will tell.
        _LOG.warning('could not see REPLICATION SLAVE among the direct grants of %s', user)
        return
    monitor = 'BINLOG MONITOR' if mariadb else 'REPLICATION CLIENT'
    raise BinlogConfigError(
        f'{user} lacks the REPLICATION SLAVE privilege: GRANT REPLICATION SLAVE, {monitor}, '
        f'SELECT ON *.* TO {user}')


class BinlogStream:
    """A binlog dump on an open PyMySQL connection (which it takes over and closes).

    ``server_id`` must differ from the server's and from every other replica's (the server
    drops an older connection with the same id).  ``include(db, table)`` limits decoding to
    the tables CDC captures; rows of others are skipped undecoded.
    """

    def __init__(self, conn: Any, *, server_id: int, heartbeat: float = 1.0,
                 include: Callable[[str, str], bool] | None = None) -> None:
        if not 0 < server_id < 2 ** 32:
            raise ValueError(f'server_id {server_id} must be in 1..4294967295')
        if heartbeat <= 0:
            raise ValueError(f'heartbeat {heartbeat} must be > 0 seconds')
        self._conn = conn
        self.server_id = server_id
        self.heartbeat = heartbeat
        self.info = check_server(conn)
        if self.info.server_id == server_id:
            raise ValueError(f'server_id {server_id} is the source server\'s own id; '
                             'pick another')
        self.decoder = BinlogDecoder(checksum=self.info.checksum, include=include)
        self._sock: socket.socket | None = None
        self._pending = bytearray()
        self._data = b''
        self._off = 0
        self._limit = 0
        self._last_data = 0.0
        self.at_end = False
        self._until_end = False
        # position state
        self.file = ''
        self._gtid: str | None = None
        self._gtid_event: Any = None
        self._in_transaction = False
        self._maria_state = MariaGtidState()
        self._mysql_set = MySqlGtidSet()
        self._requested: BinlogPosition | None = None
        self.checkpoint: BinlogPosition | None = None

    # -- setup ----------------------------------------------------------------------------

    def current_position(self) -> BinlogPosition:
        """The server's binlog end: where a stream started now would begin."""
        rows = _query(self._conn, 'SHOW MASTER STATUS') if self.info.mariadb \
            else self._mysql_status()
        if not rows:
            raise BinlogConfigError('SHOW MASTER STATUS returned nothing: is log_bin on?')
        file, pos = str(rows[0][0]), int(rows[0][1])
        if self.info.mariadb:
            gtid = _one(self._conn, 'SELECT BINLOG_GTID_POS(%s, %s)', (file, pos))
        else:
            gtid = _one(self._conn, 'SELECT @@GLOBAL.gtid_executed')
        return BinlogPosition(file, pos, str(gtid) if gtid else None)

    def _mysql_status(self) -> list[tuple[Any, ...]]:
        try:
            return _query(self._conn, 'SHOW BINARY LOG STATUS')  # MySQL 8.2+
        except Exception:  # older MySQL: the statement's old name
            return _query(self._conn, 'SHOW MASTER STATUS')

    def start(self, position: BinlogPosition | None = None, *, until_end: bool = False) -> None:
        """Sends the dump request.  ``position`` None starts at the current end.

        With ``until_end`` the server stops at the end of its binlog (``read`` then returns
        None and ``at_end`` becomes True) instead of waiting for new events.
        """
        if self._sock is not None:
            raise BinlogStreamError('start() was already called on this stream')
        if position is None:
            position = self.current_position()
        self._requested = position
        conn = self._conn
        # A GTID position survives a failover (the server finds the file and offset itself),
        # so it wins over file/pos when a checkpoint has both.
        use_gtid = bool(position.gtid)
        with conn.cursor() as cur:
            cur.execute('SET @master_binlog_checksum = @@global.binlog_checksum')
            cur.execute('SET @source_binlog_checksum = @@global.binlog_checksum')
            period = int(self.heartbeat * 1e9)  # nanoseconds
            cur.execute('SET @master_heartbeat_period = %s', (period,))
            cur.execute('SET @source_heartbeat_period = %s', (period,))  # MySQL 8.0.26+
            if self.info.mariadb:
                cur.execute('SET @mariadb_slave_capability = %s', (_MARIA_SLAVE_CAPABILITY_GTID,))
                if use_gtid:
                    cur.execute('SET @slave_connect_state = %s', (position.gtid,))
                    # A requested GTID missing from the binlog is an error, not a silent skip.
                    cur.execute('SET @slave_gtid_strict_mode = 1')
                    cur.execute('SET @slave_gtid_ignore_duplicates = 0')
        if self.info.mariadb:
            if position.gtid:
                self._maria_state = MariaGtidState.parse(position.gtid)
            elif position.file:
                found = _one(conn, 'SELECT BINLOG_GTID_POS(%s, %s)', (position.file,
                                                                     position.pos))
                self._maria_state = MariaGtidState.parse(str(found or ''))
        elif position.gtid:
            self._mysql_set = MySqlGtidSet.parse(position.gtid)
        self._register()
        flags = _BINLOG_DUMP_NON_BLOCK if until_end else 0
        self._until_end = until_end
        if use_gtid and not self.info.mariadb:
            gtids = self._mysql_set.encode()
            payload = (bytes([_COM_BINLOG_DUMP_GTID])
                       + struct.pack('<HII', flags | _BINLOG_THROUGH_GTID, self.server_id, 0)
                       + struct.pack('<QI', 4, len(gtids)) + gtids)
        else:
            name = b'' if use_gtid else (position.file or '').encode()
            payload = (bytes([_COM_BINLOG_DUMP])
                       + struct.pack('<IHI', 4 if use_gtid else position.pos, flags,
                                     self.server_id) + name)
            self.file = '' if use_gtid else (position.file or '')
        self._send(payload)
        self._sock = conn._sock
        self._last_data = time.monotonic()
        _LOG.info('binlog dump from %s (server %s, replica id %s)', position, self.info.version,
                  self.server_id)

    def _send(self, payload: bytes) -> None:
        # PyMySQL writes the packet header (length + sequence id) itself; every command
        # starts a new sequence.
        self._conn._next_seq_id = 0
        self._conn.write_packet(payload)

    def _register(self) -> None:
        host = b'changebeam'
        payload = (bytes([_COM_REGISTER_SLAVE]) + _U32.pack(self.server_id)
                   + bytes([len(host)]) + host + b'\0' + b'\0'
                   + struct.pack('<HII', 0, 0, 0))
        self._send(payload)
        self._conn._read_packet()  # OK, or raises the server's error

    # -- reading --------------------------------------------------------------------------

    def read(self, timeout: float) -> StreamItem | None:
        """The next event, waiting at most ``timeout`` seconds; None if none came in time
        (or, with ``until_end``, once the end is reached).  Raises BinlogStreamError."""
        if self._sock is None:
            raise BinlogStreamError('call start() before read()')
        deadline = time.monotonic() + timeout
        event_item = self._event
        while True:
            # The common case inline (one call per event matters at 4 events per small
            # transaction): a whole event in one packet, its payload after a 0x00 byte.
            data, limit = self._data, self._limit
            while self._off < limit:
                off = self._off
                length = data[off] | data[off + 1] << 8 | data[off + 2] << 16
                if length == _MAX_PACKET or data[off + 4]:
                    item = self._other_packet()
                else:
                    self._off = off + 4 + length
                    item = event_item(data, off + 5, off + 4 + length)
                if item is not None:
                    return item
            if self.at_end or not self._receive(deadline):
                return None

    def _receive(self, deadline: float) -> bool:
        """Reads from the socket until a whole packet is buffered; False on timeout."""
        assert self._sock is not None
        pending = self._pending
        while True:
            now = time.monotonic()
            remaining = deadline - now
            silent = now - self._last_data
            if silent > max(3 * self.heartbeat, 5.0) + 5.0:
                raise BinlogConnectionLost(
                    f'no data (not even a heartbeat) for {silent:.0f} s; resume from the last '
                    'checkpoint')
            if remaining <= 0:
                return False
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(_RECV_SIZE)
            except (TimeoutError, BlockingIOError):
                return False
            except OSError as exc:
                raise BinlogConnectionLost(f'binlog connection failed: {exc}') from exc
            if not chunk:
                raise BinlogConnectionLost('the server closed the binlog connection; resume '
                                           'from the last checkpoint')
            self._last_data = time.monotonic()
            pending += chunk
            limit = _complete_packets(pending)
            if limit:
                self._data = bytes(pending[:limit])
                del pending[:limit]
                self._off, self._limit = 0, limit
                return True

    def _other_packet(self) -> StreamItem | None:
        """An event spanning several packets, the end of the binlog, or an error."""
        data, off = self._data, self._off
        length = data[off] | data[off + 1] << 8 | data[off + 2] << 16
        start, end = off + 4, off + 4 + length
        if length == _MAX_PACKET:  # an event of 16 MB or more spans several packets
            parts = [data[start:end]]
            while length == _MAX_PACKET:
                length = data[end] | data[end + 1] << 8 | data[end + 2] << 16
                parts.append(data[end + 4:end + 4 + length])
                end += 4 + length
            self._off = end
            data, start, end = b''.join(parts), 0, sum(map(len, parts))
        else:
            self._off = end
        marker = data[start]
        if marker == 0x00:
            return self._event(data, start + 1, end)
        if marker == 0xfe and length < 9:
            if not self._until_end:
                # A blocking dump has no end: the server ends it only when it shuts down.
                raise BinlogConnectionLost('the server ended the binlog dump (shutting down?); '
                                           'resume from the last checkpoint')
            self.at_end = True
            return None
        if marker == 0xff:
            self._raise_server_error(data[start + 1:end])
        raise BinlogStreamError(f'unexpected packet 0x{marker:02x} in the binlog stream')

    def _raise_server_error(self, body: bytes) -> None:
        code = int.from_bytes(body[:2], 'little')
        message = body[2:].decode('utf-8', 'replace')
        if message.startswith('#'):
            message = message[6:]  # '#' + SQLSTATE
        if code == _ER_MASTER_FATAL_ERROR_READING_BINLOG and any(
                hint in message.lower() for hint in ('purged', 'could not find first log',
                                                     'could not find gtid state',
                                                     "not in the master's binlog")):
            raise BinlogPurgedError(
                f'the requested position {self._requested} is no longer in the server\'s '
                f'binlogs ({message}); re-snapshot the tables and stream from the new '
                'snapshot\'s position')
        raise BinlogStreamError(f'binlog dump failed: error {code}: {message}')

    def _event(self, data: bytes, start: int, end: int) -> StreamItem | None:
        next_pos = _U32.unpack_from(data, start + 13)[0]
        pos = next_pos - (end - start) if next_pos else 0
        file = self.file
        try:
            event = self.decoder.decode(data, start, end)
        except BinlogDecodeError as exc:
            _LOG.warning('%s:%s: %s', file, pos, exc)
            return StreamItem(exc, file, pos, self._gtid, None)
        if event is None:
            return None
        kind = type(event)
        checkpoint = None
        if kind is binlog.Rows:
            pass
        elif kind is binlog.Xid:
            checkpoint = self._commit(next_pos)
        elif kind is binlog.Gtid:
            self._gtid = event.gtid
            self._gtid_event = event
            # MariaDB's GTID event opens the transaction (no BEGIN follows) unless standalone.
            self._in_transaction = self.info.mariadb and not event.standalone
        elif kind is binlog.Query:
            sql = event.sql
            if sql == 'BEGIN':
                self._in_transaction = True
            elif sql in ('COMMIT', 'ROLLBACK') or not self._in_transaction:
                checkpoint = self._commit(next_pos)  # COMMIT of MyISAM/Aria, or DDL
        elif kind is binlog.Rotate:
            self.file = event.next_file
            if not event.artificial:
                _LOG.debug('binlog rotates to %s', event.next_file)
            return StreamItem(event, self.file, event.next_pos, self._gtid, None)
        elif kind is binlog.Heartbeat:
            return StreamItem(event, file, event.pos or 0, self._gtid, None)
        elif kind is binlog.Other:
            return None
        return StreamItem(event, file, pos, self._gtid, checkpoint)

    def _commit(self, next_pos: int) -> BinlogPosition:
        gtid = self._gtid
        self._in_transaction = False
        if gtid is not None:
            if self.info.mariadb:
                ev = self._gtid_event
                self._maria_state.advance(ev.domain_id, ev.server_id, ev.seq_no, gtid)
            else:
                self._mysql_set.add(gtid)
        state = self._maria_state if self.info.mariadb else self._mysql_set
        self.checkpoint = BinlogPosition(self.file, next_pos, str(state) if state else None)
        return self.checkpoint

    def close(self) -> None:
        """Closes the connection (the server ends the dump)."""
        sock, self._sock = self._sock, None
        try:
            if sock is not None:
                sock.close()
            self._conn._force_close()  # no COM_QUIT: the server is mid-stream
        except Exception:  # closing a broken connection must not mask the original error
            _LOG.debug('closing the binlog connection failed', exc_info=True)

    def __enter__(self) -> BinlogStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _complete_packets(buf: bytearray) -> int:
    """Bytes at the start of ``buf`` that form whole packets (a multi-packet chain counts only
    when its last packet is in)."""
    off, limit, size = 0, 0, len(buf)
    while off + 4 <= size:
        length = buf[off] | buf[off + 1] << 8 | buf[off + 2] << 16
        if off + 4 + length > size:
            break
        off += 4 + length
        if length != _MAX_PACKET:
            limit = off
    return limit
