"""A throwaway MariaDB server writing a full ROW binlog with GTIDs.

    server = MariaDBServer.start()           # or: with MariaDBServer.start() as server:
    name = server.create_database()
    with server.connect(name) as conn: ...
    server.stop()                            # shuts mariadbd down and deletes the datadir

`--no-defaults` everywhere: the machine's own my.cnf and MariaDB service (port 3306) must
neither configure nor notice this instance. root has no password from 127.0.0.1, localhost
and the socket in the datadir.
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

import pymysql
import pymysql.connections

from tests.services import (
    Service,
    ServiceStartError,
    free_port,
    launch_until_ready,
    log_tail,
    make_private_dir,
    require_binary,
    spawn_server,
    stop_process_group,
    untrack,
    wait_until_ready,
)

__all__ = ["MariaDBDatabase", "MariaDBServer"]

_PACKAGE = "mariadb-server"
_OS_USER = "mysql"
_START_TIMEOUT_S = 60.0

# What CDC needs (FACTS.md): without binlog_row_metadata=FULL the binlog carries no column
# names. Durability knobs are relaxed because the instance is thrown away.
_BASE_SETTINGS: dict[str, str] = {
    "server-id": "1",
    "binlog-format": "ROW",
    "binlog-row-image": "FULL",
    "binlog-row-metadata": "FULL",
    "gtid-strict-mode": "1",
    "character-set-server": "utf8mb4",
    "collation-server": "utf8mb4_unicode_ci",
    "default-time-zone": "+00:00",
    "innodb-flush-log-at-trx-commit": "0",
    "innodb-doublewrite": "0",
    "innodb-buffer-pool-size": "64M",
    "innodb-log-file-size": "16M",
    "skip-name-resolve": "1",
}


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _user_args() -> list[str]:
    # mariadbd drops to --user itself, and only when started as root.
    return [f"--user={_OS_USER}"] if os.geteuid() == 0 else []


class MariaDBServer(Service):
    """A running throwaway server; `stop()` (or leaving the `with` block) deletes it."""

    user = "root"

    def __init__(
        self, base_dir: Path, port: int, process: subprocess.Popen[bytes], log_path: Path
    ) -> None:
        self.base_dir = base_dir
        self.datadir = str(base_dir / "data")
        self.socket = str(base_dir / "data" / "sock")
        self.port = port
        self.log_path = log_path
        self._process = process
        self._args: list[str] = []

    @classmethod
    def start(
        cls, extra_settings: dict[str, Any] | None = None, *, timeout: float = _START_TIMEOUT_S
    ) -> MariaDBServer:
        """Initializes and starts a server; `extra_settings` are extra mariadbd options
        (`{'max-binlog-size': '1M'}` becomes `--max-binlog-size=1M`)."""
        install_db = require_binary("mariadb-install-db", _PACKAGE)
        mariadbd = require_binary("mariadbd", _PACKAGE)
        settings = {**_BASE_SETTINGS, **{k: _render(v) for k, v in (extra_settings or {}).items()}}

        base = make_private_dir("changebeam-mariadb-", owner=_OS_USER)
        try:
            _install_db(install_db, base, settings)
            server = launch_until_ready(
                lambda: cls._launch(mariadbd, base, settings),
                lambda s: f"mariadbd (port {s.port})",
                MariaDBServer._accepts_connections,
                timeout,
                signal.SIGKILL,
            )
            try:
                server._remove_anonymous_users()
            except BaseException:
                server.stop()
                raise
            return server
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise

    @classmethod
    def _launch(cls, mariadbd: str, base: Path, settings: dict[str, str]) -> MariaDBServer:
        port = free_port()
        data = base / "data"
        # No --log-error: mariadbd then logs to stderr, so option errors raised before an
        # error log would open land in the same file as everything else.
        log_path = base / "mariadbd.log"
        args = [
            mariadbd,
            "--no-defaults",
            *_user_args(),
            f"--datadir={data}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={data / 'sock'}",
            f"--pid-file={data / 'mariadbd.pid'}",
            f"--log-bin={data / 'bin'}",
            *(f"--{name}={value}" for name, value in settings.items()),
        ]
        server = cls(base, port, spawn_server(args, base, log_path), log_path)  # a fresh log
        server._args = args
        return server

    def restart(self, down_secs: float = 0.0, timeout: float = _START_TIMEOUT_S) -> None:
        """Clean shutdown (clients see their connections end), ``down_secs`` without a
        server, then the same server again on the same port."""
        stop_process_group(self._process, signal.SIGTERM, timeout=30)
        time.sleep(down_secs)
        self._process = spawn_server(self._args, self.base_dir, self.log_path, "ab")
        wait_until_ready(f"mariadbd (port {self.port})", self._accepts_connections,
                         self._process, self.log_path, timeout)

    def freeze(self) -> None:
        """Stops the server (SIGSTOP: one process, all its threads): connections stay open and
        nothing answers, as with a hung server."""
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Lets a frozen server run on."""
        os.kill(self._process.pid, signal.SIGCONT)

    def _accepts_connections(self) -> bool:
        # read_timeout too: whatever else holds the port may accept and then never greet us.
        try:
            self.connect(connect_timeout=1, read_timeout=1, write_timeout=1).close()
        except pymysql.err.OperationalError:
            return False
        return True

    def _remove_anonymous_users(self) -> None:
        # An anonymous ''@localhost would win over user@'%' for local connections.
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT Host FROM mysql.user WHERE User = ''")
            for (host,) in cur.fetchall():
                cur.execute("DROP USER ''@%s", (host,))

    def stop(self) -> None:
        """Clean shutdown (SIGTERM), then deletes the datadir."""
        untrack(self)
        stop_process_group(self._process, signal.SIGTERM, timeout=30)
        shutil.rmtree(self.base_dir, ignore_errors=True)


    def dsn(self, db: str = "") -> str:
        return f"mysql://{self.user}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str | None = None, **kwargs: Any) -> pymysql.connections.Connection:
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "password": "",
            "database": db,
            "autocommit": True,
            "charset": "utf8mb4",
        }
        options.update(kwargs)
        return pymysql.connect(**options)

    def create_database(self, prefix: str = "t") -> str:
        """Creates a database with a unique name starting with `prefix` and returns the name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        return name

    def database(self, prefix: str = "t") -> MariaDBDatabase:
        """Like create_database, returning a handle with the database's own dsn and connect."""
        return MariaDBDatabase(self.create_database(prefix), self)

    def drop_database(self, name: str) -> None:
        """Drops a database, first killing sessions using it (their locks would block the drop)."""
        if "`" in name:
            raise ValueError(f"database name {name!r} contains a backtick")
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT id FROM information_schema.processlist"
                " WHERE db = %s AND id <> CONNECTION_ID()",
                (name,),
            )
            for (session_id,) in cur.fetchall():
                # The session may end on its own in between.
                with contextlib.suppress(pymysql.err.OperationalError):
                    cur.execute(f"KILL {int(session_id)}")
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@dataclass(frozen=True)
class MariaDBDatabase:
    """A database of its own on a shared throwaway server, dropped after use."""

    name: str
    server: MariaDBServer

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    def connect(self, **kwargs: Any) -> pymysql.connections.Connection:
        return self.server.connect(self.name, **kwargs)


def _install_db(install_db: str, base: Path, settings: dict[str, str]) -> None:
    log_path = base / "install.log"
    # Only the settings that shape the files on disk matter at install time.
    innodb = [f"--{k}={v}" for k, v in settings.items() if k.startswith("innodb-")]
    with open(log_path, "wb") as log:
        result = subprocess.run(
            [
                install_db,
                "--no-defaults",
                *_user_args(),
                f"--datadir={base / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *innodb,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=base,
            check=False,
        )
    if result.returncode != 0:
        raise ServiceStartError(
            f"mariadb-install-db failed with code {result.returncode}; last lines of its log "
            f"({log_path.name}):\n{log_tail(log_path)}"
        )
