"""HTTP routes for organisations and tokens."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from litestar import Controller, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from exchange.identity import repository as repo
from exchange.identity.schemas import (
    Me,
    Organisation,
    OrganisationCreate,
    OrganisationPage,
    OrganisationUpdate,
    SuspensionIn,
    Token,
    TokenCreate,
    TokenIssued,
    TokenPage,
)
from exchange.identity.service import IdentityService
from exchange.platform.audit.repository import Actor
from exchange.platform.auth import Principal, requires
from exchange.platform.context import Platform
from exchange.platform.paging import DEFAULT_PAGE, check_limit, decode_cursor, encode_cursor

Limit = Annotated[int, QueryParameter(ge=1, le=200, description="page size")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page")]
Identity = NamedDependency[IdentityService]
ActorDep = NamedDependency[Actor]
PrincipalDep = NamedDependency[Principal]
PlatformDep = NamedDependency[Platform]


def provide_identity(platform: PlatformDep) -> IdentityService:
    return IdentityService(platform.pool, platform.clock)


class OrganisationController(Controller):
    path = "/v1/organisations"
    tags = ["organisations"]
    dependencies = {"identity": Provide(provide_identity, sync_to_thread=False)}

    @post("/", operation_id="registerOrganisation", opt=requires("admin"))
    async def register(
        self, data: JSONBody[OrganisationCreate], identity: Identity, actor: ActorDep
    ) -> Organisation:
        """Register a seller, buyer or staff organisation. Duplicate USCC is 409."""
        return await identity.register(actor, data)

    @get("/", operation_id="listOrganisations", opt=requires("admin"))
    async def list_organisations(
        self,
        platform: PlatformDep,
        limit: Limit = DEFAULT_PAGE,
        cursor: Cursor = None,
        role: Annotated[
            str | None, QueryParameter(description="only organisations holding it")
        ] = None,
    ) -> OrganisationPage:
        after = decode_cursor(cursor, (datetime, uuid.UUID)) if cursor else None
        items = await repo.list_organisations(
            platform.pool,
            limit=check_limit(limit),
            after=after,
            role=role,
        )
        next_cursor = (
            encode_cursor(items[-1].created_at, items[-1].id) if len(items) == limit else None
        )
        return OrganisationPage(items=items, next_cursor=next_cursor)

    @get("/{org_id:uuid}", operation_id="getOrganisation", opt=requires())
    async def get_organisation(
        self, org_id: FromPath[uuid.UUID], identity: Identity, principal: PrincipalDep
    ) -> Organisation:
        """Members read their own organisation; admins read any."""
        return await identity.get_visible(principal, org_id)

    @patch("/{org_id:uuid}", operation_id="updateOrganisation", opt=requires("admin"))
    async def update_organisation(
        self,
        org_id: FromPath[uuid.UUID],
        data: JSONBody[OrganisationUpdate],
        identity: Identity,
        actor: ActorDep,
    ) -> Organisation:
        return await identity.update(actor, org_id, data)

    @post("/{org_id:uuid}/suspend", operation_id="suspendOrganisation", opt=requires("admin"),
          status_code=200)  # fmt: skip
    async def suspend_organisation(
        self, org_id: FromPath[uuid.UUID], data: JSONBody[SuspensionIn], identity: Identity,
        actor: ActorDep, platform: PlatformDep,
    ) -> Organisation:  # fmt: skip
        """Suspend an organisation: its delivery grants stop within a second."""
        return await identity.set_suspension(actor, org_id, data.reason, platform.settings)

    @post("/{org_id:uuid}/reinstate", operation_id="reinstateOrganisation",
          opt=requires("admin"), status_code=200)  # fmt: skip
    async def reinstate_organisation(
        self, org_id: FromPath[uuid.UUID], identity: Identity, actor: ActorDep,
        platform: PlatformDep,
    ) -> Organisation:  # fmt: skip
        """Lift an organisation's suspension."""
        return await identity.set_suspension(actor, org_id, None, platform.settings)

    @post("/{org_id:uuid}/tokens", operation_id="issueToken", opt=requires("admin"))
    async def issue_token(
        self,
        org_id: FromPath[uuid.UUID],
        data: JSONBody[TokenCreate],
        identity: Identity,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> TokenIssued:
        """Issue a token to any organisation. The secret is in this response only."""
        return await identity.issue_token(
            actor, org_id, data, ceiling=None, created_by=principal.token_id
        )

    @get("/{org_id:uuid}/tokens", operation_id="listOrganisationTokens", opt=requires("admin"))
    async def list_org_tokens(
        self,
        org_id: FromPath[uuid.UUID],
        platform: PlatformDep,
        limit: Limit = DEFAULT_PAGE,
        cursor: Cursor = None,
    ) -> TokenPage:
        return await _token_page(platform, org_id, limit, cursor)


async def _token_page(
    platform: Platform, org_id: uuid.UUID, limit: int, cursor: str | None
) -> TokenPage:
    after = decode_cursor(cursor, (datetime, uuid.UUID)) if cursor else None
    items = await repo.list_tokens(
        platform.pool,
        org_id,
        platform.clock.now(),
        limit=check_limit(limit),
        after=after,
    )
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(items) == limit else None
    return TokenPage(items=items, next_cursor=next_cursor)


class TokenController(Controller):
    """Self-service: an organisation manages its own tokens."""

    path = "/v1"
    tags = ["tokens"]
    dependencies = {"identity": Provide(provide_identity, sync_to_thread=False)}

    @get("/me", operation_id="whoAmI", opt=requires())
    async def me(self, principal: PrincipalDep, identity: Identity) -> Me:
        organisation = await identity.get_visible(principal, principal.org_id)
        return Me(
            organisation=organisation, token_id=principal.token_id, roles=sorted(principal.roles)
        )

    @get("/tokens", operation_id="listTokens", opt=requires())
    async def list_tokens(
        self,
        platform: PlatformDep,
        principal: PrincipalDep,
        limit: Limit = DEFAULT_PAGE,
        cursor: Cursor = None,
    ) -> TokenPage:
        return await _token_page(platform, principal.org_id, limit, cursor)

    @post("/tokens", operation_id="createToken", opt=requires())
    async def create_token(
        self,
        data: JSONBody[TokenCreate],
        identity: Identity,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> TokenIssued:
        """A new token for the caller's organisation, with at most the calling token's roles."""
        return await identity.issue_token(
            actor,
            principal.org_id,
            data,
            ceiling=principal.roles,
            created_by=principal.token_id,
        )

    @get("/tokens/{token_id:uuid}", operation_id="getToken", opt=requires())
    async def get_token(
        self, token_id: FromPath[uuid.UUID], identity: Identity, principal: PrincipalDep
    ) -> Token:
        return await identity.get_token_visible(principal, token_id)

    @post(
        "/tokens/{token_id:uuid}/revoke",
        operation_id="revokeToken",
        opt=requires(),
        status_code=200,
    )
    async def revoke_token(
        self,
        token_id: FromPath[uuid.UUID],
        identity: Identity,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Token:
        """Revoke at once; revoking an already revoked token changes nothing."""
        return await identity.revoke_token(actor, principal, token_id)
