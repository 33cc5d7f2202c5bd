"""HTTP routes for products, their certificates, and the exchange's public keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from exchange.catalog.api import (
    DeliveryQ,
    LevelQ,
    PriceQ,
    SearchParams,
    SearchQ,
    SectorQ,
    SortQ,
    TypeQ,
    search_catalog,
)
from exchange.catalog.service import CatalogPage
from exchange.listings.schemas import (
    Certificate,
    CertificateStatus,
    Product,
    ProductDraft,
    ProductMetadata,
    ProductPage,
    Reason,
)
from exchange.listings.service import ListingService
from exchange.platform.audit import Actor
from exchange.platform.auth import PUBLIC, Principal, authenticate, requires
from exchange.platform.context import Platform
from exchange.platform.errors import Forbidden
from exchange.platform.paging import check_limit, decode_cursor, encode_cursor
from exchange.platform.signing import jwks

Listings = NamedDependency[ListingService]
ActorDep = NamedDependency[Actor]
PrincipalDep = NamedDependency[Principal]


def provide_listings(platform: NamedDependency[Platform]) -> ListingService:
    return ListingService(platform.pool, platform.clock, platform.settings, platform.keyring)


def _page(items: list[Product], limit: int) -> ProductPage:
    cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(items) == limit else None
    return ProductPage(items=items, next_cursor=cursor)


class ProductController(Controller):
    path = "/v1/products"
    tags = ["products"]
    dependencies = {"listings": Provide(provide_listings, sync_to_thread=False)}

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

    @get("/", operation_id="listProducts", opt=PUBLIC)
    async def list_products(
        self,
        request: Request[Any, Any, Any],
        listings: Listings,
        platform: NamedDependency[Platform],
        q: SearchQ = None,
        sector: SectorQ = None,
        product_type: TypeQ = None,
        delivery: DeliveryQ = None,
        data_level: LevelQ = None,
        price_min_fen: PriceQ = None,
        price_max_fen: PriceQ = None,
        seller: Annotated[uuid.UUID | None, QueryParameter(description="seller org id")] = None,
        recognised_from: Annotated[
            str | None, QueryParameter(description="origin exchange code", max_length=8)
        ] = None,
        sort: SortQ = None,
        facets: Annotated[bool, QueryParameter(description="facet counts")] = True,
        mine: Annotated[
            bool, QueryParameter(description="the caller's own products, drafts too")
        ] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 20,
        cursor: Annotated[str | None, QueryParameter()] = None,
    ) -> ProductPage | CatalogPage:
        """Search the listed products (public; only public fields): keywords in Chinese or
        English, filters, sort by relevance / newest / price, facet counts per sector and
        product type, keyset pages (``next_cursor``). With ``mine=true`` and a seller token: the
        caller's own products in every state (drafts too), newest first."""
        if not mine:
            return await search_catalog(
                platform,
                SearchParams(q=q, sector=sector, product_type=product_type, delivery=delivery,
                             data_level=data_level, price_min_fen=price_min_fen,
                             price_max_fen=price_max_fen, seller=seller,
                             recognised_from=recognised_from, sort=sort, limit=limit,
                             cursor=cursor, with_facets=facets),
            )  # fmt: skip
        after = decode_cursor(cursor, (datetime, uuid.UUID)) if cursor else None
        principal = await authenticate(request)
        if not principal.has("seller"):
            raise Forbidden(
                "mine=true needs a token with the seller role",
                extensions={"required_roles": ["seller"]},
            )
        items = await listings.list_own(principal, after=after, limit=check_limit(limit))
        return _page(items, limit)

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

    @get("/{product_id:uuid}/certificate", operation_id="getCertificate", opt=PUBLIC)
    async def certificate(self, product_id: FromPath[uuid.UUID], listings: Listings) -> Certificate:
        """The listing certificate (compact JWS, EdDSA); verify it with /.well-known/jwks.json."""
        return await listings.certificate(product_id)


class CertificateController(Controller):
    path = "/v1/certificates"
    tags = ["products"]
    dependencies = {"listings": Provide(provide_listings, sync_to_thread=False)}

    @get("/{product_code:str}/status", operation_id="certificateStatus", opt=PUBLIC)
    async def status(self, product_code: FromPath[str], listings: Listings) -> CertificateStatus:
        """Anyone may check a certificate: the product's state and live revision now, signed."""
        return await listings.certificate_status(product_code)


class WellKnownController(Controller):
    path = "/.well-known"
    tags = ["keys"]

    @get("/jwks.json", operation_id="jwks", opt=PUBLIC)
    async def keys(self, platform: NamedDependency[Platform]) -> dict[str, Any]:
        """The exchange's current and previous public signing keys."""
        return await jwks(platform.pool)
