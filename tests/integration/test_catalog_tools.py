"""`dataex seed` products are real listings; `dataex catalog publish` writes a signed snapshot."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import rfc8785
from joserfc import jws
from joserfc.jwk import KeySet
from rdflib import Graph

from benchmarks.seed import seed
from exchange.catalog.publish import publish
from exchange.catalog.tokens import tokens
from exchange.platform.signing import b64url, verify_compact
from exchange.runtime import ensure_signing_key


async def test_seeded_products_are_searchable_certified_listings(client, settings, pool):
    await ensure_signing_key(pool, settings)
    count_indexes = "SELECT count(*) FROM pg_indexes WHERE tablename = 'catalog_entries'"
    before = await pool.fetchval(count_indexes)
    out = io.StringIO()
    assert await seed(settings, 300, out) == 0
    assert "seeded 300 listed products" in out.getvalue()
    assert await pool.fetchval("SELECT count(*) FROM catalog_entries") == 300
    assert await pool.fetchval("SELECT sum(n) FROM catalog_counts") == 300
    assert await pool.fetchval(count_indexes) == before  # dropped for the load, rebuilt after
    tokens_total = await pool.fetchval("SELECT sum(cardinality(tokens)) FROM catalog_entries")
    assert await pool.fetchval("SELECT sum(n) FROM catalog_token_counts") == tokens_total
    sectors = await pool.fetchval("SELECT count(DISTINCT sector) FROM catalog_entries")
    assert sectors >= 12
    page = (await client.get("/v1/products", params={"q": "气象", "limit": 200})).json()
    assert page["items"]
    for item in page["items"]:
        texts = [item["name_zh"], item["summary"], *item["tags"]]
        assert any("气象" in t for t in texts) or "气象" in tokens(" ".join(texts))
    assert sum(page["facets"]["sector"].values()) >= len(page["items"])
    english = (await client.get("/v1/products", params={"q": "weather"})).json()
    assert english["items"] and all("weather" in i["name_en"].lower() for i in english["items"])
    # A seeded product's certificate verifies and names the digest of its stored metadata.
    jwks = (await client.get("/.well-known/jwks.json")).json()
    row = await pool.fetchrow(
        "SELECT p.certificate, r.metadata, r.digest FROM products p JOIN product_revisions r"
        " ON r.product_id = p.id LIMIT 1"
    )
    claims = verify_compact(row["certificate"], jwks).claims
    assert claims["revision_digest"] == row["digest"]
    assert row["digest"] == "sha256:" + hashlib.sha256(rfc8785.dumps(row["metadata"])).hexdigest()


async def test_publish_writes_a_dated_signed_snapshot(client, settings, pool):
    await ensure_signing_key(pool, settings)
    await seed(settings, 40, io.StringIO())
    out = io.StringIO()
    assert await publish(settings, out) == 0
    record = await pool.fetchrow("SELECT * FROM catalog_publications")
    assert record["datasets"] == 40
    body = Path(record["file"]).read_bytes()  # noqa: ASYNC240 - a test reading a small file
    assert record["digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
    document = json.loads(body)
    assert rfc8785.dumps(document) == body  # stored in canonical form
    assert len(document["dcat:dataset"]) == 40
    assert len(Graph().parse(data=body, format="json-ld")) > 40 * 10
    detached = Path(f"{record['file']}.jws").read_text().strip()  # noqa: ASYNC240
    assert detached == record["jws"]
    header, _, signature = detached.split(".")
    keys = KeySet.import_key_set((await client.get("/.well-known/jwks.json")).json())
    jws.deserialize_compact(
        f"{header}.{b64url(record['digest'].encode())}.{signature}", keys, algorithms=["EdDSA"]
    )
