"""BluetoothService's own logic (advertise, scan, who connects, accept, nearby) over a
fake radio: socket pairs for RFCOMM connections, a dict for the air. PyBluez and the
radio itself are not exercised here; these tests never claim to test radio."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections import deque
from typing import Any

from tornado.httpclient import AsyncHTTPClient

from mesh.bluetooth import BluetoothService, Sighting, StreamLink, open_stream_link
from mesh.transport import LinkConnection, Transport
from tests.integration.bluetooth.conftest import until
from tests.unit.mesh.test_link_helpers import make_node
from webapp.app import App

# Seconds between scans: long next to a loopback connect, so that only the lower
# address connects (the higher one waits for a second sighting).
SCAN = 0.3


class FakeListener:
    """A listening 'RFCOMM' socket: readable when a connection waits (a doorbell)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._bell_r, self._bell_w = socket.socketpair()
        self._bell_r.setblocking(False)
        self.waiting: deque[tuple[socket.socket, str]] = deque()

    def fileno(self) -> int:
        return self._bell_r.fileno()

    def accept(self) -> tuple[socket.socket, str]:
        with contextlib.suppress(BlockingIOError):
            self._bell_r.recv(1)
        if not self.waiting:
            raise BlockingIOError
        return self.waiting.popleft()

    def ring(self, sock: socket.socket, caller: str) -> None:
        self.waiting.append((sock, caller))
        self._bell_w.send(b"!")

    def close(self) -> None:
        self._bell_r.close()
        self._bell_w.close()


class Air:
    """Which fake radios advertise Parley, who sees whom, who connected to whom.
    Scans wait until ``expect`` radios advertise, so that every device's first scan
    sees the others (as when devices meet that were all switched on before)."""

    def __init__(self, expect: int = 2) -> None:
        self.expect = expect
        self.everyone = threading.Event()
        self.radios: dict[str, FakeRadio] = {}
        self.hidden: set[tuple[str, str]] = set()   # (seer, seen) pairs that fail
        self.connects: list[tuple[str, str]] = []


class FakeRadio:
    def __init__(self, air: Air, address: str) -> None:
        self.air, self.address = air, address
        self.listener: FakeListener | None = None

    def open(self) -> FakeListener:
        self.listener = FakeListener(self.address)
        self.air.radios[self.address] = self
        if len(self.air.radios) >= self.air.expect:
            self.air.everyone.set()
        return self.listener

    def scan(self) -> list[Sighting]:
        self.air.everyone.wait(5)
        return [Sighting(address, 1) for address in sorted(self.air.radios)
                if address != self.address and (self.address, address) not in self.air.hidden]

    def connect(self, address: str, channel: int) -> socket.socket:
        mine, theirs = socket.socketpair()
        target = self.air.radios[address].listener
        assert target is not None
        self.air.connects.append((self.address, address))
        target.ring(theirs, self.address)
        return mine

    def close(self) -> None:
        self.air.radios.pop(self.address, None)
        if self.listener is not None:
            self.listener.close()


class Device:
    """A BluetoothService whose sockets run bare links (no node behind them)."""

    def __init__(self, air: Air, address: str) -> None:
        self.me = make_node()
        self.links: list[StreamLink] = []
        self.service = BluetoothService(FakeRadio(air, address), self.on_socket,
                                        scan_interval=SCAN)

    def adopt(self, transport: Transport, initiator: bool) -> LinkConnection:
        conn = LinkConnection(self.me.identity, self.me.record, initiator=initiator)
        conn.attach(transport)
        return conn

    async def on_socket(self, sock: socket.socket, initiator: bool, address: str) -> None:
        link = await open_stream_link(sock, lambda t: self.adopt(t, initiator), address=address)
        self.links.append(link)
        try:
            await link.wait_closed()
        except asyncio.CancelledError:
            link.close("shutdown")
            await link.wait_closed()
            raise

    def peers(self) -> set[str]:
        return {link.conn.peer_id or "" for link in self.links if link.conn.established}


