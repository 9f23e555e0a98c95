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

__all__ = ['Dsn', 'parse_dsn', 'redact']

_SCHEMES = {'postgresql': 'postgresql', 'postgres': 'postgresql', 'mysql': 'mysql',
            'mariadb': 'mysql'}
_PASSWORD = re.compile(r'(?P<head>^[a-z][a-z0-9+.-]*://[^:/?#@]*):[^@/?#]*@', re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r'(?P<head>[?&]password=)[^&#]*', re.IGNORECASE)


def redact(dsn: str) -> str:
    """The DSN with any password (in the authority or a ``password=`` query item) as ``***``."""
    text = _PASSWORD.sub(r'\g<head>:***@', dsn)
    return _QUERY_PASSWORD.sub(r'\g<head>***', text)


@dataclasses.dataclass(frozen=True)
class Dsn:
    """A parsed database URI.  ``kind`` is 'postgresql' or 'mysql'; ``host`` may be a socket dir."""

    kind: str
    raw: str
    host: str
    port: int | None
    user: str
    password: str = dataclasses.field(repr=False, default='')
    database: str = ''
    params: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return redact(self.raw)

    def param(self, name: str, default: str = '') -> str:
        return dict(self.params).get(name, default)


def parse_dsn(uri: str, *, option: str = 'DSN') -> Dsn:
    """Parse a database URI; ValueError naming ``option``, the redacted value and what is valid."""
    shown = redact(uri)
    scheme, sep, _ = uri.partition('://')
    kind = _SCHEMES.get(scheme.lower()) if sep else None
    if kind is None:
        raise ValueError(f'{option} {shown!r}: unsupported scheme {scheme!r}; use '
                         'postgresql://USER[:PASSWORD]@HOST[:PORT]/DB or '
                         'mysql://USER[:PASSWORD]@HOST[:PORT]/DB')
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f'{option} {shown!r}: {exc}') from None
    params = tuple(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    host = parts.hostname or dict(params).get('host', '')
    if not host and kind == 'mysql':
        raise ValueError(f'{option} {shown!r}: a mysql:// DSN needs a host')
    if dict(params).get('port') and port is None:
        try:
            port = int(dict(params)['port'])
        except ValueError:
            raise ValueError(f'{option} {shown!r}: port {dict(params)["port"]!r} is not a number')\
                from None
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
