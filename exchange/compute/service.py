"""Jobs over a sandbox grant: reviewed algorithms, DP aggregate queries, and every change of a
job through the one transition table (`exchange.compute.states`) with its ``dx.job.*`` event
written in the same transaction.

The compute room never imports the delivery room: what it needs of a grant (its parties, mode,
state, product, revision and plan) comes through `ComputeHooks`, which the composition root
fills from delivery's exported `GrantService`; the plan's sandbox terms and the manual's fields
come the same way from the listing room.

A job is queued by a second outbox row on the work-queue subject (`job_queue_subject`): the
relay publishes it after the commit with the row's id as ``Nats-Msg-Id``, so a job is queued if
and only if its row committed, and a re-publish is deduplicated.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
import msgspec

from exchange.compute import dp, receipts
from exchange.compute.schemas import (
    Algorithm,
    AlgorithmIn,
    Budget,
    Job,
    JobIn,
    JobResult,
)
from exchange.compute.states import FINAL, JOB, JobAction
from exchange.platform.audit import Actor, record
from exchange.platform.auth import Principal
from exchange.platform.bus import job_queue_subject
from exchange.platform.canonical import canonical_json
from exchange.platform.clock import Clock
from exchange.platform.context import Platform
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import (
    Conflict,
    DataexError,
    FieldError,
    InvalidInput,
    NotFound,
)
from exchange.platform.events import JobEventData
from exchange.platform.outbox import enqueue, enqueue_message
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing
from exchange.platform.status import ComputeStatus

MAX_KEY_LENGTH: Final = 255
MAX_PARAMS_BYTES: Final = 64 * 1024
STAFF: Final = ("reviewer", "admin")


class AlgorithmNotApproved(DataexError):
    status = 403
    code = "algorithm_not_approved"
    title = "The seller has not approved this algorithm for the grant"


class SandboxNotGranted(DataexError):
    status = 403
    code = "sandbox_not_granted"
    title = "The grant does not allow sandbox jobs now"


class MissingIdempotencyKey(DataexError):
    status = 400
    code = "idempotency_key_missing"
    title = "Idempotency-Key header required"


@dataclass(frozen=True, slots=True)
class GrantView:
    """What compute needs of a delivery grant."""

    id: uuid.UUID
    trade_id: uuid.UUID
    mode: str
    state: str
    buyer_org_id: uuid.UUID
    seller_org_id: uuid.UUID
    product_id: uuid.UUID
    product_code: str
    revision: int
    revision_digest: str
    plan_id: str


@dataclass(frozen=True, slots=True)
class SandboxTerms:
    """A plan's sandbox terms (the listing room's ``Plan.sandbox``, as the composition root
    hands them over): limits per job, k, and the grant's privacy budget."""

    cpu_seconds: int = 10
    wall_seconds: int = 15
    memory_mb: int = 512
    pids: int = 32
    output_kb: int = 1024
    k: int = 10
    epsilon_total: float = 0.0
    epsilon_per_job: float = 0.0
    max_rows: int = 1_000_000


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A field of the product manual as compute needs it."""

    name: str
    sensitivity: str | None = None
    lower: float | None = None
    upper: float | None = None
    categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ComputeTerms:
    """What the revision says of sandbox jobs: the plan's terms and the manual's fields."""

    sandbox: SandboxTerms | None
    fields: tuple[FieldSpec, ...]
    files: tuple[str, ...]

    def forbidden_columns(self) -> list[str]:
        return [f.name for f in self.fields if f.sensitivity is not None]

    def bounds(self) -> dict[str, dp.FieldBounds]:
        return {
            f.name: dp.FieldBounds(
                name=f.name,
                lower=f.lower,
                upper=f.upper,
                categories=list(f.categories),
            )
            for f in self.fields
            if f.sensitivity is None
        }


GrantLookup = Callable[[uuid.UUID], Awaitable[GrantView | None]]
TermsLookup = Callable[[Executor, uuid.UUID, int, str], Awaitable[ComputeTerms]]
# Delivery leases the job's CPU limit (grant, cpu ms, ttl seconds) in the caller's transaction.
Reserve = Callable[[Connection, uuid.UUID, int, float], Awaitable[list[uuid.UUID]]]
# Delivery records what the job used (grant, job, leases, cpu ms charged) and closes the leases.
Settle = Callable[
    [Connection, uuid.UUID, uuid.UUID, list[uuid.UUID], int, datetime], Awaitable[int]
]
# Settlement appends the receipt's digest to the ledger (trade, digest); its sequence number.
Register = Callable[[Connection, uuid.UUID, str, datetime], Awaitable[int | None]]
# Queueing allowance on top of the wall limit: a job's CPU lease must outlive its wait.
LEASE_SLACK_SECONDS: Final = 600.0


@dataclass(frozen=True, slots=True)
class ComputeHooks:
    grant: GrantLookup
    terms: TermsLookup
    reserve: Reserve | None = None
    settle: Settle | None = None
    register: Register | None = None


def limits_of(terms: SandboxTerms) -> dict[str, Any]:
    return {
        "cpu_seconds": terms.cpu_seconds, "wall_seconds": terms.wall_seconds,
        "memory_mb": terms.memory_mb, "pids": terms.pids, "output_kb": terms.output_kb,
        "max_rows": terms.max_rows,
    }  # fmt: skip


def _algorithm(row: Any) -> Algorithm:
    return Algorithm(
        grant_id=row["grant_id"], sha256=row["sha256"], state=row["state"],
        params_schema=_json(row["params_schema"]), source=bytes(row["source"]).decode(),
        reason=row["reason"], submitted_at=row["submitted_at"], decided_at=row["decided_at"],
    )  # fmt: skip


def _json(raw: Any) -> Any:
    if raw is None:
        return None
    return msgspec.json.decode(raw) if isinstance(raw, (str, bytes)) else raw


def job_view(row: Any, *, with_result: bool) -> Job:
    result = _json(row["result"]) if with_result else None
    return Job(
        id=row["id"], grant_id=row["grant_id"], product_code=row["product_code"],
        revision=row["revision"], kind=row["kind"], algorithm_sha256=row["algorithm_sha256"],
        query=_json(row["query"]), state=row["state"], limit_kind=row["limit_kind"],
        rejection_reason=row["rejection_reason"], attempts=row["attempts"],
        limits=_json(row["limits"]), epsilon=row["epsilon_micro"] / dp.MICRO, k=row["k"],
        queued_at=row["queued_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], cpu_ms=row["cpu_ms"], exit_code=row["exit_code"],
        result_sha256=row["result_sha256"],
        result=None if result is None else msgspec.convert(result, JobResult),
    )  # fmt: skip


async def transition(
    conn: Connection,
    settings: Settings,
    row: Any,
    action: JobAction,
    at: datetime,
    *,
    request_id: str | None = None,
    **columns: Any,
) -> Any:
    """Apply ``action`` to a locked job row, set ``columns`` and write ``dx.job.<state>``."""
    state = JOB.next(row["state"], action)
    names = sorted(columns)
    sets = "".join(f", {name} = ${i}" for i, name in enumerate(names, start=4))
    new = await conn.fetchrow(
        f"UPDATE compute_jobs SET state = $2, updated_at = $3, version = version + 1{sets}"
        " WHERE id = $1 RETURNING *",
        row["id"], state, at, *(columns[name] for name in names),
    )  # fmt: skip
    await announce(conn, settings, new, at, request_id)
    return new


async def announce(
    conn: Connection, settings: Settings, row: Any, at: datetime, request_id: str | None
) -> None:
    state = row["state"]
    await enqueue(
        conn, subject=settings.subject("job", state), event_type=f"dx.job.{state}",
        source=f"urn:dataex:exchange:{settings.exchange_code}", event_subject=str(row["id"]),
        data=JobEventData(
            job_id=str(row["id"]), grant_id=str(row["grant_id"]),
            buyer_org_id=str(row["buyer_org_id"]), seller_org_id=str(row["seller_org_id"]),
            product_code=row["product_code"], kind=row["kind"], state=state,
            attempts=row["attempts"], limit_kind=row["limit_kind"],
            rejection_reason=row["rejection_reason"], epsilon_micro=row["epsilon_micro"],
            cpu_ms=row["cpu_ms"], result_sha256=row["result_sha256"],
        ),
        at=at, request_id=request_id,
    )  # fmt: skip


class JobService:
    def __init__(
        self, pool: asyncpg.Pool, clock: Clock, settings: Settings, hooks: ComputeHooks,
        keyring: KeyRing,
    ) -> None:  # fmt: skip
        self.pool = pool
        self.clock = clock
        self.settings = settings
        self.hooks = hooks
        self.keyring = keyring

    # --- grants and who may see what -----------------------------------------------------------

    async def _grant(self, principal: Principal, grant_id: uuid.UUID) -> GrantView:
        """The grant, for its parties and staff; 404 to anyone else."""
        grant = await self.hooks.grant(grant_id)
        if grant is None or not (
            principal.org_id in (grant.buyer_org_id, grant.seller_org_id) or principal.has(*STAFF)
        ):
            raise NotFound(f"no grant {grant_id}")
        return grant

    async def _buyers_grant(self, principal: Principal, grant_id: uuid.UUID) -> GrantView:
        grant = await self._grant(principal, grant_id)
        if principal.org_id != grant.buyer_org_id:
            raise NotFound(f"no grant {grant_id} of which you are the buyer")
        if grant.mode != "sandbox":
            raise SandboxNotGranted(f"grant {grant_id} delivers by {grant.mode}, not sandbox")
        return grant

    @staticmethod
    def _live(grant: GrantView) -> None:
        if grant.state != "active":
            raise SandboxNotGranted(f"grant {grant.id} is {grant.state}, not active")

    # --- algorithms ------------------------------------------------------------------------------

    async def submit_algorithm(
        self, actor: Actor, principal: Principal, grant_id: uuid.UUID, data: AlgorithmIn
    ) -> Algorithm:
        """The buyer uploads one Python file for review; the same file again is the same row."""
        grant = await self._buyers_grant(principal, grant_id)
        self._live(grant)
        check_params_schema(data.params_schema)
        source = data.source.encode()
        sha = hashlib.sha256(source).hexdigest()
        at = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO compute_algorithms (grant_id, sha256, source, params_schema, state,"
                " submitted_by, submitted_at) VALUES ($1, $2, $3, $4, 'submitted', $5, $6)"
                " ON CONFLICT (grant_id, sha256) DO NOTHING",
                grant_id, sha, source, canonical_json(data.params_schema).decode(), actor.label,
                at,
            )  # fmt: skip
            row = await conn.fetchrow(
                "SELECT * FROM compute_algorithms WHERE grant_id = $1 AND sha256 = $2",
                grant_id, sha,
            )  # fmt: skip
            await record(conn, actor, at=at, action="compute.algorithm.submitted",
                         subject_type="grant", subject_id=grant_id,
                         detail={"sha256": sha})  # fmt: skip
        return _algorithm(row)

    async def decide_algorithm(
        self, actor: Actor, principal: Principal, grant_id: uuid.UUID, sha256: str,
        approve: bool, reason: str | None,
    ) -> Algorithm:  # fmt: skip
        """The seller approves a file's SHA-256 (it joins the grant's allow-list) or refuses it."""
        grant = await self._grant(principal, grant_id)
        if principal.org_id != grant.seller_org_id:
            raise NotFound(f"no grant {grant_id} of which you are the seller")
        at = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row: Any = await conn.fetchrow(
                "SELECT * FROM compute_algorithms WHERE grant_id = $1 AND sha256 = $2"
                " FOR UPDATE",
                grant_id, sha256,
            )  # fmt: skip
            if row is None:
                raise NotFound(f"no algorithm {sha256} for grant {grant_id}")
            if row["state"] != "submitted":
                raise Conflict(f"algorithm {sha256} is already {row['state']}")
            row = await conn.fetchrow(  # the row exists: locked above
                "UPDATE compute_algorithms SET state = $3, reason = $4, decided_by = $5,"
                " decided_at = $6 WHERE grant_id = $1 AND sha256 = $2 RETURNING *",
                grant_id, sha256, "approved" if approve else "refused", reason, actor.label, at,
            )  # fmt: skip
            await record(conn, actor, at=at, action=f"compute.algorithm.{row['state']}",
                         subject_type="grant", subject_id=grant_id,
                         detail={"sha256": sha256, "reason": reason})  # fmt: skip
        return _algorithm(row)

    async def algorithms(self, principal: Principal, grant_id: uuid.UUID) -> list[Algorithm]:
        await self._grant(principal, grant_id)
        rows = await self.pool.fetch(
            "SELECT * FROM compute_algorithms WHERE grant_id = $1 ORDER BY submitted_at, sha256",
            grant_id,
        )
        return [_algorithm(row) for row in rows]

    # --- jobs ------------------------------------------------------------------------------------

    async def submit(
        self, actor: Actor, principal: Principal, grant_id: uuid.UUID, data: JobIn,
        key: str | None,
    ) -> tuple[Job, bool]:  # fmt: skip
        """Queue a job; returns it and whether it is a replay of the key's first request.

        The same Idempotency-Key and body return the first job; another body is 422."""
        key = _check_key(key)
        digest = hashlib.sha256(canonical_json(data)).hexdigest()
        grant = await self._buyers_grant(principal, grant_id)
        at = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/job/' || $2, 0))",
                str(principal.org_id), key,
            )  # fmt: skip
            first = await conn.fetchrow(
                "SELECT * FROM compute_jobs WHERE buyer_org_id = $1 AND idempotency_key = $2",
                principal.org_id, key,
            )  # fmt: skip
            if first is not None:
                if first["request_digest"] != digest or first["grant_id"] != grant_id:
                    raise InvalidInput(
                        "this Idempotency-Key was used with a different request; use a new key",
                        errors=[FieldError(path="Idempotency-Key",
                                           message="reused with another body", source="header")],
                    )  # fmt: skip
                return job_view(first, with_result=True), True
            self._live(grant)
            terms = await self.hooks.terms(conn, grant.product_id, grant.revision, grant.plan_id)
            row = await self._insert(conn, actor, grant, terms, data, key, digest, at)
        return job_view(row, with_result=True), False

    async def _insert(
        self, conn: Connection, actor: Actor, grant: GrantView, manual: ComputeTerms,
        data: JobIn, key: str, digest: str, at: datetime,
    ) -> Any:  # fmt: skip
        terms = manual.sandbox
        if terms is None:
            raise SandboxNotGranted(f"plan {grant.plan_id} offers no sandbox jobs")
        epsilon = 0
        query: str | None = None
        if data.kind == "algorithm":
            if data.algorithm_sha256 is None or data.query is not None:
                raise _bad("algorithm_sha256", "an algorithm job names its approved sha256 only")
            algorithm = await conn.fetchrow(
                "SELECT state, params_schema FROM compute_algorithms"
                " WHERE grant_id = $1 AND sha256 = $2",
                grant.id, data.algorithm_sha256,
            )  # fmt: skip
            if algorithm is None or algorithm["state"] != "approved":
                raise AlgorithmNotApproved(
                    f"algorithm {data.algorithm_sha256} is not approved for grant {grant.id}"
                )
            if len(canonical_json(data.params)) > MAX_PARAMS_BYTES:
                raise _bad("params", f"params are at most {MAX_PARAMS_BYTES} bytes")
            check_params(_json(algorithm["params_schema"]), data.params)
        else:
            if data.query is None or data.algorithm_sha256 is not None or data.params:
                raise _bad("query", "a query job gives its query only")
            dp.check_query(data.query, manual.bounds())  # 422 before any ε is spent
            query = dp.canonical(data.query).decode()
            epsilon = dp.micro_epsilon(data.query.epsilon)
            await self._spend(conn, grant.id, terms, epsilon, at)
        leases: list[uuid.UUID] = []
        if self.hooks.reserve is not None:
            leases = await self.hooks.reserve(
                conn, grant.id, terms.cpu_seconds * 1000,
                terms.wall_seconds + LEASE_SLACK_SECONDS,
            )  # fmt: skip
        row: Any = await conn.fetchrow(
            "INSERT INTO compute_jobs (id, grant_id, buyer_org_id, seller_org_id, product_id,"
            " product_code, revision, revision_digest, kind, algorithm_sha256, query, params,"
            " idempotency_key, request_digest, state, limits, epsilon_micro, k, queued_at,"
            " updated_at, leases) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
            " $13, $14, 'queued', $15, $16, $17, $18, $18, $19) RETURNING *",
            uuid.uuid4(), grant.id, grant.buyer_org_id, grant.seller_org_id, grant.product_id,
            grant.product_code, grant.revision, grant.revision_digest, data.kind,
            data.algorithm_sha256, query, canonical_json(data.params).decode(), key, digest,
            canonical_json(limits_of(terms)).decode(), epsilon, terms.k, at, leases,
        )  # fmt: skip
        await announce(conn, self.settings, row, at, actor.request_id)
        await self.queue(conn, row["id"], at)
        return row

    async def queue(self, conn: Connection, job_id: uuid.UUID, at: datetime) -> None:
        """Put the job on the work queue: an outbox row, published after the commit."""
        await enqueue_message(
            conn, subject=job_queue_subject(self.settings), payload=str(job_id).encode(), at=at
        )

    async def _spend(
        self, conn: Connection, grant_id: uuid.UUID, terms: SandboxTerms, micro: int,
        at: datetime,
    ) -> None:  # fmt: skip
        """Charge the grant's privacy budget, or `dp.BudgetExceeded` (403)."""
        await conn.execute(
            "INSERT INTO compute_budgets (grant_id, total_micro, per_job_micro, updated_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (grant_id) DO NOTHING",
            grant_id, dp.micro_epsilon(terms.epsilon_total),
            dp.micro_epsilon(terms.epsilon_per_job), at,
        )  # fmt: skip
        budget: Any = await conn.fetchrow(
            "SELECT * FROM compute_budgets WHERE grant_id = $1 FOR UPDATE", grant_id
        )
        spent = dp.charge_micro(
            budget["spent_micro"], budget["total_micro"], micro, budget["per_job_micro"]
        )
        await conn.execute(
            "UPDATE compute_budgets SET spent_micro = $2, updated_at = $3 WHERE grant_id = $1",
            grant_id, spent, at,
        )  # fmt: skip

    async def budget(self, principal: Principal, grant_id: uuid.UUID) -> Budget:
        grant = await self._grant(principal, grant_id)
        row = await self.pool.fetchrow(
            "SELECT * FROM compute_budgets WHERE grant_id = $1", grant_id
        )
        if row is None:
            async with self.pool.acquire() as conn:
                terms = await self.hooks.terms(
                    conn, grant.product_id, grant.revision, grant.plan_id
                )
            sandbox = terms.sandbox or SandboxTerms()
            return Budget(grant_id=grant_id, epsilon_total=sandbox.epsilon_total,
                          epsilon_per_job=sandbox.epsilon_per_job, epsilon_spent=0.0)  # fmt: skip
        return Budget(
            grant_id=grant_id, epsilon_total=row["total_micro"] / dp.MICRO,
            epsilon_per_job=row["per_job_micro"] / dp.MICRO,
            epsilon_spent=row["spent_micro"] / dp.MICRO,
        )  # fmt: skip

    async def get(self, principal: Principal, job_id: uuid.UUID) -> Job:
        """A job for its buyer (with its result), its seller and staff (metadata only)."""
        row = await self.pool.fetchrow("SELECT * FROM compute_jobs WHERE id = $1", job_id)
        return self._visible(principal, row, job_id)

    def _visible(self, principal: Principal, row: Any, job_id: uuid.UUID) -> Job:
        if row is None:
            raise NotFound(f"no job {job_id}")
        buyer = principal.org_id == row["buyer_org_id"]
        if not (buyer or principal.org_id == row["seller_org_id"] or principal.has(*STAFF)):
            raise NotFound(f"no job {job_id}")
        return job_view(row, with_result=buyer)

    async def list_for_grant(self, principal: Principal, grant_id: uuid.UUID) -> list[Job]:
        grant = await self._grant(principal, grant_id)
        rows = await self.pool.fetch(
            "SELECT * FROM compute_jobs WHERE grant_id = $1 ORDER BY queued_at DESC, id DESC"
            " LIMIT 200",
            grant_id,
        )
        buyer = principal.org_id == grant.buyer_org_id
        return [job_view(row, with_result=buyer) for row in rows]

    async def cancel(self, actor: Actor, principal: Principal, job_id: uuid.UUID) -> Job:
        """The buyer cancels a job still queued; its ε is given back (nothing was released)."""
        at = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM compute_jobs WHERE id = $1 FOR UPDATE", job_id)
            if row is None or row["buyer_org_id"] != principal.org_id:
                raise NotFound(f"no job {job_id} of which you are the buyer")
            row = await transition(conn, self.settings, row, "cancel", at,
                                   request_id=actor.request_id, finished_at=at)  # fmt: skip
            await refund_epsilon(conn, row, at)
            await conclude(conn, self.settings, self.hooks, self.keyring, row, 0, {}, at)
        return job_view(row, with_result=True)

    async def receipt(self, principal: Principal, job_id: uuid.UUID) -> bytes:
        """The job's signed receipt (its parties and staff), as canonical JSON."""
        row = await self.pool.fetchrow("SELECT * FROM compute_jobs WHERE id = $1", job_id)
        self._visible(principal, row, job_id)
        if row is None or row["receipt"] is None:
            raise NotFound(f"job {job_id} has no receipt yet (it has not ended)")
        stored = _json(row["receipt"])
        return receipts.document(stored["receipt"], stored["digest"], stored["jws"],
                                 stored["ledger_seq"])  # fmt: skip

    async def jobs(self, ids: Sequence[uuid.UUID]) -> list[Any]:
        return list(await self.pool.fetch("SELECT * FROM compute_jobs WHERE id = ANY($1)", ids))


