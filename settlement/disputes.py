"""What a dispute does to a trade's money and ledger: settlement's side of the disputes room.

The disputes room (`exchange.disputes`) never imports settlement: the composition root hands it
these methods as hooks. Each runs in the CALLER's transaction (the dispute's own step commits
or rolls back with the money), takes the trade's row lock first like every settlement step, and
is idempotent:

- `facts`: what settlement knows of the trade (state, parties, amounts, what escrow holds, a
  metered trade's posted periods), the row locked with ``lock``.
- `hold`: a reserved trade becomes ``disputed``: nothing held is posted (``settle_due`` takes
  reserved trades only; a metered trade's periods and release wait, `TradeDisputed`) even when
  the acceptance period passes. A trade in any other state is left as it is.
- `unhold`: a disputed trade goes back to ``reserved`` (redelivery, more time to accept, a
  withdrawn dispute), with a new acceptance period when one is given.
- `resolve`: the resolution's money, exactly once per (trade, dispute). A fixed-price trade:
  refund 0 posts it (``settled``), the whole of it voids it (``voided``), anything between
  splits it (``split``, `book.split_shares`):

      held = price + fee; the buyer gets refund_fen; of the rest P = held - refund_fen the
      exchange keeps fee_kept = floor(fee x P / held) (rounding never in the exchange's
      favour) and the seller gets P - fee_kept. The movement sums to zero.

  A metered trade: the refund comes back from what the named posted periods paid (movement
  ``refund``: the seller's available balance gives refund - fee_back, the exchange's fee
  revenue gives fee_back = ceil(sum of the periods' fees x refund / sum of their charges):
  rounding never in the exchange's favour, as for a split; the buyer gets refund); then the
  hold is lifted (``reserved``) and the grant's billing goes on.
- `register`: a dispute's evidence item or resolution as a ledger entry (by digest).
- `proofs`: entries with RFC 6962 inclusion proofs against a signed tree head covering them.
- `receipt_evidence`: the trade's ledger receipt, as evidence.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec

from exchange.platform.db import Connection, Executor
from exchange.platform.disputes import (
    LedgerProofs,
    MoneyOutcome,
    PeriodFacts,
    SystemEvidence,
    TradeFacts,
)
from exchange.platform.errors import Conflict, FieldError, InvalidInput, NotFound
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing
from exchange.platform.states import IllegalTransition
from settlement import book, ledger
from settlement.metered import MeteredSettlement
from settlement.outcomes import VoidedHook, announce, draft_row, finish, outcome_row
from settlement.states import METERED_TRADE, TRADE, TradeAction, TradeState

RegisteredStep = Literal["evidence", "resolution"]
# The ledger steps a resolution's money is registered as (with the dispute's id).
MONEY_STEPS = ("settled", "voided", "split", "refund")


class RefundExceedsSellerBalance(Conflict):
    code = "refund_exceeds_seller_balance"
    title = "The seller's available balance does not cover the refund"


def _table(row: Any) -> Any:
    return METERED_TRADE if row["metered"] else TRADE


def _held(row: Any) -> int:
    """What escrow holds for the trade now."""
    if row["state"] not in ("reserved", "disputed"):
        return 0
    if row["metered"]:
        return int(row["reserved_fen"] - row["posted_fen"])
    return int(row["price_fen"] + row["fee_fen"])


async def trade_receipt(
    conn: Connection,
    settings: Settings,
    keyring: KeyRing,
    tree: ledger.LedgerTree,
    trade_id: uuid.UUID,
    at: datetime,
) -> bytes | None:
    """The trade's receipt (`GET /v1/trades/{id}/receipt`'s bytes): its entries with inclusion
    proofs against a signed tree head covering them (signed now if the latest does not), and a
    metered trade's statements. None when the trade has no entries."""
    rows = await conn.fetch(
        "SELECT seq, entry FROM ledger_entries WHERE trade_id = $1 ORDER BY seq", trade_id
    )
    if not rows:
        return None
    statements = await MeteredSettlement(settings).usage_statements(conn, trade_id)
    head = await _head_covering(conn, settings, keyring, tree, rows[-1]["seq"], at)
    merkle = await tree.sync(conn)
    return ledger.build_receipt(
        settings.exchange_code, str(trade_id), [bytes(r["entry"]) for r in rows], merkle, head,
        [(s.body, s.digest, s.jws) for s in statements],
    )  # fmt: skip


