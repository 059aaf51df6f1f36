"""Safety numbers and attachment chunk encryption: the parts of Parley's crypto that need
no python-axolotl. Part of the groups.crypto package (import from there); see
docs/protocol.md §7 for the exact formats.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from groups.errors import ChunkError, CryptoUsageError
from mesh.identity import user_id_for_key

__all__ = [
    "ATTACHMENT_CHUNK_SIZE",
    "ATTACHMENT_FILE_ID_LEN",
    "attachment_chunk_count",
    "compare_safety_qr",
    "decrypt_chunk",
    "encrypt_chunk",
    "new_attachment_key",
    "safety_number",
    "safety_number_qr",
]

# Safety numbers

_FINGERPRINT_VERSION = b"\x00\x00"
_FINGERPRINT_ROUNDS = 5200


def _iterated(identity_key: bytes, stable_id: bytes, rounds: int = _FINGERPRINT_ROUNDS) -> bytes:
    """Signal's NumericFingerprintGenerator: h = 0x0000 || key || id, then ``rounds``
    times h = SHA-512(h || key)."""
    digest = _FINGERPRINT_VERSION + identity_key + stable_id
    for _ in range(rounds):
        digest = hashlib.sha512(digest + identity_key).digest()
    return digest


@lru_cache(maxsize=256)
def _fingerprint(identity_key: bytes) -> bytes:
    """A user's fingerprint; the stable identifier is the 15-digit user ID."""
    return _iterated(identity_key, user_id_for_key(identity_key).encode("ascii"))


def _digits(fingerprint: bytes) -> str:
    return "".join(f"{int.from_bytes(fingerprint[i:i + 5], 'big') % 100000:05d}"
                   for i in range(0, 30, 5))


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != 33 or key[0] != 0x05:
        raise CryptoUsageError("identity key must be 33 bytes starting with 0x05")
    return key


def safety_number(key_a: bytes, key_b: bytes) -> str:
    """The 60-digit safety number of two identity keys (the same from both sides)."""
    halves = sorted(_digits(_fingerprint(_check_key(k))) for k in (key_a, key_b))
    return halves[0] + halves[1]


def safety_number_qr(local_key: bytes, remote_key: bytes) -> str:
    """QR payload shown by the local user: ``parley-sn:1:<local fp>:<remote fp>`` (hex,
    32 bytes each). The other side scans it and checks it with compare_safety_qr."""
    local, remote = _fingerprint(_check_key(local_key)), _fingerprint(_check_key(remote_key))
    return f"parley-sn:1:{local[:32].hex()}:{remote[:32].hex()}"


def compare_safety_qr(local_key: bytes, remote_key: bytes, scanned: str) -> bool:
    """True if a payload scanned from the remote user's screen shows our two keys."""
    expected = safety_number_qr(remote_key, local_key)
    return isinstance(scanned, str) and hmac.compare_digest(scanned.encode("ascii", "replace"),
                                                            expected.encode("ascii"))


# Attachments

ATTACHMENT_CHUNK_SIZE = 256 * 1024
_CHUNK_AAD = b"parley/chunk/v1"
ATTACHMENT_FILE_ID_LEN = 32  # the wire's ID_LEN: ChunkRequest/Chunk and FileRef carry 32
_MAX_CHUNKS = 2**32 - 1


def new_attachment_key() -> bytes:
    """A fresh AES-256-GCM key for one file (never reused for another file)."""
    return AESGCM.generate_key(bit_length=256)


def attachment_chunk_count(size: int) -> int:
    """Chunks a file of ``size`` bytes is cut into (an empty file is one empty chunk)."""
    return max(1, -(-size // ATTACHMENT_CHUNK_SIZE))


def _chunk_params(file_id: bytes, index: int, count: int) -> tuple[bytes, bytes]:
    if not isinstance(file_id, bytes) or len(file_id) != ATTACHMENT_FILE_ID_LEN:
        raise CryptoUsageError(f"file id must be {ATTACHMENT_FILE_ID_LEN} bytes")
    if not 0 < count <= _MAX_CHUNKS or not 0 <= index < count:
        raise CryptoUsageError("chunk index out of range")
    nonce = index.to_bytes(8, "big") + bytes(4)
    aad = _CHUNK_AAD + file_id + struct.pack(">II", index, count)
    return nonce, aad


def encrypt_chunk(key: bytes, file_id: bytes, index: int, count: int, chunk: bytes) -> bytes:
    """Encrypt chunk ``index`` of ``count``: nonce = index, AAD = file id, index, count,
    so chunks cannot be reordered, dropped at the end, or moved to another file."""
    if len(chunk) > ATTACHMENT_CHUNK_SIZE:
        raise CryptoUsageError("chunk larger than 256 KiB")
    nonce, aad = _chunk_params(file_id, index, count)
    return AESGCM(key).encrypt(nonce, chunk, aad)


def decrypt_chunk(key: bytes, file_id: bytes, index: int, count: int, data: bytes) -> bytes:
    """Inverse of encrypt_chunk; ChunkError unless the chunk is exactly the one named."""
    nonce, aad = _chunk_params(file_id, index, count)
    if not isinstance(data, bytes) or len(data) > ATTACHMENT_CHUNK_SIZE + 16:
        raise ChunkError("chunk has the wrong size")
    try:
        return AESGCM(key).decrypt(nonce, data, aad)
    except (InvalidTag, ValueError) as exc:
        raise ChunkError("chunk does not authenticate") from exc
