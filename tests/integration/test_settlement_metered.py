"""Metered trades over real PostgreSQL and JetStream: the spend cap reserved at execution, each
billing period posted once and never beyond the reservation, top-ups, the release of what is
left, the ledger and the receipt with its usage statements."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import msgspec
import pytest

from exchange.platform.audit import Actor
from exchange.platform.auth import Principal
from exchange.platform.errors import Conflict, NotFound
from exchange.platform.events import TradeSettlementEvent
from exchange.platform.metering import fee_fen
from exchange.platform.signing import jwks
from exchange.platform.states import IllegalTransition
from exchange.runtime import ensure_signing_key
from settlement import ledger
from settlement.book import InsufficientFunds
from settlement.cli import verify_database, verify_receipt_file
from settlement.metered import ReservationExceeded, StatementRejected
from tests.kit.settlement import (
    CAP,
    FEE,
    FEE_BPS,
    PRICE,
    metered_terms,
    publish_executed,
    seed_metered_trades,
    seed_parties,
    seed_trades,
    signed,
    usage_statement,
    worker,
)

ACTOR = Actor.cli("test")


def principal(org) -> Principal:
    return Principal(uuid.UUID(str(org)), "test", uuid.uuid4(), frozenset({"buyer", "seller"}),
                     False)  # fmt: skip


async def reserved(settings, pool, clock, *, metered=1, ordinary=0, deposit=10**6):
    """A seller and a buyer with ``deposit`` fen; ``metered`` metered trades (cap CAP) and
    ``ordinary`` ones, reserved by the worker. Returns (metered events, ordinary events)."""
    await ensure_signing_key(pool, settings)
    async with pool.acquire() as conn:
        seller, buyers, product = await seed_parties(conn, 1, deposit)
        meters = await seed_metered_trades(conn, metered, seller, buyers, product)
        plain = await seed_trades(conn, ordinary, seller, buyers, product)
    await publish_executed(settings, meters + plain)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == metered + ordinary
    return meters, plain


async def balance(pool, org, kind):
    return await pool.fetchval(
        "SELECT coalesce(sum(balance), 0) FROM accounts WHERE org_id IS NOT DISTINCT FROM $1"
        " AND kind = $2",
        None if org is None else uuid.UUID(str(org)), kind,
    )  # fmt: skip


async def trade_row(pool, trade_id):
    return await pool.fetchrow(
        "SELECT * FROM settlement_trades WHERE trade_id = $1", uuid.UUID(trade_id)
    )


async def written(pool):
    """Everything a metered step writes, to show a refused one wrote nothing."""
    return {
        "movements": await pool.fetchval("SELECT count(*) FROM movements"),
        "postings": await pool.fetchval("SELECT count(*) FROM postings"),
        "ledger": await pool.fetchval("SELECT count(*) FROM ledger_entries"),
        "statements": await pool.fetchval("SELECT count(*) FROM usage_statements"),
        "trades": [tuple(r) for r in await pool.fetch(
            "SELECT trade_id, state, reserved_fen, posted_fen FROM settlement_trades"
            " ORDER BY trade_id")],
        "balances": [tuple(r) for r in await pool.fetch(
            "SELECT id, balance FROM accounts ORDER BY id")],
        "outbox": await pool.fetchval("SELECT count(*) FROM outbox"),
    }  # fmt: skip


async def post(w, pool, settings, statement, clock):
    """Post a period in a transaction of its own, as the delivery room's close would."""
    digest, token = await signed(pool, settings, statement)
    async with pool.acquire() as conn, conn.transaction():
        return await w.service.metered.post_usage(conn, statement, digest, token, clock.now())


async def refused(w, pool, settings, statement, clock, error, *, digest=None, token=None):
    """The step raises ``error`` and writes nothing, even in a transaction that then commits."""
    good_digest, good_token = await signed(pool, settings, statement)
    before = await written(pool)
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(error) as caught:
            await w.service.metered.post_usage(
                conn, statement, digest or good_digest, token or good_token, clock.now()
            )
    assert await written(pool) == before
    return caught.value


