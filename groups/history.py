"""Repository functions for the messenger's tables (schema versions 2 and 4 in
groups/schema.py).

``Mailbox`` is the SQLite implementation of mesh.gossip_state.MessageStore: every mesh
message a node commits, in any of its topics, so that it can serve them to others.
The rest are plain functions taking the connection first; callers group writes with
groups.store.atomic so that "decrypt, store, owe a receipt" lands together or not at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

import msgpack

from groups.conversation_clock import MAX_ORDER
from groups.conversation_events import ChatRow, Conversation
from groups.errors import Unsendable
from mesh.gossip_state import Message

__all__ = [
    "MAX_SEQ",
    "ChatRow",
    "Conversation",
    "Mailbox",
    "Position",
    "add_conversation",
    "add_op",
    "add_timer_change",
    "chat_message",
    "chat_messages",
    "conversation",
    "conversations",
    "cursor_of",
    "delete_message",
    "deliveries",
    "due_receipts",
    "edit_message",
    "fail_deliveries",
    "file_name",
    "insert_chat_message",
    "load_ops",
    "mark_left",
    "mark_seen",
    "next_own_seq",
    "note_undecrypted",
    "order_clock",
    "owe_pairwise",
    "owe_receipt",
    "owed_pairwise",
    "owes_pairwise",
    "own_messages",
    "pairwise_waits",
    "parse_cursor",
    "reactions",
    "remove_message",
    "replies_to",
    "search",
    "set_delivery",
    "set_muted",
    "set_order_clock",
    "set_reaction",
    "set_timer",
    "settle_pairwise",
    "settle_receipts",
    "soonest_expiring",
    "timer_changes",
    "timer_order",
    "undecrypted",
    "unread_count",
    "unseen_up_to",
]

MAX_SEQ = MAX_ORDER   # a peer's mesh seq beyond it is refused; ours refuses to pass it

# A state only moves forward; "failed" can be left again by a later success.
_RANK = {"failed": 0, "pending": 1, "sent": 2, "delivered": 3, "read": 4}


class Mailbox:
    """Committed mesh messages in SQLite (implements mesh.gossip_state.MessageStore)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(self, message: Message, now: float) -> bool:
        """Commit ``message`` (inside the caller's transaction); False if already held or
        if its (topic, origin, seq) slot holds another message."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO mesh_messages (msg_id, topic, origin, seq, payload, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?)",
            (message.msg_id, message.topic, message.origin, message.seq, message.payload,
             int(now)))
        if cur.rowcount == 0:
            return False
        head = self.head(message.topic, message.origin)
        if message.seq == head + 1:
            row = self.conn.execute(
                "WITH RECURSIVE run(s) AS (SELECT ? UNION ALL SELECT s + 1 FROM run "
                "WHERE EXISTS (SELECT 1 FROM mesh_messages WHERE topic = ? AND origin = ? "
                "AND seq = s + 1)) SELECT MAX(s) FROM run",
                (message.seq, message.topic, message.origin)).fetchone()
            self.conn.execute(
                "INSERT INTO mesh_heads (topic, origin, head) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, origin) DO UPDATE SET head = excluded.head",
                (message.topic, message.origin, row[0]))
        return True

    def has(self, msg_id: bytes) -> bool:
        return self.conn.execute("SELECT 1 FROM mesh_messages WHERE msg_id = ?",
                                 (msg_id,)).fetchone() is not None

    def get(self, msg_id: bytes) -> Message | None:
        row = self.conn.execute("SELECT topic, origin, seq, payload, msg_id FROM mesh_messages "
                                "WHERE msg_id = ?", (msg_id,)).fetchone()
        return Message(*row) if row else None

    def head(self, topic: bytes, origin: str) -> int:
        row = self.conn.execute("SELECT head FROM mesh_heads WHERE topic = ? AND origin = ?",
                                (topic, origin)).fetchone()
        return row[0] if row else 0

    def heads(self, topic: bytes) -> dict[str, int]:
        return dict(self.conn.execute(
            "SELECT origin, head FROM mesh_heads WHERE topic = ? AND head > 0", (topic,)))

    def get_range(self, topic: bytes, origin: str, from_seq: int,
                  limit: int) -> list[Message]:
        rows = self.conn.execute(
            "SELECT topic, origin, seq, payload, msg_id FROM mesh_messages WHERE topic = ? "
            "AND origin = ? AND seq >= ? ORDER BY seq LIMIT ?", (topic, origin, from_seq, limit))
        return [Message(*row) for row in rows]

    def retire_older_than(self, cutoff: float, own: str) -> int:
        """Retention: drop held messages received before ``cutoff``, except our own that
        some member has not confirmed yet (we are their only sure source). Heads stay
        where they were, so peers never offer the retired messages to us again; the
        chat history the user sees is kept. Returns how many were dropped."""
        keep_own = ("SELECT message_id FROM deliveries WHERE state IN ('pending', 'sent')")
        self.conn.execute(
            "DELETE FROM undecrypted WHERE msg_id IN (SELECT msg_id FROM mesh_messages "
            "WHERE received_at < ?)", (int(cutoff),))
        cur = self.conn.execute(
            f"DELETE FROM mesh_messages WHERE received_at < ? AND NOT (origin = ? AND "  # noqa: S608
            f"msg_id IN ({keep_own}))", (int(cutoff), own))
        return cur.rowcount

    def messages_of(self, topic: bytes) -> list[Message]:
        """All held messages of a topic in (origin, seq) order (used to replay)."""
        rows = self.conn.execute("SELECT topic, origin, seq, payload, msg_id FROM mesh_messages "
                                 "WHERE topic = ? ORDER BY origin, seq", (topic,))
        return [Message(*row) for row in rows]


# Conversations -----------------------------------------------------------------------


_CONV_COLUMNS = "topic, kind, peer, name, joined_at, left_at, visible, timer, muted"


def _conversation(row: tuple) -> Conversation:
    return Conversation(*row[:6], bool(row[6]), row[7], bool(row[8]))


def add_conversation(conn: sqlite3.Connection, topic: bytes, kind: str, name: str, now: float,
                     peer: str | None = None, *, visible: bool = True) -> None:
    """Create the conversation, or rejoin it; ``visible`` only ever turns on."""
    conn.execute("INSERT INTO conversations (topic, kind, peer, name, joined_at, visible) "
                 "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (topic) DO UPDATE SET left_at = NULL, "
                 "visible = MAX(visible, excluded.visible)",
                 (topic, kind, peer, name, int(now), int(visible)))


def conversation(conn: sqlite3.Connection, topic: bytes) -> Conversation | None:
    row = conn.execute(f"SELECT {_CONV_COLUMNS} FROM conversations "  # noqa: S608
                       "WHERE topic = ?", (topic,)).fetchone()
    return _conversation(row) if row else None


def conversations(conn: sqlite3.Connection) -> list[Conversation]:
    rows = conn.execute(f"SELECT {_CONV_COLUMNS} FROM conversations "  # noqa: S608
                        "ORDER BY joined_at")
    return [_conversation(row) for row in rows]


def mark_left(conn: sqlite3.Connection, topic: bytes, now: float) -> None:
    conn.execute("UPDATE conversations SET left_at = ? WHERE topic = ?", (int(now), topic))


def next_own_seq(conn: sqlite3.Connection, topic: bytes) -> int:
    """Our next mesh seq in ``topic``; refuses (Unsendable) rather than pass MAX_SEQ."""
    seq = conn.execute("SELECT own_seq FROM conversations WHERE topic = ?",
                       (topic,)).fetchone()[0] + 1
    if seq > MAX_SEQ:
        raise Unsendable("this conversation has run out of sequence numbers", "seq_exhausted")
    conn.execute("UPDATE conversations SET own_seq = ? WHERE topic = ?", (seq, topic))
    return seq


def order_clock(conn: sqlite3.Connection, topic: bytes) -> int:
    """The conversation's ordering clock (groups.conversation_clock)."""
    return conn.execute("SELECT lamport FROM conversations WHERE topic = ?",
                        (topic,)).fetchone()[0]


