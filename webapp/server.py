"""The node's local UI server (DESIGN §8): base handlers, the app factory, start/stop.

    server = start_ui_server(data_dir, api_routes=routes, hub=hub, port=0)
    print("Open", server.url)            # http://127.0.0.1:PORT/#token=...
    ...
    await server.stop()

API handlers subclass UiApiHandler; ``make_ui_app`` gives each of them the server's
UiContext as ``ctx`` and refuses any route whose handler does not enforce the policy.
Built-in routes: ``/api/v1/session`` (token -> cookie exchange), ``/api/v1/sessions``
(sign out everywhere), ``/api/v1/events``
(the events WebSocket), ``/_ui/*`` (public files of the locked page) and the app.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from mesh.errors import binding
from mesh.jsonapi import ApiError, JsonHandler, check_fields
from webapp.auth import (
    check_content_type,
    create_ui_token,
    load_session_secret,
    remove_ui_token,
    session_cookie_value,
    tokens_equal,
)
from webapp.context import DIST_DIR, JsonErrorMixin, UiContext, UiHandlerMixin
from webapp.events import EventHub
from webapp.static_files import static_routes

__all__ = [
    "API_PREFIX",
    "EVENTS_PATH",
    "SESSION_PATH",
    "EventsHandler",
    "SessionHandler",
    "SessionsHandler",
    "UiApiHandler",
    "UiContext",
    "UiServer",
    "make_ui_app",
    "start_ui_server",
]

log = logging.getLogger("parley.webapp")
access_log = logging.getLogger("parley.webapp.access")

API_PREFIX = "/api/v1"
SESSION_PATH = API_PREFIX + "/session"
EVENTS_PATH = API_PREFIX + "/events"
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
DROP_GRACE = 1.0            # seconds a dropped events client gets to take its close frame
SHUTDOWN_GRACE = 1.0
MAX_BODY_BACKSTOP = 1024 * 1024   # connection-level cap; handlers cap lower (or raise it)

Route = tuple[str, type[RequestHandler], dict[str, Any]] | tuple[str, type[RequestHandler]]


class UiApiHandler(UiHandlerMixin, JsonHandler):
    """Base of every ``/api/v1`` handler.

    ``prepare()`` refuses, in this order: a Host that is not ours (403 bad_host), an
    Origin that is not ours or a cross-site Sec-Fetch-Site (403 forbidden_origin),
    missing or wrong credentials (401 unauthenticated, unless ``requires_auth`` is
    False), a POST/PUT/PATCH/DELETE that is not ``application/json`` (415
    unsupported_media_type; ``multipart/form-data`` too if ``accept_multipart``), and a
    declared body over ``body_limit`` (413). Subclasses that override prepare() call
    ``super().prepare()`` first. GET handlers must not change state.
    """

    requires_auth: ClassVar[bool] = True
    accept_multipart: ClassVar[bool] = False

    def initialize(self, ctx: UiContext) -> None:  # type: ignore[override]
        """Subclasses that take more arguments override this and call
        ``super().initialize(ctx)``."""
        super().initialize()
        self.ctx = ctx
        self.apply_security_headers()

    @property
    def hub(self) -> EventHub:
        return self.ctx.hub

    def prepare(self) -> None:
        self.guard(api=True, auth=self.requires_auth)
        headers = self.request.headers
        check_content_type(self.request.method or "", headers.get("Content-Type"),
                           accept_multipart=self.accept_multipart,
                           has_body=headers.get("Content-Length", "0") != "0"
                           or "Transfer-Encoding" in headers)
        self.check_content_length()
        if self.body_limit > MAX_BODY_BACKSTOP:  # an upload handler raised its own cap
            self.request.connection.set_max_body_size(self.body_limit + 64 * 1024)


class SessionHandler(UiApiHandler):
    """``/api/v1/session``: trade the token for the session cookie (POST {"token"}),
    ask whether the browser is signed in (GET), sign this browser out (DELETE)."""

    requires_auth = False
    body_limit = 1024

    def get(self) -> None:
        self.require_auth()
        self.send_json(200, {"authenticated": True})

    def post(self) -> None:
        body = self.json_body()
        check_fields(body, {"token"})
        token = body["token"]
        if not isinstance(token, str) or not tokens_equal(token, self.ctx.token):
            raise ApiError(401, "unauthenticated", "that is not this node's UI token")
        # Session cookie (no Max-Age): it dies with the browser session, and its value
        # dies with the node process. Not Secure: this is plain http on loopback.
        self.set_cookie(self.ctx.cookie_name, self.ctx.session, path="/", httponly=True,
                        samesite="Strict")
        self.set_status(204)
        self.finish()

    def delete(self) -> None:
        self.require_auth()
        self.clear_cookie(self.ctx.cookie_name, path="/", httponly=True, samesite="Strict")
        self.set_status(204)
        self.finish()


class SessionsHandler(UiApiHandler):
    """``DELETE /api/v1/sessions``: sign out everywhere. A new session secret ends
    every browser's session (this one's too), in this run and after restarts."""

    body_limit = 1024

    def delete(self) -> None:
        self.ctx.sign_out_everywhere()
        self.clear_cookie(self.ctx.cookie_name, path="/", httponly=True, samesite="Strict")
        self.set_status(204)
        self.finish()


class ApiNotFoundHandler(UiApiHandler):
    """Any other ``/api/`` path: the policy first (so nothing leaks), then 404."""

    def prepare(self) -> None:
        super().prepare()
        raise ApiError(404, "not_found", "no such endpoint")


class EventsHandler(UiHandlerMixin, JsonErrorMixin, WebSocketHandler):
    """``/api/v1/events``: one EventHub client per socket; receive-only for the UI.

    Refused before the upgrade, like the JSON API: bad Host (403), foreign Origin
    (403; browsers always send Origin on WebSocket handshakes), no credentials (401).
    """

    def initialize(self, ctx: UiContext) -> None:
        self.ctx = ctx
        self.apply_security_headers()
        self._stream: IOStream | None = None
        self.by_cookie = False

    def prepare(self) -> None:
        self.guard(api=True, auth=True)

    def check_origin(self, origin: str) -> bool:
        # prepare() already refused any other origin; Tornado asks again here.
        return origin == f"http://{self.request.headers.get('Host', '').lower()}"

    def get_compression_options(self) -> None:
        return None  # compressing secrets next to attacker-influenced text leaks them

    def open(self, *args: str, **kwargs: str) -> None:
        assert self.ws_connection is not None
        self._stream = self.ws_connection.stream
        # A browser's socket ends when its session is revoked; a script's does not.
        self.by_cookie = self.request.headers.get("Authorization") is None
        self.set_nodelay(True)
        self.ctx.sockets.add(self)
        self.ctx.hub.attach(self)

    def on_message(self, message: str | bytes) -> None:
        self.close(1003, "the events socket is receive-only")

    def on_close(self) -> None:
        self.ctx.hub.detach(self)
        self.ctx.sockets.discard(self)

    # EventClient

    def send_text(self, text: str, on_flushed: Callable[[], None]) -> None:
        try:
            future = self.write_message(text)
        except WebSocketClosedError:
            raise ConnectionError("events socket closed") from None

        def done(f: asyncio.Future[None]) -> None:
            if not f.cancelled():
                f.exception()  # retrieved: a closed socket is not worth a log line
            on_flushed()

        future.add_done_callback(done)

    def drop(self, code: int, reason: str) -> None:
        self.close(code, reason)
        asyncio.get_running_loop().call_later(DROP_GRACE, self.abort)

    def abort(self) -> None:
        """Cut the TCP connection now (a stalled client never takes a close frame)."""
        if self._stream is not None and not self._stream.closed():
            self._stream.close()


def make_ui_app(ctx: UiContext, api_routes: Sequence[Route] = (), *,
                ping_interval: float = PING_INTERVAL,
                ping_timeout: float = PING_TIMEOUT) -> Application:
    """The UI Application: ``api_routes`` (each handler a UiApiHandler, mounted under
    /api/v1, given ``ctx`` through initialize), then the built-in routes."""
    routes: list[tuple[str, type[RequestHandler], dict[str, Any]]] = [
        (SESSION_PATH, SessionHandler, {"ctx": ctx}),
        (SESSION_PATH + "s", SessionsHandler, {"ctx": ctx}),
        (EVENTS_PATH, EventsHandler, {"ctx": ctx}),
    ]
    for route in api_routes:
        pattern, handler = route[0], route[1]
        kwargs = dict(route[2]) if len(route) > 2 else {}  # type: ignore[misc]
        if not (isinstance(handler, type) and issubclass(handler, UiApiHandler)):
            raise TypeError(f"{pattern}: API handlers must subclass UiApiHandler")
        if not pattern.startswith(API_PREFIX + "/"):
            raise ValueError(f"{pattern}: API routes live under {API_PREFIX}/")
        kwargs.setdefault("ctx", ctx)
        routes.append((pattern, handler, kwargs))
    routes.append((r"/api(?:/.*)?", ApiNotFoundHandler, {"ctx": ctx}))
    routes.extend(static_routes(ctx))
    return Application(
        routes,
        websocket_ping_interval=ping_interval,
        websocket_ping_timeout=ping_timeout,
        websocket_max_message_size=4096,
        log_function=_log_request,
        compress_response=False,
        xsrf_cookies=False,    # Origin + SameSite=Strict + JSON content type instead
        serve_traceback=False,
    )


def _log_request(handler: RequestHandler) -> None:
    """Access log without the query string: nothing a URL may carry (a token pasted as
    ``?token=`` by mistake) reaches the logs. Routine traffic is DEBUG."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.ERROR
    request = handler.request
    access_log.log(level, "%d %s %s %.1fms", status, request.method, request.path,
                   1000.0 * request.request_time())


