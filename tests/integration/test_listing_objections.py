"""Objections to a registration (异议登记): a third party claims rights in a listed product, staff
suspend the listing (and so its grants) pending the decision, and the decision with its reason
is on the product's public status, without who objected."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import msgspec

from tests.kit.api import assert_problem, bearer
from tests.kit.delivery import active_grant, deliver, executed, grant_service
from tests.kit.market import list_product, listed_product

STATEMENT = "本公司为该数据集的原始采集方 持有全部权利 内部编号 ZX-7731"
DIGEST = "a" * 64


def _filing(**overrides: Any) -> dict[str, Any]:
    return {"claim": "ownership", "statement": STATEMENT, "evidence_sha256": [DIGEST]} | overrides


async def _object(client, product_id: str, token: str, **overrides: Any) -> Any:
    return await client.post(
        f"/v1/products/{product_id}/objections", json=_filing(**overrides), headers=bearer(token)
    )


async def _registered(client, product_id: str, token: str) -> dict[str, Any]:
    response = await _object(client, product_id, token)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _suspend(client, objection_id: str, token: str, reason: str = "权属争议核查中") -> Any:
    return await client.post(
        f"/v1/listing-objections/{objection_id}/suspension",
        json={"reason": reason},
        headers=bearer(token),
    )


async def _decide(client, objection_id: str, token: str, outcome: str, reason: str) -> Any:
    return await client.post(
        f"/v1/listing-objections/{objection_id}/decision",
        json={"outcome": outcome, "reason": reason},
        headers=bearer(token),
    )


async def _product(client, market, product_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/products/{product_id}", headers=bearer(market["alice"]))
    body: dict[str, Any] = response.json()
    return body


async def _listing_events(pool, settings, grants, after: int = 0) -> int:
    """Hand the listing's own events (from position ``after``) to the delivery room, as its
    consumer on ``dx.listing.*`` would: objections' events are not among them."""
    subjects = [settings.subject("listing", e) for e in ("published", "suspended", "delisted")]
    rows = await pool.fetch(
        "SELECT subject, payload FROM outbox WHERE subject = ANY($1::text[])"
        " ORDER BY created_at, id OFFSET $2",
        subjects, after,
    )  # fmt: skip
    for row in rows:
        event = msgspec.json.decode(bytes(row["payload"]))
        await deliver(pool, grants, row["subject"], event["type"], event["data"])
    return after + len(rows)


async def _grant_state(pool, grant_id) -> tuple[str, list[str]]:
    row = await pool.fetchrow("SELECT state, suspended_by FROM grants WHERE id = $1", grant_id)
    return row["state"], list(row["suspended_by"])


async def _objection_events(pool, settings) -> list[tuple[str, dict[str, Any]]]:
    rows = await pool.fetch(
        "SELECT subject, payload FROM outbox WHERE subject LIKE $1 ORDER BY created_at, id",
        settings.subject("listing", "objection.%"),
    )
    return [(row["subject"], msgspec.json.decode(bytes(row["payload"]))) for row in rows]


