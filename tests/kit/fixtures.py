"""The shared fixtures, a pytest plugin registered by tests/conftest.py.

``servers`` starts the run's PostgreSQL and NATS JetStream once, the first time a test needs
them (tests.kit.servers says which); ``settings`` empties both for each test that asks. On top:
``pool``, ``client`` (the app in-process), ``admin_token`` (the operator's bootstrap token),
``market`` and ``trade`` (tests.kit.market).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from exchange.app import create_app
from exchange.identity.service import IdentityService
from exchange.platform.audit import Actor
from exchange.platform.clock import OffsetClock
from exchange.platform.db import create_pool
from exchange.platform.embedded import EmbeddedNats, EmbeddedPostgres
from exchange.platform.settings import Settings
from tests.kit.market import add_buyer, open_market
from tests.kit.servers import (
    TestServers,
    clean,
    create_database,
    delete_stream,
    drop_database,
    prepare_servers,
    with_database,
)


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
        asyncio.run(create_database(admin_url, database))
        settings = Settings(
            database_url=with_database(admin_url, database),
            nats_url=nats_url,
            state_dir=Path(state),
            stream_name=f"DATAEX_TEST_{run}",
            subject_prefix=f"dxt{run.replace('_', '')}",
            log_format="json",
            # A test trade of the 'std' plan holds 1,010,000 fen: one reviewer resolves its
            # disputes; a trade of two units (2,020,000 fen) needs two (tests.kit.disputes).
            dispute_four_eyes_fen=2_000_000,
        )
        asyncio.run(prepare_servers(settings))
        yield TestServers(settings, admin_url, embedded=postgres is not None)
        asyncio.run(drop_database(admin_url, database))
        asyncio.run(delete_stream(nats_url, settings.stream_name))
    finally:
        if embedded_nats is not None:
            embedded_nats.stop()
        if postgres is not None:
            postgres.stop()


@pytest.fixture
async def settings(servers: TestServers) -> Settings:
    """Settings pointing at the run's database and stream, emptied for this test."""
    await clean(servers.settings)
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
async def client(
    settings: Settings, clock: OffsetClock
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(settings, clock=clock)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
async def admin_token(pool: asyncpg.Pool, clock: OffsetClock) -> str:
    issued, _ = await IdentityService(pool, clock).bootstrap(Actor.cli("test"), "测试交易所")
    return issued.token


@pytest.fixture
async def market(
    client: Any, admin_token: str, pool: asyncpg.Pool, clock: OffsetClock, settings: Settings
) -> dict[str, Any]:
    """Two sellers and two reviewers, the first policy list and a signing key."""
    return await open_market(client, admin_token, pool, clock, settings)


@pytest.fixture
async def trade(client: Any, admin_token: str, market: dict[str, Any]) -> dict[str, Any]:
    """The market, a buyer, and an Ed25519 key each for the seller and the buyer."""
    return await add_buyer(client, admin_token, market)
