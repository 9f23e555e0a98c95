"""DSN parsing and redaction: what a user types as --source/--sink, and what they see back."""
from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from transforms.dsn import MYSQL_PARAMS, DsnError, mysql_connect_args, parse_dsn, redact


@pytest.mark.parametrize('uri, kind', [
    ('postgresql://app@db.example:5432/shop', 'postgresql'),
    ('postgres://app@db.example:5432/shop', 'postgresql'),
    ('PostgreSQL://app@db.example:5432/shop', 'postgresql'),
    ('mysql://app@db.example:5432/shop', 'mysql'),
    ('mariadb://app@db.example:5432/shop', 'mysql'),
])
def test_scheme_aliases_name_the_database_kind(uri: str, kind: str) -> None:
    dsn = parse_dsn(uri)
    assert (dsn.kind, dsn.host, dsn.port, dsn.user, dsn.database) == (
        kind, 'db.example', 5432, 'app', 'shop')


def test_every_part_of_a_full_dsn() -> None:
    dsn = parse_dsn('postgresql://app:s3cret@db:6432/shop?sslmode=require&application_name=cb')
    assert dsn.password == 's3cret'
    assert dsn.port == 6432
    assert dsn.param('sslmode') == 'require'
    assert dsn.param('application_name') == 'cb'
    assert dsn.param('missing', 'fallback') == 'fallback'
    assert dsn.raw == 'postgresql://app:s3cret@db:6432/shop?sslmode=require&application_name=cb'


def test_postgres_socket_directory_host_and_port_from_the_query() -> None:
    dsn = parse_dsn('postgresql://u@/db?host=/run/pg&port=5433')
    assert (dsn.host, dsn.port, dsn.user, dsn.database) == ('/run/pg', 5433, 'u', 'db')


def test_postgres_without_any_host_means_the_default_socket() -> None:
    dsn = parse_dsn('postgresql:///shop')
    assert (dsn.host, dsn.port, dsn.database) == ('', None, 'shop')


def test_mysql_needs_a_host() -> None:
    with pytest.raises(ValueError, match='needs a host'):
        parse_dsn('mysql://u:pw@/db')


def test_url_encoded_user_password_and_database_are_decoded() -> None:
    dsn = parse_dsn('mariadb://a%40corp:p%2Fw%3A%40%23@h:3306/my%20db')
    assert (dsn.user, dsn.password, dsn.database) == ('a@corp', 'p/w:@#', 'my db')
    assert 'p/w' not in str(dsn) and 'p%2Fw' not in str(dsn)


