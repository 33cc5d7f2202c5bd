"""A metered trade's steps, the settlement room's interface for delivery: periods, top-ups, end.

A metered plan bills by use. At execution the settlement worker reserves the buyer's spend cap
(the trade's price; its fee is 0) and marks the trade metered with the contract's fee rule
(``fee_bps``). From then on the delivery room drives it, through the hooks the composition root
(`exchange/wiring.py`) makes of these methods:

- `MeteredSettlement.post_usage`: a closed billing period, exactly once per (trade, grant,
  period): the charge out of escrow, less the fee to the seller, the fee to the exchange
  (`exchange.platform.metering`: charge x fee_bps / 10,000 half up, no minimum). Never more
  than is reserved: a charge that would go beyond is refused and nothing is written.
- `MeteredSettlement.top_up`: more of the buyer's money reserved, idempotent by a key.
- `MeteredSettlement.release`: the grant has ended; what was reserved and not posted goes back
  to the buyer, and the trade is settled (something was posted) or voided (nothing was).
- `MeteredSettlement.usage_statements`: the statements posted, for the trade's receipt.

While a dispute holds the trade (``disputed``) a period is not posted and the trade is not
released: both raise `TradeDisputed` (409) and the delivery room tries again later.

Each runs inside the caller's transaction (the delivery room closes a period, or takes a
top-up, in its own), so a period is posted if and only if the delivery room's close commits.
Each takes the same locks in the same order as every settlement step (the trade's row, the
accounts it moves in id order, the ledger's append lock), so they never deadlock with the
worker, and each registers itself in the ledger. A final period, which the release follows in
the same transaction, locks the accounts the release moves with its own, before the ledger.
Which transitions a metered trade allows is `settlement.states.METERED_TRADE`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

import msgspec

from exchange.platform.canonical import canonical_json, sha256_digest
from exchange.platform.db import Connection, Executor
from exchange.platform.disputes import TradeDisputed
from exchange.platform.errors import Conflict, FieldError, InvalidInput, NotFound
from exchange.platform.events import UsageStatement
from exchange.platform.metering import fee_fen
from exchange.platform.settings import Settings
from exchange.platform.signing import jwks
from settlement import book, ledger
from settlement.book import InsufficientFunds
from settlement.outcomes import Outcome, announce, draft_row, outcome_row
from settlement.states import METERED_TRADE

MAX_TOP_UP_FEN = 10**12


class ReservationExceeded(Conflict):
    code = "reservation_exceeded"
    title = "More than the trade has reserved"


class StatementRejected(InvalidInput):
    code = "usage_statement_rejected"
    title = "The usage statement cannot be posted"


class PostedStatement(msgspec.Struct, frozen=True):
    """A usage statement as settlement posted it (``body``: the canonical JSON it was signed
    and digested as)."""

    grant_id: uuid.UUID
    period: int
    digest: str
    statement: UsageStatement
    body: bytes
    jws: str
    charge_fen: int
    fee_fen: int
    ledger_seq: int
    posted_at: datetime


def usage_step_key(statement: UsageStatement) -> str:
    """The key of a period's movement among the trade's: each grant numbers its own periods."""
    return f"{statement.grant_id}:{statement.period}"


async def _metered_trade(conn: Connection, trade_id: uuid.UUID) -> Any:
    """The metered trade's row, locked for the step; 404 if there is none, 409 if the trade is
    not metered."""
    row = await conn.fetchrow(
        "SELECT * FROM settlement_trades WHERE trade_id = $1 FOR UPDATE", trade_id
    )
    if row is None:
        raise NotFound(f"no trade {trade_id}")
    if not row["metered"]:
        raise Conflict(
            f"trade {trade_id} is not metered: it settles as one payment, not period by period",
            extensions={"trade_id": str(trade_id), "metered": False},
        )
    return row


class MeteredSettlement:
    """The steps of metered trades, in the caller's transaction (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def post_usage(
        self,
        conn: Connection,
        statement: UsageStatement,
        digest: str,
        jws: str,
        at: datetime,
        *,
        request_id: str | None = None,
    ) -> int | None:
        """Post one closed billing period; returns its ledger entry's sequence number, or None
        when the period was already posted (with this same statement: nothing changes).

        A period charging 0 fen moves no money but is still registered (entry and statement).
        Refused, with nothing written: a statement that does not hash to ``digest``, is not
        signed by the exchange, or names another exchange or other parties
        (`StatementRejected`, 422); another statement for a period already posted, a trade
        that is not metered or has ended (409); a trade a dispute holds (`TradeDisputed`, 409:
        the period waits for the resolution); a charge beyond what is reserved and not yet
        posted (`ReservationExceeded`, 409: the delivery room stops at the cap, so this means
        it did not)."""
        problems = _statement_problems(statement, digest, self.settings.exchange_code)
        if problems:
            raise StatementRejected("; ".join(problems))
        body = canonical_json(statement)
        try:
            ledger.verify_statement(msgspec.json.decode(body), digest, jws, await jwks(conn))
        except ledger.ReceiptInvalid as error:
            raise StatementRejected(str(error)) from error
        trade_id = uuid.UUID(statement.trade_id)
        row = await _metered_trade(conn, trade_id)
        if (str(row["buyer_org_id"]), str(row["seller_org_id"]), row["product_code"]) != (
            statement.buyer_org_id, statement.seller_org_id, statement.product_code
        ):  # fmt: skip
            raise StatementRejected(
                f"the statement names other parties or another product than trade {trade_id}"
            )
        grant_id = uuid.UUID(statement.grant_id)
        posted = await conn.fetchrow(
            "SELECT digest, ledger_seq FROM usage_statements"
            " WHERE trade_id = $1 AND grant_id = $2 AND period = $3",
            trade_id, grant_id, statement.period,
        )  # fmt: skip
        if posted is not None:
            if posted["digest"] != digest:
                raise Conflict(
                    f"period {statement.period} of grant {grant_id} was already posted for"
                    f" trade {trade_id} with another statement ({posted['digest']})",
                    extensions={"ledger_seq": posted["ledger_seq"], "digest": posted["digest"]},
                )
            return None
        _not_disputed(row, f"post period {statement.period} of")
        METERED_TRADE.next(row["state"], "post_usage")
        charge = statement.charge_fen
        left = row["reserved_fen"] - row["posted_fen"]
        if charge > left:
            raise ReservationExceeded(
                f"period {statement.period} charges {charge} fen; trade {trade_id} has"
                f" {left} fen reserved and not yet posted (reserved {row['reserved_fen']},"
                f" posted {row['posted_fen']})",
                extensions={"charge_fen": charge, "reserved_fen": row["reserved_fen"],
                            "posted_fen": row["posted_fen"]},
            )  # fmt: skip
        fee = fee_fen(charge, row["fee_bps"])
        # The final period is followed in the same transaction by `release`, which moves the
        # buyer's escrow and available accounts: they are locked now, with the period's own,
        # so the ledger's append lock below is still taken after every account. (Locked by
        # the release, after the ledger, a step holding one of them while it waits for the
        # ledger deadlocks with it: even a final period of 0 fen takes the ledger's lock.)
        ending: list[book.AccountKey] = []
        if statement.final:
            ending = [(row["buyer_org_id"], "escrow"), (row["buyer_org_id"], "available")]
        movement = None
        if charge > 0:
            movement = book.usage(
                trade_id, row["buyer_org_id"], row["seller_org_id"], charge, fee,
                usage_step_key(statement),
            )  # fmt: skip
            await _write(conn, movement, at, request_id, ending)
            await conn.execute(
                "UPDATE settlement_trades SET posted_fen = posted_fen + $2, updated_at = $3"
                " WHERE trade_id = $1",
                trade_id, charge, at,
            )  # fmt: skip
        elif ending:
            await book.Book(conn).lock([], ending)
        [seq] = await ledger.append(
            conn, self.settings.exchange_code,
            [draft_row(row, "usage", movement.id if movement else None, price_fen=charge - fee,
                       fee_fen=fee, period=statement.period, statement_digest=digest)],
            at,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO usage_statements (trade_id, grant_id, period, digest, statement, jws,"
            " charge_fen, fee_fen, ledger_seq, posted_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            trade_id, grant_id, statement.period, digest, body, jws, charge, fee, seq, at,
        )  # fmt: skip
        return seq

    async def top_up(
        self,
        conn: Connection,
        trade_id: uuid.UUID,
        buyer_org_id: uuid.UUID,
        amount_fen: int,
        key: str,
        at: datetime,
        *,
        request_id: str | None = None,
    ) -> int:
        """Reserve ``amount_fen`` more of the buyer's available money for the trade; returns
        the trade's reservation after it. Idempotent by ``key``: the same key and amount again
        changes nothing (and returns the reservation as it stands); the key with another
        amount is a 409. 422 `insufficient_funds` when the buyer's available balance is short;
        404 for another organisation's trade; 409 for a trade that is not metered or has
        ended."""
        if not 0 < amount_fen <= MAX_TOP_UP_FEN:
            raise InvalidInput(
                f"a top-up is 1 to {MAX_TOP_UP_FEN} fen, not {amount_fen}",
                errors=[FieldError(path="amount_fen", message="out of range")],
            )
        if not 0 < len(key) <= 200:
            raise InvalidInput(
                "a top-up needs a key of 1 to 200 characters (it makes the request idempotent)",
                errors=[FieldError(path="key", message="1 to 200 characters")],
            )
        row = await _metered_trade(conn, trade_id)
        if row["buyer_org_id"] != buyer_org_id:
            raise NotFound(f"no trade {trade_id}")  # only the buyer reserves its own money
        earlier = await conn.fetchval(
            "SELECT amount_fen FROM movements WHERE trade_id = $1 AND kind = 'top_up'"
            " AND step_key = $2",
            trade_id, key,
        )  # fmt: skip
        if earlier is not None:
            if earlier != amount_fen:
                raise Conflict(
                    f"top-up key {key!r} of trade {trade_id} was already used for {earlier} fen",
                    extensions={"amount_fen": earlier},
                )
            return int(row["reserved_fen"])
        METERED_TRADE.next(row["state"], "top_up")
        movement = book.top_up(trade_id, buyer_org_id, amount_fen, key)
        accounts = book.Book(conn)
        await accounts.lock([movement])
        made, short = accounts.plan([movement])
        if short:
            raise InsufficientFunds(
                f"cannot reserve {amount_fen} fen more for trade {trade_id}: {short[0].reason}",
                extensions={"available_fen": short[0].balance, "requested_fen": amount_fen},
            )
        await accounts.write(made, at, request_id)
        reserved = await conn.fetchval(
            "UPDATE settlement_trades SET reserved_fen = reserved_fen + $2, updated_at = $3"
            " WHERE trade_id = $1 RETURNING reserved_fen",
            trade_id, amount_fen, at,
        )  # fmt: skip
        await ledger.append(
            conn, self.settings.exchange_code,
            [draft_row(row, "top_up", movement.id, price_fen=amount_fen, fee_fen=0)], at,
        )  # fmt: skip
        return int(reserved)

    async def release(
        self,
        conn: Connection,
        trade_id: uuid.UUID,
        at: datetime,
        reason: str,
        *,
        request_id: str | None = None,
    ) -> str:
        """The trade's grant has ended (expired, exhausted, revoked): what was reserved and not
        posted goes back to the buyer, and the trade is settled if any period was posted, else
        voided (``dx.trade.settled`` / ``dx.trade.voided``). Returns the trade's state. A trade
        already ended (or failed) is left as it is and its state returned; a trade a dispute
        holds is not released yet (`TradeDisputed`, 409)."""
        row = await _metered_trade(conn, trade_id)
        if METERED_TRADE.is_final(row["state"]):
            return str(row["state"])
        _not_disputed(row, "release")
        posted = row["posted_fen"]
        state = cast(
            Outcome,
            METERED_TRADE.next(row["state"], "release_used" if posted else "release_unused"),
        )
        remainder = row["reserved_fen"] - posted
        movement = None
        if remainder > 0:
            movement = book.release(trade_id, row["buyer_org_id"], remainder)
            await _write(conn, movement, at, request_id)
        await conn.execute(
            "UPDATE settlement_trades SET state = $2, reason = $3, updated_at = $4"
            " WHERE trade_id = $1",
            trade_id, state, reason, at,
        )  # fmt: skip
        [seq] = await ledger.append(
            conn, self.settings.exchange_code,
            [draft_row(row, "released", movement.id if movement else None,
                       price_fen=remainder, fee_fen=0)],
            at,
        )  # fmt: skip
        await announce(conn, self.settings, [outcome_row(row, state, seq, reason)], at, request_id)
        return state

    async def register_job_receipt(
        self, conn: Connection, trade_id: uuid.UUID, digest: str, at: datetime
    ) -> int | None:
        """Append a compute job's receipt digest to the ledger under its trade (step ``job``,
        no money moved: the job's CPU is posted with its grant's usage periods); its sequence
        number, or None for a trade settlement does not know."""
        row = await conn.fetchrow("SELECT * FROM settlement_trades WHERE trade_id = $1", trade_id)
        if row is None:
            return None
        [seq] = await ledger.append(
            conn, self.settings.exchange_code,
            [draft_row(row, "job", None, price_fen=0, fee_fen=0, statement_digest=digest)], at,
        )  # fmt: skip
        return seq

    async def usage_statements(self, conn: Executor, trade_id: uuid.UUID) -> list[PostedStatement]:
        """The trade's posted usage statements, in the order they were posted."""
        rows = await conn.fetch(
            "SELECT * FROM usage_statements WHERE trade_id = $1 ORDER BY ledger_seq", trade_id
        )
        return [
            PostedStatement(
                grant_id=r["grant_id"], period=r["period"], digest=r["digest"],
                statement=msgspec.json.decode(r["statement"], type=UsageStatement),
                body=bytes(r["statement"]), jws=r["jws"], charge_fen=r["charge_fen"],
                fee_fen=r["fee_fen"], ledger_seq=r["ledger_seq"], posted_at=r["posted_at"],
            )
            for r in rows
        ]  # fmt: skip


def _not_disputed(row: Any, what: str) -> None:
    """A disputed trade's money waits for the dispute: `TradeDisputed` (409), which the
    delivery room takes as "later" (the period stays open, its records unposted)."""
    if row["state"] == "disputed":
        raise TradeDisputed(
            f"cannot {what} trade {row['trade_id']} now: a dispute holds it; the period waits"
            " for its resolution",
            extensions={"trade_id": str(row["trade_id"]), "state": "disputed"},
        )


async def _write(
    conn: Connection,
    movement: book.Movement,
    at: datetime,
    request_id: str | None,
    also: list[book.AccountKey] | None = None,
) -> None:
    """A movement out of the trade's escrow, which always holds what the trade reserved and
    has not posted: a shortfall there is a broken book, never the buyer's. ``also``: accounts
    locked with the movement's, for a later step of the transaction."""
    accounts = book.Book(conn)
    await accounts.lock([movement], also or ())
    made, short = accounts.plan([movement])
    if short:
        raise RuntimeError(f"escrow does not cover trade {movement.trade_id}: {short[0].reason}")
    await accounts.write(made, at, request_id)


def _statement_problems(statement: UsageStatement, digest: str, exchange: str) -> list[str]:
    try:  # a struct built in code is not type-checked: an amount must be an integer, say
        msgspec.convert(msgspec.to_builtins(statement), UsageStatement)
    except msgspec.ValidationError as error:
        return [f"the statement is malformed: {error}"]
    problems = []
    if statement.exchange != exchange:
        problems.append(f"the statement is from exchange {statement.exchange!r}, not {exchange!r}")
    if statement.period < 1:
        problems.append(f"period {statement.period} is not a period (they count from 1)")
    if statement.charge_fen < 0:
        problems.append(f"the charge is {statement.charge_fen} fen")
    if sha256_digest(statement) != digest:
        problems.append("the statement does not hash to its digest")
    for name, value in (("trade_id", statement.trade_id), ("grant_id", statement.grant_id)):
        try:
            uuid.UUID(value)
        except ValueError:
            problems.append(f"{name} {value!r} is not a UUID")
    return problems
