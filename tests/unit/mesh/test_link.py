"""Two Link engines joined by an in-memory pipe, with a fake clock (no sleeps)."""

from __future__ import annotations

import struct

import pytest

from mesh import wire
from mesh.errors import LinkUsageError
from mesh.link import (
    MAX_HANDSHAKE_MESSAGE,
    MAX_MESSAGE,
    Closed,
    Established,
    FrameReceived,
    Link,
    State,
)
from tests.unit.mesh.test_link_helpers import Node, closed, forged_record, make_node, pump

T0 = 1000.0
TOPIC = b"t" * 16


@pytest.fixture(scope="module")
def alice() -> Node:
    return make_node(("ws://127.0.0.1:1/mesh",))


@pytest.fixture(scope="module")
def bob() -> Node:
    return make_node()


@pytest.fixture(scope="module")
def mallory() -> Node:
    return make_node()


def link(node: Node, initiator: bool, **kw) -> Link:
    return Link(node.identity, node.record, initiator=initiator, now=T0, **kw)


def connect(a: Node, b: Node, **kw) -> tuple[Link, Link]:
    la, lb = link(a, True, **kw), link(b, False)
    ev_a, ev_b = pump(la, lb, T0)
    assert ev_a == [Established(b.record)]
    assert ev_b == [Established(a.record)]
    return la, lb


def pub(seq: int, payload: bytes = b"x") -> wire.Publish:
    return wire.Publish(TOPIC, "1" * 15, seq, payload)


# Handshake success


def test_handshake_authenticates_both_sides_and_carries_frames(alice, bob):
    log: list[tuple[str, bytes]] = []
    la, lb = link(alice, True), link(bob, False)
    ev_a, ev_b = pump(la, lb, T0, log=log)
    assert ev_a == [Established(bob.record)] and ev_b == [Established(alice.record)]
    assert [d for d, _ in log] == ["a>b", "b>a", "b>a", "a>b"]  # Hello, Hello, Auth, Auth
    assert la.state is lb.state is State.ESTABLISHED
    assert la.peer == bob.record and lb.peer == alice.record
    assert la.version == lb.version == 1
    assert la.handshake_hash == lb.handshake_hash and len(la.handshake_hash) == 32
    assert la.next_timer() is None and lb.next_timer() is None

    la.send(pub(1))
    la.send(pub(2, b"y" * 1000))
    lb.send(wire.Graft(TOPIC))
    ev_a, ev_b = pump(la, lb, T0)
    assert ev_b == [FrameReceived(pub(1)), FrameReceived(pub(2, b"y" * 1000))]
    assert ev_a == [FrameReceived(wire.Graft(TOPIC))]


def test_passive_observer_learns_neither_identity(alice, bob):
    log: list[tuple[str, bytes]] = []
    la, lb = link(alice, True), link(bob, False)
    pump(la, lb, T0, log=log)
    wire_bytes = b"".join(m for _, m in log)
    for node in (alice, bob):
        assert node.identity.public[1:] not in wire_bytes
        assert node.user_id.encode() not in wire_bytes
    assert b"ws://127.0.0.1" not in wire_bytes


def test_chunk_frame_of_maximum_size_passes(alice, bob):
    la, lb = connect(alice, bob)
    chunk = wire.Chunk(b"f" * 32, 7, b"d" * (wire.MAX_CHUNK_DATA + 64))
    la.send(chunk)
    (msg,) = la.data_to_send()
    assert len(msg) <= MAX_MESSAGE
    lb.receive_data(msg, T0)
    assert lb.events() == [FrameReceived(chunk)]


def test_close_reaches_the_peer(alice, bob):
    la, lb = connect(alice, bob)
    la.close("duplicate", "keeping the other link")
    assert la.events() == [Closed("duplicate", "keeping the other link", False)]
    _, ev_b = pump(la, lb, T0)
    assert ev_b == [Closed("duplicate", "keeping the other link", True)]
    assert la.state is lb.state is State.CLOSED
    la.close()  # closing twice is harmless
    assert la.events() == [] and la.data_to_send() == []


def deliver(src: Link, dst: Link) -> None:
    for msg in src.data_to_send():
        dst.receive_data(msg, T0)


def test_responder_closing_before_the_initiators_auth_arrives(alice, bob):
    """The initiator is on the data keys once it sent its Auth; a responder that closes
    before that Auth reaches it (its node shutting down) can only seal under its
    handshake key. That Close must end the link with its reason, not "decrypt_failed"
    (an integration test saw it 1 run in 18 when a peer stopped right after dialling)."""
    la, lb = link(alice, True), link(bob, False)
    deliver(la, lb)  # Hello
    deliver(lb, la)  # Hello, Auth
    assert la.events() == [Established(bob.record)]
    in_flight = la.data_to_send()  # the initiator's Auth, not yet at the responder
    lb.close("shutdown", "node stopping")
    deliver(lb, la)
    assert la.events() == [Closed("shutdown", "node stopping", True)]
    assert in_flight and la.data_to_send() == []


