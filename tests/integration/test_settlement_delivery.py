"""The consumer over real JetStream: redelivery, duplicates past the dedup window, dead letters,
several workers sharing one durable consumer."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
from nats.js.api import AckPolicy, DeliverPolicy

from exchange.platform.clock import OffsetClock
from settlement.consumer import MAX_DELIVER, Consumer, dead_letter_subject
from tests.kit.api import bearer
from tests.kit.settlement import FEE, PRICE, publish_executed, seed_parties, seed_trades, worker


async def snapshot(pool):
    """Everything settlement writes, in a comparable form."""
    return {
        "trades": [tuple(r) for r in await pool.fetch(
            "SELECT trade_id, state, reason FROM settlement_trades ORDER BY trade_id")],
        "movements": [tuple(r) for r in await pool.fetch(
            "SELECT id, kind, amount_fen FROM movements ORDER BY id")],
        "postings": await pool.fetchval("SELECT count(*) FROM postings"),
        "balances": [tuple(r) for r in await pool.fetch(
            "SELECT org_id, kind, balance FROM accounts ORDER BY id")],
        "ledger": await pool.fetchval("SELECT count(*) FROM ledger_entries"),
        "outbox": await pool.fetchval("SELECT count(*) FROM outbox"),
    }  # fmt: skip


async def seeded(pool, trades, buyers=3, deposit=10**9):
    async with pool.acquire() as conn:
        seller, buyer_rows, product = await seed_parties(conn, buyers, deposit)
        return await seed_trades(conn, trades, seller, buyer_rows, product)


async def test_redelivery_and_duplicates_past_the_dedup_window_change_nothing(settings, pool):
    events = await seeded(pool, 20)
    clock = OffsetClock()
    await publish_executed(settings, events)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 20
        before = await snapshot(pool)
        assert len(before["trades"]) == 20 and len(before["movements"]) == 3 + 20
        assert {t[1] for t in before["trades"]} == {"reserved"}
        # Every stored event delivered twice more to the worker's handler (as a redelivery
        # after a lost ack would) ...
        js = w.platform.nats.jetstream()
        for _ in range(2):
            replay = await js.pull_subscribe(settings.subject("trade", "executed"),
                                             stream=settings.stream_name)  # fmt: skip
            await w.consumer.handle(await replay.fetch(20, timeout=5))
        # ... and published again under new message ids, as a duplicate past JetStream's
        # two-minute dedup window is: the durable consumer delivers them as new messages.
        await publish_executed(settings, events)
        assert await w.drain() == 20
        assert await snapshot(pool) == before


async def test_an_event_that_does_not_match_its_contract_is_dead_lettered(
    client, settings, pool, admin_token
):
    events = await seeded(pool, 2)
    forged = msgspec.structs.replace(events[0], price_fen=1)
    unknown = msgspec.structs.replace(events[1], trade_id=str(uuid.uuid4()))
    await publish_executed(settings, [forged, unknown, events[1]])
    async with worker(settings, pool, OffsetClock()) as w:
        await w.platform.nats.jetstream().publish(
            settings.subject("trade", "executed"), b"{not json", stream=settings.stream_name
        )
        assert await w.drain() == 4
        failures = await client.get("/v1/settlement/failures", headers=bearer(admin_token))
        assert failures.status_code == 200
        errors = sorted(f["error"] for f in failures.json())
        assert errors[0].startswith("no such contract")
        assert errors[1].startswith("price_fen 1 differs from the contract's")
        assert errors[2].startswith("undecodable event")
        assert await pool.fetchval("SELECT count(*) FROM settlement_trades") == 1
        dead = await w.platform.nats.jetstream().pull_subscribe(
            dead_letter_subject(settings), stream=settings.stream_name
        )
        assert len(await dead.fetch(3, timeout=5)) == 3
        assert await w.drain() == 0  # terminated: not redelivered


async def test_a_failing_event_is_retried_a_bounded_number_of_times(settings, pool):
    events = await seeded(pool, 1)
    await publish_executed(settings, events)
    async with worker(settings, pool, OffsetClock()) as w:
        consumer = Consumer(w.platform, w.service, retry_delay=0.0)
        attempts = 0

        async def broken(*_args, **_kwargs):
            nonlocal attempts
            attempts += 1
            raise RuntimeError("database unavailable")

        original = w.service.settle_executed
        w.service.settle_executed = broken  # type: ignore[method-assign]
        for _ in range(MAX_DELIVER * 3):
            await consumer.poll(w.sub, wait=0.3)
        w.service.settle_executed = original  # type: ignore[method-assign]
        # one batch attempt and one single attempt per delivery
        assert attempts == 2 * MAX_DELIVER
        row = await pool.fetchrow("SELECT deliveries, error FROM settlement_failures")
        assert row["deliveries"] == MAX_DELIVER
        assert "database unavailable" in row["error"]
        assert await consumer.poll(w.sub, wait=0.3) == 0


async def test_two_workers_share_the_stream_without_settling_anything_twice(settings, pool):
    events = await seeded(pool, 400, buyers=5)
    await publish_executed(settings, events)
    clock = OffsetClock()
    async with worker(settings, pool, clock) as first, worker(settings, pool, clock) as second:
        counts = [0, 0]

        async def run(index, w):
            while n := await w.consumer.poll(w.sub, batch=25, wait=0.5):
                counts[index] += n

        await asyncio.gather(run(0, first), run(1, second))
    assert sum(counts) == 400 and min(counts) > 0, counts
    assert (
        await pool.fetchval("SELECT count(*) FROM settlement_trades WHERE state = 'reserved'")
        == 400
    )
    assert await pool.fetchval("SELECT count(*) FROM movements WHERE kind = 'reserve'") == 400
    escrow = await pool.fetchval("SELECT sum(balance) FROM accounts WHERE kind = 'escrow'")
    assert escrow == 400 * (PRICE + FEE)
    seqs = [r["seq"] for r in await pool.fetch("SELECT seq FROM ledger_entries ORDER BY seq")]
    assert seqs == list(range(400))


async def test_the_durable_consumer_is_bounded_and_explicit(settings, pool):
    async with worker(settings, pool, OffsetClock()) as w:
        info = await w.platform.nats.jetstream().consumer_info(settings.stream_name, "settlement")
        assert info.config.max_deliver == MAX_DELIVER
        assert info.config.ack_policy == AckPolicy.EXPLICIT
        assert info.config.filter_subject == settings.subject("trade", "executed")
        assert info.config.deliver_policy == DeliverPolicy.ALL
