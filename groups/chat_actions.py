"""The rules of reactions, replies, edits, deletes for everyone and disappearing
messages (sans-IO: rows and time in, effects out).

One rule decides for both sides: ``problem`` says why an action on a message may not
happen, and the same answer refuses our user's request (a typed error, nothing sent)
and a member's message (ignored: nothing of it is stored in the chat; the mesh keeps
the envelope for the other members, whose seq chains must stay whole).

Limits follow Signal's: only your own messages can be edited or deleted for everyone,
for 24 hours after they were sent, at most 10 edits a message. Times are the senders'
claims (as in Signal): a modified client can backdate, but can only touch its own
messages. See docs/protocol.md, "Chat actions".
"""

from __future__ import annotations

import logging
import unicodedata

from groups import conversation_clock
from groups.conversation_events import (
    Changed,
    ChatRow,
    Conversation,
    DeleteText,
    EditText,
    Effect,
    HoldAction,
    Notify,
    RemoveMessage,
    SetClock,
    SetReaction,
    SetTimer,
)
from groups.errors import NotFound, PermissionDenied, Unsendable
from groups.messages import MAX_EDITS, MAX_TEXT_BYTES, MAX_TIMER, Delete, Edit, Reaction, Timer

__all__ = ["DELETE_WINDOW_MS", "EDIT_WINDOW_MS", "HOLD_SECONDS", "MIN_TIMER", "HeldActions",
           "check_emoji", "check_timer", "expired", "expires_at", "problem", "raise_problem",
           "receive_action", "receive_timer"]

log = logging.getLogger(__name__)

EDIT_WINDOW_MS = 24 * 3600 * 1000
DELETE_WINDOW_MS = 24 * 3600 * 1000
MIN_TIMER = 5   # seconds; 0 turns disappearing messages off
HOLD_SECONDS = 600.0   # a held action whose target has not come by then is dropped
HOLD_MAX = 1024
HOLD_PER_MEMBER = 64

_ERRORS: dict[str, tuple[type[PermissionDenied], str]] = {
    "unknown_target": (NotFound, "no such message in this conversation"),
    "deleted": (PermissionDenied, "that message was deleted"),
    "not_yours": (PermissionDenied, "you can only change your own messages"),
    "too_late": (PermissionDenied, "messages can be edited or deleted for everyone only "
                                   "within 24 hours of sending them"),
    "too_many_edits": (PermissionDenied, f"a message can be edited at most {MAX_EDITS} times"),
    "bad_emoji": (Unsendable, "a reaction is one emoji"),
    "empty_message": (Unsendable, "an edited message needs text"),
    "text_too_long": (Unsendable, f"a message holds at most {MAX_TEXT_BYTES} bytes of text"),
    "bad_timer": (Unsendable, f"the timer is 0 (off) or {MIN_TIMER} s to {MAX_TIMER} s"),
}


def check_emoji(emoji: str) -> bool:
    """One emoji (or "" to take a reaction back): no letters, digits, spaces or control
    characters; joiners and variation selectors may glue its code points together."""
    if emoji == "":
        return True
    if len(emoji.encode()) > 32 or len(emoji) > 10:
        return False
    for ch in emoji:
        category = unicodedata.category(ch)
        if ch.isascii() and ch not in "#*0123456789":
            return False
        if category[0] in "LZ" or (category[0] == "C" and ch != "\u200d"):
            return False
    return any(unicodedata.category(ch) in ("So", "Me") for ch in emoji)   # Me: keycaps


def check_timer(seconds: int) -> bool:
    return seconds == 0 or MIN_TIMER <= seconds <= MAX_TIMER


def problem(conv: Conversation, origin: str, target: ChatRow | None,
            action: Reaction | Edit | Delete) -> str | None:
    """Why ``origin`` may not do ``action`` to ``target`` in ``conv`` (None: it may)."""
    if target is None or target.topic != conv.topic:
        return "unknown_target"
    if target.deleted:
        return "deleted"
    if isinstance(action, Reaction):
        return None if check_emoji(action.emoji) else "bad_emoji"
    if target.sender != origin:
        return "not_yours"
    window = EDIT_WINDOW_MS if isinstance(action, Edit) else DELETE_WINDOW_MS
    if not 0 <= action.sent_at - target.sent_at <= window:
        return "too_late"
    if isinstance(action, Edit):
        if target.edits >= MAX_EDITS:
            return "too_many_edits"
        if len(action.text.encode()) > MAX_TEXT_BYTES:
            return "text_too_long"
        if not action.text.strip() and target.file is None:
            return "empty_message"
    return None


