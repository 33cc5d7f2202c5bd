"""HTTP routes of the compute room: algorithms for review, jobs, results, budgets."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody

from exchange.compute.schemas import (
    Algorithm,
    AlgorithmDecisionIn,
    AlgorithmIn,
    AlgorithmList,
    Budget,
    Job,
    JobIn,
    JobList,
)
from exchange.compute.service import MAX_KEY_LENGTH, JobService
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal, requires
from exchange.platform.http import required_headers

Jobs = NamedDependency[JobService]
ActorDep = NamedDependency[Actor]
PrincipalDep = NamedDependency[Principal]


class GrantComputeController(Controller):
    path = "/v1/grants/{grant_id:uuid}"
    tags = ["compute"]

    @post("/algorithms", operation_id="submitAlgorithm", opt=requires("buyer"), status_code=201)
    async def submit_algorithm(
        self, grant_id: FromPath[uuid.UUID], data: JSONBody[AlgorithmIn], jobs: Jobs,
        actor: ActorDep, principal: PrincipalDep,
    ) -> Algorithm:  # fmt: skip
        """The buyer uploads one Python file and its parameters' JSON Schema for the seller's
        review; only an approved SHA-256 ever runs."""
        return await jobs.submit_algorithm(actor, principal, grant_id, data)

    @get("/algorithms", operation_id="listAlgorithms", opt=requires())
    async def list_algorithms(
        self, grant_id: FromPath[uuid.UUID], jobs: Jobs, principal: PrincipalDep
    ) -> AlgorithmList:
        """The grant's algorithms and their review (its parties and staff)."""
        return AlgorithmList(items=await jobs.algorithms(principal, grant_id))

    @post("/algorithms/{sha256:str}/decision", operation_id="decideAlgorithm",
          opt=requires("seller"), status_code=200)  # fmt: skip
    async def decide_algorithm(
        self, grant_id: FromPath[uuid.UUID], sha256: FromPath[str],
        data: JSONBody[AlgorithmDecisionIn],
        jobs: Jobs, actor: ActorDep, principal: PrincipalDep,
    ) -> Algorithm:  # fmt: skip
        """The seller approves the file (its hash joins the grant's allow-list) or refuses it."""
        return await jobs.decide_algorithm(
            actor, principal, grant_id, sha256, data.decision == "approve", data.reason
        )

    @post(
        "/jobs",
        operation_id="submitJob",
        opt=requires("buyer") | required_headers("Idempotency-Key"),
        status_code=201,
        response_headers=[
            ResponseHeader(
                name="Idempotent-Replayed",
                value="true",
                documentation_only=True,
                description="Sent (true) when the answer is the job a request with this"
                " Idempotency-Key and body queued first",
            )
        ],
    )
    async def submit_job(
        self,
        grant_id: FromPath[uuid.UUID],
        data: JSONBody[JobIn],
        jobs: Jobs,
        actor: ActorDep,
        principal: PrincipalDep,
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key", required=False,
                schema_extra={"min_length": 1, "max_length": MAX_KEY_LENGTH},
                description="A unique value per intended job. Required: 400"
                " idempotency_key_missing without it",
            ),
        ] = None,
    ) -> Response[Job]:  # fmt: skip
        """Queue a job: an approved algorithm with its parameters, or a DP aggregate query
        (which spends the grant's ε now). The same key and body return the first job (201
        again, with ``Idempotent-Replayed: true``, as it stands now); another body with the key
        is 422."""
        job, replayed = await jobs.submit(actor, principal, grant_id, data, idempotency_key)
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return Response(job, status_code=201, headers=headers)

    @get("/jobs", operation_id="listGrantJobs", opt=requires())
    async def list_jobs(
        self, grant_id: FromPath[uuid.UUID], jobs: Jobs, principal: PrincipalDep
    ) -> JobList:
        """The grant's jobs, newest first (results for the buyer only)."""
        return JobList(items=await jobs.list_for_grant(principal, grant_id))

    @get("/budget", operation_id="getPrivacyBudget", opt=requires())
    async def budget(
        self, grant_id: FromPath[uuid.UUID], jobs: Jobs, principal: PrincipalDep
    ) -> Budget:
        """The grant's privacy budget: ε total, per job, spent."""
        return await jobs.budget(principal, grant_id)


class JobController(Controller):
    path = "/v1/jobs"
    tags = ["compute"]

    @get("/{job_id:uuid}", operation_id="getJob", opt=requires())
    async def get_job(self, job_id: FromPath[uuid.UUID], jobs: Jobs,
                      principal: PrincipalDep) -> Job:  # fmt: skip
        """A job: its result for the buyer; metadata only for the seller and staff."""
        return await jobs.get(principal, job_id)

    @get("/{job_id:uuid}/receipt", operation_id="getJobReceipt", opt=requires(),
         media_type="application/json")  # fmt: skip
    async def receipt(
        self, job_id: FromPath[uuid.UUID], jobs: Jobs, principal: PrincipalDep
    ) -> Response[bytes]:
        """The job's signed receipt (canonical JSON): what ran, over which inputs, under which
        limits, with what outcome; verify it offline with the exchange's JWKS
        (`exchange.compute.receipts.verify`). Its parties and staff."""
        return Response(await jobs.receipt(principal, job_id), media_type="application/json")

    @post("/{job_id:uuid}/cancel", operation_id="cancelJob", opt=requires("buyer"),
          status_code=200)  # fmt: skip
    async def cancel_job(
        self, job_id: FromPath[uuid.UUID], jobs: Jobs, actor: ActorDep, principal: PrincipalDep
    ) -> Job:
        """The buyer cancels a job still queued."""
        return await jobs.cancel(actor, principal, job_id)
