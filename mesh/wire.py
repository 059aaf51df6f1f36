"""Frame types and their strict msgpack encoding.

Every frame on a link is a msgpack map ``{"t": <type>, "v": <version>, <fields>...}``.
Decoding is strict: the map must hold exactly the declared fields with exactly the
declared types and sizes, and must re-encode to the same bytes, so that a frame has
one spelling only. Anything else raises FrameError, whose ``reason`` a link sends
in its Close frame. docs/protocol.md lists every frame.
"""

from __future__ import annotations

import hashlib
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import msgpack

from mesh.errors import FrameError

__all__ = [
    "MAX_CHUNK_DATA",
    "MAX_CHUNK_FRAME",
    "MAX_CONTROL_FRAME",
    "MAX_PAYLOAD",
    "MAX_REQUEST_CHUNKS",
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "Chunk",
    "ChunkRequest",
    "ChunkUnavailable",
    "Close",
    "Frame",
    "Graft",
    "Hello",
    "IHave",
    "IWant",
    "Ping",
    "Pong",
    "Prune",
    "Publish",
    "Signal",
    "Subscribe",
    "SyncSummary",
    "Unsubscribe",
    "decode",
    "encode",
    "message_id",
]

PROTOCOL_VERSION = 1
MAX_CONTROL_FRAME = 1024 * 1024
MAX_CHUNK_DATA = 256 * 1024
MAX_CHUNK_FRAME = MAX_CHUNK_DATA + 1024
# A 64 KiB text plus its sender-key envelope (header, padding, signature) must fit.
MAX_PAYLOAD = 96 * 1024
MAX_IDS = 4096
MAX_TOPICS = 1024
MAX_HEADS = 4096
MAX_INT = 2**63 - 1
MAX_REQUEST_CHUNKS = 16

ID_LEN = 32  # message ids, file ids: SHA-256 sizes
TOPIC_MIN, TOPIC_MAX = 16, 32


@dataclass(frozen=True)
class Limit:
    """Size bounds for one field: exact or max length of bytes/str, max list items."""

    exact: int | None = None
    max: int | None = None
    min: int = 0
    items: int | None = None  # for lists/maps: max entries; element limits from exact/max
    min_items: int = 0        # for lists


_REGISTRY: dict[str, type[Frame]] = {}


class Frame:
    """Base of all frames. Subclasses are frozen dataclasses with a TYPE string and
    optional per-field limits in ``LIMITS``."""

    TYPE: ClassVar[str]
    LIMITS: ClassVar[dict[str, Limit]] = {}
    MAX_SIZE: ClassVar[int] = MAX_CONTROL_FRAME

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE in _REGISTRY:
            raise TypeError(f"frame type {cls.TYPE!r} registered twice")
        _REGISTRY[cls.TYPE] = cls


def encode(frame: Frame) -> bytes:
    cls = type(frame)
    data = _pack(cls, {n: getattr(frame, n) for n in _schema(cls).names})
    if len(data) > frame.MAX_SIZE:
        raise FrameError(f"{frame.TYPE} frame of {len(data)} bytes exceeds {frame.MAX_SIZE}",
                         "frame_too_large")
    return data


