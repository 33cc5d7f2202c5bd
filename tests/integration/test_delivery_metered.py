"""A metered plan from order to the last fen: the cap reserved, usage billed by periods, the cap
suspending the grant, the rest released at expiry, the books and the ledger in agreement."""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import UTC, datetime, timedelta

import msgspec

from exchange import wiring
from exchange.delivery import tokens
from exchange.delivery.quota import LeaseBook, needs_for
from exchange.delivery.usage import UsageRecord, UsageRecorder
from exchange.platform.metering import Dimension, cost_millifen
from exchange.platform.signing import KeyRing, jwks, load_master_key
from settlement.cli import verify_database
from settlement.ledger import verify_receipt
from tests.kit.api import bearer
from tests.kit.delivery import deliver, grant_service
from tests.kit.documents import metadata
from tests.kit.market import deposit, list_product, order_body, place, standing_offer
from tests.kit.settlement import worker

CAP_FEN = 1_000
DIMENSIONS = [
    Dimension("requests", unit_price_millifen=1_500),
    Dimension("rows", unit_price_millifen=7),
]
PLAN = {
    "id": "meter", "name": "按量计费", "pricing": "metered", "price_fen": 1, "free": False,
    "purposes": ["research"], "territory": ["CN"], "max_term_days": 365,
    "redistribution": False, "acceptance_days": 0,
    "dimensions": [msgspec.to_builtins(d) for d in DIMENSIONS],
}  # fmt: skip


async def _relay_to_delivery(pool, grants, seen: set[uuid.UUID]) -> None:
    """Hand the trade events written so far to the delivery room, as its worker would."""
    rows = await pool.fetch(
        "SELECT id, subject, payload FROM outbox WHERE subject LIKE '%.trade.%'"
        " ORDER BY created_at, id"
    )
    for row in rows:
        if row["id"] in seen:
            continue
        seen.add(row["id"])
        event = msgspec.json.decode(bytes(row["payload"]))
        await deliver(pool, grants, row["subject"], event["type"], event["data"])