def set_order_clock(conn: sqlite3.Connection, topic: bytes, value: int) -> None:
    conn.execute("UPDATE conversations SET lamport = ? WHERE topic = ?", (value, topic))


# Membership ops --------------------------------------------------------------------


def add_op(conn: sqlite3.Connection, topic: bytes, op_hash: bytes, epoch: int,
           encoded: bytes) -> None:
    conn.execute("INSERT OR IGNORE INTO group_ops (op_hash, topic, epoch, op) VALUES (?, ?, ?, ?)",
                 (op_hash, topic, epoch, encoded))


def load_ops(conn: sqlite3.Connection, topic: bytes) -> list[bytes]:
    """Encoded ops of a group, genesis first (epoch order; forks in any order)."""
    return [row[0] for row in conn.execute(
        "SELECT op FROM group_ops WHERE topic = ? ORDER BY epoch", (topic,))]


# Chat messages, deliveries, receipts -----------------------------------------------------


_CHAT_COLUMNS = ("message_id, topic, sender, seq, lamport, sent_at, text, file, seen, "
                 "reply_to, edited_at, edits, action_seq, deleted, expires_at")


def _chat_row(r: tuple) -> ChatRow:
    return ChatRow(*r[:8], bool(r[8]), r[9], r[10], r[11], r[12], bool(r[13]), r[14])


