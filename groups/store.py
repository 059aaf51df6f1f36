"""The node's SQLite database: opening it and the key store's repository functions.

One database per node (``<data-dir>/node.db``), opened with mesh.db.open_db: WAL,
foreign keys, synchronous=FULL, created atomically and backed up before a migration.
Its tables are defined by groups.schema's ``MIGRATIONS``; later parts of Parley append
their tables (groups, messages, receipts, files) there as new entries.

Repository functions take the connection first and are plain SQL: they do not know what
the blobs mean (groups.crypto does). Writes that must happen together run inside
``atomic(conn)``, a SAVEPOINT, so they nest inside a caller's larger transaction (for
instance "decrypt a message and store it" commits both or neither).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike

from groups.schema import MIGRATIONS
from mesh.db import open_db

__all__ = [
    "SenderKeyInfo",
    "SenderKeyState",
    "add_sender_key_state",
    "atomic",
    "contains_prekey",
    "contains_session",
    "contains_signed_prekey",
    "count_prekeys",
    "delete_all_sessions",
    "delete_sender_keys",
    "delete_session",
    "load_identity",
    "load_local_identity",
    "load_prekey",
    "load_sender_key_state",
    "load_session",
    "load_signed_prekey",
    "load_signed_prekeys",
    "newest_signed_prekey",
    "next_counter",
    "open_store",
    "purge_retired_sender_keys",
    "remove_prekey",
    "remove_signed_prekey",
    "retire_sender_keys",
    "retire_signed_prekeys",
    "retired_signed_prekeys_before",
    "save_identity",
    "save_local_identity",
    "sender_key_info",
    "sender_key_state_sizes",
    "session_device_ids",
    "store_prekey",
    "store_session",
    "store_signed_prekey",
    "update_sender_key_state",
]


def open_store(path: str | PathLike[str]) -> sqlite3.Connection:
    """Open (create, migrate) the node database at ``path`` (or ``":memory:"``)."""
    return open_db(path, MIGRATIONS)


@contextmanager
def atomic(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in a SAVEPOINT: all its writes land, or none (it nests)."""
    # One name serves every level: SQLite resolves ROLLBACK TO / RELEASE to the most
    # recent savepoint of that name, which is this block's.
    conn.execute("SAVEPOINT groups_atomic")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO groups_atomic")
        conn.execute("RELEASE groups_atomic")
        raise
    conn.execute("RELEASE groups_atomic")


