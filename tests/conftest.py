"""Fixtures for real throwaway services; each starts only when a test asks for it.

Session fixtures start one server per test session and stop it (deleting its data) at the end;
`pg_db` and `mariadb_db` give each test its own database on that server. A missing server
binary makes the fixture error with the Debian package to install; it never skips.
The servers themselves live in tests/services/ so benchmarks and demos can start them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from tests.services.gcs import FakeGcsServer
    from tests.services.mariadb import MariaDBDatabase, MariaDBServer
    from tests.services.moto import MotoServer
    from tests.services.postgres import PgDatabase, PostgresServer
    from tests.services.pubsub import PubSubEmulator

# Property tests check values, not speed: the shared machines tests run on swing several-fold
# in CPU speed from one day to the next (a plain Python loop ran 3-4x slower on one), and a
# per-example deadline or the too-slow health check would fail a correct test there.
settings.register_profile('changebeam', deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile('changebeam')

# The service modules are imported inside the fixtures: together they take ~0.6 s to import
# (moto, boto3, psycopg), which unit-test runs should not pay.


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    from tests.services.postgres import PostgresServer

    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture
def pg_db(postgres: PostgresServer) -> Iterator[PgDatabase]:
    database = postgres.database()
    yield database
    postgres.drop_database(database.name)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    from tests.services.mariadb import MariaDBServer

    server = MariaDBServer.start()
    yield server
    server.stop()


@pytest.fixture
def mariadb_db(mariadb: MariaDBServer) -> Iterator[MariaDBDatabase]:
    database = mariadb.database()
    yield database
    mariadb.drop_database(database.name)


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator]:
    from tests.services.pubsub import PubSubEmulator

    emulator = PubSubEmulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    from tests.services.moto import MotoServer

    server = MotoServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcsServer]:
    from tests.services.gcs import FakeGcsServer
    from transforms.gcs_emulator import connect_gcs_emulator_anonymously

    connect_gcs_emulator_anonymously()  # tests in this process that set STORAGE_EMULATOR_HOST
    server = FakeGcsServer.start()
    yield server
    server.stop()