def test_handshake_key_is_dropped_once_the_responder_switched(alice, bob):
    la, lb = link(alice, True), link(bob, False)
    deliver(la, lb)
    deliver(lb, la)
    hs_send = lb._send  # the responder's handshake key, as a late Close would use it
    deliver(la, lb)  # the initiator's Auth: the responder switches to the data keys
    assert la.events() and lb.events() == [Established(alice.record)]
    lb.send(wire.Graft(TOPIC))
    deliver(lb, la)
    assert la.events() == [FrameReceived(wire.Graft(TOPIC))]
    la.receive_data(hs_send.seal(wire.encode(wire.Close("shutdown", ""))), T0)
    assert closed(la.events()).reason == "decrypt_failed"


def test_ping_is_answered_and_not_surfaced(alice, bob):
    la, lb = connect(alice, bob, keepalive=5.0)
    assert la.next_timer() == T0 + 5.0
    la.handle_timer(T0 + 5.0)
    (ping,) = la.data_to_send()
    lb.receive_data(ping, T0 + 5.0)
    assert lb.events() == []
    (pong,) = lb.data_to_send()
    la.receive_data(pong, T0 + 5.1)
    assert la.events() == [] and la.state is State.ESTABLISHED


def test_keepalive_times_out_a_silent_peer(alice, bob):
    la, _lb = connect(alice, bob, keepalive=5.0)
    for t in (5.0, 10.0):
        la.handle_timer(T0 + t)
        la.data_to_send()  # pings into the void
    la.handle_timer(T0 + 15.0)
    assert closed(la.events()).reason == "timeout"


# Misuse of the API is a LocalError, not a close


def test_send_rules(alice, bob):
    la, lb = link(alice, True), link(bob, False)
    with pytest.raises(LinkUsageError):
        la.send(pub(1))
    pump(la, lb, T0)
    for frame in (wire.Hello((1,), b"e" * 32), wire.Close("x", ""), wire.Ping(b"")):
        with pytest.raises(LinkUsageError):
            la.send(frame)
    with pytest.raises(LinkUsageError):
        la.close("Not A Reason")
    la.close()
    with pytest.raises(LinkUsageError):
        la.send(pub(1))
    with pytest.raises(LinkUsageError):
        Link(alice.identity, bob.record, initiator=True, now=T0)


# Refusals during the handshake


def test_handshake_timeout(alice, bob):
    la = link(alice, True, handshake_timeout=3.0)
    assert la.next_timer() == T0 + 3.0
    la.handle_timer(T0 + 2.9)
    assert la.state is State.AWAIT_HELLO
    la.handle_timer(T0 + 3.0)
    assert closed(la.events()) == Closed("timeout", "handshake did not complete in time", False)
    assert la.next_timer() is None


def test_impersonation_with_a_record_whose_key_does_not_derive_the_id(alice, bob, mallory):
    """Mallory claims Alice's ID with her own key: the ID derivation fails."""
    fake = forged_record(alice.user_id, mallory.identity, alice.record)
    lm = Link(mallory.identity, fake, initiator=True, now=T0)
    lb = link(bob, False)
    ev_m, ev_b = pump(lm, lb, T0)
    assert closed(ev_b).reason == "impersonation"
    assert closed(ev_m) == Closed("impersonation", closed(ev_b).message, True)
    assert not any(isinstance(e, Established) for e in ev_b)


def test_impersonation_with_a_stolen_genuine_record(alice, bob, mallory):
    """Mallory shows Alice's real record but cannot sign with Alice's key."""
    lm = link(mallory, True)
    lm._record = alice.record  # what a malicious implementation would send
    lb = link(bob, False)
    _, ev_b = pump(lm, lb, T0)
    assert closed(ev_b).reason == "bad_signature"


def test_responder_impersonation_is_caught_by_the_initiator(alice, bob, mallory):
    la = link(alice, True)
    lm = link(mallory, False)
    lm._record = bob.record
    ev_a, ev_m = pump(la, lm, T0)
    assert closed(ev_a).reason == "bad_signature"
    assert closed(ev_m).by_peer and closed(ev_m).reason == "bad_signature"
    assert la.data_to_send() == []


def test_reflected_signature_is_refused(alice, bob):
    """An initiator signing with the responder's label (a reflection) fails."""
    la, lb = link(alice, True), link(bob, False)
    real = la._make_auth
    la._make_auth = lambda label: real(b"parley/link/v1 responder signature")
    _, ev_b = pump(la, lb, T0)
    assert closed(ev_b).reason == "bad_signature"


