"""A moto server (S3, SQS, SNS and the rest of AWS, faked over real HTTP) on 127.0.0.1.

    server = MotoServer.start()
    s3 = server.client('s3')
    server.stop()

It runs in a thread of this process on a port the OS picks at bind time, so there is no port
race. Its state lives in this process's moto backends: use unique bucket and queue names.
"""

from __future__ import annotations

from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from tests.services import Service, track, untrack

__all__ = ["MotoServer"]


class MotoServer(Service):
    """A running moto server; `client(service)` returns a boto3 client pointed at it."""

    region = "us-east-1"
    access_key = "testing"
    secret_key = "testing"

    def __init__(self, server: ThreadedMotoServer) -> None:
        self._server: ThreadedMotoServer | None = server
        host, port = server.get_host_and_port()
        self.port = port
        self.endpoint_url = f"http://{host}:{port}"

    @classmethod
    def start(cls) -> MotoServer:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        instance = cls(server)
        track(instance)
        return instance

    def client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client for `service` ('s3', 'sqs', 'sns', ...) using this server."""
        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }
        options.update(kwargs)
        return boto3.session.Session().client(service, **options)

    def env(self) -> dict[str, str]:
        """Environment that points AWS SDKs and the AWS CLI at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def stop(self) -> None:
        untrack(self)
        if self._server is not None:
            server, self._server = self._server, None
            server.stop()