async def test_a_third_party_registers_an_objection_and_the_seller_cannot(
    client, market, pool, settings
):
    product_id = await list_product(client, market)

    objection = await _registered(client, product_id, market["other"])
    assert objection["state"] == "registered"
    assert objection["claim"] == "ownership"
    assert objection["statement"] == STATEMENT
    assert objection["evidence_sha256"] == [DIGEST]
    assert objection["suspended_listing"] is False
    assert objection["outcome"] is None and objection["decided_at"] is None
    assert objection["listing_state"] == "listed"
    assert objection["seller_org_id"] == market["seller_org"]["id"]

    # The seller cannot object to its own product.
    problem = assert_problem(await _object(client, product_id, market["seller"]), 403, "forbidden")
    assert "seller" in problem["detail"]
    # One open objection per organisation and product.
    problem = assert_problem(await _object(client, product_id, market["other"]), 409, "conflict")
    assert problem["objection_id"] == objection["id"]
    # Each evidence digest once; an unknown product is 404.
    repeated = await _object(client, product_id, market["other"], evidence_sha256=[DIGEST] * 2)
    assert_problem(repeated, 422, "invalid_input")
    assert_problem(await _object(client, str(uuid.uuid4()), market["other"]), 404, "not_found")
    # Staff decide objections; they do not register them.
    assert (await _object(client, product_id, market["alice"])).status_code == 403

    # Audited, and announced without the statement.
    audit = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'listing_objection.registered'"
        " AND subject_id = $1",
        objection["id"],
    )
    assert audit == 1
    [(subject, event)] = await _objection_events(pool, settings)
    assert subject == settings.subject("listing", "objection.registered")
    assert event["type"] == "dx.listing.objection_registered"
    assert event["data"]["objection_id"] == objection["id"]
    assert event["data"]["state"] == "registered"
    assert STATEMENT not in json.dumps(event, ensure_ascii=False)


async def test_suspension_suspends_the_listing_and_its_grants_and_dismissal_reinstates(
    client, trade, pool, clock, settings
):
    product = await listed_product(client, trade)
    grants = grant_service(pool, clock, settings)
    grant_id = await active_grant(
        pool, grants,
        executed(product_id=product["id"], product_code=product["product_code"],
                 buyer_org=trade["buyer_org"], seller_org=trade["seller_org"]),
    )  # fmt: skip
    seen = await _listing_events(pool, settings, grants)  # the publication: nothing to lift
    assert await _grant_state(pool, grant_id) == ("active", [])
    objection = await _registered(client, product["id"], trade["other"])

    # A seller or the claimant cannot suspend; a reviewer can.
    assert (await _suspend(client, objection["id"], trade["other"])).status_code == 403
    suspended = await _suspend(client, objection["id"], trade["alice"])
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["suspended_listing"] is True
    assert suspended.json()["listing_state"] == "suspended"
    listed = await _product(client, trade, product["id"])
    assert (listed["state"], listed["suspended_by"]) == ("suspended", "objection")
    assert (await client.get(f"/v1/products/{product['id']}/certificate")).status_code == 404
    seen = await _listing_events(pool, settings, grants, seen)
    assert await _grant_state(pool, grant_id) == ("suspended", ["listing"])
    # Held already: a second suspension is a 409; staff's own suspend is illegal meanwhile.
    assert_problem(await _suspend(client, objection["id"], trade["alice"]), 409, "conflict")
    again = await client.post(
        f"/v1/products/{product['id']}/suspend", json={"reason": "x"},
        headers=bearer(trade["alice"]),
    )  # fmt: skip
    assert_problem(again, 409, "illegal_transition")

    decided = await _decide(client, objection["id"], trade["bob"], "dismissed", "权属证明不足")
    assert decided.status_code == 200, decided.text
    body = decided.json()
    assert (body["state"], body["outcome"], body["listing_state"]) == (
        "dismissed", "dismissed", "listed",
    )  # fmt: skip
    assert "reinstated" in body["note"]
    assert (await client.get(f"/v1/products/{product['id']}/certificate")).status_code == 200
    await _listing_events(pool, settings, grants, seen)
    assert await _grant_state(pool, grant_id) == ("active", [])
    # Decided once.
    decided = await _decide(client, objection["id"], trade["bob"], "upheld", "x")
    assert_problem(decided, 409, "illegal_transition")
    assert_problem(await _suspend(client, objection["id"], trade["alice"]), 409,
                   "illegal_transition")  # fmt: skip

    types = [event["type"] for _, event in await _objection_events(pool, settings)]
    assert types == [
        "dx.listing.objection_registered",
        "dx.listing.objection_suspended_listing",
        "dx.listing.objection_decided",
    ]
    actions = await pool.fetch(
        "SELECT action FROM audit_log WHERE subject_id = ANY($1::text[]) ORDER BY id",
        [objection["id"], product["id"]],
    )
    assert [a["action"] for a in actions][-5:] == [
        "listing_objection.registered",
        "product.hold_for_objection",
        "listing_objection.suspended_listing",
        "product.reinstate",
        "listing_objection.dismissed",
    ]


