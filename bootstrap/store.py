"""The bootstrap server's SQLite database: records, one-time prekeys, seen nonces.

Repository functions take a connection and ``now``. Records are stored as the JSON
the API serves (verified once, on the way in), so a lookup is one indexed read and
no re-verification.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from mesh.db import open_db
from mesh.identity import PreKey, Record

__all__ = [
    "MAX_PREKEYS",
    "MIGRATIONS",
    "StoredUser",
    "claim_prekey",
    "count_prekeys",
    "get_user",
    "open_store",
    "put_prekeys",
    "remember_nonce",
    "save_record",
]

MAX_PREKEYS = 200  # one-time prekeys kept per user (two batches); more is refused

MIGRATIONS = [
    """
    CREATE TABLE schema_version (version INTEGER NOT NULL);
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        identity_key BLOB NOT NULL UNIQUE,
        seq INTEGER NOT NULL,
        record_json TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE prekeys (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        key_id INTEGER NOT NULL,
        public_key BLOB NOT NULL,
        PRIMARY KEY (user_id, key_id)
    );
    CREATE TABLE nonces (
        user_id TEXT NOT NULL,
        nonce BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (user_id, nonce)
    );
    CREATE INDEX nonces_by_expiry ON nonces (expires_at);
    """,
]


@dataclass(frozen=True)
class StoredUser:
    user_id: str
    identity_key: bytes
    seq: int
    record_json: str


def open_store(path: str | os.PathLike[str]) -> sqlite3.Connection:
    return open_db(path, MIGRATIONS)


def get_user(conn: sqlite3.Connection, user_id: str) -> StoredUser | None:
    row = conn.execute("SELECT id, identity_key, seq, record_json FROM users WHERE id = ?",
                       (user_id,)).fetchone()
    return StoredUser(*row) if row else None


def save_record(conn: sqlite3.Connection, record: Record, now: float) -> None:
    """Insert or replace the user's record (callers have checked key and seq)."""
    conn.execute(
        "INSERT INTO users (id, identity_key, seq, record_json, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "seq = excluded.seq, record_json = excluded.record_json, updated_at = excluded.updated_at",
        (record.user_id, record.identity_key, record.seq,
         json.dumps(record.to_json(), separators=(",", ":")), int(now), int(now)))


def put_prekeys(conn: sqlite3.Connection, user_id: str, prekeys: Sequence[PreKey]) -> None:
    """Store one-time prekeys; re-uploading an id replaces it (the owner assigns ids)."""
    conn.executemany(
        "INSERT INTO prekeys (user_id, key_id, public_key) VALUES (?, ?, ?) "
        "ON CONFLICT (user_id, key_id) DO UPDATE SET public_key = excluded.public_key",
        [(user_id, p.id, p.public_key) for p in prekeys])


def count_prekeys(conn: sqlite3.Connection, user_id: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM prekeys WHERE user_id = ?",
                        (user_id,)).fetchone()[0]


def claim_prekey(conn: sqlite3.Connection, user_id: str) -> PreKey | None:
    """Remove and return the lowest-numbered one-time prekey, or None when none is left.

    A single DELETE ... RETURNING statement makes the claim atomic even if several
    processes share the database file.
    """
    row = conn.execute(
        "DELETE FROM prekeys WHERE rowid = (SELECT rowid FROM prekeys WHERE user_id = ? "
        "ORDER BY key_id LIMIT 1) RETURNING key_id, public_key", (user_id,)).fetchone()
    return PreKey(row[0], row[1]) if row else None


def remember_nonce(conn: sqlite3.Connection, user_id: str, nonce: bytes, now: float,
                   ttl: float) -> bool:
    """Record a request nonce; False if it was already seen (a replay)."""
    conn.execute("DELETE FROM nonces WHERE expires_at < ?", (int(now),))
    try:
        conn.execute("INSERT INTO nonces (user_id, nonce, expires_at) VALUES (?, ?, ?)",
                     (user_id, nonce, int(now + ttl)))
    except sqlite3.IntegrityError:
        return False
    return True
