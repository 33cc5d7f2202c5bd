"""Faults during a run of 2,000 executed trades: a settlement worker killed with SIGKILL mid-batch,
an outbox relay killed between publishing and marking, every event published twice. Afterwards
each trade is settled exactly once, every balance equals its postings, the money in the book
equals the deposits, and `dataex ledger verify` passes. The parts are real `dataex serve`
processes on the test run's PostgreSQL and JetStream."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.outbox import enqueue_many
from exchange.runtime import ensure_signing_key
from settlement.bench import FEE, PRICE, publish_executed, seed_parties, seed_trades
from settlement.cli import verify_database
from tests.helpers import server_env

pytestmark = pytest.mark.faults

TRADES = 2_000
BUYERS = 20
DEPOSIT = 10**9


def spawn(part, settings):
    return subprocess.Popen(
        [sys.executable, "-m", "exchange.cli", "serve", part],
        env=server_env(settings, settings.state_dir) | {"DATAEX_LOG_LEVEL": "error"},
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill(process, sig=signal.SIGKILL):
    """Signal the part's process group; a SIGTERM must stop it within 10 s (graceful stop)."""
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        raise AssertionError(f"{process.args} did not stop within 10 s of {sig!r}") from None


async def settled(pool):
    return await pool.fetchval("SELECT count(*) FROM settlement_trades")


async def wait_until(pool, target, limit=120.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await settled(pool) >= target:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{await settled(pool)} of {target} trades settled in {limit}s")


async def seeded(settings, pool):
    await ensure_signing_key(pool, settings)
    async with pool.acquire() as conn:
        seller, buyers, product = await seed_parties(conn, BUYERS, DEPOSIT)
        return await seed_trades(conn, TRADES, seller, buyers, product)


async def assert_exactly_once(settings, pool, events):
    ids = [e.trade_id for e in events]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM settlement_trades WHERE trade_id::text = ANY($1)", ids
        )
        == TRADES
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM settlement_trades WHERE state <> 'reserved'") == 0
    )
    per_trade = await pool.fetchval(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM movements WHERE kind = 'reserve'"
        " GROUP BY trade_id) x"
    )
    assert per_trade == 1
    assert await pool.fetchval("SELECT count(*) FROM movements WHERE kind = 'reserve'") == TRADES
    assert await pool.fetchval("SELECT count(*) FROM ledger_entries") == TRADES
    escrow = await pool.fetchval("SELECT sum(balance) FROM accounts WHERE kind = 'escrow'")
    assert escrow == TRADES * (PRICE + FEE)
    money = await pool.fetchval("SELECT sum(balance) FROM accounts WHERE kind <> 'clearing'")
    assert money == BUYERS * DEPOSIT  # deposits, nothing withdrawn: nothing created or lost
    report = io.StringIO()
    assert await verify_database(settings.database_url, report) == 0, report.getvalue()


async def test_a_settlement_worker_killed_mid_batch_loses_and_doubles_nothing(settings, pool):
    events = await seeded(settings, pool)
    await publish_executed(settings, events)
    worker = spawn("settlement", settings)
    try:
        await wait_until(pool, 300)
        kill(worker)  # SIGKILL: no cleanup, batches in flight neither committed nor acked
        killed_at = await settled(pool)
        assert killed_at < TRADES
        worker = spawn("settlement", settings)
        await wait_until(pool, 1_200)
        kill(worker)
        worker = spawn("settlement", settings)
        await wait_until(pool, TRADES)
    finally:
        kill(worker, signal.SIGTERM)
    await asyncio.sleep(1)  # anything still redelivered must change nothing
    await assert_exactly_once(settings, pool, events)


async def test_every_event_published_twice_and_two_workers_change_nothing(settings, pool):
    events = await seeded(settings, pool)
    workers = [spawn("settlement", settings), spawn("settlement", settings)]
    try:
        await publish_executed(settings, events)
        await publish_executed(settings, events)  # new message ids: past the dedup window
        await wait_until(pool, TRADES)
        await asyncio.sleep(2)  # the duplicates behind the originals
    finally:
        for worker in workers:
            kill(worker, signal.SIGTERM)
    await assert_exactly_once(settings, pool, events)


async def test_a_relay_killed_between_publish_and_mark_republishes_without_doubling(settings, pool):
    events = await seeded(settings, pool)
    async with pool.acquire() as conn:
        await enqueue_many(
            conn,
            [(settings.subject("trade", "executed"), "dx.trade.executed", e.trade_id, e)
             for e in events],
            source="urn:dataex:test", at=datetime.now(UTC),
        )  # fmt: skip
    worker = spawn("settlement", settings)
    relay = spawn("relay", settings)
    kills = 0
    pending = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
    try:
        # Kill the relay as soon as it has marked a batch, again and again: one it has published
        # but not yet marked is published again by the next relay (same Nats-Msg-Id: JetStream
        # drops it; past the window the consumer would).
        while kills < 4 and (left := await pool.fetchval(pending)):
            deadline = time.monotonic() + 30
            while await pool.fetchval(pending) == left and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # polling what another process writes
            kill(relay)
            kills += 1
            relay = spawn("relay", settings)
        await wait_until(pool, TRADES)
        await asyncio.sleep(1)
    finally:
        kill(relay, signal.SIGTERM)
        kill(worker, signal.SIGTERM)
    assert kills >= 1
    await assert_exactly_once(settings, pool, events)