@pytest.mark.parametrize('uri, problem', [
    ('postgresql://u@h:abc/db', 'abc'),
    ('postgresql://u@h:99999/db', 'range'),
    ('postgresql://u@/db?host=/run/pg&port=fifty', 'fifty'),
])
def test_bad_port_is_a_value_error_naming_option_and_port(uri: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_dsn(uri, option='--source')
    message = str(info.value)
    assert message.startswith('--source ')
    assert problem in message


@pytest.mark.parametrize('port', ['99999', '-1', '0'])
def test_query_port_outside_the_tcp_range_is_rejected(port: str) -> None:
    with pytest.raises(ValueError, match=port):
        parse_dsn(f'postgresql://u@/db?host=/run/pg&port={port}', option='--source')


@pytest.mark.parametrize('uri', ['bogus://x', 'http://u@h/db', 'jdbc:postgresql://h/db', '', 'db'])
def test_unsupported_scheme_says_what_is_valid(uri: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_dsn(uri, option='--source')
    assert '--source' in str(info.value)
    assert 'postgresql://' in str(info.value) and 'mysql://' in str(info.value)


@pytest.mark.parametrize('dsn, shown', [
    ('postgresql://app:s3cret@db:5432/shop', 'postgresql://app:***@db:5432/shop'),
    ('mysql://app:s3cret@db/shop', 'mysql://app:***@db/shop'),
    ('postgresql://:s3cret@db/shop', 'postgresql://:***@db/shop'),
    ('postgresql://app@db/shop?password=s3cret', 'postgresql://app@db/shop?password=***'),
    ('postgresql://app@db/shop?sslmode=require&PASSWORD=s3cret&x=1',
     'postgresql://app@db/shop?sslmode=require&PASSWORD=***&x=1'),
    ('postgresql://app:s3cret@/shop?host=/run/pg&password=s3cret',
     'postgresql://app:***@/shop?host=/run/pg&password=***'),
    ('postgresql://app@db/shop', 'postgresql://app@db/shop'),
    ('postgresql://app@db/shop?passwordless=1', 'postgresql://app@db/shop?passwordless=1'),
])
def test_redact_hides_authority_and_query_passwords(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown


def test_the_parsed_dsn_prints_without_its_password() -> None:
    dsn = parse_dsn('postgresql://app:s3cret@db/shop?password=s3cret')
    assert 's3cret' not in str(dsn)
    assert 's3cret' not in f'{dsn}'
    assert 'app' in str(dsn) and 'db/shop' in str(dsn)


def test_the_repr_of_a_dsn_never_shows_its_password() -> None:
    # repr is what a log line of a config object, a debugger or a pytest failure prints.
    assert 's3cret' not in repr(parse_dsn('postgresql://app:s3cret@db/shop'))
    assert 's3cret' not in repr(parse_dsn('postgresql://app@db/shop?password=s3cret'))


_SECRETS = st.text(st.characters(codec='utf-8', exclude_categories=('Cs',)), min_size=1,
                   max_size=30).map(lambda s: 'Zq9' + s)  # marker: never part of the rest


@given(password=_SECRETS, port=st.sampled_from(['', ':5432', ':abc', ':99999']),
       scheme=st.sampled_from(['postgresql', 'postgres', 'mysql', 'mariadb', 'bogus']),
       in_query=st.booleans())
@example(password='Zq9/#?@:%', port=':abc', scheme='postgresql', in_query=False)
def test_an_encoded_password_never_reaches_str_or_the_error(
        password: str, port: str, scheme: str, in_query: bool) -> None:
    quoted = urllib.parse.quote(password, safe='')
    if in_query:
        uri = f'{scheme}://app@db{port}/shop?sslmode=require&password={quoted}'
    else:
        uri = f'{scheme}://app:{quoted}@db{port}/shop'
    try:
        dsn = parse_dsn(uri, option='--source')
    except ValueError as exc:
        shown = str(exc)
    else:
        assert dsn.password == ('' if in_query else password)
        shown = str(dsn)
    assert password not in shown and quoted not in shown
    assert quoted not in redact(uri)


# Passwords pasted unencoded, and libpq's keyword/value form: the user made a mistake, and the
# error they get must still not print the password for everyone reading the terminal or the log.
_UNENCODED = [
    'postgresql://app:Zq9/x7@db/shop',   # '/' ends the authority early: "port" 'Zq9'
    'postgresql://app:Zq9#x7@db/shop',
    'postgresql://app:Zq9?x7@db/shop',
    'host=db user=app password=Zq9x7 dbname=shop',  # libpq keyword/value DSN
    'app:Zq9x7@db/shop',  # scheme forgotten
]


@pytest.mark.parametrize('uri', _UNENCODED)
def test_an_unencoded_password_never_reaches_the_error(uri: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_dsn(uri, option='--source')
    assert 'Zq9' not in str(info.value)


def test_an_unencoded_at_sign_in_a_mysql_password_is_still_hidden() -> None:
    dsn = parse_dsn('mysql://app:Zq9@x7@db/shop')
    assert dsn.password == 'Zq9@x7' and dsn.host == 'db'
    assert 'x7' not in str(dsn)


@pytest.mark.parametrize('uri', [
    'postgresql://cdc:S3cretPW%zz@127.0.0.1:1/shop',  # libpq: invalid percent-encoded token
    'postgresql://cdc:S3cret@LEAKPART@127.0.0.1:1/shop',  # libpq: host 'LEAKPART@127.0.0.1'
    'postgresql://cdc:p@ss/w?LEAK#PART@127.0.0.1:1/shop',  # libpq: query 'LEAK#PART@…'
    'postgresql://cdc:a?LEAK@h/db',
    'mysql://cdc:a#LEAK@h/db',
])
def test_a_password_libpq_or_the_parser_would_read_otherwise_is_refused_unshown(
        uri: str) -> None:
    """libpq reads PostgreSQL DSNs itself, and quoted what it made of such a password in its
    error, the whole password or part of it."""
    with pytest.raises(DsnError) as info:
        parse_dsn(uri, option='--source')
    assert 'LEAK' not in str(info.value) and 'S3cret' not in str(info.value)
    assert str(info.value).endswith('the user or password does not parse: percent-encode '
                                    '@ / ? # % in them (%40 %2F %3F %23 %25)')


def test_a_percent_encoded_password_still_parses() -> None:
    dsn = parse_dsn('postgresql://cdc:p%40ss%2Fw%3F%23%25@db/shop')
    assert dsn.password == 'p@ss/w?#%' and dsn.host == 'db'


def test_libpq_connection_timeouts_are_added_unless_the_dsn_sets_them() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from transforms.dsn import PG_CONNECTION_DEFAULTS, pg_conninfo

    plain = conninfo_to_dict(pg_conninfo('postgresql://cdc@db/shop', application_name='x'))
    assert plain == {'user': 'cdc', 'host': 'db', 'dbname': 'shop', 'application_name': 'x',
                     **PG_CONNECTION_DEFAULTS}
    own = conninfo_to_dict(pg_conninfo(
        'postgresql://cdc@db/shop?connect_timeout=3&tcp_user_timeout=0', keepalives_idle='7'))
    assert (own['connect_timeout'], own['tcp_user_timeout'], own['keepalives_idle']) == \
        ('3', '0', '7')
    assert own['keepalives_count'] == PG_CONNECTION_DEFAULTS['keepalives_count']


def test_mysql_connect_args_are_what_pymysql_takes() -> None:
    args = mysql_connect_args('mysql://app:p%40ss@db.example:3307/shop?connect_timeout=5'
                              '&ssl_ca=/etc/ca.pem&unix_socket=/run/mysqld.sock')
    assert args == {'host': 'db.example', 'port': 3307, 'user': 'app', 'password': 'p@ss',
                    'charset': 'utf8mb4', 'connect_timeout': 5,
                    'ssl': {'ca': '/etc/ca.pem'}, 'unix_socket': '/run/mysqld.sock'}
    assert mysql_connect_args('mariadb://db')['port'] == 3306


@pytest.mark.parametrize(('dsn', 'params', 'problem'), [
    ('postgresql://app:s3cret@db/x', None, 'is not a mysql:// DSN'),
    ('mysql://app:s3cret@db/x?read_timeout=-5', None, "read_timeout '-5' is not a number"),
    ('mysql://app:s3cret@db/x?charset=latin1', frozenset({'read_timeout'}),
     "unknown parameter 'charset'; valid: read_timeout"),
])
def test_mysql_connect_args_refuse_without_showing_the_password(dsn, params, problem) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        mysql_connect_args(dsn, params or MYSQL_PARAMS)
    assert 's3cret' not in str(info.value) and '***' in str(info.value)


def test_a_postgres_error_sent_by_the_server_is_told_from_no_answer() -> None:
    from transforms.dsn import pg_error_from_server

    class Refused(Exception):
        sqlstate = None

    class Sent(Exception):
        sqlstate = '53300'

    assert pg_error_from_server(Sent('too many connections'))
    assert pg_error_from_server(Refused(
        'connection failed: connection to server on socket "/tmp/.s.PGSQL.5432" failed: '
        'FATAL:  sorry, too many clients already'))
    # The severity is in the server's lc_messages (as PostgreSQL 15 servers answered with
    # de_DE.UTF-8 and ru_RU.UTF-8):
    assert pg_error_from_server(Refused(
        'connection failed: connection to server on socket "/tmp/.s.PGSQL.5432" failed: '
        'FATAL:  tut mir leid, schon zu viele Verbindungen'))
    assert pg_error_from_server(Refused(
        'connection failed: connection to server on socket "/tmp/.s.PGSQL.5432" failed: '
        'VAZHNO:  izvinite, uzhe slishkom mnogo klientov'))
    assert not pg_error_from_server(Refused('connection timeout expired'))
    assert not pg_error_from_server(Refused(
        'connection failed: connection to server at "10.0.0.9", port 5432 failed: '
        'server closed the connection unexpectedly\n\tThis probably means the server '
        'terminated abnormally\n\tbefore or while processing the request.'))
    assert not pg_error_from_server(Refused(
        'connection failed: connection to server at "10.0.0.9", port 5432 failed: '
        'Connection refused'))
    assert not pg_error_from_server(OSError('the check: no answer from the server for 20 s'))


def test_a_mysql_error_sent_by_the_server_is_told_from_no_answer() -> None:
    from transforms.dsn import mysql_error_from_server

    assert mysql_error_from_server(Exception(1040, 'Too many connections'))
    assert mysql_error_from_server(Exception(1227, 'Access denied; you need the PROCESS ...'))
    assert not mysql_error_from_server(Exception(2003, "Can't connect to MySQL server"))
    assert not mysql_error_from_server(Exception(2013, 'Lost connection to MySQL server'))
    assert not mysql_error_from_server(OSError('timed out'))
