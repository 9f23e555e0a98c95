"""A throwaway PostgreSQL 15 cluster configured for logical replication.

    server = PostgresServer.start()          # or: with PostgresServer.start() as server:
    name = server.create_database()
    with server.connect(name) as conn: ...
    server.stop()                            # stops the postmaster and deletes the cluster

The cluster lives in a private temp dir owned by the `postgres` OS user (initdb and postgres
refuse to run as root), listens on a unix socket in that dir and on 127.0.0.1 at a free port,
and trusts every local connection, replication included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.services import (
    Service,
    ServiceStartError,
    free_port,
    launch_until_ready,
    log_tail,
    make_private_dir,
    privileges_for,
    require_binary,
    spawn_server,
    stop_process_group,
    untrack,
    wait_until_ready,
)

__all__ = ["PgDatabase", "PostgresServer"]

_DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
_PACKAGE = "postgresql-15"
_OS_USER = "postgres"
_START_TIMEOUT_S = 60.0

# fsync and full_page_writes off: a crash loses a throwaway cluster anyway, and tests spend
# less time in fsync. synchronous_commit stays on so a committed change reaches the walsender
# at once instead of after the WAL writer's delay.
_BASE_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "fsync": "off",
    "full_page_writes": "off",
    "timezone": "UTC",
    "log_timezone": "UTC",
}

_PG_HBA = """\
# changebeam throwaway cluster: trust the unix socket and loopback only.
local   all          all                   trust
local   replication  all                   trust
host    all          all   127.0.0.1/32    trust
host    replication  all   127.0.0.1/32    trust
"""


def _bindir() -> Path:
    """PostgreSQL 15's bindir; CHANGEBEAM_PG_BINDIR overrides it.

    The Debian path comes first because Debian's `pg_config` reports the newest installed
    major version, which need not be 15.
    """
    override = os.environ.get("CHANGEBEAM_PG_BINDIR")
    if override:
        return Path(override)
    if (_DEFAULT_BINDIR / "postgres").exists():
        return _DEFAULT_BINDIR
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True
            ).stdout.strip()
            if out:
                return Path(out)
    return _DEFAULT_BINDIR


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


class PostgresServer(Service):
    """A running throwaway cluster; `stop()` (or leaving the `with` block) deletes it."""

    user = "postgres"

    def __init__(
        self, base_dir: Path, port: int, process: subprocess.Popen[bytes], log_path: Path
    ) -> None:
        self.base_dir = base_dir
        self.socket_dir = str(base_dir)
        self.port = port
        self.log_path = log_path
        self._process = process
        self._args: list[str] = []
        self._settings: dict[str, str] = {}

    @classmethod
    def start(
        cls, extra_settings: dict[str, Any] | None = None, *, timeout: float = _START_TIMEOUT_S
    ) -> PostgresServer:
        """Creates and starts a cluster; `extra_settings` override postgresql.conf settings."""
        bindir = _bindir()
        initdb = require_binary(bindir / "initdb", _PACKAGE)
        postgres = require_binary(bindir / "postgres", _PACKAGE)
        settings = {**_BASE_SETTINGS, **{k: _render(v) for k, v in (extra_settings or {}).items()}}

        base = make_private_dir("changebeam-pg-", owner=_OS_USER)
        try:
            data = base / "data"
            _initdb(initdb, data, base)
            (data / "pg_hba.conf").write_text(_PG_HBA)
            server = launch_until_ready(
                lambda: cls._launch(postgres, base, data, settings),
                lambda s: f"postgres (port {s.port})",
                PostgresServer._accepts_connections,
                timeout,
                signal.SIGQUIT,
            )
            return server
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise

    @classmethod
    def _launch(
        cls, postgres: str, base: Path, data: Path, settings: dict[str, str]
    ) -> PostgresServer:
        port = free_port()
        args = [postgres, "-D", str(data)]
        placement = {
            "port": str(port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(base),
        }
        for name, value in {**settings, **placement}.items():
            args += ["-c", f"{name}={value}"]
        log_path = base / "postgres.log"
        server = cls(base, port, _spawn(args, base, log_path, "wb"), log_path)  # a fresh log
        server._args = args
        server._settings = settings
        return server

    def start_standby(self, timeout: float = _START_TIMEOUT_S) -> PostgresServer:
        """A hot standby of this cluster streaming from it (``pg_basebackup -R``), with the
        same settings: a read replica; ``stop()`` it before this one."""
        bindir = _bindir()
        basebackup = require_binary(bindir / "pg_basebackup", _PACKAGE)
        postgres = require_binary(bindir / "postgres", _PACKAGE)
        base = make_private_dir("changebeam-pg-", owner=_OS_USER)
        try:
            data = base / "data"
            log_path = base / "basebackup.log"
            with open(log_path, "wb") as log:
                result = subprocess.run(
                    [basebackup, "-h", self.socket_dir, "-p", str(self.port), "-U", self.user,
                     "-D", str(data), "-R", "-X", "stream", "-c", "fast", "--no-sync"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=base,
                    env=_server_env(), check=False, **privileges_for(_OS_USER))
            if result.returncode != 0:
                raise ServiceStartError(
                    f"pg_basebackup failed with code {result.returncode}:\n{log_tail(log_path)}")
            settings = self._settings
            return launch_until_ready(
                lambda: PostgresServer._launch(postgres, base, data, settings),
                lambda s: f"postgres standby (port {s.port})",
                PostgresServer._accepts_connections,
                timeout,
                signal.SIGQUIT,
            )
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise

    def restart(self, down_secs: float = 0.0) -> None:
        """Fast shutdown (clients see their connections end), ``down_secs`` without a server,
        then the same cluster again on the same port."""
        self.halt()
        time.sleep(down_secs)
        self.resume()

    def halt(self) -> None:
        """Fast shutdown, keeping the data for :meth:`resume`."""
        stop_process_group(self._process, signal.SIGINT, timeout=30)

    def resume(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Starts the halted cluster again on the same port."""
        self._process = _spawn(self._args, self.base_dir, self.log_path, "ab")
        wait_until_ready(f"postgres (port {self.port})", self._accepts_connections,
                         self._process, self.log_path, timeout)

    def freeze(self) -> None:
        """Stops every process of the cluster (SIGSTOP): connections stay open and nothing
        answers, as with a hung server or a host that stopped scheduling it.  The postmaster
        first (it forks no more), then its children, each of which is a session of its own."""
        os.kill(self._process.pid, signal.SIGSTOP)
        for pid in _children(self._process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Lets a frozen cluster run on."""
        for pid in _children(self._process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        os.kill(self._process.pid, signal.SIGCONT)

    def _accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions, ends walsenders), then deletes the data."""
        untrack(self)
        stop_process_group(self._process, signal.SIGINT, timeout=30)
        shutil.rmtree(self.base_dir, ignore_errors=True)


    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def connect(
        self, dbname: str = "postgres", autocommit: bool = True, **kwargs: Any
    ) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(dbname), autocommit=autocommit, **kwargs)

    def create_database(self, prefix: str = "t") -> str:
        """Creates a database with a unique name starting with `prefix` and returns the name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def database(self, prefix: str = "t") -> PgDatabase:
        """Like create_database, returning a handle with the database's own dsn and connect."""
        return PgDatabase(self.create_database(prefix), self)

    def drop_database(self, name: str, timeout: float = 30.0) -> None:
        """Drops a database with its subscriptions and replication slots.

        PostgreSQL refuses to drop a database that has logical slots or subscriptions, and a
        slot cannot be dropped while a walsender holds it, so walsenders are terminated first.
        Publications live inside the database and go with it.
        """
        with self.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                return
            self._drop_subscriptions(conn, name)
            _drop_slots(conn, name, timeout)
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _drop_subscriptions(self, conn: psycopg.Connection[Any], name: str) -> None:
        rows = conn.execute(
            "SELECT s.subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid"
            " WHERE d.datname = %s",
            (name,),
        ).fetchall()
        if not rows:
            return
        with self.connect(name) as sub_conn:
            for (subname,) in rows:
                ident = sql.Identifier(subname)
                # Detach from the remote slot first: it may live in a database being dropped.
                sub_conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
                sub_conn.execute(
                    sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident)
                )
                sub_conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))


