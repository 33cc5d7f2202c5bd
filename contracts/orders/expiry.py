"""Housekeeping run beside the relay: expire contracts left unsigned past their deadline."""

from __future__ import annotations

import asyncio
import contextlib

from contracts.orders.service import OrderService
from exchange.platform.audit import Actor
from exchange.platform.context import Platform
from exchange.platform.logging import get_logger

log = get_logger(__name__)
EVERY_SECONDS = 30.0


async def expiry_loop(platform: Platform, stop: asyncio.Event) -> None:
    service = OrderService(platform.pool, platform.clock, platform.settings, platform.keyring)
    actor = Actor(label="system:expiry")
    while not stop.is_set():
        try:
            expired = await service.expire_due(actor)
            if expired:
                log.info("contracts_expired", count=expired)
        except Exception as error:  # noqa: BLE001 - retried next round
            log.warning("expiry_failed", error=f"{type(error).__name__}: {error}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), EVERY_SECONDS)
