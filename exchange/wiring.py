"""How the rooms are wired together: the one place that hands one room's entry points to another.

Rooms do not import the rooms above them. Where a room must act in another's transaction it
declares a hook (listings: `ListingHooks`; the review queue: its case handlers; settlement:
`UnfundedHook`) and this module, part of the composition root with the app factory, the CLI
and the process runtime, fills it in:

- listings → the catalog projection (`catalog.sync`) and the signed feed peers follow
  (`recognition.feed.on_listing_event`);
- the review queue → the listing and order rooms' `on_case_decided`, and the handlers of staff
  proposals: the listing room's `on_prohibition_decided` (a product's legal prohibition) and
  the review room's own `on_exporter_status_decided` (an organisation's exporter status, which
  the identity room records);
- recognition → the listing room, through which recognised products are written;
- settlement → the orders room's `mark_unfunded` for trades whose payment failed, and for
  trades it voids the orders room's `uncount_exports` for those the delivery room delivered
  nothing under (`exports_released`); the same for a metered trade that delivery's billing
  releases unused (settlement voids it there, in the delivery room's transaction);
- delivery → the listing room's re-check of the negative list (before a delivery token),
  settlement's top-up of a metered trade's reserve, and settlement's posting of each closed
  billing period and release of what was not spent when the grant ends;
- the health check → settlement's reconciler figures (overdue and republished trades);
- disputes → settlement's facts of a trade, its hold, release and posting of a resolution and
  its ledger entries and proofs; every room's system evidence of a trade; delivery's
  suspension of the trade's grants (`DisputeHooks`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from litestar.di import NamedDependency, Provide

from contracts.orders.evidence import contract_evidence, trade_listing
from contracts.orders.service import OrderService
from contracts.policy.service import PolicyService
from exchange.catalog import service as catalog
from exchange.compute.evidence import job_evidence
from exchange.compute.runner import JobRunner
from exchange.compute.service import (
    ComputeHooks,
    ComputeTerms,
    FieldSpec,
    GrantView,
    JobService,
    SandboxTerms,
    jobs_status,
)
from exchange.delivery import jobs_metering
from exchange.delivery.billing import Billing, BillingHooks
from exchange.delivery.evidence import delivery_evidence, trade_grant_ids
from exchange.delivery.files import FileDeliveries, FileUploads, stage_revision_files
from exchange.delivery.quota import LeaseBook
from exchange.delivery.schemas import GrantSnapshot
from exchange.delivery.service import (
    DeliveryHooks,
    GrantService,
    lock_trade_grants,
    revoked_jtis,
    trade_has_live_grant,
    trades_delivered,
)
from exchange.delivery.storage import LocalFolderStore
from exchange.delivery.tokens import TokenVerifier
from exchange.delivery.usage import UsageRecorder
from exchange.disputes.hooks import DisputeHooks
from exchange.disputes.service import DisputeService
from exchange.listings.evidence import listing_evidence
from exchange.listings.objections import ObjectionService
from exchange.listings.service import ListingHooks, ListingService, fetch_revision
from exchange.platform import exposition
from exchange.platform.clock import Clock
from exchange.platform.context import Platform
from exchange.platform.db import Connection, Executor
from exchange.platform.disputes import SystemEvidence
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, jwks, load_master_key
from exchange.platform.status import provide
from exchange.recognition import feed
from exchange.recognition.service import RecognitionService
from exchange.review import metrics as review_metrics
from exchange.review.proposals import on_exporter_status_decided
from exchange.review.service import ReviewService
from settlement import metrics as settlement_metrics
from settlement import reconciler
from settlement.metered import MeteredSettlement
from settlement.service import SettlementService

LISTING_HOOKS = ListingHooks(on_state=(catalog.sync,), on_event=(feed.on_listing_event,))


def listings(
    pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing
) -> ListingService:
    return ListingService(pool, clock, settings, keyring, LISTING_HOOKS)


def orders(pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing) -> OrderService:
    return OrderService(pool, clock, settings, keyring)


def reviews(
    pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing
) -> ReviewService:
    listing_room = listings(pool, clock, settings, keyring)
    handlers = {
        "listing": listing_room.on_case_decided,
        "order": orders(pool, clock, settings, keyring).on_case_decided,
        "legal_prohibition": listing_room.on_prohibition_decided,
        "exporter_status": on_exporter_status_decided,
    }
    return ReviewService(pool, clock, handlers)


def recognition(
    pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing
) -> RecognitionService:
    return RecognitionService(
        pool, clock, settings, keyring, listings(pool, clock, settings, keyring)
    )


def exports_released(
    order_service: OrderService,
) -> Callable[[Connection, Sequence[uuid.UUID]], Awaitable[None]]:
    """Trades just voided: those the delivery room delivered nothing under stop counting
    towards their sellers' cross-border totals (the orders room's `uncount_exports`); once
    data reached the buyer, its individuals were exported whatever became of the money."""

    async def voided(conn: Connection, trade_ids: Sequence[uuid.UUID]) -> None:
        delivered = await trades_delivered(conn, trade_ids)
        await order_service.uncount_exports(
            conn, [t for t in trade_ids if t not in delivered], "voided"
        )

    return voided


def settlement(
    pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing
) -> SettlementService:
    order_service = orders(pool, clock, settings, keyring)
    return SettlementService(
        pool, clock, settings, keyring, on_unfunded=order_service.mark_unfunded,
        on_voided=exports_released(order_service),
    )  # fmt: skip


def provide_reports(platform: Platform) -> None:
    """What rooms report on ``/health/ready`` beside its checks (`exchange.platform.status`),
    and the levels they read for ``/metrics`` (`exchange.platform.exposition`)."""
    provide(platform, "settlement", reconciler.report)
    provide(platform, "compute", jobs_status)
    exposition.provide(platform, "review", review_metrics.gauges)
    exposition.provide(platform, "settlement", settlement_metrics.gauges)


def grants(pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing) -> GrantService:
    hooks = DeliveryHooks(
        policy_recheck=listings(pool, clock, settings, keyring).delivery_refusal,
        top_up=MeteredSettlement(settings).top_up,
    )
    return GrantService(pool, clock, settings, keyring, hooks)


def billing(pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing) -> Billing:
    metered = MeteredSettlement(settings)
    voided = exports_released(orders(pool, clock, settings, keyring))

    async def release(conn: Connection, trade_id: uuid.UUID, at: datetime, reason: str) -> str:
        """Settlement releases a metered trade whose grant ended; unused, it is voided."""
        state = await metered.release(conn, trade_id, at, reason)
        if state == "voided":
            await voided(conn, [trade_id])
        return state

    hooks = BillingHooks(post_usage=metered.post_usage, release=release)
    return Billing(pool, clock, settings, keyring, hooks)


def period_closer(platform: Platform) -> Callable[[], Awaitable[int]]:
    """What closes the delivery room's due billing periods, in its worker's housekeeping."""
    return billing(platform.pool, platform.clock, platform.settings, platform.keyring).close_due


def provide_policy(platform: NamedDependency[Platform]) -> PolicyService:
    return PolicyService(platform.pool, platform.clock)


def provide_listings(platform: NamedDependency[Platform]) -> ListingService:
    return listings(platform.pool, platform.clock, platform.settings, platform.keyring)


def provide_objections(platform: NamedDependency[Platform]) -> ObjectionService:
    return ObjectionService(provide_listings(platform))


def provide_orders(platform: NamedDependency[Platform]) -> OrderService:
    return orders(platform.pool, platform.clock, platform.settings, platform.keyring)


def provide_reviews(platform: NamedDependency[Platform]) -> ReviewService:
    return reviews(platform.pool, platform.clock, platform.settings, platform.keyring)


def provide_recognition(platform: NamedDependency[Platform]) -> RecognitionService:
    return recognition(platform.pool, platform.clock, platform.settings, platform.keyring)


def provide_settlement(platform: NamedDependency[Platform]) -> SettlementService:
    return settlement(platform.pool, platform.clock, platform.settings, platform.keyring)


def provide_grants(platform: NamedDependency[Platform]) -> GrantService:
    return grants(platform.pool, platform.clock, platform.settings, platform.keyring)


async def revision_files(conn: Executor, product_id: uuid.UUID, revision: int) -> Any:
    """The files a revision declares, for the delivery room (which does not import listings)."""
    return (await fetch_revision(conn, product_id, revision)).metadata.manual.files


async def compute_terms(
    conn: Executor, product_id: uuid.UUID, revision: int, plan_id: str
) -> ComputeTerms:
    """What a revision says of sandbox jobs, for the compute room: the plan's sandbox terms,
    the manual's fields (sensitivity, bounds, categories) and the files it delivers."""
    metadata = (await fetch_revision(conn, product_id, revision)).metadata
    plan = next((p for p in metadata.plans if p.id == plan_id), None)
    terms = plan.sandbox if plan is not None else None
    return ComputeTerms(
        sandbox=None
        if terms is None
        else SandboxTerms(
            cpu_seconds=terms.cpu_seconds,
            wall_seconds=terms.wall_seconds,
            memory_mb=terms.memory_mb,
            pids=terms.pids,
            output_kb=terms.output_kb,
            k=terms.k,
            epsilon_total=terms.epsilon_total,
            epsilon_per_job=terms.epsilon_per_job,
            max_rows=terms.max_rows,
        ),
        fields=tuple(
            FieldSpec(
                name=f.name,
                sensitivity=f.sensitivity,
                lower=f.bounds.lower if f.bounds else None,
                upper=f.bounds.upper if f.bounds else None,
                categories=tuple(f.categories),
            )
            for f in metadata.manual.fields
        ),
        files=tuple(f.name for f in metadata.manual.files),
    )


