"""Give up on a blocking database call whose server stopped answering.

psycopg 3 has no client-side timeout for a query (``statement_timeout`` is the server's, and a
server that does not answer does not enforce it either).  A network that drops packets without
a reset, or a server that hangs, leaves ``execute`` waiting for ever, and TCP keepalives do not
help while something on the way (a proxy, a load balancer, the frozen server's own kernel)
still acknowledges.  ``answer_within`` runs a timer beside the call; when it expires it shuts
the connection's socket down, so the waiting call fails at once with the driver's own
connection error, re-raised as :class:`NoAnswer` naming the wait::

    with answer_within(conn.fileno(), 20.0, 'the control connection'):
        conn.execute('SELECT 1')

The connection is dead afterwards (the driver marks it broken); callers reconnect as after any
lost connection.  Starting the timer costs a thread (~0.1 ms): for calls made now and then
(heartbeats, catalog lookups), not per row.

Where no such deadline fits (a statement may legitimately run for an hour, or wait for a
lock), :func:`stall_watch` asks instead, every so often while the block runs, whether the server
is still there (``check``: a new connection asking what the busy session does) and ends the
connection only when that check fails.  And the kernel can still notice a peer the network
lost: :func:`notice_lost_peer` sets on a driver's TCP socket what libpq gets from
``PG_CONNECTION_DEFAULTS``.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ['CHECK_ANSWER_S', 'STALL_CHECK_S', 'NoAnswer', 'answer_within', 'notice_lost_peer',
           'stall_watch']

STALL_CHECK_S = 60.0
"""How long long work on a connection (a sink's batch, a snapshot) runs before a new
connection checks that the server still answers, and how often again."""
CHECK_ANSWER_S = 20.0
"""How long that check may take to connect and get its answer."""


class NoAnswer(ConnectionError):
    """The server did not answer within the deadline; the connection was shut down."""


class _Watch:
    def __init__(self, fileno: int | Callable[[], int | None]) -> None:
        self._fileno = fileno
        self._lock = threading.Lock()
        self._over = False
        self.fired = False
        self.reason = ''
        self._timers: list[threading.Timer] = []

    @property
    def over(self) -> bool:
        return self._over

    def expire(self, reason: str = '') -> bool:
        """Shut the socket down, unless the call is over or has no socket (yet); whether
        it did."""
        with self._lock:
            if self._over:
                return False  # the call returned just in time
            try:
                fileno = self._fileno if isinstance(self._fileno, int) else self._fileno()
            except Exception:  # a driver's fileno() raises once the connection is gone
                fileno = None
            if fileno is None:
                return False  # no connection yet: connecting has timeouts of its own
            self.fired = True
            self.reason = reason
            try:
                # A duplicate descriptor of the same socket: shutting it down ends the
                # connection for the driver's descriptor too, and closing it leaves theirs.
                sock = socket.socket(fileno=os.dup(fileno))
            except OSError:
                return True  # already closed
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                sock.close()
            return True

    def end(self) -> None:
        with self._lock:
            self._over = True

    def start_timer(self, seconds: float, function: Callable[[], object]) -> None:
        timer = threading.Timer(seconds, function)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    @contextmanager
    def guarding(self, what: str) -> Iterator[None]:
        """The block the watch guards: an error it raises after the watch fired becomes
        :class:`NoAnswer` ("``what``: <reason>"); the timers end with it."""
        try:
            yield
        except Exception as exc:
            self.end()
            if self.fired:
                raise NoAnswer(f'{what}: {self.reason}') from exc
            raise
        finally:
            self.end()
            for timer in self._timers:
                timer.cancel()


@contextmanager
def answer_within(fileno: int, seconds: float, what: str) -> Iterator[None]:
    """Shut the socket ``fileno`` down if the block takes longer than ``seconds``; an error
    it then raises becomes :class:`NoAnswer` ("``what``: no answer from the server for N s")."""
    if not seconds > 0:
        raise ValueError(f'seconds {seconds!r} must be > 0')
    watch = _Watch(fileno)
    watch.start_timer(seconds,
                      lambda: watch.expire(f'no answer from the server for {seconds:g} s'))
    with watch.guarding(what):
        yield


@contextmanager
def stall_watch(fileno: Callable[[], int | None], every_s: float,
                check: Callable[[float], object], what: str) -> Iterator[None]:
    """Call ``check(seconds_so_far)`` each time the block has run another ``every_s`` seconds
    (on a timer thread; the block goes on meanwhile).  While it returns, the block may run as
    long as it needs.  When it raises, the socket ``fileno()`` names at that moment is shut down
    (so the block fails at once with the driver's connection error), and that error is raised
    as :class:`NoAnswer`: "``what``: no answer for N s, <what check raised>".

    ``check`` must itself end in bounded time (connect and query with a timeout).  A block that
    ends first is never interrupted: a check still running then shuts nothing down; nor is one
    that has no socket yet (``fileno()`` None), which is checked again later."""
    if not every_s > 0:
        raise ValueError(f'every_s {every_s!r} must be > 0')
    watch = _Watch(fileno)
    started = time.monotonic()

    def tick() -> None:
        if watch.over:
            return
        waited = time.monotonic() - started
        try:
            check(waited)
        except Exception as exc:
            if watch.expire(f'no answer for {waited:.0f} s, {exc}'):
                return
        if not watch.over:
            watch.start_timer(every_s, tick)

    watch.start_timer(every_s, tick)
    with watch.guarding(what):
        yield


def notice_lost_peer(sock: socket.socket) -> None:
    """Let the kernel end a TCP connection whose peer the network lost (no reset ever comes):
    keepalive probes after 30 s idle, 3 of them 10 s apart, and at most 60 s for sent data to
    be acknowledged (``TCP_USER_TIMEOUT``), as :data:`~transforms.dsn.PG_CONNECTION_DEFAULTS`
    asks of libpq.  A peer that acknowledges but never answers is not noticed this way."""
    from transforms.dsn import PG_CONNECTION_DEFAULTS as pg

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (('TCP_KEEPIDLE', pg['keepalives_idle']),
                        ('TCP_KEEPINTVL', pg['keepalives_interval']),
                        ('TCP_KEEPCNT', pg['keepalives_count']),
                        ('TCP_USER_TIMEOUT', pg['tcp_user_timeout'])):
        option = getattr(socket, name, None)  # Linux has them all
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, int(value))
