"""``dataex catalog publish``: a dated, signed snapshot of the whole resource list.

The snapshot is the DCAT-AP JSON-LD of every listed product (one document, no paging), written
in its canonical form (RFC 8785; the document holds no floating-point numbers, so sorted compact
JSON is that form) under ``<state>/catalog/<date>/``, with a detached JWS by the exchange's key
over its digest (``sha256:<hex>``, ASCII) beside it, and recorded in ``catalog_publications``,
so anyone can check later what was published on a given day: recompute the digest of the file
and verify the JWS with the exchange's JWKS.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import msgspec

from exchange.catalog import dcat
from exchange.catalog.api import dataset_page
from exchange.platform.db import create_pool
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, load_master_key
from exchange.platform.statefolder import private_dirs, write_private

PAGE = 5_000
SNAPSHOT_TYPE = "dataex-catalog-snapshot+jws"


async def publish(settings: Settings, out: IO[str]) -> int:
    assert settings.database_url
    now = datetime.now(UTC)
    base = settings.public_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        datasets: list[dict[str, Any]] = []
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            after: tuple[Any, ...] | None = None
            while True:  # one snapshot of the list, read a page at a time
                page, after = await dataset_page(conn, base, after, PAGE)
                datasets += page
                if after is None:
                    break
        document = dcat.catalog(base, settings.exchange_name, settings.exchange_code, datasets,
                                modified=now.isoformat())  # fmt: skip
        body = msgspec.json.encode(document, order="sorted")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        folder = settings.state_dir.resolve() / "catalog" / now.strftime("%Y-%m-%d")
        private_dirs(folder)  # the state folder's own: 0700 folders, 0600 files
        path = folder / f"catalog-{now.strftime('%Y%m%dT%H%M%SZ')}.jsonld"
        await asyncio.to_thread(write_private, path, body)
        async with pool.acquire() as conn, conn.transaction():
            key = await KeyRing(load_master_key(settings.state_dir.resolve())).current(conn)
            jws = key.sign_detached(digest.encode(), typ=SNAPSHOT_TYPE)
            await asyncio.to_thread(write_private, Path(f"{path}.jws"), jws + "\n")
            await conn.execute(
                "INSERT INTO catalog_publications (published_at, datasets, digest, kid, jws, file)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                now, len(datasets), digest, key.kid, jws, str(path),
            )  # fmt: skip
    finally:
        await pool.close()
    out.write(f"published {len(datasets):,} datasets: {path}\n  digest {digest}\n")
    out.write(f"  signature {path}.jws (detached JWS over the digest, key {key.kid})\n")
    return 0
