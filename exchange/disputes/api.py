"""HTTP routes of the disputes room: open a dispute over a trade, its evidence, the answer, the
resolution (four-eyes), the parties' agreement, escalation and award, withdrawal, the bundle."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import InternalServerException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    RequestBody,
    Schema,
)
from litestar.params import FromPath, JSONBody, Parameter, QueryParameter
from litestar.response import File, Stream

from exchange.disputes.export import bundle_response
from exchange.disputes.schemas import (
    MEDIA_TYPES,
    AgreementIn,
    AwardIn,
    Dispute,
    DisputeEvidenceItem,
    DisputeEvidenceList,
    DisputeIn,
    DisputeList,
    DisputeResolutionIn,
    EscalationIn,
    EvidenceType,
    ResponseIn,
)
from exchange.disputes.service import DISPUTE_EVIDENCE_TOTAL_BYTES, DisputeService
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal, requires
from exchange.platform.events import DisputeState
from exchange.platform.http import DocumentedOperation

Disputes = NamedDependency[DisputeService]
ActorDep = NamedDependency[Actor]
PrincipalDep = NamedDependency[Principal]
TAR = "application/x-tar"
ItemName = Annotated[
    str, Parameter(min_length=1, max_length=128, pattern=r"^[^/\\\x00-\x1f]{1,128}$",
                   description="The item's file name (no slashes)")
]  # fmt: skip
Sha256Path = Annotated[str, Parameter(max_length=64, description="The item's hex SHA-256")]


@dataclasses.dataclass
class EvidenceOperation(DocumentedOperation):
    """The item's body is raw bytes, streamed by the handler (Litestar sees no ``data``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        binary = OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        )
        self.request_body = RequestBody(
            required=True,
            description="The item's bytes (at most DATAEX_DISPUTE_EVIDENCE_MAX_BYTES, 10 MiB by"
            f" default; {DISPUTE_EVIDENCE_TOTAL_BYTES} bytes per dispute), with its media type"
            " as Content-Type, one of: " + ", ".join(sorted(MEDIA_TYPES)) + ".",
            # One documented type: client generators model one body per operation.
            content={"application/octet-stream": binary},
        )


@dataclasses.dataclass
class BundleOperation(DocumentedOperation):
    """The bundle is a POSIX tar; also documented as bytes (``application/octet-stream``), the
    type client generators know how to hand over as a file."""

    def __post_init__(self) -> None:
        super().__post_init__()
        answer = (self.responses or {}).get("200")
        if isinstance(answer, OpenAPIResponse) and answer.content:
            binary = OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
            )
            answer.content = {TAR: binary, "application/octet-stream": binary}


class TradeDisputeController(Controller):
    path = "/v1/trades/{trade_id:uuid}/disputes"
    tags = ["disputes"]

    @post("/", operation_id="openDispute", opt=requires("buyer", "seller"), status_code=201)
    async def open_dispute(
        self, trade_id: FromPath[uuid.UUID], data: JSONBody[DisputeIn], disputes: Disputes,
        actor: ActorDep, principal: PrincipalDep,
    ) -> Dispute:  # fmt: skip
        """The buyer (within the acceptance period, a reserved trade) or the seller (a breach
        of terms by the buyer, during the grant) opens a dispute: escrow is held, the grants
        suspended or kept by reason, the exchange's evidence attached. One open dispute per
        trade (409 naming it); after the acceptance period 409 naming when it ended."""
        return await disputes.open(actor, principal, trade_id, data)

    @get("/", operation_id="listTradeDisputes", opt=requires())
    async def list_trade_disputes(
        self, trade_id: FromPath[uuid.UUID], disputes: Disputes, principal: PrincipalDep
    ) -> DisputeList:
        """A trade's disputes, newest first (its parties and staff)."""
        return DisputeList(items=await disputes.for_trade(principal, trade_id))


