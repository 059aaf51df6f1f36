"""Hole punching over a relayed link (like libp2p DCUtR): from relayed to direct.

Two nodes behind home routers that hold a link through a circuit relay try to open a
direct TCP connection at the same moment from their mesh ports (TCP simultaneous
open): each router then sees an outgoing SYN before the other side's SYN arrives and
lets it in. The side that accepted the relayed circuit (the reserving node) starts::

    initiator                                  responder
    Punch(connect, my addrs)     -- relay -->  (remembers the addresses)
                                 <-- relay --  Punch(connect, my addrs)
    rtt = time since connect
    Punch(sync)                  -- relay -->  dials at once
    dials rtt/2 after sync                     (so the two SYNs cross in flight)

Both dial from their mesh port (SO_REUSEADDR + SO_REUSEPORT) to the other's public
address; the first connected socket carries a new link (stream framing, the same
handshake; the initiator speaks first), marked "hole_punched". The connection manager
keeps it over the relayed link, whose circuit then closes. If no socket connects
(symmetric NAT, a router that answers SYNs with resets), up to MAX_ATTEMPTS rounds are
tried; then the link simply stays relayed.

``PunchCore`` is sans-IO (frames and ``now`` in, actions out); ``HolePuncher`` is the
asyncio adapter that owns the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from mesh import wire
from mesh.bluetooth import open_stream_link
from mesh.errors import LocalError
from mesh.transport import LinkConnection, Transport

__all__ = ["MAX_ATTEMPTS", "STREAM_KEEPALIVE", "Dial", "Failed", "HolePuncher", "PunchCore",
           "Send", "format_address", "parse_address"]

log = logging.getLogger("parley.mesh.holepunch")

MAX_ATTEMPTS = 3
DIAL_TIMEOUT = 5.0       # one round of SYNs (the kernel retransmits within it)
ANSWER_TIMEOUT = 10.0    # for the other side's connect
STREAM_KEEPALIVE = 15.0  # a raw TCP link has no WebSocket ping: the link pings


class State(enum.Enum):
    IDLE = "idle"
    WAIT_CONNECT = "wait_connect"   # initiator sent connect / responder waits for one
    WAIT_SYNC = "wait_sync"         # responder answered, waits for sync
    DIALLING = "dialling"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Send:
    frame: wire.Punch


@dataclass(frozen=True)
class Dial:
    """Open TCP connections to ``addrs`` from our mesh port, starting at ``at``."""

    addrs: tuple[tuple[str, int], ...]
    at: float


@dataclass(frozen=True)
class Failed:
    reason: str


Action = Send | Dial | Failed


def parse_address(text: str) -> tuple[str, int]:
    """"ip:port" (IPv6 in brackets) of a public-facing address, or ValueError. Loopback,
    multicast and unspecified addresses are refused: nobody is reached there."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not ip:port")
    ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
        raise ValueError(f"{ip} cannot be dialled")
    return str(ip), int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PunchCore:
    """One hole-punching exchange on one relayed link (sans-IO)."""

    def __init__(self, *, initiator: bool, ours: tuple[str, ...]) -> None:
        self.initiator = initiator
        self.ours = ours
        self.state = State.IDLE
        self.attempts = 0
        self._sent_at = 0.0
        self._theirs: tuple[tuple[str, int], ...] = ()
        self.rtt: float | None = None

    def start(self, now: float) -> list[Action]:
        """Initiator: send connect (again, for a retry)."""
        if not self.initiator or self.state not in (State.IDLE, State.DIALLING):
            return []
        if self.attempts >= MAX_ATTEMPTS:
            self.state = State.FAILED
            return [Failed("attempts_exhausted")]
        self.attempts += 1
        self._sent_at = now
        self.state = State.WAIT_CONNECT
        return [Send(wire.Punch("connect", self.ours))]

    def receive(self, frame: wire.Punch, now: float) -> list[Action]:
        if self.state in (State.DONE, State.FAILED):
            return []
        if frame.kind == "connect":
            try:
                theirs = tuple(parse_address(a) for a in frame.addrs)
            except ValueError as exc:
                self.state = State.FAILED
                return [Failed(f"bad_address: {exc}")]
            if not theirs:
                self.state = State.FAILED
                return [Failed("no_address")]
            self._theirs = theirs
            if self.initiator and self.state is State.WAIT_CONNECT:
                self.rtt = now - self._sent_at
                self.state = State.DIALLING
                return [Send(wire.Punch("sync", ())), Dial(theirs, now + self.rtt / 2)]
            if not self.initiator:
                self.attempts += 1
                if self.attempts > MAX_ATTEMPTS:
                    self.state = State.FAILED
                    return [Failed("attempts_exhausted")]
                self.state = State.WAIT_SYNC
                return [Send(wire.Punch("connect", self.ours))]
        elif frame.kind == "sync" and not self.initiator and self.state is State.WAIT_SYNC:
            self.state = State.DIALLING
            return [Dial(self._theirs, now)]
        self.state = State.FAILED
        return [Failed(f"unexpected {frame.kind!r} in state {self.state.value}")]

    def connected(self) -> None:
        self.state = State.DONE

    def dial_failed(self, now: float) -> list[Action]:
        """No socket connected: the initiator tries another round; the responder
        waits for the initiator's next connect."""
        if self.initiator:
            return self.start(now)
        self.state = State.IDLE
        return []


