"""Gossip on the event loop: the thin adapter between links and one GossipEngine.

MeshRuntime owns one identity's GossipEngine (which owns its SyncEngine), a
ConnectionManager that keeps the links, and optionally the public MeshServer. It
feeds link events and frames into the engine with ``loop.time()`` as ``now``, carries
the engine's frames out on the right LinkConnection, runs Commit events through the
layer above's ``commit`` callback before telling the engine (so acks follow commits),
hands every other event to ``on_event``, and keeps one loop timer at the engine's
``next_timer()``. It holds no protocol state of its own.

Given a ``transaction`` hook (a context manager from the layer above that turns the
``commit`` calls made inside it into one database transaction), received messages are
committed in groups: the Commit events of every frame handled in one pass of the
event loop wait for the end of that pass and are committed together, with one fsync
instead of one each; the engine hears ``committed`` (and so acks, relays and
delivers) only after the whole group is durable. A burst that arrives while a commit
blocks the loop is read in the next pass and so becomes the next group.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from mesh import wire
from mesh.connections import ConnectionManager
from mesh.errors import LocalError
from mesh.gossip import FRAME_TYPES, GossipEngine
from mesh.gossip_state import Commit, Event, Message, MessageStore, Params, Validator
from mesh.identity import KeyPair, Record
from mesh.link import SEAL_OVERHEAD
from mesh.transport import LinkConnection
from mesh.websocket import MeshServer

__all__ = ["MeshHooks", "MeshRuntime", "Meter"]

log = logging.getLogger(__name__)

_GOSSIP = frozenset(FRAME_TYPES)


class Meter:
    """Bytes this node put on its links, by frame type (benchmarks). A frame costs its
    encoding plus the link's seal (counter and tag); WebSocket headers are not counted."""

    def __init__(self) -> None:
        self.frames: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.payload_bytes = 0

    def count(self, frame: wire.Frame) -> None:
        self.frames[frame.TYPE] += 1
        self.bytes[frame.TYPE] += len(wire.encode(frame)) + SEAL_OVERHEAD
        if isinstance(frame, wire.Publish):
            self.payload_bytes += len(frame.payload)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


@dataclass(frozen=True)
class MeshHooks:
    """The layer above, as the runtime calls it once started.

    ``commit(message) -> bool`` stores a validated message durably (False: could not);
    ``validate(message)`` raises a RemoteError to refuse one; ``on_event`` receives
    Deliver, Acked and Rejected events; ``on_other_frame(peer, frame)`` gets non-gossip
    frames (attachment chunks); ``on_link(conn)`` hears of each verified link first.
    ``transaction()``, if given, groups the commits of received messages (see the
    module docstring); without it each is committed as its Commit event comes.
    """

    commit: Callable[[Message], bool]
    validate: Validator
    on_event: Callable[[Event], None] | None = None
    on_other_frame: Callable[[str, wire.Frame], None] | None = None
    on_link: Callable[[LinkConnection], None] | None = None
    transaction: Callable[[], AbstractContextManager[object]] | None = None


