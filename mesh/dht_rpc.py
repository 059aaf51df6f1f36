"""The UDP side of the DHT: a strict KademliaProtocol and a crawler that does not
wait on stragglers (extension points of the `kademlia` 2.2 / `rpcudp` 5 packages).

Why our own receive path: rpcudp's ``datagram_received`` hands every packet to a
task that calls ``umsgpack.unpackb`` and then the named ``rpc_*`` method with
whatever arguments arrived; garbage raises inside the task ("Task exception was
never retrieved" at ERROR, per packet) and wrong argument types crash the handler.
Here a datagram is size-checked, decoded with msgpack (bounded nesting), matched
against an allow-list of calls and arities, and its arguments type-checked; junk is
dropped with at most one warning a minute. Replies are checked the same way before
the crawler sees them: a peer that answers nonsense counts as a silent one.

Why a timeout first drains the socket: asyncio's UDP transport reads one datagram
per loop pass, and timers that fell due while the loop was busy run in the pass
that reads the first reply. A node that spent longer than the reply timeout on
other work (verifying records, here twenty STOREs of a 2.4 KB record on a loaded
machine) found one reply and declared the nineteen others waiting in its socket
silent, and dropped those peers from its routing table.

Why our own crawler: the package's SpiderCrawl asks alpha peers and waits for all of
them (5 s per silent peer), so with 30% of nodes gone a lookup takes 5-20 s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgpack
from kademlia.crawling import SpiderCrawl
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from rpcudp.exceptions import MalformedMessage

from mesh.dht_guard import ReplyGuard
from mesh.dht_records import KEY_LEN, MAX_VALUE_BYTES, RecordStorage
from mesh.errors import LocalError, RecordError
from mesh.identity import Record

__all__ = ["MAX_DATAGRAM", "RPC_HEADER", "EagerCrawl", "ParleyProtocol", "Spawn"]

log = logging.getLogger("mesh.dht")

RPC_HEADER = 21                # 0x00 request / 0x01 reply, then a 20-byte message id
MAX_DATAGRAM = RPC_HEADER + 8192  # rpcudp refuses to send requests larger than 8 KiB
_DRAIN_LIMIT = 256            # datagrams a timeout reads before judging (a flood cannot stall it)
_ARITY = {"ping": 1, "stun": 0, "store": 3, "find_node": 2, "find_value": 2}

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class _Junk(Exception):
    """A datagram or RPC we ignore (never leaves this module)."""


class _RateLimitedLog:
    """At most one log line per ``interval`` at ``level``, with a count of the rest."""

    def __init__(self, level: int, what: str, interval: float = 60.0) -> None:
        self.level, self.what, self.interval = level, what, interval
        self.count = 0
        self._last = -float("inf")

    def note(self, addr: Any, why: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            log.log(self.level, "%d %s in the last minute; latest from %s: %s",
                    self.count, self.what, addr, why)
            self._last, self.count = now, 0
        else:
            log.debug("%s from %s: %s", self.what, addr, why)


def _node_id(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != KEY_LEN:
        raise _Junk("node id or key is not 20 bytes")
    return value


def _triples(data: Any, limit: int) -> list[tuple[bytes, str, int]]:
    """A find_node reply: at most ``limit`` [node id, IP literal, port] triples."""
    if not isinstance(data, list) or len(data) > limit:
        raise _Junk("node list is not a short list")
    out = []
    for item in data:
        if not isinstance(item, list) or len(item) != 3:
            raise _Junk("node entry is not a triple")
        node_id, ip, port = item
        if not isinstance(ip, str) or len(ip) > 45 or type(port) is not int \
                or not 0 < port < 65536:
            raise _Junk("node entry has a bad address")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise _Junk("node entry has a bad address") from None
        out.append((_node_id(node_id), ip, port))
    return out


def _shrunk(reply: Any, limit: int) -> Any:
    """What an unproven address gets instead of a reply over ``limit`` bytes: a node
    list cut to fit, and for a value an empty list, which tells a Parley client "ask
    again once you answered my ping" (EagerCrawl.unproven)."""
    if not isinstance(reply, list):
        return []
    nodes = list(reply)
    while nodes and len(msgpack.packb(nodes, use_bin_type=True)) > limit:
        nodes.pop()
    return nodes