async def test_an_upheld_objection_keeps_the_listing_suspended(client, trade, pool, settings):
    product_id = await list_product(client, trade)
    objection = await _registered(client, product_id, trade["other"])
    assert (await _suspend(client, objection["id"], trade["alice"])).status_code == 200

    decided = await _decide(client, objection["id"], trade["alice"], "upheld", "权属证明成立")
    assert decided.status_code == 200, decided.text
    body = decided.json()
    assert (body["state"], body["outcome"], body["listing_state"]) == (
        "upheld", "upheld", "suspended",
    )  # fmt: skip
    assert "stays suspended" in body["note"] and "delist" in body["note"]
    product = await _product(client, trade, product_id)
    # Now the staff's own suspension: dismissing another objection would not lift it.
    assert (product["state"], product["suspended_by"]) == ("suspended", "exchange")
    assert "权属证明成立" in product["suspended_reason"]
    [_, _, (_, event)] = await _objection_events(pool, settings)
    assert event["data"]["state"] == "upheld"
    assert event["data"]["decision_reason"] == "权属证明成立"
    assert event["data"]["listing_reinstated"] is False
    # Delisting stays the staff's ordinary action.
    delisted = await client.post(
        f"/v1/products/{product_id}/delist", json={"reason": "异议成立"},
        headers=bearer(trade["alice"]),
    )  # fmt: skip
    assert delisted.json()["state"] == "delisted"


async def test_a_dismissal_reinstates_only_what_no_other_open_objection_holds(client, trade):
    product_id = await list_product(client, trade)
    first = await _registered(client, product_id, trade["other"])
    second = await _registered(client, product_id, trade["buyer"])
    assert (await _suspend(client, first["id"], trade["alice"])).status_code == 200
    # The listing is already held by an objection: the second holds it too.
    held = await _suspend(client, second["id"], trade["alice"], "第二项异议")
    assert held.status_code == 200, held.text
    assert held.json()["suspended_listing"] is True

    decided = (await _decide(client, first["id"], trade["alice"], "dismissed", "不成立")).json()
    assert decided["listing_state"] == "suspended"
    assert "1 other open objection" in decided["note"]
    decided = (await _decide(client, second["id"], trade["bob"], "dismissed", "不成立")).json()
    assert decided["listing_state"] == "listed"


async def test_an_objection_neither_holds_nor_lifts_a_suspension_staff_decided(client, trade):
    product_id = await list_product(client, trade)
    objection = await _registered(client, product_id, trade["other"])
    suspended = await client.post(
        f"/v1/products/{product_id}/suspend", json={"reason": "质量投诉"},
        headers=bearer(trade["alice"]),
    )  # fmt: skip
    assert suspended.status_code == 200
    problem = assert_problem(await _suspend(client, objection["id"], trade["alice"]), 409,
                             "conflict")  # fmt: skip
    assert (problem["state"], problem["suspended_by"]) == ("suspended", "exchange")
    decided = (await _decide(client, objection["id"], trade["alice"], "dismissed", "不成立")).json()
    assert decided["listing_state"] == "suspended"
    assert (await _product(client, trade, product_id))["suspended_reason"] == "质量投诉"


