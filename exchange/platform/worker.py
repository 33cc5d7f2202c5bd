"""The frame of a long-running background part (outbox relay, settlement worker).

It connects, beats its heartbeat, runs the part's loop until SIGTERM/SIGINT, and cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

from exchange.platform.bus import connect_nats
from exchange.platform.clock import SystemClock
from exchange.platform.context import Platform
from exchange.platform.db import create_pool
from exchange.platform.heartbeat import forget, run_heartbeat
from exchange.platform.logging import get_logger
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, load_master_key

log = get_logger(__name__)

PartLoop = Callable[[Platform, asyncio.Event], Awaitable[None]]
DRAIN_SECONDS = 1.0


async def run_part(settings: Settings, part: str, loop_body: PartLoop) -> None:
    if not settings.database_url or not settings.nats_url:
        raise RuntimeError(f"the {part} needs DATAEX_DATABASE_URL and DATAEX_NATS_URL")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    nats = await connect_nats(settings.nats_url, name=f"dataex-{part}")
    platform = Platform(
        settings=settings,
        clock=SystemClock(),
        pool=pool,
        nats=nats,
        keyring=KeyRing(load_master_key(settings.state_dir)),
    )
    heartbeat = asyncio.create_task(run_heartbeat(pool, part))
    log.info("part_started", part=part)
    try:
        await loop_body(platform, stop)
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        with contextlib.suppress(Exception):
            await forget(pool, part)
        if not nats.is_closed:
            # Drain flushes what was published; it would wait (30 s) for messages a pull
            # subscription prefetched and will never handle, which JetStream redelivers anyway.
            try:
                await asyncio.wait_for(nats.drain(), timeout=DRAIN_SECONDS)
            except TimeoutError:
                await nats.close()
        await pool.close()
        log.info("part_stopped", part=part)