class MeshRuntime:
    """One identity's mesh on the running asyncio loop.

    Built first and passive (the layer above may join topics and hold it as its port);
    ``start(hooks, ...)`` hands it the layer above and lets links in. Nothing reaches
    the hooks before that: no link exists and nothing is published before ``start``.
    ``manager_options`` go to the ConnectionManager.
    """

    def __init__(self, identity: KeyPair, record: Record, store: MessageStore, *,
                 params: Params | None = None, rng: random.Random | None = None,
                 manager_options: Mapping[str, Any] | None = None,
                 meter: bool = False) -> None:
        self.user_id = record.user_id
        self.store = store
        self.engine = GossipEngine(self.user_id, store, self._validate, params, rng)
        p = self.engine.params
        self.manager = ConnectionManager(
            identity, record, on_link=self._on_link, on_frame=self._on_frame,
            on_link_closed=self._on_link_closed, d_lo=p.d_lo, d=p.d, d_hi=p.d_hi,
            full_mesh_max=p.full_mesh_max, rng=rng, **dict(manager_options or {}))
        self.server: MeshServer | None = None
        self.meter = Meter() if meter else None
        self._hooks: MeshHooks | None = None
        self._to_commit: list[Message] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: dict[str, LinkConnection] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flushing = False
        self._closed = False
        self._seq: dict[bytes, int] = {}
        self.closures: deque[tuple[str, str]] = deque(maxlen=256)  # (peer, reason)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, hooks: MeshHooks, port: int | None = 0,
              address: str = "127.0.0.1") -> int | None:
        """Start link upkeep, calling ``hooks``; with a ``port``, also listen for inbound
        links on it (0 picks a free port). Returns the bound port. Call inside the
        running loop."""
        if self._hooks is not None:
            raise LocalError("the mesh runtime is already started")
        self._hooks = hooks
        self._loop = asyncio.get_running_loop()
        bound = None
        if port is not None:
            self.server = MeshServer(self.manager)
            bound = self.server.listen(port, address)
        self.manager.start()
        return bound

    async def close(self) -> None:
        """Stop listening and close every link ("shutdown"); the store is untouched."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if self.server is not None:
            await self.server.stop()
        await self.manager.close()

    @property
    def now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    def links(self) -> dict[str, LinkConnection]:
        return dict(self._links)

    # -- the layer above ---------------------------------------------------------------

    def join(self, topic: bytes, members: Mapping[str, Sequence[str]]) -> None:
        """Join ``topic``; ``members`` maps user id -> endpoint URLs (ours is ignored)."""
        self.engine.join(topic, members.keys(), self.now)
        self.manager.set_topic(topic, members)
        self._flush()

    def update_members(self, topic: bytes, members: Mapping[str, Sequence[str]]) -> None:
        self.engine.update_members(topic, members.keys(), self.now)
        self.manager.set_topic(topic, members)
        self._flush()

    def leave(self, topic: bytes) -> None:
        self.engine.leave(topic, self.now)
        self.manager.remove_topic(topic)
        self._flush()

    def publish(self, topic: bytes, payload: bytes) -> Message:
        """Number, commit and disseminate a new message of ours."""
        seq = max(self._seq.get(topic, 0), self.store.head(topic, self.user_id)) + 1
        message = Message(topic, self.user_id, seq, payload)
        if not self._started.commit(message):
            raise LocalError("could not commit our own message")
        self._seq[topic] = seq
        self.publish_committed(message)
        return message

    def resync(self, topic: bytes) -> None:
        """Swap summaries with the topic's mesh peers now (not at the next period): the
        layer above can accept messages it refused before, e.g. once a key arrived."""
        for peer in self.engine.mesh(topic):
            self.engine.sync.send_summary(peer, topic)
        self._flush()

    def publish_committed(self, message: Message) -> None:
        """Disseminate a message of ours that the layer above numbered and committed."""
        self.engine.publish(message, self.now)
        self._flush()

    # -- ConnectionManager callbacks ---------------------------------------------------

    def _on_link(self, conn: LinkConnection) -> None:
        peer = conn.peer_id
        assert peer is not None
        if self._closed:
            return
        old = self._links.pop(peer, None)
        if old is not None:  # the manager reports the old one closed first; be safe
            self.engine.peer_down(peer, self.now)
        self._links[peer] = conn
        if self._started.on_link is not None:  # the layer above joins topics for this peer
            self._started.on_link(conn)
        self.engine.peer_up(peer, self.now)
        self._flush()

    def _on_frame(self, conn: LinkConnection, frame: wire.Frame) -> None:
        peer = conn.peer_id
        if peer is None or self._links.get(peer) is not conn:
            return
        if type(frame) in _GOSSIP:
            self.engine.receive(peer, frame, self.now)
            self._flush()
        elif self._started.on_other_frame is not None:
            self._started.on_other_frame(peer, frame)

    def _on_link_closed(self, conn: LinkConnection, reason: str) -> None:
        peer = conn.peer_id
        if peer is not None and self._links.get(peer) is conn:
            self.closures.append((peer, reason))
            del self._links[peer]
            self.engine.peer_down(peer, self.now)
            self._flush()

    # -- plumbing ------------------------------------------------------------------------

    def _flush(self) -> None:
        """Carry frames out and run events until the engine is quiet. Re-entrant calls
        (a send that drops a slow peer closes its link synchronously) return at once;
        the outer loop picks up what they produced, so per-peer order is kept."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while True:
                sends = self.engine.take_frames()
                for send in sends:
                    self._transmit(send.peer, send.frame)
                events = self.engine.take_events()
                if not sends and not events:
                    break
                self._dispatch(events)
        finally:
            self._flushing = False
        self._rearm()

    def _transmit(self, peer: str, frame: wire.Frame) -> None:
        conn = self._links.get(peer)
        if conn is None or conn.closed:
            return
        if self.meter is not None:
            self.meter.count(frame)
        conn.send(frame)

    @property
    def _started(self) -> MeshHooks:
        if self._hooks is None:
            raise LocalError("the mesh runtime is not started")
        return self._hooks

    def _validate(self, message: Message) -> None:
        self._started.validate(message)

    def _dispatch(self, events: Iterable[Event]) -> None:
        hooks = self._started
        for event in events:
            if isinstance(event, Commit):
                if hooks.transaction is not None and self._loop is not None:
                    if not self._to_commit:
                        self._loop.call_soon(self._commit_group)
                    self._to_commit.append(event.message)
                elif hooks.commit(event.message):
                    self.engine.committed(event.message.msg_id, self.now)
                else:
                    self.engine.abandon(event.message.msg_id)
            elif hooks.on_event is not None:
                hooks.on_event(event)

    def _commit_group(self) -> None:
        """Commit the messages of one loop pass in one transaction, then tell the
        engine: acks go out only for what is durable."""
        group, self._to_commit = self._to_commit, []
        if self._closed or not group:
            return
        hooks = self._started
        assert hooks.transaction is not None
        try:
            with hooks.transaction():
                stored = [hooks.commit(message) for message in group]
        except Exception:  # the transaction itself failed (a full or broken disk)
            log.exception("could not commit %d received messages", len(group))
            stored = [False] * len(group)
        now = self.now
        for message, ok in zip(group, stored, strict=True):
            if ok:
                self.engine.committed(message.msg_id, now)
            else:
                self.engine.abandon(message.msg_id)
        self._flush()

    def _rearm(self) -> None:
        if self._closed or self._loop is None:
            return
        due = self.engine.next_timer()
        if due == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = None if due is None else self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self._closed:
            return
        self.engine.handle_timer(self.now)
        self._flush()
