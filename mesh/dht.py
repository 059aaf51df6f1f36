"""The Kademlia mirror of signed records: ``DhtNode``, on the `kademlia` package.

DESIGN §3: records live under SHA-256("parley-record" || id) (Kademlia's 160-bit key
is the SHA-1 of that, as the package's own ``Server.set`` would make it), values are
Record.encode() bytes, and everything read from the network is verified. The package
is changed only through its extension points, never forked:

- mesh/dht_records.py (sans-IO): keys, value checks, the storage that keeps one
  verified record per key (highest seq; forged, mis-keyed, expired or older STOREs
  change nothing), invite contacts, the publish schedule.
- mesh/dht_rpc.py: ParleyProtocol (a KademliaProtocol with a strict, never-raising
  datagram parser, checked replies and a short wait timeout) and EagerCrawl (a
  SpiderCrawl that keeps alpha requests in flight and does not wait on stragglers).
- here: _Kademlia (a Server whose unverified get/set and pickle-based saveState are
  disabled) and DhtNode, the facade the bootstrap and the node use: listen, join,
  publish, publish_own (periodic republish, re-sign before expiry), lookup (newest of
  several verified answers), mirror, stop.

See docs/protocol.md, "DHT mirror", for the wire format and the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from kademlia.network import Server
from kademlia.node import Node

from mesh.dht_guard import GuardConfig, ReplyGuard
from mesh.dht_records import (
    KEY_LEN,
    RECORD_TTL,
    PublishAction,
    PublishSchedule,
    RecordStorage,
    dht_digest,
    format_dht_contact,
    parse_dht_contacts,
    record_key,
    verify_value,
)
from mesh.dht_rpc import EagerCrawl, ParleyProtocol
from mesh.errors import (
    DhtUnavailable,
    LocalError,
    RecordError,
    RecordNotFound,
    binding,
)
from mesh.identity import Record, parse_user_id

__all__ = [
    "DhtConfig",
    "DhtNode",
    "Resigner",
    "bind_udp",
    "dht_digest",
    "format_dht_contact",
    "parse_dht_contacts",
    "record_key",
]

log = logging.getLogger(__name__)

Resigner = Callable[[Record], Awaitable[Record]]


@dataclass(frozen=True)
class DhtConfig:
    """Tuning. The defaults suit the internet; ``loopback()`` suits tests and benches."""

    ksize: int = 20                  # replicas per key and bucket size (the paper's k)
    alpha: int = 3                   # requests in flight per lookup
    rpc_timeout: float = 1.0         # a peer silent this long is dropped from the table
    straggler_after: float = 0.3     # ...and stops holding a lookup slot after this
    want_values: int = 3             # a lookup stops after this many verified answers
    lookup_timeout: float = 5.0      # hard cap on a lookup or a store crawl
    record_ttl: float = RECORD_TTL
    republish_interval: float = 3600.0
    resign_after: float = 24 * 3600.0
    retry_interval: float = 30.0
    refresh_interval: float = 3600.0
    max_entries: int = 10_000
    verify_rate: float = 100.0       # full record verifications per second per sender
    verify_burst: float = 200.0
    guard: GuardConfig = field(default_factory=GuardConfig)  # reply limits (dht_guard.py)

    @classmethod
    def loopback(cls, **changes: Any) -> DhtConfig:
        return cls(**{"rpc_timeout": 0.3, "straggler_after": 0.05, **changes})


class _Kademlia(Server):
    """The package's Server with our protocol; unverified and pickle paths disabled."""

    protocol_class = ParleyProtocol

    def __init__(self, owner: DhtNode, node_id: bytes | None) -> None:
        super().__init__(ksize=owner.config.ksize, alpha=owner.config.alpha,
                         node_id=node_id, storage=owner.storage)
        self.storage = owner.storage  # Server does `storage or ...`: an empty one is falsy
        self.owner = owner

    def _create_protocol(self, sock: socket.socket) -> ParleyProtocol:
        return ParleyProtocol(self.node, self.storage, self.ksize,
                              rpc_timeout=self.owner.config.rpc_timeout, spawn=self.owner.spawn,
                              guard=ReplyGuard(self.owner.config.guard), sock=sock)

    def refresh_table(self, interval: int = 3600) -> None:
        """DhtNode runs its own refresh loop (tracked, with our crawler)."""

    async def get(self, key: Any) -> Any:
        raise LocalError("use DhtNode.lookup: it verifies what it finds")

    async def set(self, key: Any, value: Any) -> Any:
        raise LocalError("use DhtNode.publish: it stores verified records only")

    def save_state(self, fname: Any) -> None:
        raise LocalError("kademlia's saveState uses pickle; Parley does not persist DHT state")

    @classmethod
    async def load_state(cls, fname: Any, port: Any, interface: str = "") -> Any:
        raise LocalError("kademlia's loadState unpickles a file; not supported")

    def save_state_regularly(self, fname: Any, frequency: int = 600) -> None:
        raise LocalError("kademlia's saveState uses pickle; Parley does not persist DHT state")


def bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound to (host, port); port 0 picks a free port (PortInUse if taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        with binding("udp", port):
            sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class DhtNode:
    """One Parley DHT node: listen, join, publish, look up, mirror, stop.

    ``clock`` gives unix seconds (records expire by their signed updated_at). Every
    task it starts is tracked and cancelled by stop(); nothing is written to disk.
    """

    def __init__(self, config: DhtConfig | None = None, *,
                 clock: Callable[[], float] = time.time, node_id: bytes | None = None) -> None:
        self.config = config or DhtConfig()
        self.clock = clock
        self.storage = RecordStorage(clock, ttl=self.config.record_ttl,
                                     max_entries=self.config.max_entries,
                                     verify_rate=self.config.verify_rate,
                                     verify_burst=self.config.verify_burst)
        # the package would draw the id from `random` (predictable); ours is urandom
        self._kad = _Kademlia(self, node_id or os.urandom(KEY_LEN))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sock: socket.socket | None = None
        self._ready: asyncio.Task[None] | None = None
        self._closed = False
        self._schedule = PublishSchedule(republish_interval=self.config.republish_interval,
                                         retry_interval=self.config.retry_interval,
                                         resign_after=self.config.resign_after)
        self._resign: Resigner | None = None
        self._wake = asyncio.Event()
        self._warned_old = False
        self.address: tuple[str, int] | None = None

    def __repr__(self) -> str:
        return f"DhtNode({self.address}, {len(self.storage)} records)"

    @property
    def node_id(self) -> bytes:
        return self._kad.node.id

    @property
    def running(self) -> bool:
        return self._ready is not None and not self._closed

    # lifecycle

    def listen_socket(self, sock: socket.socket) -> None:
        """Serve on a bound UDP socket; synchronous, so callers that cannot await
        (bootstrap.server.start_bootstrap) can start a node. Needs a running loop."""
        if self._sock is not None:
            raise LocalError("this DHT node is already listening")
        loop = asyncio.get_running_loop()
        self._sock = sock
        self.address = sock.getsockname()[:2]
        protocol = self._kad._create_protocol(sock)
        self._kad.protocol = protocol

        async def open_endpoint() -> None:
            transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
            self._kad.transport = transport

        self._ready = self.spawn(open_endpoint())
        self.spawn(self._publisher())
        self.spawn(self._refresher())

    async def listen(self, port: int = 0, host: str = "0.0.0.0") -> tuple[str, int]:  # noqa: S104
        self.listen_socket(bind_udp(host, port))
        await self._started()
        assert self.address is not None
        return self.address

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        protocol = self._kad.protocol
        if protocol is not None:
            protocol.closed = True
            protocol.fail_outstanding()
        self._kad.stop()
        if self._kad.transport is None and self._sock is not None:
            self._sock.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a background task that stop() will cancel; a crash is logged, not lost.
        After stop() it refuses (DhtUnavailable): a lookup that resumes once stop() has
        failed its RPCs must not start a replica repair nothing would cancel or await
        (its coroutine outlived the loop and warned "never awaited" in a later test)."""
        if self._closed:
            coro.close()
            raise DhtUnavailable("the DHT node is not running")
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("DHT background task failed", exc_info=task.exception())

    async def _started(self) -> ParleyProtocol:
        if self._ready is None or self._closed:
            raise DhtUnavailable("the DHT node is not running")
        await asyncio.shield(self._ready)
        protocol = self._kad.protocol
        assert protocol is not None
        return protocol

    # routing

    async def join(self, contacts: Iterable[tuple[str, int]]) -> int:
        """Ping the given (ip, port) contacts, then look ourselves up to fill the routing
        table. Returns how many contacts answered; DhtUnavailable if none did."""
        protocol = await self._started()
        addrs = [c for c in dict.fromkeys(contacts) if c != self.address]
        if not addrs:
            return 0
        nodes = [n for n in await asyncio.gather(*(self._ping(protocol, a) for a in addrs))
                 if n is not None]
        if not nodes:
            raise DhtUnavailable(f"none of {len(addrs)} DHT contact(s) answered")
        await self._crawl(protocol, self._kad.node, nodes)
        return len(nodes)

    async def _ping(self, protocol: ParleyProtocol, addr: tuple[str, int]) -> Node | None:
        ok, data = await protocol.ping(addr, self.node_id)
        if not ok or type(data) is not bytes or len(data) != KEY_LEN or data == self.node_id:
            return None
        node = Node(data, addr[0], addr[1])
        protocol.welcome_if_new(node)
        return node

    def contacts(self, limit: int = 4) -> list[tuple[str, int]]:
        """Some live-looking neighbours, e.g. to put into an invite."""
        protocol = self._kad.protocol
        if protocol is None:
            return []
        return [(n.ip, n.port) for n in protocol.router.find_neighbors(self._kad.node, k=limit)]

    def routing_table_size(self) -> int:
        protocol = self._kad.protocol
        return sum(len(b) for b in protocol.router.buckets) if protocol else 0

    async def _crawl(self, protocol: ParleyProtocol, target: Node, peers: list[Node], *,
                     accept_value: Callable[[bytes], Record] | None = None) -> EagerCrawl:
        loop = asyncio.get_running_loop()
        crawl = EagerCrawl(protocol, target, peers, self.config.ksize, self.config.alpha,
                           spawn=self.spawn, straggler_after=self.config.straggler_after,
                           deadline=loop.time() + self.config.lookup_timeout,
                           accept_value=accept_value, want_values=self.config.want_values)
        return await crawl.find()

    # storing

    async def publish(self, record: Record) -> int:
        """Store a verified, unexpired record at the k closest nodes (and here when
        this node is one of them). Returns how many nodes now hold it or a newer one."""
        record.verify()
        if self.clock() - record.updated_at > self.config.record_ttl:
            raise RecordError("record is older than the DHT's time to live", "stale_record")
        return await self._store(dht_digest(record.user_id), record.encode())

    async def _store(self, key: bytes, value: bytes) -> int:
        protocol = await self._started()
        target = Node(key)
        peers = protocol.router.find_neighbors(target, self.config.ksize)
        nodes = (await self._crawl(protocol, target, peers)).closest_answered() if peers else []
        held = 0
        if len(nodes) < self.config.ksize or \
                self._kad.node.distance_to(target) < nodes[-1].distance_to(target):
            held += self.storage.offer(key, value).holds_offer
        replies = await asyncio.gather(*(protocol.call_store(n, key, value) for n in nodes))
        return held + sum(1 for ok, accepted in replies if ok and accepted)

    def mirror(self, record: Record) -> None:
        """Fire-and-forget publish (the bootstrap mirrors every accepted record)."""
        if not self._closed:
            self.spawn(self._mirror(record))

    async def _mirror(self, record: Record) -> None:
        try:
            held = await self.publish(record)
        except RecordError as exc:
            log.info("not mirroring the record of %s into the DHT: %s", record.user_id, exc)
        except (DhtUnavailable, OSError) as exc:
            log.warning("could not mirror the record of %s into the DHT: %s",
                        record.user_id, exc)
        else:
            log.debug("mirrored record %s seq %d at %d DHT node(s)", record.user_id,
                      record.seq, held)

    def publish_own(self, record: Record, resign: Resigner | None = None) -> None:
        """Publish our record now, republish it every ``republish_interval`` and
        whenever this is called with a newer one. Once the record is ``resign_after``
        old, ``resign(record)`` is awaited for a fresh one (seq + 1, updated_at now),
        since records expire ``record_ttl`` after their updated_at."""
        record.verify()
        self._schedule.set_record(record, self.clock())
        if resign is not None:
            self._resign = resign
        self._wake.set()

    async def _publisher(self) -> None:
        while True:
            due = self._schedule.next_timer()
            self._wake.clear()
            if due is None:
                await self._wake.wait()
            elif due > self.clock():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due - self.clock()):
                        await self._wake.wait()
            step = self._schedule.handle_timer(self.clock())
            if step is None:
                continue
            if step.action is PublishAction.RESIGN:
                fresh = await self._resigned(step.record)
                if fresh is not None:
                    self._schedule.set_record(fresh, self.clock())
                    continue
            try:
                ok = await self.publish(step.record) > 0
            except (RecordError, DhtUnavailable, OSError) as exc:
                log.warning("could not publish our record into the DHT: %s", exc)
                ok = False
            self._schedule.done(step, self.clock(), ok)

    async def _resigned(self, record: Record) -> Record | None:
        if self._resign is None:
            if not self._warned_old:
                log.warning("our DHT record is %d s old and nothing re-signs it; it expires "
                            "%d s after its updated_at", self.clock() - record.updated_at,
                            self.config.record_ttl)
                self._warned_old = True
            return None
        try:
            fresh = await self._resign(record)
            fresh.verify()
        except Exception as exc:  # the callback is the node's; keep publishing the old one
            log.warning("re-signing our DHT record failed: %s", exc)
            return None
        if fresh.user_id != record.user_id or fresh.seq <= record.seq:
            log.warning("the re-signed DHT record is not a newer record of ours; ignored")
            return None
        return fresh

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_interval)
            try:
                await self.refresh()
            except (DhtUnavailable, OSError) as exc:
                log.warning("DHT refresh failed: %s", exc)

    async def refresh(self) -> None:
        """Kademlia's hourly upkeep: look up ids in buckets idle for an hour, and
        republish held records that nobody re-stored here for ``republish_interval``."""
        protocol = await self._started()
        for node_id in protocol.get_refresh_ids():
            target = Node(node_id)
            peers = protocol.router.find_neighbors(target, self.config.alpha)
            if peers:
                await self._crawl(protocol, target, peers)
        for key, value in self.storage.iter_older_than(self.config.republish_interval):
            self.storage.touch(key)
            await self._store(key, value)

    # looking up

    async def lookup(self, user_id: str, *, identity_key: bytes | None = None) -> Record:
        """The newest verified, unexpired record for ``user_id`` that the DHT holds.

        Asks nodes until ``want_values`` of them returned a valid record (or the k
        closest are exhausted); forged, mis-keyed, expired values and, with
        ``identity_key``, records of another key are ignored. Nodes that returned an
        older copy and the closest node without one are sent the newest afterwards.
        RecordNotFound if nodes answered but none had it; DhtUnavailable if none answered.
        """
        user_id = parse_user_id(user_id)
        protocol = await self._started()
        key = dht_digest(user_id)
        target = Node(key)
        seen: dict[bytes, Record | RecordError] = {}

        def accept(value: bytes) -> Record:
            if value not in seen:
                try:
                    record = verify_value(key, value, now=self.clock(),
                                          ttl=self.config.record_ttl)
                    if identity_key is not None and record.identity_key != identity_key:
                        raise RecordError("record carries another identity key", "wrong_key")
                    seen[value] = record
                except RecordError as exc:
                    seen[value] = exc
            result = seen[value]
            if isinstance(result, RecordError):
                raise result
            return result

        local = self.storage.get(key)
        candidates: list[Record] = []
        with contextlib.suppress(RecordError):
            if local is not None:
                candidates.append(accept(local))
        peers = protocol.router.find_neighbors(target, self.config.ksize)
        crawl = await self._crawl(protocol, target, peers, accept_value=accept) if peers else None
        if crawl is not None:
            if crawl.unproven and len(crawl.records) < self.config.want_values:
                await self._ask_again(protocol, target, crawl)
            candidates.extend(record for _, record in crawl.records.values())
        if not candidates:
            if crawl is None or not (crawl.answered or crawl.refused):
                raise DhtUnavailable("no DHT node answered")
            raise RecordNotFound(f"no valid DHT record for {user_id}")
        best = max(candidates, key=lambda r: r.seq)
        if crawl is not None:
            self._repair(protocol, key, best, crawl)
        return best

    async def _ask_again(self, protocol: ParleyProtocol, target: Node,
                         crawl: EagerCrawl) -> None:
        """Nodes that had not heard from us before answer a value lookup with an
        empty list and a ping; once we answered it (within a round trip) they send
        the value. Ask those once more."""
        await asyncio.sleep(self.config.straggler_after)
        nodes = crawl.unproven[: self.config.ksize]
        replies = await asyncio.gather(*(protocol.call_find_value(n, target) for n in nodes))
        for node, (ok, data) in zip(nodes, replies, strict=True):
            if ok and isinstance(data, dict):
                crawl.handle(node, (ok, data))

    def _repair(self, protocol: ParleyProtocol, key: bytes, best: Record,
                crawl: EagerCrawl) -> None:
        """Kademlia's caching step, plus repair of stale replicas."""
        value = best.encode()
        targets = [node for node, record in crawl.records.values() if record.seq < best.seq]
        if crawl.answered:
            targets.append(min(crawl.answered.values(), key=Node(key).distance_to))
        for node in targets:
            self.spawn(protocol.call_store(node, key, value))
        held = self.storage.record(key)
        if held is not None and held.seq < best.seq:
            self.storage.offer(key, value)