async def test_the_lower_address_connects_and_both_see_each_other() -> None:
    air = Air()
    low, high = Device(air, "00:1A:7D:DA:71:01"), Device(air, "00:1A:7D:DA:71:02")
    await low.service.start()
    await high.service.start()
    try:
        await until(lambda: low.peers() == {high.me.user_id}
                    and high.peers() == {low.me.user_id}, within=10, what="linked")
        await asyncio.sleep(3 * SCAN)  # more scans: nobody connects again
        assert air.connects == [("00:1A:7D:DA:71:01", "00:1A:7D:DA:71:02")]
        assert [link.address for link in high.links] == ["00:1A:7D:DA:71:01"]
        assert set(low.service.nearby) == {"00:1A:7D:DA:71:02"}
        assert set(high.service.active) == {"00:1A:7D:DA:71:01"}
    finally:
        await low.service.close()
        await high.service.close()
    assert all(link.conn.closed for link in low.links + high.links)


async def test_the_higher_address_connects_when_the_lower_cannot_see_it() -> None:
    air = Air()
    low, high = Device(air, "00:1A:7D:DA:71:01"), Device(air, "00:1A:7D:DA:71:02")
    air.hidden.add(("00:1A:7D:DA:71:01", "00:1A:7D:DA:71:02"))
    await low.service.start()
    await high.service.start()
    try:
        await until(lambda: low.peers() == {high.me.user_id}, within=10, what="linked")
        assert air.connects == [("00:1A:7D:DA:71:02", "00:1A:7D:DA:71:01")]
        assert high.service.scans >= 2  # it waited for a second sighting
    finally:
        await low.service.close()
        await high.service.close()


async def api(app: App, method: str, body: Any = None) -> tuple[int, Any]:
    origin, token = app.ui_url.split("/#token=")
    reply = await AsyncHTTPClient().fetch(
        origin + "/api/v1/bluetooth", method=method, raise_error=False,
        body=None if body is None else json.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return reply.code, json.loads(reply.body)


async def test_switched_on_in_settings_two_nodes_meet_and_a_join_completes(apps) -> None:
    air = Air()
    app_a, app_b = await apps("a"), await apps("b")
    a, b = app_a.node, app_b.node
    for node, address in ((a, "00:1A:7D:DA:71:0A"), (b, "00:1A:7D:DA:71:0B")):
        node.meetups.radio_factory = lambda address=address: FakeRadio(air, address)
        node.meetups.scan_interval = SCAN
    group = a.messenger.groups.create("radio club")
    join = asyncio.create_task(b.messenger.groups.join(a.messenger.groups.invite(group),
                                                       wait=20))
    assert (await api(app_a, "POST", {"enabled": "yes"}))[0] == 400
    assert (await api(app_a, "POST", {"attachments": "some"}))[0] == 400
    assert (await api(app_a, "POST", {"colour": "blue"}))[0] == 400
    for app in (app_a, app_b):
        code, shown = await api(app, "POST", {"enabled": True, "attachments": 5})
        assert code == 200 and shown["running"] and shown["attachments"] == 5 * 1024 * 1024
    assert await join == (group, True)
    assert air.connects == [("00:1A:7D:DA:71:0A", "00:1A:7D:DA:71:0B")]
    await until(lambda: group.hex() in a.meetups.status()["groups"], what="a sync")
    code, shown = await api(app_a, "GET")
    assert code == 200 and shown["enabled"] and shown["address"] == "00:1A:7D:DA:71:0A"
    assert [(p["id"], p["address"], p["linked"], p["member"]) for p in shown["nearby"]] == \
        [(b.user_id, "00:1A:7D:DA:71:0B", True, True)]
    # Switched off: the radio stops and the link ends; the setting is remembered.
    code, shown = await api(app_b, "POST", {"enabled": False})
    assert code == 200 and not shown["enabled"] and not shown["running"]
    await until(lambda: not a.runtime.links(), what="the link ends")
    assert json.loads((b.meetups.path).read_text())["enabled"] is False
    assert json.loads((a.meetups.path).read_text())["enabled"] is True
