"""Disputes: open one over a trade, bring evidence, answer, resolve (four-eyes at or above
``dispute_four_eyes_fen``: two reviewers), agree, escalate, record an award (four-eyes too: two
admins), withdraw; and the respondent's deadline sweep. Every change goes through the one
transition table (`exchange.disputes.states.DISPUTE`) with its ``dx.dispute.<state>`` event and
an audit row, in the transaction that makes it; so do the money (settlement, through
`DisputeHooks`) and the grants' suspension (delivery).

Who may open: the buyer, for any reason but ``terms_breach_by_buyer``, while the trade is
reserved and its acceptance period runs; the seller, for ``terms_breach_by_buyer`` only, while
the trade has a live grant. The claimed amount is at most what escrow holds (an
``over_metered`` claim: what the named posted periods charged).

Grants by reason: suspended for ``not_as_described``, ``quality_below_report`` and
``terms_breach_by_buyer`` (using the data is what is in question); kept for
``not_delivered``, ``over_metered`` and ``other`` (the buyer still needs the delivery).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable, Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, NamedTuple

import asyncpg
import msgspec

from contracts.agreements.signatures import custodial_key, verify_detached
from exchange.disputes import bundle, export
from exchange.disputes.evidence import EvidenceStore, EvidenceTooLarge
from exchange.disputes.hooks import DisputeHooks
from exchange.disputes.schemas import (
    MEDIA_TYPES,
    STAFF_TYPES,
    AgreementIn,
    AgreementSignature,
    Dispute,
    DisputeEvidenceItem,
    DisputeEvidenceList,
    DisputeIn,
    DisputeTransition,
    Escalation,
    ExtendAcceptance,
    Money,
    Proposal,
    Redeliver,
    RefundBuyer,
    ReleaseToSeller,
    Resolution,
    Split,
    Stage,
    kind_of,
    normalised,
    resolution_digest,
)
from exchange.disputes.states import DISPUTE, OPEN, DisputeAction
from exchange.platform.audit import Actor, record
from exchange.platform.auth import Principal
from exchange.platform.canonical import canonical_json
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.disputes import LedgerProofs, MoneyOutcome, TradeFacts
from exchange.platform.errors import (
    Conflict,
    DataexError,
    FieldError,
    Forbidden,
    InvalidInput,
    NotFound,
)
from exchange.platform.events import DisputeEventData
from exchange.platform.logging import get_logger
from exchange.platform.outbox import enqueue
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, SigningKey

STAFF: Final = ("reviewer", "admin")
# Grants are suspended while a dispute over these is open; kept for the others.
SUSPENDING: Final = frozenset({"not_as_described", "quality_below_report", "terms_breach_by_buyer"})
DISPUTE_EVIDENCE_TOTAL_BYTES: Final = 64 * 1024 * 1024
AGREEMENT_TYPE: Final = "dataex-dispute-agreement+jws"
_RESOLUTION: Final = msgspec.json.Decoder(Resolution)
# The four-eyes stage of the state a dispute decided by staff waits in.
_STAGE_OF: Final[dict[str, Stage]] = {"under_review": "review", "escalated": "award"}
_CONCLUDED: Final[dict[str, str]] = {
    "resolve": "dispute.resolved",
    "record_award": "dispute.award_recorded",
    "agree": "dispute.settled_by_agreement",
}


class _Actions(NamedTuple):
    """The audit actions of a four-eyes stage: the first approval (the proposal), the second
    (which concludes), the proposer's replacement of its own."""

    proposed: str
    approved: str
    replaced: str


_AUDIT: Final[dict[Stage, _Actions]] = {
    "review": _Actions("dispute.resolution_approved", "dispute.resolution_approved",
                       "dispute.proposal_replaced"),
    "award": _Actions("dispute.award_proposed", "dispute.award_approved",
                      "dispute.award_proposal_replaced"),
}  # fmt: skip


log = get_logger(__name__)


class DisputeTooLate(Conflict):
    code = "acceptance_period_ended"
    title = "The acceptance period has ended"


class DisputeOpen(Conflict):
    code = "dispute_open"
    title = "The trade already has an open dispute"


class EvidenceDamaged(DataexError):
    status = 500
    code = "evidence_damaged"
    title = "A stored evidence item is missing or changed"


class ProposalPending(Conflict):
    code = "resolution_pending"
    title = "Another resolution waits for a second reviewer"


class AwardPending(ProposalPending):
    title = "Another award waits for a second admin"


def _bad(path: str, message: str) -> InvalidInput:
    return InvalidInput(message, errors=[FieldError(path=path, message=message, source="body")])


def _json(raw: Any) -> Any:
    if raw is None:
        return None
    return msgspec.json.decode(raw) if isinstance(raw, (str, bytes)) else raw


def _resolution(raw: Any) -> Resolution | None:
    if raw is None:
        return None
    resolution: Resolution = _RESOLUTION.decode(
        raw.encode() if isinstance(raw, str) else canonical_json(raw)
    )
    return resolution


