"""Limits on hostile or greedy clients without HTTP: the rate buckets' arithmetic, their
settings, and how JSON depth is measured (over HTTP: tests/integration)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.platform.limits import MAX_JSON_DEPTH, Gcra, RateLimits, too_deep_at
from exchange.platform.settings import Settings, SettingsError
from tests.kit.documents import nested


def test_a_burst_is_served_then_the_next_request_waits_one_interval():
    bucket = Gcra(rate=10, burst=5)
    assert [bucket.take("t", 100.0) for _ in range(5)] == [0.0] * 5
    wait = bucket.take("t", 100.0)
    assert wait == pytest.approx(0.1)
    assert bucket.take("t", 100.0 + wait) == 0.0  # refilled by exactly one request
    assert bucket.take("other", 100.0) == 0.0  # keys do not share a bucket


def test_idle_keys_are_forgotten_so_memory_follows_recent_clients_only():
    bucket = Gcra(rate=10, burst=5)
    for i in range(1000):
        bucket.take(f"k{i}", 0.0)
    bucket.sweep(0.05)
    assert len(bucket.arrivals) == 1000  # still owing at 0.05 s
    bucket.sweep(0.11)
    assert bucket.arrivals == {}


@given(
    rate=st.integers(1, 50),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 0.5, allow_nan=False), min_size=1, max_size=200),
)
def test_no_window_ever_serves_more_than_burst_plus_rate_times_its_length(rate, burst, gaps):
    bucket = Gcra(rate=rate, burst=burst)
    now, served = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.take("k", now) == 0.0:
            served.append(now)
    for i, start in enumerate(served):
        for j in range(i, len(served)):
            in_window = j - i + 1
            assert in_window <= burst + rate * (served[j] - start) + 1e-6


def test_a_refused_request_is_not_charged():
    bucket = Gcra(rate=1, burst=1)
    assert bucket.take("k", 0.0) == 0.0
    for _ in range(100):
        assert bucket.take("k", 0.5) == pytest.approx(0.5)
    assert bucket.take("k", 1.0) == 0.0


def test_failed_authentications_empty_the_addresss_bucket_for_every_token():
    now = [0.0]
    limits = RateLimits.configured(100, 100, anonymous_per_second=1)
    limits.clock = lambda: now[0]
    limits.failed_authentication("10.0.0.7")
    limits.failed_authentication("10.0.0.7")
    assert limits.admit("dxt_valid", "10.0.0.7") > 0
    assert limits.admit("dxt_valid", "10.0.0.8") == 0.0  # another address is not affected
    now[0] = 1.5
    assert limits.admit("dxt_valid", "10.0.0.7") == 0.0


def test_zero_turns_each_limit_off():
    limits = RateLimits.configured(0, 1, anonymous_per_second=0)
    assert not limits.enabled
    assert all(limits.admit(None, "a") == 0.0 for _ in range(10_000))


def test_rate_limit_settings_are_read_and_checked():
    settings = Settings.from_env(
        {
            "DATAEX_RATE_LIMIT_PER_SECOND": "0",
            "DATAEX_RATE_LIMIT_BURST": "7",
            "DATAEX_RATE_LIMIT_ANONYMOUS_PER_SECOND": "9",
        }
    )
    assert (
        settings.rate_limit_per_second,
        settings.rate_limit_burst,
        settings.rate_limit_anonymous_per_second,
    ) == (0, 7, 9)
    assert Settings.from_env(settings.to_env()) == settings
    with pytest.raises(SettingsError, match="DATAEX_RATE_LIMIT_PER_SECOND: must be between"):
        Settings.from_env({"DATAEX_RATE_LIMIT_PER_SECOND": "-1"})


def test_defaults_let_fifty_tokens_place_five_hundred_orders_a_second():
    defaults = Settings()
    assert defaults.rate_limit_per_second >= 10 * 10  # 500/s over 50 tokens is 10/s each
    assert defaults.rate_limit_burst >= defaults.rate_limit_per_second


def test_depth_is_measured_in_objects_and_arrays():
    assert too_deep_at(nested(MAX_JSON_DEPTH)) is None
    assert too_deep_at(nested(MAX_JSON_DEPTH + 1)) == ".".join(["a"] * MAX_JSON_DEPTH)
    assert too_deep_at(b"[" * 5000 + b"]" * 5000) == "$"  # past msgspec's own recursion limit
    assert too_deep_at(b'{"s": "' + b"[" * 500 + b'"}') is None  # brackets inside a string
    wide = b"[" + b",".join([b"[1]"] * 1000) + b"]"
    assert too_deep_at(wide) is None  # many brackets, little depth
    assert too_deep_at(b"[" * 100) is None  # malformed: left to the JSON decoder's message
