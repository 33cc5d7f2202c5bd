"""HTTP routes for products, their certificates, and the exchange's public keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from exchange.listings.objections import ObjectionService
from exchange.listings.schemas import (
    Certificate,
    CertificateStatus,
    JwkSet,
    LegalProhibitionProposal,
    ListingObjection,
    ListingObjectionDecision,
    ListingObjectionFiling,
    ListingObjectionPage,
    Product,
    ProductDraft,
    ProductMetadata,
    ProductPage,
    Reason,
)
from exchange.listings.service import ListingService
from exchange.listings.states import ObjectionState
from exchange.platform.audit import Actor
from exchange.platform.auth import PUBLIC, Principal, requires
from exchange.platform.context import Platform
from exchange.platform.paging import DEFAULT_PAGE, MAX_PAGE, decode_cursor, encode_cursor
from exchange.platform.signing import jwks
from exchange.review.schemas import ReviewCase

JWK_SET = "application/jwk-set+json"
Listings = NamedDependency[ListingService]
Objections = NamedDependency[ObjectionService]
ActorDep = NamedDependency[Actor]
PrincipalDep = NamedDependency[Principal]


def product_page(items: list[Product], limit: int) -> ProductPage:
    cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(items) == limit else None
    return ProductPage(items=items, next_cursor=cursor)


class ProductController(Controller):
    """Products of the listing room. ``GET /v1/products`` (the catalog search) is added by the
    catalog room's `ProductCatalogController`, which the app registers in this one's place."""

    path = "/v1/products"
    tags = ["products"]

    @post("/", operation_id="createProduct", opt=requires("seller"))
    async def create(
        self,
        data: JSONBody[ProductDraft],
        listings: Listings,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Product:
        """Save a draft; it may be incomplete but never ill-typed."""
        return await listings.create(actor, principal, data)

    @get("/{product_id:uuid}", operation_id="getProduct", opt=requires())
    async def get_product(
        self, product_id: FromPath[uuid.UUID], listings: Listings, principal: PrincipalDep
    ) -> Product:
        """The seller's own product (with its draft and review decisions), or any for staff."""
        return await listings.get(principal, product_id)

    @patch("/{product_id:uuid}", operation_id="editProduct", opt=requires("seller"))
    async def edit(
        self,
        product_id: FromPath[uuid.UUID],
        data: JSONBody[ProductDraft],
        listings: Listings,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Product:
        """Change a draft (draft or changes requested only); the fields given replace them."""
        return await listings.edit(actor, principal, product_id, data)

    @post(
        "/{product_id:uuid}/submit",
        operation_id="submitProduct",
        opt=requires("seller"),
        status_code=200,
    )
    async def submit(
        self,
        product_id: FromPath[uuid.UUID],
        listings: Listings,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Product:
        """Evaluate under the current lists: a negative hit rejects at once (hits in ``policy``);
        otherwise a review case opens."""
        return await listings.submit(actor, principal, product_id)

    @post(
        "/{product_id:uuid}/revisions",
        operation_id="reviseProduct",
        opt=requires("seller"),
        status_code=200,
    )
    async def revise(
        self,
        product_id: FromPath[uuid.UUID],
        data: JSONBody[ProductMetadata],
        listings: Listings,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Product:
        """A new revision of a listed product: cosmetic changes go live at once, material ones
        after review while the listed revision stays live."""
        return await listings.revise(actor, principal, product_id, data)

    @post(
        "/{product_id:uuid}/suspend",
        operation_id="suspendProduct",
        opt=requires("reviewer", "admin"),
        status_code=200,
    )
    async def suspend(
        self,
        product_id: FromPath[uuid.UUID],
        data: JSONBody[Reason],
        listings: Listings,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Product:
        return await listings.transition(actor, principal, product_id, "suspend", data.reason)

    @post(
        "/{product_id:uuid}/reinstate",
        operation_id="reinstateProduct",
        opt=requires("reviewer", "admin"),
        status_code=200,
    )
    async def reinstate(
        self,
        product_id: FromPath[uuid.UUID],
        data: JSONBody[Reason],
        listings: Listings,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Product:
        return await listings.transition(actor, principal, product_id, "reinstate", data.reason)

    @post(
        "/{product_id:uuid}/delist",
        operation_id="delistProduct",
        opt=requires("seller", "reviewer", "admin"),
        status_code=200,
    )
    async def delist(
        self,
        product_id: FromPath[uuid.UUID],
        data: JSONBody[Reason],
        listings: Listings,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> Product:
        """The seller delists its own product; staff may delist any."""
        return await listings.transition(actor, principal, product_id, "delist", data.reason)

    @post(
        "/{product_id:uuid}/legal-prohibition",
        operation_id="proposeLegalProhibition",
        opt=requires("reviewer", "admin"),
        status_code=201,
    )
    async def propose_legal_prohibition(
        self,
        product_id: FromPath[uuid.UUID],
        data: JSONBody[LegalProhibitionProposal],
        listings: Listings,
        actor: ActorDep,
    ) -> ReviewCase:
        """Propose that a law, regulation, sector rule or contract forbids (or no longer
        forbids) trading the product, with the reason and what says so. Opens a four-eyes
        review case (kind ``legal_prohibition``, rule NEG-08); when two reviewers approve it,
        the product's ``legal_prohibition`` is recorded and orders for it are rejected (NEG-08)
        until a later proposal lifts it. 409 while another proposal for the product is open."""
        return await listings.propose_prohibition(actor, product_id, data)

    @post(
        "/{product_id:uuid}/objections",
        operation_id="registerListingObjection",
        opt=requires("seller", "buyer"),
        status_code=201,
    )
    async def register_objection(
        self,
        product_id: FromPath[uuid.UUID],
        data: JSONBody[ListingObjectionFiling],
        objections: Objections,
        actor: ActorDep,
        principal: PrincipalDep,
    ) -> ListingObjection:
        """Object to a listed (or suspended) product's registration (异议登记): claim rights in
        it, with a statement and the SHA-256 of each document held. Any market organisation
        but the seller (403); one open objection per organisation and product (409); a
        delisted product is a 409 naming its state. The product's public status shows that an
        objection is registered and its decision, never who objected or the statement."""
        return await objections.register(actor, principal, product_id, data)

    @get("/{product_id:uuid}/certificate", operation_id="getCertificate", opt=PUBLIC)
    async def certificate(self, product_id: FromPath[uuid.UUID], listings: Listings) -> Certificate:
        """The listing certificate (compact JWS, EdDSA); verify it with /.well-known/jwks.json."""
        return await listings.certificate(product_id)


class ListingObjectionController(Controller):
    """Objections to registrations: staff's list and decisions; the parties read their own."""

    path = "/v1/listing-objections"
    tags = ["products"]

    @get("/", operation_id="listListingObjections", opt=requires("reviewer", "admin"))
    async def queue(
        self,
        objections: Objections,
        objection_state: Annotated[
            ObjectionState | None,
            QueryParameter(name="state", description="registered, upheld or dismissed (all)"),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        cursor: Annotated[str | None, QueryParameter()] = None,
    ) -> ListingObjectionPage:
        """Objections oldest first (staff)."""
        after = decode_cursor(cursor, (datetime, uuid.UUID)) if cursor else None
        items = await objections.find(state=objection_state, after=after, limit=limit)
        last = items[-1] if len(items) == limit else None
        return ListingObjectionPage(
            items=items,
            next_cursor=None if last is None else encode_cursor(last.registered_at, last.id),
        )

    @get("/{objection_id:uuid}", operation_id="getListingObjection", opt=requires())
    async def read(
        self, objection_id: FromPath[uuid.UUID], objections: Objections, principal: PrincipalDep
    ) -> ListingObjection:
        """The objection, for staff, the organisation that objected and the product's seller;
        404 for anyone else."""
        return await objections.get(principal, objection_id)

    @post(
        "/{objection_id:uuid}/suspension",
        operation_id="suspendListingForObjection",
        opt=requires("reviewer"),
        status_code=200,
    )
    async def suspend(
        self,
        objection_id: FromPath[uuid.UUID],
        data: JSONBody[Reason],
        objections: Objections,
        actor: ActorDep,
    ) -> ListingObjection:
        """Suspend the listing until the objection is decided (the product's own suspension:
        its certificates revoked, ``dx.listing.suspended``, its grants suspended). 409 once
        decided, when it already holds the listing, or when the product is suspended for
        another cause."""
        return await objections.suspend_listing(actor, objection_id, data.reason)

    @post(
        "/{objection_id:uuid}/decision",
        operation_id="decideListingObjection",
        opt=requires("reviewer", "admin"),
        status_code=200,
    )
    async def decide(
        self,
        objection_id: FromPath[uuid.UUID],
        data: JSONBody[ListingObjectionDecision],
        objections: Objections,
        actor: ActorDep,
    ) -> ListingObjection:
        """Uphold or dismiss, with a reason shown on the product's public status. Dismissed:
        the listing is reinstated if this objection suspended it and no other open objection
        holds it. Upheld: the listing stays suspended (as the staff's own suspension; delist
        it through the product). ``note`` says which."""
        return await objections.decide(actor, objection_id, data)


class CertificateController(Controller):
    path = "/v1/certificates"
    tags = ["products"]

    @get("/{product_code:str}/status", operation_id="certificateStatus", opt=PUBLIC)
    async def status(self, product_code: FromPath[str], listings: Listings) -> CertificateStatus:
        """Anyone may check a certificate: the product's state and live revision now, and the
        objections to its registration with their decisions (never who objected), signed."""
        return await listings.certificate_status(product_code)


class WellKnownController(Controller):
    path = "/.well-known"
    tags = ["keys"]

    @get("/jwks.json", operation_id="jwks", opt=PUBLIC, media_type=JWK_SET)
    async def keys(self, platform: NamedDependency[Platform]) -> JwkSet:
        """The exchange's current and previous public signing keys, a JWK Set (RFC 7517,
        ``application/jwk-set+json``): verify certificates, receipts, tree heads, the identity
        document and the feed with them, and delivery tokens with the delivery key's."""
        return msgspec.convert(await jwks(platform.pool), JwkSet)
