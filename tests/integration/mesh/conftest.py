"""Fixtures for mesh integration tests: identities and real Tornado mesh servers on
127.0.0.1, port 0, all closed in teardown."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mesh.transport import LinkAcceptor, LinkConnection
from mesh.websocket import MeshServer
from tests.unit.mesh.test_link_helpers import Node, Recorder, make_node


async def wait_for(predicate: Callable[[], bool], within: float = 10.0,
                   step: float = 0.01) -> None:
    """Poll a condition that no callback signals (integration tests only)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(step)


@pytest.fixture
def node_factory() -> Callable[..., Node]:
    return make_node


class ServerHandle:
    def __init__(self, node: Node, acceptor: LinkAcceptor, server: MeshServer,
                 recorder: Recorder) -> None:
        self.node, self.acceptor, self.server, self.recorder = node, acceptor, server, recorder

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/mesh"

    async def stop(self) -> None:
        await self.server.stop()
        await self.acceptor.close_all()


@pytest.fixture
async def mesh_server() -> AsyncIterator[Callable[..., ServerHandle]]:
    """Factory: start a LinkAcceptor-backed MeshServer for a node on 127.0.0.1:0."""
    handles: list[ServerHandle] = []

    def start(node: Node | None = None, **conn_kwargs: Any) -> ServerHandle:
        node = node or make_node()
        recorder = Recorder()
        acceptor = LinkAcceptor(node.identity, node.record, **recorder.kwargs(), **conn_kwargs)
        server = MeshServer(acceptor)
        server.listen(0, "127.0.0.1")
        handle = ServerHandle(node, acceptor, server, recorder)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        await handle.stop()


class Managed:
    """A node with a ConnectionManager and a MeshServer, recording what the manager
    reports to the layer above."""

    def __init__(self, node: Node, manager: Any, server: MeshServer) -> None:
        self.node, self.manager, self.server = node, manager, server
        self.ups: list[LinkConnection] = []
        self.downs: list[tuple[LinkConnection, str]] = []
        self.frames: list[tuple[str, Any]] = []
        manager.on_link = self.ups.append
        manager.on_link_closed = lambda conn, reason: self.downs.append((conn, reason))
        manager.on_frame = lambda conn, frame: self.frames.append((conn.peer_id, frame))

    @property
    def user_id(self) -> str:
        return self.node.user_id

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/mesh"

    async def stop(self) -> None:
        await self.server.stop()
        await self.manager.close()


@pytest.fixture
async def managed() -> AsyncIterator[Callable[..., Managed]]:
    """Factory: a node with a started ConnectionManager behind a MeshServer on
    127.0.0.1:0 (or ``port``). Everything is stopped in teardown."""
    from mesh.connections import ConnectionManager

    started: list[Managed] = []

    def start(node: Node | None = None, port: int = 0, **manager_kwargs: Any) -> Managed:
        node = node or make_node()
        manager = ConnectionManager(node.identity, node.record, **manager_kwargs)
        server = MeshServer(manager)
        server.listen(port, "127.0.0.1")
        manager.start()
        handle = Managed(node, manager, server)
        started.append(handle)
        return handle

    yield start
    await asyncio.gather(*(h.stop() for h in started))


class StallProxy:
    """A TCP proxy to one node's mesh port whose server-to-client direction can be
    frozen: the dialling side then looks like a peer that stopped reading."""

    def __init__(self, target_port: int, stalled: asyncio.Event | None = None) -> None:
        self.target_port = target_port
        self.stalled = stalled if stalled is not None else asyncio.Event()
        self.port = 0
        self.server: asyncio.Server | None = None
        self.tasks: list[asyncio.Task] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, c_reader, c_writer) -> None:
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        s_writer.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.writers += [c_writer, s_writer]
        self.tasks += [asyncio.create_task(self._copy(c_reader, s_writer, False)),
                       asyncio.create_task(self._copy(s_reader, c_writer, True))]

    async def _copy(self, reader, writer, stallable: bool) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if stallable and self.stalled.is_set():
                    await asyncio.Event().wait()  # never read again
                writer.write(data)
                await writer.drain()

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