def insert_chat_message(conn: sqlite3.Connection, row: ChatRow) -> bool:
    cur = conn.execute(f"INSERT OR IGNORE INTO chat_messages ({_CHAT_COLUMNS}) "  # noqa: S608
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (row.message_id, row.topic, row.sender, row.seq, row.lamport,
                        row.sent_at, row.text, row.file, int(row.seen), row.reply_to,
                        row.edited_at, row.edits, row.action_seq, int(row.deleted),
                        row.expires_at))
    if cur.rowcount != 1:
        return False
    _index(conn, cur.lastrowid or 0, row.message_id, row.topic, row.text, row.file)
    return True


# A message's search entry has the rowid of its chat_messages row (schema v7): found
# without a scan (message_id is UNINDEXED in the FTS5 table).
_UNINDEX = "DELETE FROM chat_search WHERE rowid = (SELECT rowid FROM chat_messages " \
           "WHERE message_id = ?)"


def _index(conn: sqlite3.Connection, rowid: int, message_id: bytes, topic: bytes, text: str,
           file: bytes | None) -> None:
    """Index what a new message shows: its text and its file's name."""
    body = " ".join(part for part in (text, file_name(file)) if part)
    if body:
        conn.execute("INSERT INTO chat_search (rowid, body, message_id, topic) "
                     "VALUES (?, ?, ?, ?)", (rowid, body, message_id, topic))


def file_name(file: bytes | None) -> str:
    if file is None:
        return ""
    try:
        name = msgpack.unpackb(file, raw=False).get("name", "")
    except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
        return ""
    return name if isinstance(name, str) else ""


def cursor_of(row: ChatRow) -> str:
    """The message's place in display order as the API's paging cursor."""
    return f"{row.lamport}.{row.sender}.{row.seq}"


def parse_cursor(raw: str) -> Position | None:
    parts = raw.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 16 for p in parts) \
            or len(parts[1]) != 15:
        return None
    return int(parts[0]), parts[1], int(parts[2])


def chat_message(conn: sqlite3.Connection, message_id: bytes) -> ChatRow | None:
    row = conn.execute(f"SELECT {_CHAT_COLUMNS} FROM chat_messages "  # noqa: S608
                       "WHERE message_id = ?", (message_id,)).fetchone()
    return _chat_row(row) if row else None


Position = tuple[int, str, int]
"""A message's place in display order: (lamport, sender, seq), unique per topic."""


def chat_messages(conn: sqlite3.Connection, topic: bytes, limit: int = 200,
                  before: Position | None = None) -> list[ChatRow]:
    """The last ``limit`` messages of a conversation before ``before`` (None: the
    newest), in display order. Keyset paging on the display order: a page never skips
    or repeats a stored message, however many share a value."""
    lamport, sender, seq = before if before is not None else (MAX_ORDER + 1, "", 0)
    rows = conn.execute(f"SELECT {_CHAT_COLUMNS} FROM chat_messages "  # noqa: S608
                        "WHERE topic = ? AND (lamport, sender, seq) < (?, ?, ?) "
                        "ORDER BY lamport DESC, sender DESC, seq DESC LIMIT ?",
                        (topic, lamport, sender, seq, limit)).fetchall()
    return [_chat_row(r) for r in reversed(rows)]