def _proposed(approval: Any, digest: str, document: str) -> dict[str, str]:
    """An approval's digest (and, at the award stage, its document) under these names."""
    named = {digest: approval["digest"]}
    if approval["document_sha256"] is not None:
        named[document] = approval["document_sha256"]
    return named


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class DisputeService:
    def __init__(
        self, pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing,
        hooks: DisputeHooks, evidence_dir: Path,
    ) -> None:  # fmt: skip
        self.pool = pool
        self.clock = clock
        self.settings = settings
        self.keyring = keyring
        self.hooks = hooks
        self.store = EvidenceStore(evidence_dir)

    # --- reading ---------------------------------------------------------------------------------

    async def get(self, principal: Principal, dispute_id: uuid.UUID) -> Dispute:
        """A dispute, for its parties and staff; 404 to anyone else."""
        row = await self.pool.fetchrow("SELECT * FROM disputes WHERE id = $1", dispute_id)
        self._visible(principal, row, dispute_id)
        return await self._view(self.pool, row)

    async def find(
        self, principal: Principal, state: str | None = None, trade_id: uuid.UUID | None = None,
        limit: int = 100,
    ) -> list[Dispute]:  # fmt: skip
        """Newest first: the caller's organisation's disputes (staff: every one)."""
        rows = await self.pool.fetch(
            "SELECT * FROM disputes WHERE ($1::text IS NULL OR state = $1)"
            " AND ($2::uuid IS NULL OR trade_id = $2)"
            " AND ($3::boolean OR buyer_org_id = $4 OR seller_org_id = $4)"
            " ORDER BY opened_at DESC, id DESC LIMIT $5",
            state, trade_id, principal.has(*STAFF), principal.org_id, limit,
        )  # fmt: skip
        return [await self._view(self.pool, row) for row in rows]

    async def oldest(
        self, principal: Principal, *, states: Collection[str] | None = None,
        reason: str | None = None, trade_id: uuid.UUID | None = None,
        after: tuple[datetime, uuid.UUID] | None = None, limit: int = 50,
    ) -> list[Dispute]:  # fmt: skip
        """Oldest first (the staff's list), keyset-paged: those opened after ``after``
        (``opened_at``, ``id``), in one of ``states`` (None: any), for ``reason`` and
        ``trade_id`` when given; the caller's organisation's (staff: every one)."""
        rows = await self.pool.fetch(
            "SELECT * FROM disputes WHERE ($1::text[] IS NULL OR state = ANY($1))"
            " AND ($2::text IS NULL OR reason = $2) AND ($3::uuid IS NULL OR trade_id = $3)"
            " AND ($4::timestamptz IS NULL OR (opened_at, id) > ($4, $5::uuid))"
            " AND ($6::boolean OR buyer_org_id = $7 OR seller_org_id = $7)"
            " ORDER BY opened_at, id LIMIT $8",
            None if states is None else sorted(states), reason, trade_id,
            None if after is None else after[0], None if after is None else after[1],
            principal.has(*STAFF), principal.org_id, limit,
        )  # fmt: skip
        return [await self._view(self.pool, row) for row in rows]

    async def transitions(
        self, principal: Principal, dispute_id: uuid.UUID
    ) -> list[DisputeTransition]:
        """The dispute's steps in the order they were taken (its parties and staff)."""
        row = await self.pool.fetchrow("SELECT * FROM disputes WHERE id = $1", dispute_id)
        self._visible(principal, row, dispute_id)
        rows = await self.pool.fetch(
            "SELECT * FROM dispute_transitions WHERE dispute_id = $1 ORDER BY seq", dispute_id
        )
        return [
            DisputeTransition(seq=r["seq"], from_state=r["from_state"], action=r["action"],
                              to_state=r["to_state"], actor=r["actor"], at=r["at"])
            for r in rows
        ]  # fmt: skip

    async def for_trade(self, principal: Principal, trade_id: uuid.UUID) -> list[Dispute]:
        """A trade's disputes (its parties and staff: 404 for a trade that has none visible)."""
        items = await self.find(principal, trade_id=trade_id)
        if not items:
            async with self.pool.acquire() as conn:
                facts = await self.hooks.facts(conn, trade_id, False)
            party = facts is not None and principal.org_id in (
                facts.buyer_org_id, facts.seller_org_id
            )  # fmt: skip
            if facts is None or not (party or principal.has(*STAFF)):
                raise NotFound(f"no trade {trade_id}")
        return items

    def _visible(self, principal: Principal, row: Any, dispute_id: uuid.UUID) -> None:
        if row is None or not (
            principal.org_id in (row["buyer_org_id"], row["seller_org_id"]) or principal.has(*STAFF)
        ):
            raise NotFound(f"no dispute {dispute_id}")

    async def _view(self, conn: Executor, row: Any) -> Dispute:
        # The proposal waiting at its state's four-eyes stage, if any (an escalated dispute's
        # award; one under review, its resolution); after it, approvals are history.
        stage = _STAGE_OF.get(row["state"])
        first = None if stage is None else await conn.fetchrow(
            "SELECT * FROM dispute_approvals WHERE dispute_id = $1 AND stage = $2"
            " ORDER BY approved_at LIMIT 1",
            row["id"], stage,
        )  # fmt: skip
        signatures = await conn.fetch(
            "SELECT * FROM dispute_signatures WHERE dispute_id = $1 ORDER BY party", row["id"]
        )
        items = await conn.fetchval(
            "SELECT count(*) FROM dispute_evidence WHERE dispute_id = $1", row["id"]
        )
        pending = None
        if first is not None:
            pending = Proposal(
                resolution=_resolution(first["resolution"]),  # type: ignore[arg-type]
                digest=first["digest"], proposed_by=first["reviewer"],
                proposed_at=first["approved_at"], stage=first["stage"],
                document_sha256=first["document_sha256"],
            )  # fmt: skip
        money = _json(row["money"])
        escalation = None
        if row["escalated_at"] is not None:
            escalation = Escalation(
                forum=row["escalation_forum"], note=row["escalation_note"],
                escalated_at=row["escalated_at"], award_sha256=row["award_sha256"],
            )  # fmt: skip
        return Dispute(
            id=row["id"], trade_id=row["trade_id"], buyer_org_id=row["buyer_org_id"],
            seller_org_id=row["seller_org_id"], claimant=row["claimant"], reason=row["reason"],
            claimed_fen=row["claimed_fen"], held_fen=row["held_fen"], metered=row["metered"],
            periods=list(row["periods"]), statement=row["statement"], state=row["state"],
            allowed_actions=list[str](DISPUTE.allowed(row["state"])), respond_by=row["respond_by"],
            response=row["response"], responded_at=row["responded_at"],
            acceptance_due=row["acceptance_due"], grants_suspended=row["grants_suspended"],
            four_eyes=row["four_eyes"], approvals_needed=2 if row["four_eyes"] else 1,
            pending=pending,
            signatures=[
                AgreementSignature(
                    party=s["party"], digest=s["digest"],
                    resolution=_resolution(s["resolution"]),  # type: ignore[arg-type]
                    kind=s["kind"], kid=s["kid"], jws=s["jws"], signed_at=s["signed_at"],
                )
                for s in signatures
            ],
            resolution=_resolution(row["resolution"]),
            resolution_digest=row["resolution_digest"], resolution_note=row["resolution_note"],
            resolved_by=row["resolved_by"],
            money=None if money is None else msgspec.convert(money, Money),
            escalation=escalation, evidence_items=items, opened_at=row["opened_at"],
            updated_at=row["updated_at"], closed_at=row["closed_at"],
        )  # fmt: skip

    # --- transitions -----------------------------------------------------------------------------

    async def _step(
        self, conn: Connection, row: Any, action: DisputeAction, actor: str, at: datetime,
        request_id: str | None, **columns: Any,
    ) -> Any:  # fmt: skip
        """Apply ``action`` to a locked dispute row, set ``columns``, keep the transition and
        write ``dx.dispute.<state>``."""
        state = DISPUTE.next(row["state"], action)
        if state == "closed":
            columns.setdefault("closed_at", at)
        names = sorted(columns)
        sets = "".join(f", {name} = ${i}" for i, name in enumerate(names, start=4))
        new = await conn.fetchrow(
            f"UPDATE disputes SET state = $2, updated_at = $3, version = version + 1{sets}"
            " WHERE id = $1 RETURNING *",
            row["id"], state, at, *(columns[name] for name in names),
        )  # fmt: skip
        await self._announce(conn, new, row["state"], action, actor, at, request_id)
        return new

    async def _announce(
        self, conn: Connection, row: Any, before: str | None, action: str, actor: str,
        at: datetime, request_id: str | None,
    ) -> None:  # fmt: skip
        state = row["state"]
        await conn.execute(
            "INSERT INTO dispute_transitions (dispute_id, seq, from_state, action, to_state,"
            " actor, at, request_id) VALUES ($1, (SELECT count(*) FROM dispute_transitions"
            " WHERE dispute_id = $1), $2, $3, $4, $5, $6, $7)",
            row["id"], before, action, state, actor, at, request_id,
        )  # fmt: skip
        resolution = _resolution(row["resolution"])
        await enqueue(
            conn, subject=self.settings.subject("dispute", state),
            event_type=f"dx.dispute.{state}",
            source=f"urn:dataex:exchange:{self.settings.exchange_code}",
            event_subject=str(row["id"]),
            data=DisputeEventData(
                dispute_id=str(row["id"]), trade_id=str(row["trade_id"]),
                buyer_org_id=str(row["buyer_org_id"]), seller_org_id=str(row["seller_org_id"]),
                claimant=row["claimant"], reason=row["reason"], claimed_fen=row["claimed_fen"],
                state=state, action=action, respond_by=_stamp(row["respond_by"]),
                resolution_kind=None if resolution is None else kind_of(resolution),
                resolution_digest=row["resolution_digest"],
            ),
            at=at, request_id=request_id,
        )  # fmt: skip

    async def _locked(self, conn: Connection, principal: Principal, dispute_id: uuid.UUID) -> Any:
        """The dispute's row, then its trade's grants, locked (the order of `DisputeHooks`)."""
        row = await conn.fetchrow("SELECT * FROM disputes WHERE id = $1 FOR UPDATE", dispute_id)
        self._visible(principal, row, dispute_id)
        assert row is not None
        await self.hooks.lock_grants(conn, row["trade_id"])
        return row

    @staticmethod
    def _party(principal: Principal, row: Any) -> str | None:
        if principal.org_id == row["buyer_org_id"]:
            return "buyer"
        if principal.org_id == row["seller_org_id"]:
            return "seller"
        return None

    # --- opening ---------------------------------------------------------------------------------

    async def open(
        self, actor: Actor, principal: Principal, trade_id: uuid.UUID, data: DisputeIn
    ) -> Dispute:
        """A party opens a dispute over a trade: the money is held, the grants suspended or
        kept by reason, the exchange's system evidence attached, the respondent notified."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            # A party's trade (404 for anyone else, before anything is locked), then its grants
            # and the trade locked in the order of `DisputeHooks`, and read again.
            seen = await self.hooks.facts(conn, trade_id, False)
            if seen is None or principal.org_id not in (seen.buyer_org_id, seen.seller_org_id):
                raise NotFound(f"no trade {trade_id}")
            await self.hooks.lock_grants(conn, trade_id)
            facts = await self.hooks.facts(conn, trade_id, True)
            assert facts is not None
            party = "buyer" if principal.org_id == facts.buyer_org_id else "seller"
            if not principal.has(party):
                raise Forbidden(f"disputing as the {party} needs the {party} role")
            await self._may_open(conn, facts, party, data, now)
            dispute_id = uuid.uuid4()
            suspend = data.reason in SUSPENDING
            row = await conn.fetchrow(
                "INSERT INTO disputes (id, trade_id, buyer_org_id, seller_org_id, claimant,"
                " reason, claimed_fen, held_fen, metered, periods, statement, state, respond_by,"
                " acceptance_due, grants_suspended, four_eyes, opened_by, opened_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'opened', $12, $13, $14,"
                " $15, $16, $17, $17) RETURNING *",
                dispute_id, trade_id, facts.buyer_org_id, facts.seller_org_id, party,
                data.reason, data.claimed_fen, facts.held_fen, facts.metered,
                sorted(set(data.periods or ())), data.statement,
                now + timedelta(days=self.settings.dispute_response_days),
                facts.acceptance_due, suspend,
                _at_stake(facts, data) >= self.settings.dispute_four_eyes_fen, actor.label, now,
            )  # fmt: skip
            await self._announce(conn, row, None, "open", actor.label, now, actor.request_id)
            row = await self._step(conn, row, "notify", actor.label, now, actor.request_id)
            await self.hooks.hold(conn, trade_id, dispute_id, now, actor.request_id)
            if suspend:
                await self.hooks.suspend_grants(
                    conn, trade_id, f"dispute {dispute_id}: {data.reason}", now,
                    actor.request_id,
                )  # fmt: skip
            for item in await self.hooks.collect(conn, trade_id, now):
                stored = await asyncio.to_thread(self.store.put_bytes, item.body)
                await self._register_item(
                    conn, row, item.kind, item.name, item.media_type, stored.sha256,
                    stored.size, "exchange", None, "exchange", now,
                )  # fmt: skip
            await record(conn, actor, at=now, action="dispute.opened", subject_type="dispute",
                         subject_id=dispute_id,
                         detail={"trade_id": str(trade_id), "reason": data.reason,
                                 "claimed_fen": data.claimed_fen, "party": party})  # fmt: skip
            return await self._view(conn, row)

    async def _may_open(
        self, conn: Connection, facts: TradeFacts, party: str, data: DisputeIn, now: datetime
    ) -> None:
        open_one = await conn.fetchval(
            "SELECT id FROM disputes WHERE trade_id = $1 AND state <> 'closed'", facts.trade_id
        )
        if open_one is not None:  # first: the trade is disputed because of it
            raise DisputeOpen(
                f"trade {facts.trade_id} already has open dispute {open_one}",
                extensions={"dispute_id": str(open_one)},
            )
        if party == "buyer":
            if data.reason == "terms_breach_by_buyer":
                raise _bad("reason", "the buyer cannot claim a breach of terms by the buyer")
            if facts.state != "reserved":
                raise Conflict(
                    f"trade {facts.trade_id} is {facts.state}: a buyer disputes a reserved trade",
                    extensions={"trade_state": facts.state},
                )
            if now >= facts.acceptance_due:
                raise DisputeTooLate(
                    f"the acceptance period ended at {facts.acceptance_due.isoformat()};"
                    " a dispute is too late",
                    extensions={"acceptance_due": facts.acceptance_due.isoformat()},
                )
        else:
            if data.reason != "terms_breach_by_buyer":
                raise _bad("reason", "the seller may only claim terms_breach_by_buyer")
            if facts.state in ("pending", "failed"):
                raise Conflict(
                    f"trade {facts.trade_id} is {facts.state}: nothing to dispute",
                    extensions={"trade_state": facts.state},
                )
            if not await self.hooks.grant_live(conn, facts.trade_id, now):
                raise Conflict(
                    f"trade {facts.trade_id} has no live grant: the seller disputes a breach"
                    " of terms during the grant"
                )
        limit = facts.held_fen
        if data.reason == "over_metered":
            limit = self._disputed_charges(facts, data.periods)
            await self._not_refunded_before(conn, facts.trade_id, data.periods or [])
        elif data.periods is not None:
            raise _bad("periods", "only an over_metered dispute names billing periods")
        if data.claimed_fen > limit:
            raise _bad(
                "claimed_fen",
                f"at most {limit} fen"
                + (" (what the named periods charged)" if data.reason == "over_metered"
                   else " (what escrow holds for the trade)"),
            )  # fmt: skip

    @staticmethod
    async def _not_refunded_before(
        conn: Connection, trade_id: uuid.UUID, periods: Sequence[int]
    ) -> None:
        """A billing period is refunded by one dispute at most: 422 naming the periods an
        earlier dispute of the trade already paid back from."""
        earlier = await conn.fetch(
            "SELECT id, periods FROM disputes WHERE trade_id = $1 AND periods && $2::int[]"
            " AND coalesce((money ->> 'refund_fen')::bigint, 0) > 0",
            trade_id, sorted(set(periods)),
        )  # fmt: skip
        again = sorted({p for row in earlier for p in row["periods"]} & set(periods))
        if again:
            raise InvalidInput(
                f"billing periods {again} of trade {trade_id} were refunded by dispute"
                f" {earlier[0]['id']}: a period is refunded once",
                errors=[FieldError(path="periods", source="body",
                                   message=f"already refunded: {again}")],
                extensions={"refunded_periods": again},
            )  # fmt: skip

    @staticmethod
    def _disputed_charges(facts: TradeFacts, periods: Sequence[int] | None) -> int:
        """What the named posted periods of a metered trade charged; 422 naming what is wrong."""
        if not facts.metered:
            raise _bad("reason", "over_metered is for a metered trade (billed by use)")
        if not periods:
            raise _bad("periods", "an over_metered dispute names the billing periods it disputes")
        posted = {p.period for p in facts.periods}
        unknown = sorted({p for p in periods if p not in posted})
        if unknown:
            raise InvalidInput(
                f"not posted billing periods of trade {facts.trade_id}: "
                + ", ".join(map(str, unknown)),
                errors=[FieldError(path="periods", source="body",
                                   message=f"unknown periods {unknown}")],
                extensions={"unknown_periods": unknown},
            )  # fmt: skip
        return _charged(facts, periods)

    # --- evidence --------------------------------------------------------------------------------

    async def _register_item(
        self, conn: Connection, row: Any, kind: str, name: str, media_type: str, sha256: str,
        size: int, submitter: str, org_id: uuid.UUID | None, by: str, at: datetime,
    ) -> tuple[Any, bool]:  # fmt: skip
        """Register one item (the dispute row locked): an existing one with the same bytes is
        returned as it is (False)."""
        existing = await conn.fetchrow(
            "SELECT * FROM dispute_evidence WHERE dispute_id = $1 AND sha256 = $2",
            row["id"], sha256,
        )  # fmt: skip
        if existing is not None:
            return existing, False
        seq = await self.hooks.register(
            conn, row["trade_id"], row["id"], "evidence", bundle.evidence_digest(sha256), at
        )
        item = await conn.fetchrow(
            "INSERT INTO dispute_evidence (dispute_id, idx, sha256, kind, name, media_type, size,"
            " submitter, submitter_org_id, submitted_by, submitted_at, ledger_seq) VALUES ($1,"
            " (SELECT count(*) FROM dispute_evidence WHERE dispute_id = $1), $2, $3, $4, $5, $6,"
            " $7, $8, $9, $10, $11) RETURNING *",
            row["id"], sha256, kind, name, media_type, size, submitter, org_id, by, at, seq,
        )  # fmt: skip
        return item, True

    async def add_evidence(
        self, actor: Actor, principal: Principal, dispute_id: uuid.UUID, kind: str, name: str,
        media_type: str, body: AsyncIterable[bytes],
    ) -> tuple[DisputeEvidenceItem, bool]:  # fmt: skip
        """A party (or staff: ``award``, ``expert_report``) adds an item while the dispute is
        not closed; the same bytes again return the item there is (False: not added)."""
        media_type = media_type.split(";", 1)[0].strip().lower()
        if media_type not in MEDIA_TYPES:
            raise InvalidInput(
                f"Content-Type {media_type!r} is not accepted for evidence; one of "
                + ", ".join(sorted(MEDIA_TYPES)),
                errors=[FieldError(path="Content-Type", source="header",
                                   message="not an accepted media type")],
            )  # fmt: skip
        row = await self.pool.fetchrow("SELECT * FROM disputes WHERE id = $1", dispute_id)
        self._visible(principal, row, dispute_id)
        submitter = self._submitter(principal, row, kind)
        stored = await self.store.put_stream(body, self.settings.dispute_evidence_max_bytes)
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, principal, dispute_id)
            if row["state"] == "closed":
                raise Conflict(f"dispute {dispute_id} is closed: no more evidence",
                               extensions={"state": row["state"]})  # fmt: skip
            total = await conn.fetchval(
                "SELECT coalesce(sum(size), 0) FROM dispute_evidence"
                " WHERE dispute_id = $1 AND submitter <> 'exchange'",
                dispute_id,
            )  # fmt: skip
            if total + stored.size > DISPUTE_EVIDENCE_TOTAL_BYTES and not await conn.fetchval(
                "SELECT 1 FROM dispute_evidence WHERE dispute_id = $1 AND sha256 = $2",
                dispute_id, stored.sha256,
            ):  # fmt: skip
                raise EvidenceTooLarge(
                    f"a dispute holds at most {DISPUTE_EVIDENCE_TOTAL_BYTES} bytes of uploaded"
                    f" evidence; {total} are taken",
                    extensions={"max_total_bytes": DISPUTE_EVIDENCE_TOTAL_BYTES,
                                "total_bytes": total},
                )  # fmt: skip
            item, created = await self._register_item(
                conn, row, kind, name, media_type, stored.sha256, stored.size, submitter,
                principal.org_id, actor.label, now,
            )  # fmt: skip
            if created:
                await record(conn, actor, at=now, action="dispute.evidence_added",
                             subject_type="dispute", subject_id=dispute_id,
                             detail={"sha256": stored.sha256, "kind": kind, "name": name,
                                     "size": stored.size, "submitter": submitter})  # fmt: skip
        return _item(item), created

    def _submitter(self, principal: Principal, row: Any, kind: str) -> str:
        party = self._party(principal, row)
        if party is not None:
            if kind == "award":
                raise _bad("type", "an award is recorded by staff")
            return party
        if kind not in STAFF_TYPES:
            raise _bad("type", "staff add evidence of type award or expert_report")
        return "staff"

    async def evidence(self, principal: Principal, dispute_id: uuid.UUID) -> DisputeEvidenceList:
        row = await self.pool.fetchrow("SELECT * FROM disputes WHERE id = $1", dispute_id)
        self._visible(principal, row, dispute_id)
        rows = await self.pool.fetch(
            "SELECT * FROM dispute_evidence WHERE dispute_id = $1 ORDER BY idx", dispute_id
        )
        return DisputeEvidenceList(items=[_item(r) for r in rows],
                            total_bytes=sum(r["size"] for r in rows))  # fmt: skip

    async def evidence_file(
        self, principal: Principal, dispute_id: uuid.UUID, sha256: str
    ) -> tuple[DisputeEvidenceItem, Path]:
        """An item's bytes (where they are), for the parties and staff."""
        row = await self.pool.fetchrow("SELECT * FROM disputes WHERE id = $1", dispute_id)
        self._visible(principal, row, dispute_id)
        item = await self.pool.fetchrow(
            "SELECT * FROM dispute_evidence WHERE dispute_id = $1 AND sha256 = $2",
            dispute_id, sha256,
        )  # fmt: skip
        if item is None:
            raise NotFound(f"dispute {dispute_id} has no evidence item {sha256}")
        return _item(item), self.store.path(sha256)

    # --- the respondent, the parties -------------------------------------------------------------

    async def respond(
        self, actor: Actor, principal: Principal, dispute_id: uuid.UUID, statement: str
    ) -> Dispute:
        """The respondent answers: the case goes to review."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, principal, dispute_id)
            party = self._party(principal, row)
            if party is None or party == row["claimant"]:
                raise Forbidden("only the respondent (the other party) answers a dispute")
            row = await self._step(conn, row, "respond", actor.label, now, actor.request_id,
                                   response=statement, responded_at=now)  # fmt: skip
            await record(conn, actor, at=now, action="dispute.responded", subject_type="dispute",
                         subject_id=dispute_id, detail={"party": party})  # fmt: skip
            return await self._view(conn, row)

    async def escalate(
        self, actor: Actor, principal: Principal, dispute_id: uuid.UUID, forum: str, note: str
    ) -> Dispute:
        """A party takes the case to arbitration outside the exchange: escrow stays frozen
        until staff record the award."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, principal, dispute_id)
            party = self._party(principal, row)
            if party is None:
                raise Forbidden("only a party escalates a dispute")
            row = await self._step(
                conn, row, "escalate", actor.label, now, actor.request_id,
                escalation_forum=forum, escalation_note=note, escalated_at=now,
            )  # fmt: skip
            await record(conn, actor, at=now, action="dispute.escalated",
                         subject_type="dispute", subject_id=dispute_id,
                         detail={"party": party, "forum": forum})  # fmt: skip
            return await self._view(conn, row)

    async def withdraw(self, actor: Actor, principal: Principal, dispute_id: uuid.UUID) -> Dispute:
        """The claimant withdraws: closed, the hold released (the acceptance deadline as it
        was: if it has passed, the next settlement round posts the trade), grants lifted."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, principal, dispute_id)
            if self._party(principal, row) != row["claimant"]:
                raise Forbidden("only the claimant withdraws a dispute")
            row = await self._step(conn, row, "withdraw", actor.label, now, actor.request_id)
            await self.hooks.unhold(conn, row["trade_id"], row["id"], _restored_due(row, now),
                                    now, actor.request_id)  # fmt: skip
            await self._lift(conn, row, now, actor.request_id)
            await record(conn, actor, at=now, action="dispute.withdrawn", subject_type="dispute",
                         subject_id=dispute_id)  # fmt: skip
            return await self._view(conn, row)

    async def agree(
        self, actor: Actor, principal: Principal, dispute_id: uuid.UUID, data: AgreementIn
    ) -> Dispute:
        """A party signs a resolution's digest; once both parties have signed the same one, it
        is settled by agreement and the money moves."""
        if (data.jws is None) == (not data.custodial):
            raise _bad("jws", "send a detached JWS over the resolution digest, or custodial")
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, principal, dispute_id)
            party = self._party(principal, row)
            if party is None:
                raise Forbidden("only a party signs an agreement")
            if not DISPUTE.allows(row["state"], "agree"):
                DISPUTE.next(row["state"], "agree")  # the 409 naming what is allowed
            resolution = normalised(data.resolution)
            facts = await self._facts(conn, row)
            self._check(resolution, row, facts, now)
            digest = resolution_digest(row["id"], row["trade_id"], resolution)
            kid, token, kind = await self._signature(conn, principal, data, digest)
            await conn.execute(
                "INSERT INTO dispute_signatures (dispute_id, party, resolution, digest, kind,"
                " kid, jws, signed_by, signed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                " ON CONFLICT (dispute_id, party) DO UPDATE SET resolution = $3, digest = $4,"
                " kind = $5, kid = $6, jws = $7, signed_by = $8, signed_at = $9",
                row["id"], party, msgspec.to_builtins(resolution), digest, kind, kid, token,
                actor.label, now,
            )  # fmt: skip
            await record(conn, actor, at=now, action="dispute.agreement_signed",
                         subject_type="dispute", subject_id=dispute_id,
                         detail={"party": party, "digest": digest, "kid": kid,
                                 "kind": kind})  # fmt: skip
            digests = await conn.fetch(
                "SELECT DISTINCT digest FROM dispute_signatures WHERE dispute_id = $1", row["id"]
            )
            signed = await conn.fetchval(
                "SELECT count(*) FROM dispute_signatures WHERE dispute_id = $1", row["id"]
            )
            if signed == 2 and len(digests) == 1:
                row = await self._conclude(
                    conn, row, "agree", resolution, digest, "both parties signed",
                    "agreement", actor, now,
                )  # fmt: skip
            return await self._view(conn, row)

    async def _signature(
        self, conn: Connection, principal: Principal, data: AgreementIn, digest: str
    ) -> tuple[str, str, str]:
        if data.custodial:
            key = await custodial_key(conn, principal.org_id, self.keyring)
            if key is None:
                raise _bad("custodial", "the organisation has no custodial key"
                                        " (POST /v1/keys/custodial to opt in)")  # fmt: skip
            return key.kid, key.sign_detached(digest.encode(), typ=AGREEMENT_TYPE), "custodial"
        assert data.jws is not None
        kid = await verify_detached(conn, principal.org_id, data.jws, digest.encode())
        return kid, data.jws, "signature"

    # --- staff -----------------------------------------------------------------------------------

    async def resolve(
        self, actor: Actor, principal: Principal, dispute_id: uuid.UUID, resolution: Resolution,
        note: str,
    ) -> tuple[Dispute, bool]:  # fmt: skip
        """A reviewer decides. Below the four-eyes amount this resolves it (True); at or above
        it, the first reviewer's resolution waits (False) for a second, distinct reviewer with
        the same resolution (409 for the same reviewer again, or another resolution)."""
        now = self.clock.now()
        resolution = normalised(resolution)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, principal, dispute_id)
            DISPUTE.next(row["state"], "resolve")
            facts = await self._facts(conn, row)
            self._check(resolution, row, facts, now)
            digest = resolution_digest(row["id"], row["trade_id"], resolution)
            if row["four_eyes"] and not await self._approve(
                conn, actor, row, "review", resolution, digest, None, note, now
            ):
                return await self._view(conn, row), False
            row = await self._conclude(conn, row, "resolve", resolution, digest, note,
                                       actor.label, actor, now)  # fmt: skip
            return await self._view(conn, row), True

    async def award(
        self, actor: Actor, principal: Principal, dispute_id: uuid.UUID, resolution: Resolution,
        document_sha256: str, note: str,
    ) -> tuple[Dispute, bool]:  # fmt: skip
        """An admin records an escalated dispute's award (its document an evidence item of type
        ``award``): resolved as the award says, money moved, closed (True). At or above the
        four-eyes amount the first admin's award waits (False), moving nothing, for a second,
        distinct admin with the same resolution and the same document (409 for the same admin
        again, or another resolution or document)."""
        now = self.clock.now()
        resolution = normalised(resolution)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, principal, dispute_id)
            DISPUTE.next(row["state"], "record_award")
            document = await conn.fetchrow(
                "SELECT kind FROM dispute_evidence WHERE dispute_id = $1 AND sha256 = $2",
                dispute_id, document_sha256,
            )  # fmt: skip
            if document is None or document["kind"] != "award":
                raise _bad(
                    "document_sha256",
                    "not an evidence item of type award of this dispute: upload it first",
                )
            facts = await self._facts(conn, row)
            self._check(resolution, row, facts, now)
            digest = resolution_digest(row["id"], row["trade_id"], resolution)
            if row["four_eyes"] and not await self._approve(
                conn, actor, row, "award", resolution, digest, document_sha256, note, now
            ):
                return await self._view(conn, row), False
            row = await conn.fetchrow(
                "UPDATE disputes SET award_sha256 = $2 WHERE id = $1 RETURNING *",
                dispute_id, document_sha256,
            )  # fmt: skip
            row = await self._conclude(conn, row, "record_award", resolution, digest, note,
                                       f"award:{document_sha256}", actor, now)  # fmt: skip
            return await self._view(conn, row), True

    async def _approve(
        self, conn: Connection, actor: Actor, row: Any, stage: Stage, resolution: Resolution,
        digest: str, document: str | None, note: str, now: datetime,
    ) -> bool:  # fmt: skip
        """Four-eyes at ``stage``, the dispute row locked (nothing else is touched): keep the
        actor's approval of ``resolution`` (at award, with its ``document``). True when it is
        a second, different member of staff's approval of the pending one (the caller then
        concludes); False while it waits. 409 for the proposer's own again, or for another one
        than the pending proposal; the proposer may replace its own."""
        approvals = await conn.fetch(
            "SELECT * FROM dispute_approvals WHERE dispute_id = $1 AND stage = $2"
            " ORDER BY approved_at",
            row["id"], stage,
        )  # fmt: skip
        detail: dict[str, Any] = {"stage": stage, "digest": digest, "note": note}
        if document is not None:
            detail["document_sha256"] = document
        mine = next((a for a in approvals if a["reviewer"] == actor.label), None)
        if mine is not None and (mine["digest"], mine["document_sha256"]) == (digest, document):
            raise Conflict(
                "you have already approved a resolution of this dispute: a second, different"
                " reviewer must approve it (four-eyes)" if stage == "review" else
                "you have already proposed this award: a second, different admin must record it"
                " (four-eyes)",
                extensions=_proposed(mine, "digest", "document_sha256"),
            )  # fmt: skip
        if mine is not None:
            # The proposer changes its own pending proposal (a deadline it named has passed,
            # say): the new one waits for a second member of staff in its place.
            await conn.execute(
                "UPDATE dispute_approvals SET resolution = $4, digest = $5, document_sha256 = $6,"
                " note = $7, approved_at = $8"
                " WHERE dispute_id = $1 AND stage = $2 AND reviewer = $3",
                row["id"], stage, actor.label, msgspec.to_builtins(resolution), digest, document,
                note, now,
            )  # fmt: skip
            await record(conn, actor, at=now, action=_AUDIT[stage].replaced,
                         subject_type="dispute", subject_id=row["id"],
                         detail=detail | _proposed(mine, "replaced",
                                                   "replaced_document_sha256"))  # fmt: skip
            return False
        first = approvals[0] if approvals else None
        if first is not None and (first["digest"], first["document_sha256"]) != (digest, document):
            pending = _proposed(first, "pending_digest", "pending_document_sha256")
            if stage == "review":
                raise ProposalPending(
                    f"reviewer {first['reviewer']} proposed another resolution"
                    f" ({first['digest']}): approve that one, or have it withdrawn",
                    extensions=pending,
                )
            raise AwardPending(
                f"admin {first['reviewer']} proposed another award ({first['digest']}, document"
                f" {first['document_sha256']}): record that one, or have its proposer replace it",
                extensions=pending,
            )
        await conn.execute(
            "INSERT INTO dispute_approvals (dispute_id, stage, reviewer, resolution, digest,"
            " document_sha256, note, approved_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            row["id"], stage, actor.label, msgspec.to_builtins(resolution), digest, document,
            note, now,
        )  # fmt: skip
        await record(conn, actor, at=now,
                     action=_AUDIT[stage].approved if first else _AUDIT[stage].proposed,
                     subject_type="dispute", subject_id=row["id"], detail=detail)  # fmt: skip
        return first is not None

    async def _facts(self, conn: Connection, row: Any) -> TradeFacts:
        facts = await self.hooks.facts(conn, row["trade_id"], True)
        if facts is None:  # settlement knew the trade when the dispute opened
            raise RuntimeError(f"settlement no longer knows trade {row['trade_id']}")
        return facts

    def _refund_limit(self, row: Any, facts: TradeFacts) -> int:
        """The most a refund may be: what escrow holds; a metered trade's, what the disputed
        periods charged."""
        return _charged(facts, row["periods"]) if facts.metered else facts.held_fen

    def _check(self, resolution: Resolution, row: Any, facts: TradeFacts, now: datetime) -> None:
        """422 for a resolution the trade cannot take."""
        limit = self._refund_limit(row, facts)
        if isinstance(resolution, Split) and not 0 < resolution.refund_fen < limit:
            raise _bad("resolution.refund_fen", f"a split refunds more than 0 and less than"
                                                f" {limit} fen")  # fmt: skip
        if isinstance(resolution, Redeliver) and resolution.by <= now:
            raise _bad("resolution.by", "the new delivery deadline must be in the future")
        if isinstance(resolution, (Redeliver, ExtendAcceptance)) and facts.state not in (
            "reserved",
            "disputed",
        ):
            raise _bad("resolution.kind", f"trade {facts.trade_id} is {facts.state}: there is"
                                          " no acceptance period left to move")  # fmt: skip

    async def _conclude(
        self, conn: Connection, row: Any, action: DisputeAction, resolution: Resolution,
        digest: str, note: str, resolved_by: str, actor: Actor, now: datetime,
    ) -> Any:  # fmt: skip
        """Resolve (or settle by agreement), register the digest, move the money exactly once
        and close, in the caller's transaction."""
        rid = actor.request_id
        row = await self._step(
            conn, row, action, actor.label, now, rid,
            resolution=msgspec.to_builtins(resolution), resolution_digest=digest,
            resolution_note=note, resolved_by=resolved_by,
        )  # fmt: skip
        # The money first (the trade, its accounts, then the ledger), then the resolution's
        # entry: the ledger's lock is always taken last.
        outcome = await self._move_money(conn, row, resolution, now, rid)
        seq = await self.hooks.register(conn, row["trade_id"], row["id"], "resolution", digest, now)
        await self._lift(conn, row, now, rid)
        # Stored as JSON objects (the jsonb columns), so SQL can read them.
        money = None if outcome is None else msgspec.to_builtins(
            Money(state=outcome.state, refund_fen=outcome.refund_fen,
                  seller_fen=outcome.seller_fen, fee_fen=outcome.fee_fen,
                  ledger_seq=outcome.ledger_seq)
        )  # fmt: skip
        row = await self._step(conn, row, "close", actor.label, now, rid, money=money,
                               resolution_seq=seq)  # fmt: skip
        await record(conn, actor, at=now, action=_CONCLUDED[action], subject_type="dispute",
                     subject_id=row["id"],
                     detail={"digest": digest, "kind": kind_of(resolution), "by": resolved_by,
                             "note": note, "money": _json(money)})  # fmt: skip
        return row

    async def _move_money(
        self, conn: Connection, row: Any, resolution: Resolution, now: datetime,
        rid: str | None,
    ) -> MoneyOutcome | None:  # fmt: skip
        trade, dispute = row["trade_id"], row["id"]
        periods: Sequence[int] = list(row["periods"])
        if isinstance(resolution, ReleaseToSeller):
            return await self.hooks.resolve(conn, trade, dispute, 0, periods, now, rid)
        if isinstance(resolution, RefundBuyer):
            facts = await self._facts(conn, row)
            refund = self._refund_limit(row, facts)
            return await self.hooks.resolve(conn, trade, dispute, refund, periods, now, rid)
        if isinstance(resolution, Split):
            return await self.hooks.resolve(
                conn, trade, dispute, resolution.refund_fen, periods, now, rid
            )
        if isinstance(resolution, Redeliver):
            # Delivered again by ``by``; the buyer then has its acceptance period again to
            # inspect what came (as long as the trade's was: executed to the first deadline).
            facts = await self._facts(conn, row)
            period = max(facts.acceptance_due - facts.executed_at, timedelta(0))
            await self.hooks.unhold(conn, trade, dispute, resolution.by + period, now, rid)
            return None
        assert isinstance(resolution, ExtendAcceptance)
        facts = await self._facts(conn, row)
        due = max(facts.acceptance_due, now) + timedelta(days=resolution.days)
        await self.hooks.unhold(conn, trade, dispute, due, now, rid)
        return None

    async def _lift(self, conn: Connection, row: Any, now: datetime, rid: str | None) -> None:
        if row["grants_suspended"]:
            await self.hooks.lift_grants(conn, row["trade_id"], now, rid)

    # --- the deadline sweep ----------------------------------------------------------------------

    async def move_due(self, limit: int = 500) -> int:
        """Move disputes whose respondent did not answer by ``respond_by`` to review; how many."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT * FROM disputes WHERE state = 'awaiting_response' AND respond_by <= $1"
                " ORDER BY respond_by, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                now, limit,
            )  # fmt: skip
            for row in rows:
                await self._step(conn, row, "respondent_deadline", "exchange", now, None)
                await record(conn, Actor(label="exchange:disputes"), at=now,
                             action="dispute.respondent_deadline", subject_type="dispute",
                             subject_id=row["id"],
                             detail={"respond_by": row["respond_by"].isoformat()})  # fmt: skip
        return len(rows)

    # --- the bundle ------------------------------------------------------------------------------

    async def bundle(self, principal: Principal, dispute_id: uuid.UUID) -> export.BundleExport:
        """The dispute's evidence bundle (`exchange.disputes.bundle`): a signed manifest of
        every item, the items, and the ledger's inclusion proofs of their entries; ready to
        stream (`exchange.disputes.export`), every item's file checked first."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM disputes WHERE id = $1", dispute_id)
            self._visible(principal, row, dispute_id)
            assert row is not None
            rows = await conn.fetch(
                "SELECT * FROM dispute_evidence WHERE dispute_id = $1 ORDER BY idx", dispute_id
            )
            items = [_item(r) for r in rows]
            # The items' entries, and the resolution's and the money's once it is resolved.
            seqs = [i.ledger_seq for i in items]
            if row["resolution_seq"] is not None:
                seqs.append(row["resolution_seq"])
            money = _json(row["money"])
            if isinstance(money, dict) and isinstance(money.get("ledger_seq"), int):
                seqs.append(money["ledger_seq"])
            proofs = await self.hooks.proofs(conn, sorted(set(seqs)), now)
            key = await self.keyring.current(conn)
        try:
            return await self._export_bundle(row, items, proofs, key, now)
        except (bundle.BundleInvalid, OSError) as error:
            # A stored item gone or changed on disk: the evidence store is damaged, and no
            # bundle is better than one that would not verify. Logged for the operator.
            log.exception("dispute_evidence_damaged", dispute_id=str(dispute_id))
            raise EvidenceDamaged(
                f"the evidence of dispute {dispute_id} cannot be bundled: {error}",
                extensions={"dispute_id": str(dispute_id)},
            ) from error

    async def _export_bundle(
        self, row: Any, items: Sequence[DisputeEvidenceItem], proofs: LedgerProofs,
        key: SigningKey, now: datetime,
    ) -> export.BundleExport:  # fmt: skip
        """The bundle with its manifest signed and its ledger part made, every item's file read
        once to check it before the answer starts (it streams, and a status sent cannot be
        taken back: a file changed after this cuts the stream short instead)."""
        prepared = await export.in_thread(
            bundle.prepare_bundle,
            exchange=self.settings.exchange_code, dispute=_bundle_dispute(row),
            items=[
                bundle.BundleItem(
                    index=i.index, kind=i.kind, name=i.name, media_type=i.media_type,
                    sha256=i.sha256, size=i.size, submitter=i.submitter,
                    submitter_org_id=None if i.submitter_org_id is None
                    else str(i.submitter_org_id),
                    submitted_at=_stamp(i.submitted_at), ledger_seq=i.ledger_seq,
                    path=self.store.path(i.sha256),
                )
                for i in items
            ],
            proofs=proofs,
            sign=lambda payload: key.sign_detached(payload, typ=bundle.MANIFEST_JWS_TYPE),
            exported_at=_stamp(now),
        )  # fmt: skip
        await export.check(prepared.items)
        return export.BundleExport(prepared, row["id"])


