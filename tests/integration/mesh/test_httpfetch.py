"""A task cancelled while its HTTP request is in flight (a node stopping while it
registers) logs nothing when the request fails afterwards: a real Tornado server on
127.0.0.1 holds the request, the task is cancelled, then the server answers 500."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from mesh.discovery import DiscoveryClient
from mesh.errors import DiscoveryUnavailable
from mesh.httpfetch import fetch
from mesh.identity import KeyPair


async def test_a_request_failing_after_its_caller_was_cancelled_logs_nothing(caplog) -> None:
    arrived, answer = asyncio.Event(), asyncio.Event()

    class Held(RequestHandler):
        async def get(self) -> None:
            arrived.set()
            await answer.wait()
            self.set_status(500)

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/v1/health", Held)]))
    server.add_sockets(sockets)
    client = DiscoveryClient(f"http://127.0.0.1:{sockets[0].getsockname()[1]}",
                             KeyPair.generate(), timeout=5)
    try:
        with caplog.at_level(logging.DEBUG):
            for call in (client.health,
                         lambda: fetch(AsyncHTTPClient(), client.base_url + "/v1/health")):
                arrived.clear()
                answer.clear()
                task = asyncio.ensure_future(call())
                await arrived.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                answer.set()
                await asyncio.sleep(0.2)  # the 500 arrives at the abandoned request
                gc.collect()  # an unretrieved exception would be logged now
            with pytest.raises(DiscoveryUnavailable):  # not cancelled: the error is ours
                await client.health()
    finally:
        server.stop()
        await server.close_all_connections()
    assert [r.getMessage() for r in caplog.records  # (the server's access log has its 500s)
            if r.levelno >= logging.ERROR and r.name != "tornado.access"] == []
