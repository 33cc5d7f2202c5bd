"""Peers for recognition tests: a simulated peer whose keys the test holds, and two real exchanges.

``Peer`` is the exchange SHDX as another exchange sees it (keys, member credentials,
certificates, feed pages), signed with keys the test holds so that it can forge them too.

``two_exchanges``: each its own database, its own NATS, its own API process.

Exchange A uses the run's database and stream (emptied per test by the `settings` fixture);
exchange B gets a second database on the same PostgreSQL and a NATS server of its own (embedded,
under the test's folder). Each API is `dataex serve api` (granian) on a port of its own, with its
own state folder (so its own master key and signing key); `stop_api` / `start_api` take one
down and bring it back. `trust`, `credentialed_seller`, `list_on`, `until` … are the steps the
two-exchange tests take through the APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.policy.service import PolicyService
from exchange.identity.service import IdentityService
from exchange.listings.lifecycle import product_code
from exchange.listings.schemas import ProductMetadata, RevisionInfo
from exchange.listings.service import CERTIFICATE_TYPE, certificate_claims
from exchange.platform.audit import Actor
from exchange.platform.canonical import sha256_digest
from exchange.platform.clock import SystemClock
from exchange.platform.db import create_pool
from exchange.platform.embedded import EmbeddedNats
from exchange.platform.settings import Settings
from exchange.platform.signing import SigningKey, _kid, public_jwk
from exchange.recognition.schemas import (
    CREDENTIAL_TYPE,
    FEED_TYPE,
    IDENTITY_TYPE,
    FeedClaims,
    FeedItem,
)
from exchange.runtime import ensure_signing_key
from tests.kit.market import Signer
from tests.kit.processes import ROOT, clean_env, free_port
from tests.kit.servers import create_database, drop_database, prepare_servers, with_database


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
    await create_database(admin_database_url, database_b)
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
                database_url=with_database(admin_database_url, database_b),
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
        await drop_database(admin_database_url, database_b)


# --- what a test does through the two exchanges' APIs ------------------------------------------

PROPAGATION_BOUND_S = 5.0  # the bound for a listing event to reach a peer


def stop_api(exchange: Exchange) -> None:
    """Stop the exchange's API process (its database and NATS stay up)."""
    _stop(exchange.process)
    exchange.process = None


async def start_api(exchange: Exchange) -> None:
    """Start the exchange's API process again, on the same port and state folder."""
    log = exchange.settings.state_dir / f"api.{uuid.uuid4().hex[:6]}.log"
    exchange.process = _start_api(exchange.settings, log)
    await _wait_ready(exchange, log)


async def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def register(ex: Exchange, uscc: str, roles: list[str], name: str) -> dict[str, Any]:
    body = {
        "name": name,
        "uscc": uscc,
        "roles": roles,
        "region": "310000",
        "contact": {"name": "张三", "email": "zhang@example.cn", "phone": "+86 21 5555 0000"},
    }
    org: dict[str, Any] = await ok(
        await ex.http.post("/v1/organisations", json=body, headers=ex.headers(ex.admin)), 201
    )
    return org


async def token(ex: Exchange, org_id: str, roles: list[str]) -> str:
    issued = await ok(
        await ex.http.post(
            f"/v1/organisations/{org_id}/tokens",
            json={"name": "t", "roles": roles, "expires_in_days": 30},
            headers=ex.headers(ex.admin),
        ),
        201,
    )
    return str(issued["token"])


async def trust(b: Exchange, a: Exchange) -> dict[str, Any]:
    """B's admin pins A's JWKS (obtained out of band: here, read from A) and trusts A."""
    keys = (await a.http.get("/.well-known/jwks.json")).json()
    peer: dict[str, Any] = await ok(
        await b.http.post(
            "/v1/peers",
            json={"code": a.code, "base_url": a.url, "jwks": keys},
            headers=b.headers(b.admin),
        ),
        201,
    )
    return peer


async def credentialed_seller(a: Exchange, uscc: str) -> dict[str, Any]:
    """A seller on A with its own key and a member credential carrying that key."""
    org = await register(a, uscc, ["seller"], "上海示例数据科技有限公司")
    seller = await token(a, org["id"], ["seller"])
    signer = Signer()
    key = await ok(
        await a.http.post("/v1/keys", json=signer.public, headers=a.headers(seller)), 201
    )
    signer.kid = key["kid"]
    credential = await ok(
        await a.http.post(
            "/v1/member-credentials", json={"org_id": org["id"]}, headers=a.headers(a.admin)
        ),
        201,
    )
    operator = (await a.http.get("/v1/me", headers=a.headers(a.admin))).json()["organisation"]
    reviewer = await token(a, operator["id"], ["reviewer"])
    return {"org": org, "token": seller, "signer": signer, "credential": credential,
            "reviewer": reviewer}  # fmt: skip


