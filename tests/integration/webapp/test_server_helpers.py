"""Fixtures for the UI server tests: real servers on 127.0.0.1 port 0 with a tiny
example API, real Tornado HTTP and WebSocket clients, all closed in teardown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

from webapp.context import UiContext
from webapp.server import UiApiHandler, UiServer, start_ui_server


class PingHandler(UiApiHandler):
    """GET /api/v1/ping: the smallest authenticated endpoint; it names the collaborator
    its route hands it through ``initialize`` (as the node API's routes do)."""

    def initialize(self, ctx: UiContext, node: str) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.node = node

    def get(self) -> None:
        self.send_json(200, {"pong": True, "node": self.node})


class EchoHandler(UiApiHandler):
    """POST/PUT/DELETE /api/v1/echo: echoes the JSON body; publishes it as an event."""

    def post(self) -> None:
        body = self.json_body()
        self.hub.publish("echo", body)
        self.send_json(200, body)

    put = post

    def delete(self) -> None:
        self.send_json(200, {"deleted": True})


class UploadHandler(UiApiHandler):
    """POST /api/v1/upload: takes multipart/form-data (and JSON)."""

    accept_multipart = True

    def post(self) -> None:
        self.send_json(200, {"bytes": len(self.body)})


ROUTES: list[Any] = [
    (r"/api/v1/ping", PingHandler, {"node": "example-node"}),
    (r"/api/v1/echo", EchoHandler, {}),
    (r"/api/v1/upload", UploadHandler),
]


class Ui:
    """One running UI server plus client helpers."""

    def __init__(self, server: UiServer, data_dir: Path) -> None:
        self.server, self.data_dir = server, data_dir
        self.http = AsyncHTTPClient()
        self.sockets: list[WebSocketClientConnection] = []

    @property
    def token(self) -> str:
        return self.server.ctx.token

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def fetch(self, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
                    body: bytes | str | None = None, json_body: Any = None) -> HTTPResponse:
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body)
            headers.setdefault("Content-Type", "application/json")
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        request = HTTPRequest(f"http://{self.host}{path}", method=method, headers=headers,
                              body=body, allow_nonstandard_methods=True,
                              follow_redirects=False, request_timeout=10)
        return await self.http.fetch(request, raise_error=False)

    async def login(self) -> str:
        """Trade the token for the session cookie; returns a Cookie header value."""
        response = await self.fetch("/api/v1/session", method="POST",
                                    json_body={"token": self.token})
        assert response.code == 204, response.body
        set_cookie = response.headers.get_list("Set-Cookie")
        assert len(set_cookie) == 1
        return set_cookie[0].split(";", 1)[0]

    async def ws(self, headers: dict[str, str] | None = None, *, bearer: bool = True,
                 **kwargs: Any) -> WebSocketClientConnection:
        headers = dict(headers or {})
        if bearer:
            headers.update(self.bearer)
        request = HTTPRequest(f"ws://{self.host}/api/v1/events", headers=headers,
                              connect_timeout=5, request_timeout=5)
        conn = await websocket_connect(request, **kwargs)
        self.sockets.append(conn)
        return conn

    async def close(self) -> None:
        for conn in self.sockets:
            conn.close()
        await self.server.stop()


async def read_json(conn: WebSocketClientConnection, within: float = 5.0) -> Any:
    async with asyncio.timeout(within):
        message = await conn.read_message()
    assert isinstance(message, str), message
    return json.loads(message)


@pytest.fixture
async def start_ui(tmp_path: Path) -> AsyncIterator[Callable[..., Ui]]:
    """Factory: ``start_ui(**start_ui_server kwargs)`` -> Ui, stopped at teardown."""
    running: list[Ui] = []

    def start(**kwargs: Any) -> Ui:
        data_dir = tmp_path / f"node{len(running)}"
        kwargs.setdefault("api_routes", ROUTES)
        kwargs.setdefault("dist_dir", tmp_path / "no-dist")
        server = start_ui_server(data_dir, port=0, **kwargs)
        ui = Ui(server, data_dir)
        running.append(ui)
        return ui

    yield start
    for ui in running:
        await ui.close()


@pytest.fixture
async def ui(start_ui: Callable[..., Ui]) -> Ui:
    return start_ui()


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition no callback signals (integration tests only)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


Fetch = Callable[..., Awaitable[HTTPResponse]]
