"""groups.store: schema, atomic blocks, and the prekey lifecycle on top of it."""

from __future__ import annotations

import pytest

from groups import prekeys, schema, store
from groups.errors import CryptoUsageError, UnknownKey
from mesh.identity import LAST_RESORT_PREKEY_ID, verify
from tests.unit.groups.helpers import NOW, make_user

DAY = 86400


def test_schema_version_and_reopen(tmp_path) -> None:
    path = tmp_path / "node.db"
    conn = store.open_store(path)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == len(
        schema.MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.save_identity(conn, "1" * 15, b"\x05" + bytes(32), NOW)
    conn.close()
    conn = store.open_store(path)
    assert store.load_identity(conn, "1" * 15) == b"\x05" + bytes(32)
    conn.close()


def test_atomic_nests_and_rolls_back() -> None:
    conn = store.open_store(":memory:")
    with store.atomic(conn):
        store.store_prekey(conn, 1, b"a", NOW)
        with pytest.raises(RuntimeError), store.atomic(conn):
            store.store_prekey(conn, 2, b"b", NOW)
            raise RuntimeError
        assert store.contains_prekey(conn, 1) and not store.contains_prekey(conn, 2)
    assert not conn.in_transaction
    with pytest.raises(RuntimeError), store.atomic(conn):
        store.store_prekey(conn, 3, b"c", NOW)
        raise RuntimeError
    assert not store.contains_prekey(conn, 3) and store.contains_prekey(conn, 1)


def test_last_resort_prekey_is_never_removed() -> None:
    conn = store.open_store(":memory:")
    store.store_prekey(conn, LAST_RESORT_PREKEY_ID, b"x", NOW)
    store.remove_prekey(conn, LAST_RESORT_PREKEY_ID, keep=LAST_RESORT_PREKEY_ID)
    assert store.contains_prekey(conn, LAST_RESORT_PREKEY_ID)


def test_initial_prekeys_are_signed_and_counted() -> None:
    user = make_user()
    update = prekeys.initial_prekeys(user.crypto, NOW)
    assert update.record_changed and len(update.one_time_prekeys) == 100
    assert len({p.id for p in update.one_time_prekeys}) == 100
    assert LAST_RESORT_PREKEY_ID not in {p.id for p in update.one_time_prekeys}
    spk = update.signed_prekey
    verify(user.identity.public, spk.public_key, spk.signature)  # what axolotl checks
    record = prekeys.build_record(user.identity, update, endpoints=(), seq=1, now=NOW)
    assert record.verify().last_resort_prekey == user.crypto.last_resort_prekey()
    assert user.crypto.one_time_prekeys_left() == 100
    more = user.crypto.generate_one_time_prekeys(5, NOW)
    assert {p.id for p in more}.isdisjoint(p.id for p in update.one_time_prekeys)


def test_refill_threshold() -> None:
    assert prekeys.needs_refill(39) and not prekeys.needs_refill(40)
    assert prekeys.refill_count(19) == 81 and prekeys.refill_count(150) == 0
    user = make_user()
    prekeys.initial_prekeys(user.crypto, NOW)
    quiet = prekeys.maintain_prekeys(user.crypto, NOW + 60, server_left=50)
    assert quiet.one_time_prekeys == () and not quiet.record_changed
    low = prekeys.maintain_prekeys(user.crypto, NOW + 60, server_left=3)
    assert len(low.one_time_prekeys) == 97 and not low.record_changed
    assert prekeys.maintain_prekeys(user.crypto, NOW, server_left=None).one_time_prekeys == ()


def test_signed_prekey_rotates_weekly_and_old_one_lasts_the_grace_period() -> None:
    alice, bob = make_user(), make_user()
    prekeys.initial_prekeys(bob.crypto, NOW)
    old_record = bob.record()
    assert not prekeys.maintain_prekeys(bob.crypto, NOW + 6 * DAY, server_left=100).record_changed
    rotated = prekeys.maintain_prekeys(bob.crypto, NOW + 7 * DAY, server_left=100)
    assert rotated.record_changed and rotated.signed_prekey != old_record.signed_prekey
    assert rotated.last_resort_prekey == old_record.last_resort_prekey
    # A session built on the old record (a late message) still works in the grace period.
    alice.crypto.start_session(old_record, old_record.last_resort_prekey, now=NOW)
    late = alice.crypto.encrypt(bob.id, b"late")
    prekeys.maintain_prekeys(bob.crypto, NOW + 20 * DAY, server_left=100)
    assert bob.crypto.decrypt(alice.id, late, now=NOW + 20 * DAY) == b"late"
    # After it, the old signed prekey is gone.
    carol = make_user()
    carol.crypto.start_session(old_record, old_record.last_resort_prekey, now=NOW)
    prekeys.maintain_prekeys(bob.crypto, NOW + 38 * DAY, server_left=100)
    assert not store.contains_signed_prekey(bob.conn, old_record.signed_prekey.id)
    with pytest.raises(UnknownKey):
        bob.crypto.decrypt(carol.id, carol.crypto.encrypt(bob.id, b"too late"), now=NOW)


def test_sender_key_due_by_use_and_age() -> None:
    user = make_user()
    group = bytes(16)
    with pytest.raises(CryptoUsageError):
        user.crypto.encrypt_group(b"x", b"")
    user.crypto.sender_key_distribution(group, now=NOW)
    assert not prekeys.sender_key_due(user.crypto, group, NOW + 6 * DAY)
    assert prekeys.sender_key_due(user.crypto, group, NOW + 7 * DAY)
    for _ in range(prekeys.SENDER_KEY_MAX_MESSAGES):
        user.crypto.encrypt_group(group, b"")
    assert prekeys.sender_key_due(user.crypto, group, NOW)
    user.crypto.rotate_sender_key(group, now=NOW)
    assert not prekeys.sender_key_due(user.crypto, group, NOW)
