"""No executed trade left behind: the settlement room's reconciler finds executed trades whose
event never reached the settlement consumer (a foreign client pulled and acknowledged it),
publishes them again under a new message id, and counts them; `dataex ledger verify` names an
executed trade without exactly one settlement outcome past the bound."""

from __future__ import annotations

import asyncio
import io
import signal
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import msgspec
import pytest

from exchange.platform import outbox
from exchange.platform.bus import connect_nats
from exchange.platform.events import TradeExecuted
from settlement import ledger
from settlement.cli import verify_database
from settlement.consumer import DURABLE, consumer_config
from settlement.reconciler import Reconciler, round_seconds, status
from tests.kit.settlement import (
    assert_exactly_once,
    enqueue_executed,
    kill,
    log_events,
    publish_executed,
    seeded,
    settled,
    spawn,
    wait_published,
    wait_until,
    worker,
)


async def steal(sub, limit: int = 1000) -> list[tuple[str, str | None]]:
    """Pull and acknowledge what the durable `settlement` consumer hands ``sub``, settling
    nothing, as a stray client would: (trade id, Nats-Msg-Id) of each message taken."""
    taken: list[tuple[str, str | None]] = []
    while len(taken) < limit:
        try:
            messages = await sub.fetch(min(100, limit - len(taken)), timeout=0.5)
        except TimeoutError:
            break
        for message in messages:
            event = msgspec.json.decode(message.data, type=TradeExecuted)
            taken.append((event.data.trade_id, (message.headers or {}).get("Nats-Msg-Id")))
            await message.ack()
    return taken


async def steal_until(sub, stop: asyncio.Event) -> list[str]:
    """`steal` until ``stop``; the last pull has ended (expired or answered) when it returns."""
    taken: list[str] = []
    while not stop.is_set():
        try:
            messages = await sub.fetch(10, timeout=0.2)
        except TimeoutError:
            continue
        for message in messages:
            taken.append(msgspec.json.decode(message.data, type=TradeExecuted).data.trade_id)
            await message.ack()
    return taken


async def wait_heartbeat(pool, part: str, limit: float = 30.0) -> None:
    """Until a `dataex serve <part>` has started (its first heartbeat)."""
    deadline = time.monotonic() + limit
    while not await pool.fetchval("SELECT count(*) FROM process_heartbeats WHERE part = $1", part):
        assert time.monotonic() < deadline, f"no {part} started within {limit}s"
        await asyncio.sleep(0.05)


async def stream_messages(settings) -> int:
    client = await connect_nats(settings.nats_url, name="dataex-test")
    try:
        return int((await client.jetstream().stream_info(settings.stream_name)).state.messages)
    finally:
        await client.close()


async def verify(settings, after_seconds: float) -> tuple[int, str]:
    out = io.StringIO()
    code = await verify_database(
        settings.database_url, out,
        executed_subject=settings.subject("trade", "executed"), after_seconds=after_seconds,
    )  # fmt: skip
    return code, out.getvalue()


# --- the fault: messages taken from the durable consumer by someone else -------------------------

BOUND = 4  # seconds: DATAEX_RECONCILE_AFTER_SECONDS for the worker
SLACK = 15.0  # seconds beyond the bound, a round and the grace for the last trades to settle


@pytest.mark.faults
async def test_trades_whose_messages_a_foreign_client_took_are_republished_and_settle(
    settings, pool, tmp_path
):
    settings = replace(settings, reconcile_after_seconds=BOUND)
    events = await seeded(settings, pool, trades=300)
    client = await connect_nats(settings.nats_url, name="a-foreign-client")
    js = client.jetstream()
    await js.add_consumer(settings.stream_name, consumer_config(settings))
    thief = await js.pull_subscribe_bind(DURABLE, stream=settings.stream_name)
    log = tmp_path / "parts.log"
    relay = spawn("relay", settings, log)
    worker_process = spawn("settlement", settings, log)
    try:
        # Trades execute while the foreign client pulls from the workers' durable consumer,
        # beside the worker, and acknowledges what it gets, settling nothing.
        await wait_heartbeat(pool, "settlement")
        stop = asyncio.Event()
        stealing = asyncio.create_task(steal_until(thief, stop))
        for start in range(0, len(events), 30):
            await enqueue_executed(settings, pool, events[start : start + 30])
            await asyncio.sleep(0.05)
        await wait_published(pool)
        stop.set()
        stolen = await stealing
        await thief.unsubscribe()
        stopped = time.monotonic()
        assert len(stolen) > 0
        assert len(set(stolen)) == len(stolen)
        # Every trade settles within the bound (from the last publish), a round, the grace and
        # some slack, the stolen ones from their republished events.
        await wait_until(pool, len(events), limit=BOUND + 2 * round_seconds(BOUND) + SLACK)
        took = time.monotonic() - stopped
        await asyncio.sleep(1)  # a duplicate still on its way must change nothing
    finally:
        kill(worker_process, signal.SIGTERM)
        kill(relay, signal.SIGTERM)
        await client.close()
    assert took < BOUND + 2 * round_seconds(BOUND) + SLACK
    figures = await status(pool)
    assert figures.republished_total == len(stolen)
    assert figures.overdue == 0
    republished = await pool.fetchval("SELECT count(*) FROM settlement_overdue")
    assert republished == 0  # each left once it had its outcome
    assert log_events(log, "trades_republished") >= 1
    await assert_exactly_once(settings, pool, events)
    code, report = await verify(settings, after_seconds=1)
    assert code == 0, report


