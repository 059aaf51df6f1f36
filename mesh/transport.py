"""The transport-agnostic half of a link: the Transport interface, LinkConnection,
and two transports that need no network stack of their own.

A mesh.link.Link is sans-IO; LinkConnection binds one to a framed pipe and the event
loop (timers, a bounded send queue, callbacks). The pipe is anything with the small
Transport interface: a WebSocket (mesh/websocket.py), a byte stream carrying
StreamFramer records (``StreamTransport``: RFCOMM in mesh/bluetooth.py, a socket
pair in tests), or ``memory_pipe()``, two LinkConnections joined in memory on the
running loop, for tests that need real links without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mesh import wire
from mesh.errors import LinkError, LinkUsageError
from mesh.identity import KeyPair, Record
from mesh.link import (
    HANDSHAKE_TIMEOUT,
    MAX_MESSAGE,
    Closed,
    Established,
    FrameReceived,
    Link,
    StreamFramer,
)

__all__ = [
    "CLOSE_FLUSH_TIMEOUT",
    "DEFAULT_MAX_QUEUE_BYTES",
    "InboundAcceptor",
    "LinkAcceptor",
    "LinkConnection",
    "MemoryTransport",
    "OnClosed",
    "OnEstablished",
    "OnFrame",
    "StreamTransport",
    "Transport",
    "memory_pipe",
]

log = logging.getLogger("parley.mesh.transport")

# Room for about 16 full attachment chunks; a peer further behind than that is dropped.
DEFAULT_MAX_QUEUE_BYTES = 4 * 1024 * 1024
CLOSE_FLUSH_TIMEOUT = 5.0
WRITE_BATCH_BYTES = 1024 * 1024
READ_SIZE = 64 * 1024

OnEstablished = Callable[["LinkConnection"], None]
OnFrame = Callable[["LinkConnection", wire.Frame], None]
OnClosed = Callable[["LinkConnection", Closed], None]


class Transport(Protocol):
    """What LinkConnection needs from a framed pipe. ``write`` queues the message at
    once (messages go out in the order of the calls) and returns an awaitable that
    completes once it is handed to the OS (flow control); a write on a pipe that is
    gone raises, or its awaitable fails with, one of ``write_errors``. ``close`` is
    graceful, ``abort`` drops the connection at once. Whoever owns the pipe feeds
    ``conn.data_received(message)`` and calls ``conn.transport_lost()`` once the pipe
    has closed, whichever side closed it (LinkConnection gives up waiting
    CLOSE_FLUSH_TIMEOUT after its own close)."""

    write_errors: tuple[type[Exception], ...]

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
        except transport.write_errors:
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
    freshly opened pipe (a WebSocket, say), return an attached LinkConnection, or None
    to refuse."""

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


class StreamTransport:
    """Transport over an asyncio stream (an RFCOMM socket, a socket pair): each link
    message travels as one StreamFramer record. ``pump(conn)`` feeds what arrives into
    the connection and reports the end of the stream, however it ends."""

    write_errors = (OSError,)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 max_message: int = MAX_MESSAGE) -> None:
        self._reader, self._writer = reader, writer
        self._framer = StreamFramer(max_message)
        self.bytes_in = self.bytes_out = 0

    def write(self, data: bytes) -> Awaitable[None]:
        record = StreamFramer.frame(data)
        self._writer.write(record)
        self.bytes_out += len(record)
        return self._writer.drain()

    def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()

    def abort(self) -> None:
        self._writer.transport.abort()

    async def pump(self, conn: LinkConnection) -> None:
        try:
            with contextlib.suppress(OSError):
                while data := await self._reader.read(READ_SIZE):
                    self.bytes_in += len(data)
                    try:
                        messages = self._framer.feed(data)
                    except LinkError as exc:  # lost sync: say why, then drain until EOF
                        conn.close(exc.reason, str(exc))
                        continue
                    for message in messages:
                        conn.data_received(message)
        finally:
            conn.transport_lost("stream closed")
            self.close()


class MemoryTransport:
    """One end of an in-memory pipe (see ``memory_pipe``). Messages reach the other
    end's connection in order, each on its own turn of the loop, as they would from
    a socket; ``close`` lets what was written arrive first, ``abort`` does not. Either
    ends the pipe for both sides. ``sent`` counts the messages written."""

    write_errors = (ConnectionError,)

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.conn: LinkConnection | None = None
        self.other: MemoryTransport | None = None
        self.open = True
        self.sent = 0

    def write(self, data: bytes) -> Awaitable[None]:
        if not self.open:
            raise ConnectionError("the in-memory pipe is closed")
        self.sent += 1
        self._loop.call_soon(self._deliver, data)
        done = self._loop.create_future()
        done.set_result(None)
        return done

    def _deliver(self, data: bytes) -> None:
        other = self.other
        if self.open and other is not None and other.conn is not None:
            other.conn.data_received(data)

    def close(self) -> None:
        self._loop.call_soon(self._end)  # after the writes already on their way

    def abort(self) -> None:
        self._end()

    def _end(self) -> None:
        for end in (self, self.other):
            if end is not None and end.open:
                end.open = False
                if end.conn is not None:
                    self._loop.call_soon(end.conn.transport_lost, "pipe closed")


def memory_pipe(a: LinkConnection, b: LinkConnection) -> tuple[MemoryTransport, MemoryTransport]:
    """Join two unattached connections in memory and start both (the initiator's
    Hello goes out at once). Call on the running loop."""
    ta, tb = MemoryTransport(), MemoryTransport()
    ta.other, tb.other = tb, ta
    ta.conn, tb.conn = a, b
    a.attach(ta)
    b.attach(tb)
    return ta, tb