def raise_problem(reason: str | None) -> None:
    """Our user's request: refuse it with the error the API shows."""
    if reason is not None:
        cls, message = _ERRORS[reason]
        raise cls(message) if cls is NotFound else cls(message, reason)


def receive_action(conv: Conversation, origin: str, seq: int, target: ChatRow | None,
                   action: Reaction | Edit | Delete) -> list[Effect]:
    """A reaction, edit or delete (a member's, or ours as we send it), carried by mesh
    ``seq``. Refused ones change nothing; an older one of the same sender arriving after
    a newer one (``seq``) changes nothing either (the adapter compares stored seqs)."""
    reason = problem(conv, origin, target, action)
    if reason == "unknown_target":
        # Perhaps on its way still: anti-entropy brings each origin's messages in its own
        # order, so a reaction can come before what it reacts to.
        return [HoldAction(conv.topic, origin, seq, action)]
    if reason is not None or target is None:
        log.info("ignored a %s from %s: %s", action.TYPE, origin, reason)
        return []
    if isinstance(action, Reaction):
        effect: Effect = SetReaction(target.message_id, origin, action.emoji, seq)
    elif isinstance(action, Edit):
        effect = EditText(target.message_id, action.text, action.sent_at, seq)
    else:
        effect = DeleteText(target.message_id, seq)
    return [effect, Changed(target.message_id)]


class HeldActions:
    """Reactions, edits and deletes whose target has not arrived yet, in memory only:
    nothing of them is stored, they go after HOLD_SECONDS or with a restart, and a
    member can hold at most HOLD_PER_MEMBER of them (HOLD_MAX in all): a forged one for
    a message that never comes costs little and lands nowhere."""

    def __init__(self) -> None:
        self._held: dict[bytes, list[tuple[float, HoldAction]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._held.values())

    def hold(self, target: bytes, held: HoldAction, now: float) -> bool:
        self._prune(now)
        mine = sum(1 for v in self._held.values() for _, h in v if h.origin == held.origin)
        if len(self) >= HOLD_MAX or mine >= HOLD_PER_MEMBER:
            log.info("dropped a %s from %s for a message not here", held.action.TYPE,
                     held.origin)
            return False
        self._held.setdefault(target, []).append((now + HOLD_SECONDS, held))
        return True

    def release(self, target: bytes, now: float) -> list[HoldAction]:
        """The target arrived: what was held for it (oldest first), no longer held."""
        return [h for until, h in self._held.pop(target, []) if until > now]

    def _prune(self, now: float) -> None:
        for target in list(self._held):
            kept = [(until, h) for until, h in self._held[target] if until > now]
            if kept:
                self._held[target] = kept
            else:
                del self._held[target]


def receive_timer(conv: Conversation, origin: str, content: Timer, current_order: int,
                  clock: int, now: float) -> list[Effect]:
    """Any member sets the conversation's timer; the newest change (by ordering value,
    bounded as texts are) wins, so every member ends with the same timer."""
    order = conversation_clock.receive_value(content.lamport, now)
    current = order > current_order
    return [SetClock(conv.topic, conversation_clock.observe(clock, content.lamport, now)),
            SetTimer(conv.topic, content.seconds, order, origin, content.sent_at, current),
            Notify("timer", {"conversation": conv.topic.hex(), "by": origin,
                             "seconds": content.seconds, "at": content.sent_at,
                             "current": current})]


def expires_at(sent_at: int, seconds: int, now: float) -> int | None:
    """When a message sent at ``sent_at`` with timer ``seconds`` disappears: counted from
    when it was sent, or from now if it claims to be from the future."""
    if seconds == 0:
        return None
    return min(sent_at, int(now * 1000)) + seconds * 1000


def expired(rows: list[ChatRow], now: float) -> list[Effect]:
    """Of these messages (the adapter's soonest to expire), remove those whose time is
    up at ``now``."""
    now_ms = int(now * 1000)
    return [RemoveMessage(row.message_id, row.topic) for row in rows
            if row.expires_at is not None and row.expires_at <= now_ms]
