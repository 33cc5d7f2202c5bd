"""HTTP routes: orders, contracts and their signatures, organisations' keys, standing offers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, cast

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from contracts.agreements.signatures import (
    OrgKey,
    PublicKeyIn,
    create_custodial_key,
    list_keys,
    register_key,
)
from contracts.orders import fees, idempotency
from contracts.orders.fees import FeeRule
from contracts.orders.group import OrderGroup
from contracts.orders.schemas import (
    CancelRequest,
    Contract,
    ContractDocument,
    ContractSignature,
    OfferTerms,
    Order,
    OrderCreate,
    OrderPage,
    StandingOffer,
    StandingOfferTerms,
)
from contracts.orders.service import OrderService
from exchange.platform.audit import Actor, record
from exchange.platform.auth import PUBLIC, Principal, provide_principal, requires
from exchange.platform.context import Platform
from exchange.platform.deps import provide_actor
from exchange.platform.errors import FieldError, InvalidInput, NotFound
from exchange.platform.http import required_headers
from exchange.platform.paging import DEFAULT_PAGE, check_limit, decode_cursor, encode_cursor

Orders = NamedDependency[OrderService]
ActorDep = NamedDependency[Actor]
PrincipalDep = NamedDependency[Principal]
PlatformDep = NamedDependency[Platform]


def provide_orders(platform: PlatformDep) -> OrderService:
    # One group commit queue per API process: concurrent orders share a transaction.
    group = platform.shared.get("order_group")
    if group is None:
        group = platform.shared["order_group"] = OrderGroup()
    return OrderService(
        platform.pool, platform.clock, platform.settings, platform.keyring, group=group
    )


class SignatureIn(msgspec.Struct, forbid_unknown_fields=True):
    """Either ``jws`` (a detached compact JWS, header..signature) or ``custodial: true``."""

    jws: Annotated[str, msgspec.Meta(min_length=10, max_length=4000)] | None = None
    custodial: bool = False


class StandingOfferIn(msgspec.Struct, forbid_unknown_fields=True):
    plan_id: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    jws: Annotated[str, msgspec.Meta(min_length=10, max_length=4000)]


class OrderController(Controller):
    path = "/v1/orders"
    tags = ["orders"]
    dependencies = {"orders": Provide(provide_orders, sync_to_thread=False)}

    @post(
        "/",
        operation_id="placeOrder",
        opt=requires("buyer") | required_headers("Idempotency-Key"),
        status_code=201,
        response_headers=[
            ResponseHeader(
                name="Idempotent-Replayed",
                value="true",
                documentation_only=True,
                description="Sent (true) when the answer replays the first result of a request"
                " with this Idempotency-Key and body",
            )
        ],
    )
    async def place(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[OrderCreate],
        orders: Orders,
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key",
                # Documented as required; read as optional so that its absence is our own 400
                # (idempotency_key_missing) and a bad one our own 422, not Litestar's 400.
                required=False,
                schema_extra={"min_length": 1, "max_length": idempotency.MAX_KEY_LENGTH},
                description="A unique value per intended order (a UUID, say). Required: 400"
                " idempotency_key_missing without it",
            ),
        ] = None,
    ) -> Response[Order]:
        """Place an order. Requires ``Idempotency-Key``: the same key and body replay the first
        result (with ``Idempotent-Replayed: true``); another body with the key is 422; while the
        first runs, 409. Keys are per organisation and kept 24 hours. An order that executes at
        once (an auto-accepting plan and a custodial buyer) carries its ``trade_id``, which is
        its contract's id."""
        # The hot path: principal and actor are taken from the request rather than injected,
        # since Litestar resolves sibling dependencies in an anyio task group per request.
        principal, actor = provide_principal(request), provide_actor(request)
        key = idempotency.check_key(idempotency_key)
        keyed = idempotency.Keyed(key, idempotency.request_hash(data), "POST /v1/orders")
        result = await orders.place(actor, principal, data, keyed)
        if isinstance(result, idempotency.Replay):
            # The first answer's bytes, as stored: an Order.
            return Response(
                content=cast(Order, result.body), status_code=result.status,
                media_type="application/json", headers={"Idempotent-Replayed": "true"},
            )  # fmt: skip
        return Response(content=result, status_code=201)

    @get("/", operation_id="listOrders", opt=requires("buyer", "seller"))
    async def list_orders(
        self,
        orders: Orders,
        principal: PrincipalDep,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = DEFAULT_PAGE,
        cursor: Annotated[str | None, QueryParameter()] = None,
    ) -> OrderPage:
        """Orders the caller's organisation placed or received, newest first."""
        after = decode_cursor(cursor, (datetime, uuid.UUID)) if cursor else None
        items = await orders.list_for(principal, after=after, limit=check_limit(limit))
        next_cursor = (
            encode_cursor(items[-1].created_at, items[-1].id) if len(items) == limit else None
        )
        return OrderPage(items=items, next_cursor=next_cursor)

    @get("/{order_id:uuid}", operation_id="getOrder", opt=requires())
    async def get_order(
        self, order_id: FromPath[uuid.UUID], orders: Orders, principal: PrincipalDep
    ) -> Order:
        return await orders.get(principal, order_id)

    @post(
        "/{order_id:uuid}/cancel",
        operation_id="cancelOrder",
        opt=requires("buyer"),
        status_code=200,
    )
    async def cancel(
        self,
        order_id: FromPath[uuid.UUID],
        data: JSONBody[CancelRequest],
        orders: Orders,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Order:
        return await orders.cancel(actor, principal, order_id, data.reason)


class ContractController(Controller):
    path = "/v1/contracts"
    tags = ["contracts"]
    dependencies = {"orders": Provide(provide_orders, sync_to_thread=False)}

    @get("/{contract_id:uuid}", operation_id="getContract", opt=requires())
    async def get_contract(
        self, contract_id: FromPath[uuid.UUID], orders: Orders, principal: PrincipalDep
    ) -> Contract:
        """The canonical document, its digest, the Chinese text and the signatures (parties
        only). The contract's id is the trade's id (``trade_id``, once executed)."""
        return contract_view(await orders.contract(principal, contract_id))

    @post(
        "/{contract_id:uuid}/signatures",
        operation_id="signContract",
        opt=requires("buyer", "seller"),
        status_code=200,
    )
    async def sign(
        self,
        contract_id: FromPath[uuid.UUID],
        data: JSONBody[SignatureIn],
        orders: Orders,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Contract:
        """A detached JWS over the contract digest (ASCII) with a registered key; when both
        parties have signed the exchange countersigns and the trade is executed (its id, the
        ``trade_id``, is the contract's)."""
        if (data.jws is None) == (not data.custodial):
            raise InvalidInput(
                "give either jws or custodial: true",
                errors=[
                    FieldError(path="jws", message="exactly one of jws, custodial", source="body")
                ],
            )
        return contract_view(
            await orders.sign(actor, principal, contract_id, data.jws, custodial=data.custodial)
        )


def contract_view(raw: dict[str, Any]) -> Contract:
    """The service's contract as the API's `Contract`. The document is passed on exactly as
    stored (every key, as signed: its digest must still check), `ContractDocument` describing
    it; the rest is converted."""
    executed_at = raw["executed_at"]
    contract_id = uuid.UUID(raw["id"])
    return Contract(
        id=contract_id,
        trade_id=contract_id if executed_at is not None else None,
        order_id=uuid.UUID(raw["order_id"]),
        state=raw["state"],
        digest=raw["digest"],
        document=cast(ContractDocument, raw["document"]),
        text_zh=raw["text_zh"],
        standing_offer=cast(StandingOfferTerms | None, raw["standing_offer"]),
        signatures=msgspec.convert(raw["signatures"], list[ContractSignature]),
        executed_at=datetime.fromisoformat(executed_at) if executed_at else None,
    )


class KeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]

    @post("/", operation_id="registerKey", opt=requires("buyer", "seller"))
    async def register(
        self,
        data: JSONBody[PublicKeyIn],
        platform: PlatformDep,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> OrgKey:
        """Register an Ed25519 public key (JWK) the organisation signs contracts with."""
        now = platform.clock.now()
        async with platform.pool.acquire() as conn, conn.transaction():
            key = await register_key(conn, principal.org_id, data, now)
            await record(
                conn,
                actor,
                at=now,
                action="key.registered",
                subject_type="org_key",
                subject_id=key.kid,
                detail={"org_id": str(principal.org_id)},
            )
        return key

    @post("/custodial", operation_id="createCustodialKey", opt=requires("buyer", "seller"))
    async def custodial(
        self, platform: PlatformDep, actor: ActorDep, principal: PrincipalDep
    ) -> OrgKey:
        """Opt in to custodial signing: the exchange creates a key for the organisation, keeps
        it encrypted, and signs with it when asked (a custodial buyer signs by ordering)."""
        now = platform.clock.now()
        async with platform.pool.acquire() as conn, conn.transaction():
            key = await create_custodial_key(conn, principal.org_id, platform.keyring, now)
            await record(
                conn,
                actor,
                at=now,
                action="key.custodial",
                subject_type="org_key",
                subject_id=key.kid,
                detail={"org_id": str(principal.org_id)},
            )
        return key

    @get("/", operation_id="listKeys", opt=requires("buyer", "seller"))
    async def list_org_keys(self, platform: PlatformDep, principal: PrincipalDep) -> list[OrgKey]:
        return await list_keys(platform.pool, principal.org_id)


class OfferController(Controller):
    path = "/v1/products/{product_id:uuid}"
    tags = ["products"]
    dependencies = {"orders": Provide(provide_orders, sync_to_thread=False)}

    @get("/plans/{plan_id:str}/offer", operation_id="getOfferTerms", opt=requires("seller"))
    async def terms(
        self,
        product_id: FromPath[uuid.UUID],
        plan_id: FromPath[str],
        orders: Orders,
        principal: PrincipalDep,
    ) -> OfferTerms:
        """The terms a seller signs to accept every matching order automatically, and their
        canonical JSON (the detached JWS payload)."""
        return msgspec.convert(await orders.offer(principal, product_id, plan_id), OfferTerms)

    @post("/standing-offers", operation_id="makeStandingOffer", opt=requires("seller"))
    async def standing_offer(
        self,
        product_id: FromPath[uuid.UUID],
        data: JSONBody[StandingOfferIn],
        orders: Orders,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> StandingOffer:
        """Make the plan's terms (``GET …/plans/{plan_id}/offer``) a standing offer with the
        seller's detached JWS over their canonical JSON: matching orders are then signed on the
        seller's side by it."""
        offer = await orders.make_standing_offer(
            actor, principal, product_id, data.plan_id, data.jws
        )
        return msgspec.convert(offer, StandingOffer)


class FeeScheduleController(Controller):
    path = "/v1/fee-schedules"
    tags = ["fees"]

    @get("/", operation_id="listFeeSchedules", opt=PUBLIC)
    async def list_rules(self, platform: PlatformDep) -> list[FeeRule]:
        """The fee rules in effect (the default and each plan's own) and any scheduled later.
        Fee = price * bps / 10,000 rounded half up to the fen, at least min_fen; free trades pay
        none. The rule in effect when an order is placed is fixed in its contract."""
        async with platform.pool.acquire() as conn:
            return await fees.rules(conn, platform.clock.now())

    @post("/", operation_id="addFeeSchedule", opt=requires("admin"))
    async def add(
        self, data: JSONBody[fees.FeeScheduleIn], platform: PlatformDep, actor: ActorDep
    ) -> FeeRule:
        """Add a rule (never changes an earlier one); with product_id and plan_id it applies to
        that plan only, without both it is the default."""
        if (data.product_id is None) != (data.plan_id is None):
            raise InvalidInput(
                "give both product_id and plan_id for a plan's rule, or neither for the default",
                errors=[FieldError(path="plan_id" if data.plan_id is None else "product_id",
                                   message="needed together", source="body")],
            )  # fmt: skip
        now = platform.clock.now()
        async with platform.pool.acquire() as conn, conn.transaction():
            if data.product_id is not None and not await conn.fetchval(
                "SELECT 1 FROM products WHERE id = $1", data.product_id
            ):
                raise NotFound(f"no product {data.product_id}")
            rule = await fees.add_rule(conn, data, now, actor.label)
            await record(conn, actor, at=now, action="fees.rule_added",
                         subject_type="fee_schedule", subject_id=rule.scope,
                         detail=msgspec.to_builtins(rule))  # fmt: skip
        return rule
