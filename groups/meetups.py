"""Bluetooth meetups for one node: who may link, what may move, what the UI shows.

mesh.bluetooth runs links over RFCOMM (or any stream socket) in the node's one link
registry; this module decides, with what the groups layer knows, what a nearby
device gets:

- **Admission.** Right after the handshake, a peer met over Bluetooth is admitted only
  if we share a group, it is a contact (or we have chatted 1:1), we owe it a pairwise
  message (a join request, a welcome, a sender key), or we hold an open invite of ours
  (someone may come to redeem it). Anyone else is closed with "stranger" before a
  single frame beyond the handshake: no topics, no direct conversation, nothing
  stored. An admitted peer that stops qualifying (an invite expired unredeemed) is
  closed after ADMIT_GRACE.
- **Attachments** over Bluetooth can be limited by size (``attachments_limit``: None
  moves everything, 0 nothing); downloads resume at the next meeting.
- **What the UI shows**: nearby Parley peers and, per group, when it last synced
  over Bluetooth (a frame of the group's topic arrived over a Bluetooth link).

Everything else (gossip, anti-entropy, receipts, store-carry-forward) is the ordinary
mesh: a Bluetooth link is a link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groups import history
from groups.errors import GroupsError
from groups.group import OpKind
from groups.messages import direct_topic
from mesh import wire
from mesh.bluetooth import (
    SCAN_INTERVAL,
    STREAM_KEEPALIVE,
    Availability,
    BluetoothService,
    PyBluezRadio,
    Radio,
    StreamLink,
    open_stream_link,
    probe,
)
from mesh.errors import BluetoothUnavailable
from mesh.transport import LinkConnection

if TYPE_CHECKING:
    from groups.directory import Directory
    from groups.membership import Membership
    from mesh.connections import ConnectionManager

__all__ = ["ADMIT_GRACE", "NEARBY_WINDOW", "SETTINGS_FILE", "Meetups",
           "format_attachment_limit", "parse_attachment_limit"]

log = logging.getLogger("parley.bluetooth")

SETTINGS_FILE = "bluetooth.json"
ADMIT_GRACE = 60.0        # an admitted peer that no longer qualifies keeps its link this long
CHECK_INTERVAL = 10.0
NEARBY_WINDOW = 15 * 60.0  # the UI lists peers seen this recently
CLOSE_TIMEOUT = 7.0
MiB = 1024 * 1024


def parse_attachment_limit(text: str) -> int | None:
    """``all`` -> None (no limit), ``none`` -> 0, ``<n>`` -> n MiB in bytes."""
    value = text.strip().lower()
    if value == "all":
        return None
    if value == "none":
        return 0
    try:
        mib = float(value)
    except ValueError:
        raise ValueError("expected all, none or a size in MiB") from None
    if not 0 <= mib <= 1024:
        raise ValueError("a size in MiB between 0 and 1024")
    return int(mib * MiB)


def format_attachment_limit(limit: int | None) -> str | int:
    return "all" if limit is None else ("none" if limit == 0 else limit)


class Meetups:
    """One node's Bluetooth side: Bluetooth links join ``manager``'s registry; who is
    admitted is asked of the database (``conn``), the ``membership`` logs and the
    ``directory`` of contacts. ``start(enabled)`` once the runtime runs; ``close()``
    before the runtime closes."""

    def __init__(self, *, manager: ConnectionManager, conn: Any, me: str,
                 membership: Membership, directory: Directory, data_dir: Path,
                 attachments_limit: int | None = None,
                 radio_factory: Callable[[], Radio] = PyBluezRadio,
                 scan_interval: float = SCAN_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.manager = manager
        self.conn = conn
        self.me = me
        self.groups = membership
        self.directory = directory
        self.path = Path(data_dir) / SETTINGS_FILE
        self.attachments_limit: int | None = None
        self.radio_factory = radio_factory
        self.scan_interval = scan_interval
        self.clock = clock
        self.availability = Availability(False, "unknown", "not probed yet")
        self.enabled = False
        self.service: BluetoothService | None = None
        self.refused = 0
        self._links: set[StreamLink] = set()
        self._ok_at: dict[StreamLink, float] = {}
        self._seen: dict[str, tuple[float, str | None]] = {}   # peer -> (when, address)
        self._last_sync: dict[str, int] = {}                   # group hex -> unix ms
        self._check: asyncio.Task[None] | None = None
        self._toggle = asyncio.Lock()
        self._load()
        if attachments_limit is not None:  # given at start (--bluetooth-attachments)
            self.attachments_limit = attachments_limit

    # -- life cycle ------------------------------------------------------------------

    async def start(self, enabled: bool) -> None:
        """Probe the radio and, if ``enabled`` (or switched on in the settings before),
        start advertising and scanning. Never raises for a missing extra or adapter:
        the node runs on, and says why in one log line."""
        self._check = asyncio.get_running_loop().create_task(self._check_loop())
        self.availability = await asyncio.to_thread(probe)
        if enabled or self.enabled:
            await self.set_enabled(True)

    async def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._check
        await self._stop_service()
        links = list(self._links)
        for link in links:
            link.close("shutdown")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.gather(*(link.wait_closed() for link in links))
        self._save()

    async def set_enabled(self, enabled: bool) -> None:
        """The settings switch: start or stop advertising and scanning, and remember."""
        async with self._toggle:
            self.enabled = enabled
            self._save()
            if not enabled:
                await self._stop_service()
                return
            if self.service is not None:
                return
            try:
                service = BluetoothService(self.radio_factory(), self._on_socket,
                                           scan_interval=self.scan_interval)
                await service.start()
            except BluetoothUnavailable as exc:
                self.availability = Availability(False, exc.reason, str(exc))
                log.warning("Bluetooth meetups are off: %s; the node runs without them", exc)
                return
            self.availability = Availability(True)
            self.service = service

    def set_attachments_limit(self, limit: int | None) -> None:
        """The settings choice: files up to ``limit`` bytes over Bluetooth (None: all)."""
        if limit is not None and limit < 0:
            raise ValueError("a limit is 0 or more bytes")
        self.attachments_limit = limit
        self._save()

    async def _stop_service(self) -> None:
        service, self.service = self.service, None
        if service is not None:
            await service.close()

    # -- links -----------------------------------------------------------------------

    async def attach_stream(self, sock: socket.socket, *, initiator: bool,
                            address: str | None = None) -> LinkConnection:
        """Run a link over a connected stream socket (an RFCOMM socket, or one end of
        a socket pair standing in for it): the same handshake, frames, gossip and
        anti-entropy as over WebSockets, under the admission rules above. Returns the
        connection at once; ``await conn.wait_established()`` for the handshake."""
        return (await self._open(sock, initiator, address)).conn

    async def _open(self, sock: socket.socket, initiator: bool, address: str | None
                    ) -> StreamLink:
        link = await open_stream_link(
            sock, lambda t: self.manager.adopt(t, initiator=initiator,
                                                       keepalive=STREAM_KEEPALIVE),
            admit=self._admit, observe=self._observe, address=address)
        self._links.add(link)
        link.task.add_done_callback(lambda _task: self._link_over(link))
        return link

    async def _on_socket(self, sock: socket.socket, initiator: bool, address: str) -> None:
        """BluetoothService hands over each connected RFCOMM socket."""
        link = await self._open(sock, initiator, address)
        try:
            await link.wait_closed()
        except asyncio.CancelledError:
            link.close("shutdown")
            raise

    def _link_of(self, conn: LinkConnection) -> StreamLink | None:
        return next((link for link in self._links if link.conn is conn), None)

    def _admit(self, conn: LinkConnection) -> str | None:
        peer = conn.peer_id or ""
        link = self._link_of(conn)
        now = self.clock()
        self._seen[peer] = (now, link.address if link else None)
        if not self.wanted(peer, now):
            self.refused += 1
            log.info("Bluetooth peer %s is a stranger: closed after the handshake", peer)
            return "stranger"
        if link is not None:
            self._ok_at[link] = now
        return None

    def _observe(self, conn: LinkConnection, frame: wire.Frame) -> None:
        topic = getattr(frame, "topic", None)
        peer = conn.peer_id
        if not isinstance(topic, bytes) or peer is None:
            return
        groups = self.groups
        if groups.is_member(topic, self.me) and groups.is_member(topic, peer):
            self._last_sync[topic.hex()] = int(self.clock() * 1000)

    def _link_over(self, link: StreamLink) -> None:
        self._links.discard(link)
        self._ok_at.pop(link, None)
        peer = link.conn.peer_id
        if peer is not None and link.conn.close_reason != "stranger":
            self._seen[peer] = (self.clock(), link.address)
        self._save()

    def is_bluetooth(self, peer: str) -> bool:
        """Is our (one) link to ``peer`` a Bluetooth (stream) link?"""
        current = self.manager.link_for(peer)
        return current is not None and any(link.conn is current for link in self._links)

    # -- policy ----------------------------------------------------------------------

    def wanted(self, peer: str, now: float) -> bool:
        """May ``peer`` have more than a handshake with us over Bluetooth?"""
        if not peer or peer == self.me:
            return False
        groups = self.groups
        conn = self.conn
        for conv in history.conversations(conn):
            if conv.kind == "group" and conv.left_at is None \
                    and groups.is_member(conv.topic, self.me) \
                    and groups.is_member(conv.topic, peer):
                return True
        if self.directory.is_contact(peer):
            return True
        direct = history.conversation(conn, direct_topic(self.me, peer))
        if direct is not None and direct.visible and direct.left_at is None:
            return True
        if history.owes_pairwise(conn, peer):
            return True
        return self._open_invites(now)

    def _open_invites(self, now: float) -> bool:
        """Do we hold an unexpired, unredeemed invite we made? Its bearer is someone
        we have not met yet."""
        groups = self.groups
        for conv in history.conversations(self.conn):
            if conv.kind != "group" or conv.left_at is not None:
                continue
            try:
                group = groups.log_of(conv.topic)
            except GroupsError:
                continue
            invites = group.state.invites
            if not invites:
                continue
            for op in group.chain():
                invite = invites.get(op.secret)
                if op.kind is OpKind.INVITE and op.author == self.me \
                        and invite is not None and invite.expires > now:
                    return True
        return False

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                self.recheck(self.clock())
            except Exception:  # a bug here must not stop the checks for good
                log.exception("Bluetooth admission check failed")

    def recheck(self, now: float) -> None:
        """Close admitted links whose peer has not qualified for ADMIT_GRACE seconds."""
        for link, ok_at in list(self._ok_at.items()):
            peer = link.conn.peer_id or ""
            if link.conn.closed:
                continue
            if self.wanted(peer, now):
                self._ok_at[link] = now
            elif now - ok_at >= ADMIT_GRACE:
                link.close("stranger")

    def may_move(self, peer: str, size: int) -> bool:
        """May an attachment of ``size`` bytes move over our link to ``peer``?"""
        if self.attachments_limit is None or not self.is_bluetooth(peer):
            return True
        return size <= self.attachments_limit

    # -- what the API shows ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()
        service = self.service
        linked = {link.conn.peer_id for link in self._links
                  if link.conn.established and link.conn.close_reason is None}
        by_address: dict[str, str] = {}
        nearby: list[dict[str, Any]] = []
        for peer, (seen, address) in self._seen.items():
            if peer in linked:
                seen = now
            if now - seen > NEARBY_WINDOW:
                continue
            if address:
                by_address[address] = peer
            nearby.append({"id": peer, "address": address, "last_seen": int(seen * 1000),
                           "linked": peer in linked,
                           "member": self._shares_group(peer)})
        if service is not None:
            for address, seen in service.nearby.items():
                if address not in by_address and now - seen <= NEARBY_WINDOW:
                    nearby.append({"id": None, "address": address,
                                   "last_seen": int(seen * 1000), "linked": False,
                                   "member": False})
        nearby.sort(key=lambda entry: -entry["last_seen"])
        groups = {gid: at for gid, at in sorted(self._last_sync.items())
                  if self.groups.is_member(bytes.fromhex(gid), self.me)}
        return {"available": self.availability.available,
                "enabled": self.enabled,
                "running": service is not None and service.running,
                "reason": None if service is not None else self.availability.reason,
                "message": None if service is not None else (
                    self.availability.message or None),
                "address": service.address if service is not None else None,
                "attachments": format_attachment_limit(self.attachments_limit),
                "nearby": nearby,
                "groups": groups}

    def summary(self) -> dict[str, Any]:
        """The short form for /me: is it possible, switched on, running."""
        return {"available": self.availability.available, "enabled": self.enabled,
                "running": self.service is not None and self.service.running}

    def _shares_group(self, peer: str) -> bool:
        groups = self.groups
        return any(conv.kind == "group" and conv.left_at is None
                   and groups.is_member(conv.topic, self.me) and groups.is_member(conv.topic, peer)
                   for conv in history.conversations(self.conn))

    # -- settings file -----------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(data, dict):
            return
        self.enabled = data.get("enabled") is True
        limit = data.get("attachments")
        self.attachments_limit = limit if type(limit) is int and limit >= 0 else None
        last = data.get("last_sync")
        if isinstance(last, dict):
            self._last_sync = {k: v for k, v in last.items()
                               if isinstance(k, str) and len(k) == 32 and type(v) is int}

    def _save(self) -> None:
        data = {"enabled": self.enabled, "attachments": self.attachments_limit,
                "last_sync": self._last_sync}
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save %s: %s", self.path, exc)
