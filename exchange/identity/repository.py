"""SQL for organisations and tokens, in plain sight."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from exchange.identity.schemas import Contact, ExporterStatus, Organisation, Token, TokenStatus
from exchange.platform.db import Executor


def _organisation(row: asyncpg.Record) -> Organisation:
    return Organisation(
        id=row["id"],
        name=row["name"],
        uscc=row["uscc"],
        roles=list(row["roles"]),
        region=row["region"],
        contact=msgspec.convert(row["contact"], Contact),
        is_operator=row["is_operator"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        suspended_at=row["suspended_at"],
        suspended_reason=row["suspended_reason"],
        exporter=ExporterStatus(
            ciio=row["ciio"], exemption=row["export_exemption"], ftz_exempt=row["ftz_exempt"]
        ),
    )


def token_status(row: Any, now: datetime) -> TokenStatus:
    if row["revoked_at"] is not None:
        return "revoked"
    if row["expires_at"] <= now:
        return "expired"
    return "active"


def _token(row: asyncpg.Record, now: datetime) -> Token:
    return Token(
        id=row["id"],
        org_id=row["org_id"],
        name=row["name"],
        roles=list(row["roles"]),
        status=token_status(row, now),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


async def insert_organisation(
    conn: Executor,
    *,
    org_id: uuid.UUID,
    name: str,
    uscc: str | None,
    roles: list[str],
    region: str,
    contact: Contact,
    is_operator: bool,
    now: datetime,
) -> Organisation:
    row = await conn.fetchrow(
        """
        INSERT INTO organisations (id, name, uscc, roles, region, contact, is_operator,
                                   created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
        RETURNING *
        """,
        org_id,
        name,
        uscc,
        roles,
        region,
        msgspec.to_builtins(contact),
        is_operator,
        now,
    )
    assert row is not None
    return _organisation(row)


async def register_from_credential(
    conn: Executor,
    *,
    name: str,
    uscc: str,
    roles: list[str],
    region: str,
    contact: Contact,
    now: datetime,
) -> uuid.UUID:
    """The organisation a peer's member credential names: registered here on first sight
    (keyed by its USCC; a concurrent registration of the same USCC returns the first)."""
    org_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO organisations (id, name, uscc, roles, region, contact, created_at,"
        " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)"
        " ON CONFLICT (uscc) DO UPDATE SET updated_at = organisations.updated_at"
        " RETURNING id",
        uuid.uuid4(), name, uscc, roles, region, msgspec.to_builtins(contact), now,
    )  # fmt: skip
    return org_id


async def get_organisation(
    conn: Executor, org_id: uuid.UUID, *, for_update: bool = False
) -> Organisation | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT * FROM organisations WHERE id = $1{lock}", org_id)
    return None if row is None else _organisation(row)


async def get_operator(conn: Executor) -> Organisation | None:
    row = await conn.fetchrow("SELECT * FROM organisations WHERE is_operator")
    return None if row is None else _organisation(row)


async def update_organisation(conn: Executor, organisation: Organisation) -> Organisation:
    row = await conn.fetchrow(
        """
        UPDATE organisations SET name = $2, roles = $3, region = $4, contact = $5, updated_at = $6
        WHERE id = $1 RETURNING *
        """,
        organisation.id,
        organisation.name,
        organisation.roles,
        organisation.region,
        msgspec.to_builtins(organisation.contact),
        organisation.updated_at,
    )
    assert row is not None
    return _organisation(row)


async def set_suspension(
    conn: Executor, org_id: uuid.UUID, reason: str | None, at: datetime
) -> Organisation:
    """Suspend (a reason) or reinstate (None) an organisation."""
    row = await conn.fetchrow(
        "UPDATE organisations SET suspended_at = CASE WHEN $2::text IS NULL THEN NULL"
        " ELSE $3::timestamptz END,"
        " suspended_reason = $2, updated_at = $3 WHERE id = $1 RETURNING *",
        org_id, reason, at,
    )  # fmt: skip
    assert row is not None
    return _organisation(row)


async def set_exporter_status(
    conn: Executor, org_id: uuid.UUID, status: ExporterStatus, at: datetime
) -> Organisation:
    row = await conn.fetchrow(
        "UPDATE organisations SET ciio = $2, export_exemption = $3, ftz_exempt = $4,"
        " updated_at = $5 WHERE id = $1 RETURNING *",
        org_id, status.ciio, status.exemption, status.ftz_exempt, at,
    )  # fmt: skip
    assert row is not None
    return _organisation(row)


async def list_organisations(
    conn: Executor, *, limit: int, after: tuple[datetime, uuid.UUID] | None, role: str | None
) -> list[Organisation]:
    args: list[object] = []
    clauses: list[str] = []
    if after is not None:
        args.extend(after)
        clauses.append(f"(created_at, id) > (${len(args) - 1}, ${len(args)})")
    if role is not None:
        args.append(role)
        clauses.append(f"${len(args)} = ANY(roles)")
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT * FROM organisations {where} ORDER BY created_at, id LIMIT ${len(args)}", *args
    )
    return [_organisation(row) for row in rows]


async def insert_token(
    conn: Executor,
    *,
    token_id: uuid.UUID,
    org_id: uuid.UUID,
    name: str,
    roles: list[str],
    token_hash: bytes,
    now: datetime,
    expires_at: datetime,
    created_by: uuid.UUID | None,
) -> Token:
    row = await conn.fetchrow(
        """
        INSERT INTO api_tokens (id, org_id, name, roles, token_hash, created_at, expires_at,
                                created_by)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        RETURNING *
        """,
        token_id,
        org_id,
        name,
        roles,
        token_hash,
        now,
        expires_at,
        created_by,
    )
    assert row is not None
    return _token(row, now)


async def get_token(
    conn: Executor, token_id: uuid.UUID, now: datetime, *, for_update: bool = False
) -> Token | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT * FROM api_tokens WHERE id = $1{lock}", token_id)
    return None if row is None else _token(row, now)


async def revoke_token(conn: Executor, token_id: uuid.UUID, now: datetime) -> Token:
    row = await conn.fetchrow(
        "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 RETURNING *", token_id, now
    )
    assert row is not None
    return _token(row, now)


async def list_tokens(
    conn: Executor,
    org_id: uuid.UUID,
    now: datetime,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
) -> list[Token]:
    if after is None:
        rows = await conn.fetch(
            "SELECT * FROM api_tokens WHERE org_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
            org_id,
            limit,
        )
    else:
        rows = await conn.fetch(
            "SELECT * FROM api_tokens WHERE org_id = $1 AND (created_at, id) < ($2, $3)"
            " ORDER BY created_at DESC, id DESC LIMIT $4",
            org_id,
            after[0],
            after[1],
            limit,
        )
    return [_token(row, now) for row in rows]
