"""File delivery over HTTP against real PostgreSQL: resumable chunked uploads checked chunk by
chunk and as a whole, ranged downloads with a delivery token, every byte sent metered.

The market, the grant and the app come from the ordinary fixtures; the composition root wires
one blob store, lease book and usage recorder per process (`wiring.file_parts`).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from exchange import wiring
from exchange.delivery.files import MAX_PIECE_BYTES
from exchange.delivery.storage import RECORD_BYTES, sealed_size
from exchange.platform.audit import Actor
from exchange.platform.context import Platform
from exchange.platform.metering import Dimension
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.api import assert_problem, bearer
from tests.kit.delivery import active_grant, executed, grant_service
from tests.kit.documents import metadata
from tests.kit.market import list_product

MiB = 1 << 20
BLOCK = 8 * MiB  # the upload chunk size the exchange answers
BIG = 200 * 10**6  # 23 full chunks and a short one; the last record short too
OCTETS = {"Content-Type": "application/octet-stream"}


def block(seed: int, index: int, size: int) -> bytes:
    """Chunk ``index`` of a deterministic file of ``size`` bytes (made again when needed, so
    200 MB are never held at once)."""
    return random.Random(seed * 1_000_003 + index).randbytes(min(BLOCK, size - index * BLOCK))


def blocks(seed: int, size: int) -> Iterator[bytes]:
    for index in range(-(-size // BLOCK)):
        yield block(seed, index, size)


def declared(name: str, seed: int, size: int) -> dict[str, Any]:
    digest = hashlib.sha256()
    for piece in blocks(seed, size):
        digest.update(piece)
    return {"name": name, "sha256": digest.hexdigest(), "size_bytes": size}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the app ----------------------------------------------------------------------------------


@pytest.fixture
async def files_client(client, settings) -> AsyncIterator[Any]:
    """The app (the file routes are wired by the composition root); this test's stored files
    are removed afterwards, since the run's state folder is shared."""
    yield client
    shutil.rmtree(settings.state_dir / "blobs", ignore_errors=True)


def leases_of(test_client: Any) -> Any:
    """The app's lease book (where its pool and leases live: run its methods with `in_app`)."""
    return wiring.file_parts(test_client.app.state.platform).leases


def in_app(test_client: Any, function: Any) -> Any:
    """Run a coroutine function in the app's event loop (where its pool and leases live)."""
    with test_client.portal() as portal:
        return portal.call(function)


# --- builders ----------------------------------------------------------------------------------


async def product_with(client, trade, files: list[dict[str, Any]]) -> dict[str, Any]:
    product_id = await list_product(client, trade, metadata(manual__files=files))
    product: dict[str, Any] = (
        await client.get(f"/v1/products/{product_id}", headers=bearer(trade["seller"]))
    ).json()
    return product


async def file_grant(client, trade, pool, clock, settings, product, *, quota=None, price=0,
                     spend_cap_fen=None):  # fmt: skip
    grants = grant_service(pool, clock, settings)
    dimension = Dimension(name="bytes", unit_price_millifen=price, quota=quota)
    data = executed(product_id=product["id"], product_code=product["product_code"],
                    buyer_org=trade["buyer_org"], seller_org=trade["seller_org"],
                    modes=("file",), dimensions=[dimension], spend_cap_fen=spend_cap_fen,
                    pricing="metered" if spend_cap_fen else "one_off")  # fmt: skip
    grant_id = await active_grant(pool, grants, data)
    issued = await client.post(f"/v1/grants/{grant_id}/tokens", headers=bearer(trade["buyer"]))
    assert issued.status_code == 201, issued.text
    return grant_id, issued.json()["token"]


def uploads_path(product: dict[str, Any], name: str) -> str:
    return f"/v1/products/{product['id']}/revisions/1/files/{name}/uploads"


async def put(client, token, upload_id, index, data, digest=None):
    return await client.put(
        f"/v1/uploads/{upload_id}/chunks/{index}", content=data,
        headers={**bearer(token), **OCTETS, "X-Chunk-SHA256": digest or sha(data)},
    )  # fmt: skip


async def upload_whole(client, token, product, name, seed, size) -> dict[str, Any]:
    started = await client.post(uploads_path(product, name), headers=bearer(token))
    assert started.status_code == 201, started.text
    upload = started.json()
    for index, data in enumerate(blocks(seed, size)):
        assert (await put(client, token, upload["id"], index, data)).status_code == 200
    done = await client.post(f"/v1/uploads/{upload['id']}/complete", headers=bearer(token))
    assert done.status_code == 200, done.text
    stored: dict[str, Any] = done.json()
    return stored


