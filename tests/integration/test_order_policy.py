"""Order-time policy (issue 18), over HTTP on real PostgreSQL and JetStream.

- The exporter's year totals count the subjects of identifiable personal information only, and
  stop counting a trade voided or failed before any delivery (order sequences).
- Hits the listing review cleared stay cleared across cosmetic revisions, whatever became of a
  material revision in between.
- Staff record a product's legal prohibition (NEG-08) and an organisation's CIIO status and
  exemptions (route steps 2 and 3) through four-eyes review cases; orders use them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from exchange import wiring
from exchange.delivery.usage import UsageRecord
from exchange.delivery.usage import write as write_usage
from exchange.delivery.worker import apply as deliver_event
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.api import bearer
from tests.kit.delivery import grant_service
from tests.kit.documents import DEIDENTIFIED_PI, metadata
from tests.kit.market import (
    claim_and_decide,
    deposit,
    evidence_for,
    list_product,
    order_body,
    place,
    standing_offer,
)
from tests.kit.settlement import worker

PRICE, FEE = 1_000_000, 10_000  # the 'std' plan, one period; 1 %
# Personal information made anonymous (PIPL Art. 4: no longer personal information).
ANONYMISED_PI = DEIDENTIFIED_PI | {"state": "anonymised", "separate_consent_for_supply": False}


async def auto_accept(client, trade, document: dict[str, Any], evidence: tuple[str, ...] = ()):
    """A product listed by the seller whose 'std' plan auto-accepts."""
    product_id = await list_product(client, trade, document, evidence=evidence)
    await standing_offer(client, trade, product_id)
    return product_id


async def custodial_buyer(client, trade) -> None:
    response = await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    assert response.status_code == 201, response.text


async def export(client, trade, product_id: str, subjects: int) -> dict[str, Any]:
    """An order delivered to Singapore transferring ``subjects`` individuals' information."""
    body = order_body(product_id, buyer_country="SG", delivery_country="SG", quantity=1,
                      pi_subject_count=subjects)  # fmt: skip
    response = await place(client, trade, body)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


def route(order: dict[str, Any]) -> tuple[str, str, str]:
    cross_border = order["policy"]["cross_border"]
    return order["state"], cross_border["route"], cross_border["basis"]


# --- the exporter's year totals ------------------------------------------------------------------


async def test_an_order_sequence_counts_only_identifiable_personal_information(client, trade):
    """Exports of anonymised and of non-personal data declare individuals too; they are not
    personal information, so they never push a later personal-information export over the
    CAU-05 threshold (policy-rules.md: N counts personal-information subjects)."""
    anonymised = await auto_accept(
        client, trade, metadata(classification__personal_info=ANONYMISED_PI)
    )
    plain = await auto_accept(client, trade, metadata())  # no personal information at all
    personal = await auto_accept(
        client, trade, metadata(classification__personal_info=DEIDENTIFIED_PI), ("CAU-02",)
    )
    await custodial_buyer(client, trade)

    first = await export(client, trade, anonymised, 80_000)
    second = await export(client, trade, plain, 50_000)
    assert route(first)[:2] == route(second)[:2] == ("executed", "exempt")
    third = await export(client, trade, personal, 40_000)
    assert route(third) == (
        "executed", "exempt", "5: personal information of 40,000 individuals this year (< 100,000)"
    )  # fmt: skip
    fourth = await export(client, trade, anonymised, 500_000)
    assert route(fourth)[:2] == ("executed", "exempt")
    below = await export(client, trade, personal, 59_999)
    assert route(below) == (
        "executed", "exempt", "5: personal information of 99,999 individuals this year (< 100,000)"
    )  # fmt: skip
    at = await export(client, trade, personal, 1)
    assert route(at) == (
        "in_review", "standard_contract_or_certification",
        "5: personal information of 100,000 individuals this year (≥ 100,000)",
    )  # fmt: skip
    assert [h["rule"] for h in at["policy"]["hits"]] == ["CAU-02", "CAU-05"]
    assert at["cleared"] == ["CAU-02"]


