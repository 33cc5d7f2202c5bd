"""What an order pays: a metered plan's spend cap is its price (fee per period instead), and the
spend cap is required for such a plan and refused for any other."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from contracts.orders.fees import BUILT_IN, FeeRule
from contracts.orders.matching import Payment, metered, payment
from contracts.orders.schemas import OrderCreate
from exchange.listings.schemas import Plan
from exchange.platform.errors import InvalidInput
from exchange.platform.money import MAX_FEN

RULE = FeeRule(250, 1_000, "default")


def plan(pricing="metered", prices=(500, 0), **overrides) -> Plan:
    dimensions = [
        {"name": name, "unit_price_millifen": price}
        for name, price in zip(("requests", "bytes"), prices, strict=False)
    ]
    return msgspec.convert(
        {"id": "p", "name": "计划", "pricing": pricing, "price_fen": 2_000, "free": False,
         "purposes": ["research"], "territory": ["CN"], "max_term_days": 30,
         "redistribution": False, "acceptance_days": 0, "dimensions": dimensions} | overrides,
        Plan,
    )  # fmt: skip


def order(**overrides) -> OrderCreate:
    return msgspec.convert(
        {"product_id": str(uuid.uuid4()), "plan_id": "p", "purpose": "research",
         "territory": ["CN"], "buyer_country": "CN", "delivery_country": "CN", "term_days": 30,
         "redistribution": False, "quantity": 3} | overrides,
        OrderCreate,
    )  # fmt: skip


def test_a_metered_plan_is_priced_by_its_spend_cap_with_the_fee_rule_kept_for_its_periods():
    assert metered(plan())
    assert payment(order(spend_cap_fen=50_000), plan(), RULE) == Payment(50_000, 0, 250)
    assert payment(order(spend_cap_fen=1), plan(), BUILT_IN) == Payment(1, 0, 100)


@pytest.mark.parametrize(
    ("the_plan", "cap", "why"),
    [
        (plan(), None, "needs spend_cap_fen"),
        (plan(pricing="subscription"), 5_000, "only to metered plans"),
        (plan(pricing="one_off", prices=()), 5_000, "only to metered plans"),
        (plan(prices=(0, 0)), 5_000, "only to metered plans"),  # nothing priced: per order
    ],
)
def test_the_spend_cap_is_required_for_a_metered_plan_and_refused_for_any_other(the_plan, cap, why):
    with pytest.raises(InvalidInput, match=why) as caught:
        payment(order(spend_cap_fen=cap), the_plan, RULE)
    error = caught.value
    assert (error.status, error.code) == (422, "invalid_input")
    assert [(e.path, e.source) for e in error.errors] == [("spend_cap_fen", "body")]


def test_other_plans_pay_price_times_quantity_and_the_fee_as_before():
    assert not metered(plan(pricing="subscription"))
    assert payment(order(), plan(pricing="subscription"), RULE) == Payment(6_000, 1_000)
    assert payment(order(), plan(pricing="metered", prices=(0,)), RULE) == Payment(6_000, 1_000)
    free = plan(pricing="subscription", free=True, price_fen=0)
    assert payment(order(), free, RULE) == Payment(0, 0)


@pytest.mark.parametrize("cap", [0, -1, 10**12 + 1])
def test_a_spend_cap_out_of_range_is_refused_by_the_schema(cap):
    with pytest.raises(msgspec.ValidationError, match="spend_cap_fen"):
        order(spend_cap_fen=cap)


@pytest.mark.parametrize(
    ("price", "quantity", "rule"),
    [
        (10**13, 1_000, RULE),  # price x quantity alone is beyond 2^53 - 1
        (10**13, 900, BUILT_IN),  # 9 x 10^15 is within, not with its 1 % fee
        (MAX_FEN, 1, FeeRule(0, 1, "default")),  # the minimum fee tips it over
    ],
)
def test_an_order_costing_more_than_2_53_fen_is_refused_naming_quantity(price, quantity, rule):
    # (replace, not convert: a plan's own bound, 10^13 fen, would refuse MAX_FEN itself)
    the_plan = msgspec.structs.replace(plan(pricing="subscription"), price_fen=price)
    with pytest.raises(InvalidInput, match=str(MAX_FEN)) as caught:
        payment(order(quantity=quantity), the_plan, rule)
    error = caught.value
    assert (error.status, error.code) == (422, "invalid_input")
    assert [(e.path, e.source) for e in error.errors] == [("quantity", "body")]
    assert str(MAX_FEN) in error.errors[0].message


def test_an_order_costing_up_to_2_53_fen_is_priced_as_before():
    the_plan = plan(pricing="subscription", price_fen=10**13)
    assert payment(order(quantity=800), the_plan, BUILT_IN) == Payment(8 * 10**15, 8 * 10**13)
    exact = msgspec.structs.replace(the_plan, price_fen=MAX_FEN - 1)  # fee: its 1 fen minimum
    assert payment(order(quantity=1), exact, FeeRule(0, 1, "default")) == Payment(MAX_FEN - 1, 1)
