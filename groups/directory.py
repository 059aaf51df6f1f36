"""Who is who: the verified records of the users a node knows, and sessions to them.

Records come from discovery (bootstrap, DHT) or from peers over links; each is verified
(mesh.identity.Record) before it is kept, and only a newer seq replaces one we hold.
A user's identity key, once trusted, is pinned by groups.crypto: a record with another
key for the same ID cannot occur (IDs are derived from keys), and a changed key inside
a session raises IdentityChanged there.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from groups.crypto import Crypto
from groups.errors import NotFound
from mesh.discovery import Bundle
from mesh.errors import DiscoveryUnavailable, MeshError
from mesh.identity import Record

__all__ = ["Directory", "Lookup", "NoDiscovery"]


class Lookup(Protocol):
    """What the directory needs from discovery (mesh.lookup.Discovery: the bootstrap,
    the DHT, or the bootstrap with the DHT as fallback)."""

    async def lookup(self, user_id: str, *, identity_key: bytes | None = None,
                     newer_than: int = 0) -> Record: ...

    async def bundle(self, user_id: str, *, identity_key: bytes | None = None) -> Bundle: ...


class NoDiscovery:
    """The Lookup of a node with neither a bootstrap server nor a DHT (a Bluetooth-only
    node): every lookup fails with DiscoveryUnavailable, and records come only from
    peers met over links (their handshakes carry them)."""

    async def lookup(self, user_id: str, *, identity_key: bytes | None = None,
                     newer_than: int = 0) -> Record:
        raise DiscoveryUnavailable(f"cannot look up {user_id}: this node has no bootstrap "
                                   "server and no DHT")

    async def bundle(self, user_id: str, *, identity_key: bytes | None = None) -> Bundle:
        raise DiscoveryUnavailable(f"cannot fetch a prekey of {user_id}: this node has no "
                                   "bootstrap server and no DHT")


class Directory:
    def __init__(self, conn: sqlite3.Connection, crypto: Crypto, lookup: Lookup) -> None:
        self.conn = conn
        self.crypto = crypto
        self.lookup = lookup

    def record(self, user_id: str) -> Record | None:
        row = self.conn.execute("SELECT record FROM peers WHERE user_id = ?",
                                (user_id,)).fetchone()
        return Record.decode(row[0]) if row else None

    def endpoints(self, user_id: str) -> list[str]:
        record = self.record(user_id)
        return list(record.endpoints) if record else []

    def remember(self, record: Record, now: float, *, contact: bool = False) -> bool:
        """Keep ``record`` (already verified) if it is newer than ours; True if stored."""
        cur = self.conn.execute(
            "INSERT INTO peers (user_id, record, seq, is_contact, added_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
            "record = CASE WHEN excluded.seq > peers.seq THEN excluded.record "
            "ELSE peers.record END, "
            "seq = MAX(peers.seq, excluded.seq), "
            "is_contact = MAX(peers.is_contact, excluded.is_contact)",
            (record.user_id, record.encode(), record.seq, int(contact), int(now)))
        return cur.rowcount == 1

    def contacts(self) -> list[str]:
        return [row[0] for row in self.conn.execute(
            "SELECT user_id FROM peers WHERE is_contact = 1 ORDER BY added_at")]

    def is_verified(self, user_id: str, identity_key: bytes) -> bool:
        """Did our user mark this key of ``user_id`` verified (safety number compared)?"""
        row = self.conn.execute("SELECT verified, record FROM peers WHERE user_id = ?",
                                (user_id,)).fetchone()
        return bool(row and row[0]) and Record.decode(row[1]).identity_key == identity_key

    def set_verified(self, user_id: str, identity_key: bytes, verified: bool) -> None:
        record = self.record(user_id)
        if record is None or record.identity_key != identity_key:
            raise NotFound("no record with this key for this user")
        self.conn.execute("UPDATE peers SET verified = ? WHERE user_id = ?",
                          (int(verified), user_id))

    def is_contact(self, user_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM peers WHERE user_id = ? AND is_contact = 1",
                                 (user_id,)).fetchone() is not None

    async def refresh(self, user_id: str, now: float) -> Record:
        """Look the user up (raises discovery's typed errors) and keep the record.

        A record we hold already names the key to expect, and its seq the one to beat:
        the DHT is asked too when the bootstrap has nothing newer."""
        known = self.record(user_id)
        record = await self.lookup.lookup(
            user_id, identity_key=known.identity_key if known else None,
            newer_than=known.seq if known else 0)
        self.remember(record, now)
        return self.record(user_id) or record

    async def ensure_session(self, user_id: str, now: float) -> None:
        """Have a Signal session with ``user_id``: claim a bundle if there is none.

        When discovery fails and we hold a verified record of the user (one their node
        showed us in a link handshake, say over Bluetooth with no internet), the session
        starts from that record's last-resort prekey, as it would from the DHT."""
        if self.crypto.has_session(user_id):
            return
        known = self.record(user_id)
        try:
            bundle = await self.lookup.bundle(
                user_id, identity_key=known.identity_key if known else None)
        except (MeshError, TimeoutError):
            if known is None:
                raise
            bundle = Bundle(known, known.last_resort_prekey)
        if self.crypto.has_session(user_id):  # a session arrived while we waited
            return
        self.crypto.start_session(bundle.record, bundle.prekey, now=now)
        self.remember(bundle.record, now)
