"""Compute jobs through the API: reviewed algorithms, submission with Idempotency-Key, the
privacy budget, who sees what, and every change a ``dx.job.*`` event in the outbox."""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any

import msgspec

from exchange.compute import receipts
from exchange.platform.signing import jwks
from settlement.cli import verify_database
from settlement.ledger import verify_receipt
from tests.kit.api import assert_problem, bearer, issue_token, make_uscc, register_org
from tests.kit.compute import SANDBOX_PLAN, runner, sandbox_document, sandbox_grant
from tests.kit.delivery import deliver, grant_service
from tests.kit.market import buy, deposit, list_product, standing_offer
from tests.kit.settlement import worker

PROGRAM = "import json\nopen('/data/output/result.json','w').write('{}')\n"


def _job(client: Any, token: str, grant_id: uuid.UUID, body: dict[str, Any], key: str) -> Any:
    return client.post(
        f"/v1/grants/{grant_id}/jobs", json=body,
        headers={**bearer(token), "Idempotency-Key": key},
    )  # fmt: skip


async def _events(pool: Any, job_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT payload FROM outbox WHERE subject LIKE '%.job.%' ORDER BY created_at, id"
    )
    events = [msgspec.json.decode(bytes(r["payload"])) for r in rows]
    return [e["type"] for e in events if e["subject"] == job_id]


async def test_an_algorithm_runs_only_once_the_seller_approved_its_hash(
    client, trade, settings, pool, clock, admin_token
):
    grant_id = await sandbox_grant(client, trade, pool, clock, settings)
    buyer, seller = trade["buyer"], trade["seller"]
    sha = hashlib.sha256(PROGRAM.encode()).hexdigest()
    body = {"kind": "algorithm", "algorithm_sha256": sha, "params": {"n": 1}}

    refused = await _job(client, buyer, grant_id, body, "k0")
    assert_problem(refused, 403, "algorithm_not_approved")

    up = await client.post(
        f"/v1/grants/{grant_id}/algorithms",
        json={"source": PROGRAM, "params_schema": {"type": "object"}},
        headers=bearer(buyer),
    )
    assert up.status_code == 201, up.text
    assert (up.json()["sha256"], up.json()["state"]) == (sha, "submitted")
    assert_problem(await _job(client, buyer, grant_id, body, "k1"), 403, "algorithm_not_approved")
    # The buyer cannot approve its own upload; the seller can.
    decide = f"/v1/grants/{grant_id}/algorithms/{sha}/decision"
    assert (
        await client.post(decide, json={"decision": "approve"}, headers=bearer(buyer))
    ).status_code == 403
    approved = await client.post(decide, json={"decision": "approve"}, headers=bearer(seller))
    assert approved.status_code == 200 and approved.json()["state"] == "approved", approved.text

    first = await _job(client, buyer, grant_id, body, "k2")
    assert first.status_code == 201, first.text
    job = first.json()
    assert (job["state"], job["kind"], job["k"]) == ("queued", "algorithm", 10)
    assert job["limits"]["cpu_seconds"] == SANDBOX_PLAN["sandbox"]["cpu_seconds"]

    again = await _job(client, buyer, grant_id, body, "k2")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == job["id"]
    other_body = await _job(client, buyer, grant_id, {**body, "params": {"n": 2}}, "k2")
    assert_problem(other_body, 422, "invalid_input")
    missing = await client.post(f"/v1/grants/{grant_id}/jobs", json=body, headers=bearer(buyer))
    assert_problem(missing, 400, "idempotency_key_missing")

    assert await _events(pool, job["id"]) == ["dx.job.queued"]
    metrics = await client.get("/metrics", headers=bearer(admin_token))
    assert 'dataex_compute_jobs{state="queued"} 1.0' in metrics.text, metrics.text
    queued = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE subject = $1 AND payload = $2",
        f"{settings.subject_prefix}_jobs.run", job["id"].encode(),
    )  # fmt: skip
    assert queued == 1

    cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(buyer))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert await _events(pool, job["id"]) == ["dx.job.queued", "dx.job.cancelled"]
    assert_problem(
        await client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(buyer)),
        409, "illegal_transition",
    )  # fmt: skip


async def test_the_privacy_budget_refuses_the_query_past_its_total(
    client, trade, settings, pool, clock
):
    grant_id = await sandbox_grant(client, trade, pool, clock, settings)
    buyer = trade["buyer"]
    query = {"aggregate": "count", "group_by": ["region"], "epsilon": 0.4}
    for n in range(2):
        made = await _job(client, buyer, grant_id, {"kind": "query", "query": query}, f"q{n}")
        assert made.status_code == 201, made.text
        assert made.json()["epsilon"] == 0.4
    past = await _job(client, buyer, grant_id, {"kind": "query", "query": query}, "q2")
    assert_problem(past, 403, "privacy_budget_exceeded")
    too_big = {"kind": "query", "query": {**query, "epsilon": 0.6}}
    assert_problem(await _job(client, buyer, grant_id, too_big, "q3"), 403,
                   "privacy_budget_exceeded")  # fmt: skip
    budget = (await client.get(f"/v1/grants/{grant_id}/budget", headers=bearer(buyer))).json()
    assert (budget["epsilon_total"], budget["epsilon_spent"]) == (1.0, 0.8)


