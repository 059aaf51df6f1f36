"""Keeping reservations on circuit relays, and answering circuits through them.

A node that may be unreachable (behind a home router) holds reservations on up to
``want`` relays from its list (bootstrap servers are relays by default). Each
reservation is one WebSocket to ``/relay``: challenge, signed proof, ``reserved``,
then ``connect`` messages, each answered by opening ``/relay/accept/<circuit>`` and
running an inbound link over it (``accept``). A reservation that is refused (the
relay is full, say) or lost (the relay died) moves to the next relay in the list
that is not in backoff: failover without configuration. ``on_change`` gets the relay
addresses held now, to publish in the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect

from mesh.connections import backoff_delay
from mesh.errors import DialError, RelayRefused, RemoteError
from mesh.identity import KeyPair
from mesh.relay import (
    MAX_CONTROL_MESSAGE,
    RELAY_PATH,
    make_reserve,
    message_type,
    read_connect,
    read_reserved,
    relay_address,
    relay_base,
)
from mesh.transport import LinkConnection, Transport
from mesh.websocket import accept_from, close_late_connection

__all__ = ["RelayClient", "RelayStatus"]

log = logging.getLogger("parley.mesh.relay_client")

CONNECT_TIMEOUT = 10.0
RENEW_FRACTION = 0.75


@dataclass(frozen=True)
class RelayStatus:
    """One relay as the node sees it: ``state`` is connecting, reserved, refused or
    down; ``reason`` the relay's refusal code or what failed."""

    url: str
    state: str
    address: str | None = None
    reason: str = ""


class RelayClient:
    def __init__(self, identity: KeyPair, relays: Sequence[str],
                 accept: Callable[[Transport], LinkConnection | None], *,
                 on_change: Callable[[tuple[str, ...]], None] | None = None,
                 want: int = 2, connect_timeout: float = CONNECT_TIMEOUT,
                 backoff_base: float = 1.0, backoff_cap: float = 60.0,
                 rng: random.Random | None = None) -> None:
        self.identity = identity
        self.relays = [relay_base(url) for url in dict.fromkeys(relays)]
        self._accept = accept
        self.on_change = on_change
        self.want = want
        self.connect_timeout = connect_timeout
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.rng = rng or random.Random()
        self.status: dict[str, RelayStatus] = {u: RelayStatus(u, "down") for u in self.relays}
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._accepting: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._published: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(s.address for s in self.status.values()
                     if s.state == "reserved" and s.address)

    def start(self) -> None:
        if self._runner is None and self.relays:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        tasks = [t for t in (self._runner, *self._tasks.values(), *self._accepting)
                 if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            for url in self.relays:
                if len(self._tasks) >= self.want:
                    break
                if url not in self._tasks and self._not_before.get(url, 0.0) <= now:
                    self._tasks[url] = loop.create_task(self._keep(url))
            waits = [t - now for t in self._not_before.values() if t > now]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, min([5.0, *waits]))):
                    await self._wake.wait()

    async def _keep(self, url: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._set(RelayStatus(url, "connecting"))
            await self._session(url)
            reason = "closed"
            state = "down"
        except RelayRefused as exc:
            reason, state = exc.reason, "refused"
            log.info("relay %s refused the reservation: %s (%s)", url, exc.reason, exc)
        except (RemoteError, WebSocketError, OSError, TimeoutError) as exc:
            reason, state = getattr(exc, "reason", type(exc).__name__), "down"
            log.info("relay %s unavailable: %s", url, reason)
        finally:
            self._tasks.pop(url, None)
        failures = self._failures[url] = self._failures.get(url, 0) + 1
        self._not_before[url] = loop.time() + max(
            self.backoff_base, backoff_delay(failures, self.rng, self.backoff_base,
                                             self.backoff_cap))
        self._set(RelayStatus(url, state, reason=reason))
        self._wake.set()

    async def _session(self, base: str) -> None:
        reserve_url = base + RELAY_PATH
        request = HTTPRequest(reserve_url, connect_timeout=self.connect_timeout,
                              request_timeout=self.connect_timeout)
        future = asyncio.ensure_future(websocket_connect(
            request, max_message_size=MAX_CONTROL_MESSAGE, ping_interval=20.0,
            ping_timeout=20.0))
        try:  # shielded: Tornado logs an error when a pending connect is cancelled
            ws = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(close_late_connection)
            raise
        except (HTTPClientError, WebSocketError, ValueError, OSError) as exc:
            raise DialError(f"cannot reach relay {base}: {exc}") from None
        try:
            challenge = await self._read(ws, self.connect_timeout)
            if message_type(challenge) == "refused":
                read_reserved(challenge)  # raises the relay's refusal
            ws.write_message(make_reserve(self.identity, reserve_url, challenge), binary=True)
            last = await self._read(ws, self.connect_timeout)
            answer = read_reserved(last)
            address = relay_address(base, self.identity.user_id)
            self._failures.pop(base, None)
            self._set(RelayStatus(base, "reserved", address))
            while True:
                wait = answer.ttl * RENEW_FRACTION
                try:
                    message = await self._read(ws, wait)
                except TimeoutError:
                    ws.write_message(make_reserve(self.identity, reserve_url, last),
                                     binary=True)
                    continue
                kind = message_type(message)
                if kind == "connect":
                    self._spawn_accept(f"{base}{RELAY_PATH}/accept/{read_connect(message)}")
                elif kind in ("reserved", "refused"):
                    answer, last = read_reserved(message), message
                else:
                    raise RelayRefused(f"unexpected {kind!r} message from the relay",
                                       "bad_request")
        finally:
            ws.close()

    @staticmethod
    async def _read(ws: WebSocketClientConnection, within: float) -> bytes:
        async with asyncio.timeout(within):
            message = await ws.read_message()
        if message is None:
            raise DialError("relay closed the reservation")
        if isinstance(message, str):
            raise RelayRefused("text message on a reservation", "bad_request")
        return message

    def _spawn_accept(self, url: str) -> None:
        task = asyncio.get_running_loop().create_task(self._accept_circuit(url))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)

    async def _accept_circuit(self, url: str) -> None:
        try:
            await accept_from(url, self._accept, connect_timeout=self.connect_timeout)
        except DialError as exc:
            log.info("could not accept a relayed circuit: %s", exc)

    def _set(self, status: RelayStatus) -> None:
        self.status[status.url] = status
        if self.addresses != self._published:
            self._published = self.addresses
            if self.on_change is not None:
                self.on_change(self._published)