class ParleyProtocol(KademliaProtocol):
    """KademliaProtocol with a strict receive path, checked replies and quiet timeouts."""

    def __init__(self, source_node: Node, storage: RecordStorage, ksize: int, *,
                 rpc_timeout: float, spawn: Spawn, guard: ReplyGuard | None = None,
                 sock: socket.socket | None = None) -> None:
        super().__init__(source_node, storage, ksize)
        self._sock = sock  # the transport's socket, read directly by _drain
        self._wait_timeout = rpc_timeout
        self._spawn = spawn
        self.guard = guard or ReplyGuard()
        self._junk = _RateLimitedLog(logging.WARNING, "malformed DHT datagram(s) ignored")
        self._withheld = _RateLimitedLog(logging.INFO, "DHT replies withheld (source over "
                                                       "its byte budget)")
        self._bugs = _RateLimitedLog(logging.ERROR, "DHT datagram(s) hit a bug")
        self.closed = False

    # receiving

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self._receive(data, addr)
        except _Junk as exc:
            self._junk.note(addr, str(exc))
        except Exception as exc:  # a bug of ours: must not kill the node or flood the log
            log.debug("DHT datagram from %s raised", addr, exc_info=True)
            self._bugs.note(addr, repr(exc))

    def error_received(self, exc: Exception) -> None:
        log.debug("DHT socket error: %s", exc)

    def _receive(self, data: bytes, addr: Any) -> None:
        if self.closed:
            return
        if not RPC_HEADER < len(data) <= MAX_DATAGRAM:
            raise _Junk(f"{len(data)}-byte datagram")
        kind, msg_id = data[:1], data[1:RPC_HEADER]
        try:
            msg = msgpack.unpackb(data[RPC_HEADER:], raw=False)
        except Exception:  # msgpack raises several unrelated types on garbage
            raise _Junk("body is not msgpack") from None
        if kind == b"\x00":
            self._request(msg_id, msg, addr, len(data))
        elif kind == b"\x01":
            self._reply(msg_id, msg, addr)
        else:
            raise _Junk("unknown message kind")

    def _request(self, msg_id: bytes, msg: Any, addr: Any, size: int) -> None:
        if not (isinstance(msg, list) and len(msg) == 2 and isinstance(msg[0], str)
                and isinstance(msg[1], list)):
            raise _Junk("request is not [name, args]")
        name, args = msg
        if _ARITY.get(name) != len(args):
            raise _Junk(f"unknown call or wrong arguments ({name[:20]!r})")
        reply = getattr(self, f"rpc_{name}")(addr, *args)
        now = time.monotonic()
        out = b"\x01" + msg_id + msgpack.packb(reply, use_bin_type=True)
        limit = self.guard.reply_limit(addr, size, now)
        if limit is not None and len(out) > limit:
            out = b"\x01" + msg_id + msgpack.packb(_shrunk(reply, limit - RPC_HEADER),
                                                    use_bin_type=True)
        if limit is not None and self.guard.challenge(addr, now) and name != "stun":
            self._spawn(self.call_ping(Node(args[0], addr[0], addr[1])))
        if not self.guard.spend(addr, len(out), now):
            self._withheld.note(addr, f"{name} reply of {len(out)} bytes")
            return
        self.transport.sendto(out, addr)

    def _reply(self, msg_id: bytes, msg: Any, addr: Any) -> None:
        entry = self._outstanding.pop(msg_id, None)
        if entry is None:
            log.debug("late or unknown DHT reply from %s", addr)
            return
        self.guard.answered(addr, time.monotonic())  # it echoed our random message id
        future, timer = entry
        timer.cancel()
        if not future.done():
            future.set_result((True, msg))

    def _timeout(self, msg_id: bytes) -> None:
        self._drain()
        entry = self._outstanding.pop(msg_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result((False, None))

    def _drain(self) -> None:
        """Take in the datagrams already waiting, so that a reply that arrived in time
        is not judged late because the loop had not read it yet (see the docstring)."""
        if self._sock is None or self.closed:
            return
        for _ in range(_DRAIN_LIMIT):
            try:
                data, addr = self._sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.error_received(exc)
                return
            self.datagram_received(data, addr)

    def fail_outstanding(self) -> None:
        """Answer every pending call with "no reply" (used when stopping)."""
        for future, timer in self._outstanding.values():
            timer.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()

    # the RPCs we serve (arguments are checked; a bad one raises _Junk: no reply)

    def _sender(self, node_id: Any, addr: Any) -> Node:
        node_id = _node_id(node_id)
        if node_id == self.source_node.id:
            raise _Junk("peer claims our node id")
        return Node(node_id, addr[0], addr[1])

    def rpc_stun(self, sender: Any) -> list[Any]:
        return [sender[0], sender[1]]

    def rpc_ping(self, sender: Any, nodeid: Any) -> bytes:
        self.welcome_if_new(self._sender(nodeid, sender))
        return self.source_node.id

    def rpc_store(self, sender: Any, nodeid: Any, key: Any, value: Any) -> bool:
        node = self._sender(nodeid, sender)
        key = _node_id(key)
        if type(value) is not bytes:
            raise _Junk("stored value is not bytes")
        self.welcome_if_new(node)
        outcome = self.storage.offer(key, value, source=sender[0])
        if not outcome.holds_offer:
            log.debug("refused STORE from %s: %s", sender, self.storage.last_rejection)
        return outcome.holds_offer

    def rpc_find_node(self, sender: Any, nodeid: Any, key: Any) -> list[list[Any]]:
        node = self._sender(nodeid, sender)
        key = _node_id(key)
        self.welcome_if_new(node)
        return [list(n) for n in self.router.find_neighbors(Node(key), exclude=node)]

    def rpc_find_value(self, sender: Any, nodeid: Any, key: Any) -> Any:
        key = _node_id(key)
        value = self.storage.get(key)
        if value is None:
            return self.rpc_find_node(sender, nodeid, key)
        self.welcome_if_new(self._sender(nodeid, sender))
        return {"value": value}

    # calling others: replies are checked before anything uses them

    async def _call(self, node: Node, name: str, check: Callable[[Any], Any],
                    *args: Any) -> tuple[bool, Any]:
        if self.closed or self.transport is None:
            return False, None
        try:
            ok, data = await getattr(self, name)((node.ip, node.port), *args)
        except MalformedMessage as exc:  # our own request over 8 KiB: a bug, not the peer
            raise LocalError(f"DHT request too large: {exc}") from None
        if ok:
            try:
                data = check(data)
            except _Junk as exc:
                log.debug("bad %s reply from %s: %s", name, node, exc)
                ok, data = False, None
        return self.handle_call_response((ok, data), node)

    async def call_ping(self, node_to_ask: Node) -> tuple[bool, Any]:
        return await self._call(node_to_ask, "ping", _node_id, self.source_node.id)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> tuple[bool, Any]:
        def check(data: Any) -> bool:
            if type(data) is not bool:
                raise _Junk("store reply is not a boolean")
            return data
        return await self._call(node_to_ask, "store", check, self.source_node.id, key, value)

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        return await self._call(node_to_ask, "find_node", self._check_nodes,
                                self.source_node.id, node_to_find.id)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        def check(data: Any) -> Any:
            if isinstance(data, dict):
                value = data.get("value")
                if len(data) != 1 or type(value) is not bytes or len(value) > MAX_VALUE_BYTES:
                    raise _Junk("value reply is not {'value': bytes}")
                return data
            return self._check_nodes(data)
        return await self._call(node_to_ask, "find_value", check,
                                self.source_node.id, node_to_find.id)

    def _check_nodes(self, data: Any) -> list[tuple[bytes, str, int]]:
        return _triples(data, 2 * self.router.ksize)

    def handle_call_response(self, result: tuple[bool, Any], node: Node) -> tuple[bool, Any]:
        if not result[0]:
            log.debug("no valid reply from %s; dropping it from the routing table", node)
            self.router.remove_contact(node)
            return result
        self.welcome_if_new(node)
        return result

    def welcome_if_new(self, node: Node) -> None:
        """As the package's, but keyed on the stored digest itself (2.2.3 hashes the
        digest a second time and so hands keys to the wrong newcomers), with tracked
        tasks and no INFO line per peer. A node whose address has not proven it receives
        there is neither added nor sent records (a spoofed request would otherwise
        draw STOREs at its victim and fill our table with unreachable entries); the
        proving ping's answer welcomes it."""
        if not self.router.is_new_node(node) \
                or not self.guard.proven((node.ip, node.port), time.monotonic()):
            return
        for key, value in self.storage:
            keynode = Node(key)
            neighbors = self.router.find_neighbors(keynode)
            if neighbors:
                new_node_close = node.distance_to(keynode) < neighbors[-1].distance_to(keynode)
                this_closest = (self.source_node.distance_to(keynode)
                                < neighbors[0].distance_to(keynode))
            if not neighbors or (new_node_close and this_closest):
                self._spawn(self.call_store(node, key, value))
        self.router.add_contact(node)


class EagerCrawl(SpiderCrawl):
    """An iterative lookup that never waits on stragglers.

    Up to ``alpha`` requests count as active; one unanswered after ``straggler_after``
    stops counting (it may still answer and is used if it does) and the next closest
    uncontacted node is asked. The crawl ends when the k closest known nodes have all
    been asked and none is active, when ``want_values`` verified values are in, or at
    ``deadline`` (loop time). With ``accept_value`` it is a value lookup: each value is
    passed through it (it raises RecordError for a forged or stale one, which is then
    ignored) and the peers' records are kept in ``records``.
    """

    def __init__(self, protocol: ParleyProtocol, node: Node, peers: list[Node], ksize: int,
                 alpha: int, *, spawn: Spawn, straggler_after: float, deadline: float,
                 accept_value: Callable[[bytes], Record] | None = None,
                 want_values: int = 0) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self._spawn = spawn
        self.straggler_after = straggler_after
        self.deadline = deadline
        self.accept_value = accept_value
        self.want_values = want_values
        self.records: dict[bytes, tuple[Node, Record]] = {}
        self.answered: dict[bytes, Node] = {}  # replied with nodes, not a valid value
        # Value lookups: nodes that answered an empty list, which a Parley node sends
        # to an address that has not yet proven it receives (mesh/dht_guard.py).
        self.unproven: list[Node] = []
        self.refused = 0

    async def find(self) -> EagerCrawl:
        if self.accept_value is None:
            await self._find(self.protocol.call_find_node)
        else:
            await self._find(self.protocol.call_find_value)
        return self

    async def _find(self, rpcmethod: Callable[[Node, Node], Awaitable[Any]]) -> None:
        loop = asyncio.get_running_loop()
        inflight: dict[asyncio.Future[Any], tuple[Node, float]] = {}
        while True:
            now = loop.time()
            if now >= self.deadline or self._enough():
                return
            active = sum(1 for _, t0 in inflight.values() if now - t0 < self.straggler_after)
            for peer in self.nearest.get_uncontacted():
                if active >= self.alpha:
                    break
                self.nearest.mark_contacted(peer)
                inflight[self._spawn(rpcmethod(peer, self.node))] = (peer, now)
                active += 1
            if not inflight or (active == 0 and self._have_something()):
                return
            wake = min([t0 + self.straggler_after for _, t0 in inflight.values()
                        if t0 + self.straggler_after > now] + [self.deadline])
            done, _ = await asyncio.wait(inflight, timeout=max(0.0, wake - now),
                                         return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                peer, _ = inflight.pop(future)
                self.handle(peer, (False, None) if future.cancelled() else future.result())

    def _enough(self) -> bool:
        return self.accept_value is not None and len(self.records) >= self.want_values

    def _have_something(self) -> bool:
        return bool(self.records) if self.accept_value is not None else bool(self.answered)

    def handle(self, peer: Node, result: tuple[bool, Any]) -> None:
        """Take in one peer's answer (the crawl's own, or a repeated question's)."""
        ok, data = result
        if not ok:
            self.nearest.remove([peer.id])
        elif isinstance(data, dict) and self.accept_value is not None:
            try:
                self.records[peer.id] = (peer, self.accept_value(data["value"]))
                self.answered.pop(peer.id, None)
            except RecordError as exc:
                self.refused += 1
                log.debug("ignored a %s value from %s: %s", exc.reason, peer, exc)
        elif isinstance(data, list):
            if not data and self.accept_value is not None:
                self.unproven.append(peer)
            self.answered[peer.id] = peer
            own = self.protocol.source_node.id
            self.nearest.push([Node(*t) for t in data if t[0] != own])

    def closest_answered(self) -> list[Node]:
        """The k closest nodes that answered (with nodes or a value)."""
        nodes = {**self.answered, **{pid: n for pid, (n, _) in self.records.items()}}
        return sorted(nodes.values(), key=self.node.distance_to)[: self.ksize]
