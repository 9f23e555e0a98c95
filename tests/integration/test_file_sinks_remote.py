"""WriteChangesToFiles into object stores: S3 (moto server) and GCS (fake-gcs-server).

Every format is written through a real pipeline, then listed and downloaded with the stores'
own clients: only committed ``part-…`` objects are visible, none is a leftover temporary
object, and each reads back (fastavro, pyarrow, JSON) as the events that were written.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import fastavro
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tests.services.gcs import FakeGcsServer
from tests.services.moto import MotoServer
from tests.transforms.test_files_sink import (
    CUSTOMERS,
    ORDERS,
    comparable_events,
    customer,
    order,
    parquet_to_events,
    read_avro,
)
from transforms.envelope import ChangeEvent, TableSchema, from_debezium_json
from transforms.sinks.files import WriteChangesToFiles

pytestmark = pytest.mark.integration

FORMATS = ("avro", "parquet", "jsonl")
PART = re.compile(r"part-\d+-[0-9a-f]{12}-\d{6}\.(avro|parquet|jsonl)")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _events() -> list[ChangeEvent]:
    return [order(n) for n in range(300)] + [customer(n) for n in range(5)]


def _write(uri: str, events: list[ChangeEvent], options: PipelineOptions | None = None,
           **sink_options: Any) -> None:
    with beam.Pipeline(options=options) as pipeline:
        _ = (pipeline
             | "Create" >> beam.Create(events)
             | "WriteChangesToFiles" >> WriteChangesToFiles(uri, **sink_options))


def _decode(fmt: str, data: bytes, table: TableSchema) -> list[ChangeEvent]:
    if fmt == "avro":
        return read_avro(io.BytesIO(data), table)
    if fmt == "parquet":
        return parquet_to_events(pq.read_table(io.BytesIO(data)), table)
    return [from_debezium_json(json.loads(line), table)
            for line in data.decode("utf-8").splitlines()]


def _check_objects(fmt: str, prefix: str, objects: dict[str, Callable[[], bytes]],
                   events: list[ChangeEvent]) -> None:
    """`objects` maps every key under `prefix` to a function downloading it."""
    version = "" if fmt == "jsonl" else "/v=0"
    got = []
    for key, download in objects.items():
        directory, _, name = key.rpartition("/")
        assert PART.fullmatch(name), f"{key} is not a committed part file"
        assert name.endswith(f".{fmt}")
        table = {f"{prefix}/public.orders{version}": ORDERS,
                 f"{prefix}/crm.customers{version}": CUSTOMERS}[directory]
        got += _decode(fmt, download(), table)
    assert comparable_events(got) == comparable_events(events)


# S3


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> Iterator[str]:
    s3 = moto_server.client("s3")
    bucket = _unique("lake")
    s3.create_bucket(Bucket=bucket)
    yield bucket
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    s3.delete_bucket(Bucket=bucket)


def _s3_flags(server: MotoServer) -> list[str]:
    return [f"--s3_endpoint_url={server.endpoint_url}",
            f"--s3_access_key_id={server.access_key}",
            f"--s3_secret_access_key={server.secret_key}",
            f"--s3_region_name={server.region}"]


def _s3_objects(server: MotoServer, bucket: str, prefix: str) -> dict[str, Callable[[], bytes]]:
    s3 = server.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {key: (lambda key=key: s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            for key in keys}


@pytest.mark.parametrize("fmt", FORMATS)
def test_s3_files_configured_by_pipeline_options(moto_server: MotoServer, s3_bucket: str,
                                                 fmt: str) -> None:
    events = _events()
    prefix = f"changes/{fmt}"
    # --s3_* pipeline options reach the sink's workers (and Beam's FileSystems)
    _write(f"{fmt}:s3://{s3_bucket}/{prefix}", events, PipelineOptions(_s3_flags(moto_server)),
           max_file_bytes=4_000, row_group_rows=50)
    objects = _s3_objects(moto_server, s3_bucket, prefix)
    assert len([k for k in objects if "public.orders" in k]) >= 2  # rolled at max_file_bytes
    _check_objects(fmt, prefix, objects, events)


def test_s3_files_configured_by_the_transforms_own_options(moto_server: MotoServer,
                                                           s3_bucket: str) -> None:
    events = _events()
    options = {"s3_endpoint_url": moto_server.endpoint_url,
               "s3_access_key_id": moto_server.access_key,
               "s3_secret_access_key": moto_server.secret_key,
               "s3_region_name": moto_server.region}
    # The pipeline's own options say nothing about S3: the sink's filesystem_options do.
    _write(f"avro:s3://{s3_bucket}/own", events, filesystem_options=options)
    _check_objects("avro", "own", _s3_objects(moto_server, s3_bucket, "own"), events)


# GCS


@pytest.fixture
def gcs_bucket(gcs_server: FakeGcsServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # The sink's google-cloud-storage client finds the emulator the way users point theirs.
    for name, value in gcs_server.env().items():
        monkeypatch.setenv(name, value)
    client = gcs_server.client()
    bucket = client.create_bucket(_unique("lake"))
    yield bucket.name
    for blob in client.list_blobs(bucket.name):
        blob.delete()
    bucket.delete()


def _gcs_objects(server: FakeGcsServer, bucket: str,
                 prefix: str) -> dict[str, Callable[[], bytes]]:
    client = server.client()
    return {blob.name: blob.download_as_bytes
            for blob in client.list_blobs(bucket, prefix=prefix + "/")}


@pytest.mark.parametrize("fmt", FORMATS)
def test_gcs_files(gcs_server: FakeGcsServer, gcs_bucket: str, fmt: str) -> None:
    events = _events()
    prefix = f"changes/{fmt}"
    _write(f"{fmt}:gs://{gcs_bucket}/{prefix}", events, max_file_bytes=4_000, row_group_rows=50)
    objects = _gcs_objects(gcs_server, gcs_bucket, prefix)
    assert len([k for k in objects if "public.orders" in k]) >= 2
    _check_objects(fmt, prefix, objects, events)


def test_gcs_bucket_root_and_a_second_run_never_overwrites(gcs_server: FakeGcsServer,
                                                           gcs_bucket: str) -> None:
    first, second = [order(1)], [order(2)]
    _write(f"avro:gs://{gcs_bucket}", first)
    before = set(_gcs_objects(gcs_server, gcs_bucket, "public.orders"))
    _write(f"avro:gs://{gcs_bucket}/", second)
    after = _gcs_objects(gcs_server, gcs_bucket, "public.orders")
    assert before < set(after)
    got = [e for key, download in after.items() for e in read_avro(io.BytesIO(download()), ORDERS)]
    assert comparable_events(got) == comparable_events(first + second)
    assert all(fastavro.is_avro(io.BytesIO(download())) for download in after.values())


_ROUND_TRIP_THROUGH_BEAM = """
import sys
import google.auth
from apache_beam.io.filesystems import FileSystems
from transforms.gcs_emulator import connect_gcs_emulator_anonymously

