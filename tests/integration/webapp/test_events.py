"""The events WebSocket (/api/v1/events) over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from tornado.httpclient import HTTPClientError

from webapp.events import EventHub

from .test_server_helpers import Ui, eventually, read_json


async def refused_status(ui: Ui, headers: dict[str, str], *, bearer: bool = True) -> int:
    with pytest.raises(HTTPClientError) as info:
        await ui.ws(headers, bearer=bearer)
    assert ui.server.ctx.hub.clients == 0
    return info.value.code


async def test_without_auth_is_refused(ui: Ui) -> None:
    assert await refused_status(ui, {}, bearer=False) == 401
    assert await refused_status(ui, {"Authorization": "Bearer nope"}, bearer=False) == 401
    name = f"parley_session_{ui.port}"
    assert await refused_status(ui, {"Cookie": f"{name}=forged"}, bearer=False) == 401


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:1"])
async def test_foreign_origin_is_refused(ui: Ui, origin: str) -> None:
    assert await refused_status(ui, {"Origin": origin}) == 403


async def test_foreign_host_is_refused(ui: Ui) -> None:
    assert await refused_status(ui, {"Host": f"evil.example:{ui.port}"}) == 403


async def test_cross_site_fetch_metadata_is_refused(ui: Ui) -> None:
    assert await refused_status(ui, {"Sec-Fetch-Site": "cross-site"}) == 403


async def test_bearer_client_gets_ready_then_events(ui: Ui) -> None:
    conn = await ui.ws()
    assert await read_json(conn) == {"type": "ready", "data": {}}
    assert ui.server.ctx.hub.publish("message", {"text": "hé", "n": 1}) == 1
    assert await read_json(conn) == {"type": "message", "data": {"text": "hé", "n": 1}}


async def test_browser_style_client_with_cookie_and_own_origin(ui: Ui) -> None:
    cookie = await ui.login()
    conn = await ui.ws({"Cookie": cookie, "Origin": f"http://127.0.0.1:{ui.port}",
                        "Sec-Fetch-Site": "same-origin"}, bearer=False)
    assert (await read_json(conn))["type"] == "ready"
    # An API call that publishes reaches the socket.
    response = await ui.fetch("/api/v1/echo", method="POST", json_body={"hello": "world"},
                              headers={"Cookie": cookie})
    assert response.code == 200
    assert await read_json(conn) == {"type": "echo", "data": {"hello": "world"}}


async def test_localhost_origin_with_localhost_host(ui: Ui) -> None:
    host = f"localhost:{ui.port}"
    conn = await ui.ws({"Host": host, "Origin": f"http://{host}"})
    assert (await read_json(conn))["type"] == "ready"


async def test_every_client_gets_every_event_in_order(ui: Ui) -> None:
    conns = [await ui.ws() for _ in range(3)]
    for conn in conns:
        assert (await read_json(conn))["type"] == "ready"
    for i in range(20):
        assert ui.server.ctx.hub.publish("tick", i) == 3
    for conn in conns:
        assert [(await read_json(conn))["data"] for _ in range(20)] == list(range(20))


async def test_client_messages_close_the_socket(ui: Ui) -> None:
    conn = await ui.ws()
    await read_json(conn)
    await conn.write_message("hello?")
    async with asyncio.timeout(5):
        assert await conn.read_message() is None
    assert conn.close_code == 1003
    await eventually(lambda: ui.server.ctx.hub.clients == 0)


async def test_closed_client_is_detached(ui: Ui) -> None:
    conn = await ui.ws()
    await read_json(conn)
    assert ui.server.ctx.hub.clients == 1
    conn.close()
    await eventually(lambda: ui.server.ctx.hub.clients == 0)
    assert ui.server.ctx.hub.publish("nobody", {}) == 0


async def test_stalled_client_is_dropped_others_unaffected(start_ui: Callable[..., Ui]) -> None:
    hub = EventHub(max_queue_bytes=256 * 1024)
    ui = start_ui(hub=hub)
    good = await ui.ws()
    stalled = await ui.ws()  # never reads: Tornado's client stops reading its socket
    assert (await read_json(good))["type"] == "ready"
    payload = "x" * (64 * 1024)
    sent = 0
    while hub.dropped == 0:
        assert sent < 2000, "the stalled client was never dropped"
        hub.publish("bulk", {"i": sent, "pad": payload})
        assert (await read_json(good))["data"]["i"] == sent  # lockstep: good never lags
        sent += 1
    assert hub.clients == 1
    assert hub.publish("after", {"ok": True}) == 1
    assert await read_json(good) == {"type": "after", "data": {"ok": True}}
    # The stalled client's connection ends (close frame or abort after the grace time).
    async with asyncio.timeout(10):
        while (message := await stalled.read_message()) is not None:
            assert json.loads(message)["type"] in ("ready", "bulk")
    assert stalled.close_code in (None, 4000)


async def test_server_pings_and_answers_pings(start_ui: Callable[..., Ui]) -> None:
    ui = start_ui(ping_interval=0.05, ping_timeout=5)
    conn = await ui.ws()
    await read_json(conn)
    pinged, ponged = asyncio.Event(), asyncio.Event()
    conn.on_ping = lambda data: pinged.set()  # type: ignore[method-assign]
    conn.on_pong = lambda data: ponged.set() if data == b"client" else None  # type: ignore[method-assign]
    conn.ping(b"client")
    async with asyncio.timeout(5):
        await pinged.wait()
        await ponged.wait()
    assert ui.server.ctx.hub.clients == 1


async def test_stop_closes_event_sockets(start_ui: Callable[..., Ui]) -> None:
    ui = start_ui()
    conn = await ui.ws()
    await read_json(conn)
    await ui.server.stop()
    async with asyncio.timeout(5):
        assert await conn.read_message() is None
    assert conn.close_code == 1001
    assert ui.server.ctx.hub.clients == 0 and not ui.server.ctx.sockets