async def test_a_metered_plan_bills_by_period_stops_at_the_cap_and_releases_the_rest(
    client, trade, settings, pool, clock, admin_token
):
    document = metadata(plans=[metadata()["plans"][0], PLAN])
    product_id = await list_product(client, trade, document)
    await standing_offer(client, trade, product_id, "meter")
    assert (
        await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    ).status_code == 201
    buyer_org = trade["buyer_org"]["id"]
    await deposit(client, admin_token, buyer_org, 5_000, "bank-metered")
    placed = await place(
        client, trade, order_body(product_id, plan_id="meter", quantity=1, spend_cap_fen=CAP_FEN)
    )
    assert placed.status_code == 201, placed.text
    trade_id = uuid.UUID(placed.json()["contract_id"])

    grants = grant_service(pool, clock, settings)
    seen: set[uuid.UUID] = set()
    async with worker(settings, pool, clock) as w:
        await w.drain()  # settlement reserves the cap: dx.trade.reserved
    await _relay_to_delivery(pool, grants, seen)
    grant = await pool.fetchrow("SELECT * FROM grants WHERE trade_id = $1", trade_id)
    assert (grant["state"], grant["mode"], grant["spend_cap_fen"]) == ("active", "api", CAP_FEN)
    grant_id = grant["id"]
    accounts = (await client.get("/v1/accounts/me", headers=bearer(trade["buyer"]))).json()
    assert (accounts["available_fen"], accounts["escrow_fen"]) == (4_000, CAP_FEN)

    billing = wiring.billing(pool, clock, settings, KeyRing(load_master_key(settings.state_dir)))
    billing.period = timedelta(0)
    billing.settle_delay = timedelta(0)
    recorder = UsageRecorder(pool)
    books = [LeaseBook(pool, holder=f"g{i}", on_exhausted=grants.exhausted) for i in range(2)]
    prices = {d.name: d for d in DIMENSIONS}
    served: list[dict[str, int]] = []
    refused: list[str] = []

    async def caller(n: int) -> None:
        book = books[n % 2]
        while True:
            units = {"requests": 1, "rows": 1 + (len(served) * 7 + n) % 50}
            cost = cost_millifen(units, prices)
            try:
                taken = await book.take(grant_id, needs_for(DIMENSIONS, CAP_FEN, units, cost))
            except tokens.QuotaBusy:
                await asyncio.sleep(0.005)
                continue
            except tokens.GrantRefused as error:
                refused.append(error.code)
                return
            try:
                await recorder.record(UsageRecord(
                    id=uuid.uuid4(), grant_id=grant_id, served_at=datetime.now(UTC),
                    units=units, leases=list(taken.values()), cost_millifen=cost, detail={},
                ))  # fmt: skip
                served.append(units)
            finally:
                await book.done(grant_id, taken)
            if len(served) == 150:
                await billing.close(grant_id)  # an hourly close, while calls go on

    await asyncio.wait_for(asyncio.gather(*(caller(n) for n in range(16))), 120)
    for book in books:
        await book.close()
    # Stopped at the cap: suspended with the spend cap as its cause, the period closed early.
    grant = await pool.fetchrow("SELECT * FROM grants WHERE id = $1", grant_id)
    assert (grant["state"], list(grant["suspended_by"])) == ("suspended", ["spend_cap"])
    assert set(refused) <= {"quota_exhausted", "grant_suspended"} and refused
    await billing.close_due()
    total_cost = sum(cost_millifen(u, prices) for u in served)
    assert total_cost <= CAP_FEN * 1000
    assert CAP_FEN * 1000 - total_cost < cost_millifen({"requests": 1, "rows": 50}, prices)

    # The term ends: the final (empty) period closes the books and the rest is released.
    clock.advance(timedelta(days=181))
    assert await grants.expire_due() == 1
    await billing.close_due()
    await recorder.stop()
    periods = await pool.fetch(
        "SELECT * FROM usage_periods WHERE grant_id = $1 ORDER BY seq", grant_id
    )
    assert len(periods) >= 3 and periods[-1]["final"] and not periods[0]["final"]
    assert sum(p["records"] for p in periods) == len(served)
    assert sum(p["cost_millifen"] for p in periods) == total_cost
    charged = sum(p["charge_fen"] for p in periods)
    assert charged == total_cost // 1000
    totals = {"requests": 0, "rows": 0}
    for units in served:
        for name, n in units.items():
            totals[name] += n
    assert {k: sum(p["totals"].get(k, 0) for p in periods) for k in totals} == totals

    # The book: usage postings = the statements' charges, within the reservation; the rest back.
    moved = await pool.fetch(
        "SELECT m.kind, m.amount_fen, a.kind AS account, a.org_id, p.amount_fen AS posted"
        " FROM movements m JOIN postings p ON p.movement_id = m.id"
        " JOIN accounts a ON a.id = p.account_id WHERE m.trade_id = $1",
        trade_id,
    )  # fmt: skip
    usage = [r for r in moved if r["kind"] == "usage"]
    assert sum(-r["posted"] for r in usage if r["account"] == "escrow") == charged
    seller_share = sum(r["posted"] for r in usage if r["account"] == "available")
    fees = sum(r["posted"] for r in usage if r["account"] == "fee_revenue")
    assert seller_share + fees == charged and fees > 0
    released = [r for r in moved if r["kind"] == "release" and r["account"] == "available"]
    assert sum(r["posted"] for r in released) == CAP_FEN - charged
    settled = await pool.fetchrow("SELECT * FROM settlement_trades WHERE trade_id = $1", trade_id)
    assert (settled["state"], settled["posted_fen"], settled["reserved_fen"]) == (
        "settled", charged, CAP_FEN)  # fmt: skip
    balances = {r["kind"]: r["balance"] for r in await pool.fetch(
        "SELECT kind, balance FROM accounts WHERE org_id = $1", uuid.UUID(buyer_org)
    )}  # fmt: skip
    assert (balances["available"], balances["escrow"]) == (5_000 - charged, 0)

    # The ledger verifies, and the buyer's receipt carries the statements.
    out = io.StringIO()
    assert await verify_database(settings.database_url, out) == 0, out.getvalue()
    clock.advance(timedelta(days=-181))  # the buyer's API token is a 30-day one
    receipt = await client.get(f"/v1/trades/{trade_id}/receipt", headers=bearer(trade["buyer"]))
    assert receipt.status_code == 200
    checked = verify_receipt(receipt.content, await jwks(pool))
    assert [s.statement["period"] for s in checked.statements] == [p["seq"] for p in periods]
    assert [s.digest for s in checked.statements] == [p["digest"] for p in periods]
