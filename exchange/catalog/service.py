"""Catalog rows kept in step with listings, and the search over them.

`sync` runs in the listing service's transaction whenever a product's state or live revision
changes: a listed product gets (or updates) its row, any other state removes it. `search` is one
SQL statement for the page and one for the facets; every filter is a parameter, and the page is
cut by a keyset on the sort's columns (never OFFSET), so a page is stable while new products
are listed.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec

from exchange.catalog.tokens import document_tokens
from exchange.listings.schemas import ProductMetadata
from exchange.platform.db import Connection, Executor

Sort = Literal["relevance", "newest", "price_asc", "price_desc"]


def entry_values(
    metadata: ProductMetadata,
) -> dict[str, Any]:
    """The catalog columns a product's metadata gives (pure)."""
    prices = [0 if plan.free else plan.price_fen for plan in metadata.plans]
    texts = [metadata.name_zh, metadata.name_en or "", metadata.summary, *metadata.tags,
             *(f.name for f in metadata.manual.fields)]  # fmt: skip
    return {
        "name_zh": metadata.name_zh,
        "name_en": metadata.name_en,
        "summary": metadata.summary,
        "tags": list(metadata.tags),
        "sector": metadata.sector,
        "product_type": metadata.product_type,
        "delivery": list(metadata.delivery),
        "data_level": metadata.classification.data_level,
        "price_min_fen": min(prices),
        "price_max_fen": max(prices),
        "tokens": document_tokens(texts),
        "name_tokens": document_tokens([metadata.name_zh, metadata.name_en or ""]),
    }


async def sync(conn: Connection, product_id: uuid.UUID, at: datetime) -> None:
    """Bring the product's catalog row in line with its state (call in its transaction)."""
    row = await conn.fetchrow(
        "SELECT p.state, p.product_code, p.live_revision, p.seller_org_id, o.name AS seller_name,"
        " p.recognised_from, r.metadata FROM products p"
        " JOIN organisations o ON o.id = p.seller_org_id"
        " LEFT JOIN product_revisions r ON r.product_id = p.id AND r.number = p.live_revision"
        " WHERE p.id = $1",
        product_id,
    )
    if row is None or row["state"] != "listed" or row["metadata"] is None:
        await conn.execute("DELETE FROM catalog_entries WHERE product_id = $1", product_id)
        return
    values = entry_values(msgspec.convert(row["metadata"], ProductMetadata))
    await conn.execute(
        """
        INSERT INTO catalog_entries (product_id, product_code, revision, seller_org_id,
            seller_name, name_zh, name_en, summary, tags, sector, product_type, delivery,
            data_level, price_min_fen, price_max_fen, listed_at, updated_at, tokens, name_tokens,
            recognised_from)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16, $17,
                $18, $19)
        ON CONFLICT (product_id) DO UPDATE SET revision = excluded.revision,
            seller_name = excluded.seller_name, name_zh = excluded.name_zh,
            name_en = excluded.name_en, summary = excluded.summary, tags = excluded.tags,
            sector = excluded.sector, product_type = excluded.product_type,
            delivery = excluded.delivery, data_level = excluded.data_level,
            price_min_fen = excluded.price_min_fen, price_max_fen = excluded.price_max_fen,
            updated_at = excluded.updated_at, tokens = excluded.tokens,
            name_tokens = excluded.name_tokens
        """,
        product_id, row["product_code"], row["live_revision"], row["seller_org_id"],
        row["seller_name"], values["name_zh"], values["name_en"], values["summary"],
        values["tags"], values["sector"], values["product_type"], values["delivery"],
        values["data_level"], values["price_min_fen"], values["price_max_fen"], at,
        values["tokens"], values["name_tokens"], row["recognised_from"],
    )  # fmt: skip


class CatalogItem(msgspec.Struct, frozen=True):
    """A listed product's public fields."""

    product_id: uuid.UUID
    product_code: str
    name_zh: str
    name_en: str | None
    summary: str
    tags: list[str]
    sector: str
    product_type: str
    delivery: list[str]
    data_level: str
    price_min_fen: int
    price_max_fen: int
    seller_org_id: uuid.UUID
    seller_name: str
    recognised_from: str | None
    listed_at: datetime
    certificate: str


class Facets(msgspec.Struct, frozen=True):
    sector: dict[str, int]
    product_type: dict[str, int]


class CatalogPage(msgspec.Struct, frozen=True):
    items: list[CatalogItem]
    next_cursor: str | None
    facets: Facets | None
    sort: str


