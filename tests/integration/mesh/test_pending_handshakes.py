"""Strangers who open WebSockets on the mesh port and never say Hello (issue 15 finding
4), over real sockets: they get a budget of their own and a short deadline, and never
keep out a peer that completes its handshake, nor our own dials.

The strangers are raw TCP clients bound to other loopback addresses (127.0.0.2, ...)
so that the per-address limit can be told apart from the global budget."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator

import pytest

from mesh.websocket import dial
from tests.integration.mesh.conftest import wait_for
from tests.unit.mesh.test_link_helpers import make_node

TOPIC = b"p" * 16


class Stranger:
    """A WebSocket upgrade on /mesh that then says nothing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str) -> Stranger:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET /mesh HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    async def next_close(self, within: float) -> int | None:
        """The close code of the next WebSocket frame if it is a Close, skipping data
        frames (a link's clear Close); None if nothing came within ``within`` s."""
        try:
            async with asyncio.timeout(within):
                while True:
                    first, second = await self.reader.readexactly(2)
                    length = second & 0x7F
                    if length == 126:
                        length = int.from_bytes(await self.reader.readexactly(2), "big")
                    payload = await self.reader.readexactly(length)
                    if first & 0x0F == 0x8:
                        return int.from_bytes(payload[:2], "big")
        except TimeoutError:
            return None

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def strangers() -> AsyncIterator[list[Stranger]]:
    opened: list[Stranger] = []
    yield opened
    for stranger in opened:
        stranger.close()


async def test_idle_upgrades_do_not_keep_out_peers_or_our_dials(managed, strangers) -> None:
    a = managed(max_links=4, max_pending=3, pending_deadline=30.0)
    b = managed()
    for i in range(12):  # four times the handshake budget, three times the link cap
        strangers.append(await Stranger.open(a.server.port, f"127.0.0.{i + 2}"))
    # Each new one pushed out the oldest: only the last three are still waiting.
    await wait_for(lambda: a.manager.pending_handshakes() == 3)
    codes = await asyncio.gather(*(s.next_close(2.0) for s in strangers))
    assert codes == [1000] * 9 + [None] * 3
    # A peer that completes its handshake gets in ...
    friend = make_node()
    conn = await dial(a.url, friend.identity, friend.record)
    assert conn.established
    # ... and so does a link we dial ourselves.
    a.manager.set_topic(TOPIC, {a.user_id: [a.url], b.user_id: [b.url]})
    b.manager.set_topic(TOPIC, {a.user_id: [a.url], b.user_id: [b.url]})
    await wait_for(lambda: b.user_id in a.manager.links())
    assert friend.user_id in a.manager.links()
    conn.close()
    await conn.wait_closed()


async def test_one_address_gets_a_few_pending_handshakes_the_rest_are_refused(
        managed, strangers) -> None:
    a = managed(max_pending_per_address=2)
    for _ in range(4):
        strangers.append(await Stranger.open(a.server.port, "127.0.0.2"))
    codes = await asyncio.gather(*(s.next_close(0.5) for s in strangers))
    assert codes == [None, None, 1013, 1013]
    # Another address is not affected.
    strangers.append(await Stranger.open(a.server.port, "127.0.0.3"))
    assert await strangers[-1].next_close(0.5) is None


async def test_a_pending_handshake_ends_at_its_deadline(managed, strangers) -> None:
    a = managed(pending_deadline=0.5)
    stranger = await Stranger.open(a.server.port, "127.0.0.2")
    strangers.append(stranger)
    assert await stranger.next_close(0.2) is None
    assert await stranger.next_close(3.0) == 1000  # after the link's Close "timeout"
    await wait_for(lambda: a.manager.pending_handshakes() == 0)
