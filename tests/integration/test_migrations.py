"""Migrations on a scratch database: applied once, transactional, locked, checksummed (the files'
numbering: tests/unit/test_migrations.py)."""

import asyncio
import json
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


async def test_0017_counts_only_what_earlier_orders_exported(scratch_db):
    """Orders placed before 0017 counted every declared individual of every executed export.
    The migration keeps in the seller's totals only identifiable personal information (from
    each order's own policy decision) of trades not unfunded, nor voided with nothing
    delivered under them."""
    from exchange.identity.uscc import synthetic_uscc

    migrations = load_migrations()
    conn = await asyncpg.connect(scratch_db)
    try:
        await migrate(conn, [m for m in migrations if m.version < 17])
        seller, buyer, product = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        for org, seed, role in ((seller, 17, "seller"), (buyer, 18, "buyer")):
            await conn.execute(
                "INSERT INTO organisations (id, name, uscc, roles, region, contact, created_at,"
                " updated_at) VALUES ($1, '机构', $2, ARRAY[$3], '310000', '{}', now(), now())",
                org, synthetic_uscc(seed), role,
            )  # fmt: skip
        await conn.execute(
            "INSERT INTO products (id, seller_org_id, state, live_revision, product_code,"
            " created_at, updated_at) VALUES ($1, $2, 'listed', 1, 'DX-2026-0000017', now(),"
            " now())",
            product, seller,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO policy_lists (version, digest, title, source, document, effective_from,"
            " published_at, published_by) VALUES ('2026.1', $1, 't', '', '{}', now(), now(), 't')",
            "sha256:" + "0" * 64,
        )  # fmt: skip
        # label: (cross-border, present, state, contract, trade, delivered) -> counted after
        cases = {
            "identifiable": ((True, True, "deidentified", "executed", "settled", False), 50_000),
            "anonymised": ((True, True, "anonymised", "executed", "settled", False), 0),
            "no_pi": ((True, False, "anonymised", "executed", "settled", False), 0),
            "unfunded": ((True, True, "identified", "unfunded", "failed", False), 0),
            "voided": ((True, True, "deidentified", "executed", "voided", False), 0),
            "voided_delivered": ((True, True, "deidentified", "executed", "voided", True), 50_000),
            "domestic": ((False, True, "identified", "executed", "settled", False), 0),
        }  # fmt: skip
        ids = {}
        for label, ((abroad, present, state, contract, trade, delivered), _) in cases.items():
            order, trade_id = uuid.uuid4(), uuid.uuid4()
            ids[label] = order
            await conn.execute(
                "INSERT INTO orders (id, buyer_org_id, seller_org_id, product_id, revision,"
                " plan_id, terms, state, cross_border, sensitive_pi, pi_subject_count,"
                " price_fen, fee_fen, decision, created_at, updated_at, executed_at)"
                " VALUES ($1, $2, $3, $4, 1, 'std', '{}', 'executed', $5, false, 50000, 0, 0,"
                " '{}', now(), now(), now())",
                order, buyer, seller, product, abroad,
            )  # fmt: skip
            document = json.dumps({"product": {"personal_info": {"present": present,
                                                                  "state": state}}})  # fmt: skip
            await conn.execute(
                "WITH d AS (INSERT INTO policy_decisions (subject_type, subject_id, list_version,"
                " list_digest, outcome, document, decision, decided_at) VALUES ('order', $1,"
                " '2026.1', $2, 'allow', $3::jsonb, '{}', now()) RETURNING id)"
                " INSERT INTO policy_subjects (subject_type, subject_id, open, latest_decision)"
                " SELECT 'order', $1, false, id FROM d",
                str(order), "sha256:" + "0" * 64, document,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO trade_contracts (id, order_id, template, document, digest, text_zh,"
                " state, created_at, expires_at, executed_at) VALUES ($1, $2, 'data-provision',"
                " '{}', 'sha256:x', '合同', $3, now(), now(), now())",
                trade_id, order, contract,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO settlement_trades (trade_id, order_id, buyer_org_id, seller_org_id,"
                " contract_digest, product_code, price_fen, fee_fen, state, executed_at,"
                " acceptance_due, updated_at) VALUES ($1, $2, $3, $4, 'sha256:x',"
                " 'DX-2026-0000017', 0, 0, $5, now(), now(), now())",
                trade_id, order, buyer, seller, trade,
            )  # fmt: skip
            grant = uuid.uuid4()
            await conn.execute(
                "INSERT INTO grants (id, trade_id, mode, buyer_org_id, seller_org_id, product_id,"
                " product_code, revision, revision_digest, plan_id, pricing, purpose, territory,"
                " valid_from, valid_until, dimensions, state, created_at, updated_at)"
                " VALUES ($1, $2, 'file', $3, $4, $5, 'DX-2026-0000017', 1, 'sha256:x', 'std',"
                " 'one_off', 'research', ARRAY['CN'], now(), now() + interval '1 day', '[]',"
                " 'revoked', now(), now())",
                grant, trade_id, buyer, seller, product,
            )  # fmt: skip
            if delivered:
                await conn.execute(
                    "INSERT INTO usage_records (id, grant_id, served_at, units, leases,"
                    " cost_millifen, detail) VALUES ($1, $2, now(), '{\"bytes\": 1}', '{}', 0,"
                    " '{}')",
                    uuid.uuid4(), grant,
                )  # fmt: skip
        await migrate(conn, migrations)
        counted = {
            label: await conn.fetchval(
                "SELECT counted_pi_subjects FROM orders WHERE id = $1", order
            )
            for label, order in ids.items()
        }
        assert counted == {label: expected for label, (_, expected) in cases.items()}
    finally:
        await conn.close()


async def test_0024_gives_events_written_before_it_their_subject_and_about_reads_the_index(
    scratch_db,
):
    """Events written before 0024 get their CloudEvent subject out of the payload (0026; a
    job's message, not an event, and a payload that cannot be read keep NULL, failing nothing);
    so does an event written afterwards by a writer that does not name it (0024's trigger);
    `outbox.about` then finds them, through the index."""
    from datetime import UTC, datetime

    from exchange.platform.outbox import about, envelope

    migrations = load_migrations()
    conn = await asyncpg.connect(scratch_db)
    try:
        await migrate(conn, [m for m in migrations if m.version < 24])
        at = datetime(2026, 12, 1, tzinfo=UTC)
        grant = str(uuid.uuid4())
        old = {
            "event": (uuid.uuid4(), "dx.grant.activated", envelope(
                uuid.uuid4(), source="urn:dataex:exchange:DX", event_type="dx.grant.activated",
                event_subject=grant, data={"grant_id": grant}, at=at, request_id=None,
            )),
            "other": (uuid.uuid4(), "dx.grant.suspended", envelope(
                uuid.uuid4(), source="urn:dataex:exchange:DX", event_type="dx.grant.suspended",
                event_subject=str(uuid.uuid4()), data={}, at=at, request_id=None,
            )),
            "job": (uuid.uuid4(), "dx.jobs.compute", str(uuid.uuid4()).encode()),
            "not_json": (uuid.uuid4(), "dx.grant.activated", b'{"subject": '),
            "not_utf8": (uuid.uuid4(), "dx.grant.activated", b'{"subject": "\xff"}'),
        }  # fmt: skip
        for event_id, subject, payload in old.values():
            await conn.execute(
                "INSERT INTO outbox (id, subject, payload, created_at) VALUES ($1, $2, $3, $4)",
                event_id, subject, payload, at,
            )  # fmt: skip
        await migrate(conn, migrations)
        subjects = {
            label: await conn.fetchval("SELECT event_subject FROM outbox WHERE id = $1", row[0])
            for label, row in old.items()
        }
        assert subjects["event"] == grant and subjects["other"] not in (None, grant)
        assert subjects["job"] is subjects["not_json"] is subjects["not_utf8"] is None
        later = uuid.uuid4()  # an old release's insert, naming no subject
        await conn.execute(
            "INSERT INTO outbox (id, subject, payload, created_at) VALUES ($1, $2, $3, $4)",
            later, "dx.grant.suspended", envelope(
                uuid.uuid4(), source="urn:dataex:exchange:DX", event_type="dx.grant.suspended",
                event_subject=grant, data={}, at=at, request_id=None,
            ), at,
        )  # fmt: skip
        assert {e.id for e in await about(conn, "grant", [grant])} == {old["event"][0], later}
        await conn.execute("SET enable_seqscan = off")  # a table this small is scanned anyway
        plan = await conn.fetch(
            "EXPLAIN SELECT id FROM outbox WHERE event_subject = ANY($1::text[])"
            " AND subject LIKE '%.grant.%'",
            [grant],
        )
        assert "outbox_event_subject" in " ".join(row[0] for row in plan)
    finally:
        await conn.close()


async def test_0025_keeps_reviewers_approvals_as_the_review_stage_and_awards_need_a_document(
    scratch_db,
):
    """Approvals written before 0025 are the review stage's; an award proposal names its
    document (and a review approval none); one token may approve in both stages, once each."""
    from datetime import UTC, datetime

    migrations = load_migrations()
    conn = await asyncpg.connect(scratch_db)
    try:
        await migrate(conn, [m for m in migrations if m.version < 25])
        at = datetime(2026, 12, 1, tzinfo=UTC)
        dispute_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO disputes (id, trade_id, buyer_org_id, seller_org_id, claimant, reason,"
            " claimed_fen, held_fen, metered, statement, state, respond_by, acceptance_due,"
            " grants_suspended, four_eyes, opened_by, opened_at, updated_at) VALUES ($1, $2, $3,"
            " $4, 'buyer', 'other', 1, 1, false, 's', 'escalated', $5, $5, false, true, 't', $5,"
            " $5)",
            dispute_id, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), at,
        )  # fmt: skip
        approval = (
            "INSERT INTO dispute_approvals (dispute_id, reviewer, resolution, digest, note,"
            " approved_at{}) VALUES ($1, 'token:a', '{{\"kind\": \"refund_buyer\"}}', 'sha256:x',"
            " 'n', $2{})"
        )
        await conn.execute(approval.format("", ""), dispute_id, at)
        await migrate(conn, migrations)
        old = await conn.fetchrow("SELECT stage, document_sha256 FROM dispute_approvals")
        assert old is not None and (old["stage"], old["document_sha256"]) == ("review", None)
        award = approval.format(", stage, document_sha256", ", 'award', $3")
        await conn.execute(award, dispute_id, at, "ab" * 32)  # the same token, the other stage
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(award, dispute_id, at, "cd" * 32)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                approval.format(", stage", ", 'award'").replace("'token:a'", "'token:b'"),
                dispute_id, at,
            )  # fmt: skip
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                approval.format(", document_sha256", ", $3").replace("'token:a'", "'token:b'"),
                dispute_id, at, "ab" * 32,
            )  # fmt: skip
        stages = await conn.fetch(
            "SELECT stage FROM dispute_approvals WHERE dispute_id = $1 ORDER BY stage", dispute_id
        )
        assert [r["stage"] for r in stages] == ["award", "review"]
    finally:
        await conn.close()