lookups = []
def no_credentials(*args, **kwargs):
    lookups.append(args)
    raise google.auth.exceptions.DefaultCredentialsError('none on this machine')
google.auth.default = no_credentials
connect_gcs_emulator_anonymously()
with FileSystems.create(sys.argv[1]) as handle:
    handle.write(b'written by beam')
with FileSystems.open(sys.argv[1]) as handle:
    print(handle.read().decode(), len(lookups))
"""


def test_beams_gcs_filesystem_reaches_the_emulator_without_a_credentials_lookup(
        gcs_server: FakeGcsServer, gcs_bucket: str) -> None:
    """Beam's gs:// filesystem asked google-auth for credentials, five times with backoff
    (~20 s), before it connected to the emulator anonymously: each dead-letter redrive or
    pipeline run against a GCS emulator began with that wait."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    path = f"gs://{gcs_bucket}/beam/object.txt"
    done = subprocess.run([sys.executable, "-c", _ROUND_TRIP_THROUGH_BEAM, path], cwd=repo,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["written", "by", "beam", "0"], done.stderr[-3000:]
    assert gcs_server.client().bucket(gcs_bucket).blob("beam/object.txt") \
        .download_as_bytes() == b"written by beam"


# A network that breaks uploads


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_uploads_cut_by_the_network_are_made_again(store: str, request: pytest.FixtureRequest,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy cuts the sink's connections at random bytes, both ways, all through the run:
    each failed upload is made again from the local spool, and every event arrives once, in
    complete objects only."""
    import random
    import threading

    from tests.services.proxy import CuttingProxy

    monkeypatch.setattr("transforms.retry.FIRST_PAUSE_S", 0.01)
    objects: Callable[[], dict[str, Callable[[], bytes]]]
    if store == "s3":
        moto: MotoServer = request.getfixturevalue("moto_server")
        bucket = request.getfixturevalue("s3_bucket")
        proxy = CuttingProxy.start(moto.port)
        options = {"s3_endpoint_url": f"http://127.0.0.1:{proxy.port}",
                   "s3_access_key_id": moto.access_key,
                   "s3_secret_access_key": moto.secret_key, "s3_region_name": moto.region}
        uri = f"jsonl:s3://{bucket}/cut"
        objects = lambda: _s3_objects(moto, bucket, "cut")  # noqa: E731
    else:
        gcs: FakeGcsServer = request.getfixturevalue("gcs_server")
        bucket = request.getfixturevalue("gcs_bucket")
        proxy = CuttingProxy.start(gcs.port)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.port}")
        options = {}
        uri = f"jsonl:gs://{bucket}/cut"
        objects = lambda: _gcs_objects(gcs, bucket, "cut")  # noqa: E731
    done = threading.Event()

    def cut_again_and_again() -> None:
        rng = random.Random(4)
        while not done.is_set():
            if not proxy.armed:
                proxy.cut_after(rng.randint(1, 20_000), to_server=rng.random() < 0.5)
            done.wait(0.005)

    cutter = threading.Thread(target=cut_again_and_again)
    cutter.start()
    events = _events()
    try:
        _write(uri, events, max_file_bytes=4_000, filesystem_options=options)
    finally:
        done.set()
        cutter.join()
        proxy.close()
    assert proxy.cuts >= 5, proxy.cuts
    _check_objects("jsonl", "cut", objects(), events)