def next_counter(conn: sqlite3.Connection, name: str, step: int = 1, start: int = 1) -> int:
    """Return the counter's current value (``start`` the first time); advance it by step."""
    row = conn.execute("SELECT value FROM crypto_counters WHERE name = ?", (name,)).fetchone()
    value = start if row is None else row[0]
    conn.execute("INSERT INTO crypto_counters (name, value) VALUES (?, ?) "
                 "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value + step))
    return value


def counter_value(conn: sqlite3.Connection, name: str) -> int:
    """What the next ``next_counter(conn, name)`` returns; 0 if it never ran."""
    row = conn.execute("SELECT value FROM crypto_counters WHERE name = ?", (name,)).fetchone()
    return row[0] if row else 0


# Local identity


def load_local_identity(conn: sqlite3.Connection) -> tuple[bytes, int] | None:
    """(public key, registration id) of the identity this store belongs to, if set."""
    row = conn.execute("SELECT public_key, registration_id FROM local_identity").fetchone()
    return None if row is None else (bytes(row[0]), row[1])


def save_local_identity(conn: sqlite3.Connection, public_key: bytes, registration_id: int,
                        now: float) -> None:
    conn.execute("INSERT INTO local_identity (id, public_key, registration_id, created_at) "
                 "VALUES (1, ?, ?, ?)", (public_key, registration_id, int(now)))


# Peers' identity keys


def load_identity(conn: sqlite3.Connection, user_id: str) -> bytes | None:
    row = conn.execute("SELECT identity_key FROM identities WHERE user_id = ?",
                       (user_id,)).fetchone()
    return None if row is None else bytes(row[0])


def save_identity(conn: sqlite3.Connection, user_id: str, identity_key: bytes,
                  now: float) -> None:
    """Record (or, after an explicit trust decision, replace) a peer's identity key."""
    conn.execute("INSERT INTO identities (user_id, identity_key, first_seen) VALUES (?, ?, ?) "
                 "ON CONFLICT (user_id) DO UPDATE SET identity_key = excluded.identity_key, "
                 "first_seen = excluded.first_seen "
                 "WHERE identities.identity_key != excluded.identity_key",
                 (user_id, identity_key, int(now)))


# One-time and last-resort prekeys


def load_prekey(conn: sqlite3.Connection, prekey_id: int) -> bytes | None:
    row = conn.execute("SELECT record FROM prekeys WHERE id = ?", (prekey_id,)).fetchone()
    return None if row is None else bytes(row[0])


def store_prekey(conn: sqlite3.Connection, prekey_id: int, record: bytes, now: float) -> None:
    conn.execute("INSERT OR REPLACE INTO prekeys (id, record, created_at) VALUES (?, ?, ?)",
                 (prekey_id, record, int(now)))


def contains_prekey(conn: sqlite3.Connection, prekey_id: int) -> bool:
    return conn.execute("SELECT 1 FROM prekeys WHERE id = ?", (prekey_id,)).fetchone() is not None


def remove_prekey(conn: sqlite3.Connection, prekey_id: int, *, keep: int | None = None) -> None:
    """Delete a used one-time prekey; ``keep`` (the last-resort id) is never deleted."""
    if prekey_id != keep:
        conn.execute("DELETE FROM prekeys WHERE id = ?", (prekey_id,))


def count_prekeys(conn: sqlite3.Connection, *, exclude: int) -> int:
    return conn.execute("SELECT count(*) FROM prekeys WHERE id != ?", (exclude,)).fetchone()[0]


# Signed prekeys


def load_signed_prekey(conn: sqlite3.Connection, prekey_id: int) -> bytes | None:
    row = conn.execute("SELECT record FROM signed_prekeys WHERE id = ?", (prekey_id,)).fetchone()
    return None if row is None else bytes(row[0])


def load_signed_prekeys(conn: sqlite3.Connection) -> list[bytes]:
    return [bytes(r[0]) for r in conn.execute("SELECT record FROM signed_prekeys ORDER BY id")]


def newest_signed_prekey(conn: sqlite3.Connection) -> tuple[int, bytes, int] | None:
    """(id, record, created_at) of the current (not retired) signed prekey."""
    row = conn.execute("SELECT id, record, created_at FROM signed_prekeys "
                       "WHERE retired_at IS NULL ORDER BY created_at DESC, id DESC").fetchone()
    return None if row is None else (row[0], bytes(row[1]), row[2])


def store_signed_prekey(conn: sqlite3.Connection, prekey_id: int, record: bytes,
                        now: float) -> None:
    conn.execute("INSERT OR REPLACE INTO signed_prekeys (id, record, created_at) VALUES (?, ?, ?)",
                 (prekey_id, record, int(now)))


def contains_signed_prekey(conn: sqlite3.Connection, prekey_id: int) -> bool:
    return conn.execute("SELECT 1 FROM signed_prekeys WHERE id = ?",
                        (prekey_id,)).fetchone() is not None


def remove_signed_prekey(conn: sqlite3.Connection, prekey_id: int) -> None:
    conn.execute("DELETE FROM signed_prekeys WHERE id = ?", (prekey_id,))


def retire_signed_prekeys(conn: sqlite3.Connection, *, except_id: int, now: float) -> None:
    conn.execute("UPDATE signed_prekeys SET retired_at = ? WHERE retired_at IS NULL AND id != ?",
                 (int(now), except_id))


def retired_signed_prekeys_before(conn: sqlite3.Connection, cutoff: float) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT id FROM signed_prekeys WHERE retired_at IS NOT NULL AND retired_at <= ?",
        (int(cutoff),))]


# Pairwise sessions


def load_session(conn: sqlite3.Connection, user_id: str, device_id: int) -> bytes | None:
    row = conn.execute("SELECT record FROM sessions WHERE user_id = ? AND device_id = ?",
                       (user_id, device_id)).fetchone()
    return None if row is None else bytes(row[0])


def store_session(conn: sqlite3.Connection, user_id: str, device_id: int, record: bytes) -> None:
    conn.execute("INSERT OR REPLACE INTO sessions (user_id, device_id, record) VALUES (?, ?, ?)",
                 (user_id, device_id, record))


def contains_session(conn: sqlite3.Connection, user_id: str, device_id: int) -> bool:
    return conn.execute("SELECT 1 FROM sessions WHERE user_id = ? AND device_id = ?",
                        (user_id, device_id)).fetchone() is not None


def session_device_ids(conn: sqlite3.Connection, user_id: str) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT device_id FROM sessions WHERE user_id = ? ORDER BY device_id", (user_id,))]


def delete_session(conn: sqlite3.Connection, user_id: str, device_id: int) -> None:
    conn.execute("DELETE FROM sessions WHERE user_id = ? AND device_id = ?", (user_id, device_id))


def delete_all_sessions(conn: sqlite3.Connection, user_id: str) -> None:
    conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))


# Sender keys