def compute_hooks(grant_service: GrantService) -> ComputeHooks:
    async def grant(grant_id: uuid.UUID) -> GrantView | None:
        g = await grant_service.read(grant_id)
        if g is None:
            return None
        return GrantView(
            id=g.id, trade_id=g.trade_id, mode=g.mode, state=g.state,
            buyer_org_id=g.buyer_org_id,
            seller_org_id=g.seller_org_id, product_id=g.product_id, product_code=g.product_code,
            revision=g.revision, revision_digest=g.revision_digest, plan_id=g.plan_id,
        )  # fmt: skip

    return ComputeHooks(
        grant=grant,
        terms=compute_terms,
        reserve=jobs_metering.reserve,
        settle=jobs_metering.settle,
        register=MeteredSettlement(grant_service.settings).register_job_receipt,
    )


def jobs(pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing) -> JobService:
    hooks = compute_hooks(grants(pool, clock, settings, keyring))
    return JobService(pool, clock, settings, hooks, keyring)


def runner(platform: Platform) -> JobRunner:
    """A compute job runner: jobs' grants and terms as the API sees them, the revision's files
    decrypted from delivery's blob store into the runner's private folder."""
    store = LocalFolderStore(platform.settings.state_dir / "blobs",
                             load_master_key(platform.settings.state_dir))  # fmt: skip
    grant_service = grants(platform.pool, platform.clock, platform.settings, platform.keyring)

    async def stage(product_id: uuid.UUID, revision: int, folder: Path) -> dict[str, Path]:
        return await stage_revision_files(platform.pool, store, product_id, revision, folder)

    return JobRunner(platform.pool, platform.clock, platform.settings,
                     compute_hooks(grant_service), stage, platform.keyring)  # fmt: skip