async def assert_books(settings, pool):
    """Every balance equals its postings, nothing but clearing is negative, no metered trade
    posted more than it reserved, and `dataex ledger verify` passes."""
    bad = await pool.fetch(
        "SELECT a.id FROM accounts a LEFT JOIN (SELECT account_id, sum(amount_fen) AS s"
        " FROM postings GROUP BY 1) p ON p.account_id = a.id"
        " WHERE a.balance <> coalesce(p.s, 0) OR (a.kind <> 'clearing' AND a.balance < 0)"
    )
    assert bad == []
    over = await pool.fetch(
        "SELECT t.trade_id FROM settlement_trades t WHERE t.metered AND"
        " (SELECT coalesce(sum(amount_fen), 0) FROM movements m"
        "  WHERE m.trade_id = t.trade_id AND m.kind = 'usage') > t.reserved_fen"
    )
    assert over == []
    report = io.StringIO()
    assert await verify_database(settings.database_url, report) == 0, report.getvalue()


async def test_a_metered_trade_reserves_its_cap_announces_it_and_is_never_posted_whole(
    settings, pool, clock
):
    (meter,), (plain,) = await reserved(settings, pool, clock, ordinary=1)
    buyer = meter.buyer.org_id
    row = await trade_row(pool, meter.trade_id)
    assert (row["state"], row["metered"], row["fee_bps"], row["reserved_fen"],
            row["posted_fen"]) == ("reserved", True, FEE_BPS, CAP, 0)  # fmt: skip
    ordinary = await trade_row(pool, plain.trade_id)
    assert (ordinary["metered"], ordinary["reserved_fen"]) == (False, None)
    assert await balance(pool, buyer, "escrow") == CAP + PRICE + FEE
    # dx.trade.reserved for each, through the outbox and the relay to JetStream
    async with worker(settings, pool, clock) as w:
        await w.relay()
        sub = await w.platform.nats.jetstream().pull_subscribe(
            settings.subject("trade", "reserved"), stream=settings.stream_name
        )
        events = [msgspec.json.decode(m.data, type=TradeSettlementEvent)
                  for m in await sub.fetch(2, timeout=5)]  # fmt: skip
        assert {(e.type, e.data.trade_id, e.data.state) for e in events} == {
            ("dx.trade.reserved", meter.trade_id, "reserved"),
            ("dx.trade.reserved", plain.trade_id, "reserved"),
        }
        seqs = {r["trade_id"]: r["seq"] for r in await pool.fetch(
            "SELECT trade_id::text, seq FROM ledger_entries")}  # fmt: skip
        assert {e.data.trade_id: e.data.ledger_seq for e in events} == seqs
        by_id = {e.data.trade_id: e.data for e in events}
        assert (by_id[meter.trade_id].price_fen, by_id[meter.trade_id].fee_fen) == (CAP, 0)

        # Neither the buyer nor the acceptance period posts a metered trade's escrow whole.
        them = principal(buyer)
        for act in (w.service.accept(ACTOR, them, uuid.UUID(meter.trade_id)),
                    w.service.cancel(ACTOR, them, uuid.UUID(meter.trade_id), "x")):  # fmt: skip
            with pytest.raises(IllegalTransition, match="it is metered"):
                await act
        clock.advance(timedelta(days=30))
        assert await w.service.settle_due() == 1  # the ordinary trade, as before
        view = await w.service.get(them, uuid.UUID(meter.trade_id))
        assert (view.state, view.metered, view.reserved_fen, view.posted_fen) == (
            "reserved", True, CAP, 0)  # fmt: skip
    assert (await trade_row(pool, plain.trade_id))["state"] == "settled"
    assert await balance(pool, meter.seller.org_id, "available") == PRICE
    assert await balance(pool, buyer, "escrow") == CAP
    await assert_books(settings, pool)