async def _head_covering(
    conn: Connection,
    settings: Settings,
    keyring: KeyRing,
    tree: ledger.LedgerTree,
    seq: int,
    at: datetime,
) -> ledger.TreeHead:
    """The latest signed tree head if it covers entry ``seq``; else one signed now."""
    head = await ledger.latest_tree_head(conn)
    if head is None or head.tree_size <= seq:
        async with conn.transaction():  # a savepoint inside the caller's transaction
            await ledger.sign_tree_head(conn, tree, keyring, settings.exchange_code, at)
        head = await ledger.latest_tree_head(conn)
    assert head is not None and head.tree_size > seq
    return head


class DisputeSettlement:
    """Settlement's steps for disputes, in the caller's transaction (see the module docstring).
    ``tree``: the process's ledger leaf cache (`ledger.tree_for`); ``on_voided``: as
    `SettlementService`'s (a refund of everything voids the trade)."""

    def __init__(
        self,
        settings: Settings,
        keyring: KeyRing,
        tree: ledger.LedgerTree,
        on_voided: VoidedHook,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self.tree = tree
        self.on_voided = on_voided
        self.metered = MeteredSettlement(settings)

    async def _row(self, conn: Executor, trade_id: uuid.UUID, lock: bool) -> Any:
        return await conn.fetchrow(
            "SELECT * FROM settlement_trades WHERE trade_id = $1" + (" FOR UPDATE" if lock else ""),
            trade_id,
        )

    async def _locked(self, conn: Connection, trade_id: uuid.UUID) -> Any:
        row = await self._row(conn, trade_id, True)
        if row is None:
            raise NotFound(f"no trade {trade_id}")
        return row

    async def facts(
        self, conn: Connection, trade_id: uuid.UUID, lock: bool = False
    ) -> TradeFacts | None:
        """What settlement knows of the trade, None if it has not registered it (yet); with
        ``lock`` its row is locked for the rest of the caller's transaction."""
        row = await self._row(conn, trade_id, lock)
        if row is None:
            return None
        periods: tuple[PeriodFacts, ...] = ()
        if row["metered"]:
            periods = tuple(
                PeriodFacts(
                    period=s.period, grant_id=s.grant_id, charge_fen=s.charge_fen,
                    fee_fen=s.fee_fen, statement_digest=s.digest, posted_at=s.posted_at,
                )
                for s in await self.metered.usage_statements(conn, trade_id)
            )  # fmt: skip
        return TradeFacts(
            trade_id=row["trade_id"], state=row["state"], metered=row["metered"],
            buyer_org_id=row["buyer_org_id"], seller_org_id=row["seller_org_id"],
            product_code=row["product_code"], price_fen=row["price_fen"],
            fee_fen=row["fee_fen"], held_fen=_held(row), executed_at=row["executed_at"],
            acceptance_due=row["acceptance_due"], periods=periods,
        )  # fmt: skip

    async def _move(
        self,
        conn: Connection,
        row: Any,
        action: TradeAction,
        at: datetime,
        acceptance_due: datetime | None = None,
    ) -> TradeState:
        state: TradeState = _table(row).next(row["state"], action)
        await conn.execute(
            "UPDATE settlement_trades SET state = $2, updated_at = $3,"
            " acceptance_due = coalesce($4, acceptance_due) WHERE trade_id = $1",
            row["trade_id"], state, at, acceptance_due,
        )  # fmt: skip
        return state

    async def hold(
        self,
        conn: Connection,
        trade_id: uuid.UUID,
        dispute_id: uuid.UUID,
        at: datetime,
        request_id: str | None,
    ) -> None:
        """A dispute opened: a reserved trade (metered too) becomes ``disputed`` and nothing it
        holds is posted until `unhold` or `resolve`. Any other state: nothing is held (a
        settled trade's money has gone), so nothing changes. 404 for an unknown trade."""
        row = await self._locked(conn, trade_id)
        if row["state"] == "reserved":
            await self._move(conn, row, "dispute", at)

    async def unhold(
        self,
        conn: Connection,
        trade_id: uuid.UUID,
        dispute_id: uuid.UUID,
        acceptance_due: datetime | None,
        at: datetime,
        request_id: str | None,
    ) -> None:
        """The hold lifted: a disputed trade is ``reserved`` again, its acceptance period
        ending at ``acceptance_due`` when given (else as it was: if it has passed, the next
        ``settle_due`` posts the trade). A trade not disputed is left as it is."""
        row = await self._locked(conn, trade_id)
        if row["state"] == "disputed":
            await self._move(conn, row, "release_hold", at, acceptance_due)

    async def _resolved(
        self, conn: Connection, trade_id: uuid.UUID, dispute_id: uuid.UUID
    ) -> ledger.LedgerEntry | None:
        """The money entry this dispute's resolution registered, if it did."""
        rows = await conn.fetch(
            "SELECT entry FROM ledger_entries WHERE trade_id = $1 AND step = ANY($2::text[])"
            " ORDER BY seq",
            trade_id, list(MONEY_STEPS),
        )  # fmt: skip
        wanted = str(dispute_id)
        for row in rows:
            entry = msgspec.json.decode(bytes(row["entry"]), type=ledger.LedgerEntry)
            if entry.dispute_id == wanted:
                return entry
        return None

    async def resolve(
        self,
        conn: Connection,
        trade_id: uuid.UUID,
        dispute_id: uuid.UUID,
        refund_fen: int,
        periods: Sequence[int],
        at: datetime,
        request_id: str | None,
    ) -> MoneyOutcome:
        """Post a dispute's resolution: ``refund_fen`` to the buyer, the rest as the module
        docstring says. Exactly once per (trade, dispute): a repeat returns the first outcome
        and moves nothing. A trade not disputed with refund 0: nothing moves (its state is
        returned); with a refund, 409. 422 for a refund beyond what is held (fixed price) or
        what the named periods charged (metered; ``periods`` required, each a posted one);
        409 `RefundExceedsSellerBalance` when the seller's available balance is short."""
        if refund_fen < 0:
            raise InvalidInput(
                f"a refund is 0 fen or more, not {refund_fen}",
                errors=[FieldError(path="refund_fen", message="must be 0 or more")],
            )
        row = await self._locked(conn, trade_id)
        earlier = await self._resolved(conn, trade_id, dispute_id)
        if earlier is not None:
            return _outcome_of(row, earlier)
        if row["state"] != "disputed":
            if refund_fen == 0:
                return MoneyOutcome(row["state"], 0, 0, 0, None)
            raise IllegalTransition(
                f"cannot refund {refund_fen} fen of trade {trade_id}: it is {row['state']},"
                " not held by a dispute",
                extensions={"aggregate": _table(row).aggregate, "state": row["state"],
                            "action": "resolve"},
            )  # fmt: skip
        if row["metered"]:
            return await self._refund_metered(conn, row, dispute_id, refund_fen, periods, at,
                                              request_id)  # fmt: skip
        held = row["price_fen"] + row["fee_fen"]
        if refund_fen > held:
            raise InvalidInput(
                f"trade {trade_id} holds {held} fen; a refund of {refund_fen} fen is more",
                errors=[FieldError(path="refund_fen", message=f"at most {held} fen")],
                extensions={"held_fen": held},
            )
        if refund_fen in (0, held):
            step: Literal["settled", "voided"] = "settled" if refund_fen == 0 else "voided"
            TRADE.next("disputed", "resolve_release" if step == "settled" else "resolve_refund")
            [seq] = await finish(
                conn, self.settings, [row], step, at, request_id, self.on_voided,
                dispute_id=dispute_id,
            )  # fmt: skip
            if step == "settled":
                return MoneyOutcome("settled", 0, row["price_fen"], row["fee_fen"], seq)
            return MoneyOutcome("voided", held, 0, 0, seq)
        state = TRADE.next("disputed", "resolve_split")
        movement = book.split(
            trade_id, row["buyer_org_id"], row["seller_org_id"], held, row["fee_fen"], refund_fen
        )
        seller_fen, fee_kept = book.split_shares(held, row["fee_fen"], refund_fen)
        await _write(conn, movement, at, request_id)
        await conn.execute(
            "UPDATE settlement_trades SET state = $2, updated_at = $3 WHERE trade_id = $1",
            trade_id, state, at,
        )  # fmt: skip
        [seq] = await ledger.append(
            conn, self.settings.exchange_code,
            [draft_row(row, "split", movement.id, price_fen=seller_fen, fee_fen=fee_kept,
                       dispute_id=dispute_id, refund_fen=refund_fen)],
            at,
        )  # fmt: skip
        await announce(
            conn, self.settings, [outcome_row(row, "split", seq, refund_fen=refund_fen)], at,
            request_id,
        )  # fmt: skip
        return MoneyOutcome("split", refund_fen, seller_fen, fee_kept, seq)

    async def _refund_metered(
        self,
        conn: Connection,
        row: Any,
        dispute_id: uuid.UUID,
        refund_fen: int,
        periods: Sequence[int],
        at: datetime,
        request_id: str | None,
    ) -> MoneyOutcome:
        """A disputed metered trade's resolution: the refund from the named posted periods,
        then the hold lifted (``reserved``: its grant's billing goes on)."""
        trade_id = row["trade_id"]
        if refund_fen == 0:
            state = await self._move(conn, row, "release_hold", at)
            return MoneyOutcome(state, 0, 0, 0, None)
        posted = {s.period: s for s in await self.metered.usage_statements(conn, trade_id)}
        named = sorted(set(periods))
        unknown = [p for p in named if p not in posted]
        if not named or unknown:
            raise InvalidInput(
                f"a refund of metered trade {trade_id} names the posted periods it comes from;"
                + (f" periods {unknown} are not posted periods of it" if unknown
                   else " none was named"),
                errors=[FieldError(path="periods", message=f"unknown periods {unknown}"
                                   if unknown else "name at least one posted period")],
            )  # fmt: skip
        charges = sum(posted[p].charge_fen for p in named)
        fees = sum(posted[p].fee_fen for p in named)
        refunded = await conn.fetchval(
            "SELECT coalesce(sum(amount_fen), 0)::bigint FROM movements"
            " WHERE trade_id = $1 AND kind = 'refund'",
            trade_id,
        )
        room = min(charges, row["posted_fen"] - refunded)
        if refund_fen > room:
            raise InvalidInput(
                f"periods {named} of trade {trade_id} charged {charges} fen"
                f" ({refunded} fen of the trade's charges already refunded); a refund of"
                f" {refund_fen} fen is more",
                errors=[FieldError(path="refund_fen", message=f"at most {room} fen")],
                extensions={"charged_fen": charges, "refunded_fen": refunded},
            )  # fmt: skip
        fee_back = -(-fees * refund_fen // charges)  # ceil: never in the exchange's favour
        METERED_TRADE.next(row["state"], "refund")
        movement = book.refund(
            trade_id, row["buyer_org_id"], row["seller_org_id"], refund_fen, fee_back,
            str(dispute_id),
        )  # fmt: skip
        accounts = book.Book(conn)
        await accounts.lock([movement])
        made, short = accounts.plan([movement])
        if short:
            raise RefundExceedsSellerBalance(
                f"cannot refund {refund_fen} fen of trade {trade_id}: the seller's available"
                f" balance is {short[0].balance} fen, {short[0].needed} fen needed",
                extensions={"available_fen": short[0].balance, "needed_fen": short[0].needed,
                            "account": short[0].kind},
            )  # fmt: skip
        await accounts.write(made, at, request_id)
        [seq] = await ledger.append(
            conn, self.settings.exchange_code,
            [draft_row(row, "refund", movement.id, price_fen=refund_fen - fee_back,
                       fee_fen=fee_back, dispute_id=dispute_id, refund_fen=refund_fen)],
            at,
        )  # fmt: skip
        state = await self._move(conn, row, "release_hold", at)
        return MoneyOutcome(state, refund_fen, -(refund_fen - fee_back), -fee_back, seq)

    async def register(
        self,
        conn: Connection,
        trade_id: uuid.UUID,
        dispute_id: uuid.UUID,
        step: RegisteredStep,
        digest: str,
        at: datetime,
    ) -> int:
        """Append a dispute's evidence item or resolution to the ledger under its trade (no
        money: price and fee 0, ``statement_digest`` = ``digest``, with the dispute's id);
        returns its sequence number. The same (dispute, step, digest) again returns the first
        entry's number. 404 for a trade settlement does not know."""
        if step not in ("evidence", "resolution"):
            raise ValueError(f"a dispute registers evidence or a resolution, not {step!r}")
        row = await self._row(conn, trade_id, False)
        if row is None:
            raise NotFound(f"no trade {trade_id}")
        wanted = str(dispute_id)
        for earlier in await conn.fetch(
            "SELECT seq, entry FROM ledger_entries WHERE trade_id = $1 AND step = $2 ORDER BY seq",
            trade_id, step,
        ):  # fmt: skip
            entry = msgspec.json.decode(bytes(earlier["entry"]), type=ledger.LedgerEntry)
            if entry.dispute_id == wanted and entry.statement_digest == digest:
                return int(earlier["seq"])
        [seq] = await ledger.append(
            conn, self.settings.exchange_code,
            [draft_row(row, step, None, price_fen=0, fee_fen=0, statement_digest=digest,
                       dispute_id=dispute_id)],
            at,
        )  # fmt: skip
        return seq

    async def proofs(self, conn: Connection, seqs: Sequence[int], at: datetime) -> LedgerProofs:
        """The entries ``seqs`` (canonical bytes, in the order given) with RFC 6962 inclusion
        proofs against one signed tree head covering all of them (signed now if the latest
        does not). 404 for a sequence number the ledger does not have."""
        wanted = list(dict.fromkeys(seqs))
        rows = {
            r["seq"]: bytes(r["entry"])
            for r in await conn.fetch(
                "SELECT seq, entry FROM ledger_entries WHERE seq = ANY($1::bigint[])", wanted
            )
        }
        missing = [s for s in wanted if s not in rows]
        if missing:
            raise NotFound(f"no ledger entries {missing}")
        if not wanted:
            head = await ledger.latest_tree_head(conn)
            if head is None:
                raise NotFound("the ledger has no signed tree head yet")
            return LedgerProofs(tree_head=head.jws, entries=())
        head = await _head_covering(conn, self.settings, self.keyring, self.tree, max(wanted), at)
        tree = await self.tree.sync(conn)
        return LedgerProofs(
            tree_head=head.jws,
            entries=tuple(
                (rows[s], tuple(p.hex() for p in tree.inclusion_proof(s, head.tree_size)))
                for s in seqs
            ),
        )

    async def receipt_evidence(
        self, conn: Connection, trade_id: uuid.UUID, at: datetime
    ) -> list[SystemEvidence]:
        """The trade's ledger receipt (the bytes `GET /v1/trades/{id}/receipt` gives) as the
        ``ledger_receipt`` item ``ledger-receipt.json``; none for a trade without entries."""
        body = await trade_receipt(conn, self.settings, self.keyring, self.tree, trade_id, at)
        if body is None:
            return []
        return [SystemEvidence("ledger_receipt", "ledger-receipt.json", "application/json", body)]


def _outcome_of(row: Any, entry: ledger.LedgerEntry) -> MoneyOutcome:
    """The outcome a dispute's resolution had, from the money entry it registered."""
    seq = entry.seq
    if entry.step == "settled":
        return MoneyOutcome(row["state"], 0, entry.price_fen, entry.fee_fen, seq)
    if entry.step == "voided":
        return MoneyOutcome(row["state"], entry.price_fen + entry.fee_fen, 0, 0, seq)
    refund = entry.refund_fen or 0
    if entry.step == "split":
        return MoneyOutcome(row["state"], refund, entry.price_fen, entry.fee_fen, seq)
    return MoneyOutcome(row["state"], refund, -entry.price_fen, -entry.fee_fen, seq)


async def _write(
    conn: Connection, movement: book.Movement, at: datetime, request_id: str | None
) -> None:
    """A movement out of the trade's escrow, which holds what the trade reserved: a shortfall
    there is a broken book, never a party's."""
    accounts = book.Book(conn)
    await accounts.lock([movement])
    made, short = accounts.plan([movement])
    if short:
        raise RuntimeError(f"escrow does not cover trade {movement.trade_id}: {short[0].reason}")
    await accounts.write(made, at, request_id)
