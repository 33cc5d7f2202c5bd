"""Migrations on a scratch database: applied once, transactional, locked, checksummed (the files'
numbering: tests/unit/test_migrations.py)."""

import asyncio
import uuid

import asyncpg
import pytest

from exchange.platform.db import (
    Migration,
    MigrationError,
    load_migrations,
    migrate,
    migration_status,
)
from tests.kit.servers import create_database, drop_database, with_database


@pytest.fixture
async def scratch_db(servers):
    name = f"dataex_scratch_{uuid.uuid4().hex[:8]}"
    await create_database(servers.admin_database_url, name)
    url = with_database(servers.admin_database_url, name)
    yield url
    await drop_database(servers.admin_database_url, name)


async def test_migrate_applies_once_and_is_then_a_no_op(scratch_db):
    conn = await asyncpg.connect(scratch_db)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
        assert first == [f"{m.version:04d}_{m.name}" for m in load_migrations()]
        assert second == []
        assert await migration_status(conn) == (True, f"{len(first)} applied")
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_apply_each_file_once(scratch_db):
    conns = [await asyncpg.connect(scratch_db) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(f"{m.version:04d}_{m.name}" for m in load_migrations())
    finally:
        for c in conns:
            await c.close()


async def test_a_changed_applied_file_stops_start_up(scratch_db):
    conn = await asyncpg.connect(scratch_db)
    try:
        await migrate(conn)
        changed = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in load_migrations()]
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, changed)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(scratch_db):
    conn = await asyncpg.connect(scratch_db)
    try:
        good = load_migrations()
        bad = Migration(len(good) + 1, "broken", "CREATE TABLE half_done (x int); SELECT 1/0;")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn, [*good, bad])
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        versions = await conn.fetch("SELECT version FROM schema_migrations")
        assert len(versions) == len(good)
    finally:
        await conn.close()


async def test_pending_migrations_make_status_not_ok(scratch_db):
    conn = await asyncpg.connect(scratch_db)
    try:
        ok, detail = await migration_status(conn)
        assert not ok and "no migrations" in detail
    finally:
        await conn.close()
