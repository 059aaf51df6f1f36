"""Links over Tornado WebSockets: the ``/mesh`` handler, the dialer and LinkConnection.

This is the only mesh module besides mesh/connections.py that touches the network.
It drives a sans-IO mesh.link.Link: one WebSocket binary message carries one link
message. Keepalive is Tornado's WebSocket ping (``websocket_ping_interval``); a peer
that stops reading is dropped once our bounded send queue overflows ("slow_peer").

The mesh port is for nodes, not browsers: any request carrying an Origin header is
refused (403), so a web page cannot make a visitor's browser open links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketError,
    WebSocketHandler,
    websocket_connect,
)

from mesh import wire
from mesh.errors import RemoteError
from mesh.identity import KeyPair, Record
from mesh.link import (
    HANDSHAKE_TIMEOUT,
    MAX_MESSAGE,
    Closed,
    Established,
    FrameReceived,
    Link,
    LinkError,
    LinkUsageError,
)

__all__ = [
    "DEFAULT_MAX_QUEUE_BYTES",
    "MESH_PATH",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "SEND_BUFFER",
    "DialError",
    "InboundAcceptor",
    "LinkAcceptor",
    "LinkConnection",
    "MeshHandler",
    "MeshServer",
    "Transport",
    "accept_from",
    "dial",
    "mesh_routes",
    "mesh_settings",
]

log = logging.getLogger("parley.mesh.websocket")

MESH_PATH = "/mesh"
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
# Room for about 16 full attachment chunks; a peer further behind than that is dropped.
DEFAULT_MAX_QUEUE_BYTES = 4 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
CLOSE_FLUSH_TIMEOUT = 5.0
WRITE_BATCH_BYTES = 1024 * 1024
SEND_BUFFER = 1024 * 1024

OnEstablished = Callable[["LinkConnection"], None]
OnFrame = Callable[["LinkConnection", wire.Frame], None]
OnClosed = Callable[["LinkConnection", Closed], None]

_TRANSPORT_ERRORS = (WebSocketClosedError, StreamClosedError, OSError)


class DialError(RemoteError):
    """The dialled endpoint could not be reached or refused the WebSocket upgrade."""

    reason = "unreachable"


class Transport(Protocol):
    """What LinkConnection needs from a framed pipe. ``write`` queues the message at
    once (messages go out in the order of the calls) and returns an awaitable that
    completes once it is handed to the OS (flow control); ``close`` is graceful,
    ``abort`` drops the connection at once. Whoever owns the pipe feeds
    ``conn.data_received(message)`` and calls ``conn.transport_lost()`` once the pipe
    has closed, whichever side closed it (LinkConnection gives up waiting
    CLOSE_FLUSH_TIMEOUT after its own close)."""

    def write(self, data: bytes) -> Awaitable[Any]: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class LinkConnection:
    """A Link bound to a transport and the event loop: timers, a bounded send queue
    and callbacks. Callbacks run in order on the loop: ``on_established(conn)`` once,
    then ``on_frame(conn, frame)`` per frame, then ``on_closed(conn, Closed)`` once
    (only for connections whose transport was attached)."""

    def __init__(self, identity: KeyPair, record: Record, *, initiator: bool,
                 expected_peer: str | None = None, endpoint: str | None = None,
                 on_established: OnEstablished | None = None,
                 on_frame: OnFrame | None = None, on_closed: OnClosed | None = None,
                 max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 keepalive: float | None = None) -> None:
        if max_queue_bytes < MAX_MESSAGE:
            raise LinkUsageError("max_queue_bytes must hold at least one full message")
        self._loop = asyncio.get_running_loop()
        self._identity, self._record = identity, record
        self.initiator = initiator
        self.expected_peer = expected_peer
        self.endpoint = endpoint
        self.on_established, self.on_frame, self.on_closed = on_established, on_frame, on_closed
        self.max_queue_bytes = max_queue_bytes
        self._handshake_timeout = handshake_timeout
        self._keepalive = keepalive
        self.link: Link | None = None
        self.peer: Record | None = None
        self.closed = False
        self.close_event: Closed | None = None
        self.queued_bytes = 0
        self._queue: deque[bytes] = deque()
        self._transport: Transport | None = None
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._stop_writing = False  # the pipe is gone or aborted: drop output
        self._done = self._loop.create_future()
        self._established = self._loop.create_future()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("up" if self.peer else "handshake")
        side = "out" if self.initiator else "in"
        return f"<LinkConnection {side} {state} peer={self.peer_id}>"

    @property
    def peer_id(self) -> str | None:
        return self.peer.user_id if self.peer else None

    @property
    def established(self) -> bool:
        return self.peer is not None and not self.closed

    @property
    def close_reason(self) -> str | None:
        return self.close_event.reason if self.close_event else None

    # Driving (called by transports)

    def attach(self, transport: Transport) -> None:
        """Start the link on an open transport (the initiator's Hello goes out now)."""
        if self._transport is not None or self.closed:
            raise LinkUsageError("connection already attached")
        self._transport = transport
        self.link = Link(self._identity, self._record, initiator=self.initiator,
                         now=self._loop.time(), expected_peer=self.expected_peer,
                         handshake_timeout=self._handshake_timeout, keepalive=self._keepalive)
        self._writer = self._loop.create_task(self._write_loop())
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self.link is None or self.closed:
            return
        self.link.receive_data(data, self._loop.time())
        self._pump()

    def transport_lost(self, message: str = "") -> None:
        """The transport reports that the pipe is closed (always called once)."""
        self._stop_writing = True
        self._queue.clear()
        self.queued_bytes = 0
        if self.link is not None and not self.closed:
            self.link.connection_lost(message)
            self._pump()
        self._wakeup.set()
        self._cancel_timer()
        if not self._done.done():
            self._done.set_result(None)

    # Public

    def send(self, frame: wire.Frame) -> None:
        """Queue a payload frame without blocking. Dropped if the link has closed;
        raises LinkUsageError before establishment. If the queue would exceed
        ``max_queue_bytes`` the link closes with "slow_peer" instead."""
        if self.closed:
            return
        if self.link is None or self.peer is None:
            raise LinkUsageError("link not established yet")
        self.link.send(frame, self._loop.time())
        self._pump()

    def close(self, reason: str = "normal", message: str = "") -> None:
        if self.closed:
            return
        if self.link is None:  # never attached: nothing to tell anyone
            self.closed = True
            self.close_event = Closed(reason, message, False)
            self._finish_futures()
            return
        self.link.close(reason, message, self._loop.time())
        self._pump()

    async def wait_established(self) -> Record:
        """The peer's record once the handshake is done; LinkError if it failed."""
        await asyncio.shield(self._established)
        if self.peer is None:
            ev = self.close_event
            raise LinkError(ev.message if ev else "link closed",
                            ev.reason if ev else "connection_lost")
        return self.peer

    async def wait_closed(self) -> None:
        await asyncio.shield(self._done)

    # Internals

    def _pump(self) -> None:
        self._move_output()
        if self._pumping:
            return
        self._pumping = True
        try:
            while self.link is not None and (event := self.link.next_event()) is not None:
                self._dispatch(event)
                self._move_output()
        finally:
            self._pumping = False
        self._rearm()

    def _move_output(self) -> None:
        if self.link is None:
            return
        out = self.link.data_to_send()
        if not out or self._stop_writing:
            return
        for data in out:
            self._queue.append(data)
            self.queued_bytes += len(data)
        self._wakeup.set()
        if self.queued_bytes > self.max_queue_bytes and not self.closed:
            self._drop_slow_peer()

    def _drop_slow_peer(self) -> None:
        assert self.link is not None
        self._queue.clear()
        self.queued_bytes = 0
        self.link.close("slow_peer", f"send queue over {self.max_queue_bytes} bytes")
        self.link.data_to_send()  # the Close cannot get through a stalled pipe
        self._abort()

    def _abort(self) -> None:
        self._stop_writing = True
        self._queue.clear()
        self.queued_bytes = 0
        self._wakeup.set()
        if self._transport is not None:
            self._transport.abort()

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, Established):
            self.peer = event.peer
            if not self._established.done():
                self._established.set_result(None)
            self._callback(self.on_established, self)
        elif isinstance(event, FrameReceived):
            if not self.closed:
                self._callback(self.on_frame, self, event.frame)
        elif isinstance(event, Closed):
            self.closed = True
            self.close_event = event
            self._wakeup.set()  # the writer flushes the Close frame, then closes
            self._finish_futures()
            if self._transport is not None and not self._stop_writing:
                # A peer that does not take our last frames in time is cut off.
                self._loop.call_later(CLOSE_FLUSH_TIMEOUT, self._force_done)
            self._callback(self.on_closed, self, event)

    def _finish_futures(self) -> None:
        if not self._established.done():
            self._established.set_result(None)
        if self._transport is None and not self._done.done():
            self._done.set_result(None)

    def _force_done(self) -> None:
        """Our close did not complete in time (a stalled peer or a transport that never
        reported the end): cut the pipe and consider the connection finished."""
        if not self._done.done():
            self._abort()
            self.transport_lost("close timed out")

    def _callback(self, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("link callback %s failed", getattr(fn, "__name__", fn))
            if not self.closed and self.link is not None:
                self.link.close("internal_error", "", self._loop.time())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

    def _rearm(self) -> None:
        when = None if self.link is None else self.link.next_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = None if when is None else self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self.link is not None:
            self.link.handle_timer(self._loop.time())
        self._pump()

    async def _write_loop(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            while True:
                while self._queue and not self._stop_writing:
                    await self._write_batch(transport)
                if self.closed or self._stop_writing:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
        except _TRANSPORT_ERRORS:
            self._stop_writing = True
            transport.abort()
        finally:
            self._cancel_timer()
            self._stop_writing = True
            transport.close()  # also after the peer closed: Tornado wants it to let go
            if not self._done.done():
                self._loop.call_later(CLOSE_FLUSH_TIMEOUT, self._force_done)

    def _write_batch(self, transport: Transport) -> Awaitable[Any]:
        """Hand queued messages (up to WRITE_BATCH_BYTES) to the transport at once and
        return the last write, which completes once they all reached the OS: waiting
        for each message's write cost a task switch per message. Earlier writes fail
        only if the last one does, so their outcome is only collected."""
        budget = WRITE_BATCH_BYTES
        while True:
            data = self._queue.popleft()
            self.queued_bytes -= len(data)
            budget -= len(data)
            written = transport.write(data)
            if not self._queue or budget <= 0:
                return written
            asyncio.ensure_future(written).add_done_callback(_collect)


def _collect(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class InboundAcceptor(Protocol):
    """Whoever owns inbound links (the ConnectionManager): given the transport of a
    freshly opened WebSocket, return an attached LinkConnection, or None to refuse."""

    def accept_inbound(self, transport: Transport) -> LinkConnection | None: ...


class LinkAcceptor:
    """A minimal InboundAcceptor: every inbound link gets the same callbacks. Useful
    on its own (tests, tools); the node uses the ConnectionManager instead."""

    def __init__(self, identity: KeyPair, record: Record, **conn_kwargs: Any) -> None:
        self.identity, self.record, self.conn_kwargs = identity, record, conn_kwargs
        self.connections: list[LinkConnection] = []

    def accept_inbound(self, transport: Transport) -> LinkConnection:
        conn = LinkConnection(self.identity, self.record, initiator=False, **self.conn_kwargs)
        self.connections.append(conn)
        conn.attach(transport)
        return conn

    async def close_all(self, reason: str = "shutdown") -> None:
        for conn in self.connections:
            conn.close(reason)
        await asyncio.gather(*(c.wait_closed() for c in self.connections))


class _HandlerTransport:
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
        """Bind (port 0 picks a free port) and return the bound port."""
        sockets = bind_sockets(port, address=address or None)
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
        future.add_done_callback(_close_late_connection)
        raise
    except (HTTPClientError, WebSocketError, TimeoutError, ValueError,
            *_TRANSPORT_ERRORS) as exc:
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


def _close_late_connection(future: asyncio.Future[WebSocketClientConnection]) -> None:
    """A dial cancelled while connecting must not leak the socket it later opens."""
    if not future.cancelled() and future.exception() is None:
        future.result().close()
