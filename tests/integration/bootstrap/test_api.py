"""The discovery API over real HTTP on 127.0.0.1, through the real client where possible."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from bootstrap.api import BootstrapConfig
from bootstrap.server import start_bootstrap
from mesh.discovery import HEADER_POW, Bundle, DiscoveryClient, sign_request, solve_pow
from mesh.encoding import b64e
from mesh.errors import DiscoveryRefused, DiscoveryUnavailable, RecordError
from mesh.identity import (
    LAST_RESORT_PREKEY_ID,
    KeyPair,
    PreKey,
    Record,
    SignedPreKey,
    generate_prekeys,
)


class User:
    """A registered-or-not user with its keys, record and a client."""

    def __init__(self, url: str, n_prekeys: int = 5) -> None:
        self.identity = KeyPair.generate()
        self.url = url
        spk = KeyPair.generate()
        self.signed_prekey = SignedPreKey(1, spk.public, self.identity.sign(spk.public))
        self.last_resort = PreKey(LAST_RESORT_PREKEY_ID, KeyPair.generate().public)
        self.prekeys = [p for p, _ in generate_prekeys(1, n_prekeys)]
        self.seq = 0
        self.record = self.next_record()
        self.client = DiscoveryClient(url, self.identity)

    @property
    def id(self) -> str:
        return self.identity.user_id

    def next_record(self, endpoints: tuple[str, ...] = ("ws://127.0.0.1:1/mesh",)) -> Record:
        self.seq += 1
        return Record.create(self.identity, signed_prekey=self.signed_prekey,
                             last_resort_prekey=self.last_resort, endpoints=endpoints,
                             seq=self.seq, now=time.time())

    async def register(self) -> int:
        return await self.client.register(self.record, self.prekeys)


async def raw(url: str, method: str, path: str, body: bytes | None = None, *,
              identity: KeyPair | None = None, headers: dict[str, str] | None = None,
              sign_path: str | None = None, sign_body: bytes | None = None,
              now: float | None = None, source: str | None = None) -> HTTPResponse:
    """Send a request as-is (optionally signed, optionally signed over other bytes).

    A signed registration carries a proof of work of 12 bits: the fixture's 8, plus the
    4 extra bits the most crowded address can be asked for.
    """
    all_headers: dict[str, str] = {}
    if identity is not None:
        now = time.time() if now is None else now
        all_headers.update(sign_request(identity, method, sign_path or path,
                                        body if sign_body is None else sign_body, now))
        if (method, path) == ("POST", "/v1/users"):
            all_headers[HEADER_POW] = b64e(solve_pow(identity.public, int(now), 12))
    all_headers.update(headers or {})
    request = HTTPRequest(url + path, method=method, body=body, headers=all_headers,
                          allow_nonstandard_methods=True, network_interface=source)
    return await AsyncHTTPClient().fetch(request, raise_error=False)


def error_of(response: HTTPResponse) -> tuple[int, str]:
    obj = json.loads(response.body)
    assert set(obj) == {"error", "message"} and obj["message"]
    return response.code, obj["error"]


async def user_count(url: str, user: User) -> int:
    response = await raw(url, "GET", f"/v1/users/{user.id}")
    return response.code


# Happy paths


async def test_health_and_openapi(bootstrap_server) -> None:
    client = DiscoveryClient(bootstrap_server.url, KeyPair.generate())
    assert await client.health() == {"status": "ok", "api": "v1", "dht": None}
    doc = json.loads((await raw(bootstrap_server.url, "GET", "/v1/openapi.json")).body)
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/v1/health", "/v1/openapi.json", "/v1/users",
                                 "/v1/users/{user_id}", "/v1/users/{user_id}/bundle",
                                 "/v1/observed", "/v1/dialback"}


async def test_register_lookup_update_and_claim(bootstrap_server) -> None:
    url = bootstrap_server.url
    alice, bob = User(url, 3), User(url)
    assert await alice.register() == 3
    assert await bob.register() == 5
    assert await bob.client.lookup(alice.id) == alice.record

    newer = alice.next_record(("ws://10.1.2.3:7000/mesh",))
    extra = [p for p, _ in generate_prekeys(100, 2)]
    assert await alice.client.update(newer, extra) == 5
    assert (await bob.client.lookup(alice.id)).endpoints == ("ws://10.1.2.3:7000/mesh",)

    claimed = [await bob.client.claim_bundle(alice.id) for _ in range(5)]
    assert sorted(b.prekey.id for b in claimed) == [1, 2, 3, 100, 101]
    assert all(b.record == newer for b in claimed)
    # Exhausted: the last-resort prekey, never consumed, every time.
    for _ in range(2):
        bundle = await bob.client.claim_bundle(alice.id)
        assert bundle == Bundle(newer, alice.last_resort)
    assert await alice.client.update(one_time_prekeys=[]) == 0


async def test_reregistration_with_same_key_is_an_update(bootstrap_server) -> None:
    alice = User(bootstrap_server.url, 2)
    await alice.register()
    alice.record = alice.next_record()
    assert await alice.client.register(alice.record, []) == 2
    with pytest.raises(DiscoveryRefused) as info:  # same seq again: stale
        await alice.client.register(alice.record, [])
    assert (info.value.status, info.value.reason) == (409, "stale_seq")


async def test_concurrent_claims_never_hand_out_a_prekey_twice(bootstrap_server) -> None:
    url = bootstrap_server.url
    target = User(url, 30)
    await target.register()
    claimers = [User(url, 0) for _ in range(50)]
    await asyncio.gather(*(c.register() for c in claimers))
    bundles = await asyncio.gather(*(c.client.claim_bundle(target.id) for c in claimers))
    ids = [b.prekey.id for b in bundles]
    one_time = [i for i in ids if i != LAST_RESORT_PREKEY_ID]
    assert sorted(one_time) == list(range(1, 31))
    assert ids.count(LAST_RESORT_PREKEY_ID) == 20


async def test_restart_on_same_db_keeps_everything(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    server = start_bootstrap("127.0.0.1", 0, db, BootstrapConfig(pow_bits=8))
    alice, bob = User(server.url, 2), User(server.url, 0)
    await alice.register()
    await bob.register()
    await bob.client.claim_bundle(alice.id)
    await server.stop()

    server = start_bootstrap("127.0.0.1", 0, db)
    try:
        bob.client = DiscoveryClient(server.url, bob.identity)
        assert await bob.client.lookup(alice.id) == alice.record
        assert (await bob.client.claim_bundle(alice.id)).prekey.id == 2
        assert (await bob.client.claim_bundle(alice.id)).prekey.id == LAST_RESORT_PREKEY_ID
    finally:
        await server.stop()


# Bad input: each is refused with a clear 4xx and stores nothing


async def test_id_bound_to_another_key_is_refused(bootstrap_server) -> None:
    """Forge a registration whose id field is the victim's (needs a hash collision in
    reality): the server answers 409 and keeps the victim's record."""
    url = bootstrap_server.url
    victim, attacker = User(url, 0), User(url)
    await victim.register()
    conn = bootstrap_server.ctx.conn
    # Simulate the collision: the attacker's id already bound to the victim's key.
    conn.execute("UPDATE users SET id = ? WHERE id = ?", (attacker.id, victim.id))
    with pytest.raises(DiscoveryRefused) as info:
        await attacker.register()
    assert (info.value.status, info.value.reason) == (409, "id_taken")
    row = conn.execute("SELECT identity_key FROM users WHERE id = ?", (attacker.id,)).fetchone()
    assert row[0] == victim.identity.public


