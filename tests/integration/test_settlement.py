"""Settlement over real PostgreSQL and JetStream: escrow, acceptance, voids, the ledger."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import msgspec
import pytest

from exchange.platform.events import TradeSettlementEvent
from tests.kit.api import bearer, issue_token, make_uscc, register_org
from tests.kit.market import auto_accept_product, buy, deposit
from tests.kit.settlement import worker

PRICE = 1_000_000  # the 'std' plan, one period
FEE = 10_000  # 1 %


async def balances(client, token):
    response = await client.get("/v1/accounts/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    return body["available_fen"], body["escrow_fen"]


async def test_executed_trade_is_reserved_then_accepted_and_posted(
    client, trade, admin_token, settings, pool, clock
):
    product_id = await auto_accept_product(client, trade)
    buyer_org = trade["buyer_org"]["id"]
    response = await deposit(client, admin_token, buyer_org, 5_000_000, "bank-1")
    assert response.status_code == 201, response.text
    trade_id = await buy(client, trade, product_id)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 1
    assert await balances(client, trade["buyer"]) == (5_000_000 - PRICE - FEE, PRICE + FEE)
    view = (await client.get(f"/v1/trades/{trade_id}", headers=bearer(trade["buyer"]))).json()
    assert view["state"] == "reserved" and view["role"] == "buyer"
    assert {(p["account"], p["amount_fen"]) for p in view["postings"]} == {
        ("buyer.available", -(PRICE + FEE)),
        ("buyer.escrow", PRICE + FEE),
    }
    accepted = await client.post(f"/v1/trades/{trade_id}/accept", headers=bearer(trade["buyer"]))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["state"] == "settled"
    assert await balances(client, trade["buyer"]) == (5_000_000 - PRICE - FEE, 0)
    assert await balances(client, trade["seller"]) == (PRICE, 0)
    again = await client.post(f"/v1/trades/{trade_id}/accept", headers=bearer(trade["buyer"]))
    assert again.status_code == 409
    settled = await pool.fetch(
        "SELECT payload FROM outbox WHERE subject = $1", settings.subject("trade", "settled")
    )
    assert len(settled) == 1
    event = msgspec.json.decode(settled[0]["payload"], type=TradeSettlementEvent)
    assert event.data.trade_id == trade_id and event.data.price_fen == PRICE
    receipt = await client.get(f"/v1/trades/{trade_id}/receipt", headers=bearer(trade["seller"]))
    assert receipt.status_code == 200, receipt.text


async def org_balance_rows(pool):
    """Every account's balance next to the sum of its postings."""
    return await pool.fetch(
        "SELECT a.id, a.org_id, a.kind, a.balance,"
        " coalesce((SELECT sum(p.amount_fen) FROM postings p WHERE p.account_id = a.id), 0) AS s"
        " FROM accounts a ORDER BY a.id"
    )


async def assert_books_balance(pool):
    for row in await org_balance_rows(pool):
        assert row["balance"] == row["s"], dict(row)
        assert row["kind"] == "clearing" or row["balance"] >= 0
    total = await pool.fetchval("SELECT coalesce(sum(amount_fen), 0) FROM postings")
    assert total == 0


async def test_a_trade_without_funds_fails_and_the_buyer_sees_why(
    client, trade, admin_token, settings, pool, clock
):
    product_id = await auto_accept_product(client, trade)
    await deposit(client, admin_token, trade["buyer_org"]["id"], PRICE, "bank-short")
    trade_id = await buy(client, trade, product_id)  # needs PRICE + FEE
    async with worker(settings, pool, clock) as w:
        await w.drain()
        view = (await client.get(f"/v1/trades/{trade_id}", headers=bearer(trade["buyer"]))).json()
        assert view["state"] == "failed"
        assert view["reason"] == (
            f"insufficient funds: available balance {PRICE} fen, {PRICE + FEE} fen needed"
        )
        assert view["postings"] == [] and len(view["ledger_seqs"]) == 1
        contract = await client.get(f"/v1/contracts/{trade_id}", headers=bearer(trade["buyer"]))
        assert contract.json()["state"] == "unfunded"
        assert await balances(client, trade["buyer"]) == (PRICE, 0)
        await w.relay()
        js = w.platform.nats.jetstream()
        sub = await js.pull_subscribe(
            settings.subject("trade", "failed"), stream=settings.stream_name
        )
        (message,) = await sub.fetch(1, timeout=5)
        event = msgspec.json.decode(message.data, type=TradeSettlementEvent)
        assert event.type == "dx.trade.failed" and event.data.trade_id == trade_id
        assert event.data.reason is not None
        assert event.data.reason.startswith("insufficient funds")
    await assert_books_balance(pool)


