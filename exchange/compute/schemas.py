"""The compute room's API shapes: algorithms, jobs, results and receipts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from exchange.compute.dp import Query
from exchange.platform.events import JobState

MAX_SOURCE_CHARS = 256 * 1024
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
AlgorithmState = Literal["submitted", "approved", "refused"]
JobKind = Literal["algorithm", "query"]


class AlgorithmIn(Struct, forbid_unknown_fields=True):
    """One Python file (run as ``/job/algorithm.py``) and a JSON Schema of its parameters."""

    source: Annotated[str, Meta(min_length=1, max_length=MAX_SOURCE_CHARS)]
    params_schema: dict[str, Any] = {}


class AlgorithmDecisionIn(Struct, forbid_unknown_fields=True):
    decision: Literal["approve", "refuse"]
    reason: Annotated[str, Meta(max_length=2000)] | None = None


class Algorithm(Struct, frozen=True):
    grant_id: uuid.UUID
    sha256: str
    state: AlgorithmState
    params_schema: dict[str, Any]
    source: str
    reason: str | None
    submitted_at: datetime
    decided_at: datetime | None


class AlgorithmList(Struct, frozen=True):
    items: list[Algorithm]


class JobIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """An algorithm job (``algorithm_sha256`` approved for the grant, with ``params``) or a DP
    aggregate query (``query``), never both."""

    kind: JobKind
    algorithm_sha256: Sha256Hex | None = None
    params: dict[str, Any] = {}
    query: Query | None = None


class JobResult(Struct, frozen=True):
    """What the job released: one table of aggregates (the buyer's only)."""

    columns: list[str]
    rows: list[list[Any]]
    epsilon: float | None = None
    mechanism: str | None = None


class Job(Struct, frozen=True, kw_only=True):
    """A job as its reader may see it: ``result`` only for the buyer, once it succeeded."""

    id: uuid.UUID
    grant_id: uuid.UUID
    product_code: str
    revision: int
    kind: JobKind
    algorithm_sha256: str | None
    query: dict[str, Any] | None
    state: JobState
    limit_kind: str | None
    rejection_reason: str | None
    attempts: int
    limits: dict[str, Any]
    epsilon: float
    k: int
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cpu_ms: int | None
    exit_code: int | None
    result_sha256: str | None
    result: JobResult | None = None


class JobList(Struct, frozen=True):
    items: list[Job]


class Budget(Struct, frozen=True):
    grant_id: uuid.UUID
    epsilon_total: float
    epsilon_per_job: float
    epsilon_spent: float


class JobReceipt(Struct, frozen=True):
    """The signed evidence of a finished job: ``receipt`` (canonical JSON signed by ``jws``)."""

    job_id: uuid.UUID
    receipt: dict[str, Any]
    digest: str
    jws: str
