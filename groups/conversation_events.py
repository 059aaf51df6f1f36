"""The vocabulary of the conversation core (groups/conversation.py): the rows it reasons
about and the effects it returns.

The core decides; its adapter (groups/conversation_io.py) carries the decisions out, in
the order given, inside the caller's transaction: an effect is a row to write, a key to
make or drop, a pairwise message owed, a mesh call or a UI event. Effects are plain
frozen data so that unit tests can read a decision without a database or a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from groups.group import Op
from groups.messages import Delete, Edit, FileRef, Reaction

__all__ = [
    "AcceptSenderKey",
    "Announce",
    "Changed",
    "ChatRow",
    "Conversation",
    "ConversationKind",
    "DeleteText",
    "DeliveryState",
    "EditText",
    "Effect",
    "FailDeliveries",
    "ForgetSenderKeys",
    "HoldAction",
    "JoinSettled",
    "LeaveTopic",
    "MakeSenderKey",
    "MarkLeft",
    "Notify",
    "OpenDirect",
    "OwePairwise",
    "OweReceipt",
    "PairwiseKind",
    "PublishOp",
    "ReceiptKind",
    "RemoveMessage",
    "Resync",
    "RevealDirect",
    "RotateSenderKey",
    "SetClock",
    "SetDelivery",
    "SetReaction",
    "SetTimer",
    "StartGroup",
    "StoreOp",
    "StoreText",
]


class ConversationKind(StrEnum):
    GROUP = "group"
    DIRECT = "direct"


class DeliveryState(StrEnum):
    """Per member, for each message we sent; a state only moves forward (``rank``),
    except that ``failed`` can be left again by a later success."""

    FAILED = "failed"
    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"

    @property
    def rank(self) -> int:
        return list(DeliveryState).index(self)


class ReceiptKind(StrEnum):
    DELIVERED = "delivered"
    READ = "read"


class PairwiseKind(StrEnum):
    """What a row of the pairwise outbox carries (its ``kind`` column)."""

    SENDER_KEY = "skey"      # made from our current sender key when it is *queued*
    OPS = "op"               # membership ops for someone no longer on the topic
    JOIN = "join"
    WELCOME = "welcome"
    JOIN_REFUSED = "join-no"
    PROFILE = "profile"      # our display name and avatar (groups/profiles.py)


# Rows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    topic: bytes
    kind: str
    peer: str | None
    name: str
    joined_at: int
    left_at: int | None
    visible: bool
    timer: int = 0          # disappearing messages: seconds (0: off) for what we send
    muted: bool = False


@dataclass(frozen=True)
class ChatRow:
    message_id: bytes
    topic: bytes
    sender: str
    seq: int
    lamport: int
    sent_at: int
    text: str
    file: bytes | None
    seen: bool
    reply_to: bytes | None = None
    edited_at: int | None = None   # ms, the sender's clock, of the edit shown
    edits: int = 0
    action_seq: int = 0            # mesh seq of the newest edit or delete applied
    deleted: bool = False
    expires_at: int | None = None  # ms: disappears then (on every member's node)


# Effects: group state ------------------------------------------------------------------


@dataclass(frozen=True)
class StartGroup:
    """Create (or rejoin) the group conversation."""

    topic: bytes
    name: str


@dataclass(frozen=True)
class StoreOp:
    topic: bytes
    op: Op


@dataclass(frozen=True)
class PublishOp:
    """Commit our op as a mesh message on the group topic (handed out after commit)."""

    topic: bytes
    op: Op


@dataclass(frozen=True)
class MarkLeft:
    topic: bytes


@dataclass(frozen=True)
class Announce:
    """Tell the mesh who shares the topic now (and look up members we cannot reach)."""

    topic: bytes


@dataclass(frozen=True)
class LeaveTopic:
    """Stop sharing the topic, once what we committed with this change went out."""

    topic: bytes


@dataclass(frozen=True)
class Resync:
    """Ask the topic's peers again for what we lack, once committed messages went out."""

    topic: bytes


# Effects: keys and pairwise messages -----------------------------------------------------


