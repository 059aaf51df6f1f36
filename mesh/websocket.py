"""Links over Tornado WebSockets: the ``/mesh`` handler and the dialer.

A thin adapter: it gives mesh.transport.LinkConnection a Transport over a WebSocket,
one binary message per link message. Keepalive is Tornado's WebSocket ping
(``websocket_ping_interval``); a peer that stops reading is dropped once the link's
bounded send queue overflows ("slow_peer").

The mesh port is for nodes, not browsers: any request carrying an Origin header is
refused (403), so a web page cannot make a visitor's browser open links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketError,
    WebSocketHandler,
    websocket_connect,
)

from mesh.errors import DialError, binding
from mesh.identity import KeyPair, Record
from mesh.link import HANDSHAKE_TIMEOUT, MAX_MESSAGE
from mesh.transport import (
    CLOSE_FLUSH_TIMEOUT,
    DEFAULT_MAX_QUEUE_BYTES,
    InboundAcceptor,
    LinkConnection,
    OnClosed,
    OnEstablished,
    OnFrame,
    Transport,
)

__all__ = [
    "MESH_PATH",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "SEND_BUFFER",
    "MeshHandler",
    "MeshServer",
    "accept_from",
    "close_late_connection",
    "dial",
    "mesh_routes",
    "mesh_settings",
]

log = logging.getLogger("parley.mesh.websocket")

MESH_PATH = "/mesh"
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
CONNECT_TIMEOUT = 10.0
SEND_BUFFER = 1024 * 1024

# What a write on a WebSocket that is gone raises (StreamClosedError is an OSError).
_WRITE_ERRORS = (WebSocketClosedError, OSError)


class _HandlerTransport:
    write_errors = _WRITE_ERRORS

    def __init__(self, handler: MeshHandler) -> None:
        self._handler = handler
        self.remote_host = handler.request.remote_ip or ""  # says whether a link is LAN

    def write(self, data: bytes) -> Awaitable[None]:
        return self._handler.write_message(data, binary=True)

    def close(self) -> None:
        self._handler.close(1000)

    def abort(self) -> None:
        proto = self._handler.ws_connection
        if proto is not None and proto.stream is not None:
            proto.stream.close()
        self._handler.close()


class MeshHandler(WebSocketHandler):
    """``/mesh``: one inbound link per WebSocket. Collaborators come in through
    ``initialize`` (see mesh_routes)."""

    def initialize(self, acceptor: InboundAcceptor) -> None:
        self._acceptor = acceptor
        self._conn: LinkConnection | None = None

    def check_origin(self, origin: str) -> bool:
        return False  # only called when an Origin header exists: i.e. a browser

    def get_compression_options(self) -> None:
        return None  # ciphertext does not compress; compression only costs memory

    def open(self, *args: str, **kwargs: str) -> None:
        self.set_nodelay(True)
        _size_send_buffer(self.ws_connection.stream.socket)  # type: ignore[union-attr]
        conn = self._acceptor.accept_inbound(_HandlerTransport(self))
        if conn is None:
            self.close(1013, "busy")
        self._conn = conn

    def on_message(self, message: str | bytes) -> None:
        if self._conn is None:
            return
        if isinstance(message, str):
            self._conn.close("bad_frame", "text message on a mesh link")
        else:
            self._conn.data_received(message)

    def on_close(self) -> None:
        if self._conn is not None:
            self._conn.transport_lost("websocket closed")


def mesh_routes(acceptor: InboundAcceptor, path: str = MESH_PATH) -> list[Any]:
    """Routes to mount on a tornado Application. Give that Application the settings
    from ``mesh_settings()`` so keepalive and the message size limit apply."""
    return [(path, MeshHandler, {"acceptor": acceptor})]


def mesh_settings(ping_interval: float = PING_INTERVAL,
                  ping_timeout: float = PING_TIMEOUT) -> dict[str, Any]:
    return {"websocket_ping_interval": ping_interval,
            "websocket_ping_timeout": ping_timeout,
            "websocket_max_message_size": MAX_MESSAGE}


class MeshServer:
    """The public mesh listener (``--mesh-port``): an Application with only ``/mesh``."""

    def __init__(self, acceptor: InboundAcceptor, *, ping_interval: float = PING_INTERVAL,
                 ping_timeout: float = PING_TIMEOUT) -> None:
        self.app = Application(mesh_routes(acceptor),
                               **mesh_settings(ping_interval, ping_timeout))
        self._server: HTTPServer | None = None
        self.port: int | None = None

    def listen(self, port: int = 0, address: str = "") -> int:
        """Bind (port 0 picks a free port) and return the bound port; PortInUse if the
        port is taken (checked without SO_REUSEPORT, so another node sharing the port
        is refused too)."""
        with binding("tcp", port):  # a probe without SO_REUSEPORT: is the port ours?
            probe = bind_sockets(port, address=address or None)
        port = probe[0].getsockname()[1]
        for sock in probe:
            sock.close()
        # SO_REUSEPORT lets hole punching connect from this same port (mesh/holepunch.py).
        sockets = bind_sockets(port, address=address or None, reuse_port=True)
        self._server = HTTPServer(self.app, max_body_size=4096,
                                  idle_connection_timeout=CONNECT_TIMEOUT)
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening. Established links are the acceptor's to close."""
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None


