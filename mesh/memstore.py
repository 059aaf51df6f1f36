"""An in-memory MessageStore for the simulator, tests and mesh-level benchmarks.

The node proper keeps messages in SQLite (groups/store.py); this one holds them in
dicts and "commits" instantly, which is all the engines can tell apart.
"""

from __future__ import annotations

from mesh.gossip_state import Message

__all__ = ["MemoryStore"]


class _Stream:
    """Messages of one origin in one topic, with the contiguous head kept current."""

    __slots__ = ("by_seq", "head")

    def __init__(self) -> None:
        self.by_seq: dict[int, Message] = {}
        self.head = 0


class MemoryStore:
    """Implements mesh.gossip_state.MessageStore, plus ``add`` to commit."""

    def __init__(self) -> None:
        self._by_id: dict[bytes, Message] = {}
        self._streams: dict[bytes, dict[str, _Stream]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, message: Message) -> bool:
        """Commit ``message``; False if it was already held (idempotent)."""
        if message.msg_id in self._by_id:
            return False
        stream = self._streams.setdefault(message.topic, {}).get(message.origin)
        if stream is None:
            stream = self._streams[message.topic][message.origin] = _Stream()
        if message.seq in stream.by_seq:
            # Two different payloads under one (origin, seq): the author equivocated.
            # Keep the first; the layer above's validate hook should have caught it.
            return False
        self._by_id[message.msg_id] = message
        stream.by_seq[message.seq] = message
        while stream.head + 1 in stream.by_seq:
            stream.head += 1
        return True

    def has(self, msg_id: bytes) -> bool:
        return msg_id in self._by_id

    def get(self, msg_id: bytes) -> Message | None:
        return self._by_id.get(msg_id)

    def ids(self, topic: bytes | None = None) -> set[bytes]:
        if topic is None:
            return set(self._by_id)
        return {m.msg_id for s in self._streams.get(topic, {}).values()
                for m in s.by_seq.values()}

    def head(self, topic: bytes, origin: str) -> int:
        stream = self._streams.get(topic, {}).get(origin)
        return stream.head if stream is not None else 0

    def heads(self, topic: bytes) -> dict[str, int]:
        return {o: s.head for o, s in self._streams.get(topic, {}).items() if s.head}

    def get_range(self, topic: bytes, origin: str, from_seq: int,
                  limit: int) -> list[Message]:
        stream = self._streams.get(topic, {}).get(origin)
        if stream is None or limit <= 0:
            return []
        out: list[Message] = []
        # Walk the contiguous part directly; fall back to sorting for what lies beyond.
        seq = max(from_seq, 1)
        while seq <= stream.head and len(out) < limit:
            out.append(stream.by_seq[seq])
            seq += 1
        if len(out) < limit and len(stream.by_seq) > stream.head:
            beyond = sorted(s for s in stream.by_seq if s >= seq and s > stream.head)
            out.extend(stream.by_seq[s] for s in beyond[:limit - len(out)])
        return out
