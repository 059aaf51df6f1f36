"""The pairwise twin of issue 15's finding 2: a peer that lets only every 2001st message
reach us, once per ratchet turn, must not make its later messages slow to read. Replayed
with the real classes: python-axolotl kept those skipped keys inside the session record,
parsed for every message (~50 ms more per chain)."""

from __future__ import annotations

import pytest

from groups import store
from groups.crypto import DEVICE_ID, MAX_FORWARD_ITERATIONS, MAX_SKIPPED_KEYS
from groups.crypto.sessionrecord import StoredSessionRecord
from groups.errors import CryptoStoreError, DuplicateMessage, InvalidCiphertext
from tests.unit.groups.helpers import NOW, User, make_user, pair


def held(user: User, peer: str) -> StoredSessionRecord:
    return StoredSessionRecord.decode(store.load_session(user.conn, peer, DEVICE_ID))


def turn(alice: User, bob: User, skip: int) -> list[bytes]:
    """Alice sends ``skip`` + 1 messages of which bob reads only the last, then bob
    answers (a ratchet turn: alice's next messages open a new chain). The skipped ones
    are returned, as the attacker could release them later."""
    sent = [alice.crypto.encrypt(bob.id, b"%d" % i) for i in range(skip + 1)]
    assert bob.crypto.decrypt(alice.id, sent[-1], now=NOW) == b"%d" % skip
    assert alice.crypto.decrypt(bob.id, bob.crypto.encrypt(alice.id, b"ok"), now=NOW) == b"ok"
    return sent[:-1]


def test_skipped_keys_are_capped_per_peer_and_later_messages_stay_cheap() -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    pair(alice, bob)
    pair(carol, bob)
    held_back = [turn(alice, bob, MAX_FORWARD_ITERATIONS) for _ in range(3)]
    record = held(bob, alice.id)
    assert len(record.skipped) == MAX_SKIPPED_KEYS * 117  # 6000 skipped, the newest kept
    assert not any(chain.messageKeys for chain in
                   record.getSessionState().getStructure().receiverChains)
    # The newest skipped keys still open their messages; the oldest were dropped.
    assert bob.crypto.decrypt(alice.id, held_back[2][-1], now=NOW) == b"1999"
    with pytest.raises(DuplicateMessage):
        bob.crypto.decrypt(alice.id, held_back[0][0], now=NOW)

    # What each later message costs is parsing the record's protobuf (the skipped keys
    # beside it are searched, never parsed): after the attack it stays the size of an
    # ordinary peer's, where python-axolotl's grew by every skipped key (~600 KB).
    for _ in range(15):
        for sender in (carol, alice):
            assert bob.crypto.decrypt(sender.id, sender.crypto.encrypt(bob.id, b"x" * 100),
                                      now=NOW) == b"x" * 100
    attacked, normal = held(bob, alice.id), held(bob, carol.id)
    assert len(attacked.skipped) > 1000 * 117 and not normal.skipped
    assert len(attacked.serialize()) < 2 * len(normal.serialize())


def test_a_failed_message_leaves_the_skipped_keys_as_they_were() -> None:
    alice, bob = make_user(), make_user()
    pair(alice, bob)
    sent = [alice.crypto.encrypt(bob.id, b"%d" % i) for i in range(4)]
    before = store.load_session(bob.conn, alice.id, DEVICE_ID)
    forged = bytearray(sent[3])
    forged[-1] ^= 1  # the MAC: the chain would move 3 steps if it were kept
    with pytest.raises(InvalidCiphertext):
        bob.crypto.decrypt(alice.id, bytes(forged), now=NOW)
    assert store.load_session(bob.conn, alice.id, DEVICE_ID) == before
    assert [bob.crypto.decrypt(alice.id, m, now=NOW) for m in (sent[2], sent[0], sent[3],
                                                               sent[1])] \
        == [b"2", b"0", b"3", b"1"]


def test_a_record_in_the_old_protobuf_format_is_read_and_rewritten() -> None:
    """Databases written before this layout hold the bare RecordStructure, with the
    skipped keys inside its chains."""
    from axolotl.ecc.curve import Curve

    alice, bob = make_user(), make_user()
    pair(alice, bob)
    sent = [alice.crypto.encrypt(bob.id, b"%d" % i) for i in range(3)]
    assert bob.crypto.decrypt(alice.id, sent[2], now=NOW) == b"2"
    record = held(bob, alice.id)
    state = record.getSessionState()
    for at in range(0, len(record.skipped), 117):  # put the keys back where axolotl kept them
        ratchet, counter = record.skipped[at:at + 33], record.skipped[at + 33:at + 37]
        keys = record.skipped[at + 37:at + 117]
        chain, _ = state.getReceiverChain(Curve.decodePoint(bytearray(ratchet), 0))
        key = chain.messageKeys.add()
        key.index, key.cipherKey = int.from_bytes(counter), keys[:32]
        key.macKey, key.iv = keys[32:64], keys[64:]
    store.store_session(bob.conn, alice.id, DEVICE_ID, record.serialize())
    assert bob.crypto.decrypt(alice.id, sent[0], now=NOW) == b"0"
    assert store.load_session(bob.conn, alice.id, DEVICE_ID)[0] == 0x02
    assert len(held(bob, alice.id).skipped) == 117
    assert bob.crypto.decrypt(alice.id, sent[1], now=NOW) == b"1"


def test_a_damaged_record_is_a_store_error() -> None:
    alice, bob = make_user(), make_user()
    pair(alice, bob)
    blob = store.load_session(bob.conn, alice.id, DEVICE_ID)
    for bad in (blob[:3], blob + b"x", b"\x0a\xff"):
        with pytest.raises(CryptoStoreError):
            StoredSessionRecord.decode(bad)
