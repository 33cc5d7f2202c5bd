"""API delivery under test: grants written through the grant service, a seller's upstream that
records what reaches it, the gateway in-process or as real processes, and the relay."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from aiohttp import web

from exchange.delivery.gateway import Gateway
from exchange.delivery.service import GrantService
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal
from exchange.platform.clock import SystemClock
from exchange.platform.context import Platform
from exchange.platform.events import DeliveryTerms, TradeExecutedData, TradeParty
from exchange.platform.metering import Dimension
from exchange.platform.outbox import relay_batch
from exchange.platform.signing import KeyRing, jwks, load_master_key
from exchange.runtime import ensure_signing_key
from tests.kit.processes import ROOT, clean_env, free_port
from tests.kit.settlement import kill, seed_parties


def service_of(pool: Any, settings: Any) -> GrantService:
    return GrantService(pool, SystemClock(), settings, KeyRing(load_master_key(settings.state_dir)))


@dataclass
class ApiGrant:
    id: uuid.UUID
    buyer: Principal
    product_id: uuid.UUID
    product_code: str
    buyer_uscc: str
    service: GrantService

    async def token(self, ttl: int = 900) -> str:
        issued = await self.service.issue_token(Actor.cli("test"), self.buyer, self.id, ttl)
        return issued.token

    def path(self, tail: str = "v1/rows") -> str:
        return f"/gateway/{self.id}/{tail}"


async def api_grant(
    pool: Any,
    settings: Any,
    upstream_url: str | None,
    *,
    dimensions: list[Dimension] | None = None,
    spend_cap_fen: int | None = None,
) -> ApiGrant:
    """An active API grant of a new buyer for a new product whose upstream is ``upstream_url``:
    written as the delivery room writes it from ``dx.trade.executed`` and ``dx.trade.reserved``."""
    await ensure_signing_key(pool, settings)
    service = service_of(pool, settings)
    async with pool.acquire() as conn, conn.transaction():
        seller, buyers, product = await seed_parties(conn, 1, deposit=0)
        code = await conn.fetchval("SELECT product_code FROM products WHERE id = $1", product)
        trade = uuid.uuid4()
        terms = DeliveryTerms(
            product_id=str(product), revision=1, revision_digest="sha256:" + "0" * 64,
            plan_id="api", pricing="metered" if spend_cap_fen is not None else "subscription",
            modes=["api"], purpose="测试", territory=["CN"], term_days=30,
            dimensions=dimensions or [], spend_cap_fen=spend_cap_fen,
        )  # fmt: skip
        await service.on_trade_executed(conn, TradeExecutedData(
            trade_id=str(trade), order_id=str(uuid.uuid4()), contract_digest="sha256:" + "1" * 64,
            buyer=TradeParty(str(buyers[0][0]), "测试买方", buyers[0][1]),
            seller=TradeParty(str(seller[0]), "测试卖方", seller[1]), product_code=code,
            price_fen=0, fee_fen=0, acceptance_days=3,
            executed_at=datetime.now(UTC).isoformat(), delivery=terms,
        ))  # fmt: skip
        await service.on_trade_reserved(conn, trade)
        grant_id = await conn.fetchval("SELECT id FROM grants WHERE trade_id = $1", trade)
        if upstream_url is not None:
            # What PUT /v1/products/{id}/upstream writes for the seller.
            await conn.execute(
                "INSERT INTO delivery_upstreams (product_id, base_url, registered_by, created_at,"
                " updated_at) VALUES ($1, $2, $3, now(), now())",
                product, upstream_url, seller[0],
            )  # fmt: skip
    buyer = Principal(org_id=buyers[0][0], org_name="测试买方", token_id=uuid.uuid4(),
                      roles=frozenset({"buyer"}), is_operator=False)  # fmt: skip
    return ApiGrant(grant_id, buyer, product, code, buyers[0][1], service)


async def exchange_jwks(pool: Any) -> dict[str, Any]:
    """What ``/.well-known/jwks.json`` publishes."""
    async with pool.acquire() as conn:
        return await jwks(conn)


async def relay(settings: Any, pool: Any) -> int:
    """Publish the outbox to JetStream once, as the relay part does."""
    client = await nats.connect(settings.nats_url)
    try:
        platform = Platform(settings=settings, clock=SystemClock(), pool=pool, nats=client,
                            keyring=KeyRing(load_master_key(settings.state_dir)))  # fmt: skip
        total = 0
        while published := await relay_batch(platform):
            total += published
        return total
    finally:
        await client.close()


# --- the seller's upstream ---------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A seller's API on a local port. It answers ``{"path", "n"}``; ``?report=<header>`` makes
    it report custom units in ``X-Dataex-Metering``, ``?status=<n>`` answer with that status."""

    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        path, _, query = request.raw_path.partition("?")  # as received, still encoded
        self.seen.append(Seen(request.method, path, query, headers, body))
        answer = web.json_response(
            {"path": request.raw_path, "n": len(self.seen)},
            status=int(request.query.get("status", "200")),
        )
        if "report" in request.query:
            answer.headers["X-Dataex-Metering"] = request.query["report"]
        return answer

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def gateway_in_process(settings: Any) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """The gateway started in this process, and a client that calls it without a socket."""
    gateway = Gateway(settings)
    await gateway.start()
    try:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield gateway, client
    finally:
        await gateway.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- real processes ----------------------------------------------------------------------------


def spawn_gateway(settings: Any, port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m exchange.delivery.gateway --port <port>`` on ``settings`` (one worker)."""
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "exchange.delivery.gateway", "--port", str(port)],
            env=clean_env() | settings.to_env()
            | {"DATAEX_LOG_LEVEL": "warning", "DATAEX_LOG_FORMAT": "json"},
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    finally:
        if not isinstance(out, int):
            out.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def wait_answering(url: str, process: subprocess.Popen[bytes], limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not await asyncio.to_thread(_answers, url):
        assert process.poll() is None, f"the gateway at {url} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"the gateway at {url} did not answer in {limit} s"
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def gateway_processes(
    settings: Any, count: int, log: Path | None = None
) -> AsyncIterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """``count`` gateway processes, each on a port of its own; stopped with SIGTERM after."""
    started = []
    try:
        for _ in range(count):
            port = free_port()
            started.append((f"http://127.0.0.1:{port}", spawn_gateway(settings, port, log)))
        for url, process in started:
            await wait_answering(url, process)
        yield started
    finally:
        for _, process in started:
            if process.poll() is None:
                kill(process, signal.SIGTERM)