async def test_algorithms_jobs_and_budgets_are_for_the_grants_parties_only(
    client, trade, settings, pool, clock, admin_token
):
    grant_id = await sandbox_grant(client, trade, pool, clock, settings)
    query = {"kind": "query", "query": {"aggregate": "count", "epsilon": 0.1}}
    made = await _job(client, trade["buyer"], grant_id, query, "own")
    assert made.status_code == 201, made.text
    job_id = made.json()["id"]
    other_org = await register_org(client, admin_token, make_uscc(4), ["seller", "buyer"])
    other = await issue_token(client, admin_token, other_org["id"], ["seller", "buyer"])
    base = f"/v1/grants/{grant_id}"
    sha = "0" * 64
    for method, path, body in (
        ("POST", f"{base}/algorithms", {"source": "pass"}),
        ("GET", f"{base}/algorithms", None),
        ("POST", f"{base}/algorithms/{sha}/decision", {"decision": "approve"}),
        ("POST", f"{base}/jobs", query),
        ("GET", f"{base}/jobs", None),
        ("GET", f"{base}/budget", None),
        ("GET", f"/v1/jobs/{job_id}", None),
        ("POST", f"/v1/jobs/{job_id}/cancel", None),
    ):
        headers = {**bearer(other), "Idempotency-Key": "x"}
        answer = await client.request(method, path, json=body, headers=headers)
        assert answer.status_code == 404, (method, path, answer.text)
    # The seller and staff see the job's metadata, never its result; the buyer its result.
    for token in (trade["seller"], admin_token):
        seen = (await client.get(f"/v1/jobs/{job_id}", headers=bearer(token))).json()
        assert seen["id"] == job_id and seen["result"] is None


async def test_a_jobs_receipt_is_registered_in_the_ledger_under_its_trade(
    client, trade, settings, pool, clock, admin_token
):
    """A real trade of a sandbox product: the job's receipt digest is a ledger entry (step
    ``job``) of that trade, and the ledger and the trade's receipt still verify."""
    product_id = await list_product(client, trade, sandbox_document())
    await standing_offer(client, trade, product_id)
    assert (
        await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    ).status_code == 201
    await deposit(client, admin_token, trade["buyer_org"]["id"], 10**7, "bank-compute")
    trade_id = uuid.UUID(await buy(client, trade, product_id))
    grants = grant_service(pool, clock, settings)
    async with worker(settings, pool, clock) as w:
        await w.drain()  # dx.trade.reserved
    rows = await pool.fetch(
        "SELECT subject, payload FROM outbox WHERE subject LIKE '%.trade.%' ORDER BY created_at, id"
    )
    for row in rows:
        event = msgspec.json.decode(bytes(row["payload"]))
        await deliver(pool, grants, row["subject"], event["type"], event["data"])
    grant_id = await pool.fetchval(
        "SELECT id FROM grants WHERE trade_id = $1 AND state = 'active'", trade_id
    )
    query = {"kind": "query", "query": {"aggregate": "count", "epsilon": 0.1}}
    made = await _job(client, trade["buyer"], grant_id, query, "ledger")
    assert made.status_code == 201, made.text
    await runner(pool, clock, settings).handle(uuid.UUID(made.json()["id"]))
    document = await client.get(
        f"/v1/jobs/{made.json()['id']}/receipt", headers=bearer(trade["buyer"])
    )
    keys = await jwks(pool)
    job_receipt = receipts.verify(document.content, keys)
    assert job_receipt["trade_id"] == str(trade_id) and job_receipt["state"] == "succeeded"
    seq = msgspec.json.decode(document.content)["ledger_seq"]
    entry = await pool.fetchrow("SELECT step, entry FROM ledger_entries WHERE seq = $1", seq)
    assert entry["step"] == "job"
    assert (
        msgspec.json.decode(bytes(entry["entry"]))["statement_digest"]
        == (msgspec.json.decode(document.content)["digest"])
    )
    out = io.StringIO()
    assert await verify_database(settings.database_url, out) == 0, out.getvalue()
    trade_receipt = await client.get(
        f"/v1/trades/{trade_id}/receipt", headers=bearer(trade["buyer"])
    )
    assert trade_receipt.status_code == 200, trade_receipt.text
    verify_receipt(trade_receipt.content, keys)


async def test_an_algorithms_parameters_must_match_its_schema(client, trade, settings, pool, clock):
    grant_id = await sandbox_grant(client, trade, pool, clock, settings)
    buyer, seller = trade["buyer"], trade["seller"]
    broken = await client.post(
        f"/v1/grants/{grant_id}/algorithms",
        json={"source": PROGRAM, "params_schema": {"type": "no-such-type"}},
        headers=bearer(buyer),
    )
    problem = assert_problem(broken, 422, "invalid_input")
    assert problem["errors"][0]["path"].startswith("params_schema")
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1}},
        "required": ["n"],
        "additionalProperties": False,
    }
    up = await client.post(
        f"/v1/grants/{grant_id}/algorithms",
        json={"source": PROGRAM, "params_schema": schema},
        headers=bearer(buyer),
    )
    assert up.status_code == 201, up.text
    sha = up.json()["sha256"]
    decided = await client.post(
        f"/v1/grants/{grant_id}/algorithms/{sha}/decision",
        json={"decision": "approve"},
        headers=bearer(seller),
    )
    assert decided.status_code == 200, decided.text
    body = {"kind": "algorithm", "algorithm_sha256": sha}
    wrong = await _job(client, buyer, grant_id, {**body, "params": {"n": 0, "x": 1}}, "p1")
    problem = assert_problem(wrong, 422, "invalid_input")
    assert {e["path"] for e in problem["errors"]} == {"params", "params.n"}
    assert await pool.fetchval("SELECT count(*) FROM compute_jobs") == 0  # nothing written
    right = await _job(client, buyer, grant_id, {**body, "params": {"n": 3}}, "p2")
    assert right.status_code == 201, right.text
