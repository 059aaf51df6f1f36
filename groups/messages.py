"""What rides inside mesh messages: envelopes, content types, receipts, ordering.

A mesh message's payload is an *envelope* ``msgpack [kind, body]``:

- ``OP``       (group topics) a signed membership op (groups.group.Op), readable by the
               group's members, who are the only peers the topic is shared with;
- ``SEALED``   (group topics) a sender-key ciphertext of a Content;
- ``PAIRWISE`` (direct topics) a Signal-session ciphertext of a Content.

Contents are msgpack maps with a type ``t`` and exactly that type's fields, decoded
strictly: anything else raises BadContent, and nothing of it is stored.
See docs/protocol.md, "Messages".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from groups.conversation_clock import MAX_ORDER
from groups.errors import BadContent, Unsendable

__all__ = [
    "CHAT_ACTIONS",
    "DIRECT_CONTENTS",
    "GROUP_CONTENTS",
    "MAX_AVATAR_BYTES",
    "MAX_EDITS",
    "MAX_EMOJI_BYTES",
    "MAX_FILE_CHUNKS",
    "MAX_FILE_SIZE",
    "MAX_INT",
    "MAX_PROFILE_NAME_BYTES",
    "MAX_TEXT_BYTES",
    "MAX_TIMER",
    "Content",
    "Delete",
    "Edit",
    "Envelope",
    "EnvelopeKind",
    "FileRef",
    "JoinRefused",
    "JoinRequest",
    "OpNotice",
    "Profile",
    "Reaction",
    "Receipts",
    "SenderKey",
    "Text",
    "Timer",
    "Welcome",
    "decode_content",
    "direct_topic",
]

MAX_TEXT_BYTES = 64 * 1024
MAX_EMOJI_BYTES = 32                # one emoji, however many code points it joins
MAX_EDITS = 10                      # per message, as Signal
MAX_TIMER = 28 * 24 * 3600          # disappearing messages: at most 4 weeks (seconds)
MAX_PROFILE_NAME_BYTES = 64
MAX_AVATAR_BYTES = 32 * 1024
MAX_FILE_SIZE = 26_214_400          # 25 MiB per attachment
FILE_CHUNK_SIZE = 256 * 1024        # groups.crypto.ATTACHMENT_CHUNK_SIZE
MAX_FILE_CHUNKS = MAX_FILE_SIZE // FILE_CHUNK_SIZE   # 100
MAX_RECEIPT_IDS = 512
MAX_WELCOME_OPS = 10_000
MAX_NOTICE_OPS = 64
MAX_INT = MAX_ORDER   # every integer in a content: 0..2^53-1 (exact in JSON and JavaScript)
MAX_SENT_AT = 8_640_000_000_000_000   # ms: the last instant a JavaScript Date can hold


class EnvelopeKind(IntEnum):
    OP = 1
    SEALED = 2
    PAIRWISE = 3


@dataclass(frozen=True)
class Envelope:
    kind: EnvelopeKind
    body: bytes

    def encode(self) -> bytes:
        return msgpack.packb([int(self.kind), self.body], use_bin_type=True)

    @classmethod
    def decode(cls, payload: bytes) -> Envelope:
        try:
            kind, body = msgpack.unpackb(payload, raw=False)
            if type(kind) is not int or type(body) is not bytes:
                raise ValueError("envelope fields of the wrong type")
            envelope = cls(EnvelopeKind(kind), body)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise BadContent(f"malformed envelope: {exc}") from None
        if envelope.encode() != payload:
            raise BadContent("envelope is not canonically encoded")
        return envelope


def direct_topic(a: str, b: str) -> bytes:
    """The topic of the 1:1 conversation between two users (the same for both)."""
    low, high = sorted((a, b))
    return hashlib.sha256(b"parley/direct/v1" + low.encode() + high.encode()).digest()[:16]


# Contents --------------------------------------------------------------------------

_TYPES: dict[str, type[Content]] = {}


@dataclass(frozen=True)
class Content:
    """Base of the plaintexts. ``LIMITS`` bounds bytes/str lengths, list sizes and
    integers (MAX_INT unless it says less); ``ITEM_LEN`` gives the exact length of a
    byte string, or of each item of a list of byte strings. ``OPTIONAL`` fields are
    left out of the wire form while they hold their default, so a content without them
    encodes exactly as it did before they existed (older nodes still read it)."""

    TYPE: ClassVar[str]
    LIMITS: ClassVar[dict[str, int]] = {}
    ITEM_LEN: ClassVar[dict[str, int]] = {}
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _TYPES[cls.TYPE] = cls

    def encode(self) -> bytes:
        """The wire form, checked as a receiver would check it: what we could not
        receive, we do not send (Unsendable, before anything is encrypted or stored)."""
        body = {"t": self.TYPE}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.OPTIONAL and value == f.default:
                continue
            body[f.name] = value.to_msgpack() if isinstance(value, FileRef) else (
                list(value) if isinstance(value, tuple) else value)
        try:
            data = msgpack.packb(body, use_bin_type=True)
            decode_content(data, (type(self),))
        except (BadContent, ValueError, TypeError, OverflowError) as exc:
            raise Unsendable(f"this {self.TYPE} cannot be sent: {exc}", "bad_content") from None
        return data


def decode_content(data: bytes, allowed: tuple[type[Content], ...]) -> Content:
    """Parse a decrypted plaintext; only the ``allowed`` types for this channel pass."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise BadContent("content is not msgpack") from None
    if not isinstance(obj, dict):
        raise BadContent("content must be a map")
    cls = _TYPES.get(obj.get("t")) if isinstance(obj.get("t"), str) else None
    if cls is None or cls not in allowed:
        raise BadContent(f"content type {obj.get('t')!r} is not allowed here")
    names = {f.name: f for f in fields(cls)}
    required = {"t", *names} - cls.OPTIONAL
    if not required <= set(obj) <= {"t", *names}:
        raise BadContent(f"{cls.TYPE} content has wrong fields")
    values = {}
    for name in names:
        if name not in obj:
            continue   # an optional field left out: its default
        value = obj[name]
        if name in cls.OPTIONAL and value == names[name].default:
            raise BadContent(f"{cls.TYPE}.{name} is sent only when it is not the default")
        hint = cls.__annotations__[name]
        values[name] = _check(value, hint, cls.LIMITS.get(name), cls.ITEM_LEN.get(name),
                              f"{cls.TYPE}.{name}")
    return cls(**values)


