"""Sender keys: distribution over pairwise sessions, group encrypt/decrypt, rotation."""

from __future__ import annotations

import pytest

from groups import store
from groups.crypto import SENDER_KEY_MAX_ITERATION, keystore, senderkeys
from groups.crypto.senderchain import SenderChain
from groups.errors import (
    BadDistribution,
    CryptoError,
    CryptoUsageError,
    DecryptError,
    DuplicateMessage,
    FutureIteration,
    InvalidCiphertext,
    MalformedMessage,
    NoSession,
    UnknownKey,
)
from tests.unit.groups.helpers import NOW, make_user, new_group_id, pair, share_sender_keys

# The envelope: 0x01 | u16 header length | SenderKeyMessage header | GCM body.
# The header: 0x33 | protobuf {1: key id, 2: iteration, 3: CBC ciphertext} | 64-byte signature.


def split(ct: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(ct[1:3], "big")
    return ct[3:3 + n], ct[3 + n:]


def join(header: bytes, body: bytes) -> bytes:
    return b"\x01" + len(header).to_bytes(2, "big") + header + body


def forge_header(key_id: int, iteration: int, ciphertext: bytes, signing_private: bytes) -> bytes:
    """A SenderKeyMessage built with axolotl's own class (through the facade)."""
    message = senderkeys.SenderKeyMessage(key_id, iteration, ciphertext,
                                          keystore.DjbECPrivateKey(signing_private))
    return message.serialize()


def own_state(user, group_id: bytes) -> SenderChain:
    key_id = store.sender_key_info(user.conn, group_id, user.id).key_id
    return SenderChain.decode(store.load_sender_key_state(user.conn, group_id, user.id, key_id))


def test_distribution_over_pairwise_sessions_and_round_trip() -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    pair(alice, bob)
    pair(alice, carol)
    group = new_group_id()
    dist = alice.crypto.sender_key_distribution(group, now=NOW)
    for member in (bob, carol):
        sealed = alice.crypto.encrypt(member.id, dist)
        opened = member.crypto.decrypt(alice.id, sealed, now=NOW)
        member.crypto.process_sender_key_distribution(group, alice.id, opened, now=NOW)
    for size in (0, 1, 1024, 300_000):
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        ct = alice.crypto.encrypt_group(group, payload)
        assert bob.crypto.decrypt_group(group, alice.id, ct) == payload
        assert carol.crypto.decrypt_group(group, alice.id, ct) == payload
    # The distribution is idempotent and stable while the key is not rotated.
    again = alice.crypto.sender_key_distribution(group, now=NOW)
    bob.crypto.process_sender_key_distribution(group, alice.id, again, now=NOW)
    k = alice.crypto.encrypt_group(group, b"k")
    assert bob.crypto.decrypt_group(group, alice.id, k) == b"k"


def test_out_of_order_duplicates_and_verify_without_consuming() -> None:
    alice, bob = make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    cts = [alice.crypto.encrypt_group(group, f"g{i}".encode()) for i in range(6)]
    for i in (4, 1, 0):
        info = bob.crypto.verify_group_message(group, alice.id, cts[i], now=NOW)
        assert info.iteration == i
        assert bob.crypto.verify_group_message(group, alice.id, cts[i], now=NOW) == info
    for i in (4, 1, 0, 5, 2, 3):
        assert bob.crypto.decrypt_group(group, alice.id, cts[i]) == f"g{i}".encode()
    for i in (0, 3, 5):
        with pytest.raises(DuplicateMessage):
            bob.crypto.decrypt_group(group, alice.id, cts[i])
    # A relay may still verify what it has already seen (dedup is the gossip's job).
    assert bob.crypto.verify_group_message(group, alice.id, cts[0], now=NOW).iteration == 0


def test_tampered_parts_are_rejected_with_our_errors() -> None:
    alice, bob = make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    ct = alice.crypto.encrypt_group(group, b"secret" * 10)
    header, body = split(ct)
    state = store.sender_key_info(bob.conn, group, alice.id)
    signing_private = own_state(alice, group).signing_private
    parsed = senderkeys.SenderKeyMessage(serialized=header)
    cases = {
        "body": join(header, body[:-1] + bytes([body[-1] ^ 1])),
        "body truncated": join(header, body[:-5]),
        "signature": join(header[:-1] + bytes([header[-1] ^ 1]), body),
        "header ciphertext": join(header[:20] + bytes([header[20] ^ 1]) + header[21:], body),
        # Re-signed by the owner of the key with other fields: still refused.
        "key id": join(forge_header(parsed.getKeyId() + 1, 0, parsed.getCipherText(),
                                    signing_private), body),
        "iteration": join(forge_header(parsed.getKeyId(), 1, parsed.getCipherText(),
                                       signing_private), body),
    }
    expected = {"key id": UnknownKey, "iteration": InvalidCiphertext}
    for name, bad in cases.items():
        with pytest.raises(expected.get(name, DecryptError)):
            bob.crypto.decrypt_group(group, alice.id, bad)
    # Nothing moved: the genuine message still decrypts.
    assert store.sender_key_info(bob.conn, group, alice.id) == state
    assert bob.crypto.decrypt_group(group, alice.id, ct) == b"secret" * 10


def test_message_resigned_by_another_member_is_rejected() -> None:
    alice, bob, mallory = make_user(), make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob, mallory])
    ct = alice.crypto.encrypt_group(group, b"from alice")
    header, body = split(ct)
    parsed = senderkeys.SenderKeyMessage(serialized=header)
    mallory_key = own_state(mallory, group).signing_private
    resigned = join(forge_header(parsed.getKeyId(), parsed.getIteration(),
                                 parsed.getCipherText(), mallory_key), body)
    with pytest.raises(InvalidCiphertext):
        bob.crypto.verify_group_message(group, alice.id, resigned, now=NOW)
    with pytest.raises(InvalidCiphertext):
        bob.crypto.decrypt_group(group, alice.id, resigned)
    with pytest.raises(UnknownKey):  # and as mallory's own it names no key of hers
        bob.crypto.decrypt_group(group, mallory.id, resigned)
    assert bob.crypto.decrypt_group(group, alice.id, ct) == b"from alice"


