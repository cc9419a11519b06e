"""Pytest plugin: real nats-server, PostgreSQL and Kafka-protocol broker on free ports.

Each server is started from its PyPI wheel, waited on by its readiness line (no sleeps) and
stopped at teardown. ``CORMORANT_TEST_NATS_URL``, ``CORMORANT_TEST_DATABASE_URL`` and
``CORMORANT_TEST_KAFKA_BOOTSTRAP`` point the URL fixtures at existing servers instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict

from cormorant.devstack.servers import KafkaBroker, NatsServer, PostgresServer
from cormorant.devstack.servers.nats import NatsUsers, generate_nats_password


class ExternalServers(BaseSettings):
    """Existing servers the suite should use instead of starting its own."""

    model_config = SettingsConfigDict(env_prefix="CORMORANT_TEST_", extra="ignore")

    nats_url: str | None = None
    """A NATS server with JetStream."""

    database_url: str | None = None
    """A PostgreSQL server (asyncpg URL); each test gets a fresh database on it."""

    kafka_bootstrap: str | None = None
    """A Kafka-protocol broker, ``host:port``."""


@pytest.fixture(scope="session")
def external_servers() -> ExternalServers:
    """The ``CORMORANT_TEST_*`` server URLs, if any."""
    return ExternalServers()


def fresh_nats_users() -> NatsUsers:
    """Fresh passwords for a test's nats-server."""
    return NatsUsers(generate_nats_password(), generate_nats_password())


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own (it may kill and restart it), taking passwords as
    the stack's does: ``url`` is the platform user's, ``replica_url`` the replica user's."""
    with NatsServer(tmp_path / "nats", users=fresh_nats_users()) as server:
        yield server


@pytest.fixture
def nats_url(external_servers: ExternalServers, tmp_path: Path) -> Iterator[str]:
    """URL of a NATS server with JetStream: the external one, or a fresh one per test (as the
    platform user of a server that takes passwords, as the stack's does)."""
    if external_servers.nats_url:
        yield external_servers.nats_url
        return
    with NatsServer(tmp_path / "nats", users=fresh_nats_users()) as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_server(
    external_servers: ExternalServers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresServer | None]:
    """One PostgreSQL server for the session (None when an external one is configured)."""
    if external_servers.database_url:
        yield None
        return
    with PostgresServer(tmp_path_factory.mktemp("pg"), durable=False) as server:
        yield server


@pytest.fixture
def database_url(postgres_server: PostgresServer | None, external_servers: ExternalServers) -> str:
    """URL of an empty database of this test's own."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    if postgres_server is not None:
        return postgres_server.create_database(name)
    assert external_servers.database_url
    return _create_external_database(external_servers.database_url, name)


ENDPOINT_SLUG = "iris"
"""The slug of the endpoint ``endpoint_id`` creates."""


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    """A database of this test's own, at the newest migration."""
    from cormorant.common.db import upgrade

    await upgrade(database_url)
    return database_url


@pytest.fixture
async def endpoint_id(migrated_url: str) -> uuid.UUID:
    """The id of the web endpoint ``iris`` (``ENDPOINT_SLUG``), created in the database."""
    import asyncpg

    from cormorant.common.db import asyncpg_dsn

    endpoint = uuid.uuid4()
    conn = await asyncpg.connect(asyncpg_dsn(migrated_url))
    try:
        await conn.execute(
            "INSERT INTO endpoints (id, slug, name, kind, spec) VALUES ($1, $2, $3, 'web', '{}')",
            endpoint,
            ENDPOINT_SLUG,
            ENDPOINT_SLUG,
        )
    finally:
        await conn.close()
    return endpoint


def _create_external_database(url: str, name: str) -> str:
    import asyncio

    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)

    async def create() -> None:
        conn = await asyncpg.connect(
            host=parsed.host, port=parsed.port, user=parsed.username,
            password=parsed.password, database=parsed.database or "postgres",
        )  # fmt: skip
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return parsed.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(
    external_servers: ExternalServers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker shared by the session."""
    if external_servers.kafka_bootstrap:
        yield external_servers.kafka_bootstrap
        return
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker.bootstrap_servers
