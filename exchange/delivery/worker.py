"""The delivery worker: trades and listings in, grant changes out; expiry, leases, periods.

A durable JetStream consumer (``delivery``) reads ``dx.trade.executed`` / ``reserved`` /
``voided`` / ``failed``, ``dx.listing.*`` and ``dx.organisation.*``. A fetched batch is applied
in one transaction and acknowledged after it commits; if the batch fails, its messages are
applied one by one, and one that keeps failing is terminated after `MAX_DELIVER` deliveries
(logged with its payload).
Every handler is idempotent (grants are keyed by trade and mode, transitions check the state,
news that arrives before its trade is kept for it), so a redelivery changes nothing.
Housekeeping expires grants whose term is over, reclaims the leases of gateway processes that
died, and closes billing periods.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from exchange.delivery import quota
from exchange.delivery.service import GrantService
from exchange.platform import metrics, tracing
from exchange.platform.bus import fetch_batch
from exchange.platform.context import Platform
from exchange.platform.db import Connection
from exchange.platform.events import (
    ListingEvent,
    OrganisationEvent,
    TradeExecuted,
    TradeSettlementEvent,
)
from exchange.platform.logging import get_logger
from exchange.platform.settings import Settings

log = get_logger(__name__)

DURABLE = "delivery"
MAX_DELIVER = 5
ACK_WAIT_SECONDS = 10.0
BATCH = 500
HOUSEKEEPING_SECONDS = 1.0

# Closes due billing periods (exchange.delivery.billing), called by housekeeping.
PeriodCloser = Callable[[], Awaitable[int]]


def subjects(settings: Settings) -> list[str]:
    return [
        settings.subject("trade", "executed"),
        settings.subject("trade", "reserved"),
        settings.subject("trade", "voided"),
        settings.subject("trade", "failed"),
        settings.subject("listing", "*"),
        settings.subject("organisation", "*"),
    ]


def consumer_config(settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=DURABLE,
        name=DURABLE,
        filter_subjects=subjects(settings),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_deliver=MAX_DELIVER,
        ack_wait=ACK_WAIT_SECONDS,
        max_ack_pending=20_000,
    )


async def _bind(platform: Platform) -> Any:
    """Create (or update) the durable consumer, then bind a pull subscription to it."""
    settings = platform.settings
    js = platform.nats.jetstream()
    await js.add_consumer(settings.stream_name, consumer_config(settings))
    return await js.pull_subscribe_bind(DURABLE, stream=settings.stream_name)


_EXECUTED = msgspec.json.Decoder(TradeExecuted)
_SETTLED = msgspec.json.Decoder(TradeSettlementEvent)
_LISTING = msgspec.json.Decoder(ListingEvent)
_ORGANISATION = msgspec.json.Decoder(OrganisationEvent)


async def apply(conn: Connection, grants: GrantService, subject: str, data: bytes) -> None:
    """Apply one event in the caller's transaction. Raises on an undecodable event."""
    kind = subject.split(".", 1)[1] if "." in subject else subject
    if kind == "trade.executed":
        await grants.on_trade_executed(conn, _EXECUTED.decode(data).data)
    elif kind == "trade.reserved":
        await grants.on_trade_reserved(conn, uuid.UUID(_SETTLED.decode(data).data.trade_id))
    elif kind in ("trade.voided", "trade.failed"):
        event = _SETTLED.decode(data)
        await grants.on_trade_ended(
            conn, uuid.UUID(event.data.trade_id),
            f"the trade was {event.data.state}" + (f": {event.data.reason}"
                                                   if event.data.reason else ""),
        )  # fmt: skip
    elif kind.startswith("listing."):
        listing = _LISTING.decode(data)
        await grants.on_listing(
            conn, listing.type.rsplit(".", 1)[1], listing.data.product_code, listing.data.reason
        )
    elif kind.startswith("organisation."):
        organisation = _ORGANISATION.decode(data)
        await grants.on_organisation(
            conn, organisation.type.rsplit(".", 1)[1], uuid.UUID(organisation.data.org_id),
            organisation.data.reason,
        )  # fmt: skip