def metered_pieces(start: int, end: int) -> int:
    """How many usage records a download of ``[start, end)`` writes: pieces of whole records,
    the first one record, each next twice as long up to MAX_PIECE_BYTES."""
    count, target, length = 0, MiB, 0
    for index in range(start // MiB, (end - 1) // MiB + 1):
        length += min(end, (index + 1) * MiB) - max(start, index * MiB)
        if length >= target:
            count, target, length = count + 1, min(2 * target, MAX_PIECE_BYTES), 0
    return count + (length > 0)


async def metered(pool, grant_id) -> tuple[int, int]:
    """(bytes metered, records) of a grant."""
    row = await pool.fetchrow(
        "SELECT coalesce(sum((units ->> 'bytes')::bigint), 0) AS bytes, count(*) AS n"
        " FROM usage_records WHERE grant_id = $1",
        grant_id,
    )
    return row["bytes"], row["n"]


# --- the acceptance test -------------------------------------------------------------------------


async def test_a_200_mb_file_uploads_in_chunks_and_downloads_in_ranges_metered_as_sent(
    client, files_client, trade, pool, clock, settings
):
    big = declared("observations-2020.bin", 1, BIG)
    product = await product_with(client, trade, [big])
    seller = trade["seller"]

    # Upload: chunks out of order, one refused as corrupt and sent again, one sent twice.
    started = time.perf_counter()
    opened = await files_client.post(uploads_path(product, big["name"]), headers=bearer(seller))
    assert opened.status_code == 201, opened.text
    upload = opened.json()
    assert (upload["chunk_bytes"], upload["chunks"], upload["received"]) == (BLOCK, 24, [])
    again = await files_client.post(uploads_path(product, big["name"]), headers=bearer(seller))
    assert again.status_code == 200 and again.json()["id"] == upload["id"]  # resumable
    order = [*range(12, 24), *range(12)]
    for index in order:
        data = block(1, index, BIG)
        if index == 7:
            damaged = data[:1000] + bytes([data[1000] ^ 0x40]) + data[1001:]
            refused = await put(files_client, seller, upload["id"], index, damaged, sha(data))
            body = assert_problem(refused, 422, "chunk_corrupt")
            assert body["index"] == 7 and body["sha256"] == sha(damaged)
            progress = await files_client.get(f"/v1/uploads/{upload['id']}", headers=bearer(seller))
            assert 7 not in progress.json()["received"]
        response = await put(files_client, seller, upload["id"], index, data)
        assert response.status_code == 200, response.text
        if index == 3:
            early = await files_client.post(f"/v1/uploads/{upload['id']}/complete",
                                            headers=bearer(seller))  # fmt: skip
            missing = assert_problem(early, 409, "upload_incomplete")["missing"]
            assert missing == list(range(4, 12))
    resent = await put(files_client, seller, upload["id"], 23, block(1, 23, BIG))
    assert resent.status_code == 200 and resent.json()["received"] == list(range(24))
    chunks_done = time.perf_counter()
    done = await files_client.post(f"/v1/uploads/{upload['id']}/complete", headers=bearer(seller))
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "complete"
    upload_seconds = time.perf_counter() - started
    complete_seconds = time.perf_counter() - chunks_done
    blob = await pool.fetchrow("SELECT * FROM delivery_blobs WHERE sha256 = $1", big["sha256"])
    assert blob["size_bytes"] == BIG and blob["chunk_bytes"] == RECORD_BYTES
    (stored,) = (settings.state_dir / "blobs" / "objects").rglob(f"{big['sha256']}.*")
    assert stored.stat().st_size == sealed_size(BIG)
    assert not (settings.state_dir / "blobs" / "staging" / upload["id"]).exists()

    # Download in ranges that cut across records and chunks, then whole.
    grant_id, token = await file_grant(client, trade, pool, clock, settings, product,
                                       quota=2 * BIG + MiB, price=1)  # fmt: skip
    listed = await files_client.get(f"/v1/grants/{grant_id}/files", headers=bearer(token))
    assert listed.status_code == 200, listed.text
    assert listed.json()["files"] == [big | {"stored": True}]
    started = time.perf_counter()
    digest, received, pieces, step = hashlib.sha256(), 0, 0, 25_000_001
    for start in range(0, BIG, step):
        end = min(start + step, BIG) - 1
        pieces += metered_pieces(start, end + 1)
        response = await files_client.get(
            f"/v1/grants/{grant_id}/files/{big['name']}",
            headers={**bearer(token), "Range": f"bytes={start}-{end}"},
        )
        assert response.status_code == 206, response.text
        assert response.headers["content-range"] == f"bytes {start}-{end}/{BIG}"
        assert response.headers["etag"] == f'"{big["sha256"]}"'
        assert len(response.content) == end - start + 1
        digest.update(response.content)
        received += len(response.content)
    ranged_seconds = time.perf_counter() - started
    assert digest.hexdigest() == big["sha256"] and received == BIG
    assert await metered(pool, grant_id) == (BIG, pieces)
    started = time.perf_counter()
    whole = await files_client.get(f"/v1/grants/{grant_id}/files/{big['name']}",
                                   headers=bearer(token))  # fmt: skip
    whole_seconds = time.perf_counter() - started
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert sha(whole.content) == big["sha256"]
    received += len(whole.content)
    del whole

    # Metered = sent, piece by piece (none over 8 MiB), and the leases count the same.
    sent, records = await metered(pool, grant_id)
    assert sent == received == 2 * BIG
    assert (
        await pool.fetchval(
            "SELECT max((units ->> 'bytes')::bigint) FROM usage_records WHERE grant_id = $1",
            grant_id,
        )
        == MAX_PIECE_BYTES
    )
    assert (
        await pool.fetchval(
            "SELECT sum(cost_millifen) FROM usage_records WHERE grant_id = $1", grant_id
        )
        == 2 * BIG
    )
    in_app(files_client, leases_of(files_client).close)
    quota = await pool.fetchrow(
        "SELECT used_units, leased_units FROM grant_quotas WHERE grant_id = $1", grant_id
    )
    assert (quota["used_units"], quota["leased_units"]) == (2 * BIG, 0)

    # A plain read of the stored object, for comparison.
    started = time.perf_counter()
    with stored.open("rb") as handle:
        while handle.read(MiB):
            pass
    read_seconds = time.perf_counter() - started
    mb = BIG / 1e6
    print(  # the figures the README quotes (pytest -s)
        f"\n200 MB: upload {mb / upload_seconds:.0f} MB/s (complete {complete_seconds:.2f} s),"
        f" ranged download {mb / ranged_seconds:.0f} MB/s, whole download"
        f" {mb / whole_seconds:.0f} MB/s, {records} usage records;"
        f" plain read of the stored object {mb / read_seconds:.0f} MB/s"
    )


# --- uploads ---------------------------------------------------------------------------------------

SMALL = 3 * MiB + 1234  # one chunk, four records


async def test_uploads_are_the_sellers_own_and_only_of_declared_files(
    client, files_client, trade, pool
):
    small = declared("stations.csv", 2, SMALL)
    product = await product_with(client, trade, [small])
    seller, other = trade["seller"], trade["other"]
    path = uploads_path(product, small["name"])
    assert_problem(await files_client.post(path, headers=bearer(other)), 404, "not_found")
    assert_problem(await files_client.post(path, headers=bearer(trade["buyer"])), 403, "forbidden")
    unknown = uploads_path({"id": uuid.uuid4()}, small["name"])
    assert_problem(await files_client.post(unknown, headers=bearer(seller)), 404, "not_found")
    revision_2 = path.replace("/revisions/1/", "/revisions/2/")
    assert_problem(await files_client.post(revision_2, headers=bearer(seller)), 404, "not_found")
    undeclared = uploads_path(product, "other.csv")
    body = assert_problem(await files_client.post(undeclared, headers=bearer(seller)), 404,
                          "file_not_declared")  # fmt: skip
    assert body["declared"] == ["stations.csv"]

    upload = (await files_client.post(path, headers=bearer(seller))).json()
    data = block(2, 0, SMALL)
    chunk = f"/v1/uploads/{upload['id']}/chunks"
    # Another seller does not see the upload at all.
    assert_problem(await put(files_client, other, upload["id"], 0, data), 404, "not_found")
    for method in ("GET", "POST"):
        suffix = "" if method == "GET" else "/complete"
        theirs = await files_client.request(method, f"/v1/uploads/{upload['id']}{suffix}",
                                            headers=bearer(other))  # fmt: skip
        assert_problem(theirs, 404, "not_found")
    assert_problem(await put(files_client, seller, upload["id"], 1, data), 422,
                   "chunk_out_of_range")  # fmt: skip
    missing_digest = await files_client.put(f"{chunk}/0", content=data,
                                            headers={**bearer(seller), **OCTETS})  # fmt: skip
    assert_problem(missing_digest, 422, "chunk_digest_required")
    short = assert_problem(await put(files_client, seller, upload["id"], 0, data[:-1]), 422,
                           "chunk_wrong_size")  # fmt: skip
    assert short["expected_bytes"] == SMALL
    too_big = await put(files_client, seller, upload["id"], 0, bytes(BLOCK + 1))
    assert_problem(too_big, 413, "payload_too_large")
    assert (await files_client.get(f"/v1/uploads/{upload['id']}",
                                   headers=bearer(seller))).json()["received"] == []  # fmt: skip
    assert (await put(files_client, seller, upload["id"], 0, data)).status_code == 200
    done = await files_client.post(f"/v1/uploads/{upload['id']}/complete", headers=bearer(seller))
    assert done.json()["state"] == "complete"
    again = await files_client.post(f"/v1/uploads/{upload['id']}/complete", headers=bearer(seller))
    assert again.status_code == 200 and again.json()["state"] == "complete"
    # Once stored, asking to upload it again answers the upload that stored it.
    reopened = await files_client.post(path, headers=bearer(seller))
    assert reopened.status_code == 200 and reopened.json()["id"] == upload["id"]
    assert_problem(await put(files_client, seller, upload["id"], 0, data), 409, "upload_closed")
    audit = await pool.fetchval(
        "SELECT detail FROM audit_log WHERE action = 'delivery.file_stored'"
    )
    assert audit["sha256"] == small["sha256"] and audit["upload_id"] == upload["id"]


async def test_a_file_that_is_not_the_declared_one_is_not_stored(client, files_client, trade, pool):
    small = declared("stations.csv", 2, SMALL)
    product = await product_with(client, trade, [small])
    seller = trade["seller"]
    upload = (await files_client.post(uploads_path(product, small["name"]),
                                      headers=bearer(seller))).json()  # fmt: skip
    # Every chunk well formed and matching the digest sent with it: the whole is another file.
    other = block(3, 0, SMALL)
    assert (await put(files_client, seller, upload["id"], 0, other)).status_code == 200
    done = await files_client.post(f"/v1/uploads/{upload['id']}/complete", headers=bearer(seller))
    body = assert_problem(done, 422, "file_digest_mismatch")
    assert (body["declared_sha256"], body["sha256"]) == (small["sha256"], sha(other))
    state = await files_client.get(f"/v1/uploads/{upload['id']}", headers=bearer(seller))
    assert state.json()["state"] == "abandoned"
    assert await pool.fetchval("SELECT count(*) FROM delivery_files") == 0
    assert await pool.fetchval("SELECT count(*) FROM delivery_blobs") == 0
    fresh = await files_client.post(uploads_path(product, small["name"]), headers=bearer(seller))
    assert fresh.status_code == 201 and fresh.json()["id"] != upload["id"]


async def test_content_stored_once_serves_every_revision_that_declares_it(
    client, files_client, trade, pool, settings
):
    small = declared("stations.csv", 2, SMALL)
    first = await product_with(client, trade, [small])
    second = await product_with(client, trade, [small | {"name": "stations-copy.csv"}])
    await upload_whole(files_client, trade["seller"], first, small["name"], 2, SMALL)
    await upload_whole(files_client, trade["seller"], second, "stations-copy.csv", 2, SMALL)
    assert await pool.fetchval("SELECT count(*) FROM delivery_files") == 2
    assert await pool.fetchval("SELECT count(*) FROM delivery_blobs") == 1
    objects = [p for p in (settings.state_dir / "blobs" / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 1  # the second upload's copy was checked, then dropped


# --- downloads ---------------------------------------------------------------------------------


async def small_grant(client, files_client, trade, pool, clock, settings, **terms):
    small = declared("stations.csv", 2, SMALL)
    product = await product_with(client, trade, [small, declared("later.csv", 4, 10)])
    await upload_whole(files_client, trade["seller"], product, small["name"], 2, SMALL)
    grant_id, token = await file_grant(client, trade, pool, clock, settings, product, **terms)
    return small, grant_id, token


async def test_ranges_etags_and_refusals(client, files_client, trade, pool, clock, settings):
    small, grant_id, token = await small_grant(client, files_client, trade, pool, clock, settings)
    data = block(2, 0, SMALL)
    url = f"/v1/grants/{grant_id}/files/{small['name']}"
    etag = f'"{small["sha256"]}"'
    sent = 0

    async def get(**headers: str) -> Any:
        nonlocal sent
        response = await files_client.get(url, headers={**bearer(token), **headers})
        if response.status_code in (200, 206):
            sent += len(response.content)
        return response

    cases = [  # Range -> the bytes of the 206
        ("bytes=-100", (SMALL - 100, SMALL)),
        ("bytes=3000000-", (3_000_000, SMALL)),
        (f"bytes={MiB - 1}-{MiB}", (MiB - 1, MiB + 1)),  # across a record boundary
        (f"bytes=0-{10 * SMALL}", (0, SMALL)),  # clipped to the file
        ("bytes=-99999999", (0, SMALL)),
    ]
    for header, (start, end) in cases:
        response = await get(Range=header)
        assert response.status_code == 206, (header, response.text)
        assert response.content == data[start:end], header
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{SMALL}"
        assert response.headers["content-length"] == str(end - start)
    for header in ("bytes=5-2", f"bytes={SMALL}-", "bytes=0-1,5-6", "bytes=abc", "bytes=-0"):
        refused = await get(Range=header)
        assert_problem(refused, 416, "range_not_satisfiable")
        assert refused.headers["content-range"] == f"bytes */{SMALL}"
    whole = await get(Range="items=0-5")  # another unit: the header is ignored
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["etag"] == etag and whole.headers["cache-control"] == "private"
    for match in (etag, f"W/{etag}", f'"x", {etag}', "*"):
        assert (await get(**{"If-None-Match": match})).status_code == 304
    assert (await get(**{"If-None-Match": '"x"'})).status_code == 200
    assert (await get(Range="bytes=0-9", **{"If-Range": etag})).status_code == 206
    changed = await get(Range="bytes=0-9", **{"If-Range": '"another"'})
    assert changed.status_code == 200 and len(changed.content) == SMALL

    listing = (await files_client.get(f"/v1/grants/{grant_id}/files", headers=bearer(token))).json()
    assert [(f["name"], f["stored"]) for f in listing["files"]] == [
        ("stations.csv", True), ("later.csv", False),
    ]  # fmt: skip
    assert_problem(await files_client.get(f"/v1/grants/{grant_id}/files/later.csv",
                                          headers=bearer(token)), 409, "file_not_stored")  # fmt: skip
    assert_problem(await files_client.get(f"/v1/grants/{grant_id}/files/nothing.csv",
                                          headers=bearer(token)), 404, "file_not_declared")  # fmt: skip
    assert_problem(await files_client.get(url), 401, "token_missing")
    other_grant = f"/v1/grants/{uuid.uuid4()}/files/{small['name']}"
    assert_problem(await files_client.get(other_grant, headers=bearer(token)), 403,
                   "token_other_grant")  # fmt: skip
    assert (await metered(pool, grant_id))[0] == sent


async def receive(deliveries, token, grant_id, name, at_least: int) -> int:
    """Take body messages of a download until ``at_least`` bytes have come, then go away."""
    answer = await deliveries.download(token, grant_id, name)
    assert answer.status == 200 and answer.body is not None
    got = 0
    while got < at_least:
        got += len(await anext(answer.body))
    await answer.body.aclose()
    return got


async def test_an_interrupted_download_meters_what_was_sent_and_at_most_the_rest_of_a_piece(
    client, files_client, trade, pool, clock, settings
):
    small, grant_id, token = await small_grant(client, files_client, trade, pool, clock, settings)
    # A process of its own, in this test's event loop, wired as the app's processes are.
    platform = Platform(settings=settings, clock=clock, pool=pool, nats=None,
                        keyring=KeyRing(load_master_key(settings.state_dir)))  # fmt: skip
    deliveries = wiring.provide_file_deliveries(platform)
    try:
        # Pieces of this file: its first MiB, then two MiB, then the rest. The client goes away
        # after the first piece: exactly that is metered.
        assert await receive(deliveries, token, grant_id, small["name"], MiB) == MiB
        assert await metered(pool, grant_id) == (MiB, 1)
        # Gone a little way into the second piece: the piece was metered before any of it left.
        got = await receive(deliveries, token, grant_id, small["name"], MiB + 1)
        assert MiB < got < 3 * MiB
        assert await metered(pool, grant_id) == (MiB + 3 * MiB, 3)
    finally:
        await wiring.stop_files(platform)


async def test_the_download_limit_holds_and_the_grant_is_exhausted_at_it(
    client, files_client, trade, pool, clock, settings
):
    small, grant_id, token = await small_grant(client, files_client, trade, pool, clock, settings,
                                               quota=3 * MiB)  # fmt: skip
    url = f"/v1/grants/{grant_id}/files/{small['name']}"
    refused = await files_client.get(url, headers=bearer(token))
    body = assert_problem(refused, 403, "quota_exhausted")
    assert (body["needed"], body["left"]) == (SMALL, 3 * MiB)
    assert await metered(pool, grant_id) == (0, 0)  # refused up front: nothing sent or metered
    first = await files_client.get(
        url, headers={**bearer(token), "Range": f"bytes=0-{2 * MiB - 1}"}
    )
    assert first.status_code == 206
    over = await files_client.get(url, headers={**bearer(token), "Range": f"bytes=0-{MiB}"})
    assert assert_problem(over, 403, "quota_exhausted")["left"] == MiB
    rest = await files_client.get(url, headers={**bearer(token), "Range": f"bytes=0-{MiB - 1}"})
    assert rest.status_code == 206
    assert await metered(pool, grant_id) == (3 * MiB, 3)
    assert_problem(await files_client.get(url, headers={**bearer(token), "Range": "bytes=0-0"}),
                   403, "quota_exhausted")  # fmt: skip
    # The process returns its leases (as it does when idle): the quota is used up, so the grant
    # is exhausted and says so.
    in_app(files_client, leases_of(files_client).close)
    assert await pool.fetchval("SELECT state FROM grants WHERE id = $1", grant_id) == "exhausted"
    refused = assert_problem(await files_client.get(url, headers=bearer(token)), 403,
                             "quota_exhausted")  # fmt: skip
    assert refused["state"] == "exhausted"


async def test_a_metered_plan_spends_its_cap_at_the_byte_price(
    client, files_client, trade, pool, clock, settings
):
    # 1 milli-fen a byte under a cap of 5,000 fen: one download of this file fits, two do not.
    small, grant_id, token = await small_grant(client, files_client, trade, pool, clock, settings,
                                               price=1, spend_cap_fen=5_000)  # fmt: skip
    url = f"/v1/grants/{grant_id}/files/{small['name']}"
    assert (await files_client.get(url, headers=bearer(token))).status_code == 200
    refused = assert_problem(await files_client.get(url, headers=bearer(token)), 403,
                             "quota_exhausted")  # fmt: skip
    assert (refused["dimension"], refused["needed"], refused["left"]) == (
        "spend", SMALL, 5_000_000 - SMALL,
    )  # fmt: skip
    cost = await pool.fetchval(
        "SELECT sum(cost_millifen) FROM usage_records WHERE grant_id = $1", grant_id
    )
    assert cost == SMALL
    in_app(files_client, leases_of(files_client).close)
    assert (
        await pool.fetchval(
            "SELECT used_units FROM grant_quotas WHERE grant_id = $1 AND dimension = 'spend'",
            grant_id,
        )
        == SMALL
    )


async def test_a_suspended_grant_refuses_a_valid_token(
    client, files_client, trade, pool, clock, settings
):
    small, grant_id, token = await small_grant(client, files_client, trade, pool, clock, settings)
    grants = grant_service(pool, clock, settings)
    url = f"/v1/grants/{grant_id}/files/{small['name']}"
    await grants.suspend(Actor.cli("test"), grant_id, "核查")
    assert_problem(await files_client.get(url, headers=bearer(token)), 403, "grant_suspended")
    assert_problem(await files_client.get(f"/v1/grants/{grant_id}/files", headers=bearer(token)),
                   403, "grant_suspended")  # fmt: skip
    await grants.resume(Actor.cli("test"), grant_id)
    assert (await files_client.get(url, headers=bearer(token))).status_code == 200