def _check(value: Any, hint: str, limit: int | None, item_len: int | None,
           where: str) -> Any:
    if hint == "int":
        top = MAX_INT if limit is None else limit
        if type(value) is not int or not 0 <= value <= top:
            raise BadContent(f"{where} must be an integer in 0..{top}")
    elif hint in ("str", "bytes"):
        if type(value).__name__ != hint:
            raise BadContent(f"{where} must be {hint}")
        size = len(value.encode()) if hint == "str" else len(value)
        if limit is not None and size > limit:
            raise BadContent(f"{where} is longer than {limit} bytes")
        if item_len is not None and size != item_len:
            raise BadContent(f"{where} must be {item_len} bytes")
    elif hint == "tuple[bytes, ...]":
        if type(value) is not list or any(type(v) is not bytes or len(v) > 4096
                                          or (item_len and len(v) != item_len)
                                          for v in value):
            raise BadContent(f"{where} must be a list of byte strings of the right size")
        if limit is not None and len(value) > limit:
            raise BadContent(f"{where} has more than {limit} items")
        value = tuple(value)
    elif hint == "FileRef | None":
        value = None if value is None else FileRef.from_msgpack(value, where)
    else:  # pragma: no cover - a bug in a Content class, not input
        raise TypeError(f"unsupported content field type {hint}")
    return value


