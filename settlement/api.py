"""HTTP routes: trades and their receipts, accounts, deposits and withdrawals, the public ledger."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter

from exchange.platform.audit import Actor
from exchange.platform.auth import PUBLIC, Principal, requires
from exchange.platform.context import Platform
from exchange.platform.errors import FieldError, InvalidInput, NotFound
from exchange.platform.money import fen
from exchange.platform.paging import (
    BIGINT_MAX,
    DEFAULT_PAGE,
    check_limit,
    decode_cursor,
    encode_cursor,
)
from settlement import figures, ledger
from settlement.service import (
    Accounts,
    ExchangeAccounts,
    MovementView,
    SettlementService,
    TradeView,
)
from settlement.states import TradeState

Settlement = NamedDependency[SettlementService]
ActorDep = NamedDependency[Actor]
PrincipalDep = NamedDependency[Principal]
PlatformDep = NamedDependency[Platform]

Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


REPLAYED = (
    "The {kind} made earlier with this external_ref (the same amount and organisation): nothing"
    " new is moved"
)


def _replayed(kind: Literal["deposit", "withdrawal"]) -> dict[int, ResponseSpec]:
    """The 200 answer of a deposit or withdrawal: the one made earlier with the same reference."""
    return {
        200: ResponseSpec(
            MovementView, generate_examples=False, description=REPLAYED.format(kind=kind)
        )
    }


class ReasonIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class ExternalMovementIn(msgspec.Struct, forbid_unknown_fields=True):
    """Money from or to the organisation's bank account. ``external_ref`` (the bank's
    reference) makes the request idempotent."""

    amount_fen: Annotated[int, fen(ge=1, le=10**15)]
    external_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class TradePage(msgspec.Struct, frozen=True):
    items: list[TradeView]
    next_cursor: str | None


class TreeHeadPage(msgspec.Struct, frozen=True):
    items: list[ledger.TreeHead]
    next_after: int | None


class ConsistencyProof(msgspec.Struct, frozen=True):
    first: int
    second: int
    proof: list[str]


class EntryOut(msgspec.Struct, frozen=True):
    seq: int
    entry: ledger.LedgerEntry
    leaf_hash: str


class EntryPage(msgspec.Struct, frozen=True):
    items: list[EntryOut]
    next_after: int | None


class FailureOut(msgspec.Struct, frozen=True):
    id: int
    subject: str
    event_id: str | None
    trade_id: uuid.UUID | None
    deliveries: int
    error: str
    failed_at: datetime


class TradeController(Controller):
    path = "/v1/trades"
    tags = ["trades"]

    @get("/", operation_id="listTrades", opt=requires("buyer", "seller"))
    async def list_trades(
        self,
        settlement: Settlement,
        principal: PrincipalDep,
        trade_state: Annotated[
            TradeState | None,
            QueryParameter(name="state"),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = DEFAULT_PAGE,
        cursor: Annotated[str | None, QueryParameter()] = None,
    ) -> TradePage:
        """Trades the caller's organisation bought or sold, newest first."""
        after = decode_cursor(cursor, (datetime, uuid.UUID)) if cursor else None
        items = await settlement.list_for(principal, trade_state, after, check_limit(limit))
        next_cursor = (
            encode_cursor(items[-1].executed_at, items[-1].trade_id)
            if len(items) == limit
            else None
        )
        return TradePage(items=items, next_cursor=next_cursor)

    @get("/{trade_id:uuid}", operation_id="getTrade", opt=requires())
    async def get_trade(
        self, trade_id: FromPath[uuid.UUID], settlement: Settlement, principal: PrincipalDep
    ) -> TradeView:
        """State, postings and ledger entries of a trade (its parties only)."""
        return await settlement.get(principal, trade_id)

    @post("/{trade_id:uuid}/accept", operation_id="acceptTrade", opt=requires("buyer"),
          status_code=200)  # fmt: skip
    async def accept(
        self,
        trade_id: FromPath[uuid.UUID],
        settlement: Settlement,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> TradeView:
        """The buyer accepts delivery: price to the seller, fee to the exchange."""
        return await settlement.accept(actor, principal, trade_id)

    @post("/{trade_id:uuid}/cancel", operation_id="cancelTrade", opt=requires("buyer", "seller"),
          status_code=200)  # fmt: skip
    async def cancel(
        self,
        trade_id: FromPath[uuid.UUID],
        data: JSONBody[ReasonIn],
        settlement: Settlement,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> TradeView:
        """Ask to cancel; once both parties have, escrow goes back to the buyer."""
        return await settlement.cancel(actor, principal, trade_id, data.reason)

    @get(
        "/{trade_id:uuid}/receipt",
        operation_id="getTradeReceipt",
        opt=requires(),
        responses={
            200: ResponseSpec(
                ledger.Receipt,
                generate_examples=False,
                description="The receipt, as canonical JSON (RFC 8785): keep its bytes as they"
                " are. ``tree_head`` is a compact JWS (EdDSA) by a key of"
                " /.well-known/jwks.json; each entry's ``inclusion_proof`` leads to its root",
            )
        },
    )
    async def receipt(
        self, trade_id: FromPath[uuid.UUID], settlement: Settlement, principal: PrincipalDep
    ) -> Response[bytes]:
        """The trade's ledger entries with RFC 6962 inclusion proofs against a signed tree
        head, as canonical JSON: save it as it is and check it with `dataex ledger
        verify-receipt FILE --jwks JWKS` (only the exchange's JWKS needed)."""
        body = await settlement.receipt(principal, trade_id)
        return Response(content=body, media_type="application/json")


class AccountController(Controller):
    path = "/v1/accounts"
    tags = ["accounts"]

    @get("/me", operation_id="getMyAccounts", opt=requires())
    async def mine(self, settlement: Settlement, principal: PrincipalDep) -> Accounts:
        """The caller's organisation's available and escrow balances, in fen."""
        return await settlement.accounts(principal.org_id)

    @get("/{org_id:uuid}", operation_id="getAccounts", opt=requires("admin"))
    async def of_org(self, org_id: FromPath[uuid.UUID], settlement: Settlement) -> Accounts:
        return await settlement.accounts(org_id)

    @post(
        "/{org_id:uuid}/deposits",
        operation_id="deposit",
        opt=requires("admin"),
        responses=_replayed("deposit"),
    )
    async def deposit(
        self,
        org_id: FromPath[uuid.UUID],
        data: JSONBody[ExternalMovementIn],
        settlement: Settlement,
        actor: ActorDep,
    ) -> Response[MovementView]:
        """Money arrived from the organisation's bank (201); the same ``external_ref`` again
        returns the first deposit (200); the reference with another amount is 409."""
        return await _external(settlement, actor, "deposit", org_id, data)

    @post(
        "/{org_id:uuid}/withdrawals",
        operation_id="withdraw",
        opt=requires("admin"),
        responses=_replayed("withdrawal"),
    )
    async def withdraw(
        self,
        org_id: FromPath[uuid.UUID],
        data: JSONBody[ExternalMovementIn],
        settlement: Settlement,
        actor: ActorDep,
    ) -> Response[MovementView]:
        """Money paid out to the organisation's bank from its available balance (422 when it
        does not cover it); idempotent by ``external_ref`` like deposits."""
        return await _external(settlement, actor, "withdrawal", org_id, data)


class ExchangeAccountController(Controller):
    path = "/v1/exchange/accounts"
    tags = ["accounts"]

    @get("/", operation_id="getExchangeAccounts", opt=requires("reviewer", "admin"))
    async def own(self, settlement: Settlement) -> ExchangeAccounts:
        """The exchange's own accounts (staff): fee revenue and clearing, each with its balance
        in fen, and the totals of the books they balance: every organisation's available and
        escrow balances summed, the money held (minus the clearing balance) and whether the
        books balance."""
        return await settlement.exchange_accounts()


async def _external(
    settlement: SettlementService,
    actor: Actor,
    kind: Literal["deposit", "withdrawal"],
    org_id: uuid.UUID,
    data: ExternalMovementIn,
) -> Response[MovementView]:
    view, created = await settlement.move_external(
        actor, kind, org_id, data.amount_fen, data.external_ref
    )
    return Response(content=view, status_code=201 if created else 200)


class LedgerController(Controller):
    path = "/v1/ledger"
    tags = ["ledger"]

    @get("/tree-heads/latest", operation_id="getLatestTreeHead", opt=PUBLIC)
    async def latest(self, platform: PlatformDep) -> ledger.TreeHead:
        """The newest signed tree head (size, root, time; JWS by the exchange's key)."""
        async with platform.pool.acquire() as conn:
            head = await ledger.latest_tree_head(conn)
        if head is None:
            raise NotFound("no tree head has been signed yet")
        return head

    @get("/tree-heads", operation_id="listTreeHeads", opt=PUBLIC)
    async def heads(
        self,
        platform: PlatformDep,
        after_size: Annotated[int, QueryParameter(ge=0, le=BIGINT_MAX)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = DEFAULT_PAGE,
    ) -> TreeHeadPage:
        """Every signed tree head, oldest first, after ``after_size``."""
        async with platform.pool.acquire() as conn:
            items = await ledger.tree_heads(conn, after_size, check_limit(limit))
        return TreeHeadPage(
            items=items, next_after=items[-1].tree_size if len(items) == limit else None
        )

    @get("/consistency", operation_id="getConsistencyProof", opt=PUBLIC)
    async def consistency(
        self,
        platform: PlatformDep,
        first: Annotated[int, QueryParameter(ge=1, le=BIGINT_MAX)],
        second: Annotated[int, QueryParameter(ge=1, le=BIGINT_MAX)],
    ) -> ConsistencyProof:
        """RFC 6962 consistency proof between two signed tree heads (by their sizes)."""
        if first > second:
            raise InvalidInput(
                "first must not be larger than second",
                errors=[FieldError(path="first", message="must be <= second", source="query")],
            )
        async with platform.pool.acquire() as conn:
            for size in (first, second):
                if await ledger.tree_head(conn, size) is None:
                    raise NotFound(f"no signed tree head of size {size}")
            tree = await ledger.tree_for(platform.settings.database_url).sync(conn)
        proof = tree.consistency_proof(first, second)
        return ConsistencyProof(first=first, second=second, proof=[p.hex() for p in proof])

    @get("/entries", operation_id="listLedgerEntries", opt=requires("reviewer", "admin"))
    async def entries(
        self,
        platform: PlatformDep,
        after: Annotated[int, QueryParameter(ge=-1, le=BIGINT_MAX)] = -1,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = DEFAULT_PAGE,
    ) -> EntryPage:
        """Entries with seq greater than ``after``, in order (staff: entries name the parties
        and amounts of every trade)."""
        async with platform.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT seq, entry, leaf_hash FROM ledger_entries WHERE seq > $1"
                " ORDER BY seq LIMIT $2",
                after, check_limit(limit),
            )  # fmt: skip
        items = [
            EntryOut(
                seq=row["seq"],
                entry=msgspec.json.decode(bytes(row["entry"]), type=ledger.LedgerEntry),
                leaf_hash=bytes(row["leaf_hash"]).hex(),
            )
            for row in rows
        ]
        return EntryPage(items=items, next_after=items[-1].seq if len(items) == limit else None)


class SettlementFailureController(Controller):
    path = "/v1/settlement/failures"
    tags = ["settlement"]

    @get("/", operation_id="listSettlementFailures", opt=requires("reviewer", "admin"))
    async def failures(
        self,
        platform: PlatformDep,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = DEFAULT_PAGE,
    ) -> list[FailureOut]:
        """Executed-trade events the worker gave up on, newest first, with why."""
        rows = await figures.dead_letters(platform.pool, limit=check_limit(limit))
        return [
            FailureOut(
                id=r.id, subject=r.subject, event_id=r.event_id, trade_id=r.trade_id,
                deliveries=r.deliveries, error=r.error, failed_at=r.failed_at,
            )
            for r in rows
        ]  # fmt: skip