async def test_an_order_sequence_stops_counting_trades_voided_or_unfunded_before_delivery(
    client, trade, admin_token, settings, pool, clock
):
    """A trade cancelled by both parties (voided) or that the buyer could not pay (failed) moved
    no personal information abroad: its individuals leave the seller's totals."""
    personal = await auto_accept(
        client, trade, metadata(classification__personal_info=DEIDENTIFIED_PI), ("CAU-02",)
    )
    await custodial_buyer(client, trade)
    await deposit(client, admin_token, trade["buyer_org"]["id"], 2 * (PRICE + FEE), "bank-seq")

    kept = await export(client, trade, personal, 40_000)
    voided = await export(client, trade, personal, 30_000)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 2  # both paid for: reserved
    unfunded = await export(client, trade, personal, 20_000)
    assert [route(o)[0] for o in (kept, voided, unfunded)] == ["executed"] * 3
    assert route(unfunded)[2].startswith("5: personal information of 90,000 individuals")
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 1  # the money is spent: this one fails
    states = {}
    for order in (kept, voided, unfunded):
        view = await client.get(
            f"/v1/trades/{order['contract_id']}", headers=bearer(trade["buyer"])
        )
        states[order["contract_id"]] = view.json()["state"]
    assert list(states.values()) == ["reserved", "reserved", "failed"]
    for party in ("buyer", "seller"):
        cancelled = await client.post(f"/v1/trades/{voided['contract_id']}/cancel",
                                      json={"reason": "双方协商解除"}, headers=bearer(trade[party]))  # fmt: skip
        assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "voided"

    below = await export(client, trade, personal, 59_999)
    assert route(below) == (
        "executed", "exempt", "5: personal information of 99,999 individuals this year (< 100,000)"
    )  # fmt: skip
    at = await export(client, trade, personal, 1)
    assert route(at)[:2] == ("in_review", "standard_contract_or_certification")
    uncounted = await pool.fetch(
        "SELECT subject_id, detail FROM audit_log WHERE action = 'order.export_uncounted'"
        " ORDER BY id"
    )
    assert [(r["subject_id"], r["detail"]["trade"]) for r in uncounted] == [
        (unfunded["id"], "failed"), (voided["id"], "voided"),
    ]  # fmt: skip


async def test_a_trade_voided_after_delivery_keeps_counting(
    client, trade, admin_token, settings, pool, clock
):
    """Once data reached the buyer, its individuals were exported, whatever became of the money."""
    personal = await auto_accept(
        client, trade, metadata(classification__personal_info=DEIDENTIFIED_PI), ("CAU-02",)
    )
    await custodial_buyer(client, trade)
    await deposit(client, admin_token, trade["buyer_org"]["id"], PRICE + FEE, "bank-delivered")
    delivered = await export(client, trade, personal, 60_000)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 1
    # The delivery room takes the trade's events as its worker does, then serves the buyer once.
    grants = grant_service(pool, clock, settings)
    events = await pool.fetch(
        "SELECT subject, payload FROM outbox WHERE subject = ANY($1::text[]) ORDER BY created_at",
        [settings.subject("trade", "executed"), settings.subject("trade", "reserved")],
    )
    async with pool.acquire() as conn, conn.transaction():
        for event in events:
            await deliver_event(conn, grants, event["subject"], bytes(event["payload"]))
    grant_id = await pool.fetchval(
        "SELECT id FROM grants WHERE trade_id = $1 AND state = 'active' LIMIT 1",
        uuid.UUID(delivered["contract_id"]),
    )
    assert grant_id is not None
    record = UsageRecord(id=uuid.uuid4(), grant_id=grant_id, served_at=datetime.now(UTC),
                         units={"bytes": 4096}, leases=[], cost_millifen=0, detail={})  # fmt: skip
    assert await write_usage(pool, [record]) == {record.id}
    for party in ("buyer", "seller"):
        cancelled = await client.post(f"/v1/trades/{delivered['contract_id']}/cancel",
                                      json={"reason": "交付后解除"}, headers=bearer(trade[party]))  # fmt: skip
    assert cancelled.json()["state"] == "voided"
    after = await export(client, trade, personal, 40_000)
    assert route(after)[:2] == ("in_review", "standard_contract_or_certification")
    assert route(after)[2].startswith("5: personal information of 100,000 individuals")


