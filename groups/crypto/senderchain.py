"""One sender-key state (libsignal's SenderKeyState) in Parley's own storage format.

python-axolotl keeps a state as a protobuf holding every skipped message key as a
sub-message, and its GroupCipher loads, parses and re-serializes a member's whole record
(up to 5 states) for each message: with 2000 skipped keys per state that was ~100 ms of
CPU per message, and a member who skipped ahead on purpose made each later message of
theirs that slow to read (issue 15). Here the skipped keys are one flat byte string of
fixed-size records, found by binary search and cut out by slicing, so what a message
costs does not grow with them. The derivation is libsignal's: the message key seed is
HMAC-SHA256(chain key, 0x01), the next chain key HMAC-SHA256(chain key, 0x02) (tested
against python-axolotl's SenderChainKey).

Layout (docs/protocol.md §7, "Storage"):

    0x02 || u32be key_id || u32be iteration || chain_key (32) || signing_public (33)
         || u8 len(signing_private) (0 or 32) || signing_private
         || skipped: n x (u32be iteration || message key seed (32)), ascending iteration

A state written by earlier versions (the axolotl protobuf) is read as well and written
back in this layout the next time it changes.
"""

from __future__ import annotations

import bisect
import hmac
import struct
from dataclasses import dataclass, replace

from axolotl.state.storageprotos_pb2 import SenderKeyStateStructure
from google.protobuf.message import DecodeError

from groups.errors import CryptoStoreError, DuplicateMessage

__all__ = ["SKIPPED_RECORD", "SenderChain", "skipped_in_received"]

_FORMAT = 0x02
_HEADER = struct.Struct(">BII32s33sB")
SKIPPED_RECORD = 4 + 32  # u32be iteration || seed
_MESSAGE_KEY_SEED = b"\x01"
_CHAIN_KEY_SEED = b"\x02"


def skipped_in_received(size: int) -> int:
    """Skipped keys in a stored state of another member (no private key) of ``size``
    bytes, read without loading it. For a state still in the old protobuf format this
    overestimates a little (its records are 38-42 bytes), which only makes a cap stricter.
    """
    return max(0, size - _HEADER.size) // SKIPPED_RECORD


@dataclass(frozen=True, repr=False)
class SenderChain:
    """A sender-key chain: its id, where it stands, its signing key, its skipped keys.

    ``iteration`` is the position of ``chain_key``: the next message key it derives.
    ``signing_private`` is empty except for our own chain.
    """

    key_id: int
    iteration: int
    chain_key: bytes
    signing_public: bytes
    signing_private: bytes = b""
    skipped: bytes = b""

    def __repr__(self) -> str:  # never the keys
        return (f"SenderChain(key_id={self.key_id}, iteration={self.iteration}, "
                f"skipped={self.skipped_count})")

    @property
    def skipped_count(self) -> int:
        return len(self.skipped) // SKIPPED_RECORD

    def encode(self) -> bytes:
        return _HEADER.pack(_FORMAT, self.key_id, self.iteration, self.chain_key,
                            self.signing_public, len(self.signing_private)) \
            + self.signing_private + self.skipped

    @classmethod
    def decode(cls, blob: bytes) -> SenderChain:
        """Read a stored state (this layout, or the protobuf of earlier versions)."""
        if blob[:1] != bytes([_FORMAT]):
            return cls._decode_protobuf(blob)
        try:
            _, key_id, iteration, chain_key, public, private_len = _HEADER.unpack_from(blob)
        except struct.error as exc:
            raise CryptoStoreError("stored sender key is truncated") from exc
        private = blob[_HEADER.size:_HEADER.size + private_len]
        skipped = blob[_HEADER.size + private_len:]
        if private_len not in (0, 32) or len(private) != private_len \
                or len(skipped) % SKIPPED_RECORD:
            raise CryptoStoreError("stored sender key has a bad layout")
        return cls(key_id, iteration, chain_key, public, private, skipped)

    @classmethod
    def _decode_protobuf(cls, blob: bytes) -> SenderChain:
        structure = SenderKeyStateStructure()
        try:
            structure.ParseFromString(blob)
        except DecodeError as exc:
            raise CryptoStoreError("stored sender key does not parse") from exc
        keys = sorted((k.iteration, bytes(k.seed)) for k in structure.senderMessageKeys)
        return cls(structure.senderKeyId, structure.senderChainKey.iteration,
                   bytes(structure.senderChainKey.seed),
                   bytes(structure.senderSigningKey.public),
                   bytes(structure.senderSigningKey.private),
                   b"".join(i.to_bytes(4, "big") + seed for i, seed in keys))

    def next_seed(self) -> tuple[bytes, SenderChain]:
        """Our own chain: the seed of the message key at ``iteration``, and the chain
        moved one step on."""
        return (hmac.digest(self.chain_key, _MESSAGE_KEY_SEED, "sha256"),
                replace(self, iteration=self.iteration + 1,
                        chain_key=hmac.digest(self.chain_key, _CHAIN_KEY_SEED, "sha256")))

    def seed_for(self, iteration: int, *, keep: int) -> tuple[bytes, SenderChain]:
        """The seed of the message key at ``iteration`` and the chain after using it.

        An earlier iteration takes its key out of the skipped ones (DuplicateMessage if
        it is not there: already read, or dropped). A later one moves the chain there,
        keeping the keys it passes; if it passes any, at most ``keep`` skipped keys
        remain (the oldest go first). The caller bounds how far ahead it may be.
        """
        if iteration < self.iteration:
            index = self._find(iteration)
            if index is None:
                raise DuplicateMessage("message already received, or its key was dropped")
            start = index * SKIPPED_RECORD
            return (self.skipped[start + 4:start + SKIPPED_RECORD],
                    replace(self, skipped=self.skipped[:start]
                            + self.skipped[start + SKIPPED_RECORD:]))
        chain, passed = self.chain_key, []
        for i in range(self.iteration, iteration):
            passed.append(i.to_bytes(4, "big") + hmac.digest(chain, _MESSAGE_KEY_SEED, "sha256"))
            chain = hmac.digest(chain, _CHAIN_KEY_SEED, "sha256")
        skipped = self.skipped
        if passed:
            skipped += b"".join(passed)
            skipped = skipped[max(0, len(skipped) - keep * SKIPPED_RECORD):] if keep > 0 else b""
        return (hmac.digest(chain, _MESSAGE_KEY_SEED, "sha256"),
                replace(self, iteration=iteration + 1, skipped=skipped,
                        chain_key=hmac.digest(chain, _CHAIN_KEY_SEED, "sha256")))

    def _find(self, iteration: int) -> int | None:
        skipped = self.skipped
        index = bisect.bisect_left(
            range(self.skipped_count), iteration,
            key=lambda k: int.from_bytes(skipped[k * SKIPPED_RECORD:k * SKIPPED_RECORD + 4]))
        if index < self.skipped_count and int.from_bytes(
                skipped[index * SKIPPED_RECORD:index * SKIPPED_RECORD + 4]) == iteration:
            return index
        return None