BAD_BODIES = [
    (b"{not json", "malformed_json"),
    (b"[]", "bad_request"),
    (b'{"record": 1, "record": 2}', "malformed_json"),
    (b'{"record": NaN, "one_time_prekeys": []}', "malformed_json"),
    (b'{"one_time_prekeys": []}', "bad_request"),
    (b'{"record": {}, "one_time_prekeys": [], "x": 1}', "bad_request"),
    (b'{"record": "text", "one_time_prekeys": []}', "bad_record"),
]


@pytest.mark.parametrize(("body", "code"), BAD_BODIES)
async def test_malformed_registration_bodies(bootstrap_server, body, code) -> None:
    user = User(bootstrap_server.url)
    response = await raw(bootstrap_server.url, "POST", "/v1/users", body,
                         identity=user.identity)
    assert error_of(response) == (400, code)
    assert await user_count(bootstrap_server.url, user) == 404


def _registration(user: User, **changes) -> bytes:
    obj = {"record": user.record.to_json(),
           "one_time_prekeys": [p.to_json() for p in user.prekeys]}
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(("mutate", "status", "code"), [
    (lambda r: r.update(seq="1"), 400, "bad_record"),
    (lambda r: r.update(endpoints=[5]), 400, "bad_record"),
    (lambda r: r.update(seq=r["seq"] + 1), 400, "bad_signature"),
    (lambda r: r.update(id="000000000000001"), 400, "id_mismatch"),
])
async def test_bad_records_are_refused(bootstrap_server, mutate, status, code) -> None:
    user = User(bootstrap_server.url)
    record = user.record.to_json()
    mutate(record)
    response = await raw(bootstrap_server.url, "POST", "/v1/users",
                         _registration(user, record=record), identity=user.identity)
    assert error_of(response) == (status, code)
    assert await user_count(bootstrap_server.url, user) == 404