METERED_PLAN = {
    "id": "meter", "name": "按量计费", "pricing": "metered", "price_fen": 1, "free": False,
    "purposes": ["research"], "territory": ["CN", "SG"], "max_term_days": 365,
    "redistribution": False, "acceptance_days": 0,
    "dimensions": [{"name": "requests", "unit_price_millifen": 500, "quota": 10_000}],
}  # fmt: skip


async def test_a_metered_trade_released_unused_stops_counting(
    client, trade, admin_token, settings, pool, clock
):
    """A metered trade whose grant ends with nothing served is voided by settlement inside the
    delivery room's billing: its individuals leave the seller's totals there too."""
    document = metadata(plans=[METERED_PLAN], classification__personal_info=DEIDENTIFIED_PI)
    product_id = await list_product(client, trade, document, evidence=("CAU-02",))
    await standing_offer(client, trade, product_id, "meter")
    await custodial_buyer(client, trade)
    await deposit(client, admin_token, trade["buyer_org"]["id"], 100_000, "bank-metered")

    def metered(subjects: int) -> dict[str, Any]:
        return order_body(product_id, plan_id="meter", quantity=1, spend_cap_fen=50_000,
                          buyer_country="SG", pi_subject_count=subjects)  # fmt: skip

    unused = (await place(client, trade, metered(60_000))).json()
    assert route(unused)[:2] == ("executed", "exempt")
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 1
    billing = wiring.billing(pool, clock, settings, KeyRing(load_master_key(settings.state_dir)))
    assert billing.hooks.release is not None
    async with pool.acquire() as conn, conn.transaction():
        state = await billing.hooks.release(
            conn, uuid.UUID(unused["contract_id"]), clock.now(), "grant expired"
        )
    assert state == "voided"
    later = (await place(client, trade, metered(99_999))).json()
    assert route(later) == (
        "executed", "exempt", "5: personal information of 99,999 individuals this year (< 100,000)"
    )  # fmt: skip


# --- cleared hits across revisions ---------------------------------------------------------------


@pytest.mark.parametrize("verdict", ["reject", "request_changes"])
async def test_cleared_hits_survive_a_refused_material_revision_and_a_cosmetic_one(
    client, trade, verdict
):
    """The listing review cleared CAU-02 for revision 1. A material revision 2 is refused, so
    revision 1 stays live; a cosmetic revision 3 of it goes live. Its classification is the one
    the review approved, so orders are not held again for CAU-02."""
    document = metadata(classification__personal_info=DEIDENTIFIED_PI)
    product_id = await list_product(client, trade, document, evidence=("CAU-02",))
    path = f"/v1/products/{product_id}"
    material = await client.post(f"{path}/revisions", json=document | {"name_zh": "城市气象观测数据(新版)"},
                                 headers=bearer(trade["seller"]))  # fmt: skip
    assert material.status_code == 200, material.text
    case_id = material.json()["review"]["case_id"]
    decided = await claim_and_decide(client, trade["alice"], case_id, verdict=verdict)
    assert decided.status_code == 200, decided.text
    cosmetic = await client.post(f"{path}/revisions", json=document | {"summary": "新的简介"},
                                 headers=bearer(trade["seller"]))  # fmt: skip
    assert cosmetic.status_code == 200, cosmetic.text
    product = cosmetic.json()
    assert (product["live"]["number"], product["live"]["change"]) == (3, "cosmetic")

    order = (await place(client, trade, order_body(product_id))).json()
    assert order["cleared"] == ["CAU-02"]
    assert order["state"] == "awaiting_signatures" and order["review_case_id"] is None


