"""Who a request comes from, and what registrations and prekey claims may cost.

All of it is in memory and fed ``now`` by the caller (no clock, no I/O): limits are a
defence against floods, not state worth keeping across a restart (a restart forgets
them, which only ever favours the client). docs/protocol.md, "Registration cost" and
"Prekey claims", gives the reasons for the numbers.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from bootstrap.ratelimit import RateLimiter

__all__ = [
    "ClaimBudget",
    "ForwardedError",
    "Network",
    "RegistrationQuota",
    "client_address",
    "network_of",
    "parse_trusted_proxies",
    "subscriber_of",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
HOUR = 3600.0


class ForwardedError(ValueError):
    """A trusted proxy sent a client address that is not an IP literal."""


def parse_trusted_proxies(items: Iterable[str]) -> tuple[Network, ...]:
    """``--trusted-proxy`` values: IP addresses or networks (ValueError otherwise)."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
             proxies: tuple[Network, ...]) -> bool:
    return any(address in net for net in proxies)


def client_address(peer: str, headers: Mapping[str, str], proxies: tuple[Network, ...]) -> str:
    """The client's IP address as text.

    ``peer`` is the socket's address. Only when it is a trusted proxy are the proxy's
    headers believed: ``X-Real-IP`` if set, else the right-most ``X-Forwarded-For``
    entry that is not itself a trusted proxy (entries further left were written by
    the client and prove nothing). Anyone else's headers are ignored, so a client
    cannot pick its own rate-limit bucket. A trusted proxy's malformed header raises
    ForwardedError; a request from the proxy without either header is the proxy's own.
    """
    try:
        address = _ip(peer)
    except ValueError:
        return peer  # not an IP socket (a Unix socket in tests): one bucket for all
    if not _trusted(address, proxies):
        return str(address)
    try:
        real = headers.get("X-Real-IP")
        if real is not None:
            return str(_ip(real))
        hops = [h for h in headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        for hop in reversed(hops):
            candidate = _ip(hop)
            if not _trusted(candidate, proxies):
                return str(candidate)
    except ValueError:
        raise ForwardedError("the proxy's client address header is not an IP address") \
            from None
    return str(address)


def subscriber_of(address: str) -> str:
    """What one subscriber holds: the IPv4 address, or the IPv6 /64 (a single home or
    phone gets a whole /64, so counting single IPv6 addresses would count nothing)."""
    try:
        ip = _ip(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def network_of(address: str) -> str:
    """The network a subscriber sits in: IPv4 /24, IPv6 /48."""
    try:
        ip = _ip(address)
    except ValueError:
        return address
    prefix = 48 if isinstance(ip, ipaddress.IPv6Address) else 24
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class _DecayingCount:
    """Counts per key that halve every ``half_life`` seconds (bounded LRU of keys)."""

    def __init__(self, half_life: float, max_keys: int) -> None:
        self.half_life = half_life
        self.max_keys = max_keys
        self._counts: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def get(self, key: str, now: float) -> float:
        value, stamp = self._counts.get(key, (0.0, now))
        return value * 2.0 ** (-max(0.0, now - stamp) / self.half_life)

    def add(self, key: str, now: float) -> None:
        value = self.get(key, now) + 1.0
        self._counts.pop(key, None)
        self._counts[key] = (value, now)
        if len(self._counts) > self.max_keys:
            self._counts.popitem(last=False)


@dataclass(frozen=True)
class _Tier:
    counts: _DecayingCount
    free: float
    key: Callable[[str], str]  # client address -> the key it is counted under


class RegistrationQuota:
    """How much proof of work a new identity from an address must bring.

    Registrations are counted per subscriber (IPv4 address, IPv6 /64) and per network
    (IPv4 /24, IPv6 /48), each count halving every hour. While both counts are under
    their free allowance the price is ``base_bits``; each doubling beyond it adds a bit
    (doubles the work), so a flooder's cost per identity grows with its own success
    while a neighbour behind the same address still gets through by paying more. Past
    ``max_extra_bits`` the answer is a refusal (None) until the counts decay.
    """

    def __init__(self, *, base_bits: int, per_subscriber: float, per_network: float,
                 max_extra_bits: int, half_life: float = HOUR, max_keys: int = 65536) -> None:
        if not 0 <= base_bits <= 64 or per_subscriber <= 0 or per_network <= 0:
            raise ValueError("bad registration quota settings")
        self.base_bits = base_bits
        self.max_extra_bits = max_extra_bits
        self.half_life = half_life
        self._tiers = (
            _Tier(_DecayingCount(half_life, max_keys), per_subscriber, subscriber_of),
            _Tier(_DecayingCount(half_life, max_keys), per_network, network_of),
        )

    def _extra(self, address: str, now: float) -> list[tuple[int, float]]:
        out = []
        for tier in self._tiers:
            count = tier.counts.get(tier.key(address), now)
            extra = 0 if count < tier.free else 1 + math.floor(math.log2(count / tier.free))
            out.append((extra, count / tier.free))
        return out

    def required_bits(self, address: str, now: float) -> int | None:
        """The proof-of-work difficulty for a registration now, or None: refused."""
        extra = max(e for e, _ in self._extra(address, now))
        return None if extra > self.max_extra_bits else self.base_bits + extra

    def retry_after(self, address: str, now: float) -> float:
        """Seconds until ``required_bits`` stops refusing."""
        worst = max(ratio for _, ratio in self._extra(address, now))
        return max(1.0, self.half_life * math.log2(worst / 2 ** self.max_extra_bits))

    def record(self, address: str, now: float) -> None:
        """Count a registration that was accepted (refused ones are never counted)."""
        for tier in self._tiers:
            tier.counts.add(tier.key(address), now)


class ClaimBudget:
    """Which bundle claims may spend a one-time prekey; the others get the last-resort
    prekey, which every session can start from, so a claim over budget still works.

    A claimer (a registered user: claims are signed) spends at most ``per_pair``
    one-time prekeys of a given target a day and ``per_claimer`` an hour over all
    targets; a target loses at most ``per_target`` an hour, whoever claims (each with
    bursts of the same size). The owner's node checks its count every 15 minutes and
    refills below 40, more than a quarter of the hourly target budget.
    """

    def __init__(self, *, per_claimer: int, per_target: int, per_pair: int) -> None:
        self._claimer = RateLimiter(per_claimer / HOUR, per_claimer)
        self._target = RateLimiter(per_target / HOUR, per_target)
        self._pair = RateLimiter(per_pair / (24 * HOUR), per_pair)

    def allows(self, claimer: str, target: str, now: float) -> bool:
        return (self._pair.available(f"{claimer}>{target}", now)
                and self._claimer.available(claimer, now)
                and self._target.available(target, now))

    def spend(self, claimer: str, target: str, now: float) -> None:
        """Charge a one-time prekey handed out (call only after ``allows``)."""
        self._pair.check(f"{claimer}>{target}", now)
        self._claimer.check(claimer, now)
        self._target.check(target, now)
