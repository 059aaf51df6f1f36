"""Records for DHT tests (not tests themselves): fresh, updated, forged, largest."""

from __future__ import annotations

import time
from dataclasses import replace

from mesh.identity import (
    LAST_RESORT_PREKEY_ID,
    MAX_ENDPOINTS,
    MAX_SEQ,
    KeyPair,
    PreKey,
    Record,
    SignedPreKey,
)

__all__ = ["bad_signature", "forged_key", "largest_record", "make_record", "next_record"]


def make_record(identity: KeyPair | None = None, *, seq: int = 1,
                endpoints: tuple[str, ...] = ("ws://127.0.0.1:9/mesh",),
                now: float | None = None) -> tuple[KeyPair, Record]:
    identity = identity or KeyPair.generate()
    spk = KeyPair.generate()
    record = Record.create(
        identity, signed_prekey=SignedPreKey(1, spk.public, identity.sign(spk.public)),
        last_resort_prekey=PreKey(LAST_RESORT_PREKEY_ID, KeyPair.generate().public),
        endpoints=endpoints, seq=seq, now=time.time() if now is None else now)
    return identity, record


def next_record(identity: KeyPair, record: Record, *, endpoints: tuple[str, ...] | None = None,
                now: float | None = None) -> Record:
    """The same user's record with seq + 1 (and new endpoints, if given)."""
    return Record.create(identity, signed_prekey=record.signed_prekey,
                         last_resort_prekey=record.last_resort_prekey,
                         endpoints=record.endpoints if endpoints is None else endpoints,
                         seq=record.seq + 1, now=time.time() if now is None else now)


def forged_key(victim: Record, seq: int | None = None) -> Record:
    """A record claiming the victim's ID but carrying and signed by another key."""
    attacker = KeyPair.generate()
    unsigned = replace(victim, identity_key=attacker.public, signature=b"",
                       seq=victim.seq + 100 if seq is None else seq)
    return replace(unsigned, signature=attacker.sign(unsigned.signing_bytes()))


def bad_signature(record: Record, seq_bump: int = 100) -> bytes:
    """The record with a higher seq and its old signature: canonical, but invalid."""
    return replace(record, seq=record.seq + seq_bump).encode()


def largest_record(now: float | None = None) -> Record:
    """The largest legal record: 8 endpoints of the maximal length, 63-bit numbers."""
    identity = KeyPair.generate()
    endpoints = tuple(f"wss://{chr(ord('a') + i) * 240}.example:65535/m"[:255]
                      for i in range(MAX_ENDPOINTS))
    _, record = make_record(identity, seq=MAX_SEQ, endpoints=endpoints, now=now)
    return record
