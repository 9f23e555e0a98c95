"""Throwaway real services for tests, benchmarks and demos.

Each service module starts a private instance on a free loopback port in its own temporary
directory, waits until it answers, and deletes everything again on ``stop()``:

    from tests.services.postgres import PostgresServer
    with PostgresServer.start() as pg:
        print(pg.dsn())

pytest-postgresql and pytest-mysql were not used: they run initdb/pg_ctl and mysqld as the
current user, which PostgreSQL refuses as root (our machines and CI run as root), and neither
drops a database's replication slots before dropping it, which every logical-replication test
needs.

This package holds only what all the service modules share: the errors, free ports, privilege
dropping, waiting for readiness and stopping process groups.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

__all__ = [
    "MissingBinaryError",
    "ServiceError",
    "ServiceStartError",
    "free_port",
    "log_tail",
    "make_private_dir",
    "port_conflict",
    "privileges_for",
    "require_binary",
    "stop_process_group",
    "track",
    "untrack",
    "wait_until_ready",
]


class ServiceError(RuntimeError):
    """A throwaway service could not be provided."""


class MissingBinaryError(ServiceError):
    """A server binary is not installed; the message names the Debian package providing it."""


class ServiceStartError(ServiceError):
    """A server was found but did not become ready; the message carries its log's tail."""


_S = TypeVar('_S', bound='Service')


class Service:
    """A started server: ``with Server.start() as server:`` stops it on leaving the block."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Stoppable(Protocol):
    def stop(self) -> None: ...


class _Launched(Protocol):
    """A server process as launch_until_ready handles it."""

    _process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None: ...


_L = TypeVar('_L', bound=_Launched)


def require_binary(path_or_name: str | Path, package: str) -> str:
    """Returns the absolute path of an executable, or raises naming the package to install."""
    candidate = str(path_or_name)
    if os.sep in candidate:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    else:
        found = shutil.which(candidate)
        if found:
            return found
    raise MissingBinaryError(
        f"{candidate} not found; install the Debian package {package} (apt-get install {package})"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; callers retry on a bind conflict (see port_conflict)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_conflict(log_text: str) -> bool:
    """Whether a server log says another process took our port between pick and bind."""
    return "Address already in use" in log_text or "could not bind" in log_text


def log_tail(path: str | Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def privileges_for(user: str) -> dict[str, Any]:
    """Popen keyword arguments that run the child as `user` when we are root, else nothing.

    Popen switches user in the forked child itself, so the server is our direct child (no
    runuser or su in between to forward signals) and we can wait for it.
    """
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def spawn_server(args: list[str], cwd: Path, log_path: Path, mode: str = "wb",
                 **popen: Any) -> subprocess.Popen[bytes]:
    """A server process in its own session, output to ``log_path`` (``mode`` "ab" appends,
    as a restart does)."""
    with open(log_path, mode) as log:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                **popen)


def make_private_dir(prefix: str, owner: str | None = None) -> Path:
    """A fresh 0700 temp dir; when we are root it is handed to `owner` (the server's user)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None and os.geteuid() == 0:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def wait_until_ready(
    what: str,
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes] | None,
    log_path: str | Path,
    timeout: float,
    interval: float = 0.05,
) -> None:
    """Polls `ready` until it returns True; raises with the log's tail on exit or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ServiceStartError(
                f"{what} exited with code {process.returncode} while starting; "
                f"last lines of its log ({Path(log_path).name}):\n{log_tail(log_path)}"
            )
        # The Pub/Sub emulator's JVM lives on after failing to bind: read the log, not only the
        # exit status, to notice that another process took the port.
        if port_conflict(log_tail(log_path)):
            raise ServiceStartError(
                f"{what} could not bind its port; "
                f"last lines of its log ({Path(log_path).name}):\n{log_tail(log_path)}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise ServiceStartError(
                f"{what} did not become ready within {timeout:.0f}s; "
                f"last lines of its log ({Path(log_path).name}):\n{log_tail(log_path)}"
            )
        time.sleep(interval)


def stop_process_group(
    process: subprocess.Popen[bytes], first_signal: int = signal.SIGTERM, timeout: float = 30.0
) -> None:
    """Asks a server to shut down, then kills its whole process group if it does not.

    Servers are started with start_new_session=True, so their pid is their group id and a
    Ctrl-C aimed at pytest does not reach them before the harness stops them in order. The
    group is killed only while its leader is still unreaped, so the id cannot have been reused.
    """
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(first_signal)
    try:
        process.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


_LIVE: set[_Stoppable] = set()
_LIVE_LOCK = threading.Lock()


def track(server: _Stoppable) -> None:
    """Registers a started server so that interpreter exit stops it if nobody else did."""
    with _LIVE_LOCK:
        _LIVE.add(server)


def untrack(server: _Stoppable) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(server)


@atexit.register
def _stop_leftovers() -> None:
    with _LIVE_LOCK:
        leftovers = list(_LIVE)
    for server in leftovers:
        with contextlib.suppress(Exception):
            server.stop()


PORT_ATTEMPTS = 3


def launch_until_ready(launch: Callable[[], _L], name: Callable[[_L], str],
                       ready: Callable[[_L], bool], timeout: float,
                       abort_signal: int = signal.SIGKILL) -> _L:
    """Launches a server (each attempt on a fresh free port) until it answers.

    A port taken between picking and binding it is retried; any other failure, or Ctrl-C,
    stops the half-started process and raises: no server is ever left behind.
    """
    for attempt in range(1, PORT_ATTEMPTS + 1):
        server = launch()
        try:
            wait_until_ready(name(server), functools.partial(ready, server), server._process,
                             server.log_path, timeout)
        except BaseException as exc:
            stop_process_group(server._process, abort_signal, timeout=5)
            if (isinstance(exc, ServiceStartError) and attempt < PORT_ATTEMPTS
                    and port_conflict(log_tail(server.log_path))):
                continue
            raise
        track(server)
        return server
    raise AssertionError("unreachable")  # the loop returns or raises