def test_iteration_beyond_the_rotation_bound_is_refused_before_any_state_is_read() -> None:
    """python-axolotl would walk the chain ~2^32 steps for the first message."""
    alice, bob = make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    header, body = split(alice.crypto.encrypt_group(group, b"x"))
    parsed = senderkeys.SenderKeyMessage(serialized=header)
    signing_private = own_state(alice, group).signing_private
    attacks = [join(forge_header(parsed.getKeyId(), iteration, parsed.getCipherText(),
                                 signing_private), body)
               for iteration in (2**32 - 1, SENDER_KEY_MAX_ITERATION)]
    checks = (bob.crypto.decrypt_group,
              lambda g, s, d: bob.crypto.verify_group_message(g, s, d, now=NOW))
    for forget in (False, True):
        if forget:  # no state at all: still FutureIteration, so none was looked up
            bob.crypto.forget_sender(group, alice.id)
        for attack in attacks:
            for check in checks:
                with pytest.raises(FutureIteration) as info:
                    check(group, alice.id, attack)
                assert info.value.reason == "too_far_ahead"
        if not forget:
            assert store.sender_key_info(bob.conn, group, alice.id).iteration == 0


def test_last_iteration_of_a_key_and_skipped_keys() -> None:
    alice, bob = make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    last = SENDER_KEY_MAX_ITERATION - 1
    cts = [alice.crypto.encrypt_group(group, b"%d" % i) for i in range(last + 1)]
    with pytest.raises(NoSession):  # a key is used up: the group layer rotates first
        alice.crypto.encrypt_group(group, b"one too many")
    assert bob.crypto.decrypt_group(group, alice.id, cts[last]) == b"%d" % last
    assert bob.crypto.decrypt_group(group, alice.id, cts[1]) == b"1"
    assert own_state(bob, group).skipped_count == 0  # bob's own key has none
    key_id = store.sender_key_info(bob.conn, group, alice.id).key_id
    held = SenderChain.decode(store.load_sender_key_state(bob.conn, group, alice.id, key_id))
    assert held.skipped_count == last - 1 and held.iteration == last + 1