def provide_jobs(platform: NamedDependency[Platform]) -> JobService:
    return jobs(platform.pool, platform.clock, platform.settings, platform.keyring)


class GrantDesk:
    """File delivery's view of grants: snapshots from the grant service, tokens checked with the
    delivery keys (fetched again on an unknown kid) and the revoked jtis."""

    def __init__(self, platform: Platform) -> None:
        self.pool = platform.pool
        self.grants = grants(platform.pool, platform.clock, platform.settings, platform.keyring)
        self._verifier = TokenVerifier(platform.settings.exchange_code)

    async def snapshot(self, grant_id: uuid.UUID) -> GrantSnapshot | None:
        return await self.grants.snapshot(grant_id)

    async def verifier(self, kid: str | None) -> TokenVerifier:
        if kid is not None and not self._verifier.knows(kid):
            self._verifier.refresh(await jwks(self.pool, "delivery"))
        self._verifier.revoked = await revoked_jtis(self.pool)
        return self._verifier


@dataclass(frozen=True, slots=True)
class FileParts:
    """What an API process's file requests share: the blob store, the quota leases it spends,
    its usage group commit and its view of grants. Made on first use; `stop_files` at exit."""

    store: LocalFolderStore
    leases: LeaseBook
    usage: UsageRecorder
    desk: GrantDesk