async def test_each_period_posts_once_and_nothing_beyond_the_reservation(settings, pool, clock):
    (meter,), _ = await reserved(settings, pool, clock)
    buyer, seller = meter.buyer.org_id, meter.seller.org_id
    charges = {1: 1_234, 2: 0, 3: 4_321}
    fees = {p: fee_fen(c, FEE_BPS) for p, c in charges.items()}
    assert fees == {1: 31, 2: 0, 3: 108}  # 30.85 and 108.025, half up
    async with worker(settings, pool, clock) as w:
        seqs = {}
        for period in (1, 2, 3, 2, 1):  # two posted again: nothing changes
            seq = await post(w, pool, settings, usage_statement(meter, period, charges[period]),
                             clock)  # fmt: skip
            if period in seqs:
                assert seq is None
            else:
                assert isinstance(seq, int)
                seqs[period] = seq
        total, fee_total = sum(charges.values()), sum(fees.values())
        usage = await pool.fetch(
            "SELECT amount_fen, step_key FROM movements WHERE kind = 'usage' ORDER BY step_key"
        )
        assert sorted(u["amount_fen"] for u in usage) == [1_234, 4_321]  # period 2: no money
        assert {u["step_key"].split(":")[1] for u in usage} == {"1", "3"}
        assert await balance(pool, seller, "available") == total - fee_total
        assert await balance(pool, None, "fee_revenue") == fee_total
        assert await balance(pool, buyer, "escrow") == CAP - total
        assert (await trade_row(pool, meter.trade_id))["posted_fen"] == total
        entries = [msgspec.json.decode(r["entry"], type=ledger.LedgerEntry) for r in
                   await pool.fetch("SELECT entry FROM ledger_entries WHERE step = 'usage'"
                                    " ORDER BY seq")]  # fmt: skip
        assert [(e.period, e.price_fen, e.fee_fen, e.seq) for e in entries] == [
            (p, charges[p] - fees[p], fees[p], seqs[p]) for p in (1, 2, 3)
        ]
        assert entries[1].movement_id is None  # registered, though it moved nothing
        stored = await pool.fetch("SELECT period, digest FROM usage_statements ORDER BY period")
        assert [e.statement_digest for e in entries] == [s["digest"] for s in stored]

        # Another statement for a period already posted is a conflict, not a second posting.
        await refused(w, pool, settings, usage_statement(meter, 1, 999), clock, Conflict)
        # A period beyond what is left of the reservation is refused whole ...
        left = CAP - total
        error = await refused(w, pool, settings, usage_statement(meter, 4, left + 1), clock,
                              ReservationExceeded)  # fmt: skip
        assert error.status == 409 and error.extensions["reserved_fen"] == CAP
        # ... the rest of it is not, and then not one fen more.
        await post(w, pool, settings, usage_statement(meter, 4, left), clock)
        assert (await trade_row(pool, meter.trade_id))["posted_fen"] == CAP
        await refused(w, pool, settings, usage_statement(meter, 5, 1), clock, ReservationExceeded)
        assert await post(w, pool, settings, usage_statement(meter, 5, 0), clock) is not None

        # A statement that is not what was signed, or not the exchange's, is refused.
        six = usage_statement(meter, 6, 0)
        other = usage_statement(meter, 7, 0)
        _, other_token = await signed(pool, settings, other)
        await refused(w, pool, settings, six, clock, StatementRejected, digest="sha256:" + "0" * 64)
        await refused(w, pool, settings, six, clock, StatementRejected, token=other_token)
        await refused(w, pool, settings, usage_statement(meter, 6, 0, exchange="XX"), clock,
                      StatementRejected)  # fmt: skip
        stranger = msgspec.structs.replace(six, buyer_org_id=str(uuid.uuid4()))
        await refused(w, pool, settings, stranger, clock, StatementRejected)
        await w.service.sign_tree_head()
    await assert_books(settings, pool)


async def test_a_trade_with_two_grants_posts_each_grants_periods(settings, pool, clock):
    """One grant per delivery mode: each numbers its own periods, each is posted."""
    (meter,), _ = await reserved(settings, pool, clock)
    async with worker(settings, pool, clock) as w:
        for grant in ("file", "api"):
            grant_id = str(uuid.uuid5(uuid.NAMESPACE_URL, meter.trade_id + grant))
            statement = usage_statement(meter, 1, 100, grant_id=grant_id)
            assert await post(w, pool, settings, statement, clock) is not None
            assert await post(w, pool, settings, statement, clock) is None
    assert (await trade_row(pool, meter.trade_id))["posted_fen"] == 200
    await assert_books(settings, pool)


