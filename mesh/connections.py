"""Which peers to keep links with, and keeping those links up.

The layer above says, per topic, who the members are and where they listen
(``set_topic``). The ConnectionManager dials enough of them to keep every topic
between D_lo and D_hi links (small groups: everyone), redials with jittered
exponential backoff, accepts inbound links from the ``/mesh`` handler into the same
registry, keeps one link per peer pair, and reports links up and down to the gossip
runtime through callbacks. The choice of peers (plan_dials / plan_prunes) is pure so
that it can be tested without sockets.

A peer's endpoints are dialled happy-eyeballs style (RFC 8305): in the order of
mesh.addresses.order_endpoints (what worked last time, LAN, direct, relayed), a new
attempt starting every ``stagger`` seconds (250 ms) while the earlier ones are still
pending or as soon as they fail, the first established link winning and the others
cancelled. Each link's path (lan, direct, relayed) is kept for the UI.

One link per peer pair: when two links to the same peer are established (both sides
dialled at once), both sides keep one that does not go through a relay, else the one
dialled by the lower user id, and close the other with "duplicate"; two links dialled
by the same side (a reconnect racing a dead link) resolve to the newer one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh import wire
from mesh.addresses import is_lan_ip, order_endpoints, path_of
from mesh.errors import RemoteError
from mesh.identity import KeyPair, Record
from mesh.link import HANDSHAKE_TIMEOUT, Closed
from mesh.transport import LinkConnection, Transport
from mesh.websocket import dial

if TYPE_CHECKING:
    from mesh.holepunch import HolePuncher

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "D_HI",
    "D_LO",
    "FULL_MESH_MAX",
    "MAX_PENDING",
    "MAX_PENDING_PER_ADDRESS",
    "PENDING_DEADLINE",
    "STAGGER",
    "ConnectionManager",
    "D",
    "DialAttempt",
    "backoff_delay",
    "plan_dials",
    "plan_prunes",
]

log = logging.getLogger("parley.mesh.connections")

D_LO, D, D_HI = 4, 6, 12
FULL_MESH_MAX = 13  # groups up to this size (ourselves included) connect to everyone
BACKOFF_BASE, BACKOFF_CAP = 1.0, 60.0
STAGGER = 0.25  # happy eyeballs: RFC 8305 recommends 250 ms between attempts
MAX_LINKS = 256
# Inbound links still in their handshake have a budget of their own, so strangers that
# open WebSockets and never say Hello cannot fill MAX_LINKS (issue 15 finding 4): at
# most MAX_PENDING at once (a new one pushes out the oldest), MAX_PENDING_PER_ADDRESS
# from one remote address (more are refused), each given PENDING_DEADLINE seconds.
MAX_PENDING = 32
MAX_PENDING_PER_ADDRESS = 4
PENDING_DEADLINE = 5.0
ORPHAN_GRACE = 120.0
TICK = 1.0


def backoff_delay(failures: int, rng: random.Random, base: float = BACKOFF_BASE,
                  cap: float = BACKOFF_CAP) -> float:
    """Full jitter (AWS architecture blog, 2015): uniform in [0, min(cap, base*2^(n-1)))
    after the n-th consecutive failure, so that peers that lost the same server do not
    all come back at the same instant."""
    if failures <= 0:
        return 0.0
    return rng.uniform(0.0, min(cap, base * 2 ** min(failures - 1, 62)))


def _shared(topics: Mapping[bytes, Collection[str]]) -> Counter[str]:
    return Counter(p for members in topics.values() for p in set(members))


def _is_full(members: Collection[str], full_mesh_max: int) -> bool:
    return len(members) + 1 <= full_mesh_max  # members exclude ourselves


def plan_dials(topics: Mapping[bytes, Collection[str]], *, connected: Collection[str],
               pending: Collection[str], dialable: Collection[str], d_lo: int = D_LO,
               d: int = D, full_mesh_max: int = FULL_MESH_MAX,
               rng: random.Random) -> list[str]:
    """Peers to dial now. ``topics`` maps topic -> member ids (ourselves excluded);
    ``dialable`` are peers with endpoints and not in backoff. Small topics want every
    member; a big one below ``d_lo`` (counting pending dials) is topped up to ``d``,
    preferring peers that share more of our topics, at random among equals."""
    shared = _shared(topics)
    busy = set(connected) | set(pending)
    chosen: set[str] = set()
    ok = set(dialable)
    for topic in sorted(topics):
        members = set(topics[topic])
        if _is_full(members, full_mesh_max):
            chosen |= (members & ok) - busy
            continue
        have = len(members & (busy | chosen))
        if have >= d_lo:
            continue
        keyed = sorted((-shared[p], rng.random(), p) for p in sorted(members & ok - busy - chosen))
        chosen.update(p for _, _, p in keyed[:d - have])
    return sorted(chosen)


def plan_prunes(topics: Mapping[bytes, Collection[str]], *, connected: Collection[str],
                d_lo: int = D_LO, d: int = D, d_hi: int = D_HI,
                full_mesh_max: int = FULL_MESH_MAX, rng: random.Random) -> list[str]:
    """Peers whose links to close: for a big topic above ``d_hi``, drop links (those
    sharing fewest topics first) back towards ``d``, never a link that a small topic
    needs or whose loss would take any topic below ``d_lo``."""
    conn = set(connected)
    shared = _shared(topics)
    counts = {t: len(set(m) & conn) for t, m in topics.items()}
    full = {t for t, m in topics.items() if _is_full(set(m), full_mesh_max)}
    of_peer: dict[str, list[bytes]] = {}
    for t, members in topics.items():
        for p in set(members):
            of_peer.setdefault(p, []).append(t)
    pruned: set[str] = set()
    for topic in sorted(topics):
        if topic in full or counts[topic] <= d_hi:
            continue
        keyed = sorted((shared[p], rng.random(), p)
                       for p in sorted(set(topics[topic]) & conn - pruned))
        for _, _, p in keyed:
            if counts[topic] <= d:
                break
            if any(u in full or counts[u] - 1 < d_lo for u in of_peer[p]):
                continue
            pruned.add(p)
            for u in of_peer[p]:
                counts[u] -= 1
    return sorted(pruned)


@dataclass
class _Peer:
    failures: int = 0
    not_before: float = 0.0
    remembered: str | None = None  # the endpoint that last produced a link


@dataclass(frozen=True)
class DialAttempt:
    at: float
    peer_id: str
    url: str
    outcome: str  # "ok" or the failure reason


class ConnectionManager:
    """Keeps the node's links. Callbacks (all optional, run on the loop):
    ``on_link(conn)`` when a link is up and won deduplication; ``on_frame(conn, frame)``
    for frames on such links; ``on_link_closed(conn, reason)`` when one of them ends.
    Call ``start()`` inside the running loop and ``await close()`` at shutdown."""

    def __init__(self, identity: KeyPair, record: Record, *,
                 on_link: Callable[[LinkConnection], None] | None = None,
                 on_frame: Callable[[LinkConnection, wire.Frame], None] | None = None,
                 on_link_closed: Callable[[LinkConnection, str], None] | None = None,
                 d_lo: int = D_LO, d: int = D, d_hi: int = D_HI,
                 full_mesh_max: int = FULL_MESH_MAX,
                 backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP,
                 max_links: int = MAX_LINKS, orphan_grace: float = ORPHAN_GRACE,
                 max_pending: int = MAX_PENDING,
                 max_pending_per_address: int = MAX_PENDING_PER_ADDRESS,
                 pending_deadline: float = PENDING_DEADLINE,
                 tick: float = TICK, stagger: float = STAGGER,
                 rng: random.Random | None = None,
                 dialer: Callable[..., Awaitable[LinkConnection]] = dial,
                 link_options: Mapping[str, Any] | None = None,
                 dial_options: Mapping[str, Any] | None = None) -> None:
        if not 0 < d_lo <= d <= d_hi:
            raise ValueError("need 0 < d_lo <= d <= d_hi")
        self.identity, self.record = identity, record
        self.user_id = record.user_id
        self.on_link, self.on_frame, self.on_link_closed = on_link, on_frame, on_link_closed
        self.d_lo, self.d, self.d_hi, self.full_mesh_max = d_lo, d, d_hi, full_mesh_max
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.max_links, self.orphan_grace, self.tick = max_links, orphan_grace, tick
        self.max_pending, self.max_pending_per_address = max_pending, max_pending_per_address
        self.pending_deadline = pending_deadline
        self.stagger = stagger
        self.rng = rng or random.Random()
        self._dialer = dialer
        # link_options go to every LinkConnection (max_queue_bytes, handshake_timeout,
        # keepalive); dial_options only to the dialer (connect_timeout, ping_interval...).
        self._link_options = dict(link_options or {})
        self._dial_options = dict(dial_options or {})
        self._topics: dict[bytes, dict[str, tuple[str, ...]]] = {}
        self._hints: dict[str, tuple[str, ...]] = {}
        self._links: dict[str, LinkConnection] = {}
        self._all: set[LinkConnection] = set()
        # Inbound links in their handshake, oldest first -> remote address (None: unknown)
        self._pending: dict[LinkConnection, str | None] = {}
        self._paths: dict[LinkConnection, str] = {}  # links not dialled to a URL
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._peers: dict[str, _Peer] = {}
        self._orphan_since: dict[str, float] = {}
        self.attempts: deque[DialAttempt] = deque(maxlen=256)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Moves relayed links to direct ones (mesh/holepunch.py); set by the node.
        self.puncher: HolePuncher | None = None

    # Input from the layer above

    def set_topic(self, topic: bytes, members: Mapping[str, Sequence[str]]) -> None:
        """Members of a topic and their endpoint URLs; our own id is ignored."""
        self._topics[topic] = {p: tuple(eps) for p, eps in members.items()
                               if p != self.user_id}
        self._kick()

    def remove_topic(self, topic: bytes) -> None:
        self._topics.pop(topic, None)
        self._kick()

    def set_hints(self, peer_id: str, urls: Sequence[str]) -> None:
        """Endpoints of a peer heard outside its record (a LAN announcement): they join
        its candidates in the usual dial order. New hints end the peer's backoff, so a
        friend who just appeared on the LAN is dialled now."""
        urls = tuple(urls)
        if peer_id == self.user_id or self._hints.get(peer_id) == urls:
            return
        self._hints[peer_id] = urls
        self._peer(peer_id).not_before = 0.0
        self._kick()

    def set_record(self, record: Record) -> None:
        """Our own record changed (new endpoints); used for links made from now on."""
        self.record = record

    # Queries

    def links(self) -> dict[str, LinkConnection]:
        """Established, deduplicated links by peer user id."""
        return {p: c for p, c in self._links.items() if c.established}

    def link_for(self, peer_id: str) -> LinkConnection | None:
        conn = self._links.get(peer_id)
        return conn if conn is not None and conn.established else None

    def pending_handshakes(self) -> int:
        """Inbound links still in their handshake (within the MAX_PENDING budget)."""
        return len(self._pending)

    def topic_links(self, topic: bytes) -> list[str]:
        return sorted(set(self._topics.get(topic, ())) & set(self.links()))

    def path_of(self, conn: LinkConnection) -> str:
        """How a link travels: "lan", "direct" or "relayed" for WebSocket links,
        what ``adopt`` was told for others (e.g. "bluetooth")."""
        if conn.endpoint is not None:
            return path_of(conn.endpoint)
        return self._paths.get(conn, "direct")

    def link_paths(self) -> dict[str, str]:
        """The path of each established link, by peer user id."""
        return {peer: self.path_of(conn) for peer, conn in self.links().items()}

    # Lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._closing = True
        if self.puncher is not None:
            await self.puncher.close()
        tasks = [t for t in (self._task, *self._dialing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns = list(self._all)
        for conn in conns:
            conn.close("shutdown")
        await asyncio.gather(*(c.wait_closed() for c in conns))

    # InboundAcceptor for mesh.websocket.MeshHandler

    def accept_inbound(self, transport: Transport) -> LinkConnection | None:
        host = getattr(transport, "remote_host", "")  # WebSocket transports have it
        return self._accept(transport, "lan" if is_lan_ip(host) else "direct", host or None)

    def accept_relayed(self, transport: Transport) -> LinkConnection | None:
        """An inbound link spliced by a circuit relay (mesh/relay_client.py); the relay
        limits circuits per source, we only see the relay."""
        return self._accept(transport, "relayed", None)

    def _accept(self, transport: Transport, path: str,
                address: str | None) -> LinkConnection | None:
        """A new inbound link, in the handshake budget (see MAX_PENDING); None to refuse.
        Pending links do not count against max_links: a full node refuses new ones at
        once, and one whose handshake completes when the cap was reached meanwhile."""
        if self._closing or self._link_count() >= self.max_links:
            return None
        if address is not None and sum(
                a == address for a in self._pending.values()) >= self.max_pending_per_address:
            return None
        if len(self._pending) >= self.max_pending:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.close("busy", "too many links in their handshake")
        options = self._conn_kwargs()
        options["handshake_timeout"] = min(self.pending_deadline,
                                           options.get("handshake_timeout", HANDSHAKE_TIMEOUT))
        conn = LinkConnection(self.identity, self.record, initiator=False, **options)
        self._all.add(conn)
        self._pending[conn] = address
        self._paths[conn] = path
        conn.attach(transport)
        return conn

    def _link_count(self) -> int:
        """Links that count against max_links: all but inbound ones in their handshake."""
        return len(self._all) - len(self._pending)

    def adopt(self, transport: Transport, *, initiator: bool, path: str = "bluetooth",
              **link_options: Any) -> LinkConnection | None:
        """Run a link over a pipe someone else opened (a Bluetooth RFCOMM socket, in
        either direction: ``initiator`` speaks first) in this same registry, so that
        deduplication and callbacks treat it like any other link. ``link_options``
        (keepalive, ...) override the manager's for this link. None when closing or
        full. ``path`` is what the UI shows for the link."""
        if self._closing or self._link_count() >= self.max_links:
            return None
        conn = LinkConnection(self.identity, self.record, initiator=initiator,
                              **{**self._conn_kwargs(), **link_options})
        self._all.add(conn)
        self._paths[conn] = path
        conn.attach(transport)
        return conn

    # Internals

    def _conn_kwargs(self) -> dict[str, Any]:
        return {"on_established": self._established, "on_frame": self._frame,
                "on_closed": self._closed, **self._link_options}

    def _kick(self) -> None:
        self._wake.set()

    def _peer(self, peer_id: str) -> _Peer:
        return self._peers.setdefault(peer_id, _Peer())

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _dialer_id(self, conn: LinkConnection) -> str:
        return self.user_id if conn.initiator else conn.peer_id or ""

    def _established(self, conn: LinkConnection) -> None:
        inbound = conn in self._pending
        self._pending.pop(conn, None)
        if inbound and self._link_count() > self.max_links:  # counting this one
            conn.close("busy", "this node has as many links as it keeps")
            return
        self._all.add(conn)
        peer = conn.peer_id
        assert peer is not None
        if self._closing:
            conn.close("shutdown")
            return
        state = self._peer(peer)
        state.failures, state.not_before = 0, 0.0
        old = self._links.get(peer)
        if old is not None and old is not conn and not old.closed:
            if self._keeps_old(old, conn):
                conn.close("duplicate", "a better link to this peer exists")
                return
            del self._links[peer]
            self._report_closed(old, "duplicate")
            old.close("duplicate", "a better link to this peer exists")
        self._links[peer] = conn
        if self.on_link is not None:
            self.on_link(conn)
        if self.puncher is not None:
            self.puncher.link_up(conn, self.path_of(conn),
                                 accepted_via_relay=not conn.initiator and conn.endpoint is None
                                 and self._paths.get(conn) == "relayed")
        self._kick()

    def _keeps_old(self, old: LinkConnection, new: LinkConnection) -> bool:
        """Of two links to one peer, which stays: one that avoids a relay, else the one
        dialled by the lower user id. Both ends see the same paths and ids, so they
        agree without talking."""
        old_relayed = self.path_of(old) == "relayed"
        new_relayed = self.path_of(new) == "relayed"
        if old_relayed != new_relayed:
            return new_relayed
        return self._dialer_id(new) > self._dialer_id(old)

    def _frame(self, conn: LinkConnection, frame: wire.Frame) -> None:
        if self._links.get(conn.peer_id or "") is not conn:
            return
        if isinstance(frame, wire.Punch):  # the manager's own business: moving links
            if self.puncher is not None:
                self.puncher.on_frame(conn, frame)
        elif self.on_frame is not None:
            self.on_frame(conn, frame)

    def _closed(self, conn: LinkConnection, event: Closed) -> None:
        if self.puncher is not None:
            self.puncher.link_down(conn)
        self._all.discard(conn)
        self._pending.pop(conn, None)
        self._paths.pop(conn, None)
        peer = conn.peer_id
        if peer is None or self._links.get(peer) is not conn:
            return
        del self._links[peer]
        state = self._peer(peer)
        if event.by_peer and event.reason == "surplus":
            state.not_before = self._now() + self.backoff_cap  # they have enough of us
        elif event.reason != "duplicate" and (event.by_peer or event.reason != "surplus"):
            # Lost, refused or the peer went away: come back later, with jitter.
            state.failures += 1
            state.not_before = self._now() + backoff_delay(
                state.failures, self.rng, self.backoff_base, self.backoff_cap)
        self._report_closed(conn, event.reason)
        self._kick()

    def _report_closed(self, conn: LinkConnection, reason: str) -> None:
        if self.on_link_closed is not None:
            self.on_link_closed(conn, reason)

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()
            try:
                self._maintain()
            except Exception:  # a bug here must not stop reconnecting for good
                log.exception("connection maintenance failed")
            now = self._now()
            waits = [p.not_before - now for p in self._peers.values() if p.not_before > now]
            timeout = max(0.005, min([self.tick, *waits]))
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _maintain(self) -> None:
        now = self._now()
        topics = {t: tuple(m) for t, m in self._topics.items()}
        connected = set(self.links())
        dialable = {p for m in self._topics.values() for p, eps in m.items()
                    if (eps or p in self._hints) and self._peer(p).not_before <= now}
        for peer in plan_dials(topics, connected=connected, pending=set(self._dialing),
                               dialable=dialable, d_lo=self.d_lo, d=self.d,
                               full_mesh_max=self.full_mesh_max, rng=self.rng):
            if self._link_count() + len(self._dialing) >= self.max_links:
                break
            self._dialing[peer] = asyncio.get_running_loop().create_task(self._dial(peer))
        for peer in plan_prunes(topics, connected=connected, d_lo=self.d_lo, d=self.d,
                                d_hi=self.d_hi, full_mesh_max=self.full_mesh_max,
                                rng=self.rng):
            self._links[peer].close("surplus", "enough links for our shared topics")
        members = {p for m in self._topics.values() for p in m}
        for peer in connected:
            if peer in members:
                self._orphan_since.pop(peer, None)
            elif now - self._orphan_since.setdefault(peer, now) >= self.orphan_grace:
                self._orphan_since.pop(peer)
                self._links[peer].close("surplus", "no shared topic")

    def _endpoints(self, peer: str) -> list[str]:
        seen: dict[str, None] = dict.fromkeys(self._hints.get(peer, ()))
        for members in self._topics.values():
            for url in members.get(peer, ()):
                seen.setdefault(url, None)
        return list(seen)

    async def _dial(self, peer: str) -> None:
        state = self._peer(peer)
        try:
            endpoints = order_endpoints(self._endpoints(peer), state.remembered)
            if not endpoints:
                return
            conn = await self._race(peer, endpoints)
            if conn is None:
                state.failures += 1
                state.not_before = self._now() + backoff_delay(
                    state.failures, self.rng, self.backoff_base, self.backoff_cap)
                return
            state.remembered = conn.endpoint
            if conn.closed:  # lost deduplication or closed at once
                self._all.discard(conn)
        finally:
            self._dialing.pop(peer, None)
            self._kick()

    async def _race(self, peer: str, endpoints: list[str]) -> LinkConnection | None:
        """Happy eyeballs over ``endpoints``; the first established link, or None."""
        loop = asyncio.get_running_loop()
        waiting = list(endpoints)
        running: dict[asyncio.Task[LinkConnection], str] = {}
        winner: LinkConnection | None = None
        try:
            while winner is None and (waiting or running):
                if waiting:
                    url = waiting.pop(0)
                    running[loop.create_task(self._dialer(
                        url, self.identity, self.record, expected_peer=peer,
                        **self._conn_kwargs(), **self._dial_options))] = url
                done, _ = await asyncio.wait(running, timeout=self.stagger if waiting else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    winner = self._settle(peer, running.pop(task), task, winner)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running)
            for task, url in running.items():
                if not task.cancelled():
                    winner = self._settle(peer, url, task, winner)
        return winner

    def _settle(self, peer: str, url: str, task: asyncio.Task[LinkConnection],
                winner: LinkConnection | None) -> LinkConnection | None:
        """Record one finished attempt; return the winner so far (a second success
        is closed: the race has already been won)."""
        exc = task.exception()
        if exc is not None:
            if not isinstance(exc, RemoteError):
                raise exc
            self.attempts.append(DialAttempt(self._now(), peer, url, exc.reason))
            return winner
        conn = task.result()
        self.attempts.append(DialAttempt(self._now(), peer, url, "ok"))
        if winner is None:
            return conn
        conn.close("duplicate", "another endpoint answered first")
        return winner