def replies_to(conn: sqlite3.Connection, topic: bytes, message_id: bytes) -> list[ChatRow]:
    """The messages of ``topic`` that reply to ``message_id``."""
    rows = conn.execute(f"SELECT {_CHAT_COLUMNS} FROM chat_messages "  # noqa: S608
                        "WHERE topic = ? AND reply_to = ?", (topic, message_id))
    return [_chat_row(r) for r in rows]


def unseen_up_to(conn: sqlite3.Connection, topic: bytes, me: str,
                 upto: Position) -> list[bytes]:
    """Others' messages not yet seen, at or before ``upto`` in display order."""
    return [r[0] for r in conn.execute(
        "SELECT message_id FROM chat_messages WHERE topic = ? AND seen = 0 AND sender != ? "
        "AND (lamport, sender, seq) <= (?, ?, ?)", (topic, me, *upto))]


# Reactions, edits, deletes, disappearing messages, search --------------------------------


def set_reaction(conn: sqlite3.Connection, message_id: bytes, member: str, emoji: str,
                 seq: int) -> bool:
    """``member``'s reaction ("" removes it), unless a newer one (seq) is stored."""
    row = conn.execute("SELECT seq FROM reactions WHERE message_id = ? AND member = ?",
                       (message_id, member)).fetchone()
    if row is not None and row[0] >= seq:
        return False
    conn.execute("INSERT INTO reactions (message_id, member, emoji, seq) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (message_id, member) DO UPDATE SET emoji = excluded.emoji, "
                 "seq = excluded.seq", (message_id, member, emoji, seq))
    return True


def reactions(conn: sqlite3.Connection, message_id: bytes) -> dict[str, list[str]]:
    """emoji -> the members who reacted with it."""
    out: dict[str, list[str]] = {}
    for emoji, member in conn.execute("SELECT emoji, member FROM reactions WHERE "
                                      "message_id = ? AND emoji != '' ORDER BY member",
                                      (message_id,)):
        out.setdefault(emoji, []).append(member)
    return out


def edit_message(conn: sqlite3.Connection, message_id: bytes, text: str, edited_at: int,
                 seq: int) -> bool:
    """Show ``text`` instead, unless a newer edit or the delete (seq) was applied."""
    cur = conn.execute("UPDATE chat_messages SET text = ?, edited_at = ?, edits = edits + 1, "
                       "action_seq = ? WHERE message_id = ? AND action_seq < ? AND deleted = 0",
                       (text, edited_at, seq, message_id, seq))
    if not cur.rowcount:
        return False
    row = conn.execute("SELECT rowid, topic, file FROM chat_messages WHERE message_id = ?",
                       (message_id,)).fetchone()
    conn.execute(_UNINDEX, (message_id,))
    _index(conn, row[0], message_id, row[1], text, row[2])
    return True


def delete_message(conn: sqlite3.Connection, message_id: bytes, seq: int) -> bytes | None:
    """Deleted for everyone: a tombstone without text, file or reactions stays. Returns
    the stored file reference (its chunks go too), or None."""
    row = chat_message(conn, message_id)
    if row is None or row.deleted:
        return None
    conn.execute("UPDATE chat_messages SET text = '', file = NULL, reply_to = NULL, "
                 "deleted = 1, action_seq = ? WHERE message_id = ?", (seq, message_id))
    conn.execute("DELETE FROM reactions WHERE message_id = ?", (message_id,))
    conn.execute(_UNINDEX, (message_id,))
    return row.file


def remove_message(conn: sqlite3.Connection, message_id: bytes) -> bytes | None:
    """Nothing of the message stays; returns its file reference (chunks go too)."""
    row = chat_message(conn, message_id)
    if row is None:
        return None
    conn.execute(_UNINDEX, (message_id,))
    for table in ("reactions", "deliveries", "receipts_due"):
        conn.execute(f"DELETE FROM {table} WHERE message_id = ?", (message_id,))  # noqa: S608
    conn.execute("DELETE FROM chat_messages WHERE message_id = ?", (message_id,))
    return row.file


def soonest_expiring(conn: sqlite3.Connection, limit: int = 500) -> list[ChatRow]:
    rows = conn.execute(f"SELECT {_CHAT_COLUMNS} FROM chat_messages "  # noqa: S608
                        "WHERE expires_at IS NOT NULL ORDER BY expires_at LIMIT ?", (limit,))
    return [_chat_row(r) for r in rows]


def timer_order(conn: sqlite3.Connection, topic: bytes) -> int:
    return conn.execute("SELECT timer_order FROM conversations WHERE topic = ?",
                        (topic,)).fetchone()[0]


