"""The throwaway services behave as the CDC tests built on them assume."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pymysql
import pytest
from google.cloud import pubsub_v1

from tests.services import MissingBinaryError
from tests.services.mariadb import MariaDBDatabase, MariaDBServer
from tests.services.moto import MotoServer
from tests.services.postgres import PgDatabase, PostgresServer
from tests.services.pubsub import PubSubEmulator

pytestmark = pytest.mark.integration


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# PostgreSQL


def test_postgres_runs_with_logical_wal(pg_db: PgDatabase) -> None:
    with pg_db.connect() as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        assert int(conn.execute("SHOW max_replication_slots").fetchone()[0]) >= 32


def test_postgres_creates_and_drops_a_pgoutput_slot(pg_db: PgDatabase) -> None:
    slot = "s_" + uuid.uuid4().hex[:10]
    with pg_db.connect() as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        row = conn.execute(
            "SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        assert row == ("pgoutput", pg_db.name)
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        gone = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        assert gone.fetchone() is None


@pytest.mark.parametrize("host", ["socket", "127.0.0.1"])
def test_postgres_accepts_replication_connections(pg_db: PgDatabase, host: str) -> None:
    server = pg_db.server
    conninfo = pg_db.dsn + "&replication=database"
    if host != "socket":
        conninfo = f"host={host} port={server.port} user=postgres dbname={pg_db.name}"
        conninfo += " replication=database"
    pgconn = psycopg.pq.PGconn.connect(conninfo.encode())
    try:
        assert pgconn.status == psycopg.pq.ConnStatus.OK, pgconn.get_error_message()
        result = pgconn.exec_(b"IDENTIFY_SYSTEM")
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK
        assert result.get_value(0, 3) == pg_db.name.encode()  # dbname column
    finally:
        pgconn.finish()


def test_postgres_databases_are_isolated(pg_db: PgDatabase, postgres: PostgresServer) -> None:
    other = postgres.database()
    try:
        assert other.name != pg_db.name
        for db, value in ((pg_db, "mine"), (other, "theirs")):
            with db.connect() as conn:
                conn.execute("CREATE TABLE items (v text)")
                conn.execute("INSERT INTO items VALUES (%s)", (value,))
        with pg_db.connect() as conn:
            assert conn.execute("SELECT v FROM items").fetchall() == [("mine",)]
        with other.connect() as conn:
            assert conn.execute("SELECT v FROM items").fetchall() == [("theirs",)]
    finally:
        postgres.drop_database(other.name)


def test_postgres_drop_database_ends_a_streaming_slot(postgres: PostgresServer) -> None:
    name = postgres.create_database("drop")
    with postgres.connect(name) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("CREATE PUBLICATION pub FOR ALL TABLES")
    stream = psycopg.pq.PGconn.connect((postgres.dsn(name) + "&replication=database").encode())
    try:
        created = stream.exec_(b"CREATE_REPLICATION_SLOT busy LOGICAL pgoutput")
        assert created.status == psycopg.pq.ExecStatus.TUPLES_OK, stream.get_error_message()
        started = stream.exec_(
            b"START_REPLICATION SLOT busy LOGICAL 0/0 (proto_version '1', publication_names 'pub')"
        )
        assert started.status == psycopg.pq.ExecStatus.COPY_BOTH, stream.get_error_message()
        with postgres.connect() as conn:
            active = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'busy'"
            ).fetchone()
            assert active == (True,)

        postgres.drop_database(name)

        with postgres.connect() as conn:
            assert (
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
                is None
            )
            assert conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall() == []
    finally:
        stream.finish()


# MariaDB


def test_mariadb_writes_a_full_row_binlog_with_gtids(mariadb_db: MariaDBDatabase) -> None:
    with mariadb_db.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata,"
            " @@gtid_strict_mode"
        )
        assert cur.fetchone() == (1, "ROW", "FULL", "FULL", 1)
        cur.execute("CREATE TABLE items (id INT PRIMARY KEY, v TEXT)")
        cur.execute("INSERT INTO items VALUES (1, 'a')")
        cur.execute("SELECT @@gtid_binlog_pos")
        (position,) = cur.fetchone()
        assert position.startswith("0-1-"), position  # domain 0, server_id 1


def test_mariadb_users_for_any_host_can_log_in_locally(mariadb: MariaDBServer) -> None:
    # Anonymous ''@localhost accounts would shadow cdc@'%' for connections from this machine.
    user = "u" + uuid.uuid4().hex[:10]
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
        cur.execute(f"GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{user}'@'%'")
    try:
        for where in ({}, {"unix_socket": mariadb.socket}):
            with mariadb.connect(user=user, password="pw", **where) as conn, conn.cursor() as cur:
                cur.execute("SELECT CURRENT_USER()")
                assert cur.fetchone() == (f"{user}@%",)
    finally:
        with mariadb.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER '{user}'@'%'")


def test_mariadb_databases_are_isolated(
    mariadb_db: MariaDBDatabase, mariadb: MariaDBServer
) -> None:
    other = mariadb.database()
    try:
        for db, value in ((mariadb_db, "mine"), (other, "theirs")):
            with db.connect() as conn, conn.cursor() as cur:
                cur.execute("CREATE TABLE items (v TEXT)")
                cur.execute("INSERT INTO items VALUES (%s)", (value,))
        with mariadb_db.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT v FROM items")
            assert cur.fetchall() == (("mine",),)
    finally:
        mariadb.drop_database(other.name)
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE %s", (other.name,))
        assert cur.fetchall() == ()


# Pub/Sub emulator


def test_pubsub_emulator_round_trips_a_message(
    pubsub_emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in pubsub_emulator.env().items():
        monkeypatch.setenv(key, value)
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(pubsub_emulator.project, _unique("topic"))
    subscription = subscriber.subscription_path(pubsub_emulator.project, _unique("sub"))
    try:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        publisher.publish(topic, b'{"op": "c"}', table="public.items").result(timeout=30)

        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=30)
        assert [m.message.data for m in response.received_messages] == [b'{"op": "c"}']
        assert response.received_messages[0].message.attributes["table"] == "public.items"
        subscriber.acknowledge(
            subscription=subscription, ack_ids=[response.received_messages[0].ack_id]
        )
    finally:
        subscriber.close()
        publisher.transport.close()


# moto


def test_moto_stores_and_returns_an_s3_object(moto_server: MotoServer) -> None:
    s3 = moto_server.client("s3")
    bucket = _unique("bucket")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="public.items/1.jsonl", Body=b'{"id": 1}\n')
    body = s3.get_object(Bucket=bucket, Key="public.items/1.jsonl")["Body"].read()
    assert body == b'{"id": 1}\n'


def test_moto_round_trips_an_sqs_message(moto_server: MotoServer) -> None:
    sqs = moto_server.client("sqs")
    queue_url = sqs.create_queue(QueueName=_unique("queue"))["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="hello")
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=5)[
        "Messages"
    ]
    assert [m["Body"] for m in messages] == ["hello"]
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"


# The harness itself


@pytest.mark.parametrize("service", [PostgresServer, MariaDBServer, PubSubEmulator])
def test_stop_ends_every_process_and_deletes_the_data(service: type) -> None:
    server = service.start()
    base_dir: Path = server.base_dir
    pid = server._process.pid
    assert base_dir.exists()

    server.stop()
    server.stop()  # a second stop (e.g. the atexit safety net) is harmless

    assert not base_dir.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_missing_postgres_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHANGEBEAM_PG_BINDIR", "/nonexistent/bin")
    with pytest.raises(MissingBinaryError, match=r"initdb.*postgresql-15"):
        PostgresServer.start()


def test_mariadb_dsn_reaches_the_server(mariadb_db: MariaDBDatabase) -> None:
    assert mariadb_db.dsn == f"mysql://root@127.0.0.1:{mariadb_db.server.port}/{mariadb_db.name}"
    with (
        pymysql.connect(
            host="127.0.0.1", port=mariadb_db.server.port, user="root", database=mariadb_db.name
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == (mariadb_db.name,)