@dataclass(frozen=True)
class MakeSenderKey:
    topic: bytes


@dataclass(frozen=True)
class RotateSenderKey:
    topic: bytes


@dataclass(frozen=True)
class ForgetSenderKeys:
    """Drop ``sender``'s keys in the group, or (None) every key of the group."""

    topic: bytes
    sender: str | None = None


@dataclass(frozen=True)
class AcceptSenderKey:
    topic: bytes
    sender: str
    key: bytes


@dataclass(frozen=True)
class OpenDirect:
    """Make sure the (hidden) 1:1 topic with ``peer`` exists: pairwise messages ride it."""

    peer: str


@dataclass(frozen=True)
class RevealDirect:
    """Show the 1:1 conversation with ``peer`` to the user (a text arrived on it)."""

    peer: str


@dataclass(frozen=True)
class OwePairwise:
    """Durably owe ``peer`` a pairwise content (the outbox sends it when it can)."""

    peer: str
    kind: PairwiseKind
    topic: bytes | None = None
    content: bytes | None = None


# Effects: texts, deliveries, receipts -------------------------------------------------------


@dataclass(frozen=True)
class SetClock:
    topic: bytes
    value: int


@dataclass(frozen=True)
class StoreText:
    """Store a received text and show it (``file``: tell the attachments it exists)."""

    row: ChatRow
    file: FileRef | None


@dataclass(frozen=True)
class OweReceipt:
    message_id: bytes
    topic: bytes
    kind: ReceiptKind


@dataclass(frozen=True)
class SetDelivery:
    message_id: bytes
    member: str
    state: DeliveryState


@dataclass(frozen=True)
class FailDeliveries:
    """Our messages in ``topic`` not yet with ``member`` will never reach them."""

    topic: bytes
    member: str
    reason: str


@dataclass(frozen=True)
class SetReaction:
    """``member``'s reaction to a message ("" takes it back), carried by mesh ``seq``."""

    message_id: bytes
    member: str
    emoji: str
    seq: int


@dataclass(frozen=True)
class EditText:
    message_id: bytes
    text: str
    edited_at: int
    seq: int


@dataclass(frozen=True)
class DeleteText:
    """Deleted for everyone: the text, file (chunks on disk too) and reactions go; a
    tombstone row stays so that the chat can say so."""

    message_id: bytes
    seq: int


@dataclass(frozen=True)
class HoldAction:
    """A member's reaction, edit or delete whose target is not here (yet): kept in
    memory only, for a while, and applied if the target arrives (chat_actions.Held)."""

    topic: bytes
    origin: str
    seq: int
    action: Reaction | Edit | Delete


@dataclass(frozen=True)
class RemoveMessage:
    """A disappearing message's time is up: nothing of it stays (row, reactions,
    index, file chunks)."""

    message_id: bytes
    topic: bytes


@dataclass(frozen=True)
class SetTimer:
    """A timer change: kept as a system line; the conversation's timer if ``current``."""

    topic: bytes
    seconds: int
    order: int          # the ordering value of the change (the newest wins)
    author: str
    sent_at: int
    current: bool


@dataclass(frozen=True)
class Changed:
    """A message's reactions, text or state changed: show it again."""

    message_id: bytes


# Effects: the user ------------------------------------------------------------------------


@dataclass(frozen=True)
class Notify:
    event: str
    data: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class JoinSettled:
    """A join we asked for was answered: ``refused`` is None when we are in."""

    topic: bytes
    refused: tuple[str, str] | None = None   # (who, reason)


Effect = (StartGroup | StoreOp | PublishOp | MarkLeft | Announce | LeaveTopic | Resync
          | MakeSenderKey | RotateSenderKey | ForgetSenderKeys | AcceptSenderKey | OpenDirect
          | RevealDirect | OwePairwise | SetClock | StoreText | OweReceipt | SetDelivery
          | FailDeliveries | Notify | JoinSettled | SetReaction | EditText | DeleteText
          | HoldAction | RemoveMessage | SetTimer | Changed)