def set_timer(conn: sqlite3.Connection, topic: bytes, seconds: int, order: int) -> None:
    conn.execute("UPDATE conversations SET timer = ?, timer_order = ? WHERE topic = ?",
                 (seconds, order, topic))


def add_timer_change(conn: sqlite3.Connection, topic: bytes, order: int, author: str,
                     seconds: int, sent_at: int) -> None:
    conn.execute("INSERT OR IGNORE INTO timer_changes (topic, ord, author, seconds, sent_at) "
                 "VALUES (?, ?, ?, ?, ?)", (topic, order, author, seconds, sent_at))


def timer_changes(conn: sqlite3.Connection, topic: bytes,
                  limit: int = 100) -> list[dict[str, object]]:
    """The newest ``limit`` timer changes, oldest first: {by, seconds, at (ms)}."""
    rows = conn.execute("SELECT author, seconds, sent_at FROM timer_changes WHERE topic = ? "
                        "ORDER BY ord DESC LIMIT ?", (topic, limit)).fetchall()
    return [{"by": by, "seconds": seconds, "at": at} for by, seconds, at in reversed(rows)]


def set_muted(conn: sqlite3.Connection, topic: bytes, muted: bool) -> None:
    conn.execute("UPDATE conversations SET muted = ? WHERE topic = ?", (int(muted), topic))


def search(conn: sqlite3.Connection, terms: list[str], topics: list[bytes],
           limit: int) -> list[tuple[ChatRow, str]]:
    """Messages of ``topics`` whose text or file name has every term (as a word prefix),
    best match first, each with a snippet (matches in [brackets])."""
    if not terms or not topics:
        return []
    query = " ".join('"' + term.replace('"', '""') + '"*' for term in terms)
    marks = ",".join("?" * len(topics))
    rows = conn.execute(
        f"SELECT c.{_CHAT_COLUMNS.replace(', ', ', c.')}, "  # noqa: S608
        "snippet(chat_search, 0, '[', ']', '…', 12) FROM chat_search s "
        "JOIN chat_messages c ON c.rowid = s.rowid "
        f"WHERE chat_search MATCH ? AND s.topic IN ({marks}) ORDER BY rank LIMIT ?",
        (query, *topics, limit)).fetchall()
    return [(_chat_row(r[:15]), r[15]) for r in rows]


def unread_count(conn: sqlite3.Connection, topic: bytes, me: str) -> int:
    """Messages of others in ``topic`` that our user has not seen."""
    return conn.execute("SELECT COUNT(*) FROM chat_messages WHERE topic = ? AND seen = 0 "
                        "AND sender != ?", (topic, me)).fetchone()[0]


def mark_seen(conn: sqlite3.Connection, message_ids: Iterable[bytes]) -> list[bytes]:
    """Mark messages seen by our user; returns those that were not seen before."""
    fresh = []
    for message_id in message_ids:
        cur = conn.execute("UPDATE chat_messages SET seen = 1 WHERE message_id = ? AND seen = 0",
                           (message_id,))
        if cur.rowcount:
            fresh.append(message_id)
    return fresh


def set_delivery(conn: sqlite3.Connection, message_id: bytes, member: str, state: str,
                 now: float, reason: str | None = None) -> bool:
    """Move a member's state for one of our messages forward; True if it changed."""
    row = conn.execute("SELECT state FROM deliveries WHERE message_id = ? AND member = ?",
                       (message_id, member)).fetchone()
    if row is not None and _RANK[row[0]] >= _RANK[state] and row[0] != "failed":
        return False
    conn.execute("INSERT INTO deliveries (message_id, member, state, reason, updated_at) "
                 "VALUES (?, ?, ?, ?, ?) ON CONFLICT (message_id, member) DO UPDATE SET "
                 "state = excluded.state, reason = excluded.reason, "
                 "updated_at = excluded.updated_at", (message_id, member, state, reason, int(now)))
    return True


def deliveries(conn: sqlite3.Connection, message_id: bytes) -> dict[str, dict[str, str | None]]:
    return {member: {"state": state, "reason": reason} for member, state, reason in conn.execute(
        "SELECT member, state, reason FROM deliveries WHERE message_id = ? ORDER BY member",
        (message_id,))}


