"""How a pairwise session is stored: axolotl's SessionRecord without the message keys
its receiving chains skipped, which follow it as a flat array.

python-axolotl keeps every skipped message key as a protobuf sub-message inside the
record (up to 2000 per chain, 5 chains per state, 41 states), and the record is parsed
and re-serialized, in pure-Python protobuf, for every message. A peer that sent 2001
messages and let only the last reach us, once per ratchet turn, made each of its later
messages cost ~50 ms more per chain (~170 ms after three). Here those keys are records of
fixed size, found with ``bytes.find`` and cut out by slicing, so what a message costs
no longer grows with them; at most MAX_SKIPPED_KEYS are kept per peer, the oldest going
first. The same hostile-member bound as for sender keys (issue 15, finding 2).

Layout (docs/protocol.md §7, "Storage"):

    0x02 || u32be len(R) || R || skipped
    R        = axolotl RecordStructure protobuf, with no messageKeys in any chain
    skipped  = n x (their ratchet key (33) || u32be counter || cipher key (32)
                    || MAC key (32) || IV (16)), oldest first

A record written by earlier versions (the bare protobuf, message keys inside) is read
too, and written back in this layout.
"""

from __future__ import annotations

import struct

from axolotl.kdf.messagekeys import MessageKeys
from axolotl.state.sessionrecord import SessionRecord
from google.protobuf.message import DecodeError

from groups.errors import CryptoStoreError

__all__ = ["StoredSessionRecord", "add_skipped", "take_skipped"]

_FORMAT = 0x02
_LENGTH = struct.Struct(">I")
_SKIPPED = struct.Struct(">33sI32s32s16s")


class StoredSessionRecord(SessionRecord):
    """A SessionRecord as our store loads it: ``skipped`` holds its skipped message keys."""

    def __init__(self, serialized: bytes | None = None, skipped: bytes = b"") -> None:
        super().__init__(serialized=serialized)
        self.skipped = skipped

    @classmethod
    def decode(cls, blob: bytes) -> StoredSessionRecord:
        try:
            if blob[:1] != bytes([_FORMAT]):
                return cls._from_protobuf(blob)
            (length,) = _LENGTH.unpack_from(blob, 1)
            start = 1 + _LENGTH.size
            skipped = blob[start + length:]
            if len(blob) < start + length or len(skipped) % _SKIPPED.size:
                raise CryptoStoreError("stored session has a bad layout")
            return cls(blob[start:start + length], skipped)
        except (DecodeError, struct.error) as exc:
            raise CryptoStoreError("stored session does not parse") from exc

    @classmethod
    def _from_protobuf(cls, blob: bytes) -> StoredSessionRecord:
        record = cls(blob)
        skipped = []
        for state in (record.getSessionState(), *record.getPreviousSessionStates()):
            for chain in state.getStructure().receiverChains:
                skipped += [_SKIPPED.pack(bytes(chain.senderRatchetKey), k.index,
                                          bytes(k.cipherKey), bytes(k.macKey), bytes(k.iv))
                            for k in chain.messageKeys]
                del chain.messageKeys[:]
        record.skipped = b"".join(skipped)
        return record

    def encode(self, limit: int) -> bytes:
        """The stored form, keeping the newest ``limit`` skipped keys."""
        body = self.serialize()
        keep = self.skipped[max(0, len(self.skipped) - limit * _SKIPPED.size):]
        return bytes([_FORMAT]) + _LENGTH.pack(len(body)) + body + keep


def add_skipped(skipped: bytes, ratchet_key: bytes, keys: list[MessageKeys]) -> bytes:
    """``skipped`` with the message keys of a chain (``ratchet_key``) appended."""
    return skipped + b"".join(
        _SKIPPED.pack(ratchet_key, k.getCounter(), bytes(k.getCipherKey()),
                      bytes(k.getMacKey()), bytes(k.getIv())) for k in keys)


def take_skipped(skipped: bytes, ratchet_key: bytes,
                 counter: int) -> tuple[MessageKeys, bytes] | None:
    """The message keys of (chain, counter) and ``skipped`` without them, or None."""
    needle = ratchet_key + counter.to_bytes(4, "big")
    at = skipped.find(needle)
    while at != -1 and at % _SKIPPED.size:  # a match across two records is not one
        at = skipped.find(needle, at + 1)
    if at == -1:
        return None
    _, _, cipher_key, mac_key, iv = _SKIPPED.unpack_from(skipped, at)
    return (MessageKeys(cipher_key, mac_key, iv, counter),
            skipped[:at] + skipped[at + _SKIPPED.size:])