async def test_a_material_revision_approved_later_is_what_clears(client, trade):
    """A material revision that changes the classification clears only what its own review
    cleared: the earlier approval does not stand for it."""
    product_id = await list_product(client, trade)  # no personal information: no hit to clear
    changed = metadata(classification__personal_info=DEIDENTIFIED_PI)
    material = await client.post(f"/v1/products/{product_id}/revisions", json=changed,
                                 headers=bearer(trade["seller"]))  # fmt: skip
    case_id = material.json()["review"]["case_id"]
    held = (await place(client, trade, order_body(product_id))).json()
    assert held["cleared"] == [] and held["state"] == "awaiting_signatures"  # revision 1 live
    decided = await claim_and_decide(client, trade["alice"], case_id,
                                     evidence=evidence_for("CAU-02"))  # fmt: skip
    assert decided.status_code == 200, decided.text
    cosmetic = await client.post(f"/v1/products/{product_id}/revisions",
                                 json=changed | {"tags": ["气象"]}, headers=bearer(trade["seller"]))  # fmt: skip
    assert cosmetic.json()["live"]["number"] == 3
    order = (await place(client, trade, order_body(product_id))).json()
    assert order["cleared"] == ["CAU-02"] and order["state"] == "awaiting_signatures"


# --- staff-recorded facts: a product's legal prohibition, an exporter's status -------------------


async def approve_twice(client, trade, case_id: str) -> dict[str, Any]:
    """Four eyes: alice, then bob, approve the case; the case after the second approval."""
    first = await claim_and_decide(client, trade["alice"], case_id, reason="法规禁止交易,已核实")
    assert first.status_code == 200, first.text
    assert first.json()["state"] == "open" and first.json()["approvals_needed"] == 2
    second = await claim_and_decide(client, trade["bob"], case_id, reason="复核同意")
    assert second.status_code == 200, second.text
    case: dict[str, Any] = second.json()
    assert case["state"] == "approved"
    return case


async def test_a_legal_prohibition_recorded_by_two_reviewers_refuses_orders(
    client, trade, admin_token, pool
):
    product_id = await list_product(client, trade)
    path = f"/v1/products/{product_id}/legal-prohibition"
    body = {"prohibited": True, "reason": "行业主管部门通知禁止交易该类数据",
            "reference": "某监管通知 2026-12 号"}  # fmt: skip
    assert (await client.post(path, json=body, headers=bearer(trade["seller"]))).status_code == 403
    proposed = await client.post(path, json=body, headers=bearer(trade["alice"]))
    assert proposed.status_code == 201, proposed.text
    case = proposed.json()
    assert (case["kind"], case["subject_id"], case["four_eyes"]) == (
        "legal_prohibition", product_id, True)  # fmt: skip
    assert case["rules"] == ["NEG-08"] and case["proposal"]["prohibited"] is True
    again = await client.post(path, json=body, headers=bearer(trade["bob"]))
    assert again.status_code == 409  # one open proposal per product

    one = await claim_and_decide(client, trade["alice"], case["id"], reason="同意")
    assert one.json()["state"] == "open"  # one reviewer is not enough
    allowed = (await place(client, trade, order_body(product_id))).json()
    assert allowed["state"] == "awaiting_signatures"
    two = await claim_and_decide(client, trade["bob"], case["id"], reason="复核同意")
    assert two.json()["state"] == "approved"

    seen = (await client.get(f"/v1/products/{product_id}", headers=bearer(trade["seller"]))).json()
    assert seen["legal_prohibition"] is True
    assert (seen["review"]["state"], seen["review"]["revision"]) == ("approved", 1)  # listing
    refused = (await place(client, trade, order_body(product_id))).json()
    assert refused["state"] == "rejected"
    assert [h["rule"] for h in refused["policy"]["hits"]] == ["NEG-08"]
    actions = [r["action"] for r in await pool.fetch(
        "SELECT action FROM audit_log WHERE subject_id = $1 ORDER BY id", product_id)]  # fmt: skip
    assert "product.legal_prohibition_proposed" in actions
    assert actions[-1] == "product.legal_prohibition_recorded"

    lifted = await client.post(path, json=body | {"prohibited": False, "reason": "通知已撤销"},
                               headers=bearer(admin_token))  # fmt: skip
    assert lifted.status_code == 201, lifted.text
    await approve_twice(client, trade, lifted.json()["id"])
    assert (await place(client, trade, order_body(product_id))).json()["state"] == (
        "awaiting_signatures"
    )


