"""The aggregates' state machines: one table each, one 409 for an illegal step, and every
state the API can return named in the OpenAPI document."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from contracts.orders.states import CONTRACT, ORDER, placed_state
from exchange.app import create_app
from exchange.disputes.states import DISPUTE
from exchange.listings.states import OBJECTION, PRODUCT, held_here
from exchange.platform.settings import Settings
from exchange.platform.states import IllegalTransition, StateMachine
from exchange.review.states import CASE
from settlement.states import METERED_TRADE, TRADE

MACHINES: list[StateMachine[Any, Any]] = [
    PRODUCT, OBJECTION, CASE, ORDER, CONTRACT, TRADE, METERED_TRADE, DISPUTE,
]  # fmt: skip


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.aggregate)
def test_every_state_has_a_row_and_every_step_lands_on_a_state(machine):
    states = set(get_args(machine.states))
    assert states == set(machine.transitions)
    for row in machine.transitions.values():
        assert set(row.values()) <= states
    assert any(machine.is_final(s) for s in states)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.aggregate)
def test_an_illegal_step_is_one_409_naming_state_action_and_what_is_allowed(machine):
    actions = {a for row in machine.transitions.values() for a in row}
    for state in machine.transitions:
        for action in sorted(actions - set(machine.transitions[state])):
            with pytest.raises(IllegalTransition) as caught:
                machine.next(state, action)
            error = caught.value
            assert (error.status, error.code) == (409, "illegal_transition")
            assert error.extensions == {
                "aggregate": machine.aggregate,
                "state": state,
                "action": action,
                "allowed_actions": machine.allowed(state),
            }
            assert not set(error.extensions["allowed_actions"]) & machine.internal


def test_a_staff_hold_survives_the_origins_news_and_the_others_do_not():
    assert held_here("delisted", None)
    assert held_here("suspended", "exchange")
    assert held_here("suspended", "objection")  # staff's, pending a third party's objection
    for cause in ("origin", "distrust", "local_policy"):
        assert not held_here("suspended", cause)
    assert not held_here("listed", None)


def test_an_order_starts_where_its_decision_puts_it():
    assert placed_state("reject", held=False) == "rejected"
    assert placed_state("accept", held=True) == "in_review"
    assert placed_state("accept", held=False) == "awaiting_signatures"
    assert ORDER.next("awaiting_signatures", "execute") == "executed"
    assert ORDER.next("awaiting_signatures", "expire") == "expired"
    assert CONTRACT.next("executed", "unfund") == "unfunded"


def _enum_of(schema: dict[str, Any], name: str, field: str) -> set[str]:
    # Litestar qualifies a name two modules share (orders_schemas_Order, policy_…_Order).
    components = schema["components"]["schemas"]
    (key,) = [k for k in components if k == name or k.endswith(f"schemas_{name}")]
    prop = components[key]["properties"][field]
    options = prop.get("oneOf") or prop.get("anyOf") or [prop]
    return {value for option in options for value in option.get("enum", [])}


def test_every_state_the_api_returns_is_in_the_openapi_enums():
    app = create_app(Settings.from_env({}))
    schema = app.openapi_schema.to_schema()
    assert _enum_of(schema, "Order", "state") == set(get_args(ORDER.states))
    assert "expired" in _enum_of(schema, "Order", "state")
    assert _enum_of(schema, "Product", "state") == set(get_args(PRODUCT.states))
    assert _enum_of(schema, "ReviewCase", "state") == set(get_args(CASE.states))
    assert _enum_of(schema, "ListingObjection", "state") == set(get_args(OBJECTION.states))
    assert _enum_of(schema, "TradeView", "state") == set(get_args(TRADE.states))
