"""Per-client token buckets, fed the time by the caller (no clock inside)."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass
class _Bucket:
    tokens: float
    stamp: float


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
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, client: str, now: float) -> float:
        """Take one token: 0.0 if allowed, else the seconds to wait (for Retry-After)."""
        bucket = self._refilled(client, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def available(self, client: str, now: float) -> bool:
        """Whether ``check`` would allow one now (takes nothing): for decisions that
        need tokens from several limiters or none at all."""
        return self._refilled(client, now).tokens >= 1

    def _refilled(self, client: str, now: float) -> _Bucket:
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)
        bucket.stamp = now
        self._buckets[client] = bucket
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return bucket

    @staticmethod
    def retry_after_header(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