# --- in process: each step of a round -----------------------------------------------------------


async def test_a_republished_trade_that_was_settled_meanwhile_is_not_settled_twice(
    settings, pool, clock, client
):
    settings = replace(settings, reconcile_after_seconds=1)
    events = await seeded(settings, pool, trades=4)
    ids = sorted(e.trade_id for e in events)
    await enqueue_executed(settings, pool, events)
    async with worker(settings, pool, clock) as w:
        await w.relay()
        taken = await steal(w.sub)
        assert sorted(t for t, _ in taken) == ids
        await asyncio.sleep(1.1)  # past the bound
        reconciler = Reconciler(w.platform, grace=0)
        first = await reconciler.run_once()
        assert first.acted and first.found == 4 and sorted(first.republished) == ids
        health = (await client.get("/health/ready")).json()
        assert health["status"] == "ready"  # overdue trades are being repaired: still ready
        assert health["settlement"]["overdue"] == 4
        assert health["settlement"]["republished_total"] == 4
        # Meanwhile two of them were settled another way (their first messages, say), and their
        # original events arrive once more as well (new message ids: past the dedup window).
        result = await w.service.settle_executed(events[:2])
        assert result.reserved == 2
        await publish_executed(settings, events[:2])
        assert await w.drain() == 6  # four republished, two duplicates
        again = await reconciler.run_once()
        assert again.resolved == 4 and again.found == 0 and again.republished == []
    await assert_exactly_once(settings, pool, events)
    health = (await client.get("/health/ready")).json()
    assert health["settlement"]["overdue"] == 0
    assert health["settlement"]["republished_total"] == 4


async def test_an_overdue_trade_is_republished_once_per_bound_under_a_new_message_id(
    settings, pool, clock
):
    settings = replace(settings, reconcile_after_seconds=1)
    events = await seeded(settings, pool, trades=1)
    await enqueue_executed(settings, pool, events)
    event_id = await pool.fetchval("SELECT id FROM outbox")
    async with worker(settings, pool, clock) as w:
        await w.relay()
        assert [m for _, m in await steal(w.sub)] == [str(event_id)]
        await asyncio.sleep(1.1)
        reconciler = Reconciler(w.platform, grace=0)
        assert (await reconciler.run_once()).republished == [events[0].trade_id]
        assert (await reconciler.run_once()).republished == []  # not again within the bound
        # The republish is taken too: JetStream would have dropped it under the event's own id.
        assert [m for _, m in await steal(w.sub)] == [f"{event_id}:reconcile:1"]
        await asyncio.sleep(1.1)
        assert (await reconciler.run_once()).republished == [events[0].trade_id]
        assert await w.drain() == 1
        assert await settled(pool) == 1
        assert (await reconciler.run_once()).resolved == 1
    figures = await status(pool)
    assert (figures.overdue, figures.republished_total) == (0, 2)


async def test_a_round_waits_while_the_consumer_has_a_backlog_and_while_another_acts(
    settings, pool, clock
):
    settings = replace(settings, reconcile_after_seconds=1)
    events = await seeded(settings, pool, trades=3)
    await enqueue_executed(settings, pool, events)
    async with worker(settings, pool, clock) as w:
        await w.relay()
        await asyncio.sleep(1.1)
        # Not handed out yet: the trades are queued, not lost.
        queued = await Reconciler(w.platform, grace=0).run_once()
        assert not queued.acted and queued.republished == []
        # Another worker's reconciler holds the lock: this one leaves the round to it.
        await steal(w.sub)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('dataex.settlement.reconciler'))"
            )
            busy = await Reconciler(w.platform, grace=0).run_once()
        assert not busy.acted and busy.republished == []
        ran = await Reconciler(w.platform, grace=0).run_once()
        assert ran.acted and len(ran.republished) == 3
        assert await w.drain() == 3
    await assert_exactly_once(settings, pool, events)


async def test_a_round_is_a_no_op_when_nothing_is_missing_and_reads_only_new_events(
    settings, pool, clock
):
    settings = replace(settings, reconcile_after_seconds=1)
    events = await seeded(settings, pool, trades=50)
    await enqueue_executed(settings, pool, events)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 50
        await asyncio.sleep(1.1)
        messages = await stream_messages(settings)
        reconciler = Reconciler(w.platform, late_margin=0, grace=0)
        first = await reconciler.run_once()
        assert (first.acted, first.scanned, first.found, first.republished) == (True, 50, 0, [])
        second = await reconciler.run_once()  # from where the first stopped: nothing new
        assert (second.acted, second.scanned, second.found, second.republished) == (
            True, 0, 0, [],
        )  # fmt: skip
        assert await stream_messages(settings) == messages  # nothing published
    figures = await status(pool)
    assert (figures.overdue, figures.republished_total) == (0, 0)
    assert figures.checked_until is not None


