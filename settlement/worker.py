"""The settlement worker.

The process, its connections and its heartbeat are real; consuming ``dx.trade.executed`` and
settling arrives with the settlement issue. Until then the loop waits to stop.
"""

from __future__ import annotations

import asyncio

from exchange.platform.context import Platform


async def settlement_loop(platform: Platform, stop: asyncio.Event) -> None:
    del platform
    await stop.wait()
