"""Users with real key stores (SQLite) for the crypto tests."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from groups.crypto import Crypto
from groups.store import open_store
from mesh.identity import KeyPair, PreKey, Record

NOW = 1_700_000_000.0
ROOT = Path(__file__).resolve().parents[3]


@dataclass
class User:
    identity: KeyPair
    conn: sqlite3.Connection
    crypto: Crypto
    path: str

    @property
    def id(self) -> str:
        return self.identity.user_id

    def record(self, seq: int = 1) -> Record:
        return Record.create(self.identity, signed_prekey=self.crypto.signed_prekey(),
                             last_resort_prekey=self.crypto.last_resort_prekey(),
                             endpoints=(), seq=seq, now=NOW)

    def prekey(self) -> PreKey:
        return self.crypto.generate_one_time_prekeys(1, NOW)[0]

    def reopen(self) -> User:
        """Close and open the database again, as a restarted node does."""
        self.conn.close()
        conn = open_store(self.path)
        return User(self.identity, conn, Crypto(conn, self.identity, now=NOW), self.path)


def make_user(path: str | Path = ":memory:", identity: KeyPair | None = None, *,
              now: float = NOW) -> User:
    identity = identity or KeyPair.generate()
    conn = open_store(path)
    crypto = Crypto(conn, identity, now=now)
    crypto.ensure_prekeys(now)
    return User(identity, conn, crypto, str(path))


def pair(a: User, b: User) -> None:
    """A session both ways: a builds from b's bundle, b answers once."""
    a.crypto.start_session(b.record(), b.prekey(), now=NOW)
    assert b.crypto.decrypt(a.id, a.crypto.encrypt(b.id, b"hello"), now=NOW) == b"hello"
    assert a.crypto.decrypt(b.id, b.crypto.encrypt(a.id, b"hi"), now=NOW) == b"hi"


def new_group_id() -> bytes:
    return os.urandom(16)


def share_sender_keys(group_id: bytes, members: list[User]) -> None:
    """Every member's distribution message to every other member (pairwise channel
    elided: tests/unit/groups/test_groups.py covers it going through sessions)."""
    for sender in members:
        dist = sender.crypto.sender_key_distribution(group_id, now=NOW)
        for other in members:
            if other is not sender:
                other.crypto.process_sender_key_distribution(group_id, sender.id, dist, now=NOW)
