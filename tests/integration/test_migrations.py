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


async def test_0009_reads_the_suspension_cause_out_of_the_old_reasons(scratch_db):
    """Products suspended before 0009 carried their cause only in the reason's words; the
    migration moves it into `suspended_by`, which the listing room's transitions read."""
    from exchange.identity.uscc import synthetic_uscc

    migrations = load_migrations()
    before = [m for m in migrations if m.version < 9]
    conn = await asyncpg.connect(scratch_db)
    try:
        await migrate(conn, before)
        org = uuid.uuid4()
        await conn.execute(
            "INSERT INTO organisations (id, name, uscc, roles, region, contact, created_at,"
            " updated_at) VALUES ($1, '卖方', $2, ARRAY['seller'], '310000', '{}', now(), now())",
            org, synthetic_uscc(7),
        )  # fmt: skip
        rows = {
            "origin": ("SZDX", "suspended", "suspended by SZDX: 卖方申请"),
            "distrust": ("SZDX", "suspended", "peer exchange SZDX is no longer trusted"),
            "local_policy": (
                "SZDX", "suspended",
                "a newer revision is refused by this exchange's negative list",
            ),
            "exchange": ("SZDX", "suspended", "staff: complaint under review"),
            "own": (None, "suspended", "suspended by SZDX: looks like the origin's words"),
            "listed": (None, "listed", None),
        }  # fmt: skip
        ids = {}
        for label, (origin, state, reason) in rows.items():
            ids[label] = uuid.uuid4()
            await conn.execute(
                "INSERT INTO products (id, seller_org_id, state, recognised_from,"
                " suspended_reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, now(),"
                " now())",
                ids[label], org, state, origin, reason,
            )  # fmt: skip
        assert await migrate(conn, migrations) == [
            f"{m.version:04d}_{m.name}" for m in migrations if m.version >= 9
        ]
        found = {
            label: await conn.fetchval("SELECT suspended_by FROM products WHERE id = $1", i)
            for label, i in ids.items()
        }
        assert found == {
            "origin": "origin",
            "distrust": "distrust",
            "local_policy": "local_policy",
            "exchange": "exchange",
            "own": "exchange",  # not recognised from a peer: only staff here suspend it
            "listed": None,
        }
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "UPDATE products SET suspended_by = NULL WHERE id = $1", ids["origin"]
            )
    finally:
        await conn.close()
