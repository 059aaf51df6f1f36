"""Stored "safety number changed" lines: one per conversation shared with a user whose
identity key changed (schema version 9 in groups/schema.py).

Signal keeps such a warning in every chat with that person, in order with the messages,
so that it is still there after a reload or a restart; a warning that lived only in the
page's memory was gone as soon as the tab reloaded. Each entry takes the conversation's
next ordering value (groups.conversation_clock) when the change is noticed, so it sorts
after every message the node held then and before every later one.

Bounds: an entry is written only when the key differs from the one of the newest entry
for that (conversation, user), so the same changed key seen on many messages adds one
line; a peer that flips between keys adds one per flip, and each conversation keeps only
its newest ``MAX_PER_CONVERSATION`` entries (older ones are dropped as new ones come).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from groups import conversation_clock, history
from groups.errors import Unsendable

__all__ = ["MAX_PER_CONVERSATION", "SafetyChange", "changes", "record"]

MAX_PER_CONVERSATION = 50


@dataclass(frozen=True)
class SafetyChange:
    """One stored line: in ``conversation`` (topic, hex), ``user``'s key changed, noticed
    at ``at`` (ms, our clock), placed at ``order`` (the messages' ordering value)."""

    conversation: str
    user: str
    at: int
    order: int

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def record(conn: sqlite3.Connection, topics: Iterable[bytes], user_id: str,
           identity_key: bytes, now: float) -> list[SafetyChange]:
    """Note that ``user_id`` now shows ``identity_key`` in each of ``topics`` (inside the
    caller's transaction); returns the entries written (none where it was noted already).

    The conversation's clock moves to the entry's value, as a message we sent would:
    a message sent afterwards sorts after the line."""
    written = []
    for topic in topics:
        newest = conn.execute(
            "SELECT identity_key FROM safety_changes WHERE topic = ? AND user_id = ? "
            "ORDER BY ord DESC LIMIT 1", (topic, user_id)).fetchone()
        if newest is not None and newest[0] == identity_key:
            continue
        last = history.order_clock(conn, topic)
        try:
            order = conversation_clock.tick(last, now)
        except Unsendable:  # an exhausted clock: the line goes at its end
            order = last
        history.set_order_clock(conn, topic, order)
        at = int(now * 1000)
        conn.execute("INSERT OR IGNORE INTO safety_changes (topic, user_id, ord, identity_key, "
                     "noticed_at) VALUES (?, ?, ?, ?, ?)",
                     (topic, user_id, order, identity_key, at))
        conn.execute("DELETE FROM safety_changes WHERE topic = ? AND rowid NOT IN (SELECT rowid "
                     "FROM safety_changes WHERE topic = ? ORDER BY ord DESC, rowid DESC "
                     "LIMIT ?)", (topic, topic, MAX_PER_CONVERSATION))
        written.append(SafetyChange(topic.hex(), user_id, at, order))
    return written


def changes(conn: sqlite3.Connection, topic: bytes) -> list[SafetyChange]:
    """The conversation's stored entries, oldest first."""
    rows = conn.execute("SELECT user_id, noticed_at, ord FROM safety_changes WHERE topic = ? "
                        "ORDER BY ord, rowid", (topic,)).fetchall()
    return [SafetyChange(topic.hex(), user, at, order) for user, at, order in rows]