class _ClientTransport:
    write_errors = _WRITE_ERRORS

    def __init__(self, ws: WebSocketClientConnection) -> None:
        self._ws = ws

    def write(self, data: bytes) -> Awaitable[None]:
        return self._ws.write_message(data, binary=True)

    def close(self) -> None:
        self._ws.close(1000)

    def abort(self) -> None:
        proto = self._ws.protocol
        if proto is not None and proto.stream is not None:
            proto.stream.close()
        self._ws.close()


async def dial(url: str, identity: KeyPair, record: Record, *,
               expected_peer: str | None = None,
               on_established: OnEstablished | None = None,
               on_frame: OnFrame | None = None, on_closed: OnClosed | None = None,
               connect_timeout: float = CONNECT_TIMEOUT,
               handshake_timeout: float = HANDSHAKE_TIMEOUT,
               max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
               ping_interval: float = PING_INTERVAL,
               ping_timeout: float = PING_TIMEOUT) -> LinkConnection:
    """Open a WebSocket to ``url`` and run the handshake as initiator.

    Returns the established LinkConnection. Raises DialError if the endpoint cannot
    be reached, LinkError (with the close reason) if the handshake fails. The
    callbacks are installed before the handshake, so ``on_established`` runs before
    the first ``on_frame`` even if the peer sends at once.
    """
    conn = LinkConnection(identity, record, initiator=True, expected_peer=expected_peer,
                          endpoint=url, on_established=on_established, on_frame=on_frame,
                          on_closed=on_closed, max_queue_bytes=max_queue_bytes,
                          handshake_timeout=handshake_timeout)

    def attach(transport: Transport) -> LinkConnection:
        conn.attach(transport)
        return conn

    await _open_link(url, attach, connect_timeout, ping_interval, ping_timeout)
    try:
        await conn.wait_established()
    except asyncio.CancelledError:
        conn.close("shutdown")
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT + 1):
                await conn.wait_closed()
        raise
    return conn


async def accept_from(url: str, accept: Callable[[Transport], LinkConnection | None], *,
                      connect_timeout: float = CONNECT_TIMEOUT,
                      ping_interval: float = PING_INTERVAL,
                      ping_timeout: float = PING_TIMEOUT) -> LinkConnection | None:
    """Open a WebSocket to ``url`` and answer a link over it: we dial out, but the far
    end speaks first (a circuit relay splicing us to someone who dialled our relay
    address). ``accept`` attaches the responder's LinkConnection, or returns None to
    refuse (the WebSocket is then closed). Raises DialError like ``dial``."""
    return await _open_link(url, accept, connect_timeout, ping_interval, ping_timeout)


async def _open_link(url: str, attach: Callable[[Transport], LinkConnection | None],
                     connect_timeout: float, ping_interval: float,
                     ping_timeout: float) -> LinkConnection | None:
    """Connect a WebSocket and hand its transport to ``attach``; messages that arrive
    before that are kept in order and fed after."""
    holder: list[LinkConnection] = []
    inbox: list[bytes | None] = []

    def on_message(message: str | bytes | None) -> None:
        if not holder:  # before attach (a rude server): keep it in order
            inbox.append(message if not isinstance(message, str) else b"")
        elif message is None:
            holder[0].transport_lost("websocket closed")
        elif isinstance(message, str):
            holder[0].close("bad_frame", "text message on a mesh link")
        else:
            holder[0].data_received(message)

    try:
        request = HTTPRequest(url, connect_timeout=connect_timeout,
                              request_timeout=connect_timeout)
    except ValueError as exc:
        raise DialError(f"bad endpoint {url!r}: {exc}") from None
    pending = websocket_connect(request, on_message_callback=on_message,
                                ping_interval=ping_interval, ping_timeout=ping_timeout,
                                max_message_size=MAX_MESSAGE)
    future = asyncio.ensure_future(pending)
    try:
        ws = await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(close_late_connection)
        raise
    except (HTTPClientError, WebSocketError, TimeoutError, ValueError,
            *_WRITE_ERRORS) as exc:
        raise DialError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
    # Small frames (acks, digests) must not wait for Nagle and delayed ACKs (~40 ms).
    ws.protocol.set_nodelay(True)
    _size_send_buffer(ws.protocol.stream.socket)
    conn = attach(_ClientTransport(ws))
    if conn is None:
        ws.close(1013, "busy")
        return None
    holder.append(conn)
    for message in inbox:
        if message is None:
            conn.transport_lost("websocket closed")
        else:
            conn.data_received(message)
    return conn


def _size_send_buffer(sock: socket.socket | None) -> None:
    """Room in the kernel for a few whole chunk messages. Left to autotuning, a link's
    send buffer starts at 16 KiB, so a 256 KiB message went out in many partial
    sends, each re-registering the socket for writability and waking the loop again;
    sizing it cut the attachment benchmark's CPU by ~7% on loopback. The kernel
    doubles the value and caps it at net.core.wmem_max."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def close_late_connection(future: asyncio.Future[WebSocketClientConnection]) -> None:
    """A dial cancelled while connecting must not leak the socket it later opens."""
    if not future.cancelled() and future.exception() is None:
        future.result().close()
