"""The transactional outbox relay.

The process, its connections and its heartbeat are real; the relay loop itself (claiming outbox
rows with FOR UPDATE SKIP LOCKED and publishing them to JetStream) arrives with the first
events, in the listings issue. Until then there is nothing to relay and the loop waits to stop.
"""

from __future__ import annotations

import asyncio

from exchange.platform.context import Platform


async def relay_loop(platform: Platform, stop: asyncio.Event) -> None:
    del platform
    await stop.wait()
