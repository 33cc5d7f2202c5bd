"""Shared set-up for settlement tests: a worker's consumer in-process, and the runs of the fault
tests (real `dataex serve` processes, then the invariants). Executed trades over HTTP are built
by tests.kit.market."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats

from exchange import wiring
from exchange.identity.uscc import synthetic_uscc
from exchange.platform.bus import connect_nats
from exchange.platform.canonical import sha256_digest
from exchange.platform.clock import Clock
from exchange.platform.context import Platform
from exchange.platform.db import is_unavailable
from exchange.platform.events import (
    DeliveryTerms,
    TradeExecuted,
    TradeExecutedData,
    TradeParty,
    UsageStatement,
)
from exchange.platform.metering import Dimension
from exchange.platform.outbox import enqueue_many, relay_batch
from exchange.platform.signing import KeyRing, load_master_key
from exchange.runtime import ensure_signing_key
from settlement import book
from settlement.cli import verify_database
from settlement.consumer import Consumer, subscribe
from settlement.service import SettlementService
from tests.kit.processes import ROOT, clean_env


@dataclass
class Worker:
    platform: Platform
    service: SettlementService
    consumer: Consumer
    sub: Any

    async def relay(self) -> int:
        total = 0
        while published := await relay_batch(self.platform):
            total += published
        return total

    async def drain(self, wait: float = 0.5) -> int:
        """Relay pending events, then settle until the consumer has nothing more."""
        await self.relay()
        handled = 0
        while n := await self.consumer.poll(self.sub, wait=wait):
            handled += n
        return handled


@contextlib.asynccontextmanager
async def worker(settings: Any, pool: Any, clock: Clock) -> AsyncIterator[Worker]:
    client = await nats.connect(settings.nats_url)
    try:
        platform = Platform(settings=settings, clock=clock, pool=pool, nats=client,
                            keyring=KeyRing(load_master_key(settings.state_dir)))  # fmt: skip
        service = wiring.settlement(pool, clock, settings, platform.keyring)
        sub = await subscribe(platform)
        yield Worker(platform, service, Consumer(platform, service), sub)
    finally:
        await client.close()


# --- executed trades written directly (thousands in a second) ---------------------------------

PRICE = 10_000
FEE = 100


async def seed_parties(
    conn: Any, buyers: int, deposit: int = 10**12
) -> tuple[Any, list[Any], uuid.UUID]:
    """A seller with one listed product and buyers with ``deposit`` fen each (0: none)."""
    now = datetime.now(UTC)
    contact = {"name": "测试", "email": "settlement@example.cn", "phone": "+86 21 0000 0000"}
    base = uuid.uuid4().int % 31**8  # distinct codes on every call
    seller = (uuid.uuid4(), synthetic_uscc(base))
    buyer_rows = [(uuid.uuid4(), synthetic_uscc(base + 1 + i)) for i in range(buyers)]
    everyone = [seller, *buyer_rows]
    await conn.execute(
        "INSERT INTO organisations (id, name, uscc, roles, region, contact, created_at, updated_at)"
        " SELECT i, n, u, ARRAY['seller', 'buyer'], '310000', $4::jsonb, $5, $5"
        " FROM unnest($1::uuid[], $2::text[], $3::text[]) AS x(i, n, u)",
        [o for o, _ in everyone], [f"测试机构{n}" for n in range(len(everyone))],
        [u for _, u in everyone], contact, now,
    )  # fmt: skip
    product = uuid.uuid4()
    await conn.execute(
        "INSERT INTO products (id, seller_org_id, state, live_revision, product_code,"
        " created_at, updated_at) VALUES ($1, $2, 'listed', 1, $3, $4, $4)",
        product, seller[0], f"DX-TEST-{base}", now,
    )  # fmt: skip
    accounts = book.Book(conn)
    deposits = [book.deposit(org, deposit, f"test-{org}") for org, _ in buyer_rows if deposit]
    async with conn.transaction():
        await accounts.lock(deposits)
        made, _ = accounts.plan(deposits)
        await accounts.write(made, now)
    return seller, buyer_rows, product


async def seed_trades(
    conn: Any,
    n: int,
    seller: Any,
    buyers: list[Any],
    product: uuid.UUID,
    *,
    price: int = PRICE,
    fee: int = FEE,
    delivery: DeliveryTerms | None = None,
) -> list[TradeExecutedData]:
    """``n`` executed orders and contracts (price PRICE, fee FEE), buyers in turn; returns the
    ``dx.trade.executed`` data the contracts service would have emitted for them (with
    ``delivery``, the delivery terms: see `metered_terms`)."""
    now = datetime.now(UTC)
    order_ids = [uuid.uuid4() for _ in range(n)]
    trade_ids = [uuid.uuid4() for _ in range(n)]
    digests = ["sha256:" + hashlib.sha256(t.bytes).hexdigest() for t in trade_ids]
    buyer_of = [buyers[i % len(buyers)] for i in range(n)]
    terms, decision = '{"test": true}', '{"outcome": "allow", "hits": [], "list_version": "test"}'
    await conn.execute(
        "INSERT INTO orders (id, buyer_org_id, seller_org_id, product_id, revision, plan_id,"
        " terms, state, cross_border, sensitive_pi, pi_subject_count, price_fen, fee_fen,"
        " decision, created_at, updated_at, executed_at, fee_bps)"
        " SELECT o, b, $3, $4, 1, 'auto', $5::text::jsonb, 'executed', false, false, 0, $6, $7,"
        " $8::text::jsonb, $9, $9, $9, $10 FROM unnest($1::uuid[], $2::uuid[]) AS x(o, b)",
        order_ids, [b[0] for b in buyer_of], seller[0], product, terms, price, fee, decision, now,
        delivery.fee_bps if delivery is not None else None,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO trade_contracts (id, order_id, template, document, digest, text_zh, state,"
        " created_at, executed_at, expires_at)"
        " SELECT t, o, 'data-provision', $4::text::jsonb, d, '测试', 'executed', $5, $5, $5"
        " FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS x(t, o, d)",
        trade_ids, order_ids, digests, terms, now,
    )  # fmt: skip
    return [
        TradeExecutedData(
            trade_id=str(trade_ids[i]), order_id=str(order_ids[i]), contract_digest=digests[i],
            buyer=TradeParty(str(buyer_of[i][0]), f"测试机构{i % len(buyers)}", buyer_of[i][1]),
            seller=TradeParty(str(seller[0]), "测试机构0", seller[1]),
            product_code="DX-TEST-0001", price_fen=price, fee_fen=fee, acceptance_days=3,
            executed_at=now.isoformat(), delivery=delivery,
        )
        for i in range(n)
    ]  # fmt: skip


# --- metered trades ---------------------------------------------------------------------------

CAP = 10_000  # fen: a metered trade's spend cap, its price
FEE_BPS = 250  # 2.5 % of each period's charge


def metered_terms(
    product: uuid.UUID, cap: int = CAP, fee_bps: int = FEE_BPS, pricing: str = "metered"
) -> DeliveryTerms:
    """The delivery terms of a metered plan (requests at 0.5 fen, bytes at 1/1000 fen per byte)
    with ``cap`` as the spend cap, as the orders room writes them into dx.trade.executed."""
    return msgspec.convert(
        {"product_id": str(product), "revision": 1, "revision_digest": "sha256:" + "0" * 64,
         "plan_id": "meter", "pricing": pricing, "modes": ["api"], "purpose": "research",
         "territory": ["CN"], "term_days": 30,
         "dimensions": [Dimension("requests", unit_price_millifen=500),
                        Dimension("bytes", unit_price_millifen=1)],
         "spend_cap_fen": cap if pricing == "metered" else None,
         "fee_bps": fee_bps if pricing == "metered" else None},
        DeliveryTerms,
    )  # fmt: skip


async def seed_metered_trades(
    conn: Any, n: int, seller: Any, buyers: list[Any], product: uuid.UUID, cap: int = CAP
) -> list[TradeExecutedData]:
    """``n`` executed metered trades: price = the spend cap, fee 0 (each period pays its own)."""
    return await seed_trades(
        conn, n, seller, buyers, product, price=cap, fee=0, delivery=metered_terms(product, cap)
    )


def usage_statement(
    trade: TradeExecutedData,
    period: int,
    charge_fen: int,
    grant_id: str | None = None,
    exchange: str = "DX",
    final: bool = False,
) -> UsageStatement:
    """A closed billing period of the trade's (api) grant charging ``charge_fen``."""
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=period - 1)
    return UsageStatement(
        exchange=exchange, grant_id=grant_id or str(uuid.uuid5(uuid.NAMESPACE_URL, trade.trade_id)),
        trade_id=trade.trade_id, product_code=trade.product_code,
        buyer_org_id=trade.buyer.org_id, seller_org_id=trade.seller.org_id, period=period,
        starts_at=start.isoformat(), ends_at=(start + timedelta(hours=1)).isoformat(),
        records=charge_fen * 2, totals={"requests": charge_fen * 2},
        cost_millifen=charge_fen * 1000, cumulative_cost_millifen=charge_fen * 1000,
        charge_fen=charge_fen, final=final,
    )  # fmt: skip


