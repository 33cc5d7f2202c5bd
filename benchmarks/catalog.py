"""``dataex bench catalog``: search latency for a fixed query mix, over HTTP. A figure, not a test.

Against a running exchange (``--url``) whose database was filled with ``dataex seed``. The mix,
cycled in order: a two-character Chinese keyword with a sector filter, an English keyword, a
filter-only query (sector + product type + price ceiling), and a page deep in the list reached
by a cursor (half a million products down on a million). Every request asks for facets. Prints
p50 / p95 / p99 per kind and overall, then PostgreSQL's plan (EXPLAIN ANALYZE) for the slowest
kind's page and facet queries.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import IO, Any

import msgspec

from exchange.catalog.api import SearchParams, build_query
from exchange.catalog.service import PROBE_WINDOW, facets_sql, search_sql
from exchange.platform.db import connect
from exchange.platform.paging import encode_cursor
from exchange.platform.settings import Settings

ZH = [
    ("气象", "METEOROLOGY"),
    ("医疗", "HEALTH"),
    ("港口", "TRANSPORT"),
    ("碳排", "GREEN_LOWCARBON"),
    ("专利", "SCI_TECH"),
    ("农作", "AGRI"),
    ("信用", "FINANCE"),
    ("客流", "CULTURE_TOURISM"),
]
EN = ["weather", "freight", "credit", "imaging", "patent", "carbon", "retail", "livestock"]
FILTERS = [("MFG", "dataset", 300_000), ("HEALTH", "api", 1_500_000),
           ("TRANSPORT", "index", 80_000), ("FINANCE", "report", 6_000_000)]  # fmt: skip


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def bench_catalog(
    live: Settings, url: str, requests: int, concurrency: int, out: IO[str]
) -> int:
    import httpx  # the bench extra

    assert live.database_url
    conn = await connect(live.database_url)
    try:
        total = await conn.fetchval("SELECT count(*) FROM catalog_entries")
        deep = await conn.fetchrow(
            "SELECT listed_at, product_id FROM catalog_entries"
            " ORDER BY listed_at DESC, product_id DESC OFFSET $1 LIMIT 1",
            total // 2,
        )  # the bench's own set-up; the API never pages with OFFSET
    finally:
        await conn.close()
    if deep is None:
        out.write("the catalog is empty: run `dataex seed --products N` first\n")
        return 2
    cursor = encode_cursor("newest", deep["listed_at"], deep["product_id"])
    mix: list[tuple[str, dict[str, Any]]] = []
    for i in range(8):
        word, sector = ZH[i]
        f_sector, f_type, f_price = FILTERS[i % len(FILTERS)]
        mix += [
            ("zh keyword + sector", {"q": word, "sector": sector}),
            ("en keyword", {"q": EN[i]}),
            ("filter only", {"sector": f_sector, "product_type": f_type,
                             "price_max_fen": f_price}),
            ("deep cursor page", {"cursor": cursor}),
        ]  # fmt: skip
    out.write(f"{total:,} listed products; {requests} requests, {concurrency} at a time\n")
    latencies: dict[str, list[float]] = {}
    errors = 0
    counter = iter(range(requests))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _kind, params in mix:  # warm up once per query
            await client.get("/v1/products", params=params)

        async def worker() -> None:
            nonlocal errors
            for n in counter:
                kind, params = mix[n % len(mix)]
                started = time.perf_counter()
                response = await client.get("/v1/products", params=params)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    errors += 1
                latencies.setdefault(kind, []).append(elapsed)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    every = [v for values in latencies.values() for v in values]
    out.write(f"{len(every) / seconds:,.0f} requests/s, {errors} errors\n")
    out.write(f"{'query':<22}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}\n")
    rows = [*latencies.items(), ("all", every)]
    for kind, values in rows:
        out.write(f"{kind:<22}{statistics.median(values):>9.1f}{_percentile(values, 95):>9.1f}"
                  f"{_percentile(values, 99):>9.1f}\n")  # fmt: skip
    slowest = max(latencies, key=lambda k: _percentile(latencies[k], 95))
    await _plans(live, slowest, next(p for k, p in mix if k == slowest), out)
    return 0 if errors == 0 else 1


async def _plans(live: Settings, slowest: str, params: dict[str, Any], out: IO[str]) -> None:
    """EXPLAIN ANALYZE of the statements the API runs for one query of the slowest kind."""
    assert live.database_url
    listed = {k: [v] if k in ("sector", "product_type") else v for k, v in params.items()}
    query = build_query(msgspec.convert(listed, SearchParams))
    plans: list[tuple[str, tuple[str, list[Any]]]] = []
    if query.q and query.sort in ("newest", "relevance"):
        plans.append(("page, probe of the newest", search_sql(query, probe=PROBE_WINDOW)))
    plans.append(("page" + (", token index (used when the probe falls short)" if query.q else ""),
                  search_sql(query)))  # fmt: skip
    if len(query.q) <= 1 and not (query.delivery or query.data_level or query.seller
                                  or query.price_min is not None or query.price_max is not None
                                  or query.recognised_from):  # fmt: skip
        out.write("\nfacets of the slowest kind come from the kept counts (one lookup)\n")
    else:
        plans.append(("facets", facets_sql(query)))
    conn = await connect(live.database_url)
    try:
        for name, (sql, args) in plans:
            plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
            out.write(f"\nplan of the slowest kind ({slowest}), {name}:\n")
            out.write("\n".join(r[0] for r in plan) + "\n")
    finally:
        await conn.close()
