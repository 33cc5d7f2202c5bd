"""The review queue: open, list, claim and decide cases; four-eyes where the list says so.

A reviewer is identified by their own API token (each staff member holds a named token).
Decisions are append-only. One ``request_changes`` or ``reject`` closes a case; an approval
closes it when the case has as many approvals from distinct reviewers as it needs (two for
four-eyes cases). Closing calls the handler registered for the case's kind, in the same
transaction, so the listing (or order) changes together with the case.

Besides listings and orders, a case may decide a staff proposal (`open_proposal`): a fact staff
record that the policy lists read (a product's legal prohibition, an organisation's status as
a data exporter). Such a case is always four-eyes, and its handler applies the proposal when
two reviewers have approved it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from contracts.policy.schemas import Decision
from exchange.platform.audit import Actor, record
from exchange.platform.auth import Principal
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import Conflict, FieldError, Forbidden, InvalidInput, NotFound
from exchange.review.schemas import (
    PROPOSAL_KINDS,
    CaseKind,
    DecisionCreate,
    EvidenceGiven,
    ReviewCase,
    ReviewDecision,
)
from exchange.review.states import CASE

CLAIM_TIMEOUT = timedelta(minutes=30)
# kind -> (conn, case, verdict, actor, at) -> None
CaseHandler = Callable[[Connection, ReviewCase, str, Actor, datetime], Awaitable[None]]


def approvals_needed(four_eyes: bool) -> int:
    return 2 if four_eyes else 1


async def open_case(
    conn: Connection,
    *,
    kind: str,
    subject_id: uuid.UUID,
    subject_org_id: uuid.UUID,
    revision: int | None,
    decision: Decision,
    policy_decision_id: int | None,
    at: datetime,
    case_id: uuid.UUID | None = None,
) -> uuid.UUID:
    case_id = case_id or uuid.uuid4()
    await conn.execute(
        """
        INSERT INTO review_cases (id, kind, subject_id, subject_org_id, revision, state, hits,
                                  rules, four_eyes, policy_decision_id, opened_at)
        VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8, $9, $10)
        """,
        case_id,
        kind,
        subject_id,
        subject_org_id,
        revision,
        msgspec.to_builtins(decision.hits),
        [hit.rule for hit in decision.hits],
        decision.four_eyes,
        policy_decision_id,
        at,
    )
    return case_id


async def open_proposal(
    conn: Connection,
    *,
    kind: CaseKind,
    subject_id: uuid.UUID,
    subject_org_id: uuid.UUID,
    rules: list[str],
    proposal: dict[str, Any],
    at: datetime,
) -> ReviewCase:
    """Open a four-eyes case deciding a staff ``proposal`` about a subject (``rules``: the
    policy rules it bears on, for the queue's filter). 409 while another proposal of the kind is
    open for the subject."""
    assert kind in PROPOSAL_KINDS
    case_id = uuid.uuid4()
    try:
        async with conn.transaction():  # a savepoint: the caller's transaction goes on
            await conn.execute(
                """
                INSERT INTO review_cases (id, kind, subject_id, subject_org_id, state, hits,
                                          rules, four_eyes, proposal, opened_at)
                VALUES ($1, $2, $3, $4, 'open', '[]'::jsonb, $5, true, $6, $7)
                """,
                case_id, kind, subject_id, subject_org_id, rules, proposal, at,
            )  # fmt: skip
    except asyncpg.UniqueViolationError as error:
        open_id = await conn.fetchval(
            "SELECT id FROM review_cases WHERE kind = $1 AND subject_id = $2 AND state = 'open'",
            kind, subject_id,
        )  # fmt: skip
        raise Conflict(
            f"a {kind.replace('_', ' ')} proposal for {subject_id} is already open"
            f" (review case {open_id}); decide it first",
            extensions={"case_id": str(open_id)},
        ) from error
    row = await conn.fetchrow("SELECT * FROM review_cases WHERE id = $1", case_id)
    return (await cases_by_rows(conn, [row]))[0]


async def withdraw_open_cases(
    conn: Connection, kind: str, subject_id: uuid.UUID, at: datetime
) -> int:
    """Close the subject's open cases (its product delisted, its order cancelled): they end as
    rejected, with no reviewer's decision. Returns how many were open."""
    closed = await conn.fetch(
        "UPDATE review_cases SET state = $4, closed_at = $3"
        " WHERE kind = $1 AND subject_id = $2 AND state = 'open' RETURNING id",
        kind, subject_id, at, CASE.next("open", "withdraw"),
    )  # fmt: skip
    return len(closed)


async def _decisions(
    conn: Executor, case_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[ReviewDecision]]:
    rows = await conn.fetch(
        "SELECT * FROM review_decisions WHERE case_id = ANY($1::uuid[]) ORDER BY id", case_ids
    )
    found: dict[uuid.UUID, list[ReviewDecision]] = {}
    for row in rows:
        found.setdefault(row["case_id"], []).append(
            ReviewDecision(
                reviewer=row["reviewer"],
                verdict=row["verdict"],
                reason=row["reason"],
                evidence=msgspec.convert(row["evidence"], list[EvidenceGiven]),
                decided_at=row["decided_at"],
            )
        )
    return found


def _case(row: Any, decisions: list[ReviewDecision]) -> ReviewCase:
    return ReviewCase(
        id=row["id"],
        kind=row["kind"],
        subject_id=row["subject_id"],
        subject_org_id=row["subject_org_id"],
        revision=row["revision"],
        state=row["state"],
        rules=list(row["rules"]),
        hits=row["hits"],
        four_eyes=row["four_eyes"],
        approvals_needed=approvals_needed(row["four_eyes"]),
        claimed_by=row["claimed_by"],
        opened_at=row["opened_at"],
        closed_at=row["closed_at"],
        decisions=decisions,
        proposal=row["proposal"],
    )


async def cases_by_rows(conn: Executor, rows: list[Any]) -> list[ReviewCase]:
    decisions = await _decisions(conn, [row["id"] for row in rows])
    return [_case(row, decisions.get(row["id"], [])) for row in rows]


async def latest_case_for(
    conn: Executor, subject_id: uuid.UUID, kind: CaseKind = "listing"
) -> ReviewCase | None:
    row = await conn.fetchrow(
        "SELECT * FROM review_cases WHERE subject_id = $1 AND kind = $2"
        " ORDER BY opened_at DESC, id LIMIT 1",
        subject_id, kind,
    )  # fmt: skip
    return None if row is None else (await cases_by_rows(conn, [row]))[0]


def queue_sql(
    *,
    kind: str | None,
    state: str | None,
    rule: str | None,
    opened_before: datetime | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    claimed_by: uuid.UUID | None = None,
) -> tuple[str, list[object]]:
    """The queue's statement and its arguments: only the filters given, oldest first, keyset
    paged by ``(opened_at, id)`` (``dataex bench console`` prints its plans)."""
    args: list[object] = []
    clauses: list[str] = []
    for clause, value in (
        ("kind = ${}", kind),
        ("state = ${}", state),
        ("${} = ANY(rules)", rule),
        ("opened_at < ${}", opened_before),
        ("claimed_by = ${}", claimed_by),
    ):
        if value is not None:
            args.append(value)
            clauses.append(clause.format(len(args)))
    if after is not None:
        args.extend(after)
        clauses.append(f"(opened_at, id) > (${len(args) - 1}, ${len(args)})")
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    args.append(limit)
    return f"SELECT * FROM review_cases {where} ORDER BY opened_at, id LIMIT ${len(args)}", args


class ReviewService:
    def __init__(
        self, pool: asyncpg.Pool, clock: Clock, handlers: Mapping[str, CaseHandler]
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.handlers = handlers

    async def get(self, case_id: uuid.UUID) -> ReviewCase:
        row = await self.pool.fetchrow("SELECT * FROM review_cases WHERE id = $1", case_id)
        if row is None:
            raise NotFound(f"no review case {case_id}")
        return (await cases_by_rows(self.pool, [row]))[0]

    async def depth(self) -> list[tuple[str, int, datetime]]:
        """The open cases by kind: (kind, how many, when the oldest was opened)."""
        rows = await self.pool.fetch(
            "SELECT kind, count(*) AS n, min(opened_at) AS oldest FROM review_cases"
            " WHERE state = 'open' GROUP BY kind ORDER BY kind"
        )
        return [(row["kind"], row["n"], row["oldest"]) for row in rows]

    async def queue(
        self,
        *,
        kind: str | None,
        state: str | None,
        rule: str | None,
        opened_before: datetime | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
        claimed_by: uuid.UUID | None = None,
    ) -> list[ReviewCase]:
        """Oldest first; every filter optional (``claimed_by``: a reviewer's token)."""
        sql, args = queue_sql(
            kind=kind, state=state, rule=rule, opened_before=opened_before, after=after,
            limit=limit, claimed_by=claimed_by,
        )  # fmt: skip
        return await cases_by_rows(self.pool, await self.pool.fetch(sql, *args))

    async def claim(self, actor: Actor, principal: Principal, case_id: uuid.UUID) -> ReviewCase:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked_case(conn, principal, case_id)
            if row["state"] != "open":
                raise Conflict(f"the case is {row['state']}; only open cases can be claimed")
            await self._check_not_decided_by(conn, case_id, principal)
            holder = row["claimed_by"]
            if (
                holder is not None
                and holder != principal.token_id
                and row["claimed_at"] + CLAIM_TIMEOUT > now
            ):
                raise Conflict(
                    f"the case is claimed by reviewer {holder} until"
                    f" {(row['claimed_at'] + CLAIM_TIMEOUT).isoformat()}",
                    extensions={"claimed_by": str(holder)},
                )
            await _set_claim(conn, actor, case_id, principal.token_id, now)
        return await self.get(case_id)

    async def release(self, actor: Actor, principal: Principal, case_id: uuid.UUID) -> ReviewCase:
        """Give back a case this reviewer claimed, for another to take."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked_case(conn, principal, case_id)
            if row["state"] != "open":
                raise Conflict(f"the case is {row['state']}; only open cases are claimed")
            if row["claimed_by"] != principal.token_id:
                raise Conflict("the case is not claimed by this reviewer; nothing to release")
            await _set_claim(conn, actor, case_id, None, now)
        return await self.get(case_id)

    @classmethod
    async def _locked_case(cls, conn: Connection, principal: Principal, case_id: uuid.UUID) -> Any:
        """The case's row, locked until the transaction ends: 404 when there is none, 403 when
        it is about the reviewer's own organisation."""
        row = await conn.fetchrow("SELECT * FROM review_cases WHERE id = $1 FOR UPDATE", case_id)
        if row is None:
            raise NotFound(f"no review case {case_id}")
        cls._check_may_review(row, principal)
        return row

    @staticmethod
    async def _check_not_decided_by(
        conn: Connection, case_id: uuid.UUID, principal: Principal
    ) -> list[Any]:
        previous = await conn.fetch(
            "SELECT reviewer, verdict FROM review_decisions WHERE case_id = $1", case_id
        )
        if any(p["reviewer"] == principal.token_id for p in previous):
            raise Conflict(
                "this reviewer has already decided this case; four-eyes cases need a second,"
                " different reviewer"
            )
        return previous

    @staticmethod
    def _check_may_review(row: Any, principal: Principal) -> None:
        if row["subject_org_id"] == principal.org_id:
            raise Forbidden("a reviewer never decides a case about their own organisation")

    async def decide(
        self, actor: Actor, principal: Principal, case_id: uuid.UUID, data: DecisionCreate
    ) -> ReviewCase:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked_case(conn, principal, case_id)
            CASE.next(row["state"], data.verdict)  # a closed case takes no more decisions
            if row["claimed_by"] != principal.token_id:
                raise Conflict("claim the case before deciding it (POST …/claim)")
            previous = await self._check_not_decided_by(conn, case_id, principal)
            if data.verdict == "approve":
                _check_evidence(row, data.evidence)
            await conn.execute(
                """
                INSERT INTO review_decisions (case_id, reviewer, reviewer_org, verdict, reason,
                                              evidence, decided_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                """,
                case_id,
                principal.token_id,
                principal.org_id,
                data.verdict,
                data.reason,
                msgspec.to_builtins(data.evidence),
                now,
            )
            approvals = 1 + sum(p["verdict"] == "approve" for p in previous)
            final: str | None
            if data.verdict != "approve":
                final = CASE.next(row["state"], data.verdict)
            elif approvals >= approvals_needed(row["four_eyes"]):
                final = CASE.next(row["state"], "approve")
            else:
                final = None
            await record(
                conn,
                actor,
                at=now,
                action="review.decided",
                subject_type="review_case",
                subject_id=case_id,
                detail={
                    "verdict": data.verdict,
                    "reason": data.reason,
                    "evidence": msgspec.to_builtins(data.evidence),
                    "closes": final,
                },
            )
            if final is None:  # first of two approvals: release for the second reviewer
                await conn.execute(
                    "UPDATE review_cases SET claimed_by = NULL, claimed_at = NULL WHERE id = $1",
                    case_id,
                )
            else:
                await conn.execute(
                    "UPDATE review_cases SET state = $2, closed_at = $3 WHERE id = $1",
                    case_id,
                    final,
                    now,
                )
                case = (
                    await cases_by_rows(
                        conn,
                        [await conn.fetchrow("SELECT * FROM review_cases WHERE id = $1", case_id)],
                    )
                )[0]
                await self.handlers[case.kind](conn, case, data.verdict, actor, now)
        return await self.get(case_id)


async def _set_claim(
    conn: Connection, actor: Actor, case_id: uuid.UUID, holder: uuid.UUID | None, at: datetime
) -> None:
    """The case claimed by reviewer token ``holder`` from ``at`` (``None``: released), audited
    as ``review.claimed`` or ``review.released``."""
    await conn.execute(
        "UPDATE review_cases SET claimed_by = $2, claimed_at = $3 WHERE id = $1",
        case_id,
        holder,
        None if holder is None else at,
    )
    await record(
        conn,
        actor,
        at=at,
        action="review.released" if holder is None else "review.claimed",
        subject_type="review_case",
        subject_id=case_id,
    )


def _check_evidence(row: Any, evidence: list[EvidenceGiven]) -> None:
    cautious = [hit["rule"] for hit in row["hits"] if hit["list"] == "cautious"]
    given = {item.rule for item in evidence}
    unknown = sorted(given - set(cautious))
    missing = [rule for rule in cautious if rule not in given]
    errors = [
        FieldError(path="evidence", message=f"{rule}: no evidence given", source="body")
        for rule in missing
    ] + [
        FieldError(
            path="evidence", message=f"{rule} is not a cautious hit of this case", source="body"
        )
        for rule in unknown
    ]
    if errors:
        raise InvalidInput(
            "an approval needs evidence for every cautious hit"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not hits of this case: {', '.join(unknown)}" if unknown else ""),
            errors=errors,
        )
