"""Client addresses behind proxies, registration prices and claim budgets, on a fake clock."""

from __future__ import annotations

import pytest

from bootstrap.limits import (
    ClaimBudget,
    ForwardedError,
    RegistrationQuota,
    client_address,
    network_of,
    parse_trusted_proxies,
    subscriber_of,
)
from mesh.discovery import check_pow, solve_pow

PROXY = parse_trusted_proxies(["10.0.0.1", "192.168.0.0/16"])


@pytest.mark.parametrize(("peer", "headers", "expected"), [
    # Nobody but a trusted proxy may name the client.
    ("203.0.113.9", {"X-Forwarded-For": "198.51.100.1"}, "203.0.113.9"),
    ("203.0.113.9", {"X-Real-IP": "198.51.100.1"}, "203.0.113.9"),
    # The proxy's X-Real-IP, else the right-most hop that is not a trusted proxy.
    ("10.0.0.1", {"X-Real-IP": "198.51.100.1"}, "198.51.100.1"),
    ("10.0.0.1", {"X-Forwarded-For": "6.6.6.6, 198.51.100.1"}, "198.51.100.1"),
    ("10.0.0.1", {"X-Forwarded-For": "198.51.100.1, 192.168.4.4"}, "198.51.100.1"),
    ("10.0.0.1", {}, "10.0.0.1"),
    ("::ffff:10.0.0.1", {"X-Real-IP": "2001:db8::1"}, "2001:db8::1"),
    ("::ffff:203.0.113.9", {}, "203.0.113.9"),
])
def test_client_address(peer, headers, expected) -> None:
    assert client_address(peer, headers, PROXY) == expected


@pytest.mark.parametrize("headers", [{"X-Real-IP": "evil.example"},
                                     {"X-Forwarded-For": "1.2.3.4, not-an-ip"},
                                     {"X-Real-IP": ""}])
def test_a_trusted_proxys_malformed_header_is_an_error(headers) -> None:
    with pytest.raises(ForwardedError):
        client_address("10.0.0.1", headers, PROXY)
    assert client_address("203.0.113.9", headers, PROXY) == "203.0.113.9"


def test_bad_trusted_proxy_setting() -> None:
    with pytest.raises(ValueError):
        parse_trusted_proxies(["proxy.example"])


def test_subscribers_and_networks() -> None:
    assert subscriber_of("198.51.100.7") == "198.51.100.7"
    assert network_of("198.51.100.7") == "198.51.100.0/24"
    assert subscriber_of("2001:db8:1:2:3::9") == "2001:db8:1:2::/64"
    assert network_of("2001:db8:1:2:3::9") == "2001:db8:1::/48"


def quota() -> RegistrationQuota:
    return RegistrationQuota(base_bits=20, per_subscriber=4, per_network=16, max_extra_bits=4,
                             half_life=3600)


def test_price_doubles_with_each_doubling_then_refuses() -> None:
    q = quota()
    prices = []
    for _ in range(70):
        prices.append(q.required_bits("198.51.100.7", 0.0))
        if prices[-1] is not None:
            q.record("198.51.100.7", 0.0)
    assert prices[:4] == [20] * 4
    assert prices[4:8] == [21] * 4 and prices[8:16] == [22] * 8
    assert prices[16:32] == [23] * 16 and prices[32:64] == [24] * 32
    assert prices[64:] == [None] * 6      # 64 = 4 free x 2^4: refused
    assert q.retry_after("198.51.100.7", 0.0) == 1.0
    # Counts halve every hour: 16 two hours later (23 bits), 1 after six (the base).
    assert q.required_bits("198.51.100.7", 7200.0) == 23
    assert q.required_bits("198.51.100.7", 6 * 3600.0) == 20


def test_a_neighbour_pays_more_but_gets_through() -> None:
    q = quota()
    for i in range(64):
        q.record(f"198.51.100.{i % 2}", 0.0)  # two flooding addresses in one /24
    assert q.required_bits("198.51.100.0", 0.0) == 24    # 32 each: 8 x 4 -> 4 bits
    assert q.required_bits("198.51.100.9", 0.0) == 23   # /24: 64 = 16 x 4 -> 3 bits
    assert q.required_bits("203.0.113.9", 0.0) == 20    # another network: unaffected


def test_ipv6_counts_the_64_not_the_address() -> None:
    q = quota()
    for i in range(64):
        q.record(f"2001:db8:0:1::{i + 1:x}", 0.0)
    assert q.required_bits("2001:db8:0:1::ffff", 0.0) is None
    assert q.required_bits("2001:db8:0:2::1", 0.0) == 23


def test_claim_budget_per_pair_claimer_and_target() -> None:
    budget = ClaimBudget(per_claimer=3, per_target=2, per_pair=1)
    assert budget.allows("c1", "t", 0.0)
    budget.spend("c1", "t", 0.0)
    assert not budget.allows("c1", "t", 0.0)          # once per pair a day
    assert budget.allows("c2", "t", 0.0)
    budget.spend("c2", "t", 0.0)
    assert not budget.allows("c3", "t", 0.0)          # the target's hourly budget
    assert budget.allows("c3", "t", 1800.0)           # half an hour refills one
    budget.spend("c1", "u", 0.0)
    budget.spend("c1", "v", 0.0)
    assert not budget.allows("c1", "w", 0.0)          # the claimer's hourly budget
    assert not budget.allows("c1", "t", 86399.0) and budget.allows("c1", "t", 86401.0)


def test_proof_of_work_binds_key_and_timestamp() -> None:
    key, other = b"\x05" + b"k" * 32, b"\x05" + b"o" * 32
    nonce = solve_pow(key, 1_800_000_000, 12)
    assert check_pow(key, 1_800_000_000, nonce, 12)
    assert check_pow(key, 1_800_000_000, nonce, 0)
    found = [check_pow(other, 1_800_000_000, nonce, 12), check_pow(key, 1_800_000_001, nonce, 12)]
    assert found == [False, False]  # 1 in 4096 each could pass by chance: fixed inputs
    assert not check_pow(key, 1_800_000_000, b"", 0)
    assert not check_pow(key, 1_800_000_000, b"x" * 17, 0)
