"""mesh.ratelimit.TokenBuckets, the one token bucket every rate limit uses (fed `now`)."""

from __future__ import annotations

import pytest

from mesh.ratelimit import TokenBuckets


def test_a_key_starts_full_refills_at_the_rate_and_never_beyond_the_burst() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3.0)
    assert [buckets.take("a", 1, 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.wait("a", 1, 0.0) == pytest.approx(0.5)
    assert buckets.take("b", 3, 0.0)  # another key has its own bucket
    assert not buckets.take("a", 1, 0.25) and buckets.take("a", 1, 0.5)
    assert buckets.available("a", 3, 100.0) and not buckets.available("a", 3.5, 100.0)
    assert buckets.wait("a", 2, 100.0) == 0.0  # available() spent nothing
    assert buckets.wait("a", 3, 100.0) == pytest.approx(1.0)  # a refusal spends nothing


def test_costs_are_tokens_and_a_clock_step_back_refills_nothing() -> None:
    buckets = TokenBuckets(rate=1000.0, burst=4000.0)
    assert buckets.take("10.0.0.1", 3000, 5.0) and not buckets.take("10.0.0.1", 2000, 5.0)
    assert not buckets.take("10.0.0.1", 1001, 4.0)
    assert buckets.take("10.0.0.1", 1000, 4.0)


def test_memory_is_bounded_least_recently_used_first() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1.0, max_keys=3)
    for key in "abcd":
        buckets.take(key, 1, 0.0)
    assert len(buckets) == 3
    assert buckets.take("a", 1, 0.0)  # dropped, so it starts full again
    assert not buckets.take("d", 1, 0.0)


def test_full_buckets_and_unlisted_keys_can_be_forgotten() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2.0)
    for key in "abc":
        buckets.take(key, 1, 0.0)
    buckets.take("c", 1, 0.0)
    buckets.forget_full(1.0)  # a and b are full again at 1.0, c holds 1 of 2
    assert len(buckets) == 1 and not buckets.available("c", 2, 1.0)
    buckets.retain(["a"])
    assert len(buckets) == 0


def test_nonsense_configurations_are_refused() -> None:
    for rate, burst, keys in ((0, 1, 1), (1, 0, 1), (1, 1, 0), (-1, 1, 1)):
        with pytest.raises(ValueError):
            TokenBuckets(rate, burst, keys)
