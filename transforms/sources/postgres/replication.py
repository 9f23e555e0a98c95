"""A logical replication connection to PostgreSQL, over psycopg 3's libpq wrapper.

psycopg 3 has no replication API, but its low-level ``psycopg.pq.PGconn`` speaks COPY_BOTH, which
is all the streaming protocol needs::

    stream = ReplicationStream.connect('postgresql://cdc@db/shop')
    stream.start('changebeam_shop', start_lsn=0, publication='changebeam_shop')
    while (frame := stream.read(timeout=0.5)) is not None:
        handle(frame.payload)            # a pgoutput message
        ...
    stream.confirm(commit_end_lsn)       # only after the sink committed it

The stream answers keepalives itself and reports ``confirm``-ed positions to the server (standby
status update), so the slot releases WAL only for changes that are safe downstream.

``read_batch`` returns every frame libpq already holds in one call (the C loop of ``_pqcopy``
over the very libpq psycopg loaded, Begin and Commit decoded), which is what the source reads
with: per frame, a Python call costs about what the walsender spends on a small transaction's
change.  Where the extension was not built or that libpq cannot be identified for certain, it
reads frame by frame through psycopg, with the same result.
"""
from __future__ import annotations

import dataclasses
import logging
import select
import struct
import threading
import time
from typing import Any, NamedTuple, NoReturn

__all__ = ['SESSION_OPTIONS', 'ConnectionLost', 'ReplicationError', 'ReplicationStream',
           'SlotCreated', 'XLogData', 'format_lsn', 'parse_lsn']

_LOG = logging.getLogger(__name__)

_EPOCH_OFFSET_US = 946_684_800_000_000  # PostgreSQL timestamps count from 2000-01-01
_XLOG_HEADER = struct.Struct('!QQq')
_KEEPALIVE = struct.Struct('!Qq?')
_STATUS = struct.Struct('!cQQQq?')
_STATUS_INTERVAL_S = 5.0  # well under the default wal_sender_timeout of 60 s
_STATUS_EVERY = 256  # frames of a burst between checks whether a status update is due
_SILENCE_S = 20.0  # no answer to a status update that asked for one: the connection is dead
# In place of a frame's data_start in read_batch: a pgoutput Begin / Commit decoded by _pqcopy.
FRAME_BEGIN = -1
FRAME_COMMIT = -2
_BATCH_FRAMES = 4096  # frames read_batch takes at most in one call
_COMMAND_POLL_S = 0.5  # how often a waiting command looks whether to give up

SESSION_OPTIONS = ('-c DateStyle=ISO -c IntervalStyle=postgres -c bytea_output=hex '
                   '-c TimeZone=UTC -c extra_float_digits=3 -c client_encoding=UTF8')
"""Output formats the type parsers read, whatever the server's or the role's defaults are:
the walsender and COPY print values with the session's settings.  UTF-8 text also from a
database in another encoding (pgoutput converts text to the client encoding; a LATIN1
database's text would not decode).  But not from a SQL_ASCII database, which stores any
bytes: there the server refuses to send a value that is not UTF-8 as UTF-8, and the slot
could never move past that change, so the replication connection takes the bytes as they
are (``ReplicationStream.connect``) and a change whose text does not decode is a dead
letter; the snapshot does the same for its rows (``snapshot.read_snapshot``)."""


class ReplicationError(RuntimeError):
    """The server refused or broke the replication conversation; the message says why.

    ``sqlstate`` is the server's error code when it sent one."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @property
    def transient(self) -> bool:
        """Worth retrying: the connection broke, the server is shutting down or starting up,
        has no connection slot free, or the slot is still held by the walsender of a
        connection that broke (it lets go within ``wal_sender_timeout``)."""
        state = self.sqlstate or ''
        return state[:2] in ('08', '53') or state in ('57P01', '57P02', '57P03', '55006')


class Interrupted(ReplicationError):
    """A command given up (cancelled on the server) because the caller asked to stop."""


class ConnectionLost(ReplicationError):
    """The replication connection broke (server restart, network, a terminated walsender)."""

    @property
    def transient(self) -> bool:
        return True


def _result_error(pgconn: Any, result: Any, prefix: str = '') -> ReplicationError:
    """The server's error for a failed command, with its SQLSTATE; ConnectionLost when the
    connection itself is gone."""
    from psycopg import pq

    message = (result.error_message if result is not None else b'') or pgconn.error_message
    state = result.error_field(pq.DiagnosticField.SQLSTATE) if result is not None else None
    cls = ConnectionLost if pgconn.status != pq.ConnStatus.OK else ReplicationError
    return cls(prefix + (message.decode(errors='replace').strip() or 'by the server'),
               state.decode() if state else None)


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> 0x16B374D848."""
    high, _, low = text.partition('/')
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f'{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}'