def test_corrupt_record_is_refused(alice, bob):
    la, lb = link(alice, True), link(bob, False)
    bad = alice.record.__class__(**{**alice.record.__dict__, "seq": 99})  # signature stale
    la._record = bad
    _, ev_b = pump(la, lb, T0)
    assert closed(ev_b).reason == "bad_record"


def test_expected_peer_mismatch(alice, bob, mallory):
    la = link(alice, True, expected_peer=bob.user_id)
    lm = link(mallory, False)
    ev_a, ev_m = pump(la, lm, T0)
    assert closed(ev_a).reason == "wrong_peer"
    assert closed(ev_m) == Closed("wrong_peer", closed(ev_a).message, True)
    la2, lb2 = link(alice, True, expected_peer=bob.user_id), link(bob, False)
    assert pump(la2, lb2, T0)[0] == [Established(bob.record)]


def test_link_to_self_is_refused(alice):
    la, la2 = link(alice, True), link(alice, False)
    ev_1, _ = pump(la, la2, T0)
    assert closed(ev_1).reason == "self_link"


def test_replayed_handshake_is_refused(alice, bob):
    log: list[tuple[str, bytes]] = []
    pump(link(alice, True), link(bob, False), T0, log=log)
    hello_i, auth_i = [m for d, m in log if d == "a>b"]
    fresh = link(bob, False)
    fresh.receive_data(hello_i, T0)
    fresh.receive_data(auth_i, T0)
    assert closed(fresh.events()).reason == "transcript_mismatch"


def test_second_hello_is_unexpected(alice, bob):
    log: list[tuple[str, bytes]] = []
    la, lb = link(alice, True), link(bob, False)
    pump(la, lb, T0, log=log)
    lb.receive_data(log[0][1], T0)
    assert closed(lb.events()).reason == "decrypt_failed"  # established: only sealed data
    lb2 = link(bob, False)
    lb2.receive_data(log[0][1], T0)
    lb2.data_to_send()
    lb2.receive_data(log[0][1], T0)  # a second clear Hello instead of Auth
    assert closed(lb2.events()).reason == "transcript_mismatch"


def test_payload_before_handshake_is_unexpected(bob):
    lb = link(bob, False)
    lb.receive_data(wire.encode(pub(1)), T0)
    assert closed(lb.events()).reason == "unexpected_frame"


def test_version_negotiation_picks_the_highest_common(alice, bob):
    la, lb = link(alice, True, versions=(1, 2, 3)), link(bob, False, versions=(2, 1))
    pump(la, lb, T0)
    assert la.version == lb.version == 2 and la.state is State.ESTABLISHED


def test_no_common_version(alice, bob):
    la, lb = link(alice, True, versions=(7,)), link(bob, False)
    ev_a, ev_b = pump(la, lb, T0)
    assert closed(ev_b).reason == "bad_version"
    assert closed(ev_a) == Closed("bad_version", closed(ev_b).message, True)


def test_responder_choosing_an_unoffered_version_is_refused(alice):
    la = link(alice, True)
    la.data_to_send()
    la.receive_data(wire.encode(wire.Hello((2,), b"\x09" * 32)), T0)
    assert closed(la.events()).reason == "bad_version"
    la = link(alice, True)
    la.receive_data(wire.encode(wire.Hello((1, 1), b"\x09" * 32)), T0)
    assert closed(la.events()).reason == "bad_version"


def test_downgrade_by_an_active_attacker_is_detected(alice, bob):
    """Stripping version 2 from the initiator's offer makes the responder pick 1, but
    the two transcripts then differ and the responder's Auth does not authenticate."""
    def strip(direction, index, msg):
        if direction == "a>b" and index == 0:
            hello = wire.decode(msg)
            return [wire.encode(wire.Hello((1,), hello.ephemeral))]
        return [msg]

    la, lb = link(alice, True, versions=(2, 1)), link(bob, False, versions=(2, 1))
    ev_a, ev_b = pump(la, lb, T0, tamper=strip)
    assert closed(ev_a).reason == "transcript_mismatch"
    assert not any(isinstance(e, Established) for e in ev_a + ev_b)


def test_old_frame_encoding_version_is_refused(bob):
    lb = link(bob, False)
    import msgpack
    lb.receive_data(msgpack.packb({"t": "hello", "v": 0, "versions": [1],
                                   "ephemeral": b"e" * 32}, use_bin_type=True), T0)
    assert closed(lb.events()).reason == "bad_version"


def test_low_order_ephemeral_is_refused(bob):
    lb = link(bob, False)
    lb.receive_data(wire.encode(wire.Hello((1,), bytes(32))), T0)
    assert closed(lb.events()).reason == "bad_key"
    (close,) = lb.data_to_send()
    assert wire.decode(close) == wire.Close("bad_key", "peer ephemeral key is a low-order point")


