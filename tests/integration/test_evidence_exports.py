"""The system evidence each room attaches to a dispute, from real trades, calls and jobs: the
signed contract, the listing and its certificate, grants with their events, token issues without
tokens, usage records carrying the SHA-256 of what the gateway and file delivery served, the
grants' dispute suspension, and job receipts (issue 21)."""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from joserfc import jws
from joserfc.jwk import KeySet

from contracts.orders.evidence import contract_evidence, trade_listing
from exchange.compute import receipts
from exchange.compute.evidence import job_evidence
from exchange.delivery.evidence import delivery_evidence, trade_grant_ids, usage_lines
from exchange.delivery.service import trade_has_live_grant
from exchange.listings.evidence import listing_evidence
from exchange.platform.canonical import canonical_json, sha256_digest
from exchange.platform.metering import Dimension
from exchange.platform.signing import b64url, jwks
from tests.kit.api import bearer
from tests.kit.compute import declared, runner, sandbox_grant, upload
from tests.kit.delivery import active_grant, deliver, executed, grant_service
from tests.kit.documents import metadata
from tests.kit.gateway import bearer as gateway_bearer
from tests.kit.gateway import gateway_in_process, upstream
from tests.kit.market import list_product, order_body, place, standing_offer

JSON = msgspec.json.Decoder()