@pytest.mark.parametrize(("prekeys", "code"), [
    ([{"id": 0, "public_key": "AA=="}], "bad_prekey"),
    ([{"id": 1, "public_key": "BQ=="}], "bad_prekey"),
    ([{"id": "1"}], "bad_prekey"),
    ("many", "bad_request"),
    ([{"id": i, "public_key": "x"} for i in range(1, 202)], "too_many_prekeys"),
])
async def test_bad_prekeys_are_refused(bootstrap_server, prekeys, code) -> None:
    user = User(bootstrap_server.url)
    response = await raw(bootstrap_server.url, "POST", "/v1/users",
                         _registration(user, one_time_prekeys=prekeys), identity=user.identity)
    assert error_of(response) == (400, code)
    assert await user_count(bootstrap_server.url, user) == 404


async def test_duplicate_prekey_ids_are_refused(bootstrap_server) -> None:
    user = User(bootstrap_server.url)
    dup = [user.prekeys[0].to_json()] * 2
    response = await raw(bootstrap_server.url, "POST", "/v1/users",
                         _registration(user, one_time_prekeys=dup), identity=user.identity)
    assert error_of(response) == (400, "bad_prekey")


@pytest.mark.parametrize("attack", ["unsigned", "bad_signature", "other_key", "skewed",
                                    "future", "wrong_path", "wrong_body", "bad_header"])
async def test_signature_attacks_on_registration(bootstrap_server, attack) -> None:
    url = bootstrap_server.url
    user, other = User(url), User(url)
    body = _registration(user)
    kwargs: dict = {"identity": user.identity}
    if attack == "unsigned":
        kwargs = {}
    elif attack == "other_key":
        kwargs = {"identity": other.identity}
    elif attack == "skewed":
        kwargs["now"] = time.time() - 301
    elif attack == "future":
        kwargs["now"] = time.time() + 400
    elif attack == "wrong_path":
        kwargs["sign_path"] = "/v1/users/x"
    elif attack == "wrong_body":
        kwargs["sign_body"] = body + b" "
    elif attack == "bad_header":
        kwargs["headers"] = {"Parley-Signature": "not base64!"}
    elif attack == "bad_signature":
        kwargs["headers"] = {"Parley-Signature": b64e(user.identity.sign(b"other bytes"))}
    response = await raw(url, "POST", "/v1/users", body, **kwargs)
    expected = {"unsigned": "unauthenticated", "bad_header": "unauthenticated",
                "skewed": "stale_request", "future": "stale_request",
                "other_key": "signer_mismatch"}.get(attack,
                                                                          "bad_signature")
    assert error_of(response) == (401, expected)
    assert await user_count(url, user) == 404