@dataclass(frozen=True)
class PgDatabase:
    """A database of its own on a shared throwaway cluster, dropped (with slots) after use."""

    name: str
    server: PostgresServer

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    def connect(self, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
        return self.server.connect(self.name, autocommit=autocommit, **kwargs)


def _children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (from /proc: Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after it.
        if int(stat.rpartition(")")[2].split()[1]) == parent:
            found.append(int(entry))
    return found


def _spawn(args: list[str], base: Path, log_path: Path, mode: str) -> subprocess.Popen[bytes]:
    return spawn_server(args, base, log_path, mode, env=_server_env(),
                        **privileges_for(_OS_USER))


def _server_env() -> dict[str, str]:
    # A C locale keeps initdb from failing on a locale the machine lacks; LC_MESSAGES=C keeps
    # log lines in English so port_conflict can read them.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}


def _initdb(initdb: str, data: Path, base: Path) -> None:
    log_path = base / "initdb.log"
    with open(log_path, "wb") as log:
        result = subprocess.run(
            [
                initdb,
                "-D",
                str(data),
                "-U",
                _OS_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=base,
            env=_server_env(),
            check=False,
            **privileges_for(_OS_USER),
        )
    if result.returncode != 0:
        raise ServiceStartError(
            f"initdb failed with code {result.returncode}; last lines of its log "
            f"({log_path.name}):\n{log_tail(log_path)}"
        )


def _drop_slots(conn: psycopg.Connection[Any], dbname: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        slots = conn.execute(
            "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
            (dbname,),
        ).fetchall()
        if not slots:
            return
        for slot_name, active_pid in slots:
            if active_pid is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (active_pid,))
                continue
            # The slot may be re-acquired or vanish (temporary slots) between query and drop.
            with contextlib.suppress(psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"replication slots of database {dbname!r} still exist after {timeout:.0f}s: "
                f"{[slot for slot, _ in slots]}"
            )
        time.sleep(0.05)
