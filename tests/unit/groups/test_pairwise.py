"""Pairwise Signal sessions through groups.crypto with real SQLite key stores."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from groups import crypto, store
from groups.errors import (
    BadBundle,
    CryptoError,
    CryptoStoreError,
    CryptoUsageError,
    DecryptError,
    DuplicateMessage,
    IdentityChanged,
    IdentityMismatch,
    InvalidCiphertext,
    MalformedMessage,
    NoSession,
    UnknownKey,
)
from mesh.errors import RemoteError
from mesh.identity import LAST_RESORT_PREKEY_ID, KeyPair, PreKey
from tests.unit.groups.helpers import NOW, ROOT, make_user, pair


def test_first_message_is_prekey_message_then_whisper() -> None:
    alice, bob = make_user(), make_user()
    prekey = bob.prekey()
    alice.crypto.start_session(bob.record(), prekey, now=NOW)
    first, second = (alice.crypto.encrypt(bob.id, m) for m in (b"one", b"two"))
    assert first[0] == 3 and second[0] == 3  # unacknowledged: still prekey messages
    assert bob.crypto.decrypt(alice.id, first, now=NOW) == b"one"
    assert bob.crypto.decrypt(alice.id, second, now=NOW) == b"two"
    assert not store.contains_prekey(bob.conn, prekey.id)  # one-time prekey used up
    reply = bob.crypto.encrypt(alice.id, b"three")
    assert reply[0] == 2
    assert alice.crypto.decrypt(bob.id, reply, now=NOW) == b"three"
    after = alice.crypto.encrypt(bob.id, b"four")
    assert after[0] == 2
    assert bob.crypto.decrypt(alice.id, after, now=NOW) == b"four"
    assert alice.crypto.identity_key_of(bob.id) == bob.identity.public
    assert bob.crypto.identity_key_of(alice.id) == alice.identity.public


def test_last_resort_prekey_starts_sessions_and_is_never_deleted() -> None:
    bob = make_user()
    last = bob.crypto.last_resort_prekey()
    assert last.id == LAST_RESORT_PREKEY_ID and last == bob.record().last_resort_prekey
    for _ in range(2):
        alice = make_user()
        alice.crypto.start_session(bob.record(), last, now=NOW)
        assert bob.crypto.decrypt(alice.id, alice.crypto.encrypt(bob.id, b"x"), now=NOW) == b"x"
        assert store.contains_prekey(bob.conn, LAST_RESORT_PREKEY_ID)


def test_bundle_without_any_prekey_fails_in_the_receiver() -> None:
    """python-axolotl's receiver reads an unset preKeyId as 0 and finds no such key.
    The public API therefore demands a prekey; the raw path shows why."""
    alice, bob = make_user(), make_user()
    alice.crypto._process_bundle(bob.record(), None, NOW)
    message = alice.crypto.encrypt(bob.id, b"lost")
    with pytest.raises(UnknownKey):
        bob.crypto.decrypt(alice.id, message, now=NOW)
    assert not bob.crypto.has_session(alice.id)  # nothing of it was stored


def test_bundle_checks() -> None:
    alice, bob = make_user(), make_user()
    record = bob.record()
    with pytest.raises(BadBundle):  # last-resort id with a key that is not the record's
        alice.crypto.start_session(record, PreKey(LAST_RESORT_PREKEY_ID, KeyPair.generate().public),
                                   now=NOW)
    forged = replace(record, signed_prekey=replace(record.signed_prekey,
                                                   public_key=KeyPair.generate().public))
    with pytest.raises(BadBundle):
        alice.crypto.start_session(forged, bob.prekey(), now=NOW)
    with pytest.raises(CryptoUsageError):
        bob.crypto.start_session(record, bob.prekey(), now=NOW)
    assert not alice.crypto.has_session(bob.id)
    with pytest.raises(NoSession):
        alice.crypto.encrypt(bob.id, b"x")


def test_out_of_order_within_window_and_duplicates() -> None:
    alice, bob = make_user(), make_user()
    pair(alice, bob)
    messages = [alice.crypto.encrypt(bob.id, f"m{i}".encode()) for i in range(6)]
    for i in (3, 0, 5, 1, 4, 2):
        assert bob.crypto.decrypt(alice.id, messages[i], now=NOW) == f"m{i}".encode()
    for m in (messages[0], messages[5]):
        with pytest.raises(DuplicateMessage) as info:
            bob.crypto.decrypt(alice.id, m, now=NOW)
        assert isinstance(info.value, RemoteError) and info.value.reason == "duplicate"


def test_tampering_is_rejected_and_changes_nothing() -> None:
    alice, bob = make_user(), make_user()
    pair(alice, bob)
    good = alice.crypto.encrypt(bob.id, b"payload")
    before = store.load_session(bob.conn, alice.id, 1)
    for i in range(1, len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        with pytest.raises(DecryptError):
            bob.crypto.decrypt(alice.id, bytes(bad), now=NOW)
    assert store.load_session(bob.conn, alice.id, 1) == before
    with pytest.raises(MalformedMessage):
        bob.crypto.decrypt(alice.id, b"\x07" + good[1:], now=NOW)
    assert bob.crypto.decrypt(alice.id, good, now=NOW) == b"payload"


def test_message_from_someone_else_is_rejected() -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    pair(alice, bob)
    pair(carol, bob)
    to_bob = alice.crypto.encrypt(bob.id, b"for bob")
    with pytest.raises(InvalidCiphertext):  # claimed to come from carol
        bob.crypto.decrypt(carol.id, to_bob, now=NOW)
    # A prekey message whose identity key is not the claimed sender's.
    mallory = make_user()
    mallory.crypto.start_session(bob.record(), bob.prekey(), now=NOW)
    with pytest.raises(IdentityMismatch):
        bob.crypto.decrypt(alice.id, mallory.crypto.encrypt(bob.id, b"hi"), now=NOW)


def test_changed_identity_is_not_trusted_silently() -> None:
    alice, bob = make_user(), make_user()
    # As if alice had met another key under bob's ID before (IDs are self-certifying,
    # so only a ground 50-bit collision or a damaged store gets here).
    other = KeyPair.generate().public
    store.save_identity(alice.conn, bob.id, other, NOW)
    with pytest.raises(IdentityChanged) as info:
        alice.crypto.start_session(bob.record(), bob.prekey(), now=NOW)
    assert info.value.user_id == bob.id and info.value.identity_key == bob.identity.public
    assert info.value.reason == "identity_changed" and isinstance(info.value, RemoteError)
    assert not alice.crypto.has_session(bob.id)
    # Incoming direction: bob's prekey message to alice is refused the same way.
    bob.crypto.start_session(alice.record(), alice.prekey(), now=NOW)
    with pytest.raises(IdentityChanged):
        alice.crypto.decrypt(bob.id, bob.crypto.encrypt(alice.id, b"x"), now=NOW)
    with pytest.raises(CryptoUsageError):
        alice.crypto.trust_identity(bob.id, other, now=NOW)
    alice.crypto.trust_identity(bob.id, bob.identity.public, now=NOW)
    assert alice.crypto.decrypt(bob.id, bob.crypto.encrypt(alice.id, b"y"), now=NOW) == b"y"


def test_sessions_resume_after_reopening_the_database(tmp_path) -> None:
    alice, bob = make_user(tmp_path / "a.db"), make_user(tmp_path / "b.db")
    pair(alice, bob)
    in_flight = [alice.crypto.encrypt(bob.id, f"{i}".encode()) for i in range(3)]
    assert bob.crypto.decrypt(alice.id, in_flight[0], now=NOW) == b"0"
    alice, bob = alice.reopen(), bob.reopen()
    assert bob.crypto.decrypt(alice.id, in_flight[2], now=NOW) == b"2"
    assert bob.crypto.decrypt(alice.id, in_flight[1], now=NOW) == b"1"
    with pytest.raises(DuplicateMessage):
        bob.crypto.decrypt(alice.id, in_flight[0], now=NOW)
    assert alice.crypto.decrypt(bob.id, bob.crypto.encrypt(alice.id, b"back"), now=NOW) == b"back"


def test_store_refuses_another_identity(tmp_path) -> None:
    alice = make_user(tmp_path / "a.db")
    alice.conn.close()
    conn = store.open_store(tmp_path / "a.db")
    try:
        with pytest.raises(CryptoStoreError):
            crypto.Crypto(conn, KeyPair.generate(), now=NOW)
    finally:
        conn.close()


KILLED_SENDER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from groups import crypto, store
    from mesh.identity import KeyPair
    identity = KeyPair(bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]))
    c = crypto.Crypto(store.open_store(sys.argv[1]), identity, now=0)
    for i in range(3):
        sys.stdout.write(c.encrypt(sys.argv[4], b"m%d" % i).hex() + "\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), 9)
""")