def test_rotation_keeps_in_flight_messages_readable_until_purged() -> None:
    alice, bob = make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    old_id = store.sender_key_info(alice.conn, group, alice.id).key_id
    in_flight = alice.crypto.encrypt_group(group, b"old key")
    dist = alice.crypto.rotate_sender_key(group, now=NOW + 10)
    new_id = store.sender_key_info(alice.conn, group, alice.id).key_id
    assert new_id != old_id and alice.crypto.sender_key_age(group) == (0, int(NOW + 10))
    bob.crypto.process_sender_key_distribution(group, alice.id, dist, now=NOW + 10)
    fresh = alice.crypto.encrypt_group(group, b"new key")
    assert bob.crypto.decrypt_group(group, alice.id, fresh) == b"new key"
    assert bob.crypto.decrypt_group(group, alice.id, in_flight) == b"old key"
    late = alice.crypto.encrypt_group(group, b"x")  # current key: not retired
    assert bob.crypto.purge_retired_sender_keys(NOW + 100, grace=60) == 1
    with pytest.raises(UnknownKey):
        bob.crypto.verify_group_message(group, alice.id, in_flight, now=NOW)
    assert bob.crypto.decrypt_group(group, alice.id, late) == b"x"


def test_distribution_and_usage_errors() -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    group = new_group_id()
    dist = alice.crypto.sender_key_distribution(group, now=NOW)
    with pytest.raises(BadDistribution):  # claims to be our own
        alice.crypto.process_sender_key_distribution(group, alice.id, dist, now=NOW)
    with pytest.raises(BadDistribution):
        bob.crypto.process_sender_key_distribution(group, alice.id, dist[:-3], now=NOW)
    bob.crypto.process_sender_key_distribution(group, alice.id, dist, now=NOW)
    # The same key id with another signing key is a conflict, never a silent swap.
    carol_dist = carol.crypto.sender_key_distribution(group, now=NOW)
    parsed = senderkeys.SenderKeyDistributionMessage(serialized=carol_dist)
    own = senderkeys.SenderKeyDistributionMessage(serialized=dist)
    clash = senderkeys.SenderKeyDistributionMessage(own.getId(), 0, parsed.getChainKey(),
                                                parsed.getSignatureKey()).serialize()
    with pytest.raises(BadDistribution):
        bob.crypto.process_sender_key_distribution(group, alice.id, clash, now=NOW)
    with pytest.raises(CryptoUsageError):
        alice.crypto.encrypt_group(b"short", b"x")
    with pytest.raises(NoSession):
        bob.crypto.encrypt_group(new_group_id(), b"x")
    ct = alice.crypto.encrypt_group(group, b"x")
    with pytest.raises(CryptoUsageError):
        alice.crypto.decrypt_group(group, alice.id, ct)
    with pytest.raises(UnknownKey):
        carol.crypto.decrypt_group(group, alice.id, ct)
    for junk in (b"", b"\x01", b"\x02\x00\x01x", b"\x01\xff\xffabc", b"\x01\x00\x03abc"):
        with pytest.raises(MalformedMessage):
            bob.crypto.decrypt_group(group, alice.id, junk)
    with pytest.raises(CryptoError):
        bob.crypto.decrypt_group(group, alice.id, ct[:40])


def test_forget_sender_and_reopen(tmp_path) -> None:
    alice, bob = make_user(tmp_path / "a.db"), make_user(tmp_path / "b.db")
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    cts = [alice.crypto.encrypt_group(group, b"%d" % i) for i in range(3)]
    assert bob.crypto.decrypt_group(group, alice.id, cts[0]) == b"0"
    alice, bob = alice.reopen(), bob.reopen()
    assert bob.crypto.decrypt_group(group, alice.id, cts[2]) == b"2"
    assert bob.crypto.decrypt_group(group, alice.id, cts[1]) == b"1"
    more = alice.crypto.encrypt_group(group, b"3")
    assert bob.crypto.verify_group_message(group, alice.id, more, now=NOW).iteration == 3
    bob.crypto.forget_sender(group, alice.id)
    with pytest.raises(UnknownKey):
        bob.crypto.decrypt_group(group, alice.id, more)