@dataclass(frozen=True, repr=False)
class SenderKeyState:
    """One sender-key state as stored; ``state`` is opaque here (and secret)."""

    key_id: int
    iteration: int
    signing_key: bytes
    own: bool
    state: bytes

    def __repr__(self) -> str:
        return f"SenderKeyState(key_id={self.key_id}, iteration={self.iteration})"


@dataclass(frozen=True)
class SenderKeyInfo:
    """What a message can be checked against without parsing the state."""

    key_id: int
    iteration: int
    signing_key: bytes
    own: bool
    created_at: int
    retired_at: int | None


def load_sender_key_state(conn: sqlite3.Connection, group_id: bytes, sender: str,
                          key_id: int) -> bytes | None:
    """The stored state with ``key_id``, and no other: a message names the one it needs."""
    row = conn.execute("SELECT state FROM sender_keys WHERE group_id = ? AND sender = ? "
                       "AND key_id = ?", (group_id, sender, key_id)).fetchone()
    return None if row is None else bytes(row[0])


def sender_key_state_sizes(conn: sqlite3.Connection, group_id: bytes,
                           sender: str) -> dict[int, int]:
    """Key id -> size in bytes of each state of (group, sender), without loading them."""
    return dict(conn.execute("SELECT key_id, length(state) FROM sender_keys "
                             "WHERE group_id = ? AND sender = ?", (group_id, sender)))


def sender_key_info(conn: sqlite3.Connection, group_id: bytes, sender: str,
                    key_id: int | None = None) -> SenderKeyInfo | None:
    """The state with ``key_id``, or (None) the oldest one held (our own key is alone)."""
    query = ("SELECT key_id, iteration, signing_key, own, created_at, retired_at "
             "FROM sender_keys WHERE group_id = ? AND sender = ?")
    args: tuple[object, ...] = (group_id, sender)
    if key_id is not None:
        query += " AND key_id = ?"
        args += (key_id,)
    row = conn.execute(query + " ORDER BY position LIMIT 1", args).fetchone()
    if row is None:
        return None
    return SenderKeyInfo(row[0], row[1], bytes(row[2]), bool(row[3]), row[4], row[5])


def add_sender_key_state(conn: sqlite3.Connection, group_id: bytes, sender: str,
                         state: SenderKeyState, *, keep: int, now: float) -> None:
    """Store a new state of (group, sender) after the ones held; keep the ``keep`` newest."""
    row = conn.execute("SELECT max(position) FROM sender_keys WHERE group_id = ? "
                       "AND sender = ?", (group_id, sender)).fetchone()
    position = 0 if row[0] is None else row[0] + 1
    conn.execute("INSERT INTO sender_keys (group_id, sender, key_id, position, iteration, "
                 "signing_key, own, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (group_id, sender, state.key_id, position, state.iteration, state.signing_key,
                  int(state.own), state.state, int(now)))
    conn.execute("DELETE FROM sender_keys WHERE group_id = ? AND sender = ? AND position <= ?",
                 (group_id, sender, position - keep))


def update_sender_key_state(conn: sqlite3.Connection, group_id: bytes, sender: str,
                            key_id: int, iteration: int, state: bytes) -> None:
    """Move one stored state on (a message was sent or read with it)."""
    conn.execute("UPDATE sender_keys SET iteration = ?, state = ? WHERE group_id = ? "
                 "AND sender = ? AND key_id = ?", (iteration, state, group_id, sender, key_id))


def retire_sender_keys(conn: sqlite3.Connection, group_id: bytes, sender: str, *,
                       except_key_id: int, now: float) -> None:
    """Mark every other state of (group, sender) as only kept for in-flight messages."""
    conn.execute("UPDATE sender_keys SET retired_at = ? WHERE group_id = ? AND sender = ? "
                 "AND key_id != ? AND retired_at IS NULL",
                 (int(now), group_id, sender, except_key_id))


def delete_sender_keys(conn: sqlite3.Connection, group_id: bytes,
                       sender: str | None = None) -> None:
    """Forget one member's sender keys in a group, or (sender None) the whole group's."""
    if sender is None:
        conn.execute("DELETE FROM sender_keys WHERE group_id = ?", (group_id,))
    else:
        conn.execute("DELETE FROM sender_keys WHERE group_id = ? AND sender = ?",
                     (group_id, sender))


def purge_retired_sender_keys(conn: sqlite3.Connection, cutoff: float) -> int:
    """Delete states retired at or before ``cutoff``; return how many went."""
    cur = conn.execute("DELETE FROM sender_keys WHERE retired_at IS NOT NULL AND retired_at <= ?",
                       (int(cutoff),))
    return cur.rowcount
