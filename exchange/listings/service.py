"""Products from draft to listed: submission under the policy lists, review, certificates, events.

Every state change, its audit row and its outbox event commit in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import asyncpg
import msgspec

from contracts.policy import store as policy_store
from contracts.policy.evaluator import evaluate
from contracts.policy.schemas import Decision
from contracts.policy.service import PolicyService
from exchange.identity import repository as identity_repo
from exchange.identity.schemas import Organisation
from exchange.listings import objection_repository
from exchange.listings.lifecycle import (
    changed_fields,
    evaluation_document,
    is_material,
    metadata_problems,
    product_code,
)
from exchange.listings.schemas import (
    Certificate,
    CertificateStatus,
    LegalProhibitionProposal,
    Product,
    ProductDraft,
    ProductMetadata,
    ProductRow,
    ReviewSummary,
    ReviewVerdict,
    RevisionInfo,
)
from exchange.listings.states import PRODUCT, SUSPENDING, ProductState, held_here, next_state
from exchange.platform.audit import Actor, record
from exchange.platform.auth import Principal
from exchange.platform.canonical import sha256_digest
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import Conflict, Forbidden, InvalidInput, NotFound
from exchange.platform.events import ListingEventData
from exchange.platform.outbox import enqueue
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, jws_header
from exchange.platform.validation import collect_errors
from exchange.review.schemas import ReviewCase
from exchange.review.service import (
    latest_case_for,
    open_case,
    open_proposal,
    withdraw_open_cases,
)

CERTIFICATE_TYPE = "dataex-listing-certificate+jws"
# A certificate is valid this long; every new revision, reinstatement or re-issue renews it.
CERTIFICATE_VALIDITY = timedelta(days=365)
STAFF = ("reviewer", "admin")
# The listing event of each action staff or the seller take on a listed product.
_EVENT_OF = {
    "suspend": "suspended",
    "hold_for_objection": "suspended",
    "reinstate": "published",
    "delist": "delisted",
}

# What other rooms keep in step with a product, called inside the transaction that changes it:
# `on_state(conn, product_id, at)` after any change of its state or live revision (the catalog
# projection), `on_event(conn, event, data, at)` for each listing event of this exchange's own
# products (the signed feed peers follow). The composition root fills them in.
StateHook = Callable[[Connection, uuid.UUID, datetime], Awaitable[None]]
EventHook = Callable[[Connection, str, ListingEventData, datetime], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ListingHooks:
    on_state: Sequence[StateHook] = ()
    on_event: Sequence[EventHook] = ()


def _revision(row: Any) -> RevisionInfo:
    return RevisionInfo(
        number=row["number"],
        digest=row["digest"],
        change=row["change"],
        created_at=row["created_at"],
        metadata=msgspec.convert(row["metadata"], ProductMetadata),
    )


async def fetch_revision(conn: Executor, product_id: uuid.UUID, number: int) -> RevisionInfo:
    """One revision of a product; it must exist (its number comes from the product row)."""
    row = await conn.fetchrow(
        "SELECT * FROM product_revisions WHERE product_id = $1 AND number = $2",
        product_id,
        number,
    )
    if row is None:
        raise NotFound(f"product {product_id} has no revision {number}")
    return _revision(row)


def certificate_claims(
    settings: Settings,
    code: str,
    revision: RevisionInfo,
    seller_name: str,
    seller_uscc: str | None,
    at: datetime,
) -> dict[str, Any]:
    m = revision.metadata
    pi = m.classification.personal_info
    return {
        "iss": settings.exchange_code,
        "iss_name": settings.exchange_name,
        "sub": code,
        "jti": str(uuid.uuid4()),
        "iat": int(at.timestamp()),
        "exp": int((at + CERTIFICATE_VALIDITY).timestamp()),
        "revision": revision.number,
        "revision_digest": revision.digest,
        "product": {
            "name_zh": m.name_zh,
            "name_en": m.name_en,
            "type": m.product_type,
            "sector": m.sector,
            "delivery": list(m.delivery),
        },
        "seller": {"name": seller_name, "uscc": seller_uscc},
        "classification": {
            "data_level": m.classification.data_level,
            "general_grade": m.classification.general_grade,
            "personal_info": {
                "present": pi.present,
                "state": pi.state,
                "sensitive": pi.sensitive,
            },
        },
        "rights": msgspec.to_builtins(m.rights),
        "status_url": f"{settings.public_url}/v1/certificates/{code}/status",
    }


class ListingService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        settings: Settings,
        keyring: KeyRing,
        hooks: ListingHooks,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.settings = settings
        self.keyring = keyring
        self.hooks = hooks
        self.policy = PolicyService(pool, clock)

    async def changed(self, conn: Connection, product_id: uuid.UUID, at: datetime) -> None:
        """Tell the rooms that follow products (the catalog) that this one changed."""
        for hook in self.hooks.on_state:
            await hook(conn, product_id, at)

    # --- reading ------------------------------------------------------------------------

    async def _row(self, conn: Executor, product_id: uuid.UUID, *, lock: bool = False) -> Any:
        suffix = " FOR UPDATE" if lock else ""
        return await conn.fetchrow(f"SELECT * FROM products WHERE id = $1{suffix}", product_id)

    async def locked(self, conn: Connection, product_id: uuid.UUID) -> Any:
        """The product's row, locked (`FOR UPDATE`) in the caller's transaction; None if none."""
        return await self._row(conn, product_id, lock=True)

    async def _visible_row(
        self,
        conn: Executor,
        principal: Principal,
        product_id: uuid.UUID,
        *,
        lock: bool = False,
        staff_may: bool = True,
    ) -> Any:
        """The product if the caller's organisation sells it (or is staff); otherwise 404."""
        row = await self._row(conn, product_id, lock=lock)
        if row is None or (
            row["seller_org_id"] != principal.org_id and not (staff_may and principal.has(*STAFF))
        ):
            raise NotFound(f"no product {product_id}")
        return row

    async def _view(self, conn: Executor, row: Any, *, with_draft: bool = True) -> Product:
        revisions = {
            r["number"]: _revision(r)
            for r in await conn.fetch(
                "SELECT * FROM product_revisions WHERE product_id = $1 AND number = ANY($2::int[])",
                row["id"],
                [n for n in (row["live_revision"], row["pending_revision"]) if n is not None],
            )
        }
        case = await latest_case_for(conn, row["id"])
        policy = await conn.fetchval(
            "SELECT decision FROM policy_decisions WHERE subject_type = 'listing'"
            " AND subject_id = $1 ORDER BY id DESC LIMIT 1",
            str(row["id"]),
        )
        return Product(
            id=row["id"],
            seller_org_id=row["seller_org_id"],
            state=row["state"],
            product_code=row["product_code"],
            draft=row["draft"] if with_draft else None,
            live=revisions.get(row["live_revision"]),
            pending=revisions.get(row["pending_revision"]),
            suspended_reason=row["suspended_reason"],
            suspended_by=row["suspended_by"],
            review=None if case is None else _summary(case),
            policy=None if policy is None else msgspec.convert(policy, Decision),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            legal_prohibition=row["legal_prohibition"],
        )

    async def count_by_state(self) -> dict[ProductState, int]:
        """How many products are in each state, every state named (0 included), in the order
        `ProductState` names them. A sequential scan of ``products``: no index leads with the
        state, and one would not spare reading every listed product's entry to count them
        (measured on PostgreSQL 18: 0.4 s at a million products with their certificates; a few
        ms at the thousands an exchange lists)."""
        rows = await self.pool.fetch("SELECT state, count(*) AS n FROM products GROUP BY state")
        found = {row["state"]: int(row["n"]) for row in rows}
        return {state: found.get(state, 0) for state in get_args(ProductState)}

    async def get(self, principal: Principal, product_id: uuid.UUID) -> Product:
        row = await self._visible_row(self.pool, principal, product_id)
        return await self._view(self.pool, row)

    async def list_own(
        self, principal: Principal, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Product]:
        args: list[object] = [principal.org_id]
        keyset = ""
        if after is not None:
            args += list(after)
            keyset = " AND (created_at, id) < ($2, $3)"
        args.append(limit)
        rows = await self.pool.fetch(
            f"SELECT * FROM products WHERE seller_org_id = $1{keyset}"
            f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
        return [await self._view(self.pool, row) for row in rows]

    async def list_listed(
        self, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Product]:
        args: list[object] = []
        keyset = ""
        if after is not None:
            args += list(after)
            keyset = " AND (created_at, id) < ($1, $2)"
        args.append(limit)
        rows = await self.pool.fetch(
            f"SELECT * FROM products WHERE state = 'listed'{keyset}"
            f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
        return [await self._view(self.pool, row, with_draft=False) for row in rows]

    async def staff_search(
        self,
        principal: Principal,
        *,
        text: str | None = None,
        state: ProductState | None = None,
        after: tuple[datetime, uuid.UUID] | None = None,
        limit: int,
    ) -> list[ProductRow]:
        """Products in every state, for staff only, newest first (keyset on ``created_at, id``).
        ``text`` matches, case-insensitively and anywhere in them, the product code, the id,
        the names of the live and pending revisions and of the draft, and the seller's name."""
        _staff_only(principal)
        pattern = None if not text else f"%{_like_escaped(text)}%"
        return await self._staff_rows(
            "($1::text IS NULL OR p.state = $1)"
            " AND ($2::text IS NULL OR p.product_code ILIKE $2 OR p.id::text ILIKE $2"
            " OR l.metadata->>'name_zh' ILIKE $2 OR l.metadata->>'name_en' ILIKE $2"
            " OR r.metadata->>'name_zh' ILIKE $2 OR r.metadata->>'name_en' ILIKE $2"
            " OR p.draft->>'name_zh' ILIKE $2 OR p.draft->>'name_en' ILIKE $2"
            " OR o.name ILIKE $2)"
            " AND ($3::timestamptz IS NULL OR (p.created_at, p.id) < ($3, $4::uuid))"
            " ORDER BY p.created_at DESC, p.id DESC LIMIT $5",
            state, pattern, after[0] if after else None, after[1] if after else None, limit,
        )  # fmt: skip

    async def staff_rows_by_code(
        self, principal: Principal, codes: Sequence[str]
    ) -> dict[str, ProductRow]:
        """The products with these product codes (staff only), by code; unknown codes are
        left out."""
        _staff_only(principal)
        if not codes:
            return {}
        rows = await self._staff_rows("p.product_code = ANY($1::text[])", list(set(codes)))
        return {row.product_code: row for row in rows if row.product_code is not None}

    async def _staff_rows(self, where: str, *args: object) -> list[ProductRow]:
        rows = await self.pool.fetch(
            "SELECT p.id, p.product_code, p.seller_org_id, o.name AS seller_name, p.state,"
            " p.suspended_by, p.legal_prohibition, p.recognised_from, p.created_at, p.updated_at,"
            " coalesce(l.metadata->>'name_zh', r.metadata->>'name_zh', p.draft->>'name_zh')"
            " AS name_zh,"
            " coalesce(l.metadata->>'name_en', r.metadata->>'name_en', p.draft->>'name_en')"
            " AS name_en"
            " FROM products p JOIN organisations o ON o.id = p.seller_org_id"
            " LEFT JOIN product_revisions l ON l.product_id = p.id AND l.number = p.live_revision"
            " LEFT JOIN product_revisions r"
            " ON r.product_id = p.id AND r.number = p.pending_revision"
            f" WHERE {where}",
            *args,
        )
        return [msgspec.convert(dict(row), ProductRow) for row in rows]

    # --- the seller's drafts ------------------------------------------------------------

    async def create(self, actor: Actor, principal: Principal, draft: ProductDraft) -> Product:
        now = self.clock.now()
        product_id = uuid.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO products (id, seller_org_id, state, draft, created_at, updated_at)"
                " VALUES ($1, $2, 'draft', $3, $4, $4)",
                product_id,
                principal.org_id,
                msgspec.to_builtins(draft),
                now,
            )
            await record(
                conn,
                actor,
                at=now,
                action="product.created",
                subject_type="product",
                subject_id=product_id,
                after=draft,
            )
            return await self._view(conn, await self._row(conn, product_id))

    async def edit(
        self, actor: Actor, principal: Principal, product_id: uuid.UUID, patch: ProductDraft
    ) -> Product:
        """Merge ``patch`` into the draft (fields given replace fields held)."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._visible_row(conn, principal, product_id, lock=True, staff_may=False)
            next_state(row["state"], "edit")
            before = row["draft"] or {}
            after = before | msgspec.to_builtins(patch)
            await conn.execute(
                "UPDATE products SET draft = $2, updated_at = $3 WHERE id = $1",
                product_id, after, now,
            )  # fmt: skip
            await record(
                conn,
                actor,
                at=now,
                action="product.edited",
                subject_type="product",
                subject_id=product_id,
                before=before,
                after=after,
                detail={"fields": sorted(msgspec.to_builtins(patch))},
            )
            return await self._view(conn, await self._row(conn, product_id))

    # --- submission and review ----------------------------------------------------------

    @staticmethod
    def complete(draft: dict[str, Any] | None) -> ProductMetadata:
        """The draft as complete metadata, or a 422 listing every missing or bad item."""
        errors = collect_errors(ProductMetadata, draft or {})
        if errors:
            raise InvalidInput(
                f"the product is incomplete: {len(errors)} item(s) to fix before submitting",
                errors=errors,
            )
        metadata = msgspec.convert(draft, ProductMetadata)
        check_metadata(metadata)
        return metadata

    async def submit(self, actor: Actor, principal: Principal, product_id: uuid.UUID) -> Product:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._visible_row(conn, principal, product_id, lock=True, staff_may=False)
            next_state(row["state"], "submit")
            metadata = self.complete(row["draft"])
            document = evaluation_document(metadata, legal_prohibition=row["legal_prohibition"])
            decision = evaluate(document, await self.policy.current(conn))
            decision_id = await self.policy.record(
                conn, subject_type="listing", subject_id=str(product_id), document=document,
                decision=decision,
            )  # fmt: skip
            if decision.decision == "reject":
                await conn.execute(
                    "UPDATE products SET state = $3, updated_at = $2 WHERE id = $1",
                    product_id, now, next_state(row["state"], "policy_reject"),
                )  # fmt: skip
                await policy_store.set_subject_open(conn, "listing", str(product_id), False)
                await record(
                    conn,
                    actor,
                    at=now,
                    action="product.rejected_by_policy",
                    subject_type="product",
                    subject_id=product_id,
                    detail={
                        "rules": [h.rule for h in decision.hits],
                        "list_version": decision.list_version,
                    },
                )
                return await self._view(conn, await self._row(conn, product_id))
            number, case_id = await self._open_review(
                conn, row, metadata, "initial", decision, decision_id, now
            )
            await record(
                conn,
                actor,
                at=now,
                action="product.submitted",
                subject_type="product",
                subject_id=product_id,
                after=metadata,
                detail={
                    "revision": number,
                    "case_id": str(case_id),
                    "rules": [h.rule for h in decision.hits],
                    "four_eyes": decision.four_eyes,
                },
            )
            return await self._view(conn, await self._row(conn, product_id))

    async def _open_review(
        self,
        conn: Connection,
        row: Any,
        metadata: ProductMetadata,
        change: str,
        decision: Decision,
        decision_id: int,
        now: datetime,
    ) -> tuple[int, uuid.UUID]:
        """Store the revision as pending and open its review case; a first listing goes
        in_review, a listed product stays listed meanwhile."""
        number = await self._add_revision(conn, row["id"], metadata, change, now)
        await conn.execute(
            "UPDATE products SET pending_revision = $2, updated_at = $3,"
            " state = CASE WHEN $4 THEN 'in_review' ELSE state END WHERE id = $1",
            row["id"], number, now, change == "initial",
        )  # fmt: skip
        case_id = await open_case(
            conn, kind="listing", subject_id=row["id"], subject_org_id=row["seller_org_id"],
            revision=number, decision=decision, policy_decision_id=decision_id, at=now,
        )  # fmt: skip
        return number, case_id

    async def _add_revision(
        self,
        conn: Connection,
        product_id: uuid.UUID,
        metadata: ProductMetadata,
        change: str,
        now: datetime,
    ) -> int:
        number: int = await conn.fetchval(
            "SELECT coalesce(max(number), 0) + 1 FROM product_revisions WHERE product_id = $1",
            product_id,
        )
        await conn.execute(
            "INSERT INTO product_revisions (product_id, number, metadata, digest, change,"
            " created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            product_id, number, msgspec.to_builtins(metadata), sha256_digest(metadata), change,
            now,
        )  # fmt: skip
        return number

    async def revise(
        self, actor: Actor, principal: Principal, product_id: uuid.UUID, metadata: ProductMetadata
    ) -> Product:
        """A change to a listed product: cosmetic goes live now; material goes to review while
        the listed revision stays live."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._visible_row(conn, principal, product_id, lock=True, staff_may=False)
            if row["recognised_from"] is not None:
                raise Conflict(
                    f"recognised from {row['recognised_from']}: revise it there, where it is"
                    " certified; the change reaches this exchange through recognition"
                )
            next_state(row["state"], "revise")
            if row["pending_revision"] is not None:
                raise Conflict(
                    f"revision {row['pending_revision']} is already under review; wait for its"
                    " decision before another change",
                )
            check_metadata(metadata)
            live = await fetch_revision(conn, product_id, row["live_revision"])
            changed = changed_fields(live.metadata, metadata)
            if not changed:
                raise Conflict("nothing changed: the revision equals the listed one")
            extra: dict[str, str] = {}
            if not is_material(changed):
                change = "cosmetic"
                number = await self._add_revision(conn, product_id, metadata, change, now)
                await self._go_live(conn, actor, row, number, now, event="published")
            else:
                change = "material"
                document = evaluation_document(metadata, legal_prohibition=row["legal_prohibition"])
                decision = evaluate(document, await self.policy.current(conn))
                if decision.decision == "reject":
                    raise InvalidInput(
                        "the change is refused by the negative list; the listed revision stays"
                        " live",
                        extensions={"policy": msgspec.to_builtins(decision)},
                    )
                decision_id = await self.policy.record(
                    conn, subject_type="listing", subject_id=str(product_id), document=document,
                    decision=decision,
                )  # fmt: skip
                number, case_id = await self._open_review(
                    conn, row, metadata, change, decision, decision_id, now
                )
                extra = {"case_id": str(case_id)}
            await record(
                conn,
                actor,
                at=now,
                action="product.revised",
                subject_type="product",
                subject_id=product_id,
                before=live.metadata,
                after=metadata,
                detail={"revision": number, "change": change, "fields": changed, **extra},
            )
            return await self._view(conn, await self._row(conn, product_id))

    async def delivery_refusal(self, conn: Connection, product_id: uuid.UUID) -> str | None:
        """Why the negative list in force refuses delivering this product now (None: it does
        not). The delivery room asks before each delivery token, through the wiring."""
        row = await conn.fetchrow(
            "SELECT live_revision, legal_prohibition, state FROM products WHERE id = $1",
            product_id,
        )
        if row is None or row["live_revision"] is None:
            return f"product {product_id} has no live revision"
        metadata = (await fetch_revision(conn, product_id, row["live_revision"])).metadata
        document = evaluation_document(metadata, legal_prohibition=row["legal_prohibition"])
        decision = evaluate(document, await self.policy.current(conn))
        if decision.decision != "reject":
            return None
        rules = ", ".join(hit.rule for hit in decision.hits if hit.list == "negative") or "a rule"
        return f"the negative list {decision.list_version} now refuses this product ({rules})"

    async def on_case_decided(
        self, conn: Connection, case: ReviewCase, verdict: str, actor: Actor, at: datetime
    ) -> None:
        """Called by the review queue when a listing case closes."""
        row = await self._row(conn, case.subject_id, lock=True)
        assert row is not None and case.revision == row["pending_revision"]
        if row["state"] == "in_review":  # a first listing
            state = next_state(row["state"], verdict)  # type: ignore[arg-type]
            if state == "listed":
                await self._go_live(conn, actor, row, case.revision, at, event="published")
            else:
                await conn.execute(
                    "UPDATE products SET state = $2, pending_revision = NULL, updated_at = $3"
                    " WHERE id = $1",
                    row["id"], state, at,
                )  # fmt: skip
                if state == "rejected":
                    await policy_store.set_subject_open(conn, "listing", str(row["id"]), False)
            await record(
                conn,
                actor,
                at=at,
                action=f"product.{state}",
                subject_type="product",
                subject_id=row["id"],
                detail={"case_id": str(case.id), "revision": case.revision},
            )
            return
        # A change to a product already listed (or since suspended).
        if verdict == "approve":
            await self._go_live(conn, actor, row, case.revision, at, event="published")
        else:
            await conn.execute(
                "UPDATE products SET pending_revision = NULL, updated_at = $2 WHERE id = $1",
                row["id"], at,
            )  # fmt: skip
        await record(
            conn,
            actor,
            at=at,
            action=f"product.change_{verdict}",
            subject_type="product",
            subject_id=row["id"],
            detail={"case_id": str(case.id), "revision": case.revision},
        )

    # --- a legal prohibition (NEG-08), proposed by staff and decided by two reviewers ------

    async def propose_prohibition(
        self, actor: Actor, product_id: uuid.UUID, data: LegalProhibitionProposal
    ) -> ReviewCase:
        """Open the four-eyes case that decides ``data``; 404 for an unknown product, 409 while
        another proposal for it is open."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._row(conn, product_id, lock=True)
            if row is None:
                raise NotFound(f"no product {product_id}")
            proposal = msgspec.to_builtins(data)
            case = await open_proposal(
                conn, kind="legal_prohibition", subject_id=product_id,
                subject_org_id=row["seller_org_id"], rules=["NEG-08"], proposal=proposal, at=now,
            )  # fmt: skip
            await record(
                conn, actor, at=now, action="product.legal_prohibition_proposed",
                subject_type="product", subject_id=product_id,
                detail={"case_id": str(case.id), **proposal},
            )  # fmt: skip
        return case

    async def on_prohibition_decided(
        self, conn: Connection, case: ReviewCase, verdict: str, actor: Actor, at: datetime
    ) -> None:
        """Called by the review queue when a legal-prohibition case closes: approved, the
        product's prohibition is recorded (orders, submissions, revisions and delivery tokens
        evaluate it from then on)."""
        if verdict != "approve" or case.proposal is None:
            return
        proposal = msgspec.convert(case.proposal, LegalProhibitionProposal)
        before = await self._row(conn, case.subject_id, lock=True)
        assert before is not None
        await conn.execute(
            "UPDATE products SET legal_prohibition = $2, updated_at = $3 WHERE id = $1",
            case.subject_id, proposal.prohibited, at,
        )  # fmt: skip
        await record(
            conn, actor, at=at, action="product.legal_prohibition_recorded",
            subject_type="product", subject_id=case.subject_id,
            before={"legal_prohibition": before["legal_prohibition"]},
            after={"legal_prohibition": proposal.prohibited},
            detail={"case_id": str(case.id), "prohibited": proposal.prohibited,
                    "reason": proposal.reason, "reference": proposal.reference},
        )  # fmt: skip

    # --- listing, certificates, events --------------------------------------------------

    async def _assign_code(self, conn: Connection, at: datetime) -> str:
        year = at.year
        sequence: int = await conn.fetchval(
            "INSERT INTO product_code_sequences (year, last) VALUES ($1, 1)"
            " ON CONFLICT (year) DO UPDATE SET last = product_code_sequences.last + 1"
            " RETURNING last",
            year,
        )
        return product_code(self.settings.exchange_code, year, sequence)

    async def _go_live(
        self,
        conn: Connection,
        actor: Actor,
        row: Any,
        number: int | None,
        at: datetime,
        *,
        event: str,
    ) -> None:
        assert number is not None
        code = row["product_code"] or await self._assign_code(conn, at)
        revision = await fetch_revision(conn, row["id"], number)
        jws, _, seller = await self._certify(conn, row, code, revision, at)
        state = "listed" if row["state"] in ("in_review", "listed") else row["state"]
        await conn.execute(
            "UPDATE products SET state = $2, live_revision = $3, pending_revision = NULL,"
            " product_code = $4, certificate = $5, updated_at = $6 WHERE id = $1",
            row["id"], state, number, code, jws, at,
        )  # fmt: skip
        await self.changed(conn, row["id"], at)
        if state == "listed":
            await self._event(
                conn,
                actor,
                "published",
                code,
                row["id"],
                revision,
                at,
                seller_name=seller.name,
                seller_uscc=seller.uscc,
            )

    async def _certify(
        self, conn: Connection, row: Any, code: str, revision: RevisionInfo, at: datetime
    ) -> tuple[str, dict[str, Any], Organisation]:
        """A listing certificate of ``revision`` issued at ``at`` (its own ``jti``) with the
        current key: the JWS, its claims, and the seller it names."""
        seller = await identity_repo.get_organisation(conn, row["seller_org_id"])
        assert seller is not None
        claims = certificate_claims(self.settings, code, revision, seller.name, seller.uscc, at)
        key = await self.keyring.current(conn)
        return key.sign_compact(claims, typ=CERTIFICATE_TYPE), claims, seller

    async def _event(
        self,
        conn: Connection,
        actor: Actor,
        event: str,
        code: str,
        product_id: uuid.UUID,
        revision: RevisionInfo | None,
        at: datetime,
        **extra: Any,
    ) -> None:
        data = ListingEventData(
            product_id=str(product_id),
            product_code=code,
            exchange=self.settings.exchange_code,
            revision=revision.number if revision else None,
            revision_digest=revision.digest if revision else None,
            **extra,
        )
        for hook in self.hooks.on_event:
            await hook(conn, event, data, at)
        await enqueue(
            conn,
            subject=self.settings.subject("listing", event),
            event_type=f"dx.listing.{event}",
            source=f"urn:dataex:exchange:{self.settings.exchange_code}",
            event_subject=code,
            data=data,
            at=at,
            request_id=actor.request_id,
        )

    async def certificate(self, product_id: uuid.UUID) -> Certificate:
        row = await self._row(self.pool, product_id)
        if row is None or row["certificate"] is None or row["state"] != "listed":
            raise NotFound(f"no listed product {product_id}")
        digest = (await fetch_revision(self.pool, product_id, row["live_revision"])).digest
        header = jws_header(row["certificate"])
        return Certificate(
            product_code=row["product_code"], revision=row["live_revision"],
            revision_digest=digest, jws=row["certificate"], kid=header["kid"],
        )  # fmt: skip

    async def certificate_status(self, code: str) -> CertificateStatus:
        row = await self.pool.fetchrow("SELECT * FROM products WHERE product_code = $1", code)
        if row is None:
            raise NotFound(f"no product code {code}")
        digest = (await fetch_revision(self.pool, row["id"], row["live_revision"])).digest
        now = self.clock.now()
        objections = await objection_repository.public_for(self.pool, row["id"])
        claims = {
            "iss": self.settings.exchange_code,
            "sub": code,
            "state": row["state"],
            "revision": row["live_revision"],
            "revision_digest": digest,
            "iat": int(now.timestamp()),
            "objections": msgspec.to_builtins(objections),
        }
        key = await self.keyring.current(self.pool)
        return CertificateStatus(
            product_code=code, state=row["state"], revision=row["live_revision"],
            revision_digest=digest, checked_at=now,
            jws=key.sign_compact(claims, typ="dataex-certificate-status+jws"),
            objections=objections,
        )  # fmt: skip

    # --- staff and seller actions on listed products -------------------------------------

    async def _set_state(
        self,
        conn: Connection,
        product_id: uuid.UUID,
        state: str,
        action: str,
        reason: str | None,
        at: datetime,
    ) -> None:
        """Write a state the transition table gave for ``action`` (with who suspended it)."""
        suspended = state == "suspended"
        await conn.execute(
            "UPDATE products SET state = $2, suspended_reason = $3, suspended_by = $4,"
            " updated_at = $5 WHERE id = $1",
            product_id, state, reason if suspended else None,
            SUSPENDING.get(action) if suspended else None, at,
        )  # fmt: skip
        await self.changed(conn, product_id, at)

    async def transition(
        self,
        actor: Actor,
        principal: Principal,
        product_id: uuid.UUID,
        action: str,
        reason: str | None,
    ) -> Product:
        """suspend / reinstate (staff) and delist (the seller or staff)."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._visible_row(
                conn, principal, product_id, lock=True, staff_may=principal.has(*STAFF)
            )
            if action != "delist" and not principal.has(*STAFF):
                raise NotFound(f"no product {product_id}")
            await self.take_action(conn, actor, row, action, reason, now)
            return await self._view(conn, await self._row(conn, product_id))

    async def take_action(
        self,
        conn: Connection,
        actor: Actor,
        row: Any,
        action: str,
        reason: str | None,
        at: datetime,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Suspend (``suspend``, or ``hold_for_objection`` pending an objection), reinstate or
        delist the product of ``row`` (locked by the caller) in the caller's transaction: the
        transition table's next state, a fresh certificate on reinstatement, the audit row and
        the listing event (``dx.listing.suspended|published|delisted``: grants follow it)."""
        product_id, event = row["id"], _EVENT_OF[action]
        state = next_state(row["state"], action)  # type: ignore[arg-type]
        revision = None
        if row["live_revision"] is not None:
            revision = await fetch_revision(conn, product_id, row["live_revision"])
        detail = {"reason": reason, "from": row["state"], **(detail or {})}
        if action == "reinstate" and row["recognised_from"] is None and revision is not None:
            # The suspension revoked every certificate issued until then (peers refuse
            # them): listed again, the product gets a fresh one, which its feed item carries.
            jws, claims, _ = await self._certify(conn, row, row["product_code"], revision, at)
            await conn.execute(
                "UPDATE products SET certificate = $2 WHERE id = $1", product_id, jws
            )
            detail["certificate_jti"] = claims["jti"]
        await self._set_state(conn, product_id, state, action, reason, at)
        if state == "delisted":
            await policy_store.set_subject_open(conn, "listing", str(product_id), False)
            # A change still under review dies with the listing.
            if await withdraw_open_cases(conn, "listing", product_id, at):
                await conn.execute(
                    "UPDATE products SET pending_revision = NULL WHERE id = $1", product_id
                )
        await record(
            conn,
            actor,
            at=at,
            action=f"product.{action}",
            subject_type="product",
            subject_id=product_id,
            detail=detail,
        )
        await self._event(
            conn, actor, event, row["product_code"], product_id, revision, at, reason=reason
        )

    async def keep_suspended(
        self, conn: Connection, actor: Actor, product_id: uuid.UUID, reason: str, at: datetime
    ) -> None:
        """A suspension pending an objection becomes the staff's own (``suspended_by``
        exchange, ``reason``): the objection was upheld, so dismissing another one no longer
        reinstates the listing. Not a transition: the product stays suspended."""
        await conn.execute(
            "UPDATE products SET suspended_by = $2, suspended_reason = $3, updated_at = $4"
            " WHERE id = $1 AND state = 'suspended'",
            product_id, SUSPENDING["suspend"], reason, at,
        )  # fmt: skip
        await self.changed(conn, product_id, at)
        await record(
            conn, actor, at=at, action="product.suspension_kept", subject_type="product",
            subject_id=product_id, detail={"reason": reason, "suspended_by": SUSPENDING["suspend"]},
        )  # fmt: skip

    # --- products recognised from a peer exchange (the recognition room's entry points) ------

    async def recognise(
        self,
        conn: Connection,
        *,
        product_id: uuid.UUID | None,
        seller_id: uuid.UUID,
        code: str,
        origin: str,
        revision: int,
        metadata: ProductMetadata,
        digest: str,
        certificate: str,
        at: datetime,
        hold: str | None = None,
    ) -> uuid.UUID:
        """List here a revision the origin exchange certified (a new product on the first
        one). A suspension or delisting decided here stays: the origin's news does not undo
        it; the origin's own suspension, withdrawn trust and a local refusal it does.

        ``hold`` (a reason): trust in the origin is being given back and its feed is still
        being read, so the product is suspended for withdrawn trust instead of listed, until
        `retrust_origin` lists it."""
        first = product_id is None
        if product_id is None:
            product_id = uuid.uuid4()
            await conn.execute(
                "INSERT INTO products (id, seller_org_id, state, product_code, recognised_from,"
                " created_at, updated_at) VALUES ($1, $2, 'draft', $3, $4, $5, $5)",
                product_id, seller_id, code, origin, at,
            )  # fmt: skip
        await conn.execute(
            "INSERT INTO product_revisions (product_id, number, metadata, digest, change,"
            " created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            product_id, revision, msgspec.to_builtins(metadata), digest,
            "initial" if first else "material", at,
        )  # fmt: skip
        row = await self._row(conn, product_id, lock=True)
        state, suspended_by, reason = row["state"], row["suspended_by"], row["suspended_reason"]
        if not held_here(state, suspended_by):
            state, suspended_by, reason = next_state(state, "recognise"), None, None
            if hold is not None:
                state = next_state(state, "distrust")
                suspended_by, reason = SUSPENDING["distrust"], hold
        await conn.execute(
            "UPDATE products SET live_revision = $2, certificate = $3, updated_at = $4,"
            " state = $5, suspended_by = $6, suspended_reason = $7 WHERE id = $1",
            product_id, revision, certificate, at, state, suspended_by, reason,
        )  # fmt: skip
        await self.changed(conn, product_id, at)
        return product_id

    async def hold_recognised(
        self,
        conn: Connection,
        product_id: uuid.UUID,
        action: Literal["origin_suspend", "origin_delist", "refuse_here"],
        reason: str,
        at: datetime,
    ) -> None:
        """The origin suspended or delisted the product, or this exchange's list refuses its
        newer revision. A product delisted here stays so; one suspended by staff here keeps
        that suspension (and its reason) unless the origin delists it."""
        row = await self._row(conn, product_id, lock=True)
        if PRODUCT.is_final(row["state"]):
            return
        if action != "origin_delist" and held_here(row["state"], row["suspended_by"]):
            return
        state = next_state(row["state"], action)
        await self._set_state(conn, product_id, state, action, reason, at)

    async def distrust_origin(
        self, conn: Connection, origin: str, reason: str, at: datetime
    ) -> int:
        """Trust in ``origin`` withdrawn: its products listed here are suspended now."""
        hidden = await conn.fetch(
            "UPDATE products SET state = $3, suspended_reason = $2, suspended_by = 'distrust',"
            " updated_at = $4 WHERE recognised_from = $1 AND state = 'listed' RETURNING id",
            origin, reason, next_state("listed", "distrust"), at,
        )  # fmt: skip
        for product in hidden:
            await self.changed(conn, product["id"], at)
        return len(hidden)

    async def retrust_origin(
        self, conn: Connection, origin: str, product_ids: Sequence[uuid.UUID], at: datetime
    ) -> int:
        """Trust in ``origin`` given back: of ``product_ids`` (those the origin still lists),
        the ones that only distrust had suspended are listed again."""
        restored = await conn.fetch(
            "UPDATE products SET state = $3, suspended_reason = NULL, suspended_by = NULL,"
            " updated_at = $4 WHERE recognised_from = $1 AND id = ANY($2::uuid[])"
            " AND state = 'suspended' AND suspended_by = 'distrust' RETURNING id",
            origin, list(product_ids), next_state("suspended", "retrust"), at,
        )  # fmt: skip
        for product in restored:
            await self.changed(conn, product["id"], at)
        return len(restored)


def _staff_only(principal: Principal) -> None:
    if not principal.has(*STAFF):
        raise Forbidden(
            "only exchange staff (reviewer or admin) list products in every state",
            extensions={"required_roles": list(STAFF)},
        )


def _like_escaped(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (its own % and _ match themselves)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def check_metadata(metadata: ProductMetadata) -> None:
    problems = metadata_problems(metadata)
    if problems:
        raise InvalidInput("; ".join(f"{p.path}: {p.message}" for p in problems), errors=problems)


def _summary(case: ReviewCase) -> ReviewSummary:
    return ReviewSummary(
        case_id=case.id,
        state=case.state,
        revision=case.revision or 0,
        hits=case.rules,
        decisions=[
            ReviewVerdict(verdict=d.verdict, reason=d.reason, decided_at=d.decided_at)
            for d in case.decisions
        ],
    )