async def test_the_acceptance_period_passing_posts_the_trade(
    client, trade, admin_token, settings, pool, clock
):
    product_id = await auto_accept_product(client, trade)
    await deposit(client, admin_token, trade["buyer_org"]["id"], 3 * (PRICE + FEE), "bank-2")
    first = await buy(client, trade, product_id)
    second = await buy(client, trade, product_id)
    async with worker(settings, pool, clock) as w:
        await w.drain()
        assert await w.service.settle_due() == 0  # 7 days to accept
        async with pool.acquire() as conn, conn.transaction():  # a dispute holds it
            await w.service.disputes.hold(conn, uuid.UUID(second), uuid.uuid4(), clock.now(), None)
        clock.advance(timedelta(days=7, seconds=1))
        assert await w.service.settle_due() == 1  # the disputed one waits for its dispute
    states = {
        t: (await client.get(f"/v1/trades/{t}", headers=bearer(trade["buyer"]))).json()["state"]
        for t in (first, second)
    }
    assert states == {first: "settled", second: "disputed"}
    assert await balances(client, trade["seller"]) == (PRICE, 0)
    gone = await client.post(f"/v1/trades/{first}/objections", json={"reason": "late"},
                             headers=bearer(trade["buyer"]))  # fmt: skip
    assert gone.status_code in (404, 405)  # disputes replaced objections (issue 21)
    await assert_books_balance(pool)


async def test_cancellation_needs_both_parties(client, trade, admin_token, settings, pool, clock):
    product_id = await auto_accept_product(client, trade)
    await deposit(client, admin_token, trade["buyer_org"]["id"], PRICE + FEE, "bank-4")
    trade_id = await buy(client, trade, product_id)
    async with worker(settings, pool, clock) as w:
        await w.drain()
    body = {"reason": "双方协商解除"}
    one = await client.post(f"/v1/trades/{trade_id}/cancel", json=body,
                            headers=bearer(trade["buyer"]))  # fmt: skip
    assert one.json()["state"] == "reserved"
    assert one.json()["cancellation_requested_by"] == ["buyer"]
    both = await client.post(f"/v1/trades/{trade_id}/cancel", json=body,
                             headers=bearer(trade["seller"]))  # fmt: skip
    assert both.json()["state"] == "voided"
    assert await balances(client, trade["buyer"]) == (PRICE + FEE, 0)
    await assert_books_balance(pool)


async def test_deposits_and_withdrawals_are_idempotent_by_reference(
    client, trade, admin_token, pool
):
    org = trade["buyer_org"]["id"]
    first = await deposit(client, admin_token, org, 500, "ref-1")
    assert first.status_code == 201 and first.json()["available_fen"] == 500
    replay = await deposit(client, admin_token, org, 500, "ref-1")
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    other = await deposit(client, admin_token, org, 600, "ref-1")
    assert other.status_code == 409 and other.json()["movement_id"] == first.json()["id"]
    too_much = await client.post(f"/v1/accounts/{org}/withdrawals",
                                 json={"amount_fen": 501, "external_ref": "out-1"},
                                 headers=bearer(admin_token))  # fmt: skip
    assert too_much.status_code == 422
    assert too_much.json()["code"] == "insufficient_funds"
    assert too_much.json()["available_fen"] == 500
    out = await client.post(f"/v1/accounts/{org}/withdrawals",
                            json={"amount_fen": 200, "external_ref": "out-1"},
                            headers=bearer(admin_token))  # fmt: skip
    assert out.status_code == 201 and out.json()["available_fen"] == 300
    bad = await client.post(f"/v1/accounts/{org}/deposits", json={"amount_fen": -5},
                            headers=bearer(admin_token))  # fmt: skip
    assert bad.status_code in (400, 422)
    assert {e["path"] for e in bad.json()["errors"]} >= {"amount_fen", "external_ref"}
    assert await balances(client, trade["buyer"]) == (300, 0)
    await assert_books_balance(pool)


