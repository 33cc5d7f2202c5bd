"""HTTP routes: orders, contracts and their signatures, organisations' keys, standing offers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
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
from contracts.orders.schemas import CancelRequest, Order, OrderCreate, OrderPage
from contracts.orders.service import OrderService
from exchange.platform.audit import Actor, record
from exchange.platform.auth import PUBLIC, Principal, provide_principal, requires
from exchange.platform.context import Platform
from exchange.platform.deps import provide_actor
from exchange.platform.errors import FieldError, InvalidInput, NotFound
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

    @post("/", operation_id="placeOrder", opt=requires("buyer"), status_code=201)
    async def place(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[OrderCreate],
        orders: Orders,
        idempotency_key: Annotated[
            str | None, HeaderParameter(name="Idempotency-Key", required=False)
        ] = None,
    ) -> Response[Any]:
        """Place an order. Requires ``Idempotency-Key``: the same key and body replay the first
        result; another body with the key is 422; while the first runs, 409. Keys are per
        organisation and kept 24 hours."""
        # The hot path: principal and actor are taken from the request rather than injected,
        # since Litestar resolves sibling dependencies in an anyio task group per request.
        principal, actor = provide_principal(request), provide_actor(request)
        key = idempotency.check_key(idempotency_key)
        keyed = idempotency.Keyed(key, idempotency.request_hash(data), "POST /v1/orders")
        result = await orders.place(actor, principal, data, keyed)
        if isinstance(result, idempotency.Replay):
            return Response(
                content=result.body, status_code=result.status, media_type="application/json",
                headers={"Idempotent-Replayed": "true"},
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
    ) -> dict[str, Any]:
        """The canonical document, its digest, the Chinese text and the signatures (parties
        only)."""
        return await orders.contract(principal, contract_id)

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
    ) -> dict[str, Any]:
        """A detached JWS over the contract digest (ASCII) with a registered key; when both
        parties have signed the exchange countersigns and the trade is executed."""
        if (data.jws is None) == (not data.custodial):
            raise InvalidInput(
                "give either jws or custodial: true",
                errors=[
                    FieldError(path="jws", message="exactly one of jws, custodial", source="body")
                ],
            )
        return await orders.sign(actor, principal, contract_id, data.jws, custodial=data.custodial)


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
    ) -> dict[str, Any]:
        """The terms a seller signs to accept every matching order automatically, and their
        canonical JSON (the detached JWS payload)."""
        return await orders.offer(principal, product_id, plan_id)

    @post("/standing-offers", operation_id="makeStandingOffer", opt=requires("seller"))
    async def standing_offer(
        self,
        product_id: FromPath[uuid.UUID],
        data: JSONBody[StandingOfferIn],
        orders: Orders,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> dict[str, Any]:
        return await orders.make_standing_offer(
            actor, principal, product_id, data.plan_id, data.jws
        )


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
