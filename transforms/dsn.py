"""Connection URIs: parse ``postgresql://`` and ``mysql://`` DSNs, and show them without secrets.

    >>> redact('postgresql://app:s3cret@db:5432/shop')
    'postgresql://app:***@db:5432/shop'

A password must never reach a log line or an error message: every message that names a DSN
names ``redact(dsn)``.
"""
from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar('_T')

__all__ = ['MYSQL_PARAMS', 'PG_CONNECTION_DEFAULTS', 'Dsn', 'DsnError', 'display',
           'mysql_connect_args', 'mysql_error_from_server', 'parse_dsn', 'pg_ask',
           'pg_conninfo', 'pg_error_from_server', 'redact']

_SCHEMES = {'postgresql': 'postgresql', 'postgres': 'postgresql', 'mysql': 'mysql',
            'mariadb': 'mysql'}
# Greedy up to the authority's last '@', as urllib splits it: an unencoded '@' in a password
# must not leave the rest of it visible.
_PASSWORD = re.compile(r'(?P<head>^[a-z][a-z0-9+.-]*://[^:/?#@]*):[^/?#]*@', re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r'(?P<head>[?&]password=)[^&#]*', re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)",
                               re.IGNORECASE)
# libpq settings a long-lived connection needs and libpq does not default to: give up on a
# server that does not accept within 10 s, and notice a peer gone without a reset (a network
# partition, a dead host) within about a minute rather than the kernel's two hours: TCP
# keepalives while waiting for an answer, tcp_user_timeout while data goes unacknowledged.
# libpq ignores the TCP ones on a Unix socket.  A DSN's own settings win.
PG_CONNECTION_DEFAULTS = {'connect_timeout': '10', 'keepalives_idle': '30',
                          'keepalives_interval': '10', 'keepalives_count': '3',
                          'tcp_user_timeout': '60000'}
_HIDDEN = '<DSN not shown as it does not parse, so a password in it could not be masked>'


def redact(dsn: str) -> str:
    """The DSN with any password (authority, ``password=`` query item or libpq keyword) as
    ``***``.  For text that may not parse as a URI, show :func:`display` instead."""
    text = _PASSWORD.sub(r'\g<head>:***@', dsn)
    if '://' in text:
        return _QUERY_PASSWORD.sub(r'\g<head>***', text)
    return _KEYWORD_PASSWORD.sub(r'\g<head>***', text)  # libpq's 'host=… password=…' form


def display(dsn: str) -> str:
    """What an error or log line may show of ``dsn``: the redacted URI when it parses and the
    password is provably masked, otherwise a placeholder."""
    if '://' not in dsn:
        return _HIDDEN
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return _HIDDEN
    if '@' in parts.path + parts.query + parts.fragment:
        return _HIDDEN  # an unencoded '/', '?' or '#' in a password split the URI early
    shown = redact(dsn)
    password = parts.password
    if password and password in shown.replace(':***@', '@'):
        return _HIDDEN
    return shown


def pg_conninfo(dsn: str, **params: str) -> str:
    """libpq's connection string for ``dsn`` plus ``params``, with the
    :data:`PG_CONNECTION_DEFAULTS` that neither sets."""
    from psycopg import conninfo

    given = conninfo.conninfo_to_dict(dsn)
    defaults = {name: value for name, value in PG_CONNECTION_DEFAULTS.items()
                if name not in given and name not in params}
    return conninfo.make_conninfo(dsn, **defaults, **params)


# libpq shows an error the server sent as "SEVERITY:  message", two spaces after the colon,
# the severity in the server's lc_messages (FATAL, VAZHNO, …); its own errors never look so.
_SERVER_SAID = re.compile(r'(?:^|: )[^\s:]+:  \S')


def pg_error_from_server(exc: BaseException) -> bool:
    """Whether a psycopg error is the server's own answer (too many clients, starting up, a
    refused query) rather than no answer at all (refused, timed out, connection lost).  A
    failed connect carries no SQLSTATE: libpq then shows the server's message as
    ``FATAL:  …``, the severity in the server's language."""
    return bool(getattr(exc, 'sqlstate', None)) or _SERVER_SAID.search(str(exc)) is not None


def pg_ask(dsn: str, ask: Callable[[Any], _T], timeout_s: float) -> _T:
    """``ask(conn)`` on a new autocommit connection that must connect and answer within
    ``timeout_s`` (libpq's connect timeout counts whole seconds, 2 at least): what the stall
    checks ask a server that may hang.  ``ConnectionError`` when it does not answer (refused,
    timed out, lost); the server's own errors (too many clients, …) as psycopg raises them."""
    import psycopg

    from transforms.deadline import answer_within

    info = pg_conninfo(dsn, connect_timeout=str(max(2, round(timeout_s))))
    try:
        with psycopg.connect(info, autocommit=True) as conn, \
                answer_within(conn.fileno(), timeout_s, 'the check'):
            return ask(conn)
    except psycopg.Error as exc:
        if pg_error_from_server(exc):
            raise
        raise ConnectionError(' '.join(str(exc).split())) from exc


def mysql_error_from_server(exc: BaseException) -> bool:
    """Whether a PyMySQL error is the server's own answer (its error numbers are below 2000;
    2000 and up are the client's: cannot connect, lost the connection)."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return code is not None and code < 2000


MYSQL_PARAMS = frozenset({'unix_socket', 'charset', 'connect_timeout', 'read_timeout',
                          'write_timeout', 'ssl_ca', 'ssl_cert', 'ssl_key'})
"""The ``mysql://`` query parameters PyMySQL takes (``ssl_*`` as its ``ssl`` dict)."""


