"""The node's SQLite database: schema migrations and repository functions.

One database per node (``<data-dir>/node.db``), opened with mesh.db.open_db: WAL,
foreign keys, synchronous=FULL, created atomically and backed up before a migration.
``MIGRATIONS[n]`` takes the schema from version n to n+1; later parts of Parley append
their tables (groups, messages, receipts, files) as new entries, never edit old ones.

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

from mesh.db import open_db

__all__ = [
    "MIGRATIONS",
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

# Version 1: the key store behind python-axolotl (see docs/protocol.md §7).
_V1_KEYS = """
CREATE TABLE schema_version (version INTEGER NOT NULL);

-- Which identity this database belongs to (a store opened with another key is refused).
CREATE TABLE local_identity (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    public_key      BLOB NOT NULL,
    registration_id INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);

-- Peers' identity keys as first seen (trust on first use, checked against the user id).
CREATE TABLE identities (
    user_id      TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    first_seen   INTEGER NOT NULL
);

-- Our one-time prekeys and the last-resort prekey (id 16777215, never removed).
CREATE TABLE prekeys (
    id         INTEGER PRIMARY KEY,
    record     BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

-- Our signed prekeys; retired_at is set when a newer one replaces it (grace period).
CREATE TABLE signed_prekeys (
    id         INTEGER PRIMARY KEY,
    record     BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
);

-- Pairwise Double Ratchet sessions (axolotl SessionRecord), one per peer device.
CREATE TABLE sessions (
    user_id   TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    record    BLOB NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Sender-key states (axolotl SenderKeyStateStructure), one row per (group, member, key id).
-- iteration and signing_key are copies of fields inside state, kept in columns so that a
-- message can be checked (window, signature) without parsing the state.
CREATE TABLE sender_keys (
    group_id    BLOB NOT NULL,
    sender      TEXT NOT NULL,
    key_id      INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    iteration   INTEGER NOT NULL,
    signing_key BLOB NOT NULL,
    own         INTEGER NOT NULL,
    state       BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER,
    PRIMARY KEY (group_id, sender, key_id)
);

CREATE TABLE crypto_counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# Version 2: the messenger (see groups/history.py and docs/protocol.md, "Messages").
_V2_MESSENGER = """
-- Every mesh message we hold, in group and direct topics: the mailbox we serve to others
-- through anti-entropy. ``head`` rows keep each origin's contiguous high-water mark.
CREATE TABLE mesh_messages (
    msg_id      BLOB PRIMARY KEY,
    topic       BLOB NOT NULL,
    origin      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (topic, origin, seq)
);
CREATE TABLE mesh_heads (
    topic  BLOB NOT NULL,
    origin TEXT NOT NULL,
    head   INTEGER NOT NULL,
    PRIMARY KEY (topic, origin)
);

-- Conversations: a group (topic = group id) or a 1:1 chat (topic = direct_topic(a, b)).
CREATE TABLE conversations (
    topic      BLOB PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('group', 'direct')),
    peer       TEXT,                        -- direct: the other user's id
    name       TEXT NOT NULL,
    own_seq    INTEGER NOT NULL DEFAULT 0,  -- our last mesh seq in this topic
    lamport    INTEGER NOT NULL DEFAULT 0,
    joined_at  INTEGER NOT NULL,
    left_at    INTEGER,                     -- we left or were removed
    visible    INTEGER NOT NULL DEFAULT 1   -- 0: a direct topic used only for protocol
);

-- The group's membership ops (all we know, winning or not: groups.group decides).
CREATE TABLE group_ops (
    op_hash BLOB PRIMARY KEY,
    topic   BLOB NOT NULL REFERENCES conversations (topic),
    epoch   INTEGER NOT NULL,
    op      BLOB NOT NULL
);

-- Users we know (contacts and fellow members), with their newest verified record.
CREATE TABLE peers (
    user_id    TEXT PRIMARY KEY,
    record     BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    is_contact INTEGER NOT NULL DEFAULT 0,
    verified   INTEGER NOT NULL DEFAULT 0,
    added_at   INTEGER NOT NULL
);

-- Chat messages as the user sees them (decrypted); message_id is the mesh msg_id.
CREATE TABLE chat_messages (
    message_id BLOB PRIMARY KEY,
    topic      BLOB NOT NULL REFERENCES conversations (topic),
    sender     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    lamport    INTEGER NOT NULL,
    sent_at    INTEGER NOT NULL,
    text       TEXT NOT NULL,
    file       BLOB,
    seen       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX chat_messages_order ON chat_messages (topic, lamport, sender, seq);

-- Per-member delivery state of the messages we sent.
CREATE TABLE deliveries (
    message_id BLOB NOT NULL REFERENCES chat_messages (message_id),
    member     TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'delivered', 'read',
                                              'failed')),
    reason     TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, member)
);

-- Receipts we owe (sent batched; kept across restarts until published).
CREATE TABLE receipts_due (
    message_id BLOB NOT NULL,
    topic      BLOB NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('delivered', 'read')),
    PRIMARY KEY (message_id, kind)
);

-- Pairwise contents waiting to be encrypted and published on a direct topic (durable:
-- a crash before sending loses nothing). kind 'skey' is made at send time from our
-- current sender key for ``topic``; other kinds carry their encoded content.
CREATE TABLE pairwise_outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    peer       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    topic      BLOB,
    content    BLOB,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);

-- Committed mesh messages we could not decrypt yet (key not here yet) or ever (reason).
CREATE TABLE undecrypted (
    msg_id BLOB PRIMARY KEY REFERENCES mesh_messages (msg_id),
    reason TEXT NOT NULL
);
"""

# Version 3: attachments (see groups/attachments.py and docs/protocol.md §9).
_V3_ATTACHMENTS = """
-- One row per announced file (the first message that announced it). The chunks live in
-- <data-dir>/files/<file_id hex>/, encrypted with file_key; which of them are held is
-- what is on disk and matches chunk_hashes (verified on resume), so no per-chunk rows.
-- mime is the sender's claim until the file is complete, then what its bytes say.
CREATE TABLE attachments (
    file_id      BLOB PRIMARY KEY,
    topic        BLOB NOT NULL REFERENCES conversations (topic),
    message_id   BLOB NOT NULL,
    sender       TEXT NOT NULL,
    name         TEXT NOT NULL,
    mime         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    file_key     BLOB NOT NULL,
    chunk_hashes BLOB NOT NULL,              -- SHA-256 of each encrypted chunk, concatenated
    state        TEXT NOT NULL CHECK (state IN ('downloading', 'complete', 'failed')),
    bytes_done   INTEGER NOT NULL DEFAULT 0,
    reason       TEXT,
    created_at   INTEGER NOT NULL
);
CREATE INDEX attachments_message ON attachments (message_id);
"""

# Version 4: repair ordering values poisoned before they were bounded (issue 15: a text
# claiming 2^63-1 overflowed the conversation's clock into a REAL, and every later
# message was dropped). A chat message's value outside 0..2^53-1 (or not an integer)
# becomes the highest sound value of its conversation, so it sorts with the newest; a
# conversation's clock becomes the highest value of its messages. Messages lost to the
# poisoned clock cannot be recovered (their sender-key iterations are spent).
_V4_ORDER_REPAIR = """
UPDATE chat_messages SET lamport = (
    SELECT COALESCE(MAX(c.lamport), 0) FROM chat_messages c
    WHERE c.topic = chat_messages.topic AND typeof(c.lamport) = 'integer'
    AND c.lamport BETWEEN 0 AND 9007199254740991)
WHERE typeof(lamport) != 'integer' OR lamport NOT BETWEEN 0 AND 9007199254740991;
UPDATE conversations SET lamport = (
    SELECT COALESCE(MAX(lamport), 0) FROM chat_messages WHERE topic = conversations.topic)
WHERE typeof(lamport) != 'integer' OR lamport NOT BETWEEN 0 AND 9007199254740991;
"""

# Chat features (issue 16; groups/chat_actions.py): replies, edits, deletes for everyone,
# disappearing messages (``expires_at``, ms), one reaction per member and message, the
# conversation's timer and mute, and a full-text index of what is shown (text and file
# name; edits update it, deletes and disappearing remove it). ``action_seq``: the mesh
# seq of the newest edit or delete applied, so that a late older one changes nothing.
_CHAT_FEATURES = """
ALTER TABLE chat_messages ADD COLUMN reply_to BLOB;
ALTER TABLE chat_messages ADD COLUMN edited_at INTEGER;
ALTER TABLE chat_messages ADD COLUMN edits INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chat_messages ADD COLUMN action_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chat_messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chat_messages ADD COLUMN expires_at INTEGER;
CREATE INDEX chat_messages_expiry ON chat_messages (expires_at) WHERE expires_at IS NOT NULL;
ALTER TABLE conversations ADD COLUMN timer INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN timer_order INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN muted INTEGER NOT NULL DEFAULT 0;
CREATE TABLE reactions (
    message_id BLOB NOT NULL REFERENCES chat_messages (message_id),
    member     TEXT NOT NULL,
    emoji      TEXT NOT NULL,
    seq        INTEGER NOT NULL,          -- the mesh seq that carried it (newest wins)
    PRIMARY KEY (message_id, member)
);
CREATE VIRTUAL TABLE chat_search USING fts5 (
    body, message_id UNINDEXED, topic UNINDEXED, tokenize = 'unicode61 remove_diacritics 2');
INSERT INTO chat_search (body, message_id, topic)
    SELECT c.text || COALESCE(' ' || (SELECT a.name FROM attachments a
                                       WHERE a.message_id = c.message_id LIMIT 1), ''),
           c.message_id, c.topic FROM chat_messages c;
"""

# Every disappearing-messages timer change of a conversation (who, to what, when by its
# sender's clock), kept for the chat's system lines; the newest by ``ord`` (its
# ordering value) is the conversation's timer.
_TIMER_CHANGES = """
CREATE TABLE timer_changes (
    topic   BLOB NOT NULL REFERENCES conversations (topic),
    ord     INTEGER NOT NULL,
    author  TEXT NOT NULL,
    seconds INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (topic, ord, author)
);
"""

# Version 7: profiles (groups/profiles.py): the newest profile each user sent us (ours
# too) and since when (our clock) it has held its name, our nicknames for people, and up
# to which version each peer has been sent ours.
_PROFILES = """
CREATE TABLE profiles (
    user_id     TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    avatar      BLOB,
    avatar_mime TEXT,
    version     INTEGER NOT NULL,
    named_at    INTEGER NOT NULL
);
CREATE TABLE nicknames (
    user_id  TEXT PRIMARY KEY,
    nickname TEXT NOT NULL
);
CREATE TABLE profile_shared (
    user_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
"""

# The search index again, each entry under the rowid of its message's chat_messages row,
# so that an edit, a delete or a disappearing message finds its entry without a scan
# (message_id is UNINDEXED in FTS5: a lookup by it read the whole index, 0.6 ms per
# stored message at 2,000 messages; bench/chat.py).
_SEARCH_BY_ROWID = """
DELETE FROM chat_search;
INSERT INTO chat_search (rowid, body, message_id, topic)
    SELECT c.rowid, c.text || COALESCE(' ' || (SELECT a.name FROM attachments a
                                               WHERE a.message_id = c.message_id LIMIT 1), ''),
           c.message_id, c.topic FROM chat_messages c WHERE c.deleted = 0;
"""

MIGRATIONS: list[str] = [_V1_KEYS, _V2_MESSENGER, _V3_ATTACHMENTS, _V4_ORDER_REPAIR,
                         _CHAT_FEATURES, _TIMER_CHANGES, _PROFILES, _SEARCH_BY_ROWID]

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
