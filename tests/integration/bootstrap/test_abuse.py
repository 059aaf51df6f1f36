"""Issue 15, finding 3 against a real bootstrap on 127.0.0.1: registration floods, prekey
drains and clients behind proxies. Flooders and honest users come from different
loopback addresses (127.0.0.2, 127.0.0.3, ...), as the rate-limit test does."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bootstrap.api import BootstrapConfig
from bootstrap.server import BootstrapServer, start_bootstrap
from mesh.discovery import HEADER_POW, check_pow, sign_request
from mesh.encoding import b64e
from mesh.identity import LAST_RESORT_PREKEY_ID
from tests.integration.bootstrap.test_api import User, _registration, error_of, raw

# The real quotas and budgets; only the base price is cheap (8 bits, not 20).
REAL = BootstrapConfig(rate=10_000, burst=10_000, pow_bits=8)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[BootstrapServer]:
    server = start_bootstrap("127.0.0.1", 0, tmp_path / "b.db", REAL)
    try:
        yield server
    finally:
        await server.stop()


def rows(conn: sqlite3.Connection) -> tuple[int, int, int]:
    return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # type: ignore[return-value]
                 for t in ("users", "prekeys", "nonces"))


def exact_proof(key: bytes, timestamp: int, bits: int) -> bytes:
    """A proof with exactly ``bits`` zero bits (one bit short of ``bits + 1``)."""
    counter = 0
    while True:
        nonce = counter.to_bytes(8, "big")
        if check_pow(key, timestamp, nonce, bits) and not check_pow(key, timestamp, nonce,
                                                                     bits + 1):
            return nonce
        counter += 1


async def register_with(url: str, user: User, bits: int | None, source: str):
    """POST /v1/users from ``source`` with a proof of exactly ``bits`` (None: no proof)."""
    body = _registration(user)
    now = time.time()
    headers = sign_request(user.identity, "POST", "/v1/users", body, now)
    if bits is not None:
        headers[HEADER_POW] = b64e(exact_proof(user.identity.public, int(now), bits))
    return await raw(url, "POST", "/v1/users", body, headers=headers, source=source)


async def test_registration_flood_is_priced_then_refused(server) -> None:
    """Before: 391 identities x 200 prekeys from one address in 20 s. Now the price
    doubles with each doubling of registrations from the address and its /24, and
    the 65th within the hour is refused; a neighbour pays more but gets through."""
    url, conn = server.url, server.ctx.conn
    start = time.time()
    server.ctx.clock = lambda: start  # the counts decay with time: keep it still
    prekeys = User(url, 200).prekeys  # the flooder reuses one set (the server cannot tell)

    def flooder() -> User:
        user = User(url, 0)
        user.prekeys = prekeys
        return user

    codes, prices = [], []
    for _ in range(70):
        price = server.ctx.quota.required_bits("127.0.0.2", start)
        prices.append(price)
        response = await register_with(url, flooder(), price or 12, "127.0.0.2")
        codes.append(response.code)
    assert codes[:64] == [201] * 64 and prices[:5] == [8, 8, 8, 8, 9]
    assert prices[63] == 12
    refused = await register_with(url, flooder(), 12, "127.0.0.2")
    assert error_of(refused) == (429, "registration_quota")
    assert int(refused.headers["Retry-After"]) >= 1
    assert codes[64:] == [429] * 6
    assert rows(conn)[:2] == (64, 64 * 200)  # refused registrations stored nothing

    # A neighbour in the same /24 pays 3 more bits (8x the work) and is served;
    # someone on another network pays the base price.
    assert server.ctx.quota.required_bits("127.0.0.3", start) == 11
    neighbour = User(url, 5)
    assert error_of(await register_with(url, neighbour, 10, "127.0.0.3")) == \
        (403, "pow_required")
    assert (await register_with(url, neighbour, 11, "127.0.0.3")).code == 201
    assert (await register_with(url, User(url, 5), 8, "127.1.0.3")).code == 201


async def test_registration_without_a_valid_proof_stores_nothing(server) -> None:
    url, conn = server.url, server.ctx.conn
    user, other = User(url), User(url)
    before = rows(conn)
    missing = await register_with(url, user, None, "127.0.0.4")
    assert error_of(missing) == (403, "pow_required")
    assert missing.headers["Parley-Pow-Bits"] == "8"
    # A proof made for another key (or another timestamp) buys nothing.
    body, now = _registration(user), time.time()
    headers = sign_request(user.identity, "POST", "/v1/users", body, now)
    for key, stamp in ((other.identity.public, int(now)), (user.identity.public, int(now) - 1)):
        headers[HEADER_POW] = b64e(exact_proof(key, stamp, 12))
        response = await raw(url, "POST", "/v1/users", body, headers=headers, source="127.0.0.4")
        assert error_of(response) == (403, "pow_required")
    headers[HEADER_POW] = "not base64"
    assert error_of(await raw(url, "POST", "/v1/users", body, headers=headers)) == \
        (403, "pow_required")
    assert rows(conn) == before  # no user, no prekeys, not even a nonce
    # The real client pays the price by itself; re-registering the same key is free.
    assert await user.client.register(user.record, user.prekeys) == 5
    user.record = user.next_record()
    assert (await register_with(url, user, None, "127.0.0.4")).code == 200


async def test_one_identity_cannot_drain_a_users_prekeys(server) -> None:
    """Before: one fresh identity claimed all 100 one-time prekeys in 6.7 s. Now it gets
    one a day; and however many identities claim, the target loses 30 an hour at most.
    Over budget, claims still work: they get the last-resort prekey."""
    url = server.url
    target, drainer = User(url, 100), User(url, 0)
    await target.register()
    await drainer.register()
    ids = [(await drainer.client.claim_bundle(target.id)).prekey.id for _ in range(100)]
    assert ids[0] == 1 and ids[1:] == [LAST_RESORT_PREKEY_ID] * 99
    sybils = [User(url, 0) for _ in range(40)]
    for sybil in sybils:
        await sybil.register()
    ids = [(await s.client.claim_bundle(target.id)).prekey.id for s in sybils]
    assert ids[:29] == list(range(2, 31)) and ids[29:] == [LAST_RESORT_PREKEY_ID] * 11

    # The owner hears its count on every signed reply, not only from its hourly update.
    heard: list[int] = []
    target.client.on_prekeys_left = heard.append
    await target.client.claim_bundle(drainer.id)
    assert await target.client.update() == 70
    assert heard == [70, 70, 70]  # claim header, update header, update body


async def test_clients_behind_a_trusted_proxy_get_their_own_buckets(tmp_path) -> None:
    """Before: behind a reverse proxy every client shared the proxy's bucket. Now the
    proxy (127.0.0.5) names the client; anyone else's forwarding headers are ignored."""
    config = BootstrapConfig(rate=0.01, burst=2, pow_bits=8, trusted_proxies=("127.0.0.5",))
    server = start_bootstrap("127.0.0.1", 0, tmp_path / "b.db", config)
    url = server.url
    try:
        async def codes(source: str, headers_list: list[dict[str, str]]) -> list[int]:
            return [(await raw(url, "GET", "/v1/health", headers=h, source=source)).code
                    for h in headers_list]

        alice = {"X-Forwarded-For": "198.51.100.1"}
        bob = {"X-Real-IP": "198.51.100.2"}
        assert await codes("127.0.0.5", [alice] * 3) == [200, 200, 429]
        assert await codes("127.0.0.5", [bob] * 2) == [200, 200]
        # A client that is not the proxy cannot pick fresh buckets with the header.
        spoofed = [{"X-Forwarded-For": f"203.0.113.{i}"} for i in range(3)]
        assert await codes("127.0.0.6", spoofed) == [200, 200, 429]
        bad = await raw(url, "GET", "/v1/health", headers={"X-Real-IP": "nobody"},
                        source="127.0.0.5")
        assert error_of(bad) == (400, "bad_forwarded_for")
        # Registration quotas count the forwarded client too.
        user = User(url, 1)
        body, now = _registration(user), time.time()
        headers = sign_request(user.identity, "POST", "/v1/users", body, now)
        headers.update({HEADER_POW: b64e(exact_proof(user.identity.public, int(now), 8)),
                        "X-Real-IP": "198.51.100.77"})
        assert (await raw(url, "POST", "/v1/users", body, headers=headers,
                          source="127.0.0.5")).code == 201
        assert server.ctx.quota.required_bits("198.51.100.77", time.time()) == 8
    finally:
        await server.stop()


