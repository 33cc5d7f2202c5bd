"""Rules for organisations and tokens. Every change and its audit row commit together."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import asyncpg
import msgspec

from exchange.identity import repository as repo
from exchange.identity.schemas import (
    Contact,
    ExporterStatus,
    Organisation,
    OrganisationCreate,
    OrganisationUpdate,
    Token,
    TokenCreate,
    TokenIssued,
)
from exchange.identity.uscc import UsccError, normalise_uscc
from exchange.platform.audit import Actor, record
from exchange.platform.auth import MARKET_ROLES, STAFF_ROLES, Principal, new_token
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import Conflict, FieldError, Forbidden, InvalidInput, NotFound
from exchange.platform.events import OrganisationEventData
from exchange.platform.outbox import enqueue
from exchange.platform.settings import Settings

BOOTSTRAP_TOKEN_DAYS = 30
OPERATOR_REGION = "000000"  # the exchange itself: national, no administrative division


def _check_roles(roles: list[str]) -> list[str]:
    unique = sorted(set(roles))
    if set(unique) & STAFF_ROLES and set(unique) & MARKET_ROLES:
        raise InvalidInput(
            "roles: an organisation is either exchange staff (reviewer, admin) or a market"
            " participant (seller, buyer), never both",
            errors=[
                FieldError(path="roles", message="staff and market roles mixed", source="body")
            ],
        )
    return unique


def _uscc(raw: str) -> str:
    try:
        return normalise_uscc(raw)
    except UsccError as error:
        raise InvalidInput(
            f"uscc: {error.message}",
            errors=[FieldError(path="uscc", message=error.message, source="body")],
            extensions={"rule": error.rule},
        ) from error


async def record_exporter_status(
    conn: Connection,
    actor: Actor,
    org_id: uuid.UUID,
    status: ExporterStatus,
    at: datetime,
    detail: dict[str, object],
) -> Organisation:
    """Record what staff decided about an organisation as a data exporter, in the caller's
    transaction (the review room's, when the second reviewer approves the proposal), audited
    with the state before and after."""
    before = await repo.get_organisation(conn, org_id, for_update=True)
    if before is None:
        raise NotFound(f"no organisation {org_id}")
    after = await repo.set_exporter_status(conn, org_id, status, at)
    await record(
        conn, actor, at=at, action="organisation.exporter_status_recorded",
        subject_type="organisation", subject_id=org_id, before=before.exporter,
        after=after.exporter, detail={**detail, "exporter": msgspec.to_builtins(status)},
    )  # fmt: skip
    return after


async def organisation_names(conn: Executor, org_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The names of these organisations, by id (unknown ids are left out): for pages that
    show who bought or sold, staff's console among them."""
    ids = list(set(org_ids))
    if not ids:
        return {}
    rows = await conn.fetch("SELECT id, name FROM organisations WHERE id = ANY($1::uuid[])", ids)
    return {row["id"]: row["name"] for row in rows}


class IdentityService:
    def __init__(self, pool: asyncpg.Pool, clock: Clock) -> None:
        self.pool = pool
        self.clock = clock

    async def register(self, actor: Actor, data: OrganisationCreate) -> Organisation:
        uscc = _uscc(data.uscc)
        roles = _check_roles(list(data.roles))
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                organisation = await repo.insert_organisation(
                    conn,
                    org_id=uuid.uuid4(),
                    name=data.name,
                    uscc=uscc,
                    roles=roles,
                    region=data.region,
                    contact=data.contact,
                    is_operator=False,
                    now=now,
                )
            except asyncpg.UniqueViolationError as error:
                raise Conflict(
                    f"an organisation with USCC {uscc} is already registered",
                    extensions={"uscc": uscc},
                ) from error
            await record(
                conn,
                actor,
                at=now,
                action="organisation.registered",
                subject_type="organisation",
                subject_id=organisation.id,
                after=organisation,
                detail={"uscc": uscc, "roles": roles},
            )
        return organisation

    async def update(
        self, actor: Actor, org_id: uuid.UUID, patch: OrganisationUpdate
    ) -> Organisation:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            before = await repo.get_organisation(conn, org_id, for_update=True)
            if before is None:
                raise NotFound(f"no organisation {org_id}")
            changes = {
                name: value
                for name in ("name", "roles", "region", "contact")
                if (value := getattr(patch, name)) is not msgspec.UNSET
                and value != getattr(before, name)
            }
            if "roles" in changes:
                changes["roles"] = _check_roles(list(changes["roles"]))
                if before.is_operator and "admin" not in changes["roles"]:
                    raise InvalidInput(
                        "roles: the exchange operator must keep the admin role",
                        errors=[FieldError(path="roles", message="admin required", source="body")],
                    )
                if changes["roles"] == before.roles:
                    del changes["roles"]
            if not changes:
                return before
            after = await repo.update_organisation(
                conn, msgspec.structs.replace(before, **changes, updated_at=now)
            )
            await record(
                conn,
                actor,
                at=now,
                action="organisation.updated",
                subject_type="organisation",
                subject_id=org_id,
                before=before,
                after=after,
                detail={"changed": sorted(changes)},
            )
        return after

    async def set_suspension(
        self, actor: Actor, org_id: uuid.UUID, reason: str | None, settings: Settings
    ) -> Organisation:
        """Suspend an organisation (``reason``) or reinstate it (None). The event tells the
        rooms that act on it: delivery suspends the organisation's grants."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            before = await repo.get_organisation(conn, org_id, for_update=True)
            if before is None:
                raise NotFound(f"no organisation {org_id}")
            if before.is_operator:
                raise Conflict("the exchange operator cannot be suspended")
            if (before.suspended_at is None) == (reason is None):
                state = "suspended" if before.suspended_at else "not suspended"
                raise Conflict(f"organisation {org_id} is already {state}",
                               extensions={"suspended_at": before.suspended_at})  # fmt: skip
            after = await repo.set_suspension(conn, org_id, reason, now)
            event = "suspended" if reason is not None else "reinstated"
            await enqueue(
                conn, subject=settings.subject("organisation", event),
                event_type=f"dx.organisation.{event}",
                source=f"urn:dataex:exchange:{settings.exchange_code}", event_subject=str(org_id),
                data=OrganisationEventData(org_id=str(org_id), uscc=after.uscc, reason=reason),
                at=now, request_id=actor.request_id,
            )  # fmt: skip
            await record(conn, actor, at=now, action=f"organisation.{event}",
                         subject_type="organisation", subject_id=org_id,
                         detail={"reason": reason})  # fmt: skip
        return after

    async def get_visible(self, principal: Principal, org_id: uuid.UUID) -> Organisation:
        """An organisation its own members and admins may read; to anyone else it does not exist."""
        if org_id != principal.org_id and not principal.has("admin"):
            raise NotFound(f"no organisation {org_id}")
        organisation = await repo.get_organisation(self.pool, org_id)
        if organisation is None:
            raise NotFound(f"no organisation {org_id}")
        return organisation

    async def issue_token(
        self,
        actor: Actor,
        org_id: uuid.UUID,
        data: TokenCreate,
        *,
        ceiling: frozenset[str] | None,
        created_by: uuid.UUID | None,
    ) -> TokenIssued:
        """Issue a token carrying a subset of the organisation's roles (and of ``ceiling``)."""
        roles: list[str] = sorted(set(data.roles))
        if ceiling is not None and not set(roles) <= ceiling:
            raise Forbidden(
                "a token cannot grant roles the calling token lacks:"
                f" {', '.join(sorted(set(roles) - ceiling))}"
            )
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._issue(conn, actor, org_id, data, roles=roles, created_by=created_by)

    async def _issue(
        self,
        conn: Connection,
        actor: Actor,
        org_id: uuid.UUID,
        data: TokenCreate,
        *,
        roles: list[str],
        created_by: uuid.UUID | None,
    ) -> TokenIssued:
        now = self.clock.now()
        organisation = await repo.get_organisation(conn, org_id, for_update=True)
        if organisation is None:
            raise NotFound(f"no organisation {org_id}")
        missing = [role for role in roles if role not in organisation.roles]
        if missing:
            raise InvalidInput(
                f"roles: the organisation does not hold {', '.join(missing)}",
                errors=[
                    FieldError(
                        path=f"roles[{[str(r) for r in data.roles].index(role)}]",
                        message=f"organisation lacks role {role}",
                        source="body",
                    )
                    for role in missing
                ],
            )
        token_id, secret, token_hash = new_token()
        token = await repo.insert_token(
            conn,
            token_id=token_id,
            org_id=org_id,
            name=data.name,
            roles=roles,
            token_hash=token_hash,
            now=now,
            expires_at=now + timedelta(days=data.expires_in_days),
            created_by=created_by,
        )
        await record(
            conn,
            actor,
            at=now,
            action="token.issued",
            subject_type="token",
            subject_id=token.id,
            after=token,
            detail={"org_id": str(org_id), "roles": roles, "name": data.name},
        )
        return TokenIssued(token=secret, details=token)

    async def revoke_token(self, actor: Actor, principal: Principal, token_id: uuid.UUID) -> Token:
        """Revoke a token of the caller's organisation (admins: any). Revoking twice is a no-op."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            before = await repo.get_token(conn, token_id, now, for_update=True)
            if before is None or (before.org_id != principal.org_id and not principal.has("admin")):
                raise NotFound(f"no token {token_id}")
            if before.revoked_at is not None:
                return before
            after = await repo.revoke_token(conn, token_id, now)
            await record(
                conn,
                actor,
                at=now,
                action="token.revoked",
                subject_type="token",
                subject_id=token_id,
                before=before,
                after=after,
                detail={"org_id": str(before.org_id)},
            )
        return after

    async def get_token_visible(self, principal: Principal, token_id: uuid.UUID) -> Token:
        token = await repo.get_token(self.pool, token_id, self.clock.now())
        if token is None or (token.org_id != principal.org_id and not principal.has("admin")):
            raise NotFound(f"no token {token_id}")
        return token

    async def operator_exists(self) -> bool:
        return await repo.get_operator(self.pool) is not None

    async def bootstrap(self, actor: Actor, exchange_name: str) -> tuple[TokenIssued, bool]:
        """Ensure the operator organisation exists and issue it a new admin token.

        Returns the token and whether the operator organisation was created now.
        """
        now = self.clock.now()
        created = False
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialise concurrent bootstraps (two processes starting at once).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dataex.bootstrap'))")
            operator = await repo.get_operator(conn)
            if operator is None:
                operator = await repo.insert_organisation(
                    conn,
                    org_id=uuid.uuid4(),
                    name=exchange_name,
                    uscc=None,
                    roles=["admin", "reviewer"],
                    region=OPERATOR_REGION,
                    contact=Contact(
                        name="operator", email="operator@localhost.invalid", phone="+0000000"
                    ),
                    is_operator=True,
                    now=now,
                )
                created = True
                await record(
                    conn,
                    actor,
                    at=now,
                    action="organisation.registered",
                    subject_type="organisation",
                    subject_id=operator.id,
                    after=operator,
                    detail={"operator": True},
                )
            issued = await self._issue(
                conn,
                actor,
                operator.id,
                TokenCreate(
                    name="bootstrap admin",
                    roles=["admin", "reviewer"],
                    expires_in_days=BOOTSTRAP_TOKEN_DAYS,
                ),
                roles=["admin", "reviewer"],
                created_by=None,
            )
        return issued, created
