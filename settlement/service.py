"""Settlement: executed trades into escrow, then to the seller and the exchange, or back.

Two phases, each exactly once (TigerBeetle's pending transfers):

- ``dx.trade.executed`` reserves price + fee from the buyer's available account into its escrow
  (``dx.trade.reserved``: delivery may start); a buyer without the funds fails the trade
  (``dx.trade.failed``; the contract is unfunded).
- Acceptance (the buyer's, or the acceptance period passing with no dispute open) posts: price
  to the seller, fee to the exchange (``dx.trade.settled``). Cancellation by both parties voids:
  escrow back to the buyer (``dx.trade.voided``). A dispute holds the trade until its
  resolution releases, refunds or splits it (`settlement.disputes`).

A metered trade (a plan billed by use) reserves the buyer's spend cap the same way, but is never
posted whole: its billing periods are posted one by one and what is left is released when its
grant ends (`settlement.metered`, driven by the delivery room).

Each step is one transaction holding the trade's row, the accounts it moves (locked in id
order) and the ledger's append lock, in that order everywhere, so steps never deadlock and a
redelivered or retried step finds the trade already past it and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
import msgspec

from exchange.platform.audit import Actor, record
from exchange.platform.auth import STAFF_ROLES, Principal
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import Conflict, Forbidden, NotFound
from exchange.platform.events import TradeExecutedData, TradeSettlementData
from exchange.platform.rows import Row, SqlType, arrays, insert_sql
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing
from exchange.platform.states import IllegalTransition
from settlement import book, ledger
from settlement.book import InsufficientFunds
from settlement.disputes import DisputeSettlement, trade_receipt
from settlement.metered import MeteredSettlement
from settlement.outcomes import FinalStep, Outcome, VoidedHook, announce, finish
from settlement.states import METERED_TRADE, TRADE, TradeAction, TradeState


class ConcurrentSettlement(RuntimeError):
    """Another worker settled a trade of this batch at the same moment: retry the batch."""


@dataclass
class BatchResult:
    reserved: int = 0
    failed: int = 0
    duplicates: int = 0
    invalid: dict[str, str] = field(default_factory=dict)  # trade id -> why
    registered: dict[str, Outcome] = field(default_factory=dict)  # trade id -> reserved, failed


class Accounts(msgspec.Struct, frozen=True):
    org_id: uuid.UUID
    available_fen: int
    escrow_fen: int


class ExchangeAccount(msgspec.Struct, frozen=True):
    """One of the exchange's own accounts: ``fee_revenue`` (the fees of posted trades and of
    metered trades' billing periods) or ``clearing`` (the external side of deposits and
    withdrawals: its balance is minus the money that came in and has not gone out)."""

    kind: Literal["fee_revenue", "clearing"]
    balance_fen: int


class BookTotals(msgspec.Struct, frozen=True):
    """The books the exchange's accounts balance: ``held_fen`` (minus the clearing balance) is
    what the organisations' available and escrow accounts and the fee revenue hold between
    them; ``balanced`` says they do (every balance sums to zero)."""

    held_fen: int
    available_fen: int  # every organisation's available balance, summed
    escrow_fen: int  # every organisation's escrow, summed
    fee_revenue_fen: int
    organisations: int  # organisations with an account
    balanced: bool


class ExchangeAccounts(msgspec.Struct, frozen=True):
    """The exchange's own accounts and the totals of the books, read in one snapshot."""

    accounts: list[ExchangeAccount]
    totals: BookTotals
    as_of: datetime


class PostingView(msgspec.Struct, frozen=True):
    movement: str
    step: str
    account: str  # buyer.available, seller.available, exchange.fee_revenue, ...
    amount_fen: int
    at: datetime


