from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import FormatError, KeyFileError, PassphraseError, RecordError, SignatureError
from mesh.identity import (
    LAST_RESORT_PREKEY_ID,
    KeyPair,
    PreKey,
    Record,
    SignedPreKey,
    display_user_id,
    generate_prekeys,
    identity_is_protected,
    load_or_create_identity,
    parse_user_id,
    user_id_for_key,
    verify,
)

# The vector in docs/protocol.md: identity key 0x05 || bytes 0..31.
VECTOR_KEY = bytes([5]) + bytes(range(32))
VECTOR_ID = "165111482533427"


def make_record(identity: KeyPair | None = None, *, seq: int = 1,
                endpoints: tuple[str, ...] = ("ws://127.0.0.1:9000/mesh",)) -> Record:
    identity = identity or KeyPair.generate()
    spk = KeyPair.generate()
    return Record.create(
        identity, signed_prekey=SignedPreKey(7, spk.public, identity.sign(spk.public)),
        last_resort_prekey=PreKey(LAST_RESORT_PREKEY_ID, KeyPair.generate().public),
        endpoints=endpoints, seq=seq, now=1_700_000_000)


def test_user_id_vector() -> None:
    assert user_id_for_key(VECTOR_KEY) == VECTOR_ID


def test_user_id_construction_matches_the_documented_recipe() -> None:
    key = KeyPair.generate().public
    digest = b"parley/user-id/v1"
    for _ in range(5200):
        digest = hashlib.sha512(digest + key).digest()
    expected = int.from_bytes(digest[:8], "big") % 10**15
    assert user_id_for_key(key) == f"{expected:015d}"


def test_user_id_is_always_15_digits() -> None:
    ids = [KeyPair.generate().user_id for _ in range(20)]
    assert all(len(i) == 15 and i.isdigit() for i in ids)
    assert len(set(ids)) == 20


def test_user_id_rejects_malformed_keys() -> None:
    with pytest.raises(FormatError):
        user_id_for_key(bytes(33))  # wrong type byte
    with pytest.raises(FormatError):
        user_id_for_key(bytes([5]) + bytes(31))


def test_display_and_parse() -> None:
    assert display_user_id("012345678901234") == "012 345 678 901 234"
    assert parse_user_id("012 345 678-901 234") == "012345678901234"
    for bad in ["", "12345678901234", "1234567890123456", "12345678901234x", 123, None,
                "１２３４５６７８９０１２３４５"]:
        with pytest.raises(FormatError):
            parse_user_id(bad)


def test_sign_and_verify() -> None:
    pair = KeyPair.generate()
    sig = pair.sign(b"message")
    verify(pair.public, b"message", sig)
    with pytest.raises(SignatureError):
        verify(pair.public, b"messagf", sig)
    with pytest.raises(SignatureError):
        verify(KeyPair.generate().public, b"message", sig)
    with pytest.raises(SignatureError):
        verify(pair.public, b"message", sig[:63])


def test_key_pair_repr_hides_private_key() -> None:
    pair = KeyPair.generate()
    assert pair.private.hex() not in repr(pair)
    assert pair.private.hex()[:16] not in repr(pair)


def test_record_round_trips_json_and_binary() -> None:
    record = make_record()
    assert Record.from_json(record.to_json()) == record
    assert Record.decode(record.encode()) == record
    assert record.verify() is record


def test_record_canonical_encoding_is_stable() -> None:
    record = make_record()
    again = Record.from_json(record.to_json())
    assert again.signing_bytes() == record.signing_bytes()
    assert again.encode() == record.encode()


@pytest.mark.parametrize("change", [
    {"seq": 2},
    {"updated_at": 5},
    {"endpoints": ("ws://evil.example:1/mesh",)},
    {"last_resort_prekey": PreKey(LAST_RESORT_PREKEY_ID, KeyPair.generate().public)},
])
def test_tampered_record_fails(change: dict) -> None:
    record = replace(make_record(), **change)
    with pytest.raises(RecordError) as info:
        record.verify()
    assert info.value.reason == "bad_signature"


def test_record_with_key_substituted_fails_id_check() -> None:
    """A server cannot serve another key under someone's id, even if it re-signs."""
    victim = make_record()
    attacker = KeyPair.generate()
    forged = Record.create(attacker, signed_prekey=victim.signed_prekey,
                           last_resort_prekey=victim.last_resort_prekey,
                           endpoints=victim.endpoints, seq=victim.seq + 1, now=0)
    forged = replace(forged, user_id=victim.user_id)
    with pytest.raises(RecordError) as info:
        forged.verify()
    assert info.value.reason == "id_mismatch"


def test_signed_prekey_signature_is_checked() -> None:
    identity = KeyPair.generate()
    spk = KeyPair.generate()
    bad = SignedPreKey(1, spk.public, KeyPair.generate().sign(spk.public))
    record = Record.create(identity, signed_prekey=bad,
                           last_resort_prekey=PreKey(LAST_RESORT_PREKEY_ID, spk.public),
                           endpoints=(), seq=1, now=0)
    with pytest.raises(RecordError):
        record.verify()