def decode(data: bytes, *, max_size: int = MAX_CHUNK_FRAME) -> Frame:
    """Parse one frame; raise FrameError for anything but a canonical, valid frame."""
    if len(data) > max_size:
        raise FrameError(f"frame of {len(data)} bytes exceeds {max_size}", "frame_too_large")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FrameError(f"frame is not msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise FrameError("frame must be a map")
    cls = _REGISTRY.get(obj.get("t")) if isinstance(obj.get("t"), str) else None
    if cls is None:
        raise FrameError("unknown frame type", "unknown_frame")
    if obj.get("v") != PROTOCOL_VERSION or type(obj.get("v")) is not int:
        raise FrameError(f"unsupported frame version {obj.get('v')!r}", "bad_version")
    if len(data) > cls.MAX_SIZE:
        raise FrameError(f"{cls.TYPE} frame exceeds {cls.MAX_SIZE} bytes", "frame_too_large")
    schema = _schema(cls)
    if obj.keys() != schema.keys:
        raise FrameError(f"{cls.TYPE} frame has wrong fields")
    values = {name: check(obj[name], where) for name, where, check in schema.checks}
    if _canonical_bytes_differ(cls, values, data):
        raise FrameError(f"{cls.TYPE} frame is not canonically encoded", "not_canonical")
    return cls(**values)


def _pack(cls: type[Frame], values: dict[str, Any]) -> bytes:
    body: dict[str, Any] = {"t": cls.TYPE, "v": PROTOCOL_VERSION}
    for name, value in values.items():
        body[name] = list(value) if isinstance(value, tuple) else value
    return msgpack.packb(body, use_bin_type=True)


_BIG = 4096


def _canonical_bytes_differ(cls: type[Frame], values: dict[str, Any], data: bytes) -> bool:
    """Is ``data`` other than the one encoding of these field values?

    Re-packing a frame that ends in a large byte string (a 256 KiB chunk) allocates
    and faults in a fresh buffer per frame; instead everything before that string is
    re-packed and compared, and the string itself is what the parser just took from
    the remaining bytes, so it needs no second look."""
    last = _schema(cls).names[-1]
    tail = values[last]
    if not isinstance(tail, bytes) or len(tail) <= _BIG:
        return _pack(cls, values) != data
    head = _pack(cls, {**values, last: b""})
    if not head.endswith(b"\xc4\x00"):
        return True
    size = len(tail)
    length = (b"\xc5" + size.to_bytes(2, "big")) if size < 65536 else \
        (b"\xc6" + size.to_bytes(4, "big"))
    prefix = head[:-2] + length
    return len(data) != len(prefix) + size or not data.startswith(prefix)


Check = Callable[[Any, str], Any]


@dataclass(frozen=True)
class _Schema:
    """A frame class's fields in order, with one checker per field, built once: working
    the checks out from the type hints for every frame dominated decoding time."""

    names: tuple[str, ...]
    keys: frozenset[str]                      # the map keys a valid frame has
    checks: tuple[tuple[str, str, Check], ...]  # (name, "type.name", checker)


_SCHEMAS: dict[type[Frame], _Schema] = {}


def _schema(cls: type[Frame]) -> _Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
        schema = _SCHEMAS[cls] = _Schema(
            names, frozenset({"t", "v", *names}),
            tuple((n, f"{cls.TYPE}.{n}", _checker(hints[n], cls.LIMITS.get(n)))
                  for n in names))
    return schema


def _checker(hint: Any, lim: Limit | None) -> Check:
    """The check for one field: returns the value (lists as tuples) or raises."""
    origin = typing.get_origin(hint)
    if origin is tuple:  # tuple[X, ...]: a msgpack array
        (elem,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        item = _checker(elem, lim)
        most = lim.items if lim else None
        least = lim.min_items if lim else 0

        def check_array(value: Any, where: str) -> tuple[Any, ...]:
            if not isinstance(value, list):
                raise FrameError(f"{where} must be an array")
            if most is not None and len(value) > most:
                raise FrameError(f"{where} has more than {most} items")
            if len(value) < least:
                raise FrameError(f"{where} has fewer than {least} items")
            return tuple(item(v, where) for v in value)
        return check_array
    if origin is dict:  # dict[str, int]
        key_t, val_t = typing.get_args(hint)
        key, val = _checker(key_t, lim), _checker(val_t, None)
        entries = lim.items if lim else None

        def check_map(value: Any, where: str) -> dict[Any, Any]:
            if not isinstance(value, dict):
                raise FrameError(f"{where} must be a map")
            if entries is not None and len(value) > entries:
                raise FrameError(f"{where} has more than {entries} entries")
            return {key(k, where): val(v, where) for k, v in value.items()}
        return check_map
    if hint is int:
        def check_int(value: Any, where: str) -> int:
            if type(value) is not int or not 0 <= value <= MAX_INT:
                raise FrameError(f"{where} must be a non-negative 63-bit integer")
            return value
        return check_int
    if hint is bool:
        def check_bool(value: Any, where: str) -> bool:
            if type(value) is not bool:
                raise FrameError(f"{where} must be a boolean")
            return value
        return check_bool
    if hint in (bytes, str):
        exact, longest, shortest = (lim.exact, lim.max, lim.min) if lim else (None, None, 0)

        def check_string(value: Any, where: str) -> Any:
            if type(value) is not hint:
                raise FrameError(f"{where} must be {hint.__name__}")
            if exact is not None and len(value) != exact:
                raise FrameError(f"{where} must be {exact} long")
            if longest is not None and len(value) > longest:
                raise FrameError(f"{where} is longer than {longest}")
            if len(value) < shortest:
                raise FrameError(f"{where} is shorter than {shortest}")
            return value
        return check_string
    raise TypeError(f"unsupported field type {hint!r}")  # a bug in a Frame class


def message_id(topic: bytes, origin: str, seq: int, payload: bytes) -> bytes:
    """A message's id binds its routing metadata to its payload, so a relay cannot
    re-label a payload as another sender's or another sequence number."""
    return hashlib.sha256(msgpack.packb([b"parley/msg/v1", topic, origin, seq, payload],
                                        use_bin_type=True)).digest()


_TOPIC = Limit(min=TOPIC_MIN, max=TOPIC_MAX)
_ID = Limit(exact=ID_LEN)
_USER = Limit(exact=15)
_ORIGINS = Limit(exact=15, items=MAX_HEADS)

# Handshake (see mesh/link.py; Hello travels in clear, Auth under handshake keys)


@dataclass(frozen=True)
class Hello(Frame):
    TYPE = "hello"
    LIMITS = {"ephemeral": Limit(exact=32), "versions": Limit(items=8)}
    versions: tuple[int, ...]
    ephemeral: bytes


@dataclass(frozen=True)
class Auth(Frame):
    TYPE = "auth"
    LIMITS = {"record": Limit(max=4096), "signature": Limit(exact=64)}
    record: bytes
    signature: bytes


@dataclass(frozen=True)
class Close(Frame):
    TYPE = "close"
    LIMITS = {"reason": Limit(max=64), "message": Limit(max=256)}
    reason: str
    message: str


@dataclass(frozen=True)
class Ping(Frame):
    TYPE = "ping"
    LIMITS = {"data": Limit(max=32)}
    data: bytes


@dataclass(frozen=True)
class Pong(Frame):
    TYPE = "pong"
    LIMITS = {"data": Limit(max=32)}
    data: bytes


# Topics and gossip (see mesh/gossip.py)


@dataclass(frozen=True)
class Subscribe(Frame):
    TYPE = "sub"
    LIMITS = {"topics": Limit(min=TOPIC_MIN, max=TOPIC_MAX, items=MAX_TOPICS)}
    topics: tuple[bytes, ...]


@dataclass(frozen=True)
class Unsubscribe(Frame):
    TYPE = "unsub"
    LIMITS = {"topics": Limit(min=TOPIC_MIN, max=TOPIC_MAX, items=MAX_TOPICS)}
    topics: tuple[bytes, ...]


@dataclass(frozen=True)
class Publish(Frame):
    """A full message. ``origin``/``seq`` are the author's user id and per-author,
    per-topic sequence number; the layer above checks them against the payload."""

    TYPE = "pub"
    LIMITS = {"topic": _TOPIC, "origin": _USER, "payload": Limit(max=MAX_PAYLOAD)}
    topic: bytes
    origin: str
    seq: int
    payload: bytes


@dataclass(frozen=True)
class IHave(Frame):
    TYPE = "ihave"
    LIMITS = {"topic": _TOPIC, "ids": Limit(exact=ID_LEN, items=MAX_IDS)}
    topic: bytes
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class IWant(Frame):
    TYPE = "iwant"
    LIMITS = {"ids": Limit(exact=ID_LEN, items=MAX_IDS)}
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class Graft(Frame):
    """Push messages of these origins (authors) in this topic to me eagerly again;
    no origins means all. Per-origin, because one tree shared by many concurrent
    authors keeps PRUNEing edges that are another author's tree (mesh/gossip.py)."""

    TYPE = "graft"
    LIMITS = {"topic": _TOPIC, "origins": _ORIGINS}
    topic: bytes
    origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prune(Frame):
    """Stop pushing me messages of these origins in this topic (send IHave instead);
    no origins means all."""

    TYPE = "prune"
    LIMITS = {"topic": _TOPIC, "origins": _ORIGINS}
    topic: bytes
    origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ack(Frame):
    """Hop-by-hop: the sender of this frame has committed these messages."""

    TYPE = "ack"
    LIMITS = {"ids": Limit(exact=ID_LEN, items=MAX_IDS)}
    ids: tuple[bytes, ...]


# Anti-entropy (see mesh/sync.py)


@dataclass(frozen=True)
class SyncSummary(Frame):
    """Per-origin high-water marks (highest contiguous seq held) for one topic."""

    TYPE = "sync"
    LIMITS = {"topic": _TOPIC, "heads": Limit(exact=15, items=MAX_HEADS)}
    topic: bytes
    heads: dict[str, int]


# Attachment chunks (see groups/attachments.py)


@dataclass(frozen=True)
class ChunkRequest(Frame):
    """Asks for several chunks of one file at once: both ends pay a fixed cost per
    frame which, on loopback, came to about a quarter of moving a whole chunk."""

    TYPE = "chunk?"
    LIMITS = {"file_id": _ID, "indices": Limit(items=MAX_REQUEST_CHUNKS, min_items=1)}
    file_id: bytes
    indices: tuple[int, ...]


@dataclass(frozen=True)
class Chunk(Frame):
    TYPE = "chunk"
    MAX_SIZE = MAX_CHUNK_FRAME
    LIMITS = {"file_id": _ID, "data": Limit(max=MAX_CHUNK_DATA + 64)}
    file_id: bytes
    index: int
    data: bytes


@dataclass(frozen=True)
class ChunkUnavailable(Frame):
    TYPE = "chunk!"
    LIMITS = {"file_id": _ID}
    file_id: bytes
    index: int


# Ephemeral signals of the layer above (see groups/presence.py)


@dataclass(frozen=True)
class Signal(Frame):
    """"Typing in this conversation" or "online": meant for this one linked peer only,
    never stored, forwarded or acknowledged (a lost one is simply not shown). ``topic``
    is empty for a signal about the sender itself (presence)."""

    TYPE = "signal"
    LIMITS = {"topic": Limit(max=TOPIC_MAX), "kind": Limit(max=16)}
    topic: bytes
    kind: str
    on: bool


# Hole punching over a relayed link (see mesh/holepunch.py)


@dataclass(frozen=True)
class Punch(Frame):
    """``connect`` carries the sender's public "ip:port" addresses; ``sync`` (no
    addresses) tells the other side to dial now."""

    TYPE = "punch"
    LIMITS = {"kind": Limit(max=8), "addrs": Limit(max=64, items=4)}
    kind: str
    addrs: tuple[str, ...]
