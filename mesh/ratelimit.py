"""Token buckets per key, sans-IO: the caller passes ``now`` (seconds, any clock that
does not run backwards for long), nothing here reads a clock or sleeps.

One implementation for every rate limit in Parley: the bootstrap's per-client request
limit, the DHT's per-source verification and reply-byte budgets, the relay's
reservation attempts, the sender-key budget per group member and the presence signals
per peer. A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a
new key starts full. At most ``max_keys`` buckets are kept, the least recently used
dropped first, so a flood of spoofed or rotating keys cannot grow memory without
bound; a dropped key simply starts again with a full bucket.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable

__all__ = ["TokenBuckets"]


class TokenBuckets:
    """``rate`` tokens per second up to ``burst``, per key; LRU-bounded to ``max_keys``."""

    def __init__(self, rate: float, burst: float, max_keys: int = 4096) -> None:
        if rate <= 0 or burst <= 0 or max_keys < 1:
            raise ValueError("rate and burst must be > 0 and max_keys >= 1")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, cost: float, now: float) -> bool:
        """Spend ``cost`` tokens if ``key`` has them (True); else spend nothing (False)."""
        return self.wait(key, cost, now) == 0.0

    def wait(self, key: Hashable, cost: float, now: float) -> float:
        """Spend ``cost`` tokens and return 0.0 if ``key`` has them; else spend nothing
        and return the seconds until it would (for a Retry-After)."""
        tokens = self._refilled(key, now)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        return (cost - tokens) / self.rate

    def available(self, key: Hashable, cost: float, now: float) -> bool:
        """Whether ``take`` would allow ``cost`` now (spends nothing): for decisions that
        need tokens from several limiters or none at all."""
        return self._refilled(key, now) >= cost

    def forget_full(self, now: float) -> None:
        """Drop the buckets that are full again by ``now`` (they would start full anyway)."""
        for key in [k for k, (tokens, at) in self._buckets.items()
                    if tokens + max(0.0, now - at) * self.rate >= self.burst]:
            del self._buckets[key]

    def retain(self, keys: Iterable[Hashable]) -> None:
        """Keep the buckets of ``keys`` only (e.g. the peers still linked)."""
        keep = set(keys)
        for key in [k for k in self._buckets if k not in keep]:
            del self._buckets[key]

    def _refilled(self, key: Hashable, now: float) -> float:
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return tokens