def psycopg_errors() -> Any:
    """The psycopg module, for its exception classes (imported when an error is handled, like
    the rest of psycopg here)."""
    import psycopg

    return psycopg


def now_pg_us() -> int:
    return int(time.time() * 1_000_000) - _EPOCH_OFFSET_US


class XLogData(NamedTuple):
    """One WAL data frame: ``payload`` is a pgoutput message starting at ``data_start``.

    A named tuple, not a dataclass: one is built per change, and a tuple costs a quarter."""

    data_start: int
    wal_end: int
    send_time_us: int  # microseconds since the Unix epoch
    payload: memoryview


_pqcopy: Any
try:
    from transforms.sources.postgres import _pqcopy
except ImportError:  # not built (no compiler): read_batch reads frame by frame
    _pqcopy = None

_LIBPQ: list[Any] = []  # psycopg's libpq bound by _pqcopy (or None), once per process


def _bound_libpq(pgconn: Any) -> Any:
    """``_pqcopy`` bound to the libpq psycopg uses for ``pgconn``, or None where that cannot
    be done with certainty (not built, not Linux, no single libpq that owns the connection)."""
    if _pqcopy is None:
        return None
    if not _LIBPQ:
        _LIBPQ.append(_bind_libpq())
    libpq = _LIBPQ[0]
    try:
        owns = libpq is not None and _pqcopy.identify(libpq, pgconn.pgconn_ptr) == (
            pgconn.backend_pid, pgconn.socket)
    except Exception:  # psycopg without pgconn_ptr, or a closed connection
        owns = False
    return libpq if owns else None


def _bind_libpq() -> Any:
    from psycopg import pq

    try:
        with open('/proc/self/maps', encoding='utf-8', errors='replace') as maps:
            loaded = {line.split(None, 5)[5].strip() for line in maps
                      if line.count(' ') >= 5 and '/libpq' in line}
    except OSError:
        return None
    if pq.__impl__ == 'binary':  # its own copy, next to the package
        loaded = {path for path in loaded if 'psycopg_binary' in path}
    if len(loaded) != 1:  # which one psycopg uses is not certain
        _LOG.debug('libpq for _pqcopy: %d candidates; reading frame by frame', len(loaded))
        return None
    try:
        return _pqcopy.bind(loaded.pop())
    except OSError as exc:
        _LOG.debug('libpq for _pqcopy: %s; reading frame by frame', exc)
        return None


# The named tuple's own constructor is a Python function: built from a tuple, half the cost.
_new_xlog_data = tuple.__new__


@dataclasses.dataclass(frozen=True)
class SlotCreated:
    """A new slot: changes committed after ``consistent_point`` stream; earlier ones are in the
    exported ``snapshot`` (valid only until this connection's next command)."""

    name: str
    consistent_point: int
    snapshot: str | None


