"""Policy list versions, dry-run evaluation and replay, over HTTP on real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import msgspec
import pytest

from contracts.policy import evaluate
from contracts.policy.attributes import EvaluationDocument
from contracts.policy.rules import POLICY_DIR, latest_bundled
from contracts.policy.service import PolicyService
from exchange.platform.audit import Actor
from tests.kit.api import bearer, issue_token, make_uscc, register_org
from tests.kit.documents import DEIDENTIFIED, apply, doc, raw

SOURCE = (POLICY_DIR / "2026.1.toml").read_text(encoding="utf-8")
# A stricter candidate: regulated health data becomes a negative rule.
STRICTER = (
    SOURCE.replace('version = "2026.1"', 'version = "2026.2"')
    + """
[[rules]]
id = "NEG-09"
list = "negative"
scope = "product"
title_zh = "医疗健康数据暂停交易"
title_en = "Health data suspended"
when = { field = "product.regulated_domains", any_of = ["health"] }
explanation_zh = "医疗健康数据暂停交易"
explanation_en = "Health data is suspended from trading"
remedy_zh = "暂停期间不能交易"
remedy_en = "It cannot be traded during the suspension"
basis = "exchange decision"
"""
)


@pytest.fixture
async def policy(pool, clock):
    service = PolicyService(pool, clock)
    assert await service.ensure_initial_list(Actor.cli("test")) == "2026.1"
    return service


@pytest.fixture
async def buyer(client, admin_token):
    org = await register_org(client, admin_token, make_uscc(1))
    return await issue_token(client, admin_token, org["id"], ["buyer"])


async def test_lists_are_public_and_the_first_one_is_current(client, policy):
    response = await client.get("/v1/policy/lists")
    assert response.status_code == 200
    (info,) = response.json()
    assert info["version"] == "2026.1"
    assert info["current"] is True
    assert info["digest"] == latest_bundled().digest
    detail = (await client.get("/v1/policy/lists/2026.1")).json()
    assert len(detail["rules"]) == 17
    assert detail["source"] == SOURCE
    assert (await client.get("/v1/policy/lists/1999.1")).status_code == 404


async def test_publishing_is_immutable_idempotent_and_scheduled(
    client, admin_token, policy, clock, pool
):
    body = {"source": STRICTER, "effective_from": (clock.now() + timedelta(days=1)).isoformat()}
    created = await client.post("/v1/policy/lists", json=body, headers=bearer(admin_token))
    assert created.status_code == 201, created.text
    again = await client.post("/v1/policy/lists", json=body, headers=bearer(admin_token))
    assert again.status_code == 200
    assert again.json()["info"]["digest"] == created.json()["info"]["digest"]
    altered = {
        "source": STRICTER.replace("暂停交易", "暂停"),
        "effective_from": body["effective_from"],
    }
    conflict = await client.post("/v1/policy/lists", json=altered, headers=bearer(admin_token))
    assert conflict.status_code == 409
    assert "immutable" in conflict.json()["detail"]
    # Not current until its instant; the older version stays readable.
    current = [i["version"] for i in (await client.get("/v1/policy/lists")).json() if i["current"]]
    assert current == ["2026.1"]
    clock.advance(timedelta(days=1, seconds=1))
    current = [i["version"] for i in (await client.get("/v1/policy/lists")).json() if i["current"]]
    assert current == ["2026.2"]
    assert (await client.get("/v1/policy/lists/2026.1")).status_code == 200
    published = await pool.fetch(
        "SELECT subject_id FROM audit_log WHERE action = 'policy.published' ORDER BY id"
    )
    assert [r["subject_id"] for r in published] == ["2026.1", "2026.2"]


async def test_an_invalid_list_is_422_naming_file_rule_and_field(client, admin_token, policy):
    broken = STRICTER.replace('any_of = ["health"]', 'any_of = ["healthcare"]')
    response = await client.post(
        "/v1/policy/lists", json={"source": broken}, headers=bearer(admin_token)
    )
    assert response.status_code == 422
    messages = [e["message"] for e in response.json()["errors"]]
    assert any("rule NEG-09: when.any_of: 'healthcare' is not a value" in m for m in messages), (
        messages
    )


async def test_a_list_cannot_take_effect_in_the_past(client, admin_token, policy, clock):
    body = {"source": STRICTER, "effective_from": (clock.now() - timedelta(hours=1)).isoformat()}
    response = await client.post("/v1/policy/lists", json=body, headers=bearer(admin_token))
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "effective_from"


async def test_published_lists_refuse_update_and_delete(policy, pool):
    for statement in ("UPDATE policy_lists SET title = 'x'", "DELETE FROM policy_lists"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.execute(statement)


async def test_evaluate_is_a_dry_run_for_any_token(client, buyer, policy, pool):
    document = apply(
        raw(order=True),
        DEIDENTIFIED | {"order.buyer_country": "US", "order.pi_subject_count": 150_000},
    )
    response = await client.post(
        "/v1/policy/evaluate", json={"document": document}, headers=bearer(buyer)
    )
    assert response.status_code == 200, response.text
    decision = response.json()
    assert decision["decision"] == "review"
    assert [h["rule"] for h in decision["hits"]] == ["CAU-02", "CAU-05"]
    assert decision["cross_border"]["route"] == "standard_contract_or_certification"
    assert decision["list_version"] == "2026.1"
    assert decision["list_digest"] == latest_bundled().digest
    assert await pool.fetchval("SELECT count(*) FROM policy_decisions") == 0


async def test_evaluate_names_the_bad_path(client, buyer, policy):
    document = raw()
    document["product"]["data_level"] = "secret"
    document["product"]["personal_info"]["present"] = "yes"
    response = await client.post(
        "/v1/policy/evaluate", json={"document": document}, headers=bearer(buyer)
    )
    assert response.status_code == 422
    paths = {e["path"] for e in response.json()["errors"]}
    assert paths == {"document.product.data_level", "document.product.personal_info.present"}


async def test_evaluate_without_any_published_list_says_so(client, buyer):
    response = await client.post(
        "/v1/policy/evaluate", json={"document": raw()}, headers=bearer(buyer)
    )
    assert response.status_code == 503
    assert "no policy list is in effect" in response.json()["detail"]


async def _store(policy, pool, subject_id, document, *, subject_type="listing", is_open=True):
    d = doc(document)
    decision = evaluate(d, await policy.current())
    async with pool.acquire() as conn, conn.transaction():
        await policy.record(
            conn, subject_type=subject_type, subject_id=subject_id, document=d, decision=decision
        )
        if not is_open:
            await conn.execute(
                "UPDATE policy_subjects SET open = false WHERE subject_id = $1", subject_id
            )
    return decision


async def test_replay_reports_which_decisions_a_candidate_would_change(
    client, admin_token, policy, pool
):
    await _store(policy, pool, "L-clean", raw())
    await _store(policy, pool, "L-health", raw(product__regulated_domains=["health"]))
    await _store(policy, pool, "L-finance", raw(product__regulated_domains=["finance"]))
    await _store(
        policy, pool, "L-closed", raw(product__regulated_domains=["health"]), is_open=False
    )
    await _store(
        policy,
        pool,
        "O-1",
        raw(order=True, product__regulated_domains=["health"]),
        subject_type="order",
    )

    response = await client.post(
        "/v1/policy/replay", json={"source": STRICTER}, headers=bearer(admin_token)
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["list_version"] == "2026.2"
    assert report["subjects"] == 4  # the closed listing is not replayed
    assert report["unchanged"] == 2
    changes = {c["subject_id"]: c for c in report["changed"]}
    assert set(changes) == {"L-health", "O-1"}
    assert changes["L-health"]["before"] == {
        "decision": "review",
        "list_version": "2026.1",
        "rules": ["CAU-09"],
    }
    assert changes["L-health"]["after"]["decision"] == "reject"
    assert changes["L-health"]["rules_added"] == ["NEG-09"]
    assert changes["L-health"]["rules_removed"] == []
    # Nothing was published by looking.
    assert [i["version"] for i in (await client.get("/v1/policy/lists")).json()] == ["2026.1"]


async def test_replay_of_the_same_version_changes_nothing(client, admin_token, policy, pool):
    await _store(policy, pool, "L-1", apply(raw(), DEIDENTIFIED))
    response = await client.post(
        "/v1/policy/replay", json={"version": "2026.1"}, headers=bearer(admin_token)
    )
    assert response.json() == {**response.json(), "subjects": 1, "unchanged": 1, "changed": []}


async def test_stored_decisions_record_version_and_digest(policy, pool):
    decision = await _store(policy, pool, "L-9", raw(product__data_level="important"))
    row = await pool.fetchrow("SELECT * FROM policy_decisions WHERE subject_id = 'L-9'")
    assert (row["list_version"], row["list_digest"]) == ("2026.1", latest_bundled().digest)
    assert row["outcome"] == decision.decision == "review"
    assert msgspec.convert(row["document"], EvaluationDocument) == doc(
        raw(product__data_level="important")
    )
