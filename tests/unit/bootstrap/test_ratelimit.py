from __future__ import annotations

import pytest

from bootstrap.ratelimit import RateLimiter


def test_burst_then_steady_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.check("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.check("a", 0.0)
    assert wait == pytest.approx(0.5)
    assert RateLimiter.retry_after_header(wait) == "1"
    assert limiter.check("a", 0.5) == 0.0  # one token refilled
    assert limiter.check("a", 0.5) > 0


def test_clients_are_independent() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.check("a", 0.0) == 0.0
    assert limiter.check("a", 0.0) > 0
    assert limiter.check("b", 0.0) == 0.0


def test_bucket_never_exceeds_burst_after_idle() -> None:
    limiter = RateLimiter(rate=10.0, burst=2)
    limiter.check("a", 0.0)
    allowed = [limiter.check("a", 1000.0) == 0.0 for _ in range(5)]
    assert allowed == [True, True, False, False, False]


def test_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=100)
    for i in range(1000):
        limiter.check(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(limiter._buckets) == 100


def test_rejects_nonsense_configuration() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
