"""Pure listing rules: the state machine, material vs cosmetic changes, product codes."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.listings.lifecycle import (
    changed_fields,
    is_material,
    product_code,
    product_code_is_valid,
)
from exchange.listings.schemas import ProductMetadata
from exchange.listings.states import PRODUCT, next_state
from exchange.platform.states import IllegalTransition
from tests.kit.documents import metadata


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        ("draft", "submit", "in_review"),
        ("changes_requested", "submit", "in_review"),
        ("in_review", "approve", "listed"),
        ("in_review", "request_changes", "changes_requested"),
        ("in_review", "reject", "rejected"),
        ("listed", "suspend", "suspended"),
        ("suspended", "reinstate", "listed"),
        ("suspended", "delist", "delisted"),
        ("listed", "delist", "delisted"),
    ],
)
def test_allowed_transitions(state, action, expected):
    assert next_state(state, action) == expected


@pytest.mark.parametrize("state", sorted(PRODUCT.transitions))
def test_every_other_action_is_a_409_naming_state_and_allowed_ones(state):
    for action in (
        "edit",
        "submit",
        "approve",
        "request_changes",
        "reject",
        "suspend",
        "reinstate",
        "delist",
        "revise",
    ):
        if action in PRODUCT.transitions[state]:
            continue
        with pytest.raises(IllegalTransition) as caught:
            next_state(state, action)
        assert caught.value.extensions == {
            "state": state,
            "aggregate": "product",
            "action": action,
            "allowed_actions": PRODUCT.allowed(state),
        }


def test_final_states_allow_nothing():
    assert PRODUCT.transitions["rejected"] == PRODUCT.transitions["delisted"] == {}


def meta(**overrides):
    return msgspec.convert(metadata(**overrides), ProductMetadata)


@pytest.mark.parametrize(
    ("overrides", "material"),
    [
        ({"summary": "新简介"}, False),
        ({"tags": ["天气"]}, False),
        ({"name_en": "Weather"}, False),
        ({"manual__sample": {"rows": []}}, False),
        ({"classification__data_level": "important"}, True),
        ({"source__kind": "purchased"}, True),
        ({"rights__operating": True}, True),
        ({"delivery": ["sandbox"]}, True),
        ({"manual__fields": [{"name": "x", "type": "int", "meaning": "y"}]}, True),
        ({"name_zh": "改名"}, True),
    ],
)
def test_material_and_cosmetic_changes(overrides, material):
    changed = changed_fields(meta(), meta(**overrides))
    assert changed
    assert is_material(changed) is material


def test_a_plan_usage_term_change_is_material():
    plans = metadata()["plans"]
    plans[0]["territory"] = ["CN", "HK"]
    assert is_material(changed_fields(meta(), meta(plans=plans)))


def test_product_codes_carry_a_check_character():
    code = product_code("DX", 2026, 42)
    assert code.startswith("DX-2026-000042")
    assert len(code) == len("DX-2026-000042") + 1
    assert product_code_is_valid(code)


@given(
    st.integers(1, 999_999),
    st.integers(0, 13),
    st.sampled_from("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
)
def test_any_single_character_change_of_a_code_is_detected(sequence, position, replacement):
    code = product_code("SZDX", 2026, sequence)
    if code[position] in "-" or code[position] == replacement:
        return
    assert not product_code_is_valid(code[:position] + replacement + code[position + 1 :])


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"manual__scale": {}}, "manual.scale"),
        (
            {"manual__time_coverage": {"start": "2024-01-01", "end": "2023-01-01"}},
            "manual.time_coverage.end",
        ),
        ({"manual__sample": {"rows": []}}, "manual.sample"),
        ({"rights": {"holding": False, "use": False, "operating": False}}, "rights"),
        ({"delivery": ["file", "file"]}, "delivery"),
        ({"classification__general_grade": None}, "classification.general_grade"),
    ],
)
def test_cross_field_rules(overrides, path):
    from exchange.listings.lifecycle import metadata_problems

    assert [p.path for p in metadata_problems(meta(**overrides))] == [path]
    assert metadata_problems(meta()) == []


def test_prices_are_positive_fen_or_explicitly_free():
    from exchange.listings.lifecycle import metadata_problems

    plans = metadata()["plans"]
    free_but_priced = [plans[0] | {"free": True}]
    paid_but_zero = [plans[0] | {"price_fen": 0}]
    free = [plans[0] | {"free": True, "price_fen": 0}]
    redistributable = [plans[0] | {"redistribution": True}]
    assert [p.message for p in metadata_problems(meta(plans=free_but_priced))] == [
        "a free plan has price 0"
    ]
    assert [p.path for p in metadata_problems(meta(plans=paid_but_zero))] == ["plans[0].price_fen"]
    assert metadata_problems(meta(plans=free)) == []
    assert [p.path for p in metadata_problems(meta(plans=redistributable))] == [
        "plans[0].redistribution"
    ]
    assert [p.path for p in metadata_problems(meta(plans=plans * 2))] == ["plans[1].id"]
