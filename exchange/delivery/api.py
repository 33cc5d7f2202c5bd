"""HTTP routes of the delivery room: grants, delivery tokens, top-ups, usage, upstreams."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from exchange.delivery.schemas import (
    DeliveryToken,
    Grant,
    GrantPage,
    SuspendIn,
    TokenIn,
    TopUpIn,
    Upstream,
    UpstreamIn,
    UsageTotals,
)
from exchange.delivery.service import GrantService
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal, requires
from exchange.platform.events import GrantState
from exchange.platform.paging import DEFAULT_PAGE, check_limit, decode_cursor, encode_cursor

Grants = NamedDependency[GrantService]
ActorDep = NamedDependency[Actor]
PrincipalDep = NamedDependency[Principal]


class GrantController(Controller):
    path = "/v1/grants"
    tags = ["delivery"]

    @get("/", operation_id="listGrants", opt=requires())
    async def list_grants(
        self,
        grants: Grants,
        principal: PrincipalDep,
        grant_state: Annotated[GrantState | None, QueryParameter(name="state")] = None,
        product_code: Annotated[str | None, QueryParameter(max_length=40)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = DEFAULT_PAGE,
        cursor: Annotated[str | None, QueryParameter()] = None,
    ) -> GrantPage:
        """Grants of the caller's organisation (as buyer or seller), newest first; staff see
        every grant."""
        after = decode_cursor(cursor, (datetime, uuid.UUID)) if cursor else None
        items = await grants.list_for(principal, state=grant_state, product_code=product_code,
                                      after=after, limit=check_limit(limit))  # fmt: skip
        next_cursor = (
            encode_cursor(items[-1].created_at, items[-1].id) if len(items) == limit else None
        )
        return GrantPage(items=items, next_cursor=next_cursor)

    @get("/{grant_id:uuid}", operation_id="getGrant", opt=requires())
    async def get_grant(
        self, grant_id: FromPath[uuid.UUID], grants: Grants, principal: PrincipalDep
    ) -> Grant:
        """A grant with its quotas (its parties and staff; 404 to anyone else)."""
        return await grants.get(principal, grant_id)

    @get("/{grant_id:uuid}/usage", operation_id="getGrantUsage", opt=requires())
    async def usage(
        self, grant_id: FromPath[uuid.UUID], grants: Grants, principal: PrincipalDep
    ) -> UsageTotals:
        """What the grant has used, per dimension, and what its closed periods charged."""
        return await grants.usage(principal, grant_id)

    @post("/{grant_id:uuid}/tokens", operation_id="issueDeliveryToken", opt=requires("buyer"),
          status_code=201)  # fmt: skip
    async def issue_token(
        self,
        grant_id: FromPath[uuid.UUID],
        grants: Grants,
        actor: ActorDep,
        principal: PrincipalDep,
        data: JSONBody[TokenIn | None] = None,
    ) -> DeliveryToken:
        """A delivery token (compact JWS, at most 15 minutes) for the gateway or the file
        routes, issued after re-checking the grant, both parties and the negative list."""
        ttl = data.ttl_seconds if data is not None else TokenIn().ttl_seconds
        return await grants.issue_token(actor, principal, grant_id, ttl)

    @post("/{grant_id:uuid}/tokens/{jti:uuid}/revoke", operation_id="revokeDeliveryToken",
          opt=requires("buyer", "admin"), status_code=204)  # fmt: skip
    async def revoke_token(
        self,
        grant_id: FromPath[uuid.UUID],
        jti: FromPath[uuid.UUID],
        grants: Grants,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> None:
        """Withdraw a token (a leaked one, say): every gateway refuses it from then on."""
        await grants.revoke_token(actor, principal, grant_id, jti)

    @post("/{grant_id:uuid}/top-ups", operation_id="topUpGrant", opt=requires("buyer"),
          status_code=200)  # fmt: skip
    async def top_up(
        self,
        grant_id: FromPath[uuid.UUID],
        data: JSONBody[TopUpIn],
        grants: Grants,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Grant:
        """Reserve more money for a metered grant (idempotent by ``key``): the spend cap
        rises and a cap suspension lifts."""
        return await grants.top_up(actor, principal, grant_id, data.amount_fen, data.key)

    @post("/{grant_id:uuid}/suspend", operation_id="suspendGrant", opt=requires("admin"),
          status_code=200)  # fmt: skip
    async def suspend(
        self, grant_id: FromPath[uuid.UUID], data: JSONBody[SuspendIn], grants: Grants,
        actor: ActorDep,
    ) -> Grant:  # fmt: skip
        """Staff suspend a grant; gateways refuse it within a second."""
        return await grants.suspend(actor, grant_id, data.reason)

    @post("/{grant_id:uuid}/resume", operation_id="resumeGrant", opt=requires("admin"),
          status_code=200)  # fmt: skip
    async def resume(self, grant_id: FromPath[uuid.UUID], grants: Grants, actor: ActorDep) -> Grant:
        """Lift the staff's suspension (other causes, if any, still hold)."""
        return await grants.resume(actor, grant_id)

    @post("/{grant_id:uuid}/revoke", operation_id="revokeGrant", opt=requires("admin"),
          status_code=200)  # fmt: skip
    async def revoke(
        self, grant_id: FromPath[uuid.UUID], data: JSONBody[SuspendIn], grants: Grants,
        actor: ActorDep,
    ) -> Grant:  # fmt: skip
        """End a grant for good."""
        return await grants.revoke(actor, grant_id, data.reason)


class UpstreamController(Controller):
    path = "/v1/products/{product_id:uuid}/upstream"
    tags = ["delivery"]

    @put("/", operation_id="setUpstream", opt=requires("seller"), status_code=200)
    async def set_upstream(
        self,
        product_id: FromPath[uuid.UUID],
        data: JSONBody[UpstreamIn],
        grants: Grants,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Upstream:
        """Where the gateway forwards this product's calls (the seller's own API)."""
        return await grants.set_upstream(actor, principal, product_id, data.base_url)
