"""HTTP routes of the policy engine: the published lists, dry-run evaluation, publish, replay."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import Meta, Struct

from contracts.policy.attributes import EvaluationDocument
from contracts.policy.schemas import (
    Decision,
    PolicyListDetail,
    PolicyListInfo,
    PolicyListPublish,
    ReplayReport,
    ReplayRequest,
)
from contracts.policy.service import PolicyService
from exchange.platform.audit import Actor
from exchange.platform.auth import PUBLIC, requires


class EvaluationRequest(Struct, forbid_unknown_fields=True):
    document: EvaluationDocument
    version: Annotated[str, Meta(max_length=64)] | None = None


Policy = NamedDependency[PolicyService]


class PolicyController(Controller):
    path = "/v1/policy"
    tags = ["policy"]

    @get("/lists", operation_id="listPolicyLists", opt=PUBLIC)
    async def lists(self, policy: Policy) -> list[PolicyListInfo]:
        """Every published version of the negative and cautious lists; ``current`` marks the one
        in effect. Public: the exchange publishes what it refuses and what it holds for review."""
        return await policy.infos()

    @get("/lists/{version:str}", operation_id="getPolicyList", opt=PUBLIC)
    async def detail(self, version: FromPath[str], policy: Policy) -> PolicyListDetail:
        return await policy.detail(version)

    @post("/lists", operation_id="publishPolicyList", opt=requires("admin"))
    async def publish(
        self, data: JSONBody[PolicyListPublish], policy: Policy, actor: NamedDependency[Actor]
    ) -> Response[PolicyListDetail]:
        """Publish a version (TOML source). Identical re-publish: 200; new: 201; a different
        file under a published version number: 409."""
        detail, created = await policy.publish(actor, data.source, data.effective_from)
        return Response(detail, status_code=201 if created else 200)

    @post("/evaluate", operation_id="evaluatePolicy", opt=requires(), status_code=200)
    async def evaluate(self, data: JSONBody[EvaluationRequest], policy: Policy) -> Decision:
        """Dry run: the decision for a document under the current (or a given) version.
        Stores nothing."""
        return await policy.evaluate(data.document, data.version)

    @post("/replay", operation_id="replayPolicy", opt=requires("admin"), status_code=200)
    async def replay(self, data: JSONBody[ReplayRequest], policy: Policy) -> ReplayReport:
        """Impact before change: re-evaluate every open listing and order under a published,
        bundled or candidate list and report which decisions would change, and by which rule."""
        return await policy.replay(await policy.candidate(data.version, data.source))
