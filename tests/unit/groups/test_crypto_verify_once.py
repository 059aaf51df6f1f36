"""Issue 13: a group message's signature is checked once per member (in the validate
hook) and decrypt_group trusts that check only for the exact header and key verified;
whatever else reaches decrypt_group is verified there as before."""

from __future__ import annotations

import pytest

from groups.crypto import keystore, senderkeys
from groups.crypto.senderkeys import VerifiedHeaders
from groups.errors import CryptoUsageError, InvalidCiphertext
from tests.unit.groups.helpers import NOW, make_user, new_group_id, share_sender_keys
from tests.unit.groups.test_groups import join, own_state, split


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The signed bytes of every signature check python-axolotl makes (it still checks)."""
    from axolotl.ecc.curve import Curve

    seen: list[bytes] = []
    real = Curve.verifySignature

    def counted(key: object, message: bytes, signature: bytes) -> bool:
        seen.append(bytes(message))
        return real(key, message, signature)

    monkeypatch.setattr(Curve, "verifySignature", staticmethod(counted))
    return seen


def test_a_validated_message_is_verified_once(verifications: list[bytes]) -> None:
    alice, bob = make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    cts = [alice.crypto.encrypt_group(group, b"m%d" % i) for i in range(3)]
    for i, ct in enumerate(cts):  # the validate hook, then the commit
        bob.crypto.verify_group_message(group, alice.id, ct, now=NOW)
        assert bob.crypto.decrypt_group(group, alice.id, ct) == b"m%d" % i
    assert len(verifications) == 3
    assert len(bob.crypto.verified_headers) == 0  # each pair is used once


def test_what_was_not_validated_is_still_verified_in_decrypt(
        verifications: list[bytes]) -> None:
    alice, bob = make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    ct = alice.crypto.encrypt_group(group, b"secret")
    header, body = split(ct)
    bob.crypto.verify_group_message(group, alice.id, ct, now=NOW)
    # Other bytes than those verified: a flipped signature bit, a swapped body.
    with pytest.raises(InvalidCiphertext):
        bob.crypto.decrypt_group(group, alice.id,
                                 join(header[:-1] + bytes([header[-1] ^ 1]), body))
    with pytest.raises(InvalidCiphertext):
        bob.crypto.decrypt_group(group, alice.id, join(header, body[:-1] + b"\x00"))
    assert len(verifications) == 2  # validate, then decrypt of the other header
    # A message nobody validated is verified by decrypt itself.
    unvalidated = alice.crypto.encrypt_group(group, b"later")
    assert bob.crypto.decrypt_group(group, alice.id, unvalidated) == b"later"
    assert len(verifications) == 3
    # The swapped body used up the verified pair (its header was the one verified):
    # the genuine message is verified again.
    assert bob.crypto.decrypt_group(group, alice.id, ct) == b"secret"
    assert len(verifications) == 4


def test_a_header_verified_with_another_key_is_verified_again() -> None:
    """Between validate and decrypt the sender's key with that id may change (forgotten,
    then distributed anew with another signing key): the remembered check does not
    carry over to it."""
    from axolotl.protocol.senderkeydistributionmessage import SenderKeyDistributionMessage

    alice, bob, mallory = make_user(), make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob, mallory])
    ct = alice.crypto.encrypt_group(group, b"x")
    bob.crypto.verify_group_message(group, alice.id, ct, now=NOW)
    ours = own_state(alice, group)
    theirs = own_state(mallory, group)
    forged = SenderKeyDistributionMessage(ours.key_id, 0, bytes(32),
                                          keystore.public_key(theirs.signing_public)).serialize()
    bob.crypto.forget_sender(group, alice.id)
    bob.crypto.process_sender_key_distribution(group, alice.id, forged, now=NOW)
    with pytest.raises(InvalidCiphertext):
        bob.crypto.decrypt_group(group, alice.id, ct)


def test_verified_headers_are_bounded_and_exact() -> None:
    pairs = VerifiedHeaders(limit=2)
    pairs.add(b"k", b"h1")
    pairs.add(b"k", b"h2")
    pairs.add(b"k", b"h3")  # h1, the oldest, goes
    assert len(pairs) == 2
    assert not pairs.take(b"k", b"h1")
    assert not pairs.take(b"other key", b"h2")
    assert pairs.take(b"k", b"h2")
    assert not pairs.take(b"k", b"h2")  # used once
    with pytest.raises(CryptoUsageError):
        VerifiedHeaders(limit=0)
    assert senderkeys.VERIFIED_HEADERS_MAX >= 256