class ReplicationStream:
    """A replication-mode connection: slot commands, then one COPY_BOTH stream."""

    def __init__(self, pgconn: Any) -> None:
        self._pgconn = pgconn
        self._streaming = False
        self._received = 0  # highest WAL position seen
        self._confirmed = 0  # highest position the caller confirmed
        self._reported = -1
        self._last_status = 0.0
        self._frames = 0
        self._frames_when_dry = 0  # _frames when the socket last ran dry
        self._asked_at: float | None = None  # an unanswered status update asked for a reply
        self._lock = threading.Lock()
        self._reader: Any = None  # _pqcopy's libpq, once streaming (None: frame by frame)
        self._pgconn_ptr = 0
        self.send_time_us = 0  # of the last frame read_batch returned (Unix epoch)
        self.payload_bytes = 0  # of the pgoutput messages read so far
        self._unread: list[tuple[int, Any]] = []
        self._failed = 0  # read_batch's state to raise at the next call (it had frames first)

    @classmethod
    def connect(cls, dsn: str, application_name: str = 'changebeam') -> ReplicationStream:
        from psycopg import pq

        from transforms.dsn import pg_conninfo

        info = pg_conninfo(dsn, replication='database', application_name=application_name,
                           options=SESSION_OPTIONS)
        pgconn = pq.PGconn.connect(info.encode())
        if pgconn.status != pq.ConnStatus.OK:
            message = pgconn.error_message.decode(errors='replace').strip()
            pgconn.finish()
            # libpq reports no SQLSTATE for a connection it could not make: 08001.
            raise ReplicationError(f'cannot open a replication connection: {message}', '08001')
        stream = cls(pgconn)
        if pgconn.parameter_status(b'server_encoding') == b'SQL_ASCII':
            try:  # the bytes as they are (see SESSION_OPTIONS)
                stream._command("SET client_encoding = 'SQL_ASCII'")
            except BaseException:
                pgconn.finish()
                raise
        return stream

    def fileno(self) -> int | None:
        """The connection's socket (None once closed)."""
        try:
            return int(self._pgconn.socket)
        except Exception:  # psycopg: OperationalError once the connection is gone
            return None

    # -- commands ------------------------------------------------------------------------------

    def _command(self, sql: str,
                 until: threading.Event | None = None) -> list[tuple[str | None, ...]]:
        """Run a replication command; once ``until`` is set, cancel it (:class:`Interrupted`
        unless it completed meanwhile).

        The wait is on the socket here, not inside libpq (``exec_``): Python runs a signal's
        handler only between bytecodes, so while a command waits long (a slot waiting for
        transactions to end) Ctrl-C, even a second one, would do nothing."""
        from psycopg import pq

        pgconn = self._pgconn
        cancelled = False
        results = []
        try:
            pgconn.send_query(sql.encode())
            while True:
                pgconn.consume_input()
                if not pgconn.is_busy():
                    break
                if until is not None and until.is_set() and not cancelled:
                    pgconn.get_cancel().cancel()
                    cancelled = True  # the server's answer to the cancel comes next
                select.select([pgconn.socket], [], [], _COMMAND_POLL_S)
            while (result := pgconn.get_result()) is not None:
                results.append(result)
        except psycopg_errors().OperationalError as exc:
            raise ConnectionLost(f'replication connection lost: {exc}') from exc
        result = results[-1] if results else None
        if result is None or result.status not in (pq.ExecStatus.TUPLES_OK,
                                                   pq.ExecStatus.COMMAND_OK):
            error = _result_error(pgconn, result)
            if cancelled and error.sqlstate == '57014':  # query_canceled
                raise Interrupted(f'{sql.split()[0]} cancelled: a stop was asked for', '57014')
            raise error
        rows = []
        for row in range(result.ntuples):
            rows.append(tuple(
                None if result.get_value(row, col) is None
                else bytes(result.get_value(row, col)).decode()
                for col in range(result.nfields)))
        return rows

    def identify_system(self) -> dict[str, str | None]:
        systemid, timeline, xlogpos, dbname = self._command('IDENTIFY_SYSTEM')[0]
        return {'systemid': systemid, 'timeline': timeline, 'xlogpos': xlogpos, 'dbname': dbname}

    def create_slot(self, name: str, *, export_snapshot: bool, temporary: bool = False,
                    until: threading.Event | None = None) -> SlotCreated:
        """Create a pgoutput slot; with ``export_snapshot`` also export its consistent snapshot
        (valid while this connection runs no other command); a ``temporary`` slot is dropped
        when the connection ends.  Setting ``until`` gives up waiting (:class:`Interrupted`;
        a cancelled creation leaves no slot)."""
        mode = 'EXPORT_SNAPSHOT' if export_snapshot else 'NOEXPORT_SNAPSHOT'
        kind = ' TEMPORARY' if temporary else ''
        rows = self._command(f'CREATE_REPLICATION_SLOT "{name}"{kind} LOGICAL pgoutput {mode}',
                             until)
        _slot, consistent_point, snapshot, _plugin = rows[0]
        assert consistent_point is not None
        return SlotCreated(name, parse_lsn(consistent_point), snapshot)

    def start(self, slot: str, start_lsn: int, publication: str, *, messages: bool = True,
              proto_version: int = 1) -> None:
        """START_REPLICATION from ``start_lsn`` (the server starts at its confirmed position when
        that is later)."""
        from psycopg import pq

        options = [f"proto_version '{proto_version}'", f"publication_names '{publication}'"]
        if messages:
            options.append("messages 'true'")
        sql = (f'START_REPLICATION SLOT "{slot}" LOGICAL {format_lsn(start_lsn)} '
               f'({", ".join(options)})')
        try:
            self._pgconn.send_query(sql.encode())
            result = self._pgconn.get_result()
        except psycopg_errors().OperationalError as exc:
            raise ConnectionLost(f'replication connection lost: {exc}') from exc
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            raise _result_error(self._pgconn, result)
        self._pgconn.nonblocking = 1
        self._streaming = True
        self._reader = _bound_libpq(self._pgconn)
        self._pgconn_ptr = self._pgconn.pgconn_ptr if self._reader is not None else 0
        self._received = max(self._received, start_lsn)
        self._confirmed = max(self._confirmed, start_lsn)
        _LOG.info('streaming slot %s from %s', slot, format_lsn(start_lsn))

    # -- streaming -----------------------------------------------------------------------------

    def read(self, timeout: float) -> XLogData | None:
        """The next WAL data frame, or None when none arrives within ``timeout`` seconds.

        Blocks on the socket (no busy wait).  Keepalives are answered here.  A broken
        connection raises :class:`ConnectionLost`.
        """
        pgconn = self._pgconn
        deadline = None
        try:
            while True:
                size, data = pgconn.get_copy_data(1)
                if size > 0:
                    kind = data[0]
                    if kind == 0x77:  # 'w'
                        start, wal_end, send_time = _XLOG_HEADER.unpack_from(data, 1)
                        if wal_end > self._received:
                            self._received = wal_end
                        self._count(1)
                        self.payload_bytes += size - 25
                        return _new_xlog_data(
                            XLogData, (start, wal_end, send_time + _EPOCH_OFFSET_US, data[25:]))
                    if kind == 0x6B:  # 'k'
                        wal_end, _send_time, reply = _KEEPALIVE.unpack_from(data, 1)
                        self._asked_at = None
                        self._maybe_send_status(force=reply)
                        continue
                    raise ReplicationError(f'unexpected replication frame type {chr(kind)!r}')
                if size == 0:
                    if deadline is None:
                        deadline = time.monotonic() + timeout
                    if self._wait(deadline):
                        continue
                    return None
                raise self._ended()
        except psycopg_errors().OperationalError as exc:  # evaluated only when raised
            self._streaming = False
            raise ConnectionLost(f'replication connection lost: {exc}') from exc

    def read_batch(self, timeout: float) -> list[tuple[int, Any]]:
        """The WAL data frames that arrived, as ``(data_start, payload)``, at most
        ``_BATCH_FRAMES`` of them; empty when none arrives within ``timeout`` seconds.  A
        pgoutput Begin or Commit may come decoded: ``(FRAME_BEGIN, (final_lsn, commit_ts,
        xid))`` or ``(FRAME_COMMIT, (flags, commit_lsn, end_lsn, commit_ts))``, the fields of
        ``pgoutput.Begin`` / ``Commit``.

        As :meth:`read`, but every frame libpq already holds is taken in one call (``_pqcopy``,
        when built and bound to psycopg's libpq: a Python call per frame costs as much as a
        small transaction's change).  :attr:`send_time_us` is the send time of the last one.
        """
        if self._unread:
            frames, self._unread = self._unread, []
            return frames
        if self._failed:
            self._raise_failure()
        reader = self._reader
        if reader is None:
            frame = self.read(timeout)
            if frame is None:
                return []
            self.send_time_us = frame.send_time_us
            return [(frame.data_start, bytes(frame.payload))]
        deadline = None
        try:
            while True:
                frames, state, wal_end, send_time, keepalive, payload = _pqcopy.read_frames(
                    reader, self._pgconn_ptr, _BATCH_FRAMES)
                self.payload_bytes += payload
                if wal_end > self._received:
                    self._received = wal_end
                if send_time:
                    self.send_time_us = send_time + _EPOCH_OFFSET_US
                if keepalive:
                    self._asked_at = None
                    self._maybe_send_status(force=keepalive == 2)
                if frames:
                    self._count(len(frames))
                if state < 0 or state > 1:
                    # The stream ended or broke after these frames: they go first (as read
                    # would have handed them over one by one), the error with the next call.
                    self._failed = state
                    if not frames:
                        self._raise_failure()
                if frames:
                    return frames
                if keepalive:
                    continue  # more may wait behind it
                if deadline is None:
                    deadline = time.monotonic() + timeout
                if not self._wait(deadline):
                    return []
        except psycopg_errors().OperationalError as exc:  # evaluated only when raised
            self._streaming = False
            raise ConnectionLost(f'replication connection lost: {exc}') from exc

    def _count(self, frames: int) -> None:
        # The clock is read once every _STATUS_EVERY frames of a burst (and whenever the
        # socket runs dry), not per frame.
        self._frames += frames
        if self._frames >= _STATUS_EVERY:
            self._frames = 0
            self._asked_at = None  # frames flow: the server is there
            self._maybe_send_status()

    def _raise_failure(self) -> NoReturn:
        state, self._failed = self._failed, 0
        if state < 0:
            raise self._ended()
        self._streaming = False
        kind = 'too short' if state == ord('!') else f'type {chr(state)!r}'
        raise ReplicationError(f'unexpected replication frame {kind}')

    def unread(self, frames: list[tuple[int, Any]]) -> None:
        """Frames of a batch the caller did not handle: the next read_batch returns them."""
        self._unread = frames + self._unread

    def _wait(self, deadline: float) -> bool:
        """libpq holds no complete frame: wait on the socket until ``deadline``; True when
        more arrived (consumed into libpq), False when the time is up."""
        pgconn = self._pgconn
        # Whether the server answered is checked only when the socket runs dry, not per
        # frame: any frame since the last time counts as an answer.
        if self._frames != self._frames_when_dry:
            self._frames_when_dry = self._frames
            self._asked_at = None
        self._maybe_send_status()
        now = time.monotonic()
        asked = self._asked_at
        if asked is not None and now - asked > _SILENCE_S:
            self._streaming = False
            raise ConnectionLost(f'no answer from the server for {now - asked:.0f} s, not even '
                                 'to a status update asking for one')
        remaining = deadline - now
        # Wake at least every status interval so the server hears from us.  Once the time is
        # up, still take what already waits in the socket (timeout 0 polls).
        ready, _, _ = select.select([pgconn.socket], [], [],
                                    max(0.0, min(remaining, _STATUS_INTERVAL_S)))
        if ready:
            pgconn.consume_input()
            return True
        return remaining > 0

    def _ended(self) -> ReplicationError:
        """The COPY ended or failed: the server's error (ConnectionLost when it said nothing)."""
        pgconn = self._pgconn
        self._streaming = False
        result = pgconn.get_result()
        error = _result_error(pgconn, result, prefix='replication stream ended: ')
        if error.sqlstate is None:  # no word from the server: the connection ended
            return ConnectionLost(str(error))
        return error

    @property
    def received_lsn(self) -> int:
        return self._received

    @property
    def confirmed_lsn(self) -> int:
        return self._confirmed

    def confirm(self, lsn: int, *, send: bool = True) -> None:
        """Everything up to ``lsn`` is durable downstream: the slot may release it."""
        with self._lock:
            if lsn > self._confirmed:
                self._confirmed = lsn
        if send:
            self._maybe_send_status(force=True)

    def _maybe_send_status(self, force: bool = False) -> None:
        if not self._streaming:
            return
        now = time.monotonic()
        if not force and now - self._last_status < _STATUS_INTERVAL_S:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is reporting right now; the next call will report
        try:
            confirmed = self._confirmed
            # A periodic update asks the server to answer (a keepalive), so a connection that
            # went silent, or a walsender that hangs, is noticed (see read).
            frame = _STATUS.pack(b'r', max(self._received, confirmed), confirmed, confirmed,
                                 now_pg_us(), not force)
            try:
                sent = self._pgconn.put_copy_data(frame) == 1 and self._pgconn.flush() >= 0
            except psycopg_errors().OperationalError as exc:
                sent = False
                _LOG.debug('standby status: %s', exc)
            if not sent:
                self._streaming = False
                message = self._pgconn.error_message.decode(errors='replace').strip()
                raise ConnectionLost(f'cannot send standby status: {message}')
            self._reported = confirmed
            self._last_status = now
            if not force and self._asked_at is None:
                self._asked_at = now
        finally:
            self._lock.release()

    def close(self) -> None:
        """Report the confirmed position one last time and disconnect."""
        try:
            if self._streaming and self._reported != self._confirmed:
                self._maybe_send_status(force=True)
                # Give libpq a moment to push the final status out before the socket closes.
                deadline = time.monotonic() + 1.0
                while self._pgconn.flush() == 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
        except ReplicationError as exc:
            _LOG.warning('final standby status not sent: %s', exc)
        finally:
            self._pgconn.finish()
            self._streaming = False
