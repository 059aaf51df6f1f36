"""The composition root: one user's node, wired from its parts.

    node = await Node.start(NodeConfig(data_dir=Path("data"), bootstrap="http://..."))
    print(node.ui_url)
    ...
    await node.stop()

Everything a node has is built here and nowhere else: the data directory and identity,
the SQLite store and crypto, discovery, the mesh (listener, connection manager, gossip
runtime), the messenger, and the local UI server. Nothing is global; two nodes can live
in one process (the demo and the tests do that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groups import history, prekeys
from groups import store as node_store
from groups.attachments import AttachmentService
from groups.crypto import Crypto, safety_number, safety_number_qr
from groups.directory import Directory, NoDiscovery
from groups.errors import NotFound, PermissionDenied
from groups.invites import qr_svg
from groups.meetups import Meetups
from groups.messages import FileRef, direct_topic
from groups.messenger import Messenger
from mesh.dht import DhtNode
from mesh.dht_records import format_dht_contact, parse_dht_contacts
from mesh.discovery import DiscoveryClient
from mesh.errors import DiscoveryRefused, MeshError
from mesh.gossip_state import Acked, Event, Message, Rejected
from mesh.identity import KeyPair, Record, display_user_id, load_or_create_identity
from mesh.lookup import Discovery, DiscoveryMode, bootstrap_dht_contact
from mesh.runtime import MeshRuntime
from mesh.websocket import MESH_PATH, DialError, LinkConnection
from webapp.api import api_routes
from webapp.events import EventHub
from webapp.server import UiServer, start_ui_server

__all__ = ["Node", "NodeConfig"]

log = logging.getLogger("parley.node")

MAINTENANCE_INTERVAL = 3600.0
DHT_CONTACTS_FILE = "dht-contacts.json"
DHT_CONTACTS_SAVE_INTERVAL = 60.0
REGISTER_RETRY = (2.0, 120.0)


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    bootstrap: str = "http://127.0.0.1:8470"
    ui_port: int = 0
    mesh_port: int | None = 0  # None: no WebSocket mesh (no listener, endpoints or dials)
    mesh_host: str = "127.0.0.1"
    advertise: tuple[str, ...] = ()   # endpoints to publish; default ws://host:port/mesh
    refresh_interval: float = 30.0    # how often unreachable peers' records are re-read
    retention_days: float | None = None  # keep group history for others this long (None: always)
    dht_port: int | None = 0          # UDP port of our DHT node; None: no DHT (--no-dht)
    discovery: str = "auto"           # auto (bootstrap, then DHT) | dht | bootstrap
    dht_contacts: tuple[str, ...] = ()  # "ip:port" of DHT nodes to join through
    bluetooth: bool = False           # advertise, scan and link over Bluetooth RFCOMM
    bluetooth_attachments: int | None = None  # max file bytes over Bluetooth; None: all


class Node:
    def __init__(self, config: NodeConfig, identity: KeyPair, conn: Any, crypto: Crypto,
                 dht: DhtNode | None) -> None:
        self.config = config
        self.identity = identity
        self.user_id = identity.user_id
        self.conn = conn
        self.crypto = crypto
        self.hub = EventHub()
        self.client = DiscoveryClient(config.bootstrap, identity) if config.bootstrap else None
        self.dht = dht
        mode = DiscoveryMode(config.discovery) if dht is not None else DiscoveryMode.BOOTSTRAP
        self.discovery = Discovery(bootstrap=self.client, dht=dht, mode=mode) \
            if self.client is not None or dht is not None else NoDiscovery()
        self.directory = Directory(conn, crypto, self.discovery)
        self.record: Record | None = None
        self.registered = asyncio.Event()
        self.dht_joined = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.runtime: MeshRuntime
        self.messenger: Messenger
        self.attachments: AttachmentService
        self.meetups: Meetups
        self.ui: UiServer

    # -- life cycle ------------------------------------------------------------------------

    @classmethod
    async def start(cls, config: NodeConfig) -> Node:
        data_dir = Path(config.data_dir)
        identity = load_or_create_identity(data_dir)
        conn = node_store.open_store(data_dir / "node.db")
        now = time.time()
        dht = None
        if config.dht_port is not None:
            dht = DhtNode()
            await dht.listen(config.dht_port, config.mesh_host)
        node = cls(config, identity, conn, Crypto(conn, identity, now=now), dht)
        update = prekeys.maintain_prekeys(node.crypto, now, server_left=None)
        provisional = prekeys.build_record(identity, update, endpoints=(),
                                           seq=node._record_seq(bump=False) or 1, now=now)
        node.runtime = MeshRuntime(
            identity, provisional, history.Mailbox(conn),
            commit=lambda message: node.messenger.commit(message),
            validate=lambda message: node.messenger.validate(message),
            on_event=node._on_mesh_event, on_link=node._on_link,
            on_other_frame=lambda peer, frame: node.attachments.on_frame(peer, frame),
            manager_options=None if config.mesh_port is not None else {"dialer": _no_dial})
        port = node.runtime.start(config.mesh_port, config.mesh_host)
        endpoints = config.advertise or (
            () if port is None else (f"ws://{config.mesh_host}:{port}{MESH_PATH}",))
        node.record = prekeys.build_record(identity, update, endpoints=endpoints,
                                           seq=node._record_seq(bump=True), now=now)
        node.runtime.manager.set_record(node.record)
        node.directory.remember(node.record, now)
        node.messenger = Messenger(identity, conn, node.crypto, node.directory,
                                   _MeshPort(node.runtime), node.hub,
                                   invite_info=node._invite_info)
        node.attachments = AttachmentService(node.messenger, data_dir / "files",
                                             node.runtime.links)
        node.messenger.attachments = node.attachments
        node.messenger.load()
        await node.attachments.start()
        node.meetups = Meetups(runtime=node.runtime, messenger=node.messenger, data_dir=data_dir,
                               attachments_limit=config.bluetooth_attachments)
        node.attachments.may_move = node.meetups.may_move
        await node.meetups.start(config.bluetooth)
        node.ui = start_ui_server(data_dir, api_routes=api_routes(), node=node, hub=node.hub,
                                  port=config.ui_port)
        node._tasks = [asyncio.ensure_future(node._register_loop(update)),
                       asyncio.ensure_future(node.messenger.run_outbox(node._stop)),
                       asyncio.ensure_future(node._refresh_loop())]
        if dht is not None:
            node._tasks.append(asyncio.ensure_future(node._dht_loop()))
        log.info("node %s up: mesh %s, UI port %d", display_user_id(node.user_id),
                 ", ".join(endpoints), node.ui.port)
        return node

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.meetups.close()
        await self.ui.stop()
        await self.runtime.close()
        if self.dht is not None:
            if self.dht_joined:
                self._save_dht_contacts()
            await self.dht.stop()
        await self.attachments.close()
        self.conn.close()

    @property
    def ui_url(self) -> str:
        return self.ui.url

    def _record_seq(self, *, bump: bool) -> int:
        """The seq of our record: persisted, and raised for every new record."""
        if not bump:
            row = self.conn.execute("SELECT value FROM crypto_counters WHERE name = "
                                    "'record_seq'").fetchone()
            return row[0] if row else 0
        with node_store.atomic(self.conn):
            return node_store.next_counter(self.conn, "record_seq")

    async def _register_loop(self, update: prekeys.PrekeyUpdate) -> None:
        """Publish our record and prekeys; refill and rotate them every hour. A bootstrap
        that cannot be reached is retried with backoff; the node works meanwhile."""
        delay = REGISTER_RETRY[0]
        first = True
        if self.client is None:  # DHT-only: the DHT loop publishes our record
            self.registered.set()
            return
        while not self._stop.is_set():
            try:
                assert self.record is not None
                if first:
                    fresh = prekeys.initial_prekeys(self.crypto, time.time()) \
                        if self._record_seq(bump=False) <= 1 else update
                    try:
                        left = await self.client.register(self.record,
                                                             fresh.one_time_prekeys)
                    except DiscoveryRefused as exc:
                        if exc.reason != "stale_seq":
                            raise
                        self.record = self._new_record(update)
                        left = await self.client.register(self.record, ())
                    first = False
                    self.registered.set()
                else:
                    left = await self.client.update()
                update = prekeys.maintain_prekeys(self.crypto, time.time(), server_left=left)
                if update.record_changed or update.one_time_prekeys:
                    record = self._new_record(update) if update.record_changed else None
                    await self.client.update(record, update.one_time_prekeys)
                delay = REGISTER_RETRY[0]
                wait = MAINTENANCE_INTERVAL
            except MeshError as exc:
                log.warning("bootstrap %s: %s (retrying in %.0f s)", self.config.bootstrap,
                            exc, delay)
                wait, delay = delay, min(delay * 2, REGISTER_RETRY[1])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

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
                await self.messenger.refresh_unreachable(
                    set(self.runtime.links()), every=self.config.refresh_interval * 5)

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
            assert self.record is not None
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

    def _new_record(self, update: prekeys.PrekeyUpdate) -> Record:
        assert self.record is not None
        self.record = prekeys.build_record(self.identity, update,
                                           endpoints=self.record.endpoints,
                                           seq=self._record_seq(bump=True), now=time.time())
        self.runtime.manager.set_record(self.record)
        self.directory.remember(self.record, time.time())
        if self.dht is not None and self.dht.running:
            self.dht.publish_own(self.record)
        return self.record

    def _invite_info(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        endpoints = self.record.endpoints if self.record else ()
        dht: list[str] = []
        if self.dht is not None and self.dht.running and self.dht.address is not None:
            host, port = self.dht.address
            if host in ("0.0.0.0", "::"):  # noqa: S104 - an unspecified bind: use loopback
                host = self.config.mesh_host if self.config.mesh_host not in (
                    "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
            dht = [format_dht_contact(host, port)]
            dht += [format_dht_contact(h, p) for h, p in self.dht.contacts(limit=3)]
        return self.config.bootstrap, endpoints, tuple(dict.fromkeys(dht))

    # -- mesh callbacks ------------------------------------------------------------------

    def _on_link(self, conn: LinkConnection) -> None:
        """A verified peer linked to us: keep its record, let it reach us 1:1."""
        if conn.peer is not None and conn.peer_id is not None:
            self.directory.remember(conn.peer, time.time())
            self.messenger.peer_connected(conn.peer_id)
            self.attachments.link_up(conn.peer_id)

    def _on_mesh_event(self, event: Event) -> None:
        if isinstance(event, Acked):
            self.messenger.acked(event.topic, event.msg_id, event.peer)
        elif isinstance(event, Rejected):
            log.info("refused message %s from %s: %s", event.msg_id.hex()[:12],
                     event.from_peer, event.reason)

    # -- what the API asks -------------------------------------------------------------

    def me_info(self) -> dict[str, Any]:
        return {"id": self.user_id, "display_id": display_user_id(self.user_id),
                "identity_key": self.identity.public.hex(),
                "safety_qr": qr_svg(f"parley:user/{self.user_id}/{self.identity.public.hex()}"),
                "endpoints": list(self.record.endpoints if self.record else ()),
                "bootstrap": self.config.bootstrap,
                "registered": self.client is not None and self.registered.is_set(),
                "storage_bytes": self.storage_bytes(),
                "bluetooth": self.meetups.summary(),
                "dht": None if self.dht is None else {
                    "joined": self.dht_joined,
                    "peers": self.dht.routing_table_size() if self.dht.running else 0}}

    def contacts(self) -> list[dict[str, Any]]:
        return [{"id": uid, "display_id": display_user_id(uid),
                 "conversation": direct_topic(self.user_id, uid).hex()}
                for uid in self.directory.contacts()]

    async def add_contact(self, user_id: str) -> dict[str, Any]:
        if user_id == self.user_id:
            raise NotFound("that is your own id")
        record = await self.directory.refresh(user_id, time.time())
        self.directory.remember(record, time.time(), contact=True)
        await self.directory.ensure_session(user_id, time.time())
        with node_store.atomic(self.conn):
            topic = self.messenger.open_direct(user_id, visible=True)
        self.messenger.announce_direct(topic, user_id)
        return {"id": user_id, "display_id": display_user_id(user_id),
                "conversation": topic.hex()}

    def chat_topic(self, user_id: str) -> bytes:
        topic = direct_topic(self.user_id, user_id)
        conv = history.conversation(self.conn, topic)
        if conv is None:
            raise NotFound("no chat with this user; add them as a contact first")
        return topic

    async def open_chat(self, user_id: str) -> bytes:
        """The 1:1 topic with ``user_id``, adding the contact first if needed."""
        if history.conversation(self.conn, direct_topic(self.user_id, user_id)) is None \
                or not self.crypto.has_session(user_id):
            await self.add_contact(user_id)
        return direct_topic(self.user_id, user_id)

    async def send_direct(self, user_id: str, text: str, file: FileRef | None = None) -> bytes:
        return self.messenger.send_text(await self.open_chat(user_id), text, file)

    def group_list(self) -> list[dict[str, Any]]:
        out = []
        for conv in history.conversations(self.conn):
            if not conv.visible or conv.left_at is not None:
                continue
            rows = history.chat_messages(self.conn, conv.topic, limit=1)
            unread = self.conn.execute(
                "SELECT COUNT(*) FROM chat_messages WHERE topic = ? AND seen = 0 AND sender != ?",
                (conv.topic, self.user_id)).fetchone()[0]
            out.append({"id": conv.topic.hex(), "kind": conv.kind, "name": conv.name,
                        "peer": conv.peer, "unread": unread,
                        "last_message": self.messenger.describe(rows[-1]) if rows else None})
        return out

    def safety(self, user_id: str) -> dict[str, Any]:
        key = self.crypto.identity_key_of(user_id)
        if key is None:
            record = self.directory.record(user_id)
            if record is None:
                raise NotFound("no key known for this user yet")
            key = record.identity_key
        number = safety_number(self.identity.public, key)
        return {"id": user_id, "safety_number": number, "identity_key": key.hex(),
                "verified": self.directory.is_verified(user_id, key),
                "qr_svg": qr_svg(safety_number_qr(self.identity.public, key))}

    def set_verified(self, user_id: str, identity_key: bytes, verified: bool) -> dict[str, Any]:
        """Our user compared the safety number in person (for exactly this key)."""
        current = self.safety(user_id)
        if bytes.fromhex(current["identity_key"]) != identity_key:
            raise PermissionDenied("the key changed since you compared it; compare again",
                                   "key_mismatch")
        self.directory.set_verified(user_id, identity_key, verified)
        return self.safety(user_id)

    def storage_bytes(self) -> int:
        """What this node keeps on disk (database, its WAL, attachment chunks)."""
        total = 0
        for path in Path(self.config.data_dir).rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file():
                    total += path.stat().st_size
        return total



async def _no_dial(url: str, *args: Any, **kwargs: Any) -> LinkConnection:
    """The dialer of a node without a WebSocket mesh (mesh_port None)."""
    raise DialError(f"not dialling {url}: this node has no WebSocket mesh")


class _MeshPort:
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
