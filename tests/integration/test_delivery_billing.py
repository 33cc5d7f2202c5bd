"""Usage rolls into signed periods; the spend cap suspends; the final period closes the books."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from exchange.delivery import tokens
from exchange.delivery.billing import Billing, rfc3339
from exchange.delivery.quota import LeaseBook, needs_for
from exchange.delivery.usage import UsageRecord, UsageRecorder
from exchange.platform.metering import Dimension, cost_millifen
from exchange.platform.signing import KeyRing, jwks, load_master_key, verify_compact
from tests.kit.delivery import active_grant, executed, grant_service
from tests.kit.market import listed_product

PRICES = [Dimension("requests", unit_price_millifen=1500), Dimension("rows", unit_price_millifen=7)]


async def _serve(book, recorder, grant_id, rows: int) -> None:
    """One metered request as the gateway serves it: requests, then what it cost."""
    units = {"requests": 1, "rows": rows}
    cost = cost_millifen(units, {d.name: d for d in PRICES})
    taken = await book.take(grant_id, needs_for(PRICES, 10, units, cost))
    try:
        await recorder.record(UsageRecord(
            id=uuid.uuid4(), grant_id=grant_id, served_at=datetime.now(UTC), units=units,
            leases=list(taken.values()), cost_millifen=cost, detail={},
        ))  # fmt: skip
    finally:
        await book.done(grant_id, taken)


async def test_periods_statements_and_the_spend_cap(client, trade, pool, clock, settings):
    product = await listed_product(client, trade)
    grants = grant_service(pool, clock, settings)
    data = executed(
        product_id=product["id"], product_code=product["product_code"],
        buyer_org=trade["buyer_org"], seller_org=trade["seller_org"], modes=("api", "file"),
        dimensions=PRICES, pricing="metered", spend_cap_fen=10,
    )  # fmt: skip
    grant_id = await active_grant(pool, grants, data)
    # One spend cap, one grant: the metered trade is delivered through its API only.
    assert await pool.fetchval("SELECT count(*) FROM grants WHERE trade_id = $1",
                               uuid.UUID(data.trade_id)) == 1  # fmt: skip
    book = LeaseBook(pool, on_exhausted=grants.exhausted)
    recorder = UsageRecorder(pool)
    billing = Billing(pool, clock, settings, KeyRing(load_master_key(settings.state_dir)),
                      period=timedelta(0), settle_delay=timedelta(0))  # fmt: skip
    # An idle period makes no statement: the next one starts where it ended.
    assert await billing.close(grant_id) is None
    idle_end = await pool.fetchval("SELECT billed_until FROM grants WHERE id = $1", grant_id)
    assert idle_end is not None
    for _ in range(3):
        await _serve(book, recorder, grant_id, rows=10)  # 1,570 milli-fen each
    await book.close()
    first = await billing.close(grant_id)
    assert first is not None and first.period == 1 and first.records == 3
    assert first.totals == {"requests": 3, "rows": 30}
    assert first.starts_at == rfc3339(idle_end)
    assert (first.cost_millifen, first.charge_fen) == (4710, 4)
    # The cap (10 fen = 10,000 milli-fen) allows 3 more (9,420 in all); the 7th is refused.
    book = LeaseBook(pool, on_exhausted=grants.exhausted)
    for _ in range(3):
        await _serve(book, recorder, grant_id, rows=10)
    with pytest.raises(tokens.QuotaExhausted):
        await _serve(book, recorder, grant_id, rows=10)
    row = await pool.fetchrow("SELECT state, suspended_by FROM grants WHERE id = $1", grant_id)
    assert (row["state"], list(row["suspended_by"])) == ("suspended", ["spend_cap"])
    spend = await pool.fetchrow("SELECT * FROM grant_quotas WHERE grant_id = $1", grant_id)
    assert (spend["used_units"], spend["leased_units"]) == (9420, 0)
    second = await billing.close(grant_id)  # closed early at the cap
    assert second is not None and second.period == 2 and second.records == 3
    assert second.cumulative_cost_millifen == 9420
    assert first.charge_fen + second.charge_fen == 9420 // 1000  # floor of the whole
    # Suspended: no lease can be taken until the cap is raised.
    with pytest.raises(tokens.GrantSuspended):
        await LeaseBook(pool).take(grant_id, {"spend": 1})
    await grants.revoke(_actor(), grant_id, "ended for the test")
    last = await billing.close(grant_id)
    assert last is not None and last.final and last.records == 0 and last.charge_fen == 0
    assert await billing.close(grant_id) is None  # the books are closed
    await recorder.stop()

    periods = await pool.fetch(
        "SELECT seq, statement, digest, jws, final FROM usage_periods WHERE grant_id = $1"
        " ORDER BY seq", grant_id,
    )  # fmt: skip
    assert [p["seq"] for p in periods] == [1, 2, 3] and periods[-1]["final"]
    keys = await jwks(pool, "exchange")
    for period in periods:
        claims = verify_compact(period["jws"], keys).claims
        assert claims == msgspec.json.decode(bytes(period["statement"]))
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM usage_records WHERE grant_id = $1 AND period_seq IS NULL",
            grant_id,
        )
        == 0
    )
    events = await pool.fetch("SELECT payload FROM outbox WHERE subject LIKE '%.usage.closed'")
    assert len(events) == 3


def _actor():
    from exchange.platform.audit import Actor

    return Actor.cli("test")
