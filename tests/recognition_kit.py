"""Two exchanges for recognition tests: each its own database, its own NATS, its own API process.

Exchange A uses the run's database and stream (emptied per test by the `settings` fixture);
exchange B gets a second database on the same PostgreSQL and a NATS server of its own (embedded,
under the test's folder). Each API is `dataex serve api` (granian) on a port of its own, with its
own state folder (so its own master key and signing key).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from contracts.policy.service import PolicyService
from exchange.identity.service import IdentityService
from exchange.platform.audit import Actor
from exchange.platform.clock import SystemClock
from exchange.platform.db import create_pool
from exchange.platform.embedded import EmbeddedNats
from exchange.platform.settings import Settings
from exchange.runtime import ensure_signing_key
from tests.conftest import _create_database, _drop_database, _with_database
from tests.helpers import clean_env, prepare_servers

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Exchange:
    code: str
    settings: Settings
    url: str
    admin: str
    pool: asyncpg.Pool
    http: httpx.AsyncClient
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


async def _prepare(settings: Settings) -> str:
    """Migrate, stream, first policy list, signing key; returns a bootstrap admin token."""
    await prepare_servers(settings)
    assert settings.database_url
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        await PolicyService(pool, SystemClock()).ensure_initial_list(Actor.cli("test"))
        await ensure_signing_key(pool, settings)
        issued, _ = await IdentityService(pool, SystemClock()).bootstrap(
            Actor.cli("test"), settings.exchange_name
        )
        return issued.token
    finally:
        await pool.close()


def _start_api(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = clean_env(**(settings.to_env() | {"DATAEX_LOG_LEVEL": "warning"}))
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "exchange.cli", "serve", "api"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _wait_ready(exchange: Exchange, log: Path, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert exchange.process is not None
        if exchange.process.poll() is not None:
            raise AssertionError(f"{exchange.code} API exited; its log is {log}")
        with contextlib.suppress(httpx.HTTPError):
            if (await exchange.http.get("/health/live")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{exchange.code} API not live after {within}s; its log is {log}")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def two_exchanges(
    settings: Settings, admin_database_url: str, folder: Path
) -> AsyncIterator[tuple[Exchange, Exchange]]:
    """Exchange A (code SHDX) on the test run's servers; exchange B (code SZDX) on a database
    and a NATS server of its own. Both APIs pull their peers' feeds every 200 ms."""
    database_b = f"dataex_recog_b_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    await _create_database(admin_database_url, database_b)
    nats_b = EmbeddedNats(folder / "b")
    exchanges: list[Exchange] = []
    try:
        nats_b_url = nats_b.start()
        configs = [
            replace(
                settings,
                exchange_code="SHDX",
                exchange_name="上海示例数据交易所",
                state_dir=folder / "a",
                http_port=free_port(),
                peer_poll_ms=200,
            ),
            replace(
                settings,
                database_url=_with_database(admin_database_url, database_b),
                nats_url=nats_b_url,
                stream_name="DATAEX_B",
                subject_prefix="dxb",
                exchange_code="SZDX",
                exchange_name="深圳示例数据交易所",
                state_dir=folder / "b",
                http_port=free_port(),
                peer_poll_ms=200,
            ),
        ]
        for config in configs:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            admin = await _prepare(config)
            assert config.database_url
            exchange = Exchange(
                code=config.exchange_code,
                settings=config,
                url=config.public_url,
                admin=admin,
                pool=await create_pool(config.database_url, max_size=2),
                http=httpx.AsyncClient(base_url=config.public_url, timeout=10),
            )
            exchanges.append(exchange)
            log = config.state_dir / "api.log"
            exchange.process = _start_api(config, log)
            exchange.extra["log"] = log
        for exchange in exchanges:
            await _wait_ready(exchange, exchange.extra["log"])
        yield exchanges[0], exchanges[1]
    finally:
        for exchange in exchanges:
            _stop(exchange.process)
            await exchange.http.aclose()
            await exchange.pool.close()
        nats_b.stop()
        await _drop_database(admin_database_url, database_b)