async def test_signature_by_different_key_is_refused(bootstrap_server) -> None:
    """Signed headers naming the right id, but signed with another key."""
    url = bootstrap_server.url
    user, other = User(url), User(url)
    body = _registration(user)
    now = time.time()
    headers = sign_request(other.identity, "POST", "/v1/users", body, now)
    headers["Parley-Id"] = user.id
    headers[HEADER_POW] = b64e(solve_pow(user.identity.public, int(now), 12))
    response = await raw(url, "POST", "/v1/users", body, headers=headers)
    assert error_of(response) == (401, "bad_signature")
    assert await user_count(url, user) == 404


async def test_replayed_request_is_refused(bootstrap_server) -> None:
    url = bootstrap_server.url
    user = User(url)
    await user.register()
    newer = user.next_record()
    body = json.dumps({"record": newer.to_json()}).encode()
    path = f"/v1/users/{user.id}"
    headers = sign_request(user.identity, "PUT", path, body, time.time())
    first = await raw(url, "PUT", path, body, headers=headers)
    assert first.code == 200
    # Replay it after a later update: it must not roll the record back, nor pass.
    newest = user.next_record(("ws://127.0.0.1:2/mesh",))
    await user.client.update(newest)
    replay = await raw(url, "PUT", path, body, headers=headers)
    assert error_of(replay) == (401, "replayed_request")
    assert await user.client.lookup(user.id) == newest


async def test_stale_seq_is_refused(bootstrap_server) -> None:
    user = User(bootstrap_server.url)
    await user.register()
    old = user.record
    newer = user.next_record()
    await user.client.update(newer)
    with pytest.raises(DiscoveryRefused) as info:
        await user.client.update(old)
    assert (info.value.status, info.value.reason) == (409, "stale_seq")
    assert await user.client.lookup(user.id) == newer


async def test_update_by_another_user_is_refused(bootstrap_server) -> None:
    url = bootstrap_server.url
    alice, mallory = User(url), User(url)
    await alice.register()
    await mallory.register()
    path = f"/v1/users/{alice.id}"
    body = json.dumps({"one_time_prekeys": []}).encode()
    response = await raw(url, "PUT", path, body, identity=mallory.identity)
    assert response.code == 401  # verified against alice's key: mallory's signature fails
    record = alice.next_record(("ws://6.6.6.6:1/mesh",))
    body = json.dumps({"record": record.to_json()}).encode()
    response = await raw(url, "PUT", path, body, identity=mallory.identity)
    assert response.code == 401
    assert (await alice.client.lookup(alice.id)).endpoints == alice.record.endpoints


async def test_update_of_unknown_user(bootstrap_server) -> None:
    user = User(bootstrap_server.url)
    with pytest.raises(DiscoveryRefused) as info:
        await user.client.update(one_time_prekeys=user.prekeys)
    assert (info.value.status, info.value.reason) == (404, "unknown_user")


@pytest.mark.parametrize("raw_id", ["123", "abcdefghijklmno", "1234567890123456",
                                    "12345678901234%20", "-12345678901234"])
async def test_bad_ids_in_paths(bootstrap_server, raw_id) -> None:
    user = User(bootstrap_server.url)
    await user.register()
    for method, suffix, body in [("GET", "", None), ("PUT", "", b"{}"),
                                 ("POST", "/bundle", b"")]:
        response = await raw(bootstrap_server.url, method, f"/v1/users/{raw_id}{suffix}",
                             body, identity=user.identity if body is not None else None)
        assert error_of(response) == (400, "bad_user_id")


