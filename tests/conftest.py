"""Test harness: real PostgreSQL and real NATS JetStream, started once per run.

By default the embedded servers start under a temporary folder (the same code `dataex up`
uses). With DATAEX_TEST_DATABASE_URL / DATAEX_TEST_NATS_URL set, those servers are used
instead: the run creates its own database and its own stream there and removes both after.
Each test starts from empty tables and an empty stream.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import pytest
from litestar.testing import AsyncTestClient

from exchange.app import create_app
from exchange.identity.service import IdentityService
from exchange.platform.audit import Actor
from exchange.platform.clock import OffsetClock
from exchange.platform.db import create_pool
from exchange.platform.embedded import EmbeddedNats, EmbeddedPostgres
from exchange.platform.settings import Settings
from tests.helpers import prepare_servers


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass(frozen=True)
class TestServers:
    settings: Settings
    admin_database_url: str
    embedded: bool


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _delete_stream(nats_url: str, name: str) -> None:
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().delete_stream(name)
    finally:
        await client.close()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServers]:
    state = tmp_path_factory.mktemp("state")
    postgres = embedded_nats = None
    admin_url = os.environ.get("DATAEX_TEST_DATABASE_URL")
    nats_url = os.environ.get("DATAEX_TEST_NATS_URL")
    run = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        if not admin_url:
            postgres = EmbeddedPostgres(state)
            postgres.start()
            admin_url = postgres.url("postgres")
        if not nats_url:
            embedded_nats = EmbeddedNats(state)
            nats_url = embedded_nats.start()
        database = f"dataex_test_{run}"
        asyncio.run(_create_database(admin_url, database))
        settings = Settings(
            database_url=_with_database(admin_url, database),
            nats_url=nats_url,
            state_dir=Path(state),
            stream_name=f"DATAEX_TEST_{run}",
            subject_prefix=f"dxt{run.replace('_', '')}",
            log_format="json",
        )
        asyncio.run(prepare_servers(settings))
        yield TestServers(settings, admin_url, embedded=postgres is not None)
        asyncio.run(_drop_database(admin_url, database))
        asyncio.run(_delete_stream(nats_url, settings.stream_name))
    finally:
        if embedded_nats is not None:
            embedded_nats.stop()
        if postgres is not None:
            postgres.stop()


async def _clean(settings: Settings) -> None:
    assert settings.database_url and settings.nats_url
    conn = await asyncpg.connect(settings.database_url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        )
        names = ", ".join(f'"{row["tablename"]}"' for row in tables)
        # replica role: the append-only triggers do not fire for this harness-only reset.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    client = await nats.connect(settings.nats_url)
    try:
        await client.jetstream().purge_stream(settings.stream_name)
    finally:
        await client.close()


@pytest.fixture
async def settings(servers: TestServers) -> Settings:
    """Settings pointing at the run's database and stream, emptied for this test."""
    await _clean(servers.settings)
    return servers.settings


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url
    p = await create_pool(settings.database_url, max_size=4)
    yield p
    await p.close()


@pytest.fixture
async def client(settings: Settings, clock: OffsetClock) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(settings, clock=clock)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
async def admin_token(pool: asyncpg.Pool, clock: OffsetClock) -> str:
    issued, _ = await IdentityService(pool, clock).bootstrap(Actor.cli("test"), "测试交易所")
    return issued.token
