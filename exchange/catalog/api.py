"""HTTP: catalog search (used by ``GET /v1/products``) and the published resource list."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Schema
from litestar.params import QueryParameter

from contracts.policy.attributes import DataLevel
from exchange.catalog import dcat
from exchange.catalog.schemas import DcatCatalog
from exchange.catalog.service import (
    CURSOR_TYPES,
    CatalogItem,
    CatalogPage,
    Query,
    Sort,
    cursor_key,
    facets,
    search,
)
from exchange.catalog.tokens import tokens
from exchange.listings.api import Listings, ProductController, product_page
from exchange.listings.schemas import (
    DeliveryMode,
    ProductMetadata,
    ProductPage,
    ProductType,
    Sector,
)
from exchange.platform.auth import PUBLIC, authenticate
from exchange.platform.context import Platform
from exchange.platform.db import Executor
from exchange.platform.errors import DataexError, FieldError, Forbidden, InvalidInput
from exchange.platform.http import DocumentedOperation
from exchange.platform.paging import check_limit, decode_cursor, encode_cursor
from exchange.platform.settings import Settings

JSON_LD = "application/ld+json"


class BadParameter(DataexError):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid_parameter"
    title: ClassVar[str] = "A query parameter is not valid"


def bad(name: str, message: str) -> BadParameter:
    return BadParameter(
        f"{name}: {message}", errors=[FieldError(path=name, message=message, source="query")]
    )


class SearchParams(msgspec.Struct, frozen=True, kw_only=True):
    q: str | None = None
    sector: Sequence[str] | None = None
    product_type: Sequence[str] | None = None
    delivery: Sequence[str] | None = None
    data_level: Sequence[str] | None = None
    price_min_fen: int | None = None
    price_max_fen: int | None = None
    seller: uuid.UUID | None = None
    recognised_from: str | None = None
    sort: Sort | None = None
    limit: int = 20
    cursor: str | None = None
    with_facets: bool = True


def build_query(params: SearchParams) -> Query:
    """Validate the search parameters into a `Query`; each bad one is a 400 naming it."""
    words: list[str] = []
    if params.q is not None:
        if not params.q.strip() or len(params.q) > 200:
            raise bad("q", "give 1 to 200 characters")
        words = tokens(params.q)
        if not words:
            raise bad("q", "no searchable word in it (letters, digits or Chinese characters)")
        if len(words) > 32:
            raise bad("q", "too many words (at most 32 search tokens)")
    if (
        params.price_min_fen is not None
        and params.price_max_fen is not None
        and params.price_min_fen > params.price_max_fen
    ):
        raise bad("price_min_fen", "must not be above price_max_fen")
    sort: Sort = params.sort or ("relevance" if words else "newest")
    if sort == "relevance" and not words:
        raise bad("sort", "relevance needs a keyword (q)")
    after = None
    if params.cursor:
        decoded = None
        for issued in (sort, *(s for s in CURSOR_TYPES if s != sort)):
            try:
                decoded = decode_cursor(params.cursor, (str, *CURSOR_TYPES[issued]))
                break
            except InvalidInput:
                continue
        if decoded is None or decoded[0] not in CURSOR_TYPES:
            raise bad("cursor", "not a cursor this API issued")
        if decoded[0] != sort:
            raise bad("cursor", f"issued for sort={decoded[0]}, not sort={sort}")
        after = tuple(decoded[1:])
    return Query(
        q=words,
        sector=list(params.sector or []),
        product_type=list(params.product_type or []),
        delivery=list(params.delivery or []),
        data_level=list(params.data_level or []),
        price_min=params.price_min_fen,
        price_max=params.price_max_fen,
        seller=params.seller,
        recognised_from=params.recognised_from,
        sort=sort,
        after=after,
        limit=params.limit,
    )


async def search_catalog(platform: Platform, params: SearchParams) -> CatalogPage:
    query = build_query(params)
    async with platform.pool.acquire() as conn:
        rows = await search(conn, query)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        certificates: dict[uuid.UUID, str] = {
            row["id"]: row["certificate"]
            for row in await conn.fetch(
                "SELECT id, certificate FROM products WHERE id = ANY($1::uuid[])",
                [row["product_id"] for row in rows],
            )
        }  # one query for the page (the catalog table stays narrow)
        counts = await facets(conn, query) if params.with_facets else None
    next_cursor = (
        encode_cursor(query.sort, *cursor_key(query.sort, rows[-1])) if more and rows else None
    )
    fields = [f for f in CatalogItem.__struct_fields__ if f != "certificate"]
    items = [
        CatalogItem(**{f: row[f] for f in fields}, certificate=certificates[row["product_id"]])
        for row in rows
    ]
    return CatalogPage(items=items, next_cursor=next_cursor, facets=counts, sort=query.sort)


SearchQ = Annotated[
    str | None,
    QueryParameter(description="keywords, Chinese or English (name, summary, tags, field names)"),
]
SectorQ = Annotated[list[Sector] | None, QueryParameter(description="one or more sectors")]
TypeQ = Annotated[list[ProductType] | None, QueryParameter(description="product types")]
DeliveryQ = Annotated[list[DeliveryMode] | None, QueryParameter(description="delivery modes")]
LevelQ = Annotated[list[DataLevel] | None, QueryParameter(description="data levels")]
PriceQ = Annotated[int | None, QueryParameter(ge=0, le=10**13)]
SortQ = Annotated[
    Sort | None, QueryParameter(description="relevance (default with q), newest, price_asc/desc")
]


@dataclasses.dataclass
class CatalogOperation(DocumentedOperation):
    """The resource list comes as JSON-LD (`DcatCatalog`) or, asked for, as Turtle: both are
    documented."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                **(ok.content or {}),
                "text/turtle": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING)),
            }


