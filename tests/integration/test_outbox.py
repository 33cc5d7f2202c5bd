"""The outbox relay on real PostgreSQL and JetStream (the event schemas checked in:
tests/unit/test_events.py)."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import nats
import pytest

from exchange.platform.clock import SystemClock
from exchange.platform.context import Platform
from exchange.platform.events import ListingEvent, ListingEventData
from exchange.platform.outbox import enqueue, relay_batch, relay_loop
from exchange.platform.signing import KeyRing, load_master_key


@pytest.fixture
async def platform(settings, pool):
    client = await nats.connect(settings.nats_url)
    yield Platform(
        settings=settings,
        clock=SystemClock(),
        pool=pool,
        nats=client,
        keyring=KeyRing(load_master_key(settings.state_dir)),
    )
    await client.close()


async def put(platform, n=1, code="DX-2026-000001X"):
    ids = []
    async with platform.pool.acquire() as conn, conn.transaction():
        for _ in range(n):
            ids.append(
                await enqueue(
                    conn,
                    subject=platform.settings.subject("listing", "published"),
                    event_type="dx.listing.published",
                    source="urn:dataex:exchange:DX",
                    event_subject=code,
                    data=ListingEventData(
                        product_id="p",
                        product_code=code,
                        exchange="DX",
                        revision=1,
                        revision_digest="sha256:" + "0" * 64,
                    ),
                    at=platform.clock.now(),
                    request_id="req-outbox-test",
                )
            )
    return ids


async def stream_messages(platform):
    info = await platform.nats.jetstream().stream_info(platform.settings.stream_name)
    return info.state.messages


async def test_relay_publishes_each_event_once_with_its_id_as_msg_id(platform):
    ids = await put(platform, 3)
    assert await relay_batch(platform) == 3
    assert await relay_batch(platform) == 0
    assert await stream_messages(platform) == 3
    sub = await platform.nats.jetstream().pull_subscribe(
        platform.settings.subject("listing", "published"), stream=platform.settings.stream_name
    )
    messages = await sub.fetch(3, timeout=5)
    events = [
        msgspec.json.decode(m.data, type=ListingEvent) for m in messages
    ]  # strict: the schema's type
    assert [e.id for e in events] == ids
    assert [m.headers["Nats-Msg-Id"] for m in messages] == ids
    assert {m.headers["X-Request-ID"] for m in messages} == {"req-outbox-test"}


async def test_a_relay_that_crashed_before_marking_republishes_and_jetstream_drops_the_duplicate(
    platform,
):
    await put(platform, 2)
    assert await relay_batch(platform) == 2
    # As if the relay died between publishing and committing the mark:
    await platform.pool.execute("UPDATE outbox SET published_at = NULL")
    assert await relay_batch(platform) == 2
    assert await stream_messages(platform) == 2


async def test_an_event_rolled_back_with_its_transaction_is_never_published(platform):
    with contextlib.suppress(RuntimeError):
        async with platform.pool.acquire() as conn, conn.transaction():
            await enqueue(
                conn,
                subject=platform.settings.subject("listing", "published"),
                event_type="dx.listing.published",
                source="x",
                data={},
                at=platform.clock.now(),
            )
            raise RuntimeError("the business change failed")
    assert await relay_batch(platform) == 0
    assert await stream_messages(platform) == 0


async def test_two_relays_share_the_work_without_publishing_twice(platform):
    await put(platform, 300)
    results = await asyncio.gather(relay_batch(platform, 200), relay_batch(platform, 200))
    assert sum(results) == 300
    assert await relay_batch(platform) == 0
    assert await stream_messages(platform) == 300


async def test_the_running_relay_picks_up_new_events(platform):
    stop = asyncio.Event()
    task = asyncio.create_task(relay_loop(platform, stop))
    try:
        await put(platform, 1)
        sub = await platform.nats.jetstream().pull_subscribe(
            platform.settings.subject("listing", "published"), stream=platform.settings.stream_name
        )
        (message,) = await sub.fetch(1, timeout=5)
        assert msgspec.json.decode(message.data, type=ListingEvent).type == "dx.listing.published"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert (
        await platform.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    )
