"""Double-entry bookkeeping: accounts, movements whose postings sum to zero, balances.

The arithmetic is pure (`legs_*`, `Book.plan`); `Book.write` is the one place movements,
postings and balances reach PostgreSQL, in the caller's transaction. A posting's amount is
signed fen: positive credits the account (raises its balance), negative debits it. The
database refuses at commit any movement whose postings do not sum to zero, refuses any change
to a movement or posting once written, and refuses a balance below zero on every account but
the external clearing account.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from exchange.platform.db import Connection
from exchange.platform.errors import DataexError

AccountKind = Literal["available", "escrow", "fee_revenue", "clearing"]
MovementKind = Literal[
    "deposit",
    "withdrawal",
    "reserve",
    "post",
    "void",
    "top_up",
    "usage",
    "release",
    "split",
    "refund",
]
Owner = uuid.UUID | None  # None: the exchange
AccountKey = tuple[Owner, AccountKind]

EXCHANGE_KINDS: frozenset[str] = frozenset({"fee_revenue", "clearing"})
_MOVEMENT_IDS = uuid.UUID("6f1d4c0e-5d1b-4c59-9f1e-2b7f0e1d5a10")


class InsufficientFunds(DataexError):
    status = 422
    code = "insufficient_funds"
    title = "Not enough money in the account"


@dataclass(frozen=True, slots=True)
class Leg:
    owner: Owner
    kind: AccountKind
    amount: int  # signed fen


@dataclass(frozen=True, slots=True)
class Movement:
    id: uuid.UUID
    kind: MovementKind
    legs: tuple[Leg, ...]
    trade_id: uuid.UUID | None = None
    external_ref: str | None = None
    org_id: uuid.UUID | None = None
    step_key: str | None = None  # which of a trade's repeated steps: a period, a top-up

    @property
    def amount(self) -> int:
        return sum(leg.amount for leg in self.legs if leg.amount > 0)


def trade_movement_id(
    trade_id: uuid.UUID, kind: MovementKind, step_key: str | None = None
) -> uuid.UUID:
    """Deterministic: a retried step carries the same id (and the database refuses a second).
    Steps a trade takes more than once (a metered trade's periods and top-ups) add their key;
    the ids of steps without one are what they always were."""
    name = f"{trade_id}:{kind}" if step_key is None else f"{trade_id}:{kind}:{step_key}"
    return uuid.uuid5(_MOVEMENT_IDS, name)


def _legs(*legs: Leg) -> tuple[Leg, ...]:
    kept = tuple(leg for leg in legs if leg.amount != 0)
    assert sum(leg.amount for leg in kept) == 0, "a movement must sum to zero"
    return kept


def deposit(org: uuid.UUID, amount: int, ref: str) -> Movement:
    return Movement(
        uuid.uuid4(), "deposit",
        _legs(Leg(None, "clearing", -amount), Leg(org, "available", amount)),
        external_ref=ref, org_id=org,
    )  # fmt: skip


def withdrawal(org: uuid.UUID, amount: int, ref: str) -> Movement:
    return Movement(
        uuid.uuid4(), "withdrawal",
        _legs(Leg(org, "available", -amount), Leg(None, "clearing", amount)),
        external_ref=ref, org_id=org,
    )  # fmt: skip


def reserve(trade: uuid.UUID, buyer: uuid.UUID, price: int, fee: int) -> Movement:
    total = price + fee
    return Movement(
        trade_movement_id(trade, "reserve"), "reserve",
        _legs(Leg(buyer, "available", -total), Leg(buyer, "escrow", total)),
        trade_id=trade, org_id=buyer,
    )  # fmt: skip


def post(trade: uuid.UUID, buyer: uuid.UUID, seller: uuid.UUID, price: int, fee: int) -> Movement:
    return Movement(
        trade_movement_id(trade, "post"), "post",
        _legs(Leg(buyer, "escrow", -(price + fee)), Leg(seller, "available", price),
              Leg(None, "fee_revenue", fee)),
        trade_id=trade, org_id=buyer,
    )  # fmt: skip


def void(trade: uuid.UUID, buyer: uuid.UUID, price: int, fee: int) -> Movement:
    total = price + fee
    return Movement(
        trade_movement_id(trade, "void"), "void",
        _legs(Leg(buyer, "escrow", -total), Leg(buyer, "available", total)),
        trade_id=trade, org_id=buyer,
    )  # fmt: skip


def top_up(trade: uuid.UUID, buyer: uuid.UUID, amount: int, key: str) -> Movement:
    """A metered trade's reservation raised: more of the buyer's money into escrow."""
    return Movement(
        trade_movement_id(trade, "top_up", key), "top_up",
        _legs(Leg(buyer, "available", -amount), Leg(buyer, "escrow", amount)),
        trade_id=trade, org_id=buyer, step_key=key,
    )  # fmt: skip


def usage(
    trade: uuid.UUID, buyer: uuid.UUID, seller: uuid.UUID, charge: int, fee: int, key: str
) -> Movement:
    """One billing period of a metered trade out of escrow: the charge less the exchange's fee
    to the seller, the fee to the exchange (the fee comes out of the seller's share)."""
    assert 0 <= fee <= charge, "the fee is part of the charge"
    return Movement(
        trade_movement_id(trade, "usage", key), "usage",
        _legs(Leg(buyer, "escrow", -charge), Leg(seller, "available", charge - fee),
              Leg(None, "fee_revenue", fee)),
        trade_id=trade, org_id=buyer, step_key=key,
    )  # fmt: skip


def release(trade: uuid.UUID, buyer: uuid.UUID, amount: int) -> Movement:
    """What a metered trade reserved and did not use, back to the buyer when its grant ends."""
    return Movement(
        trade_movement_id(trade, "release"), "release",
        _legs(Leg(buyer, "escrow", -amount), Leg(buyer, "available", amount)),
        trade_id=trade, org_id=buyer,
    )  # fmt: skip


def split_shares(held: int, fee: int, refund: int) -> tuple[int, int]:
    """A disputed trade split by a resolution: of what escrow holds (``held`` = price + fee)
    the buyer gets ``refund`` back; of the rest P = held - refund the exchange keeps its fee
    pro rata, ``fee_kept = floor(fee * P / held)`` (rounding never in the exchange's favour),
    and the seller gets P - fee_kept. Returns (seller, fee_kept)."""
    assert 0 < refund < held and 0 <= fee <= held
    rest = held - refund
    fee_kept = fee * rest // held
    return rest - fee_kept, fee_kept


def split(
    trade: uuid.UUID, buyer: uuid.UUID, seller: uuid.UUID, held: int, fee: int, refund: int
) -> Movement:
    """A disputed trade's escrow divided by a resolution (`split_shares`): ``refund`` back to
    the buyer, the seller's share and the fee kept."""
    seller_share, fee_kept = split_shares(held, fee, refund)
    return Movement(
        trade_movement_id(trade, "split"), "split",
        _legs(Leg(buyer, "escrow", -held), Leg(buyer, "available", refund),
              Leg(seller, "available", seller_share), Leg(None, "fee_revenue", fee_kept)),
        trade_id=trade, org_id=buyer,
    )  # fmt: skip


def refund(
    trade: uuid.UUID, buyer: uuid.UUID, seller: uuid.UUID, amount: int, fee_back: int, key: str
) -> Movement:
    """A metered trade's dispute resolved for the buyer: ``amount`` back to the buyer from what
    its periods paid, the seller's share (``amount - fee_back``) out of the seller's available
    balance and ``fee_back`` out of the exchange's fee revenue. Keyed by the dispute."""
    assert 0 <= fee_back <= amount
    return Movement(
        trade_movement_id(trade, "refund", key), "refund",
        _legs(Leg(seller, "available", -(amount - fee_back)), Leg(None, "fee_revenue", -fee_back),
              Leg(buyer, "available", amount)),
        trade_id=trade, org_id=seller, step_key=key,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a movement could not be made: the account it would have overdrawn."""

    movement: Movement
    kind: AccountKind
    balance: int
    needed: int

    @property
    def reason(self) -> str:
        return (
            f"insufficient funds: {self.kind} balance {self.balance} fen, {self.needed} fen needed"
        )


class Book:
    """Balances of the accounts a set of movements touches, locked for the transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.ids: dict[AccountKey, int] = {}
        self.balances: dict[AccountKey, int] = {}

    async def lock(self, movements: Sequence[Movement], also: Sequence[AccountKey] = ()) -> None:
        """Create missing accounts and lock every touched one, in id order (no deadlocks); with
        ``also``, the accounts a later step of the same transaction will move."""
        keys = sorted(
            ({(leg.owner, leg.kind) for m in movements for leg in m.legs} | set(also))
            - set(self.ids),
            key=lambda k: (str(k[0]), k[1]),
        )
        if not keys:
            return
        owners = [k[0] for k in keys]
        kinds = [k[1] for k in keys]
        await self.conn.execute(
            "INSERT INTO accounts (org_id, kind) SELECT * FROM unnest($1::uuid[], $2::text[])"
            " ON CONFLICT DO NOTHING",
            owners, kinds,
        )  # fmt: skip
        org_ids = sorted({o for o in owners if o is not None})
        exchange_kinds = sorted({k for o, k in keys if o is None})
        rows = await self.conn.fetch(
            "SELECT id, org_id, kind, balance FROM accounts"
            " WHERE (org_id = ANY($1::uuid[]) AND kind = ANY($2::text[]))"
            " OR (org_id IS NULL AND kind = ANY($3::text[]))"
            " ORDER BY id FOR UPDATE",
            org_ids, sorted({k for o, k in keys if o is not None}), exchange_kinds,
        )  # fmt: skip
        for row in rows:
            key = (row["org_id"], row["kind"])
            self.ids[key] = row["id"]
            self.balances[key] = row["balance"]

    def plan(self, movements: Sequence[Movement]) -> tuple[list[Movement], list[Shortfall]]:
        """Apply movements in order to the locked balances; one that would overdraw an account
        (any but clearing) is left out and reported. Call `lock` first."""
        made: list[Movement] = []
        short: list[Shortfall] = []
        for movement in movements:
            shortfall = None
            for leg in movement.legs:
                key = (leg.owner, leg.kind)
                balance = self.balances[key]
                if leg.kind != "clearing" and balance + leg.amount < 0:
                    shortfall = Shortfall(movement, leg.kind, balance, -leg.amount)
                    break
            if shortfall is not None:
                short.append(shortfall)
                continue
            for leg in movement.legs:
                self.balances[(leg.owner, leg.kind)] += leg.amount
            made.append(movement)
        return made, short

    async def write(
        self, movements: Sequence[Movement], at: datetime, request_id: str | None = None
    ) -> None:
        """Insert the planned movements and postings and move the balances (three statements)."""
        if not movements:
            return
        await self.conn.execute(
            "INSERT INTO movements (id, kind, trade_id, external_ref, org_id, amount_fen,"
            " step_key, request_id, created_at)"
            " SELECT i, k, t, r, o, a, s, $8, $9 FROM unnest($1::uuid[], $2::text[], $3::uuid[],"
            " $4::text[], $5::uuid[], $6::bigint[], $7::text[]) AS x(i, k, t, r, o, a, s)",
            [m.id for m in movements], [m.kind for m in movements],
            [m.trade_id for m in movements], [m.external_ref for m in movements],
            [m.org_id for m in movements], [m.amount for m in movements],
            [m.step_key for m in movements], request_id, at,
        )  # fmt: skip
        posting_movements, posting_accounts, posting_amounts = [], [], []
        deltas: dict[int, int] = {}
        for m in movements:
            for leg in m.legs:
                account = self.ids[(leg.owner, leg.kind)]
                posting_movements.append(m.id)
                posting_accounts.append(account)
                posting_amounts.append(leg.amount)
                deltas[account] = deltas.get(account, 0) + leg.amount
        await self.conn.execute(
            "INSERT INTO postings (movement_id, account_id, amount_fen)"
            " SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[])",
            posting_movements, posting_accounts, posting_amounts,
        )  # fmt: skip
        changed = sorted(a for a, d in deltas.items() if d)
        if changed:
            await self.conn.execute(
                "UPDATE accounts SET balance = accounts.balance + d.delta"
                " FROM unnest($1::bigint[], $2::bigint[]) AS d(id, delta) WHERE accounts.id = d.id",
                changed, [deltas[a] for a in changed],
            )  # fmt: skip