def file_parts(platform: Platform) -> FileParts:
    parts = platform.shared.get("files")
    if parts is None:
        on_exhausted = grants(platform.pool, platform.clock, platform.settings,
                              platform.keyring).exhausted  # fmt: skip
        parts = platform.shared["files"] = FileParts(
            store=LocalFolderStore(platform.settings.state_dir / "blobs",
                                   load_master_key(platform.settings.state_dir)),
            leases=LeaseBook(platform.pool, on_exhausted=on_exhausted),
            usage=UsageRecorder(platform.pool),
            desk=GrantDesk(platform),
        )  # fmt: skip
    assert isinstance(parts, FileParts)
    return parts


async def stop_files(platform: Platform) -> None:
    """Write the usage waiting and return the leases, before the pool closes."""
    parts = platform.shared.get("files")
    if isinstance(parts, FileParts):
        await parts.usage.stop()
        await parts.leases.close()


def provide_file_uploads(platform: NamedDependency[Platform]) -> FileUploads:
    return FileUploads(platform.pool, platform.clock, file_parts(platform).store, revision_files)


def provide_file_deliveries(platform: NamedDependency[Platform]) -> FileDeliveries:
    p = file_parts(platform)
    return FileDeliveries(platform.pool, platform.clock, p.store, revision_files, p.desk,
                          p.leases, p.usage)  # fmt: skip


def dispute_hooks(
    pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing
) -> DisputeHooks:
    """The disputes room's hooks: settlement's facts, hold, resolution, ledger entries and
    proofs; each room's system evidence; delivery's suspension of the trade's grants."""
    money = settlement(pool, clock, settings, keyring).disputes
    grant_service = grants(pool, clock, settings, keyring)

    async def collect(conn: Connection, trade_id: uuid.UUID, at: datetime) -> list[SystemEvidence]:
        """Everything the exchange holds of the trade: the signed contract, the listing it
        bought (certificate, revision, manual and sample digests), its grants, token issues
        and usage records, its compute jobs' receipts, and its ledger receipt."""
        items = await contract_evidence(conn, trade_id)
        listing = await trade_listing(conn, trade_id)
        if listing is not None:
            items += await listing_evidence(conn, *listing)
        items += await delivery_evidence(conn, trade_id)
        items += await job_evidence(conn, trade_id, await trade_grant_ids(conn, trade_id))
        items += await money.receipt_evidence(conn, trade_id, at)
        return items

    return DisputeHooks(
        facts=money.facts, hold=money.hold, unhold=money.unhold, resolve=money.resolve,
        register=money.register, proofs=money.proofs, collect=collect,
        suspend_grants=grant_service.on_dispute_opened,
        lift_grants=grant_service.on_dispute_closed, grant_live=trade_has_live_grant,
        lock_grants=lock_trade_grants,
    )  # fmt: skip


def disputes(
    pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing
) -> DisputeService:
    return DisputeService(pool, clock, settings, keyring,
                          dispute_hooks(pool, clock, settings, keyring),
                          settings.state_dir / "evidence")  # fmt: skip


def provide_disputes(platform: NamedDependency[Platform]) -> DisputeService:
    return disputes(platform.pool, platform.clock, platform.settings, platform.keyring)


# The services the rooms' controllers ask for by name, built per request from the platform.
DEPENDENCIES = {
    "policy": Provide(provide_policy, sync_to_thread=False),
    "listings": Provide(provide_listings, sync_to_thread=False),
    "objections": Provide(provide_objections, sync_to_thread=False),
    "reviews": Provide(provide_reviews, sync_to_thread=False),
    "orders": Provide(provide_orders, sync_to_thread=False),
    "recognition": Provide(provide_recognition, sync_to_thread=False),
    "settlement": Provide(provide_settlement, sync_to_thread=False),
    "grants": Provide(provide_grants, sync_to_thread=False),
    "file_uploads": Provide(provide_file_uploads, sync_to_thread=False),
    "file_deliveries": Provide(provide_file_deliveries, sync_to_thread=False),
    "jobs": Provide(provide_jobs, sync_to_thread=False),
    "disputes": Provide(provide_disputes, sync_to_thread=False),
}
