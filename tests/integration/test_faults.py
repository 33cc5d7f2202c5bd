"""Faults during a run of 2,000 executed trades: a settlement worker killed with SIGKILL mid-batch,
an outbox relay killed between publishing and marking, every event published twice, the NATS
server killed and restarted, PostgreSQL stopped at once (crash-like) and restarted. Afterwards
each trade is settled exactly once, every balance equals its postings, the money in the book
equals the deposits, and `dataex ledger verify` passes. The parts are real `dataex serve`
processes. The restart tests run on servers of their own (embedded, in both CI targets): the
run's shared servers may not be restarted."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from exchange.platform.clock import SystemClock
from exchange.platform.db import create_pool
from exchange.platform.embedded import EmbeddedNats, EmbeddedPostgres
from exchange.platform.heartbeat import INTERVAL_SECONDS as HEARTBEAT_SECONDS
from exchange.platform.settings import Settings
from exchange.runtime import prepare
from settlement.consumer import MAX_DELIVER
from tests.kit.processes import free_port
from tests.kit.settlement import (
    TRADES,
    assert_exactly_once,
    enqueue_executed,
    kill,
    log_events,
    publish_executed,
    ready,
    seeded,
    settled,
    spawn,
    trickle,
    wait_published,
    wait_ready,
    wait_until,
    worker,
)

pytestmark = pytest.mark.faults


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
    await enqueue_executed(settings, pool, events)
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


# --- server restarts, on servers of this module's own -----------------------------------------

DOWN_SECONDS = 2.0  # how long a server stays away: several reconnect rounds of every part


@dataclass
class OwnServers:
    state: Path
    postgres: EmbeddedPostgres
    nats: EmbeddedNats


@pytest.fixture(scope="module")
def own_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServers]:
    """An embedded PostgreSQL and NATS for this module alone, whatever DATAEX_TEST_* says."""
    state = tmp_path_factory.mktemp("own")
    servers = OwnServers(state, EmbeddedPostgres(state), EmbeddedNats(state))
    servers.postgres.start()
    try:
        servers.nats.start()
        yield servers
    finally:
        servers.nats.stop()
        servers.postgres.stop()


@pytest.fixture
async def own(own_servers: OwnServers) -> AsyncIterator[tuple[Settings, asyncpg.Pool]]:
    """A new database and stream on the module's servers, prepared as `dataex migrate` does."""
    tag = uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(own_servers.postgres.url("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE \"faults_{tag}\" TEMPLATE template0 ENCODING 'UTF8'")
    finally:
        await admin.close()
    assert own_servers.nats.client_url
    settings = Settings(
        database_url=own_servers.postgres.url(f"faults_{tag}"),
        nats_url=own_servers.nats.client_url,
        state_dir=own_servers.state,
        stream_name=f"FAULTS_{tag}",
        subject_prefix=f"dxf{tag}",
        http_port=free_port(),
        log_format="json",
    )
    await prepare(settings, bootstrap="never")
    pool = await create_pool(settings.database_url or "", max_size=4)
    try:
        yield settings, pool
    finally:
        await pool.close()


async def stream_messages(settings: Settings) -> int:
    from exchange.platform.bus import connect_nats

    client = await connect_nats(settings.nats_url or "", name="dataex-test")
    try:
        info = await client.jetstream().stream_info(settings.stream_name)
        return int(info.state.messages)
    finally:
        await client.close()


PENDING = "SELECT count(*) FROM outbox WHERE published_at IS NULL"


async def test_a_nats_server_killed_and_restarted_mid_run_loses_and_doubles_nothing(
    own_servers, own
):
    settings, pool = own
    log = own_servers.state / f"{settings.stream_name}.log"
    events = await seeded(settings, pool)
    first = TRADES // 4
    await enqueue_executed(settings, pool, events[:first])
    parts = [spawn(part, settings, log) for part in ("api", "relay", "settlement")]
    try:
        await wait_ready(settings.public_url)
        await wait_until(pool, 200)
        # Trades go on executing while the bus is away: the relay publishes them once it is back.
        flowing = asyncio.create_task(trickle(settings, pool, events[first:]))
        await asyncio.sleep(0.3)
        own_servers.nats.stop(kill=True)  # SIGKILL: a crash, nothing said to the clients
        at_crash = await settled(pool)
        assert not await asyncio.to_thread(ready, settings.public_url)  # the API sees it
        await asyncio.sleep(DOWN_SECONDS)
        own_servers.nats.start()  # same port, same store
        await flowing
        started = time.monotonic()
        await wait_until(pool, TRADES)
        caught_up = time.monotonic() - started
        await wait_ready(settings.public_url)  # the API's NATS connection is back too
        await asyncio.sleep(1)  # anything still redelivered must change nothing
        await wait_published(pool)
    finally:
        for part in parts:
            kill(part, signal.SIGTERM)
    assert at_crash < TRADES
    assert await pool.fetchval(PENDING) == 0
    # Each trade's dx.trade.executed and dx.trade.reserved, once: a re-publish was deduplicated.
    assert await stream_messages(settings) == 2 * TRADES
    await assert_exactly_once(settings, pool, events)
    print(f"nats killed at {at_crash} settled; all {TRADES} settled {caught_up:.1f}s after restart;"
          f" nats_disconnected logged {log_events(log, 'nats_disconnected')}x")  # fmt: skip


async def test_postgresql_stopped_at_once_and_restarted_mid_run_loses_and_doubles_nothing(
    own_servers, own
):
    settings, pool = own
    log = own_servers.state / f"{settings.stream_name}.log"
    events = await seeded(settings, pool)
    half = TRADES // 2
    await enqueue_executed(settings, pool, events[:half])
    parts = [spawn(part, settings, log) for part in ("api", "relay", "settlement")]
    try:
        await wait_ready(settings.public_url)
        await wait_until(pool, 200)
        # Immediate shutdown (SIGQUIT): open transactions die uncommitted, the next start
        # replays the WAL, every connection of every part is broken.
        own_servers.postgres.stop(immediate=True)
        assert not await asyncio.to_thread(ready, settings.public_url)
        await asyncio.sleep(DOWN_SECONDS)
        own_servers.postgres.start()  # same socket
        started = time.monotonic()
        api_back = await wait_ready(settings.public_url)  # the API's pool reconnected
        restarted_at = await pool.fetchval("SELECT now()")
        await enqueue_executed(settings, pool, events[half:])
        await wait_until(pool, TRADES)
        caught_up = time.monotonic() - started
        await asyncio.sleep(1)
        # Every part beats again (/health/ready lists them): none lost its heartbeat task.
        deadline = time.monotonic() + 2 * HEARTBEAT_SECONDS
        beating: set[str] = set()
        while beating != {"api", "relay", "settlement"} and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            rows = await pool.fetch(
                "SELECT part FROM process_heartbeats WHERE seen_at > $1", restarted_at
            )
            beating = {row["part"] for row in rows}
        assert beating == {"api", "relay", "settlement"}
        await wait_published(pool)
    finally:
        for part in parts:
            kill(part, signal.SIGTERM)
    assert await pool.fetchval(PENDING) == 0
    assert await stream_messages(settings) == 2 * TRADES  # executed and reserved, once each
    await assert_exactly_once(settings, pool, events)
    print(f"postgres back: API ready after {api_back:.1f}s, all {TRADES} settled after"
          f" {caught_up:.1f}s; database_unavailable logged"
          f" {log_events(log, 'settlement_database_unavailable')}x")  # fmt: skip


async def test_a_batch_held_while_postgresql_is_down_is_settled_when_it_returns(own_servers, own):
    """A database outage is not a failing batch: it counts no delivery and dead-letters nothing,
    however many retries (here MAX_DELIVER's worth many times over) it outlasts."""
    settings, pool = own
    events = await seeded(settings, pool, trades=200)
    await publish_executed(settings, events)
    async with worker(settings, pool, SystemClock()) as part:
        part.consumer.retry_delay = 0.01  # a failing batch would be dead-lettered in ~0.2 s
        own_servers.postgres.stop(immediate=True)
        try:
            polling = asyncio.create_task(part.consumer.poll(part.sub, wait=2.0))
            await asyncio.sleep(MAX_DELIVER * 0.5)
            assert not polling.done()  # held, neither failed nor given up
        finally:
            own_servers.postgres.start()
        assert await polling == len(events)
        assert await part.consumer.poll(part.sub, wait=0.5) == 0  # nothing redelivered
    assert await settled(pool) == len(events)
    assert await pool.fetchval("SELECT count(*) FROM settlement_failures") == 0
