"""Heartbeats of long-running parts, so /health/ready can show which parts are alive."""

from __future__ import annotations

import asyncio
import os
import socket

import asyncpg

from exchange.platform.logging import get_logger

log = get_logger(__name__)
INTERVAL_SECONDS = 5.0


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def beat(pool: asyncpg.Pool, part: str) -> None:
    # The database's clock, not the app's: ages are computed by the database too.
    await pool.execute(
        """
        INSERT INTO process_heartbeats (part, instance, pid, started_at, seen_at)
        VALUES ($1, $2, $3, now(), now())
        ON CONFLICT (part, instance) DO UPDATE SET seen_at = now()
        """,
        part,
        instance_name(),
        os.getpid(),
    )


async def run_heartbeat(pool: asyncpg.Pool, part: str) -> None:
    """Beat every few seconds until cancelled; a failed beat is logged and retried."""
    while True:
        try:
            await beat(pool, part)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            # InterfaceError: "connection is closed" while the database restarts.
            log.warning("heartbeat_failed", part=part, error=str(error))
        await asyncio.sleep(INTERVAL_SECONDS)


async def forget(pool: asyncpg.Pool, part: str) -> None:
    """Remove this process's heartbeat on a clean stop."""
    await pool.execute(
        "DELETE FROM process_heartbeats WHERE part = $1 AND instance = $2", part, instance_name()
    )