class CatalogController(Controller):
    path = "/v1/catalog"
    tags = ["catalog"]

    @get(
        "/",
        operation_id="getCatalog",
        opt=PUBLIC,
        operation_class=CatalogOperation,
        responses={
            200: ResponseSpec(
                DcatCatalog,
                generate_examples=False,
                media_type=JSON_LD,
                description="A page of the resource list: DCAT-AP 3 JSON-LD (the default), or"
                " Turtle with Accept: text/turtle",
            )
        },
    )
    async def published(
        self,
        request: Request[Any, Any, Any],
        platform: NamedDependency[Platform],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, QueryParameter()] = None,
    ) -> Response[Any]:
        """The resource list as DCAT-AP 3 JSON-LD (`application/ld+json`, the default) or
        Turtle (`Accept: text/turtle`), newest first, paged: `hydra:view` is this page (its
        `@id`), with `hydra:first` and, unless this is the last page, `hydra:next`."""
        after = None
        if cursor:
            try:
                after = decode_cursor(cursor, (datetime, uuid.UUID))
            except InvalidInput as error:
                raise bad("cursor", "not a cursor this API issued") from error
        async with platform.pool.acquire() as conn:
            document = await catalog_document(
                conn, platform.settings, str(request.base_url).rstrip("/"), after, limit
            )
        accept = request.headers.get("accept", "")
        if "text/turtle" in accept:
            return Response(content=dcat.to_turtle(document), media_type="text/turtle")
        return Response(content=msgspec.json.encode(document), media_type=JSON_LD)


async def dataset_page(
    conn: Executor, base: str, after: tuple[Any, ...] | None, limit: int
) -> tuple[list[dict[str, Any]], tuple[Any, ...] | None]:
    """Up to ``limit`` datasets, newest first, after the keyset ``after``; and the next key."""
    rows = await conn.fetch(
        "SELECT c.*, r.metadata, o.uscc FROM catalog_entries c"
        " JOIN product_revisions r ON r.product_id = c.product_id AND r.number = c.revision"
        " JOIN organisations o ON o.id = c.seller_org_id"
        " WHERE ($1::timestamptz IS NULL OR (c.listed_at, c.product_id) < ($1, $2::uuid))"
        " ORDER BY c.listed_at DESC, c.product_id DESC LIMIT $3",
        after[0] if after else None, after[1] if after else None, limit + 1,
    )  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    datasets = [
        dcat.dataset(base, row, msgspec.convert(row["metadata"], ProductMetadata), row["uscc"])
        for row in rows
    ]
    return datasets, (rows[-1]["listed_at"], rows[-1]["product_id"]) if more else None


async def catalog_document(
    conn: Executor, settings: Settings, base: str, after: tuple[Any, ...] | None, limit: int
) -> dict[str, Any]:
    """One page of the resource list (datasets newest first), with its `hydra:view`: this
    page's URL, the first page's and the next page's."""
    datasets, next_key = await dataset_page(conn, base, after, limit)
    first = f"{base}/v1/catalog?limit={limit}"
    page = dcat.PageLinks(
        current=first if after is None else f"{first}&cursor={encode_cursor(*after)}",
        first=first,
        next=None if next_key is None else f"{first}&cursor={encode_cursor(*next_key)}",
    )
    return dcat.catalog(base, settings.exchange_name, settings.exchange_code, datasets, page)


class ProductCatalogController(ProductController):
    """The listing room's product routes plus ``GET /v1/products``: the catalog search, or
    with ``mine=true`` the seller's own products (from the listing room)."""

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
        return product_page(items, limit)