def mysql_connect_args(dsn: str, params: frozenset[str] = MYSQL_PARAMS) -> dict[str, Any]:
    """PyMySQL keyword arguments for a ``mysql://`` DSN (no ``database``: the caller decides
    whether it needs one), accepting the query ``params``; ValueError naming the redacted
    DSN."""
    if not isinstance(dsn, str):
        raise ValueError(f'dsn must be a mysql:// URI string, got {type(dsn).__name__}')
    parsed = parse_dsn(dsn, option='dsn')
    shown = redact(dsn)
    if parsed.kind != 'mysql':
        raise ValueError(f'dsn {shown!r} is not a mysql:// DSN (MySQL or MariaDB); use '
                         'mysql://USER[:PASSWORD]@HOST[:PORT]/DB')
    args: dict[str, Any] = {
        'host': parsed.host, 'port': parsed.port or 3306, 'user': parsed.user or None,
        'password': parsed.password, 'charset': 'utf8mb4',
    }
    for name, value in parsed.params:
        if name not in params:
            raise ValueError(f'dsn {shown!r}: unknown parameter {name!r}; valid: '
                             f'{", ".join(sorted(params))}')
        if name.endswith('timeout'):
            if not value.isdigit():
                raise ValueError(f'dsn {shown!r}: {name} {value!r} is not a number')
            args[name] = int(value)
        elif name.startswith('ssl_'):
            args.setdefault('ssl', {})[name[4:]] = value
        else:
            args[name] = value
    return args


class DsnError(ValueError):
    """A DSN that cannot be used; ``problem`` says why, never showing a password."""

    def __init__(self, option: str, shown: str, problem: str) -> None:
        super().__init__(f'{option} {shown!r}: {problem}')
        self.shown = shown
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class Dsn:
    """A parsed database URI.  ``kind`` is 'postgresql' or 'mysql'; ``host`` may be a socket dir."""

    kind: str
    raw: str = dataclasses.field(repr=False)
    host: str
    port: int | None
    user: str
    password: str = dataclasses.field(repr=False, default='')
    database: str = ''
    params: tuple[tuple[str, str], ...] = dataclasses.field(repr=False, default=())

    def __str__(self) -> str:
        return display(self.raw)

    def param(self, name: str, default: str = '') -> str:
        return dict(self.params).get(name, default)


# In the user:password part (before the authority's last '@'): a '?' or '#' (the URI would end
# there); for libpq, also another '@' or a '%' that does not start a percent-encoded byte.
_UNSPLIT_USERINFO = re.compile(r'[?#]')
_UNSAFE_USERINFO = re.compile(r'[@?#]|%(?![0-9A-Fa-f]{2})')


def parse_dsn(uri: str, *, option: str = 'DSN') -> Dsn:
    """Parse a database URI; DsnError naming ``option``, the shown value and what is valid."""
    shown = display(uri)
    scheme, sep, _ = uri.partition('://')
    valid = ('use postgresql://USER[:PASSWORD]@HOST[:PORT]/DB or '
             'mysql://USER[:PASSWORD]@HOST[:PORT]/DB (percent-encode / ? # @ in a password)')
    if not sep:
        raise DsnError(option, shown, f'not a URI; {valid}')
    kind = _SCHEMES.get(scheme.lower())
    if kind is None:
        raise DsnError(option, shown, f'unsupported scheme {scheme!r}; {valid}')
    userinfo = uri.partition('://')[2].partition('/')[0].rpartition('@')[0]
    unsafe = _UNSAFE_USERINFO if kind == 'postgresql' else _UNSPLIT_USERINFO
    if shown == _HIDDEN or unsafe.search(userinfo):
        # A URI read otherwise than this parser reads it: a '/', '?' or '#' in a password ends
        # it early; libpq (which reads PostgreSQL DSNs itself) splits at the first '@' and
        # quotes an undecodable '%' back in its error.  Either way a password, or part of
        # one, would end up in an error message.
        raise DsnError(option, _HIDDEN, 'the user or password does not parse: percent-encode '
                       '@ / ? # % in them (%40 %2F %3F %23 %25)')
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError:
        port_text = parts.netloc.rpartition(':')[2] if shown != _HIDDEN else ''
        problem = f'port {port_text!r} is not a number in the range 1-65535' if port_text \
            else 'the host or port does not parse'
        raise DsnError(option, shown, f'{problem}; {valid}') from None
    params = tuple(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    host = parts.hostname or dict(params).get('host', '')
    if not host and kind == 'mysql':
        raise DsnError(option, shown, 'a mysql:// DSN needs a host')
    query_port = dict(params).get('port')
    if query_port and port is None:
        port = int(query_port) if query_port.isdigit() else -1
    if port is not None and not 1 <= port <= 65535:
        raise DsnError(option, shown,
                       f'port {query_port or port!r} is not a number in the range 1-65535')
    database = urllib.parse.unquote(parts.path.lstrip('/'))
    return Dsn(
        kind=kind,
        raw=uri,
        host=host,
        port=port,
        user=urllib.parse.unquote(parts.username or ''),
        password=urllib.parse.unquote(parts.password or ''),
        database=database,
        params=params,
    )
