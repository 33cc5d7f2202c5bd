"""The settlement worker: consume executed trades, post due ones, sign tree heads, and find
executed trades that never reached the consumer (`settlement.reconciler`)."""

from __future__ import annotations

import asyncio

from exchange.platform.context import Platform
from settlement.consumer import consume_loop, housekeeping_loop
from settlement.reconciler import reconcile_loop
from settlement.service import SettlementService


async def settlement_loop(
    platform: Platform, stop: asyncio.Event, service: SettlementService
) -> None:
    await asyncio.gather(
        consume_loop(platform, stop, service),
        housekeeping_loop(platform, stop, service),
        reconcile_loop(platform, stop),
    )
