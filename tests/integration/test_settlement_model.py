"""A Hypothesis state machine over deposits, executed trades (and their redelivery), acceptances,
disputes' holds and resolutions (release, refund, split), voids, cancellations, the acceptance
period passing and withdrawals, against real
PostgreSQL. After every step: postings sum to zero, every balance equals its postings and the
model's figure, no balance but clearing is negative, each trade posts or voids at most once;
at the end the ledger verifies."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from exchange import wiring
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal
from exchange.platform.clock import OffsetClock
from exchange.platform.db import create_pool
from exchange.platform.errors import Conflict
from exchange.platform.signing import KeyRing, load_master_key
from exchange.runtime import ensure_signing_key
from settlement.book import InsufficientFunds
from settlement.ledger import Verifier
from settlement.service import SettlementService
from tests.kit.servers import clean
from tests.kit.settlement import FEE, PRICE, seed_parties, seed_trades

TRADES = 4
TOTAL = PRICE + FEE
ACTOR = Actor.cli("model")


def principal(org: uuid.UUID) -> Principal:
    return Principal(org, "model", uuid.uuid4(), frozenset({"buyer", "seller"}), False)


class Settlement(RuleBasedStateMachine):
    def __init__(self, loop, pool, config):
        super().__init__()
        self.loop, self.pool, self.config = loop, pool, config
        self.clock = OffsetClock()
        self.service: SettlementService = wiring.settlement(
            pool, self.clock, config, KeyRing(load_master_key(config.state_dir))
        )
        self.run(self._setup())

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def _setup(self):
        await clean(self.config)
        await ensure_signing_key(self.pool, self.config)
        async with self.pool.acquire() as conn:
            seller, buyers, product = await seed_parties(conn, 2, deposit=0)
            self.events = await seed_trades(conn, TRADES, seller, buyers, product)
        self.seller = seller[0]
        self.buyers = [b[0] for b in buyers]
        self.available = dict.fromkeys([self.seller, *self.buyers], 0)
        self.escrow = dict.fromkeys(self.buyers, 0)
        self.fees = 0
        self.clearing = 0
        self.state: dict[str, str] = {}
        self.cancels: dict[str, set[str]] = {}
        self.refs: dict[str, tuple[str, uuid.UUID, int]] = {}
        self.time_passed = False
        self.resolved: dict[str, object] = {}

    def buyer_of(self, i):
        return uuid.UUID(self.events[i].buyer.org_id)

    # --- money in and out ---------------------------------------------------------------------

    @initialize(funds=st.lists(st.integers(0, 4), min_size=2, max_size=2))
    def opening_deposits(self, funds):
        """Each buyer starts with enough for 0-4 trades, so trades settle as well as fail."""
        for n, trades in enumerate(funds):
            if trades:
                self.move(n, trades * TOTAL, f"open-{n}", "deposit")

    @rule(who=st.integers(0, 1), amount=st.integers(1, 3 * TOTAL) | st.sampled_from([TOTAL, 2 * TOTAL]),
          ref=st.sampled_from("abcdef"),
          kind=st.sampled_from(["deposit", "withdrawal"]))  # fmt: skip
    def move(self, who, amount, ref, kind):
        org = self.buyers[who]
        known = self.refs.get(f"{kind}:{ref}")
        if known is not None:
            if known[1:] == (org, amount):
                self.run(self.service.move_external(ACTOR, kind, org, amount, ref))
            else:
                with pytest.raises(Conflict):
                    self.run(self.service.move_external(ACTOR, kind, org, amount, ref))
            return
        if kind == "withdrawal" and self.available[org] < amount:
            with pytest.raises(InsufficientFunds):
                self.run(self.service.move_external(ACTOR, kind, org, amount, ref))
            return
        self.run(self.service.move_external(ACTOR, kind, org, amount, ref))
        self.refs[f"{kind}:{ref}"] = (kind, org, amount)
        sign = 1 if kind == "deposit" else -1
        self.available[org] += sign * amount
        self.clearing -= sign * amount

    # --- trades ------------------------------------------------------------------------------

    @rule(picks=st.lists(st.integers(0, TRADES - 1), min_size=1, max_size=4))
    def deliver(self, picks):
        """Executed-trade events, in a batch, possibly repeated or already delivered."""
        self.run(self.service.settle_executed([self.events[i] for i in picks]))
        for i in picks:
            trade = self.events[i].trade_id
            if trade in self.state:
                continue  # a redelivery: nothing changes
            buyer = self.buyer_of(i)
            if self.available[buyer] >= TOTAL:
                self.available[buyer] -= TOTAL
                self.escrow[buyer] += TOTAL
                self.state[trade] = "reserved"
            else:
                self.state[trade] = "failed"

    def _step(self, i, call, allowed, then):
        trade = self.events[i].trade_id
        if self.state.get(trade) in allowed:
            self.run(call())
            then(trade)
        else:
            with pytest.raises(Conflict if trade in self.state else Exception):
                self.run(call())

    def _post(self, trade, i):
        buyer = self.buyer_of(i)
        self.escrow[buyer] -= TOTAL
        self.available[self.seller] += PRICE
        self.fees += FEE
        self.state[trade] = "settled"

    def _void(self, trade, i):
        buyer = self.buyer_of(i)
        self.escrow[buyer] -= TOTAL
        self.available[buyer] += TOTAL
        self.state[trade] = "voided"

    @rule(i=st.integers(0, TRADES - 1))
    def accept(self, i):
        trade_id = uuid.UUID(self.events[i].trade_id)
        self._step(i, lambda: self.service.accept(ACTOR, principal(self.buyer_of(i)), trade_id),
                   {"reserved"}, lambda t: self._post(t, i))  # fmt: skip

    def dispute_id(self, i):
        return uuid.uuid5(uuid.NAMESPACE_URL, f"dispute:{self.events[i].trade_id}")

    async def _in_transaction(self, call):
        async with self.pool.acquire() as conn, conn.transaction():
            return await call(conn)

    @rule(i=st.integers(0, TRADES - 1))
    def dispute(self, i):
        """A dispute holds a reserved trade; a trade in any other state is left as it is."""
        trade = self.events[i].trade_id
        if trade not in self.state:
            return
        self.run(self._in_transaction(lambda conn: self.service.disputes.hold(
            conn, uuid.UUID(trade), self.dispute_id(i), self.clock.now(), None)))  # fmt: skip
        if self.state[trade] == "reserved":
            self.state[trade] = "disputed"

    @rule(i=st.integers(0, TRADES - 1))
    def unhold(self, i):
        trade = self.events[i].trade_id
        if trade not in self.state:
            return
        self.run(self._in_transaction(lambda conn: self.service.disputes.unhold(
            conn, uuid.UUID(trade), self.dispute_id(i), None, self.clock.now(), None)))  # fmt: skip
        if self.state[trade] == "disputed":
            self.state[trade] = "reserved"

    @rule(i=st.integers(0, TRADES - 1), refund=st.sampled_from([0, 3_333, TOTAL]))
    def resolve(self, i, refund):
        """A dispute's resolution: its money exactly once, whatever is asked again."""
        trade = self.events[i].trade_id
        if trade not in self.state:
            return

        def call():
            return self._in_transaction(lambda conn: self.service.disputes.resolve(
                conn, uuid.UUID(trade), self.dispute_id(i), refund, (), self.clock.now(),
                None))  # fmt: skip

        if trade in self.resolved:
            assert self.run(call()) == self.resolved[trade]
            return
        if self.state[trade] != "disputed":
            if refund == 0:
                assert self.run(call()).ledger_seq is None
            else:
                with pytest.raises(Conflict):
                    self.run(call())
            return
        outcome = self.run(call())
        self.resolved[trade] = outcome
        buyer = self.buyer_of(i)
        if refund == 0:
            self._post(trade, i)
        elif refund == TOTAL:
            self._void(trade, i)
        else:
            fee_kept = FEE * (TOTAL - refund) // TOTAL
            self.escrow[buyer] -= TOTAL
            self.available[buyer] += refund
            self.available[self.seller] += TOTAL - refund - fee_kept
            self.fees += fee_kept
            self.state[trade] = "split"
        assert outcome.refund_fen + outcome.seller_fen + outcome.fee_fen == TOTAL

    @rule(i=st.integers(0, TRADES - 1), seller=st.booleans())
    def cancel(self, i, seller):
        trade_id = uuid.UUID(self.events[i].trade_id)
        org = self.seller if seller else self.buyer_of(i)

        def then(trade):
            parties = self.cancels.setdefault(trade, set())
            parties.add("seller" if seller else "buyer")
            if len(parties) == 2:
                self._void(trade, i)

        self._step(i, lambda: self.service.cancel(ACTOR, principal(org), trade_id, "协商"),
                   {"reserved"}, then)  # fmt: skip

    @rule()
    def acceptance_period_passes(self):
        self.clock.advance(timedelta(days=4))
        self.time_passed = True
        self.run(self.service.settle_due())
        for i, event in enumerate(self.events):
            if self.state.get(event.trade_id) == "reserved":
                self._post(event.trade_id, i)

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def books_balance(self):
        rows = self.run(self.pool.fetch(
            "SELECT a.org_id, a.kind, a.balance, coalesce((SELECT sum(p.amount_fen) FROM postings p"
            " WHERE p.account_id = a.id), 0) AS total FROM accounts a"))  # fmt: skip
        found = {(r["org_id"], r["kind"]): r["balance"] for r in rows}
        for row in rows:
            assert row["balance"] == row["total"]
            assert row["kind"] == "clearing" or row["balance"] >= 0
        assert (
            self.run(self.pool.fetchval("SELECT coalesce(sum(amount_fen), 0) FROM postings")) == 0
        )
        for org, amount in self.available.items():
            assert found.get((org, "available"), 0) == amount
        for org, amount in self.escrow.items():
            assert found.get((org, "escrow"), 0) == amount
        assert found.get((None, "fee_revenue"), 0) == self.fees
        assert found.get((None, "clearing"), 0) == self.clearing

    @invariant()
    def each_trade_finishes_at_most_once(self):
        rows = self.run(self.pool.fetch("SELECT trade_id::text, state FROM settlement_trades"))
        assert {r["trade_id"]: r["state"] for r in rows} == self.state
        twice = self.run(self.pool.fetchval(
            "SELECT count(*) FROM (SELECT trade_id FROM movements WHERE kind IN ('post', 'void', 'split')"
            " GROUP BY trade_id HAVING count(*) > 1) x"))  # fmt: skip
        assert twice == 0

    def teardown(self):
        rows = self.run(
            self.pool.fetch("SELECT seq, entry, leaf_hash FROM ledger_entries ORDER BY seq")
        )
        verifier = Verifier()
        for row in rows:
            verifier.entry(row["seq"], bytes(row["entry"]), bytes(row["leaf_hash"]))
        assert not verifier.problems, verifier.problems
        steps = [r["step"] for r in self.run(self.pool.fetch(
            "SELECT step FROM ledger_entries ORDER BY seq"))]  # fmt: skip
        assert len(steps) == len(self.state) + sum(
            s in ("settled", "voided", "split") for s in self.state.values()
        )


def test_settlement_state_machine(servers):
    loop = asyncio.new_event_loop()
    config = servers.settings
    pool = loop.run_until_complete(create_pool(config.database_url, max_size=2))
    try:
        run_state_machine_as_test(
            # Hypothesis takes any factory of a state machine (its docstring: "a class or a
            # function"); its annotation says a class.
            lambda: Settlement(loop, pool, config),  # type: ignore[arg-type]
            settings=settings(max_examples=30, stateful_step_count=40, deadline=None,
                              suppress_health_check=list(HealthCheck),
                              # no shrinking: each step is real SQL, and a failing run prints
                              # its steps anyway
                              phases=[Phase.explicit, Phase.reuse, Phase.generate]),
        )  # fmt: skip
    finally:
        loop.run_until_complete(pool.close())
        loop.close()