class TradeView(msgspec.Struct, frozen=True):
    trade_id: uuid.UUID
    order_id: uuid.UUID
    role: str  # the caller's side: buyer or seller (staff: none)
    state: TradeState
    reason: str | None
    contract_digest: str
    product_code: str
    price_fen: int
    fee_fen: int
    executed_at: datetime
    acceptance_due: datetime
    cancellation_requested_by: list[str]
    postings: list[PostingView]
    ledger_seqs: list[int]
    receipt: str
    # A metered trade: its price is the spend cap; what is reserved (cap and top-ups) and
    # what its billing periods have posted so far.
    metered: bool = False
    reserved_fen: int | None = None
    posted_fen: int | None = None


class TradeSummary(msgspec.Struct, frozen=True):
    """A trade as staff list it: either party's, in any state."""

    trade_id: uuid.UUID
    order_id: uuid.UUID
    state: TradeState
    reason: str | None
    product_code: str
    buyer_org_id: uuid.UUID
    seller_org_id: uuid.UUID
    price_fen: int
    fee_fen: int
    executed_at: datetime
    acceptance_due: datetime
    metered: bool
    updated_at: datetime


class RegisteredEntry(msgspec.Struct, frozen=True):
    """One of a trade's ledger entries as registered, with its leaf hash (hex)."""

    seq: int
    entry: ledger.LedgerEntry
    leaf_hash: str


class MovementView(msgspec.Struct, frozen=True):
    id: uuid.UUID
    kind: str
    org_id: uuid.UUID
    amount_fen: int
    external_ref: str
    created_at: datetime
    available_fen: int


# Called in the settlement's transaction with the trades (contract ids) whose payment could
# not be reserved: the orders room voids their contracts. The composition root passes it.
UnfundedHook = Callable[[Connection, Sequence[uuid.UUID]], Awaitable[None]]


class SettlementTradeRow(Row, frozen=True):
    __table__ = "settlement_trades"
    trade_id: uuid.UUID
    order_id: uuid.UUID
    buyer_org_id: uuid.UUID
    seller_org_id: uuid.UUID
    buyer_uscc: str | None
    seller_uscc: str | None
    contract_digest: str
    product_code: str
    price_fen: int
    fee_fen: int
    state: str
    reason: str | None
    executed_at: datetime
    acceptance_due: datetime
    updated_at: datetime
    metered: bool
    fee_bps: Annotated[int, SqlType("integer")] | None
    reserved_fen: int | None
    posted_fen: int | None


def is_metered(event: TradeExecutedData) -> bool:
    """A trade billed by use: a metered plan with a spend cap (the price reserved)."""
    terms = event.delivery
    return terms is not None and terms.pricing == "metered" and terms.spend_cap_fen is not None