@dataclass(eq=False)
class UiServer:
    ctx: UiContext
    http: HTTPServer
    data_dir: Path | None

    @property
    def port(self) -> int:
        return self.ctx.port

    @property
    def origin(self) -> str:
        return self.ctx.origin

    @property
    def url(self) -> str:
        """The address to print: the token rides in the fragment, which browsers send
        neither to the server nor in Referer headers."""
        return f"{self.ctx.origin}/#token={self.ctx.token}"

    def __repr__(self) -> str:
        return f"<UiServer {self.origin}>"

    async def stop(self) -> None:
        """Stop listening, close the events sockets, delete the token file."""
        self.http.stop()
        self.ctx.hub.close_all()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE
        while self.ctx.sockets and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # clients answer the close frames
        for socket in list(self.ctx.sockets):
            socket.abort()
        await self.http.close_all_connections()
        if self.data_dir is not None:
            remove_ui_token(self.data_dir, self.ctx.token)


def start_ui_server(data_dir: str | os.PathLike[str] | None, *,
                    api_routes: Sequence[Route] = (), hub: EventHub | None = None,
                    port: int = 0, token: str | None = None,
                    dist_dir: Path = DIST_DIR, ping_interval: float = PING_INTERVAL,
                    ping_timeout: float = PING_TIMEOUT) -> UiServer:
    """Bind 127.0.0.1:``port`` (0 picks a free port), make a new token in
    ``<data_dir>/ui-token`` (unless ``token`` is given and ``data_dir`` is None, for
    tools), and serve. Must be called with the event loop running. PortInUse
    (mesh.errors) if the port is taken."""
    if data_dir is None and token is None:
        raise ValueError("give a data_dir (the token file goes there) or a token")
    with binding("tcp", port):
        sockets = bind_sockets(port, "127.0.0.1")
    try:
        bound = sockets[0].getsockname()[1]
        secrets: dict[str, Any] = {}
        if data_dir is not None:
            token = create_ui_token(data_dir)
            secrets = {"session": session_cookie_value(load_session_secret(data_dir)),
                       "data_dir": Path(data_dir)}
        assert token is not None
        ctx = UiContext(token=token, port=bound, hub=hub or EventHub(),
                        dist_dir=Path(dist_dir), **secrets)
        app = make_ui_app(ctx, api_routes, ping_interval=ping_interval,
                          ping_timeout=ping_timeout)
        http = HTTPServer(app, max_body_size=MAX_BODY_BACKSTOP, idle_connection_timeout=120,
                          xheaders=False)
        http.add_sockets(sockets)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    log.info("UI server listening on %s", ctx.origin)
    return UiServer(ctx, http, Path(data_dir) if data_dir is not None else None)