async def test_the_executed_events_are_read_through_the_outbox_index(settings, pool):
    """With a hundred thousand events in the outbox, a round's read is an index range scan
    over the executed trades' partial index, never a scan of the table."""
    subject = settings.subject("trade", "executed")
    await pool.execute(
        "INSERT INTO outbox (id, subject, payload, created_at, published_at, event_subject)"
        " SELECT gen_random_uuid(), CASE WHEN g % 5 = 0 THEN $1 ELSE 'dx.listing.published' END,"
        " convert_to(json_build_object('subject', e)::text, 'UTF8'),"
        " now() - make_interval(secs => g), now() - make_interval(secs => g), e::text"
        " FROM (SELECT g, gen_random_uuid() AS e FROM generate_series(1, 100000) AS g) AS x",
        subject,
    )
    await pool.execute("ANALYZE outbox")
    now = datetime.now(UTC)
    for since in (now.replace(year=now.year - 1), None):  # a round's window; verify's whole range
        args = [since or datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0), now, 5000, subject]
        plan = await pool.fetchval(
            "EXPLAIN (FORMAT JSON) " + outbox.published_sql("trade.executed", exact_subject=True),
            *args,
        )
        text = plan if isinstance(plan, str) else msgspec.json.encode(plan).decode()
        assert "outbox_trade_executed" in text, text
        assert "Seq Scan" not in text, text
    page = await outbox.published(pool, "trade.executed", subject=subject, before=now, limit=10)
    assert len(page) == 10 and all(p.event_subject for p in page)
    assert [p.published_at for p in page] == sorted(p.published_at for p in page)


# --- dataex ledger verify --------------------------------------------------------------------------


async def test_ledger_verify_names_an_executed_trade_unsettled_past_the_bound(
    settings, pool, clock
):
    events = await seeded(settings, pool, trades=3)
    await enqueue_executed(settings, pool, events)
    lost = events[2].trade_id
    async with worker(settings, pool, clock) as w:
        await w.relay()
        await steal(w.sub)  # none reaches the worker ...
        await w.service.settle_executed(events[:2])  # ... two are settled another way
        code, report = await verify(settings, after_seconds=60)
        assert code == 0, report  # inside the bound: not yet overdue
        await asyncio.sleep(1.1)
        code, report = await verify(settings, after_seconds=1)
        assert code == 1, report
        assert f"executed trade {lost} has no settlement outcome" in report, report
        assert "never settled" in report
        assert events[0].trade_id not in report and events[1].trade_id not in report
        # Dead-lettered, it is named with why.
        await pool.execute(
            "INSERT INTO settlement_failures (subject, event_id, trade_id, deliveries, error,"
            " payload, failed_at) VALUES ('x', 'x', $1, 5, 'the database said no', '', now())",
            uuid.UUID(lost),
        )
        code, report = await verify(settings, after_seconds=1)
        assert code == 1 and "dead-lettered (the database said no)" in report, report
        await pool.execute("TRUNCATE settlement_failures")
        # Settled, it passes.
        await w.service.settle_executed([events[2]])
        code, report = await verify(settings, after_seconds=1)
        assert code == 0, report
        assert "3 executed trades' outcomes" in report


async def test_ledger_verify_names_an_executed_trade_with_two_outcomes(settings, pool, clock):
    events = await seeded(settings, pool, trades=2)
    await enqueue_executed(settings, pool, events)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 2
    await asyncio.sleep(1.1)
    code, report = await verify(settings, after_seconds=1)
    assert code == 0, report
    # A second opening entry for one trade (as a double settlement would append): a valid link
    # of the hash chain, so only the outcome check can see it.
    async with pool.acquire() as conn, conn.transaction():
        first = events[0]
        draft = ledger.EntryDraft(
            trade_id=uuid.UUID(first.trade_id), step="reserved",
            contract_digest=first.contract_digest, product_code=first.product_code,
            buyer=ledger.EntryParty(first.buyer.org_id, first.buyer.uscc),
            seller=ledger.EntryParty(first.seller.org_id, first.seller.uscc),
            price_fen=first.price_fen, fee_fen=first.fee_fen, movement_id=None,
        )  # fmt: skip
        await ledger.append(conn, settings.exchange_code, [draft], datetime.now(UTC))
    code, report = await verify(settings, after_seconds=1)
    assert code == 1, report
    assert (
        f"executed trade {events[0].trade_id} (reserved) has 2 ledger entries opening it" in report
    ), report
    assert events[1].trade_id not in report
