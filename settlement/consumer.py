"""The settlement worker's JetStream side: a durable pull consumer with explicit acks.

Several workers bind the same durable consumer, so JetStream hands each message to one of them.
A fetched batch is settled in one PostgreSQL transaction and acknowledged only after it commits;
if the batch fails, its messages are retried one by one so one bad event cannot hold up the rest.
A message that keeps failing is redelivered at most ``MAX_DELIVER`` times; then it goes to the
dead-letter subject and into ``settlement_failures`` (staff see it at
``GET /v1/settlement/failures``), and is terminated. An event that cannot be decoded, or that
does not match the executed contract it names, is dead-lettered at once: retrying cannot help.
Idempotency lives in PostgreSQL (the trade's primary key, each movement's unique step), so a
redelivery or a duplicate publish past JetStream's dedup window changes nothing.

While PostgreSQL cannot be reached (a restart, a failover) a batch is not a failing batch: it is
held, its messages kept from redelivery with "in progress" acks, and settled once the database
answers again. Counting those attempts as deliveries would dead-letter good trades.

Each trade's handling continues the trace its event carries (``traceparent``): one log line per
registered trade (``trade_registered``, with its ``trace_id``), the lines about a message
handled alone, and its ``dx.trade.reserved`` / ``failed`` event carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from exchange.platform import metrics, tracing
from exchange.platform.bus import fetch_batch
from exchange.platform.context import Platform
from exchange.platform.db import is_unavailable
from exchange.platform.events import TradeExecuted
from exchange.platform.logging import get_logger
from exchange.platform.settings import Settings
from settlement.service import SettlementService

log = get_logger(__name__)

DURABLE = "settlement"
MAX_DELIVER = 5
# How long a message handed to a worker that died waits before JetStream hands it out again.
# A batch settles in well under a second; a held one is kept alive with in-progress acks.
ACK_WAIT_SECONDS = 10.0
BATCH = 1000
RETRY_DELAY_SECONDS = 1.0
# While the database is away: first and longest pause between attempts, and how often the held
# messages are marked in progress (well inside ack_wait, so none is redelivered meanwhile).
UNAVAILABLE_FIRST_PAUSE = 0.1
UNAVAILABLE_MAX_PAUSE = 2.0
PROGRESS_EVERY_SECONDS = ACK_WAIT_SECONDS / 3


def dead_letter_subject(settings: Settings) -> str:
    return settings.subject("settlement", "dead")


def consumer_config(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=DURABLE,
        name=DURABLE,
        filter_subject=settings.subject("trade", "executed"),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=MAX_DELIVER,
        ack_wait=ACK_WAIT_SECONDS,
        max_ack_pending=50_000,
        max_waiting=64,
    )


async def subscribe(platform: Platform) -> Any:
    settings = platform.settings
    js = platform.nats.jetstream()
    return await js.pull_subscribe(
        settings.subject("trade", "executed"),
        durable=DURABLE,
        stream=settings.stream_name,
        config=consumer_config(settings),
    )


async def backlog(platform: Platform) -> int | None:
    """How many executed events the durable consumer has not handed out yet (None: it does not
    exist yet). The reconciler waits while there are any: their trades are queued, not lost."""
    state = await consumer_state(platform)
    return None if state is None else state[0]


async def consumer_state(platform: Platform) -> tuple[int, int] | None:
    """The durable consumer's events not handed out yet and those handed out but not
    acknowledged (None: it does not exist yet)."""
    try:
        info = await platform.nats.jetstream().consumer_info(platform.settings.stream_name, DURABLE)
    except NotFoundError:
        return None
    return int(info.num_pending or 0), int(info.num_ack_pending or 0)


class Consumer:
    def __init__(
        self,
        platform: Platform,
        service: SettlementService,
        retry_delay: float = RETRY_DELAY_SECONDS,
    ) -> None:
        self.platform = platform
        self.service = service
        self.retry_delay = retry_delay
        self.stop: asyncio.Event | None = None  # set by `run`: stop waiting for the database

    async def poll(self, sub: Any, batch: int = BATCH, wait: float = 1.0) -> int:
        """Fetch and handle one batch; returns how many messages it held (0 on timeout)."""
        messages = await fetch_batch(sub, batch, wait)
        if messages:
            await self.handle(messages)
        return len(messages)

    async def run(self, sub: Any, stop: asyncio.Event, batch: int = BATCH) -> None:
        """Handle batches until ``stop``, fetching the next batch while one is being settled
        (nats-py spends about as long reading a batch as PostgreSQL takes to settle one). A
        fetched batch is always handled before returning."""
        self.stop = stop
        pending = asyncio.ensure_future(fetch_batch(sub, batch, 1.0))
        try:
            while True:
                messages = await pending
                if stop.is_set():
                    if messages:
                        await self.handle(messages)
                    return
                pending = asyncio.ensure_future(fetch_batch(sub, batch, 1.0))
                if messages:
                    await self.handle(messages)
                    await self._sign_tree_head()
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            if stop.is_set():  # fetched but unhandled messages are redelivered after ack_wait
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _sign_tree_head(self) -> None:
        """A tree head every TREE_HEAD_EVERY entries. One that fails (the database restarting)
        must not end this consumer: its prefetched batch would wait out ack_wait; the next
        batch, or the housekeeping loop, signs instead."""
        try:
            await self.service.sign_tree_head(min_new=TREE_HEAD_EVERY)
        except Exception as error:  # noqa: BLE001 - signed later, see above
            log.warning("settlement_tree_head_failed", error=f"{type(error).__name__}: {error}")

    async def handle(self, messages: Sequence[Any]) -> None:
        metrics.count_deliveries(DURABLE, (m.metadata.num_delivered for m in messages))
        decoded: list[tuple[Any, TradeExecuted]] = []
        for message in messages:
            try:
                event = msgspec.json.decode(message.data, type=TradeExecuted)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                # its trace, if any, from the header the relay sent it with
                with tracing.bound(tracing.continued((message.headers or {}).get("traceparent"))):
                    await self.dead_letter(message, None, f"undecodable event: {error}")
                continue
            decoded.append((message, event))
        if not decoded:
            return
        try:
            await self._settle_when_available(decoded)
        except Exception as error:  # noqa: BLE001 - isolate the message that fails
            log.warning("settlement_batch_failed", size=len(decoded),
                        error=f"{type(error).__name__}: {error}")  # fmt: skip
            for item in decoded:
                with tracing.bound(tracing.continued(item[1].traceparent)):
                    try:
                        await self._settle_when_available([item])
                    except Exception as single:  # noqa: BLE001 - retried, then dead-lettered
                        await self.retry_or_give_up(item[0], item[1], single)

    async def _settle_when_available(self, items: Sequence[tuple[Any, TradeExecuted]]) -> None:
        """`_settle`, waiting out an unreachable database (see the module's docstring).

        Raises what is wrong with the work itself. Returns without settling only when the
        worker is stopping: the messages, unacknowledged, are redelivered to another worker."""
        pause = UNAVAILABLE_FIRST_PAUSE
        progressed = time.monotonic()
        while True:
            try:
                await self._settle(items)
            except Exception as error:
                if not is_unavailable(error):
                    raise
                log.warning("settlement_database_unavailable", size=len(items),
                            error=f"{type(error).__name__}: {error}")  # fmt: skip
            else:
                return
            if self.stop is not None and self.stop.is_set():
                return
            if time.monotonic() - progressed >= PROGRESS_EVERY_SECONDS:
                await _in_progress(items)
                progressed = time.monotonic()
            if self.stop is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=pause)
            pause = min(pause * 2, UNAVAILABLE_MAX_PAUSE)

    async def _settle(self, items: Sequence[tuple[Any, TradeExecuted]]) -> None:
        request_id = items[0][1].dxrequestid if len(items) == 1 else None
        # Each trade's span: the one bound when it is handled alone, else a child of its event's.
        here = tracing.current() if len(items) == 1 else None
        spans = {e.data.trade_id: here or tracing.continued(e.traceparent) for _, e in items}
        result = await self.service.settle_executed(
            [e.data for _, e in items], request_id, {t: s.header for t, s in spans.items()}
        )
        _registered(items, result.registered, spans)
        for message, event in items:
            why = result.invalid.get(event.data.trade_id)
            if why is not None:
                await self.dead_letter(message, event, why)
            else:
                await _ack(message)

    async def retry_or_give_up(self, message: Any, event: TradeExecuted, error: Exception) -> None:
        deliveries = message.metadata.num_delivered
        reason = f"{type(error).__name__}: {error}"
        if deliveries >= MAX_DELIVER:
            await self.dead_letter(message, event, f"failed {deliveries} times; last: {reason}")
        else:
            log.warning("settlement_retry", trade_id=event.data.trade_id,
                        deliveries=deliveries, error=reason)  # fmt: skip
            await message.nak(delay=self.retry_delay * deliveries)

    async def dead_letter(self, message: Any, event: TradeExecuted | None, why: str) -> None:
        settings = self.platform.settings
        trade_id = None
        if event is not None:
            with contextlib.suppress(ValueError):
                trade_id = uuid.UUID(event.data.trade_id)
        meta = message.metadata
        metrics.CONSUMER_DEAD_LETTERS.labels(DURABLE).inc()
        log.error("settlement_dead_letter", subject=message.subject, trade_id=str(trade_id),
                  deliveries=meta.num_delivered, error=why)  # fmt: skip
        async with self.platform.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO settlement_failures (stream_seq, subject, event_id, trade_id,"
                " deliveries, error, payload, failed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                meta.sequence.stream, message.subject, event.id if event else None, trade_id,
                meta.num_delivered, why, bytes(message.data), self.platform.clock.now(),
            )  # fmt: skip
        await self.platform.nats.jetstream().publish(
            dead_letter_subject(settings),
            bytes(message.data),
            headers={
                "Dataex-Original-Subject": message.subject,
                "Dataex-Error": why[:1000],
                "Nats-Msg-Id": f"dead-{meta.sequence.stream}",
            },
            stream=settings.stream_name,
        )
        await message.term()


def _registered(
    items: Sequence[tuple[Any, TradeExecuted]],
    outcomes: Mapping[str, str],
    spans: Mapping[str, tracing.TraceContext],
) -> None:
    """Count a committed batch, and log each trade it registered with its trace: the line that
    follows an order's trace into settlement."""
    metrics.SETTLEMENT_BATCH_SIZE.observe(len(items))
    now = datetime.now(UTC)
    for _message, event in items:
        trade_id = event.data.trade_id
        outcome = outcomes.get(trade_id)
        if outcome is None:  # seen before, or invalid (dead-lettered)
            continue
        executed = event.time if event.time.tzinfo else event.time.replace(tzinfo=UTC)
        lag = max(0.0, (now - executed).total_seconds())
        metrics.SETTLEMENT_REGISTERED.labels(outcome).inc()
        metrics.SETTLEMENT_LAG.observe(lag)
        span = spans[trade_id]
        log.info(
            "trade_registered", trade_id=trade_id, order_id=event.data.order_id, outcome=outcome,
            lag_ms=round(lag * 1000, 1), trace_id=span.trace_id, span_id=span.span_id,
        )  # fmt: skip


async def _in_progress(items: Sequence[tuple[Any, TradeExecuted]]) -> None:
    """Reset the ack timer of held messages; if NATS is away too, JetStream redelivers them."""
    for message, _event in items:
        try:
            await message.in_progress()
        except Exception as error:  # noqa: BLE001 - a redelivery changes nothing
            log.warning("settlement_progress_failed", error=f"{type(error).__name__}: {error}")
            return


async def _ack(message: Any) -> None:
    """Acknowledge after commit. A lost ack only means a redelivery, which changes nothing."""
    try:
        await message.ack()
    except Exception as error:  # noqa: BLE001 - see above
        log.warning("settlement_ack_failed", error=f"{type(error).__name__}: {error}")


async def consume_loop(platform: Platform, stop: asyncio.Event, service: SettlementService) -> None:
    consumer = Consumer(platform, service)
    sub = None
    while not stop.is_set():
        try:
            if sub is None:
                sub = await subscribe(platform)
            await consumer.run(sub, stop)
        except Exception as error:  # noqa: BLE001 - reconnects, server restarts: keep consuming
            log.warning("settlement_consume_failed", error=f"{type(error).__name__}: {error}")
            sub = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)


TREE_HEAD_EVERY = 1000
TREE_HEAD_SECONDS = 5.0
DUE_SWEEP_SECONDS = 5.0


async def housekeeping_loop(
    platform: Platform, stop: asyncio.Event, service: SettlementService
) -> None:
    """Post trades whose acceptance period passed, and sign a tree head at least every
    ``TREE_HEAD_SECONDS`` while new entries arrive."""
    while not stop.is_set():
        try:
            while await service.settle_due() > 0:
                pass
            await service.sign_tree_head(min_new=TREE_HEAD_EVERY, max_age_seconds=TREE_HEAD_SECONDS)
        except Exception as error:  # noqa: BLE001 - try again next round
            log.warning("settlement_housekeeping_failed", error=f"{type(error).__name__}: {error}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(DUE_SWEEP_SECONDS, TREE_HEAD_SECONDS))
