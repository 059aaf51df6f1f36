"""The composition root of the messenger: one user's node, wired from its parts.

    node = await Node.start(NodeConfig(data_dir=Path("data"), bootstrap="http://..."),
                            events=sink)
    ...
    await node.stop()

Everything a node has is built here and nowhere else, each part from parts built before
it: the data directory and identity, the SQLite store and crypto, discovery (bootstrap
client, DHT node), the directory of known users, the mesh runtime (passive until
started), the messenger, Bluetooth meetups and attachments. Only then does the runtime
start, with the messenger's and attachments' real methods as its hooks. Nothing is
global; two nodes can live in one process (the demo and the tests do that).

The node knows no UI: the process root (webapp/app.py, used by run.py) puts a UI
server in front of it, through groups.node_api.NodeApi. A new service (a relay, mDNS,
reachability checks) is one more part built in ``__init__`` from the parts it needs,
started in ``_start`` and stopped in ``stop`` (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from groups import history, prekeys
from groups import store as node_store
from groups.attachments import AttachmentService
from groups.crypto import Crypto
from groups.directory import Directory, NoDiscovery
from groups.meetups import Meetups
from groups.messenger import EventSink, Messenger
from groups.presence_service import PresenceService
from mesh import wire
from mesh.addresses import AddressBook, Kind, endpoint_url, lan_addresses
from mesh.dht import DhtNode
from mesh.dht_records import format_dht_contact, parse_dht_contacts
from mesh.discovery import DiscoveryClient
from mesh.errors import DialError, DiscoveryRefused, MeshError, RemoteError
from mesh.gossip_state import Acked, Event, Message, Rejected
from mesh.holepunch import STREAM_KEEPALIVE, HolePuncher
from mesh.identity import KeyPair, Record, display_user_id, load_or_create_identity
from mesh.lan import LanCore, Match
from mesh.lookup import Discovery, DiscoveryMode, bootstrap_dht_contact
from mesh.mdns import LanDiscovery, lan_ipv4_addresses
from mesh.portmap import PortMapper
from mesh.reachability import ReachabilityService, probe
from mesh.relay import is_relay_address
from mesh.relay_server import RelayService, relay_routes
from mesh.runtime import MeshHooks, MeshRuntime
from mesh.transport import LinkConnection
from mesh.websocket import MESH_PATH

__all__ = ["Node", "NodeConfig"]

log = logging.getLogger("parley.node")

DHT_CONTACTS_FILE = "dht-contacts.json"
DHT_CONTACTS_SAVE_INTERVAL = 60.0
REGISTER_RETRY = (2.0, 120.0)
DISAPPEAR_SWEEP = 1.0   # seconds between sweeps for disappearing messages


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    bootstrap: str = "http://127.0.0.1:8470"
    mesh_port: int | None = 0  # None: no WebSocket mesh (no listener, endpoints or dials)
    mesh_host: str = "127.0.0.1"      # 0.0.0.0: every interface (publishes each address)
    advertise: tuple[str, ...] = ()   # endpoints to publish; default ws://host:port/mesh
    relays: tuple[str, ...] = ()      # relays to hold reservations on (besides the bootstrap)
    serve_relay: bool = False         # be a circuit relay for others on the mesh port
    refresh_interval: float = 30.0    # how often unreachable peers' records are re-read
    retention_days: float | None = None  # keep group history for others this long (None: always)
    dht_port: int | None = 0          # UDP port of our DHT node; None: no DHT (--no-dht)
    # Unlocks (or, for a key stored without one, protects) the identity key file.
    passphrase: bytes | None = field(default=None, repr=False)
    # The identity already read with that passphrase (run.py all checks it before it
    # starts its bootstrap); None: Node.start reads it.
    identity: KeyPair | None = field(default=None, repr=False)
    discovery: str = "auto"           # auto (bootstrap, then DHT) | dht | bootstrap
    dht_contacts: tuple[str, ...] = ()  # "ip:port" of DHT nodes to join through
    bluetooth: bool = False           # advertise, scan and link over Bluetooth RFCOMM
    bluetooth_attachments: int | None = None  # max file bytes over Bluetooth; None: all
    lan_discovery: bool = False       # mDNS on the LAN (run.py: on; needs a mesh beyond loopback)
    port_mapping: bool = False        # NAT-PMP / UPnP on the router (run.py: on; same condition)


class Node:
    """One user's messenger node. ``Node.start`` opens what needs I/O (identity file,
    database, the DHT's UDP socket), builds the parts in dependency order here, then
    starts them; ``stop`` undoes it in reverse."""

    def __init__(self, config: NodeConfig, identity: KeyPair, conn: Any, crypto: Crypto,
                 dht: DhtNode | None, events: EventSink) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.identity = identity
        self.user_id = identity.user_id
        self.conn = conn
        self.crypto = crypto
        self.events = events
        # Set when any signed reply says our one-time prekeys run low: refill now.
        self._prekeys_low = asyncio.Event()
        self.client = DiscoveryClient(config.bootstrap, identity,
                                      on_prekeys_left=self._heard_prekeys_left) \
            if config.bootstrap else None
        self.dht = dht
        mode = DiscoveryMode(config.discovery) if dht is not None else DiscoveryMode.BOOTSTRAP
        self.discovery = Discovery(bootstrap=self.client, dht=dht, mode=mode) \
            if self.client is not None or dht is not None else NoDiscovery()
        self.directory = Directory(conn, crypto, self.discovery)
        self.registered = asyncio.Event()
        self.dht_joined = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._pushes: set[asyncio.Task[None]] = set()  # records with new endpoints
        now = time.time()
        self._prekeys = prekeys.maintain_prekeys(crypto, now, server_left=None)
        # Provisional until the mesh listens and we know our endpoints (``_start``).
        self.record: Record = prekeys.build_record(
            identity, self._prekeys, endpoints=(),
            seq=node_store.counter_value(conn, "record_seq") or 1, now=now)
        self.runtime = MeshRuntime(
            identity, self.record, history.Mailbox(conn),
            manager_options=None if config.mesh_port is not None else {"dialer": _no_dial})
        # Where others can reach us: filled in ``_start``; every change re-signs and
        # republishes our record (``_endpoints_changed``).
        self.addresses = AddressBook()
        self.reachability = ReachabilityService(
            identity, self.addresses, bootstrap=config.bootstrap or None, mesh_port=None,
            relays=config.relays, accept_relayed=self.runtime.manager.accept_relayed)
        self.relay: RelayService | None = RelayService() if config.serve_relay else None
        self.messenger = Messenger(identity, conn, crypto, self.directory,
                                   RuntimePort(self.runtime), events,
                                   invite_info=self._invite_info)
        self.meetups = Meetups(manager=self.runtime.manager, conn=conn, me=self.user_id,
                               membership=self.messenger.groups, directory=self.directory,
                               data_dir=self.data_dir,
                               attachments_limit=config.bluetooth_attachments)
        self.attachments = AttachmentService(self.messenger, self.data_dir / "files",
                                             self.runtime.links, may_move=self.meetups.may_move)
        # Attachments ask the membership (inside the messenger) who may fetch a file, and
        # the messenger tells attachments of each file it commits: one of the two has
        # to be handed the other.
        self.messenger.attachments = self.attachments
        self.presence = PresenceService(self.messenger, self.runtime.links, events, self.data_dir)
        self.lan: LanDiscovery | None = None
        self.portmap: PortMapper | None = None

    # -- life cycle ------------------------------------------------------------------------

    @classmethod
    async def start(cls, config: NodeConfig, *, events: EventSink) -> Node:
        """Build and start a node; ``events`` hears what the UI shows (new messages,
        receipts, transfers)."""
        data_dir = Path(config.data_dir)
        identity = config.identity or load_or_create_identity(data_dir, config.passphrase)
        conn = node_store.open_store(data_dir / "node.db")
        dht = None
        try:
            if config.dht_port is not None:
                dht = DhtNode()
                await dht.listen(config.dht_port, config.mesh_host)
            node = cls(config, identity, conn, Crypto(conn, identity, now=time.time()), dht,
                       events)
            await node._start()
        except BaseException:
            if dht is not None:
                await dht.stop()
            conn.close()
            raise
        return node

    async def _start(self) -> None:
        port = self.runtime.start(
            MeshHooks(commit=self.messenger.commit, validate=self.messenger.validate,
                      on_event=self._on_mesh_event, on_link=self._on_link,
                      on_other_frame=self._on_other_frame,
                      transaction=self.messenger.transaction),
            self.config.mesh_port, self.config.mesh_host)
        self._add_own_candidates(port)
        endpoints = self.addresses.endpoints()
        self.record = prekeys.build_record(self.identity, self._prekeys, endpoints=endpoints,
                                           seq=self._next_record_seq(), now=time.time())
        self.runtime.manager.set_record(self.record)
        self.directory.remember(self.record, time.time())
        self.addresses.on_change = self._endpoints_changed
        if self.relay is not None and self.runtime.server is not None:
            self.runtime.server.app.add_handlers(r".*", relay_routes(self.relay))
        if port is not None and not self.config.advertise:
            self.reachability.mesh_port = port
            self.runtime.manager.puncher = HolePuncher(
                port=port, ours=lambda: self.reachability.punch_addresses(port),
                adopt=lambda transport, initiator, peer: self.runtime.manager.adopt(
                    transport, initiator=initiator, path="hole_punched",
                    keepalive=STREAM_KEEPALIVE, expected_peer=peer))
        self.reachability.start()
        self.messenger.load()
        await self.attachments.start()
        await self.meetups.start(self.config.bluetooth)
        if port is not None and self._mesh_on_lan():
            await self._start_lan_discovery(port)
            self._start_port_mapping(port)
        self._tasks = [asyncio.ensure_future(self._register_loop(self._prekeys)),
                       asyncio.ensure_future(self.messenger.run_outbox(self._stop)),
                       asyncio.ensure_future(self._refresh_loop()),
                       asyncio.ensure_future(self.presence.run(self._stop)),
                       asyncio.ensure_future(self._disappear_loop())]
        if self.dht is not None:
            self._tasks.append(asyncio.ensure_future(self._dht_loop()))
        log.info("node %s up: mesh %s", display_user_id(self.user_id), ", ".join(endpoints))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.addresses.on_change = None
        for push in list(self._pushes):
            push.cancel()
        await asyncio.gather(*self._pushes, return_exceptions=True)
        if self.portmap is not None:
            await self.portmap.close()
        await self.reachability.close()
        if self.relay is not None:
            self.relay.stop()
        await self.meetups.close()
        if self.lan is not None:
            await self.lan.close()
        await self.runtime.close()
        if self.dht is not None:
            if self.dht_joined:
                self._save_dht_contacts()
            await self.dht.stop()
        await self.attachments.close()
        self.messenger.write_acked()
        self.conn.close()

    def _next_record_seq(self) -> int:
        """The seq of a new record of ours: persisted, raised for every new record."""
        with node_store.atomic(self.conn):
            return node_store.next_counter(self.conn, "record_seq")

    def _heard_prekeys_left(self, left: int) -> None:
        if prekeys.needs_refill(left):
            self._prekeys_low.set()

    async def _register_loop(self, update: prekeys.PrekeyUpdate) -> None:
        """Publish our record and prekeys; check the server's count every 15 minutes and
        at once when a reply says it runs low, refill and rotate. A bootstrap that cannot
        be reached is retried with backoff; the node works meanwhile."""
        delay = REGISTER_RETRY[0]
        first = True
        if self.client is None:  # DHT-only: the DHT loop publishes our record
            self.registered.set()
            return
        while not self._stop.is_set():
            self._prekeys_low.clear()
            try:
                if first:
                    fresh = prekeys.initial_prekeys(self.crypto, time.time()) \
                        if node_store.counter_value(self.conn, "record_seq") <= 1 \
                        else update
                    sent = self.record
                    try:
                        left = await self.client.register(sent, fresh.one_time_prekeys)
                    except DiscoveryRefused as exc:
                        if exc.reason != "stale_seq":
                            raise
                        sent = self.record = self._new_record(update)
                        left = await self.client.register(sent, ())
                    first = False
                    self.registered.set()
                    if self.record is not sent:  # new endpoints came while registering
                        await self.client.update(self.record)
                else:
                    left = await self.client.update()
                update = prekeys.maintain_prekeys(self.crypto, time.time(), server_left=left)
                if update.record_changed or update.one_time_prekeys:
                    record = self._new_record(update) if update.record_changed else None
                    await self.client.update(record, update.one_time_prekeys)
                delay = REGISTER_RETRY[0]
                wait = prekeys.PREKEY_CHECK_INTERVAL
            except MeshError as exc:
                log.warning("bootstrap %s: %s (retrying in %.0f s)", self.config.bootstrap,
                            exc, delay)
                wait, delay = delay, min(delay * 2, REGISTER_RETRY[1])
            wakers = [asyncio.ensure_future(e.wait()) for e in (self._stop, self._prekeys_low)]
            await asyncio.wait(wakers, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for waker in wakers:
                waker.cancel()

    async def _refresh_loop(self) -> None:
        """Peers we cannot reach may have moved: re-read their records now and then;
        and history past the retention period is retired."""
        while not self._stop.is_set():
            if self.config.retention_days is not None:
                retired = self.messenger.apply_retention(self.config.retention_days * 86400)
                if retired:
                    log.info("retention: %d old messages no longer kept", retired)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.refresh_interval)
            if not self._stop.is_set():
                await self.messenger.peers.refresh_unreachable(
                    set(self.runtime.links()), every=self.config.refresh_interval * 5)

    async def _disappear_loop(self) -> None:
        """Disappearing messages go within a second of their time, attachments too
        (the rule, with time as a parameter, is groups.chat_actions.expired)."""
        while not self._stop.is_set():
            removed = self.messenger.sweep_expired()
            if removed:
                log.info("disappearing messages: %d removed", removed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), DISAPPEAR_SWEEP)

    async def _dht_loop(self) -> None:
        """Join the DHT (through configured contacts and the bootstrap's DHT node) and
        keep our record published there; retried with backoff until it works."""
        assert self.dht is not None
        delay = REGISTER_RETRY[0]
        while not self._stop.is_set():
            contacts = parse_dht_contacts(list(self.config.dht_contacts))
            contacts += [c for c in self._saved_dht_contacts() if c not in contacts]
            if self.client is not None:
                with contextlib.suppress(MeshError):
                    if (boot := await bootstrap_dht_contact(self.client)) is not None:
                        contacts.append(boot)
            try:
                await self.dht.join(contacts)
            except MeshError as exc:
                log.info("DHT not joined yet (%s); retrying in %.0f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, REGISTER_RETRY[1])
                continue
            self.dht.publish_own(self.record, resign=self._resign)
            self.dht_joined = True
            break
        while not self._stop.is_set():  # remember a way back in that needs no bootstrap
            self._save_dht_contacts()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), DHT_CONTACTS_SAVE_INTERVAL)

    def _saved_dht_contacts(self) -> list[tuple[str, int]]:
        """DHT nodes we knew last time (plain JSON in the data dir, never pickle)."""
        path = Path(self.config.data_dir) / DHT_CONTACTS_FILE
        try:
            return parse_dht_contacts(json.loads(path.read_text())[:8])
        except (OSError, ValueError, MeshError):
            return []

    def _save_dht_contacts(self) -> None:
        assert self.dht is not None
        contacts = [format_dht_contact(h, p) for h, p in self.dht.contacts(limit=8)]
        if contacts:
            path = Path(self.config.data_dir) / DHT_CONTACTS_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(contacts))
            os.replace(tmp, path)

    async def _resign(self, record: Record) -> Record:
        """A fresh copy of our record (seq + 1, now): DHT records expire by age."""
        fresh = self._new_record(prekeys.maintain_prekeys(self.crypto, time.time(),
                                                          server_left=None))
        if self.client is not None:
            with contextlib.suppress(MeshError):
                await self.client.update(fresh)
        return fresh

    async def attach_stream(self, sock: socket.socket, *, initiator: bool) -> LinkConnection:
        """Run a link over an already connected stream socket (an RFCOMM socket, or a
        socket pair standing in for one): see groups/meetups.py."""
        return await self.meetups.attach_stream(sock, initiator=initiator)

    async def join_dht_contacts(self, contacts: tuple[str, ...]) -> None:
        """Contacts from an invite: a way into the DHT that needs no bootstrap."""
        if self.dht is not None and contacts:
            with contextlib.suppress(MeshError):
                await self.dht.join(parse_dht_contacts(list(contacts)))

    def _add_own_candidates(self, port: int | None) -> None:
        """What we know before asking anyone: configured endpoints, or the address the
        mesh listens on (each interface's address when it listens on all of them)."""
        if self.config.advertise:
            self.addresses.set_kind(Kind.CONFIGURED, self.config.advertise)
            return
        if port is None:
            return
        host = self.config.mesh_host
        if host in ("", "0.0.0.0", "::"):  # noqa: S104 - listening on every interface
            hosts = [a for a in lan_addresses() if host == "::" or ":" not in a]
            hosts = hosts or ["127.0.0.1"]
        else:
            hosts = [host]
        self.addresses.set_kind(Kind.LAN, [endpoint_url(h, port, MESH_PATH) for h in hosts])

    def _endpoints_changed(self, endpoints: tuple[str, ...]) -> None:
        """A candidate came or went (a relay reservation, a confirmed public address):
        sign a record with the new endpoints and publish it."""
        log.info("endpoints now: %s", ", ".join(endpoints))
        record = self._new_record(self._prekeys, endpoints)
        if self.client is not None and self.registered.is_set():
            task = asyncio.ensure_future(self._push_record(record))
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)

    async def _push_record(self, record: Record) -> None:
        assert self.client is not None
        try:
            await self.client.update(record)
        except MeshError as exc:  # the register loop publishes it at its next round
            log.info("could not publish new endpoints yet: %s", exc)

    def _new_record(self, update: prekeys.PrekeyUpdate,
                    endpoints: tuple[str, ...] | None = None) -> Record:
        self._prekeys = update
        self.record = prekeys.build_record(self.identity, update,
                                           endpoints=self.record.endpoints
                                           if endpoints is None else endpoints,
                                           seq=self._next_record_seq(), now=time.time())
        self.runtime.manager.set_record(self.record)
        self.directory.remember(self.record, time.time())
        if self.dht is not None and self.dht.running:
            self.dht.publish_own(self.record)
        return self.record

    def _invite_info(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        endpoints = self.record.endpoints
        dht: list[str] = []
        if self.dht is not None and self.dht.running and self.dht.address is not None:
            host, port = self.dht.address
            hosts = [host]
            if host in ("0.0.0.0", "::"):  # noqa: S104 - an unspecified bind
                # Bound everywhere: offer the hosts our published endpoints name (the
                # invitee may be on another machine), loopback only when there are none.
                hosts = _endpoint_hosts(endpoints) or ["127.0.0.1"]
            dht = [format_dht_contact(h, port) for h in hosts[:3]]
            dht += [format_dht_contact(h, p) for h, p in self.dht.contacts(limit=3)]
        return self.config.bootstrap, endpoints, tuple(dict.fromkeys(dht))

    # -- LAN discovery -------------------------------------------------------------------

    def _mesh_on_lan(self) -> bool:
        """Does the mesh listen where others could dial it? (Not on loopback; a host name
        is not resolved: which LAN address it means is not ours to guess.)"""
        try:
            return not ipaddress.ip_address(self.config.mesh_host).is_loopback
        except ValueError:
            return False

    async def _start_lan_discovery(self, port: int) -> None:
        """Announce on the LAN and dial known peers heard there (see mesh/lan.py)."""
        if not self.config.lan_discovery:
            return
        host = self.config.mesh_host
        wildcard = ipaddress.ip_address(host).is_unspecified
        self.lan = LanDiscovery(LanCore(self.identity), port, peers=self._lan_peers,
                                on_match=self._lan_match,
                                addresses=lan_ipv4_addresses if wildcard else lambda: (host,))
        await self.lan.start()

    def _start_port_mapping(self, port: int) -> None:
        """Ask the router to forward the mesh port (mesh/portmap.py); the mapped address
        is published once the bootstrap's dial-back got through it. Not with --advertise
        (the user set up reachability) nor without a bootstrap to confirm it."""
        if self.config.port_mapping and self.config.bootstrap and not self.config.advertise:
            self.portmap = PortMapper(port, confirm=self._confirm_mapping,
                                      on_mapped=self._mapped)
            self.portmap.start()

    async def _confirm_mapping(self, external_port: int) -> bool:
        try:
            return (await probe(self.config.bootstrap, external_port)).reachable
        except RemoteError as exc:
            log.info("port mapping not confirmed: %s", exc)
            return False

    def _mapped(self, url: str | None) -> None:
        self.addresses.set_kind(Kind.MAPPED, [url] if url else [], confirmed=True)

    def _lan_peers(self) -> dict[str, bytes]:
        peers = {}
        for user in self.messenger.peers.of_interest():
            record = self.directory.record(user)
            if record is not None:
                peers[user] = record.identity_key
        return peers

    def _lan_match(self, match: Match) -> None:
        hosts = (f"[{a}]" if ":" in a else a for a in match.addresses)
        urls = [f"ws://{h}:{match.port}{MESH_PATH}" for h in hosts]
        log.info("found %s on the LAN at %s", display_user_id(match.peer_id), ", ".join(urls))
        self.runtime.manager.set_hints(match.peer_id, urls)

    # -- mesh callbacks ------------------------------------------------------------------

    def _on_link(self, conn: LinkConnection) -> None:
        """A verified peer linked to us: keep its record, let it reach us 1:1."""
        if conn.peer is not None and conn.peer_id is not None:
            self.directory.remember(conn.peer, time.time())
            self.messenger.peer_connected(conn.peer_id)
            self.attachments.link_up(conn.peer_id)
            self.presence.link_up(conn.peer_id)

    def _on_other_frame(self, peer: str, frame: wire.Frame) -> None:
        if isinstance(frame, wire.Signal):
            self.presence.on_frame(peer, frame)
        else:
            self.attachments.on_frame(peer, frame)

    def _on_mesh_event(self, event: Event) -> None:
        if isinstance(event, Acked):
            self.messenger.acked(event.topic, event.msg_id, event.peer)
        elif isinstance(event, Rejected):
            log.info("refused message %s from %s: %s", event.msg_id.hex()[:12],
                     event.from_peer, event.reason)


async def _no_dial(url: str, *args: Any, **kwargs: Any) -> LinkConnection:
    """The dialer of a node without a WebSocket mesh (mesh_port None)."""
    raise DialError(f"not dialling {url}: this node has no WebSocket mesh")


class RuntimePort:
    """The messenger's view of the mesh (groups.messenger.MeshPort) over MeshRuntime."""

    def __init__(self, runtime: MeshRuntime) -> None:
        self.runtime = runtime
        self._joined: set[bytes] = set()

    def publish(self, message: Message) -> None:
        self.runtime.publish_committed(message)

    def set_topic(self, topic: bytes, members: dict[str, list[str]]) -> None:
        if topic in self._joined:
            self.runtime.update_members(topic, members)
        else:
            self._joined.add(topic)
            self.runtime.join(topic, members)

    def leave_topic(self, topic: bytes) -> None:
        if topic in self._joined:
            self._joined.discard(topic)
            self.runtime.leave(topic)

    def resync(self, topic: bytes) -> None:
        if topic in self._joined:
            self.runtime.resync(topic)


def _endpoint_hosts(endpoints: tuple[str, ...]) -> list[str]:
    """The hosts of our own listening endpoints, in published order (relay addresses name
    the relay's host, not ours, so they are left out)."""
    hosts = [urlsplit(url).hostname for url in endpoints if not is_relay_address(url)]
    return list(dict.fromkeys(h for h in hosts if h))