async def apply_batch(conn: Connection, grants: GrantService, messages: Sequence[Any]) -> None:
    """Apply a fetched batch in the caller's transaction: the executed trades first, in one go,
    then the reserved ones, then every other event in order. Taking executed before reserved is
    the order they are written in; news of a trade whose grants are not there yet is kept."""
    executed, reserved, others = [], [], []
    for message in messages:
        kind = message.subject.split(".", 1)[1] if "." in message.subject else message.subject
        if kind == "trade.executed":
            executed.append(_EXECUTED.decode(message.data).data)
        elif kind == "trade.reserved":
            reserved.append(uuid.UUID(_SETTLED.decode(message.data).data.trade_id))
        else:
            others.append(message)
    if executed:
        await grants.on_trades_executed(conn, executed)
    if reserved:
        await grants.on_trades_reserved(conn, reserved)
    for message in others:
        await apply(conn, grants, message.subject, message.data)


class Consumer:
    def __init__(self, platform: Platform, grants: GrantService) -> None:
        self.platform = platform
        self.grants = grants

    async def handle(self, messages: Sequence[Any]) -> None:
        metrics.count_deliveries(DURABLE, (m.metadata.num_delivered for m in messages))
        try:
            async with self.platform.pool.acquire() as conn, conn.transaction():
                await apply_batch(conn, self.grants, messages)
        except Exception as error:  # noqa: BLE001 - isolate the message that fails
            log.warning("delivery_batch_failed", size=len(messages), error=repr(error))
            for message in messages:
                # Alone, a message's lines (and the events it causes) continue its trace, from
                # the header the relay sent it with.
                trace = (message.headers or {}).get("traceparent")
                with tracing.bound(tracing.continued(trace)):
                    try:
                        async with self.platform.pool.acquire() as conn, conn.transaction():
                            await apply(conn, self.grants, message.subject, message.data)
                    except Exception as single:  # noqa: BLE001 - retried, then given up
                        await self._retry_or_give_up(message, single)
                    else:
                        await _ack(message)
            return
        for message in messages:
            await _ack(message)

    async def _retry_or_give_up(self, message: Any, error: Exception) -> None:
        deliveries = message.metadata.num_delivered
        undecodable = isinstance(error, (msgspec.DecodeError, msgspec.ValidationError))
        if undecodable or deliveries >= MAX_DELIVER:
            metrics.CONSUMER_DEAD_LETTERS.labels(DURABLE).inc()
            log.error(
                "delivery_event_dropped", subject=message.subject, deliveries=deliveries,
                error=repr(error), payload=bytes(message.data)[:2000].decode(errors="replace"),
            )  # fmt: skip
            await message.term()
        else:
            await message.nak(delay=0.5 * deliveries)


async def _ack(message: Any) -> None:
    try:
        await message.ack()
    except Exception as error:  # noqa: BLE001 - a lost ack is a redelivery, which changes nothing
        log.warning("delivery_ack_failed", error=repr(error))


async def consume_loop(platform: Platform, stop: asyncio.Event, grants: GrantService) -> None:
    consumer = Consumer(platform, grants)
    sub = None
    while not stop.is_set():
        try:
            if sub is None:
                sub = await _bind(platform)
            messages = await fetch_batch(sub, BATCH, 1.0)
            if messages:
                await consumer.handle(messages)
        except Exception as error:  # noqa: BLE001 - reconnects, restarts: keep consuming
            log.warning("delivery_consume_failed", error=repr(error))
            sub = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)


async def housekeeping(platform: Platform, grants: GrantService,
                       close_periods: PeriodCloser | None) -> None:  # fmt: skip
    """One round: expire, reclaim dead processes' leases, close due periods."""
    while await grants.expire_due() > 0:
        pass
    await quota.reap_expired(platform.pool, grants.exhausted)
    if close_periods is not None:
        await close_periods()


async def housekeeping_loop(platform: Platform, stop: asyncio.Event, grants: GrantService,
                            close_periods: PeriodCloser | None) -> None:  # fmt: skip
    while not stop.is_set():
        try:
            await housekeeping(platform, grants, close_periods)
        except Exception as error:  # noqa: BLE001 - try again next round
            log.warning("delivery_housekeeping_failed", error=repr(error))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=HOUSEKEEPING_SECONDS)


async def delivery_loop(platform: Platform, stop: asyncio.Event, grants: GrantService,
                        close_periods: PeriodCloser | None = None) -> None:  # fmt: skip
    await asyncio.gather(
        consume_loop(platform, stop, grants),
        housekeeping_loop(platform, stop, grants, close_periods),
    )