class DisputeController(Controller):
    path = "/v1/disputes"
    tags = ["disputes"]

    @get("/", operation_id="listDisputes", opt=requires())
    async def list_disputes(
        self,
        disputes: Disputes,
        principal: PrincipalDep,
        dispute_state: Annotated[DisputeState | None, QueryParameter(name="state")] = None,
        trade_id: Annotated[uuid.UUID | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 100,
    ) -> DisputeList:
        """The caller's organisation's disputes (staff: all), newest first."""
        return DisputeList(items=await disputes.find(principal, dispute_state, trade_id, limit))

    @get("/{dispute_id:uuid}", operation_id="getDispute", opt=requires())
    async def get_dispute(
        self, dispute_id: FromPath[uuid.UUID], disputes: Disputes, principal: PrincipalDep
    ) -> Dispute:
        """A dispute: state, deadlines, the pending proposal, signatures, the resolution and
        the money it moved (its parties and staff; 404 to anyone else)."""
        return await disputes.get(principal, dispute_id)

    @post(
        "/{dispute_id:uuid}/evidence",
        operation_id="addDisputeEvidence",
        opt=requires(),
        status_code=201,
        request_max_body_size=64 * 1024 * 1024,
        operation_class=EvidenceOperation,
        responses={
            200: ResponseSpec(
                DisputeEvidenceItem,
                description="The same bytes were already evidence of this dispute: that item",
            )
        },
    )
    async def add_evidence(
        self,
        request: Request[Any, Any, Any],
        dispute_id: FromPath[uuid.UUID],
        item_type: Annotated[EvidenceType, QueryParameter(name="type")],
        name: Annotated[ItemName, QueryParameter(name="name")],
        disputes: Disputes,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Response[DisputeEvidenceItem]:
        """A party adds an item (raw body, Content-Type one of the accepted types) while the
        dispute is not closed; staff add ``award`` and ``expert_report`` items. Stored once by
        its SHA-256 and registered in the ledger; the same bytes again answer 200 with the
        item there is. Larger than allowed: 413."""
        item, created = await disputes.add_evidence(
            actor, principal, dispute_id, item_type, name,
            request.headers.get("content-type", "application/octet-stream"), _body(request),
        )  # fmt: skip
        return Response(item, status_code=201 if created else 200)

    @get("/{dispute_id:uuid}/evidence", operation_id="listDisputeEvidence", opt=requires())
    async def list_evidence(
        self, dispute_id: FromPath[uuid.UUID], disputes: Disputes, principal: PrincipalDep
    ) -> DisputeEvidenceList:
        """Every item, the exchange's and the parties', in registration (bundle) order."""
        return await disputes.evidence(principal, dispute_id)

    @get(
        "/{dispute_id:uuid}/evidence/{sha256:str}",
        operation_id="getDisputeEvidence",
        opt=requires(),
        responses={200: ResponseSpec(data_container=bytes, media_type="application/octet-stream",
                                     generate_examples=False,
                                     description="The item's bytes, with its media type")},
    )  # fmt: skip
    async def get_evidence(
        self, dispute_id: FromPath[uuid.UUID], sha256: Sha256Path, disputes: Disputes,
        principal: PrincipalDep,
    ) -> File:  # fmt: skip
        """An item's bytes (its parties and staff)."""
        item, path = await disputes.evidence_file(principal, dispute_id, sha256)
        return File(path, filename=item.name, media_type=item.media_type,
                    etag=None, content_disposition_type="attachment")  # fmt: skip

    @post("/{dispute_id:uuid}/response", operation_id="respondToDispute",
          opt=requires("buyer", "seller"), status_code=200)  # fmt: skip
    async def respond(
        self, dispute_id: FromPath[uuid.UUID], data: JSONBody[ResponseIn], disputes: Disputes,
        actor: ActorDep, principal: PrincipalDep,
    ) -> Dispute:  # fmt: skip
        """The respondent answers: the case goes to review."""
        return await disputes.respond(actor, principal, dispute_id, data.statement)

    @post(
        "/{dispute_id:uuid}/resolution",
        operation_id="resolveDispute",
        opt=requires("reviewer"),
        status_code=200,
        responses={
            202: ResponseSpec(
                Dispute,
                description="Four-eyes: the resolution waits for a second reviewer (pending)",
            )
        },
    )
    async def resolve(
        self, dispute_id: FromPath[uuid.UUID], data: JSONBody[DisputeResolutionIn],
        disputes: Disputes, actor: ActorDep, principal: PrincipalDep,
    ) -> Response[Dispute]:  # fmt: skip
        """A reviewer resolves a dispute under review: resolved, the money moved, closed
        (200). At or above DATAEX_DISPUTE_FOUR_EYES_FEN claimed, the first reviewer's
        resolution waits (202) for a second reviewer with the same one; the same reviewer
        again or another resolution is 409."""
        dispute, done = await disputes.resolve(
            actor, principal, dispute_id, data.resolution, data.note
        )
        return Response(dispute, status_code=200 if done else 202)

    @post("/{dispute_id:uuid}/agreement", operation_id="signDisputeAgreement",
          opt=requires("buyer", "seller"), status_code=200)  # fmt: skip
    async def agree(
        self, dispute_id: FromPath[uuid.UUID], data: JSONBody[AgreementIn], disputes: Disputes,
        actor: ActorDep, principal: PrincipalDep,
    ) -> Dispute:  # fmt: skip
        """A party signs a resolution's digest (a detached JWS, or custodially); when both
        parties have signed the same digest the dispute is settled by agreement, the money
        moved, and closed."""
        return await disputes.agree(actor, principal, dispute_id, data)

    @post("/{dispute_id:uuid}/escalation", operation_id="escalateDispute",
          opt=requires("buyer", "seller"), status_code=200)  # fmt: skip
    async def escalate(
        self, dispute_id: FromPath[uuid.UUID], data: JSONBody[EscalationIn], disputes: Disputes,
        actor: ActorDep, principal: PrincipalDep,
    ) -> Dispute:  # fmt: skip
        """A party takes the dispute to arbitration outside the exchange; escrow stays held."""
        return await disputes.escalate(actor, principal, dispute_id, data.forum, data.note)

    @post(
        "/{dispute_id:uuid}/award",
        operation_id="recordDisputeAward",
        opt=requires("admin"),
        status_code=200,
        responses={
            202: ResponseSpec(
                Dispute,
                description="Four-eyes: the award waits for a second admin (pending, stage"
                " award); nothing has moved",
            )
        },
    )
    async def award(
        self, dispute_id: FromPath[uuid.UUID], data: JSONBody[AwardIn], disputes: Disputes,
        actor: ActorDep, principal: PrincipalDep,
    ) -> Response[Dispute]:  # fmt: skip
        """An admin records an escalated dispute's award and its document (an ``award``
        evidence item): resolved, the money moved, closed (200). At or above
        DATAEX_DISPUTE_FOUR_EYES_FEN at stake, the first admin's award waits (202) for a second
        admin with the same resolution and document; the same admin again, or another
        resolution or document, is 409."""
        dispute, done = await disputes.award(
            actor, principal, dispute_id, data.resolution, data.document_sha256, data.note
        )
        return Response(dispute, status_code=200 if done else 202)

    @post("/{dispute_id:uuid}/withdrawal", operation_id="withdrawDispute",
          opt=requires("buyer", "seller"), status_code=200)  # fmt: skip
    async def withdraw(
        self, dispute_id: FromPath[uuid.UUID], disputes: Disputes, actor: ActorDep,
        principal: PrincipalDep,
    ) -> Dispute:  # fmt: skip
        """The claimant withdraws: closed, escrow no longer held, grants lifted."""
        return await disputes.withdraw(actor, principal, dispute_id)

    @get(
        "/{dispute_id:uuid}/bundle",
        operation_id="getDisputeBundle",
        opt=requires(),
        operation_class=BundleOperation,
        responses={200: ResponseSpec(data_container=bytes, media_type=TAR,
                                     generate_examples=False,
                                     description="The evidence bundle (POSIX tar)")},
    )  # fmt: skip
    async def bundle(
        self, dispute_id: FromPath[uuid.UUID], disputes: Disputes, principal: PrincipalDep
    ) -> Stream:
        """The evidence bundle: a manifest signed by the exchange, every item, and the ledger's
        signed tree head with each item's inclusion proof. Verify it offline with `dataex
        dispute verify-bundle FILE --jwks FILE|URL`."""
        return bundle_response(await disputes.bundle(principal, dispute_id))


async def _body(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    """The request body as it streams in; a client gone mid-body is its problem."""
    try:
        async for piece in request.stream():
            yield piece
    except InternalServerException as error:
        if "disconnected" not in str(error.detail):
            raise
