"""Unified social credit codes: the reference vectors and the checksum for all inputs."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.identity.uscc import (
    ALPHABET,
    UsccError,
    check_character,
    normalise_uscc,
    synthetic_uscc,
)
from tests.kit.api import VALID_USCC


@pytest.mark.parametrize("code", VALID_USCC)
def test_reference_valid_codes_pass(code):
    assert normalise_uscc(code) == code


@pytest.mark.parametrize(
    ("code", "rule", "fragment"),
    [
        ("91350100M000100Y4Z", "check", "expected 3, got Z"),
        ("914403001922038217", "check", "expected 6, got 7"),
        ("91440300192203821", "length", "got 17"),
        ("9144030019220382166", "length", "got 19"),
        ("", "length", "got 0"),
        ("91440300192203I216", "alphabet", "'I' at position 15"),
        ("9144030019220O8216", "alphabet", "'O'"),
        ("9S4403001922038216", "alphabet", "'S' at position 2"),
        ("91V403001922038216", "alphabet", "'V'"),
        ("91440Z001922038216", "alphabet", "'Z'"),
        ("9144A3001922038216", "division", "positions 3-8"),
    ],
)
def test_reference_invalid_codes_fail_naming_the_rule(code, rule, fragment):
    with pytest.raises(UsccError) as caught:
        normalise_uscc(code)
    assert caught.value.rule == rule
    assert fragment in caught.value.message


def test_lower_case_and_spaces_are_normalised():
    assert normalise_uscc("  9144030071526726xg ") == "9144030071526726XG"


def test_weights_are_powers_of_three_mod_31():
    from exchange.identity.uscc import WEIGHTS

    assert WEIGHTS == (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


first17 = st.tuples(
    st.text(ALPHABET, min_size=2, max_size=2),
    st.text("0123456789", min_size=6, max_size=6),
    st.text(ALPHABET, min_size=9, max_size=9),
).map("".join)


@given(first17)
def test_the_computed_check_character_always_validates(prefix):
    assert normalise_uscc(prefix + check_character(prefix)) == prefix + check_character(prefix)


@given(first17, st.sampled_from(ALPHABET))
def test_any_other_check_character_is_refused(prefix, last):
    if last == check_character(prefix):
        return
    with pytest.raises(UsccError) as caught:
        normalise_uscc(prefix + last)
    assert caught.value.rule == "check"


@given(first17, st.integers(0, 16), st.sampled_from(ALPHABET))
def test_a_single_substitution_is_detected(prefix, position, replacement):
    code = prefix + check_character(prefix)
    changed = code[:position] + replacement + code[position + 1 :]
    if changed == code or (2 <= position < 8 and not replacement.isdigit()):
        return
    with pytest.raises(UsccError):
        normalise_uscc(changed)


@given(st.integers(min_value=0, max_value=2**128), st.sampled_from(["91310000", "91330100"]))
def test_synthetic_codes_for_seed_data_are_valid(n, prefix):
    code = synthetic_uscc(n, prefix)
    assert normalise_uscc(code) == code and code.startswith(prefix)
