"""Shared set-up for settlement tests: a worker's consumer in-process, and the runs of the fault
tests (real `dataex serve` processes, then the invariants). Executed trades over HTTP are built
by tests.kit.market."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats

from exchange.platform.clock import Clock
from exchange.platform.context import Platform
from exchange.platform.db import is_unavailable
from exchange.platform.outbox import enqueue_many, relay_batch
from exchange.platform.signing import KeyRing, load_master_key
from exchange.runtime import ensure_signing_key
from settlement.bench import FEE, PRICE, seed_parties, seed_trades
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
        service = SettlementService(pool, clock, settings, platform.keyring)
        sub = await subscribe(platform)
        yield Worker(platform, service, Consumer(platform, service), sub)
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
