"""The run's PostgreSQL and NATS JetStream: databases and streams made, emptied and removed.

By default the embedded servers start under a temporary folder (the same code `dataex up`
uses). With DATAEX_TEST_DATABASE_URL / DATAEX_TEST_NATS_URL set, those servers are used
instead: the run creates its own database and its own stream there and removes both after.
Each test starts from empty tables and an empty stream. The fixtures that start and hand out
these servers are in tests.kit.fixtures.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
from nats.js.errors import NotFoundError

from exchange.platform.bus import ensure_stream, jobs_stream_name
from exchange.platform.db import connect, migrate
from exchange.platform.settings import Settings


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass(frozen=True)
class TestServers:
    settings: Settings
    admin_database_url: str
    embedded: bool


async def create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    finally:
        await conn.close()


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def delete_stream(nats_url: str, name: str) -> None:
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().delete_stream(name)
    finally:
        await client.close()


async def prepare_servers(settings: Settings) -> None:
    """Migrate the database and provision the stream (what `dataex up` does before it serves)."""
    assert settings.database_url and settings.nats_url
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    client = await nats.connect(settings.nats_url)
    try:
        await ensure_stream(client, settings)
    finally:
        await client.close()


async def clean(settings: Settings) -> None:
    """Empty every table (but the migrations') and the stream."""
    assert settings.database_url and settings.nats_url
    conn = await asyncpg.connect(settings.database_url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'schema_migrations'"
        )
        names = ", ".join(f'"{row["tablename"]}"' for row in tables)
        # replica role: the append-only triggers do not fire for this harness-only reset.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    client = await nats.connect(settings.nats_url)
    try:
        js = client.jetstream()
        await js.purge_stream(settings.stream_name)
        with contextlib.suppress(NotFoundError):  # made by ensure_stream, where it ran
            await js.purge_stream(jobs_stream_name(settings))
    finally:
        await client.close()