def punch_socket(port: int) -> socket.socket:
    """A TCP socket bound to our mesh port beside the listener (which also has
    SO_REUSEPORT, see websocket.MeshServer.listen)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", port))  # noqa: S104 - the mesh listens on every interface
    sock.setblocking(False)
    return sock


class HolePuncher:
    """Runs PunchCore for every relayed link of a ConnectionManager.

    ``ours()`` gives our public "ip:port" addresses (the dial-back-confirmed address
    with the mesh port), empty while unknown (then nobody punches); ``adopt(transport,
    initiator, peer)`` runs a link over a punched socket in the manager."""

    def __init__(self, *, port: int, ours: Callable[[], tuple[str, ...]],
                 adopt: Callable[[Transport, bool, str], LinkConnection | None],
                 dial_timeout: float = DIAL_TIMEOUT) -> None:
        self.port = port
        self.ours = ours
        self._adopt = adopt
        self.dial_timeout = dial_timeout
        self._cores: dict[LinkConnection, PunchCore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.results: dict[str, str] = {}  # peer -> "hole_punched" or why not

    def link_up(self, conn: LinkConnection, path: str, accepted_via_relay: bool) -> None:
        """A link came up: an inbound relayed one makes us the punch initiator."""
        if path != "relayed" or not accepted_via_relay or not self.ours():
            return
        core = self._cores[conn] = PunchCore(initiator=True, ours=self.ours())
        self._act(conn, core.start(self._now()))

    def on_frame(self, conn: LinkConnection, frame: wire.Punch) -> None:
        core = self._cores.get(conn)
        if core is None:
            ours = self.ours()
            if not ours:
                return  # we do not know our public address: nothing to offer
            core = self._cores[conn] = PunchCore(initiator=False, ours=ours)
        self._act(conn, core.receive(frame, self._now()))

    def link_down(self, conn: LinkConnection) -> None:
        self._cores.pop(conn, None)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _act(self, conn: LinkConnection, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                conn.send(action.frame)
            elif isinstance(action, Dial):
                task = asyncio.get_running_loop().create_task(self._dial(conn, action))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                log.info("hole punch with %s gave up: %s", conn.peer_id, action.reason)
                self.results[conn.peer_id or ""] = action.reason
                self._cores.pop(conn, None)

    async def _dial(self, conn: LinkConnection, dial: Dial) -> None:
        await asyncio.sleep(max(0.0, dial.at - self._now()))
        core = self._cores.get(conn)
        if core is None or conn.closed:
            return
        sock = await self._connect_any(dial.addrs)
        if sock is None:
            log.info("hole punch with %s: no connection this round", conn.peer_id)
            self._act(conn, core.dial_failed(self._now()))
            return
        core.connected()
        peer = conn.peer_id or ""
        self.results[peer] = "hole_punched"
        log.info("hole punch with %s: connected to %s", peer, sock.getpeername())
        try:
            await open_stream_link(sock, lambda t: self._adopt(t, core.initiator, peer))
        except (OSError, LocalError) as exc:  # refused by the manager, or the socket died
            log.info("hole-punched connection to %s not used: %s", peer, exc)

    async def _connect_any(self, addrs: tuple[tuple[str, int], ...]) -> socket.socket | None:
        loop = asyncio.get_running_loop()
        attempts = []
        for host, port in addrs:
            try:
                sock = punch_socket(self.port)
            except OSError as exc:
                log.info("cannot bind a punch socket to port %d: %s", self.port, exc)
                return None
            attempts.append((sock, loop.create_task(loop.sock_connect(sock, (host, port)))))
        winner = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.dial_timeout):
                pending = {task for _, task in attempts}
                while pending and winner is None:
                    done, pending = await asyncio.wait(pending,
                                                       return_when=asyncio.FIRST_COMPLETED)
                    for sock, task in attempts:
                        if task in done and not task.cancelled() and task.exception() is None:
                            winner = sock
                            break
        for sock, task in attempts:
            if sock is not winner:
                task.cancel()
                sock.close()
        return winner