class SettlementService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        settings: Settings,
        keyring: KeyRing,
        on_unfunded: UnfundedHook,
        on_voided: VoidedHook,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.settings = settings
        self.keyring = keyring
        self.on_unfunded = on_unfunded
        self.on_voided = on_voided
        self.tree = ledger.tree_for(settings.database_url)
        # A metered trade's steps, which the delivery room takes in its own transactions.
        self.metered = MeteredSettlement(settings)
        # A dispute's holds, resolutions and registrations, which the disputes room takes in
        # its own transactions (through the hooks the composition root makes of them).
        self.disputes = DisputeSettlement(settings, keyring, self.tree, on_voided)

    # --- phase one: executed trades, in batches from the consumer ---------------------------

    async def settle_executed(
        self,
        events: Sequence[TradeExecutedData],
        request_id: str | None = None,
        traces: Mapping[str, str] | None = None,
    ) -> BatchResult:
        """Reserve (or fail) each executed trade not seen before, in one transaction.
        ``traces``: by trade id, the traceparent its outcome event carries (the span that
        handles its executed event)."""
        result = BatchResult()
        unique: dict[uuid.UUID, TradeExecutedData] = {}
        for event in events:
            try:
                unique.setdefault(uuid.UUID(event.trade_id), event)
            except ValueError:
                result.invalid[event.trade_id] = "trade_id is not a UUID"
        result.duplicates += len(events) - len(unique) - len(result.invalid)
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            contracts = {
                row["id"]: row
                for row in await conn.fetch(
                    "SELECT c.id, c.digest, c.state, o.id AS order_id, o.price_fen, o.fee_fen,"
                    " o.fee_bps, o.buyer_org_id, o.seller_org_id,"
                    " s.trade_id IS NOT NULL AS known"
                    " FROM trade_contracts c JOIN orders o ON o.id = c.order_id"
                    " LEFT JOIN settlement_trades s ON s.trade_id = c.id"
                    " WHERE c.id = ANY($1::uuid[])",
                    list(unique),
                )
            }
            valid: dict[uuid.UUID, TradeExecutedData] = {}
            for trade_id, event in unique.items():
                why = _mismatch(event, contracts.get(trade_id))
                if why:
                    result.invalid[str(trade_id)] = why
                else:
                    valid[trade_id] = event
            if not valid:
                return result
            ids = list(valid)
            known = {t for t in ids if contracts[t]["known"]}
            new = [t for t in ids if t not in known]
            result.duplicates += len(known)
            if not new:
                return result
            movements = {
                t: book.reserve(
                    t, uuid.UUID(valid[t].buyer.org_id), valid[t].price_fen, valid[t].fee_fen
                )
                for t in new
                if valid[t].price_fen + valid[t].fee_fen > 0
            }
            accounts = book.Book(conn)
            await accounts.lock(list(movements.values()))
            made, short = accounts.plan(list(movements.values()))
            # Deterministic movement ids: a worker settling the same trade at the same moment
            # collides here on the primary key, and its batch is retried (then a duplicate).
            await accounts.write(made, now, request_id)
            reasons = {s.movement.trade_id: s.reason for s in short if s.movement.trade_id}
            trades = [
                SettlementTradeRow(
                    trade_id=t, order_id=uuid.UUID(valid[t].order_id),
                    buyer_org_id=uuid.UUID(valid[t].buyer.org_id),
                    seller_org_id=uuid.UUID(valid[t].seller.org_id),
                    buyer_uscc=valid[t].buyer.uscc, seller_uscc=valid[t].seller.uscc,
                    contract_digest=valid[t].contract_digest,
                    product_code=valid[t].product_code, price_fen=valid[t].price_fen,
                    fee_fen=valid[t].fee_fen,
                    state=TRADE.next("pending", "fail" if t in reasons else "reserve"),
                    reason=reasons.get(t), executed_at=datetime.fromisoformat(valid[t].executed_at),
                    acceptance_due=datetime.fromisoformat(valid[t].executed_at)
                    + timedelta(days=valid[t].acceptance_days),
                    updated_at=now, **_metering(valid[t], reserved=t not in reasons),
                )
                for t in new
            ]  # fmt: skip
            inserted = await conn.fetchval(
                "WITH i AS ("
                + insert_sql(
                    SettlementTradeRow, suffix="ON CONFLICT (trade_id) DO NOTHING RETURNING 1"
                )
                + ") SELECT count(*) FROM i",
                *arrays(SettlementTradeRow, trades),
            )
            if inserted != len(new):
                raise ConcurrentSettlement(
                    f"{len(new) - inserted} trade(s) of this batch were settled concurrently"
                )
            drafts = [
                _draft(valid[t], "failed" if t in reasons else "reserved",
                       movements[t].id if t in movements and t not in reasons else None)
                for t in new
            ]  # fmt: skip
            seqs = await ledger.append(conn, self.settings.exchange_code, drafts, now)
            if reasons:
                await self.on_unfunded(conn, list(reasons))
            # Reserved: delivery may start; failed: the contract is void. One statement.
            await announce(
                conn, self.settings,
                [_outcome(valid[t], "failed" if t in reasons else "reserved", reasons.get(t), seq)
                 for t, seq in zip(new, seqs, strict=True)],
                now, request_id,
                [traces.get(str(t)) for t in new] if traces else None,
            )  # fmt: skip
            result.reserved = len(new) - len(reasons)
            result.failed = len(reasons)
            result.registered = {str(t): "failed" if t in reasons else "reserved" for t in new}
        return result

    # --- phase two: post or void -------------------------------------------------------------

    async def _finish(
        self,
        conn: Connection,
        trades: Sequence[Any],
        step: FinalStep,
        at: datetime,
        request_id: str | None,
    ) -> list[int]:
        """Post (settled) or void locked trades in the caller's transaction (`outcomes.finish`)."""
        return await finish(conn, self.settings, trades, step, at, request_id, self.on_voided)

    async def settle_due(self, limit: int = 500) -> int:
        """Post every reserved trade whose acceptance period has passed (a disputed trade is
        not reserved, so it waits for its dispute; a metered trade is posted period by period
        instead, so it is not one of them)."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            trades = await conn.fetch(
                "SELECT * FROM settlement_trades WHERE state = 'reserved' AND acceptance_due <= $1"
                " AND NOT metered"
                " ORDER BY acceptance_due, trade_id LIMIT $2 FOR UPDATE SKIP LOCKED",
                now, limit,
            )  # fmt: skip
            await self._finish(conn, trades, "settled", now, None)
        return len(trades)

    async def _party_trade(
        self,
        conn: Executor,
        principal: Principal,
        trade_id: uuid.UUID,
        *,
        lock: bool = False,
        staff_may: bool = False,
    ) -> Any:
        """The trade if the caller's organisation is a party to it (or, with ``staff_may``,
        the caller is exchange staff); otherwise 404."""
        row = await conn.fetchrow(
            "SELECT * FROM settlement_trades WHERE trade_id = $1" + (" FOR UPDATE" if lock else ""),
            trade_id,
        )
        party = row is not None and principal.org_id in (row["buyer_org_id"], row["seller_org_id"])
        if row is None or not (party or (staff_may and principal.has(*STAFF_ROLES))):
            raise NotFound(f"no trade {trade_id}")
        return row

    async def accept(self, actor: Actor, principal: Principal, trade_id: uuid.UUID) -> TradeView:
        """The buyer accepts delivery: money to the seller and the exchange."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._party_trade(conn, principal, trade_id, lock=True)
            if row["buyer_org_id"] != principal.org_id:
                raise NotFound(f"no trade {trade_id}")  # the seller cannot accept for the buyer
            _next(row, "accept")
            await self._finish(conn, [row], "settled", now, actor.request_id)
            await record(conn, actor, at=now, action="trade.accepted",
                         subject_type="trade", subject_id=trade_id)  # fmt: skip
            return await self._view(conn, principal, trade_id)

    async def cancel(
        self, actor: Actor, principal: Principal, trade_id: uuid.UUID, reason: str
    ) -> TradeView:
        """A party asks to cancel; when both have, the trade is voided."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._party_trade(conn, principal, trade_id, lock=True)
            _next(row, "cancel")
            party = "buyer" if row["buyer_org_id"] == principal.org_id else "seller"
            await conn.execute(
                "INSERT INTO trade_cancellations (trade_id, party, reason, requested_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                trade_id, party, reason, now,
            )  # fmt: skip
            await record(conn, actor, at=now, action="trade.cancellation_requested",
                         subject_type="trade", subject_id=trade_id,
                         detail={"party": party, "reason": reason})  # fmt: skip
            parties = await conn.fetchval(
                "SELECT count(*) FROM trade_cancellations WHERE trade_id = $1", trade_id
            )
            if parties == 2:
                await self._finish(conn, [row], "voided", now, actor.request_id)
            return await self._view(conn, principal, trade_id)

    # --- deposits and withdrawals (the bank side, through the admin API) ---------------------

    async def move_external(
        self,
        actor: Actor,
        kind: Literal["deposit", "withdrawal"],
        org_id: uuid.UUID,
        amount: int,
        external_ref: str,
    ) -> tuple[MovementView, bool]:
        """Idempotent by ``external_ref``: the same reference returns the first movement
        (``False``: not created again); the reference with other values is a conflict."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT 1 FROM organisations WHERE id = $1", org_id):
                raise NotFound(f"no organisation {org_id}")
            # Serialise on the reference so a concurrent retry waits and then replays.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('dataex.movement:' || $1 || ':' || $2))",
                kind, external_ref,
            )  # fmt: skip
            existing = await conn.fetchrow(
                "SELECT * FROM movements WHERE kind = $1 AND external_ref = $2",
                kind, external_ref,
            )  # fmt: skip
            if existing is not None:
                if existing["org_id"] != org_id or existing["amount_fen"] != amount:
                    raise Conflict(
                        f"external_ref {external_ref!r} was already used for a {kind} of"
                        f" {existing['amount_fen']} fen to organisation {existing['org_id']}",
                        extensions={"movement_id": str(existing["id"])},
                    )
                return await self._movement_view(conn, existing), False
            movement = (book.deposit if kind == "deposit" else book.withdrawal)(
                org_id, amount, external_ref
            )
            accounts = book.Book(conn)
            await accounts.lock([movement])
            made, short = accounts.plan([movement])
            if short:
                raise InsufficientFunds(
                    f"cannot withdraw {amount} fen: {short[0].reason}",
                    extensions={"available_fen": short[0].balance, "requested_fen": amount},
                )
            await accounts.write(made, now, actor.request_id)
            await record(conn, actor, at=now, action=f"account.{kind}", subject_type="organisation",
                         subject_id=org_id,
                         detail={"amount_fen": amount, "external_ref": external_ref,
                                 "movement_id": str(movement.id)})  # fmt: skip
            row = await conn.fetchrow("SELECT * FROM movements WHERE id = $1", movement.id)
            return await self._movement_view(conn, row), True

    async def _movement_view(self, conn: Executor, row: Any) -> MovementView:
        available = await conn.fetchval(
            "SELECT balance FROM accounts WHERE org_id = $1 AND kind = 'available'", row["org_id"]
        )
        return MovementView(
            id=row["id"], kind=row["kind"], org_id=row["org_id"], amount_fen=row["amount_fen"],
            external_ref=row["external_ref"], created_at=row["created_at"],
            available_fen=available or 0,
        )  # fmt: skip

    async def accounts(self, org_id: uuid.UUID) -> Accounts:
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT 1 FROM organisations WHERE id = $1", org_id):
                raise NotFound(f"no organisation {org_id}")
            rows = await conn.fetch("SELECT kind, balance FROM accounts WHERE org_id = $1", org_id)
        balances = {row["kind"]: row["balance"] for row in rows}
        return Accounts(
            org_id=org_id,
            available_fen=balances.get("available", 0),
            escrow_fen=balances.get("escrow", 0),
        )

    async def exchange_accounts(self) -> ExchangeAccounts:
        """The exchange's own accounts (0 until a movement first touches one) and the totals of
        every balance, from one statement (one snapshot: the books balance in it)."""
        row = await self.pool.fetchrow(
            "SELECT"
            " coalesce(sum(balance) FILTER (WHERE org_id IS NULL AND kind = 'fee_revenue'), 0)"
            "::bigint AS fee_revenue,"
            " coalesce(sum(balance) FILTER (WHERE org_id IS NULL AND kind = 'clearing'), 0)"
            "::bigint AS clearing,"
            " coalesce(sum(balance) FILTER (WHERE org_id IS NOT NULL AND kind = 'available'), 0)"
            "::bigint AS available,"
            " coalesce(sum(balance) FILTER (WHERE org_id IS NOT NULL AND kind = 'escrow'), 0)"
            "::bigint AS escrow,"
            " coalesce(sum(balance), 0) = 0 AS balanced,"
            " count(DISTINCT org_id) AS organisations"
            " FROM accounts"
        )
        assert row is not None
        return ExchangeAccounts(
            accounts=[
                ExchangeAccount(kind="fee_revenue", balance_fen=row["fee_revenue"]),
                ExchangeAccount(kind="clearing", balance_fen=row["clearing"]),
            ],
            totals=BookTotals(
                held_fen=-row["clearing"],
                available_fen=row["available"],
                escrow_fen=row["escrow"],
                fee_revenue_fen=row["fee_revenue"],
                organisations=row["organisations"],
                balanced=row["balanced"],
            ),
            as_of=self.clock.now(),
        )

    # --- reading trades -----------------------------------------------------------------------

    async def get(
        self, principal: Principal, trade_id: uuid.UUID, *, staff_may: bool = False
    ) -> TradeView:
        """A trade for its parties; with ``staff_may`` (the staff console) for staff too."""
        async with self.pool.acquire() as conn:
            await self._party_trade(conn, principal, trade_id, staff_may=staff_may)
            return await self._view(conn, principal, trade_id)

    async def _view(self, conn: Executor, principal: Principal, trade_id: uuid.UUID) -> TradeView:
        views = await self._views(conn, principal, [trade_id])
        if not views:
            raise NotFound(f"no trade {trade_id}")
        return views[0]

    async def _views(
        self, conn: Executor, principal: Principal, trade_ids: list[uuid.UUID]
    ) -> list[TradeView]:
        """Trades with their postings, ledger entries and cancellation requests: four queries
        whatever the number of trades, in the order given."""
        rows = await conn.fetch(
            "SELECT * FROM settlement_trades WHERE trade_id = ANY($1::uuid[])", trade_ids
        )
        postings = await conn.fetch(
            "SELECT m.trade_id, m.id, m.kind AS step, m.created_at, p.amount_fen, a.org_id,"
            " a.kind FROM movements m JOIN postings p ON p.movement_id = m.id"
            " JOIN accounts a ON a.id = p.account_id WHERE m.trade_id = ANY($1::uuid[])"
            " ORDER BY m.created_at, m.kind, a.id",
            trade_ids,
        )
        seqs = await conn.fetch(
            "SELECT trade_id, seq FROM ledger_entries WHERE trade_id = ANY($1::uuid[])"
            " ORDER BY seq",
            trade_ids,
        )
        cancels = await conn.fetch(
            "SELECT trade_id, party FROM trade_cancellations WHERE trade_id = ANY($1::uuid[])"
            " ORDER BY party",
            trade_ids,
        )
        by_id = {row["trade_id"]: row for row in rows}
        return [
            _trade_view(principal, by_id[t], postings, seqs, cancels)
            for t in trade_ids
            if t in by_id
        ]

    async def list_for(
        self,
        principal: Principal,
        state: str | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[TradeView]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT trade_id FROM settlement_trades"
                " WHERE (buyer_org_id = $1 OR seller_org_id = $1)"
                " AND ($2::text IS NULL OR state = $2)"
                " AND ($3::timestamptz IS NULL OR (executed_at, trade_id) < ($3, $4::uuid))"
                " ORDER BY executed_at DESC, trade_id DESC LIMIT $5",
                principal.org_id, state, after[0] if after else None,
                after[1] if after else None, limit,
            )  # fmt: skip
            return await self._views(conn, principal, [row["trade_id"] for row in rows])

    async def list_all(
        self,
        principal: Principal,
        state: TradeState | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[TradeSummary]:
        """Every trade, for staff only, newest first (keyset on ``executed_at, trade_id``);
        with ``state``, those in it (``disputed``: held by an open dispute)."""
        if not principal.has(*STAFF_ROLES):
            raise Forbidden(
                "only exchange staff (reviewer or admin) list every trade",
                extensions={"required_roles": sorted(STAFF_ROLES)},
            )
        rows = await self.pool.fetch(
            "SELECT * FROM settlement_trades WHERE ($1::text IS NULL OR state = $1)"
            " AND ($2::timestamptz IS NULL OR (executed_at, trade_id) < ($2, $3::uuid))"
            " ORDER BY executed_at DESC, trade_id DESC LIMIT $4",
            state, after[0] if after else None, after[1] if after else None, limit,
        )  # fmt: skip
        return [_summary(row) for row in rows]

    async def ledger_entries(
        self, principal: Principal, trade_id: uuid.UUID, *, staff_may: bool = False
    ) -> list[RegisteredEntry]:
        """The trade's ledger entries in order, for its parties (and staff with
        ``staff_may``)."""
        async with self.pool.acquire() as conn:
            await self._party_trade(conn, principal, trade_id, staff_may=staff_may)
            rows = await conn.fetch(
                "SELECT seq, entry, leaf_hash FROM ledger_entries WHERE trade_id = $1 ORDER BY seq",
                trade_id,
            )
        return [
            RegisteredEntry(
                seq=row["seq"],
                entry=msgspec.json.decode(bytes(row["entry"]), type=ledger.LedgerEntry),
                leaf_hash=bytes(row["leaf_hash"]).hex(),
            )
            for row in rows
        ]

    async def receipt(
        self, principal: Principal, trade_id: uuid.UUID, *, staff_may: bool = False
    ) -> bytes:
        """The trade's entries with inclusion proofs against a signed tree head that covers
        them (one is signed now if the latest does not yet). For its parties; with
        ``staff_may`` (the staff console) for staff too."""
        async with self.pool.acquire() as conn:
            await self._party_trade(conn, principal, trade_id, staff_may=staff_may)
            body = await trade_receipt(
                conn, self.settings, self.keyring, self.tree, trade_id, self.clock.now()
            )
            if body is None:
                raise NotFound(f"trade {trade_id} has no ledger entries yet")
            return body

    async def sign_tree_head(
        self, *, min_new: int = 1, max_age_seconds: float | None = None
    ) -> ledger.TreeHead | None:
        async with self.pool.acquire() as conn, conn.transaction():
            return await ledger.sign_tree_head(
                conn, self.tree, self.keyring, self.settings.exchange_code, self.clock.now(),
                min_new=min_new, max_age_seconds=max_age_seconds,
            )  # fmt: skip


def _summary(row: Any) -> TradeSummary:
    return TradeSummary(
        trade_id=row["trade_id"], order_id=row["order_id"], state=row["state"],
        reason=row["reason"], product_code=row["product_code"],
        buyer_org_id=row["buyer_org_id"], seller_org_id=row["seller_org_id"],
        price_fen=row["price_fen"], fee_fen=row["fee_fen"], executed_at=row["executed_at"],
        acceptance_due=row["acceptance_due"], metered=row["metered"],
        updated_at=row["updated_at"],
    )  # fmt: skip


def _trade_view(
    principal: Principal, row: Any, postings: list[Any], seqs: list[Any], cancels: list[Any]
) -> TradeView:
    trade_id = row["trade_id"]

    def owner(org: uuid.UUID | None) -> str:
        if org is None:
            return "exchange"
        return "buyer" if org == row["buyer_org_id"] else "seller"

    parties = (row["buyer_org_id"], row["seller_org_id"])
    return TradeView(
        trade_id=trade_id,
        order_id=row["order_id"],
        role=owner(principal.org_id) if principal.org_id in parties else "staff",
        state=row["state"],
        reason=row["reason"],
        contract_digest=row["contract_digest"],
        product_code=row["product_code"],
        price_fen=row["price_fen"],
        fee_fen=row["fee_fen"],
        executed_at=row["executed_at"],
        acceptance_due=row["acceptance_due"],
        cancellation_requested_by=[c["party"] for c in cancels if c["trade_id"] == trade_id],
        postings=[
            PostingView(movement=str(p["id"]), step=p["step"],
                        account=f"{owner(p['org_id'])}.{p['kind']}",
                        amount_fen=p["amount_fen"], at=p["created_at"])
            for p in postings if p["trade_id"] == trade_id
        ],
        ledger_seqs=[s["seq"] for s in seqs if s["trade_id"] == trade_id],
        receipt=f"/v1/trades/{trade_id}/receipt",
        metered=row["metered"], reserved_fen=row["reserved_fen"], posted_fen=row["posted_fen"],
    )  # fmt: skip


def _mismatch(event: TradeExecutedData, row: Any) -> str | None:
    """Why an executed-trade event does not match the executed contract it names, if it does not."""
    if row is None:
        return "no such contract"
    if row["state"] not in ("executed", "unfunded"):
        return f"the contract is {row['state']}, not executed"
    checks = (
        ("contract_digest", event.contract_digest, row["digest"]),
        ("order_id", event.order_id, str(row["order_id"])),
        ("price_fen", event.price_fen, row["price_fen"]),
        ("fee_fen", event.fee_fen, row["fee_fen"]),
        ("buyer", event.buyer.org_id, str(row["buyer_org_id"])),
        ("seller", event.seller.org_id, str(row["seller_org_id"])),
    )
    for name, said, recorded in checks:
        if said != recorded:
            return f"{name} {said!r} differs from the contract's {recorded!r}"
    # A metered order keeps its fee rule (and only a metered order has one); its price is the
    # spend cap. An event that says otherwise would bill the periods on other terms.
    terms = event.delivery
    metered = (terms.spend_cap_fen, terms.fee_bps) if terms and is_metered(event) else None
    recorded = (row["price_fen"], row["fee_bps"]) if row["fee_bps"] is not None else None
    if metered != recorded:
        return (
            f"metered terms (spend cap, fee bps) {metered!r} differ from the contract's"
            f" {recorded!r}"
        )
    return None


def _draft(
    event: TradeExecutedData, step: ledger.Step, movement: uuid.UUID | None
) -> ledger.EntryDraft:
    return ledger.EntryDraft(
        trade_id=uuid.UUID(event.trade_id), step=step, contract_digest=event.contract_digest,
        product_code=event.product_code,
        buyer=ledger.EntryParty(event.buyer.org_id, event.buyer.uscc),
        seller=ledger.EntryParty(event.seller.org_id, event.seller.uscc),
        price_fen=event.price_fen, fee_fen=event.fee_fen, movement_id=movement,
    )  # fmt: skip


def _outcome(
    event: TradeExecutedData, state: Literal["reserved", "failed"], reason: str | None, seq: int
) -> TradeSettlementData:
    return TradeSettlementData(
        trade_id=event.trade_id, order_id=event.order_id, buyer_org_id=event.buyer.org_id,
        seller_org_id=event.seller.org_id, price_fen=event.price_fen, fee_fen=event.fee_fen,
        state=state, reason=reason, ledger_seq=seq,
    )  # fmt: skip


def _metering(event: TradeExecutedData, *, reserved: bool) -> dict[str, Any]:
    """A trade's metered columns: a metered trade has its spend cap reserved (price + fee; the
    fee is 0, each period pays its own) and nothing posted yet; a failed one reserved nothing."""
    if not is_metered(event):
        return {"metered": False, "fee_bps": None, "reserved_fen": None, "posted_fen": None}
    assert event.delivery is not None
    return {
        "metered": True,
        "fee_bps": event.delivery.fee_bps or 0,
        "reserved_fen": event.price_fen + event.fee_fen if reserved else 0,
        "posted_fen": 0,
    }


def _next(row: Any, action: TradeAction) -> TradeState:
    """The state after a party's or staff's ``action`` on the trade in ``row``, by its table.

    A metered trade has its own (`METERED_TRADE`), in which no party acts on the payment as a
    whole; the 409 says so instead of listing what the table allows."""
    if not row["metered"]:
        return TRADE.next(row["state"], action)
    if not METERED_TRADE.allows(row["state"], action):
        raise IllegalTransition(
            f"cannot {action.replace('_', ' ')} trade {row['trade_id']}: it is metered, so it is"
            " paid period by period from its usage statements and what is left goes back to"
            " the buyer when its grant ends; it is never accepted, cancelled or"
            " posted as a whole",
            extensions={"aggregate": METERED_TRADE.aggregate, "state": row["state"],
                        "action": action, "allowed_actions": METERED_TRADE.allowed(row["state"])},
        )  # fmt: skip
    return METERED_TRADE.next(row["state"], action)
