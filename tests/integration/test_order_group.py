"""Group commit of orders: groups placed on real PostgreSQL (the queue's rules:
tests/unit/test_order_group.py)."""

from __future__ import annotations

import asyncio
import uuid

import msgspec

from contracts.orders.group import OrderGroup
from contracts.orders.idempotency import Replay
from contracts.orders.schemas import Order, OrderCreate
from contracts.orders.service import OrderService
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal
from exchange.platform.errors import InvalidInput, NotFound
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.api import bearer
from tests.kit.documents import DEIDENTIFIED_PI, metadata
from tests.kit.market import list_product, order_body, standing_offer


async def _principal(client, token: str) -> Principal:
    me = (await client.get("/v1/me", headers=bearer(token))).json()
    return Principal(
        org_id=uuid.UUID(me["organisation"]["id"]),
        org_name=me["organisation"]["name"],
        token_id=uuid.UUID(me["token_id"]),
        roles=frozenset({"buyer"}),
        is_operator=False,
    )


async def test_a_group_judges_each_order_and_counts_its_own_exports(
    client, trade, pool, clock, settings
):
    """One transaction for several orders: a refused order gets its own answer and writes
    nothing, and an export executed earlier in the group counts towards the next order's
    threshold although it is not yet written."""
    product_id = await list_product(
        client, trade, metadata(classification__personal_info=DEIDENTIFIED_PI), evidence=("CAU-02",)
    )
    await standing_offer(client, trade, product_id)
    assert (
        await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    ).status_code == 201
    principal = await _principal(client, trade["buyer"])
    group = OrderGroup(concurrency=1)
    service = OrderService(
        pool, clock, settings, KeyRing(load_master_key(settings.state_dir)), group=group
    )

    def place(product: str = product_id, **terms: object) -> asyncio.Future[Order | Replay]:
        data = msgspec.convert(order_body(product, **terms), OrderCreate)
        return asyncio.ensure_future(service.place(Actor.of(principal, None), principal, data))

    first = place()  # alone: nothing else was waiting
    await asyncio.sleep(0)
    together = [
        place(buyer_country="SG", pi_subject_count=60_000),
        place(purpose="marketing"),
        place(str(uuid.uuid4())),
        place(buyer_country="SG", pi_subject_count=40_000),
    ]
    results = await asyncio.gather(first, *together, return_exceptions=True)
    assert (group.groups, group.grouped) == (1, 4)
    alone, export, mismatch, missing, second_export = results
    assert isinstance(alone, Order) and alone.state == "executed"
    assert isinstance(export, Order) and export.state == "executed"
    assert export.policy.cross_border is not None
    assert export.policy.cross_border.route == "exempt"
    assert (
        isinstance(mismatch, InvalidInput)
        and mismatch.extensions["mismatches"][0]["term"] == "purpose"
    )
    assert isinstance(missing, NotFound)
    # 60,000 executed earlier in this group + 40,000 = 100,000: CAU-05, to review.
    assert isinstance(second_export, Order) and second_export.state == "in_review"
    assert second_export.policy.cross_border is not None
    assert second_export.policy.cross_border.route == "standard_contract_or_certification"
    case = await pool.fetchrow(
        "SELECT kind, rules FROM review_cases WHERE id = $1", second_export.review_case_id
    )
    assert case["kind"] == "order" and list(case["rules"]) == ["CAU-05"]
    rows = await pool.fetch(
        "SELECT id, state FROM orders WHERE buyer_org_id = $1 ORDER BY created_at", principal.org_id
    )
    assert {r["id"]: r["state"] for r in rows} == {
        alone.id: "executed",
        export.id: "executed",
        second_export.id: "in_review",
    }
    contracts = await pool.fetchval(
        "SELECT count(*) FROM trade_contracts WHERE order_id = ANY($1::uuid[])",
        [alone.id, export.id, second_export.id],
    )
    events = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE subject = $1 AND convert_from(payload, 'UTF8')::jsonb"
        " -> 'data' ->> 'order_id'"
        " = ANY($2::text[])",
        settings.subject("trade", "executed"), [str(alone.id), str(export.id)],
    )  # fmt: skip
    assert (contracts, events) == (2, 2)


async def test_a_group_counts_only_identifiable_exports_of_its_earlier_orders(
    client, trade, pool, clock, settings
):
    """An export of anonymised data executed earlier in the group declares individuals that
    are not personal information: they do not count towards the next export's threshold."""
    anonymised_pi = DEIDENTIFIED_PI | {"state": "anonymised", "separate_consent_for_supply": False}
    anonymised = await list_product(
        client, trade, metadata(classification__personal_info=anonymised_pi)
    )
    personal = await list_product(
        client, trade, metadata(classification__personal_info=DEIDENTIFIED_PI), evidence=("CAU-02",)
    )
    for product in (anonymised, personal):
        await standing_offer(client, trade, product)
    assert (
        await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    ).status_code == 201
    principal = await _principal(client, trade["buyer"])
    group = OrderGroup(concurrency=1)
    service = OrderService(
        pool, clock, settings, KeyRing(load_master_key(settings.state_dir)), group=group
    )

    def place(product: str, subjects: int) -> asyncio.Future[Order | Replay]:
        body = order_body(product, buyer_country="SG", pi_subject_count=subjects)
        data = msgspec.convert(body, OrderCreate)
        return asyncio.ensure_future(service.place(Actor.of(principal, None), principal, data))

    first = place(personal, 1)  # alone: nothing else was waiting
    await asyncio.sleep(0)
    together = [place(anonymised, 90_000), place(personal, 60_000)]
    alone, anonymous, second = await asyncio.gather(first, *together)
    assert (group.groups, group.grouped) == (1, 2)
    assert isinstance(alone, Order) and isinstance(anonymous, Order)
    assert anonymous.state == "executed"
    assert isinstance(second, Order)
    assert second.state == "executed", second.policy
    assert second.policy.cross_border is not None
    assert second.policy.cross_border.basis.startswith(
        "5: personal information of 60,001 individuals"
    )
