"""Settlement arithmetic: the fee, rounded half up with a minimum."""

from __future__ import annotations

import pytest

from contracts.orders.fees import FeeRule, fee_fen


@pytest.mark.parametrize(
    ("price", "bps", "minimum", "fee"),
    [(0, 100, 100, 0), (1, 100, 0, 0), (50, 100, 0, 1), (149, 100, 0, 1), (150, 100, 0, 2),
     (1_000_000, 100, 100, 10_000), (1_000, 100, 100, 100), (10**12, 10_000, 0, 10**12)],
)  # fmt: skip
def test_fee_rounding_is_half_up_with_a_minimum(price, bps, minimum, fee):
    assert fee_fen(price, FeeRule(bps, minimum, "test")) == fee