async def test_a_rejected_prohibition_proposal_changes_nothing(client, trade):
    product_id = await list_product(client, trade)
    proposed = await client.post(
        f"/v1/products/{product_id}/legal-prohibition",
        json={"prohibited": True, "reason": "疑似禁止", "reference": "无"},
        headers=bearer(trade["alice"]),
    )
    decided = await claim_and_decide(client, trade["bob"], proposed.json()["id"], verdict="reject",
                                     reason="依据不足")  # fmt: skip
    assert decided.json()["state"] == "rejected"
    assert (await place(client, trade, order_body(product_id))).json()["state"] == (
        "awaiting_signatures"
    )


EXPORTER = {"ciio": False, "exemption": None, "ftz_exempt": False}


async def record_exporter_status(client, trade, org_id: str, **status: Any) -> dict[str, Any]:
    body = EXPORTER | status | {"reason": "依据主管部门认定", "reference": "认定文书 2026-001"}
    proposed = await client.post(f"/v1/organisations/{org_id}/exporter-status", json=body,
                                 headers=bearer(trade["alice"]))  # fmt: skip
    assert proposed.status_code == 201, proposed.text
    case = proposed.json()
    assert (case["kind"], case["subject_id"], case["rules"]) == ("exporter_status", org_id,
                                                                   ["CAU-05"])  # fmt: skip
    return await approve_twice(client, trade, case["id"])


@pytest.mark.parametrize(
    ("status", "subjects", "state", "route_basis"),
    [
        # step 2: a CII operator's personal information goes abroad only after an assessment
        ({"ciio": True}, 10, "in_review",
         ("security_assessment", "2: personal information exported by a CII operator")),
        # step 3: an exemption, or the free trade zone's: exempt even past 100,000
        ({"exemption": "contract_with_individual"}, 150_000, "awaiting_signatures",
         ("exempt", "3: exempt (contract_with_individual)")),
        ({"ftz_exempt": True}, 150_000, "awaiting_signatures",
         ("exempt", "3: exempt (free trade zone negative list does not cover it)")),
    ],
)  # fmt: skip
async def test_an_exporters_status_recorded_by_two_reviewers_routes_its_exports(
    client, trade, admin_token, status, subjects, state, route_basis
):
    product_id = await list_product(
        client, trade, metadata(classification__personal_info=DEIDENTIFIED_PI), evidence=("CAU-02",)
    )
    seller_org = trade["seller_org"]["id"]
    await record_exporter_status(client, trade, seller_org, **status)
    organisation = (
        await client.get(f"/v1/organisations/{seller_org}", headers=bearer(admin_token))
    ).json()
    assert organisation["exporter"] == EXPORTER | status
    order = await export(client, trade, product_id, subjects)
    assert (order["state"], *route(order)[1:]) == (state, *route_basis)
    if state == "in_review":
        case = (await client.get(f"/v1/reviews/{order['review_case_id']}",
                                 headers=bearer(trade["alice"]))).json()  # fmt: skip
        assert case["rules"] == ["CAU-05"] and case["four_eyes"] is True
    domestic = (await place(client, trade, order_body(product_id))).json()
    assert domestic["policy"]["cross_border"]["route"] == "none"


async def test_exporter_status_needs_staff_and_a_known_organisation(client, trade, admin_token):
    body = EXPORTER | {"ciio": True, "reason": "x", "reference": "y"}
    seller_org = trade["seller_org"]["id"]
    path = f"/v1/organisations/{seller_org}/exporter-status"
    assert (await client.post(path, json=body, headers=bearer(trade["seller"]))).status_code == 403
    unknown = await client.post(f"/v1/organisations/{uuid.uuid4()}/exporter-status", json=body,
                                headers=bearer(trade["alice"]))  # fmt: skip
    assert unknown.status_code == 404
    bad = await client.post(path, json=body | {"exemption": "friendship"},
                            headers=bearer(trade["alice"]))  # fmt: skip
    assert bad.status_code == 422  # a body value outside its enum
    operator = (await client.get("/v1/me", headers=bearer(admin_token))).json()["organisation"]
    own = await client.post(f"/v1/organisations/{operator['id']}/exporter-status", json=body,
                            headers=bearer(trade["alice"]))  # fmt: skip
    assert own.status_code == 409  # the exchange itself exports nothing