async def signed(pool: Any, settings: Any, statement: UsageStatement) -> tuple[str, str]:
    """The statement's digest and the exchange's compact JWS over it, as delivery signs it."""
    async with pool.acquire() as conn:
        key = await KeyRing(load_master_key(settings.state_dir)).current(conn)
    return sha256_digest(statement), key.sign_compact(statement, typ="dataex-usage-statement+jws")


async def publish_executed(settings: Any, events: list[TradeExecutedData]) -> None:
    """The trades' ``dx.trade.executed`` events straight to JetStream, each with a new message id
    (so past the stream's duplicate window, as a republish would be)."""
    client = await connect_nats(settings.nats_url, name="dataex-test")
    js = client.jetstream()
    subject = settings.subject("trade", "executed")
    now = datetime.now(UTC)
    try:
        for start in range(0, len(events), 256):
            await asyncio.gather(*(
                js.publish(subject, msgspec.json.encode(TradeExecuted(
                    id="", source="urn:dataex:test", type="dx.trade.executed", time=now,
                    subject=e.trade_id, data=e)),
                    headers={"Nats-Msg-Id": str(uuid.uuid4())}, stream=settings.stream_name)
                for e in events[start : start + 256]
            ))  # fmt: skip
    finally:
        await client.close()


# --- fault runs -------------------------------------------------------------------------------