@dataclass(frozen=True)
class FileRef:
    """An attachment announced in a message (groups/attachments.py fills it in):
    ``chunk_hashes`` holds the SHA-256 of each encrypted chunk, one per 256 KiB of
    ``size`` (rounded up), so at most MAX_FILE_CHUNKS."""

    file_id: bytes
    key: bytes
    size: int
    mime: str
    name: str
    chunk_hashes: tuple[bytes, ...] = field(repr=False)

    def to_msgpack(self) -> dict[str, Any]:
        return {"id": self.file_id, "key": self.key, "size": self.size, "mime": self.mime,
                "name": self.name, "h": list(self.chunk_hashes)}

    @classmethod
    def from_msgpack(cls, obj: Any, where: str) -> FileRef:
        ok = (isinstance(obj, dict) and set(obj) == {"id", "key", "size", "mime", "name", "h"}
              and type(obj["id"]) is bytes and len(obj["id"]) == 32
              and type(obj["key"]) is bytes and len(obj["key"]) == 32
              and type(obj["size"]) is int and 0 < obj["size"] <= MAX_FILE_SIZE
              and type(obj["mime"]) is str and len(obj["mime"]) <= 100
              and type(obj["name"]) is str and len(obj["name"].encode()) <= 255
              and type(obj["h"]) is list and len(obj["h"]) <= MAX_FILE_CHUNKS
              and len(obj["h"]) == -(-obj["size"] // FILE_CHUNK_SIZE)
              and all(type(h) is bytes and len(h) == 32 for h in obj["h"]))
        if not ok:
            raise BadContent(f"{where} is not a valid file reference")
        return cls(obj["id"], obj["key"], obj["size"], obj["mime"], obj["name"],
                   tuple(obj["h"]))


@dataclass(frozen=True)
class Text(Content):
    """A chat message: text, optionally with a file (then ``text`` is its caption),
    optionally a reply to ``reply_to`` (a message id) and disappearing ``expires``
    seconds after it was sent (the conversation's timer when its sender sent it)."""

    TYPE = "text"
    LIMITS = {"text": MAX_TEXT_BYTES, "sent_at": MAX_SENT_AT, "reply_to": 32,
              "expires": MAX_TIMER}
    ITEM_LEN = {"reply_to": 32}
    OPTIONAL = frozenset({"reply_to", "expires"})
    lamport: int      # the ordering value (groups.conversation_clock)
    sent_at: int      # milliseconds since the epoch, as the sender's clock says
    text: str
    file: FileRef | None = None
    reply_to: bytes = b""
    expires: int = 0


@dataclass(frozen=True)
class Reaction(Content):
    """The sender's reaction to ``target`` (one per member and message: a later one
    replaces it, ``emoji`` "" takes it back)."""

    TYPE = "react"
    LIMITS = {"target": 32, "emoji": MAX_EMOJI_BYTES}
    ITEM_LEN = {"target": 32}
    target: bytes
    emoji: str


@dataclass(frozen=True)
class Edit(Content):
    """New text for one of the sender's own messages (groups/chat_actions.py: limits)."""

    TYPE = "edit"
    LIMITS = {"target": 32, "sent_at": MAX_SENT_AT, "text": MAX_TEXT_BYTES}
    ITEM_LEN = {"target": 32}
    target: bytes
    sent_at: int
    text: str


@dataclass(frozen=True)
class Delete(Content):
    """Delete one of the sender's own messages for everyone."""

    TYPE = "delete"
    LIMITS = {"target": 32, "sent_at": MAX_SENT_AT}
    ITEM_LEN = {"target": 32}
    target: bytes
    sent_at: int


@dataclass(frozen=True)
class Timer(Content):
    """The conversation's disappearing-messages timer (seconds, 0: off), set by any
    member; the newest by ordering value wins."""

    TYPE = "timer"
    LIMITS = {"sent_at": MAX_SENT_AT, "seconds": MAX_TIMER}
    lamport: int
    sent_at: int
    seconds: int


@dataclass(frozen=True)
class Receipts(Content):
    """Batched delivery and read receipts for messages of one conversation."""

    TYPE = "rcpt"
    LIMITS = {"delivered": MAX_RECEIPT_IDS, "read": MAX_RECEIPT_IDS}
    ITEM_LEN = {"delivered": 32, "read": 32}
    delivered: tuple[bytes, ...]
    read: tuple[bytes, ...]


@dataclass(frozen=True)
class SenderKey(Content):
    """A sender-key distribution message for ``group`` (pairwise only)."""

    TYPE = "skey"
    LIMITS = {"group": 16, "key": 4096}
    group: bytes
    key: bytes


@dataclass(frozen=True)
class Welcome(Content):
    """The group's op chain, sent to a member who was just added (pairwise only)."""

    TYPE = "welcome"
    LIMITS = {"group": 16, "ops": MAX_WELCOME_OPS}
    group: bytes
    ops: tuple[bytes, ...]


@dataclass(frozen=True)
class JoinRequest(Content):
    """"Add me": the bearer of an invite asks a member (pairwise only)."""

    TYPE = "join"
    LIMITS = {"group": 16, "secret": 32}
    group: bytes
    secret: bytes


@dataclass(frozen=True)
class JoinRefused(Content):
    TYPE = "join-no"
    LIMITS = {"group": 16, "reason": 64}
    group: bytes
    reason: str


@dataclass(frozen=True)
class OpNotice(Content):
    """Membership ops sent pairwise to someone who is no longer on the topic: a
    removed member learns of its removal this way. ``ops`` ends with the removal and
    starts with the ops before it that the member may have missed (in chain order)."""

    TYPE = "ops"
    LIMITS = {"group": 16, "ops": MAX_NOTICE_OPS}
    group: bytes
    ops: tuple[bytes, ...]


@dataclass(frozen=True)
class Profile(Content):
    """The sender's display name and avatar (``b""``: none), pairwise only; a higher
    ``version`` replaces a lower one (groups/profiles.py checks the rest)."""

    TYPE = "profile"
    LIMITS = {"name": MAX_PROFILE_NAME_BYTES, "avatar": MAX_AVATAR_BYTES}
    version: int
    name: str
    avatar: bytes


CHAT_ACTIONS = (Reaction, Edit, Delete, Timer)
GROUP_CONTENTS = (Text, Receipts, *CHAT_ACTIONS)
DIRECT_CONTENTS = (Text, Receipts, SenderKey, Welcome, JoinRequest, JoinRefused, OpNotice,
                   *CHAT_ACTIONS, Profile)