@dataclass
class Query:
    """A validated search: see `exchange.catalog.api` for the parameters."""

    q: list[str] = field(default_factory=list)  # tokens
    sector: list[str] = field(default_factory=list)
    product_type: list[str] = field(default_factory=list)
    delivery: list[str] = field(default_factory=list)
    data_level: list[str] = field(default_factory=list)
    price_min: int | None = None
    price_max: int | None = None
    seller: uuid.UUID | None = None
    recognised_from: str | None = None
    sort: Sort = "newest"
    after: tuple[Any, ...] | None = None
    limit: int = 20


_COLUMNS = (
    "product_id, product_code, name_zh, name_en, summary, tags, sector, product_type, delivery,"
    " data_level, price_min_fen, price_max_fen, seller_org_id, seller_name, recognised_from,"
    " listed_at"
)


def _filters(query: Query, args: list[Any]) -> list[str]:
    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = []
    if query.q:
        where.append(f"tokens @> {arg(query.q)}::text[]")
    if query.sector:
        where.append(f"sector = ANY({arg(query.sector)}::text[])")
    if query.product_type:
        where.append(f"product_type = ANY({arg(query.product_type)}::text[])")
    if query.delivery:
        where.append(f"delivery && {arg(query.delivery)}::text[]")
    if query.data_level:
        where.append(f"data_level = ANY({arg(query.data_level)}::text[])")
    if query.price_min is not None:
        where.append(f"price_min_fen >= {arg(query.price_min)}")
    if query.price_max is not None:
        where.append(f"price_min_fen <= {arg(query.price_max)}")
    if query.seller is not None:
        where.append(f"seller_org_id = {arg(query.seller)}")
    if query.recognised_from is not None:
        where.append(f"recognised_from = {arg(query.recognised_from)}")
    return where


def _order(query: Query, args: list[Any]) -> tuple[str, str | None]:
    """The ORDER BY and the keyset condition for the newest and price sorts (relevance pages
    through its tiers newest first)."""
    if query.sort in ("newest", "relevance"):
        keyset = None
        if query.after is not None:
            args.extend(query.after[-2:])
            keyset = f"(listed_at, product_id) < (${len(args) - 1}, ${len(args)})"
        return "listed_at DESC, product_id DESC", keyset
    direction = "ASC" if query.sort == "price_asc" else "DESC"
    keyset = None
    if query.after is not None:
        args.extend(query.after)
        op = ">" if direction == "ASC" else "<"
        keyset = f"(price_min_fen, product_id) {op} (${len(args) - 1}, ${len(args)})"
    return f"price_min_fen {direction}, product_id {direction}", keyset


def cursor_key(sort: Sort, row: Any) -> tuple[Any, ...]:
    if sort == "relevance":
        return (row["rank"], row["listed_at"], row["product_id"])
    if sort == "newest":
        return (row["listed_at"], row["product_id"])
    return (row["price_min_fen"], row["product_id"])


CURSOR_TYPES: dict[str, tuple[type, ...]] = {
    "relevance": (int, datetime, uuid.UUID),
    "newest": (datetime, uuid.UUID),
    "price_asc": (int, uuid.UUID),
    "price_desc": (int, uuid.UUID),
}


PROBE_WINDOW = 1_000
MAX_PROBE_WINDOW = 10_000


async def search(conn: Executor, query: Query) -> list[Any]:
    """One page (limit + 1 rows, to know whether another follows) of the query.

    Relevance has two tiers, each newest first: products whose name holds every keyword, then
    those where only the summary, tags or field names do. A keyword query sorted newest first
    (each relevance tier is) first probes the newest ``PROBE_WINDOW`` products that pass the
    other filters, through the newest-first indexes: a common word fills the page there at once.
    Only a rarer word falls through to the token index, whose matches are then few enough to
    sort. (PostgreSQL cannot choose this itself: it estimates a word and a sector, say 气象 and
    METEOROLOGY, as independent, and they are not.)"""
    if query.sort != "relevance":
        return await _page(conn, query, None, query.after, query.limit + 1)
    first_tier = query.after[0] if query.after else 1
    rows: list[Any] = []
    for tier in (1, 0):
        if tier > first_tier:
            continue
        after = query.after if query.after and tier == first_tier else None
        rows += await _page(conn, query, tier, after, query.limit + 1 - len(rows))
        if len(rows) > query.limit:
            break
    return rows