@pytest.mark.parametrize("mutate", [
    lambda j: j.pop("seq"),
    lambda j: j.update(extra=1),
    lambda j: j.update(seq=True),
    lambda j: j.update(seq="1"),
    lambda j: j.update(seq=0),
    lambda j: j.update(id="12345"),
    lambda j: j.update(identity_key=j["identity_key"][:-4]),
    lambda j: j.update(identity_key=j["identity_key"] + " "),
    lambda j: j.update(endpoints=["http://x"]),
    lambda j: j.update(endpoints=["ws://a"] * 9),
    lambda j: j.update(endpoints="ws://a"),
    lambda j: j["last_resort_prekey"].update(id=5),
    lambda j: j["signed_prekey"].update(id=-1),
])
def test_record_from_json_rejects_malformed(mutate) -> None:
    obj = make_record().to_json()
    mutate(obj)
    with pytest.raises(RecordError):
        Record.from_json(obj)


def test_record_decode_rejects_non_canonical_encoding() -> None:
    record = make_record()
    body, sig = msgpack.unpackb(record.encode())
    padded = msgpack.packb([body, sig, b""], use_bin_type=True)
    with pytest.raises(RecordError):
        Record.decode(padded)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_from_json_raises_only_record_error(obj) -> None:
    with pytest.raises(RecordError):
        Record.from_json(obj)


_VALID = make_record().to_json()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_VALID)), json_values)
def test_from_json_with_one_field_replaced(field: str, value) -> None:
    obj = dict(_VALID, **{field: value})
    try:
        Record.from_json(obj)
    except RecordError:
        return
    assert obj == _VALID  # only the untouched record may verify


_ENCODED = make_record().encode()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.builds(
    lambda i, b: _ENCODED[:i] + bytes([b]) + _ENCODED[i + 1:],
    st.integers(0, len(_ENCODED) - 1), st.integers(0, 255)))
def test_decode_raises_only_record_error(data: bytes) -> None:
    try:
        record = Record.decode(data)
    except RecordError:
        return
    assert record.encode() == data == _ENCODED


def test_generate_prekeys_ids_wrap_and_stay_in_range() -> None:
    keys = generate_prekeys(0xFFFFFD, 4)
    assert [p.id for p, _ in keys] == [0xFFFFFD, 0xFFFFFE, 1, 2]
    assert all(p.public_key == pair.public for p, pair in keys)


def test_identity_file_is_private_and_stable(tmp_path) -> None:
    data_dir = tmp_path / "data"
    first = load_or_create_identity(data_dir)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "identity.key").stat().st_mode) == 0o600
    assert load_or_create_identity(data_dir) == first


def test_identity_file_readable_by_others_is_refused(tmp_path) -> None:
    load_or_create_identity(tmp_path)
    os.chmod(tmp_path / "identity.key", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_identity(tmp_path)


def test_corrupt_identity_file_is_refused(tmp_path) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(b"garbage")
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        load_or_create_identity(tmp_path)
    pair = KeyPair.generate()
    path.write_bytes(msgpack.packb({"v": 1, "public": pair.public,
                                    "private": KeyPair.generate().private}))
    with pytest.raises(KeyFileError, match="does not match"):
        load_or_create_identity(tmp_path)


def test_identity_key_wrapped_with_a_passphrase(tmp_path) -> None:
    pair = load_or_create_identity(tmp_path, b"pass phrase")
    path = tmp_path / "identity.key"
    stored = path.read_bytes()
    assert pair.private not in stored
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        load_or_create_identity(tmp_path, b"other phrase")
    with pytest.raises(PassphraseError, match="protected by a passphrase"):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == stored  # refusals change nothing
    assert identity_is_protected(tmp_path)
    assert load_or_create_identity(tmp_path, b"pass phrase") == pair
    with pytest.raises(PassphraseError, match="empty"):
        load_or_create_identity(tmp_path / "new", b"")


def test_doctored_key_wrapping_is_refused_before_any_work(tmp_path) -> None:
    """A key file cannot make us run Argon2id with absurd costs."""
    path = tmp_path / "identity.key"
    base = {"v": 2, "public": KeyPair.generate().public, "kdf": "argon2id13", "ops": 3,
            "mem": 1 << 28, "salt": b"s" * 16, "box": b"b" * 72}
    for change in ({"mem": 1 << 40}, {"ops": 10**9}, {"kdf": "scrypt"}, {"salt": b"s"},
                   {"box": "text"}):
        path.write_bytes(msgpack.packb({**base, **change}))
        path.chmod(0o600)
        with pytest.raises(KeyFileError, match="unsupported key wrapping"):
            load_or_create_identity(tmp_path, b"x")
    assert not identity_is_protected(tmp_path / "nowhere")
