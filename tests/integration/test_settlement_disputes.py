"""Settlement's side of disputes over real PostgreSQL and JetStream: a hold keeps the money in
escrow past the acceptance period, a resolution releases, refunds or splits it exactly once
(split: the fee pro rata, rounded down, never in the exchange's favour), a metered trade is
refunded from the periods it names while its billing waits, and each step is registered in a
ledger `dataex ledger verify` passes."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import msgspec
import pytest

from exchange import wiring
from exchange.platform.disputes import TradeDisputed
from exchange.platform.errors import InvalidInput, NotFound
from exchange.platform.events import TradeSettlementEvent
from exchange.platform.signing import KeyRing, jwks, load_master_key
from exchange.platform.states import IllegalTransition
from exchange.runtime import ensure_signing_key
from settlement import ledger
from settlement.book import split_shares
from settlement.cli import verify_database
from settlement.disputes import RefundExceedsSellerBalance
from settlement.merkle import leaf_hash, verify_inclusion
from tests.integration.test_delivery_metered import _relay_to_delivery
from tests.integration.test_settlement_metered import ACTOR, post, principal, written
from tests.kit.api import bearer
from tests.kit.delivery import grant_service
from tests.kit.documents import metadata
from tests.kit.market import deposit, list_product, order_body, place, standing_offer
from tests.kit.settlement import (
    publish_executed,
    seed_metered_trades,
    seed_parties,
    seed_trades,
    signed,
    usage_statement,
    worker,
)

PRICE, FEE = 9_709, 291  # 3 % of the price, rounded: the trade holds 10,000 fen


async def reserved(settings, pool, clock, n=1, *, price=PRICE, fee=FEE, metered=False):
    await ensure_signing_key(pool, settings)
    async with pool.acquire() as conn:
        seller, buyers, product = await seed_parties(conn, 1, 10**6)
        events = (
            await seed_metered_trades(conn, n, seller, buyers, product)
            if metered
            else await seed_trades(conn, n, seller, buyers, product, price=price, fee=fee)
        )
    await publish_executed(settings, events)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == n
    return events


async def balances(pool, event):
    rows = await pool.fetch(
        "SELECT org_id, kind, balance FROM accounts WHERE org_id = ANY($1::uuid[])"
        " OR org_id IS NULL",
        [uuid.UUID(event.buyer.org_id), uuid.UUID(event.seller.org_id)],
    )
    names = {uuid.UUID(event.buyer.org_id): "buyer", uuid.UUID(event.seller.org_id): "seller"}
    return {f"{names.get(r['org_id'], 'exchange')}.{r['kind']}": r["balance"] for r in rows}


async def verified(settings):
    report = io.StringIO()
    assert await verify_database(settings.database_url, report) == 0, report.getvalue()


async def state_of(pool, trade_id):
    return await pool.fetchval(
        "SELECT state FROM settlement_trades WHERE trade_id = $1", uuid.UUID(trade_id)
    )


def test_the_split_rule_never_rounds_in_the_exchanges_favour():
    assert split_shares(10_000, 291, 3_333) == (6_473, 194)  # 291 x 6,667 / 10,000 = 194.0097
    for held, fee in ((10_000, 291), (1_010_000, 10_000), (7, 3), (100, 0)):
        for refund in range(1, held, max(1, held // 97)):
            seller, kept = split_shares(held, fee, refund)
            assert refund + seller + kept == held
            assert kept * held <= fee * (held - refund) < (kept + 1) * held


async def test_a_split_pays_the_buyer_the_seller_and_the_fee_pro_rata_once(settings, pool, clock):
    (event,) = await reserved(settings, pool, clock)
    trade_id, dispute = uuid.UUID(event.trade_id), uuid.uuid4()
    async with worker(settings, pool, clock) as w:
        disputes = w.service.disputes
        before = await balances(pool, event)
        async with pool.acquire() as conn, conn.transaction():
            await disputes.hold(conn, trade_id, dispute, clock.now(), "r1")
            facts = await disputes.facts(conn, trade_id, lock=True)
        assert facts is not None
        assert (facts.state, facts.held_fen, facts.metered) == ("disputed", 10_000, False)
        async with pool.acquire() as conn, conn.transaction():
            outcome = await disputes.resolve(conn, trade_id, dispute, 3_333, (), clock.now(), "r2")
        assert (outcome.state, outcome.refund_fen, outcome.seller_fen, outcome.fee_fen) == (
            "split", 3_333, 6_473, 194)  # fmt: skip
        after = await balances(pool, event)
        moved = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        assert {k: v for k, v in moved.items() if v} == {
            "buyer.escrow": -10_000, "buyer.available": 3_333, "seller.available": 6_473,
            "exchange.fee_revenue": 194,
        }  # fmt: skip
        postings = await pool.fetch(
            "SELECT p.amount_fen FROM movements m JOIN postings p ON p.movement_id = m.id"
            " WHERE m.trade_id = $1 AND m.kind = 'split'",
            trade_id,
        )
        assert len(postings) == 4 and sum(p["amount_fen"] for p in postings) == 0
        entry = msgspec.json.decode(
            await pool.fetchval("SELECT entry FROM ledger_entries WHERE seq = $1",
                                outcome.ledger_seq),
            type=ledger.LedgerEntry,
        )  # fmt: skip
        assert (entry.step, entry.price_fen, entry.fee_fen, entry.refund_fen, entry.dispute_id) == (
            "split", 6_473, 194, 3_333, str(dispute))  # fmt: skip
        (payload,) = await pool.fetch(
            "SELECT payload FROM outbox WHERE subject = $1", settings.subject("trade", "split")
        )
        announced = msgspec.json.decode(bytes(payload["payload"]), type=TradeSettlementEvent)
        assert (announced.type, announced.data.state, announced.data.refund_fen) == (
            "dx.trade.split", "split", 3_333)  # fmt: skip
        # Again (the same refund or another): the first outcome, nothing moved.
        snapshot = await written(pool)
        for refund in (3_333, 5_000, 0):
            async with pool.acquire() as conn, conn.transaction():
                again = await disputes.resolve(conn, trade_id, dispute, refund, (), clock.now(),
                                               None)  # fmt: skip
            assert again == outcome
        assert await written(pool) == snapshot
        # Another dispute of a split trade moves nothing, and cannot refund anything.
        async with pool.acquire() as conn, conn.transaction():
            assert (await disputes.resolve(conn, trade_id, uuid.uuid4(), 0, (), clock.now(),
                                           None)).ledger_seq is None  # fmt: skip
            with pytest.raises(IllegalTransition, match="it is split"):
                await disputes.resolve(conn, trade_id, uuid.uuid4(), 1, (), clock.now(), None)
        # The receipt, served and as evidence, has the split entry and verifies.
        view = await w.service.get(principal(event.buyer.org_id), trade_id)
        assert view.state == "split"
        receipt = await w.service.receipt(principal(event.buyer.org_id), trade_id)
        async with pool.acquire() as conn, conn.transaction():
            (item,) = await disputes.receipt_evidence(conn, trade_id, clock.now())
            keys = await jwks(conn)
        assert (item.kind, item.name, item.body) == ("ledger_receipt", "ledger-receipt.json",
                                                     receipt)  # fmt: skip
        checked = ledger.verify_receipt(receipt, keys)
        assert [e.entry.step for e in checked.entries] == ["reserved", "split"]
    assert await state_of(pool, event.trade_id) == "split"
    await verified(settings)
    # A split the trade's state does not bear out is named.
    await pool.execute("UPDATE settlement_trades SET state = 'settled' WHERE trade_id = $1",
                       trade_id)  # fmt: skip
    report = io.StringIO()
    assert await verify_database(settings.database_url, report) == 1
    assert f"trade {trade_id} (settled, fixed): its split movement" in report.getvalue()


@pytest.mark.parametrize(("refund", "state"), [(10_000, "voided"), (0, "settled")])
async def test_refunding_all_voids_and_refunding_nothing_posts(
    settings, pool, clock, refund, state
):
    (event,) = await reserved(settings, pool, clock)
    trade_id, dispute = uuid.UUID(event.trade_id), uuid.uuid4()
    async with worker(settings, pool, clock) as w:
        disputes = w.service.disputes
        async with pool.acquire() as conn, conn.transaction():
            await disputes.hold(conn, trade_id, dispute, clock.now(), None)
            with pytest.raises(InvalidInput, match="holds 10000 fen"):
                async with conn.transaction():
                    await disputes.resolve(conn, trade_id, dispute, 10_001, (), clock.now(), None)
            outcome = await disputes.resolve(conn, trade_id, dispute, refund, (), clock.now(), None)
    expected = (refund, 0, 0) if state == "voided" else (0, PRICE, FEE)
    assert (outcome.state, outcome.refund_fen, outcome.seller_fen, outcome.fee_fen) == (
        state, *expected)  # fmt: skip
    money = await balances(pool, event)
    if state == "voided":
        assert (money["buyer.available"], money["buyer.escrow"]) == (10**6, 0)
    else:
        assert (money["seller.available"], money["exchange.fee_revenue"]) == (PRICE, FEE)
    entry = msgspec.json.decode(
        await pool.fetchval("SELECT entry FROM ledger_entries WHERE seq = $1", outcome.ledger_seq),
        type=ledger.LedgerEntry,
    )
    assert (entry.step, entry.dispute_id, entry.refund_fen) == (state, str(dispute), None)
    subjects = [r["subject"] for r in await pool.fetch("SELECT subject FROM outbox")]
    assert subjects.count(settings.subject("trade", state)) == 1
    await verified(settings)


async def test_nothing_held_is_posted_while_disputed_and_unhold_sets_a_new_period(
    settings, pool, clock
):
    held, free = await reserved(settings, pool, clock, 2)
    trade_id, dispute = uuid.UUID(held.trade_id), uuid.uuid4()
    async with worker(settings, pool, clock) as w:
        disputes = w.service.disputes
        async with pool.acquire() as conn, conn.transaction():
            await disputes.hold(conn, trade_id, dispute, clock.now(), None)
            await disputes.hold(conn, trade_id, dispute, clock.now(), None)  # again: the same
        with pytest.raises(IllegalTransition):
            await w.service.accept(ACTOR, principal(held.buyer.org_id), trade_id)
        clock.advance(timedelta(days=30))  # well past the acceptance period (3 days)
        assert await w.service.settle_due() == 1  # the other trade only
        assert await state_of(pool, held.trade_id) == "disputed"
        assert await state_of(pool, free.trade_id) == "settled"
        # Redelivery: the hold lifted, two more days to accept.
        due = clock.now() + timedelta(days=2)
        async with pool.acquire() as conn, conn.transaction():
            await disputes.unhold(conn, trade_id, dispute, due, clock.now(), None)
            await disputes.unhold(conn, trade_id, dispute, None, clock.now(), None)  # no-op
            facts = await disputes.facts(conn, trade_id)
        assert facts is not None and (facts.state, facts.acceptance_due) == ("reserved", due)
        assert await w.service.settle_due() == 0
        clock.advance(timedelta(days=2, seconds=1))
        assert await w.service.settle_due() == 1
        # A settled trade holds nothing: a hold and a refund of 0 leave it as it is.
        async with pool.acquire() as conn, conn.transaction():
            await disputes.hold(conn, trade_id, uuid.uuid4(), clock.now(), None)
            assert (await disputes.facts(conn, trade_id)).held_fen == 0  # type: ignore[union-attr]
        assert await state_of(pool, held.trade_id) == "settled"
        async with pool.acquire() as conn:
            assert await disputes.facts(conn, uuid.uuid4()) is None
            with pytest.raises(NotFound):
                await disputes.hold(conn, uuid.uuid4(), dispute, clock.now(), None)
    await verified(settings)


async def test_evidence_and_resolutions_are_registered_and_proven(settings, pool, clock):
    (event,) = await reserved(settings, pool, clock)
    trade_id, dispute = uuid.UUID(event.trade_id), uuid.uuid4()
    digest = "sha256:" + "ab" * 32
    async with worker(settings, pool, clock) as w:
        disputes = w.service.disputes
        async with pool.acquire() as conn, conn.transaction():
            first = await disputes.register(conn, trade_id, dispute, "evidence", digest,
                                            clock.now())  # fmt: skip
            assert await disputes.register(conn, trade_id, dispute, "evidence", digest,
                                           clock.now()) == first  # fmt: skip
            other = await disputes.register(conn, trade_id, dispute, "resolution",
                                            "sha256:" + "cd" * 32, clock.now())  # fmt: skip
        async with pool.acquire() as conn, conn.transaction():
            proofs = await disputes.proofs(conn, [other, first], clock.now())
            keys = await jwks(conn)
        claims = ledger.verify_tree_head(proofs.tree_head, keys)
        assert claims.tree_size > other
        for (body, proof), seq in zip(proofs.entries, (other, first), strict=True):
            entry = msgspec.json.decode(body, type=ledger.LedgerEntry)
            assert entry.seq == seq and entry.dispute_id == str(dispute)
            assert (entry.price_fen, entry.fee_fen, entry.movement_id) == (0, 0, None)
            assert verify_inclusion(leaf_hash(body), seq, claims.tree_size,
                                    [bytes.fromhex(p) for p in proof],
                                    bytes.fromhex(claims.root_hash))  # fmt: skip
        assert [e.step for e in (msgspec.json.decode(b, type=ledger.LedgerEntry)
                                 for b, _ in proofs.entries)] == ["resolution", "evidence"]  # fmt: skip
        async with pool.acquire() as conn:
            with pytest.raises(NotFound):
                await disputes.register(conn, uuid.uuid4(), dispute, "evidence", digest,
                                        clock.now())  # fmt: skip
    await verified(settings)


async def test_a_metered_trade_is_refunded_from_named_periods_and_waits_meanwhile(
    settings, pool, clock
):
    (meter,) = await reserved(settings, pool, clock, metered=True)
    trade_id, dispute = uuid.UUID(meter.trade_id), uuid.uuid4()
    async with worker(settings, pool, clock) as w:
        disputes = w.service.disputes
        for period, charge in ((1, 1_234), (2, 4_321)):
            await post(w, pool, settings, usage_statement(meter, period, charge), clock)
        async with pool.acquire() as conn, conn.transaction():
            await disputes.hold(conn, trade_id, dispute, clock.now(), None)
            facts = await disputes.facts(conn, trade_id)
        assert facts is not None and facts.state == "disputed"
        assert [(p.period, p.charge_fen, p.fee_fen) for p in facts.periods] == [
            (1, 1_234, 31), (2, 4_321, 108)]  # fmt: skip
        assert facts.held_fen == 10_000 - 1_234 - 4_321
        # Meanwhile a period is not posted and the trade not released: they wait.
        snapshot = await written(pool)
        statement = usage_statement(meter, 3, 100)
        digest, token = await signed(pool, settings, statement)
        async with pool.acquire() as conn, conn.transaction():
            with pytest.raises(TradeDisputed):
                await w.service.metered.post_usage(conn, statement, digest, token, clock.now())
            with pytest.raises(TradeDisputed):
                await w.service.metered.release(conn, trade_id, clock.now(), "grant expired")
        assert await written(pool) == snapshot
        # Refused: periods not named or not posted, more than they charged.
        for periods, refund, match in (((), 10, "none was named"), ((2, 7), 10, r"\[7\]"),
                                       ((2,), 4_322, "charged 4321 fen")):  # fmt: skip
            async with pool.acquire() as conn, conn.transaction():
                with pytest.raises(InvalidInput, match=match):
                    await disputes.resolve(conn, trade_id, dispute, refund, periods, clock.now(),
                                           None)  # fmt: skip
        before = await balances(pool, meter)
        async with pool.acquire() as conn, conn.transaction():
            outcome = await disputes.resolve(conn, trade_id, dispute, 2_000, [2], clock.now(),
                                             None)  # fmt: skip
        fee_back = 50  # ceil(108 x 2,000 / 4,321) = ceil(49.99): rounded up, for the buyer
        assert (outcome.state, outcome.refund_fen, outcome.seller_fen, outcome.fee_fen) == (
            "reserved", 2_000, -(2_000 - fee_back), -fee_back)  # fmt: skip
        after = await balances(pool, meter)
        moved = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        assert moved == {"buyer.available": 2_000, "seller.available": -1_950,
                         "exchange.fee_revenue": -50}  # fmt: skip
        async with pool.acquire() as conn, conn.transaction():
            again = await disputes.resolve(conn, trade_id, dispute, 2_000, [2], clock.now(), None)
        assert again == outcome
        # The hold is lifted: the waiting period posts now.
        assert isinstance(await post(w, pool, settings, statement, clock), int)
        # A second dispute cannot refund more than the seller has left.
        second = uuid.uuid4()
        await w.service.move_external(ACTOR, "withdrawal", uuid.UUID(meter.seller.org_id),
                                      after["seller.available"] - 100, "seller-out")  # fmt: skip
        async with pool.acquire() as conn, conn.transaction():
            await disputes.hold(conn, trade_id, second, clock.now(), None)
        snapshot = await written(pool)
        async with pool.acquire() as conn, conn.transaction():
            with pytest.raises(RefundExceedsSellerBalance, match="available balance is"):
                await disputes.resolve(conn, trade_id, second, 1_000, [1], clock.now(), None)
        assert await written(pool) == snapshot
    await verified(settings)


async def _metered_trades(client, trade, admin_token, n: int) -> list[uuid.UUID]:
    """`n` trades of a metered plan (1,500 milli-fen a request, a 1,000 fen cap each)."""
    plan = {
        "id": "meter", "name": "按量计费", "pricing": "metered", "price_fen": 1, "free": False,
        "purposes": ["research"], "territory": ["CN"], "max_term_days": 365,
        "redistribution": False, "acceptance_days": 0,
        "dimensions": [{"name": "requests", "unit_price_millifen": 1_500}],
    }  # fmt: skip
    product_id = await list_product(client, trade, metadata(plans=[metadata()["plans"][0], plan]))
    await standing_offer(client, trade, product_id, "meter")
    assert (
        await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    ).status_code == 201
    await deposit(client, admin_token, trade["buyer_org"]["id"], 5_000, "bank-dispute")
    trades = []
    for _ in range(n):
        placed = await place(
            client, trade, order_body(product_id, plan_id="meter", quantity=1, spend_cap_fen=1_000)
        )
        assert placed.status_code == 201, placed.text
        trades.append(uuid.UUID(placed.json()["contract_id"]))
    return trades


async def _used(pool, clock, grant_id: uuid.UUID) -> None:
    """Two requests served under the grant, not yet in a period (3,000 milli-fen: 3 fen)."""
    await pool.execute(
        "INSERT INTO usage_records (id, grant_id, served_at, units, leases, cost_millifen,"
        " detail) VALUES ($1, $2, $3, '{\"requests\": 2}', '{}', 3000, '{}')",
        uuid.uuid4(), grant_id, clock.now(),
    )  # fmt: skip


def _billing(pool, clock, settings):
    billing = wiring.billing(pool, clock, settings, KeyRing(load_master_key(settings.state_dir)))
    billing.period, billing.settle_delay = timedelta(0), timedelta(0)
    return billing


async def test_billing_leaves_a_disputed_metered_grants_period_for_a_later_round(
    client, trade, settings, pool, clock, admin_token
):
    [trade_id] = await _metered_trades(client, trade, admin_token, 1)
    grants = grant_service(pool, clock, settings)
    async with worker(settings, pool, clock) as w:
        await w.drain()
        await _relay_to_delivery(pool, grants, set())
        grant_id = await pool.fetchval("SELECT id FROM grants WHERE trade_id = $1", trade_id)
        await _used(pool, clock, grant_id)
        billing = _billing(pool, clock, settings)
        dispute = uuid.uuid4()
        async with pool.acquire() as conn, conn.transaction():
            await w.service.disputes.hold(conn, trade_id, dispute, clock.now(), None)
        clock.advance(timedelta(seconds=1))
        assert await billing.close(grant_id) is None
        assert await billing.close_due() == 0
        assert await pool.fetchval("SELECT count(*) FROM usage_periods WHERE grant_id = $1",
                                   grant_id) == 0  # fmt: skip
        assert await pool.fetchval("SELECT count(*) FROM usage_records WHERE grant_id = $1"
                                   " AND period_seq IS NULL", grant_id) == 1  # fmt: skip
        async with pool.acquire() as conn, conn.transaction():
            await w.service.disputes.unhold(conn, trade_id, dispute, None, clock.now(), None)
        assert await billing.close_due() == 1
        posted = await pool.fetchval(
            "SELECT posted_fen FROM settlement_trades WHERE trade_id = $1", trade_id
        )
        assert posted == 3
    await verified(settings)


async def test_grants_a_dispute_holds_do_not_keep_other_grants_from_closing(
    client, trade, settings, pool, clock, admin_token
):
    """A round of `close_due` is a batch; a grant whose close a dispute held goes after every
    other due grant in the next rounds, so held grants filling a batch cannot starve the rest.
    With a batch of one: the held grant (the first by id) is tried once, then the other closes,
    then the held one again, still held."""
    trade_ids = await _metered_trades(client, trade, admin_token, 2)
    grants = grant_service(pool, clock, settings)
    async with worker(settings, pool, clock) as w:
        await w.drain()
        await _relay_to_delivery(pool, grants, set())
        rows = await pool.fetch(
            "SELECT id, trade_id FROM grants WHERE trade_id = ANY($1::uuid[]) ORDER BY id",
            trade_ids,
        )
        (held_grant, held_trade), (free_grant, _) = [(r["id"], r["trade_id"]) for r in rows]
        for grant_id in (held_grant, free_grant):
            await _used(pool, clock, grant_id)
        billing = _billing(pool, clock, settings)
        async with pool.acquire() as conn, conn.transaction():
            await w.service.disputes.hold(conn, held_trade, uuid.uuid4(), clock.now(), None)
        clock.advance(timedelta(seconds=1))

        async def periods(grant_id: uuid.UUID) -> int:
            return int(
                await pool.fetchval(
                    "SELECT count(*) FROM usage_periods WHERE grant_id = $1", grant_id
                )
            )

        assert await billing.close_due(limit=1) == 0  # the held one, first by id
        assert await billing.close_due(limit=1) == 1  # then the other
        assert (await periods(free_grant), await periods(held_grant)) == (1, 0)
        assert await billing.close_due(limit=1) == 0  # only the held one is left, still held
        assert await periods(held_grant) == 0
    await verified(settings)


async def test_grants_a_dispute_holds_are_tried_in_turn(
    client, trade, settings, pool, clock, admin_token
):
    """Among grants whose close made no progress, the least recently tried goes first: with
    three held and a batch of one, the last of them by id is tried in its turn, and closes
    once its dispute is over (ordered by id alone, the first would be tried for ever)."""
    trade_ids = await _metered_trades(client, trade, admin_token, 3)
    grants = grant_service(pool, clock, settings)
    async with worker(settings, pool, clock) as w:
        await w.drain()
        await _relay_to_delivery(pool, grants, set())
        rows = await pool.fetch(
            "SELECT id, trade_id FROM grants WHERE trade_id = ANY($1::uuid[]) ORDER BY id",
            trade_ids,
        )
        holds = {}
        for row in rows:
            await _used(pool, clock, row["id"])
            holds[row["trade_id"]] = uuid.uuid4()
            async with pool.acquire() as conn, conn.transaction():
                await w.service.disputes.hold(
                    conn, row["trade_id"], holds[row["trade_id"]], clock.now(), None
                )
        billing = _billing(pool, clock, settings)
        clock.advance(timedelta(seconds=1))
        assert [await billing.close_due(limit=1) for _ in range(3)] == [0, 0, 0]  # each once
        last_grant, last_trade = rows[-1]["id"], rows[-1]["trade_id"]
        async with pool.acquire() as conn, conn.transaction():
            await w.service.disputes.unhold(
                conn, last_trade, holds[last_trade], None, clock.now(), None
            )
        assert sum([await billing.close_due(limit=1) for _ in range(3)]) == 1
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM usage_periods WHERE grant_id = $1", last_grant
            )
            == 1
        )
    await verified(settings)


async def test_an_over_metered_dispute_names_its_periods_and_refunds_from_them(
    settings, pool, clock
):
    """Through the disputes room: an over_metered dispute names posted periods (an unknown
    one is a 422 naming it; a claim above what they charged a 422 on claimed_fen); the
    dispute shows them, the trade is held, and a refund comes back from those periods."""
    from exchange.disputes.schemas import DisputeIn, Split
    from exchange.platform.audit import Actor
    from exchange.platform.auth import Principal

    (meter,) = await reserved(settings, pool, clock, metered=True)
    trade_id = uuid.UUID(meter.trade_id)
    async with worker(settings, pool, clock) as w:
        for period, charge in ((1, 1_234), (2, 4_321)):
            await post(w, pool, settings, usage_statement(meter, period, charge), clock)
    service = wiring.disputes(pool, clock, settings, KeyRing(load_master_key(settings.state_dir)))
    buyer = principal(meter.buyer.org_id)

    def claim(periods, claimed):
        return DisputeIn(reason="over_metered", claimed_fen=claimed, statement="多计了调用次数",
                         periods=periods)  # fmt: skip

    for periods, claimed, path, match in (
        ([2, 9], 10, "periods", r"9"), (None, 10, "periods", "names the billing periods"),
        ([2], 4_322, "claimed_fen", "at most 4321 fen"),
    ):  # fmt: skip
        with pytest.raises(InvalidInput, match=match) as caught:
            await service.open(ACTOR, buyer, trade_id, claim(periods, claimed))
        assert caught.value.errors[0].path == path
    opened = await service.open(ACTOR, buyer, trade_id, claim([2], 4_000))
    assert opened.periods == [2] and opened.claimed_fen == 4_000 and opened.reason == "over_metered"
    async with pool.acquire() as conn:
        facts = await w.service.disputes.facts(conn, trade_id)
    assert facts is not None and facts.state == "disputed"

    staff = Principal(uuid.uuid4(), "exchange", uuid.uuid4(), frozenset({"reviewer"}), True)
    seller = principal(meter.seller.org_id)
    await service.respond(ACTOR, seller, opened.id, "计费按合同")
    before = await balances(pool, meter)
    resolved, done = await service.resolve(Actor(label="reviewer:a"), staff, opened.id,
                                           Split(refund_fen=2_000), "核实多计")  # fmt: skip
    assert done and resolved.state == "closed"
    after = await balances(pool, meter)
    moved = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert moved == {
        "buyer.available": 2_000,
        "seller.available": -1_950,
        "exchange.fee_revenue": -50,
    }  # ceil(108 x 2,000 / 4,321) = 50
    async with pool.acquire() as conn:
        facts = await w.service.disputes.facts(conn, trade_id)
    assert facts is not None and facts.state == "reserved"  # billing goes on
    # A period is refunded once: another dispute over period 2 is refused, naming it.
    with pytest.raises(InvalidInput, match=r"\[2\] .* refunded by dispute") as caught:
        await service.open(ACTOR, buyer, trade_id, claim([1, 2], 10))
    assert caught.value.errors[0].path == "periods"
    again = await service.open(ACTOR, buyer, trade_id, claim([1], 10))
    assert again.periods == [1]