def owe_receipt(conn: sqlite3.Connection, message_id: bytes, topic: bytes, kind: str) -> None:
    conn.execute("INSERT OR IGNORE INTO receipts_due (message_id, topic, kind) VALUES (?, ?, ?)",
                 (message_id, topic, kind))


def due_receipts(conn: sqlite3.Connection) -> dict[bytes, tuple[list[bytes], list[bytes]]]:
    """Receipts owed, per topic: (delivered ids, read ids)."""
    out: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
    for message_id, topic, kind in conn.execute(
            "SELECT message_id, topic, kind FROM receipts_due ORDER BY rowid"):
        delivered, read = out.setdefault(topic, ([], []))
        (delivered if kind == "delivered" else read).append(message_id)
    return out


def settle_receipts(conn: sqlite3.Connection, topic: bytes, delivered: Iterable[bytes],
                    read: Iterable[bytes]) -> None:
    conn.executemany("DELETE FROM receipts_due WHERE message_id = ? AND kind = ?",
                     [(m, "delivered") for m in delivered] + [(m, "read") for m in read])


def fail_deliveries(conn: sqlite3.Connection, topic: bytes, member: str, reason: str) -> None:
    """Our messages in ``topic`` still on their way to ``member`` never will be."""
    conn.execute("UPDATE deliveries SET state = 'failed', reason = ? WHERE member = ? AND "
                 "state IN ('pending', 'sent') AND message_id IN "
                 "(SELECT message_id FROM chat_messages WHERE topic = ?)", (reason, member, topic))


def own_messages(conn: sqlite3.Connection, topic: bytes, me: str,
                 message_ids: Iterable[bytes]) -> frozenset[bytes]:
    """Which of ``message_ids`` are messages ``me`` sent in ``topic``."""
    return frozenset(m for m in message_ids if conn.execute(
        "SELECT 1 FROM chat_messages WHERE message_id = ? AND topic = ? AND sender = ?",
        (m, topic, me)).fetchone())


# The pairwise outbox ---------------------------------------------------------------------


def owe_pairwise(conn: sqlite3.Connection, peer: str, kind: str, topic: bytes | None,
                 content: bytes | None, now: float) -> None:
    conn.execute("INSERT INTO pairwise_outbox (peer, kind, topic, content, created_at) "
                 "VALUES (?, ?, ?, ?, ?)", (peer, kind, topic, content, int(now)))


def owed_pairwise(conn: sqlite3.Connection) -> list[tuple[int, str, str, bytes | None,
                                                          bytes | None]]:
    """(row id, peer, kind, topic, content) of every owed pairwise message, oldest first."""
    return conn.execute("SELECT id, peer, kind, topic, content FROM pairwise_outbox "
                        "ORDER BY id").fetchall()


def owes_pairwise(conn: sqlite3.Connection, peer: str) -> bool:
    """Do we still owe ``peer`` a pairwise message (a join request, a sender key...)?"""
    return conn.execute("SELECT 1 FROM pairwise_outbox WHERE peer = ? LIMIT 1",
                        (peer,)).fetchone() is not None


def settle_pairwise(conn: sqlite3.Connection, row_id: int) -> None:
    conn.execute("DELETE FROM pairwise_outbox WHERE id = ?", (row_id,))


def pairwise_waits(conn: sqlite3.Connection, row_id: int, error: str) -> None:
    conn.execute("UPDATE pairwise_outbox SET attempts = attempts + 1, last_error = ? "
                 "WHERE id = ?", (error[:200], row_id))


def note_undecrypted(conn: sqlite3.Connection, msg_id: bytes, reason: str) -> None:
    conn.execute("INSERT INTO undecrypted (msg_id, reason) VALUES (?, ?) "
                 "ON CONFLICT (msg_id) DO UPDATE SET reason = excluded.reason", (msg_id, reason))


def undecrypted(conn: sqlite3.Connection, topic: bytes) -> list[Message]:
    """Messages of a topic still waiting for a key, in (origin, seq) order."""
    rows = conn.execute("SELECT m.topic, m.origin, m.seq, m.payload, m.msg_id FROM undecrypted u "
                        "JOIN mesh_messages m ON m.msg_id = u.msg_id WHERE m.topic = ? "
                        "ORDER BY m.origin, m.seq", (topic,))
    return [Message(*row) for row in rows]
