"""Everything one step of an order appends, written in a single statement.

Placing an auto-accepted order writes an order, a policy decision, a contract, three
signatures, five audit rows, an outbox event and the idempotency record. One INSERT each made
the order path a chain of ~35 round trips; here a step collects its rows in Python and
`Writes.flush` sends them as one statement of data-modifying CTEs (foreign keys between them
are checked at the end of the statement, when every CTE has run). The statement is atomic on
its own and runs inside the caller's transaction with whatever the step read under lock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from exchange.platform.audit import Actor
from exchange.platform.canonical import sha256_digest
from exchange.platform.db import Connection
from exchange.platform.outbox import envelope

_SIGNATURE_CASTS = ("::uuid[]", "::text[]", "::text[]", "::text[]", "::text[]", "::timestamptz[]")
_AUDIT_CASTS = (
    *("::timestamptz[]", "::text[]", "::uuid[]", "::uuid[]", "::text[]", "::text[]"),
    *("::text[]", "::text[]", "::text[]", "::jsonb[]"),
)
_EVENT_CASTS = ("::uuid[]", "::text[]", "::bytea[]", "::text[]", "::timestamptz[]")
_DECISION_CASTS = (
    *("::text[]", "::text[]", "::text[]", "::text[]", "::text[]", "::jsonb[]", "::jsonb[]"),
    *("::timestamptz[]", "::bool[]"),
)
_ORDER_CASTS = (
    *("::uuid[]", "::uuid[]", "::uuid[]", "::uuid[]", "::int[]", "::text[]", "::jsonb[]"),
    *("::text[]", "::bool[]", "::bool[]", "::bigint[]", "::bigint[]", "::bigint[]", "::jsonb[]"),
    *("::timestamptz[]", "::timestamptz[]", "::timestamptz[]"),
)
_CONTRACT_CASTS = (
    *("::uuid[]", "::uuid[]", "::text[]", "::jsonb[]", "::text[]", "::text[]", "::text[]"),
    *("::timestamptz[]", "::timestamptz[]", "::timestamptz[]"),
)
_IDEMPOTENCY_CASTS = (
    *("::uuid[]", "::text[]", "::text[]", "::text[]", "::int[]", "::bytea[]", "::timestamptz[]"),
)


@dataclass(slots=True)
class Writes:
    """Rows to append; `flush` writes them (and clears them) in one round trip. Several
    orders' rows can be gathered into one (`extend`) and written by one statement."""

    decisions: list[tuple[Any, ...]] = field(default_factory=list)
    orders: list[tuple[Any, ...]] = field(default_factory=list)
    contracts: list[tuple[Any, ...]] = field(default_factory=list)
    idempotency: list[tuple[Any, ...]] = field(default_factory=list)
    signatures: list[tuple[Any, ...]] = field(default_factory=list)
    audit: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)

    def record(
        self,
        actor: Actor,
        *,
        at: datetime,
        action: str,
        subject_type: str,
        subject_id: object,
        after: Any = None,
        after_digest: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """An audit row, as `exchange.platform.audit.record` writes it."""
        self.audit.append((
            at, actor.label, actor.org_id, actor.token_id, action, subject_type, str(subject_id),
            actor.request_id, after_digest if after is None else sha256_digest(after),
            detail or {},
        ))  # fmt: skip

    def sign(
        self, contract_id: uuid.UUID, party: str, kind: str, kid: str, jws: str, at: datetime
    ) -> None:
        self.signatures.append((contract_id, party, kind, kid, jws, at))

    def event(
        self,
        *,
        subject: str,
        event_type: str,
        source: str,
        data: Any,
        at: datetime,
        event_subject: str | None,
        request_id: str | None,
    ) -> str:
        """An outbox row, as `exchange.platform.outbox.enqueue` writes it."""
        event_id = uuid.uuid4()
        payload = envelope(
            event_id, source=source, event_type=event_type, event_subject=event_subject,
            data=data, at=at, request_id=request_id,
        )  # fmt: skip
        self.events.append((event_id, subject, payload, request_id, at))
        return str(event_id)

    def extend(self, other: Writes) -> None:
        """Add another step's rows (its parents and children keep their order)."""
        self.decisions += other.decisions
        self.orders += other.orders
        self.contracts += other.contracts
        self.idempotency += other.idempotency
        self.signatures += other.signatures
        self.audit += other.audit
        self.events += other.events

    async def flush(self, conn: Connection) -> None:
        sql, args = self._statement()
        if sql:
            await conn.execute(sql, *args)
        self.decisions, self.orders, self.contracts, self.idempotency = [], [], [], []
        self.signatures, self.audit, self.events = [], [], []

    def _statement(self) -> tuple[str, list[Any]]:
        args: list[Any] = []
        parts: list[str] = []

        def params(values: tuple[Any, ...] | list[Any], casts: tuple[str, ...] = ()) -> str:
            start = len(args)
            args.extend(values)
            return ", ".join(
                f"${start + i + 1}{casts[i] if i < len(casts) else ''}" for i in range(len(values))
            )

        def columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
            return [list(column) for column in zip(*rows, strict=True)]

        # Parents first: PostgreSQL runs every CTE, and checks the foreign keys between them
        # when the whole statement ends. Every table's rows come as arrays, one per column.
        if self.decisions:
            parts.append(
                "decided_in AS (SELECT * FROM unnest("
                + params(columns(self.decisions), _DECISION_CASTS)
                + ") AS d(subject_type, subject_id, list_version, list_digest, outcome, document,"
                " decision, decided_at, open))"
            )
            parts.append(
                "decided AS (INSERT INTO policy_decisions (subject_type, subject_id, list_version,"
                " list_digest, outcome, document, decision, decided_at)"
                " SELECT subject_type, subject_id, list_version, list_digest, outcome, document,"
                " decision, decided_at FROM decided_in RETURNING id, subject_type, subject_id)"
            )
            parts.append(
                "subject AS (INSERT INTO policy_subjects (subject_type, subject_id, open,"
                " latest_decision) SELECT d.subject_type, d.subject_id, i.open, d.id"
                " FROM decided d JOIN decided_in i USING (subject_type, subject_id)"
                " ON CONFLICT (subject_type, subject_id) DO UPDATE"
                " SET latest_decision = EXCLUDED.latest_decision, open = EXCLUDED.open)"
            )
        if self.orders:
            parts.append(
                "new_order AS (INSERT INTO orders (id, buyer_org_id, seller_org_id, product_id,"
                " revision, plan_id, terms, state, cross_border, sensitive_pi, pi_subject_count,"
                " price_fen, fee_fen, decision, created_at, updated_at, executed_at)"
                " SELECT * FROM unnest(" + params(columns(self.orders), _ORDER_CASTS) + "))"
            )
        if self.contracts:
            parts.append(
                "new_contract AS (INSERT INTO trade_contracts (id, order_id, template, document,"
                " digest, text_zh, state, created_at, expires_at, executed_at)"
                " SELECT * FROM unnest(" + params(columns(self.contracts), _CONTRACT_CASTS) + "))"
            )
        if self.signatures:
            parts.append(
                "signed AS (INSERT INTO contract_signatures (contract_id, party, kind, kid, jws,"
                " signed_at) SELECT * FROM unnest("
                + params(columns(self.signatures), _SIGNATURE_CASTS)
                + "))"
            )
        if self.audit:
            parts.append(
                "audited AS (INSERT INTO audit_log (at, actor, actor_org_id, actor_token_id,"
                " action, subject_type, subject_id, request_id, after_digest, detail)"
                " SELECT * FROM unnest(" + params(columns(self.audit), _AUDIT_CASTS) + "))"
            )
        if self.events:
            parts.append(
                "queued AS (INSERT INTO outbox (id, subject, payload, request_id, created_at)"
                " SELECT * FROM unnest(" + params(columns(self.events), _EVENT_CASTS) + "))"
            )
        if self.idempotency:
            parts.append(
                "replay AS (INSERT INTO idempotency_keys (org_id, key, route, request_hash,"
                " status, response, created_at) SELECT * FROM unnest("
                + params(columns(self.idempotency), _IDEMPOTENCY_CASTS)
                + "))"
            )
        if not parts:
            return "", []
        return "WITH " + ",\n".join(parts) + "\nSELECT 1", args