def _restored_due(row: Any, now: datetime) -> datetime:
    """The acceptance deadline when a hold is lifted without a resolution moving it: what was
    left of the period when the dispute opened is left again from now (never earlier than
    it was), so a dispute — a seller's above all — cannot use up the buyer's time to inspect."""
    due: datetime = row["acceptance_due"]
    opened: datetime = row["opened_at"]
    left = max(due - opened, timedelta(0))
    return max(due, now + left)


def _at_stake(facts: TradeFacts, data: DisputeIn) -> int:
    """What a resolution of the dispute could move, for the four-eyes rule: the claim or what
    escrow holds (a metered trade's: what the named periods charged), the larger. A small claim
    on a large trade still needs two reviewers, since one could refund it all."""
    held = _charged(facts, data.periods or ()) if facts.metered else facts.held_fen
    return max(data.claimed_fen, held)


def _charged(facts: TradeFacts, periods: Iterable[int]) -> int:
    """What the named posted billing periods of a metered trade charged: each period counted
    once, one that is not posted as nothing (opening a dispute refuses those first)."""
    posted = {p.period: p.charge_fen for p in facts.periods}
    return sum(posted.get(p, 0) for p in set(periods))


def _bundle_dispute(row: Any) -> dict[str, Any]:
    """The dispute as the bundle's manifest states it."""
    return {
        "id": str(row["id"]), "trade_id": str(row["trade_id"]),
        "buyer_org_id": str(row["buyer_org_id"]), "seller_org_id": str(row["seller_org_id"]),
        "claimant": row["claimant"], "reason": row["reason"], "claimed_fen": row["claimed_fen"],
        "state": row["state"], "opened_at": _stamp(row["opened_at"]),
        "resolution": _json(row["resolution"]), "resolution_digest": row["resolution_digest"],
        "resolution_seq": row["resolution_seq"], "money": _json(row["money"]),
    }  # fmt: skip


def _item(row: Any) -> DisputeEvidenceItem:
    return DisputeEvidenceItem(
        index=row["idx"], kind=row["kind"], name=row["name"], media_type=row["media_type"],
        sha256=row["sha256"], size=row["size"], submitter=row["submitter"],
        submitter_org_id=row["submitter_org_id"], submitted_at=row["submitted_at"],
        ledger_seq=row["ledger_seq"],
    )  # fmt: skip


def is_open(state: str) -> bool:
    return state in OPEN