async def test_claiming_unknown_users_and_unsigned_claims(bootstrap_server) -> None:
    url = bootstrap_server.url
    alice, bob = User(url, 1), User(url)
    await alice.register()
    with pytest.raises(DiscoveryRefused) as info:  # bob is not registered yet
        await bob.client.claim_bundle(alice.id)
    assert (info.value.status, info.value.reason) == (401, "unknown_signer")
    await bob.register()
    with pytest.raises(DiscoveryRefused) as info:
        await bob.client.claim_bundle(User(url).id)
    assert (info.value.status, info.value.reason) == (404, "unknown_user")
    response = await raw(url, "POST", f"/v1/users/{alice.id}/bundle", b"")
    assert error_of(response) == (401, "unauthenticated")
    # None of that consumed alice's only prekey.
    assert (await bob.client.claim_bundle(alice.id)).prekey.id == 1


async def test_oversized_body(bootstrap_server) -> None:
    user = User(bootstrap_server.url)
    body = b'{"pad":"' + b"x" * 70_000 + b'"}'
    response = await raw(bootstrap_server.url, "POST", "/v1/users", body,
                         identity=user.identity)
    assert error_of(response) == (413, "body_too_large")
    chunked = await raw(bootstrap_server.url, "POST", "/v1/users", None,
                        headers={"Transfer-Encoding": "chunked"}, identity=None)
    assert chunked.code == 400  # no body at all: not JSON
    assert await user_count(bootstrap_server.url, user) == 404
    assert (await raw(bootstrap_server.url, "GET", "/v1/health")).code == 200


async def test_unknown_routes_and_methods_answer_json(bootstrap_server) -> None:
    assert error_of(await raw(bootstrap_server.url, "GET", "/v2/anything")) == \
        (404, "not_found")
    assert error_of(await raw(bootstrap_server.url, "DELETE", "/v1/health")) == \
        (405, "method_not_allowed")


async def test_flood_from_one_client_is_limited_while_others_are_served(tmp_path) -> None:
    server = start_bootstrap("127.0.0.1", 0, tmp_path / "b.db",
                             BootstrapConfig(rate=2.0, burst=10))
    try:
        flood = await asyncio.gather(*(raw(server.url, "GET", "/v1/health", source="127.0.0.2")
                                       for _ in range(40)))
        codes = [r.code for r in flood]
        assert codes.count(200) <= 12 and codes.count(429) >= 28
        limited = next(r for r in flood if r.code == 429)
        assert error_of(limited) == (429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1
        other = await raw(server.url, "GET", "/v1/health", source="127.0.0.3")
        assert other.code == 200
    finally:
        await server.stop()


# The client's own checks on what servers send


async def test_client_rejects_a_lying_server(bootstrap_server) -> None:
    """A server that swaps records between ids is caught by the client."""
    url = bootstrap_server.url
    alice, bob, carol = User(url), User(url), User(url)
    for u in (alice, bob, carol):
        await u.register()
    conn = bootstrap_server.ctx.conn
    bob_json = conn.execute("SELECT record_json FROM users WHERE id = ?", (bob.id,)).fetchone()
    conn.execute("UPDATE users SET record_json = ? WHERE id = ?", (bob_json[0], alice.id))
    with pytest.raises(RecordError) as info:
        await carol.client.lookup(alice.id)
    assert info.value.reason == "wrong_record"
    forged = replace(alice.record, endpoints=("ws://6.6.6.6:1/mesh",)).to_json()
    conn.execute("UPDATE users SET record_json = ? WHERE id = ?", (json.dumps(forged),
                                                                   alice.id))
    with pytest.raises(RecordError):
        await carol.client.lookup(alice.id)


async def test_client_reports_an_unreachable_server() -> None:
    client = DiscoveryClient("http://127.0.0.1:9", KeyPair.generate(), timeout=2)
    with pytest.raises(DiscoveryUnavailable):
        await client.health()
