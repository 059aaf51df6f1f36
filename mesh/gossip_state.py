"""Types shared by the gossip and sync engines: parameters, messages, events, the storage
protocol the layer above implements, and the bounded time-to-live caches.

Kept apart from mesh/gossip.py so that the engines stay readable and so that adapters
(runtime, simulator, tests) can import the vocabulary without the machinery.
docs/protocol.md §6 describes the protocol these types serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, Protocol, TypeVar

from mesh import wire

__all__ = [
    "Acked",
    "Commit",
    "Deliver",
    "EdgeState",
    "Event",
    "Message",
    "MessageStore",
    "Params",
    "Rejected",
    "Send",
    "TTLCache",
    "Validator",
]


@dataclass(frozen=True)
class Params:
    """Tunables of the gossip and sync engines; all times are in seconds.

    Defaults suit real links (loopback to WAN); the simulator scales the timers to its
    latency model. docs/protocol.md §6 explains each one.
    """

    d: int = 6                  # mesh degree we aim for per topic
    d_lo: int = 4               # below this, the heartbeat looks for more mesh peers
    d_hi: int = 12              # never more mesh peers than this per topic
    full_mesh_max: int = 13     # topics with at most this many members: direct push
    lazy_fanout: int = 3        # IHAVE digests of a message go to at most this many peers
    fanout_new: int = 3         # eager pushes of an unseen origin's first message
    ihave_interval: float = 0.2  # lazy digests are batched for this long
    graft_timeout: float = 0.6   # an announced message may take this long to come eagerly
    iwant_timeout: float = 1.0   # then ask the next announcer
    ack_delay: float = 0.2       # acks to a message's author are batched this long
    ack_delay_relay: float = 1.0  # and acks to a relay this long (nobody waits on them)
    heartbeat: float = 1.0       # mesh upkeep and cache expiry
    seen_ttl: float = 600.0      # seen-cache lifetime (DESIGN §6: at least 10 min)
    mcache_ttl: float = 120.0    # recent messages kept in memory to answer IWANT
    mcache_max: int = 20_000
    sub_backoff: float = 60.0    # after a mesh refusal, wait before asking that peer again
    sync_interval: float = 30.0  # periodic anti-entropy per mesh edge (jittered +-20%)
    sync_grace: float = 1.0      # a peer's summary shows us behind: re-check after this
    sync_batch: int = 256        # message ids per anti-entropy offer
    unacked_max: int = 10_000    # per peer; older entries fall back to anti-entropy

    def __post_init__(self) -> None:
        if not 0 < self.d_lo <= self.d <= self.d_hi:
            raise ValueError("need 0 < d_lo <= d <= d_hi")
        if not 0 < self.sync_batch <= wire.MAX_IDS:
            raise ValueError("sync_batch must fit one IHave frame")


class EdgeState(Enum):
    """Whether we push one origin's messages along one mesh edge (directional)."""

    EAGER = "eager"  # full payloads are pushed to that peer
    LAZY = "lazy"    # at most IHAVE digests; its GRAFT makes it eager again


@dataclass(frozen=True, repr=False)
class Message:
    """One gossiped message. ``msg_id`` is always computed locally, never read off the
    wire, so that it binds topic, origin, seq and payload together."""

    topic: bytes
    origin: str
    seq: int
    payload: bytes
    msg_id: bytes = field(default=b"", compare=False)

    def __post_init__(self) -> None:
        if not self.msg_id:
            object.__setattr__(self, "msg_id", wire.message_id(
                self.topic, self.origin, self.seq, self.payload))

    @classmethod
    def from_frame(cls, frame: wire.Publish) -> Message:
        return cls(frame.topic, frame.origin, frame.seq, frame.payload)

    def to_frame(self) -> wire.Publish:
        return wire.Publish(self.topic, self.origin, self.seq, self.payload)

    def __repr__(self) -> str:
        return (f"Message(topic={self.topic.hex()[:12]}…, origin={self.origin}, "
                f"seq={self.seq}, id={self.msg_id.hex()[:12]}…, {len(self.payload)} bytes)")


class MessageStore(Protocol):
    """What the engines read from the layer above's durable storage.

    Writes are not part of it: the engine emits Commit, the layer above validates and
    commits, then calls ``GossipEngine.committed``. Every answer must reflect committed
    state only, because an Ack or a sync head promises durability.
    """

    def has(self, msg_id: bytes) -> bool:
        """True if the message is committed (or was deliberately retired by retention)."""
        ...

    def get(self, msg_id: bytes) -> Message | None:
        """The committed message, or None if it is not held (absence is not an error)."""
        ...

    def head(self, topic: bytes, origin: str) -> int:
        """Highest h such that seqs 1..h of ``origin`` in ``topic`` are all held; 0 if none."""
        ...

    def heads(self, topic: bytes) -> dict[str, int]:
        """``head`` for every origin with a non-zero head in ``topic``."""
        ...

    def get_range(self, topic: bytes, origin: str, from_seq: int,
                  limit: int) -> list[Message]:
        """Up to ``limit`` held messages of ``origin`` with seq >= from_seq, ascending."""
        ...


class Validator(Protocol):
    def __call__(self, message: Message, /) -> None:
        """Return to accept; raise a RemoteError (e.g. InvalidMessage) to reject."""
        ...


# Outputs and events


@dataclass(frozen=True)
class Send:
    """Send ``frame`` to ``peer`` on its link."""

    peer: str
    frame: wire.Frame


@dataclass(frozen=True)
class Commit:
    """A new message passed validation: commit it durably, then call
    ``engine.committed(msg_id, now)`` (or ``engine.abandon`` if the commit failed).
    Nothing is acked or forwarded before that call."""

    message: Message
    from_peer: str


@dataclass(frozen=True)
class Deliver:
    """A committed message, released in per-(topic, origin) seq order exactly once per
    engine lifetime. ``from_peer`` is None for our own messages or when unknown."""

    message: Message
    from_peer: str | None


@dataclass(frozen=True)
class Acked:
    """``peer`` confirmed that it committed one of our own messages (hop-by-hop)."""

    topic: bytes
    msg_id: bytes
    peer: str


@dataclass(frozen=True)
class Rejected:
    """The validate hook refused a message from ``from_peer``; it was not stored."""

    topic: bytes
    origin: str
    seq: int
    msg_id: bytes
    from_peer: str
    reason: str


Event = Commit | Deliver | Acked | Rejected

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A dict whose entries expire ``ttl`` seconds after insertion, optionally capped.

    Time only moves forward in the engines, so insertion order is expiry order and
    expiry pops from the front: O(1) amortised per entry, no heap needed.
    """

    def __init__(self, ttl: float, max_entries: int | None = None) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: dict[K, tuple[float, V]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def get(self, key: K) -> V | None:
        entry = self._data.get(key)
        return entry[1] if entry is not None else None

    def inserted_at(self, key: K) -> float | None:
        entry = self._data.get(key)
        return entry[0] if entry is not None else None

    def put(self, key: K, value: V, now: float) -> None:
        self._data.pop(key, None)
        self._data[key] = (now, value)
        if self.max_entries is not None and len(self._data) > self.max_entries:
            del self._data[next(iter(self._data))]

    def pop(self, key: K) -> V | None:
        entry = self._data.pop(key, None)
        return entry[1] if entry is not None else None

    def expire(self, now: float) -> int:
        """Drop entries older than ttl; return how many went."""
        dropped = 0
        limit = now - self.ttl
        while self._data:
            key = next(iter(self._data))
            if self._data[key][0] > limit:
                break
            del self._data[key]
            dropped += 1
        return dropped