def lines(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n")
    decoded = [JSON.decode(line) for line in body.splitlines()]
    for line, value in zip(body.splitlines(), decoded, strict=True):
        assert line == canonical_json(value)  # each line is canonical JSON
    return decoded


def canonical(body: bytes) -> dict[str, Any]:
    document: dict[str, Any] = JSON.decode(body)
    assert body == canonical_json(document)
    return document


def verify_detached(detached: str, payload: bytes, keys: KeySet) -> None:
    header, _, signature = detached.split(".")
    jws.deserialize_compact(f"{header}.{b64url(payload)}.{signature}", keys, algorithms=["EdDSA"])


async def test_the_contract_with_its_signatures_and_the_listing_with_its_certificate(
    client, trade, pool
):
    product_id = await list_product(client, trade)
    terms = await standing_offer(client, trade, product_id)
    placed = await place(client, trade, order_body(product_id))
    assert placed.status_code == 201, placed.text
    contract_id = placed.json()["contract_id"]
    served = await client.get(f"/v1/contracts/{contract_id}", headers=bearer(trade["buyer"]))
    buyer = trade["signers"]["buyer"]
    signed = await client.post(
        f"/v1/contracts/{contract_id}/signatures",
        json={"jws": buyer.detached(buyer.kid, served.json()["digest"].encode())},
        headers=bearer(trade["buyer"]),
    )
    assert signed.status_code == 200 and signed.json()["state"] == "executed", signed.text
    trade_id = uuid.UUID(signed.json()["trade_id"])
    shown = (await client.get(f"/v1/contracts/{trade_id}", headers=bearer(trade["seller"]))).json()

    async with pool.acquire() as conn:
        [item] = await contract_evidence(conn, trade_id)
        bought = await trade_listing(conn, trade_id)
        assert bought == (uuid.UUID(product_id), 1)
        [listed] = await listing_evidence(conn, *bought)
        assert await contract_evidence(conn, uuid.uuid4()) == []
        assert await trade_listing(conn, uuid.uuid4()) is None
        assert await listing_evidence(conn, bought[0], 99) == []

    assert (item.kind, item.name, item.media_type) == ("contract", "contract.json",
                                                      "application/json")  # fmt: skip
    contract = canonical(item.body)
    assert contract["type"] == "dataex.evidence.contract.v1"
    assert contract["trade_id"] == str(trade_id) and contract["state"] == "executed"
    # What GET /v1/contracts/{id} shows its parties, and the digest checks over the document.
    assert contract["digest"] == shown["digest"] == sha256_digest(contract["document"])
    assert contract["document"] == shown["document"] and contract["text_zh"] == shown["text_zh"]
    assert contract["standing_offer"] == shown["standing_offer"]
    by_party = {s["party"]: s for s in contract["signatures"]}
    assert {p: s["kind"] for p, s in by_party.items()} == {
        "buyer": "signature", "seller": "standing_offer", "exchange": "countersignature"
    }  # fmt: skip
    digest = contract["digest"].encode()
    verify_detached(by_party["buyer"]["jws"], digest,
                    KeySet.import_key_set({"keys": [buyer.public | {"kid": buyer.kid}]}))  # fmt: skip
    seller = trade["signers"]["seller"]
    verify_detached(by_party["seller"]["jws"], canonical_json(contract["standing_offer"]),
                    KeySet.import_key_set({"keys": [seller.public | {"kid": seller.kid}]}))  # fmt: skip
    assert sha256_digest(contract["standing_offer"]) == terms["digest"]
    exchange_keys = KeySet.import_key_set((await client.get("/.well-known/jwks.json")).json())
    verify_detached(by_party["exchange"]["jws"], digest, exchange_keys)

    assert (listed.kind, listed.name) == ("listing", "listing.json")
    listing = canonical(listed.body)
    product = await client.get(f"/v1/products/{product_id}", headers=bearer(trade["seller"]))
    certificate = (await client.get(f"/v1/products/{product_id}/certificate")).json()
    revision = listing["revision"]
    assert revision["number"] == 1 and listing["product_code"] == product.json()["product_code"]
    assert revision["digest"] == certificate["revision_digest"]
    assert revision["digest"] == sha256_digest(revision["metadata"])  # checkable by anyone
    assert contract["document"]["subject_data"]["revision_digest"] == revision["digest"]
    assert listing["manual_digest"] == sha256_digest(revision["metadata"]["manual"])
    assert listing["sample_digest"] == sha256_digest(revision["metadata"]["manual"]["sample"])
    assert listing["certificate"]["jws"] == certificate["jws"]
    assert listing["certificate"]["kid"] == certificate["kid"]
    assert listing["certificate_covers_revision"] is True
    assert listing["product_state"] == "listed"
    jws.deserialize_compact(listing["certificate"]["jws"], exchange_keys, algorithms=["EdDSA"])


async def _api_and_file_trade(client, trade, pool, clock, settings, data: bytes):
    """A listed product with one declared, stored file and an upstream; a trade of it in two
    modes (API and file); the grants' ids and the delivery tokens the buyer holds."""
    document = metadata(manual__files=[declared("obs.csv", data)], delivery=["file", "api"])
    product_id = await list_product(client, trade, document)
    await upload(client, trade["seller"], product_id, "obs.csv", data)
    product = await client.get(f"/v1/products/{product_id}", headers=bearer(trade["seller"]))
    bytes_dimension = [Dimension(name="bytes", unit_price_millifen=0, quota=None)]
    terms = executed(product_id=product_id, product_code=product.json()["product_code"],
                     buyer_org=trade["buyer_org"], seller_org=trade["seller_org"],
                     modes=("api", "file"), dimensions=bytes_dimension)  # fmt: skip
    await active_grant(pool, grant_service(pool, clock, settings), terms)
    trade_id = uuid.UUID(terms.trade_id)
    grants = {mode: uuid.uuid5(trade_id, mode) for mode in ("api", "file")}
    tokens = {}
    for mode, grant_id in grants.items():
        issued = await client.post(f"/v1/grants/{grant_id}/tokens", headers=bearer(trade["buyer"]))
        assert issued.status_code == 201, issued.text
        tokens[mode] = issued.json()
    return product_id, trade_id, grants, tokens


async def test_delivery_evidence_matches_what_the_gateway_and_file_delivery_served(
    client, trade, pool, clock, settings
):
    data = b"station,temp_c\n" + b"".join(b"%05d,%d\n" % (i, i % 40) for i in range(20_000))
    try:
        product_id, trade_id, grants, tokens = await _api_and_file_trade(
            client, trade, pool, clock, settings, data
        )
        spare = await client.post(f"/v1/grants/{grants['api']}/tokens",
                                  headers=bearer(trade["buyer"]))  # fmt: skip
        revoked = await client.post(
            f"/v1/grants/{grants['api']}/tokens/{spare.json()['jti']}/revoke",
            headers=bearer(trade["buyer"]),
        )
        assert revoked.status_code in (200, 204), revoked.text

        # Three calls through the gateway, each answered with a different body.
        async with upstream() as seller:
            put = await client.put(f"/v1/products/{product_id}/upstream",
                                   json={"base_url": seller.url},
                                   headers=bearer(trade["seller"]))  # fmt: skip
            assert put.status_code in (200, 201), put.text
            async with gateway_in_process(settings) as (_, gateway):
                answers = []
                for tail in ("v1/rows?x=1", "v1/rows/2", "v1/other"):
                    answer = await gateway.get(f"/gateway/{grants['api']}/{tail}",
                                               headers=gateway_bearer(tokens["api"]["token"]))  # fmt: skip
                    assert answer.status_code == 200, answer.text
                    answers.append(answer)
        # A file, by range and whole.
        path = f"/v1/grants/{grants['file']}/files/obs.csv"
        file_bearer = bearer(tokens["file"]["token"])
        part = await client.get(path, headers={**file_bearer, "Range": "bytes=100-4099"})
        assert part.status_code == 206 and part.content == data[100:4100]
        whole = await client.get(path, headers=file_bearer)
        assert whole.status_code == 200 and whole.content == data

        async with pool.acquire() as conn:
            items = await delivery_evidence(conn, trade_id)
            assert await delivery_evidence(conn, uuid.uuid4()) == []
            assert set(await trade_grant_ids(conn, trade_id)) == set(grants.values())
    finally:
        shutil.rmtree(settings.state_dir / "blobs", ignore_errors=True)

    assert [(i.kind, i.name, i.media_type) for i in items] == [
        ("grants", "grants.json", "application/json"),
        ("tokens", "tokens.json", "application/json"),
        ("usage", "usage-records.jsonl", "application/jsonl"),
    ]
    grants_doc, tokens_doc, usage = canonical(items[0].body), canonical(items[1].body), items[2]

    # Usage: every record, in served order; each gateway call's record carries the SHA-256 of
    # the very body the client received, found by its Dataex-Usage-Id.
    records = lines(usage.body)
    stored = await pool.fetch(
        "SELECT u.* FROM usage_records u JOIN grants g ON g.id = u.grant_id"
        " WHERE g.trade_id = $1 ORDER BY u.served_at, u.id",
        trade_id,
    )
    assert [r["id"] for r in records] == [str(s["id"]) for s in stored]
    assert len(records) == 3 + 2  # three calls; the file is small: one piece a download
    for record in records:
        assert set(record) == {"id", "grant_id", "served_at", "units", "cost_millifen",
                               "detail", "period_seq"}  # fmt: skip
    by_id = {r["id"]: r for r in records}
    for answer in answers:
        record = by_id[answer.headers["dataex-usage-id"]]
        assert record["grant_id"] == str(grants["api"])
        assert record["detail"]["sha256"] == hashlib.sha256(answer.content).hexdigest()
        assert record["units"] == {"requests": 1, "bytes": len(answer.content)}
        assert record["detail"]["status"] == 200 and record["detail"]["method"] == "GET"
    assert len({by_id[a.headers["dataex-usage-id"]]["detail"]["sha256"] for a in answers}) == 3
    files = [r for r in records if r["grant_id"] == str(grants["file"])]
    file_sha = hashlib.sha256(data).hexdigest()
    assert [(r["detail"]["file"], r["detail"]["sha256"], r["detail"]["range"], r["units"])
            for r in files] == [
        ("obs.csv", file_sha, "bytes 100-4099", {"bytes": 4000}),
        ("obs.csv", file_sha, f"bytes 0-{len(data) - 1}", {"bytes": len(data)}),
    ]  # fmt: skip
    assert [r["detail"]["status"] for r in files] == [206, 200]
    async with pool.acquire() as conn:
        assert await usage_lines(conn, trade_id) == usage.body  # the same bytes every time

    # Tokens: every issue, never a token.
    assert tokens_doc["type"] == "dataex.evidence.tokens.v1"
    issued = [tokens["api"], tokens["file"], spare.json()]
    assert {t["jti"] for t in tokens_doc["tokens"]} == {t["jti"] for t in issued}
    for entry in tokens_doc["tokens"]:
        assert set(entry) == {"jti", "grant_id", "scope", "issued_to", "issued_at",
                              "expires_at", "revoked_at"}  # fmt: skip
        assert entry["issued_to"] == trade["buyer_org"]["id"]
        assert (entry["revoked_at"] is not None) == (entry["jti"] == spare.json()["jti"])
    for token in issued:
        for part_of_it in token["token"].split("."):
            assert part_of_it.encode() not in items[1].body

    # Grants: as they stand, with their events as published.
    assert grants_doc["type"] == "dataex.evidence.grants.v1"
    assert grants_doc["trade_id"] == str(trade_id)
    shown = {g["mode"]: g for g in grants_doc["grants"]}
    assert set(shown) == {"api", "file"}
    api = shown["api"]
    assert api["id"] == str(grants["api"]) and api["state"] == "active"
    assert api["quotas"] == [] and api["periods"] == []
    assert api["events"][0]["type"] == "dx.grant.activated"
    assert api["events"][-1]["type"] == "dx.grant.changed"  # the revoked token
    assert api["events"][-1]["data"]["revoked_jti"] == spare.json()["jti"]
    assert [e["data"]["version"] for e in api["events"]] == sorted(
        e["data"]["version"] for e in api["events"]
    )
    assert all(e["subject"] == str(grants["api"]) for e in api["events"])


async def test_a_dispute_suspends_the_trades_grants_and_its_end_lifts_only_that_cause(
    client, trade, pool, clock, settings
):
    grants = grant_service(pool, clock, settings)
    product_id = await list_product(client, trade)
    product = await client.get(f"/v1/products/{product_id}", headers=bearer(trade["seller"]))
    code = product.json()["product_code"]
    terms = executed(product_id=product_id, product_code=code, buyer_org=trade["buyer_org"],
                     seller_org=trade["seller_org"], modes=("api", "file"), term_days=30)  # fmt: skip
    await active_grant(pool, grants, terms)
    trade_id = uuid.UUID(terms.trade_id)
    now = datetime.now(UTC)

    async def states() -> dict[str, tuple[str, list[str]]]:
        rows = await pool.fetch(
            "SELECT mode, state, suspended_by FROM grants WHERE trade_id = $1", trade_id
        )
        return {r["mode"]: (r["state"], list(r["suspended_by"])) for r in rows}

    async def events() -> list[tuple[str, str]]:
        rows = await pool.fetch(
            "SELECT payload FROM outbox WHERE subject LIKE '%.grant.%' ORDER BY created_at, id"
        )
        decoded = [JSON.decode(bytes(r["payload"])) for r in rows]
        return [(e["type"], e["data"]["reason"]) for e in decoded
                if e["data"]["trade_id"] == str(trade_id)]  # fmt: skip

    async with pool.acquire() as conn:
        assert await trade_has_live_grant(conn, trade_id, now) is True
        assert await trade_has_live_grant(conn, uuid.uuid4(), now) is False
        assert await trade_has_live_grant(conn, trade_id, now + timedelta(days=31)) is False
    before = len(await events())
    for _ in range(2):  # opening twice suspends once
        async with pool.acquire() as conn, conn.transaction():
            await grants.on_dispute_opened(conn, trade_id, "dispute D opened: not_as_described",
                                           now, "req-dispute")  # fmt: skip
    assert await states() == {"api": ("suspended", ["dispute"]),
                              "file": ("suspended", ["dispute"])}  # fmt: skip
    suspended = (await events())[before:]
    assert suspended == [("dx.grant.suspended", "dispute D opened: not_as_described")] * 2
    async with pool.acquire() as conn:
        assert await trade_has_live_grant(conn, trade_id, now) is True  # the seller's window
    # The listing is suspended meanwhile: lifting the dispute leaves that cause.
    await deliver(pool, grants, "dx.listing.suspended", "dx.listing.suspended",
                  {"product_id": product_id, "product_code": code, "exchange": "DX",
                   "revision": 1, "revision_digest": None, "reason": "staff"})  # fmt: skip
    assert await states() == {m: ("suspended", ["dispute", "listing"]) for m in ("api", "file")}
    async with pool.acquire() as conn, conn.transaction():
        await grants.on_dispute_closed(conn, trade_id, now, "req-closed")
    assert await states() == {m: ("suspended", ["listing"]) for m in ("api", "file")}
    await deliver(pool, grants, "dx.listing.published", "dx.listing.published",
                  {"product_id": product_id, "product_code": code, "exchange": "DX",
                   "revision": 1, "revision_digest": None})  # fmt: skip
    assert await states() == {m: ("active", []) for m in ("api", "file")}
    # Opened and closed with nothing else holding: suspended, then resumed.
    async with pool.acquire() as conn, conn.transaction():
        await grants.on_dispute_opened(conn, trade_id, "dispute E opened", now, None)
    async with pool.acquire() as conn, conn.transaction():
        await grants.on_dispute_closed(conn, trade_id, now, None)
        await grants.on_dispute_closed(conn, trade_id, now, None)  # twice: nothing more
    assert await states() == {m: ("active", []) for m in ("api", "file")}
    kinds = [kind for kind, _ in (await events())[before:]]
    assert kinds[-4:] == ["dx.grant.suspended"] * 2 + ["dx.grant.resumed"] * 2
    stored = await pool.fetch(
        "SELECT payload, request_id FROM outbox WHERE request_id = 'req-dispute'"
    )
    assert len(stored) == 2  # the dispute's request id travels with its events
    # Ended grants are no window any more.
    async with pool.acquire() as conn, conn.transaction():
        await grants.on_trade_ended(conn, trade_id, "the trade voided")
    async with pool.acquire() as conn:
        assert await trade_has_live_grant(conn, trade_id, now) is False
        await grants.on_dispute_opened(conn, trade_id, "too late", now, None)  # nothing to do
    assert await states() == {m: ("revoked", []) for m in ("api", "file")}


async def test_job_evidence_lists_the_receipts_of_the_trades_finished_jobs(
    client, trade, pool, clock, settings
):
    grant_id = await sandbox_grant(client, trade, pool, clock, settings)
    trade_id = await pool.fetchval("SELECT trade_id FROM grants WHERE id = $1", grant_id)
    async with pool.acquire() as conn:
        assert await job_evidence(conn, trade_id, await trade_grant_ids(conn, trade_id)) == []
    query = {"kind": "query", "query": {"aggregate": "count", "epsilon": 0.1}}
    made = await client.post(f"/v1/grants/{grant_id}/jobs", json=query,
                             headers={**bearer(trade["buyer"]), "Idempotency-Key": "ev"})  # fmt: skip
    assert made.status_code == 201, made.text
    queued = await client.post(f"/v1/grants/{grant_id}/jobs", json=query,
                               headers={**bearer(trade["buyer"]), "Idempotency-Key": "ev2"})  # fmt: skip
    assert queued.status_code == 201, queued.text  # still queued: no receipt, not listed
    job_id = made.json()["id"]
    await runner(pool, clock, settings).handle(uuid.UUID(job_id))
    async with pool.acquire() as conn:
        [item] = await job_evidence(conn, trade_id, await trade_grant_ids(conn, trade_id))
    assert (item.kind, item.name, item.media_type) == ("job_receipts", "job-receipts.json",
                                                      "application/json")  # fmt: skip
    document = canonical(item.body)
    assert document["type"] == "dataex.evidence.job-receipts.v1"
    assert document["trade_id"] == str(trade_id)
    [job] = document["jobs"]
    assert (job["job_id"], job["grant_id"], job["state"]) == (job_id, str(grant_id), "succeeded")
    served = await client.get(f"/v1/jobs/{job_id}/receipt", headers=bearer(trade["buyer"]))
    assert canonical_json(job["receipt"]) == served.content
    checked = receipts.verify(canonical_json(job["receipt"]), await jwks(pool))
    assert checked["job_id"] == job_id and checked["state"] == "succeeded"


async def test_ten_thousand_usage_records_export_well_under_half_a_second(
    pool, clock, settings, client, trade
):
    product_id = await list_product(client, trade)
    terms = executed(product_id=product_id, product_code="X", buyer_org=trade["buyer_org"],
                     seller_org=trade["seller_org"], modes=("api",))  # fmt: skip
    grant_id = await active_grant(pool, grant_service(pool, clock, settings), terms)
    trade_id = uuid.UUID(terms.trade_id)
    start = datetime.now(UTC)
    n = 10_000
    await pool.execute(
        "INSERT INTO usage_records (id, grant_id, served_at, units, leases, cost_millifen,"
        " detail) SELECT gen_random_uuid(), $1, $2::timestamptz + i * interval '1 ms',"
        " jsonb_build_object('requests', 1, 'bytes', 100 + i), '{}', 7 * i,"
        " jsonb_build_object('method', 'GET', 'path', '/v1/rows/' || i, 'status', 200,"
        "   'sha256', encode(sha256(i::text::bytea), 'hex'))"
        " FROM generate_series(1, $3) AS i",
        grant_id, start, n,
    )  # fmt: skip
    timings = []
    async with pool.acquire() as conn:
        for _ in range(3):
            began = time.perf_counter()
            body = await usage_lines(conn, trade_id)
            timings.append(time.perf_counter() - began)
    records = body.splitlines()
    assert len(records) == n
    first, last = JSON.decode(records[0]), JSON.decode(records[-1])
    assert first["detail"]["path"] == "/v1/rows/1" and last["detail"]["path"] == f"/v1/rows/{n}"
    print(f"usage-records.jsonl of {n} records: best {min(timings) * 1000:.1f} ms,"
          f" {len(body)} bytes")  # fmt: skip
    assert min(timings) < 0.5
