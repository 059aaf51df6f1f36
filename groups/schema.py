"""The node database's schema: ``MIGRATIONS[n]`` takes it from version n to n+1.

groups.store opens the database with these (mesh.db.open_db: created atomically, backed
up before a migration). Later parts of Parley append their tables as new entries and
never edit old ones: a node's database is at whatever version it last ran, and every
version between it and the newest runs in order. docs/protocol.md §7 describes each.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

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

# Version 9: "safety number changed" lines (groups/safety_changes.py): per conversation,
# whose identity key changed, to which key, when we noticed (ms) and the ordering value
# the line sorts at; at most 50 per conversation (the newest are kept).
_SAFETY_CHANGES = """
CREATE TABLE safety_changes (
    topic        BLOB NOT NULL REFERENCES conversations (topic),
    user_id      TEXT NOT NULL,
    ord          INTEGER NOT NULL,
    identity_key BLOB NOT NULL,
    noticed_at   INTEGER NOT NULL,
    PRIMARY KEY (topic, user_id, ord)
);
"""

MIGRATIONS: list[str] = [_V1_KEYS, _V2_MESSENGER, _V3_ATTACHMENTS, _V4_ORDER_REPAIR,
                         _CHAT_FEATURES, _TIMER_CHANGES, _PROFILES, _SEARCH_BY_ROWID,
                         _SAFETY_CHANGES]