async def test_a_neighbours_flood_does_not_throttle_a_signed_user(tmp_path) -> None:
    """Before: one bucket per address, so a flooder locked out everyone behind the same
    NAT. Now each signer has its own bucket at the address, and the address as a whole
    may carry ten clients' worth; the anonymous flood still hits its own limit."""
    server = start_bootstrap("127.0.0.1", 0, tmp_path / "b.db",
                             BootstrapConfig(rate=0.01, burst=5, pow_bits=8))
    url = server.url
    try:
        honest = User(url, 1)
        assert (await register_with(url, honest, 8, "127.0.0.2")).code == 201
        flood = [(await raw(url, "GET", "/v1/health", source="127.0.0.2")).code
                 for _ in range(10)]
        assert flood.count(429) >= 5
        path = f"/v1/users/{honest.id}"
        body = json.dumps({"one_time_prekeys": []}).encode()
        response = await raw(url, "PUT", path, body, identity=honest.identity,
                             source="127.0.0.2")
        assert response.code == 200
        # A flood of signed requests naming fresh ids is capped by the address's total.
        codes = []
        for _ in range(60):
            response = await raw(url, "PUT", path, body, identity=User(url, 0).identity,
                                 source="127.0.0.2")
            codes.append(response.code)
        assert codes.count(429) >= 10
    finally:
        await server.stop()
