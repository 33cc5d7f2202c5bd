"""HTTP routes for products, their certificates, and the exchange's public keys."""

from __future__ import annotations

import uuid

import msgspec
from litestar import Controller, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from exchange.listings.schemas import (
    Certificate,
    CertificateStatus,
    JwkSet,
    LegalProhibitionProposal,
    Product,
    ProductDraft,
    ProductMetadata,
    ProductPage,
    Reason,
)
from exchange.listings.service import ListingService
from exchange.platform.audit import Actor
from exchange.platform.auth import PUBLIC, Principal, requires
from exchange.platform.context import Platform
from exchange.platform.paging import encode_cursor
from exchange.platform.signing import jwks
from exchange.review.schemas import ReviewCase

JWK_SET = "application/jwk-set+json"
Listings = NamedDependency[ListingService]
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

    @get("/{product_id:uuid}/certificate", operation_id="getCertificate", opt=PUBLIC)
    async def certificate(self, product_id: FromPath[uuid.UUID], listings: Listings) -> Certificate:
        """The listing certificate (compact JWS, EdDSA); verify it with /.well-known/jwks.json."""
        return await listings.certificate(product_id)


class CertificateController(Controller):
    path = "/v1/certificates"
    tags = ["products"]

    @get("/{product_code:str}/status", operation_id="certificateStatus", opt=PUBLIC)
    async def status(self, product_code: FromPath[str], listings: Listings) -> CertificateStatus:
        """Anyone may check a certificate: the product's state and live revision now, signed."""
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