async def test_the_database_refuses_unbalanced_or_changed_postings(
    client, trade, admin_token, pool
):
    org = uuid.UUID(trade["buyer_org"]["id"])
    await deposit(client, admin_token, str(org), 1_000, "ref-db")
    account = await pool.fetchval(
        "SELECT id FROM accounts WHERE org_id = $1 AND kind = 'available'", org
    )
    clearing = await pool.fetchval("SELECT id FROM accounts WHERE kind = 'clearing'")
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with conn.transaction():
                movement = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO movements (id, kind, external_ref, org_id, amount_fen, created_at)"
                    " VALUES ($1, 'deposit', 'sneaky', $2, 100, now())", movement, org,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO postings VALUES ($1, $2, 100), ($1, $3, -99)",
                    movement, account, clearing,
                )  # fmt: skip
        for statement in ("UPDATE postings SET amount_fen = amount_fen + 1",
                          "DELETE FROM postings", "UPDATE movements SET amount_fen = 1",
                          "TRUNCATE postings CASCADE"):  # fmt: skip
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)
        with pytest.raises(asyncpg.CheckViolationError, match="accounts_not_negative"):
            await conn.execute("UPDATE accounts SET balance = -1 WHERE id = $1", account)
    await assert_books_balance(pool)


async def test_trades_are_for_the_parties_only(client, trade, admin_token, settings, pool, clock):
    product_id = await auto_accept_product(client, trade)
    await deposit(client, admin_token, trade["buyer_org"]["id"], PRICE + FEE, "bank-5")
    trade_id = await buy(client, trade, product_id)
    async with worker(settings, pool, clock) as w:
        await w.drain()
    outsider_org = await register_org(client, admin_token, make_uscc(9), ["buyer", "seller"])
    outsider = await issue_token(client, admin_token, outsider_org["id"], ["buyer", "seller"])
    body = {"reason": "x"}
    for token in (outsider,):
        for method, path, json in (
            ("GET", "", None), ("GET", "/receipt", None), ("POST", "/accept", None),
            ("POST", "/cancel", body),
        ):  # fmt: skip
            response = await client.request(method, f"/v1/trades/{trade_id}{path}", json=json,
                                            headers=bearer(token))  # fmt: skip
            assert response.status_code == 404, (method, path, response.text)
            unknown = await client.request(method, f"/v1/trades/{uuid.uuid4()}{path}",
                                           json=json, headers=bearer(token))  # fmt: skip
            assert unknown.status_code == 404
            assert response.json()["detail"] == unknown.json()["detail"].replace(
                unknown.json()["detail"].split()[-1], trade_id
            )
    listed = (await client.get("/v1/trades", headers=bearer(outsider))).json()
    assert listed["items"] == []
    mine = (await client.get("/v1/trades", headers=bearer(trade["seller"]))).json()
    assert [t["trade_id"] for t in mine["items"]] == [trade_id]
    assert mine["items"][0]["role"] == "seller"
    assert (await client.get("/v1/accounts/me", headers=bearer(outsider))).json()[
        "available_fen"
    ] == 0