@pytest.mark.parametrize("data, reason", [
    (b"", "bad_frame"),
    (b"\xc1garbage", "bad_frame"),
    (b"\x93\x01\x02\x03", "bad_frame"),
    (wire.encode(wire.Ping(b"")).replace(b"ping", b"zing"), "unknown_frame"),
    (b"\x00" * (MAX_HANDSHAKE_MESSAGE + 1), "frame_too_large"),
])
def test_garbage_in_the_handshake(bob, data, reason):
    lb = link(bob, False)
    lb.receive_data(data, T0)
    assert closed(lb.events()).reason == reason
    assert lb.state is State.CLOSED
    (close,) = lb.data_to_send()
    assert wire.decode(close).reason == reason  # sent in clear: no keys yet
    lb.receive_data(wire.encode(wire.Hello((1,), b"\x09" * 32)), T0)
    assert lb.events() == [] and lb.data_to_send() == []


def test_tampered_auth_is_refused(alice, bob):
    def flip(direction, index, msg):
        if direction == "b>a" and index == 1:
            return [msg[:-1] + bytes([msg[-1] ^ 1])]
        return [msg]

    la, lb = link(alice, True), link(bob, False)
    ev_a, ev_b = pump(la, lb, T0, tamper=flip)
    assert closed(ev_a).reason == "transcript_mismatch"
    assert closed(ev_b) == Closed("transcript_mismatch", closed(ev_a).message, True)


# Refusals after the handshake


def sealed(a: Link, *frames: wire.Frame) -> list[bytes]:
    for f in frames:
        a.send(f)
    return a.data_to_send()


def test_reordered_frames_close_the_link(alice, bob):
    la, lb = connect(alice, bob)
    _m0, m1 = sealed(la, pub(1), pub(2))
    lb.receive_data(m1, T0)
    assert closed(lb.events()).reason == "out_of_order"
    (close,) = lb.data_to_send()
    la.receive_data(close, T0)
    assert closed(la.events()) == Closed("out_of_order", "counter 1 skips ahead (expected 0)",
                                         True)


def test_replayed_frames_close_the_link(alice, bob):
    la, lb = connect(alice, bob)
    (m0,) = sealed(la, pub(1))
    lb.receive_data(m0, T0)
    lb.receive_data(m0, T0)
    events = lb.events()
    assert events[0] == FrameReceived(pub(1))
    assert closed(events).reason == "replay"


def test_frames_from_the_other_direction_do_not_decrypt(alice, bob):
    la, _lb = connect(alice, bob)
    (m0,) = sealed(la, pub(1))
    la.receive_data(m0, T0)  # reflected back at its sender
    assert closed(la.events()).reason == "decrypt_failed"


@pytest.mark.parametrize("mutate", [
    lambda m: m[:-1] + bytes([m[-1] ^ 0x80]),         # tag
    lambda m: m[:10] + bytes([m[10] ^ 1]) + m[11:],   # ciphertext
    lambda m: struct.pack(">Q", 5) + m[8:],           # counter header
    lambda m: m + b"\x00",
])
def test_forged_frames_close_the_link(alice, bob, mutate):
    la, lb = connect(alice, bob)
    (m0,) = sealed(la, pub(1))
    lb.receive_data(mutate(m0), T0)
    assert closed(lb.events()).reason == "decrypt_failed"


def test_short_and_oversized_sealed_frames(alice, bob):
    _la, lb = connect(alice, bob)
    lb.receive_data(b"\x00" * 23, T0)
    assert closed(lb.events()).reason == "bad_frame"
    _la, lb = connect(alice, bob)
    lb.receive_data(b"\x00" * (MAX_MESSAGE + 1), T0)
    assert closed(lb.events()).reason == "frame_too_large"


def test_sealed_garbage_and_handshake_frames_after_establishment(alice, bob):
    la, lb = connect(alice, bob)
    la._emit_sealed(wire.Hello((1,), b"\x09" * 32), T0)
    lb.receive_data(la.data_to_send()[0], T0)
    assert closed(lb.events()).reason == "unexpected_frame"
    la, lb = connect(alice, bob)
    la._outgoing.append(la._send.seal(b"\xc1"))
    lb.receive_data(la.data_to_send()[0], T0)
    assert closed(lb.events()).reason == "bad_frame"


def test_connection_lost(alice, bob):
    la, _ = connect(alice, bob)
    la.connection_lost()
    assert la.events() == [Closed("connection_lost", "transport closed", True)]
    assert la.data_to_send() == []


def test_repr_shows_no_secrets(alice, bob):
    la, _ = connect(alice, bob)
    text = repr(la) + repr(la._send) + repr(alice.identity)
    assert alice.identity.private.hex() not in text
    assert bob.user_id in repr(la)