TRADES = 2_000
BUYERS = 20
DEPOSIT = 10**9


def spawn(part: str, settings: Any, log: Path | None = None) -> subprocess.Popen[bytes]:
    """A real `dataex serve <part>` on ``settings``; its warnings and errors go to ``log``."""
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "exchange.cli", "serve", part],
            env=clean_env()
            | settings.to_env()
            | {
                "DATAEX_LOG_LEVEL": "warning" if log is not None else "error",
                "DATAEX_LOG_FORMAT": "json",
            },
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    finally:
        if not isinstance(out, int):
            out.close()


def kill(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal the part's process group; a SIGTERM must stop it within 10 s (graceful stop)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        raise AssertionError(f"{process.args!r} did not stop within 10 s of {sig!r}") from None
    # granian's workers live in the group too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def settled(pool: Any) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM settlement_trades"))


async def wait_until(pool: Any, target: int, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if await settled(pool) >= target:
                return
        except Exception as error:
            if not is_unavailable(error):  # a test that restarts the database
                raise
        await asyncio.sleep(0.01)
    raise AssertionError(f"{await settled(pool)} of {target} trades settled in {limit}s")


async def seeded(settings: Any, pool: Any, trades: int = TRADES) -> list[Any]:
    """A seller, BUYERS buyers with DEPOSIT each, ``trades`` executed contracts; their events."""
    await ensure_signing_key(pool, settings)
    async with pool.acquire() as conn:
        seller, buyers, product = await seed_parties(conn, BUYERS, DEPOSIT)
        return await seed_trades(conn, trades, seller, buyers, product)


async def enqueue_executed(settings: Any, pool: Any, events: list[Any]) -> None:
    """The trades' executed events into the outbox, as the contracts service writes them."""
    async with pool.acquire() as conn:
        await enqueue_many(
            conn,
            [(settings.subject("trade", "executed"), "dx.trade.executed", e.trade_id, e)
             for e in events],
            source="urn:dataex:test", at=datetime.now(UTC),
        )  # fmt: skip


async def trickle(settings: Any, pool: Any, events: list[Any], chunk: int = 50) -> None:
    """Enqueue ``events`` a chunk every 50 ms, as orders executing one after another would: a
    fault injected meanwhile lands while the relay publishes and the workers settle."""
    for start in range(0, len(events), chunk):
        await enqueue_executed(settings, pool, events[start : start + chunk])
        await asyncio.sleep(0.05)


async def assert_exactly_once(settings: Any, pool: Any, events: list[Any]) -> None:
    """Every trade settled once, escrow holds them, money in the book equals the deposits, and
    `dataex ledger verify` (hash chain, tree heads, every balance against its postings) passes."""
    ids = [e.trade_id for e in events]
    assert await pool.fetchval(
        "SELECT count(*) FROM settlement_trades WHERE trade_id::text = ANY($1)", ids
    ) == len(events)
    assert (
        await pool.fetchval("SELECT count(*) FROM settlement_trades WHERE state <> 'reserved'") == 0
    )
    per_trade = await pool.fetchval(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM movements WHERE kind = 'reserve'"
        " GROUP BY trade_id) x"
    )
    assert per_trade == 1
    assert await pool.fetchval("SELECT count(*) FROM movements WHERE kind = 'reserve'") == len(
        events
    )
    assert await pool.fetchval("SELECT count(*) FROM ledger_entries") == len(events)
    escrow = await pool.fetchval("SELECT sum(balance) FROM accounts WHERE kind = 'escrow'")
    assert escrow == len(events) * (PRICE + FEE)
    money = await pool.fetchval("SELECT sum(balance) FROM accounts WHERE kind <> 'clearing'")
    assert money == BUYERS * DEPOSIT  # deposits, nothing withdrawn: nothing created or lost
    assert await pool.fetchval("SELECT count(*) FROM settlement_failures") == 0
    report = io.StringIO()
    assert await verify_database(settings.database_url, report) == 0, report.getvalue()


async def wait_published(pool: Any, limit: float = 30.0) -> None:
    """Until the relay has published every outbox event. A trade's dx.trade.reserved is written
    as it settles, so when the last trade has settled its event may still be on its way."""
    deadline = time.monotonic() + limit
    while await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
        if time.monotonic() > deadline:
            raise AssertionError(f"outbox events still unpublished {limit}s after the run")
        await asyncio.sleep(0.1)


def ready(url: str) -> bool:
    """Whether the API answers /health/ready with 200 (PostgreSQL, migrations, NATS, stream)."""
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def wait_ready(url: str, limit: float = 30.0) -> float:
    """Seconds until the API is ready; fails the test after ``limit``."""
    started = time.monotonic()
    while not await asyncio.to_thread(ready, url):
        if time.monotonic() - started > limit:
            raise AssertionError(f"{url} not ready {limit:.0f}s after the restart")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def log_events(log: Path, event: str) -> int:
    """How many JSON log lines of the parts name ``event``."""
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text(errors="replace").splitlines() if f'"{event}"' in line)
