"""A benchmark's own exchange: a scratch database, stream, subjects and state folder on the
servers the exchange is configured with, made before a run and dropped after it, so a bench
never touches the exchange's own data and two benches never touch each other's."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import replace
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from exchange.platform.bus import connect_nats
from exchange.platform.settings import Settings

# One client from one address, faster than any person: the rate limits would refuse it.
UNLIMITED: dict[str, Any] = {
    "rate_limit_per_second": 1_000_000,
    "rate_limit_burst": 10_000_000,
    "rate_limit_anonymous_per_second": 1_000_000,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(url: str, name: str) -> str:
    """The same server's URL for another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def scratch_settings(
    live: Settings,
    name: str,
    *,
    bootstrap: Literal["always", "never"] = "never",
    **overrides: Any,
) -> tuple[Settings, str | None]:
    """Settings for a scratch exchange called ``name`` (lower case: the database
    ``dataex_bench_<name>``, the stream ``DATAEX_BENCH_<NAME>``), migrated and with its signing
    key, quiet logs, and ``overrides`` applied; and the admin token when ``bootstrap`` is
    "always". A database of that name left by an interrupted run is dropped first."""
    assert live.database_url
    database = f"dataex_bench_{name}"
    admin = await asyncpg.connect(live.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f"CREATE DATABASE \"{database}\" TEMPLATE template0 ENCODING 'UTF8'")
    finally:
        await admin.close()
    settings = replace(
        live,
        database_url=with_database(live.database_url, database),
        stream_name=f"DATAEX_BENCH_{name.upper()}",
        subject_prefix=f"dxbench{name.replace('_', '')}",
        log_level="warning",
        log_format="json",
        **overrides,
    )
    from exchange.runtime import prepare

    token = await prepare(settings, bootstrap=bootstrap)
    return settings, token


async def drop_scratch(live: Settings, settings: Settings) -> None:
    """Remove a benchmark's own database and stream."""
    assert live.database_url and settings.database_url and settings.nats_url
    admin = await asyncpg.connect(live.database_url)
    try:
        name = urlsplit(settings.database_url).path.lstrip("/")
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    client = await connect_nats(settings.nats_url, name="dataex-bench")
    try:
        with contextlib.suppress(Exception):  # a run that failed early may have made none
            await client.jetstream().delete_stream(settings.stream_name)
    finally:
        await client.close()