async def test_top_ups_raise_the_reservation_once_per_key(settings, pool, clock):
    (meter, ended), (plain,) = await reserved(
        settings, pool, clock, metered=2, ordinary=1, deposit=2 * CAP + PRICE + FEE + 3_000
    )
    buyer = uuid.UUID(meter.buyer.org_id)
    trade = uuid.UUID(meter.trade_id)
    async with worker(settings, pool, clock) as w:
        metered = w.service.metered

        async def top_up(amount, key, trade_id=trade, org=buyer):
            async with pool.acquire() as conn, conn.transaction():
                return await metered.top_up(conn, trade_id, org, amount, key, clock.now())

        assert await top_up(2_000, "first") == CAP + 2_000
        before = await written(pool)
        assert await top_up(2_000, "first") == CAP + 2_000  # the same key again: nothing new
        assert await written(pool) == before
        with pytest.raises(Conflict, match="already used for 2000 fen"):
            await top_up(2_500, "first")
        with pytest.raises(InsufficientFunds) as short:
            await top_up(5_000, "second")
        assert (short.value.status, short.value.code) == (422, "insufficient_funds")
        assert short.value.extensions == {"available_fen": 1_000, "requested_fen": 5_000}
        assert await written(pool) == before
        with pytest.raises(NotFound):
            await top_up(10, "x", org=uuid.UUID(meter.seller.org_id))
        with pytest.raises(NotFound):
            await top_up(10, "x", trade_id=uuid.uuid4())
        with pytest.raises(Conflict, match="not metered"):
            await top_up(10, "x", trade_id=uuid.UUID(plain.trade_id))
        async with pool.acquire() as conn, conn.transaction():
            await metered.release(conn, uuid.UUID(ended.trade_id), clock.now(), "grant expired")
        with pytest.raises(IllegalTransition):
            await top_up(10, "x", trade_id=uuid.UUID(ended.trade_id))
        # the top-up is spendable: a period may now charge beyond the first cap
        await post(w, pool, settings, usage_statement(meter, 1, CAP + 1_500), clock)
    row = await trade_row(pool, meter.trade_id)
    assert (row["reserved_fen"], row["posted_fen"]) == (CAP + 2_000, CAP + 1_500)
    assert await balance(pool, buyer, "available") == 1_000 + CAP  # the ended one's cap back
    steps = await pool.fetch(
        "SELECT step FROM ledger_entries WHERE trade_id = $1 ORDER BY seq", trade
    )
    assert [s["step"] for s in steps] == ["reserved", "top_up", "usage"]
    await assert_books(settings, pool)


async def test_the_end_of_the_grant_returns_exactly_what_was_not_used(settings, pool, clock):
    (used, unused), _ = await reserved(settings, pool, clock, metered=2, deposit=2 * CAP)
    buyer = used.buyer.org_id
    async with worker(settings, pool, clock) as w:
        metered = w.service.metered
        await post(w, pool, settings, usage_statement(used, 1, 3_000), clock)
        await post(w, pool, settings, usage_statement(used, 2, 1_000), clock)
        states = {}
        for trade in (used, unused):
            async with pool.acquire() as conn, conn.transaction():
                states[trade.trade_id] = await metered.release(
                    conn, uuid.UUID(trade.trade_id), clock.now(), "grant expired"
                )
        assert states == {used.trade_id: "settled", unused.trade_id: "voided"}
        released = {r["trade_id"]: r["amount_fen"] for r in await pool.fetch(
            "SELECT trade_id::text, amount_fen FROM movements WHERE kind = 'release'")}  # fmt: skip
        assert released == {used.trade_id: CAP - 4_000, unused.trade_id: CAP}
        assert await balance(pool, buyer, "escrow") == 0
        assert await balance(pool, buyer, "available") == 2 * CAP - 4_000
        fee = fee_fen(3_000, FEE_BPS) + fee_fen(1_000, FEE_BPS)
        assert await balance(pool, used.seller.org_id, "available") == 4_000 - fee
        outcomes = {}
        for r in await pool.fetch("SELECT payload FROM outbox WHERE subject = ANY($1::text[])",
                                  [settings.subject("trade", "settled"),
                                   settings.subject("trade", "voided")]):  # fmt: skip
            event = msgspec.json.decode(r["payload"], type=TradeSettlementEvent)
            outcomes[event.data.trade_id] = (event.type, event.data.reason)
        assert outcomes == {used.trade_id: ("dx.trade.settled", "grant expired"),
                            unused.trade_id: ("dx.trade.voided", "grant expired")}  # fmt: skip
        # Releasing again changes nothing; a period after the end is refused.
        before = await written(pool)
        async with pool.acquire() as conn, conn.transaction():
            assert await metered.release(conn, uuid.UUID(used.trade_id), clock.now(), "again") == (
                "settled"
            )
        assert await written(pool) == before
        await refused(w, pool, settings, usage_statement(used, 3, 10), clock, IllegalTransition)
        # ... though the period posted before the end is still recognised as posted
        assert await post(w, pool, settings, usage_statement(used, 2, 1_000), clock) is None
        steps = [r["step"] for r in await pool.fetch(
            "SELECT step FROM ledger_entries WHERE trade_id = $1 ORDER BY seq",
            uuid.UUID(used.trade_id))]  # fmt: skip
        assert steps == ["reserved", "usage", "usage", "released"]
    await assert_books(settings, pool)