def test_session_survives_a_killed_process(tmp_path) -> None:
    """Kill -9 right after encrypting: reopening continues the chain exactly."""
    alice, bob = make_user(tmp_path / "a.db"), make_user(tmp_path / "b.db")
    pair(alice, bob)
    alice.conn.close()
    script = KILLED_SENDER.format(root=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script, alice.path, alice.identity.public.hex(),
                           alice.identity.private.hex(), bob.id],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -9, proc.stderr
    sent = [bytes.fromhex(line) for line in proc.stdout.split()]
    alice = alice.reopen()
    later = alice.crypto.encrypt(bob.id, b"after")
    assert [bob.crypto.decrypt(alice.id, m, now=NOW) for m in sent] == [b"m0", b"m1", b"m2"]
    assert bob.crypto.decrypt(alice.id, later, now=NOW) == b"after"


def test_errors_are_typed() -> None:
    alice, bob = make_user(), make_user()
    for data in (b"", b"\x02", b"\x03", b"\x02\x33", b"\x03" + bytes(100), b"\x09abc"):
        with pytest.raises(CryptoError):
            bob.crypto.decrypt(alice.id, data, now=NOW)
    carol = make_user()
    pair(alice, carol)
    whisper = alice.crypto.encrypt(carol.id, b"x")
    assert whisper[0] == 2
    with pytest.raises(UnknownKey):  # a whisper message, but bob has no session with alice
        bob.crypto.decrypt(alice.id, whisper, now=NOW)
