"""Everything one step of an order appends, written in a single statement.

Placing an auto-accepted order writes an order, a policy decision, a contract, three
signatures, five audit rows, an outbox event and the idempotency record. One INSERT each made
the order path a chain of ~35 round trips; here a step collects its rows in Python and
`Writes.flush` sends them as one statement of data-modifying CTEs (foreign keys between them
are checked at the end of the statement, when every CTE has run). The statement is atomic on
its own and runs inside the caller's transaction with whatever the step read under lock.

Rows are named (`exchange.platform.rows.Row`): the orders room's own below, the audit trail's
and the outbox's from the platform, the policy decisions' (and the CTEs that write them) from
the policy room, which owns those tables.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from contracts.policy.store import DecisionRow, decision_ctes
from exchange.platform.audit import Actor
from exchange.platform.audit.repository import AuditRow
from exchange.platform.canonical import sha256_digest
from exchange.platform.db import Connection
from exchange.platform.outbox import OutboxRow, envelope
from exchange.platform.rows import Row, SqlType, arrays, insert_sql
from exchange.platform.tracing import current_traceparent


class OrderRow(Row, frozen=True):
    __table__ = "orders"
    id: uuid.UUID
    buyer_org_id: uuid.UUID
    seller_org_id: uuid.UUID
    product_id: uuid.UUID
    revision: Annotated[int, SqlType("integer")]
    plan_id: str
    terms: dict[str, Any]
    state: str
    cross_border: bool
    sensitive_pi: bool
    pi_subject_count: int
    counted_pi_subjects: int  # what it adds to the seller's cross-border totals once executed
    price_fen: int
    fee_fen: int
    decision: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    executed_at: datetime | None
    fee_bps: Annotated[int, SqlType("integer")] | None  # metered plans: each period's fee


class ContractRow(Row, frozen=True):
    __table__ = "trade_contracts"
    id: uuid.UUID
    order_id: uuid.UUID
    template: str
    document: dict[str, Any]
    digest: str
    text_zh: str
    state: str
    created_at: datetime
    expires_at: datetime
    executed_at: datetime | None


class SignatureRow(Row, frozen=True):
    __table__ = "contract_signatures"
    contract_id: uuid.UUID
    party: str
    kind: str
    kid: str
    jws: str
    signed_at: datetime


class IdempotencyRow(Row, frozen=True):
    __table__ = "idempotency_keys"
    org_id: uuid.UUID
    key: str
    route: str
    request_hash: str
    status: Annotated[int, SqlType("integer")]
    response: bytes
    created_at: datetime


@dataclass(slots=True)
class Writes:
    """Rows to append; `flush` writes them (and clears them) in one round trip. Several
    orders' rows can be gathered into one (`extend`) and written by one statement."""

    decisions: list[DecisionRow] = field(default_factory=list)
    orders: list[OrderRow] = field(default_factory=list)
    contracts: list[ContractRow] = field(default_factory=list)
    idempotency: list[IdempotencyRow] = field(default_factory=list)
    signatures: list[SignatureRow] = field(default_factory=list)
    audit: list[AuditRow] = field(default_factory=list)
    events: list[OutboxRow] = field(default_factory=list)

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
        self.audit.append(
            AuditRow(
                at=at, actor=actor.label, actor_org_id=actor.org_id,
                actor_token_id=actor.token_id, action=action, subject_type=subject_type,
                subject_id=str(subject_id), request_id=actor.request_id,
                after_digest=after_digest if after is None else sha256_digest(after),
                detail=detail or {},
            )
        )  # fmt: skip

    def sign(
        self, contract_id: uuid.UUID, party: str, kind: str, kid: str, jws: str, at: datetime
    ) -> None:
        self.signatures.append(SignatureRow(contract_id, party, kind, kid, jws, at))

    def event(
        self,
        *,
        subject: str,
        event_type: str,
        source: str,
        data: Any,
        at: datetime,
        event_subject: str | None,
        actor: Actor,
    ) -> str:
        """An outbox row, as `exchange.platform.outbox.enqueue` writes it, with the request id
        and trace of ``actor`` (a group's orders come from many requests, so never the
        current span's unless the actor has none)."""
        event_id = uuid.uuid4()
        trace = actor.traceparent or current_traceparent()
        payload = envelope(
            event_id, source=source, event_type=event_type, event_subject=event_subject,
            data=data, at=at, request_id=actor.request_id, traceparent=trace,
        )  # fmt: skip
        self.events.append(OutboxRow(event_id, subject, payload, actor.request_id, at, trace))
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

        def insert(name: str, kind: type[Row], rows: list[Any]) -> None:
            if rows:
                parts.append(f"{name} AS ({insert_sql(kind, len(args) + 1)})")
                args.extend(arrays(kind, rows))

        # Parents first: PostgreSQL runs every CTE, and checks the foreign keys between them
        # when the whole statement ends. Every table's rows come as arrays, one per column.
        if self.decisions:
            parts.extend(decision_ctes(len(args) + 1))
            args.extend(arrays(DecisionRow, self.decisions))
        insert("new_order", OrderRow, self.orders)
        insert("new_contract", ContractRow, self.contracts)
        insert("signed", SignatureRow, self.signatures)
        insert("audited", AuditRow, self.audit)
        insert("queued", OutboxRow, self.events)
        insert("replay", IdempotencyRow, self.idempotency)
        if not parts:
            return "", []
        return "WITH " + ",\n".join(parts) + "\nSELECT 1", args
