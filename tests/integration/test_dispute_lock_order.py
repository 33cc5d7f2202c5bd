"""The disputes' one lock order, raced over real PostgreSQL: the dispute's row, then the trade's
grants, then the trade, then its accounts (in id order), then the ledger's append lock last.

Each test builds trades of one buyer and one seller (so every step that moves money contends for
the same accounts and the ledger), then runs the paths that take those locks against each other
on the same trades, in rounds, through a pool of several connections: opening a dispute,
resolving it by a split, withdrawing it, the respondent's deadline sweep, settling the trades
whose acceptance period is over, a metered grant's billing period and the release at the end
of the grant, and staff suspending and resuming grants. No step may fail with a deadlock
(PostgreSQL aborts one transaction of a cycle after ``deadlock_timeout``: its default 1 s, as
`create_pool` sets no server settings) or any error but the refusals named for it, where the
other side won the race (a 409). Afterwards the money is where the outcomes put it, and
`dataex ledger verify` (every balance against its postings, the hash chain, each trade's
movements against its state) passes.

The races found one order broken: a grant's final billing period took the ledger's lock before
the release that follows it in the same transaction locked the buyer's accounts
(`test_a_final_period_locks_what_its_release_moves_before_the_ledger` replays it step by step).
"""

from __future__ import annotations

import asyncio
import io
import random
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from exchange import wiring
from exchange.delivery.billing import Billing
from exchange.delivery.service import GrantService
from exchange.disputes.schemas import DisputeIn, ReleaseToSeller, Split
from exchange.disputes.service import DisputeService
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal
from exchange.platform.clock import OffsetClock
from exchange.platform.db import create_pool
from exchange.platform.errors import Conflict
from exchange.platform.events import TradeExecutedData
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, load_master_key
from exchange.runtime import ensure_signing_key
from settlement import ledger
from settlement.book import split_shares
from settlement.cli import verify_database
from settlement.service import SettlementService
from tests.kit.delivery import grant_service
from tests.kit.disputes import service
from tests.kit.settlement import (
    CAP,
    metered_terms,
    publish_executed,
    seed_metered_trades,
    seed_parties,
    seed_trades,
    signed,
    usage_statement,
    worker,
)

PRICE, FEE = 9_709, 291  # a fixed-price trade holds 10,000 fen
HELD = PRICE + FEE
DEPOSIT = 10**8
USAGE_MILLIFEN = 500_000  # a metered grant's period: 500 fen (fee 2.5 %: 13 fen)
ROOT = str(Path(__file__).parents[2])
CONNECTIONS = 8  # the racing pool: several transactions at once, as several API processes
ACTOR = Actor.cli("test")
REVIEWER = Actor(label="reviewer:lock-order")
STAFF = Principal(uuid.uuid4(), "exchange", uuid.uuid4(), frozenset({"reviewer"}), True)


def party(org_id: str) -> Principal:
    return Principal(uuid.UUID(org_id), "test", uuid.uuid4(), frozenset({"buyer", "seller"}),
                     False)  # fmt: skip


def claim(reason: str = "not_as_described") -> DisputeIn:
    return DisputeIn(reason=reason, claimed_fen=100, statement="字段与说明书不符")  # type: ignore[arg-type]


