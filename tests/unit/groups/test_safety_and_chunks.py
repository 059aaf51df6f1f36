"""Safety numbers (Signal's vector) and attachment chunk encryption."""

from __future__ import annotations

import os

import pytest

from groups import crypto
from groups.crypto import symmetric
from groups.errors import ChunkError, CryptoUsageError
from mesh.identity import KeyPair

# libsignal's NumericFingerprintGeneratorTest vector (5200 iterations).
ALICE = bytes.fromhex("0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
BOB = bytes.fromhex("05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")
DISPLAYABLE = "300354477692869396892869876765458257569162576843440918079131"


def test_fingerprint_matches_signal() -> None:
    a = symmetric._digits(symmetric._iterated(ALICE, b"+14152222222"))
    b = symmetric._digits(symmetric._iterated(BOB, b"+14153333333"))
    assert min(a, b) + max(a, b) == DISPLAYABLE


def test_safety_number_is_symmetric_and_key_bound() -> None:
    a, b, c = (KeyPair.generate().public for _ in range(3))
    number = crypto.safety_number(a, b)
    assert len(number) == 60 and number.isdigit()
    assert crypto.safety_number(b, a) == number
    assert crypto.safety_number(a, c) != number
    shown_by_a = crypto.safety_number_qr(a, b)
    assert shown_by_a.startswith("parley-sn:1:")
    assert crypto.compare_safety_qr(b, a, shown_by_a)      # b scans a's screen
    assert not crypto.compare_safety_qr(a, b, shown_by_a)  # a's own code is not b's view
    assert not crypto.compare_safety_qr(b, c, shown_by_a)
    assert not crypto.compare_safety_qr(b, a, "parley-sn:1:00")
    with pytest.raises(CryptoUsageError):
        crypto.safety_number(a, b"\x05short")


def test_chunks_round_trip_and_cannot_move() -> None:
    key, other_key = crypto.new_attachment_key(), crypto.new_attachment_key()
    file_id, other_file = os.urandom(32), os.urandom(32)
    data = os.urandom(crypto.ATTACHMENT_CHUNK_SIZE * 2 + 100)
    count = crypto.attachment_chunk_count(len(data))
    assert count == 3 and crypto.attachment_chunk_count(0) == 1
    pieces = [data[i:i + crypto.ATTACHMENT_CHUNK_SIZE]
              for i in range(0, len(data), crypto.ATTACHMENT_CHUNK_SIZE)]
    sealed = [crypto.encrypt_chunk(key, file_id, i, count, p) for i, p in enumerate(pieces)]
    assert b"".join(crypto.decrypt_chunk(key, file_id, i, count, s)
                    for i, s in enumerate(sealed)) == data
    for args in ((key, file_id, 1, count, sealed[0]),       # reordered
                 (key, other_file, 0, count, sealed[0]),    # swapped to another file
                 (other_key, file_id, 0, count, sealed[0]),
                 (key, file_id, 1, 2, sealed[1]),           # truncated file
                 (key, file_id, 0, count, sealed[0][:-1])):
        with pytest.raises(ChunkError):
            crypto.decrypt_chunk(*args)
    with pytest.raises(CryptoUsageError):
        crypto.encrypt_chunk(key, file_id, 3, count, b"")
    with pytest.raises(CryptoUsageError):
        crypto.encrypt_chunk(key, file_id, 0, 1, bytes(crypto.ATTACHMENT_CHUNK_SIZE + 1))
    with pytest.raises(CryptoUsageError):  # file ids are 32 bytes, as on the wire
        crypto.encrypt_chunk(key, file_id[:16], 0, count, b"")
