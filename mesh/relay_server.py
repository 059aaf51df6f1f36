"""The circuit relay over Tornado WebSockets: a thin adapter around mesh.relay.Relay.

Three routes, mounted on a bootstrap server (by default) or on a node's mesh port
(``--relay``):

- ``/relay``: a node's reservation. The relay sends a challenge, the node answers
  with its signed proof, the relay answers ``reserved`` or ``refused`` (then closes)
  and later sends ``connect`` for each dialer that wants the node.
- ``/relay/<user_id>``: a dialer. Refused before the upgrade (JSON error, 404/503/429)
  when the id holds no reservation or the relay is full; otherwise its messages wait
  (at most MAX_PENDING_BYTES) until the node accepts.
- ``/relay/accept/<circuit>``: the node's side of one circuit. Once open, each binary
  message from either side is counted, rate-limited (reading pauses) and written to
  the other side unchanged.

The relay never parses what crosses a circuit: the end-to-end link handshake and
sealed frames go through as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from tornado.websocket import WebSocketClosedError, WebSocketHandler

from mesh.errors import CircuitLimitExceeded, RelayRefused
from mesh.link import MAX_HANDSHAKE_MESSAGE, MAX_MESSAGE
from mesh.relay import MAX_CONTROL_MESSAGE, Relay, RelayLimits, refusal

__all__ = ["MAX_PENDING_BYTES", "RelayService", "relay_routes"]

log = logging.getLogger("parley.mesh.relay")

MAX_PENDING_BYTES = 4 * MAX_HANDSHAKE_MESSAGE
PING_INTERVAL = 20.0
_STATUS = {"no_reservation": 404, "unknown_circuit": 404, "relay_full": 503,
           "peer_circuits_full": 503, "rate_limited": 429}


class RelayService:
    """One relay: the sans-IO core plus the WebSockets it is splicing."""

    def __init__(self, limits: RelayLimits | None = None, tick: float = 1.0) -> None:
        self.relay = Relay(limits)
        self.dialers: dict[bytes, _CircuitHandler] = {}
        self.sockets: set[_RelaySocket] = set()  # open WebSockets, closed by stop()
        self._tick = tick
        self._timer: asyncio.TimerHandle | None = None

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def schedule(self) -> None:
        """Expire reservations and circuits on time (runs once a tick while busy)."""
        if self._timer is None and self.relay.next_timer() is not None:
            self._timer = asyncio.get_running_loop().call_later(self._tick, self._expire)

    def _expire(self) -> None:
        self._timer = None
        sessions, circuits = self.relay.expire(self.now())
        for session in sessions:
            session.close(1000, "reservation expired")
        for cid in circuits:
            handler = self.dialers.pop(cid, None)
            if handler is not None:
                handler.close(1000, "circuit expired")
        self.schedule()

    def dial(self, target: str, client_ip: str) -> bytes:
        """A dialer wants ``target``: open a circuit and tell the target's reservation
        (``connect``). Returns the circuit id; RelayRefused before the upgrade."""
        opened = self.relay.open_circuit(target, client_ip, self.now())
        opened.session.write_message(opened.message, binary=True)
        self.schedule()
        return opened.circuit_id

    def accept(self, circuit: str) -> bytes:
        """The reserved node takes ``circuit``; refused if its dialer has gone."""
        cid = self.relay.accept_circuit(circuit, self.now())
        if cid not in self.dialers:
            self.relay.close_circuit(cid)
            raise RelayRefused("the dialer has gone", "unknown_circuit")
        return cid

    def stop(self) -> None:
        """Cancel the timer and close every reservation and circuit (HTTPServer's
        close_all_connections does not reach WebSockets: they left it at the upgrade)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock in list(self.sockets):
            sock.close(1001, "relay shutting down")


class _RelaySocket(WebSocketHandler):
    """Shared bits: no browsers, no compression, link-sized messages, keepalive."""

    def initialize(self, service: RelayService) -> None:
        self.service = service

    def open(self, *args: str) -> None:
        self.set_nodelay(True)
        self.service.sockets.add(self)

    def on_close(self) -> None:
        self.service.sockets.discard(self)

    def check_origin(self, origin: str) -> bool:
        return False

    def get_compression_options(self) -> None:
        return None

    @property
    def ping_interval(self) -> float:
        return PING_INTERVAL

    @property
    def max_message_size(self) -> int:
        return MAX_MESSAGE

    def refuse(self, exc: RelayRefused) -> None:
        """Before the upgrade: a JSON error with a status that says why."""
        self.set_status(_STATUS.get(exc.reason, 400))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": exc.reason, "message": str(exc)}))


