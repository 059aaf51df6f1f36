"""The circuit relay core (mesh.relay): reservations, circuits, limits, bad input."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import CircuitLimitExceeded, RelayRefused
from mesh.identity import KeyPair
from mesh.relay import (
    Relay,
    RelayLimits,
    decode_control,
    encode_control,
    is_relay_address,
    make_reserve,
    read_connect,
    read_reserved,
    refusal,
    relay_address,
    relay_base,
)

HOST = "relay.example:8470"
URL = f"ws://{HOST}/relay"


def reserve(relay: Relay, identity: KeyPair, session: object, now: float = 0.0,
            url: str = URL, host: str = HOST, source: str = "198.51.100.7"):
    challenge = relay.open_session(session, host, source, now)
    return relay.reserve(session, make_reserve(identity, url, challenge), now)


def test_reservation_then_circuit_then_accept():
    relay, alice = Relay(), KeyPair.generate()
    res, answer = reserve(relay, alice, "s-alice")
    assert res.user_id == alice.user_id and res.expires == 3600.0
    assert read_reserved(answer).ttl == 3600
    opened = relay.open_circuit(alice.user_id, "203.0.113.9", 1.0)
    assert opened.session == "s-alice"
    cid_hex = read_connect(opened.message)
    assert relay.accept_circuit(cid_hex, 1.5) == opened.circuit_id
    assert relay.forward(opened.circuit_id, 1000, 2.0) == 0.0
    assert relay.relayed_bytes == 1000
    with pytest.raises(RelayRefused) as err:  # a circuit is accepted once
        relay.accept_circuit(cid_hex, 1.6)
    assert err.value.reason == "unknown_circuit"


def test_renewal_signs_the_new_challenge_and_extends():
    relay, alice = Relay(), KeyPair.generate()
    _, answer = reserve(relay, alice, "s")
    res, _ = relay.reserve("s", make_reserve(alice, URL, answer), 100.0)
    assert res.expires == 3700.0
    with pytest.raises(RelayRefused) as err:  # the first challenge is used up
        relay.reserve("s", make_reserve(alice, URL, answer), 101.0)
    assert err.value.reason == "bad_signature"


def test_reservation_for_an_id_one_does_not_own_is_refused():
    relay, alice, mallory = Relay(), KeyPair.generate(), KeyPair.generate()
    challenge = relay.open_session("m", HOST, "x", 0.0)
    good = msgpack.unpackb(make_reserve(mallory, URL, challenge))
    forged = encode_control("reserve", key=alice.public, relay=URL, sig=good["sig"])
    with pytest.raises(RelayRefused) as err:
        relay.reserve("m", forged, 0.0)
    assert err.value.reason == "bad_signature"
    assert relay.reservations == {}


def test_proof_bound_to_another_relay_or_replayed_is_refused():
    relay, alice = Relay(), KeyPair.generate()
    challenge = relay.open_session("a", HOST, "x", 0.0)
    with pytest.raises(RelayRefused) as err:
        relay.reserve("a", make_reserve(alice, "ws://other.example:1/relay", challenge), 0.0)
    assert err.value.reason == "wrong_relay"
    # The proof for session "a" does not work on another connection's challenge.
    relay.open_session("b", HOST, "x", 0.0)
    with pytest.raises(RelayRefused) as err:
        relay.reserve("b", make_reserve(alice, URL, challenge), 0.0)
    assert err.value.reason == "bad_signature"
    assert relay.reservations == {}


@pytest.mark.parametrize("data", [
    b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"t": "reserve", "v": 2}),
    encode_control("reserve", key=b"k", relay=URL),
    encode_control("reserve", key=b"k", relay=URL, sig=b"s", extra=1),
    encode_control("reserve", key="k", relay=URL, sig=b"s"),
    encode_control("reserve", key=b"\x05" + b"k" * 32, relay=URL, sig=b"s" * 64),
    encode_control("reserve", key=b"k" * 33, relay=URL, sig=b"s" * 64),
    b"\x80" * 2000,
])
def test_malformed_reserve_messages_are_refused_and_store_nothing(data):
    relay = Relay()
    relay.open_session("s", HOST, "x", 0.0)
    with pytest.raises(RelayRefused) as err:
        relay.reserve("s", data, 0.0)
    assert err.value.reason in {"bad_request", "bad_signature"}
    assert relay.reservations == {}


def test_reserve_without_challenge_is_refused():
    with pytest.raises(RelayRefused):
        Relay().reserve("nobody", encode_control("reserve"), 0.0)


def test_full_relay_refuses_new_reservations_and_keeps_the_old():
    relay = Relay(RelayLimits(max_reservations=2))
    ids = [KeyPair.generate() for _ in range(3)]
    for i, who in enumerate(ids[:2]):
        reserve(relay, who, f"s{i}")
    with pytest.raises(RelayRefused) as err:
        reserve(relay, ids[2], "s2")
    assert err.value.reason == "relay_full"
    assert "2 reservations" in str(err.value)
    assert set(relay.reservations) == {ids[0].user_id, ids[1].user_id}
    # The old ones still renew and still get circuits.
    relay.open_circuit(ids[0].user_id, "d", 1.0)
    assert read_reserved(reserve(relay, ids[1], "s1b", now=2.0)[1]).ttl == 3600


def test_flood_of_reservation_attempts_is_rate_limited_per_address():
    relay = Relay(RelayLimits(reserve_rate=1.0, reserve_burst=3))
    for i in range(3):
        relay.open_session(i, HOST, "198.51.100.66", 0.0)
    with pytest.raises(RelayRefused) as err:
        relay.open_session(99, HOST, "198.51.100.66", 0.0)
    assert err.value.reason == "rate_limited"
    relay.open_session(100, HOST, "198.51.100.67", 0.0)  # others are not affected
    relay.open_session(101, HOST, "198.51.100.66", 1.0)  # and it refills


def test_circuits_to_unknown_peers_and_beyond_limits_are_refused():
    relay = Relay(RelayLimits(max_circuits=3, max_circuits_per_peer=2))
    alice, bob = KeyPair.generate(), KeyPair.generate()
    with pytest.raises(RelayRefused) as err:
        relay.open_circuit(alice.user_id, "d", 0.0)
    assert err.value.reason == "no_reservation"
    reserve(relay, alice, "a")
    reserve(relay, bob, "b")
    relay.open_circuit(alice.user_id, "d", 0.0)
    relay.open_circuit(alice.user_id, "d", 0.0)
    with pytest.raises(RelayRefused) as err:
        relay.open_circuit(alice.user_id, "d", 0.0)
    assert err.value.reason == "peer_circuits_full"
    relay.open_circuit(bob.user_id, "d", 0.0)
    with pytest.raises(RelayRefused) as err:
        relay.open_circuit(bob.user_id, "d", 0.0)
    assert err.value.reason == "relay_full"
    with pytest.raises(RelayRefused) as err:
        relay.accept_circuit("zz" * 16, 0.0)
    assert err.value.reason == "unknown_circuit"


def test_circuit_rate_bytes_and_lifetime_limits():
    limits = RelayLimits(circuit_rate=1_000_000, circuit_burst=400_000,
                         circuit_bytes=1_000_000, circuit_lifetime=60.0)
    relay, alice = Relay(limits), KeyPair.generate()
    reserve(relay, alice, "a")
    cid = relay.open_circuit(alice.user_id, "d", 0.0).circuit_id
    relay.accept_circuit(cid.hex(), 0.0)
    assert relay.forward(cid, 400_000, 0.0) == 0.0
    assert relay.forward(cid, 200_000, 0.0) == pytest.approx(0.2)   # wait for tokens
    assert relay.forward(cid, 300_000, 0.7) == pytest.approx(0.0)
    with pytest.raises(CircuitLimitExceeded) as err:
        relay.forward(cid, 200_000, 2.0)
    assert err.value.reason == "circuit_bytes"
    cid2 = relay.open_circuit(alice.user_id, "d", 10.0).circuit_id
    with pytest.raises(CircuitLimitExceeded) as err:
        relay.forward(cid2, 1, 70.0)
    assert err.value.reason == "circuit_expired"


def test_expiry_drops_reservations_unaccepted_circuits_and_old_circuits():
    relay, alice = Relay(RelayLimits(reservation_ttl=100, accept_timeout=5,
                                     circuit_lifetime=50)), KeyPair.generate()
    reserve(relay, alice, "a")
    waiting = relay.open_circuit(alice.user_id, "d", 0.0).circuit_id
    spliced = relay.open_circuit(alice.user_id, "d", 0.0).circuit_id
    relay.accept_circuit(spliced.hex(), 1.0)
    assert relay.next_timer() == 5.0
    assert relay.expire(5.0) == ([], [waiting])
    assert relay.expire(50.0) == ([], [spliced])
    assert relay.expire(100.0) == (["a"], [])
    assert relay.reservations == {} and relay.next_timer() is None


def test_closing_a_reservation_drops_its_waiting_circuits_and_a_newer_proof_wins():
    relay, alice = Relay(), KeyPair.generate()
    reserve(relay, alice, "old")
    reserve(relay, alice, "new")
    assert relay.reservations[alice.user_id].session == "new"
    assert relay.close_session("old") == []  # the newer reservation stays
    cid = relay.open_circuit(alice.user_id, "d", 0.0).circuit_id
    assert relay.close_session("new") == [cid]
    assert relay.reservations == {}


def test_client_side_messages():
    with pytest.raises(RelayRefused) as err:
        read_reserved(refusal(RelayRefused("full up", "relay_full")))
    assert (err.value.reason, str(err.value)) == ("relay_full", "full up")
    for bad in (encode_control("connect", circuit="../../etc"), encode_control("connect"),
                encode_control("reserved", ttl=True, nonce=b"", circuit_bytes=1,
                               circuit_lifetime=1)):
        with pytest.raises(RelayRefused):
            read_connect(bad) if b"connect" in bad else read_reserved(bad)
    with pytest.raises(RelayRefused):
        decode_control(encode_control("x", a=1), "y", {"a": int})


def test_relay_addresses():
    assert relay_base("http://203.0.113.1:8470/") == "ws://203.0.113.1:8470"
    assert relay_base("https://relay.example") == "wss://relay.example"
    address = relay_address("http://203.0.113.1:8470", "123456789012345")
    assert address == "ws://203.0.113.1:8470/relay/123456789012345"
    assert is_relay_address(address)
    assert not is_relay_address("ws://203.0.113.1:8470/mesh")
    assert not is_relay_address("ws://a/b/relay/123456789012345")
    with pytest.raises(ValueError):
        relay_base("ftp://x")


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_any_bytes_on_a_reservation_are_refused_cleanly(data):
    relay = Relay()
    relay.open_session("s", HOST, "x", 0.0)
    with pytest.raises(RelayRefused):
        relay.reserve("s", data, 0.0)
    assert relay.reservations == {}


@given(st.dictionaries(st.sampled_from(["t", "v", "key", "relay", "sig", "x"]),
                       st.one_of(st.binary(max_size=70), st.text(max_size=40),
                                 st.integers(-2**63, 2**64 - 1), st.booleans(), st.none()),
                       max_size=6))
@settings(max_examples=300, deadline=None)
def test_any_map_on_a_reservation_is_refused_cleanly(fields):
    relay = Relay()
    relay.open_session("s", HOST, "x", 0.0)
    with pytest.raises(RelayRefused):
        relay.reserve("s", msgpack.packb(fields, use_bin_type=True), 0.0)
    assert relay.reservations == {}


@given(st.binary(max_size=1100))
@settings(max_examples=300, deadline=None)
def test_the_reserving_side_refuses_any_bytes_cleanly(data):
    for read in (read_reserved, read_connect):
        with contextlib.suppress(RelayRefused):
            read(data)