async def _page(
    conn: Executor, query: Query, tier: int | None, after: tuple[Any, ...] | None, limit: int
) -> list[Any]:
    if query.q and query.sort in ("newest", "relevance"):
        window = PROBE_WINDOW
        while True:
            sql, args = search_sql(query, tier=tier, after=after, limit=limit, probe=window)
            rows = await conn.fetch(sql, *args)
            if len(rows) >= limit:
                return list(rows)
            if not rows or window >= MAX_PROBE_WINDOW:
                break  # rare enough for the token index
            # Widen once to where the density seen so far would fill the page.
            window = min(MAX_PROBE_WINDOW, math.ceil(window * 1.5 * limit / len(rows)))
    sql, args = search_sql(query, tier=tier, after=after, limit=limit)
    return list(await conn.fetch(sql, *args))


def search_sql(
    query: Query,
    *,
    tier: int | None = None,
    after: tuple[Any, ...] | None = None,
    limit: int | None = None,
    probe: int | None = None,
) -> tuple[str, list[Any]]:
    """The page query (for relevance: one tier's, the name tier unless told); with ``probe``,
    over only the newest ``probe`` products passing the filters other than the keywords."""
    args: list[Any] = []
    keywords = Query(**{**query.__dict__, "q": []}) if probe else query
    where = _filters(keywords, args)
    outer: list[str] = []
    if probe and query.q:
        args.append(query.q)
        outer.append(f"(tokens @> ${len(args)}::text[]) IS TRUE")  # never the token index
    rank = "0"
    if query.sort == "relevance":
        tier = 1 if tier is None else tier
        args.append(query.q)
        name_match = f"(name_tokens @> ${len(args)}::text[])"
        (outer if probe else where).append(name_match if tier == 1 else f"NOT {name_match}")
        rank = str(tier)
        query = Query(**{**query.__dict__, "after": after})
    order, keyset = _order(query, args)
    if keyset:
        where.append(keyset)
    where_sql = f"WHERE {' AND '.join(where)}" if where else ""
    if probe:
        args.append(probe)
        source = (
            f"(SELECT * FROM catalog_entries {where_sql} ORDER BY {order} LIMIT ${len(args)})"
            " AS newest"
        )
        where_sql = f"WHERE {' AND '.join(outer)}" if outer else ""
    else:
        source = "catalog_entries"
    args.append(limit or query.limit + 1)
    sql = (
        f"SELECT {_COLUMNS}, {rank} AS rank FROM {source} {where_sql}"
        f" ORDER BY {order} LIMIT ${len(args)}"
    )
    return sql, args


def facets_sql(query: Query) -> tuple[str, list[Any]]:
    """The live facet count (used when the kept counts cannot answer)."""
    args: list[Any] = []
    where = _filters(query, args)
    return (
        "SELECT sector, product_type, count(*) AS n FROM catalog_entries"
        f" {'WHERE ' + ' AND '.join(where) if where else ''}"
        " GROUP BY GROUPING SETS ((sector), (product_type))",
        args,
    )


async def facets(conn: Executor, query: Query) -> Facets:
    """Counts per sector and product type under the query's keyword and filters."""
    other_filters = (
        query.delivery or query.data_level or query.price_min is not None
        or query.price_max is not None or query.seller or query.recognised_from
    )  # fmt: skip
    if len(query.q) <= 1 and not other_filters:
        # sector / product type filters and at most one keyword: the kept counts are exact
        return await _kept_counts(conn, query)
    sql, args = facets_sql(query)
    rows = await conn.fetch(sql, *args)
    return Facets(
        sector=dict(sorted((r["sector"], r["n"]) for r in rows if r["sector"] is not None)),
        product_type=dict(
            sorted((r["product_type"], r["n"]) for r in rows if r["product_type"] is not None)
        ),
    )


async def _kept_counts(conn: Executor, query: Query) -> Facets:
    """From the counts the triggers keep: the whole catalogue's, or one token's."""
    if query.q:
        rows = await conn.fetch(
            "SELECT sector, product_type, n FROM catalog_token_counts WHERE token = $3 AND n > 0"
            " AND ($1::text[] IS NULL OR sector = ANY($1))"
            " AND ($2::text[] IS NULL OR product_type = ANY($2))",
            query.sector or None, query.product_type or None, query.q[0],
        )  # fmt: skip
    else:
        rows = await conn.fetch(
            "SELECT sector, product_type, n FROM catalog_counts WHERE n > 0"
            " AND ($1::text[] IS NULL OR sector = ANY($1))"
            " AND ($2::text[] IS NULL OR product_type = ANY($2))",
            query.sector or None, query.product_type or None,
        )  # fmt: skip
    sectors: dict[str, int] = {}
    types: dict[str, int] = {}
    for row in rows:
        sectors[row["sector"]] = sectors.get(row["sector"], 0) + row["n"]
        types[row["product_type"]] = types.get(row["product_type"], 0) + row["n"]
    return Facets(sector=dict(sorted(sectors.items())), product_type=dict(sorted(types.items())))