async def refund_epsilon(conn: Connection, row: Any, at: datetime) -> None:
    """Give a job's ε back to its grant: only when nothing was released."""
    if row["epsilon_micro"]:
        await conn.execute(
            "UPDATE compute_budgets SET spent_micro = spent_micro - $2, updated_at = $3"
            " WHERE grant_id = $1",
            row["grant_id"], row["epsilon_micro"], at,
        )  # fmt: skip


async def conclude(
    conn: Connection, settings: Settings, hooks: ComputeHooks, keyring: KeyRing, row: Any,
    charged_cpu_ms: int, inputs: dict[str, str], at: datetime,
) -> Any:  # fmt: skip
    """A job just ended: charge what it used (delivery's usage record under its leases, 0 for
    a failure of the exchange's), and sign its receipt and register it in the ledger."""
    if hooks.settle is not None:
        await hooks.settle(conn, row["grant_id"], row["id"], list(row["leases"]),
                           charged_cpu_ms, at)  # fmt: skip
    grant = await hooks.grant(row["grant_id"])
    trade_id = grant.trade_id if grant is not None else None
    receipt = receipts.build(
        row, exchange=settings.exchange_code, trade_id=None if trade_id is None else str(trade_id),
        inputs=inputs, charged_cpu_ms=charged_cpu_ms,
    )  # fmt: skip
    digest, jws = receipts.sign(receipt, await keyring.current(conn))
    seq = None
    if hooks.register is not None and trade_id is not None:
        seq = await hooks.register(conn, trade_id, digest, at)
    stored = {"receipt": receipt, "digest": digest, "jws": jws, "ledger_seq": seq}
    return await conn.fetchrow(
        "UPDATE compute_jobs SET receipt = $2, inputs = $3 WHERE id = $1 RETURNING *",
        row["id"], canonical_json(stored).decode(), canonical_json(inputs).decode(),
    )  # fmt: skip


