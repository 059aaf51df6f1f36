"""EventHub: fan-out of node events to the UI's event sockets (``/api/v1/events``).

The node calls ``hub.publish("message", {...})``; every connected events socket gets
the JSON text ``{"type": "message", "data": {...}}``. Publishing never blocks the
node: each client has a bounded queue of messages written but not yet taken by the
socket, and a client that lets it overflow (a stalled or very slow browser tab) is
dropped with close code 4000 "slow_client" instead of making the node buffer without
limit. A dropped client reconnects and refetches state through the JSON API.

Every client first receives ``{"type": "ready", "data": {}}``: events published after
it are guaranteed to reach it, so a UI that (re)loads its state after "ready" misses
nothing.

The hub is tornado-free (clients are a small protocol; the WebSocket handler in
webapp/server.py is one) and there is no global hub: the composition root makes one
and hands it to the node and, through UiContext, to the handlers.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_MESSAGES",
    "READY_EVENT",
    "SHUTDOWN_CODE",
    "SLOW_CLIENT_CODE",
    "EventClient",
    "EventHub",
    "encode_event",
]

log = logging.getLogger("parley.webapp.events")

DEFAULT_MAX_QUEUE_MESSAGES = 1000
DEFAULT_MAX_QUEUE_BYTES = 4 * 1024 * 1024
SLOW_CLIENT_CODE = 4000      # WebSocket close code: application-defined range
SHUTDOWN_CODE = 1001         # "going away"
READY_EVENT = "ready"


class EventClient(Protocol):
    """One events socket, as the hub sees it.

    ``send_text`` hands one text message to the transport without blocking and calls
    ``on_flushed`` once the transport has passed it on (or given up on it); it raises
    ``ConnectionError`` (or a subclass of it) if the client is already gone.
    ``drop`` cuts a client off that cannot keep up; ``close`` ends it politely.
    """

    def send_text(self, text: str, on_flushed: Callable[[], None]) -> None: ...
    def drop(self, code: int, reason: str) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


class _Subscriber:
    __slots__ = ("client", "pending_bytes", "pending_messages")

    def __init__(self, client: EventClient) -> None:
        self.client = client
        self.pending_messages = 0
        self.pending_bytes = 0


def encode_event(event_type: str, data: Any) -> str:
    """The wire form: compact JSON text ``{"type": ..., "data": ...}`` (strict JSON)."""
    if not isinstance(event_type, str) or not event_type:
        raise ValueError("event_type must be a non-empty string")
    return json.dumps({"type": event_type, "data": data}, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


class EventHub:
    """Fan-out with a bounded per-client queue. Use from the event loop's thread only."""

    def __init__(self, *, max_queue_messages: int = DEFAULT_MAX_QUEUE_MESSAGES,
                 max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES) -> None:
        if max_queue_messages < 1 or max_queue_bytes < 1:
            raise ValueError("queue limits must be positive")
        self.max_queue_messages = max_queue_messages
        self.max_queue_bytes = max_queue_bytes
        self._subscribers: dict[EventClient, _Subscriber] = {}
        self.published = 0   # events published since start
        self.dropped = 0     # clients dropped for being too slow

    def __repr__(self) -> str:
        return f"<EventHub clients={len(self._subscribers)} dropped={self.dropped}>"

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    def attach(self, client: EventClient) -> None:
        """Start delivering to ``client``; it gets the "ready" event first."""
        if client in self._subscribers:
            return
        sub = _Subscriber(client)
        self._subscribers[client] = sub
        self._deliver(sub, encode_event(READY_EVENT, {}))

    def detach(self, client: EventClient) -> None:
        """Stop delivering to ``client`` (it closed). Unknown clients are ignored."""
        self._subscribers.pop(client, None)

    def publish(self, event_type: str, data: Any) -> int:
        """Send an event to every client; returns how many got it queued.

        ``data`` must be JSON-serialisable (else TypeError/ValueError, raised before
        anything is sent). Never blocks; slow clients are dropped instead.
        """
        text = encode_event(event_type, data)
        self.published += 1
        delivered = 0
        for sub in list(self._subscribers.values()):
            if self._deliver(sub, text):
                delivered += 1
        return delivered

    def close_all(self, code: int = SHUTDOWN_CODE, reason: str = "shutdown") -> None:
        """Close every client (server shutdown)."""
        subs = list(self._subscribers.values())
        self._subscribers.clear()
        for sub in subs:
            with contextlib.suppress(ConnectionError):
                sub.client.close(code, reason)

    def _deliver(self, sub: _Subscriber, text: str) -> bool:
        size = len(text.encode("utf-8"))
        if (sub.pending_messages + 1 > self.max_queue_messages
                or sub.pending_bytes + size > self.max_queue_bytes):
            self._drop(sub)
            return False
        sub.pending_messages += 1
        sub.pending_bytes += size

        def flushed() -> None:
            sub.pending_messages -= 1
            sub.pending_bytes -= size

        try:
            sub.client.send_text(text, flushed)
        except ConnectionError:
            self.detach(sub.client)
            return False
        return True

    def _drop(self, sub: _Subscriber) -> None:
        self.detach(sub.client)
        self.dropped += 1
        log.info("dropping a slow events client (%d messages, %d bytes queued)",
                 sub.pending_messages, sub.pending_bytes)
        with contextlib.suppress(ConnectionError):
            sub.client.drop(SLOW_CLIENT_CODE, "slow_client")
