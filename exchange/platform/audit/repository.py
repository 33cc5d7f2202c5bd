"""Writing and reading the audit trail. Writes happen inside the caller's transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from exchange.platform.audit.schemas import AuditEntry
from exchange.platform.auth import Principal
from exchange.platform.canonical import sha256_digest
from exchange.platform.db import Connection, Executor
from exchange.platform.rows import Row


@dataclass(frozen=True, slots=True)
class Actor:
    """Who caused a change: a token of an organisation, or the operator at the command line."""

    label: str
    org_id: uuid.UUID | None = None
    token_id: uuid.UUID | None = None
    request_id: str | None = None
    # The W3C traceparent of the request's span: the events it causes carry it (outbox).
    traceparent: str | None = None

    @classmethod
    def of(
        cls, principal: Principal, request_id: str | None, traceparent: str | None = None
    ) -> Actor:
        return cls(
            label=f"token:{principal.token_id}",
            org_id=principal.org_id,
            token_id=principal.token_id,
            request_id=request_id,
            traceparent=traceparent,
        )

    @classmethod
    def cli(cls, command: str) -> Actor:
        return cls(label=f"cli:{command}")


class AuditRow(Row, frozen=True):
    """One audit entry, for a statement that writes many (as `record` writes one)."""

    __table__ = "audit_log"
    at: datetime
    actor: str
    actor_org_id: uuid.UUID | None
    actor_token_id: uuid.UUID | None
    action: str
    subject_type: str
    subject_id: str
    request_id: str | None
    after_digest: str | None
    detail: dict[str, Any]


async def record(
    conn: Connection,
    actor: Actor,
    *,
    at: datetime,
    action: str,
    subject_type: str,
    subject_id: object,
    before: Any = None,
    after: Any = None,
    detail: dict[str, Any] | None = None,
    after_digest: str | None = None,
) -> None:
    """Append one audit row. Call inside the transaction that makes the change.

    ``after_digest`` stands for ``after`` when the caller has the digest already."""
    await conn.execute(
        """
        INSERT INTO audit_log (at, actor, actor_org_id, actor_token_id, action, subject_type,
                               subject_id, request_id, before_digest, after_digest, detail)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        """,
        at,
        actor.label,
        actor.org_id,
        actor.token_id,
        action,
        subject_type,
        str(subject_id),
        actor.request_id,
        None if before is None else sha256_digest(before),
        after_digest if after is None else sha256_digest(after),
        detail or {},
    )


async def list_entries(
    conn: Executor,
    *,
    limit: int,
    before_id: int | None = None,
    action: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    actor_org_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AuditEntry]:
    """Newest first, keyset-paged by id. Every filter is optional and ANDed.

    The WHERE clause holds only the filters given, so each query can use its index.
    """
    filters: list[tuple[str, object]] = [
        ("id < ${}", before_id),
        ("action = ${}", action),
        ("subject_type = ${}", subject_type),
        ("subject_id = ${}", subject_id),
        ("actor_org_id = ${}", actor_org_id),
        ("at >= ${}", since),
        ("at < ${}", until),
    ]
    clauses: list[str] = []
    args: list[object] = []
    for clause, value in filters:
        if value is not None:
            args.append(value)
            clauses.append(clause.format(len(args)))
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT * FROM audit_log {where} ORDER BY id DESC LIMIT ${len(args)}", *args
    )
    return [AuditEntry(**dict(row)) for row in rows]