async def test_the_fee_schedule_is_fixed_into_each_contract(client, trade, admin_token, clock):
    product_id = await auto_accept_product(client, trade)
    rules = (await client.get("/v1/fee-schedules")).json()
    assert rules == [{"bps": 100, "min_fen": 100, "scope": "built-in", "effective_from": None}]
    before = await buy(client, trade, product_id)  # 1 % of 1,000,000
    default = await client.post("/v1/fee-schedules", json={"bps": 250, "min_fen": 50_000},
                                headers=bearer(admin_token))  # fmt: skip
    assert default.status_code == 201, default.text
    plan_rule = await client.post(
        "/v1/fee-schedules",
        json={"bps": 5, "min_fen": 1_000, "product_id": product_id, "plan_id": "std"},
        headers=bearer(admin_token),
    )
    assert plan_rule.json()["scope"] == f"{product_id}/std"
    later = (clock.now() + timedelta(days=1)).isoformat()
    await client.post("/v1/fee-schedules", json={"bps": 1, "min_fen": 0, "effective_from": later,
                                                 "product_id": product_id, "plan_id": "std"},
                      headers=bearer(admin_token))  # fmt: skip
    after = await buy(client, trade, product_id)  # 5 bps of 1,000,000 = 500, minimum 1,000

    async def fee_of(contract_id):
        contract = await client.get(f"/v1/contracts/{contract_id}", headers=bearer(trade["buyer"]))
        return contract.json()["document"]["fees"]["fee_fen"]

    assert (await fee_of(before), await fee_of(after)) == (10_000, 1_000)
    scopes = [r["scope"] for r in (await client.get("/v1/fee-schedules")).json()]
    assert scopes == [f"{product_id}/std", "default", f"{product_id}/std"]
    half = await client.post("/v1/fee-schedules", json={"bps": 5, "min_fen": 0, "plan_id": "std"},
                             headers=bearer(admin_token))  # fmt: skip
    assert half.status_code == 422 and half.json()["errors"][0]["path"] == "product_id"
    seller = await client.post("/v1/fee-schedules", json={"bps": 0, "min_fen": 0},
                               headers=bearer(trade["seller"]))  # fmt: skip
    assert seller.status_code == 403


async def test_staff_see_the_exchanges_own_accounts_and_the_fee_a_settled_trade_earned(
    client, trade, admin_token, settings, pool, clock
):
    """Issue 18: no API reported the exchange's own accounts. GET /v1/exchange/accounts
    (staff) gives each one's kind and balance, and the totals of the books they balance."""
    reviewer = bearer(trade["alice"])
    empty = await client.get("/v1/exchange/accounts", headers=reviewer)
    assert empty.status_code == 200, empty.text
    assert [(a["kind"], a["balance_fen"]) for a in empty.json()["accounts"]] == [
        ("fee_revenue", 0), ("clearing", 0),
    ]  # fmt: skip
    product_id = await auto_accept_product(client, trade)
    await deposit(client, admin_token, trade["buyer_org"]["id"], 5_000_000, "bank-fees")
    trade_id = await buy(client, trade, product_id)
    async with worker(settings, pool, clock) as w:
        await w.drain()
    reserved = (await client.get("/v1/exchange/accounts", headers=bearer(admin_token))).json()
    accounts = {a["kind"]: a["balance_fen"] for a in reserved["accounts"]}
    assert accounts == {"fee_revenue": 0, "clearing": -5_000_000}  # the fee is still in escrow
    assert reserved["totals"]["escrow_fen"] == PRICE + FEE
    accepted = await client.post(f"/v1/trades/{trade_id}/accept", headers=bearer(trade["buyer"]))
    assert accepted.json()["state"] == "settled"
    body = (await client.get("/v1/exchange/accounts", headers=reviewer)).json()
    accounts = {a["kind"]: a["balance_fen"] for a in body["accounts"]}
    assert accounts == {"fee_revenue": FEE, "clearing": -5_000_000}
    assert body["totals"] == {
        "held_fen": 5_000_000,  # what came in through clearing and has not gone out
        "available_fen": 5_000_000 - PRICE - FEE + PRICE,  # buyer's rest, seller's price
        "escrow_fen": 0,
        "fee_revenue_fen": FEE,
        "organisations": 2,
        "balanced": True,
    }
    # The balances are the sums of the accounts' postings.
    rows = {(r["org_id"], r["kind"]): r for r in await org_balance_rows(pool)}
    assert rows[None, "fee_revenue"]["s"] == FEE and rows[None, "clearing"]["s"] == -5_000_000
    for market in ("seller", "buyer"):
        refused = await client.get("/v1/exchange/accounts", headers=bearer(trade[market]))
        assert refused.status_code == 403
    assert (await client.get("/v1/exchange/accounts")).status_code == 401
