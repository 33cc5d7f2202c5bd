"""Orders to executed contracts, over HTTP on real PostgreSQL and JetStream."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import msgspec
import nats
import pytest
import rfc8785
from joserfc import jws
from joserfc.jwk import KeySet

from contracts.orders import idempotency
from contracts.orders.schemas import Order
from exchange.platform.clock import SystemClock
from exchange.platform.context import Platform
from exchange.platform.events import DeliveryTerms, TradeExecuted
from exchange.platform.metering import Dimension
from exchange.platform.outbox import relay_batch
from exchange.platform.signing import KeyRing, b64url, load_master_key
from tests.kit.api import bearer, issue_token, make_uscc, register_org
from tests.kit.documents import DEIDENTIFIED_PI, metadata
from tests.kit.market import (
    Signer,
    claim_and_decide,
    deposit,
    evidence_for,
    list_product,
    order_body,
    place,
    standing_offer,
)
from tests.kit.settlement import worker


async def test_auto_accept_order_executes_and_announces_the_trade(client, trade, settings, pool):
    product_id = await list_product(client, trade)
    terms = await standing_offer(client, trade, product_id)
    response = await place(client, trade, order_body(product_id))
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["state"] == "awaiting_signatures"
    assert order["price_fen"] == 2_000_000 and order["fee_fen"] == 20_000  # 2 periods; 1% fee

    contract = (
        await client.get(f"/v1/contracts/{order['contract_id']}", headers=bearer(trade["buyer"]))
    ).json()
    document = contract["document"]
    assert contract["digest"] == "sha256:" + hashlib.sha256(rfc8785.dumps(document)).hexdigest()
    assert document["parties"]["recipient"]["uscc"] == make_uscc(3)
    assert document["seller_acceptance"]["standing_offer_digest"] == terms["digest"]
    assert "第5条 费用" in contract["text_zh"] and "20000" in contract["text_zh"]
    # Rendered from the corrected version: articles 1..10 (2025.1 skipped 第4条).
    assert document["template"]["version"] == "2025.2"
    assert [c["article"] for c in document["clauses"]] == list(range(1, 11))
    assert [s["party"] for s in contract["signatures"]] == ["seller"]

    buyer = trade["signers"]["buyer"]
    signed = await client.post(
        f"/v1/contracts/{order['contract_id']}/signatures",
        json={"jws": buyer.detached(buyer.kid, contract["digest"].encode())},
        headers=bearer(trade["buyer"]),
    )
    assert signed.status_code == 200, signed.text
    executed = signed.json()
    assert executed["state"] == "executed"
    by_party = {s["party"]: s for s in executed["signatures"]}
    assert set(by_party) == {"seller", "buyer", "exchange"}

    # Every signature verifies with joserfc: the parties' with their registered keys, the
    # exchange's countersignature with the published JWKS, the seller's over its offer terms.
    def verify(detached, payload, keys):
        header, _, signature = detached.split(".")
        token = f"{header}.{b64url(payload)}.{signature}"
        return jws.deserialize_compact(token, keys, algorithms=["EdDSA"])

    digest = contract["digest"].encode()
    verify(
        by_party["buyer"]["jws"],
        digest,
        KeySet.import_key_set({"keys": [buyer.public | {"kid": buyer.kid}]}),
    )
    seller = trade["signers"]["seller"]
    verify(
        by_party["seller"]["jws"],
        terms["canonical"].encode(),
        KeySet.import_key_set({"keys": [seller.public | {"kid": seller.kid}]}),
    )
    exchange_keys = KeySet.import_key_set((await client.get("/.well-known/jwks.json")).json())
    verify(by_party["exchange"]["jws"], digest, exchange_keys)
    assert (
        hashlib.sha256(rfc8785.dumps(executed["standing_offer"])).hexdigest() == terms["digest"][7:]
    )

    client_nats = await nats.connect(settings.nats_url)
    try:
        platform = Platform(
            settings=settings,
            clock=SystemClock(),
            pool=pool,
            nats=client_nats,
            keyring=KeyRing(load_master_key(settings.state_dir)),
        )
        while await relay_batch(platform):
            pass
        sub = await client_nats.jetstream().pull_subscribe(
            settings.subject("trade", "executed"), stream=settings.stream_name
        )
        (message,) = await sub.fetch(1, timeout=5)
        msgspec.json.decode(message.data, type=TradeExecuted)  # the checked-in schema's type
        event = msgspec.json.decode(message.data)
        assert event["type"] == "dx.trade.executed"
        assert event["data"]["contract_digest"] == contract["digest"]
        assert event["data"]["price_fen"] == 2_000_000 and event["data"]["fee_fen"] == 20_000
        assert event["data"]["trade_id"] == order["contract_id"]
    finally:
        await client_nats.close()
    final = (await client.get(f"/v1/orders/{order['id']}", headers=bearer(trade["buyer"]))).json()
    assert final["state"] == "executed"


@pytest.mark.parametrize(
    ("subjects", "state", "route"),
    [
        (99_999, "awaiting_signatures", "exempt"),
        (100_000, "in_review", "standard_contract_or_certification"),
    ],
)
async def test_cross_border_threshold_sends_the_order_to_review(
    client, trade, subjects, state, route
):
    product_id = await list_product(
        client, trade, metadata(classification__personal_info=DEIDENTIFIED_PI), evidence=("CAU-02",)
    )
    body = order_body(
        product_id, buyer_country="SG", delivery_country="SG", pi_subject_count=subjects
    )
    order = (await place(client, trade, body)).json()
    assert order["state"] == state
    assert order["policy"]["cross_border"]["route"] == route
    assert order["cleared"] == ["CAU-02"]  # the listing review cleared it for this revision
    hits = [h["rule"] for h in order["policy"]["hits"]]
    if state == "in_review":
        assert hits == ["CAU-02", "CAU-05"]
        case = (
            await client.get(
                f"/v1/reviews/{order['review_case_id']}", headers=bearer(trade["alice"])
            )
        ).json()
        assert case["kind"] == "order" and case["rules"] == ["CAU-05"]
    else:
        assert hits == ["CAU-02"] and order["review_case_id"] is None


async def test_this_years_executed_exports_count_towards_the_threshold(client, trade):
    product_id = await list_product(
        client, trade, metadata(classification__personal_info=DEIDENTIFIED_PI), evidence=("CAU-02",)
    )
    await standing_offer(client, trade, product_id)
    first = (
        await place(
            client, trade, order_body(product_id, buyer_country="SG", pi_subject_count=60_000)
        )
    ).json()
    contract = (
        await client.get(f"/v1/contracts/{first['contract_id']}", headers=bearer(trade["buyer"]))
    ).json()
    buyer = trade["signers"]["buyer"]
    await client.post(
        f"/v1/contracts/{first['contract_id']}/signatures",
        json={"jws": buyer.detached(buyer.kid, contract["digest"].encode())},
        headers=bearer(trade["buyer"]),
    )
    below = (
        await place(
            client, trade, order_body(product_id, buyer_country="SG", pi_subject_count=39_999)
        )
    ).json()
    assert below["policy"]["cross_border"]["route"] == "exempt"
    at = (
        await place(
            client, trade, order_body(product_id, buyer_country="SG", pi_subject_count=40_000)
        )
    ).json()
    assert at["policy"]["cross_border"]["route"] == "standard_contract_or_certification"
    assert at["state"] == "in_review"


async def test_every_mismatching_term_is_named(client, trade):
    product_id = await list_product(client, trade)
    body = order_body(
        product_id, purpose="marketing", territory=["CN", "US"], term_days=400, redistribution=True
    )
    response = await place(client, trade, body)
    assert response.status_code == 422
    mismatches = {m["term"]: m for m in response.json()["mismatches"]}
    assert set(mismatches) == {"purpose", "territory", "term_days", "redistribution"}
    assert mismatches["term_days"] == {"term": "term_days", "asked": 400, "offered": 365}
    assert mismatches["purpose"]["offered"] == ["research", "insurance_pricing"]


async def test_a_seller_cannot_buy_its_own_product(client, trade, admin_token):
    product_id = await list_product(client, trade)
    both = await issue_token(client, admin_token, trade["seller_org"]["id"], ["buyer"])
    response = await client.post(
        "/v1/orders",
        json=order_body(product_id),
        headers={**bearer(both), "Idempotency-Key": "own"},
    )
    assert response.status_code == 422
    assert [m["term"] for m in response.json()["mismatches"]] == ["buyer"]


async def test_idempotency_key_statuses(client, trade, pool):
    product_id = await list_product(client, trade)
    body = order_body(product_id)
    missing = await client.post("/v1/orders", json=body, headers=bearer(trade["buyer"]))
    assert missing.status_code == 400 and missing.json()["code"] == "idempotency_key_missing"
    first = await place(client, trade, body, key="k-1")
    again = await place(client, trade, body, key="k-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    other = await place(client, trade, body | {"quantity": 3}, key="k-1")
    assert other.status_code == 422
    # A first request still in flight holds the key's advisory lock in its transaction:
    org_id = trade["buyer_org"]["id"]
    async with pool.acquire() as other, other.transaction():
        await other.execute(
            f"SELECT pg_advisory_xact_lock({idempotency.lock_key_sql('$1', '$2')})", org_id, "k-2"
        )
        busy = await place(client, trade, body, key="k-2")
        assert busy.status_code == 409, busy.text
        assert busy.json()["retry_after_seconds"] == 1
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    # Once it ends (here without a result), the key is free.
    assert (await place(client, trade, body, key="k-2")).status_code == 201
    # Nothing of a failed request stays behind: its key is free for a corrected retry.
    wrong = await place(client, trade, body | {"purpose": "marketing"}, key="k-3")
    assert wrong.status_code == 422
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'k-3'") == 0
    assert (await place(client, trade, body, key="k-3")).status_code == 201


async def test_a_retry_gets_the_first_result_after_the_product_is_delisted(client, trade):
    product_id = await list_product(client, trade)
    body = order_body(product_id)
    first = await place(client, trade, body, key="k-before")
    assert first.status_code == 201
    path = f"/v1/products/{product_id}"
    gone = await client.post(
        f"{path}/delist", json={"reason": "停止交易"}, headers=bearer(trade["alice"])
    )
    assert gone.status_code == 200, gone.text
    again = await place(client, trade, body, key="k-before")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    fresh = await place(client, trade, body, key="k-after")
    assert fresh.status_code == 422, fresh.text
    assert [m["term"] for m in fresh.json()["mismatches"]] == ["product"]


async def test_fifty_concurrent_identical_requests_create_one_order(client, trade, pool):
    product_id = await list_product(client, trade)
    body = order_body(product_id)
    responses = await asyncio.gather(*(place(client, trade, body, key="same") for _ in range(50)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}
    assert 201 in statuses
    assert len({r.json()["id"] for r in responses if r.status_code == 201}) == 1
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1


async def test_cancel_before_execution_and_not_after(client, trade, pool):
    product_id = await list_product(client, trade)
    order = (await place(client, trade, order_body(product_id))).json()
    cancelled = await client.post(
        f"/v1/orders/{order['id']}/cancel",
        json={"reason": "不需要了"},
        headers=bearer(trade["buyer"]),
    )
    assert cancelled.json()["state"] == "cancelled"
    again = await client.post(
        f"/v1/orders/{order['id']}/cancel", json={"reason": "x"}, headers=bearer(trade["buyer"])
    )
    assert again.status_code == 409
    subjects = await pool.fetch("SELECT subject FROM outbox ORDER BY created_at")
    assert subjects[-1]["subject"].endswith(".order.cancelled")


async def test_a_signature_by_an_unregistered_key_is_refused(client, trade):
    product_id = await list_product(client, trade)
    order = (await place(client, trade, order_body(product_id))).json()
    contract = (
        await client.get(f"/v1/contracts/{order['contract_id']}", headers=bearer(trade["buyer"]))
    ).json()
    stranger = Signer()
    response = await client.post(
        f"/v1/contracts/{order['contract_id']}/signatures",
        json={"jws": stranger.detached("not-registered", contract["digest"].encode())},
        headers=bearer(trade["buyer"]),
    )
    assert response.status_code == 422 and response.json()["code"] == "invalid_signature"
    buyer = trade["signers"]["buyer"]
    wrong_payload = await client.post(
        f"/v1/contracts/{order['contract_id']}/signatures",
        json={"jws": buyer.detached(buyer.kid, b"sha256:something-else")},
        headers=bearer(trade["buyer"]),
    )
    assert wrong_payload.status_code == 422


async def test_orders_and_contracts_are_for_the_parties_only(client, trade, admin_token):
    product_id = await list_product(client, trade)
    order = (await place(client, trade, order_body(product_id))).json()
    stranger_org = await register_org(client, admin_token, make_uscc(9), ["buyer", "seller"])
    stranger = await issue_token(client, admin_token, stranger_org["id"], ["buyer", "seller"])
    unknown = str(uuid.uuid4())
    for token, expected in ((stranger, 404), (trade["buyer"], 200), (trade["seller"], 200)):
        assert (
            await client.get(f"/v1/orders/{order['id']}", headers=bearer(token))
        ).status_code == expected
        assert (
            await client.get(f"/v1/contracts/{order['contract_id']}", headers=bearer(token))
        ).status_code == expected
    signature = {"jws": "eyJhbGciOiJFZERTQSJ9..c2lnbmF0dXJl"}
    for path, body in (
        ("/v1/orders/{}/cancel", {"reason": "x"}),
        ("/v1/contracts/{}/signatures", signature),
    ):
        theirs = path.format(order["id"] if "orders" in path else order["contract_id"])
        response = await client.post(theirs, json=body, headers=bearer(stranger))
        assert response.status_code == 404, response.text
        assert (
            await client.post(path.format(unknown), json=body, headers=bearer(stranger))
        ).status_code == 404


async def test_offers_are_the_sellers_own(client, trade):
    product_id = await list_product(client, trade)
    path = f"/v1/products/{product_id}/plans/std/offer"
    assert (await client.get(path, headers=bearer(trade["seller"]))).status_code == 200
    assert (await client.get(path, headers=bearer(trade["other"]))).status_code == 404
    response = await client.post(
        f"/v1/products/{product_id}/standing-offers",
        json={"plan_id": "std", "jws": "eyJhbGciOiJFZERTQSJ9..c2ln"},
        headers=bearer(trade["other"]),
    )
    assert response.status_code == 404


async def test_placing_an_order_uses_one_connection_from_the_pool(client, trade, settings, clock):
    # The whole order runs on one pooled connection: with a pool of one, any second acquire
    # inside the transaction would wait forever (as concurrent orders did on a full pool).
    from contracts.orders.schemas import OrderCreate
    from contracts.orders.service import OrderService
    from exchange.platform.audit import Actor
    from exchange.platform.auth import Principal
    from exchange.platform.db import create_pool

    product_id = await list_product(client, trade)
    me = (await client.get("/v1/me", headers=bearer(trade["buyer"]))).json()
    principal = Principal(
        org_id=uuid.UUID(me["organisation"]["id"]),
        org_name="b",
        token_id=uuid.UUID(me["token_id"]),
        roles=frozenset({"buyer"}),
        is_operator=False,
    )
    single = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        service = OrderService(
            single, clock, settings, KeyRing(load_master_key(settings.state_dir))
        )

        order = await asyncio.wait_for(
            service.place(
                Actor.of(principal, None),
                principal,
                msgspec.convert(order_body(product_id), OrderCreate),
            ),
            20,
        )
        assert isinstance(order, Order)  # not a Replay: no Idempotency-Key
        assert order.state == "awaiting_signatures"
    finally:
        await single.close()


async def test_a_custodial_buyer_signs_by_ordering_so_auto_accept_executes_in_one_request(
    client, trade
):
    product_id = await list_product(client, trade)
    await standing_offer(client, trade, product_id)
    key = await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    assert key.status_code == 201 and key.json()["custodial"] is True
    order = (await place(client, trade, order_body(product_id))).json()
    assert order["state"] == "executed"
    contract = (
        await client.get(f"/v1/contracts/{order['contract_id']}", headers=bearer(trade["buyer"]))
    ).json()
    kinds = {s["party"]: s["kind"] for s in contract["signatures"]}
    assert kinds == {
        "seller": "standing_offer",
        "buyer": "custodial",
        "exchange": "countersignature",
    }
    # The custodial signature verifies with the public key the buyer's organisation publishes.
    buyer_sig = next(s for s in contract["signatures"] if s["party"] == "buyer")
    header, _, signature = buyer_sig["jws"].split(".")
    keys = KeySet.import_key_set({"keys": [key.json()["jwk"]]})
    jws.deserialize_compact(
        f"{header}.{b64url(contract['digest'].encode())}.{signature}", keys, algorithms=["EdDSA"]
    )


async def test_a_custodial_seller_signs_on_request(client, trade):
    product_id = await list_product(client, trade)
    await client.post("/v1/keys/custodial", headers=bearer(trade["seller"]))
    order = (await place(client, trade, order_body(product_id))).json()
    assert order["state"] == "awaiting_signatures"
    seller_signed = await client.post(
        f"/v1/contracts/{order['contract_id']}/signatures",
        json={"custodial": True},
        headers=bearer(trade["seller"]),
    )
    assert seller_signed.status_code == 200, seller_signed.text
    assert seller_signed.json()["state"] == "awaiting_signatures"
    neither = await client.post(
        f"/v1/contracts/{order['contract_id']}/signatures", json={}, headers=bearer(trade["buyer"])
    )
    assert neither.status_code == 422
    no_key = await client.post(
        f"/v1/contracts/{order['contract_id']}/signatures",
        json={"custodial": True},
        headers=bearer(trade["buyer"]),
    )
    assert no_key.status_code == 422 and "custodial key" in no_key.json()["detail"]
    buyer = trade["signers"]["buyer"]
    done = await client.post(
        f"/v1/contracts/{order['contract_id']}/signatures",
        json={"jws": buyer.detached(buyer.kid, order["contract_digest"].encode())},
        headers=bearer(trade["buyer"]),
    )
    assert done.json()["state"] == "executed"


async def test_unsigned_contracts_expire(client, trade, pool, clock, settings):
    from contracts.orders.service import OrderService
    from exchange.platform.audit import Actor

    product_id = await list_product(client, trade)
    order = (await place(client, trade, order_body(product_id))).json()
    service = OrderService(pool, clock, settings, KeyRing(load_master_key(settings.state_dir)))
    assert await service.expire_due(Actor.cli("test")) == 0
    clock.advance(__import__("datetime").timedelta(hours=settings.contract_ttl_hours, seconds=1))
    assert await service.expire_due(Actor.cli("test")) == 1
    assert await service.expire_due(Actor.cli("test")) == 0
    seen = (await client.get(f"/v1/orders/{order['id']}", headers=bearer(trade["buyer"]))).json()
    assert seen["state"] == "expired"
    document = (await client.get("/schema/openapi.json")).json()
    assert seen["state"] in _served_order_states(document)["getOrder"]
    buyer = trade["signers"]["buyer"]
    late = await client.post(
        f"/v1/contracts/{order['contract_id']}/signatures",
        json={"jws": buyer.detached(buyer.kid, order["contract_digest"].encode())},
        headers=bearer(trade["buyer"]),
    )
    assert late.status_code == 409 and late.json()["state"] == "expired"
    subjects = [
        r["subject"] for r in await pool.fetch("SELECT subject FROM outbox ORDER BY created_at")
    ]
    assert subjects[-1].endswith(".order.expired")


async def test_an_abandoned_claim_is_taken_over_and_an_expired_key_is_reusable(client, trade, pool):
    product_id = await list_product(client, trade)
    org_id = uuid.UUID(trade["buyer_org"]["id"])
    # A row without a result (left by a request that died in flight before this release
    # stored results with the change) does not hold its key.
    await pool.execute(
        "INSERT INTO idempotency_keys (org_id, key, route, request_hash, created_at)"
        " VALUES ($1, 'k-dead', 'POST /v1/orders', 'x', now() - interval '2 minutes')",
        org_id,
    )
    revived = await place(client, trade, order_body(product_id), key="k-dead")
    assert revived.status_code == 201
    first = await place(client, trade, order_body(product_id), key="k-old")
    await pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'k-old'"
    )
    second = await place(client, trade, order_body(product_id), key="k-old")
    assert second.status_code == 201 and second.json()["id"] != first.json()["id"]


async def test_the_audit_trail_records_the_contract_and_its_signatures(client, trade, pool):
    product_id = await list_product(client, trade)
    await standing_offer(client, trade, product_id)
    await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    order = (await place(client, trade, order_body(product_id))).json()
    rows = await pool.fetch(
        "SELECT action, after_digest, detail FROM audit_log WHERE subject_id = $1 ORDER BY id",
        str(order["contract_id"]),
    )
    assert [r["action"] for r in rows] == [
        "contract.drafted",
        "contract.signed",
        "contract.executed",
    ]
    assert rows[0]["after_digest"] == order["contract_digest"]
    assert rows[1]["detail"]["kind"] == "custodial"


METERED_PLAN = {
    "id": "meter", "name": "按量计费", "pricing": "metered", "price_fen": 1, "free": False,
    "purposes": ["research"], "territory": ["CN", "SG"], "max_term_days": 365,
    "redistribution": False, "acceptance_days": 0,
    "dimensions": [{"name": "requests", "unit_price_millifen": 500, "quota": 10_000},
                   {"name": "bytes", "unit_price_millifen": 1}],
}  # fmt: skip


async def executed_events(settings, pool, clock):
    """Every dx.trade.executed relayed so far, by trade id."""
    async with worker(settings, pool, clock) as w:
        await w.relay()
        sub = await w.platform.nats.jetstream().pull_subscribe(
            settings.subject("trade", "executed"), stream=settings.stream_name
        )
        messages = await sub.fetch(10, timeout=2)
    events = [msgspec.json.decode(m.data, type=TradeExecuted) for m in messages]
    return {e.data.trade_id: e.data for e in events}


async def test_a_metered_plan_takes_a_spend_cap_and_the_trade_carries_its_delivery_terms(
    client, trade, settings, pool, clock, admin_token
):
    std = metadata()["plans"][0]
    document = metadata(plans=[std, METERED_PLAN])
    product_id = await list_product(client, trade, document)
    for plan in ("std", "meter"):
        await standing_offer(client, trade, product_id, plan)
    assert (
        await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    ).status_code == 201

    missing = await place(client, trade, order_body(product_id, plan_id="meter", quantity=1))
    assert missing.status_code == 422, missing.text
    assert [e["path"] for e in missing.json()["errors"]] == ["spend_cap_fen"]
    assert "spend_cap_fen" in missing.json()["detail"]
    refused = await place(client, trade, order_body(product_id, spend_cap_fen=5_000))
    assert refused.status_code == 422
    assert [e["path"] for e in refused.json()["errors"]] == ["spend_cap_fen"]
    too_big = await place(
        client, trade, order_body(product_id, plan_id="meter", spend_cap_fen=10**12 + 1)
    )
    assert too_big.status_code in (400, 422)

    response = await place(
        client, trade, order_body(product_id, plan_id="meter", quantity=1, spend_cap_fen=50_000)
    )
    assert response.status_code == 201, response.text
    order = response.json()
    assert (order["state"], order["price_fen"], order["fee_fen"]) == ("executed", 50_000, 0)
    assert order["terms"]["spend_cap_fen"] == 50_000
    plain = (await place(client, trade, order_body(product_id))).json()
    assert plain["state"] == "executed" and plain["terms"]["spend_cap_fen"] is None

    contract = (await client.get(f"/v1/contracts/{order['contract_id']}",
                                 headers=bearer(trade["buyer"]))).json()  # fmt: skip
    document = contract["document"]
    assert document["delivery_terms"] == {
        "product_id": product_id, "plan_id": "meter", "pricing": "metered",
        "dimensions": METERED_PLAN["dimensions"], "spend_cap_fen": 50_000, "fee_bps": 100,
    }  # fmt: skip
    assert document["fees"]["price_fen"] == 50_000 and document["fees"]["fee_fen"] == 0

    events = await executed_events(settings, pool, clock)
    assert events[order["contract_id"]].delivery == DeliveryTerms(
        product_id=product_id, revision=1,
        revision_digest=document["subject_data"]["revision_digest"], plan_id="meter",
        pricing="metered", modes=["file", "api"], purpose="research", territory=["CN"],
        term_days=180, dimensions=[Dimension("requests", 500, 10_000), Dimension("bytes", 1)],
        spend_cap_fen=50_000, fee_bps=100,
    )  # fmt: skip
    ordinary = events[plain["contract_id"]].delivery
    assert ordinary is not None
    assert (ordinary.pricing, ordinary.plan_id, ordinary.dimensions, ordinary.spend_cap_fen,
            ordinary.fee_bps) == ("subscription", "std", [], None, None)  # fmt: skip

    # Settlement reserves the cap and marks the trade metered with the contract's fee rule.
    await deposit(client, admin_token, trade["buyer_org"]["id"], 50_000 + 2_020_000, "bank-m")
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 2  # both executed trades, through the durable consumer
    rows = {str(r["trade_id"]): r for r in await pool.fetch("SELECT * FROM settlement_trades")}
    metered = rows[order["contract_id"]]
    assert (metered["state"], metered["metered"], metered["fee_bps"], metered["reserved_fen"]) == (
        "reserved", True, 100, 50_000)  # fmt: skip
    assert (rows[plain["contract_id"]]["state"], rows[plain["contract_id"]]["metered"]) == (
        "reserved", False)  # fmt: skip


async def test_a_reviewed_metered_order_keeps_the_fee_rule_it_was_placed_under(
    client, trade, admin_token
):
    document = metadata(plans=[METERED_PLAN], classification__personal_info=DEIDENTIFIED_PI)
    product_id = await list_product(client, trade, document, evidence=("CAU-02",))
    await standing_offer(client, trade, product_id, "meter")
    body = order_body(product_id, plan_id="meter", quantity=1, spend_cap_fen=9_000,
                      buyer_country="SG", delivery_country="SG", territory=["SG"],
                      pi_subject_count=100_000)  # fmt: skip
    order = (await place(client, trade, body)).json()
    assert order["state"] == "in_review", order
    # A new fee rule between placing and approving does not change the order's.
    rule = await client.post("/v1/fee-schedules", json={"bps": 700, "min_fen": 0},
                             headers=bearer(admin_token))  # fmt: skip
    assert rule.status_code == 201
    decided = await claim_and_decide(client, trade["alice"], order["review_case_id"],
                                     evidence=evidence_for("CAU-05"))  # fmt: skip
    assert decided.status_code == 200, decided.text
    placed = (await client.get(f"/v1/orders/{order['id']}", headers=bearer(trade["buyer"]))).json()
    contract = (await client.get(f"/v1/contracts/{placed['contract_id']}",
                                 headers=bearer(trade["buyer"]))).json()  # fmt: skip
    terms = contract["document"]["delivery_terms"]
    assert (terms["spend_cap_fen"], terms["fee_bps"]) == (9_000, 100)
    assert contract["document"]["fees"]["price_fen"] == 9_000


async def test_the_key_list_says_which_keys_the_exchange_holds(client, trade):
    """Issue 18: GET /v1/keys listed a custodial key with custodial: false. Whether a key is
    custodial is a fact of its stored row (the exchange holds its sealed private key), so every
    answer about a key says it the same way."""
    buyer = bearer(trade["buyer"])
    created = await client.post("/v1/keys/custodial", headers=buyer)
    assert created.status_code == 201 and created.json()["custodial"] is True
    custodial_kid = created.json()["kid"]
    listed = {k["kid"]: k for k in (await client.get("/v1/keys", headers=buyer)).json()}
    assert listed[custodial_kid]["custodial"] is True
    own_kid = trade["signers"]["buyer"].kid
    assert listed[own_kid]["custodial"] is False
    # Asking again, or registering the custodial key's public JWK, answers the same key.
    again = await client.post("/v1/keys/custodial", headers=buyer)
    assert again.json()["kid"] == custodial_kid and again.json()["custodial"] is True
    registered = await client.post("/v1/keys", json=created.json()["jwk"], headers=buyer)
    assert registered.status_code == 201, registered.text
    assert registered.json() == created.json()


def _reachable(machine, starts):
    seen, todo = set(starts), list(starts)
    while todo:
        for after in machine.transitions[todo.pop()].values():
            if after not in seen:
                seen.add(after)
                todo.append(after)
    return seen


def _served_states(document, operations):
    """The enum of the state of what each of ``operations`` answers, as served (None where the
    answer declares no state)."""
    components = document["components"]["schemas"]

    def resolve(schema):
        while "$ref" in schema:
            schema = components[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def enum(prop):
        options = prop.get("oneOf") or prop.get("anyOf") or [prop]
        return {value for option in options for value in option.get("enum", [])}

    found = {}
    for methods in document["paths"].values():
        for operation in methods.values():
            if operation["operationId"] not in operations:
                continue
            body = resolve(
                next(
                    r["content"]["application/json"]["schema"]
                    for status, r in operation["responses"].items()
                    if status.startswith("2")
                )
            )
            if "items" in body.get("properties", {}):  # a page
                body = resolve(body["properties"]["items"]["items"])
            state = body.get("properties", {}).get("state")
            found[operation["operationId"]] = None if state is None else enum(state)
    assert set(found) == set(operations)
    return found


def _served_order_states(document):
    return _served_states(document, {"getOrder", "cancelOrder", "listOrders"})


async def test_every_state_an_order_can_reach_is_in_the_served_documents_enum(client):
    """Issue 18: the API answered an order state (expired) its document did not name. Every
    state the order's machine reaches from where an order is placed is in the enum of every
    operation that answers an order, and the enum names no state the machine lacks."""
    from typing import get_args

    from contracts.orders.states import CONTRACT, ORDER, placed_state

    starts = {
        placed_state(decision, held) for decision in ("allow", "review", "reject")
        for held in (False, True)
    }  # fmt: skip
    reachable = _reachable(ORDER, starts)
    assert {"expired", "executed", "cancelled", "rejected"} <= reachable
    document = (await client.get("/schema/openapi.json")).json()
    for operation, states in _served_order_states(document).items():
        assert states is not None, operation
        assert reachable <= states, (operation, reachable - states)
        assert states <= set(get_args(ORDER.states)), (operation, states)
    # A contract's state likewise, wherever its answer declares one (it shows expired too).
    contract_reachable = _reachable(CONTRACT, {"awaiting_signatures", "executed"})
    assert "expired" in contract_reachable
    for operation, states in _served_states(document, {"getContract", "signContract"}).items():
        if states is not None:
            assert contract_reachable <= states, (operation, contract_reachable - states)