async def test_the_receipt_carries_the_usage_statements_and_verifies(
    settings, pool, clock, tmp_path
):
    (meter,), (plain,) = await reserved(settings, pool, clock, ordinary=1)
    buyer = principal(meter.buyer.org_id)
    async with worker(settings, pool, clock) as w:
        for period, charge in ((1, 500), (2, 0), (3, 700)):
            await post(w, pool, settings, usage_statement(meter, period, charge), clock)
        async with pool.acquire() as conn, conn.transaction():
            await w.service.metered.release(conn, uuid.UUID(meter.trade_id), clock.now(), "end")
        data = await w.service.receipt(buyer, uuid.UUID(meter.trade_id))
        ordinary = await w.service.receipt(buyer, uuid.UUID(plain.trade_id))
    async with pool.acquire() as conn:
        keys = await jwks(conn)
    receipt = ledger.verify_receipt(data, keys)
    assert [e.entry.step for e in receipt.entries] == [
        "reserved",
        "usage",
        "usage",
        "usage",
        "released",
    ]
    assert [s.statement["period"] for s in receipt.statements] == [1, 2, 3]
    assert [s.statement["charge_fen"] for s in receipt.statements] == [500, 0, 700]
    # A receipt of an ordinary trade is what it always was: no statements member at all.
    assert b'"statements"' not in ordinary
    assert ledger.verify_receipt(ordinary, keys).statements == []

    def altered(change):
        body = msgspec.json.decode(data)
        change(body)
        return ledger.canonical(body)

    def more(body):
        body["statements"][0]["statement"]["charge_fen"] = 499

    def dropped(body):
        del body["statements"][1]

    def swapped(body):
        body["statements"][0]["jws"] = body["statements"][2]["jws"]

    def foreign(body):
        body["statements"][0]["digest"] = body["statements"][2]["digest"]

    for change, why in ((more, "does not hash to its digest"), (dropped, "has no statement"),
                        (swapped, "is not the one signed"),
                        (foreign, "does not hash to its digest")):  # fmt: skip
        with pytest.raises(ledger.ReceiptInvalid, match=why):
            ledger.verify_receipt(altered(change), keys)
    path, keys_path = tmp_path / "receipt.json", tmp_path / "jwks.json"
    path.write_bytes(data)
    keys_path.write_bytes(msgspec.json.encode(keys))
    out = io.StringIO()
    assert verify_receipt_file(path, str(keys_path), out) == 0, out.getvalue()
    assert "3 usage statement(s) signed and registered" in out.getvalue()
    await assert_books(settings, pool)


async def test_ledger_verify_names_a_metered_trade_its_movements_do_not_bear_out(
    settings, pool, clock
):
    (meter,), _ = await reserved(settings, pool, clock)
    async with worker(settings, pool, clock) as w:
        await post(w, pool, settings, usage_statement(meter, 1, 500), clock)
    await assert_books(settings, pool)
    await pool.execute(
        "UPDATE settlement_trades SET posted_fen = 400 WHERE trade_id = $1",
        uuid.UUID(meter.trade_id),
    )
    report = io.StringIO()
    assert await verify_database(settings.database_url, report) == 1
    assert (
        f"metered trade {meter.trade_id}: reserved {CAP} fen and posted 400, but its movements"
        f" reserve {CAP}, post 500, release 0 and refund 0"
    ) in report.getvalue()


async def test_an_event_whose_metered_terms_are_not_the_contracts_is_refused(settings, pool, clock):
    await ensure_signing_key(pool, settings)
    async with pool.acquire() as conn:
        seller, buyers, product = await seed_parties(conn, 1)
        (meter,) = await seed_metered_trades(conn, 1, seller, buyers, product)
        (plain,) = await seed_trades(conn, 1, seller, buyers, product)
    assert meter.delivery is not None
    replace = msgspec.structs.replace
    forged = [
        replace(meter, delivery=replace(meter.delivery, fee_bps=0)),  # a cheaper fee
        replace(meter, delivery=None),  # posted whole at acceptance instead
        replace(meter, delivery=replace(meter.delivery, pricing="subscription")),
        replace(plain, delivery=metered_terms(product, cap=PRICE)),  # never posted whole
    ]
    async with worker(settings, pool, clock) as w:
        for event in forged:
            result = await w.service.settle_executed([event])
            assert result.invalid[event.trade_id].startswith("metered terms"), result
        assert await pool.fetchval("SELECT count(*) FROM settlement_trades") == 0
        result = await w.service.settle_executed([meter, plain])
        assert (result.reserved, result.invalid) == (2, {})