async def list_on(a: Exchange, seller: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """Create, submit and approve a product on A; returns it listed."""
    headers = a.headers(seller["token"])
    created = await ok(await a.http.post("/v1/products", json=document, headers=headers), 201)
    submitted = await ok(await a.http.post(f"/v1/products/{created['id']}/submit", headers=headers))
    case_id = submitted["review"]["case_id"]
    reviewer = a.headers(seller["reviewer"])
    await ok(await a.http.post(f"/v1/reviews/{case_id}/claim", headers=reviewer))
    await ok(
        await a.http.post(
            f"/v1/reviews/{case_id}/decisions",
            json={"verdict": "approve", "reason": "ok", "evidence": []},
            headers=reviewer,
        )
    )
    listed: dict[str, Any] = await ok(
        await a.http.get(f"/v1/products/{created['id']}", headers=headers)
    )
    assert listed["state"] == "listed"
    return listed


async def until(check: Any, bound: float = PROPAGATION_BOUND_S) -> float:
    """Seconds until ``check()`` is truthy; fails past ``bound``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > bound:
            raise AssertionError(f"not within {bound}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# --- a peer the test holds the keys of ----------------------------------------------------------

PEER = "SHDX"
SELLER_USCC = "91350100M000100Y43"


class Peer:
    """The peer exchange SHDX as far as this exchange can see it: keys, certificates, feed."""

    def __init__(self, settings: Any) -> None:
        self.settings = replace(settings, exchange_code=PEER, exchange_name="上海示例数据交易所")
        self.key = self.new_key()
        self.jwks = {"keys": [public_jwk(self.key.private.public_key(), self.key.kid)]}
        self.seller_key = Ed25519PrivateKey.generate()
        self.items: list[FeedItem] = []

    @staticmethod
    def new_key() -> SigningKey:
        private = Ed25519PrivateKey.generate()
        return SigningKey(_kid(private.public_key()), private)

    def identity(self) -> str:
        claims = {"iss": PEER, "code": PEER, "name": self.settings.exchange_name,
                  "jwks": self.jwks, "feed_url": "http://127.0.0.1:9/v1/recognition/feed",
                  "iat": 0}  # fmt: skip
        return self.key.sign_compact(claims, typ=IDENTITY_TYPE)

    def credential(self, at: datetime, key: SigningKey | None = None) -> str:
        seller = public_jwk(self.seller_key.public_key(), _kid(self.seller_key.public_key()))
        claims = {
            "iss": PEER, "jti": str(uuid.uuid4()), "sub": str(uuid.uuid4()),
            "name": "上海示例数据科技有限公司", "uscc": SELLER_USCC, "roles": ["seller"],
            "region": "310000",
            "contact": {"name": "张三", "email": "zhang@example.cn", "phone": "+86 21 5555 0000"},
            "keys": {"keys": [seller]}, "iat": int(at.timestamp()),
            "exp": int((at + timedelta(days=365)).timestamp()),
        }  # fmt: skip
        return (key or self.key).sign_compact(claims, typ=CREDENTIAL_TYPE)

    def certificate(
        self,
        document: dict[str, Any],
        revision: int,
        at: datetime,
        key: SigningKey | None = None,
        code: str = product_code(PEER, 2026, 1),
    ) -> str:
        typed = msgspec.convert(document, ProductMetadata)
        info = RevisionInfo(
            number=revision, digest=sha256_digest(typed), change="initial", created_at=at,
            metadata=typed,
        )  # fmt: skip
        claims = certificate_claims(
            self.settings, code, info, "上海示例数据科技有限公司", SELLER_USCC, at
        )
        return (key or self.key).sign_compact(claims, typ=CERTIFICATE_TYPE)

    def page(self, after: int, limit: int | None = None) -> dict[str, str]:
        items = [i for i in self.items if i.seq > after][:limit]
        claims = FeedClaims(iss=PEER, after=after, items=items,
                            next_after=items[-1].seq if items else after, iat=0)  # fmt: skip
        return {"jws": self.key.sign_compact(msgspec.to_builtins(claims), typ=FEED_TYPE)}