def api_grant(trade_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(trade_id, "api")


def file_grant(trade_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(trade_id, "file")


@dataclass
class Race:
    """Runs steps concurrently and keeps what became of each: done, refused (one of the error
    types named for the step, matched exactly: the other side won), or failed (anything else,
    a deadlock above all)."""

    seed: int
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    async def step(self, name: str, action: Awaitable[Any], *refusals: type[Exception]) -> Any:
        try:
            result = await action
        except Exception as error:  # noqa: BLE001 - every error is classified and kept
            if type(error) in refusals:
                self.outcomes[f"{name} refused ({type(error).__name__})"] += 1
                return error
            kind = f"{type(error).__module__}.{type(error).__qualname__}"
            ours = [f for f in traceback.extract_tb(error.__traceback__) if ROOT in f.filename
                    and "site-packages" not in f.filename]  # fmt: skip
            where = "".join(traceback.format_list(ours[-4:]))
            self.failures.append(f"{name}: {kind}: {error}\n{where}")
            return error
        self.outcomes[name] += 1
        return result

    async def round(self, steps: list[Awaitable[Any]]) -> list[Any]:
        """One round: the steps in a shuffled (seeded) order, all at once; then the check."""
        order = list(range(len(steps)))
        random.Random(self.seed).shuffle(order)
        self.seed += 1
        results: list[Any] = [None] * len(steps)

        async def run(i: int) -> None:
            results[i] = await steps[i]

        await asyncio.gather(*(run(i) for i in order))
        self.check()
        return results

    def check(self) -> None:
        deadlocks = sum("DeadlockDetectedError" in f for f in self.failures)
        assert not self.failures, (
            f"{deadlocks} deadlock(s) and {len(self.failures) - deadlocks} other unexpected"
            f" error(s) in the race (outcomes so far: {dict(self.outcomes)}):\n"
            + "\n".join(self.failures)
        )


@dataclass
class Market:
    settings: Settings
    pool: asyncpg.Pool
    clock: OffsetClock
    disputes: DisputeService
    grants: GrantService
    billing: Billing
    money: SettlementService
    buyer: Principal
    seller: Principal
    fixed: list[uuid.UUID]
    metered: list[uuid.UUID]
    events: dict[uuid.UUID, TradeExecutedData]


@pytest.fixture
async def racing_pool(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url
    # The ledger's leaf cache is one per database per process, its asyncio lock bound to the
    # event loop of the first test that waited on it: this test's steps wait on it in a loop of
    # their own, so they get a cache of their own (a process has one loop; a test run, many).
    monkeypatch.setitem(ledger._TREES, settings.database_url, ledger.LedgerTree())
    pool = await create_pool(settings.database_url, min_size=CONNECTIONS, max_size=CONNECTIONS)
    yield pool
    await pool.close()


async def market(settings, pool, clock, *, fixed=0, metered=0, modes=("api", "file")) -> Market:
    """``fixed`` fixed-price trades (grants for ``modes``) and ``metered`` metered ones (an api
    grant, spend cap CAP) of one buyer and one seller, reserved, their grants active."""
    await ensure_signing_key(pool, settings)
    async with pool.acquire() as conn:
        seller, buyers, product = await seed_parties(conn, 1, DEPOSIT)
        terms = msgspec.structs.replace(metered_terms(product, pricing="one_off"),
                                        modes=list(modes))  # fmt: skip
        plain = await seed_trades(conn, fixed, seller, buyers, product, price=PRICE, fee=FEE,
                                  delivery=terms)  # fmt: skip
        meters = await seed_metered_trades(conn, metered, seller, buyers, product)
    events = plain + meters
    await publish_executed(settings, events)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == len(events)
    grants = grant_service(pool, clock, settings)
    async with pool.acquire() as conn, conn.transaction():
        await grants.on_trades_executed(conn, events)
        await grants.on_trades_reserved(conn, [uuid.UUID(e.trade_id) for e in events])
    keyring = KeyRing(load_master_key(settings.state_dir))
    billing = wiring.billing(pool, clock, settings, keyring)
    billing.period, billing.settle_delay = timedelta(0), timedelta(0)  # every period is due
    return Market(
        settings=settings, pool=pool, clock=clock, disputes=service(pool, clock, settings),
        grants=grants, billing=billing, money=wiring.settlement(pool, clock, settings, keyring),
        buyer=party(str(buyers[0][0])), seller=party(str(seller[0])),
        fixed=[uuid.UUID(e.trade_id) for e in plain],
        metered=[uuid.UUID(e.trade_id) for e in meters],
        events={uuid.UUID(e.trade_id): e for e in events},
    )  # fmt: skip


async def use(m: Market, trade_ids: Sequence[uuid.UUID]) -> None:
    """One usage record of USAGE_MILLIFEN on each metered trade's grant, then a second passes
    (so a billing period closing now takes it)."""
    await m.pool.executemany(
        "INSERT INTO usage_records (id, grant_id, served_at, units, leases, cost_millifen,"
        " detail) VALUES ($1, $2, $3, $4, '{}', $5, '{}')",
        [(uuid.uuid4(), api_grant(t), m.clock.now(), {"requests": 2}, USAGE_MILLIFEN)
         for t in trade_ids],
    )  # fmt: skip
    m.clock.advance(timedelta(seconds=1))


async def end_terms(m: Market, trade_ids: Sequence[uuid.UUID]) -> None:
    """The trades' grants' terms made to end now: `expire_due` (once a moment passes) ends them,
    and their last billing period is then the final one, followed by the release."""
    await m.pool.execute(
        "UPDATE grants SET valid_until = valid_from + interval '1 millisecond'"
        " WHERE trade_id = ANY($1::uuid[])",
        list(trade_ids),
    )


async def under_review(m: Market, trade_ids: Sequence[uuid.UUID], reason: str) -> list[uuid.UUID]:
    """Disputes opened by the buyer and answered by the seller (under review); their ids."""
    ids = []
    for trade_id in trade_ids:
        opened = await m.disputes.open(ACTOR, m.buyer, trade_id, claim(reason))
        await m.disputes.respond(ACTOR, m.seller, opened.id, "按合同交付")
        ids.append(opened.id)
    return ids


async def states(m: Market, trade_ids: Sequence[uuid.UUID]) -> list[str]:
    rows = await m.pool.fetch(
        "SELECT trade_id, state FROM settlement_trades WHERE trade_id = ANY($1::uuid[])",
        list(trade_ids),
    )
    by_id = {r["trade_id"]: r["state"] for r in rows}
    return [by_id[t] for t in trade_ids]


async def dispute_states(m: Market) -> Counter[str]:
    return Counter(r["state"] for r in await m.pool.fetch("SELECT state FROM disputes"))


async def consistent(m: Market) -> dict[str, int]:
    """The books balance, no money was made or lost (the buyer's deposit is all there is), and
    `dataex ledger verify` passes; the balances by owner and kind."""
    rows = await m.pool.fetch("SELECT org_id, kind, balance FROM accounts")
    assert sum(r["balance"] for r in rows) == 0
    assert sum(r["balance"] for r in rows if r["kind"] != "clearing") == DEPOSIT
    report = io.StringIO()
    assert m.settings.database_url
    assert await verify_database(m.settings.database_url, report) == 0, report.getvalue()
    name: dict[uuid.UUID | None, str] = {None: "exchange", m.buyer.org_id: "buyer"}
    name[m.seller.org_id] = "seller"
    return {f"{name[r['org_id']]}.{r['kind']}": r["balance"] for r in rows}


# --- (a) a split against the acceptance period's end ------------------------------------------


async def test_resolving_by_split_races_settling_the_trades_whose_acceptance_period_ended(
    settings, racing_pool, clock
):
    """Disputed trades resolved by splits while `settle_due` posts the undisputed trades of the
    same buyer and seller (its batches skip locked trades): the same accounts and the ledger."""
    m = await market(settings, racing_pool, clock, fixed=24)
    disputed, plain = m.fixed[:12], m.fixed[12:]
    dispute_ids = await under_review(m, disputed, "not_as_described")
    clock.advance(timedelta(days=3, minutes=1))  # every acceptance period is over
    refunds = {d: 1 + 811 * i for i, d in enumerate(dispute_ids)}
    race = Race(seed=1)
    for r in range(3):
        mine = dispute_ids[4 * r : 4 * r + 4]
        await race.round(
            [race.step("resolve split", m.disputes.resolve(REVIEWER, STAFF, d,
                                                           Split(refund_fen=refunds[d]), "各半"))
             for d in mine]
            + [race.step("settle_due", m.money.settle_due(limit=2)) for _ in range(3)]
        )  # fmt: skip
    await m.money.settle_due()  # whatever the rounds' small batches left
    assert await states(m, disputed) == ["split"] * 12
    assert await states(m, plain) == ["settled"] * 12
    assert await dispute_states(m) == {"closed": 12}
    shares = [split_shares(HELD, FEE, refund) for refund in refunds.values()]
    balances = await consistent(m)
    assert balances["buyer.escrow"] == 0
    assert balances["buyer.available"] == DEPOSIT - 24 * HELD + sum(refunds.values())
    assert balances["seller.available"] == 12 * PRICE + sum(s for s, _ in shares)
    assert balances["exchange.fee_revenue"] == 12 * FEE + sum(k for _, k in shares)


# --- (b) opening against a metered period and the grant's end ---------------------------------


async def test_opening_a_dispute_races_metered_periods_and_the_release_at_the_grants_end(
    settings, racing_pool, clock
):
    """The buyer disputes metered trades while the delivery room closes their grants' periods
    (the grant, then settlement's trade, accounts, ledger): grants whose term runs (a period
    posted), grants whose term is over with use not billed yet (the final period posted, then
    what is left released, in the same transaction) and grants whose term is over with all
    use billed (a final period of 0 fen, then the release), all of one buyer. Either the
    dispute is first (the period waits: `TradeDisputed`, which the close takes as "later") or
    the close is (a released trade is no longer the buyer's to dispute: 409)."""
    m = await market(settings, racing_pool, clock, metered=24)
    await use(m, m.metered)
    running, ended, billed = m.metered[0::3], m.metered[1::3], m.metered[2::3]
    for t in billed:
        assert await m.billing.close(api_grant(t)) is not None  # a period of 500 fen
    await end_terms(m, ended + billed)
    assert await m.grants.expire_due() == 16
    race = Race(seed=2)
    for r in range(2):
        mine = m.metered[12 * r : 12 * r + 12]
        reasons = ["not_as_described", "not_delivered"] * 3
        await race.round(
            [race.step("open", m.disputes.open(ACTOR, m.buyer, t, claim(reason)), Conflict)
             for t, reason in zip(mine[::2], reasons, strict=True)]
            + [race.step("close period", m.billing.close(api_grant(t))) for t in mine]
        )  # fmt: skip
    # The disputes resolved (the seller keeps what the periods charged), then the periods that
    # waited are closed and the ended grants' trades released.
    for row in await m.pool.fetch("SELECT id FROM disputes"):
        await m.disputes.respond(ACTOR, m.seller, row["id"], "按量计费无误")
        await m.disputes.resolve(REVIEWER, STAFF, row["id"], ReleaseToSeller(), "驳回")
    while await m.billing.close_due():
        pass
    assert await m.pool.fetchval("SELECT count(*) FROM usage_records WHERE period_seq IS NULL") == 0
    charged = await m.pool.fetch(
        "SELECT trade_id, sum(charge_fen) AS fen FROM usage_statements GROUP BY trade_id"
    )
    assert {r["trade_id"]: r["fen"] for r in charged} == dict.fromkeys(m.metered, 500)
    assert await states(m, ended + billed) == ["settled"] * 16
    assert await states(m, running) == ["reserved"] * 8
    balances = await consistent(m)
    assert balances["buyer.escrow"] == 8 * (CAP - 500)
    assert balances["seller.available"] + balances["exchange.fee_revenue"] == 24 * 500


async def test_a_final_period_locks_what_its_release_moves_before_the_ledger(
    settings, racing_pool, clock
):
    """The interleaving the race above found, step by step: a grant's final period (0 fen: all
    its use was billed) is posted, taking the ledger's lock, and its release is to follow in
    the same transaction; meanwhile a split of another trade of the same buyer locks the
    buyer's accounts and waits. The release must not then wait for those accounts while
    holding the ledger (a deadlock): the final period locked them already, so the split waits
    for the close to commit and both succeed."""
    m = await market(settings, racing_pool, clock, fixed=1, metered=1)
    (fixed,), (meter,) = m.fixed, m.metered
    (dispute_id,) = await under_review(m, [fixed], "other")
    statement = usage_statement(m.events[meter], 1, 0, grant_id=str(api_grant(meter)),
                                final=True)  # fmt: skip
    digest, jws = await signed(m.pool, settings, statement)
    race = Race(seed=6)
    async with m.pool.acquire() as conn, conn.transaction():  # as the delivery room's close
        await m.money.metered.post_usage(conn, statement, digest, jws, clock.now())
        split = asyncio.create_task(race.step(
            "resolve split", m.disputes.resolve(REVIEWER, STAFF, dispute_id,
                                                Split(refund_fen=1_000), "部分退款")))  # fmt: skip
        await asyncio.sleep(0.3)
        assert not split.done()  # it waits for a lock the close holds
        await race.step("release", m.money.metered.release(conn, meter, clock.now(), "ended"))
    await split
    race.check()
    assert await states(m, [fixed, meter]) == ["split", "voided"]
    await consistent(m)


# --- (c) staff's suspension of grants against a dispute's ------------------------------------


async def test_staff_suspending_and_resuming_grants_races_disputes_opening_and_resolving(
    settings, racing_pool, clock
):
    """Staff suspend and resume trades' grants (an api and a file grant each; the cause
    ``exchange``) while disputes over those trades open (suspending every grant of the trade,
    cause ``dispute``, the grants locked first) and are resolved by splits (the cause lifted).
    A resume before the suspension it lifts is refused (409); no cause is lost or mixed up."""
    m = await market(settings, racing_pool, clock, fixed=12)
    race = Race(seed=3)
    suspend, resume = m.grants.suspend, m.grants.resume
    await race.round(
        [race.step("open", m.disputes.open(ACTOR, m.buyer, t, claim())) for t in m.fixed]
        + [race.step("staff suspend", suspend(ACTOR, api_grant(t), "核查")) for t in m.fixed]
        + [race.step("staff suspend", suspend(ACTOR, file_grant(t), "核查")) for t in m.fixed]
        + [race.step("staff resume", resume(ACTOR, file_grant(t)), Conflict) for t in m.fixed]
    )  # fmt: skip
    grants = await m.pool.fetch("SELECT state, suspended_by FROM grants")
    assert all(g["state"] == "suspended" and "dispute" in g["suspended_by"] for g in grants)
    ids = [r["id"] for r in await m.pool.fetch("SELECT id FROM disputes ORDER BY opened_at")]
    assert len(ids) == 12
    for dispute_id in ids:
        await m.disputes.respond(ACTOR, m.seller, dispute_id, "按合同交付")
    await race.round(
        [race.step("resolve split", m.disputes.resolve(REVIEWER, STAFF, d, Split(refund_fen=4_000),
                                                       "部分退款")) for d in ids]
        + [race.step("staff resume", resume(ACTOR, api_grant(t)), Conflict) for t in m.fixed]
        + [race.step("staff suspend", suspend(ACTOR, file_grant(t), "复核")) for t in m.fixed]
        + [race.step("staff resume", resume(ACTOR, file_grant(t)), Conflict) for t in m.fixed]
    )  # fmt: skip
    # What the staff left suspended, resumed one by one: then every grant is active again.
    for g in await m.pool.fetch("SELECT id FROM grants WHERE 'exchange' = ANY(suspended_by)"):
        await resume(ACTOR, g["id"])
    grants = await m.pool.fetch("SELECT state, suspended_by FROM grants")
    assert len(grants) == 24
    assert all((g["state"], list(g["suspended_by"])) == ("active", []) for g in grants)
    assert await states(m, m.fixed) == ["split"] * 12
    balances = await consistent(m)
    seller, kept = split_shares(HELD, FEE, 4_000)
    assert (balances["seller.available"], balances["exchange.fee_revenue"]) == (
        12 * seller, 12 * kept)  # fmt: skip


# --- (d) a withdrawal against the respondent's deadline ---------------------------------------


async def test_withdrawing_races_the_respondents_deadline_sweep(settings, racing_pool, clock):
    """The claimant withdraws (the dispute's row, the grants, the trade: the hold released, the
    grants' dispute cause lifted) while `move_due` sweeps the same disputes to review (their
    rows, skipping locked ones) and `settle_due` looks for due trades. Twice over the same
    trades: a withdrawn dispute gives the buyer back what was left of the acceptance period."""
    m = await market(settings, racing_pool, clock, fixed=12, modes=("api",))
    race = Race(seed=4)
    for r in range(2):
        opened = await race.round(
            [race.step("open", m.disputes.open(ACTOR, m.buyer, t,
                                               claim(("not_as_described", "other")[i % 2])))
             for i, t in enumerate(m.fixed)]
        )  # fmt: skip
        clock.advance(timedelta(days=7, seconds=1))  # past every respondent's deadline
        await race.round(
            [race.step("withdraw", m.disputes.withdraw(ACTOR, m.buyer, d.id)) for d in opened]
            + [race.step("move_due", m.disputes.move_due(limit=2)) for _ in range(6)]
            + [race.step("settle_due", m.money.settle_due()) for _ in range(2)]
        )  # fmt: skip
        assert await dispute_states(m) == {"closed": 12 * (r + 1)}
    assert await states(m, m.fixed) == ["reserved"] * 12
    due = await m.pool.fetchval("SELECT min(acceptance_due) FROM settlement_trades")
    assert due > clock.now()
    grants = await m.pool.fetch("SELECT state, suspended_by FROM grants")
    assert all((g["state"], list(g["suspended_by"])) == ("active", []) for g in grants)
    steps = Counter(
        tuple(r["actions"])
        for r in await m.pool.fetch(
            "SELECT array_agg(action ORDER BY seq) AS actions FROM dispute_transitions"
            " GROUP BY dispute_id"
        )
    )
    assert set(steps) <= {("open", "notify", "withdraw"),
                          ("open", "notify", "respondent_deadline", "withdraw")}  # fmt: skip
    balances = await consistent(m)
    assert balances["buyer.escrow"] == 12 * HELD


# --- every path at once -----------------------------------------------------------------------


async def test_every_path_at_once_on_one_buyer_and_seller(settings, racing_pool, clock):
    """All of it at once, in two rounds over one buyer's and one seller's trades: splits,
    withdrawals, the deadline sweep, settling due trades, disputes opened on metered trades
    while their periods close and ended grants release what is left, and staff on grants."""
    m = await market(settings, racing_pool, clock, fixed=24, metered=12)
    to_split, to_withdraw, staffed, plain = (m.fixed[i : i + 6] for i in range(0, 24, 6))
    splits = await under_review(m, to_split, "quality_below_report")
    withdrawals = [(await m.disputes.open(ACTOR, m.buyer, t, claim("other"))).id
                   for t in to_withdraw]  # fmt: skip
    # Set up by hand: the plain trades' acceptance periods and the withdrawn disputes'
    # respondent deadlines over; a period of use on every metered grant, a third of them
    # billed already, and the terms of those and of another third over.
    now = clock.now()
    await m.pool.execute(
        "UPDATE settlement_trades SET acceptance_due = $2 WHERE trade_id = ANY($1::uuid[])",
        plain, now - timedelta(seconds=1),
    )  # fmt: skip
    await m.pool.execute(
        "UPDATE disputes SET respond_by = $2 WHERE id = ANY($1::uuid[])",
        withdrawals, now - timedelta(seconds=1),
    )  # fmt: skip
    await use(m, m.metered)
    ended, billed = m.metered[1::3], m.metered[2::3]
    for t in billed:
        assert await m.billing.close(api_grant(t)) is not None
    await end_terms(m, ended + billed)
    assert await m.grants.expire_due() == 8
    race = Race(seed=5)
    for r in range(2):
        meters = m.metered[r::2]
        await race.round(
            [race.step("resolve split", m.disputes.resolve(REVIEWER, STAFF, d,
                                                           Split(refund_fen=2_500), "部分退款"))
             for d in splits[r::2]]
            + [race.step("withdraw", m.disputes.withdraw(ACTOR, m.buyer, d))
               for d in withdrawals[r::2]]
            + [race.step("move_due", m.disputes.move_due(limit=1)) for _ in range(2)]
            + [race.step("settle_due", m.money.settle_due(limit=1)) for _ in range(3)]
            + [race.step("open", m.disputes.open(ACTOR, m.buyer, t, claim()), Conflict)
               for t in meters[::2]]
            + [race.step("close period", m.billing.close(api_grant(t))) for t in meters]
            + [race.step("open", m.disputes.open(ACTOR, m.buyer, t, claim()))
               for t in staffed[r::2]]
            + [race.step("staff suspend", m.grants.suspend(ACTOR, api_grant(t), "核查"))
               for t in staffed[r::2]]
            + [race.step("staff resume", m.grants.resume(ACTOR, file_grant(t)), Conflict)
               for t in staffed[r::2]]
        )  # fmt: skip
    await m.money.settle_due()
    assert await states(m, to_split) == ["split"] * 6
    assert await states(m, plain) == ["settled"] * 6
    assert await states(m, to_withdraw) == ["reserved"] * 6
    assert await states(m, staffed) == ["disputed"] * 6
    # The metered trades' disputes resolved, what waited is billed and released.
    for row in await m.pool.fetch(
        "SELECT id FROM disputes WHERE trade_id = ANY($1::uuid[])", m.metered
    ):
        await m.disputes.respond(ACTOR, m.seller, row["id"], "按量计费无误")
        await m.disputes.resolve(REVIEWER, STAFF, row["id"], ReleaseToSeller(), "驳回")
    while await m.billing.close_due():
        pass
    charged = await m.pool.fetch(
        "SELECT trade_id, sum(charge_fen) AS fen FROM usage_statements GROUP BY trade_id"
    )
    assert {r["trade_id"]: r["fen"] for r in charged} == dict.fromkeys(m.metered, 500)
    assert await states(m, ended + billed) == ["settled"] * 8
    assert await dispute_states(m) == {
        "closed": 12 + len(await m.pool.fetch(
            "SELECT 1 FROM disputes WHERE trade_id = ANY($1::uuid[])", m.metered)),
        "awaiting_response": 6,
    }  # fmt: skip
    await consistent(m)
