"""Per-client request limits: one token per request (mesh.ratelimit.TokenBuckets, fed
the time by the caller)."""

from __future__ import annotations

import math

from mesh.ratelimit import TokenBuckets

__all__ = ["RateLimiter"]


class RateLimiter:
    """``rate`` requests per second with bursts up to ``burst``, per client key.

    At most ``max_clients`` buckets are kept (least recently used dropped), so a
    flood of spoofed or rotating addresses cannot grow memory without bound; a
    dropped client simply starts again with a full bucket.
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 65536) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._buckets = TokenBuckets(rate, burst, max_clients)

    def check(self, client: str, now: float) -> float:
        """Take one token: 0.0 if allowed, else the seconds to wait (for Retry-After)."""
        return self._buckets.wait(client, 1, now)

    def available(self, client: str, now: float) -> bool:
        """Whether ``check`` would allow one now (takes nothing): for decisions that
        need tokens from several limiters or none at all."""
        return self._buckets.available(client, 1, now)

    @staticmethod
    def retry_after_header(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
