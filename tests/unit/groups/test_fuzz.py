"""Every decrypt entry point on random and mutated bytes: our typed errors, nothing else,
and never a hang (pytest-timeout and the hypothesis deadline catch those)."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from groups import crypto
from groups.errors import CryptoError, DecryptError, Throttled
from tests.unit.groups.helpers import NOW, make_user, new_group_id, pair, share_sender_keys

FUZZ = settings(max_examples=300, deadline=timedelta(milliseconds=500),
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world():
    alice, bob = make_user(), make_user()
    pair(alice, bob)
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    samples = {
        "prekey": None,
        "whisper": alice.crypto.encrypt(bob.id, b"pairwise payload"),
        "group": alice.crypto.encrypt_group(group, b"group payload"),
        "distribution": alice.crypto.sender_key_distribution(group, now=NOW),
    }
    carol = make_user()
    carol.crypto.start_session(bob.record(), bob.crypto.last_resort_prekey(), now=NOW)
    samples["prekey"] = carol.crypto.encrypt(bob.id, b"first contact")
    return alice, bob, carol, group, samples


@st.composite
def mutated(draw, sample: bytes) -> bytes:
    data = bytearray(sample)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "varint"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:  # a large varint where a small number was, e.g. a counter or key id
            data[pos:pos + 1] = b"\xff\xff\xff\xff\x0f"
    return bytes(data)


_SAMPLES: dict[str, bytes] = {}


def _decrypt_pairwise(world, data: bytes) -> None:
    alice, bob, carol, _group, _ = world
    for sender in (alice.id, carol.id):
        try:
            plain = bob.crypto.decrypt(sender, data, now=NOW)
        except CryptoError:
            continue
        # Unauthenticated outer fields (registration id, say) may change harmlessly;
        # whatever decrypts is one of the genuine plaintexts.
        assert plain in (b"pairwise payload", b"first contact")


@pytest.fixture(scope="module", autouse=True)
def _samples(world):
    _SAMPLES.update(world[4])


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), st.deferred(lambda: mutated(_SAMPLES["whisper"])),
                      st.deferred(lambda: mutated(_SAMPLES["prekey"]))))
def test_pairwise_decrypt(world, data) -> None:
    _decrypt_pairwise(world, data)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), st.deferred(lambda: mutated(_SAMPLES["group"]))))
def test_group_decrypt_and_verify(world, data) -> None:
    alice, bob, _carol, group, _ = world
    with contextlib.suppress(DecryptError, Throttled):
        bob.crypto.verify_group_message(group, alice.id, data, now=NOW)
    with contextlib.suppress(DecryptError):
        assert bob.crypto.decrypt_group(group, alice.id, data) == b"group payload"


@FUZZ
@given(data=st.one_of(st.binary(max_size=200),
                      st.deferred(lambda: mutated(_SAMPLES["distribution"]))))
def test_distribution(world, data) -> None:
    alice, bob, _carol, _group, _ = world
    with contextlib.suppress(CryptoError):
        bob.crypto.process_sender_key_distribution(new_group_id(), alice.id, data, now=NOW)


@FUZZ
@given(index=st.integers(0, 3), data=st.binary(max_size=400))
def test_chunks(index, data) -> None:
    key, file_id = bytes(32), bytes(32)
    good = crypto.encrypt_chunk(key, file_id, index, 4, b"chunk")
    for candidate in (data, good[:-1] + bytes([good[-1] ^ 1]), good[1:]):
        try:
            crypto.decrypt_chunk(key, file_id, index, 4, candidate)
        except DecryptError:
            continue
        raise AssertionError("a forged chunk decrypted")
