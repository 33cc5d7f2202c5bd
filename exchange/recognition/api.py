"""HTTP routes: the exchange's identity, peers, member credentials, recognitions and the feed."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from exchange.identity import repository as identity_repo
from exchange.identity.schemas import Organisation
from exchange.platform.audit import Actor
from exchange.platform.auth import PUBLIC, requires
from exchange.platform.context import Platform
from exchange.platform.errors import NotFound
from exchange.recognition.propagation import FetchError, fetch_json
from exchange.recognition.schemas import (
    CredentialIssue,
    CredentialPresented,
    ExchangeIdentity,
    FeedPage,
    MemberCredential,
    Peer,
    PeerCreate,
    Recognition,
    RecognitionRequest,
)
from exchange.recognition.service import IDENTITY_PATH, RecognitionService
from exchange.recognition.verify import CredentialInvalid

Recognitions = NamedDependency[RecognitionService]
ActorDep = NamedDependency[Actor]
Code = Annotated[str | None, QueryParameter(pattern=r"^[A-Z][A-Z0-9]{1,7}$")]


class ExchangeIdentityController(Controller):
    path = "/.well-known"
    tags = ["recognition"]

    @get("/dataex-exchange", operation_id="exchangeIdentity", opt=PUBLIC)
    async def identity(self, recognition: Recognitions) -> ExchangeIdentity:
        """Who this exchange is: code, name, JWKS, where its listing events are published (the
        signed feed and the NATS subjects), the policy list it applies; ``jws`` signs it all."""
        return await recognition.identity()


class PeerController(Controller):
    path = "/v1/peers"
    tags = ["recognition"]

    @post("/", operation_id="trustPeer", opt=requires("admin"))
    async def add(self, data: JSONBody[PeerCreate], recognition: Recognitions,
                  actor: ActorDep) -> Peer:  # fmt: skip
        """Trust a peer exchange. The JWKS given is pinned; the peer's signed identity document
        (given, or fetched from ``base_url``) must verify with it and name the same code. A peer
        trusted again after it was distrusted has its feed read to its end first (its products
        stay hidden meanwhile); if the feed does not answer, it stays distrusted: a 503
        ``recognition_feed_unavailable``."""
        identity = data.identity
        if identity is None:
            url = data.base_url.rstrip("/") + IDENTITY_PATH
            try:
                identity = str((await fetch_json(url))["jws"])
            except (FetchError, KeyError, TypeError) as error:
                raise CredentialInvalid(
                    f"cannot read the peer's identity document at {url}: {error}"
                ) from error
        return await recognition.add_peer(actor, data, identity, fetch_json)

    @get("/", operation_id="listPeers", opt=requires("admin", "reviewer"))
    async def list_peers(self, recognition: Recognitions) -> list[Peer]:
        return await recognition.peers()

    @delete("/{code:str}", operation_id="distrustPeer", opt=requires("admin"), status_code=200)
    async def remove(self, code: FromPath[str], recognition: Recognitions,
                     actor: ActorDep) -> Peer:  # fmt: skip
        """Stop trusting a peer: its recognised products are hidden and refuse orders at once."""
        return await recognition.remove_peer(actor, code)


class MemberCredentialController(Controller):
    path = "/v1/member-credentials"
    tags = ["recognition"]

    @post("/", operation_id="issueMemberCredential", opt=requires("admin"))
    async def issue(self, data: JSONBody[CredentialIssue], recognition: Recognitions,
                    actor: ActorDep) -> MemberCredential:  # fmt: skip
        """A member credential (JWS) for a market organisation: name, USCC, roles, its registered
        public keys, expiry. Peers trusting this exchange register the organisation from it."""
        return await recognition.issue_credential(actor, data.org_id, data.valid_days)

    @post("/accept", operation_id="acceptMemberCredential", opt=requires("admin"))
    async def accept(
        self,
        data: JSONBody[CredentialPresented],
        recognition: Recognitions,
        actor: ActorDep,
        platform: NamedDependency[Platform],
    ) -> Organisation:
        """Register an organisation here from a trusted peer's credential alone (its keys sign
        contracts here); an organisation already registered with that USCC gains the keys."""
        org_id = await recognition.accept_credential(actor, data.credential)
        organisation = await identity_repo.get_organisation(platform.pool, org_id)
        if organisation is None:
            raise NotFound(f"no organisation {org_id}")
        return organisation


class RecognitionController(Controller):
    path = "/v1/recognitions"
    tags = ["recognition"]

    @post("/", operation_id="recognise", opt=requires())
    async def recognise(self, data: JSONBody[RecognitionRequest], recognition: Recognitions,
                        actor: ActorDep) -> Recognition:  # fmt: skip
        """Recognise a peer's listing: certificate, the metadata it digests, the seller's member
        credential. Each forgery or replay is its own problem type; a local negative-list refusal
        is a 422 ``recognition_refused_by_policy`` naming the rules, recorded here."""
        return await recognition.recognise(actor, data)

    @get("/", operation_id="listRecognitions", opt=PUBLIC)
    async def list_recognitions(self, recognition: Recognitions,
                                origin: Code = None) -> list[Recognition]:  # fmt: skip
        """Recognitions here, newest first (the origin's sellers see refusals and why)."""
        return await recognition.recognitions(origin)

    @get("/{origin:str}/{product_code:str}", operation_id="getRecognition", opt=PUBLIC)
    async def get_recognition(self, origin: FromPath[str], product_code: FromPath[str],
                              recognition: Recognitions) -> Recognition:  # fmt: skip
        return await recognition.recognition(origin, product_code)


class FeedController(Controller):
    path = "/v1/recognition/feed"
    tags = ["recognition"]

    @get("/", operation_id="listingFeed", opt=PUBLIC)
    async def page(
        self,
        recognition: Recognitions,
        # The cursor is signed into the page as RFC 8785 JSON, whose integers stop at 2^53 - 1.
        after: Annotated[
            int, QueryParameter(ge=0, le=2**53 - 1, description="last seq already read")
        ] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> FeedPage:
        """This exchange's listing events after ``after``, oldest first, as one compact JWS
        (``typ`` dataex-listing-feed+jws) by its current key; ``next_after`` is the next cursor."""
        return await recognition.feed_page(after, limit)
