"""In-process nodes with no bootstrap, no DHT and (unless asked) no WebSocket mesh,
and the stand-in for the radio: a connected socket pair per meeting, optionally through
a relay that counts link records per direction and can cut the line. Nothing here
touches Bluetooth hardware; these tests never claim to test radio."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from groups.node import Node, NodeConfig
from mesh.link import StreamFramer
from mesh.transport import LinkConnection
from webapp.app import App
from webapp.events import EventHub

__all__ = ["Meeting", "Relay", "meet", "node_config", "texts", "until"]


def node_config(data_dir: Path, **config: Any) -> NodeConfig:
    """A node that finds nobody by itself: no bootstrap, no DHT; no WebSocket mesh
    unless ``mesh_port`` is given."""
    options: dict[str, Any] = {"bootstrap": "", "dht_port": None, "mesh_port": None,
                               **config}
    return NodeConfig(data_dir=data_dir, **options)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """``await nodes("a", **config)`` starts a node (no UI) in tmp_path/a; all stop
    afterwards."""
    started: list[Node] = []

    async def make(name: str, **config: Any) -> Node:
        node = await Node.start(node_config(tmp_path / name, **config), events=EventHub())
        started.append(node)
        return node

    try:
        yield make
    finally:
        for node in reversed(started):
            with contextlib.suppress(Exception):
                await node.stop()


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[App]]]:
    """``await apps("a", **config)``: a node with its UI server, as run.py starts it."""
    started: list[App] = []

    async def make(name: str, **config: Any) -> App:
        app = await App.start(node_config(tmp_path / name, **config))
        started.append(app)
        return app

    try:
        yield make
    finally:
        for app in reversed(started):
            with contextlib.suppress(Exception):
                await app.stop()


async def until(predicate: Callable[[], Any], within: float = 20.0, what: str = "condition",
                step: float = 0.02) -> Any:
    """Poll ``predicate`` (delivery happens in the background) until it is truthy."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {within} s (last: {value!r})")
        await asyncio.sleep(step)


def texts(node: Node, group: bytes) -> list[str]:
    return [m["text"] for m in node.messenger.messages(group)]


class Relay:
    """Two socket pairs and a byte pump between them: the line between two nodes.
    It counts the link records (StreamFramer) that pass each way ("x>y", "y>x") and,
    with ``cut_after``, drops the line once that many bytes went from x to y."""

    def __init__(self, cut_after: int | None = None) -> None:
        self.x_end, self._x_inner = socket.socketpair()
        self.y_end, self._y_inner = socket.socketpair()
        self.cut_after = cut_after
        self.bytes = {"x>y": 0, "y>x": 0}
        self.records: dict[str, list[int]] = {"x>y": [], "y>x": []}
        self.cut = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        rx, wx = await asyncio.open_connection(sock=self._x_inner)
        ry, wy = await asyncio.open_connection(sock=self._y_inner)
        self._writers = [wx, wy]
        self._tasks = [asyncio.create_task(self._copy(rx, wy, "x>y")),
                       asyncio.create_task(self._copy(ry, wx, "y>x"))]

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                if direction == "x>y" and self.cut_after is not None \
                        and self.bytes[direction] + len(data) > self.cut_after:
                    self.cut.set()
                    return
                self.bytes[direction] += len(data)
                self.records[direction] += [len(m) for m in framer.feed(data)]
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self.drop()

    def drop(self) -> None:
        """The devices move apart: both ends see the line go dead."""
        for writer in self._writers:
            writer.transport.abort()

    async def close(self) -> None:
        self.drop()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Meeting:
    """Nodes ``x`` and ``y`` linked over a stand-in for RFCOMM (x connects)."""

    def __init__(self, x: Node, y: Node, relay: Relay | None = None) -> None:
        self.x, self.y, self.relay = x, y, relay
        self.cx: LinkConnection | None = None
        self.cy: LinkConnection | None = None

    async def __aenter__(self) -> Meeting:
        if self.relay is not None:
            await self.relay.start()
            sx, sy = self.relay.x_end, self.relay.y_end
        else:
            sx, sy = socket.socketpair()
        self.cx = await self.x.attach_stream(sx, initiator=True)
        self.cy = await self.y.attach_stream(sy, initiator=False)
        return self

    async def established(self) -> None:
        assert self.cx is not None and self.cy is not None
        async with asyncio.timeout(10):
            await self.cx.wait_established()
            await self.cy.wait_established()

    async def __aexit__(self, *exc: object) -> None:
        conns = [c for c in (self.cx, self.cy) if c is not None]
        for conn in conns:
            conn.close("normal")
        async with asyncio.timeout(10):
            await asyncio.gather(*(c.wait_closed() for c in conns))
        if self.relay is not None:
            await self.relay.close()


def meet(x: Node, y: Node, relay: Relay | None = None) -> Meeting:
    return Meeting(x, y, relay)