class _ReserveHandler(_RelaySocket):
    def open(self, *args: str) -> None:
        super().open()
        try:
            challenge = self.service.relay.open_session(
                self, self.request.host, self.request.remote_ip or "?", self.service.now())
        except RelayRefused as exc:
            self._refuse_and_close(exc)
            return
        self.write_message(challenge, binary=True)

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, str) or len(message) > MAX_CONTROL_MESSAGE:
            self._refuse_and_close(RelayRefused("control messages are small binary "
                                                "msgpack maps", "bad_request"))
            return
        try:
            reservation, answer = self.service.relay.reserve(self, message, self.service.now())
        except RelayRefused as exc:
            self._refuse_and_close(exc)
            return
        log.info("relay: reservation for %s", reservation.user_id)
        self.write_message(answer, binary=True)
        self.service.schedule()

    def _refuse_and_close(self, exc: RelayRefused) -> None:
        log.info("relay: refused reservation from %s: %s", self.request.remote_ip, exc.reason)
        with contextlib.suppress(WebSocketClosedError):
            self.write_message(refusal(exc), binary=True)
        self.close(1008, exc.reason)

    def on_close(self) -> None:
        super().on_close()
        for cid in self.service.relay.close_session(self):
            handler = self.service.dialers.pop(cid, None)
            if handler is not None:
                handler.close(1011, "reservation ended")


class _CircuitHandler(_RelaySocket):
    """Either end of a circuit, as its route says: the dialer (``/relay/<id>``,
    ``dialing=True``) or the reserved node accepting it (``/relay/accept/<circuit>``).
    The circuit is claimed before the upgrade, so a refusal is a plain JSON error."""

    cid: bytes = b""
    other: _CircuitHandler | None = None
    pending: list[bytes]
    pending_bytes = 0
    gone = False

    def initialize(self, service: RelayService, dialing: bool) -> None:
        super().initialize(service)
        self.dialing = dialing

    async def get(self, *args: Any, **kwargs: Any) -> None:
        self.pending = []
        try:
            self.cid = (self.service.dial(args[0], self.request.remote_ip or "?")
                        if self.dialing else self.service.accept(args[0]))
        except RelayRefused as exc:
            self.refuse(exc)
            return
        await super().get(*args, **kwargs)

    def open(self, *args: str) -> None:
        super().open()
        if self.dialing:
            self.service.dialers[self.cid] = self
            return
        dialer = self.service.dialers.pop(self.cid, None)
        if dialer is None or dialer.gone:
            self.close(1000, "the dialer has gone")
            return
        dialer.splice(self)

    def on_message(self, message: str | bytes) -> Any:
        if isinstance(message, str):
            self.close(1003, "binary messages only")
            return None
        if self.other is None:
            self.pending_bytes += len(message)
            if self.pending_bytes > MAX_PENDING_BYTES:
                self.close(1009, "too much before the circuit opened")
            else:
                self.pending.append(message)
            return None
        return self.relay_message(message)

    async def relay_message(self, message: bytes) -> None:
        delay = self._pass(message)
        if delay > 0:  # Tornado reads the next message only after this returns
            await asyncio.sleep(delay)

    def _pass(self, message: bytes) -> float:
        """Count and forward one message; return the rate limit's wait."""
        assert self.other is not None
        try:
            delay = self.service.relay.forward(self.cid, len(message), self.service.now())
        except CircuitLimitExceeded as exc:
            log.info("relay: circuit closed: %s", exc.reason)
            self.close(1008, exc.reason)
            return 0.0
        try:
            self.other.write_message(message, binary=True)
        except WebSocketClosedError:
            self.close(1000, "other side closed")
        return delay

    def splice(self, other: _CircuitHandler) -> None:
        """Join the two sides and pass on what waited (a few KiB: the rate limit's
        burst covers it)."""
        self.other, other.other = other, self
        for side in (self, other):
            queued, side.pending = side.pending, []
            for message in queued:
                side._pass(message)

    def on_close(self) -> None:
        super().on_close()
        self.gone = True
        self.service.relay.close_circuit(self.cid)
        self.service.dialers.pop(self.cid, None)
        if self.other is not None and not self.other.gone:
            self.other.close(1000, "other side closed")


def relay_routes(service: RelayService) -> list[Any]:
    """Routes to mount on any tornado Application (the handlers set their own
    message size limit and keepalive, so the Application's settings do not matter)."""
    return [(r"/relay", _ReserveHandler, {"service": service}),
            (r"/relay/([0-9]{15})", _CircuitHandler, {"service": service, "dialing": True}),
            (r"/relay/accept/([0-9a-f]{32})", _CircuitHandler,
             {"service": service, "dialing": False})]