async def test_the_public_status_shows_objections_and_decisions_without_the_claimant(client, trade):
    product = await listed_product(client, trade)
    status_url = f"/v1/certificates/{product['product_code']}/status"
    assert (await client.get(status_url)).json()["objections"] == []

    first = await _registered(client, product["id"], trade["other"])
    second = await _registered(client, product["id"], trade["buyer"])
    await _suspend(client, first["id"], trade["alice"])
    await _decide(client, first["id"], trade["bob"], "dismissed", "申请人未能证明其权利")

    response = await client.get(status_url)  # anyone: no token
    assert response.status_code == 200
    status = response.json()
    assert status["state"] == "listed"
    assert [
        {k: o[k] for k in ("id", "claim", "state", "suspended_listing", "outcome",
                           "decision_reason")}
        for o in status["objections"]
    ] == [
        {"id": first["id"], "claim": "ownership", "state": "dismissed",
         "suspended_listing": True, "outcome": "dismissed",
         "decision_reason": "申请人未能证明其权利"},
        {"id": second["id"], "claim": "ownership", "state": "registered",
         "suspended_listing": False, "outcome": None, "decision_reason": None},
    ]  # fmt: skip
    assert status["objections"][0]["decided_at"] is not None
    assert status["objections"][1]["registered_at"] is not None
    for objection in status["objections"]:
        assert set(objection) == {
            "id", "claim", "state", "suspended_listing", "registered_at", "decided_at",
            "outcome", "decision_reason",
        }  # fmt: skip
    # Nothing about who objected, what they wrote or hold: not in the answer, nor signed.
    payload = status["jws"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert [o["id"] for o in claims["objections"]] == [first["id"], second["id"]]
    for text in (response.text, json.dumps(claims, ensure_ascii=False)):
        for private in (STATEMENT, DIGEST, first["claimant_org_id"], second["claimant_org_id"]):
            assert private not in text


async def test_an_objection_is_read_by_staff_and_its_two_parties_only(client, trade, admin_token):
    product_id = await list_product(client, trade)
    objection = await _registered(client, product_id, trade["other"])
    path = f"/v1/listing-objections/{objection['id']}"
    for token in (trade["other"], trade["seller"], trade["alice"], admin_token):
        response = await client.get(path, headers=bearer(token))
        assert response.status_code == 200, response.text
        assert response.json()["id"] == objection["id"]
    # A buyer that is no party: the same 404 as an unknown id.
    assert_problem(await client.get(path, headers=bearer(trade["buyer"])), 404, "not_found")
    unknown = await client.get(
        f"/v1/listing-objections/{uuid.uuid4()}", headers=bearer(trade["buyer"])
    )
    assert_problem(unknown, 404, "not_found")
    listed = await client.get("/v1/listing-objections", headers=bearer(trade["other"]))
    assert listed.status_code == 403

    # Staff's list, by state, oldest first, in pages.
    later = await _registered(client, product_id, trade["buyer"])
    await _decide(client, later["id"], trade["alice"], "dismissed", "不成立")
    staff = bearer(trade["alice"])
    registered = (await client.get("/v1/listing-objections?state=registered", headers=staff)).json()
    assert [o["id"] for o in registered["items"]] == [objection["id"]]
    page = (await client.get("/v1/listing-objections?limit=1", headers=staff)).json()
    assert [o["id"] for o in page["items"]] == [objection["id"]]
    rest = await client.get(
        f"/v1/listing-objections?limit=1&cursor={page['next_cursor']}", headers=staff
    )
    assert [o["id"] for o in rest.json()["items"]] == [later["id"]]
    bad = await client.get("/v1/listing-objections?state=pending", headers=staff)
    assert bad.status_code == 400

    # A product never listed is nobody else's business; a delisted one is a 409 naming it.
    draft = await client.post("/v1/products", json={"name_zh": "草稿"},
                              headers=bearer(trade["seller"]))  # fmt: skip
    assert_problem(await _object(client, draft.json()["id"], trade["buyer"]), 404, "not_found")
    await client.post(
        f"/v1/products/{product_id}/delist", json={"reason": "停止供应"},
        headers=bearer(trade["seller"]),
    )  # fmt: skip
    problem = assert_problem(await _object(client, product_id, trade["buyer"]), 409, "conflict")
    assert problem["state"] == "delisted" and "delisted" in problem["detail"]