async def jobs_status(platform: Platform) -> ComputeStatus:
    """Jobs not yet ended, by state (`exchange.platform.status`: the composition root provides
    it to the metrics)."""
    rows = await platform.pool.fetch(
        "SELECT state, count(*) AS n FROM compute_jobs"
        " WHERE state IN ('queued', 'running', 'checking_output') GROUP BY state"
    )
    counts = {row["state"]: row["n"] for row in rows}
    return ComputeStatus(
        queued=counts.get("queued", 0), running=counts.get("running", 0),
        checking_output=counts.get("checking_output", 0),
    )  # fmt: skip


def is_final(state: str) -> bool:
    return state in FINAL


def check_params_schema(schema: dict[str, Any]) -> None:
    """An algorithm's parameter schema must be a valid JSON Schema (2020-12): 422 otherwise."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = ".".join(str(part) for part in error.absolute_path)
        raise _bad(
            "params_schema" + (f".{where}" if where else ""),
            f"not a valid JSON Schema (2020-12): {error.message}",
        ) from error


def check_params(schema: dict[str, Any], params: Any) -> None:
    """A job's parameters must match its approved algorithm's schema: 422 naming each place."""
    from jsonschema import Draft202012Validator

    problems = sorted(
        Draft202012Validator(schema).iter_errors(params), key=lambda e: list(e.absolute_path)
    )
    if problems:
        errors = [
            FieldError(
                path=".".join(["params", *(str(part) for part in e.absolute_path)]),
                message=e.message,
                source="body",
            )
            for e in problems[:20]
        ]
        raise InvalidInput(
            "the parameters do not match the algorithm's parameter schema: "
            + "; ".join(f"{e.path}: {e.message}" for e in errors[:3]),
            errors=errors,
        )


def _bad(path: str, message: str) -> InvalidInput:
    return InvalidInput(message, errors=[FieldError(path=path, message=message, source="body")])


def _check_key(key: str | None) -> str:
    if key is None or not key.strip():
        raise MissingIdempotencyKey(
            "send an Idempotency-Key header (a unique value per intended job, e.g. a UUID);"
            " retries with the same key and body return the first job"
        )
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise _bad("Idempotency-Key", f"1-{MAX_KEY_LENGTH} printable characters")
    return key.strip()
